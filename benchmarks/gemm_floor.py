"""The GEMMs of a workload's training step alone, in NumPy's BLAS and in JAX jit: the time
no framework's step can go below with these libraries on this machine.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=2 \\
        python benchmarks/gemm_floor.py --workload W2 [--jax-step-ms 14.66]

Every 2-D matmul of the compiled step's graph (``f.graph``: forward and gradients, as
graphc runs them) is timed on its own, float32, operands in cache: the best of 5 x 30
calls of ``np.matmul(a, b, out=c)`` with C-contiguous operands of its shapes, and of a
``jax.jit``-compiled ``a @ b`` (JAX's dispatch included: a few us a call).  With
``--jax-step-ms`` (JAX jit's whole step in ``graphc bench``), it prints the workload's
target in ms and how it compares with the GEMMs' sum.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workloads import WORKLOADS  # noqa: E402

import graphc as gc  # noqa: E402


def gemm_shapes(workload: str) -> list[tuple[int, int, int]]:
    """(m, k, n) of every 2-D matmul in the workload's compiled training step."""
    problem = WORKLOADS[workload].problem()
    f = gc.compile([problem.loss, *gc.grad(problem.loss, list(problem.wrt))], backend="numpy")
    return [(t.inputs[0].shape[0], t.inputs[0].shape[1], t.inputs[1].shape[1])
            for t in f.graph.nodes if t.op.name == "matmul" and t.ndim == 2]


def best(fn, reps: int = 30, rounds: int = 5) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        times.append((time.perf_counter() - start) / reps)
    return min(times)


def timings(shapes, framework: str) -> list[float]:
    rng = np.random.default_rng(0)
    found = []
    for m, k, n in shapes:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        if framework == "numpy":
            c = np.empty((m, n), np.float32)
            found.append(best(lambda a=a, b=b, c=c: np.matmul(a, b, out=c)))
        else:
            import jax
            product = jax.jit(lambda x, y: x @ y)
            ja, jb = jax.numpy.asarray(a), jax.numpy.asarray(b)
            found.append(best(lambda ja=ja, jb=jb, p=product: p(ja, jb).block_until_ready()))
    return found


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="W2", choices=sorted(WORKLOADS))
    parser.add_argument("--jax-step-ms", type=float, default=None)
    parser.add_argument("--no-jax", action="store_true", help="time NumPy's BLAS only")
    args = parser.parse_args(argv)
    shapes = gemm_shapes(args.workload)
    frameworks = ["numpy"] + ([] if args.no_jax else ["jax"])
    results = {name: timings(shapes, name) for name in frameworks}
    print(f"{args.workload}: {len(shapes)} GEMMs, float32, best of 5 x 30 calls each")
    for k, (m, kk, n) in enumerate(shapes):
        cells = "  ".join(f"{name} {results[name][k] * 1e3:7.3f} ms "
                          f"{2 * m * kk * n / results[name][k] / 1e9:5.0f} GFLOP/s"
                          for name in frameworks)
        print(f"  {m}x{kk} @ {kk}x{n}: {cells}")
    totals = {name: sum(v) * 1e3 for name, v in results.items()}
    print("sum: " + ", ".join(f"{name} {ms:.3f} ms" for name, ms in totals.items()))
    ratio = WORKLOADS[args.workload].target
    if args.jax_step_ms and ratio is None:
        print(f"{args.workload} has no ratio target")
    elif args.jax_step_ms:
        target = ratio * args.jax_step_ms
        print(f"target {ratio} x JAX's step {args.jax_step_ms} ms "
              f"= {target:.3f} ms: {target - totals['numpy']:+.3f} ms beside NumPy's GEMMs "
              "alone")


if __name__ == "__main__":
    main()
