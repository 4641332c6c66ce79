"""Cold and warm compile time of a workload's training step (targets on W1: cold <= 1 s,
warm <= 0.3 s), each measured in a fresh process.

    python benchmarks/compile_time.py [--workload W1] [--steps 100] [--repeats 3]
        [--backend numba] [--workers 0 default]

cold: an empty GRAPHC_CACHE_DIR, then gc.compile + the first call; warm: a new process on
the cache the cold run filled.  graphc's own sources are byte-compiled first
(``run.write_bytecode``), as a pip install leaves them.  `import graphc` and building the
graph (gc.grad) are timed separately and not included.  Beside each wall time: the CPU
seconds of the process and of its kernel-compiling workers (``cpu``; ``cpu_self``: the
process alone), which other load on the machine inflates less.
``--workers`` alternates settings of GRAPHC_COMPILE_WORKERS in each round (A, B, A, B ...;
``default``: unset).  `graphc bench` calls :func:`run` for its cold and warm columns (and
the planned peak memory of the compiled step).
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
import json, resource, sys, time
def cpu(who=(resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)):
    return sum(resource.getrusage(w).ru_utime + resource.getrusage(w).ru_stime for w in who)
t0 = time.perf_counter()
import graphc as gc
t1 = time.perf_counter()
sys.path.insert(0, sys.argv[2])
from workloads import WORKLOADS
params = json.loads(sys.argv[4])
problem = WORKLOADS[sys.argv[1]].problem(*([params] if params else []))
grads = gc.grad(problem.loss, list(problem.wrt))
t2, c2, s2 = time.perf_counter(), cpu(), cpu((resource.RUSAGE_SELF,))
f = gc.compile([problem.loss, *grads], backend=sys.argv[3] or None)
f(problem.feeds)
t3, c3, s3 = time.perf_counter(), cpu(), cpu((resource.RUSAGE_SELF,))
print(json.dumps({"import": t1 - t0, "build": t2 - t1, "compile": t3 - t2, "cpu": c3 - c2,
                  "cpu_self": s3 - s2,
                  "numba_loaded": "numba" in sys.modules, "backend": f.backend,
                  "kernels": f.stats.get("kernels"),
                  "nodes": len(gc.Graph([problem.loss, *grads]).nodes),
                  "planned_peak_bytes": f.stats.get("planned_peak_bytes")}))
"""


def run(workload: str, cache: str, backend: str | None = None, env=None,
        params: dict | None = None) -> dict:
    """One fresh process on the kernel cache ``cache``: its import, build and compile
    seconds, the CPU seconds of the compile (with its workers'), the backend it compiled
    for and the compiled step's planned peak bytes.  ``params`` overrides the workload's
    sizes; ``env`` (default ``os.environ``) is the child's environment; a failing child
    raises ``subprocess.CalledProcessError`` with its stderr."""
    env = {**(os.environ if env is None else env), "GRAPHC_CACHE_DIR": cache}
    here = str(pathlib.Path(__file__).resolve().parent)
    out = subprocess.run([sys.executable, "-c", CHILD, workload, here, backend or "",
                          json.dumps(params or {})],
                         env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _setting(workers: str) -> dict:
    """The environment for one ``--workers`` setting."""
    env = {k: v for k, v in os.environ.items() if k != "GRAPHC_COMPILE_WORKERS"}
    return env if workers == "default" else {**env, "GRAPHC_COMPILE_WORKERS": workers}


def targets(workload: str, nodes: int) -> tuple[str, str]:
    """Issue 18's compile-time targets that apply: W1 cold <= 1 s and warm <= 0.3 s; any
    graph of 5,000 nodes or more cold <= 10 s."""
    if workload == "W1":
        return "target <= 1 s", "target <= 0.3 s"
    return ("target <= 10 s" if nodes >= 5000 else "no target"), "no target"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workload", default="W1")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backend", choices=("numpy", "numba", "cuda"), default=None)
    p.add_argument("--steps", type=int, default=None, help="W4: time steps (5,000 nodes at 100)")
    p.add_argument("--workers", nargs="+", default=["default"],
                   help="GRAPHC_COMPILE_WORKERS settings, alternated in each round")
    args = p.parse_args(argv)
    params = {"steps": args.steps} if args.steps else None
    runs = {w: ([], []) for w in args.workers}
    from run import write_bytecode
    write_bytecode()  # as graphc bench does: a user's install has its bytecode cache
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    for _ in range(args.repeats):
        for workers, (cold, warm) in runs.items():
            with tempfile.TemporaryDirectory() as cache:
                env = _setting(workers)
                cold.append(run(args.workload, cache, args.backend, env, params))
                warm.append(run(args.workload, cache, args.backend, env, params))
    for workers, (cold, warm) in runs.items():
        for r in cold + warm:
            r["total"] = r["build"] + r["compile"]
        med = {k: {key: statistics.median(r[key] for r in rs)
                   for key in ("import", "build", "compile", "cpu", "total")}
               for k, rs in (("cold", cold), ("warm", warm))}
        each = ", ".join(f"{r['compile']:.2f}" for r in cold)
        cold_target, warm_target = targets(args.workload, cold[0]["nodes"])
        print(f"{args.workload} workers={workers} ({cold[0]['nodes']} nodes, "
              f"{cold[0]['kernels']} kernels, median of {args.repeats}): cold compile + first "
              f"call {med['cold']['compile']:.2f} s (cpu {med['cold']['cpu']:.2f} s; each: "
              f"{each}; {cold_target}); warm {med['warm']['compile']:.3f} s ({warm_target}, "
              f"Numba imported: "
              f"{any(r['numba_loaded'] for r in warm)}); import graphc "
              f"{med['warm']['import']:.2f} s; building the graph + gc.grad "
              f"{med['cold']['build']:.3f} s cold, {med['warm']['build']:.3f} s warm "
              f"(SymPy's derivations kept in the cache); all three (the issue's 'grad + "
              f"compile + first call'): cold {med['cold']['total']:.2f} s, warm "
              f"{med['warm']['total']:.3f} s")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
