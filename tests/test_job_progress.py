"""The long-job helpers: `JobProgress` (plan line, phase i/n, overall ETA, plain lines without a terminal) and
`jaxrank.outputs.Journal` (append-only, torn last line dropped, never restarted or replaced silently)."""

import json

import pytest

from jaxrank.commands._common import JobProgress
from jaxrank.outputs import Journal, OutputError, OutputExistsError, append_jsonl


def test_plain_lines_name_phase_items_and_eta(capsys):
    job = JobProgress("demo", [("first", 1.0), ("second", 3.0)], items=4, unit="prompts", estimate=60.0, every=0)
    job.plan("4 prompts")
    job.update("first", 1, 2)  # half of a quarter of the work
    job.items(1)
    job.update("first", 2, 2)
    job.update("second", 3, 3)
    job.items(4)
    job.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "jaxrank demo: plan: 4 prompts"
    assert lines[1].startswith("jaxrank demo: 0/4 prompts, phase 1/2 first, 12% of the work, 0:00 elapsed, ETA")
    assert lines[2].startswith("jaxrank demo: 1/4 prompts, phase 1/2 first, 12%")
    assert lines[3].startswith("jaxrank demo: 1/4 prompts, phase 1/2 first, 25%")
    assert len(lines) == 5 and lines[-1].startswith("jaxrank demo: done, 4/4 prompts")  # no line at 100 %


def test_the_eta_before_and_after_the_first_step():
    job = JobProgress("demo", [("only", 1.0)], estimate=90.0, every=1e9)
    assert "(estimate; measured after the first batch)" in job.eta(job.start)
    job.first = (job.start, 0.25)  # the first step (it compiled) ended at the start: measured from there
    job.done[0] = 0.5
    assert job.eta(job.start + 30.0) == "ETA 1:00"  # 25 % in 30 s, 50 % left
    job.done[0] = 0.75
    assert job.eta(job.start + 30.0) == "ETA 0:15"


def test_sequential_phases_follow_a_restarting_count(capsys):
    job = JobProgress("boot", [("a", 1.0), ("b", 1.0)], items=20, unit="rounds", every=0)
    step = job.sequential()
    for done in (0, 5, 10, 0, 10):
        step(done, 10)
    job.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[1].startswith("jaxrank boot: 5/20 rounds, phase 1/2 a, 25% of the work")
    assert lines[3].startswith("jaxrank boot: 10/20 rounds, phase 2/2 b, 50% of the work")


def test_a_status_line_while_a_long_step_reports_nothing(capsys):
    import time

    job = JobProgress("slow", [("compile", 1.0)], every=0.05)
    job.plan("one step")
    time.sleep(0.3)
    job.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) >= 3 and lines[1].startswith("jaxrank slow: phase 1/1 compile, 0% of the work")


def test_journal_append_resume_and_torn_line(tmp_path):
    path = tmp_path / "out.jsonl.journal.jsonl"
    j = Journal.open(path, kind="k", settings={"seed": 1}, resume=False)
    j.append([{"index": 0, "x": 0.1}, {"index": 1, "x": float("nan")}])
    with open(path, "a") as f:
        f.write('{"index": 2, "x"')  # killed mid-write
    with pytest.raises(OutputExistsError, match="holds 2 finished record"):
        Journal.open(path, kind="k", settings={"seed": 1}, resume=False, resume_hint="--resume")
    with pytest.raises(OutputError, match=r"other settings \(seed: 1 then, 2 now\)"):
        Journal.open(path, kind="k", settings={"seed": 2}, resume=True)
    with pytest.raises(OutputError, match="journal of 'k'"):
        Journal.open(path, kind="other", settings={"seed": 1}, resume=True)
    j = Journal.open(path, kind="k", settings={"seed": 1}, resume=True)
    assert [r["index"] for r in j.records] == [0, 1] and j.records[0]["x"] == 0.1
    j.append([{"index": 2, "x": 0.3}])
    assert [json.loads(line)["index"] for line in path.read_text().splitlines()[1:]] == [0, 1, 2]
    j.remove()
    assert not path.exists()


def test_journal_never_takes_over_a_users_file(tmp_path):
    path = tmp_path / "notes.journal.jsonl"
    path.write_text('{"a": 1}\n')
    for resume in (False, True):
        with pytest.raises(OutputError, match="not a jaxrank journal"):
            Journal.open(path, kind="k", settings={}, resume=resume)
    assert path.read_text() == '{"a": 1}\n'
    append_jsonl(tmp_path / "log.jsonl", [{"a": 1}])
    append_jsonl(tmp_path / "log.jsonl", [{"a": 2}])
    assert (tmp_path / "log.jsonl").read_text() == '{"a": 1}\n{"a": 2}\n'
