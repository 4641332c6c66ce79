"""The ATen ops ``gc.from_torch`` imports: one short rule per op in :data:`ATEN`, each
``(importer, node, *args, **kwargs) -> graphc value(s)`` built from graphc's public
functions (so none needs a derivative rule of its own), and the metadata of the exported
nodes the rules read (:func:`_meta`) or name in errors (:func:`_unsupported`).
"""

from __future__ import annotations

import numpy as np

from .. import functions as F
from .. import nn_functions as NF
from ..errors import UnsupportedOpError
from ..graph import Graph
from ..inputs import constant
from ..interpreter import evaluate_graph
from ..ir import Tensor, located
from ..scan import stop_gradient

_DTYPES = {"torch.float32": "float32", "torch.float64": "float64", "torch.int64": "int64",
           "torch.int32": "int32", "torch.bool": "bool"}


def _meta(node, index=None) -> tuple[tuple[int, ...], str]:
    """Shape and graphc dtype of ``node``'s result (or of its output ``index``)."""
    val = node.meta["val"]
    val = val[index] if index is not None else val
    dtype = _DTYPES.get(str(val.dtype))
    if dtype is None:
        _unsupported(node, f"dtype {val.dtype}: graphc has no such dtype")
    return tuple(int(d) for d in val.shape), dtype


def _node_module(node) -> tuple[str, str]:
    """The path and type name of the innermost nn.Module a node was made in."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    path, kind = list(stack.values())[-1]
    return path, kind if isinstance(kind, str) else getattr(kind, "__qualname__", str(kind))


def _unsupported(node, detail: str | None = None):
    """Raise the import-time error naming the op, the node (and its module), why (for an
    op supported in other forms) and the supported set."""
    path, kind = _node_module(node)
    where = f" in module {path!r} ({kind})" if path else \
        f" in {kind.rsplit('.', 1)[-1]}" if kind else ""  # the root module: its class
    why = f" ({detail})" if detail else ""
    raise UnsupportedOpError(located(
        f"ATen op {node.target} (node {node.name!r}{where}) is not supported by "
        f"gc.from_torch{why}; the supported ops are: {', '.join(sorted(ATEN))}"))


# ---------------------------------------------------------------------------------------
# The ATen ops: one rule each, (importer, node, *args, **kwargs) -> graphc value(s)


def _pair(v) -> tuple[int, int]:
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return (int(v[0]), int(v[-1]))


def _convolution(im, node, x, w, b, stride, padding, dilation, transposed, output_padding,
                 groups):
    if x.ndim == 3 and not transposed:
        return NF.conv1d(x, w, stride[0], padding[0], dilation=dilation[0], groups=groups,
                         bias=b)
    if x.ndim != 4:
        _unsupported(node, "only 1-D and 2-D convolutions, 2-D if transposed")
    if transposed:
        return NF.conv_transpose2d(x, w, _pair(stride), _pair(padding), _pair(output_padding),
                                   groups, _pair(dilation), bias=b)
    return NF.conv2d(x, w, _pair(stride), _pair(padding), dilation=_pair(dilation),
                     groups=groups, bias=b)


def _bn_eval(im, node, x, w, b, mean, var, momentum, eps):
    return (NF.batch_norm(x, w, b, mean, var, training=False, eps=eps), None, None)


def _bn(im, node, x, w, b, mean, var, training, momentum, eps):
    """_native_batch_norm_legit(_functional): batch statistics in training; the running
    statistics it also returns are not imported (graphs are pure)."""
    if not training:
        return _bn_eval(im, node, x, w, b, mean, var, momentum, eps) + (None, None)
    return (NF.batch_norm(x, w, b, training=True, eps=eps), None, None, None, None)


def _bn_no_stats(im, node, x, w, b, training, momentum, eps):
    return _bn(im, node, x, w, b, None, None, True, momentum, eps)


def _layer_norm(im, node, x, shape, w=None, b=None, eps=1e-5):
    return (NF.layer_norm(x, w, b, tuple(range(-len(shape), 0)), eps), None, None)


def _ceil_extra(node, x, kernel, stride, padding):
    """Rows and columns a ceil_mode pooling reads past the floor-mode end."""
    val = node.meta["val"]
    out = (val[0] if isinstance(val, (tuple, list)) else val).shape[-2:]
    return [(o - 1) * s + k - (n + 2 * p) for o, s, k, n, p in
            zip(out, stride, kernel, x.shape[-2:], padding)]


def unbatched(rule):
    """``rule`` of a 2-D pooling, which also takes one (C, H, W) sample, as torch does:
    pooled as (1, C, H, W) and the batch axis dropped again."""
    def pool(im, node, x, *args, **kwargs):
        if x.ndim != 3:
            return rule(im, node, x, *args, **kwargs)
        out = rule(im, node, F.reshape(x, (1, *x.shape)), *args, **kwargs)
        if isinstance(out, tuple):
            return tuple(o if o is None else F.reshape(o, o.shape[1:]) for o in out)
        return F.reshape(out, out.shape[1:])
    return pool


def _max_pool(im, node, x, kernel, stride=(), padding=0, dilation=1, ceil_mode=False):
    kernel, padding = _pair(kernel), _pair(padding)
    stride = _pair(stride) if stride else kernel
    if _pair(dilation) != (1, 1):
        _unsupported(node, "dilation > 1")
    for axis, extra in zip((2, 3), _ceil_extra(node, x, kernel, stride, padding)):
        if extra > 0:  # ceil_mode: the last window reaches past the end; -inf fills it
            fill = list(x.shape)
            fill[axis] = extra
            x = F.concat([x, constant(np.full(fill, -np.inf, x.dtype))], axis)
    return NF.max_pool2d(x, kernel, stride, padding), None


def _avg_pool(im, node, x, kernel, stride=(), padding=0, ceil_mode=False,
              count_include_pad=True, divisor_override=None):
    kernel, padding = _pair(kernel), _pair(padding)
    stride = _pair(stride) if stride else kernel
    if divisor_override is not None:
        _unsupported(node, "divisor_override")
    if any(e > 0 for e in _ceil_extra(node, x, kernel, stride, padding)):
        _unsupported(node, "ceil_mode with windows past the end")
    return NF.avg_pool2d(x, kernel, stride, padding, count_include_pad)


def _adaptive_matrix(n: int, m: int, dtype) -> np.ndarray:
    """(m, n): row i averages PyTorch's adaptive window [floor(i n / m), ceil((i+1) n / m))."""
    p = np.zeros((m, n), dtype)
    for i in range(m):
        lo, hi = (i * n) // m, -(-(i + 1) * n // m)
        p[i, lo:hi] = 1.0 / (hi - lo)
    return p


def _adaptive_avg_pool(im, node, x, size):
    (oh, ow), (h, w) = _pair(size), x.shape[2:]
    if (oh, ow) == (h, w):
        return x
    if (oh, ow) == (1, 1):
        return F.mean(x, (2, 3), keepdims=True)
    rows = F.matmul(constant(_adaptive_matrix(h, oh, x.dtype)), x)
    return F.matmul(rows, constant(_adaptive_matrix(w, ow, x.dtype).T.copy()))


def _round(im, node, x, decimals=0):
    """``torch.round(x, decimals=d)`` as torch computes it: round(x * 10^d) / 10^d, and
    round(x / 10^-d) * 10^-d for d < 0."""
    if not decimals:
        return F.round(x)
    scale = 10.0 ** abs(decimals)
    return F.round(x * scale) / scale if decimals > 0 else F.round(x / scale) * scale


def _addmm(im, node, bias, a, b, beta=1, alpha=1):
    y = F.matmul(a, b)
    y = y * alpha if alpha != 1 else y
    return y + (bias * beta if beta != 1 else bias)


def _reshape(im, node, x, *_, **__):
    return F.reshape(x, _meta(node)[0])


def _same(im, node, x, *_, **__):
    return x


def _to_copy(im, node, x, **_):
    return F.cast(x, _meta(node)[1])


def _slice(im, node, x, dim=0, start=None, end=None, step=1):
    dim %= x.ndim
    start, stop, step = slice(start, end, step).indices(x.shape[dim])
    return x[(slice(None),) * dim + (slice(start, stop, step),)]


def _select(im, node, x, dim, index):
    return x[(slice(None),) * (dim % x.ndim) + (index,)]


def _split_with_sizes(im, node, x, sizes, dim=0):
    starts = np.cumsum([0] + list(sizes))
    return tuple(_slice(im, node, x, dim, int(a), int(b)) for a, b in zip(starts, starts[1:]))


def _split(im, node, x, size, dim=0):
    n = x.shape[dim % x.ndim]
    return _split_with_sizes(im, node, x, [min(size, n - a) for a in range(0, n, size)], dim)


def _reduction(fn, accumulates=False):
    def rule(im, node, x, dim=None, keepdim=False, **_):
        dim = tuple(dim) if isinstance(dim, (list, tuple)) else dim
        if accumulates:
            x = _as_result(node, x)
        return fn(x, dim if dim not in ((), []) else None, keepdim)
    return rule


def _as_result(node, x):
    """``x`` in the dtype of ``node``'s result, as torch's sum, mean, prod and cumsum
    compute: in their ``dtype=`` (float32 summed in float64 was summed in float32) and an
    integer sum in int64 (an int32 sum wrapped at 2**31)."""
    dtype = _meta(node)[1]
    return x if dtype == x.dtype else F.cast(x, dtype)


def _var(im, node, x, dim=None, *, correction=None, keepdim=False):
    dim = tuple(dim) if dim else None
    return F.var(x, dim, 1 if correction is None else correction, keepdim)


def _clamp(im, node, x, low=None, high=None):
    """clamp.default as gc.clip; clamp.Tensor (tensor bounds) as where: gradient 1 on the
    closed interval, as PyTorch's; NaN stays NaN."""
    if not isinstance(low, Tensor) and not isinstance(high, Tensor):
        if x.dtype in ("int32", "int64") and all(isinstance(b, (int, type(None)))
                                                 for b in (low, high)):
            # an integer tensor stays one (clip is float: 16777217 came back 16777216.0)
            x = x if low is None else F.maximum(x, low)
            return x if high is None else F.minimum(x, high)
        return F.clip(x, low, high)
    if low is not None:
        x = F.where(F.less(x, low), low, x)
    return F.where(F.greater(x, high), high, x) if high is not None else x


def _pow(im, node, x, e):
    """pow; an integer tensor to a non-negative integer power as products, so that it stays
    an integer as torch's (gc.power is float: 300001 ** 3 came back 2.7000271e16)."""
    if isinstance(x, Tensor) and x.dtype in ("int32", "int64") and type(e) is int and e >= 0:
        result, square = None, x
        while e:
            if e & 1:
                result = square if result is None else result * square
            e >>= 1
            square = square * square if e else square
        return result if result is not None else x * 0 + 1
    return F.power(x, e)


def _elu(im, node, x, alpha=1.0, scale=1.0, input_scale=1.0):
    """elu, and selu/celu as PyTorch decomposes them: scale * elu(x) with the negative
    side alpha * (exp(input_scale * x) - 1)."""
    if scale == input_scale == 1:
        return F.elu(x, alpha)
    return F.where(F.greater(x, 0.0), x * scale,
                   F.expm1(x * input_scale) * (alpha * scale))


def _binary(fn):
    def rule(im, node, a, b, alpha=1, rounding_mode=None):
        if rounding_mode is not None:
            return _rounded(node, a, b, rounding_mode, "quotient")
        return fn(a, b * alpha if alpha != 1 else b)
    return rule


_FOLD = {("floor", "quotient"): np.floor_divide, ("floor", "remainder"): np.mod,
         ("trunc", "remainder"): np.fmod,
         ("trunc", "quotient"): lambda p, q: np.trunc(p / q) if p.dtype.kind == "f" else
         np.sign(p) * np.sign(q) * (np.abs(p) // np.abs(q))}


def _rounded(node, a, b, mode: str, part: str):
    """div with rounding_mode, remainder (floor) and fmod (trunc): folded with NumPy when
    both operands are constants (index arithmetic: roll's positions); else gc.remainder /
    gc.fmod, a float quotient rounded, an integer one (a - r) / b, exact below 2**53."""
    if mode not in ("floor", "trunc"):
        _unsupported(node, f"rounding_mode={mode!r}")
    p, q = (np.asarray(t) if not isinstance(t, Tensor) else _static(t) for t in (a, b))
    dtype = _meta(node)[1]
    if p is not None and q is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            return constant(np.asarray(_FOLD[mode, part](p, q)).astype(dtype))
    r = F.remainder(a, b) if mode == "floor" else F.fmod(a, b)
    if part == "remainder":
        return r
    if dtype in ("float32", "float64"):
        return (F.floor if mode == "floor" else F.trunc)(F.div(a, b))
    return F.cast(F.div(F.cast(a - r, "float64"), F.cast(b, "float64")), dtype)


def _unary(fn):
    return lambda im, node, x, *args, **kwargs: fn(x, *args, **kwargs)


def _logical_not(im, node, x):
    """``x == 0`` (bool): torch.logical_not, and bitwise_not of a bool mask (``~mask``)."""
    if node.target.__name__.startswith("bitwise") and x.dtype != "bool":
        _unsupported(node, f"bitwise_not of {x.dtype}")
    return F.equal(x, constant(0, dtype=x.dtype) if x.dtype != "bool" else constant(False))


def _full(im, node, size, value, **_):
    shape, dtype = _meta(node)
    return constant(np.full(shape, value, dtype))


def _embedding(im, node, table, indices, padding_idx=-1, scale_grad_by_freq=False,
               sparse=False):
    """Rows of the table; the padding row gets no gradient (its forward value is the
    table's own, picked by ``where`` from a stopped copy)."""
    if scale_grad_by_freq:
        _unsupported(node, "scale_grad_by_freq=True, gradients divided by each index's "
                           "count in the batch")
    if padding_idx is not None and padding_idx >= 0:
        rows = np.zeros((table.shape[0], 1), bool)
        rows[padding_idx] = True
        table = F.where(constant(rows), stop_gradient(table), table)
    return NF.embedding(indices, table)


def _dropout(im, node, x, p, train):
    """Training-mode dropout draws graphc's own mask (seeded per node), not torch's."""
    im.dropouts += 1
    return NF.dropout(x, p, training=bool(train), seed=im.dropouts), None


def _hardswish(im, node, x):
    """x (x + 3) / 6 between -3 and 3, 0 below, x above: PyTorch's gradient at the kinks (0
    at -3, 1 at 3), which x * relu6(x + 3) / 6 does not give."""
    return F.where(x <= -3.0, 0.0, F.where(x >= 3.0, x, x * (x + 3.0) / 6.0))


def _hardsigmoid(im, node, x):
    """(x + 3) / 6 strictly between -3 and 3, else 0 or 1 (gradient 0 at both kinks)."""
    return F.where(x <= -3.0, 0.0, F.where(x >= 3.0, 1.0, (x + 3.0) / 6.0))




def _static(t) -> np.ndarray | None:
    """The value of ``t`` when it depends on no input or param (a constant mask or index
    made inside the module), else None."""
    if not isinstance(t, Tensor) or t.leaves:
        return None
    return evaluate_graph(Graph([t]), {})[0]


ATEN = {
    "aten.convolution": _convolution,
    "aten._native_batch_norm_legit_no_training": _bn_eval,
    "aten._native_batch_norm_legit_functional": _bn,
    "aten._native_batch_norm_legit": lambda im, node, *a: (
        _bn_no_stats(im, node, *a) if len(a) == 6 else _bn(im, node, *a)),
    "aten.native_layer_norm": _layer_norm,
    "aten.max_pool2d_with_indices": unbatched(_max_pool),
    "aten.avg_pool2d": unbatched(_avg_pool),
    "aten._adaptive_avg_pool2d": unbatched(_adaptive_avg_pool),
    "aten.addmm": _addmm,
    "aten.mm": _unary(F.matmul),
    "aten.bmm": _unary(F.matmul),
    "aten.view": _reshape,
    "aten._unsafe_view": _reshape,
    "aten.reshape": _reshape,
    "aten.squeeze": _reshape,
    "aten.unsqueeze": _reshape,
    "aten.permute": _unary(F.transpose),
    "aten.expand": lambda im, node, x, *_: F.broadcast_to(x, _meta(node)[0]),
    "aten.clone": _same,
    "aten.alias": _same,
    "graphc.stop_gradient": lambda im, node, x: stop_gradient(x),  # .detach(), no_grad
    "aten._to_copy": _to_copy,
    "aten.cat": lambda im, node, xs, dim=0: F.concat(xs, dim),
    "aten.slice": _slice,
    "aten.select": _select,
    "aten.split_with_sizes": _split_with_sizes,
    "aten.split": _split,
    "aten.mean": _reduction(F.mean, accumulates=True),
    "aten.prod": _reduction(F.prod, accumulates=True),
    "aten.var": _var,
    "aten.argmax": _reduction(F.argmax),
    "aten.argmin": _reduction(F.argmin),
    "aten.any": _reduction(F.any),
    "aten.all": _reduction(F.all),
    "aten.cumsum": lambda im, node, x, dim, **_: F.cumsum(_as_result(node, x), dim),
    "aten.flip": lambda im, node, x, dims: F.flip(x, tuple(dims)),
    "aten.sum": _reduction(F.sum, accumulates=True),
    "aten.amax": _reduction(F.max),
    "aten.amin": _reduction(F.min),
    "aten._softmax": lambda im, node, x, dim, half=False: F.softmax(x, dim),
    "aten._log_softmax": lambda im, node, x, dim, half=False: F.log_softmax(x, dim),
    "aten.relu": _unary(F.relu),
    "aten.sigmoid": _unary(F.sigmoid),
    "aten.tanh": _unary(F.tanh),
    "aten.exp": _unary(F.exp),
    "aten.log": _unary(F.log),
    "aten.sqrt": _unary(F.sqrt),
    "aten.rsqrt": _unary(F.rsqrt),
    "aten.neg": _unary(F.neg),
    "aten.abs": _unary(F.abs),
    "aten.reciprocal": _unary(F.reciprocal),
    "aten.sin": _unary(F.sin),
    "aten.cos": _unary(F.cos),
    "aten.log1p": _unary(F.log1p),
    "aten.expm1": _unary(F.expm1),
    "aten.erf": _unary(F.erf),
    "aten.sign": _unary(F.sign),
    "aten.floor": _unary(F.floor),
    "aten.ceil": _unary(F.ceil),
    "aten.round": _round,
    "aten.trunc": _unary(F.trunc),
    "aten.tan": _unary(F.tan),
    "aten.asin": _unary(F.asin),
    "aten.acos": _unary(F.acos),
    "aten.atan": _unary(F.atan),
    "aten.atan2": _unary(F.atan2),
    "aten.sinh": _unary(F.sinh),
    "aten.cosh": _unary(F.cosh),
    "aten.asinh": _unary(F.asinh),
    "aten.acosh": _unary(F.acosh),
    "aten.atanh": _unary(F.atanh),
    "aten.log2": _unary(F.log2),
    "aten.log10": _unary(F.log10),
    "aten.exp2": _unary(F.exp2),
    "aten.gelu": lambda im, node, x, approximate="none": F.gelu(x, approximate),
    "aten.leaky_relu": _unary(F.leaky_relu),
    "aten.elu": _elu,
    "aten.hardtanh": _unary(F.hardtanh),
    "aten.clamp": _clamp,
    "aten.add": _binary(F.add),
    "aten.sub": _binary(F.sub),
    "aten.mul": _binary(F.mul),
    "aten.div": _binary(F.div),
    "aten.pow": _pow,
    "aten.maximum": _unary(F.maximum),
    "aten.minimum": _unary(F.minimum),
    "aten.where": _unary(F.where),
    "aten.eq": _unary(F.equal),
    "aten.logical_not": _logical_not,
    "aten.bitwise_not": _logical_not,
    "aten.ne": _unary(F.not_equal),
    "aten.lt": _unary(F.less),
    "aten.le": _unary(F.less_equal),
    "aten.gt": _unary(F.greater),
    "aten.ge": _unary(F.greater_equal),
    "aten.full": _full,
    "aten.full_like": lambda im, node, x, value, **_: _full(im, node, None, value),
    "aten.scalar_tensor": lambda im, node, value, **_: _full(im, node, (), value),
    "aten.native_dropout": _dropout,
    "aten.embedding": _embedding,
    "aten.hardswish": _hardswish,
    "aten.hardsigmoid": _hardsigmoid,
    "aten.softplus": lambda im, node, x, beta=1.0, threshold=20.0: F.softplus(
        x, beta=beta, threshold=threshold),
    "aten.mish": _unary(F.mish),
    "aten.selu": _unary(F.selu),
    "aten.celu": _unary(F.celu),
    "aten.var_mean": lambda im, node, x, dim=None, **kw: (
        _var(im, node, x, dim, **kw), F.mean(x, tuple(dim) if dim else None,
                                             kw.get("keepdim", False))),
    "aten.remainder": lambda im, node, a, b: _rounded(node, a, b, "floor", "remainder"),
    "aten.fmod": lambda im, node, a, b: _rounded(node, a, b, "trunc", "remainder"),
}
