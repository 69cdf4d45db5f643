"""`jaxrank leaderboard VOTES`: a Bradley–Terry leaderboard with intervals from pairwise votes."""

from __future__ import annotations

import argparse
import warnings
from typing import Any

from jaxrank.commands._common import (
    FIGURE_FORMATS,
    TABLE_FORMATS,
    VOTE_PRESETS,
    ChunkProgress,
    CliError,
    check_distinct,
    console,
    err_console,
    input_path,
    output_path,
    resource_flags,
    vote_maps,
)

_COLUMN_KEYS = ("model_a", "model_b", "winner", "weight")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "leaderboard",
        help="Bradley-Terry leaderboard with confidence intervals from pairwise votes",
        description=(
            "Fit a Bradley-Terry leaderboard (Elo scale) from pairwise votes with columns model_a, model_b, "
            "winner (winner in model_a | model_b | tie | tie (bothbad)). Intervals come from a bootstrap "
            "(--bootstrap N) or, by default, from the robust sandwich estimator. Output columns: "
            "model, rating, lower, upper, rank_ub, battles."
        ),
    )
    p.add_argument("votes", metavar="VOTES", help="votes file: .csv, .tsv, .jsonl/.json or .parquet")
    p.add_argument("--ties", choices=("half", "rao-kupper", "davidson", "drop", "grounded-rao-kupper"), default="half",
                   help="tie model (default: half, a tie is half a win each way, as Chatbot Arena)")
    p.add_argument("--bootstrap", type=int, default=0, metavar="N",
                   help="bootstrap rounds for the intervals (default 0: sandwich intervals, no resampling)")
    p.add_argument("--ci", type=float, default=0.95, metavar="C", help="interval coverage in (0, 1) (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the bootstrap (default 0)")
    p.add_argument("--l2", type=float, default=0.0, help="L2 prior precision on log-strengths (default 0)")
    p.add_argument("--columns", metavar="MAP",
                   help="column names, e.g. model_a=model_x,model_b=model_y,winner=winner[,weight=w]")
    p.add_argument("--winner-labels", metavar="MAP",
                   help="winner labels, e.g. left=model_a,right=model_b,tie=tie")
    p.add_argument("--preset", choices=VOTE_PRESETS,
                   help="known layouts: arena (the default columns and labels), llmfao (left/right/winner)")
    p.add_argument("--anchor", metavar="MODEL=RATING", help="pin one model to a rating, e.g. gpt-4=1200")
    p.add_argument("--out", metavar="FILE", help="write the table (.csv, .jsonl or .parquet)")
    p.add_argument("--force", action="store_true", help="overwrite --out/--plot/--save if they exist")
    p.add_argument("--plot", metavar="FILE", help="forest plot of ratings and intervals (.png, .pdf, .svg)")
    p.add_argument("--save", metavar="DIR", help="save the fitted leaderboard (orbax checkpoint directory)")
    p.set_defaults(func=run)


def _parse_anchor(text: str) -> tuple[str, float]:
    if "=" not in text:
        raise CliError(f"--anchor: expected MODEL=RATING, got {text!r}")
    model, rating = text.rsplit("=", 1)
    try:
        value = float(rating)
    except ValueError:
        raise CliError(f"--anchor: RATING must be a number, got {rating!r}") from None
    if not model:
        raise CliError(f"--anchor: MODEL is empty in {text!r}")
    return model, value


def run(args: argparse.Namespace) -> int:
    import jax
    import numpy as np
    import pandas as pd

    from jaxrank.outputs import write_table
    from jaxrank.ratings import fit_bradley_terry, load_battles
    from jaxrank.ratings.uncertainty import (
        bootstrap_plan,
        bootstrap_ratings,
        rank_upper_bound,
        sandwich_intervals,
        save_leaderboard,
    )

    # Validate everything cheap before reading or fitting.
    votes = input_path(args.votes, arg="VOTES")
    if votes.is_dir():
        raise CliError(f"VOTES {votes} is a directory; expected a .csv, .jsonl or .parquet file")
    if args.bootstrap < 0 or args.bootstrap == 1:
        raise CliError(f"--bootstrap must be 0 (sandwich intervals) or >= 2 rounds, got {args.bootstrap}")
    if args.ties == "grounded-rao-kupper" and args.bootstrap < 2:
        raise CliError("--ties grounded-rao-kupper needs --bootstrap N (N >= 2): the sandwich intervals do not "
                       "support its four-outcome likelihood")
    if not 0.0 < args.ci < 1.0:
        raise CliError(f"--ci must lie strictly between 0 and 1, got {args.ci}")
    if args.l2 < 0:
        raise CliError(f"--l2 must be >= 0, got {args.l2}")
    # Every target, before any work: folder exists and is writable, not the input, --force rules.
    out = output_path(args.out, force=args.force, arg="--out", inputs=[votes], suffixes=TABLE_FORMATS)
    plot = output_path(args.plot, force=args.force, arg="--plot", inputs=[votes], suffixes=FIGURE_FORMATS)
    save = output_path(args.save, force=args.force, arg="--save", kind="dir", inputs=[votes])
    check_distinct(out, plot, save)

    columns, labels = vote_maps(args.preset, args.columns, args.winner_labels, column_keys=_COLUMN_KEYS)
    anchor, anchor_rating = _parse_anchor(args.anchor) if args.anchor else (None, None)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        battles = load_battles(votes, columns=columns, winner_labels=labels)
        if anchor is not None and anchor not in battles.models:
            raise CliError(f"--anchor: {anchor!r} is not one of the {battles.num_models} models in {votes}")
        fit_opts = {"l2": args.l2, "anchor": anchor, "anchor_rating": anchor_rating}
        if args.bootstrap >= 2:
            with resource_flags(num_rounds="--bootstrap"):  # the plan, before the fit
                plan = bootstrap_plan(battles, num_rounds=args.bootstrap, ties=args.ties)
        fit = fit_bradley_terry(battles, ties=args.ties, **fit_opts)
        if args.bootstrap >= 2:
            bar = ChunkProgress("bootstrap", "rounds")
            try:
                # At least ~20 chunks (same compiled shape), so the bar moves and Ctrl-C stops the run between
                # two of them; never more per chunk than the memory plan allows. Rounds do not depend on chunking.
                intervals = bootstrap_ratings(
                    jax.random.key(args.seed), battles, num_rounds=args.bootstrap, ties=args.ties,
                    confidence=args.ci, progress=bar, fit=fit,
                    chunk_size=max(1, min(plan.chunk_size, -(-args.bootstrap // 20))), **fit_opts,
                )
            finally:
                bar.close()
            method = f"bootstrap, {args.bootstrap} rounds"
        else:
            intervals = sandwich_intervals(battles, fit, confidence=args.ci, **fit_opts)
            method = "sandwich (robust) estimator"
    notes = [str(w.message) for w in caught]
    if not bool(fit.converged):
        notes.append(
            f"the Bradley-Terry fit did not converge in {int(fit.num_iter)} iterations; ratings may be inaccurate"
        )
    converged = getattr(intervals, "converged", None)
    if converged is not None:
        failed = int(np.sum(~np.asarray(converged, bool)))
        if failed:
            notes.append(
                f"{failed} of {np.size(converged)} bootstrap rounds did not converge (often a model that never "
                "lost or never won in a resample); their ratings are included in the intervals"
            )
    for note in notes:
        err_console.print(f"jaxrank: warning: {note}", markup=False, highlight=False, soft_wrap=True)

    lower = np.asarray(intervals.lower, np.float64)
    upper = np.asarray(intervals.upper, np.float64)
    count = battles.battles_per_model()
    frame = pd.DataFrame(
        {
            "model": list(battles.models),
            "rating": np.asarray(fit.ratings, np.float64),
            "lower": lower,
            "upper": upper,
            "rank_ub": np.asarray(rank_upper_bound(lower, upper), np.int64),
            "battles": count.astype(np.int64) if np.allclose(count, np.rint(count)) else count,
        }
    )
    frame = frame.sort_values(["rating", "model"], ascending=[False, True], kind="stable").reset_index(drop=True)

    if out is not None:
        write_table(frame, out)
    if plot is not None:
        from jaxrank.plots import plot_leaderboard

        plot_leaderboard(frame["model"], frame["rating"], frame["lower"], frame["upper"], path=plot,
                         title=f"{votes.name}: {args.ties} ties, {int(args.ci * 100)}% intervals ({method.split(',')[0]})")
    if save is not None:
        save_leaderboard(save, fit, intervals, force=args.force,
                         metadata={"votes": str(votes), "ties": args.ties, "bootstrap": args.bootstrap, "seed": args.seed})

    from rich.table import Table

    table = Table(title=f"{votes.name}: {battles.num_models} models, {battles.num_votes} votes; "
                        f"{args.ci:.0%} intervals from the {method}")
    for col, justify in (("rank (UB)", "right"), ("model", "left"), ("rating", "right"), ("lower", "right"),
                         ("upper", "right"), ("battles", "right")):
        table.add_column(col, justify=justify)
    for row in frame.itertuples(index=False):
        table.add_row(str(row.rank_ub), str(row.model), f"{row.rating:.1f}", f"{row.lower:.1f}", f"{row.upper:.1f}",
                      f"{row.battles:g}")
    console.print(table)
    written = [p.named for p in (out, plot, save) if p is not None]
    if written:
        err_console.print(f"wrote {', '.join(written)}", highlight=False)
    return 0
