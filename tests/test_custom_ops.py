"""Custom elementwise ops (graphc/elementwise_ops.py): declared by a SymPy expression, used
like built-ins, derivatives derived by SymPy, bad definitions rejected helpfully.

The op registry is global, so every op here has a name starting with ``t_custom_``."""

import numpy as np
import pytest
import sympy as sp

import graphc as gc

RNG = np.random.default_rng(1234)


def run(outputs, **feeds):
    return gc.compile(outputs, backend="numpy")(**feeds)


cube = gc.elementwise("t_custom_cube", lambda x: x**3 - 2 * x)
hypot = gc.elementwise("t_custom_hypot", lambda a, b: sp.sqrt(a**2 + b**2))
fma = gc.elementwise("t_custom_fma", lambda a, b, c: a * b + sp.sin(c))
mish = gc.elementwise("t_custom_mish", lambda x: x * sp.tanh(sp.log(1 + sp.exp(x))))
leaky = gc.elementwise("t_custom_leaky",
                       lambda x, alpha=0.5: sp.Piecewise((x, x > 0), (alpha * x, True)))
scaled_tanh = gc.elementwise("t_custom_scaled_tanh",
                             lambda x, a=1.7159, b=2 / 3: a * sp.tanh(b * x))
softsign = gc.elementwise("t_custom_softsign", lambda x: x / (1 + sp.Abs(x)))
expm = gc.elementwise("t_custom_exp2x", lambda x: sp.exp(2 * x))


# ---------------------------------------------------------------------------------------
# Use like built-ins


def test_definition_attributes():
    assert isinstance(cube, gc.ElementwiseDef)
    assert (cube.name, cube.arity, hypot.arity, fma.arity) == ("t_custom_cube", 1, 2, 3)
    assert cube.expr == cube.args[0] ** 3 - 2 * cube.args[0]
    assert [str(a) for a in fma.args] == ["a", "b", "c"]
    assert leaky.params == {"alpha": 0.5}
    assert isinstance(cube.text, str) and isinstance(cube.latex, str)
    assert "t_custom_cube" in repr(cube)


def test_unary_op_forward():
    x = gc.input("x", (2, 5))
    X = RNG.standard_normal((2, 5)).astype(np.float32)
    t = cube(x)
    assert (t.shape, t.dtype, t.op.name) == ((2, 5), "float32", "t_custom_cube")
    np.testing.assert_allclose(run(t, x=X), X**3 - 2 * X, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run(mish(x), x=X), X * np.tanh(np.log1p(np.exp(X))),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run(softsign(x), x=X), X / (1 + np.abs(X)), rtol=1e-6)


def test_binary_op_forward_with_broadcasting_and_scalars():
    a, b = gc.input("a", (3, 4)), gc.input("b", (4,))
    A = RNG.standard_normal((3, 4)).astype(np.float32)
    B = RNG.standard_normal(4).astype(np.float32)
    t = hypot(a, b)
    assert t.shape == (3, 4)
    np.testing.assert_allclose(run(t, a=A, b=B), np.hypot(A, B), rtol=1e-6)
    np.testing.assert_allclose(run(hypot(a, 3.0), a=A), np.hypot(A, 3.0), rtol=1e-6)
    np.testing.assert_allclose(run(hypot(4.0, b), b=B), np.hypot(4.0, B), rtol=1e-6)
    assert hypot(a, 3.0).dtype == "float32"  # a weak scalar, as for built-ins


def test_ternary_op_forward():
    a, b, c = gc.input("a", (2, 3)), gc.input("b", (3,)), gc.input("c", (2, 1), "float64")
    A = RNG.standard_normal((2, 3)).astype(np.float32)
    B = RNG.standard_normal(3).astype(np.float32)
    C = RNG.standard_normal((2, 1))
    t = fma(a, b, c)
    assert (t.shape, t.dtype) == ((2, 3), "float64")
    np.testing.assert_allclose(run(t, a=A, b=B, c=C), A.astype(np.float64) * B + np.sin(C),
                               rtol=1e-12)
    np.testing.assert_allclose(run(fma(a, 2.0, 0.5), a=A), A * 2 + np.sin(0.5), rtol=1e-6)


def test_custom_ops_compose_with_built_ins():
    x, W = gc.input("x", (4, 3)), gc.param("W", (3, 2))
    y = gc.sum(mish(x @ W) * cube(x[:, :2]))
    X = RNG.standard_normal((4, 3)).astype(np.float32)
    Wv = RNG.standard_normal((3, 2)).astype(np.float32)
    h = X @ Wv
    want = np.sum(h * np.tanh(np.log1p(np.exp(h))) * (X[:, :2] ** 3 - 2 * X[:, :2]))
    np.testing.assert_allclose(run(y, x=X, W=Wv), want, rtol=1e-5)
    assert "t_custom_mish(" in gc.format_graph(y)
    ops = {d["op"] for _, d in gc.to_networkx(y).nodes(data=True)}
    assert {"t_custom_mish", "t_custom_cube", "matmul"} <= ops
    gc.check_graph(y)


def test_custom_op_nodes_are_interned():
    x = gc.input("x", (3,))
    assert cube(x) is cube(x)
    assert leaky(x) is leaky(x, alpha=0.5)
    assert leaky(x, alpha=0.1) is not leaky(x)


def test_integer_inputs_give_float32():
    i = gc.input("i", (3,), "int32")
    assert cube(i).dtype == "float32"
    np.testing.assert_allclose(run(cube(i), i=np.array([1, 2, 3], np.int32)), [-1, 4, 21])


def test_keyword_params_default_and_override():
    x = gc.input("x", (6,))
    X = np.array([-3.0, -1.0, -0.5, 0.0, 0.5, 2.0], np.float32)
    default, custom = run([leaky(x), leaky(x, alpha=0.1)], x=X)
    np.testing.assert_allclose(default, np.where(X > 0, X, 0.5 * X))
    np.testing.assert_allclose(custom, np.where(X > 0, X, 0.1 * X), rtol=1e-6)
    assert leaky(x, alpha=2).op.params == (("alpha", 2.0),)  # ints are numbers too
    two = run(scaled_tanh(x, b=1.0), x=X)
    np.testing.assert_allclose(two, 1.7159 * np.tanh(X), rtol=1e-6)
    both = run(scaled_tanh(x, a=2.0, b=0.5), x=X)
    np.testing.assert_allclose(both, 2.0 * np.tanh(0.5 * X), rtol=1e-6)
    assert "alpha=0.1" in gc.format_graph(leaky(x, alpha=0.1))


def test_keyword_only_params():
    # Regression: keyword-only parameters (lambda x, *, alpha=0.5: ...) were once passed
    # positionally, failing with a message about np.exp that pointed at the wrong mistake.
    op = gc.elementwise("t_custom_kwonly", lambda x, *, alpha=0.5: alpha * x)
    x = gc.input("x", (2,))
    got = run(op(x, alpha=3.0), x=np.array([1.0, 2.0], np.float32))
    np.testing.assert_allclose(got, [3.0, 6.0])
    with pytest.raises(gc.ElementwiseError, match="alpha"):  # no default: not a parameter
        gc.elementwise("t_custom_kwonly_nodefault", lambda x, *, alpha: alpha * x)


def test_bad_param_values_at_call():
    x = gc.input("x", (2,))
    with pytest.raises(gc.ElementwiseError, match="beta"):
        leaky(x, beta=1.0)
    with pytest.raises(gc.ElementwiseError, match="alpha"):
        leaky(x, alpha="big")
    with pytest.raises(gc.ElementwiseError, match="alpha"):
        leaky(x, alpha=float("inf"))
    with pytest.raises(gc.ElementwiseError, match="alpha"):
        leaky(x, alpha=True)
    with pytest.raises(gc.ElementwiseError, match="alpha"):
        leaky(x, alpha=x)  # a tensor parameter would be prelu


# ---------------------------------------------------------------------------------------
# Derivatives


def d_in_terms_of_args(op, k):
    """op.derivatives[k] with the output symbol replaced by the op's expression."""
    return op.derivatives[k].subs(op.out, op.expr)


def check_derivatives(op, low=-2.0, high=2.0, params=None, n=6):
    assert isinstance(op.derivatives, tuple) and len(op.derivatives) == op.arity
    assert all(isinstance(d, sp.Expr) for d in op.derivatives)
    subs_params = {s: (params or op.params)[s.name] for s in op.param_symbols}
    for k, arg in enumerate(op.args):
        want = sp.diff(op.expr, arg)
        got = d_in_terms_of_args(op, k)
        for _ in range(n):
            point = {a: sp.Float(RNG.uniform(low, high)) for a in op.args}
            point.update(subs_params)
            w = complex(want.subs(point).evalf())
            g = complex(got.subs(point).evalf())
            assert abs(g - w) <= 1e-9 * (1 + abs(w)), (op.name, arg, point, g, w)


@pytest.mark.parametrize("op", [cube, hypot, fma, mish, leaky, scaled_tanh, softsign, expm],
                         ids=lambda op: op.name)
def test_custom_derivatives_match_sympy_diff(op):
    low = 0.1 if op is hypot else -2.0
    check_derivatives(op, low=low)
    if op.params:
        check_derivatives(op, params={k: 0.3 + v for k, v in op.params.items()})


@pytest.mark.parametrize("op", [gc.exp, gc.log, gc.sqrt, gc.tanh, gc.sigmoid, gc.sin, gc.cos,
                                gc.softplus, gc.silu, gc.reciprocal, gc.square, gc.abs,
                                gc.relu, gc.div, gc.power, gc.maximum, gc.minimum],
                         ids=lambda op: op.name)
def test_built_in_derivatives_match_sympy_diff(op):
    positive = op in (gc.log, gc.sqrt, gc.power, gc.reciprocal)
    check_derivatives(op, low=0.2 if positive else -2.0, high=2.0)


def test_built_in_derivative_forms_use_the_output():
    y = gc.sigmoid.out
    assert isinstance(y, sp.Symbol)
    assert gc.sigmoid.derivatives == (y * (1 - y),)
    assert gc.tanh.derivatives == (1 - gc.tanh.out**2,)
    assert gc.exp.derivatives == (gc.exp.out,)
    assert gc.sigmoid.derivatives_text == ("y*(1 - y)",)
    assert sp.simplify(gc.sigmoid.derivatives[0].subs(y, gc.sigmoid.expr)
                       - sp.diff(gc.sigmoid.expr, gc.sigmoid.args[0])) == 0
    # an exp-like custom op is rewritten in its output too: d exp(2x) = 2y
    assert expm.derivatives == (2 * expm.out,)


def test_output_symbol_does_not_clash_with_an_argument_named_y():
    op = gc.elementwise("t_custom_exp_of_y", lambda y: sp.exp(y))
    assert op.out != op.args[0]
    (d,) = op.derivatives
    assert d.subs(op.out, op.expr).equals(sp.exp(op.args[0]))


def test_relu_derivative_at_zero_is_zero():
    (d,) = gc.relu.derivatives_x
    x = gc.relu.args[0]
    assert d.subs(x, 0) == 0
    assert d.subs(x, sp.Rational(1, 10**6)) == 1
    assert d.subs(x, -1) == 0
    # written on the output (y > 0 exactly where x > 0), so the backward reads y, not x
    (dy,) = gc.relu.derivatives
    assert dy.free_symbols == {gc.relu.out}
    for v in (-1, 0, sp.Rational(1, 10**6), 3):
        assert dy.subs(gc.relu.out, gc.relu.expr.subs(x, v)) == d.subs(x, v)
    (d,) = leaky.derivatives
    assert d.subs({leaky.args[0]: 0, leaky.param_symbols[0]: sp.Rational(1, 2)}) == \
        sp.Rational(1, 2)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_simplified_derivatives_evaluate_on_the_reals(backend):
    """sympy.simplify's forms are equal over the complex numbers: d/dx sqrt(|x|) became
    x / (2 |x**(3/2)|), NaN for every x < 0 in real arithmetic, and d/da of a b / (a + b)
    became b**2 / (a + b)**2, NaN at b = 2e19 in float32.  Such a form is not taken."""
    torch = pytest.importorskip("torch")
    X = np.array([-4.0, -1.0, 1.0, 4.0])
    for name, fn, ref in [
            ("sqrt_abs_t", lambda a: sp.sqrt(sp.Abs(a)), lambda t: t.abs().sqrt()),
            ("abs_pow_t", lambda a: sp.Abs(a) ** sp.Rational(3, 2), lambda t: t.abs() ** 1.5),
            ("signed_sqrt_t", lambda a: a * sp.sqrt(sp.Abs(a)), lambda t: t * t.abs().sqrt())]:
        x = gc.input("x", (4,), "float64")
        got = gc.compile(gc.grad(gc.sum(gc.elementwise(name, fn)(x)), x), backend=backend)(x=X)
        t = torch.tensor(X, requires_grad=True)
        ref(t).sum().backward()
        np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-12)
    harm = gc.elementwise("harm_t", lambda a, b: a * b / (a + b))
    a, b = gc.input("a", (2,)), gc.input("b", (2,))
    ga, gb = gc.compile(gc.grad(gc.sum(harm(a, b)), [a, b]), backend=backend)(
        a=np.array([0.0, 1.0], np.float32), b=np.array([2e19, 3e19], np.float32))
    np.testing.assert_allclose(ga, [1.0, 1.0])  # torch: 1, 1 (was NaN, NaN)
    assert np.isfinite(gb).all()


def test_a_stable_form_that_is_another_function_is_refused():
    """stable= is what every backend evaluates: x**3 given for x**2 was taken silently
    (values x**3, gradients 2x).  A stable form that is the op's own value is taken."""
    with pytest.raises(gc.ElementwiseError, match=r"'t_sq_or_cube': stable=a\*\*3 does "
                       r"not evaluate as a\*\*2"):
        gc.elementwise("t_sq_or_cube", lambda a: a**2, stable=lambda a: a**3)
    op = gc.elementwise("t_softplus_ok", lambda x, beta=2.0: sp.log(1 + sp.exp(beta * x)),
                        stable=lambda x, beta=2.0: sp.Max(beta * x, 0)
                        + sp.log(1 + sp.exp(-sp.Abs(beta * x))))
    x = gc.input("x", (2,), "float64")
    np.testing.assert_allclose(gc.compile(op(x), backend="numpy")(x=np.array([1e3, 0.0])),
                               [2e3, np.log(2)])


def test_derivative_text_and_latex():
    for op in [cube, hypot, fma, leaky, gc.sigmoid, gc.relu]:
        assert isinstance(op.derivatives_text, tuple) and len(op.derivatives_text) == op.arity
        assert isinstance(op.derivatives_latex, tuple) and len(op.derivatives_latex) == op.arity
        assert all(isinstance(s, str) and s for s in op.derivatives_text)
        assert all(isinstance(s, str) and s for s in op.derivatives_latex)
    assert cube.derivatives_text == ("3*x**2 - 2",)
    assert "x^{2}" in cube.derivatives_latex[0]
    assert fma.derivatives_text == ("b", "a", "cos(c)")


def test_derivatives_of_a_polynomial_op_are_exact():
    x = cube.args[0]
    assert sp.expand(d_in_terms_of_args(cube, 0) - (3 * x**2 - 2)) == 0
    a, b, c = fma.args
    assert fma.derivatives == (b, a, sp.cos(c))


# ---------------------------------------------------------------------------------------
# Bad definitions


def test_wrong_arity_at_call():
    x = gc.input("x", (2,))
    with pytest.raises(gc.ElementwiseError, match=r"t_custom_hypot.*2.*1"):
        hypot(x)
    with pytest.raises(gc.ElementwiseError, match=r"t_custom_cube.*1.*2"):
        cube(x, x)
    with pytest.raises(gc.ElementwiseError, match="t_custom_fma"):
        fma()


def test_wrong_arity_message_names_the_call_site():
    x = gc.input("x", (2,))
    with pytest.raises(gc.ElementwiseError) as info:
        cube(x, x)
    assert "test_custom_ops.py:" in str(info.value)


@pytest.mark.parametrize("fn", [lambda *xs: xs[0], lambda x, *rest: x,
                                lambda x, **kw: x])
def test_variadic_fn(fn):
    with pytest.raises(gc.ElementwiseError, match="fixed number of arguments"):
        gc.elementwise("t_custom_variadic", fn)


@pytest.mark.parametrize("fn, shown", [
    (lambda x: 1.5, "float"), (lambda x: "x + 1", "str"), (lambda x: None, "NoneType"),
    (lambda x: 2, "int"), (lambda x: [x, x], "list"), (lambda x: x > 0, "x > 0"),
    (lambda x: np.float64(1.0), "float"),
])
def test_fn_returning_a_non_sympy_value(fn, shown):
    with pytest.raises(gc.ElementwiseError, match="SymPy expression") as info:
        gc.elementwise("t_custom_not_sympy", fn)
    assert shown in str(info.value)
    assert "t_custom_not_sympy" in str(info.value)


def test_stray_free_symbols():
    with pytest.raises(gc.ElementwiseError, match="free symbols") as info:
        gc.elementwise("t_custom_stray", lambda x: x + sp.Symbol("z"))
    assert "'z'" in str(info.value) or "z" in str(info.value).split("free symbols")[1]


def test_numpy_function_on_a_symbol():
    with pytest.raises(gc.ElementwiseError) as info:
        gc.elementwise("t_custom_np", lambda x: np.exp(x))
    message = str(info.value)
    assert "sp.exp" in message and "t_custom_np" in message


def test_fn_that_raises():
    def bad(x):
        raise RuntimeError("boom")

    with pytest.raises(gc.ElementwiseError, match="boom"):
        gc.elementwise("t_custom_raises", bad)


def test_undefined_sympy_function():
    f = sp.Function("f")
    with pytest.raises(gc.ElementwiseError, match="undefined") as info:
        gc.elementwise("t_custom_undefined", lambda x: f(x) + 1)
    assert "f(x)" in str(info.value)


def test_complex_or_non_closed_form():
    with pytest.raises(gc.ElementwiseError):
        gc.elementwise("t_custom_complex", lambda x: sp.I * x)
    with pytest.raises(gc.ElementwiseError):
        gc.elementwise("t_custom_deriv", lambda x: sp.Derivative(sp.exp(x**2), x, evaluate=False)
                       * sp.Function("g")(x))


def test_other_bad_declarations():
    with pytest.raises(gc.ElementwiseError, match="identifier"):
        gc.elementwise("t custom", lambda x: x)
    with pytest.raises(gc.ElementwiseError, match="callable"):
        gc.elementwise("t_custom_notfn", 3.0)
    with pytest.raises(gc.ElementwiseError, match="no tensor argument"):
        gc.elementwise("t_custom_noargs", lambda alpha=1.0: sp.Float(alpha))
    with pytest.raises(gc.ElementwiseError, match="number"):
        gc.elementwise("t_custom_badparam", lambda x, alpha="a": x)


def test_name_clash():
    first = gc.elementwise("t_custom_clash", lambda x: x**2 + 1)
    again = gc.elementwise("t_custom_clash", lambda x: x**2 + 1)
    assert again is first  # re-running the same definition is harmless
    with pytest.raises(gc.ElementwiseError, match="t_custom_clash") as info:
        gc.elementwise("t_custom_clash", lambda x: x**2 + 2)
    assert "already" in str(info.value)
    x = gc.input("x", (2,))
    np.testing.assert_allclose(run(first(x), x=np.array([1.0, 2.0], np.float32)), [2.0, 5.0])


def test_name_clash_with_a_built_in():
    with pytest.raises(gc.ElementwiseError, match="sigmoid"):
        gc.elementwise("sigmoid", lambda x: sp.tanh(x))
    with pytest.raises(gc.ElementwiseError, match="add"):
        gc.elementwise("add", lambda a, b: a * b)
    assert gc.elementwise("exp", lambda x: sp.exp(x)) is gc.exp


@pytest.mark.parametrize("name, fn", [("t_exp200", lambda x: sp.exp(200 * x)),
                                      ("t_pow1000", lambda x: x**1000),
                                      ("t_sinh200", lambda x: sp.sinh(200 * x))])
def test_an_op_with_huge_values_is_differentiated(name, fn):
    # the search for a derivative written in the output squared values near 1e295 at its
    # sample points: an OverflowError, reported as "SymPy cannot differentiate"
    op = gc.elementwise(name, fn)
    x = sp.Symbol("x", real=True)
    (d,) = op.derivatives
    assert sp.simplify(d.subs(op.args[0], x) - sp.diff(fn(x), x)) == 0 or \
        sp.simplify(d.subs({op.args[0]: x, op.out: fn(x)}) - sp.diff(fn(x), x)) == 0


def test_a_derivative_is_not_guarded_where_nothing_is_singular():
    # x / sqrt(x**2 + 1) was guarded as Piecewise((0, Eq(x, 0)), ...) as if 1/sqrt(...) could
    # be infinite; differentiated again, the guard made f''(0) = 0 where it is 1
    f = gc.elementwise("t_sqrt_x2_plus_1", lambda x: sp.sqrt(x * x + 1))
    assert not f.derivatives[0].has(sp.Piecewise)
    x = gc.input("x", (3,), "float64")
    second = gc.grad(gc.sum(gc.grad(gc.sum(f(x)), x)), x)
    X = np.array([0.0, 1e-8, 0.5])
    for backend in ("numpy", "numba"):
        np.testing.assert_allclose(gc.compile(second, backend=backend)(x=X),
                                   (X * X + 1) ** -1.5, rtol=1e-14)
