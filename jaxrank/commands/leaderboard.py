"""`jaxrank leaderboard VOTES`: a Bradley–Terry leaderboard with intervals from pairwise votes."""

from __future__ import annotations

import argparse
import math
import pathlib
import warnings
from typing import Any

from jaxrank.commands._common import (
    FIGURE_FORMATS,
    TABLE_FORMATS,
    CliError,
    JobProgress,
    add_vote_arguments,
    check_distinct,
    console,
    err_console,
    input_path,
    output_path,
    resource_flags,
    vote_options,
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "leaderboard",
        help="Bradley-Terry leaderboard with confidence intervals from pairwise votes",
        description=(
            "Fit a Bradley-Terry leaderboard (Elo scale) from pairwise votes in any supported layout (Chatbot "
            "Arena model_a, model_b, winner; Kaggle 55k one-hot; FastChat clean_battle; MT-Bench; AlpacaEval soft "
            "preferences; LLMFAO; PandaLM), detected from the columns. Intervals come from a bootstrap "
            "(--bootstrap N) or, by default, from the robust sandwich estimator. Output columns: "
            "[group,] model, rating, lower, upper, rank_ub, battles, rank, tied_group (and rank_change with --style, "
            "win_rate, win_rate_lower, win_rate_upper in %% with --baseline). Python: jaxrank.leaderboard(votes, ...)."
        ),
    )
    p.add_argument("votes", metavar="VOTES", help="votes file: .csv, .tsv, .jsonl/.json or .parquet (text files may be .gz)")
    p.add_argument("--ties", choices=("half", "rao-kupper", "davidson", "drop", "grounded-rao-kupper"), default="half",
                   help="tie model (default: half, a tie is half a win each way, as Chatbot Arena)")
    p.add_argument("--bootstrap", type=int, default=0, metavar="N",
                   help="bootstrap rounds for the intervals (default 0: sandwich intervals, no resampling)")
    p.add_argument("--resample", choices=("votes", "prompts"), default="votes",
                   help="what a bootstrap round resamples: votes (default) or whole prompts (needs prompt ids)")
    p.add_argument("--ci", type=float, default=0.95, metavar="C", help="interval coverage in (0, 1) (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the bootstrap (default 0)")
    p.add_argument("--l2", type=float, default=0.0, help="L2 prior precision on log-strengths (default 0)")
    p.add_argument("--style", metavar="FEATURES",
                   help="style control: per-side features to control for, e.g. length or length,headers,lists,bold "
                        "(from Arena's conv_metadata, AlpacaEval's lengths or the answer texts), or NAME=COL_A:COL_B "
                        "to read a feature from two named columns. Adds the column rank_change (vs the plain fit)")
    p.add_argument("--style-l2", type=float, default=1.0, metavar="L",
                   help="L2 penalty on the style coefficients (default 1.0)")
    add_vote_arguments(p)
    p.add_argument("--design", metavar="PLAN",
                   help="the sampling plan the human votes were collected under (`jaxrank plan` output): a "
                        "design-weighted (Horvitz-Thompson) fit, each prompt's votes weighted by 1/probability, with "
                        "design-based intervals clustered by prompt; VOTES may hold only prompts the plan selected")
    p.add_argument("--judge", metavar="JUDGE_VOTES",
                   help="judge votes (an LLM judge, hard or soft outcomes) on all prompts, matched to VOTES by prompt "
                        "id: prediction-powered ratings (PPI++); prints lambda and the effective number of human "
                        "labels. Without --design the human-labelled prompts are taken as a simple random sample of "
                        "the judge's prompts")
    p.add_argument("--lam", type=float, default=None, metavar="L",
                   help="with --judge: a fixed PPI weight in [0, 1] (0: human only, 1: plain PPI; default: tuned)")
    p.add_argument("--anchor", metavar="MODEL=RATING", help="pin one model to a rating, e.g. gpt-4=1200")
    p.add_argument("--out", metavar="FILE", help="write the table (.csv, .jsonl or .parquet)")
    p.add_argument("--force", action="store_true", help="overwrite --out/--plot/--save if they exist")
    p.add_argument("--plot", metavar="FILE", help="forest plot of ratings and intervals (.png, .pdf, .svg)")
    p.add_argument("--save", metavar="DIR", help="save the fitted leaderboard (orbax checkpoint directory)")
    p.add_argument("--filter", action="append", default=[], metavar="COL=VALUE",
                   help="keep only votes whose column COL (a column of VOTES kept as metadata, e.g. turn, language, "
                        "category; or judge, prompt_id, model) equals VALUE; repeatable (different columns must all "
                        "match, values of one column are alternatives)")
    p.add_argument("--group-by", metavar="COL",
                   help="one leaderboard per value of column COL (e.g. turn, judge, language), all groups fitted in "
                        "one vmapped call; the table gains a group column")
    p.add_argument("--baseline", metavar="MODEL",
                   help="add each model's predicted win rate in %% against MODEL (a tie counts half), with its interval")
    p.add_argument("--matrix", metavar="FILE",
                   help="heatmaps of the pairwise observed win fraction, battle counts and predicted win rate "
                        "(.png, .pdf, .svg)")
    p.add_argument("--title", help="title of the printed table and the figures")
    p.set_defaults(func=run)


def parse_anchor(text: str) -> tuple[str, float]:
    """`MODEL=RATING` -> (model, rating); the rating must be a finite number."""
    if "=" not in text:
        raise CliError(f"--anchor: expected MODEL=RATING, got {text!r}")
    model, rating = text.rsplit("=", 1)
    try:
        value = float(rating)
    except ValueError:
        raise CliError(f"--anchor: RATING must be a number, got {rating!r}") from None
    if not math.isfinite(value):
        raise CliError(f"--anchor: RATING must be a finite number, got {rating!r}")
    if not model:
        raise CliError(f"--anchor: MODEL is empty in {text!r}")
    return model, value


def parse_style(text: str) -> tuple[tuple[str, ...], dict[str, tuple[str, str]]]:
    """`length,headers` / `length=len_a:len_b` -> (feature names, features read from named columns)."""
    names, columns = [], {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise CliError(f"--style: empty feature name in {text!r}")
        if "=" in part:
            name, cols = (s.strip() for s in part.split("=", 1))
            if cols.count(":") != 1 or not all(c.strip() for c in cols.split(":")) or not name:
                raise CliError(f"--style: expected NAME=COLUMN_A:COLUMN_B, got {part!r}")
            columns[name] = tuple(c.strip() for c in cols.split(":"))
            part = name
        if part in names:
            raise CliError(f"--style: feature {part!r} named twice")
        names.append(part)
    return tuple(names), columns


def parse_filters(items: list[str]) -> list[tuple[str, str]]:
    """`--filter COL=VALUE` (repeatable) -> [(column, value)]."""
    out = []
    for text in items:
        col, sep, value = text.partition("=")
        if not sep or not col.strip() or not value.strip():
            raise CliError(f"--filter: expected COL=VALUE, got {text!r}")
        out.append((col.strip(), value.strip()))
    return out


def run(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from jaxrank.outputs import write_table
    from jaxrank.ratings.leaderboard import leaderboard, vote_column
    from jaxrank.ratings.uncertainty import bootstrap_plan, save_leaderboard
    from jaxrank.votes import load_votes

    # Validate everything cheap before reading or fitting.
    votes_path = input_path(args.votes, arg="VOTES")
    if votes_path.is_dir():
        raise CliError(f"VOTES {votes_path} is a directory; expected a .csv, .jsonl or .parquet file")
    if args.bootstrap < 0 or args.bootstrap == 1:
        raise CliError(f"--bootstrap must be 0 (sandwich intervals) or >= 2 rounds, got {args.bootstrap}")
    if args.ties == "grounded-rao-kupper" and args.bootstrap < 2:
        raise CliError("--ties grounded-rao-kupper needs --bootstrap N (N >= 2): the sandwich intervals do not "
                       "support its four-outcome likelihood")
    if args.resample == "prompts" and args.bootstrap < 2:
        raise CliError("--resample prompts needs --bootstrap N (N >= 2)")
    if not 0.0 < args.ci < 1.0:
        raise CliError(f"--ci must lie strictly between 0 and 1, got {args.ci}")
    if not (math.isfinite(args.l2) and args.l2 >= 0):
        raise CliError(f"--l2 must be a finite number >= 0, got {args.l2}")
    if not (math.isfinite(args.style_l2) and args.style_l2 >= 0):
        raise CliError(f"--style-l2 must be a finite number >= 0, got {args.style_l2}")
    if args.group_by is not None:
        for opt, value in (("--anchor", args.anchor), ("--plot", args.plot), ("--matrix", args.matrix),
                           ("--save", args.save)):
            if value:
                raise CliError(f"{opt} is not available with --group-by (one leaderboard per group); filter one group "
                               "with --filter COL=VALUE instead")
    # Every target, before any work: folder exists and is writable, not the input, --force rules.
    out = output_path(args.out, force=args.force, arg="--out", inputs=[votes_path], suffixes=TABLE_FORMATS)
    plot = output_path(args.plot, force=args.force, arg="--plot", inputs=[votes_path], suffixes=FIGURE_FORMATS)
    matrix = output_path(args.matrix, force=args.force, arg="--matrix", inputs=[votes_path], suffixes=FIGURE_FORMATS)
    save = output_path(args.save, force=args.force, arg="--save", kind="dir", inputs=[votes_path])
    check_distinct(out, plot, matrix, save)
    style, style_columns = parse_style(args.style) if args.style else ((), {})
    if style and args.ties == "grounded-rao-kupper":
        raise CliError("--style is not available with --ties grounded-rao-kupper (its both-bad competitor has no "
                       "answer, hence no style)")
    filters = parse_filters(args.filter)
    read = vote_options(args)
    anchor, anchor_rating = parse_anchor(args.anchor) if args.anchor else (None, None)
    if args.design or args.judge:
        for flag, bad in (("--filter", filters), ("--group-by", args.group_by), ("--baseline", args.baseline),
                          ("--matrix", matrix)):
            if bad:
                raise CliError(f"{flag} is not available with {'--design' if args.design else '--judge'} (the "
                               "design-based leaderboard); leave it out")
        return _run_design(args, votes_path, out, plot, save, style, read, anchor, anchor_rating)
    if args.lam is not None:
        raise CliError("--lam is the PPI weight of judge votes; it needs --judge JUDGE_VOTES")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        votes = load_votes(votes_path, features=style_columns or None, **read)
        if anchor is not None and anchor not in votes.models:
            close = [m for m in votes.models if anchor.lower() in m.lower()][:5]
            hint = f"; similar: {', '.join(close)}" if close else ""
            raise CliError(f"--anchor: {anchor!r} is not one of the {votes.num_models} models in {votes_path}{hint}")
        if args.baseline is not None and args.baseline not in votes.models:
            close = [m for m in votes.models if args.baseline.lower() in m.lower()][:5]
            hint = f"; similar: {', '.join(close)}" if close else f"; models: {', '.join(votes.models[:20])}"
            raise CliError(f"--baseline: {args.baseline!r} is not one of the {votes.num_models} models in "
                           f"{votes_path}{hint}")
        if style:
            missing = [s for s in style if s not in votes.feature_names]
            if missing:
                have = ", ".join(votes.feature_names) or "none"
                raise CliError(f"--style: {votes_path} has no feature(s) {', '.join(map(repr, missing))} (features found: "
                               f"{have}); read one from two columns with --style NAME=COLUMN_A:COLUMN_B")
        try:
            if args.group_by is not None:
                vote_column(votes, args.group_by)
            bar = None
            chunk = None
            if args.bootstrap >= 2:
                with resource_flags(num_rounds="--bootstrap"):  # the memory plan, before the fit
                    plan = bootstrap_plan(votes, num_rounds=args.bootstrap, ties=args.ties, unit=args.resample,
                                          style=style)
                # At least ~20 chunks (same compiled shape), so the bar moves and Ctrl-C stops the run between
                # two of them; never more per chunk than the memory plan allows. Rounds do not depend on chunking.
                chunk = max(1, min(plan.chunk_size, -(-args.bootstrap // 20)))
                groups = sorted(set(vote_column(votes, args.group_by).astype(str).tolist())) if args.group_by else [""]
                bar = JobProgress("leaderboard", [(f"bootstrap {args.group_by}={g}" if g else "bootstrap", 1.0)
                                                  for g in groups],
                                  items=args.bootstrap * len(groups), unit="rounds")
                bar.plan(f"{args.bootstrap} bootstrap rounds over {args.resample} x {len(groups)} "
                         f"leaderboard(s); {votes.num_models} models, {votes.num_votes} votes; ~20 compiled chunks "
                         "per leaderboard (the first compiles)")
            try:
                with resource_flags(num_rounds="--bootstrap"):
                    lb = leaderboard(
                        votes, ties=args.ties, bootstrap=args.bootstrap,
                        key=jax.random.key(args.seed) if args.bootstrap >= 2 else None, resample=args.resample,
                        confidence=args.ci, l2=args.l2, style=style or None, style_l2=args.style_l2, anchor=anchor,
                        anchor_rating=anchor_rating, filters=filters or None, group_by=args.group_by,
                        baseline=args.baseline, title=args.title,
                        progress=None if bar is None else bar.sequential(),
                        chunk_size=chunk,
                    )
            finally:
                if bar is not None:
                    bar.close()
        except ValueError as err:
            msg = str(err)
            for prefix, opt in (("filter ", "--filter "), ("no vote satisfies", "--filter: no vote satisfies"),
                                ("no column", "--group-by/--filter: no column")):
                if msg.startswith(prefix):
                    raise CliError(opt + msg[len(prefix):]) from None
            raise
    for note in dict.fromkeys(str(w.message) for w in caught):
        err_console.print(f"jaxrank: warning: {note}", markup=False, highlight=False, soft_wrap=True)

    frame = lb.frame
    fit = lb.fits[None] if args.group_by is None else None
    intervals = lb.intervals[None] if args.group_by is None else None
    name = votes_path.name
    title = args.title or f"{name}: {lb.title}"
    if out is not None:
        write_table(frame, out)
    if plot is not None:
        from jaxrank.plots import plot_leaderboard

        plot_leaderboard(frame["model"], frame["rating"], frame["lower"], frame["upper"], path=plot,
                         title=args.title or f"{name}: {args.ties} ties, {int(args.ci * 100)}% intervals "
                                             f"({lb.method.split(',')[0]})")
    if matrix is not None:
        from jaxrank.plots import plot_matrices

        mats = lb.matrices()
        plot_matrices(list(frame["model"]), {k: v.to_numpy() for k, v in mats.items()}, path=matrix,
                      title=args.title or f"{name}: pairwise tables, {lb.fits[None].num_models} models")
    if save is not None:
        save_leaderboard(save, fit, intervals, force=args.force,
                         metadata={"votes": str(votes_path), "ties": args.ties, "bootstrap": args.bootstrap,
                                   "seed": args.seed, "style": list(style), "resample": args.resample,
                                   "filters": [list(f) for f in filters]})

    from rich.table import Table

    for group in lb.groups:
        rows = frame if group is None else frame[frame["group"] == group]
        caption = f"win %: predicted win rate against {args.baseline} (a tie counts half)" if args.baseline else None
        table = Table(title=title if group is None else f"{title}\n{args.group_by} = {group}", caption=caption)
        columns = [("rank", "right"), ("rank (UB)", "right"), ("group", "right"), ("model", "left"),
                   ("rating", "right"), ("lower", "right"), ("upper", "right"), ("battles", "right")]
        if style:
            columns.append(("rank change", "right"))
        if args.baseline:
            columns += [("win %", "right"), ("lo %", "right"), ("hi %", "right")]
        for col, justify in columns:
            table.add_column(col, justify=justify, no_wrap=col == "model")
        for row in rows.itertuples(index=False):
            cells = [str(row.rank), str(row.rank_ub), str(row.tied_group), str(row.model), f"{row.rating:.1f}",
                     f"{row.lower:.1f}", f"{row.upper:.1f}", f"{row.battles:g}"]
            if style:
                cells.append(f"{row.rank_change:+d}" if row.rank_change else "0")
            if args.baseline:
                cells += [f"{row.win_rate:.1f}", f"{row.win_rate_lower:.1f}", f"{row.win_rate_upper:.1f}"]
            table.add_row(*cells)
        # Not a terminal (a pipe, a log): rich would squeeze the table into 80 columns and cut the numbers.
        console.print(table, width=None if console.is_terminal else max(console.width, 140))
        if style:
            g_fit, g_iv = lb.fits[group], lb.intervals[group]
            beta = np.asarray(g_fit.beta, np.float64)
            lo, hi = np.asarray(g_iv.beta_lower, np.float64), np.asarray(g_iv.beta_upper, np.float64)
            parts = [f"{n} {b:+.3f} [{l:+.3f}, {h:+.3f}]" for n, b, l, h in zip(style, beta, lo, hi)]
            console.print(f"style coefficients (log-odds of a win per standard deviation of the normalised difference, "
                          f"{args.ci:.0%} intervals): {'; '.join(parts)}", highlight=False, soft_wrap=True)
    written = [p.named for p in (out, plot, matrix, save) if p is not None]
    if written:
        err_console.print(f"wrote {', '.join(written)}", highlight=False)
    return 0


_DESIGN_TIES = ("half", "drop", "rao-kupper", "davidson")


def _design_error(err: ValueError, votes_path: pathlib.Path, design: Any, judge: Any) -> CliError:
    """A library error as one CLI line naming the argument (VOTES, --design, --judge)."""
    text = str(err)
    for prefix, flag in (("votes:", f"VOTES {votes_path}:"), ("judge:", f"--judge {judge}:"),
                         ("plan:", f"--design {design}:"), ("plan ", f"--design {design}: plan ")):
        if text.startswith(prefix):
            return CliError(f"{flag} {text[len(prefix):].lstrip()}")
    return CliError(text)


def _run_design(args: argparse.Namespace, votes_path: pathlib.Path, out, plot, save, style, read, anchor,
                anchor_rating) -> int:
    """`--design PLAN` and / or `--judge JUDGE_VOTES`: a design-weighted or prediction-powered leaderboard."""
    import numpy as np
    import pandas as pd

    from jaxrank import active
    from jaxrank.ratings.uncertainty import rank_by_rating, rank_upper_bound, tied_groups
    from jaxrank.votes import load_votes

    used = "--design" if args.design else "--judge"
    for flag, bad in (("--bootstrap", args.bootstrap >= 2), ("--style", bool(style)), ("--save", save is not None),
                      ("--resample prompts", args.resample != "votes")):
        if bad:
            raise CliError(f"{flag} is not available with {used} (intervals come from the design-based sandwich, "
                           "clustered by prompt)")
    if args.ties not in _DESIGN_TIES:
        raise CliError(f"--ties {args.ties} is not available with {used}; use one of {', '.join(_DESIGN_TIES)}")
    if args.lam is not None and not args.judge:
        raise CliError("--lam is the PPI weight of judge votes; it needs --judge JUDGE_VOTES")
    if args.lam is not None and not (math.isfinite(args.lam) and 0 <= args.lam <= 1):
        raise CliError(f"--lam must lie in [0, 1], got {args.lam:g}")
    design = input_path(args.design, arg="--design") if args.design else None
    judge_path = input_path(args.judge, arg="--judge") if args.judge else None
    for flag, path in (("--design", design), ("--judge", judge_path)):
        if path is not None and path.is_dir():
            raise CliError(f"{flag} {path} is a directory; expected a .csv, .jsonl or .parquet file")
    plan = None
    if design is not None:
        try:
            plan = active.load_plan(design)
        except ValueError as err:
            raise _design_error(err, votes_path, design, judge_path) from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        votes = load_votes(votes_path, **read)
        judge = load_votes(judge_path) if judge_path is not None else None
        if anchor is not None and anchor not in votes.models:
            raise CliError(f"--anchor: {anchor!r} is not one of the {votes.num_models} models in {votes_path}")
        try:
            board = active.design_leaderboard(votes, plan, judge=judge, lam=args.lam, ties=args.ties, l2=args.l2,
                                              confidence=args.ci)
        except ValueError as err:
            raise _design_error(err, votes_path, design, judge_path) from None
    notes = [str(w.message) for w in caught]
    if not bool(board.estimate.converged):
        notes.append(f"the fit did not converge in {int(board.estimate.num_iter)} iterations; ratings may be inaccurate")
    for note in dict.fromkeys(notes):
        err_console.print(f"jaxrank: warning: {note}", markup=False, highlight=False, soft_wrap=True)

    frame = board.to_frame(anchor=anchor, anchor_rating=anchor_rating).drop(columns="std_error")
    lower, upper = frame["lower"].to_numpy(), frame["upper"].to_numpy()
    ratings = frame["rating"].to_numpy()
    count = votes.battles_per_model()
    frame["rank_ub"] = np.asarray(rank_upper_bound(lower, upper), np.int64)
    frame["battles"] = count.astype(np.int64) if np.allclose(count, np.rint(count)) else count
    frame["rank"] = np.asarray(rank_by_rating(ratings), np.int64)
    frame["tied_group"] = tied_groups(ratings, lower, upper).astype(np.int64)
    frame = frame.sort_values(["rating", "model"], ascending=[False, True], kind="stable").reset_index(drop=True)
    frame = pd.DataFrame(frame, columns=["model", "rating", "lower", "upper", "rank_ub", "battles", "rank", "tied_group"])

    if board.judge:
        how = (f"prediction-powered (PPI++), lambda = {board.lam:.3f}" + (" (fixed)" if args.lam is not None else "")
               + f"; {board.num_labelled} of {len(board.prompt_ids)} prompts human-labelled, effective human labels "
               f"{board.effective_labels:.1f}")
    else:
        how = f"design-weighted (Horvitz-Thompson); {board.num_labelled} of {len(board.prompt_ids)} prompts labelled"
    design_name = board.sample.design if design is not None else "simple random sample of the judge's prompts"
    if out is not None:
        from jaxrank.outputs import write_table

        write_table(frame, out)
    if plot is not None:
        from jaxrank.plots import plot_leaderboard

        plot_leaderboard(frame["model"], frame["rating"], frame["lower"], frame["upper"], path=plot,
                         title=f"{votes_path.name}: {'PPI++' if board.judge else 'design-weighted'}, "
                               f"{int(args.ci * 100)}% design intervals")

    from rich.table import Table

    table = Table(title=f"{votes_path.name}: {votes.num_models} models, {votes.num_votes} votes; {args.ci:.0%} "
                        f"design-based intervals ({design_name}, clustered by prompt)")
    for col, justify in [("rank", "right"), ("rank (UB)", "right"), ("group", "right"), ("model", "left"),
                         ("rating", "right"), ("lower", "right"), ("upper", "right"), ("battles", "right")]:
        table.add_column(col, justify=justify)
    for row in frame.itertuples(index=False):
        table.add_row(str(row.rank), str(row.rank_ub), str(row.tied_group), str(row.model), f"{row.rating:.1f}",
                      f"{row.lower:.1f}", f"{row.upper:.1f}", f"{row.battles:g}")
    console.print(table)
    console.print(how, highlight=False, soft_wrap=True)
    written = [p.named for p in (out, plot) if p is not None]
    if written:
        err_console.print(f"wrote {', '.join(written)}", highlight=False)
    return 0
