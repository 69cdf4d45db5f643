"""Model-axis sharding of the causal LMs: parameters over a `("data", "fsdp", "tensor")` mesh.

The layout follows MaxText / levanter: every weight carries *logical* axis names (`nnx.Param`
metadata `out_sharding`, e.g. `("layers", "embed", "mlp")`), and one table of logical-axis rules
maps them onto mesh axes; `jax.jit` then partitions the program (GSPMD). No collective is written by
hand except in the fused divergence over the vocabulary-sharded head (`jaxrank.lm.fused`).

| logical axis | dimension | mesh axis |
|---|---|---|
| `vocab` | embedding rows, LM-head columns | `tensor` |
| `q_heads`, `kv_heads` | attention heads × head_dim (q/k/v columns, o rows) | `tensor` |
| `mlp` | MLP columns (gate/up) and rows (down) | `tensor` |
| `embed` | the model dimension of every matrix | `fsdp` |
| `layers`, `norm`, `head_dim` | stacked layers, norm scales, q/k norms | replicated |
| `batch` (activations) | batch rows | `("data", "fsdp")` |

A dimension that the mesh axis does not divide (SmolLM2's 9 heads over `tensor=2`, Gemma 3 270M's
single key/value head) is replicated instead; `ModelSharding.fallbacks` names those dimensions so
that the memory plan and `--dry-run` can say so.

Example:
    >>> from jaxrank.lm.sharding import make_model_mesh, model_sharding
    >>> mesh = make_model_mesh(fsdp=4, tensor=2)   # 8 devices
    >>> sharding = model_sharding(config, mesh)
    >>> sharding.param_spec("w_gate")
    PartitionSpec(None, 'fsdp', 'tensor')
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrank.lm.config import ModelConfig

DATA_AXIS = "data"  # the same name as `jaxrank.sharding.DATA_AXIS`: batch rows only
FSDP_AXIS = "fsdp"
TENSOR_AXIS = "tensor"
MESH_AXES = (DATA_AXIS, FSDP_AXIS, TENSOR_AXIS)
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)

#: Logical axes of every weight (names as in `jaxrank.lm.transformer.param_shapes`).
PARAM_AXES: dict[str, tuple[str, ...]] = {
    "embed": ("vocab", "embed"),
    "lm_head": ("embed", "vocab"),
    "final_norm": ("norm",),
    "attn_norm": ("layers", "norm"),
    "mlp_norm": ("layers", "norm"),
    "post_attn_norm": ("layers", "norm"),
    "post_mlp_norm": ("layers", "norm"),
    "q_norm": ("layers", "head_dim"),
    "k_norm": ("layers", "head_dim"),
    "wq": ("layers", "embed", "q_heads"),
    "wk": ("layers", "embed", "kv_heads"),
    "wv": ("layers", "embed", "kv_heads"),
    "wo": ("layers", "q_heads", "embed"),
    "w_gate": ("layers", "embed", "mlp"),
    "w_up": ("layers", "embed", "mlp"),
    "w_down": ("layers", "mlp", "embed"),
    "bq": ("layers", "q_heads"),
    "bk": ("layers", "kv_heads"),
    "bv": ("layers", "kv_heads"),
    "bo": ("layers", "norm"),
    "b_gate": ("layers", "mlp"),
    "b_up": ("layers", "mlp"),
    "b_down": ("layers", "norm"),
}

#: Logical axis → (mesh axis, what must divide by its size). Activations reuse the weight names
#: (`vocab` for logits, `q_heads` for per-head activations, `mlp` for the MLP hidden layer).
_RULES = {
    "vocab": TENSOR_AXIS,
    "q_heads": TENSOR_AXIS,
    "kv_heads": TENSOR_AXIS,
    "mlp": TENSOR_AXIS,
    "embed": FSDP_AXIS,
}
_REPLICATED = ("layers", "norm", "head_dim", "length", "act_embed")


def make_model_mesh(
    *, fsdp: int = 1, tensor: int = 1, data: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A `("data", "fsdp", "tensor")` mesh for sharded language models.

    `data` splits batch rows only (parameters replicated over it), `fsdp` splits batch rows and the
    model dimension of every weight (gathered layer by layer for the matmuls), `tensor` splits the
    vocabulary, the attention heads and the MLP columns. `data * fsdp * tensor` devices are used,
    the first of `devices` (default `jax.devices()`, every process's with `jax.distributed`).
    Axis types are `Auto` (GSPMD partitions the jitted programs).

    Example:
        >>> mesh = make_model_mesh(fsdp=2, tensor=4)
        >>> dict(mesh.shape)
        {'data': 1, 'fsdp': 2, 'tensor': 4}
    """
    sizes = {DATA_AXIS: data, FSDP_AXIS: fsdp, TENSOR_AXIS: tensor}
    for name, value in sizes.items():
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be a positive int, got {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value!r}")
    devices = list(jax.devices() if devices is None else devices)
    need = data * fsdp * tensor
    if need > len(devices):
        raise ValueError(
            f"a mesh of data={data} x fsdp={fsdp} x tensor={tensor} needs {need} devices, "
            f"but only {len(devices)} are available"
        )
    return jax.make_mesh(
        (int(data), int(fsdp), int(tensor)),
        MESH_AXES,
        axis_types=(jax.sharding.AxisType.Auto,) * 3,
        devices=devices[:need],
    )


def parse_mesh(text: str) -> dict[str, int]:
    """`"fsdp=4,tensor=2"` → `{"fsdp": 4, "tensor": 2}` (names from `data`, `fsdp`, `tensor`)."""
    out: dict[str, int] = {}
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"expected NAME=SIZE pairs such as 'fsdp=4,tensor=2', got {text!r}")
    for part in text.split(","):
        m = re.fullmatch(r"\s*([a-z]+)\s*=\s*(\d+)\s*", part)
        if not m:
            raise ValueError(f"expected NAME=SIZE pairs such as 'fsdp=4,tensor=2', got {part!r} in {text!r}")
        name, size = m.group(1), int(m.group(2))
        if name not in MESH_AXES:
            raise ValueError(f"unknown mesh axis {name!r}; expected one of {', '.join(MESH_AXES)}")
        if name in out:
            raise ValueError(f"mesh axis {name!r} is given twice in {text!r}")
        if size < 1:
            raise ValueError(f"mesh axis {name}={size} must be >= 1")
        out[name] = size
    return out


def mesh_axis_sizes(mesh: Mesh | dict[str, int]) -> dict[str, int]:
    """Sizes of `data`, `fsdp`, `tensor` (1 for an axis the mesh lacks) of a mesh or a size dict."""
    shape = dict(mesh.shape) if isinstance(mesh, Mesh) else dict(mesh)
    return {name: int(shape.get(name, 1)) for name in MESH_AXES}


def _dimension_sizes(config: ModelConfig) -> dict[str, int]:
    c = config
    return {
        "vocab": c.vocab_size,
        "q_heads": c.num_heads,
        "kv_heads": c.num_kv_heads,
        "mlp": c.intermediate_size,
        "embed": c.hidden_size,
    }


def resolve_rules(config: ModelConfig, sizes: dict[str, int]) -> tuple[tuple[tuple[str, Any], ...], tuple[str, ...]]:
    """Logical-axis rules for `config` on a mesh of `sizes`, and the logical axes left replicated
    because the mesh axis does not divide them (heads are split whole, never inside a head)."""
    dims = _dimension_sizes(config)
    rules: list[tuple[str, Any]] = [(name, None) for name in _REPLICATED]
    fallbacks = []
    for logical, axis in _RULES.items():
        n = sizes[axis]
        if n > 1 and dims[logical] % n:
            fallbacks.append(f"{logical} ({dims[logical]} not divisible by {axis}={n})")
            rules.append((logical, None))
        else:
            rules.append((logical, axis if n > 1 else None))
    return tuple(rules), tuple(fallbacks)


@dataclasses.dataclass(frozen=True)
class ModelSharding:
    """Where a model's weights and activations live on a mesh (hashable: static under `jit`).

    Attributes:
        mesh: the `("data", "fsdp", "tensor")` mesh.
        rules: logical axis → mesh axis (or None), for `nnx.Param(..., sharding_rules=...)`.
        fallbacks: logical axes replicated because their size is not divisible by the mesh axis.
    """

    mesh: Mesh
    rules: tuple[tuple[str, Any], ...]
    fallbacks: tuple[str, ...] = ()

    @property
    def sizes(self) -> dict[str, int]:
        return mesh_axis_sizes(self.mesh)

    @property
    def tensor_axis(self) -> str | None:
        """The mesh axis the vocabulary is split over, or None when it is not split."""
        return dict(self.rules).get("vocab")

    def batch_axes(self, batch: int) -> tuple[str, ...] | None:
        """Mesh axes that split `batch` rows: `("data", "fsdp")` when their product divides it."""
        sizes = self.sizes
        axes = tuple(a for a in BATCH_AXES if sizes[a] > 1)
        if not axes:
            return None
        if batch % math.prod(sizes[a] for a in axes) == 0:
            return axes
        return None

    def spec(self, logical: Sequence[str | None], shape: Sequence[int] | None = None) -> P:
        """The `PartitionSpec` of an array with these logical axes (`"batch"` checked against `shape`)."""
        rules = dict(self.rules)
        out = []
        for i, name in enumerate(logical):
            if name is None:
                out.append(None)
            elif name == "batch":
                out.append(None if shape is None else self.batch_axes(int(shape[i])))
            else:
                out.append(rules[name])
        return P(*out)

    def param_spec(self, name: str) -> P:
        return self.spec(PARAM_AXES[name])

    def named(self, logical: Sequence[str | None], shape: Sequence[int] | None = None) -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(logical, shape))

    def constrain(self, x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
        """`with_sharding_constraint(x, spec)`: pins activations so GSPMD keeps the intended layout."""
        return jax.lax.with_sharding_constraint(x, self.named(logical, x.shape))


def model_sharding(config: ModelConfig, mesh: Mesh) -> ModelSharding:
    """The `ModelSharding` of `config` on `mesh` (axes from `data`, `fsdp`, `tensor`)."""
    check_model_mesh(mesh)
    rules, fallbacks = resolve_rules(config, mesh_axis_sizes(mesh))
    return ModelSharding(mesh=mesh, rules=rules, fallbacks=fallbacks)


def check_model_mesh(mesh: Any) -> None:
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"mesh must be a jax.sharding.Mesh (see jaxrank.lm.sharding.make_model_mesh), got {type(mesh).__name__}"
        )
    unknown = [a for a in mesh.axis_names if a not in MESH_AXES]
    if unknown:
        raise ValueError(
            f"mesh axes {tuple(mesh.axis_names)} include {unknown}; a model mesh names axes from {MESH_AXES} "
            "(jaxrank.lm.sharding.make_model_mesh)"
        )


def param_bytes_per_device(config: ModelConfig, sizes: dict[str, int], itemsize: int) -> dict[str, int]:
    """Bytes of each weight held by one device (its shard; replicated weights count in full)."""
    from jaxrank.lm.transformer import param_shapes

    rules = dict(resolve_rules(config, sizes)[0])
    out = {}
    for name, shape in param_shapes(config).items():
        n = math.prod(shape)
        for logical in PARAM_AXES[name]:
            axis = rules.get(logical)
            if axis is not None:
                n //= sizes[axis]
        out[name] = n * itemsize
    return out


def device_bytes(array: jax.Array) -> dict[Any, int]:
    """Bytes of `array` stored on each device (sum of its shards there)."""
    out: dict[Any, int] = {}
    for shard in array.addressable_shards:
        out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
    return out
