"""``gc.explore``: the graph as one self-contained HTML page to explore in a browser.

Python computes what the page shows (names, groups, values, gradients, the upstream, local
and downstream formula of every backward edge, their numbers, the ``check=`` overlay) with
the same builder as :func:`gc.render`, and embeds it as JSON in ``explore.html``, whose
hand-written script lays the graph out, draws it as SVG and defines ``window.graphc``.
"""

from __future__ import annotations

import html
import json
import os
from importlib import resources
from types import SimpleNamespace

import numpy as np
import sympy as sp
from graphc.passes.autodiff import backward as build_backward
from sympy.printing.mathml import MathMLPresentationPrinter

from graphc import dtypes
from graphc.dynamic import at_feed_shapes
from graphc.errors import GraphError, RenderError
from graphc.graph import as_outputs, node_kind
from graphc.inputs import Constant, Input, constant

from .labels import FULL, elementwise_op, index_text, is_number, local_value, number, unique
from .loops import ScanDrawing, body_labels, body_values, first_step, instances, title
from .render import _Builder, _evaluate, _shape, wrt_tensors

HIST_BINS = 16
# The details show every element of a tensor of up to this many (a 3 x 3 weight, a row of 10
# logits), beside its summary; diagram labels stop at 8 (labels.number)
ALL_SHOWN = 64


class Explorer:
    """An explorer page: ``html()`` is the whole page, ``save(path)`` writes it; Jupyter
    displays it inline (in an iframe, so its script runs).

    >>> import graphc as gc
    >>> x = gc.input("x", (3,))
    >>> ex = gc.explore(gc.sum(gc.tanh(x)), values={"x": [0.5, -1.0, 2.0]})
    >>> page = ex.html()
    >>> page.startswith("<!DOCTYPE html>") and "window.graphc" in page
    True
    """

    def __init__(self, page: str, path: str | None = None):
        self._page = page
        self.path = path

    def html(self) -> str:
        return self._page

    def save(self, path) -> str:
        path = os.fspath(path)
        if os.path.splitext(path)[1].lower() not in (".html", ".htm"):
            raise RenderError(f"cannot save the explorer to {path!r}: it is an HTML page "
                              "(.html)")
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(self._page)
            os.replace(tmp, path)
        except OSError as err:  # name the user's path, not the temporary file's
            raise RenderError(f"cannot write {path}: {err.strerror}") from None
        self.path = path
        return path

    def _repr_html_(self) -> str:
        return (f'<iframe srcdoc="{html.escape(self._page, quote=True)}" '
                'style="width:100%;height:640px;border:1px solid #d1d5db" '
                'sandbox="allow-scripts"></iframe>')

    def __repr__(self) -> str:
        return f"<Explorer{' ' + self.path if self.path else ''}>"


def explore(outputs, path=None, values=None, wrt=None, check=None) -> Explorer:
    """An interactive page for ``outputs``; written to ``path`` (.html) if given.

    As :func:`gc.render`: the loss is the first output (when it is a float scalar, the
    backward pass is shown too, w.r.t. ``wrt``, default every float input and param;
    otherwise the page shows the forward graph and says why, and ``wrt`` is a GraphError);
    ``values`` (the feeds) adds numbers, histograms and gradients; ``check`` (a
    ``gc.check_grad`` report) marks failing tensors and derivatives red.  Each
    ``gc.scope`` is a group that expands and collapses.  The page defines
    ``window.graphc`` (``ready``, ``nodes()``, ``groups()``, ``expand``, ``collapse``,
    ``select``, ``selectEdge``, ``step``) for scripts and tests.
    """
    outs, wrt = at_feed_shapes(as_outputs(outputs), values, wrt)
    data = _Page(outs, values, wrt, check).data()
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    # inside <script>: neither "</" nor "<!--" may appear; both escapes are valid JSON
    text = text.replace("</", "<\\/").replace("<!--", "<\\u0021--")
    template = resources.files("graphc.viz").joinpath("explore.html").read_text("utf-8")
    page = template.replace("/*GRAPHC_DATA*/null", text, 1)
    ex = Explorer(page)
    if path is not None:
        ex.save(path)
    return ex


class _Page:
    """The JSON an explorer page embeds."""

    def __init__(self, outs, values, wrt, check):
        self.builder = b = _Builder(outs, None, check, collapse=False, direction="LR")
        self.loss = outs[0]
        self.result, self.note = None, None
        if self.loss.shape != () or not dtypes.is_float(self.loss.dtype):
            what = f"{b.name(self.loss)}: {_shape(self.loss)} {self.loss.dtype}"
            if wrt is not None:
                raise GraphError("explore(wrt=...): gradients need a float scalar loss as "
                                 f"the first output, got {what}")
            self.note = (f"Forward graph only: the first output, {b.name(self.loss)} "
                         f"({_shape(self.loss)} {self.loss.dtype}), is not a float scalar "
                         "loss, so there are no gradients to show.")
        else:
            wrt = [t for t in b.graph.inputs if dtypes.is_float(t.dtype)] if wrt is None \
                else wrt_tensors(wrt)
            self.result = build_backward([self.loss], [constant(1.0, dtype=self.loss.dtype)],
                                         wrt)
            b.set_backward(self.result)
        # "#k": an id no name is (a name given with .named() may start with "#": then "##k")
        names = [b.name(t) for t in b.graph.nodes] + [name for k, outs in enumerate(
            instances(b.graph.nodes)) for name in ScanDrawing(b, outs, k).names.values()]
        self.mark = "#"
        while any(name.startswith(self.mark) for name in names):
            self.mark += "#"
        self.ids = {id(t): f"{self.mark}{k}" for k, t in enumerate(b.graph.nodes)}
        self.values = None
        if values is not None:
            wanted = list(b.graph.nodes)
            if self.result is not None:
                wanted += list(self.result.grads.values())
                wanted += [t for e in self.result.edges
                           for t in (e.upstream, e.local, e.downstream) if t is not None]
            self.values = _evaluate(wanted, values)
            self.values |= body_values(b.graph.nodes, self.values)

    def data(self) -> dict:
        b = self.builder
        # (not a constant's own: an interned 2.0 keeps the scope it was first made in, maybe
        # another graph's; its group is the one its users share, shared_scope)
        scopes = {t.scope for t in b.graph.nodes if t.scope and not isinstance(t.op, Constant)}
        paths = sorted({"/".join(s.split("/")[:k + 1]) for s in scopes
                        for k in range(s.count("/") + 1)})
        groups = [{"id": p, "name": p.rsplit("/", 1)[-1],
                   "parent": p.rsplit("/", 1)[0] if "/" in p else None} for p in paths]
        nodes = [self.node(t) for t in b.graph.nodes]
        edges = [self.edge(e) for e in self.result.edges] if self.result else []
        for k, outs in enumerate(instances(b.graph.nodes)):
            self.add_scan(ScanDrawing(b, outs, k), nodes, groups, edges)
        return {"loss": self.ids[id(self.loss)] if self.result is not None else None,
                "lossName": b.lname, "values": self.values is not None,
                "outputs": [self.ids[id(t)] for t in b.outputs], "note": self.note,
                "nodes": nodes, "groups": groups, "edges": edges}

    def add_scan(self, drawing, nodes, groups, edges) -> None:
        """A scan as a group holding one copy of its body, placed before the scan's
        outputs (which read the body's outputs) in the node list; in the edge list, the
        body's backward edges come where the backward pass reaches the scan."""
        loop, ids = drawing.loop, {k: f"{self.mark}{v}" for k, v in drawing.ids.items()}
        ids.update({id(p): self.ids[id(t)] for p, t in zip(loop.consts, drawing.inputs_consts)})
        scope = drawing.outputs[0].scope or None
        gid = unique(f"{scope}/scan{drawing.index}" if scope else f"scan{drawing.index}",
                     {g["id"] for g in groups})  # not a gc.scope("scan0") of the user's
        groups.append({"id": gid, "name": title(loop).split(" (")[0], "parent": scope,
                       "length": loop.length, "reverse": loop.reverse,
                       "carry": [[ids[id(new)], ids[id(p)], f"carry ×T={loop.length}"]
                                 for p, new in zip(loop.carry, loop.new_carry)]})
        outer_in = {id(p): self.ids[id(t)] for p, t in
                    zip(loop.carry + loop.xs, drawing.init + drawing.xs)}
        body = []
        for t in loop.graph.nodes:
            if id(t) in drawing.outer:
                continue
            n = self.node(t, ids=ids, name=drawing.names[id(t)], group=gid)
            if n["value"] is not None:
                n["step"] = first_step(loop)  # the numbers are of this step
            if id(t) in outer_in:
                n["inputs"] = [outer_in[id(t)]]
            body.append(n)
        first = min(k for k, n in enumerate(nodes)
                    if n["id"] in {self.ids[id(t)] for t in drawing.outputs})
        for t in drawing.outputs:
            kind, i = t.op.out
            src = {"carry": loop.new_carry, "y": loop.ys, "cin": loop.carry}[kind][i]
            node = nodes[next(k for k, n in enumerate(nodes) if n["id"] == self.ids[id(t)])]
            # drawn from the body's output; the details list the scan's operands, each edge
            # with its local derivative
            node["operands"], node["inputs"] = node["inputs"], [ids[id(src)]]
        nodes[first:first] = body
        if self.result is None:
            return
        labels = body_labels(loop, drawing.names, self.builder.lname, _Builder)
        mine = [self.edge(e, labels, ids) for e in labels.result.edges]
        scan_ids = {self.ids[id(t)] for t in drawing.outputs}
        at = next((k for k, e in enumerate(edges) if e["from"] in scan_ids), len(edges))
        edges[at:at] = mine

    def value(self, t) -> dict | None:
        if self.values is None or t is None or id(t) not in self.values:
            return None
        return self.shown(self.values[id(t)])

    @staticmethod
    def shown(a) -> dict | None:
        """Numbers for the page: in full, with a histogram; None for no numbers."""
        if a is None:
            return None
        a = np.asarray(a)
        return {"text": number(a, FULL), "hist": _histogram(a), "all": _elements(a)}

    def node(self, t, ids=None, name=None, group=None) -> dict:
        """``t`` for the page; ``ids``, ``name`` and ``group`` for a scan body's nodes."""
        b, kind = self.builder, node_kind(t)
        ids = self.ids if ids is None else ids
        attrs = ", ".join(f"{k}={v}" for k, v in t.op.attrs().items() if k != "dtype") \
            if kind == "op" else ""
        if t.op.name == "index":
            attrs = index_text(t.op.index)
        grad = self.result.grads.get(id(t)) if self.result else None
        if group is None:  # a constant: where its users meet (not where it was first made)
            group = self.shared_scope(t) if isinstance(t.op, Constant) else t.scope
        value = self.value(t)
        if value is None and isinstance(t.op, Constant):
            value = dict(self.shown(t.op.value.array), hist=None)
        return {"id": ids[id(t)], "name": name or b.name(t), "tensor": t.name,
                "op": t.op.name if kind == "op" else kind, "attrs": attrs, "kind": kind,
                "group": group or None, "shape": list(t.shape), "dtype": t.dtype,
                "inputs": [ids[id(x)] for x in t.inputs],
                "failed": isinstance(t.op, Input) and t.op.label in b.failed_inputs,
                "loc": str(t.loc) if t.loc else None,
                "value": value, "grad": self.value(grad),
                "locals": self.local_formulas(t) if kind == "op" and name is None else []}

    def local_formulas(self, z) -> list:
        """dz/dx of each float operand as text, None where there is none: the details show
        them for the edges the backward pass does not take too (a constant's, an input's
        not in ``wrt``, every edge of a forward-only page)."""
        local, ew = getattr(z.op, "local", None), elementwise_op(z) is not None
        if not dtypes.is_float(z.dtype) or not (ew or local):
            return [None] * len(z.inputs)
        return [self.builder.local_formula(SimpleNamespace(
            forward=z, operand=k, local_formula=None if ew else
            local[min(k, len(local) - 1)])) if dtypes.is_float(x.dtype) else None
            for k, x in enumerate(z.inputs)]

    def shared_scope(self, t) -> str | None:
        """A constant's group: the innermost scope holding all its users (an interned 2
        that every layer uses belongs to none of them, so closing one layer hides no
        operand of another); None at the top."""
        users = self.builder.users().get(id(t), [t])
        scopes = [(z.scope or "").split("/") for z in users]
        common = []
        for parts in zip(*scopes):
            if len(set(parts)) > 1:
                break
            common.append(parts[0])
        return "/".join(common) or None

    def edge(self, e, labels=None, ids=None) -> dict:
        """A backward edge; ``labels`` (a builder) and ``ids`` for a scan body's edges."""
        b, z = self.builder, e.forward
        labels, ids = labels or b, ids or self.ids
        x = z.inputs[e.operand]
        lines = labels.edge_label(e, None if labels is not b else self.loss, limit=None)
        n = len(e.siblings)  # upstream, one upstream per other output of a loop, local, down
        up, local, down = (lines[k].split(" = ", 1)[1] for k in (0, n + 1, n + 2))
        also = [{"name": labels.name(m), "id": ids.get(id(m)), "up": line.split(" = ", 1)[1],
                 "upValue": self.value(g)} for (m, g), line in zip(e.siblings, lines[1:])]
        return {"from": ids[id(z)], "to": ids[id(x)], "operand": e.operand,
                "up": up, "local": local, "down": down, "also": also,
                "localIsNumber": is_number(local),
                "paths": len(labels.into.get(id(x), ())),  # edges whose sum is dL/dx
                "localMath": self.local_mathml(e, labels) if elementwise_op(z) else None,
                "upValue": self.value(e.upstream),
                "localValue": self.shown(local_value(e, self.values or {})),
                "downValue": self.value(e.downstream),
                "failed": (id(z), e.operand) in b.failed_edges}

    def local_mathml(self, e, labels=None) -> str:
        """dz/dx of an elementwise op as presentation MathML, symbols named as in the graph."""
        z, op, labels = e.forward, elementwise_op(e.forward), labels or self.builder
        fn = op.fn
        names = {a: labels.name(t) for a, t in zip(fn.args, z.inputs)}
        names[fn.out] = labels.name(z)
        names.update({s: str(v) for s, (_, v) in zip(fn.param_symbols, op.params)})
        expr = fn.derivatives[e.operand]
        expr = expr.xreplace({s: sp.Symbol(names[s]) for s in expr.free_symbols if s in names})
        return _MathML().doprint(expr)


class _MathML(MathMLPresentationPrinter):
    """SymPy's presentation MathML, with piecewise functions written as cases and each
    symbol named as in the graph (SymPy would set ``hidden_act`` as hidden with a subscript
    act, and ``h2`` as h with a subscript 2)."""

    def _print_Symbol(self, sym, style="plain"):
        node = self.dom.createElement("mi")
        node.appendChild(self.dom.createTextNode(sym.name))
        return node

    def _print_Piecewise(self, expr):
        """Built as elements, not parsed from text: SymPy's text of a piece holds entities
        (&InvisibleTimes;) and relations (a < b) that an XML parser refuses, and every
        piecewise derivative (pow, maximum, elu, huber) failed the page."""
        def element(tag, *children, text=None):
            node = self.dom.createElement(tag)
            if text is not None:
                node.appendChild(self.dom.createTextNode(text))
            for child in children:
                node.appendChild(child)
            return node
        rows = [element("mtr", element("mtd", self._print(value)), element(
            "mtd", element("mtext", text="otherwise") if cond is sp.true else
            element("mrow", element("mtext", text="if\u00a0"), self._print(cond))))
            for value, cond in expr.args]
        table = element("mtable", *rows)
        table.setAttribute("columnalign", "left")
        return element("mrow", element("mo", text="{"), table)


def _elements(a: np.ndarray) -> list[str] | None:
    """Every element of a tensor of 9 to ALL_SHOWN elements to 4 significant digits, one
    line per row of its last axis (``[0.5, -1, 2]``); None for others (a tensor of at most
    8 is in its summary text already).

    >>> _elements(np.arange(12.0).reshape(3, 4) / 3)
    ['[0, 0.3333, 0.6667, 1]', '[1.333, 1.667, 2, 2.333]', '[2.667, 3, 3.333, 3.667]']
    """
    if not 8 < a.size <= ALL_SHOWN:
        return None
    rows = a.reshape(-1, a.shape[-1])
    return ["[" + ", ".join(number(v) for v in row) + "]" for row in rows]


def _histogram(a: np.ndarray) -> dict | None:
    """Counts of ``a``'s finite values in HIST_BINS equal bins over [min, max]; ``None``
    for tensors small enough to show in full."""
    a = np.asarray(a)
    if a.size <= 8 or a.dtype == np.bool_:
        return None
    f = a.astype(np.float64).ravel()
    f = f[np.isfinite(f)]
    if f.size == 0:
        return None
    lo, hi = float(f.min()), float(f.max())
    scale = HIST_BINS / (hi - lo) if hi > lo else 0.0
    bins = np.minimum(((f - lo) * scale).astype(np.int64), HIST_BINS - 1)
    return {"lo": lo, "hi": hi, "counts": np.bincount(bins, minlength=HIST_BINS).tolist()}


__all__ = ["Explorer", "explore"]
