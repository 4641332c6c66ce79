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

from . import blas
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
from .numba_runtime import NumbaProgram
from .scan import Scan, StopGradient, run_loop
from .scan import instance_key as scan_key
from .scan import siblings as scan_siblings
from .shape_ops import BroadcastTo, Cast, Concat, Index, IndexAdd, Reshape, Take, TakeAdd, Transpose
from .structured_ops import LogSoftmax, LogSumExp, MatMul, Reduce, Softmax


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
        for outcome, n in body.counts.items():  # the body's kernel loads are the graph's
            L.counts[outcome] += n
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


def compile_graph(graph: Graph) -> NumbaProgram:
    """Lower ``graph`` for the Numba backend."""
    lowering = Lowering(graph, RULES, rule_numpy)
    program = lowering.run()
    if "blas_ready" in lowering.namespace:  # it calls BLAS: which one (graphc/blas.py)
        program.stats["blas"] = blas.info()
    return program
