"""Divergences from final hidden states and unembedding matrices, never materialising `[tokens, vocab]`.

The cut-cross-entropy idea (Wijmans et al. 2024) applied to KL: instead of computing both models' logits
`h_a @ W_a` and `h_b @ W_b` (`[tokens, vocab]` each, 1 GiB per 1,024 tokens at Gemma 3's 262,144-entry
vocabulary in float32) and then a divergence, the logits are produced one vocabulary block at a time,
`h @ W[:, block]`, and folded into per-row running statistics (max, sum of exp, exp-weighted sums). The
backward pass (a `jax.custom_vjp`) recomputes the blocks from the saved hidden states, so neither pass
holds more than `[tokens, block_size]` floats per model.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxrank import _validation as v

FUSED_METRICS = ("kl", "cross_entropy", "entropy", "entropy_q")
DEFAULT_BLOCK_SIZE = 4096


class _Stats(NamedTuple):
    """Per-row running statistics over the vocabulary blocks seen so far (all `[N]` float32).

    With x the (soft-capped, temperature-scaled) logits of model A and y those of model B:
    `mx = max x`, `sx = Σ exp(x - mx)`, `txx = Σ exp(x - mx)·x`, `txy = Σ exp(x - mx)·y`, `txd = Σ exp(x - mx)·(x - y)` (KL without cancellation),
    `my = max y`, `sy = Σ exp(y - my)`, `tyy = Σ exp(y - my)·y`.
    """

    mx: jax.Array
    sx: jax.Array
    txx: jax.Array
    txy: jax.Array
    txd: jax.Array
    my: jax.Array
    sy: jax.Array
    tyy: jax.Array


def _scaled_logits(h: jax.Array, w_block: jax.Array, softcap: float | None, temperature: float):
    """Block logits in float32 and the derivative of the soft-cap (for the backward pass)."""
    raw = jnp.matmul(h, w_block, preferred_element_type=jnp.float32)
    if softcap is None:
        return raw / temperature, None
    t = jnp.tanh(raw / softcap)
    return softcap * t / temperature, 1.0 - t * t


def _merge(stats: _Stats, x: jax.Array, y: jax.Array) -> _Stats:
    bx = jnp.max(x, axis=-1)
    by = jnp.max(y, axis=-1)
    mx = jnp.maximum(stats.mx, bx)
    my = jnp.maximum(stats.my, by)
    # Rescale the old sums to the new max; the first block has mx = -inf and empty sums (scale 0).
    ax = jnp.where(jnp.isneginf(stats.mx), 0.0, jnp.exp(stats.mx - mx))
    ay = jnp.where(jnp.isneginf(stats.my), 0.0, jnp.exp(stats.my - my))
    ex = jnp.exp(x - mx[:, None])
    ey = jnp.exp(y - my[:, None])
    return _Stats(
        mx=mx,
        sx=stats.sx * ax + jnp.sum(ex, axis=-1),
        txx=stats.txx * ax + jnp.sum(ex * x, axis=-1),
        txy=stats.txy * ax + jnp.sum(ex * y, axis=-1),
        txd=stats.txd * ax + jnp.sum(ex * (x - y), axis=-1),
        my=my,
        sy=stats.sy * ay + jnp.sum(ey, axis=-1),
        tyy=stats.tyy * ay + jnp.sum(ey * y, axis=-1),
    )


def _blocks(vocab: int, block_size: int) -> tuple[int, int]:
    """(number of full blocks, width of the trailing partial block, 0 if none)."""
    return vocab // block_size, vocab % block_size


def _combine(stats: _Stats, axis_name: Any) -> _Stats:
    """Statistics of the whole vocabulary from each shard's: rescale to the global max, then add."""
    if axis_name is None:
        return stats
    mx = lax.pmax(stats.mx, axis_name)
    my = lax.pmax(stats.my, axis_name)
    ax = jnp.where(jnp.isneginf(stats.mx), 0.0, jnp.exp(stats.mx - mx))
    ay = jnp.where(jnp.isneginf(stats.my), 0.0, jnp.exp(stats.my - my))

    def total(x, a):
        return lax.psum(x * a, axis_name)

    return _Stats(
        mx=mx,
        sx=total(stats.sx, ax),
        txx=total(stats.txx, ax),
        txy=total(stats.txy, ax),
        txd=total(stats.txd, ax),
        my=my,
        sy=total(stats.sy, ay),
        tyy=total(stats.tyy, ay),
    )


def _forward_stats(h_a, w_a, h_b, w_b, block_size, softcap_a, softcap_b, temperature, axis_name=None) -> _Stats:
    n = h_a.shape[0]
    vocab = w_a.shape[1]
    n_full, rest = _blocks(vocab, block_size)
    neg = jnp.full((n,), -jnp.inf, jnp.float32)
    zero = jnp.zeros((n,), jnp.float32)
    stats = _Stats(neg, zero, zero, zero, zero, neg, zero, zero)

    def block(start, width, stats):
        wa = lax.dynamic_slice_in_dim(w_a, start, width, axis=1)
        wb = lax.dynamic_slice_in_dim(w_b, start, width, axis=1)
        x, _ = _scaled_logits(h_a, wa, softcap_a, temperature)
        y, _ = _scaled_logits(h_b, wb, softcap_b, temperature)
        return _merge(stats, x, y)

    if n_full:
        stats = lax.fori_loop(0, n_full, lambda i, s: block(i * block_size, block_size, s), stats)
    if rest:
        stats = block(n_full * block_size, rest, stats)
    return _combine(stats, axis_name)


class _Summary(NamedTuple):
    """What the metrics and the backward pass need per row: log-partition functions and expectations."""

    lse_x: jax.Array  # log Σ exp x
    lse_y: jax.Array  # log Σ exp y
    ex: jax.Array  # E_p[x]
    ey: jax.Array  # E_p[y]
    eqy: jax.Array  # E_q[y]
    ed: jax.Array  # E_p[x - y]


def _summarise(s: _Stats) -> _Summary:
    return _Summary(
        lse_x=s.mx + jnp.log(s.sx),
        lse_y=s.my + jnp.log(s.sy),
        ex=s.txx / s.sx,
        ey=s.txy / s.sx,
        eqy=s.tyy / s.sy,
        ed=s.txd / s.sx,
    )


def _metric_values(m: _Summary) -> dict[str, jax.Array]:
    # log p = x - lse_x, log q = y - lse_y.
    cross_entropy = m.lse_y - m.ey  # H(P, Q) = -E_p[log q]
    entropy = m.lse_x - m.ex  # H(P) = -E_p[log p]
    return {
        # KL = E_p[x - y] - lse(x) + lse(y): exactly 0 for identical inputs; clamp round-off below 0.
        "kl": jnp.maximum(m.ed - m.lse_x + m.lse_y, 0.0),
        "cross_entropy": cross_entropy,
        "entropy": entropy,
        "entropy_q": m.lse_y - m.eqy,
    }


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _fused(h_a, w_a, h_b, w_b, block_size, softcap_a, softcap_b, temperature, axis_name):
    stats = _forward_stats(h_a, w_a, h_b, w_b, block_size, softcap_a, softcap_b, temperature, axis_name)
    return _metric_values(_summarise(stats))


def _fused_fwd(h_a, w_a, h_b, w_b, block_size, softcap_a, softcap_b, temperature, axis_name):
    stats = _forward_stats(h_a, w_a, h_b, w_b, block_size, softcap_a, softcap_b, temperature, axis_name)
    summary = _summarise(stats)
    # Residuals: the inputs (already alive in the caller) and six [N] vectors; no [N, V] array.
    return _metric_values(summary), (h_a, w_a, h_b, w_b, summary)


def _fused_bwd(block_size, softcap_a, softcap_b, temperature, axis_name, residuals, cotangents):
    h_a, w_a, h_b, w_b, m = residuals
    # The KL clamp at 0 only hides round-off; its gradient is taken as that of the unclamped formula.
    g_kl = cotangents["kl"].astype(jnp.float32)
    g_ce = cotangents["cross_entropy"].astype(jnp.float32)
    g_h = cotangents["entropy"].astype(jnp.float32)
    g_hq = cotangents["entropy_q"].astype(jnp.float32)
    vocab = w_a.shape[1]
    n_full, rest = _blocks(vocab, block_size)

    def block(start, width, carry):
        dh_a, dw_a, dh_b, dw_b = carry
        wa = lax.dynamic_slice_in_dim(w_a, start, width, axis=1)
        wb = lax.dynamic_slice_in_dim(w_b, start, width, axis=1)
        x, dcap_a = _scaled_logits(h_a, wa, softcap_a, temperature)
        y, dcap_b = _scaled_logits(h_b, wb, softcap_b, temperature)
        p = jnp.exp(x - m.lse_x[:, None])
        q = jnp.exp(y - m.lse_y[:, None])
        xc = x - m.ex[:, None]
        yc = y - m.ey[:, None]
        # d/dx: KL -> p[(x-Ex) - (y-Ey)], CE -> -p (y-Ey), H -> -p (x-Ex); d/dy: KL, CE -> q - p,
        # H(Q) -> -q (y - E_q y).
        gx = p * ((g_kl - g_h)[:, None] * xc - (g_kl + g_ce)[:, None] * yc)
        gy = (g_kl + g_ce)[:, None] * (q - p) - g_hq[:, None] * q * (y - m.eqy[:, None])
        gx = gx / temperature
        gy = gy / temperature
        if dcap_a is not None:
            gx = gx * dcap_a
        if dcap_b is not None:
            gy = gy * dcap_b
        dh_a = dh_a + jnp.matmul(gx, wa.T.astype(jnp.float32))
        dh_b = dh_b + jnp.matmul(gy, wb.T.astype(jnp.float32))
        dwa_blk = jnp.matmul(h_a.T.astype(jnp.float32), gx)
        dwb_blk = jnp.matmul(h_b.T.astype(jnp.float32), gy)
        dw_a = lax.dynamic_update_slice_in_dim(dw_a, dwa_blk, start, axis=1)
        dw_b = lax.dynamic_update_slice_in_dim(dw_b, dwb_blk, start, axis=1)
        return dh_a, dw_a, dh_b, dw_b

    carry = (
        jnp.zeros(h_a.shape, jnp.float32),
        jnp.zeros(w_a.shape, jnp.float32),
        jnp.zeros(h_b.shape, jnp.float32),
        jnp.zeros(w_b.shape, jnp.float32),
    )
    if n_full:
        carry = lax.fori_loop(0, n_full, lambda i, c: block(i * block_size, block_size, c), carry)
    if rest:
        carry = block(n_full * block_size, rest, carry)
    dh_a, dw_a, dh_b, dw_b = carry
    if axis_name is not None:
        # Each shard saw its own vocabulary columns: the hidden-state gradients add up over them.
        dh_a, dh_b = lax.psum(dh_a, axis_name), lax.psum(dh_b, axis_name)
    return (dh_a.astype(h_a.dtype), dw_a.astype(w_a.dtype), dh_b.astype(h_b.dtype), dw_b.astype(w_b.dtype))


_fused.defvjp(_fused_fwd, _fused_bwd)


def _check_matrix(x: Any, name: str, layout: str) -> Any:
    x = v.as_array(x, name)
    v.check_float(x, name)
    v.check_ndim(x, name, 2, layout)
    return x


def fused_divergences(
    hidden_a: jax.Array,
    unembed_a: jax.Array,
    hidden_b: jax.Array,
    unembed_b: jax.Array,
    *,
    metrics: Sequence[str] = ("kl", "cross_entropy"),
    block_size: int | None = None,
    softcap_a: float | None = None,
    softcap_b: float | None = None,
    temperature: float = 1.0,
    axis_name: Any = None,
) -> dict[str, jax.Array]:
    """Per-row divergences between two models' next-token distributions, from hidden states.

    With logits `x = softcap_a(hidden_a @ unembed_a) / T` and `y = softcap_b(hidden_b @ unembed_b) / T`
    (`softcap(z) = c · tanh(z / c)`, Gemma's final-logit soft-cap; identity when `None`), P = softmax(x),
    Q = softmax(y):

    - `kl`: KL(P ‖ Q) = Σ_v p_v (log p_v − log q_v)
    - `cross_entropy`: H(P, Q) = −Σ_v p_v log q_v
    - `entropy`: H(P) = −Σ_v p_v log p_v;  `entropy_q`: H(Q)

    computed in one streaming pass over vocabulary blocks of `block_size` columns with running
    statistics (max, Σ exp, Σ exp·x, Σ exp·y), so no `[N, vocab]` array is created for either model;
    `H(P, Q) = lse(y) − E_p[y]` and `H(P) = lse(x) − E_p[x]`. Matmuls run in the input dtype with float32
    accumulation; results are float32. Differentiable with respect to all four arrays through a custom
    VJP that recomputes the blocks (saving only six `[N]` vectors). `jensen_shannon` needs both
    log-partition functions before its first term and is not offered here; use
    `jaxrank.divergence.divergences` on materialised logits for it.

    Args:
      hidden_a: `[N, d_a]` final (normed) hidden states of model A, one row per scored position.
      unembed_a: `[d_a, vocab]` unembedding (LM head) of model A.
      hidden_b: `[N, d_b]` final hidden states of model B at the same positions.
      unembed_b: `[d_b, vocab]` unembedding of model B; same vocabulary (token ids) as A.
      metrics: names from `("kl", "cross_entropy", "entropy", "entropy_q")`.
      block_size: vocabulary columns per block (default `min(vocab, 4096)`); need not divide vocab.
      softcap_a: final-logit soft-cap of model A (Gemma 2/3 style) or `None`.
      softcap_b: same for model B.
      temperature: divides both models' logits (after the soft-cap), > 0.
      axis_name: set inside `jax.shard_map` when the vocabulary is split over this mesh axis
        (a tensor-parallel LM head): `unembed_a`/`unembed_b` are then this device's columns, each
        device streams its own blocks, and the per-row statistics (max, Σ exp, Σ exp·x, ...) are
        combined with `lax.pmax` / `lax.psum` over the axis; the result is the full-vocabulary
        value on every device. No `[N, vocab]` array exists on any device.

    Returns:
      `{metric: float32[N]}` for each requested metric.

    Example:
      >>> h = jnp.ones((3, 8)); w = jnp.ones((8, 100))
      >>> fused_divergences(h, w, h, w)["kl"]  # identical models
      Array([0., 0., 0.], dtype=float32)
    """
    hidden_a = _check_matrix(hidden_a, "hidden_a", "[N, d_a]")
    unembed_a = _check_matrix(unembed_a, "unembed_a", "[d_a, vocab]")
    hidden_b = _check_matrix(hidden_b, "hidden_b", "[N, d_b]")
    unembed_b = _check_matrix(unembed_b, "unembed_b", "[d_b, vocab]")
    for side, hidden, unembed in (("a", hidden_a, unembed_a), ("b", hidden_b, unembed_b)):
        if hidden.shape[1] != unembed.shape[0]:
            raise ValueError(
                f"hidden_{side} [N, d_{side}] and unembed_{side} [d_{side}, vocab] disagree on d_{side}: "
                f"{tuple(hidden.shape)} vs {tuple(unembed.shape)}"
            )
    if hidden_a.shape[0] != hidden_b.shape[0]:
        raise ValueError(
            f"hidden_a and hidden_b must have the same number of rows N, got {hidden_a.shape[0]} and "
            f"{hidden_b.shape[0]}"
        )
    if unembed_a.shape[1] != unembed_b.shape[1]:
        raise ValueError(
            f"unembed_a and unembed_b must have the same vocabulary size, got {unembed_a.shape[1]} and "
            f"{unembed_b.shape[1]}; models with different tokenizers need sequence-level scoring "
            "(jaxrank.scoring.sequence_kl_estimate)"
        )
    v.check_nonempty(hidden_a, "hidden_a", 0, "row (N)")
    v.check_nonempty(unembed_a, "unembed_a", 1, "vocabulary")
    metrics = tuple(metrics)
    if not metrics:
        raise ValueError(f"metrics must name at least one of {FUSED_METRICS}")
    for name in metrics:
        if name not in FUSED_METRICS:
            extra = " (jensen_shannon needs materialised logits)" if name == "jensen_shannon" else ""
            v.check_choice(name, f"metrics entry{extra}", FUSED_METRICS)
    vocab = int(unembed_a.shape[1])
    if block_size is None:
        block_size = min(vocab, DEFAULT_BLOCK_SIZE)
    if not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    block_size = min(block_size, vocab)
    v.check_positive(temperature, "temperature")
    for cap, name in ((softcap_a, "softcap_a"), (softcap_b, "softcap_b")):
        if cap is not None:
            v.check_positive(cap, name)
    out = _fused(
        jnp.asarray(hidden_a),
        jnp.asarray(unembed_a),
        jnp.asarray(hidden_b),
        jnp.asarray(unembed_b),
        block_size,
        None if softcap_a is None else float(softcap_a),
        None if softcap_b is None else float(softcap_b),
        float(temperature),
        axis_name,
    )
    return {name: out[name] for name in metrics}


def _token_log_probs(h, w, targets, block_size, softcap, temperature, axis_name=None):
    n = h.shape[0]
    vocab = w.shape[1]
    n_full, rest = _blocks(vocab, block_size)

    def block(start, width, carry):
        m, s = carry
        z, _ = _scaled_logits(h, lax.dynamic_slice_in_dim(w, start, width, axis=1), softcap, temperature)
        new_m = jnp.maximum(m, jnp.max(z, axis=-1))
        scale = jnp.where(jnp.isneginf(m), 0.0, jnp.exp(m - new_m))
        return new_m, s * scale + jnp.sum(jnp.exp(z - new_m[:, None]), axis=-1)

    carry = (jnp.full((n,), -jnp.inf, jnp.float32), jnp.zeros((n,), jnp.float32))
    if n_full:
        carry = lax.fori_loop(0, n_full, lambda i, c: block(i * block_size, block_size, c), carry)
    if rest:
        carry = block(n_full * block_size, rest, carry)
    m, s = carry
    if axis_name is not None:
        m_g = lax.pmax(m, axis_name)
        s = lax.psum(s * jnp.where(jnp.isneginf(m), 0.0, jnp.exp(m - m_g)), axis_name)
        m = m_g
        # This shard holds columns [offset, offset + vocab); the target's logit comes from its owner.
        offset = lax.axis_index(axis_name) * vocab
        local = targets - offset
        mine = (local >= 0) & (local < vocab)
        targets = jnp.where(mine, local, 0)
    # The target's own logit: one column of W per row, [N, d] · [N, d] summed over d.
    w_t = jnp.take(w, targets, axis=1).T
    z_t = jnp.sum(h.astype(jnp.float32) * w_t.astype(jnp.float32), axis=-1)
    if axis_name is not None:
        z_t = lax.psum(jnp.where(mine, z_t, 0.0), axis_name)
    if softcap is not None:
        z_t = softcap * jnp.tanh(z_t / softcap)
    return z_t / temperature - (m + jnp.log(s))


def token_log_probs(
    hidden: jax.Array,
    unembed: jax.Array,
    targets: jax.Array,
    *,
    block_size: int | None = None,
    softcap: float | None = None,
    temperature: float = 1.0,
    axis_name: Any = None,
) -> jax.Array:
    """Log-probability of one target token per row, from hidden states, without `[N, vocab]` logits.

    `log p(t_n) = z_n[t_n] − log Σ_v exp z_n[v]` with `z = softcap(hidden @ unembed) / T`; the
    log-partition function streams over vocabulary blocks (running max and Σ exp), and the target
    logit is a row-wise dot product with the target's column of `unembed`. For scoring (forward); it
    is differentiable by ordinary autodiff, which keeps the per-block intermediates.

    Args:
      hidden: `[N, d]` final hidden states.
      unembed: `[d, vocab]` unembedding matrix.
      targets: `[N]` integer token ids in `[0, vocab)`.
      block_size: vocabulary columns per block (default `min(vocab, 4096)`).
      softcap: final-logit soft-cap or `None`.
      temperature: divides the logits, > 0.
      axis_name: set inside `jax.shard_map` when `unembed` is this device's slice of the vocabulary
        columns (shard i holds ids `[i·V_local, (i+1)·V_local)` of the axis): the log-partition
        function and the target's logit are combined over the axis (`pmax`/`psum`).

    Returns:
      `float32[N]` log-probabilities.

    Example:
      >>> token_log_probs(jnp.zeros((2, 4)), jnp.zeros((4, 10)), jnp.array([3, 7]))  # uniform: -log 10
      Array([-2.3025851, -2.3025851], dtype=float32)
    """
    hidden = _check_matrix(hidden, "hidden", "[N, d]")
    unembed = _check_matrix(unembed, "unembed", "[d, vocab]")
    targets = v.as_array(targets, "targets")
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise TypeError(f"targets must hold integer token ids, got dtype {targets.dtype}")
    if targets.shape != (hidden.shape[0],):
        raise ValueError(f"targets must have shape [N] = ({hidden.shape[0]},), got {tuple(targets.shape)}")
    if hidden.shape[1] != unembed.shape[0]:
        raise ValueError(
            f"hidden [N, d] and unembed [d, vocab] disagree on d: {tuple(hidden.shape)} vs {tuple(unembed.shape)}"
        )
    v.check_nonempty(unembed, "unembed", 1, "vocabulary")
    vocab = int(unembed.shape[1])
    block_size = min(vocab, DEFAULT_BLOCK_SIZE) if block_size is None else block_size
    if not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    v.check_positive(temperature, "temperature")
    return _token_log_probs(
        jnp.asarray(hidden),
        jnp.asarray(unembed),
        jnp.asarray(targets),
        min(block_size, vocab),
        None if softcap is None else float(softcap),
        float(temperature),
        axis_name,
    )
