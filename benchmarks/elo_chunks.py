"""Online Elo, 100 orders of 1M synthetic votes: the default chunking (one scan of 100 lanes) vs the old
(two scans of 50), identical numbers, and one order of FastChat's Python loop; wall and CPU time.

    PYTHONPATH=$PWD python benchmarks/elo_chunks.py [--default-only] [--out CSV]

`--default-only` times only the default chunking (the issue-18 table row: 100 orders vs the Python loop).
"""
import argparse, sys, time, os
import pathlib
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks")); sys.path.insert(0, str(REPO))
import numpy as np, jax
from ratings import fastchat_compute_elo, votes_frame
from jaxrank.ratings import elo_permutations, synthetic_votes
ap = argparse.ArgumentParser()
ap.add_argument("--default-only", action="store_true")
ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "elo_chunks.csv"))
args = ap.parse_args()
synth, _ = synthetic_votes(jax.random.key(0), 100, 1_000_000, ties="davidson", tie_param=0.8)
df, (va, vb, vo) = votes_frame(synth)
print("votes", len(df), "load", os.getloadavg())
def timed(f):
    s = time.perf_counter(); c = time.process_time(); out = f(); jax.block_until_ready(getattr(out, "ratings", out)); return time.perf_counter() - s, time.process_time() - c, out
res = {}
rows = []
configs = [("new default (one chunk of 100)", {}), ("old default (two chunks of 50)", {"chunk_size": 50})]
for name, kw in configs[:1] if args.default_only else configs:
    t0 = timed(lambda: elo_permutations(jax.random.key(3), (va, vb, vo), num_permutations=100, num_models=100, **kw))
    t1 = timed(lambda: elo_permutations(jax.random.key(4), (va, vb, vo), num_permutations=100, num_models=100, **kw))
    res[name] = t1[2].ratings
    print(f"{name}: first {t0[0]:.1f} s, warm {t1[0]:.1f} s wall, {t1[1]:.1f} s CPU, load {os.getloadavg()[0]:.1f}", flush=True)
    rows.append({"method": f"jaxrank elo_permutations, {name}", "orders": 100, "wall_s": round(t1[0], 2),
                 "cpu_s": round(t1[1], 2), "first_call_s": round(t0[0], 2), "load_1m": round(os.getloadavg()[0], 1)})
if not args.default_only:
    a, b = res.values()
    print("same numbers:", bool(np.array_equal(np.asarray(a), np.asarray(b))))
t = timed(lambda: fastchat_compute_elo(df.sample(frac=1.0, random_state=0)))
rows.append({"method": "python loop (fastchat), 1 order timed, x100", "orders": 100, "wall_s": round(100 * t[0], 1),
             "cpu_s": round(100 * t[1], 1), "first_call_s": "", "load_1m": round(os.getloadavg()[0], 1)})
import csv
rows[-1]["speedup_of_first_row"] = round(rows[-1]["wall_s"] / rows[0]["wall_s"], 1)
with open(args.out, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[-1]))
    w.writeheader()
    w.writerows(rows)
print(f"python loop, 1 order: {t[0]:.1f} s wall, {t[1]:.1f} s CPU -> 100 orders ~{100*t[0]:.0f} s; load {os.getloadavg()[0]:.1f}")
