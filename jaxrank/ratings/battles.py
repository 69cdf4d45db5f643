"""Pairwise votes in: load, validate and encode battles once into integer arrays and unique-row counts.

A vote says that, on one prompt, model `a` beat model `b`, lost to it, or tied. Every rating method in
`jaxrank.ratings` needs only the counts of the distinct `(a, b, outcome)` rows, so a file of millions of
votes becomes a few thousand weighted rows; the original order is kept as an index (`vote_row`) for
methods that replay votes one by one (online Elo).
"""

from __future__ import annotations

import pathlib
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

__all__ = [
    "A_WINS",
    "B_WINS",
    "TIE",
    "TIE_BOTHBAD",
    "OUTCOME_NAMES",
    "ARENA_WINNER_LABELS",
    "LLMFAO_FORMAT",
    "Battles",
    "load_battles",
    "battles_from_arrays",
    "comparison_components",
    "synthetic_battles",
]

A_WINS = 0
B_WINS = 1
TIE = 2
TIE_BOTHBAD = 3
OUTCOME_NAMES = ("model_a", "model_b", "tie", "tie (bothbad)")
NUM_OUTCOMES = len(OUTCOME_NAMES)

# Chatbot Arena's own labels: each maps to itself.
ARENA_WINNER_LABELS: dict[str, str] = {name: name for name in OUTCOME_NAMES}

# LLMFAO (dustalov/llmfao) `*-comparisons.csv`: `model_x` is shown on the left.
LLMFAO_FORMAT: dict[str, dict[str, str]] = {
    "columns": {"model_a": "left", "model_b": "right", "winner": "winner"},
    "winner_labels": {"left": "model_a", "right": "model_b", "tie": "tie"},
}

_REQUIRED = ("model_a", "model_b", "winner")


@struct.dataclass
class Battles:
    """Encoded pairwise votes: unique `(a, b, outcome)` rows with summed weights, plus the vote order.

    A pytree (`flax.struct.dataclass`): `models` is static metadata, the arrays are leaves, so a
    `Battles` passes through `jit`/`vmap` and can carry sharded arrays.

    Attributes:
        models: the model names; model `i` is `models[i]`.
        a: int32[U] index of the first model of each unique row.
        b: int32[U] index of the second model.
        outcome: int32[U] `A_WINS`=0, `B_WINS`=1, `TIE`=2, `TIE_BOTHBAD`=3.
        count: float32[U] summed vote weights of each unique row (vote counts when unweighted).
        vote_row: int32[N] for each original vote, in input order, the index of its unique row
            (empty, N = 0, for battles built from counts without an order, e.g. `synthetic_battles`).

    Example:
        >>> battles = load_battles(df)                        # doctest: +SKIP
        >>> battles.num_models, battles.num_votes, battles.num_rows
    """

    models: tuple[str, ...] = struct.field(pytree_node=False)
    a: jax.Array
    b: jax.Array
    outcome: jax.Array
    count: jax.Array
    vote_row: jax.Array

    @property
    def num_models(self) -> int:
        return len(self.models)

    @property
    def num_rows(self) -> int:
        """U, the number of unique `(a, b, outcome)` rows."""
        return int(self.a.shape[0])

    @property
    def has_vote_order(self) -> bool:
        """Whether `vote_row` records the original votes (False for battles built from counts)."""
        return int(self.vote_row.shape[0]) > 0

    @property
    def num_votes(self) -> int:
        """N, the number of original votes: `len(vote_row)`, or the rounded total count when the
        battles were built from counts (then the count arrays must be concrete)."""
        if self.has_vote_order:
            return int(self.vote_row.shape[0])
        return int(np.rint(np.asarray(self.count, dtype=np.float64).sum()))

    def battles_per_model(self) -> np.ndarray:
        """float64[M]: summed vote weight in which each model took part (vote counts when unweighted)."""
        a = np.asarray(self.a)
        b = np.asarray(self.b)
        w = np.asarray(self.count, dtype=np.float64)
        return np.bincount(a, weights=w, minlength=self.num_models) + np.bincount(
            b, weights=w, minlength=self.num_models
        )

    def outcome_counts(self) -> dict[str, float]:
        """Summed weight per outcome name, e.g. `{"model_a": 3400.0, "tie": 3100.0, ...}`."""
        sums = np.bincount(np.asarray(self.outcome), weights=np.asarray(self.count, np.float64), minlength=4)
        return {name: float(s) for name, s in zip(OUTCOME_NAMES, sums)}

    def with_counts(self, count: Any) -> "Battles":
        """The same rows with other counts (e.g. a bootstrap resample), float32[U]."""
        count = jnp.asarray(count, dtype=jnp.float32)
        if count.shape != self.count.shape:
            raise ValueError(f"count must have shape [U] = {tuple(self.count.shape)}, got {tuple(count.shape)}")
        return self.replace(count=count)

    def to_frame(self):
        """The unique rows as a pandas DataFrame with columns `model_a, model_b, winner, count`."""
        import pandas as pd

        names = np.asarray(self.models, dtype=object)
        return pd.DataFrame(
            {
                "model_a": names[np.asarray(self.a)],
                "model_b": names[np.asarray(self.b)],
                "winner": np.asarray(OUTCOME_NAMES, dtype=object)[np.asarray(self.outcome)],
                "count": np.asarray(self.count),
            }
        )


# --------------------------------------------------------------------------------------------------
# Reading


def _read_table(source: Any):
    import pandas as pd

    if isinstance(source, pd.DataFrame):
        return source
    if not isinstance(source, (str, pathlib.Path)):
        raise TypeError(
            f"source must be a pandas DataFrame or a path to a .csv, .jsonl/.json or .parquet file, "
            f"got {type(source).__name__}"
        )
    path = pathlib.Path(source)
    if not path.exists():
        raise FileNotFoundError(f"source: no such file {str(path)!r}")
    suffix = "".join(path.suffixes[-1:]).lower()
    if suffix in (".csv", ".tsv"):
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", keep_default_na=False, na_values=[""])
    if suffix in (".jsonl", ".ndjson"):
        return pd.read_json(path, lines=True)
    if suffix == ".json":
        try:
            return pd.read_json(path, lines=True)
        except ValueError:
            return pd.read_json(path)
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    raise ValueError(
        f"source {str(path)!r}: unknown file type {suffix or '(none)'!r}; expected .csv, .tsv, .jsonl, .json or .parquet"
    )


def _preview(values: Sequence[Any], limit: int = 5) -> str:
    shown = ", ".join(repr(v) for v in list(values)[:limit])
    more = len(values) - limit
    return shown + (f", ... ({more} more)" if more > 0 else "")


def load_battles(
    source: Any,
    *,
    columns: Mapping[str, str] | None = None,
    winner_labels: Mapping[Any, str] | None = None,
    weights: Any = None,
    models: Sequence[str] | None = None,
) -> Battles:
    """Read pairwise votes and encode them as `Battles` (unique rows + counts + vote order).

    Args:
        source: a pandas DataFrame, or a path to a `.csv`/`.tsv`, `.jsonl`/`.json` (JSON lines) or
            `.parquet` file, one vote a row.
        columns: maps jaxrank's names `model_a`, `model_b`, `winner` (and optionally `weight`) to the
            source's column names; unmapped names are looked up as they are. Default: Chatbot Arena's
            columns `model_a, model_b, winner`.
        winner_labels: maps the source's winner values to `"model_a" | "model_b" | "tie" |
            "tie (bothbad)"`. Default: Arena's labels, which map to themselves. Any other value is an
            error. `LLMFAO_FORMAT` holds both mappings for LLMFAO's `left | right | tie` files.
        weights: optional per-vote weights: a float array [N], or the name of a column. Overrides
            `columns["weight"]`. Weights must be finite and >= 0.
        models: optional list fixing the model set and order (models without votes are allowed);
            default: the sorted names found in the data.

    Returns:
        `Battles` with `a, b, outcome` int32[U], `count` float32[U] (summed weights of each unique
        `(a, b, outcome)`) and `vote_row` int32[N].

    Raises:
        ValueError: missing columns (named, with the available ones), empty input, unknown winner
            labels, a model playing itself, missing model names, bad weights, unknown models.

    Example:
        >>> from jaxrank.ratings import load_battles, LLMFAO_FORMAT
        >>> battles = load_battles("../shared/data/llmfao/crowd-comparisons.csv", **LLMFAO_FORMAT)  # doctest: +SKIP
        >>> battles.num_models, battles.num_votes                                                  # doctest: +SKIP
        (59, 8930)
    """
    frame = _read_table(source)
    mapping = {name: name for name in _REQUIRED}
    if columns is not None:
        if not isinstance(columns, Mapping):
            raise TypeError(f"columns must be a mapping like {{'model_a': 'left'}}, got {type(columns).__name__}")
        unknown = [k for k in columns if k not in (*_REQUIRED, "weight")]
        if unknown:
            raise ValueError(
                f"columns: unknown key(s) {_preview(unknown)}; expected keys among 'model_a', 'model_b', 'winner', 'weight'"
            )
        mapping.update(columns)
    weight_column = mapping.get("weight")
    if isinstance(weights, str):
        weight_column, weights = weights, None
    elif weights is not None:
        weight_column = None  # an explicit array overrides columns["weight"]
    needed = [mapping[k] for k in _REQUIRED] + ([weight_column] if weight_column is not None else [])
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(
            f"source is missing column(s) {_preview(missing)}; available columns: {_preview(list(frame.columns), 20)}"
            "; map yours with columns={'model_a': ..., 'model_b': ..., 'winner': ...} "
            "(command line: --columns model_a=...,model_b=...,winner=...)"
        )
    if len(frame) == 0:
        raise ValueError("source has no votes (0 rows); nothing to rate")

    names_a = frame[mapping["model_a"]].to_numpy(dtype=object)
    names_b = frame[mapping["model_b"]].to_numpy(dtype=object)
    labels = frame[mapping["winner"]].to_numpy(dtype=object)

    if weight_column is not None:
        weights = frame[weight_column].to_numpy()
    return battles_from_arrays(
        names_a, names_b, labels, winner_labels=winner_labels, weights=weights, models=models,
        _column_names=(mapping["model_a"], mapping["model_b"], mapping["winner"]),
    )


def _is_missing(x: Any) -> bool:
    if x is None:
        return True
    try:
        return bool(x != x)  # NaN
    except Exception:
        return False


def battles_from_arrays(
    model_a: Sequence[Any],
    model_b: Sequence[Any],
    winner: Sequence[Any],
    *,
    winner_labels: Mapping[Any, str] | None = None,
    weights: Any = None,
    models: Sequence[str] | None = None,
    _column_names: tuple[str, str, str] = ("model_a", "model_b", "winner"),
) -> Battles:
    """Encode votes given as three equal-length sequences (names of model a, model b, winner label).

    Same validation and output as `load_battles` (which calls it after reading the table).

    Example:
        >>> battles_from_arrays(["x", "y"], ["y", "z"], ["model_a", "tie"])  # doctest: +SKIP
    """
    col_a, col_b, col_w = _column_names
    names_a = np.asarray(model_a, dtype=object)
    names_b = np.asarray(model_b, dtype=object)
    labels = np.asarray(winner, dtype=object)
    if not (names_a.ndim == names_b.ndim == labels.ndim == 1):
        raise ValueError("model_a, model_b and winner must be one-dimensional sequences")
    n = names_a.shape[0]
    if names_b.shape[0] != n or labels.shape[0] != n:
        raise ValueError(
            f"model_a, model_b and winner must have the same length, got {n}, {names_b.shape[0]} and {labels.shape[0]}"
        )
    if n == 0:
        raise ValueError("no votes (0 rows); nothing to rate")

    for col, arr in ((col_a, names_a), (col_b, names_b), (col_w, labels)):
        bad = [i for i, v in enumerate(arr) if _is_missing(v)]
        if bad:
            raise ValueError(f"column {col!r} has {len(bad)} missing value(s), e.g. in row(s) {_preview(bad)}")
    names_a = np.asarray([str(v) for v in names_a], dtype=object)
    names_b = np.asarray([str(v) for v in names_b], dtype=object)

    # Winner labels -> outcome codes.
    if winner_labels is None:
        winner_labels = ARENA_WINNER_LABELS
    elif not isinstance(winner_labels, Mapping):
        raise TypeError(f"winner_labels must be a mapping like {{'left': 'model_a'}}, got {type(winner_labels).__name__}")
    code_of: dict[Any, int] = {}
    for label, target in winner_labels.items():
        if target not in OUTCOME_NAMES:
            raise ValueError(
                f"winner_labels[{label!r}] = {target!r}; the targets must be one of {_preview(OUTCOME_NAMES)}"
            )
        code_of[label] = OUTCOME_NAMES.index(target)
        code_of[str(label)] = OUTCOME_NAMES.index(target)
    uniq_labels, label_inverse = np.unique(np.asarray([str(v) for v in labels], dtype=object), return_inverse=True)
    unknown = [lab for lab in uniq_labels if lab not in code_of]
    if unknown:
        counts = {lab: int(np.sum(label_inverse == i)) for i, lab in enumerate(uniq_labels) if lab in unknown}
        shown = ", ".join(f"{lab!r} ({counts[lab]} votes)" for lab in unknown[:5])
        more = f", ... ({len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise ValueError(
            f"column {col_w!r} has unknown winner label(s) {shown}{more}; known: {_preview(list(winner_labels), 8)}. "
            "Map them with winner_labels={'your label': 'model_a' | 'model_b' | 'tie' | 'tie (bothbad)'} "
            "(command line: --winner-labels 'your label=model_a,...')"
        )
    outcome = np.asarray([code_of[lab] for lab in uniq_labels], dtype=np.int32)[label_inverse]

    self_play = np.flatnonzero(names_a == names_b)
    if self_play.size:
        raise ValueError(
            f"{self_play.size} vote(s) have a model playing itself (model_a == model_b), e.g. row(s) "
            f"{_preview(self_play.tolist())} ({names_a[self_play[0]]!r}); remove them first"
        )

    # Models -> indices.
    found = np.unique(np.concatenate([names_a, names_b]))
    if models is None:
        model_list = tuple(str(m) for m in found)
    else:
        if isinstance(models, str):
            raise TypeError("models must be a sequence of model names, not a single string")
        model_list = tuple(str(m) for m in models)
        if len(set(model_list)) != len(model_list):
            dup = sorted({m for m in model_list if model_list.count(m) > 1})
            raise ValueError(f"models has duplicate name(s) {_preview(dup)}")
        absent = sorted(set(found.tolist()) - set(model_list))
        if absent:
            raise ValueError(f"models does not list {len(absent)} model(s) found in the votes: {_preview(absent)}")
    index = {m: i for i, m in enumerate(model_list)}
    a = np.fromiter((index[m] for m in names_a), dtype=np.int64, count=n)
    b = np.fromiter((index[m] for m in names_b), dtype=np.int64, count=n)

    w = _check_weights(weights, n)
    return _encode(model_list, a, b, outcome.astype(np.int64), w)


def _check_weights(weights: Any, n: int) -> np.ndarray | None:
    if weights is None:
        return None
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"weights must be numbers, one per vote; {err}") from err
    if w.shape != (n,):
        raise ValueError(f"weights must have shape [N] = ({n},), one per vote, got {w.shape}")
    bad = np.flatnonzero(~np.isfinite(w))
    if bad.size:
        raise ValueError(f"weights has {bad.size} NaN/infinite value(s), e.g. at row(s) {_preview(bad.tolist())}")
    neg = np.flatnonzero(w < 0)
    if neg.size:
        raise ValueError(f"weights must be >= 0; {neg.size} negative value(s), e.g. at row(s) {_preview(neg.tolist())}")
    return w


def _encode(models: tuple[str, ...], a: np.ndarray, b: np.ndarray, outcome: np.ndarray, w: np.ndarray | None) -> Battles:
    m = len(models)
    key = (a * m + b) * NUM_OUTCOMES + outcome
    uniq, inverse = np.unique(key, return_inverse=True)
    count = np.bincount(inverse, weights=w, minlength=uniq.size)
    return Battles(
        models=models,
        a=jnp.asarray((uniq // NUM_OUTCOMES) // m, dtype=jnp.int32),
        b=jnp.asarray((uniq // NUM_OUTCOMES) % m, dtype=jnp.int32),
        outcome=jnp.asarray(uniq % NUM_OUTCOMES, dtype=jnp.int32),
        count=jnp.asarray(count, dtype=jnp.float32),
        vote_row=jnp.asarray(inverse.reshape(-1), dtype=jnp.int32),
    )


# --------------------------------------------------------------------------------------------------
# Graph structure


def comparison_components(battles: Battles, *, weights: Any = None) -> np.ndarray:
    """Connected components of the comparison graph (models joined by a row of positive weight).

    Args:
        battles: encoded votes (concrete arrays).
        weights: optional float[U] replacing `battles.count` to decide which rows are present.

    Returns:
        int32[M] component label per model, labels 0..C-1 numbered by first model; a model without
        votes is its own component.
    """
    m = battles.num_models
    a = np.asarray(battles.a, dtype=np.int64)
    b = np.asarray(battles.b, dtype=np.int64)
    w = np.asarray(battles.count if weights is None else weights, dtype=np.float64)
    keep = w > 0
    pairs = np.unique(np.minimum(a, b)[keep] * m + np.maximum(a, b)[keep])
    lo, hi = pairs // m, pairs % m
    label = np.arange(m, dtype=np.int64)
    # Min-label propagation with pointer jumping: O(E log M) vectorised passes.
    while True:
        old = label.copy()
        lmin = np.minimum(label[lo], label[hi])
        np.minimum.at(label, lo, lmin)
        np.minimum.at(label, hi, lmin)
        label = label[label]
        label = label[label]
        if np.array_equal(label, old):
            break
    _, first, renum = np.unique(label, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[renum].astype(np.int32)


def describe_components(models: Sequence[str], component: np.ndarray, *, max_models: int = 4, max_components: int = 5) -> str:
    """A short human description of components: `{A, B, C, ... (+7)}, {D}, ...`."""
    labels, sizes = np.unique(component, return_counts=True)
    order = labels[np.argsort(-sizes, kind="stable")]
    parts = []
    for c in order[:max_components]:
        members = [models[i] for i in np.flatnonzero(component == c)]
        shown = ", ".join(members[:max_models])
        if len(members) > max_models:
            shown += f", ... (+{len(members) - max_models})"
        parts.append("{" + shown + "}")
    if len(order) > max_components:
        parts.append(f"... ({len(order) - max_components} more components)")
    return "; ".join(parts)


def warn_if_disconnected(battles: Battles, component: np.ndarray, *, pinning: str, stacklevel: int = 3) -> None:
    n_comp = int(component.max()) + 1 if component.size else 0
    if n_comp > 1:
        warnings.warn(
            f"the comparison graph has {n_comp} disconnected components: "
            f"{describe_components(battles.models, component)}. Ratings are not comparable across components; "
            f"{pinning}",
            UserWarning,
            stacklevel=stacklevel,
        )


# --------------------------------------------------------------------------------------------------
# Synthetic arenas, built directly as counts


def synthetic_battles(
    key: jax.Array,
    num_models: int,
    num_votes: int,
    *,
    theta: Any = None,
    theta_scale: float = 1.0,
    ties: str = "half",
    tie_param: float | None = None,
    tie_bothbad_fraction: float = 0.0,
) -> tuple[Battles, jax.Array]:
    """Draw an arena of `num_votes` votes among `num_models` models from a Bradley–Terry-family model.

    Memory is O(pairs), never O(votes): pair counts are one multinomial draw over all unordered
    pairs (uniform match-making), and each pair's outcomes a conditional binomial split of its count.
    The model in the `a` slot is chosen per pair by a fair coin. No vote order is recorded.

    Args:
        key: PRNG key.
        num_models: M >= 2.
        num_votes: N >= 1 total votes.
        theta: optional float[M] true log-strengths; default `theta_scale * N(0, 1)`, centred.
        theta_scale: standard deviation of the default true log-strengths (1.0 ~ 174 Elo points).
        ties: outcome model, `"half"`/`"drop"` (no ties are drawn), `"rao-kupper"`, `"davidson"` or
            `"grounded-rao-kupper"` (draws `tie (bothbad)` from the model itself; theta is absolute).
        tie_param: RK threshold alpha > 0 (default 0.5; also the grounded model's) or Davidson nu > 0
            (default 1.0).
        tie_bothbad_fraction: share of drawn ties labelled `tie (bothbad)` instead of `tie` (not used by
            the grounded model).

    Returns:
        `(battles, theta)`: the `Battles` (counts only, `vote_row` empty) and the true theta float32[M].

    Example:
        >>> battles, theta = synthetic_battles(jax.random.key(0), 1000, 10_000_000)  # doctest: +SKIP
    """
    from jaxrank.ratings.bradley_terry import TIE_MODELS, outcome_probabilities

    m = int(num_models)
    n = int(num_votes)
    if m < 2:
        raise ValueError(f"num_models must be >= 2, got {num_models!r}")
    if n < 1:
        raise ValueError(f"num_votes must be >= 1, got {num_votes!r}")
    if ties not in TIE_MODELS:
        raise ValueError(f"ties must be one of {_preview(TIE_MODELS)}; got {ties!r}")
    if not 0.0 <= tie_bothbad_fraction <= 1.0:
        raise ValueError(f"tie_bothbad_fraction must be in [0, 1], got {tie_bothbad_fraction!r}")
    grounded = ties == "grounded-rao-kupper"
    if tie_param is None:
        tie_param = {"rao-kupper": 0.5, "davidson": 1.0, "grounded-rao-kupper": 0.5}.get(ties, float("nan"))
    elif ties in ("rao-kupper", "davidson", "grounded-rao-kupper") and not tie_param > 0:
        raise ValueError(f"tie_param must be > 0 for ties={ties!r}, got {tie_param!r}")
    k_theta, k_counts = jax.random.split(key)
    if theta is None:
        theta = theta_scale * jax.random.normal(k_theta, (m,), dtype=jnp.float32)
        theta = theta - theta.mean()
    else:
        theta = jnp.asarray(theta, dtype=jnp.float32)
        if theta.shape != (m,):
            raise ValueError(f"theta must have shape [num_models] = ({m},), got {tuple(theta.shape)}")

    # Counts are drawn on the host with NumPy's exact multinomial/binomial samplers, seeded from `key`
    # (jax.random.binomial would recompile for every shape and works in float32).
    rng = np.random.default_rng(_seed_from_key(k_counts))
    lo, hi = np.triu_indices(m, k=1)
    num_pairs = lo.size
    pair_n = rng.multinomial(n, np.full(num_pairs, 1.0 / num_pairs))
    swap = rng.random(num_pairs) < 0.5
    a = np.where(swap, hi, lo)
    b = np.where(swap, lo, hi)
    theta_np = np.asarray(theta, dtype=np.float64)
    delta = theta_np[a] - theta_np[b]
    probs = np.asarray(
        jax.jit(outcome_probabilities, static_argnames="ties")(
            jnp.asarray(delta, jnp.float32), ties="drop" if ties == "half" else ties,
            tie_param=jnp.asarray(1.0 if tie_param != tie_param else tie_param, jnp.float32),
            theta_b=jnp.asarray(theta_np[b], jnp.float32) if grounded else None,
        ),
        dtype=np.float64,
    )  # [P, 3], or [P, 4] for the grounded model
    probs = probs / probs.sum(axis=1, keepdims=True)
    # Conditional binomial split: n_A ~ Bin(n, pA), n_B ~ Bin(n - n_A, pB / (1 - pA)), rest ties.
    pa = probs[:, 0]
    n_a = rng.binomial(pair_n, pa)
    rest = pair_n - n_a
    pb = np.clip(np.where(pa < 1.0, probs[:, 1] / np.maximum(1.0 - pa, 1e-300), 0.0), 0.0, 1.0)
    n_b = rng.binomial(rest, pb)
    n_t = rest - n_b
    if grounded:  # n_bb ~ Bin(n_t, p_bothbad / (p_tie + p_bothbad)): the model's own both-bad share
        p_rest = probs[:, 2] + probs[:, 3]
        n_bb = rng.binomial(n_t, np.clip(np.where(p_rest > 0, probs[:, 3] / np.maximum(p_rest, 1e-300), 0.0), 0, 1))
    elif tie_bothbad_fraction > 0:
        n_bb = rng.binomial(n_t, tie_bothbad_fraction)
    else:
        n_bb = np.zeros_like(n_t)
    n_t = n_t - n_bb

    rows_a = np.concatenate([a, a, a, a])
    rows_b = np.concatenate([b, b, b, b])
    rows_o = np.repeat(np.arange(4, dtype=np.int64), num_pairs)
    rows_c = np.concatenate([n_a, n_b, n_t, n_bb]).astype(np.float64)
    keep = rows_c > 0
    key_rows = (rows_a[keep] * m + rows_b[keep]) * NUM_OUTCOMES + rows_o[keep]
    order = np.argsort(key_rows, kind="stable")
    key_rows = key_rows[order]
    battles = Battles(
        models=tuple(f"model_{i:0{len(str(m - 1))}d}" for i in range(m)),
        a=jnp.asarray((key_rows // NUM_OUTCOMES) // m, dtype=jnp.int32),
        b=jnp.asarray((key_rows // NUM_OUTCOMES) % m, dtype=jnp.int32),
        outcome=jnp.asarray(key_rows % NUM_OUTCOMES, dtype=jnp.int32),
        count=jnp.asarray(rows_c[keep][order], dtype=jnp.float32),
        vote_row=jnp.zeros((0,), dtype=jnp.int32),
    )
    return battles, theta


def _seed_from_key(key: jax.Array) -> list[int]:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return [int(v) for v in np.asarray(key, dtype=np.uint32).reshape(-1)]
