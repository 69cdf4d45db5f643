"""Benchmark: per-position KL + cross-entropy of two logit tensors, jaxrank vs what users use instead.

Every method computes both KL(P ‖ Q) and H(P, Q) for each position of `[batch, seq, vocab]` logits:

- jaxrank `divergences(..., metrics=("kl", "cross_entropy"))` with each implementation (jitted):
  reference, blockwise, vocab_sharded (the vocabulary split over the 2 host devices this script
  fakes, one per core);
- the public `jaxrank.score_pairs(a, b, mask)` call as a user makes it (not jitted by the caller:
  its value checks, host transfers and warnings included), and the same call under the caller's
  own `jax.jit` (kernel + masked mean in one compiled program, no host checks): the goal is
  score_pairs ≤ 1.1× the jitted one;
- floor: one fused jitted pass computing Σ exp(x) over both inputs (the exp-bound minimum work);
- PyTorch CPU eager: `F.kl_div` on `log_softmax` plus cross-entropy from the same log-softmaxes,
  in float32 (inputs upcast, as the kernels do); a row-chunked variant (256 rows at a time);
  `torch.compile` of the eager function;
- NumPy/SciPy: `scipy.special.log_softmax` and `rel_entr`, 256 rows at a time, float32.

Timing is interleaved: within a worker every method runs once per round, round after round, and
the two workers themselves alternate `--rounds` times; each method's figure is its best call. The
load average is recorded with every row (a loaded machine is no evidence of a ratio).

Reported per method: ms (best call), GB/s of logits read (both inputs, input dtype),
speed ratio to eager PyTorch and to the floor (> 1 means faster), and peak memory: XLA's
`compiled.memory_analysis()` temporaries for jaxrank, the peak RSS growth of a fresh worker process
for the others (their inputs are excluded in both). The JAX methods run in one worker process,
the others in another (peak RSS is reset between methods through /proc/self/clear_refs).

    python benchmarks/divergence.py            # quick: small batch, a few minutes on 2 cores
    python benchmarks/divergence.py --full     # the issue's shapes [8,512,32000], [4,1024,262144]

Writes benchmarks/results/divergence.csv and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
QUICK_SHAPES = ["1x512x32000", "1x64x262144"]
FULL_SHAPES = ["8x512x32000", "4x1024x262144"]
JAX_METHODS = ["floor", "jaxrank-reference", "jaxrank-blockwise", "jaxrank-vocab_sharded", "jaxrank-score_pairs",
               "jaxrank-score_pairs-jit"]
OTHER_METHODS = ["torch-eager", "torch-chunked", "torch-compile", "numpy-scipy"]
CHUNK_ROWS = 256


def parse_shape(text: str) -> tuple[int, int, int]:
    b, s, v = (int(t) for t in text.lower().split("x"))
    return b, s, v


def make_inputs(shape, dtype_name: str):
    """The same float32 N(0, 2²) logits in every process (seeded), cast to the dtype."""
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for _ in range(2):
        x = rng.standard_normal(shape, dtype=np.float32)
        x *= 2.0
        out.append(x)
    return out  # float32 NumPy; each method casts to its framework's dtype


def rss_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def rss_peak() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def interleaved_best(fns: dict, repeats: int, min_total_s: float = 1.0) -> dict:
    """Best time (ms) of each function, calling them in turn, round after round: at least `repeats`
    rounds, and more while a round adds up to under `min_total_s` (at most 50). On a shared machine
    the minimum is the least disturbed call, and interleaving exposes every method to the same load."""
    times = {name: [] for name in fns}
    rounds = 0
    while rounds < repeats or (sum(min(t) for t in times.values()) * rounds < min_total_s and rounds < 50):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
        rounds += 1
    return {name: min(t) * 1e3 for name, t in times.items()}


# ----------------------------------------------------------------------------------------------
# workers
# ----------------------------------------------------------------------------------------------


def jax_worker(shape, dtype_name, repeats, methods):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    import jax
    import jax.numpy as jnp

    sys.path.insert(0, str(REPO))
    from jaxrank import divergences, score_pairs

    dtype = jnp.bfloat16 if dtype_name == "bf16" else jnp.float32
    a, b = (jax.device_put(jnp.asarray(x, dtype), jax.devices()[0]) for x in make_inputs(shape, dtype_name))
    # Every position counted but the last of each sequence (a mask, as a tokenizer's attention mask).
    mask = jax.device_put(jnp.arange(shape[1])[None, :] < jnp.full((shape[0], 1), shape[1] - 1), jax.devices()[0])
    calls, info = {}, {}
    for method in methods:
        xa, xb = a, b
        note = ""
        if method == "floor":
            def fn(x, y):
                return (jnp.sum(jnp.exp(x.astype(jnp.float32)), axis=-1)
                        + jnp.sum(jnp.exp(y.astype(jnp.float32)), axis=-1))
        elif method.startswith("jaxrank-score_pairs"):
            def fn(x, y):
                out = score_pairs(x, y, mask)
                return out["kl"], out["cross_entropy"]
            if method == "jaxrank-score_pairs":
                # The public call as a user makes it: nothing to compile beforehand; warm it up once.
                jax.block_until_ready(fn(xa, xb))
                calls[method] = (lambda fn=fn: jax.block_until_ready(fn(a, b)))
                info[method] = {"peak_bytes": "", "memory_kind": "", "compile_s": "", "note": "public call, not jitted"}
                continue
            note = "score_pairs under the caller's jax.jit"
        else:
            impl = method.split("-", 1)[1]
            kw = {}
            if impl == "vocab_sharded":
                kw["mesh"] = jax.make_mesh((2,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
                # The layout a tensor-parallel LM head produces: vocabulary split over the devices.
                spec = jax.sharding.NamedSharding(kw["mesh"], jax.sharding.PartitionSpec(None, None, "vocab"))
                xa, xb = jax.device_put(a, spec), jax.device_put(b, spec)
                note = "2 fake host devices"

            def fn(x, y, impl=impl, kw=kw):
                out = divergences(x, y, metrics=("kl", "cross_entropy"), implementation=impl, **kw)
                return out["kl"], out["cross_entropy"]

        t0 = time.perf_counter()
        compiled = jax.jit(fn).lower(xa, xb).compile()
        compile_s = time.perf_counter() - t0
        jax.block_until_ready(compiled(xa, xb))
        calls[method] = (lambda c=compiled, xa=xa, xb=xb: jax.block_until_ready(c(xa, xb)))
        info[method] = {"peak_bytes": compiled.memory_analysis().temp_size_in_bytes, "memory_kind": "xla-temp",
                        "compile_s": round(compile_s, 2), "note": note}
    best = interleaved_best(calls, repeats)
    return [{"method": m, "ms": best[m], **info[m]} for m in methods]


def torch_fns():
    import torch
    import torch.nn.functional as F

    def eager(x, y):
        lp = F.log_softmax(x.float(), dim=-1)
        lq = F.log_softmax(y.float(), dim=-1)
        kl = F.kl_div(lq, lp, reduction="none", log_target=True).sum(-1)
        ce = -(lp.exp() * lq).sum(-1)
        return kl, ce

    def chunked(x, y):
        xs, ys = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        kls, ces = [], []
        for i in range(0, xs.shape[0], CHUNK_ROWS):
            kl, ce = eager(xs[i:i + CHUNK_ROWS], ys[i:i + CHUNK_ROWS])
            kls.append(kl)
            ces.append(ce)
        return torch.cat(kls).reshape(x.shape[:-1]), torch.cat(ces).reshape(x.shape[:-1])

    return torch, eager, chunked


def other_worker(shape, dtype_name, repeats, methods):
    """All non-JAX methods in one process, interleaved; peak RSS growth is measured per method first."""
    a, b = make_inputs(shape, dtype_name)
    calls, info = {}, {}

    def add(method, fn, note="", compile_s=""):
        fn()
        base = rss_now()
        reset_peak()
        fn()
        calls[method] = fn
        info[method] = {"peak_bytes": max(rss_peak() - base, 0), "memory_kind": "rss", "compile_s": compile_s,
                        "note": note}

    if "numpy-scipy" in methods:
        import numpy as np
        from scipy.special import log_softmax, rel_entr

        def run():
            xs, ys = a.reshape(-1, shape[-1]), b.reshape(-1, shape[-1])
            kl = np.empty(xs.shape[0], np.float32)
            ce = np.empty(xs.shape[0], np.float32)
            for i in range(0, xs.shape[0], CHUNK_ROWS):
                lp = log_softmax(xs[i:i + CHUNK_ROWS], axis=-1)
                lq = log_softmax(ys[i:i + CHUNK_ROWS], axis=-1)
                p = np.exp(lp)
                kl[i:i + CHUNK_ROWS] = rel_entr(p, np.exp(lq)).sum(-1)
                ce[i:i + CHUNK_ROWS] = -(p * lq).sum(-1)
            return kl, ce

        add("numpy-scipy", run, "NumPy has no bfloat16: same values, float32" if dtype_name == "bf16" else "")

    failed = []
    torch_methods = [m for m in methods if m.startswith("torch")]
    if torch_methods:
        torch, eager, chunked = torch_fns()
        torch.set_grad_enabled(False)
        dt = torch.bfloat16 if dtype_name == "bf16" else torch.float32
        x, y = (torch.from_numpy(v).to(dt) for v in (a, b))
        for method in torch_methods:
            if method == "torch-compile":
                try:
                    fn = torch.compile(eager, dynamic=False)
                    t0 = time.perf_counter()
                    fn(x, y)
                    compile_s = round(time.perf_counter() - t0, 2)
                except Exception as err:  # the point is to report that it does not work here
                    failed.append({"method": method, "ms": float("nan"), "peak_bytes": "", "memory_kind": "",
                                   "compile_s": "", "note": f"torch.compile failed: {type(err).__name__}: "
                                   f"{str(err)[:120]}"})
                    continue
                add(method, lambda fn=fn: fn(x, y), "inductor, default mode", compile_s)
            else:
                f = eager if method == "torch-eager" else chunked
                add(method, lambda f=f: f(x, y), f"{CHUNK_ROWS} rows a chunk" if f is chunked else "")
    best = interleaved_best(calls, repeats)
    return [{"method": m, "ms": best[m], **info[m]} for m in calls] + failed


# ----------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------


def run_worker(kind, shape_text, dtype_name, repeats, methods):
    cmd = [sys.executable, __file__, "--worker", kind, "--shape", shape_text, "--dtype", dtype_name,
           "--repeats", str(repeats), "--methods", ",".join(methods)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        return [{"method": m, "ms": float("nan"), "peak_bytes": "", "memory_kind": "", "compile_s": "",
                 "note": f"worker failed (rc {proc.returncode}): {tail[0][:160]}"} for m in methods]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="the issue's shapes (needs ~20 GB free for f32 262144)")
    ap.add_argument("--shapes", help="comma-separated BxSxV, overriding --full/quick")
    ap.add_argument("--dtypes", default="bf16,f32")
    ap.add_argument("--methods", default=",".join(JAX_METHODS + OTHER_METHODS))
    ap.add_argument("--repeats", type=int, default=3, help="rounds of calls within a worker (at least)")
    ap.add_argument("--rounds", type=int, default=2, help="times the JAX and the other worker alternate")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "divergence.csv"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--shape", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    methods = args.methods.split(",")
    if args.worker:
        shape = parse_shape(args.shape)
        if args.worker == "jax":
            res = jax_worker(shape, args.dtype, args.repeats, methods)
        else:
            res = other_worker(shape, args.dtype, args.repeats, methods)
        print(json.dumps(res))
        return 0

    shapes = args.shapes.split(",") if args.shapes else (FULL_SHAPES if args.full else QUICK_SHAPES)
    rows = []
    for shape_text in shapes:
        shape = parse_shape(shape_text)
        for dtype_name in args.dtypes.split(","):
            itemsize = 2 if dtype_name == "bf16" else 4
            in_bytes = 2 * shape[0] * shape[1] * shape[2] * itemsize
            jm = [m for m in methods if m in JAX_METHODS]
            om = [m for m in methods if m in OTHER_METHODS]
            load_start = os.getloadavg()[0]
            best: dict[str, dict] = {}
            for _ in range(args.rounds):  # alternate the workers; keep each method's best call
                for kind, ms_ in (("jax", jm), ("other", om)):
                    for r in run_worker(kind, shape_text, dtype_name, args.repeats, ms_) if ms_ else []:
                        old = best.get(r["method"])
                        if old is None or not (old["ms"] <= r["ms"]):
                            best[r["method"]] = r
            res = [best[m] for m in jm + om if m in best]
            load = f"{load_start:.1f}-{os.getloadavg()[0]:.1f}"
            by = {r["method"]: r for r in res}
            jit_ms = by.get("jaxrank-score_pairs-jit", {}).get("ms", float("nan"))
            torch_ms = by.get("torch-eager", {}).get("ms", float("nan"))
            compile_ms = by.get("torch-compile", {}).get("ms", float("nan"))
            floor_ms = by.get("floor", {}).get("ms", float("nan"))
            for r in res:
                ms = r["ms"]
                peak = r["peak_bytes"]
                rows.append({
                    "shape": shape_text, "dtype": dtype_name, "method": r["method"],
                    "ms": round(ms, 1), "gb_per_s": round(in_bytes / ms / 1e6, 2) if ms == ms else "",
                    "x_vs_torch_eager": round(torch_ms / ms, 2) if ms == ms and torch_ms == torch_ms else "",
                    "x_vs_torch_compile": round(compile_ms / ms, 2) if ms == ms and compile_ms == compile_ms else "",
                    "x_of_floor": round(floor_ms / ms, 2) if ms == ms and floor_ms == floor_ms else "",
                    "x_of_score_pairs_jit": round(ms / jit_ms, 2) if r["method"] == "jaxrank-score_pairs" else "",
                    "peak_mb": round(peak / 1e6, 1) if peak != "" else "",
                    "peak_pct_of_input": round(100 * peak / in_bytes, 2) if peak != "" else "",
                    "memory_kind": r["memory_kind"], "compile_s": r["compile_s"], "note": r["note"],
                    "load_avg_1m": load,
                })
                print(f"{shape_text:>14} {dtype_name:>4} {r['method']:>24} {rows[-1]['ms']:>10} ms", flush=True)

    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    machine = f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}"
    print(f"\nmachine: {machine}; load average at end: {os.getloadavg()[0]:.1f}")
    cols = ["shape", "dtype", "method", "ms", "gb_per_s", "x_vs_torch_eager", "x_vs_torch_compile", "x_of_floor",
            "x_of_score_pairs_jit", "peak_mb", "peak_pct_of_input", "memory_kind", "note", "load_avg_1m"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
