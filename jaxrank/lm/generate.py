"""Autoregressive generation with a KV cache: prefill once, then decode one token per step in `lax.scan`.

The whole loop is one jitted XLA program, compiled once per (model structure, batch, prompt length,
`max_new_tokens`, sampling switches); temperature and `top_p` are traced values.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrank.lm.transformer import CausalLM, KVCache


def _last_real_index(mask: jax.Array) -> jax.Array:
    """Index `[batch]` of the last real token of each row (right, left or no padding)."""
    t = mask.shape[1]
    idx = jnp.arange(t, dtype=jnp.int32)
    return jnp.max(jnp.where(mask, idx, -1), axis=1).clip(0)


def _select(logits: jax.Array, key: jax.Array | None, temperature: Any, top_k: int | None, top_p: Any) -> jax.Array:
    """Next tokens `[batch]` from logits `[batch, vocab]`: argmax when `key` is None, else a sample
    from softmax(logits / temperature) restricted to the top-k tokens and the top-p nucleus."""
    if key is None:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    floor = jnp.finfo(jnp.float32).min
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, floor, logits)
    if top_p is not None:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # Keep a token while the mass before it is below top_p (the first token always stays).
        before = jnp.cumsum(probs, axis=-1) - probs
        drop_sorted = before >= top_p
        drop = jnp.zeros_like(drop_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
        logits = jnp.where(drop, floor, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.lru_cache(maxsize=32)
def _compiled(graphdef: Any, max_new_tokens: int, sample: bool, top_k: int | None, use_top_p: bool,
              eos: tuple[int, ...], pad: int, per_row: bool = False):
    def run(state, input_ids, mask, key, temperature, top_p):
        model = nnx.merge(graphdef, state)
        b, t = input_ids.shape
        cache = KVCache.init(model.config, b, t + max_new_tokens, model.dtype)
        h, cache = model.hidden_states(input_ids, attention_mask=mask, cache=cache)
        h_last = jnp.take_along_axis(h, _last_real_index(mask)[:, None, None], axis=1)[:, 0]
        p = top_p if use_top_p else None

        def pick(logits, step):
            if not sample:
                return _select(logits, None, temperature, top_k, p)
            if per_row:  # row r draws from its own stream: the same tokens whatever the batch around it
                return jax.vmap(lambda k, row: _select(row[None], jax.random.fold_in(k, step), temperature,
                                                       top_k, p)[0])(key, logits)
            return _select(logits, jax.random.fold_in(key, step), temperature, top_k, p)

        first = pick(model.logits_from_hidden(h_last), 0)
        # The decode steps read the weights of every layer each step: split them once here, so the
        # step runs on these arrays (no per-step copies of lax.scan's weight slices).
        layers = model.split_layers() if max_new_tokens > 1 else None

        def step(carry, i):
            token, cache = carry
            logits, cache = model(token[:, None], cache=cache, layers=layers)
            nxt = pick(logits[:, 0], i)
            return (nxt, cache), token

        if max_new_tokens > 1:
            (last, _), tokens = jax.lax.scan(step, (first, cache), jnp.arange(1, max_new_tokens))
            tokens = jnp.concatenate([tokens.T, last[:, None]], axis=1)
        else:
            tokens = first[:, None]
        if eos:
            is_eos = jnp.isin(tokens, jnp.asarray(eos, jnp.int32))
            after = (jnp.cumsum(is_eos, axis=1) - is_eos) > 0
        else:
            after = jnp.zeros(tokens.shape, bool)
        tokens = jnp.where(after, pad, tokens)
        lengths = max_new_tokens - jnp.sum(after, axis=1, dtype=jnp.int32)
        return tokens, lengths

    return jax.jit(run)


def generate(
    loaded_or_model: Any,
    input_ids: Any,
    attention_mask: Any = None,
    *,
    max_new_tokens: int,
    key: jax.Array | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Continue each prompt by up to `max_new_tokens` tokens (greedy, or sampled with `key`).

    Prompts may be left- or right-padded: positions come from `attention_mask`, and the first new
    token follows each row's last real token. Decoding uses a KV cache sized
    `prompt length + max_new_tokens`; the prefill and the decode loop (`lax.scan`) are one jitted
    program, compiled once per (batch, prompt length, max_new_tokens) and sampling switches.

    Sampling: `p(v) ∝ exp(logits_v / temperature)` over the `top_k` largest logits and the smallest
    set of tokens whose probability reaches `top_p`; `temperature == 0` is greedy (argmax).

    Args:
        loaded_or_model: a `LoadedModel` (its EOS/pad ids are the defaults) or a `CausalLM`.
        input_ids: `[batch, prompt_len]` integer token ids.
        attention_mask: `[batch, prompt_len]`, 1 for real tokens (default: all real).
        max_new_tokens: number of decoding steps (>= 1).
        key: PRNG key, required when `temperature > 0`; or one key per row (`[batch]` keys), so that each
            row's sample depends on its own key only, not on the rows batched with it.
        temperature, top_k, top_p: sampling controls.
        eos_token_id: id or ids that end a row; tokens after it are `pad_token_id`.
        pad_token_id: filler after EOS (default: the model's pad id, else the EOS id, else 0).

    Returns:
        `(tokens int32 [batch, max_new_tokens], lengths int32 [batch])`; `lengths` counts the
        tokens up to and including the first EOS.

    Example:
        >>> lm = load_model("smollm2-135m-instruct")
        >>> enc = lm.tokenizer(["Paris is"], return_tensors="np")
        >>> tokens, lengths = generate(lm, enc["input_ids"], enc["attention_mask"], max_new_tokens=8)
        >>> lm.tokenizer.decode(tokens[0, : lengths[0]])
    """
    model = getattr(loaded_or_model, "model", loaded_or_model)
    if not isinstance(model, CausalLM):
        raise TypeError(f"loaded_or_model must be a LoadedModel or a jaxrank CausalLM, got {type(loaded_or_model).__name__}")
    if eos_token_id is None:
        eos_token_id = getattr(loaded_or_model, "eos_token_ids", None) or model.config.eos_token_ids
    eos = (eos_token_id,) if isinstance(eos_token_id, (int, np.integer)) else tuple(int(e) for e in (eos_token_id or ()))
    if pad_token_id is None:
        pad_token_id = getattr(loaded_or_model, "pad_token_id", None)
        if pad_token_id is None:
            pad_token_id = eos[0] if eos else 0
    if not isinstance(max_new_tokens, (int, np.integer)) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    input_ids = np.asarray(input_ids) if not isinstance(input_ids, jax.Array) else input_ids
    if input_ids.ndim != 2 or 0 in input_ids.shape:
        raise ValueError(f"input_ids must have shape [batch, prompt_len] (non-empty), got shape {tuple(input_ids.shape)}")
    if not jnp.issubdtype(input_ids.dtype, jnp.integer):
        raise TypeError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    if attention_mask is None:
        attention_mask = np.ones(input_ids.shape, bool)
    if tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}"
        )
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    sample = temperature > 0
    if sample and key is None:
        raise ValueError("key is required when temperature > 0 (sampling); pass jax.random.key(seed)")
    per_row = False
    if sample:
        key = jnp.asarray(key)
        if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.wrap_key_data(key)  # a raw uint32 key (jax.random.PRNGKey) or [batch, 2] of them
        if key.ndim > 1:
            raise ValueError(f"key must be one PRNG key or a [batch] array of keys, got {key.ndim} dimensions")
        per_row = key.ndim == 1
        if per_row and key.shape[0] != input_ids.shape[0]:
            raise ValueError(f"key: one key per row needs {input_ids.shape[0]} keys (the batch), got {key.shape[0]}")
    if top_k is not None and not (isinstance(top_k, (int, np.integer)) and 1 <= top_k <= model.vocab_size):
        raise ValueError(f"top_k must be an integer in [1, {model.vocab_size}], got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    input_ids, attention_mask = jnp.asarray(input_ids, jnp.int32), jnp.asarray(attention_mask).astype(bool)
    if model.sharding is not None:
        # Rows over the mesh's batch axes, as the sharded model expects its activations.
        rows = model.sharding.named(("batch", "length"), input_ids.shape)
        input_ids, attention_mask = jax.device_put(input_ids, rows), jax.device_put(attention_mask, rows)
    graphdef, state = nnx.split(model)
    fn = _compiled(graphdef, int(max_new_tokens), sample, int(top_k) if (sample and top_k) else None,
                   bool(sample and top_p is not None), eos, int(pad_token_id), per_row)
    key = key if sample else jax.random.key(0)
    return fn(
        state,
        input_ids,
        attention_mask,
        key,
        jnp.float32(temperature if sample else 1.0),
        jnp.float32(top_p if top_p is not None else 1.0),
    )
