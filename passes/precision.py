"""Change the float precision of a graph.

Before: any graph.  After: the same computation with every ``float32`` input, parameter,
constant, cast and derivative node made ``float64`` (or the reverse); integer and bool
nodes are untouched.  Used by ``gc.check_grad`` to take finite differences in float64.
"""

from __future__ import annotations

from dataclasses import replace

from graphc.elementwise_ops import Elementwise
from graphc.graph import Graph, as_outputs
from graphc.inputs import Constant, Input
from graphc.ir import StaticArray, Tensor
from graphc.scan import Scan
from graphc.shape_ops import Cast


def _retyped(op, src: str, dst: str):
    if isinstance(op, Input) and op.in_dtype == src:
        return replace(op, in_dtype=dst)
    if isinstance(op, Constant) and op.value.array.dtype.name == src:
        return replace(op, value=StaticArray(op.value.array.astype(dst)))
    if isinstance(op, Cast) and op.to == src:
        return Cast(dst)
    if isinstance(op, Elementwise) and op.dtype == src:
        return replace(op, dtype=dst)
    if isinstance(op, Scan):  # the body, retyped alike
        loop = op.loop
        parts = (loop.carry, loop.xs, loop.consts, loop.new_carry, loop.ys)
        new, _ = with_float_dtype([t for part in parts for t in part], dst, src)
        cut = [sum(map(len, parts[:k])) for k in range(len(parts) + 1)]
        return Scan(replace(loop, **{f: tuple(new[a:b]) for f, a, b in zip(
            ("carry", "xs", "consts", "new_carry", "ys"), cut, cut[1:])}), op.out)
    return op


def with_float_dtype(outputs, dtype: str = "float64", source: str = "float32"):
    """``outputs`` rebuilt with ``source`` floats turned into ``dtype``.

    Returns ``(new_outputs, mapping)`` where ``mapping`` maps ``id(old node)`` to its new
    node, so callers can find the counterparts of inputs they hold.
    """
    outs = as_outputs(outputs)
    mapping: dict[int, Tensor] = {}
    for t in Graph(outs).nodes:
        op = _retyped(t.op, source, dtype)
        inputs = [mapping[id(i)] for i in t.inputs]
        same = op is t.op and all(a is b for a, b in zip(inputs, t.inputs))
        mapping[id(t)] = t if same else Tensor.make(op, inputs)
    return [mapping[id(t)] for t in outs], mapping
