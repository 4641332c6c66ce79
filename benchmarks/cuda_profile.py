"""Where a graphc[cuda] training step's host time goes, on a machine with a CUDA GPU.

    python benchmarks/cuda_profile.py [--steps 200] [--floor 2000] [--modes steps,replay,graph]
                                      [W6 W1 W3 ...]

Prints the floors numba-cuda sets on the host (one launch of a 3-argument kernel, one
``cuda.device_array`` of 4 KB and of 4 MB: microseconds each, the mean of ``--floor``
calls), then for each workload of ``benchmarks/workloads.py`` its step (every feed on the
device, as ``graphc bench --backend cuda`` times it) in microseconds, its kernel steps,
the launches of a replayed step one at a time by kernel (each waited for), and the top
of a cProfile of ``--steps`` steps sorted by own time.  docs/cuda.md ("On a
GPU") has one run on an H200.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from frameworks import device_step  # noqa: E402
from numba import cuda  # noqa: E402
from workloads import WORKLOADS  # noqa: E402

import graphc as gc  # noqa: E402
from graphc import cuda_backend  # noqa: E402


def mean_us(fn, n: int) -> float:
    """Microseconds per call of ``fn`` (after one untimed call), the GPU waited for."""
    fn()
    cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    cuda.synchronize()
    return (time.perf_counter() - start) / n * 1e6


@cuda.jit  # compiled at its first launch, after cuda_backend.available()
def add(a, b, c):
    i = cuda.grid(1)
    if i < c.size:
        c[i] = a[i] + b[i]


def floors(n: int) -> dict[str, float]:
    a = cuda.to_device(np.ones(1024, np.float32))
    b, c = cuda.device_array_like(a), cuda.device_array_like(a)
    return {"launch of a 3-argument kernel": mean_us(lambda: add[4, 256](a, b, c), n),
            "cuda.device_array, 4 KB": mean_us(lambda: cuda.device_array(1024, np.float32), n),
            "cuda.device_array, 4 MB": mean_us(
                lambda: cuda.device_array(1 << 20, np.float32), n)}


MODES = {  # how a program's later calls run (graphc.cuda_replay)
    "steps": dict(ENABLED=False, GRAPHS=False),   # every step's Python, as before replaying
    "replay": dict(ENABLED=True, GRAPHS=False),   # the first call's launches, prepared
    "graph": dict(ENABLED=True, GRAPHS=True),     # those launches as one CUDA graph
}


def per_launch(recorder, repeats: int, top: int = 8) -> list[str]:
    """The recorded launches one at a time, each waited for, by kernel: microseconds a
    launch (the GPU's time plus one launch's and one wait's host cost: see the floor of an
    empty launch, also waited for, on the first line)."""
    empty = cuda.device_array(1, np.float32)
    floor = mean_us(lambda: (add[1, 32](empty, empty, empty), cuda.synchronize()), repeats)
    total: dict[str, list] = {}
    for _ in range(repeats):
        for name, item in zip(recorder.names, recorder.items):
            start = time.perf_counter()
            item()
            cuda.synchronize()
            spent = total.setdefault(name, [0.0, 0])
            spent[0] += time.perf_counter() - start
            spent[1] += 1
    lines = [f"  launches one at a time, each waited for ({repeats} rounds; an empty one "
             f"{floor:.1f} us): kernel, launches a step, us each, us a step"]
    ranked = sorted(total.items(), key=lambda kv: -kv[1][0])
    for name, (seconds, calls) in ranked[:top]:
        lines.append(f"    {name:40s} {calls // repeats:4d} {seconds / calls * 1e6:9.1f} "
                     f"{seconds / repeats * 1e6:9.1f}")
    return lines


def profile(name: str, steps: int, mode: str = "replay") -> str:
    from graphc import cuda_replay
    for key, value in MODES[mode].items():
        setattr(cuda_replay, key, value)
    problem = WORKLOADS[name].problem()
    outputs = [problem.loss, *gc.grad(problem.loss, list(problem.wrt))]
    f = gc.compile(outputs, backend="cuda")
    step = device_step(f, problem.feeds)
    lines = [f"{name} [{mode}]: {mean_us(step, steps):.1f} us a step, "
             f"{f.stats['kernel_steps']} kernel steps, {f.stats['kernels']} kernels"]
    replay = f._program.replay
    if replay is not None:
        lines.append(f"  replay: {replay.stats}, launches {replay.how}, graph: {replay.graph}")
        lines += per_launch(replay.recorder, max(1, steps // 10))
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        step()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(8)
    return "\n".join(lines + [text.getvalue()])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workloads", nargs="*", default=["W6", "W1", "W3"])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--floor", type=int, default=2000)
    p.add_argument("--modes", default="steps,replay,graph",
                   help="comma-separated: " + ", ".join(MODES))
    args = p.parse_args(argv)
    ok, why = cuda_backend.available()  # also readies numba-cuda under NumPy 2.5
    if not ok:
        print(f"cuda_profile: {why}", file=sys.stderr)
        return 1
    print(why)
    for what, us in floors(args.floor).items():
        print(f"floor: {what}: {us:.1f} us")
    for name in args.workloads:
        for mode in args.modes.split(","):
            print(profile(name, args.steps, mode), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
