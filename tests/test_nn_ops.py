"""Layer ops (graphc/nn_ops.py, graphc/nn_functions.py) checked three ways.

- **SymPy**: every derivative rule (conv2d and its two adjoints, max pooling) and the
  compositions (average pooling, the norms, dropout, embedding) against the full Jacobian of
  an independent naive loop implementation over object arrays of symbols, on tiny instances;
- **PyTorch**: forward values and vector-Jacobian products in float64 (rtol 1e-7), and
  second derivatives against torch's double backward;
- **finite differences**: ``gc.check_grad(..., rtol=1e-6)``.

Every forward+gradient graph also runs on the Numba backend (which may evaluate these ops
with their NumPy semantics) and must agree with the NumPy interpreter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest
import sympy as sp

import graphc as gc
from graphc.ir import Tensor
from graphc.nn_functions import (
    avg_pool2d,
    batch_norm,
    conv2d,
    dropout,
    embedding,
    global_avg_pool2d,
    layer_norm,
    max_pool2d,
)
from graphc.nn_ops import Conv2dInputGrad, Conv2dWeightGrad, MaxPool2dGrad, MaxPool2dSelect

torch = pytest.importorskip("torch")
TF = torch.nn.functional

BACKENDS = ["numpy", "numba"] if "numba" in gc.compiler.AVAILABLE else ["numpy"]


# ---------------------------------------------------------------------------------------
# Independent reference implementations: plain loops over object (or float) arrays


def _pairs(*values):
    return [(v, v) if isinstance(v, int) else tuple(v) for v in values]


def _padded(x, padding, fill):
    (ph, pw), (n, c, h, w) = padding, x.shape
    out = np.full((n, c, h + 2 * ph, w + 2 * pw), fill, dtype=object)
    out[:, :, ph:ph + h, pw:pw + w] = x
    return out


def conv_ref(x, w, stride=1, padding=0, dilation=1, groups=1):
    (sh, sw), (ph, pw), (dh, dw) = _pairs(stride, padding, dilation)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = _padded(x, (ph, pw), sp.Integer(0))
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.empty((n, o, ho, wo), dtype=object)
    for b, oc, i, j in np.ndindex(*out.shape):
        first = oc // (o // groups) * cg  # the first input channel of oc's group
        out[b, oc, i, j] = sp.Add(*(xp[b, first + ci, i * sh + p * dh, j * sw + q * dw]
                                    * w[oc, ci, p, q]
                                    for ci in range(cg) for p in range(kh) for q in range(kw)))
    return out


def _windows_ref(x, k, stride, padding, fill):
    (kh, kw), (sh, sw), (ph, pw) = _pairs(k, stride if stride is not None else k, padding)
    xp = _padded(x, (ph, pw), fill)
    ho, wo = (xp.shape[2] - kh) // sh + 1, (xp.shape[3] - kw) // sw + 1
    for b, c, i, j in np.ndindex(x.shape[0], x.shape[1], ho, wo):
        yield (b, c, i, j), xp[b, c, i * sh:i * sh + kh, j * sw:j * sw + kw], (ho, wo)


def max_pool_ref(x, k, stride=None, padding=0):
    cells = list(_windows_ref(x, k, stride, padding, -sp.oo))
    out = np.empty(x.shape[:2] + cells[0][2], dtype=object)
    for idx, win, _ in cells:
        out[idx] = sp.Max(*win.ravel())
    return out


def avg_pool_ref(x, k, stride=None, padding=0, count_include_pad=True):
    real = np.ones(x.shape, dtype=object)
    cells = list(_windows_ref(x, k, stride, padding, sp.Integer(0)))
    counts = [win.sum() for _, win, _ in _windows_ref(real, k, stride, padding, 0)]
    out = np.empty(x.shape[:2] + cells[0][2], dtype=object)
    for (idx, win, _), count in zip(cells, counts):
        out[idx] = sp.Add(*win.ravel()) / (win.size if count_include_pad else count)
    return out


def _norm_ref(x, groups, gamma, beta, eps):
    """Normalise each list of index tuples in ``groups`` by its own mean and variance."""
    y = np.empty(x.shape, dtype=object)
    for cells in groups:
        m = sp.Add(*(x[i] for i in cells)) / len(cells)
        v = sp.Add(*((x[i] - m) ** 2 for i in cells)) / len(cells)
        for i in cells:
            y[i] = (x[i] - m) / sp.sqrt(v + eps) * gamma(i) + beta(i)
    return y


def batch_norm_ref(x, gamma, beta, eps=1e-5):
    groups = [[i for i in np.ndindex(*x.shape) if i[1] == c] for c in range(x.shape[1])]
    return _norm_ref(x, groups, lambda i: gamma[i[1]], lambda i: beta[i[1]], eps)


def layer_norm_ref(x, gamma, beta, eps=1e-5):
    groups = [[i + (j,) for j in range(x.shape[-1])] for i in np.ndindex(*x.shape[:-1])]
    return _norm_ref(x, groups, lambda i: gamma[i[-1]], lambda i: beta[i[-1]], eps)


# ---------------------------------------------------------------------------------------
# The SymPy Jacobian check


def symbols(name, shape):
    flat = [sp.Symbol(f"{name}{i}", real=True) for i in range(math.prod(shape))]
    return np.array(flat + [None], dtype=object)[:-1].reshape(shape)


def assert_vjp_is_cT_J(build, reference, shapes, seed=0, point=None):
    """``gc.vjp(build(*xs), xs, c)`` equals ``c^T J(x0)``, J the full SymPy Jacobian of
    ``reference`` (rows: outputs, columns: all inputs, flattened)."""
    rng = np.random.default_rng(seed)
    syms = [symbols(f"x{k}_", s) for k, s in enumerate(shapes)]
    out = np.asarray(reference(*syms), dtype=object)
    J = sp.Matrix(list(out.ravel())).jacobian([s for x in syms for s in x.ravel()])
    x0 = point or [rng.standard_normal(s) for s in shapes]
    subs = {s: sp.Float(float(v), 30) for xs, xv in zip(syms, x0)
            for s, v in zip(xs.ravel(), xv.ravel())}
    J0 = np.array(J.xreplace(subs).evalf(30).tolist(), dtype=np.float64).reshape(J.shape)
    out0 = np.array([float(sp.sympify(e).xreplace(subs).evalf(30)) for e in out.ravel()])
    c = rng.standard_normal(out.shape)
    expected = c.ravel() @ J0

    xs = [gc.input(f"x{k}", s, "float64") for k, s in enumerate(shapes)]
    y = build(*xs)
    assert y.shape == out.shape
    f = gc.compile([y, *gc.vjp(y, xs, c)], backend="numpy")
    value, *grads = f(**{f"x{k}": v for k, v in enumerate(x0)})
    np.testing.assert_allclose(value.ravel(), out0, rtol=1e-12, atol=1e-12)
    got = np.concatenate([g.ravel() for g in grads])
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


CONV_JACOBIAN = [  # x shape, w shape, stride, padding, dilation, groups
    ((1, 1, 3, 3), (1, 1, 2, 2), 1, 0, 1, 1),
    ((1, 1, 3, 3), (1, 1, 2, 2), 2, 1, 1, 1),
    ((1, 2, 3, 3), (2, 2, 2, 2), 1, 1, 1, 1),
    ((1, 2, 4, 4), (2, 1, 2, 2), 1, 0, 2, 2),
    ((2, 1, 4, 3), (1, 1, 2, 1), (2, 1), (1, 0), 1, 1),
]


@pytest.mark.parametrize("xs, ws, s, p, d, g", CONV_JACOBIAN)
def test_conv2d_rule_matches_sympy_jacobian(xs, ws, s, p, d, g):
    assert_vjp_is_cT_J(lambda x, w: conv2d(x, w, s, p, dilation=d, groups=g),
                       lambda x, w: conv_ref(x, w, s, p, d, g), [xs, ws])


def _linear_derivative(form, wrt_shape):
    """The gradient of the scalar bilinear ``form(u)`` with respect to symbols u."""
    u = symbols("u", wrt_shape)
    total = form(u)
    return np.array([sp.diff(total, s) for s in u.ravel()], dtype=object).reshape(wrt_shape)


@pytest.mark.parametrize("xs, ws, s, p, d, g", CONV_JACOBIAN[1:4])
def test_conv2d_adjoint_rules_match_sympy_jacobian(xs, ws, s, p, d, g):
    """conv2d_input_grad(g, w) and conv2d_weight_grad(x, g), the adjoints the conv rule
    builds, have rules of their own: checked against d/dx and d/dw of <g, conv(x, w)>."""
    geom = (tuple(_pairs(s)[0]), tuple(_pairs(p)[0]), tuple(_pairs(d)[0]), g)
    gs = (xs[0], ws[0]) + conv_ref(np.zeros(xs, dtype=object), np.zeros(ws, dtype=object),
                                   s, p, d, g).shape[2:]
    assert_vjp_is_cT_J(
        lambda dy, w: Tensor.make(Conv2dInputGrad(*geom, in_hw=xs[2:]), (dy, w)),
        lambda dy, w: _linear_derivative(lambda u: np.sum(dy * conv_ref(u, w, s, p, d, g)), xs),
        [gs, ws], seed=1)
    assert_vjp_is_cT_J(
        lambda x, dy: Tensor.make(Conv2dWeightGrad(*geom, kernel=ws[2:]), (x, dy)),
        lambda x, dy: _linear_derivative(lambda u: np.sum(dy * conv_ref(x, u, s, p, d, g)), ws),
        [xs, gs], seed=2)


POOL_JACOBIAN = [  # x shape, k, stride, padding
    ((1, 1, 4, 4), 2, None, 0),
    ((1, 1, 5, 5), 3, 2, 1),     # overlapping windows, padding
    ((1, 2, 3, 4), (2, 3), 1, 0),
]


@pytest.mark.parametrize("shape, k, s, p", POOL_JACOBIAN)
def test_max_pool2d_rule_matches_sympy_jacobian(shape, k, s, p):
    # a random normal point has no ties (almost surely), where max is differentiable
    assert_vjp_is_cT_J(lambda x: max_pool2d(x, k, s, p),
                       lambda x: max_pool_ref(x, k, s, p), [shape])


AVG_JACOBIAN = [case + (True,) for case in POOL_JACOBIAN] + \
    [case + (False,) for case in POOL_JACOBIAN if case[3]]  # the modes differ with padding


@pytest.mark.parametrize("shape, k, s, p, count_include_pad", AVG_JACOBIAN)
def test_avg_pool2d_matches_sympy_jacobian(shape, k, s, p, count_include_pad):
    assert_vjp_is_cT_J(lambda x: avg_pool2d(x, k, s, p, count_include_pad),
                       lambda x: avg_pool_ref(x, k, s, p, count_include_pad), [shape])


def test_norms_and_global_pool_match_sympy_jacobian():
    assert_vjp_is_cT_J(global_avg_pool2d, lambda x: np.mean(x, axis=(2, 3)), [(2, 2, 2, 3)])
    assert_vjp_is_cT_J(lambda x, g, b: batch_norm(x, g, b),
                       lambda x, g, b: batch_norm_ref(x, g, b), [(3, 2), (2,), (2,)])
    assert_vjp_is_cT_J(lambda x, g, b: batch_norm(x, g, b),
                       lambda x, g, b: batch_norm_ref(x, g, b), [(2, 2, 1, 2), (2,), (2,)],
                       seed=3)
    assert_vjp_is_cT_J(lambda x, g, b: layer_norm(x, g, b),
                       lambda x, g, b: layer_norm_ref(x, g, b), [(2, 3), (3,), (3,)])


def test_dropout_and_embedding_match_sympy_jacobian():
    keep = np.random.default_rng(5).random((3, 4)) >= 0.25  # the documented mask
    assert_vjp_is_cT_J(lambda x: dropout(x, 0.25, seed=5), lambda x: x * keep.astype(int) / 0.75,
                       [(3, 4)])
    idx = np.array([[2, 0], [2, 3]])
    assert_vjp_is_cT_J(lambda t: embedding(gc.constant(idx), t), lambda t: t[idx], [(4, 2)])


def test_max_pool2d_adjoints_are_transposes():
    """<max_pool2d_grad(x, g), v> = <g, max_pool2d_select(x, v)>, and selecting x itself
    is max pooling: the two adjoints the rules use are each other's transposes."""
    rng = np.random.default_rng(0)
    for shape, k, s, p in POOL_JACOBIAN + [((2, 3, 7, 7), 3, 1, 1)]:
        kernel, stride, pad = _pairs(k, s if s is not None else k, p)
        x, v = rng.standard_normal(shape), rng.standard_normal(shape)
        pooled = max_pool_ref(x.astype(object), k, s, p).astype(np.float64)
        g = rng.standard_normal(pooled.shape)
        scatter = MaxPool2dGrad(kernel, stride, pad).evaluate(x, g)
        select = MaxPool2dSelect(kernel, stride, pad).evaluate(x, v)
        np.testing.assert_allclose(np.sum(scatter * v), np.sum(g * select), rtol=1e-12)
        np.testing.assert_array_equal(MaxPool2dSelect(kernel, stride, pad).evaluate(x, x),
                                      pooled)


# ---------------------------------------------------------------------------------------
# Forward and gradients against PyTorch, finite differences, and Numba against NumPy


@dataclass
class Case:
    """``build(**tensors)`` and ``torch_fn(**torch tensors)`` compute one function; feeds
    are drawn per ``kinds`` (name -> (shape, kind)); ``diff`` names the inputs to
    differentiate.  kind: normal, positive, index (int64 in [0, 10)), ties (small ints)."""

    id: str
    kinds: dict
    build: object
    torch_fn: object
    diff: tuple = ("x",)
    finite_differences: bool = True
    extra: dict = field(default_factory=dict)

    def feeds(self, seed=0):
        rng = np.random.default_rng(seed)
        draw = {"normal": lambda s: rng.standard_normal(s),
                "positive": lambda s: rng.uniform(0.5, 2.0, s),
                "index": lambda s: rng.integers(0, 10, s),
                "ties": lambda s: rng.integers(0, 3, s).astype(np.float64)}
        return {n: draw[k](s) for n, (s, k) in self.kinds.items()}


def _conv(xs, ws, **kw):
    torch_kw = {"stride": kw.get("stride", 1), "padding": kw.get("padding", 0),
                "dilation": kw.get("dilation", 1), "groups": kw.get("groups", 1)}
    return Case(f"conv2d-{xs}-{ws}-{'-'.join(f'{k}{v}' for k, v in kw.items())}",
                {"x": (xs, "normal"), "w": (ws, "normal")},
                lambda x, w: conv2d(x, w, **kw),
                lambda x, w: TF.conv2d(x, w, **torch_kw), ("x", "w"))


def _pool(kind, xs, k, s=None, p=0, values="normal", **kw):
    ours = {"max": max_pool2d, "avg": avg_pool2d}[kind]
    theirs = {"max": TF.max_pool2d, "avg": TF.avg_pool2d}[kind]
    return Case(f"{kind}_pool2d-{xs}-k{k}-s{s}-p{p}-{values}{kw or ''}",
                {"x": (xs, values)}, lambda x: ours(x, k, s, p, **kw),
                lambda x: theirs(x, k, s, p, **kw), finite_differences=values != "ties")


CASES = [
    _conv((2, 3, 7, 6), (4, 3, 3, 3)),
    _conv((2, 3, 7, 6), (4, 3, 3, 3), stride=2, padding=1),
    _conv((2, 2, 9, 8), (3, 2, 3, 2), dilation=2, padding=2),
    _conv((2, 4, 8, 8), (6, 2, 3, 3), groups=2, stride=(2, 1)),
    _conv((2, 4, 6, 6), (4, 1, 3, 3), groups=4, stride=2, padding=1),           # depthwise
    _conv((2, 2, 6, 7), (3, 2, 2, 3), stride=(1, 2), padding=(1, 0), dilation=(2, 1)),
    Case("conv2d-bias", {"x": ((2, 3, 5, 5), "normal"), "w": ((4, 3, 2, 2), "normal"),
                         "b": ((4,), "normal")},
         lambda x, w, b: conv2d(x, w, 1, 1, bias=b),
         lambda x, w, b: TF.conv2d(x, w, b, padding=1), ("x", "w", "b")),
    _pool("max", (2, 3, 8, 8), 2),
    _pool("max", (2, 3, 7, 7), 3, 2, 1),
    _pool("max", (2, 2, 6, 7), (2, 3), 1),
    _pool("max", (2, 3, 6, 6), 2, values="ties"),        # ties: the first maximum wins
    _pool("max", (1, 2, 6, 6), 3, 1, 1, values="ties"),
    _pool("avg", (2, 3, 8, 8), 2),
    _pool("avg", (2, 3, 7, 7), 3, 2, 1),
    _pool("avg", (2, 3, 7, 7), 3, 2, 1, count_include_pad=False),
    _pool("avg", (2, 2, 6, 7), (2, 3), (1, 2)),
    Case("global_avg_pool2d", {"x": ((3, 4, 5, 6), "normal")}, global_avg_pool2d,
         lambda x: TF.adaptive_avg_pool2d(x, 1).flatten(1)),
    Case("batch_norm-train-NC", {"x": ((8, 3), "normal"), "g": ((3,), "normal"),
                                 "b": ((3,), "normal")},
         lambda x, g, b: batch_norm(x, g, b),
         lambda x, g, b: TF.batch_norm(x, None, None, g, b, training=True), ("x", "g", "b")),
    Case("batch_norm-train-NCHW", {"x": ((4, 3, 5, 5), "normal"), "g": ((3,), "normal"),
                                   "b": ((3,), "normal")},
         lambda x, g, b: batch_norm(x, g, b, eps=1e-3),
         lambda x, g, b: TF.batch_norm(x, None, None, g, b, True, eps=1e-3), ("x", "g", "b")),
    Case("batch_norm-eval-NCHW", {"x": ((4, 3, 5, 5), "normal"), "g": ((3,), "normal"),
                                  "b": ((3,), "normal"), "m": ((3,), "normal"),
                                  "v": ((3,), "positive")},
         lambda x, g, b, m, v: batch_norm(x, g, b, m, v, training=False),
         lambda x, g, b, m, v: TF.batch_norm(x, m, v, g, b, training=False), ("x", "g", "b")),
    Case("layer_norm-last", {"x": ((4, 5, 6), "normal"), "g": ((6,), "normal"),
                             "b": ((6,), "normal")},
         lambda x, g, b: layer_norm(x, g, b),
         lambda x, g, b: TF.layer_norm(x, (6,), g, b), ("x", "g", "b")),
    Case("layer_norm-last-two", {"x": ((4, 5, 6), "normal"), "g": ((5, 6), "normal"),
                                 "b": ((5, 6), "normal")},
         lambda x, g, b: layer_norm(x, g, b, axis=(-2, -1), eps=1e-6),
         lambda x, g, b: TF.layer_norm(x, (5, 6), g, b, eps=1e-6), ("x", "g", "b")),
    Case("embedding", {"i": ((3, 4), "index"), "t": ((10, 5), "normal")},
         lambda i, t: embedding(i, t), lambda i, t: TF.embedding(i, t), ("t",)),
]


def _graph(case):
    """(inputs, output, gradient tensors, cotangent, feeds) of ``case`` in float64."""
    feeds = case.feeds()
    tensors = {n: gc.input(n, v.shape, "int64" if v.dtype.kind == "i" else "float64")
               for n, v in feeds.items()}
    y = case.build(**tensors)
    c = np.random.default_rng(1).standard_normal(y.shape)
    grads = gc.vjp(y, [tensors[n] for n in case.diff], c)
    return tensors, y, grads, c, feeds


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_forward_and_vjp_match_torch(case):
    tensors, y, grads, c, feeds = _graph(case)
    value, *got = gc.compile([y, *grads], backend="numpy")(**feeds)
    ts = {n: torch.tensor(v, requires_grad=n in case.diff) for n, v in feeds.items()}
    ty = case.torch_fn(**ts)
    np.testing.assert_allclose(value, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    ty.backward(torch.tensor(c))
    for n, g in zip(case.diff, got):
        np.testing.assert_allclose(g, ts[n].grad.numpy(), rtol=1e-7, atol=1e-10,
                                   err_msg=f"d/d{n}")


@pytest.mark.parametrize("case", [c for c in CASES if c.finite_differences],
                         ids=[c.id for c in CASES if c.finite_differences])
def test_gradient_matches_finite_differences(case):
    tensors, y, _, c, feeds = _graph(case)
    loss = gc.sum(y * gc.constant(c))
    report = gc.check_grad(loss, [tensors[n] for n in case.diff], feeds, rtol=1e-6,
                           max_elements=24)
    assert report.ok, str(report)


@pytest.mark.skipif(BACKENDS == ["numpy"], reason="the Numba backend is not available")
@pytest.mark.parametrize("case", CASES[::2] + [CASES[-4]],
                         ids=[c.id for c in CASES[::2] + [CASES[-4]]])
def test_numba_backend_agrees_with_numpy(case):
    _, y, grads, _, feeds = _graph(case)
    want = gc.compile([y, *grads], backend="numpy")(**feeds)
    got = gc.compile([y, *grads], backend="numba")(**feeds)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_float32_and_positional_api():
    """API.md's ``conv2d(x, w, stride, padding)`` positionally; float32 stays float32."""
    rng = np.random.default_rng(0)
    X, W = rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((4, 3, 3, 3))
    x, w = gc.input("x", X.shape), gc.param("w", W.shape)
    y = max_pool2d(gc.relu(conv2d(x, w, 2, 1)), 2)
    gw = gc.grad(gc.sum(y), w)
    assert y.dtype == gw.dtype == "float32" and y.shape == (2, 4, 2, 2)
    value, grad = gc.compile([y, gw], backend="numpy")(x=X.astype(np.float32),
                                                        w=W.astype(np.float32))
    assert value.dtype == np.float32
    tx, tw = torch.tensor(X, dtype=torch.float32), torch.tensor(W, dtype=torch.float32,
                                                                 requires_grad=True)
    ty = TF.max_pool2d(TF.relu(TF.conv2d(tx, tw, None, 2, 1)), 2)
    ty.sum().backward()
    np.testing.assert_allclose(value, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad, tw.grad.numpy(), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------
# Second order against torch's double backward


SECOND_ORDER = [
    ("conv2d", lambda x, w: conv2d(x, w, 2, 1), lambda x, w: TF.conv2d(x, w, None, 2, 1)),
    ("conv2d-groups-dilation", lambda x, w: conv2d(x, w[:, :2], 1, 2, dilation=2, groups=2),
     lambda x, w: TF.conv2d(x, w[:, :2], None, 1, 2, 2, 2)),
    ("avg_pool2d", lambda x, w: conv2d(avg_pool2d(x, 3, 2, 1), w, padding=1),
     lambda x, w: TF.conv2d(TF.avg_pool2d(x, 3, 2, 1), w, padding=1)),
    ("max_pool2d", lambda x, w: conv2d(max_pool2d(x, 3, 2, 1), w, padding=1),
     lambda x, w: TF.conv2d(TF.max_pool2d(x, 3, 2, 1), w, padding=1)),
]


@pytest.mark.parametrize("build, torch_fn", [c[1:] for c in SECOND_ORDER],
                         ids=[c[0] for c in SECOND_ORDER])
def test_second_derivatives_match_torch(build, torch_fn):
    """Differentiate <grad_x L, v1> + <grad_w L, v2>, L = <c, y>, with respect to x, w and
    the cotangent c: exercises every adjoint op's own rule."""
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((2, 4, 7, 7)), "w": rng.standard_normal((4, 4, 3, 3))}
    x, w = (gc.input(n, v.shape, "float64") for n, v in feeds.items())
    y = build(x, w)
    feeds["c"] = rng.standard_normal(y.shape)
    c = gc.input("c", y.shape, "float64")
    v1, v2 = rng.standard_normal(x.shape), rng.standard_normal(w.shape)
    gx, gw = gc.grad(gc.sum(y * c), [x, w])
    second = gc.grad(gc.sum(gx * v1) + gc.sum(gw * v2), [x, w, c])
    got = gc.compile(second, backend="numpy")(**feeds)

    tx, tw, tc = (torch.tensor(feeds[n], requires_grad=True) for n in "xwc")
    tgx, tgw = torch.autograd.grad((torch_fn(tx, tw) * tc).sum(), [tx, tw], create_graph=True)
    want = torch.autograd.grad((tgx * torch.tensor(v1)).sum() + (tgw * torch.tensor(v2)).sum(),
                               [tx, tw, tc], allow_unused=True)
    for name, a, b in zip("xwc", got, want):
        b = np.zeros_like(a) if b is None else b.numpy()
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10, err_msg=f"d/d{name}")


# ---------------------------------------------------------------------------------------
# Batch norm's running statistics, dropout


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 2, 5)])
def test_batch_norm_running_statistics_match_torch(shape):
    rng = np.random.default_rng(0)
    X, M, V = rng.standard_normal(shape), rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    x, m, v = gc.input("x", shape, "float64"), gc.input("m", (3,), "float64"), \
        gc.input("v", (3,), "float64")
    y, m1, v1 = batch_norm(x, running_mean=m, running_var=v, training=True, momentum=0.2)
    got = gc.compile([y, m1, v1], backend="numpy")(x=X, m=M, v=V)
    tm, tv = torch.tensor(M), torch.tensor(V)
    ty = TF.batch_norm(torch.tensor(X), tm, tv, training=True, momentum=0.2)  # updates tm, tv
    for a, b in zip(got, (ty, tm, tv)):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-10, atol=1e-12)
    evaluated = batch_norm(x, running_mean=m, running_var=v, training=False)
    np.testing.assert_allclose(gc.compile(evaluated, backend="numpy")(x=X, m=M, v=V),
                               TF.batch_norm(torch.tensor(X), torch.tensor(M), torch.tensor(V),
                                             training=False).numpy(), rtol=1e-10)


def test_dropout_mask_statistics_scaling_and_reproducibility():
    X = np.random.default_rng(0).standard_normal((200, 300)) + 3.0
    x = gc.input("x", X.shape, "float64")
    step = gc.input("step", (), "int64")
    y, y_same, y_other = dropout(x, 0.3, seed=11), dropout(x, 0.3, seed=11), \
        dropout(x, 0.3, seed=12)
    y_fed = dropout(x, 0.3, seed=step)
    (dx,) = gc.vjp(y, [x], np.ones(X.shape))
    a, b, other, fed, grad = gc.compile([y, y_same, y_other, y_fed, dx], backend="numpy")(
        x=X, step=np.int64(11))
    keep = np.random.default_rng(11).random(X.shape) >= 0.3   # the documented mask
    np.testing.assert_array_equal(a != 0, keep)
    np.testing.assert_allclose(a[keep], X[keep] / 0.7, rtol=1e-15)   # inverted scaling
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, fed)                             # a fed seed
    assert (other != a).any()
    assert abs(1 - keep.mean() - 0.3) < 0.01                          # drop rate ~ p
    assert abs(a.mean() / X.mean() - 1) < 0.01                        # E[y] = x
    np.testing.assert_allclose(grad, keep / 0.7, rtol=1e-15)          # gradient mask/(1-p)
    for backend in BACKENDS:
        again = gc.compile(y, backend=backend)(x=X)
        np.testing.assert_allclose(again, a, rtol=1e-15)  # (fused: rounding may differ)
    assert dropout(x, 0.3, training=False) is x and dropout(x, 0.0) is x
    np.testing.assert_array_equal(gc.compile(dropout(x, 1.0), backend="numpy")(x=X), 0 * X)


def test_layer_ops_render_with_gradient_labels():
    x = gc.input("x", (1, 1, 5, 5), "float64")
    w = gc.input("w", (2, 1, 2, 2), "float64")
    loss = gc.sum(avg_pool2d(max_pool2d(conv2d(x, w, padding=1), 2), 1))
    source = gc.render(loss, backward=True).source
    for text in ("conv2d_input_grad", "conv2d_weight_grad", "first maximum"):
        assert text in source


# ---------------------------------------------------------------------------------------
# Construction errors name the op, the shapes and the user's line


def _x(shape=(2, 3, 8, 8), dtype="float32"):
    return gc.input("x", shape, dtype)


ERRORS = [  # (builds a bad graph on one line, expected words in the message)
    (lambda: conv2d(_x(), gc.input("w", (4, 2, 3, 3))), ["conv2d", "channel", "(2, 3, 8, 8)",
                                                         "(4, 2, 3, 3)"]),
    (lambda: conv2d(_x(), gc.input("w", (4, 1, 3, 3)), groups=2), ["conv2d", "groups=2"]),
    (lambda: conv2d(_x(), gc.input("w", (4, 3, 9, 3))), ["conv2d", "larger", "(4, 3, 9, 3)"]),
    (lambda: conv2d(_x(), gc.input("w", (4, 3, 3, 3)), dilation=4), ["conv2d", "9x9"]),
    (lambda: conv2d(_x((3, 8, 8)), gc.input("w", (4, 3, 3, 3))), ["conv2d", "(N, C, H, W)"]),
    (lambda: conv2d(_x(), gc.input("w", (4, 3, 3, 3)), stride=0), ["conv2d", "stride"]),
    (lambda: conv2d(_x(), gc.input("w", (4, 3, 3, 3)), bias=gc.input("b", (3,))),
     ["conv2d", "bias"]),
    (lambda: conv2d(_x(dtype="int64"), gc.input("w", (4, 3, 3, 3))), ["conv2d", "float"]),
    (lambda: max_pool2d(_x(), 9), ["max_pool2d", "larger", "(2, 3, 8, 8)"]),
    (lambda: max_pool2d(_x(), 2, padding=2), ["max_pool2d", "half"]),
    (lambda: avg_pool2d(_x((3, 8, 8)), 2), ["avg_pool2d", "(N, C, H, W)"]),
    (lambda: batch_norm(_x(), gc.input("g", (4,))), ["batch_norm", "gamma", "(3,)"]),
    (lambda: batch_norm(_x(), training=False), ["batch_norm", "running_mean"]),
    (lambda: layer_norm(_x(), gc.input("g", (3,))), ["layer_norm", "gamma", "(8,)"]),
    (lambda: layer_norm(_x(), axis=4), ["layer_norm", "axis 4"]),
    (lambda: dropout(_x(), 1.5), ["dropout", "probability"]),
    (lambda: dropout(_x(), 0.5, seed=gc.input("s", (2,), "int64")), ["dropout_mask", "seed"]),
    (lambda: embedding(gc.input("i", (3,), "int64"), _x()), ["embedding", "table"]),
    (lambda: embedding(_x((3,)), gc.input("t", (5, 2))), ["take", "int"]),
]


@pytest.mark.parametrize("build, words", ERRORS, ids=[w[0] + "-" + w[1] for _, w in ERRORS])
def test_construction_errors_name_op_shapes_and_line(build, words):
    with pytest.raises(gc.GraphError) as err:
        build()
    message = str(err.value)
    for word in words:
        assert word in message, message
    assert f"{__file__}:{build.__code__.co_firstlineno}" in message, message


@pytest.mark.skipif(BACKENDS == ["numpy"], reason="the Numba backend is not available")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("k, stride, padding", [(2, None, 0), (3, 1, 1), (3, 2, 1),
                                                ((2, 3), (1, 2), (1, 1)), (2, 1, 0)])
def test_numba_max_pool_kernels_agree_with_numpy_at_ties_nan_and_inf(dtype, k, stride, padding):
    """max_pool2d and its gradient run as native kernels (no NumPy fallback) and route the
    gradient as the reference does: to each window's first maximum, or its first NaN;
    overlapping windows accumulate (in another order: float rounding only)."""
    rng = np.random.default_rng(3)
    x = gc.input("x", (2, 3, 7, 8), dtype)
    y = max_pool2d(x, k, stride=stride, padding=padding)
    c = gc.input("c", y.shape, dtype)
    (dx,) = gc.grad(gc.sum(y * c), [x])
    X = rng.standard_normal(x.shape).astype(dtype)
    X[0, 0, :2, :2] = np.nan
    X[1, 1, 3:5, 3:6] = -np.inf
    X[0, 2, 1, :] = 1.0  # ties within windows
    C = rng.standard_normal(y.shape).astype(dtype)
    want = gc.compile([y, dx], backend="numpy")(x=X, c=C)
    f = gc.compile([y, dx], backend="numba")
    assert not {"max_pool2d", "max_pool2d_grad"} & set(f.stats["numpy_fallbacks"])
    tol = {"float32": (1e-5, 1e-6), "float64": (1e-12, 1e-13)}[dtype]
    for a, b in zip(f(x=X, c=C), want):
        np.testing.assert_allclose(a, b, rtol=tol[0], atol=tol[1], equal_nan=True)


@pytest.mark.skipif(BACKENDS == ["numpy"], reason="the Numba backend is not available")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("geometry", [dict(), dict(stride=2, padding=1),
                                      dict(padding=(2, 1), dilation=(1, 2)),
                                      dict(stride=(1, 2), groups=2)])
def test_numba_conv_kernels_agree_with_numpy(dtype, geometry):
    """conv2d and both adjoints run as im2col/col2im kernels around BLAS (one GEMM per
    group for grouped convolutions) and agree with the reference."""
    rng = np.random.default_rng(5)
    groups = geometry.get("groups", 1)
    x = gc.input("x", (3, 4, 9, 8), dtype)
    w = gc.input("w", (6, 4 // groups, 3, 3), dtype)
    y = conv2d(x, w, **geometry)
    c = gc.input("c", y.shape, dtype)
    outputs = [y, *gc.grad(gc.sum(y * c), [x, w])]
    feeds = {"x": rng.standard_normal(x.shape).astype(dtype),
             "w": rng.standard_normal(w.shape).astype(dtype),
             "c": rng.standard_normal(y.shape).astype(dtype)}
    want = gc.compile(outputs, backend="numpy")(feeds)
    f = gc.compile(outputs, backend="numba")
    conv_ops = {"conv2d", "conv2d_input_grad", "conv2d_weight_grad"}
    fell_back = conv_ops & set(f.stats["numpy_fallbacks"])
    assert fell_back == set()
    tol = {"float32": (1e-5, 1e-5), "float64": (1e-12, 1e-12)}[dtype]
    for a, b in zip(f(feeds), want):
        np.testing.assert_allclose(a, b, rtol=tol[0], atol=tol[1] * np.abs(b).max())


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_max_pool_padding_never_takes_the_gradient_of_a_window_of_minus_inf(backend):
    """A padded window whose values inside x are all -inf routes its gradient to the first
    of them, as PyTorch (the padding, -inf too, used to come first and drop it)."""
    x = gc.input("x", (1, 1, 4, 4), "float64")
    X = np.arange(16.0).reshape(1, 1, 4, 4)
    X[0, 0, 0, 0] = -np.inf
    (dx,) = gc.compile(gc.grad(gc.sum(gc.max_pool2d(x, 2, 2, 1)), [x]), backend=backend)(x=X)
    want = np.zeros(16)
    want[[0, 2, 3, 8, 10, 11, 12, 14, 15]] = 1  # torch.nn.functional.max_pool2d's gradient
    np.testing.assert_array_equal(dx.ravel(), want)


def test_avg_pool_window_larger_than_the_input_names_avg_pool():
    x = gc.input("x", (1, 3, 5, 5))
    with pytest.raises(gc.ShapeError, match=r"avg_pool2d: the window \(6, 6\) is larger than "
                       r"the padded input \(5, 5\) \(operand: \(1, 3, 5, 5\)") as info:
        gc.avg_pool2d(x, 6)
    assert "test_nn_ops.py" in str(info.value)
