"""``gc.nn``: layers as graph builders.

A module holds named parameters and builds graph nodes when called on a :class:`Tensor`;
it computes nothing itself.  Calling a module again reuses its parameters (weight sharing).
The nodes a module builds belong to ``gc.scope(module.name)``, so diagrams draw each layer
as a cluster (nested modules as nested clusters).

>>> import graphc as gc, graphc.nn
>>> model = gc.nn.Sequential(gc.nn.Dense(4, 8, activation="relu", name="fc1"),
...                          gc.nn.Dense(8, 3, name="fc2"), name="mlp")
>>> logits = model(gc.input("x", (2, 4)))
>>> logits.shape, logits.scope
((2, 3), 'mlp/fc2')
>>> list(model.parameters())
['fc1_W', 'fc1_b', 'fc2_W', 'fc2_b']

Graphs are static, so training and evaluation are two graphs: ``model(x, training=True)``
builds the training graph (dropout on, batch statistics) and ``model(x)`` the evaluation
graph.  Non-trainable state (batch-norm running statistics) is a named *input*; a training
call records the updated values (:meth:`Module.state_updates`), which the training step
returns and feeds back (see :mod:`graphc.train`).
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from . import functions as F
from . import nn_functions as NF
from .errors import GraphError, ShapeError
from .inputs import constant
from .ir import located
from .nn_module import (
    ACTIVATIONS,
    SEED_INPUT,
    GateInit,
    Module,
    _check_features,
    default_init,
    get_activation,
    initial_state,
    orthogonal,
    seed_input,
    state_input,
)
from .nn_recurrent import GRU, LSTM, RNN

# ---------------------------------------------------------------------------------------
# Dense and convolution


class Dense(Module):
    """``activation(x @ W + b)`` with W (n_in, n_out); x is (..., n_in).

    ``init`` defaults to He for ReLU-like activations and Xavier otherwise.  Equivalent to
    ``torch.nn.Linear(n_in, n_out)`` with ``weight = W.T``.
    """

    def __init__(self, n_in: int, n_out: int, activation=None, bias: bool = True, init=None,
                 name=None, dtype="float32"):
        super().__init__(name, dtype)
        self.n_in, self.n_out, self.act_name = n_in, n_out, activation
        self.act = get_activation(activation)
        self.add_param("W", (n_in, n_out), init or default_init(activation))
        if bias:
            self.add_param("b", (n_out,), "zeros")

    def forward(self, x, training=False):
        _check_features(self, x, -1, self.n_in)
        y = x @ self["W"]
        if "b" in self._specs:
            y = y + self["b"]
        return self.act(y) if self.act else y

    def extra_repr(self):
        act = f", {self.act_name}" if isinstance(self.act_name, str) else ""
        return f"{self.n_in} -> {self.n_out}{act}"


class Conv2d(Module):
    """2-D convolution, NCHW: ``activation(conv2d(x, W) + b)`` with W (out, in/groups, kh,
    kw), as ``torch.nn.Conv2d``.  ``init`` defaults to He before ReLU-like activations,
    Xavier otherwise (fans include the kernel size)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, activation=None, init=None,
                 name=None, dtype="float32"):
        super().__init__(name, dtype)
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        self.in_channels, self.out_channels = in_channels, out_channels
        self.geometry = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        self.act_name, self.act = activation, get_activation(activation)
        self.add_param("W", (out_channels, in_channels // groups, kh, kw),
                       init or default_init(activation))
        if bias:
            self.add_param("b", (out_channels,), "zeros")

    def forward(self, x, training=False):
        _check_features(self, x, 1, self.in_channels, "channels")
        g = self.geometry
        y = NF.conv2d(x, self["W"], g["stride"], g["padding"], dilation=g["dilation"],
                      groups=g["groups"], bias=self["b"] if "b" in self._specs else None)
        return self.act(y) if self.act else y

    def extra_repr(self):
        return f"{self.in_channels} -> {self.out_channels}, k={self._specs['W'][0][2:]}"


class MaxPool2d(Module):
    """Max pooling over k x k windows (``gc.max_pool2d``)."""

    def __init__(self, k, stride=None, padding=0, name=None):
        super().__init__(name)
        self.k, self.stride, self.padding = k, stride, padding

    def forward(self, x, training=False):
        return NF.max_pool2d(x, self.k, self.stride, self.padding)


class AvgPool2d(Module):
    """Average pooling over k x k windows (``gc.avg_pool2d``)."""

    def __init__(self, k, stride=None, padding=0, count_include_pad=True, name=None):
        super().__init__(name)
        self.k, self.stride, self.padding = k, stride, padding
        self.count_include_pad = count_include_pad

    def forward(self, x, training=False):
        return NF.avg_pool2d(x, self.k, self.stride, self.padding, self.count_include_pad)


class GlobalAvgPool2d(Module):
    """Mean over H and W: (N, C, H, W) -> (N, C)."""

    def forward(self, x, training=False):
        return NF.global_avg_pool2d(x)


class Flatten(Module):
    """(N, ...) -> (N, prod(...))."""

    def forward(self, x, training=False):
        return F.reshape(x, (x.shape[0], -1))


# ---------------------------------------------------------------------------------------
# Normalisation, dropout, embedding


class BatchNorm(Module):
    """Batch normalisation over the channel axis 1 of (N, C) or (N, C, H, W), as
    ``torch.nn.BatchNorm1d/2d``: learnable ``gamma`` (ones) and ``beta`` (zeros), and the
    running statistics as state inputs ``{name}_running_mean`` (zeros) and
    ``{name}_running_var`` (ones).  Training normalises with the batch statistics and
    records the updated running statistics (:meth:`Module.state_updates`); evaluation
    normalises with the running statistics."""

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5,
                 affine: bool = True, name=None, dtype="float32"):
        super().__init__(name, dtype)
        self.num_features, self.momentum, self.eps = num_features, momentum, eps
        if affine:
            self.add_param("gamma", (num_features,), "ones")
            self.add_param("beta", (num_features,), "zeros")
        self.add_state("running_mean", (num_features,), 0.0)
        self.add_state("running_var", (num_features,), 1.0)

    def forward(self, x, training=False):
        _check_features(self, x, 1, self.num_features, "channels")
        affine = "gamma" in self._specs
        gamma, beta = (self["gamma"], self["beta"]) if affine else (None, None)
        mean, var = self["running_mean"], self["running_var"]
        if not training:
            return NF.batch_norm(x, gamma, beta, mean, var, training=False, eps=self.eps)
        y, new_mean, new_var = NF.batch_norm(x, gamma, beta, mean, var, training=True,
                                             momentum=self.momentum, eps=self.eps)
        self._updates = {mean.op.label: new_mean, var.op.label: new_var}
        return y


class LayerNorm(Module):
    """Layer normalisation over the trailing ``normalized_shape`` axes, as
    ``torch.nn.LayerNorm``: ``gamma`` (ones) and ``beta`` (zeros) of that shape."""

    def __init__(self, normalized_shape, eps: float = 1e-5, affine: bool = True, name=None,
                 dtype="float32"):
        super().__init__(name, dtype)
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else \
            tuple(normalized_shape)
        self.normalized_shape, self.eps = shape, eps
        if affine:
            self.add_param("gamma", shape, "ones")
            self.add_param("beta", shape, "zeros")

    def forward(self, x, training=False):
        k = len(self.normalized_shape)
        if x.shape[x.ndim - k:] != self.normalized_shape:
            raise ShapeError(located(f"{self.name}: the trailing axes of {x.shape} must be "
                                     f"{self.normalized_shape}"))
        affine = "gamma" in self._specs
        return NF.layer_norm(x, self["gamma"] if affine else None,
                             self["beta"] if affine else None,
                             axis=tuple(range(x.ndim - k, x.ndim)), eps=self.eps)


class Dropout(Module):
    """Inverted dropout in training mode (kept values scaled by 1 / (1 - p)); identity in
    evaluation.  The mask is seeded by the ``dropout_seed`` input (fed a new value every
    step by the training step) mixed with a hash of the layer's name, so every layer draws
    its own mask."""

    def __init__(self, p: float = 0.5, name=None):
        super().__init__(name)
        self.p = p

    def forward(self, x, training=False):
        if not training or self.p == 0:
            return x
        salt = zlib.crc32(self.name.encode()) % 65521
        return NF.dropout(x, self.p, training=True, seed=seed_input() * 65521 + salt)

    def extra_repr(self):
        return f"p={self.p}"


class Embedding(Module):
    """A lookup table E (num_embeddings, dim), rows picked by integer indices, as
    ``torch.nn.Embedding`` (initialised N(0, 1))."""

    def __init__(self, num_embeddings: int, dim: int, init="normal", name=None,
                 dtype="float32"):
        super().__init__(name, dtype)
        self.num_embeddings, self.dim = num_embeddings, dim
        self.add_param("E", (num_embeddings, dim), init)

    def forward(self, indices, training=False):
        return NF.embedding(indices, self["E"])


# ---------------------------------------------------------------------------------------
# Attention


class MultiHeadAttention(Module):
    """Multi-head scaled dot-product attention over (N, T, D) sequences, as
    ``torch.nn.MultiheadAttention(D, heads, batch_first=True)``.

    ``mha(q)`` is self-attention; ``mha(q, k, v)`` attends from q (N, T, D) to k, v
    (N, S, D).  ``causal=True`` masks future positions; ``mask`` (bool, broadcastable to
    (N, heads, T, S), True = attend) masks more.  Weights follow ``x @ W``: W_q, W_k, W_v,
    W_o (D, D) (torch: ``in_proj_weight`` rows q, k, v, transposed; ``out_proj.weight.T``).
    """

    default_name = "attention"

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True,
                 causal: bool = False, dropout: float = 0.0, name=None, dtype="float32"):
        super().__init__(name, dtype)
        if embed_dim % num_heads:
            raise GraphError(located(f"embed_dim {embed_dim} is not divisible by num_heads "
                                     f"{num_heads}"))
        self.embed_dim, self.num_heads, self.causal = embed_dim, num_heads, causal
        self.dropout, self.bias = dropout, bias
        for k in ("q", "k", "v", "o"):
            self.add_param(f"W_{k}", (embed_dim, embed_dim), "xavier_normal")
            if bias:
                self.add_param(f"b_{k}", (embed_dim,), "zeros")

    def _project(self, x, k):
        y = x @ self[f"W_{k}"]
        return y + self[f"b_{k}"] if self.bias else y

    def _heads(self, x):
        n, t, _ = x.shape
        d = self.embed_dim // self.num_heads
        return F.transpose(F.reshape(x, (n, t, self.num_heads, d)), (0, 2, 1, 3))

    def forward(self, query, key=None, value=None, mask=None, training=False):
        key = query if key is None else key
        value = key if value is None else value
        for name, t in (("query", query), ("key", key), ("value", value)):
            if t.ndim != 3 or t.shape[2] != self.embed_dim:
                raise ShapeError(located(f"{self.name}: {name} must be (N, T, "
                                         f"{self.embed_dim}), got {t.shape}"))
        q, k, v = (self._heads(self._project(t, c)) for t, c in
                   ((query, "q"), (key, "k"), (value, "v")))
        d = self.embed_dim // self.num_heads
        scores = (q @ F.transpose(k, (0, 1, 3, 2))) * (1.0 / math.sqrt(d))
        scores = self._mask(scores, mask)
        weights = F.softmax(scores, axis=-1)
        if training and self.dropout:
            salt = zlib.crc32(self.name.encode()) % 65521
            weights = NF.dropout(weights, self.dropout, seed=seed_input() * 65521 + salt)
        out = F.transpose(weights @ v, (0, 2, 1, 3))
        out = F.reshape(out, (query.shape[0], query.shape[1], self.embed_dim))
        return self._project(out, "o")

    def _mask(self, scores, mask):
        t, s = scores.shape[-2:]
        blocked = np.zeros((t, s), dtype=bool)
        if self.causal:
            blocked |= np.triu(np.ones((t, s), dtype=bool), k=1)
        if blocked.any():
            scores = scores + constant(np.where(blocked, -1e9, 0.0).astype(scores.dtype))
        if mask is not None:
            scores = F.where(mask, scores, constant(-1e9, dtype=scores.dtype))
        return scores

    def extra_repr(self):
        return f"{self.embed_dim}, heads={self.num_heads}" + (", causal" if self.causal else "")


# ---------------------------------------------------------------------------------------
# Composition


class Sequential(Module):
    """Layers applied in order; a layer is a Module or a plain function of one tensor
    (``gc.relu``).  ``training`` is passed on to every Module."""

    def __init__(self, *layers, name=None):
        super().__init__(name)
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        self.layers = [self.add_module(layer) for layer in layers]

    def forward(self, x, training=False):
        for layer in self.layers:
            x = layer(x, training=training) if isinstance(layer, Module) else layer(x)
        return x

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)


class Residual(Module):
    """``activation(block(x) + shortcut(x))``; the shortcut defaults to the identity."""

    def __init__(self, block, shortcut=None, activation=None, name=None):
        super().__init__(name)
        self.block = self.add_module(block)
        self.shortcut = None if shortcut is None else self.add_module(shortcut)
        self.act = get_activation(activation)

    def forward(self, x, training=False):
        y = _apply(self.block, x, training)
        skip = x if self.shortcut is None else _apply(self.shortcut, x, training)
        if y.shape != skip.shape:
            raise ShapeError(located(f"{self.name}: the block gives {y.shape} but the "
                                     f"shortcut {skip.shape}; give a shortcut that projects"))
        y = y + skip
        return self.act(y) if self.act else y


def _apply(layer, x, training):
    return layer(x, training=training) if isinstance(layer, Module) else layer(x)


__all__ = [
    "ACTIVATIONS", "AvgPool2d", "BatchNorm", "Conv2d", "Dense", "Dropout", "Embedding",
    "Flatten", "GRU", "GateInit", "GlobalAvgPool2d", "LSTM", "LayerNorm", "MaxPool2d",
    "Module", "MultiHeadAttention", "RNN", "Residual", "SEED_INPUT", "Sequential",
    "default_init", "get_activation", "initial_state", "orthogonal", "seed_input",
    "state_input",
]
