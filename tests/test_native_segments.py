"""Runs of a program's statements as native calls (graphc/numba_segments.py): the same bits
as the Python orchestrator (``numba_loop.ENABLED``, read per call) on an MLP training step,
an unrolled LSTM and a step that updates its parameters in place; feeds it would read with
another layout, and errors, go through the Python run; calls from several threads."""

from __future__ import annotations

import numpy as np
import pytest
from test_native_loop import both_ways, same_from_threads  # the bit-for-bit checks

import graphc as gc
from graphc import numba_loop

pytestmark = pytest.mark.slow  # compiles kernels

rng = np.random.default_rng(5)


def mlp(batch=16):
    x = gc.input("x", (batch, 12))
    W1, b1 = gc.input("W1", (12, 32)), gc.input("b1", (32,))
    W2, b2 = gc.input("W2", (32, 4)), gc.input("b2", (4,))
    h = gc.relu(x @ W1 + b1)
    loss = gc.mean(gc.tanh(h @ W2 + b2) ** 2)
    feeds = {"x": rng.standard_normal((batch, 12)), "W1": rng.standard_normal((12, 32)),
             "b1": rng.standard_normal(32), "W2": rng.standard_normal((32, 4)),
             "b2": rng.standard_normal(4)}
    feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
    return [loss, *gc.grad(loss, [W1, b1, W2, b2])], feeds


def native_calls(f) -> int:
    runs = f.stats.get("native_runs", {"calls": 0, "source": ""})
    assert runs["source"].count("statements as one native call") == runs["calls"]
    assert f"run as {runs['calls']} native calls" in f.source or not runs["calls"]
    return runs["calls"]


def test_an_mlp_step_has_native_runs_with_the_same_bits(monkeypatch):
    outputs, feeds = mlp()
    f = gc.compile(outputs, backend="numba")
    assert native_calls(f) >= 1
    got = both_ways(f, feeds, monkeypatch)
    want = gc.compile(outputs, backend="numpy")(feeds)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_an_unrolled_lstm(monkeypatch):
    B, D, H, T = 3, 4, 8, 5
    xs = gc.input("xs", (T, B, D))
    W, U = gc.input("W", (D, 4 * H)), gc.input("U", (H, 4 * H))
    h = c = gc.constant(np.zeros((B, H), np.float32))
    for t in range(T):
        z = xs[t] @ W + h @ U
        i, f_, g, o = (z[:, k * H:(k + 1) * H] for k in range(4))
        c = gc.sigmoid(f_) * c + gc.sigmoid(i) * gc.tanh(g)
        h = gc.sigmoid(o) * gc.tanh(c)
    loss = gc.sum(h * h)
    f = gc.compile([loss, *gc.grad(loss, [W, U])], backend="numba")
    feeds = {"xs": rng.standard_normal((T, B, D)).astype(np.float32),
             "W": rng.standard_normal((D, 4 * H)).astype(np.float32),
             "U": rng.standard_normal((H, 4 * H)).astype(np.float32)}
    assert native_calls(f) >= 1
    both_ways(f, feeds, monkeypatch)


def test_a_strided_feed_takes_the_python_run(monkeypatch):
    outputs, feeds = mlp()
    f = gc.compile(outputs, backend="numba")
    program = f._program
    used = []
    native = program._run_native

    def spy(*args):
        used.append(1)
        return native(*args)
    monkeypatch.setattr(program, "_run_native", spy)
    want = f(feeds)
    assert used == [1]
    strided = dict(feeds, x=np.asfortranarray(feeds["x"]))
    for a, b in zip(f(strided), want):
        np.testing.assert_array_equal(a, b)
    assert used == [1]  # the Fortran-ordered x: not read by the native runs


def test_parameters_updated_in_place(monkeypatch):
    outputs, feeds = mlp()
    loss, gW1, gb1, gW2, gb2 = outputs
    lr = 0.1
    new = [gc.input(n, feeds[n].shape) - lr * g
           for n, g in zip(("W1", "b1", "W2", "b2"), (gW1, gb1, gW2, gb2))]
    results = {}
    for flag in (False, True):
        monkeypatch.setattr(numba_loop, "ENABLED", flag)
        f = gc.compile([loss, *new], backend="numba", donate=["W1", "b1", "W2", "b2"])
        mine = {k: v.copy() for k, v in feeds.items()}
        results[flag] = [np.array(a) for a in f(mine)] + [mine[k] for k in sorted(mine)]
    for a, b in zip(results[False], results[True]):
        np.testing.assert_array_equal(a, b)


def test_a_run_time_error_still_names_the_node():
    x = gc.input("x", (4, 2), "float64")
    idx = gc.input("idx", (3,), "int32")
    y = gc.sigmoid(gc.take(x, idx) @ gc.constant(np.ones((2, 5))))
    f = gc.compile(gc.tanh(y * 2.0) + y, backend="numba")
    f(x=np.zeros((4, 2)), idx=np.array([0, 3, -4], np.int32))
    with pytest.raises(gc.GraphError, match=r"take .*failed at run time"):
        f(x=np.zeros((4, 2)), idx=np.array([0, 4, 1], np.int32))


def test_calls_from_several_threads_at_once():
    outputs, feeds = mlp(batch=64)
    same_from_threads(gc.compile(outputs, backend="numba"), feeds, calls=30)


def test_runs_shorter_than_min_operations_stay_python(monkeypatch):
    from graphc import numba_segments
    outputs, feeds = mlp()
    monkeypatch.setattr(numba_segments, "MIN_OPERATIONS", 1000)
    f = gc.compile(outputs, backend="numba")
    assert "native_runs" not in f.stats and "native calls" not in f.source
    assert f(feeds)[0].shape == ()


def test_feeds_are_read_through_their_array_objects():
    """The per-call table holds ids; the native code reads each array's data address from
    the object (numba_loop.ARRAY_DATA_OFFSET, checked on arrays when it is imported)."""
    assert numba_loop.ARRAY_DATA_OFFSET == 16
    outputs, _ = mlp()
    f = gc.compile(outputs, backend="numba")
    source = f.stats["native_runs"]["source"]
    assert "id(in" in source and "_addr(in" not in source.split("def run_native(")[1]
