"""graphc: a symbolic computation-graph compiler and visualizer for neural networks.

>>> import numpy as np, graphc as gc
>>> x = gc.input("x", (4, 3))
>>> W = gc.param("W", (3, 2))
>>> loss = gc.mean(gc.square(gc.relu(x @ W)))
>>> f = gc.compile(loss, backend="numpy")
>>> value = f(x=np.ones((4, 3), np.float32), **gc.init_params(loss, seed=0))
"""

from . import dtypes, nn, optim, train  # noqa: E402 -- gc.nn, gc.optim, gc.train build on the above
from .compiler import BackendError, CompiledFunction, FeedError, compile
from .cuda_backend import device_feeds, to_device  # imports numba.cuda only when used
from .elementwise_ops import ElementwiseDef, ElementwiseError
from .functions import (
    abs,
    add,
    binary_cross_entropy_with_logits,
    broadcast_to,
    cast,
    concat,
    cos,
    div,
    elementwise,
    elu,
    equal,
    exp,
    gelu,
    greater,
    greater_equal,
    hinge,
    huber,
    l1,
    l2,
    leaky_relu,
    less,
    less_equal,
    log,
    log_softmax,
    logsumexp,
    matmul,
    max,
    maximum,
    mean,
    min,
    minimum,
    mse,
    mul,
    neg,
    not_equal,
    power,
    prelu,
    reciprocal,
    relu,
    reshape,
    sigmoid,
    silu,
    sin,
    softmax,
    softmax_cross_entropy,
    softplus,
    sqrt,
    square,
    stack,
    sub,
    sum,
    take,
    tanh,
    transpose,
    where,
)
from .gradcheck import GradCheckReport, check_grad  # noqa: E402
from .graph import Graph, check_graph, format_graph, to_networkx
from .inputs import INITIALIZERS, constant, init_params, input, param, params_of
from .ir import DTypeError, GraphError, ShapeError, Tensor, scope
from .nn_functions import (
    avg_pool2d,
    batch_norm,
    conv2d,
    dropout,
    embedding,
    global_avg_pool2d,
    layer_norm,
    max_pool2d,
)
from .numba_codegen import CodegenError  # noqa: E402 -- does not import Numba
from .passes.autodiff import grad, hvp, vjp  # noqa: E402 -- graphc.passes needs the above
from .viz import Diagram, RenderError, render  # noqa: E402
from .viz.explore import Explorer, explore  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BackendError", "CodegenError", "CompiledFunction", "DTypeError", "Diagram", "ElementwiseDef",
    "ElementwiseError", "Explorer",
    "FeedError", "GradCheckReport", "Graph", "GraphError", "INITIALIZERS",
    "RenderError", "ShapeError", "Tensor", "abs", "add", "avg_pool2d", "batch_norm",
    "binary_cross_entropy_with_logits", "broadcast_to", "cast", "check_grad", "check_graph",
    "compile", "concat", "constant", "conv2d", "cos", "device_feeds", "div", "dropout", "dtypes",
    "elementwise", "elu", "embedding", "equal", "exp", "explore",
    "format_graph", "gelu", "global_avg_pool2d",
    "grad", "greater", "greater_equal", "hinge", "huber", "hvp", "init_params", "input", "l1", "l2",
    "layer_norm", "leaky_relu", "less", "less_equal", "log", "log_softmax", "logsumexp", "matmul",
    "max", "max_pool2d", "maximum", "mean", "min", "minimum", "mse", "mul", "neg", "nn",
    "not_equal", "optim", "param", "params_of", "power", "prelu", "reciprocal", "relu", "render",
    "reshape", "scope", "sigmoid", "silu", "sin", "softmax", "softmax_cross_entropy", "softplus",
    "sqrt", "square", "stack", "sub", "sum", "take", "tanh", "to_device", "to_networkx", "train",
    "transpose", "vjp", "where",
]
