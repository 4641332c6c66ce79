"""gc.check_grad and `graphc check`: passes on correct gradients, fails naming the tensor,
the index and the likely cause at a kink and for a wrong derivative rule."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest
import sympy as sp

import graphc as gc
from graphc import cli

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _mlp():
    return cli.load_model(str(ROOT / "examples" / "mlp_check.py"))


def test_mlp_gradients_pass_with_a_table():
    loss, wrt, feeds = _mlp()
    rep = gc.check_grad(loss, wrt, feeds)
    assert rep.ok and rep.max_rel_error < 1e-5
    text = str(rep)
    for word in ("tensor", "shape", "max abs err", "max rel err", "worst index", "ok"):
        assert word in text
    assert [r.name for r in rep.rows] == ["W1", "b1", "W2", "b2", "x"]
    assert rep.rows[0].checked == 64  # W1 has 80 elements: a seeded sample of 64


def test_sampling_and_full():
    x = gc.input("x", (10, 20), "float64")
    y = gc.sum(gc.sin(x) * 0.5)
    feeds = {"x": np.random.default_rng(1).normal(size=(10, 20))}
    assert gc.check_grad(y, x, feeds).rows[0].checked == 64
    assert gc.check_grad(y, x, feeds, max_elements=10).rows[0].checked == 10
    assert gc.check_grad(y, x, feeds, full=True).rows[0].checked == 200
    same = gc.check_grad(y, x, feeds, seed=3).rows[0].worst_index
    assert same == gc.check_grad(y, x, feeds, seed=3).rows[0].worst_index


def test_relu_kink_fails_naming_tensor_index_and_cause():
    x = gc.input("x", (4,))
    rep = gc.check_grad(gc.sum(gc.relu(x)), x, {"x": np.array([1.0, 0.5, 0.0, -2.0])})
    assert rep.ok is False
    row = rep.rows[0]
    assert row.name == "x" and row.worst_index == (2,)
    assert row.analytic == 0.0 and row.numeric == pytest.approx(0.5)  # ReLU'(0) = 0
    assert "x[2]" in str(rep) and "kink" in str(rep)


def test_wrong_derivative_rule_fails_with_its_cause():
    wrong = gc.elementwise("t_gradcheck_wrong_square", lambda x: x**2)
    wrong.__dict__["derivatives"] = (3 * wrong.args[0],)  # deliberately wrong: 3x, not 2x
    x = gc.input("x", (3,))
    rep = gc.check_grad(gc.sum(wrong(x)), x, {"x": np.array([1.0, 2.0, -1.5])})
    assert not rep.ok
    assert "wrong derivative rule" in str(rep)
    assert rep.rows[0].worst_index == (1,)  # |3x - 2x| is largest at x = 2


def test_eps_too_small_is_diagnosed():
    x = gc.input("x", (3,), "float64")
    rep = gc.check_grad(gc.sum(gc.exp(x) * 1e3), x, {"x": np.array([3.0, 2.0, 1.0])},
                        eps=1e-13)
    assert not rep.ok and "too small" in str(rep)


def test_float32_check_is_diagnosed():
    x = gc.input("x", (3,))
    rep = gc.check_grad(gc.sum(gc.exp(x) * 1e3), x, {"x": np.array([3.0, 2.0, 1.0])},
                        dtype="float32")
    assert not rep.ok and "float32" in str(rep)


def test_float32_graph_is_checked_in_float64_by_default():
    x = gc.input("x", (5,))
    rep = gc.check_grad(gc.sum(gc.softplus(x) * gc.sigmoid(x)), x,
                        {"x": np.linspace(-3, 3, 5, dtype=np.float32)}, rtol=1e-7)
    assert rep.ok and rep.dtype == "float64"


def test_wrt_must_be_float_leaves():
    x = gc.input("x", (3,))
    labels = gc.input("labels", (3,), "int64")
    with pytest.raises(gc.GraphError, match="gc.input or gc.param"):
        gc.check_grad(gc.sum(x * 2), [x * 2], {"x": np.ones(3)})
    with pytest.raises(gc.GraphError, match="int64"):
        gc.check_grad(gc.sum(x * gc.cast(labels, "float32")), labels,
                      {"x": np.ones(3), "labels": np.ones(3, np.int64)})


def test_a_missing_feed_is_a_feed_error_naming_it():
    x, w = gc.input("x", (3,)), gc.param("w", (3,))
    with pytest.raises(gc.FeedError, match=r"missing feed\(s\) \['w'\]"):
        gc.check_grad(gc.sum(x * w), [w], {"x": np.ones(3)})


def test_custom_op_gradients_check_out():
    mish = gc.elementwise("t_gradcheck_mish", lambda x: x * sp.tanh(sp.log(1 + sp.exp(x))))
    x = gc.input("x", (6,), "float64")
    rep = gc.check_grad(gc.sum(mish(x)), x, {"x": np.linspace(-4, 4, 6)}, rtol=1e-7)
    assert rep.ok


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "graphc.cli", *args], capture_output=True,
                          text=True, cwd=ROOT)


def test_cli_check_passes_on_the_example():
    result = _run_cli("check", "examples/mlp_check.py")
    assert result.returncode == 0, result.stderr
    assert "check_grad: ok" in result.stdout and "W1" in result.stdout


def test_cli_check_fails_on_a_kink(tmp_path):
    model = tmp_path / "kink.py"
    model.write_text(
        "import numpy as np, graphc as gc\n"
        "def build():\n"
        "    x = gc.input('x', (3,))\n"
        "    return gc.sum(gc.relu(x)), [x], {'x': np.array([1.0, 0.0, -1.0])}\n")
    result = _run_cli("check", str(model))
    assert result.returncode == 1
    assert "x[1]" in result.stdout and "kink" in result.stdout


def test_cli_check_reports_a_bad_model_file_in_one_line(tmp_path):
    model = tmp_path / "empty.py"
    model.write_text("x = 1\n")
    result = _run_cli("check", str(model))
    assert result.returncode == 1
    assert "defines no build()" in result.stderr and "Traceback" not in result.stderr


def test_failure_is_localised_to_the_op_with_the_wrong_rule():
    wrong = gc.elementwise("t_gradcheck_wrong_cube", lambda x: x**3)
    wrong.__dict__["derivatives"] = (2 * wrong.args[0] ** 2,)  # should be 3x^2
    x = gc.input("x", (3,))
    W = gc.param("W", (3, 3))
    h = wrong(gc.tanh(x @ W)).named("h")
    rep = gc.check_grad(gc.sum(h * 2.0), [W, x],
                        {"x": np.array([1.0, 2.0, -1.5]), "W": 0.5 * np.eye(3)})
    assert not rep.ok
    assert [(e.node, e.operand) for e in rep.bad_edges] == [(h, 0)]
    assert "t_gradcheck_wrong_cube node 'h'" in str(rep)


def test_correct_graph_has_no_bad_edges_and_edges_all_pass():
    from graphc.gradcheck import check_edges
    loss, wrt, feeds = _mlp()
    assert gc.check_grad(loss, wrt, feeds).bad_edges == []
    checks = check_edges(loss, feeds)
    assert len(checks) > 20 and all(c.ok for c in checks)


def test_a_float32_scan_with_a_dynamic_dimension_and_a_closed_over_weight():
    # the float64 copy of the graph replayed the deferred scan, whose body still read the
    # float32 weight: "scan: input 2 is (1,) float64, the body takes (1,) float32"
    xs = gc.input("xs", (3, None))
    h0, W = gc.param("h0", (1,)), gc.param("W", (1,))
    _, ys = gc.scan(lambda h, x: (h * x * W,) * 2, h0 * xs[0], xs)
    rng = np.random.default_rng(0)
    feeds = {"xs": rng.uniform(0.5, 1.5, (3, 4)).astype(np.float32),
             "h0": np.ones(1, np.float32), "W": np.full(1, 0.9, np.float32)}
    report = gc.check_grad(gc.sum(ys), [W, h0], feeds)
    assert report.ok, report


@pytest.mark.parametrize("batch", [None, "N"])
def test_a_failing_check_on_a_dynamic_dimension_is_localised(batch):
    # localising the failure built each op's check at the graph's shape, (None, 3):
    # "TypeError: 'NoneType' object cannot be interpreted as an integer"
    x = gc.input("x", (batch, 3), "float64")
    W = gc.param("W", (3, 2), dtype="float64")
    rep = gc.check_grad(gc.sum(gc.relu(x @ W) * 2.0), [x, W],
                        {"x": np.array([[1.0, -1.0, 0.0], [0.5, 0.5, 1.0]]),
                         "W": np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])})
    assert rep.ok is False
    assert [(e.names, e.operand) for e in rep.bad_edges] == [(("relu", "matmul"), 0)]
    tied = gc.check_grad(gc.max(x), x, {"x": np.ones((2, 3))})
    assert tied.ok is False and [e.names for e in tied.bad_edges] == [("max", "x")]


def test_a_wrong_entry_that_no_sampled_element_holds_is_named_as_such():
    # the derivative is wrong only where x >= 3, at one element of 400 that the 64 sampled
    # elements miss: the directional check fails, and the report says so, not that the
    # worst sampled element (which agrees) has an eps problem
    wrong = gc.elementwise("wrong_above_3", lambda x: sp.Piecewise((x, x < 3), (2 * x - 3, True)))
    wrong.__dict__["derivatives"] = (sp.Integer(1),)  # 2 above 3, deliberately not
    big = gc.input("big", (20, 20), "float64")
    B = np.random.default_rng(0).normal(size=(20, 20))
    B[7, 11] = 5.0
    rep = gc.check_grad(gc.sum(wrong(big)), [big], {"big": B})
    (row,) = rep.rows
    assert not rep.ok and (7, 11) != row.worst_index and row.directional_only
    text = str(rep)
    assert "big: the 64 elements checked agree, but the derivative along a random direction" \
        in text and "a wrong entry among the 336 not checked" in text
    assert "likely cause" not in text
    assert gc.check_grad(gc.sum(wrong(big)), [big], {"big": B}, full=True).rows[0].worst_index \
        == (7, 11)


def test_a_truncated_scan_is_named_as_the_reason_finite_differences_disagree():
    W = gc.param("W", (2, 2), dtype="float64")
    xs = gc.input("xs", (6, 2), "float64")
    hT, _ = gc.scan(lambda h, x: (gc.tanh(h @ W + x),) * 2, gc.constant(np.zeros(2)), xs,
                    truncate=2)
    feeds = {"xs": np.random.default_rng(0).normal(size=(6, 2)),
             "W": np.array([[0.9, -0.4], [0.3, 0.8]])}
    rep = gc.check_grad(gc.sum(hT), W, feeds)
    assert not rep.ok
    assert "note: scan node 'scan' truncates backpropagation through time (truncate=2)" \
        in str(rep)
    full = gc.scan(lambda h, x: (gc.tanh(h @ W + x),) * 2, gc.constant(np.zeros(2)), xs)[0]
    assert gc.check_grad(gc.sum(full), W, feeds).notes == []


def test_a_nan_loss_gives_a_failing_report_not_an_exception():
    # the analytic 0 at x[0] against the numeric NaN divided by a scale of 0
    x = gc.input("x", (3,), "float64")
    rep = gc.check_grad(gc.sum(x * x), x, {"x": np.array([0.0, -2.0, np.nan])})
    assert rep.ok is False and np.isnan(rep.max_rel_error)
    assert "not finite" in str(rep)


def test_a_wrong_rule_is_not_called_a_kink_at_a_large_eps():
    # one-sided slopes 1e-3 apart differ by about eps * f'' at a smooth point: x^3 at 0.5
    # with a wrong derivative was reported as "a kink" at eps=1e-3
    cube = gc.elementwise("t_gc_cube_wrong", lambda x: x ** 3)
    cube.__dict__["derivatives"] = (2 * cube.args[0] ** 2,)
    x = gc.input("x", (1,), "float64")
    for eps in (1e-6, 1e-3):
        rep = gc.check_grad(gc.sum(cube(x)), x, {"x": np.array([0.5])}, eps=eps)
        assert not rep.ok and rep.rows[0].cause.startswith("the analytic gradient is wrong")
    relu = gc.check_grad(gc.sum(gc.relu(x)), x, {"x": np.array([0.0])}, eps=1e-3)
    assert relu.rows[0].cause.startswith("a kink"), relu.rows[0].cause  # a real one still is


def test_eps_and_tolerances_are_checked():
    x = gc.input("x", (2,), "float64")
    for bad in ({"eps": 0.0}, {"eps": -1e-6}, {"rtol": -1.0}, {"eps": float("nan")}):
        with pytest.raises(ValueError, match="eps must be > 0"):
            gc.check_grad(gc.sum(x * x), x, {"x": np.ones(2)}, **bad)


def test_check_grad_takes_the_feeds_compile_takes_for_a_second_order_graph():
    """grad(sum(x*x*w), w) no longer reads w, and a quadratic's Hessian reads no x: compile
    takes both feeds, and so does check_grad (the derivative w.r.t. an unread input is 0)."""
    x, w = gc.input("x", (1, 3), "float64"), gc.input("w", (1, 3), "float64")
    X, W = np.array([[0.5, -1.0, 2.0]]), np.array([[1.5, 0.3, -0.7]])
    g = gc.grad(gc.sum(x * x * w), w)
    assert gc.check_grad(gc.sum(g * g), [x, w], {"x": X, "w": W}).ok
    hessian = gc.hvp(gc.sum((x * 3.0 - 1.0) ** 2), x, np.ones((1, 3)))
    assert gc.check_grad(gc.sum(hessian), [x], {"x": X}).ok
    with pytest.raises(gc.FeedError, match=r"unknown feed\(s\) \['z'\]") as info:
        gc.check_grad(gc.sum(g * g), [x], {"x": X, "z": W})
    assert "test_gradcheck.py" in str(info.value)


@pytest.mark.parametrize("value", [np.array([1 + 5j, 2, 3]), np.array(["a", "b", "c"])])
def test_check_grad_refuses_the_feeds_compile_refuses(value):
    """A complex feed's imaginary part used to be dropped (ok=True), a string one raised a
    bare ValueError."""
    x = gc.input("x", (3,), "float64")
    with pytest.raises(gc.FeedError, match="feed 'x' has dtype"):
        gc.check_grad(gc.sum(gc.tanh(x)), x, {"x": value})
