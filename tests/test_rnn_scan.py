"""gc.nn.RNN, LSTM and GRU built on gc.scan (graphc/nn.py): the same values and gradients
as the unrolled form (``unroll=True``, the reference) and as torch.nn.RNN/LSTM/GRU with
copied weights, bidirectional included, in float64 on the NumPy backend; truncated BPTT as
torch's ``detach()`` every k steps; a graph whose size does not depend on T; and the
diagrams of a scan (one copy of the body, the carry as a back edge labelled with T)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import graphc as gc
import graphc.nn as nn

torch = pytest.importorskip("torch")
T = torch.nn

from test_nn_modules import _t, _torch_truncated_lstm  # noqa: E402  (the same torch references)

F64 = "float64"
GATES = {"RNN": 1, "LSTM": 4, "GRU": 3}


def _weights(kind, layer, vals, rng, tm=None):
    """Random weights for ``layer`` in ``vals``, copied into the torch module ``tm``."""
    G, H, Fdim = GATES[kind], layer.hidden_size, layer.input_size
    for suffix in ("", "_reverse") if layer.bidirectional else ("",):
        w_ih, w_hh = rng.normal(size=(G * H, Fdim)) * 0.5, rng.normal(size=(G * H, H)) * 0.5
        b_ih, b_hh = rng.normal(size=G * H) * 0.5, rng.normal(size=G * H) * 0.5
        vals[layer[f"W_x{suffix}"].name] = w_ih.T
        vals[layer[f"W_h{suffix}"].name] = w_hh.T
        if kind == "GRU":
            vals[layer[f"b_x{suffix}"].name] = b_ih
            vals[layer[f"b_h{suffix}"].name] = b_hh
        else:
            vals[layer[f"b{suffix}"].name] = b_ih + b_hh
        if tm is not None:
            with torch.no_grad():
                for name, v in (("weight_ih", w_ih), ("weight_hh", w_hh), ("bias_ih", b_ih),
                                ("bias_hh", b_hh)):
                    getattr(tm, f"{name}_l0{suffix}").copy_(_t(v))


def _problem(kind, bidirectional=False, N=2, Tn=5, Fdim=3, H=4, seed=0, with_state=True,
             name=None):
    """A layer, its input and initial-state tensors, feeds, and the torch twin."""
    rng = np.random.default_rng(seed)
    layer = getattr(nn, kind)(Fdim, H, bidirectional=bidirectional, dtype=F64, name=name)
    tm = getattr(T, kind)(Fdim, H, batch_first=True, bidirectional=bidirectional).double()
    x = gc.input("x", (N, Tn, Fdim), F64)
    vals = {"x": rng.normal(size=(N, Tn, Fdim))}
    _weights(kind, layer, vals, rng, tm)
    D = 2 if bidirectional else 1
    names = (["h0", "c0"] if kind == "LSTM" else ["h0"]) if with_state else []
    ins = [gc.input(n, (D, N, H) if bidirectional else (N, H), F64) for n in names]
    for n in names:
        vals[n] = rng.normal(size=(D, N, H))[0 if not bidirectional else slice(None)]
    state = (tuple(ins) if kind == "LSTM" else ins[0]) if with_state else None
    return layer, tm, x, ins, state, vals


def _flat(ys, last):
    return [ys, *(last if isinstance(last, tuple) else [last])]


def _values_and_grads(outs, wrt, vals, backend="numpy"):
    """Values of ``outs`` and the gradients of sum_k sum(outs[k] * R_k) (R random)."""
    rng = np.random.default_rng(123)
    R = [rng.normal(size=t.shape) for t in outs]
    loss = sum((gc.sum(t * gc.constant(r.astype(t.dtype))) for t, r in zip(outs, R)),
               gc.constant(0.0, dtype=outs[0].dtype))
    f = gc.compile([*outs, *gc.grad(loss, list(wrt))], backend=backend)
    res = f({n: vals[n] for n in f.input_names})
    return res[:len(outs)], res[len(outs):], R


def _scans(outputs):
    """The loops run by the graph of ``outputs`` (a scan is one node per output)."""
    loops = []
    for t in gc.Graph(outputs).nodes:
        if t.op.name == "scan" and t.op.loop not in loops:
            loops.append(t.op.loop)
    return loops


# ---------------------------------------------------------------------------------------
# Values and gradients: scan == unrolled == torch


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_scan_matches_unrolled_and_torch(kind, bidirectional):
    layer, tm, x, ins, state, vals = _problem(kind, bidirectional, seed=GATES[kind])
    params = list(layer.parameters().values())
    assert not layer.unroll  # scan is the default
    scanned = _flat(*layer(x, state))
    assert len(_scans(scanned)) == (2 if bidirectional else 1)
    layer.unroll = True
    unrolled = _flat(*layer(x, state))
    assert not _scans(unrolled)
    wrt = [x, *ins, *params]
    v_scan, g_scan, R = _values_and_grads(scanned, wrt, vals)
    v_unr, g_unr, _ = _values_and_grads(unrolled, wrt, vals)
    for a, b in zip(v_scan + g_scan, v_unr + g_unr):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)

    xt = _t(vals["x"], True)
    st = [_t(vals[n] if bidirectional else vals[n][None], True) for n in ("h0", "c0")
          if n in vals]
    yt, lt = tm(xt, tuple(st) if kind == "LSTM" else st[0])
    lt = list(lt) if kind == "LSTM" else [lt]
    lt_ours = lt if bidirectional else [s[0] for s in lt]
    torch_outs = [yt, *lt_ours]
    sum((o * _t(r)).sum() for o, r in zip(torch_outs, R)).backward()
    for ours, theirs in zip(v_scan, torch_outs):
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-10, atol=1e-12)
    gx, gstate, gparams = g_scan[0], g_scan[1:1 + len(ins)], g_scan[1 + len(ins):]
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    for g, s in zip(gstate, st):
        np.testing.assert_allclose(g, s.grad.numpy() if bidirectional else s.grad[0].numpy(),
                                   rtol=1e-10, atol=1e-12)
    pg = dict(zip(layer.parameters(), gparams))
    for suffix in ("", "_reverse") if bidirectional else ("",):
        for ours, theirs in (("W_x", "weight_ih"), ("W_h", "weight_hh")):
            np.testing.assert_allclose(pg[layer[ours + suffix].name],
                                       getattr(tm, f"{theirs}_l0{suffix}").grad.numpy().T,
                                       rtol=1e-10, atol=1e-12)
        bias = "b_x" if kind == "GRU" else "b"
        np.testing.assert_allclose(pg[layer[bias + suffix].name],
                                   getattr(tm, f"bias_ih_l0{suffix}").grad.numpy(),
                                   rtol=1e-10, atol=1e-12)


def test_zero_initial_state_and_list_input():
    layer, tm, x, _, _, vals = _problem("GRU", with_state=False, seed=4)
    ys, h = layer(x)
    xs = [gc.input(f"x{t}", (2, 3), F64) for t in range(5)]
    ys_list, h_list = layer(xs)
    assert isinstance(ys_list, list) and len(ys_list) == 5 and ys_list[0].shape == (2, 4)
    assert len(_scans([ys, h])) == 1 and len(_scans(ys_list)) == 1
    feeds = dict(vals, **{f"x{t}": vals["x"][:, t] for t in range(5)})
    f = gc.compile([ys, h, h_list, *ys_list], backend="numpy")
    y, hv, hl, *yl = f({n: feeds[n] for n in f.input_names})
    yt, htt = tm(_t(vals["x"]))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(hv, htt[0].detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(hl, hv, rtol=1e-12)
    np.testing.assert_allclose(np.stack(yl, 1), y, rtol=1e-12)


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_a_dynamic_batch_starts_from_zeros_of_the_fed_batch(kind):
    """The zero state of a (None, T, F) input was np.zeros((None, H)): a bare TypeError.
    unroll=True with a dynamic T is refused, naming the layer."""
    layer = getattr(nn, kind)(3, 4, dtype=F64)
    x = gc.input("x", (None, 5, 3), F64)
    ys, h = layer(x)
    feeds = {**gc.init_params(ys), "x": np.random.default_rng(1).standard_normal((2, 5, 3))}
    fixed = gc.input("x", (2, 5, 3), F64)
    for backend in ("numpy", "numba"):
        got = gc.compile([ys, gc.grad(gc.sum(ys * ys), x)], backend=backend)(feeds)
        want = gc.compile([layer(fixed)[0], gc.grad(gc.sum(layer(fixed)[0] ** 2), fixed)],
                          backend=backend)(feeds)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-12)
    with pytest.raises(gc.ShapeError, match="unroll=True needs a fixed sequence length"):
        getattr(nn, kind)(3, 4, unroll=True, dtype=F64)(gc.input("x", (2, None, 3), F64))
    with pytest.raises(gc.GraphError, match="reverse must be True or False, got 'False'"):
        gc.scan(lambda c, x: (c + x, c), gc.input("h", (3,)), gc.input("xs", (4, 3)),
                reverse="False")


def test_bidirectional_returns_and_errors():
    lstm = nn.LSTM(3, 5, bidirectional=True, name="bi")
    ys, (h, c) = lstm(gc.input("seq", (2, 6, 3)))
    assert ys.shape == (2, 6, 10) and h.shape == c.shape == (2, 2, 5)
    assert set(lstm.parameters()) == {"bi_W_x", "bi_W_h", "bi_b", "bi_W_x_reverse",
                                      "bi_W_h_reverse", "bi_b_reverse"}
    last = nn.GRU(3, 4, bidirectional=True, returns="last")(gc.input("seq", (2, 6, 3)))
    assert last.shape == (2, 8)  # forward and backward final h, concatenated
    with pytest.raises(gc.ShapeError, match=r"initial state must be \(2, 2, 5\)"):
        lstm(gc.input("seq", (2, 6, 3)), (gc.input("h", (2, 5)), gc.input("c", (2, 5))))


# ---------------------------------------------------------------------------------------
# Truncated BPTT and graph size


def test_truncated_scan_cuts_gradients_every_k_steps():
    k = 3
    layer, tm, x, _, _, vals = _problem("LSTM", Tn=7, with_state=False, seed=8)
    layer.truncate = k
    ys, _ = layer(x, training=True)
    assert _scans([ys])[0].truncate == k
    assert not [t for t in gc.Graph(ys).nodes if t.op.name == "stop_gradient"]  # the scan cuts
    params = list(layer.parameters().values())
    (y,), grads, R = _values_and_grads([ys], [x, *params], vals)
    xt, yt, cell = _torch_truncated_lstm(tm, vals["x"], k)
    (yt * _t(R[0])).sum().backward()
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10)
    for ours, theirs in zip(grads, [xt.grad, cell.weight_ih.grad.T, cell.weight_hh.grad.T,
                                    cell.bias_ih.grad]):
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-10, atol=1e-12)
    (_,), full, _ = _values_and_grads([layer(x)[0]], [x, *params], vals)
    assert not np.allclose(full[2], grads[2])  # evaluation mode does not truncate


def test_unrolled_truncation_cuts_with_stop_gradient_as_the_scan_does():
    """``unroll=True`` cuts the state with the op gc.stop_gradient at the scan's steps, in
    both directions: the same values and gradients as the truncated scans."""
    layer, _, x, ins, state, vals = _problem("GRU", bidirectional=True, Tn=5, seed=9)
    layer.truncate = 2
    wrt = [x, *ins, *layer.parameters().values()]
    scanned = _flat(*layer(x, state, training=True))
    layer.unroll = True
    unrolled = _flat(*layer(x, state, training=True))
    cuts = [t for t in gc.Graph(unrolled).nodes if t.op.name == "stop_gradient"]
    assert len(cuts) == 2 * 2 and not _scans(unrolled)  # t = 2, 4 in each direction
    v_scan, g_scan, _ = _values_and_grads(scanned, wrt, vals)
    v_unr, g_unr, _ = _values_and_grads(unrolled, wrt, vals)
    for a, b in zip(v_scan + g_scan, v_unr + g_unr):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    _, full, _ = _values_and_grads(_flat(*layer(x, state)), wrt, vals)  # evaluation mode
    assert not np.allclose(full[0], g_unr[0])  # the cuts changed the gradient


def test_graph_size_does_not_depend_on_sequence_length():
    def size(Tn, unroll=False):
        lstm = nn.LSTM(3, 4, unroll=unroll, bidirectional=True, name=f"len{Tn}")
        ys, (h, c) = lstm(gc.input("x", (2, Tn, 3)))
        loss = gc.mean(ys) + gc.mean(h * c)
        grads = [] if unroll else gc.grad(loss, list(lstm.parameters().values()))
        return len(gc.Graph([loss]).nodes), len(gc.Graph([loss, *grads]).nodes)

    assert size(5) == size(60)
    assert size(5)[1] < 100  # forward and backward
    assert size(60, unroll=True)[0] > 10 * size(5)[0]


# ---------------------------------------------------------------------------------------
# Diagrams: one copy of the body, the carry as a back edge labelled with T


def _lstm_loss(Tn):
    lstm = nn.LSTM(3, 4, name="lstm")
    ys, _ = lstm(gc.input("x", (2, Tn, 3)))
    return gc.mean(ys)


def test_render_draws_one_body_with_the_carry_as_a_back_edge():
    src = gc.render(_lstm_loss(7), backward=True).source
    assert src.count("scan over T=7 steps") == 1
    assert src.count('label="carry ×T=7"') == 2  # h and c
    assert src.count("sigmoid") == 3 and "i: 2×4 float32" in src  # gates i, f, o once
    # the body's edges carry their gradients; the carry's comes back from step t + 1
    assert "upstream ∂L/∂h = ∂L/∂h_prev of step t+1 + ∂L/∂ys0[t]" in src
    assert "local ∂c/∂lstm.mul = 1" in src or "local ∂h/∂o = lstm.tanh" in src
    assert "downstream ∂L/∂h_prev = ∂L/∂lstm.matmul_2 @ lstm_W_hᵀ" in src
    assert "downstream ∂L/∂lstm_W_h = h_prevᵀ @ ∂L/∂lstm.matmul_2 (summed over t)" in src
    long = gc.render(_lstm_loss(50), backward=True).source
    assert (long.count("->"), long.count("\n")) == (src.count("->"), src.count("\n"))


def test_explorer_shows_the_scan_as_a_group_with_its_body():
    page = gc.explore(_lstm_loss(5)).html()
    start = page.index("application/json\">") + len("application/json\">")
    data = json.loads(page[start:page.index("</script>", start)].replace("<\\/", "</"))
    (group,) = [g for g in data["groups"] if "carry" in g]
    assert group["name"] == "scan over T=5 steps" and group["parent"] == "lstm"
    body = {n["name"]: n for n in data["nodes"] if n["group"] == group["id"]}
    assert {"h_prev", "c_prev", "x_t", "i", "f", "g", "o", "c", "h"} <= set(body)
    assert [[a, b] for a, b, _ in group["carry"]] == \
        [[body["h"]["id"], body["h_prev"]["id"]], [body["c"]["id"], body["c_prev"]["id"]]]
    ids = [n["id"] for n in data["nodes"]]
    for n in data["nodes"]:  # listed in an order where every input comes first
        assert all(ids.index(x) < ids.index(n["id"]) for x in n["inputs"])
    ups = {e["up"] for e in data["edges"] if e["from"] == body["h"]["id"]}
    assert ups == {"∂L/∂h_prev of step t+1 + ∂L/∂ys0[t]"}


def _two_output_scan():
    """A loss reading both outputs of one scan: its ys and its final carry."""
    xs, h0 = gc.input("xs", (4, 2), "float64"), gc.input("h0", (2,), "float64")
    W = gc.param("W", (2, 2), dtype="float64")

    def step(h, x):
        hn = gc.tanh(h @ W + x)
        return hn, hn

    hT, ys = gc.scan(step, h0, xs)
    loss = gc.sum(ys * ys) + gc.sum(hT)
    rng = np.random.default_rng(1)
    feeds = {"xs": rng.normal(size=(4, 2)), "h0": np.array([0.1, -0.2]),
             **gc.init_params(loss, seed=1)}
    return loss, (h0, W), feeds


def test_a_loop_edge_names_the_gradients_of_every_output_of_the_loop():
    # the final carry's gradient flows into h0 through the same reverse scan as the ys'
    # gradient: the edge into h0 must show both upstreams, or its formula does not give
    # its number
    loss, (h0, W), feeds = _two_output_scan()
    src = gc.render(loss, backward=True, values=feeds).source
    (into_h0,) = [line for line in src.splitlines() if "downstream ∂L/∂h0" in line]
    assert "upstream ∂L/∂scan_2 = " in into_h0 and "[1, 1]" in into_h0
    assert "reverse scan of (∂L/∂scan, ∂L/∂scan_2)" in into_h0
    total = gc.compile(gc.grad(loss, h0), backend="numpy")(feeds)
    assert f"[{total[0]:.4g}, {total[1]:.4g}]" in into_h0
    page = gc.explore(loss, values=feeds).html()
    start = page.index("application/json\">") + len("application/json\">")
    data = json.loads(page[start:page.index("</script>", start)].replace("<\\/", "</"))
    names = {n["id"]: n["name"] for n in data["nodes"]}
    (edge,) = [e for e in data["edges"] if names[e["to"]] == "h0"]
    assert edge["down"].startswith("reverse scan of (∂L/∂scan, ∂L/∂scan_2)")
    (sib,) = edge["also"]
    assert sib["name"] == "scan_2" and sib["upValue"]["text"] == "[1, 1]"


def _page_data(page: str) -> dict:
    start = page.index("application/json\">") + len("application/json\">")
    return json.loads(page[start:page.index("</script>", start)].replace("<\\/", "</"))


@pytest.mark.parametrize("reverse", [False, True])
def test_diagrams_show_the_body_values_of_the_loops_first_step(reverse):
    # one copy of the body is drawn, so its nodes show the numbers of the step the loop
    # runs first (t = 0, or t = T - 1 for a reverse scan), and the loop's box says which
    xs, h0 = gc.input("xs", (4, 2), "float64"), gc.input("h0", (2,), "float64")
    W = gc.param("W", (2, 2), dtype="float64")
    hT, ys = gc.scan(lambda h, x: (gc.tanh(h @ W + x).named("hn"),) * 2, h0, xs,
                     reverse=reverse)
    loss = gc.sum(ys * ys)
    feeds = {"xs": np.array([[0.5, -1.0], [2.0, 0.25], [1.5, 1.0], [-0.5, 0.75]]),
             "h0": np.array([0.125, -0.25]), "W": np.array([[0.5, -1.0], [0.25, 2.0]])}
    t = 3 if reverse else 0
    first = np.tanh(feeds["h0"] @ feeds["W"] + feeds["xs"][t])
    text = f"[{first[0]:.4g}, {first[1]:.4g}]"
    src = gc.render(loss, values=feeds).source
    assert f"one copy of the step; values of step t={t})" in src
    (hn,) = [line for line in src.splitlines() if "hn: 2 float64" in line]
    assert text in hn
    (x_t,) = [line for line in src.splitlines() if "x_t: 2 float64" in line]
    assert f"[{feeds['xs'][t][0]:.4g}, {feeds['xs'][t][1]:.4g}]" in x_t
    assert "values of step" not in gc.render(loss).source  # no values, no claim
    data = _page_data(gc.explore(loss, values=feeds).html())
    (node,) = [n for n in data["nodes"] if n["name"] == "hn"]
    assert node["step"] == t and node["value"]["text"] == text


def test_an_explorer_id_is_never_a_nodes_name():
    # a display name may be anything, "#0" too: the ids then start with "##", so
    # select("#0") finds the node so named and not the first node
    x = gc.input("x", (2,), "float64")
    h = gc.tanh(x).named("#0")
    hT, ys = gc.scan(lambda c, xt: ((c + xt).named("#s0_1"),) * 2, x, gc.input("xs", (3, 2),
                     "float64"))
    data = _page_data(gc.explore(gc.sum(h * hT)).html())
    ids = {n["id"] for n in data["nodes"]}
    names = {n["name"] for n in data["nodes"]}
    assert "#0" in names and "#s0_1" in names and not ids & names
    assert all(i.startswith("##") for i in ids)
