"""Scale check: a Bradley–Terry fit over >= 10 million synthetic votes and >= 1,000 models in bounded memory.

The votes are synthesised directly as counts of unique (a, b, outcome) rows (`synthetic_votes`: `Votes` whose
entries carry counts), never as one row per vote, so memory grows with the number of model pairs, not with the number of votes. The script
fits them with `fit_bradley_terry`, reports wall time (compile + run, and a second, compiled run), peak
RSS, and the recovery error against the true strengths; with `--devices D` it also shards the unique-row
axis over D fake CPU devices and reports the largest rating difference to the unsharded fit.

    PYTHONPATH=$PWD python benchmarks/ratings_scale.py                      # 10M votes, 1,000 models
    PYTHONPATH=$PWD python benchmarks/ratings_scale.py --votes 1e6 --models 200 --devices 8

Writes benchmarks/results/ratings_scale.csv (one row per run, appended).
"""

from __future__ import annotations

import argparse
import csv
import os
import pathlib
import platform
import resource
import sys
import time


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--votes", type=float, default=10e6)
    parser.add_argument("--ties", default="half", choices=["half", "rao-kupper", "davidson", "drop"])
    parser.add_argument("--devices", type=int, default=0, help="also fit sharded over this many fake CPU devices")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-scipy", action="store_true", help="skip the SciPy baseline")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "ratings_scale.csv"))
    args = parser.parse_args(argv)
    if args.devices:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}"
        ).strip()

    import jax
    import numpy as np

    from jaxrank.ratings import fit_bradley_terry, synthetic_votes

    num_votes = int(args.votes)
    rss0 = peak_rss_mib()
    t = time.perf_counter()
    battles, theta_true = synthetic_votes(
        jax.random.key(args.seed), args.models, num_votes, ties=args.ties, theta_scale=1.0
    )
    t_synth = time.perf_counter() - t
    rss_synth = peak_rss_mib()
    print(f"synthesised {battles.num_votes:,} votes among {battles.num_models:,} models as "
          f"{battles.rows().num_rows:,} unique rows in {t_synth:.1f} s (peak RSS {rss_synth:.0f} MiB)", flush=True)

    t = time.perf_counter()
    result = fit_bradley_terry(battles, ties=args.ties)
    result.ratings.block_until_ready()
    t_first = time.perf_counter() - t
    t = time.perf_counter()
    result = fit_bradley_terry(battles, ties=args.ties)
    result.ratings.block_until_ready()
    t_fit = time.perf_counter() - t
    rss_fit = peak_rss_mib()
    err = np.asarray(result.theta) - (np.asarray(theta_true) - np.asarray(theta_true).mean())
    elo = 400.0 / np.log(10.0)
    print(f"fit: {t_first:.1f} s first call (compile + run), {t_fit:.1f} s compiled; {int(result.num_iter)} "
          f"L-BFGS iterations, converged={bool(result.converged)}; peak RSS {rss_fit:.0f} MiB; "
          f"RMS error vs truth {elo * np.sqrt(np.mean(err ** 2)):.2f} Elo", flush=True)

    # What a user would write instead: SciPy L-BFGS-B on the same unique-row counts (float64, analytic gradient).
    t_scipy = float("nan")
    scipy_diff = float("nan")
    if args.ties == "half" and not args.no_scipy:
        from scipy.optimize import minimize
        from scipy.special import expit, log_expit

        rows = battles.rows()
        a = np.asarray(rows.a, np.int64)
        b = np.asarray(rows.b, np.int64)
        o = np.asarray(rows.outcome)
        w = np.asarray(rows.count, np.float64)
        m = battles.num_models
        target = np.where(o == 0, 1.0, np.where(o == 1, 0.0, 0.5))  # a tie is half a win each way

        def nll(theta):
            d = theta[a] - theta[b]
            value = -np.sum(w * (target * log_expit(d) + (1 - target) * log_expit(-d)))
            g_d = -w * (target - expit(d))
            return value, np.bincount(a, g_d, m) - np.bincount(b, g_d, m)

        t = time.perf_counter()
        # The same stopping rule as jaxrank: gradient small relative to the total weight.
        res = minimize(nll, np.zeros(m), jac=True, method="L-BFGS-B",
                       options=dict(maxiter=10_000, gtol=1e-7 * w.sum() / np.sqrt(m), ftol=1e-15))
        t_scipy = time.perf_counter() - t
        ref = res.x - res.x.mean()
        scipy_diff = float(np.abs(np.asarray(result.ratings) - (1000.0 + elo * ref)).max())
        print(f"SciPy L-BFGS-B on the same counts: {t_scipy:.1f} s ({res.nit} iterations); jaxrank compiled fit is "
              f"{t_scipy / t_fit:.1f}x faster; max |rating difference| {scipy_diff:.2e} Elo", flush=True)

    sharded_diff = float("nan")
    t_sharded = float("nan")
    if args.devices:
        mesh = jax.make_mesh((jax.device_count(),), ("data",))
        sharded = fit_bradley_terry(battles, ties=args.ties, mesh=mesh)
        sharded.ratings.block_until_ready()
        t = time.perf_counter()
        sharded = fit_bradley_terry(battles, ties=args.ties, mesh=mesh)
        sharded.ratings.block_until_ready()
        t_sharded = time.perf_counter() - t
        sharded_diff = float(np.abs(np.asarray(sharded.ratings) - np.asarray(result.ratings)).max())
        print(f"sharded over {jax.device_count()} devices: {t_sharded:.1f} s compiled; "
              f"max |rating difference| {sharded_diff:.2e} Elo", flush=True)

    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.exists()
    with out.open("a", newline="") as fh:
        writer = csv.writer(fh)
        if new:
            writer.writerow(["machine", "models", "votes", "unique_rows", "ties", "synth_s", "first_fit_s", "fit_s",
                             "iterations", "converged", "peak_rss_mib", "rms_error_elo", "devices", "sharded_fit_s",
                             "sharded_max_diff_elo", "scipy_fit_s", "scipy_over_jaxrank", "scipy_max_diff_elo"])
        writer.writerow([f"{platform.machine()} {os.cpu_count()}-core CPU container (shared, loaded)", args.models,
                         battles.num_votes, battles.rows().num_rows, args.ties, f"{t_synth:.2f}", f"{t_first:.2f}",
                         f"{t_fit:.2f}", int(result.num_iter), bool(result.converged), f"{rss_fit:.0f}",
                         f"{elo * np.sqrt(np.mean(err ** 2)):.3f}", args.devices or 1, f"{t_sharded:.2f}",
                         f"{sharded_diff:.3g}", f"{t_scipy:.2f}", f"{t_scipy / t_fit:.2f}", f"{scipy_diff:.3g}"])
    print(f"wrote {out}")
    del rss0
    return 0


if __name__ == "__main__":
    sys.exit(main())
