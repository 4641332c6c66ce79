"""Numerics at the edges: fusion keeps the graph's evaluation order, long chains compile
in bounded time, sums accumulate accurately, the softmax family does not cancel, and the
backends agree with each other (and with PyTorch's conventions) on inf, NaN and warnings."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from graphc.passes.fusion import MAX_GROUP_COST, fusion, member_cost

import graphc as gc

BACKENDS = ("numpy", "numba")


def run(outputs, backend, **feeds):
    return gc.compile(outputs, backend=backend)(**feeds)


# -- 1, 5: fusion evaluates the graph's operations in the graph's order ----------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_fusion_keeps_evaluation_order(backend):
    a, b = gc.input("a", (3,)), gc.input("b", (3,))
    y = (a - b) + 1.0
    v = np.array([1e8, 3e7, 1], np.float32)
    np.testing.assert_array_equal(run(y, backend, a=v, b=v), [1, 1, 1])


def test_fused_kernel_binds_each_step():
    a, b = gc.input("a", (3,)), gc.input("b", (3,))
    f = gc.compile((a - b) + 1.0, backend="numba")
    body = f.source[f.source.index("def kernel"):]
    assert "s0 = (x0 - x1)" in body and "s1 = (s0 + x2)" in body, body


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_step_with_repeated_operand_is_not_simplified(backend):
    x = gc.input("x", (3,))
    t = gc.exp(x)
    y = (t - t) * 2.0  # inf - inf is nan, not 0
    out = run(y, backend, x=np.array([0, 1e3, -1e3], np.float32))
    assert np.isnan(out[1]) and out[0] == 0 and out[2] == 0, out


@pytest.mark.parametrize("backend", BACKENDS)
def test_hinge_at_huge_scores_matches_torch(backend):
    s, lab = gc.input("s", (1, 3)), gc.input("l", (1,), "int64")
    loss = gc.hinge(s, lab)
    value, grad = run([loss, gc.grad(loss, s)], backend,
                      s=np.array([[1e30, 1e30, -1e30]], np.float32), l=np.array([1]))
    assert value == 1.0
    np.testing.assert_array_equal(grad, [[1, -1, 0]])


# -- 2: long elementwise chains are fused in bounded groups ----------------------------------

def chain(links):
    x, h = gc.input("x", (64,)), gc.input("h", (64,))
    for _ in range(links):
        h = gc.tanh(h) * 0.9 + x * 0.01
    return h


def test_long_chain_is_split_into_groups_sharing_kernels():
    g = fusion(gc.Graph(chain(200)))
    fused = [t for t in g.nodes if t.op.name == "fused"]
    assert all(member_cost(t) <= MAX_GROUP_COST for t in fused)
    texts = {t.op.group.text for t in fused}
    assert len(fused) >= 10 and len(texts) <= 4, (len(fused), len(texts))


@pytest.mark.slow
def test_chain_of_200_links_compiles_and_matches_reference():
    h = chain(200)
    feeds = {"x": np.linspace(-1, 1, 64, dtype=np.float32),
             "h": np.linspace(1, -1, 64, dtype=np.float32)}
    f = gc.compile(h, backend="numba")
    assert f.stats["kernels"] <= 4, f.stats["kernels"]
    np.testing.assert_allclose(f(**feeds), run(h, "numpy", **feeds), rtol=1e-5, atol=1e-6)


# -- 3: sums accumulate accurately; absurd sizes are refused ---------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_float32_sum_is_accurate(backend):
    s = gc.input("s", ())
    n = 2**24
    y = gc.sum(gc.exp(gc.broadcast_to(s, (n,))))
    exact = n * np.exp(np.float64(np.float32(-2.3)))
    got = run(y, backend, s=np.float32(-2.3))
    assert abs(float(got) - exact) / exact < 1e-6, (float(got), exact)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fused_sum_of_any_length_is_as_accurate_as_numpy(dtype, monkeypatch):
    """Prime lengths (no divisor near 4096) were summed one value after another: 9e-15
    relative error at 65521 where NumPy's pairwise sum has 0.  Lengths: one block of rows
    plus a tail, two blocks, and a call split over 3 threads; float32 accumulates in
    float64, so its sum is the correctly rounded exact sum."""
    from graphc import numba_runtime
    monkeypatch.setenv("NUMBA_NUM_THREADS", "3")
    monkeypatch.setattr(numba_runtime, "_cpus", lambda: 4)
    for n, parallel in [(65521, False), (1048573, False), (2457569, True)]:
        x = gc.input("x", (n,), dtype)
        e = gc.exp(x)
        f = gc.compile([e, gc.sum(e)], backend="numba")
        assert ("_parallel(" in f.source) == parallel
        v = np.random.default_rng(0).uniform(0.1, 1.1, n).astype(dtype)
        values, total = f(x=v)
        np.testing.assert_allclose(values, np.exp(v), rtol=1e-15 if dtype == "float64" else 1e-6)
        exact = math.fsum(values.astype(np.float64))
        if dtype == "float64":
            assert abs(float(total) - exact) / exact <= 4e-16, (n, float(total), exact)
        else:
            assert total == np.float32(exact), (n, float(total), exact)


def test_unfused_full_sum_is_numpys_pairwise_sum():
    """A sum of all of an input's values (no fused group) ran the column-sum kernel with one
    column: one value after another, 1.5e-10 relative error on 2**23 values of 0.1."""
    x = gc.input("x", (2**23,), "float64")
    f = gc.compile(gc.sum(x), backend="numba")
    v = np.full(2**23, 0.1)
    assert float(f(x=v)) == np.add.reduce(v)
    assert abs(float(f(x=v)) - math.fsum(v)) / math.fsum(v) <= 4e-16


@pytest.mark.parametrize("backend", BACKENDS)
def test_absurd_size_is_refused_naming_op_and_shape(backend):
    s = gc.input("s", ())
    y = gc.sum(gc.exp(gc.broadcast_to(s, (2**40,))))
    with pytest.raises(gc.GraphError, match=r"broadcast_to.*\(1099511627776,\)"):
        run(y, backend, s=np.float32(1))


# -- 4: log_softmax and softmax_cross_entropy do not cancel ----------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_log_softmax_does_not_cancel(backend):
    x = gc.input("x", (1, 3))
    y = gc.log_softmax(x, axis=1)
    out = run(y, backend, x=np.array([[1e4, 1e4, 0]], np.float32))
    np.testing.assert_allclose(out[0, :2], -np.log(2), rtol=1e-6)
    value, grad = run([y[0, 0], gc.grad(y[0, 0], x)], backend,
                      x=np.array([[1e30, 1e30, -1e30]], np.float32))
    np.testing.assert_allclose(value, -np.log(2), rtol=1e-6)
    np.testing.assert_allclose(grad, [[0.5, -0.5, 0]], atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_cross_entropy_is_accurate(backend):
    z, lab = gc.input("z", (1, 2)), gc.input("l", (1,), "int64")
    loss = run(gc.softmax_cross_entropy(z, lab), backend,
               z=np.array([[100, 90]], np.float32), l=np.array([0]))
    exact = np.log1p(np.exp(-10.0))  # 4.5399e-05
    assert abs(float(loss) - exact) / exact < 2e-3, float(loss)  # was 0.8 % off


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_masked_class_of_minus_inf_leaves_the_losses_finite(backend):
    # a class masked out with -inf (not the label): PyTorch's cross_entropy gives 0.8604338
    # and the hinge sum (2 + 0) / 2; the one-hot product made 0 * -inf = nan in both
    z, lab = gc.input("z", (2, 3), "float64"), gc.input("l", (2,), "int64")
    Z, L = np.array([[-np.inf, 0.0, 1.0], [0.0, 1.0, 2.0]]), np.array([1, 2])
    ce, hinge = gc.softmax_cross_entropy(z, lab), gc.hinge(z, lab)
    got = run([ce, hinge, gc.grad(ce, z), gc.grad(hinge, z)], backend, z=Z, l=L)
    np.testing.assert_allclose(got[0], 0.8604338, rtol=1e-6)
    np.testing.assert_allclose(got[1], 1.0, rtol=1e-12)
    p = np.exp(Z - np.log(np.exp(Z).sum(1, keepdims=True)))
    np.testing.assert_allclose(got[2], (p - np.eye(3)[L]) / 2, rtol=1e-12)
    np.testing.assert_array_equal(got[3], [[0, -0.5, 0.5], [0, 0, 0]])  # relu'(0) = 0


def test_numba_rounds_each_product_as_numpy_does():
    """No FMA contraction in generated kernels: ``w*a + w*b`` with ``a = -b = 1e300`` is 0
    in NumPy (each product rounded, then they cancel), and an FMA (one rounding) left the
    product's rounding error, 1.17e283, which a float32 cast makes inf (a random-graph
    fuzzer's gradient: inf where NumPy gave 0)."""
    w = 0.20149390399456024
    X = np.array([[-1e300, 1.0], [-0.66, 2.0], [-0.0, 3.0], [1e300, 4.0]])
    x = gc.input("x", (4, 2), "float64")
    for y in [gc.sum(x * w, axis=0), gc.cast(gc.sum(x * w, axis=0), "float32"),
              x[0] * w + x[3] * w, gc.sum(x[:, 0] * w) * gc.sum(x)]:
        got = gc.compile(y, backend="numba")(x=X)
        want = gc.compile(y, backend="numpy")(x=X)
        np.testing.assert_array_equal(got, want)
    assert gc.compile(gc.sum(x * w, axis=0), backend="numba")(x=X)[0] == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_softmax_family_over_an_empty_axis(backend):
    """As torch: softmax of an empty axis is empty (it raised "zero-size array to reduction
    operation maximum"), logsumexp of one is -inf; their gradients are empty or zero."""
    torch = pytest.importorskip("torch")
    for shape, axis in [((3, 0), 1), ((0, 3), 0)]:
        x = gc.input("x", shape)
        zeros = np.zeros(shape, np.float32)
        for fn, ref in [(gc.softmax, torch.softmax), (gc.log_softmax, torch.log_softmax),
                        (gc.logsumexp, torch.logsumexp)]:
            y = fn(x, axis=axis)
            value, grad = gc.compile([y, gc.grad(gc.sum(y), x)], backend=backend)(x=zeros)
            want = ref(torch.zeros(shape), axis).numpy()
            assert value.shape == want.shape and grad.shape == shape
            np.testing.assert_array_equal(value, want)


# -- 6: no backend warns ----------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_are_silent_on_invalid_values(backend):
    x = gc.input("x", (4,))
    outputs = [gc.sqrt(x), gc.log(x), x ** 0.5, x ** -1.5, 1.0 / x, gc.exp(x * 100.0),
               gc.logsumexp(x, 0), gc.grad(gc.sum(gc.sqrt(x)), x)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = run(outputs, backend, x=np.array([-1, 0, 1e30, np.inf], np.float32))
    assert np.isnan(out[0][0]) and out[4][1] == np.inf


@pytest.mark.parametrize("context_variable", [True, False])
def test_numba_programs_numpy_steps_ignore_the_callers_fp_error_state(monkeypatch,
                                                                       context_variable):
    """A compiled program's NumPy steps (here a matmul that overflows) give IEEE results
    with no warning even where the caller raises on overflow; the caller's setting holds
    again afterwards.  Both ways of ignoring them: NumPy's context variable, np.errstate."""
    from graphc import numba_runtime
    if not context_variable:
        monkeypatch.setattr(numba_runtime, "_FP_STATE", None)
    x, w = gc.input("x", (2, 3), "float32"), gc.input("w", (3, 2), "float32")
    f = gc.compile([x @ w], backend="numba")
    assert f._program.numpy_steps
    feeds = {"x": np.full((2, 3), 1e30, np.float32), "w": np.full((3, 2), 1e10, np.float32)}
    with warnings.catch_warnings(), np.errstate(over="raise"):
        warnings.simplefilter("error")
        (y,) = f(feeds)
        with pytest.raises(FloatingPointError):  # the caller's own setting, kept
            np.matmul(feeds["x"], feeds["w"])
    assert np.all(y == np.inf)
    monkeypatch.setattr(numba_runtime, "ignoring_fp_errors", lambda fn, *args: fn(*args))
    with np.errstate(over="raise"), pytest.raises(gc.GraphError, match="overflow"):
        f(feeds)  # (what the test checks: without it, the caller's setting applies)

# -- 7: inf and NaN at the edges follow PyTorch ----------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_mse_gradient_near_float32_max_stays_finite(backend):
    p, t = gc.input("p", (4,)), gc.input("t", (4,))
    grad = run(gc.grad(gc.mse(p, t), p), backend,
               p=np.array([-3e38, 1, 2, 3], np.float32), t=np.zeros(4, np.float32))
    np.testing.assert_allclose(grad, [-1.5e38, 0.5, 1, 1.5], rtol=1e-6)  # as PyTorch


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["max", "min"])
def test_max_min_gradient_goes_to_the_nan(backend, kind):
    x = gc.input("x", (2, 3))
    y = getattr(gc, kind)(x)
    value, grad = run([y, gc.grad(y, x)], backend,
                      x=np.array([[1, np.nan, 2], [0, 3, -1]], np.float32))
    assert np.isnan(value)
    np.testing.assert_array_equal(grad, [[0, 1, 0], [0, 0, 0]])  # as torch.max


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_bce_with_logits_gradient_is_finite_for_large_logits(backend, dtype):
    """Its softplus keeps log(1 + e^x) up to 3e38 (no threshold), so the plain derivative
    e^x / (e^x + 1) was inf / inf = NaN from x = 89 (float32) or 710 (float64): the local
    derivative's stable form is chosen with the node's own threshold, not softplus' 20."""
    torch = pytest.importorskip("torch")
    z, t = gc.input("z", (5,), dtype), gc.input("t", (5,), dtype)
    loss = gc.binary_cross_entropy_with_logits(z, t)
    zv = np.array([10.0, 100.0, 1000.0, -1000.0, 1e30], dtype)
    tv = np.full(5, 0.3, dtype)
    value, grad = run([loss, gc.grad(loss, z)], backend, z=zv, t=tv)
    zt = torch.tensor(zv, requires_grad=True)
    want = torch.nn.functional.binary_cross_entropy_with_logits(zt, torch.tensor(tv))
    want.backward()
    np.testing.assert_allclose(value, want.item(), rtol=1e-6)
    np.testing.assert_allclose(grad, zt.grad.numpy(), rtol=1e-6, atol=1e-7)
