"""Design replays: jaxrank's vmapped `replay_designs` vs the loop a user would write with NumPy/SciPy.

Task (the inner loop of `jaxrank evaluate replay` / `jaxrank.evaluation.design_curves`): R draws of a
score-proportional Poisson design on a fully labelled synthetic arena (`jaxrank.active.synthetic_arena`:
M models, P prompts, 3 pairs x 3 votes each), each draw fitted by a design-weighted Bradley–Terry ("half"
ties) with its design-based sandwich (leverage-corrected, clusters = prompts).

- jaxrank: `replay_designs` (all R draws, fits and sandwiches in one compiled call, chunks of 256), steady
  state (second call) and end to end (first call, compilation included).
- NumPy/SciPy: per draw `Generator.random` < pi, `scipy.optimize.minimize(method="L-BFGS-B")` on the
  float64 weighted negative log-likelihood with its analytic gradient (theta_0 pinned at 0, then centred),
  the Hessian and unit scores in NumPy, the per-unit leverage correction by the same formula.

Agreement: the largest |theta difference| and the largest relative difference of the standard errors over
the first draws (the two sides draw different samples, so each side's draws are refitted by the other on
the first `--check` draws).

Usage:  python benchmarks/active.py [--replays 200] [--models 5] [--units 2000]
Writes benchmarks/results/active.csv (one row per configuration, uptime load recorded).
"""

from __future__ import annotations

import argparse
import csv
import os
import pathlib
import platform
import time

import jax
import numpy as np
import scipy.optimize

from jaxrank import active


def numpy_fit(a, b, o, w, m):
    """float64 weighted Bradley–Terry ("half" ties) by L-BFGS-B with the analytic gradient; theta centred."""

    def f(v):
        theta = np.concatenate([[0.0], v])
        d = theta[a] - theta[b]
        la, lb = -np.logaddexp(0, -d), -np.logaddexp(0, d)
        lp = np.where(o == 0, la, np.where(o == 1, lb, 0.5 * (la + lb)))
        s = 1 / (1 + np.exp(-d))
        gd = np.where(o == 0, 1 - s, np.where(o == 1, -s, 0.5 - s))
        g = np.zeros(m)
        np.add.at(g, a, w * gd)
        np.add.at(g, b, -w * gd)
        return -np.sum(w * lp), -g[1:]

    res = scipy.optimize.minimize(f, np.zeros(m - 1), jac=True, method="L-BFGS-B", options={"gtol": 1e-9, "maxiter": 500})
    theta = np.concatenate([[0.0], res.x])
    return theta - theta.mean()


def numpy_sandwich(theta, a, b, o, vw, u, unit_w, pi, p):
    """Poisson design sandwich with the per-unit leverage (jackknife) correction, float64 NumPy."""
    m = theta.shape[0]
    d = theta[a] - theta[b]
    s = 1 / (1 + np.exp(-d))
    gd = np.where(o == 0, 1 - s, np.where(o == 1, -s, 0.5 - s))
    curv = s * (1 - s)
    w = vw * unit_w[u]
    h = np.zeros((m, m))
    np.add.at(h, (a, a), w * curv)
    np.add.at(h, (b, b), w * curv)
    np.add.at(h, (a, b), -w * curv)
    np.add.at(h, (b, a), -w * curv)
    proj = np.full((m, m), 1.0 / m)
    bread = np.linalg.inv(h + proj) - proj
    z = np.zeros((p, m))
    np.add.at(z, (u, a), vw * gd)
    np.add.at(z, (u, b), -vw * gd)
    sel = np.flatnonzero(unit_w > 0)
    zeta = np.zeros((sel.size, m))
    for j, i in enumerate(sel):
        rows = np.flatnonzero(u == i)
        hi = np.zeros((m, m))
        for r in rows:
            e = np.zeros(m)
            e[a[r]], e[b[r]] = 1.0, -1.0
            hi += vw[r] * curv[r] * np.outer(e, e)
        zt = np.linalg.solve(np.eye(m) - unit_w[i] * hi @ bread, z[i])
        zeta[j] = np.sqrt(1 - pi[i]) / pi[i] * zt
    cov = bread @ (zeta.T @ zeta) @ bread
    return np.sqrt(np.maximum(np.diag(cov), 0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replays", type=int, default=200)
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--units", type=int, default=2000)
    parser.add_argument("--budget", type=float, default=0.25)
    parser.add_argument("--check", type=int, default=5)
    parser.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parent / "results" / "active.csv"))
    args = parser.parse_args(argv)
    m, p, r = args.models, args.units, args.replays
    arena = active.synthetic_arena(jax.random.key(0), num_models=m, num_units=p)
    pi = active.inclusion_probabilities(np.asarray(arena.scores), args.budget * p, uniform_mix=0.3)
    a, b, o, u, vw = (np.asarray(x) for x in arena.human)
    vw = vw.astype(np.float64)
    full = active.fit_design_weighted(arena.human, active.single_round(np.ones(p, bool), np.ones(p)), num_models=m)
    load = os.getloadavg()[0]

    t0 = time.perf_counter()
    first = active.replay_designs(jax.random.key(1), arena.human, pi, num_models=m, num_replays=r, init=full.theta)
    jax.block_until_ready(first.theta)
    t1 = time.perf_counter()
    again = active.replay_designs(jax.random.key(1), arena.human, pi, num_models=m, num_replays=r, init=full.theta)
    jax.block_until_ready(again.theta)
    t2 = time.perf_counter()
    jax_end_to_end, jax_steady = t1 - t0, t2 - t1

    rng = np.random.default_rng(1)
    t3 = time.perf_counter()
    np_theta, np_se, draws = [], [], []
    for _ in range(r):
        sel = rng.random(p) < pi
        unit_w = np.where(sel, 1 / pi, 0.0)
        theta = numpy_fit(a, b, o, vw * unit_w[u], m)
        np_theta.append(theta)
        np_se.append(numpy_sandwich(theta, a, b, o, vw, u, unit_w, pi, p))
        draws.append(sel)
    t4 = time.perf_counter()
    numpy_s = t4 - t3

    # Agreement on the same draws: jaxrank fits the NumPy loop's first draws.
    diffs, rel = [], []
    for sel, theta, se in list(zip(draws, np_theta, np_se))[: args.check]:
        est = active.fit_design_weighted(active.restrict_rows(arena.human, sel), active.single_round(sel, pi),
                                         num_models=m)
        diffs.append(np.abs(np.asarray(est.theta) - theta).max())
        rel.append(np.abs(np.asarray(est.std_error) / se - 1).max())
    row = {
        "task": "replay_designs", "models": m, "units": p, "votes": int(vw.size), "budget": args.budget, "replays": r,
        "jaxrank_steady_s": round(jax_steady, 3), "jaxrank_end_to_end_s": round(jax_end_to_end, 3),
        "numpy_scipy_loop_s": round(numpy_s, 3), "speedup_steady": round(numpy_s / jax_steady, 1),
        "speedup_end_to_end": round(numpy_s / jax_end_to_end, 1), "max_theta_diff": float(max(diffs)),
        "max_se_rel_diff": float(max(rel)), "load_average": round(load, 2), "load_average_end": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(), "jax": jax.__version__,
        "device": str(jax.devices()[0]),
    }
    out = pathlib.Path(args.out)
    exists = out.exists()
    with out.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if not exists:
            writer.writeheader()
        writer.writerow(row)
    for k, v in row.items():
        print(f"{k:24s} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
