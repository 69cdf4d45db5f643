"""Tests of jaxrank.evaluation (tie reduction, leaderboard stability, budget curves, rank metrics), the
evaluation figures and `jaxrank evaluate`. Shapes are shared between tests so that each kernel compiles once."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import scipy.optimize
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrank import Votes, load_votes
from jaxrank import evaluation as E
from jaxrank.cli import main
from jaxrank.ratings import elo_permutations
from jaxrank.votes import A_WINS, B_WINS, TIE, TIE_BOTHBAD

FRACTIONS = (0.25, 0.5, 1.0)
NUM_RANDOM = 8
NUM_BOOTSTRAP = 8
NUM_PERMUTATIONS = 8
LABELS = ("model_a", "model_b", "tie", "tie (bothbad)")


# --------------------------------------------------------------------------------------------------
# Data


def _vote_frame() -> pd.DataFrame:
    """24 prompts x 6 votes among 5 models. Models m0..m3 play on every prompt; m4 plays only on prompts
    18..23 (so the top 25 % by a score decreasing in the prompt index never sees it). Tie propensity
    differs between prompts; outcomes from a Bradley-Terry model with ties."""
    rng = np.random.default_rng(7)
    theta = np.array([0.8, 0.3, 0.0, -0.4, 0.2])
    rows = []
    for p in range(24):
        tie_p = 0.1 + 0.6 * rng.random()
        pool = [0, 1, 2, 3, 4] if p >= 18 else [0, 1, 2, 3]
        for v in range(6):
            i, j = rng.choice(pool, 2, replace=False)
            if p >= 18 and v < 3:  # make sure m4 plays on each of these prompts
                i, j = 4, pool[v]
            u = rng.random()
            if u < tie_p:
                w = "tie" if rng.random() < 0.7 else "tie (bothbad)"
            else:
                w = "model_a" if rng.random() < 1 / (1 + math.exp(theta[j] - theta[i])) else "model_b"
            rows.append((f"q{p:02d}", f"m{i}", f"m{j}", w))
    return pd.DataFrame(rows, columns=["prompt_id", "model_a", "model_b", "winner"])


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return _vote_frame()


@pytest.fixture(scope="module")
def votes(frame) -> Votes:
    return load_votes(frame)


@pytest.fixture(scope="module")
def scores(votes) -> dict:
    """Decreasing in the prompt index: the top 25 % are q00..q05 (no m4)."""
    return {p: float(votes.num_prompts - i) for i, p in enumerate(votes.prompt_ids)}


@pytest.fixture(scope="module")
def stability_bt(votes, scores):
    return E.leaderboard_stability(jax.random.key(0), scores, votes, fractions=FRACTIONS, num_random=NUM_RANDOM,
                                   num_bootstrap=NUM_BOOTSTRAP)


@pytest.fixture(scope="module")
def stability_elo(votes, scores):
    return E.leaderboard_stability(jax.random.key(0), scores, votes, fractions=FRACTIONS, method="elo",
                                   num_random=NUM_RANDOM, num_permutations=NUM_PERMUTATIONS)


# --------------------------------------------------------------------------------------------------
# Loading


def test_load_prompt_votes(frame, votes):
    assert votes.num_votes == len(frame) == 144
    assert votes.num_prompts == 24 and votes.models == ("m0", "m1", "m2", "m3", "m4")
    codes = {name: code for code, name in enumerate(LABELS)}
    np.testing.assert_array_equal(votes.outcome, [codes[w] for w in frame["winner"]])
    np.testing.assert_array_equal(np.asarray(votes.models)[votes.a], frame["model_a"])
    np.testing.assert_array_equal(np.asarray(votes.prompt_ids)[votes.prompt], frame["prompt_id"])
    assert (A_WINS, B_WINS, TIE, TIE_BOTHBAD) == (0, 1, 2, 3)
    # Other column names through the mapping (prompt column included) and other winner labels.
    other = frame.rename(columns={"prompt_id": "prompt", "model_a": "left"}).replace(
        {"winner": {"model_a": "L", "model_b": "R"}})
    again = load_votes(
        other, columns={"model_a": "left", "prompt_id": "prompt"},
        winner_labels={"L": "model_a", "R": "model_b", "tie": "tie", "tie (bothbad)": "tie (bothbad)"},
    )
    for name in ("prompt", "a", "b", "outcome"):
        np.testing.assert_array_equal(getattr(again, name), getattr(votes, name))


def test_prompt_votes_checks_and_helpers(votes):
    def make(prompt_ids, prompt, a, b, outcome, models):
        return Votes(models=models, a=a, b=b, outcome=outcome, prompt=prompt, prompt_ids=prompt_ids)

    with pytest.raises(ValueError, match=r"b must have shape \[N\] = \(2,\)"):
        make(("p",), [0, 0], [0, 1], [1], [0, 1], ("x", "y"))
    with pytest.raises(ValueError, match=r"prompt must hold indices in \[0, 1\)"):
        make(("p",), [0, 1], [0, 1], [1, 0], [0, 1], ("x", "y"))
    with pytest.raises(ValueError, match="playing itself"):
        make(("p",), [0], [1], [1], [0], ("x", "y"))
    with pytest.raises(ValueError, match=r"outcome must hold values in \[0, 4\)"):
        make(("p",), [0], [0], [1], [4], ("x", "y"))
    np.testing.assert_array_equal(votes.votes_per_prompt(), np.full(24, 6))
    assert votes.ties_per_prompt().sum() == votes.is_tie().sum() == np.isin(votes.outcome, [TIE, TIE_BOTHBAD]).sum()
    sub = votes.subset_prompts([0, 2]).drop_empty_prompts()
    assert sub.num_votes == 12 and set(sub.prompt.tolist()) == {0, 1}
    assert sub.prompt_ids == (votes.prompt_ids[0], votes.prompt_ids[2]) and sub.models == votes.models
    assert votes.subset_prompts([votes.prompt_ids[0], votes.prompt_ids[2]]).num_votes == 12
    # Prompt ids without votes never enter the tie rates (they would give 0 / 0): the evaluation drops them.
    padded = votes.replace(prompt_ids=votes.prompt_ids + ("unvoted",))
    assert padded.num_prompts == 25 and padded.drop_empty_prompts().prompt_ids == votes.prompt_ids
    scores = {p: float(i) for i, p in enumerate(padded.prompt_ids)}
    key = jax.random.key(0)
    np.testing.assert_array_equal(E.tie_reduction(key, scores, padded, fractions=[0.5, 1.0], num_random=4).reduction,
                                  E.tie_reduction(key, scores, votes, fractions=[0.5, 1.0], num_random=4).reduction)
    rows = votes.rows()
    assert votes.num_votes == 144 and float(rows.count.sum()) == votes.num_votes


def test_subset_sizes_round_as_prioritize():
    from jaxrank import prioritize

    for p in (1, 7, 10, 13, 999):
        for q in (0.01, 0.1, 0.2, 0.3, 1 / 3, 0.7, 1.0):
            assert E._subset_sizes(np.array([q]), p)[0] == len(prioritize(np.zeros(p), fraction=q))


def test_load_prompt_votes_errors(frame, tmp_path):
    no_prompts = load_votes(frame.drop(columns="prompt_id"))
    with pytest.raises(ValueError, match="votes have no prompt ids"):
        E.tie_reduction(jax.random.key(0), {"q00": 1.0}, no_prompts)
    with pytest.raises(ValueError, match="missing column.*'model_b'"):
        load_votes(frame.drop(columns="model_b"))
    bad = frame.copy()
    bad.loc[3, "prompt_id"] = None
    with pytest.raises(ValueError, match="column 'prompt_id', row 3: 1 missing"):
        load_votes(bad)
    with pytest.raises(ValueError, match="unknown key"):
        load_votes(frame, columns={"player": "x"})
    path = tmp_path / "votes.jsonl"
    frame.to_json(path, orient="records", lines=True)
    assert load_votes(path).num_votes == len(frame)


def test_prompt_ids_read_verbatim(tmp_path):
    """Distinct ids never merge: a CSV id column is text ("8", "08", "8.0", "1e3" are four prompts); JSON
    numbers are their decimal strings and match the same ids written in a CSV."""
    ids = ["8", "08", "8.0", "1e3"]
    frame = pd.DataFrame({"prompt_id": ids, "model_a": ["x"] * 4, "model_b": ["y"] * 4,
                          "winner": ["tie", "model_a", "model_b", "tie"]})
    frame.to_csv(tmp_path / "v.csv", index=False)
    votes = load_votes(tmp_path / "v.csv")
    assert votes.prompt_ids == ("08", "1e3", "8", "8.0") and votes.num_prompts == 4
    np.testing.assert_array_equal(np.asarray(votes.prompt_ids)[votes.prompt], ids)
    pd.DataFrame({"prompt_id": ids, "score": [1.0, 2.0, 3.0, 4.0]}).to_csv(tmp_path / "s.csv", index=False)
    scores = E.load_scores(tmp_path / "s.csv")
    assert scores.to_dict() == {"8": 1.0, "08": 2.0, "8.0": 3.0, "1e3": 4.0}
    np.testing.assert_array_equal(E._aligned_scores(scores, votes), [2.0, 4.0, 1.0, 3.0])
    # JSONL: strings stay strings (no "08" -> 8), integers become "17".
    with open(tmp_path / "v.jsonl", "w") as f:
        for pid, w in ((17, "tie"), ("08", "model_a"), (17, "model_b"), ("1e3", "tie")):
            f.write(pd.Series({"prompt_id": pid, "model_a": "x", "model_b": "y", "winner": w}).to_json() + "\n")
    jl = load_votes(tmp_path / "v.jsonl")
    assert jl.prompt_ids == ("08", "17", "1e3")
    # Integer ids in JSONL votes match the same ids in a CSV of scores, and the other way round.
    pd.DataFrame({"prompt_id": ["17", "08", "1e3"], "score": [1.0, 2.0, 3.0]}).to_csv(tmp_path / "s2.csv", index=False)
    np.testing.assert_array_equal(E._aligned_scores(E.load_scores(tmp_path / "s2.csv"), jl), [2.0, 1.0, 3.0])
    pd.DataFrame({"prompt_id": [17, 8], "score": [1.0, 2.0]}).to_json(tmp_path / "s.jsonl", orient="records", lines=True)
    assert E.load_scores(tmp_path / "s.jsonl").to_dict() == {"17": 1.0, "8": 2.0}


def test_load_scores(tmp_path, votes):
    path = tmp_path / "scores.csv"
    pd.DataFrame({"prompt_id": [3, 1, 2], "score": [0.5, 2.0, -1.0]}).to_csv(path, index=False)
    s = E.load_scores(path)
    assert s.to_dict() == {"3": 0.5, "1": 2.0, "2": -1.0}
    jl = tmp_path / "scores.jsonl"
    pd.DataFrame({"prompt_id": ["a", "b"], "score": [1.0, 2.0]}).to_json(jl, orient="records", lines=True)
    assert E.load_scores(jl).to_dict() == {"a": 1.0, "b": 2.0}
    with pytest.raises(ValueError, match="missing column.*'score'"):
        E.load_scores(pd.DataFrame({"prompt_id": [1], "value": [1.0]}))
    with pytest.raises(ValueError, match="1 duplicate prompt id.*'1'"):
        E.load_scores(pd.DataFrame({"prompt_id": [1, 1], "score": [1.0, 2.0]}))
    with pytest.raises(ValueError, match="1 NaN score.*'2'"):
        E.load_scores(pd.DataFrame({"prompt_id": [1, 2], "score": [1.0, np.nan]}))
    with pytest.raises(ValueError, match="non-numeric"):
        E.load_scores(pd.DataFrame({"prompt_id": [1, 2], "score": [1.0, "high"]}))
    # Prompts with votes but no score: how many, and a few named.
    partial = {p: 1.0 for p in votes.prompt_ids[:20]}
    with pytest.raises(ValueError, match=r"4 of the 24 prompts with votes have no score, e.g. 'q20', 'q21'"):
        E.tie_reduction(jax.random.key(0), partial, votes)
    with pytest.raises(ValueError, match=r"shape \[P\] = \(24,\)"):
        E.tie_reduction(jax.random.key(0), np.ones(5), votes)


# --------------------------------------------------------------------------------------------------
# Rank metrics


# Jitted once per shape (eager mode would compile every small op).
_tau = jax.jit(E.kendall_tau)
_rho = jax.jit(E.spearman)
_agree = jax.jit(E.pairs_agreement)


def test_metrics_hand_computed():
    # No ties: one discordant pair of six.
    x = jnp.array([1.0, 2.0, 3.0, 4.0])
    y = jnp.array([1.0, 3.0, 2.0, 4.0])
    assert float(_tau(x, y)) == pytest.approx(4 / 6, abs=1e-6)
    assert float(_rho(x, y)) == pytest.approx(1 - 6 * 2 / (4 * 15), abs=1e-6)
    assert float(_agree(x, y)) == pytest.approx(5 / 6, abs=1e-6)
    # Ties: S = 4, n0 = 6, one pair tied in x and one in y -> tau_b = 4 / sqrt(5 * 5); ranks x = [1.5, 1.5, 3, 4],
    # y = [1, 2.5, 2.5, 4] -> rho = 3.75 / 4.5; pairs agreeing in sign: 4 of 6.
    x = jnp.array([1.0, 1.0, 2.0, 3.0])
    y = jnp.array([1.0, 2.0, 2.0, 3.0])
    assert float(_tau(x, y)) == pytest.approx(0.8, abs=1e-6)
    assert float(_rho(x, y)) == pytest.approx(3.75 / 4.5, abs=1e-6)
    assert float(_agree(x, y)) == pytest.approx(4 / 6, abs=1e-6)
    # A mask ranks the kept entries among themselves.
    mask = jnp.array([True, False, True, True])
    assert float(_tau(x, y, mask)) == pytest.approx(1.0, abs=1e-6)
    assert float(_rho(x, y, mask)) == pytest.approx(1.0, abs=1e-6)
    # Constant input: undefined, as scipy.
    assert math.isnan(float(_tau(jnp.ones(3), x[:3])))
    assert math.isnan(float(_rho(jnp.ones(3), x[:3])))
    # Largest centred rating difference: r - mean = [-10, 10], g - mean = [-5, 5] -> 5.
    assert float(E._max_diff(jnp.array([990.0, 1010.0, 0.0]), jnp.array([0.0, 10.0, 99.0]),
                             jnp.array([True, True, False]))) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="same shape"):
        E.kendall_tau(jnp.ones(3), jnp.ones(4))
    with pytest.raises(ValueError, match="mask must have shape"):
        E.spearman(jnp.ones(3), jnp.ones(3), jnp.ones(2, bool))


def test_metrics_nan():
    """A NaN in an entry that counts gives NaN (as SciPy); a NaN in a masked-out entry is ignored."""
    x = jnp.array([1.0, jnp.nan, 3.0, 4.0])
    y = jnp.array([1.0, 2.0, 4.0, 3.0])
    keep = jnp.array([True, False, True, True])
    for f in (_tau, _rho, _agree):
        assert math.isnan(float(f(x, y))) and math.isnan(float(f(y, x))), f
    # Masked out: the statistic of the three other entries (one discordant pair of three).
    assert float(_tau(x, y, keep)) == pytest.approx(scipy.stats.kendalltau([1, 3, 4], [1, 4, 3]).statistic, abs=1e-6)
    assert float(_rho(x, y, keep)) == pytest.approx(scipy.stats.spearmanr([1, 3, 4], [1, 4, 3]).statistic, abs=1e-6)
    assert float(_agree(x, y, keep)) == pytest.approx(2 / 3, abs=1e-6)
    assert float(_tau(y, x, keep)) == float(_tau(x, y, keep))
    # Infinite entries are ordered, not NaN.
    inf = jnp.array([1.0, 2.0, jnp.inf, 0.0])
    assert float(_tau(inf, jnp.array([1.0, 2.0, 3.0, 0.0]))) == pytest.approx(1.0)


def test_rating_noise_is_no_ordering():
    """Fitted ratings within RATING_TIE_ATOL Elo points are ties: float32 noise on a subset with only tie votes
    (1000.00007 / 1000 / 999.99993) is no leaderboard; the plain metrics stay exact (atol=0)."""
    noisy = jnp.array([1000.00007, 1000.0, 999.99993], jnp.float32)
    gold = jnp.array([1075.2, 891.2, 1050.4], jnp.float32)
    assert E.RATING_TIE_ATOL == 1e-3
    tau, rho, agree, diff = np.asarray(E._metrics_many(noisy[None], gold[None], jnp.ones((1, 3), bool)))[0]
    assert math.isnan(tau) and math.isnan(rho) and agree == 0.0 and diff == pytest.approx(114.4, abs=0.01)  # |891.2 - 1005.6|
    assert float(E.kendall_tau(noisy, gold)) == pytest.approx(1 / 3, abs=1e-6)  # exact signs
    assert math.isnan(float(E.kendall_tau(noisy, gold, atol=1e-3)))
    assert float(E.pairs_agreement(noisy, noisy + jnp.array([0.0, 5e-4, 0.0]), atol=1e-3)) == 1.0
    assert float(E.spearman(jnp.array([1.0, 1.0005, 2.0]), jnp.array([1.0, 1.0, 2.0]), atol=1e-3)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="atol must be >= 0"):
        E.kendall_tau(noisy, gold, atol=-1.0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=2, max_size=6).flatmap(
    lambda xs: st.tuples(st.just(xs), st.lists(st.integers(-3, 3), min_size=len(xs), max_size=len(xs)))))
def test_metric_properties(pair):
    """Symmetric, invariant under strictly increasing maps, and tau/rho flip sign when one side is negated."""
    x = np.pad(np.asarray(pair[0], np.float32), (0, 6 - len(pair[0])))
    y = np.pad(np.asarray(pair[1], np.float32), (0, 6 - len(pair[1])))
    mask = np.arange(6) < len(pair[0])  # one shape for every example: pad and mask
    for f in (_tau, _rho, _agree):
        v = float(f(x, y, mask))
        w = float(f(y, x, mask))
        assert (math.isnan(v) and math.isnan(w)) or v == pytest.approx(w, abs=1e-6)
        u = float(f(np.exp(x), 3 * y + 1, mask))
        assert (math.isnan(v) and math.isnan(u)) or v == pytest.approx(u, abs=1e-6)
    for f in (_tau, _rho):
        v, n = float(f(x, y, mask)), float(f(x, -y, mask))
        assert (math.isnan(v) and math.isnan(n)) or v == pytest.approx(-n, abs=1e-6)


def _pairs_agreement_reference(x, y):
    i, j = np.triu_indices(len(x), 1)
    return float(np.mean(np.sign(x[i] - x[j]) == np.sign(y[i] - y[j])))


def test_metrics_against_scipy():
    rng = np.random.default_rng(0)
    # Small integer ranges give many ties in both vectors.
    x = rng.integers(0, 5, size=(64, 9)).astype(np.float32)
    y = (x + rng.integers(-2, 3, size=x.shape)).astype(np.float32)
    y[::7] = rng.permutation(9)  # and some rows without ties
    tau = np.asarray(jax.jit(jax.vmap(E.kendall_tau))(x, y))
    rho = np.asarray(jax.jit(jax.vmap(E.spearman))(x, y))
    agree = np.asarray(jax.jit(jax.vmap(E.pairs_agreement))(x, y))
    for r in range(x.shape[0]):
        xs, ys = x[r].astype(np.float64), y[r].astype(np.float64)
        assert tau[r] == pytest.approx(scipy.stats.kendalltau(xs, ys).statistic, abs=1e-5)
        assert rho[r] == pytest.approx(scipy.stats.spearmanr(xs, ys).statistic, abs=1e-5)
        assert agree[r] == pytest.approx(_pairs_agreement_reference(xs, ys), abs=1e-6)


# --------------------------------------------------------------------------------------------------
# Tie reduction


def _hand_votes():
    """10 prompts x 3 votes between x and y; prompts 0..5 have no tie, prompts 6..9 have 1, 2, 3, 3 ties."""
    ties = [0, 0, 0, 0, 0, 0, 1, 2, 3, 3]
    rows = []
    for p, t in enumerate(ties):
        for v in range(3):
            rows.append((p, "x", "y", "tie" if v < t else ("model_a" if v % 2 else "model_b")))
    return load_votes(pd.DataFrame(rows, columns=["prompt_id", "model_a", "model_b", "winner"])), np.array(ties)


def test_tie_reduction_perfect_scores_hand_computed():
    votes, ties = _hand_votes()
    # Perfect priority: every prompt without ties first (ties among equal scores keep the prompt order).
    scores = {str(p): (1.0 if t == 0 else 0.0) for p, t in enumerate(ties)}
    num_random = 2000
    # Two score values for ten prompts: equal scores break in prompt-id order, and a warning says so.
    with pytest.warns(UserWarning, match=r"scores are heavily tied: 10 of the 10 prompts.*prompt id in string order"):
        res = E.tie_reduction(jax.random.key(3), scores, votes, fractions=[0.1, 0.6, 0.8, 1.0], num_random=num_random)
    np.testing.assert_array_equal(res.num_prompts, [1, 6, 8, 10])
    np.testing.assert_array_equal(res.num_votes, [3, 18, 24, 30])
    # Top q: no ties up to 60 % (the maximal reduction, 1); at 80 % prompts 6 and 7 join: 3 ties of 24 votes.
    np.testing.assert_allclose(res.tie_rate_top, [0.0, 0.0, 3 / 24, 9 / 30], atol=1e-12)
    # Random k-subsets (3 votes each): the expected tie rate is the overall 9/30; its Monte-Carlo standard
    # error follows from the finite-population variance of a k-subset's tie count.
    k = res.num_prompts.astype(np.float64)
    var_sum = k * ties.var() * (10 - k) / 9
    se = np.sqrt(var_sum) / (3 * k) / math.sqrt(num_random)
    assert np.all(np.abs(res.tie_rate_random - 0.3) <= 5 * se + 1e-6)  # float32 rates
    np.testing.assert_allclose(res.reduction[:3], 1.0 - res.tie_rate_top[:3] / res.tie_rate_random[:3], rtol=1e-12)
    np.testing.assert_allclose(res.reduction[:2], [1.0, 1.0])
    # At q = 1 everything is the same set of prompts: no reduction, exactly, with a zero-width interval.
    assert res.reduction[-1] == res.lower[-1] == res.upper[-1] == 0.0
    assert np.all(res.lower <= res.upper)
    frame = res.to_frame()
    assert list(frame.columns) == ["fraction", "tie_rate_top", "tie_rate_random", "reduction", "lower", "upper"]
    # The worst priority (most ties first) raises the tie rate: 1 - 1 / 0.3 at 20 %.
    worst = E.tie_reduction(jax.random.key(0), {str(p): float(t) + 0.1 * p for p, t in enumerate(ties)}, votes,
                            fractions=[0.1, 0.2, 0.8, 1.0], num_random=num_random)
    assert worst.tie_rate_top[1] == 1.0 and worst.reduction[1] == pytest.approx(1 - 1 / 0.3, abs=0.1)
    # One prompt (q = 10 %): 6 of the 10 single-prompt random subsets have no tie. Each replicate averages
    # its own baseline over random subsets of its resample, so the interval stays finite and holds the point.
    assert np.all(np.isfinite(worst.lower)) and np.all(np.isfinite(worst.upper))
    assert np.all((worst.lower[:2] <= worst.reduction[:2]) & (worst.reduction[:2] <= worst.upper[:2]))
    # q = 80 %: every replicate drops its two lowest-priority draws (tie-free in all but ~1e-5 of them) from
    # the top side, and each draw from 2 of the 10 windows of 8: 1 - 1 / 0.8 = -0.25 exactly; the point
    # estimate is -0.25 up to the Monte-Carlo error of its baseline (2000 subsets: se of the rate 0.0015, of the
    # reduction 0.375 / 0.3^2 x 0.0015 = 0.006; bound 5 se).
    assert worst.lower[2] == pytest.approx(-0.25, abs=1e-6) and worst.upper[2] == pytest.approx(-0.25, abs=1e-6)
    assert worst.reduction[2] == pytest.approx(-0.25, abs=0.03)


def test_tie_reduction_warns_on_constant_scores(votes):
    with pytest.warns(UserWarning, match=r"scores are constant \(2 for all 24 prompts\)"):
        res = E.tie_reduction(jax.random.key(0), np.full(24, 2.0), votes, fractions=FRACTIONS, num_random=256)
    assert res.num_prompts[0] == 6


def test_tie_kernel_against_numpy():
    rng = np.random.default_rng(1)
    ties = rng.integers(0, 4, 30).astype(np.float64)
    votes = ties + rng.integers(1, 5, 30)
    sizes = np.array([1, 7, 15, 30], np.int32)
    words = jnp.stack([E._key_words(k) for k in jax.random.split(jax.random.key(11))])
    starts = E._window_starts(30)
    np.testing.assert_array_equal(starts, np.arange(30))  # P <= 64: every cyclic window
    np.testing.assert_array_equal(E._window_starts(640), np.arange(64) * 10)
    random, boot_top, boot_random = E._tie_kernel(words, jnp.asarray(ties, jnp.float32),
                                                  jnp.asarray(votes, jnp.float32), jnp.asarray(sizes),
                                                  jnp.asarray(starts), num_random=16)
    # The same random words, turned into permutations and draws and rates in float64 NumPy.
    perms = np.argsort(np.asarray(E._random_words(words[0], 16, 30)[0]), axis=1, kind="stable")
    draws = np.asarray(E._random_words(words[1], 16, 30)[1]) % 30
    assert sorted(perms[3].tolist()) == list(range(30)) and draws.min() >= 0 and draws.max() < 30

    def rates(order, k):
        return ties[order[:k]].sum() / votes[order[:k]].sum()

    for j in range(16):
        for f, k in enumerate(sizes):
            assert random[j, f] == pytest.approx(rates(perms[j], k), rel=1e-6)
            # The replicate's own baseline: the mean rate of the k-draw cyclic windows of its draw sequence.
            twice = np.concatenate([draws[j], draws[j]])
            windows = np.mean([rates(twice[s0:], k) for s0 in starts])
            assert boot_random[j, f] == pytest.approx(windows, rel=1e-5)
            assert boot_top[j, f] == pytest.approx(rates(np.sort(draws[j]), k), rel=1e-6)


def test_random_scores_give_no_reduction_in_expectation(votes):
    """Uninformative scores: the top q prompts are a uniformly random subset, so E[reduction] = 0 (up to the
    Monte-Carlo noise of the baseline, far below the standard error here). The bound, 4 standard errors of
    the mean over seeds, is set once."""
    rng = np.random.default_rng(2024)
    reductions = []
    for seed in range(120):
        s = rng.random(votes.num_prompts)
        res = E.tie_reduction(jax.random.key(seed), s, votes, fractions=FRACTIONS, num_random=256)
        reductions.append(res.reduction)
    r = np.asarray(reductions)  # [seeds, F]
    mean = r.mean(axis=0)
    se = r.std(axis=0, ddof=1) / math.sqrt(r.shape[0])
    assert np.all(np.abs(mean[:2]) <= 4 * se[:2]), (mean, se)
    assert np.all(se[:2] > 0)
    np.testing.assert_array_equal(r[:, 2], 0.0)


def test_tie_interval_holds_the_point_estimate(votes):
    """The interval is a bootstrap interval of the reported statistic: on the realistic vote table it holds
    the point estimate for every score vector tried, and is finite."""
    rng = np.random.default_rng(8)
    for seed in range(12):
        res = E.tie_reduction(jax.random.key(seed), rng.random(votes.num_prompts), votes, fractions=FRACTIONS,
                              num_random=256)
        assert np.all(np.isfinite(res.lower) & np.isfinite(res.upper)), res.to_frame()
        assert np.all((res.lower <= res.reduction) & (res.reduction <= res.upper)), res.to_frame()


def test_tie_reduction_validation(votes, scores):
    with pytest.raises(ValueError, match="fractions must lie in"):
        E.tie_reduction(jax.random.key(0), scores, votes, fractions=[0.0, 0.5])
    with pytest.raises(ValueError, match="num_random must be an int >= 2"):
        E.tie_reduction(jax.random.key(0), scores, votes, num_random=1)
    with pytest.raises(ValueError, match="confidence"):
        E.tie_reduction(jax.random.key(0), scores, votes, confidence=1.5)
    with pytest.raises(TypeError, match="jaxrank.Votes"):
        E.tie_reduction(jax.random.key(0), scores, "votes.csv")
    with pytest.raises(ValueError, match="NaN"):
        E.tie_reduction(jax.random.key(0), {**scores, "q03": float("nan")}, votes)
    no_ties = Votes(models=("x", "y"), a=[0, 1], b=[1, 0], outcome=[0, 1], prompt=[0, 0], prompt_ids=("p",))
    with pytest.raises(ValueError, match="no ties"):
        E.tie_reduction(jax.random.key(0), [1.0], no_ties)


# --------------------------------------------------------------------------------------------------
# Leaderboard stability


def _bt_reference(votes: Votes, keep: np.ndarray) -> np.ndarray:
    """Float64 Bradley-Terry ('half' ties) by scipy on the kept votes: Elo-scale ratings centred on the
    models that play, NaN for the others."""
    a, b, o = votes.a[keep], votes.b[keep], votes.outcome[keep]
    present = np.zeros(votes.num_models, bool)
    present[a] = present[b] = True
    idx = np.flatnonzero(present)
    pos = {m: i for i, m in enumerate(idx)}
    ai = np.array([pos[m] for m in a])
    bi = np.array([pos[m] for m in b])

    def nll(t):
        d = t[ai] - t[bi]
        la, lb = -np.logaddexp(0, -d), -np.logaddexp(0, d)
        return -np.sum(np.where(o == 0, la, np.where(o == 1, lb, 0.5 * (la + lb))))

    t = scipy.optimize.minimize(nll, np.zeros(idx.size), method="BFGS", options={"gtol": 1e-10}).x
    out = np.full(votes.num_models, np.nan)
    out[idx] = (t - t.mean()) * 400 / math.log(10)
    return out


def _check_against_gold(res, f, gold, top):
    present = ~np.isnan(top)
    x, y = top[present], gold[present]
    assert res.kendall_tau[f] == pytest.approx(scipy.stats.kendalltau(x, y).statistic, abs=1e-5)
    assert res.spearman[f] == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-5)
    assert res.pairs_agree[f] == pytest.approx(_pairs_agreement_reference(x, y), abs=1e-6)
    diff = np.max(np.abs((x - x.mean()) - (y - y.mean())))
    assert res.max_rating_diff[f] == pytest.approx(diff, abs=0.05)


def test_stability_bt(votes, stability_bt):
    res = stability_bt
    np.testing.assert_array_equal(res.fraction, FRACTIONS)
    np.testing.assert_array_equal(res.num_prompts, [6, 12, 24])
    # Gold against a float64 scipy fit, and against fit_bradley_terry.
    everything = np.ones(votes.num_votes, bool)
    np.testing.assert_allclose(res.gold_ratings, 1000 + _bt_reference(votes, everything), atol=0.05)
    # q = 1 is gold: perfect agreement, intervals included.
    for name, value in (("kendall_tau", 1.0), ("spearman", 1.0), ("pairs_agree", 1.0)):
        for col in (name, f"{name}_lower", f"{name}_upper", f"random_{name}", f"random_{name}_lower"):
            assert getattr(res, col)[-1] == pytest.approx(value, abs=1e-6), col
    assert res.max_rating_diff[-1] < 1e-3 and res.max_rating_diff_upper[-1] < 1e-3
    # Top 25 %: prompts q00..q05, where m4 never plays: it is left out, the rest checked against scipy.
    top_prompts = np.isin(votes.prompt, np.arange(6))
    ref = _bt_reference(votes, top_prompts)
    assert np.isnan(res.top_ratings[0, 4]) and np.isnan(ref[4])
    np.testing.assert_allclose(res.top_ratings[0, :4] - res.top_ratings[0, :4].mean(), ref[:4], atol=0.1)
    for f in range(2):
        _check_against_gold(res, f, res.gold_ratings, res.top_ratings[f])
    # Intervals are ordered, and the random baseline lies inside its own band.
    for name in E.STABILITY_METRICS:
        assert np.all(getattr(res, f"{name}_lower") <= getattr(res, f"{name}_upper") + 1e-9)
        r, lo, hi = (getattr(res, f"random_{name}{s}") for s in ("", "_lower", "_upper"))
        assert np.all((lo - 1e-9 <= r) & (r <= hi + 1e-9))
    frame = res.to_frame()
    assert tuple(frame.columns) == E.StabilityResult.columns()
    assert list(frame.columns[:5]) == ["fraction", "kendall_tau", "kendall_tau_lower", "kendall_tau_upper", "spearman"]
    assert len(frame) == 3


def test_stability_bt_no_bootstrap_is_point_estimate(votes, scores, stability_bt, monkeypatch):
    fitted = []
    bt_lanes = E._bt_lanes
    monkeypatch.setattr(E, "_bt_lanes", lambda lanes, *a, **k: fitted.append(len(lanes)) or bt_lanes(lanes, *a, **k))
    res = E.leaderboard_stability(jax.random.key(0), scores, votes, fractions=FRACTIONS, num_random=NUM_RANDOM,
                                  num_bootstrap=0)
    # Gold, then the top-q and random lanes of q < 1 only (at q = 1 they are gold).
    assert fitted == [1 + 2 + 2 * NUM_RANDOM]
    assert res.kendall_tau[-1] == 1.0 and res.random_kendall_tau_upper[-1] == 1.0
    assert np.all(np.isnan(res.kendall_tau_lower)) and np.all(np.isnan(res.max_rating_diff_upper))
    np.testing.assert_allclose(res.kendall_tau, stability_bt.kendall_tau, atol=1e-6)
    np.testing.assert_allclose(res.gold_ratings, stability_bt.gold_ratings, atol=1e-3)


def test_stability_elo(votes, stability_elo):
    res = stability_elo
    # Gold is the median over the vote orders elo_permutations draws from the same key.
    k_perm = jax.random.split(jax.random.key(0), 3)[2]
    perm = elo_permutations(k_perm, (votes.a, votes.b, votes.outcome), num_permutations=NUM_PERMUTATIONS,
                            num_models=votes.num_models)
    np.testing.assert_allclose(res.gold_ratings, np.median(np.asarray(perm.ratings, np.float64), axis=0), atol=1e-3)
    for name in ("kendall_tau", "spearman", "pairs_agree"):
        for col in (name, f"{name}_lower", f"{name}_upper", f"random_{name}", f"random_{name}_upper"):
            assert getattr(res, col)[-1] == pytest.approx(1.0, abs=1e-6), col
    assert res.max_rating_diff[-1] == 0.0 and res.max_rating_diff_upper[-1] == 0.0
    assert np.isnan(res.top_ratings[0, 4])
    for f in range(2):
        _check_against_gold(res, f, res.gold_ratings, res.top_ratings[f])
    assert res.num_intervals == NUM_PERMUTATIONS and res.method == "elo"


def test_stability_validation(votes, scores):
    with pytest.raises(ValueError, match="method must be"):
        E.leaderboard_stability(jax.random.key(0), scores, votes, method="glicko")
    with pytest.raises(ValueError, match="ties must be one of"):
        E.leaderboard_stability(jax.random.key(0), scores, votes, ties="none")
    with pytest.raises(ValueError, match="num_bootstrap must be 0"):
        E.leaderboard_stability(jax.random.key(0), scores, votes, num_bootstrap=1)
    with pytest.raises(ValueError, match="l2 must be"):
        E.leaderboard_stability(jax.random.key(0), scores, votes, l2=-1.0)


# --------------------------------------------------------------------------------------------------
# Budget curves


@pytest.fixture(scope="module")
def curves():
    from jaxrank.allocation import GaussianSampler

    sampler = GaussianSampler(jnp.zeros(8), jnp.linspace(0.2, 2.0, 8))
    return E.budget_curves(jax.random.key(5), sampler, budgets=[160, 320, 640, 1280], num_runs=16)


def test_budget_curves(curves):
    from jaxrank.allocation import GaussianSampler, simulate_sweep

    assert curves.allocators == ("uniform", "robin", "robin-hood")
    np.testing.assert_array_equal(curves.budgets, [160, 320, 640, 1280])
    for metric in ("wce", "mae", "rmse"):
        mean = curves.mean(metric)
        lo, hi = curves.interval(metric)
        assert mean.shape == (3, 4)
        # Error falls with the budget, for every allocator (16x the queries: ~4x less error).
        assert np.all(mean[:, -1] < 0.6 * mean[:, 0]), (metric, mean)
        assert np.all((lo <= mean) & (mean <= hi))
    # The same numbers as simulate_sweep itself.
    sampler = GaussianSampler(jnp.zeros(8), jnp.linspace(0.2, 2.0, 8))
    ref = simulate_sweep(jax.random.key(5), sampler, [160, 320, 640, 1280], num_runs=16)
    for i, a in enumerate(curves.allocators):
        np.testing.assert_allclose(curves.mean("wce")[i], np.asarray(ref[a].wce, np.float64).mean(axis=0), rtol=1e-6)
    frame = curves.to_frame()
    assert len(frame) == 12 and list(frame.columns[:5]) == ["allocator", "budget", "wce_mean", "wce_lower", "wce_upper"]
    with pytest.raises(ValueError, match="num_runs"):
        E.budget_curves(jax.random.key(0), sampler, budgets=[160], num_runs=1)


# --------------------------------------------------------------------------------------------------
# Plots


def test_plots_written(tmp_path, votes, scores, stability_bt, curves):
    from jaxrank import plots

    ties = E.tie_reduction(jax.random.key(0), scores, votes, fractions=FRACTIONS, num_random=256)
    paths = [
        plots.plot_tie_reduction(ties, tmp_path / "ties.png", title="ties"),
        plots.plot_stability(stability_bt, tmp_path / "tau.png"),
        plots.plot_stability(stability_bt, tmp_path / "diff.svg", metric="max_rating_diff"),
        plots.plot_budget_curves(curves, path=tmp_path / "budget.png"),
        plots.plot_budget_curves(curves, path=tmp_path / "budget_rmse.png", metric="rmse"),
        # The dict form the budget command passes keeps working.
        plots.plot_budget_curves(curves.curves("wce"), path=tmp_path / "budget_dict.png"),
        plots.plot_leaderboard(stability_bt.models, stability_bt.gold_ratings, stability_bt.gold_ratings - 10,
                               stability_bt.gold_ratings + 10, path=tmp_path / "forest.png"),
    ]
    for p in paths:
        assert p.exists() and p.stat().st_size > 1000, p
    with pytest.raises(ValueError, match="metric must be one of"):
        plots.plot_stability(stability_bt, tmp_path / "x.png", metric="tau")
    with pytest.raises(TypeError, match="TieReductionResult"):
        plots.plot_tie_reduction(stability_bt, tmp_path / "y.png")


def test_plot_stability_draws_the_interval_as_computed(tmp_path, stability_bt, monkeypatch):
    """A point outside its own interval stays visible: the bar runs from lower to upper, not clipped to the point."""
    import dataclasses

    from matplotlib.axes import Axes

    from jaxrank import plots

    values = dict(stability_bt.values)
    values["kendall_tau"] = np.array([0.2, 0.5, 1.0])
    values["kendall_tau_lower"] = np.array([0.4, 0.3, 1.0])  # the first point lies below its interval
    values["kendall_tau_upper"] = np.array([0.6, 0.7, 1.0])
    bars = []
    vlines = Axes.vlines
    monkeypatch.setattr(Axes, "vlines", lambda self, x, lo, hi, **k: bars.append((np.asarray(lo), np.asarray(hi)))
                        or vlines(self, x, lo, hi, **k))
    plots.plot_stability(dataclasses.replace(stability_bt, values=values), tmp_path / "outside.png")
    assert len(bars) == 1
    np.testing.assert_allclose(bars[0][0], [0.4, 0.3, 1.0])
    np.testing.assert_allclose(bars[0][1], [0.6, 0.7, 1.0])


# --------------------------------------------------------------------------------------------------
# Command line


@pytest.fixture()
def files(tmp_path, frame, scores):
    votes_path = tmp_path / "votes.csv"
    scores_path = tmp_path / "scores.csv"
    frame.to_csv(votes_path, index=False)
    pd.DataFrame({"prompt_id": list(scores), "score": list(scores.values())}).to_csv(scores_path, index=False)
    return votes_path, scores_path


def test_cli_ties_round_trip(tmp_path, files, capsys):
    votes_path, scores_path = files
    out, plot = tmp_path / "ties.csv", tmp_path / "ties.png"
    args = ["evaluate", "ties", "--scores", str(scores_path), "--votes", str(votes_path), "--fractions", "0.25,0.5,1",
            "--num-random", "256", "--seed", "1", "--out", str(out), "--plot", str(plot)]
    assert main(args) == 0
    captured = capsys.readouterr()
    text = captured.out
    assert "reduction" in text and "24 prompts, 144 votes" in text
    assert captured.err.startswith("jaxrank evaluate ties: plan: 3 fractions x 256 random subsets"), captured.err
    table = pd.read_csv(out)
    assert list(table.columns) == ["fraction", "tie_rate_top", "tie_rate_random", "reduction", "lower", "upper"]
    lib = E.tie_reduction(jax.random.key(1), E.load_scores(scores_path), load_votes(votes_path), fractions=FRACTIONS,
                          num_random=256).to_frame()
    np.testing.assert_allclose(table.to_numpy(), lib.to_numpy(), rtol=1e-9)
    assert plot.stat().st_size > 1000
    # Refuses to overwrite without --force.
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already exists; pass --force" in err and len(err.strip().splitlines()) == 1
    assert main(args + ["--force"]) == 0


def test_cli_stability_round_trip(tmp_path, files, capsys, stability_bt):
    votes_path, scores_path = files
    out = tmp_path / "stability.csv"
    assert main(["evaluate", "stability", "--scores", str(scores_path), "--votes", str(votes_path), "--fractions",
                 "0.25,0.5,1", "--num-random", str(NUM_RANDOM), "--bootstrap", str(NUM_BOOTSTRAP), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    text = " ".join(captured.out.split())
    assert "tau" in text and f"{NUM_BOOTSTRAP} bootstrap rounds over prompts" in text and "over votes" not in text
    assert captured.err.startswith("jaxrank evaluate stability: plan: bt leaderboards of 5 models"), captured.err
    table = pd.read_csv(out)
    assert tuple(table.columns) == E.StabilityResult.columns()
    np.testing.assert_allclose(table["kendall_tau"], stability_bt.kendall_tau, atol=1e-6)
    np.testing.assert_allclose(table["random_spearman"], stability_bt.random_spearman, atol=1e-6)


def test_cli_stability_elo_with_plot(tmp_path, files, capsys, stability_elo):
    votes_path, scores_path = files
    out, plot = tmp_path / "elo.csv", tmp_path / "elo.png"
    assert main(["evaluate", "stability", "--method", "elo", "--scores", str(scores_path), "--votes", str(votes_path),
                 "--fractions", "0.25,0.5,1", "--num-random", str(NUM_RANDOM), "--permutations", str(NUM_PERMUTATIONS),
                 "--metric", "spearman", "--out", str(out), "--plot", str(plot)]) == 0
    assert "elo" in capsys.readouterr().out
    np.testing.assert_allclose(pd.read_csv(out)["spearman_lower"], stability_elo.spearman_lower, atol=1e-6)
    assert plot.stat().st_size > 1000


def test_cli_errors(tmp_path, files, frame, capsys):
    votes_path, scores_path = files
    base = ["evaluate", "ties", "--scores", str(scores_path), "--votes", str(votes_path)]
    cases = [
        (["--columns", "model_a=nope"], "missing column(s) 'nope'"),
        (["--columns", "players=x"], "--columns: unknown name 'players'"),
        (["--prompt-column", "prompt"], "missing column(s) 'prompt'"),
        (["--fractions", "0.5,2"], "--fractions: 2 is outside (0, 1]"),
        (["--out", str(tmp_path / "x.txt")], "unknown format '.txt'; use .csv, .tsv, .jsonl or .parquet"),
    ]
    for extra, message in cases:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.startswith("jaxrank: error:") and len(err.strip().splitlines()) == 1, err
    bad_scores = tmp_path / "bad.csv"
    pd.DataFrame({"prompt": ["q00"], "score": [1.0]}).to_csv(bad_scores, index=False)
    assert main(["evaluate", "ties", "--scores", str(bad_scores), "--votes", str(votes_path)]) == 2
    assert "--scores" in capsys.readouterr().err
    # A prompt with votes but no score: found inside tie_reduction, reported against --scores.
    partial = tmp_path / "partial.csv"
    pd.read_csv(scores_path).iloc[:20].to_csv(partial, index=False)
    assert main(["evaluate", "ties", "--scores", str(partial), "--votes", str(votes_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"jaxrank: error: --scores {partial}: scores: 4 of the 24 prompts") and len(err.splitlines()) == 1
    # Constant scores: a warning line naming --scores, and the table still printed.
    const = tmp_path / "const.csv"
    pd.read_csv(scores_path).assign(score=1.0).to_csv(const, index=False)
    assert main(["evaluate", "ties", "--scores", str(const), "--votes", str(votes_path), "--fractions", "0.25,0.5,1",
                 "--num-random", "256"]) == 0
    captured = capsys.readouterr()
    assert "jaxrank: warning: --scores" in captured.err and "scores are constant" in captured.err
    assert "reduction" in captured.out
    assert main(["evaluate", "stability", "--scores", str(scores_path), "--votes", str(tmp_path / "none.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "ties" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["evaluate", "stability", "--help"])
    assert "shared by all fractions" in " ".join(capsys.readouterr().out.split())


def test_cli_preset_llmfao(tmp_path, files, frame, capsys):
    """--format llmfao (or auto-detection) reads LLMFAO's layout (left/right/winner, prompt ids in `prompt`) through
    the same reader as `jaxrank leaderboard`, with the same result as the Arena-format file."""
    from jaxrank.commands import _common, evaluate, leaderboard

    assert not hasattr(evaluate, "_parse_map") and not hasattr(leaderboard, "_parse_map")
    votes_path, scores_path = files
    llmfao = frame.rename(columns={"prompt_id": "prompt", "model_a": "left", "model_b": "right"}).replace(
        {"winner": {"model_a": "left", "model_b": "right"}}).replace({"winner": {"tie (bothbad)": "tie"}})
    arena = frame.replace({"winner": {"tie (bothbad)": "tie"}})
    llmfao.to_csv(tmp_path / "llmfao.csv", index=False)
    arena.to_csv(tmp_path / "arena.csv", index=False)
    outs = []
    for name, extra in (("llmfao", ["--format", "llmfao"]), ("arena", [])):
        out = tmp_path / f"{name}_ties.csv"
        assert main(["evaluate", "ties", "--scores", str(scores_path), "--votes", str(tmp_path / f"{name}.csv"),
                     "--fractions", "0.25,0.5,1", "--num-random", "256", "--out", str(out)] + extra) == 0
        outs.append(pd.read_csv(out))
    capsys.readouterr()
    pd.testing.assert_frame_equal(outs[0], outs[1])
    import argparse

    with pytest.raises(_common.CliError, match="--winner-labels: left='x'"):
        _common.vote_options(argparse.Namespace(format="llmfao", columns=None, winner_labels="left=x"))

