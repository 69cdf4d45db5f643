r"""Reading votes: every supported layout, auto-detected by its columns, into one `Votes` table.

Files: CSV, TSV, JSON Lines (`.jsonl`, `.ndjson`), JSON (a list of records, or JSON Lines), Parquet, each
optionally gzip-compressed (`.csv.gz`, ...); or a pandas DataFrame. Layouts (`format=`):

| format | columns | outcome |
|---|---|---|
| `arena` | `model_a, model_b, winner` (+ `question_id`, `judge`, `turn`, `conv_metadata`, `language`, ...) | `model_a \| model_b \| tie \| tie (bothbad) \| both_bad` |
| `arena-55k` | `model_a, model_b, winner_model_a, winner_model_b, winner_tie` (+ `prompt`, `response_a/_b`) | one-hot |
| `alpaca-eval` | `generator_1, generator_2, preference` (+ `instruction(_idx)`, `len_output_1/_2`, `annotator`) | soft: P(generator_1 wins) = 2 - preference |
| `llmfao` | `left, right, winner` (+ `prompt`, `worker`) | `left \| right \| tie` |
| `pandalm` | `cmp_key, annotator1..3, response1, response2` (PandaLM's test set) | `0` tie, `1`, `2` |

`arena` also reads FastChat's `clean_battle` JSON (a list of records, `winner` incl. `tie (bothbad)`,
`judge`, `turn`, `anony`) and MT-Bench human judgments (`question_id, model_a, model_b, winner, judge,
turn`). Ids and model names are strings exactly as written (CSV text verbatim, JSON numbers by their
literal text: `007`, `7` and `7.0` are three models); typed sources (Parquet, DataFrame) give integers
as their decimal string. Every error names the file, the column and the line (CSV, JSON Lines) or
record (JSON) or row (Parquet, DataFrame).
"""

from __future__ import annotations

import ast
import gzip
import io
import json
import pathlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxrank._validation import preview
from jaxrank.votes.table import (
    A_WINS,
    B_WINS,
    TIE,
    Votes,
    id_strings,
    missing_mask,
    outcome_codes,
)

__all__ = ["FORMATS", "Table", "read_table", "detect_format", "load_votes"]

FORMATS = ("arena", "arena-55k", "alpaca-eval", "llmfao", "pandalm")
# The columns that identify each layout (auto-detection tries them in this order).
_SIGNATURES = (
    ("arena-55k", ("winner_model_a", "winner_model_b", "winner_tie")),
    ("alpaca-eval", ("generator_1", "generator_2", "preference")),
    ("pandalm", ("cmp_key", "annotator1")),
    ("llmfao", ("left", "right", "winner")),
    ("arena", ("model_a", "model_b", "winner")),
)
# Logical columns of each layout (keys of `columns=`) and their default source columns; a tuple lists
# alternatives, the first present is used; None: optional and absent by default.
_COMMON = {"weight": "weight", "count": "count", "judge": "judge"}
_LAYOUTS: dict[str, dict[str, Any]] = {
    "arena": {"model_a": "model_a", "model_b": "model_b", "winner": "winner", "p_a": "p_a",
              "prompt_id": ("question_id", "prompt_id"), "prompt": ("prompt",), **_COMMON},
    "arena-55k": {"model_a": "model_a", "model_b": "model_b", "winner_model_a": "winner_model_a",
                  "winner_model_b": "winner_model_b", "winner_tie": "winner_tie", "prompt_id": ("prompt_id",),
                  "prompt": ("prompt",), "response_a": "response_a", "response_b": "response_b", **_COMMON},
    "alpaca-eval": {"model_a": "generator_1", "model_b": "generator_2", "preference": "preference",
                    "prompt_id": ("instruction_idx", "prompt_id"), "prompt": ("instruction",),
                    "length_a": "len_output_1", "length_b": "len_output_2", "output_a": "output_1",
                    "output_b": "output_2", **_COMMON, "judge": "annotator"},
    "llmfao": {"model_a": "left", "model_b": "right", "winner": "winner", "prompt_id": ("prompt",),
               **_COMMON, "judge": "worker"},
    "pandalm": {"cmp_key": "cmp_key", "prompt_id": ("idx",), "instruction": "instruction", "input": "input",
                "response_a": "response1", "response_b": "response2"},
}
# LLMFAO's labels, and Arena's (a left/right file written with model_a/model_b winners means the same).
_LLMFAO_LABELS = {"left": "model_a", "right": "model_b", "tie": "tie", "model_a": "model_a", "model_b": "model_b",
                  "tie (bothbad)": "tie (bothbad)", "both_bad": "both_bad"}
_PANDALM_ANNOTATORS = ("annotator1", "annotator2", "annotator3")
# Arena's `conv_metadata` style counts (FastChat's style control elements), per side.
_ARENA_STYLE = {"length": "sum_assistant_{}_tokens", "headers": "header_count_{}", "lists": "list_count_{}",
                "bold": "bold_count_{}"}
# Columns never kept in `meta`: the answers themselves (large text) and what the votes already hold.
_NOT_META = {"conversation_a", "conversation_b", "response_a", "response_b", "response1", "response2", "output_1",
             "output_2", "conv_metadata", "annotator1", "annotator2", "annotator3"}


# --------------------------------------------------------------------------------------------------
# Tables with locations


class Table:
    """A table read from a file or DataFrame, with the means to name a row in an error message.

    Attributes:
        frame: pandas DataFrame, one row a record; text formats give strings (CSV cells verbatim, JSON
            numbers as their literal text), typed formats (Parquet, DataFrame) their own values.
        name: the source for messages (the file path, or "DataFrame").
        text: whether values are text as written (CSV, JSON) rather than typed (Parquet, DataFrame).
    """

    def __init__(self, frame, name: str, *, unit: str, lines: Sequence[int] | None = None,
                 line_of: Callable[[], Sequence[int]] | None = None, text: bool):
        self.frame = frame
        self.name = name
        self.unit = unit
        self.text = text
        self._lines = lines
        self._line_of = line_of

    def take(self, rows: np.ndarray) -> "Table":
        """The table of the given row positions; locations still name the source's lines/records/rows."""
        out = Table(self.frame.iloc[rows].reset_index(drop=True), self.name, unit=self.unit, text=self.text)
        out._parent, out._rows = self, np.asarray(rows)
        return out

    def where(self, rows: Sequence[int]) -> str:
        """`line(s) 3, 9` / `record(s) 0, 4` / `row(s) 2, 7` for 0-based row positions of `frame`."""
        rows = [int(r) for r in rows]
        if getattr(self, "_parent", None) is not None:
            return self._parent.where([int(self._rows[r]) for r in rows])
        if self.unit == "line":
            if self._lines is None and self._line_of is not None:
                self._lines = self._line_of()
            if self._lines is not None:
                rows = [int(self._lines[r]) for r in rows]
        shown = ", ".join(str(r) for r in rows[:5]) + (f", ... ({len(rows) - 5} more)" if len(rows) > 5 else "")
        return f"{self.unit}{'s' if len(rows) != 1 else ''} {shown}"

    def error(self, column: str | None, message: str, rows: Sequence[int] | None = None) -> ValueError:
        where = f", {self.where(rows)}" if rows is not None and len(rows) else ""
        col = f"column {column!r}{where}: " if column is not None else (f"{self.where(rows)}: " if where else "")
        return ValueError(f"{self.name}: {col}{message}")


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        col = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise ValueError(
            f"{name}: not UTF-8 text: byte 0x{data[err.start]:02x} at line {line}, column {col} cannot be decoded; "
            "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def _csv_lines(text: str, sep: str) -> list[int]:
    """The line number of each data record of a CSV text (records may span lines inside quotes)."""
    import csv

    reader = csv.reader(io.StringIO(text), delimiter=sep)
    out = []
    start = 1
    for i, _ in enumerate(reader):
        if i > 0:
            out.append(start)
        start = reader.line_num + 1
    return out


def _json_records(text: str, name: str, *, lines: bool) -> tuple[list[Any], list[int]]:
    """Records of a JSON Lines text (or of a JSON array), numbers kept as their literal text."""
    decoder = json.JSONDecoder(parse_int=str, parse_float=str, parse_constant=str)
    if not lines:
        try:
            data = decoder.decode(text)
        except json.JSONDecodeError as err:
            if err.msg == "Extra data":  # several JSON values: JSON Lines in a .json file
                return _json_records(text, name, lines=True)
            raise ValueError(f"{name}: not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
        if isinstance(data, dict):
            raise ValueError(f"{name}: a JSON object, not a list of records; expected [{{...}}, {{...}}] (one record a vote) "
                             "or JSON Lines (one object a line)")
        if not isinstance(data, list):
            raise ValueError(f"{name}: expected a JSON list of records, got a JSON {type(data).__name__}")
        bad = [i for i, r in enumerate(data) if not isinstance(r, dict)]
        if bad:
            raise ValueError(f"{name}: record(s) {preview(bad)} of the JSON list are not objects "
                             f"(e.g. {json.dumps(data[bad[0]])[:60]}); expected a list of records")
        return data, list(range(len(data)))
    records, numbers = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = decoder.decode(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{name}: line {number} is not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{name}: line {number} is a JSON {type(record).__name__}, not an object (one record a line)")
        records.append(record)
        numbers.append(number)
    return records, numbers


def read_table(source: Any) -> Table:
    """Read a table: a pandas DataFrame, or a `.csv`/`.tsv`, `.jsonl`/`.ndjson`/`.json` or `.parquet` file
    (text files optionally `.gz`). CSV cells are read as text, verbatim (no type guessing, no NaN); JSON
    numbers keep their literal text. Raises `ValueError` naming the file and line for unreadable input
    (not UTF-8, invalid JSON on line L, a JSON value that is not a list of records, a bad CSV)."""
    import pandas as pd

    if isinstance(source, pd.DataFrame):
        return Table(source.reset_index(drop=True), "DataFrame", unit="row", text=False)
    if not isinstance(source, (str, pathlib.Path)):
        raise TypeError(f"source must be a pandas DataFrame or a path to a .csv, .tsv, .jsonl/.json or .parquet file, "
                        f"got {type(source).__name__}")
    path = pathlib.Path(source)
    name = str(path)
    if not path.exists():
        raise FileNotFoundError(f"source: no such file {name!r}")
    if path.is_dir():
        raise ValueError(f"{name} is a directory; expected a .csv, .tsv, .jsonl, .json or .parquet file")
    suffixes = [s.lower() for s in path.suffixes]
    compressed = bool(suffixes) and suffixes[-1] == ".gz"
    suffix = (suffixes[-2] if len(suffixes) >= 2 else "") if compressed else (suffixes[-1] if suffixes else "")
    if suffix in (".parquet", ".pq"):
        try:
            frame = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several types for a file that is not Parquet
            raise ValueError(f"{name}: not a readable Parquet file ({type(err).__name__}: {err})") from None
        return Table(frame.reset_index(drop=True), name, unit="row", text=False)
    if suffix not in (".csv", ".tsv", ".jsonl", ".ndjson", ".json"):
        raise ValueError(f"source {name!r}: unknown file type {suffix or '(none)'!r}; expected .csv, .tsv, .jsonl, "
                         ".json or .parquet (optionally .gz)")
    data = path.read_bytes()
    if compressed:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise ValueError(f"{name}: not a gzip file ({err})") from None
    text = _decode(data, name)
    if not text.strip():
        raise ValueError(f"{name} is empty; no votes")
    if suffix in (".csv", ".tsv"):
        sep = "\t" if suffix == ".tsv" else ","
        try:
            frame = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_filter=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
            raise ValueError(f"{name}: not a valid {'TSV' if sep == chr(9) else 'CSV'} file ({str(err).strip()})") from None
        return Table(frame, name, unit="line", line_of=lambda: _csv_lines(text, sep), text=True)
    records, numbers = _json_records(text, name, lines=suffix != ".json")
    frame = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    frame = frame.astype(object).where(frame.notna(), None) if len(frame) else frame
    unit = "record" if suffix == ".json" and numbers == list(range(len(numbers))) and not text.lstrip().startswith("{") else "line"
    return Table(frame, name, unit=unit, lines=numbers if unit == "line" else None, text=True)


def detect_format(columns: Sequence[str]) -> str | None:
    """The layout (one of `FORMATS`) whose identifying columns are all present, or None."""
    present = set(columns)
    for fmt, needed in _SIGNATURES:
        if all(c in present for c in needed):
            return fmt
    return None


# --------------------------------------------------------------------------------------------------
# Column access with located errors


class _Reader:
    def __init__(self, table: Table, fmt: str, mapping: dict[str, Any], explicit: set[str] = frozenset()):
        self.t = table
        self.explicit = set(explicit)  # keys the caller mapped: their columns must exist
        self.fmt = fmt
        self.frame = table.frame
        self.n = len(table.frame)
        self.map = mapping
        self.used: set[str] = set()

    def column(self, key: str, *, required: bool = True) -> str | None:
        spec = self.map.get(key)
        options = spec if isinstance(spec, tuple) else (spec,) if spec is not None else ()
        for col in options:
            if col in self.frame.columns:
                self.used.add(col)
                return col
        if required or key in self.explicit:
            wanted = " or ".join(repr(c) for c in options) or repr(key)
            raise ValueError(
                f"{self.t.name}: missing column(s) {wanted} ({self.fmt} layout, key {key!r}); available columns: "
                f"{preview(list(self.frame.columns), 20)}; map yours with columns={{{key!r}: ...}} "
                f"(command line: --columns {key}=...)")
        return None

    def values(self, col: str) -> np.ndarray:
        return self.frame[col].to_numpy(dtype=object)

    def names(self, key: str) -> np.ndarray:
        """Model names / ids of a column as strings; missing or empty values are an error."""
        col = self.column(key)
        vals = self.values(col)
        bad = np.flatnonzero(missing_mask(vals))
        if bad.size:
            raise self.t.error(col, f"{bad.size} missing or empty value(s)", bad)
        return id_strings(vals, col)

    def numbers(self, col: str, what: str, *, allow_missing: bool = False) -> np.ndarray:
        import pandas as pd

        vals = self.values(col)
        missing = missing_mask(vals)
        parsed = pd.to_numeric(pd.Series(vals, dtype=object).where(~missing, None), errors="coerce")
        out = parsed.to_numpy(np.float64, na_value=np.nan)
        unparsed = np.isnan(out) & ~missing
        if unparsed.any():  # NaN written as "nan" is a NaN value, not a parse failure
            idx = np.flatnonzero(unparsed)
            literal = np.asarray([str(vals[i]).strip().lower().lstrip("+-") == "nan" for i in idx])
            unparsed[idx[literal]] = False
        bad = np.flatnonzero(unparsed | (missing & (not allow_missing)))
        if bad.size:
            shown = vals[bad[0]]
            raise self.t.error(col, f"{bad.size} value(s) are not numbers ({what}), e.g. {shown!r}", bad)
        nonfinite = np.flatnonzero(~np.isfinite(out) & ~missing)
        if nonfinite.size:
            raise self.t.error(col, f"{nonfinite.size} NaN/infinite value(s) ({what})", nonfinite)
        return out

    def optional_numbers(self, key: str, what: str) -> np.ndarray | None:
        col = self.column(key, required=False)
        return None if col is None else self.numbers(col, what)


def _parse_nested(value: Any) -> Any:
    """A JSON/dict-repr string (as CSV holds Arena's `conv_metadata`, or a list of turns) -> the object."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text or text[0] not in "[{":
        return value
    try:
        return json.loads(text)
    except ValueError:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return value


def _count(value: Any) -> float:
    """A style count: a number, or a dict of counts summed (Arena's `header_count_a: {"h1": 2, ...}`)."""
    if isinstance(value, Mapping):
        return float(sum(_count(v) for v in value.values()))
    if isinstance(value, (list, tuple)):
        return float(sum(_count(v) for v in value))
    if value is None:
        raise ValueError("missing")
    return float(value)


def _turn_texts(value: Any, role: str | None) -> list[str]:
    """The texts of a conversation cell: a list of {"role", "content"} turns, a list of strings (Kaggle's
    JSON-encoded `["...", "..."]`), or a string."""
    value = _parse_nested(value)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    out = []
    for turn in list(value):
        if isinstance(turn, Mapping):
            if role is None or turn.get("role") == role:
                out.append("" if turn.get("content") is None else str(turn.get("content")))
        elif turn is not None:
            out.append(str(turn))
    return out


# --------------------------------------------------------------------------------------------------
# Layouts -> per-vote arrays


def _outcome_columns(r: _Reader, winner_labels) -> dict[str, Any]:
    fmt = r.fmt
    if fmt == "arena-55k":
        cols = [r.column(k) for k in ("winner_model_a", "winner_model_b", "winner_tie")]
        hot = np.stack([r.numbers(c, "0 or 1") for c in cols], axis=1)
        bad = np.flatnonzero(~np.isin(hot, (0.0, 1.0)).all(axis=1))
        if bad.size:
            raise r.t.error(cols[0], f"one-hot winner columns {preview(cols)} must hold 0 or 1", bad)
        sums = hot.sum(axis=1)
        for count, what in ((0, "no 1"), (2, "two 1s"), (3, "three 1s")):
            bad = np.flatnonzero(sums == count)
            if bad.size:
                raise r.t.error(cols[0], f"{bad.size} row(s) of the one-hot winner columns {preview(cols)} have {what} "
                                         "(exactly one must be 1)", bad)
        return {"winner": np.argmax(hot, axis=1).astype(np.int64)}
    if fmt == "alpaca-eval":
        col = r.column("preference")
        pref = r.numbers(col, "AlpacaEval preference in [1, 2]")
        bad = np.flatnonzero((pref < 1.0) | (pref > 2.0))
        if bad.size:
            raise r.t.error(col, f"{bad.size} preference(s) outside [1, 2] (1 + P(generator_2 wins)), e.g. "
                                 f"{pref[bad[0]]!r}", bad)
        return {"p_a": 2.0 - pref}
    if fmt == "pandalm":
        raise AssertionError("pandalm is expanded per annotator")
    labels = winner_labels
    if labels is None and fmt == "llmfao":
        labels = _LLMFAO_LABELS
    out: dict[str, Any] = {}
    col = r.column("winner")
    try:
        out["winner"] = outcome_codes(r.values(col), r.n, winner_labels=labels, column=col, where=r.t.where)
    except ValueError as err:
        raise ValueError(f"{r.t.name}: {err}") from None
    p_col = r.column("p_a", required=False)
    if p_col is not None:
        p = r.numbers(p_col, "P(model_a wins)")
        bad = np.flatnonzero((p < 0) | (p > 1))
        if bad.size:
            raise r.t.error(p_col, f"{bad.size} soft outcome(s) outside [0, 1], e.g. {p[bad[0]]!r}", bad)
        expected = np.where(p > 0.5, A_WINS, np.where(p < 0.5, B_WINS, TIE))
        got = np.minimum(out["winner"], TIE)
        bad = np.flatnonzero(expected != got)
        if bad.size:
            raise r.t.error(p_col, f"{bad.size} soft outcome(s) disagree with the winner column {col!r} (a wins iff "
                                   "p_a > 0.5, b wins iff p_a < 0.5, a tie iff p_a == 0.5)", bad)
        out["p_a"] = p
    return out


def _style_features(r: _Reader, user: Mapping[str, tuple[str, str]] | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-side features: the layout's own (Arena `conv_metadata`, AlpacaEval lengths, answer texts),
    `<name>_a`/`<name>_b` numeric column pairs, then the user's `features={name: (col_a, col_b)}`."""
    feats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    frame = r.frame
    if r.fmt == "arena" and "conv_metadata" in frame.columns:
        meta = [_parse_nested(v) for v in r.values("conv_metadata")]
        if all(isinstance(v, Mapping) for v in meta):
            for name, pattern in _ARENA_STYLE.items():
                keys = (pattern.format("a"), pattern.format("b"))
                if not all(k in v for v in meta for k in keys):
                    continue
                sides = []
                for k in keys:
                    vals = np.empty(r.n)
                    for i, v in enumerate(meta):
                        try:
                            vals[i] = _count(v[k])
                        except (TypeError, ValueError):
                            raise r.t.error("conv_metadata", f"{k} is not a count ({v[k]!r})", [i]) from None
                    sides.append(vals)
                feats[name] = (sides[0], sides[1])
    if r.fmt == "alpaca-eval":
        cols = (r.column("length_a", required=False), r.column("length_b", required=False))
        if all(cols):
            feats["length"] = (r.numbers(cols[0], "response length"), r.numbers(cols[1], "response length"))
    if "length" not in feats:
        # Answer texts: their total characters (all assistant turns).
        pairs = {"arena": ("conversation_a", "conversation_b"), "arena-55k": (r.column("response_a", required=False),
                                                                             r.column("response_b", required=False)),
                 "alpaca-eval": (r.column("output_a", required=False), r.column("output_b", required=False))}
        cols = pairs.get(r.fmt)
        if cols and all(c is not None and c in frame.columns for c in cols):
            role = "assistant" if r.fmt == "arena" else None
            feats["length"] = tuple(
                np.asarray([float(sum(len(t) for t in _turn_texts(v, role))) for v in r.values(c)]) for c in cols)
    # `<name>_a` / `<name>_b` numeric pairs (what `Votes.to_frame()` writes).
    reserved = {"model", "winner_model", "conversation", "response", "output", "len_output", "generator", "length"}
    for col in frame.columns:
        if not (isinstance(col, str) and col.endswith("_a")) or col[:-2] in reserved or col[:-2] in feats:
            continue
        other = col[:-2] + "_b"
        if other in frame.columns and other not in r.used and col not in r.used:
            try:
                va = np.asarray([float(v) for v in r.values(col)])
                vb = np.asarray([float(v) for v in r.values(other)])
            except (TypeError, ValueError):
                continue
            feats[col[:-2]] = (va, vb)
            r.used.update((col, other))
    if "length_a" in frame.columns and "length_b" in frame.columns and "length" not in feats:
        feats["length"] = (r.numbers("length_a", "length"), r.numbers("length_b", "length"))
        r.used.update(("length_a", "length_b"))
    for name, spec in dict(user or {}).items():
        if isinstance(spec, str) or len(spec) != 2:
            raise TypeError(f"features[{name!r}] must be a pair of column names (side a, side b), got {spec!r}")
        missing = [c for c in spec if c not in frame.columns]
        if missing:
            raise ValueError(f"{r.t.name}: features[{name!r}]: no column(s) {preview(missing)}; available columns: "
                             f"{preview(list(frame.columns), 20)}")
        feats[name] = (r.numbers(spec[0], f"feature {name!r}"), r.numbers(spec[1], f"feature {name!r}"))
        r.used.update(spec)
    for name, (fa, fb) in feats.items():
        for side, vals in (("a", fa), ("b", fb)):
            bad = np.flatnonzero(~np.isfinite(vals))
            if bad.size:
                raise r.t.error(None, f"feature {name!r} (side {side}) has {bad.size} NaN/infinite value(s)", bad)
    return feats


def _prompts(r: _Reader) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(prompt ids [N] or None, prompt texts [N] or None)."""
    id_col = r.column("prompt_id", required=False)
    text_col = r.column("prompt", required=False)
    texts = None
    if text_col is not None:
        texts = np.asarray([_first_turn(v) for v in r.values(text_col)], dtype=object)
        bad = [i for i, t in enumerate(texts) if not str(t).strip()]
        if bad:
            raise r.t.error(text_col, f"{len(bad)} empty prompt(s)", bad)
    elif r.fmt == "arena" and "conversation_a" in r.frame.columns:
        texts = np.asarray([(_turn_texts(v, "user") or [""])[0] for v in r.values("conversation_a")], dtype=object)
        if any(not str(t).strip() for t in texts):
            texts = None  # no usable first user turn: prompt ids only
    ids = None
    if id_col is not None:
        ids = r.names("prompt_id")
    return ids, texts


def _first_turn(value: Any) -> str:
    """The prompt text of a cell: the text itself, or the first user turn of a list of turns."""
    if isinstance(value, str) and not value.strip().startswith(("[", "{")):
        return value
    turns = _turn_texts(value, "user")
    if not turns:
        turns = _turn_texts(value, None)
    return turns[0] if turns else ("" if value is None else str(value))


def _meta(r: _Reader, extra: set[str]) -> dict[str, np.ndarray]:
    out = {}
    for col in r.frame.columns:
        if not isinstance(col, str) or col in r.used or col in extra or col in _NOT_META:
            continue
        out[col] = r.values(col)
    return out


def _pandalm(r: _Reader, features_user) -> dict[str, Any]:
    keys = r.column("cmp_key")
    pairs = []
    for i, key in enumerate(r.values(keys)):
        parts = str(key).split("_")
        if len(parts) != 2 or not all(parts):
            raise r.t.error(keys, f"cmp_key {key!r} is not '<model1>_<model2>'", [i])
        pairs.append(parts)
    pairs = np.asarray(pairs, dtype=object)
    labels = []
    for ann in _PANDALM_ANNOTATORS:
        if ann not in r.frame.columns:
            raise r.t.error(None, f"missing column {ann!r} (PandaLM's three human labels annotator1..3); available "
                                  f"columns: {preview(list(r.frame.columns), 20)}")
        vals = r.numbers(ann, "label 0 (tie), 1 or 2")
        bad = np.flatnonzero(~np.isin(vals, (0.0, 1.0, 2.0)))
        if bad.size:
            raise r.t.error(ann, f"labels must be 0 (tie), 1 (response1) or 2 (response2), got {vals[bad[0]]!r}", bad)
        labels.append(vals.astype(np.int64))
        r.used.add(ann)
    code = {0: TIE, 1: A_WINS, 2: B_WINS}
    ids = r.names("prompt_id")
    instr = [str(v).strip() for v in r.values(r.column("instruction"))]
    extra = [("" if v is None else str(v)).strip() for v in r.values(r.column("input"))]
    text = np.asarray([f"{a}\n\n{b}" if b else a for a, b in zip(instr, extra)], dtype=object)
    resp = [r.values(r.column(k)) for k in ("response_a", "response_b")]
    length = [np.asarray([float(len("" if v is None else str(v))) for v in col]) for col in resp]
    reps = len(_PANDALM_ANNOTATORS)
    return {
        "model_a": np.repeat(pairs[:, 0], reps), "model_b": np.repeat(pairs[:, 1], reps),
        "winner": np.asarray([code[int(x)] for x in np.stack(labels, axis=1).reshape(-1)], np.int64),
        "prompt": np.repeat(ids, reps), "prompt_text": np.repeat(text, reps),
        "judge": np.tile(np.asarray(_PANDALM_ANNOTATORS, dtype=object), r.n),
        "features": {"length": (np.repeat(length[0], reps), np.repeat(length[1], reps))},
        "rows": np.repeat(np.arange(r.n), reps),
    }


def load_votes(
    source: Any,
    *,
    format: str | None = "auto",
    columns: Mapping[str, str] | None = None,
    winner_labels: Mapping[Any, str] | None = None,
    features: Mapping[str, tuple[str, str]] | None = None,
    models: Sequence[str] | None = None,
) -> Votes:
    r"""Read pairwise votes in any supported layout into `Votes`.

    Args:
        source: a pandas DataFrame or a path: `.csv`, `.tsv`, `.jsonl`/`.ndjson`, `.json` (a list of
            records or JSON Lines) or `.parquet`; text files may be gzip-compressed (`.csv.gz`, ...).
        format: `"auto"`/None (detected from the columns, see `FORMATS` and the module docstring) or one of
            `"arena"` (Chatbot Arena, FastChat `clean_battle`, MT-Bench human judgments), `"arena-55k"`,
            `"alpaca-eval"`, `"llmfao"`, `"pandalm"`.
        columns: maps the layout's keys to your column names, e.g. `{"model_a": "left", "winner": "verdict",
            "weight": "w", "prompt_id": "qid"}`. Keys (all layouts): `model_a, model_b, prompt_id` (ids),
            `prompt` (text), `judge`, `weight`, `count`; `arena`/`llmfao`: `winner`, `p_a` (soft outcome);
            `arena-55k`: `winner_model_a, winner_model_b, winner_tie, response_a, response_b`;
            `alpaca-eval`: `preference, length_a, length_b, output_a, output_b`. When the table matches no
            layout and `columns` is given, the `arena` layout is read through it.
        winner_labels: maps your winner labels to `model_a | model_b | tie | tie (bothbad) | both_bad` (default:
            those labels; `llmfao`: `left | right | tie`). Any other label is an error listing the unknown
            labels with their counts and the accepted ones.
        features: `{name: (column_a, column_b)}` per-side numeric features read from named columns (e.g.
            `{"length": ("len_a", "len_b")}`), besides the layout's own: Arena's `conv_metadata` (`length` =
            `sum_assistant_{a,b}_tokens`, `headers`, `lists`, `bold`: the markdown counts summed), AlpacaEval's
            `len_output_1/2` (`length`, characters), answer texts (`length`, characters), and any
            `<name>_a`/`<name>_b` numeric column pair.
        models: optional list fixing the model set and order.

    Returns:
        `Votes` in source order. Prompt ids come from `question_id`/`prompt_id` (Arena, MT-Bench),
        `instruction_idx` (AlpacaEval), `prompt` (LLMFAO), `idx` (PandaLM), or the prompt text;
        the judge from `judge`/`annotator`/`worker`; other columns go to `Votes.meta`.

    Raises:
        ValueError: one line naming the file, the column and the line/record/row: missing columns (with the
            available ones), unknown winner labels (with counts), a one-hot row with two 1s, soft outcomes
            outside [0, 1] / preferences outside [1, 2], empty names or prompts, NaN features, a model
            playing itself, non-UTF-8 text, invalid JSON, a JSON value that is not a list of records.

    Example:
        >>> votes = load_votes("../shared/data/llmfao/crowd-comparisons.csv")      # doctest: +SKIP
        >>> votes.num_models, votes.num_votes, votes.num_prompts                  # doctest: +SKIP
        (59, 8931, 13)
    """
    table = read_table(source)
    frame = table.frame
    if len(frame) == 0:
        raise ValueError(f"{table.name} has no votes (0 rows); nothing to rate")
    if format in (None, "auto"):
        fmt = detect_format([str(c) for c in frame.columns])
        if fmt is None:
            present = set(map(str, frame.columns))
            partial = max(_SIGNATURES, key=lambda sig: sum(c in present for c in sig[1]))
            if columns:
                fmt = "arena"
            elif sum(c in present for c in partial[1]) >= 2:
                missing = [c for c in partial[1] if c not in present]
                raise ValueError(
                    f"{table.name}: missing column(s) {preview(missing)} of the {partial[0]} layout ({', '.join(partial[1])}); "
                    f"available columns: {preview(list(frame.columns), 20)}; map yours with columns={{...}} "
                    "(command line: --columns KEY=COLUMN,...)")
            else:
                known = "; ".join(f"{f}: {', '.join(cols)}" for f, cols in _SIGNATURES)
                raise ValueError(
                    f"{table.name}: cannot tell the layout of the votes from its columns {preview(list(frame.columns), 12)}; "
                    f"known layouts (format=...) and their columns: {known}. Map yours with columns={{'model_a': ..., "
                    "'model_b': ..., 'winner': ...} (command line: --columns model_a=...,model_b=...,winner=...)")
    elif format in _LAYOUTS:
        fmt = format
    else:
        raise ValueError(f"format must be 'auto' or one of {preview(FORMATS)}, got {format!r}")
    mapping = dict(_LAYOUTS[fmt])
    if columns is not None:
        if not isinstance(columns, Mapping):
            raise TypeError(f"columns must be a mapping like {{'model_a': 'left'}}, got {type(columns).__name__}")
        unknown = [k for k in columns if k not in mapping]
        if unknown:
            raise ValueError(f"columns: unknown key(s) {preview(unknown)} for the {fmt} layout; expected keys among "
                             f"{preview(list(mapping), 20)}")
        for k, v in columns.items():
            if not isinstance(v, str):
                raise TypeError(f"columns[{k!r}] must be a column name (a string), got {v!r}")
            mapping[k] = v
    explicit = set(columns or ())
    r = _Reader(table, fmt, mapping, explicit)
    if fmt == "alpaca-eval":
        # AlpacaEval lists the baseline against itself (preference 1.5) to place it at 50 %: not a comparison.
        same = np.flatnonzero(r.names("model_a") == r.names("model_b"))
        if same.size:
            warnings.warn(f"{table.name}: dropped {same.size} row(s) comparing a model with itself "
                          f"({r.names('model_a')[same[0]]!r}; AlpacaEval lists its baseline against itself)",
                          UserWarning, stacklevel=2)
            table = table.take(np.setdiff1d(np.arange(len(frame)), same))
            r = _Reader(table, fmt, mapping, explicit)

    if fmt == "pandalm":
        cols = _pandalm(r, features)
        rows = cols.pop("rows")
        feats = cols.pop("features")
        feats.update({k: (np.repeat(a, 3), np.repeat(b, 3)) for k, (a, b) in _style_features(r, features).items()
                      if k != "length" or features})
        meta = {k: np.repeat(v, 3) for k, v in _meta(r, {"cmp_key", "idx", "instruction", "input"}).items()}
        where = lambda idx: table.where(sorted({int(rows[i]) for i in idx}))  # noqa: E731
        return _build(cols, feats, meta, None, None, models, table, where, ("model_a", "model_b"))

    names_a = r.names("model_a")
    names_b = r.names("model_b")
    cols: dict[str, Any] = {"model_a": names_a, "model_b": names_b, **_outcome_columns(r, winner_labels)}
    weight = r.optional_numbers("weight", "vote weight")
    if weight is not None:
        neg = np.flatnonzero(weight < 0)
        if neg.size:
            raise table.error(r.column("weight"), f"{neg.size} negative weight(s); weights must be >= 0", neg)
    count = r.optional_numbers("count", "vote count")
    if count is not None:
        bad = np.flatnonzero((count < 0) | (count != np.rint(count)))
        if bad.size:
            raise table.error(r.column("count"), f"{bad.size} count(s) are not integers >= 0", bad)
        count = count.astype(np.int64)
    ids, texts = _prompts(r)
    if ids is not None or texts is not None:
        cols["prompt"] = ids if ids is not None else texts
        cols["prompt_text"] = texts
    judge_col = r.column("judge", required=False)
    if judge_col is not None:
        cols["judge"] = r.names("judge")
    feats = _style_features(r, features)
    meta = _meta(r, set())
    return _build(cols, feats, meta, weight, count, models, table, table.where,
                  (r.column("model_a"), r.column("model_b")))


def _build(cols, feats, meta, weight, count, models, table: Table, where, model_cols) -> Votes:
    a, b = cols["model_a"], cols["model_b"]
    same = np.flatnonzero(a == b)
    if same.size:
        raise ValueError(f"{table.name}: {same.size} vote(s) have a model playing itself ({model_cols[0]} == "
                         f"{model_cols[1]}), e.g. {where(same)} ({a[same[0]]!r}); remove them first")
    texts = cols.get("prompt_text")
    if texts is not None and cols.get("prompt") is not None:
        # Texts must agree per prompt id; when they do not (e.g. several turns share a question id), keep the first.
        ids = np.asarray(cols["prompt"], dtype=object)
        _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        texts = np.asarray(texts, dtype=object)[first][inverse.reshape(-1)]
    try:
        return Votes.from_arrays(
            a, b, cols.get("winner"), p_a=cols.get("p_a"), weight=weight, count=count, prompt=cols.get("prompt"),
            prompt_text=texts, judge=cols.get("judge"), features=feats or None, meta=meta, models=models,
        )
    except ValueError as err:
        raise ValueError(f"{table.name}: {err}") from None

