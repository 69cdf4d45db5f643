"""Score samplers for judge-budget simulation (private; the public names live in `jaxrank.allocation`).

A sampler is a pytree (`flax.struct.dataclass`) describing K items, each with a score distribution:

- `means` `[K]` and `variances` `[K]`: the exact moments of one draw (for an empirical pool, the pool's mean and
  population variance, because draws are made with replacement from the pool);
- `sample(key, items)` -> scores with `items`' shape: one independent draw per entry;
- `draw_bits(b0, b1, items)`: the same distribution from two uint32 words of randomness per entry. The simulation
  derives those words with a counter-based Threefry-2x32 hash of `(item, pull index)` under the run's key, which is
  bit-identical to `jax.random`'s Threefry but written out so XLA fuses it into the scan body (on CPU jax lowers
  Threefry as a rolled loop, which costs microseconds per call inside a `lax.scan`).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrank import _validation as V

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _rotl(x: jax.Array, r: int) -> jax.Array:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry2x32(k0: jax.Array, k1: jax.Array, x0: jax.Array, x1: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32 (20 rounds), unrolled: the hash behind `jax.random`'s default PRNG.

    Args:
      k0, k1: uint32 key words (broadcastable against `x0`, `x1`).
      x0, x1: uint32 counter words.

    Returns:
      Two uint32 arrays, bit-identical to `jax.extend.random.threefry_2x32(key, concat([x0, x1]))` split in halves.
    """
    k0, k1 = jnp.asarray(k0, jnp.uint32), jnp.asarray(k1, jnp.uint32)
    x0, x1 = jnp.asarray(x0, jnp.uint32), jnp.asarray(x1, jnp.uint32)
    ks = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
    x0 = x0 + ks[0]
    x1 = x1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = _rotl(x1, r) ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def _unit(b: jax.Array, *, open_left: bool) -> jax.Array:
    """uint32 -> float32 uniform on [0, 1) (24 random bits), or on (0, 1) with `open_left`."""
    hi = (b >> np.uint32(8)).astype(jnp.float32)
    if open_left:
        hi = hi + 0.5
    return hi * np.float32(2.0**-24)


class _Sampler:
    """Shared behaviour: `sample(key, items)` from `draw_bits`, and the number of items."""

    @property
    def num_items(self) -> int:
        return int(self.means.shape[0])

    def sample(self, key: jax.Array, items: Any) -> jax.Array:
        """Draw one score per entry of `items` (int `[...]`) -> float32 `[...]`, independent draws.

        Example:
            >>> s = GaussianSampler(jnp.array([1.0, 2.0]), jnp.array([0.5, 0.1]))
            >>> s.sample(jax.random.key(0), jnp.array([0, 1, 1])).shape
            (3,)
        """
        items = jnp.asarray(items, jnp.int32)
        bits = jax.random.bits(key, items.shape + (2,), jnp.uint32)
        return self.draw_bits(bits[..., 0], bits[..., 1], items)


def _is_data(x: Any) -> bool:
    """True for user data (arrays, lists, numbers); False for tracers and the placeholders jax's tree utilities
    put into pytrees (None, object(), PartitionSpec), which `__post_init__` must pass through untouched."""
    if isinstance(x, jax.core.Tracer):
        return False
    return isinstance(x, (jax.Array, np.ndarray, list, tuple, float, int, np.generic))


def _coerce(obj: Any, fields: dict[str, Any]) -> bool:
    """Cast each user-data field to a jax array of the given dtype in place; True when all of them were data."""
    all_data = True
    for name, dtype in fields.items():
        x = getattr(obj, name)
        if _is_data(x):
            object.__setattr__(obj, name, jnp.asarray(np.asarray(x) if isinstance(x, (list, tuple)) else x, dtype))
        else:
            all_data = False
    return all_data


def _moments_arrays(means: Any, variances: Any, what: str) -> tuple[jax.Array, jax.Array]:
    means = jnp.asarray(V.as_array(means, f"{what} means"), jnp.float32)
    variances = jnp.asarray(V.as_array(variances, f"{what} variances"), jnp.float32)
    V.check_ndim(means, f"{what} means", 1, "[num_items]")
    V.check_same_shape(means, variances, f"{what} means", f"{what} variances")
    V.check_nonempty(means, f"{what} means", what="item")
    if V.is_concrete(variances) and V.is_concrete(means):
        # NumPy on the host: an eager jnp check would compile a program of its own.
        m_host, v_host = np.asarray(means), np.asarray(variances)
        if not np.all(np.isfinite(m_host)) or not np.all(np.isfinite(v_host)):
            raise ValueError(f"{what} means and variances must be finite (no NaN or inf)")
        if np.any(v_host < 0):
            raise ValueError(f"{what} variances must be >= 0, got min {float(v_host.min())}")
    return means, variances


@struct.dataclass
class GaussianSampler(_Sampler):
    """Gaussian judge scores: item i scores N(means[i], variances[i]).

    Attributes:
      means: float32 `[K]`.
      variances: float32 `[K]`, >= 0.

    Example:
        >>> s = GaussianSampler(jnp.array([3.0, 4.0]), jnp.array([1.0, 0.25]))
        >>> s.sample(jax.random.key(0), jnp.arange(2)).shape
        (2,)
    """

    means: jax.Array
    variances: jax.Array

    def __post_init__(self) -> None:
        if _coerce(self, {"means": jnp.float32, "variances": jnp.float32}):
            _moments_arrays(self.means, self.variances, "GaussianSampler")

    def draw_bits(self, b0: jax.Array, b1: jax.Array, items: jax.Array) -> jax.Array:
        # Box-Muller with u1 in (0, 1) so the log is finite.
        u0 = _unit(b0, open_left=False)
        u1 = _unit(b1, open_left=True)
        z = jnp.sqrt(-2.0 * jnp.log(u1)) * jnp.cos(np.float32(2.0 * np.pi) * u0)
        return self.means[items] + jnp.sqrt(self.variances[items]) * z


@struct.dataclass
class BernoulliSampler(_Sampler):
    """Pass/fail judge scores: item i scores 1 with probability probs[i], else 0.

    Mean p, variance p (1 - p).

    Example:
        >>> s = BernoulliSampler(jnp.array([0.1, 0.5]))
        >>> s.variances
        Array([0.09, 0.25], dtype=float32)
    """

    probs: jax.Array

    def __post_init__(self) -> None:
        if not _coerce(self, {"probs": jnp.float32}):
            return
        p = self.probs
        V.check_ndim(p, "BernoulliSampler probs", 1, "[num_items]")
        V.check_nonempty(p, "BernoulliSampler probs", what="item")
        if V.is_concrete(p) and not bool(jnp.all((p >= 0) & (p <= 1))):
            raise ValueError("BernoulliSampler probs must lie in [0, 1] (and not be NaN)")

    @property
    def means(self) -> jax.Array:
        return self.probs

    @property
    def variances(self) -> jax.Array:
        return self.probs * (1.0 - self.probs)

    def draw_bits(self, b0: jax.Array, b1: jax.Array, items: jax.Array) -> jax.Array:
        del b1
        return (_unit(b0, open_left=False) < self.probs[items]).astype(jnp.float32)


@struct.dataclass
class BetaSampler(_Sampler):
    """Scores in (0, 1) from Beta(alpha[i], beta[i]); build it from moments with `BetaSampler.from_moments`.

    Mean a / (a + b), variance a b / ((a + b)^2 (a + b + 1)). Inside a simulation each draw runs jax's
    Gamma rejection sampler, so this sampler is several times slower than the others.

    Example:
        >>> s = BetaSampler.from_moments(jnp.array([0.3, 0.8]), jnp.array([0.01, 0.02]))
        >>> s.means
        Array([0.3, 0.8], dtype=float32)
    """

    alpha: jax.Array
    beta: jax.Array

    def __post_init__(self) -> None:
        if _coerce(self, {"alpha": jnp.float32, "beta": jnp.float32}):
            V.check_ndim(self.alpha, "BetaSampler alpha", 1, "[num_items]")
            V.check_same_shape(self.alpha, self.beta, "BetaSampler alpha", "BetaSampler beta")
            if not bool(jnp.all((self.alpha > 0) & (self.beta > 0))):
                raise ValueError("BetaSampler alpha and beta must be > 0 (and not NaN)")

    @classmethod
    def from_moments(cls, means: Any, variances: Any) -> BetaSampler:
        """Solve a + b = m (1 - m) / v - 1, a = m (a + b); needs 0 < m < 1 and 0 < v < m (1 - m)."""
        m, v = _moments_arrays(means, variances, "BetaSampler")
        if V.is_concrete(m):
            if not bool(jnp.all((m > 0) & (m < 1))):
                raise ValueError("BetaSampler means must lie strictly between 0 and 1")
            if not bool(jnp.all((v > 0) & (v < m * (1 - m)))):
                raise ValueError("BetaSampler variances must satisfy 0 < v < m (1 - m) for each item")
        total = m * (1.0 - m) / v - 1.0
        return cls(alpha=m * total, beta=(1.0 - m) * total)

    @property
    def means(self) -> jax.Array:
        return self.alpha / (self.alpha + self.beta)

    @property
    def variances(self) -> jax.Array:
        s = self.alpha + self.beta
        return self.alpha * self.beta / (s * s * (s + 1.0))

    def draw_bits(self, b0: jax.Array, b1: jax.Array, items: jax.Array) -> jax.Array:
        shape = items.shape
        keys = jax.random.wrap_key_data(jnp.stack([b0.ravel(), b1.ravel()], axis=-1), impl="threefry2x32")
        draw = jax.vmap(lambda k, a, b: jax.random.beta(k, a, b, dtype=jnp.float32))
        return draw(keys, self.alpha[items].ravel(), self.beta[items].ravel()).reshape(shape)


@struct.dataclass
class CategoricalSampler(_Sampler):
    """Integer-rubric judge scores: item i scores values[v] with probability probs[i, v].

    `CategoricalSampler.from_moments(means, variances, low=1, high=5)` builds probabilities with given means and
    variances on the rubric low..high: a mixture of the least-variance law (mass on the two integers around the
    mean) and the largest-variance law (mass on low and high) with the same mean, weighted to hit the variance.

    Attributes:
      probs: float32 `[K, V]`, rows sum to 1.
      values: float32 `[V]`, the rubric values (e.g. 1..5).

    Example:
        >>> s = CategoricalSampler.from_moments(jnp.array([4.2, 2.5]), jnp.array([0.3, 1.5]))
        >>> s.means, s.variances  # doctest: +SKIP
        (Array([4.2, 2.5], dtype=float32), Array([0.3, 1.5], dtype=float32))
    """

    probs: jax.Array
    values: jax.Array

    def __post_init__(self) -> None:
        if not _coerce(self, {"probs": jnp.float32, "values": jnp.float32}):
            return
        p, vals = self.probs, self.values
        V.check_ndim(p, "CategoricalSampler probs", 2, "[num_items, num_values]")
        V.check_ndim(vals, "CategoricalSampler values", 1, "[num_values]")
        V.check_nonempty(p, "CategoricalSampler probs", what="item")
        if p.shape[1] != vals.shape[0]:
            raise ValueError(
                f"CategoricalSampler probs has {p.shape[1]} columns but values has {vals.shape[0]} entries"
            )
        if V.is_concrete(p):
            if not bool(jnp.all(p >= 0)):
                raise ValueError("CategoricalSampler probs must be >= 0 (and not NaN)")
            if not bool(jnp.allclose(p.sum(axis=1), 1.0, atol=1e-4)):
                raise ValueError("CategoricalSampler probs rows must sum to 1")

    @classmethod
    def from_moments(
        cls, means: Any, variances: Any, *, low: int = 1, high: int = 5
    ) -> CategoricalSampler:
        """Probabilities on the integers low..high with the given means `[K]` and variances `[K]`.

        Feasible when low <= m <= high and f (1 - f) <= v <= (m - low)(high - m), f the fractional part of m.
        """
        m = np.asarray(means, np.float64)
        v = np.asarray(variances, np.float64)
        if m.ndim != 1 or m.shape != v.shape or m.size == 0:
            raise ValueError(f"means and variances must both have shape [num_items], got {m.shape} and {v.shape}")
        if not (isinstance(low, int) and isinstance(high, int) and low < high):
            raise ValueError(f"low and high must be integers with low < high, got {low!r} and {high!r}")
        if np.any(~np.isfinite(m)) or np.any(~np.isfinite(v)):
            raise ValueError("means and variances must be finite")
        if np.any((m < low) | (m > high)):
            raise ValueError(f"means must lie in [{low}, {high}]")
        lo = np.clip(np.floor(m), low, high - 1)
        f = m - lo
        vmin = f * (1.0 - f)
        vmax = (m - low) * (high - m)
        tol = 1e-9
        bad = (v < vmin - tol) | (v > vmax + tol)
        if np.any(bad):
            i = int(np.argmax(bad))
            raise ValueError(
                f"item {i}: variance {v[i]:g} is not reachable on the rubric {low}..{high} with mean {m[i]:g} "
                f"(feasible range [{vmin[i]:g}, {vmax[i]:g}])"
            )
        span = vmax - vmin
        w = np.where(span > 0, (np.clip(v, vmin, vmax) - vmin) / np.where(span > 0, span, 1.0), 0.0)
        num = high - low + 1
        probs = np.zeros((m.size, num))
        rows = np.arange(m.size)
        li = (lo - low).astype(int)
        np.add.at(probs, (rows, li), (1.0 - w) * (1.0 - f))
        np.add.at(probs, (rows, li + 1), (1.0 - w) * f)
        probs[:, 0] += w * (high - m) / (high - low)
        probs[:, -1] += w * (m - low) / (high - low)
        return cls(probs=jnp.asarray(probs, jnp.float32), values=jnp.arange(low, high + 1, dtype=jnp.float32))

    @property
    def means(self) -> jax.Array:
        return self.probs @ self.values

    @property
    def variances(self) -> jax.Array:
        mu = self.means
        return jnp.maximum(self.probs @ (self.values * self.values) - mu * mu, 0.0)

    def draw_bits(self, b0: jax.Array, b1: jax.Array, items: jax.Array) -> jax.Array:
        del b1
        u = _unit(b0, open_left=False)
        cdf = jnp.cumsum(self.probs, axis=1)[:, :-1]  # [K, V-1]; the last bin takes the rest
        idx = jnp.sum(u[..., None] >= cdf[items], axis=-1)
        return self.values[idx]


@struct.dataclass
class EmpiricalSampler(_Sampler):
    """Draw with replacement from each item's observed repeated scores (ragged pools, padded).

    Attributes:
      pool: float32 `[K, L]`, item i's scores in `pool[i, :lengths[i]]` (the rest is padding).
      lengths: int32 `[K]`, >= 1.

    `means` is each pool's mean and `variances` its population variance (divide by the pool size): the exact
    moments of one draw with replacement. Build it with `EmpiricalSampler.from_lists([[4, 5, 4], [2, 3]])`.
    """

    pool: jax.Array
    lengths: jax.Array

    def __post_init__(self) -> None:
        if _coerce(self, {"pool": jnp.float32, "lengths": jnp.int32}):
            V.check_ndim(self.pool, "EmpiricalSampler pool", 2, "[num_items, max_len]")
            V.check_ndim(self.lengths, "EmpiricalSampler lengths", 1, "[num_items]")
            if self.lengths.shape[0] != self.pool.shape[0]:
                raise ValueError("EmpiricalSampler pool and lengths must have the same number of items")
            lengths = np.asarray(self.lengths)
            if not np.all((lengths >= 1) & (lengths <= self.pool.shape[1])):
                raise ValueError("EmpiricalSampler lengths must lie in [1, pool.shape[1]]")

    @classmethod
    def from_lists(cls, scores: Sequence[Sequence[float]]) -> EmpiricalSampler:
        """Pad ragged per-item score lists into `[K, max_len]` (NaN and empty lists are errors)."""
        if len(scores) == 0:
            raise ValueError("scores is empty: expected one list of repeated scores per item")
        lengths = np.array([len(s) for s in scores], np.int32)
        if np.any(lengths == 0):
            raise ValueError(f"item {int(np.argmin(lengths))} has no scores; every item needs at least one")
        pool = np.zeros((len(scores), int(lengths.max())), np.float32)
        for i, s in enumerate(scores):
            row = np.asarray(s, np.float64)
            if np.any(~np.isfinite(row)):
                raise ValueError(f"item {i} has a NaN or infinite score: {list(s)}")
            pool[i, : len(row)] = row
        return cls(pool=jnp.asarray(pool), lengths=jnp.asarray(lengths))

    @property
    def _mask(self) -> jax.Array:
        return jnp.arange(self.pool.shape[1])[None, :] < self.lengths[:, None]

    @property
    def means(self) -> jax.Array:
        return jnp.where(self._mask, self.pool, 0.0).sum(axis=1) / self.lengths

    @property
    def variances(self) -> jax.Array:
        d = jnp.where(self._mask, self.pool - self.means[:, None], 0.0)
        return (d * d).sum(axis=1) / self.lengths

    def draw_bits(self, b0: jax.Array, b1: jax.Array, items: jax.Array) -> jax.Array:
        del b1
        n = self.lengths[items]
        j = jnp.minimum((_unit(b0, open_left=False) * n).astype(jnp.int32), n - 1)
        return self.pool[items, j]


SAMPLER_TYPES = (GaussianSampler, BernoulliSampler, BetaSampler, CategoricalSampler, EmpiricalSampler)


def _has_static(obj: Any, name: str) -> bool:
    try:
        inspect.getattr_static(obj, name)
    except AttributeError:
        return False
    return True


def check_sampler(sampler: Any) -> int:
    """The number of items of a sampler, or a TypeError naming what is expected."""
    # getattr_static: `hasattr` would evaluate computed `means` / `variances` properties (eagerly, compiling).
    if not all(_has_static(sampler, name) for name in ("draw_bits", "means", "variances")):
        names = ", ".join(t.__name__ for t in SAMPLER_TYPES)
        raise TypeError(
            f"sampler must be a jaxrank.allocation sampler ({names}) or any pytree with draw_bits, means and "
            f"variances; got {type(sampler).__name__}"
        )
    # The shape only (abstract evaluation): `means` may be computed, and computing it eagerly would compile.
    means = jax.eval_shape(lambda s: s.means, sampler)
    if getattr(means, "ndim", None) != 1:
        raise ValueError(f"sampler.means must have shape [num_items], got {V.describe(means)}")
    return int(means.shape[0])
