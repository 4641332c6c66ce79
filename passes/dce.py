"""Dead code elimination.

A graph is the set of nodes its outputs reach, so a node nothing uses is never part of it:
every pass's rebuilt graph drops what its rewrites made unreachable (that is where most
dead code goes).  What can still be dead is *inside* fused nodes: a fused group lists all
the outputs it had when it was made, and after a rewrite (or when a user fused a graph and
kept only some outputs) some of them may no longer be used.

Before: any well-formed graph.  After: the same values; every fused group holds only the
outputs that are nodes of the graph and the steps they need, so equal groups become equal
nodes and the backends compute nothing dead.
"""

from __future__ import annotations

from graphc.fused_ops import Fused, prune
from graphc.graph import Graph
from graphc.ir import Tensor

from .rewrite import rebuild


def dce(graph: Graph, *, log: dict | None = None) -> Graph:
    """Prune fused groups to their used outputs and the steps those need.

    ``log`` receives ``fused_outputs_removed`` and ``fused_steps_removed``."""
    present: dict[tuple, set[int]] = {}
    for t in graph.nodes:
        if isinstance(t.op, Fused):
            present.setdefault(_instance(t), set()).add(t.op.output)
    pruned: dict[tuple, tuple] = {}
    removed = {"fused_outputs_removed": 0, "fused_steps_removed": 0}
    for key, outs in present.items():
        group = key[0]
        if len(outs) == len(group.outputs) and \
                len(group.needed(o.step for o in group.outputs)) == len(group.steps):
            continue
        keep = sorted(outs)
        new = prune(group.steps, [group.outputs[k] for k in keep], group.dtype,
                    group.input_dtypes, group.tag)
        pruned[key] = (new, {k: n for n, k in enumerate(keep)})
        removed["fused_outputs_removed"] += len(group.outputs) - len(keep)
        removed["fused_steps_removed"] += len(group.steps) - len(new.steps)

    def visit(t: Tensor, old: Tensor) -> Tensor:
        if isinstance(t.op, Fused):
            hit = pruned.get(_instance(old))
            if hit is not None:
                new, index = hit
                return t.replace(op=Fused(new, index[t.op.output]))
        return t

    out = rebuild(graph, visit)
    if log is not None:
        log.update(removed)
    return out


def _instance(t: Tensor) -> tuple:
    """A fused node's group instance: its group and (the identity of) its inputs."""
    return (t.op.group,) + tuple(map(id, t.inputs))
