"""Leaves of a graph: inputs, trainable parameters and constants, and their initializers."""

from __future__ import annotations

import hashlib
import keyword
from dataclasses import dataclass

import numpy as np

from . import dtypes, ir
from .errors import DTypeError, GraphError, ShapeError
from .ir import Op, StaticArray, Tensor, iter_nodes, located


def _check_shape(shape, what: str, dynamic: bool = False) -> tuple:
    """``shape`` as a tuple of ints; with ``dynamic``, None and names (identifiers) stay."""
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    try:
        if isinstance(shape, (str, bytes)) or any(
                isinstance(d, (bool, float)) or (isinstance(d, str) and not dynamic) or
                (d is None and not dynamic) for d in shape):
            raise TypeError
        if any(isinstance(d, str) and not d.isidentifier() for d in shape):
            raise TypeError
        shape = tuple(d if d is None or isinstance(d, str) else int(d) for d in shape)
    except (TypeError, ValueError):
        kinds = "ints, None or names" if dynamic else "ints"
        raise ShapeError(located(f"{what}: shape must be a tuple of {kinds}, got "
                                 f"{shape!r}")) from None
    if not dynamic and any(d is None or isinstance(d, str) for d in shape):
        raise ShapeError(located(f"{what}: shape must be a tuple of ints, got {shape!r}"))
    if any(isinstance(d, int) and d < 0 for d in shape):
        raise ShapeError(located(f"{what}: shape {shape} has a negative dimension"))
    return shape


def _check_name(name) -> str:
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise GraphError(located(f"input name {name!r} is not a Python identifier"))
    return name


def _dtype(dtype, what: str) -> str:
    try:
        return dtypes.as_dtype(dtype)
    except TypeError as err:
        raise DTypeError(located(f"{what}: {err}")) from None


@dataclass(frozen=True)
class Input(Op):
    """A value fed at call time.  ``init`` is set for trainable parameters; ``state`` (the
    initial value of every element) for non-trainable state that a training step feeds
    back from its own outputs (batch-norm running statistics, ``gc.nn.state_input``)."""

    label: str
    in_shape: tuple[int, ...]
    in_dtype: str
    init: object = None
    state: float | None = None

    name = "input"
    fed = True

    @property
    def is_param(self) -> bool:
        return self.init is not None

    @property
    def is_state(self) -> bool:
        return self.state is not None

    def infer(self, inputs):
        return self.in_shape, self.in_dtype

    def attrs(self):
        init = self.init
        if callable(init):  # named by what it is, never by its address: digests are equal
            # across processes (nodes are interned by the init object itself, not by this)
            qualname = getattr(init, "__qualname__", None)
            init = f"{getattr(init, '__module__', '')}.{qualname}" if qualname else repr(init)
        state = {} if self.state is None else {"state": self.state}
        return {"label": self.label, "shape": self.in_shape, "dtype": self.in_dtype,
                "init": init, **state}


@dataclass(frozen=True)
class Traced(Input):
    """A scan body's placeholder while ``fn`` is traced, one per trace (``serial``): a
    tensor of a body kept after its scan returned is told from the next body's (the body
    itself is rebuilt on :class:`Input` placeholders, see :mod:`graphc.scan`)."""

    serial: int = 0


@dataclass(frozen=True)
class Constant(Op):
    """A constant array, stored read-only inside the graph."""

    value: StaticArray
    label: str | None = None

    name = "constant"

    def infer(self, inputs):
        return self.value.array.shape, self.value.array.dtype.name

    def evaluate(self):
        return self.value.array


def input(name: str, shape, dtype="float32") -> Tensor:
    """A symbolic input fed when the compiled function is called.  A dimension given as
    None or a name (``"N"``) is dynamic: any size may be fed there (docs/api.md).

    >>> x = input("x", (128, 784))
    >>> x.shape, x.dtype
    ((128, 784), 'float32')
    >>> input("images", (None, 784)).shape
    (None, 784)
    """
    name = _check_name(name)
    return Tensor.make(Input(name, _check_shape(shape, f"input {name!r}", dynamic=True),
                             _dtype(dtype, f"input {name!r}")))


INITIALIZERS = ("zeros", "ones", "normal", "xavier_normal", "xavier_uniform",
                "he_normal", "he_uniform")


def param(name: str, shape, init="xavier_normal", dtype="float32") -> Tensor:
    """A trainable parameter: an input that carries an initializer.

    ``init`` is one of :data:`INITIALIZERS` or a callable ``(shape, rng) -> array``.
    Fans follow ``x @ W``: a 2-D weight is ``(fan_in, fan_out)``; a weight of 3 or more
    dimensions is a convolution kernel ``(out, in, *kernel)``.

    >>> W = param("W", (784, 256))           # Xavier normal, sigma = sqrt(2 / (784 + 256))
    """
    name = _check_name(name)
    if not (callable(init) or init in INITIALIZERS):
        raise GraphError(located(f"param {name!r}: unknown init {init!r}; use one of "
                                 f"{', '.join(INITIALIZERS)} or a callable (shape, rng)"))
    dtype = _dtype(dtype, f"param {name!r}")
    if not dtypes.is_float(dtype):
        raise DTypeError(located(f"param {name!r}: parameters must be float32 or float64, "
                                 f"got {dtype}"))
    if isinstance(shape, (tuple, list)) and any(d is None or isinstance(d, str) for d in shape):
        raise ShapeError(located(f"param {name!r}: parameters have fixed shapes, got "
                                 f"{tuple(shape)!r} (None and named dimensions are for "
                                 "gc.input)"))
    return Tensor.make(Input(name, _check_shape(shape, f"param {name!r}"), dtype, init))


def constant(value, name: str | None = None, dtype=None) -> Tensor:
    """A constant array or scalar.  Python floats become float32, ints int64.

    >>> constant([1.0, 2.0]).dtype
    'float32'
    """
    if isinstance(value, Tensor):
        raise GraphError(located("gc.constant() got a Tensor; it is already a graph value"))
    if dtype is None:
        array = np.asarray(value)
        if array.dtype.kind == "f" and not isinstance(value, np.ndarray | np.generic):
            array = array.astype(np.float32)  # Python floats and lists: the default float
        elif array.dtype.kind in "iu" and array.dtype.name not in dtypes.DTYPES:
            if array.dtype.kind == "u" and array.size and array.max() > np.iinfo(np.int64).max:
                raise DTypeError(located(f"constant: value {array.max()} ({array.dtype}) does "
                                         "not fit int64, graphc's widest integer dtype"))
            array = array.astype(np.int64)
    else:
        array = np.asarray(value, dtype=_dtype(dtype, "constant"))
    _dtype(array.dtype, "constant")
    if name is not None:
        _check_name(name)
    return Tensor.make(Constant(StaticArray(array), name))


# ---------------------------------------------------------------------------------------
# Initializers


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = int(np.prod(shape[2:]))
    return shape[1] * receptive, shape[0] * receptive


def initial_value(op: Input, rng: np.random.Generator) -> np.ndarray:
    """Draw the initial value of parameter ``op`` with ``rng``."""
    shape, init = op.in_shape, op.init
    fan_in, fan_out = _fans(shape)
    if callable(init):
        value = np.array(init(shape, rng))  # a copy: training writes over it, not the user's
        if value.shape != shape:
            raise GraphError(located(f"param {op.label!r}: init returned shape "
                                     f"{value.shape}, expected {shape}"))
        if value.dtype.kind not in "biuf":
            raise DTypeError(located(f"param {op.label!r}: init returned {value.dtype} "
                                     f"values, expected real numbers"))
    elif init == "zeros":
        value = np.zeros(shape)
    elif init == "ones":
        value = np.ones(shape)
    elif init == "normal":
        value = rng.standard_normal(shape)
    elif init == "xavier_normal":
        value = rng.normal(0.0, np.sqrt(2.0 / (fan_in + fan_out)), shape)
    elif init == "xavier_uniform":
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        value = rng.uniform(-limit, limit, shape)
    elif init == "he_normal":
        value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
    else:  # he_uniform
        limit = np.sqrt(6.0 / fan_in)
        value = rng.uniform(-limit, limit, shape)
    return np.asarray(value, dtype=op.in_dtype, order="C")  # (ascontiguousarray makes 0-d 1-d)


def params_of(outputs) -> list[Tensor]:
    """The parameters ``outputs`` depend on, in graph order."""
    outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    return [t for t in iter_nodes(outputs) if isinstance(t.op, Input) and t.op.is_param]


def init_params(outputs, seed: int = 0) -> dict[str, np.ndarray]:
    """``{name: array}`` of initial values for every param the outputs depend on.

    Each parameter draws from its own stream seeded by ``seed`` and its name, so adding a
    parameter to a model does not change the values of the others.
    """
    values, seen = {}, {}
    for p in params_of(outputs):
        other = seen.setdefault(p.op.label, p)
        if other is not p:  # outputs side by side, never joined by an op
            ir.name_clash("init_params", other, p)
        stream = int.from_bytes(hashlib.sha1(p.op.label.encode()).digest()[:8], "little")
        values[p.op.label] = initial_value(p.op, np.random.default_rng([seed, stream]))
    return values


# ---------------------------------------------------------------------------------------
# Lifting Python scalars and NumPy arrays to constants: the rule every op builder uses


def _is_weak(value) -> bool:
    return isinstance(value, (bool, int, float, np.generic))


def lift_all(args, op_name: str = "op") -> list[Tensor]:
    """``args`` as tensors.  Python and NumPy scalars take the dtype of the tensors they
    meet (weak typing); NumPy arrays keep their own dtype."""
    for a in args:
        if not (isinstance(a, Tensor) or _is_weak(a) or _numeric_array(a)):
            raise DTypeError(located(f"{op_name}: cannot use {type(a).__name__} {a!r:.60} as "
                                     "an operand; use a graphc Tensor, a number or a numeric "
                                     "array"))
    tensors = [a for a in args if isinstance(a, Tensor)]
    strong = [a.dtype for a in tensors if a.dtype != "bool"]
    strong += [_dtype(np.asarray(a).dtype, f"{op_name}: an array operand") for a in args
               if not isinstance(a, Tensor) and not _is_weak(a)]
    partner = dtypes.promote(*strong) if strong else None
    out = []
    for a in args:
        if isinstance(a, Tensor):
            out.append(a)
        elif _is_weak(a):
            dtype = dtypes.scalar_dtype(a, partner)
            if dtype in dtypes.INTS and not isinstance(a, (bool, np.bool_)) and \
                    not np.iinfo(dtype).min <= a <= np.iinfo(dtype).max:
                fix = "cast the tensor to int64" if dtype == "int32" else \
                    f"it is outside int64's range [{np.iinfo(dtype).min}, {np.iinfo(dtype).max}]"
                raise DTypeError(located(f"{op_name}: the Python int {a} does not fit the "
                                         f"{dtype} operand; {fix}"))
            out.append(constant(a, dtype=dtype))
        else:
            out.append(constant(np.asarray(a)) if isinstance(a, np.ndarray) else constant(a))
    return out


def _numeric_array(a) -> bool:
    """A list, tuple or array of numbers or bools (not strings, objects or ragged lists)."""
    if not isinstance(a, (list, tuple, np.ndarray)):
        return False
    try:
        return np.asarray(a).dtype.kind in "biuf"
    except ValueError:  # ragged
        return False


def as_tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else lift_all([x])[0]
