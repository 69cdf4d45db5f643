"""P2L with the backbone fine-tuned (jaxrank.p2l_finetune) on a tiny random-weight Llama: the cached frozen
prefix, LoRA's zero start, gradient accumulation, data-axis sharding and exact resume, each held to a reference."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrank import Votes
from jaxrank.lm.config import ModelConfig
from jaxrank.lm.transformer import CausalLM
from jaxrank.p2l import p2l_loss, vote_nll
from jaxrank import p2l_finetune as ft

CFG = ModelConfig("llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=4, num_heads=4,
                  num_kv_heads=2, head_dim=8)
P, T, M, N = 16, 8, 4, 240
OPTS = dict(k=2, lora_rank=2, max_epochs=2, batch_prompts=8, accumulate=1, dtype=jnp.float32, val_fraction=0.25,
            learning_rate=3e-3, head_learning_rate=3e-2, delta_l2=1e-3)


@pytest.fixture(scope="module")
def data():
    model = CausalLM(CFG, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    ids = rng.integers(0, CFG.vocab_size, (P, T)).astype(np.int32)
    mask = np.arange(T)[None] < rng.integers(2, T + 1, P)[:, None]
    a = rng.integers(0, M, N)
    b = (a + rng.integers(1, M, N)) % M
    prompt = rng.integers(0, P, N).astype(np.int32)
    # Prompt-dependent winners (the first token decides who is favoured) so that there is something to learn.
    favour = ids[prompt, 0] % M
    p_a = np.where(a == favour, 0.8, np.where(b == favour, 0.2, 0.5))
    names = np.array([f"m{i}" for i in range(M)])
    winner = np.where(rng.random(N) < p_a, "model_a", "model_b")
    winner[::7] = "tie"
    votes = Votes.from_arrays(names[a], names[b], winner).replace(prompt=prompt,
                                                                  prompt_ids=tuple(str(i) for i in range(P)))
    return model, ids, mask, votes


def last_token(h, mask):
    last = mask.sum(-1) - 1
    return np.asarray(h)[np.arange(h.shape[0]), last]


def test_block_slices_equal_the_full_model(data):
    model, ids, mask, _ = data

    @jax.jit
    def split_runs(ids, mask):
        full, _ = model.hidden_states(ids, attention_mask=mask)
        outs = []
        for j in (0, 1, 3, 4):
            x, _ = model.hidden_states(ids, attention_mask=mask, stop_layer=j, final_norm=False)
            outs.append(model.hidden_states(ids, attention_mask=mask, start_layer=j, residual=x)[0])
        weights = {n: getattr(model, n)[...][2:] for n in ft._layer_names(model)}
        x, _ = model.hidden_states(ids, attention_mask=mask, stop_layer=2, final_norm=False)
        outs.append(model.hidden_states(ids, attention_mask=mask, start_layer=2, residual=x, block_weights=weights)[0])
        return full, outs

    full, outs = split_runs(ids, mask)
    for h in outs:
        np.testing.assert_allclose(np.asarray(h), np.asarray(full), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="start_layer=2 needs residual"):
        model.hidden_states(ids, attention_mask=mask, start_layer=2)
    with pytest.raises(ValueError, match="stop_layer must be an int in"):
        model.hidden_states(ids, attention_mask=mask, stop_layer=5)


def _setup(model, votes, mode, **over):
    """The static options and start parameters `train_p2l_finetune` builds (one epoch of 0 steps)."""
    cfg = dict(mode=mode, k=2, lora_rank=2, lora_alpha=4.0, lora_targets=list(ft.LORA_TARGETS), loss="bt-tie",
               dtype="float32", seed=0, num_models=M, hidden_size=CFG.hidden_size, **over)
    head = ft._build_head(cfg)
    head_graph, head_params, head_stats = nnx.split(head, nnx.Param, ...)
    st = ft._static_for(model, cfg, head_graph)
    if mode == "last-k":
        backbone = {n: getattr(model, n)[...][st.start:] for n in st.layer_names}
    else:
        keys = jax.random.split(jax.random.key(3), len(ft.LORA_TARGETS))
        backbone = {n: {"a": jax.random.normal(k, (CFG.num_layers, getattr(model, n).shape[1], 2)),
                        "b": jnp.zeros((CFG.num_layers, 2, getattr(model, n).shape[2]))}
                    for k, n in zip(keys, ft.LORA_TARGETS)}
    return st, backbone, head_params, head_stats


def test_lora_with_zero_b_is_the_frozen_model(data):
    model, ids, mask, votes = data
    st, backbone, _, _ = _setup(model, votes, "lora")
    _, state = nnx.split(model)
    got = ft._features_jit(st, backbone, state, jnp.asarray(ids), jnp.asarray(mask), None)
    ref, _ = model.hidden_states(ids, attention_mask=mask)
    np.testing.assert_allclose(np.asarray(got), last_token(ref, mask), rtol=1e-6, atol=1e-6)
    # A non-zero B changes the features (the adapters are wired in).
    moved = jax.tree_util.tree_map(lambda x: x + 0.1, backbone)
    assert not np.allclose(np.asarray(ft._features_jit(st, moved, state, ids, mask, None)), last_token(ref, mask),
                           atol=1e-4)


def _inputs(model, votes, st, ids, mask):
    pv = ft.prompt_votes(votes, P)
    _, state = nnx.split(model)
    residual = None
    if st.mode == "last-k":
        residual = ft._prefix_jit(st.model_graph, state, jnp.asarray(ids), jnp.asarray(mask), stop=st.start)
    return state, (jnp.asarray(ids), jnp.asarray(mask), residual, *(jnp.asarray(x) for x in pv))


def _moved(params, key):
    """Parameters away from the start (so that every gradient path is non-trivial)."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def test_last_k_with_cached_prefix_equals_the_full_model(data):
    model, ids, mask, votes = data
    st, backbone, head_params, head_stats = _setup(model, votes, "last-k")
    params = _moved({"backbone": backbone, "head": head_params}, jax.random.key(1))
    state, inputs = _inputs(model, votes, st, ids, mask)
    batch = jnp.arange(P, dtype=jnp.int32).reshape(1, P)
    valid = jnp.ones((1, P), bool)
    l2 = jnp.float32(0.0)
    loss, grads = ft._loss_and_grads(st, params, state, head_stats, inputs, batch, valid, head_params, l2)

    # Reference: the whole model run on the token ids (all blocks, unrolled, with the last two replaced),
    # and the loss as the mean of p2l_loss over every vote row.
    rows = votes.rows(merge=False)
    r_prompt = np.asarray(votes.prompt)[np.asarray(rows.row_vote)]

    def reference(p, a, b, o, w):
        layers = model.split_layers()
        for i in range(2):
            layers[2 + i] = {n: p["backbone"][n][i] for n in st.layer_names}
        h, _ = model.hidden_states(ids, attention_mask=mask, layers=layers)
        feats = h[np.arange(P), mask.sum(-1) - 1]
        beta, _ = nnx.merge(st.head_graph, p["head"], head_stats)(feats)
        return p2l_loss(beta[r_prompt], None, a, b, o, loss="bt-tie", weight=w)

    ref_loss, ref_grads = jax.jit(jax.value_and_grad(reference))(
        params, *(jnp.asarray(x) for x in (rows.a, rows.b, rows.outcome)), jnp.asarray(rows.count, jnp.float32))
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    for g, r in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=2e-4, atol=1e-6)
    assert any(float(jnp.abs(g).max()) > 1e-4 for g in jax.tree_util.tree_leaves(grads["backbone"]))


@pytest.mark.parametrize("mode", ["last-k", "lora"])
def test_accumulated_micro_batches_equal_one_batch(data, mode):
    model, ids, mask, votes = data
    st, backbone, head_params, head_stats = _setup(model, votes, mode)
    params = _moved({"backbone": backbone, "head": head_params}, jax.random.key(2))
    state, inputs = _inputs(model, votes, st, ids, mask)
    prompts = jnp.asarray(np.random.default_rng(1).permutation(P)[:8], jnp.int32)
    valid = jnp.asarray(np.arange(8) < 7)  # a padded slot, as the last batch of an epoch has
    l2 = jnp.float32(0.1)
    one = ft._loss_and_grads(st, params, state, head_stats, inputs, prompts.reshape(1, 8), valid.reshape(1, 8),
                             head_params, l2)
    four = ft._loss_and_grads(st, params, state, head_stats, inputs, prompts.reshape(4, 2), valid.reshape(4, 2),
                              head_params, l2)
    np.testing.assert_allclose(float(four[0]), float(one[0]), rtol=1e-6)
    for g, r in zip(jax.tree_util.tree_leaves(four[1]), jax.tree_util.tree_leaves(one[1])):
        # float32 sums in another order: ~10 ulp at the gradients' scale (0.1).
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def uninterrupted(data):
    model, ids, mask, votes = data
    return ft.train_p2l_finetune(jax.random.key(5), model, ids, mask, votes, mode="last-k", **OPTS)


def _assert_same(fit_a, fit_b, exact: bool):
    for x, y in zip(jax.tree_util.tree_leaves((fit_a.backbone, fit_a.head)),
                    jax.tree_util.tree_leaves((fit_b.backbone, fit_b.head))):
        if exact:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        else:
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def test_training_starts_at_the_global_fit_and_learns(data, uninterrupted):
    model, ids, mask, votes = data
    h = uninterrupted.history
    assert h["epochs"] == 2 and len(h["val_nll"]) == 2
    # The start (Delta = 0) is the prompt-blind fit: its validation NLL is vote_nll of the global leaderboard.
    theta = np.asarray(uninterrupted.head_stats["base"][...])
    beta, _ = uninterrupted.coefficients(model, ids, mask)
    assert h["best_val_nll"] <= h["start_val_nll"]
    if h["best_epoch"] == 0:
        np.testing.assert_allclose(np.asarray(beta), np.broadcast_to(theta - theta.mean(), beta.shape), atol=1e-6)
    assert h["train_loss"][-1] < h["train_loss"][0]
    nll = vote_nll(np.asarray(beta), None, votes, loss="bt-tie").mean()
    assert np.isfinite(nll)


def test_resume_equals_uninterrupted(data, uninterrupted, tmp_path):
    model, ids, mask, votes = data
    kw = dict(mode="last-k", checkpoint_dir=tmp_path / "ck", **OPTS)
    ft.train_p2l_finetune(jax.random.key(5), model, ids, mask, votes, stop_after=1, **kw)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        ft.train_p2l_finetune(jax.random.key(5), model, ids, mask, votes, **kw)
    prefix = ft.frozen_prefix(model, ids, mask, k=2, dtype=jnp.float32, batch_size=8)
    resumed = ft.train_p2l_finetune(jax.random.key(5), model, ids, mask, votes, resume=True, prefix=prefix, **kw)
    _assert_same(resumed, uninterrupted, exact=True)
    assert resumed.history == uninterrupted.history
    # Saved and loaded: the same coefficients.
    path = ft.save_p2l_finetune(resumed, tmp_path / "model")
    loaded = ft.load_p2l_finetune(path, model)
    np.testing.assert_array_equal(np.asarray(loaded.coefficients(model, ids, mask)[0]),
                                  np.asarray(resumed.coefficients(model, ids, mask)[0]))
    np.testing.assert_allclose(np.asarray(loaded.coefficients(model, ids, mask, prefix=prefix)[0]),
                               np.asarray(resumed.coefficients(model, ids, mask)[0]), rtol=1e-5, atol=1e-6)


def test_sharded_equals_unsharded(data, uninterrupted):
    model, ids, mask, votes = data
    if jax.device_count() < 8:
        pytest.skip("needs 8 (faked) devices")
    mesh = jax.make_mesh((8,), ("data",), devices=jax.devices()[:8])
    sharded = ft.train_p2l_finetune(jax.random.key(5), model, ids, mask, votes, mode="last-k", mesh=mesh, **OPTS)
    _assert_same(sharded, uninterrupted, exact=False)
    np.testing.assert_allclose(sharded.history["val_nll"], uninterrupted.history["val_nll"], rtol=1e-5)


def test_bad_inputs(data):
    model, ids, mask, votes = data
    with pytest.raises(ValueError, match="mode must be one of"):
        ft.train_p2l_finetune(jax.random.key(0), model, ids, mask, votes, mode="full")
    with pytest.raises(ValueError, match=r"k must be in \[1, 4\]"):
        ft.train_p2l_finetune(jax.random.key(0), model, ids, mask, votes, k=5)
    with pytest.raises(ValueError, match="multiple of accumulate"):
        ft.train_p2l_finetune(jax.random.key(0), model, ids, mask, votes, batch_prompts=6, accumulate=4)
    with pytest.raises(ValueError, match="lora_targets must name"):
        ft.train_p2l_finetune(jax.random.key(0), model, ids, mask, votes, mode="lora", lora_targets=("attn_norm",))
    with pytest.raises(ValueError, match="mask must have the shape"):
        ft.train_p2l_finetune(jax.random.key(0), model, ids, mask[:, :3], votes)
    holed = mask.copy()
    holed[:, 1], holed[:, 2] = False, True
    with pytest.raises(ValueError, match="right padding"):
        ft.train_p2l_finetune(jax.random.key(0), model, ids, holed, votes)
    with pytest.raises(ValueError, match="indexes prompt"):
        ft.train_p2l_finetune(jax.random.key(0), model, ids[:4], mask[:4], votes)
    with pytest.raises(TypeError, match="CausalLM"):
        ft.train_p2l_finetune(jax.random.key(0), object(), ids, mask, votes)
    # A cached prefix of another k (same shape), or of other prompts, is refused before training.
    other_k = ft.frozen_prefix(model, ids, mask, k=1, dtype=jnp.float32, batch_size=8)
    with pytest.raises(ValueError, match=r"prefix is not frozen_prefix\(model, ids, mask, k=2\)"):
        ft.train_p2l_finetune(jax.random.key(0), model, ids, mask, votes, k=2, dtype=jnp.float32, prefix=other_k)
    shuffled = ft.frozen_prefix(model, ids[::-1], mask[::-1], k=2, dtype=jnp.float32, batch_size=8)
    with pytest.raises(ValueError, match="prefix is not frozen_prefix"):
        ft.train_p2l_finetune(jax.random.key(0), model, ids, mask, votes, k=2, dtype=jnp.float32, prefix=shuffled)
