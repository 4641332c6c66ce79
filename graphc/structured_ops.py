"""Structured ops: matmul, reductions, the softmax family, and ops that move data.

Each op declares its shape-and-dtype rule (``infer``) and its NumPy reference semantics
(``evaluate``) side by side; the *autodiff* pass adds each one's vector-Jacobian rule here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from . import dtypes
from .ir import DTypeError, GraphError, Op, ShapeError, StaticArray


def _F():
    """The public functions, which build these ops (imported late: they import us)."""
    from . import functions
    return functions


def _kept(g, x, axes):
    """``g`` of a reduction's output reshaped to keep the reduced axes as size 1."""
    return _F().reshape(g, tuple(1 if i in axes else d for i, d in enumerate(x.shape)))


def normalize_axes(op: Op, axis, ndim: int, inputs) -> tuple[int, ...]:
    """``axis`` (None, an int or a sequence) as a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis) \
        if isinstance(axis, Iterable) else None
    if axes is None or not all(isinstance(a, (int, np.integer)) for a in axes):
        op.fail(f"axis must be None, an int or a tuple of ints, got {axis!r}", inputs)
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            op.fail(f"axis {a!r} is out of range for a {ndim}-d tensor", inputs)
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        op.fail(f"repeated axis in {axis!r}", inputs)
    return tuple(sorted(out))


def unbroadcast(g, shape: tuple[int, ...]):
    """Sum ``g`` over the axes that broadcasting added or stretched, back to ``shape``.
    The one place where gradients meet broadcasting."""
    if g.shape == shape:
        return g
    F = _F()
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape)
                                      if d == 1 and g.shape[lead + i] != 1)
    return F.reshape(F.sum(g, axes) if axes else g, shape)


def _float_input(op: Op, inputs) -> str:
    return dtypes.to_float(inputs[0].dtype)


def _swap_last(ndim: int) -> tuple[int, ...]:
    return tuple(range(ndim - 2)) + (ndim - 1, ndim - 2)


@dataclass(frozen=True)
class MatMul(Op):
    """``a @ b`` for a, b of rank >= 2; leading (batch) dimensions broadcast."""

    name = "matmul"

    def infer(self, inputs):
        a, b = inputs
        if a.ndim < 2 or b.ndim < 2:
            self.fail("operands must have rank >= 2 (gc.matmul handles vectors)", inputs)
        if a.shape[-1] != b.shape[-2]:
            self.fail(f"inner dimensions differ ({a.shape[-1]} != {b.shape[-2]})", inputs)
        try:
            batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        except ValueError:
            self.fail("batch dimensions cannot be broadcast together", inputs)
        dtype = dtypes.promote(a.dtype, b.dtype)
        if dtype == "bool":
            self.fail("does not take bool operands", inputs, DTypeError)
        return tuple(batch) + (a.shape[-2], b.shape[-1]), dtype

    def evaluate(self, a, b):
        dtype = np.promote_types(a.dtype, b.dtype)
        return np.matmul(a.astype(dtype, copy=False), b.astype(dtype, copy=False))

    # Text for diagrams: {g} upstream, {x} the operand, {y} the output, {a} {b} operands.
    local = ("{b}ᵀ", "{a}ᵀ")
    vjp_text = ("{g} @ {b}ᵀ", "{a}ᵀ @ {g}")

    def vjp(self, z, g, k):
        F = _F()
        a, b = z.inputs
        if k == 0:
            return unbroadcast(F.matmul(g, F.transpose(b, _swap_last(b.ndim))), a.shape)
        return unbroadcast(F.matmul(F.transpose(a, _swap_last(a.ndim)), g), b.shape)


@dataclass(frozen=True)
class Reduce(Op):
    """``sum``, ``max`` or ``min`` over ``axes`` (normalised, sorted)."""

    kind: str
    axes: tuple[int, ...]
    keepdims: bool = False

    @property
    def name(self):  # type: ignore[override]
        return self.kind

    def attrs(self):
        return {"axes": self.axes, "keepdims": self.keepdims}

    def infer(self, inputs):
        (x,) = inputs
        if self.kind != "sum" and x.size == 0 and self.axes:
            self.fail("reduction of an empty tensor has no identity", inputs)
        shape = tuple(1 if i in self.axes else d for i, d in enumerate(x.shape)
                      if self.keepdims or i not in self.axes)
        dtype = x.dtype
        if self.kind == "sum" and dtype == "bool":
            dtype = "int64"
        return shape, dtype

    def evaluate(self, x):
        fn = {"sum": np.sum, "max": np.max, "min": np.min}[self.kind]
        dtype = {"dtype": np.int64} if self.kind == "sum" and x.dtype == np.bool_ else {}
        return np.asarray(fn(x, axis=self.axes, keepdims=self.keepdims, **dtype))

    @property
    def local(self):
        return ("1",) if self.kind == "sum" else ("[{x} = {y}] / #ties",)

    @property
    def vjp_text(self):
        return ("broadcast({g})",) if self.kind == "sum" else ("{g} · [{x} = {y}] / #ties",)

    def vjp(self, z, g, k):
        """sum: g broadcast back.  max/min: g to the extremal elements, split evenly among
        ties (as torch.amax): d/dx_i = [x_i = y] / #{j: x_j = y}; where y is NaN, the
        NaNs of x are the extremal elements."""
        F = _F()
        (x,) = z.inputs
        g = _kept(g, x, self.axes)
        if self.kind == "sum":
            return F.broadcast_to(g, x.shape)
        m = _kept(z, x, self.axes)
        # a NaN extreme (the reduction propagates NaN) is hit by the NaNs, as torch.amax
        hit = F.cast(F.equal(x, m), g.dtype) + \
            F.cast(F.not_equal(x, x), g.dtype) * F.cast(F.not_equal(m, m), g.dtype)
        return hit * (g / F.sum(hit, self.axes, keepdims=True))


def _shifted_log_sum_exp(x, axes):
    """``(m, log(sum(exp(x - m))))`` over ``axes`` (kept), ``m`` the maximum where it is
    finite, else 0 (a row of -inf or inf is not shifted)."""
    x = x.astype(dtypes.to_float(x.dtype.name), copy=False)
    m = np.max(x, axis=axes, keepdims=True)
    m = np.where(np.isfinite(m), m, 0).astype(x.dtype)
    with np.errstate(all="ignore"):
        return m, np.log(np.sum(np.exp(x - m), axis=axes, keepdims=True))


@dataclass(frozen=True)
class LogSumExp(Op):
    """log(sum(exp(x))) over ``axes``, computed as m + log(sum(exp(x - m))), m = max."""

    axes: tuple[int, ...]
    keepdims: bool = False

    name = "logsumexp"

    def infer(self, inputs):
        (x,) = inputs
        shape = tuple(1 if i in self.axes else d for i, d in enumerate(x.shape)
                      if self.keepdims or i not in self.axes)
        return shape, _float_input(self, inputs)

    def evaluate(self, x):
        m, log_sum = _shifted_log_sum_exp(x, self.axes)
        out = m + log_sum
        return out if self.keepdims else np.squeeze(out, axis=self.axes)

    local = ("exp({x} − {y})",)
    vjp_text = ("{g} · exp({x} − {y})",)

    def vjp(self, z, g, k):
        F = _F()
        (x,) = z.inputs
        return _kept(g, x, self.axes) * F.exp(x - _kept(z, x, self.axes))


@dataclass(frozen=True)
class Softmax(Op):
    """exp(x - max) / sum(exp(x - max)) along ``axis``."""

    axis: int

    name = "softmax"

    def infer(self, inputs):
        return inputs[0].shape, _float_input(self, inputs)

    def evaluate(self, x):
        x = x.astype(dtypes.to_float(x.dtype.name), copy=False)
        e = np.exp(x - np.max(x, axis=self.axis, keepdims=True))
        return e / np.sum(e, axis=self.axis, keepdims=True)

    local = ("{y}_i (δ_ij − {y}_j)",)
    vjp_text = ("{y} ⊙ ({g} − Σ {g} ⊙ {y})",)

    def vjp(self, z, g, k):
        """Jacobian s_i (delta_ij - s_j), applied without forming it."""
        return z * (g - _F().sum(g * z, self.axis, keepdims=True))


@dataclass(frozen=True)
class LogSoftmax(Op):
    """x - logsumexp(x) along ``axis``, computed as (x - m) - log(sum(exp(x - m)))."""

    axis: int

    name = "log_softmax"

    def infer(self, inputs):
        return inputs[0].shape, _float_input(self, inputs)

    def evaluate(self, x):
        # (x - m) - log(sum(exp(x - m))), as PyTorch: x - logsumexp(x) would round
        # logsumexp (of the size of m) first and cancel (x = [1e4, 1e4, 0]: -0.69336)
        m, log_sum = _shifted_log_sum_exp(x, (self.axis,))
        return (x.astype(m.dtype, copy=False) - m) - log_sum

    local = ("δ_ij − exp({y})_j",)
    vjp_text = ("{g} − exp({y}) Σ {g}",)

    def vjp(self, z, g, k):
        F = _F()
        return g - F.exp(z) * F.sum(g, self.axis, keepdims=True)


@dataclass(frozen=True)
class Reshape(Op):
    new_shape: tuple[int, ...]

    name = "reshape"

    def is_view(self):
        return True

    def infer(self, inputs):
        (x,) = inputs
        if int(np.prod(self.new_shape, dtype=np.int64)) != x.size:
            self.fail(f"cannot reshape {x.size} elements into shape {self.new_shape}", inputs)
        return self.new_shape, x.dtype

    def evaluate(self, x):
        return np.reshape(x, self.new_shape)

    local = ("identity, reshaped",)
    vjp_text = ("reshape({g})",)

    def vjp(self, z, g, k):
        return _F().reshape(g, z.inputs[0].shape)


@dataclass(frozen=True)
class Transpose(Op):
    perm: tuple[int, ...]

    name = "transpose"

    def is_view(self):
        return True

    def infer(self, inputs):
        (x,) = inputs
        if sorted(self.perm) != list(range(x.ndim)):
            self.fail(f"axes {self.perm} are not a permutation of {x.ndim} axes", inputs)
        return tuple(x.shape[p] for p in self.perm), x.dtype

    def evaluate(self, x):
        return np.transpose(x, self.perm)

    local = ("permutation",)
    vjp_text = ("transpose({g})",)

    def vjp(self, z, g, k):
        return _F().transpose(g, tuple(np.argsort(self.perm)))


@dataclass(frozen=True)
class BroadcastTo(Op):
    target: tuple[int, ...]

    name = "broadcast_to"

    def is_view(self):
        return True

    def infer(self, inputs):
        (x,) = inputs
        try:
            if np.broadcast_shapes(x.shape, self.target) != self.target:
                raise ValueError
        except ValueError:
            self.fail(f"cannot broadcast {x.shape} to {self.target}", inputs)
        return self.target, x.dtype

    def evaluate(self, x):
        return np.broadcast_to(x, self.target)

    local = ("copies",)
    vjp_text = ("sum of {g} over broadcast axes",)

    def vjp(self, z, g, k):
        return unbroadcast(g, z.inputs[0].shape)


@dataclass(frozen=True)
class Concat(Op):
    axis: int

    name = "concat"

    def infer(self, inputs):
        first = inputs[0]
        for t in inputs[1:]:
            if t.ndim != first.ndim or any(a != b for i, (a, b) in
                                           enumerate(zip(t.shape, first.shape))
                                           if i != self.axis):
                self.fail(f"shapes differ off the concatenation axis {self.axis}", inputs)
        shape = list(first.shape)
        shape[self.axis] = sum(t.shape[self.axis] for t in inputs)
        return tuple(shape), dtypes.promote(*(t.dtype for t in inputs))

    def evaluate(self, *xs):
        return np.concatenate(xs, axis=self.axis)

    local = ("selection",)
    vjp_text = ("slice of {g}",)

    def vjp(self, z, g, k):
        start = sum(t.shape[self.axis] for t in z.inputs[:k])
        stop = start + z.inputs[k].shape[self.axis]
        return g[(slice(None),) * self.axis + (slice(start, stop),)]


@dataclass(frozen=True)
class Index(Op):
    """``x[index]`` with a static index: ints, slices, None and integer arrays.

    ``index`` is a tuple of ``("int", i)``, ``("slice", start, stop, step)``,
    ``("newaxis",)`` and ``("array", StaticArray)`` entries, NumPy semantics.
    """

    index: tuple

    name = "index"

    def is_view(self):  # basic indexing; an integer array index gathers a copy
        return not any(e[0] == "array" for e in self.index)

    def numpy_index(self) -> tuple:
        out = []
        for kind, *rest in self.index:
            out.append(rest[0] if kind == "int" else slice(*rest) if kind == "slice" else
                       None if kind == "newaxis" else rest[0].array)
        return tuple(out)

    def infer(self, inputs):
        (x,) = inputs
        probe = np.broadcast_to(np.empty((), np.bool_), x.shape)  # no memory per element
        try:
            shape = probe[self.numpy_index()].shape
        except IndexError as err:
            self.fail(str(err), inputs)
        return shape, x.dtype

    def evaluate(self, x):
        return x[self.numpy_index()]

    local = ("selection",)
    vjp_text = ("scatter-add of {g}",)

    def vjp(self, z, g, k):
        from .ir import Tensor
        return Tensor.make(IndexAdd(self.index, z.inputs[0].shape), (g,))


@dataclass(frozen=True)
class IndexAdd(Op):
    """The adjoint of :class:`Index`: zeros of ``shape`` with ``g`` added at ``index``
    (repeated indices accumulate)."""

    index: tuple
    target: tuple[int, ...]

    name = "index_add"

    def infer(self, inputs):
        return self.target, inputs[0].dtype

    def evaluate(self, g):
        out = np.zeros(self.target, g.dtype)
        np.add.at(out, Index(self.index).numpy_index(), g)
        return out

    local = ("scatter",)
    vjp_text = ("index({g})",)

    def vjp(self, z, g, k):
        from .ir import Tensor
        return Tensor.make(Index(self.index), (g,))


@dataclass(frozen=True)
class Take(Op):
    """``x[indices]`` along axis 0 with an integer *tensor* of indices (a gather)."""

    name = "take"

    def infer(self, inputs):
        x, idx = inputs
        if idx.dtype not in dtypes.INTS:
            self.fail(f"indices must be int32 or int64, got {idx.dtype}", inputs, DTypeError)
        if x.ndim == 0:
            self.fail("cannot index a 0-d tensor", inputs)
        return idx.shape + x.shape[1:], x.dtype

    def evaluate(self, x, idx):
        if idx.size and (idx.min() < -x.shape[0] or idx.max() >= x.shape[0]):
            raise IndexError(f"take: an index is out of range for axis 0 of size {x.shape[0]}")
        return x[idx]

    local = ("selection", "")
    vjp_text = ("scatter-add of {g} into rows", "")

    def vjp(self, z, g, k):
        from .ir import Tensor
        return Tensor.make(TakeAdd(z.inputs[0].shape[0]), (g, z.inputs[1]))


@dataclass(frozen=True)
class TakeAdd(Op):
    """The adjoint of :class:`Take`: rows of ``g`` added into zeros of ``rows`` rows."""

    rows: int

    name = "take_add"

    def infer(self, inputs):
        g, idx = inputs
        return (self.rows,) + g.shape[idx.ndim:], g.dtype

    def evaluate(self, g, idx):
        out = np.zeros((self.rows,) + g.shape[idx.ndim:], g.dtype)
        np.add.at(out, idx, g)
        return out

    local = ("scatter", "")
    vjp_text = ("take({g})", "")

    def vjp(self, z, g, k):
        from .ir import Tensor
        return Tensor.make(Take(), (g, z.inputs[1]))


@dataclass(frozen=True)
class Cast(Op):
    to: str

    name = "cast"

    def infer(self, inputs):
        return inputs[0].shape, self.to

    def evaluate(self, x):
        return x.astype(self.to)

    local = ("1",)
    vjp_text = ("cast({g})",)

    def vjp(self, z, g, k):
        return _F().cast(g, z.inputs[0].dtype)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}


def pad_sources(pads, mode: str, shape) -> tuple[np.ndarray, ...]:
    """Per axis, the index of ``x`` that each position of the padded array reads (``mode``
    reflect, edge or wrap): the gather that padding is, and whose adjoint scatter-adds."""
    return tuple(np.pad(np.arange(n), p, mode=_PAD_MODES[mode]) for n, p in zip(shape, pads))


@dataclass(frozen=True)
class Pad(Op):
    """``x`` padded by ``pads`` ((before, after) per axis), as ``numpy.pad``: mode
    ``"constant"`` (``value``), ``"reflect"`` (mirror, the edge not repeated), ``"edge"``
    (the edge repeated) or ``"wrap"`` (periodic)."""

    pads: tuple[tuple[int, int], ...]
    mode: str = "constant"
    value: float = 0.0

    name = "pad"

    def infer(self, inputs):
        (x,) = inputs
        if self.mode not in _PAD_MODES:
            self.fail(f"mode must be one of {', '.join(_PAD_MODES)}, got {self.mode!r}", inputs)
        if len(self.pads) != x.ndim or any(min(p) < 0 for p in self.pads):
            self.fail(f"pads {self.pads} must be one non-negative (before, after) pair per "
                      f"axis", inputs)
        for n, (b, a) in zip(x.shape, self.pads):
            if self.mode == "reflect" and max(b, a) >= n > 0 or \
                    self.mode != "constant" and n == 0 and b + a:
                self.fail(f"{self.mode} padding by {(b, a)} needs an axis longer than the pad, "
                          f"got {n}", inputs)
        return tuple(n + b + a for n, (b, a) in zip(x.shape, self.pads)), x.dtype

    def evaluate(self, x):
        if self.mode == "constant":
            return np.pad(x, self.pads, constant_values=np.asarray(self.value, x.dtype))
        return np.pad(x, self.pads, mode=_PAD_MODES[self.mode])

    @property
    def local(self):
        return ("selection",) if self.mode == "constant" else ("selection, borders repeated",)

    @property
    def vjp_text(self):
        return ("slice of {g}",) if self.mode == "constant" else \
            ("{g} with its borders added back",)

    def vjp(self, z, g, k):
        x = z.inputs[0]
        if self.mode == "constant":
            return g[tuple(slice(b, b + n) for n, (b, _) in zip(x.shape, self.pads))]
        from .ir import Tensor
        return Tensor.make(PadAdd(self.pads, self.mode, x.shape), (g,))


@dataclass(frozen=True)
class PadAdd(Op):
    """The adjoint of a reflect, edge or wrap :class:`Pad`: g (the padded shape) added into
    zeros of ``target`` at the positions each padded element was read from."""

    pads: tuple[tuple[int, int], ...]
    mode: str
    target: tuple[int, ...]

    name = "pad_add"

    def infer(self, inputs):
        (g,) = inputs
        if g.shape != tuple(n + b + a for n, (b, a) in zip(self.target, self.pads)):
            self.fail(f"g must have the shape of {self.target} padded by {self.pads}", inputs)
        return self.target, g.dtype

    def evaluate(self, g):
        out = np.zeros(self.target, g.dtype)
        np.add.at(out, np.ix_(*pad_sources(self.pads, self.mode, self.target)), g)
        return out

    local = ("scatter-add",)
    vjp_text = ("pad({g})",)

    def vjp(self, z, g, k):
        from .ir import Tensor
        return Tensor.make(Pad(self.pads, self.mode), (g,))


def _reduced_shape(x, axes, keepdims) -> tuple[int, ...]:
    return tuple(1 if i in axes else d for i, d in enumerate(x.shape)
                 if keepdims or i not in axes)


def _int64_or(dtype: str) -> str:
    """Products and running sums of bool and integer tensors are int64 (as PyTorch)."""
    return dtype if dtypes.is_float(dtype) else "int64"


def _groups(x: np.ndarray, axes) -> tuple[np.ndarray, tuple]:
    """``x`` with ``axes`` moved last and flattened: (rest..., K), and the moved shape."""
    moved = np.moveaxis(x, axes, tuple(range(-len(axes), 0)))
    return moved.reshape(moved.shape[:moved.ndim - len(axes)] + (-1,)), moved.shape


@dataclass(frozen=True)
class Prod(Op):
    """The product over ``axes``.  Its gradient is the product of the *other* elements
    (:class:`ProdOthers`), exact where x holds zeros (g · y / x would be 0/0 there)."""

    axes: tuple[int, ...]
    keepdims: bool = False

    name = "prod"

    def infer(self, inputs):
        (x,) = inputs
        if x.dtype == "bool":
            self.fail("does not take bool operands", inputs, DTypeError)
        return _reduced_shape(x, self.axes, self.keepdims), _int64_or(x.dtype)

    def evaluate(self, x):
        return np.asarray(np.prod(x, axis=self.axes, keepdims=self.keepdims,
                                  dtype=_int64_or(x.dtype.name)))

    local = ("Π_{j≠i} {x}_j",)
    vjp_text = ("{g} · Π_{j≠i} {x}_j",)

    def vjp(self, z, g, k):
        from .ir import Tensor
        (x,) = z.inputs
        return _kept(g, x, self.axes) * Tensor.make(ProdOthers(self.axes), (x,))


@dataclass(frozen=True)
class ProdOthers(Op):
    """For each element, the product of the other elements of its group over ``axes``:
    exclusive products from the left times exclusive products from the right."""

    axes: tuple[int, ...]

    name = "prod_others"

    def infer(self, inputs):
        return inputs[0].shape, inputs[0].dtype

    def evaluate(self, x):
        flat, moved = _groups(x, self.axes)
        ones = np.ones(flat.shape[:-1] + (1,), x.dtype)
        left = np.cumprod(np.concatenate([ones, flat[..., :-1]], -1), -1)
        right = np.cumprod(np.concatenate([ones, flat[..., :0:-1]], -1), -1)[..., ::-1]
        out = (left * right).reshape(moved)
        return np.moveaxis(out, tuple(range(-len(self.axes), 0)), self.axes)

    local = ("Π_{j≠i,m} {x}_j",)
    vjp_text = ("not supported",)

    def vjp(self, z, g, k):
        self.fail("the second derivative of prod is not supported", z.inputs, GraphError)


@dataclass(frozen=True)
class ArgReduce(Op):
    """``argmax``/``argmin`` along ``axis`` (None: of the flattened x), int64, as NumPy and
    PyTorch: the first extremum, a NaN counting as the extremum.  No gradient."""

    kind: str
    axis: int | None
    keepdims: bool = False

    @property
    def name(self):  # type: ignore[override]
        return self.kind

    def infer(self, inputs):
        (x,) = inputs
        if x.size == 0:
            self.fail("of an empty tensor", inputs)
        if self.axis is None:
            return ((1,) * x.ndim if self.keepdims else ()), "int64"
        return _reduced_shape(x, (self.axis,), self.keepdims), "int64"

    def evaluate(self, x):
        fn = np.argmax if self.kind == "argmax" else np.argmin
        return np.asarray(fn(x, axis=self.axis, keepdims=self.keepdims), np.int64)

    local = ("0",)
    vjp_text = ("0",)

    def vjp(self, z, g, k):
        return None


@dataclass(frozen=True)
class BoolReduce(Op):
    """``any``/``all`` over ``axes``: whether some/every element is nonzero.  Bool."""

    kind: str
    axes: tuple[int, ...]
    keepdims: bool = False

    @property
    def name(self):  # type: ignore[override]
        return self.kind

    def infer(self, inputs):
        return _reduced_shape(inputs[0], self.axes, self.keepdims), "bool"

    def evaluate(self, x):
        fn = np.any if self.kind == "any" else np.all
        return np.asarray(fn(x, axis=self.axes, keepdims=self.keepdims))

    local = ("0",)
    vjp_text = ("0",)

    def vjp(self, z, g, k):
        return None


@dataclass(frozen=True)
class CumSum(Op):
    """Running sums along ``axis`` (of bool and integers: int64).  Its adjoint is the running sum
    from the other end: g reversed, summed, reversed."""

    axis: int

    name = "cumsum"

    def infer(self, inputs):
        return inputs[0].shape, _int64_or(inputs[0].dtype)

    def evaluate(self, x):
        return np.cumsum(x, axis=self.axis, dtype=_int64_or(x.dtype.name))

    local = ("[j ≤ i]",)
    vjp_text = ("reverse cumsum of {g}",)

    def vjp(self, z, g, k):
        from .ir import Tensor
        flip = (slice(None),) * self.axis + (slice(None, None, -1),)
        return Tensor.make(CumSum(self.axis), (g[flip],))[flip]


def _slice_text(k: slice) -> str:
    text = ":".join("" if v is None else str(v) for v in (k.start, k.stop, k.step))
    return "[" + (text[:-1] if k.step is None else text) + "]"


def static_index(key, shape) -> tuple:
    """A user's ``x[key]`` as :class:`Index` entries (Ellipsis expanded), or raise."""
    key = key if isinstance(key, tuple) else (key,)
    n_ellipsis = sum(k is Ellipsis for k in key)
    if n_ellipsis > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    used = sum(1 for k in key if k is not None and k is not Ellipsis)
    entries = []
    for k in key:
        if k is Ellipsis:
            entries.extend([("slice", None, None, None)] * (len(shape) - used))
        elif k is None:
            entries.append(("newaxis",))
        elif isinstance(k, (bool, np.bool_)):
            raise IndexError("boolean scalars are not valid indices")
        elif isinstance(k, (int, np.integer)):
            entries.append(("int", int(k)))
        elif isinstance(k, slice):
            bounds = (k.start, k.stop, k.step)
            if not all(v is None or isinstance(v, (int, np.integer)) for v in bounds):
                raise IndexError(f"slice bounds must be ints or None, got {_slice_text(k)}")
            if k.step == 0:
                raise IndexError(f"slice step cannot be zero in {_slice_text(k)}")
            entries.append(("slice", *(None if v is None else int(v) for v in bounds)))
        else:
            array = np.asarray(k)
            if array.dtype.kind not in "iu":
                raise IndexError(f"index arrays must hold integers, got {array.dtype}")
            entries.append(("array", StaticArray(array.astype(np.int64))))
    return tuple(entries)


__all__ = ["MatMul", "Reduce", "LogSumExp", "Softmax", "LogSoftmax", "Reshape", "Transpose",
           "BroadcastTo", "Concat", "Index", "IndexAdd", "Take", "TakeAdd", "Cast", "Pad", "PadAdd",
           "ShapeError", "unbroadcast", "Prod", "ProdOthers", "ArgReduce", "BoolReduce",
           "CumSum"]
