"""Prompt features: one vector per prompt from a pretrained model running in JAX.

`prompt_features(prompts, encoder=...)` → float32 `[num_prompts, hidden]`.

- A causal LM (the default, SmolLM2-135M-Instruct, or anything `jaxrank.lm.load_model` accepts):
  the final hidden state (after the final norm, `CausalLM.hidden_states`) at the **last real
  token** of the prompt, the prompt rendered exactly as the prioritization pipeline renders it
  (the chat template with the generation prompt appended, so the last token is the assistant-turn
  marker that the model reads right before it answers). Prompts longer than `max_length` keep
  their end (left truncation; a leading BOS is re-attached).
- A sentence encoder (all-MiniLM-L6-v2, `jaxrank.lm.bert`): the pooling of its
  sentence-transformers directory (mean over the real tokens, then L2 normalisation), the text
  tokenized as BERT reads it (`[CLS] text [SEP]`, no chat template, right truncation).

Prompts are sorted by token length, batched, right-padded to power-of-two lengths (buckets) and a
fixed batch size, so one jitted function compiles once per bucket shape; the vectors come back in
input order. Positions come from the attention mask, so padding changes no vector.

With `cache_dir`, the matrix is stored as `.npy` under a key hashing the encoder's identity (file
sizes and modification times for a name or path; the weights and tokenizer for a loaded object),
the options and the prompt texts; a later call with the same key loads it instead of running the
model. An existing entry is never overwritten.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrank.lm import bert as _bert
from jaxrank.lm.pipeline import (
    ProgressFn,
    TruncationWarning,
    merge_model,
    shard_rows,
    ModelSide,
    truncate_left,
    bucket_length,
    length_batches,
    pad_batch,
)
from jaxrank.lm.prompts import Prompt
from jaxrank.sharding import to_host

#: Bumped when the stored features of the same key would change (pooling, formatting).
CACHE_FORMAT = 1
DEFAULT_ENCODER = "smollm2-135m-instruct"


# --------------------------------------------------------------------------------------------
# Arguments


def _check_prompts(prompts: Any) -> list[str]:
    if isinstance(prompts, (str, bytes)):
        raise ValueError("prompts must be a list of strings, got a single string (wrap it in a list)")
    try:
        items = list(prompts)
    except TypeError:
        raise ValueError(f"prompts must be a list of strings, got {type(prompts).__name__}") from None
    if not items:
        raise ValueError("prompts is empty; expected at least one prompt string")
    texts = []
    for i, p in enumerate(items):
        if isinstance(p, Prompt):
            p = p.text
        if not isinstance(p, str):
            raise ValueError(f"prompts[{i}] must be a str, got {type(p).__name__}")
        texts.append(p)
    return texts


def _check_count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# Which encoder


def _encoder_kind_of_path(path: pathlib.Path) -> str:
    """"bert" for a BERT (sentence-transformers or plain) directory, else "causal"."""
    config = path / "config.json"
    if path.is_dir() and (path / "modules.json").is_file():
        return "bert"  # a sentence-transformers directory
    if path.is_dir() and config.is_file():
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (OSError, ValueError):
            model_type = None
        if model_type in _bert.BERT_MODEL_TYPES:
            return "bert"
    return "causal"


def _resolve_name(encoder: str | os.PathLike) -> tuple[str, pathlib.Path]:
    """(kind, local path) of an encoder given by name or path, without loading it."""
    from jaxrank.lm.loading import NAMED_MODELS, resolve_model_path

    if isinstance(encoder, str) and encoder.lower() in _bert.NAMED_ENCODERS:
        return "bert", _bert.resolve_encoder_path(encoder)
    if isinstance(encoder, str) and encoder.lower() in NAMED_MODELS:
        return "causal", resolve_model_path(encoder)[0]
    path = pathlib.Path(encoder).expanduser()
    if not path.exists():
        names = ", ".join(repr(n) for n in (*NAMED_MODELS, *_bert.NAMED_ENCODERS))
        raise ValueError(
            f"encoder {str(encoder)!r} is neither a known name ({names}) nor an existing path "
            "(a Hugging Face directory, a .gguf file or a sentence-transformers directory)"
        )
    return _encoder_kind_of_path(path), path


def _kind_of_object(encoder: Any) -> str:
    if isinstance(encoder, _bert.LoadedEncoder):
        return "bert"
    if getattr(encoder, "tokenizer", None) is not None and hasattr(getattr(encoder, "model", None), "hidden_states"):
        return "causal"
    raise ValueError(
        "encoder must be a name, a path, a jaxrank.lm.LoadedModel (load_model) or a "
        f"jaxrank.lm.LoadedEncoder (load_encoder), got {type(encoder).__name__}"
    )


def _load(kind: str, path: pathlib.Path) -> Any:
    if kind == "bert":
        return _bert.load_encoder(path)
    from jaxrank.lm.loading import load_model

    return load_model(path)


# --------------------------------------------------------------------------------------------
# Cache keys


def _files_fingerprint(path: pathlib.Path) -> list:
    """(relative name, size, mtime) of the file, or of every file under the directory."""
    path = path.resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    out = []
    for f in files:
        st = f.stat()
        out.append([str(f.relative_to(path)) if path.is_dir() else f.name, st.st_size, st.st_mtime_ns])
    return out


def _digest_weights(model: Any) -> str:
    """blake2b of every parameter (path, dtype, shape, bytes) of an nnx module."""
    h = hashlib.blake2b(digest_size=20)
    state = nnx.state(model, nnx.Param)
    for path, leaf in sorted(
        ((tuple(map(str, p)), x) for p, x in jax.tree_util.tree_flatten_with_path(state)[0]),
        key=lambda item: item[0],
    ):
        arr = to_host(leaf)
        h.update(repr((path, str(arr.dtype), arr.shape)).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _digest_tokenizer(tokenizer: Any) -> str:
    h = hashlib.blake2b(digest_size=20)
    h.update(type(tokenizer).__name__.encode())
    h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(str(getattr(tokenizer, "chat_template", None)).encode())
    h.update(str(getattr(tokenizer, "do_lower_case", None)).encode())
    return h.hexdigest()


def _object_identity(kind: str, encoder: Any) -> dict[str, Any]:
    model = encoder.model
    return {
        "kind": kind,
        "class": type(model).__name__,
        "config": repr(getattr(encoder, "config", None) or getattr(model, "config", None)),
        "dtype": str(getattr(model, "dtype", None)),
        "chat_template": str(getattr(encoder, "chat_template", None)),
        "weights": _digest_weights(model),
        "tokenizer": _digest_tokenizer(encoder.tokenizer),
    }


def _cache_key(identity: dict[str, Any], options: dict[str, Any], texts: list[str]) -> tuple[str, dict[str, Any]]:
    prompts = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8", errors="surrogatepass")
        prompts.update(len(b).to_bytes(8, "little"))
        prompts.update(b)
    meta = {
        "format": CACHE_FORMAT,
        "encoder": identity,
        "options": options,
        "num_prompts": len(texts),
        "prompts_sha256": prompts.hexdigest(),
    }
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
    return key, meta


def _cache_paths(cache_dir: pathlib.Path, key: str) -> tuple[pathlib.Path, pathlib.Path]:
    return cache_dir / f"features-{key[:40]}.npy", cache_dir / f"features-{key[:40]}.json"


def _cache_load(cache_dir: pathlib.Path, key: str, meta: dict[str, Any]) -> np.ndarray | None:
    npy, meta_file = _cache_paths(cache_dir, key)
    if not (npy.is_file() and meta_file.is_file()):
        return None
    try:
        stored = json.loads(meta_file.read_text())
        if stored != meta:
            return None
        feats = np.load(npy, allow_pickle=False)
    except (OSError, ValueError) as err:
        warnings.warn(f"feature cache entry {npy} is unreadable ({err}); recomputing", stacklevel=3)
        return None
    if feats.dtype != np.float32 or feats.ndim != 2 or feats.shape[0] != meta["num_prompts"]:
        warnings.warn(f"feature cache entry {npy} has shape {feats.shape} {feats.dtype}; recomputing", stacklevel=3)
        return None
    return feats


def _exclusive_write(target: pathlib.Path, write: Callable[[Any], None]) -> bool:
    """Write `target` atomically (`jaxrank.outputs.write_file`) only if it does not exist; False if it did."""
    from jaxrank.outputs import Output, OutputExistsError, write_file

    def fill(tmp: pathlib.Path) -> None:
        with open(tmp, "wb") as f:
            write(f)

    try:
        write_file(Output(target.absolute(), label="feature cache entry"), fill)  # never overwrites an entry
    except OutputExistsError:
        return False
    return True


def _cache_store(cache_dir: pathlib.Path, key: str, meta: dict[str, Any], feats: np.ndarray) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    npy, meta_file = _cache_paths(cache_dir, key)
    if meta_file.exists() or npy.exists():
        return  # another entry (or a concurrent writer) holds this name; leave it alone
    if _exclusive_write(npy, lambda f: np.save(f, feats, allow_pickle=False)):
        _exclusive_write(meta_file, lambda f: f.write(json.dumps(meta, sort_keys=True, indent=1).encode()))


# --------------------------------------------------------------------------------------------
# Jitted feature functions, cached per graph; jit then caches per bucket shape


@functools.lru_cache(maxsize=16)
def last_token_fn(graph: Any):
    def features(state, ids, mask):
        model = merge_model(graph, state)
        h, _ = model.hidden_states(ids, attention_mask=mask)  # [B, T, d] float32, final norm applied
        last = jnp.sum(mask, axis=-1, dtype=jnp.int32) - 1  # right padding: the last real token
        return jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]

    return jax.jit(features)


def _rows_per_call(config: Any, batch_size: int, length: int, multiple: int) -> int:
    """Rows per forward pass at this bucket length: `batch_size`, or fewer when the memory plan says that
    many rows of `length` tokens do not fit (a power of two, a multiple of the mesh's data axis). A feature
    vector does not depend on the rows beside it, so long buckets simply run in smaller batches. Raises
    `ResourceError` naming `max_length` when not even one row fits."""
    from jaxrank.lm.memory import check_forward
    from jaxrank.resources import ResourceError

    if config is None:
        return batch_size
    try:
        check_forward(config, batch_size, length, what="prompt features")
        return batch_size
    except ResourceError as err:
        if err.option != "batch_size" or err.largest is None or err.largest < multiple:
            raise
        rows = 1 << (int(err.largest).bit_length() - 1)
        return max(multiple, rows // multiple * multiple)


@dataclasses.dataclass(frozen=True)
class FeaturePlan:
    """What `prompt_features` will compute, known once the prompts are tokenized and before the encoder runs
    (`on_plan`): prompts, real tokens, padded positions (batches padded to `batch_size` rows and to
    power-of-two lengths), batches, distinct padded shapes (programs compiled on a first run), and the
    encoder's parameters and width (for `jaxrank.lm.cost` estimates)."""

    prompts: int
    tokens: int
    padded_positions: int
    batches: int
    shapes: int
    parameters: int
    hidden_size: int
    batch_size: int


def _run_batches(
    fn: Callable,
    state: Any,
    rows: list[list[int]],
    *,
    pad_id: int,
    batch_size: int,
    limit: int,
    mesh: Any,
    progress: ProgressFn | None,
    config: Any = None,
    on_plan: Callable[[FeaturePlan], None] | None = None,
) -> np.ndarray:
    out: np.ndarray | None = None
    if on_plan is not None:
        batches = length_batches([len(r) for r in rows], batch_size)
        lengths = [bucket_length(max(len(rows[i]) for i in b), maximum=limit) for b in batches]
        on_plan(FeaturePlan(
            prompts=len(rows), tokens=sum(map(len, rows)), padded_positions=batch_size * sum(lengths),
            batches=len(batches), shapes=len(set(lengths)),
            parameters=int(sum(x.size for x in jax.tree.leaves(state))),
            hidden_size=int(getattr(config, "hidden_size", 0) or 0), batch_size=batch_size,
        ))
    if progress is not None:
        progress("features", 0, len(rows), 0)
    multiple = 1 if mesh is None else int(mesh.shape.get("data", 1))
    for batch in length_batches([len(r) for r in rows], batch_size):
        length = bucket_length(max(len(rows[i]) for i in batch), maximum=limit)
        per_call = _rows_per_call(config, batch_size, length, multiple)
        for start in range(0, len(batch), per_call):
            part = batch[start:start + per_call]
            ids, mask = pad_batch([rows[i] for i in part], length, per_call, pad_id)
            vectors = to_host(fn(state, *shard_rows(mesh, ids, mask))).astype(np.float32, copy=False)
            if out is None:
                out = np.empty((len(rows), vectors.shape[-1]), np.float32)
            out[part] = vectors[: len(part)]
            if progress is not None:
                progress("features", len(part), len(rows), int(mask[: len(part)].sum()))
    assert out is not None
    return out


def _replicated(state: Any, mesh: Any) -> Any:
    if mesh is None or state is None:
        return state
    return jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def _warn_truncated(count: int, total: int, limit: int, where: str) -> None:
    if count:
        warnings.warn(
            f"{count} of {total} prompts are longer than {limit} tokens and were truncated {where}",
            TruncationWarning,
            stacklevel=4,
        )


def prompt_token_ids(loaded: Any, prompts: Sequence[str], *, max_length: int = 256,
                     chat_template: bool = True) -> tuple[list[list[int]], int]:
    """The token ids a causal LM reads for each prompt in `prompt_features`, and the padding id.

    Each prompt rendered as `prompt_features` renders it (the chat template with the generation prompt, or
    the raw text), longer than `max_length` (capped at the model's context) left-truncated with a leading BOS
    kept, and a `TruncationWarning` when any was cut. Its last token is the one whose final hidden state is
    the prompt's feature vector (what `jaxrank.p2l_finetune` trains on).

    Returns:
        `(rows, pad_id)`: one list of ids per prompt, and the id to right-pad them with.
    """
    texts = _check_prompts(prompts)
    max_length = _check_count(max_length, "max_length", 2)
    side = ModelSide(loaded, "encoder")
    limit = max_length if side.context is None else min(max_length, side.context)
    rows, truncated = [], 0
    for i, text in enumerate(texts):
        ids = side.prompt_ids(text) if chat_template else list(side.tokenizer.encode(text))
        if not ids:
            raise ValueError(f"prompts[{i}] gives no tokens (an empty prompt without chat_template)")
        if len(ids) > limit:
            truncated += 1
            ids = truncate_left(ids, limit, side.bos)
        rows.append(ids)
    _warn_truncated(truncated, len(texts), limit, "from the start (the end of the prompt is kept)")
    return rows, side.pad


def _causal_features(loaded, texts, *, batch_size, max_length, chat_template, mesh, progress, on_plan=None) -> np.ndarray:
    side = ModelSide(loaded, "encoder")
    limit = max_length if side.context is None else min(max_length, side.context)
    rows, _ = prompt_token_ids(loaded, texts, max_length=max_length, chat_template=chat_template)
    return _run_batches(
        last_token_fn(side.graphdef),
        _replicated(side.state, mesh),
        rows,
        pad_id=side.pad,
        batch_size=batch_size,
        limit=limit,
        mesh=mesh,
        progress=progress,
        config=side.config,
        on_plan=on_plan,
    )


def _bert_features(loaded, texts, *, batch_size, max_length, mesh, progress, on_plan=None) -> np.ndarray:
    limit = min(max_length, loaded.config.max_position_embeddings)
    rows, truncated = [], 0
    for text in texts:
        ids = loaded.token_ids(text, max_length=limit + 1)  # one more than fits: tells a cut text
        if len(ids) > limit:
            truncated += 1
            ids = loaded.token_ids(text, max_length=limit)
        rows.append(ids)
    _warn_truncated(truncated, len(texts), limit, "at the end")
    graphdef, state = nnx.split(loaded.model)
    return _run_batches(
        _bert.jitted_encode(graphdef),
        _replicated(state, mesh),
        rows,
        pad_id=loaded.pad_token_id,
        batch_size=batch_size,
        limit=limit,
        mesh=mesh,
        progress=progress,
        config=loaded.config,
        on_plan=on_plan,
    )


# --------------------------------------------------------------------------------------------
# Public entry point


def prompt_features(
    prompts: Sequence[str],
    *,
    encoder: Any = DEFAULT_ENCODER,
    batch_size: int = 16,
    max_length: int = 256,
    chat_template: bool = True,
    cache_dir: str | os.PathLike | None = None,
    progress: ProgressFn | None = None,
    mesh: jax.sharding.Mesh | None = None,
    on_plan: Callable[[FeaturePlan], None] | None = None,
) -> np.ndarray:
    """One feature vector per prompt from a pretrained model: `[num_prompts, hidden]` float32.

    Causal LM: `x_i = h_L[i, t_i]`, the final-norm hidden state at the last real token `t_i` of
    prompt i rendered with the model's chat template (generation prompt appended). Sentence
    encoder: `x_i = m_i / ‖m_i‖₂` with `m_i = Σ_t mask[i, t] h[i, t] / Σ_t mask[i, t]` (the pooling
    its sentence-transformers directory names; no normalisation if it has no Normalize module).

    Args:
      prompts: the prompt texts (str, or `jaxrank.lm.prompts.Prompt`), `[num_prompts]`.
      encoder: a causal LM name ("smollm2-135m-instruct", "gemma3-270m"), a Hugging Face directory
        or `.gguf` file, the sentence encoder "all-minilm-l6-v2" or a sentence-transformers BERT
        directory, or an already loaded `LoadedModel` / `LoadedEncoder`.
      batch_size: prompts per forward pass (rounded up to a multiple of the mesh's data axis); a bucket of long
        prompts whose batch would not fit in memory (`jaxrank.lm.memory`) runs in smaller batches.
      max_length: the most tokens read per prompt (capped at the model's context); longer prompts
        lose their start (causal LMs: the question and turn marker are at the end) or their end
        (encoders, as sentence-transformers truncates), with a `TruncationWarning`.
      chat_template: causal LMs only: render the prompt as a user turn with the chat template (as
        prioritization does); False tokenizes the raw text. Ignored by sentence encoders.
      cache_dir: a folder for cached features (`features-<key>.npy` + `.json`); a call whose key
        (encoder identity, options, prompt texts) is there loads it without running the model.
      progress: `progress(stage, advance, total, tokens)` after every batch (stage "features").
      on_plan: called once the prompts are tokenized, before the encoder runs, with the `FeaturePlan`
        (not called when the features come from `cache_dir`).
      mesh: a mesh with a "data" axis (`jaxrank.sharding.make_mesh`): the parameters are
        replicated and each batch's rows split over "data"; the numbers equal the unsharded ones.

    Returns:
      `np.ndarray` float32 `[num_prompts, hidden]`, row i for `prompts[i]`.

    Raises:
      ValueError: an empty prompt list, a non-string prompt, a bad `batch_size`/`max_length`, an
        unknown encoder name or missing path (a missing weight package names the pip command).
      jaxrank.resources.ResourceError: (a ValueError) not even one prompt of the longest bucket fits in memory;
        names `max_length` and the longest that fits.

    Example:
      >>> x = prompt_features(["Why is the sky blue?", "Write a haiku."], cache_dir="features/")
      >>> x.shape
      (2, 576)
      >>> e = prompt_features(["Why is the sky blue?"], encoder="all-minilm-l6-v2")  # [1, 384], unit norm
    """
    texts = _check_prompts(prompts)
    batch_size = _check_count(batch_size, "batch_size", 1)
    max_length = _check_count(max_length, "max_length", 2)
    if not isinstance(chat_template, (bool, np.bool_)):
        raise ValueError(f"chat_template must be True or False, got {chat_template!r}")
    if progress is not None and not callable(progress):
        raise ValueError(f"progress must be a callable progress(stage, advance, total, tokens), got {progress!r}")
    if mesh is not None:
        from jaxrank.sharding import check_mesh

        n_data, _ = check_mesh(mesh)
        batch_size = -(-batch_size // n_data) * n_data  # padding rows are sliced off
    if isinstance(encoder, (str, os.PathLike)):
        kind, path = _resolve_name(encoder)
        loaded = None
    else:
        kind, path, loaded = _kind_of_object(encoder), None, encoder

    key = meta = None
    if cache_dir is not None:
        cache_dir = pathlib.Path(cache_dir).expanduser()
        if cache_dir.exists() and not cache_dir.is_dir():
            raise ValueError(f"cache_dir {str(cache_dir)!r} exists and is not a directory")
        if loaded is None:
            identity = {"kind": kind, "path": str(path.resolve()), "files": _files_fingerprint(path)}
        else:
            identity = _object_identity(kind, loaded)
        options = {"max_length": max_length, "chat_template": bool(chat_template) if kind == "causal" else None}
        key, meta = _cache_key(identity, options, texts)
        cached = _cache_load(cache_dir, key, meta)
        if cached is not None:
            if progress is not None:
                progress("features (cached)", len(texts), len(texts), 0)
            return cached

    if loaded is None:
        loaded = _load(kind, path)
    if kind == "causal":
        feats = _causal_features(
            loaded, texts, batch_size=batch_size, max_length=max_length, chat_template=bool(chat_template),
            mesh=mesh, progress=progress, on_plan=on_plan,
        )
    else:
        feats = _bert_features(loaded, texts, batch_size=batch_size, max_length=max_length, mesh=mesh, progress=progress,
                               on_plan=on_plan)
    if cache_dir is not None:
        _cache_store(cache_dir, key, meta, feats)
    return feats
