"""Rewriting graphs: rebuild a graph bottom-up, and match patterns kept as data.

Passes never mutate nodes (they are immutable and interned); they *rebuild*: walk the nodes
inputs-first, remake each node on its rewritten inputs (``Tensor.make`` re-interns it, so a
rewrite that makes two nodes equal merges them), and let a visitor replace it.

Patterns are data: ``P("mul", "x", ONE)`` matches ``mul(x, <a constant of ones>)``.  An op
is named by its elementwise name (``"mul"``, ``"exp"``) or by its op class (``Transpose``);
a string argument captures a node (the same name twice must be the same node: ``P("sub",
"x", "x")``); :class:`Const` matches a constant whose elements all equal a value (a
``broadcast_to`` or ``reshape`` of one included); ``None`` matches anything.

>>> import graphc as gc
>>> x = gc.input("x", (3,))
>>> match(P("mul", "x", ONE, commutative=True), 1.0 * x)["x"] is x
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from graphc.elementwise_ops import Elementwise
from graphc.errors import GraphError
from graphc.graph import Graph
from graphc.inputs import Constant
from graphc.ir import Tensor
from graphc.shape_ops import BroadcastTo, Reshape


def rebuild(graph: Graph, visit) -> Graph:
    """``graph`` rebuilt inputs-first; ``visit(node, old)`` returns the replacement of
    ``node`` (``old`` remade on its rewritten inputs; ``node`` itself to keep it).  A
    replacement must have the node's shape and dtype."""
    mapping: dict[int, Tensor] = {}
    for t in graph.nodes:
        inputs = tuple(mapping[id(i)] for i in t.inputs)
        node = t if all(a is b for a, b in zip(inputs, t.inputs)) else t.replace(inputs=inputs)
        new = visit(node, t)
        if new.shape != t.shape or new.dtype != t.dtype:
            raise GraphError(f"rewrite of {t.op.name} changed {t.shape} {t.dtype} into "
                             f"{new.shape} {new.dtype}")
        mapping[id(t)] = new
    return Graph([mapping[id(t)] for t in graph.outputs])


def op_key(t: Tensor):
    """What a pattern's op names: the elementwise op's name, else the op class."""
    return t.op.fn.name if isinstance(t.op, Elementwise) else type(t.op)


def constant_value(t: Tensor):
    """The value of every element if ``t`` is a constant with all elements equal (looking
    through broadcast_to and reshape), else None."""
    while isinstance(t.op, (BroadcastTo, Reshape)):
        t = t.inputs[0]
    if not isinstance(t.op, Constant):
        return None
    a = t.op.value.array
    if a.size == 0 or a.dtype == np.bool_:
        return None
    first = a.flat[0]
    return first.item() if np.all(a == first) else None


def is_constant(t: Tensor) -> bool:
    """A constant, possibly seen through broadcast_to or reshape."""
    while isinstance(t.op, (BroadcastTo, Reshape)):
        t = t.inputs[0]
    return isinstance(t.op, Constant)


@dataclass(frozen=True)
class Const:
    """Matches a constant whose elements all equal ``value`` (NaN never matches); with
    ``signed``, a zero only of the same sign (-0.0 is not 0.0)."""

    value: float
    signed: bool = False

    def matches(self, value) -> bool:
        return value is not None and value == self.value and not (
            self.signed and math.copysign(1, value) != math.copysign(1, self.value))

    def __repr__(self):
        return repr(self.value)


# x + (-0.0) and x - 0.0 are x for every x; x + 0.0 is 0.0, not x, at x = -0.0
ONE, ZERO, MINUS_ZERO, PLUS_ZERO = Const(1.0), Const(0.0), Const(-0.0, True), Const(0.0, True)


@dataclass(frozen=True)
class P:
    """A pattern: ``op`` applied to argument patterns (see the module docstring)."""

    op: object
    args: tuple
    commutative: bool = False
    where: object = None  # optional predicate on the matched node

    def __init__(self, op, *args, commutative=False, where=None):
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "commutative", commutative)
        object.__setattr__(self, "where", where)

    def __repr__(self):
        name = "any" if self.op is None else self.op if isinstance(self.op, str) else \
            self.op.__name__
        return f"{name}({', '.join(map(repr, self.args))})"


def match(pattern, t: Tensor, captures: dict | None = None) -> dict | None:
    """Captures ``{name: node}`` (and ``"node"``: the root) if ``pattern`` matches ``t``."""
    captures = {"node": t} if captures is None else captures
    return _match(pattern, t, captures)


def _match(pattern, t: Tensor, captures: dict) -> dict | None:
    if pattern is None:
        return captures
    if isinstance(pattern, str):
        bound = captures.get(pattern)
        if bound is None:
            return {**captures, pattern: t}
        return captures if bound is t else None
    if isinstance(pattern, Const):
        return captures if pattern.matches(constant_value(t)) else None
    if pattern.op is None:  # any op: the predicate decides
        return captures if pattern.where is None or pattern.where(t, captures) else None
    if op_key(t) != pattern.op or len(t.inputs) != len(pattern.args):
        return None
    orders = [t.inputs]
    if pattern.commutative:
        orders.append(tuple(reversed(t.inputs)))
    for inputs in orders:
        got = captures
        for sub, node in zip(pattern.args, inputs):
            got = _match(sub, node, got)
            if got is None:
                break
        if got is not None and (pattern.where is None or pattern.where(t, got)):
            return got
    return None
