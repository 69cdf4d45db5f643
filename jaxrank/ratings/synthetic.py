"""Synthetic arenas: votes drawn from a Bradley–Terry-family model with known strengths, as counts.

Used by tests (coverage of intervals, recovery of known ratings) and benchmarks (10 million votes in
memory proportional to the number of model pairs, not of votes).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrank._validation import preview
from jaxrank.ratings.bradley_terry import TIE_MODELS, outcome_probabilities
from jaxrank.votes.table import NUM_OUTCOMES, Votes

__all__ = ["synthetic_votes"]


def synthetic_votes(
    key: jax.Array,
    num_models: int,
    num_votes: int,
    *,
    theta: Any = None,
    theta_scale: float = 1.0,
    ties: str = "half",
    tie_param: float | None = None,
    tie_bothbad_fraction: float = 0.0,
) -> tuple[Votes, jax.Array]:
    """Draw an arena of `num_votes` votes among `num_models` models from a Bradley–Terry-family model.

    Memory is O(pairs), never O(votes): pair counts are one multinomial draw over all unordered
    pairs (uniform match-making), and each pair's outcomes a conditional binomial split of its count.
    The model in the `a` slot is chosen per pair by a fair coin. No vote order is recorded.

    Args:
        key: PRNG key.
        num_models: M >= 2.
        num_votes: N >= 1 total votes.
        theta: optional float[M] true log-strengths; default `theta_scale * N(0, 1)`, centred.
        theta_scale: standard deviation of the default true log-strengths (1.0 ~ 174 Elo points).
        ties: outcome model, `"half"`/`"drop"` (no ties are drawn), `"rao-kupper"`, `"davidson"` or
            `"grounded-rao-kupper"` (draws `tie (bothbad)` from the model itself; theta is absolute).
        tie_param: RK threshold alpha > 0 (default 0.5; also the grounded model's) or Davidson nu > 0
            (default 1.0).
        tie_bothbad_fraction: share of drawn ties labelled `tie (bothbad)` instead of `tie` (not used by
            the grounded model).

    Returns:
        `(votes, theta)`: the `Votes` (one entry per distinct row, with `count`) and the true theta float32[M].

    Example:
        >>> votes, theta = synthetic_votes(jax.random.key(0), 1000, 10_000_000)  # doctest: +SKIP
    """
    m = int(num_models)
    n = int(num_votes)
    if m < 2:
        raise ValueError(f"num_models must be >= 2, got {num_models!r}")
    if n < 1:
        raise ValueError(f"num_votes must be >= 1, got {num_votes!r}")
    if ties not in TIE_MODELS:
        raise ValueError(f"ties must be one of {preview(TIE_MODELS)}; got {ties!r}")
    if not 0.0 <= tie_bothbad_fraction <= 1.0:
        raise ValueError(f"tie_bothbad_fraction must be in [0, 1], got {tie_bothbad_fraction!r}")
    grounded = ties == "grounded-rao-kupper"
    if tie_param is None:
        tie_param = {"rao-kupper": 0.5, "davidson": 1.0, "grounded-rao-kupper": 0.5}.get(ties, float("nan"))
    elif ties in ("rao-kupper", "davidson", "grounded-rao-kupper") and not tie_param > 0:
        raise ValueError(f"tie_param must be > 0 for ties={ties!r}, got {tie_param!r}")
    k_theta, k_counts = jax.random.split(key)
    if theta is None:
        theta = theta_scale * jax.random.normal(k_theta, (m,), dtype=jnp.float32)
        theta = theta - theta.mean()
    else:
        theta = jnp.asarray(theta, dtype=jnp.float32)
        if theta.shape != (m,):
            raise ValueError(f"theta must have shape [num_models] = ({m},), got {tuple(theta.shape)}")

    # Counts are drawn on the host with NumPy's exact multinomial/binomial samplers, seeded from `key`
    # (jax.random.binomial would recompile for every shape and works in float32).
    rng = np.random.default_rng(_seed_from_key(k_counts))
    lo, hi = np.triu_indices(m, k=1)
    num_pairs = lo.size
    pair_n = rng.multinomial(n, np.full(num_pairs, 1.0 / num_pairs))
    swap = rng.random(num_pairs) < 0.5
    a = np.where(swap, hi, lo)
    b = np.where(swap, lo, hi)
    theta_np = np.asarray(theta, dtype=np.float64)
    delta = theta_np[a] - theta_np[b]
    probs = np.asarray(
        jax.jit(outcome_probabilities, static_argnames="ties")(
            jnp.asarray(delta, jnp.float32), ties="drop" if ties == "half" else ties,
            tie_param=jnp.asarray(1.0 if tie_param != tie_param else tie_param, jnp.float32),
            theta_b=jnp.asarray(theta_np[b], jnp.float32) if grounded else None,
        ),
        dtype=np.float64,
    )  # [P, 3], or [P, 4] for the grounded model
    probs = probs / probs.sum(axis=1, keepdims=True)
    # Conditional binomial split: n_A ~ Bin(n, pA), n_B ~ Bin(n - n_A, pB / (1 - pA)), rest ties.
    pa = probs[:, 0]
    n_a = rng.binomial(pair_n, pa)
    rest = pair_n - n_a
    pb = np.clip(np.where(pa < 1.0, probs[:, 1] / np.maximum(1.0 - pa, 1e-300), 0.0), 0.0, 1.0)
    n_b = rng.binomial(rest, pb)
    n_t = rest - n_b
    if grounded:  # n_bb ~ Bin(n_t, p_bothbad / (p_tie + p_bothbad)): the model's own both-bad share
        p_rest = probs[:, 2] + probs[:, 3]
        n_bb = rng.binomial(n_t, np.clip(np.where(p_rest > 0, probs[:, 3] / np.maximum(p_rest, 1e-300), 0.0), 0, 1))
    elif tie_bothbad_fraction > 0:
        n_bb = rng.binomial(n_t, tie_bothbad_fraction)
    else:
        n_bb = np.zeros_like(n_t)
    n_t = n_t - n_bb

    rows_a = np.concatenate([a, a, a, a])
    rows_b = np.concatenate([b, b, b, b])
    rows_o = np.repeat(np.arange(4, dtype=np.int64), num_pairs)
    rows_c = np.concatenate([n_a, n_b, n_t, n_bb]).astype(np.int64)
    keep = rows_c > 0
    key_rows = (rows_a[keep] * m + rows_b[keep]) * NUM_OUTCOMES + rows_o[keep]
    order = np.argsort(key_rows, kind="stable")
    key_rows = key_rows[order]
    votes = Votes(
        models=tuple(f"model_{i:0{len(str(m - 1))}d}" for i in range(m)),
        a=(key_rows // NUM_OUTCOMES) // m,
        b=(key_rows // NUM_OUTCOMES) % m,
        outcome=key_rows % NUM_OUTCOMES,
        count=rows_c[keep][order],
    )
    return votes, theta


def _seed_from_key(key: jax.Array) -> list[int]:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return [int(v) for v in np.asarray(key, dtype=np.uint32).reshape(-1)]
