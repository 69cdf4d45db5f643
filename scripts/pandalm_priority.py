"""Per-item priority scores for PandaLM's human-labelled test set, computed with jaxrank and SmolLM2.

PandaLM (`../shared/data/pandalm/testset-v1.json`) holds 999 items: an instruction (+ input), two
responses from two of five 7B models (`cmp_key = "<model1>_<model2>"`, `response1` from model1) and
three human labels each, 0 = tie, 1 = response1 better, 2 = response2 better.

A priority score should put the items whose human labels are decisive (not ties) first. Two scores
come out of one pass of one real model, SmolLM2-135M-Instruct (`jaxrank.lm.load_model`), teacher
forcing each response after the prompt rendered with the model's chat template:

- `loglik_gap` = | mean_t log p(r1_t | x, r1_<t) − mean_t log p(r2_t | x, r2_<t) |, the gap in per-token
  log-likelihood of the two responses (each ending with the end-of-turn token, so an empty response is
  scored by how likely the model thinks stopping at once is). Rationale: when a small instruction model
  finds one answer much more (or less) natural than the other, the two differ clearly in fluency, style
  or length and a human is more likely to prefer one; two answers of equal likelihood are candidates
  for "tie".
- `divergence` = mean over aligned positions t of JS(P1_t, P2_t), the Jensen-Shannon divergence (nats, in
  [0, ln 2]) between `P1_t = p(· | x, r1_<t)`, the model's next-token distribution after the first t
  tokens of response 1, and P2_t (likewise for response 2); positions run to the longer response's end,
  the shorter one's last distribution (the "answer is over" state) standing in after its end. It
  measures how differently the two answers steer the model, over the whole vocabulary: 0 for identical
  answers (which humans always call a tie), large for answers that differ in content or length. It is
  the per-position divergence of the prompt-prioritization papers with the two answers' contexts
  playing the two models (`jaxrank.divergence.divergences` on the log-probabilities). The symmetric KL
  (Jeffreys, ½[KL(P1‖P2) + KL(P2‖P1)]) is written to items.csv as well.

Both use the prompt once per item: the prompt is run with a KV cache and both responses continue from
it, so an item costs (prompt + response1 + response2) tokens, not twice the prompt. The chat
formatting, left-truncation, length bucketing and padding are those of `jaxrank.lm.pipeline`; the
per-token log-probabilities come from the same `[Tr, vocab]` log-softmax that feeds the divergence
(one item at a time, under `lax.map`, so a batch never holds `[B, Tr, vocab]`). A self-check compares the first
batch's log-likelihoods with the pipeline's own sequence scorer (no KV cache).

Outputs (under --out, default runs/pandalm/, refused if present unless --force):
  votes.csv                    the human labels as Arena votes: prompt_id, model_a, model_b, winner, annotator
  scores_loglik_gap.csv        prompt_id, score
  scores_divergence.csv        prompt_id, score
  items.csv                    every per-item quantity (log-likelihoods, token counts, truncation, ties)
  run.json                     settings, timings and throughput

Usage:
  PYTHONPATH=$PWD python scripts/pandalm_priority.py [--out runs/pandalm] [--force] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import Any

import numpy as np

DEFAULT_DATA = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pandalm" / "testset-v1.json"
LABEL_TO_WINNER = {0: "tie", 1: "model_a", 2: "model_b"}
ANNOTATORS = ("annotator1", "annotator2", "annotator3")
SCORE_VARIANTS = ("loglik_gap", "divergence")


# ------------------------------------------------------------------------------------------------
# Data (no JAX needed: the test imports these)
# ------------------------------------------------------------------------------------------------


def read_pandalm(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """The PandaLM test set as a list of dicts, responses as strings (a few are JSON booleans)."""
    path = pathlib.Path(path)
    items = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path}: expected a non-empty JSON list of items")
    out = []
    for i, item in enumerate(items):
        missing = [k for k in ("idx", "cmp_key", "instruction", "input", "response1", "response2", *ANNOTATORS) if k not in item]
        if missing:
            raise ValueError(f"{path}: item {i} lacks {', '.join(missing)}")
        models = str(item["cmp_key"]).split("_")
        if len(models) != 2:
            raise ValueError(f"{path}: item {i}: cmp_key {item['cmp_key']!r} is not '<model1>_<model2>'")
        row = dict(item)
        # The file stores a few one-word answers ("True") as JSON booleans.
        row["response1"] = _text(item["response1"])
        row["response2"] = _text(item["response2"])
        row["model1"], row["model2"] = models
        out.append(row)
    return out


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    return "" if value is None else str(value)


def prompt_text(item: dict[str, Any]) -> str:
    """The user message: the instruction, then the input (if any) after a blank line."""
    instruction, extra = str(item["instruction"]).strip(), str(item["input"]).strip()
    return f"{instruction}\n\n{extra}" if extra else instruction


def pandalm_votes(items: list[dict[str, Any]]):
    """Arena-format votes, one per (item, annotator): prompt_id, model_a, model_b, winner, annotator.

    label 0 → "tie", 1 → "model_a" (response1's model, the first in cmp_key), 2 → "model_b".
    """
    import pandas as pd

    rows = []
    for item in items:
        for annotator in ANNOTATORS:
            label = int(item[annotator])
            if label not in LABEL_TO_WINNER:
                raise ValueError(f"item {item['idx']}: {annotator} = {label!r}, expected 0, 1 or 2")
            rows.append({
                "prompt_id": int(item["idx"]),
                "model_a": item["model1"],
                "model_b": item["model2"],
                "winner": LABEL_TO_WINNER[label],
                "annotator": annotator,
            })
    return pd.DataFrame(rows, columns=["prompt_id", "model_a", "model_b", "winner", "annotator"])


# ------------------------------------------------------------------------------------------------
# Scoring with SmolLM2 (jaxrank.lm)
# ------------------------------------------------------------------------------------------------


def _make_scorer(graphdef: Any):
    """A jitted function scoring a batch: prompt once (KV cache), both responses from it."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxrank.divergence import divergences, kl_divergence

    def score(state, p_ids, p_mask, r1_ids, r1_mask, r2_ids, r2_mask):
        model = nnx.merge(graphdef, state)
        b, tp = p_ids.shape
        tr = r1_ids.shape[1]
        cache = model.init_cache(b, tp + tr)
        # The prompt is left-padded, so its last slot is the last real prompt token for every row.
        h_prompt, cache = model.hidden_states(p_ids, attention_mask=p_mask, cache=cache)

        def predictors(ids, mask):
            h, _ = model.hidden_states(ids, attention_mask=mask, cache=cache)
            # Response token t is predicted by the hidden state before it: the prompt's last (t = 0).
            return jnp.concatenate([h_prompt[:, -1:], h[:, :-1]], axis=1)  # [B, Tr, d]

        pred1, pred2 = predictors(r1_ids, r1_mask), predictors(r2_ids, r2_mask)
        n1, n2 = jnp.sum(r1_mask, axis=-1), jnp.sum(r2_mask, axis=-1)
        t = jnp.arange(tr)[None, :]
        # Past its end a response stays in its final state (the distribution after the whole answer).
        g1 = jnp.take_along_axis(pred1, jnp.minimum(t, n1[:, None] - 1)[..., None], axis=1)
        g2 = jnp.take_along_axis(pred2, jnp.minimum(t, n2[:, None] - 1)[..., None], axis=1)
        count = t < jnp.maximum(n1, n2)[:, None]

        def item(args):
            # One item at a time: [Tr, vocab] log-probabilities per response, never [B, Tr, vocab].
            h1, h2, ids1, ids2, m1, m2, c = args
            lp1 = jax.nn.log_softmax(model.logits_from_hidden(h1), axis=-1)
            lp2 = jax.nn.log_softmax(model.logits_from_hidden(h2), axis=-1)
            # Rows t < n are the response's own predictors, so their log-probabilities are the likelihood.
            ll1 = jnp.sum(jnp.where(m1, jnp.take_along_axis(lp1, ids1[:, None], axis=1)[:, 0], 0.0))
            ll2 = jnp.sum(jnp.where(m2, jnp.take_along_axis(lp2, ids2[:, None], axis=1)[:, 0], 0.0))
            d = divergences(lp1, lp2, metrics=("kl", "jensen_shannon"), log_probs=True)
            kl21 = kl_divergence(lp2, lp1, log_probs=True)
            cf = c.astype(jnp.float32)
            mean = lambda x: jnp.sum(x * cf) / jnp.sum(cf)  # noqa: E731
            return ll1, ll2, mean(d["jensen_shannon"]), mean(0.5 * (d["kl"] + kl21))

        return jax.lax.map(item, (g1, g2, r1_ids, r2_ids, r1_mask, r2_mask, count))

    return jax.jit(score)


def _encode(items, side, *, max_prompt_tokens: int, max_response_tokens: int):
    from jaxrank.lm.pipeline import truncate_left

    eos = side.eos[0] if isinstance(side.eos, (list, tuple)) else side.eos
    enc = []
    for item in items:
        p = side.prompt_ids(prompt_text(item))
        p_trunc = len(p) > max_prompt_tokens
        # Keep the end of a long prompt (it holds the input and the assistant turn marker).
        p = truncate_left(p, max_prompt_tokens, side.bos)
        row = {"prompt": p, "prompt_truncated": p_trunc}
        for k in ("1", "2"):
            r = side.text_ids(item[f"response{k}"])
            cut = len(r) >= max_response_tokens
            row[f"r{k}"] = r[:max_response_tokens] if cut else r + [int(eos)]  # the end-of-turn token
            row[f"r{k}_truncated"] = cut
        enc.append(row)
    return enc


def score_items(items, loaded, *, batch_size: int = 8, max_prompt_tokens: int = 256, max_response_tokens: int = 128,
                self_check: bool = True, log=print):
    """Per-item log-likelihoods and divergence under `loaded` (a jaxrank.lm.LoadedModel)."""
    import jax
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from jaxrank.lm.pipeline import ModelSide, bucket_length, length_batches, pad_batch

    side = ModelSide(loaded, "model")
    enc = _encode(items, side, max_prompt_tokens=max_prompt_tokens, max_response_tokens=max_response_tokens)
    scorer = _make_scorer(side.graphdef)
    n = len(items)
    ll = np.zeros((n, 2))
    div = np.zeros((n, 2))  # Jensen-Shannon, Jeffreys
    # Group by the prompt's bucket, then by the longer response: both padded dimensions stay tight.
    key = [bucket_length(len(e["prompt"]), minimum=64) * 100_000 + max(len(e["r1"]), len(e["r2"])) for e in enc]
    batches = length_batches(key, batch_size)
    real_tokens = padded_tokens = 0
    shapes = set()
    start = time.perf_counter()
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[rate]}"))
    done, next_log = 0, max(1, n // 10)
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("score PandaLM items", total=n, rate="")
        for batch in batches:
            es = [enc[i] for i in batch]
            tp = bucket_length(max(len(e["prompt"]) for e in es), minimum=64)
            tr = bucket_length(max(max(len(e["r1"]), len(e["r2"])) for e in es), minimum=32)
            shapes.add((tp, tr))
            p_ids, p_mask = pad_batch([e["prompt"] for e in es], tp, batch_size, side.pad, side="left")
            r1_ids, r1_mask = pad_batch([e["r1"] for e in es], tr, batch_size, side.pad)
            r2_ids, r2_mask = pad_batch([e["r2"] for e in es], tr, batch_size, side.pad)
            out = scorer(side.state, p_ids, p_mask, r1_ids, r1_mask, r2_ids, r2_mask)
            l1, l2, js, jf = (np.asarray(x, np.float64) for x in jax.block_until_ready(out))
            k = len(es)
            ll[batch, 0], ll[batch, 1], div[batch, 0], div[batch, 1] = l1[:k], l2[:k], js[:k], jf[:k]
            real_tokens += int(p_mask[: len(es)].sum() + r1_mask[: len(es)].sum() + r2_mask[: len(es)].sum())
            padded_tokens += batch_size * (tp + 2 * tr)
            elapsed = time.perf_counter() - start
            bar.update(task, advance=len(es), rate=f"{real_tokens / elapsed:,.0f} tok/s")
            done += len(es)
            if not sys.stderr.isatty() and done >= next_log:  # a log file gets a line per ~10 %
                print(f"  {done}/{n} items, {elapsed:.0f} s, {real_tokens / elapsed:,.0f} tok/s", file=sys.stderr, flush=True)
                next_log += max(1, n // 10)
    seconds = time.perf_counter() - start
    if self_check:
        _self_check(side, enc, batches[0], ll, log=log)
    n1 = np.array([len(e["r1"]) for e in enc])
    n2 = np.array([len(e["r2"]) for e in enc])
    details = {
        "loglik_1": ll[:, 0], "loglik_2": ll[:, 1], "tokens_1": n1, "tokens_2": n2,
        "mean_logp_1": ll[:, 0] / n1, "mean_logp_2": ll[:, 1] / n2, "divergence": div[:, 0], "jeffreys": div[:, 1],
        "prompt_tokens": np.array([len(e["prompt"]) for e in enc]),
        "prompt_truncated": np.array([e["prompt_truncated"] for e in enc]),
        "response1_truncated": np.array([e["r1_truncated"] for e in enc]),
        "response2_truncated": np.array([e["r2_truncated"] for e in enc]),
    }
    stats = {"seconds": seconds, "real_tokens": real_tokens, "padded_tokens": padded_tokens,
             "compiled_shapes": len(shapes), "batches": len(batches)}
    return details, stats


def _self_check(side, enc, batch, ll, *, log):
    """The KV-cache scorer against the pipeline's sequence scorer (prompt + response in one pass)."""
    from jaxrank.lm.pipeline import sequence_logprobs

    pairs = [(enc[i]["prompt"], enc[i][f"r{k}"]) for i in batch for k in ("1", "2")]
    reference = sequence_logprobs(side, pairs, len(pairs), None, None, None, "check", len(pairs)).reshape(len(batch), 2)
    ours = ll[batch]
    err = float(np.max(np.abs(reference - ours) / np.maximum(1.0, np.abs(reference))))
    log(f"self-check: KV-cache log-likelihoods vs jaxrank.lm.pipeline sequence scorer on {len(batch)} items: "
        f"max relative difference {err:.2e}")
    if err > 1e-3:
        raise RuntimeError(f"self-check failed: KV-cache scorer differs from the pipeline by {err:.2e}")


# ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="PandaLM testset-v1.json")
    parser.add_argument("--out", default="runs/pandalm", help="output folder (default runs/pandalm)")
    parser.add_argument("--force", action="store_true", help="overwrite the output files")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="jaxrank.lm.load_model name or path")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-prompt-tokens", type=int, default=256,
                        help="chat-formatted prompts keep their last N tokens (default 256)")
    parser.add_argument("--max-response-tokens", type=int, default=128,
                        help="responses keep their first N tokens (default 128)")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N items (a quick run)")
    parser.add_argument("--no-self-check", action="store_true")
    args = parser.parse_args(argv)

    out = pathlib.Path(args.out)
    names = ["votes.csv", *(f"scores_{v}.csv" for v in SCORE_VARIANTS), "items.csv", "run.json"]
    existing = [str(out / f) for f in names if (out / f).exists()]
    if existing and not args.force:
        print(f"error: {', '.join(existing)} already exist(s); pass --force to overwrite", file=sys.stderr)
        return 2
    items = read_pandalm(args.data)
    if args.limit is not None:
        items = items[: args.limit]

    import jax
    import pandas as pd

    from jaxrank.lm import load_model

    t0 = time.perf_counter()
    loaded = load_model(args.model)
    load_s = time.perf_counter() - t0
    details, stats = score_items(items, loaded, batch_size=args.batch_size, max_prompt_tokens=args.max_prompt_tokens,
                                 max_response_tokens=args.max_response_tokens, self_check=not args.no_self_check)
    votes = pandalm_votes(items)
    frame = pd.DataFrame({"prompt_id": [int(it["idx"]) for it in items], "cmp_key": [it["cmp_key"] for it in items],
                          **details})
    frame["loglik_gap"] = np.abs(frame["mean_logp_1"] - frame["mean_logp_2"])
    frame["human_ties"] = [sum(int(it[a]) == 0 for a in ANNOTATORS) for it in items]

    out.mkdir(parents=True, exist_ok=True)
    votes.to_csv(out / "votes.csv", index=False)
    for variant in SCORE_VARIANTS:
        frame[["prompt_id", variant]].rename(columns={variant: "score"}).to_csv(out / f"scores_{variant}.csv", index=False)
    frame.to_csv(out / "items.csv", index=False)
    throughput = stats["real_tokens"] / stats["seconds"]
    meta = {
        "model": args.model, "items": len(items), "votes": len(votes), "batch_size": args.batch_size,
        "max_prompt_tokens": args.max_prompt_tokens, "max_response_tokens": args.max_response_tokens,
        "load_seconds": round(load_s, 2), "score_seconds": round(stats["seconds"], 2),
        "real_tokens": stats["real_tokens"], "padded_tokens": stats["padded_tokens"],
        "tokens_per_second": round(throughput, 1), "compiled_shapes": stats["compiled_shapes"],
        "device": f"{jax.devices()[0].platform} x{len(jax.devices())}",
        "truncated_prompts": int(frame["prompt_truncated"].sum()),
        "truncated_responses": int(frame["response1_truncated"].sum() + frame["response2_truncated"].sum()),
    }
    (out / "run.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"scored {len(items)} items in {stats['seconds']:.1f} s (+ {load_s:.1f} s model load): "
          f"{stats['real_tokens']:,} tokens ({stats['padded_tokens']:,} with padding), {throughput:,.0f} tokens/s, "
          f"{stats['compiled_shapes']} compiled shapes")
    spearman = frame[["loglik_gap", "divergence", "jeffreys", "human_ties"]].corr(method="spearman")
    print("Spearman correlation of the scores with the number of human tie labels (0-3) per item:")
    print(spearman["human_ties"].to_string())
    print(f"wrote {', '.join(str(out / f) for f in names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
