"""gc.from_onnx: names, groups, weights, errors, gradients against PyTorch, and the ops it
added to graphc (pad, local response norm, pooling with ceil mode) against PyTorch.
ONNX's own conformance suite is tests/test_onnx_conformance.py."""

import contextlib
import io
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from onnx import TensorProto, helper  # noqa: E402
from onnx_suite import numba_kernels_only  # noqa: E402

import graphc as gc  # noqa: E402
from graphc.nn_functions import avg_pool2d, max_pool2d  # noqa: E402


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


# ---------------------------------------------------------------------------------------
# A small ResNet exported by torch.onnx: values, groups, names, gradients


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(4, 4, 3, padding=1, groups=2)

    def forward(self, x):
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 3, stride=2)
        self.layer1 = torch.nn.Sequential(_Block(), _Block())
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, x):
        h = torch.nn.functional.max_pool2d(self.layer1(self.stem(x)), 2, ceil_mode=True)
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(h, 1), 1))


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    net = _Net().eval()
    x = torch.randn(2, 3, 11, 11)
    buffer = io.BytesIO()
    torch.onnx.export(net, (x,), buffer, dynamo=False, input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "N"}})
    return net, x, onnx.load_from_string(buffer.getvalue())


def test_torch_exported_resnet_matches_torch_and_keeps_its_structure(resnet):
    net, x, model = resnet
    m = gc.from_onnx(model, dims={"N": 2})
    assert list(m.inputs) == ["x"] and m.outputs[0].name == "logits"
    assert set(m.params) == {n for n, _ in net.named_parameters()}
    assert m.params["layer1.0.conv1.weight"].name == "layer1_0_conv1_weight"
    assert set(m.weights) == {t.name for t in m.params.values()}
    assert {t.scope for t in gc.Graph(m.outputs).nodes} >= {
        "stem", "layer1/layer1.0/conv1", "layer1/layer1.1/conv2", "fc"}
    f = gc.compile(m.outputs, backend="numpy")
    (y,) = f(x=x.numpy(), **m.weights)
    np.testing.assert_allclose(y, net(x).detach().numpy(), rtol=1e-5, atol=1e-5)
    assert gc.init_params(m.outputs).keys() == m.weights.keys()  # the model's own values
    np.testing.assert_array_equal(gc.init_params(m.outputs)["fc_weight"], m.weights["fc_weight"])


def test_an_imported_models_params_sit_in_the_groups_of_their_layers(resnet):
    """With its batch left dynamic, the model's params were made before any node, outside
    every group (the explorer drew layers of 0 params); each is in the scope of the first
    node that reads it, as with the batch fixed."""
    _, _, model = resnet
    for dims in ({}, {"N": 2}):
        m = gc.from_onnx(model, dims=dims)
        assert m.params["layer1.0.conv1.weight"].scope == "layer1/layer1.0/conv1", dims
        assert m.params["fc.weight"].scope == "fc", dims


def test_gradients_of_an_imported_model_agree_with_torch_autograd(resnet):
    net, x, model = resnet
    m = gc.from_onnx(model, dims={"N": 2})
    labels = np.array([1, 3])
    loss = gc.softmax_cross_entropy(m.outputs[0], gc.constant(labels))
    names = sorted(m.params)
    grads = gc.grad(loss, [m.params[n] for n in names])
    values = gc.compile([loss, *grads], backend="numpy")(x=x.numpy(), **m.weights)
    torch_loss = torch.nn.functional.cross_entropy(net(x), torch.tensor(labels))
    torch_loss.backward()
    assert abs(values[0] - torch_loss.item()) < 1e-5
    params = dict(net.named_parameters())
    for name, g in zip(names, values[1:]):
        ref = params[name].grad.numpy()
        assert np.linalg.norm(g - ref) <= 1e-4 * np.linalg.norm(ref) + 1e-7, name


def test_symbolic_dimensions_become_dynamic_dimensions(resnet):
    net, _, model = resnet
    m = gc.from_onnx(model)
    assert m.inputs["x"].shape == ("N", 3, 11, 11) and m.outputs[0].shape == ("N", 5)
    labels = gc.input("labels", ("N",), "int64")
    loss = gc.softmax_cross_entropy(m.outputs[0], labels)
    dW = gc.grad(loss, m.params["fc.weight"])
    f = gc.compile([m.outputs[0], loss, dW], backend="numpy")
    for n in (1, 3):
        x = torch.randn(n, 3, 11, 11)
        y, value, g = f(x=x.numpy(), labels=np.arange(n), **m.weights)
        net.zero_grad()
        torch_loss = torch.nn.functional.cross_entropy(net(x), torch.arange(n))
        torch_loss.backward()
        np.testing.assert_allclose(y, net(x).detach().numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(g, net.fc.weight.grad.numpy(), rtol=1e-4, atol=1e-6)
    assert f.stats["specialisations"] == 2
    with pytest.raises(gc.FeedError, match="feed 'x' has shape"):
        f(x=np.zeros((2, 3, 12, 11), np.float32), labels=np.arange(2), **m.weights)


# ---------------------------------------------------------------------------------------
# Errors, names, laziness


def test_unsupported_op_names_the_op_the_node_and_the_supported_set():
    model = _model([helper.make_node("Relu", ["x"], ["h"], name="act"),
                    helper.make_node("TopK", ["h", "k"], ["v", "i"], name="top")],
                   [_vi("x", [4]), _vi("k", [1], TensorProto.INT64)], [_vi("v", [2])])
    with pytest.raises(gc.UnsupportedOpError) as err:
        gc.from_onnx(model)
    text = str(err.value)
    assert "ONNX op 'TopK' (node 'top') is not supported by gc.from_onnx" in text
    assert "the supported ops are: Abs, Acos, Acosh, Add" in text and "Relu" in text
    assert isinstance(err.value, gc.GraphError)


def test_names_become_unique_identifiers_and_attribute_inputs_must_be_constant():
    inits = [helper.make_tensor("a.b", TensorProto.FLOAT, [2], [1, 2]),
             helper.make_tensor("a_b", TensorProto.FLOAT, [2], [3, 4]),
             helper.make_tensor("1x", TensorProto.INT64, [1], [2])]
    model = _model([helper.make_node("Add", ["a.b", "a_b"], ["s"]),
                    helper.make_node("Add", ["s", "x"], ["y"])],
                   [_vi("x", [2])], [_vi("y", [2])], inits)
    m = gc.from_onnx(model)
    assert [t.name for t in m.params.values()] == ["a_b", "a_b_2"]
    (y,) = gc.compile(m.outputs, backend="numpy")(x=np.ones(2, np.float32), **m.weights)
    np.testing.assert_array_equal(y, [5, 7])
    shape_from_input = _model([helper.make_node("Reshape", ["x", "s"], ["y"], name="rs")],
                              [_vi("x", [2]), _vi("s", [1], TensorProto.INT64)],
                              [_vi("y", [2])])
    with pytest.raises(gc.UnsupportedOpError, match="input 's' must be constant"):
        gc.from_onnx(shape_from_input)


def test_import_graphc_does_not_import_onnx():
    code = "import sys, graphc; print('onnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_graphc_render_and_explore_open_an_onnx_file(tmp_path):
    from graphc.cli import main
    model = _model([helper.make_node("Gemm", ["x", "W"], ["h"], name="/fc/Gemm", transB=1),
                    helper.make_node("Tanh", ["h"], ["y"], name="/act/Tanh")],
                   [_vi("x", ["N", 3])], [_vi("y", ["N", 2])],
                   [helper.make_tensor("W", TensorProto.FLOAT, [2, 3], np.arange(6.0))])
    path = tmp_path / "tiny.onnx"
    onnx.save(model, path)
    assert main(["render", str(path), "-o", str(tmp_path / "tiny.dot")]) == 0
    dot = (tmp_path / "tiny.dot").read_text()
    assert "W" in dot and "fc" in dot
    assert main(["explore", str(path), "-o", str(tmp_path / "tiny.html")]) == 0
    assert "window.graphc" in (tmp_path / "tiny.html").read_text()


# ---------------------------------------------------------------------------------------
# The ops the importer added to graphc, against PyTorch


def _torch_grad(fn, x, w):
    t = torch.tensor(x, requires_grad=True)
    y = fn(t)
    (y * torch.tensor(w)).sum().backward()
    return y.detach().numpy(), t.grad.numpy()


def _graphc_grad(fn, x, w):
    xt = gc.input("x", x.shape, "float64")
    y = fn(xt)
    g = gc.grad(gc.sum(y * gc.constant(w)), xt)
    return gc.compile([y, g], backend="numpy")(x=x)


@pytest.mark.parametrize("mode, torch_mode", [("constant", "constant"), ("reflect", "reflect"),
                                              ("edge", "replicate"), ("wrap", "circular")])
def test_pad_matches_torch(mode, torch_mode):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 6))
    pads = ((0, 0), (0, 0), (2, 1), (1, 3))
    w = rng.standard_normal((2, 3, 8, 10))
    ours = _graphc_grad(lambda t: gc.pad(t, pads, mode=mode), x, w)
    ref = _torch_grad(lambda t: torch.nn.functional.pad(t, (1, 3, 2, 1), mode=torch_mode), x, w)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [2, 3, 5])
def test_local_response_norm_matches_torch(size):
    rng = np.random.default_rng(size)
    x = rng.standard_normal((2, 6, 3, 3))
    w = rng.standard_normal(x.shape)
    ours = _graphc_grad(lambda t: gc.local_response_norm(t, size, 0.1, 0.75, 2.0), x, w)
    ref = _torch_grad(lambda t: torch.nn.functional.local_response_norm(t, size, 0.1, 0.75,
                                                                        2.0), x, w)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


POOLS = [("max", dict(k=3, stride=2, padding=1, ceil_mode=True)),
         ("max", dict(k=2, stride=2, ceil_mode=True)),
         ("avg", dict(k=3, stride=2, padding=1, ceil_mode=True)),
         ("avg", dict(k=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
         ("avg", dict(k=(3, 2), stride=(2, 3), padding=(1, 0), ceil_mode=True))]


@pytest.mark.parametrize("kind, kw", POOLS, ids=[f"{k}{i}" for i, (k, _) in enumerate(POOLS)])
def test_pooling_with_ceil_mode_matches_torch(kind, kw):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 7, 8))
    ours_fn = max_pool2d if kind == "max" else avg_pool2d
    torch_fn = torch.nn.functional.max_pool2d if kind == "max" else \
        torch.nn.functional.avg_pool2d
    tkw = {("kernel_size" if k == "k" else k): v for k, v in kw.items()}
    shape = torch_fn(torch.tensor(x), **tkw).shape
    w = rng.standard_normal(shape)
    ours = _graphc_grad(lambda t: ours_fn(t, **kw), x, w)
    ref = _torch_grad(lambda t: torch_fn(t, **tkw), x, w)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_gemm_with_transposes_alpha_and_beta_checks_its_gradient():
    rng = np.random.default_rng(2)
    a, b, c = rng.standard_normal((4, 3)), rng.standard_normal((5, 4)), rng.standard_normal(5)
    inits = [helper.make_tensor("B", TensorProto.DOUBLE, b.shape, b.ravel()),
             helper.make_tensor("C", TensorProto.DOUBLE, c.shape, c)]
    model = _model([helper.make_node("Gemm", ["A", "B", "C"], ["Y"], transA=1, transB=1,
                                     alpha=0.5, beta=2.0)],
                   [_vi("A", [4, 3], TensorProto.DOUBLE)], [_vi("Y", [3, 5], TensorProto.DOUBLE)],
                   inits)
    m = gc.from_onnx(model)
    (y,) = gc.compile(m.outputs, backend="numpy")(A=a, **m.weights)
    np.testing.assert_allclose(y, 0.5 * a.T @ b.T + 2.0 * c, rtol=1e-12)
    loss = gc.sum(gc.tanh(m.outputs[0]))
    report = gc.check_grad(loss, [m.inputs["A"], *m.params.values()], {"A": a, **m.weights})
    assert report.ok, report


def test_a_scalar_initializer_keeps_its_shape():
    # (np.ascontiguousarray made the 0-d param, its weight and the output (1,))
    from onnx import numpy_helper
    model = _model([helper.make_node("ReduceSum", ["X"], ["s"], keepdims=0),
                    helper.make_node("Mul", ["s", "P"], ["Y"])],
                   [_vi("X", [3, 4])], [_vi("Y", [])],
                   [numpy_helper.from_array(np.array(2.0, np.float32), "P")])
    m = gc.from_onnx(model)
    assert m.params["P"].shape == m.weights[m.params["P"].name].shape == () == \
        m.outputs[0].shape
    (y,) = gc.compile(m.outputs, backend="numpy")(X=np.ones((3, 4), np.float32), **m.weights)
    assert y.shape == () and y == 24.0


def test_layer_normalization_as_torch_exports_it():
    # torch.onnx.export (opset 17+) writes nn.LayerNorm as one LayerNormalization node
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.LayerNorm(8), torch.nn.GELU(),
                              torch.nn.LayerNorm([8], elementwise_affine=False)).double()
    x = torch.randn(3, 6, dtype=torch.float64)
    buf = io.BytesIO()
    torch.onnx.export(net, (x,), buf, opset_version=17, dynamo=False,
                      input_names=["x"], output_names=["y"])
    assert b"LayerNormalization" in buf.getvalue()
    m = gc.from_onnx(onnx.load_from_string(buf.getvalue()))
    (y,) = gc.compile(m.outputs, backend="numpy")(x=x.numpy(), **m.weights)
    np.testing.assert_allclose(y, net(x).detach().numpy(), rtol=1e-10, atol=1e-12)
    loss = gc.sum(gc.tanh(m.outputs[0]))
    report = gc.check_grad(loss, [m.inputs["x"], *m.params.values()],
                           {"x": x.numpy(), **m.weights})
    assert report.ok, report


def test_docs_list_exactly_the_supported_ops():
    import pathlib
    import re

    from onnx import defs

    from graphc.importers.onnx_ops import SUPPORTED
    text = (pathlib.Path(__file__).parents[1] / "docs" / "import.md").read_text()
    table = text[text.index("### Supported ops"):text.index("Each maps to")]
    onnx_ops = {s.name for s in defs.get_all_schemas() if s.domain == ""}
    listed = set(re.findall(r"\b[A-Z][A-Za-z0-9]+\b", table)) & onnx_ops
    assert f"### Supported ops ({len(SUPPORTED)})" in table
    assert listed == set(SUPPORTED)


@pytest.mark.slow  # Numba compiles (about 8 s cold)
@pytest.mark.parametrize("channels, groups", [(4, 2), (6, 6)], ids=["grouped", "depthwise"])
def test_grouped_and_depthwise_conv_run_as_numba_kernels(channels, groups):
    rng = np.random.default_rng(3)
    x = gc.input("x", (2, channels, 7, 6), "float64")
    w = gc.param("w", (6, channels // groups, 3, 3), dtype="float64")
    y = gc.conv2d(x, w, 2, 1, groups=groups)
    gx, gw = gc.grad(gc.sum(gc.tanh(y)), [x, w])
    feeds = {"x": rng.standard_normal(x.shape), "w": rng.standard_normal(w.shape)}
    f = gc.compile([y, gx, gw], backend="numba")
    assert f.stats["numpy_fallbacks"] == [] and "conv2d_cols.reshape((2, " in f.source
    for a, b in zip(f(**feeds), gc.compile([y, gx, gw], backend="numpy")(**feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_pad_errors_name_the_op_and_the_shapes():
    x = gc.input("x", (2, 3))
    with pytest.raises(gc.ShapeError, match=r"pad: pads must be an int or one \(before, after\) "
                                            r"pair of ints per axis, got 'ab'"):
        gc.pad(x, "ab")
    with pytest.raises(gc.ShapeError, match=r"pad: pads \(\(1, 1\),\) must be one non-negative"):
        gc.pad(x, [(1, 1)])
    with pytest.raises(gc.ShapeError, match=r"reflect padding by \(3, 0\) needs an axis longer"):
        gc.pad(x, ((0, 0), (3, 0)), mode="reflect")
    assert gc.pad(x, 1).shape == (4, 5) and gc.pad(x, 0) is x


@pytest.mark.parametrize("batch", ["N", 2])
def test_weights_are_exactly_those_the_outputs_use_with_a_symbolic_dimension(batch):
    # with a symbolic dimension every float initializer became a param of every output:
    # an unused one was in m.params and m.weights (API.md: exactly what m.outputs use)
    from onnx import numpy_helper
    W = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(3, 2), "W")
    unused = numpy_helper.from_array(np.ones(2, np.float32), "U")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [W, unused])
    m = gc.from_onnx(helper.make_model(graph))
    assert sorted(m.params) == ["W"] and sorted(m.weights) == [m.params["W"].name]
    X = np.ones((2, 3), np.float32)
    y, dW = gc.compile([m.outputs[0], gc.grad(gc.sum(m.outputs[0]), m.params["W"])],
                       backend="numpy")(**{m.inputs["x"].name: X}, **m.weights)
    np.testing.assert_array_equal(y, X @ np.arange(6, dtype=np.float32).reshape(3, 2))
    np.testing.assert_array_equal(dW, np.full((3, 2), 2.0, np.float32))


# ---------------------------------------------------------------------------------------
# Attention, a transformer encoder layer and instance norm as torch.onnx exports them
# (TorchScript exporter: the default one, dynamo, needs onnxscript), against onnxruntime,
# torch and torch's autograd, on both backends


class _Attention(torch.nn.Module):
    """nn.MultiheadAttention called as nn.TransformerEncoderLayer calls it: its export
    (scaled_dot_product_attention) has a Mod in its shape arithmetic."""

    def __init__(self):
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


class _Encoder(torch.nn.Module):
    """nn.TransformerEncoderLayer called with x alone: exporting the layer itself fails in
    torch 2.13 (scaled_dot_product_attention(): argument 'is_causal' must be bool, not
    Tensor)."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)

    def forward(self, x):
        return self.layer(x)


class _Causal(torch.nn.Module):
    """Causal self-attention (a decoder's): its export builds the mask with Trilu."""

    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(8, 24)

    def forward(self, x):
        q, k, v = self.qkv(x).reshape(x.shape[0], 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return y.transpose(1, 2).reshape(x.shape)


# name: (module, input shape, the op of its export that from_onnx lacked)
_LAYERS = {"attention": (_Attention, (2, 5, 8), "Mod"), "encoder": (_Encoder, (2, 5, 8), "Mod"),
           "causal": (_Causal, (2, 5, 8), "Trilu"),
           "instance_norm": (lambda: torch.nn.InstanceNorm2d(3, affine=True), (2, 3, 4, 5),
                             "InstanceNormalization")}


def _exported(name, dynamic):
    """The module, its parameters random (the exporter merges initializers of equal value,
    as a new layer's zero biases, leaving a torch parameter without an ONNX one), and its
    ONNX model."""
    make, shape, _ = _LAYERS[name]
    torch.manual_seed(0)
    net = make().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape) * 0.5)
    buf = io.BytesIO()
    axes = {"x": {0: "N"}, "y": {0: "N"}} if dynamic else None
    torch.onnx.export(net, (torch.zeros(shape),), buf, dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes=axes)
    return net, onnx.load_from_string(buf.getvalue())


def _torch_grads(net, m, x, w):
    """torch's y, dx and the gradient of each ONNX param: a torch parameter by name, or one
    the exporter folded into a transposed MatMul operand ('onnx::MatMul_165') by value."""
    net.zero_grad()
    t = torch.tensor(x, requires_grad=True)
    y = net(t)
    (y * torch.tensor(w)).sum().backward()
    params, found = dict(net.named_parameters()), {}
    for name in sorted(m.params):
        if name in params:
            found[name] = params[name].grad.numpy()
            continue
        value = m.weights[m.params[name].name]
        (match,) = [k for k, p in params.items() if p.ndim == 2 and p.T.shape == value.shape
                    and np.array_equal(p.detach().numpy().T, value)]
        found[name] = params[match].grad.numpy().T
    return y.detach().numpy(), t.grad.numpy(), found


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic_batch"])
@pytest.mark.parametrize("name", list(_LAYERS))
def test_exported_attention_encoder_and_instance_norm_match_torch(name, dynamic, backend):
    """On Numba every elementwise op is a generated kernel, however small."""
    ort = pytest.importorskip("onnxruntime")
    net, model = _exported(name, dynamic)
    assert _LAYERS[name][2] in {node.op_type for node in model.graph.node}
    m = gc.from_onnx(model)
    y = m.outputs[0]
    assert m.inputs["x"].shape[0] == ("N" if dynamic else 2)
    seed = gc.input("w", y.shape, "float32")
    names = sorted(m.params)
    grads = gc.grad(gc.sum(y * seed), [m.inputs["x"], *(m.params[k] for k in names)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    with numba_kernels_only() if backend == "numba" else contextlib.nullcontext():
        f = gc.compile([y, *grads], backend=backend)
        for n in (2, 3) if dynamic else (2,):
            x, w = rng.standard_normal((2, n) + _LAYERS[name][1][1:]).astype(np.float32)
            out, dx, *gs = f(x=x, w=w, **m.weights)
            ref_y, ref_dx, ref = _torch_grads(net, m, x, w)  # (y has the shape of x)
            np.testing.assert_allclose(out, session.run(None, {"x": x})[0], rtol=1e-5,
                                       atol=1e-5)
            np.testing.assert_allclose(out, ref_y, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(dx, ref_dx, rtol=1e-5, atol=1e-5)
            for k, g in zip(names, gs):
                np.testing.assert_allclose(g, ref[k], rtol=1e-5, atol=1e-5, err_msg=k)
    assert len(names) == len(list(net.parameters()))  # every torch parameter compared
    if backend == "numba":
        assert f.stats["lowered"].get("kernel")


# ---------------------------------------------------------------------------------------
# Mod, Range, Not, And, Or, Xor, InstanceNormalization (their ONNX node tests run in
# tests/test_onnx_conformance.py)

_ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE,
         np.dtype(np.int32): TensorProto.INT32, np.dtype(np.int64): TensorProto.INT64,
         np.dtype(np.bool_): TensorProto.BOOL}


def _one_node(op, arrays, backend="numpy", **attrs):
    """The output of one ``op`` node fed ``arrays`` (graph inputs a, b, ...) and the model."""
    names = "abc"[:len(arrays)]
    model = _model([helper.make_node(op, list(names), ["y"], **attrs)],
                   [_vi(n, list(a.shape), _ELEM[a.dtype]) for n, a in zip(names, arrays)],
                   [helper.make_tensor_value_info("y", TensorProto.UNDEFINED, None)])
    m = gc.from_onnx(model)
    return gc.compile(m.outputs, backend=backend)(**dict(zip(names, arrays)))[0], m


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("dtype", ["int32", "int64", "float32", "float64"])
@pytest.mark.parametrize("fmod", [0, 1])
def test_mod_matches_numpy_for_negative_operands(fmod, dtype, backend):
    rng = np.random.default_rng(fmod)
    a = (rng.standard_normal((4, 30)) * 40).astype(dtype)
    b = (rng.choice([-1, 1], 30) * rng.uniform(1, 9, 30)).astype(dtype)  # b broadcasts
    if dtype == "int64":  # exact where a float64 quotient rounds to the next integer
        a[0, :4] = [2**52 + 3, -(2**52) - 5, 3 * 2**50, 2**40 + 7]
        b[:4] = [7, 7, 2**50 - 1, -(2**20) - 1]
    ref = np.fmod(a, b) if fmod else np.mod(a, b)
    with numba_kernels_only() if backend == "numba" else contextlib.nullcontext():
        y, _ = _one_node("Mod", [a, b], backend, fmod=fmod)
    assert y.dtype == dtype
    if dtype == "float64":  # a - q * b: q * b rounds
        np.testing.assert_allclose(y, ref, rtol=0, atol=1e-13)
    else:  # exact (float32: computed in float64)
        np.testing.assert_array_equal(y, ref)


@pytest.mark.parametrize("fmod, torch_fn", [(0, torch.remainder), (1, torch.fmod)])
def test_mod_gradients_match_torch(fmod, torch_fn):
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((2, 3, 5)) * 5
    _, m = _one_node("Mod", [a, b], fmod=fmod)
    y = m.outputs[0]
    w = rng.standard_normal(y.shape)
    da, db = gc.grad(gc.sum(y * gc.constant(w)), [m.inputs["a"], m.inputs["b"]])
    out = gc.compile([y, da, db], backend="numpy")(a=a, b=b)
    ta, tb = (torch.tensor(v, requires_grad=True) for v in (a, b))
    ty = torch_fn(ta, tb)
    (ty * torch.tensor(w)).sum().backward()
    for ours, ref in zip(out, (ty.detach(), ta.grad, tb.grad)):
        np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-12, atol=1e-12)


def test_mod_of_constants_is_folded():
    ints = [helper.make_tensor("p", TensorProto.INT64, [3], [7, -7, 9]),
            helper.make_tensor("q", TensorProto.INT64, [3], [-3, 3, 4])]
    model = _model([helper.make_node("Mod", ["p", "q"], ["r"]),
                    helper.make_node("Mod", ["p", "q"], ["s"], fmod=1)],
                   [], [_vi("r", [3], TensorProto.INT64), _vi("s", [3], TensorProto.INT64)], ints)
    r, s = gc.from_onnx(model).outputs
    assert isinstance(r.op, gc.inputs.Constant) and isinstance(s.op, gc.inputs.Constant)
    np.testing.assert_array_equal(r.op.value.array, [-2, 2, 1])
    np.testing.assert_array_equal(s.op.value.array, [1, -1, 1])


@pytest.mark.parametrize("start, limit, delta", [(0, 10, 3), (10, -3, -4), (5, 5, 1),
                                                 (1.5, 4.0, 0.5), (2.0, -1.0, -0.75)])
def test_range_of_constants_is_folded_as_numpy_arange(start, limit, delta):
    kind = TensorProto.INT64 if isinstance(start, int) else TensorProto.FLOAT
    inits = [helper.make_tensor(n, kind, [], [v]) for n, v in zip("slt", (start, limit, delta))]
    model = _model([helper.make_node("Range", ["s", "l", "t"], ["y"])], [],
                   [_vi("y", [None], kind)], inits)
    (y,) = gc.from_onnx(model).outputs
    ref = np.arange(start, limit, delta).astype(np.int64 if kind == TensorProto.INT64 else
                                                np.float32)
    assert isinstance(y.op, gc.inputs.Constant) and y.dtype == ref.dtype
    np.testing.assert_array_equal(y.op.value.array, ref)


def test_range_of_a_fed_input_is_refused_naming_it():
    inits = [helper.make_tensor(n, TensorProto.FLOAT, [], [v]) for n, v in (("s", 0), ("t", 1))]
    model = _model([helper.make_node("Range", ["s", "limit", "t"], ["y"], name="r")],
                   [_vi("limit", [], TensorProto.FLOAT)], [_vi("y", [None])], inits)
    with pytest.raises(gc.UnsupportedOpError, match=r"ONNX op 'Range' \(node 'r'\): input "
                                                    r"'limit' must be constant"):
        gc.from_onnx(model)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_not_and_or_xor_broadcast_as_numpy(backend):
    a = np.array([[True, False, True], [False, False, True]])
    b = np.array([True, False, False])
    with numba_kernels_only() if backend == "numba" else contextlib.nullcontext():
        y, _ = _one_node("Not", [a], backend)
        np.testing.assert_array_equal(y, ~a)
        for op, ref in (("And", a & b), ("Or", a | b), ("Xor", a ^ b)):
            y, _ = _one_node(op, [a, b], backend)
            assert y.dtype == bool
            np.testing.assert_array_equal(y, ref, err_msg=op)


@pytest.mark.parametrize("shape", [(2, 3, 7), (2, 3, 4, 5), (1, 2, 3, 2, 4)])
def test_instance_normalization_matches_numpy_and_checks_its_gradient(shape):
    rng = np.random.default_rng(4)
    x, scale, bias = rng.standard_normal(shape), rng.standard_normal(3), rng.standard_normal(3)
    scale, bias = scale[:shape[1]], bias[:shape[1]]
    y, m = _one_node("InstanceNormalization", [x, scale, bias], epsilon=0.01)
    axes = tuple(range(2, x.ndim))
    c = (1, -1) + (1,) * (x.ndim - 2)
    eps = float(np.float32(0.01))  # ONNX float attributes are float32
    ref = (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True) + eps)
    np.testing.assert_allclose(y, ref * scale.reshape(c) + bias.reshape(c), rtol=1e-12)
    loss = gc.sum(gc.tanh(m.outputs[0]))
    report = gc.check_grad(loss, list(m.inputs.values()), {"a": x, "b": scale, "c": bias})
    assert report.ok, report


def test_an_input_of_unknown_rank_is_refused_at_import():
    # it was imported as a 0-d input, and every real feed was then refused
    model = _model([helper.make_node("Relu", ["x"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    with pytest.raises(gc.ShapeError, match="input 'x' has no shape"):
        gc.from_onnx(model)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceL1", "ReduceL2",
                                "ReduceLogSum", "ReduceLogSumExp", "ReduceProd",
                                "ReduceSumSquare"])
@pytest.mark.parametrize("elem,dtype", [(TensorProto.INT64, np.int64),
                                        (TensorProto.INT32, np.int32)])
def test_integer_reductions_keep_the_input_type_as_onnxruntime(op, elem, dtype):
    # a mean, norm or log of integers came back float32, an int32 product int64
    ort = pytest.importorskip("onnxruntime")
    model = _model([helper.make_node(op, ["x"], ["y"], axes=[1], keepdims=0)],
                   [_vi("x", [3, 4], elem)], [_vi("y", [3], elem)], opset=11)
    x = np.array([[1, 2, 2, 2], [3, 3, 5, 4], [7, 7, 7, 8]], dtype)
    if op not in ("ReduceLogSum", "ReduceL2", "ReduceLogSumExp"):
        x[0, 1], x[1, 2] = -2, -3
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    for backend in ("numpy", "numba"):
        (got,) = gc.compile(gc.from_onnx(model).outputs, backend=backend)(x=x)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


class _PositionsLM(torch.nn.Module):
    """Token and position embeddings: valid for sequences of at most 6 tokens."""

    def __init__(self):
        super().__init__()
        self.emb, self.pos = torch.nn.Embedding(11, 8), torch.nn.Embedding(6, 8)
        self.fc = torch.nn.Linear(8, 11)

    def forward(self, tok):
        return self.fc(self.emb(tok) + self.pos(torch.arange(tok.shape[1])))


def test_a_model_valid_only_for_short_sequences_imports_with_a_dynamic_length():
    """The shape probe used to replay it at lengths of 1009 and more only, where the
    position table's 6 rows are out of range, and the import failed."""
    torch.manual_seed(0)
    net, buffer = _PositionsLM().eval(), io.BytesIO()
    torch.onnx.export(net, (torch.tensor([[1, 2, 3, 0, 0]]),), buffer, dynamo=False,
                      input_names=["tok"], output_names=["y"], opset_version=17,
                      dynamic_axes={"tok": {0: "N", 1: "T"}, "y": {0: "N", 1: "T"}})
    m = gc.from_onnx(onnx.load_from_string(buffer.getvalue()))
    f = gc.compile(m.outputs, backend="numpy")
    for shape in ((2, 5), (3, 3)):
        tok = np.random.default_rng(0).integers(0, 11, shape)
        (y,) = f(tok=tok, **m.weights)
        np.testing.assert_allclose(y, net(torch.from_numpy(tok)).detach().numpy(),
                                   rtol=1e-5, atol=1e-5)
