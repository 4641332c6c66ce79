"""The backend-neutral lowering layer (graphc/lowering.py, passes/memory.plan) and the
generated source it shapes: one naming, one folding rule, one buffer plan, and source
that defines every name it reads, has no dead statements and no machine paths."""

import ast
import builtins
import os
import re
from dataclasses import dataclass

import numpy as np
import pytest
from graphc.passes import pipeline
from graphc.passes.memory import memory
from graphc.passes.simplify import simplify

import graphc as gc
from graphc import lowering
from graphc.graph import Graph
from graphc.ir import Op, Tensor


@pytest.fixture(autouse=True)
def kernel_cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR",
                       str(tmp_path_factory.getbasetemp() / "graphc-kernel-cache"))


def undefined_names(source: str, known=()) -> set[str]:
    """Names a function of ``source`` reads that nothing defines: not a parameter, not
    assigned or imported in it or at module level, not a builtin and not in ``known``."""
    tree = ast.parse(source)
    module = set(known) | set(dir(builtins))
    for node in tree.body:
        for n in ast.walk(node) if not isinstance(node, ast.FunctionDef) else ():
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                module.add(n.id)
            elif isinstance(n, ast.alias):
                module.add((n.asname or n.name).split(".")[0])
        if isinstance(node, ast.FunctionDef):
            module.add(node.name)
    missing = set()
    for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        local = {a.arg for a in fn.args.args} | {
            n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        missing |= {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)
                    and isinstance(n.ctx, ast.Load) and n.id not in local | module}
    return missing


def dead_assignments(source: str) -> list[str]:
    """Statements ``name = ...`` in an innermost loop body (a kernel's loop, a phase of a
    fused kernel) whose name nothing after them in that body reads."""
    dead = []
    for loop in ast.walk(ast.parse(source)):
        if not isinstance(loop, ast.For) or any(isinstance(n, ast.For) for n in loop.body):
            continue
        for k, st in enumerate(loop.body):
            if isinstance(st, ast.Assign) and isinstance(st.targets[0], ast.Name):
                later = {n.id for s in loop.body[k + 1:] for n in ast.walk(s)
                         if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
                if st.targets[0].id not in later | {"j"}:
                    dead.append(ast.unparse(st))
    return dead


NUMBA_GLOBALS = ("np", "_addr", "_waddr", "_contig", "_parallel", "_compiled")


def check_source(source: str, known=NUMBA_GLOBALS) -> None:
    assert undefined_names(source, known) == set()
    assert "/tmp" not in source and os.path.expanduser("~") not in source
    assert dead_assignments(source) == []


@pytest.fixture(scope="module")
def step():
    """A small training step (matmul, bias, tanh, a fused sum, a folded broadcast
    constant) after the default pipeline, compiled once for Numba."""
    x, W, b = gc.input("x", (64, 32)), gc.input("W", (32, 16)), gc.input("b", (16,))
    with gc.scope("fc1"):
        h = gc.tanh(gc.matmul(x, W) + b)
    loss = gc.sum(h * h) * 0.5
    outs = [loss, *gc.grad(loss, [W, b])]
    f = gc.compile(outs, backend="numba")
    return outs, f


def test_one_name_per_node_in_source_and_printer(step):
    _, f = step
    names = lowering.var_names(f.graph)
    printed = gc.graph.node_names(f.graph)
    (mm,) = [t for t in f.graph.nodes if t.op.name == "matmul" and printed[id(t)].
             startswith("fc1")]
    assert printed[id(mm)] == "fc1.matmul"
    assert names[id(mm)] == f"v{f.graph.nodes.index(mm)}_fc1_matmul"
    assert f"np.matmul(in0_x, in1_W, out={names[id(mm)]})" in f.source
    assert "# fc1.matmul = matmul(x, W) : f32[64,16]" in f.source
    assert lowering.identifier("evil\nimport os") == "evil"


def test_numba_source_defines_every_name_and_shows_no_paths(step):
    _, f = step
    check_source(f.source)
    assert re.search(r"^v\d+_0_5 = _compiled\['v\d+_0_5'\]  # 0.5 = constant\(\) : f32\[\]$",
                     f.source, re.M)


@pytest.mark.slow
def test_fused_phases_compute_nothing_for_nothing():
    """A long fused body runs in phases; a cheap value a later phase computes again was
    also computed, unused, by the phase before (``p1 = ...`` in phase 2)."""
    x = gc.input("x", (4, 4096))
    h = x
    for _ in range(2):
        h = gc.tanh(h) * gc.sigmoid(h) + gc.exp(-h * h)
    loss = gc.sum(h)
    outs = [loss, gc.grad(loss, x)]
    f = gc.compile(outs, backend="numba")
    assert "phases over tiles" in f.source
    check_source(f.source)
    v = np.random.default_rng(0).normal(size=(4, 4096)).astype(np.float32)
    for got, want in zip(f(x=v), gc.compile(outs, backend="numpy")(x=v)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_numba_buffers_are_the_memory_pass_plan(step):
    outs, f = step
    log = {}
    memory(f.graph, log=log)
    assert f.stats["buffer_bytes"] == log["buffer_bytes"] > 0
    assert log["planned_peak_bytes"] == log["buffer_bytes"] + sum(
        int(np.prod(t.shape)) * 4 for t in f.graph.outputs)
    # a fused group's operands die at its last output: its first output takes one over
    assert log["in_place"] >= 1


@dataclass(frozen=True)
class Noise(Op):
    """A stand-in for an op whose value is not a function of its operands."""

    name = "noise"
    pure = False
    calls = 0

    def infer(self, inputs):
        return inputs[0].shape, inputs[0].dtype

    def evaluate(self, x):
        Noise.calls += 1
        return x + Noise.calls


def test_one_folding_rule_for_simplify_and_backends():
    Noise.calls = 0
    c = gc.constant(np.ones(3))
    y = Tensor.make(Noise(), (gc.exp(c),))
    g = simplify(Graph(y))
    assert [t.op.name for t in g.nodes] == ["constant", "noise"]  # exp folded, noise not
    assert list(lowering.fold_constants(g.nodes)) == [id(g.nodes[0])]
    big = gc.exp(gc.constant(np.ones(lowering.FOLD_LIMIT_BYTES // 8 + 1)))
    assert simplify(Graph(big)).outputs[0].op.name == "exp"  # over the one size limit
    assert id(big) not in lowering.fold_constants(Graph(big).nodes)
    f = gc.compile(y, backend="numba", passes=[])
    assert f.stats["lowered"]["folded"] == 2 and f.stats["numpy_fallbacks"] == ["noise"]
    first, second = f(), f()
    np.testing.assert_allclose(second - first, 1.0)  # evaluated on every call


def test_operand_kinds():
    kinds, sizes = lowering.broadcast_pattern((2, 3, 4), [(2, 3, 4), (3, 4), ()])
    assert (kinds, sizes) == ("FRS", [2, 12])
    kinds, sizes = lowering.broadcast_pattern((5, 7), [(5, 1), (1, 7)])
    assert (kinds, sizes) == ("CR", [5, 7])
    assert lowering.broadcast_pattern((2, 3, 4), [(2, 1, 4), (3, 1)]) == ("FF", [24])


def test_cuda_and_numba_sources_name_nodes_alike():
    """The CUDA lowering needs numba.cuda; its naming and source are checked under the
    simulator in test_cuda_sim.py.  Here: both backends take their names from
    lowering.var_names, the same function of the graph."""
    x = gc.input("x", (3,))
    graph, _ = pipeline.run(Graph(gc.exp(x) * 2.0), pipeline.DEFAULT_PIPELINE)
    names = lowering.var_names(graph)
    from graphc import numba_backend
    program = numba_backend.compile_graph(graph)
    for t in graph.nodes:
        assert names[id(t)] in program.orchestrator


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_run_time_errors_name_the_node_as_the_printer(backend):
    x = gc.input("x", (4, 2), "float64")
    idx = gc.input("idx", (3,), "int32")
    with gc.scope("embed"):
        y = gc.take(x, idx)
    f = gc.compile(gc.sigmoid(y), backend=backend)
    with pytest.raises(gc.GraphError, match=r"^take \(embed\.take\) failed at run time"):
        f(x=np.zeros((4, 2)), idx=np.array([0, 4, 1], np.int32))
