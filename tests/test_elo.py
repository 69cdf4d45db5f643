"""Online Elo: lax.scan vs a plain-Python float64 loop (FastChat's compute_elo arithmetic)."""

from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrank import load_votes
from jaxrank.ratings import synthetic_votes
from jaxrank.ratings.elo import elo_permutations, online_elo, random_vote_orders

# float32 ratings (~1000, ulp 6e-5) after thousands of updates of size <= K: a random walk of
# rounding errors; 0.02 Elo is far below any meaningful difference and far above float32 noise.
ATOL = 0.02


def python_elo(a, b, outcome, num_models, *, k=4.0, scale=400.0, base=10.0, init=1000.0):
    """FastChat's compute_elo, float64, one vote at a time."""
    rating = defaultdict(lambda: init)
    for ma, mb, o in zip(a.tolist(), b.tolist(), outcome.tolist()):
        ra, rb = rating[ma], rating[mb]
        ea = 1 / (1 + base ** ((rb - ra) / scale))
        eb = 1 / (1 + base ** ((ra - rb) / scale))
        sa = 1.0 if o == 0 else 0.0 if o == 1 else 0.5
        rating[ma] += k * (sa - ea)
        rating[mb] += k * (1 - sa - eb)
    return np.array([rating[i] for i in range(num_models)])


@pytest.fixture(scope="module")
def votes():
    rng = np.random.default_rng(0)
    n, m = 600, 7
    a = rng.integers(0, m, n)
    b = (a + rng.integers(1, m, n)) % m
    o = rng.integers(0, 4, n)
    return a.astype(np.int32), b.astype(np.int32), o.astype(np.int32), m


def test_online_elo_matches_python_loop(votes):
    a, b, o, m = votes
    got = np.asarray(online_elo((a, b, o)))
    np.testing.assert_allclose(got, python_elo(a, b, o, m), atol=ATOL, rtol=0)
    got = np.asarray(online_elo((a, b, o), k=32.0, scale=200.0, base=np.e, init=1500.0))
    np.testing.assert_allclose(got, python_elo(a, b, o, m, k=32.0, scale=200.0, base=np.e, init=1500.0), atol=ATOL, rtol=0)


def test_online_elo_order_and_zero_sum(votes):
    a, b, o, m = votes
    order = np.arange(len(a))[::-1].copy()
    got = np.asarray(online_elo((a, b, o), order=order))
    np.testing.assert_allclose(got, python_elo(a[order], b[order], o[order], m), atol=ATOL, rtol=0)
    # Every update moves a and b by opposite amounts: the mean stays at init.
    assert abs(got.mean() - 1000.0) < 1e-3


def test_online_elo_llmfao_file_order(shared_data):
    battles = load_votes(shared_data / "llmfao" / "crowd-comparisons.csv")
    a, b, o = battles.a, battles.b, battles.outcome
    got = np.asarray(online_elo(battles))
    np.testing.assert_allclose(got, python_elo(a, b, o, battles.num_models), atol=ATOL, rtol=0)


def test_permutations_replay_their_orders(votes):
    a, b, o, m = votes
    key = jax.random.key(3)
    res = elo_permutations(key, (a, b, o), num_permutations=6, chunk_size=4)
    assert res.ratings.shape == (6, m)
    orders = np.asarray(random_vote_orders(jax.random.split(key, 6), len(a)))  # [N, P]
    for p in (0, 5):
        assert sorted(orders[:, p].tolist()) == list(range(len(a)))  # a permutation
        ref = python_elo(a[orders[:, p]], b[orders[:, p]], o[orders[:, p]], m)
        np.testing.assert_allclose(np.asarray(res.ratings[p]), ref, atol=ATOL, rtol=0)
    # Chunking does not change the draws.
    again = elo_permutations(key, (a, b, o), num_permutations=6, chunk_size=6)
    np.testing.assert_array_equal(np.asarray(again.ratings), np.asarray(res.ratings))


def test_permutation_summary(votes):
    a, b, o, m = votes
    res = elo_permutations(jax.random.key(0), (a, b, o), num_permutations=64, confidence=0.9)
    r = np.asarray(res.ratings, np.float64)
    np.testing.assert_allclose(np.asarray(res.median), np.quantile(r, 0.5, axis=0), atol=1e-3)
    np.testing.assert_allclose(np.asarray(res.lower), np.quantile(r, 0.05, axis=0), atol=1e-3)
    np.testing.assert_allclose(np.asarray(res.upper), np.quantile(r, 0.95, axis=0), atol=1e-3)
    assert np.all(np.asarray(res.spread) > 0)  # order matters for online Elo
    assert len({tuple(np.round(x, 3)) for x in r}) == 64  # different orders, different ratings


def test_bad_input(votes):
    a, b, o, m = votes
    with pytest.raises(ValueError, match="same shape"):
        online_elo((a, b[:-1], o))
    with pytest.raises(ValueError, match="playing itself"):
        online_elo((a, a, o))
    with pytest.raises(TypeError, match="integer"):
        online_elo((a.astype(np.float32), b, o))
    with pytest.raises(ValueError, match="outcome"):
        online_elo((a, b, o + 4))
    with pytest.raises(ValueError, match="k must be"):
        online_elo((a, b, o), k=0.0)
    with pytest.raises(ValueError, match="order"):
        online_elo((a, b, o), order=np.array([len(a)]))
    with pytest.raises(TypeError, match="votes must be a jaxrank.Votes"):
        online_elo("votes.csv")
    with pytest.raises(ValueError, match="num_permutations"):
        elo_permutations(jax.random.key(0), (a, b, o), num_permutations=0)
    with pytest.raises(ValueError, match="confidence"):
        elo_permutations(jax.random.key(0), (a, b, o), num_permutations=2, confidence=1.0)
    synth, _ = synthetic_votes(jax.random.key(0), 4, 100)
    with pytest.raises(ValueError, match="needs one entry per vote"):
        online_elo(synth)
