r"""Cost-aware routing on prompt-conditioned Bradley–Terry coefficients (P2L, Frick et al. 2025, §routing).

Given per-prompt coefficients `beta [P, M]` (one leaderboard per prompt), per-model costs `c [M]` and
a budget `C`, the router picks a distribution `pi` over the M models for each prompt that maximises the
expected score against an opponent drawn from `q`, subject to the expected cost:

    max_pi  pi . w   s.t.  pi . c <= C,  sum(pi) = 1,  pi >= 0,      w_i = sum_m q_m s(i, m | beta)

where `s(i, m) = P(i beats m) + P(tie) / 2` (the expected score, from the one likelihood definition in
`jaxrank.ratings.bradley_terry.outcome_probabilities`). With a single budget constraint the optimum is a
vertex of the feasible polytope, so it mixes at most two models (`optimal_policy`, exact, vmapped over
prompts). `route_average_budget` solves the P2L paper's variant with the budget on the average cost over a
set of prompts, exactly, by the greedy over upper-hull edges (a multiple-choice knapsack LP).
`router_rating` puts the router on the Elo scale of the aggregate leaderboard.

The public names are re-exported by `jaxrank.p2l` and `jaxrank`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrank._validation import as_array, check_elo_scale, check_float, describe, is_concrete
from jaxrank.ratings import bradley_terry as _bt

__all__ = [
    "ROUTING_TIES",
    "RoutingResult",
    "win_probabilities",
    "optimal_policy",
    "route",
    "route_average_budget",
    "router_scores",
    "router_rating",
]

# P2L's loss names for the two tie-less likelihoods; every tie model of `jaxrank.ratings` is accepted as is.
_TIE_ALIASES = {"bt": "drop", "bt-tie": "half"}


def _tie_names() -> tuple[str, ...]:
    return tuple(_TIE_ALIASES) + tuple(t for t in _bt.TIE_MODELS if t not in _TIE_ALIASES)


ROUTING_TIES = _tie_names()


# --------------------------------------------------------------------------------------------------
# Validation helpers (shapes and dtypes at trace time; values only when concrete).


def _host(x: Any) -> np.ndarray | None:
    """The values of a concrete array as float64 NumPy, or None under a trace."""
    if not is_concrete(x):
        return None
    try:
        with jax.ensure_compile_time_eval():
            return np.asarray(x, np.float64)
    except jax.errors.ConcretizationTypeError:
        return None


def _real_array(x: Any, name: str) -> Any:
    x = as_array(x, name)
    if not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    if jnp.issubdtype(x.dtype, jnp.bool_) or not (
        jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)
    ):
        raise TypeError(f"{name} must be a real-valued array, got dtype {x.dtype}")
    return x


def _float_array(x: Any, name: str) -> jax.Array:
    return _to_float(_real_array(x, name))


def _float_array_host(x: Any, name: str) -> tuple[Any, np.ndarray | None]:
    """`(x as float32 (float64 under x64), its values as float64 NumPy taken *before* that cast, or None
    under a trace)`: a float64 input keeps its precision for the host-side checks and the cost frame."""
    x = _real_array(x, name)
    return _to_float(x), _host(x)


def _check_batch_shape(x: Any, name: str, shape: tuple[int, ...], batch_shape: tuple[int, ...], want: str) -> None:
    """`shape` (x's batch part) must broadcast *to* `batch_shape`, not merely with it."""
    try:
        ok = np.broadcast_shapes(tuple(shape), tuple(batch_shape)) == tuple(batch_shape)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{name} must have shape {want}, broadcasting to the batch shape {tuple(batch_shape)}; "
                         f"got {describe(x)}")


def _to_float(x: Any) -> Any:
    """float32 (float64 stays float64 under x64); NumPy stays NumPy, so no eager device op is compiled."""
    dtype = jax.dtypes.canonicalize_dtype(jnp.promote_types(x.dtype, jnp.float32))
    if isinstance(x, np.ndarray):
        with np.errstate(over="ignore"):  # a float64 value past float32's range: reported by the value checks
            return np.asarray(x, dtype)
    return x if x.dtype == dtype else jnp.asarray(x).astype(dtype)


def _check_ties_name(ties: Any) -> str:
    names = _tie_names()
    if ties not in names:
        raise ValueError(f"ties must be one of {', '.join(repr(t) for t in names)}; got {ties!r}")
    return _TIE_ALIASES.get(ties, ties)


def _check_beta(beta: Any, name: str = "beta", *, ndim: int | None = None) -> jax.Array:
    beta = as_array(beta, name)
    if not hasattr(beta, "dtype"):
        raise TypeError(f"{name} must be an array, got {type(beta).__name__}")
    check_float(beta, name)
    layout = "[..., M]" if ndim is None else "[P, M]"
    if ndim is not None and beta.ndim != ndim:
        raise ValueError(f"{name} must have shape {layout} ({ndim} dimensions), got {describe(beta)}")
    if beta.ndim < 1 or beta.shape[-1] == 0:
        raise ValueError(f"{name} must have shape {layout} with M >= 1 models, got {describe(beta)}")
    host = _host(beta)
    if host is not None and not np.isfinite(host).all():
        raise ValueError(f"{name} must be finite (natural-log Bradley–Terry coefficients); it holds NaN or inf")
    return _to_float(beta)


def _check_distribution(x: Any, name: str, m: int, batch_shape: tuple[int, ...], what: str) -> Any:
    """A non-negative weight vector over the last axis (length m), uniform when None; the kernels
    normalise it to sum 1."""
    if x is None:
        return np.ones((m,), np.float32)
    x = _float_array(x, name)
    if x.ndim < 1 or x.shape[-1] != m:
        raise ValueError(f"{name} must have shape [{m}] (one weight per {what}), got {describe(x)}")
    _check_batch_shape(x, name, x.shape[:-1], batch_shape, f"[{m}] or [..., {m}] (one weight per {what})")
    host = _host(x)
    if host is not None:
        if not np.isfinite(host).all():
            raise ValueError(f"{name} contains NaN or inf")
        if (host < 0).any():
            raise ValueError(f"{name} must be >= 0 (weights over {what}s), got a negative entry")
        if (host.sum(-1) <= 0).any():
            raise ValueError(f"{name} must have a positive sum (weights over {what}s)")
    return x


def _normalise(x: jax.Array) -> jax.Array:
    return x / jnp.sum(x, axis=-1, keepdims=True)


def _check_tie_param(tie_param: Any, ties: str, batch_shape: tuple[int, ...]) -> jax.Array | None:
    if ties in ("drop", "half"):
        return None
    if tie_param is None:
        raise ValueError(f"tie_param is required for ties={ties!r} (the fitted tie parameter, > 0)")
    tp = _float_array(tie_param, "tie_param")
    _check_batch_shape(tp, "tie_param", tp.shape, batch_shape, "[] (a scalar) or beta's batch shape (one per prompt)")
    host = _host(tp)
    if host is not None and not (np.isfinite(host).all() and (host > 0).all()):
        raise ValueError(f"tie_param must be finite and > 0 for ties={ties!r}")
    return tp


def _check_costs(costs: Any, m: int, dtype: Any) -> tuple[Any, np.ndarray | None]:
    """`(costs as a float array, their float64 host values or None under a trace)`; `dtype` is the dtype
    the kernels compute in (the costs must fit it)."""
    costs, host = _float_array_host(costs, "costs")
    if costs.ndim != 1 or costs.shape[0] == 0 or costs.shape[0] != m:
        raise ValueError(f"costs must have shape [{m}] (one per model), got {describe(costs)}")
    if host is not None:
        if not np.isfinite(host).all():
            raise ValueError("costs must be finite (one cost per model); it holds NaN or inf")
        if (host < 0).any():
            raise ValueError(f"costs must be >= 0, got {host.min()!r} for model {int(host.argmin())}")
        big = float(np.finfo(dtype).max)
        if host.max() > big:
            raise ValueError(
                f"costs overflows {np.dtype(dtype).name}: the largest cost {host.max():g} is above {big:g}; "
                "express the costs in larger units (only their ratios and differences matter)"
            )
    return costs, host


def _check_budget(
    budget: Any, cost_host: np.ndarray | None, batch_shape: tuple[int, ...] | None
) -> tuple[Any, np.ndarray | None]:
    """`(budget as a float array, its float64 host values or None)`; feasibility is checked in float64."""
    if isinstance(budget, bool):
        raise TypeError("budget must be a number or a float array, got bool")
    b, host = _float_array_host(budget, "budget")
    if batch_shape is None:
        if b.ndim != 0:
            raise ValueError(f"budget must be a scalar (a budget on the average cost), got {describe(b)}")
    else:
        _check_batch_shape(b, "budget", b.shape, batch_shape, "[] (a scalar) or the batch shape (one per prompt)")
    if host is not None:
        if np.isnan(host).any():
            raise ValueError("budget must not be NaN")
        if cost_host is not None and (host < cost_host.min()).any():
            raise ValueError(
                f"budget {host.min():.17g} is below the cheapest model's cost {cost_host.min():.17g}: "
                "no policy is feasible"
            )
    return b, host


def _lp_frame(costs: Any, cost_host: np.ndarray | None, b: Any, b_host: np.ndarray | None, dtype: Any):
    """Costs and budget as the LP kernels see them: `(c - min c) / s` and `(C - min c) / s`, `s` the power of
    two at or above the cost range (1 when all costs are equal; a power of two scales exactly), cast to `dtype`.

    Since `sum(pi) = 1`, shifting every cost and the budget by the same amount, or scaling them by the same
    positive factor, leaves the LP unchanged; this frame keeps the costs in [0, 1], so costs sharing a large
    offset (1e8 and 1e8 + 10), tiny costs (subnormal in float32) and wide ones keep their differences in
    float32. Done in float64 on the host when the values are known, in `dtype` under a trace. A budget
    below the cheapest cost becomes negative (the kernels return NaN); `inf` stays `inf`.
    """
    if cost_host is not None:
        lo = float(cost_host.min())
        span = float(cost_host.max()) - lo
        mant, exp = math.frexp(span)  # span = mant * 2**exp, mant in [0.5, 1)
        scale = math.ldexp(1.0, exp - 1 if mant == 0.5 else exp) if span > 0 else 1.0  # 2**ceil(log2(span))
        c_lp = np.asarray((cost_host - lo) / scale, dtype)
        if b_host is not None:
            with np.errstate(over="ignore"):
                b_lp = np.asarray((b_host - lo) / scale, dtype)
        else:
            b_lp = (jnp.asarray(b).astype(dtype) - lo) / scale
        return c_lp, b_lp
    c = jnp.asarray(costs).astype(dtype)
    lo = jnp.min(c)
    span = jnp.max(c) - lo
    scale = jnp.where(span > 0, jnp.exp2(jnp.ceil(jnp.log2(jnp.where(span > 0, span, 1.0)))), 1.0).astype(dtype)
    return (c - lo) / scale, (jnp.asarray(b).astype(dtype) - lo) / scale


# --------------------------------------------------------------------------------------------------
# Win probabilities.


_GROUNDED = "grounded-rao-kupper"  # P2L's grounded RK: not shift-invariant, needs theta_b besides delta


def _pair_probabilities(beta: jax.Array, ties: str, tp: jax.Array | None) -> jax.Array:
    """Outcome probabilities of i (slot a) against m (slot b) from the shared likelihoods, float[..., M, M, K]:
    `[P(i wins), P(m wins), P(tie)]` (K = 3), plus `P(tie (bothbad))` for the grounded model (K = 4)."""
    delta = beta[..., :, None] - beta[..., None, :]
    kwargs = {}
    if tp is not None:
        kwargs["tie_param"] = jnp.asarray(tp, delta.dtype)[..., None, None]
    if ties == _GROUNDED:
        kwargs["theta_b"] = jnp.broadcast_to(beta[..., None, :], delta.shape)
    return _bt.outcome_probabilities(delta, ties=ties, **kwargs)


def _score(probs: jax.Array) -> jax.Array:
    # Every outcome that is neither a win nor a loss (a tie, a "both bad" tie) is worth half a win.
    return probs[..., 0] + 0.5 * jnp.sum(probs[..., 2:], axis=-1)


def _expected_scores(beta: jax.Array, ties: str, tp: jax.Array | None) -> jax.Array:
    """`s[..., i, m] = P(i beats m) + P(tie) / 2` from the shared likelihoods, float[..., M, M]."""
    return _score(_pair_probabilities(beta, ties, tp))


def win_probabilities(
    beta: Any, *, opponent: Any = None, ties: str = "bt", tie_param: Any = None
) -> jax.Array:
    r"""Expected score of each model against an opponent drawn from `opponent`, per prompt.

    `W_i = sum_m q_m [P(i beats m) + P(tie) / 2]` with the probabilities of
    `jaxrank.ratings.outcome_probabilities` at `delta = beta_i - beta_m`; for `"bt"` (no ties)
    `W_i = sum_m q_m sigmoid(beta_i - beta_m)`. The opponent may be model i itself (`m = i` keeps its
    weight `q_i`), which scores exactly 1/2 under every tie model: the router plays against the opponent
    distribution whatever it picks, as in P2L.

    Args:
        beta: float[..., M] natural-log Bradley–Terry coefficients (one row per prompt).
        opponent: optional float[M], or float[..., M] with leading axes broadcasting to `beta.shape[:-1]`
            (one distribution per prompt), non-negative opponent weights `q`, normalised to sum 1;
            default uniform over the M models.
        ties: `"bt"` (= `"drop"`, no ties), `"bt-tie"` (= `"half"`, predicts no ties either), or any tie
            model of `jaxrank.ratings` (`"rao-kupper"`, `"davidson"`, ...) whose ties count half.
        tie_param: the tie parameter (RK `alpha`, Davidson `nu`; > 0), scalar or one per prompt
            (shape `beta.shape[:-1]`); required for the tie models, ignored otherwise.

    Returns:
        float32[..., M] expected scores in [0, 1] (float64 when `beta` is float64 under x64).

    Raises:
        ValueError: unknown `ties`, bad shapes, non-finite `beta`, negative or all-zero `opponent`,
            missing or non-positive `tie_param`.

    Example:
        >>> win_probabilities(jnp.array([[0.0, 1.0]]))   # [[(0.5 + s(-1)) / 2, (0.5 + s(1)) / 2]]
    """
    ties = _check_ties_name(ties)
    beta = _check_beta(beta)
    batch = tuple(beta.shape[:-1])
    m = beta.shape[-1]
    q = _check_distribution(opponent, "opponent", m, batch, "model")
    tp = _check_tie_param(tie_param, ties, batch)
    return _win_probabilities(beta, q, tp, ties=ties)


@functools.partial(jax.jit, static_argnames=("ties",))
def _win_probabilities(beta, q, tp, *, ties):
    scores = _expected_scores(beta, ties, tp)
    # Multiply-and-sum rather than a dot: a float32 dot may run in TF32 on GPUs (10-bit mantissa).
    return jnp.sum(scores * _normalise(q.astype(scores.dtype))[..., None, :], axis=-1)


# --------------------------------------------------------------------------------------------------
# The per-prompt LP: at most two models, all O(M^2) candidate pairs at once.


def _policy(w: jax.Array, costs: jax.Array, budget: jax.Array) -> jax.Array:
    """Exact LP optimum for one prompt: w float[M], costs float[M], budget float scalar -> float[M]."""
    m = w.shape[0]
    dtype = w.dtype
    costs = costs.astype(dtype)
    budget = budget.astype(dtype)
    # Vertices of {pi >= 0, sum pi = 1, pi.c <= C}: the affordable pure policies e_i, and on each edge
    # e_i -> e_j with c_i <= C < c_j the point of cost exactly C (weight s on j).
    pure_ok = costs <= budget
    ci, cj = costs[:, None], costs[None, :]
    wi, wj = w[:, None], w[None, :]
    span = jnp.where(cj > ci, cj - ci, 1.0)
    s = jnp.where(cj > ci, (budget - ci) / span, 0.0)
    # A pair only helps when j is strictly better than i (otherwise e_i is as good and cheaper) and the
    # mix puts positive weight on j.
    pair_ok = (ci <= budget) & (cj > budget) & (wj > wi) & (s > 0)
    pair_val = wi + s * (wj - wi)
    neg = jnp.asarray(-jnp.inf, dtype)
    values = jnp.concatenate([jnp.where(pure_ok, w, neg), jnp.where(pair_ok, pair_val, neg).reshape(-1)])
    cand_cost = jnp.concatenate([costs, jnp.broadcast_to(budget, (m * m,))])
    # Deterministic ties: within a few ulps of the best value, the cheapest candidate, then the first
    # (pure candidates come first, then pairs in (i, j) row-major order).
    best = jnp.max(values)
    tol = 4 * jnp.finfo(dtype).eps * jnp.maximum(1.0, jnp.abs(best))
    near = values >= best - tol
    cheapest = jnp.min(jnp.where(near, cand_cost, jnp.inf))
    k = jnp.argmax(near & (cand_cost <= cheapest))
    is_pure = k < m
    pk = jnp.maximum(k - m, 0)
    i = jnp.where(is_pure, k, pk // m)
    j = jnp.where(is_pure, k, pk % m)
    frac = jnp.where(is_pure, 0.0, s[i, j]).astype(dtype)
    policy = jax.nn.one_hot(i, m, dtype=dtype) * (1 - frac) + jax.nn.one_hot(j, m, dtype=dtype) * frac
    feasible = jnp.isfinite(best)
    return jnp.where(feasible, policy, jnp.nan)


@jax.jit
def _policy_batch(w, costs, budget):
    batch = w.shape[:-1]
    wf = w.reshape((-1, w.shape[-1]))
    bf = jnp.broadcast_to(budget.astype(w.dtype), batch).reshape(-1)
    out = jax.vmap(_policy, in_axes=(0, None, 0))(wf, costs, bf)
    return out.reshape(w.shape)


def optimal_policy(win_prob: Any, costs: Any, budget: Any) -> jax.Array:
    r"""The exact solution of the routing LP, for every prompt at once.

    `max_pi pi . w  s.t.  pi . c <= C,  sum(pi) = 1,  pi >= 0`. The optimum is a vertex of the feasible
    set: either the best affordable model (`c_i <= C`) alone, or a mix of an affordable model i and a
    dearer, better model j (`c_j > C`, `w_j > w_i`) with weight `s = (C - c_i) / (c_j - c_i)` on j, which
    spends exactly C. All M affordable singletons and M^2 pairs are evaluated at once (infeasible ones
    masked) and the best is kept; among values within 4 ulps of the best the cheaper policy wins, then the
    lower candidate index, so the result is deterministic. At most two entries are non-zero.

    Args:
        win_prob: float[..., M] per-prompt expected scores `w` (e.g. from `win_probabilities`).
        costs: float[M] per-model costs, finite and >= 0 (duplicates are fine).
        budget: the budget C, a scalar or float[...] (one per prompt, broadcasting with
            `win_prob.shape[:-1]`, i.e. its shape broadcasts *to* the batch shape); `inf` means no limit.

    Returns:
        float32[..., M] policies. Under `jit` with a traced budget below `min(costs)` (which cannot be
        checked at trace time) the rows are NaN.

    Costs and budget enter the kernel shifted by `min(costs)` and scaled by the cost range (which leaves
    the LP unchanged, as `sum(pi) = 1`), computed in float64 on the host when their values are known:
    float64 costs that differ only past float32's precision (1e8 and 1e8 + 10) keep their order and the
    feasibility check (`budget >= min(costs)`) is exact in float64.

    Raises:
        ValueError: budget below `min(costs)` (infeasible), negative / NaN / inf costs, costs that overflow
            the compute dtype (float32: above 3.4e38), NaN budget, NaN or +-inf `win_prob`, shapes that
            do not match.

    Example:
        >>> optimal_policy(jnp.array([0.3, 0.5, 0.7]), jnp.array([1.0, 2.0, 4.0]), 3.0)  # [0, .5, .5]
    """
    w = as_array(win_prob, "win_prob")
    if not hasattr(w, "dtype"):
        raise TypeError(f"win_prob must be an array, got {type(w).__name__}")
    check_float(w, "win_prob")
    if w.ndim < 1 or w.shape[-1] == 0:
        raise ValueError(f"win_prob must have shape [..., M] with M >= 1, got {describe(w)}")
    host = _host(w)
    if host is not None and not np.isfinite(host).all():
        raise ValueError("win_prob must be finite (the objective's coefficients); it contains NaN or +-inf")
    w = _to_float(w)
    costs, cost_host = _check_costs(costs, w.shape[-1], w.dtype)
    b, b_host = _check_budget(budget, cost_host, tuple(w.shape[:-1]))
    c_lp, b_lp = _lp_frame(costs, cost_host, b, b_host, w.dtype)
    return _policy_batch(w, c_lp, b_lp)


# --------------------------------------------------------------------------------------------------
# The router.


class RoutingResult(NamedTuple):
    """A routing decision for P prompts.

    Attributes:
        policy: float32[P, M] probability of sending each prompt to each model (at most two non-zeros
            per prompt for `route`; in all for `route_average_budget`, at most one prompt mixes).
        win_prob: float32[P, M] the expected scores `w` the policy was optimised for.
        expected_win_rate: float32[P] `policy . w` per prompt.
        expected_cost: float32[P] `policy . c` per prompt.
        chosen: int32[P] the model with the largest weight (the lower index on an exact tie): the
            deterministic route; sample from `policy` to realise the mix.
    """

    policy: jax.Array
    win_prob: jax.Array
    expected_win_rate: jax.Array
    expected_cost: jax.Array
    chosen: jax.Array

    def to_frame(self, models=None, prompt_ids=None):
        """pandas DataFrame, one row per prompt: `prompt, chosen, expected_win_rate, expected_cost` and one
        `p_<model>` column per model (the policy); `models` / `prompt_ids` name them (default: indices)."""
        import pandas as pd

        policy = np.asarray(self.policy, np.float64)
        p, m = policy.shape
        names = [str(x) for x in models] if models is not None else [str(i) for i in range(m)]
        if len(names) != m:
            raise ValueError(f"models must name the {m} models of the policy, got {len(names)}")
        chosen = np.asarray(self.chosen, np.int64)
        frame = pd.DataFrame({"prompt": list(prompt_ids) if prompt_ids is not None else np.arange(p),
                              "chosen": [names[i] for i in chosen],
                              "expected_win_rate": np.asarray(self.expected_win_rate, np.float64),
                              "expected_cost": np.asarray(self.expected_cost, np.float64)})
        for j, name in enumerate(names):
            frame[f"p_{name}"] = policy[:, j]
        return frame


def _summarise(policy, w, costs) -> RoutingResult:
    return RoutingResult(
        policy=policy,
        win_prob=w,
        expected_win_rate=jnp.sum(policy * w, axis=-1),
        expected_cost=jnp.sum(policy * costs.astype(policy.dtype), axis=-1),
        chosen=jnp.argmax(policy, axis=-1).astype(jnp.int32),
    )


@functools.partial(jax.jit, static_argnames=("ties", "chunk_size"))
def _route_jit(beta, costs, c_lp, budget, q, tp, *, ties, chunk_size):
    p = beta.shape[0]
    budget = jnp.broadcast_to(budget.astype(beta.dtype), (p,))
    tp_rows = None if tp is None else jnp.broadcast_to(tp.astype(beta.dtype), (p,))
    q_rows = jnp.broadcast_to(q.astype(beta.dtype), beta.shape)

    def one(args):
        b, c_budget, qq, t = args
        w = _win_probabilities(b, qq, t, ties=ties)
        return _policy(w, c_lp.astype(w.dtype), c_budget), w

    policy, w = jax.lax.map(one, (beta, budget, q_rows, tp_rows), batch_size=chunk_size or p)
    return _summarise(policy, w, costs)


def route(
    beta: Any,
    costs: Any,
    budget: Any,
    *,
    opponent: Any = None,
    ties: str = "bt",
    tie_param: Any = None,
    chunk_size: int | None = None,
) -> RoutingResult:
    r"""Route each prompt: the cost-constrained policy maximising the expected win rate (per-prompt budget).

    For every prompt p: `w_p = win_probabilities(beta_p)`, then `pi_p = optimal_policy(w_p, c, C_p)`:
    `max pi.w_p s.t. pi.c <= C_p` exactly, mixing at most two models. For a budget on the *average* cost
    over the prompts (the P2L paper's setting) use `route_average_budget`.

    Args:
        beta: float[P, M] per-prompt coefficients (P2L's output).
        costs: float[M] per-model costs (e.g. dollars per query), finite and >= 0.
        budget: C, a scalar or float[P] (per prompt); >= min(costs); `inf` means no limit.
        opponent: optional float[M] opponent weights q (default uniform); see `win_probabilities`.
        ties: likelihood of the coefficients: `"bt"`, `"bt-tie"`, `"rao-kupper"`, `"davidson"`, ...
        tie_param: tie parameter, scalar or float[P]; required for the tie models.
        chunk_size: optional number of prompts per vectorised block (memory is O(chunk * M^2));
            default all P at once.

    Returns:
        `RoutingResult(policy [P, M], win_prob [P, M], expected_win_rate [P], expected_cost [P], chosen [P])`.

    Raises:
        ValueError: see `win_probabilities` and `optimal_policy`; `chunk_size` not a positive int.

    Example:
        >>> res = route(beta, jnp.array([0.1, 1.0, 5.0]), 1.0)   # doctest: +SKIP
        >>> res.chosen, res.expected_win_rate                     # doctest: +SKIP
    """
    ties = _check_ties_name(ties)
    beta = _check_beta(beta, ndim=2)
    p, m = beta.shape
    if chunk_size is not None and not (isinstance(chunk_size, int) and not isinstance(chunk_size, bool) and chunk_size >= 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    q = _check_distribution(opponent, "opponent", m, (p,), "model")
    tp = _check_tie_param(tie_param, ties, (p,))
    costs, cost_host = _check_costs(costs, m, beta.dtype)
    b, b_host = _check_budget(budget, cost_host, (p,))
    if p == 0:
        raise ValueError("beta has no prompts (shape [0, M]); nothing to route")
    c_lp, b_lp = _lp_frame(costs, cost_host, b, b_host, beta.dtype)
    chunk = None if chunk_size is None else min(chunk_size, p)
    return _route_jit(beta, costs, c_lp, b_lp, q, tp, ties=ties, chunk_size=chunk)


# --------------------------------------------------------------------------------------------------
# Average budget over prompts: the multiple-choice knapsack LP, solved exactly on upper-hull edges.


def _upper_hull(w: jax.Array, costs: jax.Array, order: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Vertices of the upper-left concave hull of the points (c_m, w_m), cheapest first.

    Starts at the best of the cheapest models and ends at the cheapest of the best; costs and w strictly
    increase along it and its edge slopes strictly decrease. Returns (indices int32[M], size).
    """
    m = w.shape[0]

    def below(stack, size, c_new, w_new):
        u, t = stack[size - 2], stack[size - 1]
        # t lies on or under the segment u -> new: it is never the unique Lagrangian optimum.
        return (w[t] - w[u]) * (c_new - costs[u]) <= (w_new - w[u]) * (costs[t] - costs[u])

    def step(carry, idx):
        stack, size = carry
        c_new, w_new = costs[idx], w[idx]
        top = stack[jnp.maximum(size - 1, 0)]
        skip = (size > 0) & (w_new <= w[top])
        # Same cost, strictly better: the top is dominated.
        size = jnp.where(~skip & (size > 0) & (c_new == costs[top]), size - 1, size)

        def cond(sz):
            return (~skip) & (sz >= 2) & below(stack, sz, c_new, w_new)

        size = jax.lax.while_loop(cond, lambda sz: sz - 1, size)
        stack = jnp.where(skip, stack, stack.at[size].set(idx))
        size = jnp.where(skip, size, size + 1)
        return (stack, size), None

    (stack, size), _ = jax.lax.scan(step, (jnp.zeros((m,), jnp.int32), jnp.asarray(0, jnp.int32)), order)
    return stack, size


@jax.jit
def _average_jit(w, cost_out, costs, budget, weights):
    """`costs` / `budget` in the LP frame (`_lp_frame`); `cost_out` the costs reported in `expected_cost`."""
    p, m = w.shape
    dtype = w.dtype
    costs = costs.astype(dtype)
    budget = budget.astype(dtype)
    weights = weights.astype(dtype)
    # A traced budget below min(costs) (negative in the LP frame) cannot raise: NaN, as `route` does.
    feasible = budget >= 0
    if m == 1:
        return _summarise(jnp.where(feasible, jnp.ones_like(w), jnp.nan), w, cost_out)
    order = jnp.argsort(costs, stable=True).astype(jnp.int32)
    stack, size = jax.vmap(_upper_hull, in_axes=(0, None, None))(w, costs, order)  # [P, M], [P]
    # Edge k of prompt p goes from hull vertex k to k + 1.
    k = jnp.arange(m - 1)
    valid = k[None, :] + 1 < size[:, None]
    v0, v1 = stack[:, :-1], stack[:, 1:]
    d_cost = jnp.where(valid, costs[v1] - costs[v0], 0.0)
    d_win = jnp.where(valid, jnp.take_along_axis(w, v1, 1) - jnp.take_along_axis(w, v0, 1), 0.0)
    slope = jnp.where(valid, d_win / jnp.where(valid, d_cost, 1.0), -jnp.inf)
    # Slopes decrease along a hull; the running minimum keeps rounding from reordering a prompt's edges.
    slope = jax.lax.cummin(slope, axis=1)
    # Greedy: start every prompt at its cheapest hull vertex, buy edges by decreasing gain per unit cost.
    weights = _normalise(weights)
    base = jnp.sum(weights * costs[stack[:, 0]])
    left = budget - base
    flat_slope = slope.reshape(-1)
    srt = jnp.argsort(-flat_slope, stable=True)
    edge_cost = (weights[:, None] * d_cost).reshape(-1)[srt]
    edge_valid = valid.reshape(-1)[srt]
    cum = jnp.cumsum(edge_cost)
    # Valid edges come first (invalid ones have slope -inf) and cum is non-decreasing, so the edges bought
    # in full are a prefix; the next valid edge, if any, is bought in part.
    full = edge_valid & (cum <= left)
    n_full = jnp.sum(full).astype(jnp.int32)
    nxt = jnp.minimum(n_full, full.shape[0] - 1)
    prev = jnp.where(n_full > 0, cum[jnp.maximum(n_full - 1, 0)], 0.0)
    has_partial = (n_full < full.shape[0]) & edge_valid[nxt] & (edge_cost[nxt] > 0)
    frac = jnp.clip((left - prev) / jnp.where(has_partial, edge_cost[nxt], 1.0), 0.0, 1.0)
    frac = jnp.where(has_partial, frac, 0.0)
    # Back to prompts: the number of edges each prompt bought, and the one fractional edge.
    owner = (srt // (m - 1)).astype(jnp.int32)
    bought = jax.ops.segment_sum(full.astype(jnp.int32), owner, num_segments=p)
    partial_owner = jnp.where(has_partial, owner[nxt], -1)
    f = jnp.where(jnp.arange(p) == partial_owner, frac, 0.0).astype(dtype)
    lo = jnp.take_along_axis(stack, bought[:, None], 1)[:, 0]
    hi = jnp.take_along_axis(stack, jnp.minimum(bought + 1, m - 1)[:, None], 1)[:, 0]
    policy = jax.nn.one_hot(lo, m, dtype=dtype) * (1 - f)[:, None] + jax.nn.one_hot(hi, m, dtype=dtype) * f[:, None]
    return _summarise(jnp.where(feasible, policy, jnp.nan), w, cost_out)


def route_average_budget(
    beta: Any,
    costs: Any,
    budget: Any,
    *,
    prompt_weights: Any = None,
    opponent: Any = None,
    ties: str = "bt",
    tie_param: Any = None,
) -> RoutingResult:
    r"""Route a set of prompts with the budget on the *average* cost (P2L's router), exactly.

    `max sum_p omega_p pi_p . w_p  s.t.  sum_p omega_p pi_p . c <= C,  pi_p in the simplex`, with prompt
    weights `omega` (normalised to sum 1; default uniform). Its Lagrangian decouples over prompts with one
    shared multiplier lambda (each prompt takes `argmax_m w_pm - lambda c_m`), so the solution is the
    greedy of the multiple-choice knapsack LP: every prompt starts at its cheapest upper-hull vertex of
    `{(c_m, w_pm)}` and hull edges are bought across prompts by decreasing slope `dw / dc` (= lambda) until
    the budget is spent, the last edge fractionally. The result spends the budget exactly (or less, when
    every prompt already has its best model), mixes two models on at most one prompt, and is optimal:
    both ends of the split edge maximise the Lagrangian at the final lambda. O(P M log(P M)).

    Args:
        beta: float[P, M] per-prompt coefficients.
        costs: float[M] per-model costs, finite and >= 0.
        budget: scalar C on the weighted average cost, >= min(costs).
        prompt_weights: optional float[P] non-negative prompt weights (default uniform).
        opponent, ties, tie_param: as in `route`.

    Returns:
        `RoutingResult` (see `route`); `expected_cost` is per prompt, its `prompt_weights`-average is <= C.
        Under `jit` with a traced budget below `min(costs)` (which cannot be checked at trace time) the
        policy (and so the win rates and costs) is NaN, as for `route`.

    Raises:
        ValueError: as in `route`; a non-scalar budget.

    Example:
        >>> res = route_average_budget(beta, costs, 1.0)          # doctest: +SKIP
        >>> float(res.expected_cost.mean())                       # <= 1.0  # doctest: +SKIP
    """
    ties = _check_ties_name(ties)
    beta = _check_beta(beta, ndim=2)
    p, m = beta.shape
    if p == 0:
        raise ValueError("beta has no prompts (shape [0, M]); nothing to route")
    q = _check_distribution(opponent, "opponent", m, (p,), "model")
    tp = _check_tie_param(tie_param, ties, (p,))
    costs, cost_host = _check_costs(costs, m, beta.dtype)
    b, b_host = _check_budget(budget, cost_host, None)
    omega = _check_distribution(prompt_weights, "prompt_weights", p, (), "prompt")
    if omega.ndim != 1:
        raise ValueError(f"prompt_weights must have shape [{p}], got {describe(omega)}")
    w = _win_probabilities(beta, q, tp, ties=ties)
    c_lp, b_lp = _lp_frame(costs, cost_host, b, b_host, beta.dtype)
    return _average_jit(w, costs, c_lp, b_lp, omega)


# --------------------------------------------------------------------------------------------------
# The router's own rating.


def router_scores(
    beta: Any,
    policy: Any,
    *,
    prompt_weights: Any = None,
    ties: str = "bt",
    tie_param: Any = None,
) -> jax.Array:
    r"""Prompt-averaged expected score of the router against each model, float32[M].

    `S_m = sum_p omega_p sum_i pi_pi s(i, m | beta_p)`, `s = P(win) + P(tie) / 2`: the router is an extra
    competitor that answers prompt p with model i with probability `pi_pi`. Mirror matches (i = m) count
    1/2, as in `win_probabilities`, so `sum_m q_m S_m` is the routing objective averaged over prompts.

    Args:
        beta: float[P, M] per-prompt coefficients.
        policy: float[P, M] the router's policy (rows sum to 1, e.g. `route(...).policy`).
        prompt_weights: optional float[P] prompt weights (default uniform), normalised to sum 1.
        ties, tie_param: as in `win_probabilities`.

    Returns:
        float32[M] `S_m` in [0, 1] (float64 when `beta` is float64 under x64).

    Raises:
        ValueError: unknown `ties`, `beta` not [P, M] or not finite, `policy` not [P, M] or rows that are
            not distributions, negative or all-zero `prompt_weights`, missing or non-positive `tie_param`.

    Example:
        >>> router_scores(beta, route(beta, costs, 1.0).policy)   # doctest: +SKIP
    """
    beta, policy, omega, tp, ties = _router_inputs(beta, policy, prompt_weights, ties, tie_param)
    return _score(_router_outcomes(beta, policy, omega, tp, ties=ties, mirror=True))


def _router_inputs(beta, policy, prompt_weights, ties, tie_param):
    ties = _check_ties_name(ties)
    beta = _check_beta(beta, ndim=2)
    p, m = beta.shape
    policy = _check_policy(policy, p, m)
    tp = _check_tie_param(tie_param, ties, (p,))
    omega = _check_distribution(prompt_weights, "prompt_weights", p, (), "prompt")
    if omega.ndim != 1:
        raise ValueError(f"prompt_weights must have shape [{p}], got {describe(omega)}")
    return beta, policy, omega, tp, ties


def _check_policy(policy: Any, p: int, m: int) -> jax.Array:
    policy = _float_array(policy, "policy")
    if tuple(policy.shape) != (p, m):
        raise ValueError(f"policy must have shape [P, M] = ({p}, {m}) like beta, got {describe(policy)}")
    host = _host(policy)
    if host is not None:
        if not np.isfinite(host).all() or (host < 0).any():
            raise ValueError("policy must be finite and >= 0 (a distribution over models per prompt)")
        if np.abs(host.sum(-1) - 1).max() > 1e-4:
            raise ValueError(f"policy rows must sum to 1, got sums off by up to {np.abs(host.sum(-1) - 1).max():.3g}")
    return policy


@functools.partial(jax.jit, static_argnames=("ties", "mirror"))
def _router_outcomes(beta, policy, omega, tp, *, ties, mirror):
    """float[M, K]: the router's prompt-averaged outcome probabilities against each model (router in slot a).

    With `mirror=False` the mirror matches (the router answering with model m itself against m) are left
    out, so row m sums to the probability that a battle against m happens."""
    probs = _pair_probabilities(beta, ties, tp)  # [P, M(i), M(m), K]
    if not mirror:
        m = beta.shape[-1]
        probs = probs * (1.0 - jnp.eye(m, dtype=probs.dtype))[None, :, :, None]
    policy, omega = policy.astype(probs.dtype), omega.astype(probs.dtype)
    # Multiply-and-sum, not dots: no TF32 on GPUs.
    per_prompt = jnp.sum(policy[:, :, None, None] * probs, axis=1)  # [P, M, K]
    return jnp.sum(_normalise(omega)[:, None, None] * per_prompt, axis=0)


@functools.partial(jax.jit, static_argnames=("ties",))
def _solve_rating(outcomes, ratings, q, tp, init, k, *, ties):
    """Root of the derivative of `L(r) = sum_m q_m sum_o S_mo log P_o(r - theta_m)` (router in slot a), by
    bisection in natural-log units, returned on the Elo scale; +-inf when the router surely wins / loses."""
    dtype = outcomes.dtype
    theta = (ratings.astype(dtype) - init) / k
    q = _normalise(q.astype(dtype))
    # "drop" / "half" predict no ties: the soft label S_win + S_tie / 2 under "half" is the Bradley–Terry
    # cross-entropy, whatever the tie column holds.
    lik = "half" if ties in ("drop", "half") else ties
    codes = jnp.arange(outcomes.shape[-1], dtype=jnp.int32)

    def objective(r):
        delta = (r - theta)[:, None]
        kwargs = {} if tp is None else {"tie_param": tp}
        if ties == _GROUNDED:
            kwargs["theta_b"] = theta[:, None]
        lp = _bt.outcome_log_probs(delta, codes[None, :], ties=lik, **kwargs)  # [M, K]
        return jnp.sum(q[:, None] * jnp.where(outcomes > 0, outcomes * lp, 0.0))

    slope = jax.grad(objective)
    lo = jnp.min(theta) - 40.0
    hi = jnp.max(theta) + 40.0

    def body(_, bounds):
        a, b = bounds
        mid = 0.5 * (a + b)
        up = slope(mid) > 0
        return jnp.where(up, mid, a), jnp.where(up, b, mid)

    a, b = jax.lax.fori_loop(0, 64, body, (lo.astype(dtype), hi.astype(dtype)))
    r = 0.5 * (a + b)
    r = jnp.where(slope(hi) > 0, jnp.inf, jnp.where(slope(lo) < 0, -jnp.inf, r))
    # No battle at all (M = 1, or the router only ever meets its own pick): no rating.
    r = jnp.where(jnp.sum(q[:, None] * outcomes) > 0, r, jnp.nan)
    return init + k * r


def router_rating(
    beta: Any,
    policy: Any,
    model_ratings: Any,
    *,
    model_tie_param: Any = None,
    opponent: Any = None,
    prompt_weights: Any = None,
    ties: str = "bt",
    tie_param: Any = None,
    scale: float = 400.0,
    base: float = 10.0,
    init: float = 1000.0,
) -> jax.Array:
    r"""The router's rating on the Elo scale of the aggregate leaderboard.

    The router is an extra competitor: against model m on prompt p it answers with model i != m with
    probability `pi_pi` and reaches outcome o (win, loss, tie, both bad) with probability
    `sum_{i != m} pi_pi P_o(i vs m | beta_p)`; averaged over prompts (weights `omega`) that is `S_mo`.
    Mirror matches (the router picking m itself against m) are not battles and are left out, as the
    aggregate leaves out the pairs (m, m). Holding the models at their aggregate ratings `R = init + k theta`
    (`k = scale / ln(base)`, the `BTResult.ratings` convention) — the leaderboard of the same prompt
    distribution: one coefficient vector (and tie parameter) fit to the `omega`-average of the per-prompt
    outcome probabilities over the ordered model pairs, as P2L aggregates — the router's log-strength r
    maximises the same likelihood with the models fixed:

        r = argmax_r  sum_m q_m sum_o S_mo log P_o(r - theta_m; model_tie_param),

    and the result is `init + k r`. For `"bt"` / `"bt-tie"` this is the Bradley–Terry cross-entropy with
    soft labels (a tie is half a win): the root of
    `sum_m q_m [S_m,win + S_m,tie / 2 - n_m sigmoid(r - theta_m)] = 0`, `n_m = sum_o S_mo` the probability
    that a battle against m happens. For the tie models the likelihood is theirs. The objective is concave
    in r for the shift-invariant models; r is found by bisection on its slope.

    Consistency: a router that always picks model j gets exactly `R_j` when R (and `model_tie_param`)
    is that aggregate fit with uniform pair weights and `opponent` uniform: the aggregate's stationarity
    condition for `theta_j` is this equation (every tie model here is symmetric in its two slots).

    Args:
        beta: float[P, M] per-prompt coefficients.
        policy: float[P, M] the router's policy.
        model_ratings: float[M] the models' aggregate ratings in Elo points. For the shift-invariant
            models any offset works (r moves with it); for `"grounded-rao-kupper"` (absolute strengths)
            they must be `init + k theta` with the aggregate's uncentred theta.
        model_tie_param: the aggregate's fitted tie parameter (RK alpha, Davidson nu); required for the
            tie models, ignored for `"bt"` / `"bt-tie"`. (`tie_param` is the per-prompt one of `beta`.)
        opponent: optional float[M] weights q over the opponents (default uniform, as the aggregate).
        prompt_weights: optional float[P] prompt weights omega (default uniform).
        ties, tie_param: likelihood of `beta` and its per-prompt tie parameter.
        scale, base, init: the Elo scale (400, 10, 1000), as in `fit_bradley_terry`.

    Returns:
        float32 scalar rating (+inf / -inf when the router surely wins / loses every comparison; NaN when
        it never meets a model other than its own pick, e.g. M = 1).

    Raises:
        ValueError: bad shapes, a policy whose rows are not distributions, bad scale/base/init, a missing
            `model_tie_param`.

    Example:
        >>> res = route(beta, costs, 1.0)                                             # doctest: +SKIP
        >>> router_rating(beta, res.policy, aggregate.ratings)                        # doctest: +SKIP
    """
    scale, base, init = check_elo_scale(scale, base, init)
    beta, policy, omega, tp, ties = _router_inputs(beta, policy, prompt_weights, ties, tie_param)
    p, m = beta.shape
    ratings = _float_array(model_ratings, "model_ratings")
    if tuple(ratings.shape) != (m,):
        raise ValueError(f"model_ratings must have shape [M] = ({m},), one Elo rating per model, got {describe(ratings)}")
    host = _host(ratings)
    if host is not None and not np.isfinite(host).all():
        raise ValueError("model_ratings must be finite")
    model_tp = None
    if ties not in ("drop", "half"):
        if model_tie_param is None:
            raise ValueError(
                f"model_tie_param is required for ties={ties!r}: the aggregate leaderboard's fitted tie parameter"
            )
        model_tp = _float_array(model_tie_param, "model_tie_param")
        if model_tp.ndim != 0:
            raise ValueError(f"model_tie_param must be a scalar, got {describe(model_tp)}")
        mhost = _host(model_tp)
        if mhost is not None and not (np.isfinite(mhost) and mhost > 0):
            raise ValueError(f"model_tie_param must be finite and > 0, got {float(mhost)!r}")
    q = _check_distribution(opponent, "opponent", m, (), "model")
    if q.ndim != 1:
        raise ValueError(f"opponent must have shape [{m}] for router_rating, got {describe(q)}")
    k = scale / math.log(base)
    outcomes = _router_outcomes(beta, policy, omega, tp, ties=ties, mirror=False)
    return _solve_rating(outcomes, ratings, q, model_tp, float(init), k, ties=ties)
