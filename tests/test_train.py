"""graphc/train.py: the compiled train and eval steps, fit (progress, history, early
stopping), state fed back (batch norm, dropout seeds, carried RNN state, truncated BPTT),
and .npz parameter files."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
import graphc.nn as nn
import graphc.optim as optim
import graphc.train as train
import graphc.train_loop as train_loop


def _blobs(n, seed=0):
    """Two linearly separable Gaussian blobs in 4-D; labels 0/1."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    x = rng.normal(size=(n, 4)) + np.where(y[:, None] == 1, 2.0, -2.0) * np.array([1, 1, 0, 0])
    return x, y.astype(np.int64)


def _classifier(batch, dtype="float64", name="logreg"):
    model = nn.Dense(4, 2, name=name, dtype=dtype)
    x, y = gc.input("x", (batch, 4), dtype), gc.input("y", (batch,), "int64")
    logits = model(x)
    acc = gc.mean(gc.cast(gc.equal(_argmax2(logits), y), dtype))
    return model, x, y, logits, gc.softmax_cross_entropy(logits, y), acc


def _argmax2(logits):
    return gc.cast(logits[:, 1] > logits[:, 0], "int64")


def test_logistic_regression_end_to_end():
    X, Y = _blobs(300)
    Xv, Yv = _blobs(101, seed=1)
    _, _, _, _, loss, acc = _classifier(32)
    step = train.make_train_step(loss, optim.Adam(lr=0.1), metrics={"acc": acc},
                                 backend="numpy")
    assert step.batch_size == 32 and set(step.data_inputs) == {"x", "y"}
    _, _, _, _, eval_loss, eval_acc = _classifier(50)
    ev = train.make_eval_step({"loss": eval_loss, "acc": eval_acc}, backend="numpy")
    hist = train.fit(step, {"x": X, "y": Y}, epochs=5, val_data={"x": Xv, "y": Yv},
                     eval_step=ev, progress=False)
    assert hist.epochs == 5 and list(hist.keys()) == ["loss", "acc", "lr", "val_loss",
                                                     "val_acc"]
    assert all(len(v) == 5 for v in hist.history.values())
    assert hist["loss"][-1] < hist["loss"][0] and hist["val_acc"][-1] >= 0.97
    assert step.step == 5 * (300 // 32)  # the last partial batch is dropped
    assert "epochs=5" in repr(hist)


def test_eval_step_pads_the_last_batch_exactly():
    X, Y = _blobs(23)
    model, x, y, logits, _, _ = _classifier(10)
    per_sample = -gc.sum(gc.log_softmax(logits) * gc.cast(
        gc.equal(gc.reshape(y, (-1, 1)), gc.constant(np.arange(2))), "float64"), axis=1)
    ev = train.make_eval_step({"nll": per_sample, "logits": logits}, backend="numpy")
    values = model.init_params(seed=4)
    res = ev.evaluate({"x": X, "y": Y}, values)
    z = X @ values["logreg_W"] + values["logreg_b"]
    nll = -(z - np.log(np.exp(z).sum(1, keepdims=True)))[np.arange(23), Y]
    assert res["nll"] == pytest.approx(nll.mean(), rel=1e-12)
    pred = ev.predict({"x": X, "y": Y}, values)
    np.testing.assert_allclose(pred["logits"], z, rtol=1e-12)
    assert pred["nll"].shape == (23,)


def test_progress_print_and_bar(capsys):
    X, Y = _blobs(64)
    _, _, _, _, loss, acc = _classifier(16, name="prog")
    step = train.make_train_step(loss, optim.SGD(lr=0.1), metrics={"acc": acc},
                                 backend="numpy")
    train.fit(step, {"x": X, "y": Y}, epochs=2, progress="print")
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[1].startswith("epoch 2/2  loss ") and "acc " in out[1]
    train.fit(step, {"x": X, "y": Y}, epochs=1, progress=True)  # not a tty: prints
    assert capsys.readouterr().out.startswith("epoch 1/1")
    if train_loop._tqdm() is not None:
        train.fit(step, {"x": X, "y": Y}, epochs=1, progress="bar")
        captured = capsys.readouterr()
        assert "epoch 1/1" in captured.err and "loss=" in captured.err
    train.fit(step, {"x": X, "y": Y}, epochs=1, progress=False)
    assert capsys.readouterr().out == ""


def test_early_stopping_logic():
    es = train.EarlyStopping(monitor="val_loss", patience=2, min_delta=0.1)
    stops = [es.update(v) for v in [1.0, 0.8, 0.75, 0.85, 0.5, 0.6, 0.55]]
    assert stops == [False, False, False, True, False, False, True]
    es.reset()
    assert es.best is None and not es.update(3.0)
    up = train.EarlyStopping(monitor="val_acc", patience=1)
    assert up.mode == "max" and [up.update(v) for v in [0.5, 0.6, 0.6]] == [False, False, True]
    assert up.best_epoch == 1
    nan = train.EarlyStopping(patience=1)
    assert [nan.update(v) for v in [1.0, float("nan")]] == [False, True]
    with pytest.raises(ValueError, match="mode"):
        train.EarlyStopping(mode="up")
    with pytest.raises(ValueError, match="patience"):
        train.EarlyStopping(patience=0)


def test_fit_stops_early_and_restores_the_best_values():
    X, Y = _blobs(64)
    _, _, _, _, loss, _ = _classifier(16, name="es")
    step = train.make_train_step(loss, optim.SGD(lr=0.1), backend="numpy")
    scores = iter([0.9, 0.5, 0.7, 0.8, 0.9, 0.1])
    seen = []

    def eval_fn(s):
        seen.append({k: v.copy() for k, v in s.values.items()})
        return {"score": next(scores)}

    hist = train.fit(step, {"x": X, "y": Y}, epochs=6, eval_fn=eval_fn, progress=False,
                     early_stopping=train.EarlyStopping("score", patience=2, mode="min"))
    assert hist.stopped_early and hist.epochs == 4 and hist.best_epoch == 1
    assert hist["score"] == [0.9, 0.5, 0.7, 0.8]
    for k, v in seen[1].items():
        np.testing.assert_array_equal(step.values[k], v)
    with pytest.raises(KeyError, match="monitors 'val_loss'"):
        train.fit(step, {"x": X, "y": Y}, epochs=1, progress=False,
                  early_stopping=train.EarlyStopping())


def test_fit_errors():
    X, Y = _blobs(64)
    _, _, _, _, loss, _ = _classifier(16, name="errs")
    step = train.make_train_step(loss, optim.SGD(lr=0.1), backend="numpy")
    with pytest.raises(ValueError, match="built for batches of 16"):
        train.fit(step, {"x": X, "y": Y}, batch_size=32, progress=False)
    with pytest.raises(ValueError, match="fewer than one batch"):
        train.fit(step, {"x": X[:8], "y": Y[:8]}, progress=False)
    with pytest.raises(ValueError, match="differ in length"):
        train.fit(step, {"x": X, "y": Y[:10]}, progress=False)
    with pytest.raises(ValueError, match="both val_data and eval_step"):
        train.fit(step, {"x": X, "y": Y}, val_data={"x": X, "y": Y}, progress=False)
    with pytest.raises(gc.FeedError, match="lacks 'y'"):
        train.fit(step, {"x": X, "z": Y}, progress=False)
    with pytest.raises(gc.GraphError, match="scalar"):
        train.make_train_step(loss, optim.SGD(), metrics={"bad": gc.input("v", (2,))})
    with pytest.raises(gc.GraphError, match="not a param or state"):
        train.make_train_step(loss, optim.SGD(), initial={"nope": 1.0}, backend="numpy")


def test_frozen_params_stay_put():
    x = gc.input("x", (4, 3), "float64")
    body, head = nn.Dense(3, 3, name="body", dtype="float64"), nn.Dense(3, 1, name="head",
                                                                        dtype="float64")
    loss = gc.mean(gc.square(head(body(x))))
    step = train.make_train_step(loss, optim.SGD(lr=0.1), params=head.parameters(),
                                 backend="numpy")
    before = {k: v.copy() for k, v in step.values.items()}
    step(x=np.ones((4, 3)))
    assert set(step.params) == {"head_W", "head_b"}
    np.testing.assert_array_equal(step.values["body_W"], before["body_W"])
    assert not np.array_equal(step.values["head_W"], before["head_W"])


def test_batch_norm_state_is_fed_back_and_used_in_evaluation():
    rng = np.random.default_rng(5)
    model = nn.Sequential(nn.BatchNorm(3, name="bn", dtype="float64"),
                          nn.Dense(3, 1, name="out", dtype="float64"), name="bnnet")
    x = gc.input("x", (8, 3), "float64")
    loss = gc.mean(gc.square(model(x, training=True)))
    step = train.make_train_step(loss, optim.SGD(lr=0.0), model=model, backend="numpy")
    assert (step.values["bn_running_var"] == 1).all()  # carried by the input op itself
    assert model.state()["bn_running_var"].op.state == 1.0
    b1, b2 = rng.normal(size=(8, 3)) + 3, rng.normal(size=(8, 3)) - 1
    step(x=b1)
    step(x=b2)
    mean = 0.9 * (0.1 * b1.mean(0)) + 0.1 * b2.mean(0)
    np.testing.assert_allclose(step.values["bn_running_mean"], mean, rtol=1e-12)
    var = 0.9 * (0.9 + 0.1 * b1.var(0, ddof=1)) + 0.1 * b2.var(0, ddof=1)
    np.testing.assert_allclose(step.values["bn_running_var"], var, rtol=1e-12)
    ev = train.make_eval_step(model(x), backend="numpy")
    assert ev.batch_size == 8 and set(ev.data_inputs) == {"x"}
    out = ev({"x": b1}, step)["output"]
    v = step.values
    ref = (b1 - v["bn_running_mean"]) / np.sqrt(v["bn_running_var"] + 1e-5) * v["bn_gamma"] \
        + v["bn_beta"]
    np.testing.assert_allclose(out, ref @ v["out_W"] + v["out_b"], rtol=1e-10)


def test_dropout_seed_changes_every_step():
    x = gc.input("x", (50, 20), "float64")
    w = gc.param("w_drop", (20,), init="ones", dtype="float64")
    out = nn.Dropout(0.5, name="d")(x * w, training=True)
    loss = gc.mean(out)
    step = train.make_train_step(loss, optim.SGD(lr=0.0), metrics={"kept": gc.mean(
        gc.cast(out > 0, "float64"))}, backend="numpy")
    seen = [step(x=np.ones((50, 20))) for _ in range(3)]
    assert len({s["loss"] for s in seen}) == 3 and all(0.4 < s["kept"] < 0.6 for s in seen)
    again = train.make_train_step(loss, optim.SGD(lr=0.0), backend="numpy")
    assert again(x=np.ones((50, 20)))["loss"] == seen[0]["loss"]  # same seed, same masks


def test_carried_state_links_chunks_of_a_sequence():
    rng = np.random.default_rng(6)
    N, Tc, Fdim, H = 2, 3, 2, 4
    rnn = nn.GRU(Fdim, H, name="stateful", dtype="float64")
    x = gc.input("x", (N, Tc, Fdim), "float64")
    h0 = gc.input("h0", (N, H), "float64")
    ys, h = rnn(x, h0)
    loss = gc.mean(gc.square(ys))
    step = train.make_train_step(loss, optim.SGD(lr=0.0), carry={h0: h},
                                 metrics={"h_sum": gc.sum(h)}, backend="numpy")
    assert "h0" not in step.data_inputs
    xs = rng.normal(size=(N, 2 * Tc, Fdim))
    step(x=xs[:, :Tc])
    second = step(x=xs[:, Tc:])
    full = gc.input("x_full", (N, 2 * Tc, Fdim), "float64")
    f = gc.compile(gc.sum(rnn(full)[1]), backend="numpy")
    ref = f(x_full=xs, **{k: step.values[k] for k in rnn.parameters()})
    assert second["h_sum"] == pytest.approx(float(ref), rel=1e-12)
    step.reset_carry()
    assert not step.carry["h0"].any()


class _Counted:
    """A compiled function that counts its calls."""

    def __init__(self, fn, calls):
        self.fn, self.calls = fn, calls

    def __call__(self, *args, **kwargs):
        self.calls.append(1)
        return self.fn(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.fn, name)


def test_truncated_lstm_trains_in_one_compiled_call_per_step(monkeypatch):
    """The unrolled truncated LSTM cuts with the op gc.stop_gradient: the step compiles one
    function and calls it once per step (no forward pre-pass feeding cut inputs)."""
    rng = np.random.default_rng(7)
    made, calls = [], []
    real = train.compile
    monkeypatch.setattr(train, "compile",
                        lambda *a, **k: made.append(_Counted(real(*a, **k), calls)) or made[-1])
    lstm = nn.LSTM(2, 3, truncate=2, unroll=True, name="tb", dtype="float64")
    x = gc.input("x", (4, 5, 2), "float64")
    loss = gc.mean(gc.square(lstm(x, training=True)[0] - 0.5))
    step = train.make_train_step(loss, optim.Adam(lr=0.05), backend="numpy")
    step_ir = gc.Graph([loss, *step.update.new_params.values()])
    cuts = [t for t in step_ir.nodes if t.op.name == "stop_gradient"]
    assert len(cuts) == 4 and {t.inputs[0].name for t in cuts} == {"h", "c"}  # t = 2, 4
    assert set(step.fn.input_names) == {"x", *lstm.parameters(), *step.opt_state,
                                        "opt_lr", "opt_t"}  # no cut inputs to feed
    assert len(made) == 1 and set(step.data_inputs) == {"x"}
    xv = rng.normal(size=(4, 5, 2))
    plain = gc.compile(gc.mean(gc.square(lstm(x)[0] - 0.5)), backend="numpy")
    expected = plain(x=xv, **{k: step.values[k] for k in lstm.parameters()})
    first = step(x=xv)["loss"]
    assert first == pytest.approx(float(expected), rel=1e-12)  # same forward value
    for _ in range(30):
        last = step(x=xv)["loss"]
    assert last < first and len(made) == 1 and len(calls) == 31


def test_save_and_load_round_trip(tmp_path):
    X, Y = _blobs(64)
    model, _, _, _, loss, _ = _classifier(16, name="ckpt")
    step = train.make_train_step(loss, optim.Adam(lr=0.1), backend="numpy")
    train.fit(step, {"x": X, "y": Y}, epochs=1, progress=False)
    path = step.save(tmp_path / "model", include_optimizer=True)
    assert path.endswith("model.npz")
    loaded = train.load_params(path, like=model)  # names, shapes and dtypes checked
    np.testing.assert_array_equal(loaded["ckpt_W"], step.values["ckpt_W"])
    # resuming from the file continues exactly like the uninterrupted run
    other = train.make_train_step(loss, optim.Adam(lr=0.1), backend="numpy", seed=9)
    other.load(path)
    assert other.step == step.step
    batch = {"x": X[:16], "y": Y[:16]}
    assert other(batch) == step(batch)
    np.testing.assert_array_equal(other.values["ckpt_W"], step.values["ckpt_W"])
    train.save_params(tmp_path / "plain.npz", model.init_params())
    assert set(train.load_params(tmp_path / "plain")) == {"ckpt_W", "ckpt_b"}


def test_load_errors(tmp_path):
    model = nn.Dense(3, 2, name="errnet")
    good = model.init_params()
    with pytest.raises(train.CheckpointError, match="no parameter file"):
        train.load_params(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(train.CheckpointError, match="not a readable"):
        train.load_params(tmp_path / "junk.npz")
    np.save(tmp_path / "single.npy", np.ones(3))
    with pytest.raises(train.CheckpointError, match="single array"):
        train.load_params(tmp_path / "single.npy")
    bad = {"errnet_W": np.ones((2, 3), np.float32), "errnet_b": np.ones(2, np.float64),
           "extra": np.ones(1)}
    train.save_params(tmp_path / "bad.npz", bad)
    with pytest.raises(train.CheckpointError) as err:
        train.load_params(tmp_path / "bad.npz", like=model)
    text = str(err.value)
    assert "'errnet_W' has shape (2, 3), expected (3, 2)" in text
    assert "'errnet_b' has dtype float64, expected float32" in text
    assert "unexpected 'extra'" in text
    train.save_params(tmp_path / "part.npz", {"errnet_W": good["errnet_W"]})
    with pytest.raises(train.CheckpointError, match="missing 'errnet_b'"):
        train.load_params(tmp_path / "part.npz", like=good)
    with pytest.raises(train.CheckpointError, match="symbolic"):
        train.save_params(tmp_path / "sym.npz", model.parameters())


def test_history_fills_missing_metrics():
    h = train.History()
    h.append({"loss": 1.0})
    h.append({"loss": 0.5, "val_loss": 0.7})
    assert h["loss"] == [1.0, 0.5] and np.isnan(h["val_loss"][0]) and "val_loss" in h


@pytest.mark.skipif("numba" not in gc.compiler.AVAILABLE, reason="no Numba backend")
def test_numba_train_step_matches_numpy():
    X, Y = _blobs(32)
    _, _, _, _, loss, acc = _classifier(16, name="nb")
    steps = [train.make_train_step(loss, optim.SGD(lr=0.2, momentum=0.9),
                                   metrics={"acc": acc}, backend=b) for b in ("numpy", "numba")]
    for k in range(2):
        batch = {"x": X[16 * k:16 * (k + 1)], "y": Y[16 * k:16 * (k + 1)]}
        a, b = (s(batch) for s in steps)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-9)
    np.testing.assert_allclose(steps[0].values["nb_W"], steps[1].values["nb_W"], rtol=1e-9)


def test_training_never_writes_into_the_array_a_callable_init_returned():
    pretrained = np.ones((64, 80), np.float32)  # over 16 KiB: trained in place
    x, y = gc.input("x", (4, 64)), gc.input("y", (4,), "int64")
    W = gc.param("W", (64, 80), init=lambda shape, rng: pretrained)
    loss = gc.softmax_cross_entropy(x @ W, y)
    assert gc.init_params(loss)["W"] is not pretrained
    step = gc.train.make_train_step(loss, gc.optim.SGD(lr=0.1))
    step({"x": np.ones((4, 64), np.float32), "y": np.arange(4)})
    assert (pretrained == 1).all()


@pytest.mark.parametrize("name", ["file", "allow_pickle"])
def test_params_named_like_savez_arguments_round_trip(tmp_path, name):
    saved = {name: np.arange(3.0), "b": np.ones(2)}
    path = gc.train.save_params(tmp_path / "p", saved)
    loaded = gc.train.load_params(path)
    assert sorted(loaded) == sorted(saved)
    np.testing.assert_array_equal(loaded[name], saved[name])


def test_loading_another_optimizers_state_is_a_checkpoint_error(tmp_path):
    x, y = gc.input("x", (4, 3)), gc.input("y", (4,), "int64")
    loss = gc.softmax_cross_entropy(gc.nn.Dense(3, 2, name="d")(x), y)
    sgd = gc.train.make_train_step(loss, gc.optim.SGD(lr=0.1, momentum=0.9), backend="numpy")
    sgd({"x": np.ones((4, 3), np.float32), "y": np.arange(4) % 2})
    path = sgd.save(tmp_path / "sgd", include_optimizer=True)
    adam = gc.train.make_train_step(loss, gc.optim.Adam(lr=0.1), backend="numpy")
    with pytest.raises(gc.train.CheckpointError, match="is not state of Adam"):
        adam.load(path)


def test_a_relu_given_as_a_function_gets_he_init_as_its_name_does():
    stds = [float(np.std(gc.init_params(gc.sum(gc.nn.Dense(400, 600, activation=act,
                                                           name=f"d{k}")(
        gc.input("x", (1, 400)))), seed=0)[f"d{k}_W"])) for k, act in enumerate(("relu",
                                                                                 gc.relu))]
    assert stds[0] == pytest.approx(np.sqrt(2 / 400), rel=0.02)
    assert stds[1] == pytest.approx(stds[0], rel=0.02)


def test_predict_of_a_scalar_output_says_to_use_evaluate():
    x, y = gc.input("x", (4, 3)), gc.input("y", (4,), "int64")
    loss = gc.softmax_cross_entropy(nn.Dense(3, 2, name="d")(x), y)
    ev = train.make_eval_step({"loss": loss}, backend="numpy")
    with pytest.raises(gc.GraphError, match="'loss' is a scalar"):
        ev.predict({"x": np.ones((8, 3), np.float32), "y": np.zeros(8, np.int64)},
                   gc.init_params(loss))
