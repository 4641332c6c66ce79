"""Loops: ``gc.scan`` (a loop as one op of the graph) and ``gc.stop_gradient``.

IR representation of a scan
---------------------------
A scan is a :class:`Loop` (frozen, hashable: the body and the static attributes) shared by
one :class:`Scan` node per output, as the outputs of a fused group share their group
(:mod:`graphc.fused_ops`): the IR keeps one value per node, and a backend runs the loop
once for all the outputs of one instance (one loop, the same inputs).  The outputs are

- ``Scan(loop, ("carry", i))``: the final carry ``i``;
- ``Scan(loop, ("y", j))``: the ``y``s of output ``j`` stacked along axis 0 (``ys[t]`` is
  the step that read ``xs[t]``, also when ``reverse=True``);
- ``Scan(loop, ("cin", i))``: carry ``i`` as it entered each step, stacked the same way,
  and ``Scan(loop, ("node", k))``: node ``k`` of ``loop.graph.nodes`` per step (autodiff
  asks for these: the residuals the backward loop reads).

Every one of these nodes has the same inputs, in this order: ``init`` (one per carry
element), ``xs`` (one per scanned sequence), ``consts`` (the outer tensors the body closes
over, weights say, made explicit so that gradients reach them).

The body is a graph of its own, never part of the outer graph: ``loop.carry``,
``loop.xs`` and ``loop.consts`` are its placeholders (:class:`~graphc.inputs.Input` nodes
labelled ``scan.carry0``, ``scan.x0``, ``scan.const0``, one per scan input in that order;
``scan1.`` inside a body, and so on), and ``loop.new_carry + loop.ys`` its outputs
(``loop.graph``).  Work in ``fn`` that depends on no placeholder (``W.T``, ``b * 2``) is
outside the body: its result is a const, computed once before the loop.

The derivative of a scan is another scan running the other way (backpropagation through
time, :func:`graphc.bptt.scan_vjp`): its body is the body's own backward graph, built by
:func:`graphc.passes.autodiff.backward`, reading the forward values it needs as slices of
stacks the forward keeps (residuals).  Compiled with the rematerialisation pipeline
(``gc.compile(..., passes=pipeline.REMAT_PIPELINE)``, :mod:`graphc.passes.remat`), the
forward keeps only its carries and the backward recomputes each step from them, with the
input projection computed per step and the weights' gradients summed in the loop (memory
grows with T by the carries only; the forward body runs twice).

Work in the body that does not depend on the carry and holds a matmul (the input
projection ``x_t @ Wx``) is lifted out of the loop at construction: one large matmul over
all steps before the loop, read by the body as one more slice (:func:`graphc.scan_body.hoist`).

>>> import numpy as np, graphc as gc
>>> xs = gc.input("xs", (4, 2), "float64")
>>> total, running = gc.scan(lambda c, x: (c + x, c + x), gc.constant(np.zeros(2)), xs)
>>> f = gc.compile([total, running], backend="numpy")
>>> f(xs=np.ones((4, 2)))[1][:, 0]
array([1., 2., 3., 4.])
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .dynamic import defer, has_dynamic, is_dynamic, pin, pinned, probing, stand_ins, unpinned
from .errors import DTypeError, GraphError, ShapeError
from .graph import Graph
from .inputs import Input, Traced
from .interpreter import evaluate_graph
from .ir import Op, Tensor, iter_nodes, located, user_location
from .scan_body import hoist, placeholder, substitute

# ---------------------------------------------------------------------------------------
# stop_gradient


@dataclass(frozen=True)
class StopGradient(Op):
    """``x`` in the forward pass; its gradient is zero (autodiff does not go through it)."""

    name = "stop_gradient"

    def infer(self, inputs):
        (x,) = inputs
        return x.shape, x.dtype

    def evaluate(self, x):
        return x

    local = ("0",)
    vjp_text = ("0",)

    def vjp(self, z, g, k):
        return None  # no gradient flows through


def stop_gradient(x: Tensor) -> Tensor:
    """``x`` in the forward pass, with no gradient flowing back through it.

    >>> import graphc as gc
    >>> x = gc.input("x", (), "float64")
    >>> g = gc.compile(gc.grad(x * gc.stop_gradient(x), x), backend="numpy")
    >>> float(g(x=3.0))
    3.0
    """
    if not isinstance(x, Tensor):
        raise GraphError(located(f"stop_gradient: expected a graphc Tensor, got "
                                 f"{type(x).__name__}"))
    return Tensor.make(StopGradient(), (x,))


# ---------------------------------------------------------------------------------------
# The loop and its nodes


@dataclass(frozen=True, eq=False)
class Loop:
    """A scan's body (placeholders and outputs) and its static attributes."""

    carry: tuple      # placeholders, one per carry element
    xs: tuple         # placeholders of one step's slices
    consts: tuple     # placeholders of the closed-over outer tensors
    new_carry: tuple  # body outputs: the next carry
    ys: tuple         # body outputs: the per-step results
    length: int
    reverse: bool = False
    truncate: int | None = None

    @cached_property
    def _key(self) -> tuple:
        nodes = self.carry + self.xs + self.consts + self.new_carry + self.ys
        return (tuple(map(id, nodes)), len(self.carry), len(self.xs), len(self.consts),
                len(self.new_carry), self.length, self.reverse, self.truncate)

    def __eq__(self, other):
        return self is other or (isinstance(other, Loop) and self._key == other._key)

    def __hash__(self):
        return hash(self._key)

    @cached_property
    def text(self) -> str:
        """A deterministic description (digests of the body), used in node digests."""
        def d(ts):
            return ",".join(t.digest[:16] for t in ts)
        return (f"carry=[{d(self.carry)}] xs=[{d(self.xs)}] consts=[{d(self.consts)}] "
                f"new_carry=[{d(self.new_carry)}] ys=[{d(self.ys)}] length={self.length} "
                f"reverse={self.reverse} truncate={self.truncate}")

    @cached_property
    def tag(self) -> str:
        """A short stable name of the loop (labels of its backward's placeholders)."""
        return hashlib.sha1(self.text.encode()).hexdigest()[:8]

    @cached_property
    def graph(self) -> Graph:
        """The body as a graph: outputs ``new_carry + ys``."""
        return Graph(list(self.new_carry + self.ys))

    @property
    def params(self) -> tuple:
        return self.carry + self.xs + self.consts

    def stacked(self, kind: str, i: int) -> Tensor:
        """The body value an output ``(kind, i)`` stacks: ``y`` j, ``cin`` (carry i as
        the step got it) or ``node`` (node i of the body graph: a residual)."""
        return self.ys[i] if kind == "y" else self.carry[i] if kind == "cin" else \
            self.graph.nodes[i]

    def step_graph(self, outs) -> Graph:
        """What one step computes for outputs ``outs``: ``new_carry + ys`` and then the
        body nodes that ``("node", i)`` outputs stack, by increasing ``i``."""
        extra = sorted({i for kind, i in outs if kind == "node"})
        if not extra:
            return self.graph
        return Graph(list(self.new_carry + self.ys) + [self.graph.nodes[i] for i in extra])

    def time_order(self) -> range:
        """The indices of ``xs`` in the order the steps run."""
        return range(self.length - 1, -1, -1) if self.reverse else range(self.length)


@dataclass(frozen=True)
class Scan(Op):
    """Output ``out`` of ``loop`` (``("carry", i)``, ``("y", j)`` or ``("cin", i)``)
    applied to ``init..., xs..., consts...``."""

    loop: Loop
    out: tuple

    name = "scan"

    def attrs(self):
        return {"out": f"{self.out[0]}{self.out[1]}", "length": self.loop.length,
                "reverse": self.loop.reverse, "truncate": self.loop.truncate}

    def key(self) -> str:
        return f"scan({self.loop.text}; out={self.out})"

    def infer(self, inputs):
        loop = self.loop
        params = loop.params
        if len(inputs) != len(params):
            self.fail(f"takes {len(params)} inputs, got {len(inputs)}", inputs)
        n_c, n_x = len(loop.carry), len(loop.xs)
        for k, (t, p) in enumerate(zip(inputs, params)):
            shape = (loop.length,) + p.shape if n_c <= k < n_c + n_x else p.shape
            if (t.shape, t.dtype) != (shape, p.dtype):
                self.fail(f"input {k} is {t.shape} {t.dtype}, the body takes {shape} "
                          f"{p.dtype}", inputs)
        kind, i = self.out
        if kind == "carry":
            return loop.carry[i].shape, loop.carry[i].dtype
        body = loop.stacked(kind, i)
        return (loop.length,) + body.shape, body.dtype

    def evaluate(self, *arrays):
        return self.evaluate_outputs([self], arrays)[0]

    # The reference interpreter runs a loop once for all the outputs of one instance (see
    # instance_key): nodes whose ops have one joint_key, on the same inputs.
    @property
    def joint_key(self) -> Loop:
        return self.loop

    def evaluate_outputs(self, ops, arrays) -> list:
        """The values of the outputs of ``ops`` (scans of this loop) on input ``arrays``,
        from one run of the loop."""
        outs = [op.out for op in ops]
        return run_loop(self.loop, outs, arrays, numpy_body(self.loop, outs))

    local = ("∂step/∂{x}, through time",)
    vjp_text = ("reverse scan of {g}",)

    # its derivative, a backward scan, is built by graphc.bptt.scan_vjp (autodiff calls it)


def instance_key(t: Tensor) -> tuple:
    """Scan nodes with one loop and the same inputs are outputs of one run."""
    return (t.op.joint_key,) + tuple(map(id, t.inputs))


def siblings(nodes) -> dict[tuple, list]:
    """The scan nodes among ``nodes`` by instance, in the order of ``nodes``."""
    found: dict[tuple, list] = {}
    for t in nodes:
        if isinstance(t.op, Scan):
            found.setdefault(instance_key(t), []).append(t)
    return found


# ---------------------------------------------------------------------------------------
# Running a loop (the reference interpreter and CUDA; Numba: numba_backend.LoopRunner)


def numpy_body(loop: Loop, outs):
    """The step run by the reference interpreter: feeds by label -> outputs."""
    graph = loop.step_graph(outs)
    return lambda feeds: evaluate_graph(graph, feeds)


def run_loop(loop: Loop, outs, arrays, body, empty=np.empty) -> list:
    """The values of outputs ``outs`` of ``loop`` on input ``arrays``; ``body(feeds)``
    runs one step (feeds by placeholder label) and returns the outputs of
    ``loop.step_graph(outs)``."""
    n_c, n_x = len(loop.carry), len(loop.xs)
    carry = list(arrays[:n_c])
    xs = arrays[n_c:n_c + n_x]
    feeds = {p.op.label: a for p, a in zip(loop.consts, arrays[n_c + n_x:])}
    extra = sorted({i for kind, i in outs if kind == "node"})
    at = {("y", j): n_c + j for j in range(len(loop.ys))}
    at.update({("node", i): n_c + len(loop.ys) + k for k, i in enumerate(extra)})
    stacks = {}
    for kind, i in outs:
        if kind != "carry" and (kind, i) not in stacks:
            t = loop.stacked(kind, i)
            stacks[(kind, i)] = empty((loop.length,) + t.shape, np.dtype(t.dtype))
    for t in loop.time_order():
        for (kind, i), stack in stacks.items():
            if kind == "cin":
                stack[t] = carry[i]
        feeds.update({p.op.label: c for p, c in zip(loop.carry, carry)})
        feeds.update({p.op.label: x[t] for p, x in zip(loop.xs, xs)})
        result = body(feeds)
        carry = list(result[:n_c])
        for key, stack in stacks.items():
            if key[0] != "cin":
                stack[t] = result[at[key]]
    return [carry[i] if kind == "carry" else stacks[(kind, i)] for kind, i in outs]


# ---------------------------------------------------------------------------------------
# Building a scan: trace the body once


_LIVE: list[int] = []  # the serials of the scans being traced, outermost first
_SWAPS: list[tuple] = []  # (depth, {id(outer): fed}) while a dynamic scan is replayed
_STOOD: dict[int, tuple] = {}  # id(stand-in) -> (it, the dynamic outer tensor it is for)
_SERIALS = itertools.count(1)


def _prefix() -> str:  # a body's placeholders are named by its depth: scan., scan1., ...
    return "scan" if not _LIVE else f"scan{len(_LIVE)}"


def _traced(placeholders, serial: int) -> list:
    """What ``fn`` is traced on: ``placeholders`` unique to this trace (see :func:`_close`)."""
    return [Tensor.make(Traced(f"{p.op.label}~{serial}", p.shape, p.dtype, serial=serial))
            for p in placeholders]


def _tensors(value, what: str, allow_none=False):
    """``value`` (a Tensor or a tuple/list of them) as (list, was a single tensor)."""
    if value is None and allow_none:
        return [], None
    if isinstance(value, Tensor):
        return [value], True
    if isinstance(value, (tuple, list)):
        bad = [k for k, v in enumerate(value) if not isinstance(v, Tensor)]
        if not bad:
            return list(value), False
        k = bad[0]
        raise GraphError(located(f"scan: {what}[{k}] is {type(value[k]).__name__}, not a "
                                 "graphc Tensor"))
    raise GraphError(located(f"scan: {what} must be a Tensor or a tuple of Tensors, got "
                             f"{type(value).__name__}"))


def _length(xs, length) -> int:
    for k, x in enumerate(xs):
        if x.ndim == 0:
            raise ShapeError(located(f"scan: xs[{k}] is 0-d; xs are scanned along axis 0"))
    lengths = sorted({x.shape[0] for x in xs})
    if len(lengths) > 1:
        shapes = ", ".join(f"xs[{k}] {x.shape}" for k, x in enumerate(xs))
        raise ShapeError(located(f"scan: xs have unequal lengths along axis 0 ({shapes})"))
    if length is not None and (not isinstance(length, (int, np.integer)) or
                               isinstance(length, bool) or length < 0):
        raise GraphError(located(f"scan: length must be a non-negative int, got {length!r}"))
    if not xs:
        if length is None:
            raise GraphError(located("scan: xs=None needs length= (the number of steps)"))
        return int(length)
    if length is not None and length != lengths[0]:
        raise ShapeError(located(f"scan: length={length} but xs have length {lengths[0]}"))
    return lengths[0]


def scan(fn, init, xs=None, length=None, reverse=False, truncate=None):
    """Loop ``fn(carry, x) -> (carry, y)`` over ``xs`` along axis 0, as ``jax.lax.scan``.

    ``init`` and ``xs`` are a Tensor or a tuple of Tensors (``xs=None`` with ``length``:
    ``x`` is None).  Returns ``(carry, ys)``: the final carry and the ``y``s stacked along
    axis 0 (element-wise when ``y`` is a tuple).  ``fn`` is traced once into a body graph;
    the loop is one op of the graph.  ``reverse=True`` runs from the last step to the
    first.  ``gc.grad`` through it is backpropagation through time; ``truncate=k`` stops
    the carry's gradient flowing into step t (in scan order) when t > 0 and t % k == 0.

    >>> import graphc as gc
    >>> h, hs = gc.scan(lambda h, x: (gc.tanh(h + x),) * 2, gc.input("h0", (3,)),
    ...                 gc.input("xs", (5, 3)))
    >>> h.shape, hs.shape
    ((3,), (5, 3))
    """
    loc = user_location()
    if not callable(fn):
        raise DTypeError(located(f"scan: fn must be a function (carry, x) -> (carry, y), got "
                                 f"{type(fn).__name__}"))
    init_list, init_single = _tensors(init, "init")
    xs_list, xs_single = _tensors(xs, "xs", allow_none=True)
    if not isinstance(reverse, (bool, np.bool_)):  # bool("False") would run it backwards
        raise GraphError(located(f"scan: reverse must be True or False, got {reverse!r}"))
    if has_dynamic(init_list + xs_list):  # replayed per fed shape: see graphc/dynamic.py
        return _dynamic_scan(fn, init, xs, init_single, dict(
            length=length, reverse=reverse, truncate=truncate))
    n = _length(xs_list, length)
    if truncate is not None and (not isinstance(truncate, (int, np.integer)) or
                                 isinstance(truncate, bool) or truncate < 1):
        raise GraphError(located(f"scan: truncate must be a positive int, got {truncate!r}"))
    prefix = _prefix()
    swap = _SWAPS[-1][1] if _SWAPS and _SWAPS[-1][0] == len(_LIVE) else {}
    carry_ph = [placeholder(f"{prefix}.carry{i}", c.shape, c.dtype)
                for i, c in enumerate(init_list)]
    x_ph = [placeholder(f"{prefix}.x{i}", x.shape[1:], x.dtype) for i, x in enumerate(xs_list)]
    serial = next(_SERIALS)
    carry_t, x_t = _traced(carry_ph, serial), _traced(x_ph, serial)
    _LIVE.append(serial)
    try:  # live until closed: a nested dynamic scan is replayed on its placeholders then
        out = fn(carry_t[0] if init_single else tuple(carry_t),
                 None if xs_single is None else x_t[0] if xs_single else tuple(x_t))
        new_carry, ys, y_single = _returns(out, init_list, init_single, loc)
        consts, body = _close(dict(zip(map(id, carry_t + x_t), carry_ph + x_ph)),
                              new_carry + ys, prefix, loc, swap)
    finally:
        _LIVE.pop()
    if any(is_dynamic(t.shape) for _, t in consts):  # fn closes over a dynamic tensor
        return _dynamic_scan(fn, init, xs, init_single, dict(
            length=length, reverse=reverse, truncate=truncate))
    more_ph, more_xs, body = hoist(carry_ph, x_ph, xs_list, consts, body, prefix)
    used = {id(t) for t in iter_nodes(body)}  # what hoisting left unread is no input
    xs_used = [(p, x) for p, x in zip(x_ph + more_ph, xs_list + more_xs) if id(p) in used]
    consts = [(p, c) for p, c in consts if id(p) in used]
    loop = Loop(tuple(carry_ph), tuple(p for p, _ in xs_used), tuple(p for p, _ in consts),
                tuple(body[:len(new_carry)]), tuple(body[len(new_carry):]), n, bool(reverse),
                None if truncate is None else int(truncate))
    inputs = init_list + [x for _, x in xs_used] + [c for _, c in consts]
    carry = [Tensor.make(Scan(loop, ("carry", i)), inputs) for i in range(len(init_list))]
    stacked = [Tensor.make(Scan(loop, ("y", j)), inputs) for j in range(len(ys))]
    return (carry[0] if init_single else tuple(carry),
            None if y_single is None else stacked[0] if y_single else tuple(stacked))


def _flat(carry, ys) -> list:
    """The outputs of :func:`scan` as one list: the carry, then the ys."""
    flat = [carry] if isinstance(carry, Tensor) else list(carry)
    return flat + ([] if ys is None else [ys] if isinstance(ys, Tensor) else list(ys))


class _Body:
    """A scan's ``fn`` in a deferred node's key: equal to another function of the same code
    closing over the same objects (a body made anew by each trace of an enclosing ``fn``,
    a lambda say, is one deferred node across traces)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)

    def _parts(self):
        fn = self.fn
        if not hasattr(fn, "__code__"):
            return (id(fn),)
        cells = [_contents(c) for c in fn.__closure__ or ()]
        return (fn.__code__, id(fn.__globals__), fn.__defaults__,
                *(c if isinstance(c, (int, float, str, bool, type(None))) else id(c)
                  for c in cells))

    def __eq__(self, other):
        return isinstance(other, _Body) and self._parts() == other._parts()

    def __hash__(self):
        return hash(self._parts()[0])


def _contents(cell):
    try:
        return cell.cell_contents
    except ValueError:  # a cell not yet filled
        return _Body


@dataclass(frozen=True)
class _Closed:
    """The outer tensors a traced ``fn`` closes over (static: compared by identity)."""

    tensors: tuple


def _scan_output(init, xs, closed_now, *, fn, index, closed, **kwargs) -> Tensor:
    """Output ``index`` of the scan, with what ``fn`` closes over replaced by
    ``closed_now`` (so that a gradient w.r.t. a closed-over weight reaches it)."""
    swap = {id(a): b for a, b in zip(closed.tensors, closed_now) if a is not b}
    _SWAPS.append((len(_LIVE), swap))
    try:
        with pinned(closed.tensors, closed_now):
            return _flat(*scan(fn, init, xs, **kwargs))[index]
    finally:
        _SWAPS.pop()


def _frontier(outputs, leaves) -> list:
    """The tensors outside ``outputs``' dependence on ``leaves`` that feed into it."""
    dep = {id(t) for t in leaves}
    seen: dict[int, Tensor] = {}
    for t in iter_nodes(outputs):
        if id(t) not in dep and any(id(i) in dep for i in t.inputs):
            dep.add(id(t))
            seen.update((id(i), i) for i in t.inputs if id(i) not in dep)
    return [t for k, t in seen.items() if k not in dep]


def _dynamic_scan(fn, init, xs, init_single, kwargs):
    """:func:`scan` on operands with dynamic dimensions: one deferred node per output, each
    replaying the whole scan on the fed shapes (the replays hash-cons to one loop).  The
    outer tensors ``fn`` closes over are operands of those nodes, so gradients reach them."""
    n_carry = 1 if init_single else len(init)
    probe = stand_ins((init, xs), every=True)  # what fn closes over is all but these
    with pinned(list(_leaves((init, xs))), list(_leaves(probe)), probe=True) as sizes:
        try:
            carry, ys = scan(fn, *probe, **kwargs)  # what fn returns, and its errors, once
        except GraphError as err:  # said at the user's shapes, not the stand-ins'
            raise unpinned(err, sizes) from None
    flat = _flat(carry, ys)
    leaves = [t for t in iter_nodes(list(_leaves(probe))) if isinstance(t.op, Input)]
    closed = tuple(_STOOD.pop(id(t), (t, t))[1] for t in _frontier(flat, leaves))
    outs = [defer(_scan_output, (init, xs, closed),
                  dict(kwargs, fn=_Body(fn), index=i, closed=_Closed(closed)), "scan")
            for i in range(len(flat))]
    new_carry = outs[0] if init_single else tuple(outs[:n_carry])
    if ys is None:
        return new_carry, None
    return new_carry, outs[n_carry] if isinstance(ys, Tensor) else tuple(outs[n_carry:])


def _leaves(value):
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _leaves(v)


def _returns(out, init, init_single, loc):
    """(new carry, ys, y single?) from what ``fn`` returned, checked against ``init``."""
    if not isinstance(out, tuple) or len(out) != 2:
        raise GraphError(located(f"scan: fn must return a pair (carry, y), got "
                                 f"{type(out).__name__}", loc))
    carry, y = out
    if init_single:
        if not isinstance(carry, Tensor):
            raise GraphError(located(f"scan: fn returned a {type(carry).__name__} as the "
                                     "carry; init is a Tensor, so the carry must be one", loc))
        carry = [carry]
    else:
        if not isinstance(carry, (tuple, list)) or len(carry) != len(init):
            raise GraphError(located(f"scan: fn must return a carry of {len(init)} Tensors "
                                     f"like init, got {_describe(carry)}", loc))
        carry = list(carry)
    for i, (new, old) in enumerate(zip(carry, init)):
        name = "carry" if init_single else f"carry[{i}]"
        if not isinstance(new, Tensor):
            raise GraphError(located(f"scan: fn returned {type(new).__name__} as {name}, "
                                     "not a graphc Tensor", loc))
        made = f" (made at {new.loc})" if new.loc else ""
        if new.shape != old.shape:
            raise ShapeError(located(f"scan: fn changes the shape of {name} from {old.shape} "
                                     f"to {new.shape}{made}; the carry keeps its shape", loc))
        if new.dtype != old.dtype:
            raise DTypeError(located(f"scan: fn changes the dtype of {name} from {old.dtype} "
                                     f"to {new.dtype}{made}; the carry keeps its dtype "
                                     "(cast it)", loc))
    if y is None:
        return carry, [], None
    if isinstance(y, Tensor):
        return carry, [y], True
    if isinstance(y, (tuple, list)):
        for j, v in enumerate(y):
            if not isinstance(v, Tensor):
                raise GraphError(located(f"scan: fn returned {type(v).__name__} as y[{j}], "
                                         "not a graphc Tensor", loc))
        return carry, list(y), False
    raise GraphError(located(f"scan: fn returned {type(y).__name__} as y; y is a Tensor, a "
                             "tuple of Tensors or None", loc))


def _describe(value) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return type(value).__name__


def _close(params: dict, outputs, prefix, loc, swap):
    """The closed-over outer tensors of a traced body, as ``[(placeholder, outer)]``, and
    the body outputs rebuilt on those placeholders and on ``params`` (the traced
    placeholders' ids -> the body's).  An outer tensor is a node that depends on no
    placeholder but on some input or parameter (a node that depends on constants alone
    stays in the body).  A tensor of another body, already returned, is an error.  When a
    dynamic scan is replayed, ``swap`` gives the outer tensors at the fed shapes."""
    inner = set(params)
    nodes = iter_nodes(outputs)
    for t in nodes:
        if id(t) not in inner and any(id(i) in inner for i in t.inputs):
            inner.add(id(t))
        elif isinstance(t.op, Traced) and t.op.serial not in _LIVE and id(t) not in inner:
            raise GraphError(located(
                "scan: fn uses a tensor made inside the body of another scan (the scan at "
                f"{t.loc}) after that scan returned; a body's tensors exist only inside it: "
                "return it as a carry or y of that scan", loc))

    def outer(t):
        return id(t) not in inner and bool(t.leaves)

    frontier: dict[int, Tensor] = {}
    for t in nodes:
        if id(t) in inner:
            frontier.update((id(i), i) for i in t.inputs if outer(i))
    frontier.update((id(o), o) for o in outputs if outer(o))
    outer_now = [_stand_in(t, swap) for t in frontier.values()]
    consts = [(placeholder(f"{prefix}.const{j}", t.shape, t.dtype), t)
              for j, t in enumerate(outer_now)]
    return consts, substitute(outputs, {k: p for k, (p, _) in zip(frontier, consts)} | params)


def _stand_in(t: Tensor, swap: dict) -> Tensor:
    """Outer tensor ``t`` as a body reads it: at the fed shapes where a dynamic scan is
    replayed (``swap``), else a dynamic one as an input of its shape at the pinned sizes
    (probing a dynamic scan: what fn returns and closes over), else itself."""
    stood, outer = _STOOD.get(id(t), (None, t))
    if stood is not t:
        outer = t
    if id(outer) in swap:
        if stood is t:  # a nested body's stand-in, now resolved
            del _STOOD[id(t)]
        return swap[id(outer)]
    if not is_dynamic(t.shape) or is_dynamic(pin(t.shape)):
        return t
    if not probing():
        where = f" (made at {t.loc})" if t.loc else ""
        raise GraphError(located(f"scan: fn reads a tensor of shape {t.shape}{where} that has "
                                 "dynamic dimensions and depends on neither the carry nor x, "
                                 "made anew by every trace of fn; make it before gc.scan"))
    new = Tensor.make(Input(f"_closed{next(_SERIALS)}", pin(t.shape), t.dtype))
    _STOOD[id(new)] = (new, t)
    return new



__all__ = ["Loop", "Scan", "StopGradient", "scan", "stop_gradient", "run_loop"]
