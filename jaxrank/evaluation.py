r"""Evaluation harness: what prompt prioritization and adaptive judging save, on the user's own data.

Three measurements, each one call (and a figure in `jaxrank.plots`, a CSV from `jaxrank evaluate`):

- **Tie reduction** (`tie_reduction`): votes are collected per prompt; a priority score per prompt
  (e.g. the KL divergence of two models' answers, `jaxrank.score_pairs`) says which prompts to label
  first. For a grid of fractions q, the tie rate among the votes of the top q % of prompts is compared
  with the tie rate of random q % subsets: `reduction = 1 - tie_rate_top / tie_rate_random`
  (Boubdir et al. 2023, "Which Prompts Make The Difference?").
- **Leaderboard stability** (`leaderboard_stability`): the leaderboard fitted on the top q % prompts'
  votes (and on random q % subsets) against the leaderboard on all votes ("gold"): Kendall tau-b,
  Spearman rho, the fraction of model pairs ordered as in gold, and the largest rating difference.
- **Budget curves** (`budget_curves`): judge-budget error vs budget per allocator, from
  `jaxrank.allocation.simulate_sweep`.

Rank metrics (`kendall_tau`, `spearman`, `pairs_agreement`) are pure JAX and vmap-safe, with an
optional mask of the entries that count.

Votes are the one vote table, `jaxrank.Votes` (`jaxrank.load_votes`), with prompt ids; priority scores
are a mapping prompt id -> score (`load_scores`) or an array aligned with `votes.prompt_ids` (the
prompts that have votes, see `Votes.drop_empty_prompts`). Votes count once each (`Votes.count` times for
aggregated entries); vote weights do not enter tie rates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import numbers
import statistics
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrank._validation import preview
from jaxrank.votes.readers import read_table
from jaxrank.votes.table import TIE, Votes, id_string

__all__ = [
    "DEFAULT_FRACTIONS",
    "RATING_TIE_ATOL",
    "BOOTSTRAP_BASELINE_WINDOWS",
    "load_scores",
    "kendall_tau",
    "spearman",
    "pairs_agreement",
    "TieReductionResult",
    "tie_reduction",
    "StabilityResult",
    "leaderboard_stability",
    "BudgetCurves",
    "budget_curves",
    "DESIGN_NAMES",
    "DEFAULT_BUDGETS",
    "DesignCurves",
    "design_curves",
]

DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
STABILITY_METRICS = ("kendall_tau", "spearman", "pairs_agree", "max_rating_diff")
_ELO_POINTS = 400.0 / math.log(10.0)  # natural-log strength -> Elo points
# Fitted ratings closer than this (Elo points) are tied in the stability metrics' rank comparisons: float32
# optimizer noise (e.g. 1000.00007 / 1000 / 999.99993 for models with only ties) is not an ordering.
RATING_TIE_ATOL = 1e-3


# --------------------------------------------------------------------------------------------------
# Scores


def load_scores(source: Any, *, columns: Mapping[str, str] | None = None) -> "pandas.Series":  # noqa: F821
    """Read per-prompt priority scores: a CSV/JSONL/Parquet file (or DataFrame) with `prompt_id, score`.

    Args:
        source: a path or a pandas DataFrame.
        columns: optional `{"prompt_id": ..., "score": ...}` naming the source's columns.

    Returns:
        pandas Series `score` (float64) indexed by the prompt id as a string (read as `jaxrank.load_votes`
        reads ids: CSV text verbatim, JSON numbers as written, typed numbers as decimal strings), in file order.

    Raises:
        ValueError: missing columns, duplicate prompt ids, missing ids, NaN or non-numeric scores.

    Example:
        >>> import pandas as pd
        >>> load_scores(pd.DataFrame({"prompt_id": [1, 2], "score": [0.3, 1.5]})).to_dict()
        {'1': 0.3, '2': 1.5}
    """
    import pandas as pd

    mapping = {"prompt_id": "prompt_id", "score": "score"}
    if columns:
        unknown = [k for k in columns if k not in mapping]
        if unknown:
            raise ValueError(f"columns: unknown key(s) {preview(unknown)}; expected 'prompt_id' and/or 'score'")
        mapping.update(columns)
    frame = read_table(source).frame
    missing = [c for c in mapping.values() if c not in frame.columns]
    if missing:
        raise ValueError(
            f"scores source is missing column(s) {preview(missing)}; available columns: "
            f"{preview(list(frame.columns), 20)}; expected prompt_id, score"
        )
    if len(frame) == 0:
        raise ValueError("scores source has no rows")
    raw_ids = frame[mapping["prompt_id"]].to_numpy(dtype=object)
    bad_ids = [i for i, v in enumerate(raw_ids) if _is_nan_like(v) or str(v).strip() == ""]
    if bad_ids:
        raise ValueError(f"scores: {len(bad_ids)} missing prompt id(s), e.g. in row(s) {preview(bad_ids)}")
    ids = [id_string(v) for v in raw_ids]
    raw_scores = frame[mapping["score"]].to_numpy(dtype=object)
    values = pd.to_numeric(pd.Series(raw_scores), errors="coerce").to_numpy(np.float64)
    non_numeric = [ids[i] for i in np.flatnonzero(np.isnan(values))
                   if not (_is_nan_like(raw_scores[i]) or str(raw_scores[i]).strip().lower() in ("", "nan"))]
    if non_numeric:
        raise ValueError(f"scores: non-numeric score(s) for {len(non_numeric)} prompt(s), e.g. {preview(non_numeric)}")
    nan = [ids[i] for i in np.flatnonzero(np.isnan(values))]
    if nan:
        raise ValueError(f"scores: {len(nan)} NaN score(s), e.g. for prompt(s) {preview(nan)}; drop or fill them first")
    series = pd.Series(values, index=pd.Index(ids, name="prompt_id"), name="score")
    dup = series.index[series.index.duplicated()].unique().tolist()
    if dup:
        raise ValueError(f"scores: {len(dup)} duplicate prompt id(s), e.g. {preview(dup)}; one score per prompt")
    return series


def _is_nan_like(value: Any) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and value != value)


def _check_votes(votes: Any) -> Votes:
    """The votes with prompt ids, their prompt table restricted to prompts that have votes."""
    if not isinstance(votes, Votes):
        raise TypeError(f"votes must be a jaxrank.Votes with prompt ids (see jaxrank.load_votes), got {type(votes).__name__}")
    if votes.prompt is None:
        raise ValueError("votes have no prompt ids; load them with a prompt column (e.g. prompt_id / question_id: "
                         "jaxrank.load_votes(..., columns={'prompt_id': ...}))")
    if votes.num_votes == 0:
        raise ValueError("votes is empty (0 votes)")
    votes = votes.drop_empty_prompts()
    return votes


def _aligned_scores(scores: Any, votes: Votes) -> np.ndarray:
    """float64[P] score of each prompt of `votes`, from a mapping/Series (prompt id -> score) or an array [P]."""
    import pandas as pd

    if isinstance(scores, pd.DataFrame):
        scores = load_scores(scores)
    if isinstance(scores, (Mapping, pd.Series)):
        items = scores.items()
        lookup: dict[str, Any] = {}
        for k, v in items:
            key = id_string(k)
            if key in lookup:
                raise ValueError(f"scores has the prompt id {key!r} twice")
            lookup[key] = v
        absent = [p for p in votes.prompt_ids if p not in lookup]
        if absent:
            raise ValueError(
                f"scores: {len(absent)} of the {votes.num_prompts} prompts with votes have no score, e.g. "
                f"{preview(absent)}; score every prompt that has votes"
            )
        try:
            values = np.asarray([lookup[p] for p in votes.prompt_ids], dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"scores must be numbers; {err}") from None
    else:
        if isinstance(scores, jax.core.Tracer):
            raise TypeError("scores must be concrete (this runs on the host, outside jit)")
        try:
            values = np.asarray(scores, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"scores must be a mapping prompt id -> score, a pandas Series, or an array [P]; {err}"
            ) from None
        if values.shape != (votes.num_prompts,):
            raise ValueError(
                f"scores as an array must have shape [P] = ({votes.num_prompts},), one per prompt of votes.prompt_ids, "
                f"got {values.shape}"
            )
    nan = np.flatnonzero(np.isnan(values))
    if nan.size:
        raise ValueError(
            f"scores: {nan.size} NaN score(s), e.g. for prompt(s) {preview([votes.prompt_ids[i] for i in nan])}"
        )
    _warn_tied_scores(values, votes.prompt_ids)
    return values


# More than this fraction of prompts sharing their score with another prompt draws a warning.
_TIED_SCORES_WARN_FRACTION = 0.5


def _warn_tied_scores(values: np.ndarray, prompt_ids: Sequence[str]) -> None:
    """UserWarning when the scores are constant or heavily tied: equal scores are ordered by prompt id."""
    if values.size < 2:
        return
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    shared = counts[inverse.reshape(-1)] > 1
    if counts.size == 1:
        what = f"scores are constant ({values[0]:g} for all {values.size} prompts)"
    elif shared.mean() > _TIED_SCORES_WARN_FRACTION:
        what = f"scores are heavily tied: {int(shared.sum())} of the {values.size} prompts share their score with another prompt"
    else:
        return
    ties_at = [prompt_ids[i] for i in np.flatnonzero(shared)]
    warnings.warn(
        f"{what}; equal scores are ordered by prompt id in string order (e.g. {preview(sorted(ties_at)[:3])}; "
        "'10' before '2'), so that order, not the score, decides which of them are in the top q",
        UserWarning,
        stacklevel=4,  # the caller of tie_reduction / leaderboard_stability
    )


# --------------------------------------------------------------------------------------------------
# Option checks


def _check_fractions(fractions: Any) -> np.ndarray:
    if isinstance(fractions, numbers.Real):
        fractions = [fractions]
    try:
        f = np.asarray(list(fractions), dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"fractions must be a sequence of numbers in (0, 1], got {fractions!r}") from None
    if f.ndim != 1 or f.size == 0:
        raise ValueError(f"fractions must be a non-empty sequence of numbers in (0, 1], got {fractions!r}")
    if not np.all((f > 0) & (f <= 1)):
        raise ValueError(f"fractions must lie in (0, 1], got {f.tolist()}")
    if np.unique(f).size != f.size:
        raise ValueError(f"fractions has duplicates: {f.tolist()}")
    return np.sort(f)


def _check_count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_confidence(confidence: Any) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real) or not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    return float(confidence)


def _check_key(key: Any) -> jax.Array:
    if not isinstance(key, jax.Array):
        raise TypeError(f"key must be a jax.random.key (the first argument), got {type(key).__name__}")
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key) if key.dtype == jnp.uint32 and key.shape == (2,) else key
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        raise TypeError("key must be a jax.random.key (or a legacy uint32[2] PRNGKey)")
    return key


def _subset_sizes(fractions: np.ndarray, num_prompts: int) -> np.ndarray:
    """ceil(q P), rounded as `jaxrank.prioritize` rounds (float noise first, at least one prompt)."""
    return np.asarray([max(1, math.ceil(round(float(q) * num_prompts, 6))) for q in fractions], np.int32)


def _interval(samples: np.ndarray, confidence: float, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Central `confidence` percentile interval along `axis`, ignoring NaN; linear interpolation, except
    where an infinite sample makes it undefined (then the nearest order statistic, which may be inf)."""
    q = [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0]
    samples = np.asarray(samples, np.float64)
    with np.errstate(invalid="ignore"), _quiet_nan():
        lo, hi = np.nanquantile(samples, q, axis=axis)
        lo_n, hi_n = np.nanquantile(samples, q[0], axis=axis, method="lower"), np.nanquantile(
            samples, q[1], axis=axis, method="higher"
        )
    lo = np.where(np.isnan(lo) & ~np.isnan(lo_n), lo_n, lo)
    hi = np.where(np.isnan(hi) & ~np.isnan(hi_n), hi_n, hi)
    return lo, hi


@contextlib.contextmanager
def _quiet_nan():
    """Silence NumPy's all-NaN-slice warnings (a metric undefined for every subset stays NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _nanmean(x: np.ndarray, axis: int = 0) -> np.ndarray:
    with _quiet_nan():
        return np.nanmean(np.asarray(x, np.float64), axis=axis)


# --------------------------------------------------------------------------------------------------
# Rank metrics (pure JAX, vmap-safe)


def _pairs(x: Any, y: Any, mask: Any, name: str, atol: Any):
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    if x.ndim != 1 or y.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"{name}: x and y must have the same shape [n], got {tuple(x.shape)} and {tuple(y.shape)}")
    dtype = jnp.promote_types(jnp.promote_types(x.dtype, y.dtype), jnp.float32)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name}: x and y must be real numbers, got {x.dtype} and {y.dtype}")
    if isinstance(atol, (numbers.Real, np.ndarray)) and not isinstance(atol, bool) and not np.all(np.asarray(atol) >= 0):
        raise ValueError(f"{name}: atol must be >= 0, got {atol!r}")
    n = x.shape[0]
    m = jnp.ones((n,), bool) if mask is None else jnp.asarray(mask)
    if m.shape != (n,):
        raise ValueError(f"{name}: mask must have shape [n] = ({n},), got {tuple(m.shape)}")
    m = m.astype(bool)
    x = x.astype(dtype)
    y = y.astype(dtype)
    # NaN in an entry that counts makes the statistic NaN (as SciPy's default); masked-out entries are
    # replaced before any arithmetic, so a NaN there never leaks in (0 * NaN).
    has_nan = jnp.any(m & (jnp.isnan(x) | jnp.isnan(y)))
    x = jnp.where(m, x, 0.0)
    y = jnp.where(m, y, 0.0)
    upper = jnp.arange(n)[:, None] < jnp.arange(n)[None, :]
    pair = upper & m[:, None] & m[None, :]
    atol = jnp.asarray(atol, dtype)
    sx = _sign_with_tolerance(x, atol)
    sy = _sign_with_tolerance(y, atol)
    return x, y, m, pair, sx, sy, dtype, has_nan, atol


def _sign_with_tolerance(x: jax.Array, atol: jax.Array) -> jax.Array:
    """[n, n] sign(x_i - x_j), 0 where |x_i - x_j| <= atol (comparisons, so inf - inf is a tie, not NaN)."""
    gt = x[:, None] > x[None, :] + atol
    lt = x[:, None] < x[None, :] - atol
    return gt.astype(x.dtype) - lt.astype(x.dtype)


def kendall_tau(x: Any, y: Any, mask: Any = None, *, atol: float = 0.0) -> jax.Array:
    r"""Kendall's tau-b rank correlation of two score vectors (ties handled), pure JAX.

    `tau_b = (C - D) / sqrt((n0 - n1) (n0 - n2))` over the pairs `i < j` of entries that count, with
    `C - D = sum sign(x_i - x_j) sign(y_i - y_j)`, `n0` the number of pairs, `n1` (`n2`) the pairs
    tied in `x` (`y`). NaN when either vector is constant (as `scipy.stats.kendalltau`), and NaN when an
    entry that counts is NaN (SciPy's default `nan_policy="propagate"`); entries masked out may hold
    anything, NaN included. O(n^2) memory.

    Args:
        x, y: float[n] scores (e.g. two leaderboards' ratings).
        mask: optional bool[n]: only these entries count (e.g. models present in both).
        atol: differences `|x_i - x_j| <= atol` count as ties (default 0: exact). The stability metrics
            compare fitted ratings with `atol = RATING_TIE_ATOL` Elo points (optimizer noise is no order).

    Returns:
        float scalar (float32, or float64 under x64 with float64 inputs).

    Example:
        >>> float(kendall_tau(jnp.array([1.0, 2.0, 3.0, 4.0]), jnp.array([1.0, 3.0, 2.0, 4.0])))  # (5 - 1) / 6
        0.666...
    """
    x, y, m, pair, sx, sy, dtype, has_nan, _ = _pairs(x, y, mask, "kendall_tau", atol)
    s = jnp.sum(jnp.where(pair, sx * sy, 0.0))
    n0 = jnp.sum(pair.astype(dtype))
    n1 = jnp.sum((pair & (sx == 0)).astype(dtype))
    n2 = jnp.sum((pair & (sy == 0)).astype(dtype))
    den = jnp.sqrt((n0 - n1) * (n0 - n2))
    value = jnp.where(den > 0, s / jnp.where(den > 0, den, 1.0), jnp.nan)
    return jnp.where(has_nan, jnp.nan, value)


def _average_ranks(x: jax.Array, m: jax.Array, dtype, atol: jax.Array) -> jax.Array:
    """1-based average ranks among the entries with `m` (ties, within `atol`, get the mean of their ranks)."""
    mf = m.astype(dtype)
    less = x[None, :] < x[:, None] - atol
    greater = x[None, :] > x[:, None] + atol
    equal = ~(less | greater)
    return jnp.sum(mf[None, :] * less, axis=1) + 0.5 * (jnp.sum(mf[None, :] * equal, axis=1) + 1.0)


def spearman(x: Any, y: Any, mask: Any = None, *, atol: float = 0.0) -> jax.Array:
    r"""Spearman's rank correlation: the Pearson correlation of average ranks (ties handled), pure JAX.

    `rho = cov(rank x, rank y) / (sd(rank x) sd(rank y))` over the entries that count, ranks 1..n with
    ties given their mean rank (as `scipy.stats.spearmanr`). NaN when either vector is constant, and NaN
    when an entry that counts is NaN (as SciPy); masked-out entries may hold NaN.

    Args:
        x, y: float[n] scores.
        mask: optional bool[n]: only these entries count (they are ranked among themselves).
        atol: entries within `atol` of each other share their rank (default 0: exact ties only).

    Returns:
        float scalar.

    Example:
        >>> round(float(spearman(jnp.array([1.0, 2.0, 3.0, 4.0]), jnp.array([1.0, 3.0, 2.0, 4.0]))), 6)  # 1 - 6*2/60
        0.8
    """
    x, y, m, _, _, _, dtype, has_nan, atol = _pairs(x, y, mask, "spearman", atol)
    mf = m.astype(dtype)
    count = jnp.sum(mf)
    rx = _average_ranks(x, m, dtype, atol)
    ry = _average_ranks(y, m, dtype, atol)
    cx = (rx - jnp.sum(mf * rx) / jnp.maximum(count, 1.0)) * mf
    cy = (ry - jnp.sum(mf * ry) / jnp.maximum(count, 1.0)) * mf
    den = jnp.sqrt(jnp.sum(cx * cx) * jnp.sum(cy * cy))
    value = jnp.where(den > 0, jnp.sum(cx * cy) / jnp.where(den > 0, den, 1.0), jnp.nan)
    return jnp.where(has_nan, jnp.nan, value)


def pairs_agreement(x: Any, y: Any, mask: Any = None, *, atol: float = 0.0) -> jax.Array:
    r"""Fraction of pairs `i < j` ordered the same way by `x` and `y`, pure JAX.

    `sum [sign(x_i - x_j) == sign(y_i - y_j)] / n0` over the `n0` pairs of entries that count: a pair
    tied in both agrees, a pair tied in one only does not. NaN with fewer than two entries, and NaN when
    an entry that counts is NaN (a NaN pair is neither agreement nor disagreement).

    Args:
        x, y: float[n] scores (e.g. a leaderboard's ratings and the gold ratings).
        mask: optional bool[n].
        atol: differences `|x_i - x_j| <= atol` count as ties (default 0: exact).

    Returns:
        float scalar in [0, 1].

    Example:
        >>> float(pairs_agreement(jnp.array([1.0, 2.0, 3.0]), jnp.array([1.0, 3.0, 2.0])))  # 2 of 3 pairs
        0.666...
    """
    x, y, m, pair, sx, sy, dtype, has_nan, _ = _pairs(x, y, mask, "pairs_agreement", atol)
    n0 = jnp.sum(pair.astype(dtype))
    agree = jnp.sum((pair & (sx == sy)).astype(dtype))
    value = jnp.where(n0 > 0, agree / jnp.maximum(n0, 1.0), jnp.nan)
    return jnp.where(has_nan, jnp.nan, value)


def _max_diff(ratings: jax.Array, gold: jax.Array, mask: jax.Array) -> jax.Array:
    """max_i |(r_i - mean r) - (g_i - mean g)| over the masked entries (both centred on them)."""
    mf = mask.astype(ratings.dtype)
    count = jnp.maximum(jnp.sum(mf), 1.0)
    r = ratings - jnp.sum(mf * ratings) / count
    g = gold - jnp.sum(mf * gold) / count
    return jnp.where(jnp.any(mask), jnp.max(jnp.where(mask, jnp.abs(r - g), -jnp.inf)), jnp.nan)


def _all_metrics(ratings: jax.Array, gold: jax.Array, mask: jax.Array) -> jax.Array:
    """float[4]: kendall_tau, spearman, pairs_agree, max_rating_diff of one leaderboard against gold."""
    tol = RATING_TIE_ATOL
    return jnp.stack(
        [kendall_tau(ratings, gold, mask, atol=tol), spearman(ratings, gold, mask, atol=tol),
         pairs_agreement(ratings, gold, mask, atol=tol), _max_diff(ratings, gold, mask)]
    )


_metrics_many = jax.jit(jax.vmap(_all_metrics))


# --------------------------------------------------------------------------------------------------
# Tie reduction


@dataclasses.dataclass(frozen=True)
class TieReductionResult:
    """Tie rates among the top-q prompts vs random subsets, per fraction q.

    Attributes (NumPy float64 [F], F fractions, ascending, unless said otherwise):
        fraction: q.
        num_prompts: int64[F] prompts selected, ceil(q P).
        num_votes: int64[F] votes on the top-q prompts.
        tie_rate_top: ties / votes among the top-q prompts' votes.
        tie_rate_random: mean over `num_random` uniformly random prompt subsets of the same size of their
            tie rate.
        reduction: `1 - tie_rate_top / tie_rate_random`.
        lower, upper: the prompt-bootstrap interval of the reduction (see `tie_reduction`).
        confidence: the interval's central probability.
        num_random: random subsets (and bootstrap replicates) used.
    """

    fraction: np.ndarray
    num_prompts: np.ndarray
    num_votes: np.ndarray
    tie_rate_top: np.ndarray
    tie_rate_random: np.ndarray
    reduction: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    confidence: float
    num_random: int

    COLUMNS = ("fraction", "tie_rate_top", "tie_rate_random", "reduction", "lower", "upper")

    def to_frame(self):
        """pandas DataFrame with exactly the columns `fraction, tie_rate_top, tie_rate_random, reduction,
        lower, upper` (what `jaxrank evaluate ties --out` writes)."""
        import pandas as pd

        return pd.DataFrame({c: np.asarray(getattr(self, c), np.float64) for c in self.COLUMNS})


def _key_words(key: jax.Array) -> jax.Array:
    """uint32[2]: the raw words of a threefry key (two random words drawn from any other key)."""
    data = jax.random.key_data(key)
    if data.shape == (2,) and data.dtype == jnp.uint32:
        return data
    return jax.random.bits(key, (2,), jnp.uint32)


def _random_words(words: jax.Array, num: int, size: int, start: Any = 0) -> tuple[jax.Array, jax.Array]:
    """Two uint32[num, size] arrays of random words: Threefry-2x32 of the counters (row, column) under the
    key words, rows `start .. start + num - 1` (the counter-based stream `jaxrank.allocation` uses; written
    out, it compiles in a fraction of the time `jax.random`'s CPU lowering takes). Row r is the same whatever
    `num` and `start`, so the rows can be drawn in chunks."""
    from jaxrank._samplers import threefry2x32

    rows = (jnp.asarray(start, jnp.uint32) + jnp.arange(num, dtype=jnp.uint32))[:, None]
    cols = jnp.arange(size, dtype=jnp.uint32)[None, :]
    return threefry2x32(words[0], words[1], rows, cols)


def _random_permutations(words: jax.Array, num: int, size: int, start: Any = 0) -> jax.Array:
    """int32[num, size]: uniformly random permutations (rows `start ..` of the stream), the argsort of i.i.d.
    32-bit random words (equal words, probability ~ size^2 / 2^33 per row, keep index order)."""
    return jnp.argsort(_random_words(words, num, size, start)[0], axis=1).astype(jnp.int32)


# Random k-subsets averaged per bootstrap replicate for its own random baseline (see `tie_reduction`).
BOOTSTRAP_BASELINE_WINDOWS = 64


def _window_starts(num_prompts: int) -> np.ndarray:
    """int32[S] evenly spaced start positions of the S = min(P, BOOTSTRAP_BASELINE_WINDOWS) cyclic windows."""
    s = min(num_prompts, BOOTSTRAP_BASELINE_WINDOWS)
    return (np.arange(s) * num_prompts // s).astype(np.int32)


@functools.partial(jax.jit, static_argnames=("num_random",))
def _tie_kernel(words, ties, votes, sizes, starts, row_start=0, *, num_random):
    """Random-subset and prompt-bootstrap tie rates at every subset size, one compiled call per shape, for
    the `num_random` replicates `row_start ..` (a chunk of them: replicate r draws the same permutation and
    resample in any chunk).

    `words` uint32[2, 2] are the key words of the two streams (permutations, bootstrap draws); `ties`,
    `votes` float32[P] are per-prompt counts in priority order (position 0 = highest score);
    `sizes` int32[F]; `starts` int32[S] window starts (`_window_starts`). Returns `random` [R, F] (tie
    rate of the first k prompts of a random permutation: a uniformly random k-subset), `boot_top`,
    `boot_random` [R, F]: in a bootstrap resample of P prompt positions drawn with replacement, the tie
    rate of its k highest-priority draws, and the mean tie rate of S random k-subsets of its draws (the
    cyclic windows `[s, s + k)` of the draw sequence; the draws are i.i.d., so each window is a uniformly
    random k-subset of the resample).
    """
    num_prompts = ties.shape[0]
    w_perm, w_boot = words[0], words[1]
    last = sizes - 1

    def rates(order):
        ct = jnp.cumsum(ties[order])
        cv = jnp.cumsum(votes[order])
        return ct[last] / cv[last]

    def window_rates(order):
        zero = jnp.zeros((1,), ties.dtype)
        ct = jnp.concatenate([zero, jnp.cumsum(jnp.tile(ties[order], 2))])  # [2P + 1]
        cv = jnp.concatenate([zero, jnp.cumsum(jnp.tile(votes[order], 2))])
        end = starts[:, None] + sizes[None, :]  # [S, F]
        t = ct[end] - ct[starts][:, None]
        v = cv[end] - cv[starts][:, None]
        return jnp.mean(t / v, axis=0)

    perms = _random_permutations(w_perm, num_random, num_prompts, row_start)
    random = jax.vmap(rates)(perms)
    # Modulo draws: bias ~ P / 2^32, negligible.
    draws = (_random_words(w_boot, num_random, num_prompts, row_start)[1] % jnp.uint32(num_prompts)).astype(jnp.int32)
    boot_random = jax.vmap(window_rates)(draws)
    boot_top = jax.vmap(rates)(jnp.sort(draws, axis=1))
    return random, boot_top, boot_random


def _tie_chunk_size(num_random: int, num_prompts: int, num_fractions: int) -> int:
    """Replicates per `_tie_kernel` call, after checking that the result fits in memory.

    A replicate's working set is a few [P] and [2P + 1] arrays and an [S, F] window table (S <= 64), about
    `4 (12 P + 3 S F)` bytes; what is kept is its bootstrap reduction per fraction (8 F bytes) and, while a
    chunk is converted, its three rates (12 F bytes)."""
    from jaxrank.resources import check_memory, chunk_size

    s = min(num_prompts, BOOTSTRAP_BASELINE_WINDOWS)
    per_row = 4 * (12 * num_prompts + 3 * s * num_fractions + 8)
    size = chunk_size(num_random, per_row, max_items=max(1, (1 << 24) // max(num_prompts, 1)))
    per_result = 8 * num_fractions * 2
    check_memory(num_random * per_result + size * (per_row + 12 * num_fractions),
                 what=f"the bootstrap replicates [num_random, F] (F = {num_fractions} fractions)", option="num_random",
                 value=num_random, per_unit=per_result, fixed=size * (per_row + 12 * num_fractions))
    return size


def _reduction(top: np.ndarray, random: np.ndarray) -> np.ndarray:
    """1 - top / random, with 0/0 = no reduction (0) and x/0 = -inf for x > 0."""
    top = np.asarray(top, np.float64)
    random = np.asarray(random, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 1.0 - top / random
    out = np.where(random > 0, out, np.where(top > 0, -np.inf, 0.0))
    return out


def tie_reduction(
    key: jax.Array,
    scores: Any,
    votes: Votes,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    num_random: int = 1000,
    confidence: float = 0.95,
    progress: Any = None,
) -> TieReductionResult:
    r"""How much labelling the highest-priority prompts first reduces ties, against random prompts.

    For each fraction q, with P prompts, `k = ceil(q P)` (rounded as `jaxrank.prioritize`):

    - top: the k prompts with the highest score (`jaxrank.prioritize`: stable, lower prompt index first
      on equal scores, prompts ordered as `votes.prompt_ids`, i.e. equal scores break in prompt-id string
      order, "10" before "2"; a `UserWarning` naming `scores` says so when the scores are constant or more
      than half of the prompts share a score with another); `tie_rate_top` = ties / votes among their
      votes (`tie` and `tie (bothbad)` both count as ties);
    - random: `tie_rate_random` = the mean over `num_random` uniformly random k-subsets of the prompts of
      their tie rate (each subset's ties / votes);
    - `reduction = 1 - tie_rate_top / tie_rate_random` (> 0: fewer ties among the top prompts);
    - interval: a percentile bootstrap over prompts of the reported statistic. Replicate j draws P prompts
      with replacement and recomputes the reduction on them: `top_j` is the tie rate of its k
      highest-scored draws and `random_j` its own averaged random baseline, the mean tie rate of
      S = min(P, `BOOTSTRAP_BASELINE_WINDOWS` = 64) random k-subsets of the resample (the cyclic windows
      of k consecutive draws at S evenly spaced starts: the draws are i.i.d., so each window is a
      uniformly random k-subset of the resample; a Monte-Carlo average, not the exact expectation);
      `[lower, upper]` are the `(1 - confidence) / 2` and `(1 + confidence) / 2` quantiles of
      `1 - top_j / random_j` over `num_random` replicates. Averaging the baseline (as the point estimate
      does) keeps one tie-free random subset from sending a replicate to `-inf`; a replicate is `-inf`
      only when none of its S windows has a tie but its top side has one (0 when neither has ties). At
      q = 1 both sides are the whole resample, so the reduction and its interval are exactly 0.

    Under uninformative (random) scores the top-q prompts are a random subset, so the reduction is 0 in
    expectation; scores that put every prompt with ties last give the largest reduction.

    All fractions, subsets and replicates run in one compiled JAX program, in chunks of replicates (memory
    bounded whatever `num_random`; a `num_random` whose result cannot fit is refused with a
    `jaxrank.resources.ResourceError`).

    Args:
        key: PRNG key (required) of the random subsets and the bootstrap replicates.
        scores: priority per prompt: a mapping / pandas Series prompt id -> score (`load_scores`; ids as
            in `votes.prompt_ids`, extra ids ignored), or a float array [P] aligned with `votes.prompt_ids`.
        votes: `jaxrank.Votes` with prompt ids (`jaxrank.load_votes`).
        fractions: the q grid, values in (0, 1] (sorted in the result).
        num_random: random subsets for the baseline, and bootstrap replicates for the interval, >= 2.
        confidence: central probability of the interval, in (0, 1).
        progress: optional callable `progress(done, total)`: once with 0 when the inputs are checked and
            the work starts, then after each chunk of replicates.

    Returns:
        `TieReductionResult`; `.to_frame()` has the columns `fraction, tie_rate_top, tie_rate_random,
        reduction, lower, upper`.

    Raises:
        ValueError: scores missing for prompts with votes, NaN scores, votes without any tie, bad options.

    Example:
        >>> res = tie_reduction(jax.random.key(0), {"p0": 2.0, "p1": 1.0}, votes)  # doctest: +SKIP
        >>> res.to_frame()                                                        # doctest: +SKIP
    """
    from jaxrank.scoring import prioritize

    votes = _check_votes(votes)
    fractions = _check_fractions(fractions)
    num_random = _check_count(num_random, "num_random", 2)
    confidence = _check_confidence(confidence)
    key = _check_key(key)
    values = _aligned_scores(scores, votes)
    ties_p = votes.ties_per_prompt().astype(np.float64)
    votes_p = votes.votes_per_prompt().astype(np.float64)
    if ties_p.sum() == 0:
        raise ValueError("votes contain no ties (no 'tie' or 'tie (bothbad)' outcome); the tie reduction is undefined")

    order = prioritize(values)
    num_prompts = votes.num_prompts
    sizes = _subset_sizes(fractions, num_prompts)
    t_ord = ties_p[order]
    v_ord = votes_p[order]
    ct = np.cumsum(t_ord)
    cv = np.cumsum(v_ord)
    top = ct[sizes - 1] / cv[sizes - 1]

    chunk = _tie_chunk_size(num_random, num_prompts, sizes.size)
    words = jnp.stack([_key_words(k) for k in jax.random.split(key)])
    args = (words, jnp.asarray(t_ord, jnp.float32), jnp.asarray(v_ord, jnp.float32), jnp.asarray(sizes),
            jnp.asarray(_window_starts(num_prompts)))
    # Replicates in chunks of one compiled shape (the last one's extra rows dropped): memory stays bounded
    # whatever `num_random`, and Ctrl-C stops between two chunks.
    random_sum = np.zeros(sizes.size, np.float64)
    boot = np.empty((num_random, sizes.size), np.float64)
    num_chunks = -(-num_random // chunk)
    if progress is not None:
        progress(0, num_chunks)
    for c, start in enumerate(range(0, num_random, chunk)):
        n = min(chunk, num_random - start)
        r, bt, br = _tie_kernel(*args, jnp.uint32(start), num_random=chunk)
        random_sum += np.asarray(r[:n], np.float64).sum(axis=0)
        boot[start:start + n] = _reduction(np.asarray(bt[:n]), np.asarray(br[:n]))
        if progress is not None:
            progress(c + 1, num_chunks)
    tie_rate_random = random_sum / num_random
    reduction = _reduction(top, tie_rate_random)
    full = sizes == num_prompts
    boot[:, full] = 0.0  # top and random are the same resample: exactly no reduction
    reduction = np.where(full, 0.0, reduction)
    lower, upper = _interval(boot, confidence, axis=0)
    return TieReductionResult(
        fraction=fractions,
        num_prompts=sizes.astype(np.int64),
        num_votes=cv[sizes - 1].astype(np.int64),
        tie_rate_top=top,
        tie_rate_random=tie_rate_random,
        reduction=reduction,
        lower=lower,
        upper=upper,
        confidence=confidence,
        num_random=num_random,
    )


# --------------------------------------------------------------------------------------------------
# Leaderboard stability


@dataclasses.dataclass(frozen=True)
class StabilityResult:
    """Leaderboards from the top-q prompts (and random q subsets) against the all-votes ("gold") one.

    Attributes (NumPy float64 [F] per fraction, ascending, unless said otherwise):
        fraction, num_prompts (int64), num_votes (int64): q, ceil(q P) prompts and their votes.
        kendall_tau, spearman, pairs_agree, max_rating_diff: the top-q leaderboard against gold (point
            estimates; see `leaderboard_stability`), each with `<name>_lower`/`<name>_upper`.
        random_<name>, random_<name>_lower, random_<name>_upper: mean and central interval over the random
            q subsets.
        method, ties, confidence, num_random, num_intervals: the options; `num_intervals` is the number of
            bootstrap rounds (BT) or vote orderings (Elo) behind the top-q intervals.
        models: the M model names; gold_ratings: float64[M] gold ratings (Elo scale).
        top_ratings: float64[F, M] the top-q leaderboards (Elo scale; NaN for models without votes there).
    """

    fraction: np.ndarray
    num_prompts: np.ndarray
    num_votes: np.ndarray
    values: dict[str, np.ndarray]
    method: str
    ties: str
    confidence: float
    num_random: int
    num_intervals: int
    models: tuple[str, ...]
    gold_ratings: np.ndarray
    top_ratings: np.ndarray

    def __getattr__(self, name: str) -> np.ndarray:
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        raise AttributeError(f"StabilityResult has no attribute {name!r}")

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        """The CSV columns of `to_frame()`, in order."""
        cols = ["fraction"]
        for name in STABILITY_METRICS:
            cols += [name, f"{name}_lower", f"{name}_upper"]
        for name in STABILITY_METRICS:
            cols += [f"random_{name}", f"random_{name}_lower", f"random_{name}_upper"]
        return tuple(cols + ["num_prompts", "num_votes"])

    def to_frame(self):
        """pandas DataFrame: `fraction`, then per metric (`kendall_tau, spearman, pairs_agree,
        max_rating_diff`) the value with `_lower`/`_upper`, then `random_<metric>` with `_lower`/`_upper`,
        then `num_prompts, num_votes` (what `jaxrank evaluate stability --out` writes)."""
        import pandas as pd

        data = {"fraction": self.fraction}
        for c in self.columns()[1:]:
            data[c] = self.num_prompts if c == "num_prompts" else self.num_votes if c == "num_votes" else self.values[c]
        return pd.DataFrame(data)


def _top_weights(mult: np.ndarray, order: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """float64[B, F, P]: given prompt multiplicities `mult` [B, P] (1 = the data, or a bootstrap resample),
    how many of each prompt's copies are among the `sizes[f]` highest-priority draws (`order`: prompts by
    priority, highest first). The boundary prompt may contribute only part of its copies."""
    w_ord = np.asarray(mult, np.float64)[:, order]
    before = np.cumsum(w_ord, axis=1) - w_ord
    take = np.clip(sizes[None, :, None] - before[:, None, :], 0.0, w_ord[:, None, :])
    out = np.empty_like(take)
    out[..., order] = take
    return out


@functools.partial(jax.jit, static_argnames=("num_random", "num_prompts"))
def _random_masks(words, sizes, *, num_random: int, num_prompts: int):
    """bool[F, R, P]: R uniformly random k-subsets of the P prompts per size k (first k of a permutation)."""
    perms = _random_permutations(words, num_random, num_prompts)
    rank = jnp.argsort(perms, axis=1)  # rank[r, p]: position of prompt p in permutation r
    return rank[None, :, :] < sizes[:, None, None]


def _host_rng(key: jax.Array) -> np.random.Generator:
    """A NumPy generator seeded by the raw bits of a JAX key (reproducible from the key)."""
    return np.random.default_rng([int(w) for w in np.asarray(jax.random.key_data(key), np.uint32).reshape(-1)])


def _presence(prompt_weights: np.ndarray, votes: Votes, *, decisive_only: bool) -> np.ndarray:
    """bool[L, M]: models with at least one vote of positive weight in each lane (prompt weights [L, P])."""
    keep = (votes.outcome < TIE) if decisive_only else np.ones(len(votes), bool)
    keep = keep & (votes.multiplicity() * votes.vote_weight() > 0)
    per_prompt = np.zeros((votes.num_prompts, votes.num_models), np.float64)
    np.add.at(per_prompt, (votes.prompt[keep], votes.a[keep]), 1.0)
    np.add.at(per_prompt, (votes.prompt[keep], votes.b[keep]), 1.0)
    return (np.asarray(prompt_weights, np.float64) @ per_prompt) > 0


@functools.partial(jax.jit, static_argnames=("num_rows", "num_models", "ties", "max_iter", "l2"))
def _bt_chunk(prompt_weights, prompt_index, vote_row, vote_amount, a, b, outcome, *, num_rows, num_models, ties, l2,
              max_iter):
    """Bradley–Terry Elo-scale ratings (theta centred, times 400 / ln 10) of each lane's prompt weights [L, P].

    Each vote adds `lane weight of its prompt * vote_amount` to its row(s) (`VoteRows.vote_row`)."""
    from jaxrank.ratings.bradley_terry import solve_bradley_terry

    def one(pw):
        added = (pw[prompt_index][:, None] * vote_amount).reshape(-1)
        rows = jax.ops.segment_sum(added, vote_row.reshape(-1), num_segments=num_rows)
        return solve_bradley_terry(rows, a, b, outcome, num_models=num_models, ties=ties, l2=l2, max_iter=max_iter).theta

    return jax.vmap(one)(prompt_weights) * _ELO_POINTS


def _bt_lanes(prompt_weights: np.ndarray, votes: Votes, *, ties: str, l2: float, max_iter: int,
              chunk: int, progress: Any = None) -> np.ndarray:
    """float32[L, M] Bradley–Terry ratings of every lane, `chunk` lanes per call (one compiled shape);
    `progress(done, total)` after each call.

    A vmapped fit iterates until its slowest lane converges, and small subsets take the most iterations;
    lanes are therefore grouped by their number of votes (sorted, then put back in order)."""
    rows = votes.rows()
    total = prompt_weights.shape[0]
    size = np.asarray(prompt_weights, np.float64) @ votes.votes_per_prompt().astype(np.float64)
    by_size = np.argsort(size, kind="stable")
    sorted_weights = np.asarray(prompt_weights)[by_size]
    chunk = min(chunk, total)
    pad = (-total) % chunk
    if pad:
        sorted_weights = np.concatenate([sorted_weights, np.repeat(sorted_weights[-1:], pad, axis=0)])
    pw = jnp.asarray(sorted_weights, jnp.float32)
    common = dict(num_rows=rows.num_rows, num_models=votes.num_models, ties=ties, l2=float(l2), max_iter=max_iter)
    pidx = jnp.asarray(votes.prompt)
    amount = rows.vote_amount * rows.vote_count[:, None]
    starts = range(0, total + pad, chunk)
    outs = []
    for c, s in enumerate(starts):
        outs.append(np.asarray(_bt_chunk(pw[s:s + chunk], pidx, rows.vote_row, amount, rows.a, rows.b, rows.outcome,
                                         **common)))
        if progress is not None:
            progress(c + 1, len(starts))
    ratings = np.empty((total, votes.num_models), np.float32)
    ratings[by_size] = np.concatenate(outs)[:total]
    return ratings


def _restrict(orders: np.ndarray, selected: np.ndarray, n: int) -> np.ndarray:
    """int32[K, N]: each row of `orders` (orders of all N votes) keeping only its selected votes (`selected`
    bool[N], or bool[K, N] per row), in the same relative order, followed by the padding vote index N."""
    selected = np.broadcast_to(selected, orders.shape)
    keep = np.take_along_axis(selected, orders, axis=1)
    # A stable sort on "not kept" moves the kept entries to the front, keeping their order.
    pos = np.argsort(~keep, axis=1, kind="stable")
    out = np.take_along_axis(orders, pos, axis=1)
    return np.where(np.take_along_axis(keep, pos, axis=1), out, n).astype(np.int32)


def _elo_replay(perms: np.ndarray, lane_perm: np.ndarray, lane_prompts: np.ndarray, votes: Votes, *,
                k: float, chunk: int, progress: Any = None) -> np.ndarray:
    """Online Elo ratings float32[L, M]: lane l replays the votes on its prompts (`lane_prompts[l]`, bool[P])
    in the order `perms[lane_perm[l]]` (an order of all N votes, restricted to the lane's votes).

    Reuses the online-Elo scan of `jaxrank.ratings.elo` (the kernel behind `elo_permutations`) with one
    extra vote between two extra models as the padding: it moves only the extra models' ratings, which
    are dropped. Lanes run `chunk` at a time (one compiled shape); a chunk's orders are built when it
    runs, so memory is about `(num_permutations + chunk) x N` indices. `progress(done, total)` after each chunk.
    """
    from jaxrank.ratings.elo import replay_elo

    n, m, total = len(votes), votes.num_models, lane_perm.shape[0]
    chunk = min(chunk, total)
    a_ext = jnp.asarray(np.append(votes.a, m), jnp.int32)
    b_ext = jnp.asarray(np.append(votes.b, m + 1), jnp.int32)
    s_ext = jnp.asarray(np.append(votes.score_a(), 0.5), jnp.float32)
    outs = []
    starts = range(0, total, chunk)
    for c, start in enumerate(starts):
        idx = np.arange(start, min(start + chunk, total))
        part = _restrict(perms[lane_perm[idx]], lane_prompts[idx][:, votes.prompt], n)
        lanes = part.shape[0]
        if lanes < chunk:
            part = np.concatenate([part, np.full((chunk - lanes, n), n, np.int32)])
        r = replay_elo(a_ext, b_ext, s_ext, jnp.asarray(part), num_models=m + 2,
                        k=k, scale=400.0, base=10.0, init=1000.0, unroll=4, lane_major=True)
        outs.append(np.asarray(r)[:lanes, :m])
        if progress is not None:
            progress(c + 1, len(starts))
    return np.concatenate(outs)


def _summarise(values: dict[str, np.ndarray], prefix: str, samples: np.ndarray, confidence: float,
               point: np.ndarray | None) -> None:
    """samples [F, S, 4] -> values[prefix + metric] (point or NaN-ignoring mean over S) and its interval."""
    lo, hi = _interval(samples, confidence, axis=1)
    mean = _nanmean(samples, axis=1) if point is None else point
    for i, name in enumerate(STABILITY_METRICS):
        values[f"{prefix}{name}"] = np.asarray(mean[:, i], np.float64)
        values[f"{prefix}{name}_lower"] = np.asarray(lo[:, i], np.float64)
        values[f"{prefix}{name}_upper"] = np.asarray(hi[:, i], np.float64)


def _compare(ratings: np.ndarray, reference: np.ndarray, present: np.ndarray) -> np.ndarray:
    """float64[L, 4] metrics of each lane's ratings against its reference ratings, on its present models."""
    return np.asarray(
        _metrics_many(jnp.asarray(ratings, jnp.float32), jnp.asarray(reference, jnp.float32), jnp.asarray(present)),
        np.float64,
    )


def _check_replay_memory(num_replays: int, num_models: int, num_rows: int, num_units: int, chunk_size: int, *,
                         judge_rows: int = 0) -> None:
    """Refuse (`jaxrank.resources.ResourceError`) a `design_curves` whose replays cannot fit in memory.

    Every replay of one (design, budget) keeps its ratings, three standard errors and presence flags [M]
    (~44 M bytes) and a few scalars; `chunk_size` replays at a time hold their sample (inclusion flags and
    weights over the U human and J judge rows, ~24 bytes a row), the unit tables (~16 P bytes) and the fit's
    Hessian and score sandwich [M, M] (~8 M^2 bytes)."""
    from jaxrank.resources import check_memory

    per_result = num_models * (3 * 12 + 8) + 32
    chunk = max(1, min(int(chunk_size), int(num_replays)))
    per_work = 4 * (6 * (num_rows + judge_rows) + 4 * num_units + 2 * num_models * num_models + 8 * num_models)
    check_memory(num_replays * per_result + chunk * per_work,
                 what=f"the design replays [num_replays, M] (M = {num_models} models, {num_rows} vote rows)",
                 option="num_replays", value=num_replays, per_unit=per_result, fixed=chunk * per_work)


def _stability_plan(method: str, num_f: int, num_prompts: int, num_votes: int, num_models: int, num_random: int,
                    num_bootstrap: int, num_permutations: int, chunk: int) -> None:
    """Refuse (`jaxrank.resources.ResourceError`) a `leaderboard_stability` whose lanes cannot fit in memory.

    Every lane (gold, F top-q, the bootstrap rounds' 1 + F, F x `num_random` random subsets) keeps a row of
    prompt weights or a prompt mask [P] (with the copies made on the way, ~9 P bytes), its ratings and
    presence flags [M] (~21 M bytes) and its metrics; the random subsets come from [R, P] permutations;
    bootstrap rounds hold a few float64 [1 + F, P] weight tables; Elo keeps its [permutations, N] vote orders.
    The fits themselves run `chunk` lanes at a time."""
    from jaxrank.resources import check_memory_terms

    per_lane = 9 * num_prompts + 21 * num_models + 32
    terms = {"num_random": (num_random, num_f * per_lane + 12 * num_prompts)}
    fixed = (1 + num_f) * per_lane + chunk * 4 * (num_prompts + num_votes)
    if method == "bt":
        terms["num_bootstrap"] = (num_bootstrap, (1 + num_f) * (per_lane + 32 * num_prompts))
    else:
        terms["num_permutations"] = (num_permutations, (1 + num_f) * per_lane + 8 * num_votes)
        fixed += chunk * 16 * num_votes
    check_memory_terms(terms, what=f"the {method} stability lanes (P = {num_prompts} prompts, F = {num_f} fractions)",
                       fixed=fixed)


def leaderboard_stability(
    key: jax.Array,
    scores: Any,
    votes: Votes,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    method: str = "bt",
    ties: str = "half",
    num_random: int = 100,
    num_permutations: int = 100,
    num_bootstrap: int = 100,
    confidence: float = 0.95,
    l2: float = 0.0,
    max_iter: int = 1000,
    elo_k: float = 4.0,
    chunk_size: int = 256,
    progress: Any = None,
) -> StabilityResult:
    r"""How close the leaderboard from the top-q prompts' votes is to the leaderboard from all votes.

    Gold is the leaderboard on all votes. For each fraction q (k = ceil(q P) prompts, as `tie_reduction`):

    - top-q: the leaderboard fitted on the votes of the k highest-scored prompts;
    - random: leaderboards fitted on the votes of `num_random` uniformly random k-subsets of prompts.

    Each is compared with gold by `kendall_tau` (tau-b), `spearman`, `pairs_agree` (`pairs_agreement`:
    the fraction of model pairs ordered as in gold) and `max_rating_diff` (the largest |rating - gold|
    in Elo points, both centred on the models compared, since ratings are defined up to a shift).
    A model without votes in a subset (with `ties="drop"`: without decisive votes) is left out of that
    subset's comparison (its rating in `top_ratings` is NaN).

    Methods and intervals (`[<metric>_lower, <metric>_upper]`, central `confidence` quantiles):

    - `method="bt"`: Bradley–Terry (`jaxrank.ratings.solve_bradley_terry` with `ties`, `l2`) vmapped over
      lanes of per-prompt vote weights (weight 0 leaves a vote out), `chunk_size` lanes per compiled call.
      Top-q interval: a bootstrap over prompts. Round j draws P prompts with replacement; its gold is
      fitted on all resampled votes and its top-q leaderboard on the votes of its k highest-scored draws;
      the metric compares the two (so at q = 1 every round gives tau = 1, max diff = 0). With
      `num_bootstrap=0` the intervals are NaN (point estimates only).
    - `method="elo"`: online Elo (Chatbot Arena's, K = `elo_k`, init 1000). The votes are replayed in
      `num_permutations` random orders (the orders `jaxrank.elo_permutations` draws from
      `jax.random.split(key, 3)[2]`, so gold equals its median);
      gold is the per-model median over the orders of all votes, the top-q leaderboard the median over the
      same orders restricted to the top-q votes. Top-q interval: over the orders, each order's top-q
      ratings against that order's all-votes ratings.
    - random baseline: `random_<metric>` is the mean over the random subsets (NaN-ignoring) and
      `random_<metric>_lower/_upper` the quantiles over them. BT: each subset's fit against gold; Elo:
      subset j replayed in order j (mod `num_permutations`) against the all-votes ratings of that order.

    At q = 1 the top-q leaderboard and every random subset are gold (not refitted: gold's fit, and for
    each bootstrap round its own gold*, is reused): tau = rho = pairs_agree = 1 and max_rating_diff = 0
    (tau and rho NaN if gold itself ties every model), and so are the random band and, when there are
    intervals (`num_bootstrap >= 2`, or Elo), the top-q interval; with `num_bootstrap=0` the top-q
    interval is NaN at every q.

    Rank comparisons treat ratings closer than `RATING_TIE_ATOL` (1e-3 Elo points) as tied, so
    optimizer noise between models the data cannot separate (e.g. a subset with only ties) is not
    counted as an ordering.

    With `l2 = 0` (maximum likelihood) a model that never lost or never won within a subset has no finite
    BT rating: its rating is where the optimizer stopped (`max_iter`), which inflates `max_rating_diff` on
    small subsets; `l2 > 0` (a prior, also on gold) keeps every rating finite.

    Args:
        key: PRNG key (required) of the random subsets, the bootstrap rounds and the vote orders.
        scores: priority per prompt, as for `tie_reduction`.
        votes: `jaxrank.Votes` with prompt ids.
        fractions: the q grid in (0, 1].
        method: `"bt"` or `"elo"`.
        ties: BT tie model (`"half"`, `"rao-kupper"`, `"davidson"`, `"drop"`); Elo scores a tie 1/2.
        num_random: random subsets per fraction, >= 2.
        num_permutations: vote orders for `method="elo"` (>= 100 recommended), >= 2.
        num_bootstrap: bootstrap rounds for the BT top-q intervals, 0 or >= 2.
        confidence: central probability of the intervals.
        l2: BT prior precision (natural-log units), >= 0.
        max_iter: BT L-BFGS iteration cap.
        elo_k: Elo K-factor.
        chunk_size: lanes per compiled call (memory ~ chunk_size x votes).
        progress: optional callable `progress(done, total)`: once with 0 when the inputs are checked and the
            fits start, then after each compiled call of `chunk_size` lanes.

    Returns:
        `StabilityResult`; `.to_frame()` gives the CSV columns (see `StabilityResult.columns()`).

    Example:
        >>> res = leaderboard_stability(jax.random.key(0), scores, votes, fractions=[0.5, 1.0])  # doctest: +SKIP
        >>> res.to_frame()[["fraction", "kendall_tau", "random_kendall_tau"]]                     # doctest: +SKIP
    """
    from jaxrank.ratings.bradley_terry import TIE_MODELS
    from jaxrank.ratings.elo import check_elo_options, random_vote_orders
    from jaxrank.scoring import prioritize

    votes = _check_votes(votes)
    fractions = _check_fractions(fractions)
    if method not in ("bt", "elo"):
        raise ValueError(f"method must be 'bt' or 'elo', got {method!r}")
    if ties not in TIE_MODELS:
        raise ValueError(f"ties must be one of {preview(TIE_MODELS)}, got {ties!r}")
    num_random = _check_count(num_random, "num_random", 2)
    num_permutations = _check_count(num_permutations, "num_permutations", 2)
    num_bootstrap = _check_count(num_bootstrap, "num_bootstrap", 0)
    if num_bootstrap == 1:
        raise ValueError("num_bootstrap must be 0 (no interval) or >= 2")
    confidence = _check_confidence(confidence)
    if isinstance(l2, bool) or not isinstance(l2, numbers.Real) or not (math.isfinite(l2) and l2 >= 0):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
    max_iter = _check_count(max_iter, "max_iter", 1)
    elo_k = check_elo_options(elo_k, 400.0, 10.0, 1000.0)[0]
    chunk_size = _check_count(chunk_size, "chunk_size", 1)
    key = _check_key(key)
    values = _aligned_scores(scores, votes)

    if method == "elo" and votes.count is not None and np.any(votes.count != 1):
        raise ValueError("method='elo' replays votes one by one and needs one entry per vote; these votes carry "
                         "counts (expand them with votes.subset(np.repeat(np.arange(len(votes)), votes.count)))")
    num_prompts, n, m = votes.num_prompts, len(votes), votes.num_models
    num_f = fractions.size
    order = prioritize(values)
    sizes = _subset_sizes(fractions, num_prompts)
    _stability_plan(method, num_f, num_prompts, n, m, num_random, num_bootstrap, num_permutations, chunk_size)
    top_mask = _top_weights(np.ones((1, num_prompts)), order, sizes)[0] > 0  # [F, P]
    k_random, k_boot, k_perm = jax.random.split(key, 3)
    rand_mask = np.asarray(_random_masks(_key_words(k_random), jnp.asarray(sizes), num_random=num_random, num_prompts=num_prompts))
    rand_mask = rand_mask.reshape(num_f * num_random, num_prompts)
    decisive_only = method == "bt" and ties == "drop"

    if method == "bt":
        # Lanes: gold, top-q (F), bootstrap rounds (gold* then F top-q* each), random subsets (F * R).
        mult = _host_rng(k_boot).multinomial(num_prompts, np.full(num_prompts, 1.0 / num_prompts), size=num_bootstrap)
        boot = np.concatenate([mult[:, None, :], _top_weights(mult, order, sizes)], axis=1)  # [B, 1 + F, P]
        lanes = np.concatenate(
            [np.ones((1, num_prompts)), top_mask, boot.reshape(-1, num_prompts), rand_mask]
        ).astype(np.float32)
        nb = num_bootstrap * (1 + num_f)
        # At q = 1 the top-q and random lanes are gold, and a round's top-q lane is its gold*: fit once.
        same = np.arange(lanes.shape[0])
        full = np.flatnonzero(sizes == num_prompts)
        same[1 + full] = 0
        rounds = 1 + num_f + (1 + num_f) * np.arange(num_bootstrap)
        same[(rounds[:, None] + 1 + full[None, :]).reshape(-1)] = np.repeat(rounds, full.size)
        same[(1 + num_f + nb + full[:, None] * num_random + np.arange(num_random)[None, :]).reshape(-1)] = 0
        fitted, where = np.unique(same, return_inverse=True)
        if progress is not None:
            progress(0, -(-fitted.size // min(chunk_size, fitted.size)))
        ratings = _bt_lanes(lanes[fitted], votes, ties=ties, l2=float(l2), max_iter=max_iter, chunk=chunk_size,
                            progress=progress)
        ratings = ratings[where.reshape(-1)]
        present = _presence(lanes, votes, decisive_only=decisive_only)
        ref = np.zeros(lanes.shape[0], np.int64)  # gold, except bootstrap rounds: their own gold*
        ref[1 + num_f:1 + num_f + nb] = 1 + num_f + (1 + num_f) * np.arange(num_bootstrap).repeat(1 + num_f)
        metrics = _compare(ratings, ratings[ref], present)
        gold = ratings[0]
        top_r, top_p = ratings[1:1 + num_f], present[1:1 + num_f]
        top_metrics = metrics[1:1 + num_f]
        if num_bootstrap:
            boot_metrics = metrics[1 + num_f:1 + num_f + nb].reshape(num_bootstrap, 1 + num_f, 4)[:, 1:]
            boot_metrics = boot_metrics.transpose(1, 0, 2)  # [F, B, 4]
        else:
            boot_metrics = np.full((num_f, 2, 4), np.nan)
        rand_metrics = metrics[1 + num_f + nb:].reshape(num_f, num_random, 4)
        num_intervals, shift = num_bootstrap, 1000.0
    else:
        # Lanes: for each order p, all votes then the F top-q sets (each the order restricted to the set);
        # then random subset j in order j mod num_permutations. One compiled replay.
        perm = np.asarray(random_vote_orders(jax.random.split(k_perm, num_permutations), n, lane_major=True))  # [Pm, N]
        sets = np.concatenate([np.ones((1, num_prompts), bool), top_mask])  # [1 + F, P]
        which = np.arange(rand_mask.shape[0]) % num_permutations
        lane_perm = np.concatenate([np.repeat(np.arange(num_permutations), 1 + num_f), which])
        lane_prompts = np.concatenate([np.tile(sets, (num_permutations, 1)), rand_mask])
        num_top = num_permutations * (1 + num_f)
        # At q = 1 every top-q lane is its order's all-votes lane, and so is every random lane: replay once.
        same = np.arange(lane_perm.shape[0])
        full = np.flatnonzero(sizes == num_prompts)
        same[(np.arange(num_permutations)[:, None] * (1 + num_f) + 1 + full[None, :]).reshape(-1)] = np.repeat(
            np.arange(num_permutations) * (1 + num_f), full.size)
        rand_full = (full[:, None] * num_random + np.arange(num_random)[None, :]).reshape(-1)
        same[num_top + rand_full] = which[rand_full] * (1 + num_f)
        replayed, where = np.unique(same, return_inverse=True)
        if progress is not None:
            progress(0, -(-replayed.size // min(chunk_size, replayed.size)))
        ratings = _elo_replay(perm, lane_perm[replayed], lane_prompts[replayed], votes, k=elo_k, chunk=chunk_size,
                              progress=progress)
        ratings = ratings[where.reshape(-1)]
        per_order = ratings[:num_top].reshape(num_permutations, 1 + num_f, m)
        medians = np.median(per_order, axis=0)  # [1 + F, M]
        gold = medians[0]
        set_present = _presence(sets, votes, decisive_only=False)
        top_r, top_p = medians[1:], set_present[1:]
        top_metrics = _compare(top_r, np.broadcast_to(gold, top_r.shape), top_p)
        boot_metrics = _compare(
            per_order[:, 1:].reshape(-1, m), np.repeat(per_order[:, 0], num_f, axis=0), np.tile(top_p, (num_permutations, 1))
        ).reshape(num_permutations, num_f, 4).transpose(1, 0, 2)
        rand_metrics = _compare(
            ratings[num_top:], per_order[which, 0], _presence(rand_mask, votes, decisive_only=False)
        ).reshape(num_f, num_random, 4)
        num_intervals, shift = num_permutations, 0.0

    out: dict[str, np.ndarray] = {}
    _summarise(out, "", boot_metrics, confidence, top_metrics)
    _summarise(out, "random_", rand_metrics, confidence, None)
    return StabilityResult(
        fraction=fractions,
        num_prompts=sizes.astype(np.int64),
        num_votes=(top_mask[:, votes.prompt] * votes.multiplicity()[None, :]).sum(axis=1).astype(np.int64),
        values=out,
        method=method,
        ties=ties,
        confidence=confidence,
        num_random=num_random,
        num_intervals=num_intervals,
        models=votes.models,
        gold_ratings=np.asarray(gold, np.float64) + shift,
        top_ratings=np.where(top_p, np.asarray(top_r, np.float64) + shift, np.nan),
    )


# --------------------------------------------------------------------------------------------------
# Budget curves

_ERROR_METRICS = ("wce", "mae", "rmse")


@dataclasses.dataclass(frozen=True)
class BudgetCurves:
    """Judge-budget error vs budget, per allocator, over Monte-Carlo runs.

    Attributes:
        allocators: the A allocator names.
        budgets: int64[C] budgets (queries spent), ascending.
        errors: {"wce" | "mae" | "rmse": float64[A, R, C]} per-run errors (worst-case max_i |s_i - ŝ_i|,
            mean absolute, root mean square) of R runs.
        confidence: the central probability of the intervals.
        num_runs: R.

    `mean(metric)` [A, C] is the mean over runs; `interval(metric)` the central `confidence` quantiles
    over runs (the spread one real spend of that budget may land in); `stderr(metric)` the standard error
    of the mean (`std / sqrt(R)`).
    """

    allocators: tuple[str, ...]
    budgets: np.ndarray
    errors: dict[str, np.ndarray]
    confidence: float
    num_runs: int

    def mean(self, metric: str = "wce") -> np.ndarray:
        return self._errors(metric).mean(axis=1)

    def interval(self, metric: str = "wce") -> tuple[np.ndarray, np.ndarray]:
        return _interval(self._errors(metric), self.confidence, axis=1)

    def stderr(self, metric: str = "wce") -> np.ndarray:
        e = self._errors(metric)
        return e.std(axis=1, ddof=1) / math.sqrt(e.shape[1]) if e.shape[1] > 1 else np.full(e.shape[::2], np.nan)

    def _errors(self, metric: str) -> np.ndarray:
        if metric not in self.errors:
            raise ValueError(f"metric must be one of {preview(_ERROR_METRICS)}, got {metric!r}")
        return self.errors[metric]

    def curves(self, metric: str = "wce") -> dict[str, dict[str, np.ndarray]]:
        """{allocator: {"budget", "wce_mean", "wce_lower", "wce_upper"}} (keys named after `metric`),
        the input of `jaxrank.plots.plot_budget_curves`."""
        mean = self.mean(metric)
        lo, hi = self.interval(metric)
        return {
            name: {"budget": self.budgets, f"{metric}_mean": mean[i], f"{metric}_lower": lo[i], f"{metric}_upper": hi[i]}
            for i, name in enumerate(self.allocators)
        }

    def to_frame(self):
        """pandas DataFrame, one row per (allocator, budget): `allocator, budget`, then for each of `wce,
        mae, rmse`: `<metric>_mean, <metric>_lower, <metric>_upper, <metric>_stderr`."""
        import pandas as pd

        frames = []
        for i, name in enumerate(self.allocators):
            data: dict[str, Any] = {"allocator": [name] * self.budgets.size, "budget": self.budgets}
            for metric in _ERROR_METRICS:
                lo, hi = self.interval(metric)
                data[f"{metric}_mean"] = self.mean(metric)[i]
                data[f"{metric}_lower"] = lo[i]
                data[f"{metric}_upper"] = hi[i]
                data[f"{metric}_stderr"] = self.stderr(metric)[i]
            frames.append(pd.DataFrame(data))
        return pd.concat(frames, ignore_index=True)


def budget_curves(
    key: jax.Array,
    sampler: Any,
    *,
    budgets: Sequence[int],
    allocators: Sequence[str] = ("uniform", "robin", "robin-hood"),
    num_runs: int = 50,
    confidence: float = 0.95,
    batch_size: int = 1,
    delta: float | None = None,
    mesh: jax.sharding.Mesh | None = None,
    true_means: Any = None,
    variances: Any = None,
) -> BudgetCurves:
    r"""Error vs judge budget for each allocator, with intervals over Monte-Carlo runs.

    One `jaxrank.allocation.simulate_sweep` call: every allocator is simulated up to the largest budget with
    the others as checkpoints (all allocators see the same per-item score streams), `num_runs` runs vmapped.
    Errors at budget b: worst-case `max_i |s_i - ŝ_i|`, mean absolute and RMSE against the true means.

    Args:
        key: PRNG key.
        sampler: a `jaxrank.allocation` sampler (`GaussianSampler`, `EmpiricalSampler`, ...).
        budgets: the budgets B (each >= the number of items, a multiple of `batch_size`, and >= robin-hood's
            warm-up when it is among the allocators).
        allocators: among `"uniform"`, `"robin"`, `"robin-hood"`.
        num_runs: R >= 2 Monte-Carlo runs.
        confidence: central probability of the run intervals.
        batch_size, delta, mesh, true_means, variances: as for `jaxrank.allocation.simulate_sweep` (`delta`
            default: `jaxrank.allocation.DEFAULT_DELTA`).

    Returns:
        `BudgetCurves` (`mean`, `interval`, `stderr`, `curves()` for `plot_budget_curves`, `to_frame()`).

    Example:
        >>> from jaxrank.allocation import GaussianSampler
        >>> s = GaussianSampler(jnp.zeros(20), jnp.linspace(0.1, 1.0, 20))
        >>> bc = budget_curves(jax.random.key(0), s, budgets=[500, 1000, 2000], num_runs=8)  # doctest: +SKIP
        >>> bc.to_frame()[["allocator", "budget", "wce_mean"]]                               # doctest: +SKIP
    """
    from jaxrank.allocation import DEFAULT_DELTA, simulate_sweep

    num_runs = _check_count(num_runs, "num_runs", 2)
    confidence = _check_confidence(confidence)
    if isinstance(allocators, str):
        allocators = (allocators,)
    allocators = tuple(dict.fromkeys(allocators))
    results = simulate_sweep(
        key, sampler, budgets, allocators=allocators, num_runs=num_runs, batch_size=batch_size,
        delta=DEFAULT_DELTA if delta is None else delta, mesh=mesh, true_means=true_means, variances=variances,
    )
    first = results[allocators[0]]
    errors = {
        metric: np.stack([np.asarray(getattr(results[a], metric), np.float64) for a in allocators])
        for metric in _ERROR_METRICS
    }
    return BudgetCurves(
        allocators=allocators,
        budgets=np.asarray(first.budgets, np.int64),
        errors=errors,
        confidence=confidence,
        num_runs=num_runs,
    )


# --------------------------------------------------------------------------------------------------
# Replays of sampling designs: coverage, width and Kendall tau per label budget

DESIGN_NAMES = ("uniform", "proportional", "ppi", "ppi-proportional")
DEFAULT_BUDGETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
_COVERAGE_ATOL = 1e-5  # natural-log units: at 100 % the design interval has width 0 and the estimate is the target


@dataclasses.dataclass(frozen=True)
class DesignCurves:
    """What each sampling design gives per label budget, over R replays on fully labelled votes.

    Attributes:
        designs: the D design names (`"uniform"`, `"proportional"` (scores mixed with `uniform_mix`),
            `"ppi"` (uniform sampling, prediction-powered fit), `"ppi-proportional"`).
        budgets: float64[B] shares of the prompts labelled; num_labels: int64[B] the budgets in prompts.
        coverage: float64[D, B] share of (replay, model) pairs whose design-based interval covers the
            full-data rating; coverage_stderr: its Monte-Carlo standard error (over replays).
        width: float64[D, B] mean interval width (Elo points) of the design-based intervals (target: the
            full-data leaderboard; 0 at 100 %); width_superpopulation: of the superpopulation intervals
            (target: the prompt population's leaderboard; at 100 % the ordinary cluster-robust width).
        kendall_tau: float64[D, B] mean Kendall tau-b of the estimated leaderboard against the full-data one.
        lam, effective_labels: float64[D, B] mean PPI lambda and effective number of human labels.
        equivalent_uniform: float64[D, B] the share of prompts uniform sampling needs for the same mean
            design width (interpolated on the uniform curve; NaN outside it).
        labels_to_match: float64[D] the smallest share at which a design's superpopulation width reaches
            uniform's at 100 % (interpolated; NaN if never). For these estimators it is 100 %: labelling a
            sample can never beat labelling every prompt (their variance is the full-data variance plus a
            design term), so equivalent_uniform is the informative comparison.
        num_replays, confidence, uniform_mix, sampling: the settings.
        full_ratings: float64[M] the full-data leaderboard (Elo scale).
    """

    designs: tuple[str, ...]
    budgets: np.ndarray
    num_labels: np.ndarray
    coverage: np.ndarray
    coverage_stderr: np.ndarray
    width: np.ndarray
    width_superpopulation: np.ndarray
    kendall_tau: np.ndarray
    lam: np.ndarray
    effective_labels: np.ndarray
    equivalent_uniform: np.ndarray
    labels_to_match: np.ndarray
    num_replays: int
    confidence: float
    uniform_mix: float
    sampling: str
    full_ratings: np.ndarray

    def to_frame(self):
        """pandas DataFrame, one row per (design, budget): `design, budget, num_labels, coverage,
        coverage_stderr, width, width_superpopulation, kendall_tau, lam, effective_labels,
        equivalent_uniform, labels_to_match`."""
        import pandas as pd

        rows = []
        for d, name in enumerate(self.designs):
            for j, share in enumerate(self.budgets):
                rows.append({
                    "design": name, "budget": float(share), "num_labels": int(self.num_labels[j]),
                    "coverage": self.coverage[d, j], "coverage_stderr": self.coverage_stderr[d, j],
                    "width": self.width[d, j], "width_superpopulation": self.width_superpopulation[d, j],
                    "kendall_tau": self.kendall_tau[d, j], "lam": self.lam[d, j],
                    "effective_labels": self.effective_labels[d, j], "equivalent_uniform": self.equivalent_uniform[d, j],
                    "labels_to_match": self.labels_to_match[d],
                })
        return pd.DataFrame(rows)


def _crossing(budgets: np.ndarray, widths: np.ndarray, target: float) -> float:
    """The smallest budget at which a (noisy, mostly decreasing) width curve reaches `target`, linearly
    interpolated between grid points; NaN if it never does."""
    below = np.flatnonzero(widths <= target * (1 + 1e-5))  # float32 fits: equal widths differ in the 7th digit
    if below.size == 0:
        return float("nan")
    j = int(below[0])
    if j == 0:
        return float(budgets[0])
    w0, w1 = widths[j - 1], widths[j]
    t = (w0 - target) / (w0 - w1) if w0 != w1 else 1.0
    return float(budgets[j - 1] + t * (budgets[j] - budgets[j - 1]))


def _equivalent_share(budgets: np.ndarray, uniform: np.ndarray, width: float) -> float:
    """The share at which the uniform width curve equals `width` (interpolated; NaN outside the curve)."""
    if not np.isfinite(width):
        return float("nan")
    for j in range(1, budgets.size):
        hi, lo = uniform[j - 1], uniform[j]
        if min(hi, lo) <= width <= max(hi, lo):
            t = (hi - width) / (hi - lo) if hi != lo else 0.0
            return float(budgets[j - 1] + t * (budgets[j] - budgets[j - 1]))
    return float("nan")


def _design_inputs(human: Votes, scores: Any, judge: Any, num_models: Any):
    """Vote tables -> (human UnitRows, float[P] scores, judge UnitRows or None, M) on the voted prompts."""
    from jaxrank import active

    votes = _check_votes(human)
    if num_models is not None and num_models != votes.num_models:
        raise ValueError(f"num_models = {num_models} but the votes have {votes.num_models} models (leave it out)")
    values = _aligned_scores(scores, votes)
    if (values < 0).any():
        bad = [votes.prompt_ids[i] for i in np.flatnonzero(values < 0)]
        raise ValueError(f"scores: {len(bad)} negative score(s), e.g. for prompt(s) {preview(bad)}; scores must be >= 0")
    ids = list(votes.prompt_ids)
    rows = active.votes_unit_rows(votes, ids)
    if judge is not None and isinstance(judge, Votes):
        if judge.prompt is None:
            raise ValueError("judge: the judge votes have no prompt ids; they are matched to the human votes by prompt")
        have = set(judge.prompt_ids[i] for i in np.unique(judge.prompt))
        uncovered = [p for p in ids if p not in have]
        if uncovered:
            raise ValueError(f"judge: the judge votes do not cover {len(uncovered)} of the {len(ids)} prompts with human "
                             f"votes, e.g. {preview(uncovered)}; PPI needs judge votes on every labelled prompt")
        pos = {p: i for i, p in enumerate(judge.prompt_ids)}
        keep = np.isin(np.asarray(judge.prompt), [pos[p] for p in ids])
        if not keep.all():
            warnings.warn(f"judge: {int((~keep).sum())} judge vote(s) on prompts without human votes are left out of "
                          "the replay (its population is the prompts with human votes)", stacklevel=3)
            judge = judge.subset(keep)
        judge = active.votes_unit_rows(judge, ids, models=votes.models, name="judge")
    return rows, values, judge, votes.num_models


def design_curves(
    key: jax.Array,
    human: Any,
    scores: Any,
    *,
    num_models: int | None = None,
    judge: Any = None,
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    designs: Sequence[str] | None = None,
    uniform_mix: float = 0.1,
    num_replays: int = 200,
    sampling: str = "systematic",
    ties: str = "half",
    confidence: float = 0.95,
    scale: float = 400.0,
    base: float = 10.0,
    chunk_size: int = 128,
    progress: Any = None,
) -> DesignCurves:
    r"""Replay sampling designs on fully labelled votes: per budget and design, R draws, each fitted
    (design-weighted or prediction-powered) with its intervals, all replays of one (design, budget) in one
    compiled call (`jaxrank.active.replay_designs`).

    The target is the full-data leaderboard (the fit on every prompt's human votes). Budgets are shares of
    the P prompts (sampling units), `round(share * P)` prompts each (at least 2).

    Args:
        key: PRNG key (every design and budget uses the same replay keys: paired comparisons).
        human: every prompt's human votes: a `jaxrank.Votes` with prompt ids (the prompts with votes are
            the units), or `jaxrank.active.UnitRows`.
        scores: priority scores (for the proportional designs): with `Votes`, a mapping / Series prompt id
            -> score (`load_scores`) covering every voted prompt, or an array aligned with
            `votes.drop_empty_prompts().prompt_ids`; with `UnitRows`, float[P].
        num_models: M (only with `UnitRows`).
        judge: optional judge votes on every prompt (enables the PPI designs): `Votes` (matched by prompt
            id; they must cover every prompt with human votes; judge prompts without human votes are
            left out) or `UnitRows`.
        budgets: shares in (0, 1].
        designs: among `DESIGN_NAMES` (default: uniform and proportional, plus both PPI designs with a judge).
        uniform_mix: tau of the proportional designs.
        num_replays: R >= 2 per design and budget.
        sampling: `"systematic"` (fixed size) or `"poisson"`.
        ties, confidence, scale, base: the fit's tie model, interval level and Elo scale.
        progress: optional callable `progress(done, total)` after each (design, budget), and once with 0
            when the inputs are checked and the work starts.

    Returns:
        `DesignCurves`.
    """
    from jaxrank import active

    if isinstance(human, Votes):
        human, scores, judge, num_models = _design_inputs(human, scores, judge, num_models)
    elif num_models is None:
        raise ValueError("num_models is needed when human is UnitRows (it is read from a Votes table)")
    num_replays = _check_count(num_replays, "num_replays", 2)
    confidence = _check_confidence(confidence)
    if designs is None:
        designs = ("uniform", "proportional") + (("ppi", "ppi-proportional") if judge is not None else ())
    designs = tuple(dict.fromkeys(designs))
    for d in designs:
        if d not in DESIGN_NAMES:
            raise ValueError(f"designs: unknown design {d!r}; expected one of {', '.join(DESIGN_NAMES)}")
        if d.startswith("ppi") and judge is None:
            raise ValueError(f"designs: {d!r} needs judge votes (judge=...)")
    if "uniform" not in designs:
        designs = ("uniform",) + designs  # the reference of equivalent_uniform and labels_to_match
    shares = np.asarray(sorted(set(float(b) for b in budgets)), np.float64)
    if shares.size == 0 or shares[0] <= 0 or shares[-1] > 1:
        raise ValueError(f"budgets must be shares in (0, 1], got {list(budgets)}")
    u = np.asarray(scores, np.float64)
    p_units = u.shape[0]
    counts = np.maximum(2, np.rint(shares * p_units)).astype(np.int64)
    _check_replay_memory(num_replays, num_models, int(np.shape(human.a)[0]), p_units, chunk_size,
                         judge_rows=0 if judge is None else int(np.shape(judge.a)[0]))
    full_sample = active.single_round(np.ones(p_units, bool), np.ones(p_units))
    full = active.fit_design_weighted(active.restrict_rows(human, np.ones(p_units, bool)), full_sample,
                                      num_models=num_models, ties=ties)
    theta_full = np.asarray(full.theta, np.float64)
    k = scale / math.log(base)
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2.0)
    tau_fn = jax.jit(jax.vmap(lambda t: kendall_tau(t, jnp.asarray(theta_full, t.dtype))))
    shape = (len(designs), shares.size)
    out = {name: np.full(shape, np.nan) for name in ("coverage", "coverage_stderr", "width", "width_sup", "tau", "lam", "eff")}
    total = len(designs) * shares.size
    done = 0
    if progress is not None:
        progress(0, total)  # the inputs are checked: the work starts
    for d, name in enumerate(designs):
        mix = uniform_mix if name.endswith("proportional") else 1.0
        use_judge = judge if name.startswith("ppi") else None
        for j, n in enumerate(counts):
            pi = active.inclusion_probabilities(u, float(n), uniform_mix=mix)
            res = active.replay_designs(key, human, pi, num_models=num_models, num_replays=num_replays, design=sampling,
                                        judge=use_judge, ties=ties, init=theta_full, chunk_size=chunk_size)
            theta = np.asarray(res.theta, np.float64)
            se = np.asarray(res.std_error, np.float64)
            covered = np.abs(theta - theta_full) <= z * se + _COVERAGE_ATOL
            per_replay = covered.mean(axis=1)
            out["coverage"][d, j] = covered.mean()
            out["coverage_stderr"][d, j] = per_replay.std(ddof=1) / math.sqrt(num_replays)
            out["width"][d, j] = (2 * z * k * se).mean()
            out["width_sup"][d, j] = (2 * z * k * np.asarray(res.std_error_superpopulation, np.float64)).mean()
            out["tau"][d, j] = float(np.nanmean(np.asarray(tau_fn(res.theta))))
            out["lam"][d, j] = float(np.mean(np.asarray(res.lam)))
            out["eff"][d, j] = float(np.mean(np.asarray(res.effective_labels)))
            done += 1
            if progress is not None:
                progress(done, total)
    uni = designs.index("uniform")
    equivalent = np.array([[_equivalent_share(shares, out["width"][uni], w) for w in row] for row in out["width"]])
    reference = out["width_sup"][uni, -1] if shares[-1] == 1.0 else float("nan")
    match = np.array([_crossing(shares, row, reference) for row in out["width_sup"]])
    return DesignCurves(
        designs=designs, budgets=shares, num_labels=counts, coverage=out["coverage"], coverage_stderr=out["coverage_stderr"],
        width=out["width"], width_superpopulation=out["width_sup"], kendall_tau=out["tau"], lam=out["lam"],
        effective_labels=out["eff"], equivalent_uniform=equivalent, labels_to_match=match, num_replays=num_replays,
        confidence=confidence, uniform_mix=float(uniform_mix), sampling=sampling,
        full_ratings=1000.0 + k * theta_full,
    )

