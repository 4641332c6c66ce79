"""The training loop of :mod:`graphc.train`: :func:`fit` with a progress bar and a metric
history (:class:`History`), and :class:`EarlyStopping`.  ``fit`` drives a compiled
:class:`~graphc.train.TrainStep`; it only swaps arrays."""

from __future__ import annotations

import importlib.util
import math
import sys
import time

import numpy as np

from .errors import GraphError


def seed_value(seed: int, step: int) -> np.int64:
    """The random seed of step ``step`` of a run seeded ``seed`` (dropout's draws)."""
    return np.int64((seed * 1_000_003 + step) % (2**31 - 1))


def _tqdm():
    """tqdm's bar class, imported when a bar is first drawn: its notebook widget where
    ipywidgets is installed, else its text bar (``tqdm.auto`` warns in red in a notebook
    without ipywidgets); ``None`` without tqdm, and then fit prints one line per epoch."""
    try:
        if importlib.util.find_spec("ipywidgets") is None:
            from tqdm import tqdm
        else:
            from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    return tqdm


def _dynamic_batch(data_inputs) -> bool:
    """Whether every data input has a dynamic leading (batch) dimension."""
    return bool(data_inputs) and all(t.shape and not isinstance(t.shape[0], int)
                                     for t in data_inputs.values())


def _length(data) -> int:
    lengths = {k: len(v) for k, v in data.items()}
    if not lengths:
        raise ValueError("no data")
    if len(set(lengths.values())) != 1:
        raise ValueError(f"data arrays differ in length: {lengths}")
    return next(iter(lengths.values()))


# ---------------------------------------------------------------------------------------
# History, early stopping, progress


class History:
    """Per-epoch metrics: ``history["loss"]`` is a list with one value per epoch
    (``val_`` metrics come from evaluation, ``lr`` is the last learning rate used)."""

    def __init__(self):
        self.history: dict[str, list[float]] = {}
        self.epochs = 0
        self.stopped_early = False
        self.best_epoch: int | None = None

    def append(self, metrics: dict) -> None:
        for k in [*self.history, *(k for k in metrics if k not in self.history)]:
            self.history.setdefault(k, [math.nan] * self.epochs).append(
                float(metrics.get(k, math.nan)))
        self.epochs += 1

    def __getitem__(self, key):
        return self.history[key]

    def __contains__(self, key):
        return key in self.history

    def keys(self):
        return self.history.keys()

    def __repr__(self) -> str:
        last = ", ".join(f"{k}={v[-1]:.4g}" for k, v in self.history.items())
        return f"<History epochs={self.epochs} {last}>"


class EarlyStopping:
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience``
    epochs in a row.  ``mode`` is ``"min"``, ``"max"`` or ``"auto"`` (max for names with
    "acc", else min).  ``restore_best`` puts back the best epoch's values at the end."""

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 mode: str = "auto", restore_best: bool = True):
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min', 'max' or 'auto', got {mode!r}")
        if patience < 1:
            raise ValueError(f"patience must be at least 1, got {patience}")
        self.monitor, self.patience, self.min_delta = monitor, patience, abs(min_delta)
        self.mode, self.restore_best = mode, restore_best
        self.reset()

    def reset(self) -> None:
        self.best, self.best_epoch, self.wait, self.stopped = None, None, 0, False
        self.epoch = -1

    def improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, value: float) -> bool:
        """Record one epoch's value; True when training should stop now."""
        self.epoch += 1
        if self.improved(value):
            self.best, self.best_epoch, self.wait = value, self.epoch, 0
        else:
            self.wait += 1
        stop = self.wait >= self.patience
        self.stopped = self.stopped or stop
        return stop


def _fmt(metrics: dict) -> str:
    return "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())


class _Progress:
    """A tqdm bar per epoch when stdout is a terminal, else one printed line per epoch."""

    def __init__(self, mode, epochs: int):
        self.mode, self.epochs, self.bar = mode, epochs, None

    def start(self, epoch: int, batches: int):
        if self.mode == "bar":
            self.bar = _tqdm()(total=batches, desc=f"epoch {epoch + 1}/{self.epochs}",
                            unit="batch", leave=True, dynamic_ncols=True)

    def batch(self, running: dict):
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in running.items()}, refresh=False)

    def end(self, epoch: int, metrics: dict, seconds: float):
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if k != "lr"})
            self.bar.close()
            self.bar = None
        elif self.mode == "print":
            print(f"epoch {epoch + 1}/{self.epochs}  {_fmt(metrics)}  ({seconds:.1f}s)",
                  flush=True)


def _progress_mode(progress) -> str | None:
    if not progress:
        return None
    if progress == "print" or _tqdm() is None:
        return "print"
    if progress == "bar" or sys.stdout.isatty():
        return "bar"
    return "print"


# ---------------------------------------------------------------------------------------
# fit


def fit(step, data, epochs: int = 1, batch_size: int | None = None, *,
        val_data=None, eval_step=None, eval_fn=None,
        early_stopping: EarlyStopping | None = None, shuffle: bool = True, seed: int = 0,
        progress=True) -> History:
    """:func:`graphc.train.fit` in this process (no ``workers``)."""
    n, b = _length(data), _fit_batch_size(step, batch_size)
    if n < b:
        raise ValueError(f"fit: {n} samples are fewer than one batch of {b}")
    if (val_data is None) != (eval_step is None):
        raise ValueError("fit: give both val_data and eval_step, or neither")
    rng = np.random.default_rng(seed)
    data = {k: np.asarray(v) for k, v in data.items()}
    history, bar = History(), _Progress(_progress_mode(progress), epochs)
    best = None
    if early_stopping is not None:
        early_stopping.reset()
    for epoch in range(epochs):
        start = time.perf_counter()
        metrics = _train_epoch(step, data, n, b, rng, shuffle, bar, epoch)
        history.append(_evaluate(step, metrics, val_data, eval_step, eval_fn))
        bar.end(epoch, metrics, time.perf_counter() - start)
        if early_stopping is not None:
            best = _best_values(early_stopping, metrics, epoch, history, step) or best
            if history.stopped_early:
                break
    if early_stopping is not None and early_stopping.restore_best and best is not None:
        step.values.update(best)
    return history


def _evaluate(step, metrics: dict, val_data, eval_step, eval_fn) -> dict:
    """An epoch's ``metrics`` with the learning rate, ``eval_step``'s ``val_`` metrics and
    ``eval_fn``'s added."""
    metrics["lr"] = step.optimizer.lr_at(max(step.step - 1, 0))
    if eval_step is not None:
        metrics.update({f"val_{k}": v for k, v in eval_step.evaluate(val_data, step).items()})
    if eval_fn is not None:
        metrics.update(eval_fn(step))
    return metrics


def _fit_batch_size(step, batch_size) -> int:
    """The batch size ``fit`` trains ``step`` with (``batch_size`` checked against it)."""
    b = step.batch_size
    if b is None and batch_size is not None and _dynamic_batch(step.data_inputs):
        b = batch_size  # a dynamic batch dimension: any batch size
    if b is None:
        raise GraphError("fit: the step's data inputs do not share one batch size")
    if batch_size is not None and batch_size != b:
        raise ValueError(f"fit: the step was built for batches of {b}, not {batch_size} "
                         f"(shapes are static: rebuild the graph with inputs of {batch_size})")
    return b


def _best_values(early_stopping, metrics, epoch, history, step) -> dict | None:
    """Record ``epoch`` with ``early_stopping`` (``history.stopped_early`` when it says
    stop); a copy of ``step``'s values when this epoch is the best so far, else None."""
    if early_stopping.monitor not in metrics:
        raise KeyError(f"early stopping monitors {early_stopping.monitor!r}, but the "
                       f"metrics are {sorted(metrics)}")
    history.stopped_early = early_stopping.update(metrics[early_stopping.monitor])
    if early_stopping.best_epoch != epoch:
        return None
    history.best_epoch = epoch
    return {k: v.copy() for k, v in step.values.items()}


def _train_epoch(step, data, n, b, rng, shuffle, bar, epoch) -> dict:
    order = rng.permutation(n) if shuffle else np.arange(n)
    batches = n // b
    bar.start(epoch, batches)
    totals: dict[str, float] = {}
    for k in range(batches):
        idx = order[k * b:(k + 1) * b]
        result = step({name: v[idx] for name, v in data.items() if name in step.data_inputs})
        for name, v in result.items():
            totals[name] = totals.get(name, 0.0) + v
        bar.batch({name: t / (k + 1) for name, t in totals.items()})
    return {name: t / batches for name, t in totals.items()}
