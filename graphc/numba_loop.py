"""A scan's loop as one native function: every step's kernel calls, GEMMs and copies, called
from compiled code instead of from Python (issue 16: about 5 us of Python a step, 10% of
W4's step at T = 50).

The body is lowered as usual (:class:`graphc.numba_lowering.Lowering` with ``body=True``);
:func:`plan` then reads its statements back, one line each, as operations on addresses:

- ``k_name(p, q + 512, 32, 128)``: a kernel call (kernels are C functions already,
  :mod:`graphc.numba_native`);
- ``np.matmul(a, b, out=c)``: ``cblas_?gemm`` of the BLAS NumPy itself calls, with the
  arguments NumPy passes (row-major; a transposed operand as the transpose flag), so the
  result is the same bits;
- ``np.matmul`` with a dimension of 1 and a full ``np.add.reduce``: as NumPy runs them
  (:mod:`graphc.numba_numpy_ways`: ``gemv``, its loop without BLAS, its pairwise sum);
- ``np.concatenate(..., out=c)`` and ``out[...] = x``: row copies; ``x.fill(0)``: memset;
- ``np.add/subtract/multiply/divide/negative(..., out=c)`` on floats: IEEE loops;
- transposes, reshapes and basic indexing (views), ``del`` and ``blas_ready()`` (called
  once before the loop).

Any other line (a NumPy fallback, a kernel split over threads, a product NumPy gives to
``dot`` or ``syrk``) and the body stays a Python loop.  :mod:`graphc.numba_segments` uses the same
reading for runs of a program's statements (slots ``("p", expression)``: per-call values).

The function's arguments: the number of steps, an ``int64`` table of each step's
addresses (the inputs' and outputs' slices, as :class:`graphc.numba_backend.LoopRunner`
makes them) and a table of the fixed ones (the kernels, the GEMM, constants, the body's
buffers).  Its LLVM IR holds no address, so one
object serves every process; llvmlite compiles it (no Numba) in a few milliseconds.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import os
import re
from dataclasses import dataclass

import numpy as np

from . import numba_numpy_ways as ways
from .numba_numpy_ways import Unsupported, c_strides

# GRAPHC_NATIVE_LOOPS=0: scan bodies run as Python loops (for comparison and debugging)
ENABLED = os.environ.get("GRAPHC_NATIVE_LOOPS", "1") != "0"

_GEMM = {"float32": ("sgemm", "float"), "float64": ("dgemm", "double")}


def _array_data_offset() -> int | None:
    """Where an ndarray object (CPython) holds its data address: NumPy's ``PyArray_DATA``
    reads the field after the object header (``PyArrayObject_fields``, 16 bytes on 64-bit
    CPython). Checked here on arrays, or None (then addresses are looked up in Python,
    ``_addr``: ~0.9 us an array against 0.02 us for ``id``)."""
    samples = [np.zeros(3), np.zeros((2, 3), np.float32).T, np.ones(1)[:0]]
    offset = 16
    try:
        if all(ctypes.c_void_p.from_address(id(a) + offset).value ==
               a.__array_interface__["data"][0] for a in samples):
            return offset
    except (ValueError, OSError):
        pass
    return None


ARRAY_DATA_OFFSET = _array_data_offset()


@dataclass
class Arr:
    """An array a line names: where its data starts (a slot and a byte offset), its shape,
    its strides in bytes and its dtype.  Slots: ``("s", j)`` the step table's column j,
    ``("f", k)`` the fixed table's entry k."""

    slot: tuple
    offset: int
    shape: tuple
    strides: tuple
    dtype: str


def contiguous(a: Arr) -> bool:
    return a.strides == c_strides(a.shape, np.dtype(a.dtype).itemsize)


@dataclass
class NativeLoop:
    """A body's steps as one native function; ``fixed`` names what each entry of the fixed
    table holds: ``("value", int)``, or ``("buffer", k)`` (the body's k-th buffer)."""

    ir: str
    symbol: str
    fixed: list
    blas: bool
    address: int = 0

    def __post_init__(self):
        if not self.address:
            self.address = link(self.ir, self.symbol)
        proto = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p)
        self.fn = proto(self.address)

    def table(self, arrays) -> np.ndarray:
        """The fixed table for the body's buffers ``arrays`` (all of them, layout order)."""
        return np.array([v if kind == "value" else arrays[v].__array_interface__["data"][0]
                         for kind, v in self.fixed], np.int64)

    def run(self, steps: int, table: np.ndarray, fixed: np.ndarray) -> None:
        """Run ``steps`` steps: ``table`` is (columns, steps) int64, C-contiguous."""
        self.fn(steps, table.ctypes.data, fixed.ctypes.data)


# ---------------------------------------------------------------------------------------
# Reading the body's lines


class Names:
    """What each name in the body's lines stands for: arrays, addresses, kernels."""

    def __init__(self):
        self.arrays: dict[str, Arr] = {}
        self.pointers: dict[str, tuple] = {}  # name -> (slot, byte offset)
        self.fixed: list = []  # the fixed table's entries
        self._at: dict = {}

    def slot(self, kind: str, value) -> tuple:
        """The fixed table's entry holding ``(kind, value)``."""
        if (kind, value) not in self._at:
            self._at[(kind, value)] = len(self.fixed)
            self.fixed.append((kind, value))
        return ("f", self._at[(kind, value)])

    def array(self, name: str) -> Arr:
        if name not in self.arrays:
            raise Unsupported(f"unknown array {name}")
        return self.arrays[name]

    def pointer(self, text: str) -> tuple:
        if (m := re.fullmatch(r"_w?addr\((\w+)\)", text.strip())) and m[1] in self.arrays \
                and contiguous(self.arrays[m[1]]):  # an array's address, taken in the call
            return self.arrays[m[1]].slot, self.arrays[m[1]].offset
        m = re.fullmatch(r"(\w+)(?: \+ (\d+))?", text.strip())
        if m is None or m[1] not in self.pointers:
            raise Unsupported(f"unknown pointer {text}")
        slot, offset = self.pointers[m[1]]
        return slot, offset + int(m[2] or 0)


def plan(lowering, inputs, given, pool) -> NativeLoop | None:
    """The native loop of a body lowering (after its kernels are loaded), or None where a
    line is not one it runs.  ``given``: the body's parameters (inputs' arrays, their
    addresses, outputs' arrays, their addresses); ``pool``: its buffers (value, shape,
    dtype), in the order of its buffer layout."""
    if not ENABLED:
        return None
    names = names_of(lowering, inputs, given, pool)
    ops, blas = [], False
    try:
        for line in lowering.lines:
            text = line.strip()
            if text == "blas_ready()":
                blas = True
            elif text and not text.startswith(("#", "del ")):
                ops.append(operation(text, names, lowering))
    except Unsupported as why:
        lowering.native_declined = str(why)
        return None
    if not ops:
        return None
    if lowering.gemm_block:
        ops = [block for op in ops for block in gemm_blocks(op, lowering.gemm_block)]
    ir = module_ir(ops, names)
    symbol = "graphc_loop_" + hashlib.sha256(ir.encode()).hexdigest()[:16]
    return NativeLoop(ir.replace("@drive", f"@{symbol}"), symbol, names.fixed, blas)


def names_of(lowering, inputs, given, pool) -> Names:
    names = Names()
    n_in = len(inputs)
    outputs = lowering.graph.outputs
    for j, t in enumerate(list(inputs) + list(outputs) if given else []):
        array, pointer = (given[j], given[n_in + j]) if j < n_in else \
            (given[n_in + j], given[2 * n_in + len(outputs) + j - n_in])
        names.arrays.setdefault(array, Arr(("s", j), 0, t.shape, c_strides(
            t.shape, np.dtype(t.dtype).itemsize), t.dtype))
        names.pointers.setdefault(pointer, (("s", j), 0))
    for k, (v, shape, dtype) in enumerate(pool):  # (a scratch buffer: not its node's shape)
        slot = names.slot("buffer", k)
        names.arrays[v.var] = Arr(slot, 0, tuple(shape), c_strides(
            shape, np.dtype(dtype).itemsize), dtype)
        if v.pointer is not None:
            names.pointers[v.pointer] = (slot, 0)
    for name, value in lowering.namespace.items():
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            names.pointers[name] = (names.slot("value", int(value)), 0)
        elif isinstance(value, np.ndarray) and value.size and value.dtype.kind != "O":
            names.arrays[name] = Arr(names.slot("value", value.__array_interface__["data"][0]),
                                      0, value.shape, value.strides, str(value.dtype))
    return names


_MATMUL = re.compile(r"np\.matmul\(([\w.(), -]+?), ([\w.(), -]+?), out=([\w.(), -]+)\)")
_CONCAT = re.compile(r"np\.concatenate\(\(([\w, ]+?),?\), axis=(\d+), out=(\w+), "
                     r"casting='unsafe'\)")
_UFUNC = re.compile(r"np\.(add|subtract|multiply|divide|negative)\(([\w.+\-, ]+), out=(\w+)\)")
VIEW = re.compile(r"(\w+) = (\w+)\.(transpose|reshape)\(\(([-\d, ]*)\)\)")


def operation(text: str, names: Names, lowering):
    """One line as an operation (a tuple), after checking it can run natively."""
    if m := re.fullmatch(r"(k_\w+)\((.*)\)", text):
        return _kernel_call(m[1], m[2], names, lowering)
    if m := _MATMUL.fullmatch(text):
        a, b, c = (_operand(m[k], names) for k in (1, 2, 3))
        if len(a.shape) == len(b.shape) == 2 and 1 in (*a.shape, *b.shape) and contiguous(c):
            return ways.matmul(a, b, c, blas_function("sgemv" if a.dtype == "float32"
                                                      else "dgemv"))
        return _gemm(a, b, c)
    if m := _CONCAT.fullmatch(text):
        return _concat([names.array(n.strip()) for n in m[1].split(",")], int(m[2]),
                       names.array(m[3]))
    if m := re.fullmatch(r"(\w+)\[\.\.\.\] = (\w+)", text):
        a = names.array(m[2])  # one copy if contiguous, else one per row
        return _concat([a], 0 if contiguous(a) else max(len(a.shape) - 1, 0),
                       names.array(m[1]))
    if (m := re.fullmatch(r"(\w+)\.fill\(0\)", text)) and contiguous(names.array(m[1])):
        return ("zero", names.array(m[1]))
    if m := _UFUNC.fullmatch(text):
        return _arithmetic(m[1], m[2].split(", "), names.array(m[3]), names)
    if m := VIEW.fullmatch(text):
        names.arrays[m[1]] = view(names.array(m[2]), m[3], m[4])
        return ("none",)
    if (m := re.fullmatch(r"(\w+) = (\w+)\[(\w+)\]", text)) and m[3] in lowering.namespace:
        names.arrays[m[1]] = indexed(names.array(m[2]), lowering.namespace[m[3]])
        return ("none",)
    if (op := ways.total(text, names)) is not None:
        return op
    raise Unsupported(text)


def indexed(a: Arr, index) -> Arr:
    """The view ``a[index]`` for a basic index (slices, integers, an Ellipsis), found by
    NumPy on an array of ``a``'s layout over no memory (basic indexing reads none)."""
    if not isinstance(index, tuple) or not all(
            isinstance(i, (slice, int, type(Ellipsis))) and not isinstance(i, bool)
            for i in index):
        raise Unsupported("an advanced index")
    base = np.zeros(1, a.dtype)
    fake = np.lib.stride_tricks.as_strided(base, a.shape, a.strides)
    view = fake[index]
    offset = view.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    return Arr(a.slot, a.offset + offset, view.shape, view.strides, a.dtype)


def _kernel_call(name, args, names: Names, lowering):
    kernel = lowering.kernels.get(name)
    if kernel is None or not isinstance(kernel.fn, ctypes._CFuncPtr):
        raise Unsupported(name)
    texts = [a.strip() for a in args.split(",")]
    params = kernel.spec.params
    if len(texts) != len(params):
        raise Unsupported(f"{name}: {len(texts)} arguments")
    values = []
    for text, param in zip(texts, params):
        if param[0] == "ptr":
            values.append(("ptr",) + names.pointer(text))
        elif re.fullmatch(r"-?\d+", text):
            values.append(("i64", int(text)))
        else:
            raise Unsupported(text)
    address = ctypes.cast(kernel.fn, ctypes.c_void_p).value
    return ("call", names.slot("value", address), values)


def _operand(text: str, names: Names) -> Arr:
    """``name`` or ``name.reshape(-1, k)`` of a contiguous array."""
    m = re.fullmatch(r"(\w+)(?:\.reshape\(-1, (\d+)\))?", text.strip())
    if m is None:
        raise Unsupported(text)
    a = names.array(m[1])
    if m[2] is None:
        return a
    return view(a, "reshape", f"-1, {m[2]}")


def view(a: Arr, how: str, args: str) -> Arr:
    if not contiguous(a):
        raise Unsupported("a view of a strided array")
    dims = tuple(int(x) for x in args.split(",") if x.strip())
    if how == "transpose":
        if sorted(dims) != list(range(len(a.shape))):
            raise Unsupported("transpose axes")
        return Arr(a.slot, a.offset, tuple(a.shape[d] for d in dims),
                    tuple(a.strides[d] for d in dims), a.dtype)
    size = int(np.prod(a.shape, dtype=np.int64))
    if dims.count(-1) == 1:
        known = int(np.prod([d for d in dims if d != -1], dtype=np.int64))
        dims = tuple(size // known if d == -1 else d for d in dims)
    if int(np.prod(dims, dtype=np.int64)) != size:
        raise Unsupported("reshape")
    return Arr(a.slot, a.offset, dims, c_strides(dims, np.dtype(a.dtype).itemsize), a.dtype)


def _blas_layout(a: Arr):
    """NumPy's choice for a 2-D operand (numpy/_core/src/umath/matmul.c.src): row-major
    with leading dimension ``rows stride``, else transposed, else not BLAS-able."""
    size = np.dtype(a.dtype).itemsize
    (s0, s1), (d0, d1) = a.strides, a.shape
    if s1 == size and s0 % size == 0 and s0 // size >= d1:
        return 111, s0 // size  # CblasNoTrans
    if s0 == size and s1 % size == 0 and s1 // size >= d0:
        return 112, s1 // size  # CblasTrans
    raise Unsupported("an operand NumPy would copy")


def _gemm(a: Arr, b: Arr, c: Arr):
    """``c = a @ b`` as NumPy runs it: ``gemm`` for 2-D operands of one float dtype when
    no dimension is 1 (NumPy calls ``gemv`` or ``dot`` then) and ``a`` is not ``b``'s
    transpose (``syrk`` then)."""
    if {a.dtype, b.dtype, c.dtype} != {a.dtype} or a.dtype not in _GEMM or \
            not len(a.shape) == len(b.shape) == len(c.shape) == 2 or not contiguous(c):
        raise Unsupported("gemm operands")
    (m, k), (k2, n) = a.shape, b.shape
    if k != k2 or c.shape != (m, n) or min(m, n, k) < 2 or gemm_function(a.dtype) is None:
        raise Unsupported("gemm shapes")
    (ta, lda), (tb, ldb) = _blas_layout(a), _blas_layout(b)
    if (a.slot, a.offset) == (b.slot, b.offset):
        raise Unsupported("one operand twice (NumPy may call syrk)")
    return ("gemm", a.dtype, ta, tb, m, n, k, a, lda, b, ldb, c, n)


def gemm_blocks(op, limit: int) -> list:
    """``op`` as GEMMs over column blocks of at most ``limit`` multiply-adds each where it
    has between 1 and 4 times that many (:data:`graphc.loop_split.SMALL_GEMM`), else
    ``[op]``: the same products (each column is computed by one call)."""
    if op[0] != "gemm":
        return [op]
    _, dtype, ta, tb, m, n, k, a, lda, b, ldb, c, ldc = op
    if not limit < m * n * k <= 4 * limit:
        return [op]
    parts = (m * n * k + limit - 1) // limit
    width = ((n + parts - 1) // parts + 15) // 16 * 16  # up to 16 columns (a 64-byte line)
    size = np.dtype(dtype).itemsize
    return [("gemm", dtype, ta, tb, m, min(width, n - j), k, a, lda,
             dataclasses.replace(b, offset=b.offset + j * size * (1 if tb == 111 else ldb)),
             ldb, dataclasses.replace(c, offset=c.offset + j * size), ldc)
            for j in range(0, n, width)]


_FLOAT_OPS = {"add": "fadd", "subtract": "fsub", "multiply": "fmul", "divide": "fdiv",
              "negative": "fneg"}


def _arithmetic(name: str, args, out: Arr, names: Names):
    """``np.add(a, b, out=c)`` and the like on whole contiguous float arrays of one shape
    and dtype, or a number (which NumPy rounds to the arrays' dtype first): IEEE
    arithmetic, rounded once per element, so any loop gives NumPy's bits."""
    if out.dtype not in _GEMM or not contiguous(out) or \
            len(args) != (1 if name == "negative" else 2):
        raise Unsupported(f"np.{name} operands")
    operands = []
    for text in args:
        if re.fullmatch(r"-?[\d.]+(?:e[-+]?\d+)?", text):
            number = np.dtype(out.dtype).type(float(text))
            operands.append(("const", float(number)))
            continue
        a = names.array(text)
        if a.dtype != out.dtype or not contiguous(a):
            raise Unsupported(f"np.{name} operands")
        operands.append(("arr", a, _period(a.shape, out.shape)))
    return ("ew", _FLOAT_OPS[name], int(np.prod(out.shape, dtype=np.int64)), out, operands)


def _period(shape, out_shape) -> int:
    """After how many elements of the output an operand NumPy broadcasts to ``out_shape``
    repeats: its size, where it is the output's trailing axes (leading 1s aside)."""
    shape = tuple(shape)
    while shape and shape[0] == 1:
        shape = shape[1:]
    if shape != tuple(out_shape)[len(out_shape) - len(shape):]:
        raise Unsupported("a broadcast over other than leading axes")
    return int(np.prod(shape, dtype=np.int64))


def _concat(parts, axis: int, out: Arr):
    """Copies of ``parts`` into the contiguous ``out`` along ``axis`` (one part: ``out[...]
    =``): per part, ``outer`` rows of ``width`` bytes, contiguous each, ``stride`` bytes
    apart in the part (a part may be a strided view: a slice of columns)."""
    size = np.dtype(out.dtype).itemsize
    if not contiguous(out) or any(p.dtype != out.dtype for p in parts):
        raise Unsupported("copy operands")
    outer = int(np.prod(out.shape[:axis], dtype=np.int64))
    row = int(np.prod(out.shape[axis:], dtype=np.int64)) * size
    if len(parts) == 1 and tuple(parts[0].shape) != tuple(out.shape):
        raise Unsupported("copy shapes")
    copies = []
    for p in parts:
        if p.shape[:axis] != out.shape[:axis] or p.shape[axis + 1:] != out.shape[axis + 1:]:
            raise Unsupported("copy shapes")
        width = int(np.prod(p.shape[axis:], dtype=np.int64)) * size
        copies.append((p, width, _row_stride(p, axis, width)))
    if sum(w for _, w, _ in copies) != row:
        raise Unsupported("copy shapes")
    return ("copy", outer, row, out, copies)


def _row_stride(a: Arr, axis: int, width: int) -> int:
    """The bytes between ``a``'s rows (its axes before ``axis``, as one) where each row (the
    axes from ``axis`` on) is contiguous and the rows are evenly spaced."""
    if a.strides[axis:] != c_strides(a.shape[axis:], np.dtype(a.dtype).itemsize):
        raise Unsupported("a copy of rows that are not contiguous")
    dims = [(n, s) for n, s in zip(a.shape[:axis], a.strides[:axis]) if n != 1]
    if not dims:
        return width
    expect = dims[-1][1]
    for n, s in reversed(dims):
        if s != expect:
            raise Unsupported("a copy of unevenly spaced rows")
        expect *= n
    return dims[-1][1]


# ---------------------------------------------------------------------------------------
# The LLVM IR


class _Builder:
    def __init__(self, int_type: str):
        self.lines: list[str] = []
        self.count = 0
        self.int = int_type  # the BLAS's integer
        self.percall: dict = {}  # per-call values by their Python expression: column

    def tmp(self) -> str:
        self.count += 1
        return f"%t{self.count}"

    def emit(self, text: str) -> str:
        t = self.tmp()
        self.lines.append(f"  {t} = {text}")
        return t

    def slot(self, slot) -> str:
        kind, j = slot
        array = kind == "q"  # the column holds an ndarray object's address: its data's next
        if kind in ("p", "q"):  # a per-call value (graphc.numba_segments): its own column
            kind, j = "s", self.percall.setdefault(j, len(self.percall))
        if kind == "s":
            index = self.emit(f"add i64 %col{j}, %s")
            at = self.emit(f"getelementptr i64, ptr %P, i64 {index}")
        else:
            at = self.emit(f"getelementptr i64, ptr %F, i64 {j}")
        value = self.emit(f"load i64, ptr {at}")
        if array:
            at = self.emit(f"getelementptr i8, ptr {self.emit(f'inttoptr i64 {value} to ptr')}, "
                           f"i64 {ARRAY_DATA_OFFSET}")
            value = self.emit(f"load i64, ptr {at}")
        return value

    def address(self, slot, offset) -> str:
        value = self.slot(slot)
        if offset:
            value = self.emit(f"add i64 {value}, {offset}")
        return self.emit(f"inttoptr i64 {value} to ptr")

    def label(self, name: str) -> None:
        self.lines.append(f"{name}:")


def module_ir(ops, names: Names, percall: dict | None = None) -> str:
    """The IR of ``void drive(i64 steps, i64* table, i64* fixed)``; ``percall`` (filled in):
    the column of each per-call value (slot ``("p", expression)``, or ``("q", "id(name)")``:
    an ndarray object, whose data address the code reads from it)."""
    gemms = {op[1] for op in ops if op[0] == "gemm"}
    b = _Builder("i64")
    if gemms:
        b.int = "i64" if gemm_function(next(iter(gemms)))[1] else "i32"
    if percall is not None:
        b.percall = percall
        for s in _slots(ops):
            if s[0] in ("p", "q"):
                percall.setdefault(s[1], len(percall))
    columns = sorted({s[1] for s in _slots(ops) if s[0] == "s"} | set(b.percall.values()))
    head = ["define void @drive(i64 %T, ptr %P, ptr %F) {", "entry:"]
    head += [f"  %col{j} = mul i64 %T, {j}" for j in columns]
    head += ["  %any = icmp sgt i64 %T, 0", "  br i1 %any, label %loop, label %exit"]
    b.lines.append("loop:")
    b.lines.append("  %s = phi i64 [0, %entry], [%s.next, %latch]")
    for op in ops:
        _emit(b, op, names)
    b.lines += ["  br label %latch", "latch:", "  %s.next = add i64 %s, 1",
                "  %more = icmp slt i64 %s.next, %T", "  br i1 %more, label %loop, label %exit",
                "exit:", "  ret void", "}"]
    decl = ["declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)",
            "declare void @llvm.memset.p0.i64(ptr, i8, i64, i1)"]
    return "\n".join(decl + head + b.lines) + "\n"


def _slots(ops):
    for op in ops:
        if op[0] == "call":
            yield op[1]
            yield from (v[1] for v in op[2] if v[0] == "ptr")
        elif op[0] == "gemm":
            yield from (op[7].slot, op[9].slot, op[11].slot)
        elif op[0] == "copy":
            yield op[3].slot
            yield from (p.slot for p, _, _ in op[4])
        elif op[0] == "zero":
            yield op[1].slot
        elif op[0] == "ew":
            yield op[3].slot
            yield from (x[1].slot for x in op[4] if x[0] == "arr")
        elif op[0] in ways.KINDS:
            yield from (x.slot for x in ways.arrays(op))


def _emit(b: _Builder, op, names) -> None:
    if op[0] == "call":
        fn = b.emit(f"inttoptr i64 {b.slot(op[1])} to ptr")
        args = [f"ptr {b.address(v[1], v[2])}" if v[0] == "ptr" else f"i64 {v[1]}"
                for v in op[2]]
        b.lines.append(f"  call void {fn}({', '.join(args)})")
    elif op[0] == "gemm":
        _, dtype, ta, tb, m, n, k, a, lda, bb, ldb, c, ldc = op
        real, i = _GEMM[dtype][1], b.int
        ways.cblas_call(b, names.slot("value", gemm_function(dtype)[0]), [
            ("i32", ways.ROW_MAJOR), ("i32", ta), ("i32", tb), (i, m), (i, n), (i, k),
            (real, "1.0"), ("ptr", a), (i, lda), ("ptr", bb), (i, ldb), (real, "0.0"),
            ("ptr", c), (i, ldc)])
    elif op[0] == "copy":
        _emit_copy(b, *op[1:])
    elif op[0] == "ew":
        _emit_arithmetic(b, *op[1:])
    elif op[0] in ways.KINDS:
        ways.emit(b, op, lambda address: names.slot("value", address))
    elif op[0] == "zero":
        size = int(np.prod(op[1].shape, dtype=np.int64)) * np.dtype(op[1].dtype).itemsize
        at = b.address(op[1].slot, op[1].offset)
        b.lines.append(f"  call void @llvm.memset.p0.i64(ptr {at}, i8 0, i64 {size}, i1 false)")


def _loop(b: _Builder, n: int):
    """Open a counted loop of ``n`` iterations; its index, and how to close it."""
    k = b.count + 1
    start, body, done = f"l{k}.start", f"l{k}.body", f"l{k}.done"
    b.lines.append(f"  br label %{start}")
    b.label(start)
    b.lines.append(f"  br label %{body}")
    b.label(body)
    i = f"%i{k}"
    b.lines.append(f"  {i} = phi i64 [0, %{start}], [{i}.next, %{body}]")

    def close():
        b.lines.append(f"  {i}.next = add i64 {i}, 1")
        more = b.emit(f"icmp slt i64 {i}.next, {n}")
        b.lines.append(f"  br i1 {more}, label %{body}, label %{done}")
        b.label(done)
    return i, close


def _emit_arithmetic(b: _Builder, opcode: str, n: int, out: Arr, operands) -> None:
    real = _GEMM[out.dtype][1]
    bases = [b.address(x[1].slot, x[1].offset) if x[0] == "arr" else None for x in operands]
    dst = b.address(out.slot, out.offset)
    i, close = _loop(b, n)
    values = []
    for x, base in zip(operands, bases):
        if x[0] == "const":
            values.append(f"0x{np.float64(x[1]).view(np.uint64):016X}")
            continue
        at = i if x[2] == n else "0" if x[2] == 1 else b.emit(f"urem i64 {i}, {x[2]}")
        at = b.emit(f"getelementptr {real}, ptr {base}, i64 {at}")
        values.append(b.emit(f"load {real}, ptr {at}"))
    result = b.emit(f"{opcode} {real} {', '.join(values)}")
    at = b.emit(f"getelementptr {real}, ptr {dst}, i64 {i}")
    b.lines.append(f"  store {real} {result}, ptr {at}")
    close()


def _emit_copy(b: _Builder, outer, row, out, parts) -> None:
    dst = b.address(out.slot, out.offset)
    srcs = [(b.address(p.slot, p.offset), w, stride) for p, w, stride in parts]
    r, close = (None, None) if outer == 1 else _loop(b, outer)
    at = 0
    for src, w, stride in srcs:
        d, s = str(at), "0"
        if r is not None:
            d = b.emit(f"add i64 {b.emit(f'mul i64 {r}, {row}')}, {at}")
            s = b.emit(f"mul i64 {r}, {stride}")
        d = b.emit(f"getelementptr i8, ptr {dst}, i64 {d}")
        s = b.emit(f"getelementptr i8, ptr {src}, i64 {s}")
        b.lines.append(f"  call void @llvm.memcpy.p0.p0.i64(ptr {d}, ptr {s}, i64 {w}, i1 false)")
        at += w
    if close is not None:
        close()


# ---------------------------------------------------------------------------------------
# The BLAS NumPy calls, and compiling


@functools.lru_cache(maxsize=None)
def blas_function(name: str) -> int | None:
    """The address of ``cblas_<name>`` in the BLAS NumPy calls, or None."""
    from . import blas

    fn = blas.cblas(name)
    return None if fn is None else ctypes.cast(fn, ctypes.c_void_p).value


@functools.lru_cache(maxsize=None)
def gemm_function(dtype: str):
    """``(address, ilp64)`` of ``cblas_?gemm`` in the BLAS NumPy calls, or None where it
    cannot be found (then bodies with a GEMM stay Python loops)."""
    from . import blas

    fn = blas.cblas(_GEMM[dtype][0])
    return None if fn is None else (ctypes.cast(fn, ctypes.c_void_p).value, True)


_LINKED: dict[str, int] = {}


# IR longer than this (about 100 statements) is compiled without optimizing it first
OPTIMIZE_LINES = 2000


def link(ir: str, symbol: str, optimize: bool | None = None) -> int:
    """Compile ``ir`` and link it into this process once; the address of ``symbol``.
    ``optimize``: run LLVM's -O3 on the IR first (default: if it is at most
    OPTIMIZE_LINES long)."""
    if symbol not in _LINKED:
        from . import kernel_cache
        from . import numba_native as native
        if optimize is None:
            optimize = ir.count("\n") <= OPTIMIZE_LINES
        _LINKED[symbol] = kernel_cache.link(
            symbol, lambda: native.object_from_ir(ir, symbol, optimize))
    return _LINKED[symbol]
