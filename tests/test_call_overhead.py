"""The per-call path of a compiled function (issue 18 item 7): the fast feed check takes
only feeds that the full validator would take as they are, every other feed still gets
the validator's FeedError, feeds are never modified, and every call returns fresh arrays
that no other call's results share."""

import numpy as np
import pytest

import graphc as gc

RNG = np.random.default_rng(7)
FEEDS = {"x": RNG.standard_normal((2, 2)).astype(np.float32),
         "W": RNG.standard_normal(2).astype(np.float32), "b": np.float32(0.1)}


def model(rows=2):
    """A neuron layer on a small batch: loss = sum(tanh(x * W + b)^2) and its gradients
    with respect to W and b (one fused kernel)."""
    x, W, b = gc.input("x", (rows, 2)), gc.input("W", (2,)), gc.input("b", ())
    loss = gc.sum(gc.square(gc.tanh(x * W + b)))
    return [loss, *gc.grad(loss, [W, b])]


@pytest.fixture(scope="module")
def compiled():
    outputs = model()
    return gc.compile(outputs), gc.compile(outputs, backend="numpy")


@pytest.mark.parametrize("change, message", [
    ({"x": np.zeros(4, np.float32)}, "feed 'x' has shape (4,), expected (2, 2)"),
    ({"x": np.zeros((2, 2, 1), np.float32)}, "feed 'x' has shape (2, 2, 1), expected (2, 2)"),
    ({"b": 0.5 + 0j}, "feed 'b' has dtype complex128, expected float32 (a float array)"),
    ({"W": np.ones(2, np.int64)},
     "feed 'W' has dtype int64, expected float32 (a float array)"),
    ({"W": np.ones(2, ">f4")}, None),  # another byte order: converted, not refused
    ({"x": None}, "missing feed(s) for 'x'; the graph needs x (2, 2) float32, W (2,) float32, "
                  "b () float32"),
    ({"Wx": np.ones(2, np.float32)},
     "unknown feed 'Wx' (did you mean 'x'?); the graph takes 'x', 'W', 'b'"),
    ({"x": np.ones((2, 2), object)}, "feed 'x' has dtype object, expected float32 (a float array)"),
])
def test_bad_feeds_raise_the_validators_message(compiled, change, message):
    f, reference = compiled
    f(**FEEDS)  # a good call first: the fast path keeps no state that a bad call could use
    feeds = {k: v for k, v in {**FEEDS, **change}.items() if v is not None}
    for fn in (f, reference):
        if message is None:
            native = {k: np.asarray(v, np.float32) for k, v in feeds.items()}
            np.testing.assert_allclose(fn(**feeds)[1], reference(**native)[1], rtol=1e-6)
            continue
        with pytest.raises(gc.FeedError) as info:
            fn(**feeds)
        assert str(info.value) == message


def test_dynamic_pattern_message_is_unchanged():
    f = gc.compile(model(None))  # the same kernel as the fixed shape's
    loss, _, _ = f(**{**FEEDS, "x": np.ones((3, 2), np.float32)})
    assert loss == pytest.approx(3 * np.sum(np.tanh(FEEDS["W"] + FEEDS["b"]) ** 2), rel=1e-6)
    with pytest.raises(gc.FeedError) as info:
        f(**{**FEEDS, "x": np.ones((3, 4), np.float32)})
    assert str(info.value) == "feed 'x' has shape (3, 4); expected (None, 2) (any size where None)"


def test_same_results_for_converted_strided_and_read_only_feeds(compiled):
    f, reference = compiled
    want = reference(**FEEDS)
    wide = np.zeros((2, 4), np.float32)
    wide[:, ::2] = FEEDS["x"]
    frozen = FEEDS["x"].copy()
    frozen.setflags(write=False)
    variants = [{}, {"x": wide[:, ::2]}, {"x": frozen}, {"W": FEEDS["W"].astype(np.float64)},
                {"b": 0.1}, {"b": np.array(0.1, np.float32)}]
    for change in variants:
        feeds = {**FEEDS, **change}
        before = {k: np.array(v, copy=True) for k, v in feeds.items()}
        for got, ref in zip(f(**feeds), want):
            np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)
        for k, v in feeds.items():  # feeds are never modified
            np.testing.assert_array_equal(v, before[k])
    assert FEEDS["x"].flags.writeable and not frozen.flags.writeable  # flags left alone


def test_outputs_are_fresh_arrays_no_two_calls_share(compiled):
    f, _ = compiled
    first, second = f(**FEEDS), f(FEEDS)
    for a in first:
        assert a.flags.writeable and a.flags.owndata
        for b in second:
            assert not np.shares_memory(a, b)
    kept = [a.copy() for a in first]
    for a in second:
        a[...] = 1e6  # the caller owns its results: writing them changes no later call
    for a, b in zip(f(**FEEDS), kept):
        np.testing.assert_array_equal(a, b)


def test_small_values_are_staged_in_buffers_made_once(compiled):
    f, _ = compiled
    source = f.source.split("\ndef run(", 1)[1].split("# =====", 1)[0]
    assert "_addr(" not in source and "np.empty(" not in source  # no per-call look-up
    assert f.stats["staged_bytes"] > 0
