"""Minor page faults per call of each workload's compiled training step (Numba backend).

    python benchmarks/page_faults.py [W1 W4s ...] [--steps 100] [--set name=value ...]

A call that allocates large arrays, which the C library hands back to the OS when they are
freed, has every page of them faulted in again the next time (zero-filled and mapped: dear
on a virtual machine).  The compiled program allocates only the outputs it returns; this
prints, per workload, the median ms per call and the minor faults per call
(``getrusage``) after 20 warm-up calls.  ``--set steps=500`` changes a workload size.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads  # noqa: E402

import graphc as gc  # noqa: E402


def faults(name: str, steps: int, sizes: dict) -> tuple[float, float]:
    """(median ms per call, minor page faults per call) of workload ``name``."""
    w = workloads.WORKLOADS[name]
    problem = w.problem({**w.sizes, **sizes} if sizes else None)
    f = gc.compile([problem.loss, *gc.grad(problem.loss, list(problem.wrt))],
                   backend="numba")
    for _ in range(20):
        f(problem.feeds)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        f(problem.feeds)
        times.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    return float(np.median(times)) * 1e3, (after - before) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workloads", nargs="*", default=["W1", "W2", "W3", "W4s", "W5"])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a workload size, e.g. steps=500")
    args = p.parse_args()
    sizes = {k: int(v) for k, v in (s.split("=", 1) for s in args.set)}
    for name in args.workloads:
        ms, per_call = faults(name, args.steps, sizes)
        print(f"{name:<5} {ms:9.3f} ms per call  {per_call:9.2f} minor page faults per call")


if __name__ == "__main__":
    main()
