"""Argument checks shared by the public entry points.

Checks run on shapes and dtypes, which are static under `jit`, so they raise at trace time, before
any XLA compilation. Value checks (NaN, ranges) run only on concrete arrays: under a trace the
values are unknown and the check is skipped rather than turned into a silent device-side branch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x: Any) -> bool:
    """True when `x` holds values (NumPy, Python or a committed jax.Array), not a tracer."""
    return not isinstance(x, jax.core.Tracer)


def describe(x: Any) -> str:
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is None:
        return type(x).__name__
    return f"shape {tuple(shape)} and dtype {dtype}"


def as_array(x: Any, name: str) -> Any:
    """Accept jax/NumPy arrays and array-likes; reject everything else naming `name`."""
    if isinstance(x, (jax.Array, np.ndarray)) or isinstance(x, jax.core.Tracer):
        return x
    try:
        return np.asarray(x)
    except Exception as err:  # pragma: no cover - the message is the point
        raise TypeError(f"{name} must be an array, got {type(x).__name__}") from err


def check_float(x: Any, name: str) -> None:
    """`x` must have a floating dtype (bf16, f16, f32, f64)."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{name} must have a floating-point dtype (bfloat16, float16, float32 or float64), "
            f"got {x.dtype}; cast integer logits with .astype(jnp.float32) if that is intended"
        )


def check_ndim(x: Any, name: str, ndim: int, layout: str) -> None:
    if x.ndim != ndim:
        raise ValueError(f"{name} must have shape {layout} ({ndim} dimensions), got {describe(x)}")


def check_min_ndim(x: Any, name: str, ndim: int, layout: str) -> None:
    if x.ndim < ndim:
        raise ValueError(f"{name} must have shape {layout} (at least {ndim} dimensions), got {describe(x)}")


def check_same_shape(a: Any, b: Any, name_a: str, name_b: str) -> None:
    if tuple(a.shape) != tuple(b.shape):
        hint = ""
        if a.ndim == b.ndim and a.ndim >= 1 and a.shape[:-1] == b.shape[:-1]:
            hint = (
                f" (vocabularies differ: {a.shape[-1]} vs {b.shape[-1]}; models with different tokenizers "
                "need sequence-level scoring, see jaxrank.scoring)"
            )
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}{hint}"
        )


def check_nonempty(x: Any, name: str, axis: int = 0, what: str = "batch") -> None:
    if x.ndim > axis and x.shape[axis] == 0:
        raise ValueError(f"{name} has an empty {what} dimension (shape {tuple(x.shape)}); nothing to compute")


def check_no_nan(x: Any, name: str) -> None:
    """Raise when a concrete `x` contains NaN (+-inf is allowed: -inf logits are legal)."""
    if not is_concrete(x) or not jnp.issubdtype(x.dtype, jnp.floating):
        return
    with jax.ensure_compile_time_eval():
        bad = jnp.isnan(x).any() if not isinstance(x, np.ndarray) else np.isnan(x).any()
    if isinstance(bad, jax.core.Tracer):
        return
    if bool(bad):
        raise ValueError(f"{name} contains NaN; clean the inputs")


def check_bool(value: Any, name: str) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def check_choice(value: Any, name: str, choices: Sequence[Any]) -> None:
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {options}; got {value!r}")


def check_positive(value: Any, name: str, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def check_open_unit(value: float, name: str) -> None:
    if not (0.0 < float(value) < 1.0):
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value!r}")


def logit_value_flags(x: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Per-position host flags `(has NaN, has +inf, all -inf)`, each of shape `x.shape[:-1]`.

    `None` when the values are unknown (a tracer). NumPy inputs are checked in NumPy (no XLA
    compilation); device arrays by one small jitted reduction evaluated eagerly, also when the
    caller is itself being traced (a closed-over constant inside an outer `jit`).
    """
    if not is_concrete(x) or not jnp.issubdtype(x.dtype, jnp.floating):
        return None
    if isinstance(x, np.ndarray):
        with np.errstate(invalid="ignore"):
            return np.isnan(x).any(-1), np.isposinf(x).any(-1), np.isneginf(x).all(-1)
    with jax.ensure_compile_time_eval():
        flags = _value_flags(x)
    if any(isinstance(f, jax.core.Tracer) for f in flags):
        return None
    return tuple(np.asarray(f) for f in flags)


def check_logit_values(x: Any, name: str, *, counted: Any = None, reject_empty_rows: bool = False) -> None:
    """Raise when a concrete `x` holds NaN or +inf (-inf logits are legal: probability 0).

    Args:
      x: logits `[..., vocab]`.
      name: the argument's name, for the message.
      counted: optional host bool array of shape `x.shape[:-1]`: only these positions are checked
        (masked-out positions never reach a result or a gradient).
      reject_empty_rows: also reject counted positions whose logits are all -inf (no distribution:
        they would make a score NaN).

    One pass over the values; skipped under a trace, where the values are unknown.
    """
    flags = logit_value_flags(x)
    if flags is None:
        return
    nan, pos_inf, all_neg_inf = flags
    if counted is not None:
        counted = np.asarray(counted, bool)
        nan, pos_inf, all_neg_inf = nan & counted, pos_inf & counted, all_neg_inf & counted
    where = " at a counted position" if counted is not None else ""
    if nan.any():
        at = tuple(int(i) for i in np.argwhere(nan)[0])
        raise ValueError(f"{name} contains NaN{where} (first at index {at}); clean the inputs")
    if pos_inf.any():
        at = tuple(int(i) for i in np.argwhere(pos_inf)[0])
        raise ValueError(
            f"{name} contains +inf{where} (first at index {at}); logits must be finite or -inf (probability 0)"
        )
    if reject_empty_rows and all_neg_inf.any():
        at = tuple(int(i) for i in np.argwhere(all_neg_inf)[0])
        raise ValueError(
            f"{name}{list(at)} is all -inf at a counted position (no distribution, its score would be NaN); "
            "mask that position out"
        )


@jax.jit
def _value_flags(x: Any) -> tuple[Any, Any, Any]:
    return jnp.isnan(x).any(-1), jnp.isposinf(x).any(-1), jnp.isneginf(x).all(-1)


def check_temperature(value: Any, name: str = "temperature") -> float:
    """A concrete, finite number > 0; returns 1 / value as a Python float (a static kernel option)."""
    if isinstance(value, bool) or isinstance(value, jax.core.Tracer):
        raise TypeError(f"{name} must be a Python number > 0 (a static option), got {type(value).__name__}")
    try:
        t = float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a number > 0, got {value!r}") from err
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return 1.0 / t


def check_elo_scale(scale: Any, base: Any, init: Any) -> tuple[float, float, float]:
    """The Elo-scale options `scale`, `base` (finite, > 0, base != 1) and `init` (finite).

    Python and NumPy real scalars are accepted (e.g. `np.float32(400)`); bools, arrays, strings and
    tracers are not. Returns the three values as Python floats.
    """

    def number(value: Any, name: str, want: str) -> float:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"{name} must be a finite number{want}, got {value!r}")
        return float(value)

    scale_f, base_f = number(scale, "scale", " > 0"), number(base, "base", " > 0")
    init_f = number(init, "init", "")
    for name, value, given in (("scale", scale_f, scale), ("base", base_f, base)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {given!r}")
    if base_f == 1:
        raise ValueError("base must not be 1 (the Elo scale divides by ln(base))")
    if not math.isfinite(init_f):
        raise ValueError(f"init must be a finite number, got {init!r}")
    return scale_f, base_f, init_f


def preview(values: Sequence[Any], limit: int = 5) -> str:
    """`'a', 'b', 'c', ... (7 more)`: the first `limit` values of a list, for error messages."""
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:limit])
    more = len(values) - limit
    return shown + (f", ... ({more} more)" if more > 0 else "")
