"""How long a prioritization run will take on this machine: a cost model of its `WorkPlan` at rates measured now.

The model counts matrix-multiply FLOPs, `2 x weights` per token and position (attention's own
`T^2` terms and everything else are left out), in two regimes measured by a probe on the device:

- **full passes** (prefill and teacher-forced scoring, `[batch x length, d]` rows): compute-bound,
  timed on a `[512, d] @ [d, 4096]` float32 product;
- **decode steps** (one token per row with the KV cache, `[batch, d]` rows): every step reads all
  the weights, timed on a `[batch, d] @ [d, n]` product with a 64 MiB weight matrix (larger than the
  caches), so the memory-bound rate is the one measured.

This is an estimate for planning, not a measurement of the run: it leaves out loading, tokenizing and
compilation (a first run compiles one program per stage and padded shape, `Stage.shapes`; the
persistent compilation cache skips most of it afterwards), and it assumes the completions run to
`max_new_tokens` (generation does; scoring shorter completions costs less). The command line prints
it in the plan line and then replaces it by the ETA measured as batches finish.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["Rates", "estimate_seconds", "forward_seconds", "measure_rates", "model_weights", "stage_seconds"]


@dataclasses.dataclass(frozen=True)
class Rates:
    """Matmul throughput measured on one device (FLOP/s)."""

    full: float  # compute-bound products (prefill, scoring)
    decode: float  # memory-bound products (one row per prompt, all weights read)
    device: str


def _best_time(fn, *args, repeats: int = 3) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return max(best, 1e-9)


def measure_rates(hidden_size: int, batch_size: int) -> Rates:
    """Time two float32 products on the default device (about 0.2-0.5 s on a 2-core CPU): the rates of
    full passes and of decode steps for a model of width `hidden_size` run `batch_size` rows at a time."""
    d = max(int(hidden_size), 8)
    b = max(int(batch_size), 1)
    matmul = jax.jit(jnp.matmul)
    k1, k2 = jax.random.split(jax.random.key(0))
    x = jax.random.normal(k1, (512, d), jnp.float32)
    w = jax.random.normal(k2, (d, 4096), jnp.float32)
    full = 2 * 512 * d * 4096 / _best_time(matmul, x, w)
    n = max(1024, (16 << 20) // d)  # 64 MiB of float32 weights: read from memory every step, as a decode step
    w = jax.random.normal(k2, (d, n), jnp.float32)
    x = x[:b] if b <= 512 else jnp.tile(x, (-(-b // 512), 1))[:b]
    decode = 2 * b * d * n / _best_time(matmul, x, w)
    return Rates(full=full, decode=decode, device=str(jax.devices()[0].device_kind))


def model_weights(config: Any) -> tuple[int, int]:
    """(body, head): weights a token meets in the layers, and in the vocabulary head (`vocab x d`)."""
    from jaxrank.lm.sharding import param_bytes_per_device

    sizes = param_bytes_per_device(config, {"data": 1, "fsdp": 1, "tensor": 1}, 1)
    embed = sizes.get("embed", 0)
    head = config.vocab_size * config.hidden_size
    body = sum(sizes.values()) - embed - sizes.get("lm_head", 0)
    return int(body), int(head)


def stage_seconds(stage: Any, configs: tuple[Any, Any], rates: Rates) -> float:
    """The cost model's seconds for one `jaxrank.lm.pipeline.Stage` (see the module docstring)."""
    sides = {"model_a": [configs[0]], "model_b": [configs[1]], "both": list(configs)}[stage.model]
    seconds = 0.0
    for config in sides:
        if config is None:
            continue
        body, head = model_weights(config)
        seconds += 2.0 * (body * stage.padded_positions + head * stage.head_positions) / rates.full
        seconds += 2.0 * (body + head) * stage.decode_steps / rates.decode
    return seconds


def estimate_seconds(plan: Any, rates: Rates) -> list[float]:
    """Seconds of each stage of `plan` (a `jaxrank.lm.pipeline.WorkPlan`), in its order."""
    return [stage_seconds(s, plan.configs, rates) for s in plan.stages]


def forward_seconds(parameters: int, positions: int, rates: Rates) -> float:
    """The cost model's seconds for full forward passes over `positions` (padded) positions through a model of
    `parameters` weights (e.g. a `jaxrank.lm.features.FeaturePlan`): `2 x parameters` FLOPs per position."""
    return 2.0 * parameters * positions / rates.full
