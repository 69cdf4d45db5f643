"""Routing on P2L coefficients: the exact budget LP against scipy's HiGHS, win probabilities against a
float64 NumPy reference, the router's rating, and the error messages."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linprog, minimize

from jaxrank.routing import (
    ROUTING_TIES,
    optimal_policy,
    route,
    route_average_budget,
    router_rating,
    router_scores,
    win_probabilities,
)

# Tolerances, set once. The kernels compute in float32 (eps 1.2e-7); every reference is float64.
LP_TOL = 1e-6  # objective vs HiGHS on win rates in [0, 1]: float32 rounding of w and of the mix weight (~1e-7)
#                plus HiGHS's own primal/dual feasibility tolerance (1e-7).
SUM_TOL = 1e-6  # policy rows sum to 1: (1 - s) + s in float32 is off by a few ulps at most.
BUDGET_RTOL = 1e-6  # per-prompt cost vs budget, relative to the cost range: the mix weight s is rounded to float32.
AVG_BUDGET_RTOL = 1e-5  # average cost vs budget: the greedy's float32 cumulative sum over P * M hull edges.
PROB_ATOL = 2e-6  # win probabilities vs the float64 formulas: float32 sigmoids averaged over M <= 5 opponents.
SAME_ATOL = 1e-7  # two paths through the same float32 kernel (chunked vs not, route vs optimal_policy): ~1 ulp.
SUM_ATOL = 1e-6  # float32 dot products of a policy with w or c (M <= 5 terms, values <= 3): a few ulps.
ELO_TOL = 1e-2  # router rating vs an exactly known rating (Elo points): 64 float32 bisection steps on r ~ 1e3 / k.
ELO_REF_TOL = 2e-2  # router rating vs a float64 BFGS aggregate fit (gtol 1e-11..1e-12), in float32: ~1e-4 nat.
ELO_ORDER_TOL = 1e-3  # "router >= best fixed model": both ratings from the same float32 bisection.
K_ELO = 400.0 / math.log(10.0)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _lp_value(w, costs, budget):
    """HiGHS on max w.pi s.t. c.pi <= C, sum pi = 1, pi >= 0 (float64)."""
    m = len(w)
    kw = {} if not np.isfinite(budget) else {"A_ub": costs[None, :], "b_ub": [budget]}
    res = linprog(-w, A_eq=np.ones((1, m)), b_eq=[1.0], bounds=[(0, None)] * m, method="highs", **kw)
    assert res.status == 0, res.message
    return -res.fun


def _random_instances(rng, m, p):
    """Costs with duplicates and zeros, win rates with exact ties, budgets at, between and above costs."""
    costs_list = [
        rng.uniform(0.0, 10.0, m),
        np.round(rng.uniform(0.0, 4.0, m)),  # many duplicates, zeros possible
        np.sort(rng.uniform(0.1, 2.0, m)),
    ]
    out = []
    for costs in costs_list:
        w = rng.uniform(0.0, 1.0, (p, m))
        w[::3] = np.round(w[::3], 1)  # exact ties between models
        kinds = rng.integers(0, 4, p)
        lo, hi = costs.min(), costs.max()
        budget = np.where(
            kinds == 0,
            rng.choice(costs, p),  # exactly at a model's cost
            np.where(kinds == 1, rng.uniform(lo, hi, p) if hi > lo else lo, np.where(kinds == 2, hi + 1.0, lo)),
        )
        out.append((costs.astype(np.float32), w.astype(np.float32), budget.astype(np.float32)))
    return out


@pytest.mark.parametrize("m", [1, 2, 3, 5, 8])
def test_lp_matches_linprog(m):
    rng = np.random.default_rng(100 + m)
    n = 0
    for costs, w, budget in _random_instances(rng, m, p=16):
        policy = np.asarray(optimal_policy(w, costs, budget), np.float64)  # all prompts in one call
        assert policy.shape == w.shape
        for p in range(w.shape[0]):
            pi, wp, c, cb = policy[p], w[p].astype(np.float64), costs.astype(np.float64), float(budget[p])
            assert abs(pi @ wp - _lp_value(wp, c, cb)) <= LP_TOL
            assert abs(pi.sum() - 1) <= SUM_TOL
            assert (pi >= 0).all()
            assert pi @ c <= cb + BUDGET_RTOL * max(1.0, cb)
            assert (pi > 0).sum() <= 2
            n += 1
    assert n == 48


def test_lp_unbounded_budget_and_batch_shapes():
    rng = np.random.default_rng(1)
    costs = np.array([3.0, 1.0, 2.0, 1.0], np.float32)
    w = rng.uniform(size=(2, 3, 4)).astype(np.float32)
    for budget in (np.float32(3.0), np.float32(np.inf), np.full((2, 3), 5.0, np.float32)):
        policy = np.asarray(optimal_policy(w, costs, budget))
        # No binding budget: the best model alone.
        np.testing.assert_array_equal(policy, np.eye(4, dtype=np.float32)[w.argmax(-1)])
    # A budget per prompt that broadcasts over the leading axis.
    policy = np.asarray(optimal_policy(w, costs, np.array([[1.0], [2.0]], np.float32)))
    for idx in np.ndindex(2, 3):
        cb = 1.0 if idx[0] == 0 else 2.0
        assert abs(policy[idx] @ w[idx] - _lp_value(w[idx].astype(np.float64), costs.astype(np.float64), cb)) <= LP_TOL


def test_lp_worked_example_and_ties():
    # Budget 3 between the costs 2 and 4: half of model 1, half of model 2 (spends exactly 3).
    np.testing.assert_allclose(optimal_policy(jnp.array([0.3, 0.5, 0.7]), jnp.array([1.0, 2.0, 4.0]), 3.0), [0, 0.5, 0.5])
    # Equal win rates: the cheaper model, even when the dearer one is affordable.
    np.testing.assert_array_equal(optimal_policy(jnp.array([0.6, 0.6]), jnp.array([2.0, 1.0]), 5.0), [0, 1])
    # Identical models (same w and cost): the lower index.
    np.testing.assert_array_equal(optimal_policy(jnp.array([0.2, 0.6, 0.6]), jnp.array([1.0, 2.0, 2.0]), 2.0), [0, 1, 0])
    # A mix worth no more than a cheaper pure model is not taken.
    np.testing.assert_array_equal(optimal_policy(jnp.array([0.5, 0.5, 0.4]), jnp.array([0.0, 9.0, 1.0]), 4.0), [1, 0, 0])
    # Budget at the cheapest cost: the cheapest model, whatever the others' win rates.
    np.testing.assert_array_equal(optimal_policy(jnp.array([0.9, 0.1]), jnp.array([5.0, 1.0]), 1.0), [0, 1])


def test_lp_under_jit_and_vmap():
    costs = jnp.array([1.0, 2.0, 4.0])
    f = jax.jit(lambda w, b: optimal_policy(w, costs, b))
    w = jnp.array([[0.3, 0.5, 0.7], [0.9, 0.5, 0.7]])
    np.testing.assert_allclose(f(w, jnp.array([3.0, 3.0])), [[0, 0.5, 0.5], [1, 0, 0]])
    # A traced infeasible budget cannot raise: its row is NaN.
    out = np.asarray(f(w, jnp.array([0.5, 3.0])))
    assert np.isnan(out[0]).all() and np.isfinite(out[1]).all()
    g = jax.vmap(lambda ww: optimal_policy(ww, costs, 3.0))
    np.testing.assert_allclose(g(w), [[0, 0.5, 0.5], [1, 0, 0]])
    # Traced costs too: the shift and scale of the LP frame happen in the graph.
    h = jax.jit(lambda c, b: optimal_policy(w, c, b))
    out = np.asarray(h(jnp.array([101.0, 102.0, 104.0]), jnp.array([103.0, 100.0])))
    np.testing.assert_allclose(out[0], [0, 0.5, 0.5])
    assert np.isnan(out[1]).all()


# --------------------------------------------------------------------------------------------------
# Win probabilities.


def _ref_outcomes(beta, ties, tp):
    """float64 NumPy [P(i wins), P(m wins), P(tie), (P(both bad))] of i (slot a) vs m, [..., M, M, K]."""
    d = beta[..., :, None] - beta[..., None, :]
    tp = np.asarray(tp, np.float64)[..., None, None]
    if ties == "rao-kupper":
        pa, pb = _sigmoid(d - tp), _sigmoid(-d - tp)
        return np.stack([pa, pb, 1 - pa - pb], -1)
    # grounded Rao–Kupper (P2L): a fixed competitor at beta = 0 wins when both are bad; t = e^alpha.
    pi_a, pi_b, t = np.exp(beta[..., :, None]), np.exp(beta[..., None, :]), np.exp(tp)
    pa, pb = pi_a / (pi_a + t * pi_b + 1), pi_b / (pi_b + t * pi_a + 1)
    pbb = 1 / (1 + pi_a + pi_b)
    return np.stack([pa, pb, 1 - pa - pb - pbb, pbb], -1)


def _ref_scores(beta, ties, tp):
    """float64 NumPy expected score s[..., i, m] = P(win) + P(tie) / 2, written from the formulas."""
    d = beta[..., :, None] - beta[..., None, :]
    if ties in ("bt", "bt-tie", "drop", "half"):
        return _sigmoid(d)
    tp = np.asarray(tp, np.float64)[..., None, None]
    if ties == "rao-kupper":
        pa, pb = _sigmoid(d - tp), _sigmoid(-d - tp)
    else:  # davidson
        z = np.exp(d / 2) + np.exp(-d / 2) + tp
        pa, pb = np.exp(d / 2) / z, np.exp(-d / 2) / z
    return pa + 0.5 * (1 - pa - pb)


@pytest.mark.parametrize("ties", ["bt", "bt-tie", "rao-kupper", "davidson"])
def test_win_probabilities_reference(ties):
    rng = np.random.default_rng(7)
    beta = rng.normal(0, 1.5, (6, 5)).astype(np.float32)
    q = rng.uniform(0, 1, 5).astype(np.float32)
    tp = rng.uniform(0.2, 1.5, 6).astype(np.float32) if ties in ("rao-kupper", "davidson") else None
    s = _ref_scores(beta.astype(np.float64), ties, tp)
    got_uniform = win_probabilities(beta, ties=ties, tie_param=tp)
    got_q = win_probabilities(beta, opponent=q, ties=ties, tie_param=tp)
    np.testing.assert_allclose(got_uniform, s.mean(-1), rtol=0, atol=PROB_ATOL)
    np.testing.assert_allclose(got_q, s @ (q / q.sum()), rtol=0, atol=PROB_ATOL)
    # Self-play is counted and worth exactly 1/2: against itself alone, a model scores 1/2.
    only_0 = np.eye(5, dtype=np.float32)[0]
    np.testing.assert_allclose(win_probabilities(beta, opponent=only_0, ties=ties, tie_param=tp)[:, 0], 0.5, atol=SAME_ATOL)


def test_win_probabilities_hand_example():
    # beta = (0, ln 3): P(1 beats 0) = 3/4; uniform opponent incl. itself: (1/2 + 3/4) / 2.
    w = win_probabilities(jnp.array([0.0, math.log(3.0)]))
    np.testing.assert_allclose(w, [(0.5 + 0.25) / 2, (0.5 + 0.75) / 2], atol=SAME_ATOL)
    # Only model 0 as the opponent.
    np.testing.assert_allclose(win_probabilities(jnp.array([0.0, math.log(3.0)]), opponent=[1.0, 0.0]), [0.5, 0.75], atol=SAME_ATOL)


# --------------------------------------------------------------------------------------------------
# The router.


def test_route_is_the_lp_per_prompt():
    rng = np.random.default_rng(3)
    beta = rng.normal(0, 1, (9, 4)).astype(np.float32)
    costs = np.array([0.5, 1.0, 1.0, 3.0], np.float32)
    budget = rng.uniform(0.5, 3.5, 9).astype(np.float32)
    res = route(beta, costs, budget, opponent=[1, 1, 2, 0])
    w = win_probabilities(beta, opponent=[1, 1, 2, 0])
    np.testing.assert_allclose(res.win_prob, w, atol=SAME_ATOL)
    np.testing.assert_allclose(res.policy, optimal_policy(w, costs, budget), atol=SAME_ATOL)
    np.testing.assert_allclose(res.expected_win_rate, np.sum(np.asarray(res.policy) * np.asarray(w), -1), atol=SUM_ATOL)
    np.testing.assert_allclose(res.expected_cost, np.asarray(res.policy) @ costs, atol=SUM_ATOL)
    np.testing.assert_array_equal(res.chosen, np.asarray(res.policy).argmax(-1))
    chunked = route(beta, costs, budget, opponent=[1, 1, 2, 0], chunk_size=4)
    np.testing.assert_allclose(chunked.policy, res.policy, atol=SAME_ATOL)
    # A budget above every cost routes each prompt to its best model.
    top = route(beta, costs, np.full(9, 10.0, np.float32), opponent=[1, 1, 2, 0])
    np.testing.assert_array_equal(top.chosen, np.asarray(w).argmax(-1))


def _stacked_lp(w, costs, budget, omega):
    # (1 + 1e-9): sum(omega) is 1 only up to rounding, which HiGHS's presolve calls infeasible at C = min(c).
    p, m = w.shape
    a_eq = np.kron(np.eye(p), np.ones((1, m)))
    a_ub = (omega[:, None] * costs[None, :]).reshape(1, -1)
    res = linprog(-(omega[:, None] * w).reshape(-1), A_ub=a_ub, b_ub=[budget * (1 + 1e-9)], A_eq=a_eq, b_eq=np.ones(p),
                  bounds=[(0, None)] * (p * m), method="highs")
    assert res.status == 0, res.message
    return -res.fun


def test_route_average_budget_matches_linprog():
    rng = np.random.default_rng(11)
    n = 0
    for trial in range(12):
        beta = rng.normal(0, 1, (7, 5)).astype(np.float32)
        costs = (np.round(rng.uniform(0, 3, 5)) if trial % 2 else rng.uniform(0.1, 5, 5)).astype(np.float32)
        omega = None if trial % 3 == 0 else rng.uniform(0, 1, 7).astype(np.float32)
        lo, hi = float(costs.min()), float(costs.max())
        for budget in (lo, lo + (hi - lo) * rng.uniform(), float(np.median(costs)), hi + 1.0):
            res = route_average_budget(beta, costs, budget, prompt_weights=omega)
            pol = np.asarray(res.policy, np.float64)
            w = np.asarray(res.win_prob, np.float64)
            om = np.full(7, 1 / 7) if omega is None else omega.astype(np.float64) / omega.astype(np.float64).sum()
            value = float(om @ np.sum(pol * w, -1))
            assert abs(value - _stacked_lp(w, costs.astype(np.float64), budget, om)) <= LP_TOL
            np.testing.assert_allclose(pol.sum(-1), 1, atol=SUM_TOL)
            assert (pol >= 0).all()
            assert om @ (pol @ costs) <= budget + AVG_BUDGET_RTOL * max(1.0, budget)
            assert ((pol > 0).sum(-1) >= 2).sum() <= 1  # at most one prompt mixes
            assert ((pol > 0).sum(-1) <= 2).all()
            n += 1
    assert n == 48


def test_route_average_budget_single_prompt_and_one_model():
    rng = np.random.default_rng(5)
    beta = rng.normal(0, 1, (1, 4)).astype(np.float32)
    costs = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    a = route_average_budget(beta, costs, 2.5)
    b = route(beta, costs, 2.5)
    np.testing.assert_allclose(a.expected_win_rate, b.expected_win_rate, atol=LP_TOL)
    one = route_average_budget(beta[:, :1], costs[:1], 1.0)
    np.testing.assert_array_equal(one.policy, [[1.0]])


# --------------------------------------------------------------------------------------------------
# The router's rating.


def _aggregate_ratings(beta, q, omega):
    """float64 aggregate leaderboard: one theta fit to the omega-average of the per-prompt win
    probabilities, ordered pairs weighted q_i q_m (the P2L aggregation), as Elo points (mean 1000)."""
    pbar = np.einsum("p,pim->im", omega, _sigmoid(beta[:, :, None] - beta[:, None, :]))
    pair = q[:, None] * q[None, :]

    def f(theta):
        s = _sigmoid(theta[:, None] - theta[None, :])
        loss = -np.sum(pair * (pbar * np.log(s) + (1 - pbar) * np.log1p(-s)))
        grad = pair * (s - pbar)
        return loss, grad.sum(1) - grad.sum(0)

    theta = minimize(f, np.zeros(beta.shape[1]), jac=True, method="BFGS", options={"gtol": 1e-12}).x
    return 1000.0 + K_ELO * (theta - theta.mean())


def test_router_rating_fixed_router_identical_prompts():
    # Identical prompts: the aggregate leaderboard is the per-prompt one; a router always picking model j
    # is model j: rating 1000 + k (beta_j - mean beta). beta = (0, ln 2, ln 4): ratings 1000 + k ln2 (j - 1).
    beta = np.tile(np.array([0.0, math.log(2.0), math.log(4.0)], np.float32), (5, 1))
    ratings = 1000.0 + K_ELO * math.log(2.0) * np.array([-1.0, 0.0, 1.0])
    for j in range(3):
        policy = np.zeros((5, 3), np.float32)
        policy[:, j] = 1
        assert abs(float(router_rating(beta, policy, ratings)) - ratings[j]) < ELO_TOL


def test_router_rating_fixed_router_heterogeneous_prompts():
    rng = np.random.default_rng(2)
    beta = rng.normal(0, 1.2, (10, 4))
    q = rng.uniform(0.2, 1, 4)
    omega = rng.uniform(0.2, 1, 10)
    ratings = _aggregate_ratings(beta, q / q.sum(), omega / omega.sum())
    for j in range(4):
        policy = np.zeros((10, 4), np.float32)
        policy[:, j] = 1
        r = router_rating(beta.astype(np.float32), policy, ratings.astype(np.float32), opponent=q.astype(np.float32),
                          prompt_weights=omega.astype(np.float32))
        assert abs(float(r) - ratings[j]) < ELO_REF_TOL
    # router_scores against the float64 reference.
    pol = rng.dirichlet(np.ones(4), 10)
    ref = np.einsum("p,pi,pim->m", omega / omega.sum(), pol, _sigmoid(beta[:, :, None] - beta[:, None, :]))
    got = router_scores(beta.astype(np.float32), pol.astype(np.float32), prompt_weights=omega.astype(np.float32))
    np.testing.assert_allclose(got, ref, atol=PROB_ATOL)


def _tie_aggregate(beta, alpha, ties):
    """float64 aggregate with a tie model: theta and alpha fit to the prompt-average of the per-prompt outcome
    probabilities over every ordered pair i != m (uniform), P2L's aggregation; ratings 1000 + k theta."""
    m = beta.shape[1]
    qbar = _ref_outcomes(beta, ties, alpha).mean(0)  # [M, M, K]
    off = ~np.eye(m, dtype=bool)

    def f(x):
        probs = _ref_outcomes(x[None, :m], ties, np.exp(x[m:]))[0]
        return -np.sum(qbar[off] * np.log(probs[off]))

    x0 = np.concatenate([beta.mean(0), [np.log(alpha.mean())]])
    x = minimize(f, x0, method="BFGS", options={"gtol": 1e-11}).x
    return 1000.0 + K_ELO * x[:m], float(np.exp(x[m]))


def _grounded_available():
    from jaxrank.ratings import TIE_MODELS

    return "grounded-rao-kupper" in TIE_MODELS


@pytest.mark.parametrize("ties", ["rao-kupper", "grounded-rao-kupper"])
def test_router_rating_fixed_router_tie_models(ties):
    if ties == "grounded-rao-kupper" and not _grounded_available():
        pytest.skip("grounded Rao–Kupper is not in jaxrank.ratings.TIE_MODELS on this branch (it comes with P2L)")
    rng = np.random.default_rng(8)
    beta = rng.normal(0, 1.0, (6, 4))
    alpha = rng.uniform(0.3, 1.0, 6)
    # Per-prompt outcome probabilities against the float64 reference, through the expected scores.
    got = win_probabilities(beta.astype(np.float32), ties=ties, tie_param=alpha.astype(np.float32))
    s = _ref_outcomes(beta, ties, alpha)
    np.testing.assert_allclose(got, (s[..., 0] + 0.5 * s[..., 2:].sum(-1)).mean(-1), atol=PROB_ATOL)
    ratings, alpha_agg = _tie_aggregate(beta, alpha, ties)
    for j in range(4):
        policy = np.eye(4, dtype=np.float32)[np.full(6, j)]
        r = router_rating(beta.astype(np.float32), policy, ratings.astype(np.float32), model_tie_param=alpha_agg,
                          ties=ties, tie_param=alpha.astype(np.float32))
        assert abs(float(r) - ratings[j]) < ELO_REF_TOL


def test_router_never_worse_than_best_fixed_model_at_same_cost():
    # Shapes as in test_route_is_the_lp_per_prompt: the compiled router is reused.
    rng = np.random.default_rng(4)
    beta = rng.normal(0, 1.5, (9, 4)).astype(np.float32)
    costs = np.array([0.2, 0.5, 1.0, 4.0], np.float32)
    ratings = _aggregate_ratings(beta.astype(np.float64), np.full(4, 0.25), np.full(9, 1 / 9)).astype(np.float32)
    for budget in (0.5, 1.5, 4.0):
        res = route(beta, costs, np.full(9, budget, np.float32))
        r = float(router_rating(beta, res.policy, ratings))
        affordable = np.flatnonzero(costs <= budget)
        best_fixed = max(float(router_rating(beta, np.eye(4, dtype=np.float32)[np.full(9, j)], ratings)) for j in affordable)
        assert r >= best_fixed - ELO_ORDER_TOL
        # The per-prompt policy is feasible for the average budget, so that optimum is at least as good.
        avg = route_average_budget(beta, costs, budget)
        assert float(avg.expected_win_rate.mean()) >= float(res.expected_win_rate.mean()) - LP_TOL


# --------------------------------------------------------------------------------------------------
# Errors: named arguments, raised before compilation.


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: optimal_policy(jnp.array([0.3, 0.5]), jnp.array([1.0, 2.0]), 0.5), "below the cheapest"),
        (lambda: optimal_policy(jnp.array([0.3, 0.5]), jnp.array([-1.0, 2.0]), 1.0), "costs must be >= 0"),
        (lambda: optimal_policy(jnp.array([0.3, 0.5]), jnp.array([np.nan, 2.0]), 1.0), "costs must be finite"),
        (lambda: optimal_policy(jnp.array([0.3, 0.5]), jnp.array([1.0, 2.0, 3.0]), 1.0), r"costs must have shape \[2\]"),
        (lambda: optimal_policy(jnp.array([0.3, 0.5]), jnp.array([1.0, 2.0]), np.nan), "budget must not be NaN"),
        (lambda: optimal_policy(jnp.array([[0.3, 0.5]] * 2), jnp.array([1.0, 2.0]), jnp.ones(3)), r"budget must have shape \[\] \(a scalar\) or the batch shape"),
        (lambda: optimal_policy(jnp.array([0.3, np.nan]), jnp.array([1.0, 2.0]), 1.0), "win_prob must be finite"),
        (lambda: optimal_policy(jnp.zeros((3, 0)), jnp.zeros(0), 1.0), "win_prob must have shape"),
        (lambda: win_probabilities(jnp.zeros(3), ties="bogus"), "ties must be one of"),
        (lambda: win_probabilities(jnp.zeros(3), ties="rao-kupper"), "tie_param is required"),
        (lambda: win_probabilities(jnp.zeros(3), ties="davidson", tie_param=-1.0), "tie_param must be finite and > 0"),
        (lambda: win_probabilities(jnp.zeros(3), opponent=[1.0, -1.0, 1.0]), "opponent must be >= 0"),
        (lambda: win_probabilities(jnp.zeros(3), opponent=[1.0, 1.0]), r"opponent must have shape \[3\]"),
        (lambda: win_probabilities(jnp.array([0.0, np.inf])), "beta must be finite"),
        (lambda: route(jnp.zeros(3), jnp.ones(3), 1.0), r"beta must have shape \[P, M\]"),
        (lambda: route(jnp.zeros((2, 3)), jnp.ones(3), 1.0, chunk_size=0), "chunk_size"),
        (lambda: route_average_budget(jnp.zeros((2, 3)), jnp.ones(3), jnp.ones(2)), "budget must be a scalar"),
        (lambda: route_average_budget(jnp.zeros((2, 3)), jnp.ones(3), 1.0, prompt_weights=[0.0, 0.0]), "prompt_weights must have a positive sum"),
        (lambda: router_rating(jnp.zeros((2, 3)), jnp.ones((2, 3)), jnp.zeros(3)), "policy rows must sum to 1"),
        (lambda: router_rating(jnp.zeros((2, 3)), jnp.ones((2, 3)) / 3, jnp.zeros(2)), r"model_ratings must have shape \[M\]"),
        (lambda: router_rating(jnp.zeros((2, 3)), jnp.ones((3, 3)) / 3, jnp.zeros(3)), r"policy must have shape \[P, M\]"),
        (lambda: router_rating(jnp.zeros((2, 3)), jnp.ones((2, 3)) / 3, jnp.zeros(3), base=1.0), "base must not be 1"),
        (lambda: router_rating(jnp.zeros((2, 3)), jnp.ones((2, 3)) / 3, jnp.zeros(3), ties="rao-kupper", tie_param=0.5),
         "model_tie_param is required"),
        # Per-prompt arguments must broadcast *to* the batch shape, not merely with it.
        (lambda: route(np.zeros((3, 4), np.float32), np.ones(4, np.float32), np.full((3, 1), 1.5, np.float32)),
         r"budget must have shape .* broadcasting to the batch shape \(3,\)"),
        (lambda: optimal_policy(np.zeros((3, 4), np.float32), np.ones(4, np.float32), np.full((3, 1), 1.5, np.float32)),
         r"budget must have shape .* broadcasting to the batch shape \(3,\)"),
        (lambda: route(np.zeros((3, 4), np.float32), np.ones(4, np.float32), 1.5, ties="rao-kupper",
                       tie_param=np.full((3, 1), 0.5, np.float32)), r"tie_param must have shape .* \(3,\)"),
        (lambda: win_probabilities(np.zeros((3, 4), np.float32), opponent=np.ones((3, 1, 4), np.float32)),
         r"opponent must have shape .* broadcasting to the batch shape \(3,\)"),
        (lambda: route_average_budget(np.zeros((3, 4), np.float32), np.ones(4, np.float32), 1.5,
                                      opponent=np.ones((2, 4), np.float32)), r"opponent must have shape .* \(3,\)"),
        (lambda: optimal_policy(np.array([np.inf, 0.5], np.float32), np.array([1.0, 2.0]), 2.0), "win_prob must be finite"),
        (lambda: optimal_policy(np.array([-np.inf, 0.5], np.float32), np.array([1.0, 2.0]), 1.0), "win_prob must be finite"),
        # float64 values are checked before the cast to float32.
        (lambda: optimal_policy(np.array([0.3, 0.6]), np.array([1.0, 2.0]), 1.0 - 1e-9), "below the cheapest"),
        (lambda: optimal_policy(np.array([0.3, 0.6]), np.array([1.0, 1e39]), 2.0), "costs overflows float32"),
        (lambda: router_rating(jnp.zeros((2, 3)), jnp.ones((2, 3)) / 3, jnp.zeros(3), scale=np.float32(0)),
         "scale must be a finite number > 0"),
        (lambda: router_rating(jnp.zeros((2, 3)), jnp.ones((2, 3)) / 3, jnp.zeros(3), init=np.inf), "init must be a finite"),
    ],
)
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_type_errors_and_tie_names():
    with pytest.raises(TypeError, match="win_prob must have a floating-point dtype"):
        optimal_policy(jnp.array([1, 2]), jnp.array([1.0, 2.0]), 1.0)
    with pytest.raises(TypeError, match="beta must have a floating-point dtype"):
        win_probabilities(jnp.array([1, 2]))
    assert {"bt", "bt-tie", "rao-kupper", "davidson"} <= set(ROUTING_TIES)


# --------------------------------------------------------------------------------------------------
# Regressions: traced budgets, float64 inputs, tie-breaks, the hull, infinite ratings.


def test_average_budget_traced_infeasible_budget_is_nan():
    rng = np.random.default_rng(12)
    beta = rng.normal(0, 1, (7, 5)).astype(np.float32)  # the shapes of the linprog test: eager calls reuse its compile
    costs = np.array([0.5, 1.0, 2.0, 3.0, 1.0], np.float32)
    f = jax.jit(lambda b: route_average_budget(beta, costs, b))
    bad = f(jnp.float32(0.1))  # below min(costs): cannot raise under jit, so NaN (as route / optimal_policy)
    assert np.isnan(np.asarray(bad.policy)).all() and np.isnan(np.asarray(bad.expected_cost)).all()
    ok = f(jnp.float32(1.5))
    np.testing.assert_allclose(ok.policy, route_average_budget(beta, costs, 1.5).policy, atol=SAME_ATOL)
    assert np.isfinite(np.asarray(ok.policy)).all()
    # A traced budget exactly at min(costs) is feasible.
    assert np.isfinite(np.asarray(f(jnp.float32(0.5)).policy)).all()


def test_float64_costs_and_budget_keep_their_precision():
    w = np.array([0.3, 0.6], np.float32)
    # Costs 1e8 and 1e8 + 10 are equal in float32; the budget 1e8 + 5 affords half of the dearer model.
    costs = np.array([1e8, 1e8 + 10.0])
    pol = np.asarray(optimal_policy(w, costs, 1e8 + 5.0), np.float64)
    np.testing.assert_allclose(pol, [0.5, 0.5], atol=SAME_ATOL)
    assert pol @ costs <= 1e8 + 5.0 + BUDGET_RTOL * 10.0
    # Subnormal in float32 (flushed to zero by XLA on CPU): the differences still count.
    pol = np.asarray(optimal_policy(w, np.array([1e-40, 3e-40]), 2e-40))
    np.testing.assert_allclose(pol, [0.5, 0.5], atol=SAME_ATOL)
    # Costs above float32's largest value are rejected, not turned into inf.
    with pytest.raises(ValueError, match="costs overflows float32"):
        route(np.zeros((2, 2), np.float32), np.array([1.0, 1e39]), 2.0)


def test_average_budget_costs_with_a_large_offset():
    # Costs 1e6 + [0, 3): in float32 the differences keep 3 bits less than the win rates need; the LP frame
    # (costs - min) keeps them. Objective vs HiGHS on the same problem with the offset removed in float64.
    rng = np.random.default_rng(13)
    beta = rng.normal(0, 1, (7, 5)).astype(np.float32)
    offset = 1e6
    rel = rng.uniform(0, 3, 5)
    for budget_rel in (0.7, 1.4):
        res = route_average_budget(beta, offset + rel, offset + budget_rel)
        pol, w = np.asarray(res.policy, np.float64), np.asarray(res.win_prob, np.float64)
        om = np.full(7, 1 / 7)
        value = float(om @ np.sum(pol * w, -1))
        assert abs(value - _stacked_lp(w, rel - rel.min(), budget_rel - rel.min(), om)) <= LP_TOL
        assert om @ (pol @ rel) <= budget_rel + AVG_BUDGET_RTOL
        per_prompt = route(beta, offset + rel, np.full(7, offset + budget_rel))
        pol = np.asarray(per_prompt.policy, np.float64)
        for p in range(7):
            assert abs(pol[p] @ w[p] - _lp_value(w[p], rel, budget_rel)) <= LP_TOL
            assert pol[p] @ rel <= budget_rel + BUDGET_RTOL * np.ptp(rel)


def test_lp_tie_break_prefers_the_cheaper_model_within_4_ulps():
    # Model 1 is better by 4e-7 (< 4 float32 eps = 4.8e-7): a rounding difference, the cheaper model 0 wins.
    costs = np.array([1.0, 2.0], np.float32)
    close = np.array([0.5, 0.5 + 4e-7], np.float32)
    np.testing.assert_array_equal(optimal_policy(close, costs, 2.0), [1.0, 0.0])
    # Better by 6e-7 (> 4 eps): a real difference, model 1 wins.
    far = np.array([0.5, 0.5 + 6e-7], np.float32)
    np.testing.assert_array_equal(optimal_policy(far, costs, 2.0), [0.0, 1.0])
    # The same for a mix within 4 ulps of a cheaper pure model: the pure model.
    w = np.array([0.5, 0.5 + 4e-7, 0.5 + 8e-7], np.float32)
    np.testing.assert_array_equal(optimal_policy(w, np.array([1.0, 3.0, 5.0], np.float32), 3.0), [1.0, 0.0, 0.0])


def test_upper_hull_drops_collinear_points():
    from jaxrank.routing import _upper_hull

    # (0, .25), (.5, .5), (1, .75) are collinear (exactly, in float32): the middle point is never the unique
    # Lagrangian optimum, so the hull is the two ends and its slopes strictly decrease.
    w = jnp.array([0.25, 0.5, 0.75, 0.6], jnp.float32)
    costs = jnp.array([0.0, 0.5, 1.0, 0.75], jnp.float32)
    stack, size = _upper_hull(w, costs, jnp.argsort(costs, stable=True).astype(jnp.int32))
    assert int(size) == 2
    np.testing.assert_array_equal(np.asarray(stack)[:2], [0, 2])


# Near-collinear hulls (found by search) whose float32 edge slopes come out in the wrong order: the running
# minimum over a prompt's slopes keeps its edges bought in hull order. Exact float32 values, as hex:
# (w [3], costs [3], budget); costs in [0, 1) with max > 1/2 are their own LP frame (shift 0, scale 1).
_REORDERED_SLOPES = [
    (("0x1.10f3f6p-3", "0x1.b779b2p-2", "0x1.1c89a2p-1"), ("0x0p+0", "0x1.497ae2p-1", "0x1.d66810p-1"), "0x1.31aaa0p-1"),
    (("0x1.37deb4p-3", "0x1.1f38a2p-1", "0x1.52c26ep-1"), ("0x0p+0", "0x1.5d706ep-1", "0x1.b38126p-1"), "0x1.04c8f0p-1"),
    (("0x1.42e5fep-2", "0x1.989e56p-1", "0x1.d62670p-1"), ("0x0p+0", "0x1.722412p-1", "0x1.ce4926p-1"), "0x1.15371cp-1"),
]


def test_average_budget_edges_bought_in_hull_order():
    from jaxrank.routing import _average_jit

    def f32(xs):
        return np.array([float.fromhex(x) for x in xs], np.float32)

    for w_hex, c_hex, b_hex in _REORDERED_SLOPES:
        w, costs, budget = f32(w_hex)[None], f32(c_hex), f32([b_hex])[0]
        res = _average_jit(w, costs, costs, budget, np.ones(1, np.float32))
        pol = np.asarray(res.policy, np.float64)[0]
        c64 = costs.astype(np.float64)
        assert pol @ c64 <= budget + AVG_BUDGET_RTOL
        assert abs(pol @ w[0] - _lp_value(w[0].astype(np.float64), c64, float(budget))) <= LP_TOL


def test_router_rating_infinite_when_the_router_surely_loses():
    # Model 2 loses every comparison with probability 1 in float32 (sigmoid(-200) = 0): a router always
    # picking it has no finite maximum-likelihood rating.
    beta = np.array([[0.0, 0.0, -200.0]] * 2, np.float32)
    policy = np.eye(3, dtype=np.float32)[[2, 2]]
    assert float(router_rating(beta, policy, np.full(3, 1000.0, np.float32))) == -np.inf
    # A router always picking model 0 is rated: finite.
    assert np.isfinite(float(router_rating(beta, np.eye(3, dtype=np.float32)[[0, 0]], np.full(3, 1000.0, np.float32))))


def test_route_tie_model_with_per_prompt_tie_param_and_opponent():
    rng = np.random.default_rng(14)
    beta = rng.normal(0, 1, (9, 4))
    costs = np.array([0.5, 1.0, 1.0, 3.0])
    budget = rng.uniform(0.5, 3.5, 9)
    tp = rng.uniform(0.2, 1.2, 9)  # one tie parameter per prompt (P2L's tie head)
    opp = rng.uniform(0, 1, (9, 4))  # one opponent distribution per prompt
    res = route(beta.astype(np.float32), costs.astype(np.float32), budget.astype(np.float32), ties="davidson",
                tie_param=tp.astype(np.float32), opponent=opp.astype(np.float32))
    w_ref = np.einsum("pim,pm->pi", _ref_scores(beta, "davidson", tp), opp / opp.sum(-1, keepdims=True))
    np.testing.assert_allclose(res.win_prob, w_ref, rtol=0, atol=PROB_ATOL)
    pol = np.asarray(res.policy, np.float64)
    for p in range(9):
        assert abs(pol[p] @ w_ref[p] - _lp_value(w_ref[p], costs, budget[p])) <= LP_TOL
        assert pol[p] @ costs <= budget[p] + BUDGET_RTOL * np.ptp(costs)


def test_elo_scale_accepts_numpy_scalars():
    from jaxrank._validation import check_elo_scale
    from jaxrank import Votes
    from jaxrank.ratings import fit_bradley_terry

    assert check_elo_scale(np.float32(400), np.int64(10), np.float64(1000)) == (400.0, 10.0, 1000.0)
    for bad in (True, "400", np.array([400.0])):
        with pytest.raises(ValueError, match="scale must be a finite number > 0"):
            check_elo_scale(bad, 10, 1000)
    beta = np.array([[0.0, 0.5, 1.0]] * 2, np.float32)
    policy = np.eye(3, dtype=np.float32)[[2, 1]]
    ratings = np.array([990.0, 1000.0, 1010.0], np.float32)
    np.testing.assert_array_equal(router_rating(beta, policy, ratings, scale=np.float32(400), base=np.float32(10)),
                                  router_rating(beta, policy, ratings))
    # fit_bradley_terry uses the same checker: a NumPy scale passes it (the error is then max_iter's, before
    # any fitting).
    battles = Votes.from_arrays(np.array(["x", "y"]), np.array(["y", "x"]), np.array(["model_a", "tie"]))
    with pytest.raises(ValueError, match="max_iter"):
        fit_bradley_terry(battles, scale=np.float32(400), init=np.float64(1000), max_iter=0)
