"""Model-axis sharding of the flax.nnx LMs on 8 faked CPU devices: a random Llama and Gemma 3 laid out
as fsdp=2,tensor=4 and fsdp=4,tensor=2 give the single-device logits, generations and scores; the
weights really are split; the vocabulary-sharded fused head never holds `[tokens, vocab]`; checkpoints
load straight onto their shards; the memory plan bounds what XLA allocates."""

from __future__ import annotations

import json
import re

import jax
import numpy as np
import pytest
from flax import nnx

from jaxrank.lm import CausalLM, LoadedModel, ModelConfig, generate, load_model
from jaxrank.lm.config import FULL_ATTENTION, SLIDING_ATTENTION, RopeConfig
from jaxrank.lm.memory import MemoryPlanError, available_memory, model_memory, parse_bytes, plan_prioritize
from jaxrank.lm.pipeline import prioritize_prompts, token_scores
from jaxrank.lm.sharding import device_bytes, make_model_mesh, parse_mesh
from jaxrank.scoring import score_pairs

from lm_tokenizer import TEMPLATE, bpe_chat_tokenizer

TOL = 1e-5  # f32, sharded vs one device (the tolerance)
VOCAB = 304  # divisible by tensor = 2 and 4
MESHES = {"fsdp=2,tensor=4": dict(fsdp=2, tensor=4), "fsdp=4,tensor=2": dict(fsdp=4, tensor=2)}
PROMPTS = ["Why is the sky blue?", "Hi!", "What is 17 times 23?", "List five fruits."]
COMPLETIONS = ["Because of Rayleigh scattering.", "Hello there", "391", "apple, fig"]


def _config(arch: str, tokenizer, vocab: int = VOCAB) -> ModelConfig:
    special = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if arch == "llama":
        return ModelConfig("llama", vocab_size=vocab, hidden_size=64, intermediate_size=128, num_layers=2,
                           num_heads=8, num_kv_heads=4, head_dim=8, tie_word_embeddings=False, **special)
    # Gemma 3: 2 key/value heads, so tensor=4 keeps them replicated (the fallback path).
    return ModelConfig(
        "gemma3", vocab_size=vocab, hidden_size=64, intermediate_size=96, num_layers=3, num_heads=4,
        num_kv_heads=2, head_dim=16, norm_offset=1.0, hidden_act="gelu_pytorch_tanh", qk_norm=True,
        sandwich_norm=True, embed_scale=True, attention_scale=24**-0.5,
        layer_types=(SLIDING_ATTENTION, FULL_ATTENTION, SLIDING_ATTENTION), sliding_window=4,
        rope=RopeConfig(theta=10_000.0), rope_local=RopeConfig(theta=100.0), final_logit_softcap=5.0, **special,
    )


def _random_model(config: ModelConfig, seed: int) -> CausalLM:
    model = CausalLM(config, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    weights = model.weights()
    weights["embed"] = weights["embed"] * 8.0  # distributions that differ visibly between the models
    for name in weights:
        if name.endswith("norm"):  # non-trivial norm scales, so that their layout is exercised too
            weights[name] = weights[name] + 0.3 * rng.standard_normal(weights[name].shape).astype(np.float32)
    return CausalLM(config, weights=weights)


@pytest.fixture(scope="module")
def tokenizer():
    return bpe_chat_tokenizer(300, PROMPTS * 3 + COMPLETIONS * 3 + ["the quick brown fox jumps over the lazy dog"] * 3)


@pytest.fixture(scope="module")
def models(tokenizer):
    return {arch: _random_model(_config(arch, tokenizer), seed) for seed, arch in enumerate(("llama", "gemma3"))}


@pytest.fixture(scope="module")
def meshes():
    return {name: make_model_mesh(**sizes) for name, sizes in MESHES.items()}


@pytest.fixture(scope="module")
def sharded(models, meshes):
    return {(arch, name): m.with_mesh(mesh) for arch, m in models.items() for name, mesh in meshes.items()}


def _batch():
    rng = np.random.default_rng(7)
    ids = rng.integers(3, VOCAB, size=(4, 9)).astype(np.int32)
    mask = np.ones_like(ids, bool)
    mask[1, :3] = False  # left padding
    mask[2, 6:] = False  # right padding
    return ids, mask


_FORWARD = {}


def _logits(model, ids, mask):
    graphdef, state = nnx.split(model)
    if graphdef not in _FORWARD:
        _FORWARD[graphdef] = jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, attention_mask=m)[0])
    return _FORWARD[graphdef](state, ids, mask)


def _loaded(model, tokenizer, name):
    return LoadedModel(model=model, tokenizer=tokenizer, config=model.config, name=name, chat_template=TEMPLATE,
                       vocab_size=model.vocab_size, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, eos_token_ids=(tokenizer.eos_token_id,))


# ---------------------------------------------------------------- layout


def test_parameters_carry_their_logical_axes_and_live_on_their_shards(sharded, models):
    model = sharded[("llama", "fsdp=2,tensor=4")]
    specs = nnx.get_partition_spec(nnx.state(model))
    assert specs["embed"].get_value() == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert specs["lm_head"].get_value() == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert specs["wq"].get_value() == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert specs["w_down"].get_value() == jax.sharding.PartitionSpec(None, "tensor", "fsdp")
    assert specs["attn_norm"].get_value() == jax.sharding.PartitionSpec(None, None)
    assert model.wq[...].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert model.sharding.fallbacks == ()
    # Gemma's 2 key/value heads cannot be split 4 ways: replicated, and said so.
    gemma = sharded[("gemma3", "fsdp=2,tensor=4")]
    assert gemma.wk[...].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", None)
    assert any("kv_heads" in f for f in gemma.sharding.fallbacks)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_per_device_parameter_bytes_at_most_a_quarter_for_tensor_4(sharded, models, arch):
    model = sharded[(arch, "fsdp=2,tensor=4")]
    total = sum(x.nbytes for x in jax.tree.leaves(nnx.state(models[arch])))
    per_device: dict = {}
    for x in jax.tree.leaves(nnx.state(model)):
        for device, n in device_bytes(x).items():
            per_device[device] = per_device.get(device, 0) + n
    assert len(per_device) == 8
    assert max(per_device.values()) <= total / 4, (max(per_device.values()), total)


# ---------------------------------------------------------------- same numbers as one device


@pytest.mark.parametrize("mesh_name", list(MESHES))
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_logits_equal_one_device(models, sharded, arch, mesh_name):
    ids, mask = _batch()
    want = np.asarray(_logits(models[arch], ids, mask))
    got = _logits(sharded[(arch, mesh_name)], ids, mask)
    assert "tensor" in str(got.sharding.spec)  # the logits come out vocabulary-sharded
    np.testing.assert_allclose(np.asarray(got), want, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_score_pairs_on_sharded_logits_equals_one_device(models, sharded, mesh_name):
    ids, mask = _batch()
    one = score_pairs(_logits(models["llama"], ids, mask), _logits(models["gemma3"], ids, mask), mask)
    got = score_pairs(_logits(sharded[("llama", mesh_name)], ids, mask),
                      _logits(sharded[("gemma3", mesh_name)], ids, mask), mask)
    for metric in ("kl", "cross_entropy"):
        np.testing.assert_allclose(np.asarray(got[metric]), np.asarray(one[metric]), rtol=TOL, atol=TOL)


@pytest.mark.parametrize(("arch", "mesh_name"), [("llama", "fsdp=2,tensor=4"), ("gemma3", "fsdp=4,tensor=2")])
def test_greedy_generation_equals_one_device(models, sharded, arch, mesh_name):
    ids, mask = _batch()
    mask = np.ones_like(mask)  # generation prompts are left-padded; all real here
    want, want_len = generate(models[arch], ids, mask, max_new_tokens=4, eos_token_id=2, pad_token_id=0)
    got, got_len = generate(sharded[(arch, mesh_name)], ids, mask, max_new_tokens=4, eos_token_id=2, pad_token_id=0)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(got_len), np.asarray(want_len))


@pytest.fixture(scope="module")
def one_device_rows(models, tokenizer):
    a, b = _loaded(models["llama"], tokenizer, "a"), _loaded(models["gemma3"], tokenizer, "b")
    return {impl: prioritize_prompts(a, b, PROMPTS, completions=COMPLETIONS, mode="token", implementation=impl,
                                     batch_size=4, metrics=("kl", "cross_entropy"))
            for impl in ("fused", "materialized")}


@pytest.mark.parametrize(("mesh_name", "implementation"),
                         [("fsdp=2,tensor=4", "fused"), ("fsdp=4,tensor=2", "materialized")])
def test_prioritize_scores_equal_one_device(models, sharded, tokenizer, one_device_rows, mesh_name, implementation):
    """Token mode between a sharded Llama and a sharded Gemma 3 sharing one vocabulary: the divergence
    runs on the vocabulary shards of both heads (shard_map + pmax/psum) and equals one device."""
    a = _loaded(sharded[("llama", mesh_name)], tokenizer, "a")
    b = _loaded(sharded[("gemma3", mesh_name)], tokenizer, "b")
    rows = prioritize_prompts(a, b, PROMPTS, completions=COMPLETIONS, mode="token", implementation=implementation,
                              batch_size=4, metrics=("kl", "cross_entropy"))
    want = {r["id"]: r for r in one_device_rows[implementation]}
    assert [r["id"] for r in rows] == [r["id"] for r in one_device_rows[implementation]]
    for r in rows:
        for m in ("kl", "cross_entropy"):
            np.testing.assert_allclose(r[m], want[r["id"]][m], rtol=TOL, atol=TOL, err_msg=f"{r['id']} {m}")


def test_prioritize_lays_unsharded_models_out_on_a_model_mesh(models, tokenizer, meshes, one_device_rows):
    a, b = _loaded(models["llama"], tokenizer, "a"), _loaded(models["gemma3"], tokenizer, "b")
    rows = prioritize_prompts(a, b, PROMPTS, completions=COMPLETIONS, mode="token", implementation="fused",
                              batch_size=4, mesh=meshes["fsdp=2,tensor=4"])
    want = {r["id"]: r["kl"] for r in one_device_rows["fused"]}
    np.testing.assert_allclose([r["kl"] for r in rows], [want[r["id"]] for r in rows], rtol=TOL, atol=TOL)
    with pytest.raises(ValueError, match="different meshes"):
        prioritize_prompts(_loaded(models["llama"].with_mesh(meshes["fsdp=2,tensor=4"]), tokenizer, "a"),
                           _loaded(models["gemma3"].with_mesh(meshes["fsdp=4,tensor=2"]), tokenizer, "b"),
                           PROMPTS[:1], completions=COMPLETIONS[:1])


# ---------------------------------------------------------------- the fused head never holds [tokens, vocab]

BIG_VOCAB = 8192
ROWS, LENGTH, SCORED = 8, 40, 32


def _scorer_program(model_a, model_b, fused: bool):
    ga, sa = nnx.split(model_a)
    gb, sb = nnx.split(model_b)
    fn = jax.jit(lambda sa, sb, *arrays: token_scores(nnx.merge(ga, sa), nnx.merge(gb, sb), *arrays,
                                                      metrics=("kl", "cross_entropy"), fused=fused))
    ids = jax.ShapeDtypeStruct((ROWS, LENGTH), np.int32)
    mask = jax.ShapeDtypeStruct((ROWS, LENGTH), bool)
    at = jax.ShapeDtypeStruct((ROWS, SCORED), np.int32)
    count = jax.ShapeDtypeStruct((ROWS, SCORED), bool)
    return fn.lower(sa, sb, ids, mask, at, ids, mask, at, count).compile()


def _full_vocab_f32_buffers(hlo: str, min_rows: int) -> list[str]:
    """f32 shapes in an HLO text with a full-vocabulary dimension and at least `min_rows` rows."""
    out = []
    for dims in re.findall(r"f32\[([0-9,]+)\]", hlo):
        shape = [int(d) for d in dims.split(",") if d]
        if BIG_VOCAB in shape and np.prod(shape) // BIG_VOCAB >= min_rows:
            out.append(dims)
    return out


@pytest.fixture(scope="module")
def big_vocab_programs(meshes):
    """The compiled scorer of two random 8,192-vocabulary models, by (mesh, fused)."""
    cfg = ModelConfig("llama", vocab_size=BIG_VOCAB, hidden_size=32, intermediate_size=64, num_layers=1,
                      num_heads=4, num_kv_heads=4, head_dim=8, tie_word_embeddings=True)
    pair = CausalLM(cfg, rngs=nnx.Rngs(0)), CausalLM(cfg, rngs=nnx.Rngs(1))
    out = {}
    for mesh_name, fused in (("one", False), ("fsdp=2,tensor=4", True), ("fsdp=4,tensor=2", False)):
        mesh = meshes.get(mesh_name)
        models = pair if mesh is None else tuple(m.with_mesh(mesh) for m in pair)
        out[mesh_name, fused] = _scorer_program(*models, fused=fused)
    return cfg, out


def test_fused_vocab_sharded_program_holds_no_tokens_by_vocab_buffer(big_vocab_programs):
    _, programs = big_vocab_programs
    tokens = ROWS * SCORED
    full = tokens * BIG_VOCAB * 4  # one model's [tokens, vocab] float32 logits
    compiled = programs["fsdp=2,tensor=4", True]
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < full, (temp, full)  # all temporaries together are smaller than one such buffer
    assert not _full_vocab_f32_buffers(compiled.as_text(), min_rows=tokens // 2)
    # The detector does see the logits of the unsharded, materialised program.
    plain = programs["one", False]
    assert _full_vocab_f32_buffers(plain.as_text(), min_rows=tokens)
    assert plain.memory_analysis().temp_size_in_bytes >= full


def test_memory_plan_bounds_what_xla_allocates(big_vocab_programs, meshes):
    """The plan's per-device activation estimate is not below XLA's temporaries of the compiled
    scorer (materialised and fused), on one device and sharded."""
    cfg, programs = big_vocab_programs
    for (mesh_name, fused), compiled in programs.items():
        temp = compiled.memory_analysis().temp_size_in_bytes
        sizes = dict(meshes[mesh_name].shape) if mesh_name in meshes else {}
        plan = 2 * model_memory(cfg, sizes, batch=ROWS, length=LENGTH, scored=SCORED, fused=fused).activations
        assert plan >= temp, (mesh_name, fused, plan, temp)
        assert plan <= 40 * temp, (mesh_name, fused, plan, temp)  # an estimate, not a blind ceiling


def test_memory_plan_refuses_what_does_not_fit(models):
    cfg = models["llama"].config
    fits = plan_prioritize(cfg, cfg, {"fsdp": 2, "tensor": 4}, batch=8, prompt_tokens=40, new_tokens=8,
                           available=(2**30, "test"))
    assert fits.fits and fits.peak > 0
    fits.check()
    small = plan_prioritize(cfg, cfg, {"fsdp": 2, "tensor": 4}, batch=8, prompt_tokens=40, new_tokens=8,
                            available=(1000, "--device-memory"))
    with pytest.raises(MemoryPlanError, match=r"needs .* per device .* but 1000 B are available \(--device-memory\)"):
        small.check()
    # Sharding shrinks the per-device weights.
    one = plan_prioritize(cfg, cfg, {}, batch=8, prompt_tokens=40, new_tokens=8)
    assert fits.models[0].weights < one.models[0].weights / 4
    assert parse_bytes("16GiB") == 16 * 2**30 and parse_bytes("1.5GB") == 1_500_000_000 and parse_bytes("2e3") == 2000
    with pytest.raises(ValueError, match="expected a size"):
        parse_bytes("lots")
    avail, source = available_memory(jax.devices()[:8])
    assert avail is None or avail > 0
    assert "host RAM" in source or "memory_stats" in source or "unknown" in source


def test_mesh_parsing_errors():
    assert parse_mesh("fsdp=4,tensor=2") == {"fsdp": 4, "tensor": 2}
    with pytest.raises(ValueError, match="unknown mesh axis 'model'"):
        parse_mesh("model=2")
    with pytest.raises(ValueError, match="NAME=SIZE"):
        parse_mesh("fsdp")
    with pytest.raises(ValueError, match="given twice"):
        parse_mesh("fsdp=2,fsdp=2")
    with pytest.raises(ValueError, match="needs 16 devices, but only 8"):
        make_model_mesh(fsdp=4, tensor=4)
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        load_model("smollm2-135m-instruct", mesh="fsdp=2")


# ---------------------------------------------------------------- checkpoints straight onto their shards


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory, tokenizer):
    torch = pytest.importorskip("torch", reason="torch (the 'torch' extra) builds the tiny checkpoints")
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("sharded_hf")
    out = {}
    for seed, name in enumerate(("a", "b")):
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256,
                          tie_word_embeddings=seed == 0, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
        model = LlamaForCausalLM(cfg)
        with torch.no_grad():
            model.model.embed_tokens.weight.mul_(8.0)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        out[name] = root / name
    return out


def test_safetensors_checkpoint_loads_sharded(hf_dirs, meshes):
    ids, mask = _batch()
    for (name, path), mesh in zip(hf_dirs.items(), meshes.values()):  # tied on one mesh, untied on the other
        one = load_model(path, cache=False)
        lm = load_model(path, cache=False, mesh=mesh)
        assert lm.model.sharding is not None and lm.model.embed[...].sharding.mesh == mesh
        np.testing.assert_allclose(np.asarray(_logits(lm.model, ids, mask)),
                                   np.asarray(_logits(one.model, ids, mask)), rtol=TOL, atol=TOL, err_msg=name)


def test_cli_mesh_and_dry_run(hf_dirs, tmp_path, capsys):
    from jaxrank.cli import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS[:2])))
    base = ["prioritize", "--model-a", str(hf_dirs["a"]), "--model-b", str(hf_dirs["b"]), "--prompts", str(prompts),
            "--max-new-tokens", "3", "--batch-size", "4"]
    assert main(base + ["--mesh", "fsdp=2,tensor=4", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "memory plan per device (mesh data=1 fsdp=2 tensor=4, 8 devices" in out
    assert re.search(r"model A .* weights .* KV cache .* activations", out)
    assert main(base + ["--mesh", "fsdp=2,tensor=4", "--dry-run", "--device-memory", "1KiB"]) == 2
    assert "needs" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "one.jsonl")]) == 0
    assert main(base + ["--mesh", "fsdp=4,tensor=2", "--out", str(tmp_path / "mesh.jsonl")]) == 0
    one = [json.loads(x) for x in (tmp_path / "one.jsonl").read_text().splitlines()]
    mesh = [json.loads(x) for x in (tmp_path / "mesh.jsonl").read_text().splitlines()]
    assert [r["id"] for r in mesh] == [r["id"] for r in one]
    assert [r["completion"] for r in mesh] == [r["completion"] for r in one]
    np.testing.assert_allclose([r["kl"] for r in mesh], [r["kl"] for r in one], rtol=TOL, atol=TOL)
    capsys.readouterr()
    for flags, message in ((["--mesh", "fsdp=16"], "needs 16 devices, but only 8"),
                           (["--mesh", "pipeline=2"], "unknown mesh axis 'pipeline'"),
                           (["--mesh", "fsdp=2", "--data-parallel", "2"], "--mesh and --data-parallel")):
        assert main(base + flags + ["--dry-run"]) == 2, flags
        assert re.search(message, capsys.readouterr().err), flags


def test_real_smollm2_loads_sharded_and_scores_as_unsharded(smollm2, meshes):
    """SmolLM2-135M (GGUF: 9 heads and 3 key/value heads kept replicated over tensor=4, vocabulary and
    MLP split), loaded from the file straight onto the shards: the same log-probabilities."""
    lm = load_model("smollm2-135m-instruct", cache=False, mesh=meshes["fsdp=2,tensor=4"])
    assert lm.model.sharding.fallbacks  # the heads
    ids = np.asarray(smollm2.tokenizer(["The capital of France is"], return_tensors="np")["input_ids"], np.int32)
    mask = np.ones_like(ids, bool)
    want = jax.nn.log_softmax(_logits(smollm2.model, ids, mask), axis=-1)
    got = jax.nn.log_softmax(_logits(lm.model, ids, mask), axis=-1)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4)


@pytest.mark.slow
def test_real_gemma3_270m_loads_sharded_and_scores_as_unsharded(gemma3_270m, meshes):
    """Gemma 3 270M (262,144-entry vocabulary split over tensor, its one key/value head replicated):
    the same log-probabilities sharded as on one device."""
    g = load_model("gemma3-270m", mesh=meshes["fsdp=4,tensor=2"])  # laid out from the session's weights
    assert g.model.embed[...].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    ids = np.asarray(gemma3_270m.tokenizer(["The capital of France is"], return_tensors="np")["input_ids"], np.int32)
    mask = np.ones_like(ids, bool)
    want = jax.nn.log_softmax(_logits(gemma3_270m.model, ids, mask), axis=-1)
    got = jax.nn.log_softmax(_logits(g.model, ids, mask), axis=-1)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4)


# ---------------------------------------------------------------- bfloat16 (`--dtype bfloat16`)

# bfloat16 keeps 8 significant bits: one rounding is off by at most u = 2^-8 relative. Weights, activations
# and each matmul's operands are rounded (products summed in float32; norms, softmax, logits and the
# divergence in float32), so every score may move by a few u relative: 4u = 2^-6 is allowed, set once.
BF16_RTOL = 2.0**-6


def test_bfloat16_scores_are_close_to_float32(models, tokenizer, one_device_rows):
    import jax.numpy as jnp

    bf16 = {arch: CausalLM(m.config, weights=m.weights(), dtype=jnp.bfloat16) for arch, m in models.items()}
    assert bf16["llama"].wq[...].dtype == jnp.bfloat16
    rows = prioritize_prompts(_loaded(bf16["llama"], tokenizer, "a"), _loaded(bf16["gemma3"], tokenizer, "b"), PROMPTS,
                              completions=COMPLETIONS, mode="token", implementation="fused", batch_size=4,
                              metrics=("kl", "cross_entropy"))
    want = {r["id"]: r for r in one_device_rows["fused"]}
    moved = 0.0
    for r in rows:
        for m in ("kl", "cross_entropy"):
            np.testing.assert_allclose(r[m], want[r["id"]][m], rtol=BF16_RTOL, atol=0, err_msg=f"{r['id']} {m}")
            moved = max(moved, abs(r[m] - want[r["id"]][m]))
    assert moved > 0  # the bfloat16 models really ran in bfloat16


def test_cli_dtype_halves_weights_and_refusals_suggest_what_fits(hf_dirs, tmp_path, capsys, monkeypatch):
    import jax.numpy as jnp

    import jaxrank.lm.pipeline as pipeline
    from jaxrank.cli import main
    from jaxrank.lm.loading import load_tokenizer
    from jaxrank.lm.memory import format_bytes
    from jaxrank.lm.sharding import param_bytes_per_device

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS[:2])))
    base = ["prioritize", "--model-a", str(hf_dirs["a"]), "--model-b", str(hf_dirs["b"]), "--prompts", str(prompts),
            "--max-new-tokens", "3", "--batch-size", "4"]

    def dry_run(*flags):
        assert main(base + ["--dry-run", *flags]) == 0
        out = capsys.readouterr().out
        return out, parse_bytes(re.search(r"peak (\S+ \S+) of", out).group(1))

    sizes = {"data": 1, "fsdp": 2, "tensor": 4}
    f32, peak32 = dry_run("--mesh", "fsdp=2,tensor=4")
    b16, peak16 = dry_run("--mesh", "fsdp=2,tensor=4", "--dtype", "bfloat16")
    for name in ("a", "b"):
        config = load_tokenizer(hf_dirs[name]).config
        w32, w16 = (sum(param_bytes_per_device(config, sizes, n).values()) for n in (4, 2))
        assert w16 * 2 == w32
        assert f"weights {format_bytes(w32):>10}" in f32 and f"weights {format_bytes(w16):>10}" in b16, name
    assert peak16 < peak32
    # Room for the bfloat16 plan but not the float32 one: the refusal says so.
    between = int((peak16 * peak32) ** 0.5)
    assert main(base + ["--mesh", "fsdp=2,tensor=4", "--device-memory", str(between)]) == 2
    err = capsys.readouterr().err
    assert "it fits with --dtype bfloat16 (peak" in err, err
    # One device that cannot hold the float32 plan: a mesh over the 8 devices is named.
    _, one = dry_run()
    assert main(base + ["--device-memory", str(int(one * 0.9))]) == 2
    assert re.search(r"--mesh \S+ \(peak \S+ \S+ per device, 8 devices\)", capsys.readouterr().err)
    # The models load in bfloat16 (the pipeline itself is covered above).
    seen = []
    monkeypatch.setattr(pipeline, "prioritize_prompts",
                        lambda a, b, prompts, **kw: seen.append((a.model.wq[...].dtype, b.model.wq[...].dtype)) or [])
    assert main(base + ["--dtype", "bfloat16", "--out", str(tmp_path / "bf16.jsonl")]) == 0
    assert seen == [(jnp.bfloat16, jnp.bfloat16)]
    capsys.readouterr()
    assert main(["prioritize", "--logprobs-a", "a.jsonl", "--logprobs-b", "b.jsonl", "--dtype", "bfloat16"]) == 2
    assert "drop --dtype" in capsys.readouterr().err
