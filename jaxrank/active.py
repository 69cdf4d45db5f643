r"""Fewer human labels, a leaderboard you can trust: sampling designs with recorded probabilities,
design-weighted (Horvitz–Thompson) and prediction-powered (PPI++) Bradley–Terry fits, active pair sampling.

**Target.** A population of P sampling units (prompts, or whatever humans label at once) each carries the
votes that labelling it would produce. The *full-data leaderboard* theta_full minimises the Bradley–Terry
loss summed over all units' votes. Labelling only a sample S, drawn with known inclusion probabilities
pi_i, and weighting each labelled unit by w_i = 1 / pi_i gives the Horvitz–Thompson (HT) estimating
equation `sum_{i in S} w_i g_i(theta) = 0`, an unbiased estimate of the full-data equation
`sum_i g_i(theta) = 0` for every theta; its root estimates theta_full consistently (design-based
inference: the votes are fixed, the sample is random). `g_i` is unit i's score (gradient of its votes'
log-likelihood).

**Intervals.** Linearising, `theta_hat - theta_full ~ H^+ sum_{i in S} (w_i g_i - g_i / N ...)`, so the
covariance is `H^+ V H^+` with V the design variance of an HT total of the unit scores (clusters = units):

- `variance="design"` (default): the variance over the random sample, the target is theta_full; it is 0
  when every unit is labelled. Poisson sampling: `V = sum_S (1 - pi_i) / pi_i^2 z_i z_i^T`, unbiased.
  Fixed size (randomised systematic pi-ps): Hájek's approximation for high-entropy designs,
  `V = n / (n - 1) sum_S (1 - pi_i) (z_i / pi_i - B)(z_i / pi_i - B)^T`,
  `B = sum_S (1 - pi_i) z_i / pi_i / sum_S (1 - pi_i)`.
- `variance="superpopulation"`: the units are themselves a sample from a larger population of prompts
  and the target is that population's leaderboard: `V_design + sum_S w_i z_i z_i^T`. With every unit
  labelled this is the ordinary cluster-robust sandwich `sum_i z_i z_i^T`.

**Prediction-powered ratings (PPI++,** Angelopoulos, Duchi & Zrnic 2023, arXiv:2311.01453**).** A judge
(an LLM, a P2L model) votes on every unit. With `L^J_i`, `L^H_i` unit i's judge and human losses,

    theta_hat = argmin  lambda sum_{all i} L^J_i(theta) + sum_{i in S} w_i (L^H_i(theta) - lambda L^J_i(theta)).

Its estimating equation is again design-unbiased for the full-data human one for every lambda, and its
design covariance is `H^+ V(e) H^+` with the residual scores `e_i = g^H_i - lambda g^J_i` in place of
`g_i`. lambda is PPI++'s power tuning: the minimiser of the summed variance of the ratings,

    lambda = tr(A (D(g^H, g^J) + D(g^J, g^H)) A) / (2 tr(A D(g^J, g^J) A)),   clipped to [0, 1],

with `A = H^+` and `D(x, y)` the design covariance form above, evaluated at the human-only estimate.
For i.i.d. labelled data and an independent unlabelled sample of size N, `D` is the covariance with
`D(g^J, g^J)` inflated by `(1 + n / N)`, which is the formula of the paper (its Eq. for general
M-estimators); here the judge votes of *all* units enter with their full-data total (no sampling noise),
so that factor is 1 and the design's finite-population factors `(1 - pi_i)` appear instead. lambda = 0 is
the human-only (HT) estimate, lambda = 1 plain PPI; a judge equal to the humans gives lambda = 1 and the
full-data fit; an uninformative judge gives lambda -> 0.

**Sequential rounds.** Round r labels a Poisson / systematic sample of the units not labelled before,
with probabilities that may depend on everything seen so far. Each round's HT estimate of the remaining
total is conditionally unbiased, so any combination with predictable round weights alpha_r (summing to
1) is unbiased (a martingale); jaxrank picks alpha_r so that, with uniform probabilities, every labelled
unit ends with the same weight (labelling everything then reproduces the full-data fit exactly). A unit
labelled in round r has weight `alpha_r / pi_i + sum_{s > r} alpha_s`; the design variance adds the
rounds' terms, each scaled by alpha_r^2.

**Active pair sampling** (Chatbot Arena's rule, Chiang et al. 2024, Sec. 5): show pair (a, b) with
probability proportional to the expected shrinkage of its interval from one more vote, mixed with
uniform; every vote is then weighted by `1 / (K P(shown))` so that the fit estimates the leaderboard of
uniform match-making (K pairs).

Shapes: M models, P units, U vote rows, R replays. All kernels work in float32 (float64 under
`jax.enable_x64`); `key` is the first argument of everything random.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrank.votes.table import A_WINS, B_WINS, TIE, Votes
from jaxrank.ratings.bradley_terry import outcome_log_probs

__all__ = [
    "DESIGNS",
    "VARIANCES",
    "CORRECTIONS",
    "ACTIVE_TIE_MODELS",
    "inclusion_probabilities",
    "inclusion_probabilities_jax",
    "smallest_uniform_mix",
    "poisson_sample",
    "systematic_sample",
    "draw_sample",
    "ht_weights",
    "Sample",
    "single_round",
    "empty_sample",
    "add_round",
    "UnitRows",
    "UnitCells",
    "unit_rows",
    "unit_cells",
    "estimate",
    "soft_unit_rows",
    "restrict_rows",
    "DesignEstimate",
    "fit_design_weighted",
    "fit_prediction_powered",
    "ppi_power_tuning",
    "design_bootstrap",
    "BootstrapEstimate",
    "unit_scores",
    "design_scores",
    "variance_reduction_scores",
    "pair_sampling_probabilities",
    "sample_pairs",
    "importance_weights",
    "fit_active_pairs",
    "SyntheticArena",
    "synthetic_arena",
    "PLAN_COLUMNS",
    "plan_frame",
    "load_plan",
    "ReplayResult",
    "replay_designs",
    "votes_unit_rows",
    "DesignLeaderboard",
    "design_leaderboard",
]

DESIGNS = ("poisson", "systematic")
# Votes drawn with replacement with known relative probabilities (active pair sampling): weights given,
# variance sum w^2 z z^T (Hansen–Hurwitz); not a design over a fixed set of units.
_IMPORTANCE = "importance"
VARIANCES = ("design", "superpopulation")
ACTIVE_TIE_MODELS = ("half", "drop", "rao-kupper", "davidson")
_FITS_TIE = ("rao-kupper", "davidson")
_DEFAULT_TIE = {"rao-kupper": 0.5, "davidson": 1.0}


# --------------------------------------------------------------------------------------------------
# Argument checks


def _check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    return value


def _check_unit_interval(value: Any, name: str, *, open_left: bool, allow_one: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    lo_ok = v > 0 if open_left else v >= 0
    hi_ok = v <= 1 if allow_one else v < 1
    if not (math.isfinite(v) and lo_ok and hi_ok):
        lo = "(0" if open_left else "[0"
        hi = "1]" if allow_one else "1)"
        raise ValueError(f"{name} must lie in {lo}, {hi}, got {value!r}")
    return v


def _check_scores(scores: Any, name: str = "scores") -> np.ndarray:
    u = np.asarray(scores, dtype=np.float64)
    if u.ndim != 1 or u.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-d array [P], got shape {u.shape}")
    if np.isnan(u).any():
        raise ValueError(f"{name} contains {int(np.isnan(u).sum())} NaN value(s) (first at index "
                         f"{int(np.flatnonzero(np.isnan(u))[0])}); priority scores must be finite and >= 0")
    if np.isinf(u).any():
        raise ValueError(f"{name} contains infinite values (first at index {int(np.flatnonzero(np.isinf(u))[0])}); "
                         "priority scores must be finite and >= 0")
    if (u < 0).any():
        raise ValueError(f"{name} contains {int((u < 0).sum())} negative value(s) (first {u[u < 0][0]:g} at index "
                         f"{int(np.flatnonzero(u < 0)[0])}); priority scores must be >= 0")
    return u


def _check_budget(budget: Any, num_units: int, name: str = "budget") -> float:
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number of units, got {type(budget).__name__}")
    n = float(budget)
    if not (math.isfinite(n) and n > 0):
        raise ValueError(f"{name} must be > 0, got {budget!r}")
    if n > num_units:
        raise ValueError(f"{name} = {budget:g} exceeds the number of prompts ({num_units}); "
                         f"at most {num_units} can be labelled")
    return n


# --------------------------------------------------------------------------------------------------
# Inclusion probabilities


def _mixed_shares(u: np.ndarray, eligible: np.ndarray, uniform_mix: float) -> np.ndarray:
    """float64[P] q_i = (1 - tau) u_i / sum u + tau / P over the eligible units (0 elsewhere)."""
    count = int(eligible.sum())
    total = float(u[eligible].sum())
    prop = np.where(eligible, u, 0.0) / total if total > 0 else eligible / count
    return np.where(eligible, (1.0 - uniform_mix) * prop + uniform_mix / count, 0.0)


def _solve_scale(q: np.ndarray, eligible: np.ndarray, budget: float, floor: float) -> np.ndarray:
    """pi = clip(c q, floor, 1) on the eligible units with sum pi = budget (exact, float64).

    `f(c) = sum clip(c q_i, floor, 1)` is continuous and non-decreasing, so bisection brackets c; the units
    then split into capped (pi = 1, taken with certainty), floored and free ones, and c is solved exactly
    on the free ones. Capping raises c for the rest, which may cap more: the split is re-done until stable.
    """
    qe = q[eligible]
    lo, hi = 0.0, 1.0 / float(qe.min())
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if np.clip(mid * qe, floor, 1.0).sum() < budget:
            lo = mid
        else:
            hi = mid
    c = 0.5 * (lo + hi)
    for _ in range(len(qe) + 1):
        scaled = c * qe
        capped = scaled >= 1.0
        floored = (scaled <= floor) & ~capped
        free = ~capped & ~floored
        mass = float(qe[free].sum())
        if mass <= 0:
            break
        c_new = (budget - capped.sum() - floor * floored.sum()) / mass
        if c_new == c:
            break
        c = c_new
    pi = np.zeros_like(q)
    pi[eligible] = np.clip(c * qe, floor, 1.0)
    return pi


def inclusion_probabilities(
    scores: Any,
    budget: float,
    *,
    uniform_mix: float = 0.1,
    min_probability: float = 0.0,
    max_weight: float | None = None,
    eligible: Any = None,
) -> np.ndarray:
    r"""Inclusion probabilities of a label budget, proportional to priority scores mixed with uniform.

    `pi_i = clip(c ((1 - tau) u_i / sum u + tau / P), pi_min, 1)` with `c` such that `sum pi = n`: units
    whose share would exceed 1 are taken with certainty (pi = 1) and the rest re-scaled, as in
    probability-proportional-to-size designs. `tau = 1` is uniform sampling, `pi_i = n / P`; `tau > 0`
    bounds the weights `1 / pi_i <= P / (c tau n)`. All scores 0 gives uniform sampling. Host-side,
    float64, exact to rounding; `inclusion_probabilities_jax` is the jit/vmap-able twin.

    Args:
        scores: float[P] priority scores u_i >= 0 (KL / cross-entropy from `score_pairs`, leaderboard
            uncertainty, anything; only their ratios matter).
        budget: expected number of labelled units n, 0 < n <= P (an integer for the fixed-size design).
        uniform_mix: tau in (0, 1].
        min_probability: pi_min in [0, n / P], a floor on every probability (caps the weights at 1 / pi_min).
        max_weight: optional bound on the weights 1 / pi_i; exceeding it is an error that names the
            smallest `uniform_mix` that satisfies it.
        eligible: optional bool[P]: only these units can be drawn (e.g. those not labelled in an earlier
            round; P then counts the eligible ones); the others get pi = 0.

    Returns:
        float64[P] probabilities, summing to `budget`.

    Raises:
        ValueError: negative, NaN or infinite scores, a budget above the number of (eligible) units,
            tau outside (0, 1], an infeasible floor, weights above `max_weight`.

    Example:
        >>> inclusion_probabilities([0.0, 1.0, 3.0, 0.0], 2, uniform_mix=0.2).round(3)
        array([0.143, 0.714, 1.   , 0.143])
    """
    u = _check_scores(scores)
    tau = _check_unit_interval(uniform_mix, "uniform_mix", open_left=True)
    floor = _check_unit_interval(min_probability, "min_probability", open_left=False)
    if eligible is None:
        elig = np.ones(u.shape, bool)
    else:
        elig = np.asarray(eligible, bool)
        if elig.shape != u.shape:
            raise ValueError(f"eligible must have the shape of scores {u.shape}, got {elig.shape}")
        if not elig.any():
            raise ValueError("eligible marks no unit: every prompt is already labelled")
    count = int(elig.sum())
    n = _check_budget(budget, count)
    if floor * count > n * (1 + 1e-12):
        raise ValueError(f"min_probability = {floor:g} is infeasible: {count} prompts at that floor need a budget of "
                         f"{floor * count:g} > {n:g}; use min_probability <= budget / prompts = {n / count:g}")
    pi = _solve_scale(_mixed_shares(u, elig, tau), elig, n, floor)
    if max_weight is not None:
        if isinstance(max_weight, bool) or not isinstance(max_weight, (int, float, np.integer, np.floating)) \
                or not max_weight >= 1:
            raise ValueError(f"max_weight must be a number >= 1 (weights are 1 / pi >= 1), got {max_weight!r}")
        worst = 1.0 / pi[elig].min()
        if worst > max_weight * (1 + 1e-9):
            need = smallest_uniform_mix(u, n, max_weight, min_probability=floor, eligible=elig)
            hint = (f"uniform_mix >= {need:.4g} avoids it" if need is not None else
                    f"no uniform_mix does: even uniform sampling has weight {count / n:g}; raise the budget to "
                    f">= {count / max_weight:g} or max_weight to >= {count / n:g}")
            raise ValueError(f"max_weight: the largest weight 1/pi would be {worst:.4g} > max_weight = {max_weight:g} "
                             f"with uniform_mix = {tau:g}; {hint}")
    return pi


def smallest_uniform_mix(scores: Any, budget: float, max_weight: float, *, min_probability: float = 0.0,
                         eligible: Any = None) -> float | None:
    """The smallest `uniform_mix` tau in (0, 1] whose probabilities keep every weight 1 / pi <= `max_weight`
    (bisection; the smallest probability grows with tau), or None when even tau = 1 (uniform) exceeds it.

    Example:
        >>> round(smallest_uniform_mix([0.0, 1.0, 3.0, 0.0], 2, 5.0), 4)
        0.3333
    """
    u = _check_scores(scores)
    elig = np.ones(u.shape, bool) if eligible is None else np.asarray(eligible, bool)
    n = _check_budget(budget, int(elig.sum()))

    def worst(tau: float) -> float:
        return 1.0 / _solve_scale(_mixed_shares(u, elig, tau), elig, n, min_probability)[elig].min()

    if worst(1.0) > max_weight * (1 + 1e-9):
        return None
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if mid > 0 and worst(mid) <= max_weight:
            hi = mid
        else:
            lo = mid
    return hi


def inclusion_probabilities_jax(
    scores: jax.Array, budget: Any, *, uniform_mix: Any = 0.1, min_probability: Any = 0.0, eligible: Any = None
) -> jax.Array:
    """`inclusion_probabilities` as a pure, jit- and vmap-able JAX function (no checks; float32 unless
    float64 inputs under x64): for sequential rounds whose probabilities come from a traced fit.

    Args:
        scores: float[P] scores >= 0. budget, uniform_mix, min_probability: scalars (may be traced).
        eligible: optional bool[P].

    Returns:
        float[P] probabilities summing to `budget` (to float rounding).
    """
    u = jnp.asarray(scores)
    dtype = jnp.promote_types(u.dtype, jnp.float32)
    u = u.astype(dtype)
    elig = jnp.ones(u.shape, bool) if eligible is None else jnp.asarray(eligible, bool)
    count = jnp.maximum(jnp.sum(elig), 1).astype(dtype)
    total = jnp.sum(jnp.where(elig, u, 0.0))
    prop = jnp.where(total > 0, jnp.where(elig, u, 0.0) / jnp.where(total > 0, total, 1.0), elig / count)
    tau = jnp.asarray(uniform_mix, dtype)
    q = jnp.where(elig, (1.0 - tau) * prop + tau / count, 0.0)
    n = jnp.asarray(budget, dtype)
    floor = jnp.asarray(min_probability, dtype)
    qmin = jnp.min(jnp.where(elig, q, jnp.inf))

    def f(c):
        return jnp.sum(jnp.where(elig, jnp.clip(c * q, floor, 1.0), 0.0))

    def bisect(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        below = f(mid) < n
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, 64, bisect, (jnp.zeros((), dtype), 1.0 / qmin))
    c = 0.5 * (lo + hi)

    def refine(_, c):
        scaled = c * q
        capped = elig & (scaled >= 1.0)
        floored = elig & (scaled <= floor) & ~capped
        free = elig & ~capped & ~floored
        mass = jnp.sum(jnp.where(free, q, 0.0))
        c_new = (n - jnp.sum(capped) - floor * jnp.sum(floored)) / jnp.where(mass > 0, mass, 1.0)
        return jnp.where(mass > 0, c_new, c)

    c = jax.lax.fori_loop(0, 4, refine, c)
    return jnp.where(elig, jnp.clip(c * q, floor, 1.0), 0.0)


# --------------------------------------------------------------------------------------------------
# Sampling


def poisson_sample(key: jax.Array, probabilities: Any) -> jax.Array:
    """Poisson sampling: unit i is labelled independently with probability pi_i (random sample size).

    Args:
        key: PRNG key.
        probabilities: float[P] in [0, 1].

    Returns:
        bool[P] selected units. jit/vmap-able (vmap over keys for replays).

    Example:
        >>> poisson_sample(jax.random.key(0), jnp.array([0.0, 1.0, 0.5])).shape
        (3,)
    """
    p = jnp.asarray(probabilities)
    p = p.astype(jnp.promote_types(p.dtype, jnp.float32))
    return jax.random.uniform(key, p.shape, dtype=p.dtype) < p


def _two_sum(a, b):
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _double_cumsum(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Prefix sums as unevaluated pairs `hi + lo` (error-free TwoSum in an associative scan), so that
    float32 systematic sampling places its points to ~1e-12 of the total, not ~1e-4."""

    def combine(p, q):
        s, e = _two_sum(p[0], q[0])
        e = e + p[1] + q[1]
        hi = s + e
        return hi, e - (hi - s)

    return jax.lax.associative_scan(combine, (x, jnp.zeros_like(x)))


def _ceil_pair(hi: jax.Array, lo: jax.Array) -> jax.Array:
    c = jnp.ceil(hi)
    return c + ((hi == c) & (lo > 0))


def systematic_sample(key: jax.Array, probabilities: Any) -> jax.Array:
    r"""Randomised systematic pi-ps sampling (Goodman & Kish 1950; Hartley & Rao 1962): a fixed-size design
    with exactly the given first-order inclusion probabilities.

    The units are put in a uniformly random order, their probabilities laid end to end on [0, n), and the
    units containing the points `u, u + 1, ..., u + n - 1` (u ~ U[0, 1)) are selected: unit i is hit with
    probability exactly pi_i (pi_i <= 1 hits at most once), and exactly n = sum pi units are drawn. The
    random order makes the design high-entropy (close to conditional Poisson sampling), which is what
    Hájek's variance approximation (`design="systematic"` in the fits) assumes; its pairwise inclusion
    probabilities have no closed form and are not needed. With equal probabilities it is simple random
    sampling without replacement.

    Args:
        key: PRNG key.
        probabilities: float[P] in [0, 1] summing to an integer n (e.g. from `inclusion_probabilities`
            with an integer budget).

    Returns:
        bool[P] with exactly n True entries. jit/vmap-able.
    """
    p = jnp.asarray(probabilities)
    p = p.astype(jnp.promote_types(p.dtype, jnp.float32))
    k_perm, k_start = jax.random.split(key)
    perm = jax.random.permutation(k_perm, p.shape[0])
    hi, lo = _double_cumsum(p[perm])
    u = jax.random.uniform(k_start, (), dtype=p.dtype)
    t_hi, t_err = _two_sum(hi, -u)
    t_lo = t_err + lo
    t_hi, t_lo = t_hi + t_lo, t_lo - ((t_hi + t_lo) - t_hi)
    # Points u + j (j >= 0) below the prefix sum C_k: ceil(C_k - u) when C_k > u, else 0.
    count = jnp.where((t_hi > 0) | ((t_hi == 0) & (t_lo > 0)), _ceil_pair(t_hi, t_lo), 0.0)
    hit = jnp.diff(count, prepend=jnp.zeros((1,), count.dtype)) > 0
    return jnp.zeros(p.shape, bool).at[perm].set(hit)


def draw_sample(key: jax.Array, probabilities: Any, *, design: str = "poisson") -> jax.Array:
    """`poisson_sample` or `systematic_sample` by name (`design`, static). bool[P]."""
    _check_choice(design, "design", DESIGNS)
    return poisson_sample(key, probabilities) if design == "poisson" else systematic_sample(key, probabilities)


def ht_weights(selected: Any, probabilities: Any) -> jax.Array:
    """Horvitz–Thompson weights: `1 / pi_i` for selected units, 0 for the others. float[P], jit/vmap-able."""
    p = jnp.asarray(probabilities)
    p = p.astype(jnp.promote_types(p.dtype, jnp.float32))
    sel = jnp.asarray(selected, bool)
    return jnp.where(sel, 1.0 / jnp.where(sel, p, 1.0), 0.0)


# --------------------------------------------------------------------------------------------------
# A realised sample, possibly over several rounds


@struct.dataclass
class Sample:
    """Units selected by a sampling design, with every round's probabilities recorded.

    A pytree (`design` is static): one-round samples are built inside jit/vmap by `single_round`; rounds
    are added on the host by `add_round`.

    Attributes:
        design: `"poisson"` or `"systematic"` (fixed size); decides the variance formula.
        selected: bool[P] labelled units.
        probability: float[P] the inclusion probability of the round that selected each unit (for units
            never selected: the last round's).
        round: int32[P] the round that selected each unit, -1 for none.
        round_weight: float[K] alpha_r, the weight of round r's estimate (one round: [1]).
        round_probabilities: float[K, P] each round's inclusion probabilities (0 for units labelled earlier).
        unassigned: float scalar, the round weight not yet given to a round (0 once the last planned round
            is in; fits need 0).
    """

    design: str = struct.field(pytree_node=False)
    selected: jax.Array
    probability: jax.Array
    round: jax.Array
    round_weight: jax.Array
    round_probabilities: jax.Array
    unassigned: jax.Array

    @property
    def num_units(self) -> int:
        return int(self.selected.shape[-1])

    @property
    def num_rounds(self) -> int:
        return int(self.round_weight.shape[-1])

    @property
    def weight(self) -> jax.Array:
        """float[P] estimator weights: `alpha_r / pi_i + sum_{s > r} alpha_s` for a unit labelled in round r
        (`1 / pi_i` for one round), 0 for units not labelled."""
        alpha = jnp.asarray(self.round_weight)
        later = jnp.cumsum(alpha[..., ::-1], axis=-1)[..., ::-1] - alpha  # sum_{s > r} alpha_s
        r = jnp.maximum(jnp.asarray(self.round), 0)
        a_r = jnp.take_along_axis(alpha, r, axis=-1) if alpha.ndim > 1 else alpha[r]
        l_r = jnp.take_along_axis(later, r, axis=-1) if later.ndim > 1 else later[r]
        sel = jnp.asarray(self.selected, bool)
        p = jnp.where(sel, self.probability, 1.0)
        return jnp.where(sel, a_r / p + l_r, 0.0)

    def to_frame(self, unit_ids: Any = None):
        """pandas DataFrame `prompt_id, probability, selected, weight, round, round_weight, design`
        (the plan format `jaxrank plan` writes and `jaxrank leaderboard --design` reads)."""
        import pandas as pd

        p = self.num_units
        ids = [str(i) for i in (range(p) if unit_ids is None else unit_ids)]
        if len(ids) != p:
            raise ValueError(f"unit_ids must name the {p} units, got {len(ids)}")
        alpha = np.asarray(self.round_weight, np.float64)
        rnd = np.asarray(self.round, np.int64)
        return pd.DataFrame({
            "prompt_id": ids,
            "probability": np.asarray(self.probability, np.float64),
            "selected": np.asarray(self.selected, bool),
            "weight": np.asarray(self.weight, np.float64),
            "round": rnd,
            "round_weight": np.where(rnd >= 0, alpha[np.maximum(rnd, 0)] if alpha.size else 0.0, 0.0),
            "design": self.design,
        })


def single_round(selected: Any, probabilities: Any, *, design: str = "poisson") -> Sample:
    """A one-round `Sample` from a draw and its probabilities (jit/vmap-able; `design` static).

    Raises (concrete inputs only): ValueError when a selected unit has probability 0 (its weight would be
    infinite) or probabilities lie outside [0, 1].
    """
    _check_choice(design, "design", DESIGNS)
    p = jnp.asarray(probabilities)
    p = p.astype(jnp.promote_types(p.dtype, jnp.float32))
    sel = jnp.asarray(selected, bool)
    if sel.shape != p.shape:
        raise ValueError(f"selected and probabilities must have the same shape [P], got {sel.shape} and {p.shape}")
    if not isinstance(p, jax.core.Tracer) and not isinstance(sel, jax.core.Tracer):
        pn, sn = np.asarray(p), np.asarray(sel)
        if np.isnan(pn).any() or (pn < 0).any() or (pn > 1).any():
            raise ValueError("probabilities must lie in [0, 1] (no NaN)")
        zero = np.flatnonzero(sn & (pn <= 0))
        if zero.size:
            raise ValueError(f"probabilities: {zero.size} selected unit(s) have probability 0 (e.g. index {int(zero[0])}); "
                             "a selected unit needs pi > 0 (its weight 1/pi would be infinite)")
    return Sample(
        design=design, selected=sel, probability=p, round=jnp.where(sel, 0, -1).astype(jnp.int32),
        round_weight=jnp.ones((1,), p.dtype), round_probabilities=p[None, :], unassigned=jnp.zeros((), p.dtype),
    )


def empty_sample(num_units: int, *, design: str = "poisson") -> Sample:
    """A `Sample` with no round yet (start of a sequential design over `num_units` units)."""
    _check_choice(design, "design", DESIGNS)
    if isinstance(num_units, bool) or not isinstance(num_units, (int, np.integer)) or num_units < 1:
        raise ValueError(f"num_units must be an int >= 1, got {num_units!r}")
    p = int(num_units)
    return Sample(design=design, selected=np.zeros((p,), bool), probability=np.zeros((p,)), round=np.full((p,), -1, np.int32),
                  round_weight=np.zeros((0,)), round_probabilities=np.zeros((0, p)), unassigned=np.ones(()))


def add_round(sample: Sample, probabilities: Any, selected: Any, *, future_budget: Any = 0.0) -> Sample:
    r"""Record one more round of a sequential design.

    Round r draws from the units not labelled before (`probabilities` must be 0 on the others, e.g. from
    `inclusion_probabilities(..., eligible=~sample.selected)`); its probabilities may depend on everything
    observed so far. The round's weight alpha_r is fixed before its draw from the state and the planned
    budgets: with `beta_r` the weight not yet assigned, `P_r` units left, `n_r = sum pi` this round's
    expected size and `N_r = n_r + future_budget`,
    `beta_{r+1} = beta_r P_r (N_r - n_r) / (N_r (P_r - n_r))`, `alpha_r = beta_r - beta_{r+1}`
    (uniform probabilities then give every labelled unit the same final weight). The last planned round
    has `future_budget = 0` and assigns all the remaining weight. Pure JAX (jit/vmap-able, e.g. inside
    replays of a sequential design); the checks run when the inputs are concrete.

    Args:
        sample: the sample so far (`empty_sample` to start).
        probabilities: float[P] this round's inclusion probabilities.
        selected: bool[P] this round's draw (`poisson_sample` / `systematic_sample` with them).
        future_budget: labels planned after this round (0 for the last round).

    Returns:
        A new `Sample` with K + 1 rounds.
    """
    if not isinstance(sample, Sample):
        raise TypeError(f"sample must be a Sample (see empty_sample / single_round), got {type(sample).__name__}")
    p_units = sample.num_units
    pi = jnp.asarray(probabilities)
    pi = pi.astype(jnp.promote_types(pi.dtype, jnp.float32))
    sel = jnp.asarray(selected, bool)
    if pi.shape != (p_units,) or sel.shape != (p_units,):
        raise ValueError(f"probabilities and selected must have shape [P] = ({p_units},), got {pi.shape} and {sel.shape}")
    done = jnp.asarray(sample.selected, bool)
    concrete = not any(isinstance(x, jax.core.Tracer) for x in (pi, sel, done, sample.unassigned))
    if concrete:
        pn, sn, dn = np.asarray(pi, np.float64), np.asarray(sel), np.asarray(done)
        if np.isnan(pn).any() or (pn < 0).any() or (pn > 1 + 1e-6).any():
            raise ValueError("probabilities must lie in [0, 1] (no NaN)")
        if (pn[dn] > 0).any():
            raise ValueError(f"probabilities: {int((pn[dn] > 0).sum())} unit(s) labelled in an earlier round have "
                             "probability > 0; a round draws only from the units not labelled yet (eligible=~sample.selected)")
        zero = np.flatnonzero(sn & (pn <= 0))
        if zero.size:
            raise ValueError(f"probabilities: {zero.size} selected unit(s) have probability 0 (e.g. index {int(zero[0])})")
        if float(np.asarray(sample.unassigned)) <= 1e-9:
            raise ValueError("the sample's rounds already assign all the weight (its last round had future_budget = 0); "
                             "plan more rounds with future_budget > 0 on the earlier round")
        fb = float(np.asarray(future_budget))
        left_n = int((~dn).sum())
        if not fb >= 0:
            raise ValueError(f"future_budget must be a number >= 0, got {future_budget!r}")
        if pn.sum() + fb > left_n + 1e-6:
            raise ValueError(f"future_budget: this round ({pn.sum():g}) and the planned later rounds ({fb:g}) exceed "
                             f"the {left_n} units not yet labelled")
    pi = jnp.minimum(pi, 1.0)
    dtype = pi.dtype
    beta = jnp.asarray(sample.unassigned, dtype)
    left = jnp.sum(~done).astype(dtype)
    n_r = jnp.sum(pi)
    fb = jnp.asarray(future_budget, dtype)
    total = n_r + fb
    rest = left - n_r
    beta_next = jnp.where((fb > 0) & (rest > 0), beta * left * fb / (total * jnp.where(rest > 0, rest, 1.0)), 0.0)
    k = sample.num_rounds
    return Sample(
        design=sample.design,
        selected=done | sel,
        probability=jnp.where(done, jnp.asarray(sample.probability, dtype), pi),
        round=jnp.where(sel, k, jnp.asarray(sample.round)).astype(jnp.int32),
        round_weight=jnp.concatenate([jnp.asarray(sample.round_weight, dtype), (beta - beta_next)[None]]),
        round_probabilities=jnp.concatenate([jnp.asarray(sample.round_probabilities, dtype).reshape(k, p_units), pi[None]]),
        unassigned=beta_next,
    )


# --------------------------------------------------------------------------------------------------
# Vote rows (the arrays the kernels take)


class UnitRows(NamedTuple):
    """Vote rows with their sampling unit: the integer arrays the kernels take.

    Attributes:
        a, b: int32[U] model indices.
        outcome: int32[U] `A_WINS`=0, `B_WINS`=1, `TIE`=2 (`TIE_BOTHBAD`=3 counts as a tie).
        unit: int32[U] the sampling unit (prompt) of each row, in [0, P).
        weight: float[U] vote weights (counts; fractional for soft outcomes, see `soft_unit_rows`).
    """

    a: jax.Array
    b: jax.Array
    outcome: jax.Array
    unit: jax.Array
    weight: jax.Array


def unit_rows(a: Any, b: Any, outcome: Any, unit: Any, weight: Any = None, *, num_models: int | None = None,
              num_units: int | None = None) -> UnitRows:
    """Check and pack vote arrays into `UnitRows` (`weight` default 1 per row).

    Raises:
        ValueError: shapes differ, indices out of range, a == b, unknown outcome codes, negative/NaN weights.
    """
    arrays = [np.asarray(x) for x in (a, b, outcome, unit)]
    n = arrays[0].shape
    for name, x in zip(("a", "b", "outcome", "unit"), arrays):
        if x.ndim != 1 or x.shape != n:
            raise ValueError(f"{name} must be a 1-d array of the same length as a ({n[0] if n else '?'}), got shape {x.shape}")
        if not np.issubdtype(x.dtype, np.integer):
            raise TypeError(f"{name} must hold integers, got dtype {x.dtype}")
    a_, b_, o_, u_ = arrays
    if n[0] == 0:
        raise ValueError("no vote rows")
    if num_models is not None and (a_.max() >= num_models or b_.max() >= num_models):
        raise ValueError(f"a/b: model index >= num_models = {num_models}")
    if min(a_.min(), b_.min()) < 0:
        raise ValueError("a/b: negative model index")
    if (a_ == b_).any():
        raise ValueError(f"a and b: {int((a_ == b_).sum())} row(s) compare a model with itself")
    if ((o_ < 0) | (o_ > 3)).any():
        raise ValueError("outcome: codes must be 0 (a wins), 1 (b wins), 2 (tie) or 3 (tie (bothbad))")
    if u_.min() < 0 or (num_units is not None and u_.max() >= num_units):
        raise ValueError(f"unit: indices must lie in [0, {num_units if num_units is not None else 'P'})")
    if weight is None:
        w = np.ones(n, np.float32)
    else:
        w = np.asarray(weight)
        if w.shape != n or not np.issubdtype(w.dtype, np.floating):
            raise ValueError(f"weight must be a float array of shape {n}, got {w.shape} {w.dtype}")
        if np.isnan(w).any() or np.isinf(w).any() or (w < 0).any():
            raise ValueError("weight must be finite and >= 0")
    w = w if w.dtype == np.float64 and jax.config.jax_enable_x64 else w.astype(np.float32)
    return UnitRows(jnp.asarray(a_, jnp.int32), jnp.asarray(b_, jnp.int32), jnp.asarray(np.minimum(o_, TIE), jnp.int32),
                    jnp.asarray(u_, jnp.int32), jnp.asarray(w))


def soft_unit_rows(a: Any, b: Any, prob_a: Any, unit: Any, *, prob_tie: Any = None, weight: Any = None) -> UnitRows:
    """Soft outcomes (a judge's probability that a wins, e.g. a P2L model or AlpacaEval's preference) as
    fractional hard rows: `P(a)` on an a-win row, `P(tie)` on a tie row, the rest on a b-win row, each times
    `weight`. The weighted log-likelihood of those rows is exactly the expected log-likelihood of the soft
    outcome, so fits, scores and Hessians are those of the soft-target likelihood.

    Args:
        a, b, unit: int[V]; prob_a: float[V] in [0, 1]; prob_tie: optional float[V] with prob_a + prob_tie <= 1.
    """
    pa = np.asarray(prob_a, np.float64)
    pt = np.zeros_like(pa) if prob_tie is None else np.asarray(prob_tie, np.float64)
    if np.isnan(pa).any() or (pa < 0).any() or (pa > 1).any():
        raise ValueError("prob_a must lie in [0, 1] (no NaN)")
    if np.isnan(pt).any() or (pt < 0).any() or (pa + pt > 1 + 1e-9).any():
        raise ValueError("prob_tie must be >= 0 with prob_a + prob_tie <= 1")
    w = np.ones_like(pa) if weight is None else np.asarray(weight, np.float64)
    pb = np.clip(1.0 - pa - pt, 0.0, 1.0)
    a_, b_, u_ = (np.asarray(x) for x in (a, b, unit))
    rows = [(A_WINS, pa), (B_WINS, pb), (TIE, pt)]
    keep = [(o, p) for o, p in rows if (p > 0).any()]
    cat = lambda f: np.concatenate([f(o, p) for o, p in keep])  # noqa: E731
    return unit_rows(cat(lambda o, p: a_), cat(lambda o, p: b_), cat(lambda o, p: np.full(a_.shape, o)),
                     cat(lambda o, p: u_), cat(lambda o, p: (w * p).astype(np.float64)))


# --------------------------------------------------------------------------------------------------
# Bradley–Terry with signed row weights: per-row derivatives, damped Newton, unit scores


class _Spec(NamedTuple):
    """Static options of one compiled estimator."""

    num_models: int
    num_units: int
    ties: str
    l2: float
    design: str
    variance: str
    max_iter: int
    tol: float
    correction: str = "jackknife"


CORRECTIONS = ("jackknife", "none")


def _check_ties(ties: str) -> str:
    if ties == "grounded-rao-kupper":
        raise ValueError("ties='grounded-rao-kupper' is not supported by the design-weighted fits (its likelihood is not "
                         f"a function of theta_a - theta_b); use one of {', '.join(repr(t) for t in ACTIVE_TIE_MODELS)}")
    return _check_choice(ties, "ties", ACTIVE_TIE_MODELS)


def _row_derivatives(x: jax.Array, a, b, outcome, spec: _Spec):
    """Per-row `log P`, its first and second derivatives in `delta = theta_a - theta_b` and `s = log tie_param`:
    `(lp, g_d, g_s, h_dd, h_ds, h_ss)`, each float[U] (the s terms are 0 for `"half"`/`"drop"`).

    Closed forms of the likelihoods of `jaxrank.ratings.bradley_terry.outcome_log_probs` (the tests hold them
    to autodiff of that definition): a small expression compiles in a fraction of the time of
    forward-over-reverse autodiff of the three-branch likelihood, and every fit traces it several times."""
    m = spec.num_models
    delta = x[a] - x[b]
    s = jnp.broadcast_to(x[m], delta.shape)
    is_a = outcome == A_WINS
    is_b = outcome == B_WINS
    is_t = outcome >= TIE
    zero = jnp.zeros_like(delta)
    if spec.ties in ("half", "drop"):
        sp, sm = jax.nn.sigmoid(delta), jax.nn.sigmoid(-delta)
        lpa, lpb = jax.nn.log_sigmoid(delta), jax.nn.log_sigmoid(-delta)
        curv = -sp * sm
        if spec.ties == "half":
            lp = jnp.where(is_a, lpa, jnp.where(is_b, lpb, 0.5 * (lpa + lpb)))
            gd = jnp.where(is_a, sm, jnp.where(is_b, -sp, 0.5 * (sm - sp)))
            hdd = curv
        else:
            lp = jnp.where(is_a, lpa, jnp.where(is_b, lpb, 0.0))
            gd = jnp.where(is_a, sm, jnp.where(is_b, -sp, 0.0))
            hdd = jnp.where(is_t, 0.0, curv)
        return lp, gd, zero, hdd, zero, zero
    if spec.ties == "rao-kupper":
        alpha = jnp.exp(s)
        # a wins: log sigmoid(delta - alpha); b wins: log sigmoid(-delta - alpha)
        pa, qa = jax.nn.sigmoid(delta - alpha), jax.nn.sigmoid(alpha - delta)
        pb, qb = jax.nn.sigmoid(-delta - alpha), jax.nn.sigmoid(delta + alpha)
        # tie: log sinh(alpha) - log(cosh(delta) + cosh(alpha)), with every cosh/sinh scaled by 2 e^{-top}
        top = jnp.maximum(jnp.abs(delta), alpha)
        ed_p, ed_m = jnp.exp(delta - top), jnp.exp(-delta - top)
        ea_p, ea_m = jnp.exp(alpha - top), jnp.exp(-alpha - top)
        c_d, s_d, c_a, s_a = ed_p + ed_m, ed_p - ed_m, ea_p + ea_m, ea_p - ea_m
        big = c_d + c_a  # 2 e^{-top} (cosh delta + cosh alpha)
        e2 = jnp.exp(-2.0 * top)
        log_sinh_a = alpha + jnp.log(-jnp.expm1(-2.0 * alpha)) - math.log(2.0)
        lpt = log_sinh_a - (jnp.log(big) + top - math.log(2.0))
        coth = 1.0 / jnp.tanh(alpha)
        csch2 = 1.0 / jnp.square(jnp.sinh(alpha))
        t_gd = -s_d / big
        t_ga = coth - s_a / big
        t_hdd = -(4.0 * e2 + c_d * c_a) / (big * big)
        t_hda = s_d * s_a / (big * big)
        t_haa = -csch2 - (4.0 * e2 + c_d * c_a) / (big * big)
        lp = jnp.where(is_a, jax.nn.log_sigmoid(delta - alpha), jnp.where(is_b, jax.nn.log_sigmoid(-delta - alpha), lpt))
        gd = jnp.where(is_a, qa, jnp.where(is_b, -qb, t_gd))
        ga = jnp.where(is_a, -qa, jnp.where(is_b, -qb, t_ga))  # d / d alpha
        hdd = jnp.where(is_a, -pa * qa, jnp.where(is_b, -pb * qb, t_hdd))
        hda = jnp.where(is_a, pa * qa, jnp.where(is_b, -pb * qb, t_hda))
        haa = jnp.where(is_a, -pa * qa, jnp.where(is_b, -pb * qb, t_haa))
        # chain rule to s = log alpha: d/ds = alpha d/dalpha, d2/ds2 = alpha d/dalpha + alpha^2 d2/dalpha2
        return lp, gd, alpha * ga, hdd, alpha * hda, alpha * ga + alpha * alpha * haa
    # davidson: Z = e^{delta/2} + e^{-delta/2} + nu, nu = e^s
    half = 0.5 * delta
    log_z = jax.nn.logsumexp(jnp.stack([half, -half, s]), axis=0)
    p_a, p_b, p_t = jnp.exp(half - log_z), jnp.exp(-half - log_z), jnp.exp(s - log_z)
    diff = p_a - p_b
    lp = jnp.where(is_a, half, jnp.where(is_b, -half, s)) - log_z
    gd = jnp.where(is_a, 0.5, jnp.where(is_b, -0.5, 0.0)) - 0.5 * diff
    gs = jnp.where(is_t, 1.0, 0.0) - p_t
    hdd = -(0.25 * (p_a + p_b) - 0.25 * diff * diff)
    hds = 0.5 * diff * p_t
    hss = -p_t * (1.0 - p_t)
    return lp, gd, gs, hdd, hds, hss


def _objective(x, w, a, b, outcome, spec: _Spec):
    m = spec.num_models
    lp = _row_derivatives(x, a, b, outcome, spec)[0]
    return -jnp.sum(w * lp) + 0.5 * spec.l2 * jnp.sum(x[:m] * x[:m])


def _value(x, w, a, b, outcome, spec: _Spec):
    m = spec.num_models
    fits = spec.ties in _FITS_TIE
    lp = outcome_log_probs(x[a] - x[b], outcome, ties=spec.ties, tie_param=jnp.exp(x[m]) if fits else None)
    return -jnp.sum(w * lp) + 0.5 * spec.l2 * jnp.sum(x[:m] * x[:m])


def _gradient_hessian(x, w, a, b, outcome, spec: _Spec, terms=None):
    """Gradient float[D] and Hessian float[D, D] of `-sum w log P + l2/2 |theta|^2` (any sign of w).

    The theta block of the Hessian is the weighted graph Laplacian of the per-row curvatures; for the tie
    models without a parameter the s slot is frozen (gradient 0, curvature 1). `terms`: the rows'
    `_row_derivatives` at x, if already computed."""
    m = spec.num_models
    fits = spec.ties in _FITS_TIE
    _, gd, gs, hdd, hds, hss = _row_derivatives(x, a, b, outcome, spec) if terms is None else terms
    wd = w * gd
    g_theta = -(jax.ops.segment_sum(wd, a, num_segments=m) - jax.ops.segment_sum(wd, b, num_segments=m))
    g_theta = g_theta + spec.l2 * x[:m]
    e = jax.ops.segment_sum(-w * hdd, a * m + b, num_segments=m * m).reshape(m, m)
    s = e + e.T
    lap = jnp.diag(s.sum(axis=1)) - s + spec.l2 * jnp.eye(m, dtype=x.dtype)
    if fits:
        wds = w * hds
        cross = -(jax.ops.segment_sum(wds, a, num_segments=m) - jax.ops.segment_sum(wds, b, num_segments=m))
        g_s = -jnp.sum(w * gs)
        h_ss = -jnp.sum(w * hss)
    else:
        cross = jnp.zeros((m,), x.dtype)
        g_s = jnp.zeros((), x.dtype)
        h_ss = jnp.ones((), x.dtype)
    g = jnp.concatenate([g_theta, g_s[None]])
    top = jnp.concatenate([lap, cross[:, None]], axis=1)
    bottom = jnp.concatenate([cross, h_ss[None]])[None, :]
    return g, jnp.concatenate([top, bottom], axis=0)


def _projector(spec: _Spec, dtype) -> jax.Array:
    """float[D, D]: `11^T / M` on the theta block without a prior (the flat direction of the likelihood:
    shifting every theta), zero with `l2 > 0`."""
    m = spec.num_models
    proj = jnp.zeros((m + 1, m + 1), dtype)
    if spec.l2 > 0:
        return proj
    return proj.at[:m, :m].set(1.0 / m)


def _centre(x, spec: _Spec):
    if spec.l2 > 0:
        return x
    m = spec.num_models
    return x.at[:m].add(-jnp.mean(x[:m]))


class _NewtonState(NamedTuple):
    x: jax.Array
    value: jax.Array
    moved: jax.Array
    num_iter: jax.Array
    done: jax.Array


def _newton(x0, w, a, b, outcome, spec: _Spec):
    r"""Damped Newton for signed row weights: step `|H + P|^{-1} g` (eigenvalues taken in absolute value and
    floored, "saddle-free" Newton, so the step is a descent direction even where negative PPI weights make
    the Hessian indefinite) with backtracking until the objective decreases; P the projector on the flat
    direction. Stops when the largest accepted step is below `tol` (natural-log units) or after `max_iter`.

    Returns:
        `(x [D], converged bool, num_iter int32)`.
    """
    dtype = x0.dtype
    scale = jnp.maximum(jnp.sum(jnp.abs(w)), jnp.finfo(dtype).tiny)
    proj = _projector(spec, dtype)

    def value(x):
        return _value(x, w, a, b, outcome, spec) / scale

    def body(st: _NewtonState) -> _NewtonState:
        g, h = _gradient_hessian(st.x, w, a, b, outcome, spec)
        g, h = g / scale, h / scale + proj
        evals, evecs = jnp.linalg.eigh(h)
        mag = jnp.abs(evals)
        mag = jnp.maximum(mag, 1e-7 * jnp.max(mag) + jnp.finfo(dtype).tiny)
        step = evecs @ ((evecs.T @ g) / mag)
        step = jnp.where(jnp.isfinite(step), step, 0.0)
        slope = jnp.dot(g, step)
        # Float rounding of the objective: a change below this is noise, not an increase.
        slack = 8 * jnp.finfo(dtype).eps * (1.0 + jnp.abs(st.value))

        def accept(t, v):
            return v <= st.value - 1e-4 * t * slope + slack

        def halve(carry):
            t, _ = carry
            t = 0.5 * t
            return t, value(st.x - t * step)

        def searching(carry):
            t, v = carry
            return ~accept(t, v) & (t > 1e-4)

        t0 = jnp.ones((), dtype)
        t, v = jax.lax.while_loop(searching, halve, (t0, value(st.x - step)))
        ok = accept(t, v)
        x = jnp.where(ok, _centre(st.x - t * step, spec), st.x)
        moved = jnp.where(ok, jnp.max(jnp.abs(t * step)), 0.0)
        return _NewtonState(x, jnp.where(ok, v, st.value), moved, st.num_iter + 1, (moved < spec.tol) | ~ok)

    x0 = _centre(x0, spec)
    st = _NewtonState(x0, value(x0), jnp.asarray(jnp.inf, dtype), jnp.int32(0), jnp.zeros((), bool))
    st = jax.lax.while_loop(lambda s: ~s.done & (s.num_iter < spec.max_iter), body, st)
    return st.x, st.moved < spec.tol, st.num_iter


class UnitCells(NamedTuple):
    """Host-side tables of the rows a fit sees.

    The distinct `(a, b, outcome)` rows ("cells"): the likelihood, its derivatives and the Hessian depend
    on a row only through its cell, so the Newton solver works on C cell totals (row weights summed once
    per fit) instead of U rows. `lookup`: int32[M * M * 4] the cell of key `(a M + b) 4 + outcome`, so rows
    may be traced (every row must have a cell: see `unit_cells`).

    The distinct model pairs of each unit (for the leverage correction of the sandwich): `unit_lo`,
    `unit_hi` int32[P, K] (padded with 0, 0: a zero direction), `human_slot` / `judge_slot` int32[U] the
    slot `unit * K + k` of each row's pair. None when the rows were not known on the host: then every
    unit is taken to hold one pair (one vote, or several on the same pair).
    """

    a: jax.Array
    b: jax.Array
    outcome: jax.Array
    lookup: jax.Array
    unit_lo: jax.Array | None = None
    unit_hi: jax.Array | None = None
    human_slot: jax.Array | None = None
    judge_slot: jax.Array | None = None


def unit_cells(human: UnitRows, judge: UnitRows | None = None, *, num_models: int | None = None,
               num_units: int | None = None) -> UnitCells:
    """The cells (and, with `num_units`, each unit's pairs) of the concrete human and judge rows, host-side.
    For traced rows pass rows covering every `(a, b, outcome)` they may take (e.g. all pairs and outcomes)
    and no `num_units` (each unit then holds one pair) to `estimate(..., cells=...)`."""
    return _make_cells(human, judge, num_models=num_models, num_units=num_units)


def _make_cells(human: UnitRows, judge: UnitRows | None = None, *, num_models: int | None = None,
                num_units: int | None = None) -> UnitCells:
    parts = [human] if judge is None else [human, judge]
    a = np.concatenate([np.asarray(r.a, np.int64) for r in parts])
    b = np.concatenate([np.asarray(r.b, np.int64) for r in parts])
    o = np.concatenate([np.asarray(r.outcome, np.int64) for r in parts])
    m = int(max(a.max(), b.max())) + 1 if num_models is None else int(num_models)
    key = (a * m + b) * 4 + o
    uniq = np.unique(key)
    pad = _bucket(uniq.size) - uniq.size  # zero-weight cells (no row maps to them): shapes shared across fits
    ab, oc = np.divmod(uniq, 4)
    ca, cb = np.divmod(ab, m)
    lookup = np.zeros(m * m * 4, np.int32)
    lookup[uniq] = np.arange(uniq.size, dtype=np.int32)
    cells = [jnp.asarray(np.concatenate([x, np.full(pad, v)]), jnp.int32) for x, v in ((ca, 0), (cb, 1), (oc, 0))]
    if num_units is None:
        return UnitCells(*cells, jnp.asarray(lookup))
    p = int(num_units)
    u = np.concatenate([np.asarray(r.unit, np.int64) for r in parts])
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    pair_key = (u * m + lo) * m + hi
    distinct, inverse = np.unique(pair_key, return_inverse=True)
    unit_of = distinct // (m * m)
    first = np.searchsorted(unit_of, np.arange(p))  # distinct keys are sorted by unit
    rank = np.arange(distinct.size) - first[unit_of]
    k = int(rank.max()) + 1 if distinct.size else 1
    unit_lo = np.zeros((p, k), np.int32)
    unit_hi = np.zeros((p, k), np.int32)
    unit_lo[unit_of, rank] = (distinct // m) % m
    unit_hi[unit_of, rank] = distinct % m
    slot = (unit_of * k + rank)[inverse].astype(np.int32)
    n_h = np.asarray(human.a).shape[0]
    return UnitCells(*cells, jnp.asarray(lookup), jnp.asarray(unit_lo), jnp.asarray(unit_hi), jnp.asarray(slot[:n_h]),
                     None if judge is None else jnp.asarray(slot[n_h:]))


def _row_cell(rows: UnitRows, cells: UnitCells) -> jax.Array:
    m = jnp.int32(math.isqrt(cells.lookup.shape[0] // 4))
    return cells.lookup[(rows.a * m + rows.b) * 4 + rows.outcome]


def _leverage_corrected(terms, bread, w_unit, human: UnitRows, judge: UnitRows | None, cells: UnitCells, lam, zh, zj,
                        spec: _Spec):
    r"""The unit scores with the leverage (jackknife, CR3) correction: `z_i -> (I - L_i)^{-1} z_i`,
    `L_i = w_i H_i A`, with `H_i` unit i's share of the objective's Hessian (its human curvature minus lambda
    times its judge curvature) and `A` the bread. Deleting unit i and taking one Newton step moves theta by
    `A (I - L_i)^{-1} w_i z_i`, so the sandwich built from the corrected scores is the delete-one-unit
    jackknife's: without it the sandwich is biased down when a rating rests on few units (e.g. 59 models
    from a few hundred labelled comparisons).

    With `H_i = sum_k c_k d_k d_k^T` over the unit's K distinct pairs (`d_k = e_lo - e_hi`) and `z_i = sum_k
    g_k d_k` on the theta block, `(I - L_i)^{-1} z_i = sum_k gt_k d_k` with `gt = (I_K - w_i C G)^{-1} g`,
    `G_kl = d_k^T A d_l` (Woodbury: a K x K solve per unit; K = 1, one pair per unit, is the scalar
    `z_i / (1 - leverage_i)`). The tie parameter's column is left as is (every vote informs it: its
    per-unit leverage is negligible). Leverages are capped at 0.99 (a unit that alone connects a model:
    its rating's interval becomes very wide, as it should).
    """
    m = spec.num_models
    p = spec.num_units
    dtype = zh.dtype
    _, gd_c, _, hdd_c, _, _ = terms

    def slots(rows, given):
        lo, hi = jnp.minimum(rows.a, rows.b), jnp.maximum(rows.a, rows.b)
        sign = jnp.where(rows.a < rows.b, 1.0, -1.0).astype(dtype)
        return (rows.unit if given is None else given), sign, lo, hi

    if cells.unit_lo is None:  # one pair per unit, read from the rows themselves
        k = 1
        unit_lo = jnp.zeros((p,), jnp.int32).at[human.unit].set(jnp.minimum(human.a, human.b))[:, None]
        unit_hi = jnp.zeros((p,), jnp.int32).at[human.unit].set(jnp.maximum(human.a, human.b))[:, None]
        h_slot, h_sign, _, _ = slots(human, None)
        j_slot, j_sign = (None, None) if judge is None else slots(judge, None)[:2]
    else:
        k = cells.unit_lo.shape[1]
        unit_lo, unit_hi = cells.unit_lo, cells.unit_hi
        h_slot, h_sign, _, _ = slots(human, cells.human_slot)
        j_slot, j_sign = (None, None) if judge is None else slots(judge, cells.judge_slot)[:2]
    n = p * k
    h_cell = _row_cell(human, cells)
    g_h = jax.ops.segment_sum(human.weight * h_sign * gd_c[h_cell], h_slot, num_segments=n).reshape(p, k)
    curv = jax.ops.segment_sum(-human.weight * hdd_c[h_cell], h_slot, num_segments=n)
    if judge is not None:
        j_cell = _row_cell(judge, cells)
        g_j = jax.ops.segment_sum(judge.weight * j_sign * gd_c[j_cell], j_slot, num_segments=n).reshape(p, k)
        curv = curv - lam * jax.ops.segment_sum(-judge.weight * hdd_c[j_cell], j_slot, num_segments=n)
    curv = curv.reshape(p, k)
    at = bread[:m, :m]
    gram = (at[unit_lo[:, :, None], unit_lo[:, None, :]] - at[unit_lo[:, :, None], unit_hi[:, None, :]]
            - at[unit_hi[:, :, None], unit_lo[:, None, :]] + at[unit_hi[:, :, None], unit_hi[:, None, :]])  # [P, K, K]
    lev = w_unit[:, None, None] * curv[:, :, None] * gram
    radius = jnp.max(jnp.sum(jnp.abs(lev), axis=2), axis=1)  # bounds the spectral radius (Gershgorin)
    lev = lev * jnp.minimum(1.0, 0.99 / jnp.maximum(radius, 1e-30))[:, None, None]
    system = jnp.eye(k, dtype=dtype)[None] - lev

    def rebuild(z, g):
        gt = jnp.linalg.solve(system, g[..., None])[..., 0]  # [P, K]
        idx = jnp.arange(p)[:, None] * (m + 1)
        delta = gt - g  # the correction, added to the theta block along each pair's direction
        flat = (jax.ops.segment_sum(delta.reshape(-1), (idx + unit_lo).reshape(-1), num_segments=p * (m + 1))
                - jax.ops.segment_sum(delta.reshape(-1), (idx + unit_hi).reshape(-1), num_segments=p * (m + 1)))
        return z + flat.reshape(p, m + 1)

    return rebuild(zh, g_h), (None if judge is None else rebuild(zj, g_j))


def _cell_weights(unit_weight, human: UnitRows, judge: UnitRows | None, cells: UnitCells, lam):
    """float[C] cell totals of the PPI objective's signed row weights: human rows `w_i * weight`, judge rows
    `lambda * weight * (1 - w_i)` (the all-units term minus the labelled one)."""
    c = cells.a.shape[0]
    wh = human.weight * unit_weight[human.unit]
    total = jax.ops.segment_sum(wh, _row_cell(human, cells), num_segments=c)
    if judge is not None:
        wj = lam * judge.weight.astype(wh.dtype) * (1.0 - unit_weight[judge.unit])
        total = total + jax.ops.segment_sum(wj, _row_cell(judge, cells), num_segments=c)
    return total


def _unit_scores(terms, rows: UnitRows, row_cell, spec: _Spec) -> jax.Array:
    """float[P, D]: each unit's score `z_i = sum_{rows of i} weight * d log P / dx` (the cluster sums), from
    the cells' derivatives `terms` (`_row_derivatives` on the cells) gathered to the rows."""
    m = spec.num_models
    d = m + 1
    _, gd_c, gs_c, *_ = terms
    wd = rows.weight * gd_c[row_cell]
    n = spec.num_units * d
    base = rows.unit * d
    z = (jax.ops.segment_sum(wd, base + rows.a, num_segments=n) - jax.ops.segment_sum(wd, base + rows.b, num_segments=n)
         + jax.ops.segment_sum(rows.weight * gs_c[row_cell], base + m, num_segments=n))
    return z.reshape(spec.num_units, d)


def _design_zeta(z: jax.Array, sample: Sample, spec: _Spec) -> jax.Array:
    """float[P, D] `zeta` with `zeta^T zeta` the design-variance estimate of the HT total of `z` (see the
    module docstring): Poisson `sqrt(alpha_r^2 (1 - pi) / pi^2) z_i`; systematic (Hájek) per round
    `alpha_r sqrt(n_r / (n_r - 1)) sqrt(1 - pi_i) (z_i / pi_i - B_r)`. Rows of unlabelled units are 0."""
    sel = jnp.asarray(sample.selected, bool)
    pi = jnp.where(sel, sample.probability, 1.0).astype(z.dtype)
    k = sample.round_weight.shape[-1]
    rnd = jnp.maximum(sample.round, 0)
    alpha = jnp.asarray(sample.round_weight, z.dtype)[rnd]
    fpc = jnp.where(sel, jnp.clip(1.0 - pi, 0.0, 1.0), 0.0)
    if spec.design == _IMPORTANCE:
        return jnp.where(sel, 1.0 / pi, 0.0)[:, None] * z
    if spec.design == "poisson":
        return (alpha * jnp.sqrt(fpc) / pi)[:, None] * z
    u = z / pi[:, None]
    d_sum = jax.ops.segment_sum(fpc, rnd, num_segments=k)
    du_sum = jax.ops.segment_sum(fpc[:, None] * u, rnd, num_segments=k)
    centre = du_sum / jnp.where(d_sum > 0, d_sum, 1.0)[:, None]
    n_r = jax.ops.segment_sum(sel.astype(z.dtype), rnd, num_segments=k)
    factor = jnp.where(n_r > 1, jnp.sqrt(n_r / jnp.maximum(n_r - 1.0, 1.0)), 0.0)[rnd]
    return (alpha * factor * jnp.sqrt(fpc))[:, None] * (u - centre[rnd])


def _model_zeta(z: jax.Array, sample: Sample) -> jax.Array:
    """float[P, D] `sqrt(w_i) z_i`: `zeta^T zeta` is the HT estimate of `sum_all z z^T` (the superpopulation term)."""
    return jnp.sqrt(sample.weight.astype(z.dtype))[:, None] * z


def _bread(h: jax.Array, spec: _Spec) -> jax.Array:
    """The pseudo-inverse `(H + P)^{-1} - P` of the objective's Hessian (P: the flat direction)."""
    proj = _projector(spec, h.dtype)
    return jnp.linalg.inv(h + proj) - proj


def _trace_theta(mat: jax.Array, m: int) -> jax.Array:
    return jnp.trace(mat[:m, :m])


def _power_tuning(bread, zeta_h, zeta_j, m: int):
    """PPI++ lambda = tr_theta(A D(h, j) A) / tr_theta(A D(j, j) A) clipped to [0, 1], D(x, y) = zeta_x^T zeta_y."""
    ah = zeta_h @ bread  # rows: (A zeta_i)^T (A symmetric)
    aj = zeta_j @ bread
    num = jnp.sum(ah[:, :m] * aj[:, :m])
    den = jnp.sum(aj[:, :m] * aj[:, :m])
    return jnp.where(den > 0, jnp.clip(num / jnp.where(den > 0, den, 1.0), 0.0, 1.0), 0.0)


# --------------------------------------------------------------------------------------------------
# The estimator: design-weighted (lambda = 0) and prediction-powered fits, with sandwich covariances


class _Estimate(NamedTuple):
    x: jax.Array  # [D] theta then log tie parameter
    converged: jax.Array
    num_iter: jax.Array
    covariance: jax.Array  # [M, M] natural-log units, design variance
    covariance_superpopulation: jax.Array  # [M, M] design + superpopulation terms
    lam: jax.Array
    ratio: jax.Array  # tr Var(lambda) / tr Var(0): the PPI variance ratio (1 without a judge)
    num_labelled: jax.Array


def _estimate(x0, sample: Sample, human: UnitRows, judge: UnitRows | None, cells: UnitCells, lam_fixed, *, spec: _Spec,
              lam_mode: str) -> _Estimate:
    """One fit: Newton on the (PPI) objective, PPI++ lambda when `lam_mode == "optimal"` (tuned at the
    human-only fit, then the fit redone with it), then the sandwich `A zeta^T zeta A`."""
    m = spec.num_models
    w_unit = sample.weight.astype(x0.dtype)

    def weights(lam):
        return _cell_weights(w_unit, human, judge, cells, lam)

    def fit(x, lam):
        return _newton(x, weights(lam), cells.a, cells.b, cells.outcome, spec)

    def sandwich_parts(x, lam, with_terms=False):
        """At x: the bread and the human and judge unit scores (one derivative pass)."""
        terms = _row_derivatives(x, cells.a, cells.b, cells.outcome, spec)
        _, h = _gradient_hessian(x, weights(lam), cells.a, cells.b, cells.outcome, spec, terms)
        zh = _unit_scores(terms, human, _row_cell(human, cells), spec)
        zj = None if judge is None else _unit_scores(terms, judge, _row_cell(judge, cells), spec)
        return (_bread(h, spec), zh, zj, terms) if with_terms else (_bread(h, spec), zh, zj)

    def tuned(x, lam):
        bread, zh, zj = sandwich_parts(x, lam)
        return _power_tuning(bread, _design_zeta(zh, sample, spec), _design_zeta(zj, sample, spec), m)

    zero = jnp.zeros((), x0.dtype)
    if lam_mode == "optimal":
        def stage(k, carry):
            x, lam, _, it, _ = carry
            x, ok, n = fit(x, lam)
            return x, tuned(x, lam), ok, it + n, lam

        x, _, ok, iters, lam = jax.lax.fori_loop(
            0, 2, stage, (x0, zero, jnp.zeros((), bool), jnp.int32(0), zero))
    else:
        lam = zero if lam_mode == "none" else jnp.asarray(lam_fixed, x0.dtype)
        x, ok, iters = fit(x0, lam)

    bread, zh, zj, terms = sandwich_parts(x, lam, with_terms=True)
    if spec.correction == "jackknife":
        zh, zj = _leverage_corrected(terms, bread, w_unit, human, judge, cells, lam, zh, zj, spec)
    zeta_h = _design_zeta(zh, sample, spec)
    zeta_e = zeta_h if judge is None else zeta_h - lam * _design_zeta(zj, sample, spec)
    v_e = bread @ (zeta_e.T @ zeta_e) @ bread
    if spec.design == _IMPORTANCE:  # sum w^2 z z^T already is the with-replacement variance
        v_sup = v_e
    else:
        zeta_m = _model_zeta(zh, sample)
        v_sup = v_e + bread @ (zeta_m.T @ zeta_m) @ bread
    v_h = bread @ (zeta_h.T @ zeta_h) @ bread
    den = _trace_theta(v_h, m)
    ratio = jnp.where(den > 0, _trace_theta(v_e, m) / jnp.where(den > 0, den, 1.0), 1.0)
    n_lab = jnp.sum(jnp.asarray(sample.selected, bool)).astype(x0.dtype)
    return _Estimate(x, ok, iters, v_e[:m, :m], v_sup[:m, :m], lam, ratio, n_lab)


@struct.dataclass
class DesignEstimate:
    """A design-weighted or prediction-powered Bradley–Terry leaderboard with its design-based intervals.

    Attributes (natural-log strengths; `ratings()` converts to the Elo scale):
        theta: float[M] log-strengths (mean 0 without a prior).
        tie_param: fitted RK alpha / Davidson nu (nan for `"half"`/`"drop"`).
        covariance: float[M, M] sandwich covariance of theta (`variance`: "design" or "superpopulation").
        std_error, lower, upper: float[M] `theta -/+ z std_error`, `z = Phi^{-1}((1 + confidence) / 2)`.
        lam: the PPI weight lambda (0 for the design-weighted fit).
        effective_labels: the number of human labels a human-only estimate under a uniform design would
            need for the same summed variance: `1 / (1 / P + (1 / n - 1 / P) r)`, r the PPI variance ratio
            (n for the design-weighted fit; P, every unit, for a judge equal to the humans).
        num_labelled: n, the labelled units. num_units: P.
        converged, num_iter: the Newton solver's.
    """

    ties: str = struct.field(pytree_node=False)
    variance: str = struct.field(pytree_node=False)
    confidence: float = struct.field(pytree_node=False)
    theta: jax.Array
    tie_param: jax.Array
    covariance: jax.Array
    std_error: jax.Array
    lower: jax.Array
    upper: jax.Array
    lam: jax.Array
    effective_labels: jax.Array
    num_labelled: jax.Array
    num_units: jax.Array
    converged: jax.Array
    num_iter: jax.Array

    def ratings(self, *, scale: float = 400.0, base: float = 10.0, init: float = 1000.0):
        """`(ratings, lower, upper, std_error)` on the Elo scale `init + scale / ln(base) * theta`."""
        k = scale / math.log(base)
        return init + k * self.theta, init + k * self.lower, init + k * self.upper, k * self.std_error


def _z(confidence: float) -> float:
    c = _check_unit_interval(confidence, "confidence", open_left=True, allow_one=False)
    return statistics.NormalDist().inv_cdf(0.5 + c / 2.0)


def _x0(num_models: int, ties: str, dtype, theta=None, tie_param=None) -> jax.Array:
    x = jnp.zeros((num_models + 1,), dtype)
    if theta is not None:
        x = x.at[:num_models].set(jnp.asarray(theta, dtype))
    if ties in _FITS_TIE:
        x = x.at[num_models].set(math.log(tie_param if tie_param is not None else _DEFAULT_TIE[ties]))
    return x


def _spec(num_models, num_units, ties, l2, design, variance, max_iter, tol, correction="jackknife") -> _Spec:
    if isinstance(num_models, bool) or not isinstance(num_models, (int, np.integer)) or num_models < 2:
        raise ValueError(f"num_models must be an int >= 2, got {num_models!r}")
    if not (isinstance(l2, (int, float)) and math.isfinite(l2) and l2 >= 0):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol must be > 0, got {tol!r}")
    _check_choice(design, "design", DESIGNS + (_IMPORTANCE,))
    _check_choice(variance, "variance", VARIANCES)
    if design == _IMPORTANCE:
        variance = "design"  # sum w^2 z z^T already is the with-replacement (superpopulation) variance
    return _Spec(int(num_models), int(num_units), _check_ties(ties), float(l2), design, variance, int(max_iter),
                 float(tol), _check_choice(correction, "correction", CORRECTIONS))


def _check_rows(rows: Any, name: str, num_models: int, num_units: int) -> UnitRows:
    if not isinstance(rows, UnitRows):
        raise TypeError(f"{name} must be UnitRows (see unit_rows), got {type(rows).__name__}")
    a, b, u = (np.asarray(x) for x in (rows.a, rows.b, rows.unit))
    if a.size == 0:
        raise ValueError(f"{name} has no vote rows")
    if max(a.max(), b.max()) >= num_models:
        raise ValueError(f"{name}: model index {max(a.max(), b.max())} >= num_models = {num_models}")
    if u.min() < 0 or u.max() >= num_units:
        raise ValueError(f"{name}: unit index outside [0, {num_units}) (the sample has {num_units} units)")
    return rows


def _check_sample(sample: Any) -> Sample:
    if not isinstance(sample, Sample):
        raise TypeError(f"sample must be a Sample (single_round / add_round), got {type(sample).__name__}")
    if np.asarray(sample.round_weight).size == 0:
        raise ValueError("sample has no round yet (add_round)")
    if float(np.asarray(sample.unassigned)) > 1e-9:
        raise ValueError(f"sample: its rounds leave weight {float(np.asarray(sample.unassigned)):.3g} unassigned (the last "
                         "round was planned with future_budget > 0); add the planned rounds before fitting")
    return sample


def _check_labelled(human: UnitRows, sample: Sample, name: str) -> None:
    """Votes on units the sample did not select are an error: their weight would be 0 (or, silently
    counted, they would bias the estimate: the probabilities no longer describe how votes were collected)."""
    sel = np.asarray(sample.selected, bool)
    u = np.asarray(human.unit)
    bad = np.unique(u[~sel[u] & (np.asarray(human.weight) > 0)])
    if bad.size:
        raise ValueError(f"{name}: {bad.size} unit(s) with votes were not selected by the sample (e.g. unit "
                         f"{int(bad[0])}); votes on prompts absent from the plan cannot be weighted")
    present = np.unique(u[np.asarray(human.weight) > 0])
    if present.size == 0:
        raise ValueError(f"{name}: no votes with positive weight")


def _check_connected(rows: UnitRows, num_models: int, name: str, l2: float) -> None:
    if l2 > 0:
        return
    a, b, w = np.asarray(rows.a), np.asarray(rows.b), np.asarray(rows.weight)
    keep = w != 0
    label = np.arange(num_models)
    lo, hi = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
    for _ in range(num_models):
        old = label.copy()
        lmin = np.minimum(label[lo], label[hi])
        np.minimum.at(label, lo, lmin)
        np.minimum.at(label, hi, lmin)
        label = label[label]
        if np.array_equal(label, old):
            break
    if np.unique(label).size > 1:
        missing = [int(i) for i in range(num_models) if not ((a[keep] == i).any() or (b[keep] == i).any())]
        hint = f"; models without labelled votes: {missing[:5]}" if missing else ""
        raise ValueError(f"{name}: the labelled votes split the models into {np.unique(label).size} groups that "
                         f"were never compared{hint}; ratings are not comparable across them (pass l2 > 0 for a prior)")


def _finish(est: _Estimate, spec: _Spec, variance: str, confidence: float, num_units: int) -> DesignEstimate:
    m = spec.num_models
    z = _z(confidence)
    cov = est.covariance if variance == "design" else est.covariance_superpopulation
    se = jnp.sqrt(jnp.maximum(jnp.diag(cov), 0.0))
    theta = est.x[:m]
    tie = jnp.exp(est.x[m]) if spec.ties in _FITS_TIE else jnp.asarray(jnp.nan, theta.dtype)
    n = est.num_labelled
    eff = 1.0 / (1.0 / num_units + (1.0 / n - 1.0 / num_units) * est.ratio)
    return DesignEstimate(
        ties=spec.ties, variance=variance, confidence=float(confidence), theta=theta, tie_param=tie,
        covariance=cov, std_error=se, lower=theta - z * se, upper=theta + z * se, lam=est.lam,
        effective_labels=eff, num_labelled=n, num_units=jnp.asarray(num_units), converged=est.converged,
        num_iter=est.num_iter,
    )


def _lam_mode(judge, lam) -> tuple[str, float]:
    if judge is None:
        return "none", 0.0
    if lam is None:
        return "optimal", 0.0
    return "fixed", _check_unit_interval(lam, "lam", open_left=False)


def estimate(
    sample: Sample,
    human: UnitRows,
    *,
    num_models: int,
    judge: UnitRows | None = None,
    lam: float | None = None,
    ties: str = "half",
    l2: float = 0.0,
    variance: str = "design",
    confidence: float = 0.95,
    init: Any = None,
    max_iter: int = 50,
    tol: float = 1e-6,
    correction: str = "jackknife",
    cells: Any = None,
) -> DesignEstimate:
    """The design-weighted (no `judge`) or prediction-powered estimator as a pure function of the sample:
    jit/vmap-able over samples, e.g. inside replays of a sequential design whose later rounds depend on a
    fit of the earlier ones (`replay_designs(..., sampler=...)`).

    No value checks: `fit_design_weighted` / `fit_prediction_powered` check the inputs and call this. Votes
    on units the sample did not select simply get weight 0 here (in replays `human` holds every unit's
    votes). The vote rows must be concrete arrays (their distinct `(a, b, outcome)` cells are tabulated on
    the host) unless `cells` (from `unit_cells(human, judge)`) is passed; options as for
    `fit_prediction_powered`.
    """
    spec = _spec(num_models, sample.num_units, ties, l2, sample.design, variance, max_iter, tol, correction)
    mode, lam_value = _lam_mode(judge, lam)
    dtype = jnp.promote_types(human.weight.dtype, jnp.float32)
    if judge is not None:
        judge = judge._replace(weight=judge.weight.astype(dtype))
    x0 = _x0(spec.num_models, ties, dtype, init)
    if cells is None:
        cells = unit_cells(human, judge, num_models=num_models, num_units=sample.num_units)
    est = _estimate(x0, _as_device(sample, dtype), human, judge, cells, jnp.asarray(lam_value, dtype), spec=spec,
                    lam_mode=mode)
    return _finish(est, spec, spec.variance, confidence, spec.num_units)


@functools.partial(jax.jit, static_argnames=("spec", "lam_mode"))
def _estimate_jit(x0, sample, human, judge, cells, lam, *, spec: _Spec, lam_mode: str):
    return _estimate(x0, sample, human, judge, cells, lam, spec=spec, lam_mode=lam_mode)


def _bucket(n: int) -> int:
    """Row counts are padded to a power of two (>= 64) so that fits of similar sizes share a compilation."""
    return max(64, 1 << max(0, int(n) - 1).bit_length())


def _pad_rows(rows: UnitRows, size: int) -> UnitRows:
    """Append zero-weight rows (a model-0-vs-model-1 win in unit 0): they add nothing anywhere."""
    pad = size - rows.a.shape[0]
    if pad <= 0:
        return rows
    fill = (0, 1, A_WINS, 0)
    return UnitRows(*(jnp.concatenate([x, jnp.full((pad,), v, x.dtype)]) for x, v in zip(rows[:4], fill)),
                    jnp.concatenate([rows.weight, jnp.zeros((pad,), rows.weight.dtype)]))


def _run_estimate(sample, human, judge, *, num_models, lam, ties, l2, variance, confidence, init, max_iter, tol,
                  correction):
    """Host path of the fits: rows padded to a bucket size, cells tabulated here; the compilation depends
    only on the tie model, the design, the lambda mode and the bucketed shapes (not on variance or
    confidence, which are applied to the compiled call's output)."""
    spec = _spec(num_models, sample.num_units, ties, l2, sample.design, variance, max_iter, tol, correction)
    mode, lam_value = _lam_mode(judge, lam)
    dtype = jnp.promote_types(human.weight.dtype, jnp.float32)
    human = _pad_rows(human, _bucket(human.a.shape[0]))
    if judge is not None:
        judge = _pad_rows(judge._replace(weight=judge.weight.astype(dtype)), _bucket(judge.a.shape[0]))
    est = _estimate_jit(_x0(spec.num_models, ties, dtype, init), _as_device(sample, dtype), human, judge,
                        _make_cells(human, judge, num_models=spec.num_models, num_units=spec.num_units),
                        jnp.asarray(lam_value, dtype),
                        spec=spec._replace(variance="design"),
                        lam_mode=mode)
    return _finish(est, spec, spec.variance, confidence, spec.num_units)


def fit_design_weighted(
    human: UnitRows,
    sample: Sample,
    *,
    num_models: int,
    ties: str = "half",
    l2: float = 0.0,
    variance: str = "design",
    confidence: float = 0.95,
    init: Any = None,
    max_iter: int = 50,
    tol: float = 1e-6,
    correction: str = "jackknife",
) -> DesignEstimate:
    r"""Horvitz–Thompson (design-weighted) Bradley–Terry fit with design-based sandwich intervals.

    Minimises `-sum_{i in S} w_i sum_{votes of i} log P(outcome | theta_a - theta_b)` (+ `l2/2 |theta|^2`),
    `w_i = sample.weight`, by damped Newton on the exact Hessian, and returns the covariance
    `H^+ V H^+` with `V` the design variance of the HT total of the unit scores (clusters = units; see
    the module docstring for the Poisson and Hájek forms and `variance`).

    Args:
        human: the labelled units' votes (`unit_rows`; `unit` indexes the sample's units). Votes on units
            the sample did not select are an error.
        sample: the realised design (`single_round`, `add_round`).
        num_models: M.
        ties: `"half"`, `"drop"`, `"rao-kupper"` or `"davidson"` (the latter two fit the tie parameter).
        l2: prior precision on theta (0: theta centred).
        variance: `"design"` (target: the full-data leaderboard of these units) or `"superpopulation"`
            (target: the leaderboard of the prompt population the units were drawn from).
        confidence: central probability of `[lower, upper]`.
        init: optional float[M] starting theta (e.g. a previous fit).
        max_iter, tol: Newton iteration cap and step tolerance (natural-log units).
        correction: `"jackknife"` (default): unit scores corrected for their leverage, `(I - L_i)^{-1} z_i`,
            the delete-one-unit jackknife's (CR3) sandwich, which stays calibrated when ratings rest on
            few units; `"none"`: the plain (CR0) sandwich.

    Returns:
        `DesignEstimate` (theta, covariance, std_error, lower, upper, lam = 0, effective_labels = n).

    Example:
        >>> arena = synthetic_arena(jax.random.key(0), num_models=4, num_units=200)
        >>> pi = inclusion_probabilities(arena.scores, 60, uniform_mix=0.3)
        >>> sample = single_round(poisson_sample(jax.random.key(1), pi), pi)
        >>> est = fit_design_weighted(restrict_rows(arena.human, sample.selected), sample, num_models=4)
    """
    sample = _check_sample(sample)
    spec = _spec(num_models, sample.num_units, ties, l2, sample.design, variance, max_iter, tol)
    human = _check_rows(human, "human", spec.num_models, spec.num_units)
    _check_labelled(human, sample, "human")
    _check_connected(human, spec.num_models, "human", spec.l2)
    _z(confidence)
    return _run_estimate(sample, human, None, num_models=spec.num_models, lam=None, ties=ties, l2=l2, variance=variance,
                         confidence=confidence, init=init, max_iter=max_iter, tol=tol, correction=correction)


def fit_prediction_powered(
    human: UnitRows,
    judge: UnitRows,
    sample: Sample,
    *,
    num_models: int,
    lam: float | None = None,
    ties: str = "half",
    l2: float = 0.0,
    variance: str = "design",
    confidence: float = 0.95,
    init: Any = None,
    max_iter: int = 50,
    tol: float = 1e-6,
    correction: str = "jackknife",
) -> DesignEstimate:
    r"""Prediction-powered (PPI++) Bradley–Terry: human votes on the sampled units, judge votes on all units.

    `theta_hat = argmin lambda L^J_all + sum_S w_i (L^H_i - lambda L^J_i)` (labelled terms design-weighted),
    solved by damped Newton on the exact Hessian (the labelled judge terms have negative weights; the
    step uses |eigenvalues| so it descends even where the Hessian is indefinite). With `lam=None`, lambda
    is PPI++'s power tuning (the minimiser of the summed variance of the ratings, computed at the
    human-only fit, clipped to [0, 1]; module docstring); the fit is then redone with it. Intervals: the
    design sandwich with the residual scores `g^H - lambda g^J`.

    Args:
        human: human votes of the labelled units (votes on unselected units are an error).
        judge: judge votes (hard rows, or soft outcomes via `soft_unit_rows`), on every unit; they must
            cover every human-labelled unit (matched by unit, the sampling unit).
        sample: the design (`single_round`, `add_round`).
        num_models: M.
        lam: None (PPI++ tuning), or a fixed lambda in [0, 1] (0: human-only, 1: plain PPI).
        ties, l2, variance, confidence, init, max_iter, tol, correction: as for `fit_design_weighted`.

    Returns:
        `DesignEstimate` with `lam` and `effective_labels`.
    """
    sample = _check_sample(sample)
    spec = _spec(num_models, sample.num_units, ties, l2, sample.design, variance, max_iter, tol)
    human = _check_rows(human, "human", spec.num_models, spec.num_units)
    judge = _check_rows(judge, "judge", spec.num_models, spec.num_units)
    _check_labelled(human, sample, "human")
    _check_connected(human, spec.num_models, "human", spec.l2)
    covered = np.zeros(spec.num_units, bool)
    covered[np.asarray(judge.unit)[np.asarray(judge.weight) > 0]] = True
    labelled = np.unique(np.asarray(human.unit))
    missing = labelled[~covered[labelled]]
    if missing.size:
        raise ValueError(f"judge: the judge votes do not cover {missing.size} of the {labelled.size} human-labelled units "
                         f"(e.g. unit {int(missing[0])}); PPI needs judge votes on every labelled prompt")
    return _run_estimate(sample, human, judge, num_models=spec.num_models, lam=lam, ties=ties, l2=l2, variance=variance,
                         confidence=confidence, init=init, max_iter=max_iter, tol=tol, correction=correction)


def _as_device(sample: Sample, dtype) -> Sample:
    return Sample(design=sample.design, selected=jnp.asarray(sample.selected, bool),
                  probability=jnp.asarray(sample.probability, dtype), round=jnp.asarray(sample.round, jnp.int32),
                  round_weight=jnp.asarray(sample.round_weight, dtype),
                  round_probabilities=jnp.asarray(sample.round_probabilities, dtype),
                  unassigned=jnp.asarray(sample.unassigned, dtype))


def restrict_rows(rows: UnitRows, selected: Any) -> UnitRows:
    """The rows whose unit is selected (host-side; e.g. the human votes a plan asked for)."""
    sel = np.asarray(selected, bool)
    keep = sel[np.asarray(rows.unit)]
    return UnitRows(*(jnp.asarray(np.asarray(x)[keep]) for x in rows))


# --------------------------------------------------------------------------------------------------
# The pieces of the sandwich, public for references and custom estimators


def unit_scores(theta: Any, rows: UnitRows, *, num_units: int, ties: str = "half", tie_param: Any = None) -> jax.Array:
    """Per-unit scores `z_i = sum_{rows of unit i} weight * d log P / d(theta, log tie)`, float[P, M + 1]
    (the last column is the tie parameter's, 0 for `"half"`/`"drop"`): the cluster sums of the sandwich."""
    theta = jnp.asarray(theta)
    theta = theta.astype(jnp.promote_types(theta.dtype, jnp.float32))
    m = theta.shape[0]
    spec = _Spec(m, int(num_units), _check_ties(ties), 0.0, "poisson", "design", 1, 1.0)
    cells = _make_cells(rows, num_models=m)
    terms = _row_derivatives(_x0(m, ties, theta.dtype, theta, tie_param), cells.a, cells.b, cells.outcome, spec)
    return _unit_scores(terms, rows, _row_cell(rows, cells), spec)


def design_scores(z: Any, sample: Sample, *, variance: str = "design") -> jax.Array:
    """`zeta` with `zeta^T zeta` the design-variance estimate of the HT total `sum_S w_i z_i` (module docstring),
    float[P, D]; with `variance="superpopulation"` the rows `sqrt(w_i) z_i` are appended, float[2P, D]."""
    z = jnp.asarray(z)
    spec = _Spec(1, z.shape[0], "half", 0.0, sample.design, _check_choice(variance, "variance", VARIANCES), 1, 1.0)
    s = _as_device(sample, z.dtype)
    zeta = _design_zeta(z, s, spec)
    return jnp.concatenate([zeta, _model_zeta(z, s)]) if variance == "superpopulation" else zeta


def ppi_power_tuning(bread: Any, zeta_human: Any, zeta_judge: Any, *, num_models: int | None = None) -> jax.Array:
    r"""PPI++ lambda: `tr(A (D_HJ + D_JH) A) / (2 tr(A D_JJ A))` over the first `num_models` coordinates,
    clipped to [0, 1], with `D_XY = zeta_X^T zeta_Y` (`design_scores`) and `A` the bread (the inverse Hessian).
    Equal to PPI++'s formula (Angelopoulos, Duchi & Zrnic 2023) when `D` is the i.i.d. covariance with the
    unlabelled sample's `(1 + n / N)` inflation; 0 when the judge has no variance."""
    bread = jnp.asarray(bread)
    m = bread.shape[0] if num_models is None else int(num_models)
    return _power_tuning(bread, jnp.asarray(zeta_human), jnp.asarray(zeta_judge), m)


# --------------------------------------------------------------------------------------------------
# Bootstrap over units


@struct.dataclass
class BootstrapEstimate:
    """Bootstrap over the labelled units: `samples` float[B, M] theta per round; percentile `lower`/`upper`
    and `std_error` over rounds; `fit` the point estimate (`DesignEstimate`); `converged` bool[B]."""

    confidence: float = struct.field(pytree_node=False)
    fit: DesignEstimate
    samples: jax.Array
    lower: jax.Array
    upper: jax.Array
    std_error: jax.Array
    converged: jax.Array


def _multipliers(key, sample: Sample, spec: _Spec, dtype):
    """float[P] multipliers of the labelled units' weights, mean 1. `variance="design"`: log-normal with variance
    `c_i / w_i^2` (`c_i` the unit's Poisson design coefficient, 1 - pi for one round), so the bootstrap
    variance of the HT total equals the design-variance estimator (the generalized bootstrap of Beaumont &
    Patak 2012; only the first two moments matter; for the fixed-size design Hájek's centring is left
    out, which can only widen the interval). `"superpopulation"`: Poisson(1) counts (each labelled prompt
    resampled a Poisson number of times with its weight: the with-replacement bootstrap of prompts)."""
    sel = jnp.asarray(sample.selected, bool)
    if spec.variance == "superpopulation" or spec.design == _IMPORTANCE:
        m = jax.random.poisson(key, 1.0, sel.shape).astype(dtype)
        return jnp.where(sel, m, 0.0)
    pi = jnp.where(sel, sample.probability, 1.0).astype(dtype)
    rnd = jnp.maximum(sample.round, 0)
    alpha = jnp.asarray(sample.round_weight, dtype)[rnd]
    w = jnp.where(sel, sample.weight.astype(dtype), 1.0)
    c = alpha * alpha * jnp.clip(1.0 - pi, 0.0, 1.0) / (pi * pi)
    if spec.design == "systematic":
        k = sample.round_weight.shape[-1]
        n_r = jax.ops.segment_sum(sel.astype(dtype), rnd, num_segments=k)[rnd]
        c = c * jnp.where(n_r > 1, n_r / jnp.maximum(n_r - 1.0, 1.0), 0.0)
    sigma2 = jnp.log1p(c / (w * w))
    g = jnp.exp(jnp.sqrt(sigma2) * jax.random.normal(key, sel.shape, dtype) - 0.5 * sigma2)
    return jnp.where(sel, g, 0.0)


@functools.partial(jax.jit, static_argnames=("spec",))
def _bootstrap_chunk(keys, x_hat, sample, human, judge, cells, lam, *, spec):
    w_unit = sample.weight.astype(x_hat.dtype)

    def one(k):
        w_star = w_unit * _multipliers(k, sample, spec, x_hat.dtype)
        x, ok, _ = _newton(x_hat, _cell_weights(w_star, human, judge, cells, lam), cells.a, cells.b, cells.outcome, spec)
        return x[: spec.num_models], ok

    return jax.vmap(one)(keys)


def design_bootstrap(
    key: jax.Array,
    human: UnitRows,
    sample: Sample,
    *,
    num_models: int,
    judge: UnitRows | None = None,
    lam: float | None = None,
    num_rounds: int = 1000,
    ties: str = "half",
    l2: float = 0.0,
    variance: str = "design",
    confidence: float = 0.95,
    chunk_size: int = 256,
    max_iter: int = 50,
    tol: float = 1e-6,
) -> BootstrapEstimate:
    r"""Bootstrap intervals that resample the labelled units with their weights (all rounds vmapped).

    Each round multiplies every labelled unit's weight by an independent draw (`_multipliers`: Gamma draws
    with the design's finite-population variance for `variance="design"`, Poisson(1) counts — resampling
    prompts with replacement — for `"superpopulation"`) and refits from the point estimate by damped
    Newton; with a judge the PPI objective is refitted with the point estimate's lambda (judge-all term
    fixed: it has no design variance). Percentile intervals, as Chatbot Arena reports.

    Args:
        key: PRNG key (round r uses `jax.random.split(key, num_rounds)[r]`; results do not depend on
            `chunk_size`).
        human, sample, num_models, ties, l2, variance, confidence, max_iter, tol: as for `fit_design_weighted`.
        judge, lam: judge votes and lambda for a PPI bootstrap (`variance="design"` only).
        num_rounds: B >= 2.
        chunk_size: rounds per compiled call.

    Returns:
        `BootstrapEstimate(fit, samples [B, M], lower, upper, std_error, converged)`.
    """
    if isinstance(num_rounds, bool) or not isinstance(num_rounds, (int, np.integer)) or num_rounds < 2:
        raise ValueError(f"num_rounds must be an int >= 2, got {num_rounds!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    if judge is not None and variance == "superpopulation":
        raise ValueError("design_bootstrap: a PPI bootstrap supports variance='design' only (the judge-all term would "
                         "need resampling too); use the sandwich (fit_prediction_powered) for the superpopulation variance")
    opts = dict(num_models=num_models, ties=ties, l2=l2, variance=variance, confidence=confidence, max_iter=max_iter, tol=tol)
    if judge is None:
        fit = fit_design_weighted(human, sample, **opts)
    else:
        fit = fit_prediction_powered(human, judge, sample, lam=lam, **opts)
    spec = _spec(num_models, sample.num_units, ties, l2, sample.design, variance, max_iter, tol)
    dtype = fit.theta.dtype
    x_hat = _x0(spec.num_models, ties, dtype, fit.theta, None if ties not in _FITS_TIE else float(fit.tie_param))
    dev = _as_device(sample, dtype)
    jd = None if judge is None else judge._replace(weight=judge.weight.astype(dtype))
    cells = _make_cells(human, jd, num_models=spec.num_models)
    keys = jax.random.split(key, int(num_rounds))
    chunk = int(min(chunk_size, num_rounds))
    thetas, oks = [], []
    for start in range(0, int(num_rounds), chunk):
        part = keys[start:start + chunk]
        pad = chunk - part.shape[0]
        if pad:
            part = jnp.concatenate([part, jnp.repeat(part[-1:], pad, axis=0)])
        t, ok = _bootstrap_chunk(part, x_hat, dev, human, jd, cells, fit.lam.astype(dtype), spec=spec)
        thetas.append(t[: chunk - pad])
        oks.append(ok[: chunk - pad])
    samples = jnp.concatenate(thetas)
    q = jnp.asarray([(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0], samples.dtype)
    lower, upper = jnp.quantile(samples, q, axis=0)
    return BootstrapEstimate(confidence=float(confidence), fit=fit, samples=samples, lower=lower, upper=upper,
                             std_error=jnp.std(samples, axis=0, ddof=1), converged=jnp.concatenate(oks))


# --------------------------------------------------------------------------------------------------
# Priority from the current leaderboard's uncertainty; active pair sampling (live arenas)


def variance_reduction_scores(theta: Any, covariance: Any, rows: UnitRows, *, num_units: int) -> jax.Array:
    r"""Per-unit priority for the next round: the expected reduction of the ratings' summed variance from the
    unit's votes, `u_i = sum_{rows of i} c (C d)^T (C d) / (1 + c d^T C d)` with `d = e_a - e_b`,
    `c = p (1 - p)` the vote's Fisher information at `p = sigmoid(theta_a - theta_b)` and `C` the current
    covariance of theta (a rank-one update of the information matrix: A-optimal design). Pass the rows a
    unit *would* produce (e.g. the judge's rows, or the planned pairs); units without rows score 0.

    Returns:
        float[P] scores >= 0 (for `inclusion_probabilities` / `inclusion_probabilities_jax`). jit/vmap-able.
    """
    theta = jnp.asarray(theta)
    cov = jnp.asarray(covariance, theta.dtype)
    p = jax.nn.sigmoid(theta[rows.a] - theta[rows.b])
    info = p * (1.0 - p)
    cd = cov[:, rows.a] - cov[:, rows.b]  # [M, U]
    quad = cd[rows.a, jnp.arange(rows.a.shape[0])] - cd[rows.b, jnp.arange(rows.a.shape[0])]
    gain = rows.weight * info * jnp.sum(cd * cd, axis=0) / (1.0 + info * jnp.maximum(quad, 0.0))
    return jax.ops.segment_sum(gain, rows.unit, num_segments=int(num_units))


def _all_pairs(num_models: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.triu_indices(num_models, k=1)
    return a.astype(np.int32), b.astype(np.int32)


def pair_sampling_probabilities(covariance: Any, counts: Any, *, pairs: Any = None, uniform_mix: Any = 0.1) -> jax.Array:
    r"""Chatbot Arena's active sampling rule (Chiang et al. 2024, Sec. 5): the probability of showing pair
    (a, b) is proportional to the expected shrinkage of its interval from one more vote,
    `sqrt(V_ab / n_ab) - sqrt(V_ab / (n_ab + 1))` with `V_ab / n_ab = Var(theta_a - theta_b)` from the current
    covariance, i.e. `sqrt(Var) (1 - sqrt(n / (n + 1)))` (a pair never shown gets its whole width), mixed
    with uniform: `P = (1 - tau) shrink / sum shrink + tau / K`. Log these probabilities with each shown
    vote and weight it by `1 / (K P)` (`importance_weights`): the fit then estimates the leaderboard of
    uniform match-making.

    Args:
        covariance: float[M, M] covariance of theta (natural-log units), e.g. `DesignEstimate.covariance`.
        counts: float[K] votes shown so far per pair.
        pairs: optional `(a, b)` int[K] each; default all K = M (M - 1) / 2 pairs `a < b`.
        uniform_mix: tau in (0, 1] (may be traced).

    Returns:
        float[K] probabilities summing to 1. jit/vmap-able.
    """
    cov = jnp.asarray(covariance)
    cov = cov.astype(jnp.promote_types(cov.dtype, jnp.float32))
    a, b = _all_pairs(cov.shape[0]) if pairs is None else (jnp.asarray(pairs[0]), jnp.asarray(pairs[1]))
    var = jnp.maximum(cov[a, a] + cov[b, b] - 2.0 * cov[a, b], 0.0)
    n = jnp.asarray(counts, cov.dtype)
    shrink = jnp.sqrt(var) * (1.0 - jnp.sqrt(n / (n + 1.0)))
    total = jnp.sum(shrink)
    k = shrink.shape[0]
    tau = jnp.asarray(uniform_mix, cov.dtype)
    prop = jnp.where(total > 0, shrink / jnp.where(total > 0, total, 1.0), 1.0 / k)
    return (1.0 - tau) * prop + tau / k


def sample_pairs(key: jax.Array, probabilities: Any, num_votes: int) -> jax.Array:
    """Draw `num_votes` pair indices i.i.d. from `probabilities` (float[K]). int32[num_votes]; jit/vmap-able."""
    p = jnp.asarray(probabilities)
    return jax.random.choice(key, p.shape[0], (int(num_votes),), p=p).astype(jnp.int32)


def importance_weights(probabilities: Any, shown: Any) -> jax.Array:
    """float[V] `1 / (K P[shown])`: the weight that makes a vote on pair `shown` count as under uniform
    match-making (K pairs, `probabilities` the logged float[K] of the round that showed it)."""
    p = jnp.asarray(probabilities)
    return 1.0 / (p.shape[-1] * p[..., jnp.asarray(shown)])


def fit_active_pairs(
    rows: UnitRows,
    weights: Any,
    *,
    num_models: int,
    ties: str = "half",
    l2: float = 0.0,
    confidence: float = 0.95,
    init: Any = None,
    max_iter: int = 50,
    tol: float = 1e-6,
    correction: str = "jackknife",
) -> DesignEstimate:
    r"""Bradley–Terry on actively sampled votes, each weighted by its logged `1 / (K P(shown))`
    (`importance_weights`), with the with-replacement sandwich `H^+ (sum_t w_t^2 z_t z_t^T) H^+` (votes drawn
    one by one with known probabilities: a martingale, each vote its own unit, clustered by `rows.unit`
    if several votes share a unit).

    Args:
        rows: the shown votes (`unit` groups votes that are not independent, e.g. the same conversation;
            `arange(V)` for independent votes).
        weights: float[P] importance weight per unit (per vote when units are votes).
        num_models, ties, l2, confidence, init, max_iter, tol, correction: as for `fit_design_weighted`.
    """
    w = np.asarray(weights, np.float64)
    if w.ndim != 1 or np.isnan(w).any() or (w <= 0).any():
        raise ValueError("weights must be a 1-d array of positive importance weights (one per unit)")
    p_units = w.shape[0]
    spec = _spec(num_models, p_units, ties, l2, _IMPORTANCE, "design", max_iter, tol, correction)
    rows = _check_rows(rows, "rows", spec.num_models, p_units)
    _check_connected(rows, spec.num_models, "rows", spec.l2)
    _z(confidence)
    dtype = rows.weight.dtype
    sample = Sample(design=_IMPORTANCE, selected=jnp.ones((p_units,), bool), probability=jnp.asarray(1.0 / w, dtype),
                    round=jnp.zeros((p_units,), jnp.int32), round_weight=jnp.ones((1,), dtype),
                    round_probabilities=jnp.asarray(1.0 / w, dtype)[None], unassigned=jnp.zeros((), dtype))
    cells = _make_cells(rows, num_models=spec.num_models, num_units=p_units)
    est = _estimate_jit(_x0(spec.num_models, ties, dtype, init), sample, rows, None, cells,
                        jnp.zeros((), dtype), spec=spec, lam_mode="none")
    return _finish(est, spec, "design", confidence, p_units)


# --------------------------------------------------------------------------------------------------
# Synthetic arenas with prompts and a judge


class SyntheticArena(NamedTuple):
    """A simulated arena: P prompts (units), each comparing `pairs_per_unit` model pairs.

    Attributes:
        human: `UnitRows` of the human votes of every unit (`votes_per_pair` per pair).
        judge: `UnitRows` of the judge's votes (one per pair), correlated with the humans'.
        scores: float[P] priority scores (noisy decisiveness of each prompt).
        theta: float[M] the population's log-strengths (before prompt effects).
        decisiveness: float[P] each prompt's scale of the strength differences.
        num_models, num_units: M, P.
    """

    human: UnitRows
    judge: UnitRows
    scores: jax.Array
    theta: jax.Array
    decisiveness: jax.Array
    num_models: int
    num_units: int


def _rao_kupper_draw(key, delta, alpha):
    """Outcome codes from Rao–Kupper (alpha = 0: plain Bradley–Terry, no ties)."""
    u = jax.random.uniform(key, delta.shape)
    p_a = jax.nn.sigmoid(delta - alpha)
    p_b = jax.nn.sigmoid(-delta - alpha)
    return jnp.where(u < p_a, A_WINS, jnp.where(u < p_a + p_b, B_WINS, TIE)).astype(jnp.int32)


def synthetic_arena(
    key: jax.Array,
    *,
    num_models: int = 5,
    num_units: int = 400,
    pairs_per_unit: int = 3,
    votes_per_pair: int = 3,
    theta_scale: float = 0.8,
    unit_scale: float = 0.3,
    decisiveness: float = 0.8,
    tie_param: float = 0.4,
    judge_agreement: float = 0.7,
    judge_noise: float = 0.5,
    score_noise: float = 0.3,
) -> SyntheticArena:
    r"""Simulate an arena with prompt-level heterogeneity and a correlated judge, for tests and replays.

    Prompt i has a decisiveness `s_i = exp(decisiveness * N(0, 1))` and its own strengths
    `theta + unit_scale * N(0, 1)`; each of its pairs gets `votes_per_pair` human votes from Rao–Kupper with
    `delta = s_i (theta_ia - theta_ib)` and threshold `tie_param` (0: no ties). The judge votes once per
    pair: with probability `judge_agreement` it copies the pair's first human vote, otherwise it draws its
    own vote with `delta + judge_noise * N(0, 1)`. Priority scores are `s_i exp(score_noise * N(0, 1))`.
    The known full-population leaderboard is the fit on all units' human votes.

    Returns:
        `SyntheticArena`.
    """
    m, p, k, v = (int(x) for x in (num_models, num_units, pairs_per_unit, votes_per_pair))
    if m < 2 or p < 2 or k < 1 or v < 1:
        raise ValueError("synthetic_arena needs num_models >= 2, num_units >= 2, pairs_per_unit >= 1, votes_per_pair >= 1")
    _check_unit_interval(judge_agreement, "judge_agreement", open_left=False)
    human, judge, scores, theta, s = _synthetic_arena(
        key, jnp.asarray([theta_scale, unit_scale, decisiveness, tie_param, judge_agreement, judge_noise, score_noise],
                         jnp.float32), m=m, p=p, k=k, v=v)
    return SyntheticArena(human, judge, scores, theta, s, m, p)


@functools.partial(jax.jit, static_argnames=("m", "p", "k", "v"))
def _synthetic_arena(key, opts, *, m, p, k, v):
    theta_scale, unit_scale, decisiveness, tie_param, judge_agreement, judge_noise, score_noise = opts
    keys = jax.random.split(key, 10)
    theta = theta_scale * jax.random.normal(keys[0], (m,))
    theta = theta - theta.mean()
    s = jnp.exp(decisiveness * jax.random.normal(keys[1], (p,)))
    strengths = theta[None, :] + unit_scale * jax.random.normal(keys[2], (p, m))
    a = jax.random.randint(keys[3], (p, k), 0, m)
    b = (a + jax.random.randint(keys[4], (p, k), 1, m)) % m
    delta = s[:, None] * (jnp.take_along_axis(strengths, a, 1) - jnp.take_along_axis(strengths, b, 1))  # [P, K]
    human = _rao_kupper_draw(keys[5], jnp.broadcast_to(delta[..., None], (p, k, v)), tie_param)
    own = _rao_kupper_draw(keys[6], delta + judge_noise * jax.random.normal(keys[7], (p, k)), tie_param)
    copy = jax.random.uniform(keys[8], (p, k)) < judge_agreement
    judge = jnp.where(copy, human[..., 0], own)
    scores = s * jnp.exp(score_noise * jax.random.normal(keys[9], (p,)))
    unit = jnp.broadcast_to(jnp.arange(p)[:, None], (p, k))

    def flat(x, reps):
        return jnp.repeat(x.reshape(-1), reps).astype(jnp.int32) if reps > 1 else x.reshape(-1).astype(jnp.int32)

    h = UnitRows(flat(a, v), flat(b, v), human.reshape(-1), flat(unit, v), jnp.ones((p * k * v,), jnp.float32))
    j = UnitRows(flat(a, 1), flat(b, 1), judge.reshape(-1), flat(unit, 1), jnp.ones((p * k,), jnp.float32))
    return h, j, scores, theta, s


# --------------------------------------------------------------------------------------------------
# Replays: R draws of a design, each fitted, in one compiled call


class ReplayResult(NamedTuple):
    """R replays of one design: theta, std_error (design variance) and std_error_superpopulation float[R, M];
    lam, effective_labels, num_labelled float[R]; converged bool[R]."""

    theta: jax.Array
    std_error: jax.Array
    std_error_superpopulation: jax.Array
    lam: jax.Array
    effective_labels: jax.Array
    num_labelled: jax.Array
    converged: jax.Array


def _poisson_round(key, probabilities) -> Sample:
    return single_round(poisson_sample(key, probabilities), probabilities, design="poisson")


def _systematic_round(key, probabilities) -> Sample:
    return single_round(systematic_sample(key, probabilities), probabilities, design="systematic")


@functools.partial(jax.jit, static_argnames=("sampler", "spec", "lam_mode"))
def _replay_chunk(keys, x0, probabilities, human, judge, cells, lam, *, sampler, spec: _Spec, lam_mode: str):
    def one(k):
        sample = sampler(k, probabilities)
        est = _estimate(x0, _as_device(sample, x0.dtype), human, judge, cells, lam, spec=spec._replace(design=sample.design),
                        lam_mode=lam_mode)
        n = est.num_labelled
        p = spec.num_units
        eff = 1.0 / (1.0 / p + (1.0 / jnp.maximum(n, 1.0) - 1.0 / p) * est.ratio)
        se = jnp.sqrt(jnp.maximum(jnp.diag(est.covariance), 0.0))
        se_sup = jnp.sqrt(jnp.maximum(jnp.diag(est.covariance_superpopulation), 0.0))
        return est.x[: spec.num_models], se, se_sup, est.lam, eff, n, est.converged

    return jax.vmap(one)(keys)


def replay_designs(
    key: jax.Array,
    human: UnitRows,
    probabilities: Any = None,
    *,
    num_models: int,
    num_replays: int,
    design: str = "poisson",
    sampler: Any = None,
    judge: UnitRows | None = None,
    lam: float | None = None,
    ties: str = "half",
    l2: float = 0.0,
    init: Any = None,
    chunk_size: int = 256,
    max_iter: int = 50,
    tol: float = 1e-6,
    correction: str = "jackknife",
) -> ReplayResult:
    r"""Replay a design R times on fully labelled votes: draw, weight, fit and sandwich, vmapped.

    `human` holds every unit's votes (the full population); each replay draws a sample with
    `probabilities` (`design`), keeps the sampled units' votes by their HT weights (the others get weight
    0) and fits the design-weighted estimator, or with `judge` the prediction-powered one (lambda by PPI++
    when `lam` is None). One compiled call per chunk of `chunk_size` replays; `probabilities` is traced, so
    uniform and score-proportional designs of the same shape share the compilation.

    Args:
        key: PRNG key (replay r uses `jax.random.split(key, num_replays)[r]`).
        human: all units' human votes; probabilities: float[P] (passed to `sampler` if given).
        num_models, ties, l2, max_iter, tol, correction: as for `fit_design_weighted` (both variances are
            returned).
        num_replays: R >= 1. design: `"poisson"` or `"systematic"` (one round with `probabilities`).
        sampler: instead, any traceable `sampler(key, probabilities) -> Sample`, e.g. a sequential design
            whose later rounds use `estimate` on the earlier ones (a module-level function compiles once).
        judge, lam: judge votes on every unit and lambda (None: PPI++) for prediction-powered replays.
        init: optional float[M] starting theta (the full-data fit makes every replay a few Newton steps).

    Returns:
        `ReplayResult` (theta, std_error, std_error_superpopulation [R, M]; lam, effective_labels,
        num_labelled, converged [R]).
    """
    if sampler is None:
        _check_choice(design, "design", DESIGNS)
        sampler = _poisson_round if design == "poisson" else _systematic_round
        if probabilities is None:
            raise ValueError("probabilities is required without a sampler")
    elif not callable(sampler):
        raise TypeError(f"sampler must be a callable sampler(key, probabilities) -> Sample, got {type(sampler).__name__}")
    pi = None if probabilities is None else np.asarray(probabilities, np.float64)
    if pi is not None and (pi.ndim != 1 or np.isnan(pi).any() or (pi < 0).any() or (pi > 1).any()):
        raise ValueError("probabilities must be a 1-d array in [0, 1]")
    dtype = jnp.promote_types(human.weight.dtype, jnp.float32)
    probs = jnp.zeros((0,), dtype) if pi is None else jnp.asarray(pi, dtype)
    shape = jax.eval_shape(sampler, jax.random.key(0), probs)
    if not isinstance(shape, Sample):
        raise TypeError(f"sampler must return a Sample, got {type(shape).__name__}")
    p_units = int(shape.selected.shape[-1])
    spec = _spec(num_models, p_units, ties, l2, shape.design, "design", max_iter, tol, correction)
    human = _check_rows(human, "human", spec.num_models, p_units)
    if judge is not None:
        judge = _check_rows(judge, "judge", spec.num_models, p_units)
    if isinstance(num_replays, bool) or not isinstance(num_replays, (int, np.integer)) or num_replays < 1:
        raise ValueError(f"num_replays must be an int >= 1, got {num_replays!r}")
    mode, lam_value = _lam_mode(judge, lam)
    jd = None if judge is None else judge._replace(weight=judge.weight.astype(dtype))
    x0 = _x0(spec.num_models, ties, dtype, init)
    cells = _make_cells(human, jd, num_models=spec.num_models, num_units=p_units)
    keys = jax.random.split(key, int(num_replays))
    chunk = int(min(chunk_size, num_replays))
    outs = []
    for start in range(0, int(num_replays), chunk):
        part = keys[start:start + chunk]
        pad = chunk - part.shape[0]
        if pad:
            part = jnp.concatenate([part, jnp.repeat(part[-1:], pad, axis=0)])
        res = _replay_chunk(part, x0, probs, human, jd, cells, jnp.asarray(lam_value, dtype), sampler=sampler, spec=spec,
                            lam_mode=mode)
        outs.append([r[: chunk - pad] for r in res])
    return ReplayResult(*(jnp.concatenate(parts) for parts in zip(*outs)))


# --------------------------------------------------------------------------------------------------
# Plans on disk: the table `jaxrank plan` writes and `jaxrank leaderboard --design` reads

PLAN_COLUMNS = ("prompt_id", "probability", "selected", "weight", "round", "round_weight", "design")


def plan_frame(sample: Sample, prompt_ids: Any):
    """The plan table of a sample (columns `PLAN_COLUMNS`, one row per prompt, ids as strings)."""
    return sample.to_frame(prompt_ids)


def _read_plan_file(source: Any):
    """A plan file with its prompt ids read verbatim as text (CSV/TSV), or as JSON values (JSONL), or Parquet."""
    import pathlib

    import pandas as pd

    path = pathlib.Path(source)
    if not path.is_file():
        raise ValueError(f"plan {path} is not a file")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", keep_default_na=False, na_values=[""],
                           dtype={"prompt_id": str})
    if suffix in (".jsonl", ".ndjson"):
        return pd.read_json(path, lines=True, dtype={"prompt_id": object})
    if suffix == ".parquet":
        return pd.read_parquet(path)
    raise ValueError(f"plan {path}: unknown format {suffix or '(none)'!r}; use .csv, .tsv, .jsonl or .parquet")


def load_plan(source: Any) -> tuple[list[str], Sample]:
    """Read a plan (CSV/JSONL/Parquet path or DataFrame with at least `prompt_id, probability, selected,
    weight`; `round, round_weight, design` when written by jaxrank) back into `(prompt_ids, Sample)`.

    The weights are recomputed from the probabilities and round weights and must agree with the file's
    `weight` column (a plan edited by hand, or whose probabilities do not describe how prompts were drawn,
    is refused).

    Raises:
        ValueError: missing columns, duplicate or missing ids, probabilities outside [0, 1], a selected
            prompt with probability 0, inconsistent weights, an unknown design.
    """
    import pandas as pd

    if isinstance(source, pd.DataFrame):
        frame = source.copy()
    else:
        frame = _read_plan_file(source)
    missing = [c for c in PLAN_COLUMNS[:4] if c not in frame.columns]
    if missing:
        raise ValueError(f"plan is missing column(s) {', '.join(missing)}; expected {', '.join(PLAN_COLUMNS)}")
    if len(frame) == 0:
        raise ValueError("plan has no rows")
    ids = [str(v) for v in frame["prompt_id"].tolist()]
    if any(v in ("", "nan", "None") for v in ids):
        raise ValueError("plan: missing prompt ids")
    dup = pd.Index(ids)[pd.Index(ids).duplicated()].unique().tolist()
    if dup:
        raise ValueError(f"plan: {len(dup)} duplicate prompt id(s), e.g. {dup[:3]}")
    pi = pd.to_numeric(frame["probability"], errors="coerce").to_numpy(np.float64)
    if np.isnan(pi).any() or (pi < 0).any() or (pi > 1).any():
        raise ValueError("plan: probability must be a number in [0, 1] for every prompt")
    sel_raw = frame["selected"]
    if sel_raw.dtype == bool:
        sel = sel_raw.to_numpy(bool)
    else:
        text = sel_raw.astype(str).str.strip().str.lower()
        bad = ~text.isin(["true", "false", "1", "0"])
        if bad.any():
            raise ValueError(f"plan: selected must be true/false, got {sel_raw[bad].iloc[0]!r}")
        sel = text.isin(["true", "1"]).to_numpy()
    zero = np.flatnonzero(sel & (pi <= 0))
    if zero.size:
        raise ValueError(f"plan: {zero.size} selected prompt(s) have probability 0 (e.g. {ids[zero[0]]!r}); "
                         "their weight 1/pi would be infinite")
    design = "poisson"
    if "design" in frame.columns:
        designs = set(frame["design"].astype(str))
        if len(designs) != 1 or not designs <= set(DESIGNS):
            raise ValueError(f"plan: design must be one of {', '.join(DESIGNS)} (one value), got {sorted(designs)}")
        design = designs.pop()
    if "round" in frame.columns:
        rnd = pd.to_numeric(frame["round"], errors="coerce").to_numpy(np.float64)
        alpha_col = pd.to_numeric(frame.get("round_weight", pd.Series(np.ones(len(frame)))), errors="coerce").to_numpy()
        if np.isnan(rnd).any() or np.isnan(alpha_col).any():
            raise ValueError("plan: round and round_weight must be numbers")
        rnd = rnd.astype(np.int64)
        if (sel & (rnd < 0)).any() or (~sel & (rnd >= 0)).any():
            raise ValueError("plan: round must be >= 0 exactly for the selected prompts (-1 otherwise)")
        k = int(rnd.max()) + 1 if sel.any() else 1
        alpha = np.zeros(k)
        for r in range(k):
            vals = alpha_col[rnd == r]
            if vals.size == 0 or not np.allclose(vals, vals[0], rtol=1e-9, atol=1e-12):
                raise ValueError(f"plan: round {r} must have one round_weight on all its prompts")
            alpha[r] = vals[0]
        if not np.isclose(alpha.sum(), 1.0, atol=1e-9):
            raise ValueError(f"plan: the round weights sum to {alpha.sum():.6g}, not 1 (an unfinished sequential plan)")
    else:
        rnd = np.where(sel, 0, -1)
        alpha = np.ones(1)
    sample = Sample(design=design, selected=sel, probability=pi, round=rnd.astype(np.int32), round_weight=alpha,
                    round_probabilities=pi[None], unassigned=np.zeros(()))
    weight = pd.to_numeric(frame["weight"], errors="coerce").to_numpy(np.float64)
    expect = np.asarray(sample.weight, np.float64)
    bad = np.flatnonzero(~np.isclose(np.nan_to_num(weight, nan=-1.0), expect, rtol=1e-6, atol=1e-9))
    if bad.size:
        i = bad[0]
        raise ValueError(f"plan: weight of prompt {ids[i]!r} is {weight[i]:g} but its probability and round give "
                         f"{expect[i]:g}; the weights must be the design's (1/probability for one round)")
    return ids, sample


# --------------------------------------------------------------------------------------------------
# The vote table: `Votes` -> unit rows, and leaderboards from a plan and / or a judge


def _preview_ids(ids: Any, limit: int = 3) -> str:
    ids = [str(i) for i in ids]
    head = ", ".join(repr(i) for i in ids[:limit])
    return head + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def votes_unit_rows(votes: Votes, prompt_ids: Any = None, *, models: Any = None, name: str = "votes") -> UnitRows:
    """A vote table's votes as `UnitRows` whose sampling unit is the prompt.

    Uses the table's own encoding (`Votes.rows(merge=False)`: weights, counts and soft outcomes, a soft vote
    splitting into an a-wins and a b-wins row), then merges rows with the same `(a, b, outcome, prompt)`.
    `TIE_BOTHBAD` counts as a tie.

    Args:
        votes: `jaxrank.Votes` with prompt ids (the sampling unit).
        prompt_ids: the P unit ids (e.g. a plan's `prompt_id`s, as strings); unit i is `prompt_ids[i]`.
            Default: `votes.prompt_ids`.
        models: the M model names the rows index (default `votes.models`); every voted model must be one.
        name: how errors name `votes`.

    Returns:
        `UnitRows` (a, b, outcome, unit, weight) [U].

    Raises:
        ValueError: no prompt ids, votes on prompts not in `prompt_ids` (named), models not in `models`.
    """
    if not isinstance(votes, Votes):
        raise TypeError(f"{name} must be a jaxrank.Votes (jaxrank.load_votes), got {type(votes).__name__}")
    if votes.prompt is None:
        raise ValueError(f"{name}: the votes have no prompt ids; the prompt is the sampling unit (read a file with a "
                         "prompt / prompt_id / question_id column, or map one with columns=)")
    units = list(votes.prompt_ids) if prompt_ids is None else [str(p) for p in prompt_ids]
    unit_of = {p: i for i, p in enumerate(units)}
    if len(unit_of) != len(units):
        raise ValueError("prompt_ids must be distinct")
    vote_units = np.array([unit_of.get(p, -1) for p in votes.prompt_ids], np.int64)
    used = np.unique(votes.prompt)
    absent = [votes.prompt_ids[i] for i in used if vote_units[i] < 0]
    if absent:
        raise ValueError(f"{name}: votes on {len(absent)} prompt(s) absent from the plan: {_preview_ids(absent)}")
    names = list(votes.models) if models is None else [str(m) for m in models]
    model_of = {m: i for i, m in enumerate(names)}
    model_map = np.array([model_of.get(m, -1) for m in votes.models], np.int64)
    voted = np.unique(np.concatenate([votes.a, votes.b]))
    unknown = [votes.models[i] for i in voted if model_map[i] < 0]
    if unknown:
        raise ValueError(f"{name}: {len(unknown)} model(s) not among the {len(names)} models of the human votes: "
                         f"{_preview_ids(unknown)}")
    enc = votes.rows(merge=False)
    a = model_map[np.asarray(enc.a)]
    b = model_map[np.asarray(enc.b)]
    o = np.minimum(np.asarray(enc.outcome), TIE)
    u = vote_units[np.asarray(votes.prompt)[np.asarray(enc.row_vote)]]
    w = np.asarray(enc.count, np.float64)
    keep = w > 0
    key = np.stack([a[keep], b[keep], o[keep], u[keep]], axis=1)
    if key.shape[0] == 0:
        raise ValueError(f"{name}: no votes with positive weight")
    cells, inverse = np.unique(key, axis=0, return_inverse=True)
    weight = np.bincount(inverse.ravel(), weights=w[keep], minlength=cells.shape[0])
    return unit_rows(cells[:, 0], cells[:, 1], cells[:, 2], cells[:, 3], weight, num_models=len(names),
                     num_units=len(units))


@dataclasses.dataclass(frozen=True)
class DesignLeaderboard:
    """A design-weighted or prediction-powered leaderboard fitted from vote tables.

    Attributes:
        models: the M model names (those of the human votes).
        prompt_ids: the P units (prompts) of the design: the plan's, or the judge's without a plan.
        sample: the `Sample` (the plan's, or a simple random sample of the judge's prompts).
        estimate: the `DesignEstimate` (theta, covariance, intervals, lam, effective_labels).
        judge: whether judge votes entered (PPI++).
    """

    models: tuple[str, ...]
    prompt_ids: tuple[str, ...]
    sample: Sample
    estimate: DesignEstimate
    judge: bool

    @property
    def lam(self) -> float:
        return float(self.estimate.lam)

    @property
    def effective_labels(self) -> float:
        return float(self.estimate.effective_labels)

    @property
    def num_labelled(self) -> int:
        return int(np.asarray(self.sample.selected).sum())

    def to_frame(self, *, anchor: str | None = None, anchor_rating: float | None = None, scale: float = 400.0,
                 base: float = 10.0, init: float = 1000.0):
        """pandas DataFrame `model, rating, lower, upper, std_error` on the Elo scale (in model order);
        `anchor`/`anchor_rating` shift every rating so that the anchored model has `anchor_rating`."""
        import pandas as pd

        rating, lower, upper, se = (np.asarray(x, np.float64) for x in self.estimate.ratings(scale=scale, base=base,
                                                                                             init=init))
        if anchor is not None:
            if anchor not in self.models:
                raise ValueError(f"anchor {anchor!r} is not one of the {len(self.models)} models")
            shift = float(anchor_rating if anchor_rating is not None else init) - rating[self.models.index(anchor)]
            rating, lower, upper = rating + shift, lower + shift, upper + shift
        return pd.DataFrame({"model": list(self.models), "rating": rating, "lower": lower, "upper": upper,
                             "std_error": se})


def _as_plan(plan: Any) -> tuple[list[str], Sample]:
    if isinstance(plan, tuple) and len(plan) == 2 and isinstance(plan[1], Sample):
        ids, sample = plan
        ids = [str(i) for i in ids]
        if len(ids) != sample.num_units:
            raise ValueError(f"plan: {len(ids)} prompt ids for a sample of {sample.num_units} units")
        return ids, sample
    return load_plan(plan)


def design_leaderboard(
    votes: Votes,
    plan: Any = None,
    *,
    judge: Votes | None = None,
    lam: float | None = None,
    ties: str = "half",
    l2: float = 0.0,
    variance: str = "design",
    confidence: float = 0.95,
) -> DesignLeaderboard:
    r"""A leaderboard from human votes collected under a sampling plan and / or with judge votes (PPI++).

    - `plan` only: the Horvitz–Thompson fit (`fit_design_weighted`): each prompt's votes weighted by its
      plan weight, design-based intervals clustered by prompt.
    - `judge` only: prediction-powered ratings (`fit_prediction_powered`): the judge's votes on its prompts
      are the population, the prompts with human votes are taken to be a simple random sample of them
      (probability n / P each, fixed size), and lambda is PPI++'s power tuning unless given.
    - both: PPI on an actively sampled set (the plan's probabilities, the judge's votes on the plan's prompts).

    Prompts are matched by id (strings as written); the human votes' models are the leaderboard's.

    Args:
        votes: human votes (`jaxrank.Votes` with prompt ids).
        plan: a plan (path, DataFrame as written by `jaxrank plan`, or `(prompt_ids, Sample)`), or None.
        judge: judge votes (hard or soft outcomes) with prompt ids, or None.
        lam: fixed PPI lambda in [0, 1] (None: tuned); only with `judge`.
        ties, l2, variance, confidence: as for `fit_design_weighted`.

    Returns:
        `DesignLeaderboard`.

    Raises:
        ValueError: neither plan nor judge; votes on prompts absent from the plan or not selected in it
            (named); judge votes that do not cover the human-labelled prompts (named); judge models the
            humans never voted on; anything `load_plan` refuses.

    Example:
        >>> human = jaxrank.load_votes("examples/active/human.csv")
        >>> board = design_leaderboard(human, "examples/active/plan.csv")
    """
    if plan is None and judge is None:
        raise ValueError("design_leaderboard needs a plan or judge votes (for an ordinary fit use fit_bradley_terry)")
    if lam is not None and judge is None:
        raise ValueError("lam is the PPI weight of judge votes; pass judge= as well")
    rows_of = functools.partial(votes_unit_rows, models=votes.models if isinstance(votes, Votes) else None)
    if plan is not None:
        ids, sample = _as_plan(plan)
        human = rows_of(votes, ids, name="votes")
        sel = np.asarray(sample.selected, bool)
        labelled = np.unique(np.asarray(human.unit))
        skipped = labelled[~sel[labelled]]
        if skipped.size:
            raise ValueError(f"votes: votes on {skipped.size} prompt(s) the plan did not select: "
                             f"{_preview_ids([ids[i] for i in skipped])}; their probability does not describe how "
                             "they were labelled (label only the selected prompts, or draw a new plan)")
    else:
        if not isinstance(judge, Votes):
            raise TypeError(f"judge must be a jaxrank.Votes, got {type(judge).__name__}")
        if judge.prompt is None:
            raise ValueError("judge: the judge votes have no prompt ids; they are matched to the human votes by prompt")
        ids = [judge.prompt_ids[i] for i in np.unique(judge.prompt)]
        if votes.prompt is None:
            raise ValueError("votes: the votes have no prompt ids; they are matched to the judge votes by prompt")
        have = set(ids)
        uncovered = [votes.prompt_ids[i] for i in np.unique(votes.prompt) if votes.prompt_ids[i] not in have]
        if uncovered:
            raise ValueError(f"judge: the judge votes do not cover {len(uncovered)} human-labelled prompt(s): "
                             f"{_preview_ids(uncovered)}; PPI needs judge votes on every labelled prompt")
        human = rows_of(votes, ids, name="votes")
        sel = np.zeros(len(ids), bool)
        sel[np.asarray(human.unit)] = True
        sample = single_round(sel, np.full(len(ids), sel.sum() / len(ids)), design="systematic")
    common = dict(num_models=votes.num_models, ties=ties, l2=l2, variance=variance, confidence=confidence)
    if judge is None:
        est = fit_design_weighted(human, sample, **common)
    else:
        judge_rows = rows_of(judge, ids, name="judge")
        covered = np.zeros(len(ids), bool)
        covered[np.asarray(judge_rows.unit)] = True
        labelled = np.unique(np.asarray(human.unit))
        missing = labelled[~covered[labelled]]
        if missing.size:
            raise ValueError(f"judge: the judge votes do not cover {missing.size} human-labelled prompt(s): "
                             f"{_preview_ids([ids[i] for i in missing])}; PPI needs judge votes on every labelled prompt")
        est = fit_prediction_powered(human, judge_rows, sample, lam=lam, **common)
    return DesignLeaderboard(models=tuple(votes.models), prompt_ids=tuple(ids), sample=sample, estimate=est,
                             judge=judge is not None)
