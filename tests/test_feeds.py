"""Calling compiled functions (graphc/compiler.py) and initial parameter values
(graphc/inputs.py): feed validation, call forms, results, init_params and initializers."""

import numpy as np
import pytest

import graphc as gc


def compile_np(outputs):
    return gc.compile(outputs, backend="numpy")


@pytest.fixture
def affine():
    x = gc.input("pixels", (4, 3))
    W = gc.param("weights", (3, 2))
    return compile_np(x @ W + 1.0)


def feeds_for_affine():
    return {"pixels": np.arange(12, dtype=np.float32).reshape(4, 3),
            "weights": np.ones((3, 2), np.float32)}


# ---------------------------------------------------------------------------------------
# FeedError


def test_feed_error_is_a_value_error():
    assert issubclass(gc.FeedError, ValueError)


def test_missing_feed(affine):
    feeds = feeds_for_affine()
    del feeds["weights"]
    with pytest.raises(gc.FeedError, match="weights") as info:
        affine(**feeds)
    assert "missing" in str(info.value)
    with pytest.raises(gc.FeedError, match="pixels"):
        affine(weights=np.ones((3, 2), np.float32))
    with pytest.raises(gc.FeedError, match="pixels"):
        affine()


def test_unknown_extra_feed(affine):
    with pytest.raises(gc.FeedError, match="bias") as info:
        affine(**feeds_for_affine(), bias=np.zeros(2, np.float32))
    assert "unknown" in str(info.value)


def test_wrong_shape(affine):
    feeds = feeds_for_affine()
    feeds["pixels"] = np.zeros((3, 4), np.float32)
    with pytest.raises(gc.FeedError, match="pixels") as info:
        affine(**feeds)
    assert "(3, 4)" in str(info.value) and "(4, 3)" in str(info.value)
    feeds["pixels"] = np.zeros((4, 3, 1), np.float32)  # same size, other shape
    with pytest.raises(gc.FeedError, match="pixels"):
        affine(**feeds)
    feeds["pixels"] = 1.0  # a scalar is not broadcast
    with pytest.raises(gc.FeedError, match="pixels"):
        affine(**feeds)


@pytest.mark.parametrize("input_dtype, array", [
    ("float32", np.ones(3, np.int64)), ("float32", np.ones(3, np.int32)),
    ("float32", np.ones(3, bool)), ("float64", np.ones(3, np.int32)),
    ("bool", np.ones(3, np.float32)), ("bool", np.ones(3, np.int64)),
    ("int32", np.ones(3, np.float64)), ("int64", np.ones(3, np.float32)),
    ("int64", np.ones(3, bool)), ("float32", np.array(["a", "b", "c"])),
    ("float32", np.ones(3, np.complex64)), ("int32", np.array([1, 2, 3], object)),
])
def test_wrong_dtype_kind(input_dtype, array):
    f = compile_np(gc.input("signal", (3,), input_dtype))
    with pytest.raises(gc.FeedError, match="signal") as info:
        f(signal=array)
    assert input_dtype in str(info.value)


@pytest.mark.parametrize("input_dtype, array", [
    ("float32", np.array([0.1, 0.2, 1e-3])), ("float64", np.array([1, 2, 3], np.float32)),
    ("int32", np.array([1, 2, 3], np.int64)), ("int64", np.array([1, 2, 3], np.int32)),
    ("int64", np.array([1, 2, 3], np.uint8)), ("bool", np.array([True, False, True])),
])
def test_same_kind_feeds_are_converted(input_dtype, array):
    x = gc.input("x", (3,), input_dtype)
    out = compile_np(x)(x=array)
    assert out.dtype == np.dtype(input_dtype)
    np.testing.assert_array_equal(out, array.astype(input_dtype))


def test_int_feed_that_does_not_fit_the_input_dtype():
    # BUG (reported): the feed is converted with astype(), so an int64 value outside int32's
    # range wraps silently (2**40 arrives as 0) instead of raising FeedError.
    f = compile_np(gc.input("counts", (2,), "int32") + 0)
    np.testing.assert_array_equal(f(counts=np.array([7, -7], np.int64)), [7, -7])  # fits
    with pytest.raises(gc.FeedError, match="counts"):
        f(counts=np.array([2**40, 1], np.int64))


def test_float64_feed_to_float32_input():
    x = gc.input("x", (3,))
    X = np.array([0.1, 1.0, 1e20])
    out = compile_np(x * 2.0)(x=X)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, X.astype(np.float32) * np.float32(2))


def test_float64_feed_that_float32_cannot_hold_is_named(recwarn):
    """A finite value beyond float32's range would arrive as inf (with a NumPy warning)."""
    f = compile_np(gc.input("x", (3,)) * 2.0)
    with pytest.raises(gc.FeedError, match=r"feed 'x' has values outside the float32 range "
                                           r"\(e\.g\. 1e\+300"):
        f(x=np.array([0.1, 1e300, 2.0]))
    out = f(x=np.array([np.inf, -1e38, np.nan]))  # infinities and NaN stay what they are
    assert np.isposinf(out[0]) and out[1] == np.float32(-1e38) * 2 and np.isnan(out[2])
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_lists_feed_like_arrays():
    x = gc.input("x", (2, 2))
    out = compile_np(x + 1.0)(x=[[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(out, [[2.0, 3.0], [4.0, 5.0]])


def test_bad_feed_containers(affine):
    with pytest.raises(gc.FeedError):
        affine([feeds_for_affine()["pixels"]])  # not a dict
    with pytest.raises(gc.FeedError, match="pixels"):  # the same name twice
        affine({"pixels": feeds_for_affine()["pixels"]}, **feeds_for_affine())


# ---------------------------------------------------------------------------------------
# Call forms and results


def test_both_call_forms_give_the_same_result(affine):
    feeds = feeds_for_affine()
    want = feeds["pixels"] @ feeds["weights"] + 1.0
    a = affine(**feeds)
    b = affine(feeds)
    c = affine({"pixels": feeds["pixels"]}, weights=feeds["weights"])
    for out in (a, b, c):
        assert isinstance(out, np.ndarray) and out.dtype == np.float32
        np.testing.assert_array_equal(out, want)


def test_single_output_is_an_array_and_lists_give_tuples():
    x = gc.input("x", (3,))
    X = np.array([1.0, 2.0, 3.0], np.float32)
    single = compile_np(gc.sum(x))(x=X)
    assert isinstance(single, np.ndarray) and single.shape == () and single == 6.0
    pair = compile_np([gc.sum(x), x * 2.0])(x=X)
    assert isinstance(pair, tuple) and len(pair) == 2
    assert all(isinstance(p, np.ndarray) for p in pair)
    np.testing.assert_array_equal(pair[1], X * 2)
    one = compile_np([x * 2.0])(x=X)
    assert isinstance(one, tuple) and len(one) == 1
    also = compile_np((x, gc.exp(x)))(x=X)
    assert isinstance(also, tuple) and len(also) == 2


def test_repeated_outputs_are_independent_arrays():
    x = gc.input("x", (3,))
    a, b = compile_np([x * 2.0, x * 2.0])(x=np.ones(3, np.float32))
    a[0] = 100.0
    assert b[0] == 2.0


def test_graph_without_inputs():
    f = compile_np(gc.constant([1.0, 2.0]) * 3.0)
    np.testing.assert_array_equal(f(), [3.0, 6.0])
    with pytest.raises(gc.FeedError, match="x"):
        f(x=np.ones(2))


def test_unused_inputs_are_not_wanted():
    x, y = gc.input("x", (2,)), gc.input("y", (2,))
    f = compile_np(x * 2.0)
    assert y.shape == (2,)  # built, but the output does not depend on it
    with pytest.raises(gc.FeedError, match="y"):
        f(x=np.ones(2, np.float32), y=np.ones(2, np.float32))


# ---------------------------------------------------------------------------------------
# Feeds are never modified


def test_feeds_are_not_modified():
    x = gc.input("x", (5,))
    b = gc.input("b", (5,), "bool")
    i = gc.input("i", (5,), "int32")
    outs = [x * 2.0, gc.where(b, x, -x), gc.exp(x), gc.relu(-x), x + i, gc.sum(x)]
    X = np.linspace(-2, 2, 5).astype(np.float32)
    B = np.array([True, False, True, False, True])
    In = np.arange(5, dtype=np.int32)
    feeds = {"x": X, "b": B, "i": In}
    before = {k: v.copy() for k, v in feeds.items()}
    compile_np(outs)(**feeds)
    compile_np(outs)(feeds)
    for k, v in feeds.items():
        np.testing.assert_array_equal(v, before[k])
        assert v.dtype == before[k].dtype
        assert v.flags.writeable  # the user's flags are left alone


def test_identity_graph_returns_a_copy():
    x = gc.input("x", (3,))
    f = compile_np(x)
    X = np.array([1.0, 2.0, 3.0], np.float32)
    keep = X.copy()
    out = f(x=X)
    np.testing.assert_array_equal(out, X)
    assert out is not X and not np.shares_memory(out, X)
    out[:] = -1.0  # the result is the caller's to modify ...
    np.testing.assert_array_equal(X, keep)  # ... without touching the feed
    assert X.flags.writeable
    pair = compile_np([x, x[::-1], gc.reshape(x, (3, 1))])(x=X)
    for p in pair:
        assert not np.shares_memory(p, X)
        p[...] = 7.0
    np.testing.assert_array_equal(X, keep)


def test_results_are_writable_and_do_not_alias_constants():
    c = gc.constant(np.array([1.0, 2.0], np.float32))
    f = compile_np(c)
    out = f()
    out[0] = 50.0
    np.testing.assert_array_equal(f(), [1.0, 2.0])


# ---------------------------------------------------------------------------------------
# init_params


def model():
    x = gc.input("x", (5, 4))
    W1, b1 = gc.param("W1", (4, 8)), gc.param("b1", (8,), init="zeros")
    W2 = gc.param("W2", (8, 2), init="he_normal", dtype="float64")
    return gc.sum(gc.relu(x @ W1 + b1) @ W2)


def test_init_params_covers_exactly_the_params_used():
    out = model()
    unused = gc.param("unused", (3,))
    values = gc.init_params(out)
    assert set(values) == {"W1", "b1", "W2"}
    assert values["W1"].shape == (4, 8) and values["W1"].dtype == np.float32
    assert values["b1"].shape == (8,) and values["b1"].dtype == np.float32
    assert values["W2"].shape == (8, 2) and values["W2"].dtype == np.float64
    np.testing.assert_array_equal(values["b1"], 0)
    assert "x" not in values  # plain inputs are fed by the caller
    assert set(gc.init_params([out, gc.sum(unused)])) == {"W1", "b1", "W2", "unused"}
    assert gc.init_params(gc.input("x", (5, 4)) * 2.0) == {}


def test_init_params_feed_the_compiled_function():
    out = model()
    X = np.ones((5, 4), np.float32)
    value = compile_np(out)(x=X, **gc.init_params(out, seed=3))
    assert np.isfinite(value)


def test_init_params_is_deterministic_per_seed():
    a, b = gc.init_params(model(), seed=7), gc.init_params(model(), seed=7)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    c = gc.init_params(model(), seed=8)
    assert not np.array_equal(a["W1"], c["W1"])
    assert not np.array_equal(a["W2"], c["W2"])
    d = gc.init_params(model())  # default seed 0
    np.testing.assert_array_equal(d["W1"], gc.init_params(model(), seed=0)["W1"])


def test_different_params_get_different_values():
    a, b = gc.param("A", (4, 4)), gc.param("B", (4, 4))
    values = gc.init_params(a + b)
    assert not np.array_equal(values["A"], values["B"])


def test_adding_a_param_does_not_change_the_others():
    out = model()
    before = gc.init_params(out, seed=1)
    extra = gc.param("extra", (8, 8))
    after = gc.init_params([out, gc.sum(extra)], seed=1)
    first = gc.param("aaa_first", (2,))  # sorts and hashes differently
    again = gc.init_params([gc.sum(first), out, gc.sum(extra)], seed=1)
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
        np.testing.assert_array_equal(before[k], again[k])
    np.testing.assert_array_equal(after["extra"], again["extra"])


def test_init_params_returns_fresh_arrays():
    out = model()
    a = gc.init_params(out, seed=2)
    a["W1"][...] = 0.0
    b = gc.init_params(out, seed=2)
    assert np.any(b["W1"] != 0)


def test_init_params_of_a_scalar_param_is_0d():
    # BUG (found with benchmark W6): np.ascontiguousarray made a () parameter's value (1,),
    # which the compiled function then refused as a feed of the wrong shape.
    for init in ("normal", "zeros", "xavier_normal"):
        b = gc.param(f"bias_{init}", (), init=init)
        value = gc.init_params(b * 2.0)[b.op.label]
        assert value.shape == () and value.dtype == np.float32 and value.flags.c_contiguous
        np.testing.assert_array_equal(compile_np(b * 2.0)(**{b.op.label: value}), value * 2)


# ---------------------------------------------------------------------------------------
# Initializer statistics


def big(init, shape=(1000, 400), dtype="float32"):
    p = gc.param(f"big_{init}", shape, init=init, dtype=dtype)
    return gc.init_params(p, seed=0)[p.op.label]


def test_xavier_normal():
    w = big("xavier_normal")  # fan_in 1000, fan_out 400
    assert w.dtype == np.float32 and w.shape == (1000, 400)
    assert abs(w.mean()) < 1e-3
    np.testing.assert_allclose(w.std(), np.sqrt(2 / 1400), rtol=0.02)


def test_he_normal():
    w = big("he_normal")
    assert abs(w.mean()) < 1e-3
    np.testing.assert_allclose(w.std(), np.sqrt(2 / 1000), rtol=0.02)


def test_square_weights_follow_the_formulas():
    w = big("xavier_normal", (1000, 1000))
    np.testing.assert_allclose(w.std(), np.sqrt(2 / 2000), rtol=0.02)
    w = big("he_normal", (1000, 1000))
    np.testing.assert_allclose(w.std(), np.sqrt(2 / 1000), rtol=0.02)


def test_xavier_uniform():
    w = big("xavier_uniform")
    limit = np.sqrt(6 / 1400)
    assert w.min() >= -limit and w.max() <= limit
    assert w.min() < -0.99 * limit and w.max() > 0.99 * limit
    np.testing.assert_allclose(w.std(), limit / np.sqrt(3), rtol=0.02)
    assert abs(w.mean()) < 1e-3


def test_he_uniform():
    w = big("he_uniform")
    limit = np.sqrt(6 / 1000)
    assert w.min() >= -limit and w.max() <= limit
    assert w.min() < -0.99 * limit and w.max() > 0.99 * limit
    np.testing.assert_allclose(w.std(), limit / np.sqrt(3), rtol=0.02)


def test_normal():
    w = big("normal", (500, 500))
    np.testing.assert_allclose(w.std(), 1.0, rtol=0.02)
    assert abs(w.mean()) < 0.01


def test_zeros_and_ones():
    np.testing.assert_array_equal(big("zeros", (3, 4)), np.zeros((3, 4)))
    np.testing.assert_array_equal(big("ones", (3, 4), "float64"), np.ones((3, 4)))
    assert big("ones", (3, 4), "float64").dtype == np.float64


def test_conv_kernel_fans():
    # (out, in, kh, kw): fan_in = in * kh * kw, fan_out = out * kh * kw
    w = big("he_normal", (64, 32, 3, 3))
    np.testing.assert_allclose(w.std(), np.sqrt(2 / (32 * 9)), rtol=0.03)
    w = big("xavier_normal", (64, 32, 3, 3))
    np.testing.assert_allclose(w.std(), np.sqrt(2 / (96 * 9)), rtol=0.03)


def test_callable_init():
    calls = []

    def init(shape, rng):
        calls.append((shape, rng))
        return np.full(shape, 0.25) + rng.uniform(0, 1e-3, shape)

    p = gc.param("custom", (3, 2), init=init)
    value = gc.init_params(p * 2.0, seed=5)["custom"]
    assert value.shape == (3, 2) and value.dtype == np.float32
    assert np.all((value >= 0.25) & (value < 0.2511))
    (shape, rng), = calls
    assert tuple(shape) == (3, 2) and isinstance(rng, np.random.Generator)
    again = gc.init_params(p * 2.0, seed=5)["custom"]
    np.testing.assert_array_equal(value, again)  # the rng is seeded too
    assert "custom" in gc.format_graph(p)


# ---------------------------------------------------------------------------------------
# Backends


def test_cuda_without_a_gpu_raises_backend_error():
    from graphc import cuda_backend
    if cuda_backend.available()[0]:
        pytest.skip("this machine can run CUDA kernels (a GPU or the simulator)")
    x = gc.input("x", (2,))
    with pytest.raises(gc.BackendError) as info:
        gc.compile(x * 2.0, backend="cuda")
    message = str(info.value)
    assert "cuda" in message and "numpy" in message  # says what is available
    assert "NUMBA_ENABLE_CUDASIM" in message  # and how to run the kernels anyway
    with pytest.raises(gc.BackendError):
        gc.to_device(np.ones(2, np.float32))


def test_unknown_backend():
    x = gc.input("x", (2,))
    with pytest.raises(gc.BackendError) as info:
        gc.compile(x, backend="tpu")
    assert "tpu" in str(info.value) and "numba" in str(info.value)


def test_default_backend_runs():
    x = gc.input("x", (2,))
    f = gc.compile(x * 2.0)
    np.testing.assert_array_equal(f(x=np.ones(2, np.float32)), [2.0, 2.0])
    assert isinstance(f.source, str) and "mul" in f.source
    assert isinstance(f.graph, gc.Graph)


def test_a_gradient_node_other_graphs_share_accepts_only_the_inputs_still_held():
    # grad(1 + z, z) is the interned constant 1, the gradient of every such graph: it
    # accepted the inputs of every graph that had ever had it for a gradient ('_holder4',
    # another test's 'zeta'), so an unknown feed's error listed them and they were accepted
    import gc as collector
    zeta = gc.input("zeta_t", (), "float64")
    one = gc.grad(1 + zeta, zeta)
    del zeta
    collector.collect()
    z = gc.input("z_t", (), "float64")
    g = gc.grad(1 + z, z)
    assert g is one  # the same node
    f = gc.compile(g, backend="numpy")
    assert float(f(z_t=np.float64(3.0))) == 1.0
    with pytest.raises(gc.FeedError, match=r"accepts 'z_t' \(inputs of the graph it was"):
        f(zeta_t=np.float64(3.0))


def test_an_input_another_graph_shares_a_gradient_node_with_is_fed_at_its_own_shape():
    """Two graphs' zero gradients of shape (4, 5) are one interned node carrying both
    graphs' inputs; B's own unused input u (4, 5) was checked against A's u (1, 5)."""
    ua, wa, p = gc.input("u", (1, 5)), gc.input("w", (4, 5)), gc.input("p", ())
    kept = gc.grad(p * 2.0, [ua, wa, p])  # noqa: F841 -- graph A stays alive
    ub, q = gc.input("u", (4, 5)), gc.input("q", ())
    loss = q * 3.0
    f = gc.compile([loss, *gc.grad(loss, [ub, q])], backend="numpy")
    out = f(u=np.ones((4, 5), np.float32), q=np.float32(1))
    assert [np.shape(o) for o in out] == [(), (4, 5), ()]
