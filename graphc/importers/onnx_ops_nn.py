"""The ONNX ops of neural-network layers ``gc.from_onnx`` imports: matrix products,
convolution, pooling, normalisation, dropout and softmax, each a function from one ONNX node
to graphc tensors built with the public functions (registered in
:mod:`graphc.importers.onnx_op_table`'s ``SUPPORTED``; :mod:`graphc.importers.onnx_ops` has
the rest)."""

from __future__ import annotations

import math

import numpy as np

from .. import functions as F
from .. import nn_functions as nf
from ..inputs import constant
from ..ir import Tensor
from .onnx_op_table import Call, axis_index, onnx_op


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
    axes = tuple(range(axis_index(c.attr("axis", -1), x.ndim), x.ndim))
    eps = c.attr("epsilon", 1e-5)
    m = F.mean(x, axes, keepdims=True)
    inv = F.reciprocal(F.sqrt(F.mean(F.square(x - m), axes, keepdims=True) + eps))
    return nf.layer_norm(x, c.x(1), c.x(2), axes, eps), m, inv


@onnx_op("InstanceNormalization")
def _instance_normalization(c: Call):
    """Each sample's channels normalised over the spatial axes (biased variance), then
    ``scale`` and ``B`` per channel (as torch exports nn.InstanceNorm1d/2d/3d)."""
    x, scale, bias = c.x(0), c.x(1), c.x(2)
    if x.ndim < 3:
        c.unsupported(f"an input of shape {x.shape} (it needs spatial axes)")
    y = nf.layer_norm(x, axis=tuple(range(2, x.ndim)), eps=c.attr("epsilon", 1e-5))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return y * F.reshape(scale, shape) + F.reshape(bias, shape)


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
    axis = axis_index(axis, x.ndim)  # before opset 13: over the flattened axes from ``axis`` on
    rows = F.reshape(x, (math.prod(x.shape[:axis]), math.prod(x.shape[axis:])))
    return F.reshape(fn(rows, 1), x.shape)
