"""Op tests generated from the op registry, not written one per op.

``OPS`` maps every elementwise op in :data:`graphc.elementwise_ops.REGISTRY` to an
independent NumPy/SciPy reference, a PyTorch equivalent and the domain its random inputs
come from.  The elementwise tests (forward, dtypes, broadcasting, weak Python scalars,
edge values, NaN propagation, integer inputs) are parametrized over the registry, so a
newly registered op without an entry here fails ``test_every_registered_op_has_an_entry``
and every generated test for it.

Structured ops and the public functions (reductions, softmax family, matmul, movement,
indexing, losses) are table-driven below the elementwise part: each ``Case`` holds a
graph builder, a NumPy reference and, where one exists, a PyTorch equivalent.

Everything runs on the reference interpreter, ``gc.compile(..., backend="numpy")``.
"""

from __future__ import annotations

import math
import re
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import scipy.special as sps

import graphc as gc
from graphc.elementwise_ops import REGISTRY, ElementwiseDef

try:
    import torch
    import torch.nn.functional as F  # noqa: N812
except ImportError:  # pragma: no cover - PyTorch is an optional test dependency
    torch = None
    F = None

requires_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")

FLOATS = ("float32", "float64")
INTS = ("int32", "int64")
RTOL = {"float32": 1e-6, "float64": 1e-12}
ATOL = {"float32": 1e-6, "float64": 1e-12}


# ---------------------------------------------------------------------------------------
# Built-in ops: the registry as the library left it.  Ops that other test modules register
# at import time (custom-op tests) are not built-ins and are left out.


def _defs_in_globals(modules) -> set[str]:
    found: set[str] = set()
    for module in modules:
        for value in list(vars(module).values()):
            if value is REGISTRY:
                continue
            items = value.values() if isinstance(value, dict) else \
                value if isinstance(value, (list, tuple, set)) else (value,)
            found.update(v.name for v in items if isinstance(v, ElementwiseDef))
    return found


def _ops_registered_by_tests() -> set[str]:
    """Ops that test modules hold and that no graphc module defines."""
    tests_dir = Path(__file__).resolve().parent
    modules = list(sys.modules.values())
    in_tests = [m for m in modules if getattr(m, "__file__", None)
                and tests_dir in Path(m.__file__).resolve().parents]
    in_graphc = [m for m in modules if m.__name__.split(".")[0] == "graphc"]
    return _defs_in_globals(in_tests) - _defs_in_globals(in_graphc)


BUILTIN_OPS: tuple[str, ...] = tuple(sorted(set(REGISTRY) - _ops_registered_by_tests()))


# ---------------------------------------------------------------------------------------
# The op table


def _gelu_tanh_ref(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _huber_ref(d, delta):
    a = np.abs(d)
    return np.where(a <= delta, 0.5 * d * d, delta * (a - 0.5 * delta))


def _softplus_ref(x, beta=1.0, threshold=20.0):
    return np.where(beta * x > threshold, x, np.logaddexp(0, beta * x) / beta)


def _hardswish_ref(x):
    return np.where(x <= -3, 0, np.where(x >= 3, x, x * (x + 3) / 6))


def _selu_ref(x):
    alpha, scale = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
    return scale * np.where(x > 0, x, alpha * np.expm1(x))


def _torch_huber(d, delta):
    return F.huber_loss(d, torch.zeros_like(d), reduction="none", delta=delta)


@dataclass(frozen=True)
class OpSpec:
    """How to test one registered elementwise op.

    ``ref(*arrays, **params)``: independent NumPy/SciPy reference.
    ``torch_fn(*tensors, **params)``: the PyTorch equivalent.
    ``domains``: one per tensor argument, see :func:`sample`.
    ``variants``: non-default static parameters to test besides the defaults.
    """

    ref: Callable
    torch_fn: Callable
    domains: tuple[str, ...]
    variants: tuple[dict, ...] = ()


OPS: dict[str, OpSpec] = {
    "add": OpSpec(np.add, lambda a, b: torch.add(a, b), ("real", "real")),
    "sub": OpSpec(np.subtract, lambda a, b: torch.sub(a, b), ("real", "real")),
    "mul": OpSpec(np.multiply, lambda a, b: torch.mul(a, b), ("real", "real")),
    "div": OpSpec(np.true_divide, lambda a, b: torch.div(a, b), ("real", "nonzero")),
    "pow": OpSpec(np.power, lambda a, b: torch.pow(a, b), ("positive", "exponent")),
    "neg": OpSpec(np.negative, lambda x: torch.neg(x), ("real",)),
    "square": OpSpec(np.square, lambda x: torch.square(x), ("real",)),
    "reciprocal": OpSpec(lambda x: 1.0 / x, lambda x: torch.reciprocal(x), ("nonzero",)),
    "exp": OpSpec(np.exp, lambda x: torch.exp(x), ("real",)),
    "log": OpSpec(np.log, lambda x: torch.log(x), ("positive",)),
    "sqrt": OpSpec(np.sqrt, lambda x: torch.sqrt(x), ("positive",)),
    "abs": OpSpec(np.abs, lambda x: torch.abs(x), ("real",)),
    "sin": OpSpec(np.sin, lambda x: torch.sin(x), ("real",)),
    "cos": OpSpec(np.cos, lambda x: torch.cos(x), ("real",)),
    "tanh": OpSpec(np.tanh, lambda x: torch.tanh(x), ("real",)),
    "sigmoid": OpSpec(sps.expit, lambda x: torch.sigmoid(x), ("wide",)),
    "relu": OpSpec(lambda x: np.maximum(x, 0), lambda x: torch.relu(x), ("grid",)),
    "leaky_relu": OpSpec(lambda x, alpha: np.where(x > 0, x, alpha * x),
                         lambda x, alpha: F.leaky_relu(x, negative_slope=alpha),
                         ("grid",), ({"alpha": 0.2},)),
    "elu": OpSpec(lambda x, alpha: np.where(x > 0, x, alpha * np.expm1(x)),
                  lambda x, alpha: F.elu(x, alpha=alpha), ("wide",), ({"alpha": 0.5},)),
    "gelu": OpSpec(lambda x: x * sps.ndtr(x), lambda x: F.gelu(x), ("wide",)),
    "gelu_tanh": OpSpec(_gelu_tanh_ref, lambda x: F.gelu(x, approximate="tanh"), ("wide",)),
    "silu": OpSpec(lambda x: x * sps.expit(x), lambda x: F.silu(x), ("wide",)),
    "softplus": OpSpec(_softplus_ref, lambda x, beta, threshold: F.softplus(x, beta, threshold),
                       ("wide",), ({"beta": 2.0, "threshold": 5.0},)),
    "maximum": OpSpec(np.maximum, lambda a, b: torch.maximum(a, b), ("grid", "grid")),
    "minimum": OpSpec(np.minimum, lambda a, b: torch.minimum(a, b), ("grid", "grid")),
    "prelu": OpSpec(lambda x, alpha: np.where(x > 0, x, alpha * x),
                    lambda x, alpha: torch.where(x > 0, x, alpha * x), ("grid", "real")),
    "where": OpSpec(np.where, lambda c, a, b: torch.where(c, a, b), ("bool", "real", "real")),
    "less": OpSpec(np.less, lambda a, b: torch.lt(a, b), ("grid", "grid")),
    "less_equal": OpSpec(np.less_equal, lambda a, b: torch.le(a, b), ("grid", "grid")),
    "greater": OpSpec(np.greater, lambda a, b: torch.gt(a, b), ("grid", "grid")),
    "greater_equal": OpSpec(np.greater_equal, lambda a, b: torch.ge(a, b), ("grid", "grid")),
    "equal": OpSpec(np.equal, lambda a, b: torch.eq(a, b), ("grid", "grid")),
    "not_equal": OpSpec(np.not_equal, lambda a, b: torch.ne(a, b), ("grid", "grid")),
    "huber_elementwise": OpSpec(_huber_ref, _torch_huber, ("wide",),
                                ({"delta": 0.5}, {"delta": 2.0})),
    "scaled_square": OpSpec(lambda d, scale=1.0: scale * d**2,
                            lambda d, scale=1.0: scale * d**2, ("wide",), ({"scale": 0.25},)),
    "clip": OpSpec(lambda x, min, max: np.minimum(np.maximum(x, min), max),  # noqa: A006
                   lambda x, min, max: torch.clamp(x, min, max), ("grid",),  # noqa: A006
                   ({"min": -0.5, "max": 1.5}, {"min": 1.0, "max": -1.0})),
    "clip_min": OpSpec(lambda x, min: np.maximum(x, min),  # noqa: A006
                       lambda x, min: torch.clamp(x, min=min), ("grid",),  # noqa: A006
                       ({"min": -0.5},)),
    "clip_max": OpSpec(lambda x, max: np.minimum(x, max),  # noqa: A006
                       lambda x, max: torch.clamp(x, max=max), ("grid",),  # noqa: A006
                       ({"max": 1.5},)),
    "hardtanh": OpSpec(lambda x, min_val, max_val: np.clip(x, min_val, max_val),
                       lambda x, min_val, max_val: F.hardtanh(x, min_val, max_val), ("grid",),
                       ({"min_val": -0.5, "max_val": 1.5},)),
    "relu6": OpSpec(lambda x: np.clip(x, 0, 6), lambda x: F.relu6(x), ("wide",)),
    "hardsigmoid": OpSpec(lambda x: np.clip(x / 6 + 0.5, 0, 1), lambda x: F.hardsigmoid(x),
                          ("wide",)),
    "hardswish": OpSpec(_hardswish_ref, lambda x: F.hardswish(x), ("wide",)),
    "softsign": OpSpec(lambda x: x / (1 + np.abs(x)), lambda x: F.softsign(x), ("wide",)),
    "logsigmoid": OpSpec(lambda x: -np.logaddexp(0, -x), lambda x: F.logsigmoid(x), ("wide",)),
    "celu": OpSpec(lambda x, alpha: np.where(x > 0, x, alpha * np.expm1(x / alpha)),
                   lambda x, alpha: F.celu(x, alpha), ("wide",), ({"alpha": 0.5},)),
    "selu": OpSpec(_selu_ref, lambda x: F.selu(x), ("wide",)),
    "mish": OpSpec(lambda x: x * np.tanh(np.logaddexp(0, x)), lambda x: F.mish(x), ("wide",)),
    "sign": OpSpec(np.sign, lambda x: torch.sign(x), ("grid",)),
    "floor": OpSpec(np.floor, lambda x: torch.floor(x), ("grid",)),
    "ceil": OpSpec(np.ceil, lambda x: torch.ceil(x), ("grid",)),
    "round": OpSpec(np.rint, lambda x: torch.round(x), ("grid",)),
    "trunc": OpSpec(np.trunc, lambda x: torch.trunc(x), ("grid",)),
    "erf": OpSpec(sps.erf, lambda x: torch.erf(x), ("real",)),
    "erfc": OpSpec(sps.erfc, lambda x: torch.erfc(x), ("real",)),
    "tan": OpSpec(np.tan, lambda x: torch.tan(x), ("real",)),
    "asin": OpSpec(np.arcsin, lambda x: torch.asin(x), ("open_unit",)),
    "acos": OpSpec(np.arccos, lambda x: torch.acos(x), ("open_unit",)),
    "atan": OpSpec(np.arctan, lambda x: torch.atan(x), ("real",)),
    "atan2": OpSpec(np.arctan2, lambda y, x: torch.atan2(y, x), ("real", "real")),
    "sinh": OpSpec(np.sinh, lambda x: torch.sinh(x), ("real",)),
    "cosh": OpSpec(np.cosh, lambda x: torch.cosh(x), ("real",)),
    "asinh": OpSpec(np.arcsinh, lambda x: torch.asinh(x), ("real",)),
    "acosh": OpSpec(np.arccosh, lambda x: torch.acosh(x), ("above_one",)),
    "atanh": OpSpec(np.arctanh, lambda x: torch.atanh(x), ("open_unit",)),
    "log2": OpSpec(np.log2, lambda x: torch.log2(x), ("positive",)),
    "log10": OpSpec(np.log10, lambda x: torch.log10(x), ("positive",)),
    "exp2": OpSpec(np.exp2, lambda x: torch.exp2(x), ("real",)),
    "expm1": OpSpec(np.expm1, lambda x: torch.expm1(x), ("real",)),
    "log1p": OpSpec(np.log1p, lambda x: torch.log1p(x), ("positive",)),
    "rsqrt": OpSpec(lambda x: 1 / np.sqrt(x), lambda x: torch.rsqrt(x), ("positive",)),
    # torch has no cbrt: its real cube root, sign(x) |x|^(1/3)
    "std_sqrt": OpSpec(np.sqrt, lambda v: torch.sqrt(v), ("positive",)),
    "cbrt": OpSpec(np.cbrt, lambda x: torch.sign(x) * torch.abs(x) ** (1 / 3), ("real",)),
    "tanhshrink": OpSpec(lambda x: x - np.tanh(x), lambda x: F.tanhshrink(x), ("wide",)),
}


# Ops whose Numba code differs only in the function it prints are checked on Numba
# together, in one compiled graph per dtype (tests/test_numba_ops.py
# test_grouped_elementwise_ops): a compile per op and case would cost minutes.
NUMBA_GROUPED = (
    "clip", "clip_min", "clip_max", "hardtanh", "relu6", "hardsigmoid", "hardswish", "softsign",
    "logsigmoid", "celu", "selu", "mish", "sign", "floor", "ceil", "round", "trunc", "erf",
    "erfc", "tan", "asin", "acos", "atan", "atan2", "sinh", "cosh", "asinh", "acosh", "atanh",
    "log2", "log10", "exp2", "expm1", "log1p", "rsqrt", "cbrt", "std_sqrt", "tanhshrink")


# ---------------------------------------------------------------------------------------
# Helpers


def rng_for(*key) -> np.random.Generator:
    """A generator seeded from the test's identity: reproducible, different per case."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def sample(domain: str, shape, dtype: str, rng: np.random.Generator) -> np.ndarray:
    """Random values of ``dtype`` in ``domain``.

    real [-3, 3]; wide [-8, 8]; positive [0.1, 3]; nonzero |x| in [0.25, 3];
    exponent [-2, 2]; grid: multiples of 0.5 in [-2, 2] (ties and exact zeros);
    unit [0, 1]; open_unit [-0.95, 0.95]; above_one [1.05, 4]; bool; ``index:N`` integers
    in [-N, N); ``label:N`` integers in [0, N).
    """
    shape = tuple(shape)
    if domain == "bool":
        return rng.random(shape) < 0.5
    if domain.startswith(("index:", "label:")):
        n = int(domain.split(":")[1])
        low = -n if domain.startswith("index:") else 0
        return rng.integers(low, n, shape).astype(dtype)
    if dtype in INTS:
        low, high = {"positive": (1, 6), "exponent": (-2, 3), "unit": (0, 2)}.get(domain, (-5, 6))
        out = rng.integers(low, high, shape)
        if domain == "nonzero":
            out = np.where(out == 0, 1, out)
        return out.astype(dtype)
    if domain == "grid":
        out = rng.integers(-4, 5, shape) * 0.5
    elif domain == "nonzero":
        out = rng.uniform(0.25, 3.0, shape) * rng.choice([-1.0, 1.0], shape)
    else:
        low, high = {"real": (-3.0, 3.0), "wide": (-8.0, 8.0), "positive": (0.1, 3.0),
                     "exponent": (-2.0, 2.0), "unit": (0.0, 1.0), "open_unit": (-0.95, 0.95),
                     "above_one": (1.05, 4.0)}[domain]
        out = rng.uniform(low, high, shape)
    return np.asarray(out, dtype=dtype)


def spec_for(name: str) -> OpSpec:
    spec = OPS.get(name)
    assert spec is not None, f"elementwise op {name!r} has no entry in OPS (tests/test_ops.py)"
    return spec


def op_params(name: str, variant: dict) -> dict:
    return {**REGISTRY[name].params, **variant}


def arg_names(name: str) -> list[str]:
    return [str(a) for a in REGISTRY[name].args]


def run_op(name: str, arrays, variant=(), scalars=None):
    """Compile ``REGISTRY[name]`` on inputs shaped like ``arrays`` and run it.

    ``scalars`` maps an argument position to a Python scalar passed instead of a tensor.
    Returns (result, output tensor).
    """
    variant = dict(variant)
    scalars = scalars or {}
    args, feeds = [], {}
    for i, (arg, a) in enumerate(zip(arg_names(name), arrays, strict=True)):
        if i in scalars:
            args.append(scalars[i])
            continue
        args.append(gc.input(arg, a.shape, a.dtype.name))
        feeds[arg] = a
    out = REGISTRY[name](*args, **variant)
    f = gc.compile(out, backend="numpy")
    return f(**feeds), out


def reference(name: str, arrays, variant=(), dtype="float64"):
    """The table's NumPy reference, computed in ``dtype`` (bool arguments stay bool)."""
    cast = [a if a.dtype == np.bool_ else np.asarray(a, dtype=dtype) for a in arrays]
    with np.errstate(all="ignore"):
        return np.asarray(spec_for(name).ref(*cast, **op_params(name, dict(variant))))


def torch_reference(name: str, arrays, variant=()) -> np.ndarray:
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
    out = spec_for(name).torch_fn(*tensors, **op_params(name, dict(variant)))
    return out.numpy()


def expected_dtype(name: str, in_dtype: str) -> str:
    op = REGISTRY[name]
    if op.out_dtype:
        return op.out_dtype
    if in_dtype in INTS and not op.int_ok:
        return "float32"
    return in_dtype


def assert_values(got, want, dtype: str, rtol=None, atol=None, what=""):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    if got.dtype == np.bool_ or dtype in INTS:
        np.testing.assert_array_equal(got, want, err_msg=what)
    else:
        np.testing.assert_allclose(
            got.astype(np.float64), np.asarray(want, dtype=np.float64),
            rtol=RTOL[dtype] if rtol is None else rtol,
            atol=ATOL[dtype] if atol is None else atol, equal_nan=True, err_msg=what)


def op_cases(names=None, with_variants=True):
    """pytest params (name, variant) for the built-in ops, ids like ``elu-alpha=0.5``."""
    out = []
    for name in names if names is not None else BUILTIN_OPS:
        variants = [{}]
        if with_variants and name in OPS:
            variants += list(OPS[name].variants)
        for v in variants:
            suffix = "".join(f"-{k}={val}" for k, val in v.items())
            out.append(pytest.param(name, v, id=name + suffix))
    return out


def domains_of(name: str) -> tuple[str, ...]:
    """The table's domains; for an op missing from the table (a failure reported by the
    tests themselves, not at collection) plain real numbers."""
    return OPS[name].domains if name in OPS else ("real",) * REGISTRY[name].arity


def ops_with_arity(minimum_arity: int) -> list[str]:
    return [n for n in BUILTIN_OPS if REGISTRY[n].arity >= minimum_arity]


def random_inputs(name, shapes, dtype, rng):
    return [sample(d, s, "bool" if d == "bool" else dtype, rng)
            for d, s in zip(spec_for(name).domains, shapes, strict=True)]


# ---------------------------------------------------------------------------------------
# The table covers the registry


EXPECTED_BUILTINS = {
    "add", "sub", "mul", "div", "pow", "neg", "square", "reciprocal", "exp", "log", "sqrt",
    "abs", "sin", "cos", "tanh", "sigmoid", "relu", "leaky_relu", "elu", "gelu", "gelu_tanh",
    "silu", "softplus", "maximum", "minimum", "prelu", "where", "less", "less_equal",
    "greater", "greater_equal", "equal", "not_equal", "huber_elementwise", "scaled_square",
    "clip", "clip_min", "clip_max", "hardtanh", "relu6", "hardsigmoid", "hardswish", "softsign",
    "logsigmoid", "celu", "selu", "mish", "sign", "floor", "ceil", "round", "trunc", "erf",
    "erfc", "tan", "asin", "acos", "atan", "atan2", "sinh", "cosh", "asinh", "acosh", "atanh",
    "log2", "log10", "exp2", "expm1", "log1p", "rsqrt", "cbrt", "tanhshrink",
}


def test_every_registered_op_has_an_entry():
    missing = sorted(set(BUILTIN_OPS) - set(OPS))
    assert not missing, f"registered elementwise ops without a test-table entry: {missing}"


def test_builtin_snapshot_holds_the_documented_ops():
    assert EXPECTED_BUILTINS <= set(BUILTIN_OPS)


def test_table_has_no_stale_entries():
    assert set(OPS) <= set(REGISTRY), sorted(set(OPS) - set(REGISTRY))


@pytest.mark.parametrize("name", sorted(OPS))
def test_table_entry_matches_signature(name):
    op, spec = REGISTRY[name], OPS[name]
    assert len(spec.domains) == op.arity
    assert [d == "bool" for d in spec.domains] == [str(a) in op.bool_args for a in op.args]
    for v in spec.variants:
        assert set(v) <= set(op.params)


# ---------------------------------------------------------------------------------------
# Forward values and dtypes, per op and float dtype


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("name", "variant"), op_cases())
def test_forward_matches_numpy(name, variant, dtype):
    arrays = random_inputs(name, [(3, 4)] * REGISTRY[name].arity, dtype, rng_for(name, dtype))
    got, out = run_op(name, arrays, variant)
    want_dtype = expected_dtype(name, dtype)
    assert out.dtype == want_dtype and got.dtype == np.dtype(want_dtype)
    assert out.shape == got.shape == (3, 4)
    assert_values(got, reference(name, arrays, variant), dtype, what=name)


@requires_torch
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("name", "variant"), op_cases())
def test_forward_matches_torch(name, variant, dtype):
    arrays = random_inputs(name, [(3, 4)] * REGISTRY[name].arity, dtype, rng_for(name, dtype))
    got, _ = run_op(name, arrays, variant)
    want = torch_reference(name, arrays, variant)
    assert got.dtype == want.dtype
    assert_values(got, want, dtype, what=name)


def test_public_functions_are_the_registered_ops():
    x = gc.input("x", (3,))
    assert gc.gelu(x).op.name == "gelu"
    assert gc.gelu(x, approximate="tanh").op.name == "gelu_tanh"
    assert gc.leaky_relu(x, 0.3).op.attrs() == {"alpha": 0.3}
    assert gc.elu(x).op.attrs() == {"alpha": 1.0}
    assert gc.huber(x, x * 2, delta=0.5).dtype == "float32"
    with pytest.raises(gc.GraphError):
        gc.gelu(x, approximate="erf")


def test_new_functions_refuse_bad_arguments_where_called():
    x = gc.input("x", (3,))
    labels = gc.input("labels", (3,), "int64")
    cases = [(lambda: gc.clip(x), "clip: at least one of min and max must be a number"),
             (lambda: gc.clip(x, x, 1.0), "clip: min must be a number"),
             (lambda: gc.hardtanh(x, 1.0, -1.0), "hardtanh: min_val 1.0 is greater than max_val"),
             (lambda: gc.celu(x, 0.0), "celu: alpha must not be 0"),
             (lambda: gc.mse(x, x, reduction="avg"), "mse: reduction must be 'mean', 'sum' or"),
             (lambda: gc.one_hot(labels, 0), "one_hot: num_classes must be a positive int"),
             (lambda: gc.one_hot(np.array([0, 4]), 3), "label 4 at index (1,), out of range "
              "for one_hot over 3 classes"),
             (lambda: gc.tile(x, (2, -1)), "tile: reps must be non-negative ints"),
             (lambda: gc.conv_transpose2d(gc.input("i", (1, 2, 3, 3)), gc.input(
                 "k", (2, 1, 3, 3)), stride=2, output_padding=2), "output_padding (2, 2) must "
              "be smaller than the stride")]
    for build, message in cases:
        with pytest.raises(gc.GraphError, match=re.escape(message)) as info:
            build()
        assert "test_ops.py" in str(info.value)  # the user's line
    f = gc.compile(gc.one_hot(labels, 3), backend="numpy")
    with pytest.raises(gc.FeedError, match=re.escape("feed 'labels' holds label -1 at index "
                                                     "(2,), out of range for one_hot")):
        f(labels=np.array([0, 2, -1]))
    g = gc.grad(gc.sum(gc.prod(x)), x)
    with pytest.raises(gc.GraphError, match="the second derivative of prod is not supported"):
        gc.grad(gc.sum(g), x)


# ---------------------------------------------------------------------------------------
# Broadcasting and weak Python scalars

BINARY_SHAPES = [((3, 1), (1, 4)), ((2, 3), (3,)), ((), (2, 3)), ((2, 3), ()),
                 ((4, 1, 3), (2, 1))]
TERNARY_SHAPES = [((3, 1), (1, 4), ()), ((2, 3), (3,), (2, 1)), ((), (2, 3), (3,)),
                  ((2, 1, 1), (1, 3, 1), (1, 1, 4))]


def _broadcast_cases():
    out = []
    for name in ops_with_arity(2):
        table = BINARY_SHAPES if REGISTRY[name].arity == 2 else TERNARY_SHAPES
        for shapes in table:
            sid = "x".join(str(s).replace(" ", "") for s in shapes)
            out.append(pytest.param(name, shapes, id=f"{name}-{sid}"))
    return out


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("name", "shapes"), _broadcast_cases())
def test_broadcasting(name, shapes, dtype):
    assert REGISTRY[name].arity == len(shapes)
    arrays = random_inputs(name, shapes, dtype, rng_for(name, shapes, dtype))
    got, out = run_op(name, arrays)
    shape = np.broadcast_shapes(*shapes)
    assert out.shape == got.shape == shape
    assert out.dtype == expected_dtype(name, dtype)
    assert_values(got, reference(name, arrays), dtype, what=name)


SCALAR_FOR_DOMAIN = {"real": 2.5, "wide": 2.5, "grid": 0.5, "positive": 1.5,
                     "nonzero": 2.5, "exponent": 1.5, "open_unit": 0.5, "above_one": 1.5}


def _scalar_cases():
    out = []
    for name in ops_with_arity(2):
        for i, (arg, dom) in enumerate(zip(arg_names(name), domains_of(name), strict=True)):
            if dom != "bool":
                out.append(pytest.param(name, i, id=f"{name}-scalar-{arg}"))
    return out


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("name", "position"), _scalar_cases())
def test_python_scalar_is_weakly_typed(name, position, dtype):
    """A Python float takes the dtype of the tensor it meets: float32 * 2.5 is float32."""
    domains = spec_for(name).domains
    scalar = SCALAR_FOR_DOMAIN[domains[position]]
    arrays = random_inputs(name, [(2, 3)] * len(domains), dtype, rng_for(name, position))
    arrays[position] = np.asarray(scalar, dtype=dtype)
    got, out = run_op(name, arrays, scalars={position: scalar})
    want_dtype = expected_dtype(name, dtype)
    assert out.dtype == want_dtype and got.dtype == np.dtype(want_dtype)
    assert_values(got, reference(name, arrays), dtype, what=name)


WEAK_TYPING = [
    ("f32*2.5", "float32", lambda x: x * 2.5, lambda x: x * 2.5, "float32"),
    ("2.5*f32", "float32", lambda x: 2.5 * x, lambda x: 2.5 * x, "float32"),
    ("f32+1", "float32", lambda x: x + 1, lambda x: x + 1, "float32"),
    ("1-f32", "float32", lambda x: 1 - x, lambda x: 1 - x, "float32"),
    ("f32/3", "float32", lambda x: x / 3, lambda x: x / 3, "float32"),
    ("f32**2", "float32", lambda x: x**2, lambda x: x**2, "float32"),
    ("f32**3", "float32", lambda x: x**3, lambda x: x**3, "float32"),
    ("2**f32", "float32", lambda x: 2**x, lambda x: 2.0**x, "float32"),
    ("-f32", "float32", lambda x: -x, lambda x: -x, "float32"),
    ("abs(f32)", "float32", lambda x: abs(x), np.abs, "float32"),
    ("f64*2.5", "float64", lambda x: x * 2.5, lambda x: x * 2.5, "float64"),
    ("i32*2", "int32", lambda x: x * 2, lambda x: x * 2, "int32"),
    ("i64+1", "int64", lambda x: x + 1, lambda x: x + 1, "int64"),
    ("i32*2.5", "int32", lambda x: x * 2.5, lambda x: x * 2.5, "float32"),
    ("f32+f64-array", "float32", lambda x: x + np.full(3, 0.1),
     lambda x: x + np.full(3, 0.1), "float64"),
    ("f32*bool-scalar", "float32", lambda x: x * True, lambda x: x * 1.0, "float32"),
]


@pytest.mark.parametrize(("in_dtype", "build", "ref", "out_dtype"),
                         [pytest.param(*c[1:], id=c[0]) for c in WEAK_TYPING])
def test_operator_scalar_promotion(in_dtype, build, ref, out_dtype):
    x_val = sample("nonzero", (2, 3), in_dtype, rng_for(in_dtype))
    x = gc.input("x", (2, 3), in_dtype)
    out = build(x)
    assert out.dtype == out_dtype
    got = gc.compile(out, backend="numpy")(x=x_val)
    assert got.dtype == np.dtype(out_dtype)
    want = ref(x_val.astype(np.float64))
    assert_values(got, want, out_dtype)


def test_tensor_tensor_promotion_follows_the_total_order():
    a = gc.input("a", (2,), "int64")
    b = gc.input("b", (2,), "float32")
    c = gc.input("c", (2,), "float64")
    i = gc.input("i", (2,), "int32")
    assert (a + b).dtype == "float32"  # unlike NumPy's float64
    assert (b + c).dtype == "float64"
    assert (i + a).dtype == "int64"
    f = gc.compile([a + b, i * a], backend="numpy")
    s, p = f(a=np.array([1, 2]), b=np.array([0.5, 0.25], np.float32),
             i=np.array([3, 4], np.int32))
    np.testing.assert_array_equal(s, np.array([1.5, 2.25], np.float32))
    assert s.dtype == np.float32 and p.dtype == np.int64
    np.testing.assert_array_equal(p, [3, 8])


# ---------------------------------------------------------------------------------------
# Edge values and NaN

EDGES = {
    "float32": [0.0, -0.0, 1.0, -1.0, 0.5, -2.0, 1e4, -1e4, np.inf, -np.inf],
    "float64": [0.0, -0.0, 1.0, -1.0, 0.5, -2.0, 1e4, -1e4, 1e150, -1e150, 1e300, -1e300,
                np.inf, -np.inf],
}


def edge_inputs(name, dtype, finite_only=False):
    """Every combination of edge values over the arguments (an outer product)."""
    op = REGISTRY[name]
    values = np.array(EDGES[dtype], dtype=dtype)
    if finite_only:
        values = values[np.isfinite(values)]
    arrays = []
    for i, d in enumerate(spec_for(name).domains):
        v = np.array([True, False]) if d == "bool" else values
        shape = [1] * op.arity
        shape[i] = v.size
        arrays.append(v.reshape(shape))
    return arrays


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("name", "variant"), op_cases())
def test_edge_values_match_numpy(name, variant, dtype):
    arrays = edge_inputs(name, dtype)
    got, _ = run_op(name, arrays, variant)
    # Reference in the same dtype: overflow to inf must happen where it happens in dtype.
    assert_values(got, reference(name, arrays, variant, dtype=dtype), dtype, what=name)


@requires_torch
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("name", "variant"), op_cases())
def test_edge_values_match_torch(name, variant, dtype):
    # Finite edges only: PyTorch's vectorised float32 kernels are themselves off at +-inf
    # (F.gelu(inf) is nan in float32); the NumPy test above covers the infinities.
    arrays = edge_inputs(name, dtype, finite_only=True)
    got, _ = run_op(name, arrays, variant)
    assert_values(got, torch_reference(name, arrays, variant), dtype, what=name)


def _nan_cases():
    out = []
    for name in BUILTIN_OPS:
        for i, (arg, dom) in enumerate(zip(arg_names(name), domains_of(name), strict=True)):
            if dom != "bool":
                out.append(pytest.param(name, i, id=f"{name}-nan-{arg}"))
    return out


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("name", "position"), _nan_cases())
def test_nan_propagates(name, position, dtype):
    """NaN in gives NaN out; comparisons give False (not_equal: True), as in IEEE 754."""
    domains = spec_for(name).domains
    arrays = random_inputs(name, [(6,)] * len(domains), dtype, rng_for(name, position))
    nan_at = np.arange(6) % 2 == 0
    arrays[position] = np.where(nan_at, np.nan, arrays[position]).astype(dtype)
    got, _ = run_op(name, arrays)
    if REGISTRY[name].out_dtype == "bool":
        np.testing.assert_array_equal(got[nan_at], name == "not_equal")
    else:
        expect_nan = nan_at
        if name == "where":  # NaN only where its branch is selected
            cond = arrays[0]
            expect_nan = nan_at & (cond if position == 1 else ~cond)
        elif name == "prelu" and position == 1:  # alpha only counts where x <= 0
            expect_nan = nan_at & ~(arrays[0] > 0)
        np.testing.assert_array_equal(np.isnan(got), expect_nan, err_msg=name)
    assert_values(got, reference(name, arrays, dtype=dtype), dtype, what=name)
    if torch is not None and name != "sign":  # torch.sign(nan) is 0; graphc's NaN (NumPy)
        assert_values(got, torch_reference(name, arrays), dtype, what=f"{name} (torch)")


STABLE_UNARY = ["sigmoid", "softplus", "silu"]
BIG32 = np.array([-1e4, -3e3, -100.0, -30.0, -1.0, 0.0, 1.0, 30.0, 100.0, 3e3, 1e4],
                 dtype=np.float32)


@pytest.mark.parametrize("name", STABLE_UNARY)
def test_stable_unary_ops_are_finite_for_large_float32(name):
    got, _ = run_op(name, [BIG32])
    assert got.dtype == np.float32
    assert np.all(np.isfinite(got)), got
    assert_values(got, reference(name, [BIG32]), "float32")


def test_relu_at_exactly_zero_is_zero():
    x = gc.input("x", (3,))
    f = gc.compile([gc.relu(x), gc.leaky_relu(x), gc.prelu(x, gc.constant(0.5))],
                   backend="numpy")
    for out in f(x=np.array([0.0, -0.0, 0.0], np.float32)):
        np.testing.assert_array_equal(out, [0.0, 0.0, 0.0])
    xi = gc.input("xi", (3,), "int32")
    got = gc.compile(gc.relu(xi), backend="numpy")(xi=np.array([-2, 0, 3], np.int32))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, [0, 0, 3])


@pytest.mark.parametrize("dtype", FLOATS)
def test_gelu_exact_and_tanh_approximation(dtype):
    xs = np.linspace(-6, 6, 241).astype(dtype)
    x = gc.input("x", xs.shape, dtype)
    exact, approx = gc.compile([gc.gelu(x), gc.gelu(x, approximate="tanh")],
                               backend="numpy")(x=xs)
    x64 = xs.astype(np.float64)
    assert_values(exact, x64 * sps.ndtr(x64), dtype)
    assert_values(approx, _gelu_tanh_ref(x64), dtype)
    diff = np.abs(exact.astype(np.float64) - approx)
    assert 1e-5 < diff.max() < 1e-3  # close, yet two different functions
    if torch is not None:
        t = torch.from_numpy(xs)
        assert_values(exact, F.gelu(t).numpy(), dtype)
        assert_values(approx, F.gelu(t, approximate="tanh").numpy(), dtype)


# ---------------------------------------------------------------------------------------
# Integer inputs


@pytest.mark.parametrize("dtype", INTS)
@pytest.mark.parametrize(("name", "variant"), op_cases(with_variants=False))
def test_integer_inputs(name, variant, dtype):
    """int_ok ops stay integer; comparisons give bool; the rest give float32."""
    arrays = random_inputs(name, [(3, 4)] * REGISTRY[name].arity, dtype, rng_for(name, dtype))
    got, out = run_op(name, arrays, variant)
    want_dtype = expected_dtype(name, dtype)
    assert out.dtype == want_dtype and got.dtype == np.dtype(want_dtype)
    if want_dtype == "float32":
        assert_values(got, reference(name, arrays, variant), "float32", what=name)
    else:
        want = reference(name, arrays, variant, dtype=dtype)
        np.testing.assert_array_equal(got, want.astype(want_dtype), err_msg=name)


@pytest.mark.parametrize("dtype", INTS)
@pytest.mark.parametrize("name", ["add", "mul", "maximum", "minimum", "sub"])
def test_integer_ops_exact_for_large_values(name, dtype):
    # Regression: maximum/minimum once evaluated ties as 0.5*a + 0.5*b in float64, so
    # int64 ties above 2**53 came back wrong (maximum(2**53 + 1, 2**53 + 1) == 2**53).
    info = np.iinfo(dtype)
    big = np.array([info.max, info.max - 1, 2**53 + 1 if dtype == "int64" else 2**24 + 1,
                    info.min + 1, -7, 0, 5], dtype=dtype)
    a, b = big, big.copy()
    b[4:] = [3, 0, 9]
    small = name in ("add", "mul", "sub")
    if small:  # stay clear of wrap-around, which is not what this test is about
        a, b = a // 4, np.where(np.arange(a.size) < 4, 1, b).astype(dtype)
    got, out = run_op(name, [a, b])
    assert out.dtype == dtype
    want = spec_for(name).ref(a, b)
    np.testing.assert_array_equal(got, want.astype(dtype))


def test_exp_of_int_is_float32():
    i = gc.input("i", (4,), "int64")
    assert gc.exp(i).dtype == "float32"
    iv = np.array([0, 1, 2, -3])
    got = gc.compile(gc.exp(i), backend="numpy")(i=iv)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, np.exp(iv), rtol=1e-6)


def test_mean_of_int_is_float32():
    i = gc.input("i", (2, 3), "int32")
    assert gc.mean(i).dtype == "float32"
    iv = np.array([[0, 1, 2], [-3, 7, 5]], np.int32)
    m, m1 = gc.compile([gc.mean(i), gc.mean(i, axis=0)], backend="numpy")(i=iv)
    assert m.dtype == np.float32 and m1.dtype == np.float32
    np.testing.assert_allclose(m, 2.0, rtol=1e-6)
    np.testing.assert_allclose(m1, [-1.5, 4.0, 3.5], rtol=1e-6)


@pytest.mark.parametrize("axis", [None, 0, 1, (0, 1)])
def test_sum_of_bool_is_int64(axis):
    # Regression: Reduce.evaluate once passed ``sum=np.int64`` instead of
    # ``dtype=np.int64`` to np.sum, so summing a bool tensor raised TypeError at run time.
    flags = gc.input("flags", (2, 3), "bool")
    out = gc.sum(flags, axis=axis)
    assert out.dtype == "int64"
    fv = np.array([[True, False, True], [True, True, True]])
    got = gc.compile(out, backend="numpy")(flags=fv)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, np.sum(fv, axis=axis))


def test_bool_operands_are_rejected_by_arithmetic():
    flags = gc.input("flags", (3,), "bool")
    with pytest.raises(gc.DTypeError):
        gc.exp(flags)
    with pytest.raises(gc.DTypeError):
        gc.where(gc.input("x", (3,)), flags, flags)


# ---------------------------------------------------------------------------------------
# Structured ops and public functions, table-driven


@dataclass(frozen=True)
class Arg:
    """One input of a case: shape, dtype (None: the parametrized float dtype), domain."""

    shape: tuple
    dtype: str | None = None
    domain: str = "real"


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable      # tensors -> Tensor
    ref: Callable        # NumPy arrays -> array
    args: tuple = (Arg((2, 3, 4)),)
    torch_fn: Callable | None = None  # torch tensors -> tensor
    out_dtype: str | None = None      # None: the float dtype
    tol: dict = field(default_factory=dict)  # loosen rtol/atol per dtype, e.g. {"float32": 1e-5}


def _reduction_cases():
    refs = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min}
    fns = {"sum": gc.sum, "mean": gc.mean, "max": gc.max, "min": gc.min}
    tfns = {"sum": lambda t, a, k: torch.sum(t, dim=a, keepdim=k),
            "mean": lambda t, a, k: torch.mean(t, dim=a, keepdim=k),
            "max": lambda t, a, k: torch.amax(t, dim=a, keepdim=k),
            "min": lambda t, a, k: torch.amin(t, dim=a, keepdim=k)}
    out = []
    for kind in refs:
        for axis in (None, 0, 1, -1, (0, 2), (-1, 0), (0, 1, 2), ()):
            for keepdims in (False, True):
                if axis == () and kind in ("max", "min"):
                    continue
                out.append(Case(
                    f"{kind}-axis={axis}-keepdims={keepdims}".replace(" ", ""),
                    lambda x, f=fns[kind], a=axis, k=keepdims: f(x, axis=a, keepdims=k),
                    lambda x, f=refs[kind], a=axis, k=keepdims: f(x, axis=a, keepdims=k),
                    torch_fn=None if axis in (None, ()) else
                    lambda t, f=tfns[kind], a=axis, k=keepdims: f(t, a, k)))
    return out


def _softmax_cases():
    def np_softmax(x, axis):
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)

    out = []
    for axis in (0, 1, 2, -1, -2):
        out.append(Case(f"softmax-axis={axis}",
                        lambda x, a=axis: gc.softmax(x, axis=a),
                        lambda x, a=axis: np_softmax(x, a),
                        torch_fn=lambda t, a=axis: torch.softmax(t, dim=a)))
        out.append(Case(f"log_softmax-axis={axis}",
                        lambda x, a=axis: gc.log_softmax(x, axis=a),
                        lambda x, a=axis: x - sps.logsumexp(x, axis=a, keepdims=True),
                        torch_fn=lambda t, a=axis: torch.log_softmax(t, dim=a)))
    out.append(Case("softmax-default-axis", gc.softmax, lambda x: np_softmax(x, -1),
                    torch_fn=lambda t: torch.softmax(t, dim=-1)))
    out.append(Case("log_softmax-default-axis", gc.log_softmax,
                    lambda x: x - sps.logsumexp(x, axis=-1, keepdims=True),
                    torch_fn=lambda t: torch.log_softmax(t, dim=-1)))
    for axis in (None, 0, -1, (0, 2)):
        for keepdims in (False, True):
            dims = (0, 1, 2) if axis is None else axis
            out.append(Case(
                f"logsumexp-axis={axis}-keepdims={keepdims}".replace(" ", ""),
                lambda x, a=axis, k=keepdims: gc.logsumexp(x, axis=a, keepdims=k),
                lambda x, a=axis, k=keepdims: sps.logsumexp(x, axis=a, keepdims=k),
                torch_fn=lambda t, d=dims, k=keepdims: torch.logsumexp(t, dim=d, keepdim=k)))
    return out


def _matmul_cases():
    shapes = [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((3, 4), (2, 4, 5)),
              ((2, 1, 3, 4), (5, 4, 6)), ((2, 3, 4), (2, 4, 5)), ((4,), (4, 5)),
              ((3, 4), (4,)), ((4,), (4,)), ((2, 3, 4), (4,)), ((4,), (2, 4, 5))]
    out = []
    for sa, sb in shapes:
        sid = f"{sa}@{sb}".replace(" ", "")
        out.append(Case(f"matmul-{sid}", gc.matmul, np.matmul, (Arg(sa), Arg(sb)),
                        torch_fn=torch_matmul))
        out.append(Case(f"operator@-{sid}", lambda a, b: a @ b, np.matmul,
                        (Arg(sa), Arg(sb))))
    out.append(Case("matmul-int32", gc.matmul, np.matmul,
                    (Arg((3, 4), "int32"), Arg((4, 2), "int32")), out_dtype="int32"))
    out.append(Case("matmul-array-constant", lambda a: a @ np.eye(4, 2), lambda a: a @ np.eye(4, 2),
                    (Arg((3, 4)),), out_dtype="float64"))
    return out


def torch_matmul(a, b):
    return torch.matmul(a, b)


def _np_take(x, idx):
    return x[idx]


STRUCTURE_CASES = [
    Case("reshape-(6,4)", lambda x: gc.reshape(x, (6, 4)), lambda x: x.reshape(6, 4)),
    Case("reshape-(-1,)", lambda x: gc.reshape(x, (-1,)), lambda x: x.reshape(-1)),
    Case("reshape-(4,-1)", lambda x: gc.reshape(x, (4, -1)), lambda x: x.reshape(4, -1)),
    Case("reshape-(2,-1,2)", lambda x: gc.reshape(x, (2, -1, 2)),
         lambda x: x.reshape(2, -1, 2)),
    Case("reshape-int", lambda x: gc.reshape(x, 24), lambda x: x.reshape(24)),
    Case("method-reshape", lambda x: x.reshape(3, 8), lambda x: x.reshape(3, 8)),
    Case("method-reshape-tuple", lambda x: x.reshape((-1, 2)), lambda x: x.reshape(-1, 2)),
    Case("reshape-scalar", lambda x: gc.reshape(x, ()), lambda x: x.reshape(()),
         (Arg((1, 1)),)),
    Case("transpose-default", gc.transpose, np.transpose,
         torch_fn=lambda t: t.permute(2, 1, 0)),
    Case("transpose-(1,0,2)", lambda x: gc.transpose(x, (1, 0, 2)),
         lambda x: np.transpose(x, (1, 0, 2)), torch_fn=lambda t: t.permute(1, 0, 2)),
    Case("transpose-(2,0,1)", lambda x: gc.transpose(x, (2, 0, 1)),
         lambda x: np.transpose(x, (2, 0, 1))),
    Case("transpose-negative", lambda x: gc.transpose(x, (-1, 0, -2)),
         lambda x: np.transpose(x, (-1, 0, -2))),
    Case("transpose-identity", lambda x: gc.transpose(x, (0, 1, 2)), lambda x: x),
    Case(".T-2d", lambda x: x.T, lambda x: x.T, (Arg((3, 5)),)),
    Case(".T-3d", lambda x: x.T, lambda x: x.T),
    Case(".T-1d", lambda x: x.T, lambda x: x.T, (Arg((5,)),)),
    Case("broadcast_to-(3,)->(2,3)", lambda x: gc.broadcast_to(x, (2, 3)),
         lambda x: np.broadcast_to(x, (2, 3)), (Arg((3,)),)),
    Case("broadcast_to-(3,1)->(3,4)", lambda x: gc.broadcast_to(x, (3, 4)),
         lambda x: np.broadcast_to(x, (3, 4)), (Arg((3, 1)),)),
    Case("broadcast_to-()->(2,2)", lambda x: gc.broadcast_to(x, (2, 2)),
         lambda x: np.broadcast_to(x, (2, 2)), (Arg(()),)),
    Case("broadcast_to-(1,3)->(2,4,3)", lambda x: gc.broadcast_to(x, (2, 4, 3)),
         lambda x: np.broadcast_to(x, (2, 4, 3)), (Arg((1, 3)),),
         torch_fn=lambda t: t.expand(2, 4, 3)),
    Case("concat-axis=0", lambda a, b, c: gc.concat([a, b, c], 0),
         lambda a, b, c: np.concatenate([a, b, c], 0),
         (Arg((1, 3)), Arg((2, 3)), Arg((4, 3))),
         torch_fn=lambda a, b, c: torch.cat([a, b, c], 0)),
    Case("concat-axis=1", lambda a, b: gc.concat([a, b], axis=1),
         lambda a, b: np.concatenate([a, b], 1), (Arg((2, 3, 2)), Arg((2, 1, 2)))),
    Case("concat-axis=-1", lambda a, b: gc.concat((a, b), axis=-1),
         lambda a, b: np.concatenate([a, b], -1), (Arg((2, 3)), Arg((2, 5)))),
    Case("concat-single", lambda a: gc.concat([a], 0), lambda a: a, (Arg((2, 3)),)),
    Case("concat-promotes", lambda a, b: gc.concat([a, b], 0),
         lambda a, b: np.concatenate([a, b.astype(np.float64)], 0),
         (Arg((2, 3)), Arg((1, 3), "float64")), out_dtype="float64"),
]
for _axis in (0, 1, 2, -1, -3):
    STRUCTURE_CASES.append(Case(
        f"stack-axis={_axis}", lambda a, b, c, ax=_axis: gc.stack([a, b, c], axis=ax),
        lambda a, b, c, ax=_axis: np.stack([a, b, c], axis=ax),
        (Arg((2, 3)), Arg((2, 3)), Arg((2, 3))),
        torch_fn=lambda a, b, c, ax=_axis: torch.stack([a, b, c], dim=ax)))

INDEX_KEYS = {
    "int": 1, "negative-int": -1, "slice": slice(1, 3), "step": slice(None, None, 2),
    "reverse": slice(None, None, -1), "negative-slice": slice(-3, -1),
    "neg-step-range": slice(4, 0, -2), "int,step": (1, slice(None, None, 2)),
    "ellipsis,int": (Ellipsis, 0), "ellipsis-mid": (0, Ellipsis, -1), "None": None,
    "slice,None,int": (slice(None), None, 1), "full": (slice(None), slice(None)),
    "int-array": np.array([0, 2, 1]), "neg-int-array": np.array([-1, 0, -4]),
    "int-array-2d": np.array([[0, 1], [2, 0]]), "int32-array": np.array([2, 2], np.int32),
    "slice,array": (slice(None), np.array([2, 0])), "int,int,int": (1, 2, 3),
    "tail,ellipsis": (slice(-2, None), Ellipsis), "list": [0, 2],
}
for _key_id, _key in INDEX_KEYS.items():
    STRUCTURE_CASES.append(Case(
        f"index-{_key_id}", lambda x, k=_key: x[k], lambda x, k=_key: x[k],
        (Arg((4, 3, 5)),)))

STRUCTURE_CASES += [
    Case("gather-tensor-index", lambda x, i: x[i], _np_take,
         (Arg((5, 4)), Arg((2, 3), "int64", "index:5"))),
    Case("take-int32-index", gc.take, _np_take, (Arg((5, 4)), Arg((6,), "int32", "index:5")),
         torch_fn=lambda x, i: x[i.long()]),
    Case("take-1d", gc.take, _np_take, (Arg((7,)), Arg((3, 2), "int64", "index:7"))),
    Case("take-scalar-index", gc.take, _np_take, (Arg((5, 2)), Arg((), "int64", "index:5"))),
    Case("cast-f->f64", lambda x: gc.cast(x, "float64"), lambda x: x.astype(np.float64),
         out_dtype="float64"),
    Case("cast-f->f32", lambda x: gc.cast(x, np.float32), lambda x: x.astype(np.float32),
         out_dtype="float32"),
    Case("cast-f->int32", lambda x: gc.cast(x, "int32"), lambda x: x.astype(np.int32),
         out_dtype="int32"),
    Case("cast-f->bool", lambda x: gc.cast(x, "bool"), lambda x: x.astype(bool),
         args=(Arg((2, 3, 4), None, "grid"),), out_dtype="bool"),
    Case("cast-bool->f", lambda x: gc.cast(x, "float32"), lambda x: x.astype(np.float32),
         (Arg((3, 4), "bool", "bool"),), out_dtype="float32"),
    Case("cast-int64->f64", lambda x: x.astype("float64"), lambda x: x.astype(np.float64),
         (Arg((3, 4), "int64"),), out_dtype="float64"),
    Case("x<y", lambda x, y: x < y, np.less, (Arg((3, 4), None, "grid"),) * 2,
         out_dtype="bool"),
    Case("x<=y", lambda x, y: x <= y, np.less_equal, (Arg((3, 4), None, "grid"),) * 2,
         out_dtype="bool"),
    Case("x>y", lambda x, y: x > y, np.greater, (Arg((3, 4), None, "grid"),) * 2,
         out_dtype="bool"),
    Case("x>=y", lambda x, y: x >= y, np.greater_equal, (Arg((3, 4), None, "grid"),) * 2,
         out_dtype="bool"),
    Case("x<0.5", lambda x: x < 0.5, lambda x: x < 0.5, (Arg((3, 4), None, "grid"),),
         out_dtype="bool"),
    Case("0.5<x-reflected", lambda x: 0.5 < x, lambda x: 0.5 < x,
         (Arg((3, 4), None, "grid"),), out_dtype="bool"),
    Case("x>=y-broadcast", lambda x, y: x >= y, np.greater_equal,
         (Arg((3, 1), None, "grid"), Arg((4,), None, "grid")), out_dtype="bool"),
    Case("where(x>y,x,y)", lambda x, y: gc.where(x > y, x, y), lambda x, y: np.where(x > y, x, y),
         (Arg((3, 4)), Arg((3, 4))), torch_fn=lambda x, y: torch.where(x > y, x, y)),
    Case("where-broadcast", lambda c, a: gc.where(c, a, 0.0), lambda c, a: np.where(c, a, 0.0),
         (Arg((3, 1), "bool", "bool"), Arg((1, 4)))),
    Case("where-int", lambda c, a, b: gc.where(c, a, b), np.where,
         (Arg((3, 4), "bool", "bool"), Arg((3, 4), "int32"), Arg((4,), "int32")),
         out_dtype="int32"),
]


def _loss_cases():
    def np_bce(x, t):
        return np.mean(np.logaddexp(0, x) - x * t)

    def np_ce(s, y):
        lse = sps.logsumexp(s, axis=1)
        return np.mean(lse - s[np.arange(len(y)), y])

    def np_hinge(s, y):
        correct = s[np.arange(len(y)), y][:, None]
        margins = np.maximum(0, s - correct + 1)
        margins[np.arange(len(y)), y] = 0
        return np.mean(np.sum(margins, axis=1))

    out = [
        Case("mse", gc.mse, lambda p, t: np.mean((p - t) ** 2), (Arg((4, 5)),) * 2,
             torch_fn=lambda p, t: F.mse_loss(p, t)),
        Case("bce_with_logits", gc.binary_cross_entropy_with_logits, np_bce,
             (Arg((4, 5), None, "wide"), Arg((4, 5), None, "unit")),
             torch_fn=lambda x, t: F.binary_cross_entropy_with_logits(x, t)),
        Case("softmax_cross_entropy-int64", gc.softmax_cross_entropy, np_ce,
             (Arg((6, 5), None, "wide"), Arg((6,), "int64", "label:5")),
             torch_fn=lambda s, y: F.cross_entropy(s, y)),
        Case("softmax_cross_entropy-int32", gc.softmax_cross_entropy, np_ce,
             (Arg((6, 5), None, "wide"), Arg((6,), "int32", "label:5")),
             torch_fn=lambda s, y: F.cross_entropy(s, y.long())),
        Case("hinge", gc.hinge, np_hinge, (Arg((6, 5)), Arg((6,), "int64", "label:5")),
             # torch divides the per-sample sum by the number of classes C.
             torch_fn=lambda s, y: F.multi_margin_loss(s, y) * s.shape[1]),
        Case("l1", gc.l1, lambda x: np.sum(np.abs(x)), (Arg((4, 5)),),
             torch_fn=lambda x: torch.sum(torch.abs(x))),
        Case("l2", gc.l2, lambda x: 0.5 * np.sum(x * x), (Arg((4, 5)),),
             torch_fn=lambda x: 0.5 * torch.sum(x * x)),
    ]
    for delta in (1.0, 0.5, 2.0):
        out.append(Case(
            f"huber-delta={delta}", lambda p, t, d=delta: gc.huber(p, t, delta=d),
            lambda p, t, d=delta: np.mean(_huber_ref(p - t, d)),
            (Arg((4, 5), None, "wide"), Arg((4, 5), None, "wide")),
            torch_fn=lambda p, t, d=delta: F.huber_loss(p, t, delta=d)))
    out.append(Case("huber-default", gc.huber, lambda p, t: np.mean(_huber_ref(p - t, 1.0)),
                    (Arg((4, 5), None, "wide"), Arg((4, 5), None, "wide")),
                    torch_fn=lambda p, t: F.huber_loss(p, t)))
    return out


def _more_reduction_cases():
    def t_argmin_flat(t):
        return torch.argmin(t)
    return [
        Case("prod-axis=1", lambda x: gc.prod(x, axis=1), lambda x: np.prod(x, axis=1),
             torch_fn=lambda t: torch.prod(t, 1)),
        Case("prod-all-keepdims", lambda x: gc.prod(x, keepdims=True),
             lambda x: np.prod(x, keepdims=True), (Arg((2, 3)),)),
        Case("prod-int32", lambda x: gc.prod(x, axis=0), lambda x: np.prod(x, axis=0),
             (Arg((3, 4), "int32"),), out_dtype="int64"),
        Case("var-axis=(0,2)", lambda x: gc.var(x, axis=(0, 2)),
             lambda x: np.var(x, axis=(0, 2), ddof=1), torch_fn=lambda t: torch.var(t, (0, 2))),
        Case("var-correction=0-keepdims", lambda x: gc.var(x, 1, correction=0, keepdims=True),
             lambda x: np.var(x, axis=1, keepdims=True),
             torch_fn=lambda t: torch.var(t, 1, correction=0, keepdim=True)),
        Case("std-all", gc.std, lambda x: np.std(x, ddof=1), torch_fn=lambda t: torch.std(t)),
        Case("std-axis=-1", lambda x: gc.std(x, -1), lambda x: np.std(x, axis=-1, ddof=1),
             torch_fn=lambda t: torch.std(t, -1)),
        Case("argmax-axis=1", lambda x: gc.argmax(x, axis=1), lambda x: np.argmax(x, axis=1),
             out_dtype="int64", torch_fn=lambda t: torch.argmax(t, 1)),
        Case("argmin-flat", gc.argmin, np.argmin, out_dtype="int64", torch_fn=t_argmin_flat),
        Case("argmax-keepdims", lambda x: gc.argmax(x, -1, keepdims=True),
             lambda x: np.argmax(x, -1, keepdims=True), (Arg((3, 4), None, "grid"),),
             out_dtype="int64", torch_fn=lambda t: torch.argmax(t, -1, keepdim=True)),
        Case("any-axis=0", lambda x: gc.any(x > 1.0, axis=0), lambda x: np.any(x > 1, 0),
             out_dtype="bool"),
        Case("all-keepdims", lambda x: gc.all(x, axis=(1, 2), keepdims=True),
             lambda x: np.all(x, (1, 2), keepdims=True), (Arg((2, 3, 4), None, "grid"),),
             out_dtype="bool"),
        Case("cumsum-axis=1", lambda x: gc.cumsum(x, 1), lambda x: np.cumsum(x, 1),
             torch_fn=lambda t: torch.cumsum(t, 1)),
        Case("cumsum-bool", lambda x: gc.cumsum(x, -1), lambda x: np.cumsum(x, -1),
             (Arg((3, 4), "bool", "bool"),), out_dtype="int64"),
        Case("roll-axis=1", lambda x: gc.roll(x, 2, 1), lambda x: np.roll(x, 2, 1),
             torch_fn=lambda t: torch.roll(t, 2, 1)),
        Case("roll-flat", lambda x: gc.roll(x, -5), lambda x: np.roll(x, -5),
             torch_fn=lambda t: torch.roll(t, -5)),
    ]


def _more_structure_and_loss_cases():
    def np_ce_none(s, y):
        return sps.logsumexp(s, axis=1) - s[np.arange(len(y)), y]

    def np_ce_ignore(s, y):  # label 0 ignored
        per = np_ce_none(s, y)
        return np.sum(per * (y != 0)) / np.sum(y != 0)

    return [
        Case("flip-axis=1", lambda x: gc.flip(x, 1), lambda x: np.flip(x, 1),
             torch_fn=lambda t: torch.flip(t, (1,))),
        Case("flip-all", gc.flip, np.flip, torch_fn=lambda t: torch.flip(t, (0, 1, 2))),
        Case("tile-(2,1,3)", lambda x: gc.tile(x, (2, 1, 3)), lambda x: np.tile(x, (2, 1, 3)),
             (Arg((2, 3)),), torch_fn=lambda t: torch.tile(t, (2, 1, 3))),
        Case("tile-short-reps", lambda x: gc.tile(x, (2,)), lambda x: np.tile(x, 2),
             torch_fn=lambda t: torch.tile(t, (2,))),
        Case("one_hot", lambda y: gc.one_hot(y, 5), lambda y: np.eye(5, dtype=np.int64)[y],
             (Arg((2, 3), "int64", "label:5"),), out_dtype="int64",
             torch_fn=lambda t: F.one_hot(t, 5)),
        Case("mse-sum", lambda p, t: gc.mse(p, t, reduction="sum"),
             lambda p, t: np.sum((p - t) ** 2), (Arg((4, 5)),) * 2,
             torch_fn=lambda p, t: F.mse_loss(p, t, reduction="sum")),
        Case("mse-none", lambda p, t: gc.mse(p, t, reduction="none"), lambda p, t: (p - t) ** 2,
             (Arg((4, 5)),) * 2, torch_fn=lambda p, t: F.mse_loss(p, t, reduction="none")),
        Case("bce_with_logits-none",
             lambda x, t: gc.binary_cross_entropy_with_logits(x, t, reduction="none"),
             lambda x, t: np.logaddexp(0, x) - x * t,
             (Arg((4, 5), None, "wide"), Arg((4, 5), None, "unit")),
             torch_fn=lambda x, t: F.binary_cross_entropy_with_logits(x, t, reduction="none")),
        Case("huber-sum", lambda p, t: gc.huber(p, t, reduction="sum"),
             lambda p, t: np.sum(_huber_ref(p - t, 1.0)), (Arg((4, 5), None, "wide"),) * 2,
             torch_fn=lambda p, t: F.huber_loss(p, t, reduction="sum")),
        Case("softmax_cross_entropy-none",
             lambda s, y: gc.softmax_cross_entropy(s, y, reduction="none"), np_ce_none,
             (Arg((6, 5), None, "wide"), Arg((6,), "int64", "label:5")),
             torch_fn=lambda s, y: F.cross_entropy(s, y, reduction="none")),
        Case("softmax_cross_entropy-ignore_index",
             lambda s, y: gc.softmax_cross_entropy(s, y, ignore_index=0), np_ce_ignore,
             (Arg((8, 3), None, "wide"), Arg((8,), "int64", "label:3")),
             torch_fn=lambda s, y: F.cross_entropy(s, y, ignore_index=0)),
        Case("hinge-sum", lambda s, y: gc.hinge(s, y, reduction="sum"),
             _np_hinge_sum,
             (Arg((6, 5)), Arg((6,), "int64", "label:5")),
             torch_fn=lambda s, y: F.multi_margin_loss(s, y, reduction="sum") * s.shape[1]),
    ]


def _np_hinge_sum(s, y):
    correct = s[np.arange(len(y)), y][:, None]
    margins = np.maximum(0, s - correct + 1)
    margins[np.arange(len(y)), y] = 0
    return np.sum(margins)


LOSS_CASES = _loss_cases()
ALL_CASES = (_reduction_cases() + _softmax_cases() + _matmul_cases() + STRUCTURE_CASES
             + LOSS_CASES + _more_reduction_cases() + _more_structure_and_loss_cases())
TORCH_CASES = [c for c in ALL_CASES if c.torch_fn is not None]


def test_case_ids_are_unique():
    ids = [c.id for c in ALL_CASES]
    assert len(ids) == len(set(ids))


def case_inputs(case: Case, dtype: str):
    rng = rng_for(case.id, dtype)
    tensors, feeds, arrays = [], {}, []
    for i, arg in enumerate(case.args):
        dt = arg.dtype or dtype
        value = sample(arg.domain, arg.shape, dt, rng)
        name = f"in{i}"
        tensors.append(gc.input(name, arg.shape, dt))
        feeds[name] = value
        arrays.append(value)
    return tensors, feeds, arrays


def run_case(case: Case, dtype: str):
    tensors, feeds, arrays = case_inputs(case, dtype)
    out = case.build(*tensors)
    got = gc.compile(out, backend="numpy")(**feeds)
    return got, out, arrays


def case_tolerance(case: Case, dtype: str, torch_side=False):
    rtol = case.tol.get(dtype, RTOL[dtype])
    if torch_side and dtype == "float32":
        rtol = max(rtol, 1e-5)  # different summation orders in float32
    return rtol, max(ATOL[dtype], rtol)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in ALL_CASES])
def test_structured_matches_numpy(case, dtype):
    got, out, arrays = run_case(case, dtype)
    with np.errstate(all="ignore"):
        want = np.asarray(case.ref(*arrays))
    want_dtype = case.out_dtype or dtype
    assert out.dtype == want_dtype and got.dtype == np.dtype(want_dtype), case.id
    assert out.shape == got.shape == want.shape, case.id
    rtol, atol = case_tolerance(case, dtype)
    assert_values(got, want, want_dtype if want_dtype in FLOATS else dtype, rtol, atol,
                  what=case.id)


@requires_torch
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in TORCH_CASES])
def test_structured_matches_torch(case, dtype):
    got, _, arrays = run_case(case, dtype)
    want = case.torch_fn(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)).numpy()
    assert got.shape == want.shape, case.id
    rtol, atol = case_tolerance(case, dtype, torch_side=True)
    assert_values(got, want, dtype, rtol, atol, what=case.id)


def test_gather_out_of_range_raises_at_run_time():
    x = gc.input("x", (3, 2))
    idx = gc.input("idx", (2,), "int64")
    f = gc.compile(x[idx], backend="numpy")
    with pytest.raises(gc.GraphError, match="take"):
        f(x=np.zeros((3, 2), np.float32), idx=np.array([0, 3]))


# ---------------------------------------------------------------------------------------
# Large float32 inputs: the stable functions and every loss stay finite

LARGE_CASES = [c for c in ALL_CASES if c.id.startswith(("softmax-axis", "log_softmax-axis",
                                                           "logsumexp"))] + LOSS_CASES


def large_inputs(case: Case):
    rng = rng_for("large", case.id)
    tensors, feeds, arrays = [], {}, []
    for i, arg in enumerate(case.args):
        dt = arg.dtype or "float32"
        if arg.domain == "unit" or dt != "float32":
            value = sample(arg.domain, arg.shape, dt, rng)
        else:  # magnitudes up to 1e4, including the extremes themselves
            value = (rng.uniform(-1e4, 1e4, arg.shape)).astype(dt)
            value.flat[:2] = [1e4, -1e4][: value.size]
        name = f"in{i}"
        tensors.append(gc.input(name, arg.shape, dt))
        feeds[name] = value
        arrays.append(value)
    return tensors, feeds, arrays


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in LARGE_CASES])
def test_finite_for_large_float32_inputs(case):
    tensors, feeds, arrays = large_inputs(case)
    got = gc.compile(case.build(*tensors), backend="numpy")(**feeds)
    assert got.dtype == np.float32
    assert np.all(np.isfinite(got)), f"{case.id}: {got}"
    # And right: against the float64 reference (float32 rounding of 1e4-sized numbers).
    wide = [a.astype(np.float64) if a.dtype == np.float32 else a for a in arrays]
    want = np.asarray(case.ref(*wide))
    scale = max(1.0, float(np.max(np.abs(want))))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale, err_msg=case.id)
