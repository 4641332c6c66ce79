"""The Numba backend's lowering driver: a node's value in the generated code (:class:`Value`),
the rule chosen for it (:class:`Choice`) and :class:`Lowering`, which runs the rules, asks
``passes/memory.plan`` for buffers and writes the orchestrator's text."""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass

import numpy as np

from . import kernel_cache, numba_loop, numba_segments
from . import numba_codegen as cg
from . import numba_native as native
from .errors import CodegenError
from .graph import Graph, node_names, type_text
from .inputs import Input
from .interpreter import check_sizes
from .ir import Tensor, located
from .lowering import (
    comment,
    describe,
    fold_constants,
    group_order,
    var_names,
)
from .numba_runtime import NumbaProgram, _addr, kernel_threads
from .passes.memory import FRESH_OUTPUT_BYTES
from .passes.memory import plan as plan_memory
from .shape_ops import BroadcastTo
from .structured_ops import MatMul

# Handing work to another thread costs about 90 us here, so a kernel is split across
# threads only where the serial time is several times that: at least PARALLEL_MIN_SIZE
# elements of a kernel that calls exp/log/tanh/erf (1M-element tanh: 0.86 -> 0.59 ms with
# 2 threads; memory-bound kernels gain under 10%).
PARALLEL_MIN_SIZE = 1 << 20
_TRANSCENDENTAL = ("exp_", "expm1_", "log_", "log1p_", "tanh_", "erf_")

# Per-call values of at most STAGE_BYTES (feeds a kernel reads, outputs, a sum's partial
# sums, scratch) live in buffers of the program's own, made with the pool, whose data
# addresses are computed then: copying a small array costs less than allocating one or
# looking up the address of a feed (__array_interface__, several us; issue 18 item 7).
# Larger outputs are fresh arrays, which the memory plan lets host values that die first.
STAGE_BYTES = FRESH_OUTPUT_BYTES


@dataclass
class Value:
    """How a node's value is reached in the generated code.

    ``kind``: feed, const, pool (a preallocated buffer), stage (a small buffer of the
    program's own: :meth:`Lowering.stage`), fresh (a new array per call, for outputs),
    hosted (in the fresh array ``source`` at byte ``offset``: ``plan.host_of``), out (an
    array the caller gives, for the outputs of a loop body), view (of another value) or
    alloc (an array NumPy allocates).  ``root`` is the
    graph index of the node that owns the storage; ``base``/``base_shape`` describe a
    broadcast view by its contiguous base.
    """

    node: Tensor
    var: str
    kind: str
    root: int
    contiguous: bool
    define: str | None = None  # for lazily emitted views
    source: Value | None = None  # the value a view is defined from
    base: Value | None = None
    base_shape: tuple | None = None
    pointer: str | None = None
    offset: int = 0


@dataclass
class Choice:
    """The lowering chosen for a node: where its result lives and how to emit it."""

    storage: str  # "buffer" (written into a given array), "view" or "alloc"
    emit: object  # emit(lowering, node, out_var or None) -> None; None: computed by the
    #               first output of its fused group (a follower)
    how: str = "numpy"  # "kernel", "numpy" (a NumPy call), "view" or "fallback"


class Lowering:
    """Lower one graph with ``rules`` (op class -> rule; ``default`` for the others); the
    result is a :class:`NumbaProgram`.

    ``body=True`` lowers a scan's body, run once per step (:class:`graphc.numba_backend.
    LoopRunner`): ``run`` takes each input's array and the address of a contiguous copy of
    its data (``p<name>``), then for each output an array to write it into and its address,
    and returns nothing; no buffer is allocated and no address looked up per call."""

    def __init__(self, graph: Graph, rules: dict, default, body: bool = False,
                 donate: dict | None = None, gemm_block: int | None = None):
        self.graph = graph
        self.body = body
        self.gemm_block = gemm_block  # a native loop's GEMMs in column blocks (numba_loop)
        # inputs (by name) the call may write over: {name: the output position meant to
        # take it, or None} (gc.compile's donate, checked)
        self.donate = dict(donate or {})
        self.donated_to: dict = {}  # id(output) -> the donated input it is written over
        # scratch, partial sums and copies a kernel reads: the program's own buffers up to
        # this size; a body's always (allocating one per step costs more than it holds)
        self.stage_limit = 1 << 62 if body else STAGE_BYTES
        self.rules, self.default = rules, default
        self.nodes = group_order(graph.nodes)
        self.index = {id(t): k for k, t in enumerate(self.nodes)}
        self.printed = node_names(graph)
        self.names = var_names(graph, self.printed)
        self.outputs = {id(t) for t in graph.outputs}
        self.namespace: dict = {}  # the values of the names the prelude defines
        self.threads = kernel_threads(any(isinstance(t.op, MatMul) for t in self.nodes))
        self.values: dict[int, Value] = {}
        self.lines: list[str] = []
        self.line_nodes: dict[int, Tensor] = {}
        self.kernels: dict[str, kernel_cache.Kernel] = {}
        self.pool_pointers: list[Value] = []
        self.staged: list[tuple[Value, tuple, str]] = []  # (value, shape, dtype)
        self.aux: dict[int, list[str]] = {}
        self.counts = {"memory": 0, "disk": 0, "compiled": 0, "rebuilt": 0}
        self.kernel_seconds = 0.0
        self.pending: dict = {}  # kernels to load: (node, spec) by name (load_kernels)
        self.fallbacks: list[str] = []
        self.folded: dict[int, np.ndarray] = {}
        self.defined: set[str] = set()
        self.lowered: dict[str, int] = {}
        self.fused: dict = {}  # fused group instances (numba_fused.FusedInstance)
        self.fused_specs: dict = {}  # their kernels, by group, outputs and operand kinds
        self.calls = 0  # kernel calls per run
        self.indexes: dict = {}  # what rules find once over the nodes (Lowering.once)
        self.loop_sources: list[str] = []  # the programs of scan bodies, for f.source
        self.prelude: list[str] = []  # the definitions of the names in namespace
        self.slot_of: dict = {}  # the memory plan's buffer of each pooled node
        self.pointer_slots: dict[str, tuple] = {}  # pool pointer -> (slot, byte offset)

    # -- names ----------------------------------------------------------------------------
    def var_name(self, t: Tensor) -> str:
        """The node's variable (:func:`graphc.lowering.var_names`)."""
        return self.names[id(t)]

    def describe(self, t: Tensor) -> str:
        return describe(t, self.printed)

    # -- the pipeline -----------------------------------------------------------------------
    def run(self) -> NumbaProgram:
        check_sizes(self.graph.nodes)
        folded = self.folded = fold_constants(self.nodes)
        choices = {}
        for t in self.nodes:
            if isinstance(t.op, Input) or id(t) in folded:
                continue
            rule = self.rules.get(type(t.op), self.default)
            choices[id(t)] = rule(self, t)
        self.lowered = {"folded": len(folded)}
        for c in choices.values():
            self.lowered[c.how] = self.lowered.get(c.how, 0) + 1
        storage = {id(t): c.storage for t, c in zip(self.nodes, map(choices.get, map(id,
                   self.nodes))) if c is not None}
        storage.update((k, "none") for k in folded)
        outputs = self.graph.outputs
        donated = {id(t): None if self.donate[t.op.label] is None else
                   id(outputs[self.donate[t.op.label]]) for t in self.nodes
                   if isinstance(t.op, Input) and t.op.label in self.donate}
        plan = plan_memory(self.nodes, outputs, storage=storage, donated=donated)
        self.plan_figures = plan.figures
        self.emit(choices, folded, plan)
        self.load_kernels()
        return self.finish(plan, folded)

    def emit(self, choices, folded, plan):
        self.donated_to = {o: self.nodes[k] for o, k in plan.donated_to.items()}
        self.hosts(plan)
        self.slot_of, self.offset_of = plan.slot_of, plan.offset_of
        given = {id(x) for x in self.donated_to.values()}
        feeds = [self.var_name(t) for t in self.nodes if isinstance(t.op, Input)]
        for k, t in enumerate(self.nodes):
            if isinstance(t.op, Input):
                var = self.var_name(t)
                self.values[id(t)] = Value(t, var, "feed", k, id(t) in given)
                if id(t) in given:  # written over by an output: its own, contiguous array
                    others = "".join(f"{n}, " for n in feeds if n != var)
                    self.line(f"{var} = _donated({var}, ({others}))")
                continue
            if id(t) in folded:
                self.values[id(t)] = self.constant(t, folded[id(t)])
                continue
            choice = choices[id(t)]
            if choice.emit is None:  # computed with the first output of its fused group
                self.free(plan, k)
                continue
            self.lines.append(f"    # {self.describe(t)}")
            start = len(self.lines)
            var = self.var_name(t)
            if choice.storage == "buffer":
                value = self.result(t)
                choice.emit(self, t, var)
                if value.define is not None and \
                        any(re.search(rf"\b{var}\b", line) for line in self.lines[start:]):
                    self.lines.insert(start, f"    {var} = {value.define}")  # the rule's out=
                    self.defined.add(var)
                    value.define = None
            else:
                choice.emit(self, t, None)
            for n in range(start, len(self.lines)):
                self.line_nodes[n] = t
            self.free(plan, k)

    def hosts(self, plan) -> None:
        """The outputs hosting values (``plan.host_of``), allocated first, and the values
        they host: views made where first named, pointers at an offset of the output's."""
        for t in self.nodes:
            if id(t) in plan.host_of:
                h, offset = plan.host_of[id(t)]
                host = self.result(self.nodes[h])
                dtype = "bool_" if t.dtype == "bool" else t.dtype  # (np.bool: NumPy 2 only)
                self.values[id(t)] = Value(
                    t, self.var_name(t), "hosted", self.index[id(t)], True, source=host,
                    define=f"np.ndarray({t.shape!r}, np.{dtype}, {host.var}, {offset})",
                    offset=offset)

    def result(self, t: Tensor) -> Value:
        """The value of node ``t`` computed into a buffer: a pool buffer, or for an output
        a small staged buffer (copied on return) or a fresh array per call (allocated
        first if it hosts values: :meth:`hosts`)."""
        var = self.var_name(t)
        if id(t) in self.values:  # hosted, or an output hosting values
            return self.values[id(t)]
        if id(t) not in self.outputs:
            value = Value(t, var, "pool", self.index[id(t)], True)
        elif id(t) in self.donated_to:  # computed in place over a donated feed's array
            value = Value(t, var, "fresh", self.index[id(t)], True)
            feed = self.values[id(self.donated_to[id(t)])]
            self.line(f"{var} = {feed.var}  # donated: written in place")
            value.pointer = self.pointer(feed)
            self.pointer_slots[value.pointer] = ("donated", feed.var)
        elif self.body:
            value = Value(t, var, "out", self.index[id(t)], True)
        elif 0 < t.size * np.dtype(t.dtype).itemsize <= STAGE_BYTES:
            value = self.stage(var, t.shape, t.dtype, t)
        else:
            value = Value(t, var, "fresh", self.index[id(t)], True)
            self.line(f"{var} = np.empty({t.shape!r}, np.{t.dtype})")
        self.values[id(t)] = value
        return value

    def stage(self, var: str, shape, dtype: str, t: Tensor) -> Value:
        """A buffer ``var`` of the program's own for a per-call value of node ``t`` (made
        with the pool, its address computed then; see STAGE_BYTES)."""
        value = Value(t, var, "stage", self.index[id(t)], True)
        self.staged.append((value, tuple(shape), dtype))
        return value

    def free(self, plan, k):
        for r in plan.frees.get(k, ()):
            names = [n for n in self.aux.pop(r, []) if n in self.defined]
            if names:
                self.line(f"del {', '.join(names)}")

    def returns(self) -> list[str]:
        """The expressions of the outputs (fresh arrays; copies where they are not)."""
        outs, seen = [], set()
        for t in self.graph.outputs:
            value = self.values[id(t)]
            fresh = value.kind == "fresh" or (value.kind == "alloc" and value.contiguous)
            text = self.use(value)
            if value.kind == "stage":
                outs.append(f"{text}.copy()")
            else:
                outs.append(text if fresh and id(t) not in seen else
                            f"np.array({text}, copy=True)")
            seen.add(id(t))
        return outs

    def body_params(self, inputs) -> list[str]:
        """A body's parameters (see the class): the outputs computed in place are those
        given; the others (views, feeds, constants, a repeated node) are copied in."""
        names, seen = [], set()
        for k, t in enumerate(self.graph.outputs):
            value = self.values[id(t)]
            if value.kind == "out" and id(t) not in seen:
                names.append(value.var)
            else:
                names.append(f"_out{k}")
                self.line(f"{names[-1]}[...] = {self.use(value)}")
            seen.add(id(t))
        arrays = [self.var_name(t) for t in inputs] + names
        return arrays[:len(inputs)] + [f"p{n}" for n in arrays[:len(inputs)]] + \
            arrays[len(inputs):] + [f"p{n}" for n in names]

    def finish(self, plan, folded) -> NumbaProgram:
        inputs = [t for t in self.nodes if isinstance(t.op, Input)]
        outs = [] if self.body else self.returns()
        given = self.body_params(inputs) if self.body else [self.var_name(t) for t in inputs]
        pool = [self.values[id(t)] for t in self.nodes if id(t) in plan.slot_of
                and self.values[id(t)].kind == "pool"]
        slot_bytes = list(plan.slot_bytes)
        layout = [(plan.slot_of[id(v.node)], plan.offset_of.get(id(v.node), 0), v.node.shape,
                   v.node.dtype) for v in pool]
        for value, shape, dtype in self.staged:  # a slot of its own each
            layout.append((len(slot_bytes), 0, shape, dtype))
            slot_bytes.append(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
            pool.append(value)
        params = given + ["_bufs", "_ptrs"]
        head = _unpack(params, "def run", "):") if self.body else \
            ["def run(" + ", ".join(params) + "):"]
        # buffers read through their pointers only are not unpacked (no unused names)
        text = "\n".join(self.lines + outs)
        words = set(re.findall(r"\w+", text))  # the names (one search, not one per buffer)
        named = [v for v in pool if v.var in words]
        if named:
            head += _unpack([v.var for v in named], "_bufs")
        if self.pool_pointers:
            head += _unpack([v.pointer for v in self.pool_pointers], "_ptrs")
        body = head + self.lines + ([] if self.body else [f"    return ({', '.join(outs)},)"])
        line_nodes = {n + len(head): t for n, t in self.line_nodes.items()}
        banner = self.banner(inputs, len(folded))
        if self.prelude:
            banner += ["", "# names the program reads: what lowering made (_compiled), once"]
            banner += self.prelude + [""]
        source = "\n".join(banner + body) + "\n"
        first = len(banner) + 1
        at = {id(v): k for k, v in enumerate(pool)}
        program = NumbaProgram(self, source, {first + n: t for n, t in line_nodes.items()},
                               inputs, layout, slot_bytes, [at[id(v)] for v in named],
                               [at[id(v)] for v in self.pool_pointers], plan.bytes)
        buffers = [(v, shape, dtype) for v, (_, _, shape, dtype) in zip(pool, layout)]
        if not self.body:  # runs of its statements as native calls, where there are any
            made = numba_segments.variant(self, inputs, buffers, head, body[-1:])
            if made is not None:
                program.use_segments("\n".join(banner) + "\n" + made[0] + "\n", made[1],
                                     self.namespace)
        # a body: which inputs it reads through their address (the others get 0); the
        # native loop, where its lines allow one, reads them all so
        self.native_declined = ""  # why a body's steps are not one native loop
        program.native = numba_loop.plan(self, inputs, given, buffers) if self.body else None
        program.native_declined = self.native_declined
        program.reads_pointer = tuple(program.native is not None or
                                      f"p{self.var_name(t)}" in words for t in inputs)
        return program

    def banner(self, inputs, n_folded) -> list[str]:
        text = ", ".join(f"{self.printed[id(t)]}: {type_text(t)}" for t in inputs)
        outs = ", ".join(self.printed[id(t)] for t in self.graph.outputs)
        return [f"# graphc numba backend: {len(self.nodes)} nodes, {n_folded} folded into "
                "constants",
                f"# inputs: {comment(text) or 'none'}",
                f"# outputs: {comment(outs)}",
                "# v<k>_<name> holds the node the graph printer calls <name>; pointers p..., "
                "kernels k_..."]

    # -- helpers used by the rules --------------------------------------------------------
    def once(self, name: str, build):
        """``build(nodes)``, made on the first call for ``name`` and kept: an index of the
        graph's nodes a rule looks up per node (the fused group instances' members, the
        matmuls reading each node, the scan instances' outputs), or a buffer the kernels
        share (their work space of one size)."""
        if name not in self.indexes:
            self.indexes[name] = build(self.nodes)
        return self.indexes[name]

    def line(self, text: str) -> None:
        self.lines.append("    " + text)

    def define(self, name: str, value, rhs: str | None = None, note: str = "") -> None:
        """A name the program reads (a constant, kernel, index ...), defined once in the
        source's prelude: from ``_compiled`` (the values lowering made) or by ``rhs``."""
        self.namespace[name] = value
        text = f"{name} = {rhs or f'_compiled[{name!r}]'}"
        self.prelude.append(text + (f"  # {comment(note)}" if note else ""))

    def value(self, t: Tensor) -> Value:
        return self.values[id(t)]

    def use(self, value: Value) -> str:
        """The variable holding ``value``, emitting its (lazy) definition first: views are
        only materialized where something needs the array itself."""
        if value.define is not None:
            if value.source is not None:
                self.use(value.source)
            self.line(f"{value.var} = {value.define}")
            self.defined.add(value.var)
            value.define = None
        return value.var

    def arg(self, t: Tensor) -> str:
        return self.use(self.value(t))

    def constant(self, t: Tensor, array: np.ndarray) -> Value:
        """A folded or literal constant, stored in the namespace.  Broadcast constants
        (zero strides) keep their small base, which kernels read directly."""
        k = self.index[id(t)]
        var = self.var_name(t)
        if array.ndim and 0 in array.strides and array.size:
            base = np.ascontiguousarray(array[tuple(slice(0, 1) if s == 0 else slice(None)
                                                    for s in array.strides)])
            base_value = Value(t, var + "_base", "const", k, True)
            self.define(base_value.var, base, note=self.describe(t))
            self.define(var, np.broadcast_to(base, array.shape),
                        f"np.broadcast_to({base_value.var}, {array.shape!r})")
            return Value(t, var, "const", k, False, base=base_value, base_shape=base.shape)
        array = np.asarray(array, order="C")  # (np.ascontiguousarray makes 0-d 1-d)
        array.setflags(write=False)
        self.define(var, array, note=self.describe(t))
        return Value(t, var, "const", k, True)

    def view(self, t: Tensor, define: str, of: Value, contiguous: bool, **extra) -> Value:
        value = Value(t, self.var_name(t), "view", of.root, contiguous, define=define,
                      source=of, **extra)
        self.values[id(t)] = value
        self.aux.setdefault(of.root, []).append(value.var)
        return value

    def alloc(self, t: Tensor, expr: str, contiguous: bool) -> Value:
        k = self.index[id(t)]
        value = Value(t, self.var_name(t), "alloc", k, contiguous)
        self.values[id(t)] = value
        self.line(f"{value.var} = {expr}")
        self.defined.add(value.var)
        if id(t) not in self.outputs:
            self.aux.setdefault(k, []).append(value.var)
        return value

    def temp(self, of: Value, expr: str) -> Value:
        """A contiguous temporary computed from ``of`` (freed with ``of``'s storage)."""
        var = f"{of.var}_t{len(self.lines)}"
        self.line(f"{var} = {expr}")
        self.defined.add(var)
        self.aux.setdefault(of.root, []).append(var)
        return Value(of.node, var, "alloc", of.root, True)

    def operand(self, t: Tensor, materialize: bool, shape) -> str:
        """The pointer a kernel reads operand ``t`` through: its broadcast base (the
        kernel broadcasts it), or a contiguous copy at ``shape`` where it cannot: made from
        the operand's source before any broadcast_to (``shape`` may keep an axis that the
        broadcast made longer at 1: a (1, 3, 5) row of ``broadcast_to(x, (4, 3, 5))``)."""
        value = self.value(t)
        if materialize:
            source = t
            while isinstance(source.op, BroadcastTo) and id(source) not in self.folded:
                source = source.inputs[0]
            base = self.temp(value, f"_contig(np.broadcast_to("
                                    f"{self.use(self.value(source))}, {shape!r}))")
        else:
            base = value.base if value.base is not None else value
        return self.pointer(base)

    def pointer(self, value: Value) -> str:
        """A variable with the address of ``value``'s data, made contiguous if needed."""
        if value.pointer is not None:
            return value.pointer
        if self.body and value.kind in ("feed", "out"):  # given with the array
            value.pointer = f"p{value.var}"
        elif value.kind == "const" and value.contiguous:
            value.pointer = f"p{value.var}"
            self.define(value.pointer, _addr(self.namespace[value.var]), f"_addr({value.var})")
        elif value.kind == "stage":  # computed with the buffers
            value.pointer = f"p{value.var}"
            self.pool_pointers.append(value)
        elif value.contiguous and value.kind in ("pool", "view", "hosted") and \
                self.values[id(self.nodes[value.root])].kind in ("pool", "hosted"):
            root = self.values[id(self.nodes[value.root])]
            if root.pointer is None:
                root.pointer = f"p{root.var}"
                if root.kind == "pool":
                    self.pool_pointers.append(root)
                    # where in the pool: an in-place kernel needs the same slot and offset
                    self.pointer_slots[root.pointer] = (self.slot_of[id(root.node)],
                                                        self.offset_of.get(id(root.node), 0))
                else:  # computed each call, from its output's fresh array
                    host = self.pointer(root.source)
                    self.line(f"{root.pointer} = {host} + {root.offset}")
                    self.pointer_slots[root.pointer] = (("hosted", host), root.offset)
            value.pointer = root.pointer
        elif value.contiguous and value.kind == "view" and \
                self.values[id(self.nodes[value.root])].kind in ("stage", "fresh", "out"):
            value.pointer = self.pointer(self.values[id(self.nodes[value.root])])
        elif value.kind == "feed" and 0 < value.node.size and \
                value.node.size * np.dtype(value.node.dtype).itemsize <= STAGE_BYTES:
            copy = self.stage(f"{value.var}_s", value.node.shape, value.node.dtype, value.node)
            self.line(f"{copy.var}[...] = {value.var}")
            value.pointer = self.pointer(copy)
        elif self.body and not value.contiguous and value.node.size:
            copy = self.stage(f"{value.var}_c", value.node.shape, value.node.dtype, value.node)
            self.line(f"{copy.var}[...] = {self.use(value)}")
            value.pointer = self.pointer(copy)
        else:
            var = self.use(value)
            if not value.contiguous:
                var = f"{value.var}_c"
                self.line(f"{var} = _contig({value.var})")
                self.defined.add(var)
                self.aux.setdefault(value.root, []).append(var)
            value.pointer = f"p{value.var}"
            fast = value.kind == "fresh" and value.node.size > 0
            self.line(f"{value.pointer} = {'_waddr' if fast else '_addr'}({var})")
        return value.pointer

    def call(self, name: str, spec: cg.KernelSpec, pointers, sizes, steps) -> None:
        """Emit a kernel call; split over threads when it is big and expensive enough.
        ``steps[k]``: bytes pointer k advances per unit of the first size."""
        self.calls += 1
        if self.parallel(spec, sizes):
            self.line(f"_parallel({name}, {self.threads}, ({', '.join(pointers)},), "
                      f"{tuple(steps)!r}, {tuple(sizes)!r})")
        else:
            self.line(f"{name}({', '.join(pointers)}, {', '.join(map(str, sizes))})")

    def parallel(self, spec: cg.KernelSpec, sizes) -> bool:
        return self.threads > 1 and int(np.prod(sizes)) >= PARALLEL_MIN_SIZE and \
            any(h.startswith(_TRANSCENDENTAL) for h in spec.helpers)

    def in_place(self, t: Tensor, spec: cg.KernelSpec, pointers, steps, chunk_steps=None) -> str:
        """The loaded kernel for a call of ``spec`` with ``pointers`` (``steps``, ``chunk_steps``:
        bytes each advances per row and per chunk).  Where the memory plan gave an output
        the buffer of an operand it reads at the same positions, a variant writing that
        output through the operand's pointer: the same memory and arithmetic, but LLVM
        sees one pointer and vectorizes the loop.  (Through two pointers its overlap check
        fails on an exact overlap and the scalar loop runs: W1's bias-add-ReLU, 128x256,
        9 us instead of 2.)"""
        names = re.search(r"^def kernel\(([^)]*)\)", spec.source, re.M).group(1).split(", ")
        chunk_steps = chunk_steps or [0] * len(pointers)
        where = [(self.pointer_slots.get(p), s, c, spec.params[k])
                 for k, (p, s, c) in enumerate(zip(pointers, steps, chunk_steps))]
        lines = []
        for i, out in enumerate(names[:len(pointers)]):
            same = [names[k] for k in range(len(pointers)) if names[k].startswith("a") and
                    where[i][0] is not None and where[k] == where[i]]
            if out.startswith("out") and same:
                lines.append(f"    {out} = {same[0]}  # in place: the same buffer")
        if lines:
            cut = spec.source.index("\n", spec.source.index("def kernel(")) + 1
            source = spec.source[:cut] + "\n".join(lines) + "\n" + spec.source[cut:]
            spec = dataclasses.replace(spec, source=source)  # the name: a new hash
        return self.kernel(t, spec)

    def kernel(self, t: Tensor, spec: cg.KernelSpec) -> str:
        """The namespace name of the kernel for ``spec``, loaded with the others once every
        rule has run (:meth:`load_kernels`)."""
        name = f"k_{spec.name}"
        if name not in self.namespace:
            self.define(name, None, note="the kernel of that name below")
            self.pending[name] = (t, spec)
        return name

    def load_kernels(self) -> None:
        """Load every kernel the rules asked for; those no cache holds are compiled first,
        by this process and worker processes at once (:func:`kernel_cache.compile_missing`).
        A Numba failure is re-raised naming the node, the op and the kernel's line."""
        start = time.perf_counter()
        try:
            compiled = kernel_cache.compile_missing(
                [spec for _, spec in self.pending.values()], native.compile_object)
            for name, (t, spec) in self.pending.items():
                try:
                    kernel, outcome = kernel_cache.load(spec, native.compile_object)
                except Exception as err:  # noqa: BLE001 -- any Numba error is reported the same way
                    raise compile_failure(self, t, spec, err) from err
                self.counts["compiled" if spec.key in compiled else outcome] += 1
                self.namespace[name] = kernel.fn
                self.kernels[name] = kernel
        finally:
            self.kernel_seconds += time.perf_counter() - start
        self.pending.clear()


def _unpack(names, source, end=None) -> list[str]:
    """``(a, b, ...,) = source`` wrapped at 100 columns; with ``end``, ``source(a, b, ...``
    and ``end`` (a function's signature)."""
    lines, current = [], f"{source}(" if end else "    ("
    indent = " " * len(current)
    for name in names:
        if len(current) + len(name) > 94:
            lines.append(current.rstrip())
            current = indent
        current += f"{name}, "
    lines.append(current.rstrip().rstrip(",") + end if end else
                 current.rstrip() + f") = {source}")
    return lines


def compile_failure(lowering, t, spec, err) -> CodegenError:
    """A CodegenError naming the node, its op and where in the kernel source it failed."""
    text = str(err)
    where = ""
    path_hint = f"{spec.name}.py"
    for m in re.finditer(r'File "([^"]+)", line (\d+)', text):
        if m.group(1).endswith(path_hint):
            where = f"{m.group(1)}:{m.group(2)}"
            break
    if not where:
        kernel_path = f"{kernel_cache.kernel_dir()}/{spec.name}.py"
        where = kernel_path
    detail = "\n    ".join(line for line in text.strip().splitlines()[:12])
    message = (f"numba backend: cannot compile the kernel for node {lowering.printed[id(t)]} "
               f"({t.op.name}, {type_text(t)})\n  generated source: {where}\n  "
               f"numba said ({type(err).__name__}):\n    {detail}")
    return CodegenError(located(comment(message).replace("\\x0a", "\n"), t.loc))
