"""`jaxrank leaderboard` in-process: output columns, values, files, and one-line errors."""

import json

import jax
import numpy as np
import pandas as pd
import pytest

from jaxrank import cli
from jaxrank import load_votes
from jaxrank.ratings import fit_bradley_terry, load_leaderboard

COLUMNS = ["model", "rating", "lower", "upper", "rank_ub", "battles", "rank", "tied_group"]


@pytest.fixture(scope="module")
def arena_csv(tmp_path_factory):
    rng = np.random.default_rng(0)
    models = ["alpha", "beta", "gamma", "delta"]
    strength = np.array([0.8, 0.3, 0.0, -0.6])
    rows = []
    for _ in range(400):
        i, j = rng.choice(4, 2, replace=False)
        p = 1 / (1 + np.exp(-(strength[i] - strength[j])))
        u = rng.random()
        winner = "tie" if u < 0.15 else "tie (bothbad)" if u < 0.2 else "model_a" if rng.random() < p else "model_b"
        rows.append((models[i], models[j], winner))
    path = tmp_path_factory.mktemp("votes") / "arena.csv"
    pd.DataFrame(rows, columns=["model_a", "model_b", "winner"]).to_csv(path, index=False)
    return path


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_llmfao_sandwich_csv(shared_data, tmp_path, capsys):
    votes = shared_data / "llmfao" / "crowd-comparisons.csv"
    code, out, err = run(["leaderboard", votes, "--format", "llmfao", "--out", tmp_path / "lb.csv"], capsys)
    assert code == 0, err
    frame = pd.read_csv(tmp_path / "lb.csv")
    assert list(frame.columns) == COLUMNS
    assert frame["rating"].is_monotonic_decreasing
    fit = fit_bradley_terry(load_votes(votes))
    ref = dict(zip(fit.models, np.asarray(fit.ratings, np.float64)))
    np.testing.assert_allclose(frame["rating"], [ref[m] for m in frame["model"]], atol=1e-3)
    assert (frame["lower"] < frame["rating"]).all() and (frame["rating"] < frame["upper"]).all()
    assert frame["rank_ub"].iloc[0] == 1 and frame["battles"].sum() == 2 * 8931
    assert "sandwich" in out and "GPT 4" in out


def test_synthetic_bootstrap_jsonl_plot_save(arena_csv, tmp_path, capsys):
    out_file, plot, save = tmp_path / "lb.jsonl", tmp_path / "lb.png", tmp_path / "saved"
    argv = ["leaderboard", arena_csv, "--bootstrap", "40", "--seed", "3", "--ci", "0.9", "--out", out_file,
            "--plot", plot, "--save", save, "--anchor", "gamma=1100"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [list(r) for r in rows][0] == COLUMNS
    assert [r["model"] for r in rows] == ["alpha", "beta", "gamma", "delta"]
    gamma = next(r for r in rows if r["model"] == "gamma")
    assert gamma["rating"] == pytest.approx(1100.0, abs=1e-3)
    assert plot.stat().st_size > 1000 and plot.read_bytes()[:4] == b"\x89PNG"
    fit, boot = load_leaderboard(save)
    assert boot.num_rounds == 40 and boot.confidence == 0.9
    np.testing.assert_allclose(sorted(np.asarray(boot.lower)), sorted(r["lower"] for r in rows), atol=1e-3)
    # Same seed, same intervals; --force overwrites.
    code, _, err = run(argv + ["--force"], capsys)
    assert code == 0, err
    again = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert again == rows


def test_columns_and_labels_mapping_parquet(arena_csv, tmp_path, capsys):
    frame = pd.read_csv(arena_csv).rename(columns={"model_a": "x", "model_b": "y", "winner": "w"})
    frame["w"] = frame["w"].map({"model_a": "left", "model_b": "right", "tie": "draw", "tie (bothbad)": "draw"})
    votes = tmp_path / "votes.csv"
    frame.to_csv(votes, index=False)
    argv = ["leaderboard", votes, "--columns", "model_a=x,model_b=y,winner=w",
            "--winner-labels", "left=model_a,right=model_b,draw=tie", "--ties", "davidson", "--out", tmp_path / "o.parquet"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    out = pd.read_parquet(tmp_path / "o.parquet")
    assert list(out.columns) == COLUMNS and len(out) == 4


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--columns", "model_a"], "--columns: expected NAME=VALUE"),
        (["--columns", "player=x"], "--columns: unknown name 'player'"),
        (["--winner-labels", "left=winner"], "--winner-labels"),
        (["--anchor", "gamma"], "--anchor: expected MODEL=RATING"),
        (["--anchor", "omega=1000"], "--anchor: 'omega' is not one of"),
        (["--bootstrap", "1"], "--bootstrap"),
        (["--ci", "95"], "--ci"),
        (["--out", "table.xlsx"], "unknown format '.xlsx'"),
        (["--plot", "plot.jpg"], "--plot"),
        (["--ties", "grounded-rao-kupper"], "--ties grounded-rao-kupper needs --bootstrap N"),
    ],
)
def test_bad_options_exit_2_with_one_line(arena_csv, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(["leaderboard", arena_csv, *extra], capsys)
    assert code == 2
    assert err.startswith("jaxrank: error: ") and message in err and err.count("\n") == 1, err


def test_bad_inputs_exit_2(arena_csv, tmp_path, capsys):
    code, _, err = run(["leaderboard", tmp_path / "missing.csv"], capsys)
    assert code == 2 and "missing.csv does not exist" in err
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"model_a": ["a", "b"], "model_b": ["b", "c"], "winner": ["model_a", "draw"]}).to_csv(bad, index=False)
    code, _, err = run(["leaderboard", bad], capsys)
    assert code == 2 and "unknown winner label" in err and "'draw'" in err and err.count("\n") == 1
    nocol = tmp_path / "nocol.csv"
    pd.DataFrame({"model_x": ["a"], "model_b": ["b"], "winner": ["model_a"]}).to_csv(nocol, index=False)
    code, _, err = run(["leaderboard", nocol], capsys)
    assert code == 2 and "missing column" in err and "model_a" in err
    existing = tmp_path / "exists.csv"
    existing.write_text("x\n")
    code, _, err = run(["leaderboard", arena_csv, "--out", existing], capsys)
    assert code == 2 and "already exists; pass --force" in err
    assert existing.read_text() == "x\n"


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["leaderboard", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--ties", "--bootstrap", "--ci", "--columns", "--winner-labels", "--anchor", "--plot", "--save"):
        assert flag in out
