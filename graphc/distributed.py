"""Data-parallel training on Ray: ``gc.train.fit(step, data, workers=N)``.

The driver (this process) holds the one true copy of the parameters, the optimizer state,
the step count and the position in the data.  Each step it puts the parameters in Ray's
object store once; N actors (replicas), each holding the data and the compiled
*gradient* program (forward and backward of the step's loss, no update), compute the
gradients of their shard of the global batch; the driver averages them, weighted by shard
sizes, and applies the step's optimizer, compiled on its own from the same
``optimizer.build``, so every replica sees the same new parameters.  A step is applied
only when every shard's gradients are in, so a replica that dies is replaced and its shard
recomputed: nothing is lost and no step is applied twice.  See docs/distributed.md.

Ray is an optional extra (``pip install 'graphc[distributed]'``): ``import graphc`` never
imports it, this module imports it when training starts.
"""

from __future__ import annotations

import logging
import os
import re
import time

import numpy as np

from . import nn
from .compiler import compile
from .errors import CheckpointError, GraphError
from .graph import Graph
from .inputs import input
from .ir import Tensor, iter_nodes
from .optim import LR_INPUT, STEP_INPUT
from .params_file import check_params, read_params, shapes_of, write_params
from .passes.autodiff import grad
from .train_loop import (
    EarlyStopping,
    History,
    _dynamic_batch,
    _evaluate,
    _length,
    _progress_mode,
    _tqdm,
    seed_value,
)

log = logging.getLogger("graphc.distributed")

FIT_PREFIX = "fit_"  # the data position and history in checkpoint files


def _ray():
    try:
        import ray
    except ImportError:
        raise ImportError("data-parallel training (workers=) needs Ray: "
                          "pip install 'graphc[distributed]'") from None
    return ray


# ---------------------------------------------------------------------------------------
# Shipping graphs: nodes as (op, input positions); ops are frozen dataclasses and pickle.


def pack(outputs) -> tuple:
    """``outputs`` (tensors) as data that :func:`unpack` rebuilds in another process
    (graph nodes hold weak references and do not pickle themselves; ops do, with
    cloudpickle, Ray's pickler, which also takes the NumPy functions SymPy generated for
    elementwise ops).  Display names and the feed checks of losses (label ranges) travel
    with the nodes."""
    nodes = iter_nodes(outputs)
    where = {id(t): k for k, t in enumerate(nodes)}
    table = [(t.op, tuple(where[id(i)] for i in t.inputs), t.display,
              tuple(r for r in t.meta or () if hasattr(r, "check_feeds"))) for t in nodes]
    return table, [where[id(t)] for t in outputs]


def unpack(packed) -> list[Tensor]:
    table, outputs = packed
    built: list[Tensor] = []
    for op, inputs, display, checks in table:
        t = Tensor.make(op, [built[k] for k in inputs])
        if display:
            t.named(display)
        for record in checks:
            t.tag(record)
        built.append(t)
    return [built[k] for k in outputs]


class Replica:
    """One worker process (a Ray actor): :meth:`load` compiles a step's gradient program
    and takes the data; ``grads(values, seed, index)`` returns the metrics, gradients and
    state updates of the samples ``index`` (a list of arrays)."""

    def __init__(self, threads: int = 1):
        # Before anything imports Numba: one thread per replica unless told otherwise.
        os.environ.setdefault("NUMBA_NUM_THREADS", str(threads))
        self.fn, self.seconds = None, 0.0  # seconds: time spent computing gradients

    def busy(self) -> float:
        return self.seconds

    def pid(self) -> int:
        return os.getpid()

    def load(self, program, backend, data) -> int:
        self.fn = compile(unpack(program), backend)
        self.data = data
        return os.getpid()

    def grads(self, values, seed, index) -> list:
        wanted = set(self.fn.input_names)
        feeds = {n: v for n, v in values.items() if n in wanted}
        feeds.update((n, v[index]) for n, v in self.data.items() if n in wanted)
        if nn.SEED_INPUT in wanted:
            feeds[nn.SEED_INPUT] = seed
        start = time.perf_counter()
        results = list(self.fn({n: v for n, v in feeds.items() if n in wanted}))
        self.seconds += time.perf_counter() - start
        return results


class Plan:
    """What a :class:`~graphc.train.TrainStep` becomes for data parallelism: the replicas'
    gradient program (metrics, gradients, state updates) and the driver's update program
    (the step's optimizer fed averaged gradients as inputs)."""

    def __init__(self, step):
        if step.carry_out:
            raise GraphError("fit(workers=...): a step with carry= (state carried between "
                             "chunks) cannot be split across replicas")
        graph_inputs = {t.op.label: t for t in step.fn.inputs}
        self.trained = [graph_inputs[n] for n in step.update.new_params]
        self.metric_names = list(step.metrics)
        self.update_names = list(step.updates)
        grads = grad(step.metrics["loss"], self.trained)
        outputs = [*step.metrics.values(), *grads, *step.updates.values()]
        self.program = pack(outputs)
        self.backend = step.fn.backend
        grad_inputs = [input(f"mean_grad_{p.op.label}", p.shape, p.dtype)
                       for p in self.trained]
        update = step.optimizer.build(self.trained, grad_inputs)
        self.grad_names = [g.op.label for g in grad_inputs]
        self.slot_names = list(update.new_slots)
        new = [*update.new_params.values(), *update.new_slots.values()]
        inputs = {t.op.label for t in Graph(new).inputs}  # the step's arrays: updated in place
        self.update_fn = compile(new, self.backend, donate={
            n: k for k, n in enumerate([*update.new_params, *update.new_slots]) if n in inputs})
        self.lr_dtype = update.lr.dtype

    def split(self, results):
        """A replica's result list as (metrics, grads, state updates)."""
        m, g = len(self.metric_names), len(self.trained)
        return results[:m], results[m:m + g], results[m + g:]

    def apply(self, step, shards) -> dict[str, float]:
        """Average the shards' results (``[(samples, results)]``), weighted by their
        sizes, apply the optimizer to ``step``'s values and return the metrics."""
        total = sum(count for count, _ in shards)
        parts = [(count / total, self.split(r)) for count, r in shards]

        def mean(k, which):
            acc = sum(w * np.asarray(p[which][k], np.float64) for w, p in parts)
            return acc.astype(np.asarray(parts[0][1][which][k]).dtype)

        grads = {n: mean(k, 1) for k, n in enumerate(self.grad_names)}
        feeds = {**step.values, **step.opt_state, **grads,
                 LR_INPUT: np.asarray(step.optimizer.lr_at(step.step), self.lr_dtype),
                 STEP_INPUT: np.asarray(step.step + 1, self.lr_dtype)}
        results = iter(self.update_fn({n: feeds[n] for n in self.update_fn.input_names}))
        for p in self.trained:
            step.values[p.op.label] = next(results)
        for n in self.slot_names:
            step.opt_state[n] = next(results)
        for k, n in enumerate(self.update_names):
            step.values[n] = mean(k, 2)
        step.step += 1
        return {n: float(mean(k, 0)) for k, n in enumerate(self.metric_names)}


# ---------------------------------------------------------------------------------------
# The replicas on Ray: start, replace the dead, surface errors


def connect(address=None, num_cpus: int = 2):
    """Start Ray on this machine (``num_cpus``, no dashboard) unless it is running, or
    join the cluster at ``address``.  Returns the ``ray`` module."""
    ray = _ray()
    if not ray.is_initialized():
        if address is not None:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    return ray


def _from_worker(err, rank: int, pid: int):
    """The worker's exception, re-raised on the driver as its own type with the worker's
    traceback in the message (Ray's error itself if that type cannot be rebuilt)."""
    cause = getattr(err, "cause", None)
    if not isinstance(cause, Exception):
        return err
    remote = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # Ray colours the first line
    text = (f"{cause}\n\n(raised in data-parallel worker {rank}, pid {pid}; its "
            f"traceback:)\n{remote}")
    try:
        return type(cause)(text)
    except Exception:  # noqa: BLE001 -- an exception type with another signature
        return err


class Workers:
    """A pool of ``n`` Ray actors, each running a :class:`Replica` with ``threads``
    threads; ``actors`` and ``pids`` are in rank order.  ``fit(..., workers=N)`` makes one
    for the run and closes it; pass a pool (``workers=pool``) to reuse its processes
    across runs, and :meth:`close` it when done.  ``address``: see :func:`connect`."""

    def __init__(self, n: int, *, address=None, threads: int = 1, timeout: float = 300):
        if not (isinstance(n, int) and n >= 1):
            raise ValueError(f"workers must be a positive int, got {n!r}")
        ray = self.ray = connect(address, max(2, n))
        self.threads, self.plan, self.data_ref, self.restarts_left = threads, None, None, 0
        self.actor_class = ray.remote(num_cpus=threads, max_restarts=0)(Replica)
        self.actors = [self.actor_class.remote(threads) for _ in range(n)]
        try:
            self.pids = ray.get([a.pid.remote() for a in self.actors], timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            self.close()
            free, total = (r.get("CPU", 0) for r in (ray.available_resources(),
                                                     ray.cluster_resources()))
            raise RuntimeError(f"{n} data-parallel workers did not start within {timeout:g} s; "
                               f"each takes {threads} CPU{'s' * (threads > 1)} and the Ray "
                               f"cluster has {free:g} free of {total:g} (does another "
                               f"Workers pool hold them?)") from None

    def __len__(self) -> int:
        return len(self.actors)

    def load(self, plan: Plan, data, max_restarts: int = 3) -> None:
        """Ship ``plan``'s gradient program and ``data`` to every replica."""
        self.plan, self.data_ref, self.restarts_left = plan, self.ray.put(data), max_restarts
        refs = [self._load(a) for a in self.actors]
        for rank, ref in enumerate(refs):
            self._get(rank, -1, ref, lambda r: self._load(self.actors[r]))

    def _load(self, actor):
        p = self.plan
        return actor.load.remote(p.program, p.backend, self.data_ref)

    def _replace(self, rank: int, step: int, err) -> None:
        when = f"at step {step + 1}" if step >= 0 else "while loading"
        if self.restarts_left <= 0:
            raise RuntimeError(f"data-parallel worker {rank} died {when} and no restarts "
                               f"are left (max_restarts): {err}") from None
        self.restarts_left -= 1
        old = self.pids[rank]
        self.ray.kill(self.actors[rank])
        self.actors[rank] = self.actor_class.remote(self.threads)
        self.pids[rank] = self.ray.get(self._load(self.actors[rank]))
        log.warning("worker %d (pid %d) died %s (%s); replaced by pid %d%s", rank, old,
                    when, type(err).__name__, self.pids[rank],
                    f", recomputing its shard of step {step + 1}" if step >= 0 else "")

    def _get(self, rank: int, step: int, ref, retry):
        """``ray.get(ref)``; a dead replica is replaced and ``retry(rank)`` resubmitted."""
        ray = self.ray
        while True:
            try:
                return ray.get(ref)
            except ray.exceptions.RayTaskError as err:
                raise _from_worker(err, rank, self.pids[rank]) from None
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as err:
                self._replace(rank, step, err)
                ref = retry(rank)

    def gradients(self, step: int, values: dict, seeds, shards) -> list:
        """Every replica's results for its shard of step ``step`` (0-based), in rank
        order; a dead replica is replaced and its shard recomputed."""
        values_ref = self.ray.put(values)

        def submit(rank):
            return self.actors[rank].grads.remote(values_ref, seeds[rank], shards[rank])

        refs = [submit(rank) for rank in range(len(self.actors))]
        return [self._get(rank, step, ref, submit)
                for rank, ref in enumerate(refs)]

    def busy(self) -> list[float]:
        """Seconds each replica has spent computing gradients (for profiling)."""
        return self.ray.get([a.busy.remote() for a in self.actors])

    def close(self) -> None:
        """End the replicas' processes."""
        for a in self.actors:
            self.ray.kill(a)
        self.actors, self.pids = [], []


# ---------------------------------------------------------------------------------------
# Checkpoints: parameters, optimizer state, step count and data position in one .npz


def _npz(path) -> str:
    path = os.fspath(path)
    return path if path.endswith(".npz") else path + ".npz"


def save_checkpoint(path, step, position: dict) -> str:
    """Write ``step``'s values, optimizer state and step count with the fit ``position``
    (``fit_...`` arrays) to ``path`` atomically: a temporary file in the same folder,
    flushed to disk, then renamed over ``path``, so a crash leaves the old file or the
    new one, never half of one."""
    path = _npz(path)
    arrays = {**step.values, **step.opt_state, "opt_step": np.asarray(step.step)}
    arrays.update({FIT_PREFIX + k: np.asarray(v) for k, v in position.items()})
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            write_params(f, arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_checkpoint(path, step, expected: dict) -> dict:
    """Restore ``step`` from a checkpoint and return its ``fit_`` position; raise
    :class:`CheckpointError` when it does not match the step or ``expected`` (the run's
    samples, seed, global batch and shuffling, on which the data order depends)."""
    path = _npz(path)
    arrays = read_params(path)
    position = {k[len(FIT_PREFIX):]: arrays.pop(k) for k in list(arrays)  # (a param named
                if k.startswith(FIT_PREFIX) and k not in step.values}     # fit_W is a param)
    check_params(path, arrays, shapes_of({**step.values, **step.opt_state}), None)
    problems = [f"no fit position ('fit_{k}')" for k in expected if k not in position]
    problems += [f"it was written with {k}={position[k].item()}, this fit has {k}={v}"
                 for k, v in expected.items() if k in position and position[k].item() != v]
    if "opt_step" not in arrays:
        problems.append("no step count ('opt_step')")
    if problems:
        raise CheckpointError(f"{path} cannot resume this fit:\n  " + "\n  ".join(problems))
    step.step = int(arrays.pop("opt_step"))
    for n, v in arrays.items():
        (step.values if n in step.values else step.opt_state)[n] = v
    return position


# ---------------------------------------------------------------------------------------
# Progress: one bar for the whole run with throughput and the number of workers


class _Progress:
    def __init__(self, mode, total: int, done: int, workers: int, epochs: int):
        self.mode, self.workers, self.epochs = mode, workers, epochs
        self.bar = None
        if mode == "bar":
            self.bar = _tqdm()(total=total, initial=done, unit="step", dynamic_ncols=True,
                               desc=f"fit on {workers} worker{'s' * (workers > 1)}")
        self.start, self.samples = time.perf_counter(), 0

    def rate(self) -> float:
        return self.samples / max(time.perf_counter() - self.start, 1e-9)

    def step(self, samples: int, running: dict) -> None:
        self.samples += samples
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({**{k: f"{v:.4g}" for k, v in running.items()},
                                  "samples/s": f"{self.rate():.0f}", "workers": self.workers},
                                 refresh=False)

    def epoch(self, epoch: int, metrics: dict) -> None:
        if self.mode == "print":
            text = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            print(f"epoch {epoch + 1}/{self.epochs}  {text}  ({self.rate():.0f} samples/s, "
                  f"{self.workers} worker{'s' * (self.workers > 1)})", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------------------
# fit


def fit(step, data, epochs: int = 1, batch_size: int | None = None, *,
        workers: int = 2, address=None, checkpoint=None, checkpoint_every: int = 100,
        resume=None, val_data=None, eval_step=None, eval_fn=None,
        early_stopping: EarlyStopping | None = None, shuffle: bool = True, seed: int = 0,
        progress=True, threads: int = 1, max_restarts: int = 3, on_step=None) -> History:
    """Train ``step`` (a :class:`~graphc.train.TrainStep`) data-parallel on ``workers`` Ray
    actors; ``gc.train.fit(...,
    workers=N)`` calls this.  The step's batch size is per worker (as in PyTorch DDP), so
    one optimizer step consumes a global batch of ``workers * step.batch_size`` samples
    and equals a single-process step on that global batch (for a loss that is a batch
    mean).  ``checkpoint`` (a path) is written every ``checkpoint_every`` steps and at the
    end; ``resume`` (a path) continues such a run exactly.  ``on_step(step, workers)`` is
    called after each applied step (``workers``: the :class:`Workers`).  Other arguments
    as :func:`graphc.train.fit`.  Returns the :class:`~graphc.train.History`.
    """
    pool = workers if isinstance(workers, Workers) else None
    workers = len(pool) if pool is not None else workers
    if not (isinstance(workers, int) and workers >= 1):
        raise ValueError(f"fit: workers must be a positive int or a Workers pool, got "
                         f"{workers!r}")
    b = step.batch_size
    if b is None and _dynamic_batch(step.data_inputs):  # batch_size: the global batch, as
        if not (isinstance(batch_size, int) and batch_size >= workers  # one process's
                and batch_size % workers == 0):
            raise ValueError(f"fit: the step's batch dimension is dynamic: give batch_size, "
                             f"the global batch, a multiple of the {workers} workers (got "
                             f"{batch_size!r})")
        b = batch_size // workers
    if b is None:
        raise GraphError("fit: the step's data inputs do not share one batch size")
    global_batch = workers * b
    if batch_size is not None and batch_size not in (b, global_batch):
        raise ValueError(f"fit: the step was built for batches of {b} per worker "
                         f"({global_batch} in all on {workers} workers), not {batch_size}")
    n = _length(data)
    if n < global_batch:
        raise ValueError(f"fit: {n} samples are fewer than one global batch of "
                         f"{global_batch} ({workers} workers x {b})")
    if (val_data is None) != (eval_step is None):
        raise ValueError("fit: give both val_data and eval_step, or neither")
    if checkpoint_every < 1:
        raise ValueError(f"fit: checkpoint_every must be at least 1, got {checkpoint_every}")
    run = {"samples": n, "seed": seed, "global_batch": global_batch, "shuffle": int(shuffle)}
    position = load_checkpoint(resume, step, run) if resume is not None else {}
    plan = Plan(step)
    data = {k: np.asarray(v) for k, v in data.items() if k in step.data_inputs}
    own = pool is None
    pool = Workers(workers, address=address, threads=threads) if own else pool
    try:
        pool.load(plan, data, max_restarts)
        return _loop(step, plan, pool, epochs, run, position, checkpoint, checkpoint_every,
                     val_data, eval_step, eval_fn, early_stopping, _progress_mode(progress),
                     on_step)
    finally:
        if own:
            pool.close()


def _restored_history(position) -> History:
    history = History()
    for key in sorted(k for k in position if k.startswith("history_")):
        history.history[key[len("history_"):]] = [float(v) for v in position[key]]
    history.epochs = len(next(iter(history.history.values()), []))
    return history


def _loop(step, plan, pool, epochs, run, position, checkpoint, every, val_data,
          eval_step, eval_fn, early_stopping, mode, on_step) -> History:
    n, global_batch, workers = run["samples"], run["global_batch"], len(pool.actors)
    b, batches = global_batch // workers, run["samples"] // global_batch
    start_epoch, start_batch = int(position.get("epoch", 0)), int(position.get("batch", 0))
    history = _restored_history(position)
    rng = np.random.default_rng(run["seed"])
    bar = _Progress(mode, epochs * batches, start_epoch * batches + start_batch, workers,
                    epochs)
    best, epoch, ran = None, start_epoch - 1, False
    if early_stopping is not None:
        early_stopping.reset()

    def save(epoch, batch, totals):
        pos = {**run, "epoch": epoch, "batch": batch,
               **{f"total_{k}": v for k, v in totals.items()},
               **{f"history_{k}": v for k, v in history.history.items()}}
        save_checkpoint(checkpoint, step, pos)

    try:
        for epoch in range(epochs):
            order = rng.permutation(n) if run["shuffle"] else np.arange(n)
            if epoch < start_epoch:
                continue  # the data order of the epochs before the checkpoint
            first, ran = (start_batch if epoch == start_epoch else 0), True
            totals = {k[len("total_"):]: float(v) for k, v in position.items()
                      if k.startswith("total_")} if epoch == start_epoch else {}
            for k in range(first, batches):
                idx = order[k * global_batch:(k + 1) * global_batch]
                shards = [idx[r * b:(r + 1) * b] for r in range(workers)]
                seeds = [seed_value(step.seed + 7919 * r, step.step)
                         for r in range(workers)]
                results = pool.gradients(step.step, step.values, seeds, shards)
                metrics = plan.apply(step, [(len(s), r) for s, r in zip(shards, results)])
                for name, v in metrics.items():
                    totals[name] = totals.get(name, 0.0) + v
                if checkpoint is not None and step.step % every == 0:
                    save(epoch, k + 1, totals)
                bar.step(global_batch, {name: t / (k + 1) for name, t in totals.items()})
                if on_step is not None:
                    on_step(step, pool)
            metrics = {name: t / batches for name, t in totals.items()}
            history.append(_evaluate(step, metrics, val_data, eval_step, eval_fn))
            bar.epoch(epoch, metrics)
            if early_stopping is not None:
                stop, values = _early_stopping(early_stopping, metrics, epoch, history, step)
                best = best if values is None else values
                if stop:
                    history.stopped_early = True
                    break
        if checkpoint is not None and ran:  # (epochs the checkpoint has passed: left as is)
            save(epoch + 1, 0, {})
    finally:
        bar.close()
    if early_stopping is not None and early_stopping.restore_best and best is not None:
        step.values.update(best)
    return history


def _early_stopping(early_stopping, metrics, epoch, history, step):
    """Record ``epoch`` with ``early_stopping``: (whether to stop, a copy of ``step``'s
    values when this epoch is the best so far, else None)."""
    if early_stopping.monitor not in metrics:
        raise KeyError(f"early stopping monitors {early_stopping.monitor!r}, "
                       f"but the metrics are {sorted(metrics)}")
    stop = early_stopping.update(metrics[early_stopping.monitor])
    if early_stopping.best_epoch != early_stopping.epoch:
        return stop, None
    history.best_epoch = epoch
    return stop, {k: v.copy() for k, v in step.values.items()}


__all__ = ["Plan", "Replica", "Workers", "connect", "fit", "load_checkpoint", "pack",
           "save_checkpoint", "unpack"]
