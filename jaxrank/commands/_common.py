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


# Vote-file layouts for `--preset` (leaderboard, evaluate): column and winner-label maps (None: the
# Arena defaults). The LLMFAO maps are `jaxrank.ratings.LLMFAO_FORMAT`.
VOTE_PRESETS = ("arena", "llmfao")
VOTE_TARGETS = ("model_a", "model_b", "tie", "tie (bothbad)")


def vote_maps(preset: str | None, columns: str | None, winner_labels: str | None, *,
              column_keys: tuple[str, ...]) -> tuple[dict[str, str] | None, dict[str, str] | None]:
    """(columns, winner_labels) for `load_battles`-style readers: the `--preset` maps, overridden entry by
    entry by `--columns` and `--winner-labels`."""
    cols: dict[str, str] | None = None
    labels: dict[str, str] | None = None
    if preset == "llmfao":
        from jaxrank.ratings import LLMFAO_FORMAT

        cols = dict(LLMFAO_FORMAT["columns"])
        labels = dict(LLMFAO_FORMAT["winner_labels"])
    elif preset not in (None, "arena"):
        raise CliError(f"--preset: unknown preset {preset!r}; expected one of {', '.join(VOTE_PRESETS)}")
    if columns:
        cols = {**(cols or {}), **parse_map(columns, "--columns", keys=column_keys)}
    if winner_labels:
        labels = {**(labels or {}), **parse_map(winner_labels, "--winner-labels", values=VOTE_TARGETS)}
    return cols, labels


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
