"""One workload's training step timed in this process: ``python benchmarks/step_time.py W3
[steps] [--cpu]`` prints the median and the minimum over 11 rounds of ``steps`` calls (after
``steps`` warm-up calls), wall time, or CPU time with ``--cpu``.

For comparing two versions of graphc in alternating processes (``PYTHONPATH`` pointing at a
worktree of each, each with its own ``GRAPHC_CACHE_DIR``); ``graphc bench`` compares
frameworks.  docs/codegen.md ("No FMA contraction") has one such comparison.
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from workloads import WORKLOADS  # noqa: E402

import graphc as gc  # noqa: E402


def main(argv) -> int:
    clock = time.process_time if "--cpu" in argv else time.perf_counter
    args = [a for a in argv if a != "--cpu"]
    name, steps = args[0], int(args[1]) if len(args) > 1 else 100
    problem = WORKLOADS[name].problem()
    f = gc.compile([problem.loss, *gc.grad(problem.loss, list(problem.wrt))])
    for _ in range(steps):
        f(problem.feeds)
    times = []
    for _ in range(11):
        start = clock()
        for _ in range(steps):
            f(problem.feeds)
        times.append((clock() - start) / steps * 1e3)
    print(f"{name} {gc.__file__}: median {statistics.median(times):.3f} ms, "
          f"min {min(times):.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
