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

import contextlib
import ctypes
import functools
import threading

import numpy as np

# The DGEMM that writes the first megabyte of OpenBLAS's packing buffer (resident: 1072 KB;
# every W1/W2 SGEMM in a fresh process touches 1424 KB, of which the small ones 336).
WARM_UP = ((64, 256), (256, 512))

_ready: set[int] = set()  # the threads (native ids) ready() made ready
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
    ident = threading.get_native_id()  # (not a threading.local: a thread C code calls
    if ident in _ready:                 # back into Python gets a new one every call)
        return
    _ready.add(ident)
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


@functools.lru_cache(maxsize=None)
def _library():
    """The BLAS library NumPy calls, loaded with ctypes, or None."""
    path = library_path()
    try:
        return ctypes.CDLL(path) if path else None
    except OSError:
        return None


@functools.lru_cache(maxsize=None)
def cblas(name: str):
    """``cblas_<name>`` of the BLAS NumPy calls (its ILP64 symbol: NumPy's OpenBLAS names
    it ``scipy_cblas_<name>64_``), a ctypes function, or None where there is none.  NumPy's
    own BLAS only: the bits ``np.matmul`` gives."""
    lib = _library()
    return next((fn for fn in (getattr(lib, f"scipy_cblas_{name}64_", None),
                               getattr(lib, f"cblas_{name}64_", None)) if fn is not None),
                None) if lib else None


@functools.lru_cache(maxsize=None)
def _thread_count_functions():
    """OpenBLAS's ``(get, set)`` of its thread count in the library NumPy calls (ctypes
    functions), or None (another BLAS, or not found)."""
    lib = _library()
    for prefix, suffix in (("scipy_openblas", "64_"), ("openblas", "64_"), ("openblas", "")):
        get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
        put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
        if get is not None and put is not None:
            get.restype, get.argtypes = ctypes.c_int, []
            put.restype, put.argtypes = None, [ctypes.c_int]
            return get, put
    return None


def can_set_threads() -> bool:
    """Whether :func:`one_thread` can set NumPy's BLAS to one thread."""
    return _thread_count_functions() is not None


_ONE_LOCK = threading.Lock()
_one_state = {"users": 0, "before": None}


@contextlib.contextmanager
def one_thread():
    """NumPy's OpenBLAS on one thread meanwhile, then its count as before (two C calls,
    not threadpoolctl's 74 us); gives the count before (None for another BLAS).
    OpenBLAS's count is the process's: other threads' GEMMs meanwhile run on one thread
    too; uses that overlap share one change, and the last to leave restores the count the
    first found."""
    functions = _thread_count_functions()
    if functions is None:
        yield None
        return
    get, put = functions
    with _ONE_LOCK:
        if _one_state["users"] == 0:
            _one_state["before"] = get()
            if _one_state["before"] != 1:
                put(1)
        _one_state["users"] += 1
        before = _one_state["before"]
    try:
        yield before
    finally:
        with _ONE_LOCK:
            _one_state["users"] -= 1
            if _one_state["users"] == 0 and _one_state["before"] != 1:
                put(_one_state["before"])


@functools.lru_cache(maxsize=None)
def worker_jobs():
    """OpenBLAS's ``gotoblas_pthread(n, function, args, stride)`` in the library NumPy
    calls (a ctypes function), or None: it runs ``function(args + i * stride)`` for i < n,
    the first on the calling thread and the others on OpenBLAS's own worker threads, which
    poll for work for a while after each GEMM (so one is there at once; a thread of ours
    would share a CPU with it).  Only while OpenBLAS has workers (a thread count above 1
    when :func:`one_thread` began) and with its count at 1 (a GEMM inside a job must not
    hand work to the workers)."""
    fn = getattr(_library(), "gotoblas_pthread", None)
    if fn is not None:
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    return fn


@functools.lru_cache(maxsize=None)
def _omatcopy(dtype: np.dtype):
    """``cblas_?omatcopy`` for ``dtype`` (float32, float64), typed, or None."""
    if dtype not in (np.float32, np.float64):
        return None
    real = ctypes.c_float if dtype == np.float32 else ctypes.c_double
    fn = cblas("somatcopy" if dtype == np.float32 else "domatcopy")
    if fn is not None:  # ILP64: (order, trans, rows, cols, alpha, a, lda, b, ldb)
        fn.restype = None
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, real,
                       ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64]
    return fn


def transposed(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a`` as a C-contiguous array (``out``, a C-contiguous array of its shape and dtype,
    if given); fast for ``a`` the transposed view of a C-contiguous float32 or float64
    matrix (a weight ``W.T`` a loop's steps multiply by): OpenBLAS's ``cblas_?omatcopy``
    writes it (128 x 512 float32: 11 us; NumPy's strided copy: 80 us).  The same values,
    bit for bit."""
    fn = _omatcopy(a.dtype) if a.ndim == 2 and a.size and a.T.flags.c_contiguous else None
    if out is None:
        if fn is None:
            return np.ascontiguousarray(a)
        out = np.empty(a.shape, a.dtype)
    elif fn is None:
        np.copyto(out, a)
        return out
    rows, cols = a.shape[1], a.shape[0]  # a.T, the matrix in memory
    fn(101, 112, rows, cols, 1.0, a.__array_interface__["data"][0], cols,  # row-major, trans
       out.__array_interface__["data"][0], rows)
    return out
