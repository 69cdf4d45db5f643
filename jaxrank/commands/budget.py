"""`jaxrank budget simulate`: Monte-Carlo judge-budget simulation on observed repeated judge scores;
`jaxrank budget next` / `jaxrank budget update`: online allocation for a real judge, from the shell.

Each item's observed scores form an empirical pool; a simulated query draws from the pool with replacement, and
errors are measured against the pool mean. ``robin`` (known variances) is given each pool's variance.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import pathlib
from typing import Any

import numpy as np

from jaxrank.commands._common import (
    FIGURE_FORMATS,
    TABLE_FORMATS,
    CliError,
    JobProgress,
    check_distinct,
    console,
    err_console,
    input_path,
    output_path,
    resource_flags,
)
from jaxrank.outputs import Output, append_jsonl, write_rows, write_state, write_text

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
    sim.add_argument("--summary", metavar="FILE.json",
                     help="write the headline (the share of the budget robin-hood needs to reach uniform's final "
                          "worst-case error), the final errors and the thin-pool count as JSON")
    sim.add_argument("--force", action="store_true", help="replace --out / --plot / --summary if they exist (files only)")
    sim.set_defaults(func=run_simulate)

    nxt = sub.add_parser(
        "next",
        help="print the next item(s) to send to the judge (online allocation; state kept in --state DIR)",
        description=(
            "Online judge-budget allocation from the shell: `next` prints the id(s) of the next item(s) to score, "
            "one a line; `update --state DIR SCORES` records the judge's answers. The first `next` starts DIR "
            "(--items, --budget); calling `next` again before `update` prints the same items. When the budget is "
            "spent, `next` prints the final report (queries, mean, std per item). The allocator state is an orbax "
            "checkpoint: a next/update loop makes exactly the choices of jaxrank.allocation.select/update in memory."
        ),
    )
    nxt.add_argument("--state", required=True, metavar="DIR", help="state directory (created by the first call)")
    nxt.add_argument("--items", metavar="ITEMS",
                     help="first call: the items (.txt one id a line; .csv column id; .jsonl/.json field id, "
                          "question_id or uid; or a budget-simulate SCORES file)")
    nxt.add_argument("--budget", type=int, help="first call: total judge queries B")
    nxt.add_argument("--allocator", default="robin-hood", choices=("uniform", "robin-hood"),
                     help="first call: the allocator (default robin-hood)")
    nxt.add_argument("--delta", type=float, default=0.007, help="first call: ROBIN-HOOD's δ (default 0.007)")
    nxt.add_argument("--batch", type=int, default=1, help="first call: items per `next` (default 1)")
    nxt.add_argument("--report", metavar="FILE.csv", help="when the budget is spent: write the final report")
    nxt.add_argument("--force", action="store_true", help="overwrite --report")
    nxt.set_defaults(func=run_next)

    upd = sub.add_parser(
        "update",
        help="record the judge's scores for the items `budget next` printed",
        description="Record one score for each item the last `jaxrank budget next` printed. SCORES: JSONL "
                    '{"id": ..., "score": ...}, CSV/TSV with columns id, score, or lines `ID SCORE` (.txt, or - '
                    "for standard input).",
    )
    upd.add_argument("scores", metavar="SCORES", help="the answers (see above)")
    upd.add_argument("--state", required=True, metavar="DIR", help="the state directory of `budget next`")
    upd.add_argument("--report", metavar="FILE.csv", help="when the budget is spent: write the final report")
    upd.add_argument("--force", action="store_true", help="overwrite --report")
    upd.set_defaults(func=run_update)


def run_simulate(args: argparse.Namespace) -> int:
    path = input_path(args.scores, arg="SCORES")
    out = output_path(args.out, force=args.force, arg="--out", inputs=[path], suffixes=TABLE_FORMATS)
    plot = output_path(args.plot, force=args.force, arg="--plot", inputs=[path], suffixes=FIGURE_FORMATS)
    summary = output_path(args.summary, force=args.force, arg="--summary", inputs=[path], suffixes=(".json",))
    check_distinct(out, plot, summary)
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
        budgets = allocation.default_checkpoints(args.budget, K, args.batch)

    import jax

    with resource_flags(num_runs="--runs"):  # before the work: the results of --runs runs must fit
        allocation.simulation_plan(K, args.budget, num_runs=args.runs, allocators=allocators, batch_size=args.batch,
                                   num_checkpoints=len(budgets))
    sampler = allocation.EmpiricalSampler.from_lists(scores)
    lengths = [len(s) for s in scores]
    span = f"{min(lengths)}" if min(lengths) == max(lengths) else f"{min(lengths)}–{max(lengths)}"
    thin = sum(1 for s in scores if len(set(float(x) for x in s)) == 1)
    if thin:
        err_console.print(
            f"[dim]{thin} of {K} items have identical scores (a thin pool: no variance to learn, one query "
            "gives the pool mean exactly); the allocators differ on the other "
            f"{K - thin}[/dim]", highlight=False)
    bar = JobProgress("budget simulate", [("simulate", 1.0)], items=args.runs, unit="runs")
    bar.plan(
        f"{K} items, {span} score{'s' if max(lengths) > 1 else ''} each; {args.runs} runs × budget {args.budget}"
        f" (batch {args.batch}) × {len(allocators)} allocator(s); empirical pools drawn with replacement, errors "
        "against pool means" + ("; robin uses the pool variances" if "robin" in allocators else "")
        + "; time measured after the first chunk of runs (it compiles)"
    )
    step = bar.sequential()
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
                progress=step,
            )
    finally:
        bar.close()
    summaries = {a: allocation.error_summary(results[a], level=args.level) for a in allocators}
    _print_table(summaries, level=args.level, runs=args.runs)
    head = headline(summaries)
    if head is not None:
        console.print(head["text"], highlight=False, soft_wrap=True)
    if summary is not None:
        import json

        doc = {"scores": str(path), "items": K, "thin_items": thin, "runs": args.runs, "budget": args.budget,
               "delta": args.delta, "batch": args.batch, "seed": args.seed,
               "final_wce_mean": {a: float(s["wce_mean"][-1]) for a, s in summaries.items()}}
        if head is not None:
            doc.update({k: v for k, v in head.items()})
        write_text(summary, json.dumps(doc, indent=2) + "\n")  # checked before the work (`output_path`)
        err_console.print(f"[dim]wrote {summary.named}[/dim]", highlight=False)
    if out is not None:
        rows = [[a, int(s["budget"][j])] + [float(f"{float(s[c][j]):.6g}") for c in CSV_COLUMNS[2:]]
                for a, s in summaries.items() for j in range(len(s["budget"]))]
        write_rows(CSV_COLUMNS, rows, out)
        err_console.print(f"[dim]wrote {out.named}[/dim]")
    if plot is not None:
        from jaxrank.plots import plot_budget_curves

        warm = allocation.warmup_queries(K, delta=args.delta, batch_size=args.batch) if "robin-hood" in allocators else 0
        plot_budget_curves(
            summaries,
            path=plot,
            title=f"{path.name}: {K} items, {args.runs} runs ({int(args.level * 100)}% of runs shaded)",
            warmup=warm,
        )
        err_console.print(f"[dim]wrote {plot.named}[/dim]")
    return 0


def headline(summaries: dict[str, dict[str, Any]], *, fast: str = "robin-hood", slow: str = "uniform") -> dict | None:
    """The share of the budget `fast` needs to reach `slow`'s final mean worst-case error, or None when either
    allocator is absent. Between checkpoints the budget is interpolated linearly in log(error)."""
    if fast not in summaries or slow not in summaries:
        return None
    budget = np.asarray(summaries[fast]["budget"], np.float64)
    err = np.asarray(summaries[fast]["wce_mean"], np.float64)
    target = float(summaries[slow]["wce_mean"][-1])
    full = float(summaries[slow]["budget"][-1])
    hit = np.flatnonzero(err <= target)
    if hit.size == 0:
        text = (f"headline: {fast} does not reach {slow}'s final worst-case error {target:.4f} within the budget "
                f"{full:,.0f} (its own final error: {err[-1]:.4f})")
        return {"text": text, "target_wce": target, "needed_budget": None, "share": None}
    j = int(hit[0])
    if j == 0:
        need = budget[0]
    else:
        lo, hi = np.log(err[j - 1]), np.log(err[j])
        t = 0.0 if hi == lo else (lo - np.log(target)) / (lo - hi)
        need = budget[j - 1] + t * (budget[j] - budget[j - 1])
    share = need / full
    text = (f"headline: {fast} reaches {slow}'s final worst-case error ({target:.4f} at {full:,.0f} queries) with "
            f"{need:,.0f} queries, {share:.0%} of the budget (interpolated between the checkpoints"
            f"{'' if j else '; already at the first checkpoint, add smaller --checkpoints to resolve it'})")
    return {"text": text, "target_wce": target, "needed_budget": float(need), "share": float(share)}


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


# ----------------------------------------------------------------------------------------------------------------
# Online: `budget next` / `budget update` drive a real judge from the shell, one state directory between calls.

SESSION = "session.json"
STATE = "allocator"
ANSWERS = "answers.jsonl"


def read_items(path: pathlib.Path) -> list[str]:
    """Item ids from a .txt (one a line), .csv/.tsv (column `id`), .jsonl/.json (field `id`, or `question_id` /
    `uid`) or the `budget simulate` SCORES formats; ids must be distinct."""
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if suffix == ".txt":
        ids = [line.strip() for line in text.splitlines() if line.strip()]
    elif suffix in (".csv", ".tsv"):
        rows = list(csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ","))
        if not rows or "id" not in rows[0]:
            raise CliError(f"--items {path}: expected a column 'id' (columns: {', '.join(rows[0]) if rows else 'none'})")
        ids = [r["id"].strip() for r in rows]
    else:
        recs = json.loads(text) if text.lstrip().startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()]
        ids = []
        for i, rec in enumerate(recs):
            key = next((k for k in ("id", "question_id", "uid") if isinstance(rec, dict) and k in rec), None)
            if key is None and isinstance(rec, dict) and "idx" in rec:
                ids.append(f"{rec['idx']}:{rec.get('response_source', '')}")
                continue
            if key is None:
                raise CliError(f"--items {path}: record {i} has no 'id' (or question_id / uid) field")
            ids.append(str(rec[key]))
    if not ids:
        raise CliError(f"--items {path} lists no items")
    dup = [i for i in set(ids) if ids.count(i) > 1] if len(set(ids)) != len(ids) else []
    if dup:
        raise CliError(f"--items {path}: duplicate item id {dup[0]!r}")
    return ids


def _load_session(state_dir: pathlib.Path):
    from jaxrank import allocation

    meta_path = state_dir / SESSION
    if not meta_path.is_file():
        raise CliError(f"--state {state_dir} is not a budget state directory (no {SESSION}); start one with "
                       "`jaxrank budget next --state DIR --items ITEMS --budget B`")
    session = json.loads(meta_path.read_text())
    state = allocation.restore_allocator_state(state_dir / STATE)
    if int(state.step) != int(session["step"]):
        raise CliError(f"--state {state_dir}: the allocator checkpoint (step {int(state.step)}) and {SESSION} "
                       f"(step {session['step']}) disagree; the last update was interrupted")
    return session, state


def _save_session(state_dir: pathlib.Path, session: dict, state=None) -> None:
    import shutil

    from jaxrank import allocation

    if state is not None:
        # New checkpoint beside the old one, then swapped in: an interruption leaves one complete checkpoint.
        new, old = state_dir / f".{STATE}.new", state_dir / f".{STATE}.old"
        for p in (new, old):
            if p.exists():
                shutil.rmtree(p)
        allocation.save_allocator_state(new, state)
        if (state_dir / STATE).exists():
            (state_dir / STATE).rename(old)
        new.rename(state_dir / STATE)
        if old.exists():
            shutil.rmtree(old)
        session["step"] = int(state.step)
    write_state(state_dir / SESSION, json.dumps(session, indent=1) + "\n")


def _report(session: dict, state, out: Output | None, *, to=None) -> None:
    import pandas as pd
    from rich.table import Table

    from jaxrank import allocation

    counts = np.asarray(state.counts, np.int64)
    means = np.asarray(allocation.estimates(state), np.float64)
    n = np.maximum(counts - 1, 1)
    sd = np.sqrt(np.maximum(np.asarray(state.m2, np.float64), 0.0) / n)
    frame = pd.DataFrame({"id": session["items"], "queries": counts, "mean": means,
                          "std": np.where(counts >= 2, sd, np.nan)})
    frame["std_error"] = frame["std"] / np.sqrt(np.maximum(frame["queries"], 1))
    spent = int(counts.sum())
    table = Table(title=f"{session['allocator']}: {spent} of {session['budget']} queries on {len(counts)} items")
    for col in ("id", "queries", "mean", "std", "std. error"):
        table.add_column(col, justify="left" if col == "id" else "right")
    for row in frame.itertuples(index=False):
        table.add_row(str(row.id), str(row.queries), f"{row.mean:.4f}", f"{row.std:.4f}", f"{row.std_error:.4f}")
    (to or console).print(table)
    if out is not None:
        write_text(out, frame.to_csv(index=False))  # CSV, checked before the work (`output_path`)
        err_console.print(f"[dim]wrote {out.named}[/dim]", highlight=False)


def run_next(args: argparse.Namespace) -> int:
    from jaxrank import allocation

    state_dir = pathlib.Path(args.state)
    report = output_path(args.report, force=args.force, arg="--report")
    new = not (state_dir / SESSION).exists()
    if new:
        if args.items is None or args.budget is None:
            raise CliError(f"--state {state_dir} does not exist yet: pass --items ITEMS and --budget B to start it")
        if state_dir.exists() and any(state_dir.iterdir()):
            raise CliError(f"--state {state_dir} exists and is not a budget state directory; name a new directory")
        if not state_dir.absolute().parent.exists():
            raise CliError(f"--state {state_dir}: folder {state_dir.absolute().parent} does not exist")
        if args.allocator not in ("uniform", "robin-hood"):
            raise CliError(f"--allocator {args.allocator!r}: online allocation supports uniform and robin-hood "
                           "(robin needs the true variances)")
        if not (0.0 < args.delta < 1.0):
            raise CliError(f"--delta must lie strictly between 0 and 1, got {args.delta}")
        ids = read_items(input_path(args.items, arg="--items"))
        if args.budget < len(ids):
            raise CliError(f"--budget {args.budget} is smaller than the number of items {len(ids)}")
        if args.batch < 1 or args.batch > len(ids):
            raise CliError(f"--batch must lie in [1, {len(ids)}] (the number of items), got {args.batch}")
        state_dir.mkdir(exist_ok=True)
        state = allocation.init(len(ids), allocator=args.allocator, delta=args.delta)
        session = {"items": ids, "budget": int(args.budget), "batch": int(args.batch), "allocator": args.allocator,
                   "delta": float(args.delta), "pending": [], "step": 0}
        _save_session(state_dir, session, state)
        warm = allocation.warmup_queries(len(ids), delta=args.delta, batch_size=args.batch) \
            if args.allocator == "robin-hood" else 0
        err_console.print(f"[dim]started {state_dir}: {len(ids)} items, budget {args.budget}, {args.allocator}"
                          + (f" (warm-up {warm} queries)" if warm else "") + "[/dim]", highlight=False)
    else:
        for opt, value in (("--items", args.items), ("--budget", args.budget)):
            if value is not None:
                raise CliError(f"{opt}: --state {state_dir} is already started (its options are fixed)")
        session, state = _load_session(state_dir)
    spent = int(np.asarray(state.counts).sum())
    if not session["pending"]:
        left = session["budget"] - spent
        if left <= 0:
            # On stderr: stdout stays empty, which ends a `while [ -s batch.txt ]` shell loop.
            err_console.print(f"budget spent: {spent} of {session['budget']} queries; final report:", highlight=False)
            _report(session, state, report, to=err_console)
            return 0
        take = min(session["batch"], left)
        items = np.asarray(allocation.select(state, batch_size=take)).tolist()
        session["pending"] = [int(i) for i in items]
        _save_session(state_dir, session)
    # The same pending items until they are answered: calling `next` twice asks for nothing new.
    for i in session["pending"]:
        console.print(session["items"][i], highlight=False, markup=False)
    err_console.print(f"[dim]{len(session['pending'])} item(s) to score; {spent} of {session['budget']} queries "
                      "answered so far[/dim]", highlight=False)
    return 0


def read_answers(path: str) -> list[tuple[str, float]]:
    """Answers as (item id, score): JSONL `{"id": ..., "score": ...}`, CSV/TSV `id,score`, or `ID SCORE` lines
    (a .txt file, or `-` for standard input)."""
    import sys

    text = sys.stdin.read() if path == "-" else input_path(path, arg="SCORES").read_text(encoding="utf-8")
    suffix = "" if path == "-" else pathlib.Path(path).suffix.lower()
    out = []
    if suffix in (".jsonl", ".json", ".ndjson"):
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                rec = json.loads(line)
                if not isinstance(rec, dict) or "id" not in rec or "score" not in rec:
                    raise CliError(f"SCORES {path}:{lineno}: expected {{\"id\": ..., \"score\": ...}}")
                out.append((str(rec["id"]), rec["score"]))
    elif suffix in (".csv", ".tsv"):
        rows = list(csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ","))
        if not rows or not {"id", "score"} <= set(rows[0]):
            raise CliError(f"SCORES {path}: expected columns id, score")
        out = [(r["id"].strip(), r["score"]) for r in rows]
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                parts = line.rsplit(None, 1)
                if len(parts) != 2:
                    raise CliError(f"SCORES {path}:{lineno}: expected 'ID SCORE', got {line.strip()!r}")
                out.append((parts[0].strip(), parts[1]))
    answers = []
    for item, score in out:
        try:
            value = float(score)
        except (TypeError, ValueError):
            raise CliError(f"SCORES {path}: score {score!r} of item {item!r} is not a number") from None
        if not math.isfinite(value):
            raise CliError(f"SCORES {path}: score of item {item!r} is NaN or infinite")
        answers.append((item, value))
    if not answers:
        raise CliError(f"SCORES {path} has no answers")
    return answers


def run_update(args: argparse.Namespace) -> int:
    from jaxrank import allocation

    state_dir = pathlib.Path(args.state)
    report = output_path(args.report, force=args.force, arg="--report")
    session, state = _load_session(state_dir)
    pending = session["pending"]
    if not pending:
        raise CliError(f"--state {state_dir} has no items waiting for scores; run `jaxrank budget next --state "
                       f"{state_dir}` first")
    answers = read_answers(args.scores)
    index = {item: i for i, item in enumerate(session["items"])}
    got: dict[int, float] = {}
    for item, value in answers:
        if item not in index:
            raise CliError(f"SCORES: {item!r} is not an item of {state_dir}")
        if index[item] not in pending:
            asked = ", ".join(session["items"][i] for i in pending)
            raise CliError(f"SCORES: {item!r} was not asked for; the items waiting are: {asked}")
        if index[item] in got:
            raise CliError(f"SCORES: item {item!r} answered twice")
        got[index[item]] = value
    missing = [session["items"][i] for i in pending if i not in got]
    if missing:
        raise CliError(f"SCORES: no score for {', '.join(missing)} (every item `next` printed needs one)")
    import jax.numpy as jnp

    state = allocation.update(state, jnp.asarray(pending, jnp.int32), jnp.asarray([got[i] for i in pending], jnp.float32))
    session["pending"] = []
    append_jsonl(state_dir / ANSWERS, [{"step": int(state.step), "id": session["items"][i], "score": got[i]}
                                       for i in pending])
    _save_session(state_dir, session, state)
    spent = int(np.asarray(state.counts).sum())
    err_console.print(f"recorded {len(pending)} score(s): {spent} of {session['budget']} queries answered",
                      highlight=False)
    if spent >= session["budget"]:
        err_console.print("budget spent; final report:", highlight=False)
        _report(session, state, report)
    return 0
