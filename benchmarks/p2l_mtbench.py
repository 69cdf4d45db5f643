"""MT-Bench per-category leaderboards: the plain Bradley–Terry fit of each category vs the global fit, and P2L.

Data: ../shared/data/judge_scores/mt_bench_eval.json (prometheus-eval): 80 MT-Bench questions (8 categories x 10)
x 4 models (llama2_chat_13b, chatgpt, vicuna_13b, wizardlm_13b), each response scored 3 times by GPT-4 on a 1-5
rubric. Votes: on each question, every pair of the 4 models (6 per question, 480 in all) is won by the higher MEAN
score, a tie when the means are equal (a tie is half a win each way, `bt-tie`). The prompt text of a question
(for P2L's features) is its first turn in ../shared/data/prompts/mt_bench_question.jsonl (question_id = idx).

What is measured:

1. Leaderboards: the global fit (all 480 votes) and each category's plain fit (its 60 votes), L2 `--l2` on theta
   (a weak prior: with 10 questions a model may never lose in a category, where maximum likelihood diverges);
   Spearman of each category's fit with the global fit. Written to `<out stem>_leaderboards.csv`.
2. Does the category move the leaderboard? Cross-fitted over questions (`--folds` folds, `--seeds` fold
   assignments): each held-out vote scored by the global fit and by its category's fit, both of the other folds'
   votes; the pooled difference (category fit - global) with a 95 % bootstrap over the 80 questions
   (`compare_heldout`).
3. P2L on these votes alone: `crossfit_heldout` of the residual head (L2 grid chosen on a validation split of the
   training questions) on frozen prompt features (`--encoders`), pooled over the 80 questions, and the
   per-category leaderboard P2L predicts (`aggregate_leaderboard` of the category's out-of-fold leaderboards)
   against the category's plain fit (Spearman). 64 training questions per fold: this measures whether 80 x 6
   votes can train P2L at all.

    PYTHONPATH=$PWD flock /tmp/jaxrank-bench.lock python benchmarks/p2l_mtbench.py
"""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import subprocess
import time
import warnings

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def load_mtbench():
    """`(votes, texts, category)`: pairwise votes by mean GPT-4 score; texts / category per prompt of the table."""
    import jaxrank

    records = json.loads((DATA / "judge_scores" / "mt_bench_eval.json").read_text())
    questions = {}
    for line in (DATA / "prompts" / "mt_bench_question.jsonl").read_text().splitlines():
        q = json.loads(line)
        questions[int(q["question_id"])] = q
    score, cat = {}, {}
    for r in records:
        score[(int(r["idx"]), r["response_source"])] = float(np.mean(r["gpt4_score"]))
        cat[int(r["idx"])] = r["category"]
    models = sorted({m for _, m in score})
    a, b, winner, prompt = [], [], [], []
    for idx in sorted(cat):
        for m1, m2 in itertools.combinations(models, 2):
            s1, s2 = score[(idx, m1)], score[(idx, m2)]
            a.append(m1)
            b.append(m2)
            winner.append("model_a" if s1 > s2 else "model_b" if s2 > s1 else "tie")
            prompt.append(f"{idx:03d}")
    votes = jaxrank.Votes.from_arrays(a, b, winner, prompt=prompt, models=models)
    ids = [int(p) for p in votes.prompt_ids]
    for i in ids:
        if questions[i]["category"] != cat[i]:
            raise SystemExit(f"question {i}: category {questions[i]['category']!r} != {cat[i]!r} in the scores")
    texts = [questions[i]["turns"][0] for i in ids]
    return votes, texts, np.array([cat[i] for i in ids])


def spearman(x, y) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(np.asarray(x), np.asarray(y)).statistic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", default="all-minilm-l6-v2,smollm2-135m-instruct")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--l2", type=float, default=0.1, help="L2 on theta of the plain (global, category) fits")
    parser.add_argument("--delta-l2", default="1e-4,1e-3,1e-2,1e-1,1,10")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--cache-dir", default=str(REPO / "benchmarks" / ".cache"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "p2l_mtbench.csv"))
    args = parser.parse_args()

    import jax
    import pandas as pd

    from jaxrank.lm.features import prompt_features
    from jaxrank.p2l import aggregate_leaderboard, compare_heldout, crossfit_heldout, vote_nll, VoteNLL
    from jaxrank.ratings import fit_bradley_terry

    load_avg = uptime()
    print(f"uptime: {load_avg}")
    votes, texts, category = load_mtbench()
    vote_cat = category[np.asarray(votes.prompt)]
    print(f"mt-bench: {votes}; ties {np.mean(votes.outcome == 2):.1%}")

    def fit(v):
        return np.asarray(fit_bradley_terry(v, ties="half", l2=args.l2).theta, np.float64)

    # 1. Leaderboards.
    theta_all = fit(votes)
    board = [dict(category="(all)", prompts=int(np.unique(votes.prompt).size), votes=len(votes),
                  spearman_global=1.0, **{f"theta_{m}": t for m, t in zip(votes.models, theta_all)})]
    for c in np.unique(category):
        sub = votes.subset(vote_cat == c)
        th = fit(sub)
        board.append(dict(category=c, prompts=int(np.unique(sub.prompt).size), votes=len(sub),
                          ties=float(np.mean(sub.outcome == 2)), spearman_global=spearman(th, theta_all),
                          **{f"theta_{m}": t for m, t in zip(votes.models, th)}))
    board = pd.DataFrame(board)
    print(board.to_string(float_format=lambda v: f"{v:+.3f}"))

    # 2. Category fit vs global, cross-fitted over questions; 3. P2L.
    rows, cat_rows = [], []
    grid = [float(v) for v in args.delta_l2.split(",")]
    present = np.unique(votes.prompt)
    feats = {}
    for enc in args.encoders.split(","):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            feats[enc] = prompt_features(texts, encoder=enc, cache_dir=args.cache_dir)
    for seed in (int(s) for s in args.seeds.split(",")):
        order = present[np.random.default_rng(seed).permutation(present.size)]
        fold = np.full(votes.num_prompts, -1)
        for f, part in enumerate(np.array_split(order, args.folds)):
            fold[part] = f
        vote_fold = fold[np.asarray(votes.prompt)]
        cat_parts, glob_parts = [], []
        for f in range(args.folds):
            test = vote_fold == f
            g = fit(votes.subset(~test))
            for c in np.unique(category):
                sel = test & (vote_cat == c)
                if not sel.any():
                    continue
                tc = fit(votes.subset(~test & (vote_cat == c)))
                glob_parts.append(vote_nll(g, None, votes.subset(sel)))
                cat_parts.append(vote_nll(tc, None, votes.subset(sel)))
        pooled = [VoteNLL(*(np.concatenate([getattr(p, n) for p in parts]) for n in VoteNLL._fields))
                  for parts in (cat_parts, glob_parts)]
        cmp = compare_heldout(jax.random.key(seed), pooled[0], pooled[1], rounds=args.bootstrap)
        rows.append(dict(method="category_fit", encoder="", seed=seed, folds=args.folds, prompts=cmp.num_prompts,
                         votes=cmp.num_votes, nll=cmp.nll, global_nll=cmp.baseline_nll, diff=cmp.difference,
                         diff_lo=cmp.lower, diff_hi=cmp.upper, l2=args.l2, uptime=load_avg))
        print(f"seed {seed} category fit vs global: NLL {cmp.nll:.4f} vs {cmp.baseline_nll:.4f} diff "
              f"{cmp.difference:+.4f} [{cmp.lower:+.4f}, {cmp.upper:+.4f}]", flush=True)
        for enc, x in feats.items():
            t0 = time.perf_counter()
            ev = crossfit_heldout(jax.random.key(seed), x, votes, folds=args.folds, delta_l2=grid,
                                  learning_rate=args.lr, batch_size=args.batch_size, max_epochs=args.epochs,
                                  patience=args.patience, val_fraction=args.val_fraction, rounds=args.bootstrap)
            cmp = ev.comparison
            rows.append(dict(method="p2l_residual", encoder=enc, seed=seed, folds=args.folds,
                             prompts=cmp.num_prompts, votes=cmp.num_votes, nll=cmp.nll, global_nll=cmp.baseline_nll,
                             diff=cmp.difference, diff_lo=cmp.lower, diff_hi=cmp.upper, l2=None,
                             fold_delta_l2=";".join(f"{c:g}" for c in ev.chosen_delta_l2),
                             fold_best_epoch=";".join(str(e) for e in ev.best_epoch),
                             train_seconds=round(time.perf_counter() - t0, 1), uptime=load_avg))
            print(f"seed {seed} P2L residual ({enc}) vs global (ML, per fold): NLL {cmp.nll:.4f} vs "
                  f"{cmp.baseline_nll:.4f} diff {cmp.difference:+.4f} [{cmp.lower:+.4f}, {cmp.upper:+.4f}] l2 "
                  f"{rows[-1]['fold_delta_l2']} best epochs {rows[-1]['fold_best_epoch']}", flush=True)
            for c in np.unique(category):
                sub = votes.subset(vote_cat == c)
                agg = aggregate_leaderboard(ev.beta[present], loss="bt-tie",
                                            prompt_weights=np.isin(present, np.unique(sub.prompt)).astype(np.float32))
                plain = board.loc[board.category == c, [f"theta_{m}" for m in votes.models]].to_numpy()[0]
                cat_rows.append(dict(encoder=enc, seed=seed, category=c,
                                     spearman_p2l_vs_category_fit=spearman(agg.theta, plain),
                                     spearman_global_vs_category_fit=spearman(theta_all, plain),
                                     **{f"p2l_theta_{m}": t for m, t in zip(votes.models, np.asarray(agg.theta))}))
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(out, index=False, float_format="%.5f")
    board["uptime"] = load_avg
    board.to_csv(out.with_name(out.stem + "_leaderboards.csv"), index=False, float_format="%.5f")
    cats = pd.DataFrame(cat_rows)
    cats["uptime"] = load_avg
    cats.to_csv(out.with_name(out.stem + "_categories.csv"), index=False, float_format="%.5f")
    print(frame.groupby(["method", "encoder"])[["diff", "diff_lo", "diff_hi"]].mean().to_string(
        float_format=lambda v: f"{v:+.4f}"))
    print(cats.groupby(["encoder", "category"])[["spearman_p2l_vs_category_fit",
                                                 "spearman_global_vs_category_fit"]].mean().to_string(
        float_format=lambda v: f"{v:+.3f}"))
    print(f"wrote {out} (+ _leaderboards, _categories); uptime at the end: {uptime()}")


if __name__ == "__main__":
    main()
