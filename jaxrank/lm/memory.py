"""Memory plans: per-device bytes of weights, KV cache and activations, before anything is loaded.

`plan_prioritize(...)` estimates what one device holds while `jaxrank prioritize` runs two models
over a mesh: both models' weight shards (exact, from the shapes and `jaxrank.lm.sharding`'s layout),
model A's KV cache during generation (exact) and the activations of the largest step (an upper
estimate: one layer's activations live at a time under `lax.scan`, plus the logits or vocabulary
blocks of the divergence). `available_memory()` reads what a device can hold: `memory_stats()`
where the backend reports it (GPU/TPU `bytes_limit` minus what is in use), else host RAM divided
by the number of devices sharing it (CPU). `MemoryPlan.check()` refuses a plan that does not fit.

The activation estimate is checked against XLA's own memory analysis of the compiled programs in
`tests/test_lm_sharding.py` (it must not be smaller).

`forward_bytes` / `check_forward` are the per-call activation plan used inside the pipeline and feature
extraction: checked before each call so that a long prompt or a large batch is refused with the estimate
(a `jaxrank.resources.ResourceError` naming `batch_size` or `max_length`), never allocated blindly.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Sequence
from typing import Any

from jaxrank.lm.config import ModelConfig
from jaxrank.lm.sharding import mesh_axis_sizes, param_bytes_per_device, resolve_rules
from jaxrank.resources import ResourceError, memory_budget

#: Tokens allowed for a chat template around each prompt when prompt lengths are bounded from text.
TEMPLATE_TOKENS = 256
_FUSED_BLOCK = 4096


class MemoryPlanError(ValueError):
    """A run whose memory plan does not fit on the devices."""


@dataclasses.dataclass(frozen=True)
class ModelMemory:
    """Per-device bytes of one model in a run."""

    name: str
    weights: int
    kv_cache: int
    activations: int
    replicated: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """What one device holds at the peak of a run, and what it can hold.

    Attributes:
        models: per-model weights, KV cache and peak activations (bytes per device).
        peak: bytes per device at the peak: every model's weights plus the largest stage (A's
            generation with its KV cache, or the teacher-forced scoring of both models).
        available: bytes one device can hold, or None when unknown.
        source: where `available` comes from.
        mesh: mesh axis sizes; `devices` their product.
        batch, prompt_tokens, new_tokens: the shapes planned for.
    """

    models: tuple[ModelMemory, ...]
    peak: int
    available: int | None
    source: str
    mesh: dict[str, int]
    batch: int
    prompt_tokens: int
    new_tokens: int
    suggestions: tuple[str, ...] = ()

    @property
    def devices(self) -> int:
        return math.prod(self.mesh.values())

    @property
    def fits(self) -> bool:
        return self.available is None or self.peak <= self.available

    def lines(self) -> list[str]:
        """A human-readable table (one string per line)."""
        mesh = " ".join(f"{k}={v}" for k, v in self.mesh.items())
        out = [
            f"memory plan per device (mesh {mesh}, {self.devices} device{'s' if self.devices > 1 else ''}; "
            f"batch {self.batch}, prompts up to {self.prompt_tokens} tokens, {self.new_tokens} new tokens)"
        ]
        width = max(len(m.name) for m in self.models)
        for label, m in zip("AB", self.models):
            out.append(
                f"  model {label} {m.name:<{width}}  weights {format_bytes(m.weights):>10}  "
                f"KV cache {format_bytes(m.kv_cache):>10}  activations {format_bytes(m.activations):>10}"
            )
        avail = "unknown" if self.available is None else format_bytes(self.available)
        out.append(f"  peak {format_bytes(self.peak)} of {avail} available ({self.source})")
        for label, m in zip("AB", self.models):
            if m.replicated:
                out.append(f"  model {label} keeps replicated (not divisible): {', '.join(m.replicated)}")
        return out

    def check(self) -> None:
        """Raise `MemoryPlanError` when the peak exceeds the available memory (naming the `suggestions`,
        the options under which it would fit, when there are any)."""
        if self.fits:
            return
        if self.suggestions:
            advice = "it fits with " + ", or ".join(self.suggestions)
        else:
            advice = ("use more devices (--mesh fsdp=F,tensor=T), a smaller --batch-size or --max-length, "
                      "or --dtype bfloat16")
        raise MemoryPlanError(
            f"the memory plan needs {format_bytes(self.peak)} per device "
            f"(weights {format_bytes(sum(m.weights for m in self.models))}, KV cache "
            f"{format_bytes(self.models[0].kv_cache)}, activations up to "
            f"{format_bytes(max(m.activations for m in self.models))}) but {format_bytes(self.available)} "
            f"are available ({self.source}); {advice}"
        )


def format_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """`"16GiB"`, `"16G"` (binary), `"16GB"` (decimal), `"1.5e9"` → bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
    if not m or m.group(2) not in _UNITS:
        raise ValueError(f"expected a size such as 16GiB, 16G, 16GB or 1.6e10, got {text!r}")
    value = float(m.group(1)) * _UNITS[m.group(2)]
    if value <= 0:
        raise ValueError(f"a memory size must be positive, got {text!r}")
    return int(value)


def host_memory() -> int | None:
    """Bytes of host RAM available now (`MemAvailable`), or total RAM where that is unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def available_memory(devices: Sequence[Any], override: int | None = None) -> tuple[int | None, str]:
    """(bytes one device can hold, where that figure comes from) for the devices of a run.

    `override` (the `--device-memory` option) wins; then the smallest `bytes_limit - bytes_in_use`
    over the devices' `memory_stats()` (GPU/TPU); then, for CPU devices, which share the host's RAM,
    the available host RAM divided by the number of devices on this host.
    """
    if override is not None:
        return int(override), "--device-memory"
    limits = []
    for d in devices:
        try:
            stats = d.memory_stats()
        except Exception:  # backends without the query raise various errors
            stats = None
        if stats and "bytes_limit" in stats:
            limits.append(int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)))
    if limits and len(limits) == len(devices):
        kind = getattr(devices[0], "device_kind", "device")
        return min(limits), f"memory_stats() of {len(devices)} {kind}"
    host = host_memory()
    if host is None:
        return None, "unknown: pass --device-memory"
    local = max(1, sum(1 for d in devices if getattr(d, "process_index", 0) == getattr(devices[0], "process_index", 0)))
    return host // local, f"host RAM {format_bytes(host)} shared by {local} device{'s' if local > 1 else ''}"


def _split(n: int, k: int) -> int:
    return n // k if k > 1 and n % k == 0 else n


def model_memory(
    config: ModelConfig,
    mesh: dict[str, int],
    *,
    batch: int,
    length: int,
    cache_length: int = 0,
    scored: int | None = None,
    dtype_bytes: int = 4,
    param_bytes: int = 4,
    fused: bool = False,
    name: str = "model",
) -> ModelMemory:
    """Per-device bytes of one model: weight shards, a KV cache of `cache_length` slots (0: none)
    and the activations of a forward pass over `[batch, length]` tokens whose next-token
    distributions are compared at `scored` positions per row (default `length`).

    Upper estimates per device, with b rows per device (`batch` over data × fsdp), heads, MLP
    columns and vocabulary over `tensor` where they divide: one layer's activations (residual,
    q/k/v, f32 attention scores and probabilities `[b, H, T, S]`, the MLP's `[b, T, I]` thrice,
    that layer's weights gathered over fsdp) plus the head: `[b, T, V]` f32 logits thrice
    (materialised: logits, log-probabilities, one temporary) or four `[b·C, block]` f32 blocks (fused).
    """
    sizes = mesh_axis_sizes(mesh)
    rules = dict(resolve_rules(config, sizes)[0])
    c = config
    t = sizes["tensor"]
    rows = sizes["data"] * sizes["fsdp"]
    b = batch // rows if batch % rows == 0 else batch  # rows not divisible stay replicated
    heads = _split(c.num_heads, t) if rules["q_heads"] else c.num_heads
    kv_heads = c.num_kv_heads // t if rules["kv_heads"] else c.num_kv_heads
    mlp = c.intermediate_size // t if rules["mlp"] else c.intermediate_size
    vocab = c.vocab_size // t if rules["vocab"] else c.vocab_size
    per_param = param_bytes_per_device(c, sizes, param_bytes)
    weights = sum(per_param.values())
    s = max(length, cache_length)
    kv = 2 * c.num_layers * b * cache_length * kv_heads * c.head_dim * dtype_bytes if cache_length else 0
    d, dh = c.hidden_size, c.head_dim
    layer_weights = sum(v for k, v in per_param.items() if k not in ("embed", "lm_head", "final_norm"))
    layer_weights = layer_weights // c.num_layers * (sizes["fsdp"] if rules["embed"] else 1)
    act = (
        6 * b * length * d * dtype_bytes  # residual, normed input, attention output, sums
        + 3 * b * length * (heads + 2 * kv_heads) * dh * dtype_bytes  # q, k, v and their rotations
        + 3 * b * heads * length * s * 4  # f32 scores, probabilities, mask select
        + b * length * s * 5  # int32 distances and the bool mask, shared by the layers
        + 3 * b * length * mlp * dtype_bytes  # gate, up, their product
        + layer_weights
        + 2 * b * length * d * 4  # the final hidden states (f32)
    )
    positions = length if scored is None else scored
    if fused:
        head = 4 * b * positions * min(vocab, _FUSED_BLOCK) * 4 + b * positions * d * 4
    else:
        head = 3 * b * length * vocab * 4
    replicated = tuple(resolve_rules(c, sizes)[1])
    return ModelMemory(name=name, weights=weights, kv_cache=kv, activations=act + head, replicated=replicated)


def prompt_token_bound(texts: Sequence[str], template_tokens: int = TEMPLATE_TOKENS) -> int:
    """An upper bound on the tokens of the longest prompt rendered in a chat template: byte-level
    BPE and SentencePiece with byte fallback give every token at least one byte of text, so a
    prompt has at most its UTF-8 bytes in tokens, plus the template's own tokens."""
    longest = max((len(t.encode("utf-8")) for t in texts), default=0)
    return longest + template_tokens


def plan_prioritize(
    config_a: ModelConfig,
    config_b: ModelConfig,
    mesh: dict[str, int],
    *,
    batch: int,
    prompt_tokens: int,
    new_tokens: int,
    context: int | None = None,
    mode: str = "auto",
    symmetric: bool = False,
    names: tuple[str, str] = ("A", "B"),
    dtype_bytes: int = 4,
    param_bytes: int = 4,
    available: tuple[int | None, str] = (None, "unknown"),
) -> MemoryPlan:
    """The per-device memory of `prioritize_prompts` on a mesh: A generates `new_tokens` for a batch
    of prompts of up to `prompt_tokens` tokens (its KV cache holds prompt + completion; B too with
    `symmetric`), then both models score prompt + completion by teacher forcing.

    `mode` as in `prioritize_prompts` ("auto": token mode when the vocabularies have one size). Token
    mode uses materialised `[b, T, V]` logits up to 65,536 entries and the fused head above;
    sequence mode always streams the head (`token_log_probs`). Lengths are rounded up to the
    pipeline's power-of-two buckets and capped by `context`.
    """
    from jaxrank.lm.pipeline import FUSED_VOCAB_THRESHOLD, bucket_length

    sizes = mesh_axis_sizes(mesh)
    rows = sizes["data"] * sizes["fsdp"]
    batch = -(-batch // rows) * rows
    if mode == "auto":
        mode = "token" if config_a.vocab_size == config_b.vocab_size else "sequence"
    limit = None if context is None else max(1, context - new_tokens)
    prompt = bucket_length(min(prompt_tokens, limit) if limit else prompt_tokens, maximum=limit)
    total = bucket_length(prompt + new_tokens, maximum=context)
    common = dict(dtype_bytes=dtype_bytes, param_bytes=param_bytes)
    scored = bucket_length(new_tokens, minimum=8) if mode == "token" else total

    def one(config, name, generates):
        fused = mode == "sequence" or config.vocab_size > FUSED_VOCAB_THRESHOLD
        score = model_memory(config, sizes, batch=batch, length=total, scored=scored, fused=fused, name=name, **common)
        if not generates:
            return score, score.activations
        gen = model_memory(config, sizes, batch=batch, length=prompt, cache_length=prompt + new_tokens, scored=1,
                           fused=True, name=name, **common)
        stage = gen.kv_cache + gen.activations
        return dataclasses.replace(score, kv_cache=gen.kv_cache,
                                   activations=max(gen.activations, score.activations)), stage

    a, gen_a = one(config_a, names[0], True)
    b, gen_b = one(config_b, names[1], symmetric and mode == "sequence")
    score_stage = (a.activations if mode == "token" else 0) + b.activations
    if mode == "sequence":  # the two models score one after the other
        score_stage = max(a.activations, b.activations)
    peak = a.weights + b.weights + max(gen_a, gen_b if b.kv_cache else 0, score_stage)
    return MemoryPlan(models=(a, b), peak=int(peak), available=available[0], source=available[1], mesh=sizes,
                      batch=batch, prompt_tokens=prompt, new_tokens=new_tokens)


def _meshes_over(n: int) -> list[dict[str, int]]:
    """`fsdp x tensor` layouts of `n` devices, tensor a power of two (1, 2, 4, ...) dividing `n`."""
    out, t = [], 1
    while t <= n:
        if n % t == 0:
            out.append({"fsdp": n // t, "tensor": t} if t > 1 else {"fsdp": n})
        t *= 2
    return out


def _mesh_flag(sizes: dict[str, int]) -> str:
    return "--mesh " + ",".join(f"{k}={v}" for k, v in sizes.items() if v > 1)


def suggest_fits(
    config_a: ModelConfig,
    config_b: ModelConfig,
    mesh: dict[str, int],
    *,
    devices: Sequence[Any],
    override: int | None = None,
    param_bytes: int = 4,
    dtype_bytes: int = 4,
    **plan: Any,
) -> tuple[str, ...]:
    """The CLI options under which a plan that does not fit would: `--dtype bfloat16` on the same mesh,
    and the smallest-peak `--mesh fsdp=F[,tensor=T]` over all `devices` (with `--dtype bfloat16` when
    float32 does not fit there either). Each suggestion names its peak per device.

    Args:
      config_a, config_b, mesh: as for `plan_prioritize` (`mesh`: the axis sizes of the refused plan).
      devices: every device the run could use (`jax.devices()`); a bigger mesh takes the first ones.
      override: `--device-memory` in bytes, else each candidate's devices are asked (`available_memory`).
      param_bytes, dtype_bytes: of the refused plan (4: float32); 2 is already bfloat16.
      **plan: the other keyword arguments of `plan_prioritize` (batch, prompt_tokens, new_tokens, ...).

    Returns:
      Suggestions such as `"--dtype bfloat16 (peak 1.20 GiB per device)"`, best first; empty when none fits.
    """
    sizes = mesh_axis_sizes(mesh)
    now = math.prod(sizes.values())
    plan.pop("available", None)
    dtypes = [(param_bytes, dtype_bytes, "")]
    if param_bytes > 2:
        dtypes.append((2, 2, " --dtype bfloat16"))

    def fitting(candidate: dict[str, int], n: int, p: int, d: int) -> MemoryPlan | None:
        available = available_memory(list(devices)[:n], override)
        out = plan_prioritize(config_a, config_b, candidate, param_bytes=p, dtype_bytes=d, available=available, **plan)
        return out if out.available is not None and out.fits else None

    out = []
    if param_bytes > 2:
        same = fitting(sizes, now, 2, 2)
        if same is not None:
            out.append(f"--dtype bfloat16 (peak {format_bytes(same.peak)} per device)")
    n = len(devices)
    if n > now:
        for p, d, flag in dtypes:
            found = [(f.peak, c) for c in _meshes_over(n) if (f := fitting(c, n, p, d)) is not None]
            if found:
                peak, best = min(found, key=lambda item: item[0])
                out.append(f"{_mesh_flag(best)}{flag} (peak {format_bytes(peak)} per device, {n} devices)")
                break
    return tuple(out)


# Per-call activation plans (pipeline, features): one forward pass, checked against jaxrank.resources.


def _get(config: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def forward_bytes(config: Any, rows: int, length: int, *, keys: int | None = None, logit_positions: int = 0,
                  vocab_block: int | None = None, dtype_bytes: int = 4) -> int:
    """Estimated peak activation bytes of one forward pass of a transformer over `[rows, length]` tokens.

    Args:
        config: a `jaxrank.lm.config.ModelConfig` or `jaxrank.lm.bert.BertConfig` (hidden_size,
            intermediate_size, num_layers, num_heads, num_kv_heads, head_dim, vocab_size).
        rows, length: the padded batch shape.
        keys: key positions attended to (the KV cache length of a generation: prompt + new tokens); default
            `length`. With `keys > length` a KV cache of `keys` positions is counted.
        logit_positions: positions per row whose logits are formed ([rows, positions, vocab] float32, with a
            softmax-sized copy); 0 for none (features), 1 for a generation step.
        vocab_block: when the logits are formed blockwise over the vocabulary (fused / blockwise scoring), the
            block width instead of the whole vocabulary.
        dtype_bytes: bytes per activation element (4 for float32, 2 for bfloat16).

    Returns:
        Bytes.
    """
    d = int(_get(config, "hidden_size"))
    inter = int(_get(config, "intermediate_size", default=4 * d))
    heads = int(_get(config, "num_heads", "num_attention_heads"))
    kv_heads = int(_get(config, "num_kv_heads", "num_key_value_heads", default=heads))
    head_dim = int(_get(config, "head_dim", default=d // heads))
    layers = int(_get(config, "num_layers", "num_hidden_layers"))
    vocab = int(_get(config, "vocab_size"))
    b, t = int(rows), int(length)
    s = t if keys is None else int(keys)
    # Scores, masked scores, their exponentials and the normalised probabilities (float32): measured peaks
    # (benchmarks/memory_plans.py) sit between three and four copies.
    scores = 4 * b * heads * t * s * 4
    masks = 7 * b * t * s  # int32 distances, the bool masks of the layer
    qkv = b * t * (heads + 2 * kv_heads) * head_dim * dtype_bytes
    mlp = 3 * b * t * inter * dtype_bytes
    stream = 6 * b * t * d * 4
    cache = 0 if s <= t else 2 * 2 * layers * b * s * kv_heads * head_dim * dtype_bytes
    width = vocab if vocab_block is None else min(int(vocab_block), vocab)
    logits = 3 * b * int(logit_positions) * width * 4
    return int(scores + masks + qkv + mlp + stream + cache + logits)


def check_forward(config: Any, rows: int, length: int, *, what: str, keys: int | None = None,
                  logit_positions: int = 0, vocab_block: int | None = None, dtype_bytes: int = 4,
                  models: int = 1) -> int:
    """Refuse a forward pass (of `models` models of this shape at once) that cannot fit; returns its estimate.

    Raises:
        jaxrank.resources.ResourceError: naming `batch_size` (and the most rows that fit) when one row fits,
            else `max_length` (and the longest context, in tokens, that fits in one row).
    """
    extra = (0 if keys is None else int(keys) - int(length))

    def need(r: int, t: int) -> int:
        lp = min(int(logit_positions), t)
        return models * forward_bytes(config, r, t, keys=t + extra, logit_positions=lp, vocab_block=vocab_block,
                                      dtype_bytes=dtype_bytes)

    needed = need(rows, length)
    budget = memory_budget()
    if needed <= budget:
        return needed
    if need(1, length) <= budget:
        largest = _largest(lambda r: need(r, length) <= budget, int(rows))
        raise ResourceError(option="batch_size", value=int(rows), needed=needed, available=budget, largest=largest,
                            what=f"{what} ({rows} rows of {length} tokens)")
    lo = _largest(lambda t: need(1, t) <= budget, int(length))
    raise ResourceError(option="max_length", value=int(length + extra), needed=need(1, length), available=budget,
                        largest=lo + extra if lo > 0 else 0, unit=" tokens",
                        what=f"{what} (one row of {length} tokens)")


def _largest(fits, upper: int) -> int:
    """The largest n in [0, upper] with fits(n) (fits is monotone: true up to some n); 0 if none."""
    lo, hi = 0, upper
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo
