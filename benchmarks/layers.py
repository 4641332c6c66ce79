"""Forward + backward time of LeNet's layers: graphc (NumPy reference and Numba) and PyTorch.

    python benchmarks/layers.py

float32, batch 64, best of 30 calls, 2 threads for every library (set before they load).
Each row differentiates the sum of the layer's output times a fixed random cotangent with
respect to every input of the layer (x, and the kernel and bias of a convolution).
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_name, "2")

import time  # noqa: E402

import numpy as np  # noqa: E402

import graphc as gc  # noqa: E402

LAYERS = {
    "conv 1->6, 5x5 on 28x28": ("conv", (64, 1, 28, 28), (6, 1, 5, 5)),
    "conv 6->16, 5x5 on 12x12": ("conv", (64, 6, 12, 12), (16, 6, 5, 5)),
    "max_pool2d 2x2 on (64, 6, 24, 24)": ("max", (64, 6, 24, 24), None),
    "avg_pool2d 2x2 on (64, 6, 24, 24)": ("avg", (64, 6, 24, 24), None),
}


def best_ms(fn, n: int = 30) -> float:
    fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def graphc_step(kind, x_shape, w_shape, backend, rng):
    x = gc.input("x", x_shape)
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32)}
    wrt = [x]
    if kind == "conv":
        w, b = gc.input("w", w_shape), gc.input("b", (w_shape[0],))
        y = gc.conv2d(x, w, bias=b)
        wrt += [w, b]
        feeds["w"] = rng.standard_normal(w_shape).astype(np.float32)
        feeds["b"] = rng.standard_normal(w_shape[0]).astype(np.float32)
    else:
        y = (gc.max_pool2d if kind == "max" else gc.avg_pool2d)(x, 2)
    c = gc.input("c", y.shape)
    feeds["c"] = rng.standard_normal(y.shape).astype(np.float32)
    f = gc.compile([y, *gc.grad(gc.sum(y * c), wrt)], backend=backend)
    return lambda: f(feeds)


def torch_step(kind, x_shape, w_shape, rng):
    import torch
    torch.set_num_threads(2)
    F = torch.nn.functional
    x = torch.from_numpy(rng.standard_normal(x_shape).astype(np.float32)).requires_grad_()
    leaves = [x]
    if kind == "conv":
        w = torch.from_numpy(rng.standard_normal(w_shape).astype(np.float32)).requires_grad_()
        b = torch.from_numpy(rng.standard_normal(w_shape[0]).astype(np.float32)).requires_grad_()
        leaves += [w, b]

        def layer():
            return F.conv2d(x, w, b)
    else:
        pool = F.max_pool2d if kind == "max" else F.avg_pool2d

        def layer():
            return pool(x, 2)
    c = torch.from_numpy(rng.standard_normal(layer().shape).astype(np.float32))

    def step():
        return torch.autograd.grad((layer() * c).sum(), leaves)
    return step


def main() -> None:
    print(f"{'layer':<36}{'numpy':>10}{'numba':>10}{'torch':>10}   (ms, fwd+bwd, best of 30)")
    for title, (kind, x_shape, w_shape) in LAYERS.items():
        row = [best_ms(graphc_step(kind, x_shape, w_shape, b, np.random.default_rng(0)))
               for b in ("numpy", "numba")]
        try:
            row.append(best_ms(torch_step(kind, x_shape, w_shape, np.random.default_rng(0))))
        except ImportError:
            row.append(float("nan"))
        print(f"{title:<36}" + "".join(f"{v:>10.2f}" for v in row))


if __name__ == "__main__":
    main()
