"""Reverse-mode autodiff: a pass that builds the backward graph as ordinary IR.

Before: a forward graph with outputs ``ys``.  After: gradient tensors that are ordinary
nodes (no closures, no tape), so they can be printed, optimized, compiled, drawn and
differentiated again.

The walk visits the forward nodes in reverse topological order.  A node's gradient is the
sum of the contributions of its users (fan-out accumulates with ``add``).  For the edge from
``z`` to its operand ``x``:

- elementwise ops: downstream = upstream * local, with ``local`` = dz/dx an elementwise
  node built from the op's SymPy-derived derivative (sigmoid: ``y * (1 - y)``), and the
  product (masked on a 0 branch, ``(g n) / d`` for a quotient:
  :mod:`graphc.upstream_product`) summed back over broadcast axes
  (:func:`graphc.structured_ops.unbroadcast`);
- structured ops: their ``vjp`` rule, declared next to their shape rule;
- scans: one backward scan for all the outputs of a scan instance
  (:func:`graphc.bptt.scan_vjp`, handed this module's :func:`backward` for the body).

Only nodes that lie on a path from a requested input to an output get a gradient.  Every
backward node is tagged (``t.meta``, read with :func:`provenance`) with the forward node it
came from and its role: ``upstream`` (dL/dz), ``local`` (dz/dx) or ``downstream`` (dL/dx
through one edge).
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass, field

import numpy as np

from graphc import dtypes
from graphc import functions as F
from graphc.bptt import scan_vjp
from graphc.dynamic import Deferred, defer, deferred_vjp, is_dynamic, substitute
from graphc.elementwise_ops import Elementwise
from graphc.errors import DTypeError, GraphError
from graphc.graph import Graph, as_outputs, node_names
from graphc.inputs import Input, constant
from graphc.ir import Tensor, iter_nodes, located
from graphc.scan import siblings
from graphc.shape_ops import unbroadcast
from graphc.upstream_product import product_op


@dataclass(frozen=True)
class GradMeta:
    """Provenance of a backward node: its forward node, role and operand index.

    The forward node is held weakly, so tags never keep a dead graph alive."""

    forward_ref: weakref.ref
    role: str  # "upstream", "local" or "downstream"
    operand: int | None = None

    @property
    def forward(self) -> Tensor | None:
        return self.forward_ref()

    @property
    def alive(self) -> bool:
        return self.forward_ref() is not None


@dataclass(frozen=True, eq=False)
class GradientOf:
    """Tagged on every tensor :func:`vjp` (so ``gc.grad``, ``gc.hvp``) returns: the inputs,
    by name, of the graph it is a gradient of and of the graphs that one was differentiated
    from.  ``gc.compile`` accepts feeds for them even where the gradient no longer needs
    them.  Held weakly, as the inputs the user holds: a gradient can be an interned node
    that other graphs share (the constant 1 of ``grad(1 + z, z)``), which held strongly
    accepted the inputs of every graph that ever had it for a gradient ('_holder4', an
    input of a dynamic call's replay, or another test's 'zeta')."""

    refs: tuple  # (name, weakref to the input)

    @classmethod
    def of(cls, inputs: dict) -> GradientOf:
        return cls(tuple((name, weakref.ref(leaf)) for name, leaf in inputs.items()))

    @property
    def inputs(self) -> dict:
        return {name: leaf for name, ref in self.refs if (leaf := ref()) is not None}

    @property
    def alive(self) -> bool:
        return any(ref() is not None for _, ref in self.refs)


def differentiated_from(nodes, every: bool = False) -> dict:
    """The inputs, by name, of the graphs that gradients among ``nodes`` were taken of;
    ``every``: by name, a tuple of every such input (an interned gradient, the zeros of a
    shape, can carry the tags of two graphs whose inputs share a name)."""
    found: dict[str, list] = {}
    for t in nodes:
        for r in t.meta or ():
            if isinstance(r, GradientOf):
                for name, leaf in r.inputs.items():
                    leaves = found.setdefault(name, [])
                    if not any(leaf is seen for seen in leaves):
                        leaves.append(leaf)
    return {name: tuple(leaves) if every else leaves[0] for name, leaves in found.items()}


def provenance(t: Tensor, forward) -> GradMeta | None:
    """The record of backward node ``t`` that points into ``forward`` (a Graph, outputs or
    nodes): which forward node it came from and in which role."""
    nodes = forward.nodes if isinstance(forward, Graph) else \
        iter_nodes(as_outputs(forward))
    ids = {id(n) for n in nodes}
    return next((r for r in t.meta or () if isinstance(r, GradMeta) and id(r.forward) in ids),
                None)


@dataclass(frozen=True)
class BackwardEdge:
    """One forward edge z -> x seen backwards: the three gradients a diagram labels."""

    forward: Tensor          # z
    operand: int             # x is z.inputs[operand]
    upstream: Tensor         # dL/dz
    local: Tensor | None     # dz/dx as a node (elementwise ops), else None
    local_formula: str       # dz/dx as text: SymPy formula, or a template ({x}, {y}, {g})
    downstream: Tensor       # dL/dx through this edge
    vjp_text: str = ""       # structured ops: dL/dx as a template in {g}; "" = local * g
    # an op with several outputs (a scan instance): ((output, dL/doutput), ...) of its other
    # outputs that have gradients, all of which ``downstream`` also carries back
    siblings: tuple = ()


@dataclass
class Backward:
    """The result of :func:`backward`: gradients per forward node and the labelled edges."""

    grads: dict[int, Tensor] = field(default_factory=dict)
    edges: list[BackwardEdge] = field(default_factory=list)

    def grad_of(self, t: Tensor) -> Tensor:
        """dL/dt (zeros when the outputs do not depend on ``t``)."""
        g = self.grads.get(id(t))
        return g if g is not None else _zeros(t)


def _zeros(t: Tensor) -> Tensor:
    if is_dynamic(t.shape):  # its size is known when the graph is specialised
        return defer(_zeros, (t,), label="zeros")
    return F.broadcast_to(constant(0, dtype=t.dtype), t.shape)


def _differentiable(t: Tensor) -> bool:
    return dtypes.is_float(t.dtype)


def _tag(result: Tensor, done: set[int], meta: GradMeta) -> None:
    """Tag ``result`` and the nodes made to compute it; ``done`` holds the forward nodes
    and the nodes this backward pass has tagged already."""
    stack = [result]
    while stack:
        t = stack.pop()
        if id(t) in done:
            continue
        done.add(id(t))
        t.tag(meta)
        stack.extend(t.inputs)


def _local(z: Tensor, k: int) -> Tensor | None:
    """dz/dx_k of an elementwise node as a node (None when it is zero)."""
    fn = z.op.fn
    expr = fn.derivatives[k]
    if expr == 0:
        return None
    operands = dict(zip(fn.args, z.inputs)) | {fn.out: z}
    if expr.is_Symbol:
        return F.cast(operands[expr], z.dtype)
    if expr.is_number:
        return constant(float(expr), dtype=z.dtype)
    local = fn.local_def(k, z.op.params)
    return Tensor.make(Elementwise(local, z.op.params, z.dtype),
                       [operands[a] for a in local.args])


def _edge(z: Tensor, k: int, g: Tensor) -> tuple[Tensor | None, Tensor | None, str, str]:
    """(local node, downstream gradient, local formula, vjp text) for the edge
    z -> z.inputs[k]."""
    x = z.inputs[k]
    if isinstance(z.op, Elementwise):
        local = _local(z, k)
        if local is None:
            return None, None, "0", ""
        formula = z.op.fn.derivatives_text[k]
        rule = product_op(local.op.fn) if isinstance(local.op, Elementwise) else None
        if local.op == constant(1.0, dtype=z.dtype).op:
            product = g
        elif rule is not None:  # masked (0 on a 0 branch, even at g = inf) or (g n) / d
            op, reads_local = rule
            product = Tensor.make(Elementwise(op, local.op.params, z.dtype),
                                  [local] * reads_local + [*local.inputs, g])
        else:
            product = g * local
        return local, unbroadcast(product, x.shape), formula, ""
    rule = getattr(z.op, "vjp", None)
    if isinstance(z.op, Deferred):  # replayed per feed shape, and differentiated then
        rule = functools.partial(deferred_vjp, vjp=vjp)
    if rule is None:
        raise GraphError(f"{z.op.name} has no derivative rule")
    def text(texts):  # variadic ops (concat) give one text for every operand
        return texts[min(k, len(texts) - 1)]
    return None, rule(z, g, k), text(z.op.local), text(z.op.vjp_text)


def backward(ys, cotangents, wrt) -> Backward:
    """Build the backward graph of ``ys`` seeded with ``cotangents``, for inputs ``wrt``."""
    ys, wrt = as_outputs(ys), as_outputs(wrt)
    forward = Graph(ys).nodes
    done = {id(t) for t in iter_nodes(ys)}  # forward nodes, then nodes tagged by this pass
    for w in wrt:
        if not _differentiable(w):
            name = node_names(Graph(ys)).get(id(w), w.name)  # as printers and diagrams name it
            raise GraphError(located(f"cannot differentiate with respect to {name!r}: it is "
                                     f"{w.dtype}; only float tensors have gradients"))
    wanted = {id(w) for w in wrt}
    depends: set[int] = set()
    for t in forward:  # inputs first: a node depends on wrt if any input does
        if _differentiable(t) and (id(t) in wanted or any(id(i) in depends
                                                          for i in t.inputs)):
            depends.add(id(t))
    pending: dict[int, list[Tensor]] = {}
    for y, ct in zip(ys, cotangents):
        if id(y) in depends:
            pending.setdefault(id(y), []).append(ct)
    out = Backward()
    joint = _joint_groups(forward)
    for z in reversed(forward):
        parts = pending.pop(id(z), None)
        group = joint.get(id(z))
        if not parts and group is None:
            continue
        g, others = None, ()
        if parts:
            g = parts[0]
            for p in parts[1:]:
                g = g + p
            _tag(g, done, GradMeta(weakref.ref(z), "upstream"))
            out.grads[id(z)] = g
        if group is not None:  # an op with several outputs: when the first is reached,
            # every output's gradient is complete; one rule gives all the inputs' gradients
            if z is not group[0] or all(id(m) not in out.grads for m in group):
                continue
            downs = scan_vjp(group, [out.grads.get(id(m)) for m in group],
                             [id(x) in depends for x in z.inputs], backward)
            g = g if g is not None else _zeros(z)
            others = tuple((m, out.grads[id(m)]) for m in group[1:] if id(m) in out.grads)
        for k, x in enumerate(z.inputs):
            if id(x) not in depends:
                continue
            if group is not None:
                local, down = None, downs[k]
                formula, vjp_text = z.op.local[0], z.op.vjp_text[0]
            else:
                local, down, formula, vjp_text = _edge(z, k, g)
            if down is None:
                continue
            if local is not None:
                _tag(local, done, GradMeta(weakref.ref(z), "local", k))
            if down.dtype != x.dtype:
                down = F.cast(down, x.dtype)
            _tag(down, done, GradMeta(weakref.ref(z), "downstream", k))
            out.edges.append(BackwardEdge(z, k, g, local, formula, down, vjp_text, others))
            pending.setdefault(id(x), []).append(down)
    return out


def _joint_groups(forward) -> dict[int, list[Tensor]]:
    """The outputs of each scan grouped by instance (one backward scan gives the gradients
    of them all), in forward order: ``{id(node): its group}``."""
    return {id(t): group for group in siblings(forward).values() for t in group}


def _as_list(wrt, op: str = "grad") -> tuple[list[Tensor], bool]:
    if isinstance(wrt, Tensor):
        return [wrt], True
    if not isinstance(wrt, (list, tuple)):
        raise DTypeError(located(f"{op}: wrt must be a graphc Tensor or a list of them, got "
                                 f"{type(wrt).__name__} {wrt!r:.40}"))
    if not wrt:
        raise GraphError(located(f"{op}: wrt is empty; name the tensors to differentiate "
                                 "with respect to"))
    wrt = list(wrt)
    for w in wrt:
        if not isinstance(w, Tensor):
            raise DTypeError(located(f"wrt must hold graphc Tensors, got "
                                     f"{type(w).__name__}"))
    return wrt, False


def vjp(y, wrt, cotangent):
    """Vector-Jacobian product: sum_i cotangent_i * dy_i/dwrt, as graph nodes.

    ``cotangent`` is a tensor (or array) of ``y``'s shape; returns a tensor per ``wrt``
    (a single tensor when ``wrt`` is one tensor).
    """
    if not isinstance(y, Tensor):
        raise DTypeError(located(f"vjp: y must be a graphc Tensor, got {type(y).__name__}"))
    ct = cotangent if isinstance(cotangent, Tensor) else \
        _array("vjp", "cotangent", cotangent, y.dtype)
    if ct.shape != y.shape:
        raise GraphError(located(f"vjp: cotangent shape {ct.shape} differs from y {y.shape}"))
    if ct.dtype != y.dtype:
        ct = F.cast(ct, y.dtype)
    wrt, single = _as_list(wrt, "vjp")
    result = backward([y], [ct], wrt)
    grads = [result.grad_of(w) for w in wrt]
    unused = {k: v for w in wrt for k, v in w.leaves.items()}  # wrt y may not read: fed too
    origin = GradientOf.of({**unused, **differentiated_from(iter_nodes([y])), **y.leaves})
    for g in grads:  # a gradient that no longer depends on y's inputs may still be fed them
        g.tag(origin)
    return grads[0] if single else grads


def grad(y, wrt):
    """Gradient of the scalar ``y`` with respect to ``wrt`` (a tensor or a list).

    Returns tensors of the shapes of ``wrt``, built as ordinary graph nodes, so
    ``grad(grad(...))`` works.

    >>> import graphc as gc
    >>> x = gc.input("x", (3,), "float64")
    >>> g = gc.grad(gc.sum(gc.sigmoid(x)), x)
    >>> g.shape
    (3,)
    """
    if not isinstance(y, Tensor):
        raise DTypeError(located(f"grad: y must be a graphc Tensor, got {type(y).__name__}"))
    if y.shape != ():
        raise GraphError(located(f"grad: y must be a scalar, got shape {y.shape}; use "
                                 "gc.vjp(y, wrt, cotangent) for non-scalar outputs"))
    if not dtypes.is_float(y.dtype):
        raise GraphError(located(f"grad: y must be a float tensor, got {y.dtype}"))
    _as_list(wrt, "grad")
    return vjp(y, wrt, constant(1.0, dtype=y.dtype))


def hvp(y, wrt, v):
    """Hessian-vector product(s) H v of the scalar ``y``, in O(graph size).

    Reverse-over-reverse: the gradient of <grad y, v> with respect to ``wrt``; the Hessian
    is never formed.  ``v`` matches ``wrt`` (a tensor, or a list of them; arrays are made
    constants).  A ``v`` computed from ``wrt`` (``v = x``, ``v = grad(y, x)``) is held
    fixed while differentiating, as ``torch.autograd.functional.hvp`` does: the result is
    H v, and it still differentiates through ``v`` afterwards.
    """
    wrt_list, single = _as_list(wrt, "hvp")
    if not single and not isinstance(v, (list, tuple)):
        raise DTypeError(located(f"hvp: v must be a list of {len(wrt_list)} tensor(s) or "
                                 f"arrays, one per wrt, got {type(v).__name__}"))
    vs = [v] if single else list(v)
    if len(vs) != len(wrt_list):
        raise GraphError(located(f"hvp: got {len(vs)} vector(s) for {len(wrt_list)} wrt"))
    grads = grad(y, wrt_list)
    total, held = None, {}
    ids = {id(w) for w in wrt_list}
    for g, w, vec in zip(grads, wrt_list, vs):
        vec = vec if isinstance(vec, Tensor) else _array("hvp", "v", vec, w.dtype)
        if vec.shape != w.shape:
            raise GraphError(located(f"hvp: v shape {vec.shape} differs from {w.shape}"))
        if any(id(t) in ids for t in iter_nodes([vec])):  # H v, not d<grad y, v(x)>/dx:
            holder = Tensor.make(Input(f"_hvp_v{len(held)}", vec.shape, vec.dtype))
            held[id(holder)], vec = vec, holder  # v enters as an input, put back after
        term = F.sum(g * vec)
        total = term if total is None else total + term
    result = grad(total, wrt_list)
    if held:
        result = substitute(result, held)
    return result[0] if single else result


def _array(op: str, what: str, value, dtype) -> Tensor:
    """``value`` (an array or number) as a constant of ``dtype``, or a DTypeError."""
    try:
        return constant(np.asarray(value), dtype=dtype)
    except (TypeError, ValueError) as err:
        raise DTypeError(located(f"{op}: {what} must be a graphc Tensor or a numeric array, "
                                 f"got {type(value).__name__} {value!r:.40} ({err})")) from None
