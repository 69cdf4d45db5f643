"""Helpers shared by the command-line handlers: errors, output files, console, progress."""

from __future__ import annotations

import contextlib
import pathlib
import time
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class CliError(Exception):
    """A user error: printed as one line `jaxrank: error: ...`, exit status 2."""


console = Console(stderr=False)
err_console = Console(stderr=True)


def output_path(path: str | None, *, force: bool, arg: str = "--out") -> pathlib.Path | None:
    """Validate an output path: never overwrite an existing file unless `--force` was given."""
    if path is None:
        return None
    p = pathlib.Path(path)
    if p.exists() and not force:
        raise CliError(f"{arg} {p} already exists; pass --force to overwrite it")
    if p.exists() and p.is_dir():
        raise CliError(f"{arg} {p} is a directory; expected a file path")
    if not p.parent.exists():
        raise CliError(f"{arg} {p}: folder {p.parent} does not exist")
    return p


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


@contextlib.contextmanager
def timed(label: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    err_console.print(f"[dim]{label}: {time.perf_counter() - start:.2f} s[/dim]")
