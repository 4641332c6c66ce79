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

import contextlib
import itertools
import math
import re
import weakref
import zlib
from dataclasses import dataclass

import numpy as np

from . import functions as F
from . import ir
from . import nn_functions as NF
from .errors import GraphError, ShapeError
from .graph import as_outputs
from .inputs import constant, init_params, input, param
from .ir import Tensor, located, scope
from .scan import scan

# ---------------------------------------------------------------------------------------
# Activations and initializers

ACTIVATIONS = {
    "relu": F.relu, "tanh": F.tanh, "sigmoid": F.sigmoid, "gelu": F.gelu, "silu": F.silu,
    "elu": F.elu, "leaky_relu": F.leaky_relu, "softplus": F.softplus,
}
_RELU_LIKE = {"relu", "leaky_relu", "elu", "gelu", "silu"}


def get_activation(spec):
    """The activation function named by ``spec`` (a name of :data:`ACTIVATIONS`, a
    callable, or ``None`` / ``"linear"`` for none)."""
    if spec is None or spec in ("linear", "identity"):
        return None
    if callable(spec):
        return spec
    if spec in ACTIVATIONS:
        return ACTIVATIONS[spec]
    raise GraphError(located(f"unknown activation {spec!r}; use one of "
                             f"{', '.join(ACTIVATIONS)}, None or a callable"))


def default_init(act) -> str:
    """He initialisation (sigma = sqrt(2 / fan_in)) before ReLU-like activations, Xavier
    (sigma = sqrt(2 / (fan_in + fan_out))) otherwise."""
    return "he_normal" if act in _RELU_LIKE else "xavier_normal"


def orthogonal(shape, rng) -> np.ndarray:
    """A random (semi-)orthogonal matrix (QR of a Gaussian matrix, signs fixed)."""
    rows, cols = shape
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))
    return q if rows >= cols else q.T


@dataclass(frozen=True)
class GateInit:
    """Initialise a (fan_in, gates * hidden) recurrent weight one gate block at a time, so
    each gate gets the statistics of its own (fan_in, hidden) matrix."""

    gates: int
    kind: str = "xavier_normal"  # or "orthogonal"

    def __call__(self, shape, rng):
        fan_in, width = shape
        hidden = width // self.gates
        blocks = []
        for _ in range(self.gates):
            if self.kind == "orthogonal":
                blocks.append(orthogonal((fan_in, hidden), rng))
            else:
                blocks.append(rng.normal(0.0, math.sqrt(2.0 / (fan_in + hidden)),
                                         (fan_in, hidden)))
        return np.concatenate(blocks, axis=1)


# ---------------------------------------------------------------------------------------
# Names, scopes and graph-level helpers (state inputs, dropout seeds, stop_gradient)

_COUNTERS: dict[str, itertools.count] = {}
SEED_INPUT = "dropout_seed"


def _snake(cls_name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", cls_name).lower()


def _unique_name(cls, name) -> str:
    if name is None:
        base = getattr(cls, "default_name", None) or _snake(cls.__name__)
        return f"{base}_{next(_COUNTERS.setdefault(base, itertools.count(1)))}"
    if not isinstance(name, str) or not name.isidentifier():
        raise GraphError(located(f"a module name must be a Python identifier (it names "
                                 f"parameters and scopes), got {name!r}"))
    return name


@contextlib.contextmanager
def _absolute_scope(path):
    """Build inside the scope ``"/".join(path)`` whatever scope is open now."""
    saved = list(ir._SCOPES)
    ir._SCOPES.clear()
    try:
        with contextlib.ExitStack() as stack:
            for part in path:
                stack.enter_context(scope(part))
            yield
    finally:
        ir._SCOPES[:] = saved


_STATE_INIT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def state_input(name: str, shape, fill: float = 0.0, dtype="float32") -> Tensor:
    """A non-trainable state input (e.g. a running statistic) whose initial value is
    ``fill``; :func:`initial_state` reads it back for training steps."""
    t = input(name, shape, dtype)
    _STATE_INIT[t] = float(fill)
    return t


def initial_state(tensors) -> dict[str, np.ndarray]:
    """Initial values of state inputs made by :func:`state_input` (zeros otherwise)."""
    return {t.op.label: np.full(t.shape, _STATE_INIT.get(t, 0.0), dtype=t.dtype)
            for t in tensors}


def is_state_input(t: Tensor) -> bool:
    """Whether ``t`` was made by :func:`state_input`."""
    return t in _STATE_INIT


def seed_input() -> Tensor:
    """The int64 scalar input ``dropout_seed``; training steps feed a new value each step."""
    return input(SEED_INPUT, (), "int64")


_CUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CUT_IDS = itertools.count()


def stop_gradient(t: Tensor, name: str | None = None) -> Tensor:
    """``t``'s value with no gradient path back through ``t``.

    Unlike the op ``gc.stop_gradient``, this returns a fresh *input* (named ``name``,
    default ``cut_<k>``) that stands for ``t``.  Training and evaluation steps
    (:mod:`graphc.train`) feed it with ``t``'s value, computed in a forward-only pre-pass
    (:func:`resolve_cuts`); with plain ``gc.compile`` feed it yourself.  Truncated BPTT of
    the unrolled layers (``LSTM(..., truncate=k, unroll=True)``) is built on it; the
    default, scanned layers truncate inside the scan.
    """
    k = next(_CUT_IDS)
    cut = input(name or f"cut_{k}", t.shape, t.dtype)
    if cut in _CUTS:
        raise GraphError(located(f"stop_gradient: the name {cut.op.label!r} is taken"))
    _CUTS[cut] = (k, t)
    return cut


def resolve_cuts(outputs) -> dict[str, Tensor]:
    """For every :func:`stop_gradient` input that ``outputs`` depend on (directly or through
    other cuts' values), the tensor computing its value from ordinary inputs only."""
    found, todo, seen = {}, list(as_outputs(outputs)), set()
    while todo:  # one walk over the graph and the cuts' sources
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node in _CUTS:
            found[node] = _CUTS[node]
            todo.append(_CUTS[node][1])
        todo.extend(node.inputs)
    memo: dict[int, Tensor] = {}
    resolved = {}
    # A cut's source can only use cuts made before it: resolve in creation order.
    for cut, (_, source) in sorted(found.items(), key=lambda kv: kv[1][0]):
        resolved[cut.op.label] = memo[id(cut)] = _substitute(source, memo)
    return resolved


def _substitute(root: Tensor, memo: dict[int, Tensor]) -> Tensor:
    """``root`` rebuilt with the resolved cut inputs in ``memo`` put in; nodes resolved
    for earlier cuts are not visited again."""
    stack = [(root, False)]
    while stack:
        node, ready = stack.pop()
        if id(node) in memo:
            continue
        if ready:  # every operand is in memo now (post-order)
            inputs = [memo[id(i)] for i in node.inputs]
            same = all(a is b for a, b in zip(inputs, node.inputs))
            memo[id(node)] = node if same else node.replace(inputs=inputs)
        elif node in _CUTS:
            raise GraphError(f"stop_gradient input {node.op.label!r} is used before its "
                             "value exists")
        else:
            stack.append((node, True))
            stack.extend((i, False) for i in node.inputs if id(i) not in memo)
    return memo[id(root)]


# ---------------------------------------------------------------------------------------
# The Module base


class Module:
    """Base of every layer: a builder of graph nodes with named parameters.

    Subclasses declare parameters with :meth:`add_param`, state with :meth:`add_state`,
    sub-modules with :meth:`add_module`, and implement ``forward(x, ..., training)``.
    Parameters are created (as ``gc.param(f"{name}_{key}", ...)``) the first time the
    module is called or asked for :meth:`parameters`, inside the module's scope.
    """

    default_name: str | None = None

    def __init__(self, name=None, dtype="float32"):
        self.name = _unique_name(type(self), name)
        self.dtype = dtype
        self._specs: dict[str, tuple] = {}
        self._state_specs: dict[str, tuple] = {}
        self._tensors: dict[str, Tensor] | None = None
        self._children: list[Module] = []
        self._parent: Module | None = None
        self._updates: dict[str, Tensor] = {}

    # -- declaration ----------------------------------------------------------------
    def add_param(self, key: str, shape, init="xavier_normal") -> None:
        self._specs[key] = (tuple(shape), init)

    def add_state(self, key: str, shape, fill: float) -> None:
        self._state_specs[key] = (tuple(shape), fill)

    def add_module(self, module):
        """Register a child (a Module or a plain function such as ``gc.relu``)."""
        if isinstance(module, Module):
            if module is self or module in self._ancestors():
                raise GraphError(located(f"module {module.name!r} cannot contain itself"))
            if module._parent is None:
                module._parent = self
            self._children.append(module)
        elif not callable(module):
            raise GraphError(located(f"{self.name}: a layer must be a Module or a callable, "
                                     f"got {type(module).__name__}"))
        return module

    def _ancestors(self):
        node = self._parent
        while node is not None:
            yield node
            node = node._parent

    def _path(self) -> list[str]:
        return [m.name for m in reversed([self, *self._ancestors()])]

    # -- building -------------------------------------------------------------------
    def _build(self) -> dict[str, Tensor]:
        if self._tensors is None:
            made = {k: param(f"{self.name}_{k}", shape, init, self.dtype)
                    for k, (shape, init) in self._specs.items()}
            made.update({k: state_input(f"{self.name}_{k}", shape, fill, self.dtype)
                         for k, (shape, fill) in self._state_specs.items()})
            self._tensors = made
        return self._tensors

    def __getitem__(self, key: str) -> Tensor:
        """This module's own parameter or state tensor ``key`` (``layer["W"]``)."""
        return self._build()[key]

    def __call__(self, *args, training: bool = False, **kwargs):
        with scope(self.name):
            self._build()
            return self.forward(*args, training=training, **kwargs)

    def forward(self, x, training=False):
        raise NotImplementedError(f"{type(self).__name__} defines no forward")

    # -- inspection -----------------------------------------------------------------
    def modules(self):
        """This module and its descendants, depth first, each once."""
        seen, order, stack = set(), [], [self]
        while stack:
            m = stack.pop()
            if id(m) in seen:
                continue
            seen.add(id(m))
            order.append(m)
            stack.extend(reversed(m._children))
        return order

    def _collect(self, keys) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        owners: dict[str, Module] = {}
        for m in self.modules():
            if m._tensors is None:
                with _absolute_scope(m._path()):
                    m._build()
            for k in keys(m):
                t = m._tensors[k]
                if owners.setdefault(t.op.label, m) is not m:
                    raise GraphError(f"two modules in {self.name!r} are named {m.name!r} "
                                     f"(both make {t.op.label!r}); give them unique names")
                out[t.op.label] = t
        return out

    def parameters(self) -> dict[str, Tensor]:
        """Trainable parameters of this module and its children: ``{name: param tensor}``,
        in declaration order."""
        return self._collect(lambda m: m._specs)

    def state(self) -> dict[str, Tensor]:
        """Non-trainable state inputs (batch-norm running statistics): ``{name: input}``."""
        return self._collect(lambda m: m._state_specs)

    def state_updates(self) -> dict[str, Tensor]:
        """``{state name: new value tensor}`` from the latest training-mode call."""
        out = {}
        for m in self.modules():
            out.update(m._updates)
        return out

    def init_params(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Initial values of :meth:`parameters` (as ``gc.init_params``)."""
        params = list(self.parameters().values())
        return init_params(params, seed) if params else {}

    def init_state(self) -> dict[str, np.ndarray]:
        """Initial values of :meth:`state` (running mean 0, running variance 1)."""
        return initial_state(self.state().values())

    def num_params(self) -> int:
        return sum(t.size for t in self.parameters().values())

    def summary(self) -> str:
        """A table of every parameter and state tensor: name, shape, size, kind."""
        rows = [(n, t, "param") for n, t in self.parameters().items()]
        rows += [(n, t, "state") for n, t in self.state().items()]
        width = max([len(n) for n, _, _ in rows] + [4])
        lines = [f"{'name':<{width}}  {'shape':<16} {'size':>10}  kind"]
        lines += [f"{n:<{width}}  {str(t.shape):<16} {t.size:>10,}  {kind}"
                  for n, t, kind in rows]
        lines.append(f"{self.name}: {self.num_params():,} trainable parameters")
        return "\n".join(lines)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        head = f"{type(self).__name__}({self.extra_repr()}{', ' if self.extra_repr() else ''}" \
               f"name={self.name!r})"
        if not self._children:
            return head
        body = "\n".join("  " + line for c in self._children
                         for line in (repr(c) if isinstance(c, Module)
                                      else getattr(c, "__name__", repr(c))).splitlines())
        return f"{head} [\n{body}\n]"


# ---------------------------------------------------------------------------------------
# Dense and convolution


def _check_features(module, x, axis, expected, what="features"):
    if not -x.ndim <= axis < x.ndim or x.shape[axis] != expected:
        raise ShapeError(located(f"{module.name}: expects {expected} {what} on axis {axis}, "
                                 f"got an input of shape {x.shape}"))


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
# Recurrent layers: the cell scanned over time (gc.scan), or unrolled


class _Recurrent(Module):
    """Shared recurrence: one input projection for all steps, then the cell over time, as
    one ``gc.scan`` node (default) or unrolled into one copy of the cell per step
    (``unroll=True``, the reference the scan is tested against).

    Weights follow ``x @ W``: W_x (input, gates * hidden) and W_h (hidden, gates * hidden),
    gate blocks in PyTorch's order; W_x is Xavier per gate, W_h orthogonal per gate.  A
    bidirectional layer has a second set for the reverse direction, named with torch's
    suffix ``_reverse`` (``W_x_reverse``, ...).
    """

    gates, state_count, biases = 1, 1, ("b",)

    def __init__(self, input_size: int, hidden_size: int, truncate: int | None = None,
                 returns: str = "both", bidirectional: bool = False, unroll: bool = False,
                 name=None, dtype="float32"):
        super().__init__(name, dtype)
        if truncate is not None and (not isinstance(truncate, int) or truncate < 1):
            raise GraphError(located(f"truncate must be a positive int, got {truncate!r}"))
        if returns not in ("both", "sequence", "last"):
            raise GraphError(located(f"returns must be 'both', 'sequence' or 'last', got "
                                     f"{returns!r}"))
        self.input_size, self.hidden_size, self.truncate = input_size, hidden_size, truncate
        self.returns, self.bidirectional, self.unroll = returns, bool(bidirectional), unroll
        width = self.gates * hidden_size
        for s in self._suffixes():
            self.add_param(f"W_x{s}", (input_size, width), GateInit(self.gates, "xavier_normal"))
            self.add_param(f"W_h{s}", (hidden_size, width), GateInit(self.gates, "orthogonal"))
            for b in self.biases:
                self.add_param(f"{b}{s}", (width,), "zeros")

    def _suffixes(self):
        return ("", "_reverse") if self.bidirectional else ("",)

    def forward(self, x, state=None, training=False):
        """Run over the time axis of ``x`` (N, T, F) or a list of T (N, F) tensors.

        ``state`` is the initial state (zeros when None): h (N, H), or (h, c) for the LSTM;
        bidirectional layers take and give torch's (2, N, H), forward direction first.
        Returns ``(outputs, state)``: outputs (N, T, H) (N, T, 2H when bidirectional, the
        two directions concatenated; a list for list input) and the last state; with
        ``returns="sequence"`` only the outputs, with ``returns="last"`` only the last h
        ((N, 2H) when bidirectional), so the layer fits in a :class:`Sequential`.  In
        training mode with ``truncate=k``, gradients are cut every k steps (truncated
        BPTT)."""
        as_list = isinstance(x, (list, tuple))
        xs = self._time_major(x, as_list)
        states = self._initial(state, xs.shape[1])
        truncate = self.truncate if training else None
        runs = []
        for d, suffix in enumerate(self._suffixes()):
            with scope("reverse") if d else contextlib.nullcontext():
                runs.append(self._run(xs, states[d], lambda k, s=suffix: self[k + s],
                                      reverse=d == 1, truncate=truncate))
        outputs = [_sequence(ys, as_list) for ys, _ in runs]
        if len(runs) == 1:
            outputs, last = outputs[0], runs[0][1]
        elif as_list:
            outputs = [F.concat(pair, axis=1) for pair in zip(*outputs)]
        else:
            outputs = F.concat(outputs, axis=2)
        if len(runs) == 2:
            last = tuple(F.stack(pair, axis=0) for pair in zip(runs[0][1], runs[1][1]))
        if self.returns == "sequence":
            return outputs
        if self.returns == "last":
            return last[0] if len(runs) == 1 else F.concat([runs[0][1][0], runs[1][1][0]], 1)
        return outputs, (last if len(last) > 1 else last[0])

    def _time_major(self, x, as_list) -> Tensor:
        """The input as one (T, N, F) tensor."""
        if as_list:
            return F.stack([_check_step(self, xt) for xt in x], axis=0)
        if x.ndim != 3:
            raise ShapeError(located(f"{self.name}: expects (N, T, features) or a list "
                                     f"of (N, features) tensors, got {x.shape}"))
        _check_features(self, x, 2, self.input_size)
        return F.transpose(x, (1, 0, 2))

    def _initial(self, state, n) -> list:
        """The initial state of each direction: a tuple of (N, H) tensors, or None."""
        directions = len(self._suffixes())
        if state is None:
            return [None] * directions
        state = (state,) if isinstance(state, Tensor) else tuple(state)
        want = (2, n, self.hidden_size) if self.bidirectional else (n, self.hidden_size)
        if len(state) != self.state_count:
            raise GraphError(located(f"{self.name}: the state is {self.state_count} "
                                     f"tensor(s), got {len(state)}"))
        for s in state:
            if s.shape != want:
                raise ShapeError(located(f"{self.name}: initial state must be {want}, got "
                                         f"{s.shape}"))
        if not self.bidirectional:
            return [state]
        return [tuple(s[d] for s in state) for d in range(2)]

    def _run(self, xs, state, w, reverse, truncate):
        """One direction: ``(outputs, last state)``, outputs a (T, N, H) tensor (scan) or
        a list of T (N, H) tensors (unrolled), in time order either way."""
        proj = xs @ w("W_x") + w(self.biases[0])  # every step's input projection at once
        if self.unroll:
            return self._unrolled(proj, state, w, reverse, truncate)
        if state is None:
            zeros = constant(np.zeros((xs.shape[1], self.hidden_size), self.dtype))
            state = (zeros,) * self.state_count

        def step(carry, xp):
            carry = self.cell(xp, carry, w)
            return carry, carry[0]

        last, ys = scan(step, tuple(state), proj, reverse=reverse, truncate=truncate)
        return ys, tuple(last)

    def _unrolled(self, proj, state, w, reverse, truncate):
        order = range(proj.shape[0])[::-1] if reverse else range(proj.shape[0])
        state = (None,) * self.state_count if state is None else state
        outputs = {}
        for k, t in enumerate(order):
            if truncate and k and k % truncate == 0:
                state = tuple(None if s is None else stop_gradient(s, self._cut_name())
                              for s in state)
            state = self.cell(proj[t], state, w)
            outputs[t] = state[0]
        return [outputs[t] for t in range(proj.shape[0])], state

    def _cut_name(self) -> str:
        return f"{self.name}_cut_{next(_CUT_IDS)}"

    def _gate(self, z, k):
        h = self.hidden_size
        return z[..., k * h:(k + 1) * h]

    def extra_repr(self):
        return f"{self.input_size} -> {self.hidden_size}" + \
            (", bidirectional" if self.bidirectional else "") + \
            (f", truncate={self.truncate}" if self.truncate else "") + \
            (", unrolled" if self.unroll else "")


def _sequence(ys, as_list):
    """One direction's outputs as the layer returns them: (N, T, H), or a list of T."""
    if isinstance(ys, list):
        return ys if as_list else F.stack(ys, axis=1)
    return [ys[t] for t in range(ys.shape[0])] if as_list else F.transpose(ys, (1, 0, 2))


def _check_step(module, xt):
    if xt.ndim != 2 or xt.shape[1] != module.input_size:
        raise ShapeError(located(f"{module.name}: each step must be (N, "
                                 f"{module.input_size}), got {xt.shape}"))
    return xt


def _plus(a, b):
    return a if b is None else a + b


def _hidden(h, w):
    """h @ W_h, or None for the zero initial state of an unrolled layer."""
    return None if h is None else h @ w("W_h")


class RNN(_Recurrent):
    """Elman RNN: h_t = tanh(x_t W_x + h_{t-1} W_h + b), as ``torch.nn.RNN`` (one layer,
    ``batch_first=True``) with W_x = W_ih.T, W_h = W_hh.T, b = b_ih + b_hh.
    ``nonlinearity`` may be ``"relu"``.

    >>> import graphc as gc, graphc.nn
    >>> rnn = gc.nn.RNN(3, 4, bidirectional=True, name="rnn")
    >>> ys, h = rnn(gc.input("x", (2, 50, 3)))
    >>> ys.shape, h.shape, [t.op.name for t in gc.Graph(ys).nodes].count("scan")
    ((2, 50, 8), (2, 2, 4), 2)
    """

    def __init__(self, input_size, hidden_size, nonlinearity="tanh", truncate=None,
                 returns="both", bidirectional=False, unroll=False, name=None,
                 dtype="float32"):
        self.nonlinearity = get_activation(nonlinearity)
        super().__init__(input_size, hidden_size, truncate, returns, bidirectional, unroll,
                         name, dtype)

    def cell(self, xp, state, w):
        return (self.nonlinearity(_plus(xp, _hidden(state[0], w))).named("h"),)


class LSTM(_Recurrent):
    """Long short-term memory, as ``torch.nn.LSTM`` (one layer, ``batch_first=True``):
    gates i, f, g, o; c_t = f c_{t-1} + i g; h_t = o tanh(c_t).  W_x = W_ih.T,
    W_h = W_hh.T, b = b_ih + b_hh.  The state is the pair (h, c)."""

    gates, state_count = 4, 2

    def cell(self, xp, state, w):
        h, c = state
        z = _plus(xp, _hidden(h, w))
        i, f, g, o = (self._gate(z, k) for k in range(4))
        i, f, o = (F.sigmoid(a).named(n) for a, n in ((i, "i"), (f, "f"), (o, "o")))
        g = F.tanh(g).named("g")  # the gates named as torch's documentation names them
        c = (i * g if c is None else f * c + i * g).named("c")
        return (o * F.tanh(c)).named("h"), c


class GRU(_Recurrent):
    """Gated recurrent unit, as ``torch.nn.GRU`` (one layer, ``batch_first=True``):
    r = sigma(x W_xr + b_xr + h W_hr + b_hr), z likewise,
    n = tanh(x W_xn + b_xn + r (h W_hn + b_hn)), h_t = (1 - z) n + z h_{t-1}.
    W_x = W_ih.T, W_h = W_hh.T, b_x = b_ih, b_h = b_hh."""

    gates, biases = 3, ("b_x", "b_h")

    def cell(self, xp, state, w):
        (h,) = state
        hh = _plus(w("b_h"), _hidden(h, w))  # broadcasts to (N, 3H) when h is zero
        r = F.sigmoid(self._gate(xp, 0) + self._gate(hh, 0)).named("r")
        z = F.sigmoid(self._gate(xp, 1) + self._gate(hh, 1)).named("z")
        n = F.tanh(self._gate(xp, 2) + r * self._gate(hh, 2)).named("n")
        return ((1.0 - z) * n if h is None else (1.0 - z) * n + z * h).named("h"),


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
    "default_init", "get_activation", "initial_state", "is_state_input", "orthogonal",
    "resolve_cuts", "seed_input", "state_input", "stop_gradient",
]
