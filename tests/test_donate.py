"""``gc.compile(..., donate=...)``: outputs written over donated feeds, and the training
step's in-place updates of parameters and optimizer state (issue 18, memory)."""

import numpy as np
import pytest

import graphc as gc
from graphc import optim, train

pytest.importorskip("numba")

N = 80  # 80 x 80 float32: 25 KiB, over FRESH_OUTPUT_BYTES (16 KiB): outputs are fresh arrays


def momentum_update(shape=(N, N)):
    """One SGD-with-momentum update and a loss, as a training step builds them."""
    w, g, m = (gc.input(n, shape) for n in ("w", "g", "m"))
    lr = gc.input("lr", ())
    new_m = 0.9 * m + g
    return [gc.sum(w * w), w - lr * new_m, new_m]


def feeds(seed=0, shape=(N, N)):
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal(shape).astype(np.float32),
            "g": rng.standard_normal(shape).astype(np.float32),
            "m": rng.standard_normal(shape).astype(np.float32),
            "lr": np.asarray(0.1, np.float32)}


def copies(d):
    return {k: v.copy() for k, v in d.items()}


def test_outputs_are_written_over_donated_feeds_and_equal_the_plain_ones():
    outputs = momentum_update()
    plain = gc.compile(outputs, backend="numba")
    donating = gc.compile(outputs, backend="numba", donate=["w", "m"])
    fed = feeds()
    expected = plain(copies(fed))
    given = copies(fed)
    got = donating(given)
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(e, g)
    # the new w and the new m are the arrays fed for w and m (whichever each took)
    assert {id(got[1]), id(got[2])} == {id(given["w"]), id(given["m"])}
    assert donating.stats["donated"] == 2
    assert donating.stats["donated_bytes"] == 2 * N * N * 4
    assert donating.stats["planned_peak_bytes"] <= \
        plain.stats["planned_peak_bytes"] - 2 * N * N * 4
    assert "in place: the same buffer" in donating.source  # the one-pointer kernel variant
    np.testing.assert_array_equal(given["g"], fed["g"])  # not donated: untouched


def test_without_donate_no_feed_is_modified():
    fed = feeds()
    kept = copies(fed)
    got = gc.compile(momentum_update(), backend="numba")(fed)
    for k in fed:
        np.testing.assert_array_equal(fed[k], kept[k])
    assert not any(np.shares_memory(o, f) for o in got for f in fed.values())


@pytest.mark.parametrize("how", ["read-only", "strided", "a view of another feed",
                                 "fed twice", "a view"])
def test_a_donated_feed_the_call_cannot_own_is_copied_and_left_alone(how):
    outputs = momentum_update()
    expected = gc.compile(outputs, backend="numba")(copies(feeds()))
    f = gc.compile(outputs, backend="numba", donate=["w", "m"])
    fed = copies(feeds())
    if how == "read-only":
        fed["w"].setflags(write=False)
    elif how == "strided":
        fed["w"] = np.asfortranarray(fed["w"])
    elif how == "a view of another feed":
        big = np.concatenate([fed["w"], fed["g"]])
        fed["w"], fed["g"] = big[:N], big[N:]
    elif how == "fed twice":  # the same array for m and g: m is copied, g read as fed
        fed["m"] = fed["g"]
        expected = gc.compile(outputs, backend="numba")({**copies(feeds()), "m": feeds()["g"]})
    else:
        fed["w"] = np.ascontiguousarray(fed["w"][:, :])  # a view (base is not None)
        fed["w"] = fed["w"].reshape(N, N)
    before = copies(fed)
    got = f(fed)
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(e, g)
    untouched = ["w"] if how != "fed twice" else ["g", "m"]
    for k in untouched:
        np.testing.assert_array_equal(fed[k], before[k])


def test_an_input_read_after_its_update_is_not_donated():
    w = gc.input("w", (N, N))
    new_w = w * 0.5
    late = gc.sum(w @ new_w)  # reads w after new_w is computed
    f = gc.compile([new_w, late], backend="numba", donate=["w"])
    x = np.random.default_rng(1).standard_normal((N, N)).astype(np.float32)
    before = x.copy()
    a, b = f(w=x)
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(a, before * np.float32(0.5))
    np.testing.assert_allclose(b, np.sum(before @ (before * np.float32(0.5))), rtol=1e-5)
    assert f.stats["donated"] == 0


def test_an_input_that_is_also_an_output_is_not_donated():
    w = gc.input("w", (N, N))
    f = gc.compile([w, w * 2.0], backend="numba", donate="w")
    x = np.ones((N, N), np.float32)
    a, b = f(w=x)
    assert f.stats["donated"] == 0
    np.testing.assert_array_equal(a, 1.0)
    np.testing.assert_array_equal(x, 1.0)
    assert a is not x


def test_donate_names_an_input_or_raises():
    outputs = momentum_update()
    with pytest.raises(ValueError, match=r"donate names 'W'.*inputs are 'g', 'lr', 'm', 'w'"):
        gc.compile(outputs, backend="numba", donate=["W"])
    with pytest.raises(ValueError, match=r"donate maps \{'w': 3\} to no output.* 0 to 2"):
        gc.compile(outputs, backend="numba", donate={"w": 3})


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_donation_keeps_the_values_on_every_backend(backend):
    outputs = momentum_update()
    expected = gc.compile(outputs, backend="numpy")(copies(feeds()))
    fed = copies(feeds())
    got = gc.compile(outputs, backend=backend, donate=["w", "m"])(fed)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-6)
    if backend == "numpy":  # the reference ignores donate: feeds stay as they were
        np.testing.assert_array_equal(fed["w"], feeds()["w"])


def test_a_dynamic_graph_donates_per_specialisation():
    w, g = gc.input("w", ("n", 128)), gc.input("g", ("n", 128))
    f = gc.compile(w - 0.1 * g, backend="numba", donate="w")
    for n in (64, 96):
        x = np.ones((n, 128), np.float32)
        out = f(w=x, g=np.ones((n, 128), np.float32))
        assert out is x
        np.testing.assert_allclose(out, 0.9, rtol=1e-6)


def mlp_step(opt, in_place: bool):
    x = gc.input("x", (32, 40))
    labels = gc.input("labels", (32,), "int64")
    layer1, layer2 = gc.nn.Dense(40, 128, name="l1"), gc.nn.Dense(128, 10, name="l2")
    loss = gc.softmax_cross_entropy(layer2(gc.relu(layer1(x))), labels)
    return train.make_train_step(loss, opt, backend="numba", seed=3, in_place=in_place)


@pytest.mark.parametrize("opt", [optim.SGD(lr=0.05, momentum=0.9), optim.Adam(lr=1e-2)],
                         ids=["sgd-momentum", "adam"])
def test_a_training_step_updates_parameters_and_state_in_place(opt):
    plain, in_place = mlp_step(opt, False), mlp_step(opt, True)
    rng = np.random.default_rng(0)
    batch = {"x": rng.standard_normal((32, 40)).astype(np.float32),
             "labels": rng.integers(0, 10, 32)}
    assert plain.fn.stats.get("donated", 0) == 0
    assert in_place.fn.stats["donated"] >= 2  # the 40x128 weight (20 KiB) and its state at least
    assert in_place.fn.stats["planned_peak_bytes"] < plain.fn.stats["planned_peak_bytes"]
    in_place(batch)
    plain(batch)
    arrays = {**in_place.values, **in_place.opt_state}  # held: ids are not reused
    for _ in range(5):
        assert in_place(batch) == plain(batch)
    for n in in_place.values:
        np.testing.assert_array_equal(in_place.values[n], plain.values[n])
    for n in in_place.opt_state:
        np.testing.assert_array_equal(in_place.opt_state[n], plain.opt_state[n])
    now = {**in_place.values, **in_place.opt_state}
    kept = sorted(n for n in arrays if now[n] is arrays[n])
    # each large array is updated where it lies, step after step, under its own name
    large = sorted(n for n, v in arrays.items() if v.nbytes > 16384)
    assert kept == large and "l1_W" in kept
    assert len(kept) == in_place.fn.stats["donated"]
    old = {n: v for n, v in plain.values.items()}  # in_place=False: new arrays each step
    plain(batch)
    assert not any(plain.values[n] is v for n, v in old.items() if n in plain.params)
