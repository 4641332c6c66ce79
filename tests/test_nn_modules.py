"""gc.nn modules (graphc/nn.py) against PyTorch: forward values and gradients of every
module with the same weights, in float64; plus naming, scopes, weight sharing, state and
initializer statistics."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
import graphc.nn as nn

torch = pytest.importorskip("torch")
T = torch.nn

F64 = "float64"


def _t(a, grad=False):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=grad)


def _forward_and_grads(y, wrt, feeds, seed=0):
    """y's value and the gradients of sum(y * R) for a random R, on the NumPy backend."""
    ys = list(y) if isinstance(y, (list, tuple)) else [y]
    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=t.shape) for t in ys]
    total = None
    for t, r in zip(ys, weights):
        term = gc.sum(t * gc.constant(r))
        total = term if total is None else total + term
    grads = gc.grad(total, list(wrt))
    out = gc.compile([*ys, *grads], backend="numpy")(feeds)
    return out[:len(ys)], out[len(ys):], weights


def _torch_backward(ys, weights):
    total = sum((y * torch.tensor(r)).sum() for y, r in zip(ys, weights))
    total.backward()


def _close(a, b, rtol=1e-9, atol=1e-10):
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else b
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------
# Dense, convolution, pooling


@pytest.mark.parametrize("act", [None, "relu", "tanh"])
def test_dense_matches_linear(act):
    rng = np.random.default_rng(1)
    layer = nn.Dense(5, 3, activation=act, dtype=F64)
    x = gc.input("x", (4, 5), F64)
    W, b = layer["W"], layer["b"]
    vals = {"x": rng.normal(size=(4, 5)), W.name: rng.normal(size=(5, 3)),
            b.name: rng.normal(size=3)}
    (y,), grads, R = _forward_and_grads(layer(x), [x, W, b], vals)
    lin = T.Linear(5, 3).double()
    with torch.no_grad():
        lin.weight.copy_(_t(vals[W.name].T))
        lin.bias.copy_(_t(vals[b.name]))
    xt = _t(vals["x"], True)
    yt = lin(xt)
    yt = {None: yt, "relu": torch.relu(yt), "tanh": torch.tanh(yt)}[act]
    _torch_backward([yt], R)
    _close(y, yt)
    _close(grads[0], xt.grad)
    _close(grads[1], lin.weight.grad.T)
    _close(grads[2], lin.bias.grad)


def test_dense_on_sequences_and_errors():
    layer = nn.Dense(5, 3, name="proj")
    assert layer(gc.input("s", (2, 7, 5))).shape == (2, 7, 3)
    with pytest.raises(gc.ShapeError, match="proj: expects 5 features"):
        layer(gc.input("bad", (2, 4)))
    with pytest.raises(gc.GraphError, match="unknown activation"):
        nn.Dense(2, 2, activation="swishy")
    with pytest.raises(gc.GraphError, match="identifier"):
        nn.Dense(2, 2, name="fc-1")


def test_conv2d_matches_torch():
    rng = np.random.default_rng(2)
    layer = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, activation="relu", dtype=F64)
    x = gc.input("x", (2, 4, 7, 7), F64)
    W, b = layer["W"], layer["b"]
    vals = {"x": rng.normal(size=(2, 4, 7, 7)), W.name: rng.normal(size=W.shape),
            b.name: rng.normal(size=6)}
    (y,), grads, R = _forward_and_grads(layer(x), [x, W, b], vals)
    conv = T.Conv2d(4, 6, 3, stride=2, padding=1, groups=2).double()
    with torch.no_grad():
        conv.weight.copy_(_t(vals[W.name]))
        conv.bias.copy_(_t(vals[b.name]))
    xt = _t(vals["x"], True)
    yt = torch.relu(conv(xt))
    _torch_backward([yt], R)
    _close(y, yt)
    _close(grads[0], xt.grad)
    _close(grads[1], conv.weight.grad)
    _close(grads[2], conv.bias.grad)


def test_pooling_and_flatten_modules():
    rng = np.random.default_rng(3)
    xv = rng.normal(size=(2, 3, 6, 6))
    x = gc.input("x", xv.shape, F64)
    model = nn.Sequential(nn.MaxPool2d(2), nn.AvgPool2d(3, stride=1, padding=1), nn.Flatten())
    gap = nn.GlobalAvgPool2d()(x)
    y, g = gc.compile([model(x), gap], backend="numpy")(x=xv)
    xt = _t(xv)
    ref = T.Flatten()(T.AvgPool2d(3, stride=1, padding=1)(T.MaxPool2d(2)(xt)))
    _close(y, ref)
    _close(g, xt.mean(dim=(2, 3)))


# ---------------------------------------------------------------------------------------
# Normalisation, dropout, embedding


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5, 5)])
def test_batch_norm_training_matches_torch(shape):
    rng = np.random.default_rng(4)
    bn = nn.BatchNorm(3, momentum=0.2, dtype=F64, name="bn")
    x = gc.input("x", shape, F64)
    y = bn(x, training=True)
    upd = bn.state_updates()
    assert list(upd) == ["bn_running_mean", "bn_running_var"]
    vals = {"x": rng.normal(size=shape) * 2 + 1, "bn_gamma": rng.normal(size=3),
            "bn_beta": rng.normal(size=3), "bn_running_mean": rng.normal(size=3),
            "bn_running_var": rng.uniform(0.5, 2, size=3)}
    f = gc.compile([upd["bn_running_mean"], upd["bn_running_var"]], backend="numpy")
    new_mean, new_var = f({k: v for k, v in vals.items() if k in f.input_names})
    (yv,), grads, R = _forward_and_grads(y, [x, bn["gamma"], bn["beta"]],
                                          {k: v for k, v in vals.items() if "running" not in k})
    tb = (T.BatchNorm1d if len(shape) == 2 else T.BatchNorm2d)(3, momentum=0.2).double()
    with torch.no_grad():
        tb.weight.copy_(_t(vals["bn_gamma"]))
        tb.bias.copy_(_t(vals["bn_beta"]))
        tb.running_mean.copy_(_t(vals["bn_running_mean"]))
        tb.running_var.copy_(_t(vals["bn_running_var"]))
    xt = _t(vals["x"], True)
    yt = tb.train()(xt)
    _torch_backward([yt], R)
    _close(yv, yt)
    _close(new_mean, tb.running_mean)
    _close(new_var, tb.running_var)
    _close(grads[0], xt.grad, rtol=1e-8, atol=1e-9)
    _close(grads[1], tb.weight.grad)
    _close(grads[2], tb.bias.grad)
    # evaluation mode normalises with the (updated) running statistics
    ye = gc.compile(bn(x), backend="numpy")(
        x=vals["x"], bn_gamma=vals["bn_gamma"], bn_beta=vals["bn_beta"],
        bn_running_mean=new_mean, bn_running_var=new_var)
    _close(ye, tb.eval()(xt))


def test_batch_norm_state_and_init():
    bn = nn.BatchNorm(4, name="bn0")
    assert list(bn.parameters()) == ["bn0_gamma", "bn0_beta"]
    assert list(bn.state()) == ["bn0_running_mean", "bn0_running_var"]
    init = bn.init_state()
    assert (init["bn0_running_mean"] == 0).all() and (init["bn0_running_var"] == 1).all()
    assert bn.state_updates() == {}  # nothing until a training call
    assert bn(gc.input("x", (2, 4))).shape == (2, 4)
    assert bn.state_updates() == {}  # evaluation calls record no update


def test_layer_norm_matches_torch():
    rng = np.random.default_rng(5)
    ln = nn.LayerNorm((4, 6), dtype=F64)
    x = gc.input("x", (3, 4, 6), F64)
    g, b = ln["gamma"], ln["beta"]
    vals = {"x": rng.normal(size=(3, 4, 6)), g.name: rng.normal(size=(4, 6)),
            b.name: rng.normal(size=(4, 6))}
    (y,), grads, R = _forward_and_grads(ln(x), [x, g, b], vals)
    tl = T.LayerNorm((4, 6)).double()
    with torch.no_grad():
        tl.weight.copy_(_t(vals[g.name]))
        tl.bias.copy_(_t(vals[b.name]))
    xt = _t(vals["x"], True)
    yt = tl(xt)
    _torch_backward([yt], R)
    _close(y, yt)
    _close(grads[0], xt.grad, rtol=1e-8, atol=1e-9)
    _close(grads[1], tl.weight.grad)
    _close(grads[2], tl.bias.grad)


def test_dropout_modes_and_seeds():
    x = gc.input("x", (200, 50), F64)
    d1, d2 = nn.Dropout(0.3, name="drop1"), nn.Dropout(0.3, name="drop2")
    assert d1(x) is x  # evaluation: identity
    y1, y2 = d1(x, training=True), d2(x, training=True)
    f = gc.compile([y1, y2], backend="numpy")
    assert f.input_names == ("x", nn.SEED_INPUT)
    ones = np.ones((200, 50))
    a, b = f(x=ones, dropout_seed=np.int64(0))
    c, _ = f(x=ones, dropout_seed=np.int64(1))
    assert set(np.unique(a)) == {0.0, 1 / 0.7}  # inverted dropout keeps the expectation
    assert abs((a == 0).mean() - 0.3) < 0.02
    assert (a != b).any() and (a != c).any()  # layers and steps draw their own masks
    a2, _ = f(x=ones, dropout_seed=np.int64(0))
    np.testing.assert_array_equal(a, a2)


def test_embedding_matches_torch():
    rng = np.random.default_rng(6)
    emb = nn.Embedding(10, 4, dtype=F64)
    idx = gc.input("idx", (3, 5), "int64")
    iv = rng.integers(0, 10, size=(3, 5))
    E = emb["E"]
    vals = {"idx": iv, E.name: rng.normal(size=(10, 4))}
    (y,), (gE,), R = _forward_and_grads(emb(idx), [E], vals)
    te = T.Embedding(10, 4).double()
    with torch.no_grad():
        te.weight.copy_(_t(vals[E.name]))
    yt = te(torch.tensor(iv))
    _torch_backward([yt], R)
    _close(y, yt)
    _close(gE, te.weight.grad)


# ---------------------------------------------------------------------------------------
# Recurrent layers


def _copy_rnn(kind, layer, vals, rng, H, Fdim):
    """Random graphc weights and the torch module holding the same ones."""
    G = {"RNN": 1, "LSTM": 4, "GRU": 3}[kind]
    torch_mod = getattr(T, kind)(Fdim, H, batch_first=True).double()
    w_ih, w_hh = rng.normal(size=(G * H, Fdim)) * 0.5, rng.normal(size=(G * H, H)) * 0.5
    b_ih, b_hh = rng.normal(size=G * H) * 0.5, rng.normal(size=G * H) * 0.5
    vals[layer["W_x"].name], vals[layer["W_h"].name] = w_ih.T, w_hh.T
    if kind == "GRU":
        vals[layer["b_x"].name], vals[layer["b_h"].name] = b_ih, b_hh
    else:
        vals[layer["b"].name] = b_ih + b_hh
    with torch.no_grad():
        for name, v in (("weight_ih_l0", w_ih), ("weight_hh_l0", w_hh), ("bias_ih_l0", b_ih),
                        ("bias_hh_l0", b_hh)):
            getattr(torch_mod, name).copy_(_t(v))
    return torch_mod


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("with_state", [False, True])
def test_recurrent_matches_torch(kind, with_state):
    rng = np.random.default_rng(7)
    N, Tn, Fdim, H = 3, 5, 4, 6
    layer = getattr(nn, kind)(Fdim, H, dtype=F64)
    x = gc.input("x", (N, Tn, Fdim), F64)
    vals = {"x": rng.normal(size=(N, Tn, Fdim))}
    tm = _copy_rnn(kind, layer, vals, rng, H, Fdim)
    state, t_state, wrt = None, None, [x]
    if with_state:
        names = ["h0", "c0"] if kind == "LSTM" else ["h0"]
        ins = [gc.input(n, (N, H), F64) for n in names]
        for n in names:
            vals[n] = rng.normal(size=(N, H))
        state = tuple(ins) if kind == "LSTM" else ins[0]
        tt = [_t(vals[n][None], True) for n in names]
        t_state = tuple(tt) if kind == "LSTM" else tt[0]
        wrt += ins
    params = list(layer.parameters().values())
    ys, last = layer(x, state)
    outs = [ys, *(last if kind == "LSTM" else [last])]
    values, grads, R = _forward_and_grads(outs, wrt + params, vals)
    xt = _t(vals["x"], True)
    yt, lt = tm(xt, t_state)
    lt = list(lt) if kind == "LSTM" else [lt]
    _torch_backward([yt, *(s[0] for s in lt)], R)
    _close(values[0], yt)
    for v, s in zip(values[1:], lt):
        _close(v, s[0])
    _close(grads[0], xt.grad)
    if with_state:
        for g, s in zip(grads[1:len(wrt)], tt):
            _close(g, s.grad[0])
    pg = dict(zip(layer.parameters(), grads[len(wrt):]))
    _close(pg[layer["W_x"].name], tm.weight_ih_l0.grad.T)
    _close(pg[layer["W_h"].name], tm.weight_hh_l0.grad.T)
    if kind == "GRU":
        _close(pg[layer["b_x"].name], tm.bias_ih_l0.grad)
        _close(pg[layer["b_h"].name], tm.bias_hh_l0.grad)
    else:
        _close(pg[layer["b"].name], tm.bias_ih_l0.grad)


def test_recurrent_list_input_and_shapes():
    lstm = nn.LSTM(3, 5, name="lstm")
    xs = [gc.input(f"x{t}", (2, 3)) for t in range(4)]
    ys, (h, c) = lstm(xs)
    assert isinstance(ys, list) and len(ys) == 4 and ys[-1].shape == h.shape == c.shape == (2, 5)
    ys2, h2 = nn.GRU(3, 5)(gc.input("seq", (2, 4, 3)))
    assert ys2.shape == (2, 4, 5) and h2.shape == (2, 5)
    with pytest.raises(gc.ShapeError, match="expects 3 features"):
        lstm(gc.input("bad", (2, 4, 7)))
    with pytest.raises(gc.ShapeError, match="initial state"):
        nn.RNN(3, 5)(gc.input("seq", (2, 4, 3)), gc.input("h", (2, 4)))
    with pytest.raises(gc.GraphError, match="truncate"):
        nn.LSTM(3, 5, truncate=0)
    # returns= makes recurrent layers fit in a Sequential
    seq = nn.Sequential(nn.LSTM(3, 5, returns="sequence"), nn.GRU(5, 6, returns="last"),
                        nn.Dense(6, 2))
    assert seq(gc.input("seq", (2, 4, 3))).shape == (2, 2)


def _torch_truncated_lstm(tm, xv, k):
    """torch reference for truncated BPTT: detach (h, c) every k steps."""
    cell = T.LSTMCell(tm.input_size, tm.hidden_size).double()
    with torch.no_grad():
        for a, b in (("weight_ih", "weight_ih_l0"), ("weight_hh", "weight_hh_l0"),
                     ("bias_ih", "bias_ih_l0"), ("bias_hh", "bias_hh_l0")):
            getattr(cell, a).copy_(getattr(tm, b))
    xt = _t(xv, True)
    h = c = torch.zeros(xv.shape[0], tm.hidden_size, dtype=torch.float64)
    outs = []
    for t in range(xv.shape[1]):
        if t and t % k == 0:
            h, c = h.detach(), c.detach()
        h, c = cell(xt[:, t], (h, c))
        outs.append(h)
    return xt, torch.stack(outs, 1), cell


def test_truncated_bptt_cuts_gradients_every_k_steps():
    rng = np.random.default_rng(8)
    N, Tn, Fdim, H, k = 2, 7, 3, 4, 3
    layer = nn.LSTM(Fdim, H, truncate=k, unroll=True, dtype=F64, name="tlstm")
    x = gc.input("x", (N, Tn, Fdim), F64)
    vals = {"x": rng.normal(size=(N, Tn, Fdim))}
    tm = _copy_rnn("LSTM", layer, vals, rng, H, Fdim)
    ys, _ = layer(x, training=True)
    assert layer(x)[0] is not ys  # evaluation mode does not truncate
    R = rng.normal(size=ys.shape)
    loss = gc.sum(ys * gc.constant(R))
    params = list(layer.parameters().values())
    cuts = [t for t in gc.Graph(loss).nodes if t.op.name == "stop_gradient"]
    assert len(cuts) == 2 * ((Tn - 1) // k)  # the op gc.stop_gradient on h and c at each cut
    f = gc.compile([ys, *gc.grad(loss, [x, *params])], backend="numpy")
    assert set(f.input_names) == {"x", *layer.parameters()}  # nothing else to feed
    y, gx, gWx, gWh, gb = f({n: vals[n] for n in f.input_names})
    xt, yt, cell = _torch_truncated_lstm(tm, vals["x"], k)
    (yt * torch.tensor(R)).sum().backward()
    _close(y, yt)
    _close(gx, xt.grad)
    _close(gWx, cell.weight_ih.grad.T)
    _close(gWh, cell.weight_hh.grad.T)
    _close(gb, cell.bias_ih.grad)
    full = gc.compile(gc.grad(gc.sum(layer(x)[0] * gc.constant(R)), params[1]),
                      backend="numpy")({n: vals[n] for n in ["x", *layer.parameters()]})
    assert not np.allclose(full, gWh)  # truncation changed the recurrent gradient


# ---------------------------------------------------------------------------------------
# Attention


def _copy_mha(mha, vals, rng, D, heads):
    tm = T.MultiheadAttention(D, heads, batch_first=True).double()
    w_in, b_in = rng.normal(size=(3 * D, D)) * 0.3, rng.normal(size=3 * D) * 0.3
    w_out, b_out = rng.normal(size=(D, D)) * 0.3, rng.normal(size=D) * 0.3
    for j, c in enumerate("qkv"):
        vals[mha[f"W_{c}"].name] = w_in[j * D:(j + 1) * D].T
        vals[mha[f"b_{c}"].name] = b_in[j * D:(j + 1) * D]
    vals[mha["W_o"].name], vals[mha["b_o"].name] = w_out.T, b_out
    with torch.no_grad():
        tm.in_proj_weight.copy_(_t(w_in))
        tm.in_proj_bias.copy_(_t(b_in))
        tm.out_proj.weight.copy_(_t(w_out))
        tm.out_proj.bias.copy_(_t(b_out))
    return tm


@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_matches_torch(causal):
    rng = np.random.default_rng(9)
    N, Tn, D, heads = 2, 5, 8, 2
    mha = nn.MultiHeadAttention(D, heads, causal=causal, dtype=F64)
    x = gc.input("x", (N, Tn, D), F64)
    vals = {"x": rng.normal(size=(N, Tn, D))}
    tm = _copy_mha(mha, vals, rng, D, heads)
    params = mha.parameters()
    (y,), grads, R = _forward_and_grads(mha(x), [x, *params.values()], vals)
    xt = _t(vals["x"], True)
    mask = torch.triu(torch.ones(Tn, Tn, dtype=torch.bool), 1) if causal else None
    yt, _ = tm(xt, xt, xt, attn_mask=mask, need_weights=False)
    _torch_backward([yt], R)
    _close(y, yt)
    _close(grads[0], xt.grad)
    pg = dict(zip(params, grads[1:]))
    D_ = D
    _close(np.concatenate([pg[mha[f"W_{c}"].name].T for c in "qkv"]), tm.in_proj_weight.grad)
    _close(np.concatenate([pg[mha[f"b_{c}"].name] for c in "qkv"]), tm.in_proj_bias.grad)
    _close(pg[mha["W_o"].name], tm.out_proj.weight.grad.T)
    assert pg[mha["b_o"].name].shape == (D_,)


def test_cross_attention_with_mask_matches_torch():
    rng = np.random.default_rng(10)
    N, Tq, S, D, heads = 2, 3, 4, 6, 3
    mha = nn.MultiHeadAttention(D, heads, dtype=F64)
    q, kv = gc.input("q", (N, Tq, D), F64), gc.input("kv", (N, S, D), F64)
    keep = np.ones((Tq, S), dtype=bool)
    keep[:, -1] = False
    vals = {"q": rng.normal(size=(N, Tq, D)), "kv": rng.normal(size=(N, S, D))}
    tm = _copy_mha(mha, vals, rng, D, heads)
    y = gc.compile(mha(q, kv, mask=gc.constant(keep)), backend="numpy")(vals)
    yt, _ = tm(_t(vals["q"]), _t(vals["kv"]), _t(vals["kv"]),
               attn_mask=torch.tensor(~keep))
    _close(y, yt)
    with pytest.raises(gc.GraphError, match="divisible"):
        nn.MultiHeadAttention(6, 4)


# ---------------------------------------------------------------------------------------
# Composition, naming, scopes, sharing


def test_sequential_names_scopes_and_sharing():
    fc1 = nn.Dense(4, 8, activation="relu", name="fc1")
    model = nn.Sequential(fc1, nn.Dropout(0.5, name="drop"), nn.Dense(8, 4, name="fc2"),
                          gc.tanh, name="mlp")
    x = gc.input("x", (2, 4))
    y = model(x)
    assert list(model.parameters()) == ["fc1_W", "fc1_b", "fc2_W", "fc2_b"]
    assert y.scope == "mlp"  # the trailing gc.tanh belongs to the Sequential
    scopes = {t.scope for t in gc.Graph(y).nodes if t.op.name != "constant"}
    assert {"mlp/fc1", "mlp/fc2"} <= scopes
    assert model.parameters()["fc1_W"].scope == "mlp/fc1"  # params inside their cluster
    # calling a module again reuses its parameters (weight sharing)
    twice = model(model(x))
    assert {p.op.label for p in gc.params_of(twice)} == set(model.parameters())
    assert model.num_params() == 4 * 8 + 8 + 8 * 4 + 4
    assert "Dense(4 -> 8, relu, name='fc1')" in repr(model)
    table = nn.Sequential(model, nn.BatchNorm(4, name="bn_sum"), name="outer").summary()
    assert "fc1_W" in table and "bn_sum_running_var" in table and "state" in table
    assert table.splitlines()[-1] == "outer: 84 trainable parameters"


def test_parameters_before_any_call_use_the_module_tree_scopes():
    block = nn.Sequential(nn.Dense(3, 3, name="inner"), name="block")
    res = nn.Residual(block, activation="relu", name="res")
    params = res.parameters()
    assert params["inner_W"].scope == "res/block/inner"
    y = res(gc.input("x", (2, 3)))
    assert y.shape == (2, 3) and params["inner_W"] is res.parameters()["inner_W"]


def test_duplicate_module_names_are_rejected():
    model = nn.Sequential(nn.Dense(3, 3, name="same"), nn.Dense(3, 3, name="same"))
    with pytest.raises(gc.GraphError, match="unique names"):
        model.parameters()
    auto = nn.Sequential(nn.Dense(3, 3), nn.Dense(3, 3))
    assert len(auto.parameters()) == 4  # automatic names are unique


def test_residual_with_projection_matches_manual():
    rng = np.random.default_rng(11)
    body = nn.Dense(3, 5, activation="relu", dtype=F64, name="body")
    proj = nn.Dense(3, 5, bias=False, dtype=F64, name="proj")
    res = nn.Residual(body, shortcut=proj, name="blk")
    x = gc.input("x", (4, 3), F64)
    vals = {"x": rng.normal(size=(4, 3)), **res.init_params(seed=1)}
    y = gc.compile(res(x), backend="numpy")(vals)
    ref = np.maximum(vals["x"] @ vals["body_W"] + vals["body_b"], 0) + vals["x"] @ vals["proj_W"]
    _close(y, ref)
    with pytest.raises(gc.ShapeError, match="shortcut"):
        nn.Residual(nn.Dense(3, 5, name="wide"))(x)


# ---------------------------------------------------------------------------------------
# Initializers


def test_initializer_statistics():
    dense = nn.Dense(400, 600, name="xav")  # Xavier: sigma = sqrt(2 / (n_in + n_out))
    he = nn.Dense(400, 600, activation="relu", name="he")  # He: sigma = sqrt(2 / n_in)
    conv = nn.Conv2d(16, 32, 3, activation="relu", name="conv_he")
    v = {**dense.init_params(), **he.init_params(), **conv.init_params()}
    assert v["xav_W"].std() == pytest.approx(np.sqrt(2 / 1000), rel=0.02)
    assert v["he_W"].std() == pytest.approx(np.sqrt(2 / 400), rel=0.02)
    assert v["conv_he_W"].std() == pytest.approx(np.sqrt(2 / (16 * 9)), rel=0.03)
    assert abs(v["xav_W"].mean()) < 0.003 and (v["xav_b"] == 0).all()
    assert v["xav_W"].dtype == np.float32


def test_recurrent_initializers_per_gate():
    lstm = nn.LSTM(300, 200, name="init_lstm")
    v = lstm.init_params(seed=3)
    wx, wh = v["init_lstm_W_x"], v["init_lstm_W_h"]
    assert wx.shape == (300, 800) and wh.shape == (200, 800)
    for g in range(4):
        block = wx[:, g * 200:(g + 1) * 200]
        assert block.std() == pytest.approx(np.sqrt(2 / 500), rel=0.03)
        q = wh[:, g * 200:(g + 1) * 200].astype(np.float64)
        np.testing.assert_allclose(q.T @ q, np.eye(200), atol=1e-5)  # orthogonal
    assert (v["init_lstm_b"] == 0).all()


def test_layer_names_become_diagram_clusters(tmp_path):
    model = nn.Sequential(nn.Dense(3, 4, activation="relu", name="enc"),
                          nn.Dense(4, 2, name="dec"), name="autoenc")
    y = model(gc.input("x", (2, 3)))
    path = tmp_path / "model.dot"
    gc.render(y, str(path))
    dot = path.read_text()
    for label in ("autoenc", "enc", "dec"):
        assert f"label={label} " in dot
    assert dot.count("subgraph cluster_") == 3
