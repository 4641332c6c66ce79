"""Ops that move data: reshape, transpose, broadcast, concat, indexing, gather, cast, pad
and roll; and the reductions sum, max and min, whose gradient is a broadcast (as a
broadcast's is a sum).

Each op declares its shape-and-dtype rule (``infer``), its NumPy reference semantics
(``evaluate``) and its vector-Jacobian rule (``vjp``) side by side.  Reshape, transpose,
broadcast and basic indexing are views (:meth:`Op.is_view`): they get no buffer of their own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from . import dtypes
from . import elementwise_ops as ew
from .errors import DTypeError
from .ir import Op, StaticArray, Tensor


def unbroadcast(g, shape: tuple[int, ...]):
    """Sum ``g`` over the axes that broadcasting added or stretched, back to ``shape``.
    The one place where gradients meet broadcasting."""
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape)
                                      if d == 1 and g.shape[lead + i] != 1)
    return reshape_to(reduce("sum", g, axes) if axes else g, shape)


# Builders of these ops on concrete shapes, a no-op skipped (the vjp rules of the op modules
# build with them; the public functions of graphc.functions check the user's arguments and
# handle dynamic shapes, then build with them too).


def reshape_to(x: Tensor, shape) -> Tensor:
    shape = tuple(int(d) for d in shape)
    return x if shape == x.shape else Tensor.make(Reshape(shape), (x,))


def transpose_to(x: Tensor, perm) -> Tensor:
    perm = tuple(int(a) for a in perm)
    return x if perm == tuple(range(x.ndim)) else Tensor.make(Transpose(perm), (x,))


def broadcast_to(x: Tensor, shape) -> Tensor:
    shape = tuple(int(d) for d in shape)
    return x if shape == x.shape else Tensor.make(BroadcastTo(shape), (x,))


def cast_to(x: Tensor, dtype: str) -> Tensor:
    return x if x.dtype == dtype else Tensor.make(Cast(dtype), (x,))


def reduce(kind: str, x: Tensor, axis=None, keepdims=False) -> Tensor:
    """``kind`` (sum, max, min) of ``x`` over ``axis`` (None, an int or a sequence)."""
    axes = normalize_axes(Reduce(kind, (), keepdims), axis, x.ndim, (x,))
    return Tensor.make(Reduce(kind, axes, bool(keepdims)), (x,))


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
        return reshape_to(g, z.inputs[0].shape)


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
        return transpose_to(g, np.argsort(self.perm))


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
        return cast_to(g, z.inputs[0].dtype)


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
        if self.kind != "sum" and any(x.shape[a] == 0 for a in self.axes):
            # NumPy: a max over an empty axis has no identity (an empty batch reduced over
            # another axis is an empty result)
            self.fail("reduction over an empty axis has no identity", inputs)
        shape = tuple(1 if i in self.axes else d for i, d in enumerate(x.shape)
                      if self.keepdims or i not in self.axes)
        dtype = x.dtype
        if self.kind == "sum" and dtype in ("bool", "int32"):  # as NumPy and torch: no
            dtype = "int64"  # int32 wrap-around (four 2e9 summed to -589934592)
        return shape, dtype

    def evaluate(self, x):
        fn = {"sum": np.sum, "max": np.max, "min": np.min}[self.kind]
        dtype = {"dtype": np.int64} if self.kind == "sum" and x.dtype in (np.bool_, np.int32) \
            else {}
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
        (x,) = z.inputs
        g = kept_axes(g, x, self.axes)
        if self.kind == "sum":
            return broadcast_to(g, x.shape)
        m = kept_axes(z, x, self.axes)
        # a NaN extreme (the reduction propagates NaN) is hit by the NaNs, as torch.amax
        hit = cast_to(ew.equal(x, m), g.dtype) + \
            cast_to(ew.not_equal(x, x), g.dtype) * cast_to(ew.not_equal(m, m), g.dtype)
        return hit * (g / reduce("sum", hit, self.axes, keepdims=True))


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



def kept_axes(g, x, axes):
    """``g`` of a reduction's output reshaped to keep the reduced axes as size 1."""
    return reshape_to(g, tuple(1 if i in axes else d for i, d in enumerate(x.shape)))



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
        return Tensor.make(Pad(self.pads, self.mode), (g,))



@dataclass(frozen=True)
class Roll(Op):
    """``x`` shifted by ``shift`` places along ``axis``, the elements pushed off one end
    coming back at the other (``numpy.roll``); its adjoint rolls back by ``-shift``."""

    shift: int
    axis: int

    name = "roll"

    def infer(self, inputs):
        (x,) = inputs
        if not 0 <= self.axis < x.ndim:
            self.fail(f"axis {self.axis} is out of range for a {x.ndim}-d tensor", inputs)
        return x.shape, x.dtype

    def evaluate(self, x):
        return np.roll(x, self.shift, self.axis)

    local = ("permutation",)
    vjp_text = ("roll({g}) back",)

    def vjp(self, z, g, k):
        n = g.shape[self.axis] if g.ndim else 1
        return Tensor.make(Roll(-self.shift % n if n else 0, self.axis), (g,))

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
