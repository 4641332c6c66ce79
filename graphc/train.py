"""Training: one compiled step (forward, backward and optimizer update), an evaluation
step, :func:`fit` with a progress bar and a metric history, early stopping, and parameter
files (``.npz``).

>>> import numpy as np, graphc as gc, graphc.nn, graphc.optim, graphc.train
>>> x, y = gc.input("x", (8, 2), "float64"), gc.input("y", (8,), "int64")
>>> model = gc.nn.Dense(2, 2, name="clf", dtype="float64")
>>> loss = gc.softmax_cross_entropy(model(x), y)
>>> step = gc.train.make_train_step(loss, gc.optim.SGD(lr=0.5), backend="numpy")
>>> X = np.random.default_rng(0).normal(size=(64, 2)); Y = (X[:, 0] > 0).astype(np.int64)
>>> hist = gc.train.fit(step, {"x": X, "y": Y}, epochs=3, progress=False)
>>> hist["loss"][-1] < hist["loss"][0]
True

The Python side only swaps arrays: the step's outputs (new parameters, optimizer state,
batch-norm running statistics) are fed back as its inputs at the next call.  Shapes are
static, so the batch size is that of the graph's data inputs; :func:`fit` drops the last
partial batch of each (reshuffled) epoch, and :meth:`EvalStep.evaluate` pads it (see its
docstring).  The loop (:class:`History`, :class:`EarlyStopping`) is in
:mod:`graphc.train_loop`, data-parallel training (``fit(..., workers=N)``) in
:mod:`graphc.distributed`, reading parameter files in :mod:`graphc.params_file`.
"""

from __future__ import annotations

import os

import numpy as np

from . import distributed, nn, train_loop
from .compiler import compile
from .errors import CheckpointError, FeedError, GraphError
from .graph import Graph
from .inputs import constant, init_params, params_of
from .ir import Tensor, located
from .optim import LR_INPUT, STEP_INPUT, Optimizer
from .params_file import (
    OPTIMIZER_PREFIX,
    check_params,
    read_params,
    shapes_of,
    write_params,
)
from .passes.autodiff import grad
from .train_loop import EarlyStopping, History, _dynamic_batch, _length, seed_value


def _names(outputs, default: str) -> dict[str, Tensor]:
    if outputs is None:
        return {}
    if isinstance(outputs, Tensor):
        return {outputs.display or default: outputs}
    if isinstance(outputs, dict):
        return dict(outputs)
    return {f"{default}{k}": t for k, t in enumerate(outputs)}


def _by_name(mapping) -> dict[str, Tensor]:
    """``{input or name: tensor}`` keyed by name."""
    return {(k.op.label if isinstance(k, Tensor) else k): v for k, v in (mapping or {}).items()}


# ---------------------------------------------------------------------------------------
# The training step


class TrainStep:
    """One compiled training step; build it with :func:`make_train_step`.

    ``step(batch)`` feeds the batch (``{input name: array}``) with the current parameters,
    optimizer state, learning rate and step count, swaps in the new values and returns
    ``{"loss": float, metric: float, ...}``.  ``values`` holds every parameter and state
    array by name, ``opt_state`` the optimizer's, ``step`` the number of steps taken.
    The step owns these arrays and, on the Numba backend, writes the new values over the
    old ones (``gc.compile``'s ``donate``), as ``torch.optim`` updates in place: copy an
    array of ``values`` or ``params`` to keep it past the next step.
    """

    def __init__(self, loss, optimizer: Optimizer, params=None, *, metrics=None, updates=None,
                 state=None, carry=None, backend=None, seed=0, initial=None,
                 in_place=True):
        if not isinstance(loss, Tensor) or loss.shape != ():
            raise GraphError(located("make_train_step: loss must be a scalar tensor"))
        self.optimizer, self.seed, self.step = optimizer, seed, 0
        self.metrics = {"loss": loss, **_names(metrics, "metric")}
        for name, m in self.metrics.items():
            if m.shape != ():
                raise GraphError(located(f"make_train_step: metric {name!r} must be a "
                                         f"scalar, got shape {m.shape}"))
        trained = list(params.values()) if isinstance(params, dict) else \
            params_of(loss) if params is None else list(params)
        self.update = optimizer.build(trained, grad(loss, trained))
        self.updates = _by_name(updates)
        self.carry_out = _by_name(carry)
        outputs = [*self.metrics.values(), *self.update.new_params.values(),
                   *self.update.new_slots.values(), *self.updates.values(),
                   *self.carry_out.values()]
        # the step's one compiled function, writing the new parameters and state over
        # the arrays of the old ones where it can (compile's donate; the step owns them)
        inputs = {t.op.label for t in Graph(outputs).inputs}
        owned = [*self.update.new_params, *self.update.new_slots, *self.updates,
                 *self.carry_out]  # the outputs after the metrics, each its input's update
        self.fn = compile(outputs, backend, donate={
            n: len(self.metrics) + k for k, n in enumerate(owned) if n in inputs and in_place})
        self._init_values(initial, state, seed)

    def _init_values(self, initial, state, seed):
        graph_inputs = {t.op.label: t for t in self.fn.graph.inputs}
        params = [t for t in self.fn.graph.inputs if t.op.is_param]
        self.values = init_params(params, seed) if params else {}
        states = [t for n, t in graph_inputs.items()
                  if n in self.updates or t.op.is_state]
        self.values.update(nn.initial_state(states))
        for name, value in {**(initial or {}), **(state or {})}.items():
            if name not in self.values:
                raise GraphError(f"make_train_step: initial value for {name!r}, which is "
                                 f"not a param or state of the step")
            value = np.asarray(value, dtype=self.values[name].dtype)
            if value.shape != self.values[name].shape:
                raise GraphError(f"make_train_step: initial value for {name!r} has shape "
                                 f"{value.shape}, expected {self.values[name].shape}")
            self.values[name] = value.copy()
        self.opt_state = self.optimizer.initial_state(
            [graph_inputs[n] for n in self.update.new_params])
        self.carry = {n: np.zeros(graph_inputs[n].shape, graph_inputs[n].dtype)
                      for n in self.carry_out}
        managed = {*self.values, *self.opt_state, *self.carry, LR_INPUT, STEP_INPUT,
                   nn.SEED_INPUT}
        self.data_inputs = {n: t for n, t in graph_inputs.items() if n not in managed}

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The current values of the trained parameters."""
        return {n: self.values[n] for n in self.update.new_params}

    @property
    def batch_size(self) -> int | None:
        """The leading dimension shared by every data input (None if they differ)."""
        sizes = {t.shape[0] for t in self.data_inputs.values() if t.shape}
        return sizes.pop() if len(sizes) == 1 else None

    def feeds(self, batch) -> dict[str, np.ndarray]:
        """Everything the compiled step is fed for ``batch`` at the current step."""
        batch = dict(batch or {})
        unknown = sorted(set(batch) - set(self.data_inputs))
        missing = sorted(set(self.data_inputs) - set(batch))
        if missing:
            raise FeedError(f"the batch lacks {', '.join(map(repr, missing))}; the training "
                            f"step takes {', '.join(map(repr, self.data_inputs))}"
                            + (f" (got {', '.join(map(repr, unknown))})" if unknown else ""))
        wanted = set(self.fn.input_names)
        feeds = {n: batch[n] for n in self.data_inputs}
        feeds.update((n, v) for n, v in self.values.items() if n in wanted)
        feeds.update(self.opt_state)
        feeds.update(self.carry)
        dtype = self.update.lr.dtype
        feeds[LR_INPUT] = np.asarray(self.optimizer.lr_at(self.step), dtype)
        feeds[STEP_INPUT] = np.asarray(self.step + 1, dtype)
        if nn.SEED_INPUT in wanted:
            feeds[nn.SEED_INPUT] = seed_value(self.seed, self.step)
        return {n: v for n, v in feeds.items() if n in wanted}

    def __call__(self, batch=None, /, **arrays) -> dict[str, float]:
        results = iter(self.fn(self.feeds({**(batch or {}), **arrays})))
        metrics = {n: float(next(results)) for n in self.metrics}
        for n in self.update.new_params:
            self.values[n] = next(results)
        for n in self.update.new_slots:
            self.opt_state[n] = next(results)
        for n in self.updates:
            self.values[n] = next(results)
        for n in self.carry_out:
            self.carry[n] = next(results)
        self.step += 1
        return metrics

    def reset_carry(self) -> None:
        """Zero the carried state (start of a new sequence)."""
        for n, v in self.carry.items():
            self.carry[n] = np.zeros_like(v)

    def save(self, path, include_optimizer: bool = False) -> str:
        """Save ``values`` (and, optionally, the optimizer state and step) to ``.npz``."""
        arrays = dict(self.values)
        if include_optimizer:
            arrays.update(self.opt_state)
            arrays["opt_step"] = np.asarray(self.step)
        return save_params(path, arrays)

    def load(self, path) -> None:
        """Load values saved by :meth:`save` (or :func:`save_params`), checking names,
        shapes and dtypes; an optimizer state in the file is restored too."""
        like = {**self.values, **self.opt_state}
        arrays = load_params(path, like=like, require=self.values)
        if "opt_step" in arrays:  # the optimizer's state, all of it and only it
            problems = [f"missing {n!r}" for n in self.opt_state if n not in arrays]
            problems += [f"{n!r} is not state of {type(self.optimizer).__name__}" for n in arrays
                         if n.startswith(OPTIMIZER_PREFIX) and n != "opt_step" and n not in like]
            if problems:
                raise CheckpointError(f"{path}: its optimizer state is not this step's (another"
                                      f" optimizer?):\n  " + "\n  ".join(problems))
            self.step = int(arrays.pop("opt_step"))
        for n, v in arrays.items():
            (self.values if n in self.values else self.opt_state)[n] = v

    def __repr__(self) -> str:
        return (f"<TrainStep {type(self.optimizer).__name__} params={len(self.params)} "
                f"inputs={list(self.data_inputs)} step={self.step}>")


def make_train_step(loss, optimizer: Optimizer, params=None, *, metrics=None, model=None,
                    updates=None, state=None, carry=None, backend=None, seed=0,
                    initial=None, in_place=True) -> TrainStep:
    """Compile the forward pass, ``gc.grad(loss, params)`` and ``optimizer``'s update into
    one function.

    - ``params``: the tensors to train (a list or ``{name: tensor}``); default: every
      param ``loss`` depends on.  Other params are fed unchanged (frozen).
    - ``metrics``: ``{name: scalar tensor}`` reported with the loss.
    - ``model`` (a :class:`graphc.nn.Module`) or ``updates`` (``{state name: tensor}``):
      state updates computed by the step and fed back (batch-norm running statistics);
      ``state`` overrides their initial values.
    - ``carry``: ``{input: output tensor}`` fed from the previous step's output (zeros at
      first and after :meth:`TrainStep.reset_carry`): state carried across chunks of a
      long sequence (stateful RNNs, chunked truncated BPTT).
    - ``backend``: as ``gc.compile`` (default: the fastest); ``seed`` seeds the parameter
      initialisation and the dropout masks; ``initial`` overrides initial values.
    - ``in_place``: write the new parameters and state over the step's own arrays of the
      old ones (``gc.compile``'s ``donate``; the same results, no new arrays per step);
      ``False``: new arrays each step, so earlier ones stay as they were.
    """
    if model is not None:
        updates = {**model.state_updates(), **_by_name(updates)}
    return TrainStep(loss, optimizer, params, metrics=metrics, updates=updates, state=state,
                     carry=carry, backend=backend, seed=seed, initial=initial,
                     in_place=in_place)


# ---------------------------------------------------------------------------------------
# The evaluation step


class EvalStep:
    """A compiled evaluation function of named outputs; build it with
    :func:`make_eval_step`.  ``ev(batch, values)`` returns ``{name: array}``, where
    ``values`` is a :class:`TrainStep` (its current parameters and state) or a dict."""

    def __init__(self, outputs, backend=None):
        self.outputs = _names(outputs, "output")
        if not self.outputs:
            raise GraphError(located("make_eval_step: no outputs"))
        self.fn = compile(list(self.outputs.values()), backend)
        self.data_inputs = {t.op.label: t for t in self.fn.graph.inputs
                            if not (t.op.is_param or t.op.is_state)
                            and t.op.label != nn.SEED_INPUT}

    @property
    def batch_size(self) -> int | None:
        sizes = {t.shape[0] for t in self.data_inputs.values() if t.shape}
        return sizes.pop() if len(sizes) == 1 else None

    def _feeds(self, batch, values) -> dict:
        values = values.values if isinstance(values, TrainStep) else dict(values)
        wanted = set(self.fn.input_names)
        feeds = {n: v for n, v in values.items() if n in wanted}
        feeds.update((n, v) for n, v in batch.items() if n in self.data_inputs)
        if nn.SEED_INPUT in wanted:
            feeds[nn.SEED_INPUT] = np.int64(0)
        return {n: v for n, v in feeds.items() if n in wanted}

    def __call__(self, batch, values) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self.fn(self._feeds(batch, values))))

    def _batches(self, data):
        """Batches covering ``data`` once; the last is padded by wrapping around.
        Yields (batch, number of real samples); a dynamic batch dimension takes all of
        ``data`` at once."""
        n, b = _length(data), self.batch_size
        if b is None and _dynamic_batch(self.data_inputs):
            yield data, n
            return
        if b is None:
            raise GraphError("evaluate: the data inputs do not share one batch size")
        for start in range(0, n, b):
            idx = np.arange(start, start + b) % n
            yield {k: np.asarray(v)[idx] for k, v in data.items()}, min(b, n - start)

    def predict(self, data, values) -> dict[str, np.ndarray]:
        """Per-sample outputs (leading dimension = batch) over all of ``data``, the padding
        of the last batch removed."""
        parts: dict[str, list] = {n: [] for n in self.outputs}
        for batch, real in self._batches(data):
            for n, v in self(batch, values).items():
                if np.ndim(v) == 0:
                    raise GraphError(f"predict: output {n!r} is a scalar (a batch mean), not "
                                     "one value per sample; use evaluate for it")
                parts[n].append(v[:real])
        return {n: np.concatenate(p) for n, p in parts.items()}

    def evaluate(self, data, values) -> dict[str, float]:
        """Mean of each output over all of ``data``.

        Per-sample outputs (leading dimension = batch size) are exact: the padding of the
        last batch is dropped.  Scalar outputs (batch means) are averaged with the last
        batch weighted by its real samples: exact up to that one padded batch."""
        b = self.batch_size
        totals, count = dict.fromkeys(self.outputs, 0.0), 0
        for batch, real in self._batches(data):
            for n, v in self(batch, values).items():
                v = np.asarray(v, dtype=np.float64)
                per_sample = v.ndim > 0 and v.shape[0] == (real if b is None else b)
                totals[n] += float((v[:real] if per_sample else v).mean()) * real
            count += real
        return {n: float(t / count) for n, t in totals.items()}


def make_eval_step(outputs, backend=None) -> EvalStep:
    """Compile ``outputs`` (a tensor, a list, or ``{name: tensor}``) for evaluation: build
    them from the model in evaluation mode (``model(x)``), with their own batch size."""
    return EvalStep(outputs, backend)


def correct(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-sample 1.0 where the label's logit is the row maximum (a tie for the maximum
    counts as correct), else 0.0, as a float32 graph node: its mean over a batch is the
    accuracy, e.g. ``make_eval_step({"acc": correct(logits, y)})``.

    >>> import numpy as np, graphc as gc
    >>> z, y = gc.input("z", (3, 2)), gc.input("y", (3,), "int64")
    >>> f = gc.compile(gc.train.correct(z, y), backend="numpy")
    >>> f(z=np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 1.0]]), y=np.array([1, 1, 0]))
    array([0., 1., 1.], dtype=float32)
    """
    from . import functions as F
    classes = logits.shape[1]
    one_hot = F.equal(F.reshape(labels, (-1, 1)), constant(np.arange(classes)))
    picked = F.sum(F.where(one_hot, logits, 0.0), axis=1)
    return F.cast(picked >= F.max(logits, axis=1), "float32")


# ---------------------------------------------------------------------------------------
# fit: the loop (graphc/train_loop.py), or data-parallel on Ray actors (graphc/distributed.py)


def fit(step, data, epochs: int = 1, batch_size: int | None = None, *,
        val_data=None, eval_step=None, eval_fn=None,
        early_stopping: EarlyStopping | None = None, shuffle: bool = True, seed: int = 0,
        progress=True, workers=None, address=None, checkpoint=None,
        checkpoint_every: int = 100, resume=None) -> History:
    """Train ``step`` (a :class:`~graphc.train.TrainStep`) on ``data`` (``{input name:
    array}``, samples along axis 0).

    Each epoch visits the samples in a fresh random order (``shuffle``) in batches of the
    step's static batch size (``batch_size``, if given, must equal it; with a dynamic batch
    dimension, ``batch_size`` is required and may be any size), dropping the last
    partial batch (its samples are drawn in other epochs).  After each epoch,
    ``eval_step.evaluate(val_data, step)`` adds ``val_<name>`` metrics and
    ``eval_fn(step)`` (a function returning ``{name: float}``) adds its own;
    ``early_stopping`` then may stop training.  ``progress``: True (a tqdm bar on a
    terminal, else a printed line per epoch), ``"bar"``, ``"print"`` or False.
    Returns the :class:`History`.

    ``workers=N`` (or a :class:`graphc.distributed.Workers` pool) trains data-parallel on
    N Ray actors (``address``: an existing Ray cluster; ``checkpoint``,
    ``checkpoint_every`` and ``resume``: fault-tolerant runs); the step's batch size is then
    per worker.  See :func:`graphc.distributed.fit` and docs/distributed.md.
    """
    options = dict(val_data=val_data, eval_step=eval_step, eval_fn=eval_fn,
                   early_stopping=early_stopping, shuffle=shuffle, seed=seed,
                   progress=progress)
    if workers is None and address is None and checkpoint is None and resume is None:
        return train_loop.fit(step, data, epochs, batch_size, **options)
    if workers is None:
        raise ValueError("fit: address=, checkpoint= and resume= belong to data-parallel "
                         "training; give workers= too (workers=1 trains on one Ray actor)")
    return distributed.fit(step, data, epochs, batch_size, workers=workers, address=address,
                           checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                           resume=resume, **options)  # Ray is imported only now


# ---------------------------------------------------------------------------------------
# Parameter files


def save_params(path, params) -> str:
    """Save ``{name: array}`` (or a :class:`TrainStep`'s values) as an ``.npz`` file;
    ``.npz`` is appended to ``path`` if missing.  Returns the path written."""
    if isinstance(params, TrainStep):
        params = params.values
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    arrays = {}
    for name, value in params.items():
        if isinstance(value, Tensor):
            raise CheckpointError(f"save_params: {name!r} is a symbolic Tensor; save arrays "
                                  "(step.values or gc.init_params(...))")
        arrays[name] = np.asarray(value)
    write_params(path, arrays)
    return path


def load_params(path, like=None, require=None) -> dict[str, np.ndarray]:
    """Load an ``.npz`` parameter file as ``{name: array}``.

    With ``like`` (``{name: array or Tensor}``, a Module, a TrainStep or Graph outputs),
    every array must have the expected shape and dtype and no name may be unknown (except
    optimizer state, named ``opt_...``); ``require`` (default: all of ``like``) names the
    entries that must be present.  Every mismatch is listed in one
    :class:`CheckpointError`.  Graph outputs expect the params and state inputs (batch-norm
    running statistics) they read: a training-mode loss reads no running statistics, so
    for a file a training step saved pass its Module or TrainStep instead.
    """
    arrays = read_params(path)
    if like is not None:
        check_params(path, arrays, _expected(like), require)
    return arrays


def _expected(like) -> dict:
    if isinstance(like, TrainStep):
        like = like.values
    elif isinstance(like, nn.Module):
        like = {**like.parameters(), **like.state()}
    elif isinstance(like, (Tensor, list, tuple)):  # params and state (running statistics)
        like = {t.op.label: t for t in Graph(like).inputs if t.op.is_param or t.op.is_state}
    return shapes_of(like)


__all__ = ["CheckpointError", "EarlyStopping", "EvalStep", "History", "TrainStep", "fit",
           "load_params", "make_eval_step", "make_train_step", "save_params"]
