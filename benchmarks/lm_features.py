"""Prompt-feature throughput: `jaxrank.prompt_features` vs the same features computed with PyTorch.

Prompts: the first N distinct PandaLM instructions (`../shared/data/pandalm/testset-v1.json`,
instruction + input), the prompts of the P2L benchmark.

1. all-MiniLM-L6-v2 sentence vectors: jaxrank (`prompt_features(encoder="all-minilm-l6-v2")`, jit,
   power-of-two buckets) vs `transformers.BertModel` on PyTorch CPU doing what sentence-transformers'
   `encode` does (sort by length, batches padded to their longest row, mean pooling over the mask,
   L2 normalisation), same weights, same token ids, same batch size.
2. SmolLM2-135M-Instruct last-token hidden states: jaxrank (`prompt_features()`, the default) vs
   `transformers.LlamaModel` on PyTorch CPU (weights from the same GGUF, dequantized; the chat-rendered
   token ids from jaxrank; batches sorted by length and right-padded to their longest row; the final-norm
   state at each row's last real token).

The first jaxrank call (compiling one function per bucket shape) is reported apart from the steady
state (median of interleaved repeats: each implementation once per round, so load changes on the
shared machine hit all alike). Writes benchmarks/results/lm_features.csv.

Run: `python benchmarks/lm_features.py` (default 64 prompts, batch 16, 3 repeats);
`--prompts 512 --repeats 5` for bigger sizes; `--skip-smollm2` for the encoder only.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import statistics
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results" / "lm_features.csv"
DATA = HERE.parent.parent / "shared" / "data" / "pandalm" / "testset-v1.json"


def _prompts(n: int) -> list[str]:
    items = json.loads(DATA.read_text())
    seen, out = set(), []
    for it in items:
        text = it["instruction"] + ("\n\n" + it["input"] if it.get("input") else "")
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out[:n]


def _torch_batches(rows: list[list[int]], batch_size: int, pad: int):
    """(indices, ids [b, longest], mask) per batch, sorted by length (sentence-transformers' order)."""
    import torch

    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        t = max(len(rows[i]) for i in idx)
        ids = torch.full((len(idx), t), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), t), dtype=torch.long)
        for j, i in enumerate(idx):
            ids[j, : len(rows[i])] = torch.tensor(rows[i])
            mask[j, : len(rows[i])] = 1
        yield idx, ids, mask


def _measure(name: str, runners: dict, repeats: int, n: int, tokens: int, reference: str) -> list[dict]:
    rows = []
    outs, first = {}, {}
    for impl, fn in runners.items():
        t = time.perf_counter()
        outs[impl] = fn()
        first[impl] = time.perf_counter() - t
    times = {impl: [] for impl in runners}
    for _ in range(repeats):
        for impl, fn in runners.items():
            t = time.perf_counter()
            fn()
            times[impl].append(time.perf_counter() - t)
    ref_time = statistics.median(times[reference])
    for impl in runners:
        steady = statistics.median(times[impl])
        diff = float(np.max(np.abs(outs[impl] - outs[reference])))
        rows.append(dict(encoder=name, implementation=impl, prompts=n, tokens=tokens, first_call_s=round(first[impl], 3),
                         steady_s=round(steady, 3), prompts_per_s=round(n / steady, 2),
                         speedup_vs_torch=round(ref_time / steady, 3), max_abs_diff_vs_torch=f"{diff:.2e}"))
        print(rows[-1], flush=True)
    return rows


def bench_minilm(prompts: list[str], batch_size: int, repeats: int) -> list[dict]:
    import torch
    from transformers import BertModel

    from jaxrank import prompt_features
    from jaxrank.lm import load_encoder

    enc = load_encoder("all-minilm-l6-v2")
    limit = min(256, enc.config.max_position_embeddings)
    rows = [enc.token_ids(p, max_length=limit) for p in prompts]
    pt = BertModel.from_pretrained(str(enc.path), local_files_only=True).eval()

    def torch_features():
        out = np.zeros((len(rows), enc.config.hidden_size), np.float32)
        with torch.inference_mode():
            for idx, ids, mask in _torch_batches(rows, batch_size, enc.pad_token_id):
                h = pt(input_ids=ids, attention_mask=mask).last_hidden_state
                m = mask[..., None].float()
                v = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
                out[idx] = torch.nn.functional.normalize(v, p=2, dim=1).numpy()
        return out

    runners = {
        "jaxrank prompt_features (jit, buckets)": lambda: prompt_features(
            prompts, encoder=enc, batch_size=batch_size, max_length=limit),
        "transformers BertModel, PyTorch CPU": torch_features,
    }
    return _measure("all-MiniLM-L6-v2", runners, repeats, len(prompts), sum(map(len, rows)),
                    "transformers BertModel, PyTorch CPU")


def bench_smollm2(prompts: list[str], batch_size: int, repeats: int) -> list[dict]:
    import torch

    sys.path.insert(0, str(HERE))
    from lm_scoring import _torch_from_gguf

    from jaxrank import prompt_features
    from jaxrank.lm import load_model
    from jaxrank.lm.pipeline import ModelSide, truncate_left

    lm = load_model("smollm2-135m-instruct")
    side = ModelSide(lm, "encoder")
    rows = [truncate_left(side.prompt_ids(p), 256, side.bos) for p in prompts]
    pt = _torch_from_gguf(lm.path).model  # LlamaModel: last_hidden_state after the final norm

    def torch_features():
        out = np.zeros((len(rows), lm.config.hidden_size), np.float32)
        with torch.inference_mode():
            for idx, ids, mask in _torch_batches(rows, batch_size, side.pad):
                h = pt(input_ids=ids, attention_mask=mask).last_hidden_state
                last = mask.sum(1) - 1
                out[idx] = h[torch.arange(len(idx)), last].numpy()
        return out

    runners = {
        "jaxrank prompt_features (jit, buckets)": lambda: prompt_features(
            prompts, encoder=lm, batch_size=batch_size, max_length=256),
        "transformers LlamaModel, PyTorch CPU": torch_features,
    }
    return _measure("SmolLM2-135M-Instruct", runners, repeats, len(prompts), sum(map(len, rows)),
                    "transformers LlamaModel, PyTorch CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-smollm2", action="store_true")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    import warnings

    import jax
    import torch

    from jaxrank.lm.pipeline import TruncationWarning

    warnings.simplefilter("ignore", TruncationWarning)
    torch.set_num_threads(os.cpu_count() or 1)
    prompts = _prompts(args.prompts)
    rows = bench_minilm(prompts, args.batch_size, args.repeats)
    if not args.skip_smollm2:
        rows += bench_smollm2(prompts, args.batch_size, args.repeats)
    device = jax.devices()[0]
    machine = (f"{os.cpu_count()}-core CPU container (shared, loaded)" if device.platform == "cpu"
               else device.device_kind)
    for r in rows:
        r.update(batch_size=args.batch_size, machine=machine, jax=jax.__version__, torch=torch.__version__)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
