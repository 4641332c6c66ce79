"""CPU time per graph node of a workload's training step on the Numba backend.

    python benchmarks/node_profile.py --workload W5 [--steps 300] [--min-us 10] [--wall]

The compiled step's orchestrator (``f.source``: one comment line ``# name = op(...)`` before
each node's statements) is executed again with a clock read at every such line, so each
node's figure covers its statements: kernel calls, GEMMs, allocations.  Medians over
``--steps`` calls, in microseconds of this process's CPU time (steadier than wall time on a
shared machine; set OPENBLAS_NUM_THREADS=1 so that a BLAS worker's spinning is not counted),
or of wall time with ``--wall``.
The clock reads add about 1 us a node, so small nodes read high.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

import numpy as np

import graphc as gc
from graphc import numba_runtime

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workloads import WORKLOADS  # noqa: E402

_NODE = re.compile(r"    # (\w+) = (\w+)\(")


def instrumented(program, mark):
    """``program``'s run function with ``mark(label)`` called before each node."""
    lines = []
    for line in program.orchestrator.split("\n"):
        node = _NODE.match(line)
        if node:
            lines.append(f"    _mark('{node[1]} ({node[2]})')")
        elif line.startswith("    return"):
            lines.append("    _mark(None)")
        lines.append(line)
    namespace = dict(numba_runtime._GLOBALS, _compiled=program._run.__globals__["_compiled"],
                     _mark=mark)
    exec(compile("\n".join(lines), "<node_profile>", "exec"), namespace)  # noqa: S102
    return namespace["run"]


def profile(name: str, steps: int, clock=time.process_time) -> dict[str, float]:
    problem = WORKLOADS[name].problem()
    f = gc.compile([problem.loss, *gc.grad(problem.loss, list(problem.wrt))], backend="numba")
    times: dict[str, list[float]] = {}
    last = [None, 0.0]

    def mark(label):
        now = clock()
        if last[0] is not None:
            times.setdefault(last[0], []).append(now - last[1])
        last[0], last[1] = label, clock()

    f._program._run = instrumented(f._program, mark)
    f._program._run_native = None  # each node timed: the Python run, not native runs of them
    for _ in range(10):
        f(problem.feeds)
    times.clear()
    for _ in range(steps):
        f(problem.feeds)
    return {label: float(np.median(t)) * 1e6 for label, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workload", default="W5", choices=sorted(WORKLOADS))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--min-us", type=float, default=0.0, help="hide nodes below this")
    p.add_argument("--wall", action="store_true",
                   help="wall time (perf_counter) instead of the process's CPU time: with "
                        "BLAS threads, CPU time also counts a worker spinning between GEMMs")
    args = p.parse_args()
    figures = profile(args.workload, args.steps,
                      time.perf_counter if args.wall else time.process_time)
    for label, us in figures.items():
        if us >= args.min_us:
            print(f"{us:9.1f} us  {label}")
    print(f"{sum(figures.values()):9.1f} us  all nodes (sum of medians); "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
