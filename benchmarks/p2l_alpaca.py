"""P2L vs the global Bradley–Terry leaderboard on AlpacaEval (and PandaLM): held-out NLL per vote, split by prompt.

AlpacaEval (../shared/data/alpaca_eval): 22,967 soft GPT-4-turbo judgments of 58 models against
gpt4_1106_preview on 403 instructions, each `p_a` a probability (a soft vote scores its cross-entropy).
PandaLM (../shared/data/pandalm): 2,997 human votes (3 per item, ties included) of 5 models on 170 distinct
prompts. For each seed the distinct PROMPTS are split 80/20; every method is trained on the training prompts'
votes and scored by the mean NLL per held-out vote (`jaxrank.p2l.vote_nll`, the same likelihood for all, loss
`bt-tie`: a soft vote is its cross-entropy, a tie half a win each way). The interval is
`jaxrank.p2l.compare_heldout`'s 95 % bootstrap over held-out prompts of the difference method - global.

Methods:

- `global`: `fit_bradley_terry` of the training votes (prompt-blind), one leaderboard for every prompt;
- `head`: the plain linear P2L head on frozen prompt features (`train_p2l`, bias started at the global fit);
- `residual`: `beta = beta_global + Delta(prompt)`, `Delta` linear on frozen features, its L2 chosen on the
  training prompts' 20 % validation split over a grid (`train_p2l(key, ..., delta_l2=...)`), the global fit a candidate.

AlpacaEval per-category (its `dataset` column: helpful_base, koala, oasst, selfinstruct, vicuna): on each
category's held-out votes, the NLL of the global leaderboard, of P2L per prompt, of P2L's aggregate
leaderboard of the category's held-out prompts (`aggregate_leaderboard`), and of the plain fit on the
category's training votes; and each leaderboard's Spearman correlation with the plain fit on the category's
held-out votes. Written to `<out stem>_categories.csv`.

- `last-k`, `lora` (`jaxrank.p2l_finetune.train_p2l_finetune`, encoder smollm2-135m-instruct only): the same
  residual head with the backbone fine-tuned: its last `--k` blocks on the frozen prefix computed ONCE for all
  prompts and seeds (`frozen_prefix`), or LoRA (rank `--lora-rank`) on every block; prompts cut to
  `--ft-max-length` tokens (their end kept), `--ft-epochs` epochs of `--ft-batch-prompts` prompts per step, bf16
  compute with f32 master weights, the L2 on Delta `--ft-delta-l2`, the best epoch on a `--val-fraction` split
  of the training prompts (the start, i.e. the global fit, a candidate). On a 2-core CPU these are short runs:
  the rows say exactly what ran (`ft_*` columns).

`--split kfold` (`--folds K`, default 5; `--inner-folds J` optional): cross-fitted evaluation
(`jaxrank.p2l.crossfit_heldout`) instead of one 80/20 split. For each seed (a fold assignment) the
instructions are split into K folds; for each fold the global fit (`fit_bradley_terry`, maximum likelihood) and
the head (residual: L2 grid and early stopping on a `--val-fraction` split of the TRAINING folds' prompts, or
with `--inner-folds` the L2 by J-fold over them; its base then replaced by the fold's global fit) are fit on
the other folds; every instruction is held out exactly once and the pooled per-vote NLL difference over ALL
instructions gets one prompt bootstrap (`--bootstrap` rounds). A `seed = mean` row averages the seeds' out-of-
fold NLLs per vote (one bootstrap over prompts, all seeds' rows of a prompt resampled together). AlpacaEval
rows also record the fixed-baseline check (`baseline_check`). Per category: out-of-fold NLL of the global fit,
P2L and the category's own plain fit (of the other folds), and Spearman of the P2L aggregate and of the global
fit with the plain fit of all the category's votes. Written to `p2l_<dataset>_kfold[_categories].csv`.

Features: `prompt_features`, cached under benchmarks/.cache/ (ignored by git).

    PYTHONPATH=$PWD flock /tmp/jaxrank-bench.lock python benchmarks/p2l_alpaca.py
    PYTHONPATH=$PWD flock /tmp/jaxrank-bench.lock python benchmarks/p2l_alpaca.py --dataset pandalm
    PYTHONPATH=$PWD flock /tmp/jaxrank-bench.lock python benchmarks/p2l_alpaca.py --split kfold --methods residual
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import subprocess
import sys
import time
import warnings

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DELTA_L2 = "1e-4,1e-3,1e-2,1e-1,1,10"


def load(dataset: str):
    """`(votes, texts, category or None)`: `texts[p]` is prompt p's text (the feature rows), category [N]."""
    import jaxrank

    if dataset == "alpaca":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the baseline-vs-itself rows are dropped (a warning says so)
            votes = jaxrank.load_votes(DATA / "alpaca_eval" / "preferences_even.csv.gz")
        text = {}
        for line in (DATA / "alpaca_eval" / "instructions_even.jsonl").read_text().splitlines():
            row = json.loads(line)
            text[str(row["instruction_idx"])] = row["instruction"]
        return votes, [text[i] for i in votes.prompt_ids], np.asarray(votes.meta["dataset"]).astype(str)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from p2l_pandalm import load_pandalm

    prompts, a, b, winner, prompt = load_pandalm(DATA / "pandalm" / "testset-v1.json")
    votes = jaxrank.Votes.from_arrays(a, b, winner).replace(
        prompt=prompt, prompt_ids=tuple(str(i) for i in range(len(prompts))))
    return votes, prompts, None


def spearman(x, y) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(np.asarray(x), np.asarray(y)).statistic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("alpaca", "pandalm"), default="alpaca")
    parser.add_argument("--encoders", default="smollm2-135m-instruct,all-minilm-l6-v2")
    parser.add_argument("--methods", default="head,residual")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--split", choices=("random", "kfold"), default="random",
                        help="random: one --test-fraction split by prompt per seed; kfold: cross-fitted K folds by "
                        "prompt per seed (jaxrank.p2l.crossfit_heldout), every prompt held out once, pooled")
    parser.add_argument("--folds", type=int, default=5, help="--split kfold: K")
    parser.add_argument("--inner-folds", type=int, default=None, help="--split kfold: choose the residual head's "
                        "L2 by K-fold over each training fold's prompts (nested CV) instead of one validation split")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay of the plain head")
    parser.add_argument("--delta-l2", default=DELTA_L2, help="L2 grid of the residual head")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--val-fraction", type=float, default=0.2, help="training prompts held out for early "
                        "stopping and the L2 choice")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap rounds over held-out prompts")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--cache-dir", default=str(REPO / "benchmarks" / ".cache"))
    parser.add_argument("--k", type=int, default=2, help="last-k: blocks fine-tuned")
    parser.add_argument("--lora-rank", type=int, default=4)
    parser.add_argument("--ft-max-length", type=int, default=32, help="fine-tuning: tokens per prompt (end kept)")
    parser.add_argument("--ft-epochs", type=int, default=2)
    parser.add_argument("--ft-batch-prompts", type=int, default=16)
    parser.add_argument("--ft-lr", type=float, default=1e-4, help="fine-tuning: the backbone's peak learning rate")
    parser.add_argument("--ft-head-lr", type=float, default=3e-3, help="fine-tuning: the head's peak learning rate")
    parser.add_argument("--ft-delta-l2", type=float, default=1e-2, help="fine-tuning: L2 on the head's Delta")
    parser.add_argument("--ft-seeds", default=None, help="seeds of the fine-tuning rows (default: --seeds)")
    parser.add_argument("--lora-seeds", default=None, help="seeds of the LoRA rows (default: --ft-seeds)")
    parser.add_argument("--out", default=None, help="CSV (default benchmarks/results/p2l_<dataset>_heldout.csv)")
    args = parser.parse_args()
    if args.split == "kfold":
        return main_kfold(args)

    import jax
    import pandas as pd

    from jaxrank.lm.features import prompt_features
    from jaxrank.p2l import aggregate_leaderboard, compare_heldout, train_p2l, vote_nll
    from jaxrank.ratings import fit_bradley_terry

    load_avg = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"uptime: {load_avg}")
    votes, texts, category = load(args.dataset)
    print(f"{args.dataset}: {votes}")
    grid = [float(v) for v in args.delta_l2.split(",")]
    rows, cat_rows = [], []
    methods = args.methods.split(",")
    ft_methods = [m for m in methods if m in ("last-k", "lora")]
    ft_seeds = {int(x) for x in (args.ft_seeds or args.seeds).split(",")}
    lora_seeds = {int(x) for x in args.lora_seeds.split(",")} if args.lora_seeds else ft_seeds
    lm = ids = mask = prefix = None
    if ft_methods:
        from jaxrank.lm import load_model
        from jaxrank.p2l_finetune import frozen_prefix, tokenize_prompts, train_p2l_finetune

        lm = load_model("smollm2-135m-instruct")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ids, mask = tokenize_prompts(lm, texts, max_length=args.ft_max_length)
        if "last-k" in ft_methods:
            t0 = time.perf_counter()
            prefix = frozen_prefix(lm.model, ids, mask, k=args.k, batch_size=args.ft_batch_prompts)
            prefix_seconds = time.perf_counter() - t0
            print(f"frozen prefix (blocks 0..{lm.model.config.num_layers - args.k - 1}) of {ids.shape[0]} prompts x "
                  f"{ids.shape[1]} tokens: {prefix_seconds:.1f} s", flush=True)
    for encoder in args.encoders.split(","):
        t0 = time.perf_counter()
        if any(m in ("head", "residual") for m in methods):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a few long prompts are truncated (a TruncationWarning)
                feats = prompt_features(texts, encoder=encoder, cache_dir=args.cache_dir, max_length=args.max_length)
            print(f"{encoder}: features {feats.shape} in {time.perf_counter() - t0:.1f} s")
        for seed in (int(s) for s in args.seeds.split(",")):
            rng = np.random.default_rng(seed)
            present = np.unique(votes.prompt)
            n_test = int(round(args.test_fraction * present.size))
            test_prompts = rng.permutation(present)[:n_test]
            is_test = np.isin(votes.prompt, test_prompts)
            train, test = votes.subset(~is_test), votes.subset(is_test)
            t0 = time.perf_counter()
            bt = fit_bradley_terry(train, ties="half")
            seconds = {"global": time.perf_counter() - t0}
            theta = np.asarray(bt.theta, np.float32)
            base = vote_nll(theta, None, test, loss="bt-tie")
            betas = {}
            for method in methods:
                t0 = time.perf_counter()
                ft_row = {}
                if method in ("last-k", "lora"):
                    if encoder != "smollm2-135m-instruct" or seed not in (lora_seeds if method == "lora" else ft_seeds):
                        continue
                    fit = train_p2l_finetune(jax.random.key(seed),
                        lm.model, ids, mask, train, mode=method, k=args.k, lora_rank=args.lora_rank,
                        delta_l2=args.ft_delta_l2, learning_rate=args.ft_lr, head_learning_rate=args.ft_head_lr,
                        batch_prompts=args.ft_batch_prompts, max_epochs=args.ft_epochs, val_fraction=args.val_fraction, prefix=prefix if method == "last-k" else None)
                    seconds[method] = time.perf_counter() - t0
                    beta = np.asarray(fit.coefficients(lm.model, ids, mask, batch_size=args.ft_batch_prompts,
                                                       prefix=prefix if method == "last-k" else None)[0])
                    ft_row = dict(ft_max_length=int(ids.shape[1]), ft_epochs=args.ft_epochs,
                                  ft_k=args.k if method == "last-k" else None,
                                  ft_lora_rank=args.lora_rank if method == "lora" else None,
                                  ft_batch_prompts=args.ft_batch_prompts, ft_lr=args.ft_lr, ft_head_lr=args.ft_head_lr,
                                  delta_l2_ft=args.ft_delta_l2,
                                  prefix_seconds=round(prefix_seconds, 1) if method == "last-k" else None)
                    betas[method] = beta
                    cmp = compare_heldout(jax.random.key(1000 + seed), vote_nll(beta, None, test, loss="bt-tie"), base,
                                          rounds=args.bootstrap)
                    h = fit.history
                    # Against the fine-tuning's own start (Delta = 0: the head's base, the L2-regularised global fit),
                    # which is not the plain maximum-likelihood `global` row.
                    start = np.asarray(fit.head_stats["base"][...], np.float32)
                    vs_start = compare_heldout(jax.random.key(2000 + seed), vote_nll(beta, None, test, loss="bt-tie"),
                                               vote_nll(start, None, test, loss="bt-tie"), rounds=args.bootstrap)
                    ft_row.update(diff_vs_start=vs_start.difference, diff_vs_start_lo=vs_start.lower,
                                  diff_vs_start_hi=vs_start.upper)
                    row = dict(dataset=args.dataset, encoder=encoder, method=method, seed=seed,
                               train_prompts=present.size - n_test, test_prompts=cmp.num_prompts,
                               test_votes=round(cmp.num_votes, 1), nll=cmp.nll, global_nll=cmp.baseline_nll,
                               diff=cmp.difference, diff_lo=cmp.lower, diff_hi=cmp.upper, epochs=h["epochs"],
                               best_epoch=h["best_epoch"], val_nll=h.get("best_val_nll"),
                               global_val_nll=h.get("baseline_val_nll"), delta_l2=args.ft_delta_l2,
                               train_seconds=round(seconds[method], 2), global_seconds=round(seconds["global"], 3),
                               uptime=load_avg, **ft_row)
                    rows.append(row)
                    print(f"  {encoder} {method:>8s} seed {seed}: NLL {cmp.nll:.4f} global {cmp.baseline_nll:.4f} "
                          f"diff {cmp.difference:+.4f} [{cmp.lower:+.4f}, {cmp.upper:+.4f}] best epoch "
                          f"{h['best_epoch']} ({seconds[method]:.1f} s; uptime "
                          f"{subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()})", flush=True)
                    continue
                if method == "start":
                    # The estimator of the residual and fine-tuned heads' base (solve_bradley_terry, l2 = 1e-3), here
                    # on ALL training votes (the heads fit it on their training split, without validation prompts).
                    from jaxrank.ratings.bradley_terry import solve_bradley_terry

                    r = train.rows(merge=False)
                    theta0 = np.asarray(solve_bradley_terry(np.asarray(r.count, np.float32), r.a, r.b, r.outcome,
                                                            num_models=train.num_models, ties="half", l2=1e-3).theta,
                                        np.float32)
                    seconds[method] = time.perf_counter() - t0
                    cmp = compare_heldout(jax.random.key(1000 + seed), vote_nll(theta0, None, test, loss="bt-tie"),
                                          base, rounds=args.bootstrap)
                    rows.append(dict(dataset=args.dataset, encoder=encoder, method=method, seed=seed,
                                     train_prompts=present.size - n_test, test_prompts=cmp.num_prompts,
                                     test_votes=round(cmp.num_votes, 1), nll=cmp.nll, global_nll=cmp.baseline_nll,
                                     diff=cmp.difference, diff_lo=cmp.lower, diff_hi=cmp.upper,
                                     train_seconds=round(seconds[method], 2), uptime=load_avg))
                    print(f"  {method:>8s} seed {seed}: NLL {cmp.nll:.4f} global {cmp.baseline_nll:.4f} diff "
                          f"{cmp.difference:+.4f} [{cmp.lower:+.4f}, {cmp.upper:+.4f}]", flush=True)
                    continue
                if method == "head":
                    model = train_p2l(jax.random.key(seed), feats, train, learning_rate=args.lr,
                                      weight_decay=args.weight_decay, batch_size=args.batch_size,
                                      max_epochs=args.epochs, patience=args.patience, val_fraction=args.val_fraction)
                elif method == "residual":
                    model = train_p2l(jax.random.key(seed), feats, train, learning_rate=args.lr, delta_l2=grid,
                                      batch_size=args.batch_size, max_epochs=args.epochs, patience=args.patience,
                                      val_fraction=args.val_fraction)
                else:
                    raise SystemExit(f"unknown method {method!r}")
                seconds[method] = time.perf_counter() - t0
                beta = np.asarray(model.coefficients(feats)[0])
                betas[method] = beta
                cmp = compare_heldout(jax.random.key(1000 + seed), vote_nll(beta, None, test, loss="bt-tie"), base,
                                      rounds=args.bootstrap)
                h = model.history
                row = dict(dataset=args.dataset, encoder=encoder, method=method, seed=seed,
                           train_prompts=present.size - n_test, test_prompts=cmp.num_prompts,
                           test_votes=round(cmp.num_votes, 1), nll=cmp.nll, global_nll=cmp.baseline_nll,
                           diff=cmp.difference, diff_lo=cmp.lower, diff_hi=cmp.upper, epochs=h["epochs"],
                           best_epoch=h["best_epoch"], val_nll=h.get("best_val_nll"),
                           global_val_nll=h.get("baseline_val_nll"),
                           delta_l2=model.config.get("chosen_delta_l2"), train_seconds=round(seconds[method], 2),
                           global_seconds=round(seconds["global"], 3), uptime=load_avg)
                rows.append(row)
                print(f"  {encoder} {method:>8s} seed {seed}: NLL {cmp.nll:.4f} global {cmp.baseline_nll:.4f} "
                      f"diff {cmp.difference:+.4f} [{cmp.lower:+.4f}, {cmp.upper:+.4f}] best epoch {h['best_epoch']} "
                      f"l2 {row['delta_l2']} ({seconds[method]:.1f} s)", flush=True)
            if category is None or "residual" not in betas:
                continue
            beta = betas["residual"]
            cat_test = category[is_test]
            cat_train = category[~is_test]
            for c in np.unique(category):
                sub = test.subset(cat_test == c)
                tr = train.subset(cat_train == c)
                prompts_c = np.unique(sub.prompt)
                # The category's held-out prompts as 0/1 weights over all held-out prompts: one shape, one
                # compilation for every category and seed.
                held = np.unique(test.prompt)
                agg = aggregate_leaderboard(beta[held], prompt_weights=np.isin(held, prompts_c).astype(np.float32),
                                            loss="bt-tie")
                plain_train = np.asarray(fit_bradley_terry(tr, ties="half").theta, np.float32)
                plain_test = np.asarray(fit_bradley_terry(sub, ties="half").theta)
                nll = {name: vote_nll(b, None, sub, loss="bt-tie").mean() for name, b in
                       (("global", theta), ("p2l", beta), ("p2l_aggregate", np.asarray(agg.theta)),
                        ("category_fit", plain_train))}
                cat_rows.append(dict(
                    encoder=encoder, seed=seed, category=c, test_prompts=prompts_c.size, test_votes=len(sub),
                    **{f"nll_{k}": v for k, v in nll.items()},
                    spearman_global=spearman(theta, plain_test), spearman_p2l_aggregate=spearman(agg.theta, plain_test),
                    spearman_category_fit=spearman(plain_train, plain_test)))
                r = cat_rows[-1]
                print(f"    {c:>12s}: NLL global {r['nll_global']:.4f} p2l {r['nll_p2l']:.4f} aggregate "
                      f"{r['nll_p2l_aggregate']:.4f} category fit {r['nll_category_fit']:.4f}; Spearman vs held-out "
                      f"category fit: global {r['spearman_global']:.3f} aggregate {r['spearman_p2l_aggregate']:.3f} "
                      f"category fit {r['spearman_category_fit']:.3f}")
    frame = pd.DataFrame(rows)
    out = pathlib.Path(args.out or REPO / "benchmarks" / "results" / f"p2l_{args.dataset}_heldout.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False, float_format="%.5f")
    summary = frame.groupby(["encoder", "method"]).agg(
        nll=("nll", "mean"), global_nll=("global_nll", "mean"), diff=("diff", "mean"), seeds=("seed", "count"),
        better_significant=("diff_hi", lambda d: int((d < 0).sum())),
        worse_significant=("diff_lo", lambda d: int((d > 0).sum())), seconds=("train_seconds", "mean"))
    print(summary.to_string(float_format=lambda v: f"{v:.4f}"))
    if cat_rows:
        cat_out = out.with_name(out.stem + "_categories.csv")
        cats = pd.DataFrame(cat_rows)
        cats.to_csv(cat_out, index=False, float_format="%.5f")
        print(cats.drop(columns=["seed"]).groupby(["encoder", "category"]).mean().to_string(
            float_format=lambda v: f"{v:.4f}"))
        print(f"wrote {cat_out}")
    print(f"wrote {out} ({platform.processor() or platform.machine()}, {jax.device_count()} device(s)); "
          f"uptime at the end: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


def baseline_check(votes, beta) -> dict:
    """AlpacaEval's fixed baseline: the identified quantities and the head's handling of it (item of issue 17).

    Every vote is `model vs gpt4_1106_preview`, so the likelihood sees only `beta_m(p) - beta_base(p)`. The head
    outputs centred leaderboards (mean 0 over the models, the baseline one of them, its column of Delta trained
    like every other): pinning the baseline at 0 instead (`beta - beta[:, base]`) must give the same NLL."""
    from jaxrank.p2l import vote_nll

    counts = np.bincount(np.concatenate([votes.a, votes.b]), minlength=votes.num_models)
    base = int(np.argmax(counts))
    in_every = bool(((votes.a == base) | (votes.b == base)).all())
    pinned = beta - beta[:, base:base + 1]
    d = np.abs(vote_nll(beta, None, votes).nll - vote_nll(pinned, None, votes).nll).max()
    present = np.unique(votes.prompt)
    rel = beta[present] - beta[present, base:base + 1]  # the identified leaderboard, vs the baseline
    return dict(baseline=votes.models[base], baseline_in_every_vote=in_every, pinned_nll_max_abs_diff=float(d),
                baseline_beta_sd_over_prompts=float(beta[present, base].std()),
                relative_beta_sd_over_prompts=float(rel.std(axis=0).mean()))


def main_kfold(args) -> None:
    """`--split kfold`: per encoder, method and seed, `crossfit_heldout` (K folds by prompt, pooled, one bootstrap)."""
    import jax
    import pandas as pd

    from jaxrank.lm.features import prompt_features
    from jaxrank.p2l import VoteNLL, aggregate_leaderboard, compare_heldout, crossfit_heldout, vote_nll
    from jaxrank.ratings import fit_bradley_terry

    load_avg = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"uptime: {load_avg}")
    votes, texts, category = load(args.dataset)
    print(f"{args.dataset}: {votes}")
    grid = [float(v) for v in args.delta_l2.split(",")]
    methods = args.methods.split(",")
    if any(m not in ("head", "residual") for m in methods):
        raise SystemExit("--split kfold runs the methods head and residual only")
    rows, cat_rows = [], []
    for encoder in args.encoders.split(","):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a few long prompts are truncated (a TruncationWarning)
            feats = prompt_features(texts, encoder=encoder, cache_dir=args.cache_dir, max_length=args.max_length)
        print(f"{encoder}: features {feats.shape} in {time.perf_counter() - t0:.1f} s", flush=True)
        for method in methods:
            opts = dict(learning_rate=args.lr, batch_size=args.batch_size, max_epochs=args.epochs,
                        patience=args.patience, val_fraction=args.val_fraction)
            if method == "residual":
                opts["delta_l2"] = grid
            else:
                opts["weight_decay"] = args.weight_decay
            evs = []
            for seed in (int(s) for s in args.seeds.split(",")):
                t0 = time.perf_counter()
                ev = crossfit_heldout(jax.random.key(seed), feats, votes, folds=args.folds, loss="bt-tie",
                                      rounds=args.bootstrap,
                                      inner_folds=args.inner_folds if method == "residual" else None, **opts)
                seconds = time.perf_counter() - t0
                cmp = ev.comparison
                row = dict(dataset=args.dataset, encoder=encoder, method=method, seed=seed, split="kfold",
                           folds=args.folds, inner_folds=args.inner_folds,
                           test_prompts=cmp.num_prompts, test_votes=round(cmp.num_votes, 1),
                           nll=cmp.nll, global_nll=cmp.baseline_nll, diff=cmp.difference, diff_lo=cmp.lower,
                           diff_hi=cmp.upper, excludes_0=bool(cmp.upper < 0 or cmp.lower > 0),
                           fold_diffs=";".join(f"{d:+.4f}" for d in ev.fold_difference),
                           fold_delta_l2=";".join("" if c is None else f"{c:g}" for c in ev.chosen_delta_l2),
                           fold_best_epoch=";".join(str(e) for e in ev.best_epoch),
                           train_seconds=round(seconds, 1), uptime=load_avg,
                           uptime_end=subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
                if args.dataset == "alpaca":
                    row.update(baseline_check(votes, ev.beta))
                rows.append(row)
                evs.append(ev)
                print(f"  {encoder} {method:>8s} seed {seed}: NLL {cmp.nll:.4f} global {cmp.baseline_nll:.4f} diff "
                      f"{cmp.difference:+.4f} [{cmp.lower:+.4f}, {cmp.upper:+.4f}] over {cmp.num_prompts} prompts; "
                      f"folds {row['fold_diffs']} l2 {row['fold_delta_l2']} best epochs {row['fold_best_epoch']} "
                      f"({seconds:.0f} s; {row['uptime_end']})", flush=True)
                if category is None or method != "residual":
                    continue
                # Per category, out of fold: each held-out vote scored by its fold's fits (global, P2L, the plain
                # fit of the category's votes in the other folds); P2L's aggregate of the category's prompts'
                # out-of-fold leaderboards; Spearman against the plain fit of ALL the category's votes.
                vote_fold = ev.fold[np.asarray(votes.prompt)]
                present = np.unique(votes.prompt)
                for c in np.unique(category):
                    in_c = category == c
                    sub = votes.subset(in_c)
                    parts = {"global": [], "p2l": [], "category_fit": []}
                    for f in range(args.folds):
                        test_f = votes.subset(in_c & (vote_fold == f))
                        if not len(test_f):
                            continue
                        plain_f = np.asarray(fit_bradley_terry(votes.subset(in_c & (vote_fold != f)),
                                                               ties="half").theta, np.float32)
                        for name, b in (("global", ev.global_theta[f]), ("p2l", ev.beta), ("category_fit", plain_f)):
                            parts[name].append(vote_nll(b, None, test_f, loss="bt-tie"))
                    nll = {k: float(sum((p.weight * p.nll).sum() for p in v) / sum(p.weight.sum() for p in v))
                           for k, v in parts.items()}
                    prompts_c = np.unique(sub.prompt)
                    agg = aggregate_leaderboard(ev.beta[present], loss="bt-tie",
                                                prompt_weights=np.isin(present, prompts_c).astype(np.float32))
                    plain_all = np.asarray(fit_bradley_terry(sub, ties="half").theta)
                    global_all = np.asarray(fit_bradley_terry(votes, ties="half").theta)
                    cat_rows.append(dict(
                        encoder=encoder, seed=seed, category=c, prompts=prompts_c.size, votes=len(sub),
                        **{f"nll_{k}": v for k, v in nll.items()},
                        spearman_global=spearman(global_all, plain_all),
                        spearman_p2l_aggregate=spearman(agg.theta, plain_all), uptime=load_avg))
                    r = cat_rows[-1]
                    print(f"    {c:>12s}: out-of-fold NLL global {r['nll_global']:.4f} p2l {r['nll_p2l']:.4f} "
                          f"category fit {r['nll_category_fit']:.4f}; Spearman vs the category's plain fit: global "
                          f"{r['spearman_global']:.3f} p2l aggregate {r['spearman_p2l_aggregate']:.3f}", flush=True)
            if len(evs) > 1:
                # Repeated cross-fitting: every prompt's votes scored once per seed; the mean over the seeds (each
                # row's weight / S) with ONE bootstrap over the prompts (all seeds' rows of a prompt move together).
                pooled = [VoteNLL(np.concatenate([getattr(e, side).nll for e in evs]),
                                  np.concatenate([getattr(e, side).weight for e in evs]) / len(evs),
                                  np.concatenate([getattr(e, side).prompt for e in evs]))
                          for side in ("model", "baseline")]
                cmp = compare_heldout(jax.random.key(10_000), pooled[0], pooled[1], rounds=args.bootstrap)
                rows.append(dict(dataset=args.dataset, encoder=encoder, method=method, seed="mean", split="kfold",
                                 folds=args.folds, test_prompts=cmp.num_prompts, test_votes=round(cmp.num_votes, 1),
                                 nll=cmp.nll, global_nll=cmp.baseline_nll, diff=cmp.difference, diff_lo=cmp.lower,
                                 diff_hi=cmp.upper, excludes_0=bool(cmp.upper < 0 or cmp.lower > 0),
                                 uptime=load_avg))
                print(f"  {encoder} {method:>8s} mean of {len(evs)} seeds: NLL {cmp.nll:.4f} global "
                      f"{cmp.baseline_nll:.4f} diff {cmp.difference:+.4f} [{cmp.lower:+.4f}, {cmp.upper:+.4f}]",
                      flush=True)
    frame = pd.DataFrame(rows)
    out = pathlib.Path(args.out or REPO / "benchmarks" / "results" / f"p2l_{args.dataset}_kfold.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False, float_format="%.5f")
    print(frame[frame.seed != "mean"].groupby(["encoder", "method"]).agg(
        diff=("diff", "mean"), seeds=("seed", "count"), excludes_0=("excludes_0", "sum"),
        better_significant=("diff_hi", lambda d: int((d < 0).sum())),
        worse_significant=("diff_lo", lambda d: int((d > 0).sum())),
        seconds=("train_seconds", "mean")).to_string(float_format=lambda v: f"{v:.4f}"))
    if cat_rows:
        cat_out = out.with_name(out.stem + "_categories.csv")
        cats = pd.DataFrame(cat_rows)
        cats.to_csv(cat_out, index=False, float_format="%.5f")
        print(cats.drop(columns=["seed", "uptime"]).groupby(["encoder", "category"]).mean().to_string(
            float_format=lambda v: f"{v:.4f}"))
        print(f"wrote {cat_out}")
    print(f"wrote {out} ({platform.processor() or platform.machine()}, {jax.device_count()} device(s)); "
          f"uptime at the end: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
