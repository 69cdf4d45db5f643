"""Ctrl-C latency of long commands on the real data: how long after SIGINT the CLI exits, and how.

Each case starts `jaxrank ...` as a subprocess with a size that would run for many minutes, waits `DELAYS`
seconds (past start-up, reading and compilation: the long compiled calls are running), sends SIGINT, as a
terminal's Ctrl-C does, and measures the time until the process exits, its exit status and its last stderr
line. Writes `benchmarks/results/interrupt_latency.csv` (with the 1-minute load average).

    python benchmarks/interrupt_latency.py          # about four minutes; needs ../shared/data
"""

from __future__ import annotations

import csv
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
DELAYS = (20.0, 60.0)
CASES = {
    # 1,000,000 bootstrap rounds of LLMFAO (59 models, ~9k votes): hours of work in chunks of ~1 s.
    "leaderboard --bootstrap 1000000": ["leaderboard", str(DATA / "llmfao" / "crowd-comparisons.csv"),
                                        "--bootstrap", "1000000"],
    # 100,000 Monte-Carlo runs of the three allocators on MT-Bench judge scores.
    "budget simulate --budget 20000 --runs 100000": ["budget", "simulate", str(DATA / "judge_scores" / "mt_bench_eval.json"),
                                      "--budget", "20000", "--runs", "100000"],
}


def measure(args: list[str], delay: float) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with tempfile.TemporaryFile() as err:
        # A terminal's Ctrl-C reaches a process whose SIGINT is not ignored; a command started in the background
        # of a non-interactive shell inherits SIG_IGN (and would never see it), so the child restores the default.
        proc = subprocess.Popen([sys.executable, "-m", "jaxrank.cli", *args], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=err,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(delay)
        if proc.poll() is not None:
            err.seek(0)
            raise RuntimeError(f"{args} finished before the signal (rc {proc.returncode}): {err.read()[-300:]!r}")
        sent = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
            rc = f"no exit within 180 s (killed, {rc})"
        latency = time.perf_counter() - sent
        err.seek(0)
        lines = [line for line in err.read().decode(errors="replace").splitlines() if line.strip()]
    return {"latency_s": round(latency, 2), "rc": rc, "last_line": lines[-1] if lines else "",
            "stderr_lines": len(lines)}


def main() -> None:
    if not DATA.is_dir():
        sys.exit(f"needs the real data in {DATA}")
    RESULTS.mkdir(exist_ok=True)
    rows = []
    for name, args in CASES.items():
        for delay in DELAYS:
            row = {"case": name, "signal_after_s": delay, **measure(args, delay), "load_1min": os.getloadavg()[0]}
            print(row, flush=True)
            rows.append(row)
    with open(RESULTS / "interrupt_latency.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
