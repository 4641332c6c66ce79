"""Which BLAS should graphc call for W1/W2's GEMMs?  Every GEMM of one training step,
timed interleaved in one process (A, B, C, A, B, C, ...; the median of many rounds) for
each BLAS that can be called on NumPy arrays without a copy:

- ``numpy``: ``np.matmul(a, b, out=c)`` (NumPy's OpenBLAS; transposed operands as views),
  what graphc's Numba backend calls today;
- ``scipy``: SciPy's own OpenBLAS, ``scipy.linalg.cython_blas.sgemm`` called from a Numba
  function by its address (transposes as flags);
- ``mkl``: ``cblas_sgemm`` of the ``mkl`` wheel's ``libmkl_rt`` through ctypes;
- ``blis``: ``blis.py.gemm`` of the ``blis`` wheel (single-threaded build);
- ``torch``: ``torch.matmul(..., out=)`` on the same memory (the reference to beat).

Threads are set with threadpoolctl (every OpenBLAS and MKL in the process) and
``torch.set_num_threads``.  A BLAS whose wheel is missing is left out.  Run::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/blas_choice.py \
        --threads 1 2 --rounds 9

It prints one Markdown table per thread count: GFLOP/s per BLAS and GEMM (the median of
``--rounds`` rounds, each the mean over calls filling ``--ms`` milliseconds), the load
average before and after.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time

import numpy as np

# (workload, GEMM, a's shape, b's shape, a transposed?, b transposed?): every GEMM of one
# W1/W2 step (the first layer's input gradient is not computed: x is not a parameter).


def step_gemms(name, batch, widths):
    out = []
    for i, (k, n) in enumerate(zip(widths[:-1], widths[1:]), start=1):
        out.append((name, f"h{i} = h@W{i}", (batch, k), (k, n), False, False))
        if i > 1:
            out.append((name, f"dh{i - 1} = dz@W{i}.T", (batch, n), (k, n), False, True))
        out.append((name, f"dW{i} = h.T@dz", (batch, k), (batch, n), True, False))
    return out


GEMMS = step_gemms("W1", 128, (784, 256, 256, 10)) + step_gemms("W2", 256, (784, 1024, 1024, 10))


def _operands(rng, ashape, bshape, ta, tb):
    a = rng.standard_normal(ashape).astype(np.float32)
    b = rng.standard_normal(bshape).astype(np.float32)
    av, bv = (a.T if ta else a), (b.T if tb else b)
    return a, b, av, bv, np.empty((av.shape[0], bv.shape[1]), np.float32)


# ---------------------------------------------------------------------------------------
# The BLAS calls: each ``make(a, b, ta, tb, c) -> call()`` computes c = op(a) @ op(b),
# a and b the contiguous arrays, op a transpose where the flag says so.


def numpy_call(a, b, ta, tb, c):
    av, bv = (a.T if ta else a), (b.T if tb else b)
    return lambda: np.matmul(av, bv, out=c)


def numpy_copy_call(a, b, ta, tb, c):
    """As ``numpy``, but a transposed operand is first copied to a contiguous array."""
    if not (ta or tb):
        return lambda: np.matmul(a, b, out=c)
    return lambda: np.matmul(np.ascontiguousarray(a.T) if ta else a,
                             np.ascontiguousarray(b.T) if tb else b, out=c)


def torch_call(a, b, ta, tb, c):
    import torch
    at, bt, ct = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
    at, bt = (at.T if ta else at), (bt.T if tb else bt)
    return lambda: torch.matmul(at, bt, out=ct)


def _row_major_args(a, b, ta, tb, c):
    """C = op(A) op(B) row-major is C^T = op(B)^T op(A)^T column-major: Fortran sgemm's
    arguments (transb, transa, n, m, k, B, ldb, A, lda, C, ldc)."""
    m, n = c.shape
    k = a.shape[0] if ta else a.shape[1]
    return (ord("T") if tb else ord("N"), ord("T") if ta else ord("N"), n, m, k,
            b.shape[1], a.shape[1], n)


_SCIPY = []


def _capsule_address(capsule) -> int:
    name = ctypes.pythonapi.PyCapsule_GetName
    name.restype, name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return get(capsule, name(capsule))


def _scipy_sgemm():
    """A Numba function calling SciPy's Fortran sgemm by its address (every argument by
    reference, column-major)."""
    if _SCIPY:
        return _SCIPY[0]
    import numba
    import scipy.linalg.cython_blas as cb
    from numba import types

    address = _capsule_address(cb.__pyx_capi__["sgemm"])
    # a ctypes function object: Numba calls it directly (pointers passed as integers)
    sgemm = ctypes.CFUNCTYPE(None, *[ctypes.c_ssize_t] * 13)(address)
    f32 = types.float32[:, ::1]
    sig = types.void(*[types.int32] * 5, f32, types.int32, f32, types.int32, f32, types.int32)

    @numba.njit(sig, nogil=True)
    def call(transb, transa, n, m, k, b, ldb, a, lda, c, ldc):
        ints = np.array([transb, transa, n, m, k, ldb, lda, ldc], np.int32)
        scalars = np.array([1.0, 0.0], np.float32)
        i, s = ints.ctypes.data, scalars.ctypes.data
        sgemm(i, i + 4, i + 8, i + 12, i + 16, s, b.ctypes.data, i + 20, a.ctypes.data,
              i + 24, s + 4, c.ctypes.data, i + 28)

    _SCIPY.append(call)
    return call


def scipy_call(a, b, ta, tb, c):
    sgemm = _scipy_sgemm()
    tb_, ta_, n, m, k, ldb, lda, ldc = _row_major_args(a, b, ta, tb, c)
    return lambda: sgemm(tb_, ta_, n, m, k, b, ldb, a, lda, c, ldc)


_MKL = []


def _mkl():
    if not _MKL:
        import glob
        import os
        found = glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*"))
        if not found:
            raise ImportError("no libmkl_rt in this environment (pip install mkl)")
        lib = ctypes.CDLL(found[0])
        lib.cblas_sgemm.restype = None
        lib.cblas_sgemm.argtypes = [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p,
                                                          ctypes.c_int, ctypes.c_void_p,
                                                          ctypes.c_int, ctypes.c_float,
                                                          ctypes.c_void_p, ctypes.c_int]
        _MKL.append(lib)
    return _MKL[0]


def mkl_call(a, b, ta, tb, c):
    lib = _mkl()
    m, n = c.shape
    k = a.shape[0] if ta else a.shape[1]
    args = (101, 112 if ta else 111, 112 if tb else 111, m, n, k, 1.0, a.ctypes.data,
            a.shape[1], b.ctypes.data, b.shape[1], 0.0, c.ctypes.data, n)
    f = lib.cblas_sgemm
    return lambda: f(*args)


def blis_call(a, b, ta, tb, c):
    from blis.py import gemm
    return lambda: gemm(a, b, out=c, trans1=ta, trans2=tb, alpha=1.0, beta=0.0)


CALLS = {"numpy": numpy_call, "numpy-Tcopy": numpy_copy_call, "scipy": scipy_call,
         "mkl": mkl_call, "blis": blis_call, "torch": torch_call}


def available(names):
    rng = np.random.default_rng(0)
    a, b, _, _, c = _operands(rng, (4, 3), (3, 5), False, False)
    ok = []
    for name in names:
        try:
            CALLS[name](a, b, False, False, c)()
        except ImportError as e:
            print(f"# {name}: left out ({e})")
            continue
        assert np.allclose(c, a @ b, rtol=1e-5), name
        ok.append(name)
    return ok


def warm_up(names):
    """What graphc does before its first GEMM (graphc.blas.ready), for NumPy's OpenBLAS
    and, likewise, SciPy's: one small DGEMM."""
    import graphc.blas
    graphc.blas.ready()
    if "scipy" in names:  # the same column-major call as NumPy's row-major product
        from scipy.linalg.blas import dgemm
        (m, k), (_, n) = graphc.blas.WARM_UP
        dgemm(1.0, np.ones((n, k), order="F"), np.ones((k, m), order="F"))


def set_threads(n):
    import threadpoolctl
    threadpoolctl.threadpool_limits(n)
    try:
        import torch
        torch.set_num_threads(n)
    except ImportError:
        pass


def time_round(call, ms, clock):
    """Mean seconds per call over calls filling about ``ms`` milliseconds."""
    t0 = clock()
    call()
    one = max(clock() - t0, 1e-6)
    reps = max(1, int(ms * 1e-3 / one))
    t0 = clock()
    for _ in range(reps):
        call()
    return (clock() - t0) / reps


def measure(names, rounds, ms, clock=time.perf_counter):
    rng = np.random.default_rng(0)
    rows = []
    for work, what, ashape, bshape, ta, tb in GEMMS:
        a, b, av, bv, c = _operands(rng, ashape, bshape, ta, tb)
        expect = av @ bv  # float32: a DGEMM here would warm OpenBLAS up (see --cold)
        calls = {n: CALLS[n](a, b, ta, tb, c) for n in names}
        for n, call in calls.items():  # warm up, and check every result
            c[...] = np.nan
            call()
            assert np.allclose(c, expect, rtol=1e-4, atol=1e-3), (n, what)
        times = {n: [] for n in names}
        for _ in range(rounds):
            for n, call in calls.items():
                times[n].append(time_round(call, ms, clock))
        flops = 2 * c.shape[0] * c.shape[1] * (ashape[0] if ta else ashape[1])
        shape = f"{av.shape[0]}x{av.shape[1]} @ {bv.shape[0]}x{bv.shape[1]}"
        rows.append((work, what, shape, {n: flops / statistics.median(t) / 1e9
                                         for n, t in times.items()}))
    return rows


def table(rows, names):
    lines = ["| workload | GEMM | shape | " + " | ".join(names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for work, what, shape, gf in rows:
        lines.append(f"| {work} | {what} | {shape} | "
                     + " | ".join(f"{gf[n]:.1f}" for n in names) + " |")
    for work in ("W1", "W2"):
        # the step's GEMM time relative to NumPy's: sum of flops / GFLOP/s per GEMM
        total = {n: sum(_flops(r) / r[3][n] for r in rows if r[0] == work) for n in names}
        lines.append(f"| {work} | all GEMMs, time / numpy's | | "
                     + " | ".join(f"{total[n] / total['numpy']:.2f}" for n in names) + " |")
    return "\n".join(lines)


def _flops(row):
    (m, k), (_, n) = (tuple(map(int, s.split("x"))) for s in row[2].split(" @ "))
    return 2 * m * k * n


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--ms", type=float, default=20.0, help="milliseconds per timed round")
    p.add_argument("--blas", nargs="+", default=list(CALLS), choices=list(CALLS))
    p.add_argument("--cold", action="store_true",
                   help="skip the OpenBLAS warm-up graphc does (graphc.blas.ready)")
    args = p.parse_args(argv)
    # No GEMM runs before the thread count is set: OpenBLAS's speed at 1 thread depends on
    # whether a multithreaded GEMM has run in the process (docs/perf.md).
    set_threads(args.threads[0])
    names = available(["numpy"] + [n for n in args.blas if n != "numpy"])
    for n in args.threads:
        set_threads(n)  # again: the libraries loaded by available()
        if not args.cold:
            warm_up(names)
        load = open("/proc/loadavg").read().split()[:3]
        # one thread: CPU time, which the other processes on a loaded machine do not inflate
        clock = time.process_time if n == 1 else time.perf_counter
        rows = measure(names, args.rounds, args.ms, clock)
        load2 = open("/proc/loadavg").read().split()[:3]
        state = "cold OpenBLAS" if args.cold else "OpenBLAS warmed up as graphc does"
        print(f"\n{n} thread(s), {state}, GFLOP/s ({clock.__name__}), median of {args.rounds} "
              "interleaved rounds; "
              f"load {' '.join(load)} -> {' '.join(load2)}\n")
        print(table(rows, names))
        try:
            import threadpoolctl
            for i in threadpoolctl.threadpool_info():
                print(f"# {i['internal_api']} {i.get('version')} {i.get('architecture', '')} "
                      f"threads={i['num_threads']} {i['filepath'].split('/')[-1]}")
        except ImportError:
            pass


if __name__ == "__main__":
    main()
