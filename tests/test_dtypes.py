"""dtype rules (graphc/dtypes.py, docs/dtypes.md): promotion order, weak Python scalars,
strong NumPy arrays, bool comparisons, float-only ops."""

import itertools

import numpy as np
import pytest

import graphc as gc
from graphc import dtypes

ORDER = ["bool", "int32", "int64", "float32", "float64"]
NUMERIC = ORDER[1:]


def leaf(dtype, name=None, shape=(3,)):
    return gc.input(name or f"x_{dtype}", shape, dtype)


def sample(dtype, shape=(3,)):
    return {"bool": np.array([True, False, True]), "int32": np.array([1, -2, 3], np.int32),
            "int64": np.array([4, 5, -6], np.int64),
            "float32": np.array([0.5, -1.25, 2.0], np.float32),
            "float64": np.array([0.1, 0.2, -0.3], np.float64)}[dtype].reshape(shape)


def run(outputs, **feeds):
    return gc.compile(outputs, backend="numpy")(**feeds)


def test_dtype_names():
    assert dtypes.DTYPES == tuple(ORDER)
    for d in ORDER:
        assert leaf(d).dtype == d
        assert gc.input("y", (1,), np.dtype(d)).dtype == d
    assert gc.input("y", (1,), np.float64).dtype == "float64"
    assert gc.input("y", (1,)).dtype == "float32"  # the default


@pytest.mark.parametrize("a, b", list(itertools.product(ORDER, ORDER)))
def test_promote_is_the_larger_in_the_total_order(a, b):
    want = ORDER[max(ORDER.index(a), ORDER.index(b))]
    assert dtypes.promote(a, b) == want


@pytest.mark.parametrize("a, b", list(itertools.product(NUMERIC, NUMERIC)))
def test_binary_ops_promote_numeric_tensors(a, b):
    want = ORDER[max(ORDER.index(a), ORDER.index(b))]
    x, y = leaf(a, "x"), leaf(b, "y")
    for t in [x + y, x - y, x * y, gc.maximum(x, y), gc.minimum(x, y)]:
        assert t.dtype == want, (t.op.name, a, b)
    assert gc.matmul(leaf(a, "m", (2, 2)), leaf(b, "n", (2, 2))).dtype == want
    assert gc.concat([x, y]).dtype == want
    X, Y = sample(a), sample(b)
    got = run(x * y + x, x=X, y=Y)
    assert got.dtype == np.dtype(want)
    np.testing.assert_allclose(got, (X.astype(want) * Y.astype(want) + X.astype(want)),
                               rtol=1e-6)


def test_int64_plus_float32_is_float32():
    i, f = leaf("int64"), leaf("float32")
    assert (i + f).dtype == "float32" and (f + i).dtype == "float32"
    got = run(i + f, x_int64=sample("int64"), x_float32=sample("float32"))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, sample("int64") + sample("float32"))


@pytest.mark.parametrize("other", NUMERIC)
def test_bool_meets_a_numeric_tensor(other):
    # docs/dtypes.md: bool + int32 -> int32 and so on; only bool with bool is an error.
    # (Regression: arithmetic ops once raised DTypeError for any bool operand.)
    b, x = leaf("bool", "b"), leaf(other, "x")
    assert (b + x).dtype == other
    assert (x * b).dtype == other
    got = run(b + x, b=sample("bool"), x=sample(other))
    np.testing.assert_allclose(got, sample("bool") + sample(other))


def test_bool_with_bool_arithmetic_is_an_error():
    b, c = leaf("bool", "b"), leaf("bool", "c")
    with pytest.raises(gc.DTypeError):
        b + c
    with pytest.raises(gc.DTypeError):
        b * c
    assert gc.cast(b, "float32").dtype == "float32"  # the documented way out
    assert (gc.cast(b, "float32") + gc.cast(c, "float32")).dtype == "float32"


# ---------------------------------------------------------------------------------------
# Weak Python scalars, strong NumPy arrays


@pytest.mark.parametrize("dtype, scalar, want", [
    ("float32", 2.0, "float32"), ("float32", 2, "float32"), ("float32", True, "float32"),
    ("float64", 2.0, "float64"), ("float64", 3, "float64"),
    ("int32", 1, "int32"), ("int64", 1, "int64"), ("int32", True, "int32"),
    ("int32", 0.5, "float32"), ("int64", 0.5, "float32"),
    ("float32", np.float64(2.0), "float32"), ("int32", np.int64(2), "int32"),
    ("int32", np.float64(0.5), "float32"),
])
def test_python_scalars_are_weak(dtype, scalar, want):
    x = leaf(dtype, "x")
    for t in [x * scalar, scalar * x, x + scalar, scalar - x, gc.maximum(x, scalar)]:
        assert t.dtype == want, (t.op.name, dtype, scalar)


def test_weak_scalar_values():
    f, i = leaf("float32", "f"), leaf("int32", "i")
    F, In = sample("float32"), sample("int32")
    got = run([f * 2.0, i + 1, i * 0.5, 1 - i, f * 3], f=F, i=In)
    want = [F * np.float32(2), In + np.int32(1), In.astype(np.float32) * np.float32(0.5),
            np.int32(1) - In, F * np.float32(3)]
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("dtype, array_dtype, want", [
    ("float32", np.float64, "float64"), ("float32", np.float32, "float32"),
    ("int32", np.int64, "int64"), ("int32", np.int32, "int32"),
    ("int32", np.float32, "float32"), ("int64", np.float32, "float32"),
    ("float64", np.float32, "float64"), ("float32", np.int64, "float32"),
])
def test_numpy_arrays_are_strong(dtype, array_dtype, want):
    x = leaf(dtype, "x")
    arr = np.ones(3, array_dtype)
    assert (x + arr).dtype == want
    assert (arr * x).dtype == want


def test_numpy_array_values_keep_their_precision():
    x = leaf("float32", "x")
    arr = np.array([1e-10, 0.0, 1.0])  # float64: the result is float64
    got = run(x + arr, x=np.zeros(3, np.float32))
    assert got.dtype == np.float64
    assert got[0] == 1e-10


def test_constants():
    assert gc.constant(1.5).dtype == "float32"
    assert gc.constant([1.0, 2.0]).dtype == "float32"
    assert gc.constant(3).dtype == "int64"
    assert gc.constant([1, 2]).dtype == "int64"
    assert gc.constant(True).dtype == "bool"
    assert gc.constant(np.array([1.0])).dtype == "float64"
    assert gc.constant(np.array([1], np.int32)).dtype == "int32"
    assert gc.constant(1.5, dtype="float64").dtype == "float64"
    with pytest.raises(gc.DTypeError):
        gc.constant(np.array([1 + 2j]))


# ---------------------------------------------------------------------------------------
# Result dtypes of ops


@pytest.mark.parametrize("dtype", ORDER)
def test_comparisons_give_bool(dtype):
    x = leaf(dtype, "x") if dtype != "bool" else gc.cast(leaf("bool", "x"), "int32")
    y = leaf("float64", "y")
    for t in [x < y, x <= 1, x > 0.5, x >= y, gc.equal(x, y), gc.not_equal(x, 2)]:
        assert t.dtype == "bool"
    got = run([x < 2, x >= y], x=sample(dtype), y=sample("float64"))
    for g in got:
        assert g.dtype == np.bool_


@pytest.mark.parametrize("dtype", ["int32", "int64"])
@pytest.mark.parametrize("fn, ref", [
    (gc.exp, np.exp), (gc.log, np.log), (gc.sqrt, np.sqrt), (gc.sigmoid, None),
    (gc.tanh, np.tanh), (gc.sin, np.sin), (gc.reciprocal, lambda a: 1 / a),
    (lambda t: t / 2, lambda a: a / 2), (lambda t: t / t, lambda a: a / a),
    (gc.softplus, None), (gc.gelu, None), (gc.mean, np.mean), (gc.softmax, None),
])
def test_float_only_ops_on_ints_give_float32(dtype, fn, ref):
    x = leaf(dtype, "x")
    t = fn(x)
    assert t.dtype == "float32"
    X = np.array([1, 2, 9], dtype)
    got = run(t, x=X)
    assert got.dtype == np.float32
    if ref is not None:
        np.testing.assert_allclose(got, ref(X.astype(np.float64)), rtol=1e-6)


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_polynomial_ops_keep_integer_dtypes(dtype):
    x, y = leaf(dtype, "x"), leaf(dtype, "y")
    c = leaf("bool", "c")
    for t in [x + y, x - y, x * y, -x, gc.square(x), gc.abs(x), gc.relu(x),
              gc.maximum(x, y), gc.minimum(x, y), gc.where(c, x, y), gc.max(x)]:
        assert t.dtype == dtype, t.op.name
    assert gc.sum(x).dtype == "int64"  # as NumPy and torch: an int32 sum does not wrap


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_an_int32_sum_is_int64_and_does_not_wrap(backend):
    i = leaf("int32", "i")
    X = np.full(3, 2_000_000_000, np.int32)
    for t in (gc.sum(i), gc.sum(i, axis=0, keepdims=True)):
        got = gc.compile(t, backend=backend)(i=X)
        assert got.dtype == np.int64 and int(got.sum()) == 6_000_000_000 == int(np.sum(X))


def test_sum_of_bool_counts():
    # Regression: Reduce.evaluate once passed {"sum": np.int64} to np.sum for bool input,
    # so running gc.sum on a bool tensor raised TypeError.
    b = leaf("bool", "b")
    assert gc.sum(b).dtype == "int64"
    assert run(gc.sum(b), b=sample("bool")) == 2


def test_float64_stays_float64():
    x = leaf("float64", "x")
    for t in [gc.exp(x), x / 3, gc.mean(x), gc.softmax(x), x * 0.5, gc.sigmoid(x)]:
        assert t.dtype == "float64"
    got = run(x / 3, x=sample("float64"))
    np.testing.assert_array_equal(got, sample("float64") / 3)


def test_cast():
    x = leaf("float32", "x")
    assert gc.cast(x, "float32") is x
    assert gc.cast(x, "int32").dtype == "int32"
    assert x.astype("float64").dtype == "float64"
    got = run(gc.cast(x, "int32"), x=np.array([1.7, -2.5, 3.0], np.float32))
    np.testing.assert_array_equal(got, np.array([1, -2, 3], np.int32))


@pytest.mark.parametrize("make", [
    lambda i, f: gc.remainder(i, 2.5), lambda i, f: gc.fmod(i, 2.5),
    lambda i, f: gc.remainder(2.5, i), lambda i, f: gc.remainder(i, f),
    lambda i, f: gc.fmod(f, i)])
def test_remainder_and_fmod_promote_as_graphc_does(make):
    """int with float32 gives float32 (docs/dtypes.md), not NumPy's float64."""
    i, f = gc.input("i", (3,), "int32"), gc.input("f", (3,))
    out = make(i, f)
    assert out.dtype == "float32"
    got = gc.compile(out, backend="numpy")(**{k: v for k, v in (
        ("i", np.array([5, -7, 9], np.int32)), ("f", np.array([2.5, 3.0, -4.0], np.float32)))
        if k in {t.name for t in gc.Graph([out]).inputs}})
    assert got.dtype == np.float32


def test_clip_of_an_integer_tensor_with_integer_bounds_keeps_its_dtype():
    x = gc.input("x", (4,), "int32")
    v = np.array([3, -7, 0, 12], np.int32)
    for out, want in ((gc.clip(x, -1, 2), np.clip(v, -1, 2)),
                      (gc.clip(x, min=0), np.clip(v, 0, None)),
                      (gc.clip(x, max=1), np.clip(v, None, 1)),
                      (gc.clip(x, 2, -1), np.full(4, -1))):
        assert out.dtype == "int32"
        np.testing.assert_array_equal(gc.compile(out, backend="numpy")(x=v), want)
    assert gc.clip(x, -0.5, 2).dtype == "float32"  # a float bound promotes, as torch.clamp


def test_unsupported_dtypes_are_dtype_errors_at_the_users_line():
    x = gc.input("x", (2,))
    for make, op in ((lambda: x * np.ones(2, np.float16), "mul"),
                     (lambda: gc.cast(x, "uint8"), "cast"),
                     (lambda: gc.remainder(gc.input("b", (2,), "bool"), 2), "remainder")):
        with pytest.raises(gc.DTypeError, match=op) as info:
            make()
        assert "test_dtypes.py" in str(info.value)
