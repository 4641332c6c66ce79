"""What every backend's lowering shares, written once (it imports no backend and no Numba).

- **Naming**: :func:`var_names`, one variable per node, the same in every backend's
  generated source; built from :func:`graphc.graph.node_names`, the scheme of the text
  printer, diagrams and error messages (``fc1.matmul`` is ``v6_fc1_matmul``).
- **Step emission**: :func:`describe` and :func:`step_line`, the comment and statement that
  stand for one node in generated source.
- **Constant folding**: :func:`fold_value` and :func:`fold_constants` with one purity test
  (``Op.pure``) and one size limit (:data:`FOLD_LIMIT_BYTES`), used by the ``simplify``
  pass and by the Numba and CUDA backends.
- **Operand kinds**: :func:`broadcast_pattern` (and :func:`split_kinds`, :func:`flat_kinds`),
  how each operand of an elementwise or fused node is read over the loop of its output.
- **Fused group instances**: :func:`instance_key` and :func:`group_order`.

The buffer plan is the ``memory`` pass's :func:`graphc.passes.memory.plan`.

>>> import graphc as gc
>>> x = gc.input("x", (2, 3))
>>> with gc.scope("fc1"):
...     y = gc.exp(x) * 2.0
>>> g = gc.Graph(y)
>>> sorted(var_names(g).values())
['in0_x', 'v1_fc1_exp', 'v2_2', 'v3_fc1_mul']
>>> broadcast_pattern((2, 3), [(2, 3), (3,), ()])
('FRS', [2, 3])
"""

from __future__ import annotations

import re

import numpy as np

from .errors import GraphError
from .fused_ops import Fused
from .graph import Graph, node_names, type_text
from .inputs import Constant, Input
from .ir import Tensor, located
from .shape_ops import BroadcastTo

# A constant subexpression whose (contiguous base) value is larger than this is computed
# at run time instead of being kept with the graph or the compiled program.
FOLD_LIMIT_BYTES = 8 << 20


# ---------------------------------------------------------------------------------------
# Naming and step emission


def comment(text) -> str:
    """``text`` made safe for a ``#`` comment: ASCII, no line breaks or control chars."""
    text = str(text).encode("ascii", "backslashreplace").decode("ascii")
    return "".join(ch if 32 <= ord(ch) < 127 else f"\\x{ord(ch):02x}" for ch in text)


def identifier(text) -> str:
    """``text`` as a safe ASCII identifier fragment, never truncated: the dots, signs and
    spaces of printed names (``fc1.matmul``, ``-0.5``) become underscores, and of other
    text only the leading letters, digits and underscores are kept (a custom op named
    ``"f\\nimport os"`` is ``f``: user text that is not a name stays in comments)."""
    out = re.match(r"[A-Za-z0-9_]*", re.sub(r"[.+\- ]", "_", str(text))).group()
    return out if out and not out[0].isdigit() else f"_{out}"


def var_names(graph: Graph, printed: dict[int, str] | None = None) -> dict[int, str]:
    """The variable of every node of ``graph`` in generated source, by ``id``:
    ``in<k>_<name>`` for inputs, ``v<k>_<name>`` for the node the text printer calls
    ``name``, ``k`` its position in ``graph.nodes``: identifiers made here, never user
    text alone."""
    printed = node_names(graph) if printed is None else printed
    names = {}
    for k, t in enumerate(graph.nodes):
        if isinstance(t.op, Input):
            names[id(t)] = f"in{k}_{identifier(t.op.label)}"
        else:
            names[id(t)] = f"v{k}_{identifier(printed[id(t)]).lstrip('_')}"
    return names


def describe(t: Tensor, printed: dict[int, str]) -> str:
    """The node as the text printer shows it (``fc1.add = add(fc1.matmul, b) : f32[4]``),
    for the comment a backend writes with the node's statements."""
    args = ", ".join(printed[id(i)] for i in t.inputs)
    return comment(f"{printed[id(t)]} = {t.op.name}({args}) : {type_text(t)}")


def step_line(t: Tensor, call: str, names: dict[int, str], printed: dict[int, str],
              note: str = "") -> str:
    """One node as one statement: ``v3_add = call(v1_x, v2_y)  # add = add(x, y) : f32[4]``."""
    args = ", ".join(names[id(i)] for i in t.inputs)
    return f"{names[id(t)]} = {call}({args})  # {describe(t, printed)}{note}"


def failed(t: Tensor, printed: dict[int, str], detail) -> GraphError:
    """The error of node ``t`` failing at run time, on any backend: its op, its name as the
    printer shows it and the user's line."""
    return GraphError(located(f"{t.op.name} ({printed[id(t)]}) failed at run time: {detail}",
                              t.loc))


# ---------------------------------------------------------------------------------------
# Constant folding


def foldable(t: Tensor) -> bool:
    """Whether ``t`` may be replaced by its value once its operands are known: a pure op
    (``Op.pure``: its value is a function of its operands alone) with operands."""
    return bool(t.inputs) and t.op.pure


def fold_value(t: Tensor, values: list) -> np.ndarray | None:
    """``t``'s value from its operands' ``values`` by the reference semantics, or None
    where it is not folded: the evaluation fails (left to run time, which reports it), or
    its contiguous base (a broadcast result keeps its zero strides) is over
    FOLD_LIMIT_BYTES."""
    try:
        with np.errstate(all="ignore"):
            out = np.asarray(t.op.evaluate(*values))
    except Exception:  # noqa: BLE001 -- left to run time, which reports it
        return None
    if out.dtype.name != t.dtype:
        out = out.astype(t.dtype)
    if out.shape != t.shape or base_of(out).nbytes > FOLD_LIMIT_BYTES:
        return None
    return out


def base_of(array: np.ndarray) -> np.ndarray:
    """The contiguous data behind a broadcast ``array`` (its zero-stride axes of size 1),
    or ``array`` itself."""
    if array.ndim and array.size and 0 in array.strides:
        return np.ascontiguousarray(array[tuple(slice(0, 1) if s == 0 else slice(None)
                                                for s in array.strides)])
    return array


def fold_constants(nodes) -> dict[int, np.ndarray]:
    """Values, by ``id``, of the nodes of ``nodes`` (in topological order) that depend on
    no input and pass :func:`foldable` and :func:`fold_value`."""
    values: dict[int, np.ndarray] = {}
    for t in nodes:
        if isinstance(t.op, Constant):
            values[id(t)] = t.op.value.array
        elif foldable(t) and all(id(i) in values for i in t.inputs):
            out = fold_value(t, [values[id(i)] for i in t.inputs])
            if out is not None:
                values[id(t)] = out
    return values


# ---------------------------------------------------------------------------------------
# Operand kinds

_PAIR = {("f", "f"): "F", ("b", "b"): "S", ("b", "f"): "R", ("f", "b"): "C"}


def _columns(out_shape, shapes) -> tuple[list[tuple], list[int]]:
    """The output's axes of size > 1, adjacent ones where every operand is either broadcast
    or not merged: per merged axis, each operand's flag (``f`` full, ``b`` broadcast) and
    the axis size."""
    nd = len(out_shape)
    padded = [(1,) * (nd - len(s)) + tuple(s) for s in shapes]
    columns, sizes = [], []
    for d in range(nd):
        if out_shape[d] == 1:
            continue
        flags = tuple("b" if p[d] == 1 else "f" for p in padded)
        if columns and columns[-1] == flags:
            sizes[-1] *= out_shape[d]
        else:
            columns.append(flags)
            sizes.append(out_shape[d])
    return columns, sizes


def broadcast_pattern(out_shape, shapes) -> tuple[str, list[int]]:
    """Operand kinds and loop sizes for an output of ``out_shape`` read from operands of
    ``shapes``: F (full: read at the output's index), S (scalar), and over an (outer,
    inner) loop R (a row: varies along the inner axes only) and C (a column: the outer).

    Size-1 output axes are dropped and adjacent axes where every operand is either
    broadcast or not are merged; one merged axis gives a 1-D loop (F/S), two an (outer,
    inner) loop (F/S/R/C).  More than two: every operand is F over the flat output (the
    caller materializes those that are smaller)."""
    columns, sizes = _columns(out_shape, shapes)
    if not columns:
        return "S" * len(shapes), [1]
    if len(columns) == 1:
        return "".join("F" if f == "f" else "S" for f in columns[0]), sizes
    if len(columns) == 2:
        return "".join(_PAIR[(a, b)] for a, b in zip(*columns)), sizes
    size = int(np.prod(out_shape, dtype=np.int64))
    return "F" * len(shapes), [size]


def flat_kinds(out_shape, shapes) -> str:
    """Operand kinds over the flat loop of an output of ``out_shape``, for a backend that
    reads operands through strides: F (read at the output's flat index), S (one element)
    and B (broadcast along some axes only: read through its strides), from the merged
    axes of :func:`broadcast_pattern`.

    >>> flat_kinds((2, 3, 4), [(2, 3, 4), (3, 1), (), (1, 3, 4)])
    'FBSB'
    """
    columns, _ = _columns(out_shape, shapes)
    flags = [{c[k] for c in columns} for k in range(len(shapes))]
    return "".join("F" if f == {"f"} else "B" if len(f) == 2 else "S" for f in flags)


def static_base_shape(folded: dict, t: Tensor) -> tuple:
    """The shape of the contiguous data behind ``t``, given the ``folded`` values: a chain
    of broadcasts, and a folded broadcast constant, is read from its small base (the
    shapes :func:`broadcast_pattern` classifies)."""
    while isinstance(t.op, BroadcastTo) and id(t) not in folded:
        t = t.inputs[0]
    array = folded.get(id(t))
    if array is not None and array.ndim and array.size and 0 in array.strides:
        return tuple(1 if s == 0 else d for s, d in zip(array.strides, array.shape))
    return t.shape


def split_kinds(shape, shapes, lead: int):
    """Operand kinds with ``shape`` seen as (prod of the first ``lead`` axes, prod of the
    rest): F, S, R, C, or None for an operand that varies along part of a side only."""
    nd = len(shape)
    kinds = []
    for s in shapes:
        p = (1,) * (nd - len(s)) + tuple(s)

        def side(axes, p=p):
            dims = [d for d in axes if shape[d] != 1]
            if all(p[d] == shape[d] for d in dims):
                return "f"
            return "b" if all(p[d] == 1 for d in dims) else None
        outer, inner = side(range(lead)), side(range(lead, nd))
        kinds.append(None if outer is None or inner is None else _PAIR[(outer, inner)])
    sizes = [int(np.prod(shape[:lead], dtype=np.int64)),
             int(np.prod(shape[lead:], dtype=np.int64))]
    return kinds, sizes


# ---------------------------------------------------------------------------------------
# Fused group instances


def instance_key(t: Tensor) -> tuple:
    """Fused nodes with one group and the same inputs are outputs of one computation."""
    return (t.op.group,) + tuple(map(id, t.inputs))


def run_key(t: Tensor) -> tuple | None:
    """What one computation of ``t`` gives with it: the key of its fused group instance
    (one kernel) or of its scan run (one loop; known, as to the interpreter, by
    ``evaluate_outputs`` and one ``joint_key``), else None."""
    if isinstance(t.op, Fused):
        return ("fused",) + instance_key(t)
    if hasattr(t.op, "evaluate_outputs"):
        return ("joint", t.op.joint_key) + tuple(map(id, t.inputs))
    return None


def group_order(nodes) -> list[Tensor]:
    """``nodes`` in a topological order where the outputs of each fused group instance
    and of each scan run are adjacent (they share their inputs, so the first can compute
    them all: :func:`run_key`)."""
    keys = {id(t): run_key(t) for t in nodes}
    members: dict[tuple, list] = {}
    for t in nodes:
        if keys[id(t)] is not None:
            members.setdefault(keys[id(t)], []).append(t)
    order, placed = [], set()
    for t in nodes:
        if id(t) in placed:
            continue
        for m in members.get(keys[id(t)]) or (t,):
            order.append(m)
            placed.add(id(m))
    return order
