"""Soft outcomes, per-vote weights and style control: SciPy float64 references of the likelihoods, recovery
of a known length effect, and the coverage of bootstrap and sandwich intervals on weighted, soft votes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize
from scipy.special import expit, log_expit

from jaxrank import Votes
from jaxrank.cli import main
from jaxrank.ratings import (
    bootstrap_ratings,
    fit_bradley_terry,
    sandwich_intervals,
    solve_bradley_terry,
    style_design,
)

ELO = 400.0 / math.log(10.0)
ELO_TOL = 0.01  # Elo points, as the other float64 reference tests
M = 5
PAIRS = np.array([(i, j) for i in range(M) for j in range(i + 1, M)])
THETA = np.array([0.6, 0.3, 0.0, -0.2, -0.7])


def soft_arena(rng, votes_per_pair=40, *, concentration=4.0):
    """Soft votes with E[p] = sigmoid(theta_a - theta_b) (Beta-distributed judge probabilities) and
    exponential per-vote weights independent of the outcome: the weighted fractional-target MLE is
    consistent for theta."""
    pair = np.repeat(np.arange(len(PAIRS)), votes_per_pair)
    swap = rng.random(pair.size) < 0.5
    a = np.where(swap, PAIRS[pair, 1], PAIRS[pair, 0])
    b = np.where(swap, PAIRS[pair, 0], PAIRS[pair, 1])
    mu = expit(THETA[a] - THETA[b])
    p = rng.beta(concentration * mu, concentration * (1 - mu))
    p = np.clip(p, 1e-3, 1 - 1e-3)
    p = np.where(p == 0.5, 0.5 + 1e-6, p)
    w = rng.exponential(1.0, pair.size)
    return Votes(models=tuple(f"m{i}" for i in range(M)), a=a, b=b,
                 outcome=np.where(p > 0.5, 0, 1), p_a=p, weight=w)


# --------------------------------------------------------------------------------------------------
# Soft outcomes: the fractional-target likelihood, against SciPy in float64


def scipy_soft_fit(a, b, p, w, hard_tie=None, ties="half"):
    """float64 fit of sum w (p log P(a) + (1 - p) log P(b)) (+ sum over hard tie votes of log P(tie)),
    written here from the models' formulas; theta centred."""
    hard_tie = np.zeros(a.size, bool) if hard_tie is None else hard_tie

    def nll(x):
        d = x[a] - x[b]
        if ties == "half":
            lp_a, lp_b = log_expit(d), log_expit(-d)
            lp_t = 0.5 * (lp_a + lp_b)
        else:  # rao-kupper, alpha = exp(x[M])
            alpha = math.exp(x[M])
            lp_a, lp_b = log_expit(d - alpha), log_expit(-d - alpha)
            lp_t = np.log(np.sinh(alpha)) - np.log(np.cosh(d) + np.cosh(alpha))
        decisive = p * lp_a + (1 - p) * lp_b
        return -np.sum(w * np.where(hard_tie, lp_t, decisive))

    x0 = np.zeros(M + (ties != "half"))
    res = minimize(nll, x0, jac="3-point", method="L-BFGS-B", options=dict(maxiter=5000, gtol=1e-10, ftol=1e-16))
    theta = res.x[:M] - res.x[:M].mean()
    return theta, (math.exp(res.x[M]) if ties != "half" else float("nan"))


def test_soft_outcomes_equal_scipy_float64():
    votes = soft_arena(np.random.default_rng(0))
    fit = fit_bradley_terry(votes)
    theta_ref, _ = scipy_soft_fit(votes.a, votes.b, votes.p_a, votes.weight)
    np.testing.assert_allclose(np.asarray(fit.ratings), 1000.0 + ELO * theta_ref, rtol=0, atol=ELO_TOL)
    # Thresholding the soft outcomes is another (and here a different) estimate: soft labels are not hard ones.
    hard = votes.replace(p_a=None)
    assert np.abs(np.asarray(fit_bradley_terry(hard).ratings) - np.asarray(fit.ratings)).max() > 1.0


def test_soft_outcomes_under_rao_kupper_put_no_mass_on_a_tie():
    """Rao-Kupper with soft votes: each soft vote contributes p log P(a) + (1 - p) log P(b); hard ties
    log P(tie). The tie parameter is learned from the hard ties alone."""
    rng = np.random.default_rng(1)
    votes = soft_arena(rng)
    tie = rng.random(len(votes)) < 0.15
    p = np.where(tie, 0.5, votes.p_a)
    votes = votes.replace(p_a=p, outcome=np.where(tie, 2, votes.outcome))
    fit = fit_bradley_terry(votes, ties="rao-kupper")
    theta_ref, alpha_ref = scipy_soft_fit(votes.a, votes.b, p, votes.weight, hard_tie=tie, ties="rao-kupper")
    np.testing.assert_allclose(np.asarray(fit.ratings), 1000.0 + ELO * theta_ref, rtol=0, atol=ELO_TOL)
    np.testing.assert_allclose(float(fit.tie_param), alpha_ref, rtol=1e-4)


def test_all_ties_under_a_tie_model_is_an_error():
    votes = Votes.from_arrays(["x", "y", "z"], ["y", "z", "x"], ["tie", "tie (bothbad)", "tie"])
    for ties in ("rao-kupper", "davidson"):
        with pytest.raises(ValueError, match=f"ties='{ties}' but every vote is a tie"):
            fit_bradley_terry(votes, ties=ties)
    flat = fit_bradley_terry(votes, ties="half")  # well defined: everyone equal
    np.testing.assert_allclose(np.asarray(flat.ratings), 1000.0, atol=1e-3)
    with pytest.raises(ValueError, match="anchor_rating must be a finite number"):
        fit_bradley_terry(votes, anchor="x", anchor_rating=float("nan"))
    with pytest.raises(ValueError, match="anchor_rating must be a finite number"):
        fit_bradley_terry(votes, anchor="x", anchor_rating=float("inf"))


# --------------------------------------------------------------------------------------------------
# Style control


BETA_TRUE = 0.8


def style_arena(rng, votes_per_pair=300):
    """Hard votes of a Bradley-Terry model (no ties: the fit's model is the truth) whose logit has a known
    length effect BETA_TRUE per sd of the normalised length difference; longer answers for the stronger
    models, so length confounds the plain ratings."""
    pair = np.repeat(np.arange(len(PAIRS)), votes_per_pair)
    a, b = PAIRS[pair, 0], PAIRS[pair, 1]
    swap = rng.random(pair.size) < 0.5
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    len_a = rng.lognormal(6.0 + 0.3 * THETA[a], 0.5)
    len_b = rng.lognormal(6.0 + 0.3 * THETA[b], 0.5)
    d = (len_a - len_b) / (len_a + len_b)
    x = (d - d.mean()) / d.std()
    pa = expit(THETA[a] - THETA[b] + BETA_TRUE * x)
    winner = np.where(rng.random(pair.size) < pa, "model_a", "model_b")
    names = np.asarray([f"m{i}" for i in range(M)])
    return Votes.from_arrays(names[a], names[b], winner, features={"length": (len_a, len_b)})


@pytest.fixture(scope="module")
def styled():
    votes = style_arena(np.random.default_rng(3))
    fit = fit_bradley_terry(votes, style=("length",), style_l2=1.0)
    plain = fit_bradley_terry(votes)
    return votes, fit, plain


def scipy_style_fit(votes, style_l2):
    """float64 fit of the penalised style likelihood, ties as half a win each way, written out here."""
    x = style_design(votes, ("length",))[:, 0]
    a, b = votes.a.astype(np.int64), votes.b.astype(np.int64)
    s = np.where(votes.outcome == 0, 1.0, np.where(votes.outcome == 1, 0.0, 0.5))

    def nll(params):
        theta, beta = params[:M], params[M]
        d = theta[a] - theta[b] + beta * x
        value = -np.sum(s * log_expit(d) + (1 - s) * log_expit(-d)) + 0.5 * style_l2 * beta * beta
        g_d = -(s - expit(d))
        grad = np.append(np.bincount(a, g_d, M) - np.bincount(b, g_d, M), np.sum(g_d * x) + style_l2 * beta)
        return value, grad

    res = minimize(nll, np.zeros(M + 1), jac=True, method="L-BFGS-B", options=dict(maxiter=5000, gtol=1e-10, ftol=1e-16))
    return res.x[:M] - res.x[:M].mean(), res.x[M]


def test_style_fit_equals_scipy_penalised_fit(styled):
    votes, fit, _ = styled
    assert bool(fit.converged) and fit.style == ("length",)
    theta_ref, beta_ref = scipy_style_fit(votes, 1.0)
    np.testing.assert_allclose(np.asarray(fit.ratings), 1000.0 + ELO * theta_ref, rtol=0, atol=ELO_TOL)
    np.testing.assert_allclose(float(fit.beta[0]), beta_ref, rtol=0, atol=1e-4)


def test_style_recovers_the_length_effect_within_its_intervals(styled):
    votes, fit, plain = styled
    sw = sandwich_intervals(votes, fit)
    boot = bootstrap_ratings(jax.random.key(0), votes, num_rounds=200, fit=fit)
    for lo, hi in ((sw.beta_lower, sw.beta_upper), (boot.beta_lower, boot.beta_upper)):
        assert float(lo[0]) < BETA_TRUE < float(hi[0]), (float(lo[0]), float(hi[0]))
    # The two interval methods agree on beta's standard error (well-specified model, 3,000 votes).
    assert 0.8 < float(sw.beta_std_error[0]) / float(boot.beta_std_error[0]) < 1.25
    # Controlling for length moves the confounded ratings towards the truth, and the intervals of the
    # ratings account for beta: wider than the plain fit's.
    truth = 1000.0 + ELO * (THETA - THETA.mean())
    assert np.abs(np.asarray(fit.ratings) - truth).max() < np.abs(np.asarray(plain.ratings) - truth).max()
    plain_sw = sandwich_intervals(votes, plain)
    assert np.all(np.asarray(sw.std_error) > np.asarray(plain_sw.std_error))


def test_beta_fixed_at_zero_reproduces_the_plain_fit(styled):
    votes, _, plain = styled
    rows = votes.rows(merge=False)
    w, a, b, o = rows.count, rows.a, rows.b, rows.outcome
    zero = jnp.zeros((rows.num_rows, 1), jnp.float32)
    with_zero = solve_bradley_terry(w, a, b, o, num_models=M, features=zero)
    without = solve_bradley_terry(w, a, b, o, num_models=M)
    assert float(with_zero.beta[0]) == 0.0
    np.testing.assert_array_equal(np.asarray(with_zero.theta), np.asarray(without.theta))
    # And a prior that pins beta to 0 gives the plain leaderboard.
    pinned = fit_bradley_terry(votes, style=("length",), style_l2=1e9)
    np.testing.assert_allclose(np.asarray(pinned.ratings), np.asarray(plain.ratings), rtol=0, atol=ELO_TOL)


def test_style_bad_input(styled):
    votes, _, _ = styled
    with pytest.raises(ValueError, match=r"style feature\(s\) 'bold' are not in the votes; available: 'length'"):
        fit_bradley_terry(votes, style=("bold",))
    fa, fb = votes.feature("length")
    flat = votes.replace(features_a=np.ones((len(votes), 1)), features_b=np.ones((len(votes), 1)))
    with pytest.raises(ValueError, match="style feature 'length' does not vary over the votes"):
        fit_bradley_terry(flat, style="length")
    neg = votes.replace(features_a=(fa - 1e6)[:, None])
    with pytest.raises(ValueError, match="style feature 'length' has .* negative value"):
        fit_bradley_terry(neg, style="length")
    with pytest.raises(ValueError, match="style control is not available with ties='grounded-rao-kupper'"):
        fit_bradley_terry(votes, style="length", ties="grounded-rao-kupper")
    with pytest.raises(ValueError, match="style_l2 must be a finite number >= 0"):
        fit_bradley_terry(votes, style="length", style_l2=-1.0)


def test_cli_style_rank_change_and_groups(styled, tmp_path, capsys):
    votes, fit, plain = styled
    frame = votes.to_frame()
    frame.to_csv(tmp_path / "votes.csv", index=False)
    out = tmp_path / "lb.csv"
    assert main(["leaderboard", str(tmp_path / "votes.csv"), "--style", "length", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "style coefficients" in printed and "length" in printed
    table = pd.read_csv(out)
    assert list(table.columns) == ["model", "rating", "lower", "upper", "rank_ub", "battles", "rank", "tied_group",
                                   "rank_change"]
    ratings = dict(zip(votes.models, np.asarray(fit.ratings, np.float64)))
    np.testing.assert_allclose(table["rating"], [ratings[m] for m in table["model"]], atol=1e-3)
    plain_rank = {m: 1 + int(np.sum(np.asarray(plain.ratings) > r)) for m, r in zip(votes.models, np.asarray(plain.ratings))}
    assert table["rank_change"].tolist() == [plain_rank[m] - r for m, r in zip(table["model"], table["rank"])]
    assert table["rank"].tolist() == list(range(1, M + 1)) and table["tied_group"].iloc[0] == 1
    # Features from two named columns (NAME=COL_A:COL_B) give the same fit.
    renamed = frame.rename(columns={"length_a": "chars_1", "length_b": "chars_2"})
    renamed.to_csv(tmp_path / "renamed.csv", index=False)
    out2 = tmp_path / "lb2.csv"
    assert main(["leaderboard", str(tmp_path / "renamed.csv"), "--style", "length=chars_1:chars_2", "--out", str(out2)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out2), table)
    capsys.readouterr()
    assert main(["leaderboard", str(tmp_path / "votes.csv"), "--style", "bold"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxrank: error: --style:") and "'bold'" in err and "length" in err and err.count("\n") == 1
    for bad in ("gpt=nan", "gpt=inf"):
        assert main(["leaderboard", str(tmp_path / "votes.csv"), "--anchor", bad]) == 2
        assert "--anchor: RATING must be a finite number" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# Coverage of the intervals of weighted, soft votes


REPLAYS = 300


@pytest.fixture(scope="module")
def coverage_runs():
    """Bootstrap (200 rounds) and sandwich 95 % intervals of REPLAYS weighted soft arenas (1,000 votes each:
    exponential weights halve the effective sample size, and with fewer votes both methods under-cover a
    little, as first-order methods do in small samples).

    The shapes are the same in every replay (20 rows, 1,000 distinct votes), so the fit, the vmapped
    bootstrap rounds and the sandwich compile once."""
    rng = np.random.default_rng(2026)
    truth = 1000.0 + ELO * (THETA - THETA.mean())
    boot_cover, sw_cover, widths = [], [], []
    for rep in range(REPLAYS):
        votes = soft_arena(rng, votes_per_pair=100)
        fit = fit_bradley_terry(votes)
        boot = bootstrap_ratings(jax.random.key(rep), votes, num_rounds=200, fit=fit)
        sw = sandwich_intervals(votes, fit)
        boot_cover.append((np.asarray(boot.lower) <= truth) & (truth <= np.asarray(boot.upper)))
        sw_cover.append((np.asarray(sw.lower) <= truth) & (truth <= np.asarray(sw.upper)))
        widths.append((np.asarray(boot.upper - boot.lower), np.asarray(sw.upper - sw.lower)))
    return np.asarray(boot_cover), np.asarray(sw_cover), np.asarray(widths)


@pytest.mark.slow
def test_weighted_soft_bootstrap_covers_at_nominal(coverage_runs):
    """1,500 model x replay cases: the binomial sd of a 95 % coverage is 0.0056, so [0.93, 0.97] is a
    3.5-sd band. Resampling unique rows with their mean weight (the old bootstrap) covered far less: it
    drops the spread of the weights."""
    boot, _, _ = coverage_runs
    coverage = float(boot.mean())
    assert 0.93 <= coverage <= 0.97, coverage


@pytest.mark.slow
def test_weighted_soft_sandwich_covers_at_nominal(coverage_runs):
    boot, sw, widths = coverage_runs
    coverage = float(sw.mean())
    assert 0.93 <= coverage <= 0.97, coverage
    # Both methods estimate the same spread: their widths agree on average within 10 %.
    ratio = widths[:, 1].mean() / widths[:, 0].mean()
    assert 0.9 < ratio < 1.1, ratio
