"""Helpers shared by the command-line handlers: errors, output files, console, progress."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pathlib
import time
from collections.abc import Iterable, Iterator, Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from jaxrank.outputs import FIGURE_FORMATS, TABLE_FORMATS, Output, check_distinct, check_output  # noqa: F401
from jaxrank.resources import ResourceError


class CliError(Exception):
    """A user error: printed as one line `jaxrank: error: ...`, exit status 2."""


console = Console(stderr=False)
err_console = Console(stderr=True)


def output_path(path: str | None, *, force: bool, arg: str = "--out", kind: str = "file",
                inputs: Iterable[str | os.PathLike | None] = (),
                suffixes: Sequence[str] | None = None) -> Output | None:
    """Check an output target before any work (`jaxrank.outputs.check_output`): its folder exists and
    accepts files, it is not (and holds no) input, an existing target needs `--force` and is replaced only
    if it is a file (or, for `kind="dir"`, a directory jaxrank wrote). None when the option was not given."""
    if path is None:
        return None
    out = check_output(path, kind=kind, force=force, label=arg, hint="--force", inputs=inputs, suffixes=suffixes)
    if suffixes is FIGURE_FORMATS and importlib.util.find_spec("matplotlib") is None:
        raise CliError(f"{arg} {path}: plotting needs matplotlib: pip install 'jaxrank[plot]'")
    return out


@contextlib.contextmanager
def resource_flags(**flags: str) -> Iterator[None]:
    """Name command-line flags in memory-plan errors: `with resource_flags(num_rounds="--bootstrap"): ...`
    turns a `ResourceError` about `num_rounds` into a one-line error about `--bootstrap`."""
    try:
        yield
    except ResourceError as err:
        flag = flags.get(err.option, "--" + err.option.replace("_", "-"))
        raise CliError(err.render(flag)) from None


def input_path(path: str, *, arg: str) -> pathlib.Path:
    p = pathlib.Path(path)
    if not p.exists():
        raise CliError(f"{arg} {p} does not exist")
    if p.is_file() and p.stat().st_size == 0:
        raise CliError(f"{arg} {p} is empty")
    return p


def parse_map(text: str, arg: str, *, keys: tuple[str, ...] | None = None,
              values: tuple[str, ...] | None = None) -> dict[str, str]:
    """Parse `NAME=VALUE,NAME=VALUE` (e.g. `--columns`, `--winner-labels`), checking names/values if given."""
    out: dict[str, str] = {}
    for part in text.split(","):
        if "=" not in part or not part.split("=", 1)[0].strip() or not part.split("=", 1)[1].strip():
            raise CliError(f"{arg}: expected NAME=VALUE pairs separated by commas, got {part!r} in {text!r}")
        k, v = (s.strip() for s in part.split("=", 1))
        if keys is not None and k not in keys:
            raise CliError(f"{arg}: unknown name {k!r}; expected one of {', '.join(keys)}")
        if values is not None and v not in values:
            raise CliError(f"{arg}: {k}={v!r} must map to one of {', '.join(repr(x) for x in values)}")
        out[k] = v
    return out


# Vote-file layouts for `--format` (leaderboard, evaluate, p2l train): `jaxrank.votes.FORMATS`, detected from
# the columns by default. Kept here as literals so that building the parser imports nothing heavy.
VOTE_FORMATS = ("auto", "arena", "arena-55k", "alpaca-eval", "llmfao", "pandalm")
VOTE_TARGETS = ("model_a", "model_b", "tie", "tie (bothbad)", "both_bad")
# The keys `--columns` may map (every layout's, see `jaxrank.load_votes`); the layout read checks its own.
VOTE_COLUMN_KEYS = ("model_a", "model_b", "winner", "p_a", "weight", "count", "prompt_id", "prompt", "judge",
                    "winner_model_a", "winner_model_b", "winner_tie", "response_a", "response_b", "preference",
                    "length_a", "length_b", "output_a", "output_b", "cmp_key", "instruction", "input")


def add_vote_arguments(p, *, prompt_help: str | None = None) -> None:
    """The vote-reading options shared by the commands that read VOTES: --format, --columns, --winner-labels."""
    p.add_argument("--format", choices=VOTE_FORMATS, default="auto",
                   help="layout of VOTES (default auto: detected from its columns): arena (model_a, model_b, winner; "
                        "also FastChat clean_battle and MT-Bench judgments), arena-55k (one-hot winner_model_a/_b/"
                        "winner_tie), alpaca-eval (generator_1/_2, preference), llmfao (left, right, winner), pandalm")
    p.add_argument("--columns", metavar="MAP",
                   help="your column names, e.g. model_a=left,model_b=right,winner=verdict[,weight=w,prompt_id=q]")
    p.add_argument("--winner-labels", metavar="MAP",
                   help="your winner labels, e.g. left=model_a,right=model_b,draw=tie")


def vote_options(args, *, columns_extra: dict[str, str] | None = None) -> dict:
    """`load_votes` keyword arguments from --format, --columns and --winner-labels."""
    columns = dict(columns_extra or {})
    if getattr(args, "columns", None):
        columns.update(parse_map(args.columns, "--columns", keys=VOTE_COLUMN_KEYS))
    labels = parse_map(args.winner_labels, "--winner-labels", values=VOTE_TARGETS) if args.winner_labels else None
    return {"format": args.format, "columns": columns or None, "winner_labels": labels}


def progress(description: str, total: int | None, *, transient: bool = False) -> Progress:
    """A rich progress bar on stderr (count, elapsed, remaining); use as a context manager."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[rate]}"),
        console=err_console,
        transient=transient,
    )


class ChunkProgress:
    """`progress(done, total)` for chunked library work: a rich bar on stderr with a rate, shown only once
    the work has taken more than a second (short runs print nothing); `close()` when done."""

    def __init__(self, description: str, unit: str) -> None:
        self.description, self.unit = description, unit
        self.start = time.perf_counter()
        self.bar = None
        self.task = None

    def __call__(self, done: int, total: int) -> None:
        elapsed = time.perf_counter() - self.start
        if self.bar is None and elapsed > 1.0 and done < total:
            self.bar = progress(self.description, total)
            self.bar.start()
            self.task = self.bar.add_task(self.description, total=total, rate="")
        if self.bar is not None:
            self.bar.update(self.task, completed=done, rate=f"{done / max(elapsed, 1e-9):.0f} {self.unit}/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


@contextlib.contextmanager
def timed(label: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    err_console.print(f"[dim]{label}: {time.perf_counter() - start:.2f} s[/dim]")
