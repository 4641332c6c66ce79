"""The recurrent ONNX ops ``gc.from_onnx`` imports: LSTM, GRU and RNN, as the ONNX operator
specification defines them (and ``torch.onnx.export`` writes them for ``nn.LSTM``,
``nn.GRU`` and ``nn.RNN``).  Each direction is one ``gc.scan`` over time, never unrolled,
so ``gc.grad`` through it is backpropagation through time; the input projection of every
step is one matrix product before the loop.  Built from graphc's public functions only,
as every op of the table (registered in :mod:`graphc.importers.onnx_op_table`'s
``SUPPORTED`` when :mod:`graphc.importers.onnx_ops` imports this module).

Supported: the three directions, layout 0 and 1, the optional inputs B, initial_h,
initial_c and P (peepholes), sequence_lens (a constant; shorter sequences are masked: their
state stops at their last step, their outputs past it are 0, and the reverse direction
starts at their last step), GRU's ``linear_before_reset`` 0 and 1, and the activations
Sigmoid, Tanh, Relu, Softsign and Softplus.  Refused: ``clip``, LSTM's
``input_forget=1``, ``activation_alpha``/``activation_beta`` and other activations.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from .. import functions as F
from ..inputs import constant
from ..ir import Tensor, scope
from ..scan import scan
from .onnx_op_table import Call, onnx_op

_ACTIVATIONS = {"sigmoid": F.sigmoid, "tanh": F.tanh, "relu": F.relu, "softsign": F.softsign,
                "softplus": F.softplus}
# the activations per direction and their defaults: LSTM f, g, h; GRU f, g; RNN f
_DEFAULTS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


@dataclass
class _Run:
    """What every direction of one recurrent node shares."""

    x: Tensor            # (seq, batch, input): time-major whatever the layout
    hidden: int
    reverse: tuple       # per direction: scanned from the last step
    acts: tuple          # per direction: its activation functions
    mask: Tensor | None  # (seq, batch, 1): 1 up to each sequence's length, or None

    @property
    def bidirectional(self) -> bool:
        return len(self.reverse) == 2


def _setup(c: Call) -> _Run:
    """The node's attributes and X, checked, as a :class:`_Run`."""
    if c.attr("clip") is not None:
        c.unsupported(f"clip={c.attr('clip')} (cell clipping)")
    if c.attr("input_forget", 0):
        c.unsupported("input_forget=1 (coupled input and forget gates)")
    if c.attr("activation_alpha") or c.attr("activation_beta"):
        c.unsupported("activation_alpha / activation_beta (activations with parameters)")
    direction = c.attr("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        c.unsupported(f"direction {direction!r}")
    reverse = (False, True) if direction == "bidirectional" else (direction == "reverse",)
    layout = c.attr("layout", 0)
    if layout not in (0, 1):
        c.unsupported(f"layout {layout}")
    x = F.transpose(c.x(0), (1, 0, 2)) if layout else c.x(0)
    hidden = c.x(2).shape[-1]
    if c.attr("hidden_size", hidden) != hidden:
        c.unsupported(f"hidden_size {c.attr('hidden_size')} with R of shape {c.x(2).shape}")
    return _Run(x, hidden, reverse, _activations(c, len(reverse)), _mask(c, x))


def _activations(c: Call, directions: int) -> tuple:
    default = _DEFAULTS[c.op_type]
    names = [n.decode() if isinstance(n, bytes) else n
             for n in c.attr("activations", default * directions)]
    if len(names) != len(default) * directions:
        c.unsupported(f"activations {names} ({len(default)} per direction expected)")
    for name in names:
        if name.lower() not in _ACTIVATIONS:
            c.unsupported(f"activation {name!r} (Sigmoid, Tanh, Relu, Softsign and "
                          "Softplus are)")
    k = len(default)
    return tuple(tuple(_ACTIVATIONS[n.lower()] for n in names[d * k:(d + 1) * k])
                 for d in range(directions))


def _mask(c: Call, x: Tensor) -> Tensor | None:
    """sequence_lens as a (seq, batch, 1) mask of x's dtype; None when every sequence has
    the full length."""
    lens = c.const(4)
    if lens is None:
        return None
    steps, batch = x.shape[:2]
    lens = np.asarray(lens).astype(np.int64).ravel()
    if lens.shape != (batch,):
        c.unsupported(f"sequence_lens of shape {lens.shape} for a batch of {batch}")
    if lens.min() < 1 or lens.max() > steps:
        c.unsupported(f"sequence_lens {lens.tolist()} outside 1..{steps}")
    if (lens == steps).all():
        return None
    mask = np.arange(steps)[:, None] < lens[None, :]
    return constant(mask[..., None].astype(x.dtype))


def _state(c: Call, i: int, run: _Run, d: int) -> Tensor:
    """Direction ``d``'s initial state from input ``i`` (zeros when absent), (batch, H)."""
    s = c.x(i)
    if s is None:
        return constant(np.zeros((run.x.shape[1], run.hidden), run.x.dtype))
    return (F.transpose(s, (1, 0, 2)) if c.attr("layout", 0) else s)[d]


def _weights(c: Call, d: int, gates: int, hidden: int):
    """Direction ``d``'s W (input, gates*H) and R (H, gates*H), transposed for ``x @ W``,
    and its biases Wb, Rb (None without B)."""
    w, r, b = F.transpose(c.x(1)[d]), F.transpose(c.x(2)[d]), c.x(3)
    width = gates * hidden
    if b is None:
        return w, r, None, None
    return w, r, b[d, :width], b[d, width:]


def _gate(z: Tensor, k: int, hidden: int) -> Tensor:
    return z[..., k * hidden:(k + 1) * hidden]


def _plus(a: Tensor, b: Tensor | None) -> Tensor:
    return a if b is None else a + b


def _direction(run: _Run, d: int, proj: Tensor, init: tuple, cell):
    """One direction scanned over time: ``(ys (seq, batch, H), last state)``.  ``cell``
    maps (one step's input projection, the state tuple) to the next state, h first."""
    mask = run.mask

    def step(carry, xt):
        p, m = (xt, None) if mask is None else xt
        new = cell(p, carry)
        if m is None:
            return new, new[0]
        new = tuple(m * a + (1.0 - m) * b for a, b in zip(new, carry))
        return new, m * new[0]

    xs = proj if mask is None else (proj, mask)
    with scope("reverse") if run.bidirectional and d else contextlib.nullcontext():
        last, ys = scan(step, init, xs, reverse=run.reverse[d])
    return ys, last


def _outputs(c: Call, runs: list) -> tuple:
    """Y (seq, directions, batch, H), Y_h (and Y_c) (directions, batch, H) from each
    direction's (ys, last state); batch first with layout 1."""
    y = F.stack([ys for ys, _ in runs], axis=1)
    finals = [F.stack([last[k] for _, last in runs], axis=0) for k in range(len(runs[0][1]))]
    if c.attr("layout", 0):
        return (F.transpose(y, (2, 0, 1, 3)),
                *(F.transpose(f, (1, 0, 2)) for f in finals))
    return (y, *finals)


@onnx_op("LSTM")
def _lstm(c: Call):
    """Gates i, o, f, c; with peepholes P (i, o, f) on the cell state."""
    run = _setup(c)
    h = run.hidden
    runs = []
    for d in range(len(run.reverse)):
        w, r, wb, rb = _weights(c, d, 4, h)
        proj = _plus(_plus(F.matmul(run.x, w), wb), rb)
        p = None if c.x(7) is None else c.x(7)[d]
        f, g, act_h = run.acts[d]

        def cell(z, state, r=r, p=p, f=f, g=g, act_h=act_h):
            h_prev, c_prev = state
            z = z + F.matmul(h_prev, r)
            i, o, fg, cg = (_gate(z, k, h) for k in range(4))
            if p is not None:
                i, fg = i + _gate(p, 0, h) * c_prev, fg + _gate(p, 2, h) * c_prev
            c_new = (f(fg) * c_prev + f(i) * g(cg)).named("c")
            o = o if p is None else o + _gate(p, 1, h) * c_new
            return (f(o) * act_h(c_new)).named("h"), c_new

        runs.append(_direction(run, d, proj, (_state(c, 5, run, d), _state(c, 6, run, d)),
                               cell))
    return _outputs(c, runs)


@onnx_op("GRU")
def _gru(c: Call):
    """Gates z, r, h; ``linear_before_reset`` 1 (as torch exports nn.GRU) applies R_h before
    the reset gate, 0 after it."""
    run = _setup(c)
    h, before = run.hidden, bool(c.attr("linear_before_reset", 0))
    runs = []
    for d in range(len(run.reverse)):
        w, r, wb, rb = _weights(c, d, 3, h)
        if before:
            proj = _plus(F.matmul(run.x, w), wb)
        else:  # every bias is outside the reset gate: all of them added before the loop
            proj, rb = _plus(_plus(F.matmul(run.x, w), wb), rb), None
        f, g = run.acts[d]

        def cell(xp, state, r=r, rb=rb, f=f, g=g):
            (h_prev,) = state
            if before:
                hr = _plus(F.matmul(h_prev, r), rb)
                z = f(_gate(xp, 0, h) + _gate(hr, 0, h))
                rg = f(_gate(xp, 1, h) + _gate(hr, 1, h))
                n = g(_gate(xp, 2, h) + rg * _gate(hr, 2, h))
            else:
                hr = F.matmul(h_prev, r[:, :2 * h])
                z = f(_gate(xp, 0, h) + _gate(hr, 0, h))
                rg = f(_gate(xp, 1, h) + _gate(hr, 1, h))
                n = g(_gate(xp, 2, h) + F.matmul(rg * h_prev, r[:, 2 * h:]))
            return ((1.0 - z) * n + z * h_prev).named("h"),

        runs.append(_direction(run, d, proj, (_state(c, 5, run, d),), cell))
    return _outputs(c, runs)


@onnx_op("RNN")
def _rnn(c: Call):
    """H_t = f(X_t W^T + H_{t-1} R^T + Wb + Rb)."""
    run = _setup(c)
    runs = []
    for d in range(len(run.reverse)):
        w, r, wb, rb = _weights(c, d, 1, run.hidden)
        proj = _plus(_plus(F.matmul(run.x, w), wb), rb)
        (f,) = run.acts[d]

        def cell(xp, state, r=r, f=f):
            return (f(xp + F.matmul(state[0], r)).named("h"),)

        runs.append(_direction(run, d, proj, (_state(c, 5, run, d),), cell))
    return _outputs(c, runs)
