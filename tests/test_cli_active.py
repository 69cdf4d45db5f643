"""`jaxrank leaderboard VOTES --design PLAN / --judge JUDGE_VOTES` and `active.design_leaderboard` on the vote
table, in process, on the shipped example (examples/active: 200 prompts, 5 models, a 60-prompt plan)."""

from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd
import pytest

from jaxrank import Votes, active, cli, load_votes

EX = pathlib.Path(__file__).resolve().parents[1] / "examples" / "active"


@pytest.fixture(scope="module")
def tables():
    return load_votes(EX / "human.csv"), load_votes(EX / "judge.csv"), active.load_plan(EX / "plan.csv")


def _run(capsys, *argv):
    code = cli.main(["leaderboard", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_votes_unit_rows_keep_weights_counts_and_soft_outcomes():
    v = Votes.from_arrays(["x", "y", "x", "x"], ["y", "z", "z", "y"], p_a=[1.0, 0.25, 0.0, 1.0],
                          prompt=["p1", "p2", "p2", "p1"], weight=[2.0, 1.0, 0.5, 1.0])
    rows = active.votes_unit_rows(v, ["p2", "p1", "p3"])
    got = sorted(zip(*(np.asarray(x).tolist() for x in rows)))
    # x>y twice on p1 (weights 2 + 1 merged), y vs z soft 1/4 on p2, z beats x on p2 (weight 0.5)
    assert got == [(0, 1, 0, 1, 3.0), (0, 2, 1, 0, 0.5), (1, 2, 0, 0, 0.25), (1, 2, 1, 0, 0.75)]
    with pytest.raises(ValueError, match=r"votes: votes on 1 prompt\(s\) absent from the plan: 'p1'"):
        active.votes_unit_rows(v, ["p2"])
    with pytest.raises(ValueError, match="no prompt ids"):
        active.votes_unit_rows(Votes.from_arrays(["x"], ["y"], ["model_a"]))


def test_design_fit_equals_the_unit_row_fit_and_the_cli(tables, tmp_path, capsys):
    human, judge, (ids, sample) = tables
    board = active.design_leaderboard(human, EX / "plan.csv")
    rows = active.votes_unit_rows(human, ids)
    ref = active.fit_design_weighted(rows, sample, num_models=human.num_models)
    np.testing.assert_allclose(board.estimate.theta, ref.theta, atol=1e-6)
    np.testing.assert_allclose(board.estimate.std_error, ref.std_error, rtol=1e-5)
    assert board.num_labelled == 60 and len(board.prompt_ids) == 200 and board.lam == 0.0
    out = tmp_path / "board.csv"
    code, stdout, err = _run(capsys, EX / "human.csv", "--design", EX / "plan.csv", "--out", out,
                             "--anchor", "gpt-4o=1200")
    assert code == 0, err
    assert "design-weighted (Horvitz-Thompson); 60 of 200 prompts labelled" in stdout
    table = pd.read_csv(out).set_index("model")
    assert list(table.columns) == ["rating", "lower", "upper", "rank_ub", "battles", "rank", "tied_group"]
    want = board.to_frame(anchor="gpt-4o", anchor_rating=1200).set_index("model")
    np.testing.assert_allclose(table.loc[want.index, "rating"], want["rating"], atol=1e-3)
    np.testing.assert_allclose(table.loc[want.index, "upper"] - table.loc[want.index, "lower"],
                               2 * 1.959964 * want["std_error"], rtol=1e-4)
    assert table.loc["gpt-4o", "rating"] == pytest.approx(1200.0, abs=1e-3)


def test_ppi_cli_prints_lambda_and_effective_labels(tables, capsys):
    human, judge, plan = tables
    both = active.design_leaderboard(human, plan, judge=judge)
    assert both.judge and 0.0 <= both.lam <= 1.0 and both.effective_labels > 0
    code, stdout, err = _run(capsys, EX / "human.csv", "--design", EX / "plan.csv", "--judge", EX / "judge.csv")
    assert code == 0, err
    assert f"lambda = {both.lam:.3f}; 60 of 200 prompts human-labelled, effective human labels " \
           f"{both.effective_labels:.1f}" in stdout
    # judge only: the labelled prompts as a simple random sample of the judge's; lambda = 0 is the HT fit
    srs = active.design_leaderboard(human, judge=judge, lam=0.0)
    ht = active.fit_design_weighted(active.votes_unit_rows(human, srs.prompt_ids), srs.sample,
                                    num_models=human.num_models)
    np.testing.assert_allclose(srs.estimate.theta, ht.theta, atol=1e-5)
    assert np.asarray(srs.sample.probability) == pytest.approx(0.3)
    code, stdout, err = _run(capsys, EX / "human.csv", "--judge", EX / "judge.csv", "--lam", 0.5)
    assert code == 0 and "lambda = 0.500 (fixed)" in stdout, err


def test_design_and_judge_bad_input_is_one_line_naming_the_argument(tables, tmp_path, capsys):
    human, judge, _ = tables
    plan = pd.read_csv(EX / "plan.csv", dtype={"prompt_id": str})
    unselected = plan.loc[~plan["selected"], "prompt_id"].iloc[0]
    zero = plan.copy()
    zero.loc[zero["selected"].idxmax(), "probability"] = 0.0
    zero.to_csv(tmp_path / "zero.csv", index=False)
    plan[plan["prompt_id"] != human.prompt_ids[0]].to_csv(tmp_path / "short.csv", index=False)
    judge.subset(judge.prompt != judge.prompt_ids.index(human.prompt_ids[1])).to_frame().to_csv(
        tmp_path / "judge_gap.csv", index=False)
    human_all = EX / "human_all.csv"
    cases = [
        ([human_all, "--design", EX / "plan.csv"], f"VOTES {human_all}: votes on 140 prompt(s) the plan did not select: "
                                                  f"'{plan['prompt_id'][~plan['selected']].iloc[0]}'"),
        ([EX / "human.csv", "--design", tmp_path / "short.csv"], f"prompt(s) absent from the plan: '{human.prompt_ids[0]}'"),
        ([EX / "human.csv", "--design", tmp_path / "zero.csv"], "--design"),
        ([EX / "human.csv", "--judge", tmp_path / "judge_gap.csv"],
         f"--judge {tmp_path / 'judge_gap.csv'}: the judge votes do not cover 1 human-labelled prompt(s): "
         f"'{human.prompt_ids[1]}'"),
        ([EX / "human.csv", "--design", EX / "plan.csv", "--judge", tmp_path / "judge_gap.csv"],
         "the judge votes do not cover 1 human-labelled prompt(s)"),
        ([EX / "human.csv", "--lam", 0.5], "--lam is the PPI weight of judge votes; it needs --judge"),
        ([EX / "human.csv", "--judge", EX / "judge.csv", "--lam", 2], "--lam must lie in [0, 1]"),
        ([EX / "human.csv", "--design", EX / "plan.csv", "--bootstrap", 100], "--bootstrap is not available with --design"),
        ([EX / "human.csv", "--design", EX / "plan.csv", "--ties", "grounded-rao-kupper"], "--ties grounded-rao-kupper"),
        ([EX / "human.csv", "--design", tmp_path / "missing.csv"], "--design"),
    ]
    assert unselected
    for argv, message in cases:
        code, _, err = _run(capsys, *argv)
        assert code == 2, (argv, err)
        assert err.startswith("jaxrank: error: ") and err.count("\n") == 1 and message in err, (argv, err)
    code, _, err = _run(capsys, EX / "human.csv", "--design", tmp_path / "zero.csv")
    assert "selected prompt(s) have probability 0" in err


def test_evaluate_replay_on_vote_tables(tmp_path, capsys):
    """`jaxrank evaluate replay` = `design_curves` on the vote tables."""
    import jax

    from jaxrank.evaluation import design_curves, load_scores

    human, judge = load_votes(EX / "human_all.csv"), load_votes(EX / "judge.csv")
    scores = load_scores(EX / "scores.csv")
    opts = dict(budgets=(0.3, 1.0), num_replays=8, designs=("uniform", "ppi"))
    curves = design_curves(jax.random.key(0), human, scores, judge=judge, **opts)
    assert curves.num_labels.tolist() == [60, 200] and np.isfinite(curves.width).all()
    assert np.all(curves.lam[1, :-1] > 0.5)  # the judge copies the first human vote 70 % of the time
    out, plot = tmp_path / "curves.csv", tmp_path / "curves.png"
    code = cli.main(["evaluate", "replay", "--votes", str(EX / "human_all.csv"), "--judge", str(EX / "judge.csv"),
                     "--scores", str(EX / "scores.csv"), "--budgets", "0.3,1", "--replays", "8", "--out", str(out),
                     "--plot", str(plot)])
    _, err = capsys.readouterr()
    assert code == 0, err
    frame = pd.read_csv(out)
    assert frame["design"].tolist() == ["uniform"] * 2 + ["proportional"] * 2 + ["ppi"] * 2 + ["ppi-proportional"] * 2
    got = frame[frame["design"].isin(["uniform", "ppi"])]["width"].to_numpy().reshape(2, 2)
    np.testing.assert_allclose(got, curves.width, rtol=1e-6)
    assert plot.stat().st_size > 10_000
    # bad input: one line naming the argument
    neg = load_scores(EX / "scores.csv").rename("score").reset_index()
    neg.loc[3, "score"] = -1.0
    neg.to_csv(tmp_path / "neg.csv", index=False)
    short = neg.iloc[1:].assign(score=1.0)
    short.to_csv(tmp_path / "short.csv", index=False)
    judge.subset(judge.prompt != 0).to_frame().to_csv(tmp_path / "judge_gap.csv", index=False)
    base = ["evaluate", "replay", "--votes", str(EX / "human_all.csv"), "--replays", "8"]
    cases = [
        (["--scores", str(tmp_path / "neg.csv")], f"--scores {tmp_path / 'neg.csv'}: "),
        (["--scores", str(tmp_path / "short.csv")], "prompts with votes have no score"),
        (["--scores", str(EX / "scores.csv"), "--judge", str(tmp_path / "judge_gap.csv")],
         f"--judge {tmp_path / 'judge_gap.csv'}: the judge votes do not cover 1 of the 200 prompts"),
        (["--scores", str(EX / "scores.csv"), "--budgets", "0.5,1.5"], "--budgets: 1.5 is outside (0, 1]"),
        (["--scores", str(EX / "scores.csv"), "--replays", "1"], "--replays must be >= 2"),
        (["--scores", str(EX / "scores.csv"), "--out", str(out)], "already exists; pass --force"),
    ]
    for argv, message in cases:
        code = cli.main(base + argv)
        _, err = capsys.readouterr()
        assert code == 2, (argv, err)
        assert err.startswith("jaxrank: error: ") and err.count("\n") == 1 and message in err, (argv, err)
