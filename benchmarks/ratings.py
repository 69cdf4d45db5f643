"""Leaderboard benchmark: jaxrank vs arena-rank vs a FastChat-style SciPy fit vs choix, in one run.

On LLMFAO (8,931 crowd votes, 59 models), the 7,040-vote, 9-model arena that benchmarks/cli.py times the
CLI on (`cli7k`), and a synthetic arena of 1M votes (100 models, Davidson ties),
all libraries fit the same Bradley–Terry likelihood with a tie as half a win each way (Chatbot Arena's
choice), so their ratings must agree; we report single-fit time, 1,000-round bootstrap time, the
largest rating difference to jaxrank (all re-centred to mean 1000), and online Elo over 1,000 random
vote orders against FastChat's Python loop. The bootstrap is also compared with as many warm single
fits of arena-rank as it has rounds: `R x` the median time of its L-BFGS traced once with the vote weights
as an argument and refitted on `--arena-fits` resampled count vectors drawn outside the timing (what refitting
resamples would cost at best, since arena-rank's own bootstrap re-traces every round and its Pool hangs here
without `spawn`). Both sides use the same statistic: jaxrank's row is the median of `--repeats` warm
1,000-round calls (resampling included), arena-rank's R x the median of its single fits.
`--datasets` picks the data sets (default: all).

- arena-rank 0.1.1 pins jax==0.8.1 / numpy==2.3.3, so it runs in its own venv (`.venv-arena/`, created
  with `python3 -m venv` + `pip install arena-rank==0.1.1` when absent) in a subprocess. Its bootstrap
  uses a `multiprocessing.Pool`; with the default `fork` start method its workers deadlock after JAX
  has started threads, so the subprocess sets `spawn`. Each round re-traces its jitted L-BFGS.
- FastChat-style: `compute_mle_elo` (pivot tables, a design matrix with each win as two rows and each
  tie as one row each way, logistic regression without intercept or penalty). sklearn's `lbfgs` solver
  is SciPy's L-BFGS-B, called here directly on the same weighted logistic loss; its bootstrap is
  FastChat's `get_bootstrap_result` loop (`battles.sample(frac=1.0, replace=True)` + refit).
- choix 0.4.1: `ilsr_pairwise_dense` on the win matrix (ties as half a win each way).

Slow baselines are timed on fewer rounds and extrapolated proportionally (rows say `extrapolated`;
the note gives the measured time, which alone is a lower bound for the full count). Default run: a few minutes on a
2-core machine; `--full` times every baseline at the full 1,000 rounds (hours for arena-rank).

    python benchmarks/ratings.py [--full] [--out benchmarks/results/ratings.csv]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np
import pandas as pd

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402

from jaxrank import load_votes  # noqa: E402
from jaxrank.ratings import bootstrap_ratings, elo_permutations, fit_bradley_terry, synthetic_votes  # noqa: E402
from jaxrank.votes import OUTCOME_NAMES  # noqa: E402

K = 400.0 / math.log(10.0)
ARENA_VENV = REPO / ".venv-arena"
LLMFAO = REPO.parent / "shared" / "data" / "llmfao" / "crowd-comparisons.csv"


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    jax.block_until_ready(out) if not isinstance(out, (pd.DataFrame, pd.Series, dict, list)) else None
    return out, time.perf_counter() - start


def centred(r):
    r = np.asarray(r, np.float64)
    return r - r.mean() + 1000.0


# ---------------------------------------------------------------------------------------------- baselines


def fastchat_compute_mle_elo(df, SCALE=400, BASE=10, INIT_RATING=1000, models=None):
    """FastChat's compute_mle_elo (lmsys blog 2023-12-07): design matrix with duplicated rows, logistic
    regression without intercept; sklearn's lbfgs solver = SciPy L-BFGS-B on the weighted log-loss."""
    from scipy.optimize import minimize
    from scipy.special import expit, log_expit

    ptbl_a_win = pd.pivot_table(df[df["winner"] == "model_a"], index="model_a", columns="model_b", aggfunc="size", fill_value=0)
    if sum(df["winner"].isin(["tie", "tie (bothbad)"])) == 0:
        ptbl_tie = pd.DataFrame(0, index=ptbl_a_win.index, columns=ptbl_a_win.columns)
    else:
        ptbl_tie = pd.pivot_table(df[df["winner"].isin(["tie", "tie (bothbad)"])], index="model_a", columns="model_b", aggfunc="size", fill_value=0)
        ptbl_tie = ptbl_tie + ptbl_tie.T
    ptbl_b_win = pd.pivot_table(df[df["winner"] == "model_b"], index="model_a", columns="model_b", aggfunc="size", fill_value=0)
    ptbl_win = ptbl_a_win * 2 + ptbl_b_win.T * 2 + ptbl_tie
    idx = pd.Series(np.arange(len(ptbl_win.index)), index=ptbl_win.index)
    p = len(idx)
    X = np.zeros([p * (p - 1) * 2, p])
    Y = np.zeros(p * (p - 1) * 2)
    cur_row = 0
    sample_weights = []
    for m_a in ptbl_win.index:
        for m_b in ptbl_win.columns:
            if m_a == m_b:
                continue
            if math.isnan(ptbl_win.loc[m_a, m_b]) or math.isnan(ptbl_win.loc[m_b, m_a]):
                continue
            X[cur_row, idx[m_a]] = +math.log(BASE)
            X[cur_row, idx[m_b]] = -math.log(BASE)
            Y[cur_row] = 1.0
            sample_weights.append(ptbl_win.loc[m_a, m_b])
            X[cur_row + 1, idx[m_a]] = math.log(BASE)
            X[cur_row + 1, idx[m_b]] = -math.log(BASE)
            Y[cur_row + 1] = 0.0
            sample_weights.append(ptbl_win.loc[m_b, m_a])
            cur_row += 2
    X, Y, w = X[:cur_row], Y[:cur_row], np.asarray(sample_weights, np.float64)

    def loss(beta):
        z = X @ beta
        val = -np.sum(w * (Y * log_expit(z) + (1 - Y) * log_expit(-z)))
        grad = -X.T @ (w * (Y - expit(z)))
        return val, grad

    beta = minimize(loss, np.zeros(p), jac=True, method="L-BFGS-B", options={"maxiter": 1000, "gtol": 1e-10, "ftol": 1e-15}).x
    elo = SCALE * beta + INIT_RATING
    return pd.Series(elo, index=idx.index)


def fastchat_bootstrap(df, rounds, seed=0):
    np.random.seed(seed)
    rows = []
    for _ in range(rounds):
        rows.append(fastchat_compute_mle_elo(df.sample(frac=1.0, replace=True)))
    return pd.DataFrame(rows)


def fastchat_compute_elo(battles, K=4, SCALE=400, BASE=10, INIT_RATING=1000):
    """FastChat's online Elo (compute_elo), verbatim arithmetic."""
    rating = defaultdict(lambda: INIT_RATING)
    for rd, model_a, model_b, winner in battles[["model_a", "model_b", "winner"]].itertuples():
        ra = rating[model_a]
        rb = rating[model_b]
        ea = 1 / (1 + BASE ** ((rb - ra) / SCALE))
        eb = 1 / (1 + BASE ** ((ra - rb) / SCALE))
        if winner == "model_a":
            sa = 1
        elif winner == "model_b":
            sa = 0
        elif winner == "tie" or winner == "tie (bothbad)":
            sa = 0.5
        else:
            raise Exception(f"unexpected vote {winner}")
        rating[model_a] += K * (sa - ea)
        rating[model_b] += K * (1 - sa - eb)
    return rating


def choix_fit(votes):
    import choix

    battles = votes.rows()
    m = battles.num_models
    a, b, o = (np.asarray(x) for x in (battles.a, battles.b, battles.outcome))
    c = np.asarray(battles.count, np.float64)
    win = np.zeros((m, m))
    np.add.at(win, (a[o == 0], b[o == 0]), c[o == 0])
    np.add.at(win, (b[o == 1], a[o == 1]), c[o == 1])
    tie = o >= 2
    np.add.at(win, (a[tie], b[tie]), 0.5 * c[tie])
    np.add.at(win, (b[tie], a[tie]), 0.5 * c[tie])
    params = choix.ilsr_pairwise_dense(win, alpha=0.0, tol=1e-12, max_iter=10000)
    return 1000.0 + K * (params - params.mean())


# ---------------------------------------------------------------------------------------------- arena-rank

ARENA_SCRIPT = r"""
import json, sys, time, multiprocessing as mp
import numpy as np, pandas as pd
if __name__ == "__main__":
    mp.set_start_method("spawn", force=True)
    from arena_rank.utils.data_utils import PairDataset
    from arena_rank.models.bradley_terry import BradleyTerry
    spec = json.loads(sys.argv[1])
    z = np.load(spec["votes"], allow_pickle=True)
    names = list(z["models"])
    df = pd.DataFrame({"model_a": np.asarray(names, dtype=object)[z["a"]], "model_b": np.asarray(names, dtype=object)[z["b"]],
                       "winner": np.asarray(["model_a", "model_b", "tie", "tie (bothbad)"], dtype=object)[z["o"]]})
    ds = PairDataset.from_pandas(df)
    out = {"competitors": list(ds.competitors)}
    model = BradleyTerry(n_competitors=len(ds.competitors))
    t = time.perf_counter(); model.fit(ds); out["fit_first_s"] = time.perf_counter() - t
    model2 = BradleyTerry(n_competitors=len(ds.competitors))
    t = time.perf_counter(); model2.fit(ds); out["fit_s"] = time.perf_counter() - t
    out["ratings"] = [float(x) for x in (model.params["ratings"] * model.alpha + model.init_rating)]
    # A warm single fit: arena-rank's own L-BFGS traced ONCE with the vote weights as an argument, then
    # refitted on resampled counts (what a bootstrap built from arena-rank's fit costs at best).
    import jax, jax.numpy as jnp
    from arena_rank.utils.math_utils import lbfgs_minimize
    data = ds.as_dict()
    init = {"ratings": jnp.zeros(len(ds.competitors), dtype=model.dtype)}
    warm_fit = jax.jit(lambda w: lbfgs_minimize(lambda p: BradleyTerry.loss_function(p, {**data, "opt_weights": w}), init,
                                                max_iter=model.max_iter, gtol=model.gtol, ftol=model.ftol)[0]["ratings"])
    rng = np.random.default_rng(0)
    probs = np.asarray(ds.counts, np.float64) / float(np.sum(ds.counts))
    draws = [jnp.asarray(rng.multinomial(int(np.sum(ds.counts)), probs) * np.asarray(ds.weights)) for _ in range(spec["fits"] + 1)]
    warm_fit(draws[0]).block_until_ready()
    times = []
    for w in draws[1:]:
        t = time.perf_counter()
        warm_fit(w).block_until_ready()
        times.append(time.perf_counter() - t)
    # The median of the single fits, the statistic jaxrank's bootstrap row uses too (median of its repeats).
    out["warm_fit_s"] = float(np.median(times))
    out["warm_fit_mean_s"] = float(np.mean(times))
    out["warm_fit_min_s"] = float(np.min(times))
    out["boot"] = {}
    for r in spec["rounds"]:
        t = time.perf_counter()
        model.compute_ratings_and_cis(ds, ci_method="bootstrap", num_bootstrap=r, seed=0)
        out["boot"][str(r)] = time.perf_counter() - t
    print("ARENA_JSON " + json.dumps(out), flush=True)
"""


def ensure_arena_venv(python: str | None) -> pathlib.Path:
    if python is not None:
        return pathlib.Path(python)
    python = ARENA_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {ARENA_VENV} with arena-rank==0.1.1 (one time)", flush=True)
        subprocess.run(["python3", "-m", "venv", str(ARENA_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "arena-rank==0.1.1"], check=True)
    return python


def run_arena(python: pathlib.Path, votes: pathlib.Path, rounds: list[int], fits: int = 20) -> dict:
    proc = subprocess.run(
        [str(python), "-c", ARENA_SCRIPT, json.dumps({"votes": str(votes), "rounds": rounds, "fits": fits})],
        capture_output=True, text=True, timeout=7200, env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    for line in proc.stdout.splitlines():
        if line.startswith("ARENA_JSON "):
            return json.loads(line[len("ARENA_JSON "):])
    raise RuntimeError(f"arena-rank subprocess failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def extrapolate(seconds: float, timed_rounds: int, target: int) -> float:
    """Proportional estimate `seconds * target / timed_rounds` (fixed start-up costs are scaled too, so
    this overestimates; the tables also give the measured time, a strict lower bound for `target`)."""
    return seconds * target / timed_rounds


# ---------------------------------------------------------------------------------------------- main


def votes_frame(battles, order=None) -> pd.DataFrame:
    names = np.asarray(battles.models, dtype=object)
    if battles.count is None:
        row = np.arange(len(battles))
    else:
        row = np.repeat(np.arange(len(battles)), battles.count)
        row = row[np.random.default_rng(0).permutation(row.size)]  # a random vote order
    a, b, o = battles.a[row], battles.b[row], battles.outcome[row]
    return pd.DataFrame({"model_a": names[a], "model_b": names[b], "winner": np.asarray(OUTCOME_NAMES, dtype=object)[o]}), (a, b, o)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="time every baseline at the full round counts")
    parser.add_argument("--rounds", type=int, default=1000, help="bootstrap rounds / Elo permutations (default 1000)")
    parser.add_argument("--synthetic-votes", type=int, default=1_000_000)
    parser.add_argument("--synthetic-models", type=int, default=100)
    parser.add_argument("--skip-arena", action="store_true", help="skip arena-rank (no venv)")
    parser.add_argument("--arena-python", help="python of an existing venv with arena-rank==0.1.1 (default: .venv-arena/, created if absent)")
    parser.add_argument("--datasets", default="llmfao,cli7k,synth", help="comma-separated: llmfao, cli7k, synth")
    parser.add_argument("--tasks", default="fit,bootstrap,elo", help="comma-separated: fit, bootstrap, elo (default: all)")
    parser.add_argument("--skip-slow-baselines", action="store_true",
                        help="bootstrap: only jaxrank vs the warm single fits of arena-rank (no FastChat loop, no arena-rank "
                             "bootstrap with its re-tracing rounds): the issue-18 table row, in seconds")
    parser.add_argument("--repeats", type=int, default=7, help="warm jaxrank bootstrap calls; the row is their median")
    parser.add_argument("--arena-fits", type=int, default=50,
                        help="warm single fits of arena-rank timed one by one; the row is R x their median")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ratings.csv"))
    args = parser.parse_args()
    R = args.rounds
    tasks = set(args.tasks.split(","))
    rows = []

    def add(dataset, task, impl, seconds, *, rounds=None, measured=None, extrapolated=False, diff=None, note=""):
        rows.append({"dataset": dataset, "task": task, "implementation": impl, "seconds": round(seconds, 4),
                     "rounds": rounds, "rounds_timed": measured, "extrapolated": extrapolated,
                     "max_abs_diff_elo_vs_jaxrank": None if diff is None else round(float(diff), 5), "note": note})
        print(f"{dataset:>10} {task:<22} {impl:<28} {seconds:10.3f} s  {'(extrapolated)' if extrapolated else ''} "
              f"{'' if diff is None else f'max|diff|={diff:.4f}'}", flush=True)

    arena_python = None if args.skip_arena else ensure_arena_venv(args.arena_python)
    key = jax.random.key(0)
    synth, _ = synthetic_votes(key, args.synthetic_models, args.synthetic_votes, ties="davidson", tie_param=0.8)
    wanted = set(args.datasets.split(","))
    datasets = []
    if "llmfao" in wanted:
        datasets.append(("llmfao", load_votes(LLMFAO)))
    if "cli7k" in wanted:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from cli import synthetic_votes as cli_votes  # the CLI benchmark's 7,040-vote, 9-model set

        with tempfile.TemporaryDirectory() as tmp:
            cli_path = pathlib.Path(tmp) / "votes.csv"
            cli_votes(cli_path)
            datasets.append(("cli7k", load_votes(cli_path)))
    if "synth" in wanted:
        datasets.append((f"synth{args.synthetic_votes // 1000}k", synth))

    for name, battles in datasets:
        df, (va, vb, vo) = votes_frame(battles)
        big = battles.num_votes > 100_000
        # --- single fit
        fit, t_first = timed(fit_bradley_terry, battles)
        fit, t_fit = timed(fit_bradley_terry, battles)
        ref = centred(fit.ratings)
        if "fit" in tasks:
            add(name, "fit", "jaxrank", t_fit, note=f"first call incl. compile {t_first:.2f} s; {int(fit.num_iter)} L-BFGS iterations")
            fc, t = timed(fastchat_compute_mle_elo, df)
            fc = fc.reindex(battles.models).to_numpy()
            add(name, "fit", "fastchat-style (scipy)", t, diff=np.abs(centred(fc) - ref).max())
            ch, t = timed(choix_fit, battles)
            add(name, "fit", "choix ilsr_pairwise_dense", t, diff=np.abs(centred(ch) - ref).max())

        arena = None
        if arena_python is not None and tasks & {"fit", "bootstrap"}:
            arena_rounds = [] if args.skip_slow_baselines else ([R] if args.full else ([4] if big else [20]))
            with tempfile.TemporaryDirectory() as tmp:
                path = pathlib.Path(tmp) / "votes.npz"
                np.savez(path, a=va, b=vb, o=vo, models=np.asarray(battles.models, dtype=object))
                arena = run_arena(arena_python, path, arena_rounds, args.arena_fits)
            ar = pd.Series(arena["ratings"], index=arena["competitors"]).reindex(battles.models).to_numpy()
            if "fit" in tasks:
                add(name, "fit", "arena-rank 0.1.1", arena["fit_s"], diff=np.abs(centred(ar) - ref).max(),
                    note=f"float64; first call {arena['fit_first_s']:.2f} s")

        if "bootstrap" in tasks:
            bootstrap_rows(name, battles, df, fit, arena, big, R, args, add)
        if "elo" in tasks:
            elo_rows(name, battles, df, va, vb, vo, big, R, args, add)

    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out, index=False)
    print(f"wrote {out}")


def bootstrap_rows(name, battles, df, fit, arena, big, R, args, add):
    # --- bootstrap, R rounds
    boot, t_boot_first = timed(bootstrap_ratings, jax.random.key(1), battles, num_rounds=R, fit=fit)
    warm = [timed(bootstrap_ratings, jax.random.key(2 + i), battles, num_rounds=R, fit=fit) for i in range(args.repeats)]
    # The median of the warm calls: the same statistic as arena-rank's row (the median of its single fits).
    t_boot = float(np.median([t for _, t in warm]))
    boot = warm[-1][0]
    add(name, f"bootstrap {R}", "jaxrank", t_boot, rounds=R, measured=R,
        note=f"median of {args.repeats} warm calls (mean {np.mean([t for _, t in warm]):.4f} s, min "
             f"{min(t for _, t in warm):.4f} s); first call incl. compile {t_boot_first:.2f} s; "
             f"{float(boot.converged.mean()):.1%} rounds converged")
    if not args.skip_slow_baselines:
        r_fc = R if args.full else (3 if big else 20)
        _, t_meas = timed(fastchat_bootstrap, df, r_fc)
        t_fc = extrapolate(t_meas, r_fc, R)
        add(name, f"bootstrap {R}", "fastchat-style loop", t_fc, rounds=R, measured=r_fc, extrapolated=r_fc != R,
            note=f"measured {t_meas:.1f} s for {r_fc} rounds (alone {t_meas / t_boot:.0f}x jaxrank's {R}); estimate x{t_fc / t_boot:.0f}")
    if arena is not None:
        t_fits = R * arena["warm_fit_s"]
        add(name, f"bootstrap {R}", f"{R} warm single fits of arena-rank 0.1.1", t_fits, rounds=R, measured=args.arena_fits,
            extrapolated=True, note=f"{R} x its warm jitted fit on resampled counts ({arena['warm_fit_s'] * 1e3:.3f} ms, "
            f"median of {args.arena_fits} (mean {arena['warm_fit_mean_s'] * 1e3:.3f} ms, min {arena['warm_fit_min_s'] * 1e3:.3f} ms); "
            f"traced once; counts drawn outside the timing); jaxrank's warm bootstrap (median) is x{t_fits / t_boot:.1f} faster")
        if not arena["boot"]:
            return
        (r_ar, t_meas), = ((int(k), v) for k, v in arena["boot"].items())
        t_ar = extrapolate(t_meas, r_ar, R)
        add(name, f"bootstrap {R}", "arena-rank 0.1.1", t_ar, rounds=R, measured=r_ar, extrapolated=r_ar != R,
            note=f"Pool(2) spawn; measured {t_meas:.1f} s for {r_ar} rounds (alone {t_meas / t_boot:.0f}x jaxrank's {R}, "
                 f"{t_meas / t_boot_first:.0f}x incl. compile); estimate x{t_ar / t_boot:.0f}")


def elo_rows(name, battles, df, va, vb, vo, big, R, args, add):
    # --- online Elo over random orders
    perms = R if not big or args.full else 100
    elo_in = (va, vb, vo)
    res, t_elo_first = timed(elo_permutations, jax.random.key(3), elo_in, num_permutations=perms,
                             num_models=battles.num_models)
    res, t_elo = timed(elo_permutations, jax.random.key(4), elo_in, num_permutations=perms, num_models=battles.num_models)
    add(name, f"elo {perms} perms", "jaxrank", t_elo, rounds=perms, measured=perms,
        note=f"first call incl. compile {t_elo_first:.2f} s; median spread {float(np.median(res.spread)):.1f} Elo")
    r_py = perms if args.full else (2 if big else 20)

    def loop():
        for i in range(r_py):
            fastchat_compute_elo(df.sample(frac=1.0, random_state=i))

    _, t_meas = timed(loop)
    t_py = extrapolate(t_meas, r_py, perms)
    add(name, f"elo {perms} perms", "python loop (fastchat)", t_py, rounds=perms, measured=r_py,
        extrapolated=r_py != perms, note=f"measured {t_meas:.1f} s for {r_py} orders; speedup of jaxrank x{t_py / t_elo:.0f}")


if __name__ == "__main__":
    main()
