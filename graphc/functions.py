"""The public functions that build graphs, and the Tensor operators.

Primitives live in :mod:`graphc.elementwise_ops` (SymPy-declared) and
:mod:`graphc.structured_ops`; everything here that is not a primitive is composed from them,
so it needs no derivative rule of its own (mean = sum / n, stack, vector matmul, ...).
The losses are in :mod:`graphc.losses`; lifting Python values to constants in
:mod:`graphc.inputs`.
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Iterable

import numpy as np
import sympy as sp

from . import dtypes
from . import elementwise_ops as ew
from . import shape_ops as sh
from . import structured_ops as st
from .dynamic import defer, dynamic, is_dynamic
from .errors import DTypeError, GraphError, ShapeError
from .inputs import as_tensor, lift_all
from .ir import Tensor, located


def is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


# ---------------------------------------------------------------------------------------
# Elementwise functions (the ElementwiseDefs themselves: gc.sigmoid.derivatives works)

exp, log, sqrt, abs, neg, square = ew.exp, ew.log, ew.sqrt, ew.abs_, ew.neg, ew.square
reciprocal, tanh, sigmoid, relu, silu, softplus = (ew.reciprocal, ew.tanh, ew.sigmoid, ew.relu,
                                                  ew.silu, ew.softplus)
sin, cos, maximum, minimum, prelu = ew.sin, ew.cos, ew.maximum, ew.minimum, ew.prelu
add, sub, mul, div, power = ew.add, ew.sub, ew.mul, ew.div, ew.pow_
less, less_equal, greater, greater_equal = ew.less, ew.less_equal, ew.greater, ew.greater_equal
equal, not_equal = ew.equal, ew.not_equal
relu6, hardsigmoid, hardswish, softsign = ew.relu6, ew.hardsigmoid, ew.hardswish, ew.softsign
logsigmoid, selu, mish = ew.logsigmoid, ew.selu, ew.mish
sign, floor, ceil, round, trunc = ew.sign, ew.floor, ew.ceil, ew.round_, ew.trunc  # noqa: A001
erf, erfc, tan, asin, acos, atan = ew.erf, ew.erfc, ew.tan, ew.asin, ew.acos, ew.atan
atan2, sinh, cosh, asinh, acosh, atanh = ew.atan2, ew.sinh, ew.cosh, ew.asinh, ew.acosh, ew.atanh
log2, log10, exp2, expm1, log1p = ew.log2, ew.log10, ew.exp2, ew.expm1_, ew.log1p_
rsqrt, cbrt = ew.rsqrt, ew.cbrt
elementwise = ew.elementwise


def leaky_relu(x, alpha=0.01) -> Tensor:
    """max(x, alpha * x) for small alpha; derivative 1 for x > 0 else alpha."""
    return ew.leaky_relu(x, alpha=alpha)


def elu(x, alpha=1.0) -> Tensor:
    """x for x > 0, alpha * (exp(x) - 1) otherwise."""
    return ew.elu(x, alpha=alpha)


def _number(name, key, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise GraphError(located(f"{name}: {key} must be a number, got {value!r}"))
    return float(value)


def _is_int_bound(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def clip(x, min=None, max=None) -> Tensor:  # noqa: A002
    """``x`` limited to [min, max] (either bound may be None), as ``torch.clamp``: the
    gradient is 1 on [min, max], bounds included, else 0; where min > max the result is max."""
    if min is None and max is None:
        raise GraphError(located("clip: at least one of min and max must be a number"))
    x = as_tensor(x)
    if x.dtype in dtypes.INTS and builtins.all(b is None or _is_int_bound(b) for b in (min, max)):
        if min is not None:  # integer bounds keep an integer tensor's dtype (torch.clamp)
            x = ew.maximum(x, min)
        return x if max is None else ew.minimum(x, max)
    if max is None:
        return ew.clip_min(x, min=_number("clip", "min", min))
    if min is None:
        return ew.clip_max(x, max=_number("clip", "max", max))
    return ew.clip(x, min=_number("clip", "min", min), max=_number("clip", "max", max))


def hardtanh(x, min_val=-1.0, max_val=1.0) -> Tensor:
    """``x`` limited to [min_val, max_val]; gradient 1 strictly inside, 0 at and beyond the
    bounds (as ``torch.nn.functional.hardtanh``)."""
    lo, hi = _number("hardtanh", "min_val", min_val), _number("hardtanh", "max_val", max_val)
    if lo > hi:
        raise GraphError(located(f"hardtanh: min_val {lo} is greater than max_val {hi}"))
    return ew.hardtanh(x, min_val=lo, max_val=hi)


def celu(x, alpha=1.0) -> Tensor:
    """x for x > 0, alpha * (exp(x / alpha) - 1) otherwise."""
    if _number("celu", "alpha", alpha) == 0:
        raise GraphError(located("celu: alpha must not be 0"))
    return ew.celu(x, alpha=alpha)


def gelu(x, approximate="none") -> Tensor:
    """Gaussian error linear unit: exact (erf) or the tanh approximation."""
    if approximate == "none":
        return ew.gelu_erf(x)
    if approximate == "tanh":
        return ew.gelu_tanh(x)
    raise GraphError(located(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}"))


def where(cond, a, b) -> Tensor:
    """``a`` where ``cond`` (a bool tensor) is true, else ``b``; broadcasting."""
    return ew.where(cond, a, b)


def cast(x, dtype) -> Tensor:
    """``x`` converted to ``dtype``."""
    try:
        dtype = dtypes.as_dtype(dtype)
    except TypeError as err:
        raise DTypeError(located(f"cast: {err}")) from None
    return sh.cast_to(as_tensor(x), dtype)


# ---------------------------------------------------------------------------------------
# Reductions


def _reduce(kind, x, axis, keepdims) -> Tensor:
    return sh.reduce(kind, as_tensor(x), axis, keepdims)


def sum(x, axis=None, keepdims=False) -> Tensor:  # noqa: A001
    """Sum over ``axis`` (None: all axes)."""
    return _reduce("sum", x, axis, keepdims)


def max(x, axis=None, keepdims=False) -> Tensor:  # noqa: A001
    """Maximum over ``axis``.  Gradient: split evenly among tied maxima."""
    return _reduce("max", x, axis, keepdims)


def min(x, axis=None, keepdims=False) -> Tensor:  # noqa: A001
    """Minimum over ``axis``.  Gradient: split evenly among tied minima."""
    return _reduce("min", x, axis, keepdims)


@dynamic
def mean(x, axis=None, keepdims=False) -> Tensor:
    """Arithmetic mean over ``axis`` (sum / count); integer inputs give float32."""
    x = as_tensor(x)
    st.normalize_axes(st.Reduce("mean", ()), axis, x.ndim, (x,))  # errors name mean
    if not dtypes.is_float(x.dtype):
        x = cast(x, dtypes.DEFAULT_FLOAT)
    total = sum(x, axis, keepdims)
    count = x.size // builtins.max(total.size, 1) if x.size else 0
    return total / count if count != 1 else total


@dynamic
def prod(x, axis=None, keepdims=False) -> Tensor:
    """Product over ``axis``; integers give int64.  Gradient: the product of the other
    elements, exact where x holds zeros (the second derivative is not supported)."""
    x = as_tensor(x)
    probe = st.Prod(())
    return Tensor.make(st.Prod(st.normalize_axes(probe, axis, x.ndim, (x,)), bool(keepdims)),
                       (x,))


@dynamic
def var(x, axis=None, correction=1, keepdims=False) -> Tensor:
    """Variance over ``axis``: sum((x - mean)^2) / (n - correction), as ``torch.var``
    (``correction=1``, the default, is the unbiased estimate; 0 the population variance;
    n <= correction gives inf or NaN, as PyTorch)."""
    x = as_tensor(x)
    st.normalize_axes(st.Reduce("var", ()), axis, x.ndim, (x,))  # errors name var
    if not dtypes.is_float(x.dtype):
        x = cast(x, dtypes.DEFAULT_FLOAT)
    d = x - mean(x, axis, keepdims=True)
    total = sum(square(d), axis, keepdims)
    n = x.size // builtins.max(total.size, 1) if x.size else 0
    return total / float(builtins.max(n - correction, 0))


@dynamic
def std(x, axis=None, correction=1, keepdims=False) -> Tensor:
    """Standard deviation: sqrt(var(x, axis, correction)); its gradient is 0 where the
    deviation is 0 (as ``torch.std``), not 0 · inf."""
    return _std_sqrt(var(x, axis, correction, keepdims))


_std_sqrt = ew._predefined("std_sqrt", lambda v: sp.Piecewise((sp.sqrt(v), sp.Ne(v, 0)),
                                                              (0, True)))


def _arg_reduce(kind, x, axis, keepdims) -> Tensor:
    x = as_tensor(x)
    if axis is not None:
        axis = _one_axis(st.ArgReduce(kind, 0), x, axis)
    return Tensor.make(st.ArgReduce(kind, axis, bool(keepdims)), (x,))


@dynamic
def argmax(x, axis=None, keepdims=False) -> Tensor:
    """Index (int64) of the first maximum along ``axis`` (None: in the flattened x)."""
    return _arg_reduce("argmax", x, axis, keepdims)


@dynamic
def argmin(x, axis=None, keepdims=False) -> Tensor:
    """Index (int64) of the first minimum along ``axis`` (None: in the flattened x)."""
    return _arg_reduce("argmin", x, axis, keepdims)


def _bool_reduce(kind, x, axis, keepdims) -> Tensor:
    x = as_tensor(x)
    probe = st.BoolReduce(kind, ())
    return Tensor.make(st.BoolReduce(kind, st.normalize_axes(probe, axis, x.ndim, (x,)),
                                     bool(keepdims)), (x,))


@dynamic
def any(x, axis=None, keepdims=False) -> Tensor:  # noqa: A001
    """Whether some element over ``axis`` is nonzero (bool)."""
    return _bool_reduce("any", x, axis, keepdims)


@dynamic
def all(x, axis=None, keepdims=False) -> Tensor:  # noqa: A001
    """Whether every element over ``axis`` is nonzero (bool)."""
    return _bool_reduce("all", x, axis, keepdims)


@dynamic
def cumsum(x, axis) -> Tensor:
    """Running sums along ``axis``; integers and bools give int64 (as ``torch.cumsum``)."""
    x = as_tensor(x)
    return Tensor.make(st.CumSum(_one_axis(st.CumSum(0), x, axis)), (x,))


def logsumexp(x, axis=None, keepdims=False) -> Tensor:
    """log(sum(exp(x))) over ``axis``, stable for large |x|."""
    x = as_tensor(x)
    probe = st.LogSumExp((), keepdims)
    return Tensor.make(st.LogSumExp(st.normalize_axes(probe, axis, x.ndim, (x,)),
                                    bool(keepdims)), (x,))


def _one_axis(op, x, axis) -> int:
    return st.normalize_axes(op, axis, x.ndim, (x,))[0] if x.ndim else 0


def softmax(x, axis=-1) -> Tensor:
    """exp(x) / sum(exp(x)) along ``axis``; Jacobian s_i (delta_ij - s_j)."""
    x = as_tensor(x)
    return Tensor.make(st.Softmax(_one_axis(st.Softmax(0), x, axis)), (x,))


def log_softmax(x, axis=-1) -> Tensor:
    """x - logsumexp(x) along ``axis``, stable for large |x|."""
    x = as_tensor(x)
    return Tensor.make(st.LogSoftmax(_one_axis(st.LogSoftmax(0), x, axis)), (x,))


# ---------------------------------------------------------------------------------------
# Structure


@dynamic
def matmul(a, b) -> Tensor:
    """Matrix product with NumPy semantics: 2-D, batched (broadcast) and vectors."""
    a, b = lift_all([a, b])
    if a.ndim == 0 or b.ndim == 0:
        st.MatMul().fail("operands must not be scalars (use *)", (a, b))
    inner = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if a.shape[-1] != inner:  # report the user's shapes, not the promoted 2-D ones
        st.MatMul().fail(f"inner dimensions differ ({a.shape[-1]} != {inner})", (a, b))
    a2 = reshape(a, (1,) + a.shape) if a.ndim == 1 else a
    b2 = reshape(b, b.shape + (1,)) if b.ndim == 1 else b
    out = Tensor.make(st.MatMul(), (a2, b2))
    if a.ndim == 1:
        out = reshape(out, out.shape[:-2] + out.shape[-1:])
    if b.ndim == 1:
        out = reshape(out, out.shape[:-1])
    return out


def reshape(x, shape) -> Tensor:
    """``x`` with a new shape of the same size; one entry may be -1.  For ``x`` with
    dynamic dimensions, an entry may also be a name of one of them, or None where ``x``
    has None at that position (that dimension is kept)."""
    x = as_tensor(x)
    if is_dynamic(x.shape):
        return defer(_resolved, (x, shape, x.shape), {"fn": reshape}, "reshape")
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape) \
        if isinstance(shape, Iterable) else None
    if shape is None or not builtins.all(is_int(d) for d in shape):
        sh.Reshape(()).fail(f"the target shape must be ints, got {shape!r}", (x,))
    shape = tuple(int(d) for d in shape)
    if shape.count(-1) > 1 or builtins.any(d < -1 for d in shape):
        sh.Reshape(shape).fail(f"invalid target shape {shape}", (x,))
    if -1 in shape:
        known = math.prod(d for d in shape if d != -1)
        if known == 0 or x.size % known:
            sh.Reshape(shape).fail(f"cannot reshape {x.size} elements into {shape}", (x,))
        shape = tuple(x.size // known if d == -1 else d for d in shape)
    return sh.reshape_to(x, shape)


def _resolved(x, shape, pattern, fn) -> Tensor:
    """``fn(x, shape)`` (reshape, broadcast_to) of ``x``, concrete, built with the dynamic
    ``pattern``: None and names in ``shape`` are the sizes they stand for in ``x``."""
    if not isinstance(shape, Iterable):
        return fn(x, shape)
    shape, resolved = tuple(shape), []
    lead = len(shape) - len(pattern) if fn is broadcast_to else 0  # aligned on the right
    for i, d in enumerate(shape):
        if d is None or isinstance(d, str):
            sizes = [x.shape[j] for j, p in enumerate(pattern)
                     if p == d and (d is not None or j == i - lead)]
            if not sizes:
                op = sh.Reshape(()) if fn is reshape else sh.BroadcastTo(())
                op.fail(f"the target {shape!r} has {d!r} at position {i}, which is not a "
                        f"dynamic dimension of {pattern} there", (x,))
            d = sizes[0]
        resolved.append(d)
    return fn(x, resolved)


def transpose(x, axes=None) -> Tensor:
    """Permute axes (default: reverse them)."""
    x = as_tensor(x)
    perm = tuple(reversed(range(x.ndim))) if axes is None else \
        tuple(int(a) % x.ndim if -x.ndim <= int(a) < x.ndim else int(a) for a in axes)
    return sh.transpose_to(x, perm)


def broadcast_to(x, shape) -> Tensor:
    """``x`` broadcast to ``shape`` (NumPy rules).  For ``x`` with dynamic dimensions, an
    entry of ``shape`` may also be the name of one, or None where ``x`` (aligned on the
    right) has None."""
    x = as_tensor(x)
    if is_dynamic(x.shape):
        return defer(_resolved, (x, shape, x.shape), {"fn": broadcast_to}, "broadcast_to")
    if not isinstance(shape, Iterable) or not builtins.all(is_int(d) for d in shape):
        sh.BroadcastTo(()).fail(f"the target shape must be ints, got {shape!r} (a dynamic "
                                "size is known only from a dynamic operand)", (x,))
    return sh.broadcast_to(x, shape)


@dynamic
def concat(xs, axis=0) -> Tensor:
    """Join tensors along an existing axis."""
    xs = lift_all(list(xs))
    if not xs:
        raise ShapeError(located("concat: needs at least one tensor"))
    if xs[0].ndim == 0:
        sh.Concat(0).fail("cannot concatenate 0-d tensors (use gc.stack)", xs)
    op = sh.Concat(_one_axis(sh.Concat(0), xs[0], axis))
    return xs[0] if len(xs) == 1 else Tensor.make(op, xs)


@dynamic
def stack(xs, axis=0) -> Tensor:
    """Join tensors along a new axis."""
    xs = lift_all(list(xs))
    if not xs:
        raise ShapeError(located("stack: needs at least one tensor"))
    ndim = xs[0].ndim + 1
    if not is_int(axis) or not -ndim <= axis < ndim:
        sh.Concat(axis).fail(f"axis {axis} is out of range for stacking {ndim - 1}-d "
                             "tensors", xs)
    axis %= ndim
    if builtins.any(t.shape != xs[0].shape for t in xs):
        sh.Concat(axis).fail("stack needs tensors of one shape", xs)
    return concat([reshape(t, t.shape[:axis] + (1,) + t.shape[axis:]) for t in xs], axis)


def pad(x, pads, mode="constant", value=0.0) -> Tensor:
    """``x`` padded as ``numpy.pad``: ``pads`` is one ``(before, after)`` pair per axis (or
    an int for every side); ``mode`` is ``"constant"`` (filled with ``value``),
    ``"reflect"`` (mirrored, the edge not repeated), ``"edge"`` (the edge repeated) or
    ``"wrap"`` (periodic).

    >>> import graphc as gc
    >>> gc.pad(gc.input("x", (2, 3)), ((0, 0), (1, 2)), mode="reflect").shape
    (2, 6)
    """
    x = as_tensor(x)
    sides = [pads] * x.ndim if is_int(pads) else list(pads) if isinstance(pads, Iterable) \
        else []
    pairs = [(p, p) if is_int(p) else tuple(p) if isinstance(p, Iterable) else () for p in sides]
    if not pairs and x.ndim or not builtins.all(len(p) == 2 and builtins.all(map(is_int, p))
                                                for p in pairs):
        sh.Pad((), mode).fail(f"pads must be an int or one (before, after) pair of ints per "
                              f"axis, got {pads!r}", (x,))
    pairs = tuple((int(a), int(b)) for a, b in pairs)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        sh.Pad(pairs, mode).fail(f"value must be a number, got {value!r}", (x,))
    if builtins.all(p == (0, 0) for p in pairs) and len(pairs) == x.ndim:
        return x
    return Tensor.make(sh.Pad(pairs, str(mode), float(value)), (x,))


def take(x, indices) -> Tensor:
    """Rows of ``x`` picked by an integer tensor (a gather along axis 0)."""
    x, indices = as_tensor(x), as_tensor(indices)
    return Tensor.make(sh.Take(), (x, indices))


@dynamic
def getitem(x, key) -> Tensor:
    """``x[key]``: ints, slices, None, ``...``, integer arrays and integer tensors (alone,
    or at one axis with full slices before it: ``x[:, t]``)."""
    if isinstance(key, Tensor):
        return take(x, key)
    if isinstance(key, tuple) and builtins.any(isinstance(k, Tensor) for k in key):
        return _take_at_axis(x, key)
    try:
        entries = sh.static_index(key, x.shape)
    except IndexError as err:
        raise ShapeError(located(f"index: {err} (operand: {x.shape} {x.dtype})")) from None
    if builtins.all(e == ("slice", None, None, None) for e in entries) and \
            len(entries) == x.ndim:
        return x
    return Tensor.make(sh.Index(entries), (x,))


def _take_at_axis(x, key) -> Tensor:
    """``x[:, ..., t]``: ``take`` along the axis of the integer tensor ``t`` (the others full
    slices); the result has ``t``'s dimensions in place of that axis, as NumPy's."""
    axis = next(j for j, k in enumerate(key) if isinstance(k, Tensor))
    if len(key) > x.ndim or not builtins.all(isinstance(k, slice) and k == slice(None)
                                             for j, k in enumerate(key) if j != axis):
        raise ShapeError(located(
            f"index: an integer tensor indexes one axis, with full slices before it (x[t], "
            f"x[:, t]); got {key!r} for an operand of shape {x.shape}; index the others "
            "separately"))
    perm = (axis,) + tuple(d for d in range(x.ndim) if d != axis)
    y = take(transpose(x, perm) if axis else x, key[axis])
    r = key[axis].ndim
    order = tuple(range(r, r + axis)) + tuple(range(r)) + tuple(range(r + axis, y.ndim))
    return transpose(y, order) if axis else y


@dynamic
def flip(x, axis=None) -> Tensor:
    """``x`` reversed along ``axis`` (an int, a tuple, or None: every axis), as
    ``numpy.flip``; the gradient is flipped back."""
    x = as_tensor(x)
    axes = st.normalize_axes(sh.Index(()), axis, x.ndim, (x,))
    return x[tuple(slice(None, None, -1) if i in axes else slice(None) for i in range(x.ndim))]


@dynamic
def tile(x, reps) -> Tensor:
    """``x`` repeated ``reps[i]`` times along axis i, as ``numpy.tile``/``torch.tile``
    (reps shorter than x.ndim count from the last axis; longer add leading axes)."""
    x = as_tensor(x)
    reps = (reps,) if is_int(reps) else tuple(reps) if isinstance(reps, Iterable) else None
    if reps is None or not builtins.all(is_int(r) and r >= 0 for r in reps):
        raise ShapeError(located(f"tile: reps must be non-negative ints, got {reps!r}"))
    ndim = builtins.max(x.ndim, len(reps))
    shape = (1,) * (ndim - x.ndim) + x.shape
    reps = (1,) * (ndim - len(reps)) + tuple(int(r) for r in reps)
    spread = reshape(x, tuple(v for d in shape for v in (1, d)))
    out = broadcast_to(spread, tuple(v for r, d in zip(reps, shape) for v in (r, d)))
    return reshape(out, tuple(r * d for r, d in zip(reps, shape)))


# ---------------------------------------------------------------------------------------
# Tensor operators


def _binary(fn, swap=False):
    def method(self, other):
        return fn(other, self) if swap else fn(self, other)
    return method


def _pow(x, p):
    if isinstance(p, (int, float)) and not isinstance(p, bool) and p == 2:
        return square(x)
    return power(x, p)


Tensor.__add__, Tensor.__radd__ = _binary(add), _binary(add, True)
Tensor.__sub__, Tensor.__rsub__ = _binary(sub), _binary(sub, True)
Tensor.__mul__, Tensor.__rmul__ = _binary(mul), _binary(mul, True)
Tensor.__truediv__, Tensor.__rtruediv__ = _binary(div), _binary(div, True)
Tensor.__pow__, Tensor.__rpow__ = _binary(_pow), _binary(power, True)
Tensor.__matmul__, Tensor.__rmatmul__ = _binary(matmul), _binary(matmul, True)
Tensor.__lt__, Tensor.__le__ = _binary(less), _binary(less_equal)
Tensor.__gt__, Tensor.__ge__ = _binary(greater), _binary(greater_equal)
Tensor.__neg__ = lambda self: neg(self)
Tensor.__pos__ = lambda self: self
Tensor.__abs__ = lambda self: abs(self)
Tensor.__getitem__ = getitem
Tensor.T = property(transpose)
Tensor.reshape = lambda self, *shape: reshape(
    self, shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape)
Tensor.sum = sum
Tensor.mean = mean
Tensor.astype = cast


@dynamic
def roll(x, shift, axis=None) -> Tensor:
    """``x`` shifted by ``shift`` places along ``axis`` (an int, or None: the flattened
    tensor, reshaped back), wrapping around, as ``numpy.roll``/``torch.roll``; the gradient
    is rolled back."""
    x = as_tensor(x)
    if not is_int(shift):
        raise GraphError(located(f"roll: shift must be an int, got {shift!r}"))
    if axis is None:
        return reshape(roll(reshape(x, (x.size,)), shift, 0), x.shape)
    axis = _one_axis(sh.Roll(0, 0), x, axis)
    n = x.shape[axis] if x.ndim else 1
    return Tensor.make(sh.Roll(int(shift) % n if n else 0, axis), (x,))


def remainder(a, b) -> Tensor:
    """The remainder of ``a / b`` with the divisor's sign, as ``torch.remainder``,
    ``numpy.mod`` and Python's ``%``; the gradient is 1 for ``a`` and ``-floor(a / b)`` for
    ``b`` (as torch's).

    >>> import numpy as np, graphc as gc
    >>> x = gc.input("x", (4,), "float64")
    >>> gc.compile(gc.remainder(x, 0.75), backend="numpy")(x=np.array([-1.0, 0.5, 2.0, 3.0]))
    array([0.5, 0.5, 0.5, 0. ])
    """
    return _remainder(a, b, trunc=False)


def fmod(a, b) -> Tensor:
    """The remainder of ``a / b`` with the dividend's sign, as ``torch.fmod``,
    ``numpy.fmod`` and C's ``fmod``; the gradient is 1 for ``a`` and ``-trunc(a / b)`` for
    ``b``."""
    return _remainder(a, b, trunc=True)


def _remainder(a, b, trunc: bool) -> Tensor:
    """a - q * b, q = floor(a / b) (trunc(a / b) for fmod), in a's dtype.  The quotient is
    taken in float64 and may round to the wrong side of an integer, leaving r one step
    (``b``, or ``|b|`` towards a's sign for fmod) outside the range it must be in; one
    correction, either way, mends it, so an integer result is exact for |a|, |b| < 2**53.
    Floats are computed in float64 (float32 operands: q * b and r exact while
    |a / b| < 2**29); r is a where q is 0 (an infinite b: NumPy's 3 % inf is 3).  An integer
    b of 0 gives an unspecified value."""
    a, b = lift_all([a, b], "fmod" if trunc else "remainder")
    if a.dtype == "bool" or b.dtype == "bool":
        raise DTypeError(located(f"{'fmod' if trunc else 'remainder'}: does not take bool "
                                 f"operands ({a.shape} {a.dtype}, {b.shape} {b.dtype})"))
    dtype = dtypes.promote(a.dtype, b.dtype)
    wide = dtype if dtype in dtypes.INTS else "float64"
    a, b = cast(a, wide), cast(b, wide)
    ratio = cast(a, "float64") / cast(b, "float64")
    q = cast(ew.trunc(ratio) if trunc else ew.floor(ratio), wide)
    r = a - q * b if wide in dtypes.INTS else where(ew.equal(q, 0), a, a - q * b)
    step = ew.sign(a) * ew.abs_(b) if trunc else b  # the sign r must have (or be 0)
    wrong_sign = ew.sign(r) * ew.sign(step) < 0  # (r * step overflows int64)
    r = where(wrong_sign, r + step, where(ew.abs_(r) >= ew.abs_(b), r - step, r))
    return cast(r, dtype)
