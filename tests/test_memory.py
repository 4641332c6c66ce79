"""The memory-aware schedule (passes/schedule.py) that the memory pass keeps when its plan
is smaller: a topological order of the same nodes, values bitwise unchanged on every
backend, and a lower planned peak for a training step.  Values that die before an output
is written live in that output's fresh array: the planned peak of an MLP step is its live
peak."""

from __future__ import annotations

import dataclasses
import re
import threading
from functools import partial

import numpy as np
import pytest
from graphc.passes import memory as memory_pass
from graphc.passes import pipeline
from graphc.passes.memory import memory

import graphc as gc
import graphc.numba_lowering
from graphc.errors import GraphError
from graphc.fused_ops import Fused
from graphc.graph import Graph, check_graph, node_names
from graphc.lowering import instance_key

# The default pipeline with the memory pass kept to the graph's depth-first order.
UNSCHEDULED = (*pipeline.DEFAULT_PIPELINE[:-1],
               pipeline.Pass("memory", partial(memory, reorder=False)))


def mlp_step(batch, widths, seed=0):
    """A training step of a ReLU MLP with softmax cross-entropy (benchmarks' W1 and W2):
    the outputs (loss, then every parameter's gradient) and feeds."""
    x = gc.input("x", (batch, widths[0]))
    labels = gc.input("labels", (batch,), "int64")
    h, params = x, []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
        W, b = gc.param(f"W{i}", (fan_in, fan_out)), gc.param(f"b{i}", (fan_out,))
        h = h @ W + b
        h = gc.relu(h) if i < len(widths) - 1 else h
        params += [W, b]
    loss = gc.softmax_cross_entropy(h, labels)
    rng = np.random.default_rng(seed)
    feeds = {"x": rng.standard_normal((batch, widths[0])).astype(np.float32),
             "labels": rng.integers(0, widths[-1], batch)}
    feeds.update({p.op.label: (0.1 * rng.standard_normal(p.shape)).astype(np.float32)
                  for p in params})
    return [loss, *gc.grad(loss, params)], feeds


def test_the_schedule_is_a_topological_order_of_the_same_nodes():
    outputs, _ = mlp_step(8, (12, 10, 10, 3))
    graph, report = pipeline.run(Graph(outputs), pipeline.DEFAULT_PIPELINE, check=True)
    order, dfs = graph.nodes, graph.depth_first
    assert [id(t) for t in order] != [id(t) for t in dfs]  # the schedule moved nodes
    assert sorted(map(id, order)) == sorted(map(id, dfs)) and len(order) == len(set(order))
    position = {id(t): k for k, t in enumerate(order)}
    assert all(position[id(i)] < position[id(t)] for t in order for i in t.inputs)
    instances: dict[tuple, list] = {}
    for t in order:
        if isinstance(t.op, Fused):
            instances.setdefault(instance_key(t), []).append(position[id(t)])
    assert any(len(p) > 1 for p in instances.values())
    assert all(p == list(range(p[0], p[0] + len(p))) for p in instances.values())
    # names and inputs follow the depth-first order, whatever the schedule
    assert node_names(graph) == node_names(Graph(graph.outputs))
    assert graph.inputs == Graph(graph.outputs).inputs
    memory_report = report[-1]
    assert memory_report["planned_peak_bytes"] < memory_report["unscheduled_peak_bytes"]
    saved = 1 - memory_report["planned_peak_bytes"] / memory_report["unscheduled_peak_bytes"]
    assert f"scheduled, {saved:.0%} below graph order" in pipeline.describe(memory_report)


def test_check_graph_refuses_an_order_that_is_not_a_schedule():
    x = gc.input("x", (3,))
    y = gc.exp(gc.sin(x))
    nodes = Graph(y).nodes
    with pytest.raises(GraphError, match="schedule: exp runs before its input sin"):
        check_graph(Graph(y, nodes[::-1]))
    with pytest.raises(GraphError, match="schedule: 2 nodes .* not the graph's 3 nodes"):
        check_graph(Graph(y, nodes[1:]))
    with pytest.raises(GraphError, match=r"schedule: 4 nodes \(3 distinct\)"):
        check_graph(Graph(y, nodes + nodes[-1:]))


@pytest.fixture(scope="module")
def w1_step():
    """W1's training step (MLP 784-256-256-10, batch 128), float32."""
    return mlp_step(128, (784, 256, 256, 10))


@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=pytest.mark.slow)])
def test_scheduled_values_are_bitwise_those_of_the_depth_first_order(w1_step, backend):
    outputs, feeds = w1_step
    f = gc.compile(outputs, backend=backend)
    g = gc.compile(outputs, backend=backend, passes=UNSCHEDULED)
    assert [id(t) for t in f.graph.nodes] != [id(t) for t in g.graph.nodes]
    assert sorted(map(id, f.graph.nodes)) == sorted(map(id, g.graph.nodes))
    got, want = f(feeds), g(feeds)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    assert f.stats["planned_peak_bytes"] < g.stats["planned_peak_bytes"]
    if backend == "numba":  # the plan is what the program allocates, and in its order
        for h, values in ((f, got), (g, want)):
            assert h.stats["buffer_bytes"] + sum(v.nbytes for v in values) == \
                h.stats["planned_peak_bytes"]
        steps = re.findall(r"^    # (\S+) = ", f.source, re.M)
        names = node_names(f.graph)
        position = {names[id(t)]: k for k, t in enumerate(f.graph.nodes)}
        assert len(steps) > 10 and [position[s] for s in steps] == \
            sorted(position[s] for s in steps)


def test_planned_peak_of_an_mlp_training_step_is_bounded():
    """Batch 32, widths 64-32-32-4: the backward needs at most three (32, 32) values at
    once (the two ReLU outputs and the gradient of the second) and a few (32, 4) ones;
    the depth-first order keeps the backward values of the weight gradients to the end."""
    outputs, _ = mlp_step(32, (64, 32, 32, 4))
    out_bytes = sum(t.nbytes for t in outputs)
    bound = out_bytes + 3 * 32 * 32 * 4 + 4 * 32 * 4 * 4
    f = gc.compile(outputs, backend="numpy")
    g = gc.compile(outputs, backend="numpy", passes=UNSCHEDULED)
    assert f.stats["planned_peak_bytes"] <= bound < g.stats["planned_peak_bytes"]


def hosting_plan(outputs):
    """The memory plan of ``outputs`` optimized, and the optimized outputs."""
    graph, _ = pipeline.run(Graph(outputs), pipeline.DEFAULT_PIPELINE)
    return memory_pass.plan(graph.nodes, graph.outputs), graph.outputs


def test_values_sharing_storage_never_overlap_and_hosted_ones_die_before_their_output():
    p, outputs = hosting_plan(mlp_step(64, (100, 80, 80, 10))[0])
    position = {id(t): k for k, t in enumerate(p.order)}
    last = {}  # storage root -> its last step (outputs: the end)
    for k, t in enumerate(p.order):
        for i in t.inputs:
            last[p.root[id(i)]] = k
    regions = {}  # host position or ("slot", s) -> [(first step, last step, offset, bytes)]
    for t in p.order:
        k = position[id(t)]
        if id(t) in p.host_of:
            assert id(t) not in p.slot_of and id(t) not in {id(o) for o in outputs}
            h, offset = p.host_of[id(t)]
            host = p.order[h]
            assert any(host is o for o in outputs) and host.nbytes > 16384
            assert last[k] < h and offset % 64 == 0 and offset + t.nbytes <= host.nbytes
            regions.setdefault(h, []).append((k, last[k], offset, t.nbytes))
        elif id(t) in p.slot_of:
            slot, offset = p.slot_of[id(t)], p.offset_of.get(id(t), 0)
            assert offset + t.nbytes <= p.slot_bytes[slot]
            regions.setdefault(("slot", slot), []).append((k, last[k], offset, t.nbytes))
    hosted = sum(len(v) for h, v in regions.items() if isinstance(h, int))
    assert p.figures["hosted"] == hosted > 2 and len(regions) > 2
    for spans in regions.values():
        for a, (s1, e1, o1, n1) in enumerate(spans):
            for s2, e2, o2, n2 in spans[a + 1:]:
                # an elementwise (or fused) node written over its operand
                in_place = o1 == o2 and any(i is p.order[s1] for i in p.order[s2].inputs)
                assert in_place or e1 < s2 or e2 < s1 or o1 + n1 <= o2 or o2 + n2 <= o1


def test_planned_peak_of_w1_is_its_live_peak(w1_step):
    """The buffers held for the whole call were 1.48 MB next to a live peak of 1.21 MB
    (PyTorch eager's measured peak: 1208368 bytes); hosting closes the gap."""
    outputs, _ = w1_step
    figures = hosting_plan(outputs)[0].figures
    assert figures["planned_peak_bytes"] == figures["peak_live_bytes"] <= 1208368
    assert figures["buffer_bytes"] == 128 * 256 * 4  # the ReLU gradient matmul_6 reads


def every_value_its_own_buffer(*args, **kwargs):
    """The memory plan with nothing shared: no value hosted, none at an offset, none
    written in place (each in a slot of its own)."""
    p = memory_pass.plan(*args, **kwargs)
    ids = [*p.slot_of, *p.host_of]
    nbytes = {id(t): t.nbytes for t in p.order}
    return dataclasses.replace(p, slot_of={i: k for k, i in enumerate(ids)},
                               slot_bytes=[nbytes[i] for i in ids], host_of={}, offset_of={})


def two_values_where_one_died():
    """exp(x) (8000 bytes) dies into a sum; then exp(y) and sin(y) (4000 each) are alive
    at once: one buffer holds both where exp(x) was, slots need 8000 + 4000."""
    x, y = gc.input("x", (2000,)), gc.input("y", (1000,))
    e = gc.exp(x)
    s = gc.sum(e)
    ey, sy = gc.exp(y), gc.sin(y)
    b, c = ey * s, sy * s
    bc = b * c
    out = gc.sum(bc)
    return out, [x, e, s, y, ey, b, sy, c, bc, out]


def test_one_buffer_at_offsets_holds_what_slots_cannot():
    out, order = two_values_where_one_died()
    p = memory_pass.plan(order, [out])
    assert p.figures["buffer_bytes"] == 8000 + 64 + 4 < 8000 + 4000
    assert len(p.slot_bytes) == 1 and p.offset_of[id(order[4])] != p.offset_of[id(order[6])]


@pytest.mark.slow
def test_packed_values_are_bitwise_those_of_a_buffer_each(monkeypatch):
    out, order = two_values_where_one_died()
    graphs = [(mlp_step(64, (100, 80, 80, 10)), None),
              (([out], {"x": np.linspace(-3, 1, 2000, dtype=np.float32),
                        "y": np.linspace(0, 5, 1000, dtype=np.float32)}),
               [lambda graph: Graph(graph.outputs, order)])]
    for (outputs, feeds), passes in graphs:
        f = gc.compile(outputs, backend="numba", passes=passes)
        got = f(feeds)
        if passes is None:  # the memory pass ran: its plan is what the program allocates
            assert f.stats["buffer_bytes"] + sum(v.nbytes for v in got) == \
                f.stats["planned_peak_bytes"]
        with monkeypatch.context() as m:
            m.setattr(graphc.numba_lowering, "plan_memory", every_value_its_own_buffer)
            g = gc.compile(outputs, backend="numba", passes=passes)
        assert g.stats["buffer_bytes"] > f.stats["buffer_bytes"]
        assert ("np.ndarray(" in f.source) == (passes is None) and "np.ndarray(" not in g.source
        for a, b in zip(got, g(feeds)):
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.slow
def test_each_call_returns_arrays_of_its_own():
    outputs, feeds = mlp_step(64, (100, 80, 80, 10))
    f = gc.compile(outputs, backend="numba")
    got = f(feeds)
    again = f(feeds)  # a fresh array per call: the first call's results are untouched
    assert all(a.tobytes() == b.tobytes() and not np.shares_memory(a, b)
               for a, b in zip(got, again))


@pytest.mark.slow
def test_concurrent_calls_each_host_in_their_own_outputs():
    outputs, feeds = mlp_step(64, (100, 80, 80, 10))
    f = gc.compile(outputs, backend="numba")
    rng = np.random.default_rng(1)
    many = [{**feeds, "x": rng.standard_normal(feeds["x"].shape).astype(np.float32)}
            for _ in range(4)]
    want = [[v.tobytes() for v in f(fd)] for fd in many]
    errors = []

    def worker(k):
        for _ in range(30):
            if [v.tobytes() for v in f(many[k])] != want[k]:
                errors.append(k)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_lowest_gap_is_the_first_fit_in_offset_order():
    """The array form of the packer's gap search against its definition: the lowest
    offset where ``size`` bytes overlap no block alive at the same time."""
    from graphc.passes.memory import _Placed

    def reference(rows, start, end, size):
        offset = 0
        for lo, hi in sorted((o, o + n) for s, e, o, n in rows if s <= end and e >= start):
            if lo - offset >= size:
                break
            offset = max(offset, hi)
        return offset

    rng = np.random.default_rng(7)
    for _ in range(300):
        placed, rows = _Placed(), []
        for _ in range(int(rng.integers(0, 150))):  # past the first growth of the arrays
            s = int(rng.integers(0, 50))
            row = (s, s + int(rng.integers(0, 20)), int(rng.integers(0, 40)) * 64,
                   int(rng.integers(1, 6)) * 64)
            placed.add(*row)
            rows.append(row)
        start = int(rng.integers(0, 50))
        end, size = start + int(rng.integers(0, 10)), int(rng.integers(1, 8)) * 64
        assert placed.lowest_gap(start, end, size) == reference(rows, start, end, size)
