"""`jaxrank prioritize`: rank a pool of prompts by how much two language models disagree on them."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import warnings
from collections.abc import Sequence
from typing import Any

from jaxrank.commands._common import (
    CliError,
    JobProgress,
    clock,
    Output,
    console,
    err_console,
    input_path,
    output_path,
    resource_flags,
)

#: `--out` formats: JSON Lines (`.jsonl`, `.ndjson`), or a table (`.csv`, `.tsv`, `.parquet`).
OUT_FORMATS = (".jsonl", ".ndjson", ".csv", ".tsv", ".parquet")

#: `--dtype`: the models' compute and storage dtype (scores are float32 either way).
DTYPES = ("float32", "bfloat16")

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
            ".gguf file, or a built-in name (smollm2-135m-instruct, gemma3-270m). Without models, "
            "--logprobs-a/--logprobs-b rank prompts from two serving engines' per-token logprobs "
            "(vLLM, SGLang, OpenAI-compatible; output kl, kl_lower, kl_upper, cross_entropy, ...)."
        ),
    )
    p.add_argument("--model-a", default=None, metavar="M", help="the model that answers (A)")
    p.add_argument("--model-b", default=None, metavar="M", help="the model compared with A (B)")
    p.add_argument("--prompts", default=None, metavar="PROMPTS",
                   help="JSONL/JSON/CSV/TXT file: a 'prompt' or 'turns' field (MT-Bench's question.jsonl works)")
    p.add_argument("--logprobs-a", default=None, metavar="A.jsonl",
                   help="instead of models: model A's logprobs from a serving engine, one JSON record per prompt "
                        "with an 'id' (OpenAI chat/completions, vLLM prompt_logprobs, SGLang meta_info)")
    p.add_argument("--logprobs-b", default=None, metavar="B.jsonl",
                   help="model B's teacher-forced logprobs of the same continuations, matched by 'id'")
    p.add_argument("--logprob-floor", type=float, default=0.0, metavar="EPS",
                   help="with --logprobs-*: assume every probability is >= EPS for the upper bounds (default 0: "
                        "an upper bound is infinite where A lists a token B does not)")
    p.add_argument("--vocab-size", type=int, default=None, metavar="V",
                   help="with --logprobs-*: the vocabulary size (a side listing V tokens is then complete)")
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
    p.add_argument("--mesh", default=None, metavar="AXES",
                   help="shard both models over a device mesh, e.g. fsdp=4,tensor=2 (axes data, fsdp, tensor: "
                        "batch rows over data and fsdp, weights' model dimension over fsdp, vocabulary, heads and "
                        "MLP columns over tensor)")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="weights and activations of both models: float32 (default) or bfloat16 (half the weight "
                        "memory; norms, attention softmax, logits and every score stay float32)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the per-device memory plan (weights, KV cache, activations) and exit without loading")
    p.add_argument("--device-memory", default=None, metavar="SIZE",
                   help="memory of one device for the plan, e.g. 16GiB (default: the device's memory_stats(), or "
                        "host RAM shared by the CPU devices)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N prompts of the file")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed for sampling (default 0)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="write the ranked prompts here: .jsonl (JSON Lines) or a .csv/.tsv/.parquet table "
                        "(default: JSON Lines on stdout)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists (a file only)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run: with --out FILE, every prompt finished is in FILE.journal.jsonl "
                        "(written as prompts finish); --resume skips those and writes the same FILE an uninterrupted "
                        "run would (same options needed)")
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    from_logprobs = args.logprobs_a is not None or args.logprobs_b is not None
    if from_logprobs:
        if args.logprobs_a is None or args.logprobs_b is None:
            raise CliError("--logprobs-a and --logprobs-b go together (one file per engine)")
        given = [f for f in ("model_a", "model_b", "prompts", "mesh", "dtype") if getattr(args, f) is not None]
        if given or args.dry_run:
            flags = ", ".join("--" + f.replace("_", "-") for f in given + (["dry_run"] if args.dry_run else []))
            raise CliError(f"--logprobs-a/--logprobs-b rank prompts without models; drop {flags}")
    else:
        missing = [f for f in ("model_a", "model_b", "prompts") if getattr(args, f) is None]
        if missing:
            raise CliError(
                f"the following arguments are required: {', '.join('--' + f.replace('_', '-') for f in missing)} "
                "(or --logprobs-a/--logprobs-b)"
            )
    if not 0.0 <= args.logprob_floor < 1.0:
        raise CliError(f"--logprob-floor must lie in [0, 1), got {args.logprob_floor}")
    if args.vocab_size is not None and args.vocab_size < 1:
        raise CliError(f"--vocab-size must be >= 1, got {args.vocab_size}")
    if args.mesh is not None and args.data_parallel > 1:
        raise CliError("--mesh and --data-parallel both lay out devices; give data=N inside --mesh instead")
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
    if args.resume and (args.out is None or from_logprobs):
        raise CliError("--resume continues a run that writes --out FILE (its journal is FILE.journal.jsonl); "
                       "give --out" + (" (and models: --logprobs-* runs are not journaled)" if from_logprobs else ""))


def _load(path: str, flag: str, mesh: Any = None, dtype: str = "float32") -> Any:
    import jax.numpy as jnp

    from jaxrank.lm import load_model

    try:
        return load_model(path, mesh=mesh, dtype=jnp.dtype(dtype))
    except (ValueError, FileNotFoundError, OSError) as err:
        raise CliError(f"{flag} {path}: {err}") from None


def _mesh(args: argparse.Namespace) -> Any:
    """The device mesh of `--mesh` / `--data-parallel`, or None."""
    text = getattr(args, "mesh", None)
    data_parallel = getattr(args, "data_parallel", 1)  # `jaxrank demo` has neither flag
    if text is None and data_parallel <= 1:
        return None
    if text is None:
        from jaxrank.sharding import make_mesh

        try:
            return make_mesh(data=data_parallel)
        except ValueError as err:
            raise CliError(f"--data-parallel {data_parallel}: {err}") from None
    from jaxrank.lm.sharding import make_model_mesh, parse_mesh

    try:
        return make_model_mesh(**parse_mesh(text))
    except ValueError as err:
        raise CliError(f"--mesh {text}: {err}") from None


def memory_plan(args: argparse.Namespace, prompts: list, mesh: Any) -> Any:
    """The per-device memory plan of the run, from the checkpoints' configs (no weights read)."""
    import jax

    from jaxrank.lm.loading import load_tokenizer
    from jaxrank.lm.memory import available_memory, parse_bytes, plan_prioritize, suggest_fits
    from jaxrank.lm.pipeline import prompt_lengths

    configs, longest = [], 0
    with err_console.status("reading the checkpoints' configs and tokenizers for the memory plan"):
        for path, flag in ((args.model_a, "--model-a"), (args.model_b, "--model-b")):
            try:
                side = load_tokenizer(path)
            except (ValueError, FileNotFoundError, OSError) as err:
                raise CliError(f"{flag} {path}: {err}") from None
            configs.append(side.config)
            longest = max(longest, max(prompt_lengths(side, prompts), default=1))
    override = None
    if getattr(args, "device_memory", None) is not None:
        try:
            override = parse_bytes(args.device_memory)
        except ValueError as err:
            raise CliError(f"--device-memory: {err}") from None
    devices = list(mesh.devices.flat) if mesh is not None else [jax.devices()[0]]
    sizes = dict(mesh.shape) if mesh is not None else {}
    contexts = [c.max_position_embeddings for c in configs if c.max_position_embeddings]
    if args.max_length:
        contexts.append(args.max_length)
    width = 2 if getattr(args, "dtype", None) == "bfloat16" else 4
    options = dict(
        batch=args.batch_size, prompt_tokens=longest, new_tokens=args.max_new_tokens,
        context=min(contexts) if contexts else None, names=(str(args.model_a), str(args.model_b)),
        mode=args.mode, symmetric=getattr(args, "symmetric", False), param_bytes=width, dtype_bytes=width,
    )
    plan = plan_prioritize(configs[0], configs[1], sizes, available=available_memory(devices, override), **options)
    if not plan.fits:
        # Name what would fit: bfloat16 on this mesh, or a mesh over every device there is.
        found = suggest_fits(configs[0], configs[1], sizes, devices=jax.devices(), override=override, **options)
        plan = dataclasses.replace(plan, suggestions=found)
    return plan


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


def _plan_text(plan: Any, seconds: list[float] | None, rates: Any) -> str:
    """The up-front plan line: prompts, samples, tokens, programs, and the estimate (labelled as one)."""
    gen = sum(st.new_tokens for st in plan.stages)
    scored = sum(st.tokens for st in plan.stages if st.kind == "score")
    models = "both models" if plan.mode == "token" else "each model"
    done = f" ({plan.finished} already done, skipped)" if plan.finished else ""
    text = (f"{plan.prompts} prompts{done}"
            + (f" x {plan.samples} samples" if plan.samples > 1 else "")
            + f" in {plan.chunks} group(s) of <= {plan.batch_size}, {len(plan.stages)} phases each; "
            + (f"generate <= {gen:,} tokens, " if gen else "")
            + f"score <= {scored:,} tokens with {models}; "
            + f"{sum(st.shapes for st in plan.stages)} program(s) to compile on a first run")
    if seconds is not None:
        text += (f"; estimate ~{clock(sum(seconds))} on this machine ({rates.device}: cost model at the matmul rates "
                 f"measured now, {rates.full / 1e9:.0f} GFLOP/s full passes, {rates.decode / 1e9:.0f} GFLOP/s decode "
                 "steps; compilation not included)")
    return text


class _Job:
    """The pipeline's hooks for the command line: the plan line, one overall progress display (phase i/n of
    each group of prompts, prompts finished, overall ETA), and the journal the finished prompts go to."""

    def __init__(self, command: str, journal: Any = None, already: int = 0) -> None:
        self.command, self.journal, self.already = command, journal, already
        self.display: JobProgress | None = None
        self.totals: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.finished = already

    def plan(self, plan: Any) -> None:
        from jaxrank.lm.cost import estimate_seconds, measure_rates

        seconds = rates = None
        config = plan.configs[0]
        if config is not None and plan.prompts:
            rates = measure_rates(max(c.hidden_size for c in plan.configs if c is not None), plan.batch_size)
            seconds = estimate_seconds(plan, rates)
        weights = seconds if seconds is not None and sum(seconds) > 0 else [st.tokens for st in plan.stages]
        self.display = JobProgress(self.command, list(zip([st.name for st in plan.stages], weights)),
                                   items=plan.prompts + plan.finished, unit="prompts",
                                   estimate=None if seconds is None else sum(seconds))
        self.display.items_done = self.finished
        self.totals = {st.name: st.rows for st in plan.stages}
        self.display.plan(_plan_text(plan, seconds, rates))

    def progress(self, stage: str, advance: int, total: int, tokens: int) -> None:
        self.done[stage] = self.done.get(stage, 0) + advance
        if self.display is not None:
            self.display.update(stage, self.done[stage], total)

    def rows(self, rows: list[dict]) -> None:
        if self.journal is not None:
            self.journal.append(rows)
        self.finished += len(rows)
        if self.display is not None:
            self.display.items(self.finished)

    def close(self) -> None:
        if self.display is not None:
            self.display.close()


def rank_prompts(args: argparse.Namespace, prompts: list, journal: Any = None, *, command: str = "prioritize") -> list[dict]:
    """Load both models, run the pipeline with the plan line and one progress display, print warnings as one
    line each; the ranked rows (the caller writes them). With `journal` (`jaxrank.outputs.Journal`), its
    records are the prompts already finished (skipped), and every prompt finished now is appended to it."""
    import jax

    from jaxrank.lm.pipeline import TruncationWarning, prioritize_prompts

    mesh = _mesh(args)
    model_mesh = mesh if getattr(args, "mesh", None) is not None else None
    with err_console.status(f"loading {args.model_a} and {args.model_b}"):
        dtype = getattr(args, "dtype", None) or "float32"  # `jaxrank demo` has no --dtype
        model_a = _load(args.model_a, "--model-a", model_mesh, dtype)
        model_b = _load(args.model_b, "--model-b", model_mesh, dtype)
    finished = list(journal.records) if journal is not None else []
    job = _Job(command, journal, len(finished))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
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
                progress=job.progress,
                mesh=mesh,
                finished=finished,
                on_rows=job.rows,
                on_plan=job.plan,
            )
        except ValueError as err:
            if finished and str(err).startswith("finished["):
                raise CliError(f"--resume: {journal.path}: {err}") from None
            raise
        finally:
            job.close()
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

    mode = rows[0].get("mode") if rows else None
    seq = mode in ("sequence", "logprobs")
    table = Table(title=title, title_justify="left")
    table.add_column("rank", justify="right")
    table.add_column("score", justify="right")
    if seq:
        table.add_column("± stderr", justify="right")
    if mode == "logprobs":
        table.add_column("KL bounds", justify="right")
    table.add_column("id")
    table.add_column("prompt", overflow="fold", max_width=48)
    table.add_column("A's completion", overflow="fold", max_width=48)
    for r in rows[:limit]:
        cells = [str(r["rank"]), f"{r['score']:.4f}"]
        if seq:
            cells.append("" if math.isnan(r["stderr"]) else f"{r['stderr']:.4f}")
        if mode == "logprobs":
            cells.append(f"[{r['kl_lower']:.4f}, {r['kl_upper']:.4f}]")
        short = lambda s: (s[:90] + "…") if len(s) > 90 else s  # noqa: E731
        cells += [str(r["id"]), short(r["prompt"].replace("\n", " ")), short(r["completion"].replace("\n", " "))]
        table.add_row(*cells)
    err_console.print(table)


def rank_logprobs(args: argparse.Namespace, out: pathlib.Path | None) -> list[dict]:
    """`--logprobs-a/--logprobs-b`: rank prompts from two engines' logprob files, no model loaded."""
    from jaxrank.logprobs import LogprobsError, ProcessedLogprobsWarning, prioritize_logprobs, read_logprobs

    records = []
    for flag, path in (("--logprobs-a", args.logprobs_a), ("--logprobs-b", args.logprobs_b)):
        input_path(path, arg=flag)
        try:
            records.append(read_logprobs(path))
        except LogprobsError as err:
            raise CliError(f"{flag}: {err}") from None
    if args.limit is not None:
        records[0] = records[0][: args.limit]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            rows = prioritize_logprobs(records[0], records[1], floor=args.logprob_floor, vocab_size=args.vocab_size,
                                       fraction=args.fraction)
        except (LogprobsError, ValueError) as err:
            raise CliError(str(err)) from None
    for w in caught:
        if issubclass(w.category, (ProcessedLogprobsWarning, UserWarning)):
            err_console.print(f"jaxrank: warning: {w.message}", markup=False, highlight=False, soft_wrap=True)
    write_rows(rows, out)
    return rows


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    if args.logprobs_a is not None:
        inputs = [pathlib.Path(p) for p in (args.logprobs_a, args.logprobs_b) if pathlib.Path(p).exists()]
        out = output_path(args.out, force=args.force, inputs=inputs, suffixes=OUT_FORMATS)
        rows = rank_logprobs(args, out)
        if out is not None:
            print_table(rows, title="prompts ranked by KL from engine logprobs")
            err_console.print(f"wrote {len(rows)} ranked prompts to {out.named}")
        return 0
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
    mesh = _mesh(args)
    plan = memory_plan(args, prompts, mesh)
    if args.dry_run:
        for line in plan.lines():
            console.print(line, markup=False, highlight=False, soft_wrap=True)
    if not plan.fits:
        from jaxrank.lm.memory import MemoryPlanError

        try:
            plan.check()
        except MemoryPlanError as err:
            raise CliError(str(err)) from None
    if args.dry_run:
        return 0
    journal = _open_journal(args, out, prompts_file) if out is not None else None
    try:
        with resource_flags(batch_size="--batch-size", max_length="--max-length"):
            rows = rank_prompts(args, prompts, journal)
    except BaseException:
        if journal is not None and not journal.records:
            journal.remove()  # nothing finished: a rerun (with any options) starts cleanly
        elif journal is not None:
            err_console.print(f"jaxrank prioritize: {len(journal.records)} finished prompts are kept in {journal.path}; "
                              "run the same command with --resume to continue", highlight=False, markup=False,
                              soft_wrap=True)
        raise
    write_rows(rows, out)
    if journal is not None:
        journal.remove()  # everything is in --out now
    if out is not None:
        print_table(rows)
        err_console.print(f"wrote {len(rows)} ranked prompts to {out.named}")
    return 0


def run_settings(args: argparse.Namespace, prompts_file: pathlib.Path) -> dict:
    """The options that decide the results (a journal is resumed only under the same ones)."""
    import hashlib

    from jaxrank import __version__

    return {
        "jaxrank": __version__,
        "model_a": str(args.model_a), "model_b": str(args.model_b),
        "prompts_sha256": hashlib.sha256(prompts_file.read_bytes()).hexdigest(), "limit": args.limit,
        "mode": args.mode, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
        "num_samples": args.num_samples, "symmetric": args.symmetric, "temperature": args.temperature,
        "max_length": args.max_length, "seed": args.seed, "data_parallel": args.data_parallel, "mesh": args.mesh,
        "dtype": getattr(args, "dtype", None) or "float32",
    }


def _open_journal(args: argparse.Namespace, out: Output, prompts_file: pathlib.Path) -> Any:
    """The journal beside --out (`jaxrank.outputs.Journal`): new, or with --resume the interrupted run's."""
    from jaxrank.outputs import Journal, OutputError, journal_path

    path = journal_path(out)
    if args.resume and not path.exists():
        err_console.print(f"jaxrank prioritize: --resume: no journal at {path}; starting from the first prompt",
                          highlight=False, markup=False, soft_wrap=True)
    try:
        journal = Journal.open(path, kind="jaxrank prioritize", settings=run_settings(args, prompts_file),
                               resume=args.resume, label="journal", resume_hint="--resume")
    except OutputError as err:
        raise CliError(str(err)) from None
    if journal.records:
        err_console.print(f"jaxrank prioritize: resuming from {path}: {len(journal.records)} prompts already done",
                          highlight=False, markup=False, soft_wrap=True)
    return journal
