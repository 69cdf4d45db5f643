"""`jaxrank plan`, in process."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from jaxrank import active, cli


@pytest.fixture
def scores_file(tmp_path):
    rng = np.random.default_rng(0)
    ids = ["007", "7", "a b", "x"] + [f"p{i}" for i in range(36)]
    frame = pd.DataFrame({"prompt_id": ids, "score": np.round(rng.lognormal(0, 1, len(ids)), 4)})
    frame.loc[2, "score"] = 0.0
    path = tmp_path / "scores.csv"
    frame.to_csv(path, index=False)
    return path, frame


def _run(capsys, *argv):
    code = cli.main(["plan", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("design", ["systematic", "poisson"])
def test_plan_writes_probabilities_selection_and_weights(scores_file, tmp_path, capsys, design):
    path, frame = scores_file
    out = tmp_path / "plan.csv"
    code, stdout, err = _run(capsys, "--scores", path, "--budget", 12, "--uniform-mix", 0.3, "--seed", 3,
                             "--design", design, "--out", out)
    assert code == 0, err
    plan = pd.read_csv(out, dtype={"prompt_id": str}, keep_default_na=False)
    assert list(plan.columns) == list(active.PLAN_COLUMNS)
    assert plan["prompt_id"].tolist() == frame["prompt_id"].tolist()  # ids verbatim, file order
    want = active.inclusion_probabilities(frame["score"].to_numpy(), 12, uniform_mix=0.3)
    np.testing.assert_allclose(plan["probability"].to_numpy(), want, rtol=1e-12)
    sel = plan["selected"].to_numpy(bool)
    if design == "systematic":
        assert sel.sum() == 12
    np.testing.assert_allclose(plan["weight"].to_numpy()[sel], 1 / want[sel], rtol=1e-12)
    assert (plan["weight"].to_numpy()[~sel] == 0).all()
    assert (plan["design"] == design).all() and "Kish n_eff" in stdout
    ids, sample = active.load_plan(out)
    assert ids == frame["prompt_id"].tolist() and sample.design == design
    np.testing.assert_allclose(np.asarray(sample.weight, np.float64), plan["weight"].to_numpy(), rtol=1e-6)
    # the same seed draws the same prompts; --force is needed to replace the plan
    code, _, err = _run(capsys, "--scores", path, "--budget", 12, "--out", out)
    assert code == 2 and "already exists" in err and "--force" in err
    code, _, err = _run(capsys, "--scores", path, "--budget", 12, "--uniform-mix", 0.3, "--seed", 3, "--design", design,
                        "--out", out, "--force")
    assert code == 0 and pd.read_csv(out)["selected"].tolist() == sel.tolist()


def test_plan_budget_as_a_share(scores_file, tmp_path, capsys):
    path, _ = scores_file
    out = tmp_path / "plan.csv"
    code, _, err = _run(capsys, "--scores", path, "--budget", "25%", "--out", out)
    assert code == 0, err
    assert pd.read_csv(out)["selected"].sum() == 10


def test_plan_bad_input_is_one_line_naming_the_argument(scores_file, tmp_path, capsys):
    path, frame = scores_file
    out = tmp_path / "plan.csv"
    cases = [
        (["--budget", 41], "--budget 41 exceeds the number of prompts (40) in --scores"),
        (["--budget", 0], "--budget must be > 0"),
        (["--budget", "2.5"], "the systematic design labels exactly N prompts"),
        (["--budget", "abc"], "--budget: expected a number of prompts or a share"),
        (["--budget", 5, "--uniform-mix", 0], "--uniform-mix must lie in (0, 1]"),
        (["--budget", 2, "--uniform-mix", 0.01, "--max-weight", 25], "--uniform-mix >= "),
        (["--budget", 2, "--max-weight", 5], "no --uniform-mix does: even uniform sampling has weight 20"),
    ]
    for argv, message in cases:
        code, _, err = _run(capsys, "--scores", path, "--out", out, *argv)
        assert code == 2, (argv, err)
        assert err.startswith("jaxrank: error: ") and err.count("\n") == 1 and message in err, (argv, err)
    assert not out.exists()
    bad = frame.copy()
    bad.loc[3, "score"] = -1.0
    bad.to_csv(tmp_path / "neg.csv", index=False)
    code, _, err = _run(capsys, "--scores", tmp_path / "neg.csv", "--budget", 3, "--out", out)
    assert code == 2 and "--scores" in err and "negative" in err and err.count("\n") == 1
    bad.loc[3, "score"] = np.nan
    bad.to_csv(tmp_path / "nan.csv", index=False)
    code, _, err = _run(capsys, "--scores", tmp_path / "nan.csv", "--budget", 3, "--out", out)
    assert code == 2 and "--scores" in err and "NaN" in err


def test_load_plan_refuses_edited_weights_and_zero_probabilities(scores_file, tmp_path, capsys):
    path, _ = scores_file
    out = tmp_path / "plan.csv"
    assert _run(capsys, "--scores", path, "--budget", 12, "--out", out)[0] == 0
    plan = pd.read_csv(out, dtype={"prompt_id": str}, keep_default_na=False)
    edited = plan.copy()
    i = int(np.flatnonzero(edited["selected"])[0])
    edited.loc[i, "weight"] = 1.0 + edited.loc[i, "weight"]
    with pytest.raises(ValueError, match="plan: weight of prompt .* the weights must be the design's"):
        active.load_plan(edited)
    zero = plan.copy()
    zero.loc[i, "probability"] = 0.0
    with pytest.raises(ValueError, match="plan: 1 selected prompt\\(s\\) have probability 0"):
        active.load_plan(zero)
    with pytest.raises(ValueError, match="plan is missing column\\(s\\) weight"):
        active.load_plan(plan.drop(columns=["weight"]))
