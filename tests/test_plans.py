"""Memory plans (`jaxrank.resources`, `jaxrank.lm.memory`): refusals name the option and what fits; chunked work
gives the same numbers as one call; Ctrl-C stops a long simulation within seconds."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from jaxrank import allocation as A
from jaxrank import load_votes
from jaxrank import evaluation as E
from jaxrank import resources as R
from jaxrank.lm.config import ModelConfig
from jaxrank.lm.memory import check_forward, forward_bytes
from jaxrank.p2l import aggregate_leaderboard
from jaxrank.ratings import synthetic_votes
from jaxrank.ratings.uncertainty import bootstrap_plan, bootstrap_ratings
from jaxrank.resources import ResourceError


@pytest.fixture(scope="module")
def battles():
    return synthetic_votes(jax.random.key(0), 5, 300)[0]


def test_memory_limit_and_budget(monkeypatch):
    monkeypatch.setenv("JAXRANK_MEMORY_LIMIT", "2G")
    assert R.available_memory() == 2 << 30 and R.memory_budget() == int(0.8 * (2 << 30))
    monkeypatch.setenv("JAXRANK_MEMORY_LIMIT", "1.5e9")
    assert R.available_memory() == 1_500_000_000
    monkeypatch.setenv("JAXRANK_MEMORY_LIMIT", "lots")
    with pytest.raises(ValueError, match="JAXRANK_MEMORY_LIMIT must be a size"):
        R.available_memory()
    monkeypatch.delenv("JAXRANK_MEMORY_LIMIT")
    assert 0 < R.available_memory() < 1 << 50


def test_check_memory_names_the_option_and_what_fits(monkeypatch):
    monkeypatch.setenv("JAXRANK_MEMORY_LIMIT", "100M")
    budget = R.memory_budget()
    assert R.check_memory(budget, what="x", option="num_rounds", value=1) == budget
    with pytest.raises(ResourceError) as info:
        R.check_memory(10**9 + 5000, what="the samples", option="num_rounds", value=10**6, per_unit=1000, fixed=5000)
    err = info.value
    assert err.option == "num_rounds" and err.largest == (budget - 5000) // 1000 and err.needed == 10**9 + 5000
    assert "num_rounds=1000000 needs about 1.0 GB of memory for the samples" in str(err)
    assert f"use num_rounds={err.largest} or less" in str(err)
    assert err.render("--bootstrap").startswith("--bootstrap 1000000 needs about")
    with pytest.raises(ResourceError, match="use num_random=") as info:
        R.check_memory_terms({"num_random": (10**6, 1000.0), "num_bootstrap": (10, 1000.0)}, what="lanes")
    assert info.value.option == "num_random"


def test_chunk_size_bounds():
    assert R.chunk_size(10, 1.0) == 10
    assert R.chunk_size(10**9, 1 << 20, max_bytes=1 << 28) == 256
    assert R.chunk_size(1000, 1.0, max_items=300) == 250  # four even chunks rather than 300, 300, 300, 100
    assert R.chunk_size(5, 1 << 40) == 1
    assert R.chunk_size(100, 1.0, max_items=3, multiple=8) == 8


# ------------------------------------------------------------------------------------------------ bootstrap


def test_bootstrap_plan_refuses_a_result_that_cannot_fit(battles, monkeypatch):
    monkeypatch.setenv("JAXRANK_MEMORY_LIMIT", "300M")
    with pytest.raises(ResourceError) as info:
        bootstrap_plan(battles, num_rounds=10**9)
    err = info.value
    assert err.option == "num_rounds" and "the bootstrap samples [R, M] (M = 5 models)" in str(err)
    plan = bootstrap_plan(battles, num_rounds=err.largest)  # the suggestion fits
    assert plan.result_bytes + plan.chunk_bytes <= R.memory_budget()
    with pytest.raises(ResourceError):  # and it is not far below what fits
        bootstrap_plan(battles, num_rounds=2 * err.largest)
    # The library call refuses before fitting anything.
    with pytest.raises(ResourceError):
        bootstrap_ratings(jax.random.key(0), battles, num_rounds=10**9)


def test_bootstrap_chunks_are_bounded_whatever_the_rounds(battles):
    small, huge = bootstrap_plan(battles, num_rounds=50), bootstrap_plan(battles, num_rounds=10**6)
    assert small.chunk_size == 50 and huge.chunk_bytes <= R.chunk_bytes() and huge.chunk_size < 10**6
    # A chunk size asked for above the memory bound is lowered to it.
    asked = bootstrap_plan(battles, num_rounds=10**6, chunk_size=10**6)
    assert asked.chunk_size < 10**6 and asked.chunk_bytes <= R.chunk_bytes()


def test_bootstrap_plan_of_a_prompt_bootstrap(prompt_votes, monkeypatch):
    plan = bootstrap_plan(prompt_votes, num_rounds=100, unit="prompts")
    assert plan.sampler == "prompts" and plan.chunk_size == 100
    with pytest.raises(ValueError, match="unit must be"):
        bootstrap_plan(prompt_votes, num_rounds=100, unit="judges")
    monkeypatch.setenv("JAXRANK_MEMORY_LIMIT", "64M")
    with pytest.raises(ResourceError) as info:  # refused before the full-data fit or any resampling
        bootstrap_ratings(jax.random.key(0), prompt_votes, num_rounds=10**9, unit="prompts")
    assert info.value.option == "num_rounds" and "(M = 4 models)" in str(info.value)


# ------------------------------------------------------------------------------------------------ simulation


@pytest.fixture(scope="module")
def sampler():
    return A.GaussianSampler(jnp.linspace(0.0, 1.0, 12), jnp.linspace(0.05, 1.0, 12))


def test_simulation_chunks_give_the_same_numbers(sampler, monkeypatch):
    whole = A.simulate_sweep(jax.random.key(3), sampler, [120, 240], num_runs=10, allocators=("uniform", "robin"))
    calls = []
    monkeypatch.setattr(A, "CHUNK_WORK", 240 * 2 * 3)  # 3 runs per call: chunks 3, 3, 3, 1 (padded)
    chunked = A.simulate_sweep(jax.random.key(3), sampler, [120, 240], num_runs=10, allocators=("uniform", "robin"),
                               progress=lambda done, total: calls.append((done, total)))
    for a in ("uniform", "robin"):
        for x, y in zip(whole[a], chunked[a]):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert calls == [(0, 10), (3, 10), (6, 10), (9, 10), (10, 10)]


def test_simulation_refuses_runs_whose_results_cannot_fit(sampler, monkeypatch):
    monkeypatch.setenv("JAXRANK_MEMORY_LIMIT", "64M")
    with pytest.raises(ResourceError) as info:
        A.simulate(jax.random.key(0), sampler, "robin", 240, num_runs=10**8)
    assert info.value.option == "num_runs" and 0 < info.value.largest < 10**8


# ------------------------------------------------------------------------------------------------ evaluation


@pytest.fixture(scope="module")
def prompt_votes():
    rng = np.random.default_rng(5)
    rows = []
    for p in range(30):
        for _ in range(4):
            i, j = rng.choice(4, 2, replace=False)
            w = ["model_a", "model_b", "tie"][rng.integers(3)]
            rows.append((f"p{p:02d}", f"m{i}", f"m{j}", w))
    return load_votes(pd.DataFrame(rows, columns=["prompt_id", "model_a", "model_b", "winner"]))


def test_tie_reduction_chunks_give_the_same_numbers(prompt_votes, monkeypatch):
    scores = {p: float(i) for i, p in enumerate(prompt_votes.prompt_ids)}
    whole = E.tie_reduction(jax.random.key(1), scores, prompt_votes, fractions=[0.2, 0.5, 1.0], num_random=50)
    monkeypatch.setattr(E, "_tie_chunk_size", lambda *a: 7)  # 7, 7, ..., 1
    calls = []
    chunked = E.tie_reduction(jax.random.key(1), scores, prompt_votes, fractions=[0.2, 0.5, 1.0], num_random=50,
                              progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 8) for i in range(9)]  # the start, then each of the 8 chunks
    # The same replicates (counter-based draws); the float32 kernel's sums may round differently per shape.
    np.testing.assert_allclose(chunked.tie_rate_random, whole.tie_rate_random, rtol=1e-6)
    np.testing.assert_allclose(chunked.lower, whole.lower, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(chunked.upper, whole.upper, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["bt", "elo"])
def test_stability_progress_counts_the_chunks(prompt_votes, method):
    scores = {p: float(i) for i, p in enumerate(prompt_votes.prompt_ids)}
    calls = []
    E.leaderboard_stability(jax.random.key(0), scores, prompt_votes, fractions=[0.5, 1.0], method=method,
                            num_random=3, num_bootstrap=2, num_permutations=2, chunk_size=2,
                            progress=lambda done, total: calls.append((done, total)))
    total = calls[0][1]
    assert total >= 2 and calls == [(i, total) for i in range(total + 1)], calls


def test_random_evaluations_need_their_key_first(prompt_votes):
    scores = {p: float(i) for i, p in enumerate(prompt_votes.prompt_ids)}
    with pytest.raises(TypeError, match="key must be a jax.random.key"):
        E.tie_reduction(None, scores, prompt_votes)
    with pytest.raises(TypeError, match="key must be a jax.random.key"):
        E.leaderboard_stability(scores, prompt_votes, prompt_votes)


def test_evaluation_plans_refuse_before_work(prompt_votes, monkeypatch):
    scores = {p: float(i) for i, p in enumerate(prompt_votes.prompt_ids)}
    monkeypatch.setenv("JAXRANK_MEMORY_LIMIT", "64M")
    with pytest.raises(ResourceError) as info:
        E.tie_reduction(jax.random.key(0), scores, prompt_votes, num_random=10**9)
    assert info.value.option == "num_random"
    with pytest.raises(ResourceError) as info:
        E.leaderboard_stability(jax.random.key(0), scores, prompt_votes, num_random=10**8, num_bootstrap=10)
    assert info.value.option == "num_random"
    with pytest.raises(ResourceError) as info:
        E.leaderboard_stability(jax.random.key(0), scores, prompt_votes, num_random=10, num_bootstrap=10**8)
    assert info.value.option == "num_bootstrap"


def test_p2l_aggregate_bootstrap_chunks(monkeypatch):
    import jaxrank.p2l as P

    # The shapes of tests/test_p2l.py's aggregate (7 prompts, 5 models, 64 rounds): one compilation shared.
    beta = jax.random.normal(jax.random.key(0), (7, 5))
    whole = aggregate_leaderboard(beta, loss="bt", bootstrap=64, key=jax.random.key(2))
    monkeypatch.setattr(P, "_aggregate_bootstrap_chunk", lambda *a: 24)  # 24, 24, 16 (padded)
    chunked = aggregate_leaderboard(beta, loss="bt", bootstrap=64, key=jax.random.key(2))
    # The same rounds (the same keys), each a Newton solve to its gradient tolerance: equal to within 0.05 Elo
    # (a vmapped solve of another width rounds differently in float32 and may take one more step).
    np.testing.assert_allclose(np.asarray(chunked.samples), np.asarray(whole.samples), atol=0.05)
    monkeypatch.undo()
    monkeypatch.setenv("JAXRANK_MEMORY_LIMIT", "64M")
    with pytest.raises(ResourceError, match="bootstrap=1000000000 needs about"):
        aggregate_leaderboard(beta, loss="bt", bootstrap=10**9)


# ------------------------------------------------------------------------------------------------ language models

SMOL = ModelConfig("llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
                   num_kv_heads=3, head_dim=64, max_position_embeddings=8192)


def test_forward_estimate_scales_as_attention_does():
    one = forward_bytes(SMOL, 1, 2048)
    assert forward_bytes(SMOL, 8, 2048) == 8 * one
    assert 3.5 < forward_bytes(SMOL, 1, 4096) / one < 4.1  # quadratic in the length once it dominates
    # The attention scores of one row of 8192 tokens alone are 9 x 8192^2 float32 = 2.4 GB, three copies.
    assert forward_bytes(SMOL, 1, 8192) > 3 * 9 * 8192**2 * 4
    gen = forward_bytes(SMOL, 1, 2048, keys=2048 + 32, logit_positions=1)
    assert gen > one  # the KV cache and the logits come on top


def test_check_forward_names_batch_size_then_max_length(monkeypatch):
    monkeypatch.setenv("JAXRANK_MEMORY_LIMIT", "4G")
    budget = R.memory_budget()
    with pytest.raises(ResourceError) as info:  # the case: one long prompt, the default batch of 8
        check_forward(SMOL, 8, 8192, keys=8192 + 32, logit_positions=1, what="generating")
    err = info.value
    assert err.option == "batch_size" or err.option == "max_length"
    if err.option == "batch_size":
        assert check_forward(SMOL, err.largest, 8192, keys=8192 + 32, logit_positions=1, what="g") <= budget
    monkeypatch.setenv("JAXRANK_MEMORY_LIMIT", "1G")
    with pytest.raises(ResourceError) as info:
        check_forward(SMOL, 8, 8192, what="prompt features")
    err = info.value
    assert err.option == "max_length" and 0 < err.largest < 8192 and "one row of 8192 tokens" in str(err)
    assert check_forward(SMOL, 1, err.largest, what="prompt features") <= R.memory_budget()
    with pytest.raises(ResourceError):
        check_forward(SMOL, 1, err.largest + 64, what="prompt features")


# ------------------------------------------------------------------------------------------------ Ctrl-C


def test_ctrl_c_stops_a_long_simulation_at_the_chunk_in_flight(tmp_path, monkeypatch, capsys):
    """SIGINT once the simulation runs (after its first chunk): the CLI stops at the end of the chunk in
    flight, long before the last chunk, and exits 130 with one line. (No timing is asserted; the latency on
    the real data is measured by benchmarks/interrupt_latency.py.)"""
    import threading

    from jaxrank import cli
    from jaxrank.commands import budget

    scores = tmp_path / "scores.jsonl"
    rng = np.random.default_rng(0)
    scores.write_text("".join(f'{{"id": "i{i}", "scores": {rng.integers(1, 6, 4).tolist()}}}\n' for i in range(50)))
    seen = {"done": []}

    class Interrupting(budget.JobProgress):
        def sequential(self):
            step = super().sequential()

            def interrupting(done, total):
                step(done, total)
                seen["done"].append(done)
                seen["total"] = total
                if done > 0 and "sent" not in seen:  # the first chunk is done: the run is under way
                    seen["sent"] = True
                    threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()

            return interrupting

    monkeypatch.setattr(budget, "JobProgress", Interrupting)
    code = cli.main(["budget", "simulate", str(scores), "--budget", "20000", "--runs", "20000",
                     "--allocator", "robin"])
    err = capsys.readouterr().err
    assert code == 130 and err.strip().splitlines()[-1] == "jaxrank: interrupted", err
    assert "sent" in seen, "the simulation finished before it could be interrupted"
    # At most the chunk in flight (and the one the signal may land just after) ran after the signal.
    chunks_after = sum(1 for d in seen["done"] if d > 0) - 1
    assert chunks_after <= 2 and seen["done"][-1] < seen["total"], seen


# ------------------------------------------------------------------------------------------------ LM calls


@pytest.fixture(scope="module")
def tiny_lm():
    from flax import nnx
    from lm_tokenizer import TEMPLATE, bpe_chat_tokenizer

    from jaxrank.lm import CausalLM, LoadedModel
    from jaxrank.lm.prompts import builtin_prompts

    tok = bpe_chat_tokenizer(300, [p.text for p in builtin_prompts()])
    cfg = ModelConfig("llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8, max_position_embeddings=2048, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    return LoadedModel(model=CausalLM(cfg, rngs=nnx.Rngs(0)), tokenizer=tok, config=cfg, name="tiny",
                       chat_template=TEMPLATE, vocab_size=len(tok), bos_token_id=None, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, eos_token_ids=(tok.eos_token_id,))


@pytest.mark.filterwarnings("ignore::jaxrank.lm.pipeline.TruncationWarning")
def test_a_long_prompt_is_refused_before_any_model_runs(tiny_lm, monkeypatch):
    import sys

    from jaxrank.lm.pipeline import prioritize_prompts

    G = sys.modules["jaxrank.lm.generate"]  # the package exports a function of the same name

    def ran(*args, **kwargs):
        raise AssertionError("a model ran before the memory plan")

    monkeypatch.setattr(G, "generate", ran)
    prompts = ["Why is the sky blue?", "word " * 5000]  # the second is truncated to the 2048-token context
    monkeypatch.setenv("JAXRANK_MEMORY_LIMIT", "400M")
    with pytest.raises(ResourceError) as info:
        prioritize_prompts(tiny_lm, tiny_lm, prompts, batch_size=8, max_new_tokens=16)
    assert info.value.option == "batch_size" and 1 <= info.value.largest < 8
    monkeypatch.setenv("JAXRANK_MEMORY_LIMIT", "60M")
    with pytest.raises(ResourceError) as info:
        prioritize_prompts(tiny_lm, tiny_lm, prompts, batch_size=8, max_new_tokens=16)
    err = info.value
    assert err.option == "max_length" and 16 < err.largest < 2048 and "tokens or less" in str(err)


@pytest.mark.filterwarnings("ignore::jaxrank.lm.pipeline.TruncationWarning")
def test_long_prompt_features_run_in_smaller_batches(tiny_lm, monkeypatch):
    from jaxrank.lm.features import prompt_features

    prompts = ["Why is the sky blue?", "Hi!", "word " * 400, "token " * 500, "List five fruits."]
    whole = prompt_features(prompts, encoder=tiny_lm, batch_size=4, max_length=512)
    monkeypatch.setenv("JAXRANK_MEMORY_LIMIT", "50M")  # 4 rows of 512 tokens do not fit, 2 do
    assert check_forward(tiny_lm.config, 2, 512, what="f") <= R.memory_budget()
    with pytest.raises(ResourceError):
        check_forward(tiny_lm.config, 4, 512, what="f")
    split = prompt_features(prompts, encoder=tiny_lm, batch_size=4, max_length=512)
    np.testing.assert_allclose(split, whole, rtol=1e-5, atol=1e-5)
    monkeypatch.setenv("JAXRANK_MEMORY_LIMIT", "15M")  # not even one row
    with pytest.raises(ResourceError, match="max_length=512 needs about"):
        prompt_features(prompts, encoder=tiny_lm, batch_size=4, max_length=512)
