"""gc.from_torch: imported modules compute what PyTorch computes, forward and backward.

Small modules cover every ATen rule against torch's forward outputs and autograd gradients
on the NumPy and Numba backends; torchvision's classification models (random init, nothing
downloaded) are compared on their cross-entropy gradients w.r.t. every parameter.

torchvision 0.28.0's wheel here is a CUDA build: its compiled ops fail to load with the CPU
torch, and ``import torchvision`` then dies registering ``torchvision::nms``.  The model
definitions need none of those ops, so :func:`torchvision_models` imports
``torchvision.models`` under a bare ``torchvision`` package that does not run
``torchvision/__init__.py`` (which loads the ops).
"""

import copy
import importlib
import importlib.util
import json
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest

import graphc as gc

torch = pytest.importorskip("torch")
nn = torch.nn


def torchvision_models():
    """``torchvision.models`` without ``torchvision/__init__.py``'s op registration."""
    if "torchvision" not in sys.modules:
        spec = importlib.util.find_spec("torchvision")
        if spec is None:
            pytest.skip("torchvision is not installed (pip install torchvision==0.28.0)")
        package = types.ModuleType("torchvision")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__, package.__file__ = spec, spec.origin
        sys.modules["torchvision"] = package
    try:
        return importlib.import_module("torchvision.models")
    except ImportError as err:  # e.g. Pillow, which torchvision.utils imports
        pytest.skip(f"torchvision.models does not import: {err}")


def imported_gradients(module, x, wrt_input=True):
    """The imported module, its output and the gradients of sum(out * w) (w fixed,
    random) w.r.t. every param (and the input) as graphc tensors, and torch autograd's."""
    m = gc.from_torch(module, (x,))
    (out,) = m.outputs
    w = np.random.default_rng(1).standard_normal(out.shape).astype(out.dtype)
    names = list(m.params)
    (xin,) = m.inputs.values()
    wrt = [m.params[k] for k in names] + ([xin] if wrt_input else [])
    xt = x.clone().requires_grad_(wrt_input)
    y = module(xt)
    params = dict(module.named_parameters())
    theirs = torch.autograd.grad((y * torch.from_numpy(w)).sum(),
                                 [params[k] for k in names] + ([xt] if wrt_input else []))
    ours = [out, *gc.grad(gc.sum(out * gc.constant(w)), wrt)]
    return m, ours, [y.detach().numpy()] + [g.numpy() for g in theirs], names


def assert_close(m, x, ours, theirs, names, backend, rtol, atol=0.0):
    """Run the graphc side with ``backend`` and compare each result with torch's."""
    (xin,) = m.inputs.values()
    values = gc.compile(ours, backend=backend)(**{xin.name: x.numpy()}, **m.weights)
    for k, (a, b) in enumerate(zip(values, theirs)):
        what = "output" if k == 0 else names[k - 1] if k - 1 < len(names) else "input"
        assert a.shape == b.shape, what
        err = np.linalg.norm(a - b)
        assert err <= rtol * np.linalg.norm(b) + atol, \
            f"{what}: relative error {err / np.linalg.norm(b):.2e}"


# ---------------------------------------------------------------------------------------
# Small modules: every rule, forward and backward, NumPy and Numba


class Net(nn.Module):
    """Convolutions of every geometry, both poolings, batch norm, activations and the
    structural ops (cat, split, slice, select, permute, flatten)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8),
                                  nn.ReLU6())
        self.grouped = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4, bias=False)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(24, 16), nn.GELU(),
                                  nn.Linear(16, 5))
        self.norm = nn.LayerNorm(16)

    def forward(self, x):
        h = self.stem(x)
        h = self.bn(self.grouped(h)) + nn.functional.hardswish(self.depthwise(h)) * 0.5
        h = nn.functional.leaky_relu(h, 0.1) - nn.functional.elu(-h)
        a, b = torch.split(h, [3, 5], dim=1)
        h = torch.cat([torch.sigmoid(a), torch.tanh(b)], 1)
        p = nn.functional.avg_pool2d(self.pool(h), 2, stride=1, padding=1,
                                     count_include_pad=False)
        q = nn.functional.adaptive_avg_pool2d(h, 2)[:, :, 1]  # select
        g = torch.flatten(nn.functional.adaptive_avg_pool2d(p, 1), 1)
        z = torch.cat([g, q.permute(0, 2, 1).reshape(len(x), -1)], 1)
        z = self.head[2](self.head[1](self.head[0](z)))
        z = self.norm(z).clamp(-1.5, 1.5)
        return torch.log_softmax(self.head[3](z), -1) + torch.softmax(z[:, 1:6], 1)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    module = Net()
    with torch.no_grad():  # running statistics that are not the identity
        for bn in (module.stem[1], module.bn):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return module.eval()


@pytest.fixture(scope="module")
def cnn(net):
    x = torch.randn(2, 3, 13, 11)
    return (x, *imported_gradients(net, x))


def test_small_cnn_matches_torch_forward_and_gradients(cnn):
    x, m, ours, theirs, names = cnn
    assert len(names) == 15 and "stem.1.weight" in names
    assert {"stem_1_running_mean", "bn_running_var"} <= set(m.weights)
    assert_close(m, x, ours, theirs, names, "numpy", 1e-5)


def test_numba_runs_an_imported_cnn():
    torch.manual_seed(3)
    module = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, groups=2), nn.BatchNorm2d(4),
                           nn.ReLU6(), nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(),
                           nn.Linear(36, 3), nn.LogSoftmax(1)).eval()
    x = torch.randn(2, 2, 5, 5)
    m, ours, theirs, names = imported_gradients(module, x)
    assert_close(m, x, ours, theirs, names, "numba", 1e-5)


def test_mlp_float64_matches_torch():
    torch.manual_seed(1)
    mlp = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 10), nn.SiLU(),
                        nn.Linear(10, 3), nn.Sigmoid()).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    m, ours, theirs, names = imported_gradients(mlp, x)
    assert list(m.inputs) == ["input"]  # a Sequential's forward argument
    assert_close(m, x, ours, theirs, names, "numpy", 1e-12)


class Extras(nn.Module):
    """The ops PyTorch decomposes SELU, Softplus, Mish and friends into, 1-D and transposed
    convolutions, and the reductions and scans."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x):
        h = nn.functional.selu(self.conv(x)).reshape(len(x), 4, 2, 2)
        u = self.up(h)
        u = nn.functional.softplus(u) + nn.functional.mish(u) * nn.functional.hardsigmoid(u)
        v = torch.cumsum(u, 3) + u.flip(2) * torch.erf(u) + torch.log1p(u.abs())
        return v.var(dim=1, keepdim=True) + nn.functional.celu(v, 0.5).clamp(max=2.0)


def test_decomposed_activations_and_convolutions_match_torch():
    torch.manual_seed(4)
    x = torch.randn(3, 2, 8, dtype=torch.float64)
    m, ours, theirs, names = imported_gradients(Extras().double(), x)
    # 1e-7, not 1e-12: torch's hardsigmoid backward multiplies by 1.0f / 6.0f, a float32
    # sixth, even in float64 (graphc's 1/6 is exact)
    assert_close(m, x, ours, theirs, names, "numpy", 1e-7)


class Masks(nn.Module):
    """Ops whose export holds a scalar tensor (aten.scalar_tensor): logsumexp, where with a
    number, masked_fill."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        h = self.fc(x)
        masked = torch.where(h > 0, h, 0.25) + h.masked_fill(h < -0.5, 1.5)
        return torch.logsumexp(masked, 1, keepdim=True) * masked


def test_scalar_tensors_of_where_masked_fill_and_logsumexp():
    torch.manual_seed(6)
    x = torch.randn(5, 3, dtype=torch.float64)
    m, ours, theirs, names = imported_gradients(Masks().double(), x)
    assert_close(m, x, ours, theirs, names, "numpy", 1e-12)


def test_a_transformer_encoder_layer_matches_torch():
    # nn.MultiheadAttention (need_weights=False inside the layer) makes its mask with
    # logical_not and full_like: the layer did not import
    torch.manual_seed(8)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0,
                                       batch_first=True).double().eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    m, ours, theirs, names = imported_gradients(layer, x)
    assert_close(m, x, ours, theirs, names, "numpy", 1e-10, 1e-12)


@pytest.mark.parametrize("padding_idx", [None, 0, -2])
def test_embedding_padding_row_gets_no_gradient(padding_idx):
    torch.manual_seed(7)
    table = nn.Embedding(6, 3, padding_idx=padding_idx).double()
    idx = torch.tensor([[0, 1, 1], [0, 5, 4]])
    m = gc.from_torch(table, (idx,))
    (xin,), (out,) = m.inputs.values(), m.outputs
    w = np.random.default_rng(2).standard_normal(out.shape)
    grad = gc.grad(gc.sum(out * gc.constant(w)), m.params["weight"])
    ours = gc.compile(grad, backend="numba")(**{xin.name: idx.numpy()}, **m.weights)
    (table(idx) * torch.from_numpy(w)).sum().backward()
    np.testing.assert_allclose(ours, table.weight.grad.numpy(), rtol=1e-12)
    if padding_idx is not None:
        assert not ours[padding_idx % 6].any()


@pytest.mark.parametrize("fn", ["hardswish", "hardsigmoid"])
def test_hard_activations_have_torchs_gradients_at_their_kinks(fn):
    class Hard(nn.Module):
        def forward(self, x):
            return getattr(nn.functional, fn)(x)

    x = torch.tensor([-4.0, -3.0, -1.0, 0.0, 2.9, 3.0, 4.0], dtype=torch.float64)
    m, ours, theirs, names = imported_gradients(Hard(), x)
    # 1e-7: torch's hardsigmoid backward multiplies by a float32 sixth, even in float64
    assert_close(m, x, ours, theirs, names, "numba", 1e-15 if fn == "hardswish" else 1e-7)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("fn", ["softplus", "mish", "selu", "celu"])
def test_activations_decomposed_into_where_keep_a_finite_gradient(fn, backend):
    # torch.export decomposed softplus into where(x > 20, x, log1p(exp(x))) (selu, celu,
    # mish alike): at x >= 89 in float32 exp overflows in the branch not taken, and its
    # gradient there, 0 * inf, made the input's gradient NaN; torch gives 1 (selu 1.0507)
    class Act(nn.Module):
        def forward(self, x):
            return getattr(nn.functional, fn)(x)

    for x, rtol in ((torch.tensor([-90.0, -3.0, 0.0, 0.7, 10.0, 89.0, 100.0]), 1e-6),
                    (torch.tensor([-800.0, -2.0, 0.0, 1e-3, 25.0, 710.0], dtype=torch.float64),
                     1e-14)):
        m, ours, theirs, names = imported_gradients(Act(), x)
        assert_close(m, x, ours, theirs, names, backend, rtol)


def test_clamped_indices_stay_integers():
    # clamp imported as gc.clip, float32: 16777217 came back 16777216.0, and an embedding
    # of clamped indices was refused ("take: indices must be int32 or int64, got float32")
    class Clamped(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Embedding(5, 2, dtype=torch.float64)

        def forward(self, idx):
            return self.table(idx.clamp(0, 4)), idx.clamp(max=16777217)

    module, idx = Clamped(), torch.tensor([[0, 7, -1], [3, 16777219, 16777217]])
    m = gc.from_torch(module, (idx,))
    (xin,) = m.inputs.values()
    got = gc.compile(m.outputs, backend="numpy")(**{xin.name: idx.numpy()}, **m.weights)
    for ours, theirs in zip(got, module(idx)):
        assert ours.dtype == theirs.detach().numpy().dtype
        np.testing.assert_array_equal(ours, theirs.detach().numpy())


def test_sums_accumulate_in_the_dtype_torch_gives_them():
    # dtype= was dropped (float32 summed in float32) and an int32 sum stayed int32 (it
    # wrapped at 2**31, torch sums integers in int64)
    class Sums(nn.Module):
        def forward(self, x, i):
            return (x.sum(1, dtype=torch.float64), x.mean(0, dtype=torch.float64),
                    x.cumsum(1, dtype=torch.float64), i.sum(), i.sum(0))

    x = torch.tensor([[1e8, 1.0, -1e8, 3.0], [0.5, 0.25, 2.0, -1.0]])
    i = torch.tensor([[2**30, 2**30], [2**30, 1]], dtype=torch.int32)
    m = gc.from_torch(Sums(), (x, i))
    names = [t.name for t in m.inputs.values()]
    f = gc.compile([*m.outputs, gc.grad(gc.sum(m.outputs[0] * m.outputs[0]), m.inputs["x"])],
                   backend="numba")
    *got, dx = f(**dict(zip(names, (x.numpy(), i.numpy()))))
    for ours, theirs in zip(got, Sums()(x, i)):
        assert ours.dtype == theirs.numpy().dtype
        np.testing.assert_array_equal(ours, theirs.numpy())
    xt = x.clone().requires_grad_()
    (xt.sum(1, dtype=torch.float64) ** 2).sum().backward()
    np.testing.assert_array_equal(dx, xt.grad.numpy())


@pytest.mark.parametrize("power", [0, 1, 3, 7])
def test_an_integer_power_of_an_integer_tensor_stays_an_integer(power):
    # gc.power is float: 300001 ** 3 came back 2.7000271e16, not 27000270000900001
    class Power(nn.Module):
        def forward(self, i):
            return i ** power

    i = torch.tensor([3, -7, 300001])
    m = gc.from_torch(Power(), (i,))
    (got,) = gc.compile(m.outputs, backend="numba")(**{m.inputs["i"].name: i.numpy()})
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, (i ** power).numpy())  # wrapping as torch's at 7


def test_an_output_that_is_not_a_tensor_is_named():
    # (x * 2, None): a KeyError('') from inside the importer
    class NoneOut(nn.Module):
        def forward(self, x):
            return x * 2, None

    with pytest.raises(gc.GraphError, match="output 1 of NoneOut is None, not a tensor"):
        gc.from_torch(NoneOut(), (torch.ones(2),))


def test_embedding_gradient_scaled_by_frequency_is_refused():
    with pytest.raises(gc.UnsupportedOpError, match="scale_grad_by_freq=True"):
        gc.from_torch(nn.Embedding(6, 3, scale_grad_by_freq=True), (torch.tensor([[1, 1]]),))


def test_a_shared_parameter_keeps_its_named_parameters_name():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.out = nn.Embedding(7, 4), nn.Linear(4, 7, bias=False)
            self.out.weight = self.emb.weight

        def forward(self, i):
            return self.out(self.emb(i))

    net = Tied()
    m = gc.from_torch(net, (torch.tensor([[1, 2, 3]]),))
    assert list(m.params) == [n for n, _ in net.named_parameters()] == ["emb.weight"]


def test_batch_norm_train_mode_uses_batch_statistics(net):
    module = copy.deepcopy(net).double().train()  # float64: batch norm's cancellations
    module.head[0].p = 0.0  # graphc's dropout masks are not torch's
    x = torch.randn(4, 3, 9, 9, dtype=torch.float64)
    m, ours, theirs, names = imported_gradients(module, x)
    assert len(m.outputs) == 1  # running-statistic updates are not outputs
    assert not any("running" in k for k in m.weights)  # batch statistics: not fed
    # stem.0.bias feeds a batch norm: its gradient is 0 up to round-off, hence atol
    assert_close(m, x, ours, theirs, names, "numpy", 1e-10, atol=1e-12)


def test_imported_params_feed_init_params_and_check_grad():
    torch.manual_seed(2)
    mlp = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    m = gc.from_torch(mlp, (torch.zeros(5, 3, dtype=torch.float64),))
    values = gc.init_params(m.outputs)
    assert set(values) == set(m.weights)
    np.testing.assert_array_equal(values["p_0_weight"], mlp[0].weight.detach().numpy())
    loss = gc.sum(gc.square(m.outputs[0]))
    report = gc.check_grad(loss, m.params.values(), {"input": np.ones((5, 3)), **m.weights})
    assert report.ok, report


# ---------------------------------------------------------------------------------------
# Names, scopes, errors


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.bn = nn.BatchNorm2d(2)
        self.b_c = nn.Linear(2, 2)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(Inner(), Inner())
        self.a = nn.Module()
        self.a.b_c = nn.Linear(4, 2)
        self.a_b = nn.Module()
        self.a_b.c = nn.Linear(2, 2)

    def forward(self, x):
        return self.a_b.c(self.a.b_c(self.blocks(x).flatten(1)))


def test_names_are_torch_names_and_scopes_are_module_paths():
    m = gc.from_torch(Outer().eval(), (torch.zeros(1, 2, 1, 2),))
    assert list(m.inputs) == ["x"]
    assert sorted(m.params) == ["a.b_c.bias", "a.b_c.weight", "a_b.c.bias", "a_b.c.weight"] + [
        f"blocks.{k}.{layer}.{what}" for k in "01" for layer in ("bn", "conv")
        for what in ("bias", "weight")]  # not b_c: unused by forward
    labels = {k: p.op.label for k, p in m.params.items()}
    assert labels["blocks.1.conv.weight"] == "blocks_1_conv_weight"
    assert labels["a.b_c.weight"] == "a_b_c_weight" and labels["a_b.c.weight"] == "a_b_c_weight_2"
    assert set(m.weights) == set(labels.values()) | {
        f"blocks_{k}_bn_running_{what}" for k in "01" for what in ("mean", "var")}
    assert m.params["blocks.0.conv.weight"].scope == "blocks/blocks.0/blocks.0.conv"
    text = gc.format_graph(m.outputs)
    assert "blocks.1.conv.conv2d = conv2d(blocks.0.relu, blocks_1_conv_weight" in text
    assert "blocks.1.relu = relu(" in text
    layers = gc.render(m.outputs, collapse=True).source
    assert "blocks\\n" in layers and "blocks.0\\n" not in layers
    blocks = gc.render(m.outputs, collapse=2).source  # a scope per block
    assert "blocks.0\\n" in blocks and "blocks.1\\n" in blocks and "a.b_c\\n" in blocks
    assert "blocks.0.conv\\n" not in blocks
    # one edge from block 0 to block 1: the scalar constants they share are not drawn
    assert blocks.count('"scope_blocks/blocks.0" -> "scope_blocks/blocks.1"') == 1


class TwicePooled(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Sequential(nn.Linear(2, 2), nn.ReLU())

    def forward(self, x):
        h = self.pool(self.c2(self.pool(self.c1(x)))).flatten(1)
        return self.head(self.head(h))


def test_a_negated_bool_mask_imports():
    class Masked(nn.Module):
        def forward(self, x):
            return torch.where(~(x > 0), x * 2, x) + torch.logical_not(x).double()

    x = torch.tensor([[1.0, -1.0, 0.0], [-3.0, 0.5, 4.0]], dtype=torch.float64)
    m = gc.from_torch(Masked(), (x,))
    (y,) = gc.compile(m.outputs, backend="numpy")(**{m.inputs["x"].name: x.numpy()})
    np.testing.assert_array_equal(y, Masked()(x).numpy())


def test_a_module_called_twice_is_a_group_per_call():
    # one group holding both calls' nodes was drawn as a loop (relu_2 back into pool);
    # torch.export names the second call 'pool@1', and so does graphc's scope
    net = TwicePooled().eval()
    m = gc.from_torch(net, (torch.zeros(1, 1, 10, 10),))
    scopes = {t.scope for t in gc.Graph(m.outputs).nodes if t.op.name in ("max_pool2d",
                                                                          "relu", "matmul")}
    assert scopes == {"pool", "pool@1", "head/head.0", "head/head.1", "head@1/head@1.0",
                      "head@1/head@1.1"}, scopes
    assert sorted(m.params) == ["c1.bias", "c1.weight", "c2.bias", "c2.weight",
                                "head.0.bias", "head.0.weight"]  # one weight, used twice
    x = torch.randn(1, 1, 10, 10)
    (y,) = gc.compile(m.outputs, backend="numpy")(x=x.numpy(), **m.weights)
    np.testing.assert_allclose(y, net(x).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_unsupported_op_names_op_node_and_supported_set():
    class Cumprod(nn.Module):
        def forward(self, x):
            return torch.cumprod(torch.relu(x), 1)

    with pytest.raises(gc.UnsupportedOpError) as info:
        gc.from_torch(Cumprod(), (torch.zeros(2, 3),))
    text = str(info.value)
    assert text.startswith("ATen op aten.cumprod.default (node 'cumprod' in Cumprod) is "
                           "not supported by gc.from_torch; the supported ops are: "
                           "aten._adaptive_avg_pool2d, ")
    assert "aten.convolution" in text and "aten.relu" in text
    assert "test_torch_import.py" in text  # the user's line


def test_unsupported_variant_is_raised_at_import():
    volume = nn.Sequential(nn.Conv3d(2, 2, 3))
    with pytest.raises(gc.UnsupportedOpError,
                       match=r"^ATen op aten.convolution.default \(node 'convolution' in module "
                             r"'0' \(torch.nn.modules.conv.Conv3d\)\) is not supported by "
                             r"gc.from_torch \(only 1-D and 2-D convolutions, 2-D if "
                             r"transposed\); the supported ops are: aten._adaptive"):
        gc.from_torch(volume, (torch.zeros(1, 2, 4, 4, 4),))


def test_import_graphc_does_not_import_torch():
    code = "import sys, graphc; assert 'torch' not in sys.modules; print(graphc.from_torch)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "function from_torch" in result.stdout


# ---------------------------------------------------------------------------------------
# torchvision: gradients of a cross-entropy loss w.r.t. every parameter vs autograd

TORCHVISION = [("resnet18", 32), ("squeezenet1_1", 64)]  # more in docs/import.md (test time)


def cross_entropy_gradients(module, x, labels, backend):
    m = gc.from_torch(module, (x,))
    y = gc.input("labels", labels.shape, "int64")
    loss = gc.softmax_cross_entropy(m.outputs[0], y)
    names = list(m.params)
    f = gc.compile([loss, *gc.grad(loss, [m.params[k] for k in names])], backend=backend)
    ours = f(**{m.inputs["x"].name: x.numpy(), "labels": labels.numpy()}, **m.weights)
    ref = nn.functional.cross_entropy(module(x), labels)
    params = dict(module.named_parameters())
    theirs = torch.autograd.grad(ref, [params[k] for k in names])
    assert len(names) == len(params)
    errors = {k: np.linalg.norm(a - b.numpy()) / np.linalg.norm(b.numpy())
              for k, a, b in zip(names, ours[1:], theirs)}
    return float(ours[0]), ref.item(), errors


@pytest.mark.slow
@pytest.mark.parametrize("name,size", TORCHVISION)
def test_torchvision_gradients_match_autograd(name, size):
    models = torchvision_models()
    torch.manual_seed(0)
    module = getattr(models, name)(num_classes=10).eval().double()
    x, labels = torch.randn(2, 3, size, size, dtype=torch.float64), torch.tensor([3, 7])
    # float64 on both sides: a max pool's gradient jumps where two window values (or a value
    # and a ReLU's zero) nearly tie, and float32 rounding flips such near-ties by machine (on
    # an AVX-512 EPYC torch's own float32 squeezenet1_1 gradients are 1.3e-2 from its
    # float64 ones, while graphc's are 5e-7 from them); docs/import.md
    ours, ref, errors = cross_entropy_gradients(module, x, labels, "numpy")
    assert abs(ours - ref) < 1e-12 * abs(ref)
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-10, f"{name}: {worst} relative error {errors[worst]:.2e}"


def _small_transformers(models):
    """Small configurations of torchvision's Swin v2 (shifted windows: masks assigned into
    slices, a zeroed bias slice, rolls) and ConvNeXt (channels-last global pooling)."""
    swin = importlib.import_module("torchvision.models.swin_transformer")
    convnext = importlib.import_module("torchvision.models.convnext")
    return {"swin_v2": swin.SwinTransformer(
                patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2],
                window_size=[4, 4], num_classes=10, block=swin.SwinTransformerBlockV2,
                downsample_layer=swin.PatchMergingV2),
            "convnext": convnext.ConvNeXt([convnext.CNBlockConfig(16, 32, 1),
                                           convnext.CNBlockConfig(32, None, 1)],
                                          num_classes=10)}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["swin_v2", "convnext"])
def test_swin_and_convnext_gradients_match_autograd(name):
    torch.manual_seed(0)
    module = _small_transformers(torchvision_models())[name].eval().double()
    with torch.no_grad():  # layer norms and zero-initialised vectors that are not trivial
        for p in module.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    x, labels = torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.tensor([3, 7])
    ours, ref, errors = cross_entropy_gradients(module, x, labels, "numpy")
    assert abs(ours - ref) < 1e-12 * abs(ref)
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-10, f"{name}: {worst} relative error {errors[worst]:.2e}"


@pytest.mark.slow
def test_resnet18_finetune_example(tmp_path):
    """examples/resnet18_finetune.py, 3 steps, in a fresh process (as run by hand)."""
    torchvision_models()  # skips where torchvision is missing
    svg = tmp_path / "blocks.svg"
    code = ("import json, sys; sys.path.insert(0, 'examples'); import resnet18_finetune as ex; "
            f"print('RESULTS', json.dumps(ex.main(steps=3, progress=False, diagram={str(svg)!r})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=pathlib.Path(__file__).resolve().parent.parent, timeout=600)
    assert result.returncode == 0, result.stderr
    line = next(li for li in result.stdout.splitlines() if li.startswith("RESULTS "))
    results = json.loads(line[len("RESULTS "):])
    assert results["params"] == 62 and results["steps"] == 3
    assert results["test_accuracy"] > results["test_accuracy_before"] + 0.05
    labels = svg.read_text()
    assert all(f">layer{k}.{j}</text>" in labels for k in range(1, 5) for j in (0, 1))
    assert ">layer1.0.conv1</text>" not in labels and "upstream ∂L/∂" in labels


class StraightThrough(nn.Module):
    """A straight-through rounding (``h + (round(h) - h).detach()``) scaled by a statistic
    computed under ``torch.no_grad()``: neither passes a gradient in torch."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.3, -1.2, 2.0, 0.7], dtype=torch.float64))

    def forward(self, x):
        h = x * self.w
        q = h + (torch.round(h) - h).detach()
        with torch.no_grad():
            scale = (h * h).sum()
        return q * scale


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_detach_and_no_grad_stop_the_gradient_as_in_torch(backend):
    # the decompositions turned .detach() into an alias and inlined the no_grad block, and
    # the gradient flowed through both: [2.4, -38.4, 144, ...] instead of torch's
    x = torch.tensor([[1.0, 2.0, 3.0, -1.5]], dtype=torch.float64)
    m, ours, theirs, names = imported_gradients(StraightThrough(), x)
    assert names == ["w"]
    assert_close(m, x, ours, theirs, names, backend, 1e-12)
    assert "stop_gradient" in {t.op.name for t in gc.Graph(m.outputs).nodes}
