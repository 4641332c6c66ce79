"""``graphc demo``: the main job.  Builds a small MLP, prints its graph, runs it.

Later issues grow it (compile with Numba, check gradients, train, render, write a report);
at every stage it runs with no arguments, no network and in seconds.
"""

from __future__ import annotations

import time

import numpy as np

from . import functions as F
from .compiler import compile
from .graph import Graph
from .inputs import init_params, input, param


def two_spirals(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points of two interleaved spirals in 2-D with labels 0/1 (no download)."""
    rng = np.random.default_rng(seed)
    t = np.sqrt(rng.uniform(0.05, 1.0, n)) * 3 * np.pi
    labels = rng.integers(0, 2, n)
    sign = np.where(labels == 1, 1.0, -1.0)
    points = np.stack([sign * t * np.cos(t), sign * t * np.sin(t)], axis=1) / (3 * np.pi)
    points += rng.normal(0.0, 0.02, points.shape)
    return points.astype(np.float32), labels.astype(np.int64)


def build_mlp(batch: int, hidden: int = 16, classes: int = 2):
    """A 2-hidden-layer MLP with softmax cross-entropy and an L2 penalty (J = L + s)."""
    x = input("x", (batch, 2))
    labels = input("labels", (batch,), "int64")
    W1, b1 = param("W1", (2, hidden)), param("b1", (hidden,), init="zeros")
    W2, b2 = param("W2", (hidden, hidden)), param("b2", (hidden,), init="zeros")
    W3, b3 = param("W3", (hidden, classes)), param("b3", (classes,), init="zeros")
    h1 = F.relu(x @ W1 + b1)
    h2 = F.relu(h1 @ W2 + b2)
    logits = h2 @ W3 + b3
    loss = F.softmax_cross_entropy(logits, labels) + 1e-4 * (F.l2(W1) + F.l2(W2) + F.l2(W3))
    return loss, logits


def run(out=print) -> float:
    """Run the demo, writing lines with ``out``; returns the loss."""
    batch = 64
    x, labels = two_spirals(batch)
    loss, logits = build_mlp(batch)
    out("graphc demo: a 2-16-16-2 MLP with softmax cross-entropy and an L2 penalty\n")
    out(str(Graph(loss)))
    start = time.perf_counter()
    f = compile([loss, logits], backend="numpy")
    compile_s = time.perf_counter() - start
    params = init_params(loss, seed=0)
    start = time.perf_counter()
    value, scores = f(x=x, labels=labels, **params)
    run_s = time.perf_counter() - start
    accuracy = float(np.mean(np.argmax(scores, axis=1) == labels))
    out(f"\nbackend: {f.backend} (reference interpreter); {f.stats['nodes']} nodes")
    out(f"compile: {compile_s * 1e3:.1f} ms, run: {run_s * 1e3:.1f} ms")
    out(f"loss at initialisation: {float(value):.6f} (ln 2 = {np.log(2):.6f}); "
        f"accuracy {accuracy:.3f} on {batch} points")
    return float(value)
