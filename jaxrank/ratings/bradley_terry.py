r"""Bradley–Terry maximum likelihood with ties, fitted by optax L-BFGS under jit, differentiable in the
vote weights by implicit differentiation at the optimum.

Model: each model `i` has a log-strength `theta_i`; for a vote between `a` and `b` let
`delta = theta_a - theta_b`. The tie models (`ties=`):

- `"drop"`: plain Bradley–Terry, `P(a) = sigmoid(delta)`, `P(b) = sigmoid(-delta)`; ties are left out
  of the likelihood (they contribute `log 1 = 0`).
- `"half"`: a tie counts as half a win each way (Chatbot Arena's choice):
  `log L_tie = (log sigmoid(delta) + log sigmoid(-delta)) / 2`. Not a normalised three-outcome model.
- `"rao-kupper"` (Rao & Kupper 1967), threshold `alpha > 0` (RK's `theta = exp(alpha) > 1`):
  `P(a) = sigmoid(delta - alpha)`, `P(b) = sigmoid(-delta - alpha)`,
  `P(tie) = 1 - P(a) - P(b) = sinh(alpha) / (cosh(delta) + cosh(alpha))`.
- `"davidson"` (Davidson 1970), tie strength `nu > 0`:
  `P(a) = e^{delta/2} / Z`, `P(b) = e^{-delta/2} / Z`, `P(tie) = nu / Z`, `Z = e^{delta/2} + e^{-delta/2} + nu`.

- `"grounded-rao-kupper"` (P2L's "grounded RK", Frick et al. 2025, "Prompt-to-Leaderboard",
  arXiv:2502.14855, loss `bag` of github.com/lmarena/p2l `p2l/model.py`): Rao–Kupper plus a fixed
  competitor `g` with `theta_g = 0` that wins when both answers are bad. With `pi = exp(theta)` and
  `t = exp(alpha) > 1`:
  `P(a) = pi_a / (pi_a + t pi_b + 1)`, `P(b) = pi_b / (pi_b + t pi_a + 1)`,
  `P(tie (bothbad)) = 1 / (1 + pi_a + pi_b)`, `P(tie) = 1 - P(a) - P(b) - P(bothbad)`
  `= (t - 1) pi_a pi_b ((1 + t)(pi_a + pi_b) + 2) / ((pi_a + t pi_b + 1)(pi_b + t pi_a + 1)(1 + pi_a + pi_b))`
  (positive for every alpha > 0). Four outcomes; not shift-invariant (the competitor at 0 pins the
  level), so it needs `theta_b` besides `delta` and its theta is never centred.

`tie (bothbad)` votes are ties for every other model above. Ratings on the Elo scale are
`init + scale / ln(base) * theta`.

Soft outcomes: a decisive vote with P(a wins) = p contributes `p log P(a) + (1 - p) log P(b)` under every
model (the likelihood with a fractional target; it puts no mass on a tie). Style control adds covariates
to the logit: `delta = theta_a - theta_b + sum_k beta_k x_k` (`style_design`), with an L2 penalty on beta.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxrank._validation import check_elo_scale
from jaxrank.votes.table import (
    A_WINS,
    B_WINS,
    TIE,
    TIE_BOTHBAD,
    VoteRows,
    Votes,
    bucket_size,
    comparison_components,
    warn_if_disconnected,
)

__all__ = [
    "TIE_MODELS",
    "BTResult",
    "BTSolution",
    "outcome_log_probs",
    "outcome_probabilities",
    "bt_negative_log_likelihood",
    "solve_bradley_terry",
    "style_design",
    "check_style",
    "FitPlan",
    "plan_fit",
    "pad_rows",
    "fit_bradley_terry",
    "fit_bradley_terry_groups",
    "group_row_weights",
]

GROUNDED = "grounded-rao-kupper"
TIE_MODELS = ("half", "rao-kupper", "davidson", "drop", GROUNDED)
_FITS_TIE = ("rao-kupper", "davidson", GROUNDED)
_DEFAULT_TIE_INIT = {"rao-kupper": 0.5, "davidson": 1.0, GROUNDED: 0.5}
_LOG2 = math.log(2.0)


def _check_ties(ties: Any) -> None:
    if ties not in TIE_MODELS:
        raise ValueError(f"ties must be one of {', '.join(repr(t) for t in TIE_MODELS)}; got {ties!r}")


# --------------------------------------------------------------------------------------------------
# Likelihoods: the one place they live.


def _logcosh(x: jax.Array) -> jax.Array:
    ax = jnp.abs(x)
    return ax + jnp.log1p(jnp.exp(-2.0 * ax)) - _LOG2


def _logsinh(x: jax.Array) -> jax.Array:
    # log sinh(x) for x > 0, stable for small and large x.
    return x + jnp.log(-jnp.expm1(-2.0 * x)) - _LOG2


def _tie_value(tie_param: Any, ties: str, dtype) -> jax.Array:
    if ties in _FITS_TIE:
        if tie_param is None:
            raise ValueError(f"tie_param is required for ties={ties!r} (RK threshold alpha > 0, Davidson nu > 0)")
        tp = jnp.asarray(tie_param, dtype=dtype)
        if not isinstance(tp, jax.core.Tracer) and tp.ndim == 0 and not bool(tp > 0):
            raise ValueError(f"tie_param must be > 0 for ties={ties!r}, got {float(tp)!r}")
        return tp
    return jnp.asarray(0.0, dtype=dtype)


def _log_expm1(x: jax.Array) -> jax.Array:
    # log(e^x - 1) for x > 0, stable for small and large x.
    return x + jnp.log(-jnp.expm1(-x))


def _grounded_log_probs(delta: jax.Array, theta_b: jax.Array, tp: jax.Array):
    """Grounded Rao–Kupper in log space: `(log P(a), log P(b), log P(tie), log P(tie (bothbad)))`."""
    beta_a = delta + theta_b
    beta_b = jnp.broadcast_to(theta_b, beta_a.shape).astype(beta_a.dtype)
    tp = jnp.broadcast_to(tp, beta_a.shape).astype(beta_a.dtype)
    zero = jnp.zeros_like(beta_a)
    log_d_a = jax.nn.logsumexp(jnp.stack([beta_a, tp + beta_b, zero]), axis=0)  # log(pi_a + t pi_b + 1)
    log_d_b = jax.nn.logsumexp(jnp.stack([beta_b, tp + beta_a, zero]), axis=0)  # log(pi_b + t pi_a + 1)
    log_d_g = jax.nn.logsumexp(jnp.stack([beta_a, beta_b, zero]), axis=0)  # log(1 + pi_a + pi_b)
    lp_a = beta_a - log_d_a
    lp_b = beta_b - log_d_b
    lp_bb = -log_d_g
    # log((1 + t)(pi_a + pi_b) + 2)
    log_num = jnp.logaddexp(jax.nn.softplus(tp) + jnp.logaddexp(beta_a, beta_b), _LOG2)
    lp_t = _log_expm1(tp) + beta_a + beta_b + log_num - log_d_a - log_d_b - log_d_g
    return lp_a, lp_b, lp_t, lp_bb


def _model_log_probs(delta: jax.Array, ties: str, tp: jax.Array, theta_b: jax.Array | None = None):
    """`(log P(a), log P(b), log P(tie))` of one tie model, plus `log P(tie (bothbad))` for the grounded
    model (which also needs `theta_b`); the single definition of the likelihoods."""
    if ties == GROUNDED:
        return _grounded_log_probs(delta, theta_b, tp)
    if ties in ("half", "drop"):
        lp_a = jax.nn.log_sigmoid(delta)
        lp_b = jax.nn.log_sigmoid(-delta)
        lp_t = 0.5 * (lp_a + lp_b) if ties == "half" else jnp.zeros_like(delta)
    elif ties == "rao-kupper":
        lp_a = jax.nn.log_sigmoid(delta - tp)
        lp_b = jax.nn.log_sigmoid(-delta - tp)
        lp_t = _logsinh(tp) - jnp.logaddexp(_logcosh(delta), _logcosh(tp))
    else:  # davidson
        half = 0.5 * delta
        log_nu = jnp.log(tp)
        log_z = jnp.logaddexp(jnp.logaddexp(half, -half), log_nu)
        lp_a = half - log_z
        lp_b = -half - log_z
        lp_t = log_nu - log_z
    return lp_a, lp_b, lp_t


def _select_outcome(outcome, lp_a, lp_b, lp_t, lp_bb=None):
    if lp_bb is not None:
        lp_t = jnp.where(outcome == TIE_BOTHBAD, lp_bb, lp_t)
    return jnp.where(outcome == A_WINS, lp_a, jnp.where(outcome == B_WINS, lp_b, lp_t))


def _theta_b_value(theta_b: Any, ties: str, dtype) -> jax.Array | None:
    if ties != GROUNDED:
        return None
    if theta_b is None:
        raise ValueError(
            "theta_b is required for ties='grounded-rao-kupper': the model is not shift-invariant (the both-bad "
            "competitor sits at theta = 0), so it needs theta_b besides delta = theta_a - theta_b"
        )
    theta_b = jnp.asarray(theta_b)
    if not jnp.issubdtype(theta_b.dtype, jnp.floating):
        theta_b = theta_b.astype(jnp.float32)
    return theta_b.astype(dtype)


def outcome_log_probs(
    delta: Any, outcome: Any, *, ties: str, tie_param: Any = None, theta_b: Any = None
) -> jax.Array:
    r"""Log-likelihood of each outcome given the strength difference, for every tie model.

    `log P(outcome | theta_a - theta_b = delta)`; see the module docstring for the formulas. For
    `"drop"` a tie contributes 0 (it is not part of the likelihood); for `"half"` a tie contributes
    `(log sigmoid(delta) + log sigmoid(-delta)) / 2`. `"grounded-rao-kupper"` has four outcomes
    (`TIE_BOTHBAD` is its own outcome) and depends on the absolute strengths: pass `theta_b`.

    Args:
        delta: float[...] `theta_a - theta_b` in natural-log units.
        outcome: int[...] (broadcast with `delta`) `A_WINS`=0, `B_WINS`=1, `TIE`=2, `TIE_BOTHBAD`=3.
        ties: `"half" | "rao-kupper" | "davidson" | "drop" | "grounded-rao-kupper"`.
        tie_param: RK threshold `alpha > 0` (also the grounded model's) or Davidson `nu > 0`, scalar
            or broadcastable to `delta`; ignored for `"half"`/`"drop"`.
        theta_b: float[...] (broadcast with `delta`) the absolute log-strength of `b`; required for
            `"grounded-rao-kupper"`, ignored otherwise.

    Returns:
        float[...] log-probabilities (float32 unless `delta` is float64).

    Example:
        >>> outcome_log_probs(jnp.array([0.0, 1.0]), jnp.array([0, 2]), ties="davidson", tie_param=1.0)
    """
    _check_ties(ties)
    delta = jnp.asarray(delta)
    if not jnp.issubdtype(delta.dtype, jnp.floating):
        delta = delta.astype(jnp.float32)
    dtype = jnp.promote_types(delta.dtype, jnp.float32)
    delta = delta.astype(dtype)
    outcome = jnp.asarray(outcome)
    if not jnp.issubdtype(outcome.dtype, jnp.integer):
        raise TypeError(f"outcome must be integer codes 0..3, got dtype {outcome.dtype}")
    tp = _tie_value(tie_param, ties, dtype)
    return _select_outcome(outcome, *_model_log_probs(delta, ties, tp, _theta_b_value(theta_b, ties, dtype)))


def outcome_probabilities(delta: Any, *, ties: str, tie_param: Any = None, theta_b: Any = None) -> jax.Array:
    """`[P(a wins), P(b wins), P(tie)]` for each `delta`, float[..., 3]; they sum to 1.

    For `"half"`/`"drop"` the tie probability is 0 (these models predict no ties). For
    `"grounded-rao-kupper"` (pass `theta_b`) four outcomes, float[..., 4]:
    `[P(a), P(b), P(tie), P(tie (bothbad))]`.

    Example:
        >>> outcome_probabilities(jnp.zeros(2), ties="rao-kupper", tie_param=0.5).sum(-1)  # [1., 1.]
    """
    _check_ties(ties)
    delta = jnp.asarray(delta)
    if not jnp.issubdtype(delta.dtype, jnp.floating):
        delta = delta.astype(jnp.float32)
    delta = delta.astype(jnp.promote_types(delta.dtype, jnp.float32))
    tp = _tie_value(tie_param, ties, delta.dtype)
    if ties == GROUNDED:
        lps = _model_log_probs(delta, ties, tp, _theta_b_value(theta_b, ties, delta.dtype))
        return jnp.exp(jnp.stack(lps, axis=-1))
    lp_a, lp_b, lp_t = _model_log_probs(delta, "drop" if ties == "half" else ties, tp)
    p_t = jnp.exp(lp_t) if ties in _FITS_TIE else jnp.zeros_like(delta)
    return jnp.stack([jnp.exp(lp_a), jnp.exp(lp_b), p_t], axis=-1)


def bt_negative_log_likelihood(
    theta: Any, tie_param: Any, a: Any, b: Any, outcome: Any, weight: Any, *, ties: str, l2: float = 0.0,
    features: Any = None, beta: Any = None, style_l2: float = 0.0,
) -> jax.Array:
    r"""Penalised weighted negative log-likelihood of vote rows.

    `NLL = -sum_u w_u log P(outcome_u | theta_{a_u} - theta_{b_u} + x_u . beta) + (l2 / 2) ||theta||^2
    + (style_l2 / 2) ||beta||^2`.

    Args:
        theta: float[M] log-strengths.
        tie_param: RK `alpha` / Davidson `nu` (> 0); ignored (may be None) for `"half"`/`"drop"`.
        a, b, outcome: int[U] rows (see `jaxrank.votes.VoteRows`).
        weight: float[U] row weights.
        ties: tie model.
        l2: prior precision of a N(0, 1/l2) prior on each theta (may be traced).
        features: optional float[U, K] per-row covariates (style control); with `beta` float[K].
        style_l2: prior precision on beta.

    Returns:
        float scalar.

    Example:
        >>> rows = votes.rows()                                                                   # doctest: +SKIP
        >>> bt_negative_log_likelihood(jnp.zeros(3), None, rows.a, rows.b, rows.outcome, rows.count,
        ...                            ties="half")                                               # doctest: +SKIP
    """
    theta = jnp.asarray(theta)
    delta = theta[a] - theta[b]
    penalty = 0.5 * l2 * jnp.sum(theta * theta)
    if features is not None:
        beta = jnp.asarray(beta)
        delta = delta + jnp.asarray(features, delta.dtype) @ beta.astype(delta.dtype)
        penalty = penalty + 0.5 * style_l2 * jnp.sum(beta * beta)
    lp = outcome_log_probs(delta, outcome, ties=ties, tie_param=tie_param, theta_b=theta[b])
    return -jnp.sum(jnp.asarray(weight, lp.dtype) * lp) + penalty


# --------------------------------------------------------------------------------------------------
# The solver: pure, jit/vmap-able, implicit VJP in the weights.


class _Static(NamedTuple):
    ties: str
    num_models: int
    memory_size: int
    cg_max_iter: int
    num_features: int = 0


class _Options(NamedTuple):
    """Traced options: one compiled fit (per tie model and shape) serves every prior and tolerance."""

    l2: jax.Array
    max_iter: jax.Array
    tol: jax.Array
    style_l2: jax.Array


class BTSolution(NamedTuple):
    """Raw solver output. theta float[M] (centred per component when `l2 == 0`), tie_param float
    scalar (nan for `"half"`/`"drop"`), num_iter int32, converged bool, grad_norm float (the largest
    absolute gradient entry of the normalised objective, compared with `tol`), beta float[K] the
    covariates' coefficients (K = 0 without covariates)."""

    theta: jax.Array
    tie_param: jax.Array
    num_iter: jax.Array
    converged: jax.Array
    grad_norm: jax.Array
    beta: jax.Array


def _delta(x, a, b, features, st: _Static):
    """`theta_a - theta_b (+ x_u . beta)` of every row; the parameters are `[theta (M), log tie (1), beta (K)]`."""
    m = st.num_models
    delta = x[a] - x[b]
    if st.num_features:
        delta = delta + features @ x[m + 1:]
    return delta


def _objective(x, weight, a, b, outcome, opts: _Options, st: _Static, features=None):
    m = st.num_models
    theta = x[:m]
    tp = jnp.exp(x[m])
    lp = _select_outcome(outcome, *_model_log_probs(_delta(x, a, b, features, st), st.ties, tp, theta[b]))
    value = -jnp.sum(weight * lp) + 0.5 * opts.l2 * jnp.sum(theta * theta)
    if st.num_features:
        value = value + 0.5 * opts.style_l2 * jnp.sum(x[m + 1:] ** 2)
    return value


def _centre(theta, component, opts: _Options, st: _Static):
    """Subtract each component's mean (only without a prior, which pins the level by itself; never for
    the grounded model, whose level the both-bad competitor at 0 pins)."""
    if st.ties == GROUNDED:
        return theta
    sums = jax.ops.segment_sum(theta, component, num_segments=st.num_models)
    sizes = jax.ops.segment_sum(jnp.ones_like(theta), component, num_segments=st.num_models)
    centred = theta - (sums / jnp.maximum(sizes, 1.0))[component]
    return jnp.where(opts.l2 > 0, theta, centred)


def _lbfgs(weight, a, b, outcome, component, opts: _Options, st: _Static, features=None):
    dtype = weight.dtype
    m = st.num_models
    kappa0 = math.log(_DEFAULT_TIE_INIT.get(st.ties, 1.0))
    x0 = jnp.zeros((m + 1 + st.num_features,), dtype).at[m].set(kappa0)
    # Normalised by the mean weighted number of battles per model, 2 W / M: the Hessian's diagonal is then
    # O(p (1 - p)) whatever the number of votes and models, so a gradient entry below `tol` means that
    # model's theta is within a few `tol` of the optimum for 100 votes or 10 million, 10 models or 10,000.
    per_model = jnp.maximum(2.0 * jnp.sum(weight) / m, jnp.finfo(dtype).tiny)

    def fun(x):
        return _objective(x, weight, a, b, outcome, opts, st, features) / per_model

    opt = optax.lbfgs(
        memory_size=st.memory_size,
        linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=30, initial_guess_strategy="one"),
    )
    value_and_grad = optax.value_and_grad_from_state(fun)

    def step(carry):
        x, state = carry
        value, grad = value_and_grad(x, state=state)
        updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=fun)
        return optax.apply_updates(x, updates), state

    def keep_going(carry):
        _, state = carry
        count = optax.tree.get(state, "count")
        gnorm = jnp.max(jnp.abs(optax.tree.get(state, "grad")))
        return (count == 0) | ((count < opts.max_iter) & (gnorm >= opts.tol))

    x, state = jax.lax.while_loop(keep_going, step, (x0, opt.init(x0)))
    gnorm = jnp.max(jnp.abs(jax.grad(fun)(x)))
    x = x.at[:m].set(_centre(x[:m], component, opts, st))
    count = optax.tree.get(state, "count")
    return x, (count.astype(jnp.int32), gnorm < opts.tol, gnorm)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _solve(weight, a, b, outcome, component, opts: _Options, features, st: _Static):
    return _lbfgs(weight, a, b, outcome, component, opts, st, features)


def _solve_fwd(weight, a, b, outcome, component, opts, features, st):
    x, aux = _lbfgs(weight, a, b, outcome, component, opts, st, features)
    return (x, aux), (x, weight, a, b, outcome, component, opts, features)


def _row_nll(delta, kappa, outcome, ties):
    return -_select_outcome(outcome, *_model_log_probs(delta, ties, jnp.exp(kappa)))


def _solve_bwd(st, res, cotangents):
    x, weight, a, b, outcome, component, opts, features = res
    if st.ties == GROUNDED or st.num_features:
        return _solve_bwd_autodiff(st, res, cotangents)
    m = st.num_models
    gx = cotangents[0]
    # The output theta is the centred optimum: project the cotangent the same way.
    gx = gx.at[:m].set(_centre(gx[:m], component, opts, st))
    fits = st.ties in _FITS_TIE
    if not fits:
        gx = gx.at[m].set(0.0)

    # Per-row first and second derivatives of -log P in (delta, kappa): elementwise, so the Hessian-
    # vector product below is two gathers and two segment sums (cheap to compile and to run).
    theta, kappa = x[:m], x[m]
    delta = theta[a] - theta[b]
    kap = jnp.broadcast_to(kappa, delta.shape)
    row = functools.partial(_row_nll, ties=st.ties)
    g_d, g_k = jax.vmap(jax.grad(row, argnums=(0, 1)))(delta, kap, outcome)
    (h_dd, h_dk), (_, h_kk) = jax.vmap(jax.hessian(row, argnums=(0, 1)))(delta, kap, outcome)
    zero_l2 = opts._replace(l2=jnp.zeros_like(opts.l2))

    def hvp(v):
        vt, vk = v[:m], v[m]
        dv = vt[a] - vt[b]
        s_d = weight * (h_dd * dv + h_dk * vk)
        hv_t = (
            jax.ops.segment_sum(s_d, a, num_segments=m)
            - jax.ops.segment_sum(s_d, b, num_segments=m)
            + opts.l2 * vt
        )
        hv_k = jnp.sum(weight * (h_dk * dv + h_kk * vk))
        # Directions the likelihood does not see get an identity block so that H is invertible there:
        # per-component shifts of theta when there is no prior, and the tie slot when no tie parameter is
        # fitted. The right-hand side has no component along them, so the solution is H^+ g.
        shifts = jnp.where(opts.l2 > 0, 0.0, vt - _centre(vt, component, zero_l2, st))
        hv_k = hv_k if fits else vk
        return jnp.concatenate([hv_t + shifts, hv_k[None]])

    # Relative residual a little above the dtype's resolution: tighter only burns iterations in float32.
    cg_tol = 1e-6 if x.dtype == jnp.float32 else 1e-12
    v, _ = jax.scipy.sparse.linalg.cg(hvp, gx, tol=cg_tol, atol=0.0, maxiter=st.cg_max_iter)
    # d/dw (gx . x*) = -(d grad_x / d w)^T H^+ gx, and d grad_x / d w_u is the gradient of row u's -log P.
    vt, vk = v[:m], v[m]
    g_w = -(g_d * (vt[a] - vt[b]) + (g_k * vk if fits else 0.0))
    return (g_w.astype(weight.dtype), None, None, None, None, None, None)


def _solve_bwd_autodiff(st, res, cotangents):
    """The implicit VJP with autodiff Hessian-vector products: for the grounded model (its per-row
    likelihood depends on theta_a and theta_b separately, not only on their difference) and for fits with
    covariates (beta joins the parameters)."""
    x, weight, a, b, outcome, component, opts, features = res
    m = st.num_models
    gx = cotangents[0]
    fits = st.ties in _FITS_TIE
    zero_l2 = opts._replace(l2=jnp.zeros_like(opts.l2))
    if st.ties != GROUNDED:
        gx = gx.at[:m].set(_centre(gx[:m], component, opts, st))
    if not fits:
        gx = gx.at[m].set(0.0)

    def grad_x(xx):
        return jax.grad(_objective)(xx, weight, a, b, outcome, opts, st, features)

    def hvp(v):
        hv = jax.jvp(grad_x, (x,), (v,))[1]
        if st.ties != GROUNDED:  # the flat per-component shifts of theta get an identity block (see _solve_bwd)
            vt = v[:m]
            hv = hv.at[:m].add(jnp.where(opts.l2 > 0, 0.0, vt - _centre(vt, component, zero_l2, st)))
        if not fits:
            hv = hv.at[m].set(v[m])
        return hv

    def row_nll(xx):
        lps = _model_log_probs(_delta(xx, a, b, features, st), st.ties, jnp.exp(xx[m]), xx[:m][b])
        return -_select_outcome(outcome, *lps)

    cg_tol = 1e-6 if x.dtype == jnp.float32 else 1e-12
    v, _ = jax.scipy.sparse.linalg.cg(hvp, gx, tol=cg_tol, atol=0.0, maxiter=st.cg_max_iter)
    g_w = -jax.jvp(row_nll, (x,), (v,))[1]
    return (g_w.astype(weight.dtype), None, None, None, None, None, None)


_solve.defvjp(_solve_fwd, _solve_bwd)


def _solution(weight, a, b, outcome, component, opts: _Options, st: _Static, features=None) -> BTSolution:
    x, (num_iter, converged, gnorm) = _solve(weight, a, b, outcome, component, opts, features, st)
    m = st.num_models
    tie = jnp.exp(x[m]) if st.ties in _FITS_TIE else jnp.asarray(jnp.nan, x.dtype)
    return BTSolution(x[:m], tie, num_iter, converged, gnorm, x[m + 1:])


def _make_options(l2, max_iter, tol, dtype, style_l2=0.0) -> _Options:
    return _Options(
        l2=jnp.asarray(l2, dtype),
        max_iter=jnp.asarray(max_iter, jnp.int32),
        tol=jnp.asarray(tol, dtype),
        style_l2=jnp.asarray(style_l2, dtype),
    )


def _make_static(ties: str, num_models: int, memory_size: int, num_features: int = 0) -> _Static:
    dim = num_models + 1 + num_features
    return _Static(ties, int(num_models), int(memory_size), int(min(max(4 * dim, 200), 5000)), int(num_features))


@functools.partial(jax.jit, static_argnames=("st",))
def _solve_jit(weight, a, b, outcome, component, opts, features, *, st):
    return _solution(weight, a, b, outcome, component, opts, st, features)


def solve_bradley_terry(
    weight: Any,
    a: Any,
    b: Any,
    outcome: Any,
    component: Any = None,
    *,
    num_models: int,
    ties: str = "half",
    l2: float = 0.0,
    max_iter: int = 1000,
    tol: float = 1e-6,
    memory_size: int = 20,
    features: Any = None,
    style_l2: float = 1.0,
) -> BTSolution:
    r"""The Bradley–Terry fit as a pure function of the row weights: jit-, vmap- and grad-safe.

    Minimises `NLL(theta, tie, beta) / (2 sum(weight) / M)` (see `bt_negative_log_likelihood`; the divisor
    is the mean weighted number of battles per model) with optax L-BFGS (zoom line search) in a
    `lax.while_loop` that stops when the largest gradient entry of that normalised objective is below
    `tol` or after `max_iter` iterations. The tie parameter of Rao–Kupper /
    Davidson is fitted as its logarithm (so it stays positive). With `l2 == 0` the likelihood is
    invariant to shifting all thetas of a connected component, so theta is centred per component
    (mean zero); with `l2 > 0` the prior pins it (and the optimum is centred automatically). The
    grounded model is never centred (its both-bad competitor at 0 pins the level).

    Differentiable in `weight`: the VJP solves `H v = g` with the Hessian of the penalised NLL at the
    optimum (conjugate gradients on Hessian-vector products) and returns `-(d grad / d weight)^T v`;
    the optimizer is not unrolled. `vmap` over `weight` runs many fits (e.g. bootstrap rounds) at once.
    `l2`, `style_l2`, `max_iter` and `tol` are traced, so one compilation (per tie model and shape) serves
    all values.

    Args:
        weight: float[U] row weights (float64 under `jax.experimental.enable_x64` gives a float64 fit).
        a, b, outcome: int32[U] rows (`jaxrank.votes.VoteRows`).
        component: int32[M] connected-component label per model, labels in [0, M)
            (`jaxrank.votes.comparison_components`); default all zeros (a connected graph).
        num_models: M.
        ties, l2, max_iter, tol, memory_size: see `fit_bradley_terry`.
        features: optional float[U, K] per-row covariates: the logit becomes
            `theta_a - theta_b + features_u . beta` (style control; see `style_design`).
        style_l2: L2 penalty (prior precision) on beta.

    Returns:
        `BTSolution(theta [M], tie_param, num_iter, converged, grad_norm, beta [K])`.

    Example:
        >>> rows = votes.rows()                                                               # doctest: +SKIP
        >>> sol = solve_bradley_terry(rows.count, rows.a, rows.b, rows.outcome, num_models=rows.num_models)  # doctest: +SKIP
    """
    _check_ties(ties)
    weight = jnp.asarray(weight)
    if not jnp.issubdtype(weight.dtype, jnp.floating):
        weight = weight.astype(jnp.float32)
    weight = weight.astype(jnp.promote_types(weight.dtype, jnp.float32))
    if component is None:
        component = jnp.zeros((num_models,), jnp.int32)
    k = 0
    if features is not None:
        features = jnp.asarray(features, weight.dtype)
        if features.ndim != 2 or features.shape[0] != weight.shape[-1]:
            raise ValueError(f"features must have shape [U, K] with U = {weight.shape[-1]} rows, got {tuple(features.shape)}")
        k = int(features.shape[1])
        if k == 0:
            features = None
    return _solve_jit(
        weight,
        jnp.asarray(a, jnp.int32),
        jnp.asarray(b, jnp.int32),
        jnp.asarray(outcome, jnp.int32),
        jnp.asarray(component, jnp.int32),
        _make_options(l2, max_iter, tol, weight.dtype, style_l2),
        features,
        st=_make_static(ties, num_models, memory_size, k),
    )


# --------------------------------------------------------------------------------------------------
# Style control: the covariates of a vote


def style_design(votes: Votes, names: Sequence[str]) -> np.ndarray:
    r"""Style covariates of each vote: the standardised normalised differences of per-side features.

    For feature k with values `f_a`, `f_b` >= 0 (e.g. response tokens, markdown headers),
    `d_k = (f_a - f_b) / (f_a + f_b)` (0 when both are 0), then `x_k = (d_k - mean(d_k)) / sd(d_k)` over
    the votes (each vote counted once, `Votes.count` times for aggregated entries). The Bradley–Terry logit
    becomes `theta_a - theta_b + sum_k beta_k x_k` (Chatbot Arena's style control; Arena adds 1 to the
    denominator, which matters only for small counts).

    Args:
        votes: `Votes` with `feature_names` containing `names`.
        names: the K feature names.

    Returns:
        float64[N, K].

    Raises:
        ValueError: unknown feature names (with the available ones), negative values, a feature whose
            normalised difference is constant over the votes (it cannot be separated from the ratings).
    """
    if isinstance(names, str):
        names = (names,)
    names = tuple(names)
    if not names:
        raise ValueError("style: name at least one feature")
    missing = [n for n in names if n not in votes.feature_names]
    if missing:
        raise ValueError(f"style feature(s) {', '.join(map(repr, missing))} are not in the votes; available: "
                         f"{', '.join(map(repr, votes.feature_names)) or '(none: read a file with conv_metadata or lengths, or pass features=)'}")
    if len(set(names)) != len(names):
        raise ValueError(f"style names a feature twice: {names}")
    mult = votes.multiplicity()
    total_votes = mult.sum()
    if total_votes <= 0:
        raise ValueError("style: no votes (all counts are 0)")
    out = np.empty((len(votes), len(names)))
    for k, name in enumerate(names):
        fa, fb = votes.feature(name)
        neg = np.flatnonzero((fa < 0) | (fb < 0))
        if neg.size:
            raise ValueError(f"style feature {name!r} has {neg.size} negative value(s), e.g. in vote(s) "
                             f"{', '.join(map(str, neg[:5]))}; (f_a - f_b) / (f_a + f_b) needs features >= 0")
        total = fa + fb
        d = np.divide(fa - fb, total, out=np.zeros_like(total), where=total > 0)
        mean = float(np.sum(mult * d) / total_votes)
        sd = math.sqrt(float(np.sum(mult * (d - mean) ** 2) / total_votes))
        if not sd > 1e-9:
            raise ValueError(f"style feature {name!r} does not vary over the votes (its normalised difference is "
                             f"{mean:g} in every vote); it cannot be told apart from the ratings: leave it out")
        out[:, k] = (d - mean) / sd
    return out


# --------------------------------------------------------------------------------------------------
# The user-facing fit.


@struct.dataclass
class BTResult:
    """A fitted Bradley–Terry leaderboard (a pytree; names and options are static).

    Attributes:
        models: model names, `models[i]` for index i.
        ties, scale, base, init: the options the fit used.
        l2, anchor, anchor_rating: the prior and anchoring the fit used (intervals reuse them).
        style: the style-control feature names (empty without style control), and `style_l2` the
            penalty on their coefficients.
        ratings: float32[M] Elo-scale ratings `init + scale / ln(base) * theta` (anchored if asked).
        theta: float32[M] natural log-strengths (centred per component, or 0 at the anchor).
        tie_param: fitted RK `alpha` / Davidson `nu`, nan for `"half"`/`"drop"`.
        beta: float32[K] style coefficients: the change of the logit (natural-log odds of `a` winning)
            per standard deviation of each feature's normalised difference (`style_design`).
        log_likelihood: weighted log-likelihood at the optimum (without the L2 terms).
        num_iter: L-BFGS iterations used.
        converged: whether the largest normalised gradient entry reached `tol`.
    """

    models: tuple[str, ...] = struct.field(pytree_node=False)
    ties: str = struct.field(pytree_node=False)
    scale: float = struct.field(pytree_node=False)
    base: float = struct.field(pytree_node=False)
    init: float = struct.field(pytree_node=False)
    ratings: jax.Array
    theta: jax.Array
    tie_param: jax.Array
    log_likelihood: jax.Array
    num_iter: jax.Array
    converged: jax.Array
    beta: jax.Array = dataclasses.field(default_factory=lambda: jnp.zeros((0,), jnp.float32))
    l2: float = struct.field(pytree_node=False, default=0.0)
    anchor: str | None = struct.field(pytree_node=False, default=None)
    anchor_rating: float | None = struct.field(pytree_node=False, default=None)
    style: tuple[str, ...] = struct.field(pytree_node=False, default=())
    style_l2: float = struct.field(pytree_node=False, default=0.0)

    @property
    def num_models(self) -> int:
        return len(self.models)

    def _probs(self) -> jax.Array:
        delta = self.theta[:, None] - self.theta[None, :]
        tp = self.tie_param if self.ties in _FITS_TIE else None
        theta_b = jnp.broadcast_to(self.theta[None, :], delta.shape) if self.ties == GROUNDED else None
        return outcome_probabilities(delta, ties=self.ties, tie_param=tp, theta_b=theta_b)

    def win_probability(self) -> jax.Array:
        """float32[M, M]: `P[i, j]` = probability that model i beats model j (i in the `a` slot; for a
        style-controlled fit: between answers of the same style, x = 0)."""
        return self._probs()[..., A_WINS]

    def tie_probability(self) -> jax.Array:
        """float32[M, M]: predicted tie probability (zeros for `"half"`/`"drop"`; for the grounded model
        the plain `tie` outcome, without `tie (bothbad)`)."""
        return self._probs()[..., TIE]

    def bothbad_probability(self) -> jax.Array:
        """float32[M, M]: predicted `tie (bothbad)` probability (grounded model; zeros for the others)."""
        probs = self._probs()
        return probs[..., TIE_BOTHBAD] if self.ties == GROUNDED else jnp.zeros(probs.shape[:-1], probs.dtype)

    def to_frame(self):
        """pandas DataFrame `model, rating, theta`, best first."""
        import pandas as pd

        frame = pd.DataFrame(
            {"model": list(self.models), "rating": np.asarray(self.ratings), "theta": np.asarray(self.theta)}
        )
        return frame.sort_values("rating", ascending=False, kind="stable").reset_index(drop=True)


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _warn_no_mle(rows: VoteRows, weights: np.ndarray, ties: str, stacklevel: int = 3) -> None:
    """Warn about models that never lost or never won (their MLE rating is +-infinity)."""
    m = rows.num_models
    a = np.asarray(rows.a)
    b = np.asarray(rows.b)
    o = np.asarray(rows.outcome)
    w = np.asarray(weights, np.float64)
    win = np.zeros(m)
    loss = np.zeros(m)
    np.add.at(win, a[o == A_WINS], w[o == A_WINS])
    np.add.at(loss, b[o == A_WINS], w[o == A_WINS])
    np.add.at(win, b[o == B_WINS], w[o == B_WINS])
    np.add.at(loss, a[o == B_WINS], w[o == B_WINS])
    if ties != "drop":
        tie = o >= TIE
        np.add.at(win, a[tie], w[tie])
        np.add.at(win, b[tie], w[tie])
        np.add.at(loss, a[tie], w[tie])
        np.add.at(loss, b[tie], w[tie])
    played = (win + loss) > 0
    never_lost = [rows.models[i] for i in np.flatnonzero(played & (loss == 0))]
    never_won = [rows.models[i] for i in np.flatnonzero(played & (win == 0))]
    if never_lost or never_won:
        parts = []
        if never_lost:
            parts.append(f"never lost: {', '.join(never_lost[:5])}{' ...' if len(never_lost) > 5 else ''}")
        if never_won:
            parts.append(f"never won: {', '.join(never_won[:5])}{' ...' if len(never_won) > 5 else ''}")
        warnings.warn(
            "the maximum-likelihood ratings do not exist (they diverge to +-infinity) for models that "
            f"{'; '.join(parts)}; their reported ratings are arbitrary (the fit stops where the gradient "
            "becomes negligible, not at a maximum). Pass l2 > 0 (a prior) to pin them.",
            UserWarning,
            stacklevel=stacklevel,
        )


class FitPlan(NamedTuple):
    """What `fit_bradley_terry` derives from the votes before fitting, shared with the intervals.

    rows: the `VoteRows` fitted (merged, or per vote with style control); features: float32[U, K] per-row
    style covariates or None; component: int32[M] connected components (all 0 for the grounded model);
    anchor_index: -1 without an anchor.
    """

    rows: VoteRows
    features: Any
    component: np.ndarray
    anchor_index: int


def check_style(style: Any) -> tuple[str, ...]:
    """The style feature names as a tuple (None and "" mean no style control)."""
    if style is None or style == "":
        return ()
    if isinstance(style, str):
        style = tuple(s.strip() for s in style.split(","))
    style = tuple(style)
    if not all(isinstance(s, str) and s for s in style):
        raise TypeError(f"style must be feature names (strings), got {style!r}")
    return style


def plan_fit(votes: Votes, *, ties: str, style: tuple[str, ...] = (), anchor: str | None = None,
             row_weights: Any = None) -> FitPlan:
    """Encode `votes` for a fit: the rows (merged without style control, per vote with it), the per-row
    style covariates, the comparison graph's components, and the anchor's index (checked)."""
    if not isinstance(votes, Votes):
        raise TypeError(f"votes must be a jaxrank.Votes (see jaxrank.load_votes), got {type(votes).__name__}")
    if len(votes) == 0:
        raise ValueError("votes is empty (0 votes); nothing to rate")
    rows = votes.rows(merge=not style)
    features = None
    if style:
        x = style_design(votes, style)
        features = jnp.asarray(x[np.asarray(rows.row_vote)], jnp.float32)
    anchor_index = -1
    if anchor is not None:
        if anchor not in votes.models:
            close = [m for m in votes.models if str(anchor).lower() in m.lower()][:5]
            hint = f"; similar: {', '.join(close)}" if close else ""
            raise ValueError(f"anchor {anchor!r} is not one of the {votes.num_models} models{hint}")
        anchor_index = votes.models.index(anchor)
    w = np.asarray(rows.count if row_weights is None else row_weights, np.float64)
    if ties == "drop":
        w = np.where(np.asarray(rows.outcome) >= TIE, 0.0, w)
    if ties == GROUNDED:
        component = np.zeros((votes.num_models,), np.int32)
    else:
        component = comparison_components(rows, weights=w)
    return FitPlan(rows, features, component, anchor_index)


def fit_bradley_terry(
    votes: Votes,
    *,
    ties: str = "half",
    l2: float = 0.0,
    scale: float = 400.0,
    base: float = 10.0,
    init: float = 1000.0,
    anchor: str | None = None,
    anchor_rating: float | None = None,
    style: Sequence[str] | str | None = None,
    style_l2: float = 1.0,
    row_weights: Any = None,
    max_iter: int = 1000,
    tol: float = 1e-6,
    memory_size: int = 20,
    mesh: jax.sharding.Mesh | None = None,
) -> BTResult:
    r"""Fit a Bradley–Terry leaderboard (maximum likelihood or MAP with an L2 prior).

    Minimises `-sum_v w_v log P(y_v | theta_{a_v} - theta_{b_v} [+ x_v . beta]) + l2/2 ||theta||^2
    [+ style_l2/2 ||beta||^2]` over theta (and the tie parameter for `"rao-kupper"`/`"davidson"`, and the
    style coefficients beta) with optax L-BFGS under jit, and reports Elo-scale ratings
    `R_i = init + scale / ln(base) * theta_i`.

    Soft outcomes (`votes.p_a`): a decisive vote with P(a wins) = p contributes
    `w (p log P(a) + (1 - p) log P(b))` (the likelihood with a fractional target, for every tie model:
    for `"half"`/`"drop"` that is `w (p log sigmoid(delta) + (1 - p) log sigmoid(-delta))`; for Rao–Kupper /
    Davidson / grounded RK a soft vote puts no mass on a tie, so the tie parameter is learned from the tie
    votes alone). A soft outcome of exactly 1/2 is a tie (`votes.outcome`). Vote weights multiply.

    Identifiability: without a prior the likelihood only sees differences, so theta is centred
    (mean 0, mean rating `init`) within each connected component of the comparison graph; a warning
    names the components when there are several (ratings are then not comparable across them).
    With `anchor`, the anchor's component is shifted so that the anchor sits at `anchor_rating`.

    Args:
        votes: `jaxrank.Votes` (`jaxrank.load_votes`).
        ties: `"half"` (a tie is half a win each way; Arena), `"rao-kupper"`, `"davidson"` (both fit
            the tie parameter), `"drop"` (ties ignored) or `"grounded-rao-kupper"` (P2L's four-outcome
            model: `tie (bothbad)` is a loss of both models to a fixed competitor at theta = 0; theta is
            absolute, not centred, rating `init` is that competitor's level, and an anchor shifts the
            reported ratings only).
        l2: L2 penalty (prior precision) on theta in natural-log units, >= 0.
        scale, base, init: the Elo scale (400, 10, 1000 by default).
        anchor: optional model name pinned to `anchor_rating` (default `init`; finite).
        style: optional per-side feature names (e.g. `("length", "headers")`, see `Votes.feature_names`) for
            style control: logit = `theta_a - theta_b + sum_k beta_k x_k`, `x = style_design(votes, style)`.
            The fit then works on one row per vote (`votes.rows(merge=False)`).
        style_l2: L2 penalty on beta (beta only; theta keeps `l2`), >= 0.
        row_weights: optional float[U] replacing the fitted rows' weights (`votes.rows().count`, or
            `votes.rows(merge=False).count` with `style`). Differentiable: gradients of the ratings with
            respect to it come from implicit differentiation at the optimum.
        max_iter: L-BFGS iteration cap.
        tol: stop when every gradient entry of `NLL / (2 sum(weight) / M)` is below this in absolute value
            (the Hessian diagonal of that objective is O(0.1-0.25), so each theta is then within a few `tol`
            of the optimum: 1e-6 is ~0.001 Elo points, for any number of votes and models).
        memory_size: L-BFGS history length.
        mesh: optional `jax.sharding.Mesh`; the row axis is sharded over all its axes
            (`NamedSharding(mesh, P(mesh.axis_names))`), the parameters are replicated. Same results.

    Returns:
        `BTResult` (ratings, theta, tie_param, beta, log_likelihood, num_iter, converged,
        `win_probability()`, `tie_probability()`).

    Raises:
        ValueError: unknown `ties`, bad scale/base/l2, anchor not a model or a non-finite anchor rating,
            all votes ties under a tie-fitting model (no finite tie parameter), bad style features, row
            weights of the wrong shape, negative or NaN weights.

    Example:
        >>> import jaxrank
        >>> votes = jaxrank.load_votes("../shared/data/llmfao/crowd-comparisons.csv")   # doctest: +SKIP
        >>> result = jaxrank.fit_bradley_terry(votes, ties="half")                       # doctest: +SKIP
        >>> result.to_frame().head()                                                     # doctest: +SKIP
    """
    _check_ties(ties)
    scale, base, init = check_elo_scale(scale, base, init)
    if isinstance(l2, bool) or not (isinstance(l2, (int, float, np.integer, np.floating)) and math.isfinite(l2) and l2 >= 0):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
    if isinstance(style_l2, bool) or not (isinstance(style_l2, (int, float, np.integer, np.floating))
                                          and math.isfinite(style_l2) and style_l2 >= 0):
        raise ValueError(f"style_l2 must be a finite number >= 0, got {style_l2!r}")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol must be > 0, got {tol!r}")
    if anchor_rating is not None and (isinstance(anchor_rating, bool) or not isinstance(
            anchor_rating, (int, float, np.integer, np.floating)) or not math.isfinite(anchor_rating)):
        raise ValueError(f"anchor_rating must be a finite number, got {anchor_rating!r}")
    if anchor_rating is not None and anchor is None:
        raise ValueError("anchor_rating needs anchor (the model to pin)")
    if mesh is not None and not isinstance(mesh, jax.sharding.Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    style = check_style(style)
    if style and ties == GROUNDED:
        raise ValueError("style control is not available with ties='grounded-rao-kupper' (its both-bad competitor "
                         "has no answer, hence no style); use ties='half', 'rao-kupper', 'davidson' or 'drop'")
    if not isinstance(votes, Votes):
        raise TypeError(f"votes must be a jaxrank.Votes (see jaxrank.load_votes), got {type(votes).__name__}")
    if row_weights is not None:
        u_rows = votes.rows(merge=not style).num_rows
        if tuple(np.shape(row_weights)) != (u_rows,):
            raise ValueError(f"row_weights must have shape [U] = ({u_rows},), one per row of "
                             f"votes.rows({'merge=False' if style else ''}), got {tuple(np.shape(row_weights))}")
    if row_weights is not None and _is_concrete(row_weights):
        wn = np.asarray(row_weights)
        if not np.issubdtype(wn.dtype, np.floating):
            raise TypeError(f"row_weights must be floating point, got dtype {wn.dtype}")
        if np.isnan(wn).any() or np.isinf(wn).any():
            raise ValueError("row_weights contains NaN or infinite values")
        if (wn < 0).any():
            raise ValueError(f"row_weights must be >= 0, got {int((wn < 0).sum())} negative value(s)")
    plan = plan_fit(votes, ties=ties, style=style, anchor=anchor,
                    row_weights=row_weights if row_weights is not None and _is_concrete(row_weights) else None)
    rows = plan.rows
    if anchor_rating is None and anchor is not None:
        anchor_rating = init

    u = rows.num_rows
    if row_weights is None:
        w = rows.count
    else:
        w = row_weights if isinstance(row_weights, (jax.Array, np.ndarray)) else np.asarray(row_weights)
        if tuple(w.shape) != (u,):
            raise ValueError(f"row_weights must have shape [U] = ({u},), one per row of "
                             f"votes.rows({'merge=False' if style else ''}), got {tuple(w.shape)}")
        if not jnp.issubdtype(w.dtype, jnp.floating):
            raise TypeError(f"row_weights must be floating point, got dtype {w.dtype}")
    w = jnp.asarray(w)
    if w.dtype != jnp.float64:
        w = w.astype(jnp.float32)

    m = votes.num_models
    component = plan.component
    if _is_concrete(w):
        w_graph = np.asarray(w, np.float64)
        outcome_np = np.asarray(rows.outcome)
        if ties == "drop":
            w_graph = np.where(outcome_np >= TIE, 0.0, w_graph)
        if not (w_graph > 0).any():
            raise ValueError(
                "no votes with positive weight to fit" + (" (all votes are ties and ties='drop')" if ties == "drop" else "")
            )
        if l2 > 0:
            pinning = "the L2 prior pins each component (its theta is pulled to 0, its mean rating to init)."
        else:
            pinning = f"each component is centred on its own (mean rating {init:g})."
            if anchor is not None:
                pinning += f" The anchor {anchor!r} pins only its own component."
        warn_if_disconnected(votes.models, component, pinning=pinning, stacklevel=3)
        if l2 == 0:
            _warn_no_mle(rows, w_graph, ties, stacklevel=3)
        tie_rows = outcome_np == TIE if ties == GROUNDED else outcome_np >= TIE
        decisive = ~(outcome_np >= TIE)
        bothbad = float(w_graph[outcome_np == TIE_BOTHBAD].sum())
        if ties in ("rao-kupper", "davidson") and bothbad > 0:
            warnings.warn(
                f"ties={ties!r} has no both-bad outcome: the {bothbad:g} (weighted) 'tie (bothbad)' votes count as "
                "ties; ties='grounded-rao-kupper' models them as their own outcome (a loss of both models)",
                UserWarning, stacklevel=2)
        if ties in ("rao-kupper", "davidson") and not (w_graph[decisive] > 0).any():
            raise ValueError(
                f"ties={ties!r} but every vote is a tie: the tie parameter has no finite maximum-likelihood value "
                "(it grows without bound) and the ratings are not identified; use ties='half' (every rating equal) "
                "or collect decisive votes")
        if ties == GROUNDED and l2 == 0 and not (w_graph[outcome_np == TIE_BOTHBAD] > 0).any():
            warnings.warn(
                "ties='grounded-rao-kupper' but there are no 'tie (bothbad)' votes: the level of theta (relative to "
                "the both-bad competitor at 0) has no finite maximum-likelihood value and drifts upwards; the "
                "differences are still estimated. Pass l2 > 0 to pin the level",
                UserWarning,
                stacklevel=2,
            )
        if ties in _FITS_TIE and not (w_graph[tie_rows] > 0).any():
            warnings.warn(
                f"ties={ties!r} but there are no tie votes: the tie parameter's maximum-likelihood value is 0, "
                "on the boundary, and the fit only approaches it; use ties='drop' (equivalent, without ties)",
                UserWarning,
                stacklevel=2,
            )
    else:
        component = np.zeros((m,), np.int32)

    a, b, outcome = rows.a, rows.b, rows.outcome
    features = plan.features
    # Zero-weight padding rows up to a bucket size: data sets of about the same size share one compiled fit.
    a, b, outcome, w, features = pad_rows(bucket_size(u), a, b, outcome, w, features)
    if mesh is not None:
        a, b, outcome, w, features = _shard_rows(mesh, a, b, outcome, w, features)
        component = jax.device_put(
            jnp.asarray(component, jnp.int32), jax.sharding.NamedSharding(a.sharding.mesh, jax.sharding.PartitionSpec())
        )
    dtype = w.dtype
    if features is not None:
        features = features.astype(dtype)
    out = _fit_jit(
        w, a, b, outcome, jnp.asarray(component, jnp.int32),
        _make_options(l2, max_iter, tol, dtype, style_l2),
        jnp.asarray(plan.anchor_index, jnp.int32),
        jnp.asarray(init if anchor_rating is None else anchor_rating, dtype),
        jnp.asarray(init, dtype),
        jnp.asarray(scale / math.log(base), dtype),
        features,
        st=_make_static(ties, m, memory_size, len(style)),
    )
    ratings, theta, tie_param, beta, ll, num_iter, converged = out
    return BTResult(
        models=votes.models, ties=ties, scale=float(scale), base=float(base), init=float(init),
        ratings=ratings, theta=theta, tie_param=tie_param, log_likelihood=ll, num_iter=num_iter,
        converged=converged, beta=beta, l2=float(l2), anchor=anchor,
        anchor_rating=None if anchor is None else float(anchor_rating), style=style,
        style_l2=float(style_l2) if style else 0.0,
    )


@functools.partial(jax.jit, static_argnames=("st",))
def _fit_jit(weight, a, b, outcome, component, opts, anchor_index, anchor_rating, init, k, features, *, st):
    sol = _solution(weight, a, b, outcome, component, opts, st, features)
    theta = sol.theta
    # An anchor shifts its own component so that it sits at anchor_rating; the others keep mean init.
    has_anchor = anchor_index >= 0
    idx = jnp.maximum(anchor_index, 0)
    in_comp = has_anchor & (component == component[idx])
    shifted = jnp.where(in_comp, theta - theta[idx], theta)
    ratings = jnp.where(in_comp, anchor_rating, init) + k * shifted
    if st.ties != GROUNDED:  # the grounded model's theta is absolute: the anchor moves the ratings only
        theta = shifted
    tp = sol.tie_param if st.ties in _FITS_TIE else jnp.ones((), theta.dtype)
    x = jnp.concatenate([theta, jnp.log(tp)[None], sol.beta])
    lp = _select_outcome(outcome, *_model_log_probs(_delta(x, a, b, features, st), st.ties, tp, theta[b]))
    ll = jnp.sum(weight * lp)
    return ratings, theta, sol.tie_param, sol.beta, ll, sol.num_iter, sol.converged


def pad_rows(size: int, a, b, outcome, weight, features=None):
    """The rows `(a, b, outcome, weight[, features])` padded to `size` rows with zero-weight rows (a = 0,
    b = 1, a-wins, covariates 0): they add nothing to a likelihood, a gradient or a Hessian, and let data
    sets of nearby sizes share one compiled kernel. Returns `(a, b, outcome, weight, features)`."""
    pad = int(size) - int(a.shape[0])
    if pad <= 0:
        return a, b, outcome, weight, features
    a = jnp.concatenate([jnp.asarray(a), jnp.zeros((pad,), jnp.asarray(a).dtype)])
    b = jnp.concatenate([jnp.asarray(b), jnp.ones((pad,), jnp.asarray(b).dtype)])
    outcome = jnp.concatenate([jnp.asarray(outcome), jnp.zeros((pad,), jnp.asarray(outcome).dtype)])
    weight = jnp.concatenate([jnp.asarray(weight), jnp.zeros((pad,), jnp.asarray(weight).dtype)])
    if features is not None:
        features = jnp.concatenate([jnp.asarray(features), jnp.zeros((pad, features.shape[1]), features.dtype)])
    return a, b, outcome, weight, features


def _shard_rows(mesh: jax.sharding.Mesh, a, b, outcome, w, features=None):
    """Pad the row axis to a multiple of the mesh size (zero-weight rows) and shard it."""
    from jax.sharding import NamedSharding, PartitionSpec

    # The rows are sharded with compiler-propagated (Auto) axes whatever the caller's mesh uses, so the
    # fit itself needs no mesh context: the sums over rows become all-reduces, theta stays replicated.
    mesh = jax.sharding.Mesh(
        mesh.devices, mesh.axis_names, axis_types=(jax.sharding.AxisType.Auto,) * len(mesh.axis_names)
    )
    n_dev = int(np.prod(list(mesh.shape.values())))
    a, b, outcome, w, features = pad_rows(-(-a.shape[0] // n_dev) * n_dev, a, b, outcome, w, features)
    sharding = NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))
    out = tuple(jax.device_put(x, sharding) for x in (a, b, outcome, w))
    if features is not None:
        features = jax.device_put(features, NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names), None)))
    return (*out, features)


def group_row_weights(votes: Votes, group: Any, num_groups: int, *, style: Sequence[str] | str | None = None) -> np.ndarray:
    """float64[G, U]: the fitted rows' weights (`votes.rows(merge=not style).count`) restricted to each group's
    votes: row u of group g sums what the votes of group g add to u (their weight, multiplicity and soft
    target), so fitting group g's weights is fitting `votes.subset(group == g)`.

    Args:
        votes: `jaxrank.Votes`.
        group: int[N] group index of each vote in [0, G), or -1 for a vote in no group.
        num_groups: G >= 1.
        style: the style features of the fit (they decide whether rows are merged).
    """
    style = check_style(style)
    rows = votes.rows(merge=not style)
    group = np.asarray(group, np.int64)
    if group.shape != (len(votes),):
        raise ValueError(f"group must have shape [N] = ({len(votes)},), got {group.shape}")
    if group.size and (group.min() < -1 or group.max() >= num_groups):
        raise ValueError(f"group must hold indices in [-1, {num_groups}), got range [{group.min()}, {group.max()}]")
    vote_row = np.asarray(rows.vote_row, np.int64)                     # [N, S]
    amount = np.asarray(rows.vote_amount, np.float64) * np.asarray(rows.vote_count, np.float64)[:, None]
    keep = group >= 0
    out = np.zeros((num_groups, rows.num_rows), np.float64)
    slots = vote_row.shape[1]
    np.add.at(out, (np.repeat(group[keep], slots), vote_row[keep].reshape(-1)), amount[keep].reshape(-1))
    return out


def fit_bradley_terry_groups(
    votes: Votes,
    group: Any,
    num_groups: int,
    *,
    ties: str = "half",
    l2: float = 0.0,
    scale: float = 400.0,
    base: float = 10.0,
    init: float = 1000.0,
    style: Sequence[str] | str | None = None,
    style_l2: float = 1.0,
    max_iter: int = 1000,
    tol: float = 1e-6,
    memory_size: int = 20,
) -> list[BTResult]:
    """One Bradley–Terry leaderboard per group of votes, all groups fitted in ONE vmapped, jitted call.

    Every group shares the table's rows (`votes.rows()`) and model list; a group is a vector of row weights
    (`group_row_weights`: zero for the rows it has no votes on), so all groups have one shape and the fit is
    `vmap`ped over (weights, components). Group g's result equals `fit_bradley_terry(votes.subset(group ==
    g), ...)`: models without votes in a group are their own component there, at rating `init`.

    Args:
        votes: `jaxrank.Votes`.
        group: int[N] group of each vote in [0, G) (-1: in no group).
        num_groups: G >= 1.
        ties, l2, scale, base, init, style, style_l2, max_iter, tol, memory_size: as `fit_bradley_terry`
            (no anchor, no row weights, no mesh).

    Returns:
        G `BTResult`s, one per group, in group order.

    Raises:
        ValueError: as `fit_bradley_terry`, and a group with no votes of positive weight.
    """
    _check_ties(ties)
    scale, base, init = check_elo_scale(scale, base, init)
    if isinstance(l2, bool) or not (isinstance(l2, (int, float, np.integer, np.floating)) and math.isfinite(l2) and l2 >= 0):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
    if not (isinstance(num_groups, (int, np.integer)) and num_groups >= 1):
        raise ValueError(f"num_groups must be an int >= 1, got {num_groups!r}")
    style = check_style(style)
    if style and ties == GROUNDED:
        raise ValueError("style control is not available with ties='grounded-rao-kupper'")
    plan = plan_fit(votes, ties=ties, style=style)
    rows = plan.rows
    weights = group_row_weights(votes, group, int(num_groups), style=style)
    if ties == "drop":
        weights = np.where(np.asarray(rows.outcome)[None, :] >= TIE, 0.0, weights)
    empty = np.flatnonzero(~(weights > 0).any(axis=1))
    if empty.size:
        raise ValueError(f"group(s) {', '.join(map(str, empty[:5].tolist()))} have no votes of positive weight to fit")
    m = votes.num_models
    if ties == GROUNDED:
        components = np.zeros((num_groups, m), np.int32)
    else:
        components = np.stack([comparison_components(rows, weights=w) for w in weights]).astype(np.int32)
    u = rows.num_rows
    size = bucket_size(u)
    a, b, outcome, _, _ = pad_rows(size, rows.a, rows.b, rows.outcome, rows.count)
    w = jnp.asarray(np.pad(weights, ((0, 0), (0, size - u))), jnp.float32)
    features, feature_axis = None, None
    if style:
        # Each group's covariates are normalised over its own votes (as a separate fit would).
        group_np = np.asarray(group, np.int64)
        row_vote = np.asarray(rows.row_vote, np.int64)
        feats = np.zeros((num_groups, size, len(style)), np.float32)
        for g in range(int(num_groups)):
            idx = np.flatnonzero(group_np == g)
            position = np.full(len(votes), -1, np.int64)
            position[idx] = np.arange(idx.size)
            in_group = position[row_vote] >= 0
            x = style_design(votes.subset(idx), style)
            feats[g, np.flatnonzero(in_group)] = x[position[row_vote[in_group]]]
        features, feature_axis = jnp.asarray(feats, w.dtype), 0
    opts = _make_options(l2, max_iter, tol, w.dtype, style_l2)
    st = _make_static(ties, m, memory_size, len(style))
    k = jnp.asarray(scale / math.log(base), w.dtype)
    one = functools.partial(_fit_jit, st=st)
    fitted = jax.vmap(one, in_axes=(0, None, None, None, 0, None, None, None, None, None, feature_axis))(
        w, a, b, outcome, jnp.asarray(components), opts, jnp.asarray(-1, jnp.int32), jnp.asarray(init, w.dtype),
        jnp.asarray(init, w.dtype), k, features,
    )
    ratings, theta, tie_param, beta, ll, num_iter, converged = fitted
    return [
        BTResult(models=votes.models, ties=ties, scale=float(scale), base=float(base), init=float(init),
                 ratings=ratings[g], theta=theta[g], tie_param=tie_param[g], log_likelihood=ll[g],
                 num_iter=num_iter[g], converged=converged[g], beta=beta[g], l2=float(l2), style=style,
                 style_l2=float(style_l2) if style else 0.0)
        for g in range(int(num_groups))
    ]
