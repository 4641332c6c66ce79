"""What the optimizing passes do to each workload's training step on the Numba backend.

    python benchmarks/fusion.py [--stats] [W1 W3 ...]

For the graph as built (``optimize=False``) and after the default pipeline: nodes, distinct
native kernels, kernel calls per step and the median ms per step (float32, the thread
counts of the environment; ``graphc bench`` compares with other frameworks).  ``--stats``
prints ``f.stats`` of each optimized training step instead.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_name, "2")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workloads  # noqa: E402

import graphc as gc  # noqa: E402


def median_ms(f, feeds, seconds: float = 2.0) -> float:
    for _ in range(3):
        f(feeds)
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 20:
        t0 = time.perf_counter()
        f(feeds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main(names) -> None:
    print(f"{'':6}{'nodes':>16}{'kernels':>16}{'calls':>16}{'ms/step':>22}")
    print(f"{'':6}{'built -> opt':>16}{'built -> opt':>16}{'built -> opt':>16}"
          f"{'unfused -> fused':>22}")
    for name in names:
        problem = workloads.WORKLOADS[name].problem()
        outputs = [problem.loss, *gc.grad(problem.loss, list(problem.wrt))]
        plain = gc.compile(outputs, optimize=False)
        fused = gc.compile(outputs)
        a, b = plain.stats, fused.stats
        ms = (median_ms(plain, problem.feeds), median_ms(fused, problem.feeds))
        cells = [f"{a[k]:>5} -> {b[k]:<5}" for k in ("nodes", "kernels", "kernel_calls")]
        print(f"{name:<6}" + "".join(f"{c:>16}" for c in cells) +
              f"{ms[0]:>11.3f} -> {ms[1]:<7.3f}")


def stats(names) -> None:
    for name in names:
        problem = workloads.WORKLOADS[name].problem()
        f = gc.compile([problem.loss, *gc.grad(problem.loss, list(problem.wrt))])
        print(f"== {name}\n{f.stats}")


if __name__ == "__main__":
    args = sys.argv[1:]
    show = "--stats" in args
    names = [a for a in args if a != "--stats"] or list(workloads.WORKLOADS)
    (stats if show else main)(names)
