"""Meshes, sharded scoring and the multi-host start.

jaxrank shards with `jax.sharding.Mesh` + `jax.shard_map`, not `jax.pmap`: pmap is in maintenance
mode upstream and is itself implemented on shard_map, which composes with `jit`, names several mesh
axes at once (here `"data"` for the batch and `"vocab"` for the vocabulary) and runs the same code on
one host or many.

- `make_mesh(data=..., vocab=...)` builds a `("data", "vocab")` mesh.
- `score_pairs(..., mesh=mesh)` (in `jaxrank.scoring`) splits the batch over `"data"` and, when the
  vocab axis is larger than 1, the vocabulary over `"vocab"`: each device scores its rows from its
  vocabulary slice, and the per-position log-sum-exp statistics are combined with `pmax`/`psum` over
  `"vocab"`. The sequence axis is never split, so masked means reduce locally per sequence.
- Multi-host: every process calls `initialize_distributed(...)` first, then
  `score_pairs_global(local_a, local_b, local_mask, mesh=make_mesh(...))` with its own slice of the
  global batch; every process gets the scores of the whole global batch back.
- `to_host(tree)` reads device arrays into NumPy whole on every process, gathering across processes
  (`process_allgather`) the arrays laid out over other processes' devices too: what the language-model
  pipeline (`jaxrank.lm.pipeline`) uses wherever it brings results back to the host.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrank import _validation as v
from jaxrank.scoring import check_options, ScoreOptions, check_inputs, score_local, warn_empty

__all__ = ["initialize_distributed", "make_mesh", "score_pairs_global", "to_host"]

DATA_AXIS = "data"
VOCAB_AXIS = "vocab"


def make_mesh(
    *,
    data: int | None = None,
    vocab: int = 1,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A 2-D device mesh with axes `("data", "vocab")` for sharded scoring.

    Built with `jax.make_mesh` (which orders devices for the physical topology) and explicit axis
    types (`jax.sharding.AxisType.Explicit`, the default of current jax). With several processes
    (`jax.distributed`), the default device list is the global one, ordered by process, so each
    process owns a contiguous block of `"data"` rows.

    Args:
      data: size of the `"data"` axis (batch split); `None` uses every device not used by `vocab`:
        `len(devices) // vocab`.
      vocab: size of the `"vocab"` axis (vocabulary split), default 1.
      devices: the devices to use, default `jax.devices()`; the first `data * vocab` are used.

    Returns:
      `jax.sharding.Mesh` of shape `[data, vocab]`.

    Example:
      >>> from jaxrank.sharding import make_mesh
      >>> mesh = make_mesh(data=2, vocab=4)  # 8 devices
      >>> dict(mesh.shape)
      {'data': 2, 'vocab': 4}
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices is empty; expected at least one jax device")
    for name, value in (("vocab", vocab), ("data", data)):
        if value is None:
            continue
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be a positive int, got {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value!r}")
    if data is None:
        if vocab > len(devices):
            raise ValueError(f"vocab={vocab} needs at least {vocab} devices, but only {len(devices)} are available")
        data = len(devices) // vocab
    if data * vocab > len(devices):
        raise ValueError(
            f"a mesh of data={data} x vocab={vocab} needs {data * vocab} devices, "
            f"but only {len(devices)} are available"
        )
    return jax.make_mesh(
        (int(data), int(vocab)),
        (DATA_AXIS, VOCAB_AXIS),
        axis_types=(jax.sharding.AxisType.Auto,) * 2,
        devices=devices[: data * vocab],
    )


def check_mesh(mesh: Any) -> tuple[int, int]:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (see jaxrank.sharding.make_mesh), got {type(mesh).__name__}")
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(
            f"mesh must have a {DATA_AXIS!r} axis (and optionally {VOCAB_AXIS!r}), got axes {mesh.axis_names}"
        )
    return int(mesh.shape[DATA_AXIS]), int(mesh.shape.get(VOCAB_AXIS, 1))


@functools.lru_cache(maxsize=64)
def _compiled_sharded(mesh: Mesh, options: ScoreOptions):
    n_data, n_vocab = check_mesh(mesh)
    vocab_axis = VOCAB_AXIS if n_vocab > 1 else None
    logits_spec = P(DATA_AXIS, None, vocab_axis)

    def body(logits_a, logits_b, mask):
        return score_local(logits_a, logits_b, mask, options, vocab_axis)

    sharded = jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(logits_spec, logits_spec, P(DATA_AXIS, None)),
        out_specs=P(DATA_AXIS),
    )

    def run(logits_a, logits_b, mask):
        batch, _, vocab = logits_a.shape
        mask = jnp.ones(logits_a.shape[:2], bool) if mask is None else mask.astype(bool)
        pad_vocab = -vocab % n_vocab
        if pad_vocab:
            # -inf logits have probability 0 under both models: they add nothing to any metric.
            widths = ((0, 0), (0, 0), (0, pad_vocab))
            logits_a = jnp.pad(logits_a, widths, constant_values=-jnp.inf)
            logits_b = jnp.pad(logits_b, widths, constant_values=-jnp.inf)
        pad_batch = -batch % n_data
        if pad_batch:
            # Padding rows are all masked out; their (NaN) scores are sliced off below.
            logits_a = jnp.pad(logits_a, ((0, pad_batch), (0, 0), (0, 0)))
            logits_b = jnp.pad(logits_b, ((0, pad_batch), (0, 0), (0, 0)))
            mask = jnp.pad(mask, ((0, pad_batch), (0, 0)))
        # Place the inputs as the shard_map expects (with explicit mesh axes this is required).
        logits_a = _place(logits_a, mesh, logits_spec)
        logits_b = _place(logits_b, mesh, logits_spec)
        mask = _place(mask, mesh, P(DATA_AXIS, None))
        scores, counts, flags = sharded(logits_a, logits_b, mask)
        # The results are tiny ([batch], [batch, seq]): replicate them, which also makes them readable
        # on every process.
        return jax.tree.map(lambda x: _place(x, mesh, P())[:batch], (scores, counts, flags))

    return jax.jit(run)


def _place(x: jax.Array, mesh: Mesh, spec: P) -> jax.Array:
    """Constrain `x` to `spec` on `mesh`: `reshard` for explicit mesh axes, a sharding constraint otherwise."""
    sharding = NamedSharding(mesh, spec)
    if all(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
        return jax.reshard(x, sharding)
    return jax.lax.with_sharding_constraint(x, sharding)


def sharded_scores(
    mesh: Mesh, options: ScoreOptions, logits_a: Any, logits_b: Any, mask: Any
) -> tuple[dict[str, jax.Array], jax.Array, jax.Array]:
    """`score_pairs(..., mesh=mesh)` after validation: per-sequence scores, counted positions and
    the kernel's per-position value flags (`jaxrank.scoring.score_local`)."""
    n_data, n_vocab = check_mesh(mesh)
    batch, _, vocab = logits_a.shape
    if batch % n_data == 0 and vocab % n_vocab == 0:
        # Send host arrays straight to their shards instead of through one device inside the jit.
        logits_spec = P(DATA_AXIS, None, VOCAB_AXIS if n_vocab > 1 else None)
        logits_a = _put(logits_a, mesh, logits_spec)
        logits_b = _put(logits_b, mesh, logits_spec)
        mask = None if mask is None else _put(mask, mesh, P(DATA_AXIS, None))
    return _compiled_sharded(mesh, options)(logits_a, logits_b, mask)


def _put(x: Any, mesh: Mesh, spec: P) -> Any:
    """`device_put` concrete arrays onto `mesh` (a no-op when already placed so); tracers are left to the jit."""
    if isinstance(x, (np.ndarray, jax.Array)) and v.is_concrete(x):
        return jax.device_put(x, NamedSharding(mesh, spec))
    return x


def to_host(tree: Any) -> Any:
    """NumPy copies of a pytree of arrays, each whole, on every process.

    With several processes (`jax.distributed`), a `jax.Array` laid out over a mesh that spans other
    processes' devices holds only this process's shards here, so `np.asarray` cannot read it; such
    arrays are gathered with `jax.experimental.multihost_utils.process_allgather(x, tiled=True)`
    (resharded to replicated, then read). Arrays this process can read whole (one process, or a mesh
    of its own devices) and non-JAX leaves are copied without a collective. Whether a leaf is gathered
    depends only on its sharding, which every process shares, so all processes take the same path;
    like any collective, every process must call this with the same tree.

    Args:
      tree: a pytree of `jax.Array`s (any sharding), NumPy arrays or scalars.

    Returns:
      The same tree with NumPy arrays of the global shapes (identical on every process).

    Example:
      >>> tokens, lengths = to_host(generate(model, ids, mask, max_new_tokens=8))  # doctest: +SKIP
    """
    from jax.experimental import multihost_utils

    def one(x: Any) -> np.ndarray:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(one, tree)


def initialize_distributed(
    coordinator_address: str,
    num_processes: int,
    process_id: int,
    *,
    local_device_ids: int | Sequence[int] | None = None,
    initialization_timeout: int = 300,
) -> None:
    """Start `jax.distributed` for multi-host scoring; call once per process, before any jax work.

    Wraps `jax.distributed.initialize`. CPU collectives across processes use gloo
    (`jax_cpu_collectives_implementation="gloo"`, set here; it only affects the CPU backend, so it is
    harmless on GPU/TPU hosts). Afterwards `jax.devices()` lists the devices of every process and
    `jax.local_devices()` this process's own.

    Args:
      coordinator_address: `"host:port"` of process 0, reachable from every process
        (e.g. `"127.0.0.1:12345"` for processes on one machine).
      num_processes: total number of processes, >= 1.
      process_id: this process's index in `[0, num_processes)`.
      local_device_ids: restrict this process to these local device ids (e.g. one GPU each).
      initialization_timeout: seconds to wait for every process to connect before failing.

    Example:
      On each of two hosts (process_id 0 and 1)::

        from jaxrank.sharding import initialize_distributed, make_mesh, score_pairs_global
        initialize_distributed("10.0.0.1:1234", 2, process_id)
        scores = score_pairs_global(local_a, local_b, local_mask, mesh=make_mesh())
    """
    if not isinstance(coordinator_address, str) or ":" not in coordinator_address:
        raise ValueError(f"coordinator_address must be 'host:port', got {coordinator_address!r}")
    host, _, port = coordinator_address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"coordinator_address must be 'host:port' with a numeric port, got {coordinator_address!r}")
    for name, value in (("num_processes", num_processes), ("process_id", process_id)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {value!r}")
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must lie in [0, {num_processes}), got {process_id}")
    if jax.distributed.is_initialized():
        raise RuntimeError("jax.distributed is already initialized in this process")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=int(num_processes),
        process_id=int(process_id),
        local_device_ids=local_device_ids,
        initialization_timeout=int(initialization_timeout),
    )


def _local_data_rows(mesh: Mesh) -> list[int]:
    """The `"data"` indices whose devices all belong to this process (checked to be all or none)."""
    me = jax.process_index()
    devices = np.moveaxis(np.asarray(mesh.devices), mesh.axis_names.index(DATA_AXIS), 0)
    grid = devices.reshape(devices.shape[0], -1)
    rows = []
    for i, row in enumerate(grid):
        owners = {d.process_index for d in row}
        if me in owners:
            if owners != {me}:
                raise ValueError(
                    f"mesh row {DATA_AXIS}={i} spans processes {sorted(owners)}: score_pairs_global needs each "
                    f"process to own whole {VOCAB_AXIS!r} groups (make_mesh orders devices that way when "
                    f"{VOCAB_AXIS} divides the number of local devices)"
                )
            rows.append(i)
    return rows


def score_pairs_global(
    local_logits_a: Any,
    local_logits_b: Any,
    local_mask: Any = None,
    *,
    mesh: Mesh,
    metrics: str | Sequence[str] = ("kl", "cross_entropy"),
    reduction: str = "mean",
    log_probs: bool = False,
    temperature: float = 1.0,
    implementation: str = "auto",
    block_size: int | None = None,
) -> dict[str, np.ndarray]:
    """Score a global batch split across processes; every process gets all the scores back.

    Each process passes its own slice of the global batch (host arrays, e.g. what its data loader
    produced); local batch sizes may differ between processes, sequence length and vocabulary must
    agree. The slices are assembled into global arrays with `jax.make_array_from_process_local_data`
    on `mesh` (batch over `"data"`, vocabulary over `"vocab"`), scored as by
    `score_pairs(..., mesh=mesh)`, and gathered to every process. The global order is by process
    index: process 0's sequences first, then process 1's, and so on.

    The options and the formula are those of `jaxrank.score_pairs`. Each process must call this
    function with the same options (it is a collective). The result is a host NumPy array, so this
    entry point is not differentiable; use `score_pairs(..., mesh=mesh)` inside your own multi-host
    `jit` for gradients.

    Args:
      local_logits_a: `[local_batch, seq, vocab]` this process's logits of model A.
      local_logits_b: `[local_batch, seq, vocab]` this process's logits of model B.
      local_mask: optional `[local_batch, seq]` bool or 0/1 integer mask.
      mesh: mesh over the global devices (`make_mesh()` after `initialize_distributed`); each
        process must own whole rows of the `"data"` axis.

    Returns:
      A dict mapping each metric to a float32 NumPy array `[global_batch]`, identical on every
      process. Sequences without counted positions are NaN (with an `EmptySequenceWarning`).

    Example:
      >>> # on every process, after initialize_distributed(...):
      >>> scores = score_pairs_global(a_local, b_local, mask_local, mesh=make_mesh())  # doctest: +SKIP
    """
    from jax.experimental import multihost_utils

    options = check_options(
        metrics=metrics,
        reduction=reduction,
        log_probs=log_probs,
        temperature=temperature,
        implementation=implementation,
        block_size=block_size,
    )
    n_data, n_vocab = check_mesh(mesh)
    local_a = np.asarray(v.as_array(local_logits_a, "local_logits_a"))
    local_b = np.asarray(v.as_array(local_logits_b, "local_logits_b"))
    local_mask = None if local_mask is None else np.asarray(v.as_array(local_mask, "local_mask"))
    check_inputs(local_a, local_b, local_mask, names=("local_logits_a", "local_logits_b", "local_mask"))
    local_mask = np.ones(local_a.shape[:2], bool) if local_mask is None else local_mask.astype(bool)

    rows = _local_data_rows(mesh)
    shapes = np.asarray(multihost_utils.process_allgather(np.asarray(local_a.shape + (len(rows),), np.int64)))
    shapes = shapes.reshape(jax.process_count(), 4)
    if len(set(map(tuple, shapes[:, 1:3].tolist()))) != 1:
        raise ValueError(
            "local_logits_a must have the same [seq, vocab] on every process, got "
            + ", ".join(f"process {i}: {tuple(s[1:3])}" for i, s in enumerate(shapes.tolist()))
        )
    if len(set(shapes[:, 3].tolist())) != 1 or not rows:
        raise ValueError(
            f"every process must own the same number of {DATA_AXIS!r} rows of the mesh, got "
            f"{shapes[:, 3].tolist()}"
        )
    local_rows = len(rows)
    padded = max(1, math.ceil(int(shapes[:, 0].max()) / local_rows)) * local_rows
    offset = int(shapes[: jax.process_index(), 0].sum())
    batch, seq, vocab = local_a.shape
    pad_vocab = -vocab % n_vocab

    def pad(x, fill_vocab):
        widths = [(0, padded - batch)] + [(0, 0)] * (x.ndim - 1)
        x = np.pad(x, widths)
        if x.ndim == 3 and pad_vocab:
            x = np.pad(x, ((0, 0), (0, 0), (0, pad_vocab)), constant_values=fill_vocab)
        return x

    row_ids = np.full(padded, -1, np.int64)
    row_ids[:batch] = offset + np.arange(batch)
    vocab_spec = VOCAB_AXIS if n_vocab > 1 else None
    n_processes = jax.process_count()

    def to_global(x, spec):
        sharding = NamedSharding(mesh, spec)
        global_shape = (padded * n_processes,) + x.shape[1:]
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    global_a = to_global(pad(local_a, -np.inf), P(DATA_AXIS, None, vocab_spec))
    global_b = to_global(pad(local_b, -np.inf), P(DATA_AXIS, None, vocab_spec))
    global_mask = to_global(pad(local_mask, False), P(DATA_AXIS, None))
    global_ids = to_global(row_ids.astype(np.int32), P(DATA_AXIS))

    scores, counts, _ = _compiled_sharded(mesh, options)(global_a, global_b, global_mask)
    gathered = multihost_utils.process_allgather((scores, counts, global_ids), tiled=True)
    scores, counts, ids = jax.tree.map(np.asarray, gathered)
    total = int(shapes[:, 0].sum())
    keep = ids >= 0
    order = ids[keep]
    out = {}
    for name, values in scores.items():
        result = np.empty(total, np.float32)
        result[order] = values[keep]
        out[name] = result
    full_counts = np.empty(total, np.int64)
    full_counts[order] = counts[keep]
    warn_empty(full_counts, "score_pairs_global")
    return out
