"""A memory-aware schedule: the order the backends run the nodes in, chosen to lower the peak.

``Graph.nodes`` is a depth-first order of the outputs.  In a training step that order
computes the first output's whole backward before any weight gradient that is not on its
path, so every activation and every backward value a weight gradient reads stays alive to
the end.  :func:`schedule` is list scheduling instead: of the nodes whose inputs have all
run, it runs next the one that frees the most bytes net (bytes of the values it reads last,
minus the bytes of the buffer it needs), the earlier in depth-first order on a tie.  A
weight gradient thus runs as soon as it can and lets its activation die, and a value is
computed only once nothing that frees memory is ready.

Only the order changes: the same nodes on the same operands, each computed as before, so
every value is bitwise what the depth-first order gives.  A fused group instance or a
scan run (several nodes that one kernel or loop computes) is placed as one unit, its nodes
adjacent.  Feeds, constants and views own no buffer; a value read through a view dies with
the view's last reader; graph outputs never die (they are returned).  The ``memory`` pass
(``passes/memory.py``) keeps this order only when its plan's peak is lower.

>>> import graphc as gc
>>> from graphc.graph import node_names
>>> from graphc.passes.memory import plan
>>> x = gc.input("x", (100, 10))
>>> W1, W2 = gc.param("W1", (10, 100)), gc.param("W2", (100, 10))
>>> loss = gc.sum(gc.square(gc.tanh(x @ W1) @ W2))
>>> g = gc.Graph([loss, *gc.grad(loss, [W1, W2])])
>>> names = node_names(g)   # matmul_3: dh = dy @ W2.T, matmul_4: dW1, matmul_5: dW2
>>> [names[id(t)] for t in g.nodes if t.op.name == "matmul"]
['matmul', 'matmul_2', 'matmul_3', 'matmul_4', 'matmul_5']
>>> order = schedule(g.nodes, g.outputs)
>>> [names[id(t)] for t in order if t.op.name == "matmul"]
['matmul', 'matmul_2', 'matmul_5', 'matmul_3', 'matmul_4']
>>> [plan(nodes, g.outputs).figures["planned_peak_bytes"] for nodes in (g.nodes, order)]
[132004, 92004]
"""

from __future__ import annotations

import heapq

from graphc.fused_ops import Fused
from graphc.inputs import Constant, Input
from graphc.ir import Tensor
from graphc.lowering import instance_key as fused_key
from graphc.scan import Scan
from graphc.scan import instance_key as scan_key


def units(nodes) -> list[list[Tensor]]:
    """``nodes`` as units run together, in the order of their first node: a fused group
    instance's or a scan run's nodes form one unit, every other node its own."""
    found: dict[tuple, list] = {}
    out = []
    for t in nodes:
        key = ("fused",) + fused_key(t) if isinstance(t.op, Fused) else \
            ("scan",) + scan_key(t) if isinstance(t.op, Scan) else None
        if key is None:
            out.append([t])
        elif key in found:
            found[key].append(t)
        else:
            found[key] = [t]
            out.append(found[key])
    return out


def _owns_buffer(t: Tensor) -> bool:
    return not t.op.is_view() and not isinstance(t.op, (Input, Constant))


def schedule(nodes, outputs) -> list[Tensor]:
    """``nodes`` (a topological order) reordered to free memory early (module docstring);
    a topological order of the same nodes, each fused or scan instance's nodes adjacent."""
    groups = units(nodes)
    unit_of = {id(t): u for u, members in enumerate(groups) for t in members}
    root: dict[int, int] = {}  # id(node) -> id of the node owning its storage
    for t in nodes:
        root[id(t)] = root[id(t.inputs[0])] if t.op.is_view() else id(t)
    out_roots = {root[id(t)] for t in outputs}
    size = {id(t): t.nbytes for t in nodes if _owns_buffer(t) and id(t) not in out_roots}
    reads: list[set] = []  # per unit: the storage (roots with a buffer) its nodes read
    readers: dict[int, list[int]] = {}
    waits = [0] * len(groups)  # per unit: the units it needs that have not run
    users: list[set] = [set() for _ in groups]
    for u, members in enumerate(groups):
        needs = {unit_of[id(i)] for t in members for i in t.inputs} - {u}
        waits[u] = len(needs)
        for v in needs:
            users[v].add(u)
        read = set() if members[0].op.is_view() else \
            {root[id(i)] for t in members for i in t.inputs} & size.keys()
        reads.append(read)
        for r in read:
            readers.setdefault(r, []).append(u)
    pending = {r: len(us) for r, us in readers.items()}
    alloc = [sum(size.get(id(t), 0) for t in members) for members in groups]

    def score(u: int) -> int:
        return sum(size[r] for r in reads[u] if pending[r] == 1) - alloc[u]

    ready = [(-score(u), u) for u in range(len(groups)) if waits[u] == 0]
    heapq.heapify(ready)
    done = [False] * len(groups)
    order: list[Tensor] = []
    while ready:
        neg, u = heapq.heappop(ready)
        if done[u] or -neg != score(u):  # run already, or a stale score
            continue
        done[u] = True
        order += groups[u]
        for r in reads[u]:
            pending[r] -= 1
            if pending[r] == 1:  # its last reader now frees it: a better score
                (v,) = [v for v in readers[r] if not done[v]]
                if waits[v] == 0:
                    heapq.heappush(ready, (-score(v), v))
        for v in users[u]:
            waits[v] -= 1
            if waits[v] == 0:
                heapq.heappush(ready, (-score(v), v))
    return order
