"""`jaxrank.outputs`: atomic writes, --force rules, checks before work and again at the final rename."""

import errno
import os
import pathlib
import threading

import pandas as pd
import pytest

from jaxrank import outputs as O
from jaxrank.outputs import (
    MARKER,
    OutputError,
    OutputExistsError,
    OutputWriteError,
    check_distinct,
    check_output,
    check_workdir,
    new_file,
    write_dir,
    write_file,
    write_table,
    write_text,
)


def _leftovers(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".jaxrank-tmp-" in p.name)


def _fill(entries: dict):
    def write(tmp: pathlib.Path) -> None:
        tmp.mkdir()
        for name, text in entries.items():
            (tmp / name).write_text(text)

    return write


# ------------------------------------------------------------------------------------------------ files


def test_file_new_exists_force_and_mode(tmp_path):
    p = tmp_path / "a.txt"
    assert write_text(p, "one") == p
    assert p.read_text() == "one" and _leftovers(tmp_path) == []
    with pytest.raises(OutputExistsError, match="already exists; pass force=True"):
        write_text(p, "two")
    assert p.read_text() == "one"
    p.chmod(0o640)
    write_text(p, "two", force=True)
    assert p.read_text() == "two" and (p.stat().st_mode & 0o777) == 0o640 and _leftovers(tmp_path) == []


def test_full_disk_midway_keeps_the_old_file(tmp_path):
    p = tmp_path / "table.csv"
    p.write_text("old,content\n1,2\n")

    def write(tmp):
        with open(tmp, "w") as f:
            f.write("new,half")
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputWriteError, match="could not be written .No space left on device.; it was left as it was"):
        write_file(p, write, force=True, label="--out")
    assert p.read_text() == "old,content\n1,2\n" and _leftovers(tmp_path) == []
    # An exception that is not an OSError (a bug, Ctrl-C) leaves it as it was too.
    with pytest.raises(KeyboardInterrupt):
        write_file(p, lambda tmp: (tmp.write_text("x"), (_ for _ in ()).throw(KeyboardInterrupt())), force=True)
    assert p.read_text() == "old,content\n1,2\n" and _leftovers(tmp_path) == []


def test_pandas_failure_midway_keeps_the_old_table(tmp_path, monkeypatch):
    p = tmp_path / "lb.csv"
    p.write_text("model,rating\nold,1\n")
    original = pd.DataFrame.to_csv

    def half(self, path, **kw):
        original(self.iloc[:1], path, **kw)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half)
    with pytest.raises(OutputWriteError):
        write_table(pd.DataFrame({"model": ["a", "b"], "rating": [1, 2]}), p, force=True)
    assert p.read_text() == "model,rating\nold,1\n" and _leftovers(tmp_path) == []


def test_file_that_appears_during_the_run_is_kept(tmp_path):
    out = check_output(tmp_path / "x.csv", label="--out", hint="--force")

    def write(tmp):
        tmp.write_text("ours")
        (tmp_path / "x.csv").write_text("theirs")  # another run, or the user, meanwhile

    with pytest.raises(OutputExistsError, match="appeared while jaxrank was running"):
        write_file(out, write)
    assert (tmp_path / "x.csv").read_text() == "theirs" and _leftovers(tmp_path) == []


@pytest.mark.parametrize("fallback", ["link", "link+renameat2"])
def test_no_clobber_fallbacks(tmp_path, monkeypatch, fallback):
    """Without hard links (and without renameat2) the name is claimed with O_EXCL: still no overwrite."""
    def no_link(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(O.os, "link", no_link)
    if fallback == "link+renameat2":
        monkeypatch.setattr(O, "_renameat2", lambda src, dst, flags: False)
    p = tmp_path / "a.txt"
    write_text(p, "one")
    assert p.read_text() == "one"
    out = check_output(tmp_path / "b.txt")
    with pytest.raises(OutputExistsError, match="appeared"):
        write_file(out, lambda tmp: (tmp.write_text("ours"), (tmp_path / "b.txt").write_text("theirs")))
    assert (tmp_path / "b.txt").read_text() == "theirs" and _leftovers(tmp_path) == []


def test_concurrent_writers_one_wins(tmp_path):
    p = tmp_path / "out.jsonl"
    barrier = threading.Barrier(8)
    results = []

    def run(i):
        out = check_output(p)  # every run checks before its work: nothing there yet

        def write(tmp):
            tmp.write_text(f"run {i}\n")
            barrier.wait()  # all finish their work together, then race to the rename

        try:
            write_file(out, write)
            results.append(("ok", i))
        except OutputExistsError:
            results.append(("refused", i))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for kind, i in results if kind == "ok"]
    assert len(winners) == 1 and len(results) == 8
    assert p.read_text() == f"run {winners[0]}\n" and _leftovers(tmp_path) == []


def test_force_replaces_a_symlink_not_its_target(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    write_text(link, "new", force=True)
    assert target.read_text() == "keep me" and not link.is_symlink() and link.read_text() == "new"


def test_table_formats_by_suffix(tmp_path):
    frame = pd.DataFrame({"model": ["a", "b"], "rating": [1.5, 2.5]})
    for suffix in (".csv", ".tsv", ".jsonl", ".parquet"):
        write_table(frame, tmp_path / f"t{suffix}")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), frame)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "t.tsv", sep="\t"), frame)
    pd.testing.assert_frame_equal(pd.read_json(tmp_path / "t.jsonl", lines=True), frame)
    with pytest.raises(OutputError, match="unknown format '.xlsx'"):
        write_table(frame, tmp_path / "t.xlsx")


# ------------------------------------------------------------------------------------------------ checks


def test_checks_before_work(tmp_path, readonly_dir):
    votes = tmp_path / "votes.csv"
    votes.write_text("model_a,model_b,winner\n")
    (tmp_path / "adir").mkdir()
    cases = [
        (dict(path=tmp_path / "missing" / "x.csv"), "folder .* does not exist"),
        (dict(path=votes / "x.csv"), "is not a folder"),
        (dict(path=readonly_dir / "x.csv"), "cannot write in folder"),
        (dict(path=votes, force=True, inputs=[votes]), "is the input"),
        (dict(path=tmp_path, kind="dir", force=True, inputs=[votes]), "contains the input"),
        (dict(path=tmp_path / "adir", force=True), "is a directory; expected a file path"),
        (dict(path=votes, kind="dir", force=True), "exists and is not a directory"),
        (dict(path=tmp_path / "adir", kind="dir", force=True), "directory that jaxrank did not write"),
        (dict(path=tmp_path / "x.txt", suffixes=(".csv", ".parquet")), "unknown format '.txt'; use .csv or .parquet"),
        (dict(path=tmp_path / "x.csv"), None),
    ]
    for kwargs, message in cases:
        path = kwargs.pop("path")
        if message is None:
            assert check_output(path, **kwargs).path == path
            continue
        with pytest.raises(OutputError, match=message):
            check_output(path, label="--out", **kwargs)
    assert not (tmp_path / "x.csv").exists() and _leftovers(tmp_path) == []


def test_dot_and_cwd_are_never_replaced(tmp_path, monkeypatch):
    d = tmp_path / "ck"
    write_dir(d, _fill({"a": "1"}))
    monkeypatch.chdir(d)
    with pytest.raises(OutputError, match="holds the current working directory"):
        check_output(".", kind="dir", force=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputError, match="did not write"):
        check_output(".", kind="dir", force=True)


def test_distinct_outputs(tmp_path):
    a = check_output(tmp_path / "x.csv", label="--out")
    b = check_output(tmp_path / "x.csv", label="--plot")
    c = check_output(tmp_path / "d", kind="dir", label="--save")
    inside = O.Output(tmp_path / "d" / "x.csv", label="--out")
    with pytest.raises(OutputError, match="--out .* and --plot .* name the same path"):
        check_distinct(a, b)
    with pytest.raises(OutputError, match="one holds the other"):
        check_distinct(c, inside)
    check_distinct(a, c, None)
    with pytest.raises(OutputError, match="--checkpoint-dir .* and --save"):
        check_workdir(tmp_path / "d", label="--checkpoint-dir", outputs=[c])
    with pytest.raises(OutputError, match="--checkpoint-dir .* and --save"):
        check_workdir(tmp_path / "d" / "steps", label="--checkpoint-dir", outputs=[c])
    assert check_workdir(tmp_path / "steps", label="--checkpoint-dir", outputs=[a, c]) == tmp_path / "steps"


# ------------------------------------------------------------------------------------------------ directories


def test_dir_new_force_and_the_marker(tmp_path):
    d = tmp_path / "model"
    write_dir(d, _fill({"weights": "v1"}), kind="test")
    assert sorted(os.listdir(d)) == [MARKER, "weights"] and O.is_jaxrank_dir(d)
    assert O.read_marker(d)["entries"] == ["weights"] and O.read_marker(d)["kind"] == "test"
    with pytest.raises(OutputExistsError):
        write_dir(d, _fill({"weights": "v2"}))
    write_dir(d, _fill({"weights": "v2", "extra": "x"}), force=True)
    assert (d / "weights").read_text() == "v2" and _leftovers(tmp_path) == []
    # A file the user added inside makes it theirs: never replaced.
    (d / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="holds files jaxrank did not write .'notes.txt'."):
        write_dir(d, _fill({"weights": "v3"}), force=True)
    assert (d / "notes.txt").read_text() == "mine" and (d / "weights").read_text() == "v2"


@pytest.mark.parametrize("exchange", [True, False])
def test_dir_failure_midway_keeps_the_old_one(tmp_path, monkeypatch, exchange):
    if not exchange:  # the two-rename swap used where renameat2 is missing
        monkeypatch.setattr(O, "_renameat2", lambda src, dst, flags: False)
    d = tmp_path / "model"
    write_dir(d, _fill({"weights": "v1"}))

    def broken(tmp):
        tmp.mkdir()
        (tmp / "weights").write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputWriteError):
        write_dir(d, broken, force=True)
    assert (d / "weights").read_text() == "v1" and _leftovers(tmp_path) == []
    write_dir(d, _fill({"weights": "v2"}), force=True)
    assert (d / "weights").read_text() == "v2" and _leftovers(tmp_path) == []


def test_dir_appearing_during_the_run_is_kept(tmp_path, monkeypatch):
    for exchange in (True, False):
        if not exchange:
            monkeypatch.setattr(O, "_renameat2", lambda src, dst, flags: False)
        d = tmp_path / f"model{exchange}"
        out = check_output(d, kind="dir")

        def write(tmp):
            _fill({"w": "ours"})(tmp)
            d.mkdir()  # an empty directory appears (rename(2) alone would silently replace it)

        with pytest.raises(OutputExistsError, match="appeared"):
            write_dir(out, write)
        assert d.is_dir() and os.listdir(d) == [] and _leftovers(tmp_path) == []


def test_new_file_never_overwrites(tmp_path):
    runs = tmp_path / "runs"
    a = new_file(runs, "demo", ".jsonl", lambda p: p.write_text("a"))
    b = new_file(runs, "demo", ".jsonl", lambda p: p.write_text("b"))
    assert (a.name, b.name) == ("demo.jsonl", "demo-1.jsonl") and a.read_text() == "a" and b.read_text() == "b"
    with pytest.raises(OutputError, match="exists and is not a folder"):
        new_file(a, "demo", ".jsonl", lambda p: p.write_text("c"))


def test_prioritize_rows_by_suffix(tmp_path):
    from jaxrank.commands.prioritize import write_rows

    rows = [{"rank": 1, "id": "q1", "score": 0.5, "stderr": float("nan"), "selected": True},
            {"rank": 2, "id": "q2", "score": 0.25, "stderr": 0.1, "selected": False}]
    for suffix in (".jsonl", ".csv", ".parquet"):
        write_rows(rows, check_output(tmp_path / f"ranked{suffix}"))
    assert [line for line in (tmp_path / "ranked.jsonl").read_text().splitlines()][0].startswith('{"rank": 1')
    frame = pd.read_parquet(tmp_path / "ranked.parquet")
    assert list(frame["id"]) == ["q1", "q2"] and frame["stderr"].isna().tolist() == [True, False]
    assert list(pd.read_csv(tmp_path / "ranked.csv")["rank"]) == [1, 2]
