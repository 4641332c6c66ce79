"""Time one training step per workload in graphc, PyTorch eager and JAX jit, interleaved.

Run as ``graphc bench [--workload W1,W3] [--threads 2] [--seconds 5] [--backend numba]
[--json results.json]`` or ``python benchmarks/run.py ...`` (same options).

Method: every framework is prepared (graphc: ``gc.grad`` + ``gc.compile`` + first call, JAX:
first call of the jitted ``value_and_grad``: their "compile s"), warmed up, then timed in
round-robin slices of about 50 ms, each step timed with ``time.perf_counter``, until every
framework has at least ``--steps`` (50) steps and ``--seconds`` of timed work.  The table
gives the median ms/step and its ratio to PyTorch eager in the same run, next to the
issue's target.

Threads: thread pools are sized when their library loads, so ``--threads N`` is applied
through the environment before NumPy, Numba, PyTorch or JAX is imported: when one of them
already is (always, under ``graphc bench``), this script runs itself again in a child
process with the environment set.  See :data:`THREAD_ENV` and :func:`thread_env`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# Read when each library initializes its pool.  NPROC sizes the intra-op ("XLAEigen")
# thread pool of jaxlib's CPU client; JAX has no documented thread setting, and the often
# quoted XLA_FLAGS "intra_op_parallelism_threads=N" is ignored by jaxlib 0.10.
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS", "NPROC")
MARKER = "GRAPHC_BENCH_THREADS"
LIBRARIES = ("numpy", "numba", "torch", "jax")
SLICE_SECONDS = 0.05
WARMUP_STEPS = 3
BUSY_LOAD = 1.0  # 1-minute load average: one core's worth of other work


def thread_env(threads: int, env=None) -> dict[str, str]:
    """``env`` (default: ``os.environ``) with every thread count set to ``threads``."""
    env = dict(os.environ if env is None else env)
    env.update({name: str(threads) for name in THREAD_ENV})
    if threads == 1:  # also keep XLA's matmuls and convolutions on the calling thread
        flags = env.get("XLA_FLAGS", "").replace("--xla_cpu_multi_thread_eigen=true", "")
        env["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false".strip()
    env[MARKER] = str(threads)
    return env


def arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="graphc bench", description=__doc__.split("\n")[0])
    p.add_argument("--workload", action="append", metavar="W",
                   help="workload(s) to run, e.g. W1 or W1,W3 (repeatable; default: all)")
    p.add_argument("--threads", type=int, default=2,
                   help="threads for every framework (default 2, the targets' setting)")
    p.add_argument("--seconds", type=float, default=5.0,
                   help="minimum timed seconds per framework and workload (default 5)")
    p.add_argument("--backend", choices=("numpy", "numba", "cuda"), default=None,
                   help="graphc backend (default: gc.compile's default)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--steps", type=int, default=50, help=argparse.SUPPRESS)  # tests: fewer
    return p


def selected(names) -> list[str]:
    from workloads import WORKLOADS
    if not names:
        return list(WORKLOADS)
    chosen = [n.strip().upper() for spec in names for n in spec.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(WORKLOADS)}")
    return chosen


# ---------------------------------------------------------------------------------------
# Timing


def measure(steps: dict, min_steps: int, seconds: float) -> dict[str, list[float]]:
    """Seconds per call of each ``steps[name]()``, round-robin in slices, until each has
    ``min_steps`` calls and ``seconds`` of timed work."""
    for step in steps.values():
        for _ in range(WARMUP_STEPS):
            step()
    times = {name: [] for name in steps}
    pending = list(steps)
    while pending:
        for name in pending:
            step, spent = steps[name], 0.0
            while True:  # at least one step per turn
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
                spent += times[name][-1]
                if spent >= SLICE_SECONDS:
                    break
        pending = [n for n in pending if len(times[n]) < min_steps or sum(times[n]) < seconds]
    return times


def prepare(workload, problem, backend):
    """``[(framework, step or None, compile s, note)]`` for every framework of a workload."""
    import frameworks as fw

    import graphc as gc
    attempts = [(f"graphc[{backend or 'default'}]", lambda: fw.graphc_step(problem, backend)),
                ("torch eager", lambda: fw.torch_step(problem, workload.torch))]
    attempts += [(name, lambda fn=fn: fw.torch_step(problem, fn))
                 for name, fn in workload.torch_extra.items()]
    attempts.append(("jax jit", lambda: fw.jax_step(problem, workload.jax)))
    prepared = []
    for name, make in attempts:
        try:
            step, compile_s, *backend_used = make()
        except fw.NotInstalled:
            prepared.append((name, None, None, "not installed"))
            continue
        except gc.BackendError as err:
            prepared.append((name, None, None, str(err).splitlines()[0]))
            continue
        if backend_used:
            name = f"graphc[{backend_used[0]}]"
        prepared.append((name, step, compile_s, ""))
    return prepared


def bench_workload(workload, args) -> list[dict]:
    problem = workload.problem()
    prepared = prepare(workload, problem, args.backend)
    times = measure({name: step for name, step, _, _ in prepared if step}, args.steps,
                    args.seconds)
    medians = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    baseline = medians.get("torch eager")
    rows = []
    for name, _, compile_s, note in prepared:
        ms = medians.get(name)
        row = {"workload": workload.name, "framework": name, "ms_per_step": ms,
               "ratio": ms / baseline if ms is not None and baseline else None,
               "target": workload.target if name.startswith("graphc") else None,
               "compile_s": compile_s, "steps": len(times.get(name, ())), "note": note}
        if len(times.get(name, ())) > 1:
            q1, _, q3 = statistics.quantiles(times[name], n=4)
            row.update(q1_ms=q1 * 1e3, q3_ms=q3 * 1e3, min_ms=min(times[name]) * 1e3)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------
# Report


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int, backend) -> dict:
    from frameworks import version
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    versions = {d: version(d) for d in ("graphc", "numpy", "numba", "torch", "jax", "jaxlib")}
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": usable,
            "threads": threads, "backend": backend, "python": platform.python_version(),
            "versions": versions, "load_average_start": load_average()}


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: other work on the machine skews every timing."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def header(info: dict) -> str:
    versions = ", ".join(f"{name} {v or 'not installed'}" for name, v in info["versions"].items())
    return (f"graphc bench: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} "
            f"usable), {info['threads']} threads; python {info['python']}, {versions}; "
            f"load average {_loads(info['load_average_start'])}")


def _loads(loads) -> str:
    return "n/a" if loads is None else " ".join(f"{x:.2f}" for x in loads)


def _num(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


COLUMNS = (f"{'workload':<9}{'framework':<16}{'ms/step':>10}{'ratio':>8}{'target':>9}"
           f"{'compile s':>11}{'steps':>7}")


def table_rows(title: str, rows: list[dict]) -> str:
    """One workload's lines of the table: its title, then a line per framework."""
    lines = [f"{rows[0]['workload']:<9}{title}"]
    for row in rows:
        if row["note"]:
            lines.append(f"{'':<9}{row['framework']:<16}  {row['note']}")
            continue
        target = "" if row["target"] is None else f"<= {row['target']:.2f}"
        lines.append(f"{'':<9}{row['framework']:<16}{_num(row['ms_per_step'], '10.3f')}"
                     f"{_num(row['ratio'], '8.2f'):>8}{target:>9}"
                     f"{_num(row['compile_s'], '11.2f'):>11}{row['steps']:>7}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = arg_parser().parse_args(argv)
    if args.threads < 1 or args.seconds < 0 or args.steps < 1:
        raise ValueError("--threads and --steps must be >= 1 and --seconds >= 0")
    if os.environ.get(MARKER) != str(args.threads):
        if any(lib in sys.modules for lib in LIBRARIES):  # too late to size their pools
            argv = sys.argv[1:] if argv is None else list(argv)
            child = [sys.executable, os.path.abspath(__file__), *argv]
            return subprocess.run(child, env=thread_env(args.threads)).returncode
        os.environ.update(thread_env(args.threads))
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    import frameworks
    from workloads import WORKLOADS
    frameworks.set_torch_threads(args.threads)
    names = selected(args.workload)
    info = machine_info(args.threads, args.backend)
    print(header(info), flush=True)
    busy = info["load_average_start"]
    if busy and busy[0] >= BUSY_LOAD:
        print(f"warning: the machine is busy (load average {busy[0]:.2f}); timings are "
              "unreliable, PyTorch's multi-threaded ones most of all")
    print(COLUMNS, flush=True)
    rows = []
    for name in names:
        workload_rows = bench_workload(WORKLOADS[name], args)
        print(table_rows(WORKLOADS[name].title, workload_rows), flush=True)
        rows += workload_rows
    info["load_average_end"] = load_average()
    print(f"load average at the end: {_loads(info['load_average_end'])}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"machine": info, "seconds": args.seconds, "results": rows}, out,
                      indent=2)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as err:  # a user error: one line, as graphc's CLI does
        print(f"graphc bench: error: {err}", file=sys.stderr)
        sys.exit(1)
