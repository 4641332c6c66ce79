"""The Numba backend at run time: a lowered program's call, its buffers, kernel threads."""

from __future__ import annotations

import contextlib
import ctypes
import linecache
import os
import re
import threading
import traceback
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import blas, numba_loop
from .lowering import failed


def _env_count(*names) -> int | None:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def kernel_threads(uses_blas: bool = True) -> int:
    """Threads for graphc's kernels: NUMBA_NUM_THREADS (default: the CPUs this process may
    use); in a graph with matmuls, no more than the CPUs the BLAS threads leave free.
    OpenBLAS's idle workers keep polling long after a matmul (measured: a 2-thread
    1M-element kernel went from 0.75 to 1.27 ms once a 2-thread matmul had run; serial:
    1.13 ms), so next to a BLAS on every core graphc's kernels stay on one thread."""
    cpus = _cpus()
    requested = _env_count("NUMBA_NUM_THREADS") or cpus
    if not uses_blas:
        return max(1, requested)
    blas = _env_count("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS") or cpus
    return max(1, min(requested, cpus - blas + 1))


# ---------------------------------------------------------------------------------------
# Run time


_DATA_FIELD = ctypes.c_void_p.from_address


def _addr(a: np.ndarray) -> int:
    """The address of ``a``'s data: read from the array object's data field where
    :data:`graphc.numba_loop.ARRAY_DATA_OFFSET` found it (0.09 us), else through NumPy's
    array interface (0.8 us)."""
    if numba_loop.ARRAY_DATA_OFFSET is not None and isinstance(a, np.ndarray):
        return _DATA_FIELD(id(a) + numba_loop.ARRAY_DATA_OFFSET).value or 0
    return a.__array_interface__["data"][0]


def _waddr(a: np.ndarray) -> int:
    """The address of a writable contiguous array's data, three times faster."""
    return ctypes.addressof(ctypes.c_char.from_buffer(a))


_POOL: ThreadPoolExecutor | None = None
_POOL_KEY: tuple = ()
_POOL_LOCK = threading.Lock()


def _workers(n: int) -> ThreadPoolExecutor:
    """``n`` worker threads for kernel chunks (recreated after a fork)."""
    global _POOL, _POOL_KEY
    key = (os.getpid(), n)
    with _POOL_LOCK:
        if _POOL_KEY != key:
            _POOL = ThreadPoolExecutor(n, thread_name_prefix="graphc-kernel")
            _POOL_KEY = key
        return _POOL


def run_parallel(fn, threads: int, pointers, steps, sizes, chunk_steps=None) -> None:
    """Run kernel ``fn`` over ``sizes[0]`` split in ``threads`` chunks: this thread takes
    the first, workers the rest.  Kernels release the GIL and touch disjoint memory.
    Pointer k advances ``steps[k]`` bytes per unit of ``sizes[0]`` and ``chunk_steps[k]``
    per chunk (the chunk's own partial sums of a fused group's reductions)."""
    total, rest = sizes[0], sizes[1:]
    chunk = -(-total // threads)
    chunk_steps = chunk_steps or (0,) * len(pointers)
    futures = [_workers(threads - 1).submit(
        fn, *[p + start * s + (start // chunk) * c
              for p, s, c in zip(pointers, steps, chunk_steps)],
        min(chunk, total - start), *rest) for start in range(chunk, total, chunk)]
    fn(*pointers, min(chunk, total), *rest)
    for f in futures:
        f.result()


def donated(a: np.ndarray, others) -> np.ndarray:
    """``a``, a donated feed, when a call may write over it: a writable, aligned,
    C-contiguous array that owns its data and that no other feed is or views; else a copy
    of it that is (the call then leaves ``a`` as it was)."""
    flags = a.flags
    if a.base is None and flags.c_contiguous and flags.writeable and flags.aligned and \
            all(b is not a and b.base is not a for b in others):
        return a
    return np.array(a, order="C", copy=True)


# the names every program reads, besides those its prelude defines
_GLOBALS = {"np": np, "_addr": _addr, "_waddr": _waddr, "_contig": np.ascontiguousarray,
            "_parallel": run_parallel, "_donated": donated, "_transposed": blas.transposed}


# a NumPy call in the orchestrator that may compute (not an allocation, copy or view)
_NUMPY_STEP = re.compile(r"\bnp\.(?!(?:empty|zeros|array|broadcast_to)\()\w")


class _Evaluate:
    """A node evaluated by its op's NumPy semantics (the default rule)."""

    def __init__(self, op, dtype):
        self.op, self.dtype = op, dtype

    def __call__(self, *args):
        out = np.asarray(self.op.evaluate(*args))
        return out if out.dtype.name == self.dtype else out.astype(self.dtype)


try:  # np.errstate(all="ignore") sets this context variable (NumPy >= 2) to an object it
    # makes on every entry: 0.76 us, against 0.15 us to set it to one made once
    from numpy._core._ufunc_config import _extobj_contextvar as _FP_STATE
    from numpy._core._ufunc_config import _make_extobj
    _FP_IGNORE = _make_extobj(all="ignore")
except (ImportError, AttributeError, TypeError):  # another NumPy: np.errstate itself
    _FP_STATE = None


def ignoring_fp_errors(fn, *args):
    """``fn(*args)`` with NumPy's floating-point errors ignored, as under
    ``np.errstate(all="ignore")``: IEEE results (inf, nan) and no warnings."""
    if _FP_STATE is None:
        with np.errstate(all="ignore"):
            return fn(*args)
    token = _FP_STATE.set(_FP_IGNORE)
    try:
        return fn(*args)
    finally:
        _FP_STATE.reset(token)


class NumbaProgram:
    """A lowered graph: call with ``{name: array}`` (validated feeds); returns fresh arrays.

    ``source`` is the orchestrator followed by the source of every kernel it calls."""

    _COUNTER = 0

    def __init__(self, lowering, source: str, line_nodes, inputs, layout, slot_bytes, named,
                 pointer_of, buffer_bytes: int):
        NumbaProgram._COUNTER += 1
        self.filename = f"<graphc-numba-{NumbaProgram._COUNTER}>"
        self.input_names = tuple(t.op.label for t in inputs)
        self.line_nodes = line_nodes
        self.printed = lowering.printed  # the nodes' names, for errors
        self.orchestrator = source
        self.kernels = dict(lowering.kernels)
        self.counts = dict(lowering.counts)  # kernel loads by outcome (kernel_cache.load)
        # tracebacks through the orchestrator show its lines; forgotten with the program
        linecache.cache[self.filename] = (len(source), None, source.splitlines(True),
                                          self.filename)
        weakref.finalize(self, linecache.cache.pop, self.filename, None)
        namespace = dict(_GLOBALS, _compiled=lowering.namespace)
        exec(compile(source, self.filename, "exec"), namespace)  # noqa: S102 -- our text
        self._run = namespace["run"]
        # NumPy floating-point work (ufuncs, matmul, fallbacks, loops) runs under
        # np.errstate; kernels, allocations and copies need none (it costs a few us a call)
        self.numpy_steps = bool(lowering.fallbacks) or "loop" in lowering.lowered or \
            _NUMPY_STEP.search(source.split("\ndef run(", 1)[1]) is not None
        # the buffers: (slot, byte offset, shape, dtype) each, those read by name and
        # through pointers
        self._layout, self._named, self._pointer_of = layout, named, pointer_of
        self._slot_bytes = slot_bytes
        self._free: list = []
        self._run_native = self.segments = None  # use_segments
        self.native_source = ""
        self.source = source + "".join(lowering.loop_sources) + self._kernel_appendix()
        self.stats = {
            "kernels": len(self.kernels),
            "kernel_cache_hits": lowering.counts["memory"] + lowering.counts["disk"],
            "kernel_cache_misses": lowering.counts["compiled"] + lowering.counts["rebuilt"],
            "kernel_cache_rebuilt": lowering.counts["rebuilt"],
            "kernel_seconds": lowering.kernel_seconds,
            "numpy_fallbacks": list(lowering.fallbacks),
            "buffer_bytes": buffer_bytes,
            "staged_bytes": sum(slot_bytes) - buffer_bytes,
            "kernel_threads": lowering.threads,
            "lowered": dict(lowering.lowered),
            "kernel_calls": lowering.calls,
        }
        if lowering.donate:  # the plan with outputs written over donated feeds
            figures = lowering.plan_figures
            self.stats.update({k: figures[k] for k in
                               ("planned_peak_bytes", "donated", "donated_bytes")})

    def _kernel_appendix(self) -> str:
        if not self.kernels:
            return ""
        parts = ["", "", "# " + "=" * 88,
                 "# Kernels called above (k_<name>), compiled by Numba and kept in graphc's "
                 "kernel cache under their name (graphc.kernel_cache)"]
        for name, kernel in sorted(self.kernels.items()):
            parts += ["", f"# ---- {name}", kernel.spec.source]
        return "\n".join(parts)

    def _buffers(self):
        slots = [np.empty(n, np.uint8) for n in self._slot_bytes]
        arrays = tuple(slots[s][o:o + int(np.prod(shape, dtype=np.int64)) * np.dtype(d).itemsize]
                       .view(d).reshape(shape) for s, o, shape, d in self._layout)
        pointers = tuple(_addr(arrays[k]) for k in self._pointer_of)
        return tuple(arrays[k] for k in self._named), pointers, arrays

    def __call__(self, arrays: dict) -> list[np.ndarray]:
        return list(self.run([arrays[n] for n in self.input_names]))

    def use_segments(self, source: str, segments, compiled: dict) -> None:
        """Run as ``source``'s ``run_native`` (:mod:`graphc.numba_segments`) where its feeds
        allow; ``f.source`` ends with it."""
        namespace = dict(_GLOBALS, _compiled=compiled)
        for name, (fn, table_type, _) in segments.calls.items():
            namespace[name], namespace[f"{name}_t"] = fn, table_type
        exec(compile(source, self.filename + "-native", "exec"), namespace)  # noqa: S102
        self._run_native, self.segments = namespace["run_native"], segments
        # (f.source keeps the Python run, which the native one follows line for line)
        self.native_source = source[source.index("\ndef run_native(") + 1:]
        statements = self.native_source.count("\n    #   ")
        self.stats["native_runs"] = {"calls": len(segments.calls), "statements": statements,
                                     "source": self.native_source}
        note = (f"# {statements} statements of run above run as {len(segments.calls)} native "
                "calls (graphc.numba_segments) when the feeds they read are C-contiguous and "
                "aligned: f.stats['native_runs']['source']\n")
        self.source = self.source.replace(self.orchestrator, self.orchestrator + note, 1)

    def run(self, feeds) -> tuple:
        """The outputs for ``feeds``, validated arrays in the order of ``input_names``."""
        buffers = self._free.pop() if self._free else self._buffers()
        try:
            native = self._native(feeds)
            if native:
                if len(buffers) == 3:  # the fixed table of these buffers, made once
                    buffers = (*buffers, self.segments.table(buffers[2]))
                try:
                    if not self.numpy_steps:
                        return self._run_native(*feeds, buffers[0], buffers[1], buffers[3])
                    return ignoring_fp_errors(self._run_native, *feeds, buffers[0],
                                              buffers[1], buffers[3])
                except (IndexError, ValueError, FloatingPointError, TypeError):
                    pass  # the Python run raises it again, naming the node
            if not self.numpy_steps:
                return self._run(*feeds, buffers[0], buffers[1])
            # as the reference: IEEE results, no warnings
            return ignoring_fp_errors(self._run, *feeds, buffers[0], buffers[1])
        except (IndexError, ValueError, FloatingPointError, TypeError) as err:
            self._reraise(err)
        finally:
            self._free.append(buffers)

    def _native(self, feeds) -> bool:
        if self._run_native is None or not numba_loop.ENABLED:
            return False
        for k in self.segments.guard:
            flags = feeds[k].flags
            if not (flags.c_contiguous and flags.aligned):
                return False
        return True

    def run_steps(self, steps) -> None:
        """Run a loop body (lowered with ``body=True``) once per argument tuple of
        ``steps``, on one set of buffers and under one ``np.errstate``."""
        buffers = self._free.pop() if self._free else self._buffers()
        run, named, pointers = self._run, buffers[0], buffers[1]
        try:
            with np.errstate(all="ignore"):
                for args in steps:
                    run(*args, named, pointers)
        except (IndexError, ValueError, FloatingPointError, TypeError) as err:
            self._reraise(err)
        finally:
            self._free.append(buffers)

    def run_native(self, table: np.ndarray, steps: int) -> None:
        """Run a loop body's ``steps`` steps in its native loop (:mod:`graphc.numba_loop`):
        ``table`` (int64, C-contiguous) holds a row of addresses per parameter, one per
        step."""
        with self.fixed_tables(1) as (fixed,):
            self.native.run(steps, table, fixed)

    @contextlib.contextmanager
    def fixed_tables(self, n: int):
        """The native loop's fixed tables of ``n`` sets of this body's buffers, each set
        taken from the free ones for the time being (a set is one run's at a time)."""
        sets = [self._free.pop() if self._free else self._buffers() for _ in range(n)]
        try:
            for k, buffers in enumerate(sets):
                if len(buffers) == 3:  # the fixed table of these buffers, made once
                    sets[k] = (*buffers, self.native.table(buffers[2]))
            yield [buffers[3] for buffers in sets]
        finally:
            self._free.extend(sets)

    def _reraise(self, err):
        """Raise ``err`` again, as the error of the node whose line raised it if one did."""
        node = self._failing_node(err.__traceback__)
        if node is None:
            raise err
        raise failed(node, self.printed, err) from err

    def _failing_node(self, tb):
        for frame, lineno in traceback.walk_tb(tb):
            if frame.f_code.co_filename == self.filename:
                node = self.line_nodes.get(lineno)
                if node is not None:
                    return node
        return None
