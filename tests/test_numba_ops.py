"""The Numba backend against the NumPy reference interpreter, generated from the op tables.

Every elementwise op in the registry (its forward and the derivative nodes ``gc.grad``
builds for it), in float32 and float64 and with broadcast operands, and every structured
op case of ``tests/test_ops.py`` (forward and gradients) is compiled with
``backend="numba"`` and compared with ``backend="numpy"``: float64 to 1e-12 relative,
float32 to 1e-5 (an absolute floor scaled to the output's magnitude covers values that
cancel to near zero).  No test is written per op.

Kernels are shared through one cache directory for the session, so each distinct kernel
is compiled once; shapes are small because compile time, not data, is the cost.
"""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest
import sympy as sp
import test_ops as table  # the op table and structured cases: one table for all backends
import test_random_graphs as random_graphs  # and the random-graph strategy

import graphc as gc
from graphc.elementwise_ops import REGISTRY

FLOATS = ("float32", "float64")
RTOL = {"float32": 1e-5, "float64": 1e-12}
ATOL = {"float32": 1e-6, "float64": 1e-13}


@pytest.fixture(autouse=True)
def kernel_cache_dir(tmp_path_factory, monkeypatch):
    """One kernel cache directory for the whole session, never the user's."""
    monkeypatch.setenv("GRAPHC_CACHE_DIR",
                       str(tmp_path_factory.getbasetemp() / "graphc-kernel-cache"))


@pytest.fixture
def kernels_only(monkeypatch):
    """Every elementwise op as a generated kernel, however small (by default a single
    ufunc-like op on a small array runs as the NumPy ufunc)."""
    from graphc import numba_rules
    monkeypatch.setattr(numba_rules, "KERNEL_MIN_SIZE", 0)
    monkeypatch.setattr(numba_rules, "NUMPY_FASTER", set())


def assert_close(got, want, dtype, what=""):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, \
        f"{what}: {got.shape} {got.dtype} != {want.shape} {want.dtype}"
    if got.dtype.kind not in "f":
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    finite = np.isfinite(want)
    scale = float(np.max(np.abs(want[finite]))) if finite.any() else 1.0
    np.testing.assert_allclose(got, want, rtol=RTOL[dtype], atol=ATOL[dtype] * max(scale, 1.0),
                               equal_nan=True, err_msg=what)


def compare(outputs, feeds, dtype="float64", what=""):
    """Compile ``outputs`` with both backends, run on ``feeds``, compare; return f."""
    f = gc.compile(outputs, backend="numba")
    want = gc.compile(outputs, backend="numpy")(feeds)
    got = f(feeds)
    if not isinstance(outputs, (list, tuple)):
        got, want = (got,), (want,)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        assert_close(g, w, dtype, f"{what} output {k}")
    return f


def with_grads(y, wrt):
    """[y, d sum(y * c) / d wrt...]: the forward value and the backward graph of ``y``."""
    wrt = [w for w in wrt if w.dtype in FLOATS]
    if not wrt or y.dtype not in FLOATS:
        return [y], {}
    c = gc.input("cotangent", y.shape, y.dtype)
    grads = gc.grad(gc.sum(y * c), wrt)
    rng = np.random.default_rng(7)
    return [y, *grads], {"cotangent": rng.uniform(0.5, 1.5, y.shape).astype(y.dtype)}


def domains(name):
    spec = table.OPS.get(name)
    return spec.domains if spec else ("real",) * REGISTRY[name].arity


def elementwise_case(name, shapes, dtype, seed=0):
    """Inputs for ``REGISTRY[name]`` and the op applied to them."""
    op = REGISTRY[name]
    rng = table.rng_for("numba", name, dtype, seed)
    tensors, feeds = [], {}
    for k, (domain, shape) in enumerate(zip(domains(name), shapes)):
        dt = "bool" if domain == "bool" else dtype
        tensors.append(gc.input(f"a{k}", shape, dt))
        feeds[f"a{k}"] = table.sample(domain, shape, dt, rng)
    variant = table.OPS[name].variants[0] if name in table.OPS and table.OPS[name].variants \
        else {}
    return op(*tensors, **variant), tensors, feeds


ELEMENTWISE = sorted(REGISTRY)


@pytest.mark.parametrize("mode", ["default", "kernels"])
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_forward_and_gradient(name, dtype, mode, request):
    if mode == "kernels":
        request.getfixturevalue("kernels_only")
    y, tensors, feeds = elementwise_case(name, [(37,)] * REGISTRY[name].arity, dtype)
    outputs, extra = with_grads(y, tensors)
    compare(outputs, {**feeds, **extra}, dtype, name)


BROADCASTS = {
    1: [[(1, 5)], [(3, 1, 1)]],
    2: [[(4, 5), (5,)], [(4, 5), (4, 1)], [(4, 1), (5,)], [(4, 5), ()], [(), (4, 5)],
        [(3, 1, 5), (1, 4, 1)]],
    3: [[(4, 5), (5,), (4, 1)], [(4, 1), (), (1, 5)], [(2, 1, 3), (1, 4, 1), (3,)]],
}


@pytest.mark.usefixtures("kernels_only")
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_broadcasting(name):
    """Operands of every broadcast pattern the kernels special-case (full, scalar, row,
    column) and one they materialize (three broadcast axes), with gradients."""
    arity = REGISTRY[name].arity
    for k, shapes in enumerate(BROADCASTS[arity]):
        y, tensors, feeds = elementwise_case(name, shapes, "float32", seed=k)
        if arity == 1:  # broadcast the operand explicitly
            y = REGISTRY[name](gc.broadcast_to(tensors[0], (3, 4, 5)))
        outputs, extra = with_grads(y, tensors)
        compare(outputs, {**feeds, **extra}, "float32", f"{name} {shapes}")


INT_OPS = [n for n in ELEMENTWISE if REGISTRY[n].int_ok]


@pytest.mark.usefixtures("kernels_only")
@pytest.mark.parametrize("dtype", ["int32", "int64"])
@pytest.mark.parametrize("name", INT_OPS)
def test_integer_elementwise(name, dtype):
    y, tensors, feeds = elementwise_case(name, [(4, 5)] * REGISTRY[name].arity, dtype)
    compare(y, feeds, dtype, name)


@pytest.mark.usefixtures("kernels_only")
def test_mixed_dtype_operands_are_converted_like_the_reference():
    i = gc.input("i", (6,), "int64")
    x = gc.input("x", (6,), "float32")
    f = gc.input("f", (6,), "float64")
    feeds = {"i": np.arange(-3, 3), "x": np.linspace(-1, 1, 6, dtype=np.float32),
             "f": np.linspace(0.5, 2, 6)}
    compare([gc.sigmoid(i * x), gc.softplus(x + f), gc.where(i > 0, x, f),
             gc.elu(i), gc.maximum(i, x)], feeds, "float32")


# ---------------------------------------------------------------------------------------
# Structured ops: the cases of tests/test_ops.py, forward and backward


def structured_inputs(case, dtype):
    rng = table.rng_for("numba", case.id, dtype)
    tensors, feeds = [], {}
    for k, arg in enumerate(case.args):
        dt = arg.dtype or dtype
        tensors.append(gc.input(f"in{k}", arg.shape, dt))
        feeds[f"in{k}"] = table.sample(arg.domain, arg.shape, dt, rng)
    return tensors, feeds


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in table.ALL_CASES])
def test_structured_forward_and_gradient(case, dtype):
    tensors, feeds = structured_inputs(case, dtype)
    outputs, extra = with_grads(case.build(*tensors), tensors)
    compare(outputs, {**feeds, **extra}, dtype, case.id)


def _extra_cases():
    """Paths of this backend that the shared table does not reach."""
    return {
        "matmul-transposed": (lambda a, b: a.T @ b.T, [(5, 3), (4, 5)]),
        "matmul-batched-broadcast": (lambda a, b: a @ b, [(2, 1, 3, 4), (3, 4, 2)]),
        "softmax-axis0": (lambda x: gc.softmax(x, axis=0), [(4, 5)]),
        "log_softmax-3d-last": (lambda x: gc.log_softmax(x, axis=-1), [(2, 3, 4)]),
        "logsumexp-trailing-two": (lambda x: gc.logsumexp(x, axis=(1, 2)), [(2, 3, 4)]),
        "logsumexp-middle": (lambda x: gc.logsumexp(x, axis=1, keepdims=True), [(2, 3, 4)]),
        "max-keepdims": (lambda x: gc.max(x, axis=0, keepdims=True) * x, [(4, 5)]),
        "index-scalar": (lambda x: x[1, 2] * x, [(3, 4)]),
        "index-advanced": (lambda x: x[[0, 2, 2], 1:3], [(3, 4)]),
        "index-step-negative": (lambda x: x[::-2, ::2] * 2.0, [(5, 4)]),
        "reshape-of-transpose": (lambda x: gc.reshape(x.T, (12,)), [(3, 4)]),
        "concat-stack": (lambda a, b: gc.stack([a, gc.sigmoid(b)], axis=1), [(3, 4), (3, 4)]),
        "broadcast-chain": (lambda x: gc.broadcast_to(gc.reshape(x, (1, 4)), (3, 4)) * x,
                            [(4,)]),
        "zero-size": (lambda x: gc.sigmoid(x) + 1.0, [(0, 3)]),
        # sums big enough for the sum kernels (leading and trailing axes), and one not
        "sum-leading-axes": (lambda x: gc.sum(x, axis=(0, 1)) * 2.0, [(6, 20, 50)]),
        "sum-trailing-axes": (lambda x: gc.sum(x, axis=2, keepdims=True) * x, [(6, 20, 50)]),
        "sum-all": (lambda x: gc.sum(x * x), [(80, 60)]),
        "sum-middle-axis": (lambda x: gc.sum(x, axis=1), [(6, 20, 50)]),
        "big-elementwise": (lambda x, y: gc.maximum(x * y - 1.0, y) / (x + 3.0),
                            [(70, 90), (90,)]),
        "scalar-graph": (lambda x: gc.tanh(x) * gc.exp(x), [()]),
        # a batch times one matrix: one GEMM over the batch's rows (a strided batch copied)
        "batch-matmul-matrix": (lambda x, w: gc.tanh(x @ w), [(4, 3, 5), (5, 6)]),
        "batch-first-matmul-matrix": (lambda x, w: gc.tanh(gc.transpose(x, (1, 0, 2)) @ w),
                                      [(3, 4, 5), (5, 6)]),
    }


EXTRA = _extra_cases()


@pytest.mark.usefixtures("kernels_only")
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("name", sorted(EXTRA))
def test_backend_paths(name, dtype):
    build, shapes = EXTRA[name]
    rng = table.rng_for("numba-extra", name, dtype)
    tensors = [gc.input(f"in{k}", s, dtype) for k, s in enumerate(shapes)]
    feeds = {f"in{k}": rng.uniform(-2, 2, s).astype(dtype) for k, s in enumerate(shapes)}
    outputs, extra = with_grads(build(*tensors), tensors)
    compare(outputs, {**feeds, **extra}, dtype, name)


@pytest.mark.usefixtures("kernels_only")
@pytest.mark.parametrize("dtype", FLOATS)
def test_a_sum_within_rows_is_numpys_to_the_bit(dtype):
    """The trailing-axes sum kernel adds each row in NumPy's pairwise order: a running sum
    vectorized by reassociation rounded by the machine's vector width, so on an AVX-512
    machine 32 of the 1000 channel sums of the ONNX zoo's squeezenet (logits ~1e10, one
    ulp = 1024) were one ulp off and its softmax put 0 where the reference has 0.001."""
    rng = np.random.default_rng(7)
    for width in (1, 7, 8, 9, 127, 128, 129, 169, 1000, 4099):
        x = gc.input("x", (3, width), dtype)
        f = gc.compile(gc.sum(x, axis=1), backend="numba")
        assert f.stats["lowered"].get("kernel") == 1
        v = (rng.standard_normal((3, width)) * 10.0 ** rng.uniform(-4, 4, (3, width)))
        v = v.astype(dtype)
        v[1, 0], v[2, -1] = -0.0, np.inf
        v[0] = -0.0  # NumPy adds to the identity: +0
        got, want = f(x=v), np.add.reduce(v, axis=1)
        assert got.tobytes() == want.tobytes(), (width, got, want)
    x = gc.input("x", (1, 1000, 13, 13), dtype)  # the squeezenet case: 169 per channel
    v = rng.uniform(0, 1e10, (1, 1000, 13, 13)).astype(dtype)
    got = gc.compile(gc.sum(x, axis=(2, 3)), backend="numba")(x=v)
    np.testing.assert_array_equal(got, np.add.reduce(v, axis=(2, 3)))


@pytest.mark.parametrize("batch", [3, 8192])  # 8192 x 32: kernels split over threads
def test_a_kernel_reads_column_blocks_where_they_lie(batch):
    """An LSTM's gates cut from z (z[:, a:b], rows 4H apart) are V operands: the kernel
    reads z in place, no contiguous copy of each gate, and computes what it computes from
    the gates given as arrays of their own, to the bit."""
    H = 32
    def cell(gates, c):
        i, f, g, o = (gc.sigmoid(gates[0]), gc.sigmoid(gates[1]), gc.tanh(gates[2]),
                      gc.sigmoid(gates[3]))
        c2 = f * c + i * g
        return [o * gc.tanh(c2), c2]
    z, c = gc.input("z", (batch, 4 * H)), gc.input("c", (batch, H))
    parts = [gc.input(f"z{k}", (batch, H)) for k in range(4)]
    f = gc.compile(cell([z[:, k * H:(k + 1) * H] for k in range(4)], c), backend="numba")
    g = gc.compile(cell(parts, c), backend="numba")
    assert re.search(r"k_fused_\w+_f32_[FSRC]*V[FSRCV]*_", f.source)  # the kernel's kinds
    assert not re.search(r"(_contig\(|_c\[\.\.\.\] = )v\d+_index", f.source)  # no copies
    rng = np.random.default_rng(3)
    zv = rng.standard_normal((batch, 4 * H)).astype(np.float32)
    cv = rng.standard_normal((batch, H)).astype(np.float32)
    got = f(z=zv, c=cv)
    want = g(c=cv, **{f"z{k}": np.ascontiguousarray(zv[:, k * H:(k + 1) * H])
                      for k in range(4)})
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    ref = gc.compile(cell([z[:, k * H:(k + 1) * H] for k in range(4)], c),
                     backend="numpy")(z=zv, c=cv)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6)


def test_a_slice_along_leading_axes_is_read_where_it_lies(monkeypatch):
    """x[t] of a contiguous x, a fused kernel's operand, is read at its offset in x (the
    unrolled RNN's projection slices after simplify's matmul-batch), not through a
    contiguous copy of the view and a lookup of its address: same bits either way."""
    from graphc import numba_fused
    T, B, N, H = 5, 3, 4, 6
    xs, W = gc.input("xs", (T, B, N), "float64"), gc.input("W", (N, H), "float64")
    h = gc.constant(np.zeros((B, H)))
    for t in range(T):
        h = gc.tanh(xs[t] @ W + 0.5 * h)  # (xs @ W)[t]
    outputs = [gc.sum(h * h), *gc.grad(gc.sum(h * h), [xs, W])]
    rng = np.random.default_rng(3)
    feeds = {"xs": rng.standard_normal((T, B, N)), "W": rng.standard_normal((N, H))}
    f = gc.compile(outputs, backend="numba")
    assert "_contig(" not in f.source
    assert re.search(r"pv\w+ \+ %d\b" % (3 * B * H * 8), f.source)  # (xs @ W)[3]
    monkeypatch.setattr(numba_fused, "row_block", lambda t: None)
    copied = gc.compile(outputs, backend="numba")
    assert "_contig(" in copied.source
    ref = gc.compile(outputs, backend="numpy")(feeds)
    for a, b, r in zip(f(feeds), copied(feeds), ref):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, r, rtol=1e-12, atol=1e-12)


def test_a_channel_bias_is_made_at_its_trailing_block_not_the_whole_output():
    """x + b.reshape(1, C, 1, 1) over (N, C, H, W): b is materialized at (1, C, H, W) and
    read as a row of the (N, C·H·W) loop, not at the output's N·C·H·W values."""
    from graphc.numba_fused import _trailing_blocks
    assert _trailing_blocks((8, 3, 5, 5), [(8, 3, 5, 5), (1, 3, 1, 1)]) == \
        [(8, 3, 5, 5), (1, 3, 5, 5)]
    assert _trailing_blocks((8, 3, 5), [(8, 3, 5), (3, 1)]) == [(8, 3, 5), (1, 3, 5)]
    assert _trailing_blocks((8, 3, 5), [(8, 3, 5), (8, 1, 5)]) == [(8, 3, 5), (8, 1, 5)]
    assert _trailing_blocks((8, 3), [(8, 3), (3,)]) == [(8, 3), (3,)]  # two patterns already
    x = gc.input("x", (8, 3, 5, 5), "float64")
    b = gc.input("b", (3,), "float64")
    y = gc.relu(x + gc.reshape(b, (1, 3, 1, 1))) * 2.0
    f = gc.compile(y, backend="numba")
    assert "(1, 3, 5, 5)))" in f.source and "(8, 3, 5, 5)))" not in f.source
    rng = np.random.default_rng(4)
    feeds = {"x": rng.standard_normal((8, 3, 5, 5)), "b": rng.standard_normal(3)}
    np.testing.assert_array_equal(f(feeds), gc.compile(y, backend="numpy")(feeds))


def test_a_transpose_many_matmuls_read_is_copied_once():
    """Whᵀ read by every step's backward matmul of an unrolled RNN is one contiguous copy,
    not a view each matmul reads through BLAS's transpose flag; a transpose read by fewer
    matmuls stays a view.  Values equal the reference's."""
    T, B, H = 6, 3, 5
    xs, W = gc.input("xs", (T, B, H), "float64"), gc.input("W", (H, H), "float64")
    h = gc.constant(np.zeros((B, H)))
    for t in range(T):
        h = gc.tanh(xs[t] + h @ W)
    loss = gc.sum(h * h)
    outputs = [loss, *gc.grad(loss, [xs, W])]
    f = gc.compile(outputs, backend="numba")
    copies = [line for line in f.source.splitlines() if "_transposed(" in line]
    assert len(copies) == 1 and ".transpose((1, 0))" in copies[0]
    small = gc.compile(gc.grad(gc.sum(gc.tanh(xs[0] @ W)), [xs]), backend="numba")
    assert "_transposed(" not in small.source
    rng = np.random.default_rng(5)
    feeds = {"xs": rng.standard_normal((T, B, H)), "W": rng.standard_normal((H, H)) * 0.5}
    ref = gc.compile(outputs, backend="numpy")(feeds)
    for a, b in zip(f(feeds), ref):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_gather_and_its_gradient():
    x = gc.input("x", (5, 3), "float64")
    idx = gc.input("idx", (4,), "int64")
    y = gc.sigmoid(gc.take(x, idx))
    feeds = {"x": np.linspace(-1, 1, 15).reshape(5, 3), "idx": np.array([0, 4, -1, 0])}
    compare([y, gc.grad(gc.sum(y), x)], feeds)


def test_gather_out_of_range_raises_graph_error_naming_take():
    x = gc.input("x", (3, 2))
    idx = gc.input("idx", (2,), "int64")
    f = gc.compile(x[idx], backend="numba")
    with pytest.raises(gc.GraphError, match="take"):
        f(x=np.zeros((3, 2), np.float32), idx=np.array([0, 3]))


def test_mlp_loss_and_gradients():
    """A small W1: matmul, bias, relu, softmax cross-entropy, gradients of every param."""
    x = gc.input("x", (16, 12))
    y = gc.input("y", (16,), "int64")
    sizes, h, params = (12, 10, 8, 3), x, []
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        W, bias = gc.param(f"W{k}", (a, b)), gc.param(f"b{k}", (b,), init="normal")
        params += [W, bias]
        h = h @ W + bias
        h = gc.relu(h) if k < len(sizes) - 2 else h
    loss = gc.softmax_cross_entropy(h, y)
    feeds = gc.init_params(loss, seed=3)
    rng = np.random.default_rng(3)
    feeds.update(x=rng.standard_normal((16, 12)).astype(np.float32),
                 y=rng.integers(0, 3, 16))
    f = compare([loss, *gc.grad(loss, params)], feeds, "float32", "mlp")
    assert f.stats["backend"] == "numba" and f.stats["kernels"] >= 1
    assert {"compile_seconds", "kernel_cache_hits", "kernel_cache_misses"} <= set(f.stats)


# ---------------------------------------------------------------------------------------
# Calling convention: fresh outputs, reused buffers, feeds untouched, threads


def test_outputs_are_fresh_and_survive_the_next_call():
    x = gc.input("x", (3, 4), "float64")
    c = gc.constant(np.ones((3, 4)))
    y = gc.sigmoid(x) * 2.0
    f = gc.compile([y, x, c, y, gc.reshape(y, (12,))], backend="numba")
    a = np.arange(12.0).reshape(3, 4)
    first = f(x=a)
    kept = [r.copy() for r in first]
    second = f(x=-a)
    for r, k in zip(first, kept):
        np.testing.assert_array_equal(r, k)  # the second call wrote into none of them
    assert not np.shares_memory(first[1], a) and first[1].flags.writeable
    assert not np.shares_memory(first[0], first[3])
    assert not np.shares_memory(first[0], first[4])
    first[2][...] = 5.0  # the constant is not shared with the caller
    np.testing.assert_array_equal(f(x=a)[2], np.ones((3, 4)))
    assert not np.allclose(second[0], first[0])


def test_feeds_are_not_modified_and_may_be_non_contiguous():
    x = gc.input("x", (4, 3), "float64")
    y = gc.softplus(x) + gc.log_softmax(x, axis=1)
    feed = np.arange(12.0).reshape(3, 4).T  # a transposed view
    before = feed.copy()
    compare(y, {"x": feed})
    np.testing.assert_array_equal(feed, before)


def test_concurrent_calls_from_threads_agree():
    x = gc.input("x", (64, 32), "float64")
    W = gc.input("W", (32, 16), "float64")
    y = gc.sum(gc.gelu(x @ W), axis=1)
    f = gc.compile(y, backend="numba")
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((64, 32)), "W": rng.standard_normal((32, 16))}
             for _ in range(4)]
    want = [f(fd) for fd in feeds]
    errors = []

    def worker(k):
        for _ in range(20):
            if not np.array_equal(f(feeds[k]), want[k]):
                errors.append(k)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_source_is_readable_and_names_nodes():
    x = gc.input("x", (3,), "float32")
    f = gc.compile(gc.sum(gc.sigmoid(x) * 2.0), backend="numba", optimize=False)
    src = f.source
    assert "def run(" in src and "# sigmoid = sigmoid(x)" in src
    assert "v1_sigmoid" in src and "def kernel(" in src  # the kernel's source follows
    assert f.stats["kernels"] == 1


@pytest.mark.parametrize("threads", ["1", "2", "3"])
def test_big_kernels_split_over_numba_num_threads(threads, monkeypatch):
    """Kernels of a million elements that call exp/tanh/erf run in NUMBA_NUM_THREADS chunks
    (uneven ones here); everything else, and everything with one thread, runs serially."""
    from graphc import numba_runtime
    monkeypatch.setenv("NUMBA_NUM_THREADS", threads)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")  # the BLAS leaves the cores free
    monkeypatch.setattr(numba_runtime, "_cpus", lambda: 4)
    x = gc.input("x", (1031, 1021))
    y = gc.gelu(x, approximate="tanh") + gc.softmax(x, axis=1) + gc.relu(x)
    rng = np.random.default_rng(0)
    f = compare(y, {"x": rng.standard_normal((1031, 1021)).astype(np.float32)}, "float32")
    assert f.stats["kernel_threads"] == int(threads)
    calls = [line for line in f.source.splitlines() if "_parallel(" in line]
    assert len(calls) == (0 if threads == "1" else 2)  # gelu_tanh and softmax, not relu


def test_kernels_leave_the_cores_a_multithreaded_blas_uses(monkeypatch):
    from graphc import numba_runtime
    monkeypatch.setattr(numba_runtime, "_cpus", lambda: 2)
    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    assert numba_runtime.kernel_threads() == 1  # BLAS on both cores: kernels stay serial
    assert numba_runtime.kernel_threads(uses_blas=False) == 2  # a graph without matmul
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert numba_runtime.kernel_threads() == 2
    monkeypatch.setenv("NUMBA_NUM_THREADS", "1")
    assert numba_runtime.kernel_threads() == 1
    assert numba_runtime.kernel_threads(uses_blas=False) == 1


# ---------------------------------------------------------------------------------------
# Random graphs (the strategy of tests/test_random_graphs.py): fan-out, views, broadcasts,
# slices and transposes as kernel operands, forward and backward


@pytest.mark.usefixtures("kernels_only")
@random_graphs.SETTINGS
@random_graphs.given(random_graphs.programs())
def test_random_graphs_match_the_reference(program):
    in_shapes, steps, seed = program
    inputs, nodes, loss, feeds = random_graphs.build(in_shapes, steps, seed)
    outputs = [*nodes[len(inputs):], loss, *gc.grad(loss, inputs)]
    compare(outputs, feeds, "float64", f"{steps}")


def _same_tensor_twice_cases():
    """Fused groups with a step that reads one value twice (``a * a``: built unevaluated, so
    that ``s - s`` stays NaN for an infinite ``s``) beside a step of ``2 * a``: SymPy's cse
    took the two for one another (``sp.cse([Mul(x, x, evaluate=False), 2*x])`` gives
    ``[x*x, x**2]``), so the kernel computed ``a**2`` where the graph said ``2a``."""
    a = gc.input("a", (3,), "float64")
    b = gc.input("b", (3,), "float64")
    twice = gc.elementwise("t_twice_zz", lambda x: 2 * x)
    sq_plus = gc.elementwise("t_sq_plus_xy", lambda x, y: x**2 + x * y)
    cancel = gc.elementwise("t_cancel_xyz", lambda x, y, z: x * x + y - z * z)
    t = gc.tanh(a)
    return {
        "exp(-a a) a^2": gc.grad(gc.sum(gc.exp(-(a * a)) * a**2), a),
        "square(a) / (a a)": gc.grad(gc.sum(gc.square(a) / (a * a)), a),
        "sqrt(a a + 1) + a^2": gc.grad(gc.sum(gc.sqrt(a * a + 1)) + gc.sum(a**2), a),
        "(a-b)(a-b) + l2": gc.grad(gc.sum((a - b) * (a - b)) + gc.l2(a - b), a),
        "tanh(2a) + sin(a a)": gc.tanh(twice(a)) + gc.sin(a * a),
        "op(a, a)": gc.grad(gc.sum(sq_plus(a, a) + gc.tanh(a)), a),
        "hvp t t t": gc.hvp(gc.sum(t * t * t), a, b),
        # x*x + y - z*z given a as x and z: cse simplified it to y (1e8 + b - 1e8 rounds)
        "op(a, b, a)": cancel(a * 1e4, b, a * 1e4) * 2.0,
    }


@pytest.mark.usefixtures("kernels_only")
@pytest.mark.parametrize("case", list(_same_tensor_twice_cases()))
def test_a_step_reading_one_value_twice_is_not_taken_for_another(case):
    y = _same_tensor_twice_cases()[case]
    values = {"a": np.array([0.5, -1.0, 2.0]), "b": np.array([0.3, 1.2, -0.7])}
    feeds = {t.op.label: values[t.op.label] for t in gc.Graph(y).inputs}
    compare(y, feeds, "float64", case)


@pytest.mark.usefixtures("kernels_only")
def test_a_quotient_stays_a_division_where_its_reciprocal_is_shared():
    # 1/b, shared by a/b and the derivative's b**-2, made a/b the product a * (1/b): at a
    # subnormal b, 0 * inf = NaN where 0/b is 0; the NumPy reference's lambdify did the
    # same inside one op (a/b + exp(a)/b as (a + exp(a)) ... * (1/b) gave NaN, not inf)
    a, b = gc.input("a", (4,), "float64"), gc.input("b", (4,), "float64")
    quotients = gc.elementwise("t_two_quotients", lambda x, y: x / y + sp.exp(x) / y)
    outputs = [gc.square(a) / b, quotients(a, b), gc.grad(gc.sum(gc.square(a) / b), b)]
    feeds = {"a": np.array([0.0, 1.0, -3.0, 0.0]), "b": np.array([1e-310, 3.0, 7.0, -5e-324])}
    f = compare(outputs, feeds, "float64", "quotients")
    got = f(feeds)
    np.testing.assert_array_equal(got[0], [0.0, 1 / 3, 9 / 7, -0.0])
    np.testing.assert_allclose(got[1], [np.inf, 1 / 3 + np.e / 3, -3 / 7 + np.exp(-3) / 7,
                                        -np.inf], rtol=1e-15)


@pytest.mark.usefixtures("kernels_only")
def test_a_long_fused_chain_compiles_with_a_short_file_name():
    # its name listed every op of the group: "File name too long" from the kernel cache
    x = gc.input("x", (8,), "float64")
    y = x
    for fn in (gc.hardswish, gc.softsign, gc.relu6, gc.hardsigmoid, gc.square, gc.reciprocal,
               gc.abs, gc.sin, gc.atan, gc.selu, gc.celu, gc.tanhshrink, gc.softplus):
        y = fn(y) + 0.5
    f = compare(gc.grad(gc.sum(y), x), {"x": np.linspace(-1, 1, 8)}, "float64", "chain")
    names = re.findall(r"^# ---- (k_\w+)$", f.source, re.M)
    assert names and max(map(len, names)) <= 2 + 96 + 11, names


def test_an_unrolled_loop_prints_each_fused_kernel_once(monkeypatch):
    # 12 steps of one fused body: the lowering prints the kernel's source from SymPy once
    # per (group, outputs, operand kinds), not once per step (quadratic on the unrolled W4)
    from graphc import kernel_cache
    from graphc import numba_kernels as nk
    printed, loaded = [], []
    fused_kernel = nk.fused_kernel
    monkeypatch.setattr(nk, "fused_kernel",
                        lambda *a, **k: printed.append(a[0]) or fused_kernel(*a, **k))
    monkeypatch.setattr(kernel_cache, "load", lambda spec, compile_object: (
        loaded.append(spec.key) or kernel_cache.Kernel(spec, None, ""), "memory"))
    monkeypatch.setattr(kernel_cache, "compile_missing", lambda specs, build: set())
    h = gc.input("h", (4, 8))
    for k in range(12):
        h = gc.tanh(h @ gc.param(f"w{k}", (8, 8)) + gc.param(f"b{k}", (8,)))
    f = gc.compile(gc.sum(h))
    assert f.stats["lowered"]["kernel"] >= 12, f.stats["lowered"]
    assert len(printed) == len(set(loaded)) < 12



def _lstm_steps(orders):
    """LSTM cells; a cell with order True creates its gates and terms in another order, so
    that its fused group comes out of fusion with other member and operand orders."""
    H = 3
    x = gc.input("x", (2, 4 * H), "float64")
    W = gc.input("W", (H, 4 * H), "float64")
    h, c = gc.input("h0", (2, H), "float64"), gc.input("c0", (2, H), "float64")
    for other in orders:
        z = x + h @ W
        gates = [(k, z[:, k * H:(k + 1) * H]) for k in range(4)]
        made = {k: (gc.tanh if k == 2 else gc.sigmoid)(v)
                for k, v in (gates[2::-1] + gates[3:] if other else gates)}
        i, f, g, o = (made[k] for k in range(4))
        c = i * g + f * c if other else f * c + i * g
        h = o * gc.tanh(c)
    return h


def test_identical_steps_in_another_order_share_one_fused_kernel(monkeypatch):
    from graphc.passes import fusion

    from graphc import kernel_cache
    from graphc.fused_ops import Fused
    from graphc.lowering import instance_key
    from graphc.numba_lowering import Lowering
    h = _lstm_steps((False, False, True, False))
    feeds = {"x": np.linspace(-2, 2, 24).reshape(2, 12), "h0": np.linspace(-1, 1, 6).reshape(2, 3),
             "W": np.linspace(-1, 1, 36).reshape(3, 12), "c0": np.linspace(1, -1, 6).reshape(2, 3)}
    names = []
    monkeypatch.setattr(kernel_cache, "load", lambda spec, compile_object: (
        names.append(spec.name) or kernel_cache.Kernel(spec, None, ""), "memory"))
    monkeypatch.setattr(kernel_cache, "compile_missing", lambda specs, build: set())
    # one kernel per group: not its variant for calls over an operand (numba_lowering.in_place)
    monkeypatch.setattr(Lowering, "in_place", lambda self, t, spec, *args: self.kernel(t, spec))

    def fused(canonical):
        if not canonical:
            monkeypatch.setattr(fusion, "canonical_form", lambda group: (
                group, list(range(group.arity)), list(range(len(group.outputs)))))
        graph = fusion.fusion(gc.Graph(h))
        monkeypatch.setattr(fusion, "canonical_form", canonical_form)
        groups = list({instance_key(t): t.op.group for t in graph.nodes
                       if isinstance(t.op, Fused)}.values())  # one per step
        names.clear()
        f = gc.compile(graph.outputs, optimize=False)  # lowered as fused, kernels stubbed
        return graph, groups, f, sorted(names)

    canonical_form = fusion.canonical_form
    _, before, _, names_before = fused(canonical=False)
    graph, after, f, names_after = fused(canonical=True)
    # the second and third steps: one group and one kernel (two before)
    assert before[1] != before[2] and after[1] == after[2], [g.text for g in after]
    assert len(set(after)) == len(set(before)) - 1 == 2
    assert len(names_after) == len(names_before) - 1 == 2, (names_before, names_after)
    assert f.stats["lowered"]["kernel"] == 4, f.stats["lowered"]  # one call per step
    # the NumPy interpreter: the canonical groups give the unfused nodes' values exactly
    want = gc.compile(h, backend="numpy", optimize=False)(feeds)
    got = gc.compile(graph.outputs, backend="numpy", optimize=False)(feeds)
    np.testing.assert_array_equal(got[0], want)


@pytest.mark.parametrize("op", [gc.maximum, gc.minimum])
def test_the_gradient_of_an_op_of_one_tensor_twice_keeps_its_nan_branch(op):
    """maximum(a, a)'s derivative holds Eq(a, a), False at NaN: the fused kernel's rewrites
    folded it to True (1/2 + 1/2 = 1 where NumPy and torch give 2)."""
    a = gc.input("a", (5,))
    A = np.array([1.0, np.nan, np.nan, 2.0, 3.0], np.float32)
    (want,), (got,) = (gc.compile(gc.grad(gc.sum(op(a, a)), [a]), backend=b)(a=A)
                       for b in ("numpy", "numba"))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(want, [1, 2, 2, 1, 1])  # torch's
