"""The NumPy reference interpreter: the oracle every other backend is checked against."""

from __future__ import annotations

import numpy as np

from .graph import Graph
from .inputs import Constant, Input
from .ir import GraphError, located


def evaluate_graph(graph: Graph, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``graph`` on validated ``feeds``; one array per output, in graph order.

    Values are freed as soon as their last user has run, so peak memory follows liveness.
    """
    last_use = {}
    for k, t in enumerate(graph.nodes):
        for i in t.inputs:
            last_use[id(i)] = k
    for t in graph.outputs:
        last_use[id(t)] = len(graph.nodes)
    values: dict[int, np.ndarray] = {}
    for k, t in enumerate(graph.nodes):
        if isinstance(t.op, Input):
            value = feeds[t.op.label]
        elif isinstance(t.op, Constant):
            value = t.op.value.array
        else:
            value = _run(t, [values[id(i)] for i in t.inputs])
        values[id(t)] = value
        for i in set(map(id, t.inputs)):
            if last_use[i] == k:
                del values[i]
    return [values[id(t)] for t in graph.outputs]


def _run(t, args) -> np.ndarray:
    try:
        out = np.asarray(t.op.evaluate(*args))
    except (IndexError, ValueError, FloatingPointError) as err:
        raise GraphError(located(f"{t.op.name} ({t.name}) failed at run time: {err}",
                                 t.loc)) from err
    if out.dtype.name != t.dtype:
        out = out.astype(t.dtype)
    if out.shape != t.shape:  # a broken op rule, never a user error
        raise GraphError(f"{t.op.name} produced shape {out.shape}, its rule said {t.shape}")
    return out
