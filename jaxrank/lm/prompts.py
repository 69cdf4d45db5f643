"""Prompt pools: reading PROMPTS files (JSONL / JSON / CSV / TXT) and the built-in prompt set.

A prompt file holds one prompt per record:

- JSONL (`.jsonl`, `.ndjson`) or a JSON list (`.json`): objects with a `prompt` string, or a `turns` list
  of strings (MT-Bench's `question.jsonl`: the first turn is used, since prioritization scores one
  model reply to one user message), and optionally an `id`, `question_id` or `uid` (Arena-Hard).
- CSV (`.csv`, `.tsv`): a header row with a `prompt` (or `turns`, holding one string) column and an
  optional `id`/`question_id`/`uid` column.
- TXT (any other suffix): one prompt per non-empty line.

Records without an id get their 1-based position in the file; ids must be unique.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
from collections.abc import Iterable

PROMPT_FIELDS = ("prompt", "turns")
ID_FIELDS = ("id", "question_id", "uid")  # uid: Arena-Hard's question files


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One prompt of the pool: `id` (a string) and `text` (the user message)."""

    id: str
    text: str


def _from_record(record: dict, where: str, position: int, path: pathlib.Path) -> Prompt:
    text = None
    if "prompt" in record:
        text = record["prompt"]
    elif "turns" in record:
        turns = record["turns"]
        if isinstance(turns, str):
            text = turns
        elif isinstance(turns, list) and turns and isinstance(turns[0], str):
            text = turns[0]
        else:
            raise ValueError(f"PROMPTS {path}: {where}: 'turns' must be a non-empty list of strings, got {turns!r}")
    else:
        found = ", ".join(repr(k) for k in record) or "none"
        raise ValueError(
            f"PROMPTS {path}: {where} has no 'prompt' or 'turns' field (fields found: {found})"
        )
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"PROMPTS {path}: {where}: the prompt is empty or not a string ({text!r})")
    pid = next((record[k] for k in ID_FIELDS if k in record and record[k] not in (None, "")), position)
    return Prompt(id=str(pid), text=text)


def _records_jsonl(path: pathlib.Path, text: str) -> Iterable[tuple[dict, str]]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"PROMPTS {path}: line {lineno} is not valid JSON ({err.msg})") from None
        if isinstance(record, str):
            record = {"prompt": record}
        if not isinstance(record, dict):
            raise ValueError(f"PROMPTS {path}: line {lineno} must be a JSON object, got {type(record).__name__}")
        yield record, f"line {lineno}"


def _records_json(path: pathlib.Path, text: str) -> Iterable[tuple[dict, str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        # Many ".json" prompt files are really JSON Lines.
        yield from _records_jsonl(path, text)
        return
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ValueError(f"PROMPTS {path}: expected a JSON list of objects, got {type(data).__name__}")
    for i, record in enumerate(data, start=1):
        if isinstance(record, str):
            record = {"prompt": record}
        if not isinstance(record, dict):
            raise ValueError(f"PROMPTS {path}: item {i} must be an object, got {type(record).__name__}")
        yield record, f"item {i}"


def _records_csv(path: pathlib.Path, text: str, delimiter: str) -> Iterable[tuple[dict, str]]:
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    columns = [c for c in (reader.fieldnames or []) if c is not None]
    if not any(c in PROMPT_FIELDS for c in columns):
        found = ", ".join(repr(c) for c in columns) or "none"
        raise ValueError(f"PROMPTS {path} has no 'prompt' or 'turns' column (columns found: {found})")
    for rowno, row in enumerate(reader, start=2):
        yield {k: v for k, v in row.items() if k is not None}, f"row {rowno}"


def read_prompts(path: str | pathlib.Path) -> list[Prompt]:
    """Read a prompt pool from a JSONL, JSON, CSV/TSV or TXT file (see the module docstring).

    Args:
      path: the file; its suffix picks the format (`.jsonl`/`.ndjson`, `.json`, `.csv`, `.tsv`, else text).

    Returns:
      The prompts in file order.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the file is empty, a record has no `prompt`/`turns` field (the fields found are named),
        a JSON line does not parse, a prompt is blank, or two records share an id (ids and lines named).

    Example:
      >>> read_prompts("shared/data/prompts/mt_bench_question.jsonl")[0].id
      '81'
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"PROMPTS {path} does not exist")
    if path.is_dir():
        raise ValueError(f"PROMPTS {path} is a directory; expected a .jsonl, .json, .csv or .txt file")
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        raise ValueError(f"PROMPTS {path} is empty; expected one prompt per line/record")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        records = _records_jsonl(path, text)
    elif suffix == ".json":
        records = _records_json(path, text)
    elif suffix in (".csv", ".tsv"):
        records = _records_csv(path, text, "\t" if suffix == ".tsv" else ",")
    else:
        records = (({"prompt": line}, f"line {i}") for i, line in enumerate(text.splitlines(), start=1) if line.strip())
    prompts, wheres = [], []
    for i, (record, where) in enumerate(records, start=1):
        prompts.append(_from_record(record, where, i, path))
        wheres.append(where)
    if not prompts:
        raise ValueError(f"PROMPTS {path} holds no prompts")
    _check_unique_ids(prompts, wheres, path)
    return prompts


def _check_unique_ids(prompts: list[Prompt], wheres: list[str], path: pathlib.Path) -> None:
    """Ids name the output rows (and a record without an id gets its position): two records with one id
    would be two rows no one can tell apart, so they are refused, naming the ids and where they are."""
    seen: dict[str, list[str]] = {}
    for p, where in zip(prompts, wheres):
        seen.setdefault(p.id, []).append(where)
    dup = {k: v for k, v in seen.items() if len(v) > 1}
    if dup:
        shown = "; ".join(f"id {k!r} at {', '.join(v[:4])}{', ...' if len(v) > 4 else ''}"
                          for k, v in list(dup.items())[:3])
        more = f" (and {len(dup) - 3} more ids)" if len(dup) > 3 else ""
        raise ValueError(f"PROMPTS {path}: duplicate prompt ids: {shown}{more}; every prompt needs its own id")


# Written for this project: short, varied user messages on which small chat models tend to differ
# (code, arithmetic, facts, creative writing, advice, other languages, formats, reasoning).
_BUILTIN = (
    ("code-python-reverse", "Write a Python function that reverses the words in a sentence."),
    ("code-sql", "Write an SQL query that returns the three most expensive products from a table named products."),
    ("code-explain", "Explain what this line of JavaScript does: const ids = users.map(u => u.id);"),
    ("math-arith", "What is 17 multiplied by 23? Show your working."),
    ("math-word", "A train travels 120 km in 1.5 hours. What is its average speed in km per hour?"),
    ("math-prime", "Is 91 a prime number? Explain briefly."),
    ("fact-capital", "What is the capital of Australia?"),
    ("fact-science", "Why is the sky blue?"),
    ("fact-history", "Who was the first person to walk on the Moon, and in which year?"),
    ("fact-biology", "How many chambers does the human heart have?"),
    ("creative-haiku", "Write a haiku about autumn rain."),
    ("creative-story", "Begin a short story about a lighthouse keeper who finds a message in a bottle."),
    ("creative-slogan", "Suggest a catchy slogan for a bakery that only sells sourdough bread."),
    ("advice-sleep", "Give me three tips for falling asleep faster."),
    ("advice-interview", "How should I prepare for my first job interview?"),
    ("advice-budget", "What is a simple way to start saving money each month?"),
    ("lang-french", "Traduis en anglais : « Le chat dort sur le canapé depuis ce matin. »"),
    ("lang-spanish", "¿Cuáles son los colores del arcoíris?"),
    ("lang-german", "Erkläre in einem Satz, was ein Computer ist."),
    ("lang-chinese", "请用一句话介绍一下长城。"),
    ("format-list", "List five fruits that are red, as a bulleted list."),
    ("format-json", 'Return a JSON object with the keys "name" and "age" for a fictional person.'),
    ("reason-logic", "If all bloops are razzies and all razzies are lazzies, are all bloops lazzies?"),
    ("chat-greeting", "Hi! How are you today?"),
)


def builtin_prompts() -> list[Prompt]:
    """The built-in prompt pool (24 prompts written for jaxrank: code, maths, facts, creative writing,
    advice, French/Spanish/German/Chinese, output formats, reasoning, small talk).

    Example:
      >>> len(builtin_prompts())
      24
    """
    return [Prompt(id=pid, text=text) for pid, text in _BUILTIN]
