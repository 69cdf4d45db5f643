"""`jaxrank.lm.prompt_features`: last-token hidden states of a causal LM (real SmolLM2-135M and a tiny
random model), bucketing/order/padding checked against the unpadded forward pass, pooled
all-MiniLM-L6-v2 sentence vectors, sharding, caching and argument errors."""

import json
import warnings

import numpy as np
import pytest

from jaxrank.lm import features as features_module
from jaxrank.lm.features import prompt_features
from jaxrank.lm.pipeline import TruncationWarning, ModelSide, truncate_left

from lm_tokenizer import TEMPLATE, bpe_chat_tokenizer

# Batched/padded vs one-prompt forward passes differ only by float32 summation order.
ATOL = RTOL = 1e-4

PROMPTS = [
    "Explain the difference between a list and a tuple in Python, with examples.",
    "Why is the sky blue?",
    "Write a haiku about autumn leaves falling on a quiet pond.",
    "2+2?",
    "Name three rivers in Africa and say which is longest.",
]


def _direct(lm, ids):
    """Final-norm hidden state at the last token of one unpadded prompt, `[d]` float64."""
    h, _ = lm.model.hidden_states(np.asarray(ids, np.int32)[None])
    return np.asarray(h[0, -1], np.float64)


@pytest.fixture(scope="module")
def smollm2_features(smollm2):
    # batch_size 2 over 5 prompts: 3 batches sorted by length, the last one half padding rows.
    return prompt_features(PROMPTS, encoder=smollm2, batch_size=2)


def test_features_are_the_last_token_hidden_state_of_the_unpadded_prompt(smollm2, smollm2_features):
    side = ModelSide(smollm2, "encoder")
    assert smollm2_features.shape == (len(PROMPTS), smollm2.config.hidden_size)
    assert smollm2_features.dtype == np.float32
    for i, text in enumerate(PROMPTS):
        ids = side.prompt_ids(text)
        # The pipeline's rendering: chat template, generation prompt last.
        assert smollm2.tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
        np.testing.assert_allclose(smollm2_features[i], _direct(smollm2, ids), atol=ATOL, rtol=RTOL)
    # Distinct prompts give distinct vectors (an order mix-up would not pass the loop above either).
    assert np.min(np.abs(smollm2_features[1:] - smollm2_features[:-1]).max(axis=1)) > 1e-2


def test_features_on_a_data_mesh_equal_one_device(smollm2, smollm2_features):
    from jaxrank.sharding import make_mesh

    calls = []
    sharded = prompt_features(
        PROMPTS, encoder=smollm2, batch_size=2, mesh=make_mesh(data=4),
        progress=lambda stage, advance, total, tokens: calls.append((stage, advance, total, tokens)),
    )
    np.testing.assert_allclose(sharded, smollm2_features, atol=ATOL, rtol=RTOL)
    # batch_size 2 is rounded up to 4 rows per batch (one per device): two batches after the start.
    assert [c[1] for c in calls] == [0, 4, 1] and all(c[0] == "features" and c[2] == 5 for c in calls)
    assert all(c[3] > 0 for c in calls[1:])


def test_raw_text_and_left_truncation(smollm2):
    text = PROMPTS[0]
    side = ModelSide(smollm2, "encoder")
    raw = list(smollm2.tokenizer.encode(text))
    with pytest.warns(TruncationWarning, match="1 of 2 prompts are longer than 8 tokens"):
        x = prompt_features([text, "Hi"], encoder=smollm2, max_length=8, chat_template=False)
    np.testing.assert_allclose(x[0], _direct(smollm2, raw[-8:]), atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(x[1], _direct(smollm2, smollm2.tokenizer.encode("Hi")), atol=ATOL, rtol=RTOL)
    # With the template, the kept end is the turn marker; the BOS-less SmolLM2 keeps no extra token.
    with pytest.warns(TruncationWarning):
        y = prompt_features([text], encoder=smollm2, max_length=8)
    kept = truncate_left(side.prompt_ids(text), 8, side.bos)
    assert len(kept) == 8
    np.testing.assert_allclose(y[0], _direct(smollm2, kept), atol=ATOL, rtol=RTOL)


# --------------------------------------------------------------------------------------------
# The MiniLM sentence encoder


@pytest.fixture(scope="module")
def minilm_features(minilm):
    return prompt_features(PROMPTS, encoder="all-minilm-l6-v2", batch_size=2)


def test_minilm_features_are_the_sentence_embeddings(minilm, minilm_features):
    # One padded batch in input order vs length-sorted batches of 2 padded to buckets of 16 tokens.
    assert minilm_features.shape == (len(PROMPTS), 384) and minilm_features.dtype == np.float32
    np.testing.assert_allclose(minilm_features, minilm.encode(PROMPTS), atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(np.linalg.norm(minilm_features, axis=1), 1.0, atol=ATOL)
    # A loaded encoder or its directory are the same encoder; the chat template does not apply.
    by_object = prompt_features(PROMPTS, encoder=minilm, batch_size=2, chat_template=False)
    by_path = prompt_features(PROMPTS, encoder=str(minilm.path), batch_size=2)
    np.testing.assert_array_equal(by_object, minilm_features)
    np.testing.assert_array_equal(by_path, minilm_features)


def test_minilm_features_on_a_data_mesh_equal_one_device(minilm_features):
    from jaxrank.sharding import make_mesh

    sharded = prompt_features(PROMPTS, encoder="all-minilm-l6-v2", batch_size=2, mesh=make_mesh(data=2))
    np.testing.assert_allclose(sharded, minilm_features, atol=ATOL, rtol=RTOL)


def test_minilm_truncates_at_the_end(minilm):
    with pytest.warns(TruncationWarning, match="1 of 2 prompts are longer than 8 tokens and were truncated at the end"):
        x = prompt_features([PROMPTS[0], "Hi"], encoder=minilm, max_length=8)
    ids = minilm.token_ids(PROMPTS[0], max_length=8)
    assert len(ids) == 8 and ids[0] == minilm.tokenizer.cls_token_id and ids[-1] == minilm.tokenizer.sep_token_id
    np.testing.assert_allclose(x, minilm.encode([PROMPTS[0], "Hi"], max_length=8), atol=ATOL, rtol=RTOL)


def test_minilm_cache_by_name_does_not_load_the_model(minilm_features, tmp_path, monkeypatch):
    x = prompt_features(PROMPTS, encoder="all-minilm-l6-v2", batch_size=2, cache_dir=tmp_path)
    np.testing.assert_array_equal(x, minilm_features)
    meta = json.loads(next(tmp_path.glob("features-*.json")).read_text())
    assert meta["encoder"]["kind"] == "bert" and meta["options"]["chat_template"] is None
    assert any(f[0] == "model.safetensors" for f in meta["encoder"]["files"])
    monkeypatch.setattr(features_module, "_load", lambda *a, **k: pytest.fail("loaded although cached"))
    np.testing.assert_array_equal(prompt_features(PROMPTS, encoder="All-MiniLM-L6-v2", cache_dir=tmp_path), x)


# --------------------------------------------------------------------------------------------
# Cache (a tiny random model: cheap to hash and to run)


@pytest.fixture(scope="module")
def tiny():
    from jaxrank.lm import CausalLM, LoadedModel, ModelConfig
    from jaxrank.lm.transformer import param_shapes

    tok = bpe_chat_tokenizer(300, PROMPTS * 3)
    cfg = ModelConfig(
        "llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=8, max_position_embeddings=128, pad_token_id=tok.pad_token_id,
    )
    rng = np.random.default_rng(0)  # NumPy draws: cheaper than compiling a random op per shape
    weights = {n: rng.normal(0.0, 0.5, shape).astype(np.float32) for n, shape in param_shapes(cfg).items()}
    return LoadedModel(
        model=CausalLM(cfg, weights=weights), tokenizer=tok, config=cfg, name="tiny", chat_template=TEMPLATE,
        vocab_size=len(tok), bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        eos_token_ids=(tok.eos_token_id,),
    )


def _entries(folder):
    return sorted(p.name for p in folder.glob("features-*.npy"))


def test_cache_round_trip_keys_and_no_overwrite(tiny, tmp_path, monkeypatch):
    first = prompt_features(PROMPTS, encoder=tiny, cache_dir=tmp_path)
    assert len(_entries(tmp_path)) == 1
    meta = json.loads(next(tmp_path.glob("features-*.json")).read_text())
    assert meta["num_prompts"] == len(PROMPTS) and meta["options"]["max_length"] == 256

    # A second call loads the entry: the model is not run.
    def boom(*args, **kwargs):
        raise AssertionError("the model ran although the features were cached")

    with monkeypatch.context() as m:
        m.setattr(features_module, "_run_batches", boom)
        again = prompt_features(PROMPTS, encoder=tiny, cache_dir=tmp_path)
    np.testing.assert_array_equal(again, first)

    # Other prompts, other options or other weights are other entries; the first is untouched.
    (name,) = _entries(tmp_path)
    before = (tmp_path / name).read_bytes()
    prompt_features(PROMPTS[:2], encoder=tiny, cache_dir=tmp_path)
    prompt_features(PROMPTS, encoder=tiny, cache_dir=tmp_path, chat_template=False)
    tiny.model.embed[...] = tiny.model.embed[...] * 2.0
    try:
        changed = prompt_features(PROMPTS, encoder=tiny, cache_dir=tmp_path)
    finally:
        tiny.model.embed[...] = tiny.model.embed[...] / 2.0
    assert not np.allclose(changed, first)
    assert len(_entries(tmp_path)) == 4
    assert (tmp_path / name).read_bytes() == before

    # An entry under the same name whose metadata differs is neither used nor overwritten.
    npy = next(p for p in tmp_path.glob("features-*.npy") if np.array_equal(np.load(p), first))
    meta_file = npy.with_suffix(".json")
    stored = json.loads(meta_file.read_text())
    stored["num_prompts"] = -1
    meta_file.write_text(json.dumps(stored))
    np.save(npy, np.zeros_like(first))
    recomputed = prompt_features(PROMPTS, encoder=tiny, cache_dir=tmp_path)
    np.testing.assert_allclose(recomputed, first, atol=ATOL, rtol=RTOL)
    assert json.loads(meta_file.read_text())["num_prompts"] == -1
    assert not np.load(npy).any()


def test_cache_by_name_does_not_load_the_model(smollm2, smollm2_features, tmp_path, monkeypatch):
    x = prompt_features(PROMPTS[:2], encoder="smollm2-135m-instruct", batch_size=2, cache_dir=tmp_path)
    np.testing.assert_allclose(x, smollm2_features[:2], atol=ATOL, rtol=RTOL)
    meta = json.loads(next(tmp_path.glob("features-*.json")).read_text())
    assert meta["encoder"]["kind"] == "causal" and meta["encoder"]["files"][0][0].endswith(".gguf")

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded although the features were cached")

    monkeypatch.setattr(features_module, "_load", no_load)
    y = prompt_features(PROMPTS[:2], encoder="SmolLM2-135M-Instruct", batch_size=2, cache_dir=tmp_path)
    np.testing.assert_array_equal(x, y)


# --------------------------------------------------------------------------------------------
# Bad input (all raised before any model runs)


@pytest.mark.parametrize(
    "prompts, kwargs, match",
    [
        ([], {}, "prompts is empty"),
        ("Why?", {}, "single string"),
        (["ok", 3], {}, r"prompts\[1\] must be a str, got int"),
        (["ok", None], {}, r"prompts\[1\] must be a str"),
        (["ok"], {"batch_size": 0}, "batch_size must be an int >= 1, got 0"),
        (["ok"], {"batch_size": 2.0}, "batch_size must be an int"),
        (["ok"], {"batch_size": True}, "batch_size must be an int"),
        (["ok"], {"max_length": 1}, "max_length must be an int >= 2"),
        (["ok"], {"max_length": "256"}, "max_length must be an int"),
        (["ok"], {"encoder": "no-such-model"}, "encoder 'no-such-model' is neither a known name"),
        (["ok"], {"encoder": 42}, "encoder must be a name, a path"),
        (["ok"], {"chat_template": "yes"}, "chat_template must be True or False"),
        (["ok"], {"progress": 1}, "progress must be a callable"),
    ],
)
def test_bad_arguments(prompts, kwargs, match):
    with pytest.raises(ValueError, match=match):
        prompt_features(prompts, **kwargs)


def test_bad_mesh_and_cache_dir(tiny, tmp_path):
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        prompt_features(["ok"], encoder=tiny, mesh="data=4")
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(ValueError, match="cache_dir .* is not a directory"):
        prompt_features(["ok"], encoder=tiny, cache_dir=not_a_dir)


def test_empty_raw_prompt_is_refused(tiny):
    with pytest.raises(ValueError, match=r"prompts\[1\] gives no tokens"):
        prompt_features(["ok", ""], encoder=tiny, chat_template=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = prompt_features(["ok", ""], encoder=tiny)  # the template makes a non-empty turn
    assert x.shape == (2, 32) and np.isfinite(x).all()
