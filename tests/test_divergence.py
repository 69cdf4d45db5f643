"""Divergence kernels against float64 NumPy/SciPy references; implementations held to each other."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.sharding import AxisType, PartitionSpec
from jax.test_util import check_grads
from scipy.special import log_softmax, logsumexp, rel_entr

import jaxrank
from jaxrank import divergence as D
from jaxrank.divergence import METRICS, cross_entropy, divergences, entropy, jensen_shannon, kl_divergence

NEG_INF = -np.inf
# Tolerances, set once: float32 accumulation over <= 64 terms of logits of magnitude <= ~10.
ATOL = 2e-5
RTOL = 2e-5
GRAD_ATOL = 2e-5
VOCAB = 37  # not divisible by 7, 8 or 128
BLOCKS = [1, 7, 128, VOCAB, 10]  # 10 does not divide 37 either


# ------------------------------------------------------------------------------------------
# float64 references
# ------------------------------------------------------------------------------------------


def ref_metrics(xp, xq, *, temperature=1.0, log_probs=False):
    """All metrics in float64 from the (upcast) inputs, with SciPy's rel_entr / logsumexp."""
    xp = np.asarray(xp, np.float64) / temperature
    xq = np.asarray(xq, np.float64) / temperature
    with np.errstate(all="ignore"):
        lp = xp if log_probs else xp - logsumexp(xp, axis=-1, keepdims=True)
        lq = xq if log_probs else xq - logsumexp(xq, axis=-1, keepdims=True)
        p, q = np.exp(lp), np.exp(lq)
        m = 0.5 * (p + q)
        return {
            "kl": rel_entr(p, q).sum(-1),
            "cross_entropy": -np.where(p > 0, p * lq, 0.0).sum(-1),
            "entropy": -np.where(p > 0, p * lp, 0.0).sum(-1),
            "entropy_q": -np.where(q > 0, q * lq, 0.0).sum(-1),
            "jensen_shannon": 0.5 * (rel_entr(p, m) + rel_entr(q, m)).sum(-1),
        }


def assert_metrics_close(got, want, atol=ATOL, rtol=RTOL):
    for name in want:
        g = np.asarray(got[name])
        assert g.dtype == np.float32, name
        np.testing.assert_allclose(g, want[name], atol=atol, rtol=rtol, err_msg=name)


def make_logits(seed, shape=(3, 4, VOCAB), scale=3.0):
    rng = np.random.default_rng(seed)
    return (scale * rng.standard_normal(shape)).astype(np.float32)


@pytest.fixture(scope="module")
def pair():
    """f32 logits with -inf patterns: a -inf tail in P, matching -inf in both, disjoint zeros."""
    a, b = make_logits(0), make_logits(1)
    a[0, 0, 20:] = NEG_INF  # whole -inf tail of P
    b[0, 1, 30:] = NEG_INF  # whole -inf tail of Q (where P > 0: KL, CE = +inf)
    a[1, 0, [3, 9, 36]] = NEG_INF  # matching -inf in both
    b[1, 0, [3, 9, 36]] = NEG_INF
    a[1, 1, :15] = NEG_INF  # P's zeros cover Q's zeros: finite KL
    b[1, 1, :10] = NEG_INF
    a[2, 2, 1:] = NEG_INF  # P is one-hot
    return a, b


@pytest.fixture(scope="module")
def finite_pair(pair):
    """The same, with Q > 0 wherever P > 0 (finite KL/CE and gradients everywhere)."""
    a, b = pair[0].copy(), pair[1].copy()
    b[0, 1, 30:] = 0.5
    return a, b


@pytest.fixture(scope="module")
def vocab_mesh():
    return jax.make_mesh((8,), ("vocab",), axis_types=(AxisType.Auto,))


@pytest.fixture(scope="module")
def data_vocab_mesh():
    return jax.make_mesh((2, 4), ("data", "vocab"), axis_types=(AxisType.Auto, AxisType.Auto))


def pad_vocab(x, to):
    """-inf columns appended (probability 0): the values of every metric are unchanged."""
    x = np.asarray(x)
    pad = np.full(x.shape[:-1] + (to - x.shape[-1],), NEG_INF, x.dtype)
    return np.concatenate([x, pad], axis=-1)


# ------------------------------------------------------------------------------------------
# values
# ------------------------------------------------------------------------------------------


def test_public_names():
    assert set(METRICS) == {"kl", "cross_entropy", "entropy", "entropy_q", "jensen_shannon"}
    for name in ("kl_divergence", "cross_entropy", "entropy", "jensen_shannon", "divergences", "METRICS"):
        assert name in jaxrank.__all__ and getattr(jaxrank, name) is getattr(D, name)


def test_reference_matches_float64(pair):
    a, b = pair
    want = ref_metrics(a, b)
    assert np.isposinf(want["kl"][0, 1]) and np.isposinf(want["cross_entropy"][0, 1])
    out = divergences(a, b, metrics=METRICS, implementation="reference")
    assert list(out) == list(METRICS)
    assert out["kl"].shape == (3, 4)
    assert_metrics_close(out, want)


@pytest.mark.parametrize("block_size", BLOCKS)
def test_blockwise_matches_float64_and_reference(pair, block_size):
    a, b = pair
    out = divergences(a, b, metrics=METRICS, implementation="blockwise", block_size=block_size)
    assert_metrics_close(out, ref_metrics(a, b))
    ref = divergences(a, b, metrics=METRICS, implementation="reference")
    assert_metrics_close(out, {k: np.asarray(v) for k, v in ref.items()})


def test_blockwise_default_block_size_and_long_vocab():
    # Several full blocks of the default size plus a tail (the fori_loop path with a tail).
    vocab = 2 * D.DEFAULT_BLOCK_SIZE + 5
    a, b = make_logits(2, (2, vocab), 2.0), make_logits(3, (2, vocab), 2.0)
    a[0, -100:] = NEG_INF
    out = divergences(a, b, metrics=METRICS, implementation="blockwise")
    assert_metrics_close(out, ref_metrics(a, b), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("implementation", ["reference", "blockwise"])
def test_low_precision_inputs(pair, dtype, implementation):
    a, b = (jnp.asarray(x, dtype) for x in pair)
    # Reference from the same rounded values, upcast: accumulation must be float32, not dtype.
    want = ref_metrics(np.asarray(a.astype(jnp.float32)), np.asarray(b.astype(jnp.float32)))
    out = divergences(a, b, metrics=METRICS, implementation=implementation, block_size=7 if implementation == "blockwise" else None)
    assert_metrics_close(out, want)


@pytest.mark.parametrize("implementation", ["reference", "blockwise"])
@pytest.mark.parametrize("temperature", [0.5, 2.5])
def test_temperature(finite_pair, implementation, temperature):
    a, b = finite_pair
    out = divergences(a, b, metrics=METRICS, temperature=temperature, implementation=implementation)
    assert_metrics_close(out, ref_metrics(a, b, temperature=temperature))
    plain = divergences(a, b, metrics=("kl",), implementation=implementation)["kl"]
    assert not np.allclose(out["kl"], plain)


@pytest.mark.parametrize("implementation", ["reference", "blockwise"])
def test_log_probs_flag(finite_pair, implementation):
    a, b = finite_pair
    la, lb = (log_softmax(x.astype(np.float64), axis=-1).astype(np.float32) for x in (a, b))
    out = divergences(la, lb, metrics=METRICS, log_probs=True, implementation=implementation, block_size=7 if implementation == "blockwise" else None)
    assert_metrics_close(out, ref_metrics(a, b))
    # Not renormalised: log-probabilities shifted by log 2 (total mass 2) double every Σ p·f.
    shifted = divergences(la + np.float32(math.log(2.0)), lb, metrics=("cross_entropy",), log_probs=True,
                          implementation=implementation)["cross_entropy"]
    want = ref_metrics(la + math.log(2.0), lb, log_probs=True)["cross_entropy"]
    np.testing.assert_allclose(shifted, want, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(shifted, 2 * np.asarray(out["cross_entropy"]), rtol=1e-5)


@pytest.mark.parametrize("implementation", ["reference", "blockwise"])
def test_single_metric_functions(pair, implementation):
    a, b = pair
    want = ref_metrics(a, b)
    kw = dict(implementation=implementation)
    np.testing.assert_allclose(kl_divergence(a, b, **kw), want["kl"], atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(cross_entropy(a, b, **kw), want["cross_entropy"], atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(entropy(a, **kw), want["entropy"], atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(entropy(b, **kw), want["entropy_q"], atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(jensen_shannon(a, b, **kw), want["jensen_shannon"], atol=ATOL, rtol=RTOL)
    only_q = divergences(a, b, metrics="entropy_q", **kw)
    np.testing.assert_allclose(only_q["entropy_q"], want["entropy_q"], atol=ATOL, rtol=RTOL)


def test_known_values():
    ninf = -jnp.inf
    # Disjoint supports: JS = ln 2 exactly, KL = +inf.
    p, q = jnp.array([0.0, ninf]), jnp.array([ninf, 0.0])
    assert float(jensen_shannon(p, q)) == pytest.approx(math.log(2.0), abs=1e-6)
    assert float(kl_divergence(p, q)) == math.inf
    assert float(entropy(jnp.zeros(8))) == pytest.approx(math.log(8.0), abs=1e-6)
    # A row that is entirely -inf is not a distribution: NaN, documented.
    assert math.isnan(float(entropy(jnp.full(4, ninf))))


@pytest.mark.parametrize("implementation", ["reference", "blockwise"])
def test_jit_and_vmap(finite_pair, implementation):
    a, b = finite_pair
    f = jax.jit(lambda x, y: kl_divergence(x, y, implementation=implementation))
    want = ref_metrics(a, b)["kl"]
    np.testing.assert_allclose(f(a, b), want, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(jax.vmap(f)(a, b), want, atol=ATOL, rtol=RTOL)


# ------------------------------------------------------------------------------------------
# sharded vocabulary
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mesh_name", ["vocab_mesh", "data_vocab_mesh"])
@pytest.mark.parametrize("block_size", [None, 3])
def test_vocab_sharded_equals_reference(pair, mesh_name, block_size, request):
    mesh = request.getfixturevalue(mesh_name)
    a, b = (pad_vocab(x, 40) for x in pair)  # 40 = 8 shards of 5 = 4 shards of 10
    out = divergences(a, b, metrics=METRICS, mesh=mesh, block_size=block_size)  # auto -> vocab_sharded
    assert_metrics_close(out, ref_metrics(*pair))
    ref = divergences(a, b, metrics=METRICS, implementation="reference")
    assert_metrics_close(out, {k: np.asarray(v) for k, v in ref.items()})


def test_vocab_sharded_and_axis_name_over_several_row_chunks(data_vocab_mesh):
    # More rows than ROW_BLOCK: the row-chunk loop runs inside shard_map (carries keep their types).
    rows = 2 * D.ROW_BLOCK
    a, b = make_logits(9, (2, rows // 2, 40)), make_logits(10, (2, rows // 2, 40))
    want = ref_metrics(a, b)
    for metrics in (("kl", "cross_entropy"), METRICS):
        out = divergences(a, b, metrics=metrics, mesh=data_vocab_mesh, block_size=3)
        assert_metrics_close(out, {k: want[k] for k in metrics})
    spec = PartitionSpec("data", None, "vocab")
    fn = jax.jit(jax.shard_map(
        lambda x, y: divergences(x, y, metrics=("kl", "entropy"), implementation="blockwise", axis_name="vocab"),
        mesh=data_vocab_mesh, in_specs=(spec, spec), out_specs=PartitionSpec("data", None)))
    assert_metrics_close(fn(a, b), {k: want[k] for k in ("kl", "entropy")})


def test_vocab_sharded_explicit_mesh(finite_pair):
    mesh = jax.make_mesh((8,), ("vocab",), axis_types=(AxisType.Explicit,))
    a, b = (pad_vocab(x, 40) for x in finite_pair)
    with jax.set_mesh(mesh):
        out = divergences(a, b, metrics=("kl", "jensen_shannon"), implementation="vocab_sharded", mesh=mesh)
        got = {k: np.asarray(v) for k, v in out.items()}
    want = ref_metrics(*finite_pair)
    assert_metrics_close(got, {k: want[k] for k in got})


@pytest.mark.parametrize("local", ["reference", "blockwise"])
def test_axis_name_inside_callers_shard_map(pair, data_vocab_mesh, local):
    a, b = (pad_vocab(x[:2], 40) for x in pair)  # batch 2 over data, vocab 40 over 4 devices
    spec = PartitionSpec("data", None, "vocab")

    def body(x, y):
        return divergences(x, y, metrics=METRICS, implementation=local, axis_name="vocab",
                           block_size=3 if local == "blockwise" else None)

    fn = jax.jit(jax.shard_map(body, mesh=data_vocab_mesh, in_specs=(spec, spec),
                               out_specs=PartitionSpec("data", None)))
    want = ref_metrics(pair[0][:2], pair[1][:2])
    assert_metrics_close(fn(a, b), want)


# ------------------------------------------------------------------------------------------
# gradients
# ------------------------------------------------------------------------------------------


def _weighted_total(implementation, metrics=METRICS, **kw):
    """A scalar using every requested metric with a distinct weight (each cotangent matters)."""

    def f(x, y):
        out = divergences(x, y, metrics=metrics, implementation=implementation, **kw)
        return sum((i + 1.5) * jnp.sum(v * jnp.linspace(0.5, 1.5, v.size).reshape(v.shape))
                   for i, v in enumerate(out.values()))

    return f


@pytest.mark.parametrize("implementation,block_size", [("reference", None), ("blockwise", 3)])
def test_check_grads(implementation, block_size):
    a, b = make_logits(4, (2, 6), 1.0), make_logits(5, (2, 6), 1.0)
    f = jax.jit(_weighted_total(implementation, block_size=block_size))
    check_grads(f, (a, b), order=1, modes=("rev",), atol=2e-2, rtol=2e-2, eps=1e-2)
    lp, lq = (log_softmax(x, axis=-1) for x in (a, b))
    g = jax.jit(_weighted_total(implementation, log_probs=True, block_size=block_size))
    check_grads(g, (lp, lq), order=1, modes=("rev",), atol=2e-2, rtol=2e-2, eps=1e-2)


def _reference_grads(a, b, **kw):
    return jax.grad(_weighted_total("reference", **kw), argnums=(0, 1))(a, b)


@pytest.mark.parametrize("block_size,options", [(1, {}), (7, {}), (10, {"temperature": 1.7})])
def test_blockwise_gradients_equal_reference(finite_pair, block_size, options):
    a, b = finite_pair
    want = _reference_grads(a, b, **options)
    got = jax.grad(_weighted_total("blockwise", block_size=block_size, **options), argnums=(0, 1))(a, b)
    for g, w in zip(got, want):
        assert np.isfinite(np.asarray(g)).all()  # also where one or both logits are -inf
        np.testing.assert_allclose(g, w, atol=GRAD_ATOL, rtol=RTOL)
    # -inf inputs get exactly zero gradient.
    assert np.all(np.asarray(got[0])[np.isneginf(a)] == 0)


def test_gradients_log_probs_equal_reference(finite_pair):
    a, b = finite_pair
    la, lb = (log_softmax(x.astype(np.float64), axis=-1).astype(np.float32) for x in (a, b))
    want = jax.grad(_weighted_total("reference", log_probs=True), argnums=(0, 1))(la, lb)
    got = jax.grad(_weighted_total("blockwise", log_probs=True, block_size=7), argnums=(0, 1))(la, lb)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=GRAD_ATOL, rtol=RTOL)


@pytest.mark.parametrize("metric", ["entropy_q", "jensen_shannon"])
def test_gradient_of_each_metric_alone(finite_pair, metric):
    a, b = finite_pair
    want = jax.grad(_weighted_total("reference", metrics=(metric,)), argnums=(0, 1))(a, b)
    got = jax.grad(_weighted_total("blockwise", metrics=(metric,), block_size=10), argnums=(0, 1))(a, b)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=GRAD_ATOL, rtol=RTOL)


def test_gradient_dtype_follows_input(finite_pair):
    a, b = (jnp.asarray(x, jnp.bfloat16) for x in finite_pair)
    ga, gb = jax.grad(lambda x, y: kl_divergence(x, y, implementation="blockwise").sum(), argnums=(0, 1))(a, b)
    assert ga.dtype == jnp.bfloat16 and gb.dtype == jnp.bfloat16
    ra, rb = jax.grad(lambda x, y: kl_divergence(x, y, implementation="reference").sum(), argnums=(0, 1))(a, b)
    np.testing.assert_allclose(np.asarray(ga, np.float32), np.asarray(ra, np.float32), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("block_size", [None, 3])
def test_vocab_sharded_gradients_equal_reference(finite_pair, vocab_mesh, block_size):
    a, b = (pad_vocab(x, 40) for x in finite_pair)
    want = _reference_grads(a, b)
    f = _weighted_total("vocab_sharded", mesh=vocab_mesh, block_size=block_size)
    got = jax.grad(f, argnums=(0, 1))(a, b)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=GRAD_ATOL, rtol=RTOL)


# ------------------------------------------------------------------------------------------
# properties
# ------------------------------------------------------------------------------------------

PROP_SHAPE = (4, 16)
_row_logits = hnp.arrays(
    np.float32,
    PROP_SHAPE,
    elements=st.one_of(
        st.floats(-12.0, 12.0, width=32),
        st.just(np.float32(NEG_INF)),
    ),
).filter(lambda x: np.isfinite(x).any(axis=-1).all())  # every row is a distribution
_full_support = hnp.arrays(np.float32, PROP_SHAPE, elements=st.floats(-12.0, 12.0, width=32))

_prop_fns = {
    impl: jax.jit(lambda x, y, impl=impl: divergences(x, y, metrics=METRICS, implementation=impl,
                                                      block_size=5 if impl == "blockwise" else None))
    for impl in ("reference", "blockwise")
}


@settings(max_examples=30, deadline=None)
@given(p=_row_logits, q=_full_support, impl=st.sampled_from(["reference", "blockwise"]))
def test_properties(p, q, impl):
    f = _prop_fns[impl]
    out = {k: np.asarray(v, np.float64) for k, v in f(p, q).items()}
    same = {k: np.asarray(v, np.float64) for k, v in f(p, p).items()}
    tol = 1e-4
    assert np.all(out["kl"] >= -tol)
    assert np.all(np.abs(same["kl"]) <= tol)
    np.testing.assert_allclose(out["cross_entropy"], out["entropy"] + out["kl"], atol=2e-4, rtol=1e-5)
    assert np.all(out["jensen_shannon"] >= -tol) and np.all(out["jensen_shannon"] <= math.log(2.0) + tol)
    swapped = {k: np.asarray(v, np.float64) for k, v in f(q, p).items()}
    np.testing.assert_allclose(out["jensen_shannon"], swapped["jensen_shannon"], atol=tol)
    np.testing.assert_allclose(out["entropy_q"], swapped["entropy"], atol=tol)


@settings(max_examples=25, deadline=None)
@given(p=_row_logits, q=_full_support, shift=hnp.arrays(np.float32, (PROP_SHAPE[0], 1), elements=st.floats(-30.0, 30.0, width=32)))
def test_shift_invariance(p, q, shift):
    f = _prop_fns["blockwise"]
    base = f(p, q)
    moved = f(p + shift, q - shift)
    for k in METRICS:
        np.testing.assert_allclose(moved[k], base[k], atol=3e-4, rtol=1e-4, err_msg=k)


# ------------------------------------------------------------------------------------------
# memory: the blockwise kernel allocates no [rows, vocab] float32 temporary
# ------------------------------------------------------------------------------------------


def test_blockwise_temporaries_are_small():
    # float32 at vocab 262144 (the goal: temporaries <= 5 % of the input). Only lowered and
    # compiled, never run.
    rows, vocab = 128, 262144
    x = jax.ShapeDtypeStruct((rows, vocab), jnp.float32)
    inputs = 2 * rows * vocab * 4

    def temp_bytes(fn):
        return jax.jit(fn).lower(x, x).compile().memory_analysis().temp_size_in_bytes

    fwd = temp_bytes(lambda a, b: divergences(a, b, metrics=METRICS, implementation="blockwise"))
    assert fwd <= 0.05 * inputs, fwd / inputs
    ref = temp_bytes(lambda a, b: divergences(a, b, metrics=METRICS, implementation="reference"))
    assert ref > 0.25 * inputs  # the measurement sees [rows, vocab] temporaries where they exist
    grad = temp_bytes(jax.grad(lambda a, b: kl_divergence(a, b, implementation="blockwise").sum(), argnums=(0, 1)))
    assert grad <= 0.05 * inputs, grad / inputs
    # bfloat16 too: each block is widened alone, never the whole input (no hoisted convert).
    xb = jax.ShapeDtypeStruct((rows, vocab), jnp.bfloat16)
    fn = lambda a, b: divergences(a, b, metrics=METRICS, implementation="blockwise")  # noqa: E731
    fwd_bf16 = jax.jit(fn).lower(xb, xb).compile().memory_analysis().temp_size_in_bytes
    assert fwd_bf16 <= 0.05 * (inputs // 2), fwd_bf16 / (inputs // 2)


# ------------------------------------------------------------------------------------------
# bad input, raised before compilation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda a: kl_divergence(a, a[..., :5]), ValueError, "vocabularies differ: 6 vs 5"),
        (lambda a: kl_divergence(a, a[:1]), ValueError, "same shape"),
        (lambda a: kl_divergence(a.astype(np.int32), a), TypeError, "logits_p must have a floating-point"),
        (lambda a: entropy(np.float32(1.0)), ValueError, r"\[\.\.\., vocab\]"),
        (lambda a: entropy(a[:, :0]), ValueError, "empty vocabulary"),
        (lambda a: kl_divergence(a, np.where(a > 0, np.nan, a)), ValueError, "logits_q contains NaN"),
        (lambda a: kl_divergence(np.where(a > 0, np.inf, a), a), ValueError, r"logits_p contains \+inf"),
        (lambda a: divergences(a, a, metrics=("kl", "tv")), ValueError, "metrics must be one of"),
        (lambda a: divergences(a, a, metrics=()), ValueError, "at least one"),
        (lambda a: kl_divergence(a, a, implementation="fast"), ValueError, "implementation must be one of"),
        (lambda a: kl_divergence(a, a, block_size=0), ValueError, "block_size must be > 0"),
        (lambda a: kl_divergence(a, a, block_size=2.5), TypeError, "block_size"),
        (lambda a: kl_divergence(a, a, implementation="reference", block_size=4), ValueError, "block_size applies"),
        (lambda a: kl_divergence(a, a, temperature=0.0), ValueError, "temperature"),
        (lambda a: kl_divergence(a, a, temperature=-1.0), ValueError, "temperature"),
        (lambda a: kl_divergence(a, a, log_probs=True, temperature=2.0), ValueError, "log_probs=True"),
        (lambda a: kl_divergence(a, a, implementation="vocab_sharded"), ValueError, "needs mesh"),
        (lambda a: kl_divergence(a, None), TypeError, "logits_q"),
    ],
)
def test_bad_input(call, error, match):
    a = make_logits(6, (2, 6))
    with pytest.raises(error, match=match):
        call(a)


def test_bad_mesh_input(vocab_mesh):
    a = make_logits(7, (2, 12))
    with pytest.raises(ValueError, match=r"vocabulary \(12\) must be divisible .* \(8\)"):
        kl_divergence(a, a, mesh=vocab_mesh)
    with pytest.raises(ValueError, match="vocab_axis 'v'"):
        kl_divergence(a, a, mesh=vocab_mesh, vocab_axis="v")
    with pytest.raises(ValueError, match="already a local vocabulary shard"):
        kl_divergence(a, a, implementation="vocab_sharded", mesh=vocab_mesh, axis_name="vocab")


def test_nan_check_is_skipped_under_jit_and_shapes_still_checked():
    a = make_logits(8, (2, 6))
    f = jax.jit(lambda x, y: kl_divergence(x, y))
    with pytest.raises(ValueError, match="vocabularies differ"):
        f(a, a[:, :4])
    assert np.isfinite(np.asarray(f(a, a))).all()


# ------------------------------------------------------------------------------------------
# value flags from the kernel's own pass, and the checked mode for jitted use
# ------------------------------------------------------------------------------------------


def _bad_rows():
    """[4, 6, VOCAB] logits with one problem per row of the first axis: fine, NaN, +inf, all -inf."""
    a = make_logits(20, (4, 6, VOCAB))
    a[1, 2, 5] = np.nan
    a[2, 4, 0] = np.inf
    a[3, 1, :] = NEG_INF
    return a


@pytest.mark.parametrize("implementation,block_size", [("reference", None), ("blockwise", None), ("blockwise", 7)])
def test_return_flags_mark_each_bad_position(implementation, block_size):
    a, b = _bad_rows(), make_logits(21, (4, 6, VOCAB))
    f = jax.jit(lambda x, y: divergences(x, y, implementation=implementation, block_size=block_size,
                                         return_flags=True))
    out, flags = f(a, b)  # under jit: no error, the flags say what is wrong where
    want = np.zeros((4, 6), np.int32)
    want[1, 2], want[2, 4], want[3, 1] = D.FLAG_NAN, D.FLAG_POSINF, D.FLAG_EMPTY
    np.testing.assert_array_equal(np.asarray(flags), want)
    _, flags_q = f(b, a)
    np.testing.assert_array_equal(np.asarray(flags_q), want << D.FLAG_Q_SHIFT)
    kl = np.asarray(out["kl"])
    assert np.isnan(kl[1, 2]) and np.isnan(kl[3, 1]) and not np.isfinite(kl[2, 4])
    assert np.isfinite(kl[want == 0]).all()


@pytest.mark.parametrize("implementation", ["reference", "blockwise"])
def test_concrete_inputs_raise_from_the_kernel_flags(implementation):
    a, b = _bad_rows(), make_logits(21, (4, 6, VOCAB))
    with pytest.raises(ValueError, match=r"logits_p contains NaN \(first at index \(1, 2\)\)"):
        divergences(a, b, implementation=implementation)
    with pytest.raises(ValueError, match=r"logits_q contains \+inf \(first at index \(2, 4\)\)"):
        divergences(b, np.where(np.isnan(a), 0.0, a), implementation=implementation)
    # An all -inf row is no distribution but not an error here (its metrics are NaN, documented).
    fine = np.where(np.isfinite(a) | np.isneginf(a), a, 0.0)
    assert np.isnan(np.asarray(kl_divergence(fine, b, implementation=implementation))[3, 1])


def test_checked_mode_under_jit_with_checkify():
    from jax.experimental import checkify

    a, b = _bad_rows(), make_logits(21, (4, 6, VOCAB))
    f = checkify.checkify(jax.jit(lambda x, y: kl_divergence(x, y, checked=True)))
    err, _ = f(b, b)
    assert err.get() is None
    err, _ = f(a, b)
    with pytest.raises(checkify.JaxRuntimeError, match=r"logits_p contains NaN \(first at index \(1, 2\)\)"):
        err.throw()
    err, _ = f(b, np.where(np.isnan(a), 0.0, a))
    with pytest.raises(checkify.JaxRuntimeError, match=r"logits_q contains \+inf \(first at index \(2, 4\)\)"):
        err.throw()
    # Without checkify the checked call names the fix at trace time (JAX's message).
    with pytest.raises(ValueError, match="checkify"):
        jax.jit(lambda x, y: kl_divergence(x, y, checked=True))(b, b)


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16])
def test_checked_mode_catches_raw_logits_passed_as_log_probs(dtype):
    from jax.experimental import checkify

    a, b = make_logits(22, (3, 5, 300)), make_logits(23, (3, 5, 300))
    la, lb = (jnp.asarray(log_softmax(x.astype(np.float64), axis=-1), dtype) for x in (a, b))
    raw_a, raw_b = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
    # Raw logits as log-probabilities: silently a wrong KL without the check (negative when the logits
    # are small, as in the issue; here far too large).
    wrong, right = (np.asarray(kl_divergence(x, y, log_probs=lp)) for x, y, lp in ((raw_a, raw_b, True), (a, b, False)))
    assert np.all(np.abs(wrong - right) > 1.0)
    assert float(jnp.min(kl_divergence(raw_a - 8.0, raw_b, log_probs=True))) < 0
    f = checkify.checkify(jax.jit(lambda x, y: kl_divergence(x, y, log_probs=True, checked=True)))
    err, out = f(la, lb)
    assert err.get() is None and bool(jnp.all(out >= -1e-2))
    err, _ = f(raw_a, lb)
    with pytest.raises(checkify.JaxRuntimeError, match=r"logits_p is not normalised \(first at index \(0, 0\)\)"):
        err.throw()
    with pytest.raises(ValueError, match=r"logits_q is not normalised"):
        kl_divergence(la, raw_b, log_probs=True, checked=True)
    kl_divergence(la, raw_b, log_probs=True)  # unchecked: taken as given (see test_log_probs_flag)


def test_checked_mode_under_vmap_and_grad():
    from jax.experimental import checkify

    a, b = _bad_rows(), make_logits(21, (4, 6, VOCAB))
    grad = jax.grad(lambda x, y: kl_divergence(x, y, checked=True).sum())
    err, g = checkify.checkify(grad)(jnp.asarray(b), jnp.asarray(b))
    assert err.get() is None and bool(jnp.all(jnp.isfinite(g)))
    err, _ = checkify.checkify(jax.vmap(lambda x, y: kl_divergence(x, y, checked=True)))(a, b)
    with pytest.raises(checkify.JaxRuntimeError, match="logits_p contains NaN"):
        err.throw()


def test_check_flags_names_the_first_bad_position():
    flags = np.zeros((2, 3), np.int32)
    D.check_flags(flags)
    flags[1, 2] = D.FLAG_EMPTY
    D.check_flags(flags)  # empty rows are only an error when asked
    with pytest.raises(ValueError, match=r"logits_p\[1, 2\] is all -inf at a counted position"):
        D.check_flags(flags, counted=np.ones((2, 3), bool), reject_empty=True)
    D.check_flags(flags, counted=np.array([[1, 1, 1], [1, 1, 0]], bool), reject_empty=True)
    flags[0, 1] = D.FLAG_POSINF << D.FLAG_Q_SHIFT
    with pytest.raises(ValueError, match=r"^b contains \+inf \(first at index \(0, 1\)\)"):
        D.check_flags(flags, ("a", "b"))
