"""Writes the tiny synthetic vote files of docs/votes.md, one per layout jaxrank reads (deterministic).

    python examples/votes/make_examples.py        # rewrites examples/votes/*.{csv,json,jsonl}
"""

import json
import pathlib

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
MODELS = ["gpt-4o", "claude-3.5", "llama-3-70b", "mixtral-8x7b", "qwen2-7b"]
STRENGTH = np.array([0.9, 0.7, 0.3, 0.0, -0.4])


def votes(seed, n=60, both_bad=True):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        i, j = rng.choice(len(MODELS), 2, replace=False)
        tokens = rng.integers(80, 900, 2)
        d = STRENGTH[i] - STRENGTH[j] + 0.4 * (tokens[0] - tokens[1]) / tokens.sum()
        p = 1 / (1 + np.exp(-d))
        u = rng.random()
        winner = ("tie" if u < 0.12 else "tie (bothbad)" if both_bad and u < 0.17 else
                  "model_a" if rng.random() < p else "model_b")
        out.append(dict(k=k, i=int(i), j=int(j), a=MODELS[i], b=MODELS[j], winner=winner, p=float(p),
                        tokens=[int(t) for t in tokens], headers=[int(x) for x in rng.integers(0, 4, 2)],
                        lists=[int(x) for x in rng.integers(0, 6, 2)], bold=[int(x) for x in rng.integers(0, 5, 2)],
                        question=k // 3, judge=f"judge_{k % 7}", turn=1 + k % 2))
    return out


def main():
    # Chatbot Arena arena-human-preference-100k layout, as JSON Lines (conv_metadata nested, as released).
    with open(HERE / "arena.jsonl", "w") as f:
        for v in votes(0):
            f.write(json.dumps({
                "question_id": f"q{v['question']:03d}", "model_a": v["a"], "model_b": v["b"], "winner": v["winner"],
                "judge": v["judge"], "turn": v["turn"], "language": "English", "anony": True,
                "conv_metadata": {"sum_user_tokens": 20, "sum_assistant_a_tokens": v["tokens"][0],
                                  "sum_assistant_b_tokens": v["tokens"][1],
                                  "header_count_a": {"h1": v["headers"][0], "h2": 0},
                                  "header_count_b": {"h1": v["headers"][1], "h2": 0},
                                  "list_count_a": {"ordered": v["lists"][0], "unordered": 0},
                                  "list_count_b": {"ordered": 0, "unordered": v["lists"][1]},
                                  "bold_count_a": {"**": v["bold"][0], "__": 0},
                                  "bold_count_b": {"**": v["bold"][1], "__": 0}},
            }) + "\n")
    # Kaggle lmsys-chatbot-arena (arena-human-preference-55k): one-hot winners, JSON-encoded turns.
    rows = ["id,model_a,model_b,prompt,response_a,response_b,winner_model_a,winner_model_b,winner_tie"]
    for v in votes(1, both_bad=False):
        hot = [int(v["winner"] == w) for w in ("model_a", "model_b", "tie")]
        cells = [str(v["k"]), v["a"], v["b"], json.dumps([f"Question {v['question']}?"]),
                 json.dumps(["a" * (v["tokens"][0] // 8)]), json.dumps(["b" * (v["tokens"][1] // 8)])] + [str(h) for h in hot]
        rows.append(",".join('"' + c.replace('"', '""') + '"' if "," in c or '"' in c else c for c in cells))
    (HERE / "arena_55k.csv").write_text("\n".join(rows) + "\n")
    # FastChat clean_battle_*.json: a JSON list of records.
    (HERE / "clean_battle.json").write_text(json.dumps([
        {"model_a": v["a"], "model_b": v["b"], "winner": v["winner"], "judge": v["judge"], "turn": v["turn"],
         "anony": True, "language": "English", "tstamp": 1.72e9 + 60 * v["k"]} for v in votes(2)], indent=1) + "\n")
    # MT-Bench human judgments (HF lmsys/mt_bench_human_judgments, "human" split) as JSON Lines.
    with open(HERE / "mt_bench.jsonl", "w") as f:
        for v in votes(3, both_bad=False):
            f.write(json.dumps({"question_id": 81 + v["question"], "model_a": v["a"], "model_b": v["b"],
                                "winner": v["winner"], "judge": f"expert_{v['k'] % 4}", "turn": v["turn"]}) + "\n")
    # AlpacaEval annotations.json: soft preferences (1 + P(generator_2 wins)) and answer lengths.
    rng = np.random.default_rng(4)
    (HERE / "alpaca_eval.json").write_text(json.dumps([
        {"instruction": f"Instruction {v['question']}", "instruction_idx": v["question"], "dataset": "helpful_base",
         "generator_1": v["a"], "generator_2": v["b"], "annotator": "weighted_alpaca_eval_gpt4_turbo",
         "preference": round(float(2.0 - np.clip(v["p"] + rng.normal(0, 0.15), 0.01, 0.99)), 6),
         "len_output_1": 4 * v["tokens"][0], "len_output_2": 4 * v["tokens"][1]} for v in votes(5)], indent=1) + "\n")


if __name__ == "__main__":
    main()
