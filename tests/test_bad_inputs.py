"""Bad input, class by class, against every command: exit status 2 and ONE line `jaxrank: error: ...` that names
the problem, before any work starts (the work functions are replaced by ones that fail the test), and nothing
the user had is changed. In-process (`jaxrank.cli.main`) on tiny files; the language-model commands are held
to their checks before any model loads."""

import json
import pathlib

import numpy as np
import pandas as pd
import pytest

from jaxrank import cli
from jaxrank.outputs import MARKER

MODELS = ["alpha", "beta", "gamma"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Votes on 30 prompts (the shapes of tests/test_cli_p2l.py, so that the P2L compilations are shared),
    their features, scores, judge scores, prompts, costs, and a trained P2L model."""
    d = tmp_path_factory.mktemp("bad_inputs")
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(30, 4)).astype(np.float32)
    rows = []
    for p in range(30):
        for _ in range(12):
            i, j = rng.choice(3, 2, replace=False)
            winner = "tie" if rng.random() < 0.2 else ("model_a" if rng.random() < 0.5 + 0.1 * (i - j) else "model_b")
            rows.append({"model_a": MODELS[i], "model_b": MODELS[j], "winner": winner, "question": f"prompt number {p}",
                         "prompt_id": f"p{p:02d}"})
    pd.DataFrame(rows).to_csv(d / "votes.csv", index=False)
    np.save(d / "feats.npy", feats)
    pd.DataFrame({"prompt_id": [f"p{p:02d}" for p in range(30)], "score": rng.random(30)}).to_csv(d / "scores.csv",
                                                                                                    index=False)
    (d / "judge.jsonl").write_text("".join(json.dumps({"id": f"i{i}", "scores": rng.integers(1, 6, 4).tolist()}) + "\n"
                                           for i in range(10)))
    (d / "prompts.txt").write_text("".join(f"prompt number {p}\n" for p in range(30)))
    (d / "costs.json").write_text(json.dumps({"alpha": 1.0, "beta": 0.1, "gamma": 0.5}))
    code = cli.main(["p2l", "train", str(d / "votes.csv"), "--prompts-column", "question", "--features",
                     str(d / "feats.npy"), "--out", str(d / "model"), "--epochs", "15", "--lr", "0.05",
                     "--batch-size", "32", "--val-fraction", "0.2"])
    assert code == 0
    return d


@pytest.fixture
def no_work(monkeypatch):
    """Every command's work, replaced by a failure: a check that comes after it shows as a traceback."""
    import jaxrank.active
    import jaxrank.allocation
    import jaxrank.evaluation
    import jaxrank.lm
    import jaxrank.p2l
    import jaxrank.ratings

    def started(*args, **kwargs):
        raise AssertionError("the work started before the bad input was found")

    for module, name in ((jaxrank.ratings, "fit_bradley_terry"), (jaxrank.allocation, "simulate_sweep"),
                         (jaxrank.evaluation, "tie_reduction"), (jaxrank.evaluation, "leaderboard_stability"),
                         (jaxrank.evaluation, "design_curves"), (jaxrank.active, "inclusion_probabilities"),
                         (jaxrank.p2l, "train_p2l"), (jaxrank.p2l, "load_p2l"), (jaxrank.lm, "load_model")):
        monkeypatch.setattr(module, name, started)


def _commands(d: pathlib.Path) -> dict[str, tuple[list[str], str]]:
    """command -> (argv without its table output, the option naming its table/model output)."""
    return {
        "leaderboard": (["leaderboard", d / "votes.csv"], "--out"),
        "budget": (["budget", "simulate", d / "judge.jsonl", "--budget", "300"], "--out"),
        "evaluate ties": (["evaluate", "ties", "--scores", d / "scores.csv", "--votes", d / "votes.csv"], "--out"),
        "evaluate stability": (["evaluate", "stability", "--scores", d / "scores.csv", "--votes", d / "votes.csv"],
                               "--out"),
        "evaluate replay": (["evaluate", "replay", "--scores", d / "scores.csv", "--votes", d / "votes.csv",
                             "--prompt-column", "prompt_id", "--replays", "4", "--budgets", "0.5"], "--out"),
        "plan": (["plan", "--scores", d / "scores.csv", "--budget", "5"], "--out"),
        "p2l train": (["p2l", "train", d / "votes.csv", "--prompts-column", "question", "--features", d / "feats.npy"],
                      "--out"),
        "p2l leaderboard": (["p2l", "leaderboard", d / "model", d / "prompts.txt", "--features", d / "feats.npy"],
                            "--out"),
        "p2l route": (["p2l", "route", d / "model", d / "prompts.txt", "--features", d / "feats.npy", "--costs",
                       d / "costs.json", "--budget", "0.5"], "--out"),
        "prioritize": (["prioritize", "--model-a", "smollm2-135m-instruct", "--model-b", "gemma3-270m", "--prompts",
                        d / "prompts.txt"], "--out"),
    }


COMMANDS = ["leaderboard", "budget", "evaluate ties", "evaluate stability", "evaluate replay", "plan", "p2l train", "p2l leaderboard",
            "p2l route", "prioritize"]
DIR_OUTPUT = {"p2l train"}  # --out is a model directory


def _run(argv, capsys, *, alone: bool = True) -> str:
    """Run; the error line. `alone`: stderr is that line only (a check before any work); otherwise (an error
    found while working, after progress lines) it is the last line, the only error line, and no traceback."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, f"exit {code}: {err}"
    errors = [line for line in lines if line.startswith("jaxrank: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err
    if alone:
        assert len(lines) == 1, err
    return errors[0]


def _snapshot(folder: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _target(d: pathlib.Path, command: str, name: str) -> pathlib.Path:
    return d / (name if command in DIR_OUTPUT else f"{name}.csv")


# ------------------------------------------------------------------------------------------------ the table

# Input class -> (how to make the bad target for a command, what the message must say).
CLASSES = {
    "exists without --force": (lambda d, c, tmp: _existing(tmp, c), "already exists; pass --force to overwrite it"),
    "missing folder": (lambda d, c, tmp: tmp / "no" / "such" / ("m" if c in DIR_OUTPUT else "x.csv"), "does not exist"),
    "parent is a file": (lambda d, c, tmp: d / "votes.csv" / ("m" if c in DIR_OUTPUT else "x.csv"), "is not a folder"),
    "output is the input": (lambda d, c, tmp: d / ("prompts.txt" if c in ("p2l leaderboard", "p2l route", "prioritize")
                                                   else "scores.csv" if c == "plan"
                                                   else "judge.jsonl" if c == "budget" else "votes.csv"),
                            "the input"),
    "unknown suffix": (lambda d, c, tmp: tmp / "x.xlsx", "unknown format '.xlsx'"),
}


def _existing(tmp: pathlib.Path, command: str) -> pathlib.Path:
    if command in DIR_OUTPUT:
        p = tmp / "old-model"
        p.mkdir()
        (p / MARKER).write_text(json.dumps({"written_by": "jaxrank", "entries": []}))
    else:
        p = tmp / "old.csv"
        p.write_text("precious\n")
    return p


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("klass", list(CLASSES))
def test_output_targets(klass, command, work, tmp_path, no_work, capsys):
    if klass == "unknown suffix" and command in DIR_OUTPUT:
        pytest.skip("a model directory has no suffix")
    make, message = CLASSES[klass]
    argv, flag = _commands(work)[command]
    target = make(work, command, tmp_path)
    before = _snapshot(work)
    line = _run(argv + [flag, target], capsys)
    assert message in line and flag in line, line
    assert _snapshot(work) == before
    if klass == "exists without --force":
        assert target.exists() and (target.is_dir() or target.read_text() == "precious\n")


@pytest.mark.parametrize("command", COMMANDS)
def test_read_only_folder_is_found_before_any_work(command, work, readonly_dir, no_work, capsys):
    argv, flag = _commands(work)[command]
    line = _run(argv + [flag, readonly_dir / ("m" if command in DIR_OUTPUT else "x.csv")], capsys)
    assert "cannot write in folder" in line and flag in line


def test_leaderboard_outputs_that_would_replace_each_other(work, tmp_path, no_work, capsys):
    argv, _ = _commands(work)["leaderboard"]
    line = _run(argv + ["--save", tmp_path / "lb", "--out", tmp_path / "lb" / "table.csv"], capsys)
    assert "folder" in line and "does not exist" in line
    (tmp_path / "lb").mkdir()
    line = _run(argv + ["--save", tmp_path / "lb", "--out", tmp_path / "lb" / "table.csv", "--force"], capsys)
    assert "--save" in line and "did not write" in line


@pytest.mark.parametrize("argv_tail, message", [
    (["--save", "."], "contains the input"),  # the folder of the votes (the test runs in it)
    (["--save", "votes.csv"], "is the input"),
    (["--save", "keep"], "directory that jaxrank did not write"),
    (["--save", "scores.csv"], "exists and is not a directory"),
])
def test_force_never_replaces_what_jaxrank_did_not_write(argv_tail, message, work, no_work, capsys, monkeypatch):
    (work / "keep").mkdir(exist_ok=True)
    (work / "keep" / "a").write_text("hi")
    monkeypatch.chdir(work)
    before = _snapshot(work)
    line = _run(["leaderboard", "votes.csv"] + argv_tail + ["--force"], capsys)
    assert message in line and "--save" in line
    assert _snapshot(work) == before


def test_p2l_train_out_dot_and_out_as_checkpoint_dir(work, tmp_path, no_work, capsys, monkeypatch):
    argv, _ = _commands(work)["p2l train"]
    monkeypatch.chdir(work)
    assert "contains the input" in _run(argv + ["--out", ".", "--force"], capsys)
    line = _run(argv + ["--out", tmp_path / "d", "--checkpoint-dir", tmp_path / "d"], capsys)
    assert "--checkpoint-dir" in line and "--out" in line and "same path" in line
    line = _run(argv + ["--out", tmp_path / "d", "--checkpoint-dir", tmp_path / "d" / "steps"], capsys)
    assert "one holds the other" in line
    line = _run(argv + ["--out", tmp_path / "m", "--checkpoint-dir", work / "votes.csv"], capsys)
    assert "--checkpoint-dir" in line and "not a directory" in line


# ------------------------------------------------------------------------------------------------ memory plans


@pytest.mark.parametrize("argv_tail, command, flag", [
    (["--bootstrap", "100000000"], "leaderboard", "--bootstrap"),
    (["--runs", "100000000"], "budget", "--runs"),
    (["--num-random", "1000000000"], "evaluate ties", "--num-random"),
    (["--num-random", "100000000", "--bootstrap", "2"], "evaluate stability", "--num-random"),
    (["--num-random", "2", "--bootstrap", "100000000"], "evaluate stability", "--bootstrap"),
    (["--bootstrap", "1000000000"], "p2l leaderboard", "--bootstrap"),
    (["--replays", "1000000000"], "evaluate replay", "--replays"),
])
def test_sizes_that_cannot_fit_are_refused_with_the_estimate(argv_tail, command, flag, work, monkeypatch, capsys):
    monkeypatch.setenv("JAXRANK_MEMORY_LIMIT", "256M")
    argv, _ = _commands(work)[command]
    line = _run(argv + argv_tail, capsys)
    assert line.startswith(f"jaxrank: error: {flag} ") and "needs about" in line and f"use {flag} " in line, line


# ------------------------------------------------------------------------------------------------ other classes


def test_demo_options_before_the_models_load(work, tmp_path, no_work, capsys):
    line = _run(["demo", "--num-prompts", "100"], capsys)
    assert "--num-prompts must be between 1 and 24" in line
    line = _run(["demo", "--runs-dir", work / "votes.csv"], capsys)
    assert "--runs-dir" in line and "is not a folder" in line


def test_prioritize_duplicate_prompt_ids(work, tmp_path, no_work, capsys):
    prompts = tmp_path / "dup.jsonl"
    prompts.write_text('{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "y"}\n{"id": "a", "prompt": "z"}\n'
                       '{"prompt": "w"}\n{"id": "4", "prompt": "v"}\n')
    argv = ["prioritize", "--model-a", "smollm2-135m-instruct", "--model-b", "gemma3-270m", "--prompts", prompts]
    line = _run(argv, capsys)
    assert "duplicate prompt ids" in line and "id 'a' at line 1, line 3" in line and "id '4' at line 4, line 5" in line


def test_p2l_train_that_diverges_saves_nothing(work, tmp_path, capsys):
    argv, _ = _commands(work)["p2l train"]
    out = tmp_path / "model"
    line = _run(argv + ["--out", out, "--epochs", "15", "--lr", "1e6", "--batch-size", "32", "--val-fraction", "0.2"],
                capsys, alone=False)
    assert "training diverged at epoch 1" in line and "lower --lr" in line
    assert not out.exists() and not list(tmp_path.iterdir())


def test_p2l_train_force_keeps_the_old_model_until_the_new_one_is_complete(work, tmp_path, capsys, monkeypatch):
    from jaxrank.p2l import load_p2l

    argv, _ = _commands(work)["p2l train"]
    out = tmp_path / "model"
    opts = ["--out", out, "--epochs", "15", "--lr", "0.05", "--batch-size", "32", "--val-fraction", "0.2"]
    assert cli.main([str(a) for a in argv + opts]) == 0
    capsys.readouterr()
    before = _snapshot(out)
    # A diverging run and a run whose save fails midway (a full disk) both leave the old model in place.
    _run(argv + opts[:-6] + ["--epochs", "15", "--lr", "1e6", "--batch-size", "32", "--val-fraction", "0.2",
                             "--force"], capsys, alone=False)
    import orbax.checkpoint as ocp

    def full_disk(self, directory, *args, **kwargs):
        pathlib.Path(directory).mkdir(parents=True, exist_ok=True)
        (pathlib.Path(directory) / "half").write_text("x")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ocp.Checkpointer, "save", full_disk)
    line = _run(argv + opts + ["--force"], capsys, alone=False)
    assert "No space left on device" in line and "left as it was" in line
    assert _snapshot(out) == before and load_p2l(out).models == tuple(MODELS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_corrupt_model_directory(work, tmp_path, capsys):
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(work / "model", broken)
    for f in (broken / "metadata").iterdir():
        if f.name == "metadata":
            f.write_text('{"kind": "jaxrank.p2l", "mod')  # truncated
    line = _run(["p2l", "leaderboard", broken, work / "prompts.txt", "--features", work / "feats.npy"], capsys)
    assert str(broken) in line and ("incomplete" in line or "not a P2L model" in line)


def test_budget_out_parquet_is_parquet(work, tmp_path, capsys):
    out = tmp_path / "b.parquet"
    assert cli.main(["budget", "simulate", str(work / "judge.jsonl"), "--budget", "300", "--out", str(out)]) == 0
    frame = pd.read_parquet(out)
    assert list(frame.columns)[:3] == ["allocator", "budget", "wce_mean"] and len(frame) > 0


def test_leaderboard_run_that_fails_at_the_end_changes_nothing(work, tmp_path, capsys, monkeypatch):
    """A target that appears while the command computes is kept, and the command fails in one line."""
    out = tmp_path / "lb.csv"
    original = pd.DataFrame.to_csv

    def meanwhile(self, path, *args, **kwargs):
        out.write_text("theirs\n")  # another run finished first
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", meanwhile)
    line = _run(["leaderboard", work / "votes.csv", "--out", out], capsys, alone=False)
    assert "appeared while jaxrank was running" in line and out.read_text() == "theirs\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lb.csv"]
