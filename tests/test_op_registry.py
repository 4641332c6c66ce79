"""Every registered op has every entry a pass, a printer or a backend relies on.

Walks the elementwise registry and every op class of the op modules (structured, shape,
nn, fused) and lists what is missing: a shape rule, a NumPy evaluation, a vector-Jacobian
rule and its diagram labels, a function-table row (graphc/functable.py) for each SymPy
function an elementwise op's forms use, a Numba and a CUDA printing of its evaluated form.
A second set of tests takes one entry away and checks that the walk reports it, so the
walk can fail.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

import graphc as gc
from graphc import elementwise_ops as ew
from graphc import functable, fused_ops, nn_ops, shape_ops, structured_ops
from graphc import numba_codegen as cg
from graphc.cuda_kernels import CudaPrinter
from graphc.ir import Op

BUILTIN = dict(ew.REGISTRY)  # before any test declares its own ops
OP_MODULES = (structured_ops, shape_ops, nn_ops, fused_ops)
# What the printers write without a table row: the classes their dispatch handles itself
# (Piecewise, Max, Min ...) and the functions written inline (abs, sign, Heaviside).
PRINTED_INLINE = tuple(cls for cls, _ in cg._DISPATCH if cls is not sp.Function) + \
    functable.INLINE


def op_classes() -> list[type]:
    """The concrete op classes defined in the op modules."""
    found, stack = [], list(Op.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if any(cls.__module__ == m.__name__ for m in OP_MODULES) and \
                not cls.__name__.startswith("_"):
            found.append(cls)
    return sorted(found, key=lambda c: c.__name__)


def _overrides(cls, method: str) -> bool:
    return any(method in vars(c) for c in cls.__mro__ if c is not Op and issubclass(c, Op))


def class_problems(cls) -> list[str]:
    """What op class ``cls`` lacks."""
    problems = [f"{cls.__name__}: no {m}" for m in ("infer", "evaluate", "vjp")
                if not _overrides(cls, m)]
    if "name" not in vars(cls) or vars(cls)["name"] == Op.name:
        problems.append(f"{cls.__name__}: no name")
    labels = [getattr(cls, a, None) for a in ("local", "vjp_text")]
    if any(not isinstance(t, (tuple, property)) for t in labels):
        problems.append(f"{cls.__name__}: no diagram labels (local, vjp_text)")
    return problems


def unprinted_functions(expr) -> set[str]:
    """The SymPy functions in ``expr`` that neither printer can write."""
    return {type(f).__name__ for f in sp.sympify(expr).atoms(sp.Function)
            if type(f) not in functable.FUNCTIONS and not isinstance(f, PRINTED_INLINE)}


def elementwise_problems(op: ew.ElementwiseDef) -> list[str]:
    """What elementwise op ``op`` lacks: table rows for the functions of its evaluated
    form and of its raw derivatives, and a Numba and a CUDA printing of its evaluated form."""
    forms = [op.expr, op.stable] + [op._diff(a) for a in op.args
                                    if op.differentiable and a.name not in op.bool_args]
    missing = set().union(*map(unprinted_functions, forms))
    problems = [f"{op.name}: no function-table row for {sorted(missing)}"] if missing else []
    expr = op.stable.subs(dict(zip(op.param_symbols, op.params.values())))
    names = {a: a.name for a in op.args}
    bools = {a for a in op.args if a.name in op.bool_args}
    for printer in (cg.ScalarPrinter, CudaPrinter):
        for dtype in ("float32", "float64"):
            try:
                printer(dtype, names, bools).print(expr)
            except cg.Unsupported as err:
                problems.append(f"{op.name}: {printer.__name__} {dtype}: {err}")
    return problems


def test_every_op_class_has_its_rules():
    classes = op_classes()
    assert {"MatMul", "Reshape", "Roll", "Conv2d", "Fused"} <= {c.__name__ for c in classes}
    assert [p for cls in classes for p in class_problems(cls)] == []


def test_every_elementwise_op_is_printable_by_every_backend():
    assert "tanhshrink" in BUILTIN
    assert [p for op in BUILTIN.values() for p in elementwise_problems(op)] == []


def test_every_public_elementwise_op_is_exported():
    assert all(getattr(gc, name) is op for name, op in ew.PUBLIC.items())
    assert set(ew.PUBLIC) <= set(gc.__all__)


# -- the walk can fail ---------------------------------------------------------------------


def test_a_missing_vjp_is_reported(monkeypatch):
    monkeypatch.delattr(shape_ops.Roll, "vjp")
    assert class_problems(shape_ops.Roll) == ["Roll: no vjp"]


def test_a_missing_function_table_row_is_reported(monkeypatch):
    monkeypatch.delitem(functable.FUNCTIONS, sp.tanh)
    problems = elementwise_problems(BUILTIN["tanhshrink"])
    assert problems[0] == "tanhshrink: no function-table row for ['tanh']"
    assert "tanhshrink: ScalarPrinter float32: no Numba form for tanh" in problems


# -- traits on the op and the tensor --------------------------------------------------------


def test_views_are_what_the_op_says():
    """``Op.is_view`` agrees with the NumPy evaluation: a view shares its operand's memory."""
    x = gc.input("x", (3, 4))
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    nodes = {gc.reshape(x, (4, 3)): True, gc.transpose(x): True, x[1:, ::2]: True,
             gc.broadcast_to(x, (2, 3, 4)): True, x[[0, 2]]: False, gc.roll(x, 1, 0): False,
             gc.exp(x): False}
    for t, view in nodes.items():
        assert t.op.is_view() is view, t
        assert np.shares_memory(t.op.evaluate(a), a) is view, t


def test_nbytes_and_work_dtype():
    x = gc.input("x", (3, 5), "int32")
    assert x.nbytes == 60
    assert gc.cast(x, "float64").nbytes == 120
    assert gc.exp(x).op.work_dtype(["int32"]) == "float32"
    assert gc.add(x, x).op.work_dtype(["int32", "int32"]) == "int32"
    assert gc.less(x, 2).op.work_dtype(["int32", "int32"]) == "int32"


def test_a_structured_op_without_a_kernel_runs_its_numpy_evaluation():
    """gc.roll has no Numba kernel: it runs Roll.evaluate, listed in f.stats."""
    x = gc.input("x", (3, 4))
    f = gc.compile(gc.roll(x, 1, 1) * 2.0, backend="numba")
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(f(x=a), np.roll(a, 1, 1) * 2)
    assert f.stats["numpy_fallbacks"] == ["roll"]
