r"""How sure is the leaderboard? Bootstrap and sandwich intervals, Arena's rank (UB), save/restore.

- `bootstrap_ratings`: resample the votes (multinomially, as counts of the unique `(a, b, outcome)` rows),
  refit every round, report percentile intervals. All rounds of a chunk run in ONE jitted, vmapped call
  (resampling included), each round a damped Newton solve warm-started at the full-data optimum.
- `sandwich_intervals`: robust (Huber–White) intervals `H^+ B H^+` from the Hessian and the per-vote
  score contributions at the optimum, no refitting.
- `rank_upper_bound`: Chatbot Arena's "rank (UB)".
- `save_leaderboard` / `load_leaderboard`: a fitted leaderboard (fit + intervals) through orbax.
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

from jaxrank.ratings.battles import Battles, comparison_components
from jaxrank.ratings.bradley_terry import (
    TIE_MODELS,
    BTResult,
    fit_bradley_terry,
    outcome_log_probs,
    solve_bradley_terry,
)

__all__ = [
    "BootstrapPlan",
    "BootstrapResult",
    "SandwichResult",
    "bootstrap_plan",
    "bootstrap_ratings",
    "sandwich_intervals",
    "rank_upper_bound",
    "save_leaderboard",
    "load_leaderboard",
]

_FITS_TIE = ("rao-kupper", "davidson", "grounded-rao-kupper")
_GROUNDED = "grounded-rao-kupper"
# fit_bradley_terry options a bootstrap passes through to the full-data fit (and reuses per round).
_FIT_OPTIONS = ("l2", "scale", "base", "init", "anchor", "anchor_rating", "max_iter", "tol", "memory_size", "mesh")


# --------------------------------------------------------------------------------------------------
# Results


@struct.dataclass
class BootstrapResult:
    """Bootstrap of a Bradley–Terry leaderboard.

    Attributes:
        models: model names.
        confidence: central probability of `[lower, upper]`.
        fit: the full-data `BTResult` (its `ratings` are the point estimates).
        samples: float32[R, M] Elo-scale ratings of each bootstrap round (same centring/anchor as `fit`).
        median: float32[M] median over rounds.
        lower, upper: float32[M] the `(1 - confidence) / 2` and `(1 + confidence) / 2` percentiles.
        std_error: float32[M] standard deviation over rounds.
        converged: bool[R] whether each round's solver met its tolerance.
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

    @property
    def ratings(self) -> jax.Array:
        """float32[M] the full-data ratings."""
        return self.fit.ratings

    @property
    def num_rounds(self) -> int:
        return int(self.samples.shape[0])


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
    """

    models: tuple[str, ...] = struct.field(pytree_node=False)
    confidence: float = struct.field(pytree_node=False)
    ratings: jax.Array
    std_error: jax.Array
    lower: jax.Array
    upper: jax.Array
    covariance: jax.Array


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


def _x_from_fit(fit: BTResult) -> jax.Array:
    """The solver's parameter vector at the fit: theta centred per component, then log tie parameter."""
    x = fit.theta.astype(jnp.float32)
    if fit.ties in _FITS_TIE:
        x = jnp.concatenate([x, jnp.log(fit.tie_param.astype(jnp.float32))[None]])
    return x


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


def _row_derivatives(x: jax.Array, a, b, outcome, setup: _Setup):
    """Per-row derivatives of `log P(outcome | delta, s)` in `delta = theta_a - theta_b` and
    `s = log(tie_param)`, for R parameter vectors at once.

    Args:
        x: float32[D, R] parameters (theta rows, then `s` for the fitted tie models), rounds last.

    Returns:
        `(g_delta, g_s, h_dd, h_ds, h_ss)`, each float32[U, R].
    """
    m = setup.num_models
    fits_tie = setup.ties in _FITS_TIE
    s_row = x[m] if fits_tie else jnp.zeros(x.shape[1:], x.dtype)
    delta = x[a] - x[b]

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


def _tables(a: np.ndarray, b: np.ndarray, num_models: int) -> _Tables:
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    u = a.shape[0]
    cell = a * num_models + b
    pairs, pair_of_row = np.unique(cell, return_inverse=True)
    order = np.argsort(pair_of_row, kind="stable")
    counts = np.bincount(pair_of_row, minlength=pairs.size)
    k = int(counts.max()) if counts.size else 1
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(u) - np.repeat(starts, counts)
    pair_rows = np.full((pairs.size, k), u, np.int32)
    pair_rows[pair_of_row[order], slot] = order
    cell_pair = np.full((num_models * num_models,), pairs.size, np.int32)
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


def _gradient_and_hessian(x, weight, a, b, outcome, tables: _Tables, setup: _Setup):
    """Gradient float32[D, R] and Hessian float32[R, D, D] of the penalised NLL for R rounds at once
    (`x` [D, R], `weight` [U, R], rounds last).

    With per-row `d = -w * dlogP/ddelta` and `e = -w * d2logP/ddelta2`, summed per ordered pair into
    `G[i, j]` and `E[i, j]`: `grad_i = sum_j G[i, j] - G[j, i]` and, with `S = E + E^T`, the theta block
    of the Hessian is the weighted graph Laplacian `diag(S 1) - S`.
    """
    m = setup.num_models
    dim = x.shape[0]
    gd, gs, hdd, hds, hss = _row_derivatives(x, a, b, outcome, setup)
    w = weight
    big_g = _cell_sums(-w * gd, tables, m)
    g = big_g.sum(axis=1) - big_g.sum(axis=0)  # [M, R]
    e = _cell_sums(-w * hdd, tables, m)
    s = e + jnp.swapaxes(e, 0, 1)
    lap = -s + jnp.eye(m, dtype=s.dtype)[:, :, None] * s.sum(axis=1)[:, None, :]  # [M, M, R]
    hess = jnp.moveaxis(lap, -1, 0)  # [R, M, M]
    if setup.l2 > 0:
        g = g + setup.l2 * x[:m]
        hess = hess + setup.l2 * jnp.eye(m, dtype=hess.dtype)
    if setup.ties in _FITS_TIE:
        cs = _cell_sums(-w * hds, tables, m)
        cross = (cs.sum(axis=1) - cs.sum(axis=0)).T  # [R, M]
        hss_total = -jnp.sum(w * hss, axis=0)  # [R]
        g = jnp.concatenate([g, -jnp.sum(w * gs, axis=0)[None, :]], axis=0)
        top = jnp.concatenate([hess, cross[:, :, None]], axis=2)
        bottom = jnp.concatenate([cross, hss_total[:, None]], axis=1)[:, None, :]
        hess = jnp.concatenate([top, bottom], axis=1)
    return g, hess


def _nll(x, weight, a, b, outcome, setup: _Setup):
    """float32[R]: penalised NLL of each round, `x` [D, R], `weight` [U, R]."""
    m = setup.num_models
    tie = jnp.exp(x[m])[None, :] if setup.ties in _FITS_TIE else None
    lp = outcome_log_probs(x[a] - x[b], outcome[:, None], ties=setup.ties, tie_param=tie)
    nll = -jnp.sum(weight * lp, axis=0)
    if setup.l2 > 0:
        nll = nll + 0.5 * setup.l2 * jnp.sum(x[:m] * x[:m], axis=0)
    return nll


# --------------------------------------------------------------------------------------------------
# Bootstrap


class _NewtonState(NamedTuple):
    x: jax.Array  # [D, R]
    value: jax.Array  # [R]
    step_size: jax.Array  # [R] max |accepted step|
    num_iter: jax.Array
    done: jax.Array  # [R]


def _newton(x0, weight, a, b, outcome, component, tables: _Tables, setup: _Setup, *, max_iter: int, tol: float):
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
        return _nll(x, weight, a, b, outcome, setup) / total

    def centre(x):
        if setup.l2 > 0:
            return x
        return x.at[:m].set(jax.vmap(lambda t: _centre(t, component, setup.num_components), 1, 1)(x[:m]))

    def body(state: _NewtonState) -> _NewtonState:
        active = ~state.done
        g, h = _gradient_and_hessian(state.x, weight, a, b, outcome, tables, setup)
        g = g / total
        h = h / total[:, None, None]
        ridge = 1e-6 * (jnp.trace(h, axis1=1, axis2=2) / dim + 1e-6)
        system = h + proj + ridge[:, None, None] * eye
        step = jnp.linalg.solve(system, g.T[..., None])[..., 0].T  # [D, R]
        step = jnp.where(jnp.isfinite(step), step, 0.0)

        def accept(v):
            return v <= state.value + 1e-7 * jnp.abs(state.value)

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
        return _NewtonState(x, jnp.where(take, v, state.value), jnp.where(active, moved, state.step_size),
                            state.num_iter + 1, done)

    x_init = jnp.broadcast_to(x0[:, None], (dim, num_rounds))
    state = _NewtonState(x_init, value(x_init), jnp.full((num_rounds,), jnp.inf, jnp.float32), jnp.int32(0),
                         jnp.zeros((num_rounds,), bool))
    state = jax.lax.while_loop(lambda s: jnp.any(~s.done) & (s.num_iter < max_iter), body, state)
    return state.x, state.step_size < tol


def _resample(key, rows, row_ratio, num_rows: int, num_votes: int, sampler: str):
    """float32[U] resampled row weights: counts of N votes drawn with replacement, times the mean
    weight per vote of each row (1 for unweighted votes)."""
    if sampler == "votes":
        # `rows[v]` is the unique row of vote v: drawing N votes uniformly is the multinomial over rows.
        draw = jax.random.randint(key, (num_votes,), 0, num_votes)
        counts = jnp.zeros((num_rows,), jnp.float32).at[rows[draw]].add(1.0)
    else:
        counts = jax.random.multinomial(key, jnp.float32(num_votes), rows, shape=(num_rows,), dtype=jnp.float32)
    return counts * row_ratio


@functools.partial(jax.jit, static_argnames=("setup", "sampler", "num_rows", "num_votes", "solver", "max_iter", "tol"))
def _bootstrap_chunk(keys, x0, rows, row_ratio, a, b, outcome, component, tables, *, setup, sampler, num_rows, num_votes,
                     solver, max_iter, tol):
    weights = jax.vmap(lambda k: _resample(k, rows, row_ratio, num_rows, num_votes, sampler))(keys)
    m = setup.num_models
    if solver == "newton":
        x, ok = _newton(x0, weights.T, a, b, outcome, component, tables, setup, max_iter=max_iter, tol=tol)
        theta = x[:m].T
    else:
        sol = jax.vmap(
            lambda w: solve_bradley_terry(
                w, a, b, outcome, component, num_models=m,
                ties=setup.ties, l2=setup.l2, max_iter=max_iter, tol=tol, memory_size=20,
            )
        )(weights)
        theta, ok = sol.theta, sol.converged
    return jax.vmap(lambda t: _to_ratings(t, component, setup))(theta), ok


def _setup_from(fit: BTResult, battles: Battles, component: np.ndarray, l2: float, anchor: str | None,
                anchor_rating: float | None) -> _Setup:
    return _Setup(
        num_models=battles.num_models,
        num_components=int(component.max()) + 1,
        ties=fit.ties,
        l2=float(l2),
        scale=fit.scale,
        base=fit.base,
        init=fit.init,
        anchor_index=-1 if anchor is None else battles.models.index(anchor),
        anchor_rating=float(fit.init if anchor_rating is None else anchor_rating),
    )


#: Work units (resampled rows + 10 x Newton dimension^3, per round) of one compiled bootstrap call.
CHUNK_WORK = 1 << 30


class BootstrapPlan(NamedTuple):
    """Memory plan of `bootstrap_ratings` (`bootstrap_plan`).

    Attributes:
        chunk_size: rounds per compiled call (bounded working memory, `jaxrank.resources.chunk_bytes()`, and
            about a second of work, `CHUNK_WORK`).
        chunk_bytes: estimated working memory of one chunk.
        result_bytes: estimated memory of the result (samples [R, M] with their sort for the quantiles,
            the R keys, the convergence flags).
        sampler: the resampling scheme `"auto"` resolves to.
    """

    chunk_size: int
    chunk_bytes: int
    result_bytes: int
    sampler: str


def _vote_rows(battles: Battles) -> tuple[np.ndarray, np.ndarray, int]:
    """(votes per unique row float64[U], the rows' total weight float64[U], number of votes N)."""
    count = np.asarray(battles.count, np.float64)
    u = count.shape[0]
    if battles.has_vote_order:
        per_row = np.bincount(np.asarray(battles.vote_row), minlength=u).astype(np.float64)
    else:
        per_row = np.rint(count)
        if np.any(np.abs(per_row - count) > 1e-3 * np.maximum(count, 1.0)):
            raise ValueError("battles without a vote order must hold integer vote counts to be resampled")
    n_votes = int(per_row.sum())
    if n_votes < 1:
        raise ValueError("battles has no votes to resample")
    return per_row, count, n_votes


def bootstrap_plan(battles: Battles, *, num_rounds: int, ties: str = "half", sampler: str = "auto",
                   chunk_size: int | None = None) -> BootstrapPlan:
    """The memory plan of `bootstrap_ratings(battles, num_rounds=..., ties=...)`, checked before any work.

    The rounds run in chunks whose working memory is bounded (`jaxrank.resources.chunk_bytes()`, 256 MiB or a
    quarter of the budget, of resampling and solver state), whatever `num_rounds`; what grows with it is the result, `samples`
    float32[R, M] (kept, concatenated and sorted once for the quantiles: about 12 M bytes per round) and
    the R keys (8 bytes each).

    Raises:
        jaxrank.resources.ResourceError: (a ValueError) the result does not fit in memory; the message names
            `num_rounds`, the estimate and the most rounds that fit.
    """
    from jaxrank.resources import check_memory, chunk_bytes

    if isinstance(num_rounds, bool) or not isinstance(num_rounds, (int, np.integer)) or num_rounds < 2:
        raise ValueError(f"num_rounds must be an int >= 2, got {num_rounds!r}")
    per_row, _, n_votes = _vote_rows(battles)
    m, u = battles.num_models, per_row.shape[0]
    if sampler == "auto":
        sampler = "votes" if n_votes <= 8 * u else "multinomial"
    per_round = n_votes if sampler == "votes" else u
    dim = m + (1 if ties in _FITS_TIE else 0)
    per_round_bytes = 4 * (per_round + 8 * u + 6 * dim * dim)
    # Also at most about a second of work per compiled call (resampling ~ per_round, Newton ~ 10 dim^3), so that
    # progress moves and Ctrl-C stops the run soon: ~1.3 s for 490 rounds of LLMFAO (59 models, 8,931 votes)
    # on a loaded 2-core CPU.
    by_work = max(1, CHUNK_WORK // (per_round + 10 * dim**3))
    cap = int(max(1, min(num_rounds, chunk_bytes() // per_round_bytes, by_work)))
    auto = -(-int(num_rounds) // -(-int(num_rounds) // cap))  # even chunks, little padding
    size = int(min(auto if chunk_size is None else min(chunk_size, cap), num_rounds))
    chunk_bytes = size * per_round_bytes
    per_round_result = 3 * 4 * m + 8 + 1
    result_bytes = int(num_rounds) * per_round_result
    check_memory(result_bytes + chunk_bytes, what=f"the bootstrap samples [R, M] (M = {m} models)",
                 option="num_rounds", value=int(num_rounds), per_unit=per_round_result, fixed=chunk_bytes)
    return BootstrapPlan(chunk_size=size, chunk_bytes=int(chunk_bytes), result_bytes=result_bytes, sampler=sampler)


def bootstrap_ratings(
    key: jax.Array,
    battles: Battles,
    *,
    num_rounds: int = 1000,
    ties: str = "half",
    confidence: float = 0.95,
    chunk_size: int | None = None,
    progress: Callable[[int, int], Any] | None = None,
    sampler: str = "auto",
    solver: str = "auto",
    fit: BTResult | None = None,
    **fit_kwargs: Any,
) -> BootstrapResult:
    r"""Bootstrap confidence intervals for a Bradley–Terry leaderboard, all rounds vmapped.

    Round r draws N = `battles.num_votes` votes with replacement from the N votes, i.e. the unique-row
    counts `n* ~ Multinomial(N, n / N)` (`n_u` votes in row u), gives row u the weight
    `n*_u * count_u / n_u` (the mean weight per vote: exactly `n*_u` for unweighted votes), and refits
    the same model (`ties`, `l2`, scale, anchor) from the full-data optimum. The interval is the
    percentile interval `[q_{(1-c)/2}, q_{(1+c)/2}]` of the round ratings, as Chatbot Arena reports.

    Rounds run `chunk_size` at a time; each chunk is ONE jitted call that resamples and fits all its
    rounds with `vmap`. Round r's key is `jax.random.split(key, num_rounds)[r]`, so results do not
    depend on `chunk_size`. Solvers: `"newton"` (damped Newton on the exact Hessian, warm-started at the
    full-data fit; converges in a few steps; O(M^3) per step, the default up to 512 models) or
    `"lbfgs"` (`solve_bradley_terry` vmapped, cold start; for more models).

    Args:
        key: PRNG key.
        battles: encoded votes (`load_battles` or `synthetic_battles`).
        num_rounds: R >= 2.
        ties: tie model, as for `fit_bradley_terry`.
        confidence: central probability of the intervals, in (0, 1).
        chunk_size: rounds per compiled call (default and upper bound: about 256 MiB of resampling and
            solver state, <= R; see `bootstrap_plan`, which also refuses an R whose result cannot fit).
        progress: optional callable `progress(done, total)` called after each chunk (and once with 0).
        sampler: `"votes"` (draw N vote indices: O(R N)), `"multinomial"` (a binomial chain over rows,
            `jax.random.multinomial`: O(R U)), or `"auto"` (votes when N <= 8 U).
        solver: `"newton"`, `"lbfgs"` or `"auto"` (always `"lbfgs"` for `"grounded-rao-kupper"`).
        fit: the full-data fit, if already computed with the same options (skips refitting it).
        **fit_kwargs: `l2, scale, base, init, anchor, anchor_rating, max_iter, tol, memory_size, mesh`
            for the full-data `fit_bradley_terry` (the rounds reuse them; `max_iter`/`tol` also bound
            the rounds' solver).

    Returns:
        `BootstrapResult(fit, samples [R, M], median, lower, upper, std_error [M], converged [R])`.

    Example:
        >>> boot = bootstrap_ratings(jax.random.key(0), battles, num_rounds=1000)   # doctest: +SKIP
        >>> boot.lower, boot.upper                                                    # doctest: +SKIP
    """
    if not isinstance(battles, Battles):
        raise TypeError(f"battles must be a jaxrank.ratings.Battles (see load_battles), got {type(battles).__name__}")
    if ties not in TIE_MODELS:
        raise ValueError(f"ties must be one of {', '.join(repr(t) for t in TIE_MODELS)}; got {ties!r}")
    if isinstance(num_rounds, bool) or not isinstance(num_rounds, (int, np.integer)) or num_rounds < 2:
        raise ValueError(f"num_rounds must be an int >= 2, got {num_rounds!r}")
    confidence = _check_confidence(confidence)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1):
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    if sampler not in ("auto", "votes", "multinomial"):
        raise ValueError(f"sampler must be one of 'auto', 'votes', 'multinomial'; got {sampler!r}")
    if solver not in ("auto", "newton", "lbfgs"):
        raise ValueError(f"solver must be one of 'auto', 'newton', 'lbfgs'; got {solver!r}")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be a callable progress(done, total), got {type(progress).__name__}")
    unknown = sorted(set(fit_kwargs) - set(_FIT_OPTIONS))
    if unknown:
        raise TypeError(f"bootstrap_ratings got unexpected keyword argument(s) {', '.join(unknown)}; "
                        f"fit options are {', '.join(_FIT_OPTIONS)}")

    plan = bootstrap_plan(battles, num_rounds=num_rounds, ties=ties, sampler=sampler, chunk_size=chunk_size)
    if fit is None:
        fit = fit_bradley_terry(battles, ties=ties, **fit_kwargs)
    elif not isinstance(fit, BTResult) or fit.models != battles.models or fit.ties != ties:
        raise ValueError("fit must be the BTResult of fit_bradley_terry on these battles with the same ties")

    m = battles.num_models
    per_row, count, n_votes = _vote_rows(battles)
    u = count.shape[0]
    row_ratio = np.where(per_row > 0, count / np.maximum(per_row, 1.0), 0.0)

    graph_w = np.where(np.asarray(battles.outcome) >= 2, 0.0, count) if ties == "drop" else count
    if ties == _GROUNDED:  # absolute theta: one component, never centred (as in the fit)
        component = np.zeros((m,), np.int64)
    else:
        component = comparison_components(battles, weights=graph_w)
    l2 = float(fit_kwargs.get("l2", 0.0))
    setup = _setup_from(fit, battles, component, l2, fit_kwargs.get("anchor"), fit_kwargs.get("anchor_rating"))

    sampler = plan.sampler
    if ties == _GROUNDED and solver == "newton":
        raise ValueError("solver='newton' does not support ties='grounded-rao-kupper' (its Hessian is not a graph "
                         "Laplacian); use solver='lbfgs' or 'auto'")
    if solver == "auto":
        solver = "newton" if m <= 512 and ties != _GROUNDED else "lbfgs"
    if sampler == "votes":
        rows = jnp.asarray(np.repeat(np.arange(u, dtype=np.int32), per_row.astype(np.int64)))
    else:
        rows = jnp.asarray(per_row / n_votes, jnp.float32)
    chunk_size = plan.chunk_size

    max_iter = int(fit_kwargs.get("max_iter", 1000))
    if solver == "newton":
        # From the full-data optimum Newton needs 3-5 steps; a step below 1e-5 (0.002 Elo) is converged.
        max_iter = min(max_iter, 10)
        tol = 1e-5
    else:
        tol = float(fit_kwargs.get("tol", 1e-7))
    x0 = _x_from_fit(fit)
    comp = jnp.asarray(component, jnp.int32)
    tables = _tables(np.asarray(battles.a), np.asarray(battles.b), m)
    keys = jax.random.split(key, int(num_rounds))
    samples, oks = [], []
    if progress is not None:
        progress(0, int(num_rounds))
    for start in range(0, int(num_rounds), chunk_size):
        chunk = keys[start : start + chunk_size]
        pad = chunk_size - chunk.shape[0]
        if pad:  # one compiled shape: repeat the last key, drop the extra rounds
            chunk = jnp.concatenate([chunk, jnp.repeat(chunk[-1:], pad, axis=0)])
        r, ok = _bootstrap_chunk(
            chunk, x0, rows, jnp.asarray(row_ratio, jnp.float32), battles.a, battles.b, battles.outcome, comp, tables,
            setup=setup, sampler=sampler, num_rows=u, num_votes=n_votes, solver=solver, max_iter=max_iter, tol=tol,
        )
        samples.append(r[: chunk_size - pad])
        oks.append(ok[: chunk_size - pad])
        if progress is not None:
            jax.block_until_ready(samples[-1])
            progress(min(start + chunk_size, int(num_rounds)), int(num_rounds))
    samples = jnp.concatenate(samples) if len(samples) > 1 else samples[0]
    converged = jnp.concatenate(oks) if len(oks) > 1 else oks[0]
    q = jnp.asarray([(1.0 - confidence) / 2.0, 0.5, (1.0 + confidence) / 2.0], jnp.float32)
    lower, median, upper = jnp.quantile(samples, q, axis=0)
    return BootstrapResult(
        models=battles.models, confidence=confidence, fit=fit, samples=samples, median=median,
        lower=lower, upper=upper, std_error=jnp.std(samples, axis=0, ddof=1), converged=converged,
    )


# --------------------------------------------------------------------------------------------------
# Sandwich


def sandwich_intervals(
    battles: Battles,
    result: BTResult,
    *,
    confidence: float = 0.95,
    l2: float = 0.0,
    anchor: str | None = None,
    anchor_rating: float | None = None,
) -> SandwichResult:
    r"""Robust (Huber–White sandwich) intervals at the fitted optimum, without refitting.

    With per-vote scores `s_v = d log P(y_v | x) / dx` at the optimum `x = (theta, log tie)` (votes of a
    unique row share their score) and `H` the Hessian of the penalised NLL,

        Cov(x) = H^+ B H^+,    B = sum_u count_u s_u s_u^T,

    robust to misspecification (e.g. `ties="half"`, which is not a normalised likelihood). The
    likelihood is flat along shifting all thetas of a connected component, so `H` is singular; theta is
    centred per component (as in the fit), and the centred parameters' covariance uses the pseudo-inverse
    `H^+ = (H + P)^{-1} - P` with `P = sum_c 1_c 1_c^T / |c|` (the scores are orthogonal to those shifts,
    so `H^+ B H^+ = (H + P)^{-1} B (H + P)^{-1}`). With an anchor, ratings are `theta - theta_anchor`
    in its component, a linear map `T`, and `Cov = T Cov(theta) T^T`. Ratings' standard errors are
    `scale / ln(base) * sqrt(diag Cov)`; the interval is `rating -/+ z se` with `z = Phi^{-1}((1 + c) / 2)`.
    Vote weights count as frequency weights (a weight-w vote is w identical votes).

    Args:
        battles: the votes the fit used.
        result: the `BTResult` of `fit_bradley_terry(battles, ...)`.
        confidence: central probability, in (0, 1).
        l2, anchor, anchor_rating: the options the fit used (they change the Hessian / the centring).

    Returns:
        `SandwichResult(ratings, std_error, lower, upper, covariance)`.

    Example:
        >>> fit = fit_bradley_terry(battles)                      # doctest: +SKIP
        >>> sandwich_intervals(battles, fit).std_error            # doctest: +SKIP
    """
    if not isinstance(battles, Battles):
        raise TypeError(f"battles must be a jaxrank.ratings.Battles, got {type(battles).__name__}")
    if not isinstance(result, BTResult):
        raise TypeError(f"result must be a BTResult from fit_bradley_terry, got {type(result).__name__}")
    if result.models != battles.models:
        raise ValueError("result was fitted on other models than battles (models differ)")
    confidence = _check_confidence(confidence)
    if result.ties == _GROUNDED:
        raise ValueError("sandwich_intervals does not support ties='grounded-rao-kupper' (its per-vote scores are not "
                         "functions of theta_a - theta_b alone); use bootstrap_ratings")
    if anchor is not None and anchor not in battles.models:
        raise ValueError(f"anchor {anchor!r} is not one of the {battles.num_models} models")
    count = np.asarray(battles.count, np.float64)
    graph_w = np.where(np.asarray(battles.outcome) >= 2, 0.0, count) if result.ties == "drop" else count
    component = comparison_components(battles, weights=graph_w)
    setup = _setup_from(result, battles, component, l2, anchor, anchor_rating)
    se, cov = _sandwich_jit(_x_from_fit(result), battles.count, battles.a, battles.b, battles.outcome,
                            jnp.asarray(component, jnp.int32), _tables(battles.a, battles.b, battles.num_models),
                            setup=setup)
    z = float(ndtri(0.5 + confidence / 2.0))
    ratings = result.ratings
    return SandwichResult(
        models=battles.models, confidence=confidence, ratings=ratings, std_error=se,
        lower=ratings - z * se, upper=ratings + z * se, covariance=cov,
    )


@functools.partial(jax.jit, static_argnames=("setup",))
def _sandwich_jit(x, weight, a, b, outcome, component, tables, *, setup: _Setup):
    m = setup.num_models
    dim = x.shape[0]
    _, hess = _gradient_and_hessian(x[:, None], weight[:, None], a, b, outcome, tables, setup)
    hess = hess[0]
    gd, gs, *_ = _row_derivatives(x[:, None], a, b, outcome, setup)
    gd, gs = gd[:, 0], gs[:, 0]
    # Per-row score vectors (dense [U, D]; U rows of a leaderboard, not votes).
    scores = jnp.zeros((a.shape[0], dim), jnp.float32)
    rows = jnp.arange(a.shape[0])
    scores = scores.at[rows, a].add(gd).at[rows, b].add(-gd)
    if setup.ties in _FITS_TIE:
        scores = scores.at[:, m].set(gs)
    meat = (scores * weight[:, None]).T @ scores
    proj = _null_projector(component, setup.num_components, dim, m) if setup.l2 == 0 else jnp.zeros((dim, dim))
    bread = jnp.linalg.inv(hess + proj)
    cov_x = bread @ meat @ bread
    cov = cov_x[:m, :m]
    if setup.anchor_index >= 0:
        in_comp = (component == component[setup.anchor_index]).astype(jnp.float32)
        t = jnp.eye(m, dtype=jnp.float32) - in_comp[:, None] * jax.nn.one_hot(setup.anchor_index, m)[None, :]
        cov = t @ cov @ t.T
    k = setup.scale / math.log(setup.base)
    cov = (k * k) * cov
    se = jnp.sqrt(jnp.maximum(jnp.diag(cov), 0.0))
    return se, cov


# --------------------------------------------------------------------------------------------------
# Rank (UB)


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


# --------------------------------------------------------------------------------------------------
# Save / restore


def _bt_arrays(fit: BTResult) -> dict[str, jax.Array]:
    return {name: getattr(fit, name) for name in ("ratings", "theta", "tie_param", "log_likelihood", "num_iter", "converged")}


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
    state: dict[str, Any] = {"fit": _bt_arrays(fit)}
    meta: dict[str, Any] = {
        "kind": "jaxrank.leaderboard",
        "models": list(fit.models),
        "ties": fit.ties,
        "scale": fit.scale,
        "base": fit.base,
        "init": fit.init,
        "intervals": None,
        "user": dict(metadata or {}),
    }
    if intervals is not None:
        if not isinstance(intervals, (BootstrapResult, SandwichResult)):
            raise TypeError(f"intervals must be a BootstrapResult or SandwichResult, got {type(intervals).__name__}")
        if intervals.models != fit.models:
            raise ValueError("intervals and fit have different models")
        if isinstance(intervals, BootstrapResult):
            arrays = {n: getattr(intervals, n) for n in ("samples", "median", "lower", "upper", "std_error", "converged")}
            meta["intervals"] = {"method": "bootstrap", "confidence": intervals.confidence}
        else:
            arrays = {n: getattr(intervals, n) for n in ("ratings", "std_error", "lower", "upper", "covariance")}
            meta["intervals"] = {"method": "sandwich", "confidence": intervals.confidence}
        state["intervals"] = arrays
    return save_state(path, state, metadata=meta, force=force)


def load_leaderboard(path: str | os.PathLike) -> tuple[BTResult, BootstrapResult | SandwichResult | None]:
    """Restore what `save_leaderboard` wrote: `(fit, intervals)`, bit for bit (intervals may be None)."""
    from jaxrank.checkpoint import restore_state

    state, meta = restore_state(path)
    if meta.get("kind") != "jaxrank.leaderboard":
        raise ValueError(f"{path} is not a jaxrank leaderboard checkpoint (kind={meta.get('kind')!r})")
    models = tuple(meta["models"])
    f = {k: jnp.asarray(v) for k, v in state["fit"].items()}
    fit = BTResult(models=models, ties=meta["ties"], scale=float(meta["scale"]), base=float(meta["base"]),
                   init=float(meta["init"]), **f)
    info = meta.get("intervals")
    if not info:
        return fit, None
    arr = {k: jnp.asarray(v) for k, v in state["intervals"].items()}
    if info["method"] == "bootstrap":
        return fit, BootstrapResult(models=models, confidence=float(info["confidence"]), fit=fit, **arr)
    return fit, SandwichResult(models=models, confidence=float(info["confidence"]), **arr)
