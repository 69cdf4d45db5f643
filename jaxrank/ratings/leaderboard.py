"""`jaxrank.leaderboard`: the leaderboard table `jaxrank leaderboard` prints, in one Python call.

Fits Bradley–Terry ratings, attaches intervals (sandwich, or a bootstrap over votes or prompts), ranks
(rating rank, rank upper bound, tied groups), optionally per group of a column (all groups fitted in one
vmapped call), on a filtered subset of the votes, with style control, and with win rates in % against a
baseline model; `Leaderboard.matrices()` gives the pairwise win-fraction / battle-count / predicted
win-rate tables.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrank.ratings.bradley_terry import (
    GROUNDED,
    BTResult,
    check_style,
    fit_bradley_terry,
    fit_bradley_terry_groups,
    outcome_probabilities,
)
from jaxrank.ratings.uncertainty import (
    BootstrapResult,
    SandwichResult,
    bootstrap_ratings,
    rank_by_rating,
    rank_upper_bound,
    sandwich_intervals,
    tied_groups,
)
from jaxrank.votes.table import A_WINS, TIE, Votes, id_strings

__all__ = ["Leaderboard", "leaderboard", "filter_votes", "vote_column", "pairwise_matrices", "win_rate"]

# Columns every table has besides `votes.meta`: what `--filter` / `--group-by` may name.
_BUILTIN_COLUMNS = ("model", "judge", "prompt_id")


def _columns(votes: Votes) -> list[str]:
    have = list(votes.meta)
    if votes.judge is not None:
        have.append("judge")
    if votes.prompt is not None:
        have.append("prompt_id")
    return have


def vote_column(votes: Votes, name: str) -> np.ndarray:
    """object[N]: the per-vote values of column `name` as strings (`judge`, `prompt_id`, or a `votes.meta`
    column such as `turn`, `language`, `category`).

    Raises:
        ValueError: no such column (the message lists the columns there are).
    """
    if name == "judge" and votes.judge is not None:
        return np.asarray(votes.judge_ids, dtype=object)[votes.judge]
    if name == "prompt_id" and votes.prompt is not None:
        return np.asarray(votes.prompt_ids, dtype=object)[votes.prompt]
    if name in votes.meta:
        col = np.asarray(votes.meta[name])
        if col.dtype == object or col.dtype.kind in "US":
            return np.asarray(["" if v is None else str(v) for v in col], dtype=object)
        return id_strings(col, name)
    have = ", ".join(_columns(votes) + ["model"]) or "none"
    raise ValueError(f"no column {name!r} in these votes; columns: {have}")


def _values_hint(values: np.ndarray, limit: int = 12) -> str:
    uniq, counts = np.unique(values.astype(str), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    shown = [f"{uniq[i]} ({counts[i]})" for i in order[:limit]]
    more = f", ... ({uniq.size - limit} more)" if uniq.size > limit else ""
    return ", ".join(shown) + more


def filter_votes(votes: Votes, filters: Mapping[str, Any] | Sequence[tuple[str, Any]]) -> Votes:
    """The votes whose columns hold the given values: `{"turn": "1", "language": ["English", "German"]}`.

    Conditions on different columns must all hold; several values for one column are alternatives. Values
    compare as strings (`votes.meta` columns keep the text of the source). `model` keeps the votes in which
    the model plays either side.

    Args:
        votes: `jaxrank.Votes`.
        filters: column -> value or values, or (column, value) pairs (the same column may repeat).

    Raises:
        ValueError: an unknown column (lists the columns), a value the column never takes (lists its
            values with their vote counts), or no vote left.
    """
    pairs = list(filters.items()) if isinstance(filters, Mapping) else list(filters)
    wanted: dict[str, list[str]] = {}
    for col, value in pairs:
        values = [value] if isinstance(value, (str, int, float, bool, np.generic)) else list(value)
        wanted.setdefault(str(col), []).extend(str(v) for v in values)
    keep = np.ones(len(votes), bool)
    for col, values in wanted.items():
        if col == "model":
            absent = [v for v in values if v not in votes.models]
            if absent:
                raise ValueError(f"filter model={absent[0]!r}: no such model; models: {', '.join(votes.models)}")
            idx = [votes.models.index(v) for v in values]
            keep &= np.isin(votes.a, idx) | np.isin(votes.b, idx)
            continue
        column = vote_column(votes, col)
        present = set(column.tolist())
        absent = [v for v in values if v not in present]
        if absent:
            raise ValueError(f"filter {col}={absent[0]!r}: column {col!r} never takes that value; its values "
                             f"(votes): {_values_hint(column)}")
        keep &= np.isin(column, values)
    if not keep.any():
        raise ValueError(f"no vote satisfies every filter ({', '.join(f'{c}={v}' for c, v in pairs)})")
    return votes.subset(keep)


def _delta_probability(delta: Any, fit: BTResult) -> np.ndarray:
    """P(win) + P(tie) / 2 at log-strength difference(s) `delta` (natural units)."""
    d = jnp.asarray(delta, jnp.float32)
    tp = fit.tie_param if fit.ties in ("rao-kupper", "davidson", GROUNDED) else None
    theta_b = jnp.zeros_like(d) if fit.ties == GROUNDED else None
    p = outcome_probabilities(d, ties=fit.ties, tie_param=tp, theta_b=theta_b)
    tie = p[..., TIE:].sum(-1) if fit.ties == GROUNDED else p[..., TIE]
    return np.asarray(p[..., A_WINS] + 0.5 * tie, np.float64)


def win_rate(fit: BTResult, intervals: BootstrapResult | SandwichResult | None, baseline: str) -> dict[str, np.ndarray]:
    """Each model's predicted win rate against `baseline` in % (a tie counts half), with an interval.

    The interval maps the interval of the rating difference `R_i - R_baseline` (bootstrap percentiles of the
    per-round differences, or the sandwich covariance's `+-z se`) through the monotone rating-difference ->
    win-rate curve of the fitted model, so its coverage is the difference's.

    Returns:
        `{"win_rate", "win_rate_lower", "win_rate_upper"}`, float64[M] in % (the baseline itself: 50).
    """
    if baseline not in fit.models:
        raise ValueError(f"baseline {baseline!r} is not one of the {fit.num_models} models: {', '.join(fit.models)}")
    j = fit.models.index(baseline)
    k = fit.scale / math.log(fit.base)
    ratings = np.asarray(fit.ratings, np.float64)
    diff = ratings - ratings[j]
    if isinstance(intervals, BootstrapResult):
        c = intervals.confidence
        samples = np.asarray(intervals.samples, np.float64)
        d = samples - samples[:, j:j + 1]
        lo, hi = np.quantile(d, [(1 - c) / 2, (1 + c) / 2], axis=0)
    elif isinstance(intervals, SandwichResult):
        from scipy.stats import norm

        cov = np.asarray(intervals.covariance, np.float64)
        var = np.clip(np.diag(cov) + cov[j, j] - 2 * cov[:, j], 0.0, None)
        z = norm.ppf((1 + intervals.confidence) / 2)
        lo, hi = diff - z * np.sqrt(var), diff + z * np.sqrt(var)
    else:
        lo = hi = np.full_like(diff, np.nan)
    out = {name: 100.0 * _delta_probability(x / k, fit) for name, x in
           (("win_rate", diff), ("win_rate_lower", lo), ("win_rate_upper", hi))}
    for name in out:
        out[name][j] = 50.0
    return out


def pairwise_matrices(votes: Votes, fit: BTResult) -> dict[str, np.ndarray]:
    """The pairwise tables FastChat's `elo_analysis` shows, float64[M, M] each, row model vs column model:

    - `win_fraction`: observed share of the battles between i and j that i won (a tie counts half; soft
      votes by their P(win)); NaN where i and j never met;
    - `battles`: the number of battles between i and j (weights times multiplicities), symmetric;
    - `predicted`: the fit's P(i beats j) + P(tie) / 2 (for a style-controlled fit: between answers of the
      same style).
    """
    m = votes.num_models
    w = votes.vote_weight() * votes.multiplicity()
    s = votes.score_a()
    battles = np.zeros((m, m))
    won = np.zeros((m, m))
    np.add.at(battles, (votes.a, votes.b), w)
    np.add.at(battles, (votes.b, votes.a), w)
    np.add.at(won, (votes.a, votes.b), w * s)
    np.add.at(won, (votes.b, votes.a), w * (1 - s))
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(battles > 0, won / battles, np.nan)
    theta = np.asarray(fit.theta, np.float64)
    pred = _delta_probability(theta[:, None] - theta[None, :], fit)
    np.fill_diagonal(pred, np.nan)
    return {"win_fraction": frac, "battles": battles, "predicted": pred}


@dataclasses.dataclass(frozen=True, eq=False)
class Leaderboard:
    """A leaderboard table with what produced it (`jaxrank.leaderboard`).

    Attributes:
        frame: pandas DataFrame, best first (within each group): `[group,] model, rating, lower, upper,
            rank_ub, battles, rank, tied_group[, rank_change][, win_rate, win_rate_lower, win_rate_upper]`.
            `rank` orders by rating, `rank_ub` is 1 + the number of models whose lower bound beats this
            model's upper bound (Arena's rank), `tied_group` numbers groups of overlapping intervals,
            `rank_change` is the rank without style control minus the rank with it, `win_rate*` are %
            against `baseline`.
        title: a one-line description (or the caller's title).
        method: how the intervals were obtained.
        confidence: the intervals' central probability.
        fits: group -> `BTResult` (the one group `None` without `group_by`).
        intervals: group -> `BootstrapResult` / `SandwichResult`.
        votes: group -> the `Votes` fitted (after filtering).
        group_by: the grouping column or None; baseline: the baseline model or None.
        style: the style-control features (empty without).
        notes: warnings about the fit (non-convergence, non-finite intervals).
    """

    frame: Any
    title: str
    method: str
    confidence: float
    fits: dict
    intervals: dict
    votes: dict
    group_by: str | None = None
    baseline: str | None = None
    style: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def groups(self) -> list:
        """The group values, in table order (`[None]` without `group_by`)."""
        return list(self.fits)

    def to_frame(self):
        """The table as a new pandas DataFrame."""
        return self.frame.copy()

    def matrices(self, group: Any = None) -> dict:
        """`pairwise_matrices` of one group as DataFrames (index and columns: model names, best first),
        restricted to the models with votes."""
        import pandas as pd

        if group not in self.fits:
            raise ValueError(f"group {group!r} is not one of {self.groups}")
        fit, votes = self.fits[group], self.votes[group]
        rows = self.frame if self.group_by is None else self.frame[self.frame["group"] == group]
        order = [fit.models.index(m) for m in rows["model"]]
        names = list(rows["model"])
        return {k: pd.DataFrame(v[np.ix_(order, order)], index=names, columns=names)
                for k, v in pairwise_matrices(votes, fit).items()}

    def __str__(self) -> str:
        parts = [self.title]
        for group in self.groups:
            frame = self.frame if self.group_by is None else self.frame[self.frame["group"] == group]
            if self.group_by is not None:
                parts.append(f"\n{self.group_by} = {group}")
            parts.append(frame.drop(columns=["group"], errors="ignore").to_string(
                index=False, float_format=lambda x: f"{x:.1f}"))
        return "\n".join(parts)


def _table(votes: Votes, fit: BTResult, intervals, plain: BTResult | None, baseline: str | None,
           keep_all: bool):
    import pandas as pd

    count = votes.battles_per_model()
    present = np.ones(votes.num_models, bool) if keep_all else count > 0
    idx = np.flatnonzero(present)
    ratings = np.asarray(fit.ratings, np.float64)[idx]
    lower = np.asarray(intervals.lower, np.float64)[idx]
    upper = np.asarray(intervals.upper, np.float64)[idx]
    count = count[idx]
    frame = pd.DataFrame({
        "model": [votes.models[i] for i in idx],
        "rating": ratings,
        "lower": lower,
        "upper": upper,
        "rank_ub": np.asarray(rank_upper_bound(lower, upper), np.int64),
        "battles": count.astype(np.int64) if np.allclose(count, np.rint(count)) else count,
        "rank": np.asarray(rank_by_rating(ratings), np.int64),
        "tied_group": tied_groups(ratings, lower, upper).astype(np.int64),
    })
    if plain is not None:
        plain_rank = np.asarray(rank_by_rating(np.asarray(plain.ratings, np.float64)[idx]), np.int64)
        frame["rank_change"] = plain_rank - frame["rank"].to_numpy()
    if baseline is not None:
        for name, values in win_rate(fit, intervals, baseline).items():
            frame[name] = values[idx]
    return frame.sort_values(["rating", "model"], ascending=[False, True], kind="stable").reset_index(drop=True)


def _fit_notes(fit: BTResult, intervals, where: str) -> list[str]:
    notes = []
    if not bool(fit.converged):
        notes.append(f"the Bradley-Terry fit{where} did not converge in {int(fit.num_iter)} iterations; ratings may "
                     "be inaccurate")
    converged = getattr(intervals, "converged", None)
    if converged is not None:
        failed = int(np.sum(~np.asarray(converged, bool)))
        if failed:
            notes.append(f"{failed} of {np.size(converged)} bootstrap rounds{where} did not converge (often a model "
                         "that never lost or never won in a resample); their ratings are included in the intervals")
    if not (np.isfinite(np.asarray(intervals.lower)).all() and np.isfinite(np.asarray(intervals.upper)).all()):
        notes.append(f"some intervals{where} are not finite (a model without enough votes in the resamples?); their "
                     "rank_ub and tied_group are not meaningful")
    return notes


def leaderboard(
    votes: Votes,
    *,
    ties: str = "half",
    bootstrap: int = 0,
    key: jax.Array | None = None,
    resample: str = "votes",
    confidence: float = 0.95,
    l2: float = 0.0,
    style: Sequence[str] | str | None = None,
    style_l2: float = 1.0,
    anchor: str | None = None,
    anchor_rating: float | None = None,
    filters: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
    group_by: str | None = None,
    baseline: str | None = None,
    title: str | None = None,
    progress: Callable[[int, int], Any] | None = None,
    chunk_size: int | None = None,
) -> Leaderboard:
    """The leaderboard `jaxrank leaderboard` prints: ratings, intervals, ranks, battles, in one call.

    Args:
        votes: `jaxrank.Votes` (`jaxrank.load_votes`).
        ties: tie model (`fit_bradley_terry`).
        bootstrap: bootstrap rounds for the intervals (0: sandwich intervals, no resampling; else >= 2).
        key: PRNG key of the bootstrap (required when `bootstrap` > 0; group g uses `split(key, G)[g]`).
        resample: what a bootstrap round resamples, `"votes"` or `"prompts"`.
        confidence: the intervals' central probability in (0, 1).
        l2, style, style_l2, anchor, anchor_rating: as `fit_bradley_terry`; with `style` the table gains
            `rank_change` (rank without style control minus rank with it).
        filters: keep only the votes matching these column values (`filter_votes`), e.g. `{"turn": "1"}`.
        group_by: a column (`vote_column`): one leaderboard per value, all fitted in ONE vmapped call
            (`fit_bradley_terry_groups`); each group's table lists the models with votes in it.
        baseline: a model: adds `win_rate`, `win_rate_lower`, `win_rate_upper`, the predicted win rate in %
            against it (a tie counts half) with the interval of the rating difference mapped through it.
        title: the table's title (default: a description of the votes and intervals).
        progress: optional `progress(done, total)` for the bootstrap.
        chunk_size: bootstrap rounds per compiled call (`bootstrap_ratings`).

    Returns:
        `Leaderboard` (`.frame`, `.to_frame()`, `print(lb)`, `.matrices()`).

    Raises:
        ValueError: bad options, unknown filter/group column or value, unknown baseline or anchor.

    Example:
        >>> lb = jaxrank.leaderboard(votes, bootstrap=200, key=jax.random.key(0))   # doctest: +SKIP
        >>> print(lb)                                                              # doctest: +SKIP
    """
    if not isinstance(votes, Votes):
        raise TypeError(f"votes must be a jaxrank.Votes (see jaxrank.load_votes), got {type(votes).__name__}")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0 or bootstrap == 1:
        raise ValueError(f"bootstrap must be 0 (sandwich intervals) or an int >= 2 rounds, got {bootstrap!r}")
    if bootstrap and key is None:
        raise ValueError("bootstrap > 0 needs key (a jax.random.key) for the resampling")
    if resample not in ("votes", "prompts"):
        raise ValueError(f"resample must be 'votes' or 'prompts', got {resample!r}")
    if resample == "prompts" and not bootstrap:
        raise ValueError("resample='prompts' needs bootstrap >= 2")
    if ties == GROUNDED and not bootstrap:
        raise ValueError("ties='grounded-rao-kupper' needs bootstrap >= 2: the sandwich intervals do not support its "
                         "four-outcome likelihood")
    if not (isinstance(confidence, (int, float)) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    style = check_style(style)
    if group_by is not None and anchor is not None:
        raise ValueError("anchor is not available with group_by (each group is centred on its own)")
    if baseline is not None and baseline not in votes.models:
        close = [m for m in votes.models if str(baseline).lower() in m.lower()][:5]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ValueError(f"baseline {baseline!r} is not one of the {votes.num_models} models{hint}")
    if filters:
        votes = filter_votes(votes, filters)
    fit_opts = {"ties": ties, "l2": l2}
    style_opts = {"style": style, "style_l2": style_l2} if style else {}
    if bootstrap:
        method = f"bootstrap over {resample}, {bootstrap} rounds"
    else:
        method = "sandwich (robust) estimator"

    if group_by is None:
        groups = {None: votes}
        fits = {None: fit_bradley_terry(votes, **fit_opts, anchor=anchor, anchor_rating=anchor_rating, **style_opts)}
        plains = {None: fit_bradley_terry(votes, **fit_opts, anchor=anchor, anchor_rating=anchor_rating)
                  if style else None}
    else:
        column = vote_column(votes, group_by)
        values, index = np.unique(column.astype(str), return_inverse=True)
        values = values.tolist()
        groups = {v: votes.subset(index == g) for g, v in enumerate(values)}
        fitted = fit_bradley_terry_groups(votes, index, len(values), **fit_opts, **style_opts)
        fits = dict(zip(values, fitted))
        plain = fit_bradley_terry_groups(votes, index, len(values), **fit_opts) if style else [None] * len(values)
        plains = dict(zip(values, plain))
    keys = list(jax.random.split(key, len(groups))) if bootstrap else [None] * len(groups)
    intervals, notes, frames = {}, [], []
    for (group, sub), k in zip(groups.items(), keys):
        fit = fits[group]
        if bootstrap:
            if group_by is None:
                k = key
            iv = bootstrap_ratings(k, sub, num_rounds=int(bootstrap), ties=ties, confidence=confidence,
                                   progress=progress, fit=fit, unit=resample, chunk_size=chunk_size)
        else:
            iv = sandwich_intervals(sub, fit, confidence=confidence)
        intervals[group] = iv
        if baseline is not None and group_by is not None and sub.battles_per_model()[votes.models.index(baseline)] == 0:
            raise ValueError(f"baseline {baseline!r} has no votes in group {group_by}={group}")
        notes += _fit_notes(fit, iv, "" if group_by is None else f" of {group_by}={group}")
        frame = _table(sub, fit, iv, plains[group], baseline, keep_all=group_by is None)
        if group_by is not None:
            frame.insert(0, "group", group)
        frames.append(frame)
    import pandas as pd

    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    for note in dict.fromkeys(notes):
        warnings.warn(note, UserWarning, stacklevel=2)
    if title is None:
        soft = ", soft outcomes" if votes.is_soft else ""
        title = (f"{votes.num_models} models, {votes.num_votes} votes{soft}; {confidence:.0%} intervals from the "
                 f"{method}" + (f"; style control on {', '.join(style)}" if style else "")
                 + (f"; one leaderboard per {group_by}" if group_by else ""))
    return Leaderboard(frame=frame, title=title, method=method, confidence=float(confidence), fits=fits,
                       intervals=intervals, votes=groups, group_by=group_by, baseline=baseline, style=style,
                       notes=tuple(dict.fromkeys(notes)))
