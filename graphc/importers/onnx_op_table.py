"""The table of ONNX ops ``gc.from_onnx`` imports and the :class:`Call` each op's function
gets: the node, its attributes and its inputs.  The ops themselves are registered by
:mod:`graphc.importers.onnx_ops` and the modules it imports (``onnx_ops_nn``,
``onnx_ops_rnn``)."""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOpError
from ..ir import Tensor, located

SUPPORTED: dict = {}


def onnx_op(*op_types):
    """Register the decorated function as the import of ``op_types``."""
    def register(fn):
        for op_type in op_types:
            SUPPORTED[op_type] = fn
        return fn
    return register


class Call:
    """One ONNX node being imported: its attributes and its inputs."""

    def __init__(self, importer, node, attrs: dict):
        self.importer, self.node, self.attrs = importer, node, attrs
        self.op_type, self.opset = node.op_type, importer.opset

    def attr(self, name, default=None):
        value = self.attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    def has(self, i: int) -> bool:
        return i < len(self.node.input) and bool(self.node.input[i])

    def x(self, i: int = 0) -> Tensor | None:
        """Input ``i`` as a tensor (None when the optional input is absent)."""
        return self.importer.tensor(self.node.input[i]) if self.has(i) else None

    def xs(self) -> list[Tensor]:
        return [self.importer.tensor(n) for n in self.node.input if n]

    def const(self, i: int, default=None):
        """Input ``i`` as a constant NumPy array (``default`` when absent)."""
        if not self.has(i):
            return default
        return self.importer.static(self.node.input[i], self.describe())

    def ints(self, i: int, attr: str, default=None):
        """An int list given as attribute ``attr`` (older opsets) or as input ``i``."""
        if attr in self.attrs:
            return [int(v) for v in self.attrs[attr]]
        value = self.const(i)
        return default if value is None else [int(v) for v in np.asarray(value).ravel()]

    def describe(self) -> str:
        return f"ONNX op {self.op_type!r} (node {self.node.name or self.node.output[0]!r})"

    def unsupported(self, detail: str):
        raise UnsupportedOpError(located(f"{self.describe()}: {detail} is not supported by "
                                         "gc.from_onnx"))


def axis_index(axis: int, ndim: int) -> int:
    """``axis`` (negative from the end) as an index in ``0..ndim - 1``."""
    return int(axis) % ndim if ndim else 0
