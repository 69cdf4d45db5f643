"""One process of the 2-process language-model pipeline test (tests/test_multihost.py starts two of these).

Usage: python tests/multihost_lm_worker.py PORT PROCESS_ID NUM_PROCESSES OUT.json TOKENIZER_DIR

Both processes build the same two small random-weight Llamas (`model_weights`, NumPy, so each device
takes its slice straight from the host array, as from a checkpoint) and run `prioritize_prompts` on
the same prompts over meshes that span both processes (`RUNS`), then write the ranked rows they got.
The test compares every process's rows with the single-process, one-device pipeline.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

PROMPTS = ["Why is the sky blue?", "Hi!", "What is 17 times 23?", "List five fruits."]
COMPLETIONS = ["Because of Rayleigh scattering.", "Hello there", "391", "apple, fig"]
VOCAB = 304  # divisible by tensor = 2 and 4
TOKENIZER_VOCAB = 300
MAX_NEW_TOKENS = 4
# name -> (mesh axis sizes, prioritize_prompts options). With 2 processes of 2 CPU devices each:
# "fsdp=2,tensor=2" is the documented layout (tensor within a process; fsdp, and with it the batch rows,
# across them): A generates, both score its completions by teacher forcing (token mode, fused head).
# "tensor=4" splits the vocabulary over both processes: sequence mode's log-probabilities of given
# completions combine their vocabulary shards (pmax/psum) across the processes.
RUNS = {
    "fsdp=2,tensor=2 token": (dict(fsdp=2, tensor=2), dict(mode="token", implementation="fused")),
    "tensor=4 sequence": (dict(tensor=4), dict(mode="sequence", completions=COMPLETIONS)),
}
COMMON = dict(max_new_tokens=MAX_NEW_TOKENS, batch_size=4)


def tokenizer_corpus() -> list[str]:
    return PROMPTS * 3 + COMPLETIONS * 3 + ["the quick brown fox jumps over the lazy dog"] * 3


def model_config(tokenizer):
    from jaxrank.lm import ModelConfig

    return ModelConfig("llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=8, tie_word_embeddings=False, max_position_embeddings=128,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def model_weights(config, seed: int) -> dict[str, np.ndarray]:
    """Deterministic float32 weights (the same on every process)."""
    from jaxrank.lm.transformer import param_shapes

    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in param_shapes(config).items():
        if name.endswith("norm"):
            out[name] = (1.0 + 0.3 * rng.standard_normal(shape)).astype(np.float32)
        else:
            out[name] = (0.02 * rng.standard_normal(shape)).astype(np.float32)
    out["embed"] *= 8.0  # distributions that differ visibly between the models
    return out


def loaded_pair(tokenizer, mesh=None):
    """Models A and B (seeds 0 and 1) as `LoadedModel`s, laid out on `mesh` when given."""
    from jaxrank.lm import CausalLM, LoadedModel

    config = model_config(tokenizer)
    out = []
    for seed, name in enumerate(("a", "b")):
        model = CausalLM(config, weights=model_weights(config, seed), mesh=mesh)
        out.append(LoadedModel(model=model, tokenizer=tokenizer, config=config, name=name,
                               chat_template=tokenizer.chat_template, vocab_size=VOCAB, bos_token_id=None,
                               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                               eos_token_ids=(tokenizer.eos_token_id,)))
    return out


def main() -> None:
    port, process_id, num_processes, out, tokenizer_dir = sys.argv[1:6]
    from jaxrank.sharding import initialize_distributed

    initialize_distributed(f"127.0.0.1:{port}", int(num_processes), int(process_id), initialization_timeout=60)
    import jax
    from transformers import PreTrainedTokenizerFast

    from jaxrank.lm.pipeline import prioritize_prompts
    from jaxrank.lm.sharding import make_model_mesh

    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    results = {"process_count": jax.process_count(), "device_count": jax.device_count(), "runs": {}}
    for name, (sizes, options) in RUNS.items():
        mesh = make_model_mesh(**sizes)
        a, b = loaded_pair(tokenizer, mesh)
        # The layout really spans both processes: no process can read the weights alone.
        spans = sorted({d.process_index for d in mesh.devices.flat})
        rows = prioritize_prompts(a, b, PROMPTS, **COMMON, **options)
        results["runs"][name] = {"rows": rows, "processes": spans,
                                 "weights_addressable": bool(a.model.lm_head[...].is_fully_addressable)}
    with open(out, "w") as f:
        json.dump(results, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()
