"""jaxrank's judge-budget simulation vs plain NumPy loops of the same algorithms.

Instance: the heteroscedastic Gaussian one of benchmarks/robin_hood_budget.py (K = 1,000 items, σ_i² log-uniform on
[0.01, 1]), B = 100,000 queries, 50 Monte-Carlo runs, checkpoints every 10,000 queries.

Compared, per allocator (uniform, robin, robin-hood):
  jaxrank        `allocation.simulate(..., num_runs=50)`: one lax.scan over the 100,000 steps, vmapped over runs;
                 compile time reported apart (first call minus a second call with a new key).
                 Wall and CPU (process) time are both recorded: on a shared, loaded machine the CPU-time ratio
                 is the steadier one.
  numpy-loop     what a user writes from the paper: for each run, for each step, compute every item's index,
                 argmax, draw, Welford update. Timed on --loop-runs runs and scaled linearly to 50 (labelled).
  numpy-vector   a careful NumPy version: one Python loop over steps with [runs, K] arrays, all runs at once,
                 index refreshed only for the queried items. Timed on all runs.
The error curves of jaxrank and numpy-vector (independent random streams) are compared checkpoint by checkpoint:
|difference of mean worst-case errors| / its standard error.
Then the sweep a user runs: 3 allocators × 5 budgets × 50 runs, one `simulate_sweep` call.

Usage:  python benchmarks/allocation.py            (full sizes, a few minutes on 2 CPU cores)
        python benchmarks/allocation.py --budget 20000 --loop-runs 1   (quick)
Writes benchmarks/results/allocation.csv and allocation_sweep.csv.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrank import allocation as A

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def instance(k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    means = rng.uniform(1.0, 5.0, k).astype(np.float32)
    var = np.exp(rng.uniform(np.log(0.01), np.log(1.0), k)).astype(np.float32)
    return means.astype(np.float64), var.astype(np.float64)


def _errors(est, means):
    e = est - means
    return np.abs(e).max(-1), np.abs(e).mean(-1), np.sqrt((e * e).mean(-1))


def gaussian_draw(means, var):
    """draw(i, rng) -> one score per entry of `i` from item i's N(mean_i, var_i)."""
    sd = np.sqrt(var)
    # A scalar draw for a scalar item (the loop's case) keeps the baseline as fast as written by hand.
    return lambda i, rng: means[i] + sd[i] * (rng.standard_normal() if np.ndim(i) == 0 else rng.standard_normal(np.shape(i)))


def pool_draw(pools):
    """draw(i, rng) -> one score per entry of `i`, drawn with replacement from item i's observed scores."""
    lengths = np.array([len(p) for p in pools])
    table = np.zeros((len(pools), lengths.max()))
    for j, p in enumerate(pools):
        table[j, : len(p)] = p
    def draw(i, rng):
        u = rng.random() if np.ndim(i) == 0 else rng.random(np.shape(i))
        return table[i, (u * lengths[i]).astype(np.int64)]

    return draw


def numpy_loop(allocator, means, var, budget, checkpoints, delta, rng, draw=None):
    """One run, the textbook way: every step recomputes every item's index."""
    k = means.size
    draw = draw or gaussian_draw(means, var)
    n = np.zeros(k)
    mean = np.zeros(k)
    m2 = np.zeros(k)
    w = math.ceil(4 * math.log(1 / delta))
    L = math.log(1 / delta)
    ck = set(checkpoints)
    wce = []
    for t in range(budget):
        if allocator == "uniform" or (allocator == "robin-hood" and t < w * k):
            i = t % k
        elif allocator == "robin":
            i = int(np.argmax(np.where(n == 0, np.inf, var / np.maximum(n, 1))))
        else:
            factor = 1 - 2 * np.sqrt(L / np.maximum(n, 1))
            ok = (n >= 2) & (factor > 0)
            var_hat = np.maximum(m2, 0) / np.maximum(n - 1, 1)
            index = np.where(ok, var_hat / np.where(ok, factor, 1) / np.maximum(n, 1), np.inf)
            i = int(np.argmax(index))
        x = draw(i, rng)
        n[i] += 1
        d = x - mean[i]
        mean[i] += d / n[i]
        m2[i] += d * (x - mean[i])
        if t + 1 in ck:
            wce.append(_errors(mean, means)[0])
    return np.array(wce)


def numpy_vector(allocator, means, var, budget, checkpoints, delta, runs, rng, draw=None):
    """All runs at once ([runs, K] arrays), one Python loop over steps, index refreshed for queried items only."""
    k = means.size
    draw = draw or gaussian_draw(means, var)
    n = np.zeros((runs, k))
    mean = np.zeros((runs, k))
    m2 = np.zeros((runs, k))
    w = math.ceil(4 * math.log(1 / delta))
    L = math.log(1 / delta)
    index = np.full((runs, k), np.inf)
    r = np.arange(runs)
    ck = set(checkpoints)
    wce = []
    for t in range(budget):
        if allocator == "uniform" or (allocator == "robin-hood" and t < w * k):
            i = np.full(runs, t % k)
        else:
            i = index.argmax(axis=1)
        x = draw(i, rng)
        ni = n[r, i] + 1
        n[r, i] = ni
        d = x - mean[r, i]
        mu = mean[r, i] + d / ni
        mean[r, i] = mu
        m2i = m2[r, i] + d * (x - mu)
        m2[r, i] = m2i
        if allocator == "robin":
            index[r, i] = var[i] / ni
        elif allocator == "robin-hood":
            factor = 1 - 2 * np.sqrt(L / ni)
            ok = (ni >= 2) & (factor > 0)
            var_hat = np.maximum(m2i, 0) / np.maximum(ni - 1, 1)
            index[r, i] = np.where(ok, var_hat / np.where(ok, factor, 1) / ni, np.inf)
        if t + 1 in ck:
            wce.append(_errors(mean, means)[0])
    return np.array(wce).T  # [runs, C]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--budget", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--loop-runs", type=int, default=2, help="runs timed for numpy-loop (scaled to --runs)")
    ap.add_argument("--delta", type=float, default=0.007)
    ap.add_argument("--allocators", default="uniform,robin,robin-hood")
    args = ap.parse_args()
    K, B, R = args.items, args.budget, args.runs
    means, var = instance(K)
    sampler = A.GaussianSampler(jnp.asarray(means, jnp.float32), jnp.asarray(var, jnp.float32))
    ck = [B * j // 10 for j in range(1, 11)]
    machine = (f"{platform.machine()}, {os.cpu_count()} CPUs visible, "
               f"jax {jax.__version__} ({jax.devices()[0].platform})")
    print(f"machine: {machine}; K={K} B={B} runs={R}; load average {os.getloadavg()[0]:.1f} at start")
    rows = []
    for a in args.allocators.split(","):
        t0 = time.perf_counter()
        jax.block_until_ready(A.simulate(jax.random.key(0), sampler, a, B, checkpoints=ck, num_runs=R))
        first = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        res = jax.block_until_ready(A.simulate(jax.random.key(1), sampler, a, B, checkpoints=ck, num_runs=R))
        jax_s, jax_cpu = time.perf_counter() - t0, time.process_time() - c0
        wj = np.asarray(res.wce, np.float64)

        rng = np.random.default_rng(1)
        t0, c0 = time.perf_counter(), time.process_time()
        loop_wce = [numpy_loop(a, means, var, B, ck, args.delta, rng) for _ in range(args.loop_runs)]
        loop_s = (time.perf_counter() - t0) / args.loop_runs * R
        loop_cpu = (time.process_time() - c0) / args.loop_runs * R

        t0 = time.perf_counter()
        wv = numpy_vector(a, means, var, B, ck, args.delta, R, np.random.default_rng(2))
        vec_s = time.perf_counter() - t0

        se = np.sqrt(wj.var(0, ddof=1) / R + wv.var(0, ddof=1) / R)
        z = np.abs(wj.mean(0) - wv.mean(0)) / se
        print(f"\n[{a}] jaxrank {jax_s:.2f} s (+ compile {first - jax_s:.2f} s) | numpy-loop {loop_s:.1f} s "
              f"(timed on {args.loop_runs} runs, scaled to {R}) -> {loop_s / jax_s:.0f}x | numpy-vector {vec_s:.1f} s "
              f"-> {vec_s / jax_s:.1f}x | CPU time (less sensitive to other processes): jaxrank {jax_cpu:.2f} s, "
              f"numpy-loop {loop_cpu:.1f} s -> {loop_cpu / jax_cpu:.0f}x")
        print(f"   final mean wce: jaxrank {wj[:, -1].mean():.4f}, numpy-vector {wv[:, -1].mean():.4f}, "
              f"numpy-loop {np.mean([w[-1] for w in loop_wce]):.4f} ({args.loop_runs} runs); "
              f"max |z| over {len(ck)} checkpoints {z.max():.2f}")
        rows.append(dict(allocator=a, items=K, budget=B, runs=R, jaxrank_s=jax_s, jaxrank_compile_s=first - jax_s,
                         numpy_loop_s_scaled=loop_s, numpy_loop_runs_timed=args.loop_runs,
                         numpy_vector_s=vec_s, speedup_vs_loop=loop_s / jax_s, speedup_vs_vector=vec_s / jax_s,
                         jaxrank_cpu_s=jax_cpu, numpy_loop_cpu_s_scaled=loop_cpu,
                         speedup_vs_loop_cpu=loop_cpu / jax_cpu, wce_jaxrank=wj[:, -1].mean(),
                         wce_numpy_vector=wv[:, -1].mean(), max_abs_z=z.max()))

    budgets = [B * j // 5 for j in range(1, 6)]
    t0 = time.perf_counter()
    jax.block_until_ready(A.simulate_sweep(jax.random.key(0), sampler, budgets, num_runs=R))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    sweep = jax.block_until_ready(A.simulate_sweep(jax.random.key(1), sampler, budgets, num_runs=R))
    sweep_s = time.perf_counter() - t0
    print(f"\nsweep 3 allocators x {len(budgets)} budgets x {R} runs: {sweep_s:.2f} s "
          f"(+ compile {first - sweep_s:.2f} s)")
    sweep_rows = []
    for a, r in sweep.items():
        s = A.error_summary(r)
        print(f"  {a:10s} " + "  ".join(f"{int(b)}: {m:.4f}" for b, m in zip(s["budget"], s["wce_mean"])))
        for j in range(len(s["budget"])):
            sweep_rows.append(dict(allocator=a, budget=int(s["budget"][j]), wce_mean=s["wce_mean"][j],
                                   wce_lower=s["wce_lower"][j], wce_upper=s["wce_upper"][j],
                                   mae_mean=s["mae_mean"][j], rmse_mean=s["rmse_mean"][j],
                                   sweep_s=sweep_s, sweep_compile_s=first - sweep_s))
    print(f"load average {os.getloadavg()[0]:.1f} at the end")

    RESULTS.mkdir(exist_ok=True)
    for name, data in (("allocation.csv", rows), ("allocation_sweep.csv", sweep_rows)):
        with (RESULTS / name).open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(data[0]))
            w.writeheader()
            for row in data:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    print(f"wrote {RESULTS / 'allocation.csv'} and allocation_sweep.csv")


if __name__ == "__main__":
    main()
