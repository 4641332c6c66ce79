"""Data-parallel scaling, 1 -> 2 workers: graphc on Ray vs PyTorch DDP (gloo), same run.

Workload: LeNet (W5 of benchmarks/workloads.py) at a global batch of 512 (256 per worker
with 2 workers), SGD, float32, one thread per worker.  For each framework and worker count:
the mean time of a global step, the gradient compute alone (graphc: the time the slowest
replica spent in its compiled program during the run; torch: the same forward and backward
without DDP, timed in the same processes), and the rest: the per-step overhead of
communication and synchronisation.  Then the raw costs that the cost model of
docs/distributed.md needs: the latency of a Ray actor round trip and of a 4-byte gloo
all-reduce, and the bandwidth of Ray's object store and of a 16 MB gloo all-reduce.

    python benchmarks/distributed.py [--steps 6] [--batch 512] [--json out.json]

It prints the load average at the start and the end: on a shared machine the figures are
those of a busy machine.  Needs the distributed extra (Ray) and torch.  Most of its time is
starting Ray and five worker processes: 160 s measured on 2 cores under a load of 12.
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "NUMBA_NUM_THREADS"):  # one thread per worker, set before numpy loads
    os.environ[_name] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workloads import lenet_data, lenet_graphc  # noqa: E402

import graphc as gc  # noqa: E402
import graphc.distributed as dist  # noqa: E402
import graphc.optim  # noqa: E402, F401
import graphc.train  # noqa: E402, F401

WARMUP = 2


def median_ms(seconds) -> float:
    return 1e3 * statistics.median(seconds)


def mean_ms(seconds) -> float:
    return 1e3 * statistics.fmean(seconds)


# ---------------------------------------------------------------------------------------
# graphc on Ray


def graphc_run(workers: int, batch: int, steps: int) -> dict:
    shard = batch // workers
    loss, _ = lenet_graphc(shard, 28)
    step = gc.train.make_train_step(loss, gc.optim.SGD(lr=0.01), backend="numba")
    data = lenet_data(np.random.default_rng(0), batch * (steps + WARMUP), 28)
    pool = dist.Workers(workers)
    stamps, busy = [], []

    def record(s, w):
        stamps.append(time.perf_counter())
        if s.step == WARMUP:
            busy.append(w.busy())

    dist.fit(step, data, workers=pool, shuffle=False, progress=False, on_step=record)
    busy.append(pool.busy())
    costs = ray_costs(pool) if workers == 2 else {}
    pool.close()
    times = np.diff(stamps)[WARMUP - 1:]
    plan = dist.Plan(step)
    update = []
    results = [np.float32(0)] * len(plan.metric_names) + \
        [np.zeros_like(step.values[p.op.label]) for p in plan.trained]
    for _ in range(steps):
        t = time.perf_counter()
        plan.apply(step, [(shard, results)] * workers)
        update.append(time.perf_counter() - t)
    param_bytes = sum(step.values[p.op.label].nbytes for p in plan.trained)
    values_bytes = sum(v.nbytes for v in step.values.values())
    compute = max(np.subtract(busy[1], busy[0])) / steps  # the slowest replica
    return {"framework": "graphc + Ray", "workers": workers, "step_ms": mean_ms(times),
            "compute_ms": 1e3 * compute, "update_ms": median_ms(update),
            "bytes_per_worker": {"to": values_bytes + shard * 8 + 8,  # values, indices, seed
                                 "from": param_bytes + 4 * len(plan.metric_names)},
            "param_bytes": param_bytes, **costs}


def ray_costs(pool, reps: int = 30) -> dict:
    """Latency of an actor round trip; bandwidth of put + get of 64 MB in the object
    store (a local cluster: shared memory)."""
    actor, ray = pool.actors[0], pool.ray
    trips = []
    for _ in range(reps):
        t = time.perf_counter()
        ray.get(actor.pid.remote())
        trips.append(time.perf_counter() - t)
    big = np.ones(16 * 2**20, np.float32)
    moves = []
    for _ in range(5):
        t = time.perf_counter()
        ray.get(ray.put(big))
        moves.append(time.perf_counter() - t)
    return {"ray_round_trip_ms": median_ms(trips),
            "ray_object_store_GBps": big.nbytes / statistics.median(moves) / 1e9}


# ---------------------------------------------------------------------------------------
# PyTorch DistributedDataParallel, gloo, one process per worker


def torch_rank(rank, world, port, batch, steps, out_path):
    import torch
    import torch.distributed as tdist
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                             world_size=world)
    torch.manual_seed(0)
    F = torch.nn.functional

    class LeNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = torch.nn.Conv2d(1, 6, 5), torch.nn.Conv2d(6, 16, 5)
            self.f1, self.f2 = torch.nn.Linear(256, 120), torch.nn.Linear(120, 84)
            self.f3 = torch.nn.Linear(84, 10)

        def forward(self, x):
            x = F.max_pool2d(torch.relu(self.c1(x)), 2)
            x = F.max_pool2d(torch.relu(self.c2(x)), 2).flatten(1)
            return self.f3(torch.relu(self.f2(torch.relu(self.f1(x)))))

    shard = batch // world
    x, y = torch.rand(shard, 1, 28, 28), torch.randint(0, 10, (shard,))
    plain = LeNet()
    model = torch.nn.parallel.DistributedDataParallel(LeNet())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def timed(fn, n):
        out = []
        for _ in range(n):
            tdist.barrier()
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        return out

    def ddp_step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def compute():
        plain.zero_grad()
        F.cross_entropy(plain(x), y).backward()

    timed(ddp_step, WARMUP)
    step_s, compute_s = timed(ddp_step, steps), timed(compute, steps)
    small, large = torch.ones(1), torch.ones(4 * 2**20)
    timed(lambda: tdist.all_reduce(small), 3)
    tiny = timed(lambda: tdist.all_reduce(small), 30)
    big = timed(lambda: tdist.all_reduce(large), 5)
    params = sum(p.numel() * 4 for p in model.parameters())
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump({"framework": "PyTorch DDP gloo", "workers": world,
                       "step_ms": mean_ms(step_s), "compute_ms": mean_ms(compute_s),
                       "update_ms": float("nan"), "param_bytes": params,
                       "bytes_per_worker": {"to": params, "from": params},
                       "gloo_allreduce_4B_ms": median_ms(tiny),
                       "gloo_allreduce_16MB_ms": median_ms(big)}, f)
    tdist.destroy_process_group()


def torch_run(workers: int, batch: int, steps: int) -> dict:
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.json")
        mp.spawn(torch_rank, args=(workers, port, batch, steps, out), nprocs=workers)
        with open(out) as f:
            return json.load(f)


# ---------------------------------------------------------------------------------------


def table(rows) -> str:
    lines = ["| framework | workers | step ms | compute ms (one shard) | overhead ms | "
             "speedup | efficiency | bytes to / from each worker per step |",
             "|---|---|---|---|---|---|---|---|"]
    base = {r["framework"]: r["step_ms"] for r in rows if r["workers"] == 1}
    for r in rows:
        speedup = base[r["framework"]] / r["step_ms"]
        overhead = r["step_ms"] - r["compute_ms"]
        b = r["bytes_per_worker"]
        lines.append(f"| {r['framework']} | {r['workers']} | {r['step_ms']:.1f} | "
                     f"{r['compute_ms']:.1f} | {overhead:.1f} | {speedup:.2f} | "
                     f"{speedup / r['workers']:.2f} | {b['to']:,} / {b['from']:,} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps (after 2 warm-up)")
    parser.add_argument("--batch", type=int, default=512, help="global batch")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    load = [round(x, 2) for x in os.getloadavg()]
    print(f"{os.cpu_count()} cores; load average at start {load} (1, 5, 15 min): "
          f"{'a busy, shared machine' if load[0] > 1 else 'a quiet machine'}", flush=True)
    import ray
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    rows = [graphc_run(n, args.batch, args.steps) for n in (1, 2)]
    costs = {k: v for k, v in rows[1].items() if k.startswith("ray_")}
    ray.shutdown()
    rows += [torch_run(n, args.batch, args.steps) for n in (1, 2)]
    costs.update({k: v for k, v in rows[-1].items() if k.startswith("gloo")})
    end_load = [round(x, 2) for x in os.getloadavg()]
    print(table(rows))
    print("graphc driver update (average + SGD) per step: "
          + ", ".join(f"{r['update_ms']:.2f} ms ({r['workers']} workers)"
                      for r in rows[:2]))
    print("raw costs: " + ", ".join(f"{k} {v:.3g}" for k, v in costs.items()))
    print(f"LeNet parameters: {rows[0]['param_bytes']:,} bytes; load average at end "
          f"{end_load}; {time.perf_counter() - start:.0f} s in all")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load_start": load, "load_end": end_load, "rows": rows,
                       "costs": costs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
