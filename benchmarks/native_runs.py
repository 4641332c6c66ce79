"""Native runs of statements and native scan loops (graphc/numba_segments.py,
graphc/numba_loop.py) against the Python orchestrator, on each workload's training step:
one compiled step run both ways in turn (A, B, A, B ...: ``--rounds`` rounds of ``--calls``
calls, wall time, in this process, ``numba_loop.ENABLED`` toggled), medians, their ratio
and whether the outputs are the same bits.

    python benchmarks/native_runs.py [W1 W2 W4 W4s W5 W6] [--rounds 21] [--calls 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def problem(name: str):
    from workloads import WORKLOADS

    import graphc as gc
    p = WORKLOADS[name].problem()
    outputs = [p.loss, *gc.grad(p.loss, list(p.wrt))] if p.wrt else [p.loss]
    return outputs, p.feeds


def native_vs_python(f, feeds, rounds: int = 21, calls: int = 10) -> str:
    """``f`` (compiled for Numba) with its native runs and loops and as Python, in turn: the
    median ms of each, their ratio and whether the outputs are the same bits."""
    from graphc import numba_loop
    results, times = {}, {True: [], False: []}
    for _ in range(rounds):
        for flag in (True, False):
            numba_loop.ENABLED = flag
            results[flag] = f(feeds)
            start = time.perf_counter()
            for _ in range(calls):
                f(feeds)
            times[flag].append(1e3 * (time.perf_counter() - start) / calls)
    numba_loop.ENABLED = True
    same = all(np.array_equal(a, b) for a, b in zip(results[True], results[False]))
    a, b = (float(np.median(times[k])) for k in (True, False))
    return (f"{a:.3f} ms native, {b:.3f} ms Python (medians of {rounds}); native / Python "
            f"{a / b:.3f}; {'the same bits' if same else 'RESULTS DIFFER'}")


def measure(name: str, rounds: int, calls: int) -> str:
    import graphc as gc
    outputs, feeds = problem(name)
    f = gc.compile(outputs, backend="numba")
    runs = f.stats.get("native_runs", {"calls": 0, "statements": 0})
    loops = f.source.count("called from the native loop")
    return (f"{name}: {runs['statements']} statements in {runs['calls']} native calls, "
            f"{loops} native loops; {native_vs_python(f, feeds, rounds, calls)}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("workloads", nargs="*", default=["W1", "W2", "W4", "W4s", "W5", "W6"])
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--calls", type=int, default=10)
    args = p.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for name in args.workloads:
        print(measure(name, args.rounds, args.calls), flush=True)


if __name__ == "__main__":
    main()
