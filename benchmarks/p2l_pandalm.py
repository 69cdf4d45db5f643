"""P2L vs a single global Bradley–Terry fit on PandaLM: held-out NLL per vote, split by prompt.

Data: ../shared/data/pandalm/testset-v1.json (999 items, 170 distinct prompts = instruction + input,
5 models, 3 human labels per item -> 3 votes per item; label 0 = tie, 1 = response1 (the first model of
`cmp_key`) wins, 2 = response2 wins). For each seed the DISTINCT PROMPTS are split 80/20; P2L (a linear head on
frozen prompt features from a pretrained encoder running in JAX) is trained on the training prompts' votes
(with its own 10 % validation prompts for early stopping), and the prompt-blind baseline is
`fit_bradley_terry` on the same training votes with the same likelihood. Both are scored by the mean
negative log-likelihood per held-out vote (`p2l_loss`, the same function for both); the interval is a
bootstrap over held-out prompts of the NLL difference P2L - BT (negative: P2L is better).

Features are computed once per encoder with `prompt_features` and cached under benchmarks/.cache/ (ignored
by git); the first run encodes the 170 prompts (SmolLM2-135M: ~2 minutes on a loaded 2-core CPU).

    PYTHONPATH=$PWD python benchmarks/p2l_pandalm.py            # default: both encoders, bt-tie, 5 seeds
    PYTHONPATH=$PWD python benchmarks/p2l_pandalm.py --losses bt-tie,rao-kupper,bt --seeds 0,1,2,3,4,5,6,7,8,9
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "pandalm" / "testset-v1.json"


def load_pandalm(path: pathlib.Path):
    items = json.loads(path.read_text())
    texts = [x["instruction"] + ("\n\n" + x["input"] if x.get("input") else "") for x in items]
    prompts = list(dict.fromkeys(texts))  # distinct, in order of first appearance
    index = {t: i for i, t in enumerate(prompts)}
    a, b, winner, prompt = [], [], [], []
    for x, t in zip(items, texts):
        m1, m2 = x["cmp_key"].split("_")
        for k in ("annotator1", "annotator2", "annotator3"):
            a.append(m1)
            b.append(m2)
            winner.append({0: "tie", 1: "model_a", 2: "model_b"}[int(x[k])])
            prompt.append(index[t])
    return prompts, a, b, winner, np.asarray(prompt)


def per_vote_nll(beta, alpha, votes, loss):
    """float64[N] -log P of each vote, through p2l_loss (one-vote batches, vmapped)."""
    import jax
    import jax.numpy as jnp

    from jaxrank.p2l import p2l_loss

    fits = loss in ("rao-kupper", "grounded-rao-kupper")
    rows = jnp.asarray(votes.prompt)

    def one(bt, al, a, b, o):
        return p2l_loss(bt[None], al[None] if fits else None, a[None], b[None], o[None], loss=loss)

    al = alpha if alpha is not None else jnp.ones(beta.shape[0], jnp.float32)
    nll = jax.jit(jax.vmap(one))(beta[rows], al[rows], jnp.asarray(votes.a), jnp.asarray(votes.b),
                                 jnp.asarray(votes.outcome))
    return np.asarray(nll, np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", default="smollm2-135m-instruct,all-minilm-l6-v2")
    parser.add_argument("--losses", default="bt-tie")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--patience", type=int, default=20)
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap rounds over held-out prompts")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--cache-dir", default=str(REPO / "benchmarks" / ".cache" / "p2l_features"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "p2l_pandalm.csv"))
    args = parser.parse_args()

    import jax
    import pandas as pd

    from jaxrank.lm.features import prompt_features
    from jaxrank import Votes
    from jaxrank.p2l import LOSS_TIES, train_p2l
    from jaxrank.ratings import fit_bradley_terry

    prompts, a, b, winner, prompt = load_pandalm(DATA)
    # Prompt p is prompts[p] (the rows of the features): the prompt table in that order.
    votes = Votes.from_arrays(a, b, winner).replace(prompt=prompt, prompt_ids=tuple(str(i) for i in range(len(prompts))))
    print(f"PandaLM: {votes.num_votes} votes on {len(prompts)} distinct prompts, {votes.num_models} models "
          f"({', '.join(votes.models)}); ties {np.mean(votes.outcome == 2):.1%}")
    rows = []
    for encoder in args.encoders.split(","):
        t0 = time.perf_counter()
        feats = prompt_features(prompts, encoder=encoder, cache_dir=args.cache_dir, max_length=args.max_length,
                                batch_size=16)
        print(f"{encoder}: features {feats.shape} in {time.perf_counter() - t0:.1f} s (cache {args.cache_dir})")
        for loss in args.losses.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                rng = np.random.default_rng(seed)
                perm = rng.permutation(len(prompts))
                n_test = int(round(args.test_fraction * len(prompts)))
                test_prompts = perm[:n_test]
                is_test = np.isin(votes.prompt, test_prompts)
                train, test = votes.subset(~is_test), votes.subset(is_test)
                t0 = time.perf_counter()
                model = train_p2l(jax.random.key(seed), feats, train, loss=loss, learning_rate=args.lr,
                                  weight_decay=args.weight_decay, batch_size=args.batch_size, max_epochs=args.epochs,
                                  val_fraction=0.1, patience=args.patience, encoder=encoder)
                seconds = time.perf_counter() - t0
                beta, alpha = model.coefficients(feats)
                p2l = per_vote_nll(beta, alpha, test, loss)
                # The prompt-blind baseline: one Bradley–Terry fit of the training votes, same likelihood.
                bt = fit_bradley_terry(train, ties=LOSS_TIES[loss])
                theta = np.broadcast_to(np.asarray(bt.theta), beta.shape)
                tie = None if alpha is None else np.full(beta.shape[0], float(bt.tie_param), np.float32)
                glob = per_vote_nll(jax.numpy.asarray(theta), None if tie is None else jax.numpy.asarray(tie), test,
                                    loss)
                counted = np.ones(test.num_votes, bool) if loss != "bt" else test.outcome < 2
                diff = (p2l - glob)[counted]
                group = test.prompt[counted]
                uniq, inv = np.unique(group, return_inverse=True)
                sums = np.bincount(inv, diff)
                counts = np.bincount(inv).astype(np.float64)
                boot_rng = np.random.default_rng(1000 + seed)
                draws = boot_rng.integers(0, uniq.size, (args.bootstrap, uniq.size))
                boot = sums[draws].sum(1) / counts[draws].sum(1)
                lo, hi = np.quantile(boot, [0.025, 0.975])
                row = dict(encoder=encoder, loss=loss, seed=seed, train_prompts=len(prompts) - n_test,
                           test_prompts=n_test, test_votes=int(counted.sum()), p2l_nll=p2l[counted].mean(),
                           bt_nll=glob[counted].mean(), diff=diff.mean(), diff_lo=lo, diff_hi=hi,
                           epochs=model.history["epochs"], best_epoch=model.history["best_epoch"],
                           train_seconds=round(seconds, 2))
                rows.append(row)
                print(f"  {loss:>12s} seed {seed}: P2L {row['p2l_nll']:.4f}  BT {row['bt_nll']:.4f}  "
                      f"diff {row['diff']:+.4f} [{lo:+.4f}, {hi:+.4f}]  (best epoch {row['best_epoch']}, "
                      f"{seconds:.1f} s)")
    frame = pd.DataFrame(rows)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False, float_format="%.5f")
    summary = frame.groupby(["encoder", "loss"]).agg(p2l_nll=("p2l_nll", "mean"), bt_nll=("bt_nll", "mean"),
                                                     diff=("diff", "mean"), seeds=("seed", "count"),
                                                     p2l_better=("diff_hi", lambda d: int((d < 0).sum())),
                                                     bt_better=("diff_lo", lambda d: int((d > 0).sum())))
    print(summary.to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {out} ({platform.processor() or platform.machine()}, {jax.device_count()} device(s))")


if __name__ == "__main__":
    main()
