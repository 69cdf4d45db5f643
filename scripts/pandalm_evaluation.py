"""Tie reduction and leaderboard stability on PandaLM for each SmolLM2 priority score vs random ordering.

Reads the output of scripts/pandalm_priority.py (votes.csv and scores_<variant>.csv in --runs, default
runs/pandalm/) and runs `jaxrank.evaluation.tie_reduction` and `leaderboard_stability` (Bradley-Terry with
a prompt bootstrap, and online Elo over vote orderings) for every score variant and for a baseline
without any model (`length_gap`, the answers' log length ratio), plus a per-item diagnostic (the rank
correlation of each score with the item's number of human tie labels, also among items whose answers
have similar lengths, and the AUC of the score for "no annotator said tie").

Writes benchmarks/results/evaluation_pandalm_{ties,stability,items}.csv and, with --figures DIR,
DIR/pandalm_ties_<variant>.png and DIR/pandalm_stability_<variant>.png (jaxrank.plots) and
DIR/pandalm_ties_comparison.png (all scores in one panel).

`--compare-cli FILE --variant V` instead checks that a `jaxrank evaluate ties --out FILE` table (same seed,
default options) equals the library's result for variant V, and exits 1 if not.

Usage:
  PYTHONPATH=$PWD python scripts/pandalm_evaluation.py [--runs runs/pandalm] [--figures docs/figures]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
import pandas as pd

ROOT = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = ("loglik_gap", "divergence")
# A baseline without any model: |log(1 + chars(r1)) - log(1 + chars(r2))|, the answers' length gap.
BASELINE = "length_gap"
SIMILAR_LENGTH = 0.2  # items whose answers differ in length by less than a factor e^0.2 = 1.22
FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def _auc(score: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted 1/2 (Mann-Whitney)."""
    from scipy import stats

    ranks = stats.rankdata(score)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def length_gap(data: str, prompt_ids) -> pd.Series:
    """The no-model baseline score per item (see BASELINE), indexed by prompt id (string)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from pandalm_priority import read_pandalm

    gap = {str(it["idx"]): abs(np.log1p(len(it["response1"])) - np.log1p(len(it["response2"])))
           for it in read_pandalm(data)}
    return pd.Series({str(p): gap[str(p)] for p in prompt_ids})


def item_diagnostics(items: pd.DataFrame, variants, *, num_boot: int, seed: int) -> pd.DataFrame:
    """Per-item: Spearman of score vs #tie labels, AUC for 'no tie label', with item-bootstrap intervals;
    and the Spearman among items whose answers have similar lengths (is the score more than a length gap?)."""
    from scipy import stats

    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(items), size=(num_boot, len(items)))
    rows = []
    for v in variants:
        s = items[v].to_numpy(np.float64)
        t = items["human_ties"].to_numpy()
        clean = t == 0
        rho = stats.spearmanr(s, t).statistic
        auc = _auc(s, clean)
        rho_b = np.array([stats.spearmanr(s[i], t[i]).statistic for i in idx])
        auc_b = np.array([_auc(s[i], clean[i]) for i in idx])
        similar = items[BASELINE].to_numpy() < SIMILAR_LENGTH
        rho_similar = stats.spearmanr(s[similar], t[similar]).statistic
        rows.append({"score": v, "items": len(items), "items_with_a_tie_label": int((~clean).sum()),
                     "spearman_vs_tie_labels": rho, "spearman_lower": np.quantile(rho_b, 0.025),
                     "spearman_upper": np.quantile(rho_b, 0.975), "auc_no_tie": auc,
                     "auc_lower": np.quantile(auc_b, 0.025), "auc_upper": np.quantile(auc_b, 0.975),
                     "similar_length_items": int(similar.sum()), "spearman_similar_length": rho_similar})
    return pd.DataFrame(rows)


def _comparison_figure(ties: pd.DataFrame, path: pathlib.Path) -> None:
    """Relative tie reduction vs q for every score, with the prompt-bootstrap intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 3.8), dpi=100)
    labels = {"divergence": "SmolLM2 response divergence (JS)", "loglik_gap": "SmolLM2 log-likelihood gap",
              BASELINE: "length gap (no model)"}
    for name, group in ties.groupby("score", sort=False):
        q = 100 * group["fraction"]
        line, = ax.plot(q, group["reduction"], marker="o", ms=3, label=labels.get(name, name))
        ax.fill_between(q, group["lower"], group["upper"], color=line.get_color(), alpha=0.15)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_ylim(-1.0, 1.05)
    ax.set_xlabel("items labelled first, q (%)")
    ax.set_ylabel("1 - tie rate(top q) / tie rate(random q)")
    ax.set_title("PandaLM: tie reduction by priority score (95% bootstrap intervals)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs/pandalm", help="output folder of scripts/pandalm_priority.py")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--figures", default=None, help="folder for PNG figures (e.g. docs/figures)")
    parser.add_argument("--random", type=int, default=1000, help="random subsets / bootstrap replicates (ties; default 1000)")
    parser.add_argument("--stability-random", type=int, default=100, help="random subsets for stability (default 100)")
    parser.add_argument("--bootstrap", type=int, default=100, help="prompt-bootstrap rounds, BT stability (default 100)")
    parser.add_argument("--permutations", type=int, default=100, help="Elo vote orderings (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" / "pandalm" / "testset-v1.json"),
                        help="PandaLM testset-v1.json (for the length-gap baseline)")
    parser.add_argument("--compare-cli", default=None, metavar="CSV", help="check a `jaxrank evaluate ties --out` table")
    parser.add_argument("--variant", default="divergence", choices=VARIANTS, help="score variant of --compare-cli")
    args = parser.parse_args(argv)

    import jax

    from jaxrank import load_votes
    from jaxrank.evaluation import leaderboard_stability, load_scores, tie_reduction

    runs = pathlib.Path(args.runs)
    votes = load_votes(runs / "votes.csv")
    key = jax.random.key(args.seed)

    if args.compare_cli:
        cli = pd.read_csv(args.compare_cli)
        scores = load_scores(runs / f"scores_{args.variant}.csv")
        if "kendall_tau" in cli.columns:  # a `jaxrank evaluate stability --out` table (default options)
            what = "stability"
            lib = leaderboard_stability(key, scores, votes, fractions=cli["fraction"].tolist(), method="bt",
                                        num_random=args.stability_random, num_bootstrap=args.bootstrap).to_frame()
        else:
            what = "ties"
            lib = tie_reduction(key, scores, votes, fractions=cli["fraction"].tolist(),
                                num_random=args.random).to_frame()
        diff = float(np.nanmax(np.abs(cli[lib.columns].to_numpy(np.float64) - lib.to_numpy(np.float64))))
        print(f"jaxrank evaluate {what} ({args.compare_cli}) vs jaxrank.evaluation ({args.variant}): "
              f"max |difference| over {lib.size} cells = {diff:.2e}")
        return 0 if diff <= 1e-9 else 1

    results = pathlib.Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    ties_frames, stab_frames, res = [], [], {}
    print(f"PandaLM: {votes.num_votes} votes on {votes.num_prompts} items, {votes.num_models} models, "
          f"{int(votes.is_tie().sum())} ties ({votes.is_tie().mean():.1%})")
    items = pd.read_csv(runs / "items.csv")
    items[BASELINE] = length_gap(args.data, items["prompt_id"]).to_numpy()
    all_scores = {v: load_scores(runs / f"scores_{v}.csv") for v in VARIANTS}
    all_scores[BASELINE] = pd.Series(items[BASELINE].to_numpy(), index=items["prompt_id"].astype(str))
    for variant, scores in all_scores.items():
        t0 = time.perf_counter()
        ties = tie_reduction(key, scores, votes, fractions=FRACTIONS, num_random=args.random)
        bt = leaderboard_stability(key, scores, votes, fractions=FRACTIONS, method="bt",
                                   num_random=args.stability_random, num_bootstrap=args.bootstrap)
        elo = leaderboard_stability(key, scores, votes, fractions=FRACTIONS, method="elo",
                                    num_random=args.stability_random, num_permutations=args.permutations)
        res[variant] = (ties, bt, elo)
        ties_frames.append(ties.to_frame().assign(score=variant, num_prompts=ties.num_prompts, num_votes=ties.num_votes))
        stab_frames += [bt.to_frame().assign(score=variant, method="bt"), elo.to_frame().assign(score=variant, method="elo")]
        print(f"\n== {variant} ({time.perf_counter() - t0:.1f} s)")
        print(ties.to_frame().to_string(index=False, float_format="%.3f"))
        cols = ["fraction", "kendall_tau", "kendall_tau_lower", "kendall_tau_upper", "random_kendall_tau",
                "random_kendall_tau_lower", "random_kendall_tau_upper", "pairs_agree", "random_pairs_agree"]
        print("BT:\n" + bt.to_frame()[cols].to_string(index=False, float_format="%.3f"))
        print("Elo:\n" + elo.to_frame()[cols].to_string(index=False, float_format="%.3f"))
    ties_all = pd.concat(ties_frames, ignore_index=True)
    stab_all = pd.concat(stab_frames, ignore_index=True)
    diag = item_diagnostics(items, list(all_scores), num_boot=1000, seed=args.seed)
    ties_all.to_csv(results / "evaluation_pandalm_ties.csv", index=False)
    stab_all.to_csv(results / "evaluation_pandalm_stability.csv", index=False)
    diag.to_csv(results / "evaluation_pandalm_items.csv", index=False)
    print("\nper item:\n" + diag.to_string(index=False, float_format="%.3f"))

    if args.figures:
        from jaxrank.plots import plot_stability, plot_tie_reduction

        figures = pathlib.Path(args.figures)
        figures.mkdir(parents=True, exist_ok=True)
        for variant, (ties, bt, _) in res.items():
            if variant not in VARIANTS:
                continue
            plot_tie_reduction(ties, figures / f"pandalm_ties_{variant}.png", force=True,
                               title=f"PandaLM (999 items, 2,997 human votes): top q by {variant}")
            plot_stability(bt, figures / f"pandalm_stability_{variant}.png", force=True,
                           title=f"PandaLM leaderboard (BT) from top q by {variant}")
        _comparison_figure(ties_all, figures / "pandalm_ties_comparison.png")
    print(f"\nwrote {results}/evaluation_pandalm_{{ties,stability,items}}.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
