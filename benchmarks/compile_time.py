"""Cold and warm compile time of a workload's training step (targets on W1: cold <= 2 s,
warm <= 0.3 s), each measured in a fresh process.

    python benchmarks/compile_time.py [--workload W1] [--repeats 3] [--backend numba]

cold: an empty GRAPHC_CACHE_DIR, then gc.compile + the first call; warm: a new process on
the cache the cold run filled.  `import graphc` and building the graph (gc.grad) are timed
separately and not included.  `graphc bench` calls :func:`run` for its cold and warm
columns (and the planned peak memory of the compiled step).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import graphc as gc
t1 = time.perf_counter()
sys.path.insert(0, sys.argv[2])
from workloads import WORKLOADS
problem = WORKLOADS[sys.argv[1]].problem()
grads = gc.grad(problem.loss, list(problem.wrt))
t2 = time.perf_counter()
f = gc.compile([problem.loss, *grads], backend=sys.argv[3] or None)
f(problem.feeds)
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "build": t2 - t1, "compile": t3 - t2,
                  "numba_loaded": "numba" in sys.modules, "backend": f.backend,
                  "planned_peak_bytes": f.stats.get("planned_peak_bytes")}))
"""


def run(workload: str, cache: str, backend: str | None = None, env=None) -> dict:
    """One fresh process on the kernel cache ``cache``: its import, build and compile
    seconds, the backend it compiled for and the compiled step's planned peak bytes.
    ``env`` (default ``os.environ``) is the child's environment; a failing child raises
    ``subprocess.CalledProcessError`` with its stderr."""
    env = {**(os.environ if env is None else env), "GRAPHC_CACHE_DIR": cache}
    here = str(pathlib.Path(__file__).resolve().parent)
    out = subprocess.run([sys.executable, "-c", CHILD, workload, here, backend or ""],
                         env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workload", default="W1")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backend", choices=("numpy", "numba", "cuda"), default=None)
    args = p.parse_args(argv)
    cold, warm = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            cold.append(run(args.workload, cache, args.backend))
            warm.append(run(args.workload, cache, args.backend))
    med = {k: {key: statistics.median(r[key] for r in runs) for key in ("import", "build",
                                                                           "compile")}
           for k, runs in (("cold", cold), ("warm", warm))}
    print(f"{args.workload} (median of {args.repeats}): cold compile + first call "
          f"{med['cold']['compile']:.2f} s (target <= 2 s); warm {med['warm']['compile']:.3f} s "
          f"(target <= 0.3 s, Numba imported: {any(r['numba_loaded'] for r in warm)}); "
          f"import graphc {med['warm']['import']:.2f} s; building the graph + gc.grad "
          f"{med['warm']['build']:.2f} s")


if __name__ == "__main__":
    main()
