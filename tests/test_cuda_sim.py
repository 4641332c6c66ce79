"""The CUDA backend checked against the NumPy reference under Numba's CUDA simulator, and
on a CUDA GPU where there is one.

``NUMBA_ENABLE_CUDASIM=1`` must be set before Numba is first imported, and it makes the
whole process simulate CUDA.  So a plain ``pytest`` run on a machine without a GPU leaves
its own process alone: the cases below are skipped there and
``test_simulator_cases_in_a_subprocess`` runs this file again in a fresh interpreter with
the variable set (the CI path).  With the variable set by hand (``NUMBA_ENABLE_CUDASIM=1
pytest tests/test_cuda_sim.py``), or on a machine with a CUDA GPU, they run in-process, one
pytest item each.  Shapes are tiny: every simulated thread is a Python thread.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import sympy as sp

import graphc as gc
from graphc.graph import Graph


def _kernels_run_here() -> str | None:
    """"simulator" or "gpu" where this process runs CUDA kernels: under Numba's simulator
    (NUMBA_ENABLE_CUDASIM=1 before Numba loaded) or on a CUDA GPU; else None."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        loaded = sys.modules.get("numba")
        return "simulator" if loaded is None or loaded.config.ENABLE_CUDASIM else None
    from graphc import cuda_backend
    return "gpu" if cuda_backend.available()[0] else None


KERNELS = _kernels_run_here()
IN_PROCESS = KERNELS is not None
sim = pytest.mark.skipif(not IN_PROCESS, reason="needs NUMBA_ENABLE_CUDASIM=1 at start-up "
                         "or a CUDA GPU; test_simulator_cases_in_a_subprocess runs these cases")
RTOL = {"float32": 1e-5, "float64": 1e-12}
rng = np.random.default_rng(0)


def cuda_compile(outputs, passes=None):
    """The CUDA program of ``outputs`` after the optimizing pipeline, called like
    ``gc.compile(...)`` (through gc.compile once it is wired to backend='cuda')."""
    from graphc.passes import pipeline

    from graphc import compiler, cuda_backend
    if "cuda" in compiler.AVAILABLE:
        return gc.compile(outputs, backend="cuda", passes=passes)
    graph, _ = pipeline.run(Graph(outputs), pipeline.DEFAULT_PIPELINE if passes is None
                            else passes)
    program = cuda_backend.compile_graph(graph)
    single = not isinstance(outputs, (list, tuple))

    def f(**feeds):
        out = program(feeds)
        return out[0] if single else tuple(out)
    f.program = program
    f.stats = program.stats
    f.source = program.source
    return f


def check(outputs, feeds, passes=None):
    """Run ``outputs`` on the CUDA backend and the NumPy reference; compare."""
    f = cuda_compile(outputs, passes)
    got = f(**feeds)
    want = gc.compile(outputs, backend="numpy")(**feeds)
    got, want = (got, want) if isinstance(outputs, (list, tuple)) else ((got,), (want,))
    for g, w in zip(got, want):
        assert isinstance(g, np.ndarray) and g.shape == w.shape and g.dtype == w.dtype
        rtol = RTOL.get(w.dtype.name, 0)
        scale = np.abs(w[np.isfinite(w)]).max(initial=1.0) if rtol else 0
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * max(1.0, scale))
    return f


def cuda_compile_graph(graph):
    from graphc import cuda_backend
    return cuda_backend.compile_graph(graph)


def normal(shape, dtype="float32"):
    return rng.standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------------------------------
# Elementwise


ACTIVATIONS = [gc.exp, gc.tanh, gc.sigmoid, gc.relu, gc.silu, gc.softplus, gc.sin, gc.cos,
               gc.abs, gc.square, gc.neg, lambda v: gc.gelu(v), lambda v: gc.gelu(
                   v, approximate="tanh"), lambda v: gc.elu(v, alpha=0.5),
               lambda v: gc.leaky_relu(v, alpha=0.1), lambda v: gc.log(gc.abs(v) + 0.5),
               lambda v: gc.sqrt(gc.abs(v)), lambda v: gc.reciprocal(v + 3.0)]


@sim
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_unary_ops_match_numpy(dtype):
    x = gc.input("x", (3, 5), dtype)
    check([fn(x) for fn in ACTIVATIONS], {"x": normal((3, 5), dtype) * 3}, passes=())


NEW_UNARY = [gc.relu6, gc.hardsigmoid, gc.hardswish, gc.softsign, gc.logsigmoid, gc.selu,
             gc.mish, gc.sign, gc.floor, gc.ceil, gc.round, gc.trunc, gc.erf, gc.erfc, gc.tan,
             gc.atan, gc.sinh, gc.cosh, gc.asinh, gc.exp2, gc.expm1, gc.cbrt,
             lambda v: gc.clip(v, -0.5, 0.5), lambda v: gc.hardtanh(v), lambda v: gc.celu(v),
             lambda v: gc.softplus(v, beta=2.0, threshold=3.0), lambda v: gc.atan2(v, v + 0.5),
             lambda v: gc.asin(0.9 * gc.tanh(v)), lambda v: gc.acos(0.9 * gc.tanh(v)),
             lambda v: gc.atanh(0.9 * gc.tanh(v)), lambda v: gc.acosh(1.5 + gc.abs(v)),
             lambda v: gc.log2(gc.abs(v) + 0.5), lambda v: gc.log10(gc.abs(v) + 0.5),
             lambda v: gc.log1p(gc.abs(v)), lambda v: gc.rsqrt(gc.abs(v) + 0.5),
             gc.tanhshrink]


@sim
def test_new_elementwise_ops_and_gradients_match_numpy():
    """The ops whose CUDA code calls math.* or libdevice functions (rint, cbrt, exp2), one
    graph, float32: kernels of their values and of their derivatives."""
    x = gc.input("x", (2, 3))
    X = np.array([[-2.5, -0.5, 0.0], [0.5, 1.3, np.nan]], np.float32)
    ys = [fn(x) for fn in NEW_UNARY]
    loss = gc.sum(gc.stack([gc.sum(y) for y in ys]))
    with np.errstate(all="ignore"):
        check(ys + [gc.grad(loss, x)], {"x": X}, passes=())


@sim
def test_binary_broadcasting_comparisons_and_where():
    x, r, c = gc.input("x", (2, 3, 4)), gc.input("r", (4,)), gc.input("c", (3, 1))
    outs = [x + r, x * c - r, x / (gc.abs(c) + 1), gc.maximum(x, r), gc.minimum(c, x),
            x ** 2, gc.where(x > r, x, c), x <= c, gc.equal(x, x), gc.prelu(x, r)]
    check(outs, {"x": normal((2, 3, 4)), "r": normal(4), "c": normal((3, 1))}, passes=())


@sim
def test_operands_are_read_by_the_kinds_of_lowering_flat_kinds():
    """Elementwise and fused kernels read each operand as graphc.lowering.flat_kinds says:
    at i (full), at 0 (one element) or through its strides (broadcast along some axes)."""
    from graphc.lowering import flat_kinds
    x, r, s = gc.input("x", (2, 1, 3)), gc.input("r", (1, 3)), gc.input("s", (1,))
    assert flat_kinds((2, 1, 3), [(2, 1, 3), (1, 3), (1,)]) == "FBS"
    assert flat_kinds((1, 3), [(3,), (1, 1)]) == "FS"  # size-1 axes do not make a stride
    feeds = {"x": normal((2, 1, 3)), "r": normal((1, 3)), "s": normal(1)}
    plain = check([gc.exp(x) * r + s], feeds, passes=())
    assert "x1 = a1[o1]" in plain.source and "x1 = a1[0]" in plain.source
    fused = check([gc.exp(x) * r + s], feeds)
    assert fused.stats["kernels"] == 1
    assert all(load in fused.source for load in ("a0[i]", "a1[a1_at]", "a2[0]"))
    one_row = check([gc.input("v", (3,)) * 2.0 + r], {"v": normal(3), "r": normal((1, 3))},
                    passes=())
    assert "rem = i" not in one_row.source and "x0 = a0[i]" in one_row.source


@sim
def test_integer_and_nan_semantics():
    i, j = gc.input("i", (5,), "int64"), gc.input("j", (5,), "int32")
    x = gc.input("x", (5,))
    X = np.array([np.nan, -np.inf, 0.0, 2.0, np.inf], np.float32)
    check([i + j, i * 3, gc.maximum(i, j), gc.maximum(x, 1.0), gc.relu(x), gc.exp(x)],
          {"i": np.arange(5), "j": np.arange(5, dtype=np.int32) - 2, "x": X}, passes=())


@sim
def test_custom_sympy_op_and_its_derivative():
    mish = gc.elementwise("mish_cuda", lambda v: v * sp.tanh(sp.log(1 + sp.exp(v))))
    x = gc.input("x", (3, 4))
    y = gc.sum(mish(x))
    f = check([mish(x), gc.grad(y, x)], {"x": normal((3, 4))})
    assert "math.tanh(" in f.source and "def k_mish_cuda_" in f.source


def launches(f, feeds) -> dict:
    """``{kernel name: launches}`` of one call ``f(**feeds)``, counted where the simulator
    configures a launch (``kernel[grid, block]``); the row and matmul kernels are all
    named ``kernel``, the generated ones by their own names.  A replayed program records
    that call again, which configures each of its launches once."""
    if f._program.replay is not None:
        f._program.replay.items = None
    if KERNELS == "simulator":
        from numba.cuda.simulator.kernel import FakeCUDAKernel as Kernel
    else:
        from numba.cuda.dispatcher import CUDADispatcher as Kernel
    counts: dict = {}
    configure = Kernel.__getitem__

    def counting(self, config):
        name = (self.fn if KERNELS == "simulator" else self.py_func).__name__
        counts[name] = counts.get(name, 0) + 1
        return configure(self, config)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Kernel, "__getitem__", counting)
        f(**feeds)
    return counts


def fused_kernels(f) -> list[str]:
    return [line for line in f.source.splitlines() if line.startswith("# ---- kernel k_fused_")]


@sim
def test_source_names_nodes_as_numba_and_defines_what_it_calls():
    """One naming (graphc.lowering.var_names) in both backends' source; the CUDA listing
    defines every name its steps read (the calls it lists in its header)."""
    import re

    from graphc.passes import pipeline
    from test_lowering import undefined_names

    from graphc import numba_backend
    from graphc.lowering import var_names
    x, b = gc.input("x", (4, 3)), gc.input("b", (3,))
    y = gc.sum(gc.tanh(x + b) * 2.0)
    graph, _ = pipeline.run(Graph([y, gc.grad(y, b)]), pipeline.DEFAULT_PIPELINE)
    source = cuda_compile_graph(graph).source
    numba_source = numba_backend.compile_graph(graph).orchestrator
    names = var_names(graph)
    ends = {names[id(t)] for t in graph.nodes if t.op.name == "input"
            or id(t) in {id(o) for o in graph.outputs}}
    used = set(re.findall(r"\b(?:v|in)\d+_\w+\b", source))
    assert ends <= used <= set(names.values())  # (Numba adds names of its own: v3_acc)
    assert ends <= set(re.findall(r"\b(?:v|in)\d+_\w+\b", numba_source))
    calls = re.search(r"^# calls: (.*) \(graphc", source, re.M).group(1).split(", ")
    assert undefined_names(source, {"cuda", "math", "np", *calls}) == set()
    assert "/tmp" not in source


@sim
def test_a_fused_group_is_one_kernel_computing_every_output():
    """Four outputs of one group (two full, two sums): one launch of one kernel, each op
    computed once per element.  The sum over the leading axis is stored with that axis
    last by the kernel itself (no transposing copy), the full sum reads the full output
    of its step (no second store).  40 elements > the simulator's 32 threads: the
    grid-stride loop runs twice (a step named like an operand's strides array once broke
    its second round)."""
    x, b = gc.input("x", (5, 8)), gc.input("b", (8,))
    h = gc.tanh(x * b)
    e = gc.exp(h)
    outs = [e + h, e * h, gc.sum(e * h, axis=0), gc.sum(e + h)]
    feeds = {"x": normal((5, 8)), "b": normal(8)}
    f = check(outs, feeds)
    (header,) = fused_kernels(f)
    name = header.split()[-1]
    assert name == "k_fused_mul_tanh_exp_add_" + name.rsplit("_", 1)[-1]
    # steps in the canonical order (fused_ops.canonical: mul before add), outputs by step
    assert "# fused group in float32: out0 = s3 (summed axes last), out1 = s3, out2 = s4\n" \
        f"def {name}(" in f.source
    assert f.source.count("math.tanh(") == 1 and f.source.count("math.exp(") == 1
    assert f.stats["kernel_steps"] == 1 and f.stats["lowered"] == {"fused": 4}
    # + two row sums, no copy (under the simulator the full one, of 40 elements, is
    # summed in two pieces of 20 first: cuda_kernels.row_pieces)
    from graphc import cuda_kernels as ck
    assert launches(f, feeds) == {name: 1, "kernel": 2 + (ck.row_pieces(1, 40) > 1)}


@sim
def test_a_fused_group_with_piecewise_ops_prints_conditionals():
    x, b = gc.input("x", (3, 4)), gc.input("b", (4,))
    y = gc.relu(x) * gc.abs(x - b) + gc.leaky_relu(x, alpha=0.1)
    X = normal((3, 4))
    X[0, :2] = 0.0  # relu'(0) = 0, and abs'(0) = 0 where b is 0
    B = normal(4)
    B[:2] = 0.0
    feeds = {"x": X, "b": B}
    f = check([y, gc.grad(gc.sum(y), x)], feeds)
    assert len(fused_kernels(f)) == 1 and f.stats["kernel_steps"] == 1
    assert "Piecewise" not in f.source and " if " in f.source
    assert "  # relu(x0)" in f.source and re.search(r"  # abs\(s\d+\)", f.source)


# ---------------------------------------------------------------------------------------
# Reductions and the softmax family


@sim
def test_reductions_over_any_axes():
    y = gc.input("y", (2, 3, 4))
    outs = [gc.sum(y), gc.sum(y, axis=1), gc.max(y, axis=(0, 2), keepdims=True),
            gc.min(y, axis=-1), gc.mean(y, axis=0), gc.sum(y > 0, axis=2)]
    check(outs, {"y": normal((2, 3, 4))}, passes=())


@sim
def test_reductions_propagate_nan_and_handle_long_rows():
    x = gc.input("x", (2, 37))
    X = normal((2, 37))
    X[1, 20] = np.nan
    check([gc.max(x, axis=1), gc.min(x, axis=1), gc.sum(x, axis=1)], {"x": X}, passes=())


@sim
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # -inf - -inf, as NumPy
def test_softmax_family():
    y = gc.input("y", (2, 3, 4))
    Y = normal((2, 3, 4)) * 4
    Y[0, 0, :] = -np.inf  # an all -inf row: logsumexp is -inf, as the reference
    outs = [gc.softmax(y, axis=1), gc.log_softmax(y), gc.softmax(y[1], axis=-1),
            gc.logsumexp(y, axis=(0, 2)), gc.logsumexp(y, axis=-1)]
    check(outs, {"y": Y}, passes=())


# ---------------------------------------------------------------------------------------
# Matmul and data movement


@sim
def test_matmul_2d_batched_and_broadcast():
    a, w = gc.input("a", (3, 5)), gc.input("w", (5, 6))
    bb, c = gc.input("bb", (2, 5, 6)), gc.input("c", (2, 3, 5))
    i, j = gc.input("i", (2, 3), "int64"), gc.input("j", (3, 2), "int64")
    feeds = {"a": normal((3, 5)), "w": normal((5, 6)), "bb": normal((2, 5, 6)),
             "c": normal((2, 3, 5)), "i": np.arange(6).reshape(2, 3),
             "j": np.arange(6).reshape(3, 2) - 3}
    check([a @ w, gc.matmul(a, bb), gc.matmul(c, bb), gc.matmul(c, w), i @ j], feeds,
          passes=())
    # larger than a block's tile of c in both directions, k not a multiple of its depth
    p, q = gc.input("p", (17, 9), "float64"), gc.input("q", (2, 9, 13), "float64")
    check([p @ q, gc.matmul(gc.reshape(p, (1, 17, 9)), q)],
          {"p": rng.standard_normal((17, 9)), "q": rng.standard_normal((2, 9, 13))}, passes=())


@sim
def test_transposes_read_in_place_by_matmuls(monkeypatch):
    """A transpose (of the last two axes) that only matmuls read is not copied: they read
    its input as stored.  One that anything else reads, or that is an output, is copied.
    The two kernels (1x1 and 2x2 elements a thread, the default and GRAPHC_CUDA_MATMUL=2)
    give the same bits, transposed or not."""
    x, w = gc.input("x", (11, 7)), gc.input("w", (13, 7))
    h, g = gc.input("h", (2, 7, 9)), gc.input("g", (2, 5, 9))
    z, v = gc.input("z", (7, 6)), gc.input("v", (11, 3))
    used_twice = gc.transpose(z)  # (6, 7): read by a matmul and by an elementwise op
    outs = [gc.matmul(gc.transpose(x), v),                                  # xᵀ
            x @ gc.transpose(w),                                      # wᵀ
            gc.matmul(gc.transpose(h, (0, 2, 1)), gc.transpose(x)),   # batched aᵀ, bᵀ
            gc.matmul(g, gc.transpose(h, (0, 2, 1))),                 # batched, bᵀ
            gc.matmul(gc.transpose(z), x.T), used_twice @ z, used_twice * 2.0,
            gc.transpose(x)]                                          # an output
    feeds = {"x": normal((11, 7)), "w": normal((13, 7)), "h": normal((2, 7, 9)),
             "g": normal((2, 5, 9)), "z": normal((7, 6)), "v": normal((11, 3))}
    results = {}
    for per_thread in ("1", "2"):
        monkeypatch.setenv("GRAPHC_CUDA_MATMUL", per_thread)
        f = check(outs, feeds, passes=())
        results[per_thread] = f(**feeds)
        lines = f.source.splitlines()
        # wᵀ and hᵀ are read in place; xᵀ (an output) and zᵀ (read by a product) are copied
        assert sum("[read transposed by its matmuls]" in line for line in lines) == 2
        assert sum(" = strided_copy(" in line for line in lines) == 2
        assert any(f"_{4 * int(per_thread)}x{4 * int(per_thread)}" in line for line in lines
                   if "matmul" in line) or KERNELS == "gpu"
    for a, b in zip(*results.values()):
        np.testing.assert_array_equal(a, b)


@sim
def test_data_movement():
    a, c = gc.input("a", (3, 5)), gc.input("c", (2, 3, 5))
    outs = [gc.transpose(c, (2, 0, 1)), gc.reshape(c, (6, 5)), gc.broadcast_to(a, (2, 3, 5)),
            c[1, :, ::2], c[:, [2, 0]], c[..., None, -1], gc.concat([a, a * 2.0], axis=0),
            gc.stack([a, a], axis=1), gc.cast(a, "int32"), gc.cast(a > 0, "float32"), a.T]
    check(outs, {"a": normal((3, 5)), "c": normal((2, 3, 5))}, passes=())


@sim
def test_take_index_add_and_their_errors():
    table, idx = gc.input("table", (4, 3)), gc.input("idx", (5,), "int64")
    y = gc.sum(gc.take(table, idx) * 2.0) + gc.sum(table[1:3] ** 2) + gc.sum(table[[0, 0]])
    feeds = {"table": normal((4, 3)), "idx": np.array([0, 3, 3, -1, 1])}
    f = check([y, gc.grad(y, table)], feeds)
    feeds["idx"] = np.array([0, 4, 0, 0, 0])
    with pytest.raises(gc.GraphError, match="out of range"):
        f(**feeds)


@sim
@pytest.mark.parametrize("geometry", [dict(padding=1), dict(stride=2, dilation=(1, 2)),
                                      dict(groups=2, padding=(0, 1))])
def test_conv2d_and_its_gradients_by_im2col_gemm(geometry):
    x = gc.input("x", (2, 2, 4, 4))
    w = gc.input("w", (2, 2 // geometry.get("groups", 1), 2, 2))
    y = gc.conv2d(x, w, **geometry)
    f = check([y, *gc.grad(gc.sum(y * y), [x, w])],
              {"x": normal((2, 2, 4, 4)), "w": normal(w.shape)})
    assert f.stats["host_fallbacks"] == []


@sim
@pytest.mark.parametrize("kernel, stride, padding", [(2, 2, 1), (3, 1, 1), (2, 1, 0)])
def test_max_pooling_and_its_gradient_on_the_device(kernel, stride, padding):
    """The gradient goes to each window's first maximum: ties (a constant plane), -inf
    beside padding (never chosen) and NaN (the first NaN wins) as the reference has them;
    overlapping windows (stride 1) accumulate."""
    x = gc.input("x", (1, 3, 5, 5))
    y = gc.max_pool2d(x, kernel, stride=stride, padding=padding)
    value = normal((1, 3, 5, 5))
    value[0, 1] = 0.5
    value[0, 2, 0, :2], value[0, 2, 3, 3:] = -np.inf, np.nan
    f = check([y, gc.grad(gc.sum(y * y), x)], {"x": value})
    assert f.stats["lowered"]["max_pool2d"] == 1 and f.stats["lowered"]["max_pool2d_grad"] == 1
    assert f.stats["host_fallbacks"] == [] and f.stats["replayed"]


@sim
def test_scalars_avg_pool_losses_and_a_host_fallback_with_a_seed_feed():
    x, s = gc.input("x", (1, 2, 4, 4)), gc.input("s", ())
    seed = gc.input("seed", (), "int64")
    outs = [gc.avg_pool2d(x, 2) * s, gc.dropout(x, 0.5, seed=seed),
            gc.hinge(gc.reshape(x, (2, 16)), np.array([1, 3])), gc.huber(x, x * s), s * 2.0]
    f = check(outs, {"x": normal((1, 2, 4, 4)), "s": np.float32(1.5), "seed": np.int64(3)})
    assert any("dropout_mask" in h for h in f.stats["host_fallbacks"])


# ---------------------------------------------------------------------------------------
# Training: an MLP with softmax cross-entropy, parameters resident on the device


def _mlp():
    x, labels = gc.input("x", (4, 5)), gc.input("labels", (4,), "int64")
    W1, b1 = gc.param("W1", (5, 6)), gc.param("b1", (6,))
    W2, b2 = gc.param("W2", (6, 3)), gc.param("b2", (3,))
    logits = gc.relu(x @ W1 + b1) @ W2 + b2
    loss = gc.softmax_cross_entropy(logits, labels)
    feeds = {"x": normal((4, 5)), "labels": np.array([0, 2, 1, 2]), **gc.init_params(loss)}
    return [loss, *gc.grad(loss, [W1, b1, W2, b2])], feeds


@sim
def test_mlp_forward_and_backward_match_numpy():
    """...with one launch per fused group instance (fewer than the fused nodes)."""
    from graphc.passes import pipeline
    outs, feeds = _mlp()
    f = check(outs, feeds)
    assert f.stats["host_fallbacks"] == [] and f.stats["kernels"] > 0
    graph, _ = pipeline.run(Graph(outs), pipeline.DEFAULT_PIPELINE)
    fused = [t for t in graph.nodes if t.op.name == "fused"]
    instances = {(t.op.group, *map(id, t.inputs)) for t in fused}
    counts = launches(f, feeds)
    assert sum(n for k, n in counts.items() if k.startswith("k_fused_")) == len(instances)
    assert len(instances) < len(fused) and len(fused_kernels(f)) <= len(instances)


@sim
def test_device_resident_feeds_are_used_without_copies():
    from graphc import cuda_backend
    outs, feeds = _mlp()
    f = cuda_compile(outs)
    program = getattr(f, "program", None) or f._program  # wired: gc.compile's _program
    params = cuda_backend.device_feeds({k: v for k, v in feeds.items() if k[0] in "Wb"})
    want = gc.compile(outs, backend="numpy")(**feeds)
    for _ in range(2):  # parameters stay on the device between steps
        got = program({**feeds, **params})
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    if not hasattr(f, "program"):  # wired into gc.compile: device feeds pass its checks
        for g, w in zip(f(**{**feeds, **params}), want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
        with pytest.raises(gc.FeedError, match="W1"):
            f(**{**feeds, **params, "W1": cuda_backend.to_device(np.zeros((6, 5), np.float32))})
    on_device = program.run_device({**feeds, **params})
    assert all(cuda_backend.is_device_array(v) for v in on_device)
    np.testing.assert_allclose(params["W1"].copy_to_host(), feeds["W1"])  # not written
    bad = {**feeds, **params, "W1": cuda_backend.to_device(np.zeros((6, 5), np.float32))}
    with pytest.raises(gc.FeedError, match="W1"):
        program(bad)
    bad = {**feeds, **params, "W1": cuda_backend.to_device(feeds["W1"].astype(np.float64))}
    with pytest.raises(gc.FeedError, match="dtype"):
        program(bad)


@sim
def test_later_calls_replay_the_first_calls_launches_with_new_feed_values():
    """The first call is recorded, later ones replay its launches: fresh host values reach
    the kernels (copied into the program's own buffers), a device feed updated in place is
    read as it is now, another device array is taken (the launches recorded again, once),
    and buffers whose storage the memory plan frees serve later values."""
    from graphc import cuda_backend
    outs, feeds = _mlp()
    f = cuda_compile(outs)
    program = getattr(f, "program", None) or f._program
    reference = gc.compile(outs, backend="numpy")
    W1 = cuda_backend.to_device(feeds["W1"])
    for call in range(4):
        feeds = {**feeds, "x": normal((4, 5)), "labels": rng.integers(0, 3, 4)}
        if call == 2:  # the bound W1 changed in place: read, not a stale copy
            feeds["W1"] = normal((5, 6))
            W1.copy_to_device(feeds["W1"])
        if call == 3:  # another device array for W1
            W1 = cuda_backend.to_device(normal((5, 6)))
            feeds["W1"] = W1.copy_to_host()
        for g, w in zip(program({**feeds, "W1": W1}), reference(**feeds)):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    assert program.stats["replayed"]
    assert program.replay.stats == {"recordings": 2, "replays": 2}
    assert "W1" in program.replay.copied and "W2" in program.replay.copied  # host feeds
    recorder = program.replay.recorder
    assert len(recorder.owned) < sum(1 for s in program.steps if s.kind == "kernel")


@sim
def test_a_programs_outputs_fed_back_and_a_failed_check_do_not_upset_its_replay():
    """A replayed program's device outputs are its own buffers: fed back as inputs (a
    scan's carry) they are copied in before they are overwritten.  An index out of range
    raises on a replayed call as on the first, and the next call is right again."""
    h, w = gc.input("h", (3, 4)), gc.input("w", (4, 4))
    table, idx = gc.input("table", (5, 4)), gc.input("idx", (3,), "int64")
    out = gc.tanh(h @ w) + gc.take(table, idx)
    f = cuda_compile(out)
    program = getattr(f, "program", None) or f._program
    feeds = {"h": normal((3, 4)), "w": normal((4, 4)), "table": normal((5, 4)),
             "idx": np.array([0, 4, 2])}
    reference = gc.compile(out, backend="numpy")
    state, want = program.run_device(feeds)[0], reference(**feeds)
    for _ in range(3):
        want = reference(**{**feeds, "h": want})
        state = program.run_device({**feeds, "h": state})[0]
        np.testing.assert_allclose(state.copy_to_host(), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(gc.GraphError, match="out of range"):
        program({**feeds, "idx": np.array([0, 5, 0])})
    np.testing.assert_allclose(program(feeds)[0], reference(**feeds), rtol=1e-5, atol=1e-6)
    assert program.replay.stats["replays"] >= 3


@sim
def test_replaying_can_be_turned_off(monkeypatch):
    from graphc import cuda_replay
    monkeypatch.setattr(cuda_replay, "ENABLED", False)
    outs, feeds = _mlp()
    f = cuda_compile(outs)
    program = getattr(f, "program", None) or f._program
    assert program.replay is None and not program.stats["replayed"]
    for g, w in zip(program(feeds), gc.compile(outs, backend="numpy")(**feeds)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@sim
def test_launches_warn_the_user_of_nothing():
    """numba-cuda warns (NumbaPerformanceWarning) at each launch of a small grid; on an H200
    every call of a small graph printed one per kernel.  The user cannot act on it: a call
    shows none (the simulator does not warn, so a launch here warns as numba-cuda does)."""
    import warnings
    if KERNELS == "simulator":
        from numba.cuda.simulator.kernel import FakeCUDAKernel as Kernel
    else:
        from numba.cuda.dispatcher import CUDADispatcher as Kernel
    configure = Kernel.__getitem__

    def warning(self, config):
        warnings.warn("\x1b[1mGrid size 1 will likely result in GPU under-utilization due "
                      "to low occupancy.\x1b[0m", RuntimeWarning, stacklevel=2)
        return configure(self, config)
    x = gc.input("x", (3,))
    f = cuda_compile(gc.exp(x) * 2.0)
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        mp.setattr(Kernel, "__getitem__", warning)
        f(x=np.ones(3, np.float32))
        assert seen == []
        warnings.warn("Grid size 1 will likely result in GPU under-utilization", stacklevel=1)
    assert len(seen) == 1  # the user's own warnings of the same text are theirs


@sim
def test_available_reports_the_simulator_or_the_gpu():
    from graphc import cuda_backend
    ok, why = cuda_backend.available()
    assert ok and ("simulator" in why if KERNELS == "simulator" else why.startswith("CUDA GPU"))


# ---------------------------------------------------------------------------------------
# On a GPU: the benchmark's workloads at full size


@pytest.mark.skipif(KERNELS != "gpu", reason="full-size workloads: needs a CUDA GPU")
@pytest.mark.parametrize("name", ["W1", "W2", "W3", "W4s", "W5", "W6", "W4"])
def test_the_benchmark_workloads_match_numba_on_a_gpu(name):
    """``graphc bench --backend cuda``'s training steps (loss and every gradient) against
    the Numba backend's, float32: sums and dot products add in another order, so within
    1e-3 of each result's largest magnitude."""
    import bench_harness  # noqa: F401 -- puts benchmarks/ on sys.path
    from workloads import WORKLOADS
    problem = WORKLOADS[name].problem()
    outs = [problem.loss, *gc.grad(problem.loss, list(problem.wrt))]
    f = gc.compile(outs, backend="cuda")
    want = gc.compile(outs, backend="numba")(problem.feeds)
    for _ in range(3):  # recorded, then replayed (where the program has no host step)
        for g, w in zip(f(problem.feeds), want):
            assert g.shape == w.shape and g.dtype == w.dtype
            np.testing.assert_allclose(g, w, rtol=1e-3,
                                       atol=1e-3 * np.abs(w).max(initial=1.0))
    replay = f._program.replay
    print(name, f.stats["kernels"], "kernels", f.stats["kernel_steps"], "steps",
          "host fallbacks", f.stats["host_fallbacks"], "replay",
          replay and (replay.stats, replay.how, replay.graph))


# ---------------------------------------------------------------------------------------
# Runs without the simulator


def test_a_numpy_without_row_stack_gets_the_alias_numba_cuda_needs(monkeypatch):
    """NumPy 2.5 removed ``np.row_stack``, which numba-cuda 0.30.4 overloads when it compiles
    its first kernel: on an H200 with NumPy 2.5.2 every kernel failed with AttributeError
    until graphc put the alias back (``cuda_backend.available`` runs before any kernel)."""
    from graphc import cuda_backend
    monkeypatch.delattr(np, "row_stack", raising=False)
    assert not hasattr(np, "row_stack")
    cuda_backend.available()
    assert np.row_stack is np.vstack


_NO_GPU = """
import graphc as gc
from graphc import cuda_backend
from graphc.graph import Graph
ok, why = cuda_backend.available()
if ok:
    print("HAS-GPU")
else:
    assert "NUMBA_ENABLE_CUDASIM=1" in why, why
    x = gc.input("x", (2,))
    try:
        cuda_backend.compile_graph(Graph([x * 2.0]))
    except gc.BackendError as err:
        assert "NUMBA_ENABLE_CUDASIM=1" in str(err) and "cuda" in str(err), err
        print("NO-GPU-ERROR-OK")
"""


def _env(sim_on: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    if sim_on:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    return env


def test_without_a_gpu_compile_raises_a_clear_error():
    run = subprocess.run([sys.executable, "-c", _NO_GPU], env=_env(False), capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    if "HAS-GPU" in run.stdout:
        pytest.skip("this machine has a CUDA GPU")
    assert "NO-GPU-ERROR-OK" in run.stdout


@pytest.mark.slow
@pytest.mark.skipif(IN_PROCESS, reason="the cases ran in this process")
def test_simulator_cases_in_a_subprocess():
    # (the no-GPU case ran in this process: not again, in a third interpreter)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          __file__, "--deselect",
                          f"{__file__}::test_without_a_gpu_compile_raises_a_clear_error"],
                         env=_env(True), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


@sim
def test_a_few_long_rows_are_reduced_in_pieces_first():
    """sum, max and min of fewer rows than keep a GPU busy (FEW_ROWS), each long: each
    row's pieces first (many blocks), then the pieces; max and min still propagate a NaN
    in any piece.  The simulator's thresholds are small (4 rows, pieces of 16)."""
    from graphc import cuda_kernels as ck
    piece, prime = ck.PIECE, int(sp.nextprime(2 * ck.PIECE))
    assert ck.row_pieces(1, 2 * piece - 1) == 1 and ck.row_pieces(1, 2 * piece) == 2
    assert ck.row_pieces(ck.FEW_ROWS, 4 * piece) == 1
    assert ck.row_pieces(1, prime) == 1  # no equal pieces
    x = gc.input("x", (2, 4 * piece))
    value = normal((2, 4 * piece))
    value[1, 3 * piece + 1] = np.nan
    outs = [gc.sum(x, axis=1), gc.max(x, axis=1), gc.min(x, axis=1), gc.sum(x),
            gc.sum(x[:, :prime], axis=1)]
    f = check(outs, {"x": value})
    assert launches(f, {"x": value})["kernel"] == 3 * 2 + 2 + 1


@sim
def test_logsumexp_of_empty_rows_is_minus_infinity():
    # log of an empty sum, as torch.logsumexp (rows of 0 values left the output unwritten)
    for shape, axis in [((3, 0), 1), ((0, 3), None)]:
        x = gc.input("x", shape)
        check([gc.logsumexp(x, axis=axis)], {"x": np.zeros(shape, np.float32)}, passes=())
