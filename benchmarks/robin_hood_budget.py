"""How much of uniform's budget does ROBIN-HOOD need to reach uniform's final worst-case error?

Issue 5's experiment: a heteroscedastic synthetic instance, K = 1,000 items, B = 100,000 judge queries, 50
Monte-Carlo runs. Uniform (round robin) spends B; we find the smallest budget b at which ROBIN-HOOD's mean
worst-case error max_i |s_i - ŝ_i| falls to uniform's final mean worst-case error (linear interpolation between
checkpoints every B/100 queries), and report b / B with a 95 % bootstrap interval (runs resampled, the same run
indices for both allocators, which share their per-item score streams). ROBIN (variances known) is shown as the
oracle. Also the batched mode: ROBIN-HOOD choosing m items per step.

Instances:
  gaussian: scores N(μ_i, σ_i²), μ_i ~ U(1, 5), σ_i² log-uniform on [0.01, 1] (σ from 0.1 to 1).
  rubric:   integer 1-5 judge scores (CategoricalSampler.from_moments), μ_i ~ U(1.5, 4.5), σ_i² log-uniform on
            [0.05, 1.5] clipped to what the rubric allows.

Usage:
  python benchmarks/robin_hood_budget.py                 # full: K=1000, B=100000, 50 runs, both instances
  python benchmarks/robin_hood_budget.py --items 200 --budget 20000 --runs 20   # quick
Writes benchmarks/results/robin_hood_budget.csv (summary), robin_hood_budget_curves.csv and, with --figure,
a PNG of the curves.
"""

from __future__ import annotations

import argparse
import csv
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrank import allocation as A

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def make_instance(name: str, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    if name == "gaussian":
        means = rng.uniform(1.0, 5.0, k)
        var = np.exp(rng.uniform(np.log(0.01), np.log(1.0), k))
        return A.GaussianSampler(jnp.asarray(means, jnp.float32), jnp.asarray(var, jnp.float32))
    if name == "rubric":
        means = rng.uniform(1.5, 4.5, k)
        var = np.exp(rng.uniform(np.log(0.05), np.log(1.5), k))
        f = means - np.floor(means)
        var = np.clip(var, f * (1 - f) + 1e-3, (means - 1) * (5 - means) - 1e-3)
        return A.CategoricalSampler.from_moments(means, var)
    raise ValueError(name)


def budget_to_reach(budgets: np.ndarray, curve: np.ndarray, target: float) -> float:
    """Smallest budget where the (interpolated) curve reaches `target`; inf if it never does."""
    below = np.nonzero(curve <= target)[0]
    if below.size == 0:
        return np.inf
    j = below[0]
    if j == 0:
        return float(budgets[0])
    b0, b1, c0, c1 = budgets[j - 1], budgets[j], curve[j - 1], curve[j]
    return float(b0 + (c0 - target) / (c0 - c1) * (b1 - b0))


def fraction_with_interval(budgets, wce_uniform, wce_other, total, *, boot=2000, seed=0):
    point = budget_to_reach(budgets, wce_other.mean(0), wce_uniform[:, -1].mean()) / total
    rng = np.random.default_rng(seed)
    runs = wce_uniform.shape[0]
    draws = []
    for _ in range(boot):
        idx = rng.integers(0, runs, runs)
        draws.append(budget_to_reach(budgets, wce_other[idx].mean(0), wce_uniform[idx, -1].mean()) / total)
    lo, hi = np.percentile(np.asarray(draws), [2.5, 97.5])
    return point, lo, hi


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--budget", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--delta", type=float, default=0.007)
    ap.add_argument("--instances", default="gaussian,rubric")
    ap.add_argument("--batches", default="1,10,100,500", help="batch sizes for robin-hood's batched mode")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--figure", help="write a PNG of the gaussian instance's curves here")
    args = ap.parse_args()

    K, B, R = args.items, args.budget, args.runs
    budgets = [B * j // 100 for j in range(1, 101) if B * j // 100 >= K]
    summary, curves_rows = [], []
    print(f"machine: {platform.processor() or platform.machine()}, {jax.devices()[0].platform}, "
          f"jax {jax.__version__}; K={K} B={B} runs={R} delta={args.delta}")
    for inst in args.instances.split(","):
        sampler = make_instance(inst, K, args.seed)
        t0 = time.perf_counter()
        out = A.simulate_sweep(jax.random.key(args.seed), sampler, budgets, num_runs=R, delta=args.delta)
        jax.block_until_ready(out)
        secs = time.perf_counter() - t0
        bud = np.asarray(out["uniform"].budgets)
        wce = {a: np.asarray(r.wce, np.float64) for a, r in out.items()}
        var = np.asarray(sampler.variances, np.float64)
        ideal = var.mean() / var.max()  # the asymptotic budget ratio of robin vs uniform (n_i ∝ σ_i²)
        print(f"\n[{inst}] 3 allocators x {len(bud)} checkpoints x {R} runs in {secs:.1f} s (incl. compile); "
              f"uniform final wce {wce['uniform'][:, -1].mean():.4f}; mean σ²/max σ² = {ideal:.3f}")
        for a in ("robin-hood", "robin"):
            f, lo, hi = fraction_with_interval(bud, wce["uniform"], wce[a], B)
            print(f"  {a:10s} needs {f:6.1%} of uniform's budget [95% bootstrap {lo:.1%}, {hi:.1%}]; "
                  f"its final wce {wce[a][:, -1].mean():.4f}")
            summary.append(dict(instance=inst, allocator=a, batch=1, fraction=f, fraction_lower=lo,
                                fraction_upper=hi, final_wce_mean=wce[a][:, -1].mean(),
                                uniform_final_wce_mean=wce["uniform"][:, -1].mean()))
        for a in wce:
            lo_q, hi_q = np.percentile(wce[a], [2.5, 97.5], axis=0)
            for j, b in enumerate(bud):
                curves_rows.append(dict(instance=inst, allocator=a, batch=1, budget=int(b),
                                        wce_mean=wce[a][:, j].mean(), wce_lower=lo_q[j], wce_upper=hi_q[j]))
        # Batched mode: the same index, m items per step.
        for m in [int(x) for x in args.batches.split(",") if int(x) > 1]:
            bm = [b for b in bud if b % m == 0]
            res = A.simulate(jax.random.key(args.seed), sampler, "robin-hood", B, checkpoints=bm,
                             batch_size=m, num_runs=R, delta=args.delta)
            wm = np.asarray(res.wce, np.float64)
            keep = np.isin(bud, bm)
            f, lo, hi = fraction_with_interval(np.asarray(bm), wce["uniform"][:, keep], wm, B)
            print(f"  robin-hood batch {m:4d}: needs {f:6.1%} [{lo:.1%}, {hi:.1%}]; final wce "
                  f"{wm[:, -1].mean():.4f} (batch 1: {wce['robin-hood'][:, -1].mean():.4f})")
            summary.append(dict(instance=inst, allocator="robin-hood", batch=m, fraction=f, fraction_lower=lo,
                                fraction_upper=hi, final_wce_mean=wm[:, -1].mean(),
                                uniform_final_wce_mean=wce["uniform"][:, -1].mean()))
            lo_q, hi_q = np.percentile(wm, [2.5, 97.5], axis=0)
            for j, b in enumerate(bm):
                curves_rows.append(dict(instance=inst, allocator="robin-hood", batch=m, budget=int(b),
                                        wce_mean=wm[:, j].mean(), wce_lower=lo_q[j], wce_upper=hi_q[j]))
        if args.figure and inst == "gaussian":
            from jaxrank.plots import plot_budget_curves

            curves = {}
            for a in wce:
                lo_q, hi_q = np.percentile(wce[a], [2.5, 97.5], axis=0)
                curves[a] = dict(budget=bud, wce_mean=wce[a].mean(0), wce_lower=lo_q, wce_upper=hi_q)
            plot_budget_curves(curves, path=args.figure, force=True,
                               title=f"Gaussian, log-uniform σ² on [0.01, 1]: K={K}, {R} runs")

    RESULTS.mkdir(exist_ok=True)
    with (RESULTS / "robin_hood_budget.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]))
        w.writeheader()
        for row in summary:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    with (RESULTS / "robin_hood_budget_curves.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(curves_rows[0]))
        w.writeheader()
        for row in curves_rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    print(f"\nwrote {RESULTS / 'robin_hood_budget.csv'} and robin_hood_budget_curves.csv")


if __name__ == "__main__":
    main()
