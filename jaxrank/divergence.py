"""Per-position divergences between two next-token distributions, over the last (vocabulary) axis.

Every function takes logits `[..., vocab]` (any float dtype) and returns float32 `[...]`:

- `kl_divergence`:  KL(P ‖ Q) = Σ_v p_v (log p_v − log q_v)
- `cross_entropy`:  H(P, Q)   = −Σ_v p_v log q_v
- `entropy`:        H(P)      = −Σ_v p_v log p_v
- `jensen_shannon`: JS(P, Q)  = ½ KL(P ‖ M) + ½ KL(Q ‖ M),  M = ½ (P + Q)   (natural log, in [0, ln 2])
- `divergences`:    several of the above from one pass over the vocabulary (a dict by metric name).

with P = softmax(logits_p / temperature) and Q = softmax(logits_q / temperature).

Conventions. Accumulation is float32 whatever the input dtype. `-inf` logits are legal and mean
probability 0; `0 · log 0 = 0`, also where both inputs are `-inf` at the same position, and the
gradients there are finite (zero). Where p_v > 0 but q_v = 0, KL(P ‖ Q) and H(P, Q) are `+inf`
(the support of P is not inside the support of Q) and their gradients are not finite. A row whose
logits are all `-inf` is not a distribution: its results are NaN. `+inf` and NaN logits are rejected.

Values are checked without a pass of their own: the kernels return per-position FLAG_* bits from
the statistics they compute anyway (a NaN makes its block's Σ exp NaN, `+inf` the running max
`+inf`, an all `-inf` row leaves it at `-inf`), and concrete inputs raise from them (`check_flags`).
Under `jit`/`vmap`/`grad` nothing is raised unless `checked=True`, which turns the same checks into
`jax.experimental.checkify` checks (and checks that log-probabilities are normalised).

Implementations (the `implementation=` keyword; all give the same numbers and gradients):

- `"reference"`: `jax.nn.log_softmax` and plain sums; the definition, kept readable.
- `"blockwise"`: one streaming pass over vocabulary blocks that keeps only per-row running
  statistics (running max m, Σ exp(x − m), and Σ exp(x_p − m) · f for the few linear terms f the
  metrics need), so no `[tokens, vocab]` float32 temporary is created; a block size that does not
  divide the vocabulary is handled by a separate static tail block (no padding copy). Rows go a
  chunk at a time so that each block stays in cache (`block_plan`: on CPU `ROW_BLOCK` rows over the
  whole vocabulary up to `CPU_FULL_VOCAB` entries, else `DEFAULT_BLOCK_SIZE`-wide blocks). With
  lse = m + log Σ exp(x − m) and E_p[f] = Σ p f:
  KL = E_p[x_p − x_q] − lse_p + lse_q,  H(P, Q) = lse_q − E_p[x_q],  H(P) = lse_p − E_p[x_p].
  Jensen–Shannon needs the normalisers first, so it takes a second pass. A `jax.custom_vjp` saves
  only per-row statistics; the backward pass recomputes p and q elementwise from them.
- `"vocab_sharded"`: the vocabulary split over the mesh axis `vocab_axis` of `mesh` (the layout a
  tensor-parallel LM head produces), run in `jax.shard_map`; each device computes the statistics of
  its slice and they are combined with `lax.pmax` / `lax.psum`.
- `"auto"`: `"vocab_sharded"` when a `mesh` is given, otherwise `"blockwise"` when the vocabulary
  has at least `AUTO_BLOCKWISE_MIN_VOCAB` entries (one default block), else `"reference"`; on CPU
  blockwise was 2.8-4.3x faster than reference at vocab 32,000 and 262,144 (docs/divergence.md).

Callers already inside `shard_map` pass `axis_name=`: the inputs are then the local vocabulary
slice and the partial statistics are combined over that axis, with either local implementation.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec

from jaxrank import _validation as V

METRICS: tuple[str, ...] = ("kl", "cross_entropy", "entropy", "entropy_q", "jensen_shannon")
IMPLEMENTATIONS: tuple[str, ...] = ("auto", "reference", "blockwise", "vocab_sharded")

# Block plan of the blockwise kernel (`block_plan`). On CPU a step's dozen small kernels each cost
# a few microseconds whatever their size, and XLA:CPU only splits a kernel over its threads when it
# is large: so steps are few and large, a chunk of ROW_BLOCK rows over the whole vocabulary when it
# has at most CPU_FULL_VOCAB entries ([8, 32000] float32 is 1 MiB a model, in L2/L3), else
# DEFAULT_BLOCK_SIZE entries a step. On the idle 2-core CPU [8, 32000] steps were 1.6-2x faster than
# [8, 2048] ones (they run on both cores; under load, with one core to spare, they were 1.1-1.2x
# slower); docs/divergence.md has the sweep. GPU_ROW_BLOCK (other backends, not measured here)
# bounds the float32 temporaries to [GPU_ROW_BLOCK, vocab].
DEFAULT_BLOCK_SIZE = 32768
CPU_FULL_VOCAB = 65536
ROW_BLOCK = 8
GPU_ROW_BLOCK = 128
# From this vocabulary size on, "auto" picks the blockwise kernel.
AUTO_BLOCKWISE_MIN_VOCAB = 2048

# Per-position validity flags (`divergences(..., return_flags=True)`), int32 bits: FLAG_* for
# logits_p, the same shifted left by FLAG_Q_SHIFT for logits_q.
FLAG_NAN = 1  # a NaN logit
FLAG_POSINF = 2  # a +inf logit
FLAG_EMPTY = 4  # every logit -inf: no distribution
FLAG_UNNORMALISED = 8  # log_probs=True only: |log Σ exp(x)| above the dtype's tolerance
FLAG_Q_SHIFT = 4
# |log Σ_v exp(log p_v)| allowed for log-probabilities (log_probs=True, checked=True), by itemsize:
# rounding float64 log-softmax outputs to bfloat16 moved it by at most 3.4e-3 (float16 4.2e-4, float32
# 4e-8) over logit scales 1-10 and vocabularies 100-262,144; raw logits are off by about log(vocab).
NORMALISED_TOL = {2: 0.02, 4: 1e-3, 8: 1e-3}

_LN2 = math.log(2.0)
_NEG_INF = -jnp.inf


class _Config(NamedTuple):
    """Static options of one kernel call (hashable: it is a jit / custom_vjp static argument)."""

    metrics: tuple[str, ...]
    log_probs: bool
    inv_temperature: float
    block_size: int | None  # None: DEFAULT_BLOCK_SIZE
    axis_name: Any


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------


def _scaled(x: jax.Array, inv_t: float) -> jax.Array:
    x = x.astype(jnp.float32)
    return x if inv_t == 1.0 else x * jnp.float32(inv_t)


def _psum(x: Any, axis_name: Any) -> Any:
    return x if axis_name is None else lax.psum(x, axis_name)


def _finite_or_zero(m: jax.Array) -> jax.Array:
    # A row (or block) that is entirely -inf has max -inf; shifting by it would give NaN.
    return jnp.where(jnp.isneginf(m), jnp.float32(0.0), m)


def _needs(metrics: Sequence[str]) -> tuple[bool, bool]:
    """(needs P, needs Q): entropy alone needs only logits_p; entropy_q alone only logits_q."""
    need_p = any(m != "entropy_q" for m in metrics)
    need_q = any(m != "entropy" for m in metrics)
    return need_p, need_q


# --------------------------------------------------------------------------------------------
# reference: log_softmax and plain sums
# --------------------------------------------------------------------------------------------


def _log_softmax(x: jax.Array, axis_name: Any) -> jax.Array:
    if axis_name is None:
        return jax.nn.log_softmax(x, axis=-1)
    # Sharded vocabulary: the normaliser combines every shard; shift by the global max.
    m = lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
    m = lax.stop_gradient(lax.pmax(m, axis_name))
    m = _finite_or_zero(m)
    s = _psum(jnp.sum(jnp.exp(x - m), axis=-1, keepdims=True), axis_name)
    return x - (m + jnp.log(s))


def _reference(xp: jax.Array | None, xq: jax.Array | None, cfg: _Config) -> dict[str, jax.Array]:
    metrics, ax = cfg.metrics, cfg.axis_name

    def total(terms: jax.Array) -> jax.Array:
        return _psum(jnp.sum(terms, axis=-1), ax)

    def row_ok(x: jax.Array) -> jax.Array:
        # A row of only -inf logits is no distribution: its metrics are NaN.
        m = jnp.max(x, axis=-1)
        return jnp.isfinite(m if ax is None else lax.pmax(m, ax))

    def log_probs_of(x: jax.Array) -> jax.Array:
        if cfg.log_probs:
            return x
        # Double `where`: an all -inf row would make log_softmax's backward NaN even where its output
        # is discarded (a masked padding position, say); normalise a harmless 0 row instead. The
        # row's metrics are still NaN (the `row_ok` checks below), and its gradient is 0.
        return _log_softmax(jnp.where(row_ok(lax.stop_gradient(x))[..., None], x, 0.0), ax)

    lp = lq = p = q = None
    if xp is not None:
        lp = log_probs_of(_scaled(xp, cfg.inv_temperature))
        p = jnp.exp(lp)
    if xq is not None:
        lq = log_probs_of(_scaled(xq, cfg.inv_temperature))
        q = jnp.exp(lq)

    out: dict[str, jax.Array] = {}
    zero = jnp.float32(0.0)
    if p is not None:
        pm = p > 0
        # Double `where`: log-probabilities at p = 0 may be -inf; keep them out of the products so
        # that the forward value is 0 and the gradient through the unused branch is 0, not NaN.
        lp_s = jnp.where(pm, lp, zero)
    if q is not None:
        qm = q > 0
        lq_s = jnp.where(qm, lq, zero)
    if "kl" in metrics or "cross_entropy" in metrics:
        lq_at_p = jnp.where(pm, lq, zero)  # -inf where p > 0 and q = 0: KL and CE are +inf there
        if "kl" in metrics:
            out["kl"] = total(jnp.where(pm, p * (lp_s - lq_at_p), zero))
        if "cross_entropy" in metrics:
            out["cross_entropy"] = total(jnp.where(pm, -p * lq_at_p, zero))
    if "entropy" in metrics:
        out["entropy"] = total(jnp.where(pm, -p * lp_s, zero))
    if "entropy_q" in metrics:
        out["entropy_q"] = total(jnp.where(qm, -q * lq_s, zero))
    if "jensen_shannon" in metrics:
        either = pm | qm
        lm = jnp.logaddexp(jnp.where(either, lp, zero), jnp.where(either, lq, zero)) - _LN2
        lm_s = jnp.where(either, lm, zero)
        js_p = jnp.where(pm, p * (lp_s - lm_s), zero)
        js_q = jnp.where(qm, q * (lq_s - lm_s), zero)
        out["jensen_shannon"] = 0.5 * total(js_p + js_q)
    if not cfg.log_probs:
        nan = jnp.float32(jnp.nan)
        ok_p = None if xp is None else row_ok(lax.stop_gradient(xp))
        ok_q = None if xq is None else row_ok(lax.stop_gradient(xq))
        for m in out:
            ok = {"entropy": ok_p, "entropy_q": ok_q}.get(m)
            ok = ok if ok is not None else ok_p & ok_q
            out[m] = jnp.where(ok, out[m], nan)
    return {m: out[m] for m in metrics}


# --------------------------------------------------------------------------------------------
# blockwise: one streaming pass over vocabulary blocks, custom VJP from per-row statistics
# --------------------------------------------------------------------------------------------


class _Acc(NamedTuple):
    """Per-row running statistics of the streaming pass (float32 `[rows]`; nan_* bool `[rows]`).

    m_*: running max; s_*: Σ exp(x − m); a_pp: Σ e_p x_p; a_pd: Σ e_p (x_p − x_q);
    a_pq: Σ e_p x_q; a_qq: Σ e_q x_q, with e = exp(x − m) rescaled whenever m grows; nan_*: a NaN
    logit was seen (the value flags come from these statistics, not from a pass of their own).
    """

    m_p: jax.Array
    s_p: jax.Array
    a_pp: jax.Array
    a_pd: jax.Array
    a_pq: jax.Array
    m_q: jax.Array
    s_q: jax.Array
    a_qq: jax.Array
    nan_p: jax.Array
    nan_q: jax.Array


class _Stats(NamedTuple):
    """Per-row statistics the forward pass returns and the backward pass reuses."""

    lse_p: jax.Array
    lse_q: jax.Array
    kl: jax.Array
    cross_entropy: jax.Array
    entropy: jax.Array
    entropy_q: jax.Array
    js_p: jax.Array  # KL(P ‖ M)
    js_q: jax.Array  # KL(Q ‖ M)
    flags: jax.Array  # int32 FLAG_* bits


def _rescale(a: jax.Array, factor: jax.Array) -> jax.Array:
    # factor = exp(m_old − m_new) may underflow to 0 while a is ±inf (p > 0 where q = 0 in a
    # block far below the new max): those entries have p = 0 at the new scale, so they vanish.
    return jnp.where(factor > 0, a * factor, jnp.float32(0.0))


def _weighted_sum(e: jax.Array, f: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(e > 0, e * f, jnp.float32(0.0)), axis=-1)


def _shift(x: jax.Array, m_old: jax.Array, log_probs: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    """New running max, rescale factor for old sums, exp(x − m_new) for the block.

    With log-probabilities (≤ 0) nothing is shifted or normalised; the running max then only
    feeds the value flags."""
    m_new = jnp.maximum(m_old, jnp.max(x, axis=-1))
    if log_probs:
        return m_new, jnp.ones_like(m_old), jnp.exp(x)
    m_safe = _finite_or_zero(m_new)
    factor = jnp.where(jnp.isneginf(m_new), jnp.float32(0.0), jnp.exp(m_old - m_safe))
    return m_new, factor, jnp.exp(x - m_safe[:, None])


def _saw_nan(s_block: jax.Array, m_new: jax.Array) -> jax.Array:
    # A NaN logit makes its block's Σ exp NaN; so does +inf (through inf − inf), which is told apart
    # by the running max, +inf exactly then. (XLA:CPU's max reduction may skip NaN: not relied on.)
    return jnp.isnan(s_block) & ~jnp.isposinf(m_new)


def _update(acc: _Acc, bp: jax.Array | None, bq: jax.Array | None, cfg: _Config) -> _Acc:
    metrics, inv_t, lp = cfg.metrics, cfg.inv_temperature, cfg.log_probs
    xp = None if bp is None else _scaled(bp, inv_t)
    xq = None if bq is None else _scaled(bq, inv_t)
    m_p, s_p, a_pp, a_pd, a_pq = acc.m_p, acc.s_p, acc.a_pp, acc.a_pd, acc.a_pq
    m_q, s_q, a_qq, nan_p, nan_q = acc.m_q, acc.s_q, acc.a_qq, acc.nan_p, acc.nan_q
    if xp is not None:
        m_p, f, ep = _shift(xp, acc.m_p, lp)
        sp = jnp.sum(ep, axis=-1)
        s_p = _rescale(acc.s_p, f) + sp
        nan_p = nan_p | _saw_nan(sp, m_p)
        if "entropy" in metrics:
            a_pp = _rescale(acc.a_pp, f) + _weighted_sum(ep, xp)
        if "kl" in metrics:
            a_pd = _rescale(acc.a_pd, f) + _weighted_sum(ep, xp - xq)
        if "cross_entropy" in metrics:
            a_pq = _rescale(acc.a_pq, f) + _weighted_sum(ep, xq)
    if xq is not None:
        m_q, f, eq = _shift(xq, acc.m_q, lp)
        sq = jnp.sum(eq, axis=-1)
        s_q = _rescale(acc.s_q, f) + sq
        nan_q = nan_q | _saw_nan(sq, m_q)
        if "entropy_q" in metrics:
            a_qq = _rescale(acc.a_qq, f) + _weighted_sum(eq, xq)
    return _Acc(m_p, s_p, a_pp, a_pd, a_pq, m_q, s_q, a_qq, nan_p, nan_q)


def _stream(xp: jax.Array | None, xq: jax.Array | None, cfg: _Config, step, init, row0, n_rows: int, block: int):
    """Fold `step(carry, block_p, block_q)` over vocabulary blocks of rows [row0, row0 + n_rows):
    a loop over the full blocks, then one static tail block when `block` does not divide the
    vocabulary. Blocks are sliced straight from the inputs (slicing a row chunk first would
    materialise it)."""
    vocab = (xp if xp is not None else xq).shape[1]
    n_full, tail = divmod(vocab, block)

    def take(x, start, size):
        if x is None:
            return None
        if isinstance(start, int) and isinstance(row0, int):
            return lax.slice(x, (row0, start), (row0 + n_rows, start + size))
        return lax.dynamic_slice(x, (row0, start), (n_rows, size))

    carry = init
    if n_full == 1:
        carry = step(carry, take(xp, 0, block), take(xq, 0, block))
    elif n_full > 1:

        def body(i, c):
            # The barrier keeps XLA from hoisting a whole-input convert (bfloat16 -> float32, as
            # XLA:CPU widens the bf16 dynamic-slice) out of the loop: each block is widened alone.
            bp, bq, _ = lax.optimization_barrier((xp, xq, i))  # i: loop-variant
            return step(c, take(bp, i * block, block), take(bq, i * block, block))

        carry = lax.fori_loop(0, n_full, body, carry)
    if tail:
        carry = step(carry, take(xp, n_full * block, tail), take(xq, n_full * block, tail))
    return carry


def _combine_max(m: jax.Array, sums: list[jax.Array], axis_name: Any, log_probs: bool):
    """Bring per-shard (max, sums) to the global max and add them over `axis_name`."""
    if axis_name is None:
        return m, sums
    m_g = lax.pmax(m, axis_name)
    if log_probs:  # nothing was shifted; the max only feeds the flags
        return m_g, [lax.psum(s, axis_name) for s in sums]
    factor = jnp.where(jnp.isneginf(m_g), jnp.float32(0.0), jnp.exp(m - _finite_or_zero(m_g)))
    return m_g, [lax.psum(_rescale(s, factor), axis_name) for s in sums]


def _any(x: jax.Array, axis_name: Any) -> jax.Array:
    return x if axis_name is None else lax.pmax(x.astype(jnp.int32), axis_name) > 0


def _row_zeros(xp: jax.Array | None, xq: jax.Array | None, n_rows: int, dtype=jnp.float32) -> jax.Array:
    # zeros_like keeps the input's sharding type inside shard_map (loop carries must match it).
    return jnp.zeros_like((xp if xp is not None else xq)[:n_rows, 0], dtype=dtype)


def block_plan(rows: int, vocab: int, dtype: Any, block_size: int | None = None,
               backend: str | None = None) -> tuple[int, int]:
    """(rows per chunk, vocabulary entries per block) of the blockwise kernel for one input.

    CPU (measured, docs/divergence.md): whole vocabularies up to `CPU_FULL_VOCAB` per block, else
    blocks of `DEFAULT_BLOCK_SIZE`, `ROW_BLOCK` rows at a time: few, large steps, since each
    step's kernels cost a fixed few microseconds. Other backends (not measured here): `GPU_ROW_BLOCK`
    rows at a time over the whole vocabulary, which bounds the float32 temporaries to
    `[GPU_ROW_BLOCK, vocab]`. An explicit `block_size` sets the vocabulary block on any backend.
    """
    backend = backend or jax.default_backend()
    del dtype  # the same plan measured best for bfloat16 and float32 on CPU
    if backend == "cpu":
        row_block = ROW_BLOCK
        block = vocab if vocab <= CPU_FULL_VOCAB else DEFAULT_BLOCK_SIZE
    else:
        row_block, block = GPU_ROW_BLOCK, vocab
    if block_size is not None:
        block = block_size
    return _row_chunk(rows, row_block), min(block, vocab)


def _row_chunk(rows: int, row_block: int) -> int:
    """The largest divisor of `rows` not above `row_block` (a reshape, never a copy of the input);
    all rows at once when that divisor is too small to be worth a loop."""
    best = max(d for d in range(1, min(rows, row_block) + 1) if rows % d == 0)
    return best if best * 4 >= min(rows, row_block) else rows


def _blockwise_stats(xp: jax.Array | None, xq: jax.Array | None, cfg: _Config) -> _Stats:
    """Per-row statistics, a chunk of rows at a time (so each vocabulary block stays in cache)."""
    x0 = xp if xp is not None else xq
    rows, vocab = x0.shape
    chunk, block = block_plan(rows, vocab, x0.dtype, cfg.block_size)
    if chunk >= rows:
        return _row_block_stats(xp, xq, cfg, 0, rows, block)

    def body(i, buf):
        # As in _stream: no whole-input bfloat16 -> float32 convert hoisted out of the loop.
        bp, bq, _ = lax.optimization_barrier((xp, xq, i))  # i: loop-variant
        stats = _row_block_stats(bp, bq, cfg, i * chunk, chunk, block)
        return jax.tree.map(lambda b, s: lax.dynamic_update_slice_in_dim(b, s, i * chunk, 0), buf, stats)

    # psum'd zeros vary over the same mesh axes as the statistics (loop carries must match).
    zeros = _psum(_row_zeros(xp, xq, rows), cfg.axis_name)
    init = _Stats(*([zeros] * (len(_Stats._fields) - 1)), flags=zeros.astype(jnp.int32))
    return lax.fori_loop(0, rows // chunk, body, init)


def _row_block_stats(xp, xq, cfg: _Config, row0, n_rows: int, block: int) -> _Stats:
    """Statistics of rows [row0, row0 + n_rows): the streaming pass, the cross-shard combination,
    the Jensen–Shannon pass, and the value flags."""
    metrics, ax, log_probs = cfg.metrics, cfg.axis_name, cfg.log_probs
    zeros = _row_zeros(xp, xq, n_rows)
    m0 = jnp.full_like(zeros, _NEG_INF)
    no = _row_zeros(xp, xq, n_rows, bool)
    acc = _stream(xp, xq, cfg, lambda c, bp, bq: _update(c, bp, bq, cfg),
                  _Acc(m0, zeros, zeros, zeros, zeros, m0, zeros, zeros, no, no), row0, n_rows, block)

    m_p, (s_p, a_pp, a_pd, a_pq) = _combine_max(acc.m_p, [acc.s_p, acc.a_pp, acc.a_pd, acc.a_pq], ax, log_probs)
    m_q, (s_q, a_qq) = _combine_max(acc.m_q, [acc.s_q, acc.a_qq], ax, log_probs)
    nan_p, nan_q = _any(acc.nan_p, ax), _any(acc.nan_q, ax)
    out_zeros = _psum(zeros, ax)  # zeros that vary over the mesh axes like the combined statistics
    if log_probs:
        lse_p = lse_q = out_zeros
        norm_p = norm_q = jnp.ones_like(out_zeros)
    else:
        lse_p, lse_q = m_p + jnp.log(s_p), m_q + jnp.log(s_q)
        norm_p, norm_q = s_p, s_q
    kl = a_pd / norm_p - lse_p + lse_q
    ce = lse_q - a_pq / norm_p
    h_p = lse_p - a_pp / norm_p
    h_q = lse_q - a_qq / norm_q
    js_p = js_q = out_zeros
    if "jensen_shannon" in metrics:
        js_p, js_q = _jensen_shannon_pass(xp, xq, lse_p, lse_q, cfg, row0, n_rows, block)
    empty_p, empty_q = jnp.isneginf(m_p), jnp.isneginf(m_q)  # every logit -inf: no distribution
    if not log_probs:
        # A row of only -inf logits is no distribution: NaN, as in the reference (lse = -inf).
        nan = jnp.float32(jnp.nan)
        bad_p, bad_q = jnp.isneginf(lse_p), jnp.isneginf(lse_q)
        kl, ce = (jnp.where(bad_p | bad_q, nan, v) for v in (kl, ce))
        h_p = jnp.where(bad_p, nan, h_p)
        h_q = jnp.where(bad_q, nan, h_q)
        js_p, js_q = (jnp.where(bad_p | bad_q, nan, v) for v in (js_p, js_q))
    tol = normalised_tol((xp if xp is not None else xq).dtype)
    # With log_probs the sums are unshifted: log Σ exp(x) is log s, 0 for log-probabilities.
    flags = None if xp is None else _flag_bits(nan_p, m_p, empty_p, jnp.log(s_p), log_probs, tol)
    if xq is not None:
        bits_q = _flag_bits(nan_q, m_q, empty_q, jnp.log(s_q), log_probs, tol) << FLAG_Q_SHIFT
        flags = bits_q if flags is None else flags | bits_q
    return _Stats(lse_p, lse_q, kl, ce, h_p, h_q, js_p, js_q, flags)


def normalised_tol(dtype: Any) -> float:
    """The |log Σ exp(x)| a row of log-probabilities of this dtype may show (`NORMALISED_TOL`)."""
    return NORMALISED_TOL[min(max(jnp.dtype(dtype).itemsize, 2), 8)]


def _flag_bits(nan, m, empty, log_mass, log_probs: bool, tol: float) -> jax.Array:
    """FLAG_* bits of one input from its row statistics (Q's are shifted by FLAG_Q_SHIFT later)."""
    bits = (jnp.where(nan, FLAG_NAN, 0) | jnp.where(jnp.isposinf(m), FLAG_POSINF, 0)
            | jnp.where(empty, FLAG_EMPTY, 0))
    if log_probs:
        # log Σ exp(x) of log-probabilities is 0; an empty row (log 0 = -inf) is flagged here too.
        bits = bits | jnp.where(~(jnp.abs(log_mass) <= tol), FLAG_UNNORMALISED, 0)
    return bits.astype(jnp.int32)


def _log_probs_block(x: jax.Array, lse: jax.Array, inv_t: float) -> tuple[jax.Array, jax.Array]:
    lx = _scaled(x, inv_t) - lse[:, None]
    return lx, jnp.exp(lx)


def _js_terms(lp, p, lq, q):
    """Elementwise p (log p − log m) and q (log q − log m), 0 where the weight is 0; and log m."""
    zero = jnp.float32(0.0)
    pm, qm = p > 0, q > 0
    either = pm | qm
    lm = jnp.logaddexp(jnp.where(either, lp, zero), jnp.where(either, lq, zero)) - _LN2
    tp = jnp.where(pm, p * (jnp.where(pm, lp, zero) - lm), zero)
    tq = jnp.where(qm, q * (jnp.where(qm, lq, zero) - lm), zero)
    return tp, tq, lm


def _jensen_shannon_pass(xp, xq, lse_p, lse_q, cfg: _Config, row0, n_rows, block) -> tuple[jax.Array, jax.Array]:
    """Second streaming pass: KL(P ‖ M) and KL(Q ‖ M) once the normalisers are known."""

    def step(c, bp, bq):
        lp, p = _log_probs_block(bp, lse_p, cfg.inv_temperature)
        lq, q = _log_probs_block(bq, lse_q, cfg.inv_temperature)
        tp, tq, _ = _js_terms(lp, p, lq, q)
        return (c[0] + jnp.sum(tp, axis=-1), c[1] + jnp.sum(tq, axis=-1))

    zeros = _row_zeros(xp, xq, n_rows)
    js_p, js_q = _stream(xp, xq, cfg, step, (zeros, zeros), row0, n_rows, block)
    return _psum(js_p, cfg.axis_name), _psum(js_q, cfg.axis_name)


def _stats_outputs(stats: _Stats, metrics: Sequence[str]) -> dict[str, jax.Array]:
    values = {
        "kl": stats.kl,
        "cross_entropy": stats.cross_entropy,
        "entropy": stats.entropy,
        "entropy_q": stats.entropy_q,
        "jensen_shannon": 0.5 * (stats.js_p + stats.js_q),
    }
    return {m: values[m] for m in metrics}


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _blockwise(xp: jax.Array | None, xq: jax.Array | None, cfg: _Config) -> tuple[dict[str, jax.Array], jax.Array]:
    stats = _blockwise_stats(xp, xq, cfg)
    return _stats_outputs(stats, cfg.metrics), stats.flags


def _blockwise_fwd(xp, xq, cfg: _Config):
    stats = _blockwise_stats(xp, xq, cfg)
    # Residuals: the inputs (already alive) and per-row statistics only, no [rows, vocab] array.
    return (_stats_outputs(stats, cfg.metrics), stats.flags), (xp, xq, stats)


def _blockwise_bwd(cfg: _Config, res, cotangents):
    """Gradients from per-row statistics, one fused elementwise pass over each input.

    With G = ∂metric/∂(log p) for log-probabilities taken as free variables, the gradient through
    log_softmax is ∂/∂x = (G − p Σ_v G_v) / T, and Σ_v G_v is known in closed form per row:
      KL:  G_p = p (lp − lq + 1), Σ = KL + 1;   G_q = −p, Σ = −1
      CE:  G_p = −p lq, Σ = H(P, Q);            G_q = −p, Σ = −1
      H_P: G_p = −p (lp + 1), Σ = H(P) − 1;     H_Q likewise on q
      JS:  G_p = ½ p (lp − lm), Σ = ½ KL(P ‖ M); G_q likewise.
    With `log_probs=True` the inputs are those free variables and the gradient is G itself.
    """
    xp, xq, st = res
    g, _ = cotangents  # the flags (integers) have no cotangent
    metrics, inv_t, log_probs = cfg.metrics, cfg.inv_temperature, cfg.log_probs
    zero = jnp.float32(0.0)

    def coef(name):
        return g[name][:, None] if name in metrics else None

    g_kl, g_ce, g_h, g_hq, g_js = (coef(n) for n in METRICS)
    lp = p = lq = q = lm = None
    if xp is not None:
        lp, p = _log_probs_block(xp, st.lse_p, inv_t)
    if xq is not None:
        lq, q = _log_probs_block(xq, st.lse_q, inv_t)
    if g_js is not None:
        _, _, lm = _js_terms(lp, p, lq, q)

    dxp = dxq = None
    if xp is not None:
        pm = p > 0
        lp_s = jnp.where(pm, lp, zero)
        gp = jnp.zeros_like(p)
        total = jnp.zeros_like(st.lse_p)[:, None]
        if g_kl is not None or g_ce is not None:
            lq_at_p = jnp.where(pm, lq, zero)
        if g_kl is not None:
            gp = gp + g_kl * (lp_s - lq_at_p + 1.0)
            total = total + g_kl * (st.kl[:, None] + 1.0)
        if g_ce is not None:
            gp = gp - g_ce * lq_at_p
            total = total + g_ce * st.cross_entropy[:, None]
        if g_h is not None:
            gp = gp - g_h * (lp_s + 1.0)
            total = total + g_h * (st.entropy[:, None] - 1.0)
        if g_js is not None:
            gp = gp + 0.5 * g_js * (lp_s - jnp.where(pm, lm, zero))
            total = total + 0.5 * g_js * st.js_p[:, None]
        gp = jnp.where(pm, p * gp, zero)
        dxp = gp if log_probs else (gp - p * total) * jnp.float32(inv_t)
        # A row of only -inf logits has no distribution (NaN statistics): zero gradient, not NaN,
        # so that such rows at masked positions cannot poison a training step.
        dxp = jnp.where(jnp.isfinite(st.lse_p)[:, None], dxp, zero).astype(xp.dtype)
    if xq is not None:
        qm = q > 0
        gq = jnp.zeros_like(q)
        total = jnp.zeros_like(st.lse_q)[:, None]
        w = None
        for c in (g_kl, g_ce):
            if c is not None:
                w = c if w is None else w + c
        if w is not None:
            gq = gq - w * p
            total = total - w
        if g_hq is not None:
            lq_s = jnp.where(qm, lq, zero)
            gq = gq - g_hq * jnp.where(qm, q * (lq_s + 1.0), zero)
            total = total + g_hq * (st.entropy_q[:, None] - 1.0)
        if g_js is not None:
            lq_s = jnp.where(qm, lq, zero)
            gq = gq + 0.5 * g_js * jnp.where(qm, q * (lq_s - jnp.where(qm, lm, zero)), zero)
            total = total + 0.5 * g_js * st.js_q[:, None]
        dxq = gq if log_probs else (gq - q * total) * jnp.float32(inv_t)
        dxq = jnp.where(jnp.isfinite(st.lse_q)[:, None], dxq, zero).astype(xq.dtype)
    return dxp, dxq


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


# --------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------


def _local(xp, xq, cfg: _Config, implementation: str) -> tuple[dict[str, jax.Array], jax.Array]:
    """[rows, vocab] → ({metric: [rows]}, int32 flags [rows]) with the local kernel `implementation`."""
    if implementation == "reference":
        return _reference(xp, xq, cfg), _reference_flags(xp, xq, cfg)
    return _blockwise(xp, xq, cfg)


def _reference_flags(xp, xq, cfg: _Config) -> jax.Array:
    """The FLAG_* bits by plain reductions (the reference's own definition of each)."""
    ax = cfg.axis_name
    tol = normalised_tol((xp if xp is not None else xq).dtype)

    def bits(x):
        x = lax.stop_gradient(_scaled(x, cfg.inv_temperature))
        nan = _any(jnp.isnan(x).any(-1), ax)
        posinf = _any(jnp.isposinf(x).any(-1), ax)
        empty = ~_any(~jnp.isneginf(x).all(-1), ax)
        out = jnp.where(nan, FLAG_NAN, 0) | jnp.where(posinf, FLAG_POSINF, 0) | jnp.where(empty, FLAG_EMPTY, 0)
        if cfg.log_probs:
            mass = _psum(jnp.sum(jnp.exp(x), axis=-1), ax)
            out = out | jnp.where(jnp.abs(jnp.log(mass)) > tol, FLAG_UNNORMALISED, 0)
        return out.astype(jnp.int32)

    flags = None if xp is None else bits(xp)
    if xq is not None:
        flags = bits(xq) << FLAG_Q_SHIFT if flags is None else flags | (bits(xq) << FLAG_Q_SHIFT)
    return flags


def _local_choice(vocab: int, block_size: int | None) -> str:
    if block_size is not None or vocab >= AUTO_BLOCKWISE_MIN_VOCAB:
        return "blockwise"
    return "reference"


@functools.partial(jax.jit, static_argnames=("cfg", "implementation", "mesh", "vocab_axis"))
def _compute(xp, xq, *, cfg: _Config, implementation: str, mesh, vocab_axis: str):
    """Flatten to `[rows, vocab]`, run the chosen kernel (inside shard_map for vocab_sharded)."""
    x0 = xp if xp is not None else xq
    lead, vocab = x0.shape[:-1], x0.shape[-1]
    rows = int(np.prod(lead, dtype=np.int64))
    flat = lambda x: None if x is None else x.reshape(rows, vocab)  # noqa: E731
    fp, fq = flat(xp), flat(xq)
    if implementation == "vocab_sharded":
        local_vocab = vocab // mesh.shape[vocab_axis]
        local_impl = _local_choice(local_vocab, cfg.block_size)
        local_cfg = cfg._replace(axis_name=vocab_axis)
        spec = PartitionSpec(None, vocab_axis)
        args = tuple(x for x in (fp, fq) if x is not None)
        if any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
            # Explicit-axis meshes (the jax.make_mesh default) want the inputs laid out as in_specs
            # says; Auto meshes let shard_map move them itself.
            sharding = jax.sharding.NamedSharding(mesh, spec)
            args = tuple(jax.reshard(x, sharding) for x in args)

        def body(*local_args):
            it = iter(local_args)
            a = next(it) if fp is not None else None
            b = next(it) if fq is not None else None
            return _local(a, b, local_cfg, local_impl)

        out, flags = jax.shard_map(body, mesh=mesh, in_specs=(spec,) * len(args), out_specs=PartitionSpec())(*args)
    else:
        out, flags = _local(fp, fq, cfg, implementation)
    return {k: v.reshape(lead) for k, v in out.items()}, flags.reshape(lead)


def _place_on_mesh(x: Any, mesh: jax.sharding.Mesh, vocab_axis: str) -> Any:
    if x is None or not V.is_concrete(x):
        return x
    spec = PartitionSpec(*([None] * (x.ndim - 1)), vocab_axis)
    return jax.device_put(x, jax.sharding.NamedSharding(mesh, spec))


def _normalise_metrics(metrics: Any) -> tuple[str, ...]:
    if isinstance(metrics, str):
        metrics = (metrics,)
    try:
        names = tuple(dict.fromkeys(metrics))
    except TypeError as err:
        raise TypeError(f"metrics must be a metric name or a sequence of names from {METRICS}") from err
    if not names:
        raise ValueError(f"metrics must name at least one of {METRICS}, got an empty sequence")
    for m in names:
        V.check_choice(m, "metrics", METRICS)
    return names


def _check_logits(x: Any, name: str) -> Any:
    x = V.as_array(x, name)
    V.check_float(x, name)
    V.check_min_ndim(x, name, 1, "[..., vocab]")
    if x.shape[-1] == 0:
        raise ValueError(f"{name} has an empty vocabulary axis (shape {tuple(x.shape)}); nothing to normalise")
    return x


def check_flags(
    flags: Any,
    names: tuple[str, str] = ("logits_p", "logits_q"),
    *,
    counted: Any = None,
    reject_empty: bool = False,
    check_normalised: bool = False,
) -> None:
    """Raise the first error that per-position FLAG_* bits (`divergences(..., return_flags=True)`) show.

    The checks, in order, for `names[0]` (the bits of logits_p) and then `names[1]` (shifted by
    `FLAG_Q_SHIFT`): NaN, +inf, (with `reject_empty`) a row of only -inf, (with
    `check_normalised`) log-probabilities whose Σ exp differs from 1 by more than `NORMALISED_TOL`.
    Concrete flags raise `ValueError` naming the first position; traced flags (inside `jit`,
    `vmap`, `grad`) become `jax.experimental.checkify` checks, which need the caller to wrap the
    function in `checkify.checkify` (JAX says so at trace time otherwise).

    Args:
      flags: int32 `[...]`, one entry per position.
      names: the argument names to report for P's and Q's bits.
      counted: optional bool `[...]`: only these positions are checked (masked-out positions never
        reach a result or a gradient).
      reject_empty: also reject positions whose logits are all -inf.
      check_normalised: also reject log-probabilities that are not normalised.

    Raises:
      ValueError: concrete flags with a problem at a checked position.
    """
    checks = [(FLAG_NAN, "contains NaN{where} (first at index {at}); clean the inputs"),
              (FLAG_POSINF, "contains +inf{where} (first at index {at}); logits must be finite or -inf "
               "(probability 0)")]
    if reject_empty:
        checks.append((FLAG_EMPTY, "{at_list} is all -inf at a counted position (no distribution, its "
                       "score would be NaN); mask that position out"))
    if check_normalised:
        checks.append((FLAG_UNNORMALISED, "is not normalised (first at index {at}): Σ exp over the "
                       "vocabulary is not 1; log_probs=True needs log-probabilities, pass logits with "
                       "log_probs=False"))
    where = " at a counted position" if counted is not None else ""
    if V.is_concrete(flags) and (counted is None or V.is_concrete(counted)):
        values = np.asarray(flags)
        if counted is not None:
            values = np.where(np.asarray(counted, bool), values, 0)
        if not values.any():
            return
        for shift, name in zip((0, FLAG_Q_SHIFT), names):
            for bit, text in checks:
                hit = (values >> shift) & bit
                if hit.any():
                    at = tuple(int(i) for i in np.argwhere(hit)[0])
                    message = text.format(where=where, at=at, at_list=list(at))
                    raise ValueError(f"{name}{'' if message.startswith('[') else ' '}{message}")
        return
    from jax.experimental import checkify  # only traced, checked calls need it

    flags = jnp.asarray(flags)
    if counted is not None:
        flags = jnp.where(counted, flags, 0)
    shape = flags.shape
    for shift, name in zip((0, FLAG_Q_SHIFT), names):
        for bit, text in checks:
            hit = ((flags >> shift) & bit) != 0
            index = jnp.unravel_index(jnp.argmax(hit.reshape(-1)), shape) if shape else ()
            at = "(" + ", ".join("{%d}" % i for i in range(len(index))) + ("," if len(index) == 1 else "") + ")"
            message = text.format(where=where, at=at, at_list="[" + at[1:-1].rstrip(",") + "]")
            message = f"{name}{'' if message.startswith('[') else ' '}{message}"
            checkify.check(~hit.any(), message, *index)


def _prepare(
    logits_p, logits_q, *, metrics, log_probs, temperature, implementation, block_size, axis_name, mesh, vocab_axis
):
    """Validate everything (shapes, dtypes, options; values of concrete inputs) before tracing."""
    metrics = _normalise_metrics(metrics)
    V.check_choice(implementation, "implementation", IMPLEMENTATIONS)
    xp = None if logits_p is None else _check_logits(logits_p, "logits_p")
    xq = None if logits_q is None else _check_logits(logits_q, "logits_q")
    if xp is not None and xq is not None:
        V.check_same_shape(xp, xq, "logits_p", "logits_q")
    need_p, need_q = _needs(metrics)
    if (need_p and xp is None) or (need_q and xq is None):
        missing = "logits_p" if need_p and xp is None else "logits_q"
        raise TypeError(f"{missing} must be an array for metrics {metrics}, got None")
    x0 = xp if xp is not None else xq
    vocab = x0.shape[-1]

    if not isinstance(log_probs, (bool, np.bool_)):
        raise TypeError(f"log_probs must be True or False, got {log_probs!r}")
    inv_t = V.check_temperature(temperature, "temperature")
    if log_probs and inv_t != 1.0:
        raise ValueError(
            f"temperature={temperature!r} cannot be combined with log_probs=True: tempering "
            "log-probabilities needs a renormalisation; pass logits (log_probs=False) instead"
        )
    if block_size is not None:
        if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)):
            raise TypeError(f"block_size must be a positive int or None, got {block_size!r}")
        V.check_positive(int(block_size), "block_size")
        if implementation == "reference":
            raise ValueError("block_size applies to implementation='blockwise' or 'vocab_sharded', not 'reference'")

    if implementation == "auto":
        if mesh is not None and axis_name is None:
            implementation = "vocab_sharded"
        else:
            implementation = _local_choice(vocab, block_size)
    if implementation == "vocab_sharded":
        if axis_name is not None:
            raise ValueError(
                f"axis_name={axis_name!r} means the inputs are already a local vocabulary shard inside "
                "shard_map; use implementation='reference', 'blockwise' or 'auto' there, not 'vocab_sharded'"
            )
        if mesh is None:
            raise ValueError("implementation='vocab_sharded' needs mesh= (a jax.sharding.Mesh with a vocab axis)")
        if vocab_axis not in mesh.axis_names:
            raise ValueError(f"vocab_axis {vocab_axis!r} is not an axis of the mesh (axes {mesh.axis_names})")
        n = mesh.shape[vocab_axis]
        if vocab % n:
            raise ValueError(
                f"the vocabulary ({vocab}) must be divisible by the mesh's {vocab_axis!r} axis size ({n}) "
                "for implementation='vocab_sharded'; pad the logits with -inf to a multiple of it"
            )
    elif mesh is not None:
        raise ValueError(f"mesh= is only used by implementation='vocab_sharded', got implementation={implementation!r}")

    cfg = _Config(
        metrics=metrics,
        log_probs=bool(log_probs),
        inv_temperature=inv_t,
        block_size=int(block_size) if block_size is not None else None,
        axis_name=axis_name,
    )
    kw = dict(cfg=cfg, implementation=implementation, mesh=mesh if implementation == "vocab_sharded" else None,
              vocab_axis=vocab_axis)
    return xp, xq, kw


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def divergences(
    logits_p: jax.Array,
    logits_q: jax.Array,
    *,
    metrics: Sequence[str] | str = ("kl", "cross_entropy"),
    log_probs: bool = False,
    temperature: float = 1.0,
    implementation: str = "auto",
    block_size: int | None = None,
    axis_name: Any = None,
    mesh: jax.sharding.Mesh | None = None,
    vocab_axis: str = "vocab",
    checked: bool = False,
    return_flags: bool = False,
) -> dict[str, jax.Array] | tuple[dict[str, jax.Array], jax.Array]:
    """Several per-position divergences of P = softmax(logits_p / T) and Q = softmax(logits_q / T), in one pass.

    Metric names (`METRICS`): "kl" = KL(P ‖ Q) = Σ p (log p − log q); "cross_entropy" =
    H(P, Q) = −Σ p log q; "entropy" = H(P); "entropy_q" = H(Q); "jensen_shannon" =
    ½ KL(P ‖ M) + ½ KL(Q ‖ M) with M = ½ (P + Q) (natural log, in [0, ln 2]).

    Args:
      logits_p: `[..., vocab]` logits of P (any float dtype; `-inf` means probability 0).
      logits_q: `[..., vocab]` logits of Q, same shape.
      metrics: one metric name or a sequence of them.
      log_probs: the inputs are already log-probabilities: they are not normalised (and the
        gradient is with respect to them as free variables).
      temperature: a Python float > 0 dividing the logits before the softmax; must stay 1.0 with
        `log_probs=True`.
      implementation: "auto", "reference", "blockwise" or "vocab_sharded" (see the module doc).
      block_size: vocabulary entries per streaming block (blockwise; any value ≥ 1, it need not
        divide the vocabulary). Default `DEFAULT_BLOCK_SIZE`.
      axis_name: set when already inside `shard_map` with the vocabulary split over this mesh axis:
        the inputs are the local shard and the statistics are combined with pmax/psum over it.
      mesh: a `jax.sharding.Mesh` for implementation "vocab_sharded" (then the default "auto").
      vocab_axis: the mesh axis the vocabulary is split over (the vocabulary must be divisible by
        its size); the other mesh axes see replicated inputs.
      checked: also check where the values are unknown (under `jax.jit`, `vmap`, `grad`): every
        check becomes a `jax.experimental.checkify` check, so wrap the function in
        `checkify.checkify` and call `.throw()` on the error it returns. With `log_probs=True` it
        also checks that each row is normalised (|log Σ exp| ≤ `NORMALISED_TOL`), which catches raw
        logits passed as log-probabilities (they give a negative KL).
      return_flags: also return the per-position FLAG_* bits (int32 `[...]`) that the kernel
        computes in the same pass, for callers who want to look at them (`check_flags` raises the
        errors they show).

    Returns:
      `{metric: float32[...]}` in the order of `metrics`, the shape of the inputs without `vocab`;
      with `return_flags`, the pair `(that dict, flags)`.

    Values are checked in the same streaming pass as the metrics: concrete inputs with NaN or
    +inf logits raise a `ValueError` after the kernel ran, naming the first position. Under an
    outer transformation nothing is raised unless `checked=True`: NaN logits give NaN results
    there, and `+inf` ones NaN or +inf.

    Raises:
      TypeError: integer logits, non-array inputs, a bad `block_size` / `log_probs` type.
      ValueError: shapes that differ (named when only the vocabulary differs), 0-d inputs, NaN or
        +inf in concrete inputs, unknown metric or implementation, block_size < 1, temperature ≤ 0,
        a vocabulary not divisible by the mesh's vocab axis.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrank import divergences
      >>> a = jnp.array([[0.0, 1.0, 2.0]]); b = jnp.array([[2.0, 1.0, 0.0]])
      >>> out = divergences(a, b, metrics=("kl", "cross_entropy", "entropy"))
      >>> bool(jnp.allclose(out["cross_entropy"], out["entropy"] + out["kl"]))
      True
    """
    V.check_bool(checked, "checked")
    V.check_bool(return_flags, "return_flags")
    xp, xq, kw = _prepare(
        logits_p, logits_q, metrics=metrics, log_probs=log_probs, temperature=temperature,
        implementation=implementation, block_size=block_size, axis_name=axis_name, mesh=mesh,
        vocab_axis=vocab_axis,
    )
    metrics = kw["cfg"].metrics
    need_p, need_q = _needs(metrics)
    if kw["implementation"] == "vocab_sharded":
        # Concrete arrays (maybe committed to one device) are laid out over the mesh here, outside
        # jit; traced ones are laid out by the caller's jit / shard_map.
        xp, xq = (_place_on_mesh(x, kw["mesh"], vocab_axis) for x in (xp, xq))
    out, flags = _compute(xp if need_p else None, xq if need_q else None, **kw)
    out = {m: out[m] for m in metrics}  # jit returns dicts with sorted keys
    if checked or V.is_concrete(flags):
        check_flags(flags, check_normalised=checked and kw["cfg"].log_probs)
    return (out, flags) if return_flags else out


def _single(metric: str, logits_p, logits_q, **kw) -> jax.Array:
    return divergences(logits_p, logits_q, metrics=(metric,), **kw)[metric]


def kl_divergence(
    logits_p: jax.Array,
    logits_q: jax.Array,
    *,
    log_probs: bool = False,
    temperature: float = 1.0,
    implementation: str = "auto",
    block_size: int | None = None,
    axis_name: Any = None,
    mesh: jax.sharding.Mesh | None = None,
    vocab_axis: str = "vocab",
    checked: bool = False,
) -> jax.Array:
    """KL(P ‖ Q) = Σ_v p_v (log p_v − log q_v) per position, from logits `[..., vocab]`.

    `+inf` where some p_v > 0 has q_v = 0. Options (`checked=True` for checks under `jit`) as in
    `divergences`.

    Args:
      logits_p: `[..., vocab]` logits of P.
      logits_q: `[..., vocab]` logits of Q.

    Returns:
      float32 `[...]`, ≥ 0.

    Example:
      >>> import jax.numpy as jnp
      >>> float(kl_divergence(jnp.zeros((1, 4)), jnp.zeros((1, 4)))[0])
      0.0
    """
    return _single("kl", logits_p, logits_q, log_probs=log_probs, temperature=temperature,
                   implementation=implementation, block_size=block_size, axis_name=axis_name, mesh=mesh,
                   vocab_axis=vocab_axis, checked=checked)


def cross_entropy(
    logits_p: jax.Array,
    logits_q: jax.Array,
    *,
    log_probs: bool = False,
    temperature: float = 1.0,
    implementation: str = "auto",
    block_size: int | None = None,
    axis_name: Any = None,
    mesh: jax.sharding.Mesh | None = None,
    vocab_axis: str = "vocab",
    checked: bool = False,
) -> jax.Array:
    """H(P, Q) = −Σ_v p_v log q_v = H(P) + KL(P ‖ Q) per position, from logits `[..., vocab]`.

    `+inf` where some p_v > 0 has q_v = 0. Options (`checked=True` for checks under `jit`) as in
    `divergences`.

    Args:
      logits_p: `[..., vocab]` logits of P (the "target" distribution).
      logits_q: `[..., vocab]` logits of Q (the "model" distribution).

    Returns:
      float32 `[...]`.

    Example:
      >>> import jax.numpy as jnp
      >>> round(float(cross_entropy(jnp.zeros((4,)), jnp.zeros((4,)))), 4)  # log 4
      1.3863
    """
    return _single("cross_entropy", logits_p, logits_q, log_probs=log_probs, temperature=temperature,
                   implementation=implementation, block_size=block_size, axis_name=axis_name, mesh=mesh,
                   vocab_axis=vocab_axis, checked=checked)


def jensen_shannon(
    logits_p: jax.Array,
    logits_q: jax.Array,
    *,
    log_probs: bool = False,
    temperature: float = 1.0,
    implementation: str = "auto",
    block_size: int | None = None,
    axis_name: Any = None,
    mesh: jax.sharding.Mesh | None = None,
    vocab_axis: str = "vocab",
    checked: bool = False,
) -> jax.Array:
    """JS(P, Q) = ½ KL(P ‖ M) + ½ KL(Q ‖ M), M = ½ (P + Q), per position (natural log).

    Symmetric, finite even where the supports differ, in [0, ln 2]. Options (`checked=True` for
    checks under `jit`) as in `divergences`.

    Args:
      logits_p: `[..., vocab]` logits of P.
      logits_q: `[..., vocab]` logits of Q.

    Returns:
      float32 `[...]`.

    Example:
      >>> import jax.numpy as jnp
      >>> ninf = -jnp.inf
      >>> round(float(jensen_shannon(jnp.array([0.0, ninf]), jnp.array([ninf, 0.0]))), 4)  # ln 2
      0.6931
    """
    return _single("jensen_shannon", logits_p, logits_q, log_probs=log_probs, temperature=temperature,
                   implementation=implementation, block_size=block_size, axis_name=axis_name, mesh=mesh,
                   vocab_axis=vocab_axis, checked=checked)


def entropy(
    logits: jax.Array,
    *,
    log_probs: bool = False,
    temperature: float = 1.0,
    implementation: str = "auto",
    block_size: int | None = None,
    axis_name: Any = None,
    mesh: jax.sharding.Mesh | None = None,
    vocab_axis: str = "vocab",
    checked: bool = False,
) -> jax.Array:
    """H(P) = −Σ_v p_v log p_v per position, P = softmax(logits / T), from `[..., vocab]`.

    Options (`checked=True` for checks under `jit`) as in `divergences`.

    Args:
      logits: `[..., vocab]` logits.

    Returns:
      float32 `[...]`, in [0, log vocab].

    Example:
      >>> import jax.numpy as jnp
      >>> round(float(entropy(jnp.zeros((8,)))), 4)  # log 8
      2.0794
    """
    return _single("entropy", logits, None, log_probs=log_probs, temperature=temperature,
                   implementation=implementation, block_size=block_size, axis_name=axis_name, mesh=mesh,
                   vocab_axis=vocab_axis, checked=checked)
