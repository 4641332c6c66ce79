"""Elementwise fusion: maximal groups of elementwise nodes become fused nodes.

Before: any well-formed graph.  After: the same values, where every group of two or more
elementwise nodes of one shape and float dtype that are connected producer to consumer,
and sums of them over leading axes or all axes, is replaced by :class:`Fused` nodes (one
per value used outside the group: a multi-output group).  A group holds its ops as data
(:class:`~graphc.fused_ops.FusedGroup`); the Numba backend computes it in one loop nest,
sums included, and never materializes a value used only inside the group.

What joins a group:

- an elementwise node (or an earlier fused node's elementwise output) whose result has the
  group's shape and dtype, working in that dtype, and that uses a member of the group;
- a consumer that uses members of several groups merges them;
- ``sum`` of a member over leading axes (a column sum, ``axes=(0,)`` of ``(N, C)``) or over
  every axis: a *reduction epilogue*.  The partial sums of one group share their axes.

What keeps a node out: another shape (a broadcast operand is read broadcast, not joined:
``broadcast_to`` nodes feeding a group are looked through), another dtype, a cast or any
structured op, and *cycles*: a node cannot join a group it depends on through a node
outside the group (``y = f(x); z = g(y, matmul(y, W))``: g cannot join f's group, which
would need the matmul's result before the matmul could run).  A consumer of a group's sum
never joins that group (the sum is complete only after the loop).

Groups grow greedily in topological order, each node joining the groups of its operands
when that is legal.  Legality is checked with *reach sets*: for every node, the set of
groups it depends on (a bit mask over group ids); merging a set S of groups with a node is
legal when no operand from outside S reaches S.

>>> import graphc as gc
>>> x = gc.input("x", (8, 4))
>>> loss = gc.sum(gc.square(gc.tanh(x) * 2.0))
>>> print(fusion(gc.Graph(loss)))        # doctest: +NORMALIZE_WHITESPACE
graph(x: f32[8,4]) {
  fused = fused(x, 2, ops=tanh·mul·square, steps=3, sum_axes=(0, 1)) : f32[]
  return fused
}
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p

from graphc import dtypes
from graphc import elementwise_ops as ew
from graphc.elementwise_ops import Elementwise
from graphc.fused_ops import Fused, FusedGroup, FusedOutput, FusedStep
from graphc.fused_ops import canonical as canonical_form
from graphc.graph import Graph
from graphc.inputs import Constant, Input
from graphc.interpreter import check_sizes
from graphc.ir import Tensor
from graphc.shape_ops import BroadcastTo
from graphc.structured_ops import Reduce

# A group's kernel is one Numba function, and Numba's compile time grows faster than the
# function (each inlined exp/log/tanh/erf is typed again with the whole body): one kernel of
# 20 chained tanh took 14 s, of 80 164 s.  A group is therefore capped at MAX_GROUP_COST
# (CALL_COST per such call, 1 per other step): a long chain becomes a sequence of groups,
# each compiled in bounded time, and groups with the same body share one kernel, so
# compile time grows at most linearly with the chain.  W3's whole training step (22 ops,
# 10 of them calls: cost 102) stays one group.
MAX_GROUP_COST = 128
CALL_COST = 8
_CALLS = (sp.exp, sp.log, sp.tanh, sp.erf, expm1, log1p)


def step_cost(fn) -> int:
    """The cost of one step computing elementwise op ``fn`` (MAX_GROUP_COST)."""
    calls = sum(1 for f in fn.stable.atoms(sp.Function) if isinstance(f, _CALLS))
    return 1 + CALL_COST * calls


def member_cost(t: Tensor) -> int:
    """The cost of an elementwise node or of an earlier fused node's output."""
    if isinstance(t.op, Fused):
        g = t.op.group
        return sum(step_cost(g.steps[s].fn) for s in g.needed((t.op.out.step,)))
    return step_cost(t.op.fn)


def is_member(t: Tensor) -> bool:
    """An elementwise value that can be a step of a group."""
    if isinstance(t.op, Fused):
        return t.op.out.reduce is None
    return isinstance(t.op, Elementwise) and dtypes.is_float(t.dtype) and \
        t.op.fn.out_dtype is None and t.op.work_dtype([i.dtype for i in t.inputs]) == t.dtype


def epilogue_axes(t: Tensor) -> int | None:
    """For a float ``sum`` that can end a group: the number of leading axes it sums
    (-1 for all axes), else None."""
    if not (isinstance(t.op, Reduce) and t.op.kind == "sum" and dtypes.is_float(t.dtype)):
        return None
    x, axes = t.inputs[0], t.op.axes
    if not axes or x.size == 0:
        return None
    if axes == tuple(range(x.ndim)):
        return -1
    return len(axes) if axes == tuple(range(len(axes))) else None


@dataclass
class _Group:
    gid: int
    shape: tuple
    dtype: str
    members: list = field(default_factory=list)  # elementwise nodes, topological order
    sums: list = field(default_factory=list)  # reduction epilogues
    lead: int | None = None  # leading axes the partial sums of this group reduce
    ext: set = field(default_factory=set)  # ids of operands from outside the group
    mask: int = 0  # bits of every original group id merged into this one
    reach: int = 0  # the groups that any member depends on: the fused node needs them all
    cost: int = 0  # the members' step costs (MAX_GROUP_COST)
    forward: bool = False  # holds a forward value of a training step
    late: bool = False  # holds a backward value that must not be computed with the forward


class _Grouping:
    """Greedy grouping in topological order (module docstring)."""

    def __init__(self, graph: Graph, reductions: bool, forward=frozenset(), late=frozenset()):
        self.graph = graph
        self.reductions = reductions
        self.forward, self.late = forward, late
        self.parent: dict[int, int] = {}
        self.groups: dict[int, _Group] = {}
        self.group_of: dict[int, int] = {}  # id(member or sum) -> original group id
        self.is_sum: set[int] = set()
        self.reach: dict[int, int] = {}
        self.nodes: dict[int, Tensor] = {}

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def member_group(self, t: Tensor) -> int | None:
        g = self.group_of.get(id(t))
        return None if g is None or id(t) in self.is_sum else self.find(g)

    def reach_of(self, t: Tensor) -> int:
        """The groups ``t`` depends on.  A member's value comes out of its group's fused
        node, which needs every operand of every member: a member reaches what its whole
        group reaches."""
        g = self.group_of.get(id(t))
        return self.reach[id(t)] if g is None else self.groups[self.find(g)].reach

    def run(self) -> list[_Group]:
        for t in self.graph.nodes:
            self.nodes[id(t)] = t
            reach = 0
            for i in t.inputs:
                reach |= self.reach_of(i)
            self.reach[id(t)] = reach
            if is_member(t):
                g = self.join(t)
                self.reach[id(t)] = reach | (1 << g)
                self.groups[self.find(g)].reach |= self.reach[id(t)]
            elif self.reductions and self.join_sum(t):
                self.groups[self.find(self.group_of[id(t)])].reach |= reach
        roots = {self.find(g) for g in self.parent}
        return [self.groups[g] for g in sorted(roots)
                if len(self.groups[g].members) + len(self.groups[g].sums) >= 2]

    def join(self, t: Tensor) -> int:
        gid = len(self.parent)
        self.parent[gid] = gid
        own = _Group(gid, t.shape, t.dtype, [t], ext={id(i) for i in t.inputs}, mask=1 << gid,
                     cost=member_cost(t), forward=id(t) in self.forward,
                     late=id(t) in self.late)
        self.groups[gid] = own
        self.group_of[id(t)] = gid
        candidates = []
        for i in t.inputs:
            g = self.member_group(i)
            if g is not None and g not in candidates and \
                    (self.groups[g].shape, self.groups[g].dtype) == (t.shape, t.dtype) and \
                    not self.delays(self.groups[g], t):
                candidates.append(g)
        if not candidates:
            return gid
        if not self.merge([gid] + candidates):
            for g in candidates:
                if self.merge([gid, g]):
                    break
        return gid

    def delays(self, group: _Group, t: Tensor) -> bool:
        """Whether ``t`` joining ``group`` would keep many values alive: a fused group runs
        once all its operands exist, so an operand of ``t`` computed after the group's
        members (the next term of a running sum: ``((a + b) + c) + d`` with a, b, c, d
        from matmuls far apart) postpones the group, and every value it reads stays alive
        until then.  Joining is refused when those values (computed, full-size operands)
        hold more than twice the bytes of ``t``, which joining would save.  Only a late
        operand that no group computes counts (a matmul's, a reduction's, a slice of one):
        an elementwise one would be refused by how much the group holds so far, which
        grows as the group does, so identical steps of an unrolled loop were cut at drifting
        places into different groups (the unrolled W4: 29 group bodies for 50 steps, 11
        this way, with the same planned peak on every workload)."""
        last = max(self.order[id(m)] for m in group.members)
        members = {id(m) for m in group.members}
        if not any(id(i) not in members and self.order[id(i)] > last and _transient(i)
                   and not is_member(i) for i in t.inputs):
            return False
        held = sum(self.nodes[i].nbytes for i in group.ext
                   if i not in members and _transient(self.nodes[i]) and
                   self.nodes[i].shape == group.shape)
        return held > 2 * t.nbytes

    def merge(self, roots) -> bool:
        """Merge the groups ``roots`` if no operand from outside them reaches them and
        the result stays within MAX_GROUP_COST."""
        groups = [self.groups[g] for g in roots]
        if sum(g.cost for g in groups) > MAX_GROUP_COST:
            return False
        mask = 0
        for g in groups:
            mask |= g.mask
        inside = {id(m) for g in groups for m in g.members}
        ext = set().union(*(g.ext for g in groups)) - inside
        if any(self.reach_of(self.nodes[i]) & mask for i in ext):
            return False
        leads = {g.lead for g in groups if g.lead is not None}
        if len(leads) > 1:
            return False
        if any(g.forward for g in groups) and any(g.late for g in groups):
            return False
        target = groups[0]
        for g in groups[1:]:
            self.parent[g.gid] = target.gid
            target.members += g.members
            target.sums += g.sums
            del self.groups[g.gid]
        target.members.sort(key=lambda m: self.order[id(m)])
        target.ext, target.mask = ext, mask
        target.reach = 0
        for g in groups:
            target.reach |= g.reach
        target.lead = leads.pop() if leads else target.lead
        target.cost = sum(g.cost for g in groups)
        target.forward = any(g.forward for g in groups)
        target.late = any(g.late for g in groups)
        return True

    @property
    def order(self) -> dict[int, int]:
        if not hasattr(self, "_order"):
            self._order = {id(t): k for k, t in enumerate(self.graph.nodes)}
        return self._order

    def join_sum(self, t: Tensor) -> bool:
        lead = epilogue_axes(t)
        if lead is None:
            return False
        g = self.member_group(t.inputs[0])
        if g is None:
            return False
        group = self.groups[g]
        if lead != -1:
            if group.lead not in (None, lead):
                return False
            group.lead = lead
        group.sums.append(t)
        self.group_of[id(t)] = g
        self.is_sum.add(id(t))
        return True


_COMMUTATIVE = (ew.add, ew.mul)


def _transient(t: Tensor) -> bool:
    """A value computed in the graph (not a feed or constant, seen through views)."""
    while t.op.is_view():
        t = t.inputs[0]
    return not isinstance(t.op, (Input, Constant))


def _base(t: Tensor, members: set[int]) -> Tensor:
    """An operand read by a group: broadcast_to nodes are looked through (a fused group
    broadcasts its operands itself)."""
    while isinstance(t.op, BroadcastTo) and id(t) not in members:
        t = t.inputs[0]
    return t


def _build(group: _Group, users: dict[int, list], outputs: set[int]):
    """The FusedGroup of ``group``, its inputs, and the member each output stands for."""
    built = _build_with(group, users, outputs, look_through=True)
    if np.broadcast_shapes(*(t.shape for t in built[1])) != group.shape:
        # every operand was a broadcast: one must stay one, to give the group its shape
        built = _build_with(group, users, outputs, look_through=False)
    return built


def _build_with(group: _Group, users, outputs, look_through: bool):
    members = {id(m) for m in group.members}
    inputs: list[Tensor] = []
    index: dict[int, int] = {}
    steps: list[FusedStep] = []
    step_index: dict[FusedStep, int] = {}
    value: dict[int, tuple] = {}

    def operand(t: Tensor) -> tuple:
        if id(t) in members:
            return value[id(t)]
        if look_through:
            t = _base(t, members)
        if id(t) not in index:
            index[id(t)] = len(inputs)
            inputs.append(t)
        return ("in", index[id(t)])

    def add(step: FusedStep) -> tuple:
        k = step_index.get(step)
        if k is None:
            k = step_index[step] = len(steps)
            steps.append(step)
        return ("step", k)

    def canonical(m: Tensor) -> list[Tensor]:
        """The operands of a commutative add or mul in a canonical order (members, then
        known inputs by number, then computed values before feeds and constants): a long
        chain cut into groups then gives groups with one text, which share one kernel
        (a + b and b + a round alike)."""
        ins = list(m.inputs)
        if not (isinstance(m.op, Elementwise) and m.op.fn in _COMMUTATIVE):
            return ins

        def rank(k):
            t = ins[k]
            if id(t) in members:
                return (0, value[id(t)][1], False, k)
            base = _base(t, members) if look_through else t
            return (1, index.get(id(base), len(index)), not _transient(base), k)
        return [ins[k] for k in sorted(range(len(ins)), key=rank)]

    for m in group.members:
        refs = [operand(i) for i in canonical(m)]
        if isinstance(m.op, Elementwise):
            value[id(m)] = add(FusedStep(m.op.fn, m.op.params, tuple(refs)))
        else:  # an earlier fused node: inline its steps
            value[id(m)] = inline(m.op.group, m.op.out.step, refs, add)
    outs, stands_for = _group_outputs(group, value, users, outputs)
    fused = FusedGroup(tuple(steps), tuple(outs), group.dtype,
                       tuple(t.dtype for t in inputs))
    # relabelled canonically: groups with one body up to renaming share one kernel
    fused, ins, outs = canonical_form(fused)
    return fused, [inputs[j] for j in ins], [stands_for[k] for k in outs]


def _group_outputs(group: _Group, value: dict, users, outputs):
    """The group's outputs (``value``: the step computing each member) and the nodes they
    stand for: each member read outside the group or an output of the graph, then each
    sum."""
    members = {id(m) for m in group.members}
    sums = {id(s) for s in group.sums}
    outs, stands_for = [], []
    for m in group.members:
        if id(m) in outputs or any(id(u) not in members and id(u) not in sums
                                   for u in users.get(id(m), ())):
            outs.append(FusedOutput(value[id(m)][1]))
            stands_for.append(m)
    for s in group.sums:
        outs.append(FusedOutput(value[id(s.inputs[0])][1], s.op.axes, s.op.keepdims))
        stands_for.append(s)
    return outs, stands_for


def inline(sub: FusedGroup, step: int, refs, add) -> tuple:
    local: dict[int, tuple] = {}
    for s in sorted(sub.needed((step,))):
        st = sub.steps[s]
        args = tuple(refs[r[1]] if r[0] == "in" else local[r[1]] if r[0] == "step" else r
                     for r in st.args)
        local[s] = add(FusedStep(st.fn, st.params, args))
    return local[step]


def fusion(graph: Graph, *, reductions: bool = True, log: dict | None = None) -> Graph:
    """Fuse elementwise groups (module docstring).  ``reductions=False`` leaves every sum
    unfused.  ``log`` receives ``groups`` (how many), ``nodes_fused``, ``epilogues``,
    ``bytes_saved`` (intermediate values no longer stored) and per-group details.
    A node of more than ``interpreter.MAX_ELEMENTS`` elements raises GraphError here,
    naming it, before fusion hides it in a group's loop."""
    check_sizes(graph.nodes)
    users: dict[int, list] = {}
    for t in graph.nodes:
        for i in t.inputs:
            users.setdefault(id(i), []).append(t)
    outputs = {id(t) for t in graph.outputs}
    forward = frozenset(id(t) for t in Graph(graph.outputs[:1]).nodes) \
        if len(graph.outputs) > 1 else frozenset()
    late: frozenset = frozenset()
    for _ in range(4):  # a few rounds: each can only add backward values to ``late``
        groups = _Grouping(graph, reductions, forward, late).run()
        more = _stored_early(groups, users, outputs, forward) - late
        if not more:
            break
        late |= more
    while True:
        replaced: dict[int, tuple] = {}  # id(member or sum) -> (group, output k or None)
        built = []
        for n, group in enumerate(groups):
            fused, inputs, stands_for = _build(group, users, outputs)
            built.append((fused, inputs))
            for m in group.members + group.sums:
                replaced[id(m)] = (n, None)
            for k, m in enumerate(stands_for):
                replaced[id(m)] = (n, k)
        try:
            out = Graph(_remake(graph.outputs, replaced, built))
            break
        except _Cycle as cycle:
            groups = [g for n, g in enumerate(groups) if n != cycle.args[0]] \
                if cycle.args[0] is not None else groups[:-1]
    if log is not None:
        log.update(_report(groups, built, replaced))
    return out


def _stored_early(groups, users, outputs, forward) -> frozenset:
    """Backward members of groups that also compute forward values, when one of them is
    used outside its group and is not a graph output.  Computed with the forward, such a
    value would be stored from the forward until the backward reads it (a local derivative
    like sigmoid's y(1 - y) joins its forward group easily): these groups' backward members
    are kept out of forward groups, so they are computed where the backward needs them."""
    late = set()
    for g in groups:
        if not any(id(m) in forward for m in g.members):
            continue
        inside = {id(m) for m in g.members} | {id(s) for s in g.sums}
        backward = [m for m in g.members if id(m) not in forward]
        if any(id(m) not in outputs and any(id(u) not in inside for u in users.get(id(m), ()))
               for m in backward):
            late.update(id(m) for m in backward)
    return frozenset(late)


def _remake(outputs, replaced, built) -> list[Tensor]:
    """The outputs rebuilt with groups replaced by fused nodes.  Depth-first from the
    outputs (iteratively): a group is made once all its inputs are, which the topological
    order of the old graph need not give (an input of a late member may come after the
    group's first member)."""
    mapping: dict[int, Tensor] = {}
    made: dict[int, list] = {}
    expanded: set[int] = set()
    stack = list(outputs)
    while stack:
        t = stack[-1]
        if id(t) in mapping:
            stack.pop()
            continue
        hit = replaced.get(id(t))
        deps = t.inputs if hit is None else built[hit[0]][1]
        missing = [i for i in deps if id(i) not in mapping]
        if missing:
            if id(t) in expanded:  # its operands came back to it: groups form a cycle
                raise _Cycle(hit[0] if hit is not None else None)
            expanded.add(id(t))
            stack.extend(missing)
            continue
        stack.pop()
        if hit is None:
            inputs = tuple(mapping[id(i)] for i in t.inputs)
            same = all(a is b for a, b in zip(inputs, t.inputs))
            mapping[id(t)] = t if same else t.replace(inputs=inputs)
            continue
        n, k = hit
        if n not in made:
            fused, inputs = built[n]
            new_inputs = [mapping[id(i)] for i in inputs]
            made[n] = [Tensor.make(Fused(fused, j), new_inputs)
                       for j in range(len(fused.outputs))]
        mapping[id(t)] = made[n][k]
    return [mapping[id(t)] for t in outputs]


class _Cycle(Exception):
    """Fused groups that would depend on each other (the grouping should never make
    them; fusion drops a group rather than build a wrong graph)."""


def _report(groups, built, replaced) -> dict:
    saved = 0
    details = []
    for group, (fused, inputs) in zip(groups, built):
        for m in group.members:
            if replaced[id(m)][1] is None:  # used only inside the group: never stored
                saved += m.nbytes
        details.append({"ops": fused.summary, "steps": len(fused.steps),
                        "inputs": len(inputs), "outputs": len(fused.outputs),
                        "sums": len(group.sums), "shape": group.shape})
    return {"groups": len(groups),
            "nodes_fused": sum(len(g.members) + len(g.sums) for g in groups),
            "epilogues": sum(len(g.sums) for g in groups),
            "bytes_saved": saved, "fused": details}
