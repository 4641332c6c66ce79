"""The ONNX ops ``gc.from_onnx`` imports, each a function from one ONNX node to graphc
tensors built with the public functions (so none needs a derivative rule of its own).

``SUPPORTED`` maps each ONNX op type (default domain) to its function; a function gets a
:class:`Call` (the node, its attributes, its inputs as tensors or constants) and returns
the node's outputs.  Semantics follow the ONNX operator specification; the ONNX backend
test suite checks them (tests/test_onnx_conformance.py).
"""

from __future__ import annotations

import math

import numpy as np

from .. import dtypes
from .. import functions as F
from .. import nn_functions as nf
from ..errors import UnsupportedOpError
from ..inputs import constant
from ..ir import Tensor, located
from .onnx_dtypes import graphc_dtype, onnx_dtype

SUPPORTED: dict = {}


def onnx_op(*op_types):
    """Register the decorated function as the import of ``op_types``."""
    def register(fn):
        for op_type in op_types:
            SUPPORTED[op_type] = fn
        return fn
    return register


class Call:
    """One ONNX node being imported: its attributes and its inputs."""

    def __init__(self, importer, node, attrs: dict):
        self.importer, self.node, self.attrs = importer, node, attrs
        self.op_type, self.opset = node.op_type, importer.opset

    def attr(self, name, default=None):
        value = self.attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    def has(self, i: int) -> bool:
        return i < len(self.node.input) and bool(self.node.input[i])

    def x(self, i: int = 0) -> Tensor | None:
        """Input ``i`` as a tensor (None when the optional input is absent)."""
        return self.importer.tensor(self.node.input[i]) if self.has(i) else None

    def xs(self) -> list[Tensor]:
        return [self.importer.tensor(n) for n in self.node.input if n]

    def const(self, i: int, default=None):
        """Input ``i`` as a constant NumPy array (``default`` when absent)."""
        if not self.has(i):
            return default
        return self.importer.static(self.node.input[i], self.describe())

    def ints(self, i: int, attr: str, default=None):
        """An int list given as attribute ``attr`` (older opsets) or as input ``i``."""
        if attr in self.attrs:
            return [int(v) for v in self.attrs[attr]]
        value = self.const(i)
        return default if value is None else [int(v) for v in np.asarray(value).ravel()]

    def describe(self) -> str:
        return f"ONNX op {self.op_type!r} (node {self.node.name or self.node.output[0]!r})"

    def unsupported(self, detail: str):
        raise UnsupportedOpError(located(f"{self.describe()}: {detail} is not supported by "
                                         "gc.from_onnx"))


def _axis(axis: int, ndim: int) -> int:
    return int(axis) % ndim if ndim else 0


# ---------------------------------------------------------------------------------------
# Elementwise

_UNARY = {"Relu": F.relu, "Sigmoid": F.sigmoid, "Tanh": F.tanh, "Exp": F.exp, "Log": F.log,
          "Sqrt": F.sqrt, "Abs": F.abs, "Neg": F.neg, "Reciprocal": F.reciprocal,
          "Sin": F.sin, "Cos": F.cos, "Softplus": F.softplus, "Softsign": F.softsign,
          "Tan": F.tan, "Asin": F.asin, "Acos": F.acos, "Atan": F.atan, "Sinh": F.sinh,
          "Cosh": F.cosh, "Asinh": F.asinh, "Acosh": F.acosh, "Atanh": F.atanh, "Erf": F.erf,
          "Sign": F.sign, "Floor": F.floor, "Ceil": F.ceil, "Round": F.round, "Mish": F.mish}
_BINARY = {"Add": F.add, "Sub": F.sub, "Mul": F.mul, "Div": F.div, "Pow": F.power,
           "Equal": F.equal, "Less": F.less, "LessOrEqual": F.less_equal,
           "Greater": F.greater, "GreaterOrEqual": F.greater_equal}
_VARIADIC = {"Sum": F.add, "Max": F.maximum, "Min": F.minimum, "Mean": F.add}


@onnx_op(*_UNARY)
def _unary(c: Call):
    return _UNARY[c.op_type](c.x(0))


@onnx_op(*_BINARY)
def _binary(c: Call):
    a, b = c.x(0), c.x(1)
    if c.op_type == "Div" and a.dtype in dtypes.INTS:
        if a.leaves or b.leaves:
            c.unsupported("integer division of non-constant tensors")
        p, q = c.const(0), c.const(1)  # shape arithmetic: fold it, truncating as ONNX
        return constant((np.sign(p) * np.sign(q) * (np.abs(p) // np.abs(q))).astype(p.dtype))
    return _BINARY[c.op_type](a, b)


@onnx_op(*_VARIADIC)
def _variadic(c: Call):
    xs = c.xs()
    out = xs[0]
    for t in xs[1:]:
        out = _VARIADIC[c.op_type](out, t)
    return out / len(xs) if c.op_type == "Mean" and len(xs) > 1 else out


@onnx_op("Identity")
def _identity(c: Call):
    return c.x(0)


@onnx_op("Where")
def _where(c: Call):
    return F.where(c.x(0), c.x(1), c.x(2))


@onnx_op("LeakyRelu")
def _leaky_relu(c: Call):
    return F.leaky_relu(c.x(0), alpha=c.attr("alpha", 0.01))


@onnx_op("Elu")
def _elu(c: Call):
    return F.elu(c.x(0), alpha=c.attr("alpha", 1.0))


@onnx_op("Selu")
def _selu(c: Call):
    alpha = c.attr("alpha", 1.67326319217681884765625)
    return c.attr("gamma", 1.05070102214813232421875) * F.elu(c.x(0), alpha=alpha)


@onnx_op("PRelu")
def _prelu(c: Call):
    x, slope = c.x(0), c.x(1)
    return F.where(x > 0, x, x * slope)  # slope broadcasts (ONNX: unidirectionally)


@onnx_op("Gelu")
def _gelu(c: Call):
    return F.gelu(c.x(0), approximate=c.attr("approximate", "none"))


def _clip(x, lo, hi):
    """x limited to [lo, hi] with gradient 1 inside and on the bounds (as torch.clamp)."""
    if lo is not None:
        x = F.where(x < lo, F.cast(lo, x.dtype), x)
    if hi is not None:
        x = F.where(x > hi, F.cast(hi, x.dtype), x)
    return x


@onnx_op("Clip")
def _clip_op(c: Call):
    x = c.x(0)
    if c.opset < 11:
        return _clip(x, c.attr("min"), c.attr("max"))
    return _clip(x, c.x(1), c.x(2))


@onnx_op("HardSigmoid")
def _hard_sigmoid(c: Call):
    x = c.x(0)
    return _clip(c.attr("alpha", 0.2) * x + c.attr("beta", 0.5), 0.0, 1.0)


@onnx_op("HardSwish")
def _hard_swish(c: Call):
    x = c.x(0)
    return x * _clip(x * (1 / 6) + 0.5, 0.0, 1.0)


@onnx_op("Celu")
def _celu(c: Call):
    return F.celu(c.x(0), alpha=c.attr("alpha", 1.0))


@onnx_op("Cast")
def _cast(c: Call):
    return F.cast(c.x(0), onnx_dtype(c.attr("to"), f"{c.describe()}: to"))


# ---------------------------------------------------------------------------------------
# Matrix products, convolution, pooling, normalisation


@onnx_op("MatMul")
def _matmul(c: Call):
    return F.matmul(c.x(0), c.x(1))


@onnx_op("Gemm")
def _gemm(c: Call):
    a, b, bias = c.x(0), c.x(1), c.x(2)
    a = F.transpose(a) if c.attr("transA", 0) else a
    b = F.transpose(b) if c.attr("transB", 0) else b
    alpha, beta = c.attr("alpha", 1.0), c.attr("beta", 1.0)
    y = F.matmul(a, b)
    y = y * alpha if alpha != 1.0 else y
    if bias is None or beta == 0.0:
        return y
    return y + (bias * beta if beta != 1.0 else bias)


def _spatial(c: Call, x: Tensor, kernel) -> tuple:
    """(strides, dilations, pads as (before, after) pairs) of a conv or pool node, the
    pads resolved from ``auto_pad``."""
    n = len(kernel)
    strides = tuple(c.attr("strides", [1] * n))
    dilations = tuple(c.attr("dilations", [1] * n))
    auto = c.attr("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations):
            total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
            small = total // 2
            pads.append((small, total - small) if auto == "SAME_UPPER" else
                        (total - small, small))
        return strides, dilations, tuple(pads)
    if auto == "VALID":
        return strides, dilations, ((0, 0),) * n
    flat = c.attr("pads", [0] * (2 * n))
    return strides, dilations, tuple(zip(flat[:n], flat[n:]))


def _as_2d(c: Call, x: Tensor) -> Tensor:
    """A 1-D (N, C, L) operand as (N, C, 1, L); 2-D ones as they are."""
    if x.ndim == 3:
        return F.reshape(x, x.shape[:2] + (1,) + x.shape[2:])
    if x.ndim != 4:
        c.unsupported(f"a {x.ndim - 2}-D input {x.shape}")
    return x


def _lift(values, one_d: bool, fill):
    return ((fill,) + tuple(values)) if one_d else tuple(values)


@onnx_op("Conv")
def _conv(c: Call):
    x, w, bias = c.x(0), c.x(1), c.x(2)
    one_d = x.ndim == 3
    strides, dilations, pads = _spatial(c, x, w.shape[2:])
    x2, w2 = _as_2d(c, x), _as_2d(c, w)
    strides, dilations = _lift(strides, one_d, 1), _lift(dilations, one_d, 1)
    pads = _lift(pads, one_d, (0, 0))
    if any(b != a for b, a in pads):
        x2, pads = F.pad(x2, ((0, 0), (0, 0)) + pads), ((0, 0), (0, 0))
    y = nf.conv2d(x2, w2, strides, tuple(b for b, _ in pads), dilation=dilations,
                  groups=c.attr("group", 1), bias=bias)
    return F.reshape(y, y.shape[:2] + y.shape[3:]) if one_d else y


@onnx_op("ConvTranspose")
def _conv_transpose(c: Call):
    x, w, bias = c.x(0), c.x(1), c.x(2)
    if x.ndim != 4:
        c.unsupported(f"a {x.ndim - 2}-D input {x.shape}")
    strides = tuple(c.attr("strides", [1, 1]))
    dilations = tuple(c.attr("dilations", [1, 1]))
    out_pad = tuple(c.attr("output_padding", [0, 0]))
    if "output_shape" in c.attrs or c.attr("auto_pad", "NOTSET") != "NOTSET":
        c.unsupported("output_shape or auto_pad")
    flat = c.attr("pads", [0] * 4)
    pads = tuple(zip(flat[:2], flat[2:]))
    y = nf.conv_transpose2d(x, w, strides, 0, out_pad, c.attr("group", 1), dilations, bias)
    # pads crop the full transposed convolution (asymmetric ones too)
    return y[(slice(None), slice(None)) + tuple(slice(b, y.shape[2 + i] - a)
                                                for i, (b, a) in enumerate(pads))] \
        if any(b or a for b, a in pads) else y


def _pool(c: Call, kind: str):
    x = c.x(0)
    kernel = tuple(c.attr("kernel_shape"))
    if len(c.node.output) > 1 and c.node.output[1]:
        c.unsupported("the Indices output")
    strides, dilations, pads = _spatial(c, x, kernel)
    if any(d != 1 for d in dilations):
        c.unsupported(f"dilations {dilations}")
    one_d = x.ndim == 3
    x2 = _as_2d(c, x)
    kernel, strides = _lift(kernel, one_d, 1), _lift(strides, one_d, 1)
    pads, ceil = _lift(pads, one_d, (0, 0)), bool(c.attr("ceil_mode", 0))
    if kind == "max" and not ceil and all(b == a and 2 * b <= k for (b, a), k in
                                          zip(pads, kernel)):
        y = nf.max_pool2d(x2, kernel, strides, tuple(b for b, _ in pads))
    else:
        y = nf.pool2d(kind, x2, kernel, strides, pads, ceil_mode=ceil,
                      count_include_pad=bool(c.attr("count_include_pad", 0)))
    return F.reshape(y, y.shape[:2] + y.shape[3:]) if one_d else y


@onnx_op("MaxPool")
def _max_pool(c: Call):
    return _pool(c, "max")


@onnx_op("AveragePool")
def _avg_pool(c: Call):
    return _pool(c, "avg")


@onnx_op("GlobalAveragePool")
def _global_avg_pool(c: Call):
    x = c.x(0)
    return F.mean(x, tuple(range(2, x.ndim)), keepdims=True)


@onnx_op("GlobalMaxPool")
def _global_max_pool(c: Call):
    x = c.x(0)
    return F.max(x, tuple(range(2, x.ndim)), keepdims=True)


@onnx_op("BatchNormalization")
def _batch_norm(c: Call):
    x, scale, bias, mean, var = (c.x(i) for i in range(5))
    eps = c.attr("epsilon", 1e-5)
    if not c.attr("training_mode", 0):
        return nf.batch_norm(x, scale, bias, mean, var, training=False, eps=eps)
    # training: batch statistics (biased variance, as ONNX); the running statistics are
    # outputs, input * momentum + batch statistic * (1 - momentum)
    axes = (0,) + tuple(range(2, x.ndim))
    m = F.mean(x, axes, keepdims=True)
    v = F.mean(F.square(x - m), axes, keepdims=True)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - m) / F.sqrt(v + eps) * F.reshape(scale, shape) + F.reshape(bias, shape)
    momentum = c.attr("momentum", 0.9)
    channels = (x.shape[1],)
    return (y, mean * momentum + F.reshape(m, channels) * (1 - momentum),
            var * momentum + F.reshape(v, channels) * (1 - momentum))


@onnx_op("LayerNormalization")
def _layer_normalization(c: Call):
    """Over the axes from ``axis`` on (as torch exports nn.LayerNorm, opset 17+); its
    optional outputs Mean and InvStdDev are the statistics it normalised with."""
    x = c.x(0)
    axes = tuple(range(_axis(c.attr("axis", -1), x.ndim), x.ndim))
    eps = c.attr("epsilon", 1e-5)
    m = F.mean(x, axes, keepdims=True)
    inv = F.reciprocal(F.sqrt(F.mean(F.square(x - m), axes, keepdims=True) + eps))
    return nf.layer_norm(x, c.x(1), c.x(2), axes, eps), m, inv


@onnx_op("LRN")
def _lrn(c: Call):
    size = c.attr("size")
    before = (size - 1) // 2
    return nf.lrn(c.x(0), size, before, size - 1 - before, c.attr("alpha", 1e-4),
                  c.attr("beta", 0.75), c.attr("bias", 1.0))


@onnx_op("Dropout")
def _dropout(c: Call):
    training = c.const(2, np.array(False))
    if c.opset < 7 and not c.attr("is_test", 0) or bool(training):
        c.unsupported("training-mode dropout")
    x = c.x(0)
    return x, F.broadcast_to(constant(True), x.shape)


@onnx_op("Softmax", "LogSoftmax")
def _softmax(c: Call):
    x = c.x(0)
    fn = F.softmax if c.op_type == "Softmax" else F.log_softmax
    axis = c.attr("axis", 1 if c.opset < 13 else -1)
    if c.opset >= 13 or x.ndim == 0:
        return fn(x, axis)
    axis = _axis(axis, x.ndim)  # before opset 13: over the flattened axes from ``axis`` on
    rows = F.reshape(x, (math.prod(x.shape[:axis]), math.prod(x.shape[axis:])))
    return F.reshape(fn(rows, 1), x.shape)


# ---------------------------------------------------------------------------------------
# Reductions


_REDUCE = {"ReduceSum": F.sum, "ReduceMean": F.mean, "ReduceMax": F.max, "ReduceMin": F.min,
           "ReduceLogSumExp": F.logsumexp, "ReduceProd": F.prod}


@onnx_op(*_REDUCE, "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum")
def _reduce(c: Call):
    x = c.x(0)
    axes = c.ints(1, "axes")
    if not axes:
        if c.attr("noop_with_empty_axes", 0):
            return x
        axes = None
    axes = None if axes is None else tuple(_axis(a, x.ndim) for a in axes)
    keep = bool(c.attr("keepdims", 1))
    if c.op_type in _REDUCE:
        return _REDUCE[c.op_type](x, axes, keepdims=keep)
    if c.op_type == "ReduceSumSquare":
        return F.sum(F.square(x), axes, keepdims=keep)
    if c.op_type == "ReduceL1":
        return F.sum(F.abs(x), axes, keepdims=keep)
    if c.op_type == "ReduceL2":
        return F.sqrt(F.sum(F.square(x), axes, keepdims=keep))
    return F.log(F.sum(x, axes, keepdims=keep))


@onnx_op("ArgMax", "ArgMin")
def _arg_reduce(c: Call):
    x = c.x(0)
    axis = _axis(c.attr("axis", 0), x.ndim)
    keep = bool(c.attr("keepdims", 1))
    if not c.attr("select_last_index", 0):
        return (F.argmax if c.op_type == "ArgMax" else F.argmin)(x, axis, keepdims=keep)
    # the last extreme: the first one of x reversed along the axis, counted from the end
    first = (F.argmax if c.op_type == "ArgMax" else F.argmin)(F.flip(x, axis), axis,
                                                             keepdims=keep)
    return (x.shape[axis] - 1) - first


@onnx_op("CumSum")
def _cumsum(c: Call):
    x = c.x(0)
    axis = _axis(int(np.asarray(c.const(1)).reshape(())), x.ndim)
    reverse, exclusive = c.attr("reverse", 0), c.attr("exclusive", 0)
    y = F.flip(x, axis) if reverse else x
    y = F.cumsum(y, axis)
    if exclusive:  # shifted by one: zero first
        lead = (slice(None),) * axis
        pads = [(0, 0)] * x.ndim
        pads[axis] = (1, 0)
        y = F.pad(y[lead + (slice(0, x.shape[axis] - 1),)], tuple(pads))
    return F.flip(y, axis) if reverse else y


# ---------------------------------------------------------------------------------------
# Shapes and data movement


@onnx_op("Constant")
def _constant(c: Call):
    from onnx import numpy_helper
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in c.attrs:
            value = c.attrs[key]
            value = numpy_helper.to_array(value) if key == "value" else \
                np.asarray(value, np.float32 if "float" in key else np.int64)
            return _constant_of(c, value)
    c.unsupported(f"a Constant with attributes {sorted(c.attrs)}")


def _constant_of(c: Call, value: np.ndarray) -> Tensor:
    return constant(np.asarray(value).astype(graphc_dtype(value.dtype, c.describe())))


@onnx_op("ConstantOfShape")
def _constant_of_shape(c: Call):
    from onnx import numpy_helper
    shape = tuple(int(d) for d in c.const(0))
    value = c.attrs.get("value")
    value = numpy_helper.to_array(value).reshape(()) if value is not None else \
        np.float32(0)
    return F.broadcast_to(_constant_of(c, np.asarray(value)), shape)


@onnx_op("Shape")
def _shape(c: Call):
    shape = np.array(c.x(0).shape, np.int64)
    start, end = c.attr("start", 0), c.attr("end", None)
    return constant(shape[start:end])


@onnx_op("Size")
def _size(c: Call):
    return constant(np.int64(c.x(0).size))


@onnx_op("Reshape")
def _reshape(c: Call):
    x = c.x(0)
    shape = [int(d) for d in c.const(1)] if c.opset >= 5 else list(c.attr("shape"))
    if not c.attr("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return F.reshape(x, shape)


@onnx_op("Flatten")
def _flatten(c: Call):
    x = c.x(0)
    axis = c.attr("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    return F.reshape(x, (math.prod(x.shape[:axis]), math.prod(x.shape[axis:])))


@onnx_op("Squeeze")
def _squeeze(c: Call):
    x = c.x(0)
    axes = c.ints(1, "axes")
    axes = {_axis(a, x.ndim) for a in axes} if axes else \
        {i for i, d in enumerate(x.shape) if d == 1}
    return F.reshape(x, tuple(d for i, d in enumerate(x.shape) if i not in axes))


@onnx_op("Unsqueeze")
def _unsqueeze(c: Call):
    x = c.x(0)
    axes = c.ints(1, "axes")
    ndim = x.ndim + len(axes)
    axes = {_axis(a, ndim) for a in axes}
    dims = iter(x.shape)
    return F.reshape(x, tuple(1 if i in axes else next(dims) for i in range(ndim)))


@onnx_op("Transpose")
def _transpose(c: Call):
    return F.transpose(c.x(0), c.attr("perm"))


@onnx_op("Concat")
def _concat(c: Call):
    xs = c.xs()
    return F.concat(xs, _axis(c.attr("axis"), xs[0].ndim))


@onnx_op("Expand")
def _expand(c: Call):
    x = c.x(0)
    shape = np.broadcast_shapes(x.shape, tuple(int(d) for d in c.const(1)))
    return F.broadcast_to(x, shape)


@onnx_op("Slice")
def _slice(c: Call):
    x = c.x(0)
    if c.opset < 10:
        starts, ends = c.attr("starts"), c.attr("ends")
        axes, steps = c.attr("axes"), None
    else:
        starts, ends = c.ints(1, ""), c.ints(2, "")
        axes, steps = c.ints(3, ""), c.ints(4, "")
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    key = [slice(None)] * x.ndim
    for a, b, e, s in zip(axes, starts, ends, steps):
        key[_axis(a, x.ndim)] = slice(b, e, s)
    return x[tuple(key)]


@onnx_op("Split")
def _split(c: Call):
    x = c.x(0)
    axis = _axis(c.attr("axis", 0), x.ndim)
    sizes = c.ints(1, "split")
    n = len(c.node.output)
    if sizes is None:
        count = c.attr("num_outputs", n)
        step = -(-x.shape[axis] // count)
        sizes = [min(step, x.shape[axis] - i * step) for i in range(count)]
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    lead = (slice(None),) * axis
    return [x[lead + (slice(int(b), int(e)),)] for b, e in zip(bounds[:-1], bounds[1:])]


@onnx_op("Gather")
def _gather(c: Call):
    x = c.x(0)
    axis = _axis(c.attr("axis", 0), x.ndim)
    lead = (slice(None),) * axis
    name = c.node.input[1]
    index = c.x(1)
    if not index.leaves:  # constant indices: a static index, negatives wrapped
        idx = np.asarray(c.const(1)).astype(np.int64)
        if idx.size and (idx.min() < -x.shape[axis] or idx.max() >= x.shape[axis]):
            c.unsupported(f"indices {idx.tolist()} out of range for axis {axis} "
                          f"(size {x.shape[axis]}) of input {name!r}")
        idx = idx % x.shape[axis] if x.shape[axis] else idx
        return x[lead + (int(idx) if idx.ndim == 0 else idx,)]
    if axis == 0:
        return F.take(x, index)
    perm = (axis,) + tuple(i for i in range(x.ndim) if i != axis)
    y = F.take(F.transpose(x, perm), index)  # (index..., rest of x without axis)
    k = index.ndim
    order = tuple(range(k, k + axis)) + tuple(range(k)) + tuple(range(k + axis, y.ndim))
    return F.transpose(y, order)


@onnx_op("Tile")
def _tile(c: Call):
    return F.tile(c.x(0), [int(r) for r in c.const(1)])


@onnx_op("Pad")
def _pad(c: Call):
    x = c.x(0)
    mode = c.attr("mode", "constant")
    if c.opset < 11:
        flat, value = list(c.attr("pads")), c.attr("value", 0.0)
    else:
        flat = [int(v) for v in c.const(1)]
        value = c.x(2) if c.has(2) else 0.0
    axes = [_axis(a, x.ndim) for a in c.ints(3, "", list(range(x.ndim)))]
    n = len(axes)
    pads = [(0, 0)] * x.ndim
    for a, b, e in zip(axes, flat[:n], flat[n:]):
        pads[a] = (b, e)
    if any(min(p) < 0 for p in pads):  # negative pads crop
        x = x[tuple(slice(-min(b, 0), n - (-min(e, 0))) for (b, e), n in zip(pads, x.shape))]
        pads = [(max(b, 0), max(e, 0)) for b, e in pads]
    pads = tuple(pads)
    if not isinstance(value, Tensor):
        return F.pad(x, pads, mode=mode, value=value)
    if not value.leaves:
        return F.pad(x, pads, mode=mode, value=float(c.const(2).reshape(-1)[0]))
    border = constant(np.pad(np.zeros(x.shape, x.dtype), pads, constant_values=1))
    return F.pad(x, pads) + border * F.reshape(value, ())  # a fed value: differentiable
