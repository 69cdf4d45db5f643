"""Prompt-to-Leaderboard: losses vs float64 NumPy, head, synthetic recovery, aggregation (SciPy reference),
checkpoints (round trip, exact resume), sharded == unsharded, bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.optimize import minimize

from jaxrank import Votes
from jaxrank.p2l import (
    LOSSES,
    P2LHead,
    aggregate_leaderboard,
    load_p2l,
    p2l_loss,
    save_p2l,
    train_p2l,
)

# Thresholds, set once: the synthetic arena's coefficients are a linear function of the features, so a
# linear head must recover them on unseen prompts (noise: 30 votes per prompt).
RECOVERY_CORR = 0.95
RECOVERY_RMSE = 0.3  # natural-log units; the true coefficients have standard deviation ~1.2


# ------------------------------------------------------------------------------------------------
# Float64 references in the strength form (pi = exp(beta)), independent of jaxrank.ratings.


def ref_probs(beta_a, beta_b, alpha, loss):
    """[N, 4] probabilities of (a wins, b wins, tie, tie (bothbad))."""
    pa, pb = np.exp(beta_a), np.exp(beta_b)
    if loss in ("bt", "bt-tie"):
        p_a = pa / (pa + pb)
        return np.stack([p_a, 1 - p_a, 0 * p_a, 0 * p_a], -1)
    t = np.exp(alpha)
    if loss == "rao-kupper":
        p_a, p_b = pa / (pa + t * pb), pb / (pb + t * pa)
        return np.stack([p_a, p_b, 1 - p_a - p_b, 0 * p_a], -1)
    p_a, p_b = pa / (pa + t * pb + 1), pb / (pb + t * pa + 1)  # grounded: lmarena/p2l's `bag` loss
    p_bb = 1 / (1 + pa + pb)
    return np.stack([p_a, p_b, 1 - p_a - p_b - p_bb, p_bb], -1)


def ref_loss(beta, alpha, a, b, o, w, loss):
    rows = np.arange(len(a))
    p = ref_probs(beta[rows, a], beta[rows, b], alpha, loss)
    if loss == "bt-tie":  # a tie (either kind) is half a win each way
        lp = np.where(o >= 2, 0.5 * (np.log(p[:, 0]) + np.log(p[:, 1])), np.log(p[rows, np.minimum(o, 1)]))
    elif loss == "rao-kupper":  # both tie kinds are ties
        lp = np.log(p[rows, np.minimum(o, 2)])
    elif loss == "bt":
        w = np.where(o >= 2, 0.0, w)
        lp = np.log(p[rows, np.minimum(o, 1)])
    else:
        lp = np.log(p[rows, o])
    return -np.sum(w * lp) / np.sum(w)


_loss_jit = jax.jit(p2l_loss, static_argnames="loss")


@pytest.mark.parametrize("loss", LOSSES)
def test_losses_match_numpy_float64(loss):
    rng = np.random.default_rng(0)
    n, m = 64, 5
    beta = rng.normal(0, 1.5, (n, m))
    alpha = rng.uniform(0.05, 2.0, n)
    a = rng.integers(0, m, n)
    b = (a + rng.integers(1, m, n)) % m
    o = np.tile(np.arange(4), n // 4)
    w = rng.uniform(0.2, 2.0, n)
    fits = loss in ("rao-kupper", "grounded-rao-kupper")
    got = _loss_jit(jnp.asarray(beta, jnp.float32), jnp.asarray(alpha, jnp.float32) if fits else None,
                    jnp.asarray(a), jnp.asarray(b), jnp.asarray(o), loss=loss, weight=jnp.asarray(w, jnp.float32))
    np.testing.assert_allclose(float(got), ref_loss(beta, alpha, a, b, o, w, loss), rtol=1e-5)
    with jax.enable_x64(True):
        got64 = p2l_loss(jnp.asarray(beta), jnp.asarray(alpha) if fits else None, jnp.asarray(a), jnp.asarray(b),
                         jnp.asarray(o), loss=loss, weight=jnp.asarray(w))
        assert got64.dtype == jnp.float64
        np.testing.assert_allclose(float(got64), ref_loss(beta, alpha, a, b, o, w, loss), rtol=1e-12)
    # Unweighted = all weights 1; weight 0 removes a vote.
    ones = _loss_jit(jnp.asarray(beta, jnp.float32), jnp.asarray(alpha, jnp.float32) if fits else None,
                     jnp.asarray(a), jnp.asarray(b), jnp.asarray(o), loss=loss)
    np.testing.assert_allclose(float(ones), ref_loss(beta, alpha, a, b, o, np.ones(n), loss), rtol=1e-5)


def test_head_centring_and_tie_parameter():
    x = jax.random.normal(jax.random.key(0), (3, 6))
    head = P2LHead(6, 4, hidden=(8,), tie=True, rngs=nnx.Rngs(0))
    # The output layer starts at zero: the flat leaderboard, alpha = 0.5.
    beta, alpha = head(x)
    assert beta.shape == (3, 4) and alpha.shape == (3,)
    np.testing.assert_allclose(np.asarray(beta), 0.0)
    np.testing.assert_allclose(np.asarray(alpha), 0.5, rtol=1e-6)
    head.out.kernel[...] = jax.random.normal(jax.random.key(1), (8, 4))
    head.tie.bias[...] = jnp.full((1,), -30.0)
    beta, alpha = head(x)
    np.testing.assert_allclose(np.asarray(beta).mean(-1), 0.0, atol=1e-6)  # centred
    assert np.all(np.asarray(alpha) > 0)  # softplus + floor, even far out
    grounded = P2LHead(6, 4, tie=True, centre=False, rngs=nnx.Rngs(0))
    grounded.out.bias[...] = jnp.arange(4.0)
    beta, _ = grounded(x)
    np.testing.assert_allclose(np.asarray(beta), np.broadcast_to(np.arange(4.0), (3, 4)), atol=1e-6)


# ------------------------------------------------------------------------------------------------
# A synthetic arena: beta(prompt) = x W, outcomes from the model.


def synthetic_arena(seed, num_prompts=240, dim=3, num_models=4, votes_per_prompt=30, loss="bt"):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_prompts, dim)).astype(np.float32)
    w_true = rng.normal(0, 0.8, (dim, num_models))
    beta = x @ w_true
    if loss != "grounded-rao-kupper":
        beta = beta - beta.mean(1, keepdims=True)
    n = num_prompts * votes_per_prompt
    prompt = np.repeat(np.arange(num_prompts), votes_per_prompt)
    a = rng.integers(0, num_models, n)
    b = (a + rng.integers(1, num_models, n)) % num_models
    p = ref_probs(beta[prompt, a], beta[prompt, b], np.full(n, 0.6), loss)
    cum = np.cumsum(p, axis=1)
    o = (rng.random(n)[:, None] > cum).sum(1).clip(0, 3)
    votes = Votes(models=tuple(f"m{i}" for i in range(num_models)), a=a, b=b, outcome=o, prompt=prompt,
                  prompt_ids=tuple(str(i) for i in range(num_prompts)))
    return x, beta, votes


# ONE training configuration for recovery, checkpoints, resume and sharding: one compiled epoch (the
# Rao–Kupper loss with its tie head and a hidden layer; the CLI tests train a linear bt-tie head).
CONFIG = dict(loss="rao-kupper", hidden=(8,), learning_rate=0.05, batch_size=256, max_epochs=30, val_fraction=0.2,
              patience=4)


@pytest.fixture(scope="module")
def arena():
    x, beta, votes = synthetic_arena(0, loss="rao-kupper")
    return x, beta, votes, votes.subset(votes.prompt < 200)  # prompts 200.. are never trained on


@pytest.fixture(scope="module")
def trained(arena):
    x, _, _, train = arena
    return train_p2l(jax.random.key(0), x, train, encoder="all-minilm-l6-v2", **CONFIG)


def test_synthetic_arena_is_recovered(arena, trained):
    x, beta, _, train = arena
    model = trained
    got, alpha = model.coefficients(x[200:])
    got, truth = np.asarray(got, np.float64), beta[200:]
    corr = np.corrcoef(got.ravel(), truth.ravel())[0, 1]
    rmse = np.sqrt(np.mean((got - truth) ** 2))
    assert corr > RECOVERY_CORR and rmse < RECOVERY_RMSE, (corr, rmse)
    assert float(np.mean(np.asarray(alpha))) == pytest.approx(0.6, abs=0.1)  # the arena's tie threshold
    # Early stopping kept the best validation epoch and the history is complete.
    h = model.history
    assert len(h["train_loss"]) == len(h["val_nll"]) == h["epochs"] >= 1
    assert h["stopped_early"] and h["epochs"] < CONFIG["max_epochs"] and h["best_epoch"] < h["epochs"]
    assert h["val_nll"][h["best_epoch"] - 1] == min(h["val_nll"])
    # ... and returned THAT epoch's parameters: their validation NLL, recomputed, is the minimum.
    from jaxrank.p2l import _split_by_prompt

    _, val = _split_by_prompt(jax.random.split(jax.random.key(0), 3)[0], train, 0.2)
    v = train.subset(val)
    beta_v, alpha_v = model.coefficients(x)
    nll = p2l_loss(beta_v[v.prompt], alpha_v[v.prompt], v.a, v.b, v.outcome, loss="rao-kupper", weight=v.weight)
    assert float(nll) == pytest.approx(min(h["val_nll"]), rel=1e-5)
    assert h["train_loss"][-1] < h["train_loss"][0]


def test_split_is_by_prompt(arena):
    x, _, votes, _ = arena
    from jaxrank.p2l import _split_by_prompt

    train, val = _split_by_prompt(jax.random.key(0), votes, 0.25)
    assert not set(votes.prompt[train]) & set(votes.prompt[val])
    assert len(set(votes.prompt[val])) == 60


# ------------------------------------------------------------------------------------------------
# Aggregation


@pytest.mark.parametrize("loss", LOSSES)
def test_aggregate_of_identical_leaderboards_is_that_leaderboard(loss):
    rng = np.random.default_rng(1)
    m = 5
    row = rng.normal(0, 1.0, m)
    if loss != "grounded-rao-kupper":
        row = row - row.mean()
    beta = np.tile(row, (7, 1)).astype(np.float32)
    alpha = np.full(7, 0.7, np.float32)
    lb = aggregate_leaderboard(beta, alpha if loss in ("rao-kupper", "grounded-rao-kupper") else None, loss=loss)
    assert bool(lb.converged)
    np.testing.assert_allclose(np.asarray(lb.theta), row, atol=2e-4)
    np.testing.assert_allclose(np.asarray(lb.ratings), 1000 + 400 / math.log(10) * row, atol=0.1)
    if loss in ("rao-kupper", "grounded-rao-kupper"):
        assert float(lb.tie_param) == pytest.approx(0.7, rel=1e-3)
    else:
        assert math.isnan(float(lb.tie_param))
    assert [int(r) for r in lb.rank_ub] == [1 + int((row > r).sum()) for r in row]
    if loss in ("rao-kupper", "grounded-rao-kupper"):
        # Different leaderboards and tie parameters per prompt (same shapes: the compiled fit above):
        # theta and alpha minimise the cross-entropy to the averaged probabilities, float64 SciPy.
        beta = rng.normal(0, 1.5, (7, m))
        if loss == "rao-kupper":
            beta -= beta.mean(1, keepdims=True)
        alpha = rng.uniform(0.2, 1.5, 7)
        pw = rng.uniform(0.1, 2.0, 7)
        off = ~np.eye(m, dtype=bool)

        def cell_probs(t, al):  # [M, M, 4] over ordered pairs (a = row, b = column)
            ti, tj = np.broadcast_arrays(t[..., :, None], t[..., None, :])
            return ref_probs(ti, tj, np.asarray(al)[..., None, None], loss)

        q = np.einsum("p,pijk->ijk", pw / pw.sum(), cell_probs(beta, alpha))

        def f(z):
            p = cell_probs(z[:m], np.exp(z[m]))[off]
            keep = q[off] > 0  # rao-kupper has no both-bad cell
            return -np.sum(q[off][keep] * np.log(p[keep]))

        ref = minimize(f, np.append(beta.mean(0), 0.0), method="BFGS", options=dict(gtol=1e-11)).x
        lb = aggregate_leaderboard(beta.astype(np.float32), alpha.astype(np.float32),
                                   prompt_weights=pw.astype(np.float32), loss=loss)
        assert bool(lb.converged)
        want = ref[:m] - ref[:m].mean() if loss == "rao-kupper" else ref[:m]
        np.testing.assert_allclose(np.asarray(lb.theta), want, atol=2e-4)
        assert float(lb.tie_param) == pytest.approx(math.exp(ref[m]), rel=1e-3)


def test_aggregate_fits_average_probabilities_not_average_coefficients():
    # Two prompts with opposite leaderboards: averaging coefficients gives a flat board; the average
    # probabilities of a strong and a weak model are not those of two equal ones.
    rng = np.random.default_rng(2)
    beta = rng.normal(0, 2.0, (7, 5))  # the shapes of the test above: one compiled point fit
    beta -= beta.mean(1, keepdims=True)
    pw = np.array([1.0, 2.0, 0.5, 1.0, 3.0, 1.0, 0.0])
    lb = aggregate_leaderboard(beta.astype(np.float32), prompt_weights=pw.astype(np.float32), loss="bt",
                               bootstrap=64, key=jax.random.key(0), models=["v", "w", "x", "y", "z"])
    # float64 SciPy reference: minimise -sum_{i != j} Q_ij log sigmoid(theta_i - theta_j).
    d = beta[:, :, None] - beta[:, None, :]
    q = np.einsum("p,pij->ij", pw / pw.sum(), 1 / (1 + np.exp(-d)))
    off = ~np.eye(5, dtype=bool)

    def f(t):
        dt = t[:, None] - t[None, :]
        return -np.sum(q[off] * -np.logaddexp(0, -dt)[off])

    ref = minimize(f, np.zeros(5), method="BFGS", options=dict(gtol=1e-10)).x
    ref -= ref.mean()
    np.testing.assert_allclose(np.asarray(lb.theta), ref, atol=2e-4)
    assert np.abs(ref - np.average(beta, axis=0, weights=pw)).max() > 0.05  # not the mean of the coefficients
    lo, hi, r = (np.asarray(v) for v in (lb.lower, lb.upper, lb.ratings))
    assert lb.samples.shape == (64, 5) and np.all(lo <= hi) and np.all(lo < r + 1e-3) and np.all(r < hi + 1e-3)
    frame = lb.to_frame()
    assert list(frame.columns) == ["model", "rating", "lower", "upper", "rank_ub"]
    again = aggregate_leaderboard(beta.astype(np.float32), prompt_weights=pw.astype(np.float32), loss="bt",
                                  bootstrap=64, key=jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(again.samples), np.asarray(lb.samples))


# ------------------------------------------------------------------------------------------------
# Checkpoints, resume, sharding


def _leaves_equal(x, y):
    lx, ly = jax.tree_util.tree_leaves(x), jax.tree_util.tree_leaves(y)
    return len(lx) == len(ly) and all(np.array_equal(np.asarray(p), np.asarray(q)) for p, q in zip(lx, ly))


@pytest.fixture(scope="module")
def small_arena():  # for the bad-input tests (no training)
    return synthetic_arena(3, num_prompts=40, votes_per_prompt=10, loss="rao-kupper")


def test_checkpoint_round_trip_is_exact(arena, trained, tmp_path):
    x = arena[0]
    model = trained
    path = save_p2l(model, tmp_path / "p2l")
    loaded = load_p2l(path)
    assert _leaves_equal(loaded.params, model.params) and _leaves_equal(loaded.stats, model.stats)
    assert (loaded.models, loaded.loss, loaded.encoder, loaded.config, loaded.history) == (
        model.models, model.loss, model.encoder, model.config, model.history)
    b0, a0 = model.coefficients(x)
    b1, a1 = loaded.coefficients(x)
    np.testing.assert_array_equal(np.asarray(b0), np.asarray(b1))
    np.testing.assert_array_equal(np.asarray(a0), np.asarray(a1))
    with pytest.raises(FileExistsError):
        save_p2l(model, path)
    save_p2l(model, path, force=True)


def test_resume_is_exact(arena, trained, tmp_path):
    import orbax.checkpoint as ocp

    x, _, _, votes = arena
    key = jax.random.key(0)
    # A checkpoint every 4 epochs, and at the stop (epoch 2) and at the early stop: few orbax writes.
    full = train_p2l(key, x, votes, checkpoint_dir=tmp_path / "full", checkpoint_every=4, **CONFIG)
    first = train_p2l(key, x, votes, checkpoint_dir=tmp_path / "part", stop_after=2, checkpoint_every=4, **CONFIG)
    assert first.history["epochs"] == 2
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train_p2l(key, x, votes, checkpoint_dir=tmp_path / "part", **CONFIG)
    with pytest.raises(ValueError, match="learning_rate differ"):
        train_p2l(key, x, votes, checkpoint_dir=tmp_path / "part", resume=True,
                  **{**CONFIG, "learning_rate": 0.1})
    resumed = train_p2l(key, x, votes, checkpoint_dir=tmp_path / "part", resume=True, checkpoint_every=4,
                        **CONFIG)
    # Through early stopping (best epoch < last epoch): the resumed run restored the best parameters too.
    assert resumed.history == full.history == trained.history and full.history["stopped_early"]
    assert _leaves_equal(resumed.params, full.params) and _leaves_equal(full.params, trained.params)
    # The whole training state (parameters, optimizer state, best parameters) of the last checkpoints.
    last = full.history["epochs"]
    states = []
    for name in ("full", "part"):
        with ocp.CheckpointManager(tmp_path / name, item_names=("state", "meta")) as mgr:
            assert mgr.latest_step() == last
            states.append(mgr.restore(last, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                                     meta=ocp.args.JsonRestore()))["state"])
    assert sorted(states[0]) == sorted(states[1]) and len(states[0]) > 10
    assert all(np.array_equal(np.asarray(states[0][k]), np.asarray(states[1][k])) for k in states[0])


def test_sharded_training_equals_unsharded(arena, trained):
    assert jax.device_count() == 8
    x, _, _, votes = arena
    mesh = jax.make_mesh((8,), ("data",))
    sharded = train_p2l(jax.random.key(0), x, votes, mesh=mesh, encoder="all-minilm-l6-v2", **CONFIG)
    for p, q in zip(trained.coefficients(x), sharded.coefficients(x)):
        np.testing.assert_allclose(np.asarray(q), np.asarray(p), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sharded.history["val_nll"], trained.history["val_nll"], rtol=1e-5)
    assert sharded.history["best_epoch"] == trained.history["best_epoch"]


# ------------------------------------------------------------------------------------------------
# Bad input


def test_bad_input(small_arena):
    x, _, votes = small_arena
    z = jnp.zeros((2, 3))
    i2 = jnp.zeros(2, jnp.int32)
    with pytest.raises(ValueError, match="loss must be one of 'bt', 'bt-tie', 'rao-kupper', 'grounded-rao-kupper'"):
        p2l_loss(z, None, i2, i2, i2, loss="bag")
    with pytest.raises(ValueError, match=r"beta must have shape \[B, M\]"):
        p2l_loss(jnp.zeros(3), None, i2, i2, i2, loss="bt")
    with pytest.raises(ValueError, match=r"a must have shape \[B\] = \(2,\)"):
        p2l_loss(z, None, jnp.zeros(3, jnp.int32), i2, i2, loss="bt")
    with pytest.raises(TypeError, match="outcome must be integer"):
        p2l_loss(z, None, i2, i2, jnp.zeros(2), loss="bt")
    with pytest.raises(ValueError, match=r"tie_param \[B\] is required"):
        p2l_loss(z, None, i2, i2, i2, loss="rao-kupper")
    with pytest.raises(ValueError, match=r"unknown winner label\(s\) 'left'"):
        Votes.from_arrays(["a"], ["b"], ["left"], prompt=[0])
    with pytest.raises(ValueError, match="model playing itself"):
        Votes.from_arrays(["a", "b"], ["a", "a"], ["tie", "tie"], prompt=[0, 0])
    with pytest.raises(ValueError, match=r"prompt must have shape \[N\] = \(1,\)"):
        Votes.from_arrays(["a"], ["b"], ["tie"], prompt=[0, 1])
    with pytest.raises(ValueError, match="votes.prompt indexes prompt 39 but features has only P = 10 rows"):
        train_p2l(jax.random.key(0), x[:10], votes)
    with pytest.raises(ValueError, match=r"features must have shape \[P, D\]"):
        train_p2l(jax.random.key(0), x[0], votes)
    with pytest.raises(TypeError, match="votes must be a jaxrank.Votes"):
        train_p2l(jax.random.key(0), x, {"a": 1})
    with pytest.raises(ValueError, match="val_fraction must be in"):
        train_p2l(jax.random.key(0), x, votes, val_fraction=1.0)
    with pytest.raises(ValueError, match="batch_size=60 must be a multiple of the mesh's 8 devices"):
        train_p2l(jax.random.key(0), x, votes, batch_size=60, mesh=jax.make_mesh((8,), ("data",)))
    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir"):
        train_p2l(jax.random.key(0), x, votes, resume=True)
    with pytest.raises(ValueError, match=r"tie_param \[P\] is required"):
        aggregate_leaderboard(np.zeros((3, 2), np.float32), loss="grounded-rao-kupper")
    with pytest.raises(ValueError, match="bootstrap must be 0 or an int >= 2"):
        aggregate_leaderboard(np.zeros((3, 2), np.float32), loss="bt", bootstrap=1)
    with pytest.raises(ValueError, match=r"prompt_weights must have shape \[P\] = \(3,\)"):
        aggregate_leaderboard(np.zeros((3, 2), np.float32), loss="bt", prompt_weights=np.ones(2))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_p2l("/nonexistent/p2l")


def test_bad_values_raise_instead_of_silent_nan(small_arena):
    # Before the fix: alpha <= 0 gave inf/NaN, an index outside [0, M) gathered NaN, an unknown outcome
    # code scored as a tie, all silently; a validation split the loss cannot score (loss='bt', held-out
    # prompts all ties) gave val NLL 0 every epoch and returned the first epoch's parameters.
    z = jnp.zeros((2, 3))
    i01, i12 = jnp.array([0, 1]), jnp.array([1, 2])
    ties = jnp.array([2, 2])
    for bad in ([0.5, 0.0], [0.5, -1.0], [0.5, float("nan")]):
        with pytest.raises(ValueError, match="tie_param .* must be finite and > 0"):
            p2l_loss(z, jnp.array(bad), i01, i12, ties, loss="rao-kupper")
    with pytest.raises(ValueError, match=r"a must hold model indices in \[0, M\) = \[0, 3\), got min 0, max 5"):
        p2l_loss(z, None, jnp.array([0, 5]), i12, ties, loss="bt")
    with pytest.raises(ValueError, match=r"b must hold model indices"):
        p2l_loss(z, None, i01, jnp.array([-1, 2]), ties, loss="bt")
    with pytest.raises(ValueError, match="outcome must hold codes 0 .* got min 0, max 7"):
        p2l_loss(z, None, i01, i12, jnp.array([0, 7]), loss="bt-tie")
    with pytest.raises(ValueError, match="weight must be finite and >= 0"):
        p2l_loss(z, None, i01, i12, ties, loss="bt-tie", weight=jnp.array([1.0, -1.0]))
    with pytest.raises(ValueError, match=r"beta must have at least 1 prompt"):
        aggregate_leaderboard(np.zeros((0, 3), np.float32), loss="bt")

    import dataclasses

    from jaxrank.p2l import _split_by_prompt

    x, _, votes = small_arena
    key = jax.random.key(4)
    _, val = _split_by_prompt(jax.random.split(key, 3)[0], votes, 0.2)
    all_ties = dataclasses.replace(votes, outcome=np.where(val, 2, votes.outcome).astype(np.int32))
    with pytest.raises(ValueError, match=r"val_fraction=0.2: the 8 validation prompts hold no vote the loss scores"):
        train_p2l(key, x, all_ties, loss="bt", val_fraction=0.2)
    zero_w = dataclasses.replace(votes, weight=np.where(val, 0.0, votes.vote_weight()).astype(np.float32))
    with pytest.raises(ValueError, match="all weight 0"):
        train_p2l(key, x, zero_w, loss="bt-tie", val_fraction=0.2)


# ------------------------------------------------------------------------------------------------
# Divergence, memory, damaged checkpoints (issue 13)

SMALL = dict(loss="bt-tie", learning_rate=0.05, max_epochs=2, val_fraction=0.2, patience=None)


def test_a_diverging_run_raises_instead_of_returning_untrained_parameters(small_arena):
    from jaxrank.p2l import TrainingDivergedError

    x, _, votes = small_arena
    with pytest.raises(TrainingDivergedError, match=r"diverged at epoch 1: the training loss rose to .* "
                                                     r"\(learning_rate=1e\+06 is likely too large\)"):
        train_p2l(jax.random.key(0), x, votes, **{**SMALL, "learning_rate": 1e6, "batch_size": 64})


def test_a_batch_larger_than_the_data_costs_no_memory(small_arena):
    x, _, votes = small_arena
    # 10**9 votes per minibatch would be 20 GB of padding; it is the same full batch as 2**20.
    huge = train_p2l(jax.random.key(0), x, votes, batch_size=10**9, **SMALL)
    big = train_p2l(jax.random.key(0), x, votes, batch_size=2**20, **SMALL)
    assert huge.history == big.history and _leaves_equal(huge.params, big.params)
    assert huge.config["batch_size"] == 10**9


def test_resume_from_a_damaged_checkpoint_is_a_clear_error(small_arena, tmp_path):
    from jaxrank.checkpoint import UnreadableCheckpointError

    x, _, votes = small_arena
    opts = dict(batch_size=64, checkpoint_dir=tmp_path / "ck", **SMALL)
    train_p2l(jax.random.key(0), x, votes, stop_after=1, **opts)
    step = tmp_path / "ck" / "1"
    for f in step.rglob("*"):
        if f.is_file() and f.name != "_CHECKPOINT_METADATA":
            f.write_bytes(f.read_bytes()[: max(1, f.stat().st_size // 3)])  # truncated files
    with pytest.raises(UnreadableCheckpointError, match=r"the latest checkpoint \(epoch 1\) is incomplete or damaged"):
        train_p2l(jax.random.key(0), x, votes, resume=True, **opts)
