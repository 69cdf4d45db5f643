"""jaxrank's exact routing LP vs what a user would run instead: scipy.optimize.linprog (HiGHS) per prompt,
and one stacked HiGHS problem for the budget on the average cost.

Instance: P prompts, M models, per-prompt coefficients beta ~ N(0, 1.5^2), costs log-uniform on [0.01, 10],
budget C at the median cost (binding for about half the models).

Compared:
  route            `jaxrank.route` (win probabilities + exact two-model LP, vmapped over prompts), jitted;
                   compile time reported apart (first call minus the best of the timed calls).
  linprog-loop     `linprog(method="highs")` once per prompt on the same win rates (the per-prompt LP).
  route-average    `jaxrank.route_average_budget` (budget on the average cost: hull-edge greedy).
  linprog-stacked  one HiGHS LP with P*M variables, P equalities (sparse) and one budget row.
The objectives are compared (max |difference|): they must agree to 1e-6.

Usage:  python benchmarks/routing.py                      (P=1000, M=20; under a minute on 2 CPU cores)
        python benchmarks/routing.py --prompts 10000 --models 64
Writes benchmarks/results/routing.csv.
"""

from __future__ import annotations

import argparse
import csv
import pathlib
import platform
import time

import jax
import numpy as np
from scipy import sparse
from scipy.optimize import linprog

import jaxrank

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def _best_of(fn, repeats):
    times = []
    out = None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=1000)
    ap.add_argument("--models", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    p, m = args.prompts, args.models
    beta = rng.normal(0, 1.5, (p, m)).astype(np.float32)
    costs = np.exp(rng.uniform(np.log(0.01), np.log(10.0), m)).astype(np.float32)
    budget = float(np.median(costs))

    t0 = time.perf_counter()
    jax.block_until_ready(jaxrank.route(beta, costs, budget))
    first = time.perf_counter() - t0
    t_route, res = _best_of(lambda: jaxrank.route(beta, costs, budget), args.repeats)
    w = np.asarray(res.win_prob, np.float64)
    c64 = costs.astype(np.float64)

    t0 = time.perf_counter()
    ref = np.empty(p)
    for i in range(p):
        out = linprog(-w[i], A_ub=c64[None], b_ub=[budget], A_eq=np.ones((1, m)), b_eq=[1.0],
                      bounds=[(0, None)] * m, method="highs")
        ref[i] = -out.fun
    t_loop = time.perf_counter() - t0
    err = float(np.abs(np.sum(np.asarray(res.policy, np.float64) * w, -1) - ref).max())

    t0 = time.perf_counter()
    jax.block_until_ready(jaxrank.route_average_budget(beta, costs, budget))
    first_avg = time.perf_counter() - t0
    t_avg, avg = _best_of(lambda: jaxrank.route_average_budget(beta, costs, budget), args.repeats)
    t0 = time.perf_counter()
    a_eq = sparse.kron(sparse.eye(p), np.ones((1, m)), format="csr")  # sparse, as a careful user would
    out = linprog(-(w / p).reshape(-1), A_ub=np.tile(c64 / p, p)[None], b_ub=[budget], A_eq=a_eq, b_eq=np.ones(p),
                  bounds=[(0, None)] * (p * m), method="highs")
    t_stacked = time.perf_counter() - t0
    err_avg = abs(float(np.mean(np.sum(np.asarray(avg.policy, np.float64) * w, -1))) + out.fun)

    rows = [
        dict(method="route", prompts=p, models=m, seconds=t_route, compile_s=first - t_route, max_obj_diff=err,
             ratio_vs_jaxrank=1.0),
        dict(method="linprog-loop", prompts=p, models=m, seconds=t_loop, compile_s=0.0, max_obj_diff=0.0,
             ratio_vs_jaxrank=t_loop / t_route),
        dict(method="route-average", prompts=p, models=m, seconds=t_avg, compile_s=first_avg - t_avg,
             max_obj_diff=err_avg, ratio_vs_jaxrank=1.0),
        dict(method="linprog-stacked", prompts=p, models=m, seconds=t_stacked, compile_s=0.0, max_obj_diff=0.0,
             ratio_vs_jaxrank=t_stacked / t_avg),
    ]
    device = f"{jax.devices()[0].platform} ({platform.processor() or platform.machine()})"
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "routing.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*rows[0], "device"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "device": device})
    for row in rows:
        print(f"{row['method']:16s} {row['seconds'] * 1e3:10.2f} ms  compile {row['compile_s']:.2f} s  "
              f"x{row['ratio_vs_jaxrank']:.1f}  max |obj diff| {row['max_obj_diff']:.2e}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
