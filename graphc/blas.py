"""The BLAS behind graphc's matmuls: which one runs (for ``f.stats``), and getting
NumPy's OpenBLAS ready before the first GEMM of a thread (docs/perf.md).

graphc's CPU backend calls NumPy's BLAS (``np.matmul(a, b, out=...)``; transposed operands
are views, which NumPy passes to BLAS as transpose flags).  It was chosen by measurement
against SciPy's OpenBLAS, MKL, BLIS and PyTorch (``benchmarks/blas_choice.py``): none is
faster on every W1/W2 GEMM, so no other BLAS is loaded.

Why :func:`ready`: OpenBLAS's Haswell SGEMM kernel prefetches past the packed panel it
is reading, into pages of OpenBLAS's 32 MB packing buffer that no single-threaded SGEMM
ever writes.  A software prefetch to a page that was never touched finds no page-table
entry; the walk is repeated every time and costs most on a virtual machine.  Measured on
the 2-core AVX2 VM (one thread, CPU time, fresh processes): ``(128, 784) @ (784, 256)``
ran at 10-11 GFLOP/s until the process had run one DGEMM (or one multithreaded GEMM),
then at 30-33, as fast as PyTorch's; the buffer then has 560 instead of 336 KB resident.
A small DGEMM once per thread (~1 ms) writes those pages.
"""

from __future__ import annotations

import threading

import numpy as np

# The DGEMM that writes the first megabyte of OpenBLAS's packing buffer (resident: 1072 KB;
# every W1/W2 SGEMM in a fresh process touches 1424 KB, of which the small ones 336).
WARM_UP = ((64, 256), (256, 512))

_local = threading.local()
_INFO: list = []


def numpy_blas() -> str:
    """The name of the BLAS NumPy was built with (``"scipy-openblas"``, ``"mkl"``, ...)."""
    try:
        return str(np.__config__.CONFIG["Build Dependencies"]["blas"]["name"])
    except (AttributeError, KeyError, TypeError):
        return "unknown"


def ready() -> None:
    """Make NumPy's OpenBLAS fast in this thread: run one small DGEMM, once per thread
    (OpenBLAS keeps a packing buffer per thread).  Other BLAS libraries need nothing."""
    if getattr(_local, "ready", False):
        return
    _local.ready = True
    if "openblas" in numpy_blas():
        a, b = (np.ones(shape) for shape in WARM_UP)
        np.matmul(a, b)


def info() -> dict:
    """The BLAS NumPy calls, as threadpoolctl reports it: ``internal_api`` ("openblas",
    "mkl", "blis"), ``version``, ``architecture`` (the kernel in use, e.g. "Haswell"),
    ``num_threads`` and ``threading_layer``.  Without threadpoolctl, only what NumPy's
    build says (``internal_api`` and ``version``; the rest ``None``)."""
    if not _INFO:
        _INFO.append(_controller())
    controller = _INFO[0]
    if controller is None:
        config = {}
        try:
            config = np.__config__.CONFIG["Build Dependencies"]["blas"]
        except (AttributeError, KeyError, TypeError):
            pass
        return {"internal_api": numpy_blas(), "version": config.get("version"),
                "architecture": None, "num_threads": None, "threading_layer": None}
    libs = [i for i in controller.info() if i["user_api"] == "blas"]
    ours = [i for i in libs if "numpy" in i["filepath"]] or libs
    if not ours:
        return {"internal_api": numpy_blas(), "version": None, "architecture": None,
                "num_threads": None, "threading_layer": None}
    lib = ours[0]
    return {key: lib.get(key) for key in
            ("internal_api", "version", "architecture", "num_threads", "threading_layer")}


def library_path() -> str | None:
    """The file of the BLAS NumPy calls (threadpoolctl's controller, made once), or None."""
    info()
    controller = _INFO[0]
    if controller is None:
        return None
    libs = [i for i in controller.info() if i["user_api"] == "blas" and "numpy" in i["filepath"]]
    return libs[0]["filepath"] if libs else None


def _controller():
    try:
        import threadpoolctl
    except ImportError:
        return None
    return threadpoolctl.ThreadpoolController()


def threads() -> int | None:
    """The number of threads NumPy's BLAS uses now (``None`` if unknown)."""
    return info()["num_threads"]
