"""Building a scan's body (:mod:`graphc.scan`): its placeholders, rebuilding it on other
nodes, and lifting loop-invariant projections out of it."""

from __future__ import annotations

from .dynamic import has_dynamic, replay
from .elementwise_ops import Elementwise
from .inputs import Input
from .ir import Tensor, iter_nodes
from .structured_ops import MatMul


def placeholder(label: str, shape, dtype: str) -> Tensor:
    return Tensor.make(Input(label, tuple(shape), dtype))


def substitute(outputs, mapping) -> list:
    """``outputs`` rebuilt with the nodes ``mapping`` names replaced."""
    for t in iter_nodes(outputs):
        if id(t) not in mapping:
            new_inputs = tuple(mapping.get(id(i), i) for i in t.inputs)
            if any(a is not b for a, b in zip(new_inputs, t.inputs)):
                new = replay(t, new_inputs) if t.op.dynamic and not has_dynamic(
                    new_inputs) else t.replace(inputs=new_inputs)
                if new.loc is None or new.loc != t.loc:  # the line in fn, not scan's
                    object.__setattr__(new, "loc", t.loc)
                if t.display and not new.display:
                    new.named(t.display)
                mapping[id(t)] = new
    return [mapping.get(id(o), o) for o in outputs]


def hoist(carry_ph, x_ph, xs, consts, outputs, prefix):
    """Loop-invariant projections moved before the loop: a body node that depends on the
    step's slices and consts but not on the carry, and that holds a matmul (``x @ Wx``),
    is computed for all steps at once (``xs @ Wx``, one large matmul) and read as one
    more slice.  Lifted are elementwise ops whose sliced operands have the result's rank
    and matmuls of a sliced operand with a 2-d invariant one.  Returns the new
    placeholders, their outer tensors and the rebuilt outputs."""
    outer = {id(p): x for p, x in zip(x_ph, xs)}
    outer.update((id(p), t) for p, t in consts)
    lifted: dict[int, Tensor] = {id(p): x for p, x in zip(x_ph, xs)}
    varying = {id(p) for p in carry_ph}
    has_matmul: dict[int, bool] = {}
    nodes = iter_nodes(outputs)
    for t in nodes:
        if id(t) in lifted or id(t) in outer or not t.inputs:
            continue
        if any(id(i) in varying for i in t.inputs):
            varying.add(id(t))
            continue
        new = _lift(t, lifted, outer)
        if new is None:
            varying.add(id(t))
        elif new is not t:
            lifted[id(t)] = new
            has_matmul[id(t)] = isinstance(t.op, MatMul) or any(
                has_matmul.get(id(i), False) for i in t.inputs)
    users = {id(i) for t in nodes if id(t) in varying for i in t.inputs}
    users.update(id(o) for o in outputs)
    hoisted = [t for t in nodes if has_matmul.get(id(t)) and id(t) in users]
    new_ph = [placeholder(f"{prefix}.x{len(x_ph) + k}", t.shape, t.dtype)
              for k, t in enumerate(hoisted)]
    body = substitute(outputs, {id(t): p for t, p in zip(hoisted, new_ph)})
    return new_ph, [lifted[id(t)] for t in hoisted], body


def _lift(t: Tensor, lifted, outer) -> Tensor | None:
    """``t`` for all steps at once (a leading axis of steps), ``t`` itself when it varies
    with nothing, or None when it cannot be lifted."""
    if not any(id(i) in lifted for i in t.inputs):
        return t if all(id(i) in outer or not i.leaves for i in t.inputs) else None
    args = []
    for k, i in enumerate(t.inputs):
        if id(i) in lifted:
            if isinstance(t.op, MatMul) and (i.ndim < 2 or t.inputs[1 - k].ndim != 2):
                return None
            if isinstance(t.op, Elementwise) and i.ndim != t.ndim:
                return None
            args.append(lifted[id(i)])
        elif id(i) in outer or not i.leaves:
            args.append(outer.get(id(i), i))
        else:
            return None
    if not isinstance(t.op, (MatMul, Elementwise)):
        return None
    new = Tensor.make(t.op, args)
    return new if new.shape[1:] == t.shape and new.dtype == t.dtype else None
