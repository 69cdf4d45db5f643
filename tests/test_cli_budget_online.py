"""`jaxrank budget next` / `budget update`: a shell loop for a real judge, resumed from an orbax state
directory between calls, makes exactly the choices of the in-memory allocator (`allocation.select` /
`update`), and ends with a final report."""

import json

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from jaxrank import allocation
from jaxrank.cli import main

K, BUDGET, BATCH, DELTA = 5, 50, 5, 0.2          # robin-hood warm-up: ceil(4 ln 5) = 7 rounds = 35 queries
STREAMS = np.round(np.random.default_rng(0).normal(np.arange(K)[:, None], 0.2 + np.arange(K)[:, None], (K, BUDGET)), 3)


def _judge(item: int, seen: dict) -> float:
    j = seen.get(item, 0)
    seen[item] = j + 1
    return float(STREAMS[item, j])


def test_next_update_loop_is_the_in_memory_allocator(tmp_path, capsys):
    ids = [f"item-{i}" for i in range(K)]
    (tmp_path / "items.txt").write_text("\n".join(ids) + "\n")
    state_dir = tmp_path / "state"
    asked, seen = [], {}
    start = ["--items", str(tmp_path / "items.txt"), "--budget", str(BUDGET), "--batch", str(BATCH),
             "--delta", str(DELTA)]
    for step in range(BUDGET // BATCH):
        assert main(["budget", "next", "--state", str(state_dir), *(start if step == 0 else [])]) == 0
        printed = capsys.readouterr().out.split()
        assert main(["budget", "next", "--state", str(state_dir)]) == 0      # idempotent until answered
        assert capsys.readouterr().out.split() == printed
        items = [ids.index(x) for x in printed]
        asked.append(items)
        answers = tmp_path / f"answers{step}.jsonl"
        answers.write_text("".join(json.dumps({"id": ids[i], "score": _judge(i, seen)}) + "\n" for i in items))
        assert main(["budget", "update", "--state", str(state_dir), str(answers),
                     *(["--report", str(tmp_path / "report.csv")] if step == BUDGET // BATCH - 1 else [])]) == 0
    out = capsys.readouterr()
    assert "budget spent" in out.err and "50 of 50 queries" in out.out

    state, mem_seen = allocation.init(K, allocator="robin-hood", delta=DELTA), {}
    for items in asked:
        chosen = np.asarray(allocation.select(state, batch_size=BATCH)).tolist()
        assert chosen == items
        state = allocation.update(state, jnp.asarray(chosen, jnp.int32),
                                  jnp.asarray([_judge(i, mem_seen) for i in chosen], jnp.float32))
    saved = allocation.restore_allocator_state(state_dir / "allocator")
    np.testing.assert_array_equal(np.asarray(saved.counts), np.asarray(state.counts))
    np.testing.assert_array_equal(np.asarray(saved.mean), np.asarray(state.mean))
    np.testing.assert_array_equal(np.asarray(saved.m2), np.asarray(state.m2))
    report = pd.read_csv(tmp_path / "report.csv")
    assert report["queries"].sum() == BUDGET
    np.testing.assert_allclose(report["mean"], [STREAMS[i, :n].mean() for i, n in enumerate(report["queries"])],
                               rtol=1e-5)
    # After the budget: next prints the report, nothing to score.
    assert main(["budget", "next", "--state", str(state_dir)]) == 0
    assert "budget spent" in capsys.readouterr().err


@pytest.mark.parametrize("case, message", [
    ("no-state", "does not exist yet: pass --items ITEMS and --budget B"),
    ("unasked", "was not asked for; the items waiting are"),
    ("missing", "no score for"),
    ("not-number", "is not a number"),
])
def test_online_errors(case, message, tmp_path, capsys):
    (tmp_path / "items.txt").write_text("a\nb\nc\n")
    state = str(tmp_path / "s")
    if case == "no-state":
        assert main(["budget", "next", "--state", state]) == 2
    else:
        assert main(["budget", "next", "--state", state, "--items", str(tmp_path / "items.txt"), "--budget", "6",
                     "--batch", "2", "--allocator", "uniform"]) == 0
        text = {"unasked": "a 1\nc 2\n", "missing": "a 1\n", "not-number": "a x\nb 2\n"}[case]
        (tmp_path / "ans.txt").write_text(text)
        capsys.readouterr()
        assert main(["budget", "update", "--state", state, str(tmp_path / "ans.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxrank: error: ") and message in err
