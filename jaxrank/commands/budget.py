"""`jaxrank budget simulate`: Monte-Carlo judge-budget simulation on observed repeated judge scores.

Each item's observed scores form an empirical pool; a simulated query draws from the pool with replacement, and
errors are measured against the pool mean. ``robin`` (known variances) is given each pool's variance.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
from typing import Any

from jaxrank.commands._common import (
    FIGURE_FORMATS,
    TABLE_FORMATS,
    ChunkProgress,
    CliError,
    check_distinct,
    console,
    err_console,
    input_path,
    output_path,
    resource_flags,
)

FORMATS = ("auto", "jsonl", "prometheus")
CSV_COLUMNS = ("allocator", "budget", "wce_mean", "wce_lower", "wce_upper", "mae_mean", "rmse_mean")


def read_scores(
    path: str | pathlib.Path, *, format: str = "auto", score_field: str | None = None
) -> tuple[list[str], list[list[float]]]:
    """Read repeated judge scores per item.

    Formats:
      - ``jsonl``: one item a line, ``{"id": ..., "scores": [...]}`` (`score_field` renames ``scores``).
      - ``prometheus``: a JSON array of records as in prometheus-eval's ``mt_bench_eval.json``: scores in
        ``gpt4_score`` (or `score_field`), id ``"{idx}:{response_source}"`` (or ``id`` when present).
      - ``auto``: ``prometheus`` when the file starts with ``[``, else ``jsonl``.

    Returns:
      (ids, scores): item ids and each item's list of scores.

    Raises:
      ValueError: empty file, unparsable line, missing field, non-numeric / NaN scores, an item without scores,
        duplicate ids.
    """
    p = pathlib.Path(path)
    if format not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}; got {format!r}")
    text = p.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"SCORES file {p} is empty")
    if format == "auto":
        format = "prometheus" if text.lstrip().startswith("[") else "jsonl"
    records: list[tuple[str, dict[str, Any]]] = []
    if format == "jsonl":
        field = score_field or "scores"
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{p}:{lineno}: not a JSON object ({err.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{p}:{lineno}: expected a JSON object with \"id\" and \"{field}\"")
            records.append((f"{p}:{lineno}", rec))
    else:
        field = score_field or "gpt4_score"
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{p}: not valid JSON ({err.msg} at line {err.lineno})") from None
        if not isinstance(data, list):
            raise ValueError(f"{p}: --format prometheus expects a JSON array of records")
        records = [(f"{p} record {i}", rec) for i, rec in enumerate(data)]
        for where, rec in records:
            if not isinstance(rec, dict):
                raise ValueError(f"{where}: expected a JSON object")
    if not records:
        raise ValueError(f"SCORES file {p} has no items")
    ids: list[str] = []
    scores: list[list[float]] = []
    for where, rec in records:
        if "id" in rec:
            item_id = str(rec["id"])
        elif format == "prometheus" and "idx" in rec:
            item_id = f"{rec['idx']}:{rec.get('response_source', '')}"
        else:
            raise ValueError(f"{where}: missing \"id\"")
        if field not in rec:
            raise ValueError(f"{where} (id {item_id}): missing score field \"{field}\" (use --score-field)")
        vals = rec[field]
        if not isinstance(vals, list):
            raise ValueError(f"{where} (id {item_id}): \"{field}\" must be a list of numbers, got {vals!r}")
        row = []
        for v in vals:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"item {item_id}: score {v!r} is not a number")
            if not math.isfinite(v):
                raise ValueError(f"item {item_id}: score {v!r} is NaN or infinite")
            row.append(float(v))
        if not row:
            raise ValueError(f"item {item_id}: has no scores")
        ids.append(item_id)
        scores.append(row)
    seen: set[str] = set()
    for item_id in ids:
        if item_id in seen:
            raise ValueError(f"duplicate item id {item_id!r} in {p}")
        seen.add(item_id)
    return ids, scores


def _int_list(text: str, arg: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CliError(f"{arg} must be a comma-separated list of integers, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "budget",
        help="judge-budget allocation: simulate uniform / ROBIN / ROBIN-HOOD on repeated judge scores",
        description="Judge-budget allocation (Saha, Wagde & Kveton 2026).",
    )
    sub = parser.add_subparsers(dest="budget_command", metavar="SUBCOMMAND")
    sub.required = True
    sim = sub.add_parser(
        "simulate",
        help="Monte-Carlo error curves of allocators drawing from each item's observed scores",
        description=(
            "Simulate spending BUDGET judge queries on the items of SCORES. Each item's observed scores are an "
            "empirical pool drawn from with replacement; errors are against the pool means. 'robin' is given "
            "the pool variances (known variances); 'robin-hood' estimates them."
        ),
    )
    sim.add_argument("scores", metavar="SCORES", help='JSONL {"id": ..., "scores": [...]} or mt_bench_eval.json')
    sim.add_argument("--budget", type=int, required=True, help="total judge queries B")
    sim.add_argument("--runs", type=int, default=50, help="Monte-Carlo runs (default 50)")
    sim.add_argument(
        "--allocator", default="uniform,robin,robin-hood", help="comma-separated: uniform, robin, robin-hood"
    )
    sim.add_argument("--delta", type=float, default=0.007, help="ROBIN-HOOD's δ in (0, 1) (default 0.007)")
    sim.add_argument("--batch", type=int, default=1, help="items queried per step (default 1)")
    sim.add_argument("--checkpoints", help="comma-separated budgets to report (default: 10 evenly spaced)")
    sim.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sim.add_argument("--format", choices=FORMATS, default="auto", help="SCORES format (default auto)")
    sim.add_argument("--score-field", help="field holding the score list (default scores / gpt4_score)")
    sim.add_argument("--level", type=float, default=0.95, help="interval level over runs (default 0.95)")
    sim.add_argument("--out", help="table (.csv, .tsv, .jsonl or .parquet): " + ", ".join(CSV_COLUMNS))
    sim.add_argument("--plot", help="figure of worst-case error vs budget (e.g. budget.png)")
    sim.add_argument("--force", action="store_true", help="replace --out / --plot if they exist (files only)")
    sim.set_defaults(func=run_simulate)


def run_simulate(args: argparse.Namespace) -> int:
    path = input_path(args.scores, arg="SCORES")
    out = output_path(args.out, force=args.force, arg="--out", inputs=[path], suffixes=TABLE_FORMATS)
    plot = output_path(args.plot, force=args.force, arg="--plot", inputs=[path], suffixes=FIGURE_FORMATS)
    check_distinct(out, plot)
    allocators = [a.strip() for a in args.allocator.split(",") if a.strip()]
    from jaxrank import allocation

    for a in allocators:
        if a not in allocation.ALLOCATORS:
            raise CliError(f"--allocator {a!r} is unknown; choose from {', '.join(allocation.ALLOCATORS)}")
    if not allocators:
        raise CliError("--allocator is empty")
    if not (0.0 < args.delta < 1.0):
        raise CliError(f"--delta must lie strictly between 0 and 1, got {args.delta}")
    if args.runs < 1:
        raise CliError(f"--runs must be >= 1, got {args.runs}")
    if args.batch < 1:
        raise CliError(f"--batch must be >= 1, got {args.batch}")
    if not (0.0 < args.level < 1.0):
        raise CliError(f"--level must lie strictly between 0 and 1, got {args.level}")

    ids, scores = read_scores(path, format=args.format, score_field=args.score_field)
    K = len(ids)
    if "robin" in allocators:
        short = [(i, len(s)) for i, s in zip(ids, scores) if len(s) < 2]
        if short:
            item_id, n = short[0]
            raise CliError(
                f"item {item_id!r} has {n} score(s) ({len(short)} item(s) with < 2); 'robin' needs each item's "
                "empirical variance (>= 2 scores) — drop those items or leave robin out of --allocator"
            )
    if args.budget < K:
        raise CliError(f"--budget {args.budget} is smaller than the number of items {K}")
    if "robin-hood" in allocators:
        need = allocation.warmup_queries(K, delta=args.delta, batch_size=args.batch)
        if args.budget < need:
            raise CliError(
                f"--budget {args.budget} is smaller than robin-hood's warm-up of {need} queries "
                f"(⌈4 ln(1/δ)⌉ = {allocation.warmup_rounds(args.delta)} rounds × {K} items "
                f"at δ = {args.delta:g})"
            )
    if args.budget % args.batch:
        raise CliError(f"--budget {args.budget} is not a multiple of --batch {args.batch}")
    checkpoints = _int_list(args.checkpoints, "--checkpoints") if args.checkpoints else None
    if checkpoints is not None:
        too_big = [c for c in checkpoints if c > args.budget]
        if too_big:
            raise CliError(f"--checkpoints {too_big} exceed --budget {args.budget}")
        budgets = sorted(set(checkpoints) | {args.budget})
    else:
        budgets = allocation._default_checkpoints(args.budget, K, args.batch)

    import jax

    with resource_flags(num_runs="--runs"):  # before the work: the results of --runs runs must fit
        allocation.simulation_plan(K, args.budget, num_runs=args.runs, allocators=allocators, batch_size=args.batch,
                                   num_checkpoints=len(budgets))
    sampler = allocation.EmpiricalSampler.from_lists(scores)
    lengths = [len(s) for s in scores]
    err_console.print(
        f"[dim]{K} items, {min(lengths)}–{max(lengths)} scores each; {args.runs} runs × budget {args.budget}"
        f" (batch {args.batch}); empirical pools drawn with replacement, errors against pool means"
        + ("; robin uses the pool variances" if "robin" in allocators else "")
        + "[/dim]"
    )
    bar = ChunkProgress("simulate", "runs")
    try:
        with resource_flags(num_runs="--runs"):
            results = allocation.simulate_sweep(
                jax.random.key(args.seed),
                sampler,
                budgets,
                allocators=allocators,
                num_runs=args.runs,
                batch_size=args.batch,
                delta=args.delta,
                progress=bar,
            )
    finally:
        bar.close()
    summaries = {a: allocation.error_summary(results[a], level=args.level) for a in allocators}
    _print_table(summaries, level=args.level, runs=args.runs)
    if out is not None:
        import pandas as pd

        from jaxrank.outputs import write_table

        rows = [[a, int(s["budget"][j])] + [float(f"{float(s[c][j]):.6g}") for c in CSV_COLUMNS[2:]]
                for a, s in summaries.items() for j in range(len(s["budget"]))]
        write_table(pd.DataFrame(rows, columns=list(CSV_COLUMNS)), out)
        err_console.print(f"[dim]wrote {out.named}[/dim]")
    if plot is not None:
        from jaxrank.plots import plot_budget_curves

        plot_budget_curves(
            summaries,
            path=plot,
            title=f"{path.name}: {K} items, {args.runs} runs ({int(args.level * 100)}% of runs shaded)",
        )
        err_console.print(f"[dim]wrote {plot.named}[/dim]")
    return 0


def _print_table(summaries: dict[str, dict[str, Any]], *, level: float, runs: int) -> None:
    from rich.table import Table

    table = Table(
        title=f"Worst-case error max_i |s_i − ŝ_i| (mean over {runs} runs, {int(level * 100)}% of runs in [ ])"
    )
    table.add_column("budget", justify="right")
    for a in summaries:
        table.add_column(a, justify="right")
    first = next(iter(summaries.values()))
    for j, b in enumerate(first["budget"]):
        cells = [str(int(b))]
        for s in summaries.values():
            cells.append(f"{s['wce_mean'][j]:.3f} [{s['wce_lower'][j]:.3f}–{s['wce_upper'][j]:.3f}]")
        table.add_row(*cells)
    console.print(table)
    final = {a: (s["mae_mean"][-1], s["rmse_mean"][-1]) for a, s in summaries.items()}
    console.print(
        "at the full budget: "
        + "; ".join(f"{a} MAE {mae:.4f}, RMSE {rmse:.4f}" for a, (mae, rmse) in final.items())
    )
