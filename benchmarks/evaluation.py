"""jaxrank's evaluation harness vs the loops a user would write instead, on LLMFAO's crowd votes.

Data: ../shared/data/llmfao/crowd-comparisons.csv (8,931 votes, 59 models, 13 prompts); priority scores are
random (seeded): the timings do not depend on how informative they are.

Compared (same lanes, same outputs, in the same run):
  ties       jaxrank `tie_reduction` (all fractions x `--num-random` random subsets x as many bootstrap
             replicates, one compiled call) vs a NumPy loop drawing each subset with `Generator.choice`.
  stability  jaxrank `leaderboard_stability(method="bt")` (every fit one lane of a vmapped L-BFGS) vs a loop
             of float64 SciPy L-BFGS-B fits (analytic gradient) over the same lanes (gold, top-q, bootstrap
             rounds, random subsets) with scipy.stats metrics. Agreement: largest |difference| of the top-q
             Kendall tau and of the gold ratings (Elo points).
  elo        jaxrank `leaderboard_stability(method="elo")` vs a Python loop of Chatbot Arena's online Elo
             (FastChat's compute_elo update) over the same vote orders.
jaxrank's steady-state time is a second call with the same inputs and key as the first; its compile time is
the first call minus the second, and `end_to_end_s` the first call (compile included), which is what a
one-off run costs. Both ratios are printed: steady state (compiled, e.g. a re-run in the same process) and
end to end. Lanes at q = 1 equal gold and are fitted by neither side. Wall and CPU (process) times are both
recorded: on a shared, loaded machine the CPU-time ratio is the steadier one.

Usage:  python benchmarks/evaluation.py                  (defaults: a few minutes on 2 CPU cores)
        python benchmarks/evaluation.py --num-random 100 --num-bootstrap 100 --fractions 10   (full sizes)
        python benchmarks/evaluation.py --library-defaults   (jaxrank alone at the library's default options)
Writes benchmarks/results/evaluation.csv (--library-defaults: evaluation_defaults.csv).
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
import numpy as np
import pandas as pd
import scipy.optimize
import scipy.stats

from jaxrank import evaluation as E
from jaxrank import load_votes

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "llmfao" / "crowd-comparisons.csv"


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


# ---------------------------------------------------------------------------------------------- ties


def ties_numpy(values, votes, fractions, num_random, seed):
    rng = np.random.default_rng(seed)
    t = votes.ties_per_prompt().astype(np.float64)
    n = votes.votes_per_prompt().astype(np.float64)
    p = votes.num_prompts
    order = np.argsort(-values, kind="stable")
    out = []
    for q in fractions:
        k = max(1, math.ceil(round(q * p, 6)))
        top = t[order[:k]].sum() / n[order[:k]].sum()
        rand = np.empty(num_random)
        red = np.empty(num_random)
        for j in range(num_random):
            s = rng.choice(p, k, replace=False)
            rand[j] = t[s].sum() / n[s].sum()
            d = rng.integers(0, p, p)
            ds = np.sort(d)
            bt = t[ds[:k]].sum() / n[ds[:k]].sum()
            # The replicate's own baseline: mean over cyclic windows of k draws at evenly spaced starts.
            dd = np.concatenate([d, d])
            br = np.mean([t[dd[s:s + k]].sum() / n[dd[s:s + k]].sum() for s in E._window_starts(p)])
            red[j] = 1 - bt / br if br > 0 else (0.0 if bt == 0 else -np.inf)
        out.append((top, rand.mean(), 1 - top / rand.mean(), *np.quantile(red, [0.025, 0.975])))
    return np.asarray(out)


# ---------------------------------------------------------------------------------------------- BT


def bt_scipy(a, b, o, w, m):
    """Float64 BT ('half' ties) on weighted unique rows: Elo-scale ratings centred on the models that play."""
    keep = w > 0
    a, b, o, w = a[keep], b[keep], o[keep], w[keep]
    present = np.zeros(m, bool)
    present[a] = present[b] = True
    s_a = np.where(o == 0, 1.0, np.where(o == 1, 0.0, 0.5))

    def f(theta):
        d = theta[a] - theta[b]
        p = 1.0 / (1.0 + np.exp(-d))
        nll = -np.sum(w * (s_a * np.log(p) + (1 - s_a) * np.log1p(-p)))
        g_d = -w * (s_a - p)
        g = np.bincount(a, g_d, m) - np.bincount(b, g_d, m)
        return nll, g

    x = scipy.optimize.minimize(f, np.zeros(m), jac=True, method="L-BFGS-B", options={"maxiter": 1000, "gtol": 1e-8}).x
    r = np.full(m, np.nan)
    r[present] = (x[present] - x[present].mean()) * 400 / math.log(10)
    return r


def metrics_scipy(r, g):
    keep = ~np.isnan(r)
    x, y = r[keep], g[keep]
    i, j = np.triu_indices(x.size, 1)
    return (scipy.stats.kendalltau(x, y).statistic, scipy.stats.spearmanr(x, y).statistic,
            np.mean(np.sign(x[i] - x[j]) == np.sign(y[i] - y[j])),
            np.max(np.abs((x - x.mean()) - (y - y.mean()))))


def stability_scipy(values, votes, fractions, num_random, num_bootstrap, seed):
    """The same lanes as jaxrank's (top-q, bootstrap over prompts with paired gold, random subsets), each a
    SciPy fit in a Python loop."""
    rng = np.random.default_rng(seed)
    battles = votes.rows()
    a, b, o = (np.asarray(x) for x in (battles.a, battles.b, battles.outcome))
    row = np.asarray(battles.vote_row)[:, 0]
    u, m, p = battles.num_rows, votes.num_models, votes.num_prompts
    order = np.argsort(-values, kind="stable")
    sizes = E._subset_sizes(np.asarray(fractions), p)

    def fit(prompt_weights):
        return bt_scipy(a, b, o, np.bincount(row, prompt_weights[votes.prompt], u), m)

    # At q = 1 every lane is gold (or the round's gold*): not refitted, as jaxrank does.
    gold = fit(np.ones(p))
    tops = E._top_weights(np.ones((1, p)), order, sizes)[0]
    top_metrics = [metrics_scipy(fit(tops[f]) if sizes[f] < p else gold, gold) for f in range(len(fractions))]
    for _ in range(num_bootstrap):
        mult = rng.multinomial(p, np.full(p, 1.0 / p)).astype(np.float64)
        g = fit(mult)
        for k, tw in zip(sizes, E._top_weights(mult[None], order, sizes)[0]):
            metrics_scipy(fit(tw) if k < p else g, g)
    for k in sizes[sizes < p]:
        for _ in range(num_random):
            s = np.zeros(p)
            s[rng.choice(p, k, replace=False)] = 1.0
            metrics_scipy(fit(s), gold)
    return gold, np.asarray(top_metrics)


# ---------------------------------------------------------------------------------------------- Elo


def elo_python(a, b, o, order, m, k=4.0):
    """FastChat's compute_elo update, one vote at a time."""
    r = [1000.0] * m
    for i in order:
        ra, rb = r[a[i]], r[b[i]]
        ea = 1.0 / (1.0 + 10.0 ** ((rb - ra) / 400.0))
        sa = 1.0 if o[i] == 0 else 0.0 if o[i] == 1 else 0.5
        r[a[i]] += k * (sa - ea)
        r[b[i]] -= k * (sa - ea)
    return r


def stability_elo_python(votes, values, fractions, num_random, num_permutations, seed):
    rng = np.random.default_rng(seed)
    a, b, o = (x.tolist() for x in (votes.a, votes.b, votes.outcome))
    n, p, m = votes.num_votes, votes.num_prompts, votes.num_models
    order = np.argsort(-values, kind="stable")
    sizes = E._subset_sizes(np.asarray(fractions), p)
    tops = E._top_weights(np.ones((1, p)), order, sizes)[0] > 0
    perms = [rng.permutation(n) for _ in range(num_permutations)]
    per = []
    for perm in perms:
        lane = [elo_python(a, b, o, perm, m)]
        for k, t in zip(sizes, tops):
            sel = t[votes.prompt]
            lane.append(elo_python(a, b, o, perm[sel[perm]], m) if k < p else lane[0])
        per.append(lane)
    for k in sizes[sizes < p]:
        for j in range(num_random):
            s = np.zeros(p, bool)
            s[rng.choice(p, k, replace=False)] = True
            perm = perms[j % num_permutations]
            elo_python(a, b, o, perm[s[votes.prompt][perm]], m)
    return np.median(np.asarray(per)[:, 0], axis=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fractions", type=int, default=3, help="number of fractions (1/F, 2/F, ..., 1; default 3)")
    ap.add_argument("--num-random", type=int, default=20, help="random subsets per fraction (default 20)")
    ap.add_argument("--num-bootstrap", type=int, default=20, help="BT bootstrap rounds (default 20)")
    ap.add_argument("--num-permutations", type=int, default=20, help="Elo vote orders (default 20)")
    ap.add_argument("--tie-random", type=int, default=1000, help="random subsets of the tie reduction (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--library-defaults", action="store_true",
                    help="instead: time tie_reduction and leaderboard_stability (bt, elo) at the library's default "
                         "options, first call (compilation included); writes results/evaluation_defaults.csv")
    args = ap.parse_args()
    if not DATA.exists():
        raise SystemExit(f"{DATA} is absent (see shared/data/README.md)")
    df = pd.read_csv(DATA)
    votes = load_votes(df, format="llmfao")
    values = np.random.default_rng(args.seed).random(votes.num_prompts)
    fractions = [round((i + 1) / args.fractions, 6) for i in range(args.fractions)]
    rows = []
    machine = f"{platform.machine()} {os.cpu_count()} CPUs, jax {jax.__version__} ({jax.default_backend()}); shared, loaded"
    if args.library_defaults:
        calls = (("ties", lambda: E.tie_reduction(jax.random.key(0), values, votes)),
                 ("stability-bt", lambda: E.leaderboard_stability(jax.random.key(0), values, votes)),
                 ("stability-elo", lambda: E.leaderboard_stability(jax.random.key(0), values, votes, method="elo")))
        for task, fn in calls:
            _, w, c = timed(fn)
            rows.append(dict(task=task, implementation="jaxrank (library defaults, first call)", wall_s=round(w, 2),
                             cpu_s=round(c, 2), machine=machine))
            print(rows[-1])
        _write(rows, RESULTS / "evaluation_defaults.csv")
        return

    def record(task, impl, wall, cpu, first, lanes, agreement, note=""):
        # first: jaxrank's first call (compile included); compile = first - steady state (same inputs, same key).
        rows.append(dict(task=task, implementation=impl, wall_s=round(wall, 3), cpu_s=round(cpu, 3),
                         compile_s=None if first is None else round(first - wall, 3),
                         end_to_end_s=round(wall if first is None else first, 3), lanes=lanes,
                         max_abs_diff=agreement, note=note, machine=machine))
        print(rows[-1])

    def twice(fn):
        """(result, steady wall, steady cpu, first wall): two calls with the same inputs and key."""
        _, w1, _ = timed(fn)
        out, w, c = timed(fn)
        return out, w, c, w1

    # Tie reduction.
    res, w, c, w1 = twice(lambda: E.tie_reduction(jax.random.key(args.seed), values, votes, fractions=fractions,
                                                  num_random=args.tie_random))
    ref, wn, cn = timed(lambda: ties_numpy(values, votes, fractions, args.tie_random, args.seed))
    # Same top rates exactly; the Monte-Carlo columns agree within their noise (different random streams).
    diff = float(np.max(np.abs(ref[:, 0] - res.tie_rate_top)))
    lanes = len(fractions) * args.tie_random * 2
    record("ties", "jaxrank", w, c, w1, lanes, diff, "top tie rate vs numpy")
    record("ties", "numpy-loop", wn, cn, None, lanes, float(np.max(np.abs(ref[:, 1] - res.tie_rate_random))),
           "random tie rate vs jaxrank (independent streams)")

    # Stability, Bradley-Terry.
    opts = dict(fractions=fractions, num_random=args.num_random, num_bootstrap=args.num_bootstrap)
    st, w, c, w1 = twice(lambda: E.leaderboard_stability(jax.random.key(args.seed), values, votes, **opts))
    (gold, top), wn, cn = timed(lambda: stability_scipy(values, votes, fractions, args.num_random, args.num_bootstrap,
                                                        args.seed))
    nf = int(np.sum(E._subset_sizes(np.asarray(fractions), votes.num_prompts) < votes.num_prompts))  # q < 1
    lanes = 1 + nf + args.num_bootstrap * (1 + nf) + nf * args.num_random
    record("stability-bt", "jaxrank", w, c, w1, lanes, float(np.max(np.abs(st.kendall_tau - top[:, 0]))),
           "top-q Kendall tau vs scipy")
    record("stability-bt", "scipy-loop", wn, cn, None, lanes, float(np.max(np.abs(st.gold_ratings - 1000 - gold))),
           "gold ratings (Elo points) vs jaxrank")

    # Stability, Elo.
    opts = dict(fractions=fractions, num_random=args.num_random, num_permutations=args.num_permutations, method="elo")
    se, w, c, w1 = twice(lambda: E.leaderboard_stability(jax.random.key(args.seed), values, votes, **opts))
    gold_py, wn, cn = timed(lambda: stability_elo_python(votes, values, fractions, args.num_random,
                                                         args.num_permutations, args.seed))
    lanes = args.num_permutations * (1 + nf) + nf * args.num_random
    record("stability-elo", "jaxrank", w, c, w1, lanes, None, "")
    record("stability-elo", "python-loop", wn, cn, None, lanes,
           float(np.max(np.abs(np.sort(se.gold_ratings) - np.sort(gold_py)))),
           "sorted gold ratings vs jaxrank (independent orders)")

    out = RESULTS / "evaluation.csv"
    _write(rows, out)
    by = {(r["task"], r["implementation"]): r for r in rows}
    for task, other in (("ties", "numpy-loop"), ("stability-bt", "scipy-loop"), ("stability-elo", "python-loop")):
        j, o = by[(task, "jaxrank")], by[(task, other)]
        end = o["wall_s"] / j["end_to_end_s"]
        print(f"{task}: {other} / jaxrank = {o['wall_s'] / j['wall_s']:.2f}x wall, {o['cpu_s'] / j['cpu_s']:.2f}x CPU "
              f"compiled (jaxrank {j['wall_s']} s + {j['compile_s']} s compile); end to end {end:.2f}x wall "
              f"({o['wall_s']} s vs {j['end_to_end_s']} s: jaxrank {'faster' if end > 1 else 'SLOWER'} for one run)")
    print(f"wrote {out}")


def _write(rows, out: pathlib.Path) -> None:
    out.parent.mkdir(exist_ok=True)
    with out.open("w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)


if __name__ == "__main__":
    main()
