"""The pass manager: one explicit, ordered pipeline of ``Graph -> Graph`` passes.

:data:`DEFAULT_PIPELINE` is what ``gc.compile`` runs (``optimize=False`` runs none;
``passes=[...]`` runs the given list, names from :data:`PASSES` or functions
``(graph, *, log) -> Graph``).  Each pass is one module of ``graphc.passes`` whose
docstring states what holds before and after it:

1. ``simplify``: algebraic rules kept as data, and constant folding (:mod:`.simplify`);
2. ``cse``: commutative operands in one order, so interning merges equal expressions;
3. ``fusion``: elementwise groups (and their sums) become fused nodes;
4. ``dce``: fused groups pruned to the outputs and steps still used;
5. ``memory``: the memory-aware schedule (the order the backends run the nodes in; no node
   changes), liveness and the buffer plan, reported.

After every pass the pipeline checks that the outputs kept their shapes and dtypes, and,
when ``check=True`` or the environment variable ``GRAPHC_CHECK_PASSES`` is set (the test
suite sets it), runs :func:`graphc.check_graph` on the result.  What each pass did goes to
``f.stats["passes"]``; ``print(f.stats)`` shows it as a table.

>>> import graphc as gc
>>> x = gc.input("x", (4,))
>>> g, report = run(gc.Graph(gc.exp(x * 1.0) - 0.0), DEFAULT_PIPELINE)
>>> [(r["pass"], r["nodes_before"], r["nodes_after"]) for r in report]   # doctest: +ELLIPSIS
[('simplify', 6, 2), ('cse', 2, 2), ('fusion', 2, 2), ('dce', 2, 2), ('memory', 2, 2)]
"""

from __future__ import annotations

import inspect
import os
import time
from dataclasses import dataclass
from functools import partial

from graphc.errors import GraphError
from graphc.graph import Graph, check_graph

from .cse import cse
from .dce import dce
from .fusion import fusion
from .memory import memory
from .remat import remat
from .simplify import simplify, simplify_unsafe


@dataclass(frozen=True)
class Pass:
    """A named ``Graph -> Graph`` pass; ``fn(graph, log=dict)`` records what it did."""

    name: str
    fn: object

    @property
    def doc(self) -> str:
        """The first line of the pass's docstring."""
        return (inspect.getdoc(self.fn) or "").split("\n")[0]

    def __call__(self, graph: Graph, log: dict) -> Graph:
        return self.fn(graph, log=log)


PASSES: dict[str, Pass] = {p.name: p for p in (
    Pass("simplify", simplify),
    Pass("simplify-unsafe", simplify_unsafe),
    Pass("cse", cse),
    Pass("remat", remat),
    Pass("fusion", fusion),
    Pass("fusion-no-epilogue", partial(fusion, reductions=False)),
    Pass("dce", dce),
    Pass("memory", memory),
)}
DEFAULT_PIPELINE: tuple[str, ...] = ("simplify", "cse", "fusion", "dce", "memory")
# Rematerialization is off by default: it trades compute for memory (passes/remat.py).
REMAT_PIPELINE: tuple[str, ...] = ("simplify", "cse", "fusion", "remat", "fusion", "dce",
                                   "memory")


def resolve(passes) -> list[Pass]:
    """``passes`` (names, :class:`Pass` objects or functions) as Pass objects."""
    out = []
    for p in passes:
        if isinstance(p, Pass):
            out.append(p)
        elif isinstance(p, str):
            if p not in PASSES:
                raise ValueError(f"unknown pass {p!r}; passes are {', '.join(PASSES)}")
            out.append(PASSES[p])
        elif callable(p):
            accepts_log = "log" in inspect.signature(p).parameters
            fn = p if accepts_log else (lambda graph, log, f=p: f(graph))
            out.append(Pass(getattr(p, "__name__", "pass"), fn))
        else:
            raise TypeError(f"a pass is a name or a function Graph -> Graph, got {p!r}")
    return out


def checking() -> bool:
    return os.environ.get("GRAPHC_CHECK_PASSES", "") not in ("", "0")


def run(graph: Graph, passes, check: bool | None = None) -> tuple[Graph, list[dict]]:
    """Run ``passes`` in order; return the final graph and one report per pass."""
    check = checking() if check is None else check
    types = [(t.shape, t.dtype) for t in graph.outputs]
    report = []
    for p in resolve(passes):
        before = len(graph.nodes)
        start = time.perf_counter()
        log: dict = {}
        result = p(graph, log)
        seconds = time.perf_counter() - start
        if not isinstance(result, Graph):
            raise GraphError(f"pass {p.name!r} returned {type(result).__name__}, not a Graph")
        if [(t.shape, t.dtype) for t in result.outputs] != types:
            raise GraphError(f"pass {p.name!r} changed the outputs' shapes or dtypes")
        if check:
            check_graph(result)
        graph = result
        report.append({"pass": p.name, "nodes_before": before, "nodes_after": len(graph.nodes),
                       "seconds": seconds, **log})
    return graph, report


def describe(entry: dict) -> str:
    """One line saying what a pass did, from its report."""
    name = entry["pass"]
    if name.startswith("simplify"):
        fired = entry.get("rules_fired", {})
        return ", ".join(f"{k}×{v}" for k, v in fired.items()) or "nothing to simplify"
    if name == "cse":
        return f"{entry.get('merged', 0)} nodes merged"
    if name == "remat":
        return (f"{entry['recomputed']} values recomputed in the backward, "
                f"{_mb(entry['bytes_not_kept'])} not kept from the forward")
    if name.startswith("fusion"):
        if not entry.get("groups"):
            return "no group to fuse"
        return (f"{entry['groups']} groups from {entry['nodes_fused']} nodes "
                f"({entry['epilogues']} sums as epilogues); "
                f"{_mb(entry['bytes_saved'])} of intermediates not stored")
    if name == "dce":
        return (f"{entry.get('fused_outputs_removed', 0)} fused outputs and "
                f"{entry.get('fused_steps_removed', 0)} steps removed")
    if name == "memory":
        text = (f"peak {_mb(entry['planned_peak_bytes'])} planned "
                f"(naive {_mb(entry['naive_peak_bytes'])}, live peak "
                f"{_mb(entry['peak_live_bytes'])}), {entry['buffers']} buffers, "
                f"{entry['in_place']} in place, {entry.get('hosted', 0)} in outputs")
        before = entry.get("unscheduled_peak_bytes", 0)
        if before > entry["planned_peak_bytes"]:
            text += f"; scheduled, {1 - entry['planned_peak_bytes'] / before:.0%} below graph order"
        if entry.get("saved_for_backward"):
            text += (f"; forward keeps {entry['saved_for_backward']} values "
                     f"({_mb(entry['saved_for_backward_bytes'])}) for the backward")
        return text
    return ", ".join(f"{k}={v}" for k, v in entry.items()
                     if k not in ("pass", "nodes_before", "nodes_after", "seconds"))


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 10_000 else f"{n} B"


def format_report(report: list[dict]) -> str:
    """The per-pass table of ``f.stats``."""
    lines = [f"{'pass':<20}{'nodes':>12}{'ms':>8}  what it did"]
    for e in report:
        nodes = f"{e['nodes_before']} -> {e['nodes_after']}"
        lines.append(f"{e['pass']:<20}{nodes:>12}{e['seconds'] * 1e3:>8.1f}  {describe(e)}")
    return "\n".join(lines)
