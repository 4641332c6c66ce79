"""Scans in diagrams: a ``gc.scan`` is drawn as a cluster holding one copy of its body
(the step), its carry as a back edge labelled with the number of steps (``carry ×T=50``).
The outer tensors the body reads (weights) keep their one node outside and feed the body
directly; the sequence enters as ``xs[t]`` and leaves stacked.  In a backward diagram the
body's own edges carry their upstream, local and downstream gradients, as every other
edge: the body's backward graph is what the reverse scan (backpropagation through time)
runs at every step, with the carry's gradient coming back from step t + 1."""

from __future__ import annotations

import graphviz

from graphc.graph import node_names
from graphc.scan import Scan, siblings
from graphc.scan_body import placeholder

from .labels import dot_text, unique, value_lines

CARRY = "#0e7490"  # the loop's colour: its box, the carry edges, the placeholders
_PLACEHOLDER = dict(shape="box", style="rounded,filled", fillcolor="#cffafe", color=CARRY)


def instances(nodes) -> list[list]:
    """The scans among ``nodes``: one list of output nodes per run of a loop."""
    return list(siblings(nodes).values())


def is_scan(t) -> bool:
    return isinstance(t.op, Scan)


def role(loop, t) -> str | None:
    """What a body placeholder stands for, or None for other body nodes."""
    for i, p in enumerate(loop.carry):
        if p is t:
            return f"carry {i}, from step t{'+' if loop.reverse else '−'}1"
    for j, p in enumerate(loop.xs):
        if p is t:
            return f"xs{j}[t]"
    return None


def title(loop, values: bool = False) -> str:
    """The loop's box title; with ``values``, which step its numbers are of."""
    way = "reverse scan" if loop.reverse else "scan"
    extra = f", gradient cut every {loop.truncate} steps" if loop.truncate else ""
    shown = f"; values of step t={first_step(loop)}" if values else ""
    return f"{way} over T={loop.length} steps (one copy of the step{shown}){extra}"


def first_step(loop) -> int:
    """The step a loop runs first: t = 0, or t = T - 1 for a reverse scan."""
    return loop.length - 1 if loop.reverse else 0


def body_values(nodes, values: dict) -> dict:
    """The values of the body nodes of each scan among ``nodes`` at the loop's first step
    (:func:`first_step`), for diagrams and the explorer, which draw one copy of the body:
    the carry placeholders take the initial carry, the xs placeholders the first step's
    slice and the consts their outer tensors' values, from ``values`` (the outer graph's,
    by node id).  A loop of no steps, or one whose inputs have no values, is left out."""
    from graphc.compiler import compile as compile_graph
    from graphc.graph import Graph
    from graphc.inputs import Constant

    found = {}
    for outs in instances(nodes):
        loop, inputs = outs[0].op.loop, outs[0].inputs
        if loop.length < 1 or any(id(x) not in values for x in inputs):
            continue
        n_c, n_x, k = len(loop.carry), len(loop.xs), first_step(loop)
        given = {p.op.label: values[id(x)] for p, x in zip(loop.carry + loop.consts,
                                                           inputs[:n_c] + inputs[n_c + n_x:])}
        given |= {p.op.label: values[id(x)][k] for p, x in zip(loop.xs,
                                                               inputs[n_c:n_c + n_x])}
        body = [t for t in loop.graph.nodes if not isinstance(t.op, Constant)]
        needed = {t.op.label for t in Graph(body).inputs}
        arrays = compile_graph(body, backend="numpy", optimize=False)(
            {name: a for name, a in given.items() if name in needed})
        found |= {id(t): a for t, a in zip(body, arrays)}
    return found


class ScanDrawing:
    """One scan instance drawn into a :class:`graphc.viz.render._Builder`'s DOT graph."""

    def __init__(self, builder, outputs, index: int):
        self.b, self.index, self.outputs, self.loop = builder, index, outputs, outputs[0].op.loop
        loop, inputs = self.loop, outputs[0].inputs
        n_c, n_x = len(loop.carry), len(loop.xs)
        self.init, self.xs = inputs[:n_c], inputs[n_c:n_c + n_x]
        self.inputs_consts = inputs[n_c + n_x:]
        self.outer = {id(p): t for p, t in zip(loop.consts, self.inputs_consts)}
        # names unique across the graph's scans too: two scans' bodies can hold the same
        # (interned) nodes, which took the same names (select('mul') reached one of them)
        earlier = builder.scan_names  # {scan index: its body's names}, made in order
        if index not in earlier:
            before = {("scan", j, k): name for j, names in earlier.items() if j < index
                      for k, name in names.items()}
            known = self.known_names(set(before.values())) | before
            earlier[index] = {k: v for k, v in node_names(loop.graph, known).items()
                              if not isinstance(k, tuple)}
        self.names = earlier[index]
        self.ids = {id(t): f"s{index}_{k}" for k, t in enumerate(loop.graph.nodes)}

    def known_names(self, taken_before=frozenset()) -> dict:
        """The placeholders' names: a const is its outer tensor (``lstm_W_h``), a carry
        ``h_prev`` (after the body output it becomes), a step's slice ``x_t``."""
        loop, b = self.loop, self.b
        names = dict(b.names)  # reserved: body nodes get names of their own (lstm.matmul_2)
        names.update({id(p): b.name(t) for p, t in zip(loop.consts, self.inputs_consts)})
        taken = set(b.names.values()) | taken_before  # a placeholder takes no name of the
        # graph's own, nor of an earlier scan's body
        for i, (p, new) in enumerate(zip(loop.carry, loop.new_carry)):  # (a user's x_t)
            names[id(p)] = unique(f"{new.display or f'carry{i}'}_prev", taken)
            taken.add(names[id(p)])
        for j, p in enumerate(loop.xs):
            names[id(p)] = unique("x_t" if len(loop.xs) == 1 else f"x{j}_t", taken)
            taken.add(names[id(p)])
        return names

    def src(self, t) -> str:
        """The DOT node of body node ``t``: a const placeholder is its outer tensor."""
        outer = self.outer.get(id(t))
        return self.b.dot_id(outer) if outer is not None else self.ids[id(t)]

    def label(self, t) -> str:
        name = self.names[id(t)]
        kind = role(self.loop, t)
        if kind is not None:
            values = self.b.values or {}
            shown = value_lines(values[id(t)]) if id(t) in values else []
            return dot_text([kind, f"{name}: {_shape(t)} {t.dtype}", *shown])
        return self.b.node_label(t, names=self.names)

    def draw(self, parent: graphviz.Digraph) -> None:
        loop, b = self.loop, self.b
        shown = b.values is not None and any(id(t) in b.values for t in loop.graph.nodes)
        box = graphviz.Digraph(f"cluster_{self.ids[id(loop.graph.nodes[0])]}", graph_attr=dict(
            label=title(loop, shown), style="rounded,bold", color=CARRY, fontcolor=CARRY,
            penwidth="1.6"))
        placeholders = {id(p) for p in loop.carry + loop.xs}
        for t in loop.graph.nodes:
            if id(t) in self.outer:
                continue
            attrs = _PLACEHOLDER if id(t) in placeholders else b.style(t)
            box.node(self.ids[id(t)], self.label(t), **attrs)
        parent.subgraph(box)
        for t in loop.graph.nodes:
            for x in t.inputs:
                b.dot.edge(self.src(x), self.ids[id(t)])
        steps = f"×T={loop.length}"
        for p, init, new in zip(loop.carry, self.init, loop.new_carry):
            if id(p) not in self.ids:  # a placeholder the body does not read (a reverse
                continue               # scan's): not drawn
            b.dot.edge(b.dot_id(init), self.ids[id(p)], label="init", color=CARRY,
                       fontcolor=CARRY)
            b.dot.edge(self.src(new), self.ids[id(p)], label=f"carry {steps}", color=CARRY,
                       fontcolor=CARRY, penwidth="2.4", style="bold", constraint="false")
        for p, xs in zip(loop.xs, self.xs):
            if id(p) not in self.ids:
                continue
            b.dot.edge(b.dot_id(xs), self.ids[id(p)], label="[t]", color=CARRY, fontcolor=CARRY)
        for out in self.outputs:
            kind, i = out.op.out
            body = {"carry": loop.new_carry, "y": loop.ys, "cin": loop.carry,
                    "node": loop.graph.nodes}[kind][i]  # "node": a residual the reverse reads
            text = "after the last step" if kind == "carry" else f"stacked {steps}"
            b.dot.edge(self.src(body), b.dot_id(out), label=text, color=CARRY,
                       fontcolor=CARRY)

    def draw_backward(self, builder_cls) -> None:
        """The body's backward edges, labelled as ``builder_cls.edge_label`` labels (the
        renderer passes its own builder class: it imports this module)."""
        labels = body_labels(self.loop, self.names, self.b.lname, builder_cls)
        for e in labels.result.edges:
            x = e.forward.inputs[e.operand]
            text = dot_text(labels.edge_label(e, None), "\\l")
            self.b.dot.edge(self.src(e.forward), self.src(x), label=text, color="#c2410c",
                            fontcolor="#c2410c", style="dashed", constraint="false",
                            penwidth="1.2", arrowhead="vee")


def body_labels(loop, names, lname, builder_cls):
    """A builder whose labels name the body's nodes; the upstream gradient of a body output
    is what reaches it from outside the step: from step t + 1 (the carry) and from the
    loss through ``ys[t]``."""
    from graphc.passes.autodiff import backward

    after = "t−1" if loop.reverse else "t+1"

    class Labels(builder_cls):
        def upstream_name(self, z, loss):
            return f"∂{self.lname}/∂{self.name(z)}"

        def upstream_formula(self, z, loss):
            parts = [self.downstream_formula(e, loss) for e in self.into.get(id(z), ())]
            for i, new in enumerate(loop.new_carry):
                if new is z:
                    parts.append(f"∂{self.lname}/∂{self.name(loop.carry[i])} of step {after}")
            for j, y in enumerate(loop.ys):
                if y is z:
                    parts.append(f"∂{self.lname}/∂ys{j}[t]")
            return " + ".join(parts)

        def edge_label(self, e, loss, **limit):
            lines = super().edge_label(e, loss, **limit)
            if any(e.forward.inputs[e.operand] is p for p in loop.consts):
                lines[2] += " (summed over t)"  # a weight: every step adds its share
            return lines

    outs = list(loop.new_carry + loop.ys)
    labels = Labels(outs, None, None, collapse=False, direction="LR")
    labels.names, labels.lname = names, lname
    wrt = [p for p in loop.params if p.dtype.startswith("float")]
    seeds = [placeholder(f"{loop.tag}.seed{k}", t.shape, t.dtype) for k, t in enumerate(outs)]
    labels.result = backward(outs, seeds, wrt)
    labels.set_backward(labels.result)
    return labels


def _shape(t) -> str:
    return "scalar" if not t.shape else "×".join(map(str, t.shape))


__all__ = ["CARRY", "ScanDrawing", "body_values", "first_step", "instances", "is_scan", "role",
           "title"]
