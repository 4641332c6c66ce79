"""Algebraic simplification and constant folding, as a table of (pattern, replacement) rules.

Before: any well-formed graph.  After: the same outputs (same shapes and dtypes, the same
values up to rounding, the same NaN and Inf results) with every enabled rule applied
wherever its pattern matches, to a fixed point per node, and every subexpression that
depends on no input folded into a constant; before the rules, products ``x[t] @ w`` of every
slice of ``x`` with one matrix become slices of one ``x @ w`` (:func:`batch_matmuls`).

A rule is data: a name, a pattern (:mod:`graphc.passes.rewrite`), a replacement (a
capture name, or a function of the captures returning a node or None when it does not
apply) and its floating-point class:

- ``exact``: the same results for every input, NaN, Inf and the sign of a zero included,
  up to rounding (a product in place of a sum of equal terms): x + (−0) is x, x + 0 is
  not (at x = −0 it is +0, and 1/x flips from −inf to inf);
- ``unsafe``: may turn a NaN or Inf into a number (x·0 is NaN for x = inf, x − x and x/x
  for x = inf or NaN, exp(log x) = NaN for x < 0, log(exp(x)) = inf for x > 88 and -inf
  for x < −103 in float32).  Off by default: enable with
  ``simplify(graph, rules=RULES)`` or ``gc.compile(..., passes=["simplify-unsafe", ...])``.

>>> import graphc as gc
>>> x = gc.input("x", (3,))
>>> g = simplify(gc.Graph(-(-(x * 1.0))))
>>> g.outputs[0] is x
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from graphc import functions as F
from graphc.graph import Graph
from graphc.inputs import Constant, Input, constant
from graphc.ir import Tensor, iter_nodes
from graphc.lowering import base_of, fold_value, foldable
from graphc.scan import StopGradient
from graphc.shape_ops import (
    BroadcastTo,
    Concat,
    Index,
    IndexAdd,
    Reshape,
    Transpose,
)
from graphc.structured_ops import MatMul, Reduce

from .rewrite import MINUS_ZERO, ONE, PLUS_ZERO, ZERO, P, is_constant, match, rebuild


def fit(x: Tensor, node: Tensor) -> Tensor:
    """``x`` broadcast and cast to ``node``'s shape and dtype (a rule's result must keep
    the node's type: x·1 with a (2, 3) one and a (3,) x is x broadcast)."""
    if x.dtype != node.dtype:
        x = F.cast(x, node.dtype)
    return F.broadcast_to(x, node.shape) if x.shape != node.shape else x


def filled(node: Tensor, value) -> Tensor:
    return F.broadcast_to(constant(value, dtype=node.dtype), node.shape)


# -- replacements that need more than a capture ----------------------------------------


def _transposes(m):
    inner, outer = m["node"].inputs[0].op.perm, m["node"].op.perm
    perm = tuple(inner[p] for p in outer)
    return F.transpose(m["x"], perm)


def _reshapes(m):
    return F.reshape(m["x"], m["node"].shape)


def _identity_view(m):
    return m["x"] if m["x"].shape == m["node"].shape else None


def _sum_of_broadcast(m):
    """sum(broadcast_to(x, S), axes): sum x over the axes it really has, times the number
    of copies along the axes broadcasting stretched; broadcast back over the others."""
    node, x = m["node"], m["x"]
    if node.op.kind != "sum" or x.dtype == "bool" or x.size >= node.inputs[0].size:
        return None
    target = node.inputs[0].shape
    axes = node.op.axes
    xs = (1,) * (len(target) - x.ndim) + x.shape
    stretched = [a for a in axes if xs[a] == 1 and target[a] != 1]
    real = tuple(a for a in axes if a not in stretched)
    r = F.reshape(x, xs)
    if real:
        r = F.sum(r, real, keepdims=True)
    count = math.prod(target[a] for a in stretched)
    if r.dtype != node.dtype:  # int32 sums to int64: multiply there (2**30 * 4 overflowed)
        r = F.cast(r, node.dtype)
    if count != 1:
        r = F.mul(r, constant(count, dtype=r.dtype))
    kept = tuple(1 if a in axes else d for a, d in enumerate(target))
    return F.reshape(F.broadcast_to(r, kept), node.shape)


def _fold(m):
    """Evaluate a node whose operands are all constants (``lowering.fold_value``: one
    purity test and size limit for every backend); broadcast results keep their small
    base."""
    t = m["node"]
    out = fold_value(t, [_constant_array(i) for i in t.inputs])
    if out is None:
        return None
    base = base_of(out)
    if base is not out:
        return F.broadcast_to(constant(base, dtype=t.dtype), t.shape)
    return constant(np.array(out, order="C"), dtype=t.dtype)  # (ascontiguousarray: 0-d -> 1-d)


# The gradient of slices of one tensor (an LSTM's four gates cut from z) is a sum of
# scatters into zeros, index_add(g_i) at disjoint blocks; two scatters into adjacent
# blocks are one scatter of the two concatenated, and a scatter that covers its target is
# its operand: the sum becomes one concat (each element was g + 0 + ... + 0 before, so the
# values are the same, -0 kept as for x + 0).


def _block(t: Tensor):
    """``(axis, start, stop)`` if ``t`` is an index_add of a block that is contiguous along
    one axis and whole along the others; ``(None, 0, 0)`` if it is the whole target."""
    if not isinstance(t.op, IndexAdd) or any(e[0] != "slice" for e in t.op.index):
        return None
    target = t.op.target
    if len(t.op.index) > len(target) or t.inputs[0].dtype != t.dtype:
        return None
    cut = []
    for axis, n in enumerate(target):
        entry = t.op.index[axis] if axis < len(t.op.index) else ("slice", None, None, None)
        start, stop, step = slice(*entry[1:]).indices(n)
        if step != 1 or stop <= start:
            return None
        if (start, stop) != (0, n):
            cut.append((axis, start, stop))
    return (None, 0, 0) if not cut else cut[0] if len(cut) == 1 else None


def _merged(a: Tensor, b: Tensor) -> Tensor | None:
    """One index_add for index_adds ``a`` and ``b`` of adjacent blocks, else None."""
    ka, kb = _block(a), _block(b)
    if ka is None or kb is None or ka[0] is None or ka[0] != kb[0] or \
            a.op.target != b.op.target:
        return None
    if ka[2] != kb[1]:
        if kb[2] != ka[1]:
            return None
        (a, ka), (b, kb) = (b, kb), (a, ka)
    axis = ka[0]
    index = tuple(("slice", ka[1], kb[2], None) if k == axis else ("slice", None, None, None)
                  for k in range(len(a.op.target)))
    parts = Tensor.make(Concat(axis), (a.inputs[0], b.inputs[0]))
    return Tensor.make(IndexAdd(index, a.op.target), (parts,))


def _add_of_scatters(m):
    return _merged(*m["node"].inputs)


def _add_into_sum_of_scatters(m):
    """(x + scatter_a) + scatter_b → x + scatter_ab for adjacent blocks, in either order."""
    inner, outer = m["node"].inputs
    if not isinstance(outer.op, IndexAdd):
        inner, outer = outer, inner
    for k, term in enumerate(inner.inputs):
        merged = _merged(term, outer) if isinstance(term.op, IndexAdd) else None
        if merged is not None:
            return F.add(inner.inputs[1 - k], merged)
    return None


def _whole_scatter(m):
    node = m["node"]
    block = _block(node)
    return node.inputs[0] if block is not None and block[0] is None and \
        node.inputs[0].shape == node.shape else None


def _is_concat_of_concat(t: Tensor, m) -> bool:
    return isinstance(t.op, Concat) and \
        any(isinstance(i.op, Concat) and i.op.axis == t.op.axis for i in t.inputs)


def _flat_concat(m):
    node = m["node"]
    parts = []
    for i in node.inputs:
        parts += i.inputs if isinstance(i.op, Concat) and i.op.axis == node.op.axis else [i]
    return Tensor.make(Concat(node.op.axis), tuple(parts))


def _constant_array(t: Tensor) -> np.ndarray:
    chain = []
    while not isinstance(t.op, Constant):
        chain.append(t)
        t = t.inputs[0]
    value = t.op.value.array
    for node in reversed(chain):
        value = node.op.evaluate(value)
    return value


def _foldable(t: Tensor, m) -> bool:
    if not foldable(t):
        return False
    if isinstance(t.op, BroadcastTo) and isinstance(t.inputs[0].op, Constant):
        return False  # already canonical: a broadcast keeps its small constant base
    return all(is_constant(i) for i in t.inputs)


# -- the table -------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """A rewrite: ``pattern`` -> ``replace`` (a capture name or a function of the
    captures); ``ieee`` is its floating-point class (module docstring)."""

    name: str
    text: str
    pattern: P
    replace: object
    ieee: str = "exact"

    @property
    def default(self) -> bool:
        return self.ieee != "unsafe"

    def apply(self, m) -> Tensor | None:
        node = m["node"]
        new = m[self.replace] if isinstance(self.replace, str) else self.replace(m)
        return None if new is None else fit(new, node)


RULES: tuple[Rule, ...] = (
    Rule("fold", "op(constants) → constant", P(None, where=_foldable), _fold),
    Rule("mul-one", "x·1 → x", P("mul", "x", ONE, commutative=True), "x"),
    Rule("add-zero", "x + (−0) → x", P("add", "x", MINUS_ZERO, commutative=True), "x"),
    Rule("sub-zero", "x − (+0) → x", P("sub", "x", PLUS_ZERO), "x"),
    Rule("div-one", "x / 1 → x", P("div", "x", ONE), "x"),
    Rule("neg-neg", "−(−x) → x", P("neg", P("neg", "x")), "x"),
    Rule("sub-neg", "x − (−y) → x + y", P("sub", "x", P("neg", "y")),
         lambda m: F.add(m["x"], m["y"])),
    Rule("transpose-transpose", "transpose(transpose(x)) → transpose(x) or x",
         P(Transpose, P(Transpose, "x")), _transposes),
    Rule("reshape-reshape", "reshape(reshape(x)) → reshape(x)", P(Reshape, P(Reshape, "x")),
         _reshapes),
    Rule("reshape-identity", "reshape(x) to x's shape → x", P(Reshape, "x"), _identity_view),
    Rule("broadcast-identity", "broadcast_to(x) to x's shape → x", P(BroadcastTo, "x"),
         _identity_view),
    Rule("stop-gradient", "stop_gradient(x) → x (gradients are built by now)",
         P(StopGradient, "x"), "x"),
    Rule("scatter-merge", "index_add(a) + index_add(b) at adjacent blocks → "
         "index_add(concat(a, b))", P("add", P(IndexAdd, None), P(IndexAdd, None)),
         _add_of_scatters),
    Rule("scatter-merge-sum", "(x + index_add(a)) + index_add(b) → x + index_add(concat(a, "
         "b))", P("add", P("add", None, None), P(IndexAdd, None), commutative=True),
         _add_into_sum_of_scatters),
    Rule("scatter-whole", "index_add(g) covering its target → g", P(IndexAdd, None),
         _whole_scatter),
    Rule("concat-concat", "concat(.., concat(xs), ..) → concat(.., xs, ..)",
         P(None, where=_is_concat_of_concat), _flat_concat),
    Rule("sum-broadcast", "sum(broadcast_to(x)) → n·sum(x)", P(Reduce, P(BroadcastTo, "x")),
         _sum_of_broadcast),
    # unsafe: off by default
    Rule("mul-zero", "x·0 → 0", P("mul", "x", ZERO, commutative=True),
         lambda m: filled(m["node"], 0), ieee="unsafe"),
    Rule("sub-self", "x − x → 0", P("sub", "x", "x"), lambda m: filled(m["node"], 0),
         ieee="unsafe"),
    Rule("div-self", "x / x → 1", P("div", "x", "x"), lambda m: filled(m["node"], 1),
         ieee="unsafe"),
    Rule("exp-log", "exp(log(x)) → x", P("exp", P("log", "x")), "x", ieee="unsafe"),
    Rule("log-exp", "log(exp(x)) → x", P("log", P("exp", "x")), "x", ieee="unsafe"),
)
DEFAULT_RULES = tuple(r for r in RULES if r.default)
MAX_REWRITES_PER_NODE = 32


def simplify(graph: Graph, *, rules=DEFAULT_RULES, log: dict | None = None) -> Graph:
    """Apply ``rules`` (default: every rule that keeps NaN and Inf results) bottom-up; the
    nodes a replacement makes are simplified too.

    ``log`` (if given) receives ``rules_fired``: {rule name: times}."""
    fired: dict[str, int] = {}
    graph = batch_matmuls(graph, fired)
    # nodes already in simplified form, kept alive: a set of ids alone would let a dropped
    # intermediate's id be reused by a new node, which then passed as settled
    done: dict[int, Tensor] = {}

    def settle(t: Tensor) -> Tensor:
        """``t`` rewritten to a fixed point of the rules (its inputs are settled)."""
        for _ in range(MAX_REWRITES_PER_NODE):
            if id(t) in done or isinstance(t.op, (Input, Constant)):
                break
            for rule in rules:
                m = match(rule.pattern, t)
                new = None if m is None else rule.apply(m)
                if new is not None and new is not t:
                    fired[rule.name] = fired.get(rule.name, 0) + 1
                    t = settle_new(new)
                    break
            else:
                break
        done[id(t)] = t
        return t

    def settle_new(t: Tensor) -> Tensor:
        """A replacement: its new nodes are settled inputs-first, then itself."""
        mapping: dict[int, Tensor] = {}
        for node in iter_nodes([t], known=done):  # settled nodes: not walked again
            if id(node) in done:
                mapping[id(node)] = node
                continue
            inputs = tuple(mapping[id(i)] for i in node.inputs)
            if any(a is not b for a, b in zip(inputs, node.inputs)):
                node_new = node.replace(inputs=inputs)
            else:
                node_new = node
            mapping[id(node)] = node_new if node is t else settle(node_new)
        return mapping[id(t)]

    out = rebuild(graph, lambda t, old: settle(t))
    if log is not None:
        log["rules_fired"] = dict(sorted(fired.items()))
    return out


def _slice_product(t: Tensor):
    """(x, w, i) if ``t`` is ``matmul(x[i], w)`` with x of rank >= 3 and w a matrix."""
    if not isinstance(t.op, MatMul):
        return None
    a, w = t.inputs
    if not (isinstance(a.op, Index) and len(a.op.index) == 1 and a.op.index[0][0] == "int"):
        return None
    x = a.inputs[0]
    if x.ndim < 3 or w.ndim != 2 or min(x.shape[-2], w.shape[1]) < 2:  # GEMMs, not GEMVs
        return None
    return x, w, a.op.index[0][1] % x.shape[0]


def batch_matmuls(graph: Graph, fired: dict) -> Graph:
    """``matmul(x[i], w)`` for every i of x's leading axis -> ``matmul(x, w)[i]``: one
    GEMM instead of one per slice (an unrolled RNN's input projections ``x_t @ Wx``).  Each
    element is the same dot product over the same operands, but the BLAS may round it
    differently for the larger size (another kernel: float32 relative 1.6e-7 on the
    unrolled W4, docs/passes.md); the rewrite fires only where every slice is multiplied
    by ``w``, so nothing extra is computed."""
    slices: dict[tuple[int, int], tuple[int, set]] = {}
    for t in graph.nodes:
        found = _slice_product(t)
        if found is not None:
            x, w, i = found
            slices.setdefault((id(x), id(w)), (x.shape[0], set()))[1].add(i)
    whole = {key for key, (n, seen) in slices.items() if len(seen) == n > 1}
    if not whole:
        return graph

    def visit(node, old):
        found = _slice_product(old)
        if found is None or (id(found[0]), id(found[1])) not in whole:
            return node
        fired["matmul-batch"] = fired.get("matmul-batch", 0) + 1
        return F.matmul(node.inputs[0].inputs[0], node.inputs[1])[found[2]]

    return rebuild(graph, visit)


def simplify_unsafe(graph: Graph, *, log: dict | None = None) -> Graph:
    """:func:`simplify` with every rule, the NaN/Inf-changing ones (x·0 → 0) included."""
    return simplify(graph, rules=RULES, log=log)
