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
Every method is timed the same way: the best of `--repeats` calls (jaxrank after one compiling call).

max_obj_diff: per-prompt LP, max over prompts of |objective - exact optimum|, the optimum by a float64
NumPy enumeration of the LP's vertices (every affordable model, every affordable/dearer pair spending the
budget exactly); average budget, |objective - the better of the two methods' objectives|. Objectives are
recomputed in float64 from each method's returned policy / x on the same win rates (HiGHS's reported
`fun` is not used). max_budget_excess: how far the returned policy's (average) cost exceeds the budget.

Usage:  python benchmarks/routing.py                      (P=1000, M=20; about a minute on 2 CPU cores)
        python benchmarks/routing.py --prompts 10000 --models 64 --out /tmp/routing-big.csv
The default configuration writes benchmarks/results/routing.csv (the committed table); any other
configuration writes only to `--out` (and prints the table either way).
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
DEFAULTS = dict(prompts=1000, models=20, repeats=5, seed=0)


def _best_of(fn, repeats):
    times = []
    out = None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t)
    return min(times), out


def _exact_per_prompt(w, costs, budget):
    """float64 optimum of max pi.w s.t. pi.c <= C, pi in the simplex, for every row of w [P, M]: the best
    vertex (affordable model alone, or an affordable i mixed with a dearer j spending exactly C)."""
    ci, cj = costs[:, None], costs[None, :]
    pure = np.where(costs[None, :] <= budget, w, -np.inf).max(-1)
    ok = (ci <= budget) & (cj > budget)
    s = np.where(ok, (budget - ci) / np.where(ok, cj - ci, 1.0), 0.0)
    pair = np.where(ok[None], w[:, :, None] + s[None] * (w[:, None, :] - w[:, :, None]), -np.inf)
    return np.maximum(pure, pair.reshape(len(w), -1).max(-1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=DEFAULTS["prompts"])
    ap.add_argument("--models", type=int, default=DEFAULTS["models"])
    ap.add_argument("--repeats", type=int, default=DEFAULTS["repeats"])
    ap.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    ap.add_argument("--out", type=pathlib.Path, default=None,
                    help="CSV to write (default: benchmarks/results/routing.csv, for the default configuration only)")
    args = ap.parse_args()
    is_default = all(getattr(args, k) == v for k, v in DEFAULTS.items())
    out_path = args.out if args.out is not None else (RESULTS / "routing.csv" if is_default else None)
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

    def linprog_loop():
        xs = np.empty((p, m))
        for i in range(p):
            out = linprog(-w[i], A_ub=c64[None], b_ub=[budget], A_eq=np.ones((1, m)), b_eq=[1.0],
                          bounds=[(0, None)] * m, method="highs")
            xs[i] = out.x
        return xs

    t_loop, x_loop = _best_of(linprog_loop, args.repeats)
    exact = _exact_per_prompt(w, c64, budget)
    pol = np.asarray(res.policy, np.float64)
    err = float(np.abs(np.sum(pol * w, -1) - exact).max())
    err_loop = float(np.abs(np.sum(x_loop * w, -1) - exact).max())
    excess = float(max(0.0, (pol @ c64 - budget).max()))
    excess_loop = float(max(0.0, (x_loop @ c64 - budget).max()))

    t0 = time.perf_counter()
    jax.block_until_ready(jaxrank.route_average_budget(beta, costs, budget))
    first_avg = time.perf_counter() - t0
    t_avg, avg = _best_of(lambda: jaxrank.route_average_budget(beta, costs, budget), args.repeats)

    def linprog_stacked():
        a_eq = sparse.kron(sparse.eye(p), np.ones((1, m)), format="csr")  # sparse, as a careful user would
        out = linprog(-(w / p).reshape(-1), A_ub=np.tile(c64 / p, p)[None], b_ub=[budget], A_eq=a_eq,
                      b_eq=np.ones(p), bounds=[(0, None)] * (p * m), method="highs")
        return out.x.reshape(p, m)

    t_stacked, x_stacked = _best_of(linprog_stacked, args.repeats)
    pol_avg = np.asarray(avg.policy, np.float64)
    obj_avg, obj_stacked = float(np.mean(np.sum(pol_avg * w, -1))), float(np.mean(np.sum(x_stacked * w, -1)))
    best_avg = max(obj_avg, obj_stacked)
    err_avg, err_stacked = abs(obj_avg - best_avg), abs(obj_stacked - best_avg)
    excess_avg = max(0.0, float(np.mean(pol_avg @ c64)) - budget)
    excess_stacked = max(0.0, float(np.mean(x_stacked @ c64)) - budget)

    common = dict(prompts=p, models=m, repeats=args.repeats)
    rows = [
        dict(method="route", **common, seconds=t_route, compile_s=first - t_route, max_obj_diff=err,
             max_budget_excess=excess, ratio_vs_jaxrank=1.0),
        dict(method="linprog-loop", **common, seconds=t_loop, compile_s=0.0, max_obj_diff=err_loop,
             max_budget_excess=excess_loop, ratio_vs_jaxrank=t_loop / t_route),
        dict(method="route-average", **common, seconds=t_avg, compile_s=first_avg - t_avg, max_obj_diff=err_avg,
             max_budget_excess=excess_avg, ratio_vs_jaxrank=1.0),
        dict(method="linprog-stacked", **common, seconds=t_stacked, compile_s=0.0, max_obj_diff=err_stacked,
             max_budget_excess=excess_stacked, ratio_vs_jaxrank=t_stacked / t_avg),
    ]
    device = f"{jax.devices()[0].platform} ({platform.processor() or platform.machine()})"
    for row in rows:
        print(f"{row['method']:16s} {row['seconds'] * 1e3:10.2f} ms  compile {row['compile_s']:.2f} s  "
              f"x{row['ratio_vs_jaxrank']:.1f}  max |obj diff| {row['max_obj_diff']:.2e}  "
              f"budget excess {row['max_budget_excess']:.2e}")
    if out_path is None:
        print("not written: a non-default configuration needs --out (benchmarks/results/routing.csv is the default's)")
        return
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*rows[0], "device"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "device": device})
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
