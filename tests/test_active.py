"""jaxrank.active: sampling designs, design-weighted and prediction-powered Bradley–Terry, active pairs.

References are float64 NumPy/SciPy written here; the calibration tests replay each design >= 1000 times in
one compiled call on synthetic arenas with a known full-population leaderboard.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize

import jax
import jax.numpy as jnp

from jaxrank import active as A

Z95 = 1.959963984540054


# --------------------------------------------------------------------------------------------------
# float64 references


def ref_log_prob(delta, s, outcome, ties):
    """log P(outcome | delta) in float64 (complex-step safe: only exp/log), s = log tie parameter."""
    e = np.exp
    if ties == "half":
        la = -np.log(1 + e(-delta))
        lb = -np.log(1 + e(delta))
        lt = 0.5 * (la + lb)
    elif ties == "rao-kupper":
        alpha = e(s)
        la = -np.log(1 + e(-(delta - alpha)))
        lb = -np.log(1 + e(-(-delta - alpha)))
        lt = np.log(1 - e(la) - e(lb))
    else:
        raise ValueError(ties)
    return np.where(outcome == 0, la, np.where(outcome == 1, lb, lt))


def ref_row_grads(theta, s, a, b, o, ties):
    """d log P / d(delta, s) per row by complex step (exact to rounding)."""
    h = 1e-30
    delta = theta[a] - theta[b]
    gd = np.imag(ref_log_prob(delta + 1j * h, s, o, ties)) / h
    gs = np.imag(ref_log_prob(delta, s + 1j * h, o, ties)) / h if ties == "rao-kupper" else np.zeros_like(delta)
    return gd, gs


def ref_unit_scores(theta, s, a, b, o, unit, w, num_units, ties):
    m = theta.shape[0]
    gd, gs = ref_row_grads(theta, s, a, b, o, ties)
    z = np.zeros((num_units, m + 1))
    np.add.at(z, (unit, a), w * gd)
    np.add.at(z, (unit, b), -w * gd)
    np.add.at(z, (unit, np.full_like(unit, m)), w * gs)
    return z


def ref_objective(x, a, b, o, w, ties):
    m = x.shape[0] - 1
    return -np.sum(w * ref_log_prob(x[a] - x[b], x[m], o, ties))


def ref_gradient(x, a, b, o, w, ties):
    m = x.shape[0] - 1
    unit = np.zeros_like(a)
    return -ref_unit_scores(x[:m], x[m], a, b, o, unit, w, 1, ties)[0]


def ref_fit(a, b, o, w, m, ties):
    """float64 argmin of -sum w log P (theta centred; the tie slot fixed at 0 for "half")."""
    fits = ties == "rao-kupper"

    def full(v):
        x = np.zeros(m + 1)
        x[1:m] = v[: m - 1]
        if fits:
            x[m] = v[m - 1]
        return x

    def f(v):
        return ref_objective(full(v), a, b, o, w, ties)

    def g(v):
        gx = ref_gradient(full(v), a, b, o, w, ties)
        return np.concatenate([gx[1:m], gx[m:] if fits else []])

    v0 = np.zeros(m - 1 + (1 if fits else 0))
    if fits:
        v0[-1] = np.log(0.5)
    res = scipy.optimize.minimize(f, v0, jac=g, method="BFGS", options={"gtol": 1e-11, "maxiter": 10000})
    x = full(res.x)
    x[:m] -= x[:m].mean()
    return x


def ref_hessian(x, a, b, o, w, ties):
    """Central differences of the complex-step gradient (tie slot frozen at curvature 1 for "half")."""
    d = x.shape[0]
    h = np.zeros((d, d))
    eps = 1e-6
    for k in range(d):
        e = np.zeros(d)
        e[k] = eps
        h[:, k] = (ref_gradient(x + e, a, b, o, w, ties) - ref_gradient(x - e, a, b, o, w, ties)) / (2 * eps)
    h = 0.5 * (h + h.T)
    if ties != "rao-kupper":
        h[-1, :] = 0.0
        h[:, -1] = 0.0
        h[-1, -1] = 1.0
    return h


def ref_design_meat(z, selected, pi, design, variance):
    s = np.asarray(selected, bool)
    zs, ps = z[s], np.asarray(pi, np.float64)[s]
    if design == "poisson":
        meat = (zs * ((1 - ps) / ps**2)[:, None]).T @ zs
    else:
        n = s.sum()
        u = zs / ps[:, None]
        d = 1 - ps
        centre = (d[:, None] * u).sum(0) / d.sum()
        r = u - centre
        meat = n / (n - 1) * (r * d[:, None]).T @ r
    if variance == "superpopulation":
        meat = meat + (zs / ps[:, None]).T @ zs
    return meat


def ref_row_curvature(theta, s, a, b, o, ties):
    """-d2 log P / d delta2 per row (central differences of the complex-step derivative)."""
    eps, h = 1e-5, 1e-30
    delta = theta[a] - theta[b]

    def gd(dd):
        return np.imag(ref_log_prob(dd + 1j * h, s, o, ties)) / h

    return -(gd(delta + eps) - gd(delta - eps)) / (2 * eps)


def ref_jackknife_scores(x, bread, a, b, o, unit, vote_w, unit_w, num_units, ties, z, curv_sign=None):
    """z_i -> (I - w_i H_i A)^{-1} z_i on the theta block, H_i unit i's curvature (full D x D algebra)."""
    m = x.shape[0] - 1
    curv = ref_row_curvature(x[:m], x[m], a, b, o, ties) * vote_w * (1.0 if curv_sign is None else curv_sign)
    out = z.copy()
    for i in range(num_units):
        rows = unit == i
        if unit_w[i] == 0 or not rows.any():
            continue
        h = np.zeros((m, m))
        for r in np.flatnonzero(rows):
            d = np.zeros(m)
            d[a[r]] += 1
            d[b[r]] -= 1
            h += curv[r] * np.outer(d, d)
        lev = unit_w[i] * h @ bread[:m, :m]
        out[i, :m] = np.linalg.solve(np.eye(m) - lev, z[i, :m])
    return out


def ref_covariance(x, a, b, o, w, unit, vote_w, selected, pi, num_units, ties, design, variance, correction="jackknife"):
    m = x.shape[0] - 1
    bread = np.linalg.pinv(ref_hessian(x, a, b, o, w, ties), hermitian=True, rcond=1e-10)
    z = ref_unit_scores(x[:m], x[m], a, b, o, unit, vote_w, num_units, ties)
    if correction == "jackknife":
        unit_w = np.where(selected, 1.0 / np.where(selected, pi, 1.0), 0.0)
        z = ref_jackknife_scores(x, bread, a, b, o, unit, vote_w, unit_w, num_units, ties, z)
    return (bread @ ref_design_meat(z, selected, pi, design, variance) @ bread)[:m, :m]


# --------------------------------------------------------------------------------------------------
# Inclusion probabilities


def test_inclusion_probabilities_formula_caps_and_sum():
    u = np.array([0.0, 1.0, 3.0, 0.0, 10.0, 2.0])
    pi = A.inclusion_probabilities(u, 3, uniform_mix=0.2)
    assert pi.sum() == pytest.approx(3.0, abs=1e-12)
    assert pi[4] == 1.0  # its share (1 - tau) 10/16 * 3 + ... exceeds 1: taken with certainty
    # the rest keep the shares (1 - tau) u / sum u + tau / P, re-scaled: ratios as the formula says
    q = 0.8 * u / u.sum() + 0.2 / u.size
    free = pi < 1
    assert np.allclose(pi[free] / pi[free].sum(), q[free] / q[free].sum(), rtol=1e-12)
    assert np.allclose(A.inclusion_probabilities(u, 3, uniform_mix=1.0), 0.5)
    assert np.allclose(A.inclusion_probabilities(np.zeros(4), 2, uniform_mix=0.1), 0.5)  # no signal: uniform
    floored = A.inclusion_probabilities(u, 3, uniform_mix=0.05, min_probability=0.2)
    assert floored.min() == pytest.approx(0.2) and floored.sum() == pytest.approx(3.0)


def test_inclusion_probabilities_cascade_of_caps_and_jax_twin():
    rng = np.random.default_rng(0)
    u = rng.lognormal(0.0, 2.0, 500)  # heavy tail: capping at 1 cascades
    for n, tau, floor in ((50, 0.1, 0.0), (300, 0.05, 0.0), (200, 0.3, 0.05), (500, 0.2, 0.0)):
        pi = A.inclusion_probabilities(u, n, uniform_mix=tau, min_probability=floor)
        assert pi.sum() == pytest.approx(n, rel=1e-12)
        assert pi.max() <= 1.0 and pi.min() >= floor - 1e-15
        capped = pi >= 1.0
        q = (1 - tau) * u / u.sum() + tau / u.size
        inner = ~capped & (pi > floor + 1e-12)
        if n == u.size:
            assert capped.all()
            continue
        c = pi[inner] / q[inner]
        assert np.allclose(c, c[0], rtol=1e-10)  # one scale for every unit not at a bound
        assert np.all(c[0] * q[capped] >= 1.0 - 1e-9)  # and the capped ones would exceed 1
        twin = np.asarray(A.inclusion_probabilities_jax(jnp.asarray(u, jnp.float32), n, uniform_mix=tau,
                                                        min_probability=floor))
        assert np.allclose(twin, pi, rtol=2e-5, atol=2e-6)


def test_inclusion_probabilities_eligible_units_only():
    u = np.arange(10, dtype=float)
    elig = np.arange(10) % 2 == 0
    pi = A.inclusion_probabilities(u, 2, uniform_mix=0.5, eligible=elig)
    assert (pi[~elig] == 0).all() and pi.sum() == pytest.approx(2.0)
    twin = A.inclusion_probabilities_jax(jnp.asarray(u), 2, uniform_mix=0.5, eligible=jnp.asarray(elig))
    assert np.allclose(np.asarray(twin), pi, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "scores, budget, kwargs, match",
    [
        ([1.0, -1.0, 2.0], 1, {}, "scores contains 1 negative"),
        ([1.0, np.nan, 2.0], 1, {}, "scores contains 1 NaN"),
        ([1.0, np.inf, 2.0], 1, {}, "scores contains infinite"),
        ([1.0, 2.0, 3.0], 4, {}, "budget = 4 exceeds the number of prompts \\(3\\)"),
        ([1.0, 2.0, 3.0], 0, {}, "budget must be > 0"),
        ([1.0, 2.0, 3.0], 1, {"uniform_mix": 0.0}, "uniform_mix must lie in \\(0, 1\\]"),
        ([1.0, 2.0, 3.0], 1, {"uniform_mix": 1.5}, "uniform_mix must lie in \\(0, 1\\]"),
        ([1.0, 2.0, 3.0], 1, {"min_probability": 0.5}, "min_probability = 0.5 is infeasible"),
    ],
)
def test_inclusion_probabilities_bad_input(scores, budget, kwargs, match):
    with pytest.raises(ValueError, match=match):
        A.inclusion_probabilities(scores, budget, **kwargs)


def test_max_weight_error_names_the_uniform_mix_that_avoids_it():
    u = np.array([0.0, 0.0, 1.0, 5.0, 20.0, 0.1, 0.0, 3.0])
    with pytest.raises(ValueError, match=r"max_weight: the largest weight 1/pi would be .* uniform_mix >= ([0-9.]+) avoids"):
        A.inclusion_probabilities(u, 2, uniform_mix=0.05, max_weight=10.0)
    need = A.smallest_uniform_mix(u, 2, 10.0)
    ok = A.inclusion_probabilities(u, 2, uniform_mix=need, max_weight=10.0)
    assert (1.0 / ok).max() <= 10.0 * (1 + 1e-9)
    assert (1.0 / A.inclusion_probabilities(u, 2, uniform_mix=need * 0.98)).max() > 10.0
    with pytest.raises(ValueError, match="no uniform_mix does: even uniform sampling has weight 4"):
        A.inclusion_probabilities(u, 2, uniform_mix=0.5, max_weight=3.0)


# --------------------------------------------------------------------------------------------------
# Sampling designs


@pytest.fixture(scope="module")
def unequal_pi():
    rng = np.random.default_rng(1)
    return A.inclusion_probabilities(rng.lognormal(0, 1, 40), 12, uniform_mix=0.3)


@pytest.mark.parametrize("design", A.DESIGNS)
def test_first_order_inclusion_probabilities_are_exact(unequal_pi, design):
    draws = 40_000
    keys = jax.random.split(jax.random.key(7), draws)
    sel = np.asarray(jax.jit(jax.vmap(lambda k: A.draw_sample(k, jnp.asarray(unequal_pi), design=design)))(keys))
    freq = sel.mean(0)
    mc = np.sqrt(unequal_pi * (1 - unequal_pi) / draws) + 1e-12
    assert np.all(np.abs(freq - unequal_pi) <= 4.5 * mc)
    sizes = sel.sum(1)
    if design == "systematic":
        assert (sizes == 12).all()  # fixed size
    else:
        assert sizes.mean() == pytest.approx(12, abs=0.1) and sizes.std() > 1  # random size


def test_systematic_with_equal_probabilities_is_simple_random_sampling():
    p, n, draws = 9, 3, 60_000
    keys = jax.random.split(jax.random.key(3), draws)
    sel = np.asarray(jax.jit(jax.vmap(lambda k: A.systematic_sample(k, jnp.full((p,), n / p))))(keys))
    pair = (sel[:, :, None] & sel[:, None, :]).mean(0)[np.triu_indices(p, 1)]
    expect = n * (n - 1) / (p * (p - 1))
    assert np.all(np.abs(pair - expect) <= 4.5 * np.sqrt(expect * (1 - expect) / draws))


def test_systematic_sample_places_points_exactly_in_float32():
    # 5,000 units whose probabilities sum to an integer: float32 prefix sums lose ~1e-4; the pair sums do not.
    rng = np.random.default_rng(5)
    pi = A.inclusion_probabilities(rng.random(5000), 1234, uniform_mix=0.5)
    keys = jax.random.split(jax.random.key(0), 16)
    sizes = np.asarray(jax.vmap(lambda k: A.systematic_sample(k, jnp.asarray(pi, jnp.float32)).sum())(keys))
    assert (sizes == 1234).all()


def test_single_round_rejects_selected_unit_with_probability_zero():
    with pytest.raises(ValueError, match="probabilities: 1 selected unit\\(s\\) have probability 0"):
        A.single_round(np.array([True, True, False]), np.array([0.5, 0.0, 0.5]))


def test_sequential_rounds_weights_and_bookkeeping():
    p = 10
    s = A.empty_sample(p)
    s = A.add_round(s, np.full(p, 0.3), np.isin(np.arange(p), [0, 3, 6]), future_budget=3)
    assert float(s.unassigned) > 0
    with pytest.raises(ValueError, match="rounds leave weight"):
        A.fit_design_weighted(A.unit_rows([0], [1], [0], [0]), s, num_models=2)
    pi2 = A.inclusion_probabilities(np.ones(p), 3, uniform_mix=1.0, eligible=~np.asarray(s.selected))
    with pytest.raises(ValueError, match="labelled in an earlier round have probability > 0"):
        A.add_round(s, np.full(p, 0.3), np.zeros(p, bool))
    s = A.add_round(s, pi2, np.isin(np.arange(p), [1, 4, 7]))
    # uniform rounds: every labelled unit ends with the weight of one uniform round of 6 out of 10
    assert np.allclose(np.asarray(s.weight)[np.asarray(s.selected)], 10 / 6, rtol=1e-6)
    assert float(s.unassigned) == 0 and np.asarray(s.round_probabilities).shape == (2, p)
    frame = s.to_frame()
    assert list(frame.columns) == ["prompt_id", "probability", "selected", "weight", "round", "round_weight", "design"]
    assert frame["round"].tolist() == [0, 1, -1, 0, 1, -1, 0, 1, -1, -1]
    with pytest.raises(ValueError, match="already assign all the weight"):
        A.add_round(s, np.zeros(p), np.zeros(p, bool))


# --------------------------------------------------------------------------------------------------
# Sandwich and PPI++ lambda against float64 references


@pytest.fixture(scope="module")
def small_arena():
    """A small arena (4 models, 60 prompts) and an unequal-probability sample of 25 of its prompts."""
    arena = A.synthetic_arena(jax.random.key(11), num_models=4, num_units=60, pairs_per_unit=3, votes_per_pair=2,
                              judge_agreement=0.6)
    pi = A.inclusion_probabilities(np.asarray(arena.scores), 25, uniform_mix=0.4)
    return arena, pi


def _rows_np(rows):
    return [np.asarray(x) for x in (rows.a, rows.b, rows.outcome, rows.unit, rows.weight)]


@pytest.mark.parametrize("ties", ["half", "rao-kupper"])
@pytest.mark.parametrize("design", A.DESIGNS)
def test_clustered_sandwich_matches_float64_reference(small_arena, ties, design):
    arena, pi = small_arena
    sel = np.asarray(A.draw_sample(jax.random.key(2), jnp.asarray(pi), design=design))
    sample = A.single_round(sel, pi, design=design)
    human = A.restrict_rows(arena.human, sel)
    a, b, o, u, vw = _rows_np(human)
    w = vw.astype(np.float64) / pi[u]
    x = ref_fit(a, b, o, w, 4, ties)
    for variance in A.VARIANCES:
        for correction in A.CORRECTIONS:
            est = A.fit_design_weighted(human, sample, num_models=4, ties=ties, variance=variance, correction=correction)
            assert bool(est.converged)
            np.testing.assert_allclose(np.asarray(est.theta), x[:4], atol=2e-5)
            if ties == "rao-kupper":
                assert float(est.tie_param) == pytest.approx(np.exp(x[4]), rel=1e-4)
            cov = ref_covariance(x, a, b, o, w, u, vw, sel, pi, 60, ties, design, variance, correction)
            np.testing.assert_allclose(np.asarray(est.covariance), cov, rtol=2e-3, atol=1e-6 * np.abs(cov).max())


def test_sandwich_with_every_unit_labelled(small_arena):
    """pi = 1 everywhere: the design variance is 0 and the superpopulation variance is the cluster-robust
    sandwich, CR0 (`correction="none"`) or the delete-one-cluster jackknife's CR3 (default)."""
    arena, _ = small_arena
    p = arena.num_units
    sample = A.single_round(np.ones(p, bool), np.ones(p))
    a, b, o, u, vw = _rows_np(arena.human)
    x = ref_fit(a, b, o, vw.astype(np.float64), 4, "half")
    design = A.fit_design_weighted(arena.human, sample, num_models=4, variance="design")
    np.testing.assert_allclose(np.asarray(design.covariance), 0.0, atol=1e-12)
    bread = np.linalg.pinv(ref_hessian(x, a, b, o, vw.astype(np.float64), "half"), hermitian=True, rcond=1e-10)
    z = ref_unit_scores(x[:4], 0.0, a, b, o, u, vw, p, "half")
    cr0 = (bread @ (z.T @ z) @ bread)[:4, :4]
    sup = A.fit_design_weighted(arena.human, sample, num_models=4, variance="superpopulation", correction="none")
    np.testing.assert_allclose(np.asarray(sup.covariance), cr0, rtol=2e-3)
    zj = ref_jackknife_scores(x, bread, a, b, o, u, vw.astype(np.float64), np.ones(p), p, "half", z)
    cr3 = (bread @ (zj.T @ zj) @ bread)[:4, :4]
    sup = A.fit_design_weighted(arena.human, sample, num_models=4, variance="superpopulation")
    np.testing.assert_allclose(np.asarray(sup.covariance), cr3, rtol=2e-3)
    assert np.all(np.diag(cr3) > np.diag(cr0))


def ref_ppi(human, judge, sel, pi, m, num_units, ties="half"):
    """float64 PPI++: lambda at the human-only HT fit, then the PPI fit with it."""
    ha, hb, ho, hu, hw = _rows_np(human)
    ja, jb, jo, ju, jw = _rows_np(judge)
    w_unit = np.where(sel, 1.0 / np.where(sel, pi, 1.0), 0.0)
    wh = hw * w_unit[hu]
    x0 = ref_fit(ha, hb, ho, wh, m, ties)
    bread = np.linalg.pinv(ref_hessian(x0, ha, hb, ho, wh, ties), hermitian=True, rcond=1e-10)
    zh = ref_unit_scores(x0[:m], x0[m], ha, hb, ho, hu, hw, num_units, ties)
    zj = ref_unit_scores(x0[:m], x0[m], ja, jb, jo, ju, jw, num_units, ties)
    c = np.where(sel, (1 - pi) / pi**2, 0.0)
    d_hj = (zh * c[:, None]).T @ zj
    d_jj = (zj * c[:, None]).T @ zj
    num = np.trace((bread @ (d_hj + d_hj.T) @ bread)[:m, :m])
    den = 2 * np.trace((bread @ d_jj @ bread)[:m, :m])
    lam = float(np.clip(num / den, 0.0, 1.0))
    a = np.concatenate([ha, ja])
    b = np.concatenate([hb, jb])
    o = np.concatenate([ho, jo])
    wt = np.concatenate([wh, lam * jw * (1 - w_unit[ju])])
    x = ref_fit(a, b, o, wt, m, ties)
    return lam, x


def test_ppi_lambda_and_fit_match_float64_reference(small_arena):
    arena, pi = small_arena
    sel = np.asarray(A.poisson_sample(jax.random.key(4), jnp.asarray(pi)))
    sample = A.single_round(sel, pi)
    human = A.restrict_rows(arena.human, sel)
    lam_ref, x_ref = ref_ppi(human, arena.judge, sel, pi, 4, arena.num_units)
    assert 0.05 < lam_ref < 0.95  # an interior lambda: the formula, not the clipping, is tested
    est = A.fit_prediction_powered(human, arena.judge, sample, num_models=4)
    assert float(est.lam) == pytest.approx(lam_ref, abs=2e-4)
    np.testing.assert_allclose(np.asarray(est.theta), x_ref[:4], atol=3e-5)
    # lambda minimises the (plain, CR0) estimated summed variance of the ratings over [0, 1]
    plain = A.fit_prediction_powered(human, arena.judge, sample, num_models=4, correction="none")
    traces = [float(jnp.trace(A.fit_prediction_powered(human, arena.judge, sample, num_models=4, lam=float(g),
                                                       init=est.theta, correction="none").covariance))
              for g in np.linspace(0, 1, 6)]
    assert float(jnp.trace(plain.covariance)) <= min(traces) * (1 + 2e-2)


def test_ppi_with_the_humans_as_judge_gives_the_full_data_fit(small_arena):
    arena, pi = small_arena
    p = arena.num_units
    full = A.fit_design_weighted(arena.human, A.single_round(np.ones(p, bool), np.ones(p)), num_models=4)
    sel = np.asarray(A.poisson_sample(jax.random.key(5), jnp.asarray(pi)))
    est = A.fit_prediction_powered(A.restrict_rows(arena.human, sel), arena.human, A.single_round(sel, pi), num_models=4)
    assert float(est.lam) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(np.asarray(est.theta), np.asarray(full.theta), atol=2e-6)
    assert float(jnp.max(est.std_error)) < 1e-4
    assert float(est.effective_labels) == pytest.approx(p, rel=1e-3)


def test_ppi_with_an_uninformative_judge_returns_the_human_only_estimate():
    arena = A.synthetic_arena(jax.random.key(21), num_models=4, num_units=2000, pairs_per_unit=2, votes_per_pair=2)
    rng = np.random.default_rng(0)
    noise = arena.judge._replace(outcome=jnp.asarray(rng.integers(0, 2, arena.judge.outcome.shape[0]), jnp.int32))
    pi = np.full(arena.num_units, 0.3)
    sel = np.asarray(A.poisson_sample(jax.random.key(6), jnp.asarray(pi)))
    sample = A.single_round(sel, pi)
    human = A.restrict_rows(arena.human, sel)
    ht = A.fit_design_weighted(human, sample, num_models=4)
    est = A.fit_prediction_powered(human, noise, sample, num_models=4)
    assert float(est.lam) < 0.05
    assert float(jnp.max(jnp.abs(est.theta - ht.theta) / ht.std_error)) < 0.1
    zero = A.fit_prediction_powered(human, noise, sample, num_models=4, lam=0.0)
    np.testing.assert_allclose(np.asarray(zero.theta), np.asarray(ht.theta), atol=1e-6)
    np.testing.assert_allclose(np.asarray(zero.std_error), np.asarray(ht.std_error), rtol=1e-5)


@pytest.mark.parametrize("ties", A.ACTIVE_TIE_MODELS)
def test_closed_form_derivatives_equal_autodiff_of_the_library_likelihood(ties):
    """The solver's closed-form per-row derivatives against forward-over-reverse autodiff of
    `jaxrank.ratings.outcome_log_probs`, the one definition of the likelihoods (float64)."""
    from jaxrank.active import _Spec, _row_derivatives
    from jaxrank.ratings import outcome_log_probs

    fits = ties in ("rao-kupper", "davidson")
    with jax.enable_x64(True):
        delta = jnp.linspace(-30.0, 30.0, 61, dtype=jnp.float64)
        delta = jnp.concatenate([delta, jnp.array([-1e-3, 0.0, 1e-3, 0.37, -2.2])])
        outcomes = jnp.arange(4)
        for s in (np.log(0.05), np.log(0.6), np.log(3.0)):
            d = jnp.repeat(delta, 4)
            o = jnp.tile(outcomes, delta.shape[0])
            spec = _Spec(2, 1, ties, 0.0, "poisson", "design", 1, 1.0)

            def one(dd, oo):
                # one row: model 0 (theta = dd) against model 1 (theta = 0), log tie parameter s
                return _row_derivatives(jnp.array([dd, 0.0, s]), jnp.array([0]), jnp.array([1]), jnp.array([oo]), spec)

            got = [g[:, 0] for g in jax.vmap(one)(d, o)]

            def lp(dd, ss, oo):
                return outcome_log_probs(dd, oo, ties=ties, tie_param=jnp.exp(ss) if fits else None)

            grad = jax.grad(lp, argnums=(0, 1))
            hess = jax.jacfwd(grad, argnums=(0, 1))
            want_lp = jax.vmap(lp, (0, None, 0))(d, s, o)
            (gd, gs) = jax.vmap(grad, (0, None, 0))(d, s, o)
            (hdd, hds), (_, hss) = jax.vmap(hess, (0, None, 0))(d, s, o)
            want = [want_lp, gd, gs if fits else 0 * gs, hdd, hds if fits else 0 * hds, hss if fits else 0 * hss]
            for g, w, name in zip(got, want, ("lp", "g_d", "g_s", "h_dd", "h_ds", "h_ss")):
                np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-9, atol=1e-12, err_msg=f"{ties} {name}")


# --------------------------------------------------------------------------------------------------
# Calibration: unbiasedness and coverage over >= 1000 vmapped replays on a synthetic arena


CAL_UNITS, CAL_BUDGET, CAL_REPLAYS = 12_000, 3_000, 1_000


@pytest.fixture(scope="module")
def calibration():
    """4 models, 12,000 prompts (2 pairs x 3 human votes each, one judge vote per pair, the judge a mediocre
    copy of the humans) and the known full-population leaderboard: the fit on every prompt's votes."""
    arena = A.synthetic_arena(jax.random.key(0), num_models=4, num_units=CAL_UNITS, pairs_per_unit=2, votes_per_pair=3,
                              theta_scale=0.6, judge_agreement=0.5, judge_noise=1.0)
    full = A.fit_design_weighted(arena.human, A.single_round(np.ones(CAL_UNITS, bool), np.ones(CAL_UNITS)), num_models=4)
    assert bool(full.converged)
    return arena, np.asarray(full.theta)


CAL_CASES = {
    "uniform": dict(uniform_mix=1.0, judge=False),
    "score-proportional": dict(uniform_mix=0.4, judge=False),
    "ppi": dict(uniform_mix=1.0, judge=True),
}


@pytest.mark.parametrize("case, design", [(c, d) for c in CAL_CASES for d in A.DESIGNS if (c, d) != ("ppi", "systematic")])
def test_design_estimates_are_unbiased_and_intervals_cover(calibration, case, design):
    arena, theta_full = calibration
    opts = CAL_CASES[case]
    pi = A.inclusion_probabilities(np.asarray(arena.scores), CAL_BUDGET, uniform_mix=opts["uniform_mix"])
    res = A.replay_designs(jax.random.key(1), arena.human, pi, num_models=4, num_replays=CAL_REPLAYS, design=design,
                           judge=arena.judge if opts["judge"] else None, init=theta_full)
    assert bool(jnp.all(res.converged))
    theta, se = np.asarray(res.theta, np.float64), np.asarray(res.std_error, np.float64)
    # unbiased: the mean estimate is within Monte-Carlo error of the full-data fit, model by model
    mc = theta.std(0, ddof=1) / np.sqrt(CAL_REPLAYS)
    assert np.all(np.abs(theta.mean(0) - theta_full) <= 3.5 * mc), (theta.mean(0) - theta_full) / mc
    # calibrated: the 95% design intervals cover the full-data fit in 93-97% of replays
    covered = np.abs(theta - theta_full) <= Z95 * se
    assert 0.93 <= covered.mean() <= 0.97, covered.mean(0)
    assert np.all((covered.mean(0) >= 0.91) & (covered.mean(0) <= 0.99)), covered.mean(0)
    if opts["judge"]:
        lam = np.asarray(res.lam)
        assert 0.3 < lam.mean() < 1.0  # a mediocre judge: tuned, not clipped
        assert np.mean(np.asarray(res.effective_labels)) > 1.1 * CAL_BUDGET


def test_the_weighted_estimating_equation_is_exactly_unbiased(small_arena):
    """E[sum_S w_i z_i(theta_full)] = sum_all z_i(theta_full) = 0 for every design, at any sample size
    (the estimator's own O(1/n) bias is a finite-sample effect of solving it, checked above at scale)."""
    arena, pi = small_arena
    p = arena.num_units
    full = A.fit_design_weighted(arena.human, A.single_round(np.ones(p, bool), np.ones(p)), num_models=4)
    z = A.unit_scores(full.theta, arena.human, num_units=p)[:, :4]
    assert float(jnp.max(jnp.abs(z.sum(0)))) < 1e-4
    draws = 20_000
    keys = jax.random.split(jax.random.key(9), draws)

    def sequential(k):
        k1, k2 = jax.random.split(k)
        pi1 = jnp.full((p,), 10 / p)
        sel1 = A.poisson_sample(k1, pi1)
        # the second round favours prompts with large |z| of the first round's labelled neighbours: any rule
        # that sees only the past keeps the estimating equation unbiased
        u = jnp.abs(z).sum(1) * (1 + sel1.sum())
        pi2 = A.inclusion_probabilities_jax(u, 15, uniform_mix=0.3, eligible=~sel1)
        sel2 = A.poisson_sample(k2, pi2)
        return A.add_round(A.add_round(A.empty_sample(p), pi1, sel1, future_budget=15), pi2, sel2).weight

    for name, weights in (
        ("poisson", jax.vmap(lambda k: A.single_round(A.poisson_sample(k, pi), pi).weight)),
        ("systematic", jax.vmap(lambda k: A.single_round(A.systematic_sample(k, pi), pi, design="systematic").weight)),
        ("sequential", jax.vmap(sequential)),
    ):
        totals = np.asarray(jax.jit(weights)(keys) @ z, np.float64)  # [draws, M]
        mc = totals.std(0, ddof=1) / np.sqrt(draws)
        assert np.all(np.abs(totals.mean(0)) <= 4.0 * mc), (name, totals.mean(0) / mc)


def _two_round_sampler(arena, n1, n2, cells):
    p = arena.num_units

    def sampler(key, _):
        k1, k2 = jax.random.split(key)
        pi1 = jnp.full((p,), n1 / p)
        sel1 = A.poisson_sample(k1, pi1)
        interim = A.estimate(A.single_round(sel1, pi1), arena.human, num_models=arena.num_models,
                             variance="superpopulation", cells=cells)
        u = A.variance_reduction_scores(interim.theta, interim.covariance, arena.judge, num_units=p)
        pi2 = A.inclusion_probabilities_jax(u, n2, uniform_mix=0.3, eligible=~sel1)
        sel2 = A.poisson_sample(k2, pi2)
        return A.add_round(A.add_round(A.empty_sample(p), pi1, sel1, future_budget=n2), pi2, sel2)

    return sampler


def test_sequential_rounds_using_the_updated_leaderboard_stay_calibrated(calibration):
    arena, theta_full = calibration
    cells = A.unit_cells(arena.human, num_units=arena.num_units)
    res = A.replay_designs(jax.random.key(3), arena.human, num_models=4, num_replays=600,
                           sampler=_two_round_sampler(arena, 1500, 1500, cells), init=theta_full)
    theta, se = np.asarray(res.theta, np.float64), np.asarray(res.std_error, np.float64)
    assert np.asarray(res.num_labelled).mean() == pytest.approx(3000, rel=0.01)
    mc = theta.std(0, ddof=1) / np.sqrt(theta.shape[0])
    assert np.all(np.abs(theta.mean(0) - theta_full) <= 3.5 * mc), (theta.mean(0) - theta_full) / mc
    covered = np.abs(theta - theta_full) <= Z95 * se
    assert 0.93 <= covered.mean() <= 0.97, covered.mean(0)


# --------------------------------------------------------------------------------------------------
# Bootstrap over prompts


@pytest.mark.parametrize("variance", A.VARIANCES)
def test_bootstrap_spread_matches_the_sandwich(calibration, variance):
    """The bootstrap's standard errors equal the (coverage-tested) sandwich's on the same sample: multipliers
    with the design's variance for variance="design", prompts resampled for "superpopulation"."""
    arena, theta_full = calibration
    pi = A.inclusion_probabilities(np.asarray(arena.scores), CAL_BUDGET, uniform_mix=0.4)
    sel = np.asarray(A.poisson_sample(jax.random.key(8), jnp.asarray(pi)))
    sample = A.single_round(sel, pi)
    human = A.restrict_rows(arena.human, sel)
    boot = A.design_bootstrap(jax.random.key(2), human, sample, num_models=4, num_rounds=2000, variance=variance)
    assert bool(jnp.all(boot.converged))
    ratio = np.asarray(boot.std_error) / np.asarray(boot.fit.std_error)
    assert np.all(np.abs(ratio - 1) < 0.08), ratio  # 2,000 rounds: the SE of an SE ratio is ~1.6%
    assert np.all((np.asarray(boot.lower) < np.asarray(boot.fit.theta)) & (np.asarray(boot.fit.theta) < np.asarray(boot.upper)))


def test_ppi_bootstrap_matches_the_ppi_sandwich(calibration):
    arena, _ = calibration
    pi = np.full(CAL_UNITS, CAL_BUDGET / CAL_UNITS)
    sel = np.asarray(A.poisson_sample(jax.random.key(10), jnp.asarray(pi)))
    sample = A.single_round(sel, pi)
    boot = A.design_bootstrap(jax.random.key(3), A.restrict_rows(arena.human, sel), sample, num_models=4,
                              judge=arena.judge, num_rounds=2000)
    assert 0.3 < float(boot.fit.lam) < 1.0
    ratio = np.asarray(boot.std_error) / np.asarray(boot.fit.std_error)
    assert np.all(np.abs(ratio - 1) < 0.08), ratio
    with pytest.raises(ValueError, match="variance='design' only"):
        A.design_bootstrap(jax.random.key(3), A.restrict_rows(arena.human, sel), sample, num_models=4, judge=arena.judge,
                           variance="superpopulation")


# --------------------------------------------------------------------------------------------------
# Active pair sampling (live arenas)


def test_pair_sampling_probabilities_follow_the_arena_rule():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 5))
    cov = x.T @ x / 400
    counts = np.array([0, 3, 10, 1, 7, 2, 0, 4, 9, 5], float)
    probs = np.asarray(A.pair_sampling_probabilities(jnp.asarray(cov), jnp.asarray(counts), uniform_mix=0.2), np.float64)
    a, b = np.triu_indices(5, 1)
    var = cov[a, a] + cov[b, b] - 2 * cov[a, b]  # Var(theta_a - theta_b) after n_ab votes: V / n_ab
    per_vote = var * counts  # V, the per-vote variance of the pair's estimate
    shrink = np.sqrt(per_vote / np.maximum(counts, 1e-300)) - np.sqrt(per_vote / (counts + 1))
    shrink = np.where(counts == 0, np.sqrt(var), shrink)  # never shown: the whole width
    want = 0.8 * shrink / shrink.sum() + 0.2 / 10
    np.testing.assert_allclose(probs, want, rtol=1e-5)
    assert probs.sum() == pytest.approx(1.0, abs=1e-6)


def _misspecified_pairs(m=4):
    """Pair win probabilities that no Bradley–Terry model fits (a cycle), and the target: the BT fit of
    uniform match-making, i.e. of every pair's expected outcome with equal weight."""
    a, b = np.triu_indices(m, 1)
    rng = np.random.default_rng(4)
    theta = np.linspace(2.5, -2.5, m)  # pairs from even to lopsided: the rule favours the lopsided (uninformative) ones
    p = 1 / (1 + np.exp(-(theta[a] - theta[b]))) + rng.uniform(-0.2, 0.2, a.size)
    p = np.clip(p, 0.03, 0.97)
    rows = A.soft_unit_rows(a, b, p, np.arange(a.size))
    target = A.fit_design_weighted(rows, A.single_round(np.ones(a.size, bool), np.ones(a.size)), num_models=m)
    return a.astype(np.int32), b.astype(np.int32), p, np.asarray(target.theta)


def test_active_pair_sampling_reweighted_fit_targets_uniform_matchmaking():
    m = 4
    a, b, p_win, target = _misspecified_pairs(m)
    k = a.size
    rounds, per_round, replays = 8, 500, 600
    votes = rounds * per_round

    @jax.jit
    def replay(key):
        def round_(carry, inputs):
            rows_a, rows_b, rows_o, weights, counts = carry
            r, rk = inputs
            live = jnp.arange(votes) < r * per_round
            rows = A.UnitRows(rows_a, rows_b, rows_o, jnp.arange(votes, dtype=jnp.int32), jnp.ones((votes,)))
            s = A.Sample(design="importance", selected=live, probability=jnp.where(live, 1.0 / weights, 1.0),
                         round=jnp.where(live, 0, -1), round_weight=jnp.ones((1,)),
                         round_probabilities=jnp.ones((1, votes)), unassigned=jnp.zeros(()))
            fit = A.estimate(s, rows, num_models=m, cells=cells)
            cov = jnp.where(r > 0, fit.covariance, jnp.eye(m))
            probs = A.pair_sampling_probabilities(cov, counts, uniform_mix=0.05)
            k1, k2 = jax.random.split(rk)
            shown = A.sample_pairs(k1, probs, per_round)
            won = jax.random.uniform(k2, (per_round,)) < jnp.asarray(p_win, jnp.float32)[shown]
            idx = r * per_round + jnp.arange(per_round)
            rows_a = rows_a.at[idx].set(jnp.asarray(a)[shown])
            rows_b = rows_b.at[idx].set(jnp.asarray(b)[shown])
            rows_o = rows_o.at[idx].set(jnp.where(won, 0, 1))
            weights = weights.at[idx].set(A.importance_weights(probs, shown))
            counts = counts + jnp.bincount(shown, length=k)
            return (rows_a, rows_b, rows_o, weights, counts), None

        init = (jnp.zeros(votes, jnp.int32), jnp.ones(votes, jnp.int32), jnp.zeros(votes, jnp.int32), jnp.ones(votes),
                jnp.zeros(k))
        (ra, rb, ro, w, _), _ = jax.lax.scan(round_, init, (jnp.arange(rounds), jax.random.split(key, rounds)))
        rows = A.UnitRows(ra, rb, ro, jnp.arange(votes, dtype=jnp.int32), jnp.ones((votes,)))
        every = jnp.ones((votes,), bool)
        s = A.Sample(design="importance", selected=every, probability=1.0 / w, round=jnp.zeros((votes,), jnp.int32),
                     round_weight=jnp.ones((1,)), round_probabilities=jnp.ones((1, votes)), unassigned=jnp.zeros(()))
        weighted = A.estimate(s, rows, num_models=m, cells=cells)
        plain = A.estimate(A.single_round(every, jnp.ones(votes)), rows, num_models=m, variance="superpopulation",
                           cells=cells)
        return weighted.theta, weighted.std_error, plain.theta, jnp.std(w) / jnp.mean(w)

    # every (a, b, outcome) cell the rows can take, tabulated once (the rows themselves are traced)
    cell_rows = A.UnitRows(jnp.asarray(np.repeat(a, 2)), jnp.asarray(np.repeat(b, 2)), jnp.asarray(np.tile([0, 1], k)),
                           jnp.zeros(2 * k, jnp.int32), jnp.ones(2 * k))
    cells = A.unit_cells(cell_rows, num_models=m)
    theta, se, plain, spread = jax.vmap(replay)(jax.random.split(jax.random.key(0), replays))
    theta, se, plain = (np.asarray(x, np.float64) for x in (theta, se, plain))
    assert np.asarray(spread).mean() > 0.15  # the rule does favour some pairs (weights vary by > 15%)
    mc = theta.std(0, ddof=1) / np.sqrt(replays)
    assert np.all(np.abs(theta.mean(0) - target) <= 3.5 * mc), (theta.mean(0) - target) / mc
    covered = np.abs(theta - target) <= Z95 * se
    assert 0.93 <= covered.mean() <= 0.97, covered.mean(0)
    # without the logged weights the fit estimates another leaderboard (the actively sampled mixture of pairs)
    assert np.max(np.abs(plain.mean(0) - target) / (plain.std(0, ddof=1) / np.sqrt(replays))) > 5


# --------------------------------------------------------------------------------------------------
# Bad input: one clear error naming the argument


def test_fits_reject_votes_outside_the_sample_and_uncovered_judges(small_arena):
    arena, pi = small_arena
    sel = np.asarray(A.poisson_sample(jax.random.key(4), jnp.asarray(pi)))
    sample = A.single_round(sel, pi)
    with pytest.raises(ValueError, match="human: .* unit\\(s\\) with votes were not selected by the sample"):
        A.fit_design_weighted(arena.human, sample, num_models=4)
    human = A.restrict_rows(arena.human, sel)
    labelled = np.flatnonzero(sel)
    partial = A.restrict_rows(arena.judge, ~np.isin(np.arange(arena.num_units), labelled[:3]))
    with pytest.raises(ValueError, match="judge: the judge votes do not cover 3 of the .* human-labelled units"):
        A.fit_prediction_powered(human, partial, sample, num_models=4)
    with pytest.raises(ValueError, match="lam must lie in \\[0, 1\\]"):
        A.fit_prediction_powered(human, arena.judge, sample, num_models=4, lam=1.5)
    with pytest.raises(ValueError, match="ties='grounded-rao-kupper' is not supported"):
        A.fit_design_weighted(human, sample, num_models=4, ties="grounded-rao-kupper")
    with pytest.raises(ValueError, match="variance must be one of"):
        A.fit_design_weighted(human, sample, num_models=4, variance="model")
    with pytest.raises(ValueError, match="human: model index 3 >= num_models = 3"):
        A.fit_design_weighted(human, sample, num_models=3)


def test_fit_rejects_disconnected_labelled_votes():
    rows = A.unit_rows([0, 1, 2, 3], [1, 0, 3, 2], [0, 0, 0, 1], [0, 1, 2, 3])
    with pytest.raises(ValueError, match="split the models into 2 groups that were never compared"):
        A.fit_design_weighted(rows, A.single_round(np.ones(4, bool), np.ones(4)), num_models=4)


@pytest.mark.parametrize(
    "args, match",
    [
        (([0, 1], [1, 1], [0, 0], [0, 0]), "a and b: 1 row\\(s\\) compare a model with itself"),
        (([0, 1], [1, 0], [0, 5], [0, 0]), "outcome: codes must be 0"),
        (([0, 1], [1, 0], [0, 1], [0, -1]), "unit: indices must lie in"),
        (([0, 1], [1, 0, 1], [0, 1], [0, 0]), "b must be a 1-d array of the same length"),
    ],
)
def test_vote_rows_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        A.unit_rows(*args)
    with pytest.raises(ValueError, match="weight must be finite and >= 0"):
        A.unit_rows([0], [1], [0], [0], weight=np.array([-1.0]))
