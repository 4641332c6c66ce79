"""The CUDA backend: a Python orchestrator per graph calling ``numba.cuda`` kernels.

``compile_graph(graph)`` lowers every node by a rule of its op class (``RULES``) to one step
of a plan run by :class:`CudaProgram`.  Values live on the device as contiguous
``DeviceNDArray``s: feeds are copied in (or taken as they are when already on the device,
see :func:`to_device`), constants are uploaded once at compile time, and only the outputs
are copied back.

=====================================  ===========================================
op                                     lowering
=====================================  ===========================================
elementwise                            one generated kernel per node from the op's
                                       stable SymPy form (:class:`CudaPrinter`)
fused groups                           one generated kernel per group instance storing
                                       every output (:func:`cuda_kernels.fused_source`);
                                       a sum output: its values stored with the summed
                                       axes last, then a row kernel
sum / max / min                        permute reduced axes last, then a row kernel
                                       (block tree reduction in shared memory)
softmax, log_softmax, logsumexp        row kernels on the (moved) last axes
matmul (2-D, batched)                  tiled shared-memory kernel
transpose, broadcast_to, concat, cast  strided copy kernel; reshape is a view
index / index_add                      gather / atomic scatter-add through an index
                                       map made at compile time
take / take_add                        row gather / atomic row scatter-add
conv2d and both its gradients          im2col (a gather through a compile-time index
                                       map) + the matmul kernel; col2im by atomics
max_pool2d                             window gather (padding -inf) + row max
pooling gradients, dropout mask, ...   the op's NumPy ``evaluate`` on the host, with
                                       explicit copies: ``stats["host_fallbacks"]``
=====================================  ===========================================

Nodes that depend on no input are folded at compile time by the reference semantics.

>>> ok, why = available()   # (False, "no CUDA GPU ...") on a machine without one
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from .elementwise_ops import Elementwise
from .errors import BackendError, FeedError
from .fused_ops import Fused
from .graph import Graph, node_names, type_text
from .inputs import Input
from .interpreter import check_sizes
from .lowering import (
    comment,
    describe,
    failed,
    fold_constants,
    group_order,
    instance_key,
    step_line,
    var_names,
)
from .nn_ops import Conv2d, Conv2dInputGrad, Conv2dWeightGrad, MaxPool2d
from .numba_codegen import Unsupported, _comparison_form, formula
from .passes.memory import plan as plan_memory
from .scan import Scan, StopGradient
from .shape_ops import BroadcastTo, Cast, Concat, Index, IndexAdd, Reshape, Take, TakeAdd, Transpose
from .structured_ops import LogSoftmax, LogSumExp, MatMul, Reduce, Softmax

FASTMATH = os.environ.get("GRAPHC_CUDA_FASTMATH", "") == "1"

SIMULATOR_HINT = ("set NUMBA_ENABLE_CUDASIM=1 in the environment before Python starts to run "
                  "the kernels under Numba's CUDA simulator (slow, for tests), or use "
                  "backend='numba'")


# ---------------------------------------------------------------------------------------
# Availability and device arrays


def available() -> tuple[bool, str]:
    """``(True, what)`` if CUDA kernels can run here (a GPU, or Numba's CUDA simulator),
    else ``(False, why)``."""
    try:
        import numba
        from numba import cuda
    except ImportError as err:  # pragma: no cover -- numba is a dependency
        return False, f"numba.cuda cannot be imported ({err})"
    if numba.config.ENABLE_CUDASIM:
        return True, "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1): correct but slow"
    try:
        if cuda.is_available():
            name = cuda.get_current_device().name
            name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
            return True, f"CUDA GPU {name}"
    except Exception as err:  # noqa: BLE001 -- any driver failure means "not usable"
        return False, f"no usable CUDA GPU ({type(err).__name__}: {err}); {SIMULATOR_HINT}"
    return False, f"no CUDA GPU or driver found on this machine; {SIMULATOR_HINT}"


def require() -> str:
    """The device description, or raise :class:`gc.BackendError` saying why not."""
    ok, why = available()
    if not ok:
        raise BackendError(f"backend 'cuda' cannot run: {why}; available: numpy, numba")
    return why


def is_device_array(value) -> bool:
    """Whether ``value`` is a CUDA device array (Numba's, or any ``__cuda_array_interface__``
    object under a GPU)."""
    if isinstance(value, np.ndarray):
        return False
    # the simulator's arrays have copy_to_host but no __cuda_array_interface__
    return hasattr(value, "__cuda_array_interface__") or hasattr(value, "copy_to_host")


def to_device(array, dtype=None):
    """Copy a host array to the device once, e.g. parameters a training loop keeps
    resident; pass the result as a feed and it is used without a copy.

    >>> W = to_device(np.ones((3, 2), np.float32))        # doctest: +SKIP
    >>> f(x=X, W=W)                                       # doctest: +SKIP
    """
    require()
    from numba import cuda
    if is_device_array(array):
        return array
    host = np.asarray(array, dtype=dtype, order="C")  # keeps 0-d arrays 0-d
    return cuda.to_device(host)


def device_feeds(feeds: dict, dtype=None) -> dict:
    """``{name: to_device(value)}`` for a dict of feeds."""
    return {name: to_device(value, dtype) for name, value in feeds.items()}


def host_stand_ins(feeds: dict) -> dict:
    """``feeds`` with each device array replaced by a zero-stride host array of its shape
    and dtype, for ``gc.compile``'s feed check (no copy, so the values of integer device
    feeds are not range-checked)."""
    return {k: np.broadcast_to(np.zeros((), np.dtype(v.dtype)), tuple(v.shape))
            if is_device_array(v) else v for k, v in feeds.items()}


def check_device_feed(name: str, value, tensor) -> None:
    """Raise ``gc.FeedError`` if a device feed's shape or dtype differs from ``tensor``'s
    (device feeds are used as they are: no conversion, no copy)."""
    if tuple(value.shape) != tensor.shape:
        raise FeedError(f"feed {name!r} has shape {tuple(value.shape)}, expected {tensor.shape}")
    if np.dtype(value.dtype) != np.dtype(tensor.dtype):
        raise FeedError(f"feed {name!r} is a device array of dtype {np.dtype(value.dtype)}, "
                        f"expected {tensor.dtype} (device feeds are not converted)")


# ---------------------------------------------------------------------------------------
# The program


@dataclass
class Step:
    """One node's work: ``run(env)`` stores the node's device value in ``env[slot]``."""

    slot: int
    run: object
    line: str
    kind: str
    free: list = field(default_factory=list)  # slots whose last use this step is


class CudaProgram:
    """A lowered graph.  ``program(feeds)`` returns fresh host arrays, one per output;
    ``program.run_device(feeds)`` returns the device arrays (no copy back)."""

    def __init__(self, lowering: Lowering):
        self.steps = lowering.steps
        self.inputs = lowering.inputs            # (name, slot, tensor)
        self.output_slots = lowering.output_slots
        self.constants = lowering.constants      # slot -> device array
        self.nslots = lowering.nslots
        self.source = lowering.source()
        self.stats = {
            "device": lowering.device,
            "kernels": len(lowering.kernels),
            "kernel_steps": sum(s.kind == "kernel" for s in self.steps),
            "host_fallbacks": list(lowering.fallbacks),
            "lowered": dict(lowering.lowered),
            "cuda_fastmath": FASTMATH,
        }

    def run_device(self, feeds: dict) -> list:
        from numba import cuda
        env = [None] * self.nslots
        for slot, value in self.constants.items():
            env[slot] = value
        for name, slot, t in self.inputs:
            value = feeds[name]
            if is_device_array(value):
                check_device_feed(name, value, t)
                env[slot] = value
            else:
                env[slot] = cuda.to_device(np.asarray(value, order="C"))
        for step in self.steps:
            step.run(env)
            for s in step.free:
                env[s] = None
        return [env[s] for s in self.output_slots]

    def __call__(self, feeds: dict) -> list[np.ndarray]:
        with np.errstate(all="ignore"):  # as the reference: IEEE results, no warnings
            return [np.array(d.copy_to_host(), copy=True) for d in self.run_device(feeds)]


def compile_graph(graph: Graph) -> CudaProgram:
    """Lower ``graph`` for the CUDA backend; raise ``gc.BackendError`` without a GPU."""
    device = require()
    return Lowering(graph, device).run()


# ---------------------------------------------------------------------------------------
# Lowering


def _contiguous_strides(shape) -> tuple[int, ...]:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return tuple(reversed(strides))


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _flat(a):
    return a.reshape(a.size) if a.ndim != 1 else a


class Lowering:
    def __init__(self, graph: Graph, device: str):
        self.graph = graph
        self.device = device
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

    # -- driver ---------------------------------------------------------------------------
    def run(self) -> CudaProgram:
        from numba import cuda
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
                rule = next((r for cls, r in RULES if isinstance(t.op, cls)), None)
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
        return CudaProgram(self)

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
        from numba import cuda
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
        from numba import cuda

        from . import cuda_kernels as ck
        self.kernels.setdefault("strided_copy", "")
        n = _size(shape)
        dst_strides = _contiguous_strides(shape) if dst_strides is None else dst_strides
        if not shape:
            shape, src_strides, dst_strides = (1,), (0,), (0,)
        meta = [cuda.to_device(np.asarray(a, np.int64)) for a in (shape, src_strides,
                                                                  dst_strides)]
        ndim, blocks = len(shape), ck.blocks_for(n)

        def copy(dst, src):
            if n:
                ck.strided_copy[blocks, ck.THREADS](dst, dst_off, meta[2], src, src_off,
                                                    meta[1], meta[0], ndim, n)
        return copy

    def empty(self, shape, dtype):
        from numba import cuda
        return cuda.device_array(shape, np.dtype(dtype))

    def rows_fn(self, kind: str, in_shape, axes, in_dtype, dtype):
        """``f(x) -> y`` with y of shape (rows,) or (rows, cols): the row kernel ``kind``
        over ``axes`` moved last, the input converted to ``dtype``."""
        from . import cuda_kernels as ck
        kept = [a for a in range(len(in_shape)) if a not in axes]
        perm = tuple(kept) + tuple(axes)
        pshape = tuple(in_shape[a] for a in perm)
        rows = _size([in_shape[a] for a in kept])
        cols = _size([in_shape[a] for a in axes])
        strides = _contiguous_strides(in_shape)
        needs_copy = perm != tuple(range(len(in_shape))) or in_dtype != dtype
        copy = self.copy_fn(pshape, tuple(strides[a] for a in perm)) if needs_copy else None
        kernel = ck.row_kernel(kind, dtype)
        self.kernels.setdefault(f"row_{kind}_{dtype}", "")
        whole = kind in ("softmax", "log_softmax")

        def run(x):
            if copy is not None:
                tmp = self.empty(pshape, dtype)
                copy(_flat(tmp), _flat(x))
                x = tmp
            out = self.empty((rows, cols) if whole else (rows,), dtype)
            if rows and cols:
                kernel[min(rows, ck.MAX_BLOCKS), ck.THREADS](_flat(out), _flat(x),
                                                                  rows, cols)
            elif rows and kind == "sum":
                from . import cuda_kernels as ck2
                ck2.fill[ck2.blocks_for(rows), ck2.THREADS](out, 0, rows)
            return out
        return run, perm, pshape


def _unsupported(what):
    raise Unsupported(what)


# ---------------------------------------------------------------------------------------
# Rules: (lowering, node) -> (run(env), source line, kind)


_KERNELS: dict = {}  # generated source -> compiled kernel, shared by every program


def _expression(t):
    """(symbols, expr, work dtype, bool symbols, domain shape) of an elementwise node."""
    syms = tuple(sp.Symbol(f"x{j}", real=True) for j in range(len(t.inputs)))
    shape = tuple(np.broadcast_shapes(*(i.shape for i in t.inputs)))
    fn = t.op.fn
    subs = dict(zip(fn.param_symbols, (v for _, v in t.op.params)))
    subs.update(zip(fn.args, syms))
    expr = fn.stable.xreplace(subs)
    work = t.op.work_dtype([i.dtype for i in t.inputs])
    bools = {s for s, a, i in zip(syms, fn.args, t.inputs)
             if a.name in fn.bool_args or (i.dtype == "bool" and work == "bool")}
    return syms, expr, work, bools, shape


def elementwise_source(t, kinds, out_dtype) -> str:
    """The kernel source of elementwise node ``t``: a grid-stride loop over the flat
    output; operand k is read at ``i`` (kind F), ``0`` (S) or through its strides (B)."""
    from .cuda_kernels import CudaPrinter
    syms, expr, work, bools, _ = _expression(t)
    printer = CudaPrinter(work, {s: s.name for s in syms}, bools)
    cast = printer._cast()
    args = ", ".join(f"a{k}, s{k}" for k in range(len(kinds)))
    lines = [f"# {comment(t.op.name)}: {formula(expr)}  [work {work}, out {out_dtype}]",
             f"def kernel(out, n, ndim, shape, {args}):",
             "    for i in range(cuda.grid(1), n, cuda.gridsize(1)):"]
    strided = [k for k, kind in enumerate(kinds) if kind == "B"]
    if strided:
        lines.append("        rem = i")
        lines += [f"        o{k} = 0" for k in strided]
        lines += ["        for d in range(ndim - 1, -1, -1):",
                  "            c = rem % shape[d]",
                  "            rem //= shape[d]"]
        lines += [f"            o{k} += c * s{k}[d]" for k in strided]
    for k, (kind, s, x) in enumerate(zip(kinds, syms, t.inputs)):
        at = {"F": "i", "S": "0", "B": f"o{k}"}[kind]
        load = f"a{k}[{at}]"
        if s not in bools and x.dtype != work:
            load = f"{cast}({load})"
        lines.append(f"        {s.name} = {load}")
    cond = _comparison_form(expr) if out_dtype == "bool" else None
    target = cond if cond is not None else expr
    repl, (reduced,) = sp.cse(target, symbols=sp.numbered_symbols("c_"))
    for sym, sub in repl:
        text, kind = printer._p(sub)
        printer.names[sym] = sym.name
        if kind == "bool":
            printer.bool_symbols.add(sym)
        lines.append(f"        {sym.name} = {text}")
    if out_dtype == "bool":
        value = printer.boolean(reduced)
    elif work == out_dtype:
        value = printer.numeric(reduced)
    else:
        value = f"{CudaPrinter(out_dtype, {})._cast()}({printer.numeric(reduced)})"
    lines.append(f"        out[i] = {value}")
    return "\n".join(lines) + "\n"


def _compile_kernel(low: Lowering, stem: str, source: str):
    """``(name, kernel)`` of ``source`` (which defines ``kernel``), renamed
    ``k_<stem>_<hash of source>``."""
    import hashlib

    from numba import cuda

    from . import cuda_kernels as ck
    from .lowering import identifier
    digest = hashlib.sha256(source.encode()).hexdigest()[:8]
    name = f"k_{identifier(stem).lstrip('_')}_{digest}"
    source = source.replace("def kernel(", f"def {name}(", 1)
    low.kernels[name] = source
    kernel = _KERNELS.get(source)
    if kernel is None:
        namespace = dict(ck.KERNEL_GLOBALS)
        filename = f"<graphc-cuda {name}>"
        import linecache
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        exec(compile(source, filename, "exec"), namespace)  # noqa: S102 -- our own text
        kernel = cuda.jit(fastmath=FASTMATH)(namespace[name])
        _KERNELS[source] = kernel
    return name, kernel


def rule_elementwise(low: Lowering, t):
    from numba import cuda

    from . import cuda_kernels as ck
    domain = _expression(t)[-1]
    kinds = _operand_kinds(t.inputs, domain)
    name, kernel = _compile_kernel(low, t.op.name, elementwise_source(t, kinds, t.dtype))
    shp = domain or (1,)
    meta = [cuda.to_device(np.asarray(shp, np.int64))] + _operand_strides(t.inputs, domain)
    n, ndim = _size(domain), len(shp)
    ins = [low.slot[id(x)] for x in t.inputs]
    k = low.slot[id(t)]

    def run(env):
        out = low.empty(domain, t.dtype)
        if n:
            args = []
            for j, i in enumerate(ins):
                args += [_flat(env[i]), meta[j + 1]]
            kernel[ck.blocks_for(n), ck.THREADS](_flat(out), n, ndim, meta[0], *args)
        env[k] = out.reshape(t.shape)
    return run, low.line(t, name), "kernel"


def _operand_kinds(inputs, domain) -> list[str]:
    """F (the domain's shape: read at i), S (one element: at 0), B (through strides)."""
    return ["F" if x.shape == domain else "S" if x.size == 1 else "B" for x in inputs]


def _operand_strides(inputs, domain) -> list:
    """Each operand's strides over the domain's axes (0 where it broadcasts), on the
    device."""
    from numba import cuda
    out = []
    for x in inputs:
        xs = _contiguous_strides(x.shape)
        lead = len(domain) - x.ndim
        st = (0,) * lead + tuple(s if d != 1 else 0 for s, d in zip(xs, x.shape))
        out.append(cuda.to_device(np.asarray(st or (0,), np.int64)))
    return out


def rule_fused(low: Lowering, t):
    """One kernel launch stores every output of a fused group instance (its nodes with the
    same inputs), each step computed once per element.  The first node met launches it
    and sets every member's value; the others follow, with nothing to run.  A summed
    output: the kernel stores the values to sum with the summed axes last (through
    strides; a full-size output of the same step is that store already when they are
    last), then the row-sum kernel reduces each row."""
    from numba import cuda

    from . import cuda_kernels as ck
    key = instance_key(t)
    if key in low.fused:
        return (lambda env: None), f"# {low.vname(t)}: {t.dtype}{list(t.shape)}, " \
            f"computed with {low.vname(low.fused[key])}", "fused"
    group, work = t.op.group, t.op.group.dtype
    members = [m for m in low.graph.nodes
               if isinstance(m.op, Fused) and instance_key(m) == key]
    domain = tuple(np.broadcast_shapes(*(i.shape for i in t.inputs)))
    stores, outputs = _fused_stores(members, domain)
    identity = tuple(range(len(domain)))
    source = ck.fused_source(group, [(step, order != identity) for step, order in stores],
                             [i.dtype for i in t.inputs], _operand_kinds(t.inputs, domain))
    stem = "fused_" + "_".join(dict.fromkeys(s.fn.name for s in group.steps))
    name, kernel = _compile_kernel(low, stem, source)
    low.calls.add(name)
    shapes = [tuple(domain[a] for a in order) for _, order in stores]
    meta = [_store_strides(order, shape) for (_, order), shape in zip(stores, shapes)]
    meta += _operand_strides(t.inputs, domain)
    plan = [(low.slot[id(m)], store, m.shape, None if not axes else low.rows_fn(
        "sum", shapes[store], tuple(range(len(domain) - len(axes), len(domain))), work,
        work)[0]) for m, store, axes in outputs]
    shape = cuda.to_device(np.asarray(domain or (1,), np.int64))
    n, ndim = _size(domain), max(1, len(domain))
    ins = [low.slot[id(x)] for x in t.inputs]
    low.fused[key] = t

    def run(env):
        arrays = [low.empty(s, work) for s in shapes] + [env[i] for i in ins]
        if n:
            args = [a for array, st in zip(arrays, meta) for a in (_flat(array), st)]
            kernel[ck.blocks_for(n), ck.THREADS](n, ndim, shape, *args)
        for slot, store, out_shape, summed in plan:
            value = arrays[store] if summed is None else summed(arrays[store])
            env[slot] = value.reshape(out_shape)
    said = ", ".join(f"{m.dtype}{list(m.shape)}" + (f" (sum over {axes})" if axes else "")
                     for m, _, axes in outputs)
    args = ", ".join(low.vname(i) for i in t.inputs)
    line = f"{', '.join(low.vname(m) for m, _, _ in outputs)} = {name}({args})  # fused: {said}"
    return run, line, "kernel"


def _fused_stores(members, domain):
    """``(stores, outputs)`` of a group instance's kernel: ``stores`` maps each distinct
    (step, order of the domain's axes, summed axes last) to its index; ``outputs`` lists
    (member, its store, its summed axes)."""
    stores: dict[tuple, int] = {}
    outputs = []
    for m in members:
        axes = m.op.out.reduce or ()
        order = tuple(a for a in range(len(domain)) if a not in axes) + tuple(axes)
        outputs.append((m, stores.setdefault((m.op.out.step, order), len(stores)), axes))
    return stores, outputs


def _store_strides(order, shape):
    """The strides, over the domain's axes, of a contiguous array of ``shape`` holding the
    domain's axes in ``order`` (on the device)."""
    from numba import cuda
    strides = dict(zip(order, _contiguous_strides(shape)))
    return cuda.to_device(np.asarray([strides[a] for a in range(len(order))] or [0], np.int64))


def rule_reduce(low: Lowering, t):
    op = t.op
    (x,) = t.inputs
    if x.dtype == "bool" and op.kind != "sum":
        _unsupported("max/min of bool")
    if not op.axes:
        return _view(low, t)
    return _row_reduction(low, t, op.kind, op.axes)


def rule_logsumexp(low: Lowering, t):
    return _row_reduction(low, t, "logsumexp", t.op.axes)


def _row_reduction(low: Lowering, t, kind: str, axes):
    """``kind`` over ``axes`` of the single operand: the axes moved last, a row kernel."""
    (x,) = t.inputs
    fn, _, _ = low.rows_fn(kind, x.shape, axes, x.dtype, t.dtype)
    i, k = low.slot[id(x)], low.slot[id(t)]

    def run(env):
        env[k] = fn(env[i]).reshape(t.shape)
    return run, low.line(t, f"row_{kind}_{t.dtype}"), "kernel"


def rule_softmax(low: Lowering, t):
    (x,) = t.inputs
    axis = t.op.axis % x.ndim
    fn, perm, pshape = low.rows_fn(t.op.name, x.shape, (axis,), x.dtype, t.dtype)
    i, k = low.slot[id(x)], low.slot[id(t)]
    back = None
    if perm != tuple(range(x.ndim)):
        inverse = tuple(int(a) for a in np.argsort(perm))
        pstrides = _contiguous_strides(pshape)
        back = low.copy_fn(t.shape, tuple(pstrides[a] for a in inverse))

    def run(env):
        y = fn(env[i])
        if back is not None:
            out = low.empty(t.shape, t.dtype)
            back(_flat(out), _flat(y))
            y = out
        env[k] = y.reshape(t.shape)
    return run, low.line(t, f"row_{t.op.name}_{t.dtype}"), "kernel"


def matmul_fn(low: Lowering, a_shape, b_shape, dtype):
    """``f(a, b) -> c``: ``a @ b`` of device arrays of ``dtype`` (batch axes broadcast)."""
    from . import cuda_kernels as ck
    if dtype == "bool":
        _unsupported("bool matmul")
    m, kk, n = a_shape[-2], a_shape[-1], b_shape[-1]
    batch = tuple(np.broadcast_shapes(a_shape[:-2], b_shape[:-2]))
    out_shape = batch + (m, n)
    nb = _size(batch)

    def prepare(shape, rows, cols):
        """(copy or None, batch stride) for an operand seen as (nb, rows, cols)."""
        if _size(shape[:-2]) == 1:
            return None, 0
        if tuple(shape[:-2]) == batch:
            return None, rows * cols
        full = batch + (rows, cols)
        xs = _contiguous_strides(shape)
        strides = [0] * (len(full) - len(shape)) + [s if d != 1 else 0
                                                    for s, d in zip(xs, shape)]
        return (low.copy_fn(full, tuple(strides)), full), rows * cols

    ca, sa = prepare(a_shape, m, kk)
    cb, sb = prepare(b_shape, kk, n)
    kernel = ck.matmul_kernel(dtype)
    low.kernels.setdefault(f"matmul_{dtype}", "")
    grid = ((n + ck.TILE - 1) // ck.TILE, (m + ck.TILE - 1) // ck.TILE, max(1, min(nb, 65535)))

    def operand(x, c):
        if c is None:
            return _flat(x)
        copy, full = c
        tmp = low.empty(full, dtype)
        copy(_flat(tmp), _flat(x))
        return _flat(tmp)

    def run(a, b):
        out = low.empty(out_shape, dtype)
        if out.size:
            kernel[grid, (ck.TILE, ck.TILE)](_flat(out), operand(a, ca), operand(b, cb),
                                             m, kk, n, nb, sa, sb)
        return out
    return run


def rule_matmul(low: Lowering, t):
    from . import cuda_kernels as ck
    a, b = t.inputs
    if a.dtype != t.dtype or b.dtype != t.dtype:
        _unsupported("mixed-dtype matmul")  # rare: the reference converts on the host
    fn = matmul_fn(low, a.shape, b.shape, t.dtype)
    ia, ib, k = low.slot[id(a)], low.slot[id(b)], low.slot[id(t)]

    def run(env):
        env[k] = fn(env[ia], env[ib])
    return run, low.line(t, f"matmul_{t.dtype}") + f" [{ck.TILE}x{ck.TILE} tiles]", "kernel"


def transpose_fn(low: Lowering, shape, perm, dtype):
    """``f(x) -> y``: a contiguous transposed copy."""
    xs = _contiguous_strides(shape)
    out_shape = tuple(shape[p] for p in perm)
    copy = low.copy_fn(out_shape, tuple(xs[p] for p in perm))

    def run(x):
        out = low.empty(out_shape, dtype)
        copy(_flat(out), _flat(x))
        return out
    return run


def _window_map(op, x_shape, kernel) -> np.ndarray:
    """im2col as an index map: flat positions in x of every column entry of
    ``op.columns(x, kernel)`` (N, G, C/G*kh*kw, Ho*Wo), -1 where padding is read."""
    positions = np.arange(1, _size(x_shape) + 1, dtype=np.int64).reshape(x_shape)
    return np.ascontiguousarray(op.columns(positions, kernel)) - 1


def gather_fn(low: Lowering, where: np.ndarray, dtype, fill=0):
    """``f(src) -> out`` of ``where``'s shape: src.flat[where], ``fill`` where < 0."""
    from numba import cuda

    from . import cuda_kernels as ck
    shape, n = where.shape, where.size
    device_where = cuda.to_device(where.reshape(-1))
    value = np.dtype(dtype).type(fill)
    low.kernels.setdefault("gather_fill", "")

    def run(src):
        out = low.empty(shape, dtype)
        if n:
            ck.gather_fill[ck.blocks_for(n), ck.THREADS](_flat(out), _flat(src),
                                                         device_where, n, value)
        return out
    return run


def rule_conv(low: Lowering, t):
    """conv2d and its two adjoints by im2col (a gather through a compile-time index map)
    and the tiled matmul; col2im is an atomic scatter-add through the same map."""
    from numba import cuda

    from . import cuda_kernels as ck
    from .nn_ops import Conv2d, Conv2dInputGrad
    op, dtype = t.op, t.dtype
    if any(i.dtype != dtype for i in t.inputs):
        _unsupported("mixed-dtype convolution")
    k = low.slot[id(t)]
    a, b = (low.slot[id(i)] for i in t.inputs)
    gr = op.groups
    if isinstance(op, Conv2d):                               # x, w
        x, w = t.inputs
        cols = gather_fn(low, _window_map(op, x.shape, w.shape[2:]), dtype)
        wm_shape = (gr, w.shape[0] // gr, _size(w.shape[1:]))
        mm = matmul_fn(low, wm_shape, cols_shape(op, x.shape, w.shape), dtype)

        def run(env):
            env[k] = mm(env[b].reshape(wm_shape), cols(env[a])).reshape(t.shape)
    elif isinstance(op, Conv2dInputGrad):                    # g, w -> dx (col2im)
        g, w = t.inputs
        where = _window_map(op, t.shape, w.shape[2:])
        wm_shape = (gr, w.shape[0] // gr, _size(w.shape[1:]))
        wt = transpose_fn(low, wm_shape, (0, 2, 1), dtype)
        rows_shape = (g.shape[0], gr, g.shape[1] // gr, _size(g.shape[2:]))
        mm = matmul_fn(low, (gr, wm_shape[2], wm_shape[1]), rows_shape, dtype)
        device_where = cuda.to_device(where.reshape(-1))
        n, size = where.size, t.size
        low.kernels.setdefault("scatter_add", "")

        def run(env):
            cols = mm(wt(env[b].reshape(wm_shape)), env[a].reshape(rows_shape))
            out = low.empty(t.shape, dtype)
            ck.fill[ck.blocks_for(size), ck.THREADS](_flat(out), 0, size)
            if n:
                ck.scatter_add[ck.blocks_for(n), ck.THREADS](_flat(out), _flat(cols),
                                                             device_where, n)
            env[k] = out
    else:                                                    # Conv2dWeightGrad: x, g -> dw
        x, g = t.inputs
        where = _window_map(op, x.shape, op.kernel)
        cols = gather_fn(low, where, dtype)                  # (N, G, CgK, P)
        ct = transpose_fn(low, where.shape, (0, 1, 3, 2), dtype)
        rows_shape = (g.shape[0], gr, g.shape[1] // gr, _size(g.shape[2:]))
        ct_shape = (where.shape[0], gr, where.shape[3], where.shape[2])
        mm = matmul_fn(low, rows_shape, ct_shape, dtype)     # (N, G, O/G, CgK)
        summed = low.rows_fn("sum", rows_shape[:3] + (where.shape[2],), (0,), dtype,
                             dtype)[0]

        def run(env):
            per_sample = mm(env[b].reshape(rows_shape), ct(cols(env[a])))
            env[k] = summed(per_sample).reshape(t.shape)
    return run, low.line(t, "im2col_gemm"), "kernel"


def cols_shape(op, x_shape, w_shape) -> tuple:
    ho, wo = op.out_hw(x_shape[2:], w_shape[2:])
    return (x_shape[0], op.groups, _size(w_shape[1:]), ho * wo)


def rule_max_pool(low: Lowering, t):
    """max pooling: gather each window into a row (padding reads -inf), row max."""
    (x,) = t.inputs
    positions = np.arange(1, x.size + 1, dtype=np.int64).reshape(x.shape)
    views = t.op.views(positions, 0)                         # kh*kw of (N, C, Ho, Wo)
    where = np.ascontiguousarray(np.stack(views, axis=-1)) - 1
    windows = gather_fn(low, where, t.dtype, fill=-np.inf)
    if x.dtype != t.dtype:
        _unsupported("max_pool2d with a dtype change")
    row_max = low.rows_fn("max", where.shape, (4,), t.dtype, t.dtype)[0]
    i, k = low.slot[id(x)], low.slot[id(t)]

    def run(env):
        env[k] = row_max(windows(env[i])).reshape(t.shape)
    return run, low.line(t, "window_gather_row_max"), "kernel"


def _view(low: Lowering, t):
    (x,) = t.inputs
    i, k = low.slot[id(x)], low.slot[id(t)]
    shape = t.shape
    if x.dtype != t.dtype:  # a reduction over no axes that changes dtype (sum of bool)
        copy = low.copy_fn(shape, _contiguous_strides(shape))

        def convert(env):
            out = low.empty(shape, t.dtype)
            copy(_flat(out), _flat(env[i]))
            env[k] = out
        return convert, low.line(t, "convert"), "kernel"

    def run(env):
        env[k] = env[i].reshape(shape)
    return run, low.line(t, "view"), "view"


def rule_reshape(low: Lowering, t):
    return _view(low, t)


def _strided(low: Lowering, t, name, src_strides, src_off=0):
    (x,) = t.inputs
    copy = low.copy_fn(t.shape, src_strides, src_off)
    i, k = low.slot[id(x)], low.slot[id(t)]

    def run(env):
        out = low.empty(t.shape, t.dtype)
        copy(_flat(out), _flat(env[i]))
        env[k] = out
    return run, low.line(t, name), "kernel"


def rule_transpose(low: Lowering, t):
    xs = _contiguous_strides(t.inputs[0].shape)
    return _strided(low, t, "strided_copy", tuple(xs[p] for p in t.op.perm))


def rule_broadcast(low: Lowering, t):
    x = t.inputs[0]
    xs = _contiguous_strides(x.shape)
    lead = len(t.shape) - x.ndim
    strides = (0,) * lead + tuple(s if d != 1 else 0 for s, d in zip(xs, x.shape))
    return _strided(low, t, "strided_copy", strides)


def rule_cast(low: Lowering, t):
    return _strided(low, t, "strided_copy", _contiguous_strides(t.shape))


def rule_concat(low: Lowering, t):
    axis = t.op.axis % len(t.shape)
    out_strides = _contiguous_strides(t.shape)
    copies, start = [], 0
    for x in t.inputs:
        copies.append((low.slot[id(x)], low.copy_fn(x.shape, _contiguous_strides(x.shape),
                                                    0, out_strides, start * out_strides[axis])))
        start += x.shape[axis]
    k = low.slot[id(t)]

    def run(env):
        out = low.empty(t.shape, t.dtype)
        for i, copy in copies:
            copy(_flat(out), _flat(env[i]))
        env[k] = out
    return run, low.line(t, "strided_copy"), "kernel"


def _index_map(op: Index, shape) -> np.ndarray:
    """Flat source positions of ``x[index]`` for x of ``shape`` (compile time)."""
    return np.arange(_size(shape), dtype=np.int64).reshape(shape)[op.numpy_index()]


def rule_index(low: Lowering, t):
    from numba import cuda

    from . import cuda_kernels as ck
    (x,) = t.inputs
    where = cuda.to_device(np.ascontiguousarray(_index_map(t.op, x.shape)).reshape(-1))
    n = t.size
    i, k = low.slot[id(x)], low.slot[id(t)]
    low.kernels.setdefault("gather", "")

    def run(env):
        out = low.empty(t.shape, t.dtype)
        if n:
            ck.gather[ck.blocks_for(n), ck.THREADS](_flat(out), _flat(env[i]), where, n)
        env[k] = out
    return run, low.line(t, "gather"), "kernel"


def rule_index_add(low: Lowering, t):
    from numba import cuda

    from . import cuda_kernels as ck
    (g,) = t.inputs
    if t.dtype not in ("float32", "float64", "int32", "int64"):
        _unsupported("index_add of this dtype")
    where = np.ascontiguousarray(np.broadcast_to(_index_map(Index(t.op.index), t.op.target),
                                                 g.shape)).reshape(-1)
    where = cuda.to_device(where)
    n, size = g.size, t.size
    i, k = low.slot[id(g)], low.slot[id(t)]
    low.kernels.setdefault("scatter_add", "")

    def run(env):
        out = low.empty(t.shape, t.dtype)
        if size:
            ck.fill[ck.blocks_for(size), ck.THREADS](_flat(out), 0, size)
        if n:
            ck.scatter_add[ck.blocks_for(n), ck.THREADS](_flat(out), _flat(env[i]), where, n)
        env[k] = out
    return run, low.line(t, "scatter_add"), "kernel"


def _bad_flag():
    from numba import cuda
    return cuda.to_device(np.zeros(1, np.int32))


def rule_take(low: Lowering, t):
    from . import cuda_kernels as ck
    x, idx = t.inputs
    rows, inner, n = x.shape[0], _size(x.shape[1:]), t.size
    ix, ii, k = low.slot[id(x)], low.slot[id(idx)], low.slot[id(t)]
    low.kernels.setdefault("take_rows", "")

    def run(env):
        out = low.empty(t.shape, t.dtype)
        if n:
            bad = _bad_flag()
            ck.take_rows[ck.blocks_for(n), ck.THREADS](_flat(out), _flat(env[ix]),
                                                       _flat(env[ii]), inner, rows, n, bad)
            _check_bad(bad, t, rows, low.printed)
        env[k] = out
    return run, low.line(t, "take_rows"), "kernel"


def rule_take_add(low: Lowering, t):
    from . import cuda_kernels as ck
    g, idx = t.inputs
    if t.dtype not in ("float32", "float64", "int32", "int64"):
        _unsupported("take_add of this dtype")
    rows, inner, n, size = t.shape[0], _size(t.shape[1:]), g.size, t.size
    ig, ii, k = low.slot[id(g)], low.slot[id(idx)], low.slot[id(t)]
    low.kernels.setdefault("take_add_rows", "")

    def run(env):
        out = low.empty(t.shape, t.dtype)
        if size:
            ck.fill[ck.blocks_for(size), ck.THREADS](_flat(out), 0, size)
        if n:
            bad = _bad_flag()
            ck.take_add_rows[ck.blocks_for(n), ck.THREADS](_flat(out), _flat(env[ig]),
                                                           _flat(env[ii]), inner, rows, n,
                                                           bad)
            _check_bad(bad, t, rows, low.printed)
        env[k] = out
    return run, low.line(t, "take_add_rows"), "kernel"


def _check_bad(bad, t, rows, printed):
    if bad.copy_to_host()[0]:
        raise failed(t, printed, f"an index is out of range for axis 0 of size {rows}")


def rule_identity(low: Lowering, t):
    """stop_gradient: its operand itself."""
    i, k = low.slot[id(t.inputs[0])], low.slot[id(t)]

    def run(env):
        env[k] = env[i]
    return run, low.line(t, "view"), "view"


def rule_scan(low: Lowering, t):
    """A scan: the first of an instance's outputs runs the loop and gives them all.  The
    body is optimized and compiled once, as a CUDA program of its own whose kernels are
    launched every step; carries and stacked values stay on the device."""
    from numba import cuda

    from .passes.pipeline import DEFAULT_PIPELINE
    from .passes.pipeline import run as run_passes
    from .scan import instance_key, run_loop, siblings
    members = siblings(low.graph.nodes)[instance_key(t)]
    if t is not members[0]:
        return (lambda env: None), low.line(t, "scan") + " [computed with "\
            f"{low.vname(members[0])}]", "loop"
    loop, outs = t.op.loop, [m.op.out for m in members]
    body = compile_graph(run_passes(loop.step_graph(outs), DEFAULT_PIPELINE)[0])
    ins = [low.slot[id(i)] for i in t.inputs]
    slots = [low.slot[id(m)] for m in members]

    def run(env):
        results = run_loop(loop, outs, [env[i] for i in ins], body.run_device,
                           empty=lambda shape, dtype: cuda.device_array(shape, dtype))
        for k, r in zip(slots, results):
            env[k] = r
    return run, low.line(t, "scan") + f" [{loop.length} steps]", "loop"


RULES = (
    (Scan, rule_scan), (StopGradient, rule_identity),
    (Elementwise, rule_elementwise), (Fused, rule_fused), (Reduce, rule_reduce),
    (LogSumExp, rule_logsumexp), (Softmax, rule_softmax), (LogSoftmax, rule_softmax),
    (MatMul, rule_matmul), (Reshape, rule_reshape), (Transpose, rule_transpose),
    (BroadcastTo, rule_broadcast), (Cast, rule_cast), (Concat, rule_concat),
    (Index, rule_index), (IndexAdd, rule_index_add), (Take, rule_take),
    (TakeAdd, rule_take_add), (Conv2d, rule_conv), (Conv2dInputGrad, rule_conv),
    (Conv2dWeightGrad, rule_conv), (MaxPool2d, rule_max_pool),
)

