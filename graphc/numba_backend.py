"""The Numba CPU backend: a graph becomes a Python orchestrator that calls native kernels.

``gc.compile(outputs, backend="numba")`` lowers the checked graph in four steps:

1. **Fold constants**: nodes that depend on no input are evaluated once, by the reference
   semantics, when compiling (the seed of a gradient and its broadcasts, for instance;
   :func:`graphc.lowering.fold_constants`, the rule of every backend).
2. **Choose a lowering per node** from a rule table keyed by op class, with a NumPy default:
   matmul through BLAS (``np.matmul(..., out=)``), reductions as NumPy ufunc reductions,
   the softmax family as row kernels, elementwise ops as one NumPy ufunc when the op *is*
   one ufunc (``a + b``, ``exp(x)``: same result as the reference, no compile time) and
   otherwise as a Numba kernel generated from the op's SymPy form
   (:mod:`graphc.numba_codegen`), loaded through the on-disk cache
   (:mod:`graphc.kernel_cache`).  Reshape, transpose, broadcast and slicing are views.
3. **Plan memory**: intermediate results live in preallocated buffers, shared between
   values whose lifetimes do not overlap (the ``memory`` pass's
   :func:`graphc.passes.memory.plan`); graph outputs are fresh arrays on every call, so
   they are returned without a copy.
4. **Emit** one Python statement per node (named by :func:`graphc.lowering.var_names`,
   with a comment naming its op), ``exec`` it, and keep the text as ``f.source``.

The driver is :mod:`graphc.numba_lowering`, the rules :mod:`graphc.numba_rules` and
:mod:`graphc.numba_fused`, the runtime :mod:`graphc.numba_runtime`; this module holds the
rule table, scans and :func:`compile_graph`.

>>> import numpy as np, graphc as gc
>>> x = gc.input("x", (3,), "float64")
>>> f = gc.compile(gc.sum(gc.sigmoid(x) * 2.0), backend="numba")
>>> float(f(x=np.zeros(3)))
3.0
"""

from __future__ import annotations

import math
import threading
from itertools import repeat

import numpy as np

from . import blas, kernel_cache, loop_split, numba_loop
from .elementwise_ops import Elementwise
from .fused_ops import Fused
from .graph import Graph
from .nn_ops import Conv2d, Conv2dInputGrad, Conv2dWeightGrad, MaxPool2d, MaxPool2dGrad
from .numba_fused import rule_fused
from .numba_lowering import Choice, Lowering, Value
from .numba_rules import (
    rule_broadcast_to,
    rule_cast,
    rule_concat,
    rule_conv,
    rule_elementwise,
    rule_identity,
    rule_index,
    rule_index_add,
    rule_matmul,
    rule_max_pool,
    rule_numpy,
    rule_reduce,
    rule_reshape,
    rule_rows,
    rule_take,
    rule_take_add,
    rule_transpose,
)
from .numba_runtime import NumbaProgram, _addr
from .scan import Scan, StopGradient
from .scan import instance_key as scan_key
from .scan import siblings as scan_siblings
from .shape_ops import BroadcastTo, Cast, Concat, Index, IndexAdd, Reshape, Take, TakeAdd, Transpose
from .structured_ops import LogSoftmax, LogSumExp, MatMul, Reduce, Softmax


def rule_scan(lowering, t):
    """A scan: the first of an instance's outputs runs the loop and gives them all.  The
    body is optimized and compiled once, as a program of its own whose buffers every step
    reuses; :class:`LoopRunner` calls it once per step."""
    members = lowering.once("scans", scan_siblings)[scan_key(t)]
    # a stacked output (ys, residuals) is a buffer of the memory plan the loop writes into
    # (fresh per call only where it is a graph output): no per-call allocation, whose
    # pages the OS would fault in again each call; a final carry is the loop's own array
    storage = "alloc" if t.op.out[0] == "carry" else "buffer"
    if t is not members[0]:
        return Choice(storage, None, "loop")

    def emit(L, t, out):
        from .passes.pipeline import DEFAULT_PIPELINE, run
        loop, outs = t.op.loop, [m.op.out for m in members]
        graph = run(loop.step_graph(outs), DEFAULT_PIPELINE)[0]
        body = compile_graph(graph, body=True)
        runner = LoopRunner(loop, outs, body)
        runner.half = loop_split.half_body(runner.roles, graph, body, compile_graph)
        for program in (body, runner.half[0]) if runner.half else (body,):
            L.kernels.update(program.kernels)
            L.kernel_seconds += program.stats["kernel_seconds"]
            for outcome, n in program.counts.items():  # the body's kernel loads are the graph's
                L.counts[outcome] += n
        name = f"loop{L.index[id(t)]}"
        L.define(name, runner, note="the scan body below, in a loop")
        how = f"once per step; not natively: {body.native_declined}" if body.native is None \
            and body.native_declined else "once per step" if body.native is None else \
            f"every step called from the native loop {body.native.symbol}, graphc.numba_loop"
        if runner.half:
            how += (f"; as two loops of half the rows on two threads, graphc.loop_split: "
                    f"{runner.half[0].native.symbol}")
        L.loop_sources.append(f"\n\n# {'=' * 88}\n# {name}: the scan body, run {loop.length} "
                              f"times ({how})\n{body.source}")
        args = [L.arg(i) for i in t.inputs]
        names, given = [], []
        for m in members:
            if m.op.out[0] != "carry":  # written into the plan's buffer
                given.append(L.use(L.result(m)))
                names.append("_")
                continue
            value = Value(m, L.var_name(m), "alloc", L.index[id(m)], True)
            L.values[id(m)] = value
            L.defined.add(value.var)
            if id(m) not in L.outputs:
                L.aux.setdefault(value.root, []).append(value.var)
            names.append(value.var)
        call = f"{name}({', '.join(args)}, out=({''.join(g + ', ' for g in given)}))"
        L.line(f"{', '.join(names)}, = {call}  # {loop.length} steps")
    return Choice(storage, emit, "loop")


class LoopRunner:
    """Runs a scan's loop with a body lowered with ``body=True``; returns the instance's
    outputs.  Every step's addresses are made before the loop, one int64 row per
    parameter: a base address plus a row of byte offsets (the step times a stride), made
    once per runner (:meth:`_offsets`), so a call adds the bases to a fixed matrix
    (:meth:`_table`) instead of building each row (W4s: 90-103 -> 49-53 us a loop call).
    The rows are those of the ``xs`` slices and of the stacks the outputs go to; the native
    loop reads only these, the Python loop also gets the arrays.  A carry goes from step
    to step through the ``cin`` stack when the instance stacks it (step t writes it where
    the next step reads it), else through two buffers in turn; the init is copied where
    the first step reads it, and the last step writes the final carry, a new array."""

    def __init__(self, loop, outs, body):
        self.loop, self.outs, self.body = loop, outs, body
        roles = {p.op.label: ("carry", i) for i, p in enumerate(loop.carry)}
        roles.update((p.op.label, ("x", j)) for j, p in enumerate(loop.xs))
        roles.update((p.op.label, ("const", k)) for k, p in enumerate(loop.consts))
        self.roles = [roles[name] for name in body.input_names]
        extra = sorted({i for kind, i in outs if kind == "node"})
        self.produced = [("carry", i) for i in range(len(loop.carry))] + \
            [("y", j) for j in range(len(loop.ys))] + [("node", i) for i in extra]
        order = np.arange(loop.length, dtype=np.int64)
        self.order = order[::-1].copy() if loop.reverse else order
        self.half = None  # (the body for half the rows, offsets): graphc.loop_split
        self._rows: dict = {}  # (kind, stride): a row of offsets (_offsets)
        self._matrices: dict = {}  # the rows' ids: those rows stacked (_table)
        self._local = threading.local()  # per thread: the contiguous copies of transposed
        # constants, kept between calls (a new 256 KB array page-faults: 49 us, not 13)

    def __call__(self, *arrays, out=()):
        """The instance's outputs for ``arrays`` (the scan's inputs); ``out``: the arrays
        to write its stacked outputs into, in the order of ``outs`` (else new arrays)."""
        loop, steps = self.loop, len(self.order)
        stacks = {}
        given = iter(out)
        for kind, i in self.outs:
            if kind != "carry" and (kind, i) not in stacks:
                t = loop.stacked(kind, i)
                stacks[(kind, i)] = next(given, None)
                if stacks[(kind, i)] is None:
                    stacks[(kind, i)] = np.empty((loop.length,) + t.shape, np.dtype(t.dtype))
        chains = [_Chain(self, p, a, stacks.get(("cin", i)))
                  for i, (p, a) in enumerate(zip(loop.carry, arrays))]
        if steps:
            keep = []  # contiguous copies whose addresses the steps read
            columns = [self._input(role, arrays, chains, reads, keep)
                       for role, reads in zip(self.roles, self.body.reads_pointer)]
            columns += [self._output(key, stacks, chains) for key in self.produced]
            table = self._table(columns)
            if self.body.native is not None and numba_loop.ENABLED:
                if self.body.native.blas:
                    blas.ready()
                if self.half is not None and loop_split.ENABLED:
                    loop_split.run(self.half[0], table, self.half[1], steps)
                else:
                    self.body.run_native(table, steps)
            else:
                n_in = len(self.roles)
                self.body.run_steps(zip(*[c[3]() for c in columns[:n_in]],
                                        *[row.tolist() for row in table[:n_in]],
                                        *[c[3]() for c in columns[n_in:]],
                                        *[row.tolist() for row in table[n_in:]]))
        return tuple(chains[i].final if kind == "carry" else stacks[(kind, i)]
                     for kind, i in self.outs)

    def _offsets(self, kind: str, stride: int) -> np.ndarray:
        """A row of byte offsets, one per step, made once: ``"steps"`` the step's slice of
        a stack (its index in the loop's order times ``stride``; 0 for an array every step
        reads), ``"next"`` the slice after it (where a step writes the carry the next one
        reads), ``"ring"`` and ``"ring next"`` the same for two buffers taken in turn.  A
        ``next`` row's last entry is the final carry's, set per call (:meth:`_table`)."""
        row = self._rows.get((kind, stride))
        if row is None:
            turn = np.arange(len(self.order) + 1, dtype=np.int64) % 2
            row = {"steps": lambda: self.order * stride,
                   "next": lambda: np.append(self.order[1:] * stride, 0),
                   "ring": lambda: turn[:-1] * stride,
                   "ring next": lambda: turn[1:] * stride}[kind]()
            row.flags.writeable = False
            self._rows[(kind, stride)] = row
        return row

    def _table(self, columns) -> np.ndarray:
        """The step table (int64, a row per column, C-contiguous): each column's offsets
        plus its base; a final carry's address in the last step of its row."""
        key = tuple(id(c[1]) for c in columns)
        matrix = self._matrices.get(key)
        if matrix is None:  # the rows are kept in _rows, so their ids stay theirs
            matrix = self._matrices[key] = np.stack([c[1] for c in columns])
        table = matrix + np.array([c[0] for c in columns], np.int64)[:, None]
        for k, c in enumerate(columns):
            if c[2] is not None:
                table[k, -1] = c[2]
        return table

    def _input(self, role, arrays, chains, reads, keep):
        """An input's column: ``(base, offsets, None, a function making its arrays)``."""
        kind, i = role
        if kind == "carry":
            chain = chains[i]
            return chain.base, self._offsets(chain.kinds[0], chain.stride), None, \
                lambda: chain.views()[:-1]
        n_c, n_x = len(self.loop.carry), len(self.loop.xs)
        a = arrays[n_c + i] if kind == "x" else arrays[n_c + n_x + i]
        if kind == "const" and not a.flags.c_contiguous:  # (a transposed weight) once,
            copies = self._local.__dict__                 # not through BLAS's flag each step
            copy = copies.get(i)
            if copy is None or copy.shape != a.shape or copy.dtype != a.dtype:
                copy = copies[i] = np.empty(a.shape, a.dtype)
            a = blas.transposed(a, out=copy)
        base = 0
        if reads:
            keep.append(np.ascontiguousarray(a))
            base = _addr(keep[-1])
        if kind == "const":
            return base, self._offsets("steps", 0), None, lambda: repeat(a, len(self.order))
        stride = a.itemsize * math.prod(a.shape[1:]) if reads else 0
        return base, self._offsets("steps", stride), None, \
            lambda: [a[t, ...] for t in self.order]

    def _output(self, key, stacks, chains):
        """Where an output is written: ``(base, offsets, the last step's address or None,
        a function making the arrays)``."""
        if key[0] == "carry":
            chain = chains[key[1]]
            return chain.base, self._offsets(chain.kinds[1], chain.stride), \
                _addr(chain.final), lambda: chain.views()[1:]
        stack = stacks.get(key)
        if stack is None:  # a y no output stacks: written into one scratch array
            t = self.loop.stacked(*key)
            scratch = np.empty(t.shape, np.dtype(t.dtype))
            return _addr(scratch), self._offsets("steps", 0), None, \
                lambda: repeat(scratch, len(self.order))
        return _addr(stack), self._offsets("steps", stack.nbytes // len(stack)), None, \
            lambda: [stack[t, ...] for t in self.order]


class _Chain:
    """Where carry ``placeholder`` is as each step gets it, and last the final carry: the
    ``cin`` stack, else two buffers in turn (``base`` and, through the runner's
    :meth:`LoopRunner._offsets` of ``kinds`` and ``stride``, the addresses; :meth:`views`
    the arrays).  The first holds ``init``."""

    def __init__(self, runner, placeholder, init, cin):
        shape, dtype = placeholder.shape, np.dtype(placeholder.dtype)
        self.cin, self.order = cin, runner.order
        self.final = np.empty(shape, dtype)
        steps = len(self.order)
        if cin is not None:
            self.base, self.kinds = _addr(cin), ("steps", "next")
            self.stride = math.prod(shape) * dtype.itemsize
            first = cin[self.order[0], ...] if steps else self.final
        else:
            self.ring = np.empty((2,) + shape, dtype)
            self.base, self.kinds = _addr(self.ring), ("ring", "ring next")
            self.stride = self.ring[0, ...].nbytes
            first = self.ring[0, ...] if steps else self.final
        first[...] = init

    def views(self) -> list:
        """The arrays the steps read and write, last the final carry."""
        if self.cin is not None:
            steps = [self.cin[t, ...] for t in self.order]
        else:
            steps = [self.ring[s % 2, ...] for s in range(len(self.order))]
        return steps + [self.final]


RULES = {
    Fused: rule_fused, Scan: rule_scan, StopGradient: rule_identity,
    Elementwise: rule_elementwise, MatMul: rule_matmul, Reduce: rule_reduce,
    Softmax: rule_rows, LogSoftmax: rule_rows, LogSumExp: rule_rows,
    Reshape: rule_reshape, Transpose: rule_transpose, BroadcastTo: rule_broadcast_to,
    Index: rule_index, IndexAdd: rule_index_add, Take: rule_take, TakeAdd: rule_take_add,
    Concat: rule_concat, Cast: rule_cast, MaxPool2d: rule_max_pool, MaxPool2dGrad: rule_max_pool,
    Conv2d: rule_conv, Conv2dInputGrad: rule_conv, Conv2dWeightGrad: rule_conv,
}


def compile_graph(graph: Graph, body: bool = False, donate: dict | None = None,
                  gemm_block: int | None = None) -> NumbaProgram:
    """Lower ``graph`` for the Numba backend (``body``: as a scan's body, see
    :class:`~graphc.numba_lowering.Lowering`; ``donate``: ``{input name: output position
    or None}``, the inputs whose fed arrays outputs may be computed over, ``gc.compile``'s
    ``donate`` as checked there; ``gemm_block``: a body's native loop calls its GEMMs in
    column blocks of at most that many multiply-adds, :func:`graphc.numba_loop.gemm_blocks`)."""
    lowering = Lowering(graph, RULES, rule_numpy, body, donate, gemm_block)
    try:
        program = lowering.run()
    finally:  # gc.compile's kernel_cache.prestart() workers that no kernel needed
        if not body:  # (a scan's body is lowered within its graph's lowering)
            kernel_cache.end_prestarted()
    if "blas_ready" in lowering.namespace:  # it calls BLAS: which one (graphc/blas.py)
        program.stats["blas"] = blas.info()
    return program
