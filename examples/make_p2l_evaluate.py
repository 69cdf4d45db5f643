"""Write the tiny synthetic inputs the README's P2L and evaluate examples name (run from the repository root):

- examples/p2l/votes.csv: 240 Arena-style votes (model_a, model_b, winner, prompt) over 24 prompts and 4 models,
  drawn from a Bradley–Terry model whose strengths depend on the prompt's topic (code vs writing);
- examples/p2l/prompts.jsonl: 6 prompts to rank models on; examples/p2l/costs.json: a cost per model;
- examples/evaluate/votes.csv (with prompt_id) and examples/evaluate/scores.csv (prompt_id, score): 40 prompts
  whose score is higher where the two models tie less often.

    python examples/make_p2l_evaluate.py
"""

import csv
import json
import pathlib

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
MODELS = ["coder-7b", "writer-7b", "generalist-70b", "tiny-1b"]
TOPICS = {"code": ["Write a Python function that {}.", ["reverses a list", "parses a date", "merges two dicts",
                                                      "counts words", "checks a palindrome", "flattens a list"]],
          "writing": ["Write a short {} about autumn.", ["poem", "story", "letter", "haiku", "limerick", "toast"]]}
STRENGTH = {"code": [1.0, -0.5, 0.8, -1.0], "writing": [-0.5, 1.0, 0.8, -1.0]}


def main() -> None:
    rng = np.random.default_rng(0)
    prompts = [(topic, tmpl.format(x)) for topic, (tmpl, items) in TOPICS.items() for x in items]
    prompts = prompts + [(t, p.replace("Write", "Please write")) for t, p in prompts]       # 24 prompts
    with open(HERE / "p2l" / "votes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model_a", "model_b", "winner", "prompt"])
        for _ in range(240):
            topic, text = prompts[rng.integers(len(prompts))]
            a, b = rng.choice(len(MODELS), 2, replace=False)
            d = STRENGTH[topic][a] - STRENGTH[topic][b]
            p_tie = 0.2
            u = rng.random()
            winner = "tie" if u < p_tie else ("model_a" if rng.random() < 1 / (1 + np.exp(-d)) else "model_b")
            w.writerow([MODELS[a], MODELS[b], winner, text])
    with open(HERE / "p2l" / "prompts.jsonl", "w") as f:
        for i, text in enumerate(["Write a Python function that sorts a list.", "Write a short poem about rain.",
                                  "Write a Python class for a stack.", "Write a short story about a cat.",
                                  "Explain recursion in one paragraph.", "Write a toast for a wedding."]):
            f.write(json.dumps({"id": f"q{i}", "prompt": text}) + "\n")
    (HERE / "p2l" / "costs.json").write_text(json.dumps(
        {"coder-7b": 0.2, "writer-7b": 0.2, "generalist-70b": 1.0, "tiny-1b": 0.05}, indent=1) + "\n")

    # Evaluate: 40 prompts; on prompt p the two answers tie with probability tie[p]; the score predicts it.
    tie = np.linspace(0.05, 0.6, 40)
    rng.shuffle(tie)
    with open(HERE / "evaluate" / "votes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model_a", "model_b", "winner", "prompt_id"])
        for p in range(40):
            for _ in range(6):
                a, b = rng.choice(len(MODELS), 2, replace=False)
                winner = "tie" if rng.random() < tie[p] else ("model_a" if rng.random() < 0.5 + 0.1 * (b - a) else "model_b")
                w.writerow([MODELS[a], MODELS[b], winner, f"p{p:02d}"])
    with open(HERE / "evaluate" / "scores.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt_id", "score"])
        for p in range(40):
            w.writerow([f"p{p:02d}", f"{1.0 - tie[p] + 0.05 * rng.standard_normal():.4f}"])


if __name__ == "__main__":
    main()
