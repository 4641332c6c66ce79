"""The remat pass's rewrites of loops (:mod:`graphc.passes.remat`): nothing stacked over the
steps but the carries.

The backward loop that :mod:`graphc.bptt` builds reads stacks that the forward keeps:
the residuals (the forward body's values of every step), the projection that
:func:`graphc.scan._hoist` lifted out of the body (``xs @ Wx``, all steps), and it stacks
per-step values for the sums over the steps computed after it (a weight's gradient,
``hsᵀ @ gs``).  Here :func:`recomputed` has the backward recompute the residuals from the
carries as each step got them, :func:`unhoisted` computes a hoisted projection per step
(``x_t @ Wx``) in the loops that read it, and :func:`step_sum` / :func:`with_sums` turn a
sum over the steps after a loop into a running sum carried by it.
"""

from __future__ import annotations

from . import functions as F
from .bptt import _node, _zeros
from .elementwise_ops import Elementwise
from .ir import Tensor, iter_nodes
from .scan import Loop, Scan, instance_key
from .scan_body import placeholder, substitute
from .shape_ops import Transpose
from .structured_ops import MatMul, Reduce


def recomputed(t: Tensor, memo: dict) -> Tensor:
    """Scan node ``t`` rebuilt to recompute each step the forward values its body reads as
    stacks of another scan (the residuals): their placeholders become the forward body's
    nodes, computed from the forward's carry as each step got it (its ``("cin", i)``
    stack), xs and consts.  ``t`` itself when it reads none, or where that cannot be done
    (a forward placeholder fed otherwise).  ``memo``: per instance, the rebuilt loop, its
    inputs and the stacks no longer read (one rebuild for all of an instance's outputs)."""
    key = instance_key(t)
    if key not in memo:
        memo[key] = _recompute_loop(t.op.loop, t.inputs)
    found = memo[key]
    if found is None or t.op.out[0] == "node":  # a node index of the old body: keep it
        return t
    return _node(found[0], t.op.out, found[1])


def _recompute_loop(loop: Loop, inputs):
    n_c, n_x = len(loop.carry), len(loop.xs)
    fed = {id(p): o for p, o in zip(loop.params, inputs)}
    swap: dict[int, Tensor] = {}
    read, more_xs, more_consts = [], [], []
    for p, o in zip(loop.xs, inputs[n_c:n_c + n_x]):
        if not (isinstance(o.op, Scan) and o.op.out[0] in ("y", "node")):
            continue
        f, fi = o.op.loop, o.inputs
        value = f.stacked(*o.op.out)
        needs = {id(n) for n in iter_nodes([value])}
        fc, fx = len(f.carry), len(f.xs)
        feeds = [(q, _node(f, ("cin", i), fi), more_xs) for i, q in enumerate(f.carry)] + \
            [(q, fi[fc + j], more_xs) for j, q in enumerate(f.xs)] + \
            [(q, fi[fc + fx + j], more_consts) for j, q in enumerate(f.consts)]
        feeds = [e for e in feeds if id(e[0]) in needs]
        if any(fed.get(id(q), outer) is not outer for q, outer, _ in feeds):
            continue
        for q, outer, into in feeds:
            if id(q) not in fed:
                fed[id(q)] = outer
                into.append((q, outer))
        swap[id(p)] = value
        read.append(o)
    if not swap:
        return None
    xs = [(p, o) for p, o in zip(loop.xs, inputs[n_c:n_c + n_x]) if id(p) not in swap]
    xs += more_xs
    consts = list(zip(loop.consts, inputs[n_c + n_x:])) + more_consts
    body = substitute(list(loop.new_carry + loop.ys), _resolved(swap))
    new = Loop(loop.carry, tuple(p for p, _ in xs), tuple(p for p, _ in consts),
               tuple(body[:n_c]), tuple(body[n_c:]), loop.length, loop.reverse, loop.truncate)
    return new, list(inputs[:n_c]) + [o for _, o in xs] + [o for _, o in consts], read


def _resolved(swap: dict) -> dict:
    """``swap`` with the placeholders it replaces replaced in its values too (a second
    order backward reads a residual of the first one, which reads one of the forward)."""
    for _ in range(len(swap)):
        values = substitute(list(swap.values()), dict(swap))
        if all(a is b for a, b in zip(values, swap.values())):
            break
        swap = dict(zip(swap, values))
    return swap


def unhoisted(t: Tensor, memo: dict) -> Tensor:
    """Scan node ``t`` rebuilt to compute its hoisted projections each step: an ``xs``
    fed by ``a @ W`` (``a`` stacked over the steps, ``W`` 2-d: what
    :func:`graphc.scan._hoist` makes) becomes ``a_t @ W`` in the body, which reads ``a``
    and ``W`` instead, so that the projection of all steps is never stored.  ``t`` itself
    when there is none.  ``memo``: per instance, the rebuilt loop and its inputs."""
    key = instance_key(t)
    if key not in memo:
        memo[key] = _unhoist_loop(t.op.loop, t.inputs)
    found = memo[key]
    if found is None:
        return t
    out = t.op.out
    if out[0] == "node":  # the same body value, at its index in the new body
        at = found[2].get(out[1])
        if at is None:
            return t
        out = ("node", at)
    return _node(found[0], out, found[1])


def _unhoist_loop(loop: Loop, inputs):
    n_c, n_x = len(loop.carry), len(loop.xs)
    xs = list(zip(loop.xs, inputs[n_c:n_c + n_x]))
    consts = list(zip(loop.consts, inputs[n_c + n_x:]))
    swap: dict[int, Tensor] = {}
    for p, o in list(xs):
        if _lifted(o, loop.length):
            swap[id(p)] = _unlift(o, xs, consts, p.op.label)
    if not swap:
        return None
    xs = [(p, o) for p, o in xs if id(p) not in swap]
    mapping = dict(swap)
    body = substitute(list(loop.new_carry + loop.ys), mapping)
    new = Loop(loop.carry, tuple(p for p, _ in xs), tuple(p for p, _ in consts),
               tuple(body[:n_c]), tuple(body[n_c:]), loop.length, loop.reverse, loop.truncate)
    return new, list(inputs[:n_c]) + [o for _, o in xs] + [o for _, o in consts], \
        renumbered(loop, new, mapping)


def renumbered(old: Loop, new: Loop, mapping: dict) -> dict:
    """``{k: j}``: node ``k`` of ``old``'s body is node ``j`` of ``new``'s (``mapping``:
    id of an old node -> the node that replaced it)."""
    at = {id(n): j for j, n in enumerate(new.graph.nodes)}
    moved = {k: at.get(id(mapping.get(id(n), n))) for k, n in enumerate(old.graph.nodes)}
    return {k: j for k, j in moved.items() if j is not None}


def _projection(o: Tensor, length: int):
    """Which operand of ``o`` is stacked over the steps when ``o`` is ``a @ W`` or
    ``W @ a`` (``a`` of shape (T, ...), ``W`` 2-d; so ``o[t] = a[t] @ W``), else None."""
    if not isinstance(o.op, MatMul):
        return None
    for k in (0, 1):
        s, w = o.inputs[k], o.inputs[1 - k]
        if s.ndim == o.ndim >= 3 and s.shape[0] == length and w.ndim == 2:
            return k
    return None


def _lifted(o: Tensor, length: int) -> bool:
    """Whether ``o`` is what :func:`graphc.scan._hoist` lifts: projections
    (:func:`_projection`) and elementwise ops of them, of other stacks of the same rank
    and of invariant tensors of a lower rank, with a projection among them."""
    if _projection(o, length) is not None:
        return True
    if not (isinstance(o.op, Elementwise) and o.ndim >= 2 and o.shape[0] == length):
        return False
    ranked = [i for i in o.inputs if i.ndim == o.ndim]
    return all(i.shape[0] == length for i in ranked) and any(_lifted(i, length)
                                                             for i in ranked)


def _unlift(o: Tensor, xs: list, consts: list, label: str) -> Tensor:
    """One step of ``o`` (:func:`_lifted`, or a stack fed as one more ``xs``) as a body
    value, reading placeholders of ``xs`` and ``consts`` (added where needed)."""
    k = _projection(o, o.shape[0])
    if k is not None:
        s, w = o.inputs[k], o.inputs[1 - k]
        s_ph = _fed(xs, s, f"{label}.x{len(xs)}", s.shape[1:])
        w_ph = _fed(consts, w, f"{label}.w{len(consts)}", w.shape)
        return F.matmul(s_ph, w_ph) if k == 0 else F.matmul(w_ph, s_ph)
    if not isinstance(o.op, Elementwise) or not _lifted(o, o.shape[0]):
        return _fed(xs, o, f"{label}.x{len(xs)}", o.shape[1:])
    args = [_unlift(i, xs, consts, label) if i.ndim == o.ndim else
            i if not i.leaves else _fed(consts, i, f"{label}.w{len(consts)}", i.shape)
            for i in o.inputs]
    return Tensor.make(o.op, args)


def _fed(pairs: list, outer: Tensor, label: str, shape) -> Tensor:
    """The placeholder of ``pairs`` (placeholder, outer tensor) fed ``outer``; a new one
    (``label``), appended, when there is none."""
    for p, o in pairs:
        if o is outer:
            return p
    p = placeholder(label, shape, outer.dtype)
    pairs.append((p, outer))
    return p


def step_sum(t: Tensor):
    """``t`` as a sum over the steps of one loop instance of a value of each step (what
    :class:`_Stacks` makes of a weight's gradient, and the gradient of a hoisted
    projection's weight): ``(instance key, its loop, the step's term)``, or None.  Forms:
    ``sum(v, axes)`` with axis 0 among ``axes``; ``aᵀ @ b`` with ``a`` and ``b`` the
    stacks reshaped to (T·n, ...); ``v`` of shape (T, ...) a per-step value
    (:func:`_per_step`)."""
    if isinstance(t.op, Reduce) and t.op.kind == "sum" and 0 in t.op.axes and \
            not t.op.keepdims:
        parts = [t.inputs[0]]
    elif isinstance(t.op, MatMul) and t.ndim == 2 and all(i.ndim == 2 for i in t.inputs):
        parts = [_unstacked(t.inputs[0], 1), _unstacked(t.inputs[1], 0)]
        if any(p is None for p in parts):
            return None
    else:
        return None
    for key, s in _instances(parts).items():
        loop, inputs = s.op.loop, s.inputs
        v = [_per_step(p, loop, inputs, key) for p in parts]
        if any(x is None for x in v):
            continue
        if len(v) == 2:
            term = F.matmul(F.transpose(v[0]), v[1])
        else:
            axes = tuple(a - 1 for a in t.op.axes if a)
            term = F.sum(v[0], axis=axes) if axes else v[0]
        if (term.shape, term.dtype) == (t.shape, t.dtype):
            return key, loop, term
    return None


def _unstacked(t: Tensor, side: int):
    """The stack ``s`` (T, n, d) when ``t`` is ``reshape(s, (T·n, d))`` (``side`` 0) or
    its transpose (``side`` 1), else None."""
    if side == 1:
        if not (isinstance(t.op, Transpose) and t.op.perm == (1, 0)):
            return None
        t = t.inputs[0]
    s = t.inputs[0] if t.op.name == "reshape" else None
    if s is None or s.ndim != 3 or t.shape != (s.shape[0] * s.shape[1], s.shape[2]):
        return None
    return s


def _instances(parts) -> dict:
    """The loop instances whose stacked outputs ``parts`` read through per-step ops."""
    found, todo = {}, list(parts)
    while todo:
        e = todo.pop()
        if isinstance(e.op, Scan):
            if e.op.out[0] != "carry":
                found.setdefault(instance_key(e), e)
        elif isinstance(e.op, (Transpose, MatMul)):
            todo.extend(e.inputs)
    return found


def _per_step(e: Tensor, loop: Loop, inputs, key):
    """The body value whose stack over the steps is ``e`` (an output of the instance
    ``key`` other than a carry, one of its ``xs``, transposes keeping axis 0 and batched
    matmuls of them), or None."""
    if isinstance(e.op, Scan) and instance_key(e) == key:
        return None if e.op.out[0] == "carry" else loop.stacked(*e.op.out)
    n_c = len(loop.carry)
    for p, x in zip(loop.xs, inputs[n_c:n_c + len(loop.xs)]):
        if x is e:
            return p
    if isinstance(e.op, Transpose):
        v, perm = _per_step(e.inputs[0], loop, inputs, key), e.op.perm
        if v is None:  # a transpose of what an xs transposes: e = x.transpose(r)
            v, perm = _through_xs(e.inputs[0], perm, loop, inputs)
        if v is None or perm[0] != 0:
            return None
        return F.transpose(v, tuple(a - 1 for a in perm[1:]))
    if isinstance(e.op, MatMul) and all(i.ndim == e.ndim >= 3 for i in e.inputs):
        v = [_per_step(i, loop, inputs, key) for i in e.inputs]
        return None if any(x is None for x in v) else F.matmul(*v)
    return None


def _through_xs(u: Tensor, perm, loop: Loop, inputs):
    """(the placeholder of an ``xs`` fed ``x = transpose(u, q)``, the axes ``r`` with
    ``transpose(u, perm) = transpose(x, r)``), or (None, perm) when there is none."""
    n_c = len(loop.carry)
    for p, x in zip(loop.xs, inputs[n_c:n_c + len(loop.xs)]):
        if isinstance(x.op, Transpose) and x.inputs[0] is u:
            inverse = [x.op.perm.index(a) for a in range(len(perm))]
            return p, tuple(inverse[a] for a in perm)
    return None, perm


def with_sums(loop: Loop, inputs, terms) -> tuple:
    """``loop`` (fed ``inputs``) with one more carry per term of ``terms``, a running sum
    from zero; returns the new loop, its inputs, the index of the first sum's carry and
    where its body's nodes moved (:func:`renumbered`)."""
    n_c = len(loop.carry)
    acc = tuple(placeholder(f"scan.{loop.tag}.sum{k}", v.shape, v.dtype)
                for k, v in enumerate(terms))
    new = Loop(loop.carry + acc, loop.xs, loop.consts,
               loop.new_carry + tuple(a + v for a, v in zip(acc, terms)), loop.ys,
               loop.length, loop.reverse, loop.truncate)
    return new, list(inputs[:n_c]) + [_zeros(a) for a in acc] + list(inputs[n_c:]), n_c, \
        renumbered(loop, new, {})
