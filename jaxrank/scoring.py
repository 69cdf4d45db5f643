"""Per-sequence disagreement scores between two models, and prompt prioritization.

`score_pairs` reduces the per-position divergences of `jaxrank.divergence` over the counted
positions of each sequence; `prioritize` turns the scores into the order in which prompts should be
labelled (highest disagreement first).
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrank import _validation as v
from jaxrank.divergence import METRICS, check_flags, divergences

__all__ = ["EmptySequenceWarning", "prioritize", "score_pairs", "sequence_kl_estimate"]

REDUCTIONS = ("mean", "sum")
IMPLEMENTATIONS = ("auto", "reference", "blockwise", "vocab_sharded")

# Sequences listed by index in the empty-sequence warning before it says "...".
_MAX_LISTED = 20


class EmptySequenceWarning(UserWarning):
    """Some sequences had no counted position (an all-False mask row); their scores are NaN."""


class ScoreOptions(NamedTuple):
    """Static (hashable) options of one compiled scoring function."""

    metrics: tuple[str, ...]
    reduction: str
    log_probs: bool
    temperature: float
    implementation: str
    block_size: int | None


def score_pairs(
    logits_a: Any,
    logits_b: Any,
    mask: Any = None,
    *,
    metrics: str | Sequence[str] = ("kl", "cross_entropy"),
    reduction: str = "mean",
    log_probs: bool = False,
    temperature: float = 1.0,
    implementation: str = "auto",
    block_size: int | None = None,
    axis_name: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
    checked: bool = False,
) -> dict[str, jax.Array]:
    r"""Per-sequence disagreement between two models' next-token distributions.

    For every position `t` of sequence `i`, `P_a = softmax(logits_a[i, t] / T)` and
    `P_b = softmax(logits_b[i, t] / T)` are compared over the vocabulary, and the per-position values
    are reduced over the positions where `mask[i, t]` is true:

    - `"kl"`: KL(P_a ‖ P_b) = Σ_v p_a(v) (log p_a(v) − log p_b(v))
    - `"cross_entropy"`: H(P_a, P_b) = −Σ_v p_a(v) log p_b(v)
    - `"entropy"`: H(P_a); `"entropy_q"`: H(P_b)
    - `"jensen_shannon"`: ½ KL(P_a ‖ M) + ½ KL(P_b ‖ M), M = ½ (P_a + P_b)

    `reduction="mean"`: score_i = Σ_t mask[i, t] d[i, t] / Σ_t mask[i, t];
    `reduction="sum"`: score_i = Σ_t mask[i, t] d[i, t].

    A sequence with no counted position (its mask row is all false) has no score: it gets NaN under
    both reductions, never a silent 0. When the inputs are concrete (not traced by an outer
    `jit`/`vmap`), an `EmptySequenceWarning` names how many and which sequences; under an outer
    transformation the NaN is the only signal. NaN scores are rejected by `prioritize` unless
    `drop_nan=True`.

    Accumulation is in float32 whatever the input dtype; the result is float32. The function is
    differentiable with respect to both logit inputs: masked positions get exactly zero gradient,
    and empty sequences give zero (not NaN) gradients. It can be wrapped in `jax.jit`, `jax.vmap`
    (e.g. over an extra leading axis) and `jax.grad`; it compiles once per shape and option set.

    Args:
      logits_a: `[batch, seq, vocab]` unnormalised logits of model A (the reference distribution P),
        any floating dtype (bfloat16, float16, float32, float64). `-inf` entries are legal.
      logits_b: `[batch, seq, vocab]` logits of model B (Q), same shape (same tokenizer/vocabulary).
      mask: optional `[batch, seq]` marking the positions that count: `bool`, or an integer array of
        0/1 (e.g. a tokenizer's `attention_mask`). Float masks are rejected (ambiguous: weights or
        flags?); pass `mask > 0` instead. `None` counts every position.
      metrics: one metric name or a sequence of them, from `jaxrank.divergence.METRICS`.
      reduction: `"mean"` or `"sum"` over the counted positions of each sequence.
      log_probs: the inputs are already log-probabilities (normalised); skips the log-softmax.
      temperature: positive divisor applied to the logits before the softmax.
      implementation: `"auto"`, `"reference"`, `"blockwise"` or `"vocab_sharded"`; see
        `jaxrank.divergence.divergences`. `"vocab_sharded"` is what `mesh=` with a vocab axis > 1
        (or `axis_name=`) does anyway; naming it only asserts that such a split is configured.
      block_size: vocabulary block size of the `"blockwise"` implementation (`None`: automatic).
      axis_name: set when calling from inside your own `jax.shard_map` in which the vocabulary (last
        axis) is split over the mesh axis `axis_name`: the inputs are then the local vocabulary
        shard, and partial statistics are combined across the axis. Batch and sequence stay local.
      mesh: a `jax.sharding.Mesh` with a `"data"` axis and optionally a `"vocab"` axis (see
        `jaxrank.sharding.make_mesh`): the batch is split over `"data"` and, when the vocab axis is
        larger than 1, the vocabulary over `"vocab"`, with `jax.shard_map`. A batch that the data axis
        does not divide is padded (with rows whose scores are discarded) and a vocabulary that the
        vocab axis does not divide is padded with `-inf` logits (probability 0, no contribution);
        divisible shapes avoid that copy. Same numbers as one device. Mutually exclusive with
        `axis_name`.
      checked: also check the values where they are unknown (under `jax.jit`, `vmap`, `grad`):
        the checks below become `jax.experimental.checkify` checks (wrap the caller in
        `checkify.checkify`, then `.throw()` the error it returns); with `log_probs=True` each
        counted position must also be normalised, which catches raw logits passed as
        log-probabilities. See docs/scoring.md.

    Values are checked in the same pass as the scores (no extra pass over the logits): concrete
    inputs with NaN or +inf logits, or all -inf logits, at a counted position raise a `ValueError`
    naming the first such position. Under an outer `jit` nothing is raised unless `checked=True`;
    such positions then give NaN scores.

    Returns:
      A dict mapping each requested metric name to a float32 array `[batch]`.

    Raises:
      ValueError: wrong shapes, mismatched vocabularies, empty batch/sequence/vocabulary, NaN in
        concrete inputs, unknown metric/reduction/implementation, non-positive temperature, a mask
        with values other than 0/1.
      TypeError: integer logits, float mask, a non-Mesh `mesh`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxrank import score_pairs
      >>> ka, kb = jax.random.split(jax.random.key(0))
      >>> a = jax.random.normal(ka, (4, 16, 100))
      >>> b = a + 0.5 * jax.random.normal(kb, (4, 16, 100))
      >>> mask = jnp.arange(16)[None, :] < jnp.array([16, 8, 4, 2])[:, None]
      >>> scores = score_pairs(a, b, mask)
      >>> scores["kl"].shape, scores["cross_entropy"].dtype
      ((4,), dtype('float32'))
    """
    logits_a = v.as_array(logits_a, "logits_a")
    logits_b = v.as_array(logits_b, "logits_b")
    if mask is not None:
        mask = v.as_array(mask, "mask")
    options = check_options(
        metrics=metrics,
        reduction=reduction,
        log_probs=log_probs,
        temperature=temperature,
        implementation=implementation,
        block_size=block_size,
    )
    if mesh is not None and axis_name is not None:
        raise ValueError(
            "mesh and axis_name are mutually exclusive: pass mesh= to let score_pairs shard the inputs, "
            "or axis_name= when calling from inside your own shard_map"
        )
    if axis_name is not None and not isinstance(axis_name, str):
        raise TypeError(f"axis_name must be a mesh axis name (str) or None, got {axis_name!r}")

    if implementation == "vocab_sharded" and axis_name is None and (mesh is None or _vocab_size(mesh) == 1):
        raise ValueError(
            "implementation='vocab_sharded' needs mesh= with a 'vocab' axis larger than 1 "
            "(jaxrank.sharding.make_mesh(vocab=...)) or axis_name= inside your own shard_map"
        )
    if mesh is not None:
        from jaxrank import sharding  # sharding builds on this module

        sharding.check_mesh(mesh)
    v.check_bool(checked, "checked")
    check_inputs(logits_a, logits_b, mask, check_values=False)
    if mesh is not None:
        scores, counts, flags = sharding.sharded_scores(mesh, options, logits_a, logits_b, mask)
    else:
        scores, counts, flags = _compiled_local(options, axis_name)(logits_a, logits_b, mask)
    if checked or v.is_concrete(flags):
        check_flags(flags, ("logits_a", "logits_b"), counted=None if mask is None else mask != 0,
                    reject_empty=True, check_normalised=checked and options.log_probs)
    warn_empty(counts, "score_pairs")
    return scores


def _vocab_size(mesh: Any) -> int:
    shape = getattr(mesh, "shape", {})
    return int(shape.get("vocab", 1)) if hasattr(shape, "get") else 1


def check_inputs(
    logits_a: Any,
    logits_b: Any,
    mask: Any,
    *,
    names: tuple[str, str, str] = ("logits_a", "logits_b", "mask"),
    check_values: bool = True,
) -> None:
    """Shape/dtype checks (static, so they run before compilation) and checks of a concrete mask's
    values; with `check_values`, also NaN / +inf / all -inf checks of concrete logits on the host (one
    NumPy pass; `score_pairs` takes these from the kernel's flags instead)."""
    name_a, name_b, name_mask = names
    v.check_ndim(logits_a, name_a, 3, "[batch, seq, vocab]")
    v.check_ndim(logits_b, name_b, 3, "[batch, seq, vocab]")
    v.check_float(logits_a, name_a)
    v.check_float(logits_b, name_b)
    v.check_same_shape(logits_a, logits_b, name_a, name_b)
    v.check_nonempty(logits_a, name_a, 0, "batch")
    v.check_nonempty(logits_a, name_a, 1, "seq")
    v.check_nonempty(logits_a, name_a, 2, "vocab")
    if mask is not None:
        batch, seq = logits_a.shape[:2]
        if tuple(mask.shape) != (batch, seq):
            raise ValueError(
                f"{name_mask} must have shape [batch, seq] = ({batch}, {seq}) to match the logits, "
                f"got {v.describe(mask)}"
            )
        if mask.dtype != jnp.bool_ and not jnp.issubdtype(mask.dtype, jnp.integer):
            raise TypeError(
                f"{name_mask} must be bool or an integer 0/1 array, got dtype {mask.dtype}; "
                "for a float mask pass `mask > 0` (weights are not supported)"
            )
        if mask.dtype != jnp.bool_ and v.is_concrete(mask):
            values = np.asarray(mask)
            bad = (values != 0) & (values != 1)
            if bad.any():
                raise ValueError(
                    f"{name_mask} is an integer array and must hold only 0 and 1, got {int(bad.sum())} other "
                    f"value(s), e.g. {values[bad].flat[0]}"
                )
    if not check_values:
        return
    counted = None
    if mask is not None and v.is_concrete(mask) and not isinstance(mask, jax.core.Tracer):
        with jax.ensure_compile_time_eval():
            counted = np.asarray(mask) != 0
    v.check_logit_values(logits_a, name_a, counted=counted, reject_empty_rows=True)
    v.check_logit_values(logits_b, name_b, counted=counted, reject_empty_rows=True)


def check_options(
    *,
    metrics: Any,
    reduction: Any,
    log_probs: Any,
    temperature: Any,
    implementation: Any,
    block_size: Any,
) -> ScoreOptions:
    if isinstance(metrics, str):
        metrics = (metrics,)
    try:
        metrics = tuple(metrics)
    except TypeError:
        raise TypeError(f"metrics must be a metric name or a sequence of names, got {metrics!r}") from None
    if not metrics:
        raise ValueError(f"metrics must name at least one metric from {', '.join(METRICS)}")
    for name in metrics:
        if not isinstance(name, str) or name not in METRICS:
            raise ValueError(f"metrics: unknown metric {name!r}; expected one of {', '.join(map(repr, METRICS))}")
    metrics = tuple(dict.fromkeys(metrics))  # repeated names are computed once, as in divergences
    v.check_choice(reduction, "reduction", REDUCTIONS)
    if not isinstance(log_probs, (bool, np.bool_)):
        raise TypeError(f"log_probs must be True or False, got {log_probs!r}")
    if isinstance(temperature, (bool, np.bool_)) or not isinstance(temperature, numbers.Real):
        raise TypeError(
            f"temperature must be a positive Python/NumPy number (a static option), got {type(temperature).__name__}"
        )
    if not (math.isfinite(float(temperature)) and float(temperature) > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    v.check_choice(implementation, "implementation", IMPLEMENTATIONS)
    if log_probs and float(temperature) != 1.0:
        raise ValueError(
            f"temperature={temperature!r} cannot be combined with log_probs=True: tempering "
            "log-probabilities needs a renormalisation; pass logits (log_probs=False) instead"
        )
    if block_size is not None and implementation == "reference":
        raise ValueError("block_size applies to implementation='blockwise' (or 'auto'), not 'reference'")
    if block_size is not None:
        if isinstance(block_size, (bool, np.bool_)) or not isinstance(block_size, numbers.Integral):
            raise TypeError(f"block_size must be a positive int or None, got {block_size!r}")
        v.check_positive(int(block_size), "block_size")
        block_size = int(block_size)
    return ScoreOptions(metrics, reduction, bool(log_probs), float(temperature), implementation, block_size)


def score_local(
    logits_a: jax.Array,
    logits_b: jax.Array,
    mask: jax.Array | None,
    options: ScoreOptions,
    axis_name: str | None,
) -> tuple[dict[str, jax.Array], jax.Array, jax.Array]:
    """Traceable core: per-sequence scores and the number of counted positions, `[batch]` each, and
    the kernel's per-position FLAG_* bits `[batch, seq]` (zero at masked-out positions)."""
    implementation = options.implementation
    if implementation == "vocab_sharded":
        # Here the inputs are the local vocabulary shard; the collectives over `axis_name` combine them.
        implementation = "auto"
    per_position, flags = divergences(
        logits_a,
        logits_b,
        metrics=options.metrics,
        log_probs=options.log_probs,
        temperature=options.temperature,
        implementation=implementation,
        block_size=options.block_size,
        axis_name=axis_name,
        return_flags=True,
    )
    if mask is None:
        mask = jnp.ones(logits_a.shape[:2], dtype=bool)
    else:
        mask = mask.astype(bool)
    flags = jnp.where(mask, flags, 0)
    counts = jnp.sum(mask, axis=-1, dtype=jnp.int32)
    has_any = counts > 0
    # A safe denominator keeps the unselected branch of `where` finite, so gradients stay NaN-free.
    denominator = jnp.where(has_any, counts, 1).astype(jnp.float32)
    scores = {}
    for name in options.metrics:
        # `where`, not multiplication: a non-finite value at a masked position must not leak in.
        total = jnp.sum(jnp.where(mask, per_position[name].astype(jnp.float32), 0.0), axis=-1)
        value = total / denominator if options.reduction == "mean" else total
        scores[name] = jnp.where(has_any, value, jnp.nan)
    return scores, counts, flags


@functools.lru_cache(maxsize=128)
def _compiled_local(options: ScoreOptions, axis_name: str | None):
    def run(logits_a, logits_b, mask):
        return score_local(logits_a, logits_b, mask, options, axis_name)

    return jax.jit(run)


def warn_empty(counts: Any, caller: str) -> None:
    """Warn naming the sequences without counted positions, when `counts` holds values."""
    if not v.is_concrete(counts):
        return
    try:
        values = np.asarray(counts)
    except Exception:  # a global array that this process cannot read whole: nothing to report here
        return
    empty = np.flatnonzero(values == 0)
    if empty.size:
        listed = ", ".join(str(i) for i in empty[:_MAX_LISTED])
        more = ", ..." if empty.size > _MAX_LISTED else ""
        warnings.warn(
            f"{caller}: {empty.size} of {values.size} sequence(s) have no counted position (all-false mask "
            f"row); their scores are NaN: indices [{listed}{more}]",
            EmptySequenceWarning,
            stacklevel=3,
        )


def prioritize(
    scores: Any,
    fraction: float | None = None,
    k: int | None = None,
    *,
    metric: str | None = None,
    drop_nan: bool = False,
) -> np.ndarray:
    """Indices of the items to label first: highest score first, ties broken by lower index.

    Give at most one of `fraction` and `k`; with neither, every rankable item is returned in order.
    `fraction` selects `ceil(fraction * n)` items (rounded up, so any fraction > 0 selects at least
    one), where `n` is the number of rankable scores (after dropping NaN when `drop_nan=True`);
    `k` larger than `n` returns all `n`.

    The order is deterministic: a stable sort on the negated scores, so equal scores keep their
    original order (lower index first). `+inf` ranks first and `-inf` last.

    Args:
      scores: `[n]` real scores (NumPy/JAX array or sequence), or the dict returned by `score_pairs`
        together with `metric=` naming the entry to rank by (optional when the dict has one entry).
      fraction: share of the items to select, in (0, 1].
      k: number of items to select, an int >= 0.
      metric: the key to rank by when `scores` is a dict.
      drop_nan: NaN scores (e.g. sequences with no counted position) raise a `ValueError` naming how
        many there are, unless `drop_nan=True`, which leaves them out of the ranking.

    Returns:
      `np.ndarray` of int64 indices into `scores`, `[min(selected, n)]`.

    Example:
      >>> from jaxrank import prioritize
      >>> prioritize([0.1, 0.9, 0.5, 0.9], k=3)
      array([1, 3, 2])
      >>> prioritize({"kl": [0.2, float("nan"), 0.4]}, fraction=0.5, drop_nan=True)
      array([2])
    """
    if isinstance(scores, Mapping):
        names = list(scores)
        if metric is None:
            if len(names) != 1:
                raise ValueError(
                    f"scores is a dict with entries {names}; pass metric= to choose the one to rank by"
                )
            metric = names[0]
        if metric not in scores:
            raise ValueError(f"metric {metric!r} is not in scores; available: {names}")
        values = scores[metric]
        label = f"scores[{metric!r}]"
    else:
        if metric is not None:
            raise ValueError("metric= only applies when scores is a dict returned by score_pairs")
        values = scores
        label = "scores"
    if not v.is_concrete(values):
        raise TypeError(f"{label} must hold concrete values; prioritize runs on the host, outside jit")
    try:
        values = np.asarray(values)
    except Exception as err:
        raise TypeError(f"{label} must be a 1-D array of numbers, got {type(values).__name__}") from err
    if values.ndim != 1:
        raise ValueError(f"{label} must have shape [n] (1 dimension), got shape {values.shape}")
    if values.dtype == np.bool_ or not (
        np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)
    ):
        raise TypeError(f"{label} must hold real numbers, got dtype {values.dtype}")
    if values.size == 0:
        raise ValueError(f"{label} is empty; nothing to prioritize")
    if fraction is not None and k is not None:
        raise ValueError(f"pass at most one of fraction and k, got fraction={fraction!r} and k={k!r}")
    if fraction is not None:
        if isinstance(fraction, (bool, np.bool_)) or not isinstance(fraction, numbers.Real):
            raise TypeError(f"fraction must be a number in (0, 1], got {fraction!r}")
        if not (0.0 < float(fraction) <= 1.0):
            raise ValueError(f"fraction must lie in (0, 1], got {fraction!r}")
    if k is not None:
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral):
            raise TypeError(f"k must be an int >= 0, got {k!r}")
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k!r}")
    if not isinstance(drop_nan, (bool, np.bool_)):
        raise TypeError(f"drop_nan must be True or False, got {drop_nan!r}")

    values = values.astype(np.float64)
    index = np.arange(values.size)
    nan = np.isnan(values)
    if nan.any():
        if not drop_nan:
            where = ", ".join(str(i) for i in np.flatnonzero(nan)[:_MAX_LISTED])
            raise ValueError(
                f"{label} contains {int(nan.sum())} NaN value(s) (at indices [{where}"
                f"{', ...' if nan.sum() > _MAX_LISTED else ''}]), e.g. sequences with no counted position; "
                "pass drop_nan=True to leave them out of the ranking"
            )
        index = index[~nan]
        values = values[~nan]
    order = index[np.argsort(-values, kind="stable")]
    n = order.size
    if fraction is not None:
        # Round away float noise first (float32 0.3 * 10 = 3.0000001 must select 3), then up; any
        # fraction > 0 selects at least one item.
        count = max(1, math.ceil(round(float(fraction) * n, 6))) if n > 0 else 0
    elif k is not None:
        count = min(int(k), n)
    else:
        count = n
    return order[:count].astype(np.int64)


# ============================================================================================
# Sequence-level estimates for models with different tokenizers (issue 6, jaxrank.lm.pipeline)
# ============================================================================================


def sequence_kl_estimate(logp_a: Any, logp_b: Any, num_bytes: Any) -> tuple[jax.Array, jax.Array]:
    """Monte-Carlo KL(A ‖ B) per byte from samples y_s ~ A, and its standard error.

    `d_s = (log p_A(y_s) − log p_B(y_s)) / bytes(y_s)`; the estimate is `mean_s d_s` and its standard
    error `std_s(d_s, ddof=1) / sqrt(S)` over the samples with `bytes > 0` (empty completions carry no
    text to compare and are left out). With one valid sample the standard error is NaN; with none,
    both are NaN.

    Args:
      logp_a: `[..., samples]` log-probability of each sampled completion text under model A (nats).
      logp_b: `[..., samples]` the same texts under model B.
      num_bytes: `[..., samples]` UTF-8 byte length of each completion text.

    Returns:
      `(mean, stderr)`, float32 `[...]` each, in nats per byte.

    Example:
      >>> sequence_kl_estimate(jnp.array([-10., -12.]), jnp.array([-14., -13.]), jnp.array([4, 2]))
      (Array(0.75, dtype=float32), Array(0.25, dtype=float32))
    """
    logp_a = jnp.asarray(v.as_array(logp_a, "logp_a"), jnp.float32)
    logp_b = jnp.asarray(v.as_array(logp_b, "logp_b"), jnp.float32)
    num_bytes = v.as_array(num_bytes, "num_bytes")
    v.check_min_ndim(logp_a, "logp_a", 1, "[..., samples]")
    v.check_same_shape(logp_a, logp_b, "logp_a", "logp_b")
    if tuple(num_bytes.shape) != tuple(logp_a.shape):
        raise ValueError(
            f"num_bytes must have the shape of logp_a {tuple(logp_a.shape)}, got {tuple(num_bytes.shape)}"
        )
    num_bytes = jnp.asarray(num_bytes, jnp.float32)
    valid = num_bytes > 0
    d = jnp.where(valid, (logp_a - logp_b) / jnp.where(valid, num_bytes, 1.0), 0.0)
    n = jnp.sum(valid, axis=-1).astype(jnp.float32)
    mean = jnp.sum(d, axis=-1) / n
    var = jnp.sum(jnp.where(valid, (d - mean[..., None]) ** 2, 0.0), axis=-1) / (n - 1.0)
    stderr = jnp.where(n > 1, jnp.sqrt(var / jnp.maximum(n, 1.0)), jnp.nan)
    return jnp.where(n > 0, mean, jnp.nan), stderr
