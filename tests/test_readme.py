"""The README and docs are tests: every fenced shell command that runs jaxrank names files that exist, and
runs as written (in-process, `jaxrank.cli.main`, from the repository root, outputs into a tmp dir), or as a
faithful shortened copy listed in SHORTENED below.

Commands are found automatically in README.md and docs/*.md (```bash / ```sh blocks, backslash continuations
joined, `$ ` prompts and `# comments` dropped), so sections that other branches add are picked up when they
merge. Keep it cheap: heavy commands go through SHORTENED (fewer rounds/runs: the same code path) or, when they
load language models, NOT_RUN_HERE (with the test that covers that path).
"""

import pathlib
import re
import shlex

import pytest

from jaxrank.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OUTPUT_OPTIONS = ("--out", "--plot", "--save", "--matrix", "--summary", "--figures", "--per-prompt", "--report")

# How a command is shortened for the test (the option -> the value used here). The code path is the same;
# only the number of rounds / runs / the budget shrinks.
SHORTENED = {"--bootstrap": "20", "--runs": "2", "--epochs": "2"}
# Commands that load language models (minutes on 2 CPU cores) are not run here: the path each one exercises
# is run, on a small scale, by the test named.
NOT_RUN_HERE = {
    "prioritize": "README.md's: test_readme_prioritize_runs (real models, shortened); others: "
                  "tests/test_cli_prioritize.py (tiny models)",
    "demo": "tests/test_cli_prioritize.py",
    "p2l train": "tests/test_cli_p2l.py (features of tiny encoders)",
    "p2l leaderboard": "needs `p2l train` output (runs/p2l); tests/test_cli_p2l.py",
    "p2l route": "needs `p2l train` output (runs/p2l); tests/test_cli_p2l.py",
}


def _commands():
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for block in re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", text, flags=re.S):
            if re.search(r"^\s*(while|for|until) .*", block, flags=re.M):
                continue   # a shell loop around the user's own program (e.g. a judge): its test is named in the doc
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                line = line.strip().removeprefix("$ ")
                if line.startswith("jaxrank "):
                    found.append((doc.relative_to(ROOT).as_posix(), line))
    return found


COMMANDS = _commands()


def _argv(line: str) -> list[str]:
    return shlex.split(line, comments=True)[1:]


def _kind(argv: list[str]) -> str:
    return " ".join(argv[:2]) if argv and argv[0] in ("p2l", "budget", "evaluate") else argv[0]


def _produced_earlier(doc: str, index: int) -> set[str]:
    """Paths written by the commands before this one in the same document (they exist once those ran)."""
    out = set()
    for d, line in COMMANDS[:index]:
        if d != doc:
            continue
        argv = _argv(line)
        for opt, value in zip(argv, argv[1:]):
            if opt in OUTPUT_OPTIONS:
                out.add(value)
    return out


def _inputs(argv: list[str]) -> list[str]:
    """Arguments that name input files: positionals and option values that look like paths."""
    paths, skip = [], False
    for i, tok in enumerate(argv):
        if skip:
            skip = False
            continue
        if tok in OUTPUT_OPTIONS:
            skip = True
            continue
        if tok.startswith("-"):
            continue
        if "/" in tok or re.search(r"\.(csv|jsonl|json|gz|parquet|tsv|txt)$", tok):
            if "=" not in tok:
                paths.append(tok)
    return paths


def test_the_docs_have_commands():
    assert len(COMMANDS) >= 10
    assert any(doc == "README.md" for doc, _ in COMMANDS)


@pytest.mark.parametrize("index", range(len(COMMANDS)), ids=[f"{d}:{c[:60]}" for d, c in COMMANDS])
def test_inputs_exist(index, shared_data):
    doc, line = COMMANDS[index]
    earlier = _produced_earlier(doc, index)
    missing = [p for p in _inputs(_argv(line)) if not (ROOT / p).exists() and p not in earlier
               and not any(p.startswith(e.rstrip("/") + "/") for e in earlier)]
    # A run directory written by a script of the same document (e.g. runs/pandalm by scripts/...) is allowed.
    missing = [p for p in missing if not p.startswith("runs/")]
    assert not missing, f"{doc}: `{line}` names input file(s) that do not exist: {missing}"


def _shortened(argv: list[str], tmp_path: pathlib.Path) -> list[str]:
    out = list(argv)
    for i, tok in enumerate(out[:-1]):
        if tok in SHORTENED:
            out[i + 1] = SHORTENED[tok]
        elif tok in OUTPUT_OPTIONS:
            out[i + 1] = str(tmp_path / pathlib.Path(out[i + 1]).name)
    return out


# docs/votes.md's commands run in tests/test_docs_votes.py already.
COVERED_ELSEWHERE = {"docs/votes.md": "tests/test_docs_votes.py"}
RUNNABLE = [i for i, (doc, line) in enumerate(COMMANDS) if _kind(_argv(line)) not in NOT_RUN_HERE
            and doc not in COVERED_ELSEWHERE and not any(p.startswith("runs/") for p in _inputs(_argv(line)))]


@pytest.mark.parametrize("index", RUNNABLE, ids=[f"{COMMANDS[i][0]}:{COMMANDS[i][1][:60]}" for i in RUNNABLE])
def test_command_runs(index, shared_data, tmp_path, monkeypatch, capsys):
    doc, line = COMMANDS[index]
    monkeypatch.chdir(ROOT)
    argv = _shortened(_argv(line), tmp_path)
    assert main(argv) == 0, f"{doc}: `{line}` (run as {argv}) failed:\n{capsys.readouterr().err}"
    for opt, value in zip(argv, argv[1:]):
        if opt in OUTPUT_OPTIONS:
            assert pathlib.Path(value).exists(), f"{doc}: `{line}` did not write {opt} {value}"


# README.md's `jaxrank prioritize` runs with the real models and file it names, as a faithful shortened copy:
# the options below replace (or are added to) the README's; every other option is the README's own. As
# written, the README's example (16 prompts, 2 samples, 24 tokens) takes minutes on a 2-core CPU (see
# docs/cli.md); this copy takes well under one once the models are loaded.
SHORTENED_PRIORITIZE = {"--limit": "2", "--num-samples": "2", "--max-new-tokens": "4"}
README_PRIORITIZE = [i for i, (doc, line) in enumerate(COMMANDS) if doc == "README.md"
                     and _kind(_argv(line)) == "prioritize"]


@pytest.mark.slow
@pytest.mark.parametrize("index", README_PRIORITIZE, ids=[COMMANDS[i][1][:60] for i in README_PRIORITIZE])
def test_readme_prioritize_runs(index, shared_data, smollm2, gemma3_270m, tmp_path, monkeypatch, capsys):
    import json

    doc, line = COMMANDS[index]
    monkeypatch.chdir(ROOT)
    argv = _shortened(_argv(line), tmp_path)
    for opt, value in SHORTENED_PRIORITIZE.items():
        if opt in argv:
            argv[argv.index(opt) + 1] = value
        else:
            argv += [opt, value]
    assert main(argv) == 0, f"{doc}: `{line}` (run as {argv}) failed:\n{capsys.readouterr().err}"
    err = capsys.readouterr().err
    assert "jaxrank prioritize: plan: 2 prompts x 2 samples" in err
    out = pathlib.Path(argv[argv.index("--out") + 1])
    rows = [json.loads(r) for r in out.read_text().splitlines()]
    assert [r["rank"] for r in rows] == [1, 2] and all(r["mode"] == "sequence" for r in rows)
    assert sum(r.get("selected", False) for r in rows) == 1  # --fraction 0.25 of 2: ceil -> 1
