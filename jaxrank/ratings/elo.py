r"""Online Elo: replay votes one by one with `lax.scan`, and many random orderings at once with `vmap`.

For a vote between `a` and `b` with current ratings `R_a`, `R_b`:

    E_a = 1 / (1 + base ** ((R_b - R_a) / scale)),   E_b = 1 / (1 + base ** ((R_a - R_b) / scale))
    S_a = 1 (a wins), 0 (b wins), 1/2 (tie or tie (bothbad)); a soft vote scores S_a = P(a wins)
    R_a <- R_a + k (S_a - E_a),   R_b <- R_b + k (1 - S_a - E_b)

This is Chatbot Arena's original `compute_elo` (FastChat), arithmetic included. Online Elo depends on
the order of the votes (a known complaint about it); `elo_permutations` replays the same votes in many
random orders in one compiled call and reports the median and spread of the final ratings.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrank.votes.table import Votes

__all__ = ["online_elo", "elo_permutations", "EloPermutationResult", "replay_elo", "random_vote_orders",
           "check_elo_options"]

_SCORES = np.array([1.0, 0.0, 0.5, 0.5], np.float32)  # S_a of A_WINS, B_WINS, TIE, TIE_BOTHBAD


class _EloState(NamedTuple):
    """The `lax.scan` carry: ratings float32[..., M]."""

    ratings: jax.Array


def _check_number(value: Any, name: str, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"{name} must be a finite number{' > 0' if positive else ''}, got {value!r}")
    return value


def _votes(votes_or_arrays: Any, num_models: int | None) -> tuple[jax.Array, jax.Array, jax.Array, int]:
    """Per-vote `(a, b, score of a)` in input order, and M."""
    if isinstance(votes_or_arrays, Votes):
        votes = votes_or_arrays
        if votes.count is not None and np.any(votes.count != 1):
            raise ValueError(
                "votes carry counts (entries stand for several identical votes, e.g. synthetic_votes): online Elo "
                "replays votes one by one in order and needs one entry per vote; expand them with "
                "votes.subset(np.repeat(np.arange(len(votes)), votes.count)) (and shuffle), or pass (a, b, outcome) arrays"
            )
        if len(votes) == 0:
            raise ValueError("no votes (N = 0); nothing to rate")
        return (jnp.asarray(votes.a), jnp.asarray(votes.b), jnp.asarray(votes.score_a(), jnp.float32),
                votes.num_models)
    if not isinstance(votes_or_arrays, (tuple, list)) or len(votes_or_arrays) != 3:
        raise TypeError(
            "votes must be a jaxrank.Votes or a tuple (a, b, outcome) of int arrays [N], got "
            f"{type(votes_or_arrays).__name__}"
        )
    arrays = []
    for name, x in zip(("a", "b", "outcome"), votes_or_arrays):
        x = x if isinstance(x, (jax.Array, np.ndarray)) else np.asarray(x)
        if x.ndim != 1:
            raise ValueError(f"{name} must have shape [N] (one entry per vote), got shape {tuple(x.shape)}")
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise TypeError(f"{name} must hold integer codes, got dtype {x.dtype}")
        arrays.append(jnp.asarray(x, jnp.int32))
    a, b, outcome = arrays
    if not (a.shape == b.shape == outcome.shape):
        raise ValueError(
            f"a, b and outcome must have the same shape [N], got {tuple(a.shape)}, {tuple(b.shape)}, {tuple(outcome.shape)}"
        )
    if a.shape[0] == 0:
        raise ValueError("no votes (N = 0); nothing to rate")
    if num_models is None:
        num_models = int(max(np.asarray(a).max(), np.asarray(b).max())) + 1
    if not isinstance(num_models, (int, np.integer)) or num_models < 2:
        raise ValueError(f"num_models must be an int >= 2, got {num_models!r}")
    for name, x in (("a", a), ("b", b)):
        xn = np.asarray(x)
        if xn.min() < 0 or xn.max() >= num_models:
            raise ValueError(f"{name} must hold model indices in [0, num_models={num_models}), got range [{xn.min()}, {xn.max()}]")
    same = np.flatnonzero(np.asarray(a) == np.asarray(b))
    if same.size:
        raise ValueError(f"{same.size} vote(s) have a model playing itself (a == b), e.g. vote {int(same[0])}")
    on = np.asarray(outcome)
    if on.min() < 0 or on.max() > 3:
        raise ValueError(f"outcome must hold codes 0..3 (A_WINS, B_WINS, TIE, TIE_BOTHBAD), got range [{on.min()}, {on.max()}]")
    return a, b, jnp.asarray(_SCORES[on]), int(num_models)


#: `lax.scan` unroll of the per-vote steps (4 and 8 measure alike on a 2-core CPU).
_UNROLL = 4

#: Votes per block of the replay: each block's per-lane indices and scores are gathered at once, outside the
#: per-vote steps. 256 measured best on a 2-core CPU for 100 lanes (128-4096 are within 20 %).
_BLOCK = 256

_SCATTER_DIMS = jax.lax.ScatterDimensionNumbers(
    update_window_dims=(), inserted_window_dims=(0,), scatter_dims_to_operand_dims=(0,)
)


def _replay_many(a, b, score, orders, *, num_models, k, scale, base, init, unroll):
    """Final ratings float32[P, M] after replaying, for each lane p, the votes `orders[p]` in order.

    `orders` is int32[P, L], lane-major (each lane's sequence contiguous). The P lanes advance together in
    one `lax.scan` over time. Ratings live in a flat [P * M] vector, so each step is one 2P-element gather
    and one 2P-element scatter, not a dense [P, M] pass. Time runs in blocks of `_BLOCK` votes: per block,
    the lanes' model slots and scores are gathered for the whole block at once (vectorised random reads of
    the vote arrays), so a step is just one fused kernel (read both ratings, update) and one scatter; per-step
    kernel launches, not arithmetic, bound this loop on CPU. Each step's 2P updates are
    `[delta_1 .. delta_P, -delta_1 .. -delta_P]` at slots `[a-slots, b-slots]` (all distinct: a != b in each
    vote, lanes disjoint), the same numbers as two separate updates of a and b.
    `E_a = 1 / (1 + base ** ((R_b - R_a) / scale)) = sigmoid((R_a - R_b) ln(base) / scale)` and
    `E_b = 1 - E_a`, so the update of b is exactly minus the update of a (the exponent form of FastChat
    computes the same numbers up to rounding).
    """
    num_lanes, length = orders.shape
    lane = (jnp.arange(num_lanes, dtype=jnp.int32) * num_models)[None, :]
    slope = math.log(base) / scale
    sign = jnp.concatenate([jnp.ones((num_lanes,), jnp.float32), jnp.full((num_lanes,), -1.0, jnp.float32)])

    def step(state: _EloState, x):
        slot_a, slot_b, slots, s = x  # [2P] each: a-slots twice, b-slots twice, (a-slots, b-slots), scores twice
        ratings = state.ratings
        ea = jax.nn.sigmoid((ratings[slot_a] - ratings[slot_b]) * slope)
        update = sign * (k * (s - ea))  # (delta, -delta): multiplying by -1 is exact
        # Slots are in bounds by construction (validated model indices) and distinct within a step.
        ratings = jax.lax.scatter_add(ratings, slots[:, None], update, _SCATTER_DIMS, indices_are_sorted=False,
                                      unique_indices=True, mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)
        return _EloState(ratings), None

    def block_inputs(idx):  # idx int32[P, T] -> the step inputs, [T, 2P] each
        idx = idx.T
        sa, sb, s = lane + a[idx], lane + b[idx], score[idx]
        return (jnp.concatenate([sa, sa], 1), jnp.concatenate([sb, sb], 1), jnp.concatenate([sa, sb], 1),
                jnp.concatenate([s, s], 1))

    state = _EloState(jnp.full((num_lanes * num_models,), init, jnp.float32))
    blocks, rest = divmod(length, _BLOCK)
    if blocks:

        def block(state: _EloState, j):
            idx = jax.lax.dynamic_slice_in_dim(orders, j * _BLOCK, _BLOCK, axis=1)
            state, _ = jax.lax.scan(step, state, block_inputs(idx), unroll=unroll)
            return state, None

        state, _ = jax.lax.scan(block, state, jnp.arange(blocks, dtype=jnp.int32))
    if rest:
        state, _ = jax.lax.scan(step, state, block_inputs(orders[:, blocks * _BLOCK:]), unroll=unroll)
    return state.ratings.reshape(num_lanes, num_models)


@functools.partial(jax.jit, static_argnames=("num_models", "k", "scale", "base", "init", "unroll"))
def _online_elo_jit(a, b, score, order, *, num_models, k, scale, base, init, unroll):
    out = _replay_many(a, b, score, order[None, :], num_models=num_models, k=k, scale=scale, base=base, init=init, unroll=unroll)
    return out[0]


def check_elo_options(k: Any, scale: Any, base: Any, init: Any) -> tuple[float, float, float, float]:
    """Validate the Elo update options shared by `online_elo` and `elo_permutations`."""
    k = _check_number(k, "k")
    scale = _check_number(scale, "scale")
    base = _check_number(base, "base")
    if base == 1.0:
        raise ValueError("base must not be 1")
    return k, scale, base, _check_number(init, "init", positive=False)


def online_elo(
    votes: Any,
    *,
    k: float = 4.0,
    scale: float = 400.0,
    base: float = 10.0,
    init: float = 1000.0,
    order: Any = None,
    num_models: int | None = None,
) -> jax.Array:
    r"""Online Elo ratings after replaying the votes in order (one `lax.scan` over votes).

    Every model starts at `init`; each vote moves both ratings by `k (S - E)` (see the module
    docstring). Ties and `tie (bothbad)` score one half for each side (Chatbot Arena's convention); a
    soft vote scores `S = P(a wins)` (`Votes.score_a`). Vote weights are not used: each vote counts once,
    as in Arena's online Elo.

    Args:
        votes: `jaxrank.Votes` (replayed in table order; one entry per vote, no `count`), or a tuple
            `(a, b, outcome)` of int arrays [N] (model indices, outcome codes `A_WINS`=0, `B_WINS`=1,
            `TIE`=2, `TIE_BOTHBAD`=3).
        k: the K-factor (rating points moved by a fully unexpected result), > 0.
        scale, base: the logistic scale: `E_a = 1 / (1 + base ** ((R_b - R_a) / scale))`.
        init: starting rating.
        order: optional int[N] order in which to replay the votes (indices into the votes; a
            permutation, or any index sequence, e.g. a bootstrap resample). Default: input order.
        num_models: M, needed only with arrays when some model never appears (default `max + 1`).

    Returns:
        float32[M] ratings.

    Example:
        >>> import jax.numpy as jnp
        >>> r = online_elo((jnp.array([0, 1]), jnp.array([1, 2]), jnp.array([0, 2])))  # 0 beat 1, 1 tied 2
        >>> [round(float(x), 3) for x in r]
        [1002.0, 998.012, 999.988]
    """
    k, scale, base, init = check_elo_options(k, scale, base, init)
    a, b, score, m = _votes(votes, num_models)
    n = int(a.shape[0])
    if order is None:
        order = jnp.arange(n, dtype=jnp.int32)
    else:
        order = order if isinstance(order, (jax.Array, np.ndarray)) else np.asarray(order)
        if order.ndim != 1 or not jnp.issubdtype(order.dtype, jnp.integer):
            raise ValueError(f"order must be an int array [L] of vote indices, got {order.dtype} shape {tuple(order.shape)}")
        if not isinstance(order, jax.core.Tracer) and order.size and (int(np.asarray(order).min()) < 0 or int(np.asarray(order).max()) >= n):
            raise ValueError(f"order must hold vote indices in [0, {n}), got range [{np.asarray(order).min()}, {np.asarray(order).max()}]")
        order = jnp.asarray(order, jnp.int32)
    return _online_elo_jit(a, b, score, order, num_models=m, k=k, scale=scale, base=base, init=init, unroll=_UNROLL)


@struct.dataclass
class EloPermutationResult:
    """Online Elo over random vote orders.

    Attributes:
        models: model names (empty tuple when the input was arrays).
        confidence: the central probability of `[lower, upper]`.
        ratings: float32[P, M] final ratings of each permutation.
        median: float32[M] median over permutations.
        lower, upper: float32[M] the `(1 - confidence) / 2` and `(1 + confidence) / 2` quantiles.
    """

    models: tuple[str, ...] = struct.field(pytree_node=False)
    confidence: float = struct.field(pytree_node=False)
    ratings: jax.Array
    median: jax.Array
    lower: jax.Array
    upper: jax.Array

    @property
    def spread(self) -> jax.Array:
        """float32[M] `upper - lower`: how much the order alone moves each rating."""
        return self.upper - self.lower

    def to_frame(self):
        """pandas DataFrame `model, median, lower, upper, spread`, best first (models `0..M-1` when the input
        was arrays)."""
        import pandas as pd

        m = int(self.median.shape[-1])
        frame = pd.DataFrame({"model": list(self.models) if self.models else [str(i) for i in range(m)],
                              "median": np.asarray(self.median, np.float64), "lower": np.asarray(self.lower, np.float64),
                              "upper": np.asarray(self.upper, np.float64), "spread": np.asarray(self.spread, np.float64)})
        return frame.sort_values("median", ascending=False, kind="stable").reset_index(drop=True)


def random_vote_orders(keys: jax.Array, n: int, *, lane_major: bool = False) -> jax.Array:
    """int32[N, P]: column p is a uniformly random order of the N votes, drawn from `keys[p]`
    (int32[P, N], row p, with `lane_major=True`: what `replay_elo(..., lane_major=True)` takes, no transpose).

    Each lane seeds a NumPy PCG64 generator with the raw bits of its JAX key and draws a Fisher–Yates
    permutation (`Generator.shuffle` of `arange(N)`, in place in the lane's row: the same draws and the same
    permutation as `Generator.permutation(N)`): exact, O(N) and reproducible from the key. Sorting random
    keys (what `jax.random.permutation` does) costs about 30x more on CPU, where the votes are
    replayed anyway; the orders are then moved to the device once.
    """
    seeds = np.asarray(jax.random.key_data(keys)).reshape(keys.shape[0], -1)
    orders = np.empty((keys.shape[0], n), dtype=np.int32)
    for p, seed in enumerate(seeds):
        orders[p] = np.arange(n, dtype=np.int32)
        np.random.default_rng([int(w) for w in seed]).shuffle(orders[p])
    return jnp.asarray(orders if lane_major else np.ascontiguousarray(orders.T))


@functools.partial(jax.jit, static_argnames=("num_models", "k", "scale", "base", "init", "unroll", "lane_major"))
def replay_elo(a, b, score, orders, *, num_models, k=4.0, scale=400.0, base=10.0, init=1000.0, unroll=4,
               lane_major=False):
    """Final online-Elo ratings float32[P, M] of P replays at once (the kernel of `elo_permutations`).

    Args:
        a, b: int32[N] model indices of the votes; score: float32[N] the score of `a` (1 win, 0 loss,
            1/2 tie, or P(a wins)).
        orders: int32[L, P] column p is the sequence of vote indices lane p replays (any length L); with
            `lane_major=True`, int32[P, L], row p (the layout the replay reads, without a transpose).
        num_models, k, scale, base, init: static options (checked by `check_elo_options`).
        unroll: `lax.scan` unroll factor.
        lane_major: the layout of `orders` (static).
    """
    orders = orders if lane_major else orders.T
    return _replay_many(a, b, score, orders, num_models=num_models, k=k, scale=scale, base=base, init=init, unroll=unroll)


def elo_permutations(
    key: jax.Array,
    votes: Any,
    *,
    num_permutations: int = 1000,
    k: float = 4.0,
    scale: float = 400.0,
    base: float = 10.0,
    init: float = 1000.0,
    confidence: float = 0.95,
    chunk_size: int | None = None,
    num_models: int | None = None,
) -> EloPermutationResult:
    r"""Online Elo replayed over `num_permutations` random orders of the same votes, vmapped.

    Permutation `p` draws its order from the key `jax.random.split(key, num_permutations)[p]` (a
    Fisher–Yates shuffle seeded by that key, see `random_vote_orders`), so results do not depend on
    `chunk_size`. Permutations run
    `chunk_size` at a time (one compiled scan per chunk, the chunk's orderings advancing together),
    which bounds memory to about `chunk_size * N * 8` bytes (host and device copies of the orders).

    Args:
        key: PRNG key.
        votes: as for `online_elo`.
        num_permutations: P >= 1.
        k, scale, base, init: as for `online_elo`.
        confidence: central probability of the reported `[lower, upper]` band, in (0, 1).
        chunk_size: permutations per compiled call; default: at most 1024 and about 512 MiB of vote
            orders per chunk, split evenly (wider chunks are faster: a scan step costs about the same
            for 50 or 100 lanes).
        num_models: as for `online_elo`.

    Returns:
        `EloPermutationResult(ratings [P, M], median [M], lower [M], upper [M])`.

    Example:
        >>> res = elo_permutations(jax.random.key(0), votes, num_permutations=1000)  # doctest: +SKIP
        >>> res.median, res.spread                                                       # doctest: +SKIP
    """
    if not isinstance(num_permutations, (int, np.integer)) or isinstance(num_permutations, bool) or num_permutations < 1:
        raise ValueError(f"num_permutations must be an int >= 1, got {num_permutations!r}")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    k, scale, base, init = check_elo_options(k, scale, base, init)
    a, b, score, m = _votes(votes, num_models)
    n = int(a.shape[0])
    if chunk_size is None:
        # As many lanes per chunk as about 512 MiB of orders allow, split evenly so the last chunk is
        # not mostly padding. Each scan step costs a fixed few microseconds of kernel launches whatever
        # the lane count (100 lanes cost ~1.1x 50 lanes on CPU), so fewer, wider chunks are faster:
        # 100 orders of 1M votes run as one scan of 1M steps, not two.
        cap = int(max(1, min(1024, (1 << 27) // max(n, 1))))
        chunks = -(-int(num_permutations) // cap)
        chunk_size = -(-int(num_permutations) // chunks)
    elif not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    chunk_size = min(int(chunk_size), int(num_permutations))
    keys = jax.random.split(key, int(num_permutations))
    outs = []
    for start in range(0, int(num_permutations), chunk_size):
        chunk = keys[start : start + chunk_size]
        pad = chunk_size - chunk.shape[0]
        if pad:  # keep one compiled shape: pad the last chunk with repeated keys, drop them after
            chunk = jnp.concatenate([chunk, jnp.repeat(chunk[-1:], pad, axis=0)])
        orders = random_vote_orders(chunk, n, lane_major=True)
        out = replay_elo(a, b, score, orders, num_models=m, k=k, scale=scale, base=base, init=init, unroll=_UNROLL,
                         lane_major=True)
        outs.append(out[: chunk_size - pad])
    ratings = jnp.concatenate(outs, axis=0) if len(outs) > 1 else outs[0]
    q = jnp.asarray([(1.0 - confidence) / 2.0, 0.5, (1.0 + confidence) / 2.0], jnp.float32)
    lower, median, upper = jnp.quantile(ratings, q, axis=0)
    models = votes.models if isinstance(votes, Votes) else ()
    return EloPermutationResult(
        models=models, confidence=float(confidence), ratings=ratings, median=median, lower=lower, upper=upper
    )
