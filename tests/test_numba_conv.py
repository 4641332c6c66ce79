"""The Numba backend's convolution and max-pooling kernels at odd shapes, against the NumPy
reference backend and torch.nn.functional (issue 18 item 3)."""

import numpy as np
import pytest

import graphc as gc
from graphc.nn_functions import conv2d, max_pool2d

torch = pytest.importorskip("torch")
TF = torch.nn.functional

pytestmark = pytest.mark.skipif("numba" not in gc.compiler.AVAILABLE,
                                reason="the Numba backend is not available")

# (x shape, window, stride): every window tiles the plane, so the gradient runs the
# "tiles" kernel; (2, 3, 7, 8) with window 2 leaves a row uncovered (the scatter kernel)
TILED = [((2, 3, 8, 6), 2, None), ((1, 1, 6, 6), 3, None), ((2, 16, 4, 6), (2, 3), None),
         ((3, 2, 4, 4), 1, None)]


def _pool_feeds(shape, pooled, dtype, rng):
    X = rng.standard_normal(shape).astype(dtype)
    X[0, 0, :2, :2] = np.nan            # a window of NaNs
    X[-1, -1, :2, 1] = np.nan           # one NaN after a number
    X[0, -1, -2:, :] = -np.inf          # windows of -inf
    X[-1, 0, :, :3] = np.maximum(X[-1, 0, :, :3], 0).round()  # ties (ReLU'd zeros)
    C = rng.standard_normal(pooled).astype(dtype)
    C[0, 0, -1, -1] = -0.0              # 0 + (-0.0) is +0.0, as the reference adds
    C[-1, -1, 0, 0] = np.inf
    return X, C


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape, k, stride", TILED + [((2, 3, 7, 8), 2, None)])
def test_max_pool_grad_kernels_match_the_reference_to_the_bit(shape, k, stride, dtype):
    """The gradient goes to each window's first maximum (first NaN), 0 elsewhere; the
    tiles kernel (windows that tile the plane) writes what the reference's sums give."""
    rng = np.random.default_rng(7)
    x = gc.input("x", shape, dtype)
    y = max_pool2d(x, k, stride=stride)
    c = gc.input("c", y.shape, dtype)
    (dx,) = gc.grad(gc.sum(y * c), [x])
    X, C = _pool_feeds(shape, y.shape, dtype, rng)
    want = gc.compile([y, dx], backend="numpy")(x=X, c=C)
    f = gc.compile([y, dx], backend="numba")
    tiled = (shape, k, stride) in TILED
    assert ("max_pool_grad_tiles" in f.source) == tiled
    assert "max_pool2d_grad" not in f.stats["numpy_fallbacks"]
    for a, b in zip(f(x=X, c=C), want):
        np.testing.assert_array_equal(a, b)
        assert np.array_equal(np.signbit(a), np.signbit(b))


@pytest.mark.parametrize("shape, k, stride", TILED)
def test_max_pool_grad_matches_torch(shape, k, stride):
    rng = np.random.default_rng(8)
    X = rng.standard_normal(shape).astype(np.float32)
    x = gc.input("x", shape)
    y = max_pool2d(gc.relu(x), k, stride=stride)
    C = rng.standard_normal(y.shape).astype(np.float32)
    (dx,) = gc.grad(gc.sum(y * gc.constant(C)), [x])
    got = gc.compile(dx, backend="numba")(x=X)
    tx = torch.tensor(X, requires_grad=True)
    (TF.max_pool2d(torch.relu(tx), k, stride) * torch.tensor(C)).sum().backward()
    np.testing.assert_array_equal(got, tx.grad.numpy())


# (x shape, w shape, geometry): channel counts 1, 3, 16, batch 1, strides, padding,
# dilation, groups, non-square kernels and planes; with and without padding (the kernels
# without bounds checks)
CONVS = [((1, 1, 9, 7), (3, 1, 3, 3), {}),
         ((2, 3, 11, 10), (16, 3, 5, 5), {"stride": 2, "padding": 2}),
         ((1, 16, 6, 7), (3, 16, 3, 2), {"padding": (1, 0), "dilation": (2, 1)}),
         ((3, 6, 12, 12), (16, 6, 5, 5), {}),
         ((2, 4, 9, 8), (6, 2, 3, 3), {"stride": (1, 2), "groups": 2}),
         ((2, 4, 12, 11), (6, 2, 3, 3), {"padding": 1, "groups": 2}),
         ((2, 3, 11, 9), (4, 3, 3, 2), {"stride": (2, 3), "dilation": (2, 1)})]
# the weight gradient as one GEMM per image (P >= K pixels per window value) or over the batch
PER_IMAGE = {(1, 1, 9, 7), (2, 4, 12, 11)}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("xs, ws, geometry", CONVS, ids=[str(c[0]) for c in CONVS])
def test_conv_kernels_match_numpy_and_torch(xs, ws, geometry, dtype):
    """conv2d, its input gradient and its weight gradient (Numba kernels, no fallback)
    against the NumPy reference and torch.nn.functional.conv2d's autograd."""
    rng = np.random.default_rng(9)
    x, w = gc.input("x", xs, dtype), gc.input("w", ws, dtype)
    y = conv2d(x, w, **geometry)
    c = gc.input("c", y.shape, dtype)
    outputs = [y, *gc.grad(gc.sum(y * c), [x, w])]
    feeds = {n: rng.standard_normal(t.shape).astype(dtype) for n, t in
             (("x", x), ("w", w), ("c", c))}
    f = gc.compile(outputs, backend="numba")
    assert not {"conv2d", "conv2d_input_grad", "conv2d_weight_grad"} & \
        set(f.stats["numpy_fallbacks"])
    per_image = "np.add.reduce(np.matmul(" in f.source
    assert per_image == (xs in PER_IMAGE), f.source
    got = f(feeds)
    want = gc.compile(outputs, backend="numpy")(feeds)
    tx, tw = (torch.tensor(feeds[n], requires_grad=True) for n in "xw")
    ty = TF.conv2d(tx, tw, None, **geometry)
    (ty * torch.tensor(feeds["c"])).sum().backward()
    tol = {"float32": 2e-5, "float64": 1e-12}[dtype]
    for a, b, t in zip(got, want, (ty.detach(), tx.grad, tw.grad)):
        scale = np.abs(b).max()
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale)
        np.testing.assert_allclose(a, t.numpy(), rtol=tol, atol=tol * scale * 10)


def test_node_profile_times_every_conv_and_pool_node_of_w5():
    """benchmarks/node_profile.py (the per-node figures in docs/perf.md) runs the
    instrumented step and names each conv and pool node it timed."""
    import bench_harness  # noqa: F401 -- benchmarks/ on sys.path
    import node_profile
    figures = node_profile.profile("W5", steps=2)
    ops = [label.split(" (")[1].rstrip(")") for label in figures]
    for op in ("conv2d", "conv2d_weight_grad", "conv2d_input_grad", "max_pool2d",
               "max_pool2d_grad"):
        assert op in ops, figures
    assert all(us >= 0 for us in figures.values())
