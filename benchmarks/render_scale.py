"""How long `gc.render` takes on a 500-node graph (target: <= 5 s), forward only and with
the labelled backward edges and values.

    python benchmarks/render_scale.py [--layers 100]

Two shapes of graph: a chain of tanh layers, each in a gc.scope (drawn as clusters), and a
residual network with fan-out at every layer.
"""

import argparse
import statistics
import time

import numpy as np

import graphc as gc


def deep_mlp(layers: int):
    """A chain of tanh layers: 5 nodes a layer (W, b, matmul, add, tanh)."""
    h = x = gc.input("x", (4, 8))
    for i in range(layers):
        with gc.scope(f"layer{i}"):
            h = gc.tanh(h @ gc.param(f"W{i}", (8, 8)) + gc.param(f"b{i}", (8,)))
    loss = gc.mean(gc.square(h))
    feeds = {"x": np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32),
             **gc.init_params(loss, seed=0)}
    return loss, x, feeds


def residual(layers: int):
    """Fan-out at every layer: h = h + tanh(h W) * sigmoid(h), about 6 nodes a layer."""
    h = gc.input("x", (4, 8))
    for i in range(layers):
        h = h + gc.tanh(h @ gc.param(f"W{i}", (8, 8))) * gc.sigmoid(h)
    loss = gc.mean(gc.square(h))
    feeds = {"x": np.ones((4, 8), np.float32), **gc.init_params(loss, seed=0)}
    return loss, None, feeds


def timed(fn, repeats=3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--layers", type=int, default=100)
    args = p.parse_args(argv)
    for name, (loss, _, feeds) in (("tanh chain in scopes", deep_mlp(args.layers)),
                                   ("residual with fan-out", residual(args.layers * 4 // 5))):
        nodes = len(gc.Graph(loss).nodes)
        forward = timed(lambda: gc.render(loss).svg())  # noqa: B023 -- used at once
        combined = timed(lambda: gc.render(loss, backward=True, values=feeds).svg())  # noqa: B023
        print(f"{name}, {nodes} nodes: forward {forward:.2f} s; forward + labelled backward "
              f"edges + values {combined:.2f} s (median of 3; target <= 5 s)")


if __name__ == "__main__":
    main()
