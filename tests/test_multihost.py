"""Two local processes with jax.distributed (127.0.0.1, gloo CPU collectives), 2 CPU devices each.

- tests/multihost_worker.py: each process holds its own slice of one global batch of logits (4 + 3
  sequences); both must return the single-process scores of all 7 (`score_pairs_global`).
- tests/multihost_lm_worker.py: both processes run the language-model pipeline (`prioritize_prompts`:
  generation, teacher-forced token-mode and sequence-mode scoring) on two small random-weight Llamas
  sharded over meshes that span both processes; each must return the single-process, one-device rows.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import multihost_lm_worker as lm_worker
from multihost_worker import LOCAL_BATCHES, global_batch
from scoring_reference import ATOL, RTOL, reference_scores

from jaxrank import score_pairs

pytestmark = pytest.mark.multihost

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")
LM_WORKER = pathlib.Path(__file__).with_name("multihost_lm_worker.py")
REPO = WORKER.parents[1]
# The whole exchange (start-up, compilation of two meshes, collectives) must finish within this.
DEADLINE_S = 240
METRICS = ("kl", "cross_entropy", "jensen_shannon")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_workers(tmp_path: pathlib.Path, worker: pathlib.Path = WORKER, args: tuple[str, ...] = (),
                 suffix: str = ".npz", processes: int = len(LOCAL_BATCHES), while_waiting=None) -> list[pathlib.Path]:
    """Run `processes` copies of `worker`; `while_waiting()` (the single-process reference) runs here meanwhile."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    port = _free_port()
    outs = [tmp_path / f"process{i}{suffix}" for i in range(processes)]
    logs = [tmp_path / f"process{i}.log" for i in range(processes)]
    procs = []
    try:
        for i, (out, log) in enumerate(zip(outs, logs)):
            with log.open("w") as handle:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, str(worker), str(port), str(i), str(processes), str(out), *args],
                        env=env,
                        stdout=handle,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own process group, so a kill takes its children too
                    )
                )
        deadline = time.monotonic() + DEADLINE_S
        if while_waiting is not None:
            while_waiting()
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline:
                pytest.fail(f"multi-host workers did not finish within {DEADLINE_S} s:\n{_logs(logs)}")
            if any(p.poll() not in (None, 0) for p in procs):
                break  # one failed: the other would wait for it until its own timeout
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    codes = [p.returncode for p in procs]
    if any(code != 0 for code in codes):
        text = _logs(logs)
        if "gloo" in text.lower() and any(s in text.lower() for s in ("not available", "unsupported", "not built")):
            pytest.skip(f"gloo CPU collectives are unavailable in this jaxlib:\n{text[-2000:]}")
        pytest.fail(f"multi-host workers failed with exit codes {codes}:\n{text}")
    return outs


def _logs(logs: list[pathlib.Path]) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text()[-4000:]}" for log in logs if log.exists())


@pytest.mark.timeout(DEADLINE_S + 60)
def test_two_processes_score_a_global_batch(tmp_path):
    outs = _run_workers(tmp_path)
    a, b, mask = global_batch()
    single = score_pairs(a, b, mask, metrics=METRICS)
    for out in outs:
        got = np.load(out)
        assert int(got["process_count"]) == 2 and int(got["device_count"]) == 4
        for mesh in ("4x1", "2x2"):
            for name in METRICS:
                values = got[f"{mesh}/{name}"]
                assert values.shape == (sum(LOCAL_BATCHES),) and values.dtype == np.float32
                np.testing.assert_allclose(values, np.asarray(single[name]), rtol=RTOL, atol=ATOL)
                np.testing.assert_allclose(values.astype(np.float64), reference_scores(a, b, mask, name),
                                           rtol=RTOL, atol=ATOL)


# f32, sharded over two processes vs one device: the tolerance of tests/test_lm_sharding.py.
LM_TOL = 1e-5


@pytest.mark.timeout(DEADLINE_S + 60)
def test_two_processes_run_the_sharded_lm_pipeline(tmp_path):
    """The pipeline's device-to-host reads (generated tokens, token-mode scores, sequence log-probabilities)
    gather across processes: every process gets every prompt's row, equal to the one-device pipeline."""
    from lm_tokenizer import bpe_chat_tokenizer

    from jaxrank.lm.pipeline import prioritize_prompts

    tokenizer = bpe_chat_tokenizer(lm_worker.TOKENIZER_VOCAB, lm_worker.tokenizer_corpus())
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    want = {}

    def one_device():  # while the workers run
        a, b = lm_worker.loaded_pair(tokenizer)  # no mesh
        for name, (_, options) in lm_worker.RUNS.items():
            want[name] = prioritize_prompts(a, b, lm_worker.PROMPTS, **lm_worker.COMMON, **options)

    outs = _run_workers(tmp_path, LM_WORKER, (str(tmp_path / "tokenizer"),), suffix=".json", while_waiting=one_device)
    got = [json.loads(out.read_text()) for out in outs]
    for process in got:
        assert process["process_count"] == 2 and process["device_count"] == 4
    for name, (_, options) in lm_worker.RUNS.items():
        metrics = options.get("metrics") or (("kl", "cross_entropy") if options["mode"] == "token"
                                             else ("kl", "cross_entropy", "entropy"))
        for i, process in enumerate(got):
            run = process["runs"][name]
            assert run["processes"] == [0, 1] and not run["weights_addressable"], name
            rows = run["rows"]
            where = f"{name}, process {i}"
            assert [r["id"] for r in rows] == [r["id"] for r in want[name]], where
            assert [r["completion"] for r in rows] == [r["completion"] for r in want[name]], where
            for m in metrics + ("score",):
                np.testing.assert_allclose([r[m] for r in rows], [r[m] for r in want[name]], rtol=LM_TOL, atol=LM_TOL,
                                           err_msg=f"{where}: {m}")
