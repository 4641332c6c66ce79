"""The base of ``gc.nn``: :class:`Module` (named parameters, state, scopes), activations,
initializers, and the graph-level helpers layers share (state inputs, the dropout seed).

A module holds named parameters and builds graph nodes when called on a :class:`Tensor`;
it computes nothing itself (docs/nn.md).  The layers are in :mod:`graphc.nn` and
:mod:`graphc.nn_recurrent`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import re
from dataclasses import dataclass

import numpy as np

from . import functions as F
from . import ir
from .errors import GraphError, ShapeError
from .inputs import init_params, input, param
from .ir import Tensor, located, scope

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
    relu_like = act in _RELU_LIKE or any(act is ACTIVATIONS[name] for name in _RELU_LIKE)
    return "he_normal" if relu_like else "xavier_normal"


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
# Names, scopes and graph-level helpers (state inputs, the dropout seed)

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


def state_input(name: str, shape, fill: float = 0.0, dtype="float32") -> Tensor:
    """A non-trainable state input (e.g. a running statistic) whose initial value is
    ``fill``: an input that carries its initial value, as a param carries its initializer
    (``t.op.is_state``).  A training step feeds it back from its own outputs.

    >>> t = state_input("bn_running_var", (3,), 1.0)
    >>> t.op.is_state, initial_state([t])["bn_running_var"]
    (True, array([1., 1., 1.], dtype=float32))
    """
    plain = input(name, shape, dtype)
    return Tensor.make(dataclasses.replace(plain.op, state=float(fill)))


def initial_state(tensors) -> dict[str, np.ndarray]:
    """Initial values of state inputs made by :func:`state_input` (zeros for other inputs)."""
    return {t.op.label: np.full(t.shape, t.op.state or 0.0, dtype=t.dtype) for t in tensors}


def seed_input() -> Tensor:
    """The int64 scalar input ``dropout_seed``; training steps feed a new value each step."""
    return input(SEED_INPUT, (), "int64")


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



def _check_features(module, x, axis, expected, what="features"):
    if not -x.ndim <= axis < x.ndim or x.shape[axis] != expected:
        raise ShapeError(located(f"{module.name}: expects {expected} {what} on axis {axis}, "
                                 f"got an input of shape {x.shape}"))

