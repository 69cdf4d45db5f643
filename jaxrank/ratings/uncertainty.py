r"""How sure is the leaderboard? Bootstrap and sandwich intervals, ranks, tied groups, save/restore.

- `bootstrap_ratings`: resample the votes (each with its own weight and soft outcome), or whole prompts,
  refit every round, report percentile intervals. All rounds of a chunk run in ONE jitted, vmapped call
  (resampling included), each round a damped Newton solve warm-started at the full-data optimum.
- `sandwich_intervals`: robust (Huber–White) intervals `H^+ B H^+` from the Hessian and the per-vote
  score contributions at the optimum, no refitting.
- `rank_upper_bound` (Chatbot Arena's "rank (UB)"), `rank_by_rating`, `tied_groups`.
- `save_leaderboard` / `load_leaderboard`: a fitted leaderboard (fit + intervals) through orbax.

Style control (`fit_bradley_terry(..., style=...)`) is covered by both interval methods: the style
coefficients beta are refitted in every bootstrap round and are part of the sandwich's parameter vector,
so the ratings' intervals account for their uncertainty, and beta gets intervals of its own.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.scipy.special import ndtri

from jaxrank.ratings.bradley_terry import (
    TIE_MODELS,
    BTResult,
    check_style,
    fit_bradley_terry,
    outcome_log_probs,
    pad_rows,
    plan_fit,
    solve_bradley_terry,
)
from jaxrank.votes.table import VoteRows, Votes, bucket_size

__all__ = [
    "BootstrapPlan",
    "BootstrapResult",
    "SandwichResult",
    "bootstrap_plan",
    "bootstrap_ratings",
    "resampled_weights",
    "multinomial_counts",
    "sandwich_intervals",
    "rank_upper_bound",
    "rank_by_rating",
    "tied_groups",
    "save_leaderboard",
    "load_leaderboard",
]

_FITS_TIE = ("rao-kupper", "davidson", "grounded-rao-kupper")
_GROUNDED = "grounded-rao-kupper"
# fit_bradley_terry options a bootstrap passes through to the full-data fit (and reuses per round).
_FIT_OPTIONS = ("l2", "scale", "base", "init", "anchor", "anchor_rating", "style", "style_l2", "max_iter", "tol",
                "memory_size", "mesh")
_UNSET = object()


# --------------------------------------------------------------------------------------------------
# Results


@struct.dataclass
class BootstrapResult:
    """Bootstrap of a Bradley–Terry leaderboard.

    Attributes:
        models: model names.
        confidence: central probability of `[lower, upper]`.
        unit: what was resampled, `"votes"` or `"prompts"`.
        fit: the full-data `BTResult` (its `ratings` are the point estimates).
        samples: float32[R, M] Elo-scale ratings of each bootstrap round (same centring/anchor as `fit`).
        median: float32[M] median over rounds.
        lower, upper: float32[M] the `(1 - confidence) / 2` and `(1 + confidence) / 2` percentiles.
        std_error: float32[M] standard deviation over rounds.
        converged: bool[R] whether each round's solver met its tolerance.
        beta_samples: float32[R, K] the style coefficients of each round (K = 0 without style control),
            with `beta_lower`, `beta_upper` (percentiles) and `beta_std_error`, float32[K].
    """

    models: tuple[str, ...] = struct.field(pytree_node=False)
    confidence: float = struct.field(pytree_node=False)
    fit: BTResult
    samples: jax.Array
    median: jax.Array
    lower: jax.Array
    upper: jax.Array
    std_error: jax.Array
    converged: jax.Array
    beta_samples: jax.Array = struct.field(default_factory=lambda: jnp.zeros((0, 0), jnp.float32))
    beta_lower: jax.Array = struct.field(default_factory=lambda: jnp.zeros((0,), jnp.float32))
    beta_upper: jax.Array = struct.field(default_factory=lambda: jnp.zeros((0,), jnp.float32))
    beta_std_error: jax.Array = struct.field(default_factory=lambda: jnp.zeros((0,), jnp.float32))
    unit: str = struct.field(pytree_node=False, default="votes")

    @property
    def ratings(self) -> jax.Array:
        """float32[M] the full-data ratings."""
        return self.fit.ratings

    @property
    def num_rounds(self) -> int:
        return int(self.samples.shape[0])

    def to_frame(self):
        """pandas DataFrame `model, rating, median, lower, upper, std_error`, best first."""
        return _interval_frame(self.models, rating=self.fit.ratings, median=self.median, lower=self.lower,
                               upper=self.upper, std_error=self.std_error)


@struct.dataclass
class SandwichResult:
    """Robust (sandwich) intervals of a Bradley–Terry leaderboard.

    Attributes:
        models: model names.
        confidence: central probability of `[lower, upper]`.
        ratings: float32[M] the fitted ratings.
        std_error: float32[M] robust standard errors on the Elo scale.
        lower, upper: float32[M] `ratings -/+ z * std_error`, `z = Phi^{-1}((1 + confidence) / 2)`.
        covariance: float32[M, M] robust covariance of the ratings (Elo points squared).
        beta, beta_std_error, beta_lower, beta_upper: float32[K] the style coefficients (natural-log odds
            per standard deviation of each feature) with their robust standard errors and intervals
            (K = 0 without style control).
    """

    models: tuple[str, ...] = struct.field(pytree_node=False)
    confidence: float = struct.field(pytree_node=False)
    ratings: jax.Array
    std_error: jax.Array
    lower: jax.Array
    upper: jax.Array
    covariance: jax.Array
    beta: jax.Array = struct.field(default_factory=lambda: jnp.zeros((0,), jnp.float32))
    beta_std_error: jax.Array = struct.field(default_factory=lambda: jnp.zeros((0,), jnp.float32))
    beta_lower: jax.Array = struct.field(default_factory=lambda: jnp.zeros((0,), jnp.float32))
    beta_upper: jax.Array = struct.field(default_factory=lambda: jnp.zeros((0,), jnp.float32))

    def to_frame(self):
        """pandas DataFrame `model, rating, std_error, lower, upper`, best first."""
        return _interval_frame(self.models, rating=self.ratings, std_error=self.std_error, lower=self.lower,
                               upper=self.upper)


def _interval_frame(models, **columns):
    import pandas as pd

    frame = pd.DataFrame({"model": list(models), **{k: np.asarray(v, np.float64) for k, v in columns.items()}})
    return frame.sort_values(list(columns)[0], ascending=False, kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------------------------------
# Shared pieces


def _check_confidence(confidence: Any) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float, np.floating)):
        raise TypeError(f"confidence must be a number in (0, 1), got {type(confidence).__name__}")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    return float(confidence)


class _Setup(NamedTuple):
    """Static description of a fit that the per-round solver and the sandwich share."""

    num_models: int
    num_components: int
    ties: str
    l2: float
    scale: float
    base: float
    init: float
    anchor_index: int  # -1 without anchor
    anchor_rating: float
    num_features: int = 0
    style_l2: float = 0.0

    @property
    def fits_tie(self) -> bool:
        return self.ties in _FITS_TIE

    @property
    def dim(self) -> int:
        return self.num_models + int(self.fits_tie) + self.num_features

    @property
    def beta_start(self) -> int:
        return self.num_models + int(self.fits_tie)


def _x_from_fit(fit: BTResult) -> jax.Array:
    """The parameter vector at the fit: theta centred per component, log tie parameter (fitted ties), beta."""
    parts = [fit.theta.astype(jnp.float32)]
    if fit.ties in _FITS_TIE:
        parts.append(jnp.log(fit.tie_param.astype(jnp.float32))[None])
    parts.append(jnp.asarray(fit.beta, jnp.float32).reshape(-1))
    return jnp.concatenate(parts)


def _centre(theta: jax.Array, component: jax.Array, num_components: int) -> jax.Array:
    sums = jax.ops.segment_sum(theta, component, num_segments=num_components)
    sizes = jax.ops.segment_sum(jnp.ones_like(theta), component, num_segments=num_components)
    return theta - (sums / jnp.maximum(sizes, 1.0))[component]


def _null_projector(component: jax.Array, num_components: int, dim: int, num_models: int) -> jax.Array:
    """float32[dim, dim]: P = sum_c 1_c 1_c^T / |c| on the theta block (the likelihood's flat directions)."""
    sizes = jax.ops.segment_sum(jnp.ones((num_models,), jnp.float32), component, num_segments=num_components)
    same = (component[:, None] == component[None, :]).astype(jnp.float32) / sizes[component][None, :]
    return jnp.zeros((dim, dim), jnp.float32).at[:num_models, :num_models].set(same)


def _to_ratings(theta: jax.Array, component: jax.Array, setup: _Setup) -> jax.Array:
    """Elo-scale ratings from centred theta, with the same anchoring as `fit_bradley_terry`."""
    k = setup.scale / math.log(setup.base)
    offset = jnp.full(theta.shape, setup.init, theta.dtype)
    if setup.anchor_index >= 0:
        in_comp = component == component[setup.anchor_index]
        theta = jnp.where(in_comp, theta - theta[..., setup.anchor_index : setup.anchor_index + 1], theta)
        offset = jnp.where(in_comp, jnp.asarray(setup.anchor_rating, theta.dtype), offset)
    return offset + k * theta


def _delta(x, a, b, features, setup: _Setup):
    """float32[U, R]: `theta_a - theta_b (+ features . beta)` for parameters x [D, R]."""
    delta = x[a] - x[b]
    if setup.num_features:
        delta = delta + features @ x[setup.beta_start:]
    return delta


def _row_derivatives(x: jax.Array, a, b, outcome, setup: _Setup, features=None):
    """Per-row derivatives of `log P(outcome | delta, s)` in the logit `delta` and `s = log(tie_param)`,
    for R parameter vectors at once.

    Args:
        x: float32[D, R] parameters (theta rows, `s` for the fitted tie models, then beta), rounds last.

    Returns:
        `(g_delta, g_s, h_dd, h_ds, h_ss)`, each float32[U, R].
    """
    m = setup.num_models
    fits_tie = setup.fits_tie
    s_row = x[m] if fits_tie else jnp.zeros(x.shape[1:], x.dtype)
    delta = _delta(x, a, b, features, setup)

    def lp(d, s, o):
        return outcome_log_probs(d, o, ties=setup.ties, tie_param=jnp.exp(s) if fits_tie else None)

    grad = jax.grad(lp, argnums=(0, 1))
    hess = jax.jacfwd(grad, argnums=(0, 1))

    def one(d, s, o):
        gd, gs = grad(d, s, o)
        (hdd, hds), (_, hss) = hess(d, s, o)
        return gd, gs, hdd, hds, hss

    over_rounds = jax.vmap(one, in_axes=(0, 0, None))
    return jax.vmap(over_rounds, in_axes=(0, None, 0))(delta, s_row, outcome)


class _Tables(NamedTuple):
    """Static index tables that turn per-row values into per-(i, j) sums with gathers only.

    pair_rows: int32[P, K] the rows of each distinct ordered pair (a, b) (K <= 4 outcomes), padded
        with U (a zero row). cell_pair: int32[M * M] the ordered pair of cell (i, j), or P (a zero).
    """

    pair_rows: jax.Array
    cell_pair: jax.Array


def _tables(a: np.ndarray, b: np.ndarray, num_models: int, num_pairs: int | None = None,
            num_rows: int | None = None) -> _Tables:
    """Tables of the rows `(a, b)`; with `num_pairs` / `num_rows` padded to that many pairs (one compiled
    shape) for values with `num_rows` rows (the extra rows, beyond `len(a)`, are never read)."""
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    u = a.shape[0]
    zero_row = u if num_rows is None else num_rows
    cell = a * num_models + b
    pairs, pair_of_row = np.unique(cell, return_inverse=True)
    order = np.argsort(pair_of_row, kind="stable")
    counts = np.bincount(pair_of_row, minlength=pairs.size)
    k = int(counts.max()) if counts.size else 1
    k = max(k, 4) if num_pairs is not None else k  # a padded table keeps one shape (<= 4 outcomes a pair)
    size = pairs.size if num_pairs is None else max(num_pairs, pairs.size)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(u) - np.repeat(starts, counts)
    pair_rows = np.full((size, k), zero_row, np.int32)
    pair_rows[pair_of_row[order], slot] = order
    cell_pair = np.full((num_models * num_models,), size, np.int32)
    cell_pair[pairs] = np.arange(pairs.size, dtype=np.int32)
    return _Tables(jnp.asarray(pair_rows), jnp.asarray(cell_pair))


def _cell_sums(values: jax.Array, tables: _Tables, num_models: int) -> jax.Array:
    """float32[M, M, R]: `V[i, j] = sum of values[u]` over rows u with `(a_u, b_u) = (i, j)`.

    Gathers and small reductions only: XLA's scatter-add is slow on CPU, and vmapped rounds would make
    it R * U single-element updates."""
    zero = jnp.zeros((1,) + values.shape[1:], values.dtype)
    pair_sum = jnp.concatenate([values, zero])[tables.pair_rows].sum(axis=1)  # [P, R]
    cells = jnp.concatenate([pair_sum, zero])[tables.cell_pair]  # [M * M, R]
    return cells.reshape((num_models, num_models) + values.shape[1:])


def _laplacian(e: jax.Array, m: int) -> jax.Array:
    """float32[R, M, M]: `diag(S 1) - S` with `S = E + E^T`, for per-cell sums E [M, M, R]."""
    s = e + jnp.swapaxes(e, 0, 1)
    lap = -s + jnp.eye(m, dtype=s.dtype)[:, :, None] * s.sum(axis=1)[:, None, :]
    return jnp.moveaxis(lap, -1, 0)


def _gradient_and_hessian(x, weight, a, b, outcome, tables: _Tables, setup: _Setup):
    """Gradient float32[D, R] and Hessian float32[R, D, D] of the penalised NLL for R rounds at once
    (`x` [D, R], `weight` [U, R], rounds last; merged rows, no covariates).

    With per-row `d = -w * dlogP/ddelta` and `e = -w * d2logP/ddelta2`, summed per ordered pair into
    `G[i, j]` and `E[i, j]`: `grad_i = sum_j G[i, j] - G[j, i]` and, with `S = E + E^T`, the theta block
    of the Hessian is the weighted graph Laplacian `diag(S 1) - S`.
    """
    m = setup.num_models
    gd, gs, hdd, hds, hss = _row_derivatives(x, a, b, outcome, setup)
    w = weight
    big_g = _cell_sums(-w * gd, tables, m)
    g = big_g.sum(axis=1) - big_g.sum(axis=0)  # [M, R]
    hess = _laplacian(_cell_sums(-w * hdd, tables, m), m)  # [R, M, M]
    if setup.l2 > 0:
        g = g + setup.l2 * x[:m]
        hess = hess + setup.l2 * jnp.eye(m, dtype=hess.dtype)
    if setup.fits_tie:
        cs = _cell_sums(-w * hds, tables, m)
        cross = (cs.sum(axis=1) - cs.sum(axis=0)).T  # [R, M]
        hss_total = -jnp.sum(w * hss, axis=0)  # [R]
        g = jnp.concatenate([g, -jnp.sum(w * gs, axis=0)[None, :]], axis=0)
        top = jnp.concatenate([hess, cross[:, :, None]], axis=2)
        bottom = jnp.concatenate([cross, hss_total[:, None]], axis=1)[:, None, :]
        hess = jnp.concatenate([top, bottom], axis=1)
    return g, hess


def _segment(values: jax.Array, a, b, m: int) -> jax.Array:
    """float32[M, ...]: `sum_{u: a_u = i} v_u - sum_{u: b_u = i} v_u` (row windows: one scatter per side)."""
    zero = jnp.zeros((m,) + values.shape[1:], values.dtype)
    return zero.at[a].add(values).at[b].add(-values)


def _gradient_and_hessian_rows(x, weight, a, b, outcome, features, setup: _Setup):
    """`_gradient_and_hessian` for per-vote rows with covariates (style control): parameters
    `[theta (M), s (fitted ties), beta (K)]`. Per-row sums are scatters of whole rows of R rounds (one
    window per row), the covariate blocks small matrix products."""
    m, k = setup.num_models, setup.num_features
    num_rounds = x.shape[1]
    gd, gs, hdd, hds, hss = _row_derivatives(x, a, b, outcome, setup, features)
    wd = -weight * gd
    wh = -weight * hdd
    cells = jnp.zeros((m * m, num_rounds), wh.dtype).at[a * m + b].add(wh).reshape(m, m, num_rounds)
    h_tt = _laplacian(cells, m)  # [R, M, M]
    g_t = _segment(wd, a, b, m)  # [M, R]
    g_b = features.T @ wd  # [K, R]
    h_tb = jnp.stack([_segment(wh * features[:, j:j + 1], a, b, m) for j in range(k)], axis=1)  # [M, K, R]
    h_tb = jnp.moveaxis(h_tb, -1, 0)  # [R, M, K]
    h_bb = jnp.einsum("uk,ur,ul->rkl", features, wh, features)  # [R, K, K]
    if setup.l2 > 0:
        g_t = g_t + setup.l2 * x[:m]
        h_tt = h_tt + setup.l2 * jnp.eye(m, dtype=h_tt.dtype)
    beta = x[setup.beta_start:]
    g_b = g_b + setup.style_l2 * beta
    h_bb = h_bb + setup.style_l2 * jnp.eye(k, dtype=h_bb.dtype)
    blocks_g = [g_t]
    if setup.fits_tie:
        ws, wds, wss = -weight * gs, -weight * hds, -weight * hss
        blocks_g.append(ws.sum(axis=0)[None, :])
        h_ts = _segment(wds, a, b, m).T[:, :, None]  # [R, M, 1]
        h_sb = (features.T @ wds).T[:, None, :]  # [R, 1, K]
        h_ss = wss.sum(axis=0)[:, None, None]  # [R, 1, 1]
        row_t = jnp.concatenate([h_tt, h_ts, h_tb], axis=2)
        row_s = jnp.concatenate([jnp.swapaxes(h_ts, 1, 2), h_ss, h_sb], axis=2)
        row_b = jnp.concatenate([jnp.swapaxes(h_tb, 1, 2), jnp.swapaxes(h_sb, 1, 2), h_bb], axis=2)
        hess = jnp.concatenate([row_t, row_s, row_b], axis=1)
    else:
        hess = jnp.concatenate([jnp.concatenate([h_tt, h_tb], axis=2),
                                jnp.concatenate([jnp.swapaxes(h_tb, 1, 2), h_bb], axis=2)], axis=1)
    blocks_g.append(g_b)
    return jnp.concatenate(blocks_g, axis=0), hess


def _nll(x, weight, a, b, outcome, setup: _Setup, features=None):
    """float32[R]: penalised NLL of each round, `x` [D, R], `weight` [U, R]."""
    m = setup.num_models
    tie = jnp.exp(x[m])[None, :] if setup.fits_tie else None
    lp = outcome_log_probs(_delta(x, a, b, features, setup), outcome[:, None], ties=setup.ties, tie_param=tie)
    nll = -jnp.sum(weight * lp, axis=0)
    if setup.l2 > 0:
        nll = nll + 0.5 * setup.l2 * jnp.sum(x[:m] * x[:m], axis=0)
    if setup.num_features:
        nll = nll + 0.5 * setup.style_l2 * jnp.sum(x[setup.beta_start:] ** 2, axis=0)
    return nll


# --------------------------------------------------------------------------------------------------
# Resampling: what a round draws


class _Kinds(NamedTuple):
    """The distinct kinds of vote (the rows a vote adds to, and how much): resampling draws kinds.

    rows: int32[T, S] rows of each kind; amount: float32[T, S] what one vote of the kind adds to them;
    prob: float32[T] the share of the votes of each kind (multinomial sampler); vote_kind: int32[N] the
    kind of each single vote (votes sampler; empty when not needed).
    """

    rows: jax.Array
    amount: jax.Array
    prob: jax.Array
    vote_kind: jax.Array


class _KindTable(NamedTuple):
    """Host (NumPy) kinds of vote; `identity`: the kinds are the rows themselves, each vote adding 1 to
    its row (plain hard unweighted votes: the resampling fast path, no scatter of amounts)."""

    rows: np.ndarray  # int64[T, S]
    amount: np.ndarray  # float64[T, S]
    count: np.ndarray  # float64[T] votes of each kind
    of_entry: np.ndarray  # int64[N] the kind of each table entry
    multiplicity: np.ndarray  # int64[N]
    identity: bool

    @property
    def num_votes(self) -> int:
        return int(self.multiplicity.sum())


def _kind_table(rows: VoteRows) -> _KindTable:
    vote_row = np.asarray(rows.vote_row, np.int64)
    amount = np.asarray(rows.vote_amount, np.float64)
    mult = np.rint(np.asarray(rows.vote_count, np.float64)).astype(np.int64)
    if vote_row.shape[1] == 1 and rows.merged and bool(np.all(amount == 1.0)):
        t = rows.num_rows
        of_entry = vote_row[:, 0]
        kind_rows, kind_amount = np.arange(t, dtype=np.int64)[:, None], np.ones((t, 1))
        identity = True
    else:
        key = np.concatenate([vote_row.astype(np.float64), amount], axis=1)
        uniq, of_entry = np.unique(key, axis=0, return_inverse=True)
        of_entry = of_entry.reshape(-1)
        s = vote_row.shape[1]
        kind_rows, kind_amount = uniq[:, :s].astype(np.int64), uniq[:, s:]
        identity = False
    count = np.bincount(of_entry, weights=mult, minlength=kind_rows.shape[0]).astype(np.float64)
    return _KindTable(kind_rows, kind_amount, count, of_entry, mult, identity)


def _kinds_spec(kt: _KindTable, *, num_rows: int, with_votes: bool) -> _Kinds:
    """Device kinds padded to one compiled shape: identity kinds to the padded rows, others to a bucket."""
    t = kt.rows.shape[0]
    size = num_rows if kt.identity else bucket_size(t)
    pad = size - t
    rows = np.concatenate([kt.rows, np.zeros((pad, kt.rows.shape[1]), np.int64)]) if pad else kt.rows
    amount = np.concatenate([kt.amount, np.zeros((pad, kt.amount.shape[1]))]) if pad else kt.amount
    prob = np.concatenate([kt.count, np.zeros(pad)]) / max(kt.num_votes, 1)
    # The votes grouped by kind (any order gives the same distribution; this one is O(T) to build).
    vote_kind = np.repeat(np.arange(t), kt.count.astype(np.int64)) if with_votes else np.zeros((0,), np.int64)
    return _Kinds(jnp.asarray(rows, jnp.int32), jnp.asarray(amount, jnp.float32), jnp.asarray(prob, jnp.float32),
                  jnp.asarray(vote_kind, jnp.int32))


def _prompt_table(votes: Votes, rows: VoteRows, num_rows: int):
    """COO entries (prompt, row, amount) of what all the votes of each prompt add to each row."""
    vote_row = np.asarray(rows.vote_row, np.int64)
    amount = np.asarray(rows.vote_amount, np.float64) * np.asarray(rows.vote_count, np.float64)[:, None]
    prompt = np.repeat(np.asarray(votes.prompt, np.int64), vote_row.shape[1])
    key = prompt * num_rows + vote_row.reshape(-1)
    uniq, inverse = np.unique(key, return_inverse=True)
    total = np.bincount(inverse.reshape(-1), weights=amount.reshape(-1), minlength=uniq.size)
    return uniq // num_rows, uniq % num_rows, total


def multinomial_counts(keys: jax.Array, n: int, prob: Any) -> jax.Array:
    """float32[R, T]: row r is one exact Multinomial(n, prob) draw, from `keys[r]`.

    Each row keys a NumPy Philox generator with the raw bits of its JAX key (counter-based: distinct keys,
    independent streams) and calls `Generator.multinomial` (T conditional binomials in C). `jax.random.multinomial` is a
    `lax.scan` of T rejection-sampled binomials, vmapped over rounds: about half of a 1,000-round
    bootstrap of 7,040 votes on CPU, against a few milliseconds here; the counts then move to the device
    once. `prob` (float64 [T], summing to 1 over its non-zero entries) should be exact shares (`count / n`).
    """
    if not isinstance(keys, jax.Array) or keys.ndim != 1:
        raise ValueError(f"keys must be a 1-D array of JAX keys (one per round), got {getattr(keys, 'shape', type(keys))}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer (the number of draws per round), got {n!r}")
    prob = np.asarray(prob, np.float64)
    if prob.ndim != 1 or not np.all(np.isfinite(prob)) or np.any(prob < 0) or not prob.sum() > 0:
        raise ValueError("prob must be a 1-D array of finite, non-negative shares with a positive sum")
    prob = prob / prob.sum()
    words = np.asarray(jax.random.key_data(keys)).reshape(keys.shape[0], -1).astype(np.uint64)
    out = np.empty((keys.shape[0], prob.shape[0]), np.float32)
    # One Philox bit generator re-keyed per round: `Generator(Philox(key=k))` draws, without building a
    # generator (and hashing a seed) 1,000 times, which cost as much as the draws themselves.
    bits = np.random.Philox(key=0)
    gen = np.random.Generator(bits)
    for r, w in enumerate(words):
        key = np.zeros(2, np.uint64)
        key[: min(2, w.size)] = w[:2] if w.size <= 2 else [w[0] << np.uint64(32) | w[1], w[2] << np.uint64(32) | w[3]]
        bits.state = {"bit_generator": "Philox", "state": {"counter": np.zeros(4, np.uint64), "key": key},
                      "buffer": np.zeros(4, np.uint64), "buffer_pos": 4, "has_uint32": 0, "uinteger": 0}
        out[r] = gen.multinomial(int(n), prob)
    return jnp.asarray(out)


def _draws(keys: jax.Array, statics: dict[str, Any], host_prob: np.ndarray | None) -> jax.Array:
    """What `_resample` takes per round: the keys, or for the multinomial sampler the counts drawn from them."""
    if statics["sampler"] == "multinomial":
        return multinomial_counts(keys, statics["num_votes"], host_prob)
    return keys


def _resample(key, spec, *, sampler: str, identity: bool, num_rows: int, num_votes: int, num_prompts: int):
    """float32[U] row weights of one bootstrap round (see `bootstrap_ratings`) from its `key`, or for the
    multinomial sampler from its counts of each kind (`_draws`)."""
    if sampler == "prompts":
        prompt, row, amount = spec
        draws = jax.random.randint(key, (num_prompts,), 0, num_prompts)
        times = jnp.zeros((num_prompts,), jnp.float32).at[draws].add(1.0)
        return jnp.zeros((num_rows,), jnp.float32).at[row].add(times[prompt] * amount)
    kinds: _Kinds = spec
    if sampler == "votes":
        # Drawing N votes uniformly, each bringing its own rows and amounts.
        draw = kinds.vote_kind[jax.random.randint(key, (num_votes,), 0, num_votes)]
        if identity:
            return jnp.zeros((num_rows,), jnp.float32).at[draw].add(1.0)
        out = jnp.zeros((num_rows,), jnp.float32)
        for s in range(kinds.rows.shape[1]):
            out = out.at[kinds.rows[draw, s]].add(kinds.amount[draw, s])
        return out
    counts = key  # the multinomial sampler's draws are the counts themselves (`multinomial_counts`, on the host)
    if identity:
        return counts
    out = jnp.zeros((num_rows,), jnp.float32)
    for s in range(kinds.rows.shape[1]):
        out = out.at[kinds.rows[:, s]].add(counts * kinds.amount[:, s])
    return out


def _newton(x0, weight, a, b, outcome, component, tables, features, setup: _Setup, *, max_iter: int, tol: float):
    r"""Damped Newton on the penalised NLL of R rounds at once, from `x0` float32[D] (a nearby optimum).

    `weight` is float32[U, R]. Each round steps by `(H + P + lambda I)^{-1} g`, with `P` the projector
    on the flat (per-component shift) directions when `l2 == 0` (it keeps the step centred and the
    system regular) and a tiny ridge `lambda` for resamples that lose a model's wins or losses;
    backtracking halves a round's step until its NLL decreases. A round stops when its largest step is
    below `tol` (natural-log units); the loop stops when all have, or after `max_iter` steps.

    Returns:
        `(x [D, R], converged bool[R])`.
    """
    m = setup.num_models
    dim = x0.shape[0]
    num_rounds = weight.shape[1]
    total = jnp.maximum(jnp.sum(weight, axis=0), 1.0)  # [R]
    proj = _null_projector(component, setup.num_components, dim, m) if setup.l2 == 0 else jnp.zeros((dim, dim))
    eye = jnp.eye(dim, dtype=jnp.float32)

    def value(x):
        return _nll(x, weight, a, b, outcome, setup, features) / total

    def grad_hess(x):
        if setup.num_features:
            return _gradient_and_hessian_rows(x, weight, a, b, outcome, features, setup)
        return _gradient_and_hessian(x, weight, a, b, outcome, tables, setup)

    def centre(x):
        if setup.l2 > 0:
            return x
        return x.at[:m].set(jax.vmap(lambda t: _centre(t, component, setup.num_components), 1, 1)(x[:m]))

    def body(state: _NewtonState) -> _NewtonState:
        active = ~state.done
        g, h = grad_hess(state.x)
        g = g / total
        h = h / total[:, None, None]
        ridge = 1e-6 * (jnp.trace(h, axis1=1, axis2=2) / dim + 1e-6)
        system = h + proj + ridge[:, None, None] * eye
        step = jnp.linalg.solve(system, g.T[..., None])[..., 0].T  # [D, R]
        step = jnp.where(jnp.isfinite(step), step, 0.0)

        # A step this small is inside Newton's region of quadratic convergence (the NLL is convex, its third
        # derivatives bounded), and the decrease it brings is below what a float32 NLL resolves: comparing
        # values there is rounding noise, which used to reject or halve good steps at random and kept a
        # few rounds of a batch wandering at ~5e-5 until max_iter (all rounds iterating with them).
        small = jnp.max(jnp.abs(step), axis=0) <= _FULL_STEP

        def accept(v):
            return small | (v <= state.value + 1e-7 * jnp.abs(state.value))

        def halve(carry):
            t, v, ok = carry
            t = jnp.where(ok, t, 0.5 * t)
            v = value(state.x - t * step)
            return t, v, accept(v)

        def searching(carry):
            t, _, ok = carry
            return jnp.any(active & ~ok & (t > 1e-3))

        t0 = jnp.ones((num_rounds,), jnp.float32)
        v0 = value(state.x - step)
        t, v, ok = jax.lax.while_loop(searching, halve, (t0, v0, accept(v0)))
        take = active & ok
        x = centre(jnp.where(take, state.x - t * step, state.x))
        moved = jnp.where(take, jnp.max(jnp.abs(t * step), axis=0), 0.0)
        done = state.done | (moved < tol) | ~ok
        # A round whose line search failed stops where it is, NOT converged (its step size is not small).
        step_size = jnp.where(active & ~ok, jnp.inf, jnp.where(active, moved, state.step_size))
        return _NewtonState(x, jnp.where(take, v, state.value), step_size,
                            state.num_iter + 1, done)

    x_init = jnp.broadcast_to(x0[:, None], (dim, num_rounds))
    state = _NewtonState(x_init, value(x_init), jnp.full((num_rounds,), jnp.inf, jnp.float32), jnp.int32(0),
                         jnp.zeros((num_rounds,), bool))
    state = jax.lax.while_loop(lambda s: jnp.any(~s.done) & (s.num_iter < max_iter), body, state)
    return state.x, state.step_size < tol


#: Newton steps no longer than this (natural-log units, ~9 Elo) are taken whole, without the line search.
_FULL_STEP = 0.05


class _NewtonState(NamedTuple):
    x: jax.Array  # [D, R]
    value: jax.Array  # [R]
    step_size: jax.Array  # [R] max |accepted step|
    num_iter: jax.Array
    done: jax.Array  # [R]


@functools.partial(jax.jit, static_argnames=("setup", "sampler", "identity", "num_rows", "num_votes", "num_prompts",
                                             "solver", "max_iter", "tol"))
def _bootstrap_chunk(draws, x0, spec, a, b, outcome, component, tables, features, *, setup, sampler, identity,
                     num_rows, num_votes, num_prompts, solver, max_iter, tol):
    weights = jax.vmap(lambda k: _resample(k, spec, sampler=sampler, identity=identity, num_rows=num_rows,
                                           num_votes=num_votes, num_prompts=num_prompts))(draws)
    m = setup.num_models
    if solver == "newton":
        x, ok = _newton(x0, weights.T, a, b, outcome, component, tables, features, setup, max_iter=max_iter, tol=tol)
        theta, beta = x[:m].T, x[setup.beta_start:].T
    else:
        sol = jax.vmap(
            lambda w: solve_bradley_terry(
                w, a, b, outcome, component, num_models=m, ties=setup.ties, l2=setup.l2, max_iter=max_iter,
                tol=tol, memory_size=20, features=features, style_l2=setup.style_l2,
            )
        )(weights)
        theta, ok, beta = sol.theta, sol.converged, sol.beta
    return jax.vmap(lambda t: _to_ratings(t, component, setup))(theta), beta, ok


def _setup_from(fit: BTResult, votes: Votes, component: np.ndarray, num_features: int) -> _Setup:
    return _Setup(
        num_models=votes.num_models,
        num_components=int(component.max()) + 1,
        ties=fit.ties,
        l2=float(fit.l2),
        scale=fit.scale,
        base=fit.base,
        init=fit.init,
        anchor_index=-1 if fit.anchor is None else votes.models.index(fit.anchor),
        anchor_rating=float(fit.init if fit.anchor_rating is None else fit.anchor_rating),
        num_features=int(num_features),
        style_l2=float(fit.style_l2),
    )


def _fit_for(votes: Votes, ties: str, fit: BTResult | None, fit_kwargs: dict[str, Any], what: str) -> BTResult:
    """The full-data fit: `fit` (checked against `votes`, `ties` and any option given), or a new fit."""
    unknown = sorted(set(fit_kwargs) - set(_FIT_OPTIONS))
    if unknown:
        raise TypeError(f"{what} got unexpected keyword argument(s) {', '.join(unknown)}; "
                        f"fit options are {', '.join(_FIT_OPTIONS)}")
    if fit is None:
        return fit_bradley_terry(votes, ties=ties, **fit_kwargs)
    if not isinstance(fit, BTResult):
        raise TypeError(f"fit must be a BTResult from fit_bradley_terry, got {type(fit).__name__}")
    if fit.models != votes.models or fit.ties != ties:
        raise ValueError("fit must be the BTResult of fit_bradley_terry on these votes with the same ties "
                         f"(fit: ties={fit.ties!r}, {fit.num_models} models; here ties={ties!r}, {votes.num_models} models)")
    given = {"l2": fit.l2, "anchor": fit.anchor, "anchor_rating": fit.anchor_rating, "style": fit.style,
             "style_l2": fit.style_l2, "scale": fit.scale, "base": fit.base, "init": fit.init}
    for name, value in fit_kwargs.items():
        if name in given:
            theirs = given[name]
            mine = check_style(value) if name == "style" else value
            if name == "anchor_rating" and fit.anchor is not None and mine is None:
                continue
            if name == "style_l2" and not fit.style:
                continue
            if mine != theirs and not (isinstance(mine, (int, float)) and isinstance(theirs, (int, float))
                                       and float(mine) == float(theirs)):
                raise ValueError(f"{name}={value!r} differs from the fit's {name}={theirs!r}; pass the fit made with "
                                 "the same options, or leave the option out (the fit's is used)")
    return fit


def resampled_weights(key: jax.Array, votes: Votes, *, num_rounds: int, sampler: str = "votes",
                      unit: str = "votes", style: Any = None) -> jax.Array:
    r"""float32[R, U] the row weights of the first `num_rounds` bootstrap rounds of `bootstrap_ratings`.

    Round r uses `jax.random.split(key, num_rounds)[r]`, exactly as `bootstrap_ratings` with the same
    key, `num_rounds`, `sampler` and `unit` does, so a round can be refitted independently (rows:
    `votes.rows()`, or `votes.rows(merge=False)` with `style`).

    Example:
        >>> w = resampled_weights(jax.random.key(0), votes, num_rounds=10)   # doctest: +SKIP
        >>> w.shape == (10, votes.rows().num_rows)                            # doctest: +SKIP
    """
    rows = votes.rows(merge=not check_style(style))
    spec, statics, host_prob = _resampling(votes, rows, sampler=sampler, unit=unit, num_rows=rows.num_rows)
    keys = jax.random.split(key, int(num_rounds))
    return jax.vmap(lambda k: _resample(k, spec, **statics))(_draws(keys, statics, host_prob))


def _resampling(votes: Votes, rows: VoteRows, *, sampler: str, unit: str, num_rows: int,
               kinds: _KindTable | None = None):
    """(spec pytree, static options, host float64 shares of the kinds or None) of `_resample` for these votes;
    `sampler` "auto" is resolved here."""
    if unit == "prompts":
        if votes.prompt is None:
            raise ValueError("unit='prompts' needs prompt ids on the votes (load_votes reads a prompt column)")
        prompt, row, amount = _prompt_table(votes, rows, rows.num_rows)
        size = bucket_size(prompt.size)
        pad = size - prompt.size
        spec = (jnp.asarray(np.concatenate([prompt, np.zeros(pad, np.int64)]), jnp.int32),
                jnp.asarray(np.concatenate([row, np.zeros(pad, np.int64)]), jnp.int32),
                jnp.asarray(np.concatenate([amount, np.zeros(pad)]), jnp.float32))
        return spec, dict(sampler="prompts", identity=False, num_rows=num_rows, num_votes=votes.num_votes,
                          num_prompts=votes.num_prompts), None
    kt = _kind_table(rows) if kinds is None else kinds
    if sampler == "auto":
        sampler = "votes" if kt.num_votes <= 8 * int(np.count_nonzero(kt.count)) else "multinomial"
    spec = _kinds_spec(kt, num_rows=num_rows, with_votes=sampler == "votes")
    size = int(spec.prob.shape[0])
    host_prob = np.concatenate([kt.count, np.zeros(size - kt.count.shape[0])]) / max(kt.num_votes, 1)
    return spec, dict(sampler=sampler, identity=kt.identity, num_rows=num_rows, num_votes=kt.num_votes,
                      num_prompts=0), host_prob


#: Work units (resampled entries + 10 x Newton dimension^3, per round) of one compiled bootstrap call.
CHUNK_WORK = 1 << 30


class BootstrapPlan(NamedTuple):
    """Memory plan of `bootstrap_ratings` (`bootstrap_plan`).

    Attributes:
        chunk_size: rounds per compiled call (bounded working memory, `jaxrank.resources.chunk_bytes()`, and
            about a second of work, `CHUNK_WORK`).
        chunk_bytes: estimated working memory of one chunk.
        result_bytes: estimated memory of the result (samples [R, M] and beta samples [R, K] with their sort
            for the quantiles, the R keys, the convergence flags).
        sampler: the resampling scheme `"auto"` resolves to (`"prompts"` for `unit="prompts"`).
    """

    chunk_size: int
    chunk_bytes: int
    result_bytes: int
    sampler: str


def _plan(votes: Votes, *, num_rounds: int, ties: str, sampler: str, unit: str, style: Any,
          chunk_size: int | None) -> tuple[BootstrapPlan, VoteRows, _KindTable | None]:
    """`bootstrap_plan` with the rows and the kind table it used (so that `bootstrap_ratings` builds them once)."""
    from jaxrank.resources import check_memory
    from jaxrank.resources import chunk_bytes as chunk_budget

    if isinstance(num_rounds, bool) or not isinstance(num_rounds, (int, np.integer)) or num_rounds < 2:
        raise ValueError(f"num_rounds must be an int >= 2, got {num_rounds!r}")
    if unit not in ("votes", "prompts"):
        raise ValueError(f"unit must be 'votes' or 'prompts', got {unit!r}")
    if sampler not in ("auto", "votes", "multinomial"):
        raise ValueError(f"sampler must be one of 'auto', 'votes', 'multinomial'; got {sampler!r}")
    if votes.num_votes < 1:
        raise ValueError("votes has no votes to resample")
    k = len(check_style(style))
    rows = votes.rows(merge=not k)
    m, u_pad = votes.num_models, bucket_size(rows.num_rows)
    kt = None
    if unit == "prompts":
        sampler = "prompts"
        per_round = u_pad + votes.num_prompts  # the drawn prompts and the rows they scatter into
    else:
        kt = _kind_table(rows)
        if sampler == "auto":
            sampler = "votes" if kt.num_votes <= 8 * int(np.count_nonzero(kt.count)) else "multinomial"
        per_round = kt.num_votes if sampler == "votes" else u_pad
    dim = m + (1 if ties in _FITS_TIE else 0) + k
    per_round_bytes = 4 * (per_round + (8 + 2 * k) * u_pad + 6 * dim * dim + (m * m if k else 0))
    # Also at most about a second of work per compiled call (resampling ~ per_round, Newton ~ 10 dim^3), so
    # that progress moves and Ctrl-C stops the run soon: ~1.3 s for 490 rounds of LLMFAO (59 models,
    # 8,931 votes) on a loaded 2-core CPU.
    by_work = max(1, CHUNK_WORK // (per_round + 10 * dim**3))
    cap = int(max(1, min(num_rounds, chunk_budget() // per_round_bytes, by_work)))
    auto = -(-int(num_rounds) // -(-int(num_rounds) // cap))  # even chunks, little padding
    size = int(min(auto if chunk_size is None else min(chunk_size, cap), num_rounds))
    work_bytes = size * per_round_bytes
    per_round_result = 3 * 4 * (m + k) + 8 + 1
    result_bytes = int(num_rounds) * per_round_result
    check_memory(result_bytes + work_bytes, what=f"the bootstrap samples [R, M] (M = {m} models)",
                 option="num_rounds", value=int(num_rounds), per_unit=per_round_result, fixed=work_bytes)
    return BootstrapPlan(chunk_size=size, chunk_bytes=int(work_bytes), result_bytes=result_bytes,
                         sampler=sampler), rows, kt


def bootstrap_plan(votes: Votes, *, num_rounds: int, ties: str = "half", sampler: str = "auto",
                   unit: str = "votes", style: Any = None, chunk_size: int | None = None) -> BootstrapPlan:
    """The memory plan of `bootstrap_ratings(key, votes, num_rounds=..., ties=..., ...)`, checked before any work.

    The rounds run in chunks whose working memory is bounded (`jaxrank.resources.chunk_bytes()`: 256 MiB or a
    quarter of the budget, of resampling and solver state) whatever `num_rounds`; what grows with it is the
    result, `samples` float32[R, M] (kept, concatenated and sorted once for the quantiles: about 12 M bytes per
    round) and the R keys (8 bytes each).

    Raises:
        jaxrank.resources.ResourceError: (a ValueError) the result does not fit in memory; the message names
            `num_rounds`, the estimate and the most rounds that fit.

    Example:
        >>> bootstrap_plan(votes, num_rounds=1000).chunk_size   # doctest: +SKIP
        1000
    """
    if not isinstance(votes, Votes):
        raise TypeError(f"votes must be a jaxrank.Votes (see jaxrank.load_votes), got {type(votes).__name__}")
    return _plan(votes, num_rounds=num_rounds, ties=ties, sampler=sampler, unit=unit, style=style,
                 chunk_size=chunk_size)[0]


def bootstrap_ratings(
    key: jax.Array,
    votes: Votes,
    *,
    num_rounds: int = 1000,
    ties: str = "half",
    confidence: float = 0.95,
    unit: str = "votes",
    chunk_size: int | None = None,
    progress: Callable[[int, int], Any] | None = None,
    sampler: str = "auto",
    solver: str = "auto",
    fit: BTResult | None = None,
    **fit_kwargs: Any,
) -> BootstrapResult:
    r"""Bootstrap confidence intervals for a Bradley–Terry leaderboard, all rounds vmapped.

    `unit="votes"` (default): round r draws N = `votes.num_votes` votes with replacement from the N votes,
    each drawn vote bringing its own weight and soft outcome (a weighted vote is ONE observation, so the
    spread of the weights enters the intervals), and refits the same model (`ties`, `l2`, anchor, style)
    from the full-data optimum. `unit="prompts"`: round r draws P prompts with replacement and keeps all
    the votes of each drawn prompt (a cluster bootstrap: votes on one prompt are not independent). The
    interval is the percentile interval `[q_{(1-c)/2}, q_{(1+c)/2}]` of the round ratings, as Chatbot
    Arena reports.

    Rounds run `chunk_size` at a time; each chunk is ONE jitted call that resamples and fits all its
    rounds with `vmap`. Round r's key is `jax.random.split(key, num_rounds)[r]`, so results do not
    depend on `chunk_size` (`resampled_weights` gives a round's row weights). Solvers: `"newton"` (damped
    Newton on the exact Hessian, warm-started at the full-data fit; converges in a few steps; O(D^3) per
    step, the default up to 512 models) or `"lbfgs"` (`solve_bradley_terry` vmapped, cold start).

    Args:
        key: PRNG key.
        votes: `jaxrank.Votes`.
        num_rounds: R >= 2.
        ties: tie model, as for `fit_bradley_terry`.
        confidence: central probability of the intervals, in (0, 1).
        unit: `"votes"` or `"prompts"` (needs prompt ids).
        chunk_size: rounds per compiled call (default and upper bound: about 256 MiB of resampling and
            solver state and about a second of work, <= R; see `bootstrap_plan`, which also refuses an R
            whose result cannot fit).
        progress: optional callable `progress(done, total)` called after each chunk (and once with 0).
        sampler: for `unit="votes"`: `"votes"` (draw N vote indices: O(R N)), `"multinomial"` (counts of the
            distinct kinds of vote, exact multinomial draws seeded by each round's key: `multinomial_counts`, O(R T)), or `"auto"` (votes when N <= 8 T).
        solver: `"newton"`, `"lbfgs"` or `"auto"` (always `"lbfgs"` for `"grounded-rao-kupper"`).
        fit: the full-data fit, if already computed (its options — l2, anchor, style — are used).
        **fit_kwargs: `l2, scale, base, init, anchor, anchor_rating, style, style_l2, max_iter, tol,
            memory_size, mesh` for the full-data `fit_bradley_terry` (the rounds reuse them; `max_iter`/`tol`
            also bound the rounds' solver).

    Returns:
        `BootstrapResult(fit, samples [R, M], median, lower, upper, std_error [M], converged [R],
        beta_samples [R, K], beta_lower, beta_upper, beta_std_error [K])`.

    Example:
        >>> boot = bootstrap_ratings(jax.random.key(0), votes, num_rounds=1000)   # doctest: +SKIP
        >>> boot.lower, boot.upper                                                  # doctest: +SKIP
    """
    if not isinstance(votes, Votes):
        raise TypeError(f"votes must be a jaxrank.Votes (see jaxrank.load_votes), got {type(votes).__name__}")
    if ties not in TIE_MODELS:
        raise ValueError(f"ties must be one of {', '.join(repr(t) for t in TIE_MODELS)}; got {ties!r}")
    if isinstance(num_rounds, bool) or not isinstance(num_rounds, (int, np.integer)) or num_rounds < 2:
        raise ValueError(f"num_rounds must be an int >= 2, got {num_rounds!r}")
    confidence = _check_confidence(confidence)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1):
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    if unit not in ("votes", "prompts"):
        raise ValueError(f"unit must be 'votes' or 'prompts', got {unit!r}")
    if sampler not in ("auto", "votes", "multinomial"):
        raise ValueError(f"sampler must be one of 'auto', 'votes', 'multinomial'; got {sampler!r}")
    if solver not in ("auto", "newton", "lbfgs"):
        raise ValueError(f"solver must be one of 'auto', 'newton', 'lbfgs'; got {solver!r}")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be a callable progress(done, total), got {type(progress).__name__}")
    if unit == "prompts" and votes.prompt is None:
        raise ValueError("unit='prompts' needs prompt ids on the votes (load_votes reads a prompt column)")
    # The memory plan before any work (the full-data fit included).
    boot_plan, _, kinds = _plan(votes, num_rounds=num_rounds, ties=ties, sampler=sampler, unit=unit,
                                style=fit.style if isinstance(fit, BTResult) else fit_kwargs.get("style"),
                                chunk_size=chunk_size)
    fit = _fit_for(votes, ties, fit, fit_kwargs, "bootstrap_ratings")

    m = votes.num_models
    plan = plan_fit(votes, ties=ties, style=fit.style, anchor=fit.anchor)
    rows = plan.rows
    k = len(fit.style)
    setup = _setup_from(fit, votes, plan.component, k)
    if votes.num_votes < 1:
        raise ValueError("votes has no votes to resample")

    # One compiled shape for data sets of similar size: rows (and kinds) padded with zero rows.
    u = rows.num_rows
    u_pad = bucket_size(u)
    a, b, outcome, _, features = pad_rows(u_pad, rows.a, rows.b, rows.outcome, rows.count, plan.features)
    a, b, outcome = (np.asarray(x) for x in (a, b, outcome))

    spec, statics, host_prob = _resampling(votes, rows, sampler=boot_plan.sampler, unit=unit, num_rows=u_pad,
                                           kinds=kinds)
    if ties == _GROUNDED and solver == "newton":
        raise ValueError("solver='newton' does not support ties='grounded-rao-kupper' (its Hessian is not a graph "
                         "Laplacian); use solver='lbfgs' or 'auto'")
    if solver == "auto":
        solver = "newton" if m <= 512 and ties != _GROUNDED else "lbfgs"
    chunk_size = boot_plan.chunk_size

    max_iter = int(fit_kwargs.get("max_iter", 1000))
    if solver == "newton":
        # From the full-data optimum Newton needs 3-5 steps; a step below 1e-5 (0.002 Elo) is converged.
        max_iter = min(max_iter, 10)
        tol = 1e-5
    else:
        tol = float(fit_kwargs.get("tol", 1e-7))
    x0 = _x_from_fit(fit)
    comp = jnp.asarray(plan.component, jnp.int32)
    tables = None if k else _tables(a[:u], b[:u], m, num_pairs=bucket_size(len(np.unique(a[:u] * m + b[:u]))), num_rows=u_pad)
    keys = jax.random.split(key, int(num_rounds))
    samples, betas, oks = [], [], []
    if progress is not None:
        progress(0, int(num_rounds))
    for start in range(0, int(num_rounds), chunk_size):
        chunk = keys[start : start + chunk_size]
        pad = chunk_size - chunk.shape[0]
        if pad:  # one compiled shape: repeat the last key, drop the extra rounds
            chunk = jnp.concatenate([chunk, jnp.repeat(chunk[-1:], pad, axis=0)])
        r, bt, ok = _bootstrap_chunk(
            _draws(chunk, statics, host_prob), x0, spec, jnp.asarray(a, jnp.int32), jnp.asarray(b, jnp.int32), jnp.asarray(outcome, jnp.int32),
            comp, tables, features, setup=setup, solver=solver, max_iter=max_iter, tol=tol, **statics,
        )
        samples.append(r[: chunk_size - pad])
        betas.append(bt[: chunk_size - pad])
        oks.append(ok[: chunk_size - pad])
        if progress is not None:
            jax.block_until_ready(samples[-1])
            progress(min(start + chunk_size, int(num_rounds)), int(num_rounds))
    samples = jnp.concatenate(samples) if len(samples) > 1 else samples[0]
    beta_samples = jnp.concatenate(betas) if len(betas) > 1 else betas[0]
    converged = jnp.concatenate(oks) if len(oks) > 1 else oks[0]
    q = jnp.asarray([(1.0 - confidence) / 2.0, 0.5, (1.0 + confidence) / 2.0], jnp.float32)
    lower, median, upper = jnp.quantile(samples, q, axis=0)
    if k:
        b_lower, _, b_upper = jnp.quantile(beta_samples, q, axis=0)
        b_se = jnp.std(beta_samples, axis=0, ddof=1)
    else:
        b_lower = b_upper = b_se = jnp.zeros((0,), jnp.float32)
    return BootstrapResult(
        models=votes.models, confidence=confidence, fit=fit, samples=samples, median=median,
        lower=lower, upper=upper, std_error=jnp.std(samples, axis=0, ddof=1), converged=converged,
        beta_samples=beta_samples, beta_lower=b_lower, beta_upper=b_upper, beta_std_error=b_se, unit=unit,
    )


# --------------------------------------------------------------------------------------------------
# Sandwich


def sandwich_intervals(
    votes: Votes,
    result: BTResult,
    *,
    confidence: float = 0.95,
    l2: Any = _UNSET,
    anchor: Any = _UNSET,
    anchor_rating: Any = _UNSET,
) -> SandwichResult:
    r"""Robust (Huber–White sandwich) intervals at the fitted optimum, without refitting.

    With per-vote scores `s_v = w_v d [p_v log P(a) + (1 - p_v) log P(b)] / dx` (hard votes: `w_v d log
    P(y_v) / dx`) at the optimum `x = (theta, log tie, beta)` and `H` the Hessian of the penalised NLL,

        Cov(x) = H^+ B H^+,    B = sum_v s_v s_v^T,

    robust to misspecification (e.g. `ties="half"`, which is not a normalised likelihood). A vote weight
    is carried by one observation, so it enters `B` squared (an entry with `count` c is c independent
    votes). The likelihood is flat along shifting all thetas of a connected component, so `H` is singular;
    theta is centred per component (as in the fit), and the centred parameters' covariance uses the
    pseudo-inverse `H^+ = (H + P)^{-1} - P` with `P = sum_c 1_c 1_c^T / |c|` (the scores are orthogonal to
    those shifts, so `H^+ B H^+ = (H + P)^{-1} B (H + P)^{-1}`). With an anchor, ratings are
    `theta - theta_anchor` in its component, a linear map `T`, and `Cov = T Cov(theta) T^T`. Ratings'
    standard errors are `scale / ln(base) * sqrt(diag Cov)`; the interval is `rating -/+ z se` with
    `z = Phi^{-1}((1 + c) / 2)`. With style control beta is part of `x`, so the ratings' covariance
    accounts for it, and beta gets its own intervals.

    Args:
        votes: the votes the fit used.
        result: the `BTResult` of `fit_bradley_terry(votes, ...)` (its l2, anchor and style are used).
        confidence: central probability, in (0, 1).
        l2, anchor, anchor_rating: optional; if given they must equal the fit's.

    Returns:
        `SandwichResult(ratings, std_error, lower, upper, covariance, beta, beta_std_error, ...)`.

    Example:
        >>> fit = fit_bradley_terry(votes)                      # doctest: +SKIP
        >>> sandwich_intervals(votes, fit).std_error            # doctest: +SKIP
    """
    if not isinstance(votes, Votes):
        raise TypeError(f"votes must be a jaxrank.Votes, got {type(votes).__name__}")
    if not isinstance(result, BTResult):
        raise TypeError(f"result must be a BTResult from fit_bradley_terry, got {type(result).__name__}")
    if result.models != votes.models:
        raise ValueError("result was fitted on other models than votes (models differ)")
    confidence = _check_confidence(confidence)
    if result.ties == _GROUNDED:
        raise ValueError("sandwich_intervals does not support ties='grounded-rao-kupper' (its per-vote scores are not "
                         "functions of theta_a - theta_b alone); use bootstrap_ratings")
    given = {k: v for k, v in (("l2", l2), ("anchor", anchor), ("anchor_rating", anchor_rating)) if v is not _UNSET}
    if "anchor" in given and given["anchor"] is not None and given["anchor"] not in votes.models:
        raise ValueError(f"anchor {given['anchor']!r} is not one of the {votes.num_models} models")
    _fit_for(votes, result.ties, result, given, "sandwich_intervals")
    plan = plan_fit(votes, ties=result.ties, style=result.style, anchor=result.anchor)
    rows = plan.rows
    k = len(result.style)
    setup = _setup_from(result, votes, plan.component, k)
    u = rows.num_rows
    u_pad = bucket_size(u)
    a, b, outcome, count, features = pad_rows(u_pad, rows.a, rows.b, rows.outcome, rows.count, plan.features)
    a, b, outcome, count = (np.asarray(x) for x in (a, b, outcome, count))
    mm = votes.num_models
    tables = None if k else _tables(a[:u], b[:u], mm, num_pairs=bucket_size(len(np.unique(a[:u] * mm + b[:u]))),
                                    num_rows=u_pad)
    kt = _kind_table(rows)
    kinds = _kinds_spec(kt, num_rows=u_pad, with_votes=False)
    per_kind = np.concatenate([kt.count, np.zeros(kinds.rows.shape[0] - kt.count.size)])
    kind_rows, kind_amount = np.asarray(kinds.rows), np.asarray(kinds.amount)
    se, cov, beta_se = _sandwich_jit(
        _x_from_fit(result), jnp.asarray(count, jnp.float32), jnp.asarray(a, jnp.int32), jnp.asarray(b, jnp.int32),
        jnp.asarray(outcome, jnp.int32), jnp.asarray(plan.component, jnp.int32), tables, features,
        jnp.asarray(kind_rows, jnp.int32), jnp.asarray(kind_amount, jnp.float32), jnp.asarray(per_kind, jnp.float32),
        setup=setup)
    z = float(ndtri(0.5 + confidence / 2.0))
    ratings = result.ratings
    beta = jnp.asarray(result.beta, jnp.float32)
    return SandwichResult(
        models=votes.models, confidence=confidence, ratings=ratings, std_error=se,
        lower=ratings - z * se, upper=ratings + z * se, covariance=cov,
        beta=beta, beta_std_error=beta_se, beta_lower=beta - z * beta_se, beta_upper=beta + z * beta_se,
    )


def _meat(x, a, b, outcome, features, kind_rows, kind_amount, kind_count, setup: _Setup):
    """float32[D, D]: `B = sum_t n_t s_t s_t^T` over the distinct kinds of vote t (n_t votes each).

    Both rows of a vote share `a`, `b` and the covariates, so a vote's score is
    `(G (e_a - e_b), G_s, G x)` with `G = sum_slots amount * dlogP/ddelta` and `G_s` the same in the log tie
    parameter: B is assembled from per-cell sums (a graph Laplacian for the theta block), never a dense
    [votes, D] score matrix."""
    m, k = setup.num_models, setup.num_features
    gd, gs, *_ = _row_derivatives(x[:, None], a, b, outcome, setup, features)
    gd, gs = gd[:, 0], gs[:, 0]
    g = jnp.sum(kind_amount * gd[kind_rows], axis=1)  # [T]
    g_s = jnp.sum(kind_amount * gs[kind_rows], axis=1)
    ka, kb = a[kind_rows[:, 0]], b[kind_rows[:, 0]]
    n = kind_count
    cells = jnp.zeros((m * m,), jnp.float32).at[ka * m + kb].add(n * g * g).reshape(m, m, 1)
    cross = []
    if setup.fits_tie:
        t_s = _segment(n * g * g_s, ka, kb, m)[:, None]  # [M, 1]
        cross.append(t_s)
    if k:
        xk = features[kind_rows[:, 0]]  # [T, K]
        t_b = _segment((n * g * g)[:, None] * xk, ka, kb, m)  # [M, K]
        cross.append(t_b)
    top = jnp.concatenate([_laplacian(cells, m)[0]] + cross, axis=1)
    rest = []
    if setup.fits_tie:
        s_row = [t_s.T, jnp.sum(n * g_s * g_s)[None, None]]
        if k:
            s_row.append(((n * g * g_s) @ xk)[None, :])
        rest.append(jnp.concatenate(s_row, axis=1))
    if k:
        b_row = [t_b.T]
        if setup.fits_tie:
            b_row.append(((n * g * g_s) @ xk)[:, None])
        b_row.append(jnp.einsum("tk,t,tl->kl", xk, n * g * g, xk))
        rest.append(jnp.concatenate(b_row, axis=1))
    return jnp.concatenate([top] + rest, axis=0)


@functools.partial(jax.jit, static_argnames=("setup",))
def _sandwich_jit(x, weight, a, b, outcome, component, tables, features, kind_rows, kind_amount, kind_count, *,
                  setup: _Setup):
    m = setup.num_models
    dim = x.shape[0]
    if setup.num_features:
        _, hess = _gradient_and_hessian_rows(x[:, None], weight[:, None], a, b, outcome, features, setup)
    else:
        _, hess = _gradient_and_hessian(x[:, None], weight[:, None], a, b, outcome, tables, setup)
    hess = hess[0]
    meat = _meat(x, a, b, outcome, features, kind_rows, kind_amount, kind_count, setup)
    proj = _null_projector(component, setup.num_components, dim, m) if setup.l2 == 0 else jnp.zeros((dim, dim))
    bread = jnp.linalg.inv(hess + proj)
    cov_x = bread @ meat @ bread
    cov = cov_x[:m, :m]
    if setup.anchor_index >= 0:
        in_comp = (component == component[setup.anchor_index]).astype(jnp.float32)
        t = jnp.eye(m, dtype=jnp.float32) - in_comp[:, None] * jax.nn.one_hot(setup.anchor_index, m)[None, :]
        cov = t @ cov @ t.T
    kelo = setup.scale / math.log(setup.base)
    cov = (kelo * kelo) * cov
    se = jnp.sqrt(jnp.maximum(jnp.diag(cov), 0.0))
    beta_se = jnp.sqrt(jnp.maximum(jnp.diag(cov_x)[setup.beta_start:], 0.0))
    return se, cov, beta_se


# --------------------------------------------------------------------------------------------------
# Ranks


def rank_upper_bound(lower: Any, upper: Any) -> jax.Array:
    r"""Chatbot Arena's "rank (UB)": `1 + #{j : lower_j > upper_i}`.

    A model's rank upper bound counts the models that are better than it with confidence (their whole
    interval lies above its interval). Models whose intervals overlap share a rank.

    Args:
        lower, upper: float[M] interval bounds.

    Returns:
        int32[M] ranks, 1 = best possible.

    Example:
        >>> rank_upper_bound(jnp.array([1100., 1050., 900.]), jnp.array([1200., 1150., 1000.]))
        Array([1, 1, 3], dtype=int32)
    """
    lower = jnp.asarray(lower)
    upper = jnp.asarray(upper)
    if lower.ndim != 1 or upper.shape != lower.shape:
        raise ValueError(f"lower and upper must have the same shape [M], got {tuple(lower.shape)} and {tuple(upper.shape)}")
    if not (jnp.issubdtype(lower.dtype, jnp.floating) or jnp.issubdtype(lower.dtype, jnp.integer)):
        raise TypeError(f"lower must be numeric, got dtype {lower.dtype}")
    better = lower[None, :] > upper[:, None]  # [i, j]: j is surely better than i
    return (1 + jnp.sum(better, axis=1)).astype(jnp.int32)


def rank_by_rating(ratings: Any) -> jax.Array:
    """int32[M] the rank by rating: `1 + #{j : rating_j > rating_i}` (equal ratings share a rank).

    Example:
        >>> rank_by_rating(jnp.array([1010., 1100., 1010., 900.]))
        Array([2, 1, 2, 4], dtype=int32)
    """
    r = jnp.asarray(ratings)
    if r.ndim != 1:
        raise ValueError(f"ratings must have shape [M], got {tuple(r.shape)}")
    return (1 + jnp.sum(r[None, :] > r[:, None], axis=1)).astype(jnp.int32)


def tied_groups(ratings: Any, lower: Any, upper: Any) -> np.ndarray:
    r"""int32[M] "statistically tied" groups, 1 = the top group.

    Models are taken best first (by rating, then by index); the best model leads group 1, and every next
    model whose interval overlaps the leader's (`upper_i >= lower_leader`) joins its group; the first one
    that does not leads the next group. So each group's members are those the data cannot tell apart from
    the group's leader.

    Example:
        >>> tied_groups([1200., 1190., 1100., 1095.], [1180., 1170., 1080., 1070.], [1220., 1210., 1120., 1115.])
        array([1, 1, 2, 2], dtype=int32)
    """
    r = np.asarray(ratings, np.float64)
    lo = np.asarray(lower, np.float64)
    hi = np.asarray(upper, np.float64)
    if r.ndim != 1 or lo.shape != r.shape or hi.shape != r.shape:
        raise ValueError(f"ratings, lower and upper must have the same shape [M], got {r.shape}, {lo.shape}, {hi.shape}")
    order = np.lexsort((np.arange(r.size), -r))
    group = np.zeros(r.size, np.int32)
    current, leader_lower = 0, -np.inf
    for i in order:
        if current == 0 or hi[i] < leader_lower:
            current += 1
            leader_lower = lo[i]
        group[i] = current
    return group


# --------------------------------------------------------------------------------------------------
# Save / restore


def _without_empty(arrays: dict[str, Any], empty: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The arrays orbax can store (it refuses zero-size ones); the others' shapes and dtypes go to `empty`."""
    out = {}
    for name, x in arrays.items():
        x = jnp.asarray(x)
        if x.size == 0:
            empty[f"{prefix}.{name}"] = [list(x.shape), str(x.dtype)]
        else:
            out[name] = x
    return out


def _with_empty(arrays: dict[str, Any], empty: dict[str, Any], prefix: str) -> dict[str, jax.Array]:
    out = {k: jnp.asarray(v) for k, v in arrays.items()}
    for key, (shape, dtype) in empty.items():
        group, name = key.split(".", 1)
        if group == prefix:
            out[name] = jnp.zeros(tuple(shape), dtype)
    return out


def _bt_arrays(fit: BTResult) -> dict[str, jax.Array]:
    return {name: getattr(fit, name)
            for name in ("ratings", "theta", "tie_param", "log_likelihood", "num_iter", "converged", "beta")}


def save_leaderboard(
    path: str | os.PathLike,
    fit: BTResult,
    intervals: BootstrapResult | SandwichResult | None = None,
    *,
    metadata: dict[str, Any] | None = None,
    force: bool = False,
):
    """Save a fitted leaderboard (the `BTResult` and optionally its intervals) with orbax.

    Args:
        path: a new directory (see `jaxrank.checkpoint.save_state`).
        fit: the `BTResult`.
        intervals: a `BootstrapResult` or `SandwichResult` for the same models, or None.
        metadata: extra JSON-serialisable metadata (e.g. the votes file, the command line).
        force: replace an existing directory.

    Returns:
        The absolute path written.

    Example:
        >>> save_leaderboard("runs/arena", fit, boot)           # doctest: +SKIP
        >>> fit2, boot2 = load_leaderboard("runs/arena")        # doctest: +SKIP
    """
    from jaxrank.checkpoint import save_state

    if not isinstance(fit, BTResult):
        raise TypeError(f"fit must be a BTResult, got {type(fit).__name__}")
    empty: dict[str, Any] = {}
    state: dict[str, Any] = {"fit": _without_empty(_bt_arrays(fit), empty, "fit")}
    meta: dict[str, Any] = {
        "kind": "jaxrank.leaderboard",
        "models": list(fit.models),
        "ties": fit.ties,
        "scale": fit.scale,
        "base": fit.base,
        "init": fit.init,
        "l2": fit.l2,
        "anchor": fit.anchor,
        "anchor_rating": fit.anchor_rating,
        "style": list(fit.style),
        "style_l2": fit.style_l2,
        "intervals": None,
        "user": dict(metadata or {}),
    }
    if intervals is not None:
        if not isinstance(intervals, (BootstrapResult, SandwichResult)):
            raise TypeError(f"intervals must be a BootstrapResult or SandwichResult, got {type(intervals).__name__}")
        if intervals.models != fit.models:
            raise ValueError("intervals and fit have different models")
        if isinstance(intervals, BootstrapResult):
            names = ("samples", "median", "lower", "upper", "std_error", "converged", "beta_samples", "beta_lower",
                     "beta_upper", "beta_std_error")
            meta["intervals"] = {"method": "bootstrap", "confidence": intervals.confidence, "unit": intervals.unit}
        else:
            names = ("ratings", "std_error", "lower", "upper", "covariance", "beta", "beta_std_error", "beta_lower",
                     "beta_upper")
            meta["intervals"] = {"method": "sandwich", "confidence": intervals.confidence}
        state["intervals"] = _without_empty({n: getattr(intervals, n) for n in names}, empty, "intervals")
    meta["empty"] = empty
    return save_state(path, state, metadata=meta, force=force)


def load_leaderboard(path: str | os.PathLike) -> tuple[BTResult, BootstrapResult | SandwichResult | None]:
    """Restore what `save_leaderboard` wrote: `(fit, intervals)`, bit for bit (intervals may be None)."""
    from jaxrank.checkpoint import restore_state

    state, meta = restore_state(path)
    if meta.get("kind") != "jaxrank.leaderboard":
        raise ValueError(f"{path} is not a jaxrank leaderboard checkpoint (kind={meta.get('kind')!r})")
    models = tuple(meta["models"])
    empty = meta.get("empty", {})
    f = _with_empty(state["fit"], empty, "fit")
    fit = BTResult(models=models, ties=meta["ties"], scale=float(meta["scale"]), base=float(meta["base"]),
                   init=float(meta["init"]), l2=float(meta.get("l2", 0.0)), anchor=meta.get("anchor"),
                   anchor_rating=meta.get("anchor_rating"), style=tuple(meta.get("style", ())),
                   style_l2=float(meta.get("style_l2", 0.0)), **f)
    info = meta.get("intervals")
    if not info:
        return fit, None
    arr = _with_empty(state["intervals"], empty, "intervals")
    if info["method"] == "bootstrap":
        return fit, BootstrapResult(models=models, confidence=float(info["confidence"]), fit=fit,
                                    unit=info.get("unit", "votes"), **arr)
    return fit, SandwichResult(models=models, confidence=float(info["confidence"]), **arr)
