"""The optimizing passes (passes/): pipeline, simplification rules, CSE, DCE, fusion and
memory planning.

Every pass must preserve results: graphs from the op tables of tests/test_ops.py and the
random-graph strategy of tests/test_random_graphs.py are compiled optimized and with
``optimize=False`` and compared, on the NumPy backend (every case) and the Numba backend
(graphs that exercise fused kernels).  ``tests/conftest.py`` makes ``gc.compile`` run
``check_graph`` after every pass in the whole suite.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import test_ops as table
import test_random_graphs as random_graphs
from graphc.passes import pipeline
from graphc.passes import simplify as simplify_module
from graphc.passes.cse import cse
from graphc.passes.dce import dce
from graphc.passes.fusion import fusion
from graphc.passes.memory import memory
from graphc.passes.simplify import DEFAULT_RULES, RULES, simplify
from hypothesis import given, settings

import graphc as gc
from graphc.elementwise_ops import REGISTRY
from graphc.fused_ops import Fused
from graphc.shape_ops import BroadcastTo, IndexAdd, Reshape

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import workloads  # noqa: E402

FLOATS = ("float32", "float64")
RTOL = {"float32": 2e-5, "float64": 1e-11}


def run_both(outputs, feeds, backend="numpy", **opts):
    """(optimized, unoptimized) results of ``outputs`` on ``backend``."""
    f = gc.compile(outputs, backend=backend, **opts)
    g = gc.compile(outputs, backend=backend, optimize=False)
    got, want = f(feeds), g(feeds)
    if not isinstance(outputs, (list, tuple)):
        got, want = (got,), (want,)
    return f, got, want


def assert_same(got, want, dtype="float64", what=""):
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and a.dtype == b.dtype, f"{what} output {k}"
        if a.dtype.kind != "f":
            np.testing.assert_array_equal(a, b, err_msg=f"{what} output {k}")
            continue
        finite = np.isfinite(b)
        scale = max(float(np.max(np.abs(b[finite]))) if finite.any() else 1.0, 1.0)
        np.testing.assert_allclose(a, b, rtol=RTOL[dtype], atol=RTOL[dtype] * scale,
                                   equal_nan=True, err_msg=f"{what} output {k}")


def with_grads(y, wrt):
    """[y, d sum(y * c) / d wrt...] and the cotangent feed."""
    wrt = [w for w in wrt if w.dtype in FLOATS]
    if not wrt:
        return [y], {}
    c = gc.input("cotangent", y.shape, y.dtype)
    loss = gc.sum(gc.tanh(y) * c)
    cot = np.random.default_rng(1).uniform(0.5, 1.5, y.shape).astype(y.dtype)
    return [y, loss, *gc.grad(loss, wrt)], {"cotangent": cot}


# ---------------------------------------------------------------------------------------
# 1. The pipeline


def test_default_pipeline_is_explicit_ordered_and_documented():
    assert pipeline.DEFAULT_PIPELINE == ("simplify", "cse", "fusion", "dce", "memory")
    for name in pipeline.DEFAULT_PIPELINE:
        module = importlib.import_module(f"graphc.passes.{name}")
        assert "Before:" in module.__doc__ and "After:" in module.__doc__, name
        assert pipeline.PASSES[name].doc


def test_optimize_false_runs_no_pass_and_passes_selects_them():
    x = gc.input("x", (4,), "float64")
    y = gc.exp(x * 1.0) - 0.0
    f = gc.compile(y, backend="numpy", optimize=False)
    assert f.stats["passes"] == [] and f.stats["nodes"] == len(gc.Graph(y).nodes) == 6
    f = gc.compile(y, backend="numpy", passes=["simplify"])
    assert [r["pass"] for r in f.stats["passes"]] == ["simplify"]
    assert [t.op.name for t in f.graph.nodes] == ["input", "exp"]

    def double_exp(graph):
        """A pass as a plain function Graph -> Graph."""
        return gc.Graph([gc.exp(graph.outputs[0]) * 0.0 + graph.outputs[0]])
    f = gc.compile(y, backend="numpy", passes=["simplify", double_exp])
    assert f.stats["pipeline"] == ["simplify", "double_exp"]
    with pytest.raises(ValueError, match="unknown pass"):
        gc.compile(y, passes=["no-such-pass"])
    with pytest.raises(ValueError, match="optimize=False"):
        gc.compile(y, optimize=False, passes=["cse"])


def test_graph_checker_runs_after_every_pass(monkeypatch):
    x = gc.input("x", (3,), "float64")

    def broken(graph):  # a node whose recorded shape is not what its op infers (a graph
        inner = gc.exp(graph.outputs[0] * 0.375)  # with two inputs named alike cannot be
        object.__setattr__(inner, "shape", (1,))  # built any more: test_validation.py)
        return gc.Graph([graph.outputs[0] + inner * 0.0])
    monkeypatch.setenv("GRAPHC_CHECK_PASSES", "1")
    with pytest.raises(gc.GraphError, match="recorded"):
        gc.compile(gc.exp(x), backend="numpy", passes=[broken])
    monkeypatch.setenv("GRAPHC_CHECK_PASSES", "0")
    gc.compile(gc.exp(x), backend="numpy", passes=[broken])  # unchecked, it compiles
    with pytest.raises(gc.GraphError, match="changed the outputs"):
        gc.compile(gc.exp(x), backend="numpy", passes=[lambda g: gc.Graph(gc.sum(x))])


def test_stats_show_each_pass_and_print_as_a_table():
    loss, wrt = workloads.mlp_graphc(8, (12, 6, 3))
    f = gc.compile([loss, *gc.grad(loss, wrt)], backend="numpy")
    report = f.stats["passes"]
    assert [r["pass"] for r in report] == list(pipeline.DEFAULT_PIPELINE)
    for r in report:
        assert {"nodes_before", "nodes_after", "seconds"} <= set(r)
    assert report[0]["nodes_before"] == f.stats["nodes_before"]
    assert report[-1]["nodes_after"] == f.stats["nodes"] < f.stats["nodes_before"]
    fusion_report = report[2]
    assert fusion_report["groups"] >= 3 and fusion_report["bytes_saved"] > 0
    assert f.stats["planned_peak_bytes"] < f.stats["naive_peak_bytes"]
    text = str(f.stats)
    for word in ("simplify", "fusion", "groups", "peak", "what it did"):
        assert word in text


def test_feeds_the_optimized_graph_no_longer_needs_are_still_accepted():
    x, w = gc.input("x", (3,), "float64"), gc.input("w", (3,), "float64")
    y = x * 0.0 + w
    f = gc.compile(y, backend="numpy", passes=["simplify-unsafe"])
    assert [t.op.label for t in f.graph.inputs] == ["w"]
    assert f.input_names == ("x", "w")
    np.testing.assert_array_equal(f(x=np.ones(3), w=np.arange(3.0)), np.arange(3.0))
    with pytest.raises(gc.FeedError, match="'x'"):
        f(w=np.arange(3.0))


# ---------------------------------------------------------------------------------------
# 2. Simplification rules: each fires on its pattern and not otherwise

X = gc.input("x", (2, 3), "float64")
Y = gc.input("y", (2, 3), "float64")
ROW = gc.input("row", (3,), "float64")



def _scatter(g, start, stop):
    """index_add of ``g`` into columns start:stop of a (2, 3) zero (a slice's gradient)."""
    index = (("slice", None, None, None), ("slice", start, stop, None))
    return gc.Tensor.make(IndexAdd(index, (2, 3)), (g,))


# rule name -> (a graph where it fires, a near miss where it must not)
RULE_CASES = {
    "scatter-merge": (lambda: _scatter(gc.exp(X[:, 1:]), 1, 3) + _scatter(X[:, :1], 0, 1),
                      lambda: _scatter(gc.exp(X[:, 2:]), 2, 3) + _scatter(X[:, :1], 0, 1)),
    "scatter-merge-sum": (lambda: (_scatter(X[:, :1], 0, 1) + Y) + _scatter(X[:, 1:2], 1, 2),
                          lambda: (_scatter(X[:, :1], 0, 1) + Y) + _scatter(X[:, 2:], 2, 3)),
    "scatter-whole": (lambda: _scatter(gc.exp(X), 0, 3), lambda: _scatter(X[:, 1:], 1, 3)),
    "concat-concat": (lambda: gc.concat([gc.concat([X, Y], 1), X], 1),
                      lambda: gc.concat([gc.exp(gc.concat([X, Y], 1)), X], 1)),
    "fold": (lambda: X + gc.exp(gc.constant(np.ones(3)) * 2.0), lambda: X + gc.exp(X)),
    "mul-one": (lambda: 1.0 * gc.exp(X), lambda: 2.0 * gc.exp(X)),
    "add-zero": (lambda: gc.exp(X) + (-0.0), lambda: gc.exp(X) + 0.0),  # x + 0 is +0 at -0
    "sub-zero": (lambda: gc.exp(X) - 0.0, lambda: gc.exp(X) - (-0.0)),
    "div-one": (lambda: gc.exp(X) / 1.0, lambda: 1.0 / gc.exp(X)),
    "neg-neg": (lambda: gc.neg(gc.neg(gc.exp(X))), lambda: gc.neg(gc.exp(gc.neg(X)))),
    "sub-neg": (lambda: X - (-Y), lambda: X - Y),
    "transpose-transpose": (lambda: gc.transpose(gc.transpose(X)), lambda: gc.transpose(X)),
    "reshape-reshape": (lambda: gc.reshape(gc.reshape(X, (6,)), (3, 2)),
                        lambda: gc.reshape(gc.exp(gc.reshape(X, (6,))), (3, 2))),
    "reshape-identity": (lambda: gc.Tensor.make(Reshape((2, 3)), (X,)),  # (gc.reshape
                         lambda: gc.reshape(X, (6,))),                 # makes none)
    "broadcast-identity": (lambda: gc.Tensor.make(BroadcastTo((2, 3)), (X,)),
                           lambda: gc.broadcast_to(ROW, (2, 3))),
    "stop-gradient": (lambda: gc.exp(gc.stop_gradient(X)), lambda: gc.exp(X)),
    "log-exp": (lambda: gc.log(gc.exp(X)), lambda: gc.exp(gc.log(X))),
    "sum-broadcast": (lambda: gc.sum(gc.broadcast_to(ROW, (4, 3)), axis=0),
                      lambda: gc.sum(gc.broadcast_to(ROW, (4, 3)) * X[:1], axis=0)),
    "mul-zero": (lambda: X * 0.0, lambda: X * 1e-300),
    "sub-self": (lambda: gc.exp(X) - gc.exp(X), lambda: gc.exp(X) - gc.exp(Y)),
    "div-self": (lambda: gc.exp(X) / gc.exp(X), lambda: gc.exp(X) / gc.exp(Y)),
    "exp-log": (lambda: gc.exp(gc.log(X)), lambda: gc.log(gc.exp(X) + 1.0)),
}


def test_every_rule_has_a_case():
    assert set(RULE_CASES) == {r.name for r in RULES}
    assert {r.name for r in RULES if r.ieee == "unsafe"} == \
        {"mul-zero", "sub-self", "div-self", "exp-log", "log-exp"}
    assert {r.name for r in DEFAULT_RULES} == {r.name for r in RULES if r.ieee != "unsafe"}


@pytest.mark.parametrize("rule", [pytest.param(r, id=r.name) for r in RULES])
def test_rule_fires_on_its_pattern_and_not_otherwise(rule):
    hit, miss = (make() for make in RULE_CASES[rule.name])
    feeds = {"x": np.array([[0.5, 1.0, 2.0], [-1.0, 3.0, 0.25]]),
             "y": np.full((2, 3), 0.75), "row": np.array([1.0, -2.0, 4.0])}
    for graph, fires in ((hit, True), (miss, False)):
        log = {}
        out = simplify(gc.Graph(graph), rules=(rule,), log=log)
        assert (rule.name in log["rules_fired"]) is fires, (rule.name, fires)
        assert (out.outputs[0] is not graph) is fires
        gc.check_graph(out)
        needed = {k: v for k, v in feeds.items() if k in
                  {t.op.label for t in gc.Graph(graph).inputs}}
        want = gc.compile(graph, backend="numpy", optimize=False)(needed)
        got = gc.compile(graph, backend="numpy",
                         passes=[lambda g, r=rule: simplify(g, rules=(r,))])(needed)
        if rule.ieee == "unsafe":  # equal where the original is a number (the point)
            got, want = got[np.isfinite(want)], want[np.isfinite(want)]
        np.testing.assert_allclose(got, want, rtol=1e-14)


def test_the_gradient_of_an_lstms_gate_slices_is_one_concat_after_one_pass():
    """z's four gate slices: their gradient, a sum of four scatters into zeros, is one
    concat of the gate gradients after a single simplify.  (Its settled set held the ids
    of nodes a rule dropped; a new node reusing such an id was skipped as settled, and
    the last merge waited for a second pass.)"""
    H = 4
    z, c = gc.input("z", (2, 4 * H), "float64"), gc.input("c", (2, H), "float64")
    i, f = gc.sigmoid(z[:, :H]), gc.sigmoid(z[:, H:2 * H])
    c2 = f * c + i * gc.tanh(z[:, 2 * H:3 * H])
    h = gc.sigmoid(z[:, 3 * H:]) * gc.tanh(c2)
    (g,) = gc.grad(gc.sum(h) + gc.sum(h * h) + gc.sum(c2), [z])
    out = simplify(gc.Graph(g))
    assert out.outputs[0].op.name == "concat"
    assert not [t for t in out.nodes if t.op.name == "index_add"]
    feeds = {"z": np.linspace(-2, 2, 32).reshape(2, 16), "c": np.linspace(-1, 1, 8).reshape(2, 4)}
    want = gc.compile(g, backend="numpy", optimize=False)(feeds)
    np.testing.assert_array_equal(gc.compile(g, backend="numpy")(feeds), want)


def _projections(x, w, steps):
    """sum over t of tanh(x[t] @ w): an unrolled RNN's input projections."""
    return sum(gc.sum(gc.tanh(x[t] @ w)) for t in steps)


def test_products_of_every_slice_with_one_matrix_are_one_matmul():
    x, w = gc.input("x", (4, 3, 5), "float64"), gc.input("w", (5, 6), "float64")
    loss = _projections(x, w, [0, 1, 2, -1])
    graphs = [loss, *gc.grad(loss, [x, w])]
    log = {}
    out = simplify(gc.Graph(graphs), log=log)
    assert log["rules_fired"]["matmul-batch"] == 4
    forward = [t for t in out.nodes if t.op.name == "matmul" and t.inputs[0] is x]
    assert [t.shape for t in forward] == [(4, 3, 6)]
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((4, 3, 5)), "w": rng.standard_normal((5, 6))}
    want = gc.compile(graphs, backend="numpy", optimize=False)(feeds)
    for backend in ("numpy", "numba"):
        got = gc.compile(graphs, backend=backend)(feeds)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("case", ["some slices", "two matrices", "vector rows"])
def test_products_of_some_slices_stay_apart(case):
    x, w = gc.input("x", (4, 3, 5), "float64"), gc.input("w", (5, 6), "float64")
    if case == "some slices":  # x[3] is never used: batching would compute it for nothing
        loss = _projections(x, w, [0, 1, 2])
    elif case == "two matrices":
        w2 = gc.input("w2", (5, 6), "float64")
        loss = _projections(x, w, [0, 1]) + _projections(x, w2, [2, 3])
    else:  # (1, 5) rows: BLAS may take them as GEMVs, whose sums are ordered differently
        x = gc.input("x1", (4, 1, 5), "float64")
        loss = _projections(x, w, range(4))
    log = {}
    simplify(gc.Graph(loss), log=log)
    assert "matmul-batch" not in log["rules_fired"]


def test_unrolled_lstm_projects_its_inputs_in_one_gemm(monkeypatch):
    """The same dot products; OpenBLAS rounds them differently for a (4, 64) and a
    (24, 64) operand (its small-matrix kernel), so the results agree to float32 rounding,
    not bit for bit."""
    problem = workloads.WORKLOADS["W4"].problem({"steps": 6, "batch": 4})
    outs = [problem.loss, *gc.grad(problem.loss, list(problem.wrt))]
    f = gc.compile(outs, backend="numba")
    assert f.stats["passes"][0]["rules_fired"]["matmul-batch"] == 6
    monkeypatch.setattr(simplify_module, "batch_matmuls", lambda graph, fired: graph)
    kept = gc.compile(outs, backend="numba")
    assert "matmul-batch" not in kept.stats["passes"][0]["rules_fired"]
    for a, b in zip(f(problem.feeds), kept(problem.feeds)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


def test_nan_changing_rules_are_off_by_default():
    x = gc.input("x", (3,), "float64")
    X_ = np.array([np.inf, np.nan, 2.0])
    y = x * 0.0
    assert all(r.default for r in DEFAULT_RULES) and not any(
        r.default for r in RULES if r.name == "mul-zero")
    f = gc.compile(y, backend="numpy")  # default pipeline: x * 0 stays
    assert "mul-zero" not in f.stats["passes"][0]["rules_fired"]
    np.testing.assert_array_equal(f(x=X_), [np.nan, np.nan, 0.0])
    g = gc.compile(y, backend="numpy", passes=["simplify-unsafe"])
    assert g.stats["passes"][0]["rules_fired"]["mul-zero"] == 1
    np.testing.assert_array_equal(g(x=X_), [0.0, 0.0, 0.0])  # what IEEE says is NaN


def test_default_rules_keep_infinities_signed_zeros_and_integer_sums():
    """x + 0 at x = -0 is +0 (1/(x + 0) is inf, 1/x -inf); log(exp(x)) is -inf where exp
    underflows; an int32 row broadcast 4 times sums to int64 (multiplied in int32 first,
    2**30 * 4 was 0)."""
    x, i = gc.input("x", (3,)), gc.input("i", (3,), "int32")
    X = np.array([-0.0, -200.0, 2.0], np.float32)
    for y, feeds in [(1.0 / (x + 0.0), {"x": X}), (1.0 / (x - (-0.0)), {"x": X}),
                     (gc.log(gc.exp(x)), {"x": X}),
                     (gc.sum(gc.broadcast_to(i, (4, 3)), axis=0),
                      {"i": np.array([2**30, 2**30, 1], np.int32)})]:
        for backend in ("numpy", "numba"):
            want = gc.compile(y, backend=backend, optimize=False)(**feeds)
            np.testing.assert_array_equal(gc.compile(y, backend=backend)(**feeds), want)
    assert gc.compile(1.0 / (x + 0.0), backend="numpy")(x=X)[0] == np.inf


def test_sum_of_broadcast_becomes_a_product_and_bias_gradients_shrink():
    b = gc.input("b", (5,), "float64")
    x = gc.input("x", (7, 5), "float64")
    loss = gc.sum(x + b)
    (gb,) = gc.grad(loss, [b])
    f = gc.compile(gb, backend="numpy")
    assert [t.op.name for t in f.graph.nodes] == ["constant"]  # folded
    np.testing.assert_array_equal(f(), np.full(5, 7.0))
    s = gc.input("s", (1, 1), "float64")
    (gb,) = gc.grad(gc.sum((x + b) * s), [b])  # sum over a broadcast of s
    f = gc.compile(gb, backend="numpy")
    assert f.stats["passes"][0]["rules_fired"]["sum-broadcast"] == 1
    assert not any(t.op.name == "sum" for t in f.graph.nodes)
    np.testing.assert_allclose(f(s=np.full((1, 1), 3.0)), np.full(5, 21.0))


# ---------------------------------------------------------------------------------------
# 3. CSE and DCE


def test_cse_merges_commutative_duplicates():
    a, b = gc.input("a", (3,), "float64"), gc.input("b", (3,), "float64")
    graph = gc.Graph([gc.exp(a * b) + gc.exp(b * a)])
    log = {}
    out = cse(graph, log=log)
    assert log["merged"] == 2 and len(out.nodes) == len(graph.nodes) - 2
    feeds = {"a": np.arange(3.0), "b": np.ones(3)}
    np.testing.assert_allclose(gc.compile(out.outputs[0], backend="numpy")(feeds),
                               2 * np.exp(np.arange(3.0)))


def test_dce_prunes_unused_outputs_and_steps_of_fused_groups():
    x = gc.input("x", (4, 3), "float64")
    a = gc.tanh(x)
    b = gc.exp(a)
    fused = fusion(gc.Graph([a * 2.0, gc.sin(b)]))  # one group, outputs a*2 and sin(b)
    first = fused.outputs[0]
    assert isinstance(first.op, Fused) and len(first.op.group.outputs) == 2
    log = {}
    pruned = dce(gc.Graph([first]), log=log)
    assert log["fused_outputs_removed"] == 1 and log["fused_steps_removed"] == 2
    assert len(pruned.outputs[0].op.group.steps) == 2  # tanh, mul
    X_ = np.linspace(-1, 1, 12).reshape(4, 3)
    np.testing.assert_allclose(gc.compile(pruned.outputs[0], backend="numpy")(x=X_),
                               2 * np.tanh(X_))


# ---------------------------------------------------------------------------------------
# 4. Every pass preserves results: the op tables and random graphs


@pytest.mark.parametrize("name,variant", table.op_cases(table.ops_with_arity(1)))
@pytest.mark.parametrize("dtype", FLOATS)
def test_elementwise_ops_with_gradients_unchanged_by_the_pipeline(name, variant, dtype):
    rng = table.rng_for("passes", name, dtype)
    arity = REGISTRY[name].arity
    shapes = [(3, 4), (4,), (3, 1)][:arity]
    arrays = table.random_inputs(name, shapes, dtype, rng)
    tensors = [gc.input(n, a.shape, a.dtype.name) for n, a in
               zip(table.arg_names(name), arrays, strict=True)]
    y = REGISTRY[name](*tensors, **variant)
    feeds = dict(zip(table.arg_names(name), arrays, strict=True))
    if y.dtype in FLOATS:
        outputs, extra = with_grads(y, tensors)
        feeds.update(extra)
    else:
        outputs = [y]
    f, got, want = run_both(outputs, feeds)
    assert_same(got, want, dtype, name)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in table.ALL_CASES])
def test_structured_cases_with_gradients_unchanged_by_the_pipeline(case):
    tensors, feeds, _ = table.case_inputs(case, "float64")
    y = case.build(*tensors)
    outputs, extra = with_grads(y, tensors) if y.dtype == "float64" else ([y], {})
    f, got, want = run_both(outputs, {**feeds, **extra})
    assert_same(got, want, "float64", case.id)


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(random_graphs.programs())
def test_random_graphs_unchanged_by_the_pipeline(program):
    inputs, nodes, loss, feeds = random_graphs.build(*program)
    outputs = [loss, *gc.grad(loss, inputs)]
    f, got, want = run_both(outputs, feeds)
    assert_same(got, want, "float64", str(program[1]))


@settings(max_examples=6, deadline=None, derandomize=True, database=None)
@given(random_graphs.programs())
def test_random_graphs_numba_fused_matches_unfused(program):
    inputs, nodes, loss, feeds = random_graphs.build(*program)
    outputs = [loss, *gc.grad(loss, inputs)]
    f, got, want = run_both(outputs, feeds, backend="numba")
    assert_same(got, want, "float64", str(program[1]))


CHAINS = (("sigmoid", "tanh", "softplus", "silu", "gelu"),
          ("gelu_tanh", "elu", "leaky_relu", "relu", "sin"),
          ("cos", "abs", "square", "neg", "exp", "sqrt", "log", "reciprocal"))


def test_numba_fused_chains_of_every_op_match_unfused():
    """Chains of every unary op and the binary ops on broadcast operands, with their
    gradients, as fused kernels (separate groups: small kernels compile fast)."""
    dtype = "float32"
    x = gc.input("x", (5, 8), dtype)
    r = gc.input("r", (8,), dtype)
    c = gc.input("c", (5, 1), dtype)
    outputs = []
    for chain in CHAINS:
        h = x
        for name in chain:
            h = REGISTRY[name](h * 0.5 + 0.75)
        outputs.append(gc.sum(h))
    h = gc.maximum(x, r) + gc.minimum(x, c) + gc.where(x > 0.0, x, c) + gc.prelu(x, r)
    h = gc.power(gc.abs(h) + 1.0, c) / (1.0 + r * r) - x * c
    outputs.append(gc.sum(REGISTRY["huber_elementwise"](h, delta=0.5)))
    loss = outputs[0] + outputs[1] + outputs[2] + outputs[3]
    rng = np.random.default_rng(3)
    feeds = {k: rng.uniform(-2, 2, t.shape).astype(dtype) for k, t in
             (("x", x), ("r", r), ("c", c))}
    f, got, want = run_both([*outputs, *gc.grad(loss, [x, r, c])], feeds, backend="numba")
    assert_same(got, want, dtype, "chains")
    assert f.stats["passes"][2]["groups"] >= 4


# ---------------------------------------------------------------------------------------
# 5. Fusion


def w3(rows=8, cols=16):
    problem = workloads.WORKLOADS["W3"].problem({"rows": rows, "cols": cols})
    return [problem.loss, *gc.grad(problem.loss, list(problem.wrt))], problem.feeds


def test_w3_forward_and_backward_chain_is_one_fused_kernel():
    outputs, feeds = w3()
    f, got, want = run_both(outputs, feeds, backend="numba")
    assert_same(got, want, "float32", "W3")
    unfused = gc.compile(outputs, optimize=False)
    lowered = unfused.stats["lowered"]  # small: single ops run as NumPy ufuncs
    # 34: mean's 1/N meets the upstream as one quotient_mul(N, g) = g / N, not g * (1/N)
    assert unfused.stats["nodes"] == 34 and lowered["kernel"] + lowered["numpy"] >= 20
    (fusion_report,) = [r for r in f.stats["passes"] if r["pass"] == "fusion"]
    assert fusion_report["groups"] == 1 and fusion_report["epilogues"] == 3
    assert f.stats["nodes"] <= 10
    assert f.stats["kernel_calls"] == 1 and f.stats["kernels"] == 1
    fused = [t for t in f.graph.nodes if isinstance(t.op, Fused)]
    assert len(fused) == 4 and len({t.op.group for t in fused}) == 1  # 4 outputs, 1 group
    assert f.source.count("def kernel(") == 1 and "one loop nest" in f.source
    steps = {s.fn.name for s in fused[0].op.group.steps}
    assert {"tanh", "sigmoid", "gelu_tanh", "silu", "softplus", "tanh_dx", "sigmoid_dx",
            "gelu_tanh_dx", "silu_dx", "softplus_dx"} <= steps


def test_reduction_epilogues_only_over_leading_or_all_axes():
    x = gc.input("x", (6, 5), "float64")
    e = gc.exp(x) * 2.0
    graph = fusion(gc.Graph([gc.sum(e, axis=0), gc.sum(e), gc.sum(e, axis=1)]))
    sums = [t for t in graph.nodes if t.op.name == "sum"]
    assert len(sums) == 1 and sums[0].op.axes == (1,)  # the row sum stays a sum
    fused = [t for t in graph.nodes if isinstance(t.op, Fused)]
    assert sorted(str(t.op.out.reduce) for t in fused) == ["(0, 1)", "(0,)", "None"]
    X_ = np.random.default_rng(0).standard_normal((6, 5))
    for backend in ("numpy", "numba"):
        got = gc.compile(list(graph.outputs), backend=backend)(x=X_)
        want = [(2 * np.exp(X_)).sum(0), (2 * np.exp(X_)).sum(), (2 * np.exp(X_)).sum(1)]
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12)


def test_fusion_never_makes_a_cycle_through_an_outside_node():
    x = gc.input("x", (4, 4), "float64")
    W = gc.input("W", (4, 4), "float64")
    y = gc.tanh(x)
    z = gc.sin(y) * (y @ W)  # sin(y) may join tanh's group; the product may not
    graph = fusion(gc.Graph(z))
    gc.check_graph(graph)
    (product,) = [t for t in graph.nodes if t is graph.outputs[0]]
    assert any(i.op.name == "matmul" for i in product.inputs)
    feeds = {"x": np.eye(4), "W": np.ones((4, 4))}
    np.testing.assert_allclose(gc.compile(z, backend="numpy")(feeds),
                               gc.compile(z, backend="numpy", optimize=False)(feeds))


def test_fusing_before_autodiff_gives_the_same_gradients():
    x = gc.input("x", (6, 4), "float64")
    a = gc.input("a", (4,), "float64")
    z = gc.silu(gc.gelu(gc.sigmoid(gc.tanh(x)), approximate="tanh"))
    loss = gc.mean(gc.square(gc.softplus(z * a + 0.5)))
    fused_graph = fusion(gc.Graph(loss))
    (fused_loss,) = fused_graph.outputs
    assert isinstance(fused_loss.inputs[0].op, Fused)
    rng = np.random.default_rng(5)
    feeds = {"x": rng.standard_normal((6, 4)), "a": rng.standard_normal(4)}
    want = gc.compile(gc.grad(loss, [x, a]), backend="numpy", optimize=False)(feeds)
    got = gc.compile(gc.grad(fused_loss, [x, a]), backend="numpy", optimize=False)(feeds)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-12)
    # and second order: a Hessian-vector product through the fused node
    v = [rng.standard_normal((6, 4)), rng.standard_normal(4)]
    want = gc.compile(gc.hvp(loss, [x, a], v), backend="numpy")(feeds)
    got = gc.compile(gc.hvp(fused_loss, [x, a], v), backend="numpy")(feeds)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-10)
    assert gc.check_grad(fused_loss, [x, a], feeds).ok


def test_a_fused_groups_gradient_masks_zero_branches_as_autodiff_does():
    """clip(x, -1, 1) * x at x = +-inf: autodiff's gradient is [1, -1] (clip's 0 branch
    masks the inf upstream, as torch); the fused group's chain rule multiplied 0 * inf."""
    x = gc.input("x", (3,), "float64")
    y = gc.clip(x, -1.0, 1.0) * x
    (fused,) = fusion(gc.Graph(y)).outputs
    assert isinstance(fused.op, Fused)
    X = np.array([np.inf, -np.inf, 0.5])
    for backend in ("numpy", "numba"):
        got = gc.compile(gc.grad(gc.sum(fused), x), backend=backend)(x=X)
        np.testing.assert_array_equal(got, [1.0, -1.0, 1.0])


def test_a_fused_group_is_a_sympy_expression_of_stable_forms():
    x = gc.input("x", (4,))
    y = gc.softplus(gc.sigmoid(x) * 200.0 - 100.0 + x)
    (node,) = fusion(gc.Graph(y)).outputs
    group = node.op.group
    (math_form,) = group.expressions(stable=False)
    assert "log(" in str(math_form) and "exp(" in str(math_form)
    (stable,) = group.expressions()
    assert "log1p" in str(stable) and "Max" in str(stable)  # softplus' stable form
    X_ = np.array([-1e4, -30.0, 30.0, 1e4], np.float32)
    for backend in ("numpy", "numba"):
        out = gc.compile(y, backend=backend)(x=X_)
        assert np.isfinite(out).all(), backend
        np.testing.assert_allclose(out, gc.compile(y, backend=backend, optimize=False)(x=X_),
                                   rtol=1e-6)


# ---------------------------------------------------------------------------------------
# 6. Memory planning


def test_memory_plan_reuses_buffers_in_place_and_keeps_only_what_backward_needs():
    x = gc.input("x", (1000,), "float64")
    h = gc.exp(gc.sin(gc.exp(x)))
    log = {}
    memory(gc.Graph([gc.sum(h)]), log=log)
    assert log["in_place"] == 2 and log["naive_peak_bytes"] == 3 * 8000 + 8
    assert log["planned_peak_bytes"] == 8000 + 8
    loss, wrt = workloads.mlp_graphc(16, (20, 12, 4))
    grads = gc.grad(loss, wrt)
    log = {}
    memory(gc.Graph([loss, *grads]), log=log)
    assert 0 < log["saved_for_backward"] < 12
    assert log["peak_live_bytes"] <= log["planned_peak_bytes"] < log["naive_peak_bytes"]


def test_numba_buffers_are_reused_in_place():
    x = gc.input("x", (5000,), "float64")
    y = gc.sum(gc.exp(gc.sin(gc.exp(x) * 2.0)))
    f = gc.compile(y, optimize=False)  # unfused: each op writes over the one before
    assert f.stats["buffer_bytes"] == 5000 * 8
    g = gc.compile(y)  # fused: nothing stored
    assert g.stats["kernel_calls"] == 1 and g.stats["buffer_bytes"] <= 8
    X_ = np.linspace(-1, 1, 5000)
    np.testing.assert_allclose(f(x=X_), g(x=X_), rtol=1e-12)


# ---------------------------------------------------------------------------------------
# 6. Rematerialization (off by default)


def _tanh_mlp():
    x = gc.input("x", (32, 24), "float64")
    W1 = gc.param("W1", (24, 40), dtype="float64")
    W2 = gc.param("W2", (40, 8), dtype="float64")
    s = gc.sigmoid(x @ W1)          # kept: its derivative is written in terms of it
    h = s * 2.0 - 1.0               # cheap, from s and constants: recomputable
    loss = gc.mean(gc.square(gc.tanh(h @ W2)))
    return loss, [W1, W2]


def test_remat_recomputes_cheap_values_and_keeps_less_for_the_backward():
    from graphc.passes.remat import remat
    assert "remat" not in pipeline.DEFAULT_PIPELINE  # a trade-off: opt-in
    assert pipeline.REMAT_PIPELINE == ("simplify", "cse", "fusion", "remat", "fusion", "dce",
                                       "memory")
    loss, wrt = _tanh_mlp()
    outputs = [loss, *gc.grad(loss, wrt)]
    log = {}
    g = remat(gc.Graph(outputs), log=log)
    assert log["recomputed"] >= 1 and log["bytes_not_kept"] >= 32 * 40 * 8
    before, after = {}, {}
    memory(gc.Graph(outputs), log=before)
    memory(g, log=after)
    assert after["saved_for_backward_bytes"] <= \
        before["saved_for_backward_bytes"] - log["bytes_not_kept"]
    feeds = {"x": np.random.default_rng(0).normal(size=(32, 24)), **gc.init_params(loss)}
    for backend in ("numpy", "numba"):
        f, got, want = run_both(outputs, feeds, backend, passes=pipeline.REMAT_PIPELINE)
        assert_same(got, want, what=backend)
        assert f.stats["passes"][3]["pass"] == "remat"
        assert "recomputed in the backward" in str(f.stats)


def test_remat_leaves_a_graph_without_a_backward_alone():
    from graphc.passes.remat import remat
    loss, _ = _tanh_mlp()
    log = {}
    assert remat(gc.Graph(loss), log=log).outputs[0] is loss and log["recomputed"] == 0


def test_backward_values_are_not_computed_with_the_forward_and_stored():
    # sigmoid's local derivative y(1 - y) needs only the forward value y: it could join
    # y's forward group, but it would then be stored from the forward until the backward
    # multiplies it by the upstream gradient.  It is computed in the backward instead.
    x = gc.input("x", (16, 8))
    W1, W2 = gc.param("W1", (8, 8)), gc.param("W2", (8, 4))
    y = gc.sigmoid(x @ W1)
    loss = gc.sum(gc.tanh(y @ W2))
    outputs = [loss, *gc.grad(loss, [W1, W2])]
    g = fusion(gc.Graph(outputs))
    for t in g.nodes:
        if isinstance(t.op, Fused):
            names = {s.fn.name for s in t.op.group.steps}
            assert not {"sigmoid", "sigmoid_dx"} <= names, t.op.group.text
    feeds = {"x": np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32),
             **gc.init_params(loss)}
    _, got, want = run_both(outputs, feeds, "numba")
    assert_same(got, want, "float32")


def test_a_running_sum_of_late_terms_is_not_fused_into_one_waiting_group():
    # ((m1 + m2) + m3) + ... with each m_k a matmul: one fused group would run only after
    # the last matmul, keeping every m_k alive until then (an LSTM's weight gradient sums
    # 50 of them).  Groups stop growing once they would hold more than twice the bytes
    # they save, so at most three terms wait together.
    W = gc.input("W", (16, 16))
    terms = [gc.input(f"x{k}", (8, 16)) @ W for k in range(8)]
    total = terms[0]
    for m in terms[1:]:
        total = total + m
    g = fusion(gc.Graph(gc.tanh(total)))
    for t in g.nodes:
        if isinstance(t.op, Fused):
            waiting = [i for i in t.inputs if i.op.name == "matmul"]
            assert len(waiting) <= 3, t.op.group.text
    feeds = {f"x{k}": np.random.default_rng(k).normal(size=(8, 16)) for k in range(8)}
    feeds["W"] = np.random.default_rng(9).normal(size=(16, 16))
    _, got, want = run_both(gc.tanh(total), feeds, "numba")
    assert_same(got, want, "float32")


def test_fused_kernels_share_powers_of_exponentials_and_reciprocals():
    # The derivative of silu's stable form brings exp(-2|x|) next to exp(-|x|), and
    # 1/(1 + e)**2 next to 1/(1 + e): computed as squares of the shared values, the W3
    # kernel makes one exp and one division fewer per element.
    import sympy as sp

    from graphc.numba_rewrites import share_powers
    x = sp.Symbol("x0", real=True)
    u = sp.exp(-sp.Abs(x))
    exprs = [sp.exp(-2 * sp.Abs(x)) * 3 + u, 1 / (u + 1) + x / (u + 1) ** 2]
    bound, out = share_powers([], exprs)
    assert sorted(str(sym) for sym, _ in bound) == ["e0", "e1"]  # in dependency order
    assert not any(a.args[0] == -2 * sp.Abs(x) for e in out for a in e.atoms(sp.exp))
    assert all(p.exp != -2 for e in out for p in e.atoms(sp.Pow))
    values = {x: sp.Rational(-3, 7)}
    for _ in bound:  # substitute the bound values back, innermost first
        out = [e.subs(dict(reversed(bound))) for e in out]
    for got, want in zip(out, exprs):
        assert abs(float((got - want).subs(values))) < 1e-12


def test_softplus_and_its_derivative_share_one_exp_per_element():
    # softplus' = e^x / (e^x + 1) is computed as the stable sigmoid of x, from the
    # exp(-|x|) softplus computes itself: one exp per element instead of two (W3).
    x = gc.input("x", (16, 8))
    loss = gc.sum(gc.square(gc.softplus(x)))  # softplus and its derivative in one group
    outputs = [loss, *gc.grad(loss, [x])]
    f = gc.compile(outputs, backend="numba")
    kernels = f.source.split("# Kernels called above", 1)[1]
    assert kernels.count("exp_f32(") == 1, kernels
    feeds = {"x": np.array([-100, -30, -20.5, -3, -1e-3, 0, 1e-3, 3, 19.9, 20, 20.5, 100],
                           np.float32).repeat(11)[:128].reshape(16, 8)}
    _, got, want = run_both(outputs, feeds, "numba")
    assert_same(got, want, "float32")
    # the identity e/(e + 1) = 1/(1 + exp(-u)) for u >= 0, in a branch where exp(u) is
    # finite; unguarded (exp(u) may overflow: NaN, not 1) the plain form stays
    import sympy as sp

    from graphc.numba_rewrites import stable_sigmoids
    u = sp.Symbol("u", real=True)
    plain = sp.exp(2 * u) / (sp.exp(2 * u) + 1)
    guarded = sp.Piecewise((1, 2 * u > 20), (plain, True))
    _, (stable, kept) = stable_sigmoids([], [guarded + u, plain + u])
    assert stable.atoms(sp.exp) == {sp.exp(-2 * sp.Abs(u))}
    assert kept == plain + u
    for value in (-40, -1, 0, sp.Rational(1, 3), 9, 40):
        assert abs(float((stable - guarded - u).subs(u, value))) < 1e-15


def test_identical_steps_of_an_unrolled_lstm_fuse_into_the_same_groups():
    # Every step of an unrolled LSTM is the same computation, so fusion should cut every
    # step into the same groups (which share kernels): the number of group bodies stops
    # growing with the steps.  It grew when a join was refused by how much a group held
    # so far (17, 20, 24 bodies for 6, 12, 24 steps; now 8, 11, 11).
    bodies = []
    for steps in (12, 24):
        problem = workloads.WORKLOADS["W4"].problem(
            {"steps": steps, "batch": 4, "hidden": 8, "inputs": 4})
        f = gc.compile([problem.loss, *gc.grad(problem.loss, list(problem.wrt))],
                       backend="numpy")
        bodies.append({t.op.group.text for t in f.graph.nodes if isinstance(t.op, Fused)})
    assert len(bodies[1]) == len(bodies[0]), [sorted(b) for b in bodies]
