"""W4 (LSTM input 64, hidden 128, batch 32, 50 steps) written with gc.scan, against the
unrolled W4 of workloads.py: graph nodes, distinct kernels, cold and warm compile, step
time (loss and gradients), and PyTorch eager and torch.nn.LSTM in the same run.

    python benchmarks/scan_lstm.py [--steps 50] [--repeats 20] [--unrolled]

cold: gc.compile + first call in a fresh process on an empty GRAPHC_CACHE_DIR; warm: a new
process on the cache the cold run filled.  ``--unrolled`` also measures the unrolled graph
(its cold compile takes tens of seconds).
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent

CHILD = r"""
import json, sys, time
import numpy as np
import graphc as gc
sys.path.insert(0, sys.argv[1])
from scan_lstm import build
loss, wrt, feeds = build(int(sys.argv[2]), sys.argv[3] == "unrolled")
grads = gc.grad(loss, wrt)
t0 = time.perf_counter()
f = gc.compile([loss, *grads])
f(feeds)
t1 = time.perf_counter()
times = []
for _ in range(int(sys.argv[4])):
    s = time.perf_counter()
    f(feeds)
    times.append(time.perf_counter() - s)
print(json.dumps({"compile": t1 - t0, "nodes": len(gc.Graph([loss, *grads]).nodes),
                  "optimized_nodes": len(f.graph.nodes), "kernels": f.stats["kernels"],
                  "step_ms": 1e3 * float(np.median(times)) if times else None}))
"""


def build(steps: int, unrolled: bool, inputs=64, hidden=128, batch=32):
    """W4's loss (mean of the last hidden state), its parameters and feeds."""
    import numpy as np

    import graphc as gc
    sys.path.insert(0, str(HERE))
    from workloads import WORKLOADS
    if unrolled:
        problem = WORKLOADS["W4"].problem({"steps": steps})
        return problem.loss, list(problem.wrt), problem.feeds
    xs = gc.input("xs", (steps, batch, inputs))
    Wx = gc.param("Wx", (inputs, 4 * hidden))
    Wh = gc.param("Wh", (hidden, 4 * hidden))
    b = gc.param("b", (4 * hidden,), init="zeros")
    H = hidden

    def cell(carry, x):
        h, c = carry
        z = x @ Wx + h @ Wh + b
        i, f = gc.sigmoid(z[:, :H]), gc.sigmoid(z[:, H:2 * H])
        g, o = gc.tanh(z[:, 2 * H:3 * H]), gc.sigmoid(z[:, 3 * H:])
        c = f * c + i * g
        return (o * gc.tanh(c), c), None

    zeros = gc.constant(np.zeros((batch, hidden), np.float32))
    (h, _), _ = gc.scan(cell, (zeros, zeros), xs)
    loss = gc.mean(h)
    feeds = {"xs": np.random.default_rng(0).standard_normal(
        (steps, batch, inputs)).astype(np.float32)}
    feeds.update(gc.init_params(loss, seed=0))
    return loss, [Wx, Wh, b], feeds


def child(kind: str, steps: int, repeats: int, cache: str) -> dict:
    env = {**os.environ, "GRAPHC_CACHE_DIR": cache}
    out = subprocess.run([sys.executable, "-c", CHILD, str(HERE), str(steps), kind,
                          str(repeats)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def torch_ms(steps: int, repeats: int) -> dict:
    import time

    import numpy as np
    import torch
    sys.path.insert(0, str(HERE))
    from workloads import lstm_torch, lstm_torch_fused
    _, _, feeds = build(steps, False)
    out = {}
    for name, fn in (("torch eager", lstm_torch), ("torch nn.LSTM", lstm_torch_fused)):
        t = {k: torch.tensor(v, requires_grad=k != "xs") for k, v in feeds.items()}
        times = []
        for _ in range(repeats + 1):
            s = time.perf_counter()
            loss = fn(t)
            torch.autograd.grad(loss, [t["Wx"], t["Wh"], t["b"]])
            times.append(time.perf_counter() - s)
        out[name] = 1e3 * float(np.median(times[1:]))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--unrolled", action="store_true")
    args = p.parse_args(argv)
    kinds = ["scan"] + (["unrolled"] if args.unrolled else [])
    for kind in kinds:
        with tempfile.TemporaryDirectory() as cache:
            cold = child(kind, args.steps, 0, cache)
            warm = child(kind, args.steps, args.repeats, cache)
        print(f"W4 {kind}, T={args.steps}: {cold['nodes']} nodes with gradients "
              f"({cold['optimized_nodes']} after the passes), {cold['kernels']} distinct "
              f"kernels; cold compile + first call {cold['compile']:.2f} s, warm "
              f"{warm['compile']:.2f} s; step {warm['step_ms']:.2f} ms")
    for name, ms in torch_ms(args.steps, args.repeats).items():
        print(f"{name}: step {ms:.2f} ms")


if __name__ == "__main__":
    main()
