"""``gc.render``: forward and backward graphs drawn with Graphviz, every backward edge
labelled with its upstream, local and downstream gradients (symbolic, and numbers when
values are given)."""

from __future__ import annotations

import html
import os
import pathlib

import graphviz
import numpy as np
from graphc.passes.autodiff import backward as build_backward
from graphc.passes.autodiff import provenance

from graphc import dtypes
from graphc.compiler import compile
from graphc.dynamic import at_feed_shapes
from graphc.errors import FeedError, GraphError, RenderError
from graphc.gradcheck import GradCheckReport
from graphc.graph import Graph, as_outputs, format_graph, leaked, node_kind, node_names
from graphc.inputs import Constant, Input, constant
from graphc.ir import Tensor, located

from . import labels
from .labels import (
    call_lines,
    count,
    formula,
    index_text,
    number,
    shorten,
    template,
    unique,
    value_lines,
)
from .layout import layout
from .loops import ScanDrawing, body_values, instances, is_scan

LINE = 90  # characters in an edge label's line
AUTO_COLLAPSE = 100  # nodes above which render(collapse=None) draws each layer as one box
FORMATS = (".svg", ".png", ".pdf", ".dot")

_STYLE = {  # kind -> node attributes
    "input": dict(shape="box", style="rounded,filled", fillcolor="#dbeafe", color="#1d4ed8"),
    "param": dict(shape="box", style="filled", fillcolor="#fef3c7", color="#b45309"),
    "constant": dict(shape="box", style="filled", fillcolor="#f3f4f6", color="#9ca3af",
                     fontsize="9"),
    "op": dict(shape="box", style="rounded", color="#374151"),
}
_ROLE_COLOR = {"upstream": "#2563eb", "local": "#059669", "downstream": "#dc2626"}
_FAIL = "#dc2626"


class Diagram:
    """A rendered graph: ``source`` (DOT text), ``svg()``, ``save(path)``; displays itself
    in Jupyter."""

    def __init__(self, dot: graphviz.Digraph, path: str | None = None):
        self.dot = dot
        self.path = path

    @property
    def source(self) -> str:
        return self.dot.source

    def pipe(self, fmt: str) -> bytes:
        return layout(self.dot.engine, self.source, fmt)

    def svg(self) -> str:
        return self.pipe("svg").decode()

    def save(self, path) -> str:
        path = str(path)
        suffix = pathlib.Path(path).suffix.lower()
        if suffix not in FORMATS:
            raise RenderError(f"cannot render to {path!r}: use one of {', '.join(FORMATS)}")
        data = self.source.encode() if suffix == ".dot" else self.pipe(suffix[1:])
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except OSError as err:  # name the user's path, not the temporary file's
            raise RenderError(f"cannot write {path}: {err.strerror}") from None
        self.path = path
        return path

    def _repr_svg_(self) -> str:
        return self.svg()

    def _repr_mimebundle_(self, include=None, exclude=None):  # HTML first: scaled to width
        svg = self.svg()
        return {"text/html": html_svg(svg), "image/svg+xml": svg, "text/plain": repr(self)}

    def __repr__(self) -> str:
        return f"<Diagram{' ' + self.path if self.path else ''}>"


def html_svg(svg: str) -> str:
    """Graphviz's SVG for an HTML page: no XML prolog, and scaled down to the page's width
    (its ``viewBox`` keeps the proportions), so a wide graph is not clipped in a notebook or
    its HTML export."""
    start = svg.index("<svg")
    return f'<svg style="max-width:100%;height:auto"{svg[start + 4:]}'


# ---------------------------------------------------------------------------------------
# Jupyter's display of a Graph and a Tensor: attached here, where diagrams are drawn (the IR
# below knows nothing of drawing), as graphc/functions.py attaches the operators.

MAX_DRAWN = 400  # nodes; a bigger graph shows its text form only (dot would take long)


def rich_display(graph: Graph, title: str) -> dict[str, str]:
    """Jupyter's mime bundle for a graph: ``text/plain`` is its text form; ``text/html``
    the diagram (scaled to the notebook's width) and the text form below it."""
    text = format_graph(graph)
    page = (f"<details><summary><code>{html.escape(title)}</code>: text form</summary>"
            f"<pre>{html.escape(text)}</pre></details>")
    if len(graph) > MAX_DRAWN:
        note = f"{len(graph)} nodes: too many to draw here; gc.render(outputs, path) draws them"
        return {"text/plain": text, "text/html": f"<p>{note}</p>{page}"}
    try:
        picture = html_svg(render(graph.outputs).svg())
    except RenderError as err:  # no Graphviz: the text form alone
        picture = f"<p>{html.escape(str(err))}</p>"
    return {"text/plain": text,
            "text/html": f'<div style="max-width:100%;overflow-x:auto">{picture}</div>{page}'}


def _graph_display(self, include=None, exclude=None):
    """Jupyter: the text form, and the diagram above it."""
    return rich_display(self, repr(self))


def _tensor_display(self, include=None, exclude=None):
    """Jupyter: the diagram of the graph computing this tensor, and its text form."""
    return {**rich_display(Graph(self), repr(self)), "text/plain": repr(self)}


Graph._repr_mimebundle_ = _graph_display
Tensor._repr_mimebundle_ = _tensor_display


# ---------------------------------------------------------------------------------------


class _Builder:
    """Builds the DOT graph for one call of :func:`render`."""

    def __init__(self, outputs, values, check, collapse, direction=None):
        self.outputs = outputs
        self.graph = Graph(outputs)
        if leaked(self.graph.nodes):
            raise GraphError(located(leaked(self.graph.nodes)[0]))
        self.names = node_names(self.graph)
        self.scan_names: dict = {}  # each scan body's names (loops.ScanDrawing)
        self.values = values  # id(node) -> array, or None
        if check is not None and not isinstance(check, GradCheckReport):
            raise TypeError(f"check must be a gc.check_grad report, got "
                            f"{type(check).__name__}")
        self.check = check
        self.top, self.collapse = _collapse_level(self.graph, collapse)
        self.direction = direction or ("LR" if self.collapse is not None
                                       else _direction(self.graph))
        self.dot = graphviz.Digraph("graphc", graph_attr=dict(
            rankdir=self.direction, fontname="Helvetica", fontsize="11", nodesep="0.25",
            ranksep="0.45", newrank="true"),
            node_attr=dict(fontname="Helvetica", fontsize="10"),
            edge_attr=dict(fontname="Helvetica", fontsize="9", color="#6b7280"))
        if self.collapse is not None and collapse is None:
            self.dot.attr(label=f"{len(self.graph.nodes)} nodes: each layer (gc.scope) is "
                          "drawn as one box; render(..., collapse=False) draws every node",
                          labelloc="t", fontcolor="#6d28d9")
        failed = {r.name for r in check.rows if not r.ok} if check else set()
        self.failed_inputs = failed
        self.failed_edges = {(id(e.node), e.operand) for e in check.bad_edges} if check \
            else set()
        self.node_ids: dict[int, str] = {}
        self.scans: list[ScanDrawing] = []  # the scans drawn as clusters (add_forward)
        self.into: dict[int, list] = {}  # id(x) -> backward edges arriving at x
        self._users: dict[int, list] | None = None  # users()
        self.lname = outputs[0].display or "L"  # the differentiated output, in labels

    def set_backward(self, result):
        for e in result.edges:
            self.into.setdefault(id(e.forward.inputs[e.operand]), []).append(e)

    # -- names and groups -----------------------------------------------------------
    def name(self, t: Tensor) -> str:
        return self.names.get(id(t), t.name)

    def group(self, t: Tensor) -> str | None:
        """The scope a node is drawn in when collapsing: the outermost one below the scopes
        that hold every scoped node (``fc1`` in ``mlp/fc1``, not the whole ``mlp``), or
        ``collapse`` levels below them, or the node's own scope where that is shallower."""
        if self.collapse is None or not t.scope:
            return None
        parts = t.scope.split("/")
        return "/".join(parts[:self.collapse + 1]) if len(parts) > self.top else None

    def hidden(self, t: Tensor) -> bool:
        """Collapsed diagrams leave out scalar constants: interned, one of them (batch
        norm's eps) is shared by every layer and would tie them all to the first."""
        return self.collapse is not None and isinstance(t.op, Constant) and not t.shape

    def dot_id(self, t: Tensor) -> str:
        g = self.group(t)
        return f"scope_{g}" if g else self.node_ids[id(t)]

    # -- forward --------------------------------------------------------------------
    def node_label(self, t: Tensor, grad=None, names=None) -> str:
        """``t``'s box: op, name, shape, value (and gradient); ``names``: the names of the
        graph ``t`` is in, when it is not the outer graph (a scan's body)."""
        kind = node_kind(t)
        shape = f"{_shape(t)} {t.dtype}"
        names = self.names if names is None else names
        name = names.get(id(t), t.name)
        if is_scan(t):
            kind_, i = t.op.out
            what = {"carry": "final carry", "y": "ys", "cin": "carries in",
                    "node": "per step: body node"}[kind_]
            lines = [f"scan: {what} {i}", f"{name}: {shape}"]
        elif kind in ("input", "param"):
            lines = [f"{kind} {name}", shape]
            if kind == "param":
                lines.append(count(t.size, "param"))
        elif kind == "constant":
            lines = [f"const {number(t.op.value.array, 40)}", shape]
        elif t.op.name == "index":  # lstm.add[:, 12:16]
            x = t.inputs[0]
            lines = [shorten(names.get(id(x), x.name) + index_text(t.op.index), 40),
                     f"{name}: {shape}"]
        else:
            attrs = [f"{k}={v}" for k, v in t.op.attrs().items() if k != "dtype"]
            lines = call_lines(t.op.name, attrs) if attrs else \
                [] if name.rsplit(".", 1)[-1].split("_")[0] == t.op.name else [t.op.name]
            lines.append(f"{name}: {shape}")
        if self.values is not None and id(t) in self.values and kind != "constant":
            lines += value_lines(self.values[id(t)])
        if grad is not None and self.values is not None and id(grad) in self.values:
            lines.append(f"∂{self.lname}/∂{name}")
            lines += value_lines(self.values[id(grad)])
        return labels.dot_text(lines)

    def style(self, t: Tensor) -> dict:
        return dict(_STYLE[node_kind(t)])

    def add_forward(self, grads=None):
        clusters: dict[str, graphviz.Digraph] = {}
        for k, t in enumerate(self.graph.nodes):
            self.node_ids[id(t)] = f"n{k}"
        groups: dict[str, list[Tensor]] = {}
        copied = self._copied_constants()
        for t in self.graph.nodes:
            g = self.group(t)
            if self.hidden(t) or id(t) in copied:
                continue
            if g:
                groups.setdefault(g, []).append(t)
                continue
            attrs = dict(_STYLE[node_kind(t)])
            if any(t is o for o in self.outputs):
                attrs.update(peripheries="2", color="#15803d", penwidth="1.6")
            if isinstance(t.op, Input) and t.op.label in self.failed_inputs:
                attrs.update(fillcolor="#fecaca", color=_FAIL, penwidth="2")
            if any((id(t), k) in self.failed_edges for k in range(len(t.inputs))):
                attrs.update(color=_FAIL, penwidth="2")
            grad = grads.get(id(t)) if grads else None
            # leaves outside the boxes: a param inside would stretch its layer's box up to
            # the previous layer's ranks and push the layers into a staircase
            target = self._cluster(clusters, t.scope) if t.scope and t.inputs else self.dot
            target.node(self.node_ids[id(t)], self.node_label(t, grad), **attrs)
        for g, members in groups.items():
            params = sum(t.size for t in members if node_kind(t) == "param")
            ops = sum(1 for t in members if node_kind(t) == "op")
            text = labels.dot_text([g.rsplit("/", 1)[-1], count(params, "param"), count(ops, "op")])
            self.dot.node(f"scope_{g}", text, shape="box3d", style="filled", fillcolor="#ede9fe",
                          color="#6d28d9")
        self.scans = [ScanDrawing(self, nodes, k) for k, nodes in
                      enumerate(instances(self.graph.nodes)) if not self.group(nodes[0])]
        for drawing in self.scans:
            scope = drawing.outputs[0].scope
            drawing.draw(self._cluster(clusters, scope) if scope else self.dot)
        for t in self.graph.nodes:  # a copied constant: a box beside each user, in its box
            for x in {id(x): x for x in t.inputs if id(x) in copied}.values():
                target = self._cluster(clusters, t.scope) if t.scope and \
                    not self.group(t) else self.dot
                target.node(f"{self.dot_id(x)}_{self.dot_id(t)}", self.node_label(x),
                            **_STYLE["constant"])
        for parent, sub in sorted(clusters.items(), key=lambda kv: -kv[0].count("/")):
            self._attach(clusters, parent, sub)
        seen = set()
        for t in self.graph.nodes:
            if is_scan(t) and not self.group(t):
                continue  # its inputs feed the drawn body (ScanDrawing)
            for k, x in enumerate(t.inputs):
                a, b = self.dot_id(x), self.dot_id(t)
                if a == b or (a, b, k) in seen or self.hidden(x):
                    continue
                seen.add((a, b, k))
                if id(x) in copied:  # its own copy beside each user (drawn above)
                    a = f"{a}_{b}"
                attrs = {"color": _FAIL, "penwidth": "2"} \
                    if (id(t), k) in self.failed_edges and not grads else {}
                self.dot.edge(a, b, **attrs)

    def _copied_constants(self) -> set[int]:
        """The scalar constants drawn once beside each user: interned, one of them (a 0.5
        in every layer) would be one box wired across the whole picture.  Not those a
        scan's drawn body reads (it draws its own edges); none when collapsing (scalar
        constants are not drawn then, :meth:`hidden`)."""
        if self.collapse is not None:
            return set()
        users = self.users()
        return {id(t) for t in self.graph.nodes if isinstance(t.op, Constant) and
                not t.shape and len(users.get(id(t), ())) > 1 and
                not any(is_scan(z) for z in users[id(t)])}

    def users(self) -> dict[int, list[Tensor]]:
        """id(node) -> the nodes that read it (once per operand), made once."""
        if self._users is None:
            self._users = {}
            for z in self.graph.nodes:
                for x in z.inputs:
                    self._users.setdefault(id(x), []).append(z)
        return self._users

    def _cluster(self, clusters, scope: str) -> graphviz.Digraph:
        if scope not in clusters:
            clusters[scope] = graphviz.Digraph(
                f"cluster_{len(clusters)}", graph_attr=dict(
                    label=labels.dot_text([scope.split("/")[-1]]), style="rounded,dashed",
                    color="#7c3aed", fontcolor="#6d28d9"))
            if "/" in scope:
                self._cluster(clusters, scope.rsplit("/", 1)[0])
        return clusters[scope]

    def _attach(self, clusters, scope, sub):
        parent = scope.rsplit("/", 1)[0] if "/" in scope else None
        (clusters[parent] if parent else self.dot).subgraph(sub)

    # -- backward -------------------------------------------------------------------
    def upstream_name(self, z, loss) -> str:
        """∂L/∂z in formulas: ``1`` at the loss itself (so no label defines itself)."""
        return "1" if z is loss else f"∂{self.lname}/∂{self.name(z)}"

    def local_formula(self, e) -> str:
        z, x = e.forward, e.forward.inputs[e.operand]
        op = labels.elementwise_op(z)
        if op is not None:
            fn = op.fn
            syms = {a: self.name(t) for a, t in zip(fn.args, z.inputs)}
            syms.update({fn.out: self.name(z)} | {s: str(v) for s, (_, v) in
                                                   zip(fn.param_symbols, op.params)})
            return formula(fn.derivatives[e.operand], syms)
        return template(e.local_formula, **self._names(z, x, self.outputs[0]))

    def downstream_formula(self, e, loss) -> str:
        """dL/dx through edge ``e`` as a formula (the chain rule, local × upstream)."""
        z, x = e.forward, e.forward.inputs[e.operand]
        if labels.elementwise_op(z) is not None:
            local = f"∂{self.name(z)}/∂{self.name(x)}"
            if z is loss:  # ∂L/∂x = ∂L/∂x · 1 would read as defining itself
                local = self.local_formula(e)
                local = f"({local})" if " " in local else local
            down = f"{local} · {self.upstream_name(z, loss)}"
            return f"Σ over broadcast axes of ({down})" if x.shape != z.shape else down
        names = self._names(z, x, loss)
        if e.siblings:  # a loop's outputs: one reverse scan carries all their gradients back
            gs = [names["g"]] + [self.upstream_name(m, loss) for m, _ in e.siblings]
            names["g"] = f"({', '.join(gs)})"
        return template(e.vjp_text, **names)

    def _names(self, z, x, loss) -> dict:
        return dict(g=self.upstream_name(z, loss), x=self.name(x), y=self.name(z),
                    a=self.name(z.inputs[0]), b=self.name(z.inputs[-1]))

    def upstream_formula(self, z, loss) -> str:
        """dL/dz: 1 at the loss, else the sum of the downstream gradients of z's users."""
        if z is loss:
            return "1"
        return " + ".join(self.downstream_formula(e, loss) for e in self.into.get(id(z), ()))

    def edge_label(self, e, loss, limit=LINE) -> list[str]:
        """The lines of a backward edge's label, each cut to ``limit`` (None: uncut)."""
        z, x = e.forward, e.forward.inputs[e.operand]
        zn, xn = self.name(z), self.name(x)
        local = self.local_formula(e)
        L = self.lname
        # x used by several nodes: ∂L/∂x is the sum of the downstream gradients into it, and
        # this edge's is one of them
        via = f" via {zn}" if len(self.into.get(id(x), ())) > 1 else ""
        values = self.values or {}
        # (line, its numbers, whether its formula is already its number: "local ∂d/∂e = 1")
        rows = [(f"upstream ∂{L}/∂{zn} = {self.upstream_formula(z, loss)}",
                 values.get(id(e.upstream)), z is loss)]
        rows += [(f"upstream ∂{L}/∂{self.name(m)} = {self.upstream_formula(m, loss)}",
                  values.get(id(g)), m is loss) for m, g in e.siblings]  # a loop's outputs
        rows += [(f"local ∂{zn}/∂{xn} = {local}", labels.local_value(e, values),
                  labels.is_number(local)),
                 (f"downstream ∂{L}/∂{xn}{via} = {self.downstream_formula(e, loss)}",
                  values.get(id(e.downstream)), False)]
        lines = []
        for line, a, bare in rows:
            line = shorten(line, limit) if limit else line
            if a is not None and not bare:
                text = number(a, LINE - 4)
                if len(line) + 3 + len(text) <= LINE:
                    line += f" = {text}"
                else:  # a long formula: its numbers on a line of their own
                    lines, line = lines + [line], f"    = {text}"
            lines.append(line)
        if (id(z), e.operand) in self.failed_edges:
            lines.append("✗ this derivative fails gradient checking")
        return lines

    def add_backward_edges(self, result, loss):
        for e in result.edges:
            x = e.forward.inputs[e.operand]
            a, b = self.dot_id(e.forward), self.dot_id(x)
            if a == b:
                continue
            failed = (id(e.forward), e.operand) in self.failed_edges
            color = _FAIL if failed else "#c2410c"
            label = labels.dot_text(self.edge_label(e, loss), "\\l")
            self.dot.edge(a, b, label=label, color=color, fontcolor=color, style="dashed",
                          constraint="false", penwidth="2.2" if failed else "1.2",
                          arrowhead="vee")
        for drawing in self.scans:
            drawing.draw_backward(_Builder)

    def add_backward_only(self, result, loss):
        """Nodes are the gradients dL/dz; edges the labelled backward edges."""
        for t in self.graph.nodes:
            g = result.grads.get(id(t))
            if g is None:
                continue
            lines = [f"∂{self.lname}/∂{self.name(t)}", f"{_shape(t)} {t.dtype}"]
            if self.values is not None and id(g) in self.values:
                lines += value_lines(self.values[id(g)])
            failed = isinstance(t.op, Input) and t.op.label in self.failed_inputs
            self.dot.node(f"g{self.node_ids[id(t)]}", labels.dot_text(lines), shape="box",
                          style="rounded,filled", fillcolor="#fecaca" if failed else "#ffedd5",
                          color=_FAIL if failed else "#c2410c")
        for e in result.edges:
            failed = (id(e.forward), e.operand) in self.failed_edges
            color = _FAIL if failed else "#c2410c"
            self.dot.edge(f"g{self.node_ids[id(e.forward)]}",
                          f"g{self.node_ids[id(e.forward.inputs[e.operand])]}",
                          label=labels.dot_text(self.edge_label(e, loss), "\\l"),
                          color=color, fontcolor=color, penwidth="2.2" if failed else "1.2")

    def add_ir(self, grads, result):
        """The backward graph as the IR it is, nodes coloured by their role."""
        ir, loss = Graph(grads), self.outputs[0]
        forward = {id(t) for t in self.graph.nodes}
        in_ir = {id(t) for t in ir.nodes}
        records = {id(t): provenance(t, self.outputs) for t in ir.nodes if id(t) not in forward}
        known = {k: v for k, v in self.names.items() if k in in_ir}
        # the gradients and local derivatives named by what they are: ∂L/∂x, ∂z/∂x
        named = [(g, f"∂{self.lname}/∂{self.name(x)}") for x in self.graph.nodes
                 for g in [result.grads.get(id(x))] if g is not None]
        named += [(e.local, f"∂{self.name(e.forward)}/∂{self.name(e.forward.inputs[e.operand])}")
                  for e in result.edges if e.local is not None and e.forward is not loss]
        for t, name in named:
            if id(t) in in_ir and id(t) not in known:
                known[id(t)] = unique(name, set(known.values()))
        names = node_names(ir, known)
        for k, t in enumerate(ir.nodes):
            self.node_ids.setdefault(id(t), f"b{k}")
            record = records.get(id(t))
            attrs = dict(_STYLE[node_kind(t)])
            kind = node_kind(t)
            label = [t.op.name if kind == "op" else kind,
                     f"{names[id(t)]}: {_shape(t)} {t.dtype}"]
            if kind == "constant":
                label[0] = f"const {number(t.op.value.array, 40)}"
            if record is not None:
                attrs.update(color=_ROLE_COLOR[record.role], penwidth="1.8")
                label.append(f"{record.role} of {self.name(record.forward)}")
            if self.values is not None and id(t) in self.values and kind != "constant":
                label += value_lines(self.values[id(t)])
            self.dot.node(self.node_ids[id(t)], labels.dot_text(label), **attrs)
        self.names = names  # the scans' bodies (forward and backward) name theirs after these
        for k, nodes in enumerate(instances(ir.nodes)):
            ScanDrawing(self, nodes, k).draw(self.dot)
        for t in ir.nodes:
            if not is_scan(t):
                for x in t.inputs:
                    self.dot.edge(self.node_ids[id(x)], self.node_ids[id(t)])


def _direction(graph: Graph) -> str:
    """Top to bottom for deep chains of ops (more ranks than twice the widest rank, and
    over 6; leaves, which sit beside their users, not counted), else left to right.  A
    scan's body is drawn inside the graph: its ops count, after the scan's inputs."""
    ops = _depths(graph.nodes, 0)
    if not ops:
        return "LR"
    ranks = max(ops)
    widest = max(ops.count(d) for d in set(ops))
    return "TB" if ranks > 6 and ranks > 2 * widest else "LR"


def _depths(nodes, start: int) -> list[int]:
    """The rank of every op among ``nodes`` and in the bodies of their scans (each once)."""
    depth: dict[int, int] = {}
    ops, seen = [], set()
    for t in nodes:
        depth[id(t)] = 1 + max((depth.get(id(i), start - 1) for i in t.inputs),
                               default=start - 1)
        if is_scan(t):
            body = _depths(t.op.loop.graph.nodes, depth[id(t)])
            if t.op.loop not in seen:
                seen.add(t.op.loop)
                ops += body
            depth[id(t)] = max(body, default=depth[id(t)]) + 1
        if t.inputs:
            ops.append(depth[id(t)])
    return ops


def _collapse_level(graph: Graph, collapse) -> tuple[int, int | None]:
    """The depth of the outermost layers (below the scopes that hold every scoped node),
    and the scope depth drawn as single boxes (``collapse`` levels deeper when it is an
    int), or None to draw every node.  ``collapse=None`` collapses graphs over
    AUTO_COLLAPSE nodes that have scopes."""
    if not (collapse is None or isinstance(collapse, bool)
            or isinstance(collapse, int) and collapse >= 1):
        raise ValueError(f"collapse must be None, True, False or a depth >= 1, got "
                         f"{collapse!r}")
    scopes = [t.scope.split("/") for t in graph.nodes if t.scope]
    if collapse is False or not scopes or (collapse is None
                                           and len(graph.nodes) <= AUTO_COLLAPSE):
        return 0, None
    level = 0  # skip scopes that hold every scoped node: the whole model is not a layer
    while all(len(p) > level + 1 for p in scopes) and \
            len({p[level] for p in scopes}) == 1:
        level += 1
    return level, level + (1 if collapse is None or collapse is True else collapse) - 1


def _shape(t: Tensor) -> str:
    return "scalar" if not t.shape else "×".join(map(str, t.shape))


def _evaluate(tensors, feeds) -> dict[int, np.ndarray]:
    values = {id(t): t.op.value.array for t in tensors if isinstance(t.op, Constant)}
    unique = list({id(t): t for t in tensors if id(t) not in values}.values())
    f = compile(unique, backend="numpy", optimize=False)  # values only: skip the passes
    try:
        arrays = f(feeds)  # FeedError for a missing, unknown or mistyped feed, named
    except FeedError as err:
        raise FeedError(f"values: {err}") from None
    return values | {id(t): a for t, a in zip(unique, arrays)}


def wrt_tensors(wrt) -> list[Tensor]:
    """``wrt`` (a tensor or a list of them) as a list, or a TypeError naming what it is."""
    items = list(wrt) if isinstance(wrt, (list, tuple)) else [wrt]
    bad = next((w for w in items if not isinstance(w, Tensor)), None)
    if bad is not None or not items:
        raise TypeError(f"wrt must be a tensor or a list of tensors (gc.input, gc.param), "
                        f"got {bad!r} ({type(bad).__name__})" if items else
                        "wrt must name at least one tensor")
    return items


def _backward(builder: _Builder, loss: Tensor, wrt):
    """The backward graph of ``loss`` (a float scalar) w.r.t. ``wrt`` (default: every float
    input and param), given to ``builder``, and the gradients."""
    if loss.shape != () or not dtypes.is_float(loss.dtype):
        raise GraphError("render(backward=...): the first output must be a float scalar "
                         f"loss, got {loss.shape} {loss.dtype}")
    wrt = [t for t in builder.graph.inputs if dtypes.is_float(t.dtype)] if wrt is None \
        else wrt_tensors(wrt)
    result = build_backward([loss], [constant(1.0, dtype=loss.dtype)], wrt)
    grads = [result.grad_of(w) for w in wrt]
    builder.set_backward(result)
    return result, grads


def _drawn(builder: _Builder, result, grads, mode) -> list[Tensor]:
    """The tensors whose values the diagram shows: the forward graph's nodes and, with a
    backward graph, every gradient and edge label (and the IR of the gradients)."""
    wanted = list(builder.graph.nodes)
    if result is not None:
        wanted += list(result.grads.values())
        wanted += [t for e in result.edges for t in (e.upstream, e.local, e.downstream)
                   if t is not None]
        wanted += list(Graph(grads).nodes) if mode == "ir" else []
    return wanted


def render(outputs, path=None, *, backward=False, values=None, check=None, wrt=None,
           collapse=None, direction=None) -> Diagram:
    """Draw ``outputs`` with Graphviz; write ``path`` (.svg .png .pdf .dot) if given.

    ``backward``: ``False`` (forward graph), ``True`` or ``"combined"`` (forward graph with
    a labelled backward edge beside every forward edge), ``"backward"`` (the gradients
    dL/dz only) or ``"ir"`` (the backward graph as the IR nodes it is made of).  The loss
    is the first output (a scalar); gradients are taken w.r.t. ``wrt`` (default: every
    float input and param).  Each backward edge z -> x is labelled ``upstream ∂L/∂z``,
    ``local ∂z/∂x`` and ``downstream ∂L/∂x`` (= local × upstream) with the formula and,
    when ``values`` (the feeds) are given, the numbers.  ``check``: a ``gc.check_grad``
    report; failing tensors and derivatives are drawn red.  ``collapse=True`` draws each
    layer (the outermost ``gc.scope`` below those holding the whole model) as one node
    with its parameter and op counts; an int ``k`` draws the scopes ``k`` levels deep as
    boxes (``collapse=2``: a ResNet's blocks); ``None`` collapses above 100 nodes and says so
    in the picture; ``False`` never.  ``direction``: ``"TB"`` (top to bottom) or ``"LR"``;
    default: top to bottom for deep chains, else left to right.

    >>> import graphc as gc
    >>> x = gc.input("x", (3,))
    >>> d = gc.render(gc.sum(gc.sigmoid(x)), backward=True)
    >>> "local ∂" in d.source
    True
    """
    outs, wrt = at_feed_shapes(as_outputs(outputs), values, wrt)
    mode = {False: None, None: None, True: "combined"}.get(backward, backward)
    if mode not in (None, "combined", "backward", "ir"):
        raise ValueError(f"backward must be False, True, 'combined', 'backward' or 'ir', "
                         f"got {backward!r}")
    if direction not in (None, "TB", "LR"):
        raise ValueError(f"direction must be None, 'TB' or 'LR', got {direction!r}")
    builder = _Builder(outs, None, check, collapse, direction)
    result, loss, grads = None, outs[0], []
    if mode:
        result, grads = _backward(builder, loss, wrt)
    if values is not None:
        builder.values = _evaluate(_drawn(builder, result, grads, mode), values)
        builder.values |= body_values(builder.graph.nodes, builder.values)
    if mode == "ir":
        builder.add_ir(grads, result)
    elif mode == "backward":
        builder.node_ids = {id(t): f"n{k}" for k, t in enumerate(builder.graph.nodes)}
        builder.add_backward_only(result, loss)
    else:
        builder.add_forward(result.grads if result else None)
        if result is not None:
            builder.add_backward_edges(result, loss)
    diagram = Diagram(builder.dot)
    if path is not None:
        diagram.save(path)
    return diagram
