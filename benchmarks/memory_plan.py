"""Peak memory of one training step: graphc's memory plan against PyTorch eager.

    python benchmarks/memory_plan.py [W1 W2 ...] [--no-remat]
    python benchmarks/memory_plan.py [W1 W2 ...] --train

For each workload (loss and all gradients, float32): the memory pass's figures for the
optimized graph (``planned``: buffers reused once dead and written in place, plus the
outputs; ``naive``: every value its own buffer; ``live peak``: the most bytes alive at
once), the same plan for the unoptimized graph, what the Numba backend allocates (its
buffer pool plus the outputs), the forward values kept for the backward, and PyTorch's
peak: allocations minus frees in the order its profiler records them (op granularity),
for the same step (``torch.autograd.grad`` of the same loss; its allocator's own records,
each allocation and free at its time).  ``unsched``: the planned peak in the graph's
depth-first order, before the memory pass's schedule (``passes/schedule.py``).  Feeds and
parameters are not counted anywhere.

A second table measures rematerialization (``passes/remat.py``, off by default): the
planned peak and the forward values kept for the backward with the default pipeline and
with ``REMAT_PIPELINE``, and the median ms per step of each on the Numba backend
(``--no-remat``: not run).

``--train`` instead times whole training steps (``make_train_step`` with SGD + momentum
and with Adam), with new arrays per step and with parameters and optimizer state updated
in place (``in_place=True``, ``gc.compile``'s ``donate``): planned peak MB of each, and
CPU ms per step of each in alternating rounds in one process (set OPENBLAS_NUM_THREADS=1).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workloads  # noqa: E402

import graphc as gc  # noqa: E402


def torch_peak(workload, problem) -> int:
    """Bytes PyTorch holds at most during one step: its CPU allocator's allocations and
    frees, each at its own time, from the profiler's allocation records.  (An op event's
    net ``self_cpu_memory_usage`` counts an autograd node's frees at its start, before the
    gradients it allocates: that undercounted W1's peak by 0.13 MB.)"""
    import torch
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile
    t = {k: torch.from_numpy(np.array(v)) for k, v in problem.feeds.items()}
    leaves = [t[n].requires_grad_(True) for n in problem.wrt_names]

    def step():
        loss = workload.torch(t)
        return loss, torch.autograd.grad(loss, leaves)
    step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = step()
    sizes, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation:
            sizes.append((event.start_time_ns, event.extra_fields.alloc_size))
        stack.extend(event.children)
    current = peak = 0
    for _, size in sorted(sizes):
        current += size
        peak = max(peak, current)
    del result
    return peak


def graphc_figures(problem) -> dict:
    outputs = [problem.loss, *gc.grad(problem.loss, list(problem.wrt))]
    f = gc.compile(outputs)
    unopt = gc.compile(outputs, optimize=False)
    plain = gc.compile(outputs, backend="numpy", passes=["memory"])
    (mem,) = [r for r in f.stats["passes"] if r["pass"] == "memory"]
    (plain_mem,) = plain.stats["passes"]
    out_bytes = sum(int(np.prod(t.shape)) * np.dtype(t.dtype).itemsize for t in outputs)
    return {"planned": mem["planned_peak_bytes"], "unscheduled": mem["unscheduled_peak_bytes"],
            "naive": mem["naive_peak_bytes"],
            "live": mem["peak_live_bytes"], "unfused planned": plain_mem["planned_peak_bytes"],
            "unfused naive": plain_mem["naive_peak_bytes"],
            "numba": f.stats["buffer_bytes"] + out_bytes,
            "numba unfused": unopt.stats["buffer_bytes"] + out_bytes,
            "kept for backward": mem["saved_for_backward_bytes"]}


def remat_figures(problem, seconds: float = 2.0) -> dict:
    from graphc.passes.pipeline import DEFAULT_PIPELINE, REMAT_PIPELINE
    outputs = [problem.loss, *gc.grad(problem.loss, list(problem.wrt))]
    out = {}
    for name, passes in (("default", DEFAULT_PIPELINE), ("remat", REMAT_PIPELINE)):
        f = gc.compile(outputs, passes=passes)
        (mem,) = [r for r in f.stats["passes"] if r["pass"] == "memory"]
        f(problem.feeds)
        times, start = [], time.perf_counter()
        while time.perf_counter() - start < seconds or len(times) < 20:
            t0 = time.perf_counter()
            f(problem.feeds)
            times.append(time.perf_counter() - t0)
        out[name] = {"planned": mem["planned_peak_bytes"],
                     "kept": mem["saved_for_backward_bytes"],
                     "ms": statistics.median(times) * 1e3}
    return out


def main(names, remat: bool = True) -> None:
    columns = ["planned", "unsched", "naive", "live", "unfused", "unf naive", "numba",
               "numba unf", "kept fw", "torch"]
    print(f"{'':6}" + "".join(f"{c:>10}" for c in columns) + "   (MB)")
    for name in names:
        workload = workloads.WORKLOADS[name]
        problem = workload.problem()
        g = graphc_figures(problem)
        row = [g["planned"], g["unscheduled"], g["naive"], g["live"], g["unfused planned"],
               g["unfused naive"], g["numba"], g["numba unfused"], g["kept for backward"],
               torch_peak(workload, problem)]
        print(f"{name:<6}" + "".join(f"{v / 1e6:>10.2f}" for v in row))
    if remat:
        remat_table(names)


def remat_table(names) -> None:
    print("\nrematerialization (MB, ms/step on the Numba backend)")
    print(f"{'':6}{'planned':>10}{'kept fw':>10}{'ms':>10}{'remat pl':>10}{'remat kept':>11}"
          f"{'remat ms':>10}")
    for name in names:
        r = remat_figures(workloads.WORKLOADS[name].problem())
        d, m = r["default"], r["remat"]
        print(f"{name:<6}{d['planned'] / 1e6:>10.2f}{d['kept'] / 1e6:>10.2f}{d['ms']:>10.3f}"
              f"{m['planned'] / 1e6:>10.2f}{m['kept'] / 1e6:>11.2f}{m['ms']:>10.3f}")


def train_figures(problem, optimizer, rounds: int = 20) -> dict:
    """A whole training step (``make_train_step``: loss, gradients and the optimizer's
    update) built twice, ``in_place=False`` and ``True``: each one's planned peak, the
    outputs written over the step's own arrays, the median CPU ms per step over
    ``rounds`` alternating rounds of 5 steps (each of the two runs first in turn), and
    whether their parameters and state are bitwise equal after all of them."""
    from graphc import train
    steps = [train.make_train_step(problem.loss, optimizer, list(problem.wrt),
                                   backend="numba", in_place=flag) for flag in (False, True)]
    batch = {n: v for n, v in problem.feeds.items() if n in steps[0].data_inputs}
    times: list[list[float]] = [[], []]
    for s in steps:
        s(batch)
    for r in range(rounds):
        for k in ((0, 1) if r % 2 else (1, 0)):
            start = time.process_time()
            for _ in range(5):
                steps[k](batch)
            times[k].append((time.process_time() - start) / 5)
    a, b = steps
    equal = all(np.array_equal(a.values[n], b.values[n]) for n in a.values) and \
        all(np.array_equal(a.opt_state[n], b.opt_state[n]) for n in a.opt_state)
    return {"planned": a.fn.stats["planned_peak_bytes"],
            "in place": b.fn.stats["planned_peak_bytes"], "donated": b.fn.stats["donated"],
            "ms": statistics.median(times[0]) * 1e3,
            "in place ms": statistics.median(times[1]) * 1e3, "equal": equal}


def train_table(names) -> None:
    """``--train``: :func:`train_figures` for SGD with momentum and Adam."""
    from graphc import optim
    print("whole training step, new arrays per step vs in place (MB planned, CPU ms/step)")
    print(f"{'':12}{'planned':>10}{'in place':>10}{'donated':>9}{'ms':>9}{'in pl ms':>10}"
          f"{'ratio':>7}  bitwise equal")
    for name in names:
        for label, opt in (("SGD", optim.SGD(lr=0.01, momentum=0.9)),
                           ("Adam", optim.Adam(lr=1e-3))):
            d = train_figures(workloads.WORKLOADS[name].problem(), opt)
            print(f"{name + ' ' + label:<12}{d['planned'] / 1e6:>10.2f}"
                  f"{d['in place'] / 1e6:>10.2f}{d['donated']:>9}{d['ms']:>9.3f}"
                  f"{d['in place ms']:>10.3f}{d['in place ms'] / d['ms']:>7.3f}  {d['equal']}")


if __name__ == "__main__":
    args = sys.argv[1:]
    names = [a for a in args if not a.startswith("--")] or ["W1", "W2"]
    if "--train" in args:
        train_table(names)
    else:
        main(names, "--no-remat" not in args)
