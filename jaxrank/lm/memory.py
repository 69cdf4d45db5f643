"""Memory plans of language-model calls: an estimate of the activation bytes of one forward pass, checked
before each call so that a long prompt or a large batch is refused with the estimate, never allocated blindly.

A forward pass over `[rows, length]` tokens keeps, at its peak (the layers run one after another under
`lax.scan`, without gradients), one layer's activations: the attention scores float32
`[rows, heads, length, keys]` with their masked, exponentiated and normalised copies (the quadratic term
that dominates long prompts), the masks `[rows, length, keys]`, the MLP's `[rows, length, intermediate]` and the residual stream;
plus the KV cache of a generation (`2 x layers x rows x keys x kv_heads x head_dim`, in and out of the layer
scan) and the logits of the positions that get them. The parameters are not counted: they are loaded before
the plan is made, so the memory they take is no longer available.

`check_forward` refuses a call whose estimate exceeds the budget of `jaxrank.resources` with a
`jaxrank.resources.ResourceError` that names `batch_size` (the most rows that fit) when one row fits, and
`max_length` (the longest context that fits in one row) otherwise.
"""

from __future__ import annotations

from typing import Any

from jaxrank.resources import ResourceError, memory_budget

__all__ = ["check_forward", "forward_bytes"]


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
