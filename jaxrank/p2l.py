r"""Prompt-to-Leaderboard (P2L): a leaderboard for every prompt, aggregated leaderboards, routing.

P2L (Frick et al. 2025, "Prompt-to-Leaderboard", arXiv:2502.14855; code github.com/lmarena/p2l) maps a
prompt to a vector of Bradley–Terry coefficients `beta(prompt) in R^M`, one per model of the arena,
trained on the arena's pairwise votes with their prompts. Here the map is a small flax.nnx head
(`P2LHead`, linear by default) on prompt features from a pretrained encoder running in JAX
(`jaxrank.lm.features.prompt_features`: SmolLM2-135M's last-token hidden state, or all-MiniLM-L6-v2),
computed once and cached; the encoder itself is frozen.

Losses (`LOSSES`), all computed by `jaxrank.ratings.outcome_log_probs` (the one definition of the
likelihoods), with `delta = beta_a - beta_b`:

- `"bt"`: Bradley–Terry, ties dropped (`ties="drop"`);
- `"bt-tie"`: a tie counts as half a win each way (`ties="half"`, P2L's `bt-tie`);
- `"rao-kupper"`: Rao–Kupper with a per-prompt threshold `alpha(prompt) > 0` (`ties="rao-kupper"`);
- `"grounded-rao-kupper"`: P2L's grounded RK (`bag`): `tie (bothbad)` is its own outcome, a win of a
  fixed competitor at `beta = 0` over both models (`ties="grounded-rao-kupper"`).

Modules of work:

- `p2l_loss`: the mean negative log-likelihood of a batch of votes given per-vote coefficients;
- `P2LHead`, `train_p2l` (optax AdamW, warmup + cosine schedule, gradient clipping, minibatches of
  one compiled shape, early stopping on a validation split by prompt, data-axis sharding, orbax
  checkpoints with exact resume), `P2LModel`, `save_p2l` / `load_p2l`;
- `aggregate_leaderboard`: one leaderboard for a set (distribution) of prompts, by fitting one
  coefficient vector to the average of the per-prompt outcome probabilities, with a bootstrap over
  prompts;
- routing (from `jaxrank.routing`, re-exported here): `win_probabilities`, `optimal_policy`, `route`,
  `route_average_budget`, `router_rating`, `router_scores`, `RoutingResult`.
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
from flax import nnx, struct

from jaxrank.routing import (
    RoutingResult,
    optimal_policy,
    route,
    route_average_budget,
    router_rating,
    router_scores,
    win_probabilities,
)
from jaxrank.ratings.bradley_terry import (
    fit_bradley_terry,
    outcome_log_probs,
    outcome_probabilities,
    solve_bradley_terry,
)
from jaxrank.ratings.uncertainty import rank_upper_bound
from jaxrank.votes.table import TIE, Votes

__all__ = [
    "LOSSES",
    "LOSS_TIES",
    "p2l_loss",
    "P2LHead",
    "P2LModel",
    "train_p2l",
    "TrainingDivergedError",
    "save_p2l",
    "load_p2l",
    "P2LLeaderboard",
    "aggregate_leaderboard",
    "VoteNLL",
    "vote_nll",
    "HeldoutComparison",
    "compare_heldout",
    "CrossFitEvaluation",
    "crossfit_heldout",
    "DeltaL2Choice",
    "choose_delta_l2",
    # routing (jaxrank.routing), re-exported
    "RoutingResult",
    "win_probabilities",
    "optimal_policy",
    "route",
    "route_average_budget",
    "router_rating",
    "router_scores",
]

LOSSES = ("bt", "bt-tie", "rao-kupper", "grounded-rao-kupper")
# Each loss is one tie model of jaxrank.ratings (the likelihood lives there, once).
LOSS_TIES = {"bt": "drop", "bt-tie": "half", "rao-kupper": "rao-kupper", "grounded-rao-kupper": "grounded-rao-kupper"}
_FITS_TIE = ("rao-kupper", "grounded-rao-kupper")
_GROUNDED = "grounded-rao-kupper"
_TIE_INIT = 0.5  # initial alpha of the tie head (the ratings' Rao–Kupper default)
_TIE_FLOOR = 1e-4  # alpha = softplus(.) + floor > 0: log(e^alpha - 1) stays finite


def _check_loss(loss: Any) -> str:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(repr(x) for x in LOSSES)}; got {loss!r}")
    return loss


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


# --------------------------------------------------------------------------------------------------
# Votes with their prompts, as training rows


class _Rows(NamedTuple):
    """Training rows: one per vote and outcome (`Votes.rows(merge=False)`), host arrays [R]; a soft vote is
    two rows (a wins with weight `w p`, b wins with weight `w (1 - p)`), so the loss is its cross-entropy."""

    a: np.ndarray
    b: np.ndarray
    outcome: np.ndarray
    prompt: np.ndarray
    weight: np.ndarray

    @property
    def num_rows(self) -> int:
        return int(self.a.shape[0])


def _training_rows(votes: Votes) -> _Rows:
    rows = votes.rows(merge=False)
    prompt = np.asarray(votes.prompt)[np.asarray(rows.row_vote)] if rows.num_rows else np.zeros(0, np.int32)
    return _Rows(np.asarray(rows.a), np.asarray(rows.b), np.asarray(rows.outcome), prompt.astype(np.int32),
                 np.asarray(rows.count, np.float32))


# --------------------------------------------------------------------------------------------------
# The loss


def p2l_loss(
    beta: Any, tie_param: Any, a: Any, b: Any, outcome: Any, *, loss: str, weight: Any = None
) -> jax.Array:
    r"""Mean negative log-likelihood of a batch of votes under per-vote coefficients.

    `L = sum_i w_i * (-log P(outcome_i | beta[i, a_i], beta[i, b_i], alpha_i)) / sum_i w_i`, with the
    probabilities of `jaxrank.ratings.outcome_log_probs` for the loss's tie model (see `LOSSES`). For
    `"bt"` ties are dropped (their weight is 0, so the mean is over decisive votes). An all-zero weight
    gives 0.

    Args:
        beta: float[B, M] coefficients of each vote's prompt.
        tie_param: float[B] Rao–Kupper threshold `alpha > 0` per vote (required for `"rao-kupper"` and
            `"grounded-rao-kupper"`; ignored, may be None, for `"bt"`/`"bt-tie"`).
        a, b: int[B] model indices in `[0, M)`.
        outcome: int[B] 0 = a wins, 1 = b wins, 2 = tie, 3 = tie (bothbad).
        loss: one of `LOSSES`.
        weight: optional float[B] vote weights (e.g. 0 for the padding of a minibatch).

    Returns:
        float32 scalar.

    Example:
        >>> p2l_loss(jnp.zeros((2, 3)), None, jnp.array([0, 1]), jnp.array([1, 2]), jnp.array([0, 2]), loss="bt-tie")
        Array(0.6931472, dtype=float32)
    """
    _check_loss(loss)
    beta = jnp.asarray(beta)
    if beta.ndim != 2:
        raise ValueError(f"beta must have shape [B, M], got {tuple(beta.shape)}")
    if not jnp.issubdtype(beta.dtype, jnp.floating):
        raise TypeError(f"beta must be floating point, got dtype {beta.dtype}")
    n = beta.shape[0]
    arrays = {}
    for name, x in (("a", a), ("b", b), ("outcome", outcome)):
        x = jnp.asarray(x)
        if x.shape != (n,):
            raise ValueError(f"{name} must have shape [B] = ({n},), got {tuple(x.shape)}")
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise TypeError(f"{name} must be integer, got dtype {x.dtype}")
        arrays[name] = x
    ties = LOSS_TIES[loss]
    if loss in _FITS_TIE:
        if tie_param is None:
            raise ValueError(f"tie_param [B] is required for loss={loss!r} (the Rao–Kupper threshold alpha > 0)")
        tie_param = jnp.asarray(tie_param)
        if tie_param.shape != (n,):
            raise ValueError(f"tie_param must have shape [B] = ({n},), got {tuple(tie_param.shape)}")
    else:
        tie_param = None
    if weight is None:
        w = jnp.ones((n,), jnp.promote_types(beta.dtype, jnp.float32))
    else:
        w = jnp.asarray(weight)
        if w.shape != (n,):
            raise ValueError(f"weight must have shape [B] = ({n},), got {tuple(w.shape)}")
        w = w.astype(jnp.promote_types(beta.dtype, jnp.float32))
    a, b, outcome = arrays["a"], arrays["b"], arrays["outcome"]
    _check_loss_values(beta.shape[1], a, b, outcome, tie_param, None if weight is None else w)
    beta_a = jnp.take_along_axis(beta, a[:, None], axis=1)[:, 0]
    beta_b = jnp.take_along_axis(beta, b[:, None], axis=1)[:, 0]
    if loss == "bt":
        w = jnp.where(outcome >= TIE, 0.0, w)
    lp = outcome_log_probs(beta_a - beta_b, outcome, ties=ties, tie_param=tie_param,
                           theta_b=beta_b if loss == _GROUNDED else None)
    total = jnp.sum(w)
    return -jnp.sum(w * lp) / jnp.maximum(total, jnp.finfo(w.dtype).tiny)


def _check_loss_values(m: int, a, b, outcome, tie_param, weight) -> None:
    """Value checks of `p2l_loss`'s concrete inputs (skipped under tracing): an index outside `[0, M)`
    would gather NaN, an unknown outcome code would silently score as a tie, alpha <= 0 gives inf/NaN."""
    for name, x in (("a", a), ("b", b)):
        if _is_concrete(x) and x.size and not bool(jnp.all((x >= 0) & (x < m))):
            raise ValueError(f"{name} must hold model indices in [0, M) = [0, {m}), got min {int(x.min())}, "
                             f"max {int(x.max())}")
    if _is_concrete(outcome) and outcome.size and not bool(jnp.all((outcome >= 0) & (outcome <= 3))):
        raise ValueError("outcome must hold codes 0 (a wins), 1 (b wins), 2 (tie) or 3 (tie (bothbad)), got "
                         f"min {int(outcome.min())}, max {int(outcome.max())}")
    if tie_param is not None and _is_concrete(tie_param) and tie_param.size:
        if not bool(jnp.all(jnp.isfinite(tie_param) & (tie_param > 0))):
            raise ValueError("tie_param (the Rao–Kupper threshold alpha) must be finite and > 0 for every vote")
    if weight is not None and _is_concrete(weight) and weight.size:
        if not bool(jnp.all(jnp.isfinite(weight) & (weight >= 0))):
            raise ValueError("weight must be finite and >= 0 for every vote")


# --------------------------------------------------------------------------------------------------
# The head


class FeatureStat(nnx.Variable):
    """A non-trainable feature statistic (mean / scale) of a `P2LHead`."""


class GlobalCoef(nnx.Variable):
    """The non-trainable prompt-blind coefficients `beta_global [M]` of a residual `P2LHead`."""


class P2LHead(nnx.Module):
    r"""Prompt features `[B, D]` → Bradley–Terry coefficients `beta [B, M]` (+ tie parameter `[B]`).

    `h = (x - mean) / scale` (the training features' statistics, not trained), then optional hidden
    layers `h <- gelu(W_l h + b_l)`, then `beta = W h + b` (zero-initialised, so training starts from
    the flat leaderboard) and, for the tie-fitting losses, `alpha = softplus(w_t . h + b_t) + 1e-4 > 0`
    (initialised at alpha = 0.5).

    Residual head (`base` given): `beta = base + Delta(h)` with `base` the prompt-blind (global)
    coefficients, held fixed (`GlobalCoef`, not trained), and `Delta` the layers above without an output
    bias (the base is the intercept; the standardised features have mean 0 over the training prompts), zero
    at initialisation. Shrinking `Delta` to 0 gives back the global leaderboard for every prompt.

    Identifiability: the likelihoods of `"bt"`, `"bt-tie"` and `"rao-kupper"` see only differences
    `beta_a - beta_b`, so with `centre=True` (the default for them) the head outputs
    `beta - mean_m(beta)` (each prompt's leaderboard has mean 0). The grounded model's competitor at
    `beta = 0` pins the level, so it is never centred.

    Args:
        in_features: D.
        num_models: M.
        hidden: widths of hidden layers (empty: a linear head).
        tie: whether to output the tie parameter.
        centre: subtract each row's mean of beta.
        feature_mean, feature_scale: float[D] statistics of the training features (default 0 and 1).
        base: optional float[M] fixed global coefficients (a residual head); None: no base.
        rngs: `nnx.Rngs` for the hidden layers' initialisation.

    Example:
        >>> head = P2LHead(576, 5, rngs=nnx.Rngs(0))
        >>> beta, alpha = head(jnp.ones((2, 576)))   # beta [2, 5], alpha None
    """

    def __init__(
        self,
        in_features: int,
        num_models: int,
        *,
        hidden: Sequence[int] = (),
        tie: bool = False,
        centre: bool = True,
        feature_mean: Any = None,
        feature_scale: Any = None,
        base: Any = None,
        rngs: nnx.Rngs,
    ):
        self.centre = bool(centre)
        self.base = None if base is None else GlobalCoef(jnp.asarray(base, jnp.float32).reshape(num_models))
        self.feature_mean = FeatureStat(
            jnp.zeros((in_features,), jnp.float32) if feature_mean is None else jnp.asarray(feature_mean, jnp.float32))
        self.feature_scale = FeatureStat(
            jnp.ones((in_features,), jnp.float32) if feature_scale is None else jnp.asarray(feature_scale, jnp.float32))
        layers = []
        width = in_features
        for h in hidden:
            layers.append(nnx.Linear(width, int(h), rngs=rngs))
            width = int(h)
        self.hidden = nnx.List(layers)
        zeros = nnx.initializers.zeros_init()
        # A residual head's intercept is its base: Delta has none (standardised features: mean 0 on training).
        self.out = nnx.Linear(width, num_models, use_bias=base is None, kernel_init=zeros, bias_init=zeros, rngs=rngs)
        if tie:
            inv_softplus = math.log(math.expm1(_TIE_INIT - _TIE_FLOOR))
            self.tie = nnx.Linear(width, 1, kernel_init=zeros, bias_init=nnx.initializers.constant(inv_softplus),
                                  rngs=rngs)
        else:
            self.tie = None

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        h = (x.astype(jnp.float32) - self.feature_mean[...]) / self.feature_scale[...]
        for layer in self.hidden:
            h = jax.nn.gelu(layer(h))
        beta = self.out(h)
        if self.base is not None:
            beta = beta + self.base[...]
        if self.centre:
            beta = beta - jnp.mean(beta, axis=-1, keepdims=True)
        alpha = None if self.tie is None else jax.nn.softplus(self.tie(h)[..., 0]) + _TIE_FLOOR
        return beta, alpha


def _build_head(config: dict[str, Any]) -> P2LHead:
    return P2LHead(
        int(config["in_features"]), int(config["num_models"]), hidden=tuple(config["hidden"]),
        tie=config["loss"] in _FITS_TIE, centre=config["loss"] != _GROUNDED,
        base=jnp.zeros((int(config["num_models"]),), jnp.float32) if config.get("residual") else None,
        rngs=nnx.Rngs(int(config["seed"])),
    )


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _forward(graphdef, params, stats, x):
    return nnx.merge(graphdef, params, stats)(x)


# --------------------------------------------------------------------------------------------------
# The fitted model


@dataclasses.dataclass(frozen=True)
class P2LModel:
    """A trained P2L head with everything needed to use, save and resume it.

    Attributes:
        models: the M model names (`beta[:, i]` is `models[i]`).
        loss: the training loss (one of `LOSSES`).
        encoder: the prompt encoder the features came from (`prompt_features(encoder=...)`), or None
            when the features were supplied without a name.
        config: JSON-serialisable options (in_features, num_models, hidden, seed, training options).
        params: the trainable parameters (`nnx.State`), the best on the validation split.
        stats: the non-trainable feature statistics (`nnx.State`).
        history: per-epoch `train_loss`, `val_nll`, `learning_rate` lists and `best_epoch`.
    """

    models: tuple[str, ...]
    loss: str
    encoder: str | None
    config: dict[str, Any]
    params: Any
    stats: Any
    history: dict[str, Any]

    @property
    def num_models(self) -> int:
        return len(self.models)

    def to_frame(self):
        """The training history as a pandas DataFrame, one row per epoch: `epoch, train_loss, val_nll,
        learning_rate, best` (`best` marks the epoch whose parameters were kept)."""
        import pandas as pd

        h = self.history
        n = len(h.get("train_loss", []))
        val = list(h.get("val_nll", []))
        rate = list(h.get("learning_rate", []))
        frame = pd.DataFrame({"epoch": np.arange(1, n + 1), "train_loss": h.get("train_loss", []),
                              "val_nll": val + [float("nan")] * (n - len(val)),
                              "learning_rate": rate + [float("nan")] * (n - len(rate))})
        frame["best"] = frame["epoch"] == int(h.get("best_epoch", 0))  # epochs count from 1
        return frame

    @functools.cached_property
    def _graphdef(self):
        graphdef, _, _ = nnx.split(_build_head(self.config), nnx.Param, ...)
        return graphdef

    def head(self) -> P2LHead:
        """The `P2LHead` module with the trained parameters."""
        return nnx.merge(self._graphdef, self.params, self.stats)

    def coefficients(self, features: Any) -> tuple[jax.Array, jax.Array | None]:
        """`(beta float32[P, M], alpha float32[P] or None)` for prompt features `[P, D]`.

        Example:
            >>> beta, alpha = model.coefficients(features)      # doctest: +SKIP
        """
        x = _check_features(features, "features")
        if x.shape[1] != int(self.config["in_features"]):
            raise ValueError(f"features must have D = {self.config['in_features']} columns (the training features'), "
                             f"got {x.shape[1]}")
        return _forward(self._graphdef, self.params, self.stats, x)

    def predict(self, prompts: Sequence[str], **feature_kwargs: Any) -> tuple[jax.Array, jax.Array | None]:
        """Coefficients for prompt texts: features with the recorded encoder, then `coefficients`.

        Args:
            prompts: P prompt strings.
            **feature_kwargs: passed to `jaxrank.lm.features.prompt_features` (batch_size, max_length,
                cache_dir, progress, mesh); `max_length` defaults to the one recorded at training, if any.
        """
        if self.encoder is None:
            raise ValueError("this P2L model records no encoder (it was trained on supplied features); compute the "
                             "features yourself and call coefficients(features)")
        from jaxrank.lm.features import prompt_features

        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of strings, not one string")
        if "max_length" in self.config:
            feature_kwargs.setdefault("max_length", int(self.config["max_length"]))
        return self.coefficients(prompt_features(list(prompts), encoder=self.encoder, **feature_kwargs))

    def leaderboard(self, features: Any, **kwargs: Any) -> "P2LLeaderboard":
        """`aggregate_leaderboard` of the coefficients of these prompt features (same options)."""
        beta, alpha = self.coefficients(features)
        return aggregate_leaderboard(beta, alpha, loss=self.loss, models=self.models, **kwargs)


def _check_features(features: Any, name: str) -> jax.Array:
    x = features if isinstance(features, jax.Array) else np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape [P, D], got {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be floating point, got dtype {x.dtype}")
    if _is_concrete(x) and not bool(np.isfinite(np.asarray(x)).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return jnp.asarray(x, jnp.float32)


# --------------------------------------------------------------------------------------------------
# Training


def _make_optimizer(learning_rate: float, weight_decay: float, warmup_fraction: float, end_lr_factor: float,
                    clip_norm: float, total_steps: int):
    """`(optax transformation, schedule)`; cached, so equal options reuse one compiled epoch."""
    warmup = max(1, int(round(warmup_fraction * total_steps)))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=learning_rate, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=learning_rate * end_lr_factor,
    )
    tx = optax.chain(optax.clip_by_global_norm(clip_norm), optax.adamw(schedule, weight_decay=weight_decay))
    return tx, schedule


def _batch_nll(graphdef, params, stats, features, idx, a, b, o, w, loss):
    head = nnx.merge(graphdef, params, stats)
    beta, alpha = head(features[idx])
    return p2l_loss(beta, alpha, a, b, o, loss=loss, weight=w)


def _penalised_nll(params, graphdef, stats, features, idx, a, b, o, w, loss, l2, anchor):
    """`(NLL + l2 * ||params - anchor||^2, NLL)`: the L2 pulls the head back to its start (the global fit)."""
    nll = _batch_nll(graphdef, params, stats, features, idx, a, b, o, w, loss)
    sq = sum(jnp.sum(jnp.square(p - q)) for p, q in zip(jax.tree_util.tree_leaves(params),
                                                        jax.tree_util.tree_leaves(anchor)))
    return nll + l2 * sq, nll


def _train_epoch(params, opt_state, l2, anchor, features, batches, *, graphdef, stats, tx, loss):
    """One epoch of G heads at once (`params`, `opt_state` stacked [G], `l2` float[G], vmapped): each a
    `lax.scan` over the same minibatches of one shape (`batches` fields [S, B])."""

    def one(params, opt_state, l2):
        def step(carry, batch):
            params, opt_state = carry
            idx, a, b, o, w = batch
            (_, value), grads = jax.value_and_grad(_penalised_nll, has_aux=True)(
                params, graphdef, stats, features, idx, a, b, o, w, loss, l2, anchor)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), (value, jnp.sum(w))

        (params, opt_state), (values, sizes) = jax.lax.scan(step, (params, opt_state), batches)
        return params, opt_state, jnp.sum(values * sizes) / jnp.maximum(jnp.sum(sizes), 1e-30)

    return jax.vmap(one)(params, opt_state, l2)


def _eval_sum(params, features, batches, *, graphdef, stats, loss):
    """(sum of w * NLL, sum of w) over evaluation minibatches, for G stacked heads: float32[G] each."""

    def one(params):
        def step(carry, batch):
            idx, a, b, o, w = batch
            w_eff = jnp.where(o >= TIE, 0.0, w) if loss == "bt" else w
            mean = _batch_nll(graphdef, params, stats, features, idx, a, b, o, w, loss)
            total = jnp.sum(w_eff)
            return (carry[0] + mean * total, carry[1] + total), None

        (s, n), _ = jax.lax.scan(step, (jnp.float32(0.0), jnp.float32(0.0)), batches)
        return s, n

    return jax.vmap(one)(params)


_train_epoch_jit = jax.jit(_train_epoch, static_argnames=("graphdef", "tx", "loss"))
_eval_sum_jit = jax.jit(_eval_sum, static_argnames=("graphdef", "loss"))


def _batches(votes: _Rows, order: np.ndarray, batch_size: int, mesh) -> tuple[jax.Array, ...]:
    """Fields int32/float32[S, B] of the rows in `order`, the last batch padded with weight 0."""
    n = order.shape[0]
    steps = max(1, -(-n // batch_size))
    pad = steps * batch_size - n
    order = np.concatenate([order, np.zeros((pad,), order.dtype)])
    w = votes.weight[order].copy()
    if pad:
        w[n:] = 0.0
    fields = [votes.prompt[order], votes.a[order], votes.b[order], votes.outcome[order], w]
    fields = [np.asarray(f).reshape(steps, batch_size) for f in fields]
    if mesh is None:
        return tuple(jnp.asarray(f) for f in fields)
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, tuple(mesh.axis_names)))
    return tuple(jax.device_put(f, sharding) for f in fields)


def _split_by_prompt(key, votes: Votes, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """bool[N] train / validation masks: a random `val_fraction` of the distinct prompts is held out."""
    prompts = np.unique(votes.prompt)
    if val_fraction == 0:
        return np.ones(len(votes), bool), np.zeros(len(votes), bool)
    n_val = int(round(val_fraction * prompts.size))
    if n_val < 1 or n_val >= prompts.size:
        raise ValueError(f"val_fraction={val_fraction} of {prompts.size} prompts leaves no "
                         f"{'validation' if n_val < 1 else 'training'} prompts")
    perm = np.asarray(jax.random.permutation(key, prompts.size))
    val_prompts = prompts[perm[:n_val]]
    val = np.isin(votes.prompt, val_prompts)
    return ~val, val


_TRAIN_DEFAULTS = dict(
    hidden=(), learning_rate=1e-3, weight_decay=1e-4, warmup_fraction=0.05, end_lr_factor=0.01, clip_norm=1.0,
    batch_size=64, max_epochs=50, val_fraction=0.1, patience=5,
)


class TrainingDivergedError(ValueError):
    """`train_p2l` stopped because the loss became NaN/infinite or exploded (usually a learning rate too large)."""


#: A training loss above `DIVERGENCE_FACTOR` x (the starting loss + 1 nat) stops training as diverged: the
#: starting point (the prompt-blind Bradley–Terry fit, or all zeros) already predicts that well, so a sane
#: optimiser never goes there.
DIVERGENCE_FACTOR = 10.0


def _check_divergence(epoch: int, values: Sequence[float], start: Sequence[float] | None, learning_rate: float,
                      what: str) -> None:
    """Raise when every head (one, or one per L2 of a residual grid) diverged: a non-finite value, or one above
    `DIVERGENCE_FACTOR` x (its starting value + 1)."""
    values = [float(v) for v in values]
    bad = [not math.isfinite(v) or (start is not None and v > DIVERGENCE_FACTOR * (s + 1.0))
           for v, s in zip(values, start if start is not None else values)]
    if not all(bad):
        return
    finite = [v for v in values if math.isfinite(v)]
    if not finite or start is None:
        value = min(finite) if finite else values[0]
        raise TrainingDivergedError(f"training diverged at epoch {epoch}: the {what} is {value} (learning_rate="
                                    f"{learning_rate:g} is likely too large); no model was returned")
    raise TrainingDivergedError(
        f"training diverged at epoch {epoch}: the {what} rose to {min(finite):.4g} from {min(start):.4g} at the "
        f"start (learning_rate={learning_rate:g} is likely too large); no model was returned")


def train_p2l(
    key: jax.Array,
    features: Any,
    votes: Votes,
    *,
    loss: str = "bt-tie",
    hidden: Sequence[int] = (),
    learning_rate: float = 1e-3,
    weight_decay: float | None = None,
    delta_l2: float | Sequence[float] | None = None,
    warmup_fraction: float = 0.05,
    end_lr_factor: float = 0.01,
    clip_norm: float = 1.0,
    batch_size: int = 64,
    max_epochs: int = 50,
    val_fraction: float = 0.1,
    patience: int | None = 5,
    mesh: jax.sharding.Mesh | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    stop_after: int | None = None,
    val_prompts: Any = None,
    heldout_prompts: Any = None,
    encoder: str | None = None,
    max_length: int | None = None,
    init_global: bool = True,
    progress: Callable[[int, int, dict[str, float]], Any] | None = None,
) -> P2LModel:
    r"""Train a P2L head on prompt features and votes.

    Minimises the mean `p2l_loss` over the training votes with optax: `clip_by_global_norm(clip_norm)`
    then AdamW (`weight_decay`) on a schedule that warms up linearly from 0 to `learning_rate` over
    `warmup_fraction` of all steps and decays by a cosine to `end_lr_factor * learning_rate` at
    `max_epochs`. Each epoch shuffles the training votes (key `fold_in(key, epoch)`) into minibatches of
    `batch_size` (the last padded with weight-0 votes, so ONE compiled step serves every batch; the
    epoch is one `lax.scan`). Features are standardised with the training prompts' mean and standard
    deviation (stored in the head). With `init_global` (default) the head starts at the prompt-blind
    leaderboard: the output bias is the global Bradley–Terry fit of the training votes with the same
    likelihood (`solve_bradley_terry`, a weak `l2 = 1e-3` prior so that it exists), the tie bias its
    alpha, the weights zero; training then learns how prompts move the leaderboard from there.

    Residual head (`delta_l2` given): `beta(prompt) = beta_global + Delta(prompt)`, with `beta_global`
    the global fit above held FIXED and `Delta` zero at the start, trained with the penalty
    `l2 * ||params - start||^2` added to the loss (which shrinks `Delta` to 0, and the tie head to the
    global alpha). A grid of `l2` values is trained at once (one vmapped run over the same minibatches),
    and the head with the best validation NLL is returned, the start (= the global leaderboard, epoch 0)
    included among the candidates: on the validation prompts it is never worse than the prompt-blind
    fit, and an uninformative representation gives back the global leaderboard. AdamW's decoupled
    `weight_decay` defaults to 0 then (it would pull the tie head to alpha = log 2, not to the global fit).

    Validation: a random `val_fraction` of the distinct PROMPTS (not votes) is held out; after every
    epoch the validation mean NLL is computed, the best parameters are kept, and training stops after
    `patience` epochs without improvement (None: never early). With `val_fraction=0` the last epoch's
    parameters are returned.

    Sharding: with `mesh`, each minibatch's vote axis is sharded over all the mesh's axes (`batch_size`
    must be a multiple of the device count); parameters and features are replicated, the gradient sum
    becomes an all-reduce. Same numbers as unsharded up to float32 summation order.

    Checkpoints: with `checkpoint_dir`, an orbax `CheckpointManager` saves the full training state
    (parameters, optimizer state, best parameters, early-stopping counters, history) every
    `checkpoint_every` epochs and at the end, keeping the latest two. `resume=True` restores the
    latest and continues exactly: training `E` epochs equals training `k`, stopping (`stop_after=k`),
    and resuming to `E`, bit for bit. The options must be the same on resume (checked).

    Args:
        key: PRNG key (required): the validation split, the shuffling, the initialisation.
        features: float[P, D] prompt features (e.g. `prompt_features(prompts)`).
        votes: `jaxrank.Votes` whose `prompt` indexes rows of `features` (`prompt_features(votes.prompt_text)`
            is aligned with `votes.prompt_ids`). Vote weights and counts weight the loss; a soft vote
            (`p_a`) contributes its cross-entropy `-(p log P(a) + (1 - p) log P(b))`.
        loss: one of `LOSSES`.
        hidden: hidden layer widths of the head (empty: linear).
        learning_rate, weight_decay, warmup_fraction, end_lr_factor, clip_norm: optimiser options
            (`weight_decay` default: 1e-4, or 0 with `delta_l2`).
        delta_l2: None (a plain head), or one L2 strength >= 0 or a sequence of them: a residual head on
            the fixed global fit, the strength chosen on the validation prompts (needs `val_fraction > 0`
            for more than one value).
        batch_size: votes per minibatch.
        max_epochs: epochs (sets the schedule's length).
        val_fraction: share of prompts held out for early stopping, in [0, 1).
        patience: epochs without validation improvement before stopping (None: no early stopping).
        mesh: optional `jax.sharding.Mesh` for data-parallel minibatches.
        checkpoint_dir: directory for training checkpoints (created).
        checkpoint_every: epochs between checkpoints.
        resume: continue from the latest checkpoint in `checkpoint_dir`.
        stop_after: stop after this many epochs in total (as if preempted; resume later).
        val_prompts: optional prompt indices (into `votes.prompt`'s table) to hold out for validation instead
            of a random `val_fraction` of them.
        heldout_prompts: optional prompt indices kept out of training AND validation, only scored: after each
            epoch their NLL is computed, and `history["heldout_nll"]` is the returned head's at its best
            (validation) epoch, `history["baseline_heldout_nll"]` the global fit's, and with `delta_l2`
            `history["delta_l2_heldout_nll"]` each grid value's at its own best epoch (`choose_delta_l2`
            scores its folds so: nothing of a held-out fold steers its training or early stopping).
        encoder: the name of the encoder that produced `features` (recorded for `P2LModel.predict`).
        max_length: the token limit the features were computed with (`prompt_features(max_length=...)`),
            recorded so that `P2LModel.predict` and `jaxrank p2l leaderboard|route` read new prompts the same way.
        init_global: start from the global (prompt-blind) Bradley–Terry fit instead of all zeros.
        progress: optional `progress(epoch, max_epochs, {"train_loss", "val_nll"})` after each epoch (the
            best over the `delta_l2` grid).

    Returns:
        `P2LModel`. `history["baseline_val_nll"]` is the prompt-blind global fit's validation NLL (None
        without validation prompts); with `delta_l2`, `history["delta_l2_val_nll"]` has the best validation
        NLL of each grid value and `config["chosen_delta_l2"]` the chosen one.

    Example:
        >>> from jaxrank.lm.features import prompt_features                          # doctest: +SKIP
        >>> feats = prompt_features(prompts, encoder="smollm2-135m-instruct")          # doctest: +SKIP
        >>> model = train_p2l(jax.random.key(0), feats, votes, loss="bt-tie")          # doctest: +SKIP
        >>> beta, _ = model.coefficients(feats)                                        # doctest: +SKIP
    """
    _check_loss(loss)
    if not isinstance(votes, Votes):
        raise TypeError(f"votes must be a jaxrank.Votes with prompts (see jaxrank.load_votes), got {type(votes).__name__}")
    if votes.prompt is None:
        raise ValueError("votes have no prompts; P2L needs each vote's prompt (load_votes reads a prompt column, or "
                         "pass prompt= to Votes.from_arrays)")
    x_np = np.asarray(_check_features(features, "features"))
    num_prompts, in_features = x_np.shape
    if len(votes) and int(votes.prompt.max()) >= num_prompts:
        raise ValueError(f"votes.prompt indexes prompt {int(votes.prompt.max())} but features has only "
                         f"P = {num_prompts} rows")
    for name, value, lo in (("batch_size", batch_size, 1), ("max_epochs", max_epochs, 1),
                            ("checkpoint_every", checkpoint_every, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    if patience is not None and (isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 1):
        raise ValueError(f"patience must be an int >= 1 or None, got {patience!r}")
    if stop_after is not None and (not isinstance(stop_after, (int, np.integer)) or stop_after < 1):
        raise ValueError(f"stop_after must be an int >= 1 or None, got {stop_after!r}")
    if not (isinstance(val_fraction, (int, float)) and 0.0 <= val_fraction < 1.0):
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    for name, value in (("learning_rate", learning_rate), ("clip_norm", clip_norm)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    residual = delta_l2 is not None
    if residual:
        grid = (delta_l2,) if isinstance(delta_l2, (int, float, np.floating, np.integer)) else tuple(delta_l2)
        if not grid or any(isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer))
                           or not math.isfinite(v) or v < 0 for v in grid):
            raise ValueError(f"delta_l2 must be a finite number >= 0 or a non-empty sequence of them, got {delta_l2!r}")
        grid = tuple(float(v) for v in grid)
        if len(grid) > 1 and val_fraction == 0 and val_prompts is None:
            raise ValueError("delta_l2 with several values is chosen on validation prompts: val_fraction must be > 0")
    else:
        grid = (0.0,)
    if weight_decay is None:
        weight_decay = 0.0 if residual else 1e-4
    for name, value in (("weight_decay", weight_decay), ("warmup_fraction", warmup_fraction),
                        ("end_lr_factor", end_lr_factor)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    hidden = tuple(int(h) for h in hidden)
    if any(h < 1 for h in hidden):
        raise ValueError(f"hidden widths must be >= 1, got {hidden}")
    if mesh is not None:
        if not isinstance(mesh, jax.sharding.Mesh):
            raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
        if batch_size % mesh.size:
            raise ValueError(f"batch_size={batch_size} must be a multiple of the mesh's {mesh.size} devices")
        # Compiler-propagated (Auto) axes whatever the caller's mesh uses: the gathers of feature rows by the
        # sharded vote indices then need no explicit out_sharding.
        mesh = jax.sharding.Mesh(mesh.devices, mesh.axis_names,
                                 axis_types=(jax.sharding.AxisType.Auto,) * len(mesh.axis_names))
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir")
    if not isinstance(key, jax.Array):
        raise TypeError(f"key must be a jax.random.key (the first argument), got {type(key).__name__}")
    k_split, k_init, k_shuffle = jax.random.split(key, 3)
    seed = int(np.asarray(jax.random.randint(k_init, (), 0, 2**31 - 1)))

    out_mask = np.zeros(len(votes), bool)  # the held-out (scored only) votes
    if heldout_prompts is not None:
        scored = np.unique(np.asarray(heldout_prompts, np.int64).reshape(-1))
        present = np.unique(votes.prompt)
        if not scored.size or not np.isin(scored, present).all() or np.isin(present, scored).all():
            raise ValueError("heldout_prompts must be a non-empty set of the votes' prompt indices that leaves "
                             "training prompts")
        out_mask = np.isin(votes.prompt, scored)
    if val_prompts is not None:
        held = np.unique(np.asarray(val_prompts, np.int64).reshape(-1))
        present = np.unique(votes.prompt[~out_mask])
        if not held.size or not np.isin(held, present).all() or np.isin(present, held).all():
            raise ValueError("val_prompts must be a non-empty set of the votes' prompt indices that leaves training "
                             "prompts (and none of heldout_prompts)")
        val_mask = np.isin(votes.prompt, held)
        train_mask = ~val_mask & ~out_mask
    else:
        inner_train, inner_val = _split_by_prompt(k_split, votes.subset(~out_mask), float(val_fraction))
        train_mask, val_mask = np.zeros(len(votes), bool), np.zeros(len(votes), bool)
        train_mask[~out_mask], val_mask[~out_mask] = inner_train, inner_val
    train, val = _training_rows(votes.subset(train_mask)), _training_rows(votes.subset(val_mask))
    out = _training_rows(votes.subset(out_mask)) if out_mask.any() else None
    if loss == "bt":
        if not (train.weight[train.outcome < TIE] > 0).any():
            raise ValueError("loss='bt' drops ties, and the training votes hold no decisive vote")
    if not (train.weight > 0).any():
        raise ValueError("no training votes with positive weight")
    if val.num_rows:
        val_scored = np.where(val.outcome >= TIE, 0.0, val.weight) if loss == "bt" else val.weight
        if not (val_scored > 0).any():
            # Otherwise every epoch's validation NLL is 0 / 0 -> 0: epoch 1 stays "best" and training stops
            # after `patience` epochs, silently returning the first epoch's parameters.
            raise ValueError(
                f"val_fraction={val_fraction}: the {np.unique(val.prompt).size} validation prompts hold no vote the "
                f"loss scores ({'all ties, which loss=' + repr(loss) + ' drops' if loss == 'bt' else 'all weight 0'}); "
                "use another key or val_fraction, or val_fraction=0")
    train_prompts = np.unique(train.prompt)
    mean = x_np[train_prompts].mean(axis=0)
    scale = x_np[train_prompts].std(axis=0)
    scale = np.where(scale > 1e-6 * max(float(scale.max()), 1e-30), scale, 1.0).astype(np.float32)

    cfg = dict(
        in_features=int(in_features), num_models=votes.num_models, hidden=list(hidden), seed=seed, loss=loss,
        learning_rate=float(learning_rate), weight_decay=float(weight_decay), warmup_fraction=float(warmup_fraction),
        end_lr_factor=float(end_lr_factor), clip_norm=float(clip_norm), batch_size=int(batch_size),
        max_epochs=int(max_epochs), val_fraction=float(val_fraction), patience=patience,
        num_votes=votes.num_votes, num_prompts=int(num_prompts), init_global=bool(init_global),
    )
    if val_prompts is not None:
        cfg["val_prompts"] = [int(x) for x in held]
    if out is not None:
        cfg["heldout_prompts"] = [int(x) for x in scored]
    if max_length is not None:
        if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2 (tokens), got {max_length!r}")
        cfg["max_length"] = int(max_length)
    if residual:
        cfg.update(residual=True, delta_l2=list(grid))
    head = _build_head(cfg)
    head.feature_mean[...] = jnp.asarray(mean, jnp.float32)
    head.feature_scale[...] = jnp.asarray(scale, jnp.float32)
    # The prompt-blind fit of the training votes, same likelihood (a weak prior so that it exists): the
    # start of the head (init_global), the fixed base of a residual head, the baseline of the validation NLL.
    w_init = np.where(train.outcome >= TIE, 0.0, train.weight) if loss == "bt" else train.weight
    sol = solve_bradley_terry(jnp.asarray(w_init, jnp.float32), train.a, train.b, train.outcome,
                              num_models=votes.num_models, ties=LOSS_TIES[loss], l2=1e-3)
    global_alpha = jnp.clip(sol.tie_param, 2 * _TIE_FLOOR, 50.0)
    if residual:
        head.base[...] = sol.theta.astype(jnp.float32)
    elif init_global:
        head.out.bias[...] = sol.theta.astype(jnp.float32)
    if head.tie is not None and (init_global or residual):
        head.tie.bias[...] = jnp.log(jnp.expm1(global_alpha - _TIE_FLOOR))[None].astype(jnp.float32)
    graphdef, params, stats = nnx.split(head, nnx.Param, ...)
    # A minibatch larger than the data is padded with weight-0 votes, which change nothing: cap the arrays at
    # the data (rounded up to the mesh), so that memory does not grow with `batch_size` (the schedule, which
    # counts steps, and the numbers are the same).
    devices = 1 if mesh is None else mesh.size
    train_batch = min(int(batch_size), -(-max(train.num_rows, 1) // devices) * devices)
    val_batch = min(int(batch_size), -(-max(val.num_rows, 1) // devices) * devices)
    def global_nll(rows):
        beta0 = jnp.broadcast_to(sol.theta.astype(jnp.float32), (rows.num_rows, votes.num_models))
        alpha_rows = jnp.full((rows.num_rows,), global_alpha, jnp.float32) if loss in _FITS_TIE else None
        return float(p2l_loss(beta0, alpha_rows, rows.a, rows.b, rows.outcome, loss=loss, weight=rows.weight))

    baseline_val = global_nll(val) if val.num_rows else None
    steps_per_epoch = max(1, -(-train.num_rows // batch_size))
    tx, schedule = _make_optimizer(cfg["learning_rate"], cfg["weight_decay"], cfg["warmup_fraction"],
                                   cfg["end_lr_factor"], cfg["clip_norm"], steps_per_epoch * max_epochs)
    # G = len(grid) heads trained at once: parameters and optimiser states stacked along a leading axis.
    num_heads = len(grid)
    anchor = params
    params = jax.tree_util.tree_map(lambda x: jnp.stack([x] * num_heads), params)
    opt_state = jax.vmap(tx.init)(params)
    l2s = jnp.asarray(grid, jnp.float32)

    replicated = None if mesh is None else jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    feats = jnp.asarray(x_np) if mesh is None else jax.device_put(x_np, replicated)
    if mesh is not None:
        params, opt_state, stats, anchor, l2s = jax.device_put((params, opt_state, stats, anchor, l2s), replicated)
    val_batches = _batches(val, np.arange(val.num_rows), val_batch, mesh) if val.num_rows else None
    out_batches = None
    if out is not None:
        out_batch = min(int(batch_size), -(-max(out.num_rows, 1) // devices) * devices)
        out_batches = _batches(out, np.arange(out.num_rows), out_batch, mesh)

    def heldout_nll(p) -> list[float]:
        s, n = _eval_sum_jit(p, feats, out_batches, graphdef=graphdef, stats=stats, loss=loss)
        return [float(v) for v in np.asarray(s).reshape(-1) / np.maximum(np.asarray(n).reshape(-1), 1e-30)]

    # Per-epoch lists hold one value per head until the end, where the chosen head's column is kept.
    history: dict[str, Any] = {"train_loss": [], "val_nll": [], "learning_rate": [], "best_epoch": [0] * num_heads,
                               "baseline_val_nll": baseline_val}
    if out is not None:
        history["baseline_heldout_nll"] = global_nll(out)
        history["heldout_best"] = [None] * num_heads  # each head's held-out NLL at its best epoch so far
    best_params = params
    best_val = [math.inf] * num_heads
    bad_epochs = [0] * num_heads
    epoch = 0
    if residual and val_batches is not None:
        # The start (the global fit) is a candidate: the returned head is never worse on validation.
        s0, n0 = _eval_sum_jit(params, feats, val_batches, graphdef=graphdef, stats=stats, loss=loss)
        best_val = [float(v) for v in np.asarray(s0) / np.maximum(np.asarray(n0), 1e-30)]
        if out is not None:
            history["heldout_best"] = heldout_nll(params)
    manager = None
    if checkpoint_dir is not None:
        from jaxrank.checkpoint import flat_leaves, open_training_checkpoints, unflat_leaves

        manager, restored = open_training_checkpoints(checkpoint_dir, resume=resume, config=cfg)
        if restored is not None:
            meta = restored["meta"]
            like = {"params": params, "opt_state": opt_state, "best_params": params}
            state = unflat_leaves(restored["state"], like)
            params, opt_state, best_params = state["params"], state["opt_state"], state["best_params"]
            if mesh is not None:
                params, opt_state, best_params = jax.device_put((params, opt_state, best_params), replicated)
            history, best_val, bad_epochs, epoch = meta["history"], meta["best_val"], meta["bad_epochs"], meta["epoch"]
            best_val = [math.inf if v is None else float(v) for v in best_val]

    def save(epoch_done: int) -> None:
        import orbax.checkpoint as ocp

        state = flat_leaves({"params": params, "opt_state": opt_state, "best_params": best_params})
        meta = {"config": cfg, "history": history, "best_val": [None if math.isinf(v) else v for v in best_val],
                "bad_epochs": bad_epochs, "epoch": epoch_done}
        manager.save(epoch_done, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta)), force=True)

    # The loss of the starting point: a training loss far above it means the optimiser diverged.
    s0, n0 = _eval_sum_jit(params, feats, _batches(train, np.arange(train.num_rows), train_batch, mesh),
                           graphdef=graphdef, stats=stats, loss=loss)
    start_loss = [float(v) for v in np.asarray(s0).reshape(-1) / np.maximum(np.asarray(n0).reshape(-1), 1e-30)]
    last = max_epochs if stop_after is None else min(max_epochs, int(stop_after))
    stopped = patience is not None and min(bad_epochs) >= patience
    try:
        while epoch < last and not stopped:
            order = np.asarray(jax.random.permutation(jax.random.fold_in(k_shuffle, epoch), train.num_rows))
            batches = _batches(train, order, train_batch, mesh)
            params, opt_state, train_loss = _train_epoch_jit(
                params, opt_state, l2s, anchor, feats, batches, graphdef=graphdef, stats=stats, tx=tx, loss=loss)
            epoch += 1
            history["train_loss"].append([float(v) for v in np.asarray(train_loss).reshape(-1)])
            _check_divergence(epoch, history["train_loss"][-1], start_loss, cfg["learning_rate"], "training loss")
            history["learning_rate"].append(float(schedule(epoch * steps_per_epoch)))
            if val_batches is not None:
                s, n = _eval_sum_jit(params, feats, val_batches, graphdef=graphdef, stats=stats, loss=loss)
                val_nll = [float(v) for v in np.asarray(s).reshape(-1) / np.maximum(np.asarray(n).reshape(-1), 1e-30)]
                _check_divergence(epoch, val_nll, None, cfg["learning_rate"], "validation NLL")
                history["val_nll"].append(val_nll)
                better = [v < bv for v, bv in zip(val_nll, best_val)]
                if any(better):
                    mask = jnp.asarray(better)
                    best_params = jax.tree_util.tree_map(
                        lambda new, old: jnp.where(mask.reshape((-1,) + (1,) * (new.ndim - 1)), new, old),
                        params, best_params)
                scored_now = heldout_nll(params) if out is not None and any(better) else None
                for g in range(num_heads):
                    if better[g]:
                        best_val[g], bad_epochs[g] = val_nll[g], 0
                        history["best_epoch"][g] = epoch
                        if scored_now is not None:
                            history["heldout_best"][g] = scored_now[g]
                    else:
                        bad_epochs[g] += 1
                # Heads that ran out of patience keep training (their best is kept) until all have.
                stopped = patience is not None and min(bad_epochs) >= patience
            else:
                best_params = params
                history["best_epoch"] = [epoch] * num_heads
                if out is not None:
                    history["heldout_best"] = heldout_nll(params)
            if progress is not None:
                progress(epoch, max_epochs, {"train_loss": min(history["train_loss"][-1]),
                                             "val_nll": min(history["val_nll"][-1]) if history["val_nll"] else math.nan})
            if manager is not None and (epoch % checkpoint_every == 0 or epoch == last or stopped):
                save(epoch)
    finally:
        if manager is not None:
            manager.wait_until_finished()
            manager.close()
    chosen = int(np.argmin(best_val)) if val_batches is not None else 0
    history["stopped_early"] = bool(stopped)
    history["epochs"] = epoch
    history["train_loss"] = [row[chosen] for row in history["train_loss"]]
    history["val_nll"] = [row[chosen] for row in history["val_nll"]]
    history["best_epoch"] = history["best_epoch"][chosen]
    history["best_val_nll"] = None if math.isinf(best_val[chosen]) else best_val[chosen]
    if residual:
        history["delta_l2_val_nll"] = [None if math.isinf(v) else v for v in best_val]
    if out is not None:
        scored_best = history.pop("heldout_best")
        history["heldout_nll"] = scored_best[chosen]
        if residual:
            history["delta_l2_heldout_nll"] = scored_best
    cfg_out = dict(cfg)
    if residual:
        cfg_out["chosen_delta_l2"] = grid[chosen]
    best_params = jax.tree_util.tree_map(lambda x: x[chosen], jax.device_get(best_params))
    stats = jax.device_get(stats)
    if not all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(best_params)):
        raise TrainingDivergedError(f"training diverged: the parameters are not finite (learning_rate="
                                    f"{cfg['learning_rate']:g} is likely too large)")
    return P2LModel(models=votes.models, loss=loss, encoder=encoder, config=cfg_out,
                    params=jax.tree_util.tree_map(jnp.asarray, best_params),
                    stats=jax.tree_util.tree_map(jnp.asarray, stats), history=history)


class DeltaL2Choice(NamedTuple):
    """The residual head's L2 strength chosen by K-fold cross-validation over prompts (`choose_delta_l2`).

    Attributes:
        chosen: the grid value with the lowest mean validation NLL.
        grid: the candidate strengths [G].
        fold_nll: float64[K, G] the best-epoch validation NLL of each fold and strength.
        mean_nll: float64[G] their vote-weighted mean over the folds.
        global_nll: float64[K] each fold's prompt-blind (global fit) validation NLL.
    """

    chosen: float
    grid: tuple[float, ...]
    fold_nll: np.ndarray
    mean_nll: np.ndarray
    global_nll: np.ndarray


def choose_delta_l2(
    key: jax.Array, features: Any, votes: Votes, grid: Sequence[float], *, folds: int = 5,
    **train_kwargs: Any,
) -> DeltaL2Choice:
    r"""Choose the residual head's `delta_l2` by K-fold cross-validation over PROMPTS.

    The distinct prompts are split at random into `folds` parts; for each part, `train_p2l(key_f, features,
    votes, delta_l2=grid, heldout_prompts=part, ...)` trains the whole grid at once on the other parts, each
    strength early-stopped on a validation split of THOSE parts (`val_fraction` of their prompts), and
    reports each strength's NLL on the held-out part at its best epoch (`history["delta_l2_heldout_nll"]`):
    the held-out part steers neither training nor early stopping, so its NLL is an honest estimate. The
    chosen strength minimises the vote-weighted mean over the folds: every prompt is held out once, so the
    choice does not rest on one small validation split. Train the final head with
    `train_p2l(key, ..., delta_l2=choice.chosen)`.

    Args:
        features, votes: as `train_p2l`.
        grid: candidate L2 strengths (>= 0).
        folds: K >= 2.
        key: PRNG key of the fold assignment and of each fold's training (`fold_in(key, f)`).
        **train_kwargs: other `train_p2l` options (loss, learning_rate, max_epochs, patience, `val_fraction`
            of each training split held out for early stopping, default 0.1, ...).

    Returns:
        `DeltaL2Choice`.

    Example:
        >>> choice = choose_delta_l2(jax.random.key(0), feats, votes, (1e-3, 1e-2, 1e-1, 1.0), folds=5)       # doctest: +SKIP
        >>> model = train_p2l(jax.random.key(1), feats, votes, delta_l2=choice.chosen)       # doctest: +SKIP
    """
    if not isinstance(votes, Votes) or votes.prompt is None:
        raise ValueError("votes must be a jaxrank.Votes with prompts")
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ValueError(f"folds must be an int >= 2, got {folds!r}")
    for name in ("delta_l2", "val_prompts", "heldout_prompts", "checkpoint_dir", "resume"):
        if name in train_kwargs:
            raise ValueError(f"choose_delta_l2 sets {name} itself; do not pass it")
    grid = tuple(float(v) for v in grid)
    if not grid or not all(math.isfinite(v) and v >= 0 for v in grid):
        raise ValueError(f"grid must be a non-empty sequence of finite numbers >= 0, got {grid!r}")
    present = np.unique(votes.prompt)
    if present.size < folds:
        raise ValueError(f"folds={folds} needs at least as many prompts, the votes have {present.size}")
    k_folds, k_train = jax.random.split(key)
    order = present[np.asarray(jax.random.permutation(k_folds, present.size))]
    parts = np.array_split(order, folds)
    fold_nll = np.zeros((folds, len(grid)))
    weights = np.zeros(folds)
    global_nll = np.zeros(folds)
    rows = votes.rows(merge=False)
    vote_weight = np.bincount(np.asarray(votes.prompt)[np.asarray(rows.row_vote)], weights=np.asarray(rows.count),
                              minlength=votes.num_prompts)
    for f, part in enumerate(parts):
        model = train_p2l(jax.random.fold_in(k_train, f), features, votes, delta_l2=grid, heldout_prompts=part,
                          **train_kwargs)
        fold_nll[f] = [math.nan if v is None else v for v in model.history["delta_l2_heldout_nll"]]
        global_nll[f] = model.history["baseline_heldout_nll"]
        weights[f] = vote_weight[part].sum()
    mean = (weights[:, None] * fold_nll).sum(axis=0) / weights.sum()
    return DeltaL2Choice(chosen=grid[int(np.nanargmin(mean))], grid=grid, fold_nll=fold_nll, mean_nll=mean,
                         global_nll=global_nll)


# --------------------------------------------------------------------------------------------------
# Save / load


def save_p2l(model: P2LModel, path: str | os.PathLike, *, force: bool = False) -> pathlib.Path:
    """Save a `P2LModel` (parameters, feature statistics, models, loss, encoder, config, history) with orbax.

    Args:
        model: the trained model.
        path: a new directory (`force=True` replaces an existing one).
        force: overwrite.

    Returns:
        The absolute path written.

    Example:
        >>> save_p2l(model, "runs/p2l")          # doctest: +SKIP
        >>> model2 = load_p2l("runs/p2l")        # doctest: +SKIP
    """
    from jaxrank.checkpoint import flat_leaves, save_state

    if not isinstance(model, P2LModel):
        raise TypeError(f"model must be a P2LModel, got {type(model).__name__}")
    meta = {"kind": "jaxrank.p2l", "models": list(model.models), "loss": model.loss, "encoder": model.encoder,
            "config": model.config, "history": model.history}
    return save_state(path, {"params": flat_leaves(model.params), "stats": flat_leaves(model.stats)}, metadata=meta, force=force)


def load_p2l(path: str | os.PathLike) -> P2LModel:
    """Restore what `save_p2l` wrote, bit for bit."""
    from jaxrank.checkpoint import restore_state, unflat_leaves

    state, meta = restore_state(path)
    if meta.get("kind") != "jaxrank.p2l":
        raise ValueError(f"{path} is not a jaxrank P2L checkpoint (kind={meta.get('kind')!r})")
    config = dict(meta["config"])
    _, params_like, stats_like = nnx.split(_build_head(config), nnx.Param, ...)
    return P2LModel(
        models=tuple(meta["models"]), loss=meta["loss"], encoder=meta.get("encoder"), config=config,
        params=unflat_leaves(state["params"], params_like), stats=unflat_leaves(state["stats"], stats_like),
        history=dict(meta["history"]),
    )


# --------------------------------------------------------------------------------------------------
# Aggregation


@struct.dataclass
class P2LLeaderboard:
    """One leaderboard for a set (distribution) of prompts.

    Attributes:
        models: model names (or `model_0`, ...), static.
        loss: the P2L loss whose outcome probabilities were aggregated, static.
        confidence: central probability of `[lower, upper]`, static.
        ratings: float32[M] Elo-scale ratings `init + scale / ln(base) * theta`.
        theta: float32[M] the fitted coefficient vector (centred, except for the grounded model).
        tie_param: fitted Rao–Kupper alpha of the aggregate (nan for `"bt"`/`"bt-tie"`).
        lower, upper: float32[M] bootstrap percentile interval (equal to `ratings` without bootstrap).
        rank_ub: int32[M] `rank_upper_bound(lower, upper)`.
        samples: float32[R, M] ratings of each bootstrap round (R = 0 without bootstrap).
        converged: bool whether the point fit converged.
    """

    models: tuple[str, ...] = struct.field(pytree_node=False)
    loss: str = struct.field(pytree_node=False)
    confidence: float = struct.field(pytree_node=False)
    ratings: jax.Array
    theta: jax.Array
    tie_param: jax.Array
    lower: jax.Array
    upper: jax.Array
    rank_ub: jax.Array
    samples: jax.Array
    converged: jax.Array

    def to_frame(self):
        """pandas DataFrame `model, rating, lower, upper, rank_ub`, best first."""
        import pandas as pd

        frame = pd.DataFrame({
            "model": list(self.models), "rating": np.asarray(self.ratings, np.float64),
            "lower": np.asarray(self.lower, np.float64), "upper": np.asarray(self.upper, np.float64),
            "rank_ub": np.asarray(self.rank_ub, np.int64),
        })
        return frame.sort_values("rating", ascending=False, kind="stable").reset_index(drop=True)


def _pair_rows(m: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows (a, b, outcome) for every ordered pair i != j and outcome < k, and the flat cell index."""
    i, j = np.nonzero(~np.eye(m, dtype=bool))
    a = np.repeat(i, k).astype(np.int32)
    b = np.repeat(j, k).astype(np.int32)
    o = np.tile(np.arange(k), i.size).astype(np.int32)
    cell = ((a * m + b) * k + o).astype(np.int32)
    return a, b, o, cell


def _prompt_probabilities(beta, alpha, loss: str):
    """float32[P, M, M, K] per-prompt outcome probabilities of every ordered pair (K = 3, or 4 grounded)."""
    delta = beta[:, :, None] - beta[:, None, :]
    ties = LOSS_TIES[loss]
    if loss in ("bt", "bt-tie"):
        return outcome_probabilities(delta, ties="drop")
    tp = alpha[:, None, None]
    theta_b = jnp.broadcast_to(beta[:, None, :], delta.shape) if loss == _GROUNDED else None
    return outcome_probabilities(delta, ties=ties, tie_param=tp, theta_b=theta_b)


def _aggregate_fit(q, x0, a, b, o, cell, *, num_models: int, ties: str, max_iter: int = 100, tol: float = 1e-6):
    """Damped Newton on the cross-entropy `-sum_u Q_u log P(o_u | theta_a, theta_b; alpha) / M(M-1)`.

    A small dense problem (M coefficients, + log alpha): exact Hessian, step `(H + P + lambda I)^{-1} g`
    with `P = 1 1^T / M` on the theta block for the shift-invariant models (the flat direction; theta
    stays centred), halving the step until the objective decreases. Stops when the largest gradient
    entry is below `tol`. `vmap`-safe (bootstrap rounds). Returns `(theta [M], alpha, converged)`.
    """
    m = num_models
    fits = ties in _FITS_TIE
    grounded = ties == _GROUNDED
    w = q.reshape(-1)[cell] / jnp.float32(m * (m - 1))
    dim = m + (1 if fits else 0)
    idx = jnp.stack([a, b, jnp.full_like(a, m)], axis=1)  # [U, 3]: theta_a, theta_b, log alpha slots

    def row_nll(z, out):
        # One vote's -log P in (theta_a, theta_b, log alpha): small elementwise derivatives compile fast.
        tp = jnp.exp(z[2]) if fits else None
        return -outcome_log_probs(z[0] - z[1], out, ties=ties, tie_param=tp, theta_b=z[1] if grounded else None)

    def rows(x):
        xf = jnp.concatenate([x, jnp.zeros((1,), x.dtype)]) if not fits else x
        return xf[idx]  # [U, 3]

    def value(x):
        return jnp.sum(w * jax.vmap(row_nll)(rows(x), o))

    def grad_hess(x):
        z = rows(x)
        g_row = jax.vmap(jax.grad(row_nll))(z, o) * w[:, None]  # [U, 3]
        h_row = jax.vmap(jax.hessian(row_nll))(z, o) * w[:, None, None]  # [U, 3, 3]
        g = jnp.zeros((m + 1,), jnp.float32)
        h = jnp.zeros((m + 1, m + 1), jnp.float32)
        for i in range(3):
            g = g.at[idx[:, i]].add(g_row[:, i])
            for j in range(3):
                h = h.at[idx[:, i], idx[:, j]].add(h_row[:, i, j])
        return g[:dim], h[:dim, :dim]

    proj = jnp.zeros((dim, dim), jnp.float32)
    if not grounded:
        proj = proj.at[:m, :m].set(1.0 / m)
    eye = jnp.eye(dim, dtype=jnp.float32)

    def centre(x):
        return x if grounded else x.at[:m].add(-jnp.mean(x[:m]))

    def body(carry):
        # The gradient and Hessian at x are carried: one evaluation (and one trace) per iteration.
        x, f, g, h, _, it = carry
        ridge = 1e-7 * (jnp.trace(h) / dim + 1e-6)
        step = jnp.linalg.solve(h + proj + ridge * eye, g)
        step = jnp.where(jnp.isfinite(step), step, 0.0)

        def halve(c):
            t, _ = c
            return 0.5 * t, value(centre(x - 0.5 * t * step))

        t, f_new = jax.lax.while_loop(lambda c: (c[1] > f) & (c[0] > 1e-4), halve, (1.0, value(centre(x - step))))
        ok = f_new <= f
        x_new = jnp.where(ok, centre(x - t * step), x)
        g_new, h_new = grad_hess(x_new)
        done = (jnp.max(jnp.abs(g_new)) < tol) | ~ok
        return x_new, jnp.where(ok, f_new, f), g_new, h_new, done, it + 1

    x0 = centre(x0)
    g0, h0 = grad_hess(x0)
    carry = (x0, value(x0), g0, h0, jnp.max(jnp.abs(g0)) < tol, jnp.int32(0))
    x, _, g, _, _, _ = jax.lax.while_loop(lambda c: ~c[4] & (c[5] < max_iter), body, carry)
    converged = jnp.max(jnp.abs(g)) < 10 * tol
    tie = jnp.exp(x[m]) if fits else jnp.asarray(jnp.nan, jnp.float32)
    return x[:m], tie, converged


def _aggregate_start(beta, alpha, pw, loss, num_models):
    probs = _prompt_probabilities(beta, alpha, loss)  # [P, M, M, K]
    ties = "drop" if loss in ("bt", "bt-tie") else LOSS_TIES[loss]
    pw = pw / jnp.sum(pw)
    # Start at the weighted mean coefficients (and mean log alpha): close to the optimum.
    x0 = jnp.concatenate([pw @ beta, (pw @ jnp.log(alpha))[None]])
    if ties not in _FITS_TIE:
        x0 = x0[:num_models]
    return probs, ties, pw, x0


@functools.partial(jax.jit, static_argnames=("loss", "num_models"))
def _aggregate_jit(beta, alpha, pw, a, b, o, cell, *, loss, num_models):
    probs, ties, pw, x0 = _aggregate_start(beta, alpha, pw, loss, num_models)
    q = jnp.einsum("p,pijk->ijk", pw, probs)
    return _aggregate_fit(q, x0, a, b, o, cell, num_models=num_models, ties=ties)


@functools.partial(jax.jit, static_argnames=("loss", "num_models"))
def _bootstrap_jit(theta, beta, alpha, pw, keys, a, b, o, cell, *, loss, num_models):
    """Aggregate ratings of the bootstrap rounds with keys `keys` [R] (a chunk of `jax.random.split(key, R)`)."""
    probs, ties, pw, x0 = _aggregate_start(beta, alpha, pw, loss, num_models)
    p = beta.shape[0]

    def one(k):
        # Resample P prompts with replacement (probability = prompt weight): the counts are multinomial.
        draw = jax.random.choice(k, p, (p,), replace=True, p=pw)
        counts = jnp.zeros((p,), jnp.float32).at[draw].add(1.0)
        qr = jnp.einsum("p,pijk->ijk", counts / p, probs)
        return _aggregate_fit(qr, jnp.concatenate([theta, x0[num_models:]]), a, b, o, cell, num_models=num_models,
                              ties=ties)[0]

    return jax.vmap(one)(keys)


def _aggregate_bootstrap_chunk(num_rounds: int, num_prompts: int, num_models: int, num_outcomes: int) -> int:
    """Bootstrap rounds per compiled call of `aggregate_leaderboard`, after checking that the samples fit.

    A round holds its prompt draws and counts [P], its averaged outcome table [M, M, K] and the Newton state
    ((M + 1)^2 Hessian); what is kept is its ratings [M] (concatenated, then sorted for the quantiles)."""
    from jaxrank.resources import check_memory, chunk_size

    per_round = 4 * (3 * num_prompts + 2 * num_models * num_models * num_outcomes + 6 * (num_models + 1) ** 2) + 64
    size = chunk_size(num_rounds, per_round, max_items=4096)
    per_result = 3 * 4 * num_models + 8
    check_memory(num_rounds * per_result + size * per_round, what=f"the bootstrap samples [R, M] (M = {num_models})",
                 option="bootstrap", value=num_rounds, per_unit=per_result, fixed=size * per_round)
    return size


def aggregate_leaderboard(
    beta: Any,
    tie_param: Any = None,
    *,
    prompt_weights: Any = None,
    loss: str = "bt-tie",
    models: Sequence[str] | None = None,
    bootstrap: int = 0,
    key: jax.Array | None = None,
    confidence: float = 0.95,
    scale: float = 400.0,
    base: float = 10.0,
    init: float = 1000.0,
) -> P2LLeaderboard:
    r"""The leaderboard of a set (distribution) of prompts from their per-prompt P2L coefficients.

    Not the average of the coefficients: P2L's aggregation fits ONE coefficient vector to the
    (weighted) average of the per-prompt outcome probabilities. With `P_p[i, j, k]` the probability of
    outcome k in a vote (i in the `a` slot, j in `b`) under prompt p's coefficients and tie parameter,
    and `Q = sum_p w_p P_p / sum_p w_p`, the aggregate minimises the cross-entropy over all ordered
    model pairs

        theta*, alpha* = argmin  - sum_{i != j} sum_k Q[i, j, k] log P_k(theta_i, theta_j; alpha),

    a Bradley–Terry maximum-likelihood fit with fractional weights `Q` (the same tie model as the loss,
    through `outcome_log_probs`: `"bt"`/`"bt-tie"` predict no ties and fit plain BT; `"rao-kupper"` and
    `"grounded-rao-kupper"` also fit alpha), solved by damped Newton on the exact (M+1)-dimensional
    Hessian from the mean coefficients. When every prompt has the same leaderboard the aggregate is
    that leaderboard. Intervals: `bootstrap` rounds resample the P prompts with replacement
    (probability proportional to `prompt_weights`) and refit, vmapped, in chunks of rounds (memory bounded
    whatever `bootstrap`; a number of rounds whose samples cannot fit is refused with a
    `jaxrank.resources.ResourceError`); the interval is the percentile interval, and
    `rank_ub = rank_upper_bound(lower, upper)`.

    Memory: the per-prompt probabilities are `P * M^2 * K` floats.

    Args:
        beta: float[P, M] per-prompt coefficients (`P2LModel.coefficients`).
        tie_param: float[P] per-prompt alpha (required for `"rao-kupper"`, `"grounded-rao-kupper"`).
        prompt_weights: optional float[P] >= 0 weights of the prompts (a distribution over prompts).
        loss: the P2L loss the coefficients belong to.
        models: optional M model names.
        bootstrap: number of bootstrap rounds over prompts (0: none).
        key: PRNG key of the bootstrap (default `jax.random.key(0)`).
        confidence: central probability of the interval.
        scale, base, init: the Elo scale, as `fit_bradley_terry`.

    Returns:
        `P2LLeaderboard(ratings, theta, tie_param, lower, upper, rank_ub, samples, converged)`.

    Example:
        >>> beta, alpha = model.coefficients(features)                                  # doctest: +SKIP
        >>> aggregate_leaderboard(beta, alpha, loss=model.loss, bootstrap=200).to_frame()  # doctest: +SKIP
    """
    _check_loss(loss)
    beta = _check_features(beta, "beta")
    p, m = beta.shape
    if m < 2:
        raise ValueError(f"beta must have at least 2 models (columns), got {m}")
    if p < 1:
        raise ValueError("beta must have at least 1 prompt (row), got shape (0, M)")
    if loss in _FITS_TIE:
        if tie_param is None:
            raise ValueError(f"tie_param [P] is required for loss={loss!r}")
        alpha = jnp.asarray(tie_param, jnp.float32)
        if alpha.shape != (p,):
            raise ValueError(f"tie_param must have shape [P] = ({p},), got {tuple(alpha.shape)}")
        if _is_concrete(alpha) and not bool(jnp.all(alpha > 0)):
            raise ValueError("tie_param must be > 0 for every prompt")
    else:
        alpha = jnp.ones((p,), jnp.float32)
    if prompt_weights is None:
        pw = jnp.ones((p,), jnp.float32)
    else:
        pw = jnp.asarray(prompt_weights, jnp.float32)
        if pw.shape != (p,):
            raise ValueError(f"prompt_weights must have shape [P] = ({p},), got {tuple(pw.shape)}")
        if _is_concrete(pw):
            pw_np = np.asarray(pw)
            if not np.isfinite(pw_np).all() or (pw_np < 0).any() or pw_np.sum() <= 0:
                raise ValueError("prompt_weights must be finite, >= 0 and not all 0")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0 or bootstrap == 1:
        raise ValueError(f"bootstrap must be 0 or an int >= 2, got {bootstrap!r}")
    if not (isinstance(confidence, (int, float)) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    for name, value in (("scale", scale), ("base", base)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0) or (name == "base" and value == 1):
            raise ValueError(f"{name} must be a finite number > 0{' and != 1' if name == 'base' else ''}, got {value!r}")
    names = tuple(models) if models is not None else tuple(f"model_{i}" for i in range(m))
    if len(names) != m:
        raise ValueError(f"models must name the M = {m} columns of beta, got {len(names)} names")
    k = 4 if loss == _GROUNDED else 3
    a, b, o, cell = (jnp.asarray(x) for x in _pair_rows(m, k))
    same = "bt" if loss == "bt-tie" else loss  # bt and bt-tie predict the same probabilities: one compilation
    theta, tie, ok = _aggregate_jit(beta, alpha, pw, a, b, o, cell, loss=same, num_models=m)
    if bootstrap:
        chunk = _aggregate_bootstrap_chunk(int(bootstrap), p, m, k)
        keys = jax.random.split(key if key is not None else jax.random.key(0), int(bootstrap))
        parts = []
        for start in range(0, int(bootstrap), chunk):  # one compiled shape; Ctrl-C lands between chunks
            kc = keys[start:start + chunk]
            n = kc.shape[0]
            if n < chunk:
                kc = jnp.concatenate([kc, jnp.repeat(kc[-1:], chunk - n, axis=0)])
            parts.append(jax.block_until_ready(
                _bootstrap_jit(theta, beta, alpha, pw, kc, a, b, o, cell, loss=same, num_models=m))[:n])
        samples = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
    else:
        samples = jnp.zeros((0, m), jnp.float32)
    kelo = scale / math.log(base)
    ratings = init + kelo * theta
    samples = init + kelo * samples
    if bootstrap:
        q = jnp.asarray([(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0], jnp.float32)
        lower, upper = jnp.quantile(samples, q, axis=0)
    else:
        lower, upper = ratings, ratings
    return P2LLeaderboard(
        models=names, loss=loss, confidence=float(confidence), ratings=ratings, theta=theta,
        tie_param=tie if loss in _FITS_TIE else jnp.asarray(jnp.nan, jnp.float32), lower=lower, upper=upper,
        rank_ub=rank_upper_bound(lower, upper), samples=samples, converged=ok,
    )


def per_prompt_leaderboards(beta: Any, *, models: Sequence[str], prompt_ids: Sequence[str] | None = None,
                            loss: str = "bt-tie", scale: float = 400.0, base: float = 10.0,
                            init: float = 1000.0):
    """One ranked leaderboard per prompt from P2L coefficients, as one long pandas DataFrame.

    Args:
        beta: float[P, M] per-prompt coefficients (`P2LModel.coefficients(features)[0]`).
        models: the M model names.
        prompt_ids: P prompt ids (default `0..P-1`).
        loss: the P2L loss; every loss but `"grounded-rao-kupper"` (absolute theta) is centred per prompt.
        scale, base, init: the Elo scale of `rating = init + scale / ln(base) * theta`.

    Returns:
        DataFrame with columns `prompt_id, rank, model, rating, theta`: P * M rows, prompts in input order,
        each prompt's models best first (`rank` 1 = best; ties share the better rank).
    """
    import pandas as pd

    b = np.asarray(beta, np.float64)
    if b.ndim != 2 or b.shape[1] != len(models):
        raise ValueError(f"beta must have shape [P, M] with M = {len(models)} models, got {b.shape}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    p, m = b.shape
    ids = [str(i) for i in (prompt_ids if prompt_ids is not None else range(p))]
    if len(ids) != p:
        raise ValueError(f"prompt_ids must name the {p} prompts, got {len(ids)}")
    theta = b if loss == _GROUNDED else b - b.mean(axis=1, keepdims=True)
    ratings = init + scale / math.log(base) * theta
    order = np.argsort(-ratings, axis=1, kind="stable")
    rank = 1 + (ratings[:, None, :] > ratings[:, :, None]).sum(-1)          # [P, M]: models strictly better
    rows = np.repeat(np.arange(p), m)
    cols = order.reshape(-1)
    names = np.asarray(list(models), dtype=object)
    return pd.DataFrame({"prompt_id": np.asarray(ids, dtype=object)[rows], "rank": rank[rows, cols],
                         "model": names[cols], "rating": ratings[rows, cols], "theta": theta[rows, cols]})


# --------------------------------------------------------------------------------------------------
# Held-out evaluation


class VoteNLL(NamedTuple):
    """Negative log-likelihood of each scored vote row (`Votes.rows(merge=False)`: a soft vote is two rows).

    Attributes:
        nll: float64[R] `-log P(outcome)` of each row.
        weight: float64[R] its weight (vote weight x count, x p or 1 - p for a soft vote; 0 for ties under
            `"bt"`).
        prompt: int64[R] the row's prompt (index into the votes' prompt table).
    """

    nll: np.ndarray
    weight: np.ndarray
    prompt: np.ndarray

    def mean(self) -> float:
        """The mean NLL per (weighted) vote, `sum(w * nll) / sum(w)`."""
        total = float(np.sum(self.weight))
        return float(np.sum(self.weight * self.nll) / total) if total > 0 else math.nan


def vote_nll(beta: Any, tie_param: Any, votes: Votes, *, loss: str = "bt-tie") -> VoteNLL:
    r"""Per-vote negative log-likelihood of `votes` under per-prompt coefficients (the P2L losses' likelihood).

    Each vote is scored with its prompt's row of `beta` (or one leaderboard `[M]` for every prompt: the
    prompt-blind baseline). A soft vote (`p_a`) scores its cross-entropy `-(p log P(a) + (1 - p) log P(b))`
    as two weighted rows; `VoteNLL.mean()` is then `p2l_loss` over the votes.

    Args:
        beta: float[P, M] coefficients per prompt of `votes` (rows indexed by `votes.prompt`), or float[M].
        tie_param: float[P] or scalar alpha for `"rao-kupper"`/`"grounded-rao-kupper"`; None otherwise.
        votes: `jaxrank.Votes` with prompts.
        loss: one of `LOSSES`.

    Returns:
        `VoteNLL(nll [R], weight [R], prompt [R])`.

    Example:
        >>> nll = vote_nll(model.coefficients(test_features)[0], None, test_votes, loss="bt-tie")  # doctest: +SKIP
    """
    _check_loss(loss)
    if not isinstance(votes, Votes):
        raise TypeError(f"votes must be a jaxrank.Votes, got {type(votes).__name__}")
    if votes.prompt is None:
        raise ValueError("votes have no prompts: vote_nll scores each vote with its prompt's coefficients")
    beta_np = np.asarray(beta, np.float32)
    if beta_np.ndim == 1:
        beta_np = np.broadcast_to(beta_np, (max(votes.num_prompts, 1), beta_np.shape[0]))
    beta_j = _check_features(beta_np, "beta")
    if beta_j.shape[1] != votes.num_models:
        raise ValueError(f"beta must have M = {votes.num_models} columns (the votes' models), got {beta_j.shape[1]}")
    rows = _training_rows(votes)
    if rows.num_rows and int(rows.prompt.max()) >= beta_j.shape[0]:
        raise ValueError(f"votes.prompt indexes prompt {int(rows.prompt.max())} but beta has {beta_j.shape[0]} rows")
    alpha = None
    if loss in _FITS_TIE:
        if tie_param is None:
            raise ValueError(f"tie_param is required for loss={loss!r}")
        alpha = np.broadcast_to(np.asarray(tie_param, np.float32), (beta_j.shape[0],))
        alpha = jnp.asarray(alpha)[rows.prompt]
    idx = jnp.asarray(rows.prompt)
    bt = beta_j[idx]
    a, b, o = jnp.asarray(rows.a), jnp.asarray(rows.b), jnp.asarray(rows.outcome)
    _check_loss_values(votes.num_models, a, b, o, alpha, None)
    beta_a = jnp.take_along_axis(bt, a[:, None], axis=1)[:, 0]
    beta_b = jnp.take_along_axis(bt, b[:, None], axis=1)[:, 0]
    lp = outcome_log_probs(beta_a - beta_b, o, ties=LOSS_TIES[loss], tie_param=alpha,
                           theta_b=beta_b if loss == _GROUNDED else None)
    weight = rows.weight.astype(np.float64)
    if loss == "bt":
        weight = np.where(rows.outcome >= TIE, 0.0, weight)
    nll = np.where(weight > 0, -np.asarray(lp, np.float64), 0.0)  # a dropped row's -log P may be inf
    return VoteNLL(nll, weight, rows.prompt.astype(np.int64))


class HeldoutComparison(NamedTuple):
    """Mean held-out NLL per vote of a model and a baseline, and a prompt-bootstrap interval of the difference.

    Attributes:
        nll, baseline_nll: mean NLL per vote.
        difference: `nll - baseline_nll` (negative: the model predicts the held-out votes better).
        lower, upper: the percentile bootstrap interval of `difference` (prompts resampled).
        confidence: its central probability.
        num_prompts: distinct prompts scored.
        num_votes: total weight of the scored votes.
        rounds: bootstrap rounds.
    """

    nll: float
    baseline_nll: float
    difference: float
    lower: float
    upper: float
    confidence: float
    num_prompts: int
    num_votes: float
    rounds: int


@functools.partial(jax.jit, static_argnames=("rounds",))
def _prompt_bootstrap(key, s, w, *, rounds):
    """float32[rounds] `sum_p c_p s_p / sum_p c_p w_p`, c ~ Multinomial(P, uniform) per round."""
    p = s.shape[0]

    def one(k):
        counts = jnp.zeros((p,), jnp.float32).at[jax.random.randint(k, (p,), 0, p)].add(1.0)
        return jnp.sum(counts * s) / jnp.maximum(jnp.sum(counts * w), jnp.finfo(jnp.float32).tiny)

    return jax.vmap(one)(jax.random.split(key, rounds))


def compare_heldout(
    key: jax.Array, model: VoteNLL, baseline: VoteNLL, *, rounds: int = 2000, confidence: float = 0.95
) -> HeldoutComparison:
    r"""Held-out NLL per vote of a model against a baseline, with a bootstrap over PROMPTS of the difference.

    The statistic is the ratio `sum_r w_r (nll_r - nll0_r) / sum_r w_r` over the scored rows. Votes of one
    prompt are not independent (they share the prompt's effect), so the bootstrap resamples the distinct
    prompts with replacement (each with all its votes), `rounds` times, and reports the percentile
    interval. Coverage tested on simulated prompt effects with a known mean difference.

    Args:
        key: PRNG key of the bootstrap.
        model, baseline: `vote_nll` of the same votes (same weights and prompts, row for row).
        rounds: bootstrap rounds (>= 100).
        confidence: central probability of the interval.

    Returns:
        `HeldoutComparison`.

    Example:
        >>> cmp = compare_heldout(jax.random.key(0), vote_nll(beta, None, test, loss="bt-tie"),
        ...                       vote_nll(global_theta, None, test, loss="bt-tie"))           # doctest: +SKIP
    """
    if not isinstance(model, VoteNLL) or not isinstance(baseline, VoteNLL):
        raise TypeError("model and baseline must be VoteNLL (from vote_nll)")
    if model.nll.shape != baseline.nll.shape or not (np.array_equal(model.prompt, baseline.prompt)
                                                   and np.allclose(model.weight, baseline.weight)):
        raise ValueError("model and baseline must score the same votes (vote_nll of one Votes, same loss)")
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 100:
        raise ValueError(f"rounds must be an int >= 100, got {rounds!r}")
    if not (isinstance(confidence, (int, float)) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    w = model.weight
    if not np.isfinite(model.nll).all() or not np.isfinite(baseline.nll).all():
        raise ValueError("the NLLs hold NaN or infinite values")
    if not (w > 0).any():
        raise ValueError("no scored vote with positive weight")
    keep = w > 0
    prompts, inv = np.unique(model.prompt[keep], return_inverse=True)
    d = model.nll[keep] - baseline.nll[keep]
    s_p = np.bincount(inv, weights=w[keep] * d, minlength=prompts.size)
    w_p = np.bincount(inv, weights=w[keep], minlength=prompts.size)
    # Centre before float32 (the rounds' ratios are then differences from the point estimate).
    diff = float(s_p.sum() / w_p.sum())
    scale = w_p.mean()
    samples = np.asarray(_prompt_bootstrap(key, jnp.asarray((s_p - diff * w_p) / scale, jnp.float32),
                                           jnp.asarray(w_p / scale, jnp.float32), rounds=int(rounds)), np.float64) + diff
    lo, hi = np.quantile(samples, [(1 - confidence) / 2, (1 + confidence) / 2])
    return HeldoutComparison(nll=model.mean(), baseline_nll=baseline.mean(), difference=diff, lower=float(lo),
                             upper=float(hi), confidence=float(confidence), num_prompts=int(prompts.size),
                             num_votes=float(w.sum()), rounds=int(rounds))


class CrossFitEvaluation(NamedTuple):
    """Cross-fitted held-out evaluation of P2L against the global fit (`crossfit_heldout`).

    Attributes:
        comparison: `HeldoutComparison` of the pooled out-of-fold NLLs (every prompt scored once, by the
            models fit without it), its interval a bootstrap over ALL the prompts.
        model, baseline: the pooled `VoteNLL` rows of the P2L head and of the global fit (row for row the
            same votes: `vote_nll` of each fold's held-out votes, concatenated in fold order).
        fold: int64[P] the fold of each prompt of the votes' prompt table (-1: a prompt without votes).
        beta: float32[P, M] each prompt's out-of-fold coefficients (its fold's head; 0 for prompts
            without votes).
        global_theta: float32[K, M] each fold's global fit (of the other folds' votes).
        fold_difference: float64[K] each fold's mean difference `model - baseline` on its own votes.
        chosen_delta_l2: per fold, the residual head's chosen L2 (None for a plain head).
        best_epoch: per fold, the head's best epoch (0: the start, i.e. the global fit, was kept).
    """

    comparison: HeldoutComparison
    model: VoteNLL
    baseline: VoteNLL
    fold: np.ndarray
    beta: np.ndarray
    global_theta: np.ndarray
    fold_difference: np.ndarray
    chosen_delta_l2: tuple
    best_epoch: tuple


def crossfit_heldout(
    key: jax.Array, features: Any, votes: Votes, *, folds: int = 5, loss: str = "bt-tie", rounds: int = 2000,
    confidence: float = 0.95, refit_base: bool = True, inner_folds: int | None = None, **train_kwargs: Any,
) -> CrossFitEvaluation:
    r"""Cross-fitted K-fold-by-prompt held-out NLL of a P2L head against the global Bradley–Terry fit.

    The distinct prompts are split at random into `folds` parts. For each part, the global fit
    (`fit_bradley_terry` of the OTHER parts' votes, maximum likelihood, ties as `loss` treats them) and the
    head (`train_p2l(key_f, features, other parts' votes, loss=loss, **train_kwargs)`: its early stopping and a
    residual head's `delta_l2` choice use a validation split of the training prompts only) are fit
    without the part, and both score the part's votes (`vote_nll`). Every prompt is held out exactly
    once, so the pooled difference uses all the votes, and its interval (`compare_heldout`) resamples all
    the prompts: K times the prompts of one 1/K split, at the cost of K trainings. The folds' models
    differ, so the pooled number evaluates the training PROCEDURE, not one fitted head (cross-fitting).

    A residual head (`delta_l2` given) is `beta = beta_global + Delta(prompt)`; `train_p2l` fits its
    `beta_global` on the training split WITHOUT its validation prompts. With `refit_base` (default) the
    head's base is then replaced by the fold's global fit of all its training votes (the baseline itself):
    `beta = theta_fold + centre(Delta(prompt))`, so a head that keeps its start (best epoch 0, or an
    uninformative representation) scores exactly as the global fit, and the comparison isolates `Delta`.

    Args:
        key: PRNG key: the fold assignment, each fold's training (`fold_in(key, f)`) and the bootstrap.
        features: float[P, D] prompt features, rows indexed by `votes.prompt` (as `train_p2l`).
        votes: `jaxrank.Votes` with prompts.
        folds: K >= 2 (at most the number of prompts with votes).
        loss: `"bt"` or `"bt-tie"` (a global fit without a tie parameter to carry per fold).
        rounds, confidence: of the prompt bootstrap (`compare_heldout`).
        refit_base: a residual head's base replaced by the fold's global fit (see above); no effect on a
            plain head.
        inner_folds: None: a residual head's `delta_l2` grid is chosen by `train_p2l` on its one validation
            split. An int >= 2: chosen by `choose_delta_l2` (K-fold over the TRAINING fold's prompts, nested
            cross-validation; `inner_folds` more trainings per fold), then the head is trained with the chosen
            strength (its validation split still stops it early and keeps the start as a candidate).
        **train_kwargs: other `train_p2l` options (`delta_l2`, `learning_rate`, `val_fraction`, ...); not
            `val_prompts`, `checkpoint_dir` or `resume`.

    Returns:
        `CrossFitEvaluation`.

    Example:
        >>> ev = crossfit_heldout(jax.random.key(0), feats, votes, folds=5, delta_l2=(1e-2, 1e-1, 1.0),
        ...                       val_fraction=0.2)                                             # doctest: +SKIP
        >>> ev.comparison.difference, ev.comparison.lower, ev.comparison.upper                  # doctest: +SKIP
    """
    if loss not in ("bt", "bt-tie"):
        raise ValueError(f"crossfit_heldout supports loss 'bt' or 'bt-tie', got {loss!r}")
    if not isinstance(votes, Votes) or votes.prompt is None:
        raise ValueError("votes must be a jaxrank.Votes with prompts")
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ValueError(f"folds must be an int >= 2, got {folds!r}")
    for name in ("val_prompts", "checkpoint_dir", "resume", "stop_after"):
        if name in train_kwargs:
            raise ValueError(f"crossfit_heldout does not take {name} (each fold trains from scratch)")
    if inner_folds is not None:
        if isinstance(inner_folds, bool) or not isinstance(inner_folds, (int, np.integer)) or inner_folds < 2:
            raise ValueError(f"inner_folds must be None or an int >= 2, got {inner_folds!r}")
        if train_kwargs.get("delta_l2") is None:
            raise ValueError("inner_folds chooses a residual head's delta_l2: pass a delta_l2 grid")
    x_np = np.asarray(_check_features(features, "features"))
    present = np.unique(votes.prompt)
    if present.size < folds:
        raise ValueError(f"folds={folds} needs at least as many prompts with votes, the votes have {present.size}")
    k_folds, k_train, k_boot = jax.random.split(key, 3)
    order = present[np.asarray(jax.random.permutation(k_folds, present.size))]
    fold = np.full(votes.num_prompts, -1, np.int64)
    for f, part in enumerate(np.array_split(order, folds)):
        fold[part] = f
    vote_fold = fold[np.asarray(votes.prompt)]
    beta_all = np.zeros((votes.num_prompts, votes.num_models), np.float32)
    thetas = np.zeros((folds, votes.num_models), np.float32)
    model_parts, base_parts, fold_diff, chosen, best_epoch = [], [], np.zeros(folds), [], []
    for f in range(folds):
        train, test = votes.subset(vote_fold != f), votes.subset(vote_fold == f)
        thetas[f] = np.asarray(fit_bradley_terry(train, ties=LOSS_TIES[loss]).theta, np.float32)
        k_f = jax.random.fold_in(k_train, f)
        opts = dict(train_kwargs)
        if inner_folds is not None:
            grid = opts.pop("delta_l2")
            inner = {k: v for k, v in opts.items() if k != "val_fraction"}
            opts["delta_l2"] = choose_delta_l2(jax.random.fold_in(k_f, 1), x_np, train, np.atleast_1d(grid).tolist(),
                                               folds=inner_folds, loss=loss, **inner).chosen
        head = train_p2l(k_f, x_np, train, loss=loss, **opts)
        part = fold == f
        beta_all[part] = np.asarray(head.coefficients(x_np[part])[0])
        module = head.head()
        if refit_base and module.base is not None:
            base = np.asarray(module.base[...], np.float32)
            shift = thetas[f] - (base - base.mean() if module.centre else base)
            beta_all[part] += shift
        m, b0 = vote_nll(beta_all, None, test, loss=loss), vote_nll(thetas[f], None, test, loss=loss)
        model_parts.append(m)
        base_parts.append(b0)
        fold_diff[f] = m.mean() - b0.mean()
        chosen.append(head.config.get("chosen_delta_l2"))
        best_epoch.append(int(head.history["best_epoch"]))
    pooled = [VoteNLL(*(np.concatenate([getattr(p, name) for p in parts]) for name in VoteNLL._fields))
              for parts in (model_parts, base_parts)]
    cmp = compare_heldout(k_boot, pooled[0], pooled[1], rounds=rounds, confidence=confidence)
    return CrossFitEvaluation(comparison=cmp, model=pooled[0], baseline=pooled[1], fold=fold, beta=beta_all,
                              global_theta=thetas, fold_difference=fold_diff, chosen_delta_l2=tuple(chosen),
                              best_epoch=tuple(best_epoch))
