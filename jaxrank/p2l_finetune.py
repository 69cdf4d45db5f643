r"""Prompt-to-Leaderboard with the language model itself fine-tuned (last k blocks, or LoRA on every block).

`jaxrank.p2l.train_p2l` trains a head on frozen prompt features. P2L as the paper trains it (Frick et al.
2025, lmarena/p2l) fine-tunes the backbone end to end; this module does that for the causal LMs of
`jaxrank.lm` (SmolLM2-135M-Instruct and the other Llama/Qwen2/Gemma 3 decoders), in JAX:

- the prompt's feature is the final-norm hidden state at its last token (exactly `prompt_features`'s);
- the head is the residual `P2LHead`: `beta(prompt) = beta_global + Delta(feature)`, `beta_global` the
  prompt-blind Bradley–Terry fit of the training votes (fixed), `Delta` zero at the start and pulled back to 0
  by `delta_l2 * ||Delta||^2`, so training starts from the global leaderboard;
- `mode="last-k"`: the last `k` blocks are trained; the frozen blocks `0..L-k-1` run ONCE over every prompt
  and their output (the residual stream entering block `L-k`, `[P, T, hidden]`) is cached, so a step costs
  `k` blocks forward and backward;
- `mode="lora"`: every block's projections (`lora_targets`) get a low-rank adapter,
  `W' = W + (lora_alpha / r) A B` with `A [in, r]` random and `B [r, out]` zero (so the model at step 0 is the
  frozen model), only `A`, `B` (and the head) trained; all blocks run each step (nothing to cache but the
  embedding lookup).

Mixed precision: the frozen weights and the forward pass are in `dtype` (bfloat16 by default); the trainable
weights are float32 master copies, cast to `dtype` in the forward, updated by optax (AdamW, warmup + cosine,
global-norm clipping) in float32. Gradient accumulation: `accumulate` micro-batches per optimiser step, the
gradient of the summed NLL accumulated and divided by the summed vote weight once, so the step equals one
step on the whole batch. Data-axis sharding: with `mesh`, each micro-batch's prompts are split over the mesh
(parameters replicated; GSPMD all-reduces the gradients); the numbers are the unsharded ones. Checkpoints:
orbax `CheckpointManager` after every `checkpoint_every` epochs (trainable weights, optimiser state, best
weights, history); `resume=True` continues exactly (the shuffle of epoch e is `fold_in(key, e)`).

Batches are of PROMPTS: a step takes `batch_prompts` prompts with all their votes (padded per prompt to the
largest vote count, padding weight 0), since the backbone runs once per prompt, not per vote.

Example:
    >>> from jaxrank.lm import load_model                                              # doctest: +SKIP
    >>> lm = load_model("smollm2-135m-instruct")                                        # doctest: +SKIP
    >>> ids, mask = tokenize_prompts(lm, votes.prompt_text, max_length=64)              # doctest: +SKIP
    >>> fit = train_p2l_finetune(jax.random.key(0), lm.model, ids, mask, votes, mode="last-k", k=2)        # doctest: +SKIP
    >>> beta, _ = fit.coefficients(lm.model, ids, mask)                                  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxrank.p2l import LOSS_TIES, LOSSES, P2LHead, TrainingDivergedError, p2l_loss
from jaxrank.ratings.bradley_terry import solve_bradley_terry
from jaxrank.votes.table import TIE, Votes

__all__ = [
    "FINETUNE_MODES",
    "LORA_TARGETS",
    "tokenize_prompts",
    "frozen_prefix",
    "PromptVotes",
    "prompt_votes",
    "FinetunedP2L",
    "train_p2l_finetune",
    "save_p2l_finetune",
    "load_p2l_finetune",
]

FINETUNE_MODES = ("last-k", "lora")
#: The projections of a block that get LoRA adapters by default (attention and MLP).
LORA_TARGETS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
_FITS_TIE = ("rao-kupper", "grounded-rao-kupper")
_GROUNDED = "grounded-rao-kupper"
_TIE_FLOOR = 1e-4


# --------------------------------------------------------------------------------------------------
# Inputs


def tokenize_prompts(loaded: Any, prompts: Sequence[str], *, max_length: int = 256,
                     chat_template: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """`(ids int32[P, T], mask bool[P, T])`: the prompts as `prompt_features` feeds them to `loaded` (a
    `jaxrank.lm.LoadedModel`), right-padded to the longest (T <= max_length)."""
    from jaxrank.lm.features import prompt_token_ids

    rows, pad = prompt_token_ids(loaded, prompts, max_length=max_length, chat_template=chat_template)
    t = max(len(r) for r in rows)
    ids = np.full((len(rows), t), pad, np.int32)
    mask = np.zeros((len(rows), t), bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = True
    return ids, mask


class PromptVotes(NamedTuple):
    """The votes of each prompt as padded rows (a soft vote is two rows, a win each way, weighted p, 1 - p).

    Attributes:
        a, b, outcome: int32[P, V] the rows of prompt p (V: the most rows of any prompt).
        weight: float32[P, V] their weights (0: padding, or a tie under `loss="bt"`).
    """

    a: np.ndarray
    b: np.ndarray
    outcome: np.ndarray
    weight: np.ndarray


def prompt_votes(votes: Votes, num_prompts: int, *, loss: str = "bt-tie") -> PromptVotes:
    """`PromptVotes` of `votes` (rows of `Votes.rows(merge=False)`) grouped by `votes.prompt` in [0, P)."""
    rows = votes.rows(merge=False)
    prompt = np.asarray(votes.prompt)[np.asarray(rows.row_vote)].astype(np.int64)
    a, b, o = (np.asarray(x, np.int32) for x in (rows.a, rows.b, rows.outcome))
    w = np.asarray(rows.count, np.float32)
    if loss == "bt":
        w = np.where(o >= TIE, 0.0, w).astype(np.float32)
    counts = np.bincount(prompt, minlength=num_prompts)
    v = max(int(counts.max()) if counts.size else 0, 1)
    order = np.argsort(prompt, kind="stable")
    slot = np.arange(prompt.size) - np.repeat(np.cumsum(counts) - counts, counts)
    out = [np.zeros((num_prompts, v), dt) for dt in (np.int32, np.int32, np.int32, np.float32)]
    p_sorted = prompt[order]
    for arr, src in zip(out, (a, b, o, w)):
        arr[p_sorted, slot] = src[order]
    return PromptVotes(*out)


# --------------------------------------------------------------------------------------------------
# The model: static description, forward, loss


@dataclasses.dataclass(frozen=True)
class _Static:
    """Hashable static options of the jitted functions (graph definitions, mode, shapes)."""

    model_graph: Any
    head_graph: Any
    mode: str
    start: int  # the first trained block (last-k), 0 for LoRA
    lora_scale: float
    targets: tuple[str, ...]
    loss: str
    dtype: Any
    layer_names: tuple[str, ...]


def _cast(tree: Any, dtype: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: x.astype(dtype), tree)


def _block_weights(st: _Static, model: Any, backbone: dict[str, Any]) -> dict[str, jax.Array]:
    """Stacked weights of the blocks that run: the trained copies (last-k) or `W + s A B` (LoRA)."""
    if st.mode == "last-k":
        return _cast(backbone, st.dtype)
    weights = {}
    for name in st.layer_names:
        w = getattr(model, name)[...]
        if name in backbone:
            ad = _cast(backbone[name], st.dtype)
            w = w.astype(st.dtype) + (st.lora_scale * jnp.einsum("lir,lro->lio", ad["a"], ad["b"])).astype(st.dtype)
        weights[name] = w
    return weights


def _features(st: _Static, model_state, backbone, ids, mask, residual):
    """float32[B, hidden]: the final-norm hidden state at the last real token of each (right-padded) row."""
    model = nnx.merge(st.model_graph, model_state)
    weights = _block_weights(st, model, backbone)
    if st.mode == "last-k":
        h, _ = model.hidden_states(ids, attention_mask=mask, start_layer=st.start, residual=residual,
                                   block_weights=weights)
    else:
        h, _ = model.hidden_states(ids, attention_mask=mask, block_weights=weights)
    last = jnp.maximum(jnp.sum(mask, axis=-1, dtype=jnp.int32) - 1, 0)
    return jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]


def _head_apply(st: _Static, head_params, head_stats, feats):
    return nnx.merge(st.head_graph, head_params, head_stats)(feats)


def _vote_sum(st: _Static, params, model_state, head_stats, ids, mask, residual, a, b, o, w):
    """`(sum of w * NLL, sum of w)` over the votes `[B, V]` of a batch of prompts."""
    feats = _features(st, model_state, params["backbone"], ids, mask, residual)
    beta, alpha = _head_apply(st, params["head"], head_stats, feats)
    n, v = a.shape
    beta_rows = jnp.repeat(beta, v, axis=0)
    alpha_rows = None if alpha is None else jnp.repeat(alpha, v, axis=0)
    w = w.reshape(-1)
    total = jnp.sum(w)
    mean = p2l_loss(beta_rows, alpha_rows, a.reshape(-1), b.reshape(-1), o.reshape(-1), loss=st.loss, weight=w)
    return mean * total, total


def _penalty(params, anchor_head, l2):
    return l2 * sum(jnp.sum(jnp.square(p - q)) for p, q in zip(jax.tree_util.tree_leaves(params["head"]),
                                                                 jax.tree_util.tree_leaves(anchor_head)))


def _gather(prompts, inputs):
    """The rows of the micro-batch `prompts [b]` from the per-prompt arrays (ids, mask, residual, votes)."""
    ids, mask, residual, a, b, o, w = inputs
    take = lambda x: None if x is None else x[prompts]  # noqa: E731
    return take(ids), take(mask), take(residual), take(a), take(b), take(o), take(w)


def _accumulated_grads(st: _Static, params, model_state, head_stats, inputs, batch, valid, anchor_head, l2):
    """Loss and gradient of one optimiser step over `accumulate` micro-batches (`batch`, `valid` [n, b]):
    the summed NLL's gradient summed over micro-batches, divided by the summed weight, plus the L2's."""

    def micro(carry, xs):
        g_acc, s_acc, w_acc = carry
        prompts, ok = xs
        ids, mask, residual, a, b, o, w = _gather(prompts, inputs)
        w = w * ok[:, None].astype(w.dtype)
        (s, total), g = jax.value_and_grad(
            lambda p: _vote_sum(st, p, model_state, head_stats, ids, mask, residual, a, b, o, w), has_aux=True)(params)
        g_acc = jax.tree_util.tree_map(jnp.add, g_acc, g)
        return (g_acc, s_acc + s, w_acc + total), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    (g, s, wsum), _ = jax.lax.scan(micro, (zeros, jnp.float32(0), jnp.float32(0)), (batch, valid))
    denom = jnp.maximum(wsum, jnp.finfo(jnp.float32).tiny)
    pen, g_pen = jax.value_and_grad(_penalty)(params, anchor_head, l2)
    grads = jax.tree_util.tree_map(lambda x, y: x / denom + y, g, g_pen)
    return s / denom, grads, wsum


@functools.partial(jax.jit, static_argnames=("st", "tx"))
def _train_step(st, tx, params, opt_state, model_state, head_stats, inputs, batch, valid, anchor_head, l2):
    nll, grads, wsum = _accumulated_grads(st, params, model_state, head_stats, inputs, batch, valid, anchor_head, l2)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, nll, wsum


@functools.partial(jax.jit, static_argnames=("st",))
def _loss_and_grads(st, params, model_state, head_stats, inputs, batch, valid, anchor_head, l2):
    return _accumulated_grads(st, params, model_state, head_stats, inputs, batch, valid, anchor_head, l2)[:2]


@functools.partial(jax.jit, static_argnames=("st",))
def _eval_step(st, params, model_state, head_stats, inputs, prompts, ok):
    ids, mask, residual, a, b, o, w = _gather(prompts, inputs)
    w = w * ok[:, None].astype(w.dtype)
    return _vote_sum(st, params, model_state, head_stats, ids, mask, residual, a, b, o, w)


@functools.partial(jax.jit, static_argnames=("st",))
def _features_jit(st, backbone, model_state, ids, mask, residual):
    return _features(st, model_state, backbone, ids, mask, residual)


@functools.partial(jax.jit, static_argnames=("graph", "stop"))
def _prefix_jit(graph, model_state, ids, mask, *, stop):
    model = nnx.merge(graph, model_state)
    return model.hidden_states(ids, attention_mask=mask, stop_layer=stop, final_norm=False)[0]


# --------------------------------------------------------------------------------------------------
# The fitted model


@dataclasses.dataclass(frozen=True)
class FinetunedP2L:
    """A P2L model whose backbone was fine-tuned (`train_p2l_finetune`).

    Attributes:
        models: the M model names.
        loss: the P2L loss.
        encoder: the backbone's name (recorded for the CLI), or None.
        config: JSON-serialisable options (mode, k / LoRA rank, shapes, training options).
        backbone: float32 trained weights: `{name: [k, ...]}` (last-k) or `{name: {"a", "b"}}` (LoRA).
        head: the residual head's parameters (`nnx.State`).
        head_stats: the head's non-trained state (feature statistics, `beta_global`).
        history: per-epoch `train_loss`, `val_nll`, `best_epoch`, `baseline_val_nll`, `start_val_nll`.
    """

    models: tuple[str, ...]
    loss: str
    encoder: str | None
    config: dict[str, Any]
    backbone: Any
    head: Any
    head_stats: Any
    history: dict[str, Any]

    def _static(self, model: Any) -> _Static:
        return _static_for(model, self.config)

    def features(self, model: Any, ids: Any, mask: Any, *, batch_size: int = 16, prefix: Any = None) -> np.ndarray:
        """float32[P, hidden] prompt features of the fine-tuned backbone (`model`: the frozen base model it was
        trained from, a `CausalLM`; `prefix`: optional `frozen_prefix` of these ids, last-k only)."""
        model = _frozen(model, self.config["dtype"])
        st = self._static(model)
        _, state = nnx.split(model)
        ids, mask = _check_tokens(ids, mask)
        out = []
        for s in range(0, ids.shape[0], batch_size):
            i, m = _pad_rows(ids[s:s + batch_size], mask[s:s + batch_size], batch_size)
            residual = None
            if st.mode == "last-k" and prefix is not None:
                r = np.asarray(prefix[s:s + batch_size], np.float32)
                residual = jnp.asarray(np.concatenate([r, np.zeros((batch_size - r.shape[0], *r.shape[1:]), r.dtype)]),
                                       st.dtype)
            elif st.mode == "last-k":
                residual = _prefix_jit(st.model_graph, state, i, m, stop=st.start)
            out.append(np.asarray(_features_jit(st, self.backbone, state, i, m, residual))[: min(batch_size, ids.shape[0] - s)])
        return np.concatenate(out)

    def coefficients(self, model: Any, ids: Any, mask: Any, *, batch_size: int = 16, prefix: Any = None):
        """`(beta float32[P, M], alpha float32[P] or None)` for tokenized prompts (`tokenize_prompts`)."""
        st = self._static(_frozen(model, self.config["dtype"]))
        feats = jnp.asarray(self.features(model, ids, mask, batch_size=batch_size, prefix=prefix))
        return _head_apply(st, self.head, self.head_stats, feats)

    def tokenize(self, loaded: Any, prompts: Sequence[str], *, max_length: int | None = None) -> tuple:
        """`tokenize_prompts(loaded, prompts)` as at training: the recorded `max_length` (unless given) and
        chat template."""
        if max_length is None:
            max_length = int(self.config.get("max_length", 256))
        return tokenize_prompts(loaded, prompts, max_length=max_length,
                                chat_template=bool(self.config.get("chat_template", True)))

    def predict(self, loaded: Any, prompts: Sequence[str], *, batch_size: int = 16,
                max_length: int | None = None) -> tuple:
        """Coefficients for prompt texts: `tokenize` (as at training), then `coefficients` (`loaded`: the
        `jaxrank.lm.LoadedModel` of the base model it was trained from)."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of strings, not one string")
        ids, mask = self.tokenize(loaded, list(prompts), max_length=max_length)
        return self.coefficients(loaded.model, ids, mask, batch_size=batch_size)


def _frozen(model: Any, dtype: Any) -> Any:
    """`model` with its weights and compute in `dtype` (itself when it already is)."""
    dtype = jnp.dtype(dtype)
    if model.dtype == dtype and model.param_dtype == dtype:
        return model
    return type(model)(model.config, weights=model.weights(), dtype=dtype, param_dtype=dtype)


def _static_for(model: Any, config: dict[str, Any], head_graph: Any = None) -> _Static:
    graph, _ = nnx.split(model)
    if head_graph is None:
        head_graph = nnx.split(_build_head(config), nnx.Param, ...)[0]
    layer_names = tuple(n for n in _layer_names(model))
    mode = config["mode"]
    start = model.config.num_layers - int(config["k"]) if mode == "last-k" else 0
    scale = float(config.get("lora_alpha") or 0.0) / int(config.get("lora_rank") or 1)
    return _Static(graph, head_graph, mode, start, scale, tuple(config.get("lora_targets") or ()), config["loss"],
                   jnp.dtype(config["dtype"]), layer_names)


def _layer_names(model: Any) -> tuple[str, ...]:
    from jaxrank.lm.transformer import layer_param_shapes

    return tuple(layer_param_shapes(model.config))


def _build_head(config: dict[str, Any]) -> P2LHead:
    m = int(config["num_models"])
    return P2LHead(int(config["hidden_size"]), m, hidden=tuple(config.get("head_hidden", ())),
                   tie=config["loss"] in _FITS_TIE, centre=config["loss"] != _GROUNDED,
                   base=jnp.zeros((m,), jnp.float32), rngs=nnx.Rngs(int(config["seed"])))


def _check_tokens(ids: Any, mask: Any) -> tuple[np.ndarray, np.ndarray]:
    ids, mask = np.asarray(ids), np.asarray(mask)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be an integer array [P, T], got shape {ids.shape} dtype {ids.dtype}")
    if mask.shape != ids.shape:
        raise ValueError(f"mask must have the shape of ids {ids.shape}, got {mask.shape}")
    mask = mask.astype(bool)
    if not mask[:, 0].all():
        raise ValueError("every prompt needs at least one token, right-padded (mask[:, 0] must be True)")
    if (np.diff(mask.astype(np.int8), axis=1) > 0).any():
        raise ValueError("mask must be right padding (True then False in each row), as tokenize_prompts makes it")
    return ids.astype(np.int32), mask


def _pad_rows(ids: np.ndarray, mask: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    n = ids.shape[0]
    if n == rows:
        return ids, mask
    pad_i = np.zeros((rows - n, ids.shape[1]), ids.dtype)
    pad_m = np.zeros((rows - n, ids.shape[1]), bool)
    pad_m[:, 0] = True
    return np.concatenate([ids, pad_i]), np.concatenate([mask, pad_m])


# --------------------------------------------------------------------------------------------------
# Training


def _check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return int(value)


def _check_pos(name: str, value: Any, zero_ok: bool = False) -> float:
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) and math.isfinite(value) and \
        (value >= 0 if zero_ok else value > 0)
    if not ok:
        raise ValueError(f"{name} must be a finite number {'>= 0' if zero_ok else '> 0'}, got {value!r}")
    return float(value)


@functools.lru_cache(maxsize=32)
def _optimizer(learning_rate, head_learning_rate, weight_decay, warmup_fraction, clip_norm, total_steps):
    warmup = max(1, int(round(warmup_fraction * total_steps)))

    def schedule(peak):
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1), peak * 0.01)

    tx = optax.chain(
        optax.clip_by_global_norm(clip_norm),
        optax.multi_transform({"backbone": optax.adamw(schedule(learning_rate), weight_decay=weight_decay),
                               "head": optax.adamw(schedule(head_learning_rate), weight_decay=0.0)},
                              {"backbone": "backbone", "head": "head"}),
    )
    return tx


def train_p2l_finetune(
    key: jax.Array,
    model: Any,
    ids: Any,
    mask: Any,
    votes: Votes,
    *,
    mode: str = "last-k",
    k: int = 2,
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    lora_targets: Sequence[str] = LORA_TARGETS,
    loss: str = "bt-tie",
    delta_l2: float = 1e-2,
    learning_rate: float = 1e-4,
    head_learning_rate: float = 1e-3,
    weight_decay: float = 0.0,
    warmup_fraction: float = 0.05,
    clip_norm: float = 1.0,
    batch_prompts: int = 8,
    accumulate: int = 1,
    max_epochs: int = 3,
    val_fraction: float = 0.1,
    patience: int | None = None,
    dtype: Any = jnp.bfloat16,
    mesh: jax.sharding.Mesh | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    stop_after: int | None = None,
    encoder: str | None = None,
    max_length: int | None = None,
    chat_template: bool = True,
    prefix: Any = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
) -> FinetunedP2L:
    r"""Train P2L with the backbone fine-tuned: the last `k` blocks, or LoRA adapters on every block.

    Objective of a step over the prompts S (all their votes):
    `sum_{i in votes(S)} w_i NLL_i(beta(prompt_i)) / sum_i w_i + delta_l2 * ||Delta||^2`, with
    `beta(prompt) = beta_global + Delta(feature(prompt))` (the residual head of `jaxrank.p2l.P2LHead`).

    Args:
        model: the frozen base `jaxrank.lm.CausalLM` (e.g. `load_model("smollm2-135m-instruct").model`);
            not modified. Its weights are used in `dtype`.
        ids, mask: int[P, T] / bool[P, T] right-padded prompt tokens (`tokenize_prompts`), row p for prompt p
            of `votes.prompt`.
        votes: `jaxrank.Votes` with prompts (soft outcomes and weights count, as in `train_p2l`).
        mode: `"last-k"` or `"lora"`.
        k: trained blocks (last-k), 1 <= k <= num_layers.
        lora_rank, lora_alpha, lora_targets: LoRA rank r, scale `alpha / r`, and the adapted projections.
        loss: one of `jaxrank.p2l.LOSSES`.
        delta_l2: the L2 strength on the head's `Delta` (choose it with `jaxrank.p2l.choose_delta_l2` on
            frozen features).
        learning_rate, head_learning_rate: peak learning rates of the backbone's and the head's weights.
        weight_decay: AdamW decoupled weight decay of the backbone's trained weights (toward 0; default 0).
        warmup_fraction, clip_norm: the schedule's warmup share, global-norm clipping.
        batch_prompts: prompts per optimiser step (a multiple of `accumulate` and, per micro-batch, of the mesh).
        accumulate: micro-batches per optimiser step (gradient accumulation).
        max_epochs: epochs over the training prompts.
        val_fraction: share of prompts held out to keep the best epoch (the start, i.e. the global fit, is a
            candidate); 0: keep the last.
        patience: epochs without validation improvement before stopping (None: never).
        dtype: compute and frozen-weight dtype (bfloat16 default; float32 for exact comparisons).
        key: PRNG key (split, shuffle, LoRA initialisation), first and required like every random function's.
        mesh: optional `jax.sharding.Mesh`; the prompts of each micro-batch are split over all its devices.
        checkpoint_dir, checkpoint_every, resume, stop_after: orbax checkpoints and exact resume (as `train_p2l`).
        encoder: the backbone's name, recorded.
        max_length, chat_template: how `ids` were made (`tokenize_prompts(..., max_length=, chat_template=)`),
            recorded so that `FinetunedP2L.predict` and `jaxrank p2l leaderboard|route` read new prompts the
            same way (`max_length` None: not recorded; readers then use `tokenize_prompts`' default).
        prefix: optional `frozen_prefix(model, ids, mask, k=k, dtype=dtype)` computed once for several
            trainings (seeds, splits, options) of the same prompts; None: computed here.
        progress: `progress(epoch, max_epochs, {"train_loss", "val_nll"})` after each epoch.

    Returns:
        `FinetunedP2L`.
    """
    from jaxrank.lm.transformer import CausalLM

    if not isinstance(model, CausalLM):
        raise TypeError(f"model must be a jaxrank.lm.CausalLM (load_model(...).model), got {type(model).__name__}")
    if mode not in FINETUNE_MODES:
        raise ValueError(f"mode must be one of {FINETUNE_MODES}, got {mode!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if not isinstance(votes, Votes):
        raise TypeError(f"votes must be a jaxrank.Votes with prompts, got {type(votes).__name__}")
    if votes.prompt is None:
        raise ValueError("votes have no prompts; P2L needs each vote's prompt")
    ids, mask = _check_tokens(ids, mask)
    num_prompts = ids.shape[0]
    if len(votes) and int(np.max(votes.prompt)) >= num_prompts:
        raise ValueError(f"votes.prompt indexes prompt {int(np.max(votes.prompt))} but ids has P = {num_prompts} rows")
    if int(ids.max()) >= model.config.vocab_size or int(ids.min()) < 0:
        raise ValueError(f"ids must hold token ids in [0, {model.config.vocab_size}), the model's vocabulary")
    layers = model.config.num_layers
    if mode == "last-k" and not 1 <= _check_int("k", k, 1) <= layers:
        raise ValueError(f"k must be in [1, {layers}] (the model's blocks), got {k}")
    lora_targets = tuple(lora_targets)
    if mode == "lora":
        _check_int("lora_rank", lora_rank, 1)
        _check_pos("lora_alpha", lora_alpha)
        unknown = sorted(set(lora_targets) - set(_layer_names(model)))
        bad = [t for t in lora_targets if t in _layer_names(model) and len(getattr(model, t).shape) != 3]
        if not lora_targets or unknown or bad:
            raise ValueError(f"lora_targets must name weight matrices of a block, e.g. {LORA_TARGETS}; "
                             f"got {lora_targets}")
    _check_pos("delta_l2", delta_l2, zero_ok=True)
    for name, value in (("learning_rate", learning_rate), ("head_learning_rate", head_learning_rate),
                        ("clip_norm", clip_norm)):
        _check_pos(name, value)
    _check_pos("weight_decay", weight_decay, zero_ok=True)
    _check_pos("warmup_fraction", warmup_fraction, zero_ok=True)
    batch_prompts = _check_int("batch_prompts", batch_prompts, 1)
    accumulate = _check_int("accumulate", accumulate, 1)
    max_epochs = _check_int("max_epochs", max_epochs, 1)
    checkpoint_every = _check_int("checkpoint_every", checkpoint_every, 1)
    if max_length is not None:
        max_length = _check_int("max_length", max_length, 2)
    if batch_prompts % accumulate:
        raise ValueError(f"batch_prompts={batch_prompts} must be a multiple of accumulate={accumulate}")
    micro = batch_prompts // accumulate
    if patience is not None:
        _check_int("patience", patience, 1)
    if stop_after is not None:
        _check_int("stop_after", stop_after, 1)
    if not (isinstance(val_fraction, (int, float)) and 0.0 <= val_fraction < 1.0):
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if mesh is not None:
        if not isinstance(mesh, jax.sharding.Mesh):
            raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
        if micro % mesh.size:
            raise ValueError(f"batch_prompts / accumulate = {micro} prompts per micro-batch must be a multiple of the "
                             f"mesh's {mesh.size} devices")
        mesh = jax.sharding.Mesh(mesh.devices, mesh.axis_names,
                                 axis_types=(jax.sharding.AxisType.Auto,) * len(mesh.axis_names))
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir")
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    if not isinstance(key, jax.Array):
        raise TypeError(f"key must be a JAX PRNG key (jax.random.key(seed)), got {type(key).__name__}")
    k_split, k_init, k_shuffle = jax.random.split(key, 3)
    seed = int(np.asarray(jax.random.randint(k_init, (), 0, 2**31 - 1)))

    # Split by prompt (validation prompts never train).
    present = np.unique(np.asarray(votes.prompt))
    n_val = int(round(val_fraction * present.size))
    if val_fraction > 0 and not 1 <= n_val < present.size:
        raise ValueError(f"val_fraction={val_fraction} of {present.size} prompts leaves no validation or training "
                         "prompts")
    perm = np.asarray(jax.random.permutation(k_split, present.size))
    val_prompts, train_prompts = np.sort(present[perm[:n_val]]), np.sort(present[perm[n_val:]])
    train_votes = votes.subset(np.isin(votes.prompt, train_prompts))
    pv = prompt_votes(votes, num_prompts, loss=loss)
    if not (pv.weight[train_prompts] > 0).any():
        raise ValueError("no training votes with positive weight")

    # The prompt-blind fit of the training votes: the head's fixed base.
    rows = train_votes.rows(merge=False)
    w0 = np.asarray(rows.count, np.float32)
    if loss == "bt":
        w0 = np.where(np.asarray(rows.outcome) >= TIE, 0.0, w0)
    sol = solve_bradley_terry(jnp.asarray(w0, jnp.float32), np.asarray(rows.a), np.asarray(rows.b),
                              np.asarray(rows.outcome), num_models=votes.num_models, ties=LOSS_TIES[loss], l2=1e-3)

    frozen = _frozen(model, dtype)
    model_graph, model_state = nnx.split(frozen)
    cfg = dict(mode=mode, k=int(k) if mode == "last-k" else None, lora_rank=int(lora_rank) if mode == "lora" else None,
               lora_alpha=float(lora_alpha) if mode == "lora" else 0.0,
               lora_targets=list(lora_targets) if mode == "lora" else [], loss=loss, delta_l2=float(delta_l2),
               learning_rate=float(learning_rate), head_learning_rate=float(head_learning_rate),
               weight_decay=float(weight_decay), warmup_fraction=float(warmup_fraction), clip_norm=float(clip_norm),
               batch_prompts=batch_prompts, accumulate=accumulate, max_epochs=max_epochs,
               val_fraction=float(val_fraction), patience=patience, dtype=dtype.name, seed=seed,
               num_models=votes.num_models, hidden_size=model.config.hidden_size, num_prompts=int(num_prompts),
               seq_len=int(ids.shape[1]), num_votes=votes.num_votes, num_layers=layers,
               chat_template=bool(chat_template))
    if max_length is not None:
        cfg["max_length"] = max_length
    head = _build_head(cfg)
    head_graph = nnx.split(head, nnx.Param, ...)[0]
    st = _static_for(frozen, cfg, head_graph)

    # Trainable float32 master weights.
    if mode == "last-k":
        backbone = {name: jnp.asarray(getattr(model, name)[...][st.start:], jnp.float32) for name in st.layer_names}
    else:
        backbone = {}
        keys = jax.random.split(jax.random.fold_in(k_init, 1), len(lora_targets))
        for kk, name in zip(keys, lora_targets):
            _, d_in, d_out = getattr(model, name).shape
            backbone[name] = {"a": jax.random.normal(kk, (layers, d_in, lora_rank), jnp.float32) / math.sqrt(d_in),
                              "b": jnp.zeros((layers, lora_rank, d_out), jnp.float32)}

    def place(x):
        if mesh is None:
            return jnp.asarray(x)
        return jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))

    model_state = jax.tree_util.tree_map(place, model_state)
    backbone = jax.tree_util.tree_map(place, backbone)
    ids_j, mask_j = place(ids), place(mask)
    # The frozen prefix, run once over every prompt (last-k): the residual stream entering block `start`.
    residual = None
    feat_batch = max(micro, 1)
    if mode == "last-k":
        if prefix is None:
            prefix = _run_prefix(model_graph, model_state, ids, mask, st.start, feat_batch, mesh)
        else:
            want = (num_prompts, ids.shape[1], model.config.hidden_size)
            if tuple(np.shape(prefix)) != want:
                raise ValueError(f"prefix must have shape [P, T, hidden] = {want} (frozen_prefix of these ids with "
                                 f"k={k}), got {tuple(np.shape(prefix))}")
            _check_prefix(prefix, model_graph, model_state, ids, mask, st.start, k)
        residual = place(jnp.asarray(prefix, dtype))
    elif prefix is not None:
        raise ValueError("prefix is the cached frozen blocks of mode='last-k'; LoRA adapts every block")
    # Features at the start: the head's standardisation (of the training prompts).
    feats0 = []
    for s in range(0, num_prompts, feat_batch):
        sl = np.arange(s, min(s + feat_batch, num_prompts))
        sl_p = np.concatenate([sl, np.zeros(feat_batch - sl.size, sl.dtype)])
        r = None if residual is None else residual[_rows(mesh, sl_p)]
        feats0.append(np.asarray(_features_jit(st, backbone, model_state, _rows(mesh, ids[sl_p]),
                                               _rows(mesh, mask[sl_p]), r))[: sl.size])
    feats0 = np.concatenate(feats0)
    f_mean = feats0[train_prompts].mean(axis=0)
    f_scale = feats0[train_prompts].std(axis=0)
    f_scale = np.where(f_scale > 1e-6 * max(float(f_scale.max()), 1e-30), f_scale, 1.0).astype(np.float32)
    head.feature_mean[...] = jnp.asarray(f_mean, jnp.float32)
    head.feature_scale[...] = jnp.asarray(f_scale, jnp.float32)
    head.base[...] = sol.theta.astype(jnp.float32)
    if head.tie is not None:
        alpha0 = jnp.clip(sol.tie_param, 2 * _TIE_FLOOR, 50.0)
        head.tie.bias[...] = jnp.log(jnp.expm1(alpha0 - _TIE_FLOOR))[None].astype(jnp.float32)
    _, head_params, head_stats = nnx.split(head, nnx.Param, ...)
    head_params, head_stats = jax.tree_util.tree_map(place, (head_params, head_stats))
    params = {"backbone": backbone, "head": head_params}
    anchor_head = head_params
    l2 = place(jnp.float32(delta_l2))
    inputs = (ids_j, mask_j, residual, *(place(x) for x in pv))

    steps_per_epoch = -(-train_prompts.size // batch_prompts)
    tx = _optimizer(float(learning_rate), float(head_learning_rate), float(weight_decay), float(warmup_fraction),
                    float(clip_norm), steps_per_epoch * max_epochs)
    opt_state = tx.init(params)

    def evaluate(p, prompts) -> float:
        s_tot, w_tot = 0.0, 0.0
        for s in range(0, prompts.size, micro):
            sl = prompts[s:s + micro]
            ok = np.arange(micro) < sl.size
            sl = np.concatenate([sl, np.zeros(micro - sl.size, sl.dtype)]).astype(np.int32)
            ss, ww = _eval_step(st, p, model_state, head_stats, inputs, _rows(mesh, sl), _rows(mesh, ok))
            s_tot, w_tot = s_tot + float(ss), w_tot + float(ww)
        return s_tot / w_tot if w_tot > 0 else math.nan

    history: dict[str, Any] = {"train_loss": [], "val_nll": [], "best_epoch": 0}
    best = params
    best_val = math.inf
    bad = 0
    epoch = 0
    if val_prompts.size:
        # The start is the global fit (Delta = 0; LoRA's B = 0 / the blocks as loaded): a candidate.
        best_val = evaluate(params, val_prompts)
        history["start_val_nll"] = history["baseline_val_nll"] = best_val

    manager = None
    if checkpoint_dir is not None:
        from jaxrank.checkpoint import flat_leaves, open_training_checkpoints, unflat_leaves

        manager, restored = open_training_checkpoints(checkpoint_dir, resume=resume, config=cfg)
        if restored is not None:
            meta = restored["meta"]
            like = {"params": params, "opt_state": opt_state, "best": params}
            state = unflat_leaves(restored["state"], like, cast=True)
            params, opt_state, best = jax.tree_util.tree_map(place, (state["params"], state["opt_state"],
                                                                      state["best"]))
            history, epoch, bad = meta["history"], int(meta["epoch"]), int(meta["bad"])
            best_val = math.inf if meta["best_val"] is None else float(meta["best_val"])

    def save(done: int) -> None:
        import orbax.checkpoint as ocp

        meta = {"config": cfg, "history": history, "epoch": done, "bad": bad,
                "best_val": None if math.isinf(best_val) else best_val}
        manager.save(done, args=ocp.args.Composite(
            state=ocp.args.StandardSave(flat_leaves({"params": params, "opt_state": opt_state, "best": best})),
            meta=ocp.args.JsonSave(meta)), force=True)

    last = max_epochs if stop_after is None else min(max_epochs, int(stop_after))
    stopped = patience is not None and bad >= patience
    try:
        while epoch < last and not stopped:
            order = train_prompts[np.asarray(jax.random.permutation(jax.random.fold_in(k_shuffle, epoch),
                                                                     train_prompts.size))]
            total_s, total_w = 0.0, 0.0
            for s in range(0, order.size, batch_prompts):
                sl = order[s:s + batch_prompts]
                ok = np.arange(batch_prompts) < sl.size
                sl = np.concatenate([sl, np.zeros(batch_prompts - sl.size, sl.dtype)]).astype(np.int32)
                batch = _rows(mesh, sl.reshape(accumulate, micro), axis=1)
                valid = _rows(mesh, ok.reshape(accumulate, micro), axis=1)
                params, opt_state, nll, wsum = _train_step(st, tx, params, opt_state, model_state, head_stats,
                                                           inputs, batch, valid, anchor_head, l2)
                total_s, total_w = total_s + float(nll) * float(wsum), total_w + float(wsum)
            epoch += 1
            train_loss = total_s / max(total_w, 1e-30)
            if not math.isfinite(train_loss):
                raise TrainingDivergedError(f"training diverged at epoch {epoch}: the training loss is {train_loss} "
                                            f"(learning_rate={learning_rate:g} is likely too large)")
            history["train_loss"].append(train_loss)
            if val_prompts.size:
                v = evaluate(params, val_prompts)
                history["val_nll"].append(v)
                if v < best_val:
                    best, best_val, bad = params, v, 0
                    history["best_epoch"] = epoch
                else:
                    bad += 1
                stopped = patience is not None and bad >= patience
            else:
                best = params
                history["best_epoch"] = epoch
            if progress is not None:
                progress(epoch, max_epochs, {"train_loss": train_loss,
                                             "val_nll": history["val_nll"][-1] if history["val_nll"] else math.nan})
            if manager is not None and (epoch % checkpoint_every == 0 or epoch == last or stopped):
                save(epoch)
    finally:
        if manager is not None:
            manager.wait_until_finished()
            manager.close()
    history["epochs"] = epoch
    history["best_val_nll"] = None if math.isinf(best_val) else best_val
    history["stopped_early"] = bool(stopped)
    best = jax.device_get(best)
    if not all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(best)):
        raise TrainingDivergedError("training diverged: the parameters are not finite")
    return FinetunedP2L(models=votes.models, loss=loss, encoder=encoder, config=cfg,
                        backbone=jax.tree_util.tree_map(jnp.asarray, best["backbone"]),
                        head=jax.tree_util.tree_map(jnp.asarray, best["head"]),
                        head_stats=jax.tree_util.tree_map(jnp.asarray, jax.device_get(head_stats)), history=history)


def _check_prefix(prefix, graph, state, ids, mask, stop, k) -> None:
    """Refuse a `prefix` that is not this model's frozen blocks of these ids with this `k` (a cache of other
    prompts, another k or dtype, another model): its first and last prompts are recomputed (two short
    rows) and must agree to within the compute dtype's rounding (2 % of the mean magnitude)."""
    for row in sorted({0, ids.shape[0] - 1}):
        probe = np.asarray(_prefix_jit(graph, state, jnp.asarray(ids[row:row + 1]), jnp.asarray(mask[row:row + 1]),
                                       stop=stop), np.float32)[0]
        given = np.asarray(prefix[row], np.float32)
        on = np.asarray(mask[row], bool)
        scale = float(np.abs(probe[on]).mean())
        gap = float(np.abs(given[on] - probe[on]).mean())
        if not gap <= 0.02 * max(scale, 1e-30):
            raise ValueError(f"prefix is not frozen_prefix(model, ids, mask, k={k}) of these prompts: its row {row} "
                             f"differs from the recomputed one by {gap:.3g} on average (magnitude {scale:.3g}); "
                             "recompute it for these ids, this model, k and dtype")


def _run_prefix(graph, state, ids, mask, stop, batch, mesh):
    parts = []
    n = ids.shape[0]
    for s in range(0, n, batch):
        i, m = _pad_rows(ids[s:s + batch], mask[s:s + batch], batch)
        parts.append(np.asarray(_prefix_jit(graph, state, _rows(mesh, i), _rows(mesh, m), stop=stop)
                                .astype(jnp.float32))[: min(batch, n - s)])
    return np.concatenate(parts)


def frozen_prefix(model: Any, ids: Any, mask: Any, *, k: int, dtype: Any = jnp.bfloat16,
                  batch_size: int = 16) -> np.ndarray:
    """float32[P, T, hidden]: the residual stream entering block `L - k` of `model` (in `dtype`) for every prompt,
    the frozen part of `mode="last-k"` run once; pass it as `train_p2l_finetune(key, ..., prefix=...)` to share it
    between trainings."""
    ids, mask = _check_tokens(ids, mask)
    layers = model.config.num_layers
    if not 1 <= _check_int("k", k, 1) <= layers:
        raise ValueError(f"k must be in [1, {layers}] (the model's blocks), got {k}")
    graph, state = nnx.split(_frozen(model, dtype))
    return _run_prefix(graph, state, ids, mask, layers - k, _check_int("batch_size", batch_size, 1), None)


def _rows(mesh, x, axis: int = 0):
    """Host rows `x` on the device(s): split along `axis` over every mesh device (None: the default device)."""
    x = np.asarray(x)
    if mesh is None:
        return jnp.asarray(x)
    spec = [None] * x.ndim
    spec[axis] = tuple(mesh.axis_names)
    return jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec)))


# --------------------------------------------------------------------------------------------------
# Save / load


def save_p2l_finetune(fit: FinetunedP2L, path: str | os.PathLike, *, force: bool = False) -> pathlib.Path:
    """Save a `FinetunedP2L` (trained weights, head, options, history) with orbax; the base model is not
    saved (it is named by `encoder`)."""
    from jaxrank.checkpoint import flat_leaves, save_state

    if not isinstance(fit, FinetunedP2L):
        raise TypeError(f"fit must be a FinetunedP2L, got {type(fit).__name__}")
    meta = {"kind": "jaxrank.p2l-finetune", "models": list(fit.models), "loss": fit.loss, "encoder": fit.encoder,
            "config": fit.config, "history": fit.history}
    state = {"backbone": flat_leaves(fit.backbone), "head": flat_leaves(fit.head), "head_stats": flat_leaves(fit.head_stats)}
    return save_state(path, state, metadata=meta, force=force)


def load_p2l_finetune(path: str | os.PathLike, model: Any) -> FinetunedP2L:
    """Restore what `save_p2l_finetune` wrote, for the base `model` it was trained from (a `CausalLM`)."""
    from jaxrank.checkpoint import restore_state, unflat_leaves

    state, meta = restore_state(path)
    if meta.get("kind") != "jaxrank.p2l-finetune":
        raise ValueError(f"{path} is not a jaxrank fine-tuned P2L checkpoint (kind={meta.get('kind')!r})")
    cfg = dict(meta["config"])
    if int(cfg["num_layers"]) != model.config.num_layers or int(cfg["hidden_size"]) != model.config.hidden_size:
        raise ValueError(f"{path} was trained on a model of {cfg['num_layers']} layers x {cfg['hidden_size']}, "
                         f"not this one ({model.config.num_layers} x {model.config.hidden_size})")
    _, head_like, stats_like = nnx.split(_build_head(cfg), nnx.Param, ...)
    layers = model.config.num_layers
    if cfg["mode"] == "last-k":
        like = {n: jnp.zeros((int(cfg["k"]), *getattr(model, n).shape[1:]), jnp.float32) for n in _layer_names(model)}
    else:
        r = int(cfg["lora_rank"])
        like = {n: {"a": jnp.zeros((layers, getattr(model, n).shape[1], r), jnp.float32),
                    "b": jnp.zeros((layers, r, getattr(model, n).shape[2]), jnp.float32)} for n in cfg["lora_targets"]}
    return FinetunedP2L(models=tuple(meta["models"]), loss=meta["loss"], encoder=meta.get("encoder"), config=cfg,
                        backbone=unflat_leaves(state["backbone"], like, cast=True), head=unflat_leaves(state["head"], head_like, cast=True),
                        head_stats=unflat_leaves(state["head_stats"], stats_like, cast=True), history=dict(meta["history"]))
