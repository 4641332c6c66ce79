"""Memory planning: liveness, buffer reuse and in-place updates, as an analysis pass.

Before: any well-formed graph.  After: the same graph (this pass changes no node); its log
holds the memory plan of one call in the graph's topological order:

- every value that is not a view (reshape, transpose, broadcast, basic slicing), a feed or
  a constant needs a buffer from its node until the last use of the value or of any view
  of it; graph outputs live to the end;
- *planned*: buffers are slots reused best-fit once dead, and an elementwise or fused node
  may write in place over an operand of its own size that dies at that node (the kernels
  read element i before writing element i); ``planned_peak_bytes`` is the slots plus the
  outputs, the memory one call really holds;
- *naive*: every value its own buffer, nothing freed (``naive_peak_bytes``);
- ``peak_live_bytes``: the most bytes alive at once, a lower bound for any plan without
  in-place updates;
- for a training step (outputs = loss and gradients), ``saved_for_backward``: the forward
  values (those the first output depends on, and the stacks a forward
  scan keeps for its backward loop) that the backward still reads, the only forward values
  kept past their forward use.

The Numba backend plans its buffers by the same rules (``graphc.numba_backend``) and
reports what it allocated as ``buffer_bytes``.

>>> import graphc as gc
>>> x = gc.input("x", (1000,))
>>> log = {}
>>> _ = memory(gc.Graph(gc.sum(gc.exp(gc.exp(x)))), log=log)
>>> log["planned_peak_bytes"], log["naive_peak_bytes"]
(4004, 8004)
"""

from __future__ import annotations

from graphc.elementwise_ops import Elementwise
from graphc.fused_ops import Fused
from graphc.graph import Graph
from graphc.inputs import Constant, Input
from graphc.ir import Tensor
from graphc.scan import siblings


def in_place_ok(t: Tensor, x: Tensor) -> bool:
    """Whether ``t`` may write over operand ``x``'s buffer: an elementwise (or fused
    elementwise) node reading ``x`` at the index it writes."""
    elementwise = isinstance(t.op, Elementwise) or \
        (isinstance(t.op, Fused) and t.op.out.reduce is None)
    return elementwise and x.shape == t.shape and x.nbytes == t.nbytes


def plan(nodes, outputs, inplace: bool = True) -> dict:
    """The memory plan of ``nodes`` run in this order (see the module docstring)."""
    index = {id(t): k for k, t in enumerate(nodes)}
    root: dict[int, int] = {}
    for k, t in enumerate(nodes):
        root[id(t)] = root[id(t.inputs[0])] if t.op.is_view() else k
    last: dict[int, int] = {}
    for k, t in enumerate(nodes):
        for i in t.inputs:
            last[root[id(i)]] = k
    out_ids = {id(t) for t in outputs}
    end = len(nodes)
    for t in outputs:
        last[root[id(t)]] = end
    owns = [not (t.op.is_view() or isinstance(t.op, (Input, Constant))) for t in nodes]
    slot_of: dict[int, int] = {}
    sizes: list[int] = []
    free: list[int] = []
    live = peak = naive = inplace_count = 0
    for k, t in enumerate(nodes):
        if owns[k]:
            need = t.nbytes
            naive += need
            live += need
            peak = max(peak, live)
            if id(t) not in out_ids:
                slot = _reuse(t, k, nodes, index, root, last, slot_of, inplace)
                if slot is not None:
                    inplace_count += 1
                else:
                    slot = best_fit(need, sizes, free)
                slot_of[k] = slot
        for r in {root[id(i)] for i in t.inputs}:
            if last.get(r) == k and owns[r]:
                live -= nodes[r].nbytes
                if r in slot_of and slot_of[r] not in free and \
                        slot_of.get(k) != slot_of[r]:
                    free.append(slot_of[r])
    outputs_bytes = sum(nodes[root[id(t)]].nbytes for t in {id(t): t for t in outputs}.values()
                        if owns[root[id(t)]])
    return {"planned_peak_bytes": int(sum(sizes)) + outputs_bytes,
            "naive_peak_bytes": naive, "peak_live_bytes": peak, "buffers": len(sizes),
            "in_place": inplace_count}


def _reuse(t, k, nodes, index, root, last, slot_of, inplace) -> int | None:
    """An operand's slot that ``t`` can write over in place."""
    if not inplace:
        return None
    for x in t.inputs:
        r = root[id(x)]
        if r == index.get(id(x)) and last.get(r) == k and r in slot_of and \
                in_place_ok(t, x) and sum(i is x for i in t.inputs) == 1:
            return slot_of[r]
    return None


def best_fit(need: int, sizes: list[int], free: list[int]) -> int:
    """A slot for ``need`` bytes: the smallest free one that fits, else the largest free
    one grown, else a new one (``sizes`` and ``free`` are updated)."""
    fits = [s for s in free if sizes[s] >= need]
    if fits:
        slot = min(fits, key=lambda s: sizes[s])
    elif free:
        slot = max(free, key=lambda s: sizes[s])
        sizes[slot] = need
    else:
        sizes.append(need)
        return len(sizes) - 1
    free.remove(slot)
    return slot


def saved_for_backward(graph: Graph) -> tuple[int, int]:
    """(count, bytes) of forward values the backward reads: nodes the first output depends
    on (not feeds, constants or views) used by nodes it does not depend on."""
    if len(graph.outputs) < 2:
        return 0, 0
    forward = {id(t) for t in Graph(graph.outputs[:1]).nodes}
    for members in siblings(graph.nodes).values():  # one loop run computes all of them
        if any(id(m) in forward for m in members):
            forward.update(id(m) for m in members)
    kept = {}
    for t in graph.nodes:
        if id(t) in forward:
            continue
        for i in t.inputs:
            while i.op.is_view():
                i = i.inputs[0]
            if id(i) in forward and not isinstance(i.op, (Input, Constant)):
                kept[id(i)] = i
    return len(kept), sum(t.nbytes for t in kept.values())


def memory(graph: Graph, *, inplace: bool = True, log: dict | None = None) -> Graph:
    """Plan the memory of one call of ``graph`` (module docstring); the graph is returned
    unchanged and the plan goes to ``log``."""
    if log is not None:
        log.update(plan(graph.nodes, graph.outputs, inplace))
        count, size = saved_for_backward(graph)
        log["saved_for_backward"] = count
        log["saved_for_backward_bytes"] = size
    return graph
