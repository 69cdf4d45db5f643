"""Benchmark: the `jaxrank` command line as whole processes, cold and warm, against what users run instead.

Every figure is the wall time of a whole process (start-up, imports, reading, compiling or loading from
the compilation cache, computing, writing), timed with `time.perf_counter` around `subprocess.run`.
"cold" runs start with an empty compilation cache (a fresh `JAXRANK_CACHE_DIR` each time: a first run);
"warm" runs share one cache that an untimed run filled (every later run). Baselines run interleaved
with jaxrank, round after round, and each figure is the best round (the least disturbed on a shared
machine); the load average is recorded with every row.

Tasks (`--tasks`):
  startup      `jaxrank --help` and `python -c "import jaxrank"` vs `python -c "import jax"`
               (goal: --help in at most half the time of importing JAX).
  leaderboard  `jaxrank leaderboard VOTES --bootstrap 1000 --out FILE` on a synthetic 7,040-vote,
               9-model arena (Bradley-Terry strengths, 25 % ties, seed 0) and on LLMFAO (8,931 votes,
               59 models, when ../shared/data is present), vs a script that imports arena-rank 0.1.1
               and computes its sandwich intervals once (in `.venv-arena/`, as benchmarks/ratings.py;
               arena-rank pins jax 0.8.1). Goal: warm jaxrank >= 1.5x faster.
  budget       `jaxrank budget simulate ITEMS --budget 100000 --runs 50` on 1,000 items with 10 observed
               scores each (all three allocators, empirical pools), vs the same simulation in NumPy: a
               plain loop per run (timed on --loop-runs runs, scaled to 50) and one loop over steps
               vectorised over the runs (benchmarks/allocation.py's, drawing from the same pools).
               Goals: >= 40x the loop, >= 3x the vectorised NumPy.

    python benchmarks/cli.py                          # all tasks, 3 rounds (about 10 minutes on 2 cores)
    python benchmarks/cli.py --tasks startup --rounds 5

Writes benchmarks/results/cli.csv and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED = REPO.parent / "shared" / "data"
ARENA_VENV = REPO / ".venv-arena"
sys.path.insert(0, str(REPO / "benchmarks"))

ARENA_SCRIPT = r"""
import sys
import pandas as pd
from arena_rank.utils.data_utils import PairDataset
from arena_rank.models.bradley_terry import BradleyTerry
df = pd.read_csv(sys.argv[1])
ds = PairDataset.from_pandas(df)
model = BradleyTerry(n_competitors=len(ds.competitors))
res = model.compute_ratings_and_cis(ds, ci_method="sandwich")
pd.DataFrame({"model": res["competitors"], "rating": res["ratings"], "lower": res["rating_lower"],
              "upper": res["rating_upper"]}).sort_values("rating", ascending=False).to_csv(sys.argv[2], index=False)
"""


def load_now() -> float:
    return os.getloadavg()[0]


def jaxrank_cmd() -> list[str]:
    script = pathlib.Path(sys.executable).with_name("jaxrank")
    return [str(script)] if script.exists() else [sys.executable, "-m", "jaxrank.cli"]


def run(cmd: list[str], env: dict[str, str], cwd: pathlib.Path) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}")
    return wall


# ---------------------------------------------------------------------------------------------- data


def synthetic_votes(path: pathlib.Path, num_models: int = 9, num_votes: int = 7040, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    names = [f"model-{chr(ord('a') + i)}" for i in range(num_models)]
    theta = rng.normal(0.0, 0.6, num_models)
    a = rng.integers(0, num_models, num_votes)
    b = (a + rng.integers(1, num_models, num_votes)) % num_models
    p_a = 1.0 / (1.0 + np.exp(-(theta[a] - theta[b])))
    winner = np.where(rng.random(num_votes) < 0.25, "tie", np.where(rng.random(num_votes) < p_a, "model_a", "model_b"))
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model_a", "model_b", "winner"])
        w.writerows(zip(np.asarray(names)[a], np.asarray(names)[b], winner))


def llmfao_votes(path: pathlib.Path) -> bool:
    """LLMFAO's crowd votes in Arena columns (the same file for jaxrank and arena-rank)."""
    src = SHARED / "llmfao" / "crowd-comparisons.csv"
    if not src.exists():
        return False
    import pandas as pd

    df = pd.read_csv(src, dtype=str, keep_default_na=False)
    winner = df["winner"].map({"left": "model_a", "right": "model_b", "tie": "tie"})
    pd.DataFrame({"model_a": df["model_x"], "model_b": df["model_y"], "winner": winner}).to_csv(path, index=False)
    return True


def judge_items(path: pathlib.Path, num_items: int = 1000, scores_each: int = 10, seed: int = 0) -> list[list[float]]:
    """Heteroscedastic items (means U[1, 5], variances log-uniform on [0.01, 1]) with observed scores."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(1.0, 5.0, num_items)
    sd = np.sqrt(np.exp(rng.uniform(np.log(0.01), np.log(1.0), num_items)))
    pools = [[round(float(x), 4) for x in means[i] + sd[i] * rng.standard_normal(scores_each)] for i in range(num_items)]
    with path.open("w") as f:
        for i, p in enumerate(pools):
            f.write(json.dumps({"id": f"item{i}", "scores": p}) + "\n")
    return pools


def ensure_arena_venv() -> pathlib.Path | None:
    python = ARENA_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {ARENA_VENV} with arena-rank==0.1.1 (one time)", flush=True)
        try:
            subprocess.run(["python3", "-m", "venv", str(ARENA_VENV)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", "arena-rank==0.1.1"], check=True)
        except (subprocess.CalledProcessError, OSError) as err:
            print(f"arena-rank unavailable: {err}", flush=True)
            return None
    return python


# ---------------------------------------------------------------------------------------------- timing


class Rounds:
    """Interleaved repeats: `add(name, fn)` registers, `go(rounds)` calls every fn once per round."""

    def __init__(self) -> None:
        self.fns: dict[str, object] = {}
        self.times: dict[str, list[float]] = {}
        self.loads: dict[str, list[float]] = {}

    def add(self, name: str, fn) -> None:
        self.fns[name] = fn
        self.times[name] = []
        self.loads[name] = []

    def go(self, rounds: int) -> None:
        for r in range(rounds):
            for name, fn in self.fns.items():
                self.loads[name].append(load_now())
                self.times[name].append(fn())
                print(f"  round {r + 1}: {name:44s} {self.times[name][-1]:8.2f} s   (load {self.loads[name][-1]:.1f})",
                      flush=True)

    def row(self, task: str, name: str, **extra) -> dict:
        t = self.times[name]
        return {"task": task, "what": name, "best_s": round(min(t), 3), "median_s": round(float(np.median(t)), 3),
                "rounds": len(t), "load_min": round(min(self.loads[name]), 1),
                "load_max": round(max(self.loads[name]), 1), **extra}


def cache_env(base: dict[str, str], folder: pathlib.Path) -> dict[str, str]:
    env = dict(base)
    env.pop("JAXRANK_NO_CACHE", None)
    env["JAXRANK_CACHE_DIR"] = str(folder)
    return env


def cold_and_warm(rounds: Rounds, label: str, argv: list[str], env: dict[str, str], tmp: pathlib.Path,
                  out: pathlib.Path) -> None:
    """Register a cold (fresh cache each call) and a warm (shared, pre-filled cache) variant of a command."""
    warm_dir = tmp / f"cache-warm-{label}"
    counter = iter(range(10**6))

    def cold():
        folder = tmp / f"cache-cold-{label}-{next(counter)}"
        out.unlink(missing_ok=True)
        wall = run(argv, cache_env(env, folder), tmp)
        shutil.rmtree(folder, ignore_errors=True)
        return wall

    def warm():
        out.unlink(missing_ok=True)
        return run(argv, cache_env(env, warm_dir), tmp)

    warm()  # fill the shared cache (untimed)
    rounds.add(f"jaxrank {label} (cold: empty cache)", cold)
    rounds.add(f"jaxrank {label} (warm: cache filled)", warm)


# ---------------------------------------------------------------------------------------------- tasks


def task_startup(env, tmp, args) -> list[dict]:
    r = Rounds()
    py = sys.executable
    r.add("python -c pass", lambda: run([py, "-c", "pass"], env, tmp))
    r.add("python -c 'import jax'", lambda: run([py, "-c", "import jax"], env, tmp))
    r.add("python -c 'import jaxrank'", lambda: run([py, "-c", "import jaxrank"], env, tmp))
    r.add("jaxrank --help", lambda: run(jaxrank_cmd() + ["--help"], env, tmp))
    r.add("jaxrank leaderboard --help", lambda: run(jaxrank_cmd() + ["leaderboard", "--help"], env, tmp))
    r.go(args.rounds)
    jax_s = min(r.times["python -c 'import jax'"])
    rows = []
    for name in r.fns:
        rows.append(r.row("startup", name, ratio=round(min(r.times[name]) / jax_s, 3),
                          ratio_of="time / import jax", goal="--help <= 0.5" if "help" in name else ""))
    return rows


def task_leaderboard(env, tmp, args) -> list[dict]:
    rows = []
    sets = []
    synth = tmp / "votes-7040x9.csv"
    synthetic_votes(synth)
    sets.append(("synthetic 7,040 votes x 9 models", synth))
    llmfao = tmp / "llmfao-arena.csv"
    if llmfao_votes(llmfao):
        sets.append(("LLMFAO 8,931 votes x 59 models", llmfao))
    arena = None if args.skip_arena else ensure_arena_venv()
    arena_env = {k: v for k, v in env.items() if k != "PYTHONPATH"} | {"JAX_PLATFORMS": "cpu"}
    for label, votes in sets:
        print(f"\n[leaderboard] {label}", flush=True)
        r = Rounds()
        out = tmp / "lb.csv"
        argv = jaxrank_cmd() + ["leaderboard", str(votes), "--bootstrap", str(args.bootstrap), "--out", str(out)]
        cold_and_warm(r, "leaderboard", argv, env, tmp, out)
        if arena is not None:
            script = tmp / "arena_sandwich.py"
            script.write_text(ARENA_SCRIPT)
            r.add("arena-rank 0.1.1 script, sandwich intervals",
                  lambda: run([str(arena), str(script), str(votes), str(tmp / "arena.csv")], arena_env, tmp))
        r.go(args.rounds)
        base = min(r.times["arena-rank 0.1.1 script, sandwich intervals"]) if arena is not None else float("nan")
        for name in r.fns:
            rows.append(r.row(f"leaderboard: {label}", name, ratio=round(base / min(r.times[name]), 3),
                              ratio_of="arena-rank script / this (> 1: this is faster)",
                              goal=">= 1.5 (warm)" if "warm" in name else ""))
    return rows


def task_budget(env, tmp, args) -> list[dict]:
    from allocation import numpy_loop, numpy_vector, pool_draw

    items = tmp / "items.jsonl"
    pools = judge_items(items, args.items)
    means = np.array([np.mean(p) for p in pools])
    var = np.array([np.var(p) for p in pools])
    draw = pool_draw(pools)
    allocators = ("uniform", "robin", "robin-hood")
    budget, runs, delta = args.budget, args.runs, 0.007
    ck = sorted({(budget * j // 10) for j in range(1, 11)})
    print(f"\n[budget] {args.items} items, B = {budget}, {runs} runs", flush=True)
    r = Rounds()
    out = tmp / "budget.csv"
    argv = jaxrank_cmd() + ["budget", "simulate", str(items), "--budget", str(budget), "--runs", str(runs),
                            "--out", str(out)]
    cold_and_warm(r, "budget simulate", argv, env, tmp, out)

    def vector():
        t = time.perf_counter()
        for a in allocators:
            numpy_vector(a, means, var, budget, ck, delta, runs, np.random.default_rng(1), draw=draw)
        return time.perf_counter() - t

    def loop():
        t = time.perf_counter()
        rng = np.random.default_rng(2)
        for a in allocators:
            for _ in range(args.loop_runs):
                numpy_loop(a, means, var, budget, ck, delta, rng, draw=draw)
        return (time.perf_counter() - t) * runs / args.loop_runs

    if not args.skip_numpy:
        r.add("NumPy vectorised over runs (3 allocators)", vector)
        r.add(f"NumPy plain loop (3 allocators, {args.loop_runs} run(s) timed, x{runs // args.loop_runs})", loop)
    r.go(args.rounds)
    rows = []
    loop_name = next((n for n in r.fns if n.startswith("NumPy plain")), None)
    for name in r.fns:
        best = min(r.times[name])
        extra = {}
        if not args.skip_numpy:
            extra = {"ratio": round(min(r.times[loop_name]) / best, 2),
                     "ratio_of": "NumPy loop / this; NumPy vectorised / this = "
                                 f"{min(r.times['NumPy vectorised over runs (3 allocators)']) / best:.2f}",
                     "goal": ">= 40 and >= 3" if name.startswith("jaxrank") else ""}
        rows.append(r.row("budget simulate", name, **extra))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="startup,leaderboard,budget")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--budget", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--loop-runs", type=int, default=1, help="runs of the plain NumPy loop timed (scaled to --runs)")
    ap.add_argument("--skip-arena", action="store_true")
    ap.add_argument("--skip-numpy", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "cli.csv"))
    args = ap.parse_args(argv)

    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("JAX_PLATFORMS", "cpu")
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs visible, Python {platform.python_version()}"
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"machine: {machine}\nuptime at start: {uptime}", flush=True)
    tasks = {"startup": task_startup, "leaderboard": task_leaderboard, "budget": task_budget}
    rows = []
    with tempfile.TemporaryDirectory(prefix="jaxrank-cli-bench-") as tmp:
        for name in args.tasks.split(","):
            rows += tasks[name](env, pathlib.Path(tmp), args)
    uptime_end = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    for row in rows:
        row["machine"] = machine
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = ["task", "what", "best_s", "median_s", "rounds", "ratio", "ratio_of", "goal", "load_min", "load_max",
              "machine"]
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    print(f"\nuptime at end: {uptime_end}\n")
    cols = ["task", "what", "best_s", "median_s", "ratio", "ratio_of", "goal", "load_min", "load_max"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(str(row.get(c, "")) for c in cols) + " |")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
