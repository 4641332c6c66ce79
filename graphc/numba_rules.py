"""The Numba backend's rules, one per op class (NumPy evaluation as the default): a rule
returns a :class:`~graphc.numba_lowering.Choice` saying where the value lives and how to
emit it."""

from __future__ import annotations

import numpy as np

from . import blas, dtypes
from . import numba_codegen as cg
from . import numba_conv_kernels as ck
from . import numba_kernels as nk
from .ir import Tensor
from .lowering import (
    broadcast_pattern,
    static_base_shape,
)
from .nn_ops import Conv2d, Conv2dInputGrad, Conv2dWeightGrad, MaxPool2dGrad
from .numba_lowering import Choice, Lowering
from .numba_runtime import _Evaluate
from .shape_ops import Index
from .structured_ops import LogSoftmax, LogSumExp, MatMul, Softmax

# Measured on the reference machine (AVX-512, 2 cores; docs/codegen.md): for one
# arithmetic op (add, mul, max, compare, bias add) a generated kernel is 1.3-2x faster than
# the NumPy ufunc from 4K to 256K elements and equal beyond; NumPy's own SIMD exp, log,
# tanh, sin, cos are 1.1-2.7x faster than a loop calling graphc.fastmath, so a single
# such function stays a ufunc.  Below KERNEL_MIN_SIZE elements the ufunc is as fast and
# costs no compile time.
NUMPY_FASTER = {"exp", "log", "tanh", "sin", "cos", "expm1", "log1p", "sqrt", "square",
                "power", "reciprocal"}
KERNEL_MIN_SIZE = 4096


# ---------------------------------------------------------------------------------------
# Rules: one per op class, NumPy evaluation as the default


def _np_dtype(dtype: str) -> str:
    return f"np.{dtype}" if dtype != "bool" else "np.bool_"


def rule_numpy(lowering: Lowering, t: Tensor) -> Choice:
    """Default: the op's own NumPy ``evaluate`` (ops this backend has no rule for)."""
    lowering.fallbacks.append(t.op.name)

    def emit(L, t, out):
        name = f"op{L.index[id(t)]}"
        L.define(name, _Evaluate(t.op, t.dtype), note=f"{t.op.name}'s NumPy evaluate")
        L.alloc(t, f"{name}({', '.join(L.arg(i) for i in t.inputs)})", False)
    return Choice("alloc", emit, "fallback")


def rule_matmul(lowering, t):
    """``np.matmul`` into the node's buffer: NumPy's BLAS (chosen by measurement,
    docs/perf.md), transposed operands as views (BLAS transpose flags, no copy)."""
    x, w = t.inputs
    # a batch times one matrix is one GEMM with the batch in its rows (NumPy makes one
    # small GEMM per batch entry); reshape copies a batch that is a strided view (a
    # batch-first sequence seen time-first), cheaper than the small GEMMs (W4's
    # gc.nn.LSTM at T=50: 8.51 -> 5.22 ms; ``out`` is a buffer, C-contiguous: a view)
    flat = w.ndim == 2 < x.ndim

    def emit(L, t, out):
        a, b = (_as_dtype(L, i, t.dtype) for i in t.inputs)
        blas_ready(L)
        if flat:
            k, n = w.shape
            L.line(f"np.matmul({a}.reshape(-1, {k}), {b}, out={out}.reshape(-1, {n}))")
        else:
            L.line(f"np.matmul({a}, {b}, out={out})")
    return Choice("buffer", emit)


def blas_ready(L) -> None:
    """Before a program's first BLAS call: :func:`graphc.blas.ready` (once per thread, it
    makes NumPy's OpenBLAS 3x faster on small GEMMs; after that a flag test, ~0.1 us)."""
    if "blas_ready" not in L.namespace:
        L.define("blas_ready", blas.ready, note="graphc.blas.ready: OpenBLAS's buffer, once")
        L.line("blas_ready()")


def _as_dtype(L, t, dtype) -> str:
    return L.arg(t) if t.dtype == dtype else f"{L.arg(t)}.astype({_np_dtype(dtype)})"


def rule_reduce(lowering, t):
    """A float sum over leading or trailing axes is a kernel (NumPy's reduction has more
    per-call overhead and, over leading axes, no faster loop); everything else, a sum of
    all values included (NumPy's pairwise sum; the kernel would add them one after the
    other), a NumPy ufunc reduction, which is what the reference computes."""
    (x,) = t.inputs
    axes = t.op.axes
    leading = axes == tuple(range(len(axes)))
    if t.op.kind == "sum" and dtypes.is_float(x.dtype) and x.size >= KERNEL_MIN_SIZE and \
            axes and t.size > 1 and (leading or _trailing(axes, x.ndim)):
        return _sum_kernel(lowering, t, "leading" if leading else "trailing")
    ufunc = {"sum": "add", "max": "maximum", "min": "minimum"}[t.op.kind]

    def emit(L, t, out):
        (x,) = t.inputs
        dtype = ", dtype=np.int64" if t.op.kind == "sum" and x.dtype == "bool" else ""
        L.line(f"np.{ufunc}.reduce({L.arg(x)}, axis={t.op.axes!r}{dtype}, "
               f"keepdims={t.op.keepdims}, out={out})")
    return Choice("buffer", emit)


def _sum_kernel(lowering, t, kind):
    (x,) = t.inputs
    spec = nk.sum_kernel(kind, t.dtype)
    name = lowering.kernel(t, spec)
    reduced = int(np.prod([x.shape[a] for a in t.op.axes], dtype=np.int64))
    kept = x.size // reduced
    sizes = (reduced, kept) if kind == "leading" else (kept, reduced)

    def emit(L, t, out):
        L.calls += 1
        L.line(f"{name}({L.pointer(L.value(t))}, {L.pointer(L.value(x))}, "
               f"{sizes[0]}, {sizes[1]})")
    return Choice("buffer", emit, "kernel")


def rule_max_pool(lowering, t):
    """max_pool2d and its adjoint max_pool2d_grad: loops over the windows of each plane
    (the NumPy form makes kh*kw strided passes and an argmax table)."""
    x = t.inputs[0]
    if any(i.dtype != t.dtype for i in t.inputs) or not dtypes.is_float(t.dtype) or x.size == 0:
        return rule_numpy(lowering, t)
    kind = "grad" if isinstance(t.op, MaxPool2dGrad) else "forward"
    window = (*t.op.kernel, *t.op.stride) if t.op.padding == (0, 0) else None
    n, c, h, w = x.shape
    ho, wo = (t.inputs[1] if kind == "grad" else t).shape[2:]
    if kind == "grad" and window is not None and (h, w) == (ho * window[0], wo * window[1]) \
            and window[:2] == window[2:]:  # the windows tile the plane
        spec = ck.max_pool_grad_tiles_kernel(t.dtype, window[:2])
    else:
        spec = ck.max_pool_kernel(kind, t.dtype, window)
    name = lowering.kernel(t, spec)
    sizes = (n * c, h, w, ho, wo, *t.op.kernel, *t.op.stride, *t.op.padding)

    def emit(L, t, out):
        L.calls += 1
        pointers = [L.pointer(L.value(t))] + [L.pointer(L.value(i)) for i in t.inputs]
        L.line(f"{name}({', '.join(pointers)}, {', '.join(map(str, sizes))})")
    return Choice("buffer", emit, "kernel")


def rule_conv(lowering, t):
    """conv2d and its two adjoints: im2col / col2im kernels around BLAS matmuls, one per
    group (grouped and depthwise convolutions: a batch of GEMMs over the groups, whose
    channels are contiguous rows of the columns).  The weight gradient is one GEMM per
    group over the whole batch, or, where an image has at least as many pixels as a
    window has values (P >= K), one GEMM per image summed over the batch, as the reference
    does: the whole-batch GEMM's (O, N*P) @ (N*P, K) is slow for small O and K (W5's first
    layer: 3x, docs/perf.md), and the (N, O, K) products are then no larger than the
    gradient itself.  Other cases run the op's NumPy form (also im2col + BLAS)."""
    op = t.op
    if any(i.dtype != t.dtype for i in t.inputs) or \
            not dtypes.is_float(t.dtype) or any(i.size == 0 for i in t.inputs):
        return rule_numpy(lowering, t)
    if isinstance(op, Conv2d):
        (x, w), y = t.inputs, t
    elif isinstance(op, Conv2dInputGrad):
        (y, w), x = t.inputs, t
    else:
        (x, y), w = t.inputs, t
    n, c, h, wd = x.shape
    o, kh, kw = w.shape[0], w.shape[2], w.shape[3]
    ho, wo = y.shape[2:]
    k, pixels = c * kh * kw, ho * wo
    sizes = ", ".join(map(str, (n, c, h, wd, kh, kw, ho, wo, *op.stride, *op.padding,
                                *op.dilation)))
    dtype = _np_dtype(t.dtype)
    per_image = isinstance(op, Conv2dWeightGrad) and pixels >= k
    padded = op.padding != (0, 0)
    if isinstance(op, Conv2dInputGrad):
        col2im = lowering.kernel(t, ck.col2im_kernel(t.dtype, padded))
    else:
        layout = "cols" if isinstance(op, Conv2d) or per_image else "kmajor"
        im2col = lowering.kernel(t, ck.im2col_kernel(layout, t.dtype, padded))
        shape = (n, k, pixels) if layout == "cols" else (k, n * pixels)

    g = op.groups
    # per group: (g, o/g, k/g) kernels against (.., g, k/g, pixels) columns; g = 1 as before
    kernel, rows, by_group, swap = _group_layouts(o, k, pixels, g)

    def emit(L, t, out):
        cols = f"{L.var_name(t)}_cols"
        L.defined.add(cols)
        L.calls += 1
        blas_ready(L)
        if not isinstance(op, Conv2dInputGrad):
            L.line(f"{cols} = np.empty({shape}, {dtype})")
            L.line(f"{im2col}(_addr({cols}), {L.pointer(L.value(x))}, {sizes})")
        if isinstance(op, Conv2d):
            L.line(f"np.matmul({L.arg(w)}.reshape({kernel}), {cols}.reshape({by_group(n)}), "
                   f"out={out}.reshape({rows(n)}))")
        elif isinstance(op, Conv2dWeightGrad):
            _weight_grad_gemm(L, cols, L.arg(y), out, (n, o, k, pixels, g), per_image)
        else:
            L.line(f"{cols} = np.matmul({L.arg(w)}.reshape({kernel}){swap}, "
                   f"{L.arg(y)}.reshape({rows(n)}))")
            L.line(f"{col2im}({L.pointer(L.value(t))}, _addr({cols}), {sizes})")
        L.line(f"del {cols}")
    return Choice("buffer", emit, "kernel")


def _weight_grad_gemm(L, cols: str, dy: str, out: str, sizes, per_image: bool) -> None:
    """The GEMMs of a weight gradient from its columns: per image (``(N, K, P)`` columns)
    and summed over the batch, as the reference computes it, or one per group over the
    whole batch (``(K, N*P)`` columns, against dy made (O, N*P))."""
    n, o, k, pixels, g = sizes
    kernel, rows, by_group, _ = _group_layouts(o, k, pixels, g)
    if per_image:
        L.line(f"np.add.reduce(np.matmul({dy}.reshape({rows(n)}), {cols}.reshape("
               f"{by_group(n)}).swapaxes(-1, -2)), axis=0, out={out}.reshape({kernel}))")
        return
    # (g, K/g, O/g) = columns @ dy^T, then transposed into out: OpenBLAS's GEMM is 2x
    # faster this way round than dy @ columns^T for O and K of tens (docs/perf.md)
    dy = (f"np.ascontiguousarray({dy}.reshape(({n}, {o}, {pixels})).transpose(1, 0, 2))"
          f".reshape(({g}, {o // g}, {n * pixels}))")
    L.line(f"np.copyto({out}.reshape({kernel}), np.matmul({cols}.reshape(({g}, {k // g}, "
           f"{n * pixels})), {dy}.swapaxes(-1, -2)).swapaxes(-1, -2).reshape({kernel}))")


def _group_layouts(o: int, k: int, pixels: int, g: int):
    """The shapes (as text) of a convolution as a batch of GEMMs over its ``g`` groups: the
    kernel ``(g, o/g, k/g)``, functions ``lead -> text`` giving the output rows
    ``(lead, g, o/g, pixels)`` and the columns ``(lead, g, k/g, pixels)``, and the swap of
    a kernel's last two axes; without the group axis when g = 1."""
    if g == 1:
        return (f"({o}, {k})", lambda lead: f"({lead}, {o}, {pixels})",
                lambda lead: f"({lead}, {k}, {pixels})", ".T")
    return (f"({g}, {o // g}, {k // g})", lambda lead: f"({lead}, {g}, {o // g}, {pixels})",
            lambda lead: f"({lead}, {g}, {k // g}, {pixels})", ".transpose(0, 2, 1)")


def _trailing(axes, ndim) -> bool:
    return bool(axes) and tuple(axes) == tuple(range(ndim - len(axes), ndim))


def rule_rows(lowering, t):
    """softmax / log_softmax / logsumexp over trailing axes: a row kernel."""
    (x,) = t.inputs
    axes = (t.op.axis,) if isinstance(t.op, (Softmax, LogSoftmax)) else t.op.axes
    if x.ndim == 0 or not _trailing(axes, x.ndim) or x.dtype != t.dtype or \
            0 in (x.shape[a] for a in axes):  # empty rows (logsumexp: -inf): NumPy's
        return rule_numpy(lowering, t)
    kind = {Softmax: "softmax", LogSoftmax: "log_softmax", LogSumExp: "logsumexp"}[type(t.op)]
    spec = nk.row_kernel(kind, t.dtype)
    name = lowering.kernel(t, spec)
    cols = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
    rows = x.size // cols if cols else 0

    size = np.dtype(t.dtype).itemsize
    steps = (size if kind == "logsumexp" else size * cols, size * cols)

    def emit(L, t, out):
        L.call(name, spec, [L.pointer(L.value(t)), L.pointer(L.value(x))], (rows, cols), steps)
    return Choice("buffer", emit, "kernel")


def rule_reshape(lowering, t):
    def emit(L, t, out):
        x = L.value(t.inputs[0])
        L.view(t, f"{x.var}.reshape({t.shape!r})", x, x.contiguous)
    return Choice("view", emit, "view")


# A transposed matrix that this many matmuls read (an unrolled RNN's Whᵀ in each step's
# backward) is copied once, contiguous: BLAS reads it through its transpose flag slower
# (32x512 @ 512x128 float32: 39 us through the flag, 26 from a copy; AVX-512 EPYC), and
# one copy is cheaper than the difference from a few reads on (a single read: 0.97-5.7x
# slower with the copy, docs/perf.md).
TRANSPOSE_COPY_READS = 4


def rule_transpose(lowering, t):
    reads = lowering.once("matmul_reads", _matmul_reads).get(id(t), 0)
    if t.ndim == 2 and reads >= TRANSPOSE_COPY_READS:
        def copy(L, t, out):  # graphc.blas.transposed: OpenBLAS's omatcopy, 7x NumPy's copy
            L.line(f"_transposed({L.arg(t.inputs[0])}.transpose({t.op.perm!r}), out={out})")
        return Choice("buffer", copy)

    def emit(L, t, out):
        x = L.value(t.inputs[0])
        L.view(t, f"{x.var}.transpose({t.op.perm!r})", x, False)
    return Choice("view", emit, "view")


def _matmul_reads(nodes) -> dict:
    """How many matmuls of ``nodes`` read each node, by ``id``."""
    reads: dict[int, int] = {}
    for node in nodes:
        if isinstance(node.op, MatMul):
            for i in node.inputs:
                reads[id(i)] = reads.get(id(i), 0) + 1
    return reads


def rule_broadcast_to(lowering, t):
    def emit(L, t, out):
        x = L.value(t.inputs[0])
        base, shape = (x.base, x.base_shape) if x.base is not None else (x, x.node.shape)
        L.view(t, f"np.broadcast_to({x.var}, {t.shape!r})", x, False, base=base,
               base_shape=shape)
    return Choice("view", emit, "view")


def rule_index(lowering, t):
    advanced = any(e[0] == "array" for e in t.op.index)

    def emit(L, t, out):
        name = f"ix{L.index[id(t)]}"
        x = L.value(t.inputs[0])
        if advanced:
            L.define(name, t.op.numpy_index(), note="the index")
            L.alloc(t, f"{L.use(x)}[{name}]", False)
        else:  # the Ellipsis keeps an all-integer index a 0-d array view, not a scalar
            L.define(name, t.op.numpy_index() + (Ellipsis,), note="the index")
            L.view(t, f"{x.var}[{name}]", x, False)
    return Choice("alloc" if advanced else "view", emit, "numpy" if advanced else "view")


def rule_index_add(lowering, t):
    def emit(L, t, out):
        name = f"ix{L.index[id(t)]}"
        L.define(name, Index(t.op.index).numpy_index(), note="the index")
        L.line(f"{out}[...] = 0")
        g = L.arg(t.inputs[0])
        if any(e[0] == "array" for e in t.op.index):
            L.line(f"np.add.at({out}, {name}, {g})")
        else:
            L.line(f"{out}[{name}] = {g}")
    return Choice("buffer", emit)


def rule_take(lowering, t):
    def emit(L, t, out):
        x, idx = t.inputs
        L.alloc(t, f"{L.arg(x)}[{L.arg(idx)}]", True)
    return Choice("alloc", emit)


def rule_take_add(lowering, t):
    def emit(L, t, out):
        g, idx = t.inputs
        L.line(f"{out}[...] = 0")
        L.line(f"np.add.at({out}, {L.arg(idx)}, {L.arg(g)})")
    return Choice("buffer", emit)


def rule_concat(lowering, t):
    def emit(L, t, out):
        parts = ", ".join(L.arg(i) for i in t.inputs)
        L.line(f"np.concatenate(({parts},), axis={t.op.axis}, out={out}, casting='unsafe')")
    return Choice("buffer", emit)


def rule_cast(lowering, t):
    def emit(L, t, out):
        L.line(f"np.copyto({out}, {L.arg(t.inputs[0])}, casting='unsafe')")
    return Choice("buffer", emit)


# ---------------------------------------------------------------------------------------
# Elementwise ops: one ufunc, or a generated kernel


def rule_elementwise(lowering, t):
    fn, op = t.op.fn, t.op
    work = op.work_dtype([i.dtype for i in t.inputs])
    expr = fn.stable.subs(dict(zip(fn.param_symbols, (v for _, v in op.params)))) \
        if op.params else fn.stable
    bools = tuple(a.name in fn.bool_args for a in fn.args)
    form = cg.ufunc_form(expr, fn.args)
    natural = "bool" if form and form[0] in cg._UFUNC_RELATIONS.values() else work
    if form and not any(bools) and natural == t.dtype and \
            all(i.dtype == work for i in t.inputs) and \
            (form[0] in NUMPY_FASTER or t.size < KERNEL_MIN_SIZE):
        return Choice("buffer", lambda L, t, out: _emit_ufunc(L, t, out, form))
    step = cg.Step(fn.name, expr, fn.args, tuple(("operand", k) for k in range(fn.arity)),
                   work, t.dtype, bools)
    shapes = [static_base_shape(lowering.folded, i) for i in t.inputs]
    kinds, sizes = broadcast_pattern(t.shape, shapes)
    try:
        spec = cg.elementwise_kernel([step], [i.dtype for i in t.inputs], kinds)
    except cg.Unsupported:
        return rule_numpy(lowering, t)
    # more than two broadcast axes: such operands are materialized at full size
    full = [int(np.prod(shape, dtype=np.int64)) != t.size and kinds == "F" * len(kinds)
            for shape in shapes]
    steps = split_steps(t, kinds, sizes)

    def emit(L, t, out):
        args = [L.operand(i, materialize, t.shape) for i, materialize in zip(t.inputs, full)]
        pointers = [L.pointer(L.value(t))] + args
        L.call(L.in_place(t, spec, pointers, steps), spec, pointers, sizes, steps)
    return Choice("buffer", emit, "kernel")


def split_steps(t: Tensor, kinds: str, sizes) -> list[int]:
    """Bytes each pointer (output first) advances per unit of the first loop size."""
    inner = sizes[1] if len(sizes) == 2 else 1
    per = {"F": inner, "C": 1, "R": 0, "S": 0}
    return [np.dtype(t.dtype).itemsize * inner] + \
        [np.dtype(i.dtype).itemsize * per[k] for i, k in zip(t.inputs, kinds)]


def _emit_ufunc(L, t, out, form):
    name, operands = form
    args = []
    for tag, v in operands:
        if tag == "arg":  # NumPy broadcasts a broadcast operand's base itself
            value = L.value(t.inputs[v])
            args.append(L.use(value.base if value.base is not None else value))
        else:
            args.append(repr(v))
    L.line(f"np.{name}({', '.join(args)}, out={out})")


def rule_identity(lowering, t):
    """stop_gradient: its operand itself."""
    def emit(L, t, out):
        x = L.value(t.inputs[0])
        L.view(t, x.var, x, x.contiguous, base=x.base, base_shape=x.base_shape)
    return Choice("view", emit, "view")
