"""P2L's residual head (beta = beta_global + Delta, L2 chosen on validation), soft outcomes and weights in the
P2L likelihood (float64 NumPy reference), and the held-out comparison with its prompt bootstrap (coverage on
simulated data with a known mean difference)."""

import jax
import numpy as np
import pytest

from jaxrank import Votes
from jaxrank.p2l import (
    compare_heldout,
    load_p2l,
    p2l_loss,
    save_p2l,
    train_p2l,
    vote_nll,
    VoteNLL,
)
from jaxrank.ratings.bradley_terry import solve_bradley_terry

GRID = (1e-3, 1e-1, 10.0)
# A small configuration shared by the tests (one compiled epoch per data shape).
CONFIG = dict(loss="bt-tie", learning_rate=0.05, batch_size=128, max_epochs=12, val_fraction=0.25, patience=3,
              delta_l2=GRID)


def arena(seed, *, informative, num_prompts=120, num_models=4, votes_per_prompt=24, soft=True):
    """Prompts of two kinds (feature x0 = +-1) whose leaderboards differ (informative) or not; soft votes."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 2, num_prompts) * 2 - 1
    x = np.concatenate([kind[:, None], rng.normal(size=(num_prompts, 2))], axis=1).astype(np.float32)
    base = np.linspace(-1, 1, num_models)
    shift = 1.5 * kind[:, None] * np.array([1, -1, 0.5, -0.5])[:num_models]
    beta = base + (shift if informative else 0.0 * shift)
    n = num_prompts * votes_per_prompt
    prompt = np.repeat(np.arange(num_prompts), votes_per_prompt)
    a = rng.integers(0, num_models, n)
    b = (a + rng.integers(1, num_models, n)) % num_models
    p = 1 / (1 + np.exp(-(beta[prompt, a] - beta[prompt, b])))
    if soft:  # a judge's probability: the truth blurred
        p_a = np.clip(p + rng.normal(0, 0.1, n), 0.0, 1.0)
        votes = Votes.from_arrays(a, b, p_a=p_a, prompt=prompt, weight=rng.uniform(0.5, 2.0, n),
                                  models=[f"m{i}" for i in range(num_models)])
    else:
        votes = Votes.from_arrays(a, b, (rng.random(n) > p).astype(int), prompt=prompt,
                                  models=[f"m{i}" for i in range(num_models)])
    # Votes sorts prompt ids as strings: features follow that order.
    order = np.array([int(i) for i in votes.prompt_ids])
    return x[order], votes


def global_theta(votes, l2=1e-3):
    rows = votes.rows(merge=False)
    return np.asarray(solve_bradley_terry(np.asarray(rows.count, np.float32), rows.a, rows.b, rows.outcome,
                                          num_models=votes.num_models, ties="half", l2=l2).theta)


@pytest.fixture(scope="module")
def constant_fit():
    x, votes = arena(0, informative=False)
    x = np.ones_like(x)  # an uninformative representation: every prompt looks the same
    return x, votes, train_p2l(jax.random.key(0), x, votes, **CONFIG)


def test_uninformative_representation_gives_the_global_leaderboard(constant_fit):
    x, votes, model = constant_fit
    beta = np.asarray(model.coefficients(x)[0])
    # The global maximum-likelihood fit of the TRAINING prompts' votes (the validation split's complement):
    # the head's base is that fit under a weak prior (l2 = 1e-3, so that it always exists), and the head's
    # bias may only take the prior's shrinkage back.
    from jaxrank.p2l import _split_by_prompt

    train_mask, _ = _split_by_prompt(jax.random.split(jax.random.key(0), 3)[0], votes, CONFIG["val_fraction"])
    theta = global_theta(votes.subset(train_mask), l2=0.0)
    np.testing.assert_allclose(beta, np.broadcast_to(theta - theta.mean(), beta.shape), atol=3e-3)
    h = model.history
    assert h["best_val_nll"] <= h["baseline_val_nll"] + 1e-6
    assert len(h["delta_l2_val_nll"]) == len(GRID) and model.config["chosen_delta_l2"] in GRID


def test_noise_features_never_worse_than_global_on_validation():
    x, votes = arena(1, informative=False)
    x = np.random.default_rng(5).normal(size=x.shape).astype(np.float32)
    model = train_p2l(jax.random.key(1), x, votes, **CONFIG)
    h = model.history
    assert h["best_val_nll"] <= h["baseline_val_nll"] + 1e-6
    assert min(v for v in h["delta_l2_val_nll"]) == pytest.approx(h["best_val_nll"])


def test_informative_features_beat_global_on_new_prompts():
    x, votes = arena(2, informative=True, num_prompts=160)
    train, test = votes.subset(votes.prompt < 120), votes.subset(votes.prompt >= 120)
    model = train_p2l(jax.random.key(2), x, train, **CONFIG)
    h = model.history
    assert h["best_val_nll"] < h["baseline_val_nll"] - 0.02 and h["best_epoch"] >= 1
    assert model.config["chosen_delta_l2"] < max(GRID)  # the strongest shrinkage (towards global) lost
    beta = np.asarray(model.coefficients(x)[0])
    cmp = compare_heldout(jax.random.key(0), vote_nll(beta, None, test), vote_nll(global_theta(train), None, test))
    assert cmp.upper < 0 and cmp.lower < cmp.difference < cmp.upper and cmp.num_prompts == 40


def test_residual_save_load_round_trip(constant_fit, tmp_path):
    x, _, model = constant_fit
    back = load_p2l(save_p2l(model, tmp_path / "m"))
    assert back.config == model.config and back.history == model.history
    np.testing.assert_array_equal(np.asarray(back.coefficients(x)[0]), np.asarray(model.coefficients(x)[0]))


def test_residual_grid_resume_is_exact(tmp_path):
    x, votes = arena(3, informative=True, num_prompts=60, votes_per_prompt=12)
    cfg = {**CONFIG, "patience": None, "max_epochs": 4}
    full = train_p2l(jax.random.key(3), x, votes, **cfg)
    train_p2l(jax.random.key(3), x, votes, checkpoint_dir=tmp_path / "c", stop_after=2, **cfg)
    resumed = train_p2l(jax.random.key(3), x, votes, checkpoint_dir=tmp_path / "c", resume=True, **cfg)
    assert resumed.history == full.history and resumed.config == full.config
    for p, q in zip(jax.tree_util.tree_leaves(full.params), jax.tree_util.tree_leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(p), np.asarray(q))


def test_residual_sharded_equals_unsharded():
    assert jax.device_count() == 8
    x, votes = arena(4, informative=True, num_prompts=60, votes_per_prompt=12)
    cfg = {**CONFIG, "max_epochs": 3, "patience": None}
    plain = train_p2l(jax.random.key(4), x, votes, **cfg)
    sharded = train_p2l(jax.random.key(4), x, votes, mesh=jax.make_mesh((8,), ("data",)), **cfg)
    np.testing.assert_allclose(np.asarray(sharded.coefficients(x)[0]), np.asarray(plain.coefficients(x)[0]),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sharded.history["delta_l2_val_nll"], plain.history["delta_l2_val_nll"], rtol=1e-5)


def test_bad_delta_l2():
    x, votes = arena(5, informative=False, num_prompts=20, votes_per_prompt=4)
    for bad in (-1.0, [], [0.1, float("nan")], "0.1"):
        with pytest.raises(ValueError, match="delta_l2"):
            train_p2l(jax.random.key(0), x, votes, delta_l2=bad)
    with pytest.raises(ValueError, match="val_fraction must be > 0"):
        train_p2l(jax.random.key(0), x, votes, delta_l2=[0.1, 1.0], val_fraction=0.0)


# ------------------------------------------------------------------------------------------------
# Soft outcomes and weights: the P2L likelihood vs float64 NumPy


def test_soft_weighted_nll_matches_numpy_float64():
    rng = np.random.default_rng(7)
    n, m, p = 200, 5, 9
    a = rng.integers(0, m, n)
    b = (a + rng.integers(1, m, n)) % m
    p_a = rng.random(n)
    p_a[:20] = 0.5  # exact ties: the tie code, still half a win each way
    w = rng.uniform(0.1, 3.0, n)
    prompt = rng.integers(0, p, n)
    votes = Votes.from_arrays(a, b, p_a=p_a, weight=w, prompt=prompt, models=[f"m{i}" for i in range(m)])
    order = np.array([int(i) for i in votes.prompt_ids])
    beta_by_id = rng.normal(size=(p, m))
    beta = beta_by_id[order]  # rows in votes.prompt order
    # float64 reference: -(p log s(d) + (1 - p) log s(-d)), weighted mean over votes
    d = beta_by_id[prompt, a] - beta_by_id[prompt, b]
    ref = -np.sum(w * (p_a * -np.logaddexp(0, -d) + (1 - p_a) * -np.logaddexp(0, d))) / np.sum(w)
    got = vote_nll(beta.astype(np.float32), None, votes, loss="bt-tie")
    assert got.mean() == pytest.approx(ref, rel=2e-6)
    # ... and p2l_loss (the training loss) on the same rows agrees.
    rows = votes.rows(merge=False)
    pr = np.asarray(votes.prompt)[np.asarray(rows.row_vote)]
    loss = p2l_loss(beta.astype(np.float32)[pr], None, rows.a, rows.b, rows.outcome, loss="bt-tie",
                    weight=np.asarray(rows.count, np.float32))
    assert float(loss) == pytest.approx(ref, rel=2e-6)


def test_vote_nll_rao_kupper_matches_numpy_float64():
    rng = np.random.default_rng(8)
    n, m = 150, 4
    a = rng.integers(0, m, n)
    b = (a + rng.integers(1, m, n)) % m
    o = rng.integers(0, 3, n)
    w = rng.uniform(0.5, 2.0, n)
    votes = Votes.from_arrays(a, b, o, weight=w, prompt=np.zeros(n, int), models=[f"m{i}" for i in range(m)])
    theta, alpha = rng.normal(size=m), 0.7
    pa, pb, t = np.exp(theta[a]), np.exp(theta[b]), np.exp(alpha)
    probs = np.stack([pa / (pa + t * pb), pb / (pb + t * pa)], 1)
    probs = np.concatenate([probs, 1 - probs.sum(1, keepdims=True)], 1)
    ref = -np.sum(w * np.log(probs[np.arange(n), o])) / np.sum(w)
    got = vote_nll(theta.astype(np.float32), alpha, votes, loss="rao-kupper")
    assert got.mean() == pytest.approx(ref, rel=2e-6)
    with pytest.raises(ValueError, match="tie_param is required"):
        vote_nll(theta, None, votes, loss="rao-kupper")
    with pytest.raises(ValueError, match="M = 4 columns"):
        vote_nll(np.zeros(3), None, votes)


# ------------------------------------------------------------------------------------------------
# The held-out comparison: prompt bootstrap calibrated on a known truth


def test_prompt_bootstrap_coverage_and_bias():
    """Per-prompt effects u_p (shared by the prompt's votes) and vote noise around a known mean difference mu:
    the 95 % prompt-bootstrap interval covers mu in 93-97 % of 1,000 replays, and the estimate is unbiased."""
    rng = np.random.default_rng(11)
    mu, replays, num_prompts = -0.03, 1000, 100
    hits, estimates = 0, []
    for r in range(replays):
        n_p = 1 + rng.poisson(6, num_prompts)
        prompt = np.repeat(np.arange(num_prompts), n_p)
        d = mu + rng.normal(0, 0.08, num_prompts)[prompt] + rng.normal(0, 0.2, prompt.size)
        w = rng.uniform(0.5, 1.5, prompt.size)
        base = rng.uniform(0.3, 0.7, prompt.size)
        cmp = compare_heldout(jax.random.key(r), VoteNLL(base + d, w, prompt), VoteNLL(base, w, prompt), rounds=1000)
        hits += cmp.lower <= mu <= cmp.upper
        estimates.append(cmp.difference)
    assert 0.93 <= hits / replays <= 0.97, hits / replays
    se = np.std(estimates) / np.sqrt(replays)
    assert abs(np.mean(estimates) - mu) < 4 * se


def test_compare_heldout_bad_input():
    x = VoteNLL(np.ones(4), np.ones(4), np.arange(4))
    with pytest.raises(ValueError, match="same votes"):
        compare_heldout(jax.random.key(0), x, VoteNLL(np.ones(3), np.ones(3), np.arange(3)))
    with pytest.raises(ValueError, match="rounds"):
        compare_heldout(jax.random.key(0), x, x, rounds=10)
    with pytest.raises(ValueError, match="NaN"):
        compare_heldout(jax.random.key(0), VoteNLL(np.array([np.nan, 1, 1, 1.0]), np.ones(4), np.arange(4)), x)
    with pytest.raises(TypeError, match="VoteNLL"):
        compare_heldout(jax.random.key(0), np.ones(4), x)


def test_kfold_choice_of_delta_l2():
    """K-fold over prompts: informative features get a weak L2, noise features a strong one; every prompt is held
    out once (the folds' global NLLs are those of the prompt-blind fit on each part)."""
    from jaxrank.p2l import choose_delta_l2

    opts = {k: v for k, v in CONFIG.items() if k not in ("delta_l2", "val_fraction")}
    x, votes = arena(3, informative=True)
    good = choose_delta_l2(jax.random.key(0), x, votes, GRID, folds=3, **opts)
    assert good.fold_nll.shape == (3, len(GRID)) and np.isfinite(good.fold_nll).all()
    assert good.chosen == GRID[0]
    assert (good.fold_nll[:, 0] < good.global_nll).all()
    noise = np.random.default_rng(4).normal(size=x.shape).astype(np.float32)
    bad = choose_delta_l2(jax.random.key(0), noise, votes, GRID, folds=3, **opts)
    assert bad.chosen == GRID[-1]
    np.testing.assert_allclose(bad.mean_nll[-1], np.average(bad.global_nll, weights=None), rtol=2e-2)
    with pytest.raises(ValueError, match="folds must be an int >= 2"):
        choose_delta_l2(jax.random.key(0), x, votes, GRID, folds=1)
    with pytest.raises(ValueError, match="sets heldout_prompts itself"):
        choose_delta_l2(jax.random.key(0), x, votes, GRID, heldout_prompts=[0])
    with pytest.raises(ValueError, match="val_prompts must be"):
        train_p2l(jax.random.key(0), x, votes, val_prompts=[10_000], **opts)


def test_heldout_prompts_steer_nothing():
    """`heldout_prompts` (what `choose_delta_l2` scores each fold on) are only scored: turning their votes around
    changes their NLL but not one trained weight nor the early-stopping epochs, and the reported held-out NLL is
    the returned head's on those votes (float64 reference)."""
    import dataclasses

    opts = {k: v for k, v in CONFIG.items() if k != "delta_l2"}
    x, votes = arena(5, informative=True)
    held = np.arange(0, votes.num_prompts, 4)
    flip = np.isin(votes.prompt, held)
    turned = dataclasses.replace(votes, a=np.where(flip, votes.b, votes.a), b=np.where(flip, votes.a, votes.b))
    fits = [train_p2l(jax.random.key(2), x, v, delta_l2=GRID, heldout_prompts=held, **opts) for v in (votes, turned)]
    for leaf_a, leaf_b in zip(jax.tree_util.tree_leaves(fits[0].params), jax.tree_util.tree_leaves(fits[1].params)):
        np.testing.assert_array_equal(np.asarray(leaf_a), np.asarray(leaf_b))
    assert fits[0].history["best_epoch"] == fits[1].history["best_epoch"]
    assert fits[0].history["delta_l2_val_nll"] == fits[1].history["delta_l2_val_nll"]
    assert abs(fits[0].history["heldout_nll"] - fits[1].history["heldout_nll"]) > 0.05
    # The reported number is the returned head's NLL on the held-out votes.
    sub = votes.subset(flip)
    beta, _ = fits[0].coefficients(x)
    ref = vote_nll(np.asarray(beta, np.float64), None, sub, loss=CONFIG["loss"])  # bt-tie: no tie parameter
    np.testing.assert_allclose(fits[0].history["heldout_nll"], ref.mean(), rtol=1e-4)
    chosen = GRID.index(fits[0].config["chosen_delta_l2"])
    assert fits[0].history["delta_l2_heldout_nll"][chosen] == fits[0].history["heldout_nll"]


# ------------------------------------------------------------------------------------------------
# Cross-fitted K-fold-by-prompt evaluation


def test_crossfit_every_prompt_once_and_informative_prompts_beat_global():
    """Prompts that truly move the leaderboard: the pooled out-of-fold gain's interval excludes 0; every prompt is
    scored exactly once, by the fold fit without it, and the baseline is each fold's plain fit of the other folds."""
    from jaxrank.p2l import crossfit_heldout
    from jaxrank.ratings import fit_bradley_terry

    x, votes = arena(5, informative=True, num_prompts=90, votes_per_prompt=16)
    ev = crossfit_heldout(jax.random.key(0), x, votes, folds=3, rounds=500, **CONFIG)
    present = np.unique(votes.prompt)
    assert sorted(np.unique(ev.fold[present])) == [0, 1, 2] and (ev.fold[present] >= 0).all()
    assert ev.comparison.num_prompts == present.size and ev.model.nll.shape == ev.baseline.nll.shape
    np.testing.assert_allclose(ev.comparison.num_votes, vote_nll(ev.global_theta[0], None, votes).weight.sum())
    assert ev.comparison.upper < 0 and (ev.fold_difference < 0).all(), ev.comparison
    assert all(c in GRID for c in ev.chosen_delta_l2)
    f0 = ev.fold[np.asarray(votes.prompt)] == 0
    theta0 = np.asarray(fit_bradley_terry(votes.subset(~f0), ties="half").theta)
    np.testing.assert_allclose(ev.global_theta[0], theta0, atol=1e-6)
    # No leakage: flipping the held-out fold's votes changes neither its head nor its global fit.
    flipped = votes.replace(a=np.where(f0, votes.b, votes.a), b=np.where(f0, votes.a, votes.b))
    ev2 = crossfit_heldout(jax.random.key(0), x, flipped, folds=3, rounds=500, **CONFIG)
    part = ev.fold == 0
    np.testing.assert_array_equal(ev2.fold, ev.fold)
    np.testing.assert_allclose(ev2.global_theta[0], ev.global_theta[0], atol=1e-6)
    np.testing.assert_allclose(ev2.beta[part], ev.beta[part], atol=1e-6)
    assert not np.allclose(ev2.beta[ev.fold == 1], ev.beta[ev.fold == 1], atol=1e-3)  # fold 1 trained on them


def test_crossfit_noise_features_give_no_gain():
    """Prompts that do not move the leaderboard and noise features: the pooled difference is ~0 and not
    significantly negative (a head fit on its test votes would find a spurious gain)."""
    from jaxrank.p2l import crossfit_heldout

    _, votes = arena(6, informative=False, num_prompts=90, votes_per_prompt=16)
    noise = np.random.default_rng(7).normal(size=(votes.num_prompts, 3)).astype(np.float32)
    ev = crossfit_heldout(jax.random.key(1), noise, votes, folds=3, rounds=500, **CONFIG)
    assert ev.comparison.upper > 0 and abs(ev.comparison.difference) < 0.01, ev.comparison
    # A representation that cannot tell prompts apart: Delta = 0, and with the base refit on each fold's training
    # votes the head IS the fold's global fit (difference exactly 0); without the refit its base is fit without
    # the validation prompts, another leaderboard.
    const = np.ones_like(noise)
    same = crossfit_heldout(jax.random.key(1), const, votes, folds=3, rounds=500, **CONFIG)
    np.testing.assert_allclose(same.model.nll, same.baseline.nll, atol=1e-5)
    assert abs(same.comparison.difference) < 1e-6
    split_base = crossfit_heldout(jax.random.key(1), const, votes, folds=3, rounds=500, refit_base=False, **CONFIG)
    assert np.abs(split_base.model.nll - split_base.baseline.nll).max() > 1e-4
    with pytest.raises(ValueError, match="folds must be an int >= 2"):
        crossfit_heldout(jax.random.key(0), noise, votes, folds=1)
    with pytest.raises(ValueError, match="does not take val_prompts"):
        crossfit_heldout(jax.random.key(0), noise, votes, val_prompts=[0])
    with pytest.raises(ValueError, match="loss"):
        crossfit_heldout(jax.random.key(0), noise, votes, loss="rao-kupper")


def test_crossfit_nested_choice_of_delta_l2():
    """inner_folds: the L2 of each outer fold chosen by K-fold over that fold's training prompts only (nested):
    informative prompts get a weak L2 and the pooled gain excludes 0."""
    from jaxrank.p2l import crossfit_heldout

    x, votes = arena(8, informative=True, num_prompts=60, votes_per_prompt=16)
    ev = crossfit_heldout(jax.random.key(2), x, votes, folds=2, inner_folds=2, rounds=500, **CONFIG)
    assert all(c < max(GRID) for c in ev.chosen_delta_l2), ev.chosen_delta_l2
    assert ev.comparison.upper < 0 and ev.comparison.num_prompts == 60
    opts = {k: v for k, v in CONFIG.items() if k != "delta_l2"}
    with pytest.raises(ValueError, match="inner_folds chooses"):
        crossfit_heldout(jax.random.key(0), x, votes, inner_folds=2, **opts)
    with pytest.raises(ValueError, match="inner_folds must be"):
        crossfit_heldout(jax.random.key(0), x, votes, inner_folds=1, **CONFIG)


def test_train_p2l_needs_its_key_first():
    x, votes = arena(0, informative=False, num_prompts=8, votes_per_prompt=4)
    with pytest.raises(TypeError, match="key must be a jax.random.key"):
        train_p2l(None, x, votes)
