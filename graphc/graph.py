"""A graph view over outputs: topological order, checks, text printer, networkx export."""

from __future__ import annotations

from functools import cached_property

import numpy as np

from .errors import DTypeError, GraphError
from .inputs import Constant, Input, Traced
from .ir import Tensor, iter_nodes, located


def as_outputs(outputs) -> tuple[Tensor, ...]:
    """``outputs`` (a tensor or a sequence of them) as a tuple, checking the types."""
    try:
        outs = (outputs,) if isinstance(outputs, Tensor) else tuple(outputs)
    except TypeError:  # not iterable: 3.0, None
        raise DTypeError(located("graph outputs must be a graphc Tensor or a sequence of them, "
                                 f"got {type(outputs).__name__}")) from None
    for t in outs:
        if not isinstance(t, Tensor):
            raise DTypeError(located("graph outputs must be a graphc Tensor or a sequence of "
                                     f"them, got a {type(t).__name__} among them"))
    if not outs:
        raise GraphError("a graph needs at least one output")
    return outs


class Graph:
    """The computation that produces ``outputs``: immutable, like its nodes.

    >>> import graphc as gc
    >>> x = gc.input("x", (2,))
    >>> print(gc.Graph(gc.exp(x) * 2))          # doctest: +NORMALIZE_WHITESPACE
    graph(x: f32[2]) {
      exp = exp(x)                 : f32[2]
      mul = mul(exp, 2)            : f32[2]
      return mul
    }
    """

    def __init__(self, outputs, order=None):
        self.outputs = as_outputs(outputs)
        if order is not None:  # a schedule (passes/schedule.py): every node, in this order
            self.nodes = tuple(order)

    @cached_property
    def depth_first(self) -> tuple[Tensor, ...]:
        """Every node, in a deterministic topological order (inputs before users): the
        order names and inputs follow, whatever the schedule."""
        return tuple(iter_nodes(self.outputs))  # a DFS post-order is a topological order

    @cached_property
    def nodes(self) -> tuple[Tensor, ...]:
        """Every node, in the topological order the backends run them: ``depth_first``
        unless the graph was made with a schedule (``order``)."""
        return self.depth_first

    @cached_property
    def inputs(self) -> tuple[Tensor, ...]:
        """Input and parameter leaves, in graph order."""
        return tuple(t for t in self.depth_first if isinstance(t.op, Input))

    @property
    def params(self) -> tuple[Tensor, ...]:
        return tuple(t for t in self.inputs if t.op.is_param)

    def __len__(self) -> int:
        return len(self.nodes)

    def __str__(self) -> str:
        return format_graph(self)

    def __repr__(self) -> str:
        return f"<Graph: {len(self.nodes)} nodes, {len(self.outputs)} output(s)>"

    # Jupyter's display (_repr_mimebundle_) is attached in viz/render.py, which draws it.

    def to_networkx(self):
        """The graph as a ``networkx.MultiDiGraph`` keyed by printer names.

        Node attributes: ``op``, ``shape``, ``dtype``, ``kind`` (input, param, constant,
        op) and ``tensor``; edge attributes: ``index`` (the operand position).
        """
        import networkx as nx  # only here: it costs 0.2-0.3 s to import

        names = node_names(self)
        g = nx.MultiDiGraph(outputs=[names[id(t)] for t in self.outputs])
        for t in self.nodes:
            g.add_node(names[id(t)], op=t.op.name, shape=t.shape, dtype=t.dtype,
                       kind=node_kind(t), tensor=t)
            for k, i in enumerate(t.inputs):
                g.add_edge(names[id(i)], names[id(t)], index=k)
        return g


def node_kind(t: Tensor) -> str:
    if isinstance(t.op, Input):
        return "param" if t.op.is_param else "input"
    return "constant" if isinstance(t.op, Constant) else "op"


def node_names(graph: Graph, known: dict[int, str] | None = None) -> dict[int, str]:
    """The one naming scheme of printers, diagrams, ``check_grad`` and error messages, by
    ``id``: inputs and params by their name; nodes named with ``.named()`` by that name;
    scalar constants by their value (``2``); every other node by its innermost scope and
    op (``fc1.matmul``), or its op alone outside scopes (``exp``).  Names are unique within
    the graph (a repeat gets ``_2``, ``_3`` ... in graph order) and depend only on the
    graph.  ``known``: names already given (a forward graph's, when naming its backward
    graph), kept and reserved.

    >>> import graphc as gc
    >>> x = gc.input("x", (2,))
    >>> with gc.scope("fc1"):
    ...     h = gc.tanh(x * 2.0) + gc.tanh(x)
    >>> sorted(node_names(gc.Graph(h)).values())
    ['2', 'fc1.add', 'fc1.mul', 'fc1.tanh', 'fc1.tanh_2', 'x']
    """
    return _names_in_order(graph.depth_first, known)


def _names_in_order(nodes, known=None) -> dict[int, str]:
    names = dict(known or {})
    taken = set(names.values()) | {t.op.label for t in nodes if isinstance(t.op, Input)}
    # per base, the k of its last name: names are only ever taken, so the first free k
    # never decreases and the search starts there (a scan from 1 was quadratic in repeats)
    last: dict[str, int] = {}
    for t in nodes:
        if id(t) in names:
            continue
        if isinstance(t.op, Input):
            names[id(t)] = t.op.label
            continue
        base = _own_name(t) or _derived_name(t)
        k = last.get(base, 1)
        name = base if k == 1 else f"{base}_{k}"
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        names[id(t)], last[base] = name, k
        taken.add(name)
    return names


def display_name(t: Tensor, graph: Graph | None = None) -> str:
    """``t``'s name as every printer and diagram shows it (see :func:`node_names`), within
    ``graph`` (default: the graph of ``t`` alone)."""
    return node_names(graph if graph is not None else Graph(t))[id(t)]


def _own_name(t: Tensor) -> str | None:
    if isinstance(t.op, Input):
        return t.op.label
    if getattr(t.op, "dynamic", False):  # a deferred call's label names its op, not it
        return t.display
    return t.display or getattr(t.op, "label", None)


def _derived_name(t: Tensor) -> str:
    if isinstance(t.op, Constant):
        a = t.op.value.array
        base = scalar_text(a[()]) if a.ndim == 0 else "const"
    else:
        base = t.op.name
    if t.scope and not (isinstance(t.op, Constant) and t.op.value.array.ndim == 0):
        return f"{t.scope.rsplit('/', 1)[-1]}.{base}"
    return base


def scalar_text(v) -> str:
    """A scalar as people write it: ``2``, ``0.5``, ``1e-05``, ``True``; never ``-0``."""
    v = v.item() if hasattr(v, "item") else v
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    return f"{v + 0.0:.6g}"  # + 0.0 turns -0.0 into 0.0


_SHORT = {"float32": "f32", "float64": "f64", "int32": "i32", "int64": "i64", "bool": "bool"}


def type_text(t: Tensor) -> str:
    return f"{_SHORT[t.dtype]}[{','.join(map(str, t.shape))}]"


def _attr_text(value) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def format_graph(graph) -> str:
    """Deterministic text form of a graph: one line per node, SSA style, every node named
    as diagrams name it (:func:`node_names`; scalar constants inline), with shapes and
    dtypes.  A scan's body follows its first output's line, indented: its placeholders
    with what feeds them (``xs[t]``: step t's slice), its nodes, and what it returns.

    >>> import graphc as gc
    >>> W = gc.input("W", (2, 2))
    >>> h, hs = gc.scan(lambda h, x: (gc.tanh(h @ W + x),) * 2, gc.input("h0", (1, 2)),
    ...                 gc.input("xs", (3, 1, 2)))
    >>> print(gc.Graph([h, hs]))                # doctest: +NORMALIZE_WHITESPACE
    graph(h0: f32[1,2], xs: f32[3,1,2], W: f32[2,2]) {
      scan = scan(h0, xs, W, out=carry0, length=3, reverse=False, truncate=None) : f32[1,2]
        body of scan, 3 steps {
          carry scan.carry0: f32[1,2] = h0
          x scan.x0: f32[1,2] = xs[t]
          const scan.const0: f32[2,2] = W
          matmul = matmul(scan.carry0, scan.const0) : f32[1,2]
          add = add(matmul, scan.x0)     : f32[1,2]
          tanh = tanh(add)               : f32[1,2]
          return carry tanh; ys tanh
        }
      scan_2 = scan(h0, xs, W, out=y0, length=3, reverse=False, truncate=None) : f32[3,1,2]
      return scan, scan_2
    }
    """
    graph = graph if isinstance(graph, Graph) else Graph(graph)
    names = node_names(graph)
    header = []
    for t in graph.inputs:
        tag = f" param({t.op.init if isinstance(t.op.init, str) else 'custom'})" \
            if t.op.is_param else ""
        header.append(f"{t.op.label}: {type_text(t)}{tag}")
    lines = [f"graph({', '.join(header)}) {{"]
    lines += _node_lines(graph, names, "  ")
    lines.append(f"  return {', '.join(names[id(t)] for t in graph.outputs)}")
    lines.append("}")
    return "\n".join(lines)


def _node_lines(graph: Graph, names, indent: str) -> list[str]:
    lines, shown = [], set()
    for t in graph.nodes:
        if isinstance(t.op, Input) or _inlined(t, names):
            continue
        if isinstance(t.op, Constant):
            body = f"constant {_constant_text(t.op.value.array)}"
        else:
            attrs = ", ".join(f"{k}={_attr_text(v)}" for k, v in t.op.attrs().items())
            args = ", ".join(names[id(i)] for i in t.inputs)
            body = f"{t.op.name}({args}{', ' if attrs and args else ''}{attrs})"
        lines.append(f"{indent}{names[id(t)] + ' = ' + body:<29} : {type_text(t)}")
        loop = getattr(t.op, "loop", None)  # a gc.scan node (graph.py sits below scan.py)
        run = (loop,) + tuple(map(id, t.inputs))  # its run: scan.instance_key
        if loop is not None and run not in shown:  # one body per run
            shown.add(run)
            lines += _loop_lines(t, names, indent + "  ")
    return lines


def _loop_lines(t: Tensor, names, indent: str) -> list[str]:
    """The body of scan node ``t``: placeholders and what feeds them, nodes, outputs."""
    loop = t.op.loop
    n_c, n_x = len(loop.carry), len(loop.xs)
    order = ", reverse" if loop.reverse else ""
    lines = [f"{indent}body of {names[id(t)]}, {loop.length} steps{order} {{"]
    inner = indent + "  "
    for k, (p, outer) in enumerate(zip(loop.params, t.inputs)):
        role = "carry" if k < n_c else "x" if k < n_c + n_x else "const"
        fed = f"{names[id(outer)]}[t]" if role == "x" else names[id(outer)]
        lines.append(f"{inner}{role} {p.op.label}: {type_text(p)} = {fed}")
    body_names = node_names(loop.graph)
    lines += _node_lines(loop.graph, body_names, inner)
    carry = ", ".join(body_names[id(c)] for c in loop.new_carry)
    ys = ", ".join(body_names[id(y)] for y in loop.ys)
    lines.append(f"{inner}return carry {carry or '()'}; ys {ys or '()'}")
    lines.append(f"{indent}}}")
    return lines


def _inlined(t: Tensor, names) -> bool:
    """A scalar constant named by its value needs no line of its own."""
    return (isinstance(t.op, Constant) and t.op.value.array.ndim == 0
            and names[id(t)] == scalar_text(t.op.value.array[()]))


def _constant_text(a: np.ndarray) -> str:
    if a.ndim == 0:
        return str(a[()])
    if a.size <= 6:
        return np.array2string(a, separator=", ").replace("\n", "")
    return f"<{a.size} values, mean {a.mean():.4g}>"


def leaked(nodes) -> list[str]:
    """What is wrong with each node of ``nodes`` made inside a scan's body and kept after
    the scan returned (a placeholder fn was traced on)."""
    return [f"{t.op.label.split('~')[0]} is made inside the body of a scan (the scan at "
            f"{t.loc}) and was kept after it returned; a body's tensors exist only inside "
            "it: return it as a carry or y of that scan"
            for t in nodes if isinstance(t.op, Traced)]


def check_graph(graph) -> Graph:
    """Check that a graph is well formed; raise :class:`GraphError` listing every problem.

    Checks: no cycles; a schedule (``Graph(outputs, order)``) runs every node once, after
    its inputs; every node's shape and dtype are what its op infers from its inputs; input
    names are unique; constants hold arrays of their declared type.
    Returns the :class:`Graph` so passes can write ``return check_graph(out)``.
    """
    graph = graph if isinstance(graph, Graph) else Graph(graph)
    problems = []
    dfs = graph.depth_first
    position = {id(t): k for k, t in enumerate(dfs)}
    for t in dfs:  # immutable nodes cannot form a cycle; a node built by hand could
        late = [i.name for i in t.inputs if position[id(i)] >= position[id(t)]]
        if late:
            problems.append(f"cycle: {t.name} is an input of its own input(s) {late}")
    names = _names_in_order(dfs)
    if graph.nodes is not dfs:
        problems += _order_problems(graph.nodes, dfs, names)
    seen: dict[str, Tensor] = {}
    for t in dfs:
        problems += leaked([t])
        if isinstance(t.op, Input):
            other = seen.setdefault(t.op.label, t)
            if other is not t:
                problems.append(f"input name {t.op.label!r} is used by two different inputs: "
                                f"{type_text(other)} and {type_text(t)}")
        try:
            shape, dtype = t.op.infer(t.inputs)
        except GraphError as err:
            problems.append(f"{names[id(t)]}: {str(err).splitlines()[0]}")
            continue
        if (tuple(shape), dtype) != (t.shape, t.dtype):
            problems.append(f"{names[id(t)]}: recorded {t.shape} {t.dtype} but {t.op.name} infers "
                            f"{tuple(shape)} {dtype}")
    if problems:
        raise GraphError("graph check failed:\n  " + "\n  ".join(problems))
    return graph


def _order_problems(order, dfs, names) -> list[str]:
    """What is wrong with a schedule ``order`` of the nodes ``dfs``: a node missing, extra
    or repeated, or run before one of its inputs."""
    if len(order) != len(dfs) or {id(t) for t in order} != {id(t) for t in dfs}:
        return [f"schedule: {len(order)} nodes ({len({id(t) for t in order})} distinct) "
                f"are not the graph's {len(dfs)} nodes"]
    position = {id(t): k for k, t in enumerate(order)}
    return [f"schedule: {names[id(t)]} runs before its input {names[id(i)]}" for t in order
            for i in t.inputs if position[id(i)] >= position[id(t)]][:5]


def to_networkx(outputs):
    """``Graph(outputs).to_networkx()``."""
    return Graph(outputs).to_networkx()
