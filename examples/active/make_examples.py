"""Writes the small synthetic arena of docs/active.md (deterministic): 200 prompts, 5 models, 3 pairs per
prompt, 3 human votes per pair and one judge vote per pair (`jaxrank.active.synthetic_arena`).

    PYTHONPATH=$PWD python examples/active/make_examples.py     # rewrites examples/active/*.csv

Files (Chatbot Arena layout: model_a, model_b, winner, prompt_id):
- human_all.csv: every prompt's human votes (a fully labelled set, for `jaxrank evaluate replay`);
- judge.csv: the judge's votes on every prompt;
- scores.csv: prompt_id, score (priority scores: the prompts' noisy decisiveness);
- plan.csv: `jaxrank plan --scores scores.csv --budget 60 --seed 0` (systematic design, tau = 0.1);
- human.csv: the human votes of the 60 prompts that plan selected (what a labelling campaign returns).
"""

import pathlib

import jax
import numpy as np
import pandas as pd

from jaxrank import active

HERE = pathlib.Path(__file__).resolve().parent
MODELS = ["gpt-4o", "claude-3.5", "llama-3-70b", "mixtral-8x7b", "qwen2-7b"]
WINNER = np.array(["model_a", "model_b", "tie"])


def frame(rows: active.UnitRows, ids: list[str]) -> pd.DataFrame:
    a, b, o, u = (np.asarray(x) for x in rows[:4])
    return pd.DataFrame({"model_a": np.array(MODELS)[a], "model_b": np.array(MODELS)[b], "winner": WINNER[o],
                         "prompt_id": np.array(ids)[u]})


def main() -> None:
    arena = active.synthetic_arena(jax.random.key(14), num_models=len(MODELS), num_units=200)
    ids = [f"p{i:03d}" for i in range(arena.num_units)]
    human, judge = frame(arena.human, ids), frame(arena.judge, ids)
    human.to_csv(HERE / "human_all.csv", index=False)
    judge.to_csv(HERE / "judge.csv", index=False)
    scores = pd.DataFrame({"prompt_id": ids, "score": np.round(np.asarray(arena.scores, np.float64), 6)})
    scores.to_csv(HERE / "scores.csv", index=False)
    # The plan `jaxrank plan --scores scores.csv --budget 60 --seed 0` draws (same function, same key).
    with jax.enable_x64(True):
        pi = np.asarray(active.inclusion_probabilities(scores["score"].to_numpy(), 60.0, uniform_mix=0.1), np.float64)
        selected = np.asarray(active.draw_sample(jax.random.key(0), pi, design="systematic"))
        plan = active.plan_frame(active.single_round(selected, pi, design="systematic"), ids)
    plan.to_csv(HERE / "plan.csv", index=False)
    chosen = set(plan.loc[plan["selected"], "prompt_id"])
    human[human["prompt_id"].isin(chosen)].to_csv(HERE / "human.csv", index=False)


if __name__ == "__main__":
    main()
