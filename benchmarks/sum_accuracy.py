"""Accuracy of a full sum on the Numba backend against NumPy, relative to ``math.fsum``.

    python benchmarks/sum_accuracy.py [float64|float32] [N ...]

For each length N (default: two primes, 4194319 and 16777259, and 2**22, 2**22 + 1) it sums
exp(x) for x uniform in [0.1, 1.1) (seed 0) with ``gc.sum(gc.exp(x))`` compiled for Numba (one
fused kernel) and with NumPy, and prints both relative errors.
"""

import math
import sys

import numpy as np

import graphc as gc


def main(argv) -> None:
    dtype = argv[0] if argv else "float64"
    lengths = [int(a) for a in argv[1:]] or [4194319, 16777259, 2**22, 2**22 + 1]
    rng = np.random.default_rng(0)
    for n in lengths:
        x = gc.input("x", (n,), dtype)
        f = gc.compile(gc.sum(gc.exp(x)), backend="numba")
        v = rng.uniform(0.1, 1.1, n).astype(dtype)
        exact = math.fsum(np.exp(v.astype(np.float64)) if dtype == "float64"
                          else np.exp(v).astype(np.float64))
        got, npy = float(f(x=v)), float(np.sum(np.exp(v)))
        print(f"{dtype} n={n}: graphc {abs(got - exact) / exact:.2e} "
              f"numpy {abs(npy - exact) / exact:.2e}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
