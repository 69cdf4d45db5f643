"""score_pairs and prioritize against float64 NumPy references; masks, gradients, transformations, bad input."""

from __future__ import annotations

import logging
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.special import log_softmax

from jaxrank import EmptySequenceWarning, prioritize, score_pairs
from jaxrank.divergence import METRICS
from scoring_reference import ATOL, RTOL, reference_per_position, reference_scores

# One shape for (almost) every test keeps the number of compilations low.
B, S, V = 4, 6, 11


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    a = (1.5 * rng.normal(size=(B, S, V))).astype(np.float32)
    b = (a + rng.normal(size=(B, S, V))).astype(np.float32)
    mask = rng.random((B, S)) > 0.35
    mask[:, 0] = True
    return a, b, mask


A, BB, MASK = _data()


def assert_close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_all_metrics_match_float64_reference(reduction):
    out = score_pairs(A, BB, MASK, metrics=METRICS, reduction=reduction)
    assert set(out) == set(METRICS)
    for name in METRICS:
        assert out[name].shape == (B,) and out[name].dtype == jnp.float32
        assert_close(out[name], reference_scores(A, BB, MASK, name, reduction))


def test_default_metrics_and_no_mask_is_plain_mean():
    out = score_pairs(A, BB)
    assert set(out) == {"kl", "cross_entropy"}
    assert_close(out["kl"], reference_per_position(A, BB, "kl").mean(-1))
    assert_close(out["cross_entropy"], reference_per_position(A, BB, "cross_entropy").mean(-1))


def test_integer_mask_equals_bool_mask():
    as_bool = score_pairs(A, BB, MASK)
    as_int = score_pairs(A, BB, MASK.astype(np.int32))
    for name in as_bool:
        np.testing.assert_array_equal(np.asarray(as_bool[name]), np.asarray(as_int[name]))


def test_masked_positions_do_not_matter():
    # Garbage (huge, -inf) logits at masked positions change nothing.
    a, b = A.copy(), BB.copy()
    a[~MASK] = 1e4
    b[~MASK] = -np.inf
    b[~MASK, 0] = 0.0
    base = score_pairs(A, BB, MASK)
    other = score_pairs(a, b, MASK)
    for name in base:
        np.testing.assert_array_equal(np.asarray(base[name]), np.asarray(other[name]))


def test_empty_sequence_is_nan_and_reported():
    mask = MASK.copy()
    mask[1] = False
    mask[3] = False
    for reduction in ("mean", "sum"):
        with pytest.warns(EmptySequenceWarning, match=r"2 of 4 sequence\(s\).*indices \[1, 3\]"):
            out = score_pairs(A, BB, mask, reduction=reduction)
        kl = np.asarray(out["kl"])
        assert np.isnan(kl[[1, 3]]).all() and np.isfinite(kl[[0, 2]]).all()
        assert_close(kl, reference_scores(A, BB, mask, "kl", reduction))


def test_empty_sequence_under_jit_is_nan_without_warning():
    mask = MASK.copy()
    mask[2] = False
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmptySequenceWarning)
        kl = jax.jit(lambda a, b, m: score_pairs(a, b, m)["kl"])(A, BB, mask)
    kl = np.asarray(kl)
    assert np.isnan(kl[2]) and np.isfinite(np.delete(kl, 2)).all()


def test_bfloat16_inputs_accumulate_in_float32():
    a16, b16 = jnp.asarray(A, jnp.bfloat16), jnp.asarray(BB, jnp.bfloat16)
    out = score_pairs(a16, b16, MASK)
    for name in out:
        assert out[name].dtype == jnp.float32
        # The reference sees the same bf16-rounded values, so only accumulation error remains.
        expected = reference_scores(np.asarray(a16, np.float64), np.asarray(b16, np.float64), MASK, name)
        assert_close(out[name], expected)


def test_temperature_log_probs_and_neg_inf_logits():
    out = score_pairs(A, BB, MASK, temperature=2.0)
    assert_close(out["kl"], reference_scores(A, BB, MASK, "kl", temperature=2.0))

    la, lb = log_softmax(A.astype(np.float64), -1), log_softmax(BB.astype(np.float64), -1)
    out = score_pairs(la.astype(np.float32), lb.astype(np.float32), MASK, log_probs=True)
    assert_close(out["kl"], reference_scores(A, BB, MASK, "kl"))

    a, b = A.copy(), BB.copy()
    a[..., :3] = -np.inf  # impossible tokens under both models
    b[..., :2] = -np.inf
    out = score_pairs(a, b, MASK, metrics=METRICS)
    for name in METRICS:
        assert np.isfinite(np.asarray(out[name])).all()
        assert_close(out[name], reference_scores(a, b, MASK, name))


def test_implementations_agree_through_score_pairs():
    ref = score_pairs(A, BB, MASK, implementation="reference")
    blk = score_pairs(A, BB, MASK, implementation="blockwise", block_size=4)
    for name in ref:
        assert_close(blk[name], np.asarray(ref[name], np.float64))


def test_jit_and_vmap_over_an_extra_axis():
    a2, b2 = np.stack([A, BB]), np.stack([BB, A])
    mask2 = np.stack([MASK, np.ones_like(MASK)])
    batched = jax.vmap(lambda a, b, m: score_pairs(a, b, m)["kl"])(a2, b2, mask2)
    assert batched.shape == (2, B)
    for i in range(2):
        assert_close(batched[i], reference_scores(a2[i], b2[i], mask2[i], "kl"))
    jitted = jax.jit(lambda a, b: score_pairs(a, b, MASK, reduction="sum")["cross_entropy"])(A, BB)
    assert_close(jitted, reference_scores(A, BB, MASK, "cross_entropy", "sum"))


def _loss(reduction, metric):
    def f(a, b, mask):
        return jnp.nansum(score_pairs(a, b, mask, metrics=(metric,), reduction=reduction)[metric])

    return f


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradients_check_grads_both_inputs(reduction):
    a, b = A[:2, :3, :5], BB[:2, :3, :5]
    mask = MASK[:2, :3]
    f = _loss(reduction, "kl")
    check_grads(lambda x, y: f(x, y, mask), (a, b), order=1, modes=("rev",), atol=1e-2, rtol=1e-2, eps=1e-3)


def test_gradients_zero_at_masked_positions_and_finite_for_empty_rows():
    mask = MASK.copy()
    mask[0] = False  # an empty sequence: NaN score, zero gradient
    for reduction in ("mean", "sum"):
        with pytest.warns(EmptySequenceWarning):
            ga, gb = jax.grad(_loss(reduction, "kl"), argnums=(0, 1))(A, BB, mask)
        for g in (np.asarray(ga), np.asarray(gb)):
            assert np.isfinite(g).all()
            assert (g[~mask] == 0).all()
            assert np.abs(g[mask]).max() > 0


def test_gradient_matches_reference_finite_difference_in_float64():
    # d/da of the masked mean KL, by central differences of the float64 reference.
    f = jax.grad(_loss("mean", "kl"))
    g = np.asarray(f(A, BB, MASK), np.float64)
    rng = np.random.default_rng(3)
    for _ in range(5):
        i, t, j = rng.integers(B), rng.integers(S), rng.integers(V)
        eps = 1e-5
        ap, am = A.astype(np.float64), A.astype(np.float64)
        ap = ap.copy()
        am = am.copy()
        ap[i, t, j] += eps
        am[i, t, j] -= eps
        fd = (reference_scores(ap, BB, MASK, "kl").sum() - reference_scores(am, BB, MASK, "kl").sum()) / (2 * eps)
        np.testing.assert_allclose(g[i, t, j], fd, rtol=1e-3, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# bad input: each error names the argument and what was expected
# ------------------------------------------------------------------------------------------------

BAD_INPUTS = [
    (dict(logits_a=A[0]), ValueError, r"logits_a must have shape \[batch, seq, vocab\]"),
    (dict(logits_b=BB[:, :, :5]), ValueError, r"logits_a and logits_b must have the same shape.*vocabularies differ"),
    (dict(logits_a=A.astype(np.int32)), TypeError, r"logits_a must have a floating-point dtype"),
    (dict(logits_a=A[:0], logits_b=BB[:0], mask=None), ValueError, r"logits_a has an empty batch"),
    (dict(logits_a=A[:, :, :0], logits_b=BB[:, :, :0]), ValueError, r"logits_a has an empty vocab"),
    (dict(mask=MASK[:, :3]), ValueError, r"mask must have shape \[batch, seq\] = \(4, 6\)"),
    (dict(mask=MASK.astype(np.float32)), TypeError, r"mask must be bool or an integer 0/1 array"),
    (dict(mask=MASK.astype(np.int32) * 2), ValueError, r"mask is an integer array and must hold only 0 and 1"),
    (dict(metrics=("kl", "kld")), ValueError, r"metrics: unknown metric 'kld'"),
    (dict(metrics=()), ValueError, r"metrics must name at least one"),
    (dict(reduction="median"), ValueError, r"reduction must be one of 'mean', 'sum'"),
    (dict(temperature=0.0), ValueError, r"temperature must be a finite number > 0"),
    (dict(temperature="hot"), TypeError, r"temperature must be a positive"),
    (dict(implementation="fast"), ValueError, r"implementation must be one of"),
    (dict(implementation="vocab_sharded"), ValueError, r"implementation='vocab_sharded' needs mesh="),
    (dict(block_size=0), ValueError, r"block_size must be > 0"),
    (dict(block_size=4, implementation="reference"), ValueError, r"block_size applies to implementation="),
    (dict(log_probs=True, temperature=2.0), ValueError, r"temperature=2.0 cannot be combined with log_probs=True"),
    (dict(log_probs="yes"), TypeError, r"log_probs must be True or False"),
    (dict(mesh="cpu"), TypeError, r"mesh must be a jax.sharding.Mesh"),
    (dict(axis_name="vocab", mesh=jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))), ValueError,
     r"mesh and axis_name are mutually exclusive"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD_INPUTS, ids=[str(i) for i in range(len(BAD_INPUTS))])
def test_bad_input_names_the_argument(kwargs, error, match, caplog):
    call = dict(logits_a=A, logits_b=BB, mask=MASK) | kwargs
    a, b, mask = call.pop("logits_a"), call.pop("logits_b"), call.pop("mask")
    with jax.log_compiles(), caplog.at_level(logging.WARNING), pytest.raises(error, match=match):
        score_pairs(a, b, mask, **call)
    compiled = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Compiling")]
    assert not compiled, f"the error must come before any XLA compilation, got {compiled}"


def test_nan_and_pos_inf_inputs_rejected_from_the_kernel_flags():
    a = A.copy()
    a[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="logits_a contains NaN"):
        score_pairs(a, BB, MASK)
    b = BB.copy()
    b[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"logits_b contains \+inf"):
        score_pairs(A, b, MASK)


def test_shape_errors_raise_at_trace_time_under_jit():
    with pytest.raises(ValueError, match=r"mask must have shape"):
        jax.jit(lambda a, b, m: score_pairs(a, b, m))(A, BB, MASK[:, :2])


# ------------------------------------------------------------------------------------------------
# prioritize
# ------------------------------------------------------------------------------------------------


def test_prioritize_order_and_stable_ties():
    scores = np.array([0.2, 0.9, 0.5, 0.9, 0.2, -np.inf, np.inf])
    np.testing.assert_array_equal(prioritize(scores), [6, 1, 3, 2, 0, 4, 5])
    np.testing.assert_array_equal(prioritize(jnp.asarray(scores)), [6, 1, 3, 2, 0, 4, 5])
    np.testing.assert_array_equal(prioritize([3, 3, 3]), [0, 1, 2])
    assert prioritize(scores).dtype == np.int64


def test_prioritize_fraction_rounds_up_and_k():
    scores = np.arange(10.0)
    assert len(prioritize(scores, fraction=0.3)) == 3  # 0.3 * 10 in floating point is 3.0000000000000004
    assert len(prioritize(scores, fraction=0.31)) == 4
    assert len(prioritize(scores, fraction=0.01)) == 1
    assert len(prioritize(scores, fraction=1.0)) == 10
    np.testing.assert_array_equal(prioritize(scores, k=3), [9, 8, 7])
    assert len(prioritize(scores, k=0)) == 0
    assert len(prioritize(scores, k=25)) == 10


def test_prioritize_nan_raises_unless_dropped():
    scores = np.array([0.1, np.nan, 0.7, np.nan, 0.4])
    with pytest.raises(ValueError, match=r"scores contains 2 NaN value\(s\) \(at indices \[1, 3\]\)"):
        prioritize(scores)
    np.testing.assert_array_equal(prioritize(scores, drop_nan=True), [2, 4, 0])
    # fraction counts the rankable scores: ceil(0.5 * 3) = 2
    np.testing.assert_array_equal(prioritize(scores, fraction=0.5, drop_nan=True), [2, 4])


def test_prioritize_accepts_score_pairs_dict():
    out = score_pairs(A, BB, MASK)
    order = prioritize(out, metric="cross_entropy", k=2)
    np.testing.assert_array_equal(order, np.argsort(-np.asarray(out["cross_entropy"]), kind="stable")[:2])
    np.testing.assert_array_equal(prioritize({"kl": [1.0, 2.0]}), [1, 0])
    with pytest.raises(ValueError, match=r"pass metric= to choose"):
        prioritize(out)
    with pytest.raises(ValueError, match=r"metric 'js' is not in scores"):
        prioritize(out, metric="js")


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        (([1.0, 2.0],), dict(fraction=0.5, k=1), ValueError, "pass at most one of fraction and k"),
        (([1.0, 2.0],), dict(fraction=0.0), ValueError, r"fraction must lie in \(0, 1\]"),
        (([1.0, 2.0],), dict(fraction=1.5), ValueError, r"fraction must lie in \(0, 1\]"),
        (([1.0, 2.0],), dict(k=-1), ValueError, "k must be >= 0"),
        (([1.0, 2.0],), dict(k=1.5), TypeError, "k must be an int"),
        (([1.0, 2.0],), dict(metric="kl"), ValueError, "metric= only applies"),
        (([],), {}, ValueError, "scores is empty"),
        (([[1.0], [2.0]],), {}, ValueError, r"scores must have shape \[n\]"),
        ((["a", "b"],), {}, TypeError, "scores must hold real numbers"),
        (([True, False],), {}, TypeError, "scores must hold real numbers"),
    ],
)
def test_prioritize_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        prioritize(*args, **kwargs)


# --- regressions found in review -----------------------------------------------------------------


def test_closed_over_teacher_under_jit():
    # Distillation: the teacher's logits are a constant captured by a jitted loss of the student.
    teacher = jax.random.normal(jax.random.key(0), (2, 4, 50))
    student = jax.random.normal(jax.random.key(1), (2, 4, 50))
    loss = jax.jit(jax.value_and_grad(lambda s: score_pairs(teacher, s)["kl"].mean()))
    value, grad = loss(student)
    eager = score_pairs(teacher, student)["kl"].mean()
    np.testing.assert_allclose(float(value), float(eager), rtol=1e-6)
    assert bool(jnp.isfinite(grad).all())
    numpy_teacher = np.asarray(teacher)
    value_np = jax.jit(lambda s: score_pairs(numpy_teacher, s)["kl"].mean())(student)
    np.testing.assert_allclose(float(value_np), float(eager), rtol=1e-6)


@pytest.mark.parametrize("implementation", ["reference", "blockwise"])
def test_masked_all_neg_inf_rows_get_zero_not_nan_gradients(implementation):
    rng = np.random.default_rng(3)
    a = rng.normal(size=(2, 4, 40)).astype(np.float32)
    b = (a + 0.5 * rng.normal(size=a.shape)).astype(np.float32)
    a[0, 2, :] = -np.inf  # padding filled with -inf, masked out
    b[0, 2, :] = -np.inf
    mask = np.ones((2, 4), bool)
    mask[0, 2] = False
    grads = jax.grad(
        lambda x, y: score_pairs(x, y, mask, implementation=implementation)["kl"].sum(), argnums=(0, 1)
    )(jnp.asarray(a), jnp.asarray(b))
    for g in grads:
        assert bool(jnp.isfinite(g).all())
        np.testing.assert_array_equal(np.asarray(g[0, 2]), 0.0)
    expected = reference_scores(a, b, mask, "kl")
    value = score_pairs(a, b, mask, implementation=implementation)["kl"]
    np.testing.assert_allclose(np.asarray(value, np.float64), expected, rtol=RTOL, atol=ATOL)


def test_counted_all_neg_inf_row_is_an_error_and_masked_nan_is_not():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(2, 3, 20)).astype(np.float32)
    bad = a.copy()
    bad[1, 2, :] = -np.inf
    with pytest.raises(ValueError, match=r"logits_a\[1, 2\] is all -inf at a counted position"):
        score_pairs(bad, a)
    nan = a.copy()
    nan[0, 1, 3] = np.nan
    mask = np.ones((2, 3), bool)
    mask[0, 1] = False
    np.testing.assert_array_equal(np.asarray(score_pairs(nan, a, mask)["kl"]), [0.0, 0.0])
    with pytest.raises(ValueError, match=r"logits_a contains NaN \(first at index \(0, 1\)\)"):
        score_pairs(nan, a)


def test_prioritize_fraction_rounding():
    assert prioritize([1.0, 2.0, 3.0], fraction=1e-12).tolist() == [2]
    assert prioritize(np.arange(10.0), fraction=np.float32(0.3)).tolist() == [9, 8, 7]


def test_values_are_checked_from_the_kernel_not_by_an_extra_pass(monkeypatch):
    from jaxrank import _validation

    def no_extra_pass(*args, **kwargs):
        raise AssertionError("score_pairs must not run a separate validation pass over the logits")

    monkeypatch.setattr(_validation, "logit_value_flags", no_extra_pass)
    monkeypatch.setattr(_validation, "check_logit_values", no_extra_pass)
    a, b = jnp.asarray(A), jnp.asarray(BB)
    assert_close(score_pairs(a, b, MASK)["kl"], reference_scores(A, BB, MASK, "kl"))
    bad = a.at[1, 2, 3].set(jnp.nan)
    with pytest.raises(ValueError, match=r"logits_a contains NaN at a counted position \(first at index \(1, 2\)\)"):
        score_pairs(bad, b, np.ones((B, S), bool))


@pytest.mark.parametrize("implementation", ["reference", "blockwise"])
def test_checked_score_pairs_under_jit(implementation):
    from jax.experimental import checkify

    f = checkify.checkify(jax.jit(lambda a, b, m: score_pairs(a, b, m, checked=True, implementation=implementation)))
    mask = np.ones((B, S), bool)
    mask[0, 1] = False
    nan = A.copy()
    nan[0, 1, 4] = np.nan  # masked out: never reaches a score, no error
    err, out = f(nan, BB, mask)
    assert err.get() is None and bool(jnp.all(jnp.isfinite(out["kl"])))
    nan[2, 3, 0] = np.nan
    err, out = f(nan, BB, mask)
    assert bool(jnp.isnan(out["kl"][2]))
    with pytest.raises(checkify.JaxRuntimeError, match=r"logits_a contains NaN at a counted position \(first at "
                       r"index \(2, 3\)\)"):
        err.throw()
    empty = BB.copy()
    empty[3, 5, :] = -np.inf
    err, _ = f(A, empty, mask)
    with pytest.raises(checkify.JaxRuntimeError, match=r"logits_b\[3, 5\] is all -inf at a counted position"):
        err.throw()
    # Unchecked under jit: no error, NaN scores only (documented).
    plain = jax.jit(lambda a, b, m: score_pairs(a, b, m, implementation=implementation))
    assert bool(jnp.isnan(plain(nan, BB, mask)["kl"][2]))


def test_checked_score_pairs_rejects_logits_as_log_probs():
    from jax.experimental import checkify

    la, lb = log_softmax(A.astype(np.float64), -1).astype(np.float32), log_softmax(BB.astype(np.float64), -1)
    lb = lb.astype(np.float32)
    f = checkify.checkify(jax.jit(lambda a, b: score_pairs(a, b, MASK, log_probs=True, checked=True)))
    err, out = f(la, lb)
    assert err.get() is None
    assert_close(out["kl"], reference_scores(A, BB, MASK, "kl"))
    err, _ = f(A, lb)
    with pytest.raises(checkify.JaxRuntimeError, match="logits_a is not normalised"):
        err.throw()
    with pytest.raises(ValueError, match="logits_b is not normalised"):
        score_pairs(la, BB, MASK, log_probs=True, checked=True)
    with pytest.raises(TypeError, match="checked must be True or False"):
        score_pairs(A, BB, checked="yes")
