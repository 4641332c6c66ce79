"""The CUDA backend's lowering rules, one per op class (:data:`RULES`): each turns a node
into ``(run(env), source line, kind)`` with the fixed kernels of
:mod:`graphc.cuda_kernels`, or raises ``Unsupported`` to leave it to the host fallback.
The generated kernels (elementwise, fused) are :mod:`graphc.cuda_elementwise`'s; the scan
rule is :mod:`graphc.cuda_backend`'s (its body is a program of its own).
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from . import cuda_kernels as ck
from .cuda_elementwise import rule_elementwise, rule_fused
from .cuda_lowering import Lowering, contiguous_strides, flat, size_of, unsupported
from .elementwise_ops import Elementwise
from .fused_ops import Fused
from .lowering import failed
from .nn_ops import Conv2d, Conv2dInputGrad, Conv2dWeightGrad, MaxPool2d, MaxPool2dGrad
from .scan import StopGradient
from .shape_ops import BroadcastTo, Cast, Concat, Index, IndexAdd, Reshape, Take, TakeAdd, Transpose
from .structured_ops import LogSoftmax, LogSumExp, MatMul, Reduce, Softmax


def rule_reduce(low: Lowering, t):
    op = t.op
    (x,) = t.inputs
    if x.dtype == "bool" and op.kind != "sum":
        unsupported("max/min of bool")
    if not op.axes:
        return _view(low, t)
    return _row_reduction(low, t, op.kind, op.axes)


def rule_logsumexp(low: Lowering, t):
    return _row_reduction(low, t, "logsumexp", t.op.axes)


def _row_reduction(low: Lowering, t, kind: str, axes):
    """``kind`` over ``axes`` of the single operand: the axes moved last, a row kernel."""
    (x,) = t.inputs
    fn, _, _ = low.rows_fn(kind, x.shape, axes, x.dtype, t.dtype)
    i, k = low.slot[id(x)], low.slot[id(t)]

    def run(env):
        env[k] = fn(env[i]).reshape(t.shape)
    return run, low.line(t, f"row_{kind}_{t.dtype}"), "kernel"


def rule_softmax(low: Lowering, t):
    (x,) = t.inputs
    axis = t.op.axis % x.ndim
    fn, perm, pshape = low.rows_fn(t.op.name, x.shape, (axis,), x.dtype, t.dtype)
    i, k = low.slot[id(x)], low.slot[id(t)]
    back = None
    if perm != tuple(range(x.ndim)):
        inverse = tuple(int(a) for a in np.argsort(perm))
        pstrides = contiguous_strides(pshape)
        back = low.copy_fn(t.shape, tuple(pstrides[a] for a in inverse))

    def run(env):
        y = fn(env[i])
        if back is not None:
            out = low.empty(t.shape, t.dtype)
            back(flat(out), flat(y))
            y = out
        env[k] = y.reshape(t.shape)
    return run, low.line(t, f"row_{t.op.name}_{t.dtype}"), "kernel"


def matmul_fn(low: Lowering, a_shape, b_shape, dtype, trans_a=False, trans_b=False):
    """``f(a, b) -> c``: ``a @ b`` of device arrays of ``dtype`` (batch axes broadcast).
    With ``trans_a`` (``trans_b``) the operand is passed as stored, its last two axes
    swapped (the input of a transpose, read in place of a copy of it)."""
    if dtype == "bool":
        unsupported("bool matmul")
    m, kk, n = a_shape[-2], a_shape[-1], b_shape[-1]
    batch = tuple(np.broadcast_shapes(a_shape[:-2], b_shape[:-2]))
    out_shape = batch + (m, n)
    nb = size_of(batch)

    def prepare(shape, rows, cols, trans):
        """(copy or None, batch stride, read transposed) for an operand seen as (nb, rows,
        cols); a broadcast copy is made in that (untransposed) order."""
        if size_of(shape[:-2]) == 1:
            return None, 0, trans
        if tuple(shape[:-2]) == batch:
            return None, rows * cols, trans
        full = batch + (rows, cols)
        xs = list(contiguous_strides(shape[:-2] + ((cols, rows) if trans else (rows, cols))))
        if trans:
            xs[-2:] = xs[-1], xs[-2]
        strides = [0] * (len(full) - len(shape)) + [s if d != 1 else 0
                                                    for s, d in zip(xs, shape)]
        return (low.copy_fn(full, tuple(strides)), full), rows * cols, False

    ca, sa, trans_a = prepare(a_shape, m, kk, trans_a)
    cb, sb, trans_b = prepare(b_shape, kk, n, trans_b)
    per_thread = ck.matmul_per_thread()
    kernel = ck.matmul_kernel(dtype, trans_a, trans_b, per_thread)
    low.kernels.setdefault(kernel.graphc_name, "")
    edge = ck.TILE * per_thread
    grid = ((n + edge - 1) // edge, (m + edge - 1) // edge, max(1, min(nb, 65535)))

    def operand(x, c):
        if c is None:
            return flat(x)
        copy, full = c
        tmp = low.empty(full, dtype)
        copy(flat(tmp), flat(x))
        return flat(tmp)

    def run(a, b):
        out = low.empty(out_shape, dtype)
        if out.size:
            low.launch(kernel, grid, (ck.TILE, ck.TILE), flat(out), operand(a, ca),
                       operand(b, cb), m, kk, n, nb, sa, sb)
        return out
    run.kernel = kernel
    return run


def read_transposed(low: Lowering, t) -> bool:
    """Whether node ``t`` is a transpose of the last two axes that only matmuls of its
    dtype read (not an output, not folded): :func:`rule_matmul` then reads its input as
    stored, and no transposed copy is made."""
    if not isinstance(t.op, Transpose) or t.ndim < 2 or id(t) in low.host or \
            t.op.perm != (*range(t.ndim - 2), t.ndim - 1, t.ndim - 2) or \
            any(o is t for o in low.graph.outputs) or t.dtype == "bool":
        return False
    users = low.users.get(id(t), [])
    return bool(users) and all(isinstance(u.op, MatMul) and u.dtype == t.dtype and
                               all(i.dtype == t.dtype for i in u.inputs) for u in users)


def rule_matmul(low: Lowering, t):
    a, b = t.inputs
    if a.dtype != t.dtype or b.dtype != t.dtype:
        unsupported("mixed-dtype matmul")  # rare: the reference converts on the host
    ta, tb = read_transposed(low, a), read_transposed(low, b)
    fn = matmul_fn(low, a.shape, b.shape, t.dtype, ta, tb)
    ia, ib, k = low.slot[id(a)], low.slot[id(b)], low.slot[id(t)]

    def run(env):
        env[k] = fn(env[ia], env[ib])
    return run, low.line(t, fn.kernel.graphc_name), "kernel"


def _window_map(op, x_shape, kernel) -> np.ndarray:
    """im2col as an index map: flat positions in x of every column entry of
    ``op.columns(x, kernel)`` (N, G, C/G*kh*kw, Ho*Wo), -1 where padding is read."""
    positions = np.arange(1, size_of(x_shape) + 1, dtype=np.int64).reshape(x_shape)
    return np.ascontiguousarray(op.columns(positions, kernel)) - 1


def gather_fn(low: Lowering, where: np.ndarray, dtype, fill=0):
    """``f(src) -> out`` of ``where``'s shape: src.flat[where], ``fill`` where < 0."""
    shape, n = where.shape, where.size
    device_where = cuda.to_device(where.reshape(-1))
    value = np.dtype(dtype).type(fill)
    low.kernels.setdefault("gather_fill", "")

    def run(src):
        out = low.empty(shape, dtype)
        if n:
            low.launch(ck.gather_fill, ck.blocks_for(n), ck.THREADS, flat(out), flat(src),
                       device_where, n, value)
        return out
    return run


def rule_conv(low: Lowering, t):
    """conv2d and its two adjoints by im2col (a gather through a compile-time index map)
    and the tiled matmul; col2im is an atomic scatter-add through the same map."""
    op, dtype = t.op, t.dtype
    if any(i.dtype != dtype for i in t.inputs):
        unsupported("mixed-dtype convolution")
    k = low.slot[id(t)]
    a, b = (low.slot[id(i)] for i in t.inputs)
    gr = op.groups
    if isinstance(op, Conv2d):                               # x, w
        x, w = t.inputs
        cols = gather_fn(low, _window_map(op, x.shape, w.shape[2:]), dtype)
        wm_shape = (gr, w.shape[0] // gr, size_of(w.shape[1:]))
        mm = matmul_fn(low, wm_shape, cols_shape(op, x.shape, w.shape), dtype)

        def run(env):
            env[k] = mm(env[b].reshape(wm_shape), cols(env[a])).reshape(t.shape)
    elif isinstance(op, Conv2dInputGrad):                    # g, w -> dx (col2im)
        g, w = t.inputs
        where = _window_map(op, t.shape, w.shape[2:])
        wm_shape = (gr, w.shape[0] // gr, size_of(w.shape[1:]))
        rows_shape = (g.shape[0], gr, g.shape[1] // gr, size_of(g.shape[2:]))
        mm = matmul_fn(low, (gr, wm_shape[2], wm_shape[1]), rows_shape, dtype, trans_a=True)
        device_where = cuda.to_device(where.reshape(-1))
        n = where.size
        low.kernels.setdefault("scatter_add", "")

        def run(env):
            cols = mm(env[b].reshape(wm_shape), env[a].reshape(rows_shape))
            out = low.zeros(t.shape, dtype)
            if n:
                low.launch(ck.scatter_add, ck.blocks_for(n), ck.THREADS, flat(out),
                           flat(cols), device_where, n)
            env[k] = out
    else:                                                    # Conv2dWeightGrad: x, g -> dw
        x, g = t.inputs
        where = _window_map(op, x.shape, op.kernel)
        cols = gather_fn(low, where, dtype)                  # (N, G, CgK, P)
        rows_shape = (g.shape[0], gr, g.shape[1] // gr, size_of(g.shape[2:]))
        ct_shape = (where.shape[0], gr, where.shape[3], where.shape[2])
        mm = matmul_fn(low, rows_shape, ct_shape, dtype, trans_b=True)  # (N, G, O/G, CgK)
        summed = low.rows_fn("sum", rows_shape[:3] + (where.shape[2],), (0,), dtype,
                             dtype)[0]

        def run(env):
            per_sample = mm(env[b].reshape(rows_shape), cols(env[a]))
            env[k] = summed(per_sample).reshape(t.shape)
    return run, low.line(t, "im2col_gemm"), "kernel"


def cols_shape(op, x_shape, w_shape) -> tuple:
    ho, wo = op.out_hw(x_shape[2:], w_shape[2:])
    return (x_shape[0], op.groups, size_of(w_shape[1:]), ho * wo)


def _pool_windows(op, x_shape) -> np.ndarray:
    """(N, C, Ho, Wo, kh*kw): the flat position in x of each window's entries, -1 where
    the window reads padding."""
    positions = np.arange(1, size_of(x_shape) + 1, dtype=np.int64).reshape(x_shape)
    return np.ascontiguousarray(np.stack(op.views(positions, 0), axis=-1)) - 1


def rule_max_pool(low: Lowering, t):
    """max pooling: gather each window into a row (padding reads -inf), row max."""
    (x,) = t.inputs
    where = _pool_windows(t.op, x.shape)
    windows = gather_fn(low, where, t.dtype, fill=-np.inf)
    if x.dtype != t.dtype:
        unsupported("max_pool2d with a dtype change")
    row_max = low.rows_fn("max", where.shape, (4,), t.dtype, t.dtype)[0]
    i, k = low.slot[id(x)], low.slot[id(t)]

    def run(env):
        env[k] = row_max(windows(env[i])).reshape(t.shape)
    return run, low.line(t, "window_gather_row_max"), "kernel"


def rule_max_pool_grad(low: Lowering, t):
    """The adjoint of max pooling: each window's upstream value added (atomically) at the
    window's first maximum in x."""
    x, g = t.inputs
    if x.dtype != t.dtype or g.dtype != t.dtype or t.dtype not in ("float32", "float64"):
        unsupported("max_pool2d_grad with a dtype change")
    where = _pool_windows(t.op, x.shape)
    device_where = cuda.to_device(where.reshape(-1))
    k, windows = where.shape[-1], g.size
    ix, ig, slot = low.slot[id(x)], low.slot[id(g)], low.slot[id(t)]
    low.kernels.setdefault("max_pool_grad", "")

    def run(env):
        out = low.zeros(t.shape, t.dtype)
        if windows:
            low.launch(ck.max_pool_grad, ck.blocks_for(windows), ck.THREADS, flat(out),
                       flat(env[ix]), flat(env[ig]), device_where, k, windows)
        env[slot] = out
    return run, low.line(t, "max_pool_grad"), "kernel"


def _view(low: Lowering, t):
    (x,) = t.inputs
    i, k = low.slot[id(x)], low.slot[id(t)]
    shape = t.shape
    if x.dtype != t.dtype:  # a reduction over no axes that changes dtype (sum of bool)
        copy = low.copy_fn(shape, contiguous_strides(shape))

        def convert(env):
            out = low.empty(shape, t.dtype)
            copy(flat(out), flat(env[i]))
            env[k] = out
        return convert, low.line(t, "convert"), "kernel"

    def run(env):
        env[k] = env[i].reshape(shape)
    return run, low.line(t, "view"), "view"


def rule_reshape(low: Lowering, t):
    return _view(low, t)


def _strided(low: Lowering, t, name, src_strides, src_off=0):
    (x,) = t.inputs
    copy = low.copy_fn(t.shape, src_strides, src_off)
    i, k = low.slot[id(x)], low.slot[id(t)]

    def run(env):
        out = low.empty(t.shape, t.dtype)
        copy(flat(out), flat(env[i]))
        env[k] = out
    return run, low.line(t, name), "kernel"


def rule_transpose(low: Lowering, t):
    if read_transposed(low, t):  # its matmuls read the input as stored
        i, k = low.slot[id(t.inputs[0])], low.slot[id(t)]

        def run(env):
            env[k] = env[i]
        return run, low.line(t, "view") + " [read transposed by its matmuls]", "view"
    xs = contiguous_strides(t.inputs[0].shape)
    return _strided(low, t, "strided_copy", tuple(xs[p] for p in t.op.perm))


def rule_broadcast(low: Lowering, t):
    x = t.inputs[0]
    xs = contiguous_strides(x.shape)
    lead = len(t.shape) - x.ndim
    strides = (0,) * lead + tuple(s if d != 1 else 0 for s, d in zip(xs, x.shape))
    return _strided(low, t, "strided_copy", strides)


def rule_cast(low: Lowering, t):
    return _strided(low, t, "strided_copy", contiguous_strides(t.shape))


def rule_concat(low: Lowering, t):
    axis = t.op.axis % len(t.shape)
    out_strides = contiguous_strides(t.shape)
    copies, start = [], 0
    for x in t.inputs:
        copies.append((low.slot[id(x)], low.copy_fn(x.shape, contiguous_strides(x.shape),
                                                    0, out_strides, start * out_strides[axis])))
        start += x.shape[axis]
    k = low.slot[id(t)]

    def run(env):
        out = low.empty(t.shape, t.dtype)
        for i, copy in copies:
            copy(flat(out), flat(env[i]))
        env[k] = out
    return run, low.line(t, "strided_copy"), "kernel"


def _index_map(op: Index, shape) -> np.ndarray:
    """Flat source positions of ``x[index]`` for x of ``shape`` (compile time)."""
    return np.arange(size_of(shape), dtype=np.int64).reshape(shape)[op.numpy_index()]


def rule_index(low: Lowering, t):
    (x,) = t.inputs
    where = cuda.to_device(np.ascontiguousarray(_index_map(t.op, x.shape)).reshape(-1))
    n = t.size
    i, k = low.slot[id(x)], low.slot[id(t)]
    low.kernels.setdefault("gather", "")

    def run(env):
        out = low.empty(t.shape, t.dtype)
        if n:
            low.launch(ck.gather, ck.blocks_for(n), ck.THREADS, flat(out), flat(env[i]),
                       where, n)
        env[k] = out
    return run, low.line(t, "gather"), "kernel"


def rule_index_add(low: Lowering, t):
    (g,) = t.inputs
    if t.dtype not in ("float32", "float64", "int32", "int64"):
        unsupported("index_add of this dtype")
    where = np.ascontiguousarray(np.broadcast_to(_index_map(Index(t.op.index), t.op.target),
                                                 g.shape)).reshape(-1)
    where = cuda.to_device(where)
    n = g.size
    i, k = low.slot[id(g)], low.slot[id(t)]
    low.kernels.setdefault("scatter_add", "")

    def run(env):
        out = low.zeros(t.shape, t.dtype)
        if n:
            low.launch(ck.scatter_add, ck.blocks_for(n), ck.THREADS, flat(out),
                       flat(env[i]), where, n)
        env[k] = out
    return run, low.line(t, "scatter_add"), "kernel"


def rule_take(low: Lowering, t):
    x, idx = t.inputs
    rows, inner, n = x.shape[0], size_of(x.shape[1:]), t.size
    ix, ii, k = low.slot[id(x)], low.slot[id(idx)], low.slot[id(t)]
    low.kernels.setdefault("take_rows", "")

    def run(env):
        out = low.empty(t.shape, t.dtype)
        if n:
            bad = low.zeros((1,), "int32")  # set to 1 on an index out of range
            low.launch(ck.take_rows, ck.blocks_for(n), ck.THREADS, flat(out), flat(env[ix]),
                       flat(env[ii]), inner, rows, n, bad)
            low.check(lambda: _check_bad(bad, t, rows, low.printed))
        env[k] = out
    return run, low.line(t, "take_rows"), "kernel"


def rule_take_add(low: Lowering, t):
    g, idx = t.inputs
    if t.dtype not in ("float32", "float64", "int32", "int64"):
        unsupported("take_add of this dtype")
    rows, inner, n = t.shape[0], size_of(t.shape[1:]), g.size
    ig, ii, k = low.slot[id(g)], low.slot[id(idx)], low.slot[id(t)]
    low.kernels.setdefault("take_add_rows", "")

    def run(env):
        out = low.zeros(t.shape, t.dtype)
        if n:
            bad = low.zeros((1,), "int32")  # set to 1 on an index out of range
            low.launch(ck.take_add_rows, ck.blocks_for(n), ck.THREADS, flat(out),
                       flat(env[ig]), flat(env[ii]), inner, rows, n, bad)
            low.check(lambda: _check_bad(bad, t, rows, low.printed))
        env[k] = out
    return run, low.line(t, "take_add_rows"), "kernel"


def _check_bad(bad, t, rows, printed):
    if bad.copy_to_host()[0]:
        raise failed(t, printed, f"an index is out of range for axis 0 of size {rows}")


def rule_identity(low: Lowering, t):
    """stop_gradient: its operand itself."""
    i, k = low.slot[id(t.inputs[0])], low.slot[id(t)]

    def run(env):
        env[k] = env[i]
    return run, low.line(t, "view"), "view"


RULES = (
    (StopGradient, rule_identity),
    (Elementwise, rule_elementwise), (Fused, rule_fused), (Reduce, rule_reduce),
    (LogSumExp, rule_logsumexp), (Softmax, rule_softmax), (LogSoftmax, rule_softmax),
    (MatMul, rule_matmul), (Reshape, rule_reshape), (Transpose, rule_transpose),
    (BroadcastTo, rule_broadcast), (Cast, rule_cast), (Concat, rule_concat),
    (Index, rule_index), (IndexAdd, rule_index_add), (Take, rule_take),
    (TakeAdd, rule_take_add), (Conv2d, rule_conv), (Conv2dInputGrad, rule_conv),
    (Conv2dWeightGrad, rule_conv), (MaxPool2d, rule_max_pool),
    (MaxPool2dGrad, rule_max_pool_grad),
)
