#!/usr/bin/env bash
# The rows of issue 18's speed table in one run (each baseline interleaved with jaxrank inside its script),
# CSVs into benchmarks/results/speed_*.csv, the load average before and after every step into
# benchmarks/results/speed_table_runs.csv. About 8 minutes on an idle 2-core CPU.
#
#   flock /tmp/jaxrank-bench.lock benchmarks/run_speed_table.sh          # on a shared machine: under the lock
#   PYTHON=/path/to/python benchmarks/run_speed_table.sh                 # another interpreter
#   TIMEOUT_SCALE=4 benchmarks/run_speed_table.sh                        # a loaded machine: 4x each step's time limit
#
# Rows (issue 18):
#   score_pairs f32/bf16 [8, 512, 32000]   benchmarks/divergence.py   public call vs its jitted kernel, floor, torch
#   CLI start-up, leaderboard, budget      benchmarks/cli.py          whole processes, cold/warm, vs arena-rank / NumPy
#   warm 1,000-round bootstrap             benchmarks/ratings.py      vs 1,000 warm single fits of arena-rank (cli7k)
#   online Elo, 100 orders of 1M votes     benchmarks/elo_chunks.py   vs FastChat's Python loop (1 order, x100)
#   teacher-forced LM scoring              benchmarks/lm_scoring.py   vs transformers PyTorch CPU
# arena-rank runs in .venv-arena/ (created by the benchmarks when absent: pip install arena-rank==0.1.1).
set -u
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
RES=benchmarks/results
LOG=$RES/speed_table_runs.csv
mkdir -p "$RES"
echo "step,seconds,exit_code,load_before,load_after,machine" > "$LOG"
machine="$(nproc) cores $(uname -m) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//;s/,//g')"

step() {  # step NAME TIMEOUT_S COMMAND...
    local name=$1 limit=$2; shift 2
    local before after start rc
    before=$(cut -d' ' -f1 /proc/loadavg)
    start=$(date +%s.%N)
    echo "=== $name (load $before): $*"
    timeout "$((limit * ${TIMEOUT_SCALE:-1}))" "$@"
    rc=$?
    after=$(cut -d' ' -f1 /proc/loadavg)
    printf '%s,%.1f,%s,%s,%s,%s\n' "$name" "$(echo "$(date +%s.%N) - $start" | bc)" "$rc" "$before" "$after" \
        "$machine" >> "$LOG"
}

step divergence 150 "$PYTHON" benchmarks/divergence.py --shapes 8x512x32000 --dtypes f32,bf16 \
    --methods floor,jaxrank-blockwise,jaxrank-score_pairs,jaxrank-score_pairs-jit,torch-eager,torch-compile \
    --rounds 1 --repeats 3 --out $RES/speed_divergence.csv
step cli 150 "$PYTHON" benchmarks/cli.py --tasks startup,leaderboard,budget --rounds 1 --out $RES/speed_cli.csv
step bootstrap 60 "$PYTHON" benchmarks/ratings.py --datasets cli7k --tasks bootstrap --skip-slow-baselines \
    --out $RES/speed_bootstrap.csv
step elo 120 "$PYTHON" benchmarks/elo_chunks.py --default-only --out $RES/speed_elo.csv
step lm_scoring 120 "$PYTHON" benchmarks/lm_scoring.py --repeats 3 --out $RES/speed_lm_scoring.csv
cat "$LOG"
