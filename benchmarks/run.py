"""Time a training step per workload in graphc, PyTorch eager and JAX jit, one process each.

Run as ``graphc bench [--workload W1,W3] [--threads 2] [--seconds 5] [--backend numba]
[--json results.json]`` or ``python benchmarks/run.py ...`` (same options).

Method: for every workload, each framework is prepared and timed in a fresh child Python
process of its own, one after the other, so that no framework's threads compete with
another's (OpenBLAS's spinning workers, used by graphc's NumPy matmuls, slowed PyTorch's
threads several-fold when they shared a process).  The child prepares its framework
(graphc: ``gc.grad`` + ``gc.compile`` + first call, JAX: first call of the jitted
``value_and_grad``: their "compile s"), runs 3 untimed warm-up steps, then times steps one by
one with ``time.perf_counter`` until it has at least ``--steps`` (50) steps and ``--seconds``
of timed work, and hands its times back to this process.  The table gives the median
ms/step and its ratio to PyTorch eager's median in the same run, next to the issue's target.
A framework that is not installed, whose backend is unavailable, or whose child process
fails gets a row with a one-line note instead.

Threads: thread pools are sized when their library loads, so every child is started with
``--threads N`` applied through the environment (see :data:`THREAD_ENV` and
:func:`thread_env`) before NumPy, Numba, PyTorch or JAX is imported; PyTorch's children
also call ``torch.set_num_threads``.  This process only starts the children and reports.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# Read when each library initializes its pool.  NPROC sizes the intra-op ("XLAEigen")
# thread pool of jaxlib's CPU client; JAX has no documented thread setting, and the often
# quoted XLA_FLAGS "intra_op_parallelism_threads=N" is ignored by jaxlib 0.10.
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS", "NPROC")
MARKER = "GRAPHC_BENCH_THREADS"
LIBRARIES = ("numpy", "numba", "torch", "jax")
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
    # Internal: run as one child process, timing one framework of one workload.
    p.add_argument("--only-framework", metavar="NAME", help=argparse.SUPPRESS)
    p.add_argument("--child-json", metavar="PATH", help=argparse.SUPPRESS)
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


def measure(step, min_steps: int, seconds: float) -> list[float]:
    """Seconds per call of ``step()``, after ``WARMUP_STEPS`` untimed calls, until it has
    ``min_steps`` calls and ``seconds`` of timed work."""
    for _ in range(WARMUP_STEPS):
        step()
    times, total = [], 0.0
    while len(times) < min_steps or total < seconds:
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        total += times[-1]
    return times


def attempts(workload, backend) -> list[tuple]:
    """``[(framework, make)]`` for every framework of a workload, in table order;
    ``make(problem)`` returns ``(step, compile s[, backend used])``."""
    import frameworks as fw
    made = [(f"graphc[{backend or 'default'}]", lambda problem: fw.graphc_step(problem, backend)),
            ("torch eager", lambda problem: fw.torch_step(problem, workload.torch))]
    made += [(name, lambda problem, fn=fn: fw.torch_step(problem, fn))
             for name, fn in workload.torch_extra.items()]
    made.append(("jax jit", lambda problem: fw.jax_step(problem, workload.jax)))
    return made


def framework_names(workload, backend) -> list[str]:
    return [name for name, _ in attempts(workload, backend)]


def prepare(workload, problem, backend, framework):
    """``(framework, step or None, compile s, note)`` for one framework of a workload; a
    graphc framework is renamed after the backend it compiled for."""
    import frameworks as fw

    import graphc as gc
    make = dict(attempts(workload, backend)).get(framework)
    if make is None:
        raise ValueError(f"unknown framework {framework!r} for {workload.name}; choose from "
                         f"{', '.join(framework_names(workload, backend))}")
    try:
        step, compile_s, *backend_used = make(problem)
    except fw.NotInstalled:
        return framework, None, None, "not installed"
    except gc.BackendError as err:
        return framework, None, None, str(err).splitlines()[0]
    if backend_used:
        framework = f"graphc[{backend_used[0]}]"
    return framework, step, compile_s, ""


def run_framework(workload, framework: str, args) -> dict:
    """In a child process: prepare and time one framework of a workload.  Returns its
    framework name, compile s, note, step times (s) and this process's id."""
    import frameworks
    if framework.startswith("torch"):
        frameworks.set_torch_threads(args.threads)
    name, step, compile_s, note = prepare(workload, workload.problem(), args.backend,
                                          framework)
    times = measure(step, args.steps, args.seconds) if step else []
    return {"framework": name, "compile_s": compile_s, "note": note, "times": times,
            "pid": os.getpid()}


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def run_child(workload_name: str, framework: str, args, json_path: str) -> dict:
    """Run :func:`run_framework` in a fresh Python process with the thread environment set;
    a child that fails gives a result with a one-line note (its last stderr line)."""
    command = [sys.executable, os.path.abspath(__file__), f"--workload={workload_name}",
               f"--threads={args.threads}", f"--seconds={args.seconds!r}",
               f"--steps={args.steps}", f"--only-framework={framework}",
               f"--child-json={json_path}"]
    if args.backend:
        command.append(f"--backend={args.backend}")
    child = subprocess.Popen(command, env=thread_env(args.threads), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    stdout, stderr = child.communicate()
    if child.returncode == 0:
        try:
            with open(json_path) as result:
                return json.load(result)
        except (OSError, ValueError) as err:
            stderr += f"\nno result from the child process: {err}"
    note = (last_line(stderr) or last_line(stdout)
            or f"child process exited with status {child.returncode}")
    return {"framework": framework, "compile_s": None, "note": note, "times": [],
            "pid": child.pid}


def bench_workload(workload, args) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="graphc-bench-") as tmp:
        results = [run_child(workload.name, framework, args, os.path.join(tmp, f"{i}.json"))
                   for i, framework in enumerate(framework_names(workload, args.backend))]
    medians = {r["framework"]: statistics.median(r["times"]) * 1e3
               for r in results if r["times"]}
    baseline = medians.get("torch eager")
    rows = []
    for result in results:
        name, times = result["framework"], result["times"]
        ms = medians.get(name)
        row = {"workload": workload.name, "framework": name, "ms_per_step": ms,
               "ratio": ms / baseline if ms is not None and baseline else None,
               "target": workload.target if name.startswith("graphc") else None,
               "target_ms": workload.target_ms if name.startswith("graphc") else None,
               "compile_s": result["compile_s"], "steps": len(times), "note": result["note"],
               "pid": result["pid"]}
        if len(times) > 1:
            q1, _, q3 = statistics.quantiles(times, n=4)
            row.update(q1_ms=q1 * 1e3, q3_ms=q3 * 1e3, min_ms=min(times) * 1e3)
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
        if row.get("target_ms") is not None:  # an absolute target (W6: 15 us per call)
            target = f"<= {row['target_ms'] * 1e3:g} us"
        lines.append(f"{'':<9}{row['framework']:<16}{_num(row['ms_per_step'], '10.3f')}"
                     f"{_num(row['ratio'], '8.2f'):>8}{target:>9}"
                     f"{_num(row['compile_s'], '11.2f'):>11}{row['steps']:>7}")
    return "\n".join(lines)


def child_main(args) -> int:
    """``--only-framework``: time one framework of one workload, write the result as JSON."""
    if not args.child_json or not args.workload:
        raise ValueError("--only-framework needs --child-json and one --workload")
    if os.environ.get(MARKER) != str(args.threads):
        if any(lib in sys.modules for lib in LIBRARIES):  # too late to size their pools
            raise ValueError("--only-framework is internal: run with thread_env(--threads)")
        os.environ.update(thread_env(args.threads))
    from workloads import WORKLOADS
    names = selected(args.workload)
    if len(names) != 1:
        raise ValueError("--only-framework needs exactly one workload")
    result = run_framework(WORKLOADS[names[0]], args.only_framework, args)
    with open(args.child_json, "w") as out:
        json.dump(result, out)
    return 0


def main(argv=None) -> int:
    args = arg_parser().parse_args(argv)
    if args.threads < 1 or args.seconds < 0 or args.steps < 1:
        raise ValueError("--threads and --steps must be >= 1 and --seconds >= 0")
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    if args.only_framework:
        return child_main(args)
    from workloads import WORKLOADS
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
