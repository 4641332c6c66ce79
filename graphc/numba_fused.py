"""Fused groups on the Numba backend: one kernel call computes every output of a group
instance."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import numba_codegen as cg
from . import numba_kernels as nk
from .fused_ops import Fused
from .ir import Tensor
from .lowering import (
    broadcast_pattern,
    instance_key,
    split_kinds,
    static_base_shape,
)
from .numba_lowering import Choice, Lowering
from .numba_rules import rule_numpy
from .shape_ops import Index

# ---------------------------------------------------------------------------------------
# Fused groups: one kernel call computes every output of a group instance


def _flat_split(n: int) -> tuple[list[int], int]:
    """A full sum over a flat loop of ``n`` as ``[n0, n1]`` rows of n1 columns and the
    ``tail``, the n - n0 * n1 values after them (summed by one more call): n1 the largest
    divisor of n from 2048 to 4096 (one row of n below that), else 4096 and a tail."""
    for d in range(min(n, 4096), max(1, min(n, 2048)) - 1, -1):
        if n % d == 0:
            return [n // d, d], 0
    return [n // 4096, 4096], n % 4096


class FusedInstance:
    """The outputs of one fused group applied to one set of inputs, and their kernel."""

    def __init__(self, lowering: Lowering, first: Tensor):
        members = lowering.once("fused_members", _group_members)[instance_key(first)]
        self.leader = members[0]  # the first in lowering order computes them all
        # the kernel's outputs in the group's order (canonical: passes.fusion), whatever
        # order the graph gives its nodes, so that instances share it
        self.members = sorted(members, key=lambda m: m.op.output)
        self.group = group = first.op.group
        self.inputs = first.inputs
        self.outputs = [group.outputs[m.op.output] for m in self.members]
        self.domain = tuple(np.broadcast_shapes(*(i.shape for i in self.inputs)))
        self.spec = None
        try:
            self.plan(lowering)
        except cg.Unsupported:
            self.spec = None  # every member falls back to its NumPy evaluation

    def plan(self, lowering: Lowering):
        group, domain = self.group, self.domain
        shapes = base = [static_base_shape(lowering.folded, i) for i in self.inputs]
        self.accumulate = [None if o.reduce is None else
                           "column" if len(o.reduce) < len(domain) else "full"
                           for o in self.outputs]
        leads = {len(o.reduce) for o, a in zip(self.outputs, self.accumulate) if a == "column"}
        self.tail = 0
        if leads:
            kinds, sizes = split_kinds(domain, shapes, leads.pop())
        else:
            shapes = _trailing_blocks(domain, shapes)
            kinds, sizes = broadcast_pattern(domain, shapes)
            kinds = list(kinds)
            if any(self.accumulate) and len(sizes) == 1:
                sizes, self.tail = _flat_split(sizes[0])
                kinds = ["F" if k == "F" else "S" for k in kinds]
        # an operand that varies along only part of the loop's axes (more than two
        # broadcast patterns) is materialized at full size, as for single ops
        size = int(np.prod(domain, dtype=np.int64))
        self.materialize = [k is None or (k == "F" and int(np.prod(s, dtype=np.int64)) != size)
                            or s != b for k, s, b in zip(kinds, shapes, base)]
        # what a materialized operand is made at: the output's shape, or the trailing block
        # _trailing_blocks chose (read as a row)
        self.made_at = [domain if k in (None, "F") else s for k, s in zip(kinds, shapes)]
        self.kinds = "".join("F" if k is None else k for k in kinds)
        self.sizes = sizes
        self.blocks = {k: b for k, (i, kind) in enumerate(zip(self.inputs, self.kinds))
                       if kind == "F" and not self.materialize[k] and not any(self.accumulate)
                       and len(domain) == 2 and (b := column_block(i, domain)) is not None}
        if self.blocks:  # read where they lie, in an (n0, n1) loop
            self.kinds = "".join("V" if k in self.blocks else kind
                                 for k, kind in enumerate(self.kinds))
            self.sizes = list(domain)
        dtypes = tuple(i.dtype for i in self.inputs)
        # the instances of one group (an unrolled loop's steps) share their kernel: its
        # source is printed from SymPy once
        key = (group, tuple(m.op.output for m in self.members), dtypes, self.kinds,
               tuple(self.accumulate))
        self.spec = lowering.fused_specs.get(key)
        if self.spec is None:
            symbols = group.symbols()
            bound, exprs = group.statements(self.outputs, symbols)
            label = "fused_" + "_".join(dict.fromkeys(s.fn.name for s in group.steps))
            steps_text = [f"s{k} = {st.text()}" for k, st in enumerate(group.steps)]
            steps_text.append("outputs: " + ", ".join(o.text() for o in self.outputs))
            self.spec = lowering.fused_specs[key] = nk.fused_kernel(
                label, steps_text, bound, exprs, symbols, list(dtypes), self.kinds,
                group.dtype, self.accumulate)

    def emit(self, L: Lowering, t: Tensor, out: str) -> None:
        """One kernel call for every output of the instance (``t`` is the first), and one
        more for the ``tail`` of a flat sum, as one more chunk: one row of ``tail`` values
        after the n0 rows."""
        parallel = L.parallel(self.spec, self.sizes)
        rows = -(-self.sizes[0] // L.threads) if parallel else self.sizes[0]
        call = _Call(chunks=-(-self.sizes[0] // rows) if self.sizes[0] else 1,
                     blocks=max(1, -(-rows // nk.ACC_ROWS)))
        for m, o in zip(self.members, self.outputs):
            self.output(L, t, m, o, call, parallel)
        inner = self.sizes[1] if len(self.sizes) == 2 else 1
        item = {i: np.dtype(i.dtype).itemsize for i in self.inputs}
        for k, (i, kind, materialize) in enumerate(zip(self.inputs, self.kinds,
                                                       self.materialize)):
            if kind == "V":  # the wider matrix's pointer, moved to the block's first column
                parent, start, ld = self.blocks[k]
                call.add(f"{L.pointer(L.value(parent))} + {start * item[i]}", ld * item[i])
            elif kind == "F" and not materialize and (block := row_block(i)) is not None \
                    and L.value(block[0]).contiguous:
                parent, start = block  # x[t]: where it lies in x, not a copy of the view
                call.add(f"{L.pointer(L.value(parent))} + {start * item[i]}", item[i] * inner)
            else:
                call.add(L.operand(i, materialize, self.made_at[k]), item[i] *
                         {"F": inner, "C": 1}.get(kind, 0))
        sizes = self.sizes + [self.blocks[k][2] for k in sorted(self.blocks)]
        dtype = self.group.dtype
        if self.spec.scratch:  # work space for the phases of a long body, one per chunk
            scratch = f"{L.var_name(t)}_work"
            n = (call.chunks + bool(self.tail)) * self.spec.scratch
            step = np.dtype(dtype).itemsize * self.spec.scratch
            if n * np.dtype(dtype).itemsize <= max(L.stage_limit, WORK_BYTES):
                # kernels run one at a time: those of one size share one buffer
                work = L.once(("work", n, dtype), lambda _: L.stage(scratch, (n,), dtype, t))
                call.add(L.pointer(work), 0, step)
            else:
                L.line(f"{scratch} = np.empty({n}, np.{dtype})")
                L.defined.add(scratch)
                call.add(f"_addr({scratch})", 0, step)
                call.finish.append(f"del {scratch}")
        name = L.in_place(self.leader, self.spec, call.pointers, call.steps, call.chunk_steps)
        L.calls += 1
        if parallel:
            L.line(f"_parallel({name}, {L.threads}, ({', '.join(call.pointers)},), "
                   f"{tuple(call.steps)!r}, {tuple(sizes)!r}, "
                   f"{tuple(call.chunk_steps)!r})")
        else:
            L.line(f"{name}({', '.join(call.pointers)}, {', '.join(map(str, sizes))})")
        if self.tail:
            L.calls += 1
            L.line(f"{name}({', '.join(call.after(self.sizes[0]))}, 1, {self.tail})")
        for line in call.finish:
            L.line(line)

    def output(self, L: Lowering, t: Tensor, m: Tensor, o, call: _Call, parallel: bool):
        """Define output ``m`` (the leader's own value exists already) and its pointer.
        A sum accumulates n1 column sums (in ``nk.accumulator_dtype``): straight into a
        column-sum output of that dtype, else into partial sums (one row per chunk of a
        parallel call; for a full sum one row per block of ``nk.ACC_ROWS`` rows of a chunk,
        and one for the tail) added up after the call in that dtype (a full sum by NumPy's
        pairwise sum)."""
        if m is not t:
            L.line(f"# {L.describe(m)}")
            L.result(m)
        value = L.value(m)
        item = np.dtype(self.group.dtype).itemsize
        n1 = self.sizes[-1]
        if o.reduce is None:
            call.add(L.pointer(value), item * (n1 if len(self.sizes) == 2 else 1))
            return
        column = len(o.reduce) < len(self.domain)
        acc_dtype = nk.accumulator_dtype(self.group.dtype)
        if column and not parallel and acc_dtype == self.group.dtype:
            L.line(f"{L.use(value)}.fill(0)")
            call.add(L.pointer(value), 0, item * n1)
            return
        acc = f"{value.var}_acc"
        blocks = 1 if column else call.blocks
        shape = (call.chunks * blocks + bool(self.tail), n1)
        step = np.dtype(acc_dtype).itemsize * n1 * blocks
        if shape[0] * n1 * np.dtype(acc_dtype).itemsize <= L.stage_limit:
            staged = L.stage(acc, shape, acc_dtype, m)
            L.line(f"{acc}.fill(0)")
            call.add(L.pointer(staged), 0, step)
        else:
            L.line(f"{acc} = np.zeros({shape!r}, np.{acc_dtype})")
            L.defined.add(acc)
            call.add(f"_addr({acc})", 0, step)
        flat = (-1,) if column else ()
        target = L.use(value)
        if len(m.shape) != len(flat):
            target += f".reshape({flat!r})"
        total = f"np.add.reduce({acc}, axis={0 if column else None}"
        # into a float32 out=, NumPy would round each row's sum to float32
        call.finish.append(f"{total}, out={target})" if acc_dtype == self.group.dtype else
                           f"{target}[...] = {total})")
        if acc in L.defined:
            call.finish.append(f"del {acc}")


@dataclass
class _Call:
    """The arguments of a fused kernel call: pointers, the bytes each advances per unit
    of the first size and per chunk of a parallel call, and lines to run after it."""

    chunks: int
    blocks: int  # rows of partial sums of a full sum per chunk
    pointers: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    chunk_steps: list = field(default_factory=list)
    finish: list = field(default_factory=list)

    def add(self, pointer: str, step: int, chunk_step: int = 0) -> None:
        self.pointers.append(pointer)
        self.steps.append(step)
        self.chunk_steps.append(chunk_step)

    def after(self, rows: int) -> list[str]:
        """The pointers of one more chunk, starting after ``rows`` rows."""
        offsets = [rows * s + self.chunks * c for s, c in zip(self.steps, self.chunk_steps)]
        return [f"{p} + {o}" if o else p for p, o in zip(self.pointers, offsets)]


def column_block(t: Tensor, domain) -> tuple | None:
    """``(matrix, first column, row length)`` if ``t`` is every row of a column range of
    a 2-D matrix (``z[:, a:b]``), which a ``V`` operand reads in place, else None."""
    if not isinstance(t.op, Index) or t.shape != tuple(domain) or t.inputs[0].ndim != 2 \
            or any(e[0] != "slice" for e in t.op.index) or len(t.op.index) != 2:
        return None
    (rows, cols), ((_, *r), (_, *c)) = t.inputs[0].shape, t.op.index
    if slice(*r).indices(rows) != (0, rows, 1):
        return None
    start, stop, step = slice(*c).indices(cols)
    if step != 1 or stop - start != t.shape[1] or t.shape[1] == cols:
        return None
    return t.inputs[0], start, cols


def _trailing_blocks(domain, shapes) -> list[tuple]:
    """``shapes``, where an operand broadcast over more than two patterns of axes (a conv
    bias (1, C, 1, 1) added to (N, C, H, W)) is taken at the output's trailing block from its
    first varying axis on ((1, C, H, W)), if that leaves two patterns: the operand is then
    materialized at that block (C·H·W values, not N·C·H·W) and read as a row."""
    if len(broadcast_pattern(domain, shapes)[1]) != 1 or len(domain) < 3:
        return list(shapes)
    nd = len(domain)
    size = int(np.prod(domain, dtype=np.int64))
    grown = []
    for s in shapes:
        padded = (1,) * (nd - len(s)) + tuple(s)
        varying = [d for d in range(nd) if padded[d] != 1]
        small = 0 < int(np.prod(s, dtype=np.int64)) < size and varying
        grown.append((1,) * varying[0] + tuple(domain[varying[0]:]) if small else tuple(s))
    return grown if len(broadcast_pattern(domain, grown)[1]) == 2 else list(shapes)


# A kernel's work space up to this size is a buffer of the program's own (made with the
# pool), shared by the kernels that need that size, not an array allocated every call.
WORK_BYTES = 1 << 20


def row_block(t: Tensor) -> tuple | None:
    """``(array, first element)`` if ``t`` is ``x[i]`` (leading integers only, x
    C-ordered as the kernel reads it): a contiguous block of x, read where it lies."""
    if not isinstance(t.op, Index) or not t.op.index or \
            any(e[0] != "int" for e in t.op.index):
        return None
    x = t.inputs[0]
    lead = x.shape[:len(t.op.index)]
    at = [e[1] % n for e, n in zip(t.op.index, lead)]
    return x, int(np.ravel_multi_index(at, lead)) * t.size


def _group_members(nodes) -> dict:
    """The fused nodes of each group instance, in lowering order."""
    members: dict[tuple, list] = {}
    for t in nodes:
        if isinstance(t.op, Fused):
            members.setdefault(instance_key(t), []).append(t)
    return members


def rule_fused(lowering, t):
    """The first output of a group instance computes all of them in one kernel call; the
    others are followers.  A group the kernel printer cannot express (an exotic custom op)
    is evaluated by NumPy, output by output."""
    key = instance_key(t)
    instance = lowering.fused.get(key)
    if instance is None:
        instance = lowering.fused[key] = FusedInstance(lowering, t)
    if instance.spec is None:
        return rule_numpy(lowering, t)
    if t is instance.leader:
        return Choice("buffer", instance.emit, "kernel")
    return Choice("buffer", None, "fused")
