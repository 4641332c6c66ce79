"""The ONNX ops ``gc.from_onnx`` imports, each a function from one ONNX node to graphc
tensors built with the public functions (so none needs a derivative rule of its own).

``SUPPORTED`` maps each ONNX op type (default domain) to its function; a function gets a
:class:`Call` (the node, its attributes, its inputs as tensors or constants) and returns
the node's outputs.  The table and ``Call`` are in :mod:`graphc.importers.onnx_op_table`;
this module holds the elementwise, reduction and shape ops and imports
:mod:`graphc.importers.onnx_ops_nn` (matrix products, convolution, pooling,
normalisation) and :mod:`graphc.importers.onnx_ops_rnn` (LSTM, GRU, RNN), which register
their own.  Semantics follow the ONNX operator
specification; the ONNX backend test suite checks them (tests/test_onnx_conformance.py).
"""

from __future__ import annotations

import math

import numpy as np

from .. import dtypes
from .. import functions as F
from ..inputs import constant
from ..ir import Tensor
from . import onnx_ops_nn, onnx_ops_rnn  # noqa: F401 -- register their ops in SUPPORTED
from .onnx_dtypes import graphc_dtype, onnx_dtype
from .onnx_op_table import SUPPORTED, Call, axis_index, onnx_op  # noqa: F401 (SUPPORTED: the table)

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


@onnx_op("Mod")
def _mod(c: Call):
    """The remainder of a / b with the divisor's sign (``fmod`` 0, Python's ``%``) or the
    dividend's (``fmod`` 1, C's ``fmod``).  Constant operands (the shape arithmetic of
    exported attention) are folded with NumPy."""
    a, b = c.x(0), c.x(1)
    fmod = bool(c.attr("fmod", 0))
    if not a.leaves and not b.leaves:
        p, q = c.const(0), c.const(1)
        with np.errstate(divide="ignore", invalid="ignore"):  # b = 0: NumPy's 0 or nan
            return constant(np.asarray((np.fmod if fmod else np.mod)(p, q)).astype(p.dtype))
    return F.fmod(a, b) if fmod else F.remainder(a, b)


@onnx_op("Not")
def _not(c: Call):
    return F.where(c.x(0), False, True)


@onnx_op("And", "Or", "Xor")
def _logical(c: Call):
    a, b = c.x(0), c.x(1)
    if c.op_type == "And":
        return F.where(a, b, False)
    if c.op_type == "Or":
        return F.where(a, True, b)
    return F.where(a, F.where(b, False, True), b)


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
    axes = None if axes is None else tuple(axis_index(a, x.ndim) for a in axes)
    keep = bool(c.attr("keepdims", 1))
    # ONNX keeps an integer input's type (onnxruntime: integer sums and products wrap, a
    # mean, norm or log is truncated): computed as graphc does (int64 sums; float64 where
    # it divides or takes a root or log, exact below 2^53), then cast to the input's type
    given = x.dtype
    if not dtypes.is_float(given) and c.op_type in ("ReduceMean", "ReduceL2", "ReduceLogSum",
                                                    "ReduceLogSumExp"):
        x = F.cast(x, "float64")
    if c.op_type in _REDUCE:
        out = _REDUCE[c.op_type](x, axes, keepdims=keep)
    elif c.op_type == "ReduceSumSquare":
        out = F.sum(F.square(x), axes, keepdims=keep)
    elif c.op_type == "ReduceL1":
        out = F.sum(F.abs(x), axes, keepdims=keep)
    elif c.op_type == "ReduceL2":
        out = F.sqrt(F.sum(F.square(x), axes, keepdims=keep))
    else:
        out = F.log(F.sum(x, axes, keepdims=keep))
    return out if out.dtype == given or dtypes.is_float(given) else F.cast(out, given)


@onnx_op("ArgMax", "ArgMin")
def _arg_reduce(c: Call):
    x = c.x(0)
    axis = axis_index(c.attr("axis", 0), x.ndim)
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
    axis = axis_index(int(np.asarray(c.const(1)).reshape(())), x.ndim)
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


@onnx_op("Range")
def _range(c: Call):
    """start, start + delta, ... up to limit (excluded), folded at import: its length
    depends on the values of its inputs, so they must be constant (in exported models they
    come from shapes); a fed one is refused, named."""
    start, limit, delta = (np.asarray(c.const(i)).reshape(()) for i in range(3))
    if delta == 0:
        c.unsupported("a delta of 0")
    return constant(np.arange(start.item(), limit.item(), delta.item()).astype(start.dtype))


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
    axes = {axis_index(a, x.ndim) for a in axes} if axes else \
        {i for i, d in enumerate(x.shape) if d == 1}
    return F.reshape(x, tuple(d for i, d in enumerate(x.shape) if i not in axes))


@onnx_op("Unsqueeze")
def _unsqueeze(c: Call):
    x = c.x(0)
    axes = c.ints(1, "axes")
    ndim = x.ndim + len(axes)
    axes = {axis_index(a, ndim) for a in axes}
    dims = iter(x.shape)
    return F.reshape(x, tuple(1 if i in axes else next(dims) for i in range(ndim)))


@onnx_op("Transpose")
def _transpose(c: Call):
    return F.transpose(c.x(0), c.attr("perm"))


@onnx_op("Concat")
def _concat(c: Call):
    xs = c.xs()
    return F.concat(xs, axis_index(c.attr("axis"), xs[0].ndim))


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
        key[axis_index(a, x.ndim)] = slice(b, e, s)
    return x[tuple(key)]


@onnx_op("Split")
def _split(c: Call):
    x = c.x(0)
    axis = axis_index(c.attr("axis", 0), x.ndim)
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
    axis = axis_index(c.attr("axis", 0), x.ndim)
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


@onnx_op("Trilu")
def _trilu(c: Call):
    """The upper (``upper`` = 1) or lower triangle of the last two axes from diagonal ``k``,
    the rest 0: ``where`` with a constant mask (causal attention masks)."""
    x = c.x(0)
    k = int(np.asarray(c.const(1, 0)).reshape(()))
    rows, cols = x.shape[-2:]
    tri = np.triu if c.attr("upper", 1) else np.tril
    keep = tri(np.ones((rows, cols), bool), k)
    return F.where(constant(keep), x, constant(np.zeros((), x.dtype)))


@onnx_op("Pad")
def _pad(c: Call):
    x = c.x(0)
    mode = c.attr("mode", "constant")
    if c.opset < 11:
        flat, value = list(c.attr("pads")), c.attr("value", 0.0)
    else:
        flat = [int(v) for v in c.const(1)]
        value = c.x(2) if c.has(2) else 0.0
    axes = [axis_index(a, x.ndim) for a in c.ints(3, "", list(range(x.ndim)))]
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
