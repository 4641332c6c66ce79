"""Structured ops that compute: matmul, reductions, the softmax family and running sums.

Each op declares its shape-and-dtype rule (``infer``), its NumPy reference semantics
(``evaluate``) and its vector-Jacobian rule (``vjp``) side by side.  The ops that move data
(reshape, transpose, indexing, pad ...) are in :mod:`graphc.shape_ops`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import dtypes
from . import elementwise_ops as ew
from .errors import DTypeError, GraphError
from .ir import Op, Tensor
from .shape_ops import (  # noqa: F401 -- Reduce, normalize_axes: still found here
    Reduce,  # sum, max, min: in shape_ops, with the broadcast that is a sum's gradient
    kept_axes,
    normalize_axes,
    reduce,
    reshape_to,
    transpose_to,
    unbroadcast,
)


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
        a, b = z.inputs
        if k == 0:
            return unbroadcast(Tensor.make(self, (g, transpose_to(b, _swap_last(b.ndim)))),
                               a.shape)
        if b.ndim == 2 < a.ndim:  # b shared by the whole batch: one GEMM, the batch in its
            rows = a.size // a.shape[-1]  # rows (not one per batch entry and their sum)
            flat_a = reshape_to(a, (rows, a.shape[-1]))
            return Tensor.make(self, (transpose_to(flat_a, (1, 0)),
                                      reshape_to(g, (rows, g.shape[-1]))))
        return unbroadcast(Tensor.make(self, (transpose_to(a, _swap_last(a.ndim)), g)),
                           b.shape)


def _shifted_log_sum_exp(x, axes):
    """``(m, log(sum(exp(x - m))))`` over ``axes`` (kept), ``m`` the maximum where it is
    finite, else 0 (a row of -inf or inf is not shifted; an empty one sums to 0: -inf)."""
    x = x.astype(dtypes.to_float(x.dtype.name), copy=False)
    m = np.max(x, axis=axes, keepdims=True, initial=-np.inf)
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
        (x,) = z.inputs
        return kept_axes(g, x, self.axes) * ew.exp(x - kept_axes(z, x, self.axes))


@dataclass(frozen=True)
class Softmax(Op):
    """exp(x - max) / sum(exp(x - max)) along ``axis``."""

    axis: int

    name = "softmax"

    def infer(self, inputs):
        return inputs[0].shape, _float_input(self, inputs)

    def evaluate(self, x):
        x = x.astype(dtypes.to_float(x.dtype.name), copy=False)
        # initial: an empty axis has no maximum (torch gives an empty softmax)
        e = np.exp(x - np.max(x, axis=self.axis, keepdims=True, initial=-np.inf))
        return e / np.sum(e, axis=self.axis, keepdims=True)

    local = ("{y}_i (δ_ij − {y}_j)",)
    vjp_text = ("{y} ⊙ ({g} − Σ {g} ⊙ {y})",)

    def vjp(self, z, g, k):
        """Jacobian s_i (delta_ij - s_j), applied without forming it."""
        return z * (g - reduce("sum", g * z, self.axis, keepdims=True))


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
        return g - ew.exp(z) * reduce("sum", g, self.axis, keepdims=True)


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
        (x,) = z.inputs
        return kept_axes(g, x, self.axes) * Tensor.make(ProdOthers(self.axes), (x,))


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
        flip = (slice(None),) * self.axis + (slice(None, None, -1),)
        return Tensor.make(CumSum(self.axis), (g[flip],))[flip]
