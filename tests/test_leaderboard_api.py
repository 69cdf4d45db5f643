"""`jaxrank.leaderboard` (the CLI's table in Python): filters, one vmapped fit over groups (held to separate
fits), baseline win rates (coverage on simulated arenas), pairwise matrices, `to_frame` on every result,
and the `jaxrank leaderboard` options built on it."""

import pathlib

import numpy as np
import pandas as pd
import jax
import pytest
from scipy.special import expit

import jaxrank
from jaxrank.cli import main
from jaxrank.ratings.bradley_terry import fit_bradley_terry_groups
from jaxrank.ratings.leaderboard import win_rate

ROOT = pathlib.Path(__file__).resolve().parents[1]
MT = "examples/votes/mt_bench.jsonl"


@pytest.fixture(scope="module")
def mt():
    return jaxrank.load_votes(ROOT / MT)


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def _arena(seed, theta, n):
    rng = np.random.default_rng(seed)
    m = theta.size
    a = rng.integers(0, m, n)
    b = (a + rng.integers(1, m, n)) % m
    outcome = (rng.random(n) >= expit(theta[a] - theta[b])).astype(np.int32)   # 0: a wins
    return jaxrank.Votes(models=[f"m{i}" for i in range(m)], a=a, b=b, outcome=outcome)


@pytest.mark.parametrize("ties", ["davidson"])   # "half": test_group_by_table_and_cli
def test_group_fit_is_the_separate_fits(mt, ties):
    turn = mt.meta["turn"]
    values = sorted(set(turn.tolist()))
    group = np.asarray([values.index(t) for t in turn])
    fits = fit_bradley_terry_groups(mt, group, len(values), ties=ties)
    for g in range(len(values)):
        alone = jaxrank.fit_bradley_terry(mt.subset(group == g), ties=ties)
        np.testing.assert_allclose(np.asarray(fits[g].ratings), np.asarray(alone.ratings), atol=1e-3)
        np.testing.assert_allclose(float(fits[g].log_likelihood), float(alone.log_likelihood), rtol=1e-5)


def test_group_fit_with_style_and_absent_models():
    votes = jaxrank.load_votes("examples/votes/arena.jsonl")
    lang = votes.meta["language"]
    values = sorted(set(lang.tolist()))
    group = np.asarray([values.index(x) for x in lang])
    fits = fit_bradley_terry_groups(votes, group, len(values), style="length")
    for g in range(len(values)):
        alone = jaxrank.fit_bradley_terry(votes.subset(group == g), style="length")
        np.testing.assert_allclose(np.asarray(fits[g].ratings), np.asarray(alone.ratings), atol=1e-2)
        np.testing.assert_allclose(np.asarray(fits[g].beta), np.asarray(alone.beta), atol=1e-4)


def test_leaderboard_table_is_the_cli_table(mt, tmp_path, capsys):
    lb = jaxrank.leaderboard(mt, filters={"turn": "2"}, baseline="gpt-4o")
    frame = lb.to_frame()
    assert list(frame.columns[:8]) == ["model", "rating", "lower", "upper", "rank_ub", "battles", "rank", "tied_group"]
    assert frame["battles"].sum() == 2 * 30 and (np.diff(frame["rating"]) <= 0).all()
    assert frame.set_index("model").loc["gpt-4o", "win_rate"] == 50.0
    assert (frame["win_rate_lower"] <= frame["win_rate"]).all() and (frame["win_rate"] <= frame["win_rate_upper"]).all()
    assert "gpt-4o" in str(lb)
    out = tmp_path / "lb.csv"
    assert main(["leaderboard", MT, "--filter", "turn=2", "--baseline", "gpt-4o", "--out", str(out),
                 "--matrix", str(tmp_path / "m.png"), "--title", "turn two"]) == 0
    assert "turn two" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_csv(out), frame, check_dtype=False, atol=1e-3)
    assert (tmp_path / "m.png").stat().st_size > 10_000


def test_group_by_table_and_cli(mt, capsys, tmp_path):
    lb = jaxrank.leaderboard(mt, group_by="turn", bootstrap=20, key=jax.random.key(0))
    assert lb.groups == ["1", "2"] and set(lb.frame["group"]) == {"1", "2"}
    for g in lb.groups:
        rows = lb.frame[lb.frame["group"] == g]
        alone = jaxrank.fit_bradley_terry(mt.subset(mt.meta["turn"] == g)).to_frame()
        np.testing.assert_allclose(rows["rating"].to_numpy(), alone["rating"].to_numpy(), atol=1e-3)
        assert sorted(rows["rank"]) == list(range(1, len(rows) + 1))
    assert main(["leaderboard", MT, "--group-by", "turn", "--out", str(tmp_path / "g.csv")]) == 0
    text = capsys.readouterr().out
    assert "turn = 1" in text and "turn = 2" in text
    assert set(pd.read_csv(tmp_path / "g.csv")["group"]) == {1, 2}


@pytest.mark.parametrize("argv, message", [
    (["--filter", "turn=3"], "column 'turn' never takes that value; its values (votes): 1 (30), 2 (30)"),
    (["--filter", "lang=en"], "no column 'lang' in these votes; columns: turn, judge, prompt_id, model"),
    (["--filter", "turn"], "--filter: expected COL=VALUE"),
    (["--group-by", "nope"], "no column 'nope'"),
    (["--baseline", "gpt-5"], "--baseline: 'gpt-5' is not one of the 5 models"),
    (["--group-by", "turn", "--plot", "x.png"], "--plot is not available with --group-by"),
])
def test_bad_options_are_one_line_errors(argv, message, capsys):
    assert main(["leaderboard", MT, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxrank: error: ") and message in err and err.count("\n") == 1


@pytest.mark.slow
def test_baseline_win_rate_interval_coverage():
    """95 % sandwich interval of the win rate against a baseline: covers the true win rate 93-97 % of 400
    simulated arenas (4 models, 300 votes each)."""
    theta = np.array([0.6, 0.2, 0.0, -0.5])
    truth = 100 * expit(theta - theta[2])
    hits = np.zeros(4)
    replays = 400
    for seed in range(replays):
        votes = _arena(seed, theta, 300)
        fit = jaxrank.fit_bradley_terry(votes)
        wr = win_rate(fit, jaxrank.sandwich_intervals(votes, fit), "m2")
        hits += (wr["win_rate_lower"] <= truth) & (truth <= wr["win_rate_upper"])
    coverage = hits[[0, 1, 3]] / replays
    assert ((coverage >= 0.93) & (coverage <= 0.97)).all(), coverage


def test_pairwise_matrices(mt):
    lb = jaxrank.leaderboard(mt)
    mats = lb.matrices()
    battles = mats["battles"].to_numpy()
    np.testing.assert_allclose(battles, battles.T)
    assert battles.sum() == 2 * mt.num_votes
    frac = mats["win_fraction"].to_numpy()
    both = np.isfinite(frac) & np.isfinite(frac.T)
    np.testing.assert_allclose((frac + frac.T)[both], 1.0)
    pred = mats["predicted"].to_numpy()
    off = ~np.eye(len(pred), dtype=bool)
    np.testing.assert_allclose((pred + pred.T)[off], 1.0, atol=1e-6)
    # Brute-force reference for one pair.
    i, j = mt.models.index("gpt-4o"), mt.models.index("mixtral-8x7b")
    sel = ((mt.a == i) & (mt.b == j)) | ((mt.a == j) & (mt.b == i))
    s = np.where(mt.a[sel] == i, mt.score_a()[sel], 1 - mt.score_a()[sel])
    assert mats["win_fraction"].loc["gpt-4o", "mixtral-8x7b"] == pytest.approx(s.mean())


def test_to_frame_on_every_result(mt):
    boot = jaxrank.bootstrap_ratings(jax.random.key(0), mt, num_rounds=20)
    f = boot.to_frame()
    assert list(f.columns) == ["model", "rating", "median", "lower", "upper", "std_error"] and len(f) == 5
    sw = jaxrank.sandwich_intervals(mt, boot.fit).to_frame()
    assert list(sw.columns) == ["model", "rating", "std_error", "lower", "upper"]
    assert (np.diff(sw["rating"]) <= 0).all()
    elo = jaxrank.elo_permutations(jax.random.key(0), mt, num_permutations=8).to_frame()
    assert list(elo.columns) == ["model", "median", "lower", "upper", "spread"]
    sampler = jaxrank.allocation.GaussianSampler(jax.numpy.linspace(1, 5, 8), jax.numpy.full(8, 0.5))
    sim = jaxrank.simulate(jax.random.key(0), sampler, "uniform", 64, checkpoints=[32, 64], num_runs=3).to_frame()
    assert list(sim.columns) == ["run", "budget", "wce", "mae", "rmse"] and len(sim) == 6
    routes = jaxrank.route(np.array([[0.6, 0.4], [0.3, 0.7]]), np.array([1.0, 0.1]), budget=0.5).to_frame(["x", "y"])
    assert list(routes.columns[:4]) == ["prompt", "chosen", "expected_win_rate", "expected_cost"]
