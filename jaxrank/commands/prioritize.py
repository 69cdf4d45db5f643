"""`jaxrank prioritize`: rank a pool of prompts by how much two language models disagree on them."""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time
import warnings
from collections.abc import Sequence
from typing import Any

from jaxrank.commands._common import (
    CliError,
    Output,
    console,
    err_console,
    input_path,
    output_path,
    progress,
    resource_flags,
)

#: `--out` formats: JSON Lines (`.jsonl`, `.ndjson`), or a table (`.csv`, `.tsv`, `.parquet`).
OUT_FORMATS = (".jsonl", ".ndjson", ".csv", ".tsv", ".parquet")

HELP = "rank prompts by the disagreement of two language models (KL / cross-entropy), most first"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prioritize",
        help=HELP,
        description=(
            "Rank PROMPTS by how much model A and model B disagree on A's answer, so that raters label "
            "the top first. Output: JSONL sorted by score, one line per prompt with rank (1 = most "
            "disagreement), score, prompt, completion, every metric by name, truncated (and in sequence "
            "mode num_samples, stderr). M is a Hugging Face directory (config.json + *.safetensors), a "
            ".gguf file, or a built-in name (smollm2-135m-instruct, gemma3-270m)."
        ),
    )
    p.add_argument("--model-a", required=True, metavar="M", help="the model that answers (A)")
    p.add_argument("--model-b", required=True, metavar="M", help="the model compared with A (B)")
    p.add_argument("--prompts", required=True, metavar="PROMPTS",
                   help="JSONL/JSON/CSV/TXT file: a 'prompt' or 'turns' field (MT-Bench's question.jsonl works)")
    p.add_argument("--mode", choices=("auto", "token", "sequence"), default="auto",
                   help="token: shared tokenizer, exact per-token KL; sequence: different tokenizers, "
                        "Monte-Carlo KL per byte; auto: token when the vocabularies match (default)")
    p.add_argument("--fraction", type=float, default=None, metavar="F",
                   help="mark the top fraction F (0 < F <= 1) with \"selected\": true; all prompts are kept")
    p.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="completion length (default 32)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="prompts per batch (default 8)")
    p.add_argument("--num-samples", type=int, default=4, metavar="N",
                   help="sequence mode: completions sampled from A per prompt (default 4)")
    p.add_argument("--symmetric", action="store_true", help="sequence mode: also sample from B, average KL(A‖B), KL(B‖A)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="token mode: A's generation temperature (default 0 = greedy)")
    p.add_argument("--max-length", type=int, default=None, metavar="N",
                   help="context limit in tokens (default: the models' own); longer prompts are truncated")
    p.add_argument("--data-parallel", type=int, default=1, metavar="N",
                   help="split each scoring batch over N devices (a 'data' mesh axis; parameters replicated; "
                        "default 1)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N prompts of the file")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed for sampling (default 0)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="write the ranked prompts here: .jsonl (JSON Lines) or a .csv/.tsv/.parquet table "
                        "(default: JSON Lines on stdout)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists (a file only)")
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    if args.fraction is not None and not (0.0 < args.fraction <= 1.0):
        raise CliError(f"--fraction must lie in (0, 1], got {args.fraction}")
    for flag in ("max_new_tokens", "batch_size", "num_samples"):
        if getattr(args, flag) < 1:
            raise CliError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.data_parallel < 1:
        raise CliError(f"--data-parallel must be >= 1, got {args.data_parallel}")
    if args.limit is not None and args.limit < 1:
        raise CliError(f"--limit must be >= 1, got {args.limit}")
    if args.max_length is not None and args.max_length <= args.max_new_tokens:
        raise CliError(f"--max-length ({args.max_length}) must exceed --max-new-tokens ({args.max_new_tokens})")
    if args.temperature < 0:
        raise CliError(f"--temperature must be >= 0, got {args.temperature}")


def _load(path: str, flag: str) -> Any:
    from jaxrank.lm import load_model

    try:
        return load_model(path)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise CliError(f"{flag} {path}: {err}") from None


def jsonl_text(rows: Sequence[dict]) -> str:
    """The ranked rows as JSON Lines (NaN as null)."""
    return "".join(json.dumps(_jsonable(r), ensure_ascii=False) + "\n" for r in rows)


def write_rows(rows: Sequence[dict], out: Output | pathlib.Path | None) -> None:
    """Write the ranked rows: JSON Lines on stdout (`out` None), or atomically to `out` in the format of its
    suffix (`OUT_FORMATS`)."""
    from jaxrank.outputs import write_table, write_text

    if out is None:
        console.file.write(jsonl_text(rows))
        console.file.flush()
    elif pathlib.Path(out).suffix.lower() in (".jsonl", ".ndjson"):
        write_text(out, jsonl_text(rows))
    else:
        import pandas as pd

        write_table(pd.DataFrame([_jsonable(r) for r in rows]), out)


def _jsonable(row: dict) -> dict:
    # JSON has no NaN: missing values (an empty completion, one sample's stderr) become null.
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


class _Progress:
    """Adapts the pipeline's progress callback to a rich bar per stage with tokens/s."""

    def __init__(self, bar):
        self.bar = bar
        self.tasks: dict[str, Any] = {}
        self.start: dict[str, float] = {}
        self.tokens: dict[str, int] = {}

    def __call__(self, stage: str, advance: int, total: int, tokens: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=total, rate="")
            self.start[stage] = time.perf_counter()
            self.tokens[stage] = 0
        self.tokens[stage] += tokens
        elapsed = max(time.perf_counter() - self.start[stage], 1e-9)
        self.bar.update(self.tasks[stage], advance=advance, rate=f"{self.tokens[stage] / elapsed:,.0f} tok/s")


def rank_prompts(args: argparse.Namespace, prompts: list) -> list[dict]:
    """Load both models, run the pipeline with a progress bar, print warnings as one line each; the ranked
    rows (the caller writes them)."""
    import jax

    from jaxrank.lm.pipeline import TruncationWarning, prioritize_prompts

    mesh = None
    data_parallel = getattr(args, "data_parallel", 1)  # `jaxrank demo` has no such flag
    if data_parallel > 1:
        from jaxrank.sharding import make_mesh

        try:
            mesh = make_mesh(data=data_parallel)
        except ValueError as err:
            raise CliError(f"--data-parallel {data_parallel}: {err}") from None
    with err_console.status(f"loading {args.model_a} and {args.model_b}"):
        model_a = _load(args.model_a, "--model-a")
        model_b = _load(args.model_b, "--model-b")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with progress("prioritize", None) as bar:
            rows = prioritize_prompts(
                model_a,
                model_b,
                prompts,
                mode=args.mode,
                max_new_tokens=args.max_new_tokens,
                batch_size=args.batch_size,
                num_samples=args.num_samples,
                symmetric=args.symmetric,
                temperature=args.temperature,
                key=jax.random.key(args.seed),
                max_length=args.max_length,
                progress=_Progress(bar),
                mesh=mesh,
            )
    for w in caught:
        if issubclass(w.category, TruncationWarning):
            err_console.print(f"jaxrank: warning: {w.message}", markup=False, highlight=False, soft_wrap=True)
    if args.fraction is not None:
        from jaxrank.scoring import prioritize

        # Rows are already sorted by score; prioritize picks ceil(F · n) of the non-NaN scores.
        chosen = set(prioritize([r["score"] for r in rows], fraction=args.fraction, drop_nan=True).tolist())
        for i, row in enumerate(rows):
            row["selected"] = i in chosen
    return rows


def print_table(rows: Sequence[dict], *, limit: int = 30, title: str = "prompts ranked by disagreement") -> None:
    from rich.table import Table

    seq = rows and rows[0].get("mode") == "sequence"
    table = Table(title=title, title_justify="left")
    table.add_column("rank", justify="right")
    table.add_column("score", justify="right")
    if seq:
        table.add_column("± stderr", justify="right")
    table.add_column("id")
    table.add_column("prompt", overflow="fold", max_width=48)
    table.add_column("A's completion", overflow="fold", max_width=48)
    for r in rows[:limit]:
        cells = [str(r["rank"]), f"{r['score']:.4f}"]
        if seq:
            cells.append("" if math.isnan(r["stderr"]) else f"{r['stderr']:.4f}")
        short = lambda s: (s[:90] + "…") if len(s) > 90 else s  # noqa: E731
        cells += [str(r["id"]), short(r["prompt"].replace("\n", " ")), short(r["completion"].replace("\n", " "))]
        table.add_row(*cells)
    err_console.print(table)


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    prompts_file = input_path(args.prompts, arg="--prompts")
    # Before the models load: the target, and the input it must not be.
    inputs = [prompts_file] + [m for m in (args.model_a, args.model_b) if pathlib.Path(m).exists()]
    out = output_path(args.out, force=args.force, inputs=inputs, suffixes=OUT_FORMATS)
    from jaxrank.lm.prompts import read_prompts

    try:
        prompts = read_prompts(prompts_file)
    except ValueError as err:
        raise CliError(str(err)) from None
    if args.limit is not None:
        prompts = prompts[: args.limit]
    with resource_flags(batch_size="--batch-size", max_length="--max-length"):
        rows = rank_prompts(args, prompts)
    write_rows(rows, out)
    if out is not None:
        print_table(rows)
        err_console.print(f"wrote {len(rows)} ranked prompts to {out.named}")
    return 0
