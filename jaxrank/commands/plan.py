"""`jaxrank plan`: which prompts humans should label, drawn with known probabilities.

Reads per-prompt priority scores, turns a label budget into inclusion probabilities proportional to the
scores mixed with uniform (`jaxrank.active.inclusion_probabilities`), draws the prompts and writes the plan:
`prompt_id, probability, selected, weight, round, round_weight, design`. Label the selected prompts, then
fit with `jaxrank leaderboard VOTES --design PLAN.csv`: every vote is weighted by its prompt's `weight`
(1 / probability), which makes the leaderboard an unbiased estimate of the one labelling every prompt
would give, with design-based intervals.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from jaxrank.commands._common import CliError, console, err_console, input_path, output_path
from jaxrank.outputs import TABLE_FORMATS


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "plan",
        help="draw the prompts to label with known probabilities (a sampling plan for a design-weighted leaderboard)",
        description=(
            "Turn per-prompt priority scores (e.g. `jaxrank prioritize` KL/cross-entropy) and a label budget into "
            "inclusion probabilities pi_i = clip(c ((1 - tau) u_i / sum u + tau / P), pi_min, 1) with sum pi = budget "
            "(prompts whose share would exceed 1 are taken with certainty), draw the prompts and write the plan "
            "(columns prompt_id, probability, selected, weight, round, round_weight, design). Label the selected "
            "prompts and fit with `jaxrank leaderboard VOTES --design PLAN`."
        ),
    )
    p.add_argument("--scores", required=True, metavar="SCORES",
                   help="priority scores: .csv/.jsonl/.parquet with columns prompt_id, score (scores >= 0)")
    p.add_argument("--budget", required=True, metavar="N",
                   help="number of prompts to label (an integer), or a share such as 20%%")
    p.add_argument("--uniform-mix", type=float, default=0.1, metavar="TAU",
                   help="share tau in (0, 1] of uniform sampling mixed in; bounds the weights; 1 = uniform (default 0.1)")
    p.add_argument("--min-probability", type=float, default=0.0, metavar="P",
                   help="floor on every prompt's probability (caps weights at 1/P; default 0)")
    p.add_argument("--max-weight", type=float, default=None, metavar="W",
                   help="refuse a plan whose largest weight 1/pi exceeds W (the error names the --uniform-mix that avoids it)")
    p.add_argument("--design", choices=("systematic", "poisson"), default="systematic",
                   help="systematic: exactly N prompts (randomised systematic pi-ps, exact probabilities; default); "
                        "poisson: each prompt independently (random number, exactly unbiased variance estimates)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the draw (default 0)")
    p.add_argument("--out", required=True, metavar="PLAN", help="plan file to write (.csv, .jsonl or .parquet)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=run)


def _parse_budget(text: str, num_prompts: int, design: str) -> float:
    raw = text.strip()
    try:
        if raw.endswith("%"):
            share = float(raw[:-1]) / 100.0
            if not (math.isfinite(share) and 0 < share <= 1):
                raise CliError(f"--budget {text}: a share must lie in (0%, 100%]")
            n = share * num_prompts
            return float(max(1, round(n))) if design == "systematic" else n
        n = float(raw)
    except ValueError:
        raise CliError(f"--budget: expected a number of prompts or a share like 20%, got {text!r}") from None
    if not (math.isfinite(n) and n > 0):
        raise CliError(f"--budget must be > 0, got {text}")
    if n > num_prompts:
        raise CliError(f"--budget {text} exceeds the number of prompts ({num_prompts}) in --scores")
    if design == "systematic" and n != int(n):
        raise CliError(f"--budget {text}: the systematic design labels exactly N prompts, N must be an integer "
                       "(or use --design poisson for an expected number)")
    return n


def run(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from jaxrank import active
    from jaxrank.evaluation import load_scores

    scores_path = input_path(args.scores, arg="--scores")
    if scores_path.is_dir():
        raise CliError(f"--scores {scores_path} is a directory; expected a .csv, .jsonl or .parquet file")
    out = output_path(args.out, force=args.force, arg="--out", inputs=[scores_path], suffixes=TABLE_FORMATS)
    if not (math.isfinite(args.uniform_mix) and 0 < args.uniform_mix <= 1):
        raise CliError(f"--uniform-mix must lie in (0, 1], got {args.uniform_mix:g}")
    if not (math.isfinite(args.min_probability) and 0 <= args.min_probability <= 1):
        raise CliError(f"--min-probability must lie in [0, 1], got {args.min_probability:g}")
    if args.max_weight is not None and not args.max_weight >= 1:
        raise CliError(f"--max-weight must be >= 1 (weights are 1/probability), got {args.max_weight:g}")
    try:
        scores = load_scores(scores_path)
    except ValueError as err:
        raise CliError(f"--scores {scores_path}: {err}") from None
    budget = _parse_budget(args.budget, len(scores), args.design)
    try:
        pi = active.inclusion_probabilities(scores.to_numpy(), budget, uniform_mix=args.uniform_mix,
                                            min_probability=args.min_probability, max_weight=args.max_weight)
    except ValueError as err:
        text = str(err)
        for name, flag in (("scores", f"--scores {scores_path}:"), ("max_weight", "--max-weight:"),
                           ("min_probability", "--min-probability:"), ("budget", "--budget:")):
            if text.startswith(name):
                text = f"{flag} {text[len(name):].lstrip(': ')}"
                break
        raise CliError(text.replace("uniform_mix", "--uniform-mix").replace("max_weight", "--max-weight")) from None

    # In float64: the systematic design places its points exactly and the plan keeps the exact probabilities.
    with jax.enable_x64(True):
        pi64 = np.asarray(pi, np.float64)
        selected = np.asarray(active.draw_sample(jax.random.key(args.seed), pi64, design=args.design))
        sample = active.single_round(selected, pi64, design=args.design)
        frame = active.plan_frame(sample, scores.index.tolist())
    from jaxrank.outputs import write_table

    write_table(frame, out)  # a temporary sibling renamed in; never a file that appeared meanwhile

    w = frame["weight"].to_numpy()[selected]
    kish = float(w.sum() ** 2 / (w * w).sum()) if w.size else 0.0
    from rich.table import Table

    table = Table(title=f"{scores_path.name}: {len(scores)} prompts, budget {budget:g} ({args.design} design, "
                        f"uniform mix {args.uniform_mix:g}, seed {args.seed})")
    for col in ("selected", "pi = 1", "min pi", "max weight", "Kish n_eff"):
        table.add_column(col, justify="right")
    table.add_row(str(int(selected.sum())), str(int((pi >= 1).sum())), f"{pi.min():.4g}", f"{1 / pi.min():.4g}",
                  f"{kish:.1f}")
    console.print(table)
    err_console.print(f"wrote {out.named}", highlight=False)
    return 0
