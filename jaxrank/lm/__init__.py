"""Causal language models in flax.nnx that load real checkpoints (Hugging Face or GGUF).

Families: Llama (Llama 2/3, SmolLM2), Qwen2 and Gemma 3 text. Tokenizers and chat templates come
from `transformers` / the GGUF metadata. A BERT sentence encoder (all-MiniLM-L6-v2,
`load_encoder`) and `prompt_features` (one vector per prompt) serve P2L. See docs/lm.md.

Example:
    >>> from jaxrank.lm import load_model, generate
    >>> lm = load_model("smollm2-135m-instruct")
    >>> batch = lm.tokenizer(["The capital of France is"], return_tensors="np")
    >>> tokens, lengths = generate(lm, batch["input_ids"], batch["attention_mask"], max_new_tokens=8)
"""

from jaxrank.lm.bert import BertConfig, BertEncoder, LoadedEncoder, NAMED_ENCODERS, load_encoder
from jaxrank.lm.config import SUPPORTED_ARCHITECTURES, ModelConfig, RopeConfig
from jaxrank.lm.features import prompt_features
from jaxrank.lm.gemma3 import Gemma3ForCausalLM
from jaxrank.lm.generate import generate
from jaxrank.lm.llama import LlamaForCausalLM
from jaxrank.lm.loading import (
    NAMED_MODELS,
    CheckpointError,
    GGUFFile,
    LoadedModel,
    clear_load_cache,
    load_model,
    resolve_model_path,
)
from jaxrank.lm.transformer import CausalLM, KVCache

__all__ = [
    "BertConfig",
    "BertEncoder",
    "CausalLM",
    "CheckpointError",
    "GGUFFile",
    "Gemma3ForCausalLM",
    "KVCache",
    "LlamaForCausalLM",
    "LoadedEncoder",
    "LoadedModel",
    "ModelConfig",
    "NAMED_ENCODERS",
    "NAMED_MODELS",
    "RopeConfig",
    "SUPPORTED_ARCHITECTURES",
    "clear_load_cache",
    "generate",
    "load_encoder",
    "load_model",
    "prompt_features",
    "resolve_model_path",
]
