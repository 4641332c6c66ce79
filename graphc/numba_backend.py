"""The Numba CPU backend: a graph becomes a Python orchestrator that calls native kernels.

``gc.compile(outputs, backend="numba")`` lowers the checked graph in four steps:

1. **Fold constants**: nodes that depend on no input are evaluated once, by the reference
   semantics, when compiling (the seed of a gradient and its broadcasts, for instance).
2. **Choose a lowering per node** from a rule table keyed by op class, with a NumPy default:
   matmul through BLAS (``np.matmul(..., out=)``), reductions as NumPy ufunc reductions,
   the softmax family as row kernels, elementwise ops as one NumPy ufunc when the op *is*
   one ufunc (``a + b``, ``exp(x)``: same result as the reference, no compile time) and
   otherwise as a Numba kernel generated from the op's SymPy form
   (:mod:`graphc.numba_codegen`), loaded through the on-disk cache
   (:mod:`graphc.kernel_cache`).  Reshape, transpose, broadcast and slicing are views.
3. **Plan memory**: intermediate results live in preallocated buffers, shared between
   values whose lifetimes do not overlap; graph outputs are fresh arrays on every call, so
   they are returned without a copy.
4. **Emit** one Python statement per node (named after the node, with a comment naming
   its op), ``exec`` it, and keep the text as ``f.source``.

>>> import numpy as np, graphc as gc
>>> x = gc.input("x", (3,), "float64")
>>> f = gc.compile(gc.sum(gc.sigmoid(x) * 2.0), backend="numba")
>>> float(f(x=np.zeros(3)))
3.0
"""

from __future__ import annotations

import ctypes
import linecache
import os
import re
import sys
import threading
import time
import traceback
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from . import dtypes, kernel_cache
from . import numba_codegen as cg
from .elementwise_ops import Elementwise
from .fused_ops import Fused
from .graph import Graph, node_names, type_text
from .inputs import Input
from .interpreter import check_sizes
from .ir import GraphError, Tensor, located
from .lowering import (
    broadcast_pattern,
    comment,
    describe,
    fold_constants,
    group_order,
    instance_key,
    split_kinds,
    static_base_shape,
    var_names,
)
from .nn_ops import Conv2d, Conv2dInputGrad, Conv2dWeightGrad, MaxPool2d, MaxPool2dGrad
from .passes.memory import plan as plan_memory
from .scan import Scan, StopGradient, run_loop
from .scan import instance_key as scan_key
from .scan import siblings as scan_siblings
from .structured_ops import (
    BroadcastTo,
    Cast,
    Concat,
    Index,
    IndexAdd,
    LogSoftmax,
    LogSumExp,
    MatMul,
    Reduce,
    Reshape,
    Softmax,
    Take,
    TakeAdd,
    Transpose,
)

# Measured on the reference machine (AVX-512, 2 cores; docs/codegen.md): for one
# arithmetic op (add, mul, max, compare, bias add) a generated kernel is 1.3-2x faster than
# the NumPy ufunc from 4K to 256K elements and equal beyond; NumPy's own SIMD exp, log,
# tanh, sin, cos are 1.1-2.7x faster than a loop calling graphc.fastmath, so a single
# such function stays a ufunc.  Below KERNEL_MIN_SIZE elements the ufunc is as fast and
# costs no compile time.
NUMPY_FASTER = {"exp", "log", "tanh", "sin", "cos", "expm1", "log1p", "sqrt", "square",
                "power", "reciprocal"}
KERNEL_MIN_SIZE = 4096
# Handing work to another thread costs about 90 us here, so a kernel is split across
# threads only where the serial time is several times that: at least PARALLEL_MIN_SIZE
# elements of a kernel that calls exp/log/tanh/erf (1M-element tanh: 0.86 -> 0.59 ms with
# 2 threads; memory-bound kernels gain under 10%).
PARALLEL_MIN_SIZE = 1 << 20
_TRANSCENDENTAL = ("exp_", "expm1_", "log_", "log1p_", "tanh_", "erf_")


def _env_count(*names) -> int | None:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def kernel_threads(uses_blas: bool = True) -> int:
    """Threads for graphc's kernels: NUMBA_NUM_THREADS (default: the CPUs this process may
    use); in a graph with matmuls, no more than the CPUs the BLAS threads leave free.
    OpenBLAS's idle workers keep polling long after a matmul (measured: a 2-thread
    1M-element kernel went from 0.75 to 1.27 ms once a 2-thread matmul had run; serial:
    1.13 ms), so next to a BLAS on every core graphc's kernels stay on one thread."""
    cpus = _cpus()
    requested = _env_count("NUMBA_NUM_THREADS") or cpus
    if not uses_blas:
        return max(1, requested)
    blas = _env_count("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS") or cpus
    return max(1, min(requested, cpus - blas + 1))


@dataclass
class Value:
    """How a node's value is reached in the generated code.

    ``kind``: feed, const, pool (a preallocated buffer), fresh (a new array per call, for
    outputs), view (of another value) or alloc (an array NumPy allocates).  ``root`` is the
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


@dataclass
class Choice:
    """The lowering chosen for a node: where its result lives and how to emit it."""

    storage: str  # "buffer" (written into a given array), "view" or "alloc"
    emit: object  # emit(lowering, node, out_var or None) -> None; None: computed by the
    #               first output of its fused group (a follower)
    how: str = "numpy"  # "kernel", "numpy" (a NumPy call), "view" or "fallback"


class Lowering:
    """Lower one graph; the result is a :class:`NumbaProgram`."""

    def __init__(self, graph: Graph):
        self.graph = graph
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
        self.aux: dict[int, list[str]] = {}
        self.counts = {"memory": 0, "disk": 0, "compiled": 0, "rebuilt": 0}
        self.kernel_seconds = 0.0
        self.fallbacks: list[str] = []
        self.folded: dict[int, np.ndarray] = {}
        self.defined: set[str] = set()
        self.lowered: dict[str, int] = {}
        self.fused: dict[tuple, FusedInstance] = {}
        self.calls = 0  # kernel calls per run
        self.scans: dict | None = None  # scan instances: their outputs (rule_scan)
        self.loop_sources: list[str] = []  # the programs of scan bodies, for f.source
        self.prelude: list[str] = []  # the definitions of the names in namespace

    # -- names ----------------------------------------------------------------------------
    def var_name(self, t: Tensor) -> str:
        """The node's variable (:func:`graphc.lowering.var_names`)."""
        return self.names[id(t)]

    def describe(self, t: Tensor) -> str:
        return describe(t, self.printed)

    # -- the pipeline -----------------------------------------------------------------------
    def run(self) -> NumbaProgram:
        check_sizes(self.nodes)
        folded = self.folded = fold_constants(self.nodes)
        choices = {}
        for t in self.nodes:
            if isinstance(t.op, Input) or id(t) in folded:
                continue
            rule = RULES.get(type(t.op), rule_numpy)
            choices[id(t)] = rule(self, t)
        self.lowered = {"folded": len(folded)}
        for c in choices.values():
            self.lowered[c.how] = self.lowered.get(c.how, 0) + 1
        storage = {id(t): c.storage for t, c in zip(self.nodes, map(choices.get, map(id,
                   self.nodes))) if c is not None}
        storage.update((k, "none") for k in folded)
        plan = plan_memory(self.nodes, self.graph.outputs, storage=storage)
        self.emit(choices, folded, plan)
        return self.finish(plan, folded)

    def emit(self, choices, folded, plan):
        for k, t in enumerate(self.nodes):
            if isinstance(t.op, Input):
                self.values[id(t)] = Value(t, self.var_name(t), "feed", k, False)
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
                kind = "fresh" if id(t) in self.outputs else "pool"
                value = Value(t, var, kind, k, True)
                self.values[id(t)] = value
                if kind == "fresh":
                    self.line(f"{var} = np.empty({t.shape!r}, np.{t.dtype})")
                choice.emit(self, t, var)
            else:
                choice.emit(self, t, None)
            for n in range(start, len(self.lines)):
                self.line_nodes[n] = t
            self.free(plan, k)

    def free(self, plan, k):
        for r in plan.frees.get(k, ()):
            names = [n for n in self.aux.pop(r, []) if n in self.defined]
            if names:
                self.line(f"del {', '.join(names)}")

    def finish(self, plan, folded) -> NumbaProgram:
        inputs = [t for t in self.nodes if isinstance(t.op, Input)]
        outs, seen = [], set()
        for t in self.graph.outputs:
            value = self.values[id(t)]
            fresh = value.kind == "fresh" or (value.kind == "alloc" and value.contiguous)
            text = self.use(value)
            outs.append(text if fresh and id(t) not in seen else f"np.array({text}, copy=True)")
            seen.add(id(t))
        pool = [self.values[id(t)] for t in self.nodes if id(t) in plan.slot_of
                and self.values[id(t)].kind == "pool"]
        params = [self.var_name(t) for t in inputs] + ["_bufs", "_ptrs"]
        head = ["def run(" + ", ".join(params) + "):"]
        # buffers read through their pointers only are not unpacked (no unused names)
        text = "\n".join(self.lines + outs)
        named = [v for v in pool if re.search(rf"\b{v.var}\b", text)]
        if named:
            head += _unpack([v.var for v in named], "_bufs")
        if self.pool_pointers:
            head += _unpack([v.pointer for v in self.pool_pointers], "_ptrs")
        body = head + self.lines + [f"    return ({', '.join(outs)},)"]
        line_nodes = {n + len(head): t for n, t in self.line_nodes.items()}
        banner = self.banner(inputs, len(folded))
        if self.prelude:
            banner += ["", "# names the program reads: what lowering made (_compiled), once"]
            banner += self.prelude + [""]
        source = "\n".join(banner + body) + "\n"
        first = len(banner) + 1
        return NumbaProgram(self, source, {first + n: t for n, t in line_nodes.items()},
                            inputs, pool, plan, [pool.index(v) for v in named])

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
        kernel broadcasts it), or a contiguous copy at ``shape`` where it cannot."""
        value = self.value(t)
        if materialize:
            base = self.temp(value, f"_contig(np.broadcast_to({self.use(value)}, {shape!r}))")
        else:
            base = value.base if value.base is not None else value
        return self.pointer(base)

    def pointer(self, value: Value) -> str:
        """A variable with the address of ``value``'s data, made contiguous if needed."""
        if value.pointer is not None:
            return value.pointer
        if value.kind == "const" and value.contiguous:
            value.pointer = f"p{value.var}"
            self.define(value.pointer, _addr(self.namespace[value.var]), f"_addr({value.var})")
        elif value.contiguous and value.kind in ("pool", "view") and \
                self.values[id(self.nodes[value.root])].kind == "pool":
            root = self.values[id(self.nodes[value.root])]
            if root.pointer is None:
                root.pointer = f"p{root.var}"
                self.pool_pointers.append(root)
            value.pointer = root.pointer
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

    def kernel(self, t: Tensor, spec: cg.KernelSpec) -> str:
        """The namespace name of the loaded kernel for ``spec``; compiling it if needed.
        A Numba failure is re-raised naming the node, the op and the kernel's line."""
        name = f"k_{spec.name}"
        if name not in self.namespace:
            start = time.perf_counter()
            try:
                kernel, outcome = kernel_cache.load(spec, cg.compile_object)
            except Exception as err:  # noqa: BLE001 -- any Numba error is reported the same way
                raise compile_failure(self, t, spec, err) from err
            finally:
                self.kernel_seconds += time.perf_counter() - start
            self.counts[outcome] += 1
            self.define(name, kernel.fn, note="the kernel of that name below")
            self.kernels[name] = kernel
        return name


# ---------------------------------------------------------------------------------------
# Rules: one per op class, NumPy evaluation as the default


def _unpack(names, source) -> list[str]:
    """``(a, b, ...,) = source`` wrapped at 100 columns."""
    lines, current = [], "    ("
    for name in names:
        if len(current) + len(name) > 94:
            lines.append(current.rstrip())
            current = "     "
        current += f"{name}, "
    lines.append(current.rstrip() + f") = {source}")
    return lines


def _np_dtype(dtype: str) -> str:
    return f"np.{dtype}" if dtype != "bool" else "np.bool_"


def rule_numpy(lowering: Lowering, t: Tensor) -> Choice:
    """Default: the op's own NumPy ``evaluate`` (ops this backend has no rule for)."""
    lowering.fallbacks.append(t.op.name)

    def emit(L, t, out):
        name = f"op{L.index[id(t)]}"
        L.define(name, _Evaluate(t.op, t.dtype), note=f"{t.op.name}'s NumPy evaluate")
        L.alloc(t, f"{name}({', '.join(L.arg(i) for i in t.inputs)})", False)
    return Choice("alloc", emit, "fallback")


def rule_matmul(lowering, t):
    def emit(L, t, out):
        a, b = (_as_dtype(L, i, t.dtype) for i in t.inputs)
        L.line(f"np.matmul({a}, {b}, out={out})")
    return Choice("buffer", emit)


def _as_dtype(L, t, dtype) -> str:
    return L.arg(t) if t.dtype == dtype else f"{L.arg(t)}.astype({_np_dtype(dtype)})"


def rule_reduce(lowering, t):
    """A float sum over leading or trailing axes is a kernel (NumPy's reduction has more
    per-call overhead and, over leading axes, no faster loop); everything else, a sum of
    all values included (NumPy's pairwise sum; the kernel would add them one after the
    other), a NumPy ufunc reduction, which is what the reference computes."""
    (x,) = t.inputs
    axes = t.op.axes
    leading = axes == tuple(range(len(axes)))
    if t.op.kind == "sum" and dtypes.is_float(x.dtype) and x.size >= KERNEL_MIN_SIZE and \
            axes and t.size > 1 and (leading or _trailing(axes, x.ndim)):
        return _sum_kernel(lowering, t, "leading" if leading else "trailing")
    ufunc = {"sum": "add", "max": "maximum", "min": "minimum"}[t.op.kind]

    def emit(L, t, out):
        (x,) = t.inputs
        dtype = ", dtype=np.int64" if t.op.kind == "sum" and x.dtype == "bool" else ""
        L.line(f"np.{ufunc}.reduce({L.arg(x)}, axis={t.op.axes!r}{dtype}, "
               f"keepdims={t.op.keepdims}, out={out})")
    return Choice("buffer", emit)


def _sum_kernel(lowering, t, kind):
    (x,) = t.inputs
    spec = cg.sum_kernel(kind, t.dtype)
    name = lowering.kernel(t, spec)
    reduced = int(np.prod([x.shape[a] for a in t.op.axes], dtype=np.int64))
    kept = x.size // reduced
    sizes = (reduced, kept) if kind == "leading" else (kept, reduced)

    def emit(L, t, out):
        L.calls += 1
        L.line(f"{name}({L.pointer(L.value(t))}, {L.pointer(L.value(x))}, "
               f"{sizes[0]}, {sizes[1]})")
    return Choice("buffer", emit, "kernel")


def rule_max_pool(lowering, t):
    """max_pool2d and its adjoint max_pool2d_grad: loops over the windows of each plane
    (the NumPy form makes kh*kw strided passes and an argmax table)."""
    x = t.inputs[0]
    if any(i.dtype != t.dtype for i in t.inputs) or not dtypes.is_float(t.dtype) or x.size == 0:
        return rule_numpy(lowering, t)
    kind = "grad" if isinstance(t.op, MaxPool2dGrad) else "forward"
    window = (*t.op.kernel, *t.op.stride) if t.op.padding == (0, 0) else None
    name = lowering.kernel(t, cg.max_pool_kernel(kind, t.dtype, window))
    n, c, h, w = x.shape
    ho, wo = (t.inputs[1] if kind == "grad" else t).shape[2:]
    sizes = (n * c, h, w, ho, wo, *t.op.kernel, *t.op.stride, *t.op.padding)

    def emit(L, t, out):
        L.calls += 1
        pointers = [L.pointer(L.value(t))] + [L.pointer(L.value(i)) for i in t.inputs]
        L.line(f"{name}({', '.join(pointers)}, {', '.join(map(str, sizes))})")
    return Choice("buffer", emit, "kernel")


def rule_conv(lowering, t):
    """conv2d and its two adjoints: im2col / col2im kernels around BLAS matmuls, one per
    group (grouped and depthwise convolutions: a batch of GEMMs over the groups, whose
    channels are contiguous rows of the columns); the weight gradient is one GEMM per group
    over the whole batch.  Other cases run the op's NumPy form (also im2col + BLAS)."""
    op = t.op
    if any(i.dtype != t.dtype for i in t.inputs) or \
            not dtypes.is_float(t.dtype) or any(i.size == 0 for i in t.inputs):
        return rule_numpy(lowering, t)
    if isinstance(op, Conv2d):
        (x, w), y = t.inputs, t
    elif isinstance(op, Conv2dInputGrad):
        (y, w), x = t.inputs, t
    else:
        (x, y), w = t.inputs, t
    n, c, h, wd = x.shape
    o, kh, kw = w.shape[0], w.shape[2], w.shape[3]
    ho, wo = y.shape[2:]
    k, pixels = c * kh * kw, ho * wo
    sizes = ", ".join(map(str, (n, c, h, wd, kh, kw, ho, wo, *op.stride, *op.padding,
                                *op.dilation)))
    dtype = _np_dtype(t.dtype)
    if isinstance(op, Conv2dInputGrad):
        col2im = lowering.kernel(t, cg.col2im_kernel(t.dtype))
    else:
        layout = "cols" if isinstance(op, Conv2d) else "kmajor"
        im2col = lowering.kernel(t, cg.im2col_kernel(layout, t.dtype))

    g = op.groups
    # per group: (g, o/g, k/g) kernels against (.., g, k/g, pixels) columns; g = 1 as before
    kernel = f"({o}, {k})" if g == 1 else f"({g}, {o // g}, {k // g})"
    rows = (lambda lead: f"({lead}, {o}, {pixels})") if g == 1 else \
        (lambda lead: f"({lead}, {g}, {o // g}, {pixels})")
    by_group = (lambda lead: f"({lead}, {k}, {pixels})") if g == 1 else \
        (lambda lead: f"({lead}, {g}, {k // g}, {pixels})")
    swap = ".T" if g == 1 else ".transpose(0, 2, 1)"

    def emit(L, t, out):
        cols = f"{L.var_name(t)}_cols"
        L.defined.add(cols)
        L.calls += 1
        if isinstance(op, Conv2d):
            L.line(f"{cols} = np.empty(({n}, {k}, {pixels}), {dtype})")
            L.line(f"{im2col}(_addr({cols}), {L.pointer(L.value(x))}, {sizes})")
            L.line(f"np.matmul({L.arg(w)}.reshape({kernel}), {cols}.reshape({by_group(n)}), "
                   f"out={out}.reshape({rows(n)}))")
        elif isinstance(op, Conv2dWeightGrad):
            L.line(f"{cols} = np.empty(({k}, {n * pixels}), {dtype})")
            L.line(f"{im2col}(_addr({cols}), {L.pointer(L.value(x))}, {sizes})")
            dy = (f"np.ascontiguousarray({L.arg(y)}.reshape(({n}, {o}, {pixels}))"
                  f".transpose(1, 0, 2))")
            if g == 1:
                L.line(f"np.matmul({dy}.reshape(({o}, {n * pixels})), {cols}.T, "
                       f"out={out}.reshape(({o}, {k})))")
            else:
                L.line(f"np.matmul({dy}.reshape(({g}, {o // g}, {n * pixels})), "
                       f"{cols}.reshape(({g}, {k // g}, {n * pixels})).transpose(0, 2, 1), "
                       f"out={out}.reshape({kernel}))")
        else:
            L.line(f"{cols} = np.matmul({L.arg(w)}.reshape({kernel}){swap}, "
                   f"{L.arg(y)}.reshape({rows(n)}))")
            L.line(f"{col2im}({L.pointer(L.value(t))}, _addr({cols}), {sizes})")
        L.line(f"del {cols}")
    return Choice("buffer", emit, "kernel")


def _trailing(axes, ndim) -> bool:
    return bool(axes) and tuple(axes) == tuple(range(ndim - len(axes), ndim))


def rule_rows(lowering, t):
    """softmax / log_softmax / logsumexp over trailing axes: a row kernel."""
    (x,) = t.inputs
    axes = (t.op.axis,) if isinstance(t.op, (Softmax, LogSoftmax)) else t.op.axes
    if x.ndim == 0 or not _trailing(axes, x.ndim) or x.dtype != t.dtype:
        return rule_numpy(lowering, t)
    kind = {Softmax: "softmax", LogSoftmax: "log_softmax", LogSumExp: "logsumexp"}[type(t.op)]
    spec = cg.row_kernel(kind, t.dtype)
    name = lowering.kernel(t, spec)
    cols = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
    rows = x.size // cols if cols else 0

    size = np.dtype(t.dtype).itemsize
    steps = (size if kind == "logsumexp" else size * cols, size * cols)

    def emit(L, t, out):
        L.call(name, spec, [L.pointer(L.value(t)), L.pointer(L.value(x))], (rows, cols), steps)
    return Choice("buffer", emit, "kernel")


def rule_reshape(lowering, t):
    def emit(L, t, out):
        x = L.value(t.inputs[0])
        L.view(t, f"{x.var}.reshape({t.shape!r})", x, x.contiguous)
    return Choice("view", emit, "view")


def rule_transpose(lowering, t):
    def emit(L, t, out):
        x = L.value(t.inputs[0])
        L.view(t, f"{x.var}.transpose({t.op.perm!r})", x, False)
    return Choice("view", emit, "view")


def rule_broadcast_to(lowering, t):
    def emit(L, t, out):
        x = L.value(t.inputs[0])
        base, shape = (x.base, x.base_shape) if x.base is not None else (x, x.node.shape)
        L.view(t, f"np.broadcast_to({x.var}, {t.shape!r})", x, False, base=base,
               base_shape=shape)
    return Choice("view", emit, "view")


def rule_index(lowering, t):
    advanced = any(e[0] == "array" for e in t.op.index)

    def emit(L, t, out):
        name = f"ix{L.index[id(t)]}"
        x = L.value(t.inputs[0])
        if advanced:
            L.define(name, t.op.numpy_index(), note="the index")
            L.alloc(t, f"{L.use(x)}[{name}]", False)
        else:  # the Ellipsis keeps an all-integer index a 0-d array view, not a scalar
            L.define(name, t.op.numpy_index() + (Ellipsis,), note="the index")
            L.view(t, f"{x.var}[{name}]", x, False)
    return Choice("alloc" if advanced else "view", emit, "numpy" if advanced else "view")


def rule_index_add(lowering, t):
    def emit(L, t, out):
        name = f"ix{L.index[id(t)]}"
        L.define(name, Index(t.op.index).numpy_index(), note="the index")
        L.line(f"{out}[...] = 0")
        g = L.arg(t.inputs[0])
        if any(e[0] == "array" for e in t.op.index):
            L.line(f"np.add.at({out}, {name}, {g})")
        else:
            L.line(f"{out}[{name}] = {g}")
    return Choice("buffer", emit)


def rule_take(lowering, t):
    def emit(L, t, out):
        x, idx = t.inputs
        L.alloc(t, f"{L.arg(x)}[{L.arg(idx)}]", True)
    return Choice("alloc", emit)


def rule_take_add(lowering, t):
    def emit(L, t, out):
        g, idx = t.inputs
        L.line(f"{out}[...] = 0")
        L.line(f"np.add.at({out}, {L.arg(idx)}, {L.arg(g)})")
    return Choice("buffer", emit)


def rule_concat(lowering, t):
    def emit(L, t, out):
        parts = ", ".join(L.arg(i) for i in t.inputs)
        L.line(f"np.concatenate(({parts},), axis={t.op.axis}, out={out}, casting='unsafe')")
    return Choice("buffer", emit)


def rule_cast(lowering, t):
    def emit(L, t, out):
        L.line(f"np.copyto({out}, {L.arg(t.inputs[0])}, casting='unsafe')")
    return Choice("buffer", emit)


# ---------------------------------------------------------------------------------------
# Elementwise ops: one ufunc, or a generated kernel


def work_dtype(t: Tensor) -> str:
    """The dtype an elementwise op computes in (its evaluate's ``work``)."""
    fn = t.op.fn
    numeric = [i.dtype for a, i in zip(fn.args, t.inputs) if a.name not in fn.bool_args]
    common = dtypes.promote(*numeric) if numeric else "bool"
    return t.op.dtype or (common if (fn.int_ok or fn.out_dtype) else dtypes.to_float(common))


def rule_elementwise(lowering, t):
    fn, op = t.op.fn, t.op
    work = work_dtype(t)
    expr = fn.stable.subs(dict(zip(fn.param_symbols, (v for _, v in op.params)))) \
        if op.params else fn.stable
    bools = tuple(a.name in fn.bool_args for a in fn.args)
    form = cg.ufunc_form(expr, fn.args)
    natural = "bool" if form and form[0] in cg._UFUNC_RELATIONS.values() else work
    if form and not any(bools) and natural == t.dtype and \
            all(i.dtype == work for i in t.inputs) and \
            (form[0] in NUMPY_FASTER or t.size < KERNEL_MIN_SIZE):
        return Choice("buffer", lambda L, t, out: _emit_ufunc(L, t, out, form))
    step = cg.Step(fn.name, expr, fn.args, tuple(("operand", k) for k in range(fn.arity)),
                   work, t.dtype, bools)
    shapes = [static_base_shape(lowering.folded, i) for i in t.inputs]
    kinds, sizes = broadcast_pattern(t.shape, shapes)
    try:
        spec = cg.elementwise_kernel([step], [i.dtype for i in t.inputs], kinds)
    except cg.Unsupported:
        return rule_numpy(lowering, t)
    name = lowering.kernel(t, spec)
    # more than two broadcast axes: such operands are materialized at full size
    full = [int(np.prod(shape, dtype=np.int64)) != t.size and kinds == "F" * len(kinds)
            for shape in shapes]
    steps = split_steps(t, kinds, sizes)

    def emit(L, t, out):
        args = [L.operand(i, materialize, t.shape) for i, materialize in zip(t.inputs, full)]
        L.call(name, spec, [L.pointer(L.value(t))] + args, sizes, steps)
    return Choice("buffer", emit, "kernel")


def split_steps(t: Tensor, kinds: str, sizes) -> list[int]:
    """Bytes each pointer (output first) advances per unit of the first loop size."""
    inner = sizes[1] if len(sizes) == 2 else 1
    per = {"F": inner, "C": 1, "R": 0, "S": 0}
    return [np.dtype(t.dtype).itemsize * inner] + \
        [np.dtype(i.dtype).itemsize * per[k] for i, k in zip(t.inputs, kinds)]


def _emit_ufunc(L, t, out, form):
    name, operands = form
    args = []
    for tag, v in operands:
        if tag == "arg":  # NumPy broadcasts a broadcast operand's base itself
            value = L.value(t.inputs[v])
            args.append(L.use(value.base if value.base is not None else value))
        else:
            args.append(repr(v))
    L.line(f"np.{name}({', '.join(args)}, out={out})")


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
        key = instance_key(first)
        self.members = [t for t in lowering.nodes if isinstance(t.op, Fused) and
                        instance_key(t) == key]
        self.leader = self.members[0]
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
        shapes = [static_base_shape(lowering.folded, i) for i in self.inputs]
        self.accumulate = [None if o.reduce is None else
                           "column" if len(o.reduce) < len(domain) else "full"
                           for o in self.outputs]
        leads = {len(o.reduce) for o, a in zip(self.outputs, self.accumulate) if a == "column"}
        self.tail = 0
        if leads:
            kinds, sizes = split_kinds(domain, shapes, leads.pop())
        else:
            kinds, sizes = broadcast_pattern(domain, shapes)
            kinds = list(kinds)
            if any(self.accumulate) and len(sizes) == 1:
                sizes, self.tail = _flat_split(sizes[0])
                kinds = ["F" if k == "F" else "S" for k in kinds]
        # an operand that varies along only part of the loop's axes (more than two
        # broadcast patterns) is materialized at full size, as for single ops
        size = int(np.prod(domain, dtype=np.int64))
        self.materialize = [k is None or (k == "F" and int(np.prod(s, dtype=np.int64)) != size)
                            for k, s in zip(kinds, shapes)]
        self.kinds = "".join("F" if k is None else k for k in kinds)
        self.sizes = sizes
        symbols = group.symbols()
        bound, exprs = group.statements(self.outputs, symbols)
        label = "fused_" + "_".join(dict.fromkeys(s.fn.name for s in group.steps))
        steps_text = [f"s{k} = {st.text()}" for k, st in enumerate(group.steps)]
        steps_text.append("outputs: " + ", ".join(o.text() for o in self.outputs))
        self.spec = cg.fused_kernel(label, steps_text, bound, exprs, symbols,
                                    [i.dtype for i in self.inputs], self.kinds, group.dtype,
                                    self.accumulate)
        self.name = lowering.kernel(self.leader, self.spec)

    def emit(self, L: Lowering, t: Tensor, out: str) -> None:
        """One kernel call for every output of the instance (``t`` is the first), and one
        more for the ``tail`` of a flat sum, as one more chunk: one row of ``tail`` values
        after the n0 rows."""
        parallel = L.parallel(self.spec, self.sizes)
        rows = -(-self.sizes[0] // L.threads) if parallel else self.sizes[0]
        call = _Call(chunks=-(-self.sizes[0] // rows) if self.sizes[0] else 1,
                     blocks=max(1, -(-rows // cg.ACC_ROWS)))
        for m, o in zip(self.members, self.outputs):
            self.output(L, t, m, o, call, parallel)
        inner = self.sizes[1] if len(self.sizes) == 2 else 1
        for i, kind, materialize in zip(self.inputs, self.kinds, self.materialize):
            call.add(L.operand(i, materialize, self.domain), np.dtype(i.dtype).itemsize *
                     {"F": inner, "C": 1}.get(kind, 0))
        dtype = self.group.dtype
        if self.spec.scratch:  # work space for the phases of a long body, one per chunk
            scratch = f"{L.var_name(t)}_work"
            L.line(f"{scratch} = np.empty({(call.chunks + bool(self.tail)) * self.spec.scratch}"
                   f", np.{dtype})")
            L.defined.add(scratch)
            call.add(f"_addr({scratch})", 0, np.dtype(dtype).itemsize * self.spec.scratch)
            call.finish.append(f"del {scratch}")
        L.calls += 1
        if parallel:
            L.line(f"_parallel({self.name}, {L.threads}, ({', '.join(call.pointers)},), "
                   f"{tuple(call.steps)!r}, {tuple(self.sizes)!r}, "
                   f"{tuple(call.chunk_steps)!r})")
        else:
            L.line(f"{self.name}({', '.join(call.pointers)}, "
                   f"{', '.join(map(str, self.sizes))})")
        if self.tail:
            L.calls += 1
            L.line(f"{self.name}({', '.join(call.after(self.sizes[0]))}, 1, {self.tail})")
        for line in call.finish:
            L.line(line)

    def output(self, L: Lowering, t: Tensor, m: Tensor, o, call: _Call, parallel: bool):
        """Define output ``m`` (the leader's own value exists already) and its pointer.
        A sum accumulates n1 column sums (in ``cg.accumulator_dtype``): straight into a
        column-sum output of that dtype, else into partial sums (one row per chunk of a
        parallel call; for a full sum one row per block of ``cg.ACC_ROWS`` rows of a chunk,
        and one for the tail) added up after the call in that dtype (a full sum by NumPy's
        pairwise sum)."""
        if m is not t:
            kind = "fresh" if id(m) in L.outputs else "pool"
            L.values[id(m)] = Value(m, L.var_name(m), kind, L.index[id(m)], True)
            L.line(f"# {L.describe(m)}")
            if kind == "fresh":
                L.line(f"{L.var_name(m)} = np.empty({m.shape!r}, np.{m.dtype})")
        value = L.value(m)
        item = np.dtype(self.group.dtype).itemsize
        n1 = self.sizes[-1]
        if o.reduce is None:
            call.add(L.pointer(value), item * (n1 if len(self.sizes) == 2 else 1))
            return
        column = len(o.reduce) < len(self.domain)
        acc_dtype = cg.accumulator_dtype(self.group.dtype)
        if column and not parallel and acc_dtype == self.group.dtype:
            L.line(f"{L.use(value)}.fill(0)")
            call.add(L.pointer(value), 0, item * n1)
            return
        acc = f"{value.var}_acc"
        blocks = 1 if column else call.blocks
        L.line(f"{acc} = np.zeros(({call.chunks * blocks + bool(self.tail)}, {n1}), "
               f"np.{acc_dtype})")
        L.defined.add(acc)
        call.add(f"_addr({acc})", 0, np.dtype(acc_dtype).itemsize * n1 * blocks)
        target = f"{L.use(value)}.reshape({(-1,) if column else ()!r})"
        total = f"np.add.reduce({acc}, axis={0 if column else None}"
        # into a float32 out=, NumPy would round each row's sum to float32
        call.finish += [f"{total}, out={target})" if acc_dtype == self.group.dtype else
                        f"{target}[...] = {total})", f"del {acc}"]


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


def rule_identity(lowering, t):
    """stop_gradient: its operand itself."""
    def emit(L, t, out):
        x = L.value(t.inputs[0])
        L.view(t, x.var, x, x.contiguous, base=x.base, base_shape=x.base_shape)
    return Choice("view", emit, "view")


def rule_scan(lowering, t):
    """A scan: the first of an instance's outputs runs the loop and gives them all.  The
    body is optimized and compiled once, as a program of its own whose buffers every step
    reuses; the orchestrator loops over it (:func:`graphc.scan.run_loop`)."""
    if lowering.scans is None:
        lowering.scans = scan_siblings(lowering.nodes)
    members = lowering.scans[scan_key(t)]
    if t is not members[0]:
        return Choice("alloc", None, "loop")

    def emit(L, t, out):
        from .passes.pipeline import DEFAULT_PIPELINE, run
        loop, outs = t.op.loop, [m.op.out for m in members]
        body = compile_graph(run(loop.step_graph(outs), DEFAULT_PIPELINE)[0])
        L.kernels.update(body.kernels)
        L.kernel_seconds += body.stats["kernel_seconds"]
        name = f"loop{L.index[id(t)]}"
        L.define(name, LoopRunner(loop, outs, body), note="the scan body below, in a loop")
        L.loop_sources.append(f"\n\n# {'=' * 88}\n# {name}: the scan body, run {loop.length} "
                              f"times (once per step)\n{body.source}")
        args = ", ".join(L.arg(i) for i in t.inputs)
        names = []
        for m in members:
            value = Value(m, L.var_name(m), "alloc", L.index[id(m)], True)
            L.values[id(m)] = value
            L.defined.add(value.var)
            if id(m) not in L.outputs:
                L.aux.setdefault(value.root, []).append(value.var)
            names.append(value.var)
        L.line(f"{', '.join(names)}, = {name}({args})  # {loop.length} steps")
    return Choice("alloc", emit, "loop")


class LoopRunner:
    """Runs a scan's loop with a compiled body; returns the instance's outputs."""

    def __init__(self, loop, outs, body):
        self.loop, self.outs, self.body = loop, outs, body

    def __call__(self, *arrays):
        return tuple(run_loop(self.loop, self.outs, arrays, self.body))


RULES = {
    Fused: rule_fused, Scan: rule_scan, StopGradient: rule_identity,
    Elementwise: rule_elementwise, MatMul: rule_matmul, Reduce: rule_reduce,
    Softmax: rule_rows, LogSoftmax: rule_rows, LogSumExp: rule_rows,
    Reshape: rule_reshape, Transpose: rule_transpose, BroadcastTo: rule_broadcast_to,
    Index: rule_index, IndexAdd: rule_index_add, Take: rule_take, TakeAdd: rule_take_add,
    Concat: rule_concat, Cast: rule_cast, MaxPool2d: rule_max_pool, MaxPool2dGrad: rule_max_pool,
    Conv2d: rule_conv, Conv2dInputGrad: rule_conv, Conv2dWeightGrad: rule_conv,
}


# ---------------------------------------------------------------------------------------
# Run time


def _addr(a: np.ndarray) -> int:
    """The address of ``a``'s data (about 1 us; read-only arrays need this way)."""
    return a.__array_interface__["data"][0]


def _waddr(a: np.ndarray) -> int:
    """The address of a writable contiguous array's data, three times faster."""
    return ctypes.addressof(ctypes.c_char.from_buffer(a))


_POOL: ThreadPoolExecutor | None = None
_POOL_KEY: tuple = ()
_POOL_LOCK = threading.Lock()


def _workers(n: int) -> ThreadPoolExecutor:
    """``n`` worker threads for kernel chunks (recreated after a fork)."""
    global _POOL, _POOL_KEY
    key = (os.getpid(), n)
    with _POOL_LOCK:
        if _POOL_KEY != key:
            _POOL = ThreadPoolExecutor(n, thread_name_prefix="graphc-kernel")
            _POOL_KEY = key
        return _POOL


def run_parallel(fn, threads: int, pointers, steps, sizes, chunk_steps=None) -> None:
    """Run kernel ``fn`` over ``sizes[0]`` split in ``threads`` chunks: this thread takes
    the first, workers the rest.  Kernels release the GIL and touch disjoint memory.
    Pointer k advances ``steps[k]`` bytes per unit of ``sizes[0]`` and ``chunk_steps[k]``
    per chunk (the chunk's own partial sums of a fused group's reductions)."""
    total, rest = sizes[0], sizes[1:]
    chunk = -(-total // threads)
    chunk_steps = chunk_steps or (0,) * len(pointers)
    futures = [_workers(threads - 1).submit(
        fn, *[p + start * s + (start // chunk) * c
              for p, s, c in zip(pointers, steps, chunk_steps)],
        min(chunk, total - start), *rest) for start in range(chunk, total, chunk)]
    fn(*pointers, min(chunk, total), *rest)
    for f in futures:
        f.result()


# the names every program reads, besides those its prelude defines
_GLOBALS = {"np": np, "_addr": _addr, "_waddr": _waddr, "_contig": np.ascontiguousarray,
            "_parallel": run_parallel}


class _Evaluate:
    """A node evaluated by its op's NumPy semantics (the default rule)."""

    def __init__(self, op, dtype):
        self.op, self.dtype = op, dtype

    def __call__(self, *args):
        out = np.asarray(self.op.evaluate(*args))
        return out if out.dtype.name == self.dtype else out.astype(self.dtype)


class NumbaProgram:
    """A lowered graph: call with ``{name: array}`` (validated feeds); returns fresh arrays.

    ``source`` is the orchestrator followed by the source of every kernel it calls."""

    _COUNTER = 0

    def __init__(self, lowering: Lowering, source: str, line_nodes, inputs, pool, plan,
                 named):
        NumbaProgram._COUNTER += 1
        self.filename = f"<graphc-numba-{NumbaProgram._COUNTER}>"
        self.input_names = tuple(t.op.label for t in inputs)
        self.line_nodes = line_nodes
        self.orchestrator = source
        self.kernels = dict(lowering.kernels)
        # tracebacks through the orchestrator show its lines; forgotten with the program
        linecache.cache[self.filename] = (len(source), None, source.splitlines(True),
                                          self.filename)
        weakref.finalize(self, linecache.cache.pop, self.filename, None)
        namespace = dict(_GLOBALS, _compiled=lowering.namespace)
        exec(compile(source, self.filename, "exec"), namespace)  # noqa: S102 -- our text
        self._run = namespace["run"]
        self._layout = [(plan.slot_of[id(v.node)], v.node.shape, v.node.dtype) for v in pool]
        self._pointer_of = [pool.index(v) for v in lowering.pool_pointers]
        self._named = named  # the buffers the program reads by name
        self._slot_bytes = list(plan.slot_bytes)
        self._free: list = []
        self.source = source + "".join(lowering.loop_sources) + self._kernel_appendix()
        self.stats = {
            "kernels": len(self.kernels),
            "kernel_cache_hits": lowering.counts["memory"] + lowering.counts["disk"],
            "kernel_cache_misses": lowering.counts["compiled"] + lowering.counts["rebuilt"],
            "kernel_cache_rebuilt": lowering.counts["rebuilt"],
            "kernel_seconds": lowering.kernel_seconds,
            "numpy_fallbacks": list(lowering.fallbacks),
            "buffer_bytes": plan.bytes,
            "kernel_threads": lowering.threads,
            "lowered": dict(lowering.lowered),
            "kernel_calls": lowering.calls,
        }

    def _kernel_appendix(self) -> str:
        if not self.kernels:
            return ""
        parts = ["", "", "# " + "=" * 88,
                 "# Kernels called above (k_<name>), compiled by Numba and kept in graphc's "
                 "kernel cache under their name (graphc.kernel_cache)"]
        for name, kernel in sorted(self.kernels.items()):
            parts += ["", f"# ---- {name}", kernel.spec.source]
        return "\n".join(parts)

    def _buffers(self):
        slots = [np.empty(n, np.uint8) for n in self._slot_bytes]
        arrays = tuple(slots[s][:int(np.prod(shape, dtype=np.int64)) * np.dtype(d).itemsize]
                       .view(d).reshape(shape) for s, shape, d in self._layout)
        pointers = tuple(_addr(arrays[k]) for k in self._pointer_of)
        return tuple(arrays[k] for k in self._named), pointers, arrays

    def __call__(self, arrays: dict) -> list[np.ndarray]:
        buffers = self._free.pop() if self._free else self._buffers()
        try:
            with np.errstate(all="ignore"):  # as the reference: IEEE results, no warnings
                return list(self._run(*[arrays[n] for n in self.input_names], buffers[0],
                                      buffers[1]))
        except (IndexError, ValueError, FloatingPointError, TypeError) as err:
            node = self._failing_node(sys.exc_info()[2])
            if node is None:
                raise
            raise GraphError(located(f"{node.op.name} ({node.name}) failed at run time: {err}",
                                     node.loc)) from err
        finally:
            self._free.append(buffers)

    def _failing_node(self, tb):
        for frame, lineno in traceback.walk_tb(tb):
            if frame.f_code.co_filename == self.filename:
                node = self.line_nodes.get(lineno)
                if node is not None:
                    return node
        return None


def compile_failure(lowering, t, spec, err) -> cg.CodegenError:
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
    return cg.CodegenError(located(comment(message).replace("\\x0a", "\n"), t.loc))


def compile_graph(graph: Graph) -> NumbaProgram:
    """Lower ``graph`` for the Numba backend."""
    return Lowering(graph).run()
