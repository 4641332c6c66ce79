"""Neural-network layer ops: 2-D convolution, max pooling, and the dropout mask.

Each op declares its shape-and-dtype rule (``infer``), its NumPy reference semantics
(``evaluate``) and its vector-Jacobian rule (``vjp``) side by side.  The adjoints the rules
need are ops of this module too, each with its own rule, so gradients of gradients work:

- ``conv2d(x, w)``, ``conv2d_input_grad(g, w)`` (col2im, a transposed convolution) and
  ``conv2d_weight_grad(x, g)`` are the three partial derivatives of one bilinear form
  B(x, w, g) = <g, conv2d(x, w)>, so their rules only permute the three ops;
- ``max_pool2d(x)``, ``max_pool2d_grad(x, g)`` (routes g to the first maximum of each
  window, as PyTorch) and ``max_pool2d_select(x, v)`` (v at those positions) are linear in
  their last operand and piecewise constant in ``x``;
- ``dropout_mask(seed)`` is the Bernoulli keep-mask of inverted dropout (bool: no gradient).

Average pooling, global average pooling, batch and layer norm, dropout itself and embedding
are compositions (:mod:`graphc.nn_functions`) and need no rule of their own.

Convolution is evaluated with im2col: the padded input is viewed as windows
(``sliding_window_view``, no copy), copied once into a (C*kh*kw x Ho*Wo) matrix per sample
and multiplied with the kernel by BLAS, which leaves the result in NCHW order; the input
gradient multiplies back and scatter-adds the columns with one strided slice per kernel
position (kh*kw vectorised adds, col2im).  Pooling works on the kh*kw strided views of
the padded input directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import dtypes
from .errors import DTypeError
from .ir import Op, Tensor

Pair = tuple[int, int]


def out_size(size: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> int:
    """Output length of a sliding window along one axis (PyTorch's floor formula)."""
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def _float_dtype(op: Op, inputs) -> str:
    if not all(dtypes.is_float(t.dtype) for t in inputs):
        op.fail(f"takes float operands, got {', '.join(t.dtype for t in inputs)}", inputs,
                DTypeError)
    return dtypes.promote(*(t.dtype for t in inputs))


def _windows(xp: np.ndarray, kernel: Pair, stride: Pair, dilation: Pair) -> np.ndarray:
    """View of the padded ``xp`` (N, C, Hp, Wp) as windows (N, C, kh, kw, Ho, Wo): entry
    [.., p, q, i, j] is xp[.., s*i + d*p, s*j + d*q].  No copy."""
    span = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    view = sliding_window_view(xp, span, axis=(2, 3))
    view = view[:, :, ::stride[0], ::stride[1], ::dilation[0], ::dilation[1]]
    return view.transpose(0, 1, 4, 5, 2, 3)


def _pad(x: np.ndarray, padding: Pair, value=0) -> np.ndarray:
    if padding == (0, 0):
        return x
    (ph, pw) = padding
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def _positions(kernel: Pair, out_hw: Pair, stride: Pair, dilation: Pair):
    """For each kernel position (p, q), row-major: the index that picks, from a padded
    (N, C, Hp, Wp) array, the (N, C, Ho, Wo) elements that position reads."""
    (ho, wo), (sh, sw), (dh, dw) = out_hw, stride, dilation
    for p in range(kernel[0]):
        for q in range(kernel[1]):
            yield (p, q), (Ellipsis, slice(p * dh, p * dh + sh * (ho - 1) + 1, sh),
                           slice(q * dw, q * dw + sw * (wo - 1) + 1, sw))


def _scatter_windows(cols: np.ndarray, shape, stride: Pair, padding: Pair,
                     dilation: Pair) -> np.ndarray:
    """The adjoint of :func:`_windows` after padding: ``cols`` (N, C, kh, kw, Ho, Wo) added
    into zeros of ``shape`` (N, C, H, W) at the positions each window read (col2im): one
    vectorised strided add per kernel position."""
    (n, c, h, w), (ph, pw) = shape, padding
    out = np.zeros((n, c, h + 2 * ph, w + 2 * pw), cols.dtype)
    for (p, q), at in _positions(cols.shape[2:4], cols.shape[4:], stride, dilation):
        out[at] += cols[:, :, p, q]
    return out[:, :, ph:ph + h, pw:pw + w]


# ---------------------------------------------------------------------------------------
# Convolution: one bilinear form, three ops


@dataclass(frozen=True)
class _ConvGeometry(Op):
    """Stride, padding, dilation (pairs) and groups, shared by conv2d and its adjoints."""

    stride: Pair
    padding: Pair
    dilation: Pair
    groups: int

    def geometry(self) -> tuple:
        return self.stride, self.padding, self.dilation, self.groups

    def out_hw(self, in_hw, kernel) -> Pair:
        return tuple(out_size(n, k, s, p, d) for n, k, s, p, d in
                     zip(in_hw, kernel, self.stride, self.padding, self.dilation))

    def check(self, x_shape, w_shape, inputs) -> Pair:
        """Validate an input (N, C, H, W) against a kernel (O, C/groups, kh, kw); the
        output's spatial size."""
        if len(x_shape) != 4 or len(w_shape) != 4:
            self.fail("input must be (N, C, H, W) and kernel (C_out, C_in/groups, kh, kw)",
                      inputs)
        c, o, g = x_shape[1], w_shape[0], self.groups
        if c % g or o % g:
            self.fail(f"groups={g} must divide the input channels ({c}) and the output "
                      f"channels ({o})", inputs)
        if w_shape[1] * g != c:
            self.fail(f"the kernel takes {w_shape[1]} channel(s) per group but the input has "
                      f"{c} channel(s) in {g} group(s) ({c // g} per group)", inputs)
        span = tuple(d * (k - 1) + 1 for k, d in zip(w_shape[2:], self.dilation))
        padded = tuple(n + 2 * p for n, p in zip(x_shape[2:], self.padding))
        if any(s > n for s, n in zip(span, padded)):
            self.fail(f"the kernel spans {span[0]}x{span[1]} (with dilation), larger than the "
                      f"padded input {padded[0]}x{padded[1]}", inputs)
        return self.out_hw(x_shape[2:], w_shape[2:])

    def columns(self, x: np.ndarray, kernel: Pair) -> np.ndarray:
        """im2col: (N, groups, C/groups*kh*kw, Ho*Wo), one column per output position,
        laid out so that kernel @ columns is already NCHW."""
        win = _windows(_pad(x, self.padding), kernel, self.stride, self.dilation)
        per_group = int(np.prod(win.shape[1:-2])) // self.groups  # no -1: N may be 0
        return win.reshape(x.shape[0], self.groups, per_group, win.shape[-2] * win.shape[-1])

    def kernel_matrix(self, w: np.ndarray) -> np.ndarray:
        """w (O, C/groups, kh, kw) as (groups, O/groups, C/groups*kh*kw)."""
        return w.reshape(self.groups, w.shape[0] // self.groups, -1)

    def conv(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        out = self.kernel_matrix(w) @ self.columns(x, w.shape[2:])  # (N, G, O/G, Ho*Wo)
        return out.reshape(x.shape[0], w.shape[0], *self.out_hw(x.shape[2:], w.shape[2:]))

    def make(self, op_type, inputs, **extra) -> Tensor:
        stride, padding, dilation, groups = self.geometry()
        return Tensor.make(op_type(stride, padding, dilation, groups, **extra), inputs)


def _common(*arrays):
    dtype = np.result_type(*arrays)
    return [a.astype(dtype, copy=False) for a in arrays]


@dataclass(frozen=True)
class Conv2d(_ConvGeometry):
    """Cross-correlation of x (N, C, H, W) with w (O, C/groups, kh, kw), as PyTorch's
    ``conv2d``: out[n, o, i, j] = sum_{c,p,q} x_pad[n, c', s*i + d*p, s*j + d*q] w[o, c, p, q]
    with c' running over the channels of o's group."""

    name = "conv2d"

    def infer(self, inputs):
        x, w = inputs
        dtype = _float_dtype(self, inputs)
        ho, wo = self.check(x.shape, w.shape, inputs)
        return (x.shape[0], w.shape[0], ho, wo), dtype

    def evaluate(self, x, w):
        return self.conv(*_common(x, w))

    local = ("{b} (as a convolution)", "{a} (as a convolution)")
    vjp_text = ("conv2d_input_grad({g}, {b})", "conv2d_weight_grad({a}, {g})")

    def vjp(self, z, g, k):
        x, w = z.inputs
        if k == 0:
            return self.make(Conv2dInputGrad, (g, w), in_hw=x.shape[2:])
        return self.make(Conv2dWeightGrad, (x, g), kernel=w.shape[2:])


@dataclass(frozen=True)
class Conv2dInputGrad(_ConvGeometry):
    """d<g, conv2d(x, w)>/dx: the transposed convolution of g (N, O, Ho, Wo) with w,
    an (N, C, H, W) array (col2im); H, W are ``in_hw`` (strides make them ambiguous)."""

    in_hw: Pair

    name = "conv2d_input_grad"

    def infer(self, inputs):
        g, w = inputs
        dtype = _float_dtype(self, inputs)
        if g.ndim != 4 or w.ndim != 4:
            self.fail("g must be (N, C_out, Ho, Wo) and w (C_out, C_in/groups, kh, kw)", inputs)
        shape = (g.shape[0], w.shape[1] * self.groups, *self.in_hw)
        if self.check(shape, w.shape, inputs) != g.shape[2:] or g.shape[1] != w.shape[0]:
            self.fail(f"g is not the output of a convolution of an input of spatial size "
                      f"{self.in_hw} with w", inputs)
        return shape, dtype

    def evaluate(self, g, w):
        g, w = _common(g, w)
        n, (o, cg, kh, kw), gr = g.shape[0], w.shape, self.groups
        rows = g.reshape(n, gr, o // gr, g.shape[2] * g.shape[3])     # (N, G, O/G, Ho*Wo)
        cols = self.kernel_matrix(w).transpose(0, 2, 1) @ rows        # (N, G, Cg*kh*kw, ..)
        cols = cols.reshape(n, gr * cg, kh, kw, *g.shape[2:])
        return _scatter_windows(cols, (n, gr * cg, *self.in_hw), self.stride, self.padding,
                                self.dilation)

    local = ("{b} (as a convolution)", "{a} (as a correlation)")
    vjp_text = ("conv2d({g}, {b})", "conv2d_weight_grad({g}, {a})")

    def vjp(self, z, g, k):
        dy, w = z.inputs
        if k == 0:
            return self.make(Conv2d, (g, w))
        return self.make(Conv2dWeightGrad, (g, dy), kernel=w.shape[2:])


@dataclass(frozen=True)
class Conv2dWeightGrad(_ConvGeometry):
    """d<g, conv2d(x, w)>/dw: the correlation of x with g, a (O, C/groups, kh, kw) array
    (kh, kw = ``kernel``)."""

    kernel: Pair

    name = "conv2d_weight_grad"

    def infer(self, inputs):
        x, g = inputs
        dtype = _float_dtype(self, inputs)
        if g.ndim != 4 or x.ndim != 4:
            self.fail("x must be (N, C_in, H, W) and g (N, C_out, Ho, Wo)", inputs)
        shape = (g.shape[1], x.shape[1] // self.groups, *self.kernel)
        if self.check(x.shape, shape, inputs) != g.shape[2:] or g.shape[0] != x.shape[0]:
            self.fail(f"g is not the output of a convolution of x with a {self.kernel} "
                      "kernel", inputs)
        return shape, dtype

    def evaluate(self, x, g):
        x, g = _common(x, g)
        n, o, gr = g.shape[0], g.shape[1], self.groups
        cols = self.columns(x, self.kernel)                           # (N, G, Cg*kh*kw, P)
        rows = g.reshape(n, gr, o // gr, g.shape[2] * g.shape[3])     # (N, G, O/G, P)
        dw = np.matmul(rows, cols.transpose(0, 1, 3, 2)).sum(axis=0)  # (G, O/G, Cg*kh*kw)
        return dw.reshape(o, x.shape[1] // gr, *self.kernel)

    local = ("{a} (as a correlation)", "{a} (as a convolution)")
    vjp_text = ("conv2d_input_grad({b}, {g})", "conv2d({a}, {g})")

    def vjp(self, z, g, k):
        x, dy = z.inputs
        if k == 0:
            return self.make(Conv2dInputGrad, (dy, g), in_hw=x.shape[2:])
        return self.make(Conv2d, (x, g))


# ---------------------------------------------------------------------------------------
# Max pooling: the pooled value, its scatter adjoint and its gather adjoint


@dataclass(frozen=True)
class _PoolGeometry(Op):
    """Window size, stride and padding (pairs) of a max pooling."""

    kernel: Pair
    stride: Pair
    padding: Pair

    def check(self, x, inputs) -> Pair:
        if x.ndim != 4:
            self.fail("input must be (N, C, H, W)", inputs)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel)):
            self.fail(f"padding {self.padding} must be at most half the window "
                      f"{self.kernel}", inputs)
        padded = tuple(n + 2 * p for n, p in zip(x.shape[2:], self.padding))
        if any(k > n for k, n in zip(self.kernel, padded)):
            self.fail(f"the window {self.kernel} is larger than the padded input "
                      f"{padded}", inputs)
        return tuple(out_size(n, k, s, p) for n, k, s, p in
                     zip(x.shape[2:], self.kernel, self.stride, self.padding))

    def positions(self, x_shape):
        """:func:`_positions` for this pooling of an input of ``x_shape``."""
        out_hw = tuple(out_size(n, k, s, p) for n, k, s, p in
                       zip(x_shape[2:], self.kernel, self.stride, self.padding))
        return [at for _, at in _positions(self.kernel, out_hw, self.stride, (1, 1))]

    def views(self, x: np.ndarray, fill) -> list[np.ndarray]:
        """The padded x seen from each window position, row-major: kh*kw strided
        (N, C, Ho, Wo) views, no copies."""
        xp = _pad(x, self.padding, fill)
        return [xp[at] for at in self.positions(x.shape)]

    def argmax(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each window's maximum and its position (row-major index in the window): the
        first maximum among the positions inside x (PyTorch's choice: padding, -inf, is
        never chosen, even where x is -inf), or the first NaN, which max propagates."""
        views = self.views(x, -np.inf)
        inside = self.views(np.ones(x.shape, bool), False) if any(self.padding) else None
        best = views[0].copy()
        for v in views[1:]:
            np.maximum(best, v, out=best)
        index = np.zeros(best.shape, np.uint8 if len(views) < 256 else np.intp)
        nan = bool(np.isnan(best).any())
        for i in range(len(views) - 1, -1, -1):  # the first match is written last
            hit = views[i] == best
            if nan:
                hit |= np.isnan(views[i])
            if inside is not None:
                hit &= inside[i]
            np.copyto(index, i, where=hit)
        return best, index

    def make(self, op_type, inputs) -> Tensor:
        return Tensor.make(op_type(self.kernel, self.stride, self.padding), inputs)


@dataclass(frozen=True)
class MaxPool2d(_PoolGeometry):
    """Maximum over each (kh, kw) window of x (N, C, H, W); padding counts as -inf."""

    name = "max_pool2d"

    def infer(self, inputs):
        (x,) = inputs
        dtype = _float_dtype(self, inputs)
        return x.shape[:2] + self.check(x, inputs), dtype

    def evaluate(self, x):
        views = self.views(x, -np.inf)
        out = views[0].copy()
        for v in views[1:]:
            np.maximum(out, v, out=out)  # propagates NaN, as the argmax rule routes to it
        return out

    local = ("[{x} is the first maximum of its window]",)
    vjp_text = ("{g} routed to each window's first maximum",)

    def vjp(self, z, g, k):
        return self.make(MaxPool2dGrad, (z.inputs[0], g))


@dataclass(frozen=True)
class MaxPool2dGrad(_PoolGeometry):
    """The adjoint of max pooling: g (pooled shape) added at the first maximum of each
    window of x, zeros elsewhere (overlapping windows accumulate)."""

    name = "max_pool2d_grad"

    def infer(self, inputs):
        x, g = inputs
        dtype = _float_dtype(self, inputs)
        if g.shape != x.shape[:2] + self.check(x, inputs):
            self.fail("g must have the shape of the pooled x", inputs)
        return x.shape, dtype

    def evaluate(self, x, g):
        _, index = self.argmax(x)
        (n, c, h, w), (ph, pw) = x.shape, self.padding
        out = np.zeros((n, c, h + 2 * ph, w + 2 * pw), np.result_type(x, g))
        for i, at in enumerate(self.positions(x.shape)):
            out[at] += np.where(index == i, g, 0)  # not (index == i) * g: 0 * inf is NaN
        return out[:, :, ph:ph + h, pw:pw + w]

    local = ("0 (piecewise constant)", "scatter to the first maxima of {a}")
    vjp_text = ("0", "max_pool2d_select({a}, {g})")

    def vjp(self, z, g, k):
        if k == 0:
            return None  # the argmax is locally constant in x
        return self.make(MaxPool2dSelect, (z.inputs[0], g))


@dataclass(frozen=True)
class MaxPool2dSelect(_PoolGeometry):
    """v (shape of x) read at the first maximum of each window of x: the adjoint of
    :class:`MaxPool2dGrad`; ``max_pool2d(x)`` equals ``max_pool2d_select(x, x)``."""

    name = "max_pool2d_select"

    def infer(self, inputs):
        x, v = inputs
        dtype = _float_dtype(self, inputs)
        if v.shape != x.shape:
            self.fail("v must have the shape of x", inputs)
        return x.shape[:2] + self.check(x, inputs), dtype

    def evaluate(self, x, v):
        _, index = self.argmax(x)
        out = np.zeros(index.shape, np.result_type(x, v))
        for i, view in enumerate(self.views(v, 0)):
            np.copyto(out, view, where=index == i)
        return out

    local = ("0 (piecewise constant)", "gather at the first maxima of {a}")
    vjp_text = ("0", "max_pool2d_grad({a}, {g})")

    def vjp(self, z, g, k):
        if k == 0:
            return None
        return self.make(MaxPool2dGrad, (z.inputs[0], g))


# ---------------------------------------------------------------------------------------
# Dropout


@dataclass(frozen=True)
class DropoutMask(Op):
    """The keep-mask of inverted dropout: ``np.random.default_rng(seed).random(shape) >= p``
    for the int scalar ``seed`` operand (bool, so it has no gradient)."""

    p: float
    target: tuple[int, ...]

    name = "dropout_mask"

    def infer(self, inputs):
        (seed,) = inputs
        if seed.shape != () or seed.dtype not in dtypes.INTS:
            self.fail("the seed must be an int32 or int64 scalar", inputs, DTypeError)
        return self.target, "bool"

    def evaluate(self, seed):
        if int(seed) < 0:
            raise ValueError(f"dropout seed must be non-negative, got {int(seed)}")
        return np.random.default_rng(int(seed)).random(self.target) >= self.p

    local = ("0",)
    vjp_text = ("0",)

    def vjp(self, z, g, k):
        return None


__all__ = ["Conv2d", "Conv2dInputGrad", "Conv2dWeightGrad", "MaxPool2d", "MaxPool2dGrad",
           "MaxPool2dSelect", "DropoutMask", "out_size"]
