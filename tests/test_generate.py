"""Generation with a KV cache: greedy equals transformers' greedy on a tiny random model, EOS
handling, sampling controls, and argument checks."""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from jaxrank.lm import load_model
from jaxrank.lm.generate import _select, generate

torch = pytest.importorskip("torch", reason="torch (the optional 'torch' extra) is needed for parity tests")
transformers = pytest.importorskip("transformers", reason="transformers is needed for parity tests")

VOCAB = 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    torch.manual_seed(3)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=1,
                                   bos_token_id=None, tie_word_embeddings=True)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    hf.config._attn_implementation = "eager"
    d = tmp_path_factory.mktemp("gen-llama")
    hf.save_pretrained(d)
    vocab = {"<pad>": 0, "</s>": 1, **{f"w{i}": i for i in range(2, VOCAB)}}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<pad>")),
                            pad_token="<pad>", eos_token="</s>").save_pretrained(d)
    return hf, load_model(d)


def prompts():
    rng = np.random.default_rng(0)
    ids = rng.integers(2, VOCAB, size=(3, 6))
    mask = np.ones_like(ids)
    mask[1, :2] = 0  # left padding (transformers' generate needs it)
    mask[2, :4] = 0
    ids = np.where(mask == 1, ids, 0)
    return ids, mask


def hf_greedy(hf, ids, mask, n, eos):
    with torch.no_grad():
        out = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                          max_new_tokens=n, min_new_tokens=0 if eos is not None else n, eos_token_id=eos,
                          pad_token_id=0)
    out = out[:, ids.shape[1]:].numpy()
    return np.pad(out, ((0, 0), (0, n - out.shape[1])), constant_values=0)


def test_greedy_equals_transformers(tiny):
    hf, lm = tiny
    ids, mask = prompts()
    tokens, lengths = generate(lm, ids, mask, max_new_tokens=7, eos_token_id=[])
    assert tokens.shape == (3, 7) and tokens.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(lengths), [7, 7, 7])
    np.testing.assert_array_equal(np.asarray(tokens), hf_greedy(hf, ids, mask, 7, None))


def test_eos_stops_a_row_and_pads_it(tiny):
    hf, lm = tiny
    ids, mask = prompts()
    free, _ = generate(lm, ids, mask, max_new_tokens=7, eos_token_id=[])
    eos = int(free[0, 2])  # make row 0's third token the end of sequence
    tokens, lengths = generate(lm, ids, mask, max_new_tokens=7, eos_token_id=eos, pad_token_id=0)
    tokens, free = np.asarray(tokens), np.asarray(free)
    first = [int(np.argmax(free[r] == eos)) + 1 if (free[r] == eos).any() else 7 for r in range(3)]
    np.testing.assert_array_equal(np.asarray(lengths), first)
    assert first[0] <= 3
    for r in range(3):
        np.testing.assert_array_equal(tokens[r, : first[r]], free[r, : first[r]])
        assert (tokens[r, first[r]:] == 0).all()
    np.testing.assert_array_equal(tokens, hf_greedy(hf, ids, mask, 7, eos))


# Every generate call below uses max_new_tokens=7 and the 3x6 prompts: the greedy program compiles once.
def test_top_k_one_and_tiny_top_p_are_greedy(tiny):
    _, lm = tiny
    ids, mask = prompts()
    greedy, _ = generate(lm, ids, mask, max_new_tokens=7, eos_token_id=[])
    k1, _ = generate(lm, ids, mask, max_new_tokens=7, eos_token_id=[], key=jax.random.key(1), temperature=0.7, top_k=1)
    p0, _ = generate(lm, ids, mask, max_new_tokens=7, eos_token_id=[], key=jax.random.key(2), temperature=1.3,
                     top_p=1e-6)
    np.testing.assert_array_equal(np.asarray(k1), np.asarray(greedy))
    np.testing.assert_array_equal(np.asarray(p0), np.asarray(greedy))
    a, _ = generate(lm, ids, mask, max_new_tokens=7, eos_token_id=[], key=jax.random.key(5), temperature=1.0)
    b, _ = generate(lm, ids, mask, max_new_tokens=7, eos_token_id=[], key=jax.random.key(5), temperature=1.0)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # reproducible for a key


def test_sampling_distribution_matches_softmax():
    logits = jnp.array([[2.0, 1.0, 0.0, -1.0, -jnp.inf]])
    keys = jax.random.split(jax.random.key(0), 4000)
    draw = jax.jit(jax.vmap(lambda k, t, p: _select(logits, k, t, None, p)[0], in_axes=(0, None, None)))
    counts = np.bincount(np.asarray(draw(keys, 1.0, 1.0)), minlength=5) / 4000
    p = np.exp(np.array([2.0, 1.0, 0.0, -1.0])) / np.exp(np.array([2.0, 1.0, 0.0, -1.0])).sum()
    np.testing.assert_allclose(counts[:4], p, atol=0.03)
    assert counts[4] == 0
    # top_p = 0.8 keeps {0, 1} (mass before token 2 is 0.84 >= 0.8), renormalized.
    nucleus = np.bincount(np.asarray(draw(keys, 1.0, 0.8)), minlength=5) / 4000
    np.testing.assert_allclose(nucleus[:2], p[:2] / p[:2].sum(), atol=0.03)
    assert nucleus[2:].sum() == 0
    # top_k = 3 drops the two smallest.
    topk = jax.jit(jax.vmap(lambda k: _select(logits, k, 1.0, 3, None)[0]))
    counts_k = np.bincount(np.asarray(topk(keys)), minlength=5) / 4000
    np.testing.assert_allclose(counts_k[:3], p[:3] / p[:3].sum(), atol=0.03)
    assert counts_k[3:].sum() == 0


def test_generate_argument_errors(tiny):
    _, lm = tiny
    ids, mask = prompts()
    with pytest.raises(ValueError, match="key is required"):
        generate(lm, ids, mask, max_new_tokens=7, temperature=0.5)
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 1"):
        generate(lm, ids, mask, max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p must be in"):
        generate(lm, ids, mask, max_new_tokens=2, key=jax.random.key(0), temperature=1.0, top_p=1.5)
    with pytest.raises(ValueError, match="top_k must be an integer"):
        generate(lm, ids, mask, max_new_tokens=2, key=jax.random.key(0), temperature=1.0, top_k=0)
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        generate(lm, ids, mask[:, :3], max_new_tokens=2)
    with pytest.raises(TypeError, match="LoadedModel or a jaxrank CausalLM"):
        generate("model", ids, mask, max_new_tokens=2)
    with pytest.raises(TypeError, match="integer token ids"):
        generate(lm, ids.astype(np.float32), mask, max_new_tokens=2)


def test_right_padded_prompts_generate_like_left_padded(tiny):
    _, lm = tiny
    ids, mask = prompts()
    lengths = mask.sum(1)
    right_ids = np.zeros_like(ids)
    right_mask = np.zeros_like(mask)
    for r, n in enumerate(lengths):
        right_ids[r, :n] = ids[r, ids.shape[1] - n:]
        right_mask[r, :n] = 1
    left, _ = generate(lm, ids, mask, max_new_tokens=7, eos_token_id=[])
    right, _ = generate(lm, right_ids, right_mask, max_new_tokens=7, eos_token_id=[])
    np.testing.assert_array_equal(np.asarray(right), np.asarray(left))


def test_per_row_keys_make_a_rows_sample_independent_of_its_batch(tiny):
    """One key per row: row r's sampled tokens depend on keys[r] only, not on the rows batched with it
    (what makes a resumed `prioritize` reproduce an uninterrupted one)."""
    _, lm = tiny
    ids, mask = prompts()
    keys = jax.random.split(jax.random.key(7), ids.shape[0])
    together, n_together = generate(lm, ids, mask, max_new_tokens=6, key=keys, temperature=1.0)
    # The same rows in another order, and row 0 beside copies of another row: the same samples per key.
    order = np.arange(ids.shape[0])[::-1]
    rev, _ = generate(lm, ids[order], mask[order], max_new_tokens=6, key=keys[order], temperature=1.0)
    np.testing.assert_array_equal(np.asarray(rev)[::-1], np.asarray(together))
    other = np.array([0] + [1] * (ids.shape[0] - 1))
    mixed, _ = generate(lm, ids[other], mask[other], max_new_tokens=6, key=keys[other], temperature=1.0)
    np.testing.assert_array_equal(np.asarray(mixed)[0], np.asarray(together)[0])
    assert len({tuple(r) for r in np.asarray(together).tolist()}) > 1  # the rows do sample different tokens
    with pytest.raises(ValueError, match="one key per row needs"):
        generate(lm, ids, mask, max_new_tokens=2, key=keys[:1], temperature=1.0)
