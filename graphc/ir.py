"""The graph IR: immutable, hash-consed tensor nodes.

A :class:`Tensor` is one node: an :class:`Op` (frozen, hashable, holding only static
attributes) applied to input tensors.  Nodes are interned, so two structurally equal nodes
are one object and common subexpressions are shared by construction::

    >>> import graphc as gc
    >>> x = gc.input("x", (2, 3))
    >>> (x + 1) is (x + 1)
    True

Shapes and dtypes are inferred when a node is made; a mismatch raises :class:`ShapeError`
or :class:`DTypeError` naming the op, the shapes and the user's own ``file:line``.
"""

from __future__ import annotations

import contextlib
import hashlib
import linecache
import os
import sys
import weakref
from dataclasses import dataclass
from dataclasses import replace as dc_replace

import numpy as np

from .errors import GraphError, ShapeError

# ---------------------------------------------------------------------------------------
# Where the user made the mistake: the first stack frame outside the graphc packages.

_INTERNAL_DIRS: tuple[str, ...] = ()


def _internal_dirs() -> tuple[str, ...]:
    global _INTERNAL_DIRS
    if not _INTERNAL_DIRS:
        here = os.path.dirname(os.path.abspath(__file__))
        dirs = {here}
        for sub in ("passes", "viz"):
            mod = sys.modules.get(f"graphc.{sub}")
            if mod is not None and getattr(mod, "__file__", None):
                dirs.add(os.path.dirname(os.path.abspath(mod.__file__)))
        _INTERNAL_DIRS = tuple(d + os.sep for d in dirs)
    return _INTERNAL_DIRS


@dataclass(frozen=True)
class SourceLoc:
    """A user's source position: file, line and the text of that line."""

    filename: str
    lineno: int
    code: str = ""

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno}"


_REPLAYED: list[SourceLoc | None] = []


def user_location() -> SourceLoc | None:
    """The innermost caller frame that is not graphc's own code (or, while a call is
    replayed on new shapes, where the user made it)."""
    if _REPLAYED and _REPLAYED[-1] is not None:
        return _REPLAYED[-1]
    internal = _internal_dirs()
    frame = sys._getframe(1)
    while frame is not None:
        fname = frame.f_code.co_filename
        if not _is_internal(fname, internal) and not _launcher(frame):
            code = linecache.getline(fname, frame.f_lineno).strip()
            return SourceLoc(fname, frame.f_lineno, code)
        frame = frame.f_back
    return None


_INTERNAL_FILES: dict[tuple, bool] = {}  # by (internal dirs, absolute file name)


def _launcher(frame) -> bool:
    """Whether ``frame`` runs the ``graphc`` console script (``from graphc.cli import
    main``), which is graphc's too: an error of a call the command line makes is not
    located in the launcher."""
    return getattr(frame.f_globals.get("main"), "__module__", None) == "graphc.cli" and \
        frame.f_globals.get("__name__") == "__main__"


def _is_internal(fname: str, internal: tuple[str, ...]) -> bool:
    """Whether code from file ``fname`` is graphc's own (or frozen); remembered for
    absolute names (a relative one depends on the working directory)."""
    known = _INTERNAL_FILES.get((internal, fname))
    if known is None:
        known = os.path.abspath(fname).startswith(internal) or fname.startswith("<frozen")
        if os.path.isabs(fname):
            _INTERNAL_FILES[(internal, fname)] = known
    return known


def located(message: str, loc: SourceLoc | None = None) -> str:
    """``message`` followed by where in the user's code it happened."""
    loc = loc or user_location()
    if loc is None:
        return message
    text = f"{message}\n  at {loc}"
    return text + (f": {loc.code}" if loc.code else "")


# ---------------------------------------------------------------------------------------
# Ops


@dataclass(frozen=True)
class Op:
    """Base of every op: static attributes only, frozen and hashable.

    Subclasses set ``name`` and implement :meth:`infer` (shape and dtype rule) and
    :meth:`evaluate` (the NumPy reference semantics).
    """

    name = "op"
    fed = False  # an input or parameter: a leaf fed by its ``label``, unique in a graph
    dynamic = False  # takes operands with dynamic dimensions (None or a name; dynamic.py)
    # evaluate is a function of the operands alone, so a node whose operands are constants
    # may be folded (graphc.lowering.fold_constants); False for an op drawing randomness
    # or reading state of its own
    pure = True

    def infer(self, inputs: tuple[Tensor, ...]) -> tuple[tuple[int, ...], str]:
        """Output ``(shape, dtype)`` for ``inputs``; raise through :meth:`fail` if invalid."""
        raise TypeError(f"{type(self).__name__} defines no shape rule")

    def evaluate(self, *arrays: np.ndarray) -> np.ndarray:
        """The NumPy reference semantics of the op."""
        raise TypeError(f"{type(self).__name__} defines no NumPy evaluation")

    def is_view(self) -> bool:
        """Whether the node's value is a view of its first operand's storage (reshape,
        transpose, broadcast, basic slicing): passes and backends give it no buffer."""
        return False

    def attrs(self) -> dict:
        """Static attributes shown by the printer."""
        return {k: v for k, v in self.__dict__.items()}

    def key(self) -> str:
        """A stable text identifying the op and its attributes (for digests)."""
        body = ", ".join(f"{k}={v!r}" for k, v in sorted(self.attrs().items()))
        return f"{self.name}({body})"

    def fail(self, detail: str, inputs=(), error=None):
        """Raise a construction error naming this op, the operand shapes and the user line."""
        shapes = ", ".join(f"{t.shape} {t.dtype}" for t in inputs)
        message = f"{self.name}: {detail}" + (f" (operands: {shapes})" if inputs else "")
        raise (error or ShapeError)(located(message))

    def __str__(self) -> str:
        return self.name


_NODES: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_SCOPES: list[str] = []


@contextlib.contextmanager
def scope(name: str):
    """Nodes first built inside ``with gc.scope("layer1"):`` belong to that scope: diagrams
    draw a scope as a cluster (or, with ``collapse=True``, as one node).  Scopes nest as
    ``"outer/inner"``.

    >>> import graphc as gc
    >>> with gc.scope("encoder"):
    ...     h = gc.tanh(gc.input("x", (2,)) * 3.0)
    >>> h.scope
    'encoder'
    """
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"a scope name must be a non-empty string without '/', got {name!r}")
    _SCOPES.append(f"{_SCOPES[-1]}/{name}" if _SCOPES else name)
    try:
        yield _SCOPES[-1]
    finally:
        _SCOPES.pop()


@contextlib.contextmanager
def replaying(node: Tensor):
    """Nodes made inside record ``node``'s user line and scope: a call replayed on new
    shapes (graphc/dynamic.py) builds nodes that belong where the user built ``node``."""
    _REPLAYED.append(node.loc)
    if node.scope:
        _SCOPES.append(node.scope)
    try:
        yield
    finally:
        _REPLAYED.pop()
        if node.scope:
            _SCOPES.pop()


def _no_deferral(op: Op, inputs):
    raise GraphError(located(f"{op.name}: an operand has dynamic dimensions, which need "
                             "graphc.dynamic (import graphc)"))


_MAKE_DEFERRED = _no_deferral


def on_dynamic_operand(make) -> None:
    """Install ``make(op, inputs)``, how :meth:`Tensor.make` makes a node with an operand
    of dynamic shape: graphc/dynamic.py installs its deferred nodes (replayed per feed
    shape), which are built on this module and on the inputs and so cannot live in it."""
    global _MAKE_DEFERRED
    _MAKE_DEFERRED = make


class Tensor:
    """A node of the graph: ``op`` applied to ``inputs``, with a static shape and dtype.

    Tensors are immutable and interned; build them with the functions of :mod:`graphc`
    (``gc.input``, ``gc.exp``, ``a @ b`` ...), change them with :meth:`replace`.
    """

    __slots__ = ("op", "inputs", "shape", "dtype", "loc", "meta", "scope", "display",
                 "_digest", "_leaves", "_dyn", "__weakref__")
    __array_ufunc__ = None  # make ``np_array * tensor`` defer to Tensor.__rmul__

    op: Op
    inputs: tuple[Tensor, ...]
    shape: tuple[int, ...]
    dtype: str

    def __new__(cls, *args, **kwargs):
        raise TypeError("build tensors with gc.input, gc.param, gc.constant and graphc ops")

    @classmethod
    def make(cls, op: Op, inputs=()) -> Tensor:
        """The interned node ``op(*inputs)``, inferring its shape and dtype."""
        inputs = tuple(inputs)
        key = (op, tuple(map(id, inputs)))
        node = _NODES.get(key)
        if node is not None:
            return node
        if not op.dynamic and any(t._dyn for t in inputs):
            return _MAKE_DEFERRED(op, inputs)  # replayed per feed shape (graphc/dynamic.py)
        shape, dtype = op.infer(inputs)
        leaves = _join_leaves(op, inputs)
        node = object.__new__(cls)
        for name, value in (("op", op), ("inputs", inputs), ("shape", tuple(shape)),
                            ("dtype", dtype), ("loc", user_location()), ("meta", None),
                            ("scope", _SCOPES[-1] if _SCOPES else None), ("display", None),
                            ("_digest", None), ("_leaves", leaves),
                            ("_dyn", any(d is None or isinstance(d, str) for d in shape))):
            object.__setattr__(node, name, value)
        if op.fed:
            object.__setattr__(node, "_leaves", {op.label: node})
        _NODES[key] = node
        return node

    @property
    def leaves(self) -> dict[str, Tensor]:
        """The inputs and parameters this node depends on, by name (do not modify)."""
        return self._leaves

    def __setattr__(self, name, value):
        raise AttributeError("Tensor is immutable; use .replace(...) to make a changed copy")

    def __delattr__(self, name):
        raise AttributeError("Tensor is immutable")

    def named(self, name: str) -> Tensor:
        """Give this node a display name for printers and diagrams (``e = (a * b).named("e")``)
        and return it.  Cosmetic: not part of the node's identity."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"a display name must be a non-empty string, got {name!r}")
        object.__setattr__(self, "display", name)
        return self

    def tag(self, record) -> None:
        """Add a provenance record (autodiff: forward node and role) to ``meta``.

        Records are not part of the node's identity.  An interned node can belong to several
        backward graphs (the seed ``1.0`` of every gradient is one node), so ``meta`` is a
        tuple of records; records whose forward node has died are dropped."""
        old = tuple(r for r in (self.meta or ()) if r.alive)
        if record not in old:
            object.__setattr__(self, "meta", old + (record,))

    def replace(self, op: Op | None = None, inputs=None, **attrs) -> Tensor:
        """A node like this one with ``op``, ``inputs`` or op attributes changed."""
        op = op or self.op
        if attrs:
            op = dc_replace(op, **attrs)
        return Tensor.make(op, self.inputs if inputs is None else inputs)

    # -- identity -----------------------------------------------------------------------
    @property
    def digest(self) -> str:
        """A stable structural hash: equal across processes for equal graphs."""
        if self._digest is None:
            h = hashlib.sha1(self.op.key().encode())
            for t in self.inputs:
                h.update(t.digest.encode())
            object.__setattr__(self, "_digest", h.hexdigest())
        return self._digest

    @property
    def name(self) -> str:
        own = self.display or getattr(self.op, "label", None)
        return own if own else f"{self.op.name}_{self.digest[:6]}"

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        if self._dyn:
            raise GraphError(located(f"{self.name} has dynamic dimensions {self.shape}: its "
                                     "size is known only when the compiled function is fed"))
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """The bytes of the node's value (``size`` times the dtype's item size)."""
        return self.size * np.dtype(self.dtype).itemsize

    def __repr__(self) -> str:
        return (f"Tensor(name={self.name!r}, shape={self.shape}, dtype={self.dtype!r}, "
                f"op={self.op.name})")

    def __bool__(self):
        raise TypeError("a graphc Tensor is symbolic and has no truth value; "
                        "use gc.where(cond, a, b) for data-dependent choices")

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        if not isinstance(self.shape[0], int):
            raise TypeError(f"len() of a tensor whose first dimension is dynamic {self.shape}")
        return self.shape[0]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    # Operators are attached in graphc/functions.py, next to the functions they call;
    # Jupyter's display (_repr_mimebundle_) in viz/render.py, which draws it.


_NO_LEAVES: dict = {}


def _join_leaves(op: Op, inputs) -> dict:
    """The name -> leaf mapping of a node made of ``inputs``: raise if two different
    leaves meet under one name.  Mappings are shared, never modified: a join copies only
    when new names meet, and checks only the names of the smaller side."""
    joined = _NO_LEAVES
    for t in inputs:
        other = t._leaves
        if other is joined or not other:
            continue
        big, small = (joined, other) if len(joined) >= len(other) else (other, joined)
        new = None
        for name, leaf in small.items():
            have = big.get(name)
            if have is None:
                new = new or {}
                new[name] = leaf
            elif have is not leaf:
                name_clash(op.name, have, leaf)
        joined = {**big, **new} if new else big
    return joined


def name_clash(what: str, a: Tensor, b: Tensor):
    """Raise the error for two different leaves ``a`` and ``b`` with one name."""
    inits = [getattr(t.op, "init", None) for t in (a, b)]

    def text(t, init):
        kind = "param" if init is not None else "input"
        shown = f" init={init!r}" if kind == "param" and inits[0] != inits[1] else ""
        where = f" made at {t.loc}" if t.loc else ""
        return f"{kind} {t.shape} {t.dtype}{shown}{where}"
    raise GraphError(located(f"{what}: two different inputs are named {a.op.label!r}: "
                             f"{text(a, inits[0])}, and {text(b, inits[1])}; a name is unique "
                             "in a graph"))


def iter_nodes(outputs, known=None) -> list[Tensor]:
    """All nodes reachable from ``outputs``, inputs before users (DFS post-order).
    ``known`` (ids): nodes listed without their inputs (a rewrite's new nodes on a graph
    already visited, in time proportional to the new nodes)."""
    seen: set[int] = set()
    order: list[Tensor] = []
    stack = [(t, False) for t in reversed(list(outputs))]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        if known is not None and id(node) in known:
            order.append(node)
            continue
        stack.append((node, True))
        stack.extend((i, False) for i in reversed(node.inputs) if id(i) not in seen)
    return order


class StaticArray:
    """A read-only NumPy array that hashes and compares by value (for op attributes)."""

    __slots__ = ("array", "_key")

    def __init__(self, value, dtype=None):
        array = np.array(value, dtype=dtype)
        array.setflags(write=False)
        self.array = array
        digest = hashlib.sha1(array.tobytes()).hexdigest()
        self._key = (array.dtype.str, array.shape, digest)

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, StaticArray) and self._key == other._key

    def __repr__(self):  # includes the dtype: Op.key() and digests are built from reprs
        a = self.array
        if a.size <= 6:
            return f"{a.dtype.name}{a.tolist()!r}"  # exact: Python reprs round-trip
        return f"{a.dtype.name}{list(a.shape)}<{self._key[2][:12]}>"
