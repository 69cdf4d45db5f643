"""Memory plans of language-model calls: the estimate of `jaxrank.lm.memory.forward_bytes` against the peak
memory a real forward pass takes (SmolLM2-135M-Instruct, float32, on this machine's CPU).

Each shape runs in a fresh process: load the model, run a small warm-up call, then the measured call while a
thread samples the resident memory (`VmRSS`) every 2 ms; the measured figure is its peak during the call
minus its value just before, so it includes XLA's compilation of the new shape. Writes
`benchmarks/results/memory_plans.csv`.

    python benchmarks/memory_plans.py            # about a minute per shape on a 2-core CPU
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import subprocess
import sys

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
SHAPES = [  # (stage, rows, length)
    ("features", 1, 1024),
    ("features", 1, 2048),
    ("features", 1, 4096),
    ("features", 4, 2048),
    ("generate", 1, 2048),
    ("generate", 2, 2048),
]

CHILD = r"""
import json, sys, threading, time
import jax, jax.numpy as jnp, numpy as np
from jaxrank.lm import load_model
from jaxrank.lm.features import last_token_fn
from jaxrank.lm.generate import generate
from jaxrank.lm.memory import forward_bytes
from jaxrank.lm.pipeline import ModelSide

stage, rows, length = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lm = load_model("smollm2-135m-instruct")
side = ModelSide(lm, "A")
fn = last_token_fn(side.graphdef)

def call(b, t):
    ids = np.full((b, t), 5, np.int32); mask = np.ones((b, t), bool)
    if stage == "features":
        return np.asarray(fn(side.state, jnp.asarray(ids), jnp.asarray(mask)))
    return np.asarray(generate(lm, ids, mask, max_new_tokens=8)[0])

def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))

call(1, 16)
base, peak, done = rss(), [0], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss()); time.sleep(0.002)
t = threading.Thread(target=sample); t.start()
call(rows, length)
done.set(); t.join()
peak = peak[0]
kw = dict(logit_positions=1, keys=length + 8) if stage == "generate" else {}
print(json.dumps({"measured": peak - base, "estimate": forward_bytes(side.config, rows, length, **kw)}))
"""


def main() -> int:
    load = os.getloadavg()[0]
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "memory_plans.csv"
    rows_out = []
    for stage, rows, length in SHAPES:
        res = subprocess.run([sys.executable, "-c", CHILD, stage, str(rows), str(length)], capture_output=True,
                             text=True, check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
        r = json.loads(res.stdout.strip().splitlines()[-1])
        ratio = r["estimate"] / max(r["measured"], 1)
        rows_out.append([stage, rows, length, r["measured"], r["estimate"], f"{ratio:.2f}", f"{load:.2f}"])
        print(f"{stage:9s} rows {rows} x {length:5d} tokens: measured {r['measured'] / 1e9:6.2f} GB, "
              f"estimate {r['estimate'] / 1e9:6.2f} GB (x{ratio:.2f})", flush=True)
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["stage", "rows", "length", "measured_bytes", "estimate_bytes", "estimate_over_measured",
                    "load_1min"])
        w.writerows(rows_out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
