"""The benchmark workloads, each written once per framework.

A workload is one training step: the loss and its gradients with respect to every
parameter (and, for W3, the input), in float32.  It is defined three times, with the same
shapes and the same math:

- ``graphc``: a graph builder ``(**sizes) -> (loss, wrt)``;
- ``torch``: an eager function ``(tensors) -> loss``;
- ``jax``: a function ``(arrays) -> loss`` that the harness wraps in
  ``jax.jit(jax.value_and_grad(...))``.

``tensors``/``arrays`` map feed names to values: the data (seeded, from ``data``) and the
initial parameters (``gc.init_params`` of the graphc loss), so every framework starts from
the same numbers.  Adding a workload is one more entry in :data:`WORKLOADS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import graphc as gc


@dataclass(frozen=True)
class Problem:
    """A workload instantiated at given sizes: the graphc loss, what to differentiate, and
    the feeds (data and initial parameters) shared by every framework."""

    loss: gc.Tensor
    wrt: tuple[gc.Tensor, ...]
    feeds: dict[str, np.ndarray]

    @property
    def wrt_names(self) -> tuple[str, ...]:
        return tuple(t.op.label for t in self.wrt)


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    target: float | None  # graphc ms/step divided by the faster of PyTorch eager and JAX
    # jit in the same run (issue 18's targets)
    sizes: dict  # the benchmark's sizes; tests pass smaller ones
    graphc: Callable  # (**sizes) -> (loss, wrt)
    data: Callable  # (rng, **sizes) -> {name: array} of the non-parameter feeds
    torch: Callable  # (tensors) -> loss
    jax: Callable  # (arrays) -> loss
    torch_extra: dict = field(default_factory=dict)  # row name -> (tensors) -> loss
    target_us: float | None = None  # an absolute target instead: graphc us/step

    def problem(self, sizes: dict | None = None, seed: int = 0) -> Problem:
        sizes = {**self.sizes, **(sizes or {})}
        loss, wrt = self.graphc(**sizes)
        feeds = self.data(np.random.default_rng(seed), **sizes)
        feeds.update(gc.init_params(loss, seed=seed))
        return Problem(loss, tuple(wrt), feeds)


def _normal(rng, shape) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------------------
# W1, W2: MLP with ReLU and softmax cross-entropy.  Parameters W1, b1, W2, b2, ...


def mlp_graphc(batch, widths):
    x = gc.input("x", (batch, widths[0]))
    labels = gc.input("labels", (batch,), "int64")
    h, params = x, []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
        W = gc.param(f"W{i}", (fan_in, fan_out))
        b = gc.param(f"b{i}", (fan_out,), init="zeros")
        h = h @ W + b
        if i < len(widths) - 1:
            h = gc.relu(h)
        params += [W, b]
    return gc.softmax_cross_entropy(h, labels), params


def mlp_data(rng, batch, widths):
    return {"x": _normal(rng, (batch, widths[0])),
            "labels": rng.integers(0, widths[-1], batch).astype(np.int64)}


def _layers(t) -> int:
    return sum(1 for name in t if name.startswith("W"))


def mlp_torch(t):
    import torch
    h, n = t["x"], _layers(t)
    for i in range(1, n + 1):
        h = h @ t[f"W{i}"] + t[f"b{i}"]
        if i < n:
            h = torch.relu(h)
    return torch.nn.functional.cross_entropy(h, t["labels"])


def mlp_jax(t):
    import jax
    import jax.numpy as jnp
    h, n = t["x"], _layers(t)
    for i in range(1, n + 1):
        h = h @ t[f"W{i}"] + t[f"b{i}"]
        if i < n:
            h = jax.nn.relu(h)
    logp = jax.nn.log_softmax(h, axis=1)
    return -jnp.mean(jnp.take_along_axis(logp, t["labels"][:, None], axis=1))


# ---------------------------------------------------------------------------------------
# W3: a chain of elementwise ops with parameter vectors a, b; gradients w.r.t. x, a, b.


def chain_graphc(rows, cols):
    x = gc.input("x", (rows, cols))
    a = gc.param("a", (cols,), init="normal")
    b = gc.param("b", (cols,), init="normal")
    z = gc.silu(gc.gelu(gc.sigmoid(gc.tanh(x)), approximate="tanh"))
    return gc.mean(gc.square(gc.softplus(z * a + b))), [x, a, b]


def chain_data(rng, rows, cols):
    return {"x": _normal(rng, (rows, cols))}


def chain_torch(t):
    import torch
    F = torch.nn.functional
    z = F.silu(F.gelu(torch.sigmoid(torch.tanh(t["x"])), approximate="tanh"))
    return torch.mean(torch.square(F.softplus(z * t["a"] + t["b"])))


def chain_jax(t):
    import jax
    import jax.numpy as jnp
    z = jax.nn.silu(jax.nn.gelu(jax.nn.sigmoid(jnp.tanh(t["x"])), approximate=True))
    return jnp.mean(jnp.square(jax.nn.softplus(z * t["a"] + t["b"])))


# ---------------------------------------------------------------------------------------
# W4: an LSTM unrolled over `steps` time steps; loss = mean of the last hidden state.
# One cell, gates in PyTorch's order (input, forget, cell, output):
#   z = x_t @ Wx + h @ Wh + b;  c = f * c + i * g;  h = o * tanh(c)


def lstm_graphc(inputs, hidden, batch, steps):
    xs = gc.input("xs", (steps, batch, inputs))
    Wx = gc.param("Wx", (inputs, 4 * hidden))
    Wh = gc.param("Wh", (hidden, 4 * hidden))
    b = gc.param("b", (4 * hidden,), init="zeros")
    H = hidden
    h = c = gc.constant(np.zeros((batch, hidden), np.float32))
    for t in range(steps):
        z = xs[t] @ Wx + h @ Wh + b
        i, f = gc.sigmoid(z[:, :H]), gc.sigmoid(z[:, H:2 * H])
        g, o = gc.tanh(z[:, 2 * H:3 * H]), gc.sigmoid(z[:, 3 * H:])
        c = f * c + i * g
        h = o * gc.tanh(c)
    return gc.mean(h), [Wx, Wh, b]


def lstm_scan_graphc(inputs, hidden, batch, steps):
    """W4's LSTM with the time loop as one ``gc.scan`` (issue 16's form of W4)."""
    xs = gc.input("xs", (steps, batch, inputs))
    Wx = gc.param("Wx", (inputs, 4 * hidden))
    Wh = gc.param("Wh", (hidden, 4 * hidden))
    b = gc.param("b", (4 * hidden,), init="zeros")
    H = hidden

    def cell(carry, x):
        h, c = carry
        z = x @ Wx + h @ Wh + b
        i, f = gc.sigmoid(z[:, :H]).named("i"), gc.sigmoid(z[:, H:2 * H]).named("f")
        g, o = gc.tanh(z[:, 2 * H:3 * H]).named("g"), gc.sigmoid(z[:, 3 * H:]).named("o")
        c = (f * c + i * g).named("c")  # names for the diagrams only
        return ((o * gc.tanh(c)).named("h"), c), None

    zeros = gc.constant(np.zeros((batch, hidden), np.float32))
    (h, _), _ = gc.scan(cell, (zeros, zeros), xs)
    return gc.mean(h), [Wx, Wh, b]


def lstm_data(rng, inputs, hidden, batch, steps):
    return {"xs": _normal(rng, (steps, batch, inputs))}


def lstm_torch(t):
    import torch
    xs, Wx, Wh, b = t["xs"], t["Wx"], t["Wh"], t["b"]
    H = Wh.shape[0]
    h = c = torch.zeros(xs.shape[1], H, device=xs.device)
    for x in xs:
        z = x @ Wx + h @ Wh + b
        i, f = torch.sigmoid(z[:, :H]), torch.sigmoid(z[:, H:2 * H])
        g, o = torch.tanh(z[:, 2 * H:3 * H]), torch.sigmoid(z[:, 3 * H:])
        c = f * c + i * g
        h = o * torch.tanh(c)
    return h.mean()


_FUSED_LSTMS: dict = {}


def lstm_torch_fused(t):
    """The same LSTM through ``torch.nn.LSTM`` (PyTorch's fused kernel): a reference row."""
    import torch
    xs, Wx, Wh, b = t["xs"], t["Wx"], t["Wh"], t["b"]
    key = (Wx.shape[0], Wh.shape[0])
    if key not in _FUSED_LSTMS:
        _FUSED_LSTMS[key] = torch.nn.LSTM(*key).to(xs.device)
    weights = {"weight_ih_l0": Wx.T, "weight_hh_l0": Wh.T, "bias_ih_l0": b,
               "bias_hh_l0": torch.zeros_like(b)}
    if xs.is_cuda:  # cuDNN's LSTM takes contiguous weights
        weights = {name: w.contiguous() for name, w in weights.items()}
    _, (h, _) = torch.func.functional_call(_FUSED_LSTMS[key], weights, (xs,))
    return h[-1].mean()


def lstm_jax(t):
    import jax
    import jax.numpy as jnp
    xs, Wx, Wh, b = t["xs"], t["Wx"], t["Wh"], t["b"]
    H = Wh.shape[0]
    h = c = jnp.zeros((xs.shape[1], H), xs.dtype)
    for step in range(xs.shape[0]):  # unrolled, like the graphc graph
        z = xs[step] @ Wx + h @ Wh + b
        i, f = jax.nn.sigmoid(z[:, :H]), jax.nn.sigmoid(z[:, H:2 * H])
        g, o = jnp.tanh(z[:, 2 * H:3 * H]), jax.nn.sigmoid(z[:, 3 * H:])
        c = f * c + i * g
        h = o * jnp.tanh(c)
    return jnp.mean(h)


def lstm_scan_jax(t):
    """W4 through ``jax.lax.scan`` (the form JAX users write; jit compiles the body once)."""
    import jax
    import jax.numpy as jnp
    xs, Wx, Wh, b = t["xs"], t["Wx"], t["Wh"], t["b"]
    H = Wh.shape[0]

    def cell(carry, x):
        h, c = carry
        z = x @ Wx + h @ Wh + b
        i, f = jax.nn.sigmoid(z[:, :H]), jax.nn.sigmoid(z[:, H:2 * H])
        g, o = jnp.tanh(z[:, 2 * H:3 * H]), jax.nn.sigmoid(z[:, 3 * H:])
        c = f * c + i * g
        return (o * jnp.tanh(c), c), None

    zeros = jnp.zeros((xs.shape[1], H), xs.dtype)
    (h, _), _ = jax.lax.scan(cell, (zeros, zeros), xs)
    return jnp.mean(h)


# ---------------------------------------------------------------------------------------
# W5: LeNet on 1 x 28 x 28 images: conv 1->6 5x5, ReLU, max-pool 2, conv 6->16 5x5, ReLU,
# max-pool 2, dense 256->120->84->10 (ReLU between), softmax cross-entropy.  Parameters
# conv1_W (6, 1, 5, 5), conv1_b, conv2_W (16, 6, 5, 5), conv2_b, fc1_W (256, 120), fc1_b, ...
# (torch's layouts for the kernels; the dense weights follow x @ W).


def lenet_graphc(batch, size):
    x = gc.input("x", (batch, 1, size, size))
    labels = gc.input("labels", (batch,), "int64")
    params, h = [], x
    for name, c_in, c_out in (("conv1", 1, 6), ("conv2", 6, 16)):
        W = gc.param(f"{name}_W", (c_out, c_in, 5, 5), init="he_normal")
        b = gc.param(f"{name}_b", (c_out,), init="zeros")
        h = gc.max_pool2d(gc.relu(gc.conv2d(h, W, bias=b)), 2)
        params += [W, b]
    h = gc.reshape(h, (batch, h.size // batch))
    widths = (h.shape[1], 120, 84, 10)
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
        W = gc.param(f"fc{i}_W", (fan_in, fan_out))
        b = gc.param(f"fc{i}_b", (fan_out,), init="zeros")
        h = h @ W + b
        if i < len(widths) - 1:
            h = gc.relu(h)
        params += [W, b]
    return gc.softmax_cross_entropy(h, labels), params


def lenet_data(rng, batch, size):
    return {"x": rng.random((batch, 1, size, size), dtype=np.float32),
            "labels": rng.integers(0, 10, batch).astype(np.int64)}


def lenet_torch(t):
    import torch
    F = torch.nn.functional
    h = t["x"]
    for name in ("conv1", "conv2"):
        h = F.max_pool2d(torch.relu(F.conv2d(h, t[f"{name}_W"], t[f"{name}_b"])), 2)
    h = h.reshape(h.shape[0], -1)
    for i in (1, 2, 3):
        h = h @ t[f"fc{i}_W"] + t[f"fc{i}_b"]
        if i < 3:
            h = torch.relu(h)
    return F.cross_entropy(h, t["labels"])


def lenet_jax(t):
    import jax
    import jax.numpy as jnp
    h = t["x"]
    for name in ("conv1", "conv2"):
        h = jax.lax.conv_general_dilated(h, t[f"{name}_W"], window_strides=(1, 1),
                                         padding="VALID",
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
        h = jax.nn.relu(h + t[f"{name}_b"][None, :, None, None])
        h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2),
                                  "VALID")
    h = h.reshape(h.shape[0], -1)
    for i in (1, 2, 3):
        h = h @ t[f"fc{i}_W"] + t[f"fc{i}_b"]
        if i < 3:
            h = jax.nn.relu(h)
    logp = jax.nn.log_softmax(h, axis=1)
    return -jnp.mean(jnp.take_along_axis(logp, t["labels"][:, None], axis=1))


# ---------------------------------------------------------------------------------------
# W6: call overhead.  A 2-2-1 tanh MLP on one sample (micrograd's teaching size): loss =
# (tanh(sum(tanh(x @ W1 + b1) * w2) + b2) - t)^2, gradients w.r.t. W1, b1, w2, b2.  The
# arithmetic is nothing; the time is the framework's per-call cost.


def neuron_graphc(inputs, hidden):
    x, t = gc.input("x", (inputs,)), gc.input("t", ())
    W1 = gc.param("W1", (inputs, hidden))
    b1 = gc.param("b1", (hidden,), init="normal")
    w2 = gc.param("w2", (hidden,), init="normal")
    b2 = gc.param("b2", (), init="normal")
    out = gc.tanh(gc.sum(gc.tanh(x @ W1 + b1) * w2) + b2)
    return gc.square(out - t), [W1, b1, w2, b2]


def neuron_data(rng, inputs, hidden):
    return {"x": _normal(rng, (inputs,)), "t": np.asarray(rng.standard_normal(), np.float32)}


def neuron_torch(t):
    import torch
    out = torch.tanh(torch.sum(torch.tanh(t["x"] @ t["W1"] + t["b1"]) * t["w2"]) + t["b2"])
    return torch.square(out - t["t"])


def neuron_jax(t):
    import jax.numpy as jnp
    out = jnp.tanh(jnp.sum(jnp.tanh(t["x"] @ t["W1"] + t["b1"]) * t["w2"]) + t["b2"])
    return jnp.square(out - t["t"])


# ---------------------------------------------------------------------------------------

WORKLOADS = {w.name: w for w in [
    Workload("W1", "MLP 784-256-256-10, ReLU, softmax cross-entropy, batch 128", 0.8,
             {"batch": 128, "widths": (784, 256, 256, 10)},
             mlp_graphc, mlp_data, mlp_torch, mlp_jax),
    Workload("W2", "MLP 784-1024-1024-10, ReLU, softmax cross-entropy, batch 256", 0.9,
             {"batch": 256, "widths": (784, 1024, 1024, 10)},
             mlp_graphc, mlp_data, mlp_torch, mlp_jax),
    Workload("W3", "square(softplus(silu(gelu_tanh(sigmoid(tanh(x)))) * a + b)), "
                   "x 256x4096, grads x, a, b", 0.25,
             {"rows": 256, "cols": 4096},
             chain_graphc, chain_data, chain_torch, chain_jax),
    Workload("W4", "LSTM input 64, hidden 128, batch 32, 50 steps unrolled", 0.35,
             {"inputs": 64, "hidden": 128, "batch": 32, "steps": 50},
             lstm_graphc, lstm_data, lstm_torch, lstm_jax,
             torch_extra={"torch nn.LSTM": lstm_torch_fused}),
    Workload("W4s", "the W4 LSTM (T=50) with the time loop as gc.scan / jax.lax.scan", 0.35,
             {"inputs": 64, "hidden": 128, "batch": 32, "steps": 50},
             lstm_scan_graphc, lstm_data, lstm_torch, lstm_scan_jax,
             torch_extra={"torch nn.LSTM": lstm_torch_fused}),
    Workload("W5", "LeNet: conv 1-6, 6-16 5x5 + ReLU + maxpool 2, dense 256-120-84-10, "
                   "cross-entropy, batch 64 of 1x28x28", 0.8,
             {"batch": 64, "size": 28},
             lenet_graphc, lenet_data, lenet_torch, lenet_jax),
    Workload("W6", "call overhead: 2-2-1 tanh MLP on one sample (10 nodes), loss and "
                   "4 gradients", None, {"inputs": 2, "hidden": 2},
             neuron_graphc, neuron_data, neuron_torch, neuron_jax, target_us=15),
]}
