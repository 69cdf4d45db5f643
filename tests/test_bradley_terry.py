"""Bradley–Terry fits: SciPy float64 references, evalica's golden scores, tie-model recovery, implicit
gradients vs finite differences, sharding, and bad input."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize
from scipy.special import expit, log_expit

from jaxrank import Votes, load_votes
from jaxrank.ratings import (
    TIE_MODELS,
    BTResult,
    bt_negative_log_likelihood,
    fit_bradley_terry,
    outcome_log_probs,
    outcome_probabilities,
    solve_bradley_terry,
    synthetic_votes,
)

ELO = 400.0 / math.log(10.0)  # Elo points per unit of theta
ELO_TOL = 0.01  # the bar: same ratings within 0.01 Elo points


# ------------------------------------------------------------------------------------------------
# Independent float64 NumPy reference: probabilities written in the original strength form.


GROUNDED = "grounded-rao-kupper"
SHIFT_INVARIANT = tuple(t for t in TIE_MODELS if t != GROUNDED)


def ref_outcome_probs(delta, ties, tie, theta_b=None):
    """[P(a), P(b), P(tie)] from the strengths pi = exp(theta), as in the original papers (grounded
    Rao–Kupper: [P(a), P(b), P(tie), P(tie (bothbad))] as in lmarena/p2l's `bag` loss)."""
    if ties == GROUNDED:
        pa, pb, t = np.exp(delta + theta_b), np.exp(theta_b), np.exp(tie)
        p_a = pa / (pa + t * pb + 1.0)
        p_b = pb / (pb + t * pa + 1.0)
        p_bb = 1.0 / (1.0 + pa + pb)
        return np.stack([p_a, p_b, 1.0 - p_a - p_b - p_bb, p_bb], -1)
    pa, pb = np.exp(delta / 2), np.exp(-delta / 2)  # pi_a, pi_b up to a common factor
    if ties in ("half", "drop"):
        p_a = pa / (pa + pb)
        return np.stack([p_a, 1 - p_a, np.zeros_like(p_a)], -1)
    if ties == "rao-kupper":  # Rao & Kupper (1967): theta_RK = exp(alpha)
        t = np.exp(tie)
        p_a = pa / (pa + t * pb)
        p_b = pb / (pb + t * pa)
        p_t = (t * t - 1) * pa * pb / ((pa + t * pb) * (pb + t * pa))
        return np.stack([p_a, p_b, p_t], -1)
    z = pa + pb + tie * np.sqrt(pa * pb)  # Davidson (1970)
    return np.stack([pa / z, pb / z, tie * np.sqrt(pa * pb) / z], -1)


def ref_log_probs(delta, outcome, ties, tie, theta_b=None):
    if ties == GROUNDED:
        p = ref_outcome_probs(delta, ties, tie, theta_b)
        with np.errstate(invalid="ignore"):  # 1 - sum cancels to <= 0 at the extremes (not compared there)
            return np.log(np.take_along_axis(p, np.broadcast_to(outcome, delta.shape)[..., None], -1)[..., 0])
    if ties in ("half", "drop"):
        lp_a, lp_b = log_expit(delta), log_expit(-delta)
        lp_t = 0.5 * (lp_a + lp_b) if ties == "half" else np.zeros_like(delta)
        return np.where(outcome == 0, lp_a, np.where(outcome == 1, lp_b, lp_t))
    p = ref_outcome_probs(delta, ties, tie)
    return np.log(np.take_along_axis(p, np.minimum(outcome, 2)[..., None], -1)[..., 0])


def ref_nll(params, a, b, o, w, ties, m):
    theta = params[:m]
    tie = math.exp(params[m]) if ties in ("rao-kupper", "davidson", GROUNDED) else None
    return -np.sum(w * ref_log_probs(theta[a] - theta[b], o, ties, tie, theta[b]))


def ref_half_grad(theta, a, b, o, w, m):
    d = theta[a] - theta[b]
    p = expit(d)
    g_d = np.where(o == 0, 1 - p, np.where(o == 1, -p, 0.5 - p))
    return -(np.bincount(a, w * g_d, m) - np.bincount(b, w * g_d, m))


def scipy_fit(votes, ties):
    """SciPy L-BFGS-B fit in float64 (analytic gradient for 'half', 3-point differences otherwise)."""
    battles = votes.rows()
    m = battles.num_models
    a, b, o = (np.asarray(x, np.int64) for x in (battles.a, battles.b, battles.outcome))
    w = np.asarray(battles.count, np.float64)
    fits = ties in ("rao-kupper", "davidson", GROUNDED)
    x0 = np.zeros(m + 1)
    if ties == "half":
        fun = lambda x: (ref_nll(x, a, b, o, w, ties, m), np.append(ref_half_grad(x[:m], a, b, o, w, m), 0.0))  # noqa: E731
        res = minimize(fun, x0, jac=True, method="L-BFGS-B", options=dict(maxiter=5000, gtol=1e-10, ftol=1e-16))
    else:
        fun = lambda x: ref_nll(x if fits else np.append(x[:m], 0.0), a, b, o, w, ties, m)  # noqa: E731
        res = minimize(fun, x0 if fits else x0[:m], jac="3-point", method="L-BFGS-B",
                       options=dict(maxiter=5000, gtol=1e-9, ftol=1e-16))
    theta = res.x[:m] if ties == GROUNDED else res.x[:m] - res.x[:m].mean()
    return theta, (math.exp(res.x[m]) if fits else float("nan"))


# ------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def llmfao(shared_data):
    return load_votes(shared_data / "llmfao" / "crowd-comparisons.csv")


@pytest.fixture(scope="module")
def llmfao_fits(llmfao):
    # LLMFAO has no `tie (bothbad)` votes: the grounded model's level has no finite MLE there (see
    # test_grounded_without_bothbad_warns); its fits are on `grounded_arena` instead.
    return {ties: fit_bradley_terry(llmfao, ties=ties) for ties in SHIFT_INVARIANT}


@pytest.fixture(scope="module")
def grounded_arena():
    battles, theta = synthetic_votes(jax.random.key(11), 6, 40_000, ties=GROUNDED, tie_param=0.6, theta_scale=0.8)
    return battles, theta


@pytest.fixture(scope="module")
def grounded_fit(grounded_arena):
    return fit_bradley_terry(grounded_arena[0], ties=GROUNDED)


# ------------------------------------------------------------------------------------------------
# Likelihood kernels


@pytest.mark.parametrize("ties", TIE_MODELS)
def test_outcome_log_probs_match_numpy(ties):
    rng = np.random.default_rng(0)
    delta = np.concatenate([rng.normal(0, 3, 200), [-60.0, -20.0, 0.0, 20.0, 60.0]])
    tie = {"rao-kupper": 0.7, "davidson": 1.3, GROUNDED: 0.7}.get(ties)
    # The grounded model also needs the absolute level: theta_b over a wide range (the extremes too).
    theta_b = np.concatenate([rng.normal(0, 2, 200), [-30.0, 10.0, 0.0, -10.0, -30.0]]) if ties == GROUNDED else None
    tb32 = None if theta_b is None else jnp.asarray(theta_b, jnp.float32)
    kernel = jax.jit(outcome_log_probs, static_argnames="ties")
    for outcome in range(4):
        got = np.asarray(kernel(jnp.asarray(delta, jnp.float32), jnp.full(delta.shape, outcome), ties=ties,
                                tie_param=tie, theta_b=tb32))
        ref = ref_log_probs(delta, np.full(delta.shape, outcome), ties, tie, theta_b)
        assert np.all(np.isfinite(got))
        if ties == GROUNDED:  # the reference's 1 - P(a) - P(b) - P(bb) cancels catastrophically at the extremes
            np.testing.assert_allclose(got[:200], ref[:200], rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    tb200 = None if theta_b is None else tb32[:200]
    probs = np.asarray(outcome_probabilities(jnp.asarray(delta[:200], jnp.float32), ties=ties, tie_param=tie,
                                             theta_b=tb200))
    assert probs.shape == (200, 4 if ties == GROUNDED else 3)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probs, ref_outcome_probs(delta[:200], ties, tie, None if theta_b is None else theta_b[:200]),
                               atol=1e-6)
    # float64 in, float64 out.
    with jax.enable_x64(True):
        tb64 = None if theta_b is None else jnp.asarray(theta_b)
        for outcome in range(4):
            got64 = outcome_log_probs(jnp.asarray(delta), jnp.full(delta.shape, outcome, jnp.int32), ties=ties,
                                      tie_param=tie, theta_b=tb64)
            assert got64.dtype == jnp.float64
            ref = ref_log_probs(delta, np.full(delta.shape, outcome, int), ties, tie, theta_b)
            n = 200 if ties == GROUNDED else delta.size
            np.testing.assert_allclose(np.asarray(got64)[:n], ref[:n], rtol=1e-10, atol=1e-12)
            if outcome == 0:
                np.testing.assert_allclose(np.asarray(got64), ref, rtol=1e-12, atol=1e-12)


def test_negative_log_likelihood_matches_numpy(llmfao):
    rng = np.random.default_rng(1)
    theta = rng.normal(size=llmfao.num_models)
    nll = jax.jit(bt_negative_log_likelihood, static_argnames="ties")
    for ties, tie in (("half", None), ("drop", None), ("rao-kupper", 0.4), ("davidson", 2.0), (GROUNDED, 0.4)):
        got = float(nll(jnp.asarray(theta, jnp.float32), tie, llmfao.rows().a, llmfao.rows().b,
                        llmfao.rows().outcome, llmfao.rows().count, ties=ties, l2=0.3))
        params = np.append(theta, math.log(tie) if tie else 0.0)
        a, b, o = (np.asarray(x) for x in (llmfao.rows().a, llmfao.rows().b, llmfao.rows().outcome))
        ref = ref_nll(params, a, b, o, np.asarray(llmfao.rows().count, np.float64), ties, llmfao.num_models)
        ref += 0.15 * np.sum(theta**2)
        np.testing.assert_allclose(got, ref, rtol=2e-6)


def test_bad_kernel_args():
    with pytest.raises(ValueError, match="ties must be one of 'half', 'rao-kupper', 'davidson', 'drop'"):
        outcome_log_probs(jnp.zeros(2), jnp.zeros(2, jnp.int32), ties="bt")
    with pytest.raises(ValueError, match="tie_param is required"):
        outcome_log_probs(jnp.zeros(2), jnp.zeros(2, jnp.int32), ties="davidson")
    with pytest.raises(ValueError, match="tie_param must be > 0"):
        outcome_log_probs(jnp.zeros(2), jnp.zeros(2, jnp.int32), ties="rao-kupper", tie_param=0.0)
    with pytest.raises(TypeError, match="outcome must be integer"):
        outcome_log_probs(jnp.zeros(2), jnp.zeros(2), ties="half")
    with pytest.raises(ValueError, match="theta_b is required for ties='grounded-rao-kupper'"):
        outcome_log_probs(jnp.zeros(2), jnp.zeros(2, jnp.int32), ties=GROUNDED, tie_param=0.5)
    with pytest.raises(ValueError, match="theta_b is required"):
        outcome_probabilities(jnp.zeros(2), ties=GROUNDED, tie_param=0.5)


# ------------------------------------------------------------------------------------------------
# LLMFAO: SciPy and evalica


@pytest.mark.parametrize("ties", SHIFT_INVARIANT)
def test_llmfao_matches_scipy_float64(llmfao, llmfao_fits, ties):
    result = llmfao_fits[ties]
    assert isinstance(result, BTResult) and bool(result.converged)
    theta_ref, tie_ref = scipy_fit(llmfao, ties)
    np.testing.assert_allclose(np.asarray(result.ratings), 1000.0 + ELO * theta_ref, rtol=0, atol=ELO_TOL)
    if ties != GROUNDED:  # the grounded model's level is absolute (its both-bad competitor sits at 1000)
        assert abs(float(np.asarray(result.ratings).mean()) - 1000.0) < 1e-3
    if ties in ("rao-kupper", "davidson", GROUNDED):
        np.testing.assert_allclose(float(result.tie_param), tie_ref, rtol=1e-4)
    else:
        assert math.isnan(float(result.tie_param))
    # log_likelihood is the reference log-likelihood at the fitted parameters.
    a, b, o = (np.asarray(x) for x in (llmfao.rows().a, llmfao.rows().b, llmfao.rows().outcome))
    params = np.append(np.asarray(result.theta, np.float64), math.log(tie_ref) if tie_ref == tie_ref else 0.0)
    ref_ll = -ref_nll(params, a, b, o, np.asarray(llmfao.rows().count, np.float64), ties, llmfao.num_models)
    np.testing.assert_allclose(float(result.log_likelihood), ref_ll, rtol=1e-5)


def test_llmfao_matches_evalica_golden(shared_data, llmfao, llmfao_fits):
    # evalica's bradley_terry: Zermelo/MM iterations on W + 0.5 T (a tie is half a win each way), the
    # scores normalised to sum 1, i.e. p_i = exp(theta_i) / sum_j exp(theta_j) of the same MLE as ties="half".
    golden = pd.read_csv(shared_data / "llmfao" / "evalica_llmfao-golden.csv")
    golden = golden[golden.algorithm == "bradley_terry"].set_index("item").score
    assert set(golden.index) == set(llmfao.models)
    result = llmfao_fits["half"]
    frame = result.to_frame()
    assert frame.model.tolist() == golden.sort_values(ascending=False, kind="stable").index.tolist()
    log_p = np.log(golden.reindex(llmfao.models).to_numpy())
    theta_evalica = log_p - log_p.mean()
    # evalica stops when successive scores move < 1e-6 (on the sum-1 scale): 1e-5 in theta is ~0.002 Elo.
    np.testing.assert_allclose(np.asarray(result.theta), theta_evalica, rtol=0, atol=1e-5)
    p = np.exp(np.asarray(result.theta, np.float64))
    np.testing.assert_allclose(p / p.sum(), golden.reindex(llmfao.models).to_numpy(), rtol=1e-4)


def test_probability_matrices(llmfao_fits, grounded_fit):
    for ties, result in [*llmfao_fits.items(), (GROUNDED, grounded_fit)]:
        win, tie = np.asarray(result.win_probability()), np.asarray(result.tie_probability())
        bothbad = np.asarray(result.bothbad_probability())
        m = result.num_models
        assert win.shape == tie.shape == bothbad.shape == (m, m)
        np.testing.assert_allclose(win + win.T + tie + bothbad, 1.0, atol=1e-6)
        theta = np.asarray(result.theta, np.float64)
        tp = float(result.tie_param) if ties in ("rao-kupper", "davidson", GROUNDED) else None
        ref = ref_outcome_probs(theta[:, None] - theta[None, :], ties, tp, np.broadcast_to(theta[None, :], (m, m)))
        np.testing.assert_allclose(win, ref[..., 0], atol=1e-6)
        np.testing.assert_allclose(tie, ref[..., 2], atol=1e-6)
        if ties == GROUNDED:
            np.testing.assert_allclose(bothbad, ref[..., 3], atol=1e-6)
        else:
            assert not bothbad.any()
        if ties in ("half", "drop"):
            assert not tie.any()
            np.testing.assert_allclose(np.diag(win), 0.5)


def test_anchor_and_l2(llmfao, llmfao_fits):
    base = llmfao_fits["half"]
    anchored = fit_bradley_terry(llmfao, anchor="GPT 4", anchor_rating=1250.0)
    i = llmfao.models.index("GPT 4")
    assert float(anchored.ratings[i]) == pytest.approx(1250.0, abs=1e-3)
    assert float(anchored.theta[i]) == 0.0
    np.testing.assert_allclose(np.asarray(anchored.ratings) - np.asarray(base.ratings),
                               1250.0 - float(base.ratings[i]), atol=1e-3)
    scaled = fit_bradley_terry(llmfao, scale=1.0, base=math.e, init=0.0)
    np.testing.assert_allclose(np.asarray(scaled.ratings), np.asarray(base.theta), atol=1e-6)
    # MAP with an L2 prior: the optimum has mean theta 0 by itself and is shrunk towards 0.
    prior = fit_bradley_terry(llmfao, l2=20.0)
    assert abs(float(np.asarray(prior.theta).mean())) < 1e-5
    assert np.asarray(prior.theta).std() < np.asarray(base.theta).std()
    a, b, o = (np.asarray(x) for x in (llmfao.rows().a, llmfao.rows().b, llmfao.rows().outcome))
    w = np.asarray(llmfao.rows().count, np.float64)
    m = llmfao.num_models
    fun = lambda t: (ref_nll(np.append(t, 0), a, b, o, w, "half", m) + 10.0 * t @ t,  # noqa: E731
                     ref_half_grad(t, a, b, o, w, m) + 20.0 * t)
    ref = minimize(fun, np.zeros(m), jac=True, method="L-BFGS-B", options=dict(gtol=1e-10, ftol=1e-16)).x
    np.testing.assert_allclose(np.asarray(prior.ratings), 1000 + ELO * ref, atol=ELO_TOL)


def test_sharded_fit_equals_unsharded(llmfao, llmfao_fits):
    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("data",))
    sharded = fit_bradley_terry(llmfao, mesh=mesh)
    np.testing.assert_allclose(np.asarray(sharded.ratings), np.asarray(llmfao_fits["half"].ratings), rtol=0, atol=1e-3)
    assert int(sharded.num_iter) > 0 and bool(sharded.converged)
    from jaxrank.ratings.bradley_terry import _shard_rows

    rows = llmfao.rows()
    a, *_ = _shard_rows(mesh, rows.a, rows.b, rows.outcome, rows.count)
    assert a.shape[0] % 8 == 0 and len(a.sharding.device_set) == 8
    assert a.addressable_shards[0].data.shape[0] == a.shape[0] // 8


def test_vmapped_solver_matches_fits(llmfao, llmfao_fits):
    # The pure solver vmaps over weights (how bootstrap rounds run): round 0 = the data, round 1 = reweighted.
    w0 = llmfao.rows().count
    w1 = w0 * jnp.asarray(np.random.default_rng(2).integers(0, 3, w0.shape), jnp.float32)
    sols = jax.vmap(lambda w: solve_bradley_terry(w, llmfao.rows().a, llmfao.rows().b, llmfao.rows().outcome,
                                                  num_models=llmfao.num_models))(jnp.stack([w0, w1]))
    np.testing.assert_allclose(np.asarray(sols.theta[0]), np.asarray(llmfao_fits["half"].theta), atol=ELO_TOL / ELO)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the resample may leave a model unbeaten
        single = fit_bradley_terry(llmfao, row_weights=w1)
    np.testing.assert_allclose(np.asarray(sols.theta[1]), np.asarray(single.theta), atol=1e-4)


# ------------------------------------------------------------------------------------------------
# Tie models recover their parameters (tolerance from the Fisher information)


def numeric_hessian(f, x, eps=1e-3):
    n = x.size
    h = np.zeros((n, n))
    for i in range(n):
        for j in range(i, n):
            e_i, e_j = np.eye(n)[i] * eps, np.eye(n)[j] * eps
            h[i, j] = h[j, i] = (f(x + e_i + e_j) - f(x + e_i - e_j) - f(x - e_i + e_j) + f(x - e_i - e_j)) / (4 * eps**2)
    return h


@pytest.mark.parametrize("ties,tie_true", [("rao-kupper", 0.6), ("davidson", 0.8), (GROUNDED, 0.6)])
def test_tie_models_recover_parameters(ties, tie_true, request):
    m, n = 6, 40_000
    if ties == GROUNDED:
        battles, theta_true = request.getfixturevalue("grounded_arena")
        result = request.getfixturevalue("grounded_fit")
    else:
        battles, theta_true = synthetic_votes(jax.random.key(11), m, n, ties=ties, tie_param=tie_true,
                                                theta_scale=0.8)
        result = fit_bradley_terry(battles, ties=ties)
    assert bool(result.converged)
    theta_true = np.asarray(theta_true, np.float64)
    est = np.append(np.asarray(result.theta, np.float64), float(result.tie_param))
    truth = np.append(theta_true if ties == GROUNDED else theta_true - theta_true.mean(), tie_true)
    # Observed information at the truth, parameters (theta, tie_param); theta only up to a shift, so the
    # covariance of the centred estimate is the pseudo-inverse.
    a, b, o = (np.asarray(x) for x in (battles.rows().a, battles.rows().b, battles.rows().outcome))
    w = np.asarray(battles.rows().count, np.float64)
    if ties == GROUNDED:
        assert w[o == 3].sum() > 1000  # the model draws its own both-bad outcomes
        f = lambda x: -np.sum(w * ref_log_probs(x[a] - x[b], o, ties, x[m], x[b]))  # noqa: E731
        basis = np.eye(m + 1)  # every coordinate is identified (the competitor at 0 pins the level)
    else:
        f = lambda x: -np.sum(w * ref_log_probs(x[a] - x[b], o, ties, x[m]))  # noqa: E731
        # Restrict to the identified subspace (sum theta = 0, tie free): basis P, cov = P (P^T H P)^-1 P^T.
        basis = np.zeros((m + 1, m))
        basis[:m, : m - 1] = np.eye(m)[:, 1:] - np.eye(m)[:, :1]
        basis[m, m - 1] = 1.0
    h = numeric_hessian(f, truth)
    cov = basis @ np.linalg.inv(basis.T @ h @ basis) @ basis.T
    se = np.sqrt(np.diag(cov))
    assert np.all(se[:m] < 0.05) and se[m] < 0.05  # the experiment is informative
    z = (est - truth) / se
    # 7 coordinates at 4.5 standard errors: a false alarm has probability < 5e-5.
    assert np.all(np.abs(z) < 4.5), z
    # And the estimate is not merely inside a wide band: the tie parameter is pinned to a few percent.
    assert abs(est[m] - tie_true) / tie_true < 0.1


# ------------------------------------------------------------------------------------------------
# Implicit gradients vs finite differences (float64)


# l2 is traced: both cases share one compilation. l2 = 0 exercises the per-component centring (a
# singular Hessian), l2 > 0 the prior; the tie parameter's row/column is in both.
@pytest.mark.parametrize("ties,l2", [("rao-kupper", 0.0), ("rao-kupper", 0.5), (GROUNDED, 0.0)])
def test_implicit_gradient_matches_finite_differences(ties, l2):
    # The grounded model needs both-bad votes for a finite optimum: draw them from the model itself.
    battles, _ = synthetic_votes(jax.random.key(5), 5, 600, ties=GROUNDED if ties == GROUNDED else "rao-kupper",
                                   tie_param=0.5)
    c = np.linspace(-1.0, 1.5, battles.num_models)
    with jax.enable_x64(True):

        def objective(w):
            r = fit_bradley_terry(battles, ties=ties, l2=l2, row_weights=w, tol=1e-13, max_iter=3000)
            out = jnp.sum(jnp.asarray(c) * r.ratings)
            if ties in ("rao-kupper", GROUNDED):
                out = out + 100.0 * r.tie_param
            return out

        # Every evaluation goes through ONE compiled value-and-gradient (a separate forward-only fit would
        # compile the float64 solver a second time); the values are the fits' objective all the same.
        value_and_grad = jax.value_and_grad(objective)

        def value(w):
            return float(value_and_grad(w)[0])

        w0 = jnp.asarray(np.asarray(battles.rows().count), jnp.float64)
        grad = np.asarray(value_and_grad(w0)[1])
        assert grad.dtype == np.float64
        # Central differences along a random direction (each costs two float64 fits).
        eps = 1e-3
        d = np.random.default_rng(0).normal(size=w0.shape[0])
        fd = (value(w0 + eps * d) - value(w0 - eps * d)) / (2 * eps)
        np.testing.assert_allclose(grad @ d, fd, rtol=1e-6)
        # And along single rows: the largest-gradient row and a tie row.
        for u in (int(np.argmax(np.abs(grad))), int(np.flatnonzero(np.asarray(battles.rows().outcome) == 2)[0])):
            e = np.zeros(w0.shape[0])
            e[u] = eps
            fd = (value(w0 + e) - value(w0 - e)) / (2 * eps)
            np.testing.assert_allclose(grad[u], fd, rtol=1e-6, atol=1e-9)
    assert np.abs(grad).max() > 1.0  # not trivially zero


# ------------------------------------------------------------------------------------------------
# Graph structure warnings and bad input


def _small(a, b, w, models=None):
    return Votes.from_arrays(a, b, w, models=models)


@pytest.fixture(scope="module")
def rk_arena():
    # The arena of test_tie_models_recover_parameters[rao-kupper]: same shapes, so no new compilation.
    battles, _ = synthetic_votes(jax.random.key(11), 6, 40_000, ties="rao-kupper", tie_param=0.6, theta_scale=0.8)
    return battles


def test_disconnected_graph_warns_and_centres_each_component(rk_arena):
    battles = rk_arena
    a, b = np.asarray(battles.rows().a), np.asarray(battles.rows().b)
    cross = (a < 3) != (b < 3)
    w = np.where(cross, 0.0, np.asarray(battles.rows().count)).astype(np.float32)
    pattern = r"2 disconnected components: \{model_0, model_1, model_2\}; \{model_3, model_4, model_5\}"
    with pytest.warns(UserWarning, match=pattern + ".*centred on its own"):
        result = fit_bradley_terry(battles, ties="rao-kupper", row_weights=w)
    r = np.asarray(result.ratings)
    assert r[:3].mean() == pytest.approx(1000.0, abs=1e-3) and r[3:].mean() == pytest.approx(1000.0, abs=1e-3)
    # Within a component the fit is the connected fit of that component's votes alone: compare with the
    # float64 reference on the first component.
    keep = ~cross & (a < 3)
    ref = minimize(lambda x: ref_nll(np.append(x[:6], x[6]), a[keep], b[keep], np.asarray(battles.rows().outcome)[keep],
                                     w[keep].astype(np.float64), "rao-kupper", 6) +
                   ref_nll(np.append(x[:6], x[6]), a[~cross & (a >= 3)], b[~cross & (a >= 3)],
                           np.asarray(battles.rows().outcome)[~cross & (a >= 3)], w[~cross & (a >= 3)].astype(np.float64),
                           "rao-kupper", 6),
                   np.zeros(7), method="BFGS", options=dict(gtol=1e-8)).x
    theta_ref = np.concatenate([ref[:3] - ref[:3].mean(), ref[3:6] - ref[3:6].mean()])
    np.testing.assert_allclose(r, 1000 + ELO * theta_ref, atol=ELO_TOL)
    with pytest.warns(UserWarning, match=r"anchor 'model_4' pins only its own component"):
        anchored = fit_bradley_terry(battles, ties="rao-kupper", row_weights=w, anchor="model_4", anchor_rating=1500.0)
    ra = np.asarray(anchored.ratings)
    assert ra[4] == pytest.approx(1500.0, abs=1e-3) and ra[:3].mean() == pytest.approx(1000.0, abs=1e-3)
    np.testing.assert_allclose(ra[3:] - ra[4], r[3:] - r[4], atol=1e-3)
    with pytest.warns(UserWarning, match="L2 prior pins each component"):
        fit_bradley_terry(battles, ties="rao-kupper", row_weights=w, l2=1.0)


def test_model_that_never_lost_warns(rk_arena):
    battles = rk_arena
    a, b, o = (np.asarray(x) for x in (battles.rows().a, battles.rows().b, battles.rows().outcome))
    lost = ((a == 0) & (o == 1)) | ((b == 0) & (o == 0)) | ((a == 0) | (b == 0)) & (o >= 2)
    w = np.where(lost, 0.0, np.asarray(battles.rows().count)).astype(np.float32)
    with pytest.warns(UserWarning, match="never lost: model_0.*Pass l2 > 0"):
        result = fit_bradley_terry(battles, ties="rao-kupper", row_weights=w, max_iter=50)
    # The likelihood keeps rising as model_0 runs away; the gradient vanishes far out, so the fit stops there.
    theta = np.asarray(result.theta)
    assert theta[0] - theta[1:].max() > 5.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prior = fit_bradley_terry(battles, ties="rao-kupper", row_weights=w, l2=1.0)
    assert bool(prior.converged) and int(np.argmax(np.asarray(prior.ratings))) == 0
    assert np.asarray(prior.theta)[0] - np.asarray(prior.theta)[1:].max() < theta[0] - theta[1:].max() - 1.0


def test_tie_model_without_ties_warns(rk_arena):
    w = np.where(np.asarray(rk_arena.rows().outcome) >= 2, 0.0, np.asarray(rk_arena.rows().count)).astype(np.float32)
    with pytest.warns(UserWarning, match="no tie votes: the tie parameter's maximum-likelihood value is 0"):
        result = fit_bradley_terry(rk_arena, ties="rao-kupper", row_weights=w, max_iter=30)
    assert float(result.tie_param) < 0.6  # heads for the boundary, below the true 0.6


def test_fit_bad_input(llmfao):
    with pytest.raises(ValueError, match="ties must be one of 'half', 'rao-kupper', 'davidson', 'drop', "
                                         "'grounded-rao-kupper'; got 'bt'"):
        fit_bradley_terry(llmfao, ties="bt")
    with pytest.raises(ValueError, match=r"anchor 'gpt 3.5' is not one of the 59 models; similar: GPT 3.5 Turbo"):
        fit_bradley_terry(llmfao, anchor="gpt 3.5")
    u = llmfao.rows().num_rows
    with pytest.raises(ValueError, match=rf"row_weights must have shape \[U\] = \({u},\)"):
        fit_bradley_terry(llmfao, row_weights=np.ones(u + 1, np.float32))
    with pytest.raises(ValueError, match="row_weights must be >= 0"):
        fit_bradley_terry(llmfao, row_weights=-np.ones(u, np.float32))
    with pytest.raises(ValueError, match="row_weights contains NaN"):
        fit_bradley_terry(llmfao, row_weights=np.full(u, np.nan, np.float32))
    with pytest.raises(TypeError, match="row_weights must be floating point"):
        fit_bradley_terry(llmfao, row_weights=np.ones(u, np.int32))
    with pytest.raises(ValueError, match="no votes with positive weight"):
        fit_bradley_terry(llmfao, row_weights=np.zeros(u, np.float32))
    with pytest.raises(ValueError, match="l2 must be a finite number >= 0"):
        fit_bradley_terry(llmfao, l2=-1.0)
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        fit_bradley_terry(llmfao, scale=0)
    with pytest.raises(ValueError, match="base must not be 1"):
        fit_bradley_terry(llmfao, base=1.0)
    with pytest.raises(ValueError, match="max_iter must be an int >= 1"):
        fit_bradley_terry(llmfao, max_iter=0)
    with pytest.raises(TypeError, match="votes must be a jaxrank.Votes"):
        fit_bradley_terry(pd.DataFrame())
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        fit_bradley_terry(llmfao, mesh="data")
    only_ties = _small(["a", "b"], ["b", "a"], ["tie", "tie"])
    with pytest.raises(ValueError, match="all votes are ties and ties='drop'"):
        fit_bradley_terry(only_ties, ties="drop")


def test_grounded_matches_scipy_float64(grounded_arena, grounded_fit):
    battles, _ = grounded_arena
    assert bool(grounded_fit.converged)
    theta_ref, tie_ref = scipy_fit(battles, GROUNDED)
    np.testing.assert_allclose(np.asarray(grounded_fit.ratings), 1000.0 + ELO * theta_ref, rtol=0, atol=ELO_TOL)
    np.testing.assert_allclose(float(grounded_fit.tie_param), tie_ref, rtol=1e-4)
    a, b, o = (np.asarray(x) for x in (battles.rows().a, battles.rows().b, battles.rows().outcome))
    params = np.append(np.asarray(grounded_fit.theta, np.float64), math.log(tie_ref))
    ref_ll = -ref_nll(params, a, b, o, np.asarray(battles.rows().count, np.float64), GROUNDED, battles.num_models)
    np.testing.assert_allclose(float(grounded_fit.log_likelihood), ref_ll, rtol=1e-5)


def test_grounded_anchor_moves_ratings_only(grounded_arena, grounded_fit):
    battles, _ = grounded_arena
    base = grounded_fit
    anchored = fit_bradley_terry(battles, ties=GROUNDED, anchor="model_2", anchor_rating=1250.0)
    i = 2
    assert float(anchored.ratings[i]) == pytest.approx(1250.0, abs=1e-3)
    np.testing.assert_allclose(np.asarray(anchored.theta), np.asarray(base.theta), atol=1e-5)  # absolute theta kept
    np.testing.assert_allclose(np.asarray(anchored.ratings) - np.asarray(base.ratings),
                               1250.0 - float(base.ratings[i]), atol=1e-3)


def test_grounded_without_bothbad_warns(grounded_arena, grounded_fit):
    # The both-bad rows weighted 0: the arena's shapes, so grounded_fit's compiled solver serves it.
    battles, _ = grounded_arena
    w = np.where(np.asarray(battles.rows().outcome) == 3, 0.0, np.asarray(battles.rows().count)).astype(np.float32)
    with pytest.warns(UserWarning, match=r"no 'tie \(bothbad\)' votes"):
        drift = fit_bradley_terry(battles, ties=GROUNDED, row_weights=w, max_iter=20)
    # Without the both-bad competitor's wins the level runs upwards (the warning's claim).
    assert float(np.mean(np.asarray(drift.theta))) > float(np.mean(np.asarray(grounded_fit.theta))) + 0.5


def test_grounded_bootstrap_and_unsupported_intervals(grounded_arena, grounded_fit):
    from jaxrank.ratings import bootstrap_ratings, sandwich_intervals

    battles, _ = grounded_arena
    boot = bootstrap_ratings(jax.random.key(0), battles, num_rounds=4, ties=GROUNDED, fit=grounded_fit)
    assert boot.samples.shape == (4, battles.num_models) and bool(np.all(np.asarray(boot.converged)))
    # 40,000 votes: each round is within a few standard errors (~0.05 theta, ~9 Elo) of the full-data fit.
    assert np.abs(np.asarray(boot.samples) - np.asarray(grounded_fit.ratings)).max() < 40.0
    with pytest.raises(ValueError, match="solver='newton' does not support ties='grounded-rao-kupper'"):
        bootstrap_ratings(jax.random.key(0), battles, num_rounds=4, ties=GROUNDED, fit=grounded_fit, solver="newton")
    with pytest.raises(ValueError, match="sandwich_intervals does not support ties='grounded-rao-kupper'"):
        sandwich_intervals(battles, grounded_fit)
