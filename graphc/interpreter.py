"""The NumPy reference interpreter: the oracle every other backend is checked against."""

from __future__ import annotations

import numpy as np

from .errors import GraphError
from .fused_ops import Fused
from .graph import Graph, node_names
from .inputs import Constant, Input
from .ir import located
from .lowering import failed

# A value (or a fused loop's domain) of more elements than this is refused before it runs:
# 2**34 float32 elements are 64 GiB, and a fused loop over them alone takes tens of seconds
# (a sum over a broadcast of 2**40 elements ran for minutes and lost precision).
MAX_ELEMENTS = 2**34


def check_sizes(nodes) -> None:
    """Raise GraphError naming the first node of ``nodes`` that computes more than
    MAX_ELEMENTS elements (a fused node: over its loop's domain), with its shape and the
    user's line."""
    for t in nodes:
        shape = t.shape
        if isinstance(t.op, Fused):
            shape = np.broadcast_shapes(*(i.shape for i in t.inputs))
        n = int(np.prod(shape, dtype=np.float64))
        if n > MAX_ELEMENTS:
            raise GraphError(located(
                f"{t.op.name} ({t.name}) of shape {tuple(shape)} has {n:.4g} elements, more "
                f"than graphc computes (2**{MAX_ELEMENTS.bit_length() - 1}); reduce the shape "
                f"or split the computation", t.loc))


def evaluate_graph(graph: Graph, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``graph`` on validated ``feeds``; one array per output, in graph order.

    Values are freed as soon as their last user has run, so peak memory follows liveness.
    A value of more than MAX_ELEMENTS elements raises GraphError before anything runs.
    """
    check_sizes(graph.nodes)
    last_use = {}
    for k, t in enumerate(graph.nodes):
        for i in t.inputs:
            last_use[id(i)] = k
    for t in graph.outputs:
        last_use[id(t)] = len(graph.nodes)
    values: dict[int, np.ndarray] = {}
    runs = _joint_runs(graph.nodes)
    for k, t in enumerate(graph.nodes):
        if isinstance(t.op, Input):
            value = feeds[t.op.label]
        elif isinstance(t.op, Constant):
            value = t.op.value.array
        elif id(t) in runs:  # one run gives every output of the instance
            value = _run_joint(t, [values[id(i)] for i in t.inputs], runs, values, graph)
        else:
            value = _run(t, [values[id(i)] for i in t.inputs], graph)
        values[id(t)] = value
        for i in set(map(id, t.inputs)):
            if last_use[i] == k:
                del values[i]
    return [values[id(t)] for t in graph.outputs]


def _joint_runs(nodes) -> dict[int, list]:
    """The nodes whose op evaluates several outputs in one run (``evaluate_outputs``: the
    outputs of a scan) grouped by run: one ``op.joint_key`` and the same inputs."""
    runs: dict[tuple, list] = {}
    for t in nodes:
        if hasattr(t.op, "evaluate_outputs"):
            runs.setdefault((t.op.joint_key,) + tuple(map(id, t.inputs)), []).append(t)
    return {id(t): run for run in runs.values() for t in run}


def _run_joint(t, args, runs, values, graph) -> np.ndarray:
    nodes = runs[id(t)]
    if t is not nodes[0]:
        return values.pop(("run", id(t)))
    try:
        with np.errstate(all="ignore"):
            results = t.op.evaluate_outputs([n.op for n in nodes], args)
    except GraphError as err:
        raise failed(t, node_names(graph), err) from err
    for n, r in zip(nodes[1:], results[1:]):
        values[("run", id(n))] = r
    return results[0]


def _run(t, args, graph) -> np.ndarray:
    try:
        # IEEE results (inf, nan) without warnings, as compiled kernels give them: every
        # backend is silent alike (docs/codegen.md, "Floating-point exceptions")
        with np.errstate(all="ignore"):
            out = np.asarray(t.op.evaluate(*args))
    except (IndexError, ValueError, FloatingPointError) as err:
        raise failed(t, node_names(graph), err) from err  # (names made on failure only)
    if out.dtype.name != t.dtype:
        out = out.astype(t.dtype)
    if out.shape != t.shape:  # a broken op rule, never a user error
        raise GraphError(f"{t.op.name} produced shape {out.shape}, its rule said {t.shape}")
    return out
