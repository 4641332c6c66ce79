"""The BLAS behind the Numba backend's matmuls (graphc/blas.py, docs/perf.md): GEMM
values against the NumPy interpreter, the once-per-thread OpenBLAS warm-up, and
``f.stats["blas"]``.  The graphs here need no Numba kernel (matmuls and small ufuncs)."""

import sys
import threading

import numpy as np
import pytest

import graphc as gc
import graphc.blas as blas


def gemms(dtype="float32"):
    """One layer's forward and backward GEMMs (x@W + b, dz@W.T, x.T@dz) and batched ones,
    transposed operands included, with feeds."""
    x = gc.input("x", (6, 5), dtype)
    W = gc.input("W", (5, 4), dtype)
    b = gc.input("b", (4,), dtype)
    dz = gc.input("dz", (6, 4), dtype)
    xs = gc.input("xs", (3, 6, 5), dtype)
    outs = [x @ W + b, dz @ W.T, x.T @ dz, gc.matmul(xs, W),
            gc.matmul(gc.transpose(xs, (0, 2, 1)), gc.broadcast_to(dz, (3, 6, 4)))]
    rng = np.random.default_rng(0)
    feeds = {t.name: rng.standard_normal(t.shape).astype(dtype) for t in (x, W, b, dz, xs)}
    return outs, feeds


@pytest.fixture(scope="module")
def mlp():
    return gemms()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gemms_match_the_interpreter(dtype):
    outs, feeds = gemms(dtype)
    f = gc.compile(outs)
    ref = gc.compile(outs, backend="numpy")
    got, want = f(**feeds), ref(**feeds)
    # BLAS and the interpreter's np.matmul are the same library calls: identical results
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)
    assert f.source.count("np.matmul(") == 5
    # the operands are views (transposes as flags): no copy before a matmul; only the
    # return line copies outputs out of the staged buffers (small values, made once)
    steps = f.source.split("\ndef run(", 1)[1].split("\n    return ", 1)[0]
    assert ".copy()" not in steps and "ascontiguousarray" not in f.source


def test_stats_name_the_blas(mlp):
    outs, feeds = mlp
    f = gc.compile(outs)
    info = f.stats["blas"]
    assert set(info) == {"internal_api", "version", "architecture", "num_threads",
                         "threading_layer"}
    if "openblas" in blas.numpy_blas():
        assert info["internal_api"] == "openblas"
    pytest.importorskip("threadpoolctl")
    assert info["num_threads"] >= 1 and info["architecture"]
    no_gemm = gc.compile(gc.exp(gc.input("v", (3,))))
    assert "blas" not in no_gemm.stats and "blas_ready" not in no_gemm.source


def test_blas_info_without_threadpoolctl(monkeypatch):
    monkeypatch.setattr(blas, "_INFO", [])
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import fails
    info = blas.info()
    assert info["internal_api"] == blas.numpy_blas()
    assert info["num_threads"] is None and info["architecture"] is None
    assert blas.threads() is None


def test_ready_warms_openblas_once_per_thread(monkeypatch):
    calls = []
    real = np.matmul

    def counting(a, b, *args, **kwargs):
        calls.append((a.shape, b.shape, a.dtype))
        return real(a, b, *args, **kwargs)

    monkeypatch.setattr(blas, "_ready", set())
    monkeypatch.setattr(blas.np, "matmul", counting)
    monkeypatch.setattr(blas, "numpy_blas", lambda: "scipy-openblas")
    blas.ready()
    blas.ready()
    assert calls == [(*blas.WARM_UP, np.dtype("float64"))]  # one DGEMM
    worker = threading.Thread(target=blas.ready)
    worker.start()
    worker.join()
    assert len(calls) == 2  # OpenBLAS's buffers are per thread
    monkeypatch.setattr(blas, "_ready", set())
    monkeypatch.setattr(blas, "numpy_blas", lambda: "mkl")
    blas.ready()
    assert len(calls) == 2  # other BLAS libraries need nothing


def test_program_calls_ready_once_before_its_first_gemm(mlp):
    outs, _ = mlp
    source = gc.compile(outs).source
    run = source[source.index("def run("):]
    assert run.count("blas_ready()") == 1
    assert run.index("blas_ready()") < run.index("np.matmul(")


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32"])
@pytest.mark.parametrize("shape", [(128, 512), (3, 1), (1, 7), (5, 5)])
def test_transposed_copies_a_transposed_matrix_bit_for_bit(dtype, shape):
    w = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    if dtype != "int32":
        w.flat[0], w.flat[-1] = -0.0, np.nan  # the sign of a zero and a NaN kept
    want = np.ascontiguousarray(w.T).view(np.uint8)
    got = blas.transposed(w.T)
    assert got.flags.c_contiguous and got.shape == w.T.shape
    np.testing.assert_array_equal(got.view(np.uint8), want)
    out = np.full(w.T.shape, 7, dtype)  # written into a given array
    assert blas.transposed(w.T, out=out) is out
    np.testing.assert_array_equal(out.view(np.uint8), want)
    if dtype != "int32" and "openblas" in blas.numpy_blas():  # through OpenBLAS's omatcopy
        assert blas._omatcopy(np.dtype(dtype)) is not None
