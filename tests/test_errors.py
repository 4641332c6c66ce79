"""Construction errors: raised when the node is built, naming the op, the operand shapes and
the line of *this* file that made the mistake."""

import inspect
import os

import numpy as np
import pytest

import graphc as gc

HERE = os.path.basename(__file__)


def where_raised(info) -> int:
    """The line of this file from which the failing graphc call was made."""
    tb, line = info.tb, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == __file__:
            line = tb.tb_lineno
        tb = tb.tb_next
    assert line is not None
    return line


def assert_located(info, *words):
    """The message names each of ``words`` and this file's ``name:line`` of the call."""
    message = str(info.value)
    for w in words:
        assert w in message, f"{w!r} not in {message!r}"
    line = where_raised(info)
    assert f"{HERE}:{line}" in message, message
    assert f"{__file__}:{line}" in message or f"{HERE}:{line}" in message


def test_location_is_the_line_of_the_call():
    a, b = gc.input("a", (2, 3)), gc.input("b", (4, 5))
    line = inspect.currentframe().f_lineno + 2
    with pytest.raises(gc.ShapeError) as info:
        a @ b
    assert f"{__file__}:{line}" in str(info.value)
    assert "a @ b" in str(info.value)  # the offending source line is quoted


def test_errors_are_graph_errors_and_builtin_kinds():
    assert issubclass(gc.ShapeError, gc.GraphError) and issubclass(gc.ShapeError, ValueError)
    assert issubclass(gc.DTypeError, gc.GraphError) and issubclass(gc.DTypeError, TypeError)
    assert issubclass(gc.ElementwiseError, gc.GraphError)


def _user_helper(a, b):
    return a @ b


def test_location_inside_a_user_helper_is_the_helper_line():
    a, b = gc.input("a", (2, 3)), gc.input("b", (4, 5))
    with pytest.raises(gc.ShapeError) as info:
        _user_helper(a, b)
    line = inspect.getsourcelines(_user_helper)[1] + 1
    assert f"{HERE}:{line}" in str(info.value)


# ---------------------------------------------------------------------------------------
# Shape errors


def test_matmul_inner_dimension_mismatch():
    a, b = gc.input("a", (2, 3)), gc.input("b", (4, 5))
    with pytest.raises(gc.ShapeError) as info:
        a @ b
    assert_located(info, "matmul", "(2, 3)", "(4, 5)")
    with pytest.raises(gc.ShapeError) as info:
        gc.matmul(a, b)
    assert_located(info, "matmul", "(2, 3)", "(4, 5)")


def test_batched_matmul_batch_mismatch():
    a, b = gc.input("a", (2, 2, 3)), gc.input("b", (3, 3, 4))
    with pytest.raises(gc.ShapeError) as info:
        a @ b
    assert_located(info, "matmul", "(2, 2, 3)", "(3, 3, 4)")


def test_vector_matmul_mismatch_names_the_user_shapes():
    # Regression: gc.matmul reshapes vectors to (1, n) / (n, 1); the message once named
    # those internal shapes instead of the user's (3,) and (4,).
    u, v = gc.input("u", (3,)), gc.input("v", (4,))
    with pytest.raises(gc.ShapeError) as info:
        u @ v
    assert_located(info, "matmul", "(3,)", "(4,)")


def test_matmul_of_a_scalar():
    a = gc.input("a", (2, 3))
    with pytest.raises(gc.ShapeError) as info:
        a @ 2.0
    assert_located(info, "matmul", "(2, 3)", "()")


@pytest.mark.parametrize("op, build", [
    ("add", lambda a, b: a + b), ("sub", lambda a, b: a - b), ("mul", lambda a, b: a * b),
    ("div", lambda a, b: a / b), ("maximum", gc.maximum), ("less", lambda a, b: a < b),
])
def test_broadcast_failure(op, build):
    a, b = gc.input("a", (2, 3)), gc.input("b", (4,))
    with pytest.raises(gc.ShapeError) as info:
        build(a, b)
    message = str(info.value)
    assert op in message and "(2, 3)" in message and "(4,)" in message
    # the call sits in this file, inside the lambda or gc.maximum's caller (this test)
    assert f"{HERE}:" in message


def test_broadcast_failure_against_a_numpy_array():
    a = gc.input("a", (2, 3))
    with pytest.raises(gc.ShapeError) as info:
        a + np.ones(4)
    assert_located(info, "add", "(2, 3)", "(4,)")


def test_reshape_size_mismatch():
    x = gc.input("x", (2, 3))
    with pytest.raises(gc.ShapeError) as info:
        gc.reshape(x, (4, 2))
    assert_located(info, "reshape", "(2, 3)", "(4, 2)")
    with pytest.raises(gc.ShapeError) as info:
        x.reshape(7)
    assert_located(info, "reshape", "(2, 3)", "(7,)")
    with pytest.raises(gc.ShapeError) as info:
        gc.reshape(x, (4, -1))
    assert_located(info, "reshape", "(2, 3)", "(4, -1)")


def test_broadcast_to_mismatch():
    x = gc.input("x", (2, 3))
    with pytest.raises(gc.ShapeError) as info:
        gc.broadcast_to(x, (3, 3))
    assert_located(info, "broadcast_to", "(2, 3)", "(3, 3)")


def test_concat_mismatch():
    x, y = gc.input("x", (2, 3)), gc.input("y", (2, 4))
    with pytest.raises(gc.ShapeError) as info:
        gc.concat([x, y], axis=0)
    assert_located(info, "concat", "(2, 3)", "(2, 4)")
    z = gc.input("z", (3,))
    with pytest.raises(gc.ShapeError) as info:
        gc.concat([x, z])
    assert_located(info, "concat", "(2, 3)", "(3,)")
    assert gc.concat([x, y], axis=1).shape == (2, 7)  # the same tensors fit along axis 1


def test_stack_mismatch():
    x, y = gc.input("x", (2, 3)), gc.input("y", (3, 2))
    with pytest.raises(gc.ShapeError) as info:
        gc.stack([x, y])
    assert_located(info, "stack", "(2, 3)", "(3, 2)")


@pytest.mark.parametrize("op, build", [
    ("sum", lambda x: gc.sum(x, axis=2)),
    ("max", lambda x: gc.max(x, axis=-3)),
    ("logsumexp", lambda x: gc.logsumexp(x, axis=5)),
    ("softmax", lambda x: gc.softmax(x, axis=2)),
    ("log_softmax", lambda x: gc.log_softmax(x, axis=-3)),
    ("concat", lambda x: gc.concat([x, x], axis=2)),
    ("transpose", lambda x: gc.transpose(x, (0, 2))),
])
def test_bad_axis(op, build):
    x = gc.input("x", (2, 3))
    with pytest.raises(gc.ShapeError) as info:
        build(x)
    message = str(info.value)
    assert op in message and "(2, 3)" in message and f"{HERE}:" in message


def test_bad_axis_location():
    x = gc.input("x", (2, 3))
    with pytest.raises(gc.ShapeError) as info:
        gc.sum(x, axis=3)
    assert_located(info, "sum", "axis 3", "(2, 3)")
    with pytest.raises(gc.ShapeError) as info:
        gc.sum(x, axis=(1, 1))
    assert_located(info, "sum", "(2, 3)")


@pytest.mark.parametrize("key, detail", [
    (2, "2"), (-3, "-3"), ((0, 3), "3"), ((0, 0, 0), "too many"), ((slice(None), [0, 3]), "3"),
])
def test_out_of_range_index(key, detail):
    x = gc.input("x", (2, 3))
    with pytest.raises(gc.ShapeError) as info:
        x[key]
    message = str(info.value)
    assert "index" in message and "(2, 3)" in message and detail in message
    assert f"{HERE}:" in message


def test_out_of_range_index_location():
    x = gc.input("x", (3,))
    with pytest.raises(gc.ShapeError) as info:
        x[5]
    assert_located(info, "index", "(3,)", "5")
    with pytest.raises(gc.ShapeError) as info:
        x[np.array([0, 7])]
    assert_located(info, "index", "(3,)", "7")


def test_non_integer_index():
    x = gc.input("x", (3,))
    with pytest.raises(gc.ShapeError) as info:
        x[1.5]
    assert_located(info, "index", "(3,)")


def test_loss_shape_mismatch():
    p, t = gc.input("p", (4, 2)), gc.input("t", (4,))
    with pytest.raises(gc.ShapeError) as info:
        gc.mse(p, t)
    assert_located(info, "mse", "(4, 2)", "(4,)")


# ---------------------------------------------------------------------------------------
# dtype errors


def test_bool_operands_to_add():
    a, b = gc.input("a", (2,), "bool"), gc.input("b", (2,), "bool")
    with pytest.raises(gc.DTypeError) as info:
        a + b
    assert_located(info, "add", "bool")
    with pytest.raises(gc.DTypeError) as info:
        gc.add(a, b)
    assert_located(info, "add", "bool")
    with pytest.raises(TypeError):  # DTypeError is a TypeError too
        a * b


def test_python_int_too_big_for_a_weak_int32():
    # BUG (reported): the weak scalar is converted with np.asarray(2**40, dtype="int32"),
    # and NumPy's bare OverflowError escapes without the op or the user's line.
    i = gc.input("i", (2,), "int32")
    with pytest.raises((gc.DTypeError, OverflowError)) as info:
        i + 2**40
    assert_located(info, "add", "int32")


def test_bool_operand_to_float_only_op():
    b = gc.input("b", (2,), "bool")
    with pytest.raises(gc.DTypeError) as info:
        gc.exp(b)
    assert_located(info, "exp", "bool")


def test_non_bool_condition_to_where():
    x = gc.input("x", (2,))
    with pytest.raises(gc.DTypeError) as info:
        gc.where(x, x, x)
    assert_located(info, "where", "bool", "float32")


def test_float_indices_to_take():
    x, i = gc.input("x", (4, 2)), gc.input("i", (3,))
    with pytest.raises(gc.DTypeError) as info:
        gc.take(x, i)
    assert_located(info, "take", "float32")


@pytest.mark.parametrize("dtype", ["floaty", "complex64", "float16", "uint8", "str"])
def test_bad_dtype_string(dtype):
    with pytest.raises(gc.DTypeError) as info:
        gc.input("x", (2,), dtype)
    assert_located(info, repr(dtype) if dtype != "str" else "'", "float32")


def test_bad_param_dtype():
    with pytest.raises(gc.DTypeError) as info:
        gc.param("w", (2,), dtype="int32")
    assert_located(info, "'w'", "int32")
    with pytest.raises(gc.DTypeError) as info:
        gc.param("w", (2,), dtype="nonsense")
    assert_located(info, "'w'", "nonsense")


# ---------------------------------------------------------------------------------------
# Leaf errors


@pytest.mark.parametrize("name", ["1x", "a b", "x-y", "", "class", "lambda", 3, None])
def test_bad_input_name(name):
    with pytest.raises(gc.GraphError) as info:
        gc.input(name, (2,))
    assert_located(info, repr(name), "identifier")


def test_bad_param_and_constant_names():
    with pytest.raises(gc.GraphError) as info:
        gc.param("my weight", (2,))
    assert_located(info, "'my weight'")
    with pytest.raises(gc.GraphError) as info:
        gc.constant([1.0, 2.0], name="2c")
    assert_located(info, "'2c'")


def test_bad_shape():
    with pytest.raises(gc.ShapeError) as info:
        gc.input("x", (2, -1))
    assert_located(info, "'x'", "(2, -1)")
    with pytest.raises(gc.ShapeError) as info:
        gc.input("x", None)
    assert_located(info, "'x'", "shape")


def test_shape_entries_must_be_integers():
    # Regression: shapes were once converted with int(), so (2.5, 3) was silently truncated
    # to (2, 3) and "abc" escaped as a bare ValueError with no location.
    with pytest.raises(gc.ShapeError) as info:
        gc.input("x", "abc")
    assert_located(info, "'x'", "shape")
    with pytest.raises(gc.ShapeError) as info:
        gc.input("x", (2.5, 3))
    assert_located(info, "'x'", "2.5")


def test_unknown_init():
    with pytest.raises(gc.GraphError) as info:
        gc.param("W", (3, 2), init="glorot")
    assert_located(info, "'W'", "'glorot'", "xavier_normal", "he_uniform", "callable")


def test_callable_init_of_wrong_shape():
    W = gc.param("W_badinit", (3, 2), init=lambda shape, rng: np.zeros((2, 3)))
    with pytest.raises(gc.GraphError, match="W_badinit"):
        gc.init_params(W)


def test_constant_of_a_tensor():
    x = gc.input("x", (2,))
    with pytest.raises(gc.GraphError) as info:
        gc.constant(x)
    assert_located(info, "Tensor")


def test_non_tensor_arguments_are_graphc_errors_at_the_users_line():
    # plain TypeErrors from inside graphc before, without the op or the user's line
    a = gc.input("a", (3,))
    cases = [(lambda: a + "x", r"add: cannot use str 'x' as an operand"),
             (lambda: a * None, r"mul: cannot use NoneType None as an operand"),
             (lambda: gc.grad(gc.sum(a), np.ones(3)), r"wrt must hold graphc Tensors"),
             (lambda: gc.grad(3.0, a), r"grad: y must be a graphc Tensor, got float"),
             (lambda: gc.compile([a, 3.0]), r"graph outputs must be a graphc Tensor")]
    for make, message in cases:
        with pytest.raises(gc.DTypeError, match=message) as err:
            make()
        assert isinstance(err.value, TypeError) and __file__ in str(err.value), str(err.value)
    p = gc.param("w", (2, 3), init=lambda shape, rng: np.ones((3, 2)))
    with pytest.raises(gc.GraphError, match=r"init returned shape \(3, 2\)") as err:
        gc.init_params([p])
    assert __file__ in str(err.value)


def test_a_misspelled_feed_is_named_with_the_missing_one():
    f = gc.compile(gc.input("x", (3,)) * 2, backend="numpy")
    with pytest.raises(gc.FeedError, match=r"missing feed\(s\) for 'x'.*unknown feed 'X'"):
        f(X=np.ones(3, np.float32))


def test_scan_of_something_that_is_not_a_function_names_it():
    with pytest.raises(gc.DTypeError, match="scan: fn must be a function") as err:
        gc.scan(None, gc.input("h0", (2,)), gc.input("xs", (3, 2)))
    assert __file__ in str(err.value)


@pytest.mark.parametrize("call, error, text", [
    (lambda y, x: gc.grad(y, None), gc.DTypeError, "grad: wrt must be a graphc Tensor"),
    (lambda y, x: gc.grad(y, 3.0), gc.DTypeError, "grad: wrt must be a graphc Tensor"),
    (lambda y, x: gc.grad(y, []), gc.GraphError, "grad: wrt is empty"),
    (lambda y, x: gc.hvp(y, [x], None), gc.DTypeError, "hvp: v must be a list"),
    (lambda y, x: gc.vjp(x * 2, x, "a"), gc.DTypeError, "vjp: cotangent must be"),
])
def test_bad_wrt_v_or_cotangent_is_a_graphc_error_at_the_users_line(call, error, text):
    x = gc.input("x", (2,))
    with pytest.raises(error, match=text) as info:
        call(gc.sum(x * x), x)
    assert "test_errors.py" in str(info.value)
