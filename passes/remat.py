"""Rematerialization: recompute cheap elementwise values in the backward instead of keeping
them from the forward.

Off by default (``passes=REMAT_PIPELINE``: simplify, cse, fusion, remat, fusion, dce,
memory).  It trades compute for memory: in a training step every forward value the
backward reads stays alive from its forward use until that read (the seed notes: training
memory grows with what is kept).  When such a value is a short chain of elementwise ops
from values the backward keeps anyway (or from feeds and constants), the backward can
recompute it from them, and the forward value dies at its last forward use.  Run after
fusion, it sees which values are really stored (a value inside a fused group never is), and
a second fusion pass merges the recomputations into the backward's groups, where they cost
no memory traffic of their own.

Before: any well-formed graph.  After: the same values; for a graph of several outputs
whose first is the loss (a training step: the forward is what the first output depends
on), every backward read of a rematerialized value ``v`` reads instead a fused node that
recomputes it (a distinct node, so interning does not merge it back into ``v``).  A value is
rematerialized when it is a float elementwise node (or a fused group's unsummed output),
not an output, computable by at most ``max_steps`` elementwise ops of its dtype from
*available* values: feeds, constants and forward values that the backward keeps anyway and
that are not themselves rematerialized (seen through reshapes, transposes and broadcasts).
So the values kept for the backward never grow, and the forward keeps strictly fewer bytes.

Loops: a backward loop (backpropagation through time, :mod:`graphc.bptt`) reads the
forward values its body needs as stacks over all steps that the forward scan keeps (its
residuals: the gates of every step, say).  Here it recomputes them instead, each step, from
the forward's carry as that step got it, its xs and consts
(:func:`graphc.loop_remat.recomputed`).  Two more stacks over the steps go: a projection the scan
hoisted out of its body (``xs @ Wx`` of all steps, one large matmul) is computed each step
in the loops that read it, forward and backward (:func:`graphc.loop_remat.unhoisted`), and a sum
over the steps computed after a loop from its per-step values (a weight's gradient:
``hᵀ @ g`` over all steps, ``sum(g)``, ``xᵀ @ g``) becomes a running sum carried by the
loop (:func:`graphc.loop_remat.step_sum`), so the per-step gate gradients are not stacked.  The
forward then keeps its carries only (B x H per step each: BPTT needs them), and the memory
grows with T by those alone, at the cost of running the forward body a second time and of
T small matmuls where there was one large one (the running sums add in another order than
that matmul: equal within float tolerance).  Such stacks count in ``recomputed`` and
``bytes_not_kept`` as the values above do.

>>> import graphc as gc
>>> x = gc.input("x", (64, 32)); W = gc.param("W", (32, 32))
>>> loss = gc.sum(gc.square(gc.tanh(x @ W) * 2.0))
>>> log = {}
>>> g = remat(gc.Graph([loss, gc.grad(loss, W)]), log=log)
>>> log["recomputed"], log["bytes_not_kept"]
(1, 8192)
"""

from __future__ import annotations

from graphc.elementwise_ops import Elementwise
from graphc.fused_ops import Fused, FusedOutput, FusedStep, prune
from graphc.graph import Graph
from graphc.inputs import Constant, Input
from graphc.ir import Tensor
from graphc.loop_remat import recomputed, step_sum, unhoisted, with_sums
from graphc.scan import Scan, instance_key

from .fusion import inline, is_member
from .rewrite import rebuild


def _root(t: Tensor) -> Tensor:
    while t.op.is_view():
        t = t.inputs[0]
    return t


def _recompute(v: Tensor, available, max_steps: int) -> Tensor | None:
    """``v`` recomputed as one fused node reading only ``available`` values (and views of
    them), composing the elementwise and fused nodes in between; None if that needs another
    kind of node or more than ``max_steps`` elementwise ops."""
    steps: list[FusedStep] = []
    index: dict[FusedStep, int] = {}
    inputs: list[Tensor] = []
    refs: dict[int, tuple] = {}

    def add(step: FusedStep) -> tuple:
        if step not in index:
            index[step] = len(steps)
            steps.append(step)
        return ("step", index[step])

    def ref(t: Tensor):
        if id(t) in refs:
            return refs[id(t)]
        if t is not v and available(_root(t)):
            refs[id(t)] = ("in", len(inputs))
            inputs.append(t)
            return refs[id(t)]
        if not recomputable(t) or t.dtype != v.dtype:
            return None
        args = [ref(i) for i in t.inputs]
        if any(a is None for a in args):
            return None
        if isinstance(t.op, Fused):
            refs[id(t)] = inline(t.op.group, t.op.out.step, args, add)
        else:
            refs[id(t)] = add(FusedStep(t.op.fn, t.op.params, tuple(args)))
        return refs[id(t)] if len(steps) <= max_steps else None

    out = ref(v)
    if out is None or out[0] != "step":
        return None
    group = prune(steps, [FusedOutput(out[1])], v.dtype, [i.dtype for i in inputs],
                  tag="recomputed")
    return Tensor.make(Fused(group, 0), inputs)


def recomputable(t: Tensor) -> bool:
    """An elementwise value (a single op or a fused group's unsummed output)."""
    if isinstance(t.op, Fused):
        return t.op.out.reduce is None
    return isinstance(t.op, Elementwise) and is_member(t)


def remat(graph: Graph, *, max_steps: int = 8, log: dict | None = None) -> Graph:
    """Recompute cheap elementwise forward values, and the residuals of loops, in the
    backward (module docstring).

    ``max_steps``: the most elementwise ops one recomputation may repeat.  ``log``
    receives ``recomputed`` (how many values) and ``bytes_not_kept`` (the bytes of forward
    values the backward no longer keeps)."""
    graph, stacks, stack_bytes = _loops(graph)
    chosen: dict[int, Tensor] = {}
    if len(graph.outputs) >= 2:
        forward = {id(t) for t in Graph(graph.outputs[:1]).nodes}
        outputs = {id(t) for t in graph.outputs}
        read = {}  # forward values (roots) the backward reads: id -> node
        direct = set()  # ... of which read by a backward node directly, not through a view
        for t in graph.nodes:
            if id(t) in forward:
                continue
            for i in t.inputs:
                r = _root(i)
                if id(r) in forward:
                    read[id(r)] = r
                    if r is i:
                        direct.add(id(r))

        def available(r: Tensor) -> bool:
            return isinstance(r.op, (Input, Constant)) or (id(r) in read and id(r) not in chosen)

        for t in graph.nodes:  # topological order: operands are decided first
            if id(t) in direct and id(t) not in outputs and recomputable(t):
                copy = _recompute(t, available, max_steps)
                if copy is not None:
                    chosen[id(t)] = copy
    if chosen:
        def visit(node: Tensor, old: Tensor) -> Tensor:
            if id(old) in forward or not any(id(i) in chosen for i in node.inputs):
                return node
            return node.replace(inputs=tuple(chosen.get(id(i), i) for i in node.inputs))
        out = rebuild(graph, visit)
    else:
        out = graph
    if log is not None:
        nodes = {id(t): t for t in graph.nodes}
        log["recomputed"] = len(chosen) + stacks
        log["bytes_not_kept"] = sum(nodes[k].nbytes for k in chosen) + stack_bytes
    return out


def _loops(graph: Graph) -> tuple[Graph, int, int]:
    """Loops rebuilt to stack nothing over the steps but their carries: backward loops
    recompute their residuals (:func:`graphc.loop_remat.recomputed`), hoisted projections are
    computed each step (:func:`graphc.loop_remat.unhoisted`) and sums over the steps after a
    loop become running sums in it (:func:`_summed_in_loops`).  Returns the graph, how many
    stacks over the steps it no longer computes and their bytes."""
    memo: dict = {}
    out = rebuild(graph, lambda node, old: recomputed(node, memo)
                  if isinstance(node.op, Scan) else node)
    hoisted: dict = {}
    out = rebuild(out, lambda node, old: unhoisted(node, hoisted)
                  if isinstance(node.op, Scan) else node)
    out = _summed_in_loops(out)
    kept = {id(t) for t in out.nodes}
    gone = {id(t): t for t in _stacks(graph) if id(t) not in kept}
    return out, len(gone), sum(t.nbytes for t in gone.values())


def _stacks(graph: Graph) -> list:
    """The values over all the steps of a loop: scans' stacked outputs and their xs."""
    found = []
    for t in graph.nodes:
        if isinstance(t.op, Scan):
            n_c, n_x = len(t.op.loop.carry), len(t.op.loop.xs)
            found += t.inputs[n_c:n_c + n_x] + ((t,) if t.op.out[0] != "carry" else ())
    return found


def _summed_in_loops(graph: Graph) -> Graph:
    """Each sum over the steps of a loop's per-step values (:func:`graphc.loop_remat.step_sum`:
    a weight's gradient) as one more carry of the loop, a running sum."""
    found: dict = {}  # instance -> (loop, [(sum node, term)])
    for t in graph.nodes:
        hit = step_sum(t)
        if hit is not None:
            found.setdefault(hit[0], (hit[1], []))[1].append((t, hit[2]))
    if not found:
        return graph
    which = {id(t): (key, k) for key, (_, sums) in found.items() for k, (t, _) in
             enumerate(sums)}
    memo: dict = {}

    def visit(node: Tensor, old: Tensor) -> Tensor:
        if isinstance(old.op, Scan) and instance_key(old) in found:
            key = instance_key(old)
            if key not in memo:
                loop, sums = found[key]
                memo[key] = with_sums(loop, node.inputs, [v for _, v in sums])
            loop, inputs, _, moved = memo[key]
            kind, i = node.op.out
            return Tensor.make(Scan(loop, (kind, moved[i] if kind == "node" else i)), inputs)
        if id(old) in which:
            key, k = which[id(old)]
            loop, inputs, first, _ = memo[key]
            return Tensor.make(Scan(loop, ("carry", first + k)), inputs)
        return node
    return rebuild(graph, visit)
