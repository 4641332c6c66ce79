"""gc.from_torch of the ATen ops that losses, masks, norms and decoders export to (gather,
arange, advanced indexing, padding, norms, resizing, group norm, max with indices,
remainders, logical ops): each module's outputs and its gradients w.r.t. every float input
and parameter against torch autograd, float64, on the NumPy and Numba backends."""

import numpy as np
import pytest

import graphc as gc

torch = pytest.importorskip("torch")
nn, Fn = torch.nn, torch.nn.functional


class Lambda(nn.Module):
    def __init__(self, fn, sub=None):
        super().__init__()
        self.fn, self.sub = fn, sub() if sub else None

    def forward(self, *args):
        return self.fn(self, *args)


def _r(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def _slice_assign(m, x):
    y = x.clone()
    y[:, 1:3] = x[:, :2] * 2.0
    y[:, 0] = x[:, 3] ** 2
    return y


def _constant_mask(m, x):
    mask = x.new_zeros(4, 4)
    mask[:2, 2:] = 1.0  # copy of a constant into a slice (swin's shifted-window mask)
    return x * mask + x


def _zeroed_bias(m, x):
    b = m.sub.bias.clone()
    b[2:4].zero_()  # swin v2's qkv bias: the zeroed slice gets no gradient
    return x @ m.sub.weight.T + b


IDX = torch.tensor([[0, 3], [2, 1], [1, 1]])
LABELS = torch.tensor([0, 3, 4, 1])

CASES = {
    # torch.gather, and the losses that export to it
    "gather_dim1": (lambda m, x: torch.gather(x, 1, IDX), (_r(3, 4),)),
    "gather_dim0_neg": (lambda m, x: torch.gather(x, -2, IDX.T[:, :3] % 3), (_r(3, 4),)),
    "gather_fed_index": (lambda m, x, i: torch.gather(x, 1, i), (_r(3, 4), IDX)),
    "cross_entropy": (lambda m, x, y: Fn.cross_entropy(m.sub(x), y), (_r(4, 6), LABELS),
                      lambda: nn.Linear(6, 5)),
    "cross_entropy_smooth": (lambda m, x, y: Fn.cross_entropy(x, y, label_smoothing=0.1),
                             (_r(4, 5), LABELS)),
    "nll_weighted": (lambda m, x, y: Fn.nll_loss(Fn.log_softmax(x, 1), y,
                                                 weight=torch.arange(1.0, 6.0).double()),
                     (_r(4, 5), LABELS)),
    "kl_div": (lambda m, x, y: Fn.kl_div(Fn.log_softmax(x, 1), Fn.softmax(y, 1),
                                         reduction="batchmean"), (_r(4, 5), _r(4, 5))),
    # max / min with indices: the gradient goes to the one element the index names
    "max_dim": (lambda m, x: torch.max(x, 1).values * 2 + torch.min(x, 0, True).values.sum(),
                (_r(3, 4),)),
    "max_dim_ties": (lambda m, x: torch.max(x, 1).values,
                     (torch.tensor([[1.0, 2.0, 2.0], [3.0, 3.0, 3.0]]).double(),)),
    "max_indices": (lambda m, x: x * torch.max(x, 1, keepdim=True).indices,
                    (_r(3, 4),)),
    "max_all": (lambda m, x: torch.max(x) - torch.min(x), (_r(3, 4),)),
    # arange: masks, one-hot, roll (its positions are index arithmetic, folded)
    "causal_attention": (lambda m, q: Fn.scaled_dot_product_attention(q, q * 2, q + 1,
                                                                      is_causal=True),
                         (_r(1, 2, 4, 3),)),
    "tril_triu": (lambda m, x: torch.tril(x) + x.masked_fill(
        torch.ones(4, 4, dtype=torch.bool).triu(1), 0.5), (_r(4, 4),)),
    "one_hot": (lambda m, x, y: x * Fn.one_hot(y, 5), (_r(4, 5), LABELS)),
    "roll": (lambda m, x: torch.roll(x, 1, 1) + torch.roll(x, -2, 0), (_r(3, 4),)),
    "arange_float": (lambda m, x: x * torch.arange(0.5, 2.5, 0.5, dtype=torch.float64),
                     (_r(3, 4),)),
    # advanced indexing
    "index_rows": (lambda m, x: x[[2, 0, 2, -1]], (_r(3, 4),)),
    "index_mask": (lambda m, x: x[:, torch.tensor([True, False, True, True])], (_r(3, 4),)),
    "index_pairs": (lambda m, x: x[torch.arange(3), torch.tensor([3, 0, -1])], (_r(3, 4),)),
    "index_adjacent_inner": (lambda m, x: x[:, torch.tensor([[0], [2]]), torch.tensor([1, 0])],
                             (_r(2, 3, 4, 5),)),
    "index_separated": (lambda m, x: x[torch.tensor([1, 0]), :, torch.tensor([3, 3])],
                        (_r(2, 3, 4),)),
    "index_select": (lambda m, x: torch.index_select(x, 1, torch.tensor([3, 0, 0])),
                     (_r(3, 4),)),
    "index_select_fed": (lambda m, x, i: torch.index_select(x, 0, i[:, 0]), (_r(3, 4), IDX)),
    # assignment into slices, and a change of memory layout only
    "slice_assign": (_slice_assign, (_r(3, 4),)),
    "constant_mask": (_constant_mask, (_r(2, 4, 4),)),
    "zeroed_bias": (_zeroed_bias, (_r(3, 6),), lambda: nn.Linear(6, 6)),
    "channels_last_pool": (lambda m, x: Fn.adaptive_avg_pool2d(x.permute(0, 3, 1, 2), 1),
                           (_r(2, 4, 4, 3),)),
    # padding, repeat, norms, statistics
    "pad": (lambda m, x: Fn.pad(x, (1, 2, 0, 1), value=0.25), (_r(3, 4),)),
    "pad_crop": (lambda m, x: Fn.pad(x, (-1, 2)), (_r(3, 4),)),
    "pad_reflect": (lambda m, x: Fn.pad(x, (2, 1), mode="reflect"), (_r(1, 3, 4),)),
    "zero_pad2d": (lambda m, x: nn.ZeroPad2d((1, 0, 2, 1))(x), (_r(1, 2, 3, 3),)),
    "repeat": (lambda m, x: x.repeat(2, 1, 3), (_r(3, 4),)),
    "norm2": (lambda m, x: torch.linalg.vector_norm(x, dim=1), (_r(3, 4),)),
    "norm2_zero_row": (lambda m, x: torch.norm(x * torch.tensor([[1.0], [0.0]]).double(), dim=1),
                       (_r(2, 4),)),
    "norm_orders": (lambda m, x: torch.linalg.vector_norm(x, 1, dim=0)
                    + torch.linalg.vector_norm(x, float("inf"), dim=0)
                    + torch.linalg.vector_norm(x, 3, dim=0, keepdim=True),
                    (_r(3, 4),)),
    "cosine_similarity": (lambda m, x: Fn.cosine_similarity(x[0], x[1], dim=-1),
                          (_r(2, 3, 4),)),
    "normalize": (lambda m, x: Fn.normalize(x, dim=1), (_r(3, 4),)),
    "std_mean": (lambda m, x: torch.std_mean(x, dim=1)[0] * torch.var_mean(x, 0)[1].sum(),
                 (_r(3, 4),)),
    "group_norm": (lambda m, x: m.sub(x) * 1.5, (_r(2, 4, 3, 3),), lambda: nn.GroupNorm(2, 4)),
    # resizing
    "upsample_nearest": (lambda m, x: Fn.interpolate(x, scale_factor=2), (_r(1, 2, 3, 3),)),
    "upsample_nearest_size": (lambda m, x: Fn.interpolate(x, size=(5, 7)), (_r(1, 2, 3, 3),)),
    "upsample_bilinear": (lambda m, x: Fn.interpolate(x, size=(5, 7), mode="bilinear"),
                          (_r(1, 2, 3, 4),)),
    "upsample_bilinear_corners": (lambda m, x: Fn.interpolate(
        x, scale_factor=2, mode="bilinear", align_corners=True), (_r(1, 2, 3, 4),)),
    "adaptive_max": (lambda m, x: Fn.adaptive_max_pool2d(x, (2, 3)), (_r(1, 2, 4, 6),)),
    "adaptive_max_uneven": (lambda m, x: Fn.adaptive_max_pool2d(x, (2, 3)), (_r(1, 2, 5, 7),)),
    # diagonal (torch.diag of a matrix, torch.trace): any plane, offsets both ways
    "diagonal": (lambda m, x: torch.cat([torch.diagonal(x, 1, 0, 1), torch.diag(x[:, :4]),
                                         torch.trace(x[:, :4]).reshape(1), x.diagonal(-1),
                                         torch.diagonal(x, 0, 1, 0)]), (_r(4, 5),)),
    "diagonal_3d": (lambda m, x: torch.diagonal(x, -1, -1, 0) * 2
                    + torch.diagonal(x, 0, -2, -1)[:, :2], (_r(3, 3, 3),)),
    # sinc: 1 at 0 with gradient 0 there, as torch (decomposed, its gradient was NaN)
    "sinc": (lambda m, x: torch.sinc(x), (torch.tensor([[0.0, 1e-3, -0.5], [1.0, 2.5, 0.0]],
                                                       dtype=torch.float64),)),
    # remainders, rounding division, NaN tests and logical ops
    "remainder": (lambda m, x: torch.remainder(x, 0.75) + torch.fmod(x, -0.75), (_r(3, 4),)),
    "remainder_tensor": (lambda m, x, y: torch.remainder(x, y.abs() + 0.5), (_r(3, 4),
                                                                              _r(3, 4))),
    "floor_divide": (lambda m, x: torch.div(x, 0.7, rounding_mode="floor")
                     + torch.div(x, 0.7, rounding_mode="trunc") + x, (_r(3, 4),)),
    "nan_to_num": (lambda m, x: torch.nan_to_num(x / (x > 0), posinf=5.0), (_r(3, 4),)),
    "isnan": (lambda m, x: torch.where(torch.isnan(x.log()), 0.0, x), (_r(3, 4),)),
    "logical": (lambda m, x: ((x > 0) & (x < 1)) * x + ((x > 0) | (x < -1)) * 2.0
                + (x > 0).logical_xor(x > 1) * 3.0 + torch.logical_and(x > 0, x < 1) * x,
                (_r(3, 4),)),
    # one (C, H, W) sample, which torch's 2-D poolings take (a bare ValueError before)
    "pools_unbatched": (lambda m, x: Fn.max_pool2d(x, 2).sum(0) + Fn.avg_pool2d(x, 2).mean(0)
                        + Fn.adaptive_avg_pool2d(x, (3, 4)).amax(0)
                        + Fn.adaptive_max_pool2d(x, (3, 4)).sum(0), (_r(2, 7, 9),)),
    "round_decimals": (lambda m, x: torch.round(x * 7, decimals=2) * x
                       + torch.round(x * 300, decimals=-1), (_r(3, 4),)),
}


def _run(name, backend):
    fn, args, *sub = CASES[name]
    torch.manual_seed(0)
    module = Lambda(fn, *sub).double()
    if sub:  # parameters that are not the identity
        with torch.no_grad():
            for p in module.parameters():
                p.uniform_(-1.5, 1.5)
    m = gc.from_torch(module, args)
    floats = [k for k, a in zip(m.inputs, args) if a.is_floating_point()]
    targs = [a.clone().requires_grad_(a.is_floating_point()) for a in args]
    out = module(*targs)
    params = dict(module.named_parameters())
    w = np.random.default_rng(1).standard_normal(tuple(out.shape))
    wrt_t = [a for a in targs if a.is_floating_point()] + [params[k] for k in m.params]
    theirs = torch.autograd.grad((out * torch.from_numpy(w)).sum(), wrt_t)
    (y,) = m.outputs
    wrt = [m.inputs[k] for k in floats] + list(m.params.values())
    f = gc.compile([y, *gc.grad(gc.sum(y * gc.constant(w)), wrt)], backend=backend)
    ours = f(**{m.inputs[k].name: a.numpy() for k, a in zip(m.inputs, args)}, **m.weights)
    np.testing.assert_allclose(ours[0], out.detach().numpy(), rtol=1e-12, atol=1e-12)
    assert ours[0].dtype == out.detach().numpy().dtype
    for a, b in zip(ours[1:], theirs):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("name", list(CASES))
def test_op_matches_torch_forward_and_gradients(name, backend):
    _run(name, backend)


def test_a_norm_of_order_zero_is_refused_at_import():
    class Past(nn.Module):
        def forward(self, x):
            return torch.linalg.vector_norm(x, 0.0, dim=1)

    with pytest.raises(gc.UnsupportedOpError, match=r"aten.linalg_vector_norm.*\(ord=0.0\)"):
        gc.from_torch(Past(), (torch.zeros(2, 3),))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_integer_division_and_remainders_of_fed_tensors_are_exact(backend):
    class Divide(nn.Module):
        def forward(self, i, j):
            return torch.stack([i // j, torch.div(i, j, rounding_mode="trunc"),
                                torch.remainder(i, j), torch.fmod(i, j), i % 7])

    i = torch.tensor([7, -7, 7, -7, 2**50 + 3, -(2**50) - 3, 0])
    j = torch.tensor([2, 2, -2, -2, 3, 3, -5])
    m = gc.from_torch(Divide(), (i, j))
    f = gc.compile(m.outputs, backend=backend)
    (out,) = f(**{m.inputs[k].name: a.numpy() for k, a in zip(m.inputs, (i, j))})
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, Divide()(i, j).numpy())


class TinyGPT(nn.Module):
    """Embeddings with positions from arange, causal self-attention, an MLP and the
    cross-entropy loss, all inside the module."""

    def __init__(self, d=16, heads=2, steps=6, vocab=11):
        super().__init__()
        self.emb, self.pos = nn.Embedding(vocab, d), nn.Embedding(steps, d)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.head = nn.Linear(d, vocab)
        self.register_buffer("mask", torch.triu(torch.ones(steps, steps, dtype=torch.bool), 1))

    def forward(self, idx, targets):
        x = self.emb(idx) + self.pos(torch.arange(idx.shape[1]))
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=self.mask, need_weights=False)[0]
        logits = self.head(x + self.mlp(self.ln2(x)))
        return Fn.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


class TinyUNet(nn.Module):
    """Group norms, a strided convolution, nearest upsampling, a skip and F.normalize."""

    def __init__(self):
        super().__init__()
        self.c1, self.g1 = nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(4, 8)
        self.c2, self.g2 = nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.GroupNorm(2, 8)
        self.c3 = nn.Conv2d(16, 4, 3, padding=1)

    def forward(self, x):
        a = Fn.silu(self.g1(self.c1(x)))
        up = Fn.interpolate(Fn.silu(self.g2(self.c2(a))), scale_factor=2)
        return Fn.normalize(self.c3(torch.cat([a, up], 1)).flatten(1), dim=1).sum()


@pytest.mark.parametrize("model", ["gpt", "unet"])
def test_small_models_with_a_loss_inside_match_autograd_on_numba(model):
    torch.manual_seed(0)
    module = (TinyGPT() if model == "gpt" else TinyUNet()).eval()
    args = ((torch.randint(0, 11, (2, 6)), torch.randint(0, 11, (2, 6))) if model == "gpt"
            else (torch.randn(2, 3, 8, 8),))
    m = gc.from_torch(module, args)
    (loss,) = m.outputs
    names = list(m.params)
    f = gc.compile([loss, *gc.grad(loss, [m.params[k] for k in names])])
    ours = f(**{m.inputs[k].name: a.numpy() for k, a in zip(m.inputs, args)}, **m.weights)
    params = dict(module.named_parameters())
    value = module(*args)
    theirs = torch.autograd.grad(value, [params[k] for k in names])
    assert len(names) == (16 if model == "gpt" else 10)
    np.testing.assert_allclose(ours[0], value.detach().numpy(), rtol=1e-5)
    for name, a, b in zip(names, ours[1:], theirs):
        err = np.linalg.norm(a - b.numpy()) / np.linalg.norm(b.numpy())
        assert err < 1e-5, f"{name}: relative error {err:.2e}"
