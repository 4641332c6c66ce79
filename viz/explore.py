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
from xml.dom.minidom import parseString

import numpy as np
import sympy as sp
from graphc.passes.autodiff import backward as build_backward
from sympy.printing.mathml import MathMLPresentationPrinter

from graphc import dtypes
from graphc.elementwise_ops import Elementwise
from graphc.graph import as_outputs, node_kind
from graphc.inputs import Constant, Input, constant

from .labels import number
from .render import _Builder, _evaluate

HIST_BINS = 16


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
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(self._page)
        os.replace(tmp, path)
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
    backward pass is shown too, w.r.t. ``wrt``, default every float input and param);
    ``values`` (the feeds) adds numbers, histograms and gradients; ``check`` (a
    ``gc.check_grad`` report) marks failing tensors and derivatives red.  Each
    ``gc.scope`` is a group that expands and collapses.  The page defines
    ``window.graphc`` (``ready``, ``nodes()``, ``groups()``, ``expand``, ``collapse``,
    ``select``, ``selectEdge``, ``step``) for scripts and tests.
    """
    outs = as_outputs(outputs)
    data = _Page(outs, values, wrt, check).data()
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    text = text.replace("</", "<\\/").replace("<!--", "<\\!--")
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
        self.result = None
        if self.loss.shape == () and dtypes.is_float(self.loss.dtype):
            wrt = [t for t in b.graph.inputs if dtypes.is_float(t.dtype)] if wrt is None \
                else list(as_outputs(wrt))
            self.result = build_backward([self.loss], [constant(1.0, dtype=self.loss.dtype)],
                                         wrt)
            b.set_backward(self.result)
        self.ids = {id(t): f"n{k}" for k, t in enumerate(b.graph.nodes)}
        self.values = None
        if values is not None:
            wanted = list(b.graph.nodes)
            if self.result is not None:
                wanted += list(self.result.grads.values())
                wanted += [t for e in self.result.edges
                           for t in (e.upstream, e.local, e.downstream) if t is not None]
            self.values = _evaluate(wanted, values)

    def data(self) -> dict:
        b = self.builder
        scopes = {t.scope for t in b.graph.nodes if t.scope}
        paths = sorted({"/".join(s.split("/")[:k + 1]) for s in scopes
                        for k in range(s.count("/") + 1)})
        groups = [{"id": p, "name": p.rsplit("/", 1)[-1],
                   "parent": p.rsplit("/", 1)[0] if "/" in p else None} for p in paths]
        return {"loss": self.ids[id(self.loss)] if self.result is not None else None,
                "lossName": b.lname, "values": self.values is not None,
                "outputs": [self.ids[id(t)] for t in b.outputs],
                "nodes": [self.node(t) for t in b.graph.nodes], "groups": groups,
                "edges": [self.edge(e) for e in self.result.edges] if self.result else []}

    def value(self, t) -> dict | None:
        if self.values is None or t is None or id(t) not in self.values:
            return None
        a = np.asarray(self.values[id(t)])
        return {"text": number(a), "hist": _histogram(a)}

    def node(self, t) -> dict:
        b, kind = self.builder, node_kind(t)
        attrs = ", ".join(f"{k}={v}" for k, v in t.op.attrs().items() if k != "dtype") \
            if kind == "op" else ""
        grad = self.result.grads.get(id(t)) if self.result else None
        value = self.value(t)
        if value is None and isinstance(t.op, Constant):
            value = {"text": number(t.op.value.array), "hist": None}
        return {"id": self.ids[id(t)], "name": b.name(t),
                "op": t.op.name if kind == "op" else kind, "attrs": attrs, "kind": kind,
                "group": t.scope or None, "shape": list(t.shape), "dtype": t.dtype,
                "inputs": [self.ids[id(x)] for x in t.inputs],
                "failed": isinstance(t.op, Input) and t.op.label in b.failed_inputs,
                "loc": str(t.loc) if t.loc else None,
                "value": value, "grad": self.value(grad)}

    def edge(self, e) -> dict:
        b, z = self.builder, e.forward
        x = z.inputs[e.operand]
        lines = b.edge_label(e, self.loss)  # b.values is None: formulas only
        up, local, down = (line.split(" = ", 1)[1] for line in lines[:3])
        return {"from": self.ids[id(z)], "to": self.ids[id(x)], "operand": e.operand,
                "up": up, "local": local, "down": down,
                "localMath": self.local_mathml(e) if isinstance(z.op, Elementwise) else None,
                "upValue": self.value(e.upstream), "localValue": self.value(e.local),
                "downValue": self.value(e.downstream),
                "failed": (id(z), e.operand) in b.failed_edges}

    def local_mathml(self, e) -> str:
        """dz/dx of an elementwise op as presentation MathML, symbols named as in the graph."""
        z, fn = e.forward, e.forward.op.fn
        names = {a: self.builder.name(t) for a, t in zip(fn.args, z.inputs)}
        names[fn.out] = self.builder.name(z)
        names.update({s: str(v) for s, (_, v) in zip(fn.param_symbols, z.op.params)})
        expr = fn.derivatives[e.operand]
        expr = expr.xreplace({s: sp.Symbol(names[s]) for s in expr.free_symbols if s in names})
        return _MathML().doprint(expr)


class _MathML(MathMLPresentationPrinter):
    """SymPy's presentation MathML, with piecewise functions written as cases."""

    def _print_Piecewise(self, expr):
        rows = []
        for value, cond in expr.args:
            if cond is sp.true:
                when = "<mtext>otherwise</mtext>"
            else:
                when = f"<mrow><mtext>if&#xA0;</mtext>{self.doprint(cond)}</mrow>"
            rows.append(f"<mtr><mtd>{self.doprint(value)}</mtd><mtd>{when}</mtd></mtr>")
        table = "".join(rows)
        return parseString(f'<mrow><mo>{{</mo><mtable columnalign="left">{table}'
                           "</mtable></mrow>").documentElement


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
