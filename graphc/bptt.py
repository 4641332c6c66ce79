"""Backpropagation through time: the derivative of a scan is a scan running the other way.

:func:`scan_vjp` builds it for one scan instance (:mod:`graphc.scan` describes the IR).
Its body is :func:`graphc.passes.autodiff.backward` of the forward body: its carry is
the carry's gradient, its ``xs`` the forward values it reads (residuals, stacked by the
forward), the forward's ``xs`` and the cotangents of the stacked outputs, and its ``y``s
the gradients of ``xs``.  A weight's gradient is a sum over the steps; its terms that are
products of per-step values (``h_{t-1}ᵀ @ g_t``) are not summed in the loop but computed
after it as one matmul over all T steps (``hsᵀ @ gs``, the per-step values stacked), and
its sums of a value the loop stacks anyway (the bias's ``sum(g_t, 0)``) as one sum
(:class:`_Stacks`); what is left, if anything, is a running sum carried by the loop.
``truncate=k`` is a bool per step, ``where(keep_t, g, 0)``, at the chunk boundaries, on
the carry's whole gradient: with the cotangent of the carry as the step got it (a residual
the backward reads, so a second derivative's), as ``gc.stop_gradient`` on the carry.

The remat pass trades that speed for memory: :mod:`graphc.loop_remat` rebuilds these loops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import dtypes
from . import functions as F
from .elementwise_ops import Elementwise
from .inputs import constant
from .ir import Tensor, iter_nodes
from .scan import Loop, Scan
from .scan_body import placeholder, substitute
from .shape_ops import Transpose
from .structured_ops import MatMul, Reduce


def scan_vjp(nodes, grads, wanted, backward) -> list:
    """The gradients of the inputs of one scan instance (``nodes``: its outputs in the
    graph, ``grads``: their cotangents or None) as the outputs of a backward scan.
    ``wanted[k]``: whether input ``k`` needs a gradient.  None where there is none.
    ``backward``: :func:`graphc.passes.autodiff.backward`, which calls this for a scan and
    builds the backward body with it."""
    loop = nodes[0].op.loop
    inputs = nodes[0].inputs
    ct = {t.op.out: g for t, g in zip(nodes, grads) if g is not None}
    tag = f"scan.{loop.tag}"
    step = _step_vjp(loop, ct, wanted, tag, backward)
    bwd_xs, outer_xs, fwd_w = _backward_xs(loop, step, inputs, ct, tag)
    stacks = _Stacks(step.gc_ph, bwd_xs, outer_xs, step.gx, loop.length)
    after = [stacks.split(g) for g in step.wgrad]  # (sum left in the loop, products after it)
    kept_w = [k for k, (rest, _) in enumerate(after) if rest is not None]
    new_acc = [step.acc_ph[k] + after[k][0] for k in kept_w]
    n_cx = len(loop.carry) + len(loop.xs)  # where the consts start
    consts, outer_consts, body = _transposed_consts(
        [loop.consts[j] for j in fwd_w], [inputs[n_cx + j] for j in fwd_w],
        step.new_gc + new_acc + step.gx + stacks.ys, tag)
    n_carry = len(step.new_gc + new_acc)
    bwd = Loop(tuple(step.gc_ph + [step.acc_ph[k] for k in kept_w]), tuple(bwd_xs),
               tuple(consts), tuple(body[:n_carry]), tuple(body[n_carry:]), loop.length,
               not loop.reverse)
    init = [ct.get(("carry", i), _zeros(loop.carry[i])) for i in step.fc] + \
        [_zeros(loop.consts[step.fw[k]]) for k in kept_w]
    bwd_inputs = init + outer_xs + outer_consts
    return _input_grads(loop, step, bwd, bwd_inputs, after, kept_w, wanted)


def _transposed_consts(consts, outer, outputs, tag):
    """A const the backward body reads transposed (``g @ Whᵀ``, the carry's gradient
    through ``h @ Wh``) becomes a const of its own, the outer tensor transposed, which a
    backend makes contiguous once per loop, not a view read through BLAS's transpose flag
    each step (32x512 @ 512x128, float32: 39 us through the flag, 26 from a contiguous
    copy, OpenBLAS on an AVX-512 EPYC).  Returns the consts, their outer tensors and the
    outputs reading them."""
    index = {id(p): k for k, p in enumerate(consts)}
    mapping, consts, outer = {}, list(consts), list(outer)
    for t in iter_nodes(outputs):
        if isinstance(t.op, Transpose) and id(t.inputs[0]) in index and t.ndim == 2:
            k = index[id(t.inputs[0])]
            mapping[id(t)] = placeholder(f"{tag}.t{k}", t.shape, t.dtype)
            consts.append(mapping[id(t)])
            outer.append(Tensor.make(t.op, (outer[k],)))
    if not mapping:
        return consts, outer, list(outputs)
    return consts, outer, substitute(list(outputs), mapping)


@dataclass
class _StepVjp:
    """The backward body of one step.  ``fc``, ``fx``, ``fw``: the carries, xs and consts
    that get a gradient; the placeholders it reads: the carry's gradient (``gc_ph``), the
    cotangents of the stacked outputs ``gstack`` (``gy_ph``) and of the carries as each
    step got them (``gcin``, ``gcin_ph``), the weight-gradient sums (``acc_ph``) and the
    truncation mask (``keep_ph``, or None); what it computes: the carry's gradient
    (``new_gc``), the consts' (``wgrad``) and the xs' (``gx``)."""
    fc: list
    fx: list
    fw: list
    gc_ph: list
    gstack: list
    gy_ph: list
    gcin: list
    gcin_ph: list
    acc_ph: list
    keep_ph: Tensor | None
    new_gc: list
    wgrad: list
    gx: list


def _step_vjp(loop: Loop, ct: dict, wanted, tag: str, backward) -> _StepVjp:
    """``backward`` (:func:`graphc.passes.autodiff.backward`) of the forward body, on
    placeholders for the cotangents (``ct``: the cotangents of the scan's outputs, by output
    key)."""
    n_c, n_x = len(loop.carry), len(loop.xs)

    def float_(p):
        return dtypes.is_float(p.dtype)

    fc = [i for i, p in enumerate(loop.carry) if float_(p)]
    fx = [j for j, p in enumerate(loop.xs) if float_(p) and wanted[n_c + j]]
    fw = [j for j, p in enumerate(loop.consts) if float_(p) and wanted[n_c + n_x + j]]
    gc_ph = [placeholder(f"{tag}.gcarry{i}", loop.carry[i].shape, loop.carry[i].dtype)
             for i in fc]
    gstack = sorted(k for k in ct if k[0] in ("y", "node") and float_(loop.stacked(*k)))
    gy_ph = [placeholder(f"{tag}.g{kind}{i}", loop.stacked(kind, i).shape,
                         loop.stacked(kind, i).dtype) for kind, i in gstack]
    gcin = [i for i in fc if ("cin", i) in ct]
    gcin_ph = [placeholder(f"{tag}.gcin{i}", loop.carry[i].shape, loop.carry[i].dtype)
               for i in gcin]
    acc_ph = [placeholder(f"{tag}.acc{j}", loop.consts[j].shape, loop.consts[j].dtype)
              for j in fw]
    wrt = [loop.carry[i] for i in fc] + [loop.xs[j] for j in fx] + [loop.consts[j] for j in fw]
    result = backward([loop.new_carry[i] for i in fc] + [loop.stacked(*k) for k in gstack],
                      gc_ph + gy_ph, wrt)
    new_gc = [result.grad_of(loop.carry[i]) for i in fc]
    cin_g = dict(zip(gcin, gcin_ph))
    new_gc = [g + cin_g[i] if i in cin_g else g for i, g in zip(fc, new_gc)]
    keep_ph = None
    if loop.truncate is not None and fc:
        keep_ph = placeholder(f"{tag}.keep", (), "bool")
        new_gc = [F.where(keep_ph, g, 0.0) for g in new_gc]
    wgrad = [result.grad_of(loop.consts[j]) for j in fw]
    gx = [result.grad_of(loop.xs[j]) for j in fx]
    return _StepVjp(fc, fx, fw, gc_ph, gstack, gy_ph, gcin, gcin_ph, acc_ph, keep_ph,
                    new_gc, wgrad, gx)


def _backward_xs(loop: Loop, step: _StepVjp, inputs, ct: dict, tag: str):
    """What the backward loop reads per step: its ``xs`` (the forward's carries as each step
    got them, its xs, the residuals, the cotangents of ys, ...) and the outer tensors fed to
    them, and the indices of the forward consts it reads.  Rewrites ``step``'s gradients to
    read the residuals."""
    n_c = len(loop.carry)
    # the forward values the backward reads are stacked by the forward (the remat pass
    # may have the backward recompute them instead: recomputed below)
    outs, res_ph, kept = _residuals(loop, step.new_gc + step.wgrad + step.gx, tag)
    n_gc, n_w = len(step.fc), len(step.fw)
    step.new_gc, step.wgrad, step.gx = (outs[:n_gc], outs[n_gc:n_gc + n_w],
                                        outs[n_gc + n_w:])
    ys = {id(y): j for j, y in enumerate(loop.ys)}  # a y is stacked already
    res_outer = [_node(loop, ("y", ys[id(n)]) if id(n) in ys else ("node", k), inputs)
                 for k, n in ((k, loop.graph.nodes[k]) for k in kept)]
    used = {id(t) for t in iter_nodes(outs)}
    fwd_c = [i for i, p in enumerate(loop.carry) if id(p) in used]
    fwd_x = [j for j, p in enumerate(loop.xs) if id(p) in used]
    fwd_w = [j for j, p in enumerate(loop.consts) if id(p) in used]
    bwd_xs = [loop.carry[i] for i in fwd_c] + [loop.xs[j] for j in fwd_x] + res_ph + \
        step.gy_ph + step.gcin_ph
    outer_xs = [_node(loop, ("cin", i), inputs) for i in fwd_c] + \
        [inputs[n_c + j] for j in fwd_x] + res_outer + [ct[k] for k in step.gstack] + \
        [ct[("cin", i)] for i in step.gcin]
    if step.keep_ph is not None:
        bwd_xs.append(step.keep_ph)
        outer_xs.append(constant(_keep_mask(loop)))
    return bwd_xs, outer_xs, fwd_w


def _input_grads(loop: Loop, step: _StepVjp, bwd: Loop, bwd_inputs, after, kept_w,
                 wanted) -> list:
    """The gradient of each input of the forward scan (None where there is none): outputs
    of the backward scan ``bwd``, plus, for a weight, its products computed after it."""
    n_c, n_x = len(loop.carry), len(loop.xs)
    out: list = [None] * len(loop.params)
    for k, i in enumerate(step.fc):
        if wanted[i]:
            out[i] = _node(bwd, ("carry", k), bwd_inputs)
    for k, j in enumerate(step.fx):
        out[n_c + j] = _node(bwd, ("y", k), bwd_inputs)
    for k, (j, (rest, products)) in enumerate(zip(step.fw, after)):
        total = None if rest is None else _node(bwd, ("carry", len(step.fc) + kept_w.index(k)),
                                                bwd_inputs)
        for p in products:
            p = p(lambda key: _node(bwd, key, bwd_inputs))
            total = p if total is None else total + p
        out[n_c + n_x + j] = total
    return out


class _Stacks:
    """Values of the backward body over all steps, as outer tensors of shape (T, ...): a
    stacked ``xs`` as it is fed, a carry of the loop as its ``("cin", k)`` output, another
    per-step value as one more ``y``.  :meth:`split` takes a weight gradient's products of
    per-step values out of the loop: ``sum_t a_t @ b_t`` is one matmul over all T steps
    after it, and ``sum_t sum(v_t)`` one sum over a ``v`` the loop stacks anyway."""

    def __init__(self, carry, xs, outer_xs, ys, length):
        self.carry = {id(p): k for k, p in enumerate(carry)}
        self.xs = {id(p): o for p, o in zip(xs, outer_xs)}
        self.step = set(self.carry) | set(self.xs)
        self.n_old, self.all_ys, self.length = len(ys), list(ys), length

    @property
    def ys(self) -> list:
        """The ys added for the products."""
        return self.all_ys[self.n_old:]

    def per_step(self, t: Tensor) -> bool:
        return any(id(n) in self.step for n in iter_nodes([t]))

    def stacked(self, t: Tensor, add: bool = True):
        """``t`` over all steps: a function ``node -> tensor`` (``node(out)``: the loop's
        output ``out``), or None when ``t`` is not per-step (or, ``add`` false, when the
        loop does not stack it already)."""
        if id(t) in self.xs:
            outer = self.xs[id(t)]
            return lambda node: outer
        if id(t) in self.carry:
            key = ("cin", self.carry[id(t)])
        else:
            at = [k for k, y in enumerate(self.all_ys) if y is t]
            if not at and (not add or not self.per_step(t)):
                return None
            if not at:
                self.all_ys.append(t)
            key = ("y", at[0] if at else len(self.all_ys) - 1)
        return lambda node: node(key)

    def split(self, g: Tensor):
        """``g`` (a weight's gradient in one step) as (the sum of its terms left in the
        loop or None, functions ``node -> tensor`` giving the others over all steps)."""
        rest, after = None, []
        for term in _terms(g):
            product = self._product(term)
            if product is not None:
                after.append(product)
            else:
                rest = term if rest is None else rest + term
        return rest, after

    def _product(self, t: Tensor):
        T = self.length
        if isinstance(t.op, Reduce) and t.op.kind == "sum":
            v = self.stacked(t.inputs[0], add=False)
            if v is None:
                return None
            axes = (0,) + tuple(a + 1 for a in t.op.axes)
            return lambda node: F.reshape(F.sum(v(node), axis=axes), t.shape)
        if not (isinstance(t.op, MatMul) and t.ndim == 2 and
                all(i.ndim == 2 for i in t.inputs)):
            return None
        a, b = t.inputs
        (d, n), h = a.shape, b.shape[1]
        x = a.inputs[0] if isinstance(a.op, Transpose) else None  # a = xᵀ: stack x
        if not all(self.per_step(v) for v in (a, b)):
            return None
        xs = self.stacked(x) if x is not None else None
        a_s = self.stacked(a) if xs is None else None
        b_s = self.stacked(b)

        def a_all(node):  # (d, T·n): the a_t side by side
            if xs is not None:
                return F.transpose(F.reshape(xs(node), (T * n, d)))
            return F.reshape(F.transpose(a_s(node), (1, 0, 2)), (d, T * n))
        return lambda node: F.matmul(a_all(node), F.reshape(b_s(node), (T * n, h)))


def _terms(g: Tensor) -> list:
    """The summands of ``g``: the operands of its chain of same-shape adds."""
    if isinstance(g.op, Elementwise) and g.op.fn.name == "add" and \
            all((i.shape, i.dtype) == (g.shape, g.dtype) for i in g.inputs):
        return _terms(g.inputs[0]) + _terms(g.inputs[1])
    return [g]


def _residuals(loop: Loop, outs, tag):
    """``outs`` (the backward body) rebuilt to read the forward body's values as slices
    (placeholders ``<tag>.res<k>``) instead of recomputing them; returns the outputs, the
    placeholders and the body-node indices the forward must stack."""
    index = {id(t): k for k, t in enumerate(loop.graph.nodes)}
    params = {id(p) for p in loop.params}

    def residual(t):
        return id(t) in index and id(t) not in params and bool(t.leaves)

    kept: dict[int, Tensor] = {}
    for t in iter_nodes(outs):
        if id(t) not in index:
            kept.update((id(i), i) for i in t.inputs if residual(i))
    kept.update((id(o), o) for o in outs if residual(o))
    ph = [placeholder(f"{tag}.res{k}", t.shape, t.dtype) for k, t in enumerate(kept.values())]
    new = substitute(outs, {i: p for i, p in zip(kept, ph)})
    return new, ph, [index[i] for i in kept]


def _node(loop: Loop, out, inputs) -> Tensor:
    return Tensor.make(Scan(loop, out), inputs)


def _zeros(p: Tensor) -> Tensor:
    return F.broadcast_to(constant(0, dtype=p.dtype), p.shape)


def _keep_mask(loop: Loop) -> np.ndarray:
    """keep[t]: whether the carry's gradient flows into the step that reads ``xs[t]``:
    not when that step is the s-th run (from 0), s > 0 and s % truncate == 0."""
    keep = np.ones(loop.length, np.bool_)
    for s, t in enumerate(loop.time_order()):
        keep[t] = not (s > 0 and s % loop.truncate == 0)
    return keep
