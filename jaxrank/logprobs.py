"""Prompt priorities from serving engines' log-probabilities: KL / cross-entropy from top-k lists, with bounds.

Models served behind vLLM, SGLang or an OpenAI-compatible API return, per token, the log-probability
of the token and of the engine's `k` most probable tokens. Two engines that score the same
continuation by teacher forcing (model A's answer fed to both; vLLM `prompt_logprobs`, SGLang
`input_top_logprobs`, legacy completions with `echo`) give, at every position, two partial views of
P = P_A(· | prefix) and Q = P_B(· | prefix). This module reads them and estimates

    KL(P ‖ Q) = Σ_v p_v log(p_v / q_v)      H(P, Q) = −Σ_v p_v log q_v

per position, with **bounds that contain the full-vocabulary value**, then averages over the
continuation with a standard error (per-token mean ± SE, as llama.cpp's KL report does).

Readers (`parse_logprobs`, `read_logprobs`; the JSON shapes of each engine):

- OpenAI chat completions: `choices[0].logprobs.content[] = {token, logprob, bytes, top_logprobs: [{token,
  logprob, bytes}]}` (generated tokens);
- legacy completions (OpenAI, vLLM): `choices[0].logprobs = {tokens, token_logprobs, top_logprobs: [{token:
  logprob}], text_offset}` (with `echo`, the prompt's tokens too; the first entry is `null`);
- vLLM `prompt_logprobs` (top level of chat responses and of `RequestOutput` JSON, or in
  `choices[0]` of completions): `[null, {"token_id": {"logprob", "rank", "decoded_token"}}, ...]`
  with `prompt_token_ids` naming the scored token of each position;
- SGLang `/generate`: `meta_info.input_token_logprobs = [[logprob, token_id, text|null], ...]`,
  `meta_info.input_top_logprobs = [null | [[logprob, token_id, text|null], ...], ...]` and the
  `output_*` lists of the generated tokens (concatenated after the input ones).

A JSONL line is one prompt: `{"id": ..., "response": <engine response>}`, the engine response
itself with an `"id"` field that names the prompt, or the OpenAI Batch API output
(`{"custom_id": ..., "response": {"body": <chat completion>}}`, matched by `custom_id`).

Bounds (per position; derivation in docs/logprobs.md). Let A reveal the set S_A (its top-k plus the
scored token) with probabilities p_v, B reveal S_B with q_v; I = S_A ∩ S_B, A' = S_A \\ S_B,
B' = S_B \\ S_A, U the tokens neither reveals. The unrevealed masses r_A = 1 − Σ_{S_A} p and
r_B = 1 − Σ_{S_B} q are known, and every unrevealed probability is at most the side's k-th
revealed probability c_A (c_B) and at most r_A (r_B).

- Lower: merging outcomes never increases KL (log-sum inequality), so KL ≥ Σ_I p log(p/q) +
  P_R log(P_R / Q_R) with the single bucket R = everything outside I, P_R = Σ_{A'} p + r_A and
  Q_R = Σ_{B'} q + r_B (both known). For the cross-entropy each −log q_v is bounded below by the
  largest q_v can be: q_v ≤ min(c_B, r_B) on A', and q_v ≤ max(max_{B'} q, c_B) ≤ 1 − Σ_I q on the
  tokens A does not reveal, whose total P-mass is r_A.
- Upper: without a floor on the unrevealed probabilities there is none (q_v → 0 on A' sends KL to
  infinity), so the upper bounds assume every probability is at least `floor` (ε, default 0: the
  bound is then +inf whenever A reveals a token that B does not). With it, p_v log(p_v/q_v) ≤
  p_v log(p_v/ε) on A', and on the tokens A does not reveal (total mass r_A, each p_v ≤ c_A, each
  q_v ≥ q_low = min(min_{B'} q, ε)) the sum is at most r_A log(c_A / q_low); likewise
  H(P, Q) ≤ −Σ_I p log q − Σ_{A'} p log ε − r_A log q_low.
- Point estimate (the tail mass in one bucket): B's unrevealed mass r_B is shared evenly between the
  tokens of A' and one bucket for U (capped at c_B), A's likewise over B' and the bucket; KL and
  cross-entropy of the bucketed distributions. It refines the lower bound's partition of a
  consistent pair of distributions, so it lies between the bounds (clipped into them when the floor
  assumption is violated). With full-vocabulary lists (`vocab_size` revealed on both sides) all
  three equal the exact value.

Engines print log-probabilities to about float32 precision, so the tail masses are known to about
1e-6: every mass used as a limit is widened by `slack` (default 1e-6).

Post-processed logprobs (after temperature / top-p / top-k, not the model's raw distribution) make
these numbers meaningless; `ProcessedLogprobsWarning` is raised when a record says so
(`logprobs_mode` "processed_*", or `processed: true`) or when it looks so: the top-k probabilities
sum to 1 at almost every position although k is small and the k-th probability is not tiny (a
truncated, renormalised distribution), or a listed log-probability is −inf / ≤ −1000 (masked).

Example:
    >>> from jaxrank.logprobs import read_logprobs, prioritize_logprobs
    >>> rows = prioritize_logprobs(read_logprobs("a.jsonl"), read_logprobs("b.jsonl"), floor=1e-8)
    >>> rows[0]["id"], rows[0]["kl"], rows[0]["kl_lower"], rows[0]["kl_upper"], rows[0]["stderr"]
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "LogprobsError",
    "ProcessedLogprobsWarning",
    "TokenLogprobs",
    "align",
    "parse_logprobs",
    "prioritize_logprobs",
    "read_logprobs",
    "sequence_scores",
    "topk_divergences",
    "topk_bounds",
]

#: Log-probabilities at or below this are treated as masked (engines write -9999 or -inf; a raw
#: float32 log-softmax never gets near it).
MASKED_LOGPROB = -1e3
DEFAULT_SLACK = 1e-6
_TINY = 1e-30  # a positive floor inside logs (XLA on CPU flushes float32 subnormals to zero)
BOUND_METRICS = ("kl", "kl_lower", "kl_upper", "cross_entropy", "cross_entropy_lower", "cross_entropy_upper")


class LogprobsError(ValueError):
    """A logprobs record that cannot be read or matched (names the record and what was expected)."""


class ProcessedLogprobsWarning(UserWarning):
    """The log-probabilities look post-processed (temperature / top-p / masking), not raw."""


@dataclasses.dataclass
class TokenLogprobs:
    """One engine's log-probabilities along one token sequence.

    Attributes:
        id: the prompt id the record is matched by.
        token_ids: `[T]` id of the token at each position, or None when the engine gave strings only.
        tokens: `[T]` text of each token (may hold None where unknown).
        logprobs: `[T]` float64 log-probability of each position's token (NaN where the engine gave
            none, e.g. the first prompt token).
        top: per position, the engine's top-k as `(token_id | None, text | None, logprob)` sorted by
            decreasing log-probability, or None where absent.
        format: "openai-chat", "completions", "vllm" or "sglang".
        metadata: request settings found in the record (temperature, top_p, logprobs_mode, ...).
        prompt: the prompt text when the record carries it.
    """

    id: str
    token_ids: list[int] | None
    tokens: list[str | None]
    logprobs: np.ndarray
    top: list[list[tuple[int | None, str | None, float]] | None]
    format: str
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    prompt: str | None = None

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def text(self) -> str:
        return "".join(t or "" for t in self.tokens)


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


def _float(x: Any, where: str) -> float:
    if x is None:
        return math.nan
    try:
        value = float(x)
    except (TypeError, ValueError):
        raise LogprobsError(f"{where}: expected a number, got {x!r}") from None
    if math.isnan(value) or value > 1e-4:
        raise LogprobsError(f"{where}: a log-probability must be <= 0, got {x!r}")
    return min(value, 0.0)


def _choice(response: dict, where: str) -> dict | None:
    choices = response.get("choices")
    if choices is None:
        return None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise LogprobsError(f"{where}: 'choices' must be a non-empty list of objects")
    return choices[0]


def _openai_chat(content: list, where: str):
    ids, toks, lps, top = None, [], [], []
    for t, entry in enumerate(content):
        if not isinstance(entry, dict) or "logprob" not in entry:
            raise LogprobsError(f"{where}: logprobs.content[{t}] must be an object with 'token' and 'logprob'")
        toks.append(entry.get("token"))
        lps.append(_float(entry["logprob"], f"{where}: logprobs.content[{t}].logprob"))
        alts = entry.get("top_logprobs")
        top.append(None if alts is None else [
            (None, a.get("token"), _float(a.get("logprob"), f"{where}: logprobs.content[{t}].top_logprobs"))
            for a in alts
        ])
    return ids, toks, lps, top


def _completions(lp: dict, where: str):
    tokens = lp.get("tokens")
    token_lps = lp.get("token_logprobs")
    if not isinstance(tokens, list) or not isinstance(token_lps, list) or len(tokens) != len(token_lps):
        raise LogprobsError(f"{where}: logprobs must hold 'tokens' and 'token_logprobs' lists of one length")
    tops = lp.get("top_logprobs") or [None] * len(tokens)
    if len(tops) != len(tokens):
        raise LogprobsError(f"{where}: logprobs.top_logprobs has {len(tops)} entries for {len(tokens)} tokens")
    top = []
    for t, alts in enumerate(tops):
        if alts is None:
            top.append(None)
            continue
        if not isinstance(alts, dict):
            raise LogprobsError(f"{where}: logprobs.top_logprobs[{t}] must be an object {{token: logprob}}")
        top.append([(None, k, _float(v, f"{where}: logprobs.top_logprobs[{t}]")) for k, v in alts.items()])
    ids = lp.get("token_ids")
    lps = [_float(x, f"{where}: logprobs.token_logprobs[{t}]") for t, x in enumerate(token_lps)]
    return (list(map(int, ids)) if ids else None), list(tokens), lps, top


def _vllm(prompt_lps: list, token_ids: Any, where: str):
    if not isinstance(token_ids, list) or len(token_ids) != len(prompt_lps):
        raise LogprobsError(
            f"{where}: vLLM prompt_logprobs need prompt_token_ids of the same length (the token each position "
            "scores); request them with return_token_ids / keep the field in the saved response"
        )
    ids = [int(i) for i in token_ids]
    toks, lps, top = [], [], []
    for t, (tid, entry) in enumerate(zip(ids, prompt_lps)):
        if entry is None:
            toks.append(None)
            lps.append(math.nan)
            top.append(None)
            continue
        if not isinstance(entry, dict):
            raise LogprobsError(f"{where}: prompt_logprobs[{t}] must be null or {{token_id: {{logprob, rank, decoded_token}}}}")
        items = []
        for key, info in entry.items():
            if not isinstance(info, dict) or "logprob" not in info:
                raise LogprobsError(f"{where}: prompt_logprobs[{t}][{key!r}] must be {{logprob, rank, decoded_token}}")
            try:
                key_id = int(key)
            except ValueError:
                raise LogprobsError(f"{where}: prompt_logprobs[{t}] keys must be token ids, got {key!r}") from None
            items.append((key_id, info.get("decoded_token"), _float(info["logprob"], f"{where}: prompt_logprobs[{t}]"),
                          info.get("rank")))
        own = next((it for it in items if it[0] == tid), None)
        if own is None:
            raise LogprobsError(f"{where}: prompt_logprobs[{t}] lacks the prompt token {tid} (vLLM always includes it)")
        toks.append(own[1])
        lps.append(own[2])
        # vLLM adds the scored token to the top-k. With n entries it may lie outside the top-k only
        # if its rank is >= n; then it is left out of the list, so that the list's minimum bounds
        # every unlisted token (a rank-1 token is the mode and bounds them itself).
        rank = own[3]
        if rank is None or (int(rank) >= len(items) and int(rank) > 1):
            items = [it for it in items if it[0] != tid]
        top.append(sorted(((i, s, lp) for i, s, lp, _ in items), key=lambda x: -x[2]))
    return ids, toks, lps, top


def _sglang(meta: dict, where: str):
    ids, toks, lps, top = [], [], [], []
    for part in ("input", "output"):
        tok_lps = meta.get(f"{part}_token_logprobs")
        if not tok_lps:
            continue
        tops = meta.get(f"{part}_top_logprobs") or [None] * len(tok_lps)
        if len(tops) != len(tok_lps):
            raise LogprobsError(f"{where}: meta_info.{part}_top_logprobs has {len(tops)} entries for {len(tok_lps)} tokens")
        for t, (entry, alts) in enumerate(zip(tok_lps, tops)):
            if not isinstance(entry, (list, tuple)) or len(entry) < 2:
                raise LogprobsError(f"{where}: meta_info.{part}_token_logprobs[{t}] must be [logprob, token_id, text]")
            ids.append(int(entry[1]))
            toks.append(entry[2] if len(entry) > 2 else None)
            lps.append(_float(entry[0], f"{where}: meta_info.{part}_token_logprobs[{t}]"))
            if alts is None:
                top.append(None)
                continue
            top.append(sorted(
                ((int(a[1]), a[2] if len(a) > 2 else None, _float(a[0], f"{where}: meta_info.{part}_top_logprobs[{t}]"))
                 for a in alts),
                key=lambda x: -x[2],
            ))
    if not ids:
        raise LogprobsError(f"{where}: meta_info has no input_token_logprobs / output_token_logprobs (request "
                            "return_logprob=true, top_logprobs_num=k)")
    return ids, toks, lps, top


def _metadata(*sources: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for src in sources:
        if not isinstance(src, dict):
            continue
        for holder in (src, src.get("request"), src.get("sampling_params"), src.get("meta_info")):
            if isinstance(holder, dict):
                for key in ("temperature", "top_p", "top_k", "logprobs_mode", "processed", "model"):
                    if key in holder and key not in out:
                        out[key] = holder[key]
    return out


def parse_logprobs(record: dict, *, where: str = "record") -> TokenLogprobs:
    """One `TokenLogprobs` from a JSON record in any supported engine shape (see the module doc)."""
    if not isinstance(record, dict):
        raise LogprobsError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "custom_id" in record and isinstance(record.get("response"), dict):  # OpenAI Batch API output
        rid = record["custom_id"]
        response = record["response"].get("body", record["response"])
    elif isinstance(record.get("response"), dict):
        rid, response = record.get("id"), record["response"]
    else:
        rid, response = record.get("id"), record
    if rid is None:
        raise LogprobsError(f"{where}: no 'id' (or 'custom_id') naming the prompt")
    rid = str(rid)
    where = f"{where} (id {rid})"
    if not isinstance(response, dict):
        raise LogprobsError(f"{where}: 'response' must be a JSON object")
    choice = _choice(response, where)
    if isinstance(response.get("meta_info"), dict):
        fmt, parsed = "sglang", _sglang(response["meta_info"], where)
    elif response.get("prompt_logprobs") is not None or (choice and choice.get("prompt_logprobs") is not None):
        holder = response if response.get("prompt_logprobs") is not None else choice
        ids = holder.get("prompt_token_ids", response.get("prompt_token_ids"))
        fmt, parsed = "vllm", _vllm(holder["prompt_logprobs"], ids, where)
    else:
        lp = (choice or response).get("logprobs")
        if isinstance(lp, dict) and isinstance(lp.get("content"), list):
            fmt, parsed = "openai-chat", _openai_chat(lp["content"], where)
        elif isinstance(lp, dict) and "tokens" in lp:
            fmt, parsed = "completions", _completions(lp, where)
        else:
            raise LogprobsError(
                f"{where}: no log-probabilities found; expected choices[0].logprobs.content (OpenAI chat), "
                "choices[0].logprobs.tokens (completions), prompt_logprobs (vLLM) or meta_info (SGLang)"
            )
    ids, toks, lps, top = parsed
    prompt = record.get("prompt") if isinstance(record.get("prompt"), str) else None
    return TokenLogprobs(id=rid, token_ids=ids, tokens=toks, logprobs=np.asarray(lps, np.float64), top=top,
                         format=fmt, metadata=_metadata(record, response), prompt=prompt)


def read_logprobs(path: str | pathlib.Path) -> list[TokenLogprobs]:
    """Every record of a JSONL file (one prompt per line; blank lines skipped), in file order.

    Raises:
        LogprobsError: a missing file, a bad JSON line or record (naming the file and line), or an
            id given twice.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise LogprobsError(f"{path} does not exist or is not a file")
    out, seen = [], {}
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise LogprobsError(f"{path}:{n}: not valid JSON ({err.msg})") from None
            rec = parse_logprobs(record, where=f"{path}:{n}")
            if rec.id in seen:
                raise LogprobsError(f"{path}:{n}: id {rec.id!r} already given on line {seen[rec.id]}")
            seen[rec.id] = n
            out.append(rec)
    if not out:
        raise LogprobsError(f"{path} holds no records")
    return out


# --------------------------------------------------------------------------------------------
# Alignment of two records on their shared continuation
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Aligned:
    """Two records' distributions at the positions of their shared continuation, as arrays.

    Columns hold the union of the tokens either side reveals at a position (width W, padded).

    Attributes:
        logp, logq: `[T, W]` float32 log-probabilities (0 where unknown).
        known_p, known_q: `[T, W]` bool, the side revealed that token.
        cap_p, cap_q: `[T]` float32 log of the side's k-th listed probability (an upper limit of every
            token it does not list; 0 when it lists none).
        complete_p, complete_q: `[T]` bool, the side revealed the whole vocabulary.
        rest_p, rest_q: `[T]` float32 unrevealed mass 1 − Σ p of each side, summed in float64 from the
            records' log-probabilities (clipped at 0): in float32 the cancellation costs ~1e-7, which
            the bounds' logs of small tails would amplify.
        tokens: the continuation's token texts.
    """

    logp: np.ndarray
    known_p: np.ndarray
    logq: np.ndarray
    known_q: np.ndarray
    cap_p: np.ndarray
    cap_q: np.ndarray
    complete_p: np.ndarray
    complete_q: np.ndarray
    rest_p: np.ndarray
    rest_q: np.ndarray
    tokens: list[str | None]


def _keys(rec: TokenLogprobs, use_ids: bool, where: str) -> list:
    keys = rec.token_ids if use_ids else rec.tokens
    if not use_ids and any(k is None for k, lp in zip(keys, rec.logprobs) if not math.isnan(lp)):
        raise LogprobsError(f"{where}: tokens without text cannot be matched with the other side's token strings")
    return list(keys)


def align(a: TokenLogprobs, b: TokenLogprobs, *, vocab_size: int | None = None) -> Aligned:
    """The positions of the longest common token suffix of `a` and `b` that both sides scored.

    Tokens are matched by id when both records carry ids, else by text. A model's chat answer
    (OpenAI chat logprobs of the generated tokens) aligns with the other engine's teacher-forced
    `prompt_logprobs` of prompt + that answer: the answer is their common suffix.

    Raises:
        LogprobsError: no common continuation, or a side without a distribution on it.
    """
    use_ids = a.token_ids is not None and b.token_ids is not None
    where = f"id {a.id!r}"
    ka, kb = _keys(a, use_ids, where + " (A)"), _keys(b, use_ids, where + " (B)")
    n = 0
    while n < min(len(ka), len(kb)) and ka[-1 - n] == kb[-1 - n] and not (
        math.isnan(a.logprobs[-1 - n]) or math.isnan(b.logprobs[-1 - n])
    ):
        n += 1
    if n == 0:
        raise LogprobsError(
            f"{where}: the two records share no scored continuation (their last tokens differ: "
            f"{(a.tokens[-1] if a.tokens else None)!r} vs {(b.tokens[-1] if b.tokens else None)!r}); both must "
            "score the same text with the same tokenizer"
        )
    rows = []
    for t in range(n):
        ia, ib = len(ka) - n + t, len(kb) - n + t
        cols: dict[Any, list] = {}

        def add(rec, i, side):
            top = rec.top[i] or []
            for tid, text, lp in top:
                key = tid if use_ids else text
                cols.setdefault(key, [None, None])[side] = lp
            key = (ka if side == 0 else kb)[i]
            cols.setdefault(key, [None, None])[side] = float(rec.logprobs[i])
            listed = [lp for _, _, lp in top]
            return min(listed) if listed else 0.0

        cap_a = add(a, ia, 0)
        cap_b = add(b, ib, 1)
        n_a = sum(v[0] is not None for v in cols.values())
        n_b = sum(v[1] is not None for v in cols.values())
        rows.append((cols, cap_a, cap_b, vocab_size is not None and n_a >= vocab_size,
                     vocab_size is not None and n_b >= vocab_size, a.tokens[ia]))
    width = max(len(r[0]) for r in rows)
    shape = (n, width)
    logp, logq = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    kp, kq = np.zeros(shape, bool), np.zeros(shape, bool)
    rest_p, rest_q = np.zeros(n, np.float32), np.zeros(n, np.float32)
    for t, (cols, *_rest) in enumerate(rows):
        mass_p, mass_q = [], []
        for j, (lp, lq) in enumerate(cols.values()):
            if lp is not None and lp > MASKED_LOGPROB:
                logp[t, j], kp[t, j] = lp, True
                mass_p.append(math.exp(lp))
            if lq is not None and lq > MASKED_LOGPROB:
                logq[t, j], kq[t, j] = lq, True
                mass_q.append(math.exp(lq))
        rest_p[t], rest_q[t] = max(1.0 - math.fsum(mass_p), 0.0), max(1.0 - math.fsum(mass_q), 0.0)
    cap = lambda i: np.asarray([max(r[i], MASKED_LOGPROB) for r in rows], np.float32)  # noqa: E731
    return Aligned(logp, kp, logq, kq, cap(1), cap(2), np.asarray([r[3] for r in rows]),
                   np.asarray([r[4] for r in rows]), rest_p, rest_q, [r[5] for r in rows])


# --------------------------------------------------------------------------------------------
# The kernel
# --------------------------------------------------------------------------------------------


def _xlogy_ratio(a: jax.Array, b: jax.Array) -> jax.Array:
    """a · log(a / b), 0 where a = 0, +inf where b = 0 < a."""
    safe_a = jnp.where(a > 0, a, 1.0)
    safe_b = jnp.where(b > 0, b, 1.0)
    value = jnp.where(a > 0, a * (jnp.log(safe_a) - jnp.log(safe_b)), 0.0)
    return jnp.where((a > 0) & (b <= 0), jnp.inf, value)


def _times_log(mass: jax.Array, log_ratio: jax.Array) -> jax.Array:
    """mass · log_ratio with 0 · anything = 0 (an empty tail contributes nothing)."""
    return jnp.where(mass > 0, mass * jnp.where(mass > 0, log_ratio, 0.0), 0.0)


@jax.jit
def topk_bounds(
    logp: jax.Array,
    known_p: jax.Array,
    logq: jax.Array,
    known_q: jax.Array,
    cap_p: jax.Array,
    cap_q: jax.Array,
    complete_p: jax.Array,
    complete_q: jax.Array,
    floor: jax.Array | float = 0.0,
    slack: jax.Array | float = DEFAULT_SLACK,
    rest_p: jax.Array | None = None,
    rest_q: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Per-position KL(P ‖ Q) and H(P, Q) from two partial views, with lower and upper bounds.

    Args:
      logp, logq: `[T, W]` log-probabilities of the tokens in each position's columns.
      known_p, known_q: `[T, W]` bool, which of them side A / side B revealed.
      cap_p, cap_q: `[T]` log of each side's k-th revealed probability (bounds its unrevealed tokens).
      complete_p, complete_q: `[T]` bool, the side revealed the whole vocabulary.
      floor: ε, assumed lower limit of every probability (only the upper bounds use it; 0 makes them
        +inf whenever they depend on an unrevealed probability).
      slack: uncertainty of the tail masses 1 − Σ p from rounded log-probabilities.
      rest_p, rest_q: `[T]` the unrevealed masses 1 − Σ p, 1 − Σ q, summed by the caller in higher
        precision (`align` does, in float64). None sums them here in float32, whose cancellation
        (~1e-7) is amplified by the logs of small tails and can flip a tail that is positive to 0.

    Returns:
      `{name: float32[T]}` for `kl, kl_lower, kl_upper, cross_entropy, cross_entropy_lower,
      cross_entropy_upper` (formulas in the module doc).
    """
    f32 = jnp.float32
    logp, logq = logp.astype(f32), logq.astype(f32)
    p = jnp.where(known_p, jnp.exp(logp), 0.0)
    q = jnp.where(known_q, jnp.exp(logq), 0.0)
    both, only_a, only_b = known_p & known_q, known_p & ~known_q, ~known_p & known_q
    has_b1 = jnp.any(only_b, axis=-1)
    has_a1 = jnp.any(only_a, axis=-1)
    r_a = jnp.maximum(1.0 - jnp.sum(p, -1), 0.0) if rest_p is None else jnp.asarray(rest_p, f32)
    r_b = jnp.maximum(1.0 - jnp.sum(q, -1), 0.0) if rest_q is None else jnp.asarray(rest_q, f32)
    rest_b = r_b  # before round-off tails are zeroed: 1 − Σ_I q = rest_b + Σ_{B'} q without cancellation
    # A side that saw everything has no tail; nor has a side whose unrevealed tokens provably do not
    # exist (the other side saw all of them and A' / B' is empty): what remains there is round-off.
    r_a = jnp.where(complete_p | (complete_q & ~has_b1), 0.0, r_a)
    r_b = jnp.where(complete_q | (complete_p & ~has_a1), 0.0, r_b)
    tail_a = jnp.where(complete_p, 0.0, r_a + slack)  # what A's unrevealed mass can be at most
    tail_b = jnp.where(complete_q, 0.0, r_b + slack)
    c_a = jnp.minimum(jnp.exp(cap_p.astype(f32)), tail_a)  # each of A's unrevealed probabilities is <= c_a
    c_b = jnp.minimum(jnp.exp(cap_q.astype(f32)), tail_b)
    log_floor = jnp.log(jnp.asarray(floor, f32))  # -inf for floor 0

    kl_i = jnp.sum(jnp.where(both, p * (logp - logq), 0.0), -1)
    ce_i = -jnp.sum(jnp.where(both, p * logq, 0.0), -1)
    p_a1 = jnp.sum(jnp.where(only_a, p, 0.0), -1)
    q_b1 = jnp.sum(jnp.where(only_b, q, 0.0), -1)

    # Lower: everything outside I in one bucket (log-sum inequality); the bucket's Q-mass widened by slack.
    kl_lo = kl_i + _xlogy_ratio(p_a1 + r_a, q_b1 + r_b + slack)
    log_c_b_q = jnp.log(jnp.maximum(c_b, _TINY))
    q_top_b1 = jnp.max(jnp.where(only_b, q, 0.0), -1)
    q_max_w = jnp.minimum(rest_b + q_b1 + slack,
                          jnp.maximum(q_top_b1, jnp.where(complete_q, 0.0, c_b)))
    ce_lo = (ce_i - p_a1 * log_c_b_q
             - _times_log(jnp.maximum(r_a - slack, 0.0), jnp.log(jnp.maximum(q_max_w, _TINY))))

    # Upper: every probability >= floor.
    q_min_b1 = jnp.min(jnp.where(only_b, q, jnp.inf), -1)
    q_low = jnp.minimum(q_min_b1, jnp.where(complete_q, jnp.inf, jnp.exp(log_floor)))
    q_low = jnp.where(jnp.isinf(q_low), 1.0, q_low)  # no token A left out: the tail is round-off
    log_q_low = jnp.log(q_low)
    a_tail = jnp.where(r_a > 0, tail_a, 0.0)
    a1_kl = jnp.sum(jnp.where(only_a, p * (logp - log_floor), 0.0), -1)
    a1_ce = jnp.where(p_a1 > 0, -p_a1 * log_floor, 0.0)
    kl_hi = kl_i + a1_kl + jnp.maximum(_times_log(a_tail, jnp.log(jnp.maximum(c_a, _TINY)) - log_q_low), 0.0)
    ce_hi = ce_i + a1_ce - _times_log(a_tail, log_q_low)

    # Point estimate: each side's unrevealed mass shared evenly by the other side's extra tokens and
    # one bucket for the tokens neither lists (no bucket when the other side listed everything).
    n_a1 = jnp.sum(only_a, -1).astype(f32)
    n_b1 = jnp.sum(only_b, -1).astype(f32)
    q_hat = jnp.minimum(c_b, tail_b / jnp.maximum(n_a1 + jnp.where(complete_p, 0.0, 1.0), 1.0))
    p_hat = jnp.minimum(c_a, r_a / jnp.maximum(n_b1 + jnp.where(complete_q, 0.0, 1.0), 1.0))
    pu = jnp.where(complete_q, 0.0, r_a - n_b1 * p_hat)
    qu = jnp.where(complete_p, 0.0, tail_b - n_a1 * q_hat)
    log_q_hat = jnp.log(jnp.maximum(q_hat, _TINY))[:, None]
    kl_est = (kl_i
              + jnp.sum(jnp.where(only_a, _xlogy_ratio(p, jnp.broadcast_to(q_hat[:, None], p.shape)), 0.0), -1)
              + jnp.sum(jnp.where(only_b, _xlogy_ratio(jnp.broadcast_to(p_hat[:, None], q.shape), q), 0.0), -1)
              + _xlogy_ratio(pu, qu))
    ce_est = (ce_i - jnp.sum(jnp.where(only_a, p * log_q_hat, 0.0), -1)
              - jnp.sum(jnp.where(only_b, p_hat[:, None] * logq, 0.0), -1)
              - _times_log(pu, jnp.log(jnp.maximum(qu, _TINY))))
    kl_lo = jnp.maximum(kl_lo, 0.0)
    kl_hi = jnp.maximum(kl_hi, kl_lo)
    ce_hi = jnp.maximum(ce_hi, ce_lo)
    return {
        "kl": jnp.clip(kl_est, kl_lo, kl_hi),
        "kl_lower": kl_lo,
        "kl_upper": kl_hi,
        "cross_entropy": jnp.clip(ce_est, ce_lo, ce_hi),
        "cross_entropy_lower": ce_lo,
        "cross_entropy_upper": ce_hi,
    }


def topk_divergences(
    a: TokenLogprobs,
    b: TokenLogprobs,
    *,
    floor: float = 0.0,
    vocab_size: int | None = None,
    slack: float = DEFAULT_SLACK,
) -> dict[str, np.ndarray]:
    """Per-position KL(A ‖ B) / H(A, B) estimates and bounds on the shared continuation of two records.

    Returns:
      `{name: float64[T]}` for the names of `BOUND_METRICS` over the T aligned positions.
    """
    if not (isinstance(floor, (int, float)) and 0.0 <= floor < 1.0):
        raise ValueError(f"floor must be a probability in [0, 1), got {floor!r}")
    if vocab_size is not None and (not isinstance(vocab_size, int) or vocab_size < 1):
        raise ValueError(f"vocab_size must be a positive int or None, got {vocab_size!r}")
    al = align(a, b, vocab_size=vocab_size)
    out = topk_bounds(al.logp, al.known_p, al.logq, al.known_q, al.cap_p, al.cap_q, al.complete_p, al.complete_q,
                      jnp.float32(floor), jnp.float32(slack), al.rest_p, al.rest_q)
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def sequence_scores(per_position: dict[str, np.ndarray]) -> dict[str, float]:
    """Per-token means over a continuation, with the standard error of the point estimates.

    `kl`, `cross_entropy` and their bounds are averaged (a mean of per-position bounds bounds the
    mean); `stderr` and `cross_entropy_stderr` are `std(ddof=1) / sqrt(T)` of the per-position
    estimates (NaN for one position), and `tokens` is T.
    """
    n = len(per_position["kl"])
    with np.errstate(invalid="ignore"):  # an infinite upper bound stays infinite; its spread is NaN
        out: dict[str, float] = {name: float(np.mean(per_position[name])) for name in BOUND_METRICS}
        for name, key in (("kl", "stderr"), ("cross_entropy", "cross_entropy_stderr")):
            out[key] = float(np.std(per_position[name], ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    out["tokens"] = n
    return out


def _processed(rec: TokenLogprobs, vocab_size: int | None = None) -> tuple[str, str] | None:
    """(kind, why) when the record's logprobs look post-processed, else None."""
    mode = str(rec.metadata.get("logprobs_mode", ""))
    if mode.startswith("processed") or rec.metadata.get("processed") is True:
        return "declared", f"the record says logprobs_mode={mode or 'processed'}"
    listed = [t for t in rec.top if t]
    if any(lp <= MASKED_LOGPROB or math.isinf(lp) for t in listed for _, _, lp in t):
        return "masked", "listed log-probabilities of -inf / <= -1000 (masked tokens)"
    if len(listed) >= 4:
        k = max(len(t) for t in listed)
        if vocab_size is not None and k >= vocab_size:
            return None  # whole-vocabulary lists sum to 1 by construction
        sums = np.asarray([np.exp([lp for _, _, lp in t]).sum() for t in listed])
        kth = np.asarray([math.exp(min(lp for _, _, lp in t)) for t in listed])
        share = float(np.mean(sums > 1 - 1e-5))
        if k <= 50 and share >= 0.9 and np.median(kth) > 1e-4:
            return "renormalised", (
                f"the top-{k} probabilities sum to 1 at {share:.0%} of positions although the k-th is typically "
                f"{np.median(kth):.1e} (a truncated, renormalised distribution: top-p / top-k)"
            )
    return None


def prioritize_logprobs(
    records_a: Sequence[TokenLogprobs],
    records_b: Sequence[TokenLogprobs],
    *,
    floor: float = 0.0,
    vocab_size: int | None = None,
    slack: float = DEFAULT_SLACK,
    fraction: float | None = None,
) -> list[dict[str, Any]]:
    """Rank prompts by KL(A ‖ B) estimated from two engines' logprob records, highest first.

    Records are matched by `id` (every id of A must be in B; extra ids of B are ignored with a
    warning). Each output row: `rank`, `id`, `score` (= `kl`), `kl`, `kl_lower`, `kl_upper`,
    `stderr`, `cross_entropy`, `cross_entropy_lower`, `cross_entropy_upper`,
    `cross_entropy_stderr`, `tokens` (scored positions), `prompt` (when a record has it),
    `completion` (the continuation's text), `mode` ("logprobs"); with `fraction`, `selected`.

    Raises:
      LogprobsError: an id of A missing from B, or records that share no continuation.
    """
    from jaxrank.scoring import prioritize

    by_id = {r.id: r for r in records_b}
    missing = [r.id for r in records_a if r.id not in by_id]
    if missing:
        raise LogprobsError(f"ids of A missing from B: {', '.join(map(repr, missing[:5]))}"
                            + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    extra = len(by_id) - len(records_a)
    if extra > 0:
        warnings.warn(f"{extra} record(s) of B have no counterpart in A and are ignored", UserWarning, stacklevel=2)
    for side, recs in (("A", records_a), ("B", [by_id[r.id] for r in records_a])):
        reasons: dict[str, tuple[str, list[str]]] = {}
        for r in recs:
            found = _processed(r, vocab_size)
            if found:
                reasons.setdefault(found[0], (found[1], []))[1].append(r.id)
        for why, ids in reasons.values():
            warnings.warn(
                f"side {side}: {len(ids)} record(s) (e.g. id {ids[0]!r}) look post-processed, not raw model "
                f"log-probabilities: {why}; KL from them is not the models' divergence (request raw logprobs: "
                "temperature 1, top_p 1, vLLM logprobs_mode=raw_logprobs)",
                ProcessedLogprobsWarning,
                stacklevel=2,
            )
    rows = []
    for i, a in enumerate(records_a):
        b = by_id[a.id]
        scores = sequence_scores(topk_divergences(a, b, floor=floor, vocab_size=vocab_size, slack=slack))
        n = scores.pop("tokens")
        start = len(a) - n
        rows.append({
            "_index": i, "id": a.id, "score": scores["kl"], **scores, "tokens": n,
            "prompt": a.prompt or b.prompt or "", "completion": "".join(t or "" for t in a.tokens[start:]),
            "mode": "logprobs",
        })
    order = sorted(range(len(rows)), key=lambda j: (-rows[j]["score"], rows[j]["_index"]))
    chosen = None
    if fraction is not None:
        chosen = set(prioritize([r["score"] for r in rows], fraction=fraction).tolist())
    out = []
    for rank, j in enumerate(order, start=1):
        row = rows[j]
        row.pop("_index")
        if chosen is not None:
            row["selected"] = j in chosen
        out.append({"rank": rank, **row})
    return out
