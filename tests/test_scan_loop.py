"""The Numba backend's scan loop (numba_backend.LoopRunner): the body called once per step
with every argument made before the loop, no allocation, copy or address look-up per step,
and the results of the NumPy reference backend for every form of a scan."""

import sys
from collections import Counter

import numpy as np
import pytest

import graphc as gc

rng = np.random.default_rng(3)
B, D, H = 2, 3, 4


def lstm_loss(steps):
    xs = gc.input("xs", (steps, B, D), "float32")
    W, U = gc.input("W", (D, 4 * H), "float32"), gc.input("U", (H, 4 * H), "float32")

    def cell(carry, x):
        h, c = carry
        z = x @ W + h @ U
        i, f = gc.sigmoid(z[:, :H]), gc.sigmoid(z[:, H:2 * H])
        c = f * c + i * gc.tanh(z[:, 2 * H:3 * H])
        h = gc.sigmoid(z[:, 3 * H:]) * gc.tanh(c)
        return (h, c), h

    zeros = gc.constant(np.zeros((B, H), np.float32))
    (h, _), hs = gc.scan(cell, (zeros, zeros), xs)
    loss = gc.sum(h) + gc.sum(hs * hs)
    feeds = {"xs": rng.standard_normal((steps, B, D)).astype(np.float32),
             "W": rng.standard_normal((D, 4 * H)).astype(np.float32),
             "U": rng.standard_normal((H, 4 * H)).astype(np.float32)}
    return [loss] + gc.grad(loss, [W, U]), feeds


def calls_during(f, feeds) -> Counter:
    """The Python functions and the NumPy allocations and copies one call of ``f`` makes."""
    seen = Counter()
    names = {"empty", "zeros", "copy", "array", "ascontiguousarray", "empty_like"}

    def profile(frame, event, arg):
        if event == "call":
            seen[frame.f_code.co_name] += 1
        elif event == "c_call" and arg.__name__ in names:
            seen["np." + arg.__name__] += 1
    sys.setprofile(profile)
    try:
        f(feeds)
    finally:
        sys.setprofile(None)
    return seen


@pytest.mark.slow  # compiles kernels
@pytest.mark.parametrize("native", [True, False])
def test_a_step_is_one_call_of_the_body_and_allocates_nothing(monkeypatch, native):
    from graphc import numba_loop
    monkeypatch.setattr(numba_loop, "ENABLED", native)
    counts = []
    for steps in (3, 9):
        outputs, feeds = lstm_loss(steps)
        f = gc.compile(outputs, backend="numba")
        assert f.source.count("# loop") == 2  # the forward loop and the backward one
        assert f.source.count("called from the native loop graphc_loop_") == 2 * native
        f(feeds)  # the first call makes the buffers
        counts.append(calls_during(f, feeds))
    per_6_steps = counts[1] - counts[0]
    if native:  # each loop is one native call, whatever its length: no Python per step
        assert per_6_steps == Counter(), per_6_steps
    else:
        # two loops, 6 steps more each: the body's run and graphc.blas.ready (a flag
        # test); in the backward one, np.concatenate's dispatcher (the gate gradients side
        # by side, into their preallocated buffer: the simplify rules scatter-merge and
        # scatter-whole)
        assert per_6_steps == Counter(run=12, ready=12, concatenate=6), per_6_steps
    assert counts[0] - counts[1] == Counter()


@pytest.mark.slow  # compiles kernels
def test_the_stacks_a_loop_writes_are_the_programs_buffers_not_new_arrays(monkeypatch):
    """A scan's stacked outputs (ys and the residuals the backward reads) are buffers of
    the memory plan, the same arrays every call: allocated per call, their pages were
    faulted in again each time (W4s: 1,970 page faults and ~40% of a step)."""
    from graphc.numba_backend import LoopRunner
    outputs, feeds = lstm_loss(5)
    f = gc.compile(outputs, backend="numba")
    given = []
    call = LoopRunner.__call__

    def spy(self, *arrays, out=()):
        given.append(tuple(out))
        return call(self, *arrays, out=out)
    monkeypatch.setattr(LoopRunner, "__call__", spy)
    for _ in range(3):
        f(feeds)
    assert len(given) == 6 and all(given)  # two loops a call, each given its stacks
    assert [tuple(map(id, g)) for g in given[:2]] == [tuple(map(id, g)) for g in given[2:4]]
    assert all(a is b for a, b in zip(given[2] + given[3], given[4] + given[5]))
    for got, want in zip(f(feeds), gc.compile(outputs, backend="numpy")(feeds)):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


def test_a_stack_that_is_an_output_is_a_new_array_each_call():
    xs = gc.input("xs", (40, 8, 16))
    _, ys = gc.scan(lambda c, x: (c + x, gc.tanh(c + x)),
                    gc.constant(np.zeros((8, 16), np.float32)), xs)
    f = gc.compile([ys, gc.sum(ys)], backend="numba")
    x = rng.standard_normal((40, 8, 16)).astype(np.float32)
    first, total = f(xs=x)
    second, _ = f(xs=x)
    assert not np.shares_memory(first, second)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(total, first.sum(dtype=np.float64), rtol=1e-5)


@pytest.mark.slow  # compiles kernels
@pytest.mark.parametrize("native", [True, False])
def test_the_step_table_is_made_once_and_follows_new_arrays_every_call(monkeypatch, native):
    """A loop's step table is a matrix of offsets made at the first call plus each
    column's base address per call: calls with other arrays (here a transposed ``xs`` and
    new weights every call) read those, and each runner stacks its offsets once."""
    from graphc import numba_loop
    from graphc.numba_backend import LoopRunner
    monkeypatch.setattr(numba_loop, "ENABLED", native)
    outputs, feeds = lstm_loss(6)
    f = gc.compile(outputs, backend="numba")
    reference = gc.compile(outputs, backend="numpy")
    runners = [v for v in f._program._run.__globals__.values() if isinstance(v, LoopRunner)]
    assert len(runners) == 2  # the forward loop and the backward one
    for call in range(4):
        fed = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in feeds.items()}
        if call % 2:  # xs through a transposed view (not C-contiguous)
            fed["xs"] = np.ascontiguousarray(fed["xs"].transpose(1, 0, 2)).transpose(1, 0, 2)
        for got, want in zip(f(fed), reference(fed)):
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    assert [len(r._matrices) for r in runners] == [1, 1]


def compare(outputs, feeds, rtol=2e-5):
    got = gc.compile(outputs, backend="numba")(feeds)
    want = gc.compile(outputs, backend="numpy")(feeds)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol)
    return got


@pytest.mark.slow
def test_the_lstm_and_its_gradients_equal_the_reference():
    compare(*lstm_loss(5))


@pytest.mark.slow
def test_reverse_a_carry_passed_through_views_and_repeats_as_outputs():
    # xs transposed (not contiguous), a const W.T read by a kernel, a carry the body
    # returns unchanged, a y that is a slice of the new carry and a y that is the carry
    xs = gc.input("xs", (3, 6, 4), "float32")
    W = gc.input("W", (5, 6), "float32")

    def fn(carry, x):
        h, k = carry
        h = gc.tanh(x @ W.T + h * 0.5) + W.T[0]
        return (h, k), (h[:, 1:3], h, k * 2.0)

    init = (gc.constant(np.ones((4, 5), np.float32)), gc.input("k", (2,), "float32"))
    (h, k), (y1, y2, y3) = gc.scan(fn, init, gc.transpose(xs, (0, 2, 1)), reverse=True)
    loss = gc.sum(h) + gc.sum(y1 * y1) + gc.sum(gc.sin(y2))
    feeds = {"xs": rng.standard_normal((3, 6, 4)).astype(np.float32),
             "W": rng.standard_normal((5, 6)).astype(np.float32),
             "k": np.float32([1.5, -2.0])}
    got = compare([h, k, y1, y2, y3, loss] + gc.grad(loss, [xs, W]), feeds)
    np.testing.assert_array_equal(got[4], np.broadcast_to(2 * feeds["k"], (3, 2)))


@pytest.mark.slow
@pytest.mark.parametrize("length", [0, 1, 4])
def test_xs_none_one_step_and_no_step(length):
    a = gc.input("a", (3,), "float64")
    total, ys = gc.scan(lambda c, _: (gc.exp(c) * 0.5 + a, c), a, None, length=length)
    got = compare([total, ys], {"a": np.float64([0.1, -0.3, 2.0])}, rtol=1e-12)
    assert got[1].shape == (length, 3)


@pytest.mark.slow
def test_a_scan_inside_a_scan_body():
    xs = gc.input("xs", (3, 4), "float64")

    def outer(c, row):
        inner, _ = gc.scan(lambda s, v: (s + gc.tanh(v * c), None),
                           gc.constant(0.0, dtype="float64"), row)
        return c + inner, inner

    c, ys = gc.scan(outer, gc.constant(1.0, dtype="float64"), xs)
    compare([c, ys] + gc.grad(c, [xs]), {"xs": rng.standard_normal((3, 4))}, rtol=1e-12)
