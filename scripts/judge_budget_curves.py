"""Judge-budget curves on real repeated GPT-4 scores (MT-Bench, prometheus-eval), via jaxrank.evaluation.

`../shared/data/judge_scores/mt_bench_eval.json`: 320 prompt-response pairs, each scored 3 times by GPT-4
on a 1-5 rubric. Each pair's 3 scores are an empirical pool; a simulated judge query draws from it with
replacement, errors are against the pool means (`jaxrank.allocation.EmpiricalSampler`). For each
allocator (uniform round robin; ROBIN, told the pool variances; ROBIN-HOOD, which estimates them) and
budget, `jaxrank.evaluation.budget_curves` gives the worst-case error max_i |s_i - ŝ_i| (and MAE, RMSE)
over Monte-Carlo runs: the mean, the central 95 % of runs, and the standard error of the mean.

Also: the budget each adaptive allocator needs to reach uniform's mean worst-case error at the largest
budget (linear interpolation between budgets on its mean curve), and, with --compare-cli, a check that
`jaxrank budget simulate --out` (same seed, runs, budgets) reports the same means.

Writes benchmarks/results/evaluation_budget_curves.csv and, with --figures DIR, DIR/budget_curves.png.

Usage:
  PYTHONPATH=$PWD python scripts/judge_budget_curves.py [--runs 200] [--figures docs/figures]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
import pandas as pd

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "judge_scores" / "mt_bench_eval.json"
BUDGETS = (6400, 9600, 12800, 16000, 19200, 22400, 25600)


def budget_to_reach(budgets: np.ndarray, curve: np.ndarray, target: float) -> float:
    """Smallest budget at which the (decreasing) mean curve reaches `target`, linearly interpolated; NaN if never."""
    below = np.nonzero(curve <= target)[0]
    if below.size == 0:
        return float("nan")
    j = int(below[0])
    if j == 0:
        return float(budgets[0])
    b0, b1, e0, e1 = budgets[j - 1], budgets[j], curve[j - 1], curve[j]
    return float(b0 + (e0 - target) * (b1 - b0) / (e0 - e1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--runs", type=int, default=200, help="Monte-Carlo runs (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--figures", default=None)
    parser.add_argument("--compare-cli", default=None, metavar="CSV",
                        help="a `jaxrank budget simulate --out` CSV run with the same --seed, --runs and budgets")
    args = parser.parse_args(argv)

    import jax

    from jaxrank import allocation
    from jaxrank.commands.budget import read_scores
    from jaxrank.evaluation import budget_curves

    ids, scores = read_scores(args.data)
    sampler = allocation.EmpiricalSampler.from_lists(scores)
    t0 = time.perf_counter()
    curves = budget_curves(jax.random.key(args.seed), sampler, budgets=list(BUDGETS), num_runs=args.runs)
    seconds = time.perf_counter() - t0
    frame = curves.to_frame()
    mean = curves.mean("wce")
    uniform_final = float(mean[curves.allocators.index("uniform"), -1])
    need = {a: budget_to_reach(curves.budgets, mean[i], uniform_final) for i, a in enumerate(curves.allocators)}
    frame["budget_to_reach_uniform_final_wce"] = frame["allocator"].map(need)
    results = pathlib.Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    frame.to_csv(results / "evaluation_budget_curves.csv", index=False)
    zero_var = sum(np.var(s) == 0 for s in scores)
    print(f"{len(ids)} items ({zero_var} with three equal scores), {args.runs} runs, budgets {list(BUDGETS)}: "
          f"{seconds:.1f} s (compile included)")
    cols = ["allocator", "budget", "wce_mean", "wce_lower", "wce_upper", "wce_stderr", "mae_mean", "rmse_mean"]
    print(frame[cols].to_string(index=False, float_format="%.4f"))
    for a, b in need.items():
        bound = "<= " if b == BUDGETS[0] else ""  # already there at the smallest budget simulated
        print(f"{a}: reaches uniform's mean worst-case error at {BUDGETS[-1]:,} queries ({uniform_final:.4f}) "
              f"with {bound}{b:,.0f} queries ({bound}{b / BUDGETS[-1]:.0%})")

    if args.figures:
        from jaxrank.plots import plot_budget_curves

        figures = pathlib.Path(args.figures)
        figures.mkdir(parents=True, exist_ok=True)
        plot_budget_curves(curves.curves("wce"), path=figures / "budget_curves.png", force=True,
                           title=f"MT-Bench GPT-4 scores: {len(ids)} items, {args.runs} runs (95% of runs shaded)")
    if args.compare_cli:
        cli = pd.read_csv(args.compare_cli)
        merged = cli.merge(frame, on=["allocator", "budget"], suffixes=("_cli", ""))
        if len(merged) != len(cli) or merged.empty:
            print(f"--compare-cli: {args.compare_cli} has budgets/allocators this run does not ({len(cli)} rows, "
                  f"{len(merged)} matched)")
            return 1
        diff = float(np.max(np.abs(merged["wce_mean_cli"] - merged["wce_mean"])))
        print(f"jaxrank budget simulate ({args.compare_cli}) vs budget_curves: max |wce_mean difference| = {diff:.2e} "
              f"over {len(merged)} rows")
        return 0 if diff < 1e-5 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
