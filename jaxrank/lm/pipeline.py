"""Prompt prioritization end to end: prompts in, two models, prompts ranked by disagreement out.

For every prompt, model A answers (greedy by default, or sampled; or the caller supplies the
completion), then both models score that completion by teacher forcing:

- `token` mode (both models share a tokenizer and vocabulary): the exact per-position divergence of
  the two next-token distributions over the whole vocabulary, averaged over the completion's tokens
  (`jaxrank.score_pairs` on materialised logits for vocabularies up to `FUSED_VOCAB_THRESHOLD`
  entries, the fused hidden-state path `jaxrank.lm.fused.fused_divergences` above it, so a
  262,144-entry vocabulary never produces `[tokens, vocab]` logits for both models at once).
- `sequence` mode (different tokenizers): a Monte-Carlo estimate of KL(A ‖ B) per byte of completion
  text, KL ≈ mean over samples y ~ A of [log p_A(y) − log p_B(y)] / bytes(y), each model scoring the
  same text (the prompt rendered with its own chat template, the completion text re-tokenized with
  its own tokenizer). Samples are drawn at temperature 1 (the estimator needs y ~ A); the number of
  samples and the standard error are reported per prompt.

Batches are sorted by length, padded to power-of-two lengths (buckets) and a fixed batch size, so each
jitted function compiles once per bucket. Positions come from the attention mask, so padding does not
change any score.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrank import _validation as v
from jaxrank.lm.fused import fused_divergences, token_log_probs
from jaxrank.lm.prompts import Prompt
from jaxrank.lm.transformer import CausalLM
from jaxrank.scoring import score_pairs, sequence_kl_estimate
from jaxrank.sharding import to_host

MODES = ("auto", "token", "sequence")
TOKEN_METRICS = ("kl", "cross_entropy", "entropy", "entropy_q", "jensen_shannon")
SEQUENCE_METRICS = ("kl", "cross_entropy", "entropy")
# Above this vocabulary size token mode uses the fused hidden-state path: at 65,536 entries one
# sequence of 256 positions already needs 64 MiB of float32 logits per model.
FUSED_VOCAB_THRESHOLD = 65_536
MIN_BUCKET = 16

# progress(stage, advance, total, tokens): `advance` more of the stage's `total` rows are done, having
# processed `tokens` tokens (prompt + completion, real tokens only).
ProgressFn = Callable[[str, int, int, int], None]


class TruncationWarning(UserWarning):
    """A prompt was longer than the context and lost tokens from its start."""


# --------------------------------------------------------------------------------------------
# Padding and bucketing
# --------------------------------------------------------------------------------------------


def bucket_length(n: int, *, minimum: int = MIN_BUCKET, maximum: int | None = None) -> int:
    """The padded length for a batch whose longest row has `n` tokens: the next power of two
    (at least `minimum`), capped at `maximum` (the context) when that is smaller."""
    b = max(minimum, 1 << max(0, math.ceil(math.log2(max(n, 1)))))
    if maximum is not None and b > maximum:
        return max(n, maximum)
    return b


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (sorted by length, stable), `batch_size` each."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(
    rows: Sequence[Sequence[int]], length: int, batch: int, pad_id: int, *, side: str = "right"
) -> tuple[np.ndarray, np.ndarray]:
    """`[batch, length]` int32 ids and bool mask; missing rows repeat the first row (masked out later).

    Args:
      rows: token id lists, each at most `length` long.
      length: padded length.
      batch: padded batch size (>= len(rows)).
      pad_id: the id written into padding slots.
      side: "right" (scoring) or "left" (generation, so new tokens follow every prompt).
    """
    ids = np.full((batch, length), pad_id, np.int32)
    mask = np.zeros((batch, length), bool)
    for i in range(batch):
        row = list(rows[i] if i < len(rows) else rows[0])
        n = len(row)
        if n > length:
            raise ValueError(f"a row has {n} tokens, more than the padded length {length}")
        if side == "left":
            ids[i, length - n :] = row
            mask[i, length - n :] = True
        else:
            ids[i, :n] = row
            mask[i, :n] = True
    return ids, mask


def truncate_left(ids: list[int], limit: int, bos: int | None) -> list[int]:
    """Keep the last `limit` tokens (the end of a chat prompt holds the question and the turn
    marker), re-attaching a leading BOS when the original started with one."""
    if len(ids) <= limit:
        return ids
    if bos is not None and ids and ids[0] == bos and limit >= 2:
        return [bos] + ids[len(ids) - (limit - 1) :]
    return ids[len(ids) - limit :]


# --------------------------------------------------------------------------------------------
# One model of the pair
# --------------------------------------------------------------------------------------------


def _attr(obj: Any, *names: str) -> Any:
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    return None


class ModelSide:
    """A loaded model with its tokenizer, chat template, special ids and functional state."""

    def __init__(self, loaded: Any, label: str):
        self.loaded = loaded
        self.model = getattr(loaded, "model", loaded)
        self.tokenizer = getattr(loaded, "tokenizer", None)
        if self.tokenizer is None:
            raise TypeError(f"{label} must be a jaxrank.lm.LoadedModel (model + tokenizer), got {type(loaded).__name__}")
        self.name = str(_attr(loaded, "name") or label)
        self.label = label
        tok = self.tokenizer
        self.vocab_size = int(_attr(loaded, "vocab_size") or self.model.vocab_size)
        self.bos = _attr(loaded, "bos_token_id", "bos_id")
        if self.bos is None:
            self.bos = tok.bos_token_id
        eos = tuple(getattr(loaded, "eos_token_ids", None) or ()) or _attr(loaded, "eos_token_id", "eos_id")
        if eos is None:
            eos = tok.eos_token_id
        self.eos = eos
        pad = _attr(loaded, "pad_token_id", "pad_id")
        if pad is None:
            pad = tok.pad_token_id
        if pad is None:
            pad = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
        self.pad = int(pad) if pad is not None else 0
        self.template = _attr(loaded, "chat_template") or getattr(tok, "chat_template", None)
        config = _attr(loaded, "config") or getattr(self.model, "config", None)
        self.config = config  # shapes for the memory plan (`jaxrank.lm.memory`)
        self.context = int(getattr(config, "max_position_embeddings", 0) or 0) or None
        self.softcap = getattr(self.model, "logit_softcap", None)
        if isinstance(self.model, nnx.Module):
            self.graphdef, self.state = nnx.split(self.model)
        else:  # a plain callable honouring the same contract (no parameters to thread through jit)
            self.graphdef, self.state = _Static(self.model), None
        self.mesh = None
        first = tok.encode("a")
        self._adds_bos = self.bos is not None and bool(first) and first[0] == self.bos

    def prompt_ids(self, text: str) -> list[int]:
        """The user message rendered with this model's chat template (generation prompt appended),
        or, for a model without one (a base model), the message and a newline."""
        if self.template:
            rendered = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}],
                chat_template=self.template,
                tokenize=False,
                add_generation_prompt=True,
            )
            ids = list(self.tokenizer.encode(rendered, add_special_tokens=False))
            if self._adds_bos and (not ids or ids[0] != self.bos):
                ids = [self.bos] + ids
            return ids
        # A base model without a chat template reads the prompt, then the answer on a new line.
        return list(self.tokenizer.encode(text + "\n"))

    def text_ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def same_vocabulary(self, other: ModelSide) -> bool:
        if self.vocab_size != other.vocab_size:
            return False
        return self.tokenizer.get_vocab() == other.tokenizer.get_vocab()


def prompt_lengths(loaded: Any, prompts: Sequence[Prompt | str]) -> list[int]:
    """Tokens of each prompt as the pipeline feeds it to `loaded` (chat template, BOS included).

    `loaded` may come from `jaxrank.lm.loading.load_tokenizer` (no weights): memory plans use this
    before any model is loaded.
    """
    side = ModelSide(loaded, "model")
    return [len(side.prompt_ids(p.text if isinstance(p, Prompt) else str(p))) for p in prompts]


def _is_model_mesh(mesh: jax.sharding.Mesh) -> bool:
    from jaxrank.lm.sharding import MESH_AXES

    return set(mesh.axis_names) <= set(MESH_AXES)


def _place_side(side: ModelSide, mesh: jax.sharding.Mesh) -> None:
    """Lay `side`'s parameters out on `mesh` and shard its batches over the mesh's batch axes.

    A model mesh (`jaxrank.lm.sharding.make_model_mesh`: "data", "fsdp", "tensor") shards the weights
    (a model already laid out on it is used as is); any other mesh with a "data" axis
    (`jaxrank.sharding.make_mesh`) replicates them.
    """
    side.mesh = mesh
    if _is_model_mesh(mesh) and isinstance(side.model, CausalLM):
        if side.model.sharding is None or side.model.sharding.mesh != mesh:
            side.model = side.model.with_mesh(mesh)
            side.graphdef, side.state = nnx.split(side.model)
    elif side.state is not None:
        side.state = jax.device_put(side.state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def _batch_axes(mesh: jax.sharding.Mesh) -> tuple[str, ...]:
    from jaxrank.lm.sharding import BATCH_AXES
    from jaxrank.sharding import DATA_AXIS

    if _is_model_mesh(mesh):
        return tuple(a for a in BATCH_AXES if a in mesh.axis_names)
    return (DATA_AXIS,)


def _batch_multiple(mesh: jax.sharding.Mesh) -> int:
    """Rows per batch must be a multiple of this (the product of the mesh's batch axes)."""
    if not _is_model_mesh(mesh):
        from jaxrank.sharding import check_mesh

        return check_mesh(mesh)[0]
    return math.prod(int(mesh.shape[a]) for a in _batch_axes(mesh))


def shard_rows(mesh: jax.sharding.Mesh | None, *arrays: np.ndarray) -> tuple[Any, ...]:
    """Host `[batch, ...]` arrays split over the mesh's batch axes (unchanged without a mesh); the
    jitted scorers then run partitioned by GSPMD, one slice of the batch per device."""
    if mesh is None:
        return arrays
    axes = _batch_axes(mesh)
    spec = jax.sharding.PartitionSpec
    return tuple(
        jax.device_put(x, jax.sharding.NamedSharding(mesh, spec(axes, *([None] * (x.ndim - 1)))))
        for x in arrays
    )


@dataclasses.dataclass(frozen=True, eq=False)
class _Static:
    model: Any


def merge_model(graphdef: Any, state: Any) -> Any:
    if isinstance(graphdef, _Static):
        return graphdef.model
    return nnx.merge(graphdef, state)


# --------------------------------------------------------------------------------------------
# Jitted scoring functions, cached per (graph, options); jit then caches per bucket shape
# --------------------------------------------------------------------------------------------


def _gather(x: jax.Array, at: jax.Array) -> jax.Array:
    """`x [B, T, ...]` at positions `at [B, C]` → `[B, C, ...]`."""
    return jnp.take_along_axis(x, at.reshape(at.shape + (1,) * (x.ndim - 2)), axis=1)


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    m = mask.astype(jnp.float32)
    return jnp.sum(values * m, axis=-1) / jnp.sum(m, axis=-1)  # NaN for a row with no counted token


def _vocab_split(*models: Any) -> Any:
    """The models' common `ModelSharding` when their vocabulary is split over a mesh axis, else None."""
    shardings = [getattr(m, "sharding", None) for m in models]
    if any(s is None or s.tensor_axis is None for s in shardings):
        return None
    if len({s.mesh for s in shardings}) != 1:
        raise ValueError("model_a and model_b are sharded over different meshes; lay both out on one mesh")
    return shardings[0]


def _local_logits(h: jax.Array, w: jax.Array, model: Any) -> jax.Array:
    """This device's logits `[N, V_local]` from its unembedding columns (soft-capped, float32)."""
    dtype = getattr(model, "dtype", h.dtype)
    z = jnp.matmul(h.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)
    cap = getattr(model, "logit_softcap", None)
    return z if cap is None else cap * jnp.tanh(z / cap)


def _on_vocab_shards(split: Any, rows: int, fn: Callable, *args: jax.Array) -> Any:
    """Run `fn(*local args)` per device with `[N, ...]` row arrays split over the batch axes and
    `[d, vocab]` unembeddings split over the vocabulary axis (alternating: rows, unembedding, ...).

    The head's `[N, vocab]` logits never exist anywhere: each device holds `[N_local, vocab_local]`
    at most (the materialised path) or one vocabulary block (the fused path), and `fn` combines the
    per-row statistics over the vocabulary axis itself (`pmax`/`psum` in `jaxrank.divergence` /
    `jaxrank.lm.fused`).
    """
    from jax.sharding import PartitionSpec as P

    axes = split.batch_axes(rows)
    specs = tuple(P(axes, None) if i % 2 == 0 else P(None, split.tensor_axis) for i in range(len(args)))
    out_spec = P(axes) if axes else P()
    # check_vma=False: the kernels' loop carries start replicated and become per-shard; the results
    # are made identical over the vocabulary axis by the kernels' own pmax/psum.
    return jax.shard_map(fn, mesh=split.mesh, in_specs=specs, out_specs=out_spec, check_vma=False)(*args)


def token_scores(
    model_a: Any,
    model_b: Any,
    ids_a: jax.Array,
    mask_a: jax.Array,
    positions_a: jax.Array,
    ids_b: jax.Array,
    mask_b: jax.Array,
    positions_b: jax.Array,
    count: jax.Array,
    *,
    metrics: Sequence[str] = ("kl", "cross_entropy"),
    fused: bool = False,
    block_size: int | None = None,
) -> dict[str, jax.Array]:
    """Teacher-forced divergences of two models at chosen positions, averaged per row (jit-safe).

    Each model reads its own token ids; position `positions_a[b, c]` of A and `positions_b[b, c]`
    of B predict the same token, and `count [B, C]` marks the pairs that count. The score of each
    metric is the mean over counted positions of D(P_A ‖ P_B) over the whole vocabulary.

    Models sharded over a mesh (`load_model(..., mesh=)`) with their vocabulary split over
    `"tensor"` feed the divergence straight from the vocabulary-sharded head, inside
    `jax.shard_map`: each device computes `softcap(h @ W_local)` for its vocabulary columns only
    (`fused=False`, then `jaxrank.divergence.divergences(axis_name="tensor")`) or streams them block
    by block (`fused=True`, `jaxrank.lm.fused.fused_divergences(axis_name="tensor")`); per-row
    statistics are combined with `pmax`/`psum`. `[tokens, vocab]` logits never exist on any device.

    Args:
      model_a, model_b: `CausalLM`s with one vocabulary.
      ids_a, mask_a: `[B, T_a]` token ids and attention mask of A (ids_b, mask_b likewise for B).
      positions_a, positions_b: `[B, C]` int32 positions whose next-token distributions are compared.
      count: `[B, C]` bool, the compared pairs that count.
      metrics: names from `TOKEN_METRICS` ("jensen_shannon" needs `fused=False`).
      fused: the fused hidden-state path (`jaxrank.lm.fused`) instead of materialised logits.
      block_size: vocabulary block of the fused kernel.

    Returns:
      `{metric: float32[B]}`.
    """
    metrics = tuple(metrics)
    split = _vocab_split(model_a, model_b)
    # Only the compared positions reach the heads (`[B, C, d]` gathered from `[B, T, d]`): the prompt's
    # positions cost no `d x vocab` work.
    ha, _ = model_a.hidden_states(ids_a, attention_mask=mask_a)
    hb, _ = model_b.hidden_states(ids_b, attention_mask=mask_b)
    ha, hb = _gather(ha, positions_a), _gather(hb, positions_b)  # [B, C, d]
    if not fused and split is None:
        return score_pairs(model_a.logits_from_hidden(ha), model_b.logits_from_hidden(hb), count, metrics=metrics)
    b, c = positions_a.shape
    ha, hb = ha.reshape(b * c, -1), hb.reshape(b * c, -1)

    def divergence(ha, wa, hb, wb, axis_name=None):
        if fused:
            return fused_divergences(
                ha, wa, hb, wb, metrics=metrics, block_size=block_size, axis_name=axis_name,
                softcap_a=getattr(model_a, "logit_softcap", None), softcap_b=getattr(model_b, "logit_softcap", None),
            )
        from jaxrank.divergence import divergences

        return divergences(_local_logits(ha, wa, model_a), _local_logits(hb, wb, model_b), metrics=metrics,
                           axis_name=axis_name)

    if split is None:
        out = divergence(ha, model_a.unembedding(), hb, model_b.unembedding())
    else:
        out = _on_vocab_shards(
            split, b * c, functools.partial(divergence, axis_name=split.tensor_axis),
            ha, model_a.unembedding(), hb, model_b.unembedding(),
        )
    return {k: _masked_mean(val.reshape(b, c), count) for k, val in out.items()}


@functools.lru_cache(maxsize=64)
def _token_scorer(graph_a: Any, graph_b: Any, metrics: tuple[str, ...], fused: bool, block_size: int | None):
    def score(state_a, state_b, *arrays):
        return token_scores(merge_model(graph_a, state_a), merge_model(graph_b, state_b), *arrays, metrics=metrics,
                            fused=fused, block_size=block_size)

    return jax.jit(score)


@functools.lru_cache(maxsize=64)
def _logprob_scorer(graph: Any, block_size: int | None):
    def score(state, ids, mask, at, targets, count):
        """Σ log p(targets) over counted positions: position `at[b, c]` predicts `targets[b, c]`.

        Only the scored positions reach the head (`[B, C, d]` gathered from `[B, T, d]`): the prompt's
        positions cost no `d x vocab` work.
        """
        model = merge_model(graph, state)
        h, _ = model.hidden_states(ids, attention_mask=mask)
        h = _gather(h, at)  # [B, C, d]
        b, c, d = h.shape
        softcap = getattr(model, "logit_softcap", None)

        def log_probs(h, w, targets, axis_name=None):
            return token_log_probs(h, w, targets, block_size=block_size, softcap=softcap, axis_name=axis_name)

        split = _vocab_split(model)
        h, flat_targets = h.reshape(b * c, d), targets.reshape(b * c)
        if split is None:
            lp = log_probs(h, model.unembedding(), flat_targets)
        else:
            lp = _on_vocab_shards(
                split, b * c, lambda h, w, tg: log_probs(h, w, tg[:, 0], split.tensor_axis),
                h, model.unembedding(), flat_targets[:, None],
            )
        return jnp.sum(jnp.where(count, lp.reshape(b, c), 0.0), axis=-1)

    return jax.jit(score)


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Item:
    index: int
    prompt: Prompt
    ids_a: list[int]
    ids_b: list[int]
    truncated: bool = False
    completions: list[list[int]] = dataclasses.field(default_factory=list)  # A's token ids (token mode)
    texts: list[str] = dataclasses.field(default_factory=list)
    texts_b: list[str] = dataclasses.field(default_factory=list)  # B's samples (symmetric)


def _as_prompts(prompts: Sequence[Prompt | str]) -> list[Prompt]:
    if isinstance(prompts, (str, bytes)):
        raise TypeError("prompts must be a sequence of strings or Prompt objects, got a single string")
    out = []
    for i, p in enumerate(prompts, start=1):
        if isinstance(p, Prompt):
            out.append(p)
        elif isinstance(p, str):
            out.append(Prompt(id=str(i), text=p))
        else:
            raise TypeError(f"prompts[{i - 1}] must be a str or Prompt, got {type(p).__name__}")
    if not out:
        raise ValueError("prompts is empty; nothing to prioritize")
    return out


def _forward_estimate(side: ModelSide, rows: int, length: int) -> int:
    from jaxrank.lm.memory import forward_bytes

    return forward_bytes(side.config, rows, length) if side.config is not None else 0


def _plan(side: ModelSide, rows: int, length: int, *, what: str, **kwargs: Any) -> None:
    """The memory plan of one call (`jaxrank.lm.memory.check_forward`), before its arrays exist: a batch that
    cannot fit is refused with the estimate, naming `batch_size` or `max_length`."""
    if side.config is None:  # a plain callable without a config: nothing to estimate from
        return
    from jaxrank.lm.memory import check_forward

    check_forward(side.config, rows, length, what=what, **kwargs)


def _is_fused(implementation: str, a: ModelSide, metrics: Sequence[str]) -> bool:
    """Token mode: score through the fused (vocabulary-blockwise) kernel rather than materialised logits."""
    fused = implementation == "fused" or (implementation == "auto" and a.vocab_size > FUSED_VOCAB_THRESHOLD)
    if fused and "jensen_shannon" in metrics:
        if implementation == "fused":
            raise ValueError("metrics 'jensen_shannon' needs implementation='materialized' (materialised logits)")
        fused = False
    return fused


def _plan_up_front(a: ModelSide, b: ModelSide, items: list[_Item], mode: str, batch_size: int, max_new_tokens: int,
                   context: int | None, symmetric: bool, fused: bool, block_size: int | None,
                   generates: bool) -> None:
    """Before any model runs: the memory plan of the longest batch of each stage whose length is known now
    (batches run shortest first, so a per-batch check alone would refuse only after the shorter ones)."""
    room = None if context is None else context - max_new_tokens
    gen_a = bucket_length(max(len(it.ids_a) for it in items), maximum=room)
    if generates:
        _plan(a, batch_size, gen_a, keys=gen_a + max_new_tokens, logit_positions=1, what=f"generating with {a.name}")
    if generates and mode == "sequence" and symmetric:
        gen_b = bucket_length(max(len(it.ids_b) for it in items), maximum=room)
        _plan(b, batch_size, gen_b, keys=gen_b + max_new_tokens, logit_positions=1, what=f"generating with {b.name}")
    longest = max(max(len(it.ids_a), len(it.ids_b)) for it in items) + max_new_tokens
    t = bucket_length(longest, maximum=context)
    if mode == "token":
        big = max((a, b), key=lambda side: _forward_estimate(side, 1, t))
        positions = bucket_length(max_new_tokens, minimum=8) if fused else t
        _plan(big, batch_size, t, logit_positions=positions, vocab_block=(block_size or 4096) if fused else None,
              models=2, what="scoring with both models")
    else:
        for side in (a, b):
            _plan(side, batch_size, t, logit_positions=t, vocab_block=block_size or 4096, what=f"scoring with {side.name}")


def _notify(progress: ProgressFn | None, stage: str, advance: int, total: int, tokens: int) -> None:
    if progress is not None:
        progress(stage, advance, total, tokens)


def _generate(
    side: ModelSide,
    rows: list[list[int]],
    *,
    keys: jax.Array | None,
    max_new_tokens: int,
    batch_size: int,
    temperature: float,
    context: int | None,
    progress: ProgressFn | None,
    stage: str,
    total: int,
) -> list[list[int]]:
    """Completions (token ids, up to and including EOS) for each row, in the order of `rows`; row r samples
    with `keys[r]` (`row_keys`; None when greedy)."""
    from jaxrank.lm.generate import generate

    out: list[list[int]] = [[] for _ in rows]
    for batch in length_batches([len(r) for r in rows], batch_size):
        length = bucket_length(max(len(rows[i]) for i in batch), maximum=None if context is None else context - max_new_tokens)
        _plan(side, batch_size, length, keys=length + max_new_tokens, logit_positions=1, what=f"{stage} with {side.name}")
        ids, mask = pad_batch([rows[i] for i in batch], length, batch_size, side.pad, side="left")
        batch_keys = None
        if temperature > 0:
            # Padding rows (copies of the first) reuse its key; their tokens are dropped.
            batch_keys = keys[np.asarray(batch + [batch[0]] * (batch_size - len(batch)))]
        tokens, lengths = generate(
            side.model,
            jnp.asarray(ids),
            jnp.asarray(mask),
            max_new_tokens=max_new_tokens,
            key=batch_keys,
            temperature=temperature,
            eos_token_id=side.eos,
            pad_token_id=side.pad,
        )
        # Rows laid out over a mesh that spans processes come back whole on every process.
        tokens, lengths = to_host((tokens, lengths))
        new_tokens = 0
        for j, i in enumerate(batch):
            out[i] = [int(t) for t in tokens[j, : int(lengths[j])]]
            new_tokens += len(out[i]) + len(rows[i])
        _notify(progress, stage, len(batch), total, new_tokens)
    return out


def _resolve_mode(mode: str, a: ModelSide, b: ModelSide) -> str:
    v.check_choice(mode, "mode", MODES)
    same = a.same_vocabulary(b)
    if mode == "auto":
        return "token" if same else "sequence"
    if mode == "token" and not same:
        raise ValueError(
            f"mode='token' needs both models to share one tokenizer and vocabulary, but {a.name} has "
            f"{a.vocab_size} entries and {b.name} has {b.vocab_size}"
            + (" (same size, different tokens)" if a.vocab_size == b.vocab_size else "")
            + "; use mode='sequence' (--mode sequence) for models with different tokenizers"
        )
    return mode


def prioritize_prompts(
    model_a: Any,
    model_b: Any,
    prompts: Sequence[Prompt | str],
    *,
    mode: str = "auto",
    metrics: Sequence[str] | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    completions: Sequence[str] | None = None,
    num_samples: int = 4,
    symmetric: bool = False,
    temperature: float = 0.0,
    key: jax.Array | None = None,
    max_length: int | None = None,
    implementation: str = "auto",
    block_size: int | None = None,
    progress: ProgressFn | None = None,
    mesh: jax.sharding.Mesh | None = None,
    finished: Sequence[dict[str, Any]] | None = None,
    on_rows: Callable[[list[dict[str, Any]]], None] | None = None,
    on_plan: Callable[[WorkPlan], None] | None = None,
) -> list[dict[str, Any]]:
    """Rank prompts by how much two language models disagree on them (highest first).

    Token mode (shared tokenizer): with A's completion `y_1..y_C` after prompt `x`, the score of each
    metric is `(1/C) Σ_t D(P_A(· | x, y_<t) ‖ P_B(· | x, y_<t))` over the whole vocabulary
    (KL, cross-entropy, ... as in `jaxrank.score_pairs`). Sequence mode (different tokenizers): with
    samples `y_s ~ A(· | x)`, `kl = mean_s [log p_A(y_s) − log p_B(y_s)] / bytes(y_s)` (nats per byte
    of UTF-8 text), `cross_entropy = mean_s −log p_B(y_s) / bytes(y_s)` and
    `entropy = mean_s −log p_A(y_s) / bytes(y_s)`; `stderr` is the standard error of `kl`. With
    `symmetric=True`, B also samples and `kl` becomes ½ (KL(A‖B) + KL(B‖A)) (both halves reported as
    `kl_ab`, `kl_ba`). The score is `kl` when computed, else the first metric.

    Args:
      model_a: a `jaxrank.lm.LoadedModel` (model + tokenizer + chat template): the model that answers.
      model_b: the model compared with A.
      prompts: strings or `jaxrank.lm.prompts.Prompt` objects.
      mode: "token", "sequence", or "auto" (token when both tokenizers have the same vocabulary).
      metrics: token mode: names from `TOKEN_METRICS` (default `("kl", "cross_entropy")`); sequence
        mode: from `SEQUENCE_METRICS` (default all three).
      max_new_tokens: completion length generated by A (and B when symmetric).
      batch_size: prompts per batch (batches are padded to this size; lengths to power-of-two buckets).
      completions: optional completion text per prompt instead of generating; in sequence mode each
        becomes the single "sample" (so `stderr` is NaN: the text is not drawn from A).
      num_samples: sequence mode: completions sampled from A per prompt (temperature 1).
      symmetric: sequence mode: also sample from B and average both directions.
      temperature: token mode: A's generation temperature (0 = greedy).
      key: PRNG key for sampling (default `jax.random.key(0)`).
      max_length: context limit in tokens (default: the smaller of the models' trained contexts).
        Longer prompts lose tokens from their start, with a `TruncationWarning`, and are flagged
        `truncated` in the output.
      implementation: token mode: "materialized" (`score_pairs` on logits), "fused" (hidden states
        and unembedding, block by block), or "auto" (fused above `FUSED_VOCAB_THRESHOLD` entries).
      block_size: vocabulary block of the fused kernels.
      progress: optional callback `progress(stage, advance, total, tokens)` after each batch: `advance`
        more of the stage's `total` rows are done, `tokens` real tokens processed.
      mesh: optional device mesh. A model mesh (`jaxrank.lm.sharding.make_model_mesh(fsdp=F,
        tensor=T)`, axes "data", "fsdp", "tensor") shards both models' weights over it (models already
        loaded onto it with `load_model(..., mesh=)` are used as they are; others are laid out on it),
        splits each padded batch over "data" × "fsdp" (its size rounded up to a multiple) and, with the
        vocabulary split over "tensor", feeds the divergence straight from the sharded head (see
        `token_scores`). A mesh from `jaxrank.sharding.make_mesh(data=N)` replicates the weights and
        splits the batch over "data". Generation runs on the same mesh. The scores equal the
        one-device scores. Without `mesh`, models loaded onto one mesh bring it along.
      finished: rows of prompts already scored by an earlier run with the same options (as `on_rows`
        received them, each with its `index`): those prompts are not computed again, and the result
        equals an uninterrupted run's.
      on_rows: called with the rows of each group of prompts as soon as they are scored (unranked, each
        with `index`, the prompt's position in `prompts`): append them to a journal to resume from.
      on_plan: called once, before any model runs, with the `WorkPlan` (stages, rows, tokens).

    Prompts are processed in groups of `batch_size` prompts of similar length (fixed by the whole list),
    each through every stage before the next group starts; sampling uses one PRNG stream per prompt
    (`row_keys`: `fold_in` of the prompt's index into `key`), so a prompt's result depends neither on
    the prompts batched with it nor on which prompts were skipped as `finished`.

    Returns:
      One dict per prompt, sorted by `score` (NaN last): `rank` (1 = most disagreement), `id`,
      `score`, `prompt`, `completion`, each metric by name, `truncated`, `prompt_tokens`,
      `completion_tokens`, `mode`; sequence mode adds `num_samples` and `stderr`.

    Example:
      >>> a, b = load_model("smollm2-135m-instruct"), load_model("gemma3-270m")
      >>> rows = prioritize_prompts(a, b, ["Why is the sky blue?", "2+2?"], mode="sequence")
      >>> rows[0]["rank"], rows[0]["kl"], rows[0]["stderr"]
    """
    side_a, side_b = ModelSide(model_a, "model_a"), ModelSide(model_b, "model_b")
    items_prompts = _as_prompts(prompts)
    mode = _resolve_mode(mode, side_a, side_b)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    v.check_choice(implementation, "implementation", ("auto", "materialized", "fused"))
    v.check_positive(temperature, "temperature", allow_zero=True)
    if completions is not None and symmetric:
        raise ValueError("symmetric=True samples from model B too; it cannot be combined with completions")
    if completions is not None:
        completions = list(completions)
        if len(completions) != len(items_prompts):
            raise ValueError(
                f"completions must hold one text per prompt ({len(items_prompts)}), got {len(completions)}"
            )
        for i, c in enumerate(completions):
            if not isinstance(c, str):
                raise TypeError(f"completions[{i}] must be a str, got {type(c).__name__}")
    if mode == "token":
        metrics = tuple(metrics or ("kl", "cross_entropy"))
        for m in metrics:
            v.check_choice(m, "metrics entry", TOKEN_METRICS)
    else:
        metrics = tuple(metrics or SEQUENCE_METRICS)
        for m in metrics:
            v.check_choice(m, "metrics entry (sequence mode)", SEQUENCE_METRICS)
    key = jax.random.key(0) if key is None else key
    if mesh is None:
        # Models loaded onto a mesh (`load_model(..., mesh=)`) bring it along.
        meshes = {s.mesh for s in (getattr(side_a.model, "sharding", None), getattr(side_b.model, "sharding", None)) if s}
        if len(meshes) > 1:
            raise ValueError("model_a and model_b are sharded over different meshes; pass mesh= or load both on one")
        mesh = meshes.pop() if meshes else None
    if mesh is not None:
        if not isinstance(mesh, jax.sharding.Mesh):
            raise TypeError(
                f"mesh must be a jax.sharding.Mesh (jaxrank.lm.sharding.make_model_mesh or "
                f"jaxrank.sharding.make_mesh), got {type(mesh).__name__}"
            )
        if not _is_model_mesh(mesh):
            from jaxrank.sharding import check_mesh

            check_mesh(mesh)
        n_rows = _batch_multiple(mesh)
        batch_size = -(-batch_size // n_rows) * n_rows  # padding rows are masked out / sliced off
        _place_side(side_a, mesh)
        if model_b is model_a:  # one copy of the parameters for a model compared with itself
            side_b.model, side_b.graphdef, side_b.state, side_b.mesh = side_a.model, side_a.graphdef, side_a.state, mesh
        else:
            _place_side(side_b, mesh)

    contexts = [c for c in (side_a.context, side_b.context, max_length) if c]
    context = min(contexts) if contexts else None
    if context is not None and context <= max_new_tokens:
        raise ValueError(
            f"max_new_tokens ({max_new_tokens}) leaves no room for the prompt in a context of {context} tokens"
        )
    items = []
    for i, p in enumerate(items_prompts):
        ids_a, ids_b = side_a.prompt_ids(p.text), side_b.prompt_ids(p.text)
        item = _Item(index=i, prompt=p, ids_a=ids_a, ids_b=ids_b)
        if context is not None:
            limit = context - max_new_tokens
            if len(ids_a) > limit or len(ids_b) > limit:
                item.truncated = True
                item.ids_a = truncate_left(ids_a, limit, side_a.bos)
                item.ids_b = truncate_left(ids_b, limit, side_b.bos)
        items.append(item)
    n_truncated = sum(it.truncated for it in items)
    if n_truncated:
        warnings.warn(
            f"{n_truncated} of {len(items)} prompts are longer than the context ({context} tokens, "
            f"{max_new_tokens} kept for the completion) and were truncated from the start",
            TruncationWarning,
            stacklevel=2,
        )

    fused = mode == "token" and _is_fused(implementation, side_a, metrics)
    _plan_up_front(side_a, side_b, items, mode, batch_size, max_new_tokens, context, symmetric, fused, block_size,
                   completions is None)
    done = _check_finished(finished, items)
    # Chunks are fixed by the whole prompt list (prompts of similar length together), never by what is already
    # done: a resumed run computes every remaining prompt in the same batch as an uninterrupted run would.
    chunks = length_batches([len(it.ids_a) for it in items], batch_size)
    todo = [c for c in chunks if any(i not in done for i in c)]
    samples = 1 if (mode == "token" or completions is not None) else num_samples
    if on_plan is not None:
        on_plan(_work_plan(side_a, side_b, items, todo, mode=mode, samples=samples, symmetric=symmetric,
                           generates=completions is None, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           context=context, fused=fused, finished=len(done)))
    totals = _stage_totals(mode, sum(len(c) for c in todo), samples, symmetric, completions is None)
    key_a, key_b = jax.random.split(key)
    rows = {i: dict(row) for i, row in done.items()}
    for chunk in todo:
        its = [items[i] for i in chunk]
        if mode == "token":
            new = _token_chunk(side_a, side_b, its, metrics, completions, max_new_tokens, batch_size, temperature,
                               key, context, fused, block_size, progress, totals)
        else:
            new = _sequence_chunk(side_a, side_b, its, metrics, completions, max_new_tokens, batch_size, samples,
                                  symmetric, key_a, key_b, context, block_size, progress, totals)
        fresh = [r for r in new if r["index"] not in done]
        for r in fresh:
            rows[r["index"]] = r
        if on_rows is not None and fresh:
            on_rows([dict(r) for r in fresh])
    return _rank([rows[i] for i in range(len(items))])


def _check_finished(finished: Sequence[dict] | None, items: list[_Item]) -> dict[int, dict]:
    """`finished` rows by prompt index, each checked to belong to this prompt list (same id and text)."""
    done: dict[int, dict] = {}
    for n, row in enumerate(finished or ()):
        if not isinstance(row, dict) or not isinstance(row.get("index"), int):
            raise ValueError(f"finished[{n}] must be a row dict with an int 'index' (as on_rows receives them)")
        i = row["index"]
        if not 0 <= i < len(items) or row.get("id") != items[i].prompt.id or row.get("prompt") != items[i].prompt.text:
            raise ValueError(f"finished[{n}] (index {i}, id {row.get('id')!r}) is not prompt {i} of these prompts; "
                             "resume with the prompt list (and --limit) of the run that wrote it")
        done[i] = row
    return done


def _rank(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def sort_key(row):
        s = row["score"]
        return (1, 0.0, row["index"]) if s is None or math.isnan(s) else (0, -s, row["index"])

    rows = sorted(rows, key=sort_key)
    out = []
    for rank, row in enumerate(rows, start=1):
        row = {k: val for k, val in row.items() if k != "index"}
        out.append({"rank": rank, **row})
    return out


# --------------------------------------------------------------------------------------------
# The work plan (before any model runs) and per-row PRNG keys
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of the pipeline's work, named as `progress(stage, ...)` names it.

    Attributes:
      name: the stage ("generate", "score", "sample A", "score A samples (model_b)", ...).
      model: "model_a", "model_b" or "both".
      kind: "generate" or "score".
      rows: rows it processes (prompts x samples): the `total` its `progress` calls report.
      batches: padded batches of `batch_size` rows.
      tokens: real tokens read (prompts, plus at most `max_new_tokens` per completion when scoring).
      new_tokens: tokens generated, at most (generate stages; 0 otherwise).
      padded_positions: positions computed by full forward passes (padded batches and length buckets).
      decode_steps: padded rows x steps decoded one token at a time with the KV cache (generate stages).
      head_positions: positions passed through the vocabulary head (besides the decode steps).
      shapes: distinct padded shapes, i.e. programs compiled on a first run (`jit` caches them).
    """

    name: str
    model: str
    kind: str
    rows: int
    batches: int
    tokens: int
    new_tokens: int
    padded_positions: int
    decode_steps: int
    head_positions: int
    shapes: int


@dataclasses.dataclass(frozen=True)
class WorkPlan:
    """What `prioritize_prompts` will compute, known before any model runs (`on_plan`).

    Completion lengths are not known before generation: scoring counts are upper bounds with every
    completion `max_new_tokens` long (generation always runs `max_new_tokens` steps per batch).
    """

    mode: str
    prompts: int  # prompts computed now
    finished: int  # prompts already done (`finished=`), skipped
    samples: int  # completions per prompt
    max_new_tokens: int
    batch_size: int
    chunks: int  # groups of prompts finished together (one `on_rows` call each)
    stages: tuple[Stage, ...]
    configs: tuple[Any, Any] = (None, None)  # model A's and B's configs (shapes for cost estimates)

    @property
    def new_tokens(self) -> int:
        return sum(s.new_tokens for s in self.stages)

    @property
    def scored_tokens(self) -> int:
        return sum(s.tokens for s in self.stages if s.kind == "score")


def _stage_names(mode: str, symmetric: bool, generates: bool) -> list[tuple[str, str, str]]:
    """(name, model, kind) of every stage, in the order each chunk runs them."""
    if mode == "token":
        return ([("generate", "model_a", "generate")] if generates else []) + [("score", "both", "score")]
    out = [("sample A", "model_a", "generate")] if generates else []
    out += [("score A samples (model_a)", "model_a", "score"), ("score A samples (model_b)", "model_b", "score")]
    if symmetric:
        out += [("sample B", "model_b", "generate"), ("score B samples (model_b)", "model_b", "score"),
                ("score B samples (model_a)", "model_a", "score")]
    return out


def _stage_totals(mode: str, prompts: int, samples: int, symmetric: bool, generates: bool) -> dict[str, int]:
    return {name: prompts * samples for name, _, _ in _stage_names(mode, symmetric, generates)}


def _work_plan(a: ModelSide, b: ModelSide, items: list[_Item], chunks: list[list[int]], *, mode: str, samples: int,
               symmetric: bool, generates: bool, max_new_tokens: int, batch_size: int, context: int | None,
               fused: bool, finished: int) -> WorkPlan:
    room = None if context is None else context - max_new_tokens
    stages = []
    for name, model, kind in _stage_names(mode, symmetric, generates):
        prompt_of = (lambda it: it.ids_b) if name in ("sample B",) or (model == "model_b" and mode == "sequence") \
            else (lambda it: it.ids_a)
        rows = batches = tokens = new = padded = decode = head = 0
        shapes = set()
        for chunk in chunks:
            lengths = sorted(len(prompt_of(items[i])) for i in chunk for _ in range(samples))
            for start in range(0, len(lengths), batch_size):
                part = lengths[start:start + batch_size]
                rows += len(part)
                batches += 1
                if kind == "generate":
                    t = bucket_length(max(part), maximum=room)
                    tokens += sum(part)
                    new += len(part) * max_new_tokens
                    padded += batch_size * t
                    decode += batch_size * (max_new_tokens - 1)
                    head += batch_size
                    shapes.add(t)
                else:
                    t = bucket_length(max(part) + max_new_tokens, maximum=context)
                    c = bucket_length(max_new_tokens, minimum=8)
                    tokens += sum(part) + len(part) * max_new_tokens
                    padded += batch_size * t
                    head += batch_size * c
                    shapes.add((t, c))
        stages.append(Stage(name=name, model=model, kind=kind, rows=rows, batches=batches, tokens=tokens,
                            new_tokens=new, padded_positions=padded, decode_steps=decode, head_positions=head,
                            shapes=len(shapes)))
    return WorkPlan(mode=mode, prompts=sum(len(c) for c in chunks), finished=finished, samples=samples,
                    max_new_tokens=max_new_tokens, batch_size=batch_size, chunks=len(chunks), stages=tuple(stages),
                    configs=(a.config, b.config))


def row_keys(key: jax.Array, indices: Sequence[int], samples: int = 1) -> jax.Array:
    """PRNG keys `[len(indices) * samples]`, sample s of prompt i drawing from `fold_in(fold_in(key, i), s)`:
    a prompt's samples depend on its index in the prompt list only, not on the prompts batched with it
    (so a resumed run reproduces an uninterrupted one)."""
    if not jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)  # a raw uint32 key (jax.random.PRNGKey)
    fold = jax.vmap(jax.random.fold_in, in_axes=(None, 0))
    per_prompt = fold(key, jnp.asarray(list(indices), jnp.uint32))
    steps = jnp.arange(samples, dtype=jnp.uint32)
    return jax.vmap(lambda k: fold(k, steps))(per_prompt).reshape(-1)


# --------------------------------------------------------------------------------------------
# One chunk of prompts through every stage
# --------------------------------------------------------------------------------------------


def _token_chunk(a, b, items, metrics, completions, max_new_tokens, batch_size, temperature, key, context, fused,
                 block_size, progress, totals):
    if completions is None:
        keys = row_keys(key, [it.index for it in items]) if temperature > 0 else None
        generated = _generate(
            a, [it.ids_a for it in items], keys=keys, max_new_tokens=max_new_tokens, batch_size=batch_size,
            temperature=temperature, context=context, progress=progress, stage="generate", total=totals["generate"],
        )
        for it, ids in zip(items, generated):
            it.completions = [ids]
    else:
        for it in items:
            it.completions = [a.text_ids(completions[it.index])]
    for it in items:
        comp = it.completions[0]
        if context is not None:
            room = context - max(len(it.ids_a), len(it.ids_b))
            if len(comp) > room:
                it.truncated = True
                it.completions = [comp[:room]]
        it.texts = [a.decode(it.completions[0])]

    scorer = _token_scorer(a.graphdef, b.graphdef, metrics, fused, block_size)
    results: dict[int, dict[str, float]] = {}
    total_len = [len(it.ids_a) + len(it.completions[0]) for it in items]
    for batch in length_batches(total_len, batch_size):
        its = [items[i] for i in batch]
        c_len = bucket_length(max(max(len(it.completions[0]) for it in its), 1), minimum=8)
        seq_a = [it.ids_a + it.completions[0] for it in its]
        seq_b = [it.ids_b + it.completions[0] for it in its]
        t_a = bucket_length(max(map(len, seq_a)), maximum=context)
        t_b = bucket_length(max(map(len, seq_b)), maximum=context)
        # Both models run in one call: plan it as two of the larger one at the longer length.
        big = max((a, b), key=lambda side: _forward_estimate(side, 1, max(t_a, t_b)))
        _plan(big, batch_size, max(t_a, t_b), logit_positions=c_len if fused else max(t_a, t_b),
              vocab_block=(block_size or 4096) if fused else None, models=2, what="scoring with both models")
        ids_a, mask_a = pad_batch(seq_a, t_a, batch_size, a.pad)
        ids_b, mask_b = pad_batch(seq_b, t_b, batch_size, b.pad)
        at_a = np.zeros((batch_size, c_len), np.int32)
        at_b = np.zeros((batch_size, c_len), np.int32)
        count = np.zeros((batch_size, c_len), bool)
        for j, it in enumerate(its):
            n = len(it.completions[0])
            # Position len(prompt) - 1 + t predicts completion token t.
            at_a[j, :n] = len(it.ids_a) - 1 + np.arange(n)
            at_b[j, :n] = len(it.ids_b) - 1 + np.arange(n)
            count[j, :n] = True
        # Padding rows copy the first row's positions so that no row has an empty mask.
        at_a[len(its) :], at_b[len(its) :], count[len(its) :] = at_a[0], at_b[0], count[0]
        out = scorer(a.state, b.state, *shard_rows(a.mesh, ids_a, mask_a, at_a, ids_b, mask_b, at_b, count))
        out = to_host(out)
        for j, it in enumerate(its):
            results[it.index] = {k: float(out[k][j]) for k in metrics}
        _notify(progress, "score", len(its), totals["score"],
                int(mask_a[: len(its)].sum() + mask_b[: len(its)].sum()))

    rows = []
    for it in items:
        r = results[it.index]
        rows.append({
            "index": it.index,
            "id": it.prompt.id,
            "score": r["kl"] if "kl" in r else r[metrics[0]],
            "prompt": it.prompt.text,
            "completion": it.texts[0],
            **r,
            "truncated": it.truncated,
            "prompt_tokens": len(it.ids_a),
            "completion_tokens": len(it.completions[0]),
            "mode": "token",
        })
    return rows


def sequence_logprobs(side: ModelSide, pairs: list[tuple[list[int], list[int]]], batch_size: int,
                       context: int | None, block_size: int | None, progress, stage: str, total: int):
    """Sum of log p(completion | prompt) under `side` for each (prompt ids, completion ids) pair."""
    scorer = _logprob_scorer(side.graphdef, block_size)
    out = np.zeros(len(pairs), np.float64)
    for batch in length_batches([len(p) + len(c) for p, c in pairs], batch_size):
        seqs = [pairs[i][0] + pairs[i][1] for i in batch]
        t = bucket_length(max(map(len, seqs)), maximum=context)
        _plan(side, batch_size, t, logit_positions=t, vocab_block=block_size or 4096, what=f"{stage}")
        ids, mask = pad_batch(seqs, t, batch_size, side.pad)
        width = bucket_length(max(1, max(len(pairs[i][1]) for i in batch)), minimum=8, maximum=t)
        at = np.zeros((batch_size, width), np.int32)
        targets = np.zeros((batch_size, width), np.int32)
        count = np.zeros((batch_size, width), bool)
        for j, i in enumerate(batch):
            p, c = pairs[i]
            # Position len(p) - 1 + k predicts completion token k.
            at[j, : len(c)] = len(p) - 1 + np.arange(len(c))
            targets[j, : len(c)] = c
            count[j, : len(c)] = True
        lp = to_host(scorer(side.state, *shard_rows(side.mesh, ids, mask, at, targets, count)))
        out[batch] = lp[: len(batch)]
        _notify(progress, stage, len(batch), total, int(mask[: len(batch)].sum()))
    return out


def _fit(prompt_ids: list[int], comp_ids: list[int], context: int | None, bos: int | None) -> tuple[list, list, bool]:
    """Shorten (prompt, completion) to the context: prompt from its start, then completion's end."""
    if context is None or len(prompt_ids) + len(comp_ids) <= context:
        return prompt_ids, comp_ids, False
    comp_ids = comp_ids[: context - 1]
    prompt_ids = truncate_left(prompt_ids, max(1, context - len(comp_ids)), bos)
    comp_ids = comp_ids[: context - len(prompt_ids)]
    return prompt_ids, comp_ids, True


def _direction(p: ModelSide, q: ModelSide, items: list[_Item], texts: list[list[str]], batch_size, context,
               block_size, progress, label, totals):
    """log p_P(y) and log p_Q(y) for every sample text y, each model with its own template and tokenizer;
    `owners[k]` is the position in `items` of the prompt of pair k."""
    pairs_p, pairs_q, owners, nbytes = [], [], [], []
    for pos, (it, samples) in enumerate(zip(items, texts)):
        prompt_p = it.ids_a if p.label == "model_a" else it.ids_b
        prompt_q = it.ids_b if p.label == "model_a" else it.ids_a
        for text in samples:
            pp, cp, tp = _fit(prompt_p, p.text_ids(text), context, p.bos)
            pq, cq, tq = _fit(prompt_q, q.text_ids(text), context, q.bos)
            if tp or tq:
                it.truncated = True
                # The two models must score the same text: keep what both kept.
                text = p.decode(cp) if len(p.decode(cp)) <= len(q.decode(cq)) else q.decode(cq)
                pp, cp, _ = _fit(prompt_p, p.text_ids(text), context, p.bos)
                pq, cq, _ = _fit(prompt_q, q.text_ids(text), context, q.bos)
            pairs_p.append((pp, cp))
            pairs_q.append((pq, cq))
            owners.append(pos)
            nbytes.append(len(text.encode("utf-8")) if cp and cq else 0)
    stage_p, stage_q = f"score {label} ({p.label})", f"score {label} ({q.label})"
    lp_p = sequence_logprobs(p, pairs_p, batch_size, context, block_size, progress, stage_p, totals[stage_p])
    lp_q = sequence_logprobs(q, pairs_q, batch_size, context, block_size, progress, stage_q, totals[stage_q])
    return lp_p, lp_q, np.asarray(nbytes), owners


def _per_prompt(values: np.ndarray, owners: list[int], n_items: int, width: int) -> np.ndarray:
    out = np.zeros((n_items, width), np.float64)
    fill = [0] * n_items
    for val, i in zip(values, owners):
        out[i, fill[i]] = val
        fill[i] += 1
    return out


def _sample_texts(side: ModelSide, items: list[_Item], key: jax.Array, samples: int, max_new_tokens, batch_size,
                  context, progress, stage, total) -> list[list[str]]:
    prompt_of = (lambda it: it.ids_a) if side.label == "model_a" else (lambda it: it.ids_b)
    rows = [prompt_of(it) for it in items for _ in range(samples)]
    gen = _generate(side, rows, keys=row_keys(key, [it.index for it in items], samples),
                    max_new_tokens=max_new_tokens, batch_size=batch_size, temperature=1.0, context=context,
                    progress=progress, stage=stage, total=total)
    return [[side.decode(gen[i * samples + s]) for s in range(samples)] for i in range(len(items))]


def _sequence_chunk(a, b, items, metrics, completions, max_new_tokens, batch_size, samples, symmetric, key_a, key_b,
                    context, block_size, progress, totals):
    if completions is not None:
        texts_a = [[completions[it.index]] for it in items]
    else:
        texts_a = _sample_texts(a, items, key_a, samples, max_new_tokens, batch_size, context, progress,
                                "sample A", totals["sample A"])
    lp_a, lp_b, nbytes, owners = _direction(a, b, items, texts_a, batch_size, context, block_size, progress,
                                            "A samples", totals)
    n = len(items)
    la = _per_prompt(lp_a, owners, n, samples)
    lb = _per_prompt(lp_b, owners, n, samples)
    nb = _per_prompt(nbytes, owners, n, samples)
    kl_ab, se_ab = sequence_kl_estimate(la, lb, nb)
    # Cross-entropy and entropy per byte: the same estimator with a zero second argument.
    ce, _ = sequence_kl_estimate(np.zeros_like(lb), lb, nb)
    ent, _ = sequence_kl_estimate(np.zeros_like(la), la, nb)
    kl, se = np.asarray(kl_ab, np.float64), np.asarray(se_ab, np.float64)
    extra: dict[str, np.ndarray] = {}
    if symmetric:
        texts_b = _sample_texts(b, items, key_b, samples, max_new_tokens, batch_size, context, progress,
                                "sample B", totals["sample B"])
        lq_b, lq_a, nbytes_b, owners_b = _direction(b, a, items, texts_b, batch_size, context, block_size,
                                                    progress, "B samples", totals)
        kl_ba, se_ba = sequence_kl_estimate(
            _per_prompt(lq_b, owners_b, n, samples), _per_prompt(lq_a, owners_b, n, samples),
            _per_prompt(nbytes_b, owners_b, n, samples),
        )
        kl_ba, se_ba = np.asarray(kl_ba, np.float64), np.asarray(se_ba, np.float64)
        extra = {"kl_ab": kl, "kl_ba": kl_ba}
        kl = 0.5 * (kl + kl_ba)
        se = 0.5 * np.sqrt(se**2 + se_ba**2)
    values = {"kl": kl, "cross_entropy": np.asarray(ce, np.float64), "entropy": np.asarray(ent, np.float64)}
    valid = (nb > 0).sum(axis=1)
    rows = []
    for pos, it in enumerate(items):
        r = {m: float(values[m][pos]) for m in metrics}
        rows.append({
            "index": it.index,
            "id": it.prompt.id,
            "score": float(values["kl"][pos]) if "kl" in metrics else r[metrics[0]],
            "prompt": it.prompt.text,
            "completion": texts_a[pos][0],
            **r,
            **{k: float(val[pos]) for k, val in extra.items()},
            "stderr": float(se[pos]),
            "num_samples": int(valid[pos]),
            "truncated": it.truncated,
            "prompt_tokens": len(it.ids_a),
            "completion_tokens": len(a.text_ids(texts_a[pos][0])),
            "mode": "sequence",
        })
    return rows
