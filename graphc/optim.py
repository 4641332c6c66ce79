"""``gc.optim``: optimizers whose update step is graph nodes, and learning-rate schedules.

An optimizer does not touch arrays.  Given parameters and their gradients (tensors), it
*builds* the new parameters and the new optimizer state (momentum buffers, Adam moments) as
graph nodes; :func:`graphc.train.make_train_step` compiles them together with the forward
and backward pass into one function, so the update fuses with the rest of the step.  Values
that change between steps are inputs: the learning rate ``opt_lr`` (from a schedule), the
step count ``opt_t`` (1 at the first step) and each state slot ``opt_<slot>_<param>``.
Every formula follows ``torch.optim`` exactly (the tests compare them step by step).

>>> import graphc as gc, graphc.optim
>>> w = gc.param("w", (3,), dtype="float64")
>>> loss = gc.sum(gc.square(w))
>>> upd = gc.optim.Adam(lr=0.1).build([w], gc.grad(loss, [w]))
>>> sorted(upd.slots), upd.new_params["w"].shape
(['opt_m_w', 'opt_v_w'], (3,))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import dtypes
from . import functions as F
from .errors import GraphError
from .inputs import input
from .ir import Tensor, located

LR_INPUT, STEP_INPUT = "opt_lr", "opt_t"


# ---------------------------------------------------------------------------------------
# Gradient clipping


def global_norm(tensors) -> Tensor:
    """sqrt(sum of squares of every element of every tensor), in the first one's dtype."""
    dtype = tensors[0].dtype
    total = None
    for t in tensors:
        term = F.cast(F.sum(F.square(t)), dtype)
        total = term if total is None else total + term
    return F.sqrt(total)


def clip_by_global_norm(grads, max_norm: float, eps: float = 1e-6):
    """``(grads * min(1, max_norm / (norm + eps)), norm)`` with ``norm`` the global norm of
    all gradients, as ``torch.nn.utils.clip_grad_norm_``: the direction is kept, the length
    is at most ``max_norm``."""
    grads = list(grads)
    norm = global_norm(grads)
    scale = F.minimum(max_norm / (norm + eps), 1.0)
    return [g * F.cast(scale, g.dtype) for g in grads], norm


# ---------------------------------------------------------------------------------------
# The update graph


@dataclass
class UpdateGraph:
    """What :meth:`Optimizer.build` made: the hyper-parameter inputs, the state inputs and
    the new values (all graph nodes), keyed by name."""

    lr: Tensor
    step: Tensor
    slots: dict[str, Tensor] = field(default_factory=dict)
    new_params: dict[str, Tensor] = field(default_factory=dict)
    new_slots: dict[str, Tensor] = field(default_factory=dict)
    grad_norm: Tensor | None = None


class Optimizer:
    """Base of the optimizers.  ``lr`` is a float or a schedule (a function of the step
    number, 0 at the first step, see :func:`cosine`); ``clip_norm`` clips the gradients by
    their global norm before the update.  Subclasses declare ``slots`` and implement
    :meth:`update` for one parameter."""

    slots: tuple[str, ...] = ()

    def __init__(self, lr, weight_decay: float = 0.0, clip_norm: float | None = None):
        if isinstance(lr, (np.generic, np.ndarray)) and np.ndim(lr) == 0 and \
                np.asarray(lr).dtype.kind in "iuf":  # np.float32(0.01), np.array(0.01)
            lr = float(lr)
        if not callable(lr) and not (isinstance(lr, (int, float)) and lr >= 0):
            raise GraphError(located(f"lr must be a non-negative number or a schedule, got "
                                     f"{lr!r}"))
        if clip_norm is not None and not clip_norm > 0:
            raise GraphError(located(f"clip_norm must be positive, got {clip_norm!r}"))
        self.lr, self.weight_decay, self.clip_norm = lr, float(weight_decay), clip_norm

    def lr_at(self, step: int) -> float:
        """The learning rate fed at step ``step`` (0-based)."""
        return float(self.lr(step) if callable(self.lr) else self.lr)

    @staticmethod
    def slot_name(slot: str, param_name: str) -> str:
        return f"opt_{slot}_{param_name}"

    def initial_slot(self, slot: str, p: Tensor) -> np.ndarray:
        return np.zeros(p.shape, p.dtype)

    def initial_state(self, params) -> dict[str, np.ndarray]:
        """``{slot input name: initial array}`` for ``params``."""
        return {self.slot_name(s, p.op.label): self.initial_slot(s, p)
                for p in _params(params) for s in self.slots}

    def update(self, p: Tensor, g: Tensor, slots: dict, lr: Tensor, t: Tensor):
        """``(new_p, {slot: new value})`` for one parameter; graph nodes only."""
        raise NotImplementedError

    def build(self, params, grads) -> UpdateGraph:
        """The update of ``params`` (tensors or ``{name: tensor}``) given ``grads``."""
        params = _params(params)
        grads = list(grads)
        if len(grads) != len(params):
            raise GraphError(located(f"{len(params)} params but {len(grads)} gradients"))
        dtype = params[0].dtype
        lr, t = input(LR_INPUT, (), dtype), input(STEP_INPUT, (), dtype)
        out = UpdateGraph(lr, t)
        if self.clip_norm is not None:
            grads, out.grad_norm = clip_by_global_norm(grads, self.clip_norm)
        for p, g in zip(params, grads):
            name = p.op.label
            slots = {s: input(self.slot_name(s, name), p.shape, p.dtype) for s in self.slots}
            new_p, new_slots = self.update(p, F.cast(g, p.dtype), slots, F.cast(lr, p.dtype),
                                           F.cast(t, p.dtype))
            out.new_params[name] = F.cast(new_p, p.dtype)
            for s, value in new_slots.items():
                out.slots[self.slot_name(s, name)] = slots[s]
                out.new_slots[self.slot_name(s, name)] = F.cast(value, p.dtype)
        return out

    def _decayed(self, p, g):
        """L2 weight decay as PyTorch adds it: g + weight_decay * p."""
        return g + self.weight_decay * p if self.weight_decay else g

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items()
                           if v not in (None, 0.0, False) or k == "lr")
        return f"{type(self).__name__}({fields})"


def _params(params) -> list[Tensor]:
    params = list(params.values()) if isinstance(params, dict) else \
        [params] if isinstance(params, Tensor) else list(params)
    if not params:
        raise GraphError(located("the optimizer got no parameters"))
    for p in params:
        if not isinstance(p, Tensor) or not getattr(p.op, "is_param", False):
            raise GraphError(located(f"optimizers update params (gc.param), got {p!r}"))
        if not dtypes.is_float(p.dtype):
            raise GraphError(located(f"param {p.name!r} is {p.dtype}; params must be float"))
    return params


# ---------------------------------------------------------------------------------------
# The optimizers


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum (heavy ball or Nesterov),
    dampening and L2 weight decay, as ``torch.optim.SGD``:
    g += wd p;  b = mu b + (1 - dampening) g (b = g at the first step);
    g = g + mu b (Nesterov) or b;  p -= lr g."""

    def __init__(self, lr=0.01, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0, clip_norm=None):
        super().__init__(lr, weight_decay, clip_norm)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise GraphError(located("Nesterov momentum needs momentum > 0 and dampening 0"))
        self.momentum, self.dampening, self.nesterov = momentum, dampening, nesterov
        self.slots = ("momentum",) if momentum else ()

    def update(self, p, g, slots, lr, t):
        g = self._decayed(p, g)
        if not self.momentum:
            return p - lr * g, {}
        mu, buf = self.momentum, slots["momentum"]
        buf = mu * buf + (1.0 - self.dampening) * g
        if self.dampening:  # PyTorch starts the buffer at g itself, undamped
            buf = F.where(t < 1.5, g, buf)
        step = g + mu * buf if self.nesterov else buf
        return p - lr * step, {"momentum": buf}


class AdaGrad(Optimizer):
    """AdaGrad, as ``torch.optim.Adagrad``: s += g^2; p -= lr_t g / (sqrt(s) + eps), with
    lr_t = lr / (1 + (t - 1) lr_decay)."""

    slots = ("sum",)

    def __init__(self, lr=0.01, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10, clip_norm=None):
        super().__init__(lr, weight_decay, clip_norm)
        self.lr_decay, self.initial_accumulator_value, self.eps = \
            lr_decay, initial_accumulator_value, eps

    def initial_slot(self, slot, p):
        return np.full(p.shape, self.initial_accumulator_value, p.dtype)

    def update(self, p, g, slots, lr, t):
        g = self._decayed(p, g)
        if self.lr_decay:
            lr = lr / (1.0 + (t - 1.0) * self.lr_decay)
        total = slots["sum"] + F.square(g)
        return p - lr * g / (F.sqrt(total) + self.eps), {"sum": total}


class RMSprop(Optimizer):
    """RMSprop, as ``torch.optim.RMSprop``: v = alpha v + (1 - alpha) g^2;
    p -= lr g / (sqrt(v) + eps) (eps outside the root, as PyTorch).  ``centered``
    subtracts the squared running mean of g; ``momentum`` accumulates the scaled step."""

    def __init__(self, lr=0.01, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
                 clip_norm=None):
        super().__init__(lr, weight_decay, clip_norm)
        self.alpha, self.eps, self.momentum, self.centered = alpha, eps, momentum, centered
        self.slots = ("square_avg",) + (("grad_avg",) if centered else ()) + \
            (("momentum",) if momentum else ())

    def update(self, p, g, slots, lr, t):
        g = self._decayed(p, g)
        a = self.alpha
        sq = a * slots["square_avg"] + (1.0 - a) * F.square(g)
        new = {"square_avg": sq}
        if self.centered:
            mean = a * slots["grad_avg"] + (1.0 - a) * g
            new["grad_avg"] = mean
            sq = sq - F.square(mean)
        step = g / (F.sqrt(sq) + self.eps)
        if self.momentum:
            step = self.momentum * slots["momentum"] + step
            new["momentum"] = step
        return p - lr * step, new


class Adam(Optimizer):
    """Adam, as ``torch.optim.Adam``: m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).  ``weight_decay`` is L2
    added to the gradient (use :class:`AdamW` for decoupled decay); ``amsgrad`` keeps the
    running maximum of v."""

    decoupled = False

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, clip_norm=None):
        super().__init__(lr, weight_decay, clip_norm)
        self.betas, self.eps, self.amsgrad = tuple(betas), eps, amsgrad
        self.slots = ("m", "v") + (("v_max",) if amsgrad else ())

    def update(self, p, g, slots, lr, t):
        b1, b2 = self.betas
        if self.decoupled:
            p = p * (1.0 - lr * self.weight_decay) if self.weight_decay else p
        else:
            g = self._decayed(p, g)
        m = b1 * slots["m"] + (1.0 - b1) * g
        v = b2 * slots["v"] + (1.0 - b2) * F.square(g)
        new = {"m": m, "v": v}
        if self.amsgrad:
            v = new["v_max"] = F.maximum(slots["v_max"], v)
        correction1 = 1.0 - F.power(b1, t)
        correction2 = F.sqrt(1.0 - F.power(b2, t))
        return p - (lr / correction1) * m / (F.sqrt(v) / correction2 + self.eps), new


class AdamW(Adam):
    """Adam with decoupled weight decay, as ``torch.optim.AdamW``: p *= 1 - lr wd before
    the Adam step (default wd 0.01)."""

    decoupled = True

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, clip_norm=None):
        super().__init__(lr, betas, eps, weight_decay, amsgrad, clip_norm)


# ---------------------------------------------------------------------------------------
# Learning-rate schedules: plain functions of the step number (0 at the first step)


def _value(lr, step: int) -> float:
    return float(lr(step) if callable(lr) else lr)


@dataclass(frozen=True)
class Schedule:
    """Base of the schedules; ``schedule(step)`` is the learning rate at that step."""

    def __call__(self, step: int) -> float:
        raise NotImplementedError


@dataclass(frozen=True)
class Constant(Schedule):
    lr: float

    def __call__(self, step):
        return float(self.lr)


@dataclass(frozen=True)
class StepDecay(Schedule):
    """lr * gamma ** (step // step_size) (``torch.optim.lr_scheduler.StepLR``)."""

    lr: float
    step_size: int
    gamma: float = 0.1

    def __call__(self, step):
        return self.lr * self.gamma ** (step // self.step_size)


@dataclass(frozen=True)
class Exponential(Schedule):
    """lr * gamma ** step (``ExponentialLR``)."""

    lr: float
    gamma: float

    def __call__(self, step):
        return self.lr * self.gamma ** step


@dataclass(frozen=True)
class Cosine(Schedule):
    """min_lr + (lr - min_lr) (1 + cos(pi step / total_steps)) / 2, then min_lr
    (``CosineAnnealingLR`` over its first half period)."""

    lr: float
    total_steps: int
    min_lr: float = 0.0

    def __call__(self, step):
        s = min(step, self.total_steps)
        return self.min_lr + (self.lr - self.min_lr) * \
            (1 + math.cos(math.pi * s / self.total_steps)) / 2


@dataclass(frozen=True)
class Warmup(Schedule):
    """``base`` (a number or a schedule) times a factor rising linearly from
    ``start_factor`` to 1 over ``steps`` steps (``LinearLR``), then ``base`` alone."""

    base: object
    steps: int
    start_factor: float = 0.0

    def __call__(self, step):
        frac = min(step, self.steps) / self.steps
        return _value(self.base, step) * (self.start_factor + (1 - self.start_factor) * frac)


def constant(lr: float) -> Constant:
    return Constant(lr)


def _steps(schedule: str, what: str, n) -> int:
    """``n`` as a count of steps of at least 1, or a GraphError at the user's line."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise GraphError(located(f"{schedule}: {what} must be an int of at least 1, got "
                                 f"{n!r}"))
    return int(n)


def step_decay(lr: float, step_size: int, gamma: float = 0.1) -> StepDecay:
    return StepDecay(lr, _steps("step_decay", "step_size", step_size), gamma)


def exponential(lr: float, gamma: float) -> Exponential:
    return Exponential(lr, gamma)


def cosine(lr: float, total_steps: int, min_lr: float = 0.0) -> Cosine:
    return Cosine(lr, _steps("cosine", "total_steps", total_steps), min_lr)


def warmup(base, steps: int, start_factor: float = 0.0) -> Warmup:
    return Warmup(base, _steps("warmup", "steps", steps), start_factor)


__all__ = [
    "AdaGrad", "Adam", "AdamW", "Constant", "Cosine", "Exponential", "LR_INPUT",
    "Optimizer", "RMSprop", "SGD", "STEP_INPUT", "Schedule", "StepDecay", "UpdateGraph",
    "Warmup", "clip_by_global_norm", "constant", "cosine", "exponential", "global_norm",
    "step_decay", "warmup",
]
