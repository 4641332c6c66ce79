"""W4 (LSTM input 64, hidden 128, batch 32) written with gc.scan, against the unrolled W4
of workloads.py: graph nodes, distinct kernels, cold and warm compile, step time (loss and
gradients), and PyTorch eager and torch.nn.LSTM in the same run (with oneDNN, whose fused
LSTM primitive nn.LSTM runs, and with oneDNN off: PyTorch's own loop of per-step GEMMs).

    python benchmarks/scan_lstm.py [--steps 50 500] [--repeats 20] [--unrolled] [--nn]
                                   [--threads N]
    python benchmarks/scan_lstm.py --memory [--steps 50 500] [--repeats 5] [--backend numpy]
    python benchmarks/scan_lstm.py --diagrams docs    # lstm_scan_forward/backward.svg
    python benchmarks/scan_lstm.py --native [--steps 50 500]  # native vs Python loop

Forms: ``scan`` (W4's cell written with ``gc.scan``), ``nn`` (``gc.nn.LSTM``, which runs
on gc.scan: batch-first input, so two transposes more), ``unrolled`` (workloads.py's W4;
T <= 100 only: at T = 500 it would be 25,000 nodes).  cold: gc.compile + first call in a
fresh process on an empty GRAPHC_CACHE_DIR; warm: a new process on the cache the cold run
filled.  A child that runs over a minute is stopped and reported as such.

``--memory``: the ``scan`` form compiled with the default pipeline (the forward stacks the
residuals its backward loop reads) and with ``REMAT_PIPELINE`` (it stacks the carries only;
the backward recomputes each step, the input projection is computed per step and the
weights' gradients are summed in the loop): the memory pass's planned peak and what the
forward keeps for the backward, the peak of one call by tracemalloc (NumPy's allocations) and the
process's RSS peak during it (VmHWM after clearing it; the process, libraries and the
compiled program's buffer pool included), and the step time (median).
"""

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
CHILD_TIMEOUT = 60

CHILD = r"""
import json, sys, time
import numpy as np
import graphc as gc
sys.path.insert(0, sys.argv[1])
from scan_lstm import build
loss, wrt, feeds = build(int(sys.argv[2]), sys.argv[3])
grads = gc.grad(loss, wrt)
t0 = time.perf_counter()
f = gc.compile([loss, *grads])
f(feeds)
t1 = time.perf_counter()
times = []
for _ in range(int(sys.argv[4])):
    s = time.perf_counter()
    f(feeds)
    times.append(time.perf_counter() - s)
print(json.dumps({"compile": t1 - t0, "nodes": len(gc.Graph([loss, *grads]).nodes),
                  "optimized_nodes": len(f.graph.nodes), "kernels": f.stats["kernels"],
                  "compiled": f.stats.get("kernel_cache_misses"),
                  "step_ms": 1e3 * float(np.median(times)) if times else None}))
"""

MEMORY_CHILD = r"""
import json, sys, time, tracemalloc
import numpy as np
import graphc as gc
from graphc.passes import pipeline
sys.path.insert(0, sys.argv[1])
from scan_lstm import build
loss, wrt, feeds = build(int(sys.argv[2]), "scan")
passes = pipeline.REMAT_PIPELINE if sys.argv[3] == "remat" else pipeline.DEFAULT_PIPELINE
f = gc.compile([loss, *gc.grad(loss, wrt)], passes=passes, backend=sys.argv[5])
want = f(feeds)
times = []
for _ in range(int(sys.argv[4])):
    s = time.perf_counter()
    f(feeds)
    times.append(time.perf_counter() - s)
def rss(field):
    with open("/proc/self/status") as fh:
        return 1024 * int(next(l for l in fh if l.startswith(field)).split()[1])
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # VmHWM := VmRSS
before = rss("VmRSS:")
f(feeds)
rss_peak = rss("VmHWM:")
tracemalloc.start()
f(feeds)
traced = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
(plan,) = [e for e in f.stats["passes"] if e["pass"] == "memory"]
print(json.dumps({"planned": plan["planned_peak_bytes"], "kept": plan["saved_for_backward_bytes"],
                  "traced": traced, "rss": rss_peak, "rss_before": before,
                  "step_ms": 1e3 * float(np.median(times))}))
"""


def memory(steps: int, repeats: int, cache: str, backend: str) -> None:
    """Default vs REMAT_PIPELINE for the scan form at ``steps`` (module docstring)."""
    env = {**os.environ, "GRAPHC_CACHE_DIR": cache}
    for mode in ("default", "remat"):
        for _ in range(3):  # a child stopped while compiling left the kernel cache part filled
            try:
                out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(HERE),
                                      str(steps), mode, str(repeats), backend], env=env,
                                     capture_output=True, text=True, timeout=CHILD_TIMEOUT)
                break
            except subprocess.TimeoutExpired:
                out = None
        if out is None:
            print(f"W4 scan, T={steps}, {mode}: stopped after {CHILD_TIMEOUT} s, 3 times")
            continue
        if out.returncode:
            print(f"W4 scan, T={steps}, {mode}: {out.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"W4 scan ({backend}), T={steps}, {mode:<7}: planned peak "
              f"{r['planned'] / 1e6:7.2f} MB, "
              f"forward keeps {r['kept'] / 1e6:7.2f} MB; one call: tracemalloc peak "
              f"{r['traced'] / 1e6:7.2f} MB, RSS peak {r['rss'] / 1e6:7.1f} MB (before it "
              f"{r['rss_before'] / 1e6:.1f} MB); "
              f"step {r['step_ms']:.1f} ms")


def build(steps: int, kind: str = "scan", inputs=64, hidden=128, batch=32):
    """W4's loss (mean of the last hidden state), its parameters and feeds."""
    import numpy as np

    import graphc as gc
    sys.path.insert(0, str(HERE))
    from workloads import WORKLOADS, lstm_scan_graphc
    if kind == "unrolled":
        problem = WORKLOADS["W4"].problem({"steps": steps})
        return problem.loss, list(problem.wrt), problem.feeds
    data = np.random.default_rng(0).standard_normal((steps, batch, inputs)).astype(np.float32)
    if kind == "nn":
        lstm = gc.nn.LSTM(inputs, hidden, name="lstm")
        _, (h, _) = lstm(gc.input("x", (batch, steps, inputs)))
        loss = gc.mean(h)
        feeds = {"x": data.transpose(1, 0, 2).copy(), **gc.init_params(loss, seed=0)}
        return loss, list(lstm.parameters().values()), feeds
    loss, wrt = lstm_scan_graphc(inputs, hidden, batch, steps)  # W4s's graph
    feeds = {"xs": data}
    feeds.update(gc.init_params(loss, seed=0))
    return loss, wrt, feeds


THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "NUMBA_NUM_THREADS")


def child(kind: str, steps: int, repeats: int, cache: str) -> dict:
    env = {**os.environ, "GRAPHC_CACHE_DIR": cache}
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, str(HERE), str(steps), kind,
                              str(repeats)], env=env, capture_output=True, text=True,
                             timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"note": f"stopped after {CHILD_TIMEOUT} s"}
    if out.returncode:
        return {"note": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def torch_ms(steps: int, repeats: int) -> dict:
    import time

    import numpy as np
    import torch
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    sys.path.insert(0, str(HERE))
    from workloads import lstm_torch, lstm_torch_fused
    _, _, feeds = build(steps, "unrolled" if steps <= 100 else "scan")
    out = {}
    for name, fn, onednn in (("torch eager", lstm_torch, True),
                             ("torch nn.LSTM", lstm_torch_fused, True),
                             # nn.LSTM's speed is oneDNN's fused LSTM primitive; without
                             # it, PyTorch's own cell loop (a GEMM per step, like graphc)
                             ("torch nn.LSTM, oneDNN off", lstm_torch_fused, False)):
        t = {k: torch.tensor(v, requires_grad=k != "xs") for k, v in feeds.items()}
        times = []
        with torch.backends.mkldnn.flags(enabled=onednn):
            for _ in range(repeats + 1):
                s = time.perf_counter()
                loss = fn(t)
                torch.autograd.grad(loss, [t["Wx"], t["Wh"], t["b"]])
                times.append(time.perf_counter() - s)
        out[name] = 1e3 * float(np.median(times[1:]))
    return out


def native_ab(steps: int, kind: str) -> None:
    """One compiled step, its loops run natively (graphc/numba_loop.py) and as Python
    loops in turn, in this process (benchmarks/native_runs.py)."""
    from native_runs import native_vs_python

    import graphc as gc
    loss, wrt, feeds = build(steps, kind)
    f = gc.compile([loss, *gc.grad(loss, wrt)])
    native = f.source.count("called from the native loop")
    print(f"W4 {kind}, T={steps}: {native} native loops; {native_vs_python(f, feeds, 15)}")


def diagrams(folder: str) -> None:
    """W4 with gc.scan (T = 50) drawn forward and with labelled backward edges."""
    import graphc as gc
    loss, _, _ = build(50)
    for name, backward in (("forward", False), ("backward", True)):
        path = gc.render(loss, os.path.join(folder, f"lstm_scan_{name}.svg"),
                         backward=backward).path
        with open(path, encoding="utf-8") as fh:
            w, h = re.search(r'width="(\d+)pt" height="(\d+)pt"', fh.read()).groups()
        print(f"{path}: {int(w):,} x {int(h):,} pt")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, nargs="+", default=[50, 500])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--unrolled", action="store_true")
    p.add_argument("--nn", action="store_true", help="also gc.nn.LSTM (on gc.scan)")
    p.add_argument("--diagrams", metavar="DIR")
    p.add_argument("--native", action="store_true", help="the native loop against the "
                   "Python loop, interleaved in this process (scan and nn forms)")
    p.add_argument("--memory", action="store_true", help="peak memory and step time with "
                   "and without rematerialisation (scan form only)")
    p.add_argument("--backend", default="numba", help="of --memory: numba or numpy")
    p.add_argument("--threads", type=int, help="threads of every library (children and "
                   "torch): set before they load; default: the environment's")
    args = p.parse_args(argv)
    if args.threads:
        os.environ.update({name: str(args.threads) for name in THREAD_ENV})
    if args.diagrams:
        return diagrams(args.diagrams)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, "
          f"{os.environ.get('OMP_NUM_THREADS', 'default')} thread(s)")
    if args.native:
        for steps in args.steps:
            for kind in ("scan", "nn"):
                native_ab(steps, kind)
        return
    if args.memory:  # a GRAPHC_CACHE_DIR of the environment is kept between runs
        with tempfile.TemporaryDirectory() as cache:
            for steps in args.steps:
                memory(steps, args.repeats, os.environ.get("GRAPHC_CACHE_DIR", cache),
                       args.backend)
        return
    for steps in args.steps:
        kinds = ["scan"] + (["nn"] if args.nn else []) + \
            (["unrolled"] if args.unrolled and steps <= 100 else [])
        for kind in kinds:
            with tempfile.TemporaryDirectory() as cache:
                cold = child(kind, steps, 0, cache)
                for _ in range(3):  # a cold run stopped early left the cache part filled
                    warm = child(kind, steps, args.repeats, cache)
                    if warm.get("compiled") == 0:
                        break
            if "note" in warm:
                print(f"W4 {kind}, T={steps}: {warm['note']}")
                continue
            cold_s = f"{cold['compile']:.2f} s" if "compile" in cold else cold["note"]
            print(f"W4 {kind}, T={steps}: {warm['nodes']} nodes with gradients "
                  f"({warm['optimized_nodes']} after the passes), {warm['kernels']} distinct "
                  f"kernels; cold compile + first call {cold_s}, warm "
                  f"{warm['compile']:.2f} s; step {warm['step_ms']:.2f} ms")
        for name, ms in torch_ms(steps, args.repeats).items():
            print(f"{name}, T={steps}: step {ms:.2f} ms")


if __name__ == "__main__":
    main()
