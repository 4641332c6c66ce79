"""Every derivative rule checked against SymPy's full Jacobian on small instances.

Structured ops (``graphc/structured_ops.py``) declare a ``vjp`` rule next to their shape
rule; losses and compound functions are compositions.  For each, the inputs become object
arrays of real SymPy symbols, the op's output is computed *independently* with NumPy on
object arrays (or SymPy ``exp``/``log``/``Max`` written out by hand), and
``J = Matrix(out).jacobian(inputs)`` is the full Jacobian.  At a random point ``x0`` with a
random cotangent ``c``, ``gc.vjp`` compiled with the NumPy backend in float64 must give
``c^T J(x0)`` to rtol 1e-10.  Rows of ``J`` index outputs and columns inputs, so the
cotangent multiplies from the left (the seed convention).

Elementwise ops (``graphc/elementwise_ops.py``) are checked from the registry: the declared
local derivative (possibly in terms of the output ``y``) against ``sympy.diff`` of the
definition, and the gradient that ``gc.vjp`` builds against the same derivative.
"""

from __future__ import annotations

import math
import operator

import numpy as np
import pytest
import sympy as sp

import graphc as gc
from graphc import derivation
from graphc import elementwise_ops as ew
from graphc.ir import Tensor
from graphc.shape_ops import Index, IndexAdd, TakeAdd

RTOL = 1e-10
ATOL = 1e-12
DPS = 30


# ---------------------------------------------------------------------------------------
# Symbolic reference helpers


def symbols(name: str, shape) -> np.ndarray:
    """An object array of distinct real symbols ``name0, name1, ...`` of ``shape``."""
    n = math.prod(shape)
    flat = np.empty(n, dtype=object)
    for i in range(n):
        flat[i] = sp.Symbol(f"{name}{i}", real=True)
    return flat.reshape(shape)


def _axes(axis, ndim) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axis = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(sorted(a % ndim for a in axis))


def reduce_sym(x: np.ndarray, axis, keepdims: bool, fn) -> np.ndarray:
    """Reduce an object array over ``axis`` with ``fn(list of entries) -> expr``."""
    x = np.asarray(x, dtype=object)
    axes = _axes(axis, x.ndim)
    moved = np.moveaxis(x, axes, tuple(range(x.ndim - len(axes), x.ndim)))
    lead = moved.shape[:x.ndim - len(axes)]
    rows = moved.reshape(lead + (-1,))
    out = np.empty(lead, dtype=object)
    for idx in np.ndindex(*lead):
        out[idx] = fn(list(rows[idx]))
    if keepdims:
        out = out.reshape(tuple(1 if i in axes else d for i, d in enumerate(x.shape)))
    return out


def total(entries) -> sp.Expr:
    return sp.Add(*entries)


def sym_exp(x):
    return np.vectorize(sp.exp, otypes=[object])(x)


def sym_log(x):
    return np.vectorize(sp.log, otypes=[object])(x)


def sym_sum(x, axis=None, keepdims=False):
    return reduce_sym(x, axis, keepdims, total)


def sym_mean(x, axis=None, keepdims=False):
    x = np.asarray(x, dtype=object)
    count = math.prod(x.shape[a] for a in _axes(axis, x.ndim))
    return reduce_sym(x, axis, keepdims, lambda e: total(e) / count)


def sym_logsumexp(x, axis=None, keepdims=False):
    return reduce_sym(x, axis, keepdims, lambda e: sp.log(total(sp.exp(v) for v in e)))


def sym_softmax(x, axis=-1):
    e = sym_exp(x)
    return e / sym_sum(e, axis, keepdims=True)


def sym_log_softmax(x, axis=-1):
    return x - sym_logsumexp(x, axis, keepdims=True)


# ---------------------------------------------------------------------------------------
# The check


def _numeric(exprs, subs) -> np.ndarray:
    """Evaluate SymPy expressions at a point (30 digits), as float64."""
    values = []
    for e in exprs:
        v = sp.sympify(e).xreplace(subs).evalf(DPS)
        assert v.is_number and v.is_real, f"did not evaluate to a real number: {v}"
        values.append(float(v))
    return np.array(values, dtype=np.float64)


def jacobian(out: np.ndarray, ins: list[np.ndarray]) -> sp.Matrix:
    """The full Jacobian: rows index ``out`` (flattened), columns all inputs (flattened)."""
    in_flat = [s for x in ins for s in x.ravel()]
    return sp.Matrix(list(out.ravel())).jacobian(in_flat)


def assert_vjp_matches_jacobian(build, reference, shapes, *, point=None, seed=0,
                                extra_inputs=(), extra_feeds=None, rtol=RTOL):
    """``gc.vjp(build(*xs), xs, c)`` equals ``c^T J(x0)`` with J from SymPy.

    ``build(*tensors, *extra)`` makes the graph; ``reference(*symbol_arrays)`` computes
    the same function on object arrays.  ``extra_inputs`` are (name, shape, dtype) inputs
    that are fed (``extra_feeds``) but not differentiated (integer labels, indices).
    """
    rng = np.random.default_rng(seed)
    names = [f"x{i}" for i in range(len(shapes))]
    syms = [symbols(f"{n}_", s) for n, s in zip(names, shapes, strict=True)]
    out = np.asarray(reference(*syms), dtype=object)
    J = jacobian(out, syms)
    x0 = [rng.standard_normal(s) for s in shapes] if point is None else \
        [np.asarray(p, dtype=np.float64) for p in point]
    subs = {s: sp.Float(float(v), DPS) for xs, xv in zip(syms, x0, strict=True)
            for s, v in zip(xs.ravel(), xv.ravel(), strict=True)}
    out0 = _numeric(out.ravel(), subs).reshape(out.shape)
    J0 = np.array([_numeric(J.row(i), subs) for i in range(J.rows)]).reshape(J.shape)
    c = rng.standard_normal(out.shape)
    expected = np.asarray(c).ravel() @ J0

    tensors = [gc.input(n, s, "float64") for n, s in zip(names, shapes, strict=True)]
    extra = [gc.input(n, s, d) for n, s, d in extra_inputs]
    y = build(*tensors, *extra)
    assert y.shape == out.shape, (y.shape, out.shape)
    grads = gc.vjp(y, tensors, c)
    f = gc.compile([y, *grads], backend="numpy")
    feeds = dict(zip(names, x0, strict=True)) | dict(extra_feeds or {})
    value, *got = f(**feeds)

    # The reference computes the same function (else the Jacobian would prove nothing).
    np.testing.assert_allclose(value, out0, rtol=1e-12, atol=1e-12)
    start = 0
    for name, shape, g in zip(names, shapes, got, strict=True):
        size = math.prod(shape)
        want = expected[start:start + size].reshape(shape)
        start += size
        assert g.shape == tuple(shape), (name, g.shape, shape)
        assert g.dtype == np.float64
        np.testing.assert_allclose(g, want, rtol=rtol, atol=ATOL,
                                   err_msg=f"vjp w.r.t. {name} differs from c^T J")
    return J


# ---------------------------------------------------------------------------------------
# matmul


MATMUL_CASES = [
    ((2, 3), (3, 2)),        # 2-D, w.r.t. both operands
    ((2, 2, 3), (3, 2)),     # batched a, b broadcast over the batch
    ((2, 3), (2, 3, 2)),     # batched b, a broadcast over the batch
    ((1, 2, 3), (2, 3, 2)),  # both batched, a's batch of 1 stretched
    ((3,), (3, 2)),          # vector @ matrix
    ((2, 3), (3,)),          # matrix @ vector
    ((3,), (3,)),            # dot product
]


@pytest.mark.parametrize("sa, sb", MATMUL_CASES, ids=[f"{a}@{b}" for a, b in MATMUL_CASES])
def test_matmul_vjp_matches_jacobian(sa, sb):
    assert_vjp_matches_jacobian(lambda a, b: gc.matmul(a, b), np.matmul, [sa, sb])


def test_matmul_operator_vjp_matches_jacobian():
    assert_vjp_matches_jacobian(lambda a, b: a @ b.T, lambda a, b: a @ b.T, [(2, 3), (2, 3)],
                                seed=1)


# ---------------------------------------------------------------------------------------
# Reductions

REDUCE_CASES = [
    ((2, 3), None, False),
    ((2, 3), 0, False),
    ((2, 3), 1, True),
    ((2, 3), -1, False),
    ((2, 3, 2), (0, 2), False),
    ((2, 3, 2), (0, 2), True),
    ((2, 3, 2), 1, True),
    ((4,), 0, True),
]
_REDUCE_IDS = [f"{s}-axis{a}-keep{k}" for s, a, k in REDUCE_CASES]


@pytest.mark.parametrize("shape, axis, keepdims", REDUCE_CASES, ids=_REDUCE_IDS)
def test_sum_vjp_matches_jacobian(shape, axis, keepdims):
    assert_vjp_matches_jacobian(lambda x: gc.sum(x, axis, keepdims),
                                lambda x: sym_sum(x, axis, keepdims), [shape])


@pytest.mark.parametrize("shape, axis, keepdims", REDUCE_CASES, ids=_REDUCE_IDS)
def test_mean_vjp_matches_jacobian(shape, axis, keepdims):
    assert_vjp_matches_jacobian(lambda x: gc.mean(x, axis, keepdims),
                                lambda x: sym_mean(x, axis, keepdims), [shape], seed=2)


@pytest.mark.parametrize("kind", ["max", "min"])
@pytest.mark.parametrize("shape, axis, keepdims", REDUCE_CASES, ids=_REDUCE_IDS)
def test_max_min_vjp_matches_jacobian_without_ties(kind, shape, axis, keepdims):
    # Standard normal points have no ties (checked), so Max/Min are differentiable there.
    point = np.random.default_rng(3).standard_normal(shape)
    assert len(np.unique(point)) == point.size
    fn = {"max": gc.max, "min": gc.min}[kind]
    extremum = {"max": sp.Max, "min": sp.Min}[kind]
    assert_vjp_matches_jacobian(lambda x: fn(x, axis, keepdims),
                                lambda x: reduce_sym(x, axis, keepdims,
                                                     lambda e: extremum(*e)),
                                [shape], point=[point], seed=3)


@pytest.mark.parametrize("shape, axis, keepdims", REDUCE_CASES[:4], ids=_REDUCE_IDS[:4])
def test_prod_vjp_matches_jacobian(shape, axis, keepdims):
    point = np.random.default_rng(5).standard_normal(shape)
    point.flat[1] = 0.0  # the rule is exact at zeros (g * y / x is not)
    assert_vjp_matches_jacobian(lambda x: gc.prod(x, axis, keepdims),
                                lambda x: reduce_sym(x, axis, keepdims, lambda e: sp.Mul(*e)),
                                [shape], point=[point], seed=5)


@pytest.mark.parametrize("shape, axis", [((4,), 0), ((2, 3), 1), ((2, 3, 2), 0)])
def test_cumsum_vjp_matches_jacobian(shape, axis):
    def sym_cumsum(x):
        moved = np.moveaxis(np.asarray(x, dtype=object), axis, -1)
        out = np.empty(moved.shape, dtype=object)
        for idx in np.ndindex(*moved.shape[:-1]):
            for j in range(moved.shape[-1]):
                out[idx + (j,)] = sp.Add(*moved[idx][:j + 1])
        return np.moveaxis(out, -1, axis)
    assert_vjp_matches_jacobian(lambda x: gc.cumsum(x, axis), sym_cumsum, [shape], seed=6)


@pytest.mark.parametrize("shape, shift, axis", [((5,), 2, 0), ((2, 3), -1, 1), ((3, 2), 1, None)])
def test_roll_vjp_matches_jacobian(shape, shift, axis):
    assert_vjp_matches_jacobian(lambda x: gc.roll(x, shift, axis),
                                lambda x: np.roll(np.asarray(x, dtype=object), shift, axis),
                                [shape], seed=7)


@pytest.mark.parametrize("shape, axis, keepdims", REDUCE_CASES, ids=_REDUCE_IDS)
def test_logsumexp_vjp_matches_jacobian(shape, axis, keepdims):
    assert_vjp_matches_jacobian(lambda x: gc.logsumexp(x, axis, keepdims),
                                lambda x: sym_logsumexp(x, axis, keepdims), [shape], seed=4)


# ---------------------------------------------------------------------------------------
# The softmax family


def test_softmax_jacobian_is_s_i_delta_ij_minus_s_j():
    J = assert_vjp_matches_jacobian(gc.softmax, sym_softmax, [(4,)], seed=5)
    x = symbols("x0_", (4,))
    s = sym_softmax(x)
    # J[i, j] = d s_i / d x_j = s_i (delta_ij - s_j): rows are outputs, columns inputs.
    expected = sp.Matrix(4, 4, lambda i, j: s[i] * (sp.KroneckerDelta(i, j) - s[j]))
    assert sp.simplify(J - expected) == sp.zeros(4, 4)


@pytest.mark.parametrize("shape, axis", [((4,), -1), ((2, 3), 1), ((2, 3), 0), ((2, 2, 3), 1)])
def test_softmax_vjp_matches_jacobian(shape, axis):
    assert_vjp_matches_jacobian(lambda x: gc.softmax(x, axis),
                                lambda x: sym_softmax(x, axis), [shape], seed=6)


@pytest.mark.parametrize("shape, axis", [((4,), -1), ((2, 3), 1), ((2, 3), 0), ((2, 2, 3), 1)])
def test_log_softmax_vjp_matches_jacobian(shape, axis):
    assert_vjp_matches_jacobian(lambda x: gc.log_softmax(x, axis),
                                lambda x: sym_log_softmax(x, axis), [shape], seed=7)


def test_softmax_vjp_at_large_logits_matches_jacobian():
    # The forward pass shifts by the max; the rule must not care.
    point = [np.array([30.0, 31.5, 29.0, 30.7])]
    assert_vjp_matches_jacobian(gc.softmax, sym_softmax, [(4,)], point=point, seed=8)
    assert_vjp_matches_jacobian(gc.log_softmax, sym_log_softmax, [(4,)], point=point, seed=8)


# ---------------------------------------------------------------------------------------
# Ops that move data


@pytest.mark.parametrize("shape, new", [((2, 3), (3, 2)), ((6,), (1, 2, 3)),
                                        ((2, 3), (-1,)), ((2, 1, 3), (3, 2))])
def test_reshape_vjp_matches_jacobian(shape, new):
    assert_vjp_matches_jacobian(lambda x: gc.reshape(x, new), lambda x: np.reshape(x, new),
                                [shape])


@pytest.mark.parametrize("shape, perm", [((2, 3), None), ((2, 3, 2), (1, 2, 0)),
                                         ((2, 3, 2), (2, 0, 1)), ((3, 2, 2), (0, 2, 1))])
def test_transpose_vjp_matches_jacobian(shape, perm):
    assert_vjp_matches_jacobian(lambda x: gc.transpose(x, perm),
                                lambda x: np.transpose(x, perm), [shape])


def test_transpose_property_vjp_matches_jacobian():
    assert_vjp_matches_jacobian(lambda x: x.T, lambda x: x.T, [(3, 2)], seed=9)


@pytest.mark.parametrize("shape, target", [((3,), (2, 3)), ((2, 1), (2, 3)),
                                           ((1, 3), (2, 2, 3)), ((), (2, 2)),
                                           ((2, 1, 3), (2, 2, 3))])
def test_broadcast_to_vjp_matches_jacobian(shape, target):
    assert_vjp_matches_jacobian(lambda x: gc.broadcast_to(x, target),
                                lambda x: np.broadcast_to(x, target), [shape])


@pytest.mark.parametrize("shapes, axis", [([(2, 3), (2, 2)], 1), ([(1, 3), (2, 3)], 0),
                                          ([(2, 2), (1, 2), (3, 2)], 0),
                                          ([(2, 1, 2), (2, 2, 2)], -2)])
def test_concat_vjp_matches_jacobian_for_every_operand(shapes, axis):
    assert_vjp_matches_jacobian(lambda *xs: gc.concat(list(xs), axis),
                                lambda *xs: np.concatenate(xs, axis), shapes)


def test_concat_of_one_tensor_with_itself_accumulates():
    assert_vjp_matches_jacobian(lambda x: gc.concat([x, x * 2.0, x], 1),
                                lambda x: np.concatenate([x, x * 2, x], 1), [(2, 2)], seed=10)


@pytest.mark.parametrize("shape, axis", [((3,), 0), ((3,), 1), ((2, 3), 1), ((2, 3), -1)])
def test_stack_vjp_matches_jacobian(shape, axis):
    assert_vjp_matches_jacobian(lambda a, b: gc.stack([a, b], axis),
                                lambda a, b: np.stack([a, b], axis), [shape, shape])


INDEX_CASES = [
    ((3, 4), (slice(1, None), slice(None, None, 2))),
    ((3, 4), 1),
    ((3, 4), (-1, slice(1, 3))),
    ((3, 4), (None, slice(None), 2)),
    ((3, 4), (slice(None, None, -1), slice(1, 3))),
    ((3, 4), [0, 2, 2, 1, 0]),                               # repeated rows accumulate
    ((3, 4), ([0, 0, 2, 0], [1, 3, 1, 1])),                  # repeated (i, j) pairs
    ((3, 4), (Ellipsis, [3, 3, 0])),
    ((3, 4), (-1, [1, 1, -1])),
    ((3, 4), (np.array([[0, 1], [1, 1]]), slice(None, 2))),  # 2-D index array
    ((2, 3, 2), ([0, 0, 1], slice(None), [1, 1, 0])),        # advanced split by a slice
    ((2, 3, 2), (1, None, [2, 2], slice(None))),
]


@pytest.mark.parametrize("shape, key", INDEX_CASES, ids=[str(i) for i in range(len(INDEX_CASES))])
def test_index_vjp_matches_jacobian(shape, key):
    assert_vjp_matches_jacobian(lambda x: x[key], lambda x: x[key], [shape])


@pytest.mark.parametrize("shape, key", INDEX_CASES[5:], ids=[str(i) for i in range(5, 12)])
def test_index_add_vjp_matches_jacobian(shape, key):
    # IndexAdd, the adjoint of Index, has its own rule (Index): used by grad of grad.
    index_op = gc.input("probe", shape, "float64")[key].op  # the Index op of x[key]
    assert isinstance(index_op, Index)
    entries = index_op.index
    g_shape = np.empty(shape)[key].shape

    def scatter(g):
        out = np.zeros(shape, dtype=object)
        np.add.at(out, key, g)
        return out

    assert_vjp_matches_jacobian(lambda g: Tensor.make(IndexAdd(entries, shape), (g,)),
                                scatter, [g_shape], seed=11)
    assert_vjp_matches_jacobian(lambda x: Tensor.make(Index(entries), (x,)),
                                lambda x: x[key], [shape], seed=11)


GATHER_CASES = [
    ((4, 3), np.array([2, 0, 2, 3])),
    ((4, 3), np.array([[0, 3, 3], [1, 0, 0]])),
    ((4,), np.array([1, 1, -1, 0])),
    ((3, 2, 2), np.array([2, 2])),
]


@pytest.mark.parametrize("shape, idx", GATHER_CASES, ids=[str(i) for i in range(4)])
def test_gather_with_index_tensor_vjp_matches_jacobian(shape, idx):
    assert_vjp_matches_jacobian(lambda x, i: x[i], lambda x: x[idx], [shape],
                                extra_inputs=[("idx", idx.shape, "int64")],
                                extra_feeds={"idx": idx})


@pytest.mark.parametrize("shape, idx", GATHER_CASES, ids=[str(i) for i in range(4)])
def test_take_add_vjp_matches_jacobian(shape, idx):
    g_shape = idx.shape + shape[1:]

    def scatter(g):
        out = np.zeros(shape, dtype=object)
        np.add.at(out, idx, g)
        return out

    assert_vjp_matches_jacobian(lambda g, i: Tensor.make(TakeAdd(shape[0]), (g, i)), scatter,
                                [g_shape], extra_inputs=[("idx", idx.shape, "int64")],
                                extra_feeds={"idx": idx}, seed=12)


def test_take_function_vjp_matches_jacobian():
    idx = np.array([[1, 1], [0, 2]])
    assert_vjp_matches_jacobian(lambda x, i: gc.take(x, i), lambda x: x[idx], [(3, 2)],
                                extra_inputs=[("idx", (2, 2), "int32")],
                                extra_feeds={"idx": idx.astype(np.int32)}, seed=13)


# ---------------------------------------------------------------------------------------
# Broadcasting elementwise arithmetic (gradients summed back by unbroadcast)


BROADCAST_CASES = [
    ("mul", (2, 1, 3), (4, 1)),
    ("add", (2, 3), (3,)),
    ("sub", (1, 3), (2, 1)),
    ("div", (2, 3), (1, 3)),
    ("mul", (), (2, 2)),
]


@pytest.mark.parametrize("name, sa, sb", BROADCAST_CASES,
                         ids=[f"{n}{a}{b}" for n, a, b in BROADCAST_CASES])
def test_broadcasting_arithmetic_vjp_matches_jacobian(name, sa, sb):
    op = {"mul": operator.mul, "add": operator.add, "sub": operator.sub,
          "div": operator.truediv}[name]

    def shifted(b):  # keep divisors away from 0
        return b * b + 1 if name == "div" else b

    assert_vjp_matches_jacobian(lambda a, b: op(a, shifted(b)),
                                lambda a, b: op(a, shifted(b)), [sa, sb], seed=14)


# ---------------------------------------------------------------------------------------
# Losses and penalties, w.r.t. every float input


def _mean_all(e):
    return total(e.ravel()) / e.size


def test_mse_vjp_matches_jacobian():
    assert_vjp_matches_jacobian(gc.mse, lambda p, t: _mean_all((p - t) ** 2),
                                [(2, 3), (2, 3)], seed=15)


def test_binary_cross_entropy_with_logits_vjp_matches_jacobian():
    # log(1 + e^x) - x t, i.e. -[t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))].
    def reference(x, t):
        sig = np.vectorize(lambda v: 1 / (1 + sp.exp(-v)), otypes=[object])(x)
        return _mean_all(-(t * sym_log(sig) + (1 - t) * sym_log(1 - sig)))

    rng = np.random.default_rng(16)
    point = [2 * rng.standard_normal((2, 3)), rng.uniform(0, 1, (2, 3))]
    assert_vjp_matches_jacobian(gc.binary_cross_entropy_with_logits, reference,
                                [(2, 3), (2, 3)], point=point, seed=16)


@pytest.mark.parametrize("delta", [1.0, 0.5, 2.0])
def test_huber_vjp_matches_jacobian_on_both_sides_of_delta(delta):
    # delta * |d| - delta^2 / 2 outside: written differently from the library's form.
    def reference(p, t):
        d = (p - t).ravel()
        pieces = [sp.Piecewise((v**2 / 2, v**2 <= delta**2),
                               (delta * sp.Abs(v) - sp.Rational(1, 2) * delta**2, True))
                  for v in d]
        return total(pieces) / len(pieces)

    target = np.random.default_rng(17).standard_normal((2, 4))
    diff = delta * np.array([[0.3, -0.7, 1.8, -2.5], [0.95, -1.05, -0.2, 3.1]])
    assert np.sum(np.abs(diff) <= delta) >= 3 and np.sum(np.abs(diff) > delta) >= 3
    assert_vjp_matches_jacobian(lambda p, t: gc.huber(p, t, delta=delta), reference,
                                [(2, 4), (2, 4)], point=[target + diff, target], seed=17)


def test_softmax_cross_entropy_vjp_matches_jacobian():
    labels = np.array([2, 0, 3])

    def reference(x):
        rows = [x[n, y] - sp.log(total(sp.exp(v) for v in x[n])) for n, y in enumerate(labels)]
        return -total(rows) / len(rows)

    assert_vjp_matches_jacobian(gc.softmax_cross_entropy, reference, [(3, 4)],
                                extra_inputs=[("labels", (3,), "int64")],
                                extra_feeds={"labels": labels}, seed=18)


def test_hinge_vjp_matches_jacobian_away_from_margin_kinks():
    labels = np.array([1, 0, 3])
    scores = 1.5 * np.random.default_rng(19).standard_normal((3, 4))
    margins = scores - scores[np.arange(3), labels][:, None] + 1
    off_label = np.arange(4)[None, :] != labels[:, None]
    assert np.all(np.abs(margins[off_label]) > 1e-2)  # no kink of max(0, .) here
    assert np.any(margins[off_label] > 0) and np.any(margins[off_label] < 0)

    def reference(s):
        rows = [total(sp.Max(0, s[n, j] - s[n, y] + 1) for j in range(4) if j != y)
                for n, y in enumerate(labels)]
        return total(rows) / len(rows)

    assert_vjp_matches_jacobian(gc.hinge, reference, [(3, 4)], point=[scores],
                                extra_inputs=[("labels", (3,), "int64")],
                                extra_feeds={"labels": labels}, seed=19)


def test_l1_vjp_matches_jacobian():
    point = [np.array([[0.5, -1.2, 2.0], [-0.3, 0.8, -2.2]])]
    assert_vjp_matches_jacobian(gc.l1, lambda x: total(sp.Abs(v) for v in x.ravel()),
                                [(2, 3)], point=point, seed=20)


def test_l2_vjp_matches_jacobian():
    assert_vjp_matches_jacobian(gc.l2, lambda x: sp.Rational(1, 2) * total(x.ravel() ** 2),
                                [(2, 3)], seed=21)


# ---------------------------------------------------------------------------------------
# Elementwise ops from the registry


ELEMENTWISE = sorted(name for name, op in ew.REGISTRY.items()
                     if op.differentiable and op.out_dtype != "bool")


def _kink_terms(expr) -> list[sp.Expr]:
    """Expressions that vanish on a kink of ``expr`` (Piecewise conditions, |.|, max)."""
    terms = []
    for rel in expr.atoms(sp.Rel):
        terms.append(rel.lhs - rel.rhs)
    for a in expr.atoms(sp.Abs, sp.sign, sp.Heaviside):
        terms.append(a.args[0])
    for m in expr.atoms(sp.Max, sp.Min):
        args = m.args
        terms.extend(p - q for i, p in enumerate(args) for q in args[i + 1:])
    return terms


def _points(op, expr, derivs, n=5, seed=0):
    """``n`` random points (one value per argument) where the op is real, finite and
    smooth: away from kinks and from zero (1/x, log)."""
    rng = np.random.default_rng(seed)
    kinks = _kink_terms(expr)
    points = []
    for _ in range(2000):
        values = {a: (int(rng.integers(0, 2)) if a.name in op.bool_args else
                      round(float(rng.uniform(-2.5, 2.5)), 3)) for a in op.args}
        if any(abs(v) < 0.1 for a, v in values.items() if a.name not in op.bool_args):
            continue
        subs = {a: sp.Float(v, DPS) if a.name not in op.bool_args else sp.Integer(v)
                for a, v in values.items()}
        if any(abs(complex(sp.sympify(k).xreplace(subs).evalf(DPS))) < 0.05 for k in kinks):
            continue
        exact = [sp.sympify(e).xreplace(subs).evalf(DPS) for e in (expr, *derivs)]
        if not all(v.is_number and v.is_real and v.is_finite for v in exact):
            continue
        points.append(values)
        if len(points) == n:
            break
    assert len(points) == n, f"{op.name}: found only {len(points)} smooth points"
    return points


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_derivatives_match_sympy_diff(name):
    op = ew.REGISTRY[name]
    params = dict(zip(op.param_symbols, op.params.values(), strict=True))
    expr = op.expr.subs(params)
    truth = [derivation.diff(expr, a) for a in op.args]  # floor' = 0 (PyTorch)
    declared = [sp.sympify(d).subs(op.out, op.expr).subs(params) for d in op.derivatives]
    assert len(declared) == op.arity
    for values in _points(op, expr, truth):
        subs = {a: sp.Float(v, DPS) if a.name not in op.bool_args else sp.Integer(v)
                for a, v in values.items()}
        for a, d, t in zip(op.args, declared, truth, strict=True):
            if a.name in op.bool_args:
                assert d == 0  # the condition of where has no gradient
                continue
            got, want = float(d.xreplace(subs).evalf(DPS)), float(t.xreplace(subs).evalf(DPS))
            assert got == pytest.approx(want, rel=1e-12, abs=1e-14), (name, a, values)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_vjp_matches_sympy_diff(name):
    """gc.vjp through the op (default parameters) equals c * d expr / d arg pointwise."""
    op = ew.REGISTRY[name]
    params = dict(zip(op.param_symbols, op.params.values(), strict=True))
    expr = op.expr.subs(params)
    truth = [derivation.diff(expr, a) for a in op.args]  # floor' = 0 (PyTorch)
    points = _points(op, expr, truth, n=6, seed=1)
    feeds, tensors, wrt = {}, [], []
    for a in op.args:
        column = np.array([p[a] for p in points])
        if a.name in op.bool_args:
            feeds[a.name] = column.astype(bool)
            tensors.append(gc.input(a.name, (len(points),), "bool"))
        else:
            feeds[a.name] = column.astype(np.float64)
            tensors.append(gc.input(a.name, (len(points),), "float64"))
            wrt.append((a, tensors[-1]))
    c = np.random.default_rng(2).standard_normal(len(points))
    y = op(*tensors)
    grads = gc.vjp(y, [t for _, t in wrt], c)
    value, *got = gc.compile([y, *grads], backend="numpy")(**feeds)

    def at(e, p):
        subs = {a: sp.Float(v, DPS) if a.name not in op.bool_args else sp.Integer(v)
                for a, v in p.items()}
        return float(e.xreplace(subs).evalf(DPS))

    np.testing.assert_allclose(value, [at(expr, p) for p in points], rtol=1e-12, atol=1e-14)
    for (a, _), g in zip(wrt, got, strict=True):
        want = c * np.array([at(truth[op.args.index(a)], p) for p in points])
        np.testing.assert_allclose(g, want, rtol=RTOL, atol=ATOL,
                                   err_msg=f"{name}: gradient w.r.t. {a}")


def test_elementwise_registry_is_covered():
    # The built-in differentiable ops are all part of the parametrization above.
    for name in ("add", "sub", "mul", "div", "pow", "exp", "log", "sqrt", "abs", "sin", "cos",
                 "tanh", "sigmoid", "relu", "leaky_relu", "elu", "gelu", "gelu_tanh", "silu",
                 "softplus", "maximum", "minimum", "prelu", "where", "square", "reciprocal",
                 "neg", "huber_elementwise"):
        assert name in ELEMENTWISE


def test_custom_elementwise_vjp_matches_sympy_jacobian():
    mish = gc.elementwise("mish_jacobian_test",
                          lambda x: x * sp.tanh(sp.log(1 + sp.exp(x))))
    assert_vjp_matches_jacobian(
        lambda t: mish(t),
        lambda s: np.vectorize(lambda v: v * sp.tanh(sp.log(1 + sp.exp(v))),
                               otypes=[object])(s),
        [(2, 2)], seed=22)


PAD_CASES = [("constant", ((1, 0), (2, 1))), ("reflect", ((1, 1), (2, 0))),
             ("edge", ((0, 2), (1, 1))), ("wrap", ((2, 1), (0, 3)))]


@pytest.mark.parametrize("mode, pads", PAD_CASES, ids=[m for m, _ in PAD_CASES])
def test_pad_vjp_matches_jacobian(mode, pads):
    # Pad and its adjoint PadAdd (reflect, edge, wrap) each have a rule: grad of grad.
    assert_vjp_matches_jacobian(lambda x: gc.pad(x, pads, mode=mode, value=0.5),
                                lambda x: np.pad(x, pads, mode=mode, constant_values=0.5)
                                if mode == "constant" else np.pad(x, pads, mode=mode),
                                [(3, 4)])
    if mode != "constant":
        from graphc.shape_ops import PadAdd, pad_sources
        g_shape = (3 + sum(pads[0]), 4 + sum(pads[1]))

        def scatter(g):
            out = np.zeros((3, 4), dtype=object)
            np.add.at(out, np.ix_(*pad_sources(pads, mode, (3, 4))), g)
            return out

        assert_vjp_matches_jacobian(lambda g: Tensor.make(PadAdd(pads, mode, (3, 4)), (g,)),
                                    scatter, [g_shape])
