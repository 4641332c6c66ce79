"""graphc as an ONNX backend (``onnx.backend.base.Backend``), so that ONNX's own backend
test suite can judge the importer (tests/test_onnx_conformance.py).

>>> import numpy as np
>>> from onnx import helper, TensorProto as T
>>> from graphc.importers.onnx_backend import GraphcBackend
>>> node = helper.make_node("Softmax", ["x"], ["y"], axis=0)
>>> graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", T.FLOAT, ["N"])],
...                           [helper.make_tensor_value_info("y", T.FLOAT, ["N"])])
>>> GraphcBackend.run_model(helper.make_model(graph), [np.zeros(4, np.float32)])[0]
array([0.25, 0.25, 0.25, 0.25], dtype=float32)
"""

from __future__ import annotations

import numpy as np
from onnx.backend.base import Backend, BackendRep, namedtupledict

from ..compiler import compile
from .onnx_import import _Importer, from_onnx


class GraphcRep(BackendRep):
    """A prepared model: imported and compiled once per distinct set of input shapes (the
    symbolic dimensions are bound from the arrays fed) and values of integer and bool
    inputs (which become constants)."""

    def __init__(self, model, backend: str):
        self.model, self.backend = model, backend
        inits = {t.name for t in model.graph.initializer}
        self.input_infos = [v for v in model.graph.input if v.name not in inits]
        self.output_names = [v.name for v in model.graph.output]
        self.compiled: dict = {}
        _Importer(model, {}).check_supported()  # unsupported ops fail here, not in run

    def _dims(self, arrays) -> dict:
        dims = {}
        for v, a in zip(self.input_infos, arrays):
            for axis, d in enumerate(v.type.tensor_type.shape.dim):
                if not d.HasField("dim_value") and axis < np.ndim(a):
                    dims[d.dim_param or f"{v.name}:{axis}"] = np.shape(a)[axis]
        return dims

    def specialised(self, fixed: dict):
        """The model with the integer and bool inputs ``fixed`` made initializers: graphc
        graphs have static shapes, and ONNX's tests feed shapes, axes and pads as inputs."""
        from onnx import numpy_helper
        model = type(self.model)()
        model.CopyFrom(self.model)
        kept = [v for v in model.graph.input if v.name not in fixed]
        del model.graph.input[:]
        model.graph.input.extend(kept)
        model.graph.initializer.extend(numpy_helper.from_array(a, name)
                                       for name, a in fixed.items())
        return model

    def run(self, inputs, **kwargs):
        if isinstance(inputs, dict):
            arrays = [inputs[v.name] for v in self.input_infos]
        else:
            arrays = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        arrays = [np.asarray(a) for a in arrays]
        fixed = {v.name: a for v, a in zip(self.input_infos, arrays) if a.dtype.kind in "biu"}
        key = tuple((a.shape, a.dtype.str, a.tobytes() if v.name in fixed else None)
                    for v, a in zip(self.input_infos, arrays))
        if key not in self.compiled:
            model = self.specialised(fixed) if fixed else self.model
            m = from_onnx(model, dims=self._dims(arrays))
            self.compiled[key] = m, compile(m.outputs, backend=self.backend)
        m, f = self.compiled[key]
        feeds = {m.inputs[v.name].name: a for v, a in zip(self.input_infos, arrays)
                 if v.name in m.inputs}
        used = {name for t in m.outputs for name in t.leaves}
        out = f(**{k: a for k, a in feeds.items() if k in used}, **m.weights)
        out = out if isinstance(out, tuple) else (out,)
        return namedtupledict("Outputs", self.output_names)(*out)


class GraphcBackend(Backend):
    """graphc's ONNX backend on its NumPy reference interpreter; :class:`GraphcNumbaBackend`
    compiles with Numba."""

    backend = "numpy"

    @classmethod
    def prepare(cls, model, device: str = "CPU", **kwargs) -> GraphcRep:
        super().prepare(model, device, **kwargs)  # onnx.checker.check_model
        return GraphcRep(model, cls.backend)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"


class GraphcNumbaBackend(GraphcBackend):
    backend = "numba"
