"""Memory planning: a memory-aware schedule, liveness, buffer reuse and in-place updates.

Before: any well-formed graph.  After: the same nodes, in the memory-aware order of
``passes/schedule.py`` when its plan needs fewer bytes than the graph's order (this pass
changes no node and no operand: only the order the backends run them in); its log holds
the memory plan of one call in that order (and ``unscheduled_peak_bytes``, the planned
peak in the order given):

- every value that is not a view (reshape, transpose, broadcast, basic slicing), a feed or
  a constant needs a buffer from its node until the last use of the value or of any view
  of it; graph outputs live to the end;
- *planned*: an elementwise or fused node may write in place over an operand of its own
  size that dies at that node (the kernels read element i before writing element i);
  the other values are packed (:func:`pack`) into the fresh array of an output written
  after they die, else into one buffer at offsets where nothing alive at the same time
  lies (or slots reused best-fit once dead, when those need fewer bytes);
  ``planned_peak_bytes`` is that buffer plus the outputs, the memory one call really
  holds;
- *naive*: every value its own buffer, nothing freed (``naive_peak_bytes``);
- ``peak_live_bytes``: the most bytes alive at once, a lower bound for any plan without
  in-place updates;
- for a training step (outputs = loss and gradients), ``saved_for_backward``: the forward
  values (those the first output depends on) that the backward still reads, the only
  forward values kept past their forward use.

This plan is the one the backends run: the Numba backend allocates its slots (and reports
their ``buffer_bytes``, as this pass logs them) and the CUDA backend drops each value at
the step ``frees`` names.

>>> import graphc as gc
>>> x = gc.input("x", (1000,))
>>> log = {}
>>> _ = memory(gc.Graph(gc.sum(gc.exp(gc.exp(x)))), log=log)
>>> log["planned_peak_bytes"], log["naive_peak_bytes"]
(4004, 8004)
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from graphc.elementwise_ops import Elementwise
from graphc.fused_ops import Fused
from graphc.graph import Graph
from graphc.inputs import Constant, Input
from graphc.ir import Tensor
from graphc.lowering import group_order, instance_key, run_key
from graphc.scan import siblings

from .schedule import schedule

# Outputs larger than this are fresh arrays of each call (the Numba backend stages smaller
# ones in buffers of its own and returns copies: its STAGE_BYTES is this), so their storage
# can host values that die before the output is written.
FRESH_OUTPUT_BYTES = 16384
# offsets of values in an output or in the one buffer are multiples of this
HOST_ALIGN = 64
ARENA = -1  # pack's region for values in one buffer of the call's own


def in_place_ok(t: Tensor, x: Tensor) -> bool:
    """Whether ``t`` may write over operand ``x``'s buffer: an elementwise (or fused
    elementwise) node reading ``x`` at the index it writes."""
    elementwise = isinstance(t.op, Elementwise) or \
        (isinstance(t.op, Fused) and t.op.out.reduce is None)
    return elementwise and x.shape == t.shape and x.nbytes == t.nbytes


@dataclass
class MemoryPlan:
    """The buffer plan of one call, by :func:`plan`: what the ``memory`` pass logs and
    what the backends allocate and free.

    ``order``: the nodes in the order planned (a fused group instance's outputs adjacent);
    ``root[id(t)]``: the position in ``order`` of the node owning ``t``'s storage (itself,
    or for a view the root of its operand); ``slot_of[id(t)]``: the buffer slot of a node
    stored in a reused buffer (not outputs, which are fresh arrays per call), at byte
    ``offset_of[id(t)]`` of it;
    ``slot_bytes``: each slot's size; ``frees[k]``: the storage roots whose last use (by
    the node itself, a view of it or an output) is step ``k``; ``in_place``: the nodes
    that write over an operand's slot; ``host_of[id(t)]``: for a node stored in an
    output's fresh array instead of a slot, ``(position of the output, byte offset)``;
    ``donated_to[id(t)]``: for an output computed in place over a donated input's array,
    the position of that input."""

    order: list
    root: dict
    slot_of: dict
    slot_bytes: list
    frees: dict
    in_place: int
    figures: dict
    host_of: dict = field(default_factory=dict)
    offset_of: dict = field(default_factory=dict)
    values: dict = field(default_factory=dict)  # root -> positions of it and its views
    donated_to: dict = field(default_factory=dict)  # id(output) -> position of its input

    @property
    def bytes(self) -> int:
        """The bytes of every slot: what a backend allocates once per concurrent call."""
        return int(sum(self.slot_bytes))

    def dead_at(self, k: int) -> list[int]:
        """Positions in ``order`` of every value (roots and their views) whose storage
        dies at step ``k``."""
        if not self.values:
            for n, t in enumerate(self.order):
                self.values.setdefault(self.root[id(t)], []).append(n)
        return [n for r in self.frees.get(k, ()) for n in self.values[r]]


def default_storage(t: Tensor) -> str:
    """How ``t``'s value is stored when a backend does not say: ``view`` (of its
    operand's storage), ``none`` (a feed or constant: not the plan's) or ``buffer``."""
    if t.op.is_view():
        return "view"
    return "none" if isinstance(t.op, (Input, Constant)) else "buffer"


def plan(nodes, outputs, inplace: bool = True, storage: dict | None = None,
         host: bool = True, donated=()) -> MemoryPlan:
    """The memory plan of ``nodes`` run in this order (see the module docstring), fused
    group instances made adjacent (``lowering.group_order``).  ``storage``: by ``id``, a
    backend's own choice for a node, ``buffer``, ``view``, ``alloc`` (storage of its own
    that the backend allocates, not a slot) or ``none`` (folded into a constant); the
    others get :func:`default_storage`.  ``host``: values may live in the storage of an
    output written after they die (:func:`pack`).  ``donated``: ``{id(input): id(output)
    or None}``, inputs whose fed arrays the call may write over (with the output that
    should take each, None: any): an output is computed in place over one
    (:func:`_donations`, ``plan.donated_to``) instead of into an array of its own."""
    order = group_order(nodes)
    kind = [(storage or {}).get(id(t)) or default_storage(t) for t in order]
    root, last, frees = _liveness(order, kind, outputs)
    out_ids = {id(t) for t in outputs}
    dies = _dies_at(order)
    donated_to = _donations(order, kind, out_ids, root, last, dies, donated)
    owns = [c in ("buffer", "alloc") for c in kind]
    nbytes = [t.nbytes if owns[k] else 0 for k, t in enumerate(order)]
    slotted = [c == "buffer" and id(t) not in out_ids for c, t in zip(kind, order)]
    chains: dict[int, list[int]] = {}  # first value -> the values written over its buffer
    first: dict[int, int] = {}
    handed: set[int] = set()
    live = peak = naive = 0
    for k, t in enumerate(order):
        if owns[k]:
            naive += nbytes[k]
            live += nbytes[k]
            peak = max(peak, live)
        if slotted[k]:
            r = _reuse(t, dies.get(id(t), k), order, root, last, slotted, handed) \
                if inplace else None
            if r is not None:
                handed.add(r)
            first[k] = k if r is None else first[r]
            chains.setdefault(first[k], []).append(k)
        for r in frees.get(k, ()):
            if owns[r]:
                live -= nbytes[r]
    hosts = _hosts(order, kind, out_ids) if host else {}
    where = pack(chains, nbytes, last, {k: h for k, h in hosts.items()
                                        if id(order[k]) not in donated_to})
    hosted = {k: w for k, w in where.items() if w[0] != ARENA}
    rest = {k: members for k, members in chains.items() if k not in hosted}
    arena = ({k: (0, where[k][1]) for k in rest},
             [max(where[k][1] + nbytes[k] for k in rest)] if rest else [])
    place, sizes = min((arena, _at_zero(*assign_slots(rest, nbytes, last)),
                        _at_zero(*online_slots(rest, nbytes, frees, first, handed))),
                       key=lambda a: sum(a[1]))
    slot_of = {id(order[k]): place[first[k]][0] for k in first if first[k] in place}
    offset_of = {id(order[k]): place[first[k]][1] for k in first if first[k] in place}
    host_of = {id(order[k]): hosted[first[k]] for k in first if first[k] in hosted}
    outputs_bytes = sum(order[root[id(t)]].nbytes for t in {id(t): t for t in outputs}.values()
                        if owns[root[id(t)]] and id(order[root[id(t)]]) not in donated_to)
    figures = {"planned_peak_bytes": int(sum(sizes)) + outputs_bytes,
               "naive_peak_bytes": naive, "peak_live_bytes": peak, "buffers": len(sizes),
               "buffer_bytes": int(sum(sizes)), "in_place": len(handed),
               "hosted": len(host_of), "donated": len(donated_to),
               "donated_bytes": sum(order[k].nbytes for k in donated_to.values())}
    return MemoryPlan(order, root, slot_of, sizes, frees, len(handed), figures, host_of,
                      offset_of, donated_to=donated_to)


def _liveness(order, kind, outputs) -> tuple[dict, dict, dict]:
    """``(root, last, frees)``: by ``id``, the position owning each node's storage (itself,
    or a view's operand's root); by root, the last step reading it or a view of it
    (``len(order)`` for outputs); by step, the roots whose last use it is."""
    root: dict[int, int] = {}
    for k, t in enumerate(order):
        root[id(t)] = root[id(t.inputs[0])] if kind[k] == "view" else k
    last: dict[int, int] = {}
    for k, t in enumerate(order):
        for i in t.inputs:
            last[root[id(i)]] = k
    for t in outputs:
        last[root[id(t)]] = len(order)
    frees: dict[int, list[int]] = {}
    for r, k in last.items():
        frees.setdefault(k, []).append(r)
    return root, last, frees


def _at_zero(slot: dict, sizes: list) -> tuple[dict, list]:
    return {k: (s, 0) for k, s in slot.items()}, sizes


def _dies_at(order) -> dict[int, int]:
    """For each fused node, the position of its instance's last output: one kernel
    computes them all, so their operands are read until then."""
    last: dict[tuple, int] = {}
    for k, t in enumerate(order):
        if isinstance(t.op, Fused):
            last[instance_key(t)] = k
    return {id(t): last[instance_key(t)] for t in order if isinstance(t.op, Fused)}


def _donations(order, kind, out_ids, root, last, dies, donated) -> dict[int, int]:
    """``{id(output): position of a donated input}``: each output (over FRESH_OUTPUT_BYTES,
    stored in a buffer) that may write over the fed array of a donated input it reads once
    at the positions it writes (:func:`in_place_ok`) and that nothing reads afterwards, the
    view of an input included; each input given to one output at most."""
    if not donated:
        return {}
    given: dict[int, int] = {}
    taken: set[int] = set()
    for k, t in enumerate(order):
        if id(t) not in out_ids or kind[k] != "buffer" or t.nbytes <= FRESH_OUTPUT_BYTES:
            continue
        ok = [root[id(x)] for x in t.inputs if order[root[id(x)]] is x
              and donated.get(id(x), 0) in (id(t), None) and root[id(x)] not in taken
              and last.get(root[id(x)]) == dies.get(id(t), k) and in_place_ok(t, x)
              and sum(i is x for i in t.inputs) == 1]
        if ok:  # the input meant for this output first
            r = min(ok, key=lambda r: donated[id(order[r])] is None)
            given[id(t)] = r
            taken.add(r)
    return given


def _hosts(order, kind, out_ids) -> dict[int, tuple[int, int]]:
    """The outputs that can host values, ``{position: (bytes, step written)}``: each
    output computed into a fresh array of its own (a buffer output over
    FRESH_OUTPUT_BYTES), written at the first node of its fused group instance or scan
    run (one kernel or loop writes them all)."""
    first: dict[tuple, int] = {}
    hosts = {}
    for k, t in enumerate(order):
        key = run_key(t) or ("node", k)
        first.setdefault(key, k)
        if id(t) in out_ids and kind[k] == "buffer" and t.nbytes > FRESH_OUTPUT_BYTES:
            hosts[k] = (t.nbytes, first[key])
    return hosts


def pack(chains: dict, nbytes, last, hosts: dict) -> dict[int, tuple[int, int]]:
    """Where each of ``chains`` (as :func:`assign_slots`) is stored, ``{first position:
    (region, byte offset)}``, each at the lowest offset where no chain alive at the same
    time overlaps it: in one buffer for the whole call (region ARENA) if it fits in the
    bytes that buffer has so far, else in the smallest output of ``hosts`` (see
    :func:`_hosts`) written after its last use, else in the buffer grown.  Chains no
    output can take are placed first, then the others, each largest first.  An output is
    a fresh array per call written after all it hosts is dead, so nothing it returns is
    aliased; a value in the buffer costs nothing per call, one in an output a view."""
    regions = sorted(hosts, key=lambda h: hosts[h][0])
    placed: dict[int, _Placed] = {h: _Placed() for h in [*regions, ARENA]}
    where: dict[int, tuple[int, int]] = {}
    spans = [(-(-nbytes[k] // HOST_ALIGN) * HOST_ALIGN, k,
              max(last.get(m, m) for m in members)) for k, members in chains.items()]
    spans.sort(key=lambda s: (any(s[2] < hosts[h][1] and s[0] <= hosts[h][0]
                                  for h in hosts), -s[0], s[1]))
    top = 0  # the buffer's bytes so far
    for size, start, end in spans:
        tries = [(ARENA, top)] + [(h, hosts[h][0]) for h in regions if end < hosts[h][1]]
        for h, capacity in [*tries, (ARENA, 1 << 62)]:
            offset = _lowest_gap(placed[h], start, end, size, capacity)
            if offset is not None:
                placed[h].add(start, end, offset, size)
                where[start] = (h, offset)
                top = max(top, offset + size) if h == ARENA else top
                break
    return where


class _Placed:
    """The chains placed in one region: rows ``(start, end, offset, size)``, in arrays (a
    5,000-node graph places thousands; finding those alive at once is one array test)."""

    def __init__(self):
        self.rows = np.empty((64, 4), np.int64)
        self.n = 0

    def add(self, start: int, end: int, offset: int, size: int) -> None:
        if self.n == len(self.rows):
            self.rows = np.concatenate([self.rows, np.empty_like(self.rows)])
        self.rows[self.n] = (start, end, offset, size)
        self.n += 1

    def lowest_gap(self, start: int, end: int, size: int) -> int:
        """The lowest offset of ``size`` bytes that no row alive during ``start..end``
        overlaps: below the first alive block (in offset order) that leaves ``size`` bytes
        free under it, else above them all."""
        rows = self.rows[:self.n]
        rows = rows[(rows[:, 0] <= end) & (rows[:, 1] >= start)]
        if not len(rows):
            return 0
        lo, hi = rows[:, 2], rows[:, 2] + rows[:, 3]
        order = np.lexsort((hi, lo))
        lo, hi = lo[order], hi[order]
        below = np.maximum.accumulate(np.concatenate([[0], hi]))  # the top so far
        fits = np.flatnonzero(lo - below[:-1] >= size)
        return int(below[fits[0]] if len(fits) else below[-1])


def _lowest_gap(placed: _Placed, start: int, end: int, size: int,
                capacity: int) -> int | None:
    """The lowest offset of ``size`` bytes in a region of ``capacity`` bytes that no
    chain of ``placed`` alive during ``start..end`` overlaps."""
    offset = placed.lowest_gap(start, end, size)
    return offset if offset + size <= capacity else None


def _reuse(t, dies, order, root, last, slotted, handed) -> int | None:
    """The storage root of an operand whose slot ``t`` can write over in place: not a
    view, in a slot, read once by ``t`` and by nothing after ``dies``."""
    for x in t.inputs:
        r = root[id(x)]
        if order[r] is x and last.get(r) == dies and slotted[r] and \
                r not in handed and in_place_ok(t, x) and sum(i is x for i in t.inputs) == 1:
            return r
    return None


def assign_slots(chains: dict, nbytes, last) -> tuple[dict[int, int], list[int]]:
    """Slots for ``chains`` (first value's position -> the positions of the values that
    share its buffer, each written in place over the one before), ``(slot by first
    position, slot sizes)``, greedy by size: largest buffer first, each in the smallest
    slot no buffer alive at the same time holds, else a new slot of its size."""
    spans = sorted((-nbytes[k], k, max(last.get(m, m) for m in members))
                   for k, members in chains.items())
    sizes: list[int] = []
    busy: list[list[tuple[int, int]]] = []  # per slot: the (first, last) steps held, sorted
    slot: dict[int, int] = {}
    for need, start, end in spans:
        # slots are made largest first: the smallest free one is the last one free
        free = next((s for s in range(len(busy) - 1, -1, -1)
                     if _free_during(busy[s], start, end)), None)
        if free is not None:
            slot[start] = free
        else:
            slot[start] = len(sizes)
            sizes.append(-need)
            busy.append([])
        bisect.insort(busy[slot[start]], (start, end))
    return slot, sizes


def _free_during(held: list[tuple[int, int]], start: int, end: int) -> bool:
    i = bisect.bisect(held, (start, end))
    return (i == 0 or held[i - 1][1] < start) and (i == len(held) or held[i][0] > end)


def online_slots(chains: dict, nbytes, frees, first, handed) -> tuple[dict[int, int], list]:
    """Slots for ``chains`` (as :func:`assign_slots`) taken in the order run: each the
    best fit among the slots freed so far (:func:`best_fit`)."""
    slot: dict[int, int] = {}
    sizes: list[int] = []
    free: list[int] = []
    for k, need in enumerate(nbytes):
        if k in chains:
            slot[k] = best_fit(need, sizes, free)
        for r in frees.get(k, ()):
            if r in first and r not in handed and first[r] in slot:
                free.append(slot[first[r]])
    return slot, sizes


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


def memory(graph: Graph, *, inplace: bool = True, reorder: bool = True,
           log: dict | None = None) -> Graph:
    """Plan the memory of one call of ``graph`` (module docstring): the graph is returned
    with the memory-aware schedule (``passes/schedule.py``) when ``reorder`` and its plan
    needs fewer bytes than the graph's order, and the plan goes to ``log``."""
    figures = plan(graph.nodes, graph.outputs, inplace).figures
    unscheduled = figures["planned_peak_bytes"]
    if reorder:
        order = schedule(graph.nodes, graph.outputs)
        better = plan(order, graph.outputs, inplace).figures
        if better["planned_peak_bytes"] < unscheduled:
            graph, figures = Graph(graph.outputs, order), better
    if log is not None:
        log.update(figures)
        log["unscheduled_peak_bytes"] = unscheduled
        count, size = saved_for_backward(graph)
        log["saved_for_backward"] = count
        log["saved_for_backward_bytes"] = size
    return graph
