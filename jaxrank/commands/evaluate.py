"""`jaxrank evaluate ties|stability|replay`: what labelling the highest-priority prompts first saves, on your data.

- `ties`: tie rate among the top q % prompts vs random q % subsets, and the relative reduction.
- `stability`: the leaderboard from the top q % prompts' votes vs the leaderboard from all votes.
- `replay`: sampling designs replayed on fully labelled votes (coverage, width, Kendall tau per budget).

SCORES: CSV/JSONL/Parquet with `prompt_id, score`. VOTES: Arena-format votes (`model_a, model_b, winner`)
plus a `prompt_id` column.
"""

from __future__ import annotations

import argparse
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

_FLAGS = {"num_random": "--num-random", "num_bootstrap": "--bootstrap", "num_permutations": "--permutations"}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="tie reduction and leaderboard stability of prompt prioritization on your votes",
        description=(
            "Measure what labelling the highest-priority prompts first saves: 'ties' compares the tie rate "
            "among the top q% of prompts with random q% subsets; 'stability' compares the leaderboard "
            "from the top q% prompts' votes with the leaderboard from all votes."
        ),
    )
    sub = p.add_subparsers(dest="evaluation", metavar="EVALUATION")
    sub.required = True

    t = sub.add_parser(
        "ties",
        help="tie rate of the top q%% prompts vs random q%% subsets",
        description=(
            "Tie rate (ties / votes, 'tie' and 'tie (bothbad)' both count) among the votes of the top q% "
            "prompts by score vs random q% prompt subsets, and the reduction 1 - top / random with a "
            "bootstrap-over-prompts interval. --out writes CSV columns fraction, tie_rate_top, "
            "tie_rate_random, reduction, lower, upper."
        ),
    )
    _common_args(t)
    t.add_argument("--num-random", type=int, default=1000, metavar="N",
                   help="random subsets for the baseline and bootstrap replicates for the interval (default 1000)")
    t.set_defaults(func=run_ties)

    s = sub.add_parser(
        "stability",
        help="leaderboard from the top q%% prompts vs the leaderboard from all votes",
        description=(
            "Fit the leaderboard on the votes of the top q% prompts (and of random q% subsets) and compare "
            "it with the leaderboard on all votes: Kendall tau, Spearman rho, fraction of pairs ordered as "
            "in gold, largest rating difference (Elo points), with intervals. --out writes CSV columns "
            "fraction, then kendall_tau, spearman, pairs_agree, max_rating_diff each with _lower/_upper, "
            "then random_<metric> with _lower/_upper, then num_prompts, num_votes."
        ),
    )
    _common_args(s)
    s.add_argument("--method", choices=("bt", "elo"), default="bt",
                   help="bt: Bradley-Terry (default); elo: online Elo over random vote orders")
    s.add_argument("--ties", choices=("half", "rao-kupper", "davidson", "drop"), default="half",
                   help="Bradley-Terry tie model (default: half)")
    s.add_argument("--num-random", type=int, default=100, metavar="N",
                   help="random prompt subsets per fraction (default 100)")
    s.add_argument("--permutations", type=int, default=100, metavar="N",
                   help="vote orders for --method elo (default 100)")
    s.add_argument("--bootstrap", type=int, default=100, metavar="N",
                   help="bootstrap rounds over prompts for the Bradley-Terry top-q intervals (one set of rounds "
                        "shared by all fractions), 0 for none (default 100)")
    s.add_argument("--l2", type=float, default=0.0, help="Bradley-Terry L2 prior precision (default 0)")
    s.add_argument("--metric", choices=("kendall_tau", "spearman", "pairs_agree", "max_rating_diff"),
                   default="kendall_tau", help="metric drawn by --plot (default kendall_tau)")
    s.set_defaults(func=run_stability)

    r = sub.add_parser(
        "replay",
        help="replay sampling designs on fully labelled votes: coverage, interval width, Kendall tau per budget",
        description=(
            "On votes with every prompt labelled (optionally with judge votes), draw R samples per design and "
            "label budget, fit each (design-weighted, or prediction-powered with --judge) with its design-based "
            "95%% intervals, and report per budget the coverage of the full-data ratings, the mean interval "
            "width, Kendall tau to the full-data leaderboard, lambda, and the share of labels uniform sampling "
            "needs for the same width. Designs: uniform, proportional (scores mixed with --uniform-mix), and with "
            "--judge ppi and ppi-proportional. --out writes CSV columns design, budget, num_labels, coverage, "
            "coverage_stderr, width, width_superpopulation, kendall_tau, lam, effective_labels, "
            "equivalent_uniform, labels_to_match."
        ),
    )
    r.add_argument("--votes", required=True, metavar="VOTES",
                   help="human votes with prompt ids, every prompt labelled (any layout jaxrank leaderboard reads)")
    r.add_argument("--scores", required=True, metavar="SCORES",
                   help="priority scores: .csv/.jsonl/.parquet with columns prompt_id, score (>= 0) for every voted prompt")
    r.add_argument("--judge", metavar="JUDGE_VOTES", help="judge votes on every prompt (adds the PPI designs)")
    r.add_argument("--budgets", metavar="LIST", default="0.05,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0",
                   help="label budgets as shares of the prompts, comma-separated in (0, 1] (default 0.05,0.1,0.2,...,1.0)")
    r.add_argument("--replays", type=int, default=200, metavar="R", help="draws per design and budget (default 200)")
    r.add_argument("--uniform-mix", type=float, default=0.1, metavar="TAU",
                   help="share tau in (0, 1] of uniform sampling in the proportional designs (default 0.1)")
    r.add_argument("--sampling", choices=("systematic", "poisson"), default="systematic",
                   help="fixed-size systematic pi-ps (default) or Poisson sampling")
    r.add_argument("--ties", choices=("half", "rao-kupper", "davidson", "drop"), default="half",
                   help="Bradley-Terry tie model (default: half)")
    r.add_argument("--ci", type=float, default=0.95, metavar="C", help="interval coverage in (0, 1) (default 0.95)")
    r.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_vote_arguments(r)
    r.add_argument("--prompt-column", metavar="NAME", help="prompt-id column of VOTES and JUDGE_VOTES (as for ties)")
    r.add_argument("--out", metavar="FILE", help="write the curves as CSV")
    r.add_argument("--plot", metavar="FILE", help="write the figure (.png, .pdf, .svg): coverage, width, Kendall tau")
    r.add_argument("--force", action="store_true", help="overwrite --out/--plot if they exist")
    r.set_defaults(func=run_replay)


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scores", required=True, metavar="SCORES",
                   help="priority scores: .csv/.jsonl/.parquet with columns prompt_id, score")
    p.add_argument("--votes", required=True, metavar="VOTES",
                   help="votes with prompt ids: any layout jaxrank leaderboard reads (e.g. model_a, model_b, winner, "
                        "prompt_id)")
    p.add_argument("--fractions", metavar="LIST", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0",
                   help="fractions q of prompts, comma-separated in (0, 1] (default 0.1,0.2,...,1.0)")
    p.add_argument("--ci", type=float, default=0.95, metavar="C", help="interval coverage in (0, 1) (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_vote_arguments(p)
    p.add_argument("--prompt-column", metavar="NAME",
                   help="prompt-id column of VOTES (default: the layout's, e.g. prompt_id or question_id; LLMFAO: "
                        "prompt); the same as --columns prompt_id=NAME")
    p.add_argument("--out", metavar="FILE", help="write the table (.csv, .tsv, .jsonl or .parquet)")
    p.add_argument("--plot", metavar="FILE", help="write the figure (.png, .pdf, .svg)")
    p.add_argument("--force", action="store_true", help="replace --out/--plot if they exist (files only)")


def _parse_fractions(text: str, flag: str = "--fractions") -> list[float]:
    out = []
    for part in text.split(","):
        try:
            q = float(part)
        except ValueError:
            raise CliError(f"{flag}: {part.strip()!r} is not a number (expected e.g. 0.1,0.2,0.5,1.0)") from None
        if not 0.0 < q <= 1.0:
            raise CliError(f"{flag}: {q:g} is outside (0, 1]")
        out.append(q)
    if len(set(out)) != len(out):
        raise CliError(f"{flag}: duplicate values in {text!r}")
    return out


def _outputs(args: argparse.Namespace, inputs=()):
    """--out (a table by suffix) and --plot (.png/.pdf/.svg), checked before any work (`jaxrank.outputs`):
    (out, plot), None when not asked."""
    out = output_path(args.out, force=args.force, arg="--out", inputs=inputs, suffixes=TABLE_FORMATS)
    plot = output_path(args.plot, force=args.force, arg="--plot", inputs=inputs, suffixes=FIGURE_FORMATS)
    check_distinct(out, plot)
    return out, plot


def _load(args: argparse.Namespace):
    """Validate the common options, then read SCORES and VOTES; returns (scores, votes, out, plot, fractions)."""
    from jaxrank.evaluation import load_scores
    from jaxrank.votes import load_votes

    scores_path = input_path(args.scores, arg="--scores")
    votes_path = input_path(args.votes, arg="--votes")
    for arg, p in (("--scores", scores_path), ("--votes", votes_path)):
        if p.is_dir():
            raise CliError(f"{arg} {p} is a directory; expected a .csv, .jsonl or .parquet file")
    fractions = _parse_fractions(args.fractions)
    if not 0.0 < args.ci < 1.0:
        raise CliError(f"--ci must lie strictly between 0 and 1, got {args.ci}")
    if args.num_random < 2:
        raise CliError(f"--num-random must be >= 2, got {args.num_random}")
    out, plot = _outputs(args, inputs=[scores_path, votes_path])
    read = vote_options(args, columns_extra={"prompt_id": args.prompt_column} if args.prompt_column else None)
    try:
        scores = load_scores(scores_path)
    except ValueError as err:
        raise CliError(f"--scores {scores_path}: {err}") from None
    try:
        votes = load_votes(votes_path, **read)
    except ValueError as err:
        raise CliError(f"--votes {votes_path}: {err}") from None
    if votes.prompt is None:
        raise CliError(f"--votes {votes_path} has no prompt-id column (the layout's default, e.g. prompt_id or "
                       "question_id, is absent); name yours with --prompt-column NAME")
    return scores, votes, out, plot, fractions, votes_path, scores_path


def _evaluate(fn, args: argparse.Namespace, scores_path, votes_path, *, command: str, plan: str, unit: str,
              **kwargs):
    """Run `fn(**kwargs, progress=...)` under one progress display (`plan` printed once the inputs are
    checked, then one step per compiled chunk of `unit`): its errors name the CLI flag they come from
    (`scores: ...` -> `--scores FILE: ...`), and its warnings are printed as one `jaxrank: warning:` line each."""
    job = JobProgress(command, [(command, 1.0)], unit=unit)

    def step(done: int, total: int) -> None:
        if done == 0:  # inputs checked (their errors stay one line): the plan, then the work
            job.total_items = total
            job.plan(plan)
            return
        job.items_done = done
        job.update(0, done, total)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with resource_flags(**_FLAGS):
                res = fn(**kwargs, progress=step)
        except ValueError as err:
            text = str(err)
            if text.startswith("scores"):
                raise CliError(f"--scores {scores_path}: {text}") from None
            if text.startswith(("votes", "prompt_ids")):
                raise CliError(f"--votes {votes_path}: {text}") from None
            raise CliError(text) from None
        finally:
            job.close()
    for note in dict.fromkeys(str(w.message) for w in caught):
        note = f"--scores {scores_path}: {note}" if note.startswith("scores") else note
        err_console.print(f"jaxrank: warning: {note}", markup=False, highlight=False, soft_wrap=True)
    return res


def _fmt(x: float, digits: int = 3) -> str:
    return "nan" if x != x else f"{x:.{digits}f}"


def run_ties(args: argparse.Namespace) -> int:
    import jax

    from jaxrank.evaluation import tie_reduction
    from jaxrank.outputs import write_table

    scores, votes, out, plot, fractions, votes_path, scores_path = _load(args)
    plan = (f"{len(fractions)} fractions x {args.num_random:,} random subsets and as many bootstrap replicates "
            f"over {votes.num_prompts} prompts ({votes.num_votes} votes), in compiled chunks")
    res = _evaluate(tie_reduction, args, scores_path, votes_path, command="evaluate ties", plan=plan,
                    unit="chunks", scores=scores, votes=votes, fractions=fractions, num_random=args.num_random,
                    confidence=args.ci, key=jax.random.key(args.seed))
    frame = res.to_frame()
    if out is not None:
        write_table(frame, out)
    if plot is not None:
        from jaxrank.plots import plot_tie_reduction

        plot_tie_reduction(res, plot, title=f"{votes_path.name}: {votes.num_prompts} prompts, {votes.num_votes} votes")

    from rich.table import Table

    table = Table(title=f"{votes_path.name}: {votes.num_prompts} prompts, {votes.num_votes} votes, "
                        f"{args.num_random} random subsets; {args.ci:.0%} bootstrap interval")
    for col in ("q", "prompts", "votes", "tie rate top", "tie rate random", "reduction", "interval"):
        table.add_column(col, justify="right")
    for i in range(len(frame)):
        table.add_row(f"{res.fraction[i]:g}", str(int(res.num_prompts[i])), str(int(res.num_votes[i])),
                      _fmt(res.tie_rate_top[i]), _fmt(res.tie_rate_random[i]), _fmt(res.reduction[i]),
                      f"[{_fmt(res.lower[i])}, {_fmt(res.upper[i])}]")
    console.print(table)
    written = [p.named for p in (out, plot) if p is not None]
    if written:
        err_console.print(f"wrote {', '.join(written)}", highlight=False)
    return 0


def run_stability(args: argparse.Namespace) -> int:
    import jax

    from jaxrank.evaluation import leaderboard_stability
    from jaxrank.outputs import write_table

    if args.permutations < 2:
        raise CliError(f"--permutations must be >= 2, got {args.permutations}")
    if args.bootstrap < 0 or args.bootstrap == 1:
        raise CliError(f"--bootstrap must be 0 (no interval) or >= 2 rounds, got {args.bootstrap}")
    if not args.l2 >= 0:
        raise CliError(f"--l2 must be >= 0, got {args.l2}")
    scores, votes, out, plot, fractions, votes_path, scores_path = _load(args)
    if args.method == "bt":
        lanes = f"{len(fractions)} x {args.num_random:,} random subsets and {args.bootstrap:,} bootstrap rounds"
    else:
        lanes = f"{args.permutations:,} vote orders and {len(fractions)} x {args.num_random:,} random subsets"
    plan = (f"{args.method} leaderboards of {votes.num_models} models for {lanes} on {votes.num_prompts} prompts "
            f"({votes.num_votes} votes), fitted in compiled chunks of lanes")
    res = _evaluate(
        leaderboard_stability, args, scores_path, votes_path, command="evaluate stability", plan=plan,
        unit="chunks", scores=scores, votes=votes, fractions=fractions,
        method=args.method, ties=args.ties, num_random=args.num_random, num_permutations=args.permutations,
        num_bootstrap=args.bootstrap, confidence=args.ci, l2=args.l2, key=jax.random.key(args.seed),
    )
    frame = res.to_frame()
    if out is not None:
        write_table(frame, out)
    if plot is not None:
        from jaxrank.plots import plot_stability

        plot_stability(res, plot, metric=args.metric,
                       title=f"{votes_path.name}: {args.method}, {votes.num_models} models")

    from rich.table import Table

    if args.method == "bt":
        what = f"{args.bootstrap} bootstrap rounds over prompts" if args.bootstrap else "none (--bootstrap 0)"
    else:
        what = f"{args.permutations} vote orders"
    table = Table(title=f"{votes_path.name}: {votes.num_models} models, {votes.num_prompts} prompts, "
                        f"{votes.num_votes} votes; {args.method}; top-q intervals over {what}, "
                        f"random baseline over {args.num_random} subsets")
    for col in ("q", "prompts", "tau", "tau random", "rho", "pairs agree", "max diff (Elo)", "max diff random"):
        table.add_column(col, justify="right")
    for i in range(len(frame)):
        r = frame.iloc[i]
        table.add_row(
            f"{r['fraction']:g}", str(int(r["num_prompts"])),
            f"{_fmt(r['kendall_tau'])} [{_fmt(r['kendall_tau_lower'])}, {_fmt(r['kendall_tau_upper'])}]",
            f"{_fmt(r['random_kendall_tau'])} [{_fmt(r['random_kendall_tau_lower'])}, {_fmt(r['random_kendall_tau_upper'])}]",
            _fmt(r["spearman"]), _fmt(r["pairs_agree"]), _fmt(r["max_rating_diff"], 1), _fmt(r["random_max_rating_diff"], 1),
        )
    console.print(table)
    written = [p.named for p in (out, plot) if p is not None]
    if written:
        err_console.print(f"wrote {', '.join(written)}", highlight=False)
    return 0


def run_replay(args: argparse.Namespace) -> int:
    import jax

    from jaxrank.evaluation import design_curves, load_scores
    from jaxrank.votes import load_votes

    scores_path = input_path(args.scores, arg="--scores")
    votes_path = input_path(args.votes, arg="--votes")
    judge_path = input_path(args.judge, arg="--judge") if args.judge else None
    for arg, p in (("--scores", scores_path), ("--votes", votes_path), ("--judge", judge_path)):
        if p is not None and p.is_dir():
            raise CliError(f"{arg} {p} is a directory; expected a .csv, .jsonl or .parquet file")
    budgets = _parse_fractions(args.budgets, "--budgets")
    if args.replays < 2:
        raise CliError(f"--replays must be >= 2, got {args.replays}")
    if not 0.0 < args.uniform_mix <= 1.0:
        raise CliError(f"--uniform-mix must lie in (0, 1], got {args.uniform_mix:g}")
    if not 0.0 < args.ci < 1.0:
        raise CliError(f"--ci must lie strictly between 0 and 1, got {args.ci}")
    out, plot = _outputs(args, inputs=[p for p in (scores_path, votes_path, judge_path) if p is not None])
    extra = {"prompt_id": args.prompt_column} if args.prompt_column else None
    read = vote_options(args, columns_extra=extra)
    try:
        scores = load_scores(scores_path)
    except ValueError as err:
        raise CliError(f"--scores {scores_path}: {err}") from None
    loaded = {}
    for arg, path, opts in (("--votes", votes_path, read), ("--judge", judge_path, {"columns": extra})):
        if path is None:
            continue
        try:
            loaded[arg] = load_votes(path, **opts)
        except ValueError as err:
            raise CliError(f"{arg} {path}: {err}") from None
        if loaded[arg].prompt is None:
            raise CliError(f"{arg} {path} has no prompt-id column; name yours with --prompt-column NAME")
    votes, judge = loaded["--votes"], loaded.get("--judge")
    designs = ["uniform", "proportional"] + (["ppi", "ppi-proportional"] if judge is not None else [])
    # One phase per design, one step per budget (each a compiled, vmapped call of R replays).
    job = JobProgress("evaluate replay", [(d, 1.0) for d in designs], items=len(designs) * len(budgets),
                      unit="(design, budget) points")
    plan = (f"{len(designs)} designs x {len(budgets)} budgets x {args.replays} replays = "
             f"{len(designs) * len(budgets) * args.replays:,} weighted fits of {votes.num_models} models on "
             f"{votes.num_prompts} prompts, {votes.num_votes} votes; time: measured after the first point (no cost "
             "model for fits: their iterations depend on the data)")

    def step(done: int, total: int) -> None:
        if done == 0:  # inputs checked (their errors stay one line): the plan, then the work
            job.plan(plan)
            return
        d = min(max(done - 1, 0) // len(budgets), len(designs) - 1)
        job.items_done = done
        job.update(d, done - d * len(budgets), len(budgets))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with resource_flags(num_replays="--replays"):  # the replays' results must fit before any fit
                curves = design_curves(jax.random.key(args.seed), votes, scores, judge=judge, budgets=budgets,
                                       uniform_mix=args.uniform_mix, num_replays=args.replays,
                                       sampling=args.sampling, ties=args.ties, confidence=args.ci, progress=step)
        except ValueError as err:
            text = str(err)
            for prefix, flag in (("scores", f"--scores {scores_path}:"), ("votes", f"--votes {votes_path}:"),
                                 ("judge", f"--judge {judge_path}:")):
                if text.startswith(prefix):
                    raise CliError(f"{flag} {text[len(prefix):].lstrip(': ')}") from None
            raise CliError(text) from None
        finally:
            job.close()
    for note in dict.fromkeys(str(w.message) for w in caught):
        err_console.print(f"jaxrank: warning: {note}", markup=False, highlight=False, soft_wrap=True)
    frame = curves.to_frame()
    if out is not None:
        from jaxrank.outputs import write_table

        write_table(frame, out)
    if plot is not None:
        from jaxrank.plots import plot_design_curves

        plot_design_curves(curves, plot, title=f"{votes_path.name}: {votes.num_prompts} prompts, {votes.num_models} "
                                               f"models; {args.replays} replays, {args.sampling}, tau = {args.uniform_mix:g}")

    from rich.table import Table

    table = Table(title=f"{votes_path.name}: {votes.num_prompts} prompts, {votes.num_models} models, {votes.num_votes} "
                        f"votes; {args.replays} replays per point ({args.sampling}); {args.ci:.0%} design intervals")
    for col in ("design", "budget", "labels", "coverage", "width (Elo)", "tau", "lambda", "uniform equiv."):
        table.add_column(col, justify="right", no_wrap=True)
    for row in frame.itertuples(index=False):
        table.add_row(row.design, f"{row.budget:g}", str(int(row.num_labels)),
                      f"{row.coverage:.3f}±{row.coverage_stderr:.3f}", _fmt(row.width, 1), _fmt(row.kendall_tau),
                      _fmt(row.lam), _fmt(row.equivalent_uniform))
    console.print(table)
    written = [p.named for p in (out, plot) if p is not None]
    if written:
        err_console.print(f"wrote {', '.join(written)}", highlight=False)
    return 0
