"""The fixed CUDA kernels of the CUDA backend (``numba.cuda``), and the elementwise printer.

Every kernel here is shape-agnostic: sizes, shapes and strides are arguments, so one
compiled kernel serves every node with the same dtypes.  Kernels that need shared memory
(row reductions, the softmax family, matmul) are made by factories per dtype, because a
shared array's size and dtype must be compile-time constants.  Elementwise kernels are
generated from SymPy (:func:`~graphc.cuda_elementwise.elementwise_source`, and
:func:`fused_source` for a fused group) by :class:`CudaPrinter`, the Numba
printer of :mod:`graphc.numba_codegen` with ``math.*`` calls, which ``numba.cuda`` maps to
libdevice (``math.exp`` on a float32 is ``__nv_expf``, accurate to 2 ulp; the ``__expf``
fast intrinsics are used only with ``GRAPHC_CUDA_FASTMATH=1``).

Under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) every thread is a Python thread,
so blocks are kept small there (:data:`THREADS`, :data:`TILE`); the kernels are the same.
"""

from __future__ import annotations

import functools
import math
import os

import numba
import numpy as np
from numba import config, cuda

from .functable import by_cuda_name, numpy_function
from .fused_ops import FusedOutput
from .numba_codegen import ScalarPrinter, Unsupported, comment

FASTMATH = os.environ.get("GRAPHC_CUDA_FASTMATH", "") == "1"  # generated kernels
SIMULATOR = bool(config.ENABLE_CUDASIM)
THREADS = 8 if SIMULATOR else 256        # threads per block of 1-D and row kernels
MAX_BLOCKS = 4 if SIMULATOR else 65535   # grid-stride loops cover the rest
TILE = 4 if SIMULATOR else 16            # matmul tile edge (16x16 on a GPU)
MAX_DIMS = 8                             # rank limit of strided kernels (local arrays)


FEW_ROWS = 4 if SIMULATOR else 256      # fewer rows than this leave most of a GPU idle
PIECE = 16 if SIMULATOR else 4096        # ... so their long rows are reduced in pieces


def blocks_for(n: int) -> int:
    return max(1, min(MAX_BLOCKS, (n + THREADS - 1) // THREADS))


def row_pieces(rows: int, cols: int) -> int:
    """In how many equal pieces each row is reduced first (1: whole rows, one block
    each): a few long rows (a full sum of a 256x4096 tensor is one row of 2**20) would
    otherwise run on a few blocks of the whole GPU.  The largest divisor of ``cols`` that
    leaves pieces of at least ``PIECE``."""
    if rows >= FEW_ROWS or cols < 2 * PIECE:
        return 1
    return next(d for d in range(cols // PIECE, 0, -1) if cols % d == 0)


# ---------------------------------------------------------------------------------------
# SymPy -> numba.cuda scalar code

class CudaPrinter(ScalarPrinter):
    """:class:`~graphc.numba_codegen.ScalarPrinter` calling each function by its numba.cuda
    name in :mod:`graphc.functable` (``math.*``, which numba.cuda maps to libdevice, or
    ``libdevice.*`` with the ``f`` suffix in float32) instead of the CPU backend's
    vectorizable helpers and NumPy scalar functions."""

    def _call(self, fn, args):
        if not self._float():
            raise Unsupported(f"{fn.cuda} in {self.dtype} code")
        name = fn.cuda
        if name.startswith("libdevice.") and self.dtype == "float32":
            name += "f"
        return f"{name}({', '.join(self.numeric(a) for a in args)})", "num"


# NaN-propagating max/min, as np.maximum/np.minimum (and the CPU backend's helpers)
@cuda.jit(device=True)
def maximum(a, b):
    return a if (a > b or a != a) else b


@cuda.jit(device=True)
def minimum(a, b):
    return a if (a < b or a != a) else b


class _SimulatedLibdevice:
    """``math`` as kernels see it under the simulator: NumPy scalar functions, so float32
    stays float32 and overflow, log(0) and NaN give inf/-inf/NaN as on a GPU (Python's
    ``math`` computes in double and raises instead)."""

    def __getattr__(self, name):
        try:
            fn = numpy_function(by_cuda_name(f"math.{name}"))
        except KeyError:  # not a table function: isnan, isinf ...
            fn = getattr(np, name)

        def call(*args):
            with np.errstate(all="ignore"):
                return fn(*args)
        return call


class _SimulatedExtraLibdevice:
    """``numba.cuda.libdevice`` as kernels see it under the simulator (the ``f`` variants
    are the float32 ones; NumPy keeps float32 in float32)."""

    def __getattr__(self, name):
        stem = name.removesuffix("f")
        try:
            return numpy_function(by_cuda_name(f"libdevice.{stem}"))
        except KeyError:  # not a table function
            return getattr(np, stem)


# What kernels call as ``math``: libdevice on a GPU, NumPy under the simulator.
mathlib = _SimulatedLibdevice() if SIMULATOR else math
if SIMULATOR:
    libdevice = _SimulatedExtraLibdevice()
else:
    from numba.cuda import libdevice

KERNEL_GLOBALS = {"cuda": cuda, "math": mathlib, "np": np, "maximum": maximum,
                  "minimum": minimum, "libdevice": libdevice}


# ---------------------------------------------------------------------------------------
# Data movement: one strided copy serves transpose, broadcast, basic index, concat, cast


@cuda.jit
def strided_copy(dst, dst_off, dst_strides, src, src_off, src_strides, shape, ndim, n):
    """dst[dst_off + i . dst_strides] = src[src_off + i . src_strides] for every index
    i of ``shape`` (flat arrays, strides in elements; a stride 0 broadcasts)."""
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for i in range(start, n, step):
        rem = i
        d_at = dst_off
        s_at = src_off
        for d in range(ndim - 1, -1, -1):
            c = rem % shape[d]
            rem //= shape[d]
            d_at += c * dst_strides[d]
            s_at += c * src_strides[d]
        dst[d_at] = src[s_at]


@cuda.jit
def fill(dst, value, n):
    start = cuda.grid(1)
    for i in range(start, n, cuda.gridsize(1)):
        dst[i] = value


@cuda.jit
def gather(out, src, where, n):
    """out[i] = src[where[i]] (index maps made at compile time)."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        out[i] = src[where[i]]


@cuda.jit
def gather_fill(out, src, where, n, value):
    """out[i] = src[where[i]], or ``value`` where where[i] < 0 (padding: im2col, pooling)."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        at = where[i]
        out[i] = src[at] if at >= 0 else value


@cuda.jit
def scatter_add(out, g, where, n):
    """out[where[i]] += g[i] with atomics (repeated positions accumulate); positions < 0
    (padding, in col2im) are skipped."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        if where[i] >= 0:
            cuda.atomic.add(out, where[i], g[i])


@cuda.jit
def max_pool_grad(out, x, g, where, k, windows):
    """out[first maximum of window w in x] += g[w]: window w's k positions in x are
    where[w*k:(w+1)*k] (-1: padding, never chosen); the first NaN wins, as max propagates
    it (``MaxPool2dGrad.evaluate``); overlapping windows accumulate with atomics."""
    for w in range(cuda.grid(1), windows, cuda.gridsize(1)):
        best = -1
        for j in range(k):
            at = where[w * k + j]
            if at >= 0:
                if best < 0:
                    best = at
                else:
                    v, b = x[at], x[best]
                    if b == b and (v > b or v != v):
                        best = at
        if best >= 0:
            cuda.atomic.add(out, best, g[w])


@cuda.jit
def take_rows(out, x, idx, inner, rows, n, bad):
    """out[i, j] = x[idx[i], j] (negative indices wrap); an index out of range sets
    ``bad[0]`` and writes 0."""
    start = cuda.grid(1)
    for k in range(start, n, cuda.gridsize(1)):
        i = k // inner
        j = k - i * inner
        r = idx[i]
        if r < 0:
            r += rows
        if r < 0 or r >= rows:
            bad[0] = 1
            out[k] = 0
        else:
            out[k] = x[r * inner + j]


@cuda.jit
def take_add_rows(out, g, idx, inner, rows, n, bad):
    """out[idx[i], j] += g[i, j] with atomics (repeated indices accumulate)."""
    start = cuda.grid(1)
    for k in range(start, n, cuda.gridsize(1)):
        i = k // inner
        j = k - i * inner
        r = idx[i]
        if r < 0:
            r += rows
        if r < 0 or r >= rows:
            bad[0] = 1
        else:
            cuda.atomic.add(out, r * inner + j, g[k])


# ---------------------------------------------------------------------------------------
# Row kernels: one block per row (grid-stride over rows), a shared-memory tree reduction

ROW_KINDS = ("sum", "max", "min", "logsumexp", "softmax", "log_softmax")


@cuda.jit(device=True)
def block_reduce(buf, tid, op):
    """Halve ``buf`` (THREADS values, a power of two) in shared memory: op 0 sum, 1 max,
    2 min (NaN propagates); every thread gets the result."""
    width = THREADS // 2
    while width > 0:
        if tid < width:
            a = buf[tid]
            b = buf[tid + width]
            if op == 0:
                buf[tid] = a + b
            elif op == 1:
                buf[tid] = a if (a > b or a != a) else b
            else:
                buf[tid] = a if (a < b or a != a) else b
        cuda.syncthreads()
        width //= 2
    return buf[0]


@cuda.jit(device=True)
def row_extreme(x, base, cols, tid, buf, op):
    """The max (op 1) or min (op 2) of the row at ``base``, NaN propagating."""
    acc = x[base]  # every thread starts from the row's first element (cols >= 1)
    for j in range(tid, cols, THREADS):
        v = x[base + j]
        if op == 1:
            acc = acc if (acc > v or acc != acc) else v
        else:
            acc = acc if (acc < v or acc != acc) else v
    buf[tid] = acc
    cuda.syncthreads()
    return block_reduce(buf, tid, op)


@cuda.jit(device=True)
def row_sum(x, base, cols, tid, buf, zero):
    """The sum of the row at ``base``."""
    acc = zero
    for j in range(tid, cols, THREADS):
        acc += x[base + j]
    buf[tid] = acc
    cuda.syncthreads()
    return block_reduce(buf, tid, 0)


@cuda.jit(device=True)
def row_exp_sum(x, base, cols, tid, buf, zero, shift):
    """The sum of exp(x - shift) over the row at ``base``."""
    acc = zero
    for j in range(tid, cols, THREADS):
        acc += mathlib.exp(x[base + j] - shift)
    buf[tid] = acc
    cuda.syncthreads()
    return block_reduce(buf, tid, 0)


@functools.cache
def row_kernel(kind: str, dtype: str):
    """The kernel ``(out, x, rows, cols)`` reducing each row of a (rows, cols) array:
    sum/max/min/logsumexp write ``out[row]``; softmax/log_softmax write ``out[row, :]``.
    Threads stride over the row's columns, then halve in shared memory (THREADS is a
    power of two)."""
    nb_dtype = getattr(numba, dtype)
    zero = getattr(np, dtype)(0)
    threads = THREADS
    code = ROW_KINDS.index(kind)  # an int: the branches below fold at compile time

    @cuda.jit
    def kernel(out, x, rows, cols):
        buf = cuda.shared.array(threads, nb_dtype)
        tid = cuda.threadIdx.x
        for row in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
            base = row * cols
            if code == 0:
                total = row_sum(x, base, cols, tid, buf, zero)
                if tid == 0:
                    out[row] = total
            elif code == 1 or code == 2:
                value = row_extreme(x, base, cols, tid, buf, code)
                if tid == 0:
                    out[row] = value
            else:
                m = row_extreme(x, base, cols, tid, buf, 1)
                cuda.syncthreads()
                if code != 4 and (math.isinf(m) or math.isnan(m)):  # no shift, as the reference
                    m = zero
                s = row_exp_sum(x, base, cols, tid, buf, zero, m)
                if code == 3:
                    if tid == 0:
                        out[row] = m + mathlib.log(s)
                elif code == 5:
                    log_sum = mathlib.log(s)  # (x - m) - log(s): no cancellation
                    for j in range(tid, cols, threads):
                        out[base + j] = (x[base + j] - m) - log_sum
                else:
                    for j in range(tid, cols, threads):
                        out[base + j] = mathlib.exp(x[base + j] - m) / s
            cuda.syncthreads()  # buf is reused by the next row

    kernel.graphc_name = f"row_{kind}_{dtype}"  # (what a profile calls it)
    return kernel


# ---------------------------------------------------------------------------------------
# Matmul: shared-memory tiles, batched through grid z, operands read as stored or transposed


def matmul_per_thread() -> int:
    """Elements of c each thread of :func:`matmul_kernel` computes along each side: 1, or
    2 with ``GRAPHC_CUDA_MATMUL=2`` (blocks of c of ``2 TILE`` on a side, half the
    shared-memory reads per multiply-add, a quarter as many blocks).  The 2x2 kernel has
    run only under the simulator (docs/cuda.md, "Matmul"), so it is not the default."""
    return 2 if os.environ.get("GRAPHC_CUDA_MATMUL", "").strip() == "2" else 1


@functools.cache
def _tile_loader(dtype: str, trans_a: bool, trans_b: bool, per_thread: int):
    """The device function that loads a block's tiles of a and b for depth ``kk``
    (:func:`matmul_kernel`): ``per_thread`` rows of a and columns of b a thread, zero
    outside the matrices, read so that neighbouring threads read neighbouring addresses."""
    zero = getattr(np, dtype)(0)
    t = TILE

    @cuda.jit(device=True)
    def load(ta, tb, a, b, a0, b0, r0, c0, kk, m, k, n, tx, ty):
        for s in range(per_thread):
            if trans_a:  # stored (k, m): neighbours along m
                i = r0 + tx + s * t
                ta[tx + s * t, ty] = a[a0 + (kk + ty) * m + i] \
                    if (i < m and kk + ty < k) else zero
            else:
                i = r0 + ty + s * t
                ta[ty + s * t, tx] = a[a0 + i * k + kk + tx] if (i < m and kk + tx < k) \
                    else zero
            if trans_b:  # stored (n, k): neighbours along k
                j = c0 + ty + s * t
                tb[tx, ty + s * t] = b[b0 + j * k + kk + tx] if (j < n and kk + tx < k) \
                    else zero
            else:
                j = c0 + tx + s * t
                tb[ty, tx + s * t] = b[b0 + (kk + ty) * n + j] \
                    if (j < n and kk + ty < k) else zero
    return load


@functools.cache
def matmul_kernel(dtype: str, trans_a: bool = False, trans_b: bool = False,
                  per_thread: int = 1):
    """``(c, a, b, m, k, n, batch, a_batch_stride, b_batch_stride)``: c[z] = a[z] @ b[z]
    for flat row-major c (m, n); a is stored (m, k), or (k, m) with ``trans_a`` (a view's
    transpose, read in place of a copy); b (k, n), or (n, k) with ``trans_b``; a batch
    stride 0 broadcasts.  A block of TILE x TILE threads computes a block of c of
    ``per_thread`` (1 or 2) times TILE on a side, each thread ``per_thread`` squared
    elements; every element is the same sum over k in the same order either way, so the
    results are the same bits.  Tiles are loaded so that neighbouring threads read
    neighbouring addresses whichever way an operand is stored (padded by one column
    against bank conflicts)."""
    nb_dtype = getattr(numba, dtype)
    zero = getattr(np, dtype)(0)
    t = TILE
    e = t * per_thread  # the block's edge in c
    two = per_thread == 2
    load = _tile_loader(dtype, trans_a, trans_b, per_thread)

    @cuda.jit
    def kernel(c, a, b, m, k, n, batch, sa, sb):
        ta = cuda.shared.array((e, t + 1), nb_dtype)  # a[row, kk + j]
        tb = cuda.shared.array((t, e + 1), nb_dtype)  # b[kk + j, col]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        r0 = cuda.blockIdx.y * e
        c0 = cuda.blockIdx.x * e
        for z in range(cuda.blockIdx.z, batch, cuda.gridDim.z):
            a0 = z * sa
            b0 = z * sb
            acc00 = zero
            acc01 = zero
            acc10 = zero
            acc11 = zero
            for kt in range((k + t - 1) // t):
                load(ta, tb, a, b, a0, b0, r0, c0, kt * t, m, k, n, tx, ty)
                cuda.syncthreads()
                for q in range(t):
                    x0 = ta[ty, q]
                    y0 = tb[q, tx]
                    acc00 += x0 * y0
                    if two:
                        x1 = ta[ty + t, q]
                        y1 = tb[q, tx + t]
                        acc01 += x0 * y1
                        acc10 += x1 * y0
                        acc11 += x1 * y1
                cuda.syncthreads()
            row = r0 + ty
            col = c0 + tx
            out = z * m * n
            if row < m and col < n:
                c[out + row * n + col] = acc00
            if two:
                if row < m and col + t < n:
                    c[out + row * n + col + t] = acc01
                if row + t < m and col < n:
                    c[out + (row + t) * n + col] = acc10
                if row + t < m and col + t < n:
                    c[out + (row + t) * n + col + t] = acc11

    kernel.graphc_name = f"matmul_{dtype}" + "_at" * trans_a + "_bt" * trans_b + \
        f"_{e}x{e}"
    return kernel


# ---------------------------------------------------------------------------------------
# Fused groups: one kernel stores every output of a group instance


def offset_lines(walk) -> list[str]:
    """Kernel lines computing, for flat element ``i`` of ``shape``, the offset ``o`` of each
    ``(o, strides)`` in ``walk``: the element's coordinates times those strides.  Nothing
    when ``walk`` is empty (every operand read at ``i`` or ``0``)."""
    if not walk:
        return []
    return ["        rem = i", *(f"        {o} = 0" for o, _ in walk),
            "        for d in range(ndim - 1, -1, -1):",
            "            c = rem % shape[d]",
            "            rem //= shape[d]",
            *(f"            {o} += c * {st}[d]" for o, st in walk)]


def fused_source(group, stores, operand_dtypes, kinds) -> str:
    """The source of ``def kernel(n, ndim, shape, out0, out0_st, ..., a0, a0_st, ...)``
    computing fused ``group`` once per element of its flat domain (a grid-stride loop):
    one statement per step, in the group's order, with a comment naming the op.  Operand
    k (of ``operand_dtypes[k]``, converted to the group's dtype on load unless bool) is
    read at ``i`` (kind ``F``), ``0`` (``S``) or through its strides ``a<k>_st`` (``B``).
    ``stores[m] = (step, strided)``: ``out<m>`` gets step ``step`` at ``i``, or with
    ``strided`` through its strides ``out<m>_st`` (a layout with the summed axes last)."""
    work = group.dtype
    symbols = group.symbols()
    bools = {s for s, d in zip(symbols, operand_dtypes) if d == "bool"}
    printer = CudaPrinter(work, {s: s.name for s in symbols}, bools)
    steps = dict.fromkeys(step for step, _ in stores)
    bound, _ = group.statements([FusedOutput(step) for step in steps], symbols)
    targets = [f"out{m}[out{m}_at]" if strided else f"out{m}[i]"
               for m, (_, strided) in enumerate(stores)]
    walk = [f"a{k}" for k, kind in enumerate(kinds) if kind == "B"] + \
        [f"out{m}" for m, (_, strided) in enumerate(stores) if strided]
    params = [f"out{m}, out{m}_st" for m in range(len(stores))] + \
        [f"a{k}, a{k}_st" for k in range(len(kinds))]
    said = [f"out{m} = s{step}" + (" (summed axes last)" if strided else "")
            for m, (step, strided) in enumerate(stores)]
    lines = [f"# fused group in {work}: {', '.join(said)}",
             f"def kernel(n, ndim, shape, {', '.join(params)}):",
             "    for i in range(cuda.grid(1), n, cuda.gridsize(1)):"]
    lines += offset_lines([(f"{a}_at", f"{a}_st") for a in walk])
    for k, (kind, s, dtype) in enumerate(zip(kinds, symbols, operand_dtypes)):
        load = f"a{k}[{ {'F': 'i', 'S': '0', 'B': f'a{k}_at'}[kind] }]"
        if s not in bools and dtype != work:
            load = f"{printer._cast()}({load})"
        lines.append(f"        {s.name} = {load}")
    for sym, expr in bound:
        text = printer.numeric(expr)
        printer.names[sym] = sym.name
        step = group.steps[int(sym.name[1:])]
        lines.append(f"        {sym.name} = {text}  # {comment(step.text())}")
    lines += [f"        {target} = s{step}" for target, (step, _) in zip(targets, stores)]
    return "\n".join(lines) + "\n"
