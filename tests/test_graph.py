"""Graph views (graphc/graph.py): topological order, the text printer, check_graph and the
networkx export."""

import gc as garbage
import re

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import graphc as gc


def mlp():
    x = gc.input("x", (8, 4))
    W1, b1 = gc.param("W1", (4, 16)), gc.param("b1", (16,), init="zeros")
    W2, b2 = gc.param("W2", (16, 3)), gc.param("b2", (3,), init="zeros")
    labels = gc.input("labels", (8,), "int64")
    h = gc.relu(x @ W1 + b1)
    logits = h @ W2 + b2
    return gc.softmax_cross_entropy(logits, labels) + 1e-3 * gc.l2(W1)


def assert_topological(nodes):
    position = {id(t): k for k, t in enumerate(nodes)}
    assert len(position) == len(nodes)  # no node twice
    for k, t in enumerate(nodes):
        for i in t.inputs:
            assert id(i) in position, "an input of a node is missing from the graph"
            assert position[id(i)] < k, f"{i} comes after its user {t}"


# ---------------------------------------------------------------------------------------
# Topological order


def test_nodes_are_topological_and_complete():
    loss = mlp()
    g = gc.Graph(loss)
    assert_topological(g.nodes)
    assert g.nodes[-1] is loss
    names = {t.op.label for t in g.inputs}
    assert names == {"x", "W1", "b1", "W2", "b2", "labels"}
    assert {t.op.label for t in g.params} == {"W1", "b1", "W2", "b2"}
    assert len(g) == len(g.nodes)


def test_graph_of_several_outputs():
    x = gc.input("x", (3,))
    a, b = gc.exp(x), gc.sum(x)
    g = gc.Graph([a, b, a])
    assert g.outputs == (a, b, a)
    assert_topological(g.nodes)
    assert sum(t is a for t in g.nodes) == 1
    with pytest.raises(gc.GraphError):
        gc.Graph([])
    with pytest.raises(TypeError):
        gc.Graph([x, np.ones(3)])


@st.composite
def random_graphs(draw):
    """A random DAG of elementwise, reduction and structural ops over a few inputs."""
    nodes = [gc.input(f"r{k}", (3, 2)) for k in range(draw(st.integers(1, 3)))]
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["add", "mul", "exp", "neg", "sum", "t", "max"]))
        a = draw(st.sampled_from(nodes))
        b = draw(st.sampled_from(nodes))
        if kind == "add":
            nodes.append(a + b)
        elif kind == "mul":
            nodes.append(a * b)
        elif kind == "exp":
            nodes.append(gc.exp(a))
        elif kind == "neg":
            nodes.append(-a)
        elif kind == "sum":
            nodes.append(a + gc.sum(b, axis=0, keepdims=True))
        elif kind == "t":
            nodes.append(a.T.T)
        else:
            nodes.append(gc.maximum(a, b))
    outs = draw(st.lists(st.sampled_from(nodes), min_size=1, max_size=3))
    return outs


@settings(max_examples=40, deadline=None)
@given(random_graphs())
def test_random_graphs_are_topological_and_deterministic(outs):
    g = gc.Graph(outs)
    assert_topological(g.nodes)
    assert gc.format_graph(g) == gc.format_graph(gc.Graph(list(outs)))
    gc.check_graph(g)
    nxg = g.to_networkx()
    assert nx.is_directed_acyclic_graph(nxg)
    assert nxg.number_of_nodes() == len(g.nodes)
    assert nxg.number_of_edges() == sum(len(t.inputs) for t in g.nodes)


# ---------------------------------------------------------------------------------------
# The text printer


def test_format_graph_is_deterministic():
    text = gc.format_graph(mlp())
    assert text == gc.format_graph(mlp())
    assert text == str(gc.Graph(mlp()))
    garbage.collect()  # a rebuilt identical graph (new objects) prints the same
    assert gc.format_graph(mlp()) == text


def test_format_graph_is_deterministic_across_processes():
    import inspect
    import subprocess
    import sys
    code = "import graphc as gc\n" + inspect.getsource(mlp) + "print(gc.format_graph(mlp()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.rstrip("\n") == gc.format_graph(mlp())


def test_format_graph_shows_shapes_dtypes_and_params():
    x = gc.input("x", (4, 3))
    W = gc.param("W", (3, 2))
    i = gc.input("i", (4,), "int64")
    text = gc.format_graph([gc.relu(x @ W), i * 2])
    assert "x: f32[4,3]" in text
    assert re.search(r"W: f32\[3,2\] param\(xavier_normal\)", text)
    assert "i: i64[4]" in text
    assert re.search(r"= matmul\(x, W\)\s+: f32\[4,2\]", text)
    assert re.search(r"relu = relu\(matmul\)\s+: f32\[4,2\]", text)
    assert re.search(r": i64\[4\]", text)
    assert text.startswith("graph(") and text.rstrip().endswith("}")
    assert "return" in text


def test_format_graph_names_shared_nodes():
    x = gc.input("x", (2,))
    e = gc.exp(x)
    y = e * e + e
    text = gc.format_graph(y)
    assert text.count("exp(") == 1  # printed once ...
    name = re.search(r"(\S+) = exp\(x\)", text).group(1)
    assert f"mul({name}, {name})" in text  # ... and referred to by name
    assert re.search(rf"add\(\S+, {name}\)", text) and "%" not in text
    # every line defines a fresh name
    defined = re.findall(r"^\s+(\S+) = ", text, re.M)
    assert len(defined) == len(set(defined))


def test_format_graph_shows_constants_and_attributes():
    x = gc.input("x", (2, 3))
    text = gc.format_graph(gc.sum(x * 2.5, axis=1))
    assert "mul(x, 2.5)" in text  # a scalar constant inline, by its value
    assert "const = constant [1., 2., 3.]" in gc.format_graph(x + np.array([1.0, 2.0, 3.0]))
    assert "axes=(1,)" in text and "keepdims=False" in text
    text = gc.format_graph(gc.leaky_relu(x, 0.2))
    assert "alpha=0.2" in text


def test_printed_names_are_unique_with_named_constants():
    # Regression: a named constant once printed under its label without a clash check, so a
    # constant named like an input (or two constants with one name) printed as "add(x, x)"
    # and to_networkx merged the two into one node.
    x = gc.input("x", (2,))
    for y in [x + gc.constant(np.float32(1.0), name="x"),
              x * gc.constant(np.float32(1.0), name="c") * gc.constant(np.float32(2.0),
                                                                           name="c")]:
        try:
            nxg = gc.to_networkx(y)
        except gc.GraphError:
            continue  # rejecting the clash is fine too
        assert nxg.number_of_nodes() == len(gc.Graph(y).nodes)
        defined = re.findall(r"^\s+(\S+) = ", gc.format_graph(y), re.M)
        assert len(defined) == len(set(defined))


def _names_scanning_from_1(nodes):
    """The naming rule as first written: each repeat scans _2, _3 ... from the start."""
    from graphc.graph import _derived_name, _own_name
    names, taken = {}, {t.op.label for t in nodes if isinstance(t.op, gc.inputs.Input)}
    for t in nodes:
        base = _own_name(t) or _derived_name(t)
        name, k = base, 1
        while name in taken and not isinstance(t.op, gc.inputs.Input):
            k += 1
            name = f"{base}_{k}"
        names[id(t)] = name
        taken.add(name)
    return names


def test_repeated_names_are_numbered_as_by_a_scan_from_1():
    # 600 tanh, adds and muls, with names that take some of their numbers ahead of them
    # (an input "tanh_4", a node named "add_3" and one named "tanh"): the same names
    x = gc.input("x", (2,))
    h = gc.input("tanh_4", (2,))
    for k in range(200):
        h = gc.tanh(h * x + 1.0)
        if k == 5:
            h = (h + x).named("add_3")
        if k == 50:
            h = gc.exp(h).named("tanh")
    graph = gc.Graph(h)
    names = gc.graph.node_names(graph)
    assert names == _names_scanning_from_1(graph.depth_first)
    assert len(set(names.values())) == len(graph.nodes)
    assert {"tanh_200", "tanh_201", "add_200", "mul_200"} <= set(names.values())


# ---------------------------------------------------------------------------------------
# check_graph


def test_check_graph_passes_on_good_graphs():
    loss = mlp()
    g = gc.check_graph(loss)
    assert isinstance(g, gc.Graph) and g.outputs == (loss,)
    assert gc.check_graph(g) is g
    x = gc.input("x", (3,))
    gc.check_graph([x, gc.exp(x), x[0] * gc.sum(x)])


def test_check_graph_rejects_two_inputs_with_one_name():
    a, b = gc.input("x", (2,)), gc.input("x", (3,))
    y = [gc.sum(a), gc.sum(b)]  # each node is fine on its own (an op joining them is
    with pytest.raises(gc.GraphError) as info:  # refused: tests/test_validation.py)
        gc.check_graph(y)
    message = str(info.value)
    assert "'x'" in message and "f32[2]" in message and "f32[3]" in message
    with pytest.raises(gc.GraphError):
        gc.check_graph([a, b])
    with pytest.raises(gc.GraphError):  # compile checks the graph as well
        gc.compile(y, backend="numpy")


def test_check_graph_rejects_input_and_param_with_one_name():
    x, p = gc.input("w", (2,)), gc.param("w", (2,))
    with pytest.raises(gc.GraphError, match="'w'"):
        gc.check_graph(x + p)
    with pytest.raises(gc.GraphError, match="'w'"):
        gc.check_graph(gc.input("w", (2,), "float64") + gc.input("w", (2,)))


def test_check_graph_finds_a_node_with_a_wrong_recorded_shape():
    # Corrupt a private copy of a node (unique names keep it away from other tests).
    x = gc.input("x_corrupt", (2,))
    y = gc.exp(x)
    object.__setattr__(y, "shape", (5,))
    try:
        with pytest.raises(gc.GraphError, match=r"\(5,\)"):
            gc.check_graph(y)
    finally:
        object.__setattr__(y, "shape", (2,))
    gc.check_graph(y)


# ---------------------------------------------------------------------------------------
# networkx export


def test_to_networkx_nodes_edges_and_attributes():
    x = gc.input("x", (4, 3))
    W = gc.param("W", (3, 2))
    y = gc.relu(x @ W + 1.0)
    g = gc.to_networkx(y)
    graph = gc.Graph(y)
    assert isinstance(g, nx.MultiDiGraph)
    assert g.number_of_nodes() == len(graph.nodes) == 6  # x, W, matmul, 1.0, add, relu
    assert g.number_of_edges() == 5
    assert nx.is_directed_acyclic_graph(g)
    kinds = sorted(d["kind"] for _, d in g.nodes(data=True))
    assert kinds == ["constant", "input", "op", "op", "op", "param"]
    assert g.nodes["x"]["op"] == "input" and g.nodes["x"]["kind"] == "input"
    assert g.nodes["W"]["kind"] == "param"
    assert g.nodes["x"]["shape"] == (4, 3) and g.nodes["x"]["dtype"] == "float32"
    by_op = {d["op"]: d for _, d in g.nodes(data=True)}
    assert by_op["matmul"]["shape"] == (4, 2) and by_op["matmul"]["dtype"] == "float32"
    assert by_op["relu"]["kind"] == "op"
    assert by_op["constant"]["shape"] == () and by_op["constant"]["kind"] == "constant"
    for name, data in g.nodes(data=True):
        t = data["tensor"]
        assert (data["op"], data["shape"], data["dtype"]) == (t.op.name, t.shape, t.dtype)
        assert g.in_degree(name) == len(t.inputs)
    # the sink is the output, the sources are the leaves
    assert [n for n in g if g.out_degree(n) == 0] == [n for n, d in g.nodes(data=True)
                                                      if d["op"] == "relu"]
    assert {n for n in g if g.in_degree(n) == 0} == {"x", "W"} | {
        n for n, d in g.nodes(data=True) if d["kind"] == "constant"}
    assert g.graph["outputs"] == [n for n, d in g.nodes(data=True) if d["op"] == "relu"]


def test_to_networkx_operand_order_on_edges():
    a, b = gc.input("a", (2,)), gc.input("b", (2,))
    g = gc.to_networkx(a - b)
    (out,) = [n for n, d in g.nodes(data=True) if d["op"] == "sub"]
    assert g.get_edge_data("a", out)[0]["index"] == 0
    assert g.get_edge_data("b", out)[0]["index"] == 1


def test_square_of_a_node_gives_two_parallel_edges():
    x = gc.input("x", (3,))
    g = gc.to_networkx(x * x)
    assert g.number_of_nodes() == 2
    assert g.number_of_edges() == 2
    (out,) = [n for n, d in g.nodes(data=True) if d["op"] == "mul"]
    assert g.number_of_edges("x", out) == 2
    assert sorted(d["index"] for d in g.get_edge_data("x", out).values()) == [0, 1]
    assert nx.is_directed_acyclic_graph(g)


def test_to_networkx_of_a_big_model_is_a_dag():
    loss = mlp()
    g = gc.Graph(loss).to_networkx()
    assert nx.is_directed_acyclic_graph(g)
    assert g.number_of_nodes() == len(gc.Graph(loss).nodes)
    assert g.number_of_edges() == sum(len(t.inputs) for t in gc.Graph(loss).nodes)
    order = list(nx.topological_sort(g))
    assert order.index("x") < order.index(g.graph["outputs"][0])
