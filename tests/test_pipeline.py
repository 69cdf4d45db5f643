"""The prompt-prioritization pipeline on tiny random models with real (trained-here) tokenizers."""

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrank.lm import CausalLM, LoadedModel, ModelConfig
from jaxrank.lm.pipeline import (
    TruncationWarning,
    bucket_length,
    length_batches,
    pad_batch,
    prioritize_prompts,
)
from jaxrank.lm.prompts import Prompt, builtin_prompts, read_prompts
from jaxrank.scoring import score_pairs, sequence_kl_estimate

from lm_tokenizer import TEMPLATE, bpe_chat_tokenizer

CORPUS = [p.text for p in builtin_prompts()] + ["The quick brown fox jumps over the lazy dog."] * 3
PROMPTS = [
    "Why is the sky blue?",
    "Hi!",
    "Write a haiku about autumn rain, please, with a long long long long long long introduction.",
    "What is 17 times 23?",
    "List five fruits.",
]
COMPLETIONS = ["Because of Rayleigh scattering.", "Hello there", "Rain on red leaves", "391", "apple, fig"]
SHORT = [PROMPTS[0], PROMPTS[1], PROMPTS[3]]  # rendered lengths 20-31: one bucket, one compilation


def _tokenizer(vocab_size):
    return bpe_chat_tokenizer(vocab_size, CORPUS)


def _loaded(tokenizer, seed, name, *, vocab=None, softcap=None, context=2048):
    vocab = vocab or len(tokenizer)
    cfg = ModelConfig(
        "llama", vocab_size=vocab, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=8, final_logit_softcap=softcap, max_position_embeddings=context,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    from flax import nnx

    model = CausalLM(cfg, rngs=nnx.Rngs(seed))
    # Larger random weights than the 0.02 default, so that the two models' distributions differ visibly.
    model.embed[...] = model.embed[...] * 8.0
    return LoadedModel(
        model=model, tokenizer=tokenizer, config=cfg, name=name, chat_template=TEMPLATE, vocab_size=vocab,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        eos_token_ids=(tokenizer.eos_token_id,),
    )


@pytest.fixture(scope="module")
def tok_a():
    return _tokenizer(300)


@pytest.fixture(scope="module")
def tok_b():
    return _tokenizer(340)


@pytest.fixture(scope="module")
def pair(tok_a):
    return _loaded(tok_a, 0, "a"), _loaded(tok_a, 1, "b", softcap=5.0)


@pytest.fixture(scope="module")
def other(tok_b):
    return _loaded(tok_b, 2, "c")


# ---------------------------------------------------------------- references, one sequence at a time


REF_LEN = 128
_REF_FNS = {}


def _logp_rows(loaded, ids):
    """Log-softmax rows of one unpadded, unmasked sequence. Compiled once per model at REF_LEN
    tokens: trailing filler cannot reach earlier positions of a causal model (no mask involved)."""
    assert len(ids) <= REF_LEN
    if id(loaded) not in _REF_FNS:
        _REF_FNS[id(loaded)] = jax.jit(lambda x: jax.nn.log_softmax(loaded.model(x)[0], axis=-1))
    x = np.zeros((1, REF_LEN), np.int32)
    x[0, : len(ids)] = ids
    return np.asarray(_REF_FNS[id(loaded)](x)[0, : len(ids)], np.float64)


def _render(loaded, text):
    rendered = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    return loaded.tokenizer.encode(rendered, add_special_tokens=False)


def _token_reference(a, b, prompt, completion_ids):
    """float64 KL / CE averaged over the completion, unpadded, from each model's own logits."""
    pa, pb = _render(a, prompt), _render(b, prompt)
    la = _logp_rows(a, pa + completion_ids)[len(pa) - 1 : len(pa) - 1 + len(completion_ids)]
    lb = _logp_rows(b, pb + completion_ids)[len(pb) - 1 : len(pb) - 1 + len(completion_ids)]
    p = np.exp(la)
    return {"kl": float(np.mean((p * (la - lb)).sum(-1))), "cross_entropy": float(np.mean(-(p * lb).sum(-1)))}


def _seq_logp(loaded, prompt, text):
    pids = _render(loaded, prompt)
    cids = loaded.tokenizer.encode(text, add_special_tokens=False)
    lp = _logp_rows(loaded, pids + cids)
    return float(sum(lp[len(pids) - 1 + t, c] for t, c in enumerate(cids)))


# ---------------------------------------------------------------- pure helpers


def test_sequence_kl_estimate_matches_numpy():
    rng = np.random.default_rng(0)
    la, lb = rng.normal(size=(3, 5)) * 10, rng.normal(size=(3, 5)) * 10
    nb = rng.integers(1, 50, size=(3, 5))
    nb[1, 2] = 0  # an empty completion is left out
    mean, se = sequence_kl_estimate(la, lb, nb)
    for i in range(3):
        keep = nb[i] > 0
        d = (la[i] - lb[i])[keep] / nb[i][keep]
        np.testing.assert_allclose(float(mean[i]), d.mean(), rtol=1e-5)
        np.testing.assert_allclose(float(se[i]), d.std(ddof=1) / np.sqrt(keep.sum()), rtol=1e-4)
    m1, s1 = sequence_kl_estimate(np.array([[-3.0]]), np.array([[-5.0]]), np.array([[4]]))
    assert float(m1[0]) == pytest.approx(0.5) and np.isnan(float(s1[0]))
    m0, _ = sequence_kl_estimate(np.array([1.0]), np.array([2.0]), np.array([0]))
    assert np.isnan(float(m0))
    with pytest.raises(ValueError, match="num_bytes"):
        sequence_kl_estimate(la, lb, nb[:, :2])


def test_buckets_and_padding():
    assert [bucket_length(n) for n in (1, 16, 17, 33, 100)] == [16, 16, 32, 64, 128]
    assert bucket_length(100, maximum=90) == 100 and bucket_length(60, maximum=90) == 64
    assert bucket_length(70, maximum=90) == 90
    assert length_batches([5, 1, 3, 1], 2) == [[1, 3], [2, 0]]
    ids, mask = pad_batch([[1, 2, 3], [4]], 4, 3, 0, side="left")
    np.testing.assert_array_equal(ids, [[0, 1, 2, 3], [0, 0, 0, 4], [0, 1, 2, 3]])
    np.testing.assert_array_equal(mask.sum(1), [3, 1, 3])
    ids, mask = pad_batch([[1, 2, 3], [4]], 4, 2, 9)
    np.testing.assert_array_equal(ids, [[1, 2, 3, 9], [4, 9, 9, 9]])


# ---------------------------------------------------------------- token mode


@pytest.fixture(scope="module")
def token_rows(pair):
    """Token-mode rows for PROMPTS with given completions, per implementation (computed once)."""
    a, b = pair
    return {
        impl: prioritize_prompts(a, b, PROMPTS, mode="token", completions=COMPLETIONS, implementation=impl,
                                 batch_size=2 if impl == "fused" else 8)
        for impl in ("fused", "materialized")
    }


@pytest.mark.parametrize("implementation", ["fused", "materialized"])
def test_token_mode_equals_unpadded_reference(pair, token_rows, implementation):
    a, b = pair
    rows = token_rows[implementation]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    by_prompt = {r["prompt"]: r for r in rows}
    for text, comp in zip(PROMPTS, COMPLETIONS):
        r = by_prompt[text]
        want = _token_reference(a, b, text, a.tokenizer.encode(comp, add_special_tokens=False))
        assert r["completion"] == comp and r["mode"] == "token" and not r["truncated"]
        assert r["score"] == r["kl"]
        for m in ("kl", "cross_entropy"):
            np.testing.assert_allclose(r[m], want[m], rtol=2e-4, atol=1e-5, err_msg=f"{text}: {m}")


def test_token_mode_matches_score_pairs_on_materialised_logits(pair, token_rows):
    """score_pairs on each prompt's unpadded completion log-probabilities (padded here only to one
    shape, masked) equals the pipeline's fused, bucketed scores."""
    a, b = pair
    width = 32
    la = np.zeros((len(PROMPTS), width, a.vocab_size), np.float32)
    lb = np.zeros_like(la)
    mask = np.zeros((len(PROMPTS), width), bool)
    for i, (text, comp) in enumerate(zip(PROMPTS, COMPLETIONS)):
        c = a.tokenizer.encode(comp, add_special_tokens=False)
        pa, pb = _render(a, text), _render(b, text)
        la[i, : len(c)] = _logp_rows(a, pa + c)[len(pa) - 1 : len(pa) - 1 + len(c)]
        lb[i, : len(c)] = _logp_rows(b, pb + c)[len(pb) - 1 : len(pb) - 1 + len(c)]
        mask[i, : len(c)] = True
    want = score_pairs(la, lb, mask, log_probs=True)
    by_prompt = {r["prompt"]: r for r in token_rows["fused"]}
    for i, text in enumerate(PROMPTS):
        for m in ("kl", "cross_entropy"):
            np.testing.assert_allclose(by_prompt[text][m], float(want[m][i]), rtol=2e-5, atol=2e-6, err_msg=text)


def test_token_mode_greedy_generation(pair):
    from jaxrank.lm import generate

    a, b = pair
    progress = []
    rows = prioritize_prompts(a, b, SHORT, mode="auto", max_new_tokens=4, batch_size=4,
                              implementation="fused", progress=lambda *e: progress.append(e))
    assert {r["mode"] for r in rows} == {"token"}
    for r in rows:
        ids = _render(a, r["prompt"])
        # Alone, left-padded to 32 tokens (one compilation for the three prompts).
        x, mask = np.zeros((1, 32), np.int32), np.zeros((1, 32), bool)
        x[0, 32 - len(ids) :], mask[0, 32 - len(ids) :] = ids, True
        tokens, lengths = generate(a, x, mask, max_new_tokens=4)
        want = a.tokenizer.decode(np.asarray(tokens[0, : int(lengths[0])]), skip_special_tokens=True)
        assert r["completion"] == want
        assert 1 <= r["completion_tokens"] <= 4
    stages = {e[0] for e in progress}
    assert stages == {"generate", "score"} and all(e[3] > 0 for e in progress if e[1] > 0)
    assert sum(e[1] for e in progress if e[0] == "score") == 3


def test_token_mode_rejects_different_vocabularies(pair, other):
    with pytest.raises(ValueError, match="mode='sequence'"):
        prioritize_prompts(pair[0], other, PROMPTS[:1], mode="token", completions=COMPLETIONS[:1])


def test_truncation_is_warned_and_flagged(pair):
    a, b = pair
    with pytest.warns(TruncationWarning, match="1 of 2 prompts"):
        rows = prioritize_prompts(
            a, b, [PROMPTS[2], PROMPTS[1]], mode="token", completions=COMPLETIONS[:2], max_length=32,
            max_new_tokens=8, implementation="fused",
        )
    flags = {r["prompt"]: r["truncated"] for r in rows}
    assert flags == {PROMPTS[2]: True, PROMPTS[1]: False}
    assert all(np.isfinite(r["score"]) for r in rows)
    assert max(r["prompt_tokens"] for r in rows) <= 24


# ---------------------------------------------------------------- sequence mode


def test_sequence_mode_copies_of_one_model_score_exactly_zero(pair):
    a, _ = pair
    rows = prioritize_prompts(a, a, SHORT, mode="sequence", num_samples=3, max_new_tokens=4,
                              batch_size=9, key=jax.random.key(1))
    for r in rows:
        assert r["kl"] == 0.0 and r["stderr"] == 0.0 and r["num_samples"] == 3
        assert r["cross_entropy"] == r["entropy"] > 0


@pytest.fixture(scope="module")
def seq_rows(pair, other):
    """Sequence-mode rows (A vs C, given completions) on one device, computed once."""
    return prioritize_prompts(pair[0], other, PROMPTS[:3], mode="auto", completions=COMPLETIONS[:3], batch_size=2)


def test_sequence_mode_equals_manual_estimate(pair, other, seq_rows):
    a, c = pair[0], other
    texts = COMPLETIONS[:3]
    rows = seq_rows
    by_prompt = {r["prompt"]: r for r in rows}
    for text, comp in zip(PROMPTS[:3], texts):
        r = by_prompt[text]
        nbytes = len(comp.encode("utf-8"))
        lpa, lpc = _seq_logp(a, text, comp), _seq_logp(c, text, comp)
        assert r["mode"] == "sequence" and r["num_samples"] == 1 and np.isnan(r["stderr"])
        np.testing.assert_allclose(r["kl"], (lpa - lpc) / nbytes, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(r["cross_entropy"], -lpc / nbytes, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(r["entropy"], -lpa / nbytes, rtol=1e-4, atol=1e-5)


def test_sequence_mode_sampled_and_symmetric(pair, other):
    a, c = pair[0], other
    rows = prioritize_prompts(a, c, SHORT[:2], num_samples=2, symmetric=True, max_new_tokens=4, batch_size=4,
                              key=jax.random.key(3))
    for r in rows:
        assert r["mode"] == "sequence"
        assert r["kl"] == pytest.approx(0.5 * (r["kl_ab"] + r["kl_ba"]))
        assert 1 <= r["num_samples"] <= 2 and r["completion"] is not None
        json.dumps(r)  # JSON-ready


def test_bad_arguments(pair):
    a, b = pair
    with pytest.raises(ValueError, match="mode must be one of"):
        prioritize_prompts(a, b, PROMPTS, mode="nope")
    with pytest.raises(ValueError, match="prompts is empty"):
        prioritize_prompts(a, b, [])
    with pytest.raises(ValueError, match="completions must hold one text per prompt"):
        prioritize_prompts(a, b, PROMPTS, completions=["x"])
    with pytest.raises(ValueError, match="metrics entry"):
        prioritize_prompts(a, b, PROMPTS, metrics=("kl", "bogus"), completions=COMPLETIONS)
    with pytest.raises(ValueError, match="symmetric"):
        prioritize_prompts(a, b, PROMPTS, completions=COMPLETIONS, symmetric=True)
    with pytest.raises(ValueError, match="max_new_tokens"):
        prioritize_prompts(a, b, PROMPTS, max_new_tokens=0)
    with pytest.raises(ValueError, match="no room"):
        prioritize_prompts(a, b, PROMPTS, max_new_tokens=64, max_length=32)


# ---------------------------------------------------------------- prompt files


def test_read_prompts_formats(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": "one", "id": "x1"}\n\n{"turns": ["two", "again"]}\n')
    (tmp_path / "p.csv").write_text('id,prompt\n7,"hello, world"\n8,bye\n')
    (tmp_path / "p.txt").write_text("first line\n\nsecond line\n")
    (tmp_path / "p.json").write_text(json.dumps([{"prompt": "j1", "question_id": 3}, "j2"]))
    assert read_prompts(tmp_path / "p.jsonl") == [Prompt("x1", "one"), Prompt("2", "two")]
    assert read_prompts(tmp_path / "p.csv") == [Prompt("7", "hello, world"), Prompt("8", "bye")]
    assert read_prompts(tmp_path / "p.txt") == [Prompt("1", "first line"), Prompt("2", "second line")]
    assert read_prompts(tmp_path / "p.json") == [Prompt("3", "j1"), Prompt("2", "j2")]
    # Arena-Hard's question files name the id `uid`.
    (tmp_path / "ah.jsonl").write_text('{"uid": "328c149ed45a41c0", "category": "arena-hard-v0.1", "prompt": "q"}\n')
    assert read_prompts(tmp_path / "ah.jsonl") == [Prompt("328c149ed45a41c0", "q")]


def test_read_prompts_mt_bench(shared_data):
    prompts = read_prompts(shared_data / "prompts" / "mt_bench_question.jsonl")
    assert len(prompts) == 80 and prompts[0].id == "81"
    assert prompts[0].text.startswith("Compose an engaging travel blog post about a recent trip to Hawaii")


@pytest.mark.parametrize(
    "name,content,match",
    [
        ("e.jsonl", "  \n", "is empty"),
        ("n.jsonl", '{"question": "q", "answer": "a"}\n', r"no 'prompt' or 'turns' field \(fields found: 'question', 'answer'\)"),
        ("n.csv", "question,answer\nq,a\n", r"columns found: 'question', 'answer'"),
        ("b.jsonl", '{"prompt": "ok"}\n{"prompt": \n', "line 2 is not valid JSON"),
        ("blank.csv", 'prompt\n""\n', "row 2: the prompt is empty"),
        ("t.jsonl", '{"turns": []}\n', "non-empty list"),
    ],
)
def test_read_prompts_errors(tmp_path, name, content, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=match):
        read_prompts(tmp_path / name)


def test_read_prompts_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_prompts(tmp_path / "nope.jsonl")


def test_builtin_prompts():
    prompts = builtin_prompts()
    assert len(prompts) == 24 and len({p.id for p in prompts}) == 24
    assert all(p.text.strip() for p in prompts)


# ---------------------------------------------------------------- sharded scoring (8 fake CPU devices)


@pytest.mark.parametrize("implementation", ["fused", "materialized"])
def test_token_mode_on_a_data_mesh_equals_one_device(pair, token_rows, implementation):
    """The batch split over a 4-way "data" axis (5 prompts, batch 2 -> rounded to 4, padding rows
    included), parameters replicated: the same scores as on one device."""
    from jaxrank.sharding import make_mesh

    a, b = pair
    mesh = make_mesh(data=4)
    rows = prioritize_prompts(a, b, PROMPTS, mode="token", completions=COMPLETIONS, implementation=implementation,
                              batch_size=2 if implementation == "fused" else 8, mesh=mesh)
    want = {r["prompt"]: r for r in token_rows[implementation]}
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in token_rows[implementation]]
    for r in rows:
        for m in ("kl", "cross_entropy"):
            np.testing.assert_allclose(r[m], want[r["prompt"]][m], rtol=1e-5, atol=1e-7, err_msg=r["prompt"])


def test_sequence_mode_on_a_data_mesh_equals_one_device(pair, other, seq_rows):
    from jaxrank.sharding import make_mesh

    a, c = pair[0], other
    one = seq_rows
    sharded = prioritize_prompts(a, c, PROMPTS[:3], mode="auto", completions=COMPLETIONS[:3], batch_size=2,
                                 mesh=make_mesh(data=8))
    assert [r["prompt"] for r in sharded] == [r["prompt"] for r in one]
    for r, w in zip(sharded, one):
        for m in ("kl", "cross_entropy", "entropy"):
            np.testing.assert_allclose(r[m], w[m], rtol=1e-5, atol=1e-7, err_msg=r["prompt"])


def test_mesh_must_be_a_mesh(pair):
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        prioritize_prompts(pair[0], pair[1], PROMPTS[:1], completions=COMPLETIONS[:1], mesh="data=4")
