"""docs/active.md runs as written: every ```python block (each on its own) and every `jaxrank` command of its
```bash blocks, from the repository root (on the shipped examples/active files)."""

import pathlib
import re
import shlex

import pytest

from jaxrank.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "active.md").read_text()
PYTHON = re.findall(r"```python\n(.*?)```", DOC, flags=re.S)
COMMANDS = [line for block in re.findall(r"```bash\n(.*?)```", DOC, flags=re.S)
            for line in block.splitlines() if line.startswith("jaxrank ")]


def test_the_doc_has_examples():
    assert len(PYTHON) >= 2 and len(COMMANDS) >= 5


@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_python_block_runs(index, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    exec(compile(PYTHON[index], f"docs/active.md block {index}", "exec"), {"__name__": "__docs__"})
    assert capsys.readouterr().out.strip()


@pytest.mark.parametrize("command", COMMANDS)
def test_command_runs(command, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert main(shlex.split(command)[1:]) == 0, capsys.readouterr().err
