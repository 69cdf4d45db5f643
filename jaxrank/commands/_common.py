"""Helpers shared by the command-line handlers: errors, output files, console, progress."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pathlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from jaxrank.outputs import FIGURE_FORMATS, TABLE_FORMATS, Output, check_distinct, check_output  # noqa: F401 (re-exported for the commands)
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


def clock(seconds: float) -> str:
    """`1:05` / `1:02:05` for a duration in seconds."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_interval() -> float:
    """Seconds between plain progress lines when stderr is not a terminal: `$JAXRANK_PROGRESS_EVERY`, else 10."""
    try:
        return max(0.0, float(os.environ.get("JAXRANK_PROGRESS_EVERY", "10")))
    except ValueError:
        return 10.0


class JobProgress:
    """One overall progress display for a long job of several phases.

    `phases` are (name, weight) in the order they run; a weight is the phase's share of the work (estimated
    seconds, or any unit common to the phases). `update(phase, done, total)` reports that `done` of the phase's
    `total` steps are finished; `items(done)` the items finished (prompts written, rounds, ...). The overall
    fraction is the weighted sum, and the ETA is measured: elapsed time since the first step finished (which
    includes compiling) over the work done since, times the work left; before that, the plan's `estimate` (when
    given) is shown as such.

    On a terminal: one rich bar, `phase i/n: NAME`, items, % of the work, elapsed, ETA (shown once the job has
    run a second). Otherwise (a log file, CI): a plain line `jaxrank COMMAND: ...` every `every` seconds
    (`progress_interval()`, `$JAXRANK_PROGRESS_EVERY`), and a last line when the job ends if any was printed.
    """

    def __init__(self, command: str, phases: Sequence[tuple[str, float]], *, items: int | None = None,
                 unit: str = "items", estimate: float | None = None, every: float | None = None) -> None:
        if not phases:
            raise ValueError("phases is empty")
        self.command, self.unit, self.total_items, self.estimate = command, unit, items, estimate
        self.names = [n for n, _ in phases]
        weights = [max(float(w), 0.0) for _, w in phases]
        total = sum(weights)
        self.weights = [w / total for w in weights] if total > 0 else [1.0 / len(weights)] * len(weights)
        self.done = [0.0] * len(phases)  # fraction of each phase finished
        self.phase = 0
        self.items_done = 0
        self.every = progress_interval() if every is None else every
        self.tty = err_console.is_terminal
        self.start = time.perf_counter()
        self.last_line = self.start
        self.first: tuple[float, float] | None = None
        self.printed = False
        self.bar = None
        self.task = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def plan(self, text: str) -> None:
        """Print the up-front plan line (on stderr, before any work) and start the clock; without a terminal,
        a status line then follows every `every` seconds even while one long step (a first batch that
        compiles) reports nothing."""
        err_console.print(f"jaxrank {self.command}: plan: {text}", highlight=False, markup=False, soft_wrap=True)
        self.start = self.last_line = time.perf_counter()
        if self.tty:
            with self._lock:
                self._start_bar()
        elif self.every > 0 and self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name="jaxrank-progress", daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(min(self.every, 1.0)):
            with self._lock:
                now = time.perf_counter()
                if now - self.last_line >= self.every and self.fraction() < 1.0:
                    self._line(now)

    def _index(self, phase: str | int) -> int:
        return phase if isinstance(phase, int) else self.names.index(phase)

    def update(self, phase: str | int, done: float, total: float) -> None:
        i = self._index(phase)
        self.phase = i
        self.done[i] = min(1.0, done / total) if total > 0 else 1.0
        self._show()

    def items(self, done: int) -> None:
        self.items_done = done
        self._show()

    def fraction(self) -> float:
        return sum(w * d for w, d in zip(self.weights, self.done))

    def eta(self, now: float) -> str:
        f = self.fraction()
        if self.first is not None and f > self.first[1] and now > self.first[0]:
            return f"ETA {clock((now - self.first[0]) / (f - self.first[1]) * (1.0 - f))}"
        if self.estimate is not None and now - self.start < self.estimate:
            return f"ETA ~{clock(self.estimate - (now - self.start))} (estimate; measured after the first batch)"
        # The first step (it compiles) only starts the clock: the rate needs one more.
        return "ETA after the first batch" if self.first is None else "ETA after the next batch"

    def status(self, now: float | None = None) -> str:
        now = time.perf_counter() if now is None else now
        parts = []
        if self.total_items is not None:
            parts.append(f"{self.items_done}/{self.total_items} {self.unit}")
        name = self.names[self.phase]
        parts.append(f"phase {self.phase + 1}/{len(self.names)}" + (f" {name}" if name else ""))
        parts += [f"{self.fraction():.0%} of the work", f"{clock(now - self.start)} elapsed", self.eta(now)]
        return ", ".join(parts)

    def _start_bar(self) -> None:
        if self.bar is None:
            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[status]}"),
                                console=err_console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task(f"{self.command} phase 1/{len(self.names)}: {self.names[0]}", total=1.0,
                                          status=self.eta(time.perf_counter()))

    def _line(self, now: float) -> None:
        err_console.print(f"jaxrank {self.command}: {self.status(now)}", highlight=False, markup=False,
                          soft_wrap=True)
        self.last_line, self.printed = now, True

    def _show(self) -> None:
        with self._lock:
            self._show_locked()

    def _show_locked(self) -> None:
        now = time.perf_counter()
        f = self.fraction()
        if self.first is None and f > 0:
            self.first = (now, f)  # the rate is measured from here: the first step compiled
        if not self.tty:
            if now - self.last_line >= self.every and f < 1.0:
                self._line(now)
            return
        if self.bar is None and now - self.start > 1.0 and f < 1.0:
            self._start_bar()
        if self.bar is not None:
            name = self.names[self.phase]
            status = self.status(now).split(", ")
            self.bar.update(self.task, completed=f, status=" · ".join(s for s in status if not s.startswith("phase")),
                            description=f"{self.command} phase {self.phase + 1}/{len(self.names)}"
                                        + (f": {name}" if name else ""))

    def sequential(self) -> Callable[[int, int], None]:
        """A `progress(done, total)` callback for library work whose phases run one after another and each
        counts from 0 (e.g. one bootstrap per `--group-by` group): a count that goes back starts the next
        phase. The items finished are the steps of all phases so far."""
        state = {"last": 0, "before": 0}

        def step(done: int, total: int) -> None:
            if done < state["last"] or (done == 0 and state["last"] == total and total):
                state["before"] += state["last"]
                self.phase = min(self.phase + 1, len(self.names) - 1)  # the next phase started
            state["last"] = done
            self.items_done = state["before"] + done
            self.update(self.phase, done, total)

        return step

    def close(self) -> None:
        """Stop the bar; without a terminal, a last line when progress lines were printed."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        if not self.tty and self.printed:
            now = time.perf_counter()
            if self.fraction() >= 1.0 - 1e-9:
                done = f"{self.items_done}/{self.total_items} {self.unit}, " if self.total_items is not None else ""
                err_console.print(f"jaxrank {self.command}: done, {done}{clock(now - self.start)} elapsed",
                                  highlight=False, markup=False)
            else:  # stopped early (an error, Ctrl-C): where it stood
                err_console.print(f"jaxrank {self.command}: stopped at {self.status(now).rsplit(', ETA', 1)[0]}",
                                  highlight=False, markup=False, soft_wrap=True)

    def __enter__(self) -> "JobProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def timed(label: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    err_console.print(f"[dim]{label}: {time.perf_counter() - start:.2f} s[/dim]")
