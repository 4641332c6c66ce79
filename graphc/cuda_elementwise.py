"""The CUDA backend's generated kernels: one per elementwise node, from the op's stable
SymPy form, and one per fused group instance storing every output
(:func:`graphc.cuda_kernels.fused_source`).  Operands are read over the flat output by the
kinds of :func:`graphc.lowering.flat_kinds`.
"""

from __future__ import annotations

import numpy as np
import sympy as sp
from numba import cuda

from . import cuda_kernels as ck
from .cuda_kernels import CudaPrinter
from .cuda_lowering import Lowering, contiguous_strides, flat, size_of
from .fused_ops import Fused
from .lowering import comment, flat_kinds, instance_key
from .numba_codegen import _comparison_form, formula


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
    syms, expr, work, bools, _ = _expression(t)
    printer = CudaPrinter(work, {s: s.name for s in syms}, bools)
    cast = printer._cast()
    args = ", ".join(f"a{k}, s{k}" for k in range(len(kinds)))
    lines = [f"# {comment(t.op.name)}: {formula(expr)}  [work {work}, out {out_dtype}]",
             f"def kernel(out, n, ndim, shape, {args}):",
             "    for i in range(cuda.grid(1), n, cuda.gridsize(1)):"]
    lines += ck.offset_lines([(f"o{k}", f"s{k}") for k, kind in enumerate(kinds) if kind == "B"])
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


def rule_elementwise(low: Lowering, t):
    domain = _expression(t)[-1]
    kinds = flat_kinds(domain, [x.shape for x in t.inputs])
    name, kernel = low.compile_kernel(t.op.name, elementwise_source(t, kinds, t.dtype))
    shp = domain or (1,)
    meta = [cuda.to_device(np.asarray(shp, np.int64))] + _operand_strides(t.inputs, domain)
    n, ndim = size_of(domain), len(shp)
    ins = [low.slot[id(x)] for x in t.inputs]
    k = low.slot[id(t)]

    def run(env):
        out = low.empty(domain, t.dtype)
        if n:
            args = []
            for j, i in enumerate(ins):
                args += [flat(env[i]), meta[j + 1]]
            low.launch(kernel, ck.blocks_for(n), ck.THREADS, flat(out), n, ndim, meta[0], *args)
        env[k] = out.reshape(t.shape)
    return run, low.line(t, name), "kernel"


def _operand_strides(inputs, domain) -> list:
    """Each operand's strides over the domain's axes (0 where it broadcasts), on the
    device."""
    out = []
    for x in inputs:
        xs = contiguous_strides(x.shape)
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
    key = instance_key(t)
    if key in low.fused:
        return (lambda env: None), f"# {low.vname(t)}: {t.dtype}{list(t.shape)}, " \
            f"computed with {low.vname(low.fused[key])}", "fused"
    group, work = t.op.group, t.op.group.dtype
    members = sorted((m for m in low.graph.nodes  # in the group's (canonical) output order
                      if isinstance(m.op, Fused) and instance_key(m) == key),
                     key=lambda m: m.op.output)
    domain = tuple(np.broadcast_shapes(*(i.shape for i in t.inputs)))
    stores, outputs = _fused_stores(members, domain)
    identity = tuple(range(len(domain)))
    kinds = flat_kinds(domain, [i.shape for i in t.inputs])
    source = ck.fused_source(group, [(step, order != identity) for step, order in stores],
                             [i.dtype for i in t.inputs], kinds)
    stem = "fused_" + "_".join(dict.fromkeys(s.fn.name for s in group.steps))
    name, kernel = low.compile_kernel(stem, source)
    low.calls.add(name)
    shapes = [tuple(domain[a] for a in order) for _, order in stores]
    meta = [_store_strides(order, shape) for (_, order), shape in zip(stores, shapes)]
    meta += _operand_strides(t.inputs, domain)
    plan = [(low.slot[id(m)], store, m.shape, None if not axes else low.rows_fn(
        "sum", shapes[store], tuple(range(len(domain) - len(axes), len(domain))), work,
        work)[0]) for m, store, axes in outputs]
    shape = cuda.to_device(np.asarray(domain or (1,), np.int64))
    n, ndim = size_of(domain), max(1, len(domain))
    ins = [low.slot[id(x)] for x in t.inputs]
    low.fused[key] = t

    def run(env):
        arrays = [low.empty(s, work) for s in shapes] + [env[i] for i in ins]
        if n:
            args = [a for array, st in zip(arrays, meta) for a in (flat(array), st)]
            low.launch(kernel, ck.blocks_for(n), ck.THREADS, n, ndim, shape, *args)
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
    strides = dict(zip(order, contiguous_strides(shape)))
    return cuda.to_device(np.asarray([strides[a] for a in range(len(order))] or [0], np.int64))
