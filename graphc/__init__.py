"""graphc: a symbolic computation-graph compiler and visualizer for neural networks.

>>> import numpy as np, graphc as gc
>>> x = gc.input("x", (4, 3))
>>> W = gc.param("W", (3, 2))
>>> loss = gc.mean(gc.square(gc.relu(x @ W)))
>>> f = gc.compile(loss, backend="numpy")
>>> value = f(x=np.ones((4, 3), np.float32), **gc.init_params(loss, seed=0))
"""

from . import dtypes, nn, optim, train  # noqa: E402 -- gc.nn, gc.optim, gc.train build on the above
from .compiler import CompiledFunction, compile
from .elementwise_ops import PUBLIC as _ELEMENTWISE_OPS
from .elementwise_ops import ElementwiseDef
from .errors import (
    BackendError,
    CodegenError,
    DTypeError,
    ElementwiseError,
    FeedError,
    GraphError,
    RenderError,
    ShapeError,
    UnsupportedOpError,
)
from .functions import (
    all,
    any,
    argmax,
    argmin,
    broadcast_to,
    cast,
    celu,
    clip,
    concat,
    cumsum,
    elementwise,
    elu,
    flip,
    fmod,
    gelu,
    hardtanh,
    leaky_relu,
    log_softmax,
    logsumexp,
    matmul,
    max,
    mean,
    min,
    pad,
    power,
    prod,
    remainder,
    reshape,
    roll,
    softmax,
    stack,
    std,
    sum,
    take,
    tile,
    transpose,
    var,
    where,
)
from .gradcheck import GradCheckReport, check_grad  # noqa: E402
from .graph import Graph, check_graph, format_graph, to_networkx
from .importers import Model
from .importers.onnx_import import from_onnx
from .importers.torch_import import from_torch
from .inputs import INITIALIZERS, constant, init_params, input, param, params_of
from .ir import Tensor, scope
from .losses import (
    binary_cross_entropy_with_logits,
    hinge,
    huber,
    l1,
    l2,
    mse,
    one_hot,
    softmax_cross_entropy,
)
from .nn_functions import (
    avg_pool2d,
    batch_norm,
    conv1d,
    conv2d,
    conv_transpose2d,
    dropout,
    embedding,
    global_avg_pool2d,
    layer_norm,
    local_response_norm,
    max_pool2d,
)
from .passes.autodiff import grad, hvp, vjp  # noqa: E402 -- graphc.passes needs the above
from .scan import scan, stop_gradient  # noqa: E402
from .viz import Diagram, render  # noqa: E402
from .viz.explore import Explorer, explore  # noqa: E402

__version__ = "0.1.0"


def __getattr__(name):
    """``gc.to_device`` and ``gc.device_feeds`` load the CUDA backend module when first
    used, not at ``import graphc``."""
    if name in ("to_device", "device_feeds"):
        from . import cuda_backend
        return getattr(cuda_backend, name)
    raise AttributeError(f"module 'graphc' has no attribute {name!r}")


__all__ = [
    "BackendError",
    "CodegenError",
    "CompiledFunction",
    "DTypeError",
    "Diagram",
    "ElementwiseDef",
    "ElementwiseError",
    "Explorer",
    "FeedError",
    "GradCheckReport",
    "Graph",
    "GraphError",
    "INITIALIZERS",
    "Model",
    "RenderError",
    "ShapeError",
    "Tensor",
    "UnsupportedOpError",
    "all",
    "any",
    "argmax",
    "argmin",
    "avg_pool2d",
    "batch_norm",
    "binary_cross_entropy_with_logits",
    "broadcast_to",
    "cast",
    "celu",
    "check_grad",
    "check_graph",
    "clip",
    "compile",
    "concat",
    "constant",
    "conv1d",
    "conv2d",
    "conv_transpose2d",
    "cumsum",
    "device_feeds",
    "dropout",
    "dtypes",
    "elementwise",
    "elu",
    "embedding",
    "explore",
    "flip",
    "fmod",
    "format_graph",
    "from_onnx",
    "from_torch",
    "gelu",
    "global_avg_pool2d",
    "grad",
    "hardtanh",
    "hinge",
    "huber",
    "hvp",
    "init_params",
    "input",
    "l1",
    "l2",
    "layer_norm",
    "leaky_relu",
    "local_response_norm",
    "log_softmax",
    "logsumexp",
    "matmul",
    "max",
    "max_pool2d",
    "mean",
    "min",
    "mse",
    "nn",
    "one_hot",
    "optim",
    "pad",
    "param",
    "params_of",
    "power",
    "prod",
    "render",
    "remainder",
    "reshape",
    "roll",
    "scan",
    "scope",
    "softmax",
    "softmax_cross_entropy",
    "stack",
    "std",
    "stop_gradient",
    "sum",
    "take",
    "tile",
    "to_device",
    "to_networkx",
    "train",
    "transpose",
    "var",
    "vjp",
    "where",
]
# Every elementwise op graphc/elementwise_ops.py declares public is gc.<its name> (gc.exp,
# gc.atan ...): adding an elementwise op is its one line there.
globals().update(_ELEMENTWISE_OPS)
__all__ += sorted(_ELEMENTWISE_OPS)
