"""The physical limit of a training step: its FLOPs and compulsory bytes, counted from the
graphc graph, against the machine's measured GEMM peak and memory bandwidth.

- :func:`step_flops`: 2 x the multiply-adds of every matmul and convolution in the graph of
  the outputs (the forward ops and the backward ones ``gc.grad`` made); elementwise ops,
  reductions and data movement count nothing; a ``gc.scan``'s body counts once per step.
- :func:`step_bytes`: every input and parameter read once plus every output written once,
  what any implementation must move through memory.
- :func:`machine_peaks` (run it in a child process with the bench's thread environment):
  the best of ``repeats`` float32 ``n x n @ n x n`` matmuls through NumPy's BLAS (what
  graphc's matmuls call), and the best of ``repeats`` float32 copies counted as STREAM does
  (bytes read + bytes written), split over ``threads`` threads (NumPy releases the GIL).
- :func:`limit_seconds`: the roofline, ``max(FLOPs / peak, bytes / bandwidth)``;
  :func:`best_peaks`: the best of several probes (`graphc bench` probes before each workload).

>>> import graphc as gc
>>> x, w = gc.input("x", (8, 3)), gc.param("w", (3, 5))
>>> loss = gc.sum(x @ w)
>>> step_flops([loss, *gc.grad(loss, [w])])  # forward 2*8*3*5, dW = x^T @ g the same
480
>>> step_bytes([loss])  # x and w read (4 bytes each), the loss written
160
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import graphc as gc
from graphc.nn_ops import Conv2d, Conv2dInputGrad, Conv2dWeightGrad
from graphc.scan import siblings as scan_siblings
from graphc.structured_ops import MatMul


def op_flops(t: gc.Tensor) -> int:
    """2 x multiply-adds of one node: a matmul or a convolution (either adjoint), else 0."""
    op, inputs = t.op, t.inputs
    if isinstance(op, MatMul):  # out (..., M, N) = a (..., M, K) @ b (..., K, N)
        return 2 * t.size * inputs[0].shape[-1]
    if isinstance(op, Conv2d):  # every output element: C/groups x kh x kw products
        return 2 * t.size * math.prod(inputs[1].shape[1:])
    if isinstance(op, Conv2dInputGrad):  # (g, w): the forward's products, transposed
        return 2 * inputs[0].size * math.prod(inputs[1].shape[1:])
    if isinstance(op, Conv2dWeightGrad):  # (x, g) -> w: the forward's products again
        return 2 * inputs[1].size * math.prod(t.shape[1:])
    return 0


def step_flops(outputs) -> int:
    """FLOPs of matmuls and convolutions in the graph of ``outputs``, a ``gc.scan``'s body
    counted once per step (once per run of the loop, however many outputs it gives)."""
    nodes = gc.Graph(outputs).nodes
    loops = sum(t.op.loop.length * step_flops(list(t.op.loop.graph.outputs))
                for t, *_ in scan_siblings(nodes).values())
    return loops + sum(op_flops(t) for t in nodes)


def _nbytes(t: gc.Tensor) -> int:
    return t.size * np.dtype(t.dtype).itemsize


def step_bytes(outputs) -> int:
    """Bytes of the graph's inputs and parameters plus those of its outputs."""
    graph = gc.Graph(outputs)
    return sum(map(_nbytes, graph.inputs)) + sum(map(_nbytes, graph.outputs))


def limit_seconds(flops: int, nbytes: int, peaks: dict) -> tuple[float, str]:
    """``(seconds, bound)``: the least time the machine needs for the FLOPs at its GEMM peak
    and the bytes at its bandwidth, and which of the two ("gemm" or "memory") bounds it."""
    compute = flops / peaks["gemm_flops_per_s"]
    memory = nbytes / peaks["bandwidth_bytes_per_s"]
    return (compute, "gemm") if compute >= memory else (memory, "memory")


def best_peaks(known: dict, probe: dict) -> dict:
    """``known`` peaks with a new ``probe``'s: the higher GEMM FLOP/s and bandwidth of the
    two (a virtual machine runs slower in some spells; a limit measured in one would make
    a step look faster than the machine), and every probe's figures under ``"probes"``."""
    if probe.get("note") or "gemm_flops_per_s" not in probe:
        return known
    if known.get("note") or "gemm_flops_per_s" not in known:
        return {**probe, "probes": [_figures(probe)]}
    probes = known.get("probes", [_figures(known)]) + [_figures(probe)]
    return {**known, "probes": probes,
            "gemm_flops_per_s": max(p[0] for p in probes),
            "bandwidth_bytes_per_s": max(p[1] for p in probes)}


def _figures(peaks: dict) -> list:
    return [peaks["gemm_flops_per_s"], peaks["bandwidth_bytes_per_s"]]


def _best(fn, repeats: int) -> float:
    fn()  # warm-up: threads started, pages touched
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def machine_peaks(threads: int = 1, n: int = 1024, copy_mib: int = 64,
                  repeats: int = 10) -> dict:
    """The GEMM peak (FLOP/s, with the BLAS's own threads) and the copy bandwidth (bytes/s)
    of ``threads`` threads."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    c = np.empty((n, n), np.float32)
    gemm = _best(lambda: np.matmul(a, b, out=c), repeats)
    src = np.ones(copy_mib * 2**20 // 4, np.float32)
    dst = np.empty_like(src)
    parts = list(zip(np.array_split(dst, threads), np.array_split(src, threads)))
    with ThreadPoolExecutor(threads) as pool:
        copy = _best(lambda: list(pool.map(lambda pair: np.copyto(*pair), parts)), repeats)
    return {"gemm_n": n, "gemm_flops_per_s": 2 * n**3 / gemm, "copy_bytes": src.nbytes,
            "copy_threads": threads, "bandwidth_bytes_per_s": 2 * src.nbytes / copy,
            "repeats": repeats}
