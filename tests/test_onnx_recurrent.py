"""gc.from_onnx of the recurrent ops LSTM, GRU and RNN: torch's nn.LSTM, nn.GRU and nn.RNN
as torch.onnx exports them, against onnxruntime, torch and torch's autograd (every ONNX
param's gradient is rebuilt from torch's), static and with a dynamic batch, on both
backends; the forms torch does not export (peepholes, GRU's linear_before_reset=0,
layout 1, unequal sequence lengths) against onnxruntime and gc.check_grad; and what is
refused.  Their ONNX node tests run in tests/test_onnx_conformance.py."""

import contextlib
import io

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from onnx import TensorProto, helper  # noqa: E402
from onnx_suite import numba_kernels_only  # noqa: E402

import graphc as gc  # noqa: E402

# name: (module, batch_first, ONNX op, layers * directions)
_NETS = {
    "lstm_2layer_batch_first": (lambda: torch.nn.LSTM(4, 5, num_layers=2, batch_first=True),
                                True, "LSTM", 2),
    "lstm_bidirectional": (lambda: torch.nn.LSTM(4, 5, bidirectional=True), False, "LSTM", 2),
    "gru": (lambda: torch.nn.GRU(4, 5), False, "GRU", 1),
    "gru_bidirectional_batch_first": (
        lambda: torch.nn.GRU(4, 5, bidirectional=True, batch_first=True), True, "GRU", 2),
    "rnn_relu": (lambda: torch.nn.RNN(4, 5, nonlinearity="relu"), False, "RNN", 1),
}
# torch's gate blocks in ONNX's order: LSTM i f g o -> i o f c, GRU r z n -> z r h
_GATES = {"LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2], "RNN": [0]}
_T = 3


class _Flat(torch.nn.Module):
    """The layer's outputs as a flat tuple: y, h (and c)."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        y, state = self.rnn(x)
        return (y, *state) if isinstance(state, tuple) else (y, state)


def _exported(name, dynamic):
    make, batch_first, op, _ = _NETS[name]
    torch.manual_seed(0)
    net = _Flat(make()).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape) * 0.5)
    names = ["y", "h", "c"][:3 if op == "LSTM" else 2]
    axis = 0 if batch_first else 1
    axes = {"x": {axis: "N"}, "y": {axis: "N"}, "h": {1: "N"}, "c": {1: "N"}}
    shape = (2, _T, 4) if batch_first else (_T, 2, 4)
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.zeros(shape),), buf, dynamo=False, input_names=["x"],
                      output_names=names, dynamic_axes=axes if dynamic else None)
    return net, onnx.load_from_string(buf.getvalue())


def _onnx_layouts(net, op):
    """[(ONNX W, R, B value, the torch parameters they hold)] per layer, built from torch's
    parameters as the exporter builds its initializers (gate blocks reordered, directions
    stacked, the two biases concatenated)."""
    rnn, order = net.rnn, _GATES[op]
    hidden = rnn.hidden_size

    def reorder(p):
        return torch.cat([p[k * hidden:(k + 1) * hidden] for k in order])

    out = []
    for layer in range(rnn.num_layers):
        sfx = [f"_l{layer}", f"_l{layer}_reverse"][:2 if rnn.bidirectional else 1]
        ps = {kind: [getattr(rnn, f"{kind}{s}") for s in sfx]
              for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
        for value_of in (lambda p: p.detach(), lambda p: p.grad):
            w = torch.stack([reorder(value_of(p)) for p in ps["weight_ih"]])
            r = torch.stack([reorder(value_of(p)) for p in ps["weight_hh"]])
            b = torch.stack([torch.cat([reorder(value_of(i)), reorder(value_of(h))])
                             for i, h in zip(ps["bias_ih"], ps["bias_hh"])])
            out.append((w.numpy(), r.numpy(), b.numpy(), sum(ps.values(), [])))
    return out


def _torch_reference(net, op, m, x, seeds):
    """torch's outputs, dx and the gradient of every ONNX param (matched by value)."""
    net.zero_grad()
    t = torch.tensor(x, requires_grad=True)
    outs = net(t)
    sum((o * torch.tensor(s)).sum() for o, s in zip(outs, seeds)).backward()
    layouts = _onnx_layouts(net, op)
    values, grads = layouts[0::2], layouts[1::2]
    found, covered = {}, set()
    for name in m.params:
        value = m.weights[m.params[name].name]
        (match,) = [(k, j) for k, v in enumerate(values) for j in range(3)
                    if v[j].shape == value.shape and np.array_equal(v[j], value)]
        found[name] = grads[match[0]][match[1]]
        covered |= {id(p) for p in values[match[0]][3]}
    assert covered == {id(p) for p in net.parameters()}  # every torch parameter compared
    return [o.detach().numpy() for o in outs], t.grad.numpy(), found


def _loops(outputs) -> dict:
    """The scan runs the outputs hold (scan nodes of one loop on the same inputs are one)."""
    from graphc.scan import siblings
    return siblings(gc.Graph(outputs).nodes)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=pytest.mark.slow)])
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic_batch"])
@pytest.mark.parametrize("name", list(_NETS))
def test_exported_recurrent_layers_match_onnxruntime_and_torch(name, dynamic, backend):
    ort = pytest.importorskip("onnxruntime")
    _, batch_first, op, runs = _NETS[name]
    net, model = _exported(name, dynamic)
    assert op in {node.op_type for node in model.graph.node}
    m = gc.from_onnx(model)
    axis = 0 if batch_first else 1
    assert m.inputs["x"].shape[axis] == ("N" if dynamic else 2)
    # one loop per layer and direction, not unrolled
    assert len(_loops(gc.from_onnx(model, dims={"N": 2}).outputs)) == runs
    seeds = [gc.input(f"w{k}", y.shape, "float32") for k, y in enumerate(m.outputs)]
    names = sorted(m.params)
    loss = sum(gc.sum(y * s) for y, s in zip(m.outputs, seeds))
    grads = gc.grad(loss, [m.inputs["x"], *(m.params[k] for k in names)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    with numba_kernels_only() if backend == "numba" else contextlib.nullcontext():
        f = gc.compile([*m.outputs, *grads], backend=backend)
        for n in (2, 3) if dynamic else (2,):
            shape = (n, _T, 4) if batch_first else (_T, n, 4)
            x = rng.standard_normal(shape).astype(np.float32)
            ref_outs = session.run(None, {"x": x})
            ws = [rng.standard_normal(o.shape).astype(np.float32) for o in ref_outs]
            res = f(x=x, **{s.name: w for s, w in zip(seeds, ws)}, **m.weights)
            outs, (dx, *gs) = res[:len(ref_outs)], res[len(ref_outs):]
            torch_outs, ref_dx, ref = _torch_reference(net, op, m, x, ws)
            for out, r, t in zip(outs, ref_outs, torch_outs):
                np.testing.assert_allclose(out, r, rtol=1e-5, atol=1e-5)
                np.testing.assert_allclose(out, t, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(dx, ref_dx, rtol=1e-5, atol=1e-5)
            for k, g in zip(names, gs):
                np.testing.assert_allclose(g, ref[k], rtol=1e-5, atol=1e-5, err_msg=k)
    if backend == "numba":
        assert f.stats["lowered"].get("loop")  # the scans run as Numba loops


# ---------------------------------------------------------------------------------------
# What torch does not export: peepholes, initial states, GRU's linear_before_reset=0,
# layout 1, the reverse direction, unequal sequence lengths, other activations

def _node_model(op, dtype, batch, hidden, direction, layout=0, lens=None, peep=False,
                **attrs):
    """One ``op`` node with every optional input fed (X, W, R, B, initial_h[, initial_c,
    P]) and every output named; sequence_lens a constant when given."""
    elem = TensorProto.DOUBLE if dtype == np.float64 else TensorProto.FLOAT
    gates, d = {"LSTM": 4, "GRU": 3, "RNN": 1}[op], 2 if direction == "bidirectional" else 1
    x_shape = (batch, _T, 3) if layout else (_T, batch, 3)
    h_shape = (batch, d, hidden) if layout else (d, batch, hidden)
    shapes = {"X": x_shape, "W": (d, gates * hidden, 3), "R": (d, gates * hidden, hidden),
              "B": (d, 2 * gates * hidden), "initial_h": h_shape}
    if op == "LSTM":
        shapes["initial_c"] = h_shape
        if peep:
            shapes["P"] = (d, 3 * hidden)
    inputs = ["X", "W", "R", "B", "lens" if lens is not None else "", "initial_h"]
    inputs += [k for k in ("initial_c", "P") if k in shapes]
    outputs = ["Y", "Y_h", "Y_c"][:3 if op == "LSTM" else 2]
    inits = [] if lens is None else [helper.make_tensor("lens", TensorProto.INT32, [batch],
                                                        lens)]
    node = helper.make_node(op, inputs, outputs, hidden_size=hidden, direction=direction,
                            layout=layout, **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(k, elem, s) for k, s in shapes.items()],
        [helper.make_tensor_value_info(k, elem, None) for k in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    rng = np.random.default_rng(0)
    feeds = {k: (rng.standard_normal(s) * 0.7).astype(dtype) for k, s in shapes.items()}
    return model, feeds


_FORMS = {
    "lstm_peepholes_bidirectional": ("LSTM", "bidirectional", {"peep": True}),
    "lstm_reverse_layout1": ("LSTM", "reverse", {"layout": 1, "peep": True}),
    "lstm_unequal_lengths": ("LSTM", "bidirectional", {"lens": [3, 1]}),
    "gru_linear_after_reset": ("GRU", "bidirectional", {"linear_before_reset": 0}),
    "gru_linear_before_reset_layout1": ("GRU", "reverse", {"linear_before_reset": 1,
                                                           "layout": 1}),
    "gru_unequal_lengths": ("GRU", "reverse", {"lens": [2, 3]}),
    "rnn_activations": ("RNN", "bidirectional", {"activations": ["Sigmoid", "Relu"]}),
    "rnn_unequal_lengths_layout1": ("RNN", "forward", {"lens": [1, 3], "layout": 1}),
}


def _onnxruntime(op, direction, kw):
    """onnxruntime's outputs for form ``kw`` (float32) and the feeds: a layout-1 form is
    run as the layout-0 model (onnxruntime refuses layout 1), its feeds and outputs with
    the batch axis moved."""
    ort = pytest.importorskip("onnxruntime")
    layout = kw.get("layout", 0)
    model, feeds = _node_model(op, np.float32, 2, 4, direction, **{**kw, "layout": 0})
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = session.run(None, feeds)
    if not layout:
        return feeds, outs
    feeds = {k: np.ascontiguousarray(np.swapaxes(v, 0, 1)) if k in (
        "X", "initial_h", "initial_c") else v for k, v in feeds.items()}
    return feeds, [np.transpose(outs[0], (2, 0, 1, 3))] + [np.swapaxes(o, 0, 1)
                                                             for o in outs[1:]]


@pytest.mark.parametrize("form", list(_FORMS))
def test_recurrent_forms_match_onnxruntime_and_check_their_gradients(form):
    op, direction, kw = _FORMS[form]
    feeds, refs = _onnxruntime(op, direction, kw)
    model, _ = _node_model(op, np.float32, 2, 4, direction, **kw)
    m = gc.from_onnx(model)
    f = gc.compile(m.outputs, backend="numpy")
    for out, ref in zip(f(**feeds), refs, strict=True):
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    assert len(_loops(m.outputs)) == (2 if direction == "bidirectional" else 1)
    model, feeds = _node_model(op, np.float64, 2, 4, direction, **kw)
    m = gc.from_onnx(model)
    seeds = [np.random.default_rng(k).standard_normal(y.shape) for k, y in
             enumerate(m.outputs)]
    loss = sum(gc.sum(y * gc.constant(s)) for y, s in zip(m.outputs, seeds))
    report = gc.check_grad(loss, list(m.inputs.values()), feeds, eps=1e-6, rtol=1e-5,
                           atol=1e-8)
    assert report.ok, report


@pytest.mark.parametrize("attrs, what", [
    ({"clip": 1.0}, "clip"),
    ({"input_forget": 1}, "input_forget"),
    ({"activations": ["LeakyRelu", "Tanh", "Tanh"], "activation_alpha": [0.1]},
     "activation"),
    ({"activations": ["Sigmoid", "Elu", "Tanh"]}, "activation 'Elu'"),
])
def test_unsupported_recurrent_attributes_are_refused_naming_them(attrs, what):
    model, _ = _node_model("LSTM", np.float32, 2, 4, "forward", **attrs)
    with pytest.raises(gc.UnsupportedOpError, match=what):
        gc.from_onnx(model)
