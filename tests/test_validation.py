"""Validation of user input (issue 13, "hardening"): each mistake is refused where it is
made, with an error naming the op, the bad value and the line of *this* file; feeds that
belong to the graph are accepted and typos refused; labels are checked at call time."""

import inspect
import os

import numpy as np
import pytest

import graphc as gc

HERE = os.path.basename(__file__)


def assert_located(info, *words):
    """The message names each of ``words`` and the line of this file that called graphc."""
    message = str(info.value)
    for w in words:
        assert w in message, f"{w!r} not in {message!r}"
    tb, line = info.tb, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == __file__:
            line = tb.tb_lineno
        tb = tb.tb_next
    assert f"{HERE}:{line}" in message, message


# ---------------------------------------------------------------------------------------
# Two different inputs or params with one name: refused where the graph joining them is built


def test_two_params_named_alike_are_refused_where_they_meet():
    a = gc.param("W_clash", (3, 2))
    first = inspect.currentframe().f_lineno - 1
    b = gc.param("W_clash", (4, 2))
    left, right = gc.sum(a), gc.sum(b)  # each graph on its own is fine
    with pytest.raises(gc.GraphError) as info:
        left + right
    assert_located(info, "add", "'W_clash'", "(3, 2)", "(4, 2)")
    assert f"{HERE}:{first}" in str(info.value)  # where the first one was made


def test_an_input_and_a_param_named_alike_are_refused_at_matmul():
    x = gc.input("x", (5, 3))
    with pytest.raises(gc.GraphError) as info:
        x @ gc.param("x", (3, 3))
    assert_located(info, "matmul", "'x'", "(5, 3)", "(3, 3)", "param")


def test_the_clash_is_found_deep_inside_both_graphs():
    h = gc.input("x", (4,), "float64")
    for _ in range(20):
        h = gc.tanh(h) * 2.0 + gc.param("b", (4,), dtype="float64")
    other = gc.exp(gc.input("b", (4,), "float64"))  # an input named like the param
    with pytest.raises(gc.GraphError) as info:
        gc.concat([h, other])
    assert_located(info, "concat", "'b'")


def test_init_params_of_outputs_side_by_side_refuses_the_clash():
    a, b = gc.param("W_side", (3, 2)), gc.param("W_side", (2, 2))
    with pytest.raises(gc.GraphError) as info:
        gc.init_params([gc.sum(a), gc.sum(b)])
    assert_located(info, "init_params", "'W_side'", "(3, 2)", "(2, 2)")


def test_one_node_used_twice_and_equal_params_are_fine():
    W = gc.param("W2", (3, 3))
    y = gc.sum(W @ W) + gc.sum(gc.param("W2", (3, 3)))  # interned: the same node
    assert set(gc.init_params(y)) == {"W2"}


# ---------------------------------------------------------------------------------------
# Feeds: names of the graph the outputs were built or differentiated from are accepted


def test_a_gradient_that_simplifies_to_a_constant_accepts_its_input():
    z = gc.input("z", (), "float64")
    f = gc.compile([gc.grad(1 + z, z)], backend="numpy")
    (g,) = f(z=np.float64(3.0))
    assert g == 1.0
    assert f() == (1.0,)  # and it needs no feed


def test_a_wrt_the_loss_does_not_read_may_be_fed_to_its_gradient():
    # feeding every wrt is what users do: 'a' was an unknown feed (probe)
    a, b = gc.input("a", (3,), "float64"), gc.input("b", (3,), "float64")
    ga, gb = gc.grad(gc.sum(b * 2.0), [a, b])
    for backend in ("numpy", "numba"):
        f = gc.compile([ga, gb], backend=backend)
        out = f(a=np.ones(3), b=np.ones(3))
        np.testing.assert_array_equal(out[0], np.zeros(3))
        with pytest.raises(gc.FeedError, match="feed 'a' has shape"):
            f(a=np.ones(4))


def test_a_typo_is_still_unknown_and_a_close_name_is_suggested():
    z = gc.input("zeta", (), "float64")
    f = gc.compile(gc.grad(1 + z, z), backend="numpy")
    with pytest.raises(gc.FeedError) as info:
        f(zetta=np.float64(3.0))
    assert "unknown feed 'zetta'" in str(info.value)
    assert "did you mean 'zeta'?" in str(info.value)
    with pytest.raises(gc.FeedError, match="unknown feed 'q'") as info:
        f(q=1.0)
    assert "did you mean" not in str(info.value)


def test_an_accepted_but_unused_feed_is_still_checked():
    z = gc.input("z", (), "float64")
    f = gc.compile(gc.grad(1 + z, z), backend="numpy")
    with pytest.raises(gc.FeedError, match="feed 'z' has shape"):
        f(z=np.ones(3))
    with pytest.raises(gc.FeedError, match="feed 'z' has dtype"):
        f(z=np.array(True))


def test_forward_inputs_are_accepted_by_a_gradient_that_does_not_need_them():
    x, w = gc.input("x", (3,), "float64"), gc.param("w", (3,), dtype="float64")
    loss = gc.sum(x * w)
    gw = gc.grad(loss, w)  # = x: w is no input of the gradient graph
    feeds = {"x": np.arange(3.0), "w": np.ones(3)}
    np.testing.assert_array_equal(gc.compile(gw, backend="numpy")(**feeds), feeds["x"])
    update = w - 0.1 * gw  # built from the gradient: still knows the forward graph
    np.testing.assert_allclose(gc.compile(update, backend="numpy")(**feeds),
                               1 - 0.1 * np.arange(3.0))
    with pytest.raises(gc.FeedError, match="missing"):
        gc.compile(gw, backend="numpy")(w=np.ones(3))  # x is needed


def test_hvp_of_a_linear_loss_accepts_the_forward_feeds():
    x, w = gc.input("x", (3,), "float64"), gc.param("w", (3,), dtype="float64")
    hv = gc.hvp(gc.sum(x * w), w, np.ones(3))  # zero: the loss is linear in w
    out = gc.compile(hv, backend="numpy")(x=np.ones(3), w=np.ones(3))
    np.testing.assert_array_equal(out, np.zeros(3))


def test_an_input_of_an_unrelated_graph_is_unknown():
    x, y = gc.input("x", (2,)), gc.input("y", (2,))
    f = gc.compile(x * 2.0, backend="numpy")
    assert y.shape == (2,)
    with pytest.raises(gc.FeedError, match="unknown feed 'y'"):
        f(x=np.ones(2, np.float32), y=np.ones(2, np.float32))


# ---------------------------------------------------------------------------------------
# Integer labels out of range are refused at call time, naming the input and the value


@pytest.mark.parametrize("loss", [gc.softmax_cross_entropy, gc.hinge])
@pytest.mark.parametrize("bad", [-1, 4, 100])
def test_labels_out_of_range_are_refused(loss, bad):
    logits, labels = gc.input("logits", (3, 4)), gc.input("targets", (3,), "int64")
    f = gc.compile(loss(logits, labels), backend="numpy")
    scores = np.zeros((3, 4), np.float32)
    assert np.isfinite(f(logits=scores, targets=np.array([0, 3, 2])))
    with pytest.raises(gc.FeedError) as info:
        f(logits=scores, targets=np.array([0, bad, 2]))
    message = str(info.value)
    assert f"feed 'targets' holds label {bad} at index (1,)" in message
    assert loss.__name__ in message and "4 classes" in message and "[0, 4)" in message


def test_labels_out_of_range_are_refused_by_the_numba_backend():
    logits, labels = gc.input("logits", (2, 3)), gc.input("labels", (2,), "int32")
    loss = gc.softmax_cross_entropy(logits, labels)
    f = gc.compile([loss, gc.grad(loss, logits)], backend="numba")
    with pytest.raises(gc.FeedError, match="feed 'labels' holds label 3 at index"):
        f(logits=np.zeros((2, 3), np.float32), labels=np.array([0, 3], np.int32))
    value, _ = f(logits=np.zeros((2, 3), np.float32), labels=np.array([0, 2], np.int32))
    assert value == pytest.approx(np.log(3.0))


def test_constant_labels_out_of_range_are_refused_when_built():
    with pytest.raises(gc.GraphError) as info:
        gc.softmax_cross_entropy(gc.input("logits", (2, 3)), np.array([0, 3]))
    assert_located(info, "softmax_cross_entropy", "label 3", "3 classes")


def test_float16_feeds_are_converted_exactly():
    x = gc.input("x", (3,))
    half = np.array([0.1, -2.5, 65504.0], np.float16)
    out = gc.compile(x * 1.0, backend="numpy")(x=half)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, half.astype(np.float32))


# ---------------------------------------------------------------------------------------
# Smaller: bad arguments name the op, the value and the line


def test_reshape_to_a_non_integer_shape():
    x = gc.input("x", (6,))
    with pytest.raises(gc.ShapeError) as info:
        gc.reshape(x, (2.5, 3))
    assert_located(info, "reshape", "2.5")


def test_a_uint64_constant_that_does_not_fit_int64():
    with pytest.raises(gc.DTypeError) as info:
        gc.constant(np.uint64(2**63))
    assert_located(info, "constant", str(2**63), "int64")
    assert gc.constant(np.uint64(7)).op.value.array == 7  # values that fit are converted
    assert gc.constant(np.array([1, 2], np.uint64)).dtype == "int64"


@pytest.mark.parametrize("build, words", [
    (lambda m: gc.sum(m, axis=1.0), ("sum", "1.0")),
    (lambda m: gc.softmax(m, axis=0.5), ("softmax", "0.5")),
    (lambda m: gc.concat([m, m], axis=1.0), ("concat", "1.0")),
    (lambda m: gc.stack([m, m], axis=1.5), ("concat", "1.5")),
])
def test_a_float_axis(build, words):
    m = gc.input("m", (2, 3))
    with pytest.raises(gc.ShapeError) as info:
        build(m)
    assert_located(info, *words)


@pytest.mark.parametrize("build, words", [
    (lambda x, k: gc.conv2d(x, k, stride=1.0), ("conv2d", "stride", "1.0")),
    (lambda x, k: gc.conv2d(x, k, padding=0.5), ("conv2d", "padding", "0.5")),
    (lambda x, k: gc.max_pool2d(x, 2.0), ("max_pool2d", "2.0")),
    (lambda x, k: gc.avg_pool2d(x, 2, stride=1.5), ("avg_pool2d", "stride", "1.5")),
])
def test_float_conv_and_pool_geometry(build, words):
    x, k = gc.input("x", (1, 1, 4, 4)), gc.param("k", (1, 1, 2, 2))
    with pytest.raises(gc.ShapeError) as info:
        build(x, k)
    assert_located(info, *words)


def test_a_slice_with_step_zero_or_a_float_bound():
    x = gc.input("x", (5,))
    with pytest.raises(gc.ShapeError) as info:
        x[::0]
    assert_located(info, "index", "step cannot be zero")
    with pytest.raises(gc.ShapeError) as info:
        x[1.5:]
    assert_located(info, "index", "1.5")


@pytest.mark.parametrize("delta", [-1, 0, float("nan")])
def test_huber_needs_a_positive_delta(delta):
    x = gc.input("x", (3,))
    with pytest.raises(gc.GraphError) as info:
        gc.huber(x, x, delta=delta)
    assert_located(info, "huber", f"delta must be a positive number, got {delta!r}")


def test_check_grad_feeds_must_be_a_dict():
    x = gc.input("x", (3,), "float64")
    with pytest.raises(gc.FeedError, match="check_grad: feeds must be a dict"):
        gc.check_grad(gc.sum(x * x), x, [np.ones(3)])


def test_check_grad_refuses_a_dtype_it_cannot_run_in():
    x = gc.input("x", (3,), "float64")
    with pytest.raises(ValueError, match="dtype must be 'float64' or 'float32', got 'float16'"):
        gc.check_grad(gc.sum(x * x), x, {"x": np.ones(3)}, dtype="float16")


def test_check_grad_reports_a_nan_gradient_where_it_is():
    x = gc.input("x", (4,), "float64")
    # d sqrt(|x|) / dx at 0 is 0 * inf = NaN (the loss itself is finite there)
    rep = gc.check_grad(gc.sum(gc.sqrt(gc.abs(x))), x, {"x": np.array([1.0, 4.0, 0.0, 9.0])})
    assert not rep.ok
    row = rep.rows[0]
    assert row.worst_index == (2,) and np.isnan(row.max_abs_error)
    text = str(rep)
    assert "x[2]: analytic nan" in text and "not finite" in text


@pytest.mark.parametrize("loss", [gc.softmax_cross_entropy, gc.hinge])
def test_labels_computed_from_a_feed_are_checked_at_call_time(loss):
    """y[:, 0] of a fed int tensor holding 7 over 4 classes: PyTorch raises; graphc used
    to count no class for that sample."""
    logits, y = gc.input("logits", (2, 4)), gc.input("y", (2, 2), "int64")
    f = gc.compile(loss(logits, y[:, 0] + 0), backend="numpy")
    L = np.zeros((2, 4), np.float32)
    assert np.isfinite(f(logits=L, y=np.array([[1, 0], [3, 5]])))
    with pytest.raises(gc.FeedError, match=r"computed from feed\(s\) \['y'\] hold label 7"):
        f(logits=L, y=np.array([[1, 0], [7, 5]]))


def test_labels_computed_from_a_float_feed_are_checked_and_from_a_model_are_not():
    """cast(y) of a float32 feed holding 7.0 (class indices stored as floats): checked as
    integer labels are (it counted no class).  Labels a model computes (argmax of a
    matmul) are not computed twice to be checked."""
    logits, y = gc.input("logits", (2, 4)), gc.input("y", (2,))
    L = np.zeros((2, 4), np.float32)
    for backend in ("numpy", "numba"):
        f = gc.compile(gc.softmax_cross_entropy(logits, gc.cast(y, "int64")), backend=backend)
        assert np.isfinite(f(logits=L, y=np.array([1.0, 3.0], np.float32)))
        with pytest.raises(gc.FeedError, match=r"feed\(s\) \['y'\] hold label 7 "):
            f(logits=L, y=np.array([1.0, 7.0], np.float32))
    def checks(loss):
        return [r for t in gc.Graph(loss).nodes for r in t.meta or ()
                if isinstance(r, gc.losses.LabelsComputed)]
    assert len(checks(gc.softmax_cross_entropy(logits, gc.cast(y, "int64")))) == 1
    W = gc.input("W", (4, 4))
    assert checks(gc.softmax_cross_entropy(logits, gc.argmax(logits @ W, axis=1))) == []
