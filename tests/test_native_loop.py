"""A scan's loop as one native function (graphc/numba_loop.py): the body's kernel calls,
GEMMs, copies and IEEE arithmetic called from compiled code, with the same bits as the
Python loop over the same body (the switch ``numba_loop.ENABLED``, read per call), for
LSTM, GRU and RNN cells forward and backward, bidirectional, reversed, truncated,
rematerialised and float64; the lines it does not run keep the Python loop and say why."""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest
from graphc.passes import pipeline
from test_scan_loop import lstm_loss  # the small LSTM of the loop tests

import graphc as gc
import graphc.nn as nn
from graphc import numba_loop

pytestmark = pytest.mark.slow  # compiles kernels

rng = np.random.default_rng(11)


def loops(f) -> list[str]:
    """How each loop of ``f`` runs: ``native`` or the reason it does not."""
    found = re.findall(r"# loop\d+: the scan body, run \d+ times \(([^)]*)\)", f.source)
    return ["native" if "native loop graphc_loop_" in h else h for h in found]


def both_ways(f, feeds, monkeypatch) -> list:
    """``f``'s outputs from the native code (loops and runs), checked bit for bit against
    the Python run (``numba_loop.ENABLED`` is read per call); the program's buffers are
    filled with NaN in between, so what the native code leaves unwritten shows."""
    monkeypatch.setattr(numba_loop, "ENABLED", False)
    python = f(feeds)
    for buffers in f._program._free:
        for array in buffers[2]:
            if array.dtype.kind == "f":
                array.fill(np.nan)
    monkeypatch.setattr(numba_loop, "ENABLED", True)
    native = f(feeds)
    for a, b in zip(python, native):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    return native


def test_lstm_forward_and_backward_loops_are_native_and_bit_equal(monkeypatch):
    outputs, feeds = lstm_loss(6)
    f = gc.compile(outputs, backend="numba")
    assert loops(f) == ["native", "native"]
    got = both_ways(f, feeds, monkeypatch)
    want = gc.compile(outputs, backend="numpy")(feeds)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_nn_layers_bidirectional_in_float32(kind, monkeypatch):
    layer = getattr(nn, kind)(5, 16, bidirectional=True, name=f"nl{kind}")
    x = gc.input("x", (4, 7, 5))
    ys, _ = layer(x)
    loss = gc.sum(ys * ys)
    params = list(layer.parameters().values())
    f = gc.compile([loss, *gc.grad(loss, [x, *params])], backend="numba")
    feeds = {"x": rng.standard_normal((4, 7, 5)).astype(np.float32)}
    feeds.update({p.name: (0.3 * rng.standard_normal(p.shape)).astype(np.float32)
                  for p in params})
    assert loops(f).count("native") == 4, loops(f)  # two directions, forward and backward
    both_ways(f, feeds, monkeypatch)


@pytest.mark.parametrize("reverse", [False, True])
def test_float64_reverse_and_truncated(reverse, monkeypatch):
    xs = gc.input("xs", (9, 3, 4), "float64")
    W = gc.input("W", (6, 6), "float64")
    U = gc.input("U", (4, 6), "float64")

    def cell(h, x):
        h = gc.tanh(h @ W + x @ U) * 0.75 + h * 0.25
        return h, h

    h0 = gc.input("h0", (3, 6), "float64")
    h, hs = gc.scan(cell, h0, xs, reverse=reverse, truncate=4)
    loss = gc.sum(h * h) + gc.sum(gc.sin(hs))
    f = gc.compile([loss, *gc.grad(loss, [xs, W, U, h0])], backend="numba")
    feeds = {"xs": rng.standard_normal((9, 3, 4)), "W": 0.4 * rng.standard_normal((6, 6)),
             "U": rng.standard_normal((4, 6)), "h0": rng.standard_normal((3, 6))}
    assert "native" in loops(f)
    got = both_ways(f, feeds, monkeypatch)
    want = gc.compile([loss, *gc.grad(loss, [xs, W, U, h0])], backend="numpy")(feeds)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10)


def test_rematerialised_loops(monkeypatch):
    outputs, feeds = lstm_loss(5)
    f = gc.compile(outputs, backend="numba", passes=pipeline.REMAT_PIPELINE)
    assert "native" in loops(f)
    both_ways(f, feeds, monkeypatch)


def test_a_line_it_does_not_run_keeps_the_python_loop_and_says_which():
    xs = gc.input("xs", (5, 3, 4), "float32")

    def cell(c, x):
        c = c + gc.max(x, axis=1, keepdims=True)  # a NumPy reduction: not a native line
        return c, c

    c, cs = gc.scan(cell, gc.constant(np.zeros((3, 1), np.float32)), xs)
    f = gc.compile([c, cs], backend="numba")
    assert len(loops(f)) == 1 and "not natively: np.maximum.reduce(" in loops(f)[0]
    x = rng.standard_normal((5, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(f(xs=x)[1], np.cumsum(x.max(axis=2, keepdims=True), axis=0))


def test_switched_off_when_compiling(monkeypatch):
    monkeypatch.setattr(numba_loop, "ENABLED", False)
    outputs, feeds = lstm_loss(3)
    f = gc.compile(outputs, backend="numba")
    assert loops(f) == ["once per step", "once per step"]
    assert f(feeds)[0].shape == ()


def same_from_threads(f, feeds, threads=6, calls=20) -> None:
    """``f(feeds)`` called ``calls`` times in each of ``threads`` threads at once gives the
    bits of one call alone (each call takes a set of buffers of its own)."""
    want = f(feeds)
    results = [None] * threads

    def work(k):
        for _ in range(calls):
            results[k] = f(feeds)
    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    for got in results:
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


def test_calls_from_several_threads_at_once():
    outputs, feeds = lstm_loss(8)
    same_from_threads(gc.compile(outputs, backend="numba"), feeds)


# ---------------------------------------------------------------------------------------
# What it declines: where NumPy would not call gemm, or would broadcast


def _arr(shape, strides=None, slot=("s", 0), dtype="float32"):
    size = np.dtype(dtype).itemsize
    return numba_loop.Arr(slot, 0, shape, strides or numba_loop.c_strides(shape, size),
                           dtype)


def test_gemm_as_numpy_calls_it():
    a, b, c = _arr((4, 3)), _arr((3, 5), slot=("s", 1)), _arr((4, 5), slot=("s", 2))
    op = numba_loop._gemm(a, b, c)
    assert op[:7] == ("gemm", "float32", 111, 111, 4, 5, 3) and op[8] == 3 and op[10] == 5
    bt = _arr((3, 5), strides=(4, 12), slot=("s", 1))  # a (5, 3) array's transpose
    assert numba_loop._gemm(a, bt, c)[3:4] == (112,) and numba_loop._gemm(a, bt, c)[10] == 3
    declined = [
        (_arr((1, 3)), b, _arr((1, 5), slot=("s", 2))),  # one row: NumPy calls gemv
        (a, _arr((3, 1), slot=("s", 1)), _arr((4, 1), slot=("s", 2))),  # one column
        (a, _arr((3, 5), slot=("s", 1), dtype="float64"), c),  # mixed dtypes
        (a, _arr((3, 5), strides=(40, 8), slot=("s", 1)), c),  # strided both ways: a copy
        (_arr((4, 4)), _arr((4, 4), strides=(4, 16)), _arr((4, 4), slot=("s", 2))),  # syrk
    ]
    for operands in declined:
        with pytest.raises(numba_loop.Unsupported):
            numba_loop._gemm(*operands)


def test_arithmetic_declines_broadcasts_and_rounds_numbers_to_the_dtype():
    names = numba_loop.Names()
    names.arrays.update(a=_arr((4, 3)), b=_arr((1, 3), slot=("s", 1)),
                        c=_arr((4, 3), slot=("s", 2)), d=_arr((4, 1), slot=("s", 3)))
    op = numba_loop._arithmetic("multiply", ["a", "0.1"], names.array("c"), names)
    assert op[1:3] == ("fmul", 12) and op[4][1] == ("const", float(np.float32(0.1)))
    op = numba_loop._arithmetic("add", ["a", "b"], names.array("c"), names)
    assert [x[2] for x in op[4]] == [12, 3]  # a row repeats every 3 elements
    with pytest.raises(numba_loop.Unsupported):  # a column: not a trailing block
        numba_loop._arithmetic("add", ["a", "d"], names.array("c"), names)


def test_the_loop_object_is_kept_in_the_kernel_cache(tmp_path, monkeypatch):
    from graphc import kernel_cache
    from graphc import numba_native as native
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    ops = [("ew", "fadd", 3, _arr((3,), slot=("s", 0)),
            [("arr", _arr((3,), slot=("s", 1)), 3), ("const", 2.0)])]
    names = numba_loop.Names()
    ir = numba_loop.module_ir(ops, names).replace("@drive", "@graphc_loop_test_cache")
    built = []

    def build():
        built.append(1)
        return native.object_from_ir(ir, "graphc_loop_test_cache")
    address = kernel_cache.link("graphc_loop_test_cache", build)
    assert any(tmp_path.rglob("graphc_loop_test_cache.native"))
    assert kernel_cache.link("graphc_loop_test_cache", build) == address and built == [1]
    loop = numba_loop.NativeLoop(ir, "graphc_loop_test_cache", [], False, address)
    out, x = np.zeros(3, np.float32), np.float32([1.5, -2.0, 1e30])
    table = np.array([[out.ctypes.data], [x.ctypes.data]], np.int64)
    loop.run(1, table, np.zeros(1, np.int64))
    np.testing.assert_array_equal(out, x + np.float32(2.0))
