"""A model file for ``graphc check``: a 2-layer MLP with softmax cross-entropy and an L2
penalty, J = L + s, as in D2L's backpropagation chapter (docs/gallery/mlp_l2.svg draws
its ReLU and squared-error version).

    graphc check examples/mlp_check.py

The convention: the file defines ``build()`` returning ``(loss, wrt, feeds)``: a scalar
loss tensor, the tensors to differentiate (inputs or params) and a dict of feeds for every
input and param the loss needs.
"""

import numpy as np

import graphc as gc


def build():
    rng = np.random.default_rng(0)
    x = gc.input("x", (8, 5))
    labels = gc.input("labels", (8,), "int64")
    W1, b1 = gc.param("W1", (5, 16)), gc.param("b1", (16,), init="zeros")
    W2, b2 = gc.param("W2", (16, 3)), gc.param("b2", (3,), init="zeros")
    hidden = gc.tanh(x @ W1 + b1)
    loss = gc.softmax_cross_entropy(hidden @ W2 + b2, labels) + 1e-2 * (gc.l2(W1) + gc.l2(W2))
    feeds = {"x": rng.normal(size=(8, 5)), "labels": rng.integers(0, 3, 8),
             **gc.init_params(loss, seed=0)}
    feeds["b1"] = rng.normal(0, 0.1, 16)  # non-zero biases exercise their gradients
    return loss, [W1, b1, W2, b2, x], feeds
