"""Common subexpression elimination.

Hash-consing gives most of it: nodes are interned, so two structurally equal nodes are one
object from the start, and every pass that rebuilds a graph merges the nodes its rewrites
made equal.  What is left is equality up to the order of a commutative op's operands:
``a * b`` and ``b * a`` are two nodes until the operands are put in one order.

Before: any well-formed graph.  After: the same values, with the operands of every
commutative elementwise op (add, mul, equal, not_equal) sorted by their
structural digest, so that structurally equal expressions up to commutativity are one
node.

>>> import graphc as gc
>>> a, b = gc.input("a", (2,)), gc.input("b", (2,))
>>> len(gc.Graph([a * b, b * a])), len(cse(gc.Graph([a * b, b * a])))
(4, 3)
"""

from __future__ import annotations

from graphc.elementwise_ops import Elementwise
from graphc.graph import Graph
from graphc.ir import Tensor

from .rewrite import rebuild

# IEEE addition and multiplication commute exactly, the equality tests too.  maximum and
# minimum do not: at a tie they return one operand of the two (NumPy's and graphc's the
# second, torch's the first), so maximum(-0.0, 0.0) is 0.0 where maximum(0.0, -0.0) is
# -0.0 (1/maximum(x, 0) at x = -0: inf, 1/maximum(0, x): -inf).
COMMUTATIVE = frozenset({"add", "mul", "equal", "not_equal"})


def cse(graph: Graph, *, log: dict | None = None) -> Graph:
    """Canonical operand order for commutative ops; interning merges what became equal.

    ``log`` receives ``merged``: how many nodes the rebuilt graph has fewer."""
    def visit(t: Tensor, old: Tensor) -> Tensor:
        if isinstance(t.op, Elementwise) and t.op.fn.name in COMMUTATIVE and \
                len(t.inputs) == 2:
            a, b = t.inputs
            if a is not b and a.digest > b.digest:
                return t.replace(inputs=(b, a))
        return t

    out = rebuild(graph, visit)
    if log is not None:
        log["merged"] = len(graph.nodes) - len(out.nodes)
    return out
