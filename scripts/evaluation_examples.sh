#!/usr/bin/env bash
# Reproduces every number and figure of docs/evaluation.md on the real data in ../shared/data.
#
#   bash scripts/evaluation_examples.sh            # all steps (the PandaLM scoring is reused if present)
#   RESCORE=1 bash scripts/evaluation_examples.sh  # also recompute the SmolLM2 priority scores
#
# Tables go to benchmarks/results/evaluation_*.csv, figures to docs/figures/*.png, intermediate files
# (scores, votes, the CLI's own tables) to runs/ (gitignored). Times on the shared 2-core CPU container:
# PandaLM scoring ~10-25 min depending on load (run.json records it), everything else a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
mkdir -p runs/pandalm runs/llmfao docs/figures benchmarks/results

echo "== 1. PandaLM: per-item priority scores from SmolLM2-135M-Instruct (jaxrank.lm)"
if [[ -n "${RESCORE:-}" || ! -f runs/pandalm/run.json ]]; then
  $PY scripts/pandalm_priority.py --out runs/pandalm --force
else
  echo "reusing runs/pandalm (RESCORE=1 recomputes)"; cat runs/pandalm/run.json
fi

echo "== 2. PandaLM: tie reduction and leaderboard stability per score (library)"
$PY scripts/pandalm_evaluation.py --runs runs/pandalm --figures docs/figures

echo "== 3. the same tie reduction through the CLI, and the check that both agree"
$PY -m jaxrank.cli evaluate ties --scores runs/pandalm/scores_divergence.csv --votes runs/pandalm/votes.csv \
    --out runs/pandalm/cli_ties_divergence.csv --plot runs/pandalm/cli_ties_divergence.png --force
$PY scripts/pandalm_evaluation.py --runs runs/pandalm --compare-cli runs/pandalm/cli_ties_divergence.csv --variant divergence
$PY -m jaxrank.cli evaluate stability --scores runs/pandalm/scores_divergence.csv --votes runs/pandalm/votes.csv \
    --out runs/pandalm/cli_stability_divergence.csv --force
$PY scripts/pandalm_evaluation.py --runs runs/pandalm --compare-cli runs/pandalm/cli_stability_divergence.csv --variant divergence

echo "== 4. LLMFAO: the papers' divergence score for the 13 crowd prompts (SmolLM2 vs Gemma 3 270M)"
$PY scripts/llmfao_checks.py --write-prompts runs/llmfao/prompts.jsonl
if [[ -n "${RESCORE:-}" || ! -f runs/llmfao/divergence.jsonl ]]; then
  $PY -m jaxrank.cli prioritize --model-a smollm2-135m-instruct --model-b gemma3-270m \
      --prompts runs/llmfao/prompts.jsonl --mode sequence --num-samples 8 --max-new-tokens 48 --seed 0 \
      --out runs/llmfao/divergence.jsonl --force
fi

echo "== 5. LLMFAO: crowd vs GPT-4 judge, stability and ties from the top-q prompts"
$PY scripts/llmfao_checks.py --divergence runs/llmfao/divergence.jsonl --figures docs/figures

echo "== 6. Judge budgets on MT-Bench GPT-4 scores (library), and the CLI on the same seed"
$PY -m jaxrank.cli budget simulate ../shared/data/judge_scores/mt_bench_eval.json --budget 25600 --runs 200 \
    --checkpoints 6400,9600,12800,16000,19200,22400 --seed 0 --out runs/budget_cli.csv --force
$PY scripts/judge_budget_curves.py --runs 200 --figures docs/figures --compare-cli runs/budget_cli.csv

echo "done: benchmarks/results/evaluation_*.csv, docs/figures/*.png"
