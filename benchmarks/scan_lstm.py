"""W4 (LSTM input 64, hidden 128, batch 32) written with ``gc.scan``, against the unrolled
W4 of ``graphc bench``: graph size, distinct kernels, cold and warm compile, ms per
training step (loss and the gradients of Wx, Wh, b), beside PyTorch eager and
``torch.nn.LSTM`` on the same numbers.

    python benchmarks/scan_lstm.py [--steps 50 500] [--unrolled] [--seconds 2]
    python benchmarks/scan_lstm.py --diagrams docs    # lstm_scan_forward/backward.svg

Each figure comes from a fresh child process on the Numba backend with 2 threads.  cold:
an empty GRAPHC_CACHE_DIR, then ``gc.compile`` + the first call; warm: a new process on
the cache the cold run filled (``gc.grad`` is timed apart, as "build").  nodes: the graph
as built (forward and backward, ``gc.Graph``), and after the passes (``f.stats``).  The
unrolled form compiles for about a minute cold at T = 50 (and cannot be built at T = 500:
25,000 nodes), so it is measured only with ``--unrolled``, warm, at T <= 100.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
THREADS = "2"
CHILD_TIMEOUT = 60

SIZES = {"inputs": 64, "hidden": 128, "batch": 32}


def lstm_scan_graphc(inputs, hidden, batch, steps):
    """W4's LSTM (benchmarks/workloads.py: ``lstm_graphc``) with the loop as one scan."""
    import numpy as np

    import graphc as gc
    xs = gc.input("xs", (steps, batch, inputs))
    Wx = gc.param("Wx", (inputs, 4 * hidden))
    Wh = gc.param("Wh", (hidden, 4 * hidden))
    b = gc.param("b", (4 * hidden,), init="zeros")
    H = hidden
    zeros = gc.constant(np.zeros((batch, hidden), np.float32))

    def cell(carry, x):
        h, c = carry
        z = x @ Wx + h @ Wh + b
        i, f = gc.sigmoid(z[:, :H]).named("i"), gc.sigmoid(z[:, H:2 * H]).named("f")
        g, o = gc.tanh(z[:, 2 * H:3 * H]).named("g"), gc.sigmoid(z[:, 3 * H:]).named("o")
        c = (f * c + i * g).named("c")
        h = (o * gc.tanh(c)).named("h")  # names for the diagrams only
        return (h, c), h

    (h, _), _ = gc.scan(cell, (zeros, zeros), xs)
    return gc.mean(h), [Wx, Wh, b]


def _median_ms(step, seconds):
    for _ in range(2):
        step()
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def child(form: str, steps: int, seconds: float) -> dict:
    """In a fresh process: build, compile and time one form of W4."""
    import numpy as np
    sys.path.insert(0, HERE)
    import workloads

    import graphc as gc
    sizes = dict(SIZES, steps=steps)
    feeds = workloads.lstm_data(np.random.default_rng(0), **sizes)
    if form.startswith("torch"):
        import torch
        torch.set_num_threads(int(THREADS))
        loss, _ = workloads.lstm_graphc(**dict(sizes, steps=1))  # the same initial values
        feeds.update(gc.init_params(loss, seed=0))
        fn = workloads.lstm_torch_fused if form == "torch nn.LSTM" else workloads.lstm_torch
        tensors = {k: torch.from_numpy(np.array(v)) for k, v in feeds.items()}
        leaves = [tensors[k].requires_grad_(True) for k in ("Wx", "Wh", "b")]
        return {"ms": _median_ms(lambda: torch.autograd.grad(fn(tensors), leaves), seconds)}
    build = lstm_scan_graphc if form == "scan" else workloads.lstm_graphc
    t0 = time.perf_counter()
    loss, wrt = build(**sizes)
    grads = gc.grad(loss, wrt)
    t1 = time.perf_counter()
    f = gc.compile([loss, *grads])
    feeds.update(gc.init_params(loss, seed=0))
    out = f(feeds)
    t2 = time.perf_counter()
    return {"nodes_built": len(gc.Graph([loss, *grads]).nodes), "nodes": f.stats["nodes"],
            "kernels": f.stats["kernels"], "kernel_calls": f.stats.get("kernel_calls"),
            "build_s": t1 - t0, "compile_s": t2 - t1, "loss": float(out[0]),
            "ms": _median_ms(lambda: f(feeds), seconds)}


def run_child(form, steps, seconds, cache) -> dict:
    env = {**os.environ, "GRAPHC_CACHE_DIR": cache}
    env.update({k: THREADS for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                     "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")})
    cmd = [sys.executable, os.path.abspath(__file__), "--child", form, str(steps),
           str(seconds)]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True,
                              timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"note": f"over {CHILD_TIMEOUT} s"}
    if done.returncode:
        return {"note": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cell(v, fmt):
    return "" if v is None else format(v, fmt)


def diagrams(folder: str) -> int:
    """W4 with gc.scan (T = 50) drawn forward and with labelled backward edges."""
    import re

    import graphc as gc
    loss, _ = lstm_scan_graphc(steps=50, **SIZES)
    for name, backward in (("forward", False), ("backward", True)):
        path = gc.render(loss, os.path.join(folder, f"lstm_scan_{name}.svg"),
                         backward=backward).path
        with open(path, encoding="utf-8") as fh:
            w, h = re.search(r'width="(\d+)pt" height="(\d+)pt"', fh.read()).groups()
        print(f"{path}: {int(w):,} x {int(h):,} pt")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, nargs="+", default=[50, 500])
    p.add_argument("--unrolled", action="store_true",
                   help="also the unrolled W4 (warm cache; T <= 100)")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--diagrams", metavar="DIR", help="render W4 (T=50) forward and "
                   "backward as DIR/lstm_scan_forward.svg, DIR/lstm_scan_backward.svg")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.diagrams:
        return diagrams(args.diagrams)
    if args.child:
        form, steps, seconds = args.child
        print(json.dumps(child(form, int(steps), float(seconds))))
        return 0
    print(f"W4 LSTM {SIZES}, Numba backend, {THREADS} threads, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'form':<16}{'T':>5}{'nodes':>14}{'kernels':>9}{'cold s':>8}{'warm s':>8}"
          f"{'ms/step':>9}  note")
    for steps in args.steps:
        rows = []
        with tempfile.TemporaryDirectory() as cache:
            cold = run_child("scan", steps, args.seconds, cache)
            warm = run_child("scan", steps, args.seconds, cache)
            rows.append(("gc.scan", cold, warm))
        if args.unrolled and steps <= 100:
            with tempfile.TemporaryDirectory() as cache:
                run_child("unrolled", steps, 0.1, cache)  # fills the cache; may time out
                rows.append(("unrolled", {}, run_child("unrolled", steps, args.seconds,
                                                       cache)))
        for form in ("torch eager", "torch nn.LSTM"):
            rows.append((form, {}, run_child(form, steps, args.seconds, "")))
        for name, cold, warm in rows:
            nodes = f"{warm['nodes_built']} -> {warm['nodes']}" if "nodes" in warm else ""
            print(f"{name:<16}{steps:>5}{nodes:>14}{_cell(warm.get('kernels'), 'd'):>9}"
                  f"{_cell(cold.get('compile_s'), '.2f'):>8}"
                  f"{_cell(warm.get('compile_s'), '.2f'):>8}"
                  f"{_cell(warm.get('ms'), '.2f'):>9}  "
                  f"{'; '.join(filter(None, (cold.get('note'), warm.get('note'))))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
