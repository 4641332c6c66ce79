"""A scan's native loop run as two loops on two threads, each over half the batch rows.

An LSTM or GRU step treats the rows of its carries and inputs one by one: row r of the new
carry depends on row r of the old carry and of the step's input, and on the weights, never
on another row.  Such a loop can run as two loops, one over the first half of the rows
and one over the second, side by side on two cores and without a barrier between them, each
calling single-threaded BLAS: W4s's forward loop 1.73-1.96 -> 1.30-1.43 ms and its backward
one 1.45-1.67 -> 1.07-1.20 ms in the measurement that chose this (docs/perf.md, "Scan
loops on two threads"), where BLAS's own threads split each step's small GEMM and the
kernels between GEMMs ran on one core.

:func:`halve` decides it from the body's optimized graph and makes the body of half the
rows, node by node, only through operations that are row-wise by their definition (an
elementwise op whose row-split operands have the output's rank, a matmul by a weight,
slices and concatenations and reductions and softmaxes over other axes, a broadcast along
the rows); anything else, and the body stays one loop.  The half body is compiled like the
body, its GEMMs of 1-4 M multiply-adds called in column blocks (:data:`SMALL_GEMM`);
:func:`run` gives it the step table of the whole loop and, on a second thread (OpenBLAS's
worker, which after the process's first split loop runs a native job: no Python on it),
the same table moved by half the rows in each row-split column.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import itertools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .elementwise_ops import Elementwise
from .fused_ops import Fused
from .graph import Graph
from .inputs import Input
from .ir import Tensor
from .scan import StopGradient
from .shape_ops import BroadcastTo, Cast, Concat, Index, Reduce, Reshape, Transpose
from .structured_ops import LogSoftmax, LogSumExp, MatMul, Softmax

# GRAPHC_SPLIT_LOOPS=0: every loop runs as one (for comparison and debugging)
ENABLED = os.environ.get("GRAPHC_SPLIT_LOOPS", "1") != "0"
MIN_ROWS = 8  # each half has at least this many rows

_FULL = ("slice", None, None, None)


def halve(graph: Graph, row_split: set[str], batch: int) -> Graph | None:
    """``graph`` (a scan body) for the first ``batch // 2`` rows of the inputs named in
    ``row_split`` (carries and step inputs, whose first axis is the batch), the other
    inputs (weights) whole; None unless every node is row-wise and every output is split
    by rows.  The nodes keep ``graph``'s order."""
    half = batch // 2
    rows: dict[int, Tensor] = {}  # old node id -> its half
    new: dict[int, Tensor] = {}
    for t in graph.nodes:
        if isinstance(t.op, Input) and t.op.label in row_split:
            if not t.shape or t.shape[0] != batch:
                return None
            op = Input(t.op.label, (half,) + t.shape[1:], t.op.in_dtype, t.op.init, t.op.state)
            new[id(t)] = rows[id(t)] = Tensor.make(op)
            continue
        inputs = [new[id(i)] for i in t.inputs]
        split = [id(i) in rows for i in t.inputs]
        if not any(split):
            if _spread_over_rows(t, batch):  # a weight broadcast to the batch: equal rows
                new[id(t)] = rows[id(t)] = Tensor.make(
                    BroadcastTo((half,) + t.op.target[1:]), inputs)
            else:
                new[id(t)] = t  # the weights' part: the same in both halves
            continue
        made = _half_node(t, inputs, split, half)
        if made is None or not t.shape or t.shape[0] != batch or \
                made.shape != (half,) + t.shape[1:] or made.dtype != t.dtype:
            return None
        new[id(t)] = rows[id(t)] = made
    if not all(id(o) in rows for o in graph.outputs):
        return None
    return Graph([new[id(o)] for o in graph.outputs], order=[new[id(t)] for t in graph.nodes])


def _spread_over_rows(t: Tensor, batch: int) -> bool:
    """``t`` broadcasts a value that does not vary along the rows to ``batch`` rows."""
    if not isinstance(t.op, BroadcastTo) or not t.shape or t.shape[0] != batch:
        return False
    (x,) = t.inputs
    return x.ndim < len(t.shape) or x.shape[0] == 1


def _half_node(t: Tensor, inputs, split, half) -> Tensor | None:
    """``t``'s op on the half inputs when it maps rows to rows, else None."""
    op, ndim = t.op, len(t.shape)
    if isinstance(op, (Elementwise, Fused)):
        if any(s and i.ndim != ndim for s, i in zip(split, inputs)):
            return None  # a split operand broadcast along new leading axes
        if isinstance(op, Fused) and op.out.reduce is not None and 0 in op.out.reduce:
            return None  # a sum over the rows
    elif isinstance(op, MatMul):
        if split[1] or inputs[1].ndim != 2:
            return None  # rows times a weight only
    elif isinstance(op, Index):
        if op.index and op.index[0] != _FULL:
            return None
    elif isinstance(op, Concat):
        if not all(split) or op.axis % ndim == 0:
            return None
    elif isinstance(op, (Reduce, LogSumExp)):
        if 0 in op.axes:
            return None
    elif isinstance(op, (Softmax, LogSoftmax)):
        if op.axis % ndim == 0:
            return None
    elif isinstance(op, Transpose):
        if op.perm[0] != 0:
            return None
    elif isinstance(op, Reshape):
        if t.inputs[0].shape[:1] != t.shape[:1]:
            return None
        op = Reshape((half,) + op.new_shape[1:])
    elif isinstance(op, BroadcastTo):
        if inputs[0].ndim != ndim:
            return None
        op = BroadcastTo((half,) + op.target[1:])
    elif not isinstance(op, (Cast, StopGradient)):
        return None  # Constant has no inputs; anything else is not known to be row-wise
    try:
        return Tensor.make(op, inputs)
    except Exception:  # noqa: BLE001 -- a shape the half cannot have: not row-wise
        return None


SMALL_GEMM = 10**6  # OpenBLAS runs an SGEMM of at most 100^3 multiply-adds with its small-
# matrix kernel (SkylakeX: no packing of B): W4s's 16-row halves, 16x128 @ 128x512, take
# 19.5 us as one GEMM and 14.6 us as two of 256 columns (one thread, the same bits); a K
# above the kernel's panel (512: the backward's 16x512 @ 512x128) rounds differently


def small_gemm() -> int | None:
    """The column blocks of a half body's GEMMs (:data:`SMALL_GEMM`) under NumPy's
    OpenBLAS, else None."""
    from . import blas
    return SMALL_GEMM if "openblas" in blas.numpy_blas() else None


def cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover -- not Linux
        return os.cpu_count() or 1


def row_bytes(shape, dtype) -> int:
    """Bytes from one row (first axis) of a C-contiguous array to the next."""
    return math.prod(shape[1:]) * np.dtype(dtype).itemsize


_POOL: tuple = (None, None)  # (the process id, its executor): a fork's child makes its own
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL[0] != os.getpid():  # (a forked child has the parent's object, no threads)
            _POOL = (os.getpid(), ThreadPoolExecutor(max_workers=2,
                                                     thread_name_prefix="graphc-loop"))
        return _POOL[1]


# Work handed to OpenBLAS's workers (blas.worker_jobs): the job's argument is a token plus
# the half (0 or 1); the token names the work in _WORK
_JOB = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_WORK: dict[int, tuple] = {}
_TOKENS = itertools.count(2, 2)


def _job(arg) -> None:
    arg = arg or 0
    work, errors = _WORK[arg - arg % 2]
    try:
        work(arg % 2)
    except BaseException as err:  # noqa: BLE001 -- raised again on the calling thread
        errors.append(err)


_JOB_FN = _JOB(_job)  # kept: OpenBLAS holds its address

# Once this process's worker has run a half through Python (which warms its BLAS buffer,
# blas.ready), the halves are native code: ``job(args)`` calls ``drive(steps, table,
# fixed)`` with the four int64 at ``args``, and no Python runs on the worker, which would
# make and drop a thread state and take the GIL every call (W4s: the second half began
# ~160 us after the first and the call returned ~100 us after both; docs/perf.md)
_NATIVE_JOB_IR = """define void @job(ptr %args) {
entry:
  %drive = load ptr, ptr %args
  %at1 = getelementptr i64, ptr %args, i64 1
  %table = load ptr, ptr %at1
  %at2 = getelementptr i64, ptr %args, i64 2
  %fixed = load ptr, ptr %at2
  %at3 = getelementptr i64, ptr %args, i64 3
  %steps = load i64, ptr %at3
  call void %drive(i64 %steps, ptr %table, ptr %fixed)
  ret void
}
"""
_WARM: set[int] = set()  # the processes whose worker has run a half through Python


@functools.lru_cache(maxsize=None)
def _native_job() -> int:
    from . import numba_loop
    symbol = "graphc_half_job_" + hashlib.sha256(_NATIVE_JOB_IR.encode()).hexdigest()[:16]
    return numba_loop.link(_NATIVE_JOB_IR.replace("@job", f"@{symbol}"), symbol)


def run(program, table: np.ndarray, offsets: np.ndarray, steps: int) -> str:
    """Run the half body ``program`` over both halves: ``table`` and ``table`` moved by
    ``offsets`` (bytes, one per column), BLAS on one thread meanwhile.  The second half runs
    on one of OpenBLAS's workers where it has them (:func:`graphc.blas.worker_jobs`: one
    is polling for work after the GEMM before the loop), else on a thread of graphc's.
    Gives how: ``"native"`` (both halves native jobs of OpenBLAS's), ``"python"`` (the
    same through Python: the first time in a process) or ``"thread"``."""
    from . import blas
    tables = (table, table + offsets[:, None])
    with blas.one_thread() as before:
        jobs = blas.worker_jobs() if before is not None and before > 1 else None
        if jobs is None:
            _on_threads(program, tables, steps)
            return "thread"
        if os.getpid() in _WARM:
            with program.fixed_tables(2) as fixed:
                args = np.array([(program.native.address, t.ctypes.data, x.ctypes.data, steps)
                                 for t, x in zip(tables, fixed)], np.int64)
                jobs(2, _native_job(), args.ctypes.data, args.strides[0])
            return "native"
        token, errors = next(_TOKENS), []
        _WORK[token] = (functools.partial(_half, program, tables, steps), errors)
        try:
            jobs(2, ctypes.cast(_JOB_FN, ctypes.c_void_p), token, 1)
        finally:
            del _WORK[token]
        if errors:
            raise errors[0]
        _WARM.add(os.getpid())
        return "python"


def _half(program, tables, steps: int, k: int) -> None:
    from . import blas
    if k:
        blas.ready()  # (once per thread)
    program.run_native(tables[k], steps)


def _on_threads(program, tables, steps: int) -> None:
    other = _pool().submit(_half, program, tables, steps, 1)
    try:
        _half(program, tables, steps, 0)
    finally:
        other.result()


def half_body(roles, graph: Graph, body, compile_graph):
    """The body for half the rows, compiled, and each step-table column's offset to the
    second half (bytes: the inputs in ``body.input_names`` order with their ``roles``, then
    the outputs), or None where the loop runs whole: split loops off, one CPU, a BLAS whose
    thread count graphc cannot set, no native loop, batches of unequal or odd size or under
    ``2 * MIN_ROWS`` rows, or a body that is not row-wise (:func:`halve`)."""
    from . import blas
    if not ENABLED or body.native is None or cpus() < 2 or not blas.can_set_threads():
        return None
    inputs = {t.op.label: t for t in graph.inputs}
    split = [name for name, (kind, _) in zip(body.input_names, roles) if kind != "const"]
    sizes = {inputs[name].shape[0] if inputs[name].shape else None for name in split}
    if len(sizes) != 1 or None in sizes:
        return None
    (batch,) = sizes
    if batch % 2 or batch // 2 < MIN_ROWS:
        return None
    halved = halve(graph, set(split), batch)
    if halved is None:
        return None
    program = compile_graph(halved, body=True, gemm_block=small_gemm())
    if program.native is None or program.input_names != body.input_names:
        return None
    offsets = [batch // 2 * row_bytes(inputs[name].shape, inputs[name].dtype)
               if kind != "const" and reads else 0
               for name, (kind, _), reads in zip(body.input_names, roles, body.reads_pointer)]
    offsets += [batch // 2 * row_bytes(o.shape, o.dtype) for o in graph.outputs]
    return program, np.array(offsets, np.int64)
