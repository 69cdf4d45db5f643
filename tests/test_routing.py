"""Routing on P2L coefficients: the exact budget LP against scipy's HiGHS, win probabilities against a
float64 NumPy reference, the router's rating, and the error messages."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linprog, minimize

from jaxrank._routing import (
    ROUTING_TIES,
    optimal_policy,
    route,
    route_average_budget,
    router_rating,
    router_scores,
    win_probabilities,
)

LP_TOL = 1e-6  # objective vs HiGHS, on win rates in [0, 1]
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
            assert abs(pi.sum() - 1) <= 1e-6
            assert (pi >= 0).all()
            assert pi @ c <= cb + 1e-6 * max(1.0, cb)
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
    np.testing.assert_allclose(got_uniform, s.mean(-1), rtol=0, atol=2e-6)
    np.testing.assert_allclose(got_q, s @ (q / q.sum()), rtol=0, atol=2e-6)
    # Self-play is counted and worth exactly 1/2: against itself alone, a model scores 1/2.
    only_0 = np.eye(5, dtype=np.float32)[0]
    np.testing.assert_allclose(win_probabilities(beta, opponent=only_0, ties=ties, tie_param=tp)[:, 0], 0.5, atol=1e-7)


def test_win_probabilities_hand_example():
    # beta = (0, ln 3): P(1 beats 0) = 3/4; uniform opponent incl. itself: (1/2 + 3/4) / 2.
    w = win_probabilities(jnp.array([0.0, math.log(3.0)]))
    np.testing.assert_allclose(w, [(0.5 + 0.25) / 2, (0.5 + 0.75) / 2], atol=1e-7)
    # Only model 0 as the opponent.
    np.testing.assert_allclose(win_probabilities(jnp.array([0.0, math.log(3.0)]), opponent=[1.0, 0.0]), [0.5, 0.75], atol=1e-7)


# --------------------------------------------------------------------------------------------------
# The router.


def test_route_is_the_lp_per_prompt():
    rng = np.random.default_rng(3)
    beta = rng.normal(0, 1, (9, 4)).astype(np.float32)
    costs = np.array([0.5, 1.0, 1.0, 3.0], np.float32)
    budget = rng.uniform(0.5, 3.5, 9).astype(np.float32)
    res = route(beta, costs, budget, opponent=[1, 1, 2, 0])
    w = win_probabilities(beta, opponent=[1, 1, 2, 0])
    np.testing.assert_allclose(res.win_prob, w, atol=1e-7)
    np.testing.assert_allclose(res.policy, optimal_policy(w, costs, budget), atol=1e-7)
    np.testing.assert_allclose(res.expected_win_rate, np.sum(np.asarray(res.policy) * np.asarray(w), -1), atol=1e-6)
    np.testing.assert_allclose(res.expected_cost, np.asarray(res.policy) @ costs, atol=1e-6)
    np.testing.assert_array_equal(res.chosen, np.asarray(res.policy).argmax(-1))
    chunked = route(beta, costs, budget, opponent=[1, 1, 2, 0], chunk_size=4)
    np.testing.assert_allclose(chunked.policy, res.policy, atol=1e-7)
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
            np.testing.assert_allclose(pol.sum(-1), 1, atol=1e-6)
            assert (pol >= 0).all()
            assert om @ (pol @ costs) <= budget + 1e-5 * max(1.0, budget)
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
    np.testing.assert_allclose(a.expected_win_rate, b.expected_win_rate, atol=1e-6)
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
        assert abs(float(router_rating(beta, policy, ratings)) - ratings[j]) < 1e-2


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
        assert abs(float(r) - ratings[j]) < 2e-2
    # router_scores against the float64 reference.
    pol = rng.dirichlet(np.ones(4), 10)
    ref = np.einsum("p,pi,pim->m", omega / omega.sum(), pol, _sigmoid(beta[:, :, None] - beta[:, None, :]))
    got = router_scores(beta.astype(np.float32), pol.astype(np.float32), prompt_weights=omega.astype(np.float32))
    np.testing.assert_allclose(got, ref, atol=2e-6)


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
    np.testing.assert_allclose(got, (s[..., 0] + 0.5 * s[..., 2:].sum(-1)).mean(-1), atol=2e-6)
    ratings, alpha_agg = _tie_aggregate(beta, alpha, ties)
    for j in range(4):
        policy = np.eye(4, dtype=np.float32)[np.full(6, j)]
        r = router_rating(beta.astype(np.float32), policy, ratings.astype(np.float32), model_tie_param=alpha_agg,
                          ties=ties, tie_param=alpha.astype(np.float32))
        assert abs(float(r) - ratings[j]) < 2e-2


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
        assert r >= best_fixed - 1e-3
        # The per-prompt policy is feasible for the average budget, so that optimum is at least as good.
        avg = route_average_budget(beta, costs, budget)
        assert float(avg.expected_win_rate.mean()) >= float(res.expected_win_rate.mean()) - 1e-6


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
        (lambda: optimal_policy(jnp.array([[0.3, 0.5]] * 2), jnp.array([1.0, 2.0]), jnp.ones(3)), "budget must be a scalar or broadcast"),
        (lambda: optimal_policy(jnp.array([0.3, np.nan]), jnp.array([1.0, 2.0]), 1.0), "win_prob contains NaN"),
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
