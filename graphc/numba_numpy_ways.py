"""NumPy's own ways with two statements of a program, as operations of a native run
(:mod:`graphc.numba_loop`, :mod:`graphc.numba_segments`), the same bits as the statement:

- ``np.matmul(a, b, out=c)`` with a dimension of 1, which NumPy does not give to ``gemm``
  (numpy/_core/src/umath/matmul.c.src): a vector times a matrix or a matrix times a vector
  is ``cblas_?gemv`` of NumPy's BLAS with the arguments NumPy passes (its order flag, its
  leading dimension); a product over an inner dimension of 1 is NumPy's loop without BLAS,
  ``0 + a * b`` for each element, up to :data:`OUTER_MAX` of them.  A row times a column
  (NumPy's ``dot``) and a loop over a longer inner dimension are declined.
- ``out[...] = np.add.reduce(acc, axis=None)`` (or ``out=``) of a contiguous float array of
  at most :data:`TOTAL_MAX` values: NumPy's pairwise sum (blocks of at most 128 values with
  eight interleaved accumulators, halves at a multiple of eight above that) added to the
  identity 0, the additions written out one by one in that order (the size is known).

With them W6's teaching graph (a vector times a matrix, a column times a row, a full sum
between its kernels) runs as one native call instead of two and four NumPy calls
(docs/perf.md, "Call overhead").
"""

from __future__ import annotations

import re

import numpy as np

# CBLAS's enumerations
ROW_MAJOR, COL_MAJOR, TRANS = 101, 102, 112
_REAL = {"float32": "float", "float64": "double"}
# a full sum of more values stays a NumPy call (its additions are written out one by one)
TOTAL_MAX = 1024
# an outer product (an inner dimension of 1) is written out one value at a time: at most
# this many (a (1024, 1) @ (1, 8) took 17 s of LLVM, 51k lines of IR, before the cap)
OUTER_MAX = 1024

_REDUCE = re.compile(r"(?:(\w+)\[\.\.\.\] = np\.add\.reduce\((\w+), axis=None\)|"
                     r"np\.add\.reduce\((\w+), axis=None, out=(\w+)\))")


# the operations of this module, by their first element
KINDS = ("gemv", "outer", "total")


class Unsupported(Exception):
    """A line the native code does not run: a scan's body stays a Python loop, a program's
    line a Python statement."""


def c_strides(shape, itemsize) -> tuple:
    """The strides in bytes of a C-contiguous array."""
    strides, step = [], itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def blasable(stride1: int, stride2: int, d1: int, d2: int, itemsize: int) -> bool:
    """NumPy's ``is_blasable2d``: unit steps along the second axis, and the first axis's
    step a whole number of items, at least the second axis's length."""
    return stride2 == itemsize and stride1 % itemsize == 0 and stride1 // itemsize >= d2


def matmul(a, b, c, gemv_address):
    """The operation for ``c = a @ b`` (2-D ``Arr`` operands of one float dtype, ``c``
    contiguous) where a dimension is 1, as NumPy's matmul loop chooses it."""
    size = np.dtype(a.dtype).itemsize
    (m, k), (k2, n) = a.shape, b.shape
    if {a.dtype, b.dtype, c.dtype} != {a.dtype} or a.dtype not in _REAL or k != k2 or \
            tuple(c.shape) != (m, n) or 0 in (m, n, k) or min(m, n, k) != 1:
        raise Unsupported("matmul operands")
    (is1_m, is1_n), (is2_n, is2_p), (os_m, os_p) = a.strides, b.strides, c.strides
    a_ok = blasable(is1_m, is1_n, m, k, size) or blasable(is1_n, is1_m, k, m, size)
    b_ok = blasable(is2_n, is2_p, k, n, size) or blasable(is2_p, is2_n, n, k, size)
    if m == 1 and n == 1:
        raise Unsupported("a row times a column (NumPy's dot)")
    if k == 1 and m * n > OUTER_MAX:  # written out value by value: LLVM's time grows with it
        raise Unsupported(f"an outer product of more than {OUTER_MAX} values")
    if k == 1 and 1 in (m, n):  # NumPy: a (1, 1) times a vector, without BLAS
        return ("outer", a, b, c)
    if m == 1 and b_ok and blasable(is1_n, size, k, 1, size) and gemv_address:
        return _gemv(b, is2_p, is2_n, a, is1_n, c, os_p, n, k, gemv_address)
    if n == 1 and a_ok and blasable(is2_n, size, k, 1, size) and gemv_address:
        return _gemv(a, is1_m, is1_n, b, is2_n, c, os_m, m, k, gemv_address)
    if k == 1:  # a column times a row
        return ("outer", a, b, c)
    raise Unsupported("a matmul NumPy runs without BLAS")


def _gemv(matrix, s_m, s_n, vector, s_v, out, s_o, m, n, address):
    """NumPy's ``gemv``: ``out (m) = matrix (m, n) @ vector (n)`` as column-major with
    the transpose flag where the matrix allows, else row-major."""
    size = np.dtype(matrix.dtype).itemsize
    order, lda = (COL_MAJOR, s_m // size) if blasable(s_m, s_n, m, n, size) else \
        (ROW_MAJOR, s_n // size)
    return ("gemv", matrix.dtype, address, order, n, m, matrix, lda, vector, s_v // size,
            out, s_o // size)


def total(text: str, names):
    """The operation for ``out[...] = np.add.reduce(acc, axis=None)`` or
    ``np.add.reduce(acc, axis=None, out=out)``, or None if ``text`` is neither."""
    m = _REDUCE.fullmatch(text)
    if m is None:
        return None
    acc, out = names.array(m[2] or m[3]), names.array(m[1] or m[4])
    size = int(np.prod(acc.shape, dtype=np.int64))
    itemsize = np.dtype(acc.dtype).itemsize
    if acc.dtype not in _REAL or out.dtype not in _REAL or np.prod(out.shape) != 1 or \
            not 0 < size <= TOTAL_MAX or \
            tuple(acc.strides) != c_strides(acc.shape, itemsize) or \
            (m[4] and out.dtype != acc.dtype):
        raise Unsupported("a full sum")
    return ("total", acc, size, out)


def arrays(op) -> list:
    """The arrays an operation of this module reads or writes."""
    return {"gemv": lambda: [op[6], op[8], op[10]], "outer": lambda: list(op[1:4]),
            "total": lambda: [op[1], op[3]]}[op[0]]()


def emit(b, op, slot_of) -> None:
    """Append ``op``'s IR to the builder ``b`` (:class:`graphc.numba_loop._Builder`);
    ``slot_of(address)``: the fixed-table slot of a function's address."""
    if op[0] == "gemv":
        _, dtype, address, order, n, m, a, lda, x, incx, y, incy = op
        real, i = _REAL[dtype], b.int
        cblas_call(b, slot_of(address), [
            ("i32", order), ("i32", TRANS), (i, n), (i, m), (real, "1.0"), ("ptr", a),
            (i, lda), ("ptr", x), (i, incx), (real, "0.0"), ("ptr", y), (i, incy)])
    elif op[0] == "outer":
        _outer(b, *op[1:])
    else:
        _total(b, *op[1:])


def cblas_call(b, slot, args) -> None:
    """A call of the CBLAS function whose address is in fixed-table ``slot``, with
    ``args``: (LLVM type, value) pairs, an ``Arr`` for each ``ptr`` (its address)."""
    fn = b.emit(f"inttoptr i64 {b.slot(slot)} to ptr")
    values = [(t, b.address(v.slot, v.offset) if t == "ptr" else v) for t, v in args]
    b.lines.append(f"  call void {fn}({', '.join(f'{t} {v}' for t, v in values)})")


def _load(b, real: str, base: str, byte: int) -> str:
    at = b.emit(f"getelementptr i8, ptr {base}, i64 {byte}")
    return b.emit(f"load {real}, ptr {at}")


def _outer(b, a, x, c) -> None:
    """NumPy's loop without BLAS over an inner dimension of 1: ``c[i, j] = 0 + a[i] *
    x[j]`` (IEEE, no contraction: ``0 +`` turns a product of -0 into +0, as NumPy's does)."""
    real = _REAL[c.dtype]
    pa, px, pc = (b.address(v.slot, v.offset) for v in (a, x, c))
    (m, n), size = c.shape, np.dtype(c.dtype).itemsize
    for i in range(m):
        left = _load(b, real, pa, i * a.strides[0])
        for j in range(n):
            product = b.emit(f"fmul {real} {left}, {_load(b, real, px, j * x.strides[1])}")
            value = b.emit(f"fadd {real} 0.0, {product}")
            at = b.emit(f"getelementptr i8, ptr {pc}, i64 {(i * n + j) * size}")
            b.lines.append(f"  store {real} {value}, ptr {at}")


def _total(b, acc, size: int, out) -> None:
    real = _REAL[acc.dtype]
    base = b.address(acc.slot, acc.offset)
    item = np.dtype(acc.dtype).itemsize
    value = b.emit(f"fadd {real} 0.0, {_pairwise(b, real, base, item, 0, size)}")
    if out.dtype != acc.dtype:
        value = b.emit(f"fptrunc double {value} to float")
    b.lines.append(f"  store {_REAL[out.dtype]} {value}, ptr {b.address(out.slot, out.offset)}")


def _pairwise(b, real, base, item, start, n) -> str:
    """NumPy's pairwise sum of ``n`` values from ``start``, its additions in its order."""
    def add(x, y):
        return b.emit(f"fadd {real} {x}, {y}")

    def at(k):
        return _load(b, real, base, (start + k) * item)
    if n < 8:
        res = "0.0"
        for k in range(n):
            res = add(res, at(k))
        return res
    if n <= 128:
        r = [at(k) for k in range(8)]
        for k in range(8, n - n % 8, 8):
            r = [add(r[j], at(k + j)) for j in range(8)]
        res = add(add(add(r[0], r[1]), add(r[2], r[3])), add(add(r[4], r[5]), add(r[6], r[7])))
        for k in range(n - n % 8, n):
            res = add(res, at(k))
        return res
    half = n // 2
    half -= half % 8
    return add(_pairwise(b, real, base, item, start, half),
               _pairwise(b, real, base, item, start + half, n - half))
