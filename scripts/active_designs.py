"""Sampling designs on real votes: coverage, width and Kendall tau per label budget, and the labels each
design needs (jaxrank.evaluation.design_curves), on LLMFAO and PandaLM.

LLMFAO (../shared/data/llmfao): 8,931 crowd votes on 2,139 comparisons (a prompt and a pair of answers,
column `id`) of 59 models over 13 prompts, and one GPT-4 vote per comparison (the judge). The sampling
unit is the comparison, not the prompt: with 13 prompts a prompt-level sample has at most 13 clusters,
which cannot estimate a 59-model covariance (the cluster sandwich has rank <= 12) and leaves most models
unseen at any budget below 100 %; the comparisons are what a labelling campaign actually assigns to
workers, and design-based inference conditions on the 13 prompts (the target is the leaderboard of these
comparisons), so the between-prompt variation is not part of the target's uncertainty.
Scores for the proportional design: the expected reduction of the ratings' variance from a comparison
(`jaxrank.active.variance_reduction_scores`) under a Bradley–Terry fit of the GPT-4 votes alone — known
before any human label.

PandaLM (../shared/data/pandalm, via scripts/pandalm_priority.py's runs/pandalm): 999 items (one prompt,
two answers of two of 5 models), 3 human labels each; the unit is the item. Scores: the SmolLM2 answer
divergence (scores_divergence.csv). Judges: (a) SmolLM2's preference, the answer with the higher mean
token log-likelihood (items.csv), a weak automatic judge; (b) one human annotator (annotator1) as a cheap
single label on every item, the full three-label vote on the sample.

Writes benchmarks/results/active_<data>_curves.csv, active_headline.csv and docs/figures/active_<data>.png.

Usage:
  PYTHONPATH=$PWD python scripts/active_designs.py [--data llmfao,pandalm] [--replays 200] [--runs runs/pandalm]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time

import jax
import numpy as np
import pandas as pd

from jaxrank import active
from jaxrank.evaluation import design_curves
from jaxrank.plots import plot_design_curves

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
BUDGETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
WINNER = {"left": 0, "right": 1, "tie": 2, "model_a": 0, "model_b": 1}


def _rows(frame: pd.DataFrame, models: list[str], unit_of: dict[str, int]) -> active.UnitRows:
    index = {m: i for i, m in enumerate(models)}
    return active.unit_rows(frame["model_a"].map(index).to_numpy(), frame["model_b"].map(index).to_numpy(),
                            frame["winner"].map(WINNER).to_numpy(), frame["unit"].map(unit_of).to_numpy())


def llmfao(data: pathlib.Path):
    crowd = pd.read_csv(data / "llmfao" / "crowd-comparisons.csv", dtype={"id": str})
    gpt4 = pd.read_csv(data / "llmfao" / "gpt4-crowd-comparisons.csv", dtype={"id": str})
    crowd = crowd.rename(columns={"left": "model_a", "right": "model_b", "id": "unit"})
    gpt4 = gpt4.rename(columns={"left": "model_a", "right": "model_b", "id": "unit"})
    models = sorted(set(crowd["model_a"]) | set(crowd["model_b"]))
    units = sorted(set(crowd["unit"]), key=int)
    unit_of = {u: i for i, u in enumerate(units)}
    gpt4 = gpt4[gpt4["unit"].isin(unit_of)]
    human, judge = _rows(crowd, models, unit_of), _rows(gpt4, models, unit_of)
    # Priority from the judge alone: a Bradley–Terry fit of the GPT-4 votes and its uncertainty.
    every = active.single_round(np.ones(len(units), bool), np.ones(len(units)))
    pilot = active.fit_design_weighted(judge, every, num_models=len(models), variance="superpopulation", l2=0.1)
    scores = np.asarray(active.variance_reduction_scores(pilot.theta, pilot.covariance, judge, num_units=len(units)))
    info = {"votes": len(crowd), "units": len(units), "models": len(models), "judge_votes": len(gpt4),
            "unit": "comparison (id)", "score": "judge_variance_reduction"}
    return {"human": human, "judges": {"gpt4": judge}, "scores": scores, "models": models, "info": info}


def pandalm(runs: pathlib.Path):
    votes = pd.read_csv(runs / "votes.csv", dtype={"prompt_id": str}).rename(columns={"prompt_id": "unit"})
    scores = pd.read_csv(runs / "scores_divergence.csv", dtype={"prompt_id": str})
    items = pd.read_csv(runs / "items.csv", dtype={"prompt_id": str})
    models = sorted(set(votes["model_a"]) | set(votes["model_b"]))
    units = scores["prompt_id"].tolist()
    unit_of = {u: i for i, u in enumerate(units)}
    human = _rows(votes, models, unit_of)
    pairs = votes.drop_duplicates("unit").set_index("unit").loc[items["prompt_id"]]
    lm = pd.DataFrame({"unit": items["prompt_id"].to_numpy(), "model_a": pairs["model_a"].to_numpy(),
                       "model_b": pairs["model_b"].to_numpy(),
                       "winner": np.where(items["mean_logp_1"] >= items["mean_logp_2"], "model_a", "model_b")})
    one = votes[votes["annotator"] == "annotator1"]
    info = {"votes": len(votes), "units": len(units), "models": len(models), "unit": "item (prompt_id)",
            "score": "divergence"}
    return {"human": human, "judges": {"smollm2_loglik": _rows(lm, models, unit_of), "annotator1": _rows(one, models, unit_of)},
            "scores": scores.set_index("prompt_id").loc[units, "score"].to_numpy(np.float64), "models": models,
            "info": info}


def _share_to_reach(curves, d: int, reference: float) -> float:
    """The share of units design d needs for the design-based width uniform sampling has at `reference`
    (both curves interpolated linearly between budgets; NaN when not reached before 100 %)."""
    uni = curves.designs.index("uniform")
    target = float(np.interp(reference, curves.budgets, curves.width[uni]))
    w, b = curves.width[d], curves.budgets
    below = np.flatnonzero(w <= target)
    if below.size == 0:
        return float("nan")
    j = int(below[0])
    if j == 0:
        return float(b[0])
    return float(b[j - 1] + (w[j - 1] - target) / (w[j - 1] - w[j]) * (b[j] - b[j - 1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="llmfao,pandalm")
    parser.add_argument("--replays", type=int, default=200)
    parser.add_argument("--uniform-mix", type=float, default=0.2)
    parser.add_argument("--sampling", default="systematic", choices=("systematic", "poisson"))
    parser.add_argument("--runs", default=str(ROOT / "runs" / "pandalm"), help="scripts/pandalm_priority.py output")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--figures", default=str(ROOT / "docs" / "figures"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budgets", default=",".join(f"{b:g}" for b in BUDGETS),
                        help="shares of the units, comma separated (fewer budgets: a cheaper run)")
    args = parser.parse_args(argv)
    results, figures = pathlib.Path(args.results), pathlib.Path(args.figures)
    budgets = tuple(float(b) for b in args.budgets.split(","))
    headline = []
    for name in args.data.split(","):
        load = os.getloadavg()[0]
        data = llmfao(DATA) if name == "llmfao" else pandalm(pathlib.Path(args.runs))
        frames = []
        for judge_name, judge in data["judges"].items():
            start = time.perf_counter()
            curves = design_curves(jax.random.key(args.seed), data["human"], data["scores"],
                                   num_models=len(data["models"]), judge=judge, budgets=budgets,
                                   uniform_mix=args.uniform_mix, num_replays=args.replays, sampling=args.sampling,
                                   progress=lambda done, total: print(f"  {name}/{judge_name}: {done}/{total} "
                                                                      f"({time.perf_counter() - start:.0f} s)", flush=True))
            seconds = time.perf_counter() - start
            frame = curves.to_frame()
            frame.insert(0, "judge", judge_name)
            frame.insert(0, "data", name)
            frames.append(frame)
            for d, design in enumerate(curves.designs):
                if design.startswith("ppi") or judge_name == list(data["judges"])[0]:
                    at = {"coverage_min_ge20": float(np.nanmin(curves.coverage[d][(curves.budgets >= 0.2) & (curves.budgets < 1)]))}
                    headline.append({"data": name, "judge": judge_name if design.startswith("ppi") else "",
                                     "design": design, "labels_to_match_full_uniform": curves.labels_to_match[d],
                                     "equivalent_uniform_at_30": float(np.interp(0.3, curves.budgets, curves.equivalent_uniform[d])),
                                     "width_at_30": float(np.interp(0.3, curves.budgets, curves.width[d])),
                                     "lam_at_30": float(np.interp(0.3, curves.budgets, curves.lam[d])),
                                     **{f"labels_to_match_uniform_at_{int(ref * 100)}": _share_to_reach(curves, d, ref)
                                        for ref in (0.5, 0.8)}, **at})
            plot_design_curves(curves, figures / f"active_{name}_{judge_name}.png",
                               title=f"{name}: {data['info']['units']} units ({data['info']['unit']}), "
                                     f"{data['info']['models']} models; judge {judge_name}; {args.replays} replays "
                                     f"per point, {args.sampling} sampling, tau = {args.uniform_mix:g}")
            print(f"{name} / {judge_name}: {seconds:.0f} s (load {load:.1f})")
            print(frame.drop(columns=["data", "judge"]).round(3).to_string(index=False))
        out = pd.concat(frames, ignore_index=True)
        out.to_csv(results / f"active_{name}_curves.csv", index=False)
        (results / f"active_{name}_run.json").write_text(json.dumps({
            **data["info"], "replays": args.replays, "uniform_mix": args.uniform_mix, "sampling": args.sampling,
            "load_average_start": load, "load_average_end": os.getloadavg()[0], "machine": platform.platform(),
            "cpus": os.cpu_count(), "jax": jax.__version__, "device": str(jax.devices()[0]),
        }, indent=2))
    head = pd.DataFrame(headline)
    path = results / "active_headline.csv"
    if path.exists():  # keep the other data sets' rows (runs of one data set at a time)
        old = pd.read_csv(path, keep_default_na=False, na_values=[""])
        head = pd.concat([old[~old["data"].isin(head["data"])], head], ignore_index=True)
    head.to_csv(path, index=False)
    headline = head
    print(pd.DataFrame(headline).round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
