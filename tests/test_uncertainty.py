"""Bootstrap and sandwich intervals, rank (UB), save/restore of a leaderboard."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import log_expit

from jaxrank import Votes
from jaxrank.ratings import fit_bradley_terry
from jaxrank.ratings.uncertainty import (
    BootstrapResult,
    SandwichResult,
    bootstrap_ratings,
    multinomial_counts,
    resampled_weights,
    load_leaderboard,
    rank_upper_bound,
    sandwich_intervals,
    save_leaderboard,
)

K = 400.0 / math.log(10.0)
M = 6
# All ordered pairs (i < j as a, j as b) x {a wins, b wins, tie}: a fixed row set, so every arena
# below has the same shapes and the fits compile once.
_I, _J = np.triu_indices(M, k=1)
ROW_A = np.repeat(_I, 3).astype(np.int32)
ROW_B = np.repeat(_J, 3).astype(np.int32)
ROW_O = np.tile(np.arange(3), _I.size).astype(np.int32)


def arena(rng, theta, votes_per_pair, *, tie_nu=0.0):
    """Counts of a Davidson arena (nu = 0 is plain Bradley-Terry, no ties), float64 NumPy."""
    d = theta[_I] - theta[_J]
    pa, pb, pt = np.exp(d / 2), np.exp(-d / 2), np.full_like(d, tie_nu)
    z = pa + pb + pt
    counts = np.stack([rng.multinomial(votes_per_pair, [x / s, y / s, t / s]) for x, y, t, s in zip(pa, pb, pt, z)])
    return Votes(models=tuple(f"m{i}" for i in range(M)), a=ROW_A, b=ROW_B, outcome=ROW_O, count=counts.reshape(-1))


def scipy_fit_half(w):
    """Independent float64 fit of the ties='half' likelihood (SciPy L-BFGS-B), centred."""
    a, b, o = ROW_A, ROW_B, ROW_O
    s = np.where(o == 0, 1.0, np.where(o == 1, 0.0, 0.5))

    def f(t):
        d = t[a] - t[b]
        nll = -np.sum(w * (s * log_expit(d) + (1 - s) * log_expit(-d)))
        g_row = -w * (s - 1 / (1 + np.exp(-d)))
        g = np.bincount(a, g_row, M) - np.bincount(b, g_row, M)
        return nll, g

    t = minimize(f, np.zeros(M), jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 1000}).x
    return t - t.mean()


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(1)
    theta = np.linspace(-1.0, 1.0, M)
    return arena(rng, theta, 60, tie_nu=0.6)


def test_rank_upper_bound_hand_example():
    lower = jnp.array([1100.0, 1050.0, 1000.0, 900.0, 890.0])
    upper = jnp.array([1200.0, 1150.0, 1099.0, 1000.0, 1001.0])
    # model 2's upper (1099) is below model 0's lower (1100) only: rank 2.
    # model 3 (upper 1000): models 0 and 1 are surely better; model 2's lower 1000 is not > 1000: rank 3.
    # model 4 (upper 1001): the same two, rank 3, although its interval differs from model 3's.
    np.testing.assert_array_equal(np.asarray(rank_upper_bound(lower, upper)), [1, 1, 2, 3, 3])
    with pytest.raises(ValueError, match="same shape"):
        rank_upper_bound(lower, upper[:3])


@pytest.mark.parametrize("sampler", ["votes", "multinomial"])
def test_bootstrap_rounds_are_exact_refits(small, sampler):
    key = jax.random.key(7)
    boot = bootstrap_ratings(key, small, num_rounds=8, chunk_size=5, sampler=sampler)
    assert boot.samples.shape == (8, M) and bool(boot.converged.all())
    count = np.asarray(small.rows().count)
    weights = np.asarray(resampled_weights(key, small, num_rounds=8, sampler=sampler))
    for r in (0, 7):  # the second chunk's last round too
        w = weights[r][: count.size]
        assert w.sum() == count.sum()
        ref = 1000.0 + K * scipy_fit_half(w.astype(np.float64))
        np.testing.assert_allclose(np.asarray(boot.samples[r]), ref, atol=0.01)
    if sampler == "multinomial":  # the rounds do not depend on how they are chunked
        other = bootstrap_ratings(key, small, num_rounds=8, chunk_size=3, sampler=sampler)
        np.testing.assert_allclose(np.asarray(other.samples), np.asarray(boot.samples), atol=1e-3)
        return
    # L-BFGS rounds (cold start) land on the same optima as the warm-started Newton rounds.
    lb = bootstrap_ratings(key, small, num_rounds=8, chunk_size=8, solver="lbfgs", sampler="votes")
    np.testing.assert_allclose(np.asarray(lb.samples), np.asarray(boot.samples), atol=0.05)
    r = np.asarray(boot.samples, np.float64)
    np.testing.assert_allclose(np.asarray(boot.lower), np.quantile(r, 0.025, axis=0), atol=1e-3)
    np.testing.assert_allclose(np.asarray(boot.median), np.quantile(r, 0.5, axis=0), atol=1e-3)


def test_multinomial_counts_are_exact_multinomial_draws_keyed_per_round():
    n, prob, rounds = 50, np.array([0.1, 0.2, 0.3, 0.4, 0.0]), 4000
    keys = jax.random.split(jax.random.key(3), rounds)
    c = np.asarray(multinomial_counts(keys, n, prob), np.float64)
    assert c.shape == (rounds, 5) and np.all(c.sum(axis=1) == n) and np.all(c[:, 4] == 0)
    assert np.all(c == np.round(c)) and np.all(c >= 0)
    # moments: mean n p and covariance n (diag p - p p^T), within Monte-Carlo error
    se_mean = np.sqrt(n * prob * (1 - prob) / rounds)
    assert np.all(np.abs(c.mean(0) - n * prob) <= 4 * se_mean + 1e-12), (c.mean(0) - n * prob) / (se_mean + 1e-12)
    cov = n * (np.diag(prob) - np.outer(prob, prob))
    np.testing.assert_allclose(np.cov(c[:, :4].T), cov[:4, :4], atol=0.15 * n * 0.25)
    # each round is a function of its own key: a prefix of the keys gives a prefix of the rounds
    np.testing.assert_array_equal(np.asarray(multinomial_counts(keys[:7], n, prob)), c[:7])
    assert abs(np.corrcoef(c[:-1, 3], c[1:, 3])[0, 1]) < 0.06  # neighbouring rounds independent
    for bad, match in [((keys[0], n, prob), "keys must be a 1-D"), ((keys, -1, prob), "n must be a non-negative"),
                       ((keys, n, np.zeros(3)), "prob must be"), ((keys, n, np.array([0.5, np.nan])), "prob must be")]:
        with pytest.raises(ValueError, match=match):
            multinomial_counts(*bad)


def test_bootstrap_multinomial_sampler_and_progress(small):
    calls = []
    boot = bootstrap_ratings(jax.random.key(0), small, num_rounds=10, chunk_size=4, sampler="multinomial",
                             progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 10), (4, 10), (8, 10), (10, 10)]
    assert np.isfinite(np.asarray(boot.samples)).all()


def test_bootstrap_coverage_near_nominal():
    """95 % percentile intervals cover the true (centred) rating in 90-99 % of model x replicate cases.

    40 replicates x 6 models = 240 cases; the binomial sd of the coverage at 0.95 is
    sqrt(0.95 * 0.05 / 240) = 0.014, so [0.90, 0.99] is about -3.5 / +2.8 sd around nominal (models of
    a replicate are correlated by the centring, which widens the spread a little)."""
    rng = np.random.default_rng(2026)
    theta = np.array([-0.9, -0.4, 0.0, 0.1, 0.5, 0.7])
    theta = theta - theta.mean()
    truth = 1000.0 + K * theta
    covered = []
    for rep in range(40):
        battles = arena(rng, theta, 40)
        boot = bootstrap_ratings(jax.random.key(rep), battles, num_rounds=200)
        covered.append((np.asarray(boot.lower) <= truth) & (truth <= np.asarray(boot.upper)))
    coverage = float(np.mean(covered))
    assert 0.90 <= coverage <= 0.99, coverage


def numpy_sandwich_se(battles, fit, ties, eps=1e-4):
    """float64 reference: scores and Hessian by central differences of a NumPy log-likelihood."""
    rows = battles.rows()
    a, b, o = (np.asarray(x) for x in (rows.a, rows.b, rows.outcome))
    w = np.asarray(rows.count, np.float64)
    fits_tie = ties == "davidson"

    def row_lp(x):
        d = x[a] - x[b]
        if ties == "half":
            la, lb = log_expit(d), log_expit(-d)
            return np.where(o == 0, la, np.where(o == 1, lb, 0.5 * (la + lb)))
        nu = np.exp(x[M])
        logz = np.log(np.exp(d / 2) + np.exp(-d / 2) + nu)
        return np.where(o == 0, d / 2 - logz, np.where(o == 1, -d / 2 - logz, np.log(nu) - logz))

    x0 = np.asarray(fit.theta, np.float64)
    if fits_tie:
        x0 = np.append(x0, np.log(float(fit.tie_param)))
    dim = x0.size
    scores = np.zeros((a.size, dim))
    for i in range(dim):
        e = np.zeros(dim)
        e[i] = eps
        scores[:, i] = (row_lp(x0 + e) - row_lp(x0 - e)) / (2 * eps)

    def grad(x):
        g = np.zeros(dim)
        for i in range(dim):
            e = np.zeros(dim)
            e[i] = eps
            g[i] = -np.sum(w * (row_lp(x + e) - row_lp(x - e))) / (2 * eps)
        return g

    hess = np.zeros((dim, dim))
    for i in range(dim):
        e = np.zeros(dim)
        e[i] = eps
        hess[:, i] = (grad(x0 + e) - grad(x0 - e)) / (2 * eps)
    meat = (scores * w[:, None]).T @ scores
    h_pinv = np.linalg.pinv(hess[:M, :M]) if not fits_tie else None
    if fits_tie:
        # Pseudo-inverse on the identified subspace: project theta onto sum zero, keep the tie direction.
        basis = np.zeros((dim, dim - 1))
        q, _ = np.linalg.qr(np.eye(M) - 1.0 / M)
        basis[:M, : M - 1] = q[:, : M - 1]
        basis[M, M - 1] = 1.0
        inv = basis @ np.linalg.inv(basis.T @ hess @ basis) @ basis.T
        cov = inv @ meat @ inv
    else:
        cov = h_pinv @ meat[:M, :M] @ h_pinv
    return K * np.sqrt(np.diag(cov)[:M])


@pytest.mark.parametrize("ties", ["half", "davidson"])
def test_sandwich_matches_float64_reference(small, ties):
    fit = fit_bradley_terry(small, ties=ties)
    sw = sandwich_intervals(small, fit, confidence=0.9)
    ref = numpy_sandwich_se(small, fit, ties)
    np.testing.assert_allclose(np.asarray(sw.std_error), ref, rtol=2e-3)
    z = 1.6448536269514722
    np.testing.assert_allclose(np.asarray(sw.upper - sw.ratings), z * np.asarray(sw.std_error), rtol=1e-5)


def test_sandwich_anchor_pins_the_anchor(small):
    fit = fit_bradley_terry(small, anchor="m2", anchor_rating=1200.0)
    sw = sandwich_intervals(small, fit, anchor="m2", anchor_rating=1200.0)
    se = np.asarray(sw.std_error)
    assert se[2] < 1e-3 and np.all(np.delete(se, 2) > 1.0)
    assert float(sw.ratings[2]) == pytest.approx(1200.0, abs=1e-3)


def test_sandwich_agrees_with_bootstrap_when_well_specified():
    """Plain Bradley-Terry data (no ties) fitted by the same model: the sandwich and bootstrap standard
    errors estimate the same thing. With 500 rounds the bootstrap sd has ~3.2 % relative error, so
    per-model ratios within [0.85, 1.15] are a wide (> 4.5 sd) but meaningful band."""
    rng = np.random.default_rng(5)
    battles = arena(rng, np.linspace(-0.8, 0.8, M), 400)
    fit = fit_bradley_terry(battles)
    sw = sandwich_intervals(battles, fit)
    boot = bootstrap_ratings(jax.random.key(1), battles, num_rounds=500, fit=fit)
    ratio = np.asarray(sw.std_error) / np.asarray(boot.std_error)
    assert np.all((ratio > 0.85) & (ratio < 1.15)), ratio


def test_save_load_round_trip(small, tmp_path):
    fit = fit_bradley_terry(small, ties="davidson")
    boot = bootstrap_ratings(jax.random.key(0), small, num_rounds=6, ties="davidson", fit=fit)
    sw = sandwich_intervals(small, fit)
    for name, intervals in (("boot", boot), ("sandwich", sw), ("none", None)):
        save_leaderboard(tmp_path / name, fit, intervals, metadata={"source": "test"})
        fit2, int2 = load_leaderboard(tmp_path / name)
        assert (fit2.models, fit2.ties, fit2.scale, fit2.base, fit2.init) == (fit.models, fit.ties, fit.scale, fit.base, fit.init)
        for x, y in zip(jax.tree_util.tree_leaves(fit), jax.tree_util.tree_leaves(fit2)):
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        if intervals is None:
            assert int2 is None
            continue
        assert type(int2) is type(intervals) and int2.confidence == intervals.confidence
        for x, y in zip(jax.tree_util.tree_leaves(intervals), jax.tree_util.tree_leaves(int2)):
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    with pytest.raises(FileExistsError):
        save_leaderboard(tmp_path / "boot", fit, boot)
    assert isinstance(boot, BootstrapResult) and isinstance(sw, SandwichResult)


def test_bad_input(small):
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="num_rounds"):
        bootstrap_ratings(key, small, num_rounds=1)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ratings(key, small, num_rounds=4, confidence=95)
    with pytest.raises(ValueError, match="sampler"):
        bootstrap_ratings(key, small, num_rounds=4, sampler="poisson")
    with pytest.raises(ValueError, match="ties"):
        bootstrap_ratings(key, small, num_rounds=4, ties="draw")
    with pytest.raises(TypeError, match="unexpected keyword"):
        bootstrap_ratings(key, small, num_rounds=4, weights=np.ones(3))
    with pytest.raises(TypeError, match="votes"):
        bootstrap_ratings(key, "votes.csv", num_rounds=4)
    with pytest.raises(TypeError, match="progress"):
        bootstrap_ratings(key, small, num_rounds=4, progress=3)
    fit = fit_bradley_terry(small)
    with pytest.raises(ValueError, match="confidence"):
        sandwich_intervals(small, fit, confidence=0.0)
    with pytest.raises(TypeError, match="result"):
        sandwich_intervals(small, {"ratings": 1})
    with pytest.raises(TypeError, match="intervals"):
        save_leaderboard("/tmp/never-written", fit, intervals=np.ones(3))


def test_rank_by_rating_and_tied_groups():
    from jaxrank.ratings import rank_by_rating, tied_groups

    np.testing.assert_array_equal(np.asarray(rank_by_rating(jnp.array([1010.0, 1100.0, 1010.0, 900.0]))), [2, 1, 2, 4])
    ratings = np.array([1200.0, 1190.0, 1100.0, 1095.0, 1000.0])
    lower = ratings - np.array([20.0, 20.0, 20.0, 30.0, 5.0])
    upper = ratings + np.array([20.0, 20.0, 20.0, 30.0, 5.0])
    # 1190's interval reaches the leader's lower bound 1180; 1100 (upper 1120) does not: it leads group 2,
    # which 1095 (upper 1125 >= 1080) joins; 1000 (upper 1005) leads group 3.
    np.testing.assert_array_equal(tied_groups(ratings, lower, upper), [1, 1, 2, 2, 3])
    # Order of the models does not matter, only their ratings and intervals.
    perm = np.array([3, 0, 4, 2, 1])
    np.testing.assert_array_equal(tied_groups(ratings[perm], lower[perm], upper[perm]), np.array([1, 1, 2, 2, 3])[perm])
    with pytest.raises(ValueError, match="same shape"):
        tied_groups(ratings, lower[:2], upper)


def test_prompt_bootstrap_resamples_whole_prompts():
    """unit='prompts' draws prompts with replacement, each with all its votes: when votes on a prompt share
    a prompt effect, the cluster bootstrap is wider than the vote bootstrap; its rounds are exact refits."""
    rng = np.random.default_rng(4)
    rows = []
    for p in range(60):
        effect = rng.normal(0, 1.5, M)  # the prompt moves every model: votes on it are correlated
        for _ in range(10):
            i, j = rng.choice(M, 2, replace=False)
            d = np.linspace(-0.5, 0.5, M)[i] - np.linspace(-0.5, 0.5, M)[j] + effect[i] - effect[j]
            rows.append((f"m{i}", f"m{j}", "model_a" if rng.random() < 1 / (1 + np.exp(-d)) else "model_b", f"p{p}"))
    votes = Votes.from_arrays([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                              prompt=[r[3] for r in rows])
    fit = fit_bradley_terry(votes)
    by_vote = bootstrap_ratings(jax.random.key(0), votes, num_rounds=300, fit=fit)
    by_prompt = bootstrap_ratings(jax.random.key(0), votes, num_rounds=300, fit=fit, unit="prompts")
    assert by_prompt.unit == "prompts"
    assert np.median(np.asarray(by_prompt.std_error) / np.asarray(by_vote.std_error)) > 1.2
    w = np.asarray(resampled_weights(jax.random.key(0), votes, num_rounds=300, unit="prompts"))[:2]
    u = votes.rows().num_rows
    assert np.all(np.isin(w.sum(axis=1), np.arange(0, 1000, 10)))  # whole prompts of 10 votes
    for r in range(2):
        ref = fit_bradley_terry(votes, row_weights=w[r, :u].astype(np.float32))
        np.testing.assert_allclose(np.asarray(by_prompt.samples[r]), np.asarray(ref.ratings), atol=0.05)
    with pytest.raises(ValueError, match="unit='prompts' needs prompt ids"):
        bootstrap_ratings(jax.random.key(0), votes.replace(prompt=None, prompt_ids=None), num_rounds=4, unit="prompts")


def test_both_bad_under_a_tie_model_warns():
    votes = Votes.from_arrays(["x", "y", "x", "y"], ["y", "x", "y", "x"], ["model_a", "model_b", "tie", "tie (bothbad)"])
    with pytest.warns(UserWarning, match=r"ties='rao-kupper' has no both-bad outcome.*ties='grounded-rao-kupper'"):
        fit_bradley_terry(votes, ties="rao-kupper")
