"""What W3's one fused kernel costs per element, against the cost of the transcendental
functions and divisions it must evaluate (the floor of any float32-accurate evaluation
with graphc's vector math, ``graphc.fastmath``).

    OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/transcendentals.py

1. Each function's throughput in ns per element, in cache (512 float32 values of
   [-4, 4], computed 20,000 times, best of 5), one thread; ``div`` is ``1 / (1 + x)``.
2. The calls in W3's generated kernel (``f.source``: ``exp_f32(``, ``tanh_f32(`` ...,
   and ``/``), their sum of costs (the floor: nothing else, no memory traffic), and the
   kernel's measured ns per element in the compiled step (one thread: the whole step, one
   kernel, over 256 x 4096 elements).
"""

from __future__ import annotations

import os
import re
import sys
import time

import numba
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads  # noqa: E402

import graphc as gc  # noqa: E402
from graphc import fastmath  # noqa: E402

F32 = np.float32
FUNCTIONS = {"exp_f32": fastmath.exp_f32, "expm1_f32": fastmath.expm1_f32,
             "log1p_f32": fastmath.log1p_f32, "tanh_f32": fastmath.tanh_f32}


def _loop(fn):
    @numba.njit(**fastmath._OPTIONS)
    def run(x, y, reps):
        for _ in range(reps):
            for i in range(x.size):
                y[i] = fn(x[i])
    return run


@numba.njit(inline="always")
def _div(x):
    return F32(1.0) / (F32(1.0) + abs(x))


@numba.njit(inline="always")
def _copy(x):
    return x * F32(1.0001)


def throughput(fn, n: int = 512, reps: int = 20000) -> float:
    """ns per element of ``fn`` over ``n`` float32 values in cache."""
    run = _loop(fn)
    x = np.linspace(-4, 4, n, dtype=F32)
    y = np.empty_like(x)
    run(x, y, 1)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        run(x, y, reps)
        best = min(best, time.perf_counter() - start)
    return best / (n * reps) * 1e9


def w3_kernel() -> tuple[dict[str, int], float, int]:
    """The calls in W3's fused kernel, its median ns per element in the compiled step,
    and the number of elements."""
    problem = workloads.WORKLOADS["W3"].problem()
    f = gc.compile([problem.loss, *gc.grad(problem.loss, list(problem.wrt))],
                   backend="numba")
    kernel = f.source.split("def kernel(", 1)[1]
    calls = {name: len(re.findall(rf"\b{name}\(", kernel)) for name in FUNCTIONS}
    calls["div"] = len(re.findall(r" / ", kernel))
    for _ in range(5):
        f(problem.feeds)
    times = []
    for _ in range(50):
        start = time.perf_counter()
        f(problem.feeds)
        times.append(time.perf_counter() - start)
    n = problem.feeds["x"].size
    return calls, float(np.median(times)) / n * 1e9, n


def main() -> None:
    costs = {name: throughput(fn) for name, fn in FUNCTIONS.items()}
    costs["div"] = throughput(_div)
    copy = throughput(_copy)
    print(f"in cache, 1 thread (ns per element): multiply {copy:.3f}, " +
          ", ".join(f"{k} {v:.3f}" for k, v in costs.items()))
    calls, measured, n = w3_kernel()
    floor = sum(costs[k] * c for k, c in calls.items())
    print("W3's kernel calls per element: " +
          ", ".join(f"{k} x{c}" for k, c in calls.items() if c))
    print(f"floor (those calls alone): {floor:.3f} ns per element; the compiled step: "
          f"{measured:.3f} ns per element ({floor / measured:.0%} of it); "
          f"{n} elements: floor {floor * n / 1e6:.3f} ms on one core, "
          f"{floor * n / 2e6:.3f} ms on two")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
