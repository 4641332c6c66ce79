"""NumPy's own ways as operations of a native run (graphc/numba_numpy_ways.py): a matmul
with a dimension of 1 (NumPy's gemv, or its loop without BLAS) and a full sum (NumPy's
pairwise sum) give the bits of the Python statement, signs of zero, infinities and NaNs
included; so W6's teaching graph runs as one native call."""

from __future__ import annotations

import numpy as np
import pytest
from test_native_loop import both_ways  # the bit-for-bit check, buffers poisoned between

import graphc as gc
from graphc import numba_loop
from graphc import numba_numpy_ways as ways

pytestmark = pytest.mark.slow  # compiles kernels

rng = np.random.default_rng(17)


def bits_both_ways(f, feeds, monkeypatch) -> list:
    """:func:`test_native_loop.both_ways`, and the same bytes (signs of zero, NaNs)."""
    monkeypatch.setattr(numba_loop, "ENABLED", False)
    python = f(feeds)
    native = both_ways(f, feeds, monkeypatch)
    for a, b in zip(python, native):
        assert a.tobytes() == b.tobytes(), (a, b)
    return native


def native_statements(f) -> str:
    """The statements ``f`` runs as native calls (the comment lines of ``run_native``)."""
    source = f.stats.get("native_runs", {}).get("source", "")
    return "\n".join(line for line in source.splitlines() if line.startswith("    #   "))


CASES = {  # name: (a's shape, b's shape, transpose a, transpose b)
    "vector @ matrix": ((1, 5), (5, 7), False, False),
    "vector @ matrix.T": ((1, 5), (7, 5), False, True),
    "matrix @ vector": ((6, 5), (5, 1), False, False),
    "matrix.T @ vector": ((5, 6), (5, 1), True, False),
    "column @ row": ((6, 1), (1, 7), False, False),
    "(1, 1) @ row": ((1, 1), (1, 7), False, False),
    "column @ (1, 1)": ((6, 1), (1, 1), False, False),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_matmul_with_a_dimension_of_1_runs_natively_as_numpy_runs_it(case, dtype,
                                                                       monkeypatch):
    sa, sb, ta, tb = CASES[case]
    a, b = gc.input("a", sa, dtype), gc.input("b", sb, dtype)
    c = gc.input("c", (1,), dtype)
    y = (a.T if ta else a) @ (b.T if tb else b)
    f = gc.compile([y * c, y], backend="numba")  # a second statement: a run of two
    assert "np.matmul(" in native_statements(f), f.source
    feeds = {"a": rng.standard_normal(sa).astype(dtype),
             "b": rng.standard_normal(sb).astype(dtype), "c": np.ones(1, dtype)}
    feeds["a"].flat[0] = -0.0  # a product of -0: NumPy's loop without BLAS gives +0
    got = bits_both_ways(f, feeds, monkeypatch)
    want = np.matmul(feeds["a"].T if ta else feeds["a"], feeds["b"].T if tb else feeds["b"])
    assert got[1].tobytes() == want.tobytes()


def test_a_row_times_a_column_stays_numpys_dot():
    a, b = gc.input("a", (1, 5)), gc.input("b", (5, 1))
    f = gc.compile([(a @ b) * 2.0, a @ b], backend="numba")
    assert "np.matmul(" not in native_statements(f)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("size", [1, 2, 7, 8, 9, 127, 128, 129, 300, 1000])
def test_a_full_sum_runs_natively_in_numpys_order(size, dtype, monkeypatch):
    x = gc.input("x", (size,), dtype)
    total = gc.sum(gc.tanh(x) * 3.0)
    f = gc.compile([total * 2.0, total], backend="numba")
    assert "np.add.reduce(" in native_statements(f), f.source
    for values in (rng.standard_normal(size) * 10.0 ** rng.uniform(-4, 4, size),
                   np.full(size, -0.0)):  # all -0: NumPy's sum is +0 (0 + ...)
        got = bits_both_ways(f, {"x": values.astype(dtype)}, monkeypatch)
        assert not np.signbit(got[1]) or values.any()


def test_a_full_sum_of_more_values_stays_numpy():
    x = gc.input("x", (2, ways.TOTAL_MAX + 8))
    total = gc.sum(gc.tanh(x))
    f = gc.compile([total * 2.0, total], backend="numba")
    assert "np.add.reduce(" not in native_statements(f)


def test_nan_and_infinities_in_a_native_sum(monkeypatch):
    x = gc.input("x", (20,), "float64")
    total = gc.sum(x * 1.0)
    f = gc.compile([total * 2.0, total], backend="numba")
    for special in ([np.inf, -np.inf], [np.nan], [np.inf], [1e308, 1e308]):
        values = np.arange(20.0)
        values[:len(special)] = special
        bits_both_ways(f, {"x": values}, monkeypatch)


def test_the_teaching_graph_is_one_native_call(monkeypatch):
    """W6: a 2-2-1 tanh MLP on one sample, loss and its 4 gradients."""
    x, t = gc.input("x", (2,)), gc.input("t", ())
    W1, b1, w2, b2 = gc.input("W1", (2, 2)), gc.input("b1", (2,)), gc.input("w2", (2,)), \
        gc.input("b2", ())
    out = gc.tanh(gc.sum(gc.tanh(x @ W1 + b1) * w2) + b2)
    loss = gc.square(out - t)
    f = gc.compile([loss, *gc.grad(loss, [W1, b1, w2, b2])], backend="numba")
    assert f.stats["native_runs"]["calls"] == 1
    feeds = {k: rng.standard_normal(v.shape).astype(np.float32)
             for k, v in {"x": x, "t": t, "W1": W1, "b1": b1, "w2": w2, "b2": b2}.items()}
    got = bits_both_ways(f, feeds, monkeypatch)
    want = gc.compile([loss, *gc.grad(loss, [W1, b1, w2, b2])], backend="numpy")(feeds)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


def test_an_outer_product_of_more_than_outer_max_values_stays_a_numpy_call():
    """Written out value by value, a (1024, 1) @ (1, 8) product was 51k lines of IR and 17 s
    of LLVM: above OUTER_MAX values the native run declines it (NumPy runs it)."""
    def arr(shape):
        return numba_loop.Arr(("s", 0), 0, shape, numba_loop.c_strides(shape, 4), "float32")
    small = ways.matmul(arr((32, 1)), arr((1, 8)), arr((32, 8)), None)
    assert small[0] == "outer"
    with pytest.raises(ways.Unsupported, match="outer product of more than 1024"):
        ways.matmul(arr((1024, 1)), arr((1, 8)), arr((1024, 8)), None)
