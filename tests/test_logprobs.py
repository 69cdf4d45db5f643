"""Serving-engine logprobs: readers on files in each engine's exact JSON shape, KL / cross-entropy from
top-k lists with bounds that contain the full-vocabulary value, sequence means with standard errors,
post-processing warnings, `jaxrank prioritize --logprobs-a/--logprobs-b`."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from jaxrank.logprobs import (
    LogprobsError,
    ProcessedLogprobsWarning,
    align,
    parse_logprobs,
    prioritize_logprobs,
    read_logprobs,
    sequence_scores,
    topk_bounds,
    topk_divergences,
)

TOL = 1e-5  # float32 kernel vs float64 truth (absolute, plus the same relative)


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _dist(seed, t, v, scale=2.0):
    rng = np.random.default_rng(seed)
    return _log_softmax(scale * rng.standard_normal((t, v)))


def _ranked(lp_row, k, token):
    order = np.argsort(-lp_row, kind="stable")
    rank = {int(i): r + 1 for r, i in enumerate(order)}
    return [int(i) for i in order[:k]], rank


# ---------------------------------------------------------------- writers: each engine's JSON shape
# Position t of every format describes the distribution that produced token t (the first prompt token
# has none).


def vllm_completion(pid, lp, tokens, k):
    plps = [None]
    for t in range(1, len(tokens)):
        top, rank = _ranked(lp[t], k, tokens[t])
        entry = {str(i): {"logprob": float(lp[t, i]), "rank": rank[i], "decoded_token": f"w{i}"} for i in top}
        tok = int(tokens[t])
        entry[str(tok)] = {"logprob": float(lp[t, tok]), "rank": rank[tok], "decoded_token": f"w{tok}"}
        plps.append(entry)
    response = {
        "id": "cmpl-7f3a", "object": "text_completion", "created": 1, "model": "model-b",
        "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "length", "stop_reason": None,
                     "prompt_logprobs": plps, "prompt_token_ids": [int(x) for x in tokens]}],
        "usage": {"prompt_tokens": len(tokens), "total_tokens": len(tokens) + 1, "completion_tokens": 1},
    }
    return {"id": pid, "response": response}


def sglang_generate(pid, lp, tokens, k):
    tok_lps = [[None, int(tokens[0]), None]] + [[float(lp[t, tokens[t]]), int(tokens[t]), f"w{tokens[t]}"]
                                                 for t in range(1, len(tokens))]
    tops = [None] + [[[float(lp[t, i]), i, f"w{i}"] for i in _ranked(lp[t], k, tokens[t])[0]]
                     for t in range(1, len(tokens))]
    response = {"text": "", "meta_info": {
        "id": "a1b2", "finish_reason": {"type": "length", "length": 0}, "prompt_tokens": len(tokens),
        "completion_tokens": 0, "cached_tokens": 0, "input_token_logprobs": tok_lps, "input_top_logprobs": tops,
        "output_token_logprobs": [], "output_top_logprobs": []}}
    return {"id": pid, "response": response}


def openai_chat_batch(pid, lp, tokens, k):
    """OpenAI Batch API output of a chat completion whose answer is `tokens` (positions 1..)."""
    content = []
    for t in range(1, len(tokens)):
        tok = int(tokens[t])
        content.append({
            "token": f"w{tok}", "logprob": float(lp[t, tok]), "bytes": list(f"w{tok}".encode()),
            "top_logprobs": [{"token": f"w{i}", "logprob": float(lp[t, i]), "bytes": list(f"w{i}".encode())}
                             for i in _ranked(lp[t], k, tok)[0]],
        })
    body = {"id": "chatcmpl-9", "object": "chat.completion", "created": 1, "model": "gpt-x",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": ""},
                         "logprobs": {"content": content, "refusal": None}, "finish_reason": "stop"}]}
    return {"id": "batch_req_1", "custom_id": pid, "response": {"status_code": 200, "request_id": "r", "body": body},
            "error": None}


def completions_echo(pid, lp, tokens, k):
    toks = [f"w{int(x)}" for x in tokens]
    tlps = [None] + [float(lp[t, tokens[t]]) for t in range(1, len(tokens))]
    tops = [None] + [{f"w{i}": float(lp[t, i]) for i in _ranked(lp[t], k, tokens[t])[0]} for t in range(1, len(tokens))]
    offsets = list(np.cumsum([0] + [len(s) for s in toks[:-1]]).tolist())
    response = {"id": "cmpl-1", "object": "text_completion", "model": "m",
                "choices": [{"index": 0, "text": "".join(toks), "finish_reason": "length",
                             "logprobs": {"tokens": toks, "token_logprobs": tlps, "top_logprobs": tops,
                                          "text_offset": offsets}}]}
    return {"id": pid, "response": response, "prompt": "a prompt"}


WRITERS = {"vllm": vllm_completion, "sglang": sglang_generate, "openai-chat": openai_chat_batch,
           "completions": completions_echo}


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _exact(lp_a, lp_b):
    p = np.exp(lp_a)
    return (p * (lp_a - lp_b)).sum(-1), -(p * lp_b).sum(-1)


# ---------------------------------------------------------------- readers


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_readers_parse_each_engine_shape(tmp_path, fmt):
    T, V, k = 6, 20, 3
    lp = _dist(0, T, V)
    tokens = np.random.default_rng(1).integers(0, V, T)
    (rec,) = read_logprobs(_write(tmp_path / "x.jsonl", [WRITERS[fmt]("p1", lp, tokens, k)]))
    assert rec.id == "p1" and rec.format == fmt
    first = 1 if fmt == "openai-chat" else 0  # chat logprobs cover the answer only
    assert len(rec) == T - first
    if fmt != "openai-chat":
        assert math.isnan(rec.logprobs[0])
    np.testing.assert_allclose(rec.logprobs[1 - first:], [lp[t, tokens[t]] for t in range(1, T)], rtol=1e-12)
    assert rec.tokens[-1] == f"w{tokens[-1]}"
    if fmt in ("vllm", "sglang"):
        assert rec.token_ids == [int(x) for x in tokens]
    for t, top in enumerate(rec.top[1 - first:], start=1):
        want = _ranked(lp[t], k, tokens[t])[0]
        assert [e[2] for e in top] == pytest.approx([lp[t, i] for i in want][: len(top)], rel=1e-12)
        assert len(top) == k  # vLLM's extra entry for the scored token is not part of the top-k


def test_reader_errors(tmp_path):
    lp, tokens = _dist(0, 4, 10), np.arange(4)
    good = vllm_completion("p", lp, tokens, 2)
    no_ids = json.loads(json.dumps(good))
    del no_ids["response"]["choices"][0]["prompt_token_ids"]
    cases = [
        ('{"id": "p"\n', r"x\.jsonl:1: not valid JSON"),
        (json.dumps({"response": good["response"]}) + "\n", r"no 'id'"),
        (json.dumps(no_ids) + "\n", r"prompt_token_ids"),
        (json.dumps({"id": "p", "choices": [{"text": "hi"}]}) + "\n", r"no log-probabilities found"),
        (json.dumps(good) + "\n" + json.dumps(good) + "\n", r"x\.jsonl:2: id 'p' already given on line 1"),
        ("\n", r"holds no records"),
    ]
    for content, message in cases:
        (tmp_path / "x.jsonl").write_text(content)
        with pytest.raises(LogprobsError, match=message):
            read_logprobs(tmp_path / "x.jsonl")
    bad = json.loads(json.dumps(good))
    entry = bad["response"]["choices"][0]["prompt_logprobs"][1]
    next(iter(entry.values()))["logprob"] = 0.5
    with pytest.raises(LogprobsError, match="must be <= 0"):
        parse_logprobs(bad)


# ---------------------------------------------------------------- exactness with full lists


def test_full_vocabulary_lists_equal_score_pairs(tmp_path):
    """vLLM (ids) against SGLang (ids), and OpenAI chat (strings) against completions (strings), each
    listing the whole vocabulary: estimate, lower and upper bound all equal `score_pairs`."""
    from jaxrank.scoring import score_pairs

    T, V = 12, 37
    rng = np.random.default_rng(3)
    za, zb = 2.0 * rng.standard_normal((T, V)), 2.0 * rng.standard_normal((T, V))
    la, lb = _log_softmax(za), _log_softmax(zb)
    tokens = rng.integers(0, V, T)
    want = score_pairs(za[None, 1:].astype(np.float32), zb[None, 1:].astype(np.float32))
    for wa, wb in ((vllm_completion, sglang_generate), (openai_chat_batch, completions_echo)):
        a = parse_logprobs(wa("p", la, tokens, V))
        b = parse_logprobs(wb("p", lb, tokens, V))
        per = topk_divergences(a, b, vocab_size=V)
        assert len(per["kl"]) == T - 1
        seq = sequence_scores(per)
        for name in ("kl", "kl_lower", "kl_upper"):
            np.testing.assert_allclose(seq[name], float(want["kl"][0]), rtol=TOL, atol=TOL, err_msg=name)
        for name in ("cross_entropy", "cross_entropy_lower", "cross_entropy_upper"):
            np.testing.assert_allclose(seq[name], float(want["cross_entropy"][0]), rtol=TOL, atol=TOL, err_msg=name)


# ---------------------------------------------------------------- bounds contain the truth


def _reference(lp_a, lp_b, s_a, s_b, top_a, top_b, v, floor, slack=1e-6):
    """float64 reference of the bounds at one position, written from the derivation with Python sets:
    `s_a`, `s_b` the revealed tokens, `top_a`, `top_b` the top-k lists among them (their minimum
    bounds every unrevealed probability)."""
    pa, qb = np.exp(lp_a), np.exp(lp_b)
    both, a1, b1 = s_a & s_b, s_a - s_b, s_b - s_a
    complete_a, complete_b = len(s_a) == v, len(s_b) == v
    r_a = 0.0 if complete_a or (complete_b and not b1) else max(1 - sum(pa[i] for i in s_a), 0.0)
    r_b = 0.0 if complete_b or (complete_a and not a1) else max(1 - sum(qb[i] for i in s_b), 0.0)
    tail_a = 0.0 if complete_a else r_a + slack
    tail_b = 0.0 if complete_b else r_b + slack
    c_a = min(min([pa[i] for i in top_a], default=1.0), tail_a)
    c_b = min(min([qb[i] for i in top_b], default=1.0), tail_b)
    kl_i = sum(pa[i] * (lp_a[i] - lp_b[i]) for i in both)
    ce_i = -sum(pa[i] * lp_b[i] for i in both)
    p_r, q_r = sum(pa[i] for i in a1) + r_a, sum(qb[i] for i in b1) + r_b + slack
    lo = kl_i + (p_r * math.log(p_r / q_r) if p_r > 0 else 0.0)
    q_max_w = min(1 - sum(qb[i] for i in both) + slack, max([qb[i] for i in b1] + [0.0 if complete_b else c_b]))
    ce_lo = ce_i - sum(pa[i] for i in a1) * math.log(max(c_b, 1e-30)) - max(r_a - slack, 0) * math.log(max(q_max_w, 1e-30))
    q_low = min([qb[i] for i in b1] + ([] if complete_b else [floor]) or [1.0])
    up_tail = (tail_a * (math.log(max(c_a, 1e-30)) - math.log(q_low)) if r_a > 0 else 0.0) if q_low > 0 else math.inf
    hi = kl_i + sum(pa[i] * (lp_a[i] - math.log(floor)) if floor > 0 else math.inf for i in a1) + max(up_tail, 0.0)
    return max(lo, 0.0), hi, ce_lo


def _record(pid, lp, tokens, k_list, ids=True):
    return parse_logprobs(vllm_completion(pid, lp, tokens, k_list) if ids else completions_echo(pid, lp, tokens, k_list))


@settings(max_examples=40, deadline=None)
# Tails below float32 resolution (1 − Σ p summed in float32 cancels): A's tail of 8.8e-9 read as empty
# gave a finite no-floor kl_upper; B's tail of 1.7e-6 off by ~4e-8 moved kl_lower by 7e-4.
@example(v=4, ka=1, kb=2, seed=3, scale=6.0, use_floor=False)
@example(v=3, ka=1, kb=2, seed=0, scale=6.0, use_floor=False)
@given(v=st.integers(2, 30), ka=st.integers(0, 30), kb=st.integers(0, 30), seed=st.integers(0, 10_000),
       scale=st.sampled_from([0.5, 2.0, 6.0]), use_floor=st.booleans())
def test_bounds_contain_the_full_vocabulary_value(v, ka, kb, seed, scale, use_floor):
    ka, kb = min(ka, v), min(kb, v)
    T = 3
    la, lb = _dist(seed, T, v, scale), _dist(seed + 1, T, v, scale)
    tokens = np.random.default_rng(seed).integers(0, v, T)
    a, b = _record("p", la, tokens, ka), _record("p", lb, tokens, kb)
    floor = float(min(np.exp(la).min(), np.exp(lb).min()) * (1 - 1e-6)) if use_floor else 0.0
    per = topk_divergences(a, b, floor=floor, vocab_size=v)
    kl, ce = _exact(la[1:], lb[1:])
    tol = TOL * (1 + np.abs(kl))
    assert np.all(per["kl_lower"] <= kl + tol), (per["kl_lower"], kl)
    assert np.all(kl <= per["kl_upper"] + tol), (per["kl_upper"], kl)
    assert np.all(per["cross_entropy_lower"] <= ce + TOL * (1 + ce))
    assert np.all(ce <= per["cross_entropy_upper"] + TOL * (1 + ce))
    assert np.all((per["kl_lower"] <= per["kl"]) & (per["kl"] <= per["kl_upper"]))
    assert np.all((per["cross_entropy_lower"] <= per["cross_entropy"]) & (per["cross_entropy"] <= per["cross_entropy_upper"]))
    if not use_floor and ka < v and kb < v:
        # No floor: an upper bound exists only where B listed every token A did and A's tail is empty.
        assert np.all(np.isinf(per["kl_upper"]) | (per["kl_upper"] >= per["kl_lower"]))
    # The JAX kernel against the float64 reference written from the derivation.
    for t in range(1, T):
        top_a, top_b = {e[0] for e in a.top[t]}, {e[0] for e in b.top[t]}
        lo, hi, ce_lo = _reference(la[t], lb[t], top_a | {int(tokens[t])}, top_b | {int(tokens[t])}, top_a, top_b,
                                   v, floor)
        np.testing.assert_allclose(per["kl_lower"][t - 1], lo, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(per["cross_entropy_lower"][t - 1], ce_lo, rtol=1e-4, atol=1e-5)
        if math.isinf(hi):
            assert math.isinf(per["kl_upper"][t - 1])
        else:
            np.testing.assert_allclose(per["kl_upper"][t - 1], hi, rtol=1e-4, atol=1e-5)


def test_bounds_narrow_as_k_grows():
    T, V = 8, 64
    la, lb = _dist(5, T, V), _dist(6, T, V)
    tokens = np.random.default_rng(0).integers(0, V, T)
    floor = float(min(np.exp(la).min(), np.exp(lb).min()) * 0.99)
    widths = []
    for k in (1, 4, 16, 64):
        seq = sequence_scores(topk_divergences(_record("p", la, tokens, k), _record("p", lb, tokens, k), floor=floor,
                                               vocab_size=V))
        widths.append(seq["kl_upper"] - seq["kl_lower"])
    assert widths == sorted(widths, reverse=True) and widths[-1] < 1e-4


def test_kernel_is_jittable_and_rejects_bad_options():
    out = topk_bounds(np.zeros((2, 3), np.float32) - 1.1, np.ones((2, 3), bool), np.zeros((2, 3), np.float32) - 1.1,
                      np.ones((2, 3), bool), np.full(2, -1.1, np.float32), np.full(2, -1.1, np.float32),
                      np.ones(2, bool), np.ones(2, bool))
    np.testing.assert_allclose(np.asarray(out["kl"]), 0.0, atol=1e-6)
    a = _record("p", _dist(0, 3, 5), np.arange(3), 2)
    with pytest.raises(ValueError, match="floor must be a probability"):
        topk_divergences(a, a, floor=-1.0)
    with pytest.raises(ValueError, match="vocab_size must be a positive int"):
        topk_divergences(a, a, vocab_size=0)


# ---------------------------------------------------------------- sequences, alignment, ranking


def test_sequence_scores_mean_and_standard_error():
    per = {name: np.arange(1.0, 6.0) for name in ("kl", "kl_lower", "kl_upper", "cross_entropy",
                                                  "cross_entropy_lower", "cross_entropy_upper")}
    out = sequence_scores(per)
    assert out["kl"] == 3.0 and out["tokens"] == 5
    assert out["stderr"] == pytest.approx(np.std(np.arange(1.0, 6.0), ddof=1) / math.sqrt(5))
    one = sequence_scores({k: v[:1] for k, v in per.items()})
    assert math.isnan(one["stderr"])


def test_sequence_standard_error_covers_the_mean_95_percent():
    """mean ± 1.96 SE over per-token values drawn i.i.d. from a known (skewed, KL-like) distribution."""
    rng = np.random.default_rng(0)
    truth, n, replays = 2.0, 200, 4000  # gamma(shape 2, scale 1): mean 2
    hits = 0
    for _ in range(replays):
        x = rng.gamma(2.0, 1.0, n)
        s = sequence_scores({k: x for k in ("kl", "kl_lower", "kl_upper", "cross_entropy", "cross_entropy_lower",
                                            "cross_entropy_upper")})
        hits += abs(s["kl"] - truth) <= 1.96 * s["stderr"]
    assert 0.93 <= hits / replays <= 0.97, hits / replays


def test_chat_answer_aligns_with_teacher_forced_prompt_logprobs():
    """A's chat logprobs cover its answer only; B's vLLM prompt_logprobs cover prompt + answer: the
    shared continuation is the answer."""
    T, V = 10, 16
    la, lb = _dist(1, T, V), _dist(2, T, V)
    tokens = np.random.default_rng(3).integers(0, V, T)
    answer = 4  # the last 4 tokens
    a = parse_logprobs(openai_chat_batch("q", la[T - answer - 1:], tokens[T - answer - 1:], V))
    b = parse_logprobs(vllm_completion("q", lb, tokens, V))
    assert len(a) == answer
    al = align(a, b, vocab_size=V)
    assert al.tokens == [f"w{t}" for t in tokens[-answer:]]
    per = topk_divergences(a, b, vocab_size=V)
    kl, _ = _exact(la[-answer:], lb[-answer:])
    np.testing.assert_allclose(per["kl"], kl, rtol=TOL, atol=TOL)
    other = parse_logprobs(vllm_completion("q", lb, (tokens + 1) % V, V))
    with pytest.raises(LogprobsError, match="share no scored continuation"):
        topk_divergences(a, other)


def _topp_record(pid, lp, tokens, top_p, *, omit_masked):
    """What an engine returning post-processed logprobs gives: the distribution truncated to its top-p
    nucleus and renormalised; tokens outside get -9999, or are left out of the lists."""
    processed = np.full_like(lp, -9999.0)
    for t in range(len(lp)):
        order = np.argsort(-lp[t])
        keep = order[: int(np.searchsorted(np.cumsum(np.exp(lp[t, order])), top_p)) + 1]
        processed[t, keep] = lp[t, keep] - np.log(np.exp(lp[t, keep]).sum())
    rec = vllm_completion(pid, processed, tokens, 5)
    if omit_masked:
        for t, entry in enumerate(rec["response"]["choices"][0]["prompt_logprobs"][1:], start=1):
            for key in [k for k, info in entry.items() if info["logprob"] <= -9999.0 and int(k) != tokens[t]]:
                del entry[key]
    return parse_logprobs(rec)


def test_post_processed_logprobs_are_warned_about():
    T, V = 8, 40
    la, lb = _dist(1, T, V, 1.0), _dist(2, T, V, 4.0)
    tokens = np.arange(T)
    raw_a, raw_b = _record("p", la, tokens, 5), _record("p", lb, tokens, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prioritize_logprobs([raw_a], [raw_b])
    with pytest.warns(ProcessedLogprobsWarning, match="side B: 1 record.*masked"):
        prioritize_logprobs([raw_a], [_topp_record("p", lb, tokens, 0.9, omit_masked=False)])
    modes = np.argmax(lb, axis=-1)  # scored tokens inside the nucleus: no -9999 left in the lists
    with pytest.warns(ProcessedLogprobsWarning, match="side B: 1 record.*sum to 1"):
        prioritize_logprobs([_record("p", la, modes, 5)], [_topp_record("p", lb, modes, 0.9, omit_masked=True)])
    said = _record("p", lb, tokens, 5)
    said.metadata["logprobs_mode"] = "processed_logprobs"
    with pytest.warns(ProcessedLogprobsWarning, match="logprobs_mode=processed_logprobs"):
        prioritize_logprobs([raw_a], [said])


def test_prioritize_logprobs_ranks_by_kl_with_bounds():
    V = 24
    recs_a, recs_b, truth = [], [], {}
    for i, scale in enumerate((0.2, 3.0, 1.0)):
        la = _dist(10 + i, 6, V, 2.0)
        lb = _log_softmax(la + scale * np.random.default_rng(i).standard_normal(la.shape))
        tokens = np.random.default_rng(20 + i).integers(0, V, 6)
        recs_a.append(_record(f"p{i}", la, tokens, V))
        recs_b.append(_record(f"p{i}", lb, tokens, 4))
        truth[f"p{i}"] = float(np.mean(_exact(la[1:], lb[1:])[0]))
    rows = prioritize_logprobs(recs_a, recs_b[::-1], floor=1e-12, vocab_size=V, fraction=0.34)
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    for r in rows:
        assert set(r) >= {"kl", "kl_lower", "kl_upper", "stderr", "cross_entropy", "cross_entropy_lower",
                          "cross_entropy_upper", "cross_entropy_stderr", "tokens", "selected", "mode"}
        assert r["kl_lower"] - TOL <= truth[r["id"]] <= r["kl_upper"] + TOL
    assert sum(r["selected"] for r in rows) == 2  # ceil(0.34 · 3)
    with pytest.raises(LogprobsError, match="ids of A missing from B: 'p0'"):
        prioritize_logprobs(recs_a, recs_b[1:])


# ---------------------------------------------------------------- the command line


def test_cli_logprobs(tmp_path, capsys):
    from jaxrank.cli import main

    V, T = 16, 7
    rng = np.random.default_rng(0)
    recs_a, recs_b = [], []
    for i in range(3):
        la, lb = _dist(i, T, V), _dist(100 + i, T, V)
        tokens = rng.integers(0, V, T)
        recs_a.append(sglang_generate(f"p{i}", la, tokens, 5))
        recs_b.append(vllm_completion(f"p{i}", lb, tokens, 5))
    fa, fb = _write(tmp_path / "a.jsonl", recs_a), _write(tmp_path / "b.jsonl", recs_b)
    out = tmp_path / "ranked.jsonl"
    assert main(["prioritize", "--logprobs-a", str(fa), "--logprobs-b", str(fb), "--logprob-floor", "1e-9",
                 "--out", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 3 and rows[0]["rank"] == 1
    for r in rows:
        assert r["kl_lower"] <= r["kl"] <= r["kl_upper"] and r["mode"] == "logprobs" and r["tokens"] == T - 1
        assert r["cross_entropy_lower"] <= r["cross_entropy"] <= r["cross_entropy_upper"]
    assert "KL bounds" in capsys.readouterr().err
    for args, message in (
        (["--logprobs-a", str(fa)], "--logprobs-a and --logprobs-b go together"),
        (["--logprobs-a", str(fa), "--logprobs-b", str(fb), "--model-a", "x"], "drop --model-a"),
        (["--logprobs-a", str(fa), "--logprobs-b", str(tmp_path / "none.jsonl")], "does not exist"),
        (["--logprobs-a", str(fa), "--logprobs-b", str(fb), "--logprob-floor", "2"], "--logprob-floor must lie"),
        ([], "the following arguments are required: --model-a, --model-b, --prompts"),
    ):
        assert main(["prioritize", *args]) == 2, args
        assert message in capsys.readouterr().err, args
