"""Teacher-forced scoring of a model pair sharded over a device mesh vs one device (a correctness-and-
overhead figure on CPU).

SmolLM2-135M-Instruct against a second copy of itself with perturbed weights (same tokenizer, so token
mode: KL and cross-entropy over the whole 49,152-entry vocabulary at every completion position), scored
by `jaxrank.lm.pipeline.token_scores` under `jit` — the function `prioritize_prompts` runs per batch —
on one device and on meshes of 8 faked CPU devices (`--xla_force_host_platform_device_count=8`, set
before jax is imported): `fsdp=8`, `fsdp=4,tensor=2`, `fsdp=2,tensor=4` (a replicated `data=8` layout
would hold eight copies of both models in the host's RAM: 8.6 GB here, so it is left out).
Both the materialised and the fused head. Every layout must give the one-device scores (max relative
difference printed and written); the time is the median of interleaved repeats (each layout once per
round, paired with the one-device run), compile apart.

On one CPU the 8 "devices" share the same cores, so a mesh cannot be faster here: the figure measures
what the partitioned program costs over the plain one (collectives, resharding, smaller matmuls), not
a speed-up. On real accelerators each device has its own compute and memory.

Run: `flock /tmp/jaxrank-bench.lock python benchmarks/lm_sharded.py` (defaults: batch 8 x 128 tokens,
64 scored positions per row, 5 repeats). Writes benchmarks/results/lm_sharded.csv.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import csv  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "lm_sharded.csv"
LAYOUTS = {
    "one device": None,
    "fsdp=8": dict(fsdp=8),
    "fsdp=4,tensor=2": dict(fsdp=4, tensor=2),
    "fsdp=2,tensor=4": dict(fsdp=2, tensor=4),
}


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--scored", type=int, default=64, help="completion positions scored per row")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    from jaxrank.lm import load_model
    from jaxrank.lm.pipeline import token_scores
    from jaxrank.lm.sharding import make_model_mesh

    load_before = _uptime()
    lm = load_model("smollm2-135m-instruct")
    rng = np.random.default_rng(0)
    weights = lm.model.weights()
    other = type(lm.model)(lm.config, weights={k: w * (1 + 0.05 * rng.standard_normal(w.shape).astype(np.float32))
                                               for k, w in weights.items()})
    ids = rng.integers(3, lm.vocab_size, size=(args.batch, args.seq)).astype(np.int32)
    mask = np.ones_like(ids, bool)
    at = np.broadcast_to(np.arange(args.seq - args.scored - 1, args.seq - 1, dtype=np.int32), (args.batch, args.scored))
    count = np.ones((args.batch, args.scored), bool)
    tokens = args.batch * args.scored

    def build(name, sizes):
        """The two heads' jitted scorers of the pair laid out as `sizes`, compiled, with their outputs."""
        mesh = None if sizes is None else make_model_mesh(**sizes)
        a, b = (lm.model, other) if mesh is None else (lm.model.with_mesh(mesh), other.with_mesh(mesh))
        ga, sa = nnx.split(a)
        gb, sb = nnx.split(b)
        arrays = (ids, mask, at, ids, mask, at, count)
        if mesh is not None:  # rows over the batch axes, as prioritize_prompts places them
            rows_spec = jax.sharding.PartitionSpec(("data", "fsdp"))
            arrays = tuple(jax.device_put(x, jax.sharding.NamedSharding(mesh, rows_spec)) for x in arrays)
        built = {}
        for fused in (False, True):
            fn = jax.jit(lambda sa, sb, *x, fused=fused: token_scores(
                nnx.merge(ga, sa), nnx.merge(gb, sb), *x, fused=fused))
            t = time.perf_counter()
            out = jax.tree.map(np.asarray, fn(sa, sb, *arrays))
            compile_s = time.perf_counter() - t
            head = "fused" if fused else "materialised"
            print(f"compiled {name}, {head} head: {compile_s:.1f} s", flush=True)
            built[head] = (lambda fn=fn: jax.block_until_ready(fn(sa, sb, *arrays)), out, compile_s)
        return built

    def timed(run):
        t = time.perf_counter()
        run()
        return time.perf_counter() - t

    # Only the one-device pair and one sharded layout are alive at a time (every copy sits in the
    # host's RAM); each layout's repeats are interleaved with the one-device ones, so that the shared
    # machine's load changes hit both alike, and its ratio is taken against those.
    base = build("one device", None)
    rows = []
    for name, sizes in LAYOUTS.items():
        if sizes is None:
            continue
        layout = build(name, sizes)
        for head, (run, out, compile_s) in layout.items():
            base_run, base_out, base_compile = base[head]
            t_base, t_layout = [], []
            for _ in range(args.repeats):
                t_base.append(timed(base_run))
                t_layout.append(timed(run))
            diff = max(float(np.max(np.abs(out[m] - base_out[m]) / np.maximum(np.abs(base_out[m]), 1e-6)))
                       for m in ("kl", "cross_entropy"))
            for label, times, c, d in ((f"one device (paired with {name})", t_base, base_compile, 0.0),
                                       (name, t_layout, compile_s, diff)):
                rows.append(dict(layout=label, head=head, compile_s=c, time_s=statistics.median(times),
                                 vs_one_device=statistics.median(t_base) / statistics.median(times),
                                 max_rel_diff_vs_one_device=d, uptime=_uptime()))
        del layout
    load_after = _uptime()
    for r in rows:
        r["tokens_per_s"] = tokens / r["time_s"]
        r.update(batch=args.batch, seq=args.seq, scored_tokens=tokens, vocab=lm.vocab_size, dtype="float32",
                 device=f"{os.cpu_count()}-core CPU ({platform.machine()}), 8 faked devices",
                 uptime_before=load_before, uptime_after=load_after)
    fields = ["layout", "head", "batch", "seq", "scored_tokens", "vocab", "dtype", "compile_s", "time_s",
              "tokens_per_s", "vs_one_device", "max_rel_diff_vs_one_device", "device", "uptime", "uptime_before",
              "uptime_after"]
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items() if k in fields})
    for r in rows:
        print(f"{r['layout']:<38} {r['head']:<13} {r['tokens_per_s']:8.0f} tok/s  x{r['vs_one_device']:.2f} vs one "
              f"device  max rel diff {r['max_rel_diff_vs_one_device']:.1e}")
    print(f"load: before {load_before!r}; after {load_after!r}; wrote {out}")


if __name__ == "__main__":
    main()
