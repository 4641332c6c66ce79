"""Dynamic dimensions: gc.input with None or named dimensions, specialised per feed shape."""

import numpy as np
import pytest
import torch

import graphc as gc

IN, HID, OUT = 6, 5, 3


def mlp(batch, labels_batch=None):
    """An MLP, its softmax cross-entropy loss and the gradients of every parameter."""
    x = gc.input("x", (batch, IN))
    y = gc.input("y", (batch if labels_batch is None else labels_batch,), "int64")
    W1, b1 = gc.param("W1", (IN, HID)), gc.param("b1", (HID,), init="normal")
    W2 = gc.param("W2", (HID, OUT))
    logits = gc.tanh(x @ W1 + b1) @ W2
    loss = gc.softmax_cross_entropy(logits, y)
    return [loss, logits, *gc.grad(loss, [W1, b1, W2])]


def feeds(n, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((n, IN)).astype(np.float32),
            "y": rng.integers(0, OUT, n)}


PARAMS = gc.init_params(mlp(None)[0], seed=1)


@pytest.fixture(scope="module", params=[
    "numpy", pytest.param("numba", marks=pytest.mark.slow)])  # Numba: ~10 s of kernel compiles
def dynamic_mlp(request):
    return request.param, gc.compile(mlp(None), backend=request.param)


def test_build_time_shapes_hold_none_and_names():
    outs = mlp(None)
    assert outs[0].shape == () and outs[1].shape == (None, OUT)
    assert [t.shape for t in outs[2:]] == [(IN, HID), (HID,), (HID, OUT)]
    x = gc.input("xn", ("N", 784))
    assert x.shape == ("N", 784)
    assert gc.reshape(x, (-1, 28, 28)).shape == ("N", 28, 28)
    assert gc.sum(x, axis=1).shape == ("N",) and gc.mean(x, axis=0).shape == (784,)
    assert gc.reshape(x, ("N", 2, -1)).shape == ("N", 2, 392)
    assert gc.reshape(x, (-1,)).shape == (None,)  # N * 784: known only at call time


@pytest.mark.parametrize("n", [1, 64])
def test_dynamic_batch_equals_fixed_shape_graph(dynamic_mlp, n):
    backend, f = dynamic_mlp
    got = f(**feeds(n), **PARAMS)
    want = gc.compile(mlp(n), backend=backend)(**feeds(n), **PARAMS)
    assert len(got) == len(want) == 5
    for a, b in zip(got, want):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # Numba kernel compiles (shared with the numba case above when both run)
def test_one_specialisation_per_shape_kernels_shared():
    f = gc.compile(mlp("B"), backend="numba")
    first = f(**feeds(2), **PARAMS)
    second = f(**feeds(7), **PARAMS)
    again = f(**feeds(2), **PARAMS)
    assert f.stats["specialisations"] == 2 and sorted(f.specialised) == [
        ((2, IN), (2,)), ((7, IN), (7,))]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert second[1].shape == (7, OUT)
    later = f.specialised[((7, IN), (7,))].stats  # compiled after the batch-2 one
    assert later["kernels"] > 0 and later["kernel_cache_misses"] == 0


def test_mean_and_losses_divide_by_the_fed_batch():
    x = gc.input("x", (None, 3))
    y = gc.input("y", (None,), "int64")
    t = gc.input("t", (None, 3))
    outs = [gc.mean(x), gc.mean(x, axis=0), gc.softmax_cross_entropy(x, y), gc.mse(x, t),
            gc.grad(gc.mean(x), x)]
    f = gc.compile(outs, backend="numpy")
    rng = np.random.default_rng(3)
    for n in (2, 5):
        X, T = rng.standard_normal((n, 3)), rng.standard_normal((n, 3))
        Y = rng.integers(0, 3, n)
        mean, col, ce, mse, g = f(x=X, y=Y, t=T)
        logp = X - np.log(np.exp(X).sum(1, keepdims=True))
        np.testing.assert_allclose(mean, X.mean(), rtol=1e-6)
        np.testing.assert_allclose(col, X.mean(0), rtol=1e-6)
        np.testing.assert_allclose(ce, -logp[np.arange(n), Y].mean(), rtol=1e-6)
        np.testing.assert_allclose(mse, ((X - T) ** 2).mean(), rtol=1e-6)
        np.testing.assert_allclose(g, np.full((n, 3), 1 / (3 * n)), rtol=1e-6)


def test_reshape_keeps_none_and_unreached_gradients_are_zeros():
    x = gc.input("x", (None, 2, 3))
    flat = gc.nn.Flatten()(x)  # reshape(x, (x.shape[0], -1)): None keeps x's dimension
    z = gc.input("z", (2,))
    unreached = gc.grad(gc.sum(z * 2.0), [x, z])[0]
    assert flat.shape == (None, 6) and unreached.shape == (None, 2, 3)
    f = gc.compile([flat, unreached], backend="numpy")
    X = np.arange(24, dtype=np.float32).reshape(4, 2, 3)
    got_flat, got_zero = f(x=X, z=np.ones(2, np.float32))
    np.testing.assert_array_equal(got_flat, X.reshape(4, 6))
    np.testing.assert_array_equal(got_zero, np.zeros((4, 2, 3), np.float32))
    wide = gc.broadcast_to(gc.input("col", ("N", 1)), (2, "N", 3))
    assert wide.shape == (2, "N", 3)
    assert gc.compile(wide, backend="numpy")(col=np.ones((5, 1), np.float32)).shape == (2, 5, 3)
    with pytest.raises(gc.ShapeError, match=r"reshape: .*'M' at position 0, which is not a "
                       r"dynamic dimension of \(None, 2, 3\)"):
        gc.compile(gc.reshape(x, ("M", -1)), backend="numpy")(x=X)


def test_a_reshape_regrouping_a_dynamic_dimension_is_checked_at_call_time():
    # probing built it at a stand-in size of 1009 rows: "cannot reshape 6054 elements"
    y = gc.input("y", (None, 6), "float64")
    regrouped = {(-1, 4): (None, 4), (4, -1): (4, None), (-1, 3, 4): (None, 3, 4)}
    for target, shape in regrouped.items():
        assert gc.reshape(y, target).shape == shape
    z = gc.reshape(y, (-1, 4))
    f = gc.compile([z, gc.grad(gc.sum(z * z), y)], backend="numpy")
    Y = np.arange(60.0).reshape(10, 6)
    got, grad = f(y=Y)
    np.testing.assert_array_equal(got, Y.reshape(15, 4))
    np.testing.assert_array_equal(grad, 2 * Y)
    with pytest.raises(gc.FeedError, match=r"'y' \(3, 6\).*cannot reshape 18 elements"):
        f(y=np.ones((3, 6)))


def test_feed_errors_name_the_input_and_the_pattern():
    f = gc.compile(mlp(None)[0], backend="numpy")
    good = feeds(3)
    with pytest.raises(gc.FeedError) as err:
        f(x=np.ones((3, IN + 1), np.float32), y=good["y"], **PARAMS)
    assert str(err.value) == (f"feed 'x' has shape (3, {IN + 1}); expected (None, {IN}) "
                              "(any size where None)")
    with pytest.raises(gc.FeedError) as err:
        f(x=np.ones(IN, np.float32), y=good["y"], **PARAMS)
    assert str(err.value) == f"feed 'x' has shape ({IN},); expected (None, {IN}) (any size " \
        "where None)"
    with pytest.raises(gc.FeedError, match=r"feeds of shapes 'x' \(3, 6\), 'y' \(2,\) do not "
                       r"fit the graph: softmax_cross_entropy on operands of shapes \(3, 3\), "
                       r"\(2,\): softmax_cross_entropy: labels \(2,\) must be \(3,\) for "
                       r"scores \(3, 3\)\n  at .*test_dynamic.py:\d+: loss = gc.softmax_"):
        f(x=good["x"], y=good["y"][:2], **PARAMS)


def test_named_dimensions_bind_across_inputs():
    f = gc.compile(mlp("N"), backend="numpy")
    assert f(**feeds(4), **PARAMS)[1].shape == (4, OUT)
    with pytest.raises(gc.FeedError) as err:
        f(x=feeds(4)["x"], y=feeds(3)["y"], **PARAMS)
    assert str(err.value) == ("feeds 'x' and 'y' disagree on dimension 'N': 4 in 'x' "
                              f"(4, {IN}) and 3 in 'y' (3,)")
    with pytest.raises(gc.FeedError) as err:
        f(x=np.ones((2, 1), np.float32), y=feeds(2)["y"], **PARAMS)
    assert str(err.value) == (f"feed 'x' has shape (2, 1); expected ('N', {IN}) (any size "
                              "where 'N', one size per name across inputs)")


def test_build_errors_show_the_dynamic_shape():
    x = gc.input("x", (None, 3))
    with pytest.raises(gc.ShapeError, match=r"operands: \(None, 3\) float32, \(4,\) float32"):
        x + gc.input("z", (4,))
    with pytest.raises(gc.ShapeError, match="param 'W': parameters have fixed shapes, got "
                       r"\(None, 3\)"):
        gc.param("W", (None, 3))
    with pytest.raises(gc.GraphError, match="dynamic dimensions"):
        _ = x.size


def test_grad_checks_and_hvp_on_a_dynamic_batch():
    loss, *_ = mlp(None)
    W1 = next(p for p in gc.params_of(loss) if p.name == "W1")
    values = {**feeds(4), **{k: v.astype(np.float64) for k, v in PARAMS.items()}}
    rep = gc.check_grad(loss, [W1], values)
    assert rep.ok and rep.max_rel_error < 1e-6
    v = np.random.default_rng(0).standard_normal((IN, HID))
    dyn = gc.compile(gc.hvp(loss, W1, v), backend="numpy")(**feeds(4), **PARAMS)
    fixed_loss = mlp(4)[0]
    W1f = next(p for p in gc.params_of(fixed_loss) if p.name == "W1")
    want = gc.compile(gc.hvp(fixed_loss, W1f, v), backend="numpy")(**feeds(4), **PARAMS)
    np.testing.assert_allclose(dyn, want, rtol=1e-5, atol=1e-7)  # sums in another order


def test_render_a_dynamic_graph(tmp_path):
    loss = mlp(None)[0]
    dot = gc.render(loss, tmp_path / "m.dot", backward=True,
                    values={**feeds(2), **PARAMS}).source
    # drawn at the fed shapes (docs/visualizer.md): the fixed graph's labels and numbers
    assert "input x\\n2×6 float32\\n= mean 0.02207" in dot
    assert "local ∂tanh/∂add = 1 − tanh^2 = mean 0.5326" in dot


def test_training_step_on_a_dynamic_batch():
    def step_for(batch):
        loss = mlp(batch)[0]
        return gc.train.make_train_step(loss, gc.optim.SGD(0.1), backend="numpy",
                                        initial=PARAMS)
    dyn = step_for(None)
    for n in (3, 5):
        fixed = step_for(n)
        fixed.values.update({k: v.copy() for k, v in dyn.values.items()})
        got, want = dyn(feeds(n, seed=n)), fixed(feeds(n, seed=n))
        assert got == want
        for name in PARAMS:
            np.testing.assert_array_equal(dyn.values[name], fixed.values[name])
    data = feeds(20)
    history = gc.train.fit(dyn, data, epochs=2, batch_size=6, progress=False)
    assert len(history.history["loss"]) == 2
    with pytest.raises(gc.GraphError, match="share one batch size"):
        gc.train.fit(dyn, data, epochs=1, progress=False)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_scan_over_a_dynamic_batch_equals_the_fixed_shape_scan(backend):
    """gc.scan with a dynamic batch dimension in init and xs: one deferred node per output,
    the weights it closes over still get their gradients (not zeros)."""
    rng = np.random.default_rng(0)
    W = gc.param("sW", (3, 4))
    U = gc.param("sU", (4, 4))

    def build(batch):
        xs = gc.input("sxs", (5, batch, 3))
        h0 = gc.input("sh0", (batch, 4))
        h, ys = gc.scan(lambda h, x: (gc.tanh(x @ W + h @ U),) * 2, h0, xs)
        loss = gc.mean(ys) + gc.sum(h)
        return [loss, *gc.grad(loss, [W, U, h0])]

    dyn = gc.compile(build(None), backend=backend)
    params = gc.init_params(build(None)[0], seed=1)
    for n in (1, 3):
        feeds = {"sxs": rng.standard_normal((5, n, 3)).astype(np.float32),
                 "sh0": rng.standard_normal((n, 4)).astype(np.float32), **params}
        want = gc.compile(build(n), backend="numpy")(**feeds)
        got = dyn(**feeds)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
        assert np.abs(got[1]).max() > 0 and np.abs(got[2]).max() > 0


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_an_empty_batch_reduced_over_another_axis_is_empty(backend):
    """As NumPy: max over a non-empty axis of an empty batch is an empty result; over the
    empty axis itself it has no identity."""
    d = gc.input("d", (None, 3), "float64")
    f = gc.compile([gc.max(d, axis=1), gc.min(d, axis=-1, keepdims=True),
                    gc.grad(gc.sum(gc.max(d, axis=1)), d)], backend=backend)
    assert [a.shape for a in f(d=np.ones((0, 3)))] == [(0,), (0, 1), (0, 3)]
    np.testing.assert_array_equal(f(d=np.arange(6.0).reshape(2, 3))[0], [2.0, 5.0])
    with pytest.raises(gc.FeedError, match="reduction over an empty axis has no identity"):
        gc.compile(gc.max(d, axis=0), backend=backend)(d=np.ones((0, 3)))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_an_empty_batch_through_convolution_pooling_and_the_mean_losses(backend):
    # conv2d and avg_pool2d reshaped with -1 ("cannot reshape array of size 0"); mse of no
    # elements was 0, where torch's mean (and graphc's other mean losses) give NaN
    x = gc.input("x", (None, 2, 5, 5), "float64")
    w = gc.input("w", (3, 2, 3, 3), "float64")
    h = gc.avg_pool2d(gc.conv2d(x, w, stride=2, padding=1), 2) + gc.max_pool2d(
        gc.conv2d(x, w, padding=1), 3)
    loss = gc.mse(h, h * 0.0)
    f = gc.compile([h, loss, *gc.grad(gc.sum(h), [x, w])], backend=backend)
    out, mse, dx, dw = f(x=np.ones((0, 2, 5, 5)), w=np.ones((3, 2, 3, 3)))
    assert out.shape == (0, 3, 1, 1) and dx.shape == (0, 2, 5, 5)
    assert np.isnan(mse) and np.array_equal(dw, np.zeros((3, 2, 3, 3)))
    rng = np.random.default_rng(0)
    X, W = rng.standard_normal((2, 2, 5, 5)), rng.standard_normal((3, 2, 3, 3))
    xt, wt = (torch.tensor(a, requires_grad=True) for a in (X, W))
    F = torch.nn.functional
    ht = F.avg_pool2d(F.conv2d(xt, wt, stride=2, padding=1), 2) + F.max_pool2d(
        F.conv2d(xt, wt, padding=1), 3)
    ht.sum().backward()
    got = f(x=X, w=W)
    for a, b in zip((got[0], got[2], got[3]), (ht, xt.grad, wt.grad)):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("index", [slice(None, 3), slice(-3, None), slice(1, 3)])
def test_a_bounded_slice_of_a_dynamic_axis_is_dynamic(backend, index):
    """x[:3] of an (n, 3) input is min(n, 3) rows: a mean divides by what it gets and the
    gradient has the fed shape, also when n is below the slice's bound."""
    x = gc.input("x", (None, 3))
    part = x[index]
    assert part.shape == (None, 3)
    f = gc.compile([gc.mean(part), *gc.grad(gc.sum(part * part), [x])], backend=backend)
    for n in (2, 1, 5):
        X = np.arange(3.0 * n, dtype=np.float32).reshape(n, 3) + 1
        mean, dx = f(x=X)
        assert mean == pytest.approx(X[index].mean() if n > 1 or index.start != 1 else np.nan,
                                     nan_ok=True)
        want = np.zeros_like(X)
        want[index] = 2 * X[index]
        np.testing.assert_allclose(dx, want)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_roll_along_a_dynamic_or_named_axis(backend):
    X = np.arange(8, dtype=np.float32).reshape(4, 2)
    for shape in ((None, 2), ("N", 2)):
        x = gc.input("x", shape)
        f = gc.compile([gc.roll(x, 1, axis=0), gc.roll(x, 3)], backend=backend)
        along, flat = f(x=X)
        np.testing.assert_array_equal(along, np.roll(X, 1, 0))
        np.testing.assert_array_equal(flat, np.roll(X, 3))


@pytest.mark.parametrize("shape, to, n", [((None,), (-1, 16), 64), ((None,), (-1, 32), 64),
                                          ((None,), (-1, 11), 22), ((None, 3), (-1, 16), 16)])
def test_reshape_of_a_dynamic_axis_into_rows_of_16_32_or_11(shape, to, n):
    x = gc.input("x", shape)
    X = np.arange(n * int(np.prod([d or 1 for d in shape])), dtype=np.float32)
    X = X.reshape((n, *shape[1:]))
    out = gc.compile(gc.reshape(x, to), backend="numpy")(x=X)
    np.testing.assert_array_equal(out, X.reshape(to))


def test_a_length_derived_from_a_named_dimension_is_neither_fixed_nor_another_name():
    """A stride-2 convolution then a 2-wide pool over T (its probe sizes used to floor to one
    length, taken as fixed), and T - 10 after an 11-wide kernel (which used to land on N's
    probe sizes, tying the length to the batch)."""
    x = gc.input("x", ("N", 3, 1, "T"))
    pooled = gc.max_pool2d(gc.conv2d(x, gc.param("w", (4, 3, 1, 3)), stride=2), (1, 2))
    shorter = gc.conv2d(x, gc.param("w2", (4, 3, 1, 11)))
    assert pooled.shape[:3] == ("N", 4, 1) and not isinstance(pooled.shape[3], int)
    assert shorter.shape[:3] == ("N", 4, 1) and shorter.shape[3] not in ("N", "T") and \
        not isinstance(shorter.shape[3], int)
    target = gc.input("target", shorter.shape)
    loss = gc.sum((shorter - target) ** 2) + gc.sum(pooled)
    params = gc.init_params(loss, seed=0)
    X = np.random.default_rng(0).standard_normal((2, 3, 1, 13)).astype(np.float32)
    out = gc.compile(loss, backend="numpy")(x=X, target=np.zeros((2, 4, 1, 3), np.float32),
                                            **params)
    assert np.isfinite(out)



@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_dynamic_length_scan_closes_over_a_tensor_computed_from_its_xs(backend):
    # mean(xs) closed over by the body of a scan over xs (None, 3): the replay at the fed
    # length met the unfed dynamic xs inside its body ("two different inputs are named
    # 'xs'"); and q = h0 / 2 of the init h0 was no operand of the scan's nodes, so the
    # gradient w.r.t. h0 lost its path through q
    xs = gc.input("xs", (None, 3), "float64")
    h0 = gc.input("h0", (3,), "float64")
    m, q = gc.mean(xs, axis=0), h0 * 0.5
    h, hs = gc.scan(lambda h, x: (h + x * m + q,) * 2, h0, xs)
    loss = gc.sum(hs * hs)
    f = gc.compile([h, hs, *gc.grad(loss, [xs, h0])], backend=backend)
    for n in (4, 2):
        X, H = np.arange(3.0 * n).reshape(n, 3) - 2.0, np.linspace(-1, 1, 3)
        xt, ht = torch.tensor(X, requires_grad=True), torch.tensor(H, requires_grad=True)
        hst = ht + torch.cumsum(xt * xt.mean(0) + ht / 2, 0)
        torch.sum(hst * hst).backward()
        got = f(xs=X, h0=H)
        want = [hst[-1].detach().numpy(), hst.detach().numpy(), xt.grad, ht.grad]
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("closure", ["another input", "the init itself", "the init * 2"])
def test_a_dynamic_batch_scan_closes_over_tensors_of_the_same_dynamic_batch(closure):
    # h + x + B with h of batch None and B another (None, 3) input: the probe traced the
    # body at a stand-in batch of 1009 and B's None could not be told to match it
    hd = gc.input("hd", (None, 3), "float64")
    B = gc.input("B", (None, 3), "float64")
    xs = gc.input("xs3", (4, 3), "float64")
    outer = {"another input": B, "the init itself": hd, "the init * 2": hd * 2.0}[closure]
    c, ys = gc.scan(lambda h, x: (h + x + outer,) * 2, hd, xs)
    assert c.shape == (None, 3) and ys.shape == (4, None, 3)
    grads = gc.grad(gc.sum(ys * ys), [hd, B] if closure == "another input" else [hd])
    f = gc.compile([c, ys, *grads], backend="numpy")
    rng = np.random.default_rng(0)
    for n in (2, 5):
        feeds = {"hd": rng.standard_normal((n, 3)), "B": rng.standard_normal((n, 3)),
                 "xs3": rng.standard_normal((4, 3))}
        t = {k: torch.tensor(v, requires_grad=True) for k, v in feeds.items()}
        o = {"another input": t["B"], "the init itself": t["hd"],
             "the init * 2": t["hd"] * 2.0}[closure]
        h, hs = t["hd"], []
        for x in t["xs3"]:
            h = h + x + o
            hs.append(h)
        hs = torch.stack(hs)
        torch.sum(hs * hs).backward()
        want = [h.detach().numpy(), hs.detach().numpy(), t["hd"].grad.numpy()]
        want += [t["B"].grad.numpy()] if closure == "another input" else []
        got = f(**{k: v for k, v in feeds.items() if closure == "another input" or k != "B"})
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def _nested(kind):
    """Scans whose bodies close over tensors with dynamic dimensions (found by a probe of
    the scan code; each raised a ShapeError, a wrong "leak" error or left an internal input
    in the compiled graph): outputs and the feeds that run them, with NumPy's answer."""
    B = gc.input("B", (None, 2), "float64")
    if kind == "inner init is an outer dynamic input":  # the inner body reads h
        h0, xs = gc.input("h0", (None, 2), "float64"), gc.input("xs", (3, None, 2), "float64")
        out = gc.scan(lambda h, x: (h + gc.scan(lambda g, _: (g + h, g), B, length=2)[0]
                                    + x, None), h0, xs)[0]
        h = np.ones((2, 2))
        for _ in range(3):
            h = h + (1 + 2 * h) + 1
        return out, {"h0": np.ones((2, 2)), "xs": np.ones((3, 2, 2)), "B": np.ones((2, 2))}, h
    if kind == "inner scan of no outer tensor":  # made anew (a new lambda) by every trace
        h0, xs = gc.input("h0", (None, 2), "float64"), gc.input("xs", (3, None, 2), "float64")
        out = gc.scan(lambda h, x: (h + gc.scan(lambda g, _: (g * 0.5, g), B, length=2)[0],
                                    x), h0, xs)[0]
        return out, {"h0": np.ones((2, 2)), "xs": np.ones((3, 2, 2)), "B": np.ones((2, 2))}, \
            np.full((2, 2), 1.75)
    if kind == "fixed-shape scan, dynamic tensor in the body":
        K = gc.input("K", (None, 3), "float64")
        h0, xs = gc.input("h0", (3,), "float64"), gc.input("xs", (4, 3), "float64")
        out = gc.scan(lambda h, x: (h + x + gc.sum(K * h, 0), None), h0, xs)[0]
        return out, {"h0": np.zeros(3), "xs": np.ones((4, 3)), "K": np.ones((2, 3))}, \
            np.full(3, 40.0)
    K = gc.input("K", ("M", 2), "float64")  # named dimensions: M is not the carry's N
    h0, xs = gc.input("h0", ("N", 2), "float64"), gc.input("xs", ("T", "N", 2), "float64")
    out = gc.scan(lambda h, x: (h + x, K * gc.sum(h, 0)), h0, xs)[1]
    want = np.stack([np.ones((5, 2)) * 3 * t for t in range(1, 5)])
    return out, {"h0": np.ones((3, 2)), "xs": np.ones((4, 3, 2)), "K": np.ones((5, 2))}, want


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("kind", ["inner init is an outer dynamic input",
                                  "inner scan of no outer tensor",
                                  "fixed-shape scan, dynamic tensor in the body",
                                  "a named dimension only the closure has"])
def test_scans_close_over_tensors_with_dynamic_dimensions(kind, backend):
    out, feeds, want = _nested(kind)
    np.testing.assert_allclose(gc.compile(out, backend=backend)(**feeds), want, rtol=1e-12)


@pytest.mark.parametrize("call, said", [
    (lambda a, b: gc.scan(lambda c, x: (c + x[0] * x[1], c), gc.constant(np.zeros(2)), (a, b)),
     "xs have unequal lengths along axis 0 (xs[0] (None, 2), xs[1] (4,))"),
    (lambda a, b: gc.scan(lambda c, x: (c + x, c), gc.constant(np.zeros(2)), a, length=5),
     "length=5 but xs have length None"),
    (lambda a, b: gc.scan(lambda c, x: (gc.sum(c, axis=0) + x[0], x), a, a),
     "fn changes the shape of carry from (None, 2) to (2,)"),
    (lambda a, b: gc.scan(lambda c, x: (c + x, c), gc.constant(np.zeros(2)),
                          gc.input("t", ("T", 2), "float64"), length=5),
     "length=5 but xs have length 'T'"),
])
def test_a_dynamic_scans_errors_give_the_users_shapes(call, said):
    """They gave the probe's stand-in size, 1009, which no one fed: 'xs have length 1009'."""
    a, b = gc.input("a", (None, 2), "float64"), gc.input("b", (4,), "float64")
    with pytest.raises(gc.ShapeError) as err:
        call(a, b)
    assert said in str(err.value) and "1009" not in str(err.value)
