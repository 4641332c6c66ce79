"""Derivatives at the edges (issue 13): pow at base 0, piecewise custom ops, bool
maximum/minimum, bounded simplification and custom ops refused at declaration.

The conventions at singular points follow PyTorch 2.13 (docs/autodiff.md); each is checked
against torch here, on both CPU backends.
"""

import time

import numpy as np
import pytest
import sympy as sp
import torch

import graphc as gc
from graphc import derivation
from graphc import elementwise_ops as ew

BACKENDS = ["numpy", "numba"]


def torch_grads(fn, *arrays):
    ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    fn(*ts).sum().backward()
    return [t.grad.numpy() for t in ts]


# ---------------------------------------------------------------------------------------
# 1. pow at base 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_pow_gradients_at_zero_base_match_torch(backend):
    x, y = gc.input("x", (4,), "float64"), gc.input("y", (4,), "float64")
    X, Y = np.zeros(4), np.array([0.0, 0.3, 2.0, -1.0])
    dx, dy = gc.compile(gc.grad(gc.sum(x ** y), [x, y]), backend=backend)(x=X, y=Y)
    np.testing.assert_array_equal(dx, [0.0, np.inf, 0.0, -np.inf])
    np.testing.assert_array_equal(dy, [0.0, 0.0, 0.0, -np.inf])
    tx, ty = torch_grads(torch.pow, X, Y)
    np.testing.assert_array_equal(dx, tx)
    np.testing.assert_array_equal(dy, ty)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pow_with_constant_exponent_or_base_at_zero(backend):
    z = gc.input("z", (3,), "float64")
    Z = np.array([0.0, 0.5, 2.0])
    g_exp0, g_base0 = gc.compile([gc.grad(gc.sum(z ** 0.0), z), gc.grad(gc.sum(0.0 ** z), z)],
                                 backend=backend)(z=Z)
    np.testing.assert_array_equal(g_exp0, [0.0, 0.0, 0.0])  # z ** 0 is 1 everywhere
    np.testing.assert_array_equal(g_base0, [0.0, 0.0, 0.0])
    (t_exp0,) = torch_grads(lambda t: t ** 0.0, Z)
    (t_base0,) = torch_grads(lambda t: 0.0 ** t, Z)
    np.testing.assert_array_equal(g_exp0, t_exp0)
    np.testing.assert_array_equal(g_base0, t_base0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_learnable_exponent_after_relu_has_finite_gradient(backend):
    x = gc.input("x", (4,), "float64")
    p = gc.param("p", (), dtype="float64")
    X, P = np.array([-1.0, 0.0, 0.5, 2.0]), np.array(1.5)
    dp, dx = gc.compile(gc.grad(gc.sum(gc.relu(x) ** p), [p, x]), backend=backend)(x=X, p=P)
    tp, tx = torch_grads(lambda p, x: torch.relu(x) ** p, P, X)
    assert np.isfinite(dp) and np.isfinite(dx).all()
    np.testing.assert_allclose(dp, tp, rtol=1e-12)
    np.testing.assert_allclose(dx, tx, rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pow_second_derivatives_at_zero_base_match_torch(backend):
    x, y = gc.input("x", (3,), "float64"), gc.input("y", (3,), "float64")
    X, Y = np.zeros(3), np.array([0.0, 1.0, 2.0])
    (dx,) = [gc.grad(gc.sum(x ** y), x)]
    d2 = gc.compile(gc.grad(gc.sum(dx), [x, y]), backend=backend)(x=X, y=Y)
    tx = torch.tensor(X, requires_grad=True)
    ty = torch.tensor(Y, requires_grad=True)
    (g,) = torch.autograd.grad((tx ** ty).sum(), tx, create_graph=True)
    want_xx, want_xy = (w.numpy() for w in torch.autograd.grad(g.sum(), [tx, ty]))
    np.testing.assert_array_equal(d2[0], [0.0, 0.0, 2.0])
    np.testing.assert_array_equal(d2[1], [0.0, 1.0, 0.0])
    # torch agrees except at exponent 0, where its masked 0 * inf gives NaN and graphc 0
    # (the first derivative is 0 for every x there)
    np.testing.assert_array_equal(d2[0][1:], want_xx[1:])
    np.testing.assert_array_equal(d2[1][1:], want_xy[1:])
    assert np.isnan(want_xx[0]) and np.isnan(want_xy[0])


def test_pow_convention_lives_in_the_sympy_derivatives():
    a, b = gc.power.args
    assert gc.power.derivatives == (
        sp.Piecewise((0, sp.Eq(b, 0)), (b * a ** (b - 1), True)),
        sp.Piecewise((0, sp.Eq(a, 0) & (b >= 0)), (a ** b * sp.log(a), True)))
    assert gc.power.derivatives_text[0] == "Piecewise((0, Eq(b, 0)), (a**(b - 1)*b, True))"


def test_strong_zeros_also_guard_custom_ops():
    # x**2 log x: d = 2x log x + x, whose limit at 0 is 0 (the product 2x log x is 0 at 0)
    op = gc.elementwise("t_edge_x2logx", lambda x: x**2 * sp.log(x))
    x = gc.input("x", (3,), "float64")
    g = gc.compile(gc.grad(gc.sum(op(x)), x), backend="numpy")(x=np.array([0.0, 1.0, 2.0]))
    np.testing.assert_allclose(g, [0.0, 1.0, 4 * np.log(2) + 2], rtol=1e-12)


# ---------------------------------------------------------------------------------------
# 2. maximum / minimum on bools


@pytest.mark.parametrize("backend", BACKENDS)
def test_maximum_minimum_take_bools(backend):
    a, b = gc.input("a", (4,), "bool"), gc.input("b", (4,), "bool")
    A, B = np.array([0, 0, 1, 1], bool), np.array([0, 1, 0, 1], bool)
    hi, lo = gc.compile([gc.maximum(a, b), gc.minimum(a, b)], backend=backend)(a=A, b=B)
    assert hi.dtype == lo.dtype == np.bool_
    np.testing.assert_array_equal(hi, torch.maximum(torch.tensor(A), torch.tensor(B)).numpy())
    np.testing.assert_array_equal(lo, torch.minimum(torch.tensor(A), torch.tensor(B)).numpy())


# ---------------------------------------------------------------------------------------
# 3. piecewise custom ops


PIECEWISE_RELUS = {
    "t_edge_max_relu": lambda x: sp.Max(x, 0),
    "t_edge_heaviside_relu": lambda x: sp.Heaviside(x) * x,
    "t_edge_abs_relu": lambda x: (x + sp.Abs(x)) / 2,
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(PIECEWISE_RELUS))
def test_piecewise_custom_op_gradients(name, backend):
    op = gc.elementwise(name, PIECEWISE_RELUS[name])
    assert op.derivatives != (1,)
    assert op.out not in op.derivatives[0].free_symbols  # no proof that f' = g(f) here
    x = gc.input("x", (4,), "float64")
    g = gc.compile(gc.grad(gc.sum(op(x)), x), backend=backend)(x=np.array([-2, -0.5, 0.5, 2]))
    np.testing.assert_array_equal(g, [0.0, 0.0, 1.0, 1.0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_shifted_relu_derivative_stays_in_x(backend):
    op = gc.elementwise("t_edge_shifted_relu",
                        lambda x: sp.Piecewise((x - 1, x > 1), (0, True)))
    (x_sym,) = op.args
    assert op.derivatives == (sp.Piecewise((1, x_sym > 1), (0, True)),)
    x = gc.input("x", (5,), "float64")
    X = np.array([-1.0, 0.5, 1.5, 1.9, 3.0])
    g = gc.compile(gc.grad(gc.sum(op(x)), x), backend=backend)(x=X)
    np.testing.assert_array_equal(g, [0.0, 0.0, 1.0, 1.0, 1.0])
    (t,) = torch_grads(lambda t: torch.where(t > 1, t - 1, torch.zeros_like(t)), X)
    np.testing.assert_array_equal(g, t)


def test_rewrite_on_the_output_needs_a_proof():
    x, y = sp.Symbol("x", real=True), sp.Symbol("y", real=True)
    relu = sp.Piecewise((x, x > 0), (0, True))
    d_relu = sp.Piecewise((1, x > 0), (0, True))
    assert derivation.proves_on_output(relu, d_relu, x, y, sp.Piecewise((1, y > 0), (0, True)))
    assert not derivation.proves_on_output(relu, d_relu, x, y, sp.Piecewise((1, y > 1), (0, True)))
    assert not derivation.proves_on_output(sp.Max(x, 0), sp.Heaviside(x), x, y, sp.S.One)
    sig = 1 / (1 + sp.exp(-x))
    assert derivation.proves_on_output(sig, sp.diff(sig, x), x, y, y * (1 - y))
    assert not derivation.proves_on_output(sig, sp.diff(sig, x), x, y, y * (1 - y) + 1e-30)
    assert derivation.proves_on_output(sp.tanh(x), 1 - sp.tanh(x) ** 2, x, y, 1 - y**2)
    assert gc.relu.derivatives == (sp.Piecewise((1, gc.relu.out > 0), (0, True)),)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_an_output_form_must_also_evaluate_where_the_output_underflows(backend, dtype):
    # proven over the reals, half_relu' = [y > 0] is wrong where y = x/2 underflows: at the
    # smallest subnormal x, y = 0 and the gradient was 0 where torch and the exact value are
    # 1/2.  The output form is now also evaluated at tiny probes, with y rounded, and refused
    half = gc.elementwise("t_edge_half_relu", lambda a: sp.Piecewise((a / 2, a > 0), (0, True)))
    tiny = np.finfo(dtype).smallest_subnormal
    X = np.array([tiny, 10 * tiny, 1.0, -1.0], dtype)
    x = gc.input("x", (4,), dtype)
    got = gc.compile(gc.grad(gc.sum(half(x)), x), backend=backend)(x=X)
    (want,) = torch_grads(lambda t: torch.relu(t) / 2, X.astype(np.float64))
    np.testing.assert_array_equal(got, want.astype(dtype))
    np.testing.assert_array_equal(got, [0.5, 0.5, 0.5, 0.0])
    assert half.out not in half.derivatives[0].free_symbols
    (a,) = half.args
    d = half.derivatives[0]
    assert not derivation.evaluates_alike(d, d.subs(a, half.out), (half.out, half.expr))
    # the built-ins keep the output forms they had (proven, and alike at the tiny probes)
    for name in ("sigmoid", "tanh", "exp", "expm1", "relu", "relu6", "sqrt", "reciprocal",
                 "tan", "div"):
        op = ew.REGISTRY[name]
        assert op.out in op.derivatives[-1].free_symbols, name

# ---------------------------------------------------------------------------------------
# 4. declaration: bounded simplification, refusals, floor/ceiling


def _deep_tanh(x):
    for _ in range(6):
        x = sp.tanh(x)
    return x


@pytest.mark.parametrize("name,fn", [
    ("t_edge_deep_tanh", _deep_tanh),
    ("t_edge_sines", lambda x: sum(sp.sin(k * x) for k in range(1, 41))),
])
def test_declaration_work_is_bounded(name, fn):
    start = time.perf_counter()
    op = gc.elementwise(name, fn)
    assert time.perf_counter() - start < 5.0
    (x_sym,) = op.args
    raw = sp.diff(op.expr, x_sym)
    assert not derivation.simplifiable(raw) and op.derivatives == (raw,)  # unsimplified
    x = gc.input("x", (3,), "float64")
    X = np.array([-0.7, 0.1, 1.3])
    f = gc.compile([op(x), gc.grad(gc.sum(op(x)), x)], backend="numpy")
    eps = 1e-6
    numeric = (f(x=X + eps)[0] - f(x=X - eps)[0]) / (2 * eps)
    np.testing.assert_allclose(f(x=X)[1], numeric, rtol=1e-6)


@pytest.mark.parametrize("name,fn,message", [
    ("t_edge_mod", lambda x: sp.Mod(x, 1), "no derivative of Mod"),
    ("t_edge_frac", lambda x: sp.frac(x), "no derivative of frac"),
    ("t_edge_zeta", lambda x: sp.zeta(x), "no derivative of zeta"),
    ("t_edge_erfinv", lambda x: sp.erfinv(x), "cannot evaluate erfinv"),
    ("t_edge_erfinv2", lambda x: x * sp.erfinv(x / 2), "cannot evaluate erfinv"),
])
def test_undifferentiable_or_unprintable_functions_are_refused(name, fn, message):
    with pytest.raises(gc.ElementwiseError, match=message) as info:
        gc.elementwise(name, fn)
    assert name in str(info.value)
    assert "test_edge_derivatives.py" in str(info.value)  # the user's line
    assert name not in ew.REGISTRY


@pytest.mark.parametrize("backend", BACKENDS)
def test_floor_ceiling_have_derivative_zero(backend):
    fl = gc.elementwise("t_edge_floor", lambda x: sp.floor(x) + x)
    ce = gc.elementwise("t_edge_ceiling", lambda x: sp.ceiling(2 * x))
    assert fl.derivatives == (1,) and ce.derivatives == (0,)
    x = gc.input("x", (3,), "float64")
    X = np.array([-0.5, 0.3, 1.7])
    vals = gc.compile([fl(x), ce(x), gc.grad(gc.sum(fl(x) * ce(x)), x)], backend=backend)(x=X)
    np.testing.assert_array_equal(vals[0], np.floor(X) + X)
    np.testing.assert_array_equal(vals[1], np.ceil(2 * X))
    (t,) = torch_grads(lambda t: (torch.floor(t) + t) * torch.ceil(2 * t), X)
    np.testing.assert_array_equal(vals[2], t)


def test_max_of_x_and_log_x_works_end_to_end():
    op = gc.elementwise("t_edge_max_log", lambda x: sp.Max(x, sp.log(x)))
    x = gc.input("x", (3,), "float64")
    X = np.array([0.3, 1.5, 2.2])
    y, g = gc.compile([op(x), gc.grad(gc.sum(op(x)), x)], backend="numpy")(x=X)
    np.testing.assert_array_equal(y, X)
    np.testing.assert_array_equal(g, [1.0, 1.0, 1.0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["maximum", "minimum"])
def test_maximum_minimum_gradient_at_nan_matches_torch(backend, name):
    """NaN in either operand: no comparison holds, and both operands get the gradient, as in
    PyTorch (ties still split it evenly)."""
    av, bv = np.array([np.nan, 1.0, 2.0, np.nan]), np.array([1.0, np.nan, 2.0, np.nan])
    a, b = gc.input("a", (4,), "float64"), gc.input("b", (4,), "float64")
    ga, gb = gc.grad(gc.sum(getattr(gc, name)(a, b)), [a, b])
    got = gc.compile([ga, gb], backend=backend)(a=av, b=bv)
    ta = torch.tensor(av, requires_grad=True)
    tb = torch.tensor(bv, requires_grad=True)
    getattr(torch, name)(ta, tb).sum().backward()
    np.testing.assert_array_equal(got[0], ta.grad.numpy())
    np.testing.assert_array_equal(got[1], tb.grad.numpy())
    np.testing.assert_array_equal(got[0], [1, 1, 0.5, 1])


# ---------------------------------------------------------------------------------------
# Higher derivatives at the kinks of a stable form (silu's exp(-|x|)) of a smooth op


def torch_derivatives(fn, x: np.ndarray, order: int) -> np.ndarray:
    """The ``order``-th derivative of ``fn`` at each element of ``x``, by torch autograd."""
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = fn(t).sum()
    for _ in range(order - 1):
        (y,) = torch.autograd.grad(y, t, create_graph=True)
        y = y.sum()
    (g,) = torch.autograd.grad(y, t)
    return g.detach().numpy()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, order, reference", [
    ("silu", 1, torch.nn.functional.silu), ("mish", 2, torch.nn.functional.mish),
    ("softplus", 2, torch.nn.functional.softplus), ("sigmoid", 2, torch.sigmoid)])
def test_higher_derivatives_of_smooth_ops_at_their_stable_forms_kinks(backend, name, order,
                                                                       reference):
    # silu'' at 0 was 0, not 1/2: silu is evaluated as x * sigmoid with exp(-|x|), whose
    # second derivative carries sign(x), 0 at x = 0, where the true value is the limit
    op = {"mish": gc.elementwise("t_mish_kinks", lambda x: x * sp.tanh(sp.log(1 + sp.exp(x))),
                                 stable=lambda x: x * sp.tanh(sp.Max(x, 0) + sp.log(
                                     1 + sp.exp(-sp.Abs(x)))))}.get(name, getattr(gc, name))
    x = gc.input("x", (5,), "float64")
    d = gc.sum(op(x))
    for _ in range(order):
        d = gc.sum(gc.grad(d, x))
    X = np.array([0.0, -0.0, 1e-300, -0.5, 2.0])
    got = gc.compile(gc.grad(d, x), backend=backend)(x=X)
    np.testing.assert_allclose(got, torch_derivatives(reference, X, order + 1), rtol=1e-12,
                               atol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hvp_through_silu_at_zero_weights(backend):
    x = np.array([1.0, 2.0])
    w = gc.input("w", (2,), "float64")
    hv = gc.hvp(gc.sum(gc.silu(w * x)), w, gc.constant(np.ones(2)))
    np.testing.assert_allclose(gc.compile(hv, backend=backend)(w=np.zeros(2)), 0.5 * x ** 2)


# ---------------------------------------------------------------------------------------
# Masked gradients: a 0 branch of a piecewise derivative gives 0 whatever the upstream


MASKED = {
    "relu": (gc.relu, torch.relu),
    "where": (lambda x: gc.where(x > 0, x, -x), lambda x: torch.where(x > 0, x, -x)),
    "clip": (lambda x: gc.clip(x, -1.0, 1.0), lambda x: torch.clamp(x, -1.0, 1.0)),
    "hardtanh": (gc.hardtanh, torch.nn.functional.hardtanh),
    "leaky_relu": (lambda x: gc.leaky_relu(x, 0.1),
                   lambda x: torch.nn.functional.leaky_relu(x, 0.1)),
    "abs": (gc.abs, torch.abs),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(MASKED))
def test_an_infinite_or_nan_upstream_stays_out_of_a_zero_branch(name, backend):
    # relu's gradient at x < 0 with an inf upstream was 0 * inf = NaN; torch gives 0 (it
    # masks, it does not multiply), and where() gave NaN even for the branch it took
    ours, theirs = MASKED[name]
    x, u = gc.input("x", (6,), "float64"), gc.input("u", (6,), "float64")
    X = np.array([-1.0, 0.0, 2.0, -3.0, 0.5, 1.0])
    U = np.array([np.inf, np.inf, 1.0, np.nan, -np.inf, np.nan])
    (dx,) = gc.compile(gc.vjp(ours(x), [x], u), backend=backend)(x=X, u=U)
    t = torch.tensor(X, requires_grad=True)
    expected = torch.autograd.grad(theirs(t), t, torch.tensor(U))[0].numpy()
    np.testing.assert_array_equal(dx, expected)


def test_the_masked_product_is_the_local_derivative_times_the_upstream():
    ops = gc.elementwise_ops
    for op, k in ((ops.relu, 0), (ops.where, 1), (ops.clip, 0), (ops.pow_, 0)):
        local = op.local_def(k)
        masked = local.masked_product()
        value, *args, g = masked.args
        assert tuple(args) == local.args
        # on each branch: local * g, with local's own value substituted, is the product
        assert sp.piecewise_fold(masked.expr.subs(value, local.expr) - local.expr * g
                                 ).simplify() == 0, op.name
    assert ops.tanh.local_def(0).masked_product() is None  # no 0 branch: g * local


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["remainder", "fmod"])
def test_remainders_match_torch_values_and_gradients(name, backend):
    X = np.array([-3.5, 2.25, 7.0, -0.1, 1e10 + 0.3, 3.0, -3.0, 0.7 * 3])
    Y = np.array([2.0, -0.7, 0.7, 0.3, 1.0, np.inf, np.inf, 0.7])
    x, y = gc.input("x", (8,), "float64"), gc.input("y", (8,), "float64")
    r = getattr(gc, name)(x, y)
    value, dx, dy = gc.compile([r, *gc.grad(gc.sum(r), [x, y])], backend=backend)(x=X, y=Y)
    tx, ty = (torch.tensor(a, requires_grad=True) for a in (X, Y))
    want = getattr(torch, name)(tx, ty)
    np.testing.assert_allclose(value, want.detach().numpy(), rtol=0, atol=1e-15)
    gx, gy = torch.autograd.grad(want.sum(), [tx, ty])
    np.testing.assert_array_equal(dx, gx.numpy())
    np.testing.assert_array_equal(dy[:5], gy.numpy()[:5])  # torch: -q = -0 at an inf b


@pytest.mark.parametrize("name, expr", [("max0", lambda x: sp.Max(x, 0)),
                                        ("min1", lambda x: sp.Min(x, 1)),
                                        ("step_x", lambda x: sp.Heaviside(x) * x)])
def test_a_heaviside_derivative_is_nan_at_nan_on_every_backend(name, expr):
    # SymPy writes these derivatives with Heaviside; NumPy's printer gave 1 at NaN (its
    # nested where), the Numba kernel NaN: the same graph differed by backend
    op = gc.elementwise(f"heaviside_{name}", expr)
    x = gc.input("x", (4,), "float64")
    X = np.array([np.nan, -1.0, 2.0, 0.0])
    results = [gc.compile(gc.grad(gc.sum(op(x)), x), backend=b)(x=X)
               for b in ("numpy", "numba")]
    np.testing.assert_array_equal(results[0], results[1])
    assert np.isnan(results[0][0]) and not np.isnan(results[0][1:]).any()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fractional_powers_at_special_values_agree_across_backends(dtype):
    # NumPy's power takes sqrt for the exponent 0.5 (NaN at -inf, -0 at -0, where C's pow
    # gives inf and +0): the gradient of x ** 1.5 is 1.5 x ** 0.5 with the exponent a run-time
    # operand, so the Numba kernel gave inf at -inf where the reference gives NaN
    x, e = gc.input("x", (6,), dtype), gc.input("e", (), dtype)
    X = np.array([-np.inf, -1.0, 4.0, np.inf, -0.0, 0.0], dtype)
    outs = [x ** 1.5, gc.grad(gc.sum(x ** 1.5), x), x ** 0.5, x ** e,
            gc.grad(gc.sum(x ** e), x)]
    ref, got = (gc.compile(outs, backend=b)(x=X, e=np.asarray(0.5, dtype))
                for b in ("numpy", "numba"))
    for a, b in zip(ref, got):
        np.testing.assert_array_equal(a, b)
        assert (np.signbit(a) == np.signbit(b)).all()
    assert np.isnan(ref[1][0]) and np.isnan(ref[3][0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,a,b", [
    ("float32", 1e30, 1e20), ("float32", 0.0, 1e-40), ("float32", 1e-30, 1e-25),
    ("float64", 1e300, 1e160), ("float64", 0.0, 1e-170), ("float64", 1e-300, 1e-170)])
def test_the_divisor_gradient_is_finite_where_the_quotient_is(backend, dtype, a, b):
    # d(a/b)/db = -a/b**2 with b**2 out of range gave -0 instead of -1e-10, NaN at a = 0
    # and -inf for 1e-30/1e-25; as -y/b (y = a/b, proven equal) it is torch's (a/b)/b
    assert str(ew.div.derivatives[1]) == f"-{ew.div.out}/b"
    x, y = gc.input("a", (1,), dtype), gc.input("b", (1,), dtype)
    A, B = np.array([a], dtype), np.array([b], dtype)
    (got,) = gc.compile(gc.grad(gc.sum(x / y), [y]), backend=backend)(a=A, b=B)
    ta, tb = (torch.tensor(v, requires_grad=True) for v in (A, B))
    (ta / tb).sum().backward()
    np.testing.assert_array_equal(got, tb.grad.numpy())
    assert np.isfinite(got).all() and np.signbit(got).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_logsumexp_of_empty_rows_is_minus_infinity(backend):
    # torch's log(0); the NumPy backend raised and the Numba one left the output unwritten
    for shape, axis in [((3, 0), 1), ((0,), None), ((0, 3), None)]:
        x = gc.input("x", shape, "float64")
        got = gc.compile(gc.logsumexp(x, axis=axis), backend=backend)(x=np.zeros(shape))
        dims = (axis,) if axis is not None else tuple(range(len(shape)))
        want = torch.logsumexp(torch.zeros(shape, dtype=torch.float64), dim=dims).numpy()
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("axis,keepdims", [(-1, False), ((0, 2), False), ((1, 2), True)])
def test_logsumexp_gradient_through_a_broadcast_of_rank_three(backend, axis, keepdims):
    # the fused backward read a (1, 3, 5) row of broadcast_to(x, (4, 3, 5)) by broadcasting
    # the (4, 3, 5) array down to it: "operands could not be broadcast" at run time
    x = gc.input("x", (3, 1), "float64")
    y = gc.logsumexp(gc.broadcast_to(x, (4, 3, 5)), axis=axis, keepdims=keepdims)
    X = np.arange(3.0).reshape(3, 1)
    (got,) = gc.compile([gc.grad(gc.sum(y * y), x)], backend=backend)(x=X)
    (want,) = torch_grads(lambda t: torch.logsumexp(
        t.broadcast_to(4, 3, 5), axis, keepdim=keepdims) ** 2, X)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_a_custom_op_whose_derivative_overflows_is_warned_about_at_declaration():
    # x / (1 + exp(-x)) is finite everywhere; SymPy's derivative, with no stable form to
    # fall back on, is NaN below x = -88 in float32 (x exp(-x) / (1 + exp(-x))**2: inf /
    # inf; its simplified form, NaN above 89, is not taken): said where it is declared
    with pytest.warns(RuntimeWarning,
                      match=r"'t_edge_swish'.*x = -10000, -1000, -100.*stable="):
        gc.elementwise("t_edge_swish", lambda x: x / (1 + sp.exp(-x)))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gc.elementwise("t_edge_cube", lambda x: x ** 3 - x)  # finite: no warning


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_signed_zeros_of_maximum_minimum_and_elu_follow_numpy(backend, dtype):
    # the Numba kernels returned the first operand at a tie and CSE swapped the operands
    # (maximum is not commutative at -0 vs 0), and expm1(-0) was +0: 1/maximum(x, 0) and
    # 1/elu(x) at x = -0 were +inf on one backend, -inf on the other
    vals = np.array([-0.0, 0.0, 1.0, np.nan, -np.inf])
    A, B = (v.astype(dtype) for v in np.meshgrid(vals, vals))
    a, b = gc.input("a", A.shape, dtype), gc.input("b", B.shape, dtype)
    with np.errstate(divide="ignore"):
        for fn, ref in ((gc.maximum, np.maximum), (gc.minimum, np.minimum)):
            got = gc.compile([1 / fn(a, b), 1 / fn(b, a)], backend=backend)(a=A, b=B)
            np.testing.assert_array_equal(got[0], 1 / ref(A, B))
            np.testing.assert_array_equal(got[1], 1 / ref(B, A))
        x = gc.input("x", (2,), dtype)
        got = gc.compile(1 / gc.elu(x), backend=backend)(x=np.array([-0.0, 0.0], dtype))
        # relu(-0) is -0 and sign(-0) 0, as torch (the Numba kernels gave 0 and -0)
        relu, sign = gc.compile([1 / gc.relu(x), 1 / gc.sign(x)], backend=backend,
                                optimize=False)(x=np.array([-0.0, 0.0], dtype))
    np.testing.assert_array_equal(got, [-np.inf, np.inf])  # torch's elu too
    np.testing.assert_array_equal(relu, [-np.inf, np.inf])
    np.testing.assert_array_equal(sign, [np.inf, np.inf])


QUOTIENTS = {  # ops whose local derivative is a quotient, and a float32 subnormal x where
    # 1/x overflows but the gradient 0.25 * local does not
    "log": (gc.log, torch.log, lambda x: 1 / x, 1e-39),
    "log2": (gc.log2, torch.log2, lambda x: 1 / (x * np.log(2)), 1.5e-39),
    "log10": (gc.log10, torch.log10, lambda x: 1 / (x * np.log(10)), 1e-39),
    "div_a": (lambda x: x / 1e-39, lambda x: x / 1e-39, lambda x: 1 / 1e-39 + 0 * x, 1.0),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("name", list(QUOTIENTS))
def test_a_quotient_derivative_meets_the_upstream_before_its_division(name, fused, backend):
    # g * (1/x) at x = 1e-39 in float32 is 0.25 * inf = inf; torch divides, g / x, which is
    # 2.5e38 and finite: a local derivative n/d is applied as (g * n) / d
    ours, theirs, exact, tiny = QUOTIENTS[name]
    X = np.array([tiny, 2e-39, 1.0, 3.0], np.float32)
    x = gc.input("x", (4,))
    y = gc.mean(ours(x))
    if fused:  # fusing before autodiff: the fused group's derivative takes the same rule
        from graphc.passes.fusion import fusion
        y = fusion(gc.Graph(y)).outputs[0]
    got = gc.compile(gc.grad(y, x), backend=backend)(x=X)
    t = torch.tensor(X, requires_grad=True)
    theirs(t).mean().backward()
    want = exact(X.astype(np.float64)) / 4
    assert np.isfinite(want).all() and np.isfinite(t.grad.numpy()).all()
    np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-6)
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rsqrt_gradient_is_nan_where_its_value_is(backend, dtype):
    # rsqrt' = -1/(2 x**1.5) was -0 at x = -inf, where rsqrt is NaN (pow(-inf, 1.5) is inf):
    # written on the output, -y**3/2 (torch's formula), it is NaN there as the value is
    assert ew.rsqrt.derivatives == (-ew.rsqrt.out ** 3 / 2,)
    X = np.array([-np.inf, -4.0, -0.0, 0.0, 1e-30, 4.0, np.inf], dtype)
    x = gc.input("x", X.shape, dtype)
    y = gc.rsqrt(x)
    value, got = gc.compile([y, gc.grad(gc.sum(y), x)], backend=backend)(x=X)
    t = torch.tensor(X, requires_grad=True)
    torch.rsqrt(t).sum().backward()
    np.testing.assert_array_equal(got, t.grad.numpy())
    np.testing.assert_array_equal(np.isnan(got), np.isnan(value))
