"""LLMFAO real-data checks: crowd vs GPT-4-judge leaderboards, and leaderboard stability from few prompts.

Data (`../shared/data/llmfao/`, CC BY 4.0): `crowd-comparisons.csv` (8,931 crowd votes on 2,139 model
pairs, 13 prompts, 59 models, 124 workers; columns `id, prompt, model_x, model_y, worker, winner, left,
right`, winner in `left | right | tie`) and `gpt4-crowd-comparisons.csv` (GPT-4 as the judge of the same
2,139 pairs, one verdict each).

(a) Agreement. Bradley-Terry leaderboards (`jaxrank.fit_bradley_terry`, ties as half a win) from the crowd
    votes and from the GPT-4 votes on the same pairs, compared with `jaxrank.evaluation`'s Kendall tau-b,
    Spearman rho and the fraction of model pairs ordered alike. Intervals: both vote sets are resampled
    (`jaxrank.bootstrap_ratings`, R rounds each) and the metrics computed round by round (round r of the
    crowd against round r of GPT-4), percentile intervals. For scale, the crowd's own reliability: the
    votes of each pair are split at random into two halves and the two half-crowd leaderboards compared
    the same way (a "ceiling" for what one more crowd of half the size would agree). SciPy's `kendalltau`
    / `spearmanr` cross-check the point values.

(b) Stability. The crowd leaderboard fitted on the votes of the top q of the 13 prompts, ranked by a
    priority score, against the leaderboard on all votes (`jaxrank.evaluation.leaderboard_stability`), and
    against random prompt subsets of the same size; tie rates the same way (`tie_reduction`). Scores:
    - `gpt4_decisive`: the GPT-4 judge's non-tie rate on the prompt's pairs. A cheap automatic judge
      runs first; prompts on which it can tell the answers apart are sent to humans first.
    - `lm_divergence` (optional, `--divergence FILE`): `jaxrank prioritize` output for the 13 prompt
      texts (SmolLM2-135M-Instruct vs Gemma 3 270M, sequence-mode KL per byte): the papers' own score,
      computed from the prompts alone.
    With 13 prompts a subset of q = 0.2 holds 3 prompts and there are only C(13, 3) = 286 such
    subsets: the random baseline's interval is the spread over those subsets (wide), the top-q
    subset is one deterministic draw, and at q close to 1 the subset shares most votes with the gold
    leaderboard, so agreement there is high by construction.

Outputs: benchmarks/results/evaluation_llmfao_{agreement,leaderboards,stability,ties}.csv,
docs/figures/llmfao_{agreement,stability,ties}.png (with --figures).

Usage:
  PYTHONPATH=$PWD python scripts/llmfao_checks.py [--rounds 500] [--random 200] [--divergence runs/llmfao/divergence.jsonl]
  PYTHONPATH=$PWD python scripts/llmfao_checks.py --write-prompts runs/llmfao/prompts.jsonl  # for jaxrank prioritize
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np
import pandas as pd

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "llmfao"
RESULTS = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "docs" / "figures"
FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)
VOTE_COLUMNS = {"model_a": "left", "model_b": "right", "winner": "winner", "prompt_id": "prompt"}
WINNERS = {"left": "model_a", "right": "model_b", "tie": "tie"}


def read_llmfao(data: pathlib.Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    crowd = pd.read_csv(data / "crowd-comparisons.csv")
    gpt4 = pd.read_csv(data / "gpt4-crowd-comparisons.csv")
    prompts = pd.read_json(data / "prompts.jsonl", lines=True)
    for name, frame, cols in (("crowd", crowd, ("id", "prompt", "left", "right", "winner")),
                              ("gpt4", gpt4, ("id", "prompt", "left", "right", "winner"))):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise ValueError(f"{name} comparisons lack columns {missing}; found {list(frame.columns)}")
    if set(crowd["id"]) != set(gpt4["id"]):
        raise ValueError("crowd and GPT-4 comparisons do not cover the same pairs (column id)")
    prompts = prompts[prompts["id"].isin(set(crowd["prompt"]))].reset_index(drop=True)
    return crowd, gpt4, prompts


def _battles(frame: pd.DataFrame, models):
    from jaxrank import load_votes

    return load_votes(frame, format="llmfao", models=models)


def _rank_metrics(x, y):
    from jaxrank.evaluation import kendall_tau, pairs_agreement, spearman

    return {"kendall_tau": kendall_tau(x, y), "spearman": spearman(x, y), "pairs_agree": pairs_agreement(x, y)}


def _round_metrics(samples_x, samples_y):
    """Rank metrics for each pair of bootstrap rounds, [R] each (vmapped)."""
    import jax

    out = jax.vmap(_rank_metrics)(samples_x, samples_y)
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    lo, hi = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def agreement(crowd, gpt4, *, rounds: int, halves: int, confidence: float, seed: int):
    """(a): crowd vs GPT-4 leaderboards, with bootstrap intervals, and the crowd's split-half reliability."""
    import jax
    from scipy import stats

    from jaxrank import bootstrap_ratings, fit_bradley_terry

    models = sorted(set(crowd["left"]) | set(crowd["right"]))
    b_crowd, b_gpt4 = _battles(crowd, models), _battles(gpt4, models)
    fit_c, fit_g = fit_bradley_terry(b_crowd), fit_bradley_terry(b_gpt4)
    r_c, r_g = np.asarray(fit_c.ratings, np.float64), np.asarray(fit_g.ratings, np.float64)
    k_c, k_g, k_h = jax.random.split(jax.random.key(seed), 3)
    boot_c = bootstrap_ratings(k_c, b_crowd, num_rounds=rounds, confidence=confidence, fit=fit_c)
    boot_g = bootstrap_ratings(k_g, b_gpt4, num_rounds=rounds, confidence=confidence, fit=fit_g)
    point = {k: float(v) for k, v in _rank_metrics(r_c, r_g).items()}
    per_round = _round_metrics(boot_c.samples, boot_g.samples)

    # SciPy cross-check of the point values (tau-b and rho on the same ratings).
    tau_sp, rho_sp = stats.kendalltau(r_c, r_g).statistic, stats.spearmanr(r_c, r_g).statistic
    if abs(tau_sp - point["kendall_tau"]) > 1e-5 or abs(rho_sp - point["spearman"]) > 1e-5:
        raise RuntimeError(f"rank metrics disagree with SciPy: tau {point['kendall_tau']} vs {tau_sp}, "
                           f"rho {point['spearman']} vs {rho_sp}")

    # Split-half reliability of the crowd: the votes of every pair divided at random into two halves.
    # Each half is the full battle table reweighted (per-row vote counts of the half), so every fit reuses
    # one compiled solver.
    rng = np.random.default_rng(seed)
    half_metrics = {k: [] for k in point}
    vote_row = np.asarray(b_crowd.rows().vote_row)[:, 0]
    pair_id = crowd["id"].to_numpy()
    size = crowd.groupby("id")["id"].transform("size").to_numpy()
    for _ in range(halves):
        rank_in_pair = pd.Series(rng.random(len(crowd))).groupby(pair_id).rank(method="first").to_numpy()
        # Half of each pair's votes; an odd pair's middle vote goes to either half with probability 1/2.
        first = rank_in_pair <= np.floor(size / 2) + (rng.random(len(crowd)) < 0.5) * (size % 2)
        ratings = []
        for part in (first, ~first):
            w = np.bincount(vote_row[part], minlength=b_crowd.rows().num_rows).astype(np.float32)
            ratings.append(np.asarray(fit_bradley_terry(b_crowd, row_weights=w).ratings, np.float64))
        for k, v in _rank_metrics(*ratings).items():
            half_metrics[k].append(float(v))

    # Pair-level verdicts: GPT-4's against the crowd majority (pairs with a strict majority).
    majority = (crowd.groupby("id")["winner"].agg(lambda w: w.value_counts().idxmax() if
                                                  w.value_counts().iloc[0] > len(w) / 2 else None))
    verdicts = gpt4.set_index("id")["winner"].reindex(majority.index)
    decided = majority.notna()

    rows = []
    for k in point:
        lo, hi = _interval(per_round[k], confidence)
        hlo, hhi = _interval(np.asarray(half_metrics[k]), confidence)
        rows.append({"comparison": "crowd vs GPT-4 judge", "metric": k, "value": point[k], "lower": lo, "upper": hi,
                     "interval": f"bootstrap over votes, {rounds} rounds each"})
        rows.append({"comparison": "crowd half vs crowd half", "metric": k, "value": float(np.mean(half_metrics[k])),
                     "lower": hlo, "upper": hhi, "interval": f"{halves} random splits of each pair's votes"})
    rows.append({"comparison": "crowd majority vs GPT-4 verdict", "metric": "pair_verdict_agreement",
                 "value": float((verdicts[decided] == majority[decided]).mean()), "lower": np.nan, "upper": np.nan,
                 "interval": f"{int(decided.sum())} of {len(majority)} pairs have a strict crowd majority"})
    decisive = decided & (majority != "tie")
    rows.append({"comparison": "crowd majority vs GPT-4 verdict", "metric": "pair_verdict_agreement_decisive",
                 "value": float((verdicts[decisive] == majority[decisive]).mean()), "lower": np.nan, "upper": np.nan,
                 "interval": f"{int(decisive.sum())} pairs whose strict crowd majority is left or right"})
    summary = pd.DataFrame(rows)
    summary.insert(0, "scipy_kendall_tau", np.where(summary["metric"] == "kendall_tau", tau_sp, np.nan))
    summary = summary[["comparison", "metric", "value", "lower", "upper", "interval", "scipy_kendall_tau"]]
    summary["scipy_spearman"] = np.where((summary["metric"] == "spearman") & (summary["comparison"] == "crowd vs GPT-4 judge"), rho_sp, np.nan)
    summary.loc[summary["comparison"] != "crowd vs GPT-4 judge", "scipy_kendall_tau"] = np.nan

    board = pd.DataFrame({
        "model": models,
        "crowd_rating": r_c, "crowd_lower": np.asarray(boot_c.lower), "crowd_upper": np.asarray(boot_c.upper),
        "gpt4_rating": r_g, "gpt4_lower": np.asarray(boot_g.lower), "gpt4_upper": np.asarray(boot_g.upper),
    }).sort_values("crowd_rating", ascending=False).reset_index(drop=True)
    board.insert(1, "crowd_rank", np.arange(1, len(board) + 1))
    board.insert(2, "gpt4_rank", board["gpt4_rating"].rank(ascending=False, method="min").astype(int))
    return summary, board, {"crowd": boot_c, "gpt4": boot_g, "models": models}


def evalica_check(board: pd.DataFrame, data: pathlib.Path) -> float:
    """Spearman rho between our crowd ratings and evalica's Bradley-Terry scores (an independent implementation)."""
    from scipy import stats

    golden = pd.read_csv(data / "evalica_llmfao-golden.csv")
    bt = golden[golden["algorithm"] == "bradley_terry"].set_index("item")["score"]
    ours = board.set_index("model")["crowd_rating"].reindex(bt.index)
    return float(stats.spearmanr(ours, bt).statistic)


def prompt_scores(gpt4: pd.DataFrame, divergence: str | None) -> dict[str, pd.Series]:
    """Per-prompt priority scores, indexed by prompt id (string)."""
    decisive = gpt4.groupby("prompt")["winner"].agg(lambda w: float((w != "tie").mean()))
    decisive.index = decisive.index.astype(str)
    scores = {"gpt4_decisive": decisive}
    if divergence:
        rows = [json.loads(line) for line in pathlib.Path(divergence).read_text().splitlines() if line.strip()]
        scores["lm_divergence"] = pd.Series({str(r["id"]): float(r["score"]) for r in rows})
    return scores


def stability(crowd, scores, *, fractions, num_random, num_bootstrap, num_permutations, confidence, seed):
    """(b): stability and tie reduction of the crowd leaderboard for each priority score."""
    import jax

    from jaxrank import load_votes
    from jaxrank.evaluation import leaderboard_stability, tie_reduction

    votes = load_votes(crowd, columns=VOTE_COLUMNS, winner_labels=WINNERS)
    results = {}
    for i, (name, score) in enumerate(scores.items()):
        key = jax.random.fold_in(jax.random.key(seed), i)
        results[name] = {
            "bt": leaderboard_stability(key, score.to_dict(), votes, fractions=fractions, method="bt",
                                        num_random=num_random, num_bootstrap=num_bootstrap, confidence=confidence),
            "elo": leaderboard_stability(key, score.to_dict(), votes, fractions=fractions, method="elo",
                                         num_random=num_random, num_permutations=num_permutations,
                                         confidence=confidence),
            "ties": tie_reduction(key, score.to_dict(), votes, fractions=fractions, num_random=num_random,
                                  confidence=confidence),
        }
    stab = pd.concat([r[m].to_frame().assign(score=name, method=m) for name, r in results.items() for m in ("bt", "elo")],
                     ignore_index=True)
    ties = pd.concat([r["ties"].to_frame().assign(score=name, num_prompts=r["ties"].num_prompts,
                                                   num_votes=r["ties"].num_votes) for name, r in results.items()],
                     ignore_index=True)
    return votes, stab, ties, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--rounds", type=int, default=500, help="bootstrap rounds per leaderboard (default 500)")
    parser.add_argument("--halves", type=int, default=50, help="random split-half crowd leaderboards (default 50)")
    parser.add_argument("--random", type=int, default=200, help="random prompt subsets per fraction (default 200)")
    parser.add_argument("--permutations", type=int, default=100, help="Elo vote orderings (default 100)")
    parser.add_argument("--bootstrap", type=int, default=100,
                        help="prompt-bootstrap rounds for the top-q BT intervals (default 100)")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--divergence", default=None, help="`jaxrank prioritize` JSONL for the 13 prompts (optional)")
    parser.add_argument("--write-prompts", default=None, metavar="FILE",
                        help="only write the 13 crowd prompts as JSONL {id, prompt} (input of jaxrank prioritize)")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--figures", default=None, help="folder for the PNG figures (e.g. docs/figures)")
    args = parser.parse_args(argv)

    data = pathlib.Path(args.data)
    crowd, gpt4, prompts = read_llmfao(data)
    if args.write_prompts:
        out = pathlib.Path(args.write_prompts)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w") as f:
            for _, p in prompts.iterrows():
                f.write(json.dumps({"id": int(p["id"]), "prompt": p["text"], "slug": p["slug"]}) + "\n")
        print(f"wrote {len(prompts)} prompts to {out}")
        return 0

    results = pathlib.Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    summary, board, boots = agreement(crowd, gpt4, rounds=args.rounds, halves=args.halves,
                                      confidence=args.confidence, seed=args.seed)
    rho_evalica = evalica_check(board, data)
    summary.to_csv(results / "evaluation_llmfao_agreement.csv", index=False)
    board.to_csv(results / "evaluation_llmfao_leaderboards.csv", index=False)
    t1 = time.perf_counter()
    pd.set_option("display.width", 200)
    print(f"(a) crowd vs GPT-4 judge, {len(board)} models, {len(crowd)} crowd votes / {len(gpt4)} GPT-4 votes "
          f"on the same {crowd['id'].nunique()} pairs ({t1 - t0:.1f} s); ties: crowd {(crowd['winner'] == 'tie').sum()} "
          f"({(crowd['winner'] == 'tie').mean():.1%}), GPT-4 {(gpt4['winner'] == 'tie').sum()} ({(gpt4['winner'] == 'tie').mean():.1%})")
    print(summary.drop(columns=["scipy_kendall_tau", "scipy_spearman"]).to_string(index=False, float_format="%.3f"))
    print(f"cross-checks: SciPy tau-b {summary['scipy_kendall_tau'].dropna().iloc[0]:.4f}, rho "
          f"{summary['scipy_spearman'].dropna().iloc[0]:.4f}; Spearman vs evalica's Bradley-Terry on the crowd "
          f"votes {rho_evalica:.4f}")

    scores = prompt_scores(gpt4, args.divergence)
    per_prompt = pd.DataFrame(scores)
    votes, stab, ties, per_score = stability(crowd, scores, fractions=FRACTIONS, num_random=args.random,
                                             num_bootstrap=args.bootstrap, num_permutations=args.permutations,
                                             confidence=args.confidence, seed=args.seed)
    per_prompt["crowd_tie_rate"] = pd.Series(votes.ties_per_prompt() / votes.votes_per_prompt(), index=list(votes.prompt_ids))
    slugs = prompts.set_index(prompts["id"].astype(str))["slug"]
    per_prompt.insert(0, "slug", slugs.reindex(per_prompt.index))
    stab.to_csv(results / "evaluation_llmfao_stability.csv", index=False)
    ties.to_csv(results / "evaluation_llmfao_ties.csv", index=False)
    per_prompt.rename_axis("prompt_id").to_csv(results / "evaluation_llmfao_prompts.csv")
    t2 = time.perf_counter()
    print(f"\n(b) per-prompt scores and crowd tie rates ({votes.num_prompts} prompts):")
    print(per_prompt.sort_values("gpt4_decisive", ascending=False).to_string(float_format="%.3f"))
    from scipy import stats

    for name in scores:
        rho = stats.spearmanr(per_prompt[name], per_prompt["crowd_tie_rate"]).statistic
        print(f"Spearman over the 13 prompts, {name} vs crowd tie rate: {rho:+.3f}")
    print(f"\nstability of the crowd leaderboard from the top-q prompts vs random q ({t2 - t1:.1f} s):")
    print(stab.to_string(index=False, float_format="%.3f"))
    print("\ntie rate of the top-q prompts vs random q:")
    print(ties.to_string(index=False, float_format="%.3f"))

    if args.figures:
        figures = pathlib.Path(args.figures)
        figures.mkdir(parents=True, exist_ok=True)
        _figures(summary, board, per_score, figures)
    return 0


def _figures(summary, board, per_score, figures: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxrank.plots import plot_stability, plot_tie_reduction

    # Crowd vs GPT-4 ratings, with both bootstrap intervals.
    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=100)
    ax.errorbar(board["crowd_rating"], board["gpt4_rating"],
                xerr=[board["crowd_rating"] - board["crowd_lower"], board["crowd_upper"] - board["crowd_rating"]],
                yerr=[board["gpt4_rating"] - board["gpt4_lower"], board["gpt4_upper"] - board["gpt4_rating"]],
                fmt="o", ms=3, lw=0.6, alpha=0.7, color="tab:blue")
    row = summary[(summary["comparison"] == "crowd vs GPT-4 judge")].set_index("metric")
    text = "\n".join(f"{m.replace('_', ' ')} {row.loc[m, 'value']:.2f} [{row.loc[m, 'lower']:.2f}, {row.loc[m, 'upper']:.2f}]"
                     for m in ("kendall_tau", "spearman", "pairs_agree"))
    ax.text(0.03, 0.97, text, transform=ax.transAxes, va="top", fontsize=8)
    ax.set_xlabel("crowd Bradley-Terry rating (95% bootstrap CI)")
    ax.set_ylabel("GPT-4-judge rating (95% bootstrap CI)")
    ax.set_title(f"LLMFAO: {len(board)} models, the same 2,139 pairs", fontsize=10)
    fig.tight_layout()
    fig.savefig(figures / "llmfao_agreement.png")
    plt.close(fig)

    for name, r in per_score.items():
        plot_stability(r["bt"], figures / f"llmfao_stability_{name}.png", force=True,
                       title=f"LLMFAO crowd leaderboard (BT), prompts ranked by {name}")
        plot_tie_reduction(r["ties"], figures / f"llmfao_ties_{name}.png", force=True, title=f"LLMFAO crowd ties, prompts ranked by {name}")


if __name__ == "__main__":
    sys.exit(main())
