"""The gallery: classic backpropagation pictures redrawn by graphc, every backward edge
labelled with its upstream, local and downstream gradient.

    python examples/gallery.py [OUT_DIR]        # default: docs/gallery

writes micrograd.svg (Karpathy's a=2, b=-3, c=10 example), mlp_l2.svg and
mlp_l2_forward.svg (D2L's two-layer MLP with J = L + s), sigmoid_neuron.svg and
softmax_cross_entropy.svg.
"""

import pathlib
import sys

import numpy as np

import graphc as gc


def micrograd():
    """e = a·b, d = e + c, L = d·f with a = 2, b = −3, c = 10, f = −2: dL/da = 6."""
    a, b, c, f = (gc.input(n, (), "float64") for n in "abcf")
    e = (a * b).named("e")
    d = (e + c).named("d")
    L = (d * f).named("L")
    return L, {"a": 2.0, "b": -3.0, "c": 10.0, "f": -2.0}


def mlp_l2():
    """D2L 5.3: z = x W1, h = φ(z), o = h W2, L = l(o, y), s = λ/2 (‖W1‖² + ‖W2‖²), J = L + s,
    with φ = ReLU and l the squared error ½‖o − y‖²."""
    rng = np.random.default_rng(0)
    x = gc.input("x", (1, 3), "float64")
    y = gc.input("y", (1, 2), "float64")
    with gc.scope("hidden"):
        W1 = gc.param("W1", (3, 4), dtype="float64")
        z = (x @ W1).named("z")
        h = gc.relu(z).named("h")
    with gc.scope("output"):
        W2 = gc.param("W2", (4, 2), dtype="float64")
        o = (h @ W2).named("o")
    L = gc.l2(o - y).named("L")
    s = (0.1 * (gc.l2(W1) + gc.l2(W2))).named("s")  # λ = 0.1: λ/2 ‖W‖² = λ · l2(W)
    J = (L + s).named("J")
    feeds = {"x": np.array([[1.0, -0.5, 2.0]]), "y": np.array([[0.0, 1.0]]),
             "W1": rng.normal(0, 0.7, (3, 4)), "W2": rng.normal(0, 0.7, (4, 2))}
    return J, feeds


def sigmoid_neuron():
    """y = σ(w·x + b): the local gradient of the sigmoid is y(1 − y)."""
    x = gc.input("x", (3,), "float64")
    w = gc.param("w", (3,), dtype="float64")
    b = gc.param("b", (), dtype="float64")
    z = (gc.sum(w * x) + b).named("z")
    y = gc.sigmoid(z).named("y")
    return y, {"x": np.array([1.0, -2.0, 0.5]), "w": np.array([0.4, 0.1, -0.3]), "b": 0.2}


def softmax_cross_entropy():
    """p = softmax(z), L = −Σ t log p: the softmax edge carries s_i (δ_ij − s_j)."""
    z = gc.input("z", (4,), "float64")
    t = gc.input("t", (4,), "float64")
    p = gc.softmax(z).named("p")
    L = (-gc.sum(t * gc.log(p))).named("L")
    return L, {"z": np.array([2.0, 1.0, 0.1, -1.0]), "t": np.array([0.0, 1.0, 0.0, 0.0])}


def main(out="docs/gallery"):
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for build in (micrograd, mlp_l2, sigmoid_neuron, softmax_cross_entropy):
        loss, feeds = build()
        written.append(gc.render(loss, out / f"{build.__name__}.svg", backward=True,
                                 values=feeds).path)
    loss, feeds = mlp_l2()
    written.append(gc.render(loss, out / "mlp_l2_forward.svg", values=feeds).path)
    return written


if __name__ == "__main__":
    for path in main(*sys.argv[1:]):
        print(path)
