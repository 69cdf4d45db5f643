r"""`Votes`, the one vote table of jaxrank, and its one encoding into the integer arrays the kernels use.

A vote says that, on one prompt, a judge compared the answers of model `a` and model `b` and preferred
`a`, preferred `b`, called it a tie, or found both bad. Per vote, `Votes` holds (host NumPy arrays,
validated once when the table is built, read-only afterwards):

- `a`, `b` int32[N] model indices into `models`, `outcome` int32[N] (`A_WINS`=0, `B_WINS`=1, `TIE`=2,
  `TIE_BOTHBAD`=3; Chatbot Arena's `tie (bothbad)` and `both_bad` are the same outcome);
- optional `p_a` float64[N], a **soft outcome**: the probability that `a` wins, for judges that give one
  (AlpacaEval's `preference`); `outcome` is then its hard label (`A_WINS` when `p_a > 0.5`, `B_WINS` when
  `p_a < 0.5`, a tie when `p_a == 0.5`);
- optional `weight` float64[N] >= 0, a per-vote weight (an importance or design weight: each vote is one
  observation carrying that weight), and `count` int64[N] >= 0, a multiplicity (entry i stands for
  `count[i]` identical votes: aggregated tables, synthetic arenas);
- optional `prompt` int32[N] into `prompt_ids` (strings, verbatim) and `prompt_text`;
- optional `judge` int32[N] into `judge_ids`;
- optional per-side numeric features (`feature_names`, `features_a`/`features_b` float64[N, K]: response
  length, markdown counts) for style control;
- `meta`: any other per-vote columns kept from the source (turn, category, language, ...), for filters
  and groupings.

`Votes.rows()` is the one encoding: the distinct `(a, b, outcome)` rows with summed weights (`VoteRows`),
which every Bradley–Terry kernel takes; a soft vote adds `weight * p_a` to its `a`-wins row and
`weight * (1 - p_a)` to its `b`-wins row, so the fractional-target likelihood is exact on merged rows.
`rows(merge=False)` keeps one row per vote and outcome (for per-vote covariates).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrank._validation import preview

__all__ = [
    "A_WINS",
    "B_WINS",
    "TIE",
    "TIE_BOTHBAD",
    "OUTCOME_NAMES",
    "NUM_OUTCOMES",
    "WINNER_LABELS",
    "Votes",
    "VoteRows",
    "outcome_codes",
    "id_string",
    "id_strings",
    "is_missing",
    "missing_mask",
    "factorize_sorted",
    "comparison_components",
    "describe_components",
    "warn_if_disconnected",
    "bucket_size",
]

A_WINS = 0
B_WINS = 1
TIE = 2
TIE_BOTHBAD = 3
OUTCOME_NAMES = ("model_a", "model_b", "tie", "tie (bothbad)")
NUM_OUTCOMES = len(OUTCOME_NAMES)
# The accepted spellings of each outcome: Chatbot Arena's releases write the fourth as `tie (bothbad)`
# (FastChat, arena-human-preference-100k) or `both_bad` (arena-human-preference-140k).
WINNER_LABELS: dict[str, int] = {"model_a": A_WINS, "model_b": B_WINS, "tie": TIE, "tie (bothbad)": TIE_BOTHBAD,
                                 "both_bad": TIE_BOTHBAD}
_SCORE_OF_OUTCOME = np.array([1.0, 0.0, 0.5, 0.5])


def _readonly(x: np.ndarray) -> np.ndarray:
    # A private, read-only copy: later changes to the caller's array cannot reach a validated table.
    x = np.array(x)
    x.setflags(write=False)
    return x


def _int_array(x: Any, name: str, n: int | None) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D int array [N], got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.rint(arr)):
            arr = arr.astype(np.int64)
        else:
            raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} must have shape [N] = ({n},), one per vote, got {arr.shape}")
    return arr.astype(np.int64, copy=False)


def _float_array(x: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be numbers; {err}") from None
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr).reshape(shape[0], -1).all(axis=1)) if arr.size else np.zeros(0, np.int64)
    if bad.size:
        raise ValueError(f"{name} has {bad.size} NaN/infinite value(s), e.g. in row(s) {preview(bad.tolist())}")
    return arr


def _id_tuple(ids: Any, name: str) -> tuple[str, ...]:
    if isinstance(ids, str):
        raise TypeError(f"{name} must be a sequence of strings, not a single string")
    out = tuple(ids)
    if not all(isinstance(s, str) for s in out):
        raise TypeError(f"{name} must hold strings (ids are compared as text), got {type(out[0]).__name__} e.g.")
    if len(set(out)) != len(out):
        seen, dup = set(), []
        for s in out:
            if s in seen:
                dup.append(s)
            seen.add(s)
        raise ValueError(f"{name} has duplicate entries {preview(sorted(set(dup)))}")
    return out


class _FrozenDict(dict):
    """A read-only dict (picklable, unlike `types.MappingProxyType`): `Votes.meta`."""

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("Votes.meta is read-only; make a new table with votes.replace(meta={...})")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _read_only

    def __reduce__(self):
        return (_FrozenDict, (dict(self),))


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Votes:
    r"""Pairwise votes, one entry a vote (host NumPy data, validated once, read-only).

    Build one with `jaxrank.load_votes` (files and DataFrames in every supported layout) or
    `Votes.from_arrays` (names in), or directly from index arrays (then everything is checked here).

    Attributes:
        models: the M model names; model `i` is `models[i]` (models without votes are allowed).
        a, b: int32[N] model indices of each vote (`a != b`).
        outcome: int32[N] `A_WINS`=0, `B_WINS`=1, `TIE`=2, `TIE_BOTHBAD`=3.
        p_a: optional float64[N] soft outcome, P(`a` wins) in [0, 1]; `outcome` must be its hard label
            (`A_WINS` iff `p_a > 0.5`, `B_WINS` iff `p_a < 0.5`, `TIE`/`TIE_BOTHBAD` iff `p_a == 0.5`).
            None: every vote is hard (`p_a` is 1, 0 or 1/2 by outcome, see `score_a`).
        weight: optional float64[N] >= 0 per-vote weights (None: all 1). A weight is carried by ONE
            observation: bootstraps resample votes with their own weights, sandwich intervals use
            squared weights. For frequencies use `count`.
        count: optional int64[N] >= 0 multiplicities: entry i stands for `count[i]` identical votes
            (None: all 1). Online Elo needs one entry per vote (a vote order) and refuses counts.
        prompt: optional int32[N] prompt of each vote, an index into `prompt_ids`.
        prompt_ids: the P prompt ids (strings, as written in the source), when `prompt` is given.
        prompt_text: optional P prompt texts aligned with `prompt_ids`.
        judge: optional int32[N] judge (annotator) of each vote, an index into `judge_ids`.
        judge_ids: the J judge ids (strings), when `judge` is given.
        feature_names: names of the K per-side numeric features (e.g. `("length", "headers")`).
        features_a, features_b: float64[N, K] feature values of the `a` and `b` answers (None when K = 0).
        meta: other per-vote columns of the source, name -> array [N] (e.g. `turn`, `language`,
            `category`), kept for filtering and grouping; read-only.

    Example:
        >>> votes = Votes.from_arrays(["x", "y", "x"], ["y", "z", "z"], ["model_a", "tie", "model_b"])
        >>> votes.models, votes.outcome.tolist(), votes.num_votes
        (('x', 'y', 'z'), [0, 2, 1], 3)
    """

    models: tuple[str, ...]
    a: np.ndarray
    b: np.ndarray
    outcome: np.ndarray
    p_a: np.ndarray | None = None
    weight: np.ndarray | None = None
    count: np.ndarray | None = None
    prompt: np.ndarray | None = None
    prompt_ids: tuple[str, ...] | None = None
    prompt_text: tuple[str, ...] | None = None
    judge: np.ndarray | None = None
    judge_ids: tuple[str, ...] | None = None
    feature_names: tuple[str, ...] = ()
    features_a: np.ndarray | None = None
    features_b: np.ndarray | None = None
    meta: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        models = _id_tuple(self.models, "models")
        if len(models) < 2:
            raise ValueError(f"models must name at least 2 models, got {len(models)}")
        put("models", models)
        m = len(models)
        a = _int_array(self.a, "a", None)
        n = a.shape[0]
        b = _int_array(self.b, "b", n)
        outcome = _int_array(self.outcome, "outcome", n)
        for name, x, hi in (("a", a, m), ("b", b, m), ("outcome", outcome, NUM_OUTCOMES)):
            if n and (x.min() < 0 or x.max() >= hi):
                raise ValueError(f"{name} must hold values in [0, {hi}), got range [{x.min()}, {x.max()}]")
        same = np.flatnonzero(a == b)
        if same.size:
            raise ValueError(f"{same.size} vote(s) have a model playing itself (a == b), e.g. vote(s) "
                             f"{preview(same.tolist())} ({models[a[same[0]]]!r})")
        put("a", _readonly(a.astype(np.int32)))
        put("b", _readonly(b.astype(np.int32)))
        put("outcome", _readonly(outcome.astype(np.int32)))

        if self.p_a is not None:
            p = _float_array(self.p_a, "p_a", (n,))
            bad = np.flatnonzero((p < 0) | (p > 1))
            if bad.size:
                raise ValueError(f"p_a (P(a wins)) must lie in [0, 1]; {bad.size} value(s) outside, e.g. "
                                 f"{p[bad[0]]!r} in row(s) {preview(bad.tolist())}")
            expected = np.where(p > 0.5, A_WINS, np.where(p < 0.5, B_WINS, TIE))
            got = np.where(outcome == TIE_BOTHBAD, TIE, outcome)
            bad = np.flatnonzero(expected != got)
            if bad.size:
                i = int(bad[0])
                raise ValueError(
                    f"outcome must be the hard label of p_a (a wins iff p_a > 0.5, b wins iff p_a < 0.5, a tie iff "
                    f"p_a == 0.5); {bad.size} vote(s) disagree, e.g. row {i}: p_a = {p[i]!r}, outcome "
                    f"{OUTCOME_NAMES[outcome[i]]!r}")
            put("p_a", _readonly(p))
        if self.weight is not None:
            w = _float_array(self.weight, "weight", (n,))
            neg = np.flatnonzero(w < 0)
            if neg.size:
                raise ValueError(f"weight must be >= 0; {neg.size} negative value(s), e.g. in row(s) {preview(neg.tolist())}")
            put("weight", _readonly(w))
        if self.count is not None:
            c = _int_array(self.count, "count", n)
            neg = np.flatnonzero(c < 0)
            if neg.size:
                raise ValueError(f"count must be >= 0; {neg.size} negative value(s), e.g. in row(s) {preview(neg.tolist())}")
            put("count", _readonly(c))

        for key, ids_key, text_key in (("prompt", "prompt_ids", "prompt_text"), ("judge", "judge_ids", None)):
            index, ids = getattr(self, key), getattr(self, ids_key)
            if index is None:
                if ids is not None or (text_key and getattr(self, text_key) is not None):
                    raise ValueError(f"{ids_key} given without {key} (the per-vote index into it)")
                continue
            if ids is None:
                raise ValueError(f"{key} given without {ids_key} (the ids it indexes)")
            ids = _id_tuple(ids, ids_key)
            idx = _int_array(index, key, n)
            if n and (idx.min() < 0 or idx.max() >= len(ids)):
                raise ValueError(f"{key} must hold indices in [0, {len(ids)}) into {ids_key}, got range "
                                 f"[{idx.min()}, {idx.max()}]")
            put(key, _readonly(idx.astype(np.int32)))
            put(ids_key, ids)
            if text_key and getattr(self, text_key) is not None:
                text = tuple(getattr(self, text_key))
                if len(text) != len(ids) or not all(isinstance(t, str) for t in text):
                    raise ValueError(f"{text_key} must hold one string per prompt id ({len(ids)}), got {len(text)}")
                put(text_key, text)

        names = tuple(self.feature_names)
        k = len(names)
        if k:
            _id_tuple(names, "feature_names")
            for side in ("features_a", "features_b"):
                x = getattr(self, side)
                if x is None:
                    raise ValueError(f"{side} is required with feature_names {preview(names)}")
                arr = np.asarray(x, np.float64)
                if arr.ndim == 1 and k == 1:
                    arr = arr[:, None]
                put(side, _readonly(_float_array(arr, side, (n, k))))
        elif self.features_a is not None or self.features_b is not None:
            raise ValueError("features_a/features_b given without feature_names")
        put("feature_names", names)

        meta = {}
        for name, col in dict(self.meta).items():
            if not isinstance(name, str):
                raise TypeError(f"meta keys must be column names (strings), got {name!r}")
            arr = np.asarray(col)
            if arr.shape != (n,):
                raise ValueError(f"meta[{name!r}] must have shape [N] = ({n},), got {arr.shape}")
            meta[name] = _readonly(arr)
        put("meta", _FrozenDict(meta))
        put("_cache", {})

    # ---------------------------------------------------------------------------------------------
    # Construction from names

    @classmethod
    def from_arrays(
        cls,
        model_a: Sequence[Any],
        model_b: Sequence[Any],
        winner: Sequence[Any] | None = None,
        *,
        p_a: Sequence[float] | None = None,
        winner_labels: Mapping[Any, str] | None = None,
        weight: Sequence[float] | None = None,
        count: Sequence[int] | None = None,
        prompt: Sequence[Any] | None = None,
        prompt_text: Sequence[str] | None = None,
        judge: Sequence[Any] | None = None,
        features: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
        meta: Mapping[str, Sequence[Any]] | None = None,
        models: Sequence[str] | None = None,
    ) -> "Votes":
        r"""Build `Votes` from per-vote names and labels (the in-memory reader; files: `jaxrank.load_votes`).

        Args:
            model_a, model_b: [N] model names (any values; compared as their strings) or, with `models`,
                integer indices into it.
            winner: [N] outcome labels (`model_a | model_b | tie | tie (bothbad) | both_bad`, or your own
                through `winner_labels`) or integer codes 0..3. Optional when `p_a` is given.
            p_a: optional [N] soft outcomes P(a wins) in [0, 1]; `winner` is then derived (a tie at 1/2)
                unless given, in which case it must agree.
            winner_labels: maps your labels to the outcome names above (e.g. `{"left": "model_a"}`).
            weight, count: optional [N] per-vote weights and multiplicities (see the attributes).
            prompt: optional [N] prompt ids (any values, compared as strings; `prompt_ids` are sorted).
            prompt_text: optional [N] prompt texts (the same text for every vote of a prompt); without
                `prompt` the texts are the ids.
            judge: optional [N] judge ids.
            features: optional `{name: (values_a [N], values_b [N])}` per-side numeric features.
            meta: optional `{column: values [N]}` other per-vote columns.
            models: optional list fixing the model set and order (default: the sorted names found).

        Raises:
            ValueError: lengths differ, missing names, unknown labels (listed with their counts), a model
                playing itself, models not listed, bad weights/counts/soft outcomes.

        Example:
            >>> v = Votes.from_arrays(["x", "y"], ["y", "x"], p_a=[0.8, 0.5], prompt=[7, 7])
            >>> v.outcome.tolist(), v.prompt_ids
            ([0, 2], ('7',))
        """
        names_a = np.asarray(model_a, dtype=object)
        n = names_a.shape[0] if names_a.ndim == 1 else -1
        names_b = np.asarray(model_b, dtype=object)
        if names_a.ndim != 1 or names_b.shape != (n,):
            raise ValueError(f"model_a and model_b must be 1-D sequences of the same length, got shapes "
                             f"{names_a.shape} and {names_b.shape}")
        integer_ids = models is not None and n > 0 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (*names_a[:1], *names_b[:1]))
        if integer_ids:
            model_list = _id_tuple([str(m) for m in models], "models")
            a = _int_array(names_a.astype(np.int64), "model_a", n)
            b = _int_array(names_b.astype(np.int64), "model_b", n)
        else:
            sa = id_strings(names_a, "model_a", what="model name")
            sb = id_strings(names_b, "model_b", what="model name")
            if models is None:
                found, codes = factorize_sorted(np.concatenate([sa, sb]))
                model_list = tuple(found)
                a, b = codes[:n], codes[n:]
            else:
                if isinstance(models, str):
                    raise TypeError("models must be a sequence of model names, not a single string")
                model_list = _id_tuple([str(x) for x in models], "models")
                a, b = _lookup(sa, model_list), _lookup(sb, model_list)
                absent = sorted(set(sa[a < 0].tolist()) | set(sb[b < 0].tolist()))
                if absent:
                    raise ValueError(f"models does not list {len(absent)} model(s) found in the votes: {preview(absent)}")
            same = np.flatnonzero(a == b)
            if same.size:
                raise ValueError(f"{same.size} vote(s) have a model playing itself (model_a == model_b), e.g. row(s) "
                                 f"{preview(same.tolist())} ({sa[same[0]]!r}); remove them first")

        soft = None if p_a is None else _float_array(p_a, "p_a", (n,))
        if winner is None:
            if soft is None:
                raise ValueError("winner is required (or p_a, the soft outcomes)")
            bad = np.flatnonzero((soft < 0) | (soft > 1))
            if bad.size:
                raise ValueError(f"p_a (P(a wins)) must lie in [0, 1]; {bad.size} value(s) outside, e.g. "
                                 f"{soft[bad[0]]!r} in row(s) {preview(bad.tolist())}")
            outcome = np.where(soft > 0.5, A_WINS, np.where(soft < 0.5, B_WINS, TIE))
        else:
            outcome = outcome_codes(winner, n, winner_labels=winner_labels)

        prompt_idx = prompt_ids = texts = None
        if prompt is not None or prompt_text is not None:
            key = "prompt" if prompt is not None else "prompt_text"
            raw = np.asarray(prompt if prompt is not None else prompt_text, dtype=object)
            if raw.shape != (n,):
                raise ValueError(f"{key} must have shape [N] = ({n},), got {raw.shape}")
            ids, prompt_idx = factorize_sorted(id_strings(raw, key, what="value"))
            prompt_ids = tuple(ids)
            if prompt_text is not None:
                text_arr = np.asarray(prompt_text, dtype=object)
                if text_arr.shape != (n,):
                    raise ValueError(f"prompt_text must have shape [N] = ({n},), got {text_arr.shape}")
                text_arr = id_strings(text_arr, "prompt_text", what="prompt text")
                first = np.full(len(prompt_ids), -1, np.int64)
                order = np.arange(n)[::-1]
                first[prompt_idx[order]] = order
                texts = tuple(text_arr[first].tolist())
                differ = np.flatnonzero(text_arr != text_arr[first][prompt_idx])
                if differ.size:
                    i = int(differ[0])
                    raise ValueError(f"prompt_text differs between votes of the same prompt id {prompt_ids[prompt_idx[i]]!r} "
                                     f"(row {int(first[prompt_idx[i]])} and row {i})")
        judge_idx = judge_ids = None
        if judge is not None:
            raw = np.asarray(judge, dtype=object)
            if raw.shape != (n,):
                raise ValueError(f"judge must have shape [N] = ({n},), got {raw.shape}")
            ids, judge_idx = factorize_sorted(id_strings(raw, "judge", what="id"))
            judge_ids = tuple(ids)
        names, fa, fb = (), None, None
        if features:
            names = tuple(features)
            fa = np.stack([_float_array(features[k][0], f"features[{k!r}] (side a)", (n,)) for k in names], axis=1)
            fb = np.stack([_float_array(features[k][1], f"features[{k!r}] (side b)", (n,)) for k in names], axis=1)
        return cls(
            models=model_list, a=a, b=b, outcome=outcome, p_a=soft, weight=weight, count=count,
            prompt=prompt_idx, prompt_ids=prompt_ids, prompt_text=texts, judge=judge_idx, judge_ids=judge_ids,
            feature_names=names, features_a=fa, features_b=fb, meta=dict(meta or {}),
        )

    # ---------------------------------------------------------------------------------------------
    # Sizes and per-vote views

    def __len__(self) -> int:
        return int(self.a.shape[0])

    def __repr__(self) -> str:
        extras = [name for name in ("p_a", "weight", "count", "prompt", "judge") if getattr(self, name) is not None]
        if self.feature_names:
            extras.append(f"features={list(self.feature_names)}")
        if self.meta:
            extras.append(f"meta={list(self.meta)}")
        return (f"Votes({len(self)} votes, {self.num_models} models"
                + (f", {self.num_prompts} prompts" if self.prompt is not None else "")
                + (f"; {', '.join(extras)}" if extras else "") + ")")

    @property
    def num_models(self) -> int:
        return len(self.models)

    @property
    def num_votes(self) -> int:
        """The number of votes: `len(votes)`, or the total `count` when entries carry multiplicities."""
        return len(self) if self.count is None else int(self.count.sum())

    @property
    def num_prompts(self) -> int:
        return 0 if self.prompt_ids is None else len(self.prompt_ids)

    @property
    def num_judges(self) -> int:
        return 0 if self.judge_ids is None else len(self.judge_ids)

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    @property
    def is_soft(self) -> bool:
        """Whether the votes carry soft outcomes (`p_a`)."""
        return self.p_a is not None

    def multiplicity(self) -> np.ndarray:
        """float64[N]: how many votes each entry stands for (`count`, or ones)."""
        return np.ones(len(self)) if self.count is None else self.count.astype(np.float64)

    def vote_weight(self) -> np.ndarray:
        """float64[N]: the weight of one vote of each entry (`weight`, or ones)."""
        return np.ones(len(self)) if self.weight is None else np.asarray(self.weight, np.float64)

    def score_a(self) -> np.ndarray:
        """float64[N]: the score of `a` in each vote: `p_a`, or 1 / 0 / 1/2 for a win / loss / tie (both bad
        is a tie), as online Elo scores it."""
        return np.asarray(self.p_a, np.float64) if self.p_a is not None else _SCORE_OF_OUTCOME[self.outcome]

    def is_tie(self) -> np.ndarray:
        """bool[N]: the vote is `tie` or `tie (bothbad)`."""
        return self.outcome >= TIE

    def feature(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """`(values_a, values_b)`, float64[N] each, of the per-side feature `name`."""
        if name not in self.feature_names:
            raise ValueError(f"no feature {name!r} in these votes; features: {preview(self.feature_names) or '(none)'}")
        k = self.feature_names.index(name)
        return self.features_a[:, k], self.features_b[:, k]

    def _require_prompts(self, what: str) -> None:
        if self.prompt is None:
            raise ValueError(f"votes have no prompt ids; {what} needs them (load_votes reads a prompt column, "
                             "e.g. prompt_id / question_id, or pass prompt= to Votes.from_arrays)")

    def votes_per_prompt(self) -> np.ndarray:
        """float64[P] number of votes (counting multiplicities) on each prompt."""
        self._require_prompts("votes_per_prompt")
        return np.bincount(self.prompt, weights=self.multiplicity(), minlength=self.num_prompts)

    def ties_per_prompt(self) -> np.ndarray:
        """float64[P] number of tie votes (`tie` or `tie (bothbad)`) on each prompt."""
        self._require_prompts("ties_per_prompt")
        return np.bincount(self.prompt, weights=self.multiplicity() * self.is_tie(), minlength=self.num_prompts)

    def battles_per_model(self) -> np.ndarray:
        """float64[M] summed vote weight (times multiplicity) of the votes each model took part in."""
        w = self.vote_weight() * self.multiplicity()
        return (np.bincount(self.a, weights=w, minlength=self.num_models)
                + np.bincount(self.b, weights=w, minlength=self.num_models))

    def outcome_counts(self) -> dict[str, float]:
        """Summed vote weight per outcome name, e.g. `{"model_a": 3400.0, "tie": 3100.0, ...}`."""
        sums = np.bincount(self.outcome, weights=self.vote_weight() * self.multiplicity(), minlength=NUM_OUTCOMES)
        return {name: float(s) for name, s in zip(OUTCOME_NAMES, sums)}

    # ---------------------------------------------------------------------------------------------
    # Subsets

    def replace(self, **changes: Any) -> "Votes":
        """A copy with some fields replaced (validated again), e.g. `votes.replace(weight=w)`."""
        return dataclasses.replace(self, **changes)

    def subset(self, selection: Any) -> "Votes":
        """The votes selected by a boolean mask [N] or an array of vote indices, in that order.

        Everything else is kept: the model list, the prompt and judge tables (prompt indices keep
        pointing at the same `prompt_ids`, so features indexed by prompt stay aligned; prompts may
        then have no votes, see `drop_empty_prompts`).
        """
        sel = np.asarray(selection)
        if sel.dtype == bool:
            if sel.shape != (len(self),):
                raise ValueError(f"a boolean selection must have shape [N] = ({len(self)},), got {sel.shape}")
            idx = np.flatnonzero(sel)
        elif sel.size == 0 or np.issubdtype(sel.dtype, np.integer):
            idx = sel.astype(np.int64).reshape(-1)
            if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
                raise ValueError(f"vote indices must lie in [0, {len(self)}), got range [{idx.min()}, {idx.max()}]")
        else:
            raise TypeError(f"selection must be a boolean mask [N] or integer vote indices, got dtype {sel.dtype}")

        def take(x):
            return None if x is None else x[idx]

        return dataclasses.replace(
            self, a=self.a[idx], b=self.b[idx], outcome=self.outcome[idx], p_a=take(self.p_a),
            weight=take(self.weight), count=take(self.count), prompt=take(self.prompt), judge=take(self.judge),
            features_a=take(self.features_a), features_b=take(self.features_b),
            meta={k: v[idx] for k, v in self.meta.items()},
        )

    def subset_prompts(self, prompts: Any) -> "Votes":
        """The votes on the given prompts: prompt ids (strings) or indices into `prompt_ids` (ints), in
        input order; the prompt table is unchanged (see `subset`)."""
        self._require_prompts("subset_prompts")
        items = list(np.atleast_1d(np.asarray(prompts, dtype=object))) if not isinstance(prompts, str) else [prompts]
        if all(isinstance(p, str) for p in items):
            lookup = {p: i for i, p in enumerate(self.prompt_ids)}
            absent = [p for p in items if p not in lookup]
            if absent:
                raise ValueError(f"prompt id(s) {preview(absent)} are not among the {self.num_prompts} prompts")
            idx = np.asarray([lookup[p] for p in items], np.int64)
        elif all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in items):
            idx = np.asarray(items, np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= self.num_prompts):
                raise ValueError(f"prompt indices must lie in [0, {self.num_prompts}), got range [{idx.min()}, {idx.max()}]")
        else:
            raise TypeError("prompts must be prompt ids (strings) or prompt indices (integers), not a mix")
        return self.subset(np.isin(self.prompt, idx))

    def drop_empty_prompts(self) -> "Votes":
        """The same votes with the prompt table restricted to prompts that have votes (re-indexed, order kept)."""
        self._require_prompts("drop_empty_prompts")
        kept, index = np.unique(self.prompt, return_inverse=True)
        if kept.size == self.num_prompts:
            return self
        text = None if self.prompt_text is None else tuple(self.prompt_text[i] for i in kept)
        return dataclasses.replace(self, prompt=index.reshape(-1), prompt_ids=tuple(self.prompt_ids[i] for i in kept),
                                   prompt_text=text)

    # ---------------------------------------------------------------------------------------------
    # Out

    def to_frame(self):
        """pandas DataFrame, one row a vote: `model_a, model_b, winner`, then (when present) `p_a`, `weight`,
        `count`, `prompt_id`, `prompt`, `judge`, `<feature>_a`, `<feature>_b` and the `meta` columns.
        `jaxrank.load_votes(votes.to_frame())` gives the same votes back."""
        import pandas as pd

        names = np.asarray(self.models, dtype=object)
        data: dict[str, Any] = {
            "model_a": names[self.a], "model_b": names[self.b],
            "winner": np.asarray(OUTCOME_NAMES, dtype=object)[self.outcome],
        }
        for key in ("p_a", "weight", "count"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        if self.prompt is not None:
            data["prompt_id"] = np.asarray(self.prompt_ids, dtype=object)[self.prompt]
            if self.prompt_text is not None:
                data["prompt"] = np.asarray(self.prompt_text, dtype=object)[self.prompt]
        if self.judge is not None:
            data["judge"] = np.asarray(self.judge_ids, dtype=object)[self.judge]
        for k, name in enumerate(self.feature_names):
            data[f"{name}_a"] = self.features_a[:, k]
            data[f"{name}_b"] = self.features_b[:, k]
        for key, col in self.meta.items():
            if key not in data:
                data[key] = col
        return pd.DataFrame(data)

    def rows(self, *, merge: bool = True) -> "VoteRows":
        """The kernels' encoding (computed once per table and cached).

        Args:
            merge: True (default): the distinct `(a, b, outcome)` rows with summed weights, the sufficient
                statistics of every Bradley–Terry likelihood (a file of millions of votes becomes a few
                thousand rows). False: one row per vote and outcome, in vote order (for per-vote
                covariates: style control).

        Returns:
            `VoteRows`.
        """
        key = bool(merge)
        if key not in self._cache:
            self._cache[key] = _encode(self, merge=key)
        return self._cache[key]


def is_missing(x: Any) -> bool:
    """Whether a cell holds no value: None, NaN, or an empty / blank string."""
    if x is None:
        return True
    if isinstance(x, str):
        return x.strip() == ""
    try:
        return bool(x != x)  # NaN
    except Exception:
        return False


def id_string(value: Any) -> str:
    """An id or model name as a string: strings verbatim; a typed number as its value (`7` and `7.0`
    name the same model, as a float column of integers is an integer column with gaps)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    return str(value)


def missing_mask(values: np.ndarray) -> np.ndarray:
    """bool[N]: cells holding no value (None, NaN, an empty or blank string), vectorised for text columns."""
    import pandas as pd

    arr = np.asarray(values, dtype=object)
    if arr.size and pd.api.types.infer_dtype(arr, skipna=False) == "string":
        # All strings: pandas' string dtype strips and measures them without a Python loop (Arrow when installed).
        return pd.Series(arr, dtype="str").str.strip().str.len().eq(0).to_numpy(bool)
    return np.fromiter((is_missing(v) for v in arr), bool, count=arr.size)


def id_strings(values: Any, column: str, *, what: str = "value", where: Any = None) -> np.ndarray:
    """object[N] of strings (see `id_string`); a missing or empty cell is a `ValueError` naming `column` and
    the rows (`where(indices)` names them in the source, default `row(s) i`)."""
    import pandas as pd

    arr = np.asarray(values, dtype=object)
    missing = np.flatnonzero(missing_mask(arr))
    if missing.size:
        at = where(missing) if where is not None else f"row(s) {preview(missing.tolist())}"
        raise ValueError(f"{column} has {missing.size} missing or empty {what}(s), e.g. in {at}")
    if arr.size and pd.api.types.infer_dtype(arr, skipna=False) == "string":
        return arr
    return np.asarray([id_string(v) for v in arr], dtype=object)


def factorize_sorted(values: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(sorted distinct strings, int64[N] index of each value): a hash factorisation (fast for millions of
    strings), then the few distinct values sorted."""
    import pandas as pd

    codes, uniques = pd.factorize(np.asarray(values, dtype=object), sort=True)
    return [str(u) for u in uniques], codes.astype(np.int64)


def _lookup(values: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """int64[N] index of each value in `names`, -1 when absent."""
    import pandas as pd

    return pd.Index(list(names), dtype=object).get_indexer(np.asarray(values, dtype=object)).astype(np.int64)


def outcome_codes(winner: Sequence[Any], n: int, *, winner_labels: Mapping[Any, str] | None = None,
                  column: str = "winner", where: Any = None) -> np.ndarray:
    """int64[N] outcome codes of winner labels (or codes 0..3).

    Args:
        winner: [N] labels or integer codes.
        n: N.
        winner_labels: optional map from the source's labels to the outcome names (`model_a | model_b |
            tie | tie (bothbad) | both_bad`); default: those names themselves.
        column: the column's name, for messages.
        where: optional callable `where(indices) -> "row(s) 3, 7"` naming locations in the source.

    Raises:
        ValueError: missing labels, unknown labels (each with its count and first locations, and the
            accepted labels), bad codes.
    """
    import pandas as pd

    where = where or (lambda idx: f"row(s) {preview([int(i) for i in idx])}")
    typed = np.asarray(winner)
    raw = typed.astype(object)
    if raw.shape != (n,):
        raise ValueError(f"{column} must have shape [N] = ({n},), got {raw.shape}")
    if n and (typed.dtype.kind in "iu" or (typed.dtype == object and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in raw))):
        codes = raw.astype(np.int64)
        bad = np.flatnonzero((codes < 0) | (codes >= NUM_OUTCOMES))
        if bad.size:
            raise ValueError(f"{column}: integer outcome codes must be 0 (model_a), 1 (model_b), 2 (tie) or 3 "
                             f"(tie (bothbad)); got {codes[bad[0]]} in {where(bad)}")
        return codes
    missing = np.flatnonzero(missing_mask(raw))
    if missing.size:
        raise ValueError(f"column {column!r} has {missing.size} missing winner label(s), in {where(missing)}")
    if winner_labels is None:
        code_of: dict[str, int] = dict(WINNER_LABELS)
        known = list(WINNER_LABELS)
    else:
        if not isinstance(winner_labels, Mapping):
            raise TypeError(f"winner_labels must be a mapping like {{'left': 'model_a'}}, got {type(winner_labels).__name__}")
        code_of = {}
        for label, target in winner_labels.items():
            if target not in WINNER_LABELS:
                raise ValueError(f"winner_labels[{label!r}] = {target!r}; the targets must be one of "
                                 f"{preview(list(WINNER_LABELS))}")
            code_of[id_string(label)] = WINNER_LABELS[target]
        known = list(code_of)
    labels = raw if pd.api.types.infer_dtype(raw, skipna=False) == "string" else np.asarray(
        [id_string(v) for v in raw], dtype=object)
    uniq, inverse = factorize_sorted(labels)
    unknown = [i for i, lab in enumerate(uniq) if lab not in code_of]
    if unknown:
        parts = []
        for i in unknown[:5]:
            at = np.flatnonzero(inverse == i)
            parts.append(f"{uniq[i]!r} ({at.size} vote{'s' if at.size != 1 else ''}) in {where(at[:3])}")
        more = f", ... ({len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise ValueError(
            f"column {column!r} has unknown winner label(s) {'; '.join(parts)}{more}; accepted: {preview(known, 8)}. "
            "Map yours with winner_labels={'your label': 'model_a' | 'model_b' | 'tie' | 'tie (bothbad)'} "
            "(command line: --winner-labels 'your label=model_a,...'); a label is never guessed to be a tie")
    return np.asarray([code_of[lab] for lab in uniq], dtype=np.int64)[inverse]


# --------------------------------------------------------------------------------------------------
# The encoding


@struct.dataclass
class VoteRows:
    r"""The kernels' encoding of `Votes` (from `Votes.rows()`): rows `(a, b, outcome)` with summed weights,
    and for each vote the rows it adds to.

    A pytree (`flax.struct.dataclass`): `models` and `merged` are static, the arrays are leaves, so it
    passes through `jit`/`vmap` and can carry sharded arrays.

    A vote adds to one row, or to two when it is soft (`weight * p_a` to its `a`-wins row and
    `weight * (1 - p_a)` to its `b`-wins row): the Bradley–Terry log-likelihood of the rows,
    `sum_u count_u log P(outcome_u)`, is then exactly that of the votes, `sum_v weight_v (p_v log P(a) +
    (1 - p_v) log P(b))` (ties and both-bad votes are hard: their own outcome).

    Attributes:
        models: the model names.
        merged: True: rows are the distinct `(a, b, outcome)` triples, sorted; False: one row per vote
            and outcome, in vote order.
        a, b, outcome: int32[U] the rows.
        count: float32[U] the summed weight of each row (`sum weight * count * target`): the likelihood's
            row weights.
        vote_row: int32[N, S] the row(s) each vote (table entry) adds to; S = 2 when some vote is soft
            and not 0 or 1, else 1.
        vote_amount: float32[N, S] what ONE vote of the entry adds to each of its rows (`weight * target`).
        vote_count: float32[N] the multiplicity of each entry (`Votes.count`, or ones).
        row_vote: int32[U] the vote (entry) of each row when `merged` is False (per-vote covariates);
            empty when merged.
    """

    models: tuple[str, ...] = struct.field(pytree_node=False)
    merged: bool = struct.field(pytree_node=False)
    a: jax.Array
    b: jax.Array
    outcome: jax.Array
    count: jax.Array
    vote_row: jax.Array
    vote_amount: jax.Array
    vote_count: jax.Array
    row_vote: jax.Array

    @property
    def num_models(self) -> int:
        return len(self.models)

    @property
    def num_rows(self) -> int:
        """U, the number of rows."""
        return int(self.a.shape[0])

    @property
    def num_slots(self) -> int:
        return int(self.vote_row.shape[1])

    def with_counts(self, count: Any) -> "VoteRows":
        """The same rows with other row weights (e.g. a bootstrap resample), float32[U]."""
        count = jnp.asarray(count, dtype=jnp.float32)
        if count.shape != self.count.shape:
            raise ValueError(f"count must have shape [U] = {tuple(self.count.shape)}, got {tuple(count.shape)}")
        return self.replace(count=count)

    def to_frame(self):
        """The rows as a pandas DataFrame with columns `model_a, model_b, winner, count`."""
        import pandas as pd

        names = np.asarray(self.models, dtype=object)
        return pd.DataFrame({
            "model_a": names[np.asarray(self.a)], "model_b": names[np.asarray(self.b)],
            "winner": np.asarray(OUTCOME_NAMES, dtype=object)[np.asarray(self.outcome)],
            "count": np.asarray(self.count),
        })


def _vote_targets(votes: Votes) -> tuple[np.ndarray, np.ndarray]:
    """(outcomes int64[N, S], targets float64[N, S]): each vote's outcome distribution on S slots."""
    n = len(votes)
    o = votes.outcome.astype(np.int64)
    if votes.p_a is None:
        return o[:, None], np.ones((n, 1))
    p = np.asarray(votes.p_a, np.float64)
    decisive = o < TIE
    split = decisive & (p > 0.0) & (p < 1.0)
    if not split.any():
        return o[:, None], np.ones((n, 1))
    outs = np.stack([np.where(decisive, A_WINS, o), np.where(decisive, B_WINS, o)], axis=1)
    targets = np.stack([np.where(decisive, p, 1.0), np.where(decisive, 1.0 - p, 0.0)], axis=1)
    # A soft vote of exactly 0 or 1 uses one slot: point its empty slot at the other one.
    outs[:, 0] = np.where(decisive & (p == 0.0), B_WINS, outs[:, 0])
    targets[:, 0] = np.where(decisive & (p == 0.0), 1.0, targets[:, 0])
    targets[:, 1] = np.where(decisive & ((p == 0.0) | (p == 1.0)), 0.0, targets[:, 1])
    outs[:, 1] = np.where(targets[:, 1] > 0, outs[:, 1], outs[:, 0])
    return outs, targets


def _encode(votes: Votes, *, merge: bool) -> VoteRows:
    m = votes.num_models
    n = len(votes)
    outs, targets = _vote_targets(votes)
    s = outs.shape[1]
    a = votes.a.astype(np.int64)
    b = votes.b.astype(np.int64)
    amount = targets * votes.vote_weight()[:, None]
    mult = votes.multiplicity()
    if merge:
        keys = ((a[:, None] * m + b[:, None]) * NUM_OUTCOMES + outs)
        uniq, inverse = np.unique(keys.reshape(-1), return_inverse=True)
        inverse = inverse.reshape(n, s)
        count = np.bincount(inverse.reshape(-1), weights=(amount * mult[:, None]).reshape(-1), minlength=uniq.size)
        rows_a, rows_b, rows_o = (uniq // NUM_OUTCOMES) // m, (uniq // NUM_OUTCOMES) % m, uniq % NUM_OUTCOMES
        vote_row = inverse
        row_vote = np.zeros((0,), np.int64)
    else:
        # Vote-major rows, one per used slot; an unused second slot points at the vote's first row.
        used = np.ones((n, s), bool)
        if s == 2:
            used[:, 1] = amount[:, 1] > 0
        flat = np.flatnonzero(used.reshape(-1))
        row_vote = flat // s
        rows_a, rows_b, rows_o = a[row_vote], b[row_vote], outs.reshape(-1)[flat]
        count = (amount * mult[:, None]).reshape(-1)[flat]
        vote_row = np.zeros((n, s), np.int64)
        vote_row.reshape(-1)[flat] = np.arange(flat.size)
        if s == 2:
            vote_row[:, 1] = np.where(used[:, 1], vote_row[:, 1], vote_row[:, 0])
    return VoteRows(
        models=votes.models, merged=merge,
        a=jnp.asarray(rows_a, jnp.int32), b=jnp.asarray(rows_b, jnp.int32), outcome=jnp.asarray(rows_o, jnp.int32),
        count=jnp.asarray(count, jnp.float32), vote_row=jnp.asarray(vote_row, jnp.int32),
        vote_amount=jnp.asarray(amount, jnp.float32), vote_count=jnp.asarray(mult, jnp.float32),
        row_vote=jnp.asarray(row_vote, jnp.int32),
    )


def bucket_size(n: int) -> int:
    """The padded size of `n` rows for compiled kernels: sizes within 1/8 of each other share one shape
    (a new data set of about the same size reuses the compiled fit), at most 1/8 of the rows wasted."""
    if n <= 64:
        return max(int(n), 1)
    step = 1 << max(int(n).bit_length() - 4, 0)
    return -(-int(n) // step) * step


# --------------------------------------------------------------------------------------------------
# Graph structure


def comparison_components(rows: Votes | VoteRows, *, weights: Any = None) -> np.ndarray:
    """Connected components of the comparison graph (models joined by a row of positive weight).

    Args:
        rows: `Votes` (its merged rows are used) or `VoteRows` (concrete arrays).
        weights: optional float[U] replacing the rows' `count` to decide which rows are present.

    Returns:
        int32[M] component label per model, labels 0..C-1 numbered by first model; a model without
        votes is its own component.
    """
    if isinstance(rows, Votes):
        rows = rows.rows()
    m = rows.num_models
    a = np.asarray(rows.a, dtype=np.int64)
    b = np.asarray(rows.b, dtype=np.int64)
    w = np.asarray(rows.count if weights is None else weights, dtype=np.float64)
    keep = w > 0
    pairs = np.unique(np.minimum(a, b)[keep] * m + np.maximum(a, b)[keep])
    lo, hi = pairs // m, pairs % m
    label = np.arange(m, dtype=np.int64)
    # Min-label propagation with pointer jumping: O(E log M) vectorised passes.
    while True:
        old = label.copy()
        lmin = np.minimum(label[lo], label[hi])
        np.minimum.at(label, lo, lmin)
        np.minimum.at(label, hi, lmin)
        label = label[label]
        label = label[label]
        if np.array_equal(label, old):
            break
    _, first, renum = np.unique(label, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[renum].astype(np.int32)


def describe_components(models: Sequence[str], component: np.ndarray, *, max_models: int = 4, max_components: int = 5) -> str:
    """A short human description of components: `{A, B, C, ... (+7)}, {D}, ...`."""
    labels, sizes = np.unique(component, return_counts=True)
    order = labels[np.argsort(-sizes, kind="stable")]
    parts = []
    for c in order[:max_components]:
        members = [models[i] for i in np.flatnonzero(component == c)]
        shown = ", ".join(members[:max_models])
        if len(members) > max_models:
            shown += f", ... (+{len(members) - max_models})"
        parts.append("{" + shown + "}")
    if len(order) > max_components:
        parts.append(f"... ({len(order) - max_components} more components)")
    return "; ".join(parts)


def warn_if_disconnected(models: Sequence[str], component: np.ndarray, *, pinning: str, stacklevel: int = 3) -> None:
    """Warn (naming the components) when the comparison graph has more than one component."""
    n_comp = int(component.max()) + 1 if component.size else 0
    if n_comp > 1:
        warnings.warn(
            f"the comparison graph has {n_comp} disconnected components: "
            f"{describe_components(models, component)}. Ratings are not comparable across components; "
            f"{pinning}",
            UserWarning,
            stacklevel=stacklevel,
        )

