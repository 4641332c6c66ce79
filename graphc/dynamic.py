"""Dynamic dimensions: ``gc.input("x", (None, 784))`` and named dimensions (``"N"``).

A dimension given as ``None`` or a name may differ from call to call.  Graphs are built on
such shapes lazily: a node with a dynamic operand is a :class:`Deferred` node that records
the call that made it (the op, or a public function such as ``mean`` that reads shapes)
and finds its own shape by *probing*, building the call on stand-in inputs of two made-up
sizes (a dimension that follows the stand-in size is dynamic, one that does not is fixed).
The compiled function (:class:`graphc.compiler.DynamicFunction`) *specialises* the graph
once per distinct feed shape: it replaces the dynamic inputs by inputs of the fed shapes and
replays every deferred call on them, so every shape rule and shape-derived constant
(``mean``'s 1/N) is computed from the real sizes; the result is the ordinary graph a
fixed-shape model builds, and goes through the passes and the backend as one.  Kernels are
shared through the kernel cache.

>>> import numpy as np, graphc as gc
>>> x = gc.input("x", (None, 3))
>>> y = gc.mean(x * 2.0, axis=1)
>>> y.shape
(None,)
>>> f = gc.compile(y, backend="numpy")
>>> f(x=np.ones((2, 3))).tolist(), f(x=np.ones((1, 3))).tolist()
([2.0, 2.0], [2.0])
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import re
from dataclasses import dataclass, field

import numpy as np

from .errors import GraphError, ShapeError
from .graph import as_outputs
from .inputs import Input, Traced
from .ir import Op, StaticArray, Tensor, iter_nodes, located, on_dynamic_operand, replaying

# Stand-in sizes for dynamic dimensions while probing, run 0 and run 1.  First the i-th
# distinct name (None is one name) stands for 1009 + 10 * i and 1083 + 12 * i: sizes no
# model fixes, a step between the runs (74 + 2 * i) that no name shares, so that a
# dimension derived from a name (T - 10, T // 4) is neither taken for another name nor
# found fixed.  Where a call fails at those, every name stands for 2520 and 5040, then
# 443520 and 887040 (a reshape to (-1, 16) needs a multiple of 16), then 1009 and 1083,
# then 2 and 3 (a model valid only for short lengths: positions of a 6-row embedding).
# A dimension the same in both runs is fixed unless it differs where every name is 0
# (else 2): a bounded slice x[:3] of a dynamic axis is min(n, 3) long.
_BASE, _STEP = 1009, 74
_DIVISIBLE = (2520, 443520)  # multiples of 1, ..., 10 and of 1, ..., 12, 16, 32, 64, 128
_SMALL = (0, 2)
_HOLDERS = itertools.count()


class _Pins(dict):
    """The sizes dynamic dimensions (by name; None is one name) stand for while a scan's
    body is traced; ``probe``: probing a dynamic scan, where a name met for the first time
    gets a stand-in size of its own."""

    def __init__(self, sizes, probe: bool):
        super().__init__(sizes)
        self.probe = probe

    def size(self, d):
        if d not in self and self.probe:
            self[d] = _BASE + 10 * (len(self) + 1)
        return self.get(d)


_PINNED: list[_Pins] = []


@contextlib.contextmanager
def pinned(olds, news, probe: bool = False):
    """While a scan's body is traced at concrete shapes (``news``, stand-ins for or the
    fed shapes of the dynamic tensors ``olds``), a call on a tensor of those dynamic
    dimensions that fn closes over has the shape it has at those sizes where it also reads
    the body's placeholders (``h + B``, ``h`` of batch 1009 and ``B`` of batch None; ``B * 2``
    keeps its dynamic batch): see :func:`graphc.scan.scan`."""
    outer = _PINNED[-1] if _PINNED else _Pins({}, False)
    sizes = _Pins(outer, probe or outer.probe)
    sizes.update((d, n) for a, b in zip(olds, news) for d, n in zip(a.shape, b.shape)
                 if d is None or isinstance(d, str))
    _PINNED.append(sizes)
    try:
        yield sizes
    finally:
        _PINNED.pop()


def unpinned(err: GraphError, sizes: dict) -> GraphError:
    """``err``, raised while probing at stand-in ``sizes`` ({name: size}; None is one
    name), with each stand-in size in a shape or a length said as the user wrote it:
    ``xs[0] (None, 2)``, not ``(1009, 2)``, a size nobody fed."""
    names = {n: d for d, n in sizes.items()}

    def said(m):
        return repr(names[int(m[0])]) if int(m[0]) in names else m[0]
    text = re.sub(r"\((?:\d+, )*\d+,?\)",
                  lambda shape: re.sub(r"\d+", said, shape[0]), str(err))
    text = re.sub(r"(?<=length )\d+", said, text)
    return err if text == str(err) else type(err)(text)


def pin(shape) -> tuple:
    """``shape`` at the pinned sizes (as it is where none are pinned)."""
    if not _PINNED:
        return tuple(shape)
    sizes = [_PINNED[-1].size(d) if d is None or isinstance(d, str) else None for d in shape]
    return tuple(d if n is None else n for d, n in zip(shape, sizes))


def probing() -> bool:
    """Whether a dynamic scan is being probed (not replayed at fed shapes)."""
    return bool(_PINNED) and _PINNED[-1].probe


def is_dynamic(shape) -> bool:
    """Whether ``shape`` has a dimension that is None or a name."""
    return any(d is None or isinstance(d, str) for d in shape)


def pattern_text(shape) -> str:
    """``(None, 784) (any size where None)`` for a feed error."""
    names = sorted({repr(d) for d in shape if isinstance(d, str)})
    where = " or ".join((["None"] if None in shape else []) + names)
    same = ", one size per name across inputs" if names else ""
    return f"{_shape_text(shape)} (any size where {where}{same})"


def _shape_text(shape) -> str:
    return "(" + ", ".join(map(repr, shape)) + ("," if len(shape) == 1 else "") + ")"


def matches(have: tuple, pattern: tuple) -> bool:
    """Whether a concrete shape fits a pattern of ints, None and names."""
    return len(have) == len(pattern) and all(
        p is None or isinstance(p, str) or p == h for h, p in zip(have, pattern))


# ---------------------------------------------------------------------------------------
# Deferred nodes


class _Slot:
    """Where the ``i``-th tensor operand goes in a recorded call."""

    __slots__ = ("i",)

    def __init__(self, i):
        self.i = i

    def __eq__(self, other):
        return isinstance(other, _Slot) and other.i == self.i

    def __hash__(self):
        return hash(("slot", self.i))

    def __repr__(self):
        return f"#{self.i}"


class _ById:
    """An unhashable static argument, compared by identity."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, _ById) and other.value is self.value

    def __hash__(self):
        return id(self.value)

    def __repr__(self):
        return f"<{type(self.value).__name__}>"


def _freeze(value, tensors: list):
    """``value`` with tensors replaced by slots (appended to ``tensors``), hashable."""
    if isinstance(value, Tensor):
        tensors.append(value)
        return _Slot(len(tensors) - 1)
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_freeze(v, tensors) for v in value))
    if isinstance(value, np.ndarray):
        return ("ndarray", StaticArray(value))
    try:
        hash(value)
    except TypeError:
        return ("id", _ById(value))
    return ("value", value)


def _thaw(frozen, tensors):
    if isinstance(frozen, _Slot):
        return tensors[frozen.i]
    kind, value = frozen
    if kind in ("list", "tuple"):
        items = [_thaw(v, tensors) for v in value]
        return items if kind == "list" else tuple(items)
    if kind == "ndarray":
        return value.array.copy()
    return value.value if kind == "id" else value


def _show(frozen):
    """A frozen argument as its value, operands as ``#i``."""
    if isinstance(frozen, _Slot):
        return frozen
    kind, value = frozen
    if kind in ("list", "tuple"):
        items = [_show(v) for v in value]
        return items if kind == "list" else tuple(items)
    return value


@dataclass(frozen=True)
class Deferred(Op):
    """A call made on operands with dynamic dimensions, replayed at specialisation.

    ``fn(*args, **kwargs)`` with the operands in the slots of ``args``/``kwargs``; ``label``
    names the node in printers and diagrams; ``like``: the output has the shape and dtype
    of that operand (gradients), otherwise probing finds them."""

    fn: object
    args: tuple
    kwargs: tuple
    label: str
    like: int | None = field(default=None)

    dynamic = True

    @property
    def name(self):  # type: ignore[override]
        return self.label

    def attrs(self):
        """The static arguments of the call (operands are inputs of the node)."""
        kwargs = dict(self.kwargs)
        if self.fn is _make:
            return kwargs["op"][1].attrs()
        if self.fn is _vjp_of:
            return {"of": kwargs["op"][1].label, "operand": kwargs["k"][1]}
        shown = {f"arg{i}": _show(a) for i, a in enumerate(self.args)
                 if not isinstance(a, _Slot)}
        return shown | {k: _show(v) for k, v in kwargs.items() if not isinstance(v, _Slot)}

    def build(self, inputs) -> Tensor:
        """The node this call makes on ``inputs`` (of concrete shapes)."""
        args = _thaw(("tuple", self.args), inputs)
        kwargs = {k: _thaw(v, inputs) for k, v in self.kwargs}
        out = self.fn(*args, **kwargs)
        if not isinstance(out, Tensor):
            raise GraphError(located(f"{self.label}: dynamic dimensions are supported for "
                                     f"calls returning one tensor, not {type(out).__name__}"))
        return out

    def infer(self, inputs):
        if self.like is not None:
            return inputs[self.like].shape, inputs[self.like].dtype
        return _probe(self, inputs)

    def evaluate(self, *arrays):
        raise GraphError(f"{self.label}: a node with dynamic dimensions is evaluated only "
                         "after specialisation (gc.compile does it per feed shape)")

    def _inner(self):
        return dict(self.kwargs)["op"][1] if self.fn is _make else None

    @property
    def local(self):
        """The wrapped op's local derivative texts (diagrams), else one saying that it is
        known at the fed shapes (a call such as ``mean`` is ops of its own then: drawn
        with ``values``, the graph is specialised to the feeds' shapes first)."""
        inner = self._inner()
        texts = getattr(inner, "local", None) or \
            getattr(getattr(inner, "fn", None), "derivatives_text", None)
        return tuple(texts) if texts else ("(at the fed shapes)",)

    @property
    def vjp_text(self):
        inner = self._inner()
        if inner is not None and hasattr(inner, "vjp_text"):
            return inner.vjp_text
        if inner is not None and hasattr(getattr(inner, "fn", None), "derivatives_text"):
            return tuple(f"{{g}} · ({t})" for t in inner.fn.derivatives_text)
        return ("vjp of {g}",)

    # its vjp rule is deferred_vjp, given the differentiator by autodiff (which calls it)


def deferred_vjp(z: Tensor, g: Tensor, k: int, vjp) -> Tensor:
    """The gradient of deferred node ``z`` w.r.t. its ``k``-th operand given cotangent ``g``:
    a deferred node too, whose replay differentiates the replayed call with ``vjp``
    (:func:`graphc.passes.autodiff.vjp`, the caller of this rule)."""
    slots = tuple(_Slot(i) for i in range(len(z.inputs) + 1))
    kwargs = (("k", ("value", k)), ("op", ("value", z.op)), ("vjp", ("value", vjp)))
    return Tensor.make(Deferred(_vjp_of, slots, kwargs, f"d{z.op.label}", k), (*z.inputs, g))


def _vjp_of(*tensors, op: Deferred, k: int, vjp) -> Tensor:
    """The gradient of ``op``'s call w.r.t. its ``k``-th operand (only that use of it, even
    when the same tensor fills several slots), given the cotangent (the last tensor)."""
    xs, g = list(tensors[:-1]), tensors[-1]
    x = xs[k]
    holder = Tensor.make(Input(f"_holder{next(_HOLDERS)}", x.shape, x.dtype))
    xs[k] = holder
    grad = vjp(op.build(xs), holder, g)
    return substitute([grad], {id(holder): x})[0]


def defer(fn, args=(), kwargs=None, label=None) -> Tensor:
    """The deferred node of ``fn(*args, **kwargs)`` (some tensor in them is dynamic)."""
    tensors: list[Tensor] = []
    frozen_args = tuple(_freeze(a, tensors) for a in args)
    frozen_kwargs = tuple((k, _freeze(v, tensors)) for k, v in sorted((kwargs or {}).items()))
    op = Deferred(fn, frozen_args, frozen_kwargs, label or fn.__name__)
    return Tensor.make(op, tensors)


def _make(*inputs, op: Op) -> Tensor:
    return Tensor.make(op, inputs)


def defer_make(op: Op, inputs) -> Tensor:
    """``Tensor.make(op, inputs)`` for dynamic ``inputs``: deferred."""
    return defer(_make, tuple(inputs), {"op": op}, op.name)


on_dynamic_operand(defer_make)  # Tensor.make defers with it


def dynamic(fn):
    """Decorate a public function that reads its operands' shapes: called with an operand
    of dynamic shape, it makes a :class:`Deferred` node (replayed on concrete shapes)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if has_dynamic(args) or has_dynamic(kwargs.values()):
            return defer(fn, args, kwargs)
        return fn(*args, **kwargs)
    return wrapper


def has_dynamic(values) -> bool:
    for v in values:
        if isinstance(v, Tensor):
            if is_dynamic(v.shape):
                return True
        elif isinstance(v, (list, tuple)) and has_dynamic(v):
            return True
    return False


# ---------------------------------------------------------------------------------------
# Probing: the shape of a deferred call


def _probe(op: Deferred, inputs) -> tuple[tuple, str]:
    symbols = list(dict.fromkeys(d for t in inputs for d in t.shape
                                 if d is None or isinstance(d, str)))
    if _PINNED and all(_PINNED[-1].size(s) is not None for s in symbols) and any(
            isinstance(leaf.op, Traced) for t in inputs for leaf in t.leaves.values()):
        out = _run(op, inputs, _PINNED[-1])
        return out.shape, out.dtype

    def runs(size):  # the call built at sizes size(run, i) of the i-th name, runs 0 and 1
        sizes = [{s: size(run, i) for i, s in enumerate(symbols)} for run in (0, 1)]
        return [(z, _run(op, inputs, z)) for z in sizes]

    tries = [lambda run, i: _BASE + 10 * i + run * (_STEP + 2 * i),
             *(lambda run, i, d=d: d * (1 + run) for d in _DIVISIBLE),
             lambda run, i: _BASE + run * _STEP, lambda run, i: 2 + run]
    first = None
    for size in tries:
        try:
            (sizes_a, a), (sizes_b, b) = runs(size)
            break
        except GraphError as err:
            first = first or err
    else:
        only = symbols[0] if len(symbols) == 1 else None
        text = re.sub(rf"\b{_BASE}\b|\b{_BASE + _STEP}\b", repr(only), str(first))
        raise type(first)(text) from None
    shape = []
    for da, db in zip(a.shape, b.shape):
        if da == db:
            shape.append(da)
            continue
        names = [s for s in symbols if sizes_a[s] == da and sizes_b[s] == db]
        shape.append(names[0] if len(names) == 1 else None)
    return _bounded(op, inputs, symbols, tuple(shape)), a.dtype


def _bounded(op: Deferred, inputs, symbols, shape: tuple) -> tuple:
    """``shape`` with None where a dimension that probing found fixed differs at the small
    sizes :data:`_SMALL` (a call that fails there tells nothing)."""
    if not any(isinstance(d, int) for d in shape):
        return shape
    for size in _SMALL:
        try:
            small = _run(op, inputs, dict.fromkeys(symbols, size)).shape
        except Exception:  # noqa: BLE001 -- e.g. a max over an empty axis: try the next
            continue
        return tuple(None if isinstance(d, int) and d != s else d
                     for d, s in zip(shape, small))
    return shape


def stand_ins(value, size: int = _BASE, every: bool = False):
    """``value`` (a tensor or nested tuples of them) with every dynamic tensor (``every``:
    every tensor) replaced by an input of the same dtype whose dynamic dimensions are
    ``size`` (their pinned sizes where a scan body is being traced)."""
    if isinstance(value, (list, tuple)):
        return type(value)(stand_ins(v, size, every) for v in value)
    if isinstance(value, Tensor) and (every or is_dynamic(value.shape)):
        shape = tuple(size if d is None or isinstance(d, str) else d
                      for d in pin(value.shape))
        return Tensor.make(Input(f"_probe{next(_HOLDERS)}", shape, value.dtype))
    return value


def _run(op: Deferred, inputs, sizes) -> Tensor:
    stand_ins = []
    for i, t in enumerate(inputs):
        if is_dynamic(t.shape):
            shape = tuple(sizes[d] if d is None or isinstance(d, str) else d
                          for d in t.shape)
            t = Tensor.make(Input(f"_probe{i}", shape, t.dtype))
        stand_ins.append(t)
    return op.build(stand_ins)


# ---------------------------------------------------------------------------------------
# Specialisation


def substitute(outputs, mapping: dict, memo: dict | None = None) -> list[Tensor]:
    """``outputs`` rebuilt with the nodes in ``mapping`` (by id) replaced, every
    :class:`Deferred` node replayed on its new operands; ``memo``, if given, receives each
    old node's id -> its new node."""
    new = memo if memo is not None else {}
    new.update(mapping)
    for t in iter_nodes(outputs):
        if id(t) in new:
            continue
        inputs = tuple(new[id(i)] for i in t.inputs)
        if isinstance(t.op, Deferred):
            node = replay(t, inputs)
        elif all(a is b for a, b in zip(inputs, t.inputs)):
            node = t
        else:
            node = Tensor.make(t.op, inputs)
            for record in t.meta or ():
                node.tag(record)
        if node is not t and getattr(t, "display", None):  # its .named() name, kept
            node.named(t.display)
        new[id(t)] = node
    return [new[id(o)] for o in outputs]


def replay(t: Tensor, inputs) -> Tensor:
    """Deferred node ``t``'s call made on ``inputs``."""
    try:
        with replaying(t):  # errors and new nodes name the user's line and scope
            return t.op.build(inputs)
    except GraphError as err:
        shapes = ", ".join(str(i.shape) for i in inputs)
        raise ShapeError(f"{t.op.label} on operands of shapes {shapes}: {err}") from None


def feed_shapes(outputs, feeds) -> dict:
    """The sizes ``feeds`` (by input name) give the dynamic inputs of ``outputs`` (those
    that match their patterns)."""
    return {t.op.label: np.shape(feeds[t.op.label]) for t in iter_nodes(as_outputs(outputs))
            if isinstance(t.op, Input) and is_dynamic(t.shape) and t.op.label in feeds
            and matches(np.shape(feeds[t.op.label]), t.shape)}


def at_feed_shapes(outputs: list, feeds, wrt=None):
    """``(outputs, wrt)`` specialised to the shapes ``feeds`` give their dynamic inputs (as
    they are where there are none): diagrams and the explorer of a dynamic graph given
    values draw the graph the compiled function runs, with its names and formulas."""
    shapes = feed_shapes(outputs, feeds) if feeds else {}
    if not shapes:
        return outputs, wrt
    memo: dict = {}
    outputs = specialise(outputs, shapes, memo)
    if isinstance(wrt, Tensor):
        wrt = memo.get(id(wrt), wrt)
    elif isinstance(wrt, (list, tuple)):
        wrt = [memo.get(id(w), w) for w in wrt]
    return outputs, wrt


def specialise(outputs, shapes: dict, memo: dict | None = None) -> list[Tensor]:
    """``outputs`` with every dynamic input replaced by one of shape ``shapes[label]``
    (``memo``: as :func:`substitute`'s)."""
    mapping = {}
    for t in iter_nodes(outputs):
        if isinstance(t.op, Input) and t.op.label in shapes:
            op = Input(t.op.label, tuple(shapes[t.op.label]), t.op.in_dtype, t.op.init,
                       t.op.state)
            mapping[id(t)] = Tensor.make(op)
    return substitute(outputs, mapping, memo)
