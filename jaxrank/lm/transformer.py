"""The decoder shared by every supported family, in flax.nnx, with a KV cache.

Layer weights are stacked along a leading `[num_layers]` axis and the layers run under `lax.scan`,
so a 30-layer model compiles one layer body instead of thirty. Per-layer differences (Gemma 3's
sliding-window layers with their own RoPE base) are scanned-over arrays, not Python branches.

Conventions: dense weights are stored `[in, out]` (the transpose of PyTorch's `nn.Linear`), and
activations are `[batch, seq, ...]`. Positions come from the attention mask
(`cumsum(mask) - 1`), so left and right padding give the same logits for the real tokens.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrank.lm.config import ModelConfig
from jaxrank.lm.sharding import PARAM_AXES, ModelSharding

def layer_param_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes `[num_layers, ...]` of the stacked per-layer weights."""
    c = config
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "attn_norm": (c.hidden_size,),
        "wq": (c.hidden_size, q),
        "wk": (c.hidden_size, kv),
        "wv": (c.hidden_size, kv),
        "wo": (q, c.hidden_size),
        "mlp_norm": (c.hidden_size,),
        "w_gate": (c.hidden_size, c.intermediate_size),
        "w_up": (c.hidden_size, c.intermediate_size),
        "w_down": (c.intermediate_size, c.hidden_size),
    }
    if c.qkv_bias:
        shapes.update(bq=(q,), bk=(kv,), bv=(kv,))
    if c.o_bias:
        shapes["bo"] = (c.hidden_size,)
    if c.mlp_bias:
        shapes.update(b_gate=(c.intermediate_size,), b_up=(c.intermediate_size,), b_down=(c.hidden_size,))
    if c.qk_norm:
        shapes.update(q_norm=(c.head_dim,), k_norm=(c.head_dim,))
    if c.sandwich_norm:
        shapes.update(post_attn_norm=(c.hidden_size,), post_mlp_norm=(c.hidden_size,))
    return {name: (c.num_layers, *shape) for name, shape in shapes.items()}


def param_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every weight of the model: `embed [V, d]`, `final_norm [d]`, `lm_head [d, V]` (untied), layers."""
    shapes = {"embed": (config.vocab_size, config.hidden_size), "final_norm": (config.hidden_size,)}
    if not config.tie_word_embeddings:
        shapes["lm_head"] = (config.hidden_size, config.vocab_size)
    shapes.update(layer_param_shapes(config))
    return shapes


@flax.struct.dataclass
class KVCache:
    """Keys and values of every layer for the tokens seen so far.

    Attributes:
        keys, values: `[num_layers, batch, max_length, num_kv_heads, head_dim]`.
        positions: `[batch, max_length]` int32, the RoPE position of each slot.
        valid: `[batch, max_length]` bool, slots holding a real (non-padding) token.
        length: `[]` int32, slots written so far (the next write starts there).
        next_position: `[batch]` int32, the position the next real token of each row gets.
    """

    keys: jax.Array
    values: jax.Array
    positions: jax.Array
    valid: jax.Array
    length: jax.Array
    next_position: jax.Array

    @classmethod
    def init(cls, config: ModelConfig, batch: int, max_length: int, dtype: Any = jnp.float32) -> KVCache:
        """An empty cache for `batch` rows of up to `max_length` tokens (prompt + generated)."""
        if batch < 1 or max_length < 1:
            raise ValueError(f"KVCache.init needs batch >= 1 and max_length >= 1, got {batch} and {max_length}")
        shape = (config.num_layers, batch, max_length, config.num_kv_heads, config.head_dim)
        return cls(
            keys=jnp.zeros(shape, dtype),
            values=jnp.zeros(shape, dtype),
            positions=jnp.zeros((batch, max_length), jnp.int32),
            valid=jnp.zeros((batch, max_length), bool),
            length=jnp.zeros((), jnp.int32),
            next_position=jnp.zeros((batch,), jnp.int32),
        )

    @property
    def max_length(self) -> int:
        return self.keys.shape[2]


def rms_norm(x: jax.Array, weight: jax.Array, eps: float, offset: float) -> jax.Array:
    """`x / sqrt(mean(x²) + eps) · (offset + w)`, normalized in float32, returned in `x.dtype`."""
    xf = x.astype(jnp.float32)
    normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    if offset:
        # Gemma multiplies in float32 before the cast back.
        return (normed * (offset + weight.astype(jnp.float32))).astype(x.dtype)
    return weight * normed.astype(x.dtype)


def rope_tables(positions: jax.Array, inv_freq: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos and sin `[..., batch, seq, head_dim]` (float32) of `positions [batch, seq]` for inverse
    frequencies `inv_freq [..., head_dim // 2]` (the rotate-half layout)."""
    angles = positions.astype(jnp.float32)[..., None] * inv_freq[..., None, None, :]  # [..., B, T, Dh/2]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array, tables=None) -> jax.Array:
    """Rotate `x [batch, seq, heads, head_dim]` by `positions [batch, seq]` (the rotate-half layout).

    `tables`: precomputed `(cos, sin)` `[batch, seq, head_dim]` from `rope_tables` (then `positions`
    and `inv_freq` are not used): the model computes them once per forward, not once per layer.
    """
    cos, sin = rope_tables(positions, inv_freq) if tables is None else tables
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def positions_from_mask(mask: jax.Array, start: jax.Array | None = None) -> jax.Array:
    """Positions `[batch, seq]`: the count of real tokens before each one (plus `start [batch]`)."""
    pos = jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1
    pos = jnp.maximum(pos, 0)
    if start is not None:
        pos = pos + start[:, None]
    return pos


def _pin(sharding: ModelSharding | None, x: jax.Array, logical: tuple[str | None, ...]) -> jax.Array:
    """Constrain an activation to its logical layout on the model's mesh (no-op unsharded)."""
    return x if sharding is None else sharding.constrain(x, logical)


def _linear(x: jax.Array, w: jax.Array, b: jax.Array | None = None) -> jax.Array:
    # Accumulated in float32 whatever the compute dtype (bfloat16 products, float32 sums), then cast back.
    y = jnp.einsum("...i,io->...o", x, w.astype(x.dtype), preferred_element_type=jnp.float32)
    if b is not None:
        y = y + b.astype(jnp.float32)
    return y.astype(x.dtype)


def _attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    allowed: jax.Array,
    *,
    scale: float,
    softcap: float | None,
) -> jax.Array:
    """Grouped-query attention. q `[B, T, H, Dh]`, k/v `[B, S, Hkv, Dh]`, allowed `[B, T, S]`."""
    b, t, h, dh = q.shape
    hkv = k.shape[2]
    q = q.reshape(b, t, hkv, h // hkv, dh)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * scale
    if softcap is not None:
        scores = softcap * jnp.tanh(scores / softcap)
    # A finite floor keeps rows with no visible key (padding queries) NaN-free.
    scores = jnp.where(allowed[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h * dh)


def _activation(name: str, x: jax.Array) -> jax.Array:
    if name == "silu":
        return jax.nn.silu(x)
    return jax.nn.gelu(x, approximate=True)


def _layer(
    config: ModelConfig,
    x: jax.Array,
    p: dict[str, jax.Array],
    rope: tuple[jax.Array, jax.Array],
    window: jax.Array,
    positions: jax.Array,
    base_allowed: jax.Array,
    qk_distance: jax.Array,
    cache_kv: tuple[jax.Array, jax.Array] | None,
    write_at: jax.Array | None,
    sharding: ModelSharding | None = None,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    c = config
    b, t, _ = x.shape
    eps, off = c.rms_norm_eps, c.norm_offset
    heads, kv_heads = ("batch", "length", "q_heads", "head_dim"), ("batch", "length", "kv_heads", "head_dim")
    h = rms_norm(x, p["attn_norm"], eps, off)
    q = _pin(sharding, _linear(h, p["wq"], p.get("bq")).reshape(b, t, c.num_heads, c.head_dim), heads)
    k = _pin(sharding, _linear(h, p["wk"], p.get("bk")).reshape(b, t, c.num_kv_heads, c.head_dim), kv_heads)
    v = _pin(sharding, _linear(h, p["wv"], p.get("bv")).reshape(b, t, c.num_kv_heads, c.head_dim), kv_heads)
    if c.qk_norm:
        q = rms_norm(q, p["q_norm"], eps, off)
        k = rms_norm(k, p["k_norm"], eps, off)
    q = apply_rope(q, positions, None, rope)
    k = apply_rope(k, positions, None, rope)
    new_kv = None
    if cache_kv is not None:
        ck, cv = cache_kv
        ck = _pin(sharding, jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, write_at, 0, 0)), kv_heads)
        cv = _pin(sharding, jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, write_at, 0, 0)), kv_heads)
        new_kv = (ck, cv)
        k, v = ck.astype(q.dtype), cv.astype(q.dtype)
    allowed = base_allowed & (qk_distance < window)
    attn = _pin(sharding, _attention(q, k, v, allowed, scale=c.scale, softcap=c.attn_logit_softcap),
                ("batch", "length", "q_heads"))
    attn = _linear(attn, p["wo"], p.get("bo"))
    if c.sandwich_norm:
        attn = rms_norm(attn, p["post_attn_norm"], eps, off)
    x = _pin(sharding, x + attn, ("batch", "length", "act_embed"))
    h = rms_norm(x, p["mlp_norm"], eps, off)
    gate = _activation(c.hidden_act, _linear(h, p["w_gate"], p.get("b_gate")))
    up = _pin(sharding, gate * _linear(h, p["w_up"], p.get("b_up")), ("batch", "length", "mlp"))
    mlp = _linear(up, p["w_down"], p.get("b_down"))
    if c.sandwich_norm:
        mlp = rms_norm(mlp, p["post_mlp_norm"], eps, off)
    return _pin(sharding, x + mlp, ("batch", "length", "act_embed")), new_kv


def place(value: Any, dtype: Any, sharding: jax.sharding.Sharding | None = None) -> jax.Array:
    """`value` as a device array of `dtype`, laid out by `sharding` (default: the default device).

    A host array (NumPy, or a read-only memory map of a checkpoint) goes straight to its shards:
    each device receives only its slice, read and converted there, so no device (and no extra host
    buffer) ever holds the whole array. A device array already in that dtype and layout is shared.
    """
    dtype = jnp.dtype(dtype)
    if isinstance(value, jax.Array):
        if value.dtype != dtype:
            value = value.astype(dtype)
        if sharding is not None and not value.sharding.is_equivalent_to(sharding, value.ndim):
            if value.is_fully_addressable and not sharding.is_fully_addressable:
                # A mesh spanning processes (jax.distributed), from this process's own copy: each device
                # takes its slice here. (`device_put` would first gather the whole array from every
                # process to check the copies agree.)
                return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
            value = jax.device_put(value, sharding)
        return value
    if sharding is None:
        return jnp.asarray(np.asarray(value, dtype=dtype))
    shape = tuple(value.shape)
    return jax.make_array_from_callback(
        shape, sharding, lambda index: np.ascontiguousarray(np.asarray(value[index]), dtype=dtype)
    )


def install_params(
    module: nnx.Module,
    shapes: dict[str, tuple[int, ...]],
    weights: dict[str, Any],
    what: str,
    sharding: ModelSharding | None = None,
) -> None:
    """Check `weights` against `shapes` and set each as an `nnx.Param` of `module` in its `param_dtype`.

    Device arrays already in that dtype (and layout) are shared, not copied (they are immutable).
    With `sharding`, each parameter carries its logical axes as `nnx.Param` metadata
    (`out_sharding`, `sharding_rules`, `mesh`; `nnx.get_partition_spec(nnx.state(module))` reads
    them back) and lives on the mesh in that layout.
    """
    missing = sorted(set(shapes) - set(weights))
    if missing:
        raise ValueError(f"weights is missing {missing} for {what}")
    for name, shape in shapes.items():
        value = weights[name]
        if tuple(value.shape) != shape:
            raise ValueError(f"weight {name!r} has shape {tuple(value.shape)}, expected {shape}")
        if sharding is None:
            setattr(module, name, nnx.Param(place(value, module.param_dtype)))
            continue
        logical = PARAM_AXES[name]
        value = place(value, module.param_dtype, sharding.named(logical))
        # Placed above already (shard by shard): flax's eager sharding would only repeat it.
        setattr(module, name, nnx.Param(value, out_sharding=logical, sharding_rules=sharding.rules,
                                        mesh=sharding.mesh, eager_sharding=False))


class CausalLM(nnx.Module):
    """A decoder-only causal language model (Llama, Qwen2 or Gemma 3 switches, see `ModelConfig`).

    Args:
        config: the architecture.
        weights: optional mapping name → array in the layout of `param_shapes(config)`; random
            normal(0, 0.02) weights are drawn from `rngs` when omitted.
        dtype: compute dtype (activations, matmuls); attention softmax, norms and logits are float32.
        param_dtype: storage dtype of the weights (defaults to `dtype`).
        rngs: `nnx.Rngs` for random initialisation.
        mesh: optional `("data", "fsdp", "tensor")` mesh (`jaxrank.lm.sharding.make_model_mesh`):
            the weights are laid out over it (vocabulary, heads and MLP columns over `tensor`, the
            model dimension over `fsdp`; see `jaxrank.lm.sharding`) and every jitted call runs
            partitioned by GSPMD. The numbers are those of the one-device model.

    Call: `model(input_ids [B, T], *, attention_mask=None, positions=None, cache=None)` →
    `(logits float32 [B, T, V], cache)`.

    Example:
        >>> cfg = ModelConfig("llama", vocab_size=64, hidden_size=32, intermediate_size=64,
        ...                   num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
        >>> model = CausalLM(cfg, rngs=nnx.Rngs(0))
        >>> logits, _ = model(jnp.zeros((1, 5), jnp.int32))
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        weights: dict[str, Any] | None = None,
        dtype: Any = jnp.float32,
        param_dtype: Any = None,
        rngs: nnx.Rngs | None = None,
        mesh: jax.sharding.Mesh | None = None,
    ):
        self.config = config
        self.dtype = jnp.dtype(dtype)
        self.param_dtype = jnp.dtype(param_dtype or dtype)
        if mesh is not None:
            from jaxrank.lm.sharding import model_sharding

            self.sharding: ModelSharding | None = model_sharding(config, mesh)
        else:
            self.sharding = None
        shapes = param_shapes(config)
        if weights is None:
            rngs = rngs if rngs is not None else nnx.Rngs(0)
            weights = {}
            for name, shape in shapes.items():
                if name.endswith("norm"):
                    # Llama norms start at 1; Gemma's (1 + w) norms at w = 0 (same function).
                    weights[name] = jnp.full(shape, 0.0 if config.norm_offset else 1.0)
                else:
                    weights[name] = 0.02 * jax.random.normal(rngs.params(), shape)
        install_params(self, shapes, weights, f"a {config.architecture} model", self.sharding)
        self._layer_names = tuple(n for n in shapes if n not in ("embed", "final_norm", "lm_head"))
        self.logit_softcap = config.final_logit_softcap

    # -- public API -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def unembedding(self) -> jax.Array:
        """The unembedding matrix `[hidden, vocab]`: the tied embedding transposed, or `lm_head`."""
        if self.config.tie_word_embeddings:
            return self.embed[...].T
        return self.lm_head[...]

    def weights(self) -> dict[str, jax.Array]:
        """Every weight by name (the layout of `param_shapes(config)`), as the module holds it."""
        return {name: getattr(self, name)[...] for name in param_shapes(self.config)}

    def split_layers(self) -> list[dict[str, jax.Array]]:
        """The stacked per-layer weights as one dict per layer (copies: call once, outside loops)."""
        stacked = {name: getattr(self, name)[...] for name in self._layer_names}
        return [{name: w[i] for name, w in stacked.items()} for i in range(self.config.num_layers)]

    def with_mesh(self, mesh: jax.sharding.Mesh | None) -> CausalLM:
        """The same model with its weights laid out on `mesh` (None: the default device).

        Each device receives only its shard of each weight (`jax.device_put` per parameter).
        """
        return type(self)(self.config, weights=self.weights(), dtype=self.dtype, param_dtype=self.param_dtype, mesh=mesh)

    def init_cache(self, batch: int, max_length: int, dtype: Any = None) -> KVCache:
        """An empty `KVCache` for `batch` rows and `max_length` tokens in all."""
        return KVCache.init(self.config, batch, max_length, dtype or self.dtype)

    def hidden_states(
        self,
        input_ids: jax.Array,
        *,
        attention_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
        cache: KVCache | None = None,
        layers: list[dict[str, jax.Array]] | None = None,
        start_layer: int = 0,
        stop_layer: int | None = None,
        residual: jax.Array | None = None,
        block_weights: dict[str, jax.Array] | None = None,
        final_norm: bool = True,
    ) -> tuple[jax.Array, KVCache | None]:
        """Final hidden states `[B, T, hidden]` (float32, final norm applied) and the updated cache.

        A slice of the blocks (no cache): `start_layer`, `stop_layer` run blocks `start..stop-1` only, on
        `residual [B, T, hidden]` (the residual stream entering block `start_layer`, from a call with
        `stop_layer=start_layer, final_norm=False`; None: the embedding of `input_ids`, which needs
        `start_layer=0`). `block_weights`: stacked weights `[stop - start, ...]` of those blocks by name
        (`layer_param_shapes`), used instead of the module's (fine-tuned or adapted copies). With
        `final_norm=False` the residual stream is returned as it is (in the compute dtype), not normed.
        `model.hidden_states(ids, stop_layer=j, final_norm=False)` fed to
        `model.hidden_states(ids, start_layer=j, residual=...)` equals `model.hidden_states(ids)`.

        `logits == softcap(h @ model.unembedding())`.

        `layers`: the per-layer weights from `split_layers()`, split once outside a loop that calls
        the model many times (the decode loop of `generate`): the layers then run one after the other
        on those arrays instead of under `lax.scan`, whose per-layer slices of the stacked weights are
        copies (XLA materialises each dynamic slice), doubling the weight traffic of every decode step.
        """
        input_ids, attention_mask = _check_inputs(input_ids, attention_mask, positions, cache)
        c = self.config
        lo, hi = _check_block_range(c, start_layer, stop_layer, residual, block_weights, layers, cache,
                                         input_ids.shape, self._layer_names)
        if layers is not None:
            stacked = None
        elif block_weights is not None:
            stacked = dict(block_weights)
        elif (lo, hi) == (0, c.num_layers):
            stacked = {name: getattr(self, name)[...] for name in self._layer_names}
        else:
            stacked = {name: getattr(self, name)[lo:hi] for name in self._layer_names}
        shard = self.sharding
        input_ids = _pin(shard, input_ids, ("batch", "length"))
        attention_mask = _pin(shard, attention_mask, ("batch", "length"))
        if residual is not None:
            x = _pin(shard, residual.astype(self.dtype), ("batch", "length", "act_embed"))
        else:
            # A vocabulary-sharded table: GSPMD looks each id up on the shard that holds it (masked
            # local gather + all-reduce over "tensor"), never gathering the table.
            x = _pin(shard, jnp.take(self.embed[...], input_ids, axis=0).astype(self.dtype),
                     ("batch", "length", "act_embed"))
            if c.embed_scale:
                x = x * jnp.asarray(c.hidden_size**0.5, dtype=self.param_dtype).astype(self.dtype)
        b, t = input_ids.shape
        if positions is None:
            start = None if cache is None else cache.next_position
            positions = positions_from_mask(attention_mask, start)
        positions = positions.astype(jnp.int32)

        if cache is None:
            k_pos, k_valid = positions, attention_mask
            write_at = None
            new_cache = None
        else:
            write_at = cache.length
            k_pos = jax.lax.dynamic_update_slice(cache.positions, positions, (0, write_at))
            k_valid = jax.lax.dynamic_update_slice(cache.valid, attention_mask, (0, write_at))
            new_cache = cache.replace(
                positions=k_pos,
                valid=k_valid,
                length=cache.length + t,
                next_position=cache.next_position + jnp.sum(attention_mask, axis=-1, dtype=jnp.int32),
            )
        qk_distance = positions[:, :, None] - k_pos[:, None, :]  # [B, T, S]
        base_allowed = k_valid[:, None, :] & (qk_distance >= 0)

        # RoPE tables once per forward for each distinct base (Gemma 3: local and global), not per
        # layer: the layers pick theirs by index.
        freqs = c.layer_inverse_frequencies()
        distinct, which = np.unique(freqs, axis=0, return_inverse=True)
        cos_all, sin_all = rope_tables(positions, jnp.asarray(distinct))  # [K, B, T, Dh]
        which = jnp.asarray(np.asarray(which).reshape(-1)[lo:hi], jnp.int32)
        windows = jnp.asarray(np.asarray(c.layer_windows())[lo:hi])

        def body(x, scanned):
            p, kind, window, kv = scanned
            rope = (cos_all[0], sin_all[0]) if len(distinct) == 1 else (cos_all[kind], sin_all[kind])
            x, new_kv = _layer(c, x, p, rope, window, positions, base_allowed, qk_distance, kv, write_at, shard)
            return x, new_kv

        kv_in = None
        if cache is not None:
            cache_axes = ("layers", "batch", "length", "kv_heads", "head_dim")
            kv_in = (_pin(shard, cache.keys, cache_axes), _pin(shard, cache.values, cache_axes))
        if hi == lo:
            kv_out = None
        elif layers is None:
            x, kv_out = jax.lax.scan(body, x, (stacked, which, windows, kv_in))
        else:
            if len(layers) != c.num_layers:
                raise ValueError(f"layers has {len(layers)} entries for a model of {c.num_layers} layers")
            keys, values = kv_in if kv_in is not None else (None, None)
            for i, p in enumerate(layers):
                kv = None if keys is None else (keys[i], values[i])
                x, new_kv = body(x, (p, which[i], windows[i], kv))
                if new_kv is not None:
                    keys, values = keys.at[i].set(new_kv[0]), values.at[i].set(new_kv[1])
            kv_out = (keys, values)
        if cache is not None:
            new_cache = new_cache.replace(keys=kv_out[0], values=kv_out[1])
        if not final_norm:
            return x, new_cache
        h = rms_norm(x, self.final_norm[...], c.rms_norm_eps, c.norm_offset)
        return h.astype(jnp.float32), new_cache

    def logits_from_hidden(self, h: jax.Array) -> jax.Array:
        """`softcap(h @ unembedding)` in float32, `[..., vocab]` from `[..., hidden]`."""
        w = self.unembedding()
        logits = jnp.einsum(
            "...d,dv->...v", h.astype(self.dtype), w.astype(self.dtype), preferred_element_type=jnp.float32
        )
        if self.logit_softcap is not None:
            logits = self.logit_softcap * jnp.tanh(logits / self.logit_softcap)
        if self.sharding is not None and logits.ndim == 3:
            logits = self.sharding.constrain(logits, ("batch", "length", "vocab"))
        return logits

    def __call__(
        self,
        input_ids: jax.Array,
        *,
        attention_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
        cache: KVCache | None = None,
        layers: list[dict[str, jax.Array]] | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Logits `[B, T, vocab]` (float32) and the updated cache (None when no cache was given);
        `layers` as in `hidden_states`."""
        h, cache = self.hidden_states(input_ids, attention_mask=attention_mask, positions=positions, cache=cache,
                                      layers=layers)
        return self.logits_from_hidden(h), cache


def _check_block_range(config, start, stop, residual, block_weights, layers, cache, shape, names):
    """`(start, stop)` of a slice of the blocks, after checking the slice options of `hidden_states`."""
    n = config.num_layers
    stop = n if stop is None else stop
    for name, value in (("start_layer", start), ("stop_layer", stop)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= n:
            raise ValueError(f"{name} must be an int in [0, {n}] (the model's layers), got {value!r}")
    if stop < start:
        raise ValueError(f"stop_layer={stop} must be >= start_layer={start}")
    sliced = (start, stop) != (0, n) or residual is not None or block_weights is not None
    if sliced and (cache is not None or layers is not None):
        raise ValueError("start_layer, stop_layer, residual and block_weights run without cache and layers")
    if residual is None and start != 0:
        raise ValueError(f"start_layer={start} needs residual [B, T, hidden], the residual stream entering that block")
    if residual is not None and tuple(residual.shape) != (*shape, config.hidden_size):
        raise ValueError(f"residual must have shape [B, T, hidden] = {(*shape, config.hidden_size)}, "
                         f"got {tuple(residual.shape)}")
    if block_weights is not None:
        missing = sorted(set(names) - set(block_weights))
        if missing:
            raise ValueError(f"block_weights is missing {missing}")
        for name in names:
            if block_weights[name].shape[0] != stop - start:
                raise ValueError(f"block_weights[{name!r}] has {block_weights[name].shape[0]} layers, expected "
                                 f"stop_layer - start_layer = {stop - start}")
    return int(start), int(stop)


def _check_inputs(input_ids, attention_mask, positions, cache):
    if not hasattr(input_ids, "shape") or not hasattr(input_ids, "dtype"):
        input_ids = np.asarray(input_ids)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must have shape [batch, seq] (2 dimensions), got shape {tuple(input_ids.shape)}")
    if not jnp.issubdtype(input_ids.dtype, jnp.integer):
        raise TypeError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be non-empty, got shape {tuple(input_ids.shape)}")
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if attention_mask is None:
        attention_mask = jnp.ones(input_ids.shape, bool)
    else:
        if tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                f"got {tuple(attention_mask.shape)}"
            )
        attention_mask = jnp.asarray(attention_mask).astype(bool)
    if positions is not None and tuple(positions.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"positions must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(positions.shape)}"
        )
    if cache is not None:
        if not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a jaxrank.lm.KVCache, got {type(cache).__name__}")
        if cache.positions.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"cache was made for batch {cache.positions.shape[0]}, input_ids has batch {input_ids.shape[0]}"
            )
        if input_ids.shape[1] > cache.max_length:
            raise ValueError(
                f"input_ids has {input_ids.shape[1]} tokens, more than the cache's max_length {cache.max_length}"
            )
    return input_ids, attention_mask
