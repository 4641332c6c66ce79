"""``gc.from_onnx``: an ONNX model as an ordinary graphc graph.

Every ONNX node becomes graphc nodes built by the public functions (the op table is in
:mod:`graphc.importers.onnx_ops`), so the imported graph differentiates, compiles, renders
and explores like a hand-written one.  Float initializers become params (``gc.param``,
their values in ``Model.weights``), integer initializers constants.  Inputs that ONNX ops
take as attributes (shapes, axes, pads, slice bounds) must be constant: initializers,
``Constant`` nodes, or anything computed from them and from static shapes (``Shape``),
which is folded at import.  ``onnx`` is imported only when a model is imported.
"""

from __future__ import annotations

import contextlib
import keyword
import os
import re

import numpy as np

from .. import dtypes
from ..dynamic import defer, is_dynamic
from ..errors import GraphError, ShapeError, UnsupportedOpError
from ..graph import Graph
from ..inputs import Constant, constant, input, param
from ..interpreter import evaluate_graph
from ..ir import Tensor, located, scope
from .model import Model
from .onnx_dtypes import graphc_dtype, onnx_dtype


class OnnxInitializer:
    """The ``init`` of an imported param: the model's own value, so ``gc.init_params``
    gives the model's weights back."""

    def __init__(self, value: np.ndarray):
        self.value = value

    def __call__(self, shape, rng) -> np.ndarray:
        return self.value

    def __repr__(self) -> str:
        return "onnx_initializer"


def from_onnx(model, dims: dict | None = None) -> Model:
    """Import an ONNX model (a file path or an ``onnx.ModelProto``) as a :class:`gc.Model`.

    Symbolic dimensions become dynamic dimensions (named by the model, ``None`` where
    unnamed): the compiled function takes any size there, importing the model once per
    distinct feed shape.  ``dims`` fixes them instead (``{"N": 8}``; an unnamed dimension
    is keyed ``"input_name:axis"``), which gives a graph of ordinary nodes to draw.  An op
    outside the supported set (``graphc.importers.onnx_ops.SUPPORTED``) raises
    ``gc.UnsupportedOpError`` before anything is built.

    >>> import onnx, numpy as np, graphc as gc
    >>> from onnx import helper, TensorProto as T
    >>> g = helper.make_graph(
    ...     [helper.make_node("Gemm", ["x", "W"], ["h"], name="fc/Gemm"),
    ...      helper.make_node("Relu", ["h"], ["y"], name="fc/Relu")], "mlp",
    ...     [helper.make_tensor_value_info("x", T.FLOAT, [2, 3])],
    ...     [helper.make_tensor_value_info("y", T.FLOAT, [2, 4])],
    ...     [helper.make_tensor("W", T.FLOAT, [3, 4], np.ones(12))])
    >>> m = gc.from_onnx(helper.make_model(g))
    >>> m
    Model(mlp: (x: float32[2, 3]) -> (float32[2, 4]), 1 params)
    >>> f = gc.compile(m.outputs, backend="numpy")
    >>> (y,) = f(x=np.ones((2, 3), np.float32), **m.weights)
    >>> y[0], list(m.params), m.outputs[0].name
    (array([3., 3., 3., 3.], dtype=float32), ['W'], 'y')
    """
    import onnx

    source = ""
    if isinstance(model, (str, os.PathLike)):
        source = os.path.basename(os.fspath(model))
        model = load(os.fspath(model))
    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"from_onnx takes a file path or an onnx.ModelProto, got "
                        f"{type(model).__name__}")
    if not model.graph.output:  # (a file's: load says so)
        raise GraphError(f"the ONNX model {model.graph.name!r} has no outputs")
    return _Importer(model, dict(dims or {})).run(source or model.graph.name)


def load(path: str):
    """``onnx.load(path)``, or a GraphError saying the file is not an ONNX model."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(path)
    except DecodeError as err:
        raise GraphError(f"{path} is not an ONNX model (it does not parse: {err})") from None
    if not model.graph.output:
        raise GraphError(f"{path}: an ONNX model with no outputs (an empty or truncated file?)")
    return model


def build_from_file(path: str, seed: int = 0):
    """``(loss, wrt, feeds)`` of an ONNX file, as a model file's ``build()`` gives them, for
    ``graphc render/explore/check model.onnx``: the loss is the sum of the first output
    (the gradient of every output element, seeded with ones), ``wrt`` the params (or the
    float inputs when the weights are not initializers), the feeds random inputs (symbolic
    dimensions of size 1) and the model's weights."""
    model = load(path)
    inits = {t.name for t in model.graph.initializer}
    dims = {d.dim_param or f"{v.name}:{axis}": 1 for v in model.graph.input
            if v.name not in inits
            for axis, d in enumerate(v.type.tensor_type.shape.dim) if not d.HasField("dim_value")}
    m = from_onnx(model, dims=dims)
    rng = np.random.default_rng(seed)
    feeds = {t.name: rng.standard_normal(t.shape).astype(t.dtype) if dtypes.is_float(t.dtype)
             else rng.integers(0, 2, t.shape).astype(t.dtype) for t in m.inputs.values()}
    from ..functions import sum as total
    y = m.outputs[0]
    loss = y if y.shape == () else total(y)
    wrt = list(m.params.values()) or [t for t in m.inputs.values() if dtypes.is_float(t.dtype)]
    return loss, wrt, {**feeds, **m.weights}


def _identifier(name: str) -> str:
    """``name`` as a Python identifier: other characters become ``_``."""
    out = re.sub(r"\W", "_", name) or "_"
    if out[0].isdigit():
        out = "_" + out
    return out + "_" if keyword.iskeyword(out) else out


class _Importer:
    def __init__(self, model, dims: dict):
        from onnx import numpy_helper

        from . import onnx_ops  # its table of ops is loaded with the first import
        self.ops = onnx_ops
        self.model, self.graph, self.dims = model, model.graph, dims
        self.opset = next((o.version for o in model.opset_import
                           if o.domain in ("", "ai.onnx")), 1)
        self.initial = {t.name: numpy_helper.to_array(t) for t in self.graph.initializer}
        self.values: dict[str, Tensor] = {}
        self.params: dict[str, Tensor] = {}
        self.taken: set[str] = set()
        # how many parts of its name every node shares: dropped from groups (group_of)
        self.prefix = _common_prefix([_scope_parts(n) for n in self.graph.node])

    # -- names --------------------------------------------------------------------------
    def unique(self, name: str) -> str:
        base = _identifier(name)
        out, k = base, 1
        while out in self.taken:
            k += 1
            out = f"{base}_{k}"
        self.taken.add(out)
        return out

    # -- values -------------------------------------------------------------------------
    def tensor(self, name: str) -> Tensor:
        """The graph value named ``name``: a float initializer becomes a param the first
        time it is used as a tensor."""
        if name not in self.values:
            if name not in self.initial:
                raise GraphError(f"ONNX value {name!r} is used before it is defined")
            value = self.initial[name]
            dtype = graphc_dtype(value.dtype, f"initializer {name!r}")
            if dtypes.is_float(dtype):
                value = np.array(value, dtype, order="C")  # 0-d stays 0-d
                t = param(self.unique(name), value.shape, init=OnnxInitializer(value),
                          dtype=dtype)
                self.params[name] = t
            else:
                t = constant(value.astype(dtype))
            self.values[name] = t
        return self.values[name]

    def static(self, name: str, what: str) -> np.ndarray:
        """The constant value of ``name`` (an ONNX input that acts as an attribute)."""
        if name in self.initial:
            return self.initial[name]
        t = self.tensor(name)
        if isinstance(t.op, Constant):
            return t.op.value.array
        if t.leaves:
            raise UnsupportedOpError(located(
                f"{what}: input {name!r} must be constant (computed from initializers and "
                f"shapes only), but it depends on {', '.join(sorted(t.leaves))}"))
        return evaluate_graph(Graph([t]), {})[0]

    # -- the model ----------------------------------------------------------------------
    def run(self, source: str) -> Model:
        self.check_supported()
        inputs = {}
        for v in self.graph.input:
            if v.name in self.initial:
                continue  # an initializer listed as an input (before opset 9): a weight
            t = input(self.unique(v.name), self.input_shape(v),
                      onnx_dtype(v.type.tensor_type.elem_type, f"input {v.name!r}"))
            inputs[v.name] = self.values[v.name] = t
        if any(is_dynamic(t.shape) for t in inputs.values()):
            outputs = self.deferred()
        else:
            outputs = self.build()
        used = {name for t in outputs for name in t.leaves}
        params = {k: t for k, t in self.params.items() if t.op.label in used}
        weights = {t.op.label: t.op.init.value for t in params.values()}
        return Model(inputs, outputs, params, weights, source)

    def build(self) -> list[Tensor]:
        """Import every node (inside the groups of its name); the model's outputs."""
        for node in self.graph.node:
            with self.group_of(node):
                self.import_node(node)
        return [self.tensor(v.name) for v in self.graph.output]

    @contextlib.contextmanager
    def group_of(self, node):
        """Inside the gc.scopes of ``node``'s name (``/layer1/conv1/Conv``: layer1, conv1),
        less the part every node's name shares; none for ``node`` None."""
        with contextlib.ExitStack() as stack:
            for part in (_scope_parts(node)[self.prefix:] if node is not None else []):
                stack.enter_context(scope(part))
            yield

    def deferred(self) -> list[Tensor]:
        """The outputs of a model with dynamic inputs: each one deferred call that imports
        the model on the inputs of the fed shapes (gc.compile replays it per shape)."""
        used = self.reachable()
        readers = {}  # each value's first reader: its param goes in that node's group
        for node in self.graph.node:
            for name in node.input:
                readers.setdefault(name, node)
        for name, value in self.initial.items():
            if value.dtype.kind == "f" and (used is None or name in used):
                with self.group_of(readers.get(name)):
                    self.tensor(name)  # the params, shared by every replay
        names = tuple(self.values)
        tensors = tuple(self.values[n] for n in names)
        try:
            return [defer(_replayed_output, tensors,
                          {"model": self.model, "names": names, "k": k}, label=v.name)
                    for k, v in enumerate(self.graph.output)]
        except ShapeError as err:  # e.g. a Reshape to a size the exporter baked in
            symbols = sorted({d for t in tensors for d in t.shape if isinstance(d, str)})
            raise ShapeError(f"{err}\nthe model does not run at every size of its symbolic "
                             f"dimensions {symbols}; where it holds a fixed size for one "
                             f"(a Reshape the exporter wrote with a traced length), import "
                             f"it with that size fixed: gc.from_onnx(..., dims={{name: size}})"
                             ) from None

    def reachable(self) -> set[str] | None:
        """The names of the values the model's outputs depend on, through its nodes' inputs
        (None where a node holds a subgraph, which may read any value of the model)."""
        from onnx import AttributeProto

        subgraph = (AttributeProto.GRAPH, AttributeProto.GRAPHS)
        if any(a.type in subgraph for node in self.graph.node for a in node.attribute):
            return None
        producer = {out: node for node in self.graph.node for out in node.output}
        seen, todo = set(), [v.name for v in self.graph.output]
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo += [i for i in getattr(producer.get(name), "input", ()) if i]
        return seen

    def check_supported(self) -> None:
        for node in self.graph.node:
            if node.domain not in ("", "ai.onnx") or node.op_type not in self.ops.SUPPORTED:
                op = node.op_type if node.domain in ("", "ai.onnx") else \
                    f"{node.domain}.{node.op_type}"
                raise UnsupportedOpError(located(
                    f"ONNX op {op!r} (node {_label(node)!r}) is not supported by "
                    f"gc.from_onnx; the supported ops are: "
                    f"{', '.join(sorted(self.ops.SUPPORTED))}"))

    def input_shape(self, v) -> tuple[int, ...]:
        if not v.type.tensor_type.HasField("shape"):  # not a scalar: a rank ONNX leaves open
            raise ShapeError(located(
                f"from_onnx: input {v.name!r} has no shape (its rank is unknown); graphc "
                "needs each input's rank: give the input a shape in the model (dimensions "
                "may be symbolic, e.g. onnx.tools.update_model_dims)"))
        shape = []
        for axis, d in enumerate(v.type.tensor_type.shape.dim):
            if d.HasField("dim_value"):
                shape.append(d.dim_value)
                continue
            key = d.dim_param or f"{v.name}:{axis}"
            shape.append(int(self.dims[key]) if key in self.dims else d.dim_param or None)
        return tuple(shape)

    def import_node(self, node) -> None:
        from onnx import helper

        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        call = self.ops.Call(self, node, attrs)
        try:
            outs = self.ops.SUPPORTED[node.op_type](call)
        except UnsupportedOpError:
            raise
        except GraphError as err:
            raise type(err)(f"{err}\n  while importing ONNX node {_label(node)!r} "
                            f"({node.op_type})") from None
        outs = [outs] if isinstance(outs, Tensor) else list(outs)
        for name, t in zip(node.output, outs):
            if not name:
                continue
            if not t.op.fed and t.display is None and not isinstance(t.op, Constant):
                t.named(name)
            self.values[name] = t


_REPLAYS: dict = {}


def _replayed_output(*tensors, model, names, k) -> Tensor:
    """Output ``k`` of ``model`` imported on ``tensors`` (the values ``names``, of concrete
    shapes): what a deferred output of a model with dynamic inputs replays.  The import is
    kept for the model's other outputs (the last few imports only)."""
    key = (id(model), tuple(map(id, tensors)))
    if key not in _REPLAYS:
        importer = _Importer(model, {})
        importer.values.update(zip(names, tensors))
        if len(_REPLAYS) >= 4:
            _REPLAYS.pop(next(iter(_REPLAYS)))
        _REPLAYS[key] = (model, tensors, importer.build())
    return _REPLAYS[key][2][k]


def _label(node) -> str:
    return node.name or (node.output[0] if node.output else node.op_type)


def _scope_parts(node) -> list[str]:
    """The groups of a node: the '/'-separated prefix of its name (or first output's name),
    without the last part, which names the node itself."""
    parts = [p for p in _label(node).split("/") if p]
    return parts[:-1]


def _common_prefix(paths: list[list[str]]) -> int:
    """How many leading groups every node shares (dropped: one group around everything
    collapses to one box)."""
    if not paths:
        return 0
    n = min(len(p) for p in paths)
    k = 0
    while k < n and all(p[k] == paths[0][k] for p in paths):
        k += 1
    return k
