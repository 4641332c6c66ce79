"""Public functions for neural-network layers: convolution, pooling, normalisation,
dropout and embedding (NCHW layout, PyTorch's conventions).

``conv2d`` and ``max_pool2d`` build the structured ops of :mod:`graphc.nn_ops`; everything
else is a composition of existing ops (average pooling is a convolution with a constant
kernel, the norms are means, squares and a square root, dropout a product with a mask,
embedding a gather), so it needs no derivative rule of its own.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from . import dtypes
from . import functions as F
from . import nn_ops as nn
from . import structured_ops as st
from .dynamic import dynamic
from .errors import DTypeError, GraphError, ShapeError
from .inputs import as_tensor, constant, lift_all
from .ir import Tensor, located


def _pair(op_name: str, what: str, value, low: int) -> tuple[int, int]:
    """``value`` (an int or a pair of ints) as a pair, each at least ``low``."""
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value) \
        if isinstance(value, Iterable) else ()
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                 for v in pair) or min(pair) < low:
        raise ShapeError(located(f"{op_name}: {what} must be an int >= {low} or a pair of "
                                 f"them, got {value!r}"))
    return int(pair[0]), int(pair[1])


def _float_tensor(op_name: str, x) -> Tensor:
    x = as_tensor(x)
    if not dtypes.is_float(x.dtype):
        raise DTypeError(located(f"{op_name}: takes a float tensor, got {x.dtype} "
                                 f"(operand: {x.shape} {x.dtype})"))
    return x


# ---------------------------------------------------------------------------------------
# Convolution and pooling


@dynamic
def conv2d(x, w, stride=1, padding=0, *, dilation=1, groups=1, bias=None) -> Tensor:
    """2-D cross-correlation, NCHW, as ``torch.nn.functional.conv2d``.

    ``x`` is (N, C, H, W), ``w`` is (C_out, C / groups, kh, kw); ``stride``, ``padding``
    (zeros on both sides) and ``dilation`` are ints or (h, w) pairs; ``bias`` (C_out,) is
    added per output channel.  The output is (N, C_out, Ho, Wo) with
    Ho = (H + 2 padding - dilation (kh - 1) - 1) // stride + 1.

    >>> import graphc as gc
    >>> from graphc.nn_functions import conv2d
    >>> y = conv2d(gc.input("x", (8, 3, 32, 32)), gc.param("w", (16, 3, 3, 3)), padding=1)
    >>> y.shape
    (8, 16, 32, 32)
    """
    x, w = lift_all([x, w], "conv2d")
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1:
        raise ShapeError(located(f"conv2d: groups must be a positive int, got {groups!r}"))
    op = nn.Conv2d(_pair("conv2d", "stride", stride, 1), _pair("conv2d", "padding", padding, 0),
                   _pair("conv2d", "dilation", dilation, 1), int(groups))
    return _channel_bias("conv2d", Tensor.make(op, (x, w)), bias)


def _channel_bias(name, y, bias) -> Tensor:
    """``y`` (N, C, H, W) plus a bias of shape (C,) on every channel, if one is given."""
    if bias is None:
        return y
    bias = as_tensor(bias)
    if bias.shape != (y.shape[1],):
        raise ShapeError(located(f"{name}: bias must have shape ({y.shape[1]},), got "
                                 f"{bias.shape}"))
    return y + F.reshape(bias, (1, -1, 1, 1))


def _pool_geometry(name, x, k, stride, padding):
    kernel = _pair(name, "the window k", k, 1)
    stride = kernel if stride is None else _pair(name, "stride", stride, 1)
    return kernel, stride, _pair(name, "padding", padding, 0)


@dynamic
def max_pool2d(x, k, stride=None, padding=0, ceil_mode=False) -> Tensor:
    """Maximum over k x k windows (or (kh, kw)) of x (N, C, H, W), as PyTorch's
    ``max_pool2d``; ``stride`` defaults to ``k``, padding (at most k / 2) counts as -inf;
    ``ceil_mode=True`` keeps a last, partial window that starts inside the input.

    The gradient goes to the first maximum of each window in row-major order (PyTorch's
    choice for ties); overlapping windows accumulate.

    >>> import graphc as gc
    >>> from graphc.nn_functions import max_pool2d
    >>> max_pool2d(gc.input("x", (8, 6, 24, 24)), 2).shape
    (8, 6, 12, 12)
    >>> max_pool2d(gc.input("x", (1, 1, 5, 5)), 2, ceil_mode=True).shape
    (1, 1, 3, 3)
    """
    x = _float_tensor("max_pool2d", x)
    kernel, stride, padding = _pool_geometry("max_pool2d", x, k, stride, padding)
    if not ceil_mode:
        return Tensor.make(nn.MaxPool2d(kernel, stride, padding), (x,))
    return pool2d("max", x, kernel, stride, tuple((p, p) for p in padding), ceil_mode=True)


@dynamic
def avg_pool2d(x, k, stride=None, padding=0, count_include_pad=True, ceil_mode=False) -> Tensor:
    """Mean over k x k windows (or (kh, kw)) of x (N, C, H, W), as PyTorch's
    ``avg_pool2d``; ``stride`` defaults to ``k``.  Zero padding counts in the mean unless
    ``count_include_pad=False``; ``ceil_mode=True`` keeps a last, partial window that
    starts inside the input (its overhang never counts).

    A composition: a convolution of every channel with a kernel of ones, scaled.

    >>> import graphc as gc
    >>> from graphc.nn_functions import avg_pool2d
    >>> avg_pool2d(gc.input("x", (8, 6, 24, 24)), 2).shape
    (8, 6, 12, 12)
    """
    x = _float_tensor("avg_pool2d", x)
    kernel, stride, padding = _pool_geometry("avg_pool2d", x, k, stride, padding)
    if any(2 * p > q for p, q in zip(padding, kernel)):
        raise ShapeError(located(f"avg_pool2d: padding {padding} must be at most half the "
                                 f"window {kernel} (operand: {x.shape} {x.dtype})"))
    padded = tuple(n + 2 * p for n, p in zip(x.shape[-2:], padding))
    if any(k > n for k, n in zip(kernel, padded)):
        raise ShapeError(located(f"avg_pool2d: the window {kernel} is larger than the "
                                 f"padded input {padded} (operand: {x.shape} {x.dtype})"))
    return pool2d("avg", x, kernel, stride, tuple((p, p) for p in padding),
                  count_include_pad=count_include_pad, ceil_mode=ceil_mode)


def _ceil_extra(n: int, k: int, s: int, before: int, after: int) -> int:
    """The padding ceil mode adds after an axis of ``n``: enough for one more window when
    the stride leaves a remainder, as long as that window starts inside the input or its
    leading padding (PyTorch's and ONNX's rule)."""
    out = -(-(n + before + after - k) // s) + 1
    if (out - 1) * s >= n + before:
        out -= 1
    return max(0, (out - 1) * s + k - (n + before + after))


@dynamic
def pool2d(kind, x, kernel, stride, pads, count_include_pad=True, ceil_mode=False) -> Tensor:
    """Max (``kind="max"``) or average (``"avg"``) pooling of x (N, C, H, W) with any
    ``pads`` ((top, bottom), (left, right)), as ONNX's MaxPool and AveragePool: the input
    is padded explicitly (with -inf for max, zeros for avg), so pads may be asymmetric and
    as wide as the window.  Average pooling divides by the number of window elements that
    lie in the input (and in ``pads`` when ``count_include_pad``); the ceil-mode overhang
    never counts."""
    if x.ndim != 4:
        raise ShapeError(located(f"{kind}_pool2d: input must be (N, C, H, W), got {x.shape}"))
    extra = tuple(_ceil_extra(n, k, s, b, a) if ceil_mode else 0 for n, k, s, (b, a) in
                  zip(x.shape[2:], kernel, stride, pads))
    full = ((0, 0), (0, 0)) + tuple((b, a + e) for (b, a), e in zip(pads, extra))
    if kind == "max":
        padded = F.pad(x, full, value=-np.inf)
        return Tensor.make(nn.MaxPool2d(kernel, stride, (0, 0)), (padded,))
    n, c, h, w = x.shape
    padded = F.pad(x, full)
    ones = constant(np.ones((1, 1) + kernel, dtype=x.dtype))
    total = conv2d(F.reshape(padded, (n * c, 1) + padded.shape[2:]), ones, stride)
    total = F.reshape(total, (n, c) + total.shape[2:])
    inside = np.pad(np.ones((h, w)), pads, constant_values=1.0 if count_include_pad else 0.0)
    inside = np.pad(inside, tuple((0, e) for e in extra))[None, None]
    counts = nn.Conv2d(stride, (0, 0), (1, 1), 1).evaluate(inside, np.ones((1, 1) + kernel))
    if np.all(counts == kernel[0] * kernel[1]):
        return total * (1.0 / (kernel[0] * kernel[1]))
    return total / constant(counts.astype(x.dtype))


@dynamic
def global_avg_pool2d(x) -> Tensor:
    """Mean over the spatial axes of x (N, C, H, W): an (N, C) tensor, as
    ``adaptive_avg_pool2d(x, 1)`` flattened."""
    x = _float_tensor("global_avg_pool2d", x)
    if x.ndim != 4:
        raise ShapeError(located(f"global_avg_pool2d: input must be (N, C, H, W), got "
                                 f"{x.shape}"))
    return F.mean(x, axis=(2, 3))


# ---------------------------------------------------------------------------------------
# Normalisation


def _per_channel(name, what, t, channels, shape):
    """An optional per-channel tensor ``t`` of shape ``channels`` reshaped to broadcast."""
    if t is None:
        return None
    t = as_tensor(t)
    if t.shape != channels:
        raise ShapeError(located(f"{name}: {what} must have shape {channels}, got {t.shape}"))
    return F.reshape(t, shape)


def _normalize(x, mean, var, eps, gamma, beta):
    y = (x - mean) / F.sqrt(var + eps)
    if gamma is not None:
        y = y * gamma
    return y + beta if beta is not None else y


@dynamic
def batch_norm(x, gamma=None, beta=None, running_mean=None, running_var=None, training=True,
               momentum=0.1, eps=1e-5):
    """Batch normalisation of x (N, C) or (N, C, H, W) per channel, as PyTorch's
    ``batch_norm``: y = (x - mean) / sqrt(var + eps) * gamma + beta.

    Training (``training=True``) normalises with the batch's mean and biased variance.
    Graphs are pure, so the running statistics are *returned*, not updated in place: with
    ``running_mean`` and ``running_var`` given, the result is the tuple
    ``(y, new_running_mean, new_running_var)`` where
    new = (1 - momentum) * running + momentum * batch statistic (the variance unbiased,
    times n / (n - 1)); the training loop feeds the new values back at the next step.
    Without running statistics the result is ``y`` alone.  Evaluation
    (``training=False``) normalises with ``running_mean`` and ``running_var`` (required)
    and returns ``y``.

    >>> import graphc as gc
    >>> from graphc.nn_functions import batch_norm
    >>> x, m, v = gc.input("x", (32, 4)), gc.input("m", (4,)), gc.input("v", (4,))
    >>> y, m1, v1 = batch_norm(x, running_mean=m, running_var=v, training=True)
    >>> batch_norm(x, running_mean=m, running_var=v, training=False).shape
    (32, 4)
    """
    x = _float_tensor("batch_norm", x)
    if x.ndim < 2:
        raise ShapeError(located(f"batch_norm: input must be (N, C) or (N, C, H, W), got "
                                 f"{x.shape}"))
    if (running_mean is None) != (running_var is None):
        raise GraphError(located("batch_norm: give both running_mean and running_var, "
                                 "or neither"))
    if running_mean is not None:
        running_mean, running_var = as_tensor(running_mean), as_tensor(running_var)
    c = (x.shape[1],)
    shape = (1,) + c + (1,) * (x.ndim - 2)
    gamma, beta, mean0, var0 = (_per_channel("batch_norm", what, t, c, shape) for what, t in
                                (("gamma", gamma), ("beta", beta),
                                 ("running_mean", running_mean), ("running_var", running_var)))
    if not training:
        if mean0 is None:
            raise GraphError(located("batch_norm: evaluation (training=False) needs "
                                     "running_mean and running_var"))
        return _normalize(x, mean0, var0, eps, gamma, beta)
    axes = (0,) + tuple(range(2, x.ndim))
    n = x.size // x.shape[1]
    if n < 2:
        raise ShapeError(located(f"batch_norm: training needs more than one value per "
                                 f"channel, got input {x.shape}"))
    mean = F.mean(x, axes, keepdims=True)
    var = F.mean(F.square(x - mean), axes, keepdims=True)
    y = _normalize(x, mean, var, eps, gamma, beta)
    if mean0 is None:
        return y
    new_mean = (1 - momentum) * running_mean + momentum * F.reshape(mean, c)
    new_var = (1 - momentum) * running_var + (momentum * n / (n - 1)) * F.reshape(var, c)
    return y, new_mean, new_var


@dynamic
def layer_norm(x, gamma=None, beta=None, axis=-1, eps=1e-5) -> Tensor:
    """Layer normalisation over ``axis`` (an int or a tuple; -1: the last axis), as
    PyTorch's ``layer_norm`` with ``normalized_shape = x.shape[axis:]``:
    y = (x - mean) / sqrt(var + eps) * gamma + beta, biased variance; ``gamma`` and ``beta``
    have the shape of the normalised axes.

    >>> import graphc as gc
    >>> from graphc.nn_functions import layer_norm
    >>> layer_norm(gc.input("x", (4, 10, 16)), gc.param("g", (16,), init="ones")).shape
    (4, 10, 16)
    """
    x = _float_tensor("layer_norm", x)
    axes = st.normalize_axes(st.Reduce("layer_norm", ()), axis, x.ndim, (x,))  # names us
    kept = tuple(d if i in axes else 1 for i, d in enumerate(x.shape))
    normalized = tuple(x.shape[a] for a in axes)
    gamma = _per_channel("layer_norm", "gamma", gamma, normalized, kept)
    beta = _per_channel("layer_norm", "beta", beta, normalized, kept)
    mean = F.mean(x, axes, keepdims=True)
    var = F.mean(F.square(x - mean), axes, keepdims=True)
    return _normalize(x, mean, var, eps, gamma, beta)


@dynamic
def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0) -> Tensor:
    """Local response normalisation across channels of x (N, C, ...), as PyTorch's
    ``local_response_norm``: y = x / (k + alpha / size * S)^beta, S the sum of x^2 over
    ``size`` neighbouring channels (size // 2 before, (size - 1) // 2 after, zeros past
    the edges).  A composition: a padded sum of channel slices, a power and a quotient.

    >>> import graphc as gc
    >>> from graphc.nn_functions import local_response_norm
    >>> local_response_norm(gc.input("x", (2, 8, 5, 5)), 5).shape
    (2, 8, 5, 5)
    """
    return lrn(x, size, size // 2, (size - 1) // 2, alpha, beta, k)


@dynamic
def lrn(x, size, before, after, alpha, beta, k) -> Tensor:
    """:func:`local_response_norm` with the channel window ``before`` and ``after`` each
    channel given (ONNX's LRN puts the longer side after: (size - 1) // 2 before)."""
    x = _float_tensor("local_response_norm", x)
    if x.ndim < 3:
        raise ShapeError(located(f"local_response_norm: input must be (N, C, ...), got "
                                 f"{x.shape}"))
    if not isinstance(size, (int, np.integer)) or size < 1 or before + after + 1 != size:
        raise ShapeError(located(f"local_response_norm: size must be a positive int, got "
                                 f"{size!r}"))
    c = x.shape[1]
    sq = F.pad(F.square(x), ((0, 0), (before, after)) + ((0, 0),) * (x.ndim - 2))
    total = sq[:, 0:c]
    for i in range(1, size):
        total = total + sq[:, i:i + c]
    return x / (k + (alpha / size) * total) ** beta


# ---------------------------------------------------------------------------------------
# Dropout and embedding


@dynamic
def dropout(x, p=0.5, training=True, seed=0) -> Tensor:
    """Inverted dropout: y = x * mask / (1 - p) with mask ~ Bernoulli(1 - p), so the
    expected value of y is x; ``training=False`` (or p = 0) returns x itself.

    The mask is ``np.random.default_rng(seed).random(x.shape) >= p``: deterministic given
    ``seed``, an int or an int scalar tensor.  For a fresh mask each step feed the seed:
    ``step = gc.input("step", (), "int64")`` and ``dropout(h, 0.5, seed=step)``; give each
    layer its own seed (``seed=step * 2 + 1``), since equal seeds draw equal masks for equal
    shapes.  The gradient is mask / (1 - p).

    >>> import graphc as gc, numpy as np
    >>> from graphc.nn_functions import dropout
    >>> x = gc.input("x", (4, 5))
    >>> y = dropout(x, 0.5, seed=7)
    >>> out = gc.compile(y, backend="numpy")(x=np.ones((4, 5), np.float32))
    >>> sorted(set(out.ravel().tolist())) == [0.0, 2.0]
    True
    """
    x = _float_tensor("dropout", x)
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating)) or not 0 <= p <= 1:
        raise GraphError(located(f"dropout: p must be a probability in [0, 1], got {p!r}"))
    if not training or p == 0:
        return x
    if p == 1:
        return x * 0.0
    if isinstance(seed, Tensor):
        seed_t = seed
    elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0:
        seed_t = constant(int(seed), dtype="int64")
    else:
        raise GraphError(located(f"dropout: seed must be a non-negative int or an int scalar "
                                 f"tensor, got {seed!r}"))
    keep = Tensor.make(nn.DropoutMask(float(p), x.shape), (seed_t,))
    return x * (F.cast(keep, x.dtype) / (1.0 - float(p)))


@dynamic
def embedding(indices, table) -> Tensor:
    """Rows of ``table`` (num_embeddings, dim) picked by an integer tensor ``indices`` of
    any shape: an ``indices.shape + (dim,)`` tensor, as ``torch.nn.functional.embedding``.
    The gradient scatter-adds into the picked rows (repeated indices accumulate).

    >>> import graphc as gc
    >>> from graphc.nn_functions import embedding
    >>> embedding(gc.input("tokens", (2, 7), "int64"), gc.param("E", (100, 16))).shape
    (2, 7, 16)
    """
    table = as_tensor(table)
    if table.ndim != 2:
        raise ShapeError(located(f"embedding: the table must be (num_embeddings, dim), got "
                                 f"{table.shape}"))
    return F.take(table, indices)


__all__ = ["conv2d", "max_pool2d", "avg_pool2d", "global_avg_pool2d", "batch_norm",
           "layer_norm", "local_response_norm", "dropout", "embedding"]


# ---------------------------------------------------------------------------------------
# 1-D and transposed convolution: the 2-D convolution and its input adjoint


def _one(op_name: str, what: str, value, low: int) -> int:
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ShapeError(located(f"{op_name}: {what} must be an int >= {low}, got {value!r}"))
    return int(value)


@dynamic
def conv1d(x, w, stride=1, padding=0, *, dilation=1, groups=1, bias=None) -> Tensor:
    """1-D cross-correlation, NCL, as ``torch.nn.functional.conv1d``: ``x`` (N, C, L), ``w``
    (C_out, C / groups, k); the 2-D convolution of x seen as (N, C, 1, L).

    >>> import graphc as gc
    >>> gc.conv1d(gc.input("x", (2, 3, 10)), gc.param("w", (4, 3, 3)), padding=1).shape
    (2, 4, 10)
    """
    x, w = lift_all([x, w], "conv1d")
    if x.ndim != 3 or w.ndim != 3:
        raise ShapeError(located(f"conv1d: input must be (N, C, L) and kernel (C_out, "
                                 f"C_in/groups, k), got {x.shape} and {w.shape}"))
    geometry = [(low, _one("conv1d", name, v, low)) for name, v, low in
                (("stride", stride, 1), ("padding", padding, 0), ("dilation", dilation, 1))]
    y = conv2d(F.reshape(x, (x.shape[0], x.shape[1], 1, x.shape[2])),
               F.reshape(w, (w.shape[0], w.shape[1], 1, w.shape[2])), *geometry[:2],
               dilation=geometry[2], groups=groups, bias=bias)
    return F.reshape(y, (y.shape[0], y.shape[1], y.shape[3]))


@dynamic
def conv_transpose2d(x, w, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                     bias=None) -> Tensor:
    """Transposed 2-D convolution, NCHW, as ``torch.nn.functional.conv_transpose2d``
    (the gradient of conv2d with respect to its input): ``x`` (N, C_in, H, W), ``w`` (C_in,
    C_out / groups, kh, kw); the output is (N, C_out, Ho, Wo) with Ho = (H - 1) stride -
    2 padding + dilation (kh - 1) + output_padding + 1.

    >>> import graphc as gc
    >>> gc.conv_transpose2d(gc.input("x", (1, 4, 5, 5)), gc.param("w", (4, 2, 3, 3)),
    ...                     stride=2, padding=1, output_padding=1).shape
    (1, 2, 10, 10)
    """
    x, w = lift_all([x, w], "conv_transpose2d")
    if x.ndim != 4 or w.ndim != 4:
        raise ShapeError(located(f"conv_transpose2d: input must be (N, C_in, H, W) and kernel "
                                 f"(C_in, C_out/groups, kh, kw), got {x.shape} and {w.shape}"))
    s, p = _pair("conv_transpose2d", "stride", stride, 1), \
        _pair("conv_transpose2d", "padding", padding, 0)
    d = _pair("conv_transpose2d", "dilation", dilation, 1)
    op_ = _pair("conv_transpose2d", "output_padding", output_padding, 0)
    if any(o >= max(si, di) for o, si, di in zip(op_, s, d)):
        raise ShapeError(located(f"conv_transpose2d: output_padding {op_} must be smaller "
                                 f"than the stride {s} or the dilation {d}"))
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1 \
            or x.shape[1] % groups or x.shape[1] != w.shape[0]:
        raise ShapeError(located(f"conv_transpose2d: the kernel {w.shape} must have the "
                                 f"input's {x.shape[1]} channels first, and groups={groups!r} "
                                 "must divide them"))
    in_hw = tuple((n - 1) * si - 2 * pi + di * (k - 1) + o + 1 for n, si, pi, di, k, o in
                  zip(x.shape[2:], s, p, d, w.shape[2:], op_))
    if min(in_hw) < 1:
        raise ShapeError(located(f"conv_transpose2d: the output would be {in_hw}"))
    return _channel_bias("conv_transpose2d",
                         Tensor.make(nn.Conv2dInputGrad(s, p, d, int(groups), in_hw), (x, w)),
                         bias)
