"""The CUDA backend's lowering: :class:`Lowering` walks a graph and turns each node into a
:class:`Step` by a rule of its op class (:mod:`graphc.cuda_rules`), and offers the rules
their shared pieces: device buffers, strided copies, row kernels, compiled generated
kernels, and the host fallback.  :func:`graphc.cuda_backend.compile_graph` wraps the result
in a :class:`~graphc.cuda_backend.CudaProgram`.
"""

from __future__ import annotations

import hashlib
import linecache
from dataclasses import dataclass, field

import numpy as np
from numba import cuda

from . import cuda_kernels as ck
from .graph import Graph, node_names, type_text
from .inputs import Input
from .interpreter import check_sizes
from .lowering import (
    comment,
    describe,
    failed,
    fold_constants,
    group_order,
    identifier,
    step_line,
    var_names,
)
from .numba_codegen import Unsupported
from .passes.memory import plan as plan_memory


@dataclass
class Step:
    """One node's work: ``run(env)`` stores the node's device value in ``env[slot]``."""

    slot: int
    run: object
    line: str
    kind: str
    free: list = field(default_factory=list)  # slots whose last use this step is


def contiguous_strides(shape) -> tuple[int, ...]:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return tuple(reversed(strides))


def size_of(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def flat(a):
    return a.reshape(a.size) if a.ndim != 1 else a


def unsupported(what):
    """Leave the node to the host fallback."""
    raise Unsupported(what)


_KERNELS: dict = {}  # generated source -> compiled kernel, shared by every program


class Direct:
    """What a step's ``run`` calls at run time, done as it comes: each launch goes through
    numba-cuda's dispatcher, each buffer is a new device array.  While a program's first
    call is recorded, a :class:`graphc.cuda_replay.Recorder` stands in."""

    @staticmethod
    def launch(kernel, grid, block, args):
        kernel[grid, block](*args)

    @staticmethod
    def empty(shape, dtype):
        return cuda.device_array(shape, np.dtype(dtype))

    @staticmethod
    def check(fn):
        fn()

    @staticmethod
    def hold(value):
        pass

    drop = hold


DIRECT = Direct()


class Lowering:
    """The lowering of ``graph`` for ``device`` by ``rules`` (``(op class, rule)`` pairs; a
    rule returns ``(run(env), source line, kind)`` or raises ``Unsupported``)."""

    def __init__(self, graph: Graph, device: str, rules):
        self.graph = graph
        self.device = device
        self.rules = rules
        self.fastmath = ck.FASTMATH
        self.slot = {id(t): k for k, t in enumerate(graph.nodes)}
        self.printed = node_names(graph)
        self.names = var_names(graph, self.printed)
        self.nslots = len(graph.nodes)
        self.steps: list[Step] = []
        self.inputs: list = []
        self.constants: dict = {}
        self.host: dict[int, np.ndarray] = {}  # folded values (no input upstream)
        self.kernels: dict[str, str] = {}      # name -> source (generated) or "" (fixed)
        self.fallbacks: list[str] = []
        self.lowered: dict[str, int] = {}
        self.fused: dict[tuple, object] = {}   # fused group instance -> its first node
        self.calls: set[str] = {"constant"}  # the names steps call, for the source
        self.output_slots = [self.slot[id(t)] for t in graph.outputs]
        self.users: dict[int, list] = {}  # id(node) -> the nodes that read it
        for t in graph.nodes:
            for x in t.inputs:
                self.users.setdefault(id(x), []).append(t)
        self.runtime = DIRECT

    # -- driver ---------------------------------------------------------------------------
    def run(self) -> Lowering:
        check_sizes(self.graph.nodes)
        folded = fold_constants(self.graph.nodes)
        for t in group_order(self.graph.nodes):
            k = self.slot[id(t)]
            if isinstance(t.op, Input):
                self.inputs.append((t.op.label, k, t))
            elif id(t) in folded:
                value = np.asarray(folded[id(t)], dtype=t.dtype, order="C")
                self.host[id(t)] = value
                self.constants[k] = cuda.to_device(value)
                self._count("folded")
            else:
                rule = next((r for cls, r in self.rules if isinstance(t.op, cls)), None)
                made = None
                if rule is not None:
                    try:
                        made = rule(self, t)
                    except Unsupported:
                        made = None
                if made is None:
                    made = self.host_fallback(t)
                run, line, kind = made
                self.steps.append(Step(k, run, line, kind))
                self._count(kind if kind != "kernel" else t.op.name)
        self._plan_frees()
        return self

    def _plan_frees(self):
        """Each step drops the values whose storage (with its views) the memory plan
        frees there; outputs live to the end."""
        nodes = self.graph.nodes
        storage = {id(nodes[s.slot]): "view" if s.kind == "view" else "buffer"
                   for s in self.steps}
        storage.update((id(nodes[k]), "none") for k in self.constants)
        plan = plan_memory(nodes, self.graph.outputs, storage=storage)
        position = {id(t): n for n, t in enumerate(plan.order)}
        for step in self.steps:
            step.free = [self.slot[id(plan.order[m])]
                         for m in plan.dead_at(position[id(nodes[step.slot])])]

    def _count(self, what):
        self.lowered[what] = self.lowered.get(what, 0) + 1

    def source(self) -> str:
        """The program as Python-like text: one statement per step in ``run``, the
        generated kernels after it (each under its name)."""
        g, printed = self.graph, self.printed
        inputs = ", ".join(f"{printed[id(t)]}: {type_text(t)}" for _, _, t in self.inputs)
        fixed = sorted(self.calls - {name for name, src in self.kernels.items() if src})
        lines = [f"# graphc cuda backend ({comment(self.device)}): {len(g.nodes)} nodes, "
                 f"{len(self.constants)} folded into device constants",
                 f"# inputs: {comment(inputs) or 'none'}",
                 f"# outputs: {comment(', '.join(printed[id(t)] for t in g.outputs))}",
                 "# v<k>_<name> holds the node the graph printer calls <name>; k_<op>_<hash>: "
                 "the kernels below; constant(): a value folded at compile time, on the device",
                 f"# calls: {', '.join(fixed) or 'none'} (graphc/cuda_kernels.py; view: no "
                 "copy, host_numpy: the op's NumPy evaluate on the host)",
                 "def run(" + ", ".join(self.vname(t) for _, _, t in self.inputs) + "):"]
        lines += [f"    {self.vname(g.nodes[k])} = constant()  # "
                  f"{describe(g.nodes[k], printed)}" for k in sorted(self.constants)]
        lines += ["    " + s.line for s in self.steps]
        lines.append(f"    return ({', '.join(self.vname(t) for t in g.outputs)},)")
        for name, src in self.kernels.items():
            if src:  # (compiled as ``kernel``; shown under the name the steps call)
                lines += ["", "", f"# ---- kernel {name}",
                          src.rstrip().replace("def kernel(", f"def {name}(", 1)]
        return "\n".join(lines) + "\n"

    def vname(self, t) -> str:
        return self.names[id(t)]

    def line(self, t, call: str) -> str:
        self.calls.add(call)
        return step_line(t, call, self.names, self.printed)

    # -- shared pieces --------------------------------------------------------------------
    def host_fallback(self, t):
        """The op's NumPy evaluate on the host, with explicit copies both ways."""
        self.fallbacks.append(f"{self.vname(t)} ({t.op.name})")
        ins = [self.slot[id(i)] for i in t.inputs]
        k = self.slot[id(t)]

        def run(env):
            args = [env[i].copy_to_host() for i in ins]
            try:
                out = np.asarray(t.op.evaluate(*args))
            except (IndexError, ValueError, FloatingPointError) as err:
                raise failed(t, self.printed, err) from err
            env[k] = cuda.to_device(np.asarray(out, dtype=t.dtype, order="C"))
        return run, self.line(t, "host_numpy") + " [host fallback]", "host"

    def copy_fn(self, shape, src_strides, src_off=0, dst_strides=None, dst_off=0):
        """``f(dst_flat, src_flat)``: the strided copy of ``shape`` elements."""
        self.kernels.setdefault("strided_copy", "")
        n = size_of(shape)
        dst_strides = contiguous_strides(shape) if dst_strides is None else dst_strides
        if not shape:
            shape, src_strides, dst_strides = (1,), (0,), (0,)
        meta = [cuda.to_device(np.asarray(a, np.int64)) for a in (shape, src_strides,
                                                                  dst_strides)]
        ndim, blocks = len(shape), ck.blocks_for(n)

        def copy(dst, src):
            if n:
                self.launch(ck.strided_copy, blocks, ck.THREADS, dst, dst_off, meta[2], src,
                            src_off, meta[1], meta[0], ndim, n)
        return copy

    # what steps call at run time: the runtime's (Direct, or a replay's Recorder)
    def launch(self, kernel, grid, block, *args):
        """``kernel[grid, block](*args)``."""
        self.runtime.launch(kernel, grid, block, args)

    def empty(self, shape, dtype):
        """A new device array (its values undefined)."""
        return self.runtime.empty(shape, dtype)

    def zeros(self, shape, dtype):
        """A new device array of zeros (filled by a kernel at each call)."""
        out, n = self.empty(shape, dtype), size_of(shape)
        if n:
            self.launch(ck.fill, ck.blocks_for(n), ck.THREADS, flat(out), 0, n)
        return out

    def check(self, fn):
        """``fn()``, which reads a device value back and may raise (an index out of range),
        each call, in order with the launches."""
        self.runtime.check(fn)

    def rows_fn(self, kind: str, in_shape, axes, in_dtype, dtype):
        """``f(x) -> y`` with y of shape (rows,) or (rows, cols): the row kernel ``kind``
        over ``axes`` moved last, the input converted to ``dtype``."""
        kept = [a for a in range(len(in_shape)) if a not in axes]
        perm = tuple(kept) + tuple(axes)
        pshape = tuple(in_shape[a] for a in perm)
        rows = size_of([in_shape[a] for a in kept])
        cols = size_of([in_shape[a] for a in axes])
        strides = contiguous_strides(in_shape)
        needs_copy = perm != tuple(range(len(in_shape))) or in_dtype != dtype
        copy = self.copy_fn(pshape, tuple(strides[a] for a in perm)) if needs_copy else None
        kernel = ck.row_kernel(kind, dtype)
        self.kernels.setdefault(f"row_{kind}_{dtype}", "")
        whole = kind in ("softmax", "log_softmax")
        # sum, max, min of a few long rows: first of pieces of each row, then of those
        pieces = ck.row_pieces(rows, cols) if kind in ("sum", "max", "min") else 1

        def run(x):
            if copy is not None:
                tmp = self.empty(pshape, dtype)
                copy(flat(tmp), flat(x))
                x = tmp
            out = self.empty((rows, cols) if whole else (rows,), dtype)
            if rows and cols and pieces > 1:
                part = self.empty((rows * pieces,), dtype)
                self.launch(kernel, min(rows * pieces, ck.MAX_BLOCKS), ck.THREADS, part,
                            flat(x), rows * pieces, cols // pieces)
                self.launch(kernel, min(rows, ck.MAX_BLOCKS), ck.THREADS, flat(out), part,
                            rows, pieces)
            elif rows and cols:
                self.launch(kernel, min(rows, ck.MAX_BLOCKS), ck.THREADS, flat(out), flat(x),
                            rows, cols)
            elif rows and kind in ("sum", "logsumexp"):  # empty rows: 0, log 0 = -inf
                self.launch(ck.fill, ck.blocks_for(rows), ck.THREADS, out,
                            0 if kind == "sum" else -np.inf, rows)
            return out
        return run, perm, pshape

    def compile_kernel(self, stem: str, source: str):
        """``(name, kernel)`` of generated ``source`` (which defines ``kernel``), renamed
        ``k_<stem>_<hash of source>`` and listed in the program's source."""
        digest = hashlib.sha256(source.encode()).hexdigest()[:8]
        name = f"k_{identifier(stem).lstrip('_')}_{digest}"
        source = source.replace("def kernel(", f"def {name}(", 1)
        self.kernels[name] = source
        kernel = _KERNELS.get(source)
        if kernel is None:
            namespace = dict(ck.KERNEL_GLOBALS)
            filename = f"<graphc-cuda {name}>"
            linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
            exec(compile(source, filename, "exec"), namespace)  # noqa: S102 -- our own text
            kernel = cuda.jit(fastmath=ck.FASTMATH)(namespace[name])
            _KERNELS[source] = kernel
        return name, kernel
