"""A scan's native loop as two loops over half the batch rows each, on two threads
(graphc/loop_split.py): which bodies are row-wise, the one loop's results (its bits where
the BLAS computes a GEMM's rows alike in a GEMM of half the rows), BLAS's thread count
restored, errors and concurrent calls."""

import threading

import numpy as np
import pytest

import graphc as gc
from graphc import blas, loop_split, numba_backend, numba_loop
from graphc.graph import Graph
from graphc.inputs import Input
from graphc.ir import Tensor

# where a loop is never split (one CPU, a BLAS other than NumPy's OpenBLAS) the tests of a
# split loop have nothing to run; those of the decision and the blocks still do
needs_split = pytest.mark.skipif(loop_split.cpus() < 2 or not blas.can_set_threads(),
                                 reason="loops run in halves only on 2+ CPUs with OpenBLAS")

rng = np.random.default_rng(5)
T, B, D, H = 7, 32, 5, 16


def lstm(reverse=False, batch=B):
    xs = gc.input("xs", (T, batch, D), "float32")
    W, U = gc.input("W", (D, 4 * H), "float32"), gc.input("U", (H, 4 * H), "float32")
    b = gc.input("b", (4 * H,), "float32")

    def cell(carry, x):
        h, c = carry
        z = x @ W + h @ U + b
        i, f = gc.sigmoid(z[:, :H]), gc.sigmoid(z[:, H:2 * H])
        c = f * c + i * gc.tanh(z[:, 2 * H:3 * H])
        h = gc.sigmoid(z[:, 3 * H:]) * gc.tanh(c)
        return (h, c), h

    zeros = gc.constant(np.zeros((batch, H), np.float32))
    (h, _), hs = gc.scan(cell, (zeros, zeros), xs, reverse=reverse)
    loss = gc.mean(h) + gc.sum(hs * hs) / 100.0
    feeds = {"xs": rng.standard_normal((T, batch, D)).astype(np.float32),
             "W": rng.standard_normal((D, 4 * H)).astype(np.float32) * 0.5,
             "U": rng.standard_normal((H, 4 * H)).astype(np.float32) * 0.5,
             "b": rng.standard_normal(4 * H).astype(np.float32)}
    return [loss, hs] + gc.grad(loss, [W, U, b]), feeds


def rows_exact(*shapes) -> bool:
    """Whether NumPy's BLAS gives a GEMM's rows the same bits in a GEMM of half the rows,
    for each (m, k, n): OpenBLAS's SkylakeX kernel does; its Haswell kernel does not (nor
    for one GEMM run on one thread and on two)."""
    for m, k, n in shapes:
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        if not np.array_equal(a @ b, np.concatenate([a[:m // 2] @ b, a[m // 2:] @ b])):
            return False
    return True


def assert_same(split, whole, exact):
    """The same bits where the BLAS splits rows exactly, else float32 rounding apart."""
    for a, b in zip(split, whole, strict=True):
        if exact:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def split_and_whole(outputs, feeds, monkeypatch):
    f = gc.compile(outputs, backend="numba")
    split = f(feeds)
    monkeypatch.setattr(loop_split, "ENABLED", False)
    whole = f(feeds)
    monkeypatch.setattr(loop_split, "ENABLED", True)
    return f, split, whole


@needs_split
@pytest.mark.slow  # compiles kernels
@pytest.mark.parametrize("reverse", [False, True])
def test_an_lstm_runs_in_halves_with_the_one_loops_results(monkeypatch, reverse):
    outputs, feeds = lstm(reverse)
    threads = blas.threads()
    f, split, whole = split_and_whole(outputs, feeds, monkeypatch)
    assert f.source.count("as two loops of half the rows on two threads") == 2
    assert_same(split, whole, rows_exact((B, H, 4 * H), (B, 4 * H, H)))
    want = gc.compile(outputs, backend="numpy")(feeds)
    for a, b in zip(split, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    assert blas.threads() == threads  # one thread only meanwhile


@needs_split
@pytest.mark.slow
def test_gc_nn_gru_runs_in_halves(monkeypatch):
    gru = gc.nn.GRU(D, H, name="gru")
    x = gc.input("x", (B, T, D))
    out, h = gru(x)
    loss = gc.sum(out * out) + gc.sum(h)
    params = list(gru.parameters().values())
    outputs = [loss] + gc.grad(loss, params)
    feeds = {"x": rng.standard_normal((B, T, D)).astype(np.float32),
             **gc.init_params(loss, seed=1)}
    f, split, whole = split_and_whole(outputs, feeds, monkeypatch)
    assert "as two loops of half the rows" in f.source
    assert_same(split, whole, rows_exact((B, H, 3 * H), (B, 3 * H, H), (B, H, H)))


def scan_source(cell, batch=B, width=H):
    xs = gc.input("xs", (T, batch, width))
    init = gc.constant(np.zeros((batch, width), np.float32))
    carry, _ = gc.scan(cell, init, xs)
    return gc.compile(gc.sum(carry), backend="numba").source


@pytest.mark.parametrize("cell, why", [
    (lambda c, x: (gc.tanh(c + x + gc.sum(x, 0, True)), None), "a sum over the rows"),
    (lambda c, x: (gc.tanh(c[::-1] + x), None), "rows reversed"),
    (lambda c, x: (gc.tanh((x @ gc.transpose(x)) @ c / 100.0 + c), None), "rows x rows"),
    (lambda c, x: (gc.softmax(c + x, 0), None), "a softmax over the rows"),
    (lambda c, x: (gc.tanh(gc.concat([c[:B // 2], x[B // 2:]], 0)), None), "rows mixed"),
])
def test_a_body_that_mixes_rows_runs_whole(cell, why):
    assert "half the rows" not in scan_source(cell), why


@needs_split
def test_small_and_odd_batches_run_whole():
    def cell(c, x):
        return gc.tanh(c + x), None
    assert "half the rows" in scan_source(cell)
    assert "half the rows" not in scan_source(cell, batch=2 * loop_split.MIN_ROWS - 2)
    assert "half the rows" not in scan_source(cell, batch=B + 1)


def test_halve_keeps_weights_whole_and_halves_rows():
    h = Tensor.make(Input("h", (B, H), "float32"))
    x = Tensor.make(Input("x", (B, D), "float32"))
    w = Tensor.make(Input("w", (D, H), "float32"))
    bias = gc.broadcast_to(gc.reshape(gc.constant(np.ones(H, np.float32)), (1, H)), (B, H))
    out = gc.tanh(x @ w + h + bias)
    half = loop_split.halve(Graph([out]), {"h", "x"}, B)
    assert half is not None and half.outputs[0].shape == (B // 2, H)
    assert {t.op.label: t.shape for t in half.inputs} == \
        {"h": (B // 2, H), "x": (B // 2, D), "w": (D, H)}
    assert loop_split.halve(Graph([gc.sum(out, 0)]), {"h", "x"}, B) is None


@needs_split
@pytest.mark.slow
def test_after_the_first_split_loop_the_halves_run_as_native_jobs(monkeypatch):
    """A process's first split loop runs its halves through Python (which warms the
    worker's BLAS buffer); every later one as native jobs on OpenBLAS's threads, with the
    same bits."""
    monkeypatch.setattr(loop_split, "_WARM", set())
    hows, real = [], loop_split.run
    monkeypatch.setattr(loop_split, "run", lambda *args: hows.append(real(*args)))
    outputs, feeds = lstm()
    f = gc.compile(outputs, backend="numba")
    first, second = f(feeds), f(feeds)
    assert hows == ["python", "native", "native", "native"]  # forward, backward, twice
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    monkeypatch.setattr(blas, "worker_jobs", lambda: None)
    third = f(feeds)
    assert hows[4:] == ["thread", "thread"]
    for a, b in zip(first, third, strict=True):
        np.testing.assert_array_equal(a, b)


@needs_split
@pytest.mark.slow
def test_an_error_in_the_other_half_is_raised_not_lost(monkeypatch):
    outputs, feeds = lstm()
    f = gc.compile(outputs, backend="numba")
    f(feeds)
    monkeypatch.setattr(loop_split, "_WARM", set())  # the halves through Python, not native
    threads = blas.threads()
    from graphc import numba_runtime
    real = numba_runtime.NumbaProgram.run_native
    calls = []

    def failing(self, table, steps):
        calls.append(threading.get_native_id())
        if len(calls) == 2:
            raise RuntimeError("the other half failed")
        return real(self, table, steps)
    monkeypatch.setattr(numba_runtime.NumbaProgram, "run_native", failing)
    with pytest.raises(RuntimeError, match="the other half failed"):
        f(feeds)
    monkeypatch.setattr(numba_runtime.NumbaProgram, "run_native", real)
    assert blas.threads() == threads  # restored on the way out


@needs_split
@pytest.mark.slow
@pytest.mark.parametrize("openblas_workers", [True, False])
def test_concurrent_calls_give_each_its_own_results(monkeypatch, openblas_workers):
    """Two threads calling two split programs at once (OpenBLAS's workers, or graphc's
    threads where it has none): each gets what it gets alone."""
    if not openblas_workers:
        monkeypatch.setattr(blas, "worker_jobs", lambda: None)
    (o1, f1), (o2, f2) = lstm(), lstm(reverse=True)
    g1, g2 = gc.compile(o1, backend="numba"), gc.compile(o2, backend="numba")
    alone = [g1(f1), g2(f2)]
    got = [[], []]

    def hammer(k, g, feeds):
        for _ in range(15):
            got[k].append(g(feeds))
    workers = [threading.Thread(target=hammer, args=(k, g, fd))
               for k, (g, fd) in enumerate([(g1, f1), (g2, f2)])]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for k in range(2):
        assert len(got[k]) == 15
        for result in got[k]:
            for a, b in zip(result, alone[k], strict=True):
                np.testing.assert_array_equal(a, b)
    assert numba_loop.ENABLED


def test_gemm_blocks_cover_the_columns_once():
    from graphc.numba_loop import Arr, gemm_blocks
    a = Arr(("f", 0), 0, (16, 128), (512, 4), "float32")
    b = Arr(("f", 1), 8, (128, 512), (2048, 4), "float32")
    c = Arr(("f", 2), 0, (16, 512), (2048, 4), "float32")
    op = ("gemm", "float32", 111, 111, 16, 512, 128, a, 128, b, 512, c, 512)
    blocks = gemm_blocks(op, 10**6)
    assert [(x[5], x[9].offset, x[11].offset) for x in blocks] == [(256, 8, 0), (256, 1032, 1024)]
    bt = Arr(("f", 1), 0, (512, 128), (4, 2048), "float32")  # B passed transposed
    op = ("gemm", "float32", 111, 112, 16, 128, 512, a, 512, bt, 512, c, 128)
    assert [(x[5], x[9].offset, x[11].offset) for x in gemm_blocks(op, 10**6)] == \
        [(64, 0, 0), (64, 64 * 512 * 4, 256)]
    assert gemm_blocks(op, 10**7) == [op]  # small already
    assert gemm_blocks(op, 10**5) == [op]  # more than 4 blocks: one GEMM
    assert gemm_blocks(("call",), 10**6) == [("call",)]


@needs_split
@pytest.mark.slow
def test_w4s_sized_halves_call_their_gemms_in_column_blocks(monkeypatch):
    """W4's sizes (input 64, hidden 128, batch 32): each half's 16x128 @ 128x512 GEMM is
    two calls of 256 columns (OpenBLAS's small-matrix kernel), the results those of one
    loop to float32 rounding and of the reference."""
    monkeypatch.setattr(loop_split, "SMALL_GEMM", 10**6)
    monkeypatch.setitem(globals(), "D", 64)
    monkeypatch.setitem(globals(), "H", 128)
    outputs, feeds = lstm()
    f = gc.compile(outputs, backend="numba")
    runners = [v for v in f._program._run.__globals__.values()
               if isinstance(v, numba_backend.LoopRunner)]
    halves = [r.half[0].native for r in runners]
    if loop_split.small_gemm():  # NumPy's OpenBLAS: two GEMM calls a step, not one
        for native, r in zip(halves, runners):
            assert native.ir.count("(i32 101,") == 2 * r.body.native.ir.count("(i32 101,")
    split = f(feeds)
    monkeypatch.setattr(loop_split, "ENABLED", False)
    whole = f(feeds)
    want = gc.compile(outputs, backend="numpy")(feeds)
    for s, w, r in zip(split, whole, want, strict=True):
        np.testing.assert_allclose(s, w, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(s, r, rtol=1e-4, atol=1e-5)


_FORKED: dict = {}


def _run_in_child(queue) -> None:
    queue.put(_FORKED["f"](_FORKED["feeds"]))


@needs_split
@pytest.mark.slow
@pytest.mark.parametrize("openblas_workers", [True, False])
def test_a_forked_child_runs_split_loops(monkeypatch, openblas_workers):
    """In a forked child, OpenBLAS starts its workers again and graphc's own thread pool
    (where OpenBLAS has none) is made again: the parent's executor object comes along
    without its threads."""
    import multiprocessing
    if not openblas_workers:
        monkeypatch.setattr(blas, "worker_jobs", lambda: None)
    outputs, feeds = lstm()
    f = gc.compile(outputs, backend="numba")
    want = f(feeds)  # the parent's pool now has threads
    monkeypatch.setitem(_FORKED, "f", f)
    monkeypatch.setitem(_FORKED, "feeds", feeds)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_run_in_child, args=(queue,))
    child.start()
    got = queue.get(timeout=120)
    child.join(timeout=60)
    assert child.exitcode == 0
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
