"""Time a training step per workload in graphc, PyTorch eager and JAX jit, one process each.

Run as ``graphc bench [--workload W1,W3] [--threads 2] [--seconds 5] [--backend numba]
[--json results.json]`` or ``python benchmarks/run.py ...`` (same options);
``python benchmarks/run.py --readme results.json`` prints README's performance table
from such a JSON file (:func:`report.readme_table`).

Method: for every workload, each framework is prepared and timed in a child Python process
of its own, so that no framework's threads compete with another's in one process
(OpenBLAS's spinning workers, used by graphc's NumPy matmuls, slowed PyTorch's threads
several-fold when they shared a process).  The children are prepared one after the other
(graphc: ``gc.grad`` + ``gc.compile`` + first call, JAX: first call of the jitted
``value_and_grad``), then timed in turns (:mod:`rounds`): 5 rounds in which each child in
turn runs a burst of steps (3 untimed warm-up steps before its first), timed one by one
with ``time.perf_counter``, until all its bursts have at least ``--steps`` (50) steps and
``--seconds`` of timed work; only one child runs at a time.  They hand back their times,
and at the end the BLAS libraries they had loaded (threadpoolctl).  Then pairs of children
measure graphc's compile times the way ``benchmarks/compile_time.py`` does, three pairs
(medians): cold (an empty ``GRAPHC_CACHE_DIR``) and warm (a new process on the cache the
cold one filled), ``gc.compile`` + first call each; JAX's compile time is its first
call.  A framework that is not installed, whose backend is unavailable, or whose child
process fails gets a row with a one-line note instead.

The table gives each framework's median ms/step and its ratio to the faster peer of the
same run (the smaller median of PyTorch eager and JAX jit; "best peer"), its ratio to
PyTorch eager (each ratio the median over rounds of the ratio of the two bursts' medians:
this VM changes speed for seconds to minutes at a time), and for graphc the issue's target
and whether it is met against that peer (a workload may also give ``target_us``, a time
per step in microseconds), the compile times, and the share of the physical limit it
reaches: ``limits.limit_seconds`` of the step's matmul/conv FLOPs and bytes in and out
(counted from the graphc graph) at the machine's sgemm peak and copy bandwidth (the best of
the probes run in a child at the bench's thread count before each workload), divided by
graphc's time per step.  A line under each workload gives its
FLOPs, bytes, limit and peak memory: graphc's plan (``f.stats["planned_peak_bytes"]``)
and PyTorch eager's (``memory_plan.torch_peak``, its profiler's records, measured in the
torch child after timing).

Threads: thread pools are sized when their library loads, so every child is started with
``--threads N`` applied through the environment (see :data:`THREAD_ENV` and
:func:`thread_env`) before NumPy, Numba, PyTorch or JAX is imported; PyTorch's children
also call ``torch.set_num_threads``.  The children's environment also lacks
:data:`SCRUBBED_ENV` (OpenBLAS's kernel and cache-size overrides), so that OpenBLAS picks
its kernel for the CPU it runs on; tests and CI keep them.  This process only starts the
children and reports; the 1-minute load average is sampled after every child's
preparation and every round, and a
warning printed when other work (the load beyond the bench's own threads) exceeded
:data:`BUSY_LOAD`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # benchmarks/ is a folder of scripts: report, workloads ...
    sys.path.insert(0, HERE)

import report  # noqa: E402
import rounds  # noqa: E402
from rounds import last_line  # noqa: E402

# Read when each library initializes its pool.  NPROC sizes the intra-op ("XLAEigen")
# thread pool of jaxlib's CPU client; JAX has no documented thread setting, and the often
# quoted XLA_FLAGS "intra_op_parallelism_threads=N" is ignored by jaxlib 0.10.
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS", "NPROC")
# Read by OpenBLAS when it loads: a forced kernel and cache size (tests and CI set them to
# keep results reproducible); the benchmark times the kernel OpenBLAS picks for this CPU.
SCRUBBED_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
MARKER = "GRAPHC_BENCH_THREADS"
LIBRARIES = ("numpy", "numba", "torch", "jax")
WARMUP_STEPS = 3
BUSY_LOAD = 1.0  # 1-minute load average: one core's worth of other work
PEERS = ("torch eager", "jax jit")  # a ratio target is met against the faster of these
COMPILE_REPEATS = 3  # cold/warm pairs per workload (--compile-repeats)


def thread_env(threads: int, env=None, backend=None) -> dict[str, str]:
    """``env`` (default: ``os.environ``) with every thread count set to ``threads`` and
    :data:`SCRUBBED_ENV` removed; JAX kept on the CPU unless ``backend`` is "cuda" (JAX
    with a CUDA plugin would otherwise take the GPU in a CPU bench)."""
    env = {k: v for k, v in (os.environ if env is None else env).items()
           if k not in SCRUBBED_ENV}
    env.update({name: str(threads) for name in THREAD_ENV})
    if backend != "cuda":
        env.setdefault("JAX_PLATFORMS", "cpu")
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
                   help="minimum timed seconds per framework and workload, over all its rounds "
                        "(default 5)")
    p.add_argument("--backend", choices=("numpy", "numba", "cuda"), default=None,
                   help="graphc backend (default: gc.compile's default); with cuda, PyTorch "
                        "and JAX run on the GPU too")
    p.add_argument("--compile-repeats", type=int, default=COMPILE_REPEATS, metavar="N",
                   help=f"cold/warm compile pairs per workload, medians (default "
                        f"{COMPILE_REPEATS}; 0: none)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--readme", metavar="PATH",
                   help="print README's performance table from the JSON file PATH; run nothing")
    p.add_argument("--steps", type=int, default=50, help=argparse.SUPPRESS)  # tests: fewer
    # Internal: run as one child process, timing one framework of one workload.
    p.add_argument("--only-framework", metavar="NAME", help=argparse.SUPPRESS)
    p.add_argument("--child-json", metavar="PATH", help=argparse.SUPPRESS)
    # Internal: run as the child process measuring the machine's GEMM peak and bandwidth.
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    return p


def selected(names) -> list[str]:
    from workloads import WORKLOADS
    if not names:
        return list(WORKLOADS)
    by_upper = {name.upper(): name for name in WORKLOADS}  # w4s, W4S, W4s: W4s
    chosen = [by_upper.get(n.strip().upper(), n.strip())
              for spec in names for n in spec.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(WORKLOADS)}")
    return chosen


# ---------------------------------------------------------------------------------------
# Timing


def measure(step, min_steps: int, seconds: float, warmup: int = WARMUP_STEPS) -> list[float]:
    """Seconds per call of ``step()``, after ``warmup`` untimed calls, until it has
    ``min_steps`` calls and ``seconds`` of timed work."""
    for _ in range(warmup):
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
    device = "cuda" if backend == "cuda" else "cpu"  # the peers run where graphc runs
    made = [(f"graphc[{backend or 'default'}]", lambda problem: fw.graphc_step(problem, backend)),
            ("torch eager", lambda problem: fw.torch_step(problem, workload.torch, device))]
    made += [(name, lambda problem, fn=fn: fw.torch_step(problem, fn, device))
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


def serve_framework(workload, framework: str, args) -> int:
    """In a child process (:mod:`rounds`' protocol on stdin and stdout): prepare one
    framework of a workload and say so (its name, compile s, note and this process's id),
    then time bursts of steps when asked; when told to finish, give the BLAS libraries it
    loaded and :func:`step_figures`."""
    import frameworks
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # what the libraries print goes to stderr, not among the replies

    def say(message: dict) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()
    if framework.startswith("torch"):
        frameworks.set_torch_threads(args.threads)
    problem = workload.problem()
    name, step, compile_s, note = prepare(workload, problem, args.backend, framework)
    say({"framework": name, "compile_s": compile_s, "note": note, "times": [],
         "pid": os.getpid()})
    warmup = WARMUP_STEPS
    for line in sys.stdin if step is not None else []:
        request = json.loads(line)
        if request["do"] != "time":
            say({"blas": blas_info(), **step_figures(workload, problem, name, args.backend)})
            break
        say({"times": measure(step, request["steps"], request["seconds"], warmup)})
        warmup = 0
    return 0


def step_figures(workload, problem, framework: str, backend=None) -> dict:
    """graphc: the step's matmul/conv FLOPs and bytes in and out (``limits``); PyTorch eager:
    its peak memory (``memory_plan.torch_peak``, on the CPU).  None on a GPU: the limits
    and the memory are the CPU's."""
    if backend == "cuda":
        return {}
    if framework.startswith("graphc"):
        import limits

        import graphc as gc
        outputs = [problem.loss, *gc.grad(problem.loss, list(problem.wrt))]
        return {"flops": limits.step_flops(outputs), "bytes": limits.step_bytes(outputs)}
    if framework == "torch eager":
        import memory_plan
        return {"peak_bytes": memory_plan.torch_peak(workload, problem)}
    return {}


def blas_info() -> list[dict]:
    """The BLAS libraries loaded in this process (threadpoolctl), and PyTorch's MKL, which
    is linked into libtorch where threadpoolctl does not see it."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"internal_api": "unknown (threadpoolctl not installed)"}]
    found = [{"internal_api": lib["internal_api"], "version": lib.get("version"),
              "architecture": lib.get("architecture"), "num_threads": lib["num_threads"],
              "library": _library(lib["filepath"])}
             for lib in threadpool_info() if lib["user_api"] == "blas"]
    torch = sys.modules.get("torch")
    if torch is not None and torch.backends.mkl.is_available():
        found.append({"internal_api": "mkl", "num_threads": torch.get_num_threads(),
                      "library": "torch"})
    return found


def _library(path: str) -> str:
    """The package that ships a shared library: ``numpy.libs`` for
    ``.../site-packages/numpy.libs/libscipy_openblas64_.so``."""
    parts = path.replace(os.sep, "/").split("/")
    return parts[parts.index("site-packages") + 1] if "site-packages" in parts else parts[-1]


def spawn(options: list[str], args, json_path: str) -> tuple[dict | None, int, str]:
    """Run this script with ``options`` in a fresh Python process with the thread
    environment set; ``(its JSON result or None, its pid, a one-line note when it failed:
    its last stderr line)``."""
    command = [sys.executable, os.path.abspath(__file__), f"--threads={args.threads}",
               f"--child-json={json_path}", *options]
    child = subprocess.Popen(command, env=thread_env(args.threads, backend=args.backend),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = child.communicate()
    if child.returncode == 0:
        try:
            with open(json_path) as result:
                return json.load(result), child.pid, ""
        except (OSError, ValueError) as err:
            stderr += f"\nno result from the child process: {err}"
    return None, child.pid, (last_line(stderr) or last_line(stdout)
                             or f"child process exited with status {child.returncode}")


def time_frameworks(workload_name: str, names: list[str], args, tmp: str,
                    loads: list) -> list[dict]:
    """Every framework of a workload in a child process of its own (:mod:`rounds`), prepared
    one after the other (so that compile times do not compete), then timed in turns; a
    result per framework, with a one-line note where it could not be timed.  Appends the
    1-minute load average to ``loads`` after each child's preparation and each round."""
    children, results = [], []
    backend = [f"--backend={args.backend}"] if args.backend else []
    try:
        for i, framework in enumerate(names):
            command = [sys.executable, os.path.abspath(__file__), f"--threads={args.threads}",
                       f"--workload={workload_name}", f"--only-framework={framework}",
                       *backend]
            child = rounds.Child(command, thread_env(args.threads, backend=args.backend),
                                 os.path.join(tmp, f"{i}.stderr"))
            children.append(child)
            results.append(child.reply() or {"framework": framework, "compile_s": None,
                                             "note": child.note, "times": [],
                                             "pid": child.proc.pid})
            loads.append(load_average())
        rounds.time_in_turns(children, results, args.seconds, args.steps,
                             lambda: loads.append(load_average()))
    finally:
        for child in children:
            child.close()
    return results


def measure_peaks(args) -> dict:
    """``limits.machine_peaks`` and the BLAS it ran on, measured in a child process with
    the bench's threads; ``{"note": ...}`` when the child failed, or on a GPU."""
    if args.backend == "cuda":
        from graphc import cuda_backend
        return {"note": f"{cuda_backend.available()[1]}; the probes measure the CPU"}
    with tempfile.TemporaryDirectory(prefix="graphc-bench-") as tmp:
        result, _, note = spawn(["--probe"], args, os.path.join(tmp, "probe.json"))
    return result or {"note": note}


def compile_times(workload_name: str, args) -> dict:
    """graphc's cold and warm compile seconds (``compile_time.run``: gc.compile + first
    call in a fresh process, on an empty kernel cache and then on the one it filled; and,
    beside them, building the graph and its gc.grad in the same processes), each
    the median of ``--compile-repeats`` (3) such pairs (one cold compile read W1 1.32 s in a bench,
    five just after it 0.89-0.94 s, and the same command 1.31-1.55 s half an hour later:
    this VM changes speed), and
    the planned peak bytes of the compiled step; a ``compile_note`` if a child failed."""
    import compile_time
    env = thread_env(args.threads, backend=args.backend)
    colds, warms = [], []
    if not args.compile_repeats:
        return {}
    try:
        for _ in range(args.compile_repeats):
            with tempfile.TemporaryDirectory(prefix="graphc-bench-cache-") as cache:
                colds.append(compile_time.run(workload_name, cache, args.backend, env))
                warms.append(compile_time.run(workload_name, cache, args.backend, env))
    except subprocess.CalledProcessError as err:
        return {"compile_note": last_line(err.stderr)
                or f"child process exited with status {err.returncode}"}
    return {"compile_cold_s": statistics.median(c["compile"] for c in colds),
            "compile_warm_s": statistics.median(w["compile"] for w in warms),
            "compile_cold_all_s": [c["compile"] for c in colds],
            # building the graph and gc.grad: SymPy's derivations, kept in the cache dir
            "grad_cold_s": statistics.median(c["build"] for c in colds),
            "grad_warm_s": statistics.median(w["build"] for w in warms),
            "planned_peak_bytes": warms[-1]["planned_peak_bytes"]}


def bench_workload(workload, args, peaks: dict, loads: list) -> list[dict]:
    """Time every framework of a workload and measure graphc's compile times, each in a
    child process; append the 1-minute load average to ``loads`` as they go."""
    with tempfile.TemporaryDirectory(prefix="graphc-bench-") as tmp:
        results = time_frameworks(workload.name, framework_names(workload, args.backend),
                                  args, tmp, loads)
    compiled = compile_times(workload.name, args)
    loads.append(load_average())
    return report_rows(workload, results, compiled, peaks)


# ---------------------------------------------------------------------------------------
# Comparing


def best_peer(medians: dict[str, float]) -> tuple[str | None, float | None]:
    """The faster of :data:`PEERS` that were timed, and its ms/step."""
    timed = [(medians[name], name) for name in PEERS if medians.get(name) is not None]
    if not timed:
        return None, None
    ms, name = min(timed)
    return name, ms


def _ratio(ms, baseline):
    return ms / baseline if ms is not None and baseline else None


def target_met(ms, peer_ms, target, target_us=None, ratio=None) -> bool | None:
    """Whether graphc's ``ms`` per step meets its targets: ``ms / peer_ms <= target`` (a
    ratio to the faster peer) and ``ms <= target_us`` microseconds, each where given; None
    when that cannot be judged (graphc or, for a ratio target, every peer has no time).
    ``ratio``: graphc's ratio to the peer where it was measured otherwise (default
    ``ms / peer_ms``)."""
    if ms is None or (target is None and target_us is None):
        return None
    if target is not None and peer_ms is None:
        return None
    ratio = ms / peer_ms if ratio is None and peer_ms else ratio
    return ((target is None or ratio <= target)
            and (target_us is None or ms * 1e3 <= target_us))


def report_rows(workload, results: list[dict], compiled: dict, peaks: dict) -> list[dict]:
    """The table's rows from the children's ``results``: median ms/step, ratios to the best
    peer and to PyTorch eager, quartiles; for graphc also its targets and verdict, the
    ``compiled`` figures of :func:`compile_times` and the share of the physical limit."""
    medians = {r["framework"]: statistics.median(r["times"]) * 1e3
               for r in results if r["times"]}
    peer, peer_ms = best_peer(medians)
    turns = {r["framework"]: r.get("rounds") for r in results if r["times"]}

    def ratio(name, ms, to, to_ms):  # paired by round where timed in turns
        return rounds.paired_ratio(turns.get(name), turns.get(to)) or _ratio(ms, to_ms)
    rows = []
    for result in results:
        name, times = result["framework"], result["times"]
        ms = medians.get(name)
        row = {"workload": workload.name, "framework": name, "ms_per_step": ms,
               "ratio": ratio(name, ms, peer, peer_ms), "best_peer": peer,
               "ratio_torch": ratio(name, ms, "torch eager", medians.get("torch eager")),
               "rounds": turns.get(name), "target": None,
               "met": None, "compile_s": result["compile_s"], "steps": len(times),
               "note": result["note"], "pid": result["pid"]}
        row.update({k: result[k] for k in ("blas", "flops", "bytes", "peak_bytes")
                    if k in result})
        if len(times) > 1:
            q1, _, q3 = statistics.quantiles(times, n=4)
            row.update(q1_ms=q1 * 1e3, q3_ms=q3 * 1e3, min_ms=min(times) * 1e3)
        if name.startswith("graphc"):
            target_us = getattr(workload, "target_us", None)
            row.update(ratio_rounds=rounds.paired_ratios(turns.get(name), turns.get(peer)))
            row.update(target=workload.target, target_us=target_us,
                       met=target_met(ms, peer_ms, workload.target, target_us, row["ratio"]),
                       **compiled)
            row.update(physical_limit(row, peaks))
        rows.append(row)
    return rows


def physical_limit(row: dict, peaks: dict) -> dict:
    """``limit_ms`` (``limits.limit_seconds``), what bounds it, and ``pct_of_limit``: that
    time as a percentage of the row's ms/step."""
    import limits
    if row.get("flops") is None or "gemm_flops_per_s" not in peaks:
        return {}
    seconds, bound = limits.limit_seconds(row["flops"], row["bytes"], peaks)
    pct = None if row["ms_per_step"] is None else 100 * seconds * 1e3 / row["ms_per_step"]
    return {"limit_ms": seconds * 1e3, "bound": bound, "pct_of_limit": pct}


# ---------------------------------------------------------------------------------------
# The machine


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def isa_level(flags: str | None = None) -> str:
    """The widest vector ISA of the CPU (``flags``: /proc/cpuinfo's flags line): avx512f,
    avx2, avx, or ``unknown``."""
    if flags is None:
        try:
            with open("/proc/cpuinfo") as cpuinfo:
                flags = next((line for line in cpuinfo if line.startswith("flags")), "")
        except OSError:
            flags = ""
    words = set(flags.split(":", 1)[-1].split())
    return next((isa for isa in ("avx512f", "avx2", "avx") if isa in words), "unknown")


def cpu_core(cpuinfo: str | None = None) -> str:
    """The core's microarchitecture as LLVM names it (the code Numba generates is tuned
    for it) with /proc/cpuinfo's family and model (``cpuinfo``: its text): a virtual
    machine that names its CPU only "AMD EPYC" may run on Zen 4 one day and Zen 5 the
    next (Zen 4 runs a 512-bit FMA as two 256-bit halves; this VM's sgemm probe gave
    104-200 GFLOP/s on znver4, 416 in its fastest run, whose core was not recorded)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    fields = dict(re.findall(r"^(cpu family|model)\s*:\s*(\S+)", cpuinfo, re.M))
    where = (f"family {fields['cpu family']} model {fields['model']}"
             if len(fields) == 2 else "")
    try:
        import llvmlite.binding as llvm
        name = llvm.get_host_cpu_name()
    except (ImportError, OSError):
        name = ""
    return ", ".join(x for x in (name, where) if x) or "unknown"


def machine_info(threads: int, backend) -> dict:
    from frameworks import version
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    versions = {d: version(d) for d in ("graphc", "numpy", "numba", "torch", "jax", "jaxlib")}
    return {"cpu": cpu_model(), "core": cpu_core(), "isa": isa_level(),
            "cores": os.cpu_count(),
            "usable_cores": usable, "threads": threads, "backend": backend,
            "python": platform.python_version(), "versions": versions,
            "env_removed": list(SCRUBBED_ENV), "bytecode": bytecode_state(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_average_start": load_average()}


def _graphc_sources() -> list[pathlib.Path]:
    """The source files of graphc's packages (graphc, graphc.passes, graphc.viz ...)."""
    import graphc
    roots = [pathlib.Path(graphc.__file__).parent]
    for sub in ("passes", "viz", "importers", "data"):
        with contextlib.suppress(ImportError):
            module = importlib.import_module(f"graphc.{sub}")
            roots += [pathlib.Path(p) for p in getattr(module, "__path__", [])]
    return sorted({p.resolve() for root in roots for p in root.glob("*.py")})


def write_bytecode() -> None:
    """Byte-compile graphc's sources, as a pip install does.  Where this machine sets
    PYTHONDONTWRITEBYTECODE, an editable install never writes Python's bytecode cache, so
    every process would compile graphc's sources first (0.19 s of W1's cold compile in the
    process, 0.06 s of its wall time: median of 8 alternating pairs, 2026-12-04), which no
    user's process does after its first run.  A source tree that cannot be written is left
    as it is (the header says how many are cached)."""
    import compileall
    for path in _graphc_sources():
        compileall.compile_file(str(path), quiet=2)  # False, not an error, where it fails


def bytecode_state() -> str:
    """Whether graphc's modules load from Python's bytecode cache (:func:`write_bytecode`
    writes it before anything is timed)."""
    sources = _graphc_sources()
    cached = sum(pathlib.Path(importlib.util.cache_from_source(str(p))).exists()
                 for p in sources)
    flag = " (PYTHONDONTWRITEBYTECODE set; written by graphc bench)" \
        if os.environ.get("PYTHONDONTWRITEBYTECODE") else ""
    return f"graphc's bytecode cached for {cached} of {len(sources)} modules{flag}"


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: other work on the machine skews every timing."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def busy(start: list | None, during: list, threads: int) -> bool:
    """Whether other work loaded the machine: a 1-minute load average of :data:`BUSY_LOAD`
    or more at the start, or more than ``threads`` (the bench's own) + BUSY_LOAD later."""
    return bool(start and start[0] >= BUSY_LOAD) or any(
        loads and loads[0] > threads + BUSY_LOAD for loads in during)


# ---------------------------------------------------------------------------------------
# Processes


def _as_child(args) -> None:
    """Size the thread pools and scrub the environment before any library loads."""
    if args.probe and not args.child_json:
        raise ValueError("--probe needs --child-json")
    if os.environ.get(MARKER) != str(args.threads):
        if any(lib in sys.modules for lib in LIBRARIES):  # too late to size their pools
            raise ValueError("--only-framework and --probe are internal: run with "
                             "thread_env(--threads)")
        for name in SCRUBBED_ENV:
            os.environ.pop(name, None)
        os.environ.update(thread_env(args.threads))


def child_main(args) -> int:
    """``--only-framework``: prepare and time one framework of one workload
    (:func:`serve_framework`); ``--probe``: measure the machine's peaks and write them as
    JSON to ``--child-json``."""
    _as_child(args)
    if not args.probe:
        from workloads import WORKLOADS
        names = selected(args.workload)
        if len(names) != 1:
            raise ValueError("--only-framework needs exactly one workload")
        return serve_framework(WORKLOADS[names[0]], args.only_framework, args)
    import limits
    result = {**limits.machine_peaks(args.threads), "blas": blas_info()}
    with open(args.child_json, "w") as out:
        json.dump(result, out)
    return 0


def main(argv=None) -> int:
    args = arg_parser().parse_args(argv)
    if args.threads < 1 or args.seconds < 0 or args.steps < 1 or args.compile_repeats < 0:
        raise ValueError("--threads and --steps must be >= 1, --seconds and "
                         "--compile-repeats >= 0")
    if args.readme:
        with open(args.readme) as results:
            print(report.readme_table(json.load(results)))
        return 0
    if args.only_framework or args.probe:
        return child_main(args)
    from workloads import WORKLOADS
    names = selected(args.workload)
    write_bytecode()
    info = machine_info(args.threads, args.backend)
    info["peaks"] = measure_peaks(args)
    print(report.header(info), flush=True)
    start = info["load_average_start"]
    if start and start[0] >= BUSY_LOAD:
        print(f"warning: the machine is busy (load average {start[0]:.2f}); timings are "
              "unreliable, PyTorch's multi-threaded ones most of all")
    print(report.COLUMNS, flush=True)
    rows, during = [], []
    for k, name in enumerate(names):
        if k:  # the machine's speed changes between spells: each row's limit is the best
            import limits  # probe yet
            info["peaks"] = limits.best_peaks(info["peaks"], measure_peaks(args))
        workload_rows = bench_workload(WORKLOADS[name], args, info["peaks"], during)
        print(report.table_rows(WORKLOADS[name].title, workload_rows), flush=True)
        rows += workload_rows
    info["load_average_end"] = load_average()
    samples = [loads for loads in [start, *during, info["load_average_end"]] if loads]
    info["load_1min_max"] = max((loads[0] for loads in samples), default=None)
    # the footer is about the run itself; a busy start is the header's warning
    info["busy"] = busy(None, [*during, info["load_average_end"]], args.threads)
    print(report.footer(info, rows, BUSY_LOAD))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"machine": info, "seconds": args.seconds, "results": rows}, out,
                      indent=2)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, OSError) as err:  # a user error: one line, as graphc's CLI does
        print(f"graphc bench: error: {err}", file=sys.stderr)
        sys.exit(1)
