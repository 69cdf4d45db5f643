"""Style control on real votes, and what covariates cost: plain vs style-controlled Bradley–Terry.

Data (../shared/data):
- AlpacaEval 2 (even half): 22,967 GPT-4-turbo judgments of 57 models against gpt4_1106_preview, soft outcomes
  (`preference`), the answers' lengths in characters (`len_output_1/2`): AlpacaEval's length control.
- PandaLM test set: 2,997 human labels (3 annotators x 999 items) on 5 open 7B models, lengths of the two
  responses in characters.
- A synthetic arena for the timings at scale: 200,000 hard votes among 64 models with four per-side style
  features (length and three markdown counts, Arena's conv_metadata elements) and known coefficients.

For each: the plain fit (ties as half a win each way; soft outcomes as fractional targets) and the fit with
style control on the features (`fit_bradley_terry(..., style=...)`), the rank changes, the style coefficients
with 95 % sandwich and bootstrap intervals, and timings (compiled calls, the median of 3): fit, sandwich and
1,000-round bootstrap, with covariates vs without. What a user would run instead: a SciPy L-BFGS-B fit of the
same penalised per-vote likelihood (the algorithm of FastChat's `fit_contextual_bt`, written here in NumPy),
one round timed and a 20-round loop extrapolated to 1,000 (FastChat runs them in a process pool; on 2 cores at
most 2x faster).

    PYTHONPATH=$PWD python benchmarks/style_control.py                 # writes benchmarks/results/style_control*.csv
    PYTHONPATH=$PWD python benchmarks/style_control.py --rounds 200 --skip-synthetic
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import platform
import sys
import time
import warnings

import numpy as np
import pandas as pd

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))

ELO = 400.0 / math.log(10.0)


def timed(fn, *args, repeat=3, **kwargs):
    """(median seconds of `repeat` calls after one warm-up, last result)."""
    import jax

    out = fn(*args, **kwargs)
    jax.block_until_ready(jax.tree.leaves(out))
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        jax.block_until_ready(jax.tree.leaves(out))
        times.append(time.perf_counter() - t)
    return float(np.median(times)), out


def scipy_style_fit(votes, names, style_l2, weights=None):
    """What a user would write instead: SciPy L-BFGS-B on the per-vote penalised style likelihood
    (sum w [p log sigmoid(d) + (1 - p) log sigmoid(-d)], d = theta_a - theta_b + x . beta, ties p = 1/2),
    float64, analytic gradient."""
    from scipy.optimize import minimize
    from scipy.special import expit, log_expit

    from jaxrank.ratings import style_design

    x = style_design(votes, names)
    a, b = votes.a.astype(np.int64), votes.b.astype(np.int64)
    p = votes.score_a()
    w = votes.vote_weight() * votes.multiplicity() if weights is None else weights
    m, k = votes.num_models, x.shape[1]

    def nll(params):
        theta, beta = params[:m], params[m:]
        d = theta[a] - theta[b] + x @ beta
        value = -np.sum(w * (p * log_expit(d) + (1 - p) * log_expit(-d))) + 0.5 * style_l2 * beta @ beta
        g = -w * (p - expit(d))
        return value, np.concatenate([np.bincount(a, g, m) - np.bincount(b, g, m), x.T @ g + style_l2 * beta])

    res = minimize(nll, np.zeros(m + k), jac=True, method="L-BFGS-B",
                   options=dict(maxiter=10_000, gtol=1e-7 * w.sum() / np.sqrt(m), ftol=1e-15))
    theta = res.x[:m] - res.x[:m].mean()
    return 1000.0 + ELO * theta, res.x[m:]


def synthetic_arena(seed: int, num_votes: int, num_models: int):
    """Hard Arena-like votes with four per-side style features and known coefficients."""
    from jaxrank import Votes

    rng = np.random.default_rng(seed)
    theta = rng.normal(0, 0.6, num_models)
    a = rng.integers(0, num_models, num_votes)
    b = (a + rng.integers(1, num_models, num_votes)) % num_models
    verbosity = rng.normal(0, 0.4, num_models)  # some models write longer, more formatted answers
    feats = {}
    for name, scale in (("length", 600.0), ("headers", 2.0), ("lists", 4.0), ("bold", 3.0)):
        feats[name] = tuple(rng.poisson(scale * np.exp(verbosity[s] + rng.normal(0, 0.5, num_votes))).astype(float)
                            for s in (a, b))
    d = np.stack([(fa - fb) / np.maximum(fa + fb, 1.0) for fa, fb in feats.values()], axis=1)
    x = (d - d.mean(0)) / d.std(0)
    beta = np.array([0.35, 0.1, 0.05, 0.08])
    pa = 1 / (1 + np.exp(-(theta[a] - theta[b] + x @ beta)))
    u = rng.random(num_votes)
    winner = np.where(u < 0.15, 2, np.where(rng.random(num_votes) < pa, 0, 1))
    votes = Votes(models=tuple(f"model_{i:02d}" for i in range(num_models)), a=a, b=b, outcome=winner,
                  feature_names=tuple(feats), features_a=np.stack([f[0] for f in feats.values()], 1),
                  features_b=np.stack([f[1] for f in feats.values()], 1))
    return votes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1000, help="bootstrap rounds (default 1000)")
    parser.add_argument("--style-l2", type=float, default=1.0)
    parser.add_argument("--synthetic-votes", type=int, default=200_000)
    parser.add_argument("--synthetic-models", type=int, default=64)
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "style_control.csv"))
    args = parser.parse_args(argv)

    import jax

    from jaxrank import load_votes
    from jaxrank.ratings import bootstrap_ratings, fit_bradley_terry, rank_by_rating, sandwich_intervals

    machine = f"{platform.machine()} {os.cpu_count()}-core CPU container (shared), jax {jax.__version__}"
    load = os.getloadavg()[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # AlpacaEval's baseline-vs-itself rows are dropped with a warning
        datasets = [
            ("alpaca_eval", load_votes(DATA / "alpaca_eval" / "preferences_even.csv.gz"), ("length",)),
            ("pandalm", load_votes(DATA / "pandalm" / "testset-v1.json"), ("length",)),
        ]
    if not args.skip_synthetic:
        synth = synthetic_arena(0, args.synthetic_votes, args.synthetic_models)
        datasets.append((f"synthetic{args.synthetic_votes // 1000}k", synth, synth.feature_names))

    board_rows, timing_rows = [], []
    for name, votes, style in datasets:
        print(f"== {name}: {votes.num_votes:,} votes, {votes.num_models} models, style {', '.join(style)}; "
              f"rows: {votes.rows().num_rows:,} merged, {votes.rows(merge=False).num_rows:,} per vote", flush=True)
        t_plain, plain = timed(fit_bradley_terry, votes)
        t_style, fit = timed(fit_bradley_terry, votes, style=style, style_l2=args.style_l2)
        t_sw_plain, _ = timed(sandwich_intervals, votes, plain)
        t_sw_style, sw = timed(sandwich_intervals, votes, fit)
        t_boot_plain, _ = timed(bootstrap_ratings, jax.random.key(0), votes, num_rounds=args.rounds, fit=plain, repeat=1)
        t_boot_style, boot = timed(bootstrap_ratings, jax.random.key(0), votes, num_rounds=args.rounds, fit=fit,
                                   repeat=1)
        t = time.perf_counter()
        ref, ref_beta = scipy_style_fit(votes, style, args.style_l2)
        t_scipy = time.perf_counter() - t
        diff = float(np.abs(ref - np.asarray(fit.ratings, np.float64)).max())
        # A bootstrap loop of the SciPy fit: 20 rounds timed, extrapolated to `rounds`.
        rng = np.random.default_rng(0)
        t = time.perf_counter()
        loop = 20
        base_w = votes.vote_weight() * votes.multiplicity()
        for _ in range(loop):
            draw = np.bincount(rng.integers(0, len(votes), len(votes)), minlength=len(votes))
            scipy_style_fit(votes, style, args.style_l2, weights=base_w * draw)
        t_scipy_boot = (time.perf_counter() - t) * args.rounds / loop
        for task, tp, ts, tsp in (("fit", t_plain, t_style, t_scipy), ("sandwich", t_sw_plain, t_sw_style, float("nan")),
                                  (f"bootstrap {args.rounds}", t_boot_plain, t_boot_style, t_scipy_boot)):
            timing_rows.append(dict(dataset=name, votes=votes.num_votes, models=votes.num_models, features=len(style),
                                    rows_merged=votes.rows().num_rows, rows_per_vote=votes.rows(merge=False).num_rows,
                                    task=task, plain_s=round(tp, 4), style_s=round(ts, 4),
                                    style_over_plain=round(ts / tp, 2), scipy_style_s=round(tsp, 3),
                                    scipy_over_jaxrank=round(tsp / ts, 1) if tsp == tsp else float("nan"),
                                    scipy_max_diff_elo=round(diff, 4) if task == "fit" else float("nan"),
                                    machine=machine, load_1min=round(load, 2)))
            print(f"  {task:<16} plain {tp:8.3f} s   style {ts:8.3f} s   ({ts / tp:5.1f}x)   "
                  f"SciPy style {tsp:8.2f} s" + (" (extrapolated)" if task.startswith("bootstrap") else ""), flush=True)
        print(f"  SciPy float64 style fit: max |rating - jaxrank| = {diff:.4f} Elo; beta {np.round(ref_beta, 4)} vs "
              f"{np.round(np.asarray(fit.beta), 4)}")
        for k, feature in enumerate(style):
            print(f"  beta[{feature}] = {float(fit.beta[k]):+.3f}  sandwich [{float(sw.beta_lower[k]):+.3f}, "
                  f"{float(sw.beta_upper[k]):+.3f}]  bootstrap [{float(boot.beta_lower[k]):+.3f}, "
                  f"{float(boot.beta_upper[k]):+.3f}]")
        if name.startswith("synthetic"):
            continue
        rank_plain = np.asarray(rank_by_rating(plain.ratings))
        rank_style = np.asarray(rank_by_rating(fit.ratings))
        for i, model in enumerate(votes.models):
            board_rows.append(dict(
                dataset=name, model=model, plain_rating=round(float(plain.ratings[i]), 2), plain_rank=int(rank_plain[i]),
                style_rating=round(float(fit.ratings[i]), 2), style_lower=round(float(boot.lower[i]), 2),
                style_upper=round(float(boot.upper[i]), 2), style_rank=int(rank_style[i]),
                rank_change=int(rank_plain[i] - rank_style[i]),
                beta=";".join(f"{f}={float(fit.beta[k]):.4f}" for k, f in enumerate(style)),
                beta_lower=";".join(f"{f}={float(boot.beta_lower[k]):.4f}" for k, f in enumerate(style)),
                beta_upper=";".join(f"{f}={float(boot.beta_upper[k]):.4f}" for k, f in enumerate(style)),
            ))
        moved = np.abs(rank_plain - rank_style)
        print(f"  rank changes: {int((moved > 0).sum())} of {votes.num_models} models move, largest {int(moved.max())}")

    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(board_rows).sort_values(["dataset", "style_rank"]).to_csv(out, index=False)
    timing = out.with_name(out.stem + "_timing.csv")
    pd.DataFrame(timing_rows).to_csv(timing, index=False)
    print(f"wrote {out} and {timing} (load average {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
