"""Recurrent layers of ``gc.nn``: RNN, LSTM and GRU, their cell scanned over time as one
``gc.scan`` node (default) or unrolled, with truncated BPTT (docs/nn.md)."""

from __future__ import annotations

import contextlib

import numpy as np

from . import functions as F
from .dynamic import dynamic
from .errors import GraphError, ShapeError
from .inputs import constant
from .ir import Tensor, located, scope
from .nn_module import GateInit, Module, _check_features, get_activation
from .scan import scan, stop_gradient


class _Recurrent(Module):
    """Shared recurrence: one input projection for all steps, then the cell over time, as
    one ``gc.scan`` node (default) or unrolled into one copy of the cell per step
    (``unroll=True``, the reference the scan is tested against).

    Weights follow ``x @ W``: W_x (input, gates * hidden) and W_h (hidden, gates * hidden),
    gate blocks in PyTorch's order; W_x is Xavier per gate, W_h orthogonal per gate.  A
    bidirectional layer has a second set for the reverse direction, named with torch's
    suffix ``_reverse`` (``W_x_reverse``, ...).
    """

    gates, state_count, biases = 1, 1, ("b",)

    def __init__(self, input_size: int, hidden_size: int, truncate: int | None = None,
                 returns: str = "both", bidirectional: bool = False, unroll: bool = False,
                 name=None, dtype="float32"):
        super().__init__(name, dtype)
        if truncate is not None and (not isinstance(truncate, int) or truncate < 1):
            raise GraphError(located(f"truncate must be a positive int, got {truncate!r}"))
        if returns not in ("both", "sequence", "last"):
            raise GraphError(located(f"returns must be 'both', 'sequence' or 'last', got "
                                     f"{returns!r}"))
        self.input_size, self.hidden_size, self.truncate = input_size, hidden_size, truncate
        self.returns, self.bidirectional, self.unroll = returns, bool(bidirectional), unroll
        width = self.gates * hidden_size
        for s in self._suffixes():
            self.add_param(f"W_x{s}", (input_size, width), GateInit(self.gates, "xavier_normal"))
            self.add_param(f"W_h{s}", (hidden_size, width), GateInit(self.gates, "orthogonal"))
            for b in self.biases:
                self.add_param(f"{b}{s}", (width,), "zeros")

    def _suffixes(self):
        return ("", "_reverse") if self.bidirectional else ("",)

    def forward(self, x, state=None, training=False):
        """Run over the time axis of ``x`` (N, T, F) or a list of T (N, F) tensors.

        ``state`` is the initial state (zeros when None): h (N, H), or (h, c) for the LSTM;
        bidirectional layers take and give torch's (2, N, H), forward direction first.
        Returns ``(outputs, state)``: outputs (N, T, H) (N, T, 2H when bidirectional, the
        two directions concatenated; a list for list input) and the last state; with
        ``returns="sequence"`` only the outputs, with ``returns="last"`` only the last h
        ((N, 2H) when bidirectional), so the layer fits in a :class:`Sequential`.  In
        training mode with ``truncate=k``, gradients are cut every k steps (truncated
        BPTT)."""
        as_list = isinstance(x, (list, tuple))
        xs = self._time_major(x, as_list)
        states = self._initial(state, xs.shape[1])
        truncate = self.truncate if training else None
        runs = []
        for d, suffix in enumerate(self._suffixes()):
            with scope("reverse") if d else contextlib.nullcontext():
                runs.append(self._run(xs, states[d], lambda k, s=suffix: self[k + s],
                                      reverse=d == 1, truncate=truncate))
        outputs = [_sequence(ys, as_list) for ys, _ in runs]
        if len(runs) == 1:
            outputs, last = outputs[0], runs[0][1]
        elif as_list:
            outputs = [F.concat(pair, axis=1) for pair in zip(*outputs)]
        else:
            outputs = F.concat(outputs, axis=2)
        if len(runs) == 2:
            last = tuple(F.stack(pair, axis=0) for pair in zip(runs[0][1], runs[1][1]))
        if self.returns == "sequence":
            return outputs
        if self.returns == "last":
            return last[0] if len(runs) == 1 else F.concat([runs[0][1][0], runs[1][1][0]], 1)
        return outputs, (last if len(last) > 1 else last[0])

    def _time_major(self, x, as_list) -> Tensor:
        """The input as one (T, N, F) tensor."""
        if as_list:
            return F.stack([_check_step(self, xt) for xt in x], axis=0)
        if x.ndim != 3:
            raise ShapeError(located(f"{self.name}: expects (N, T, features) or a list "
                                     f"of (N, features) tensors, got {x.shape}"))
        _check_features(self, x, 2, self.input_size)
        return F.transpose(x, (1, 0, 2))

    def _initial(self, state, n) -> list:
        """The initial state of each direction: a tuple of (N, H) tensors, or None."""
        directions = len(self._suffixes())
        if state is None:
            return [None] * directions
        state = (state,) if isinstance(state, Tensor) else tuple(state)
        want = (2, n, self.hidden_size) if self.bidirectional else (n, self.hidden_size)
        if len(state) != self.state_count:
            raise GraphError(located(f"{self.name}: the state is {self.state_count} "
                                     f"tensor(s), got {len(state)}"))
        for s in state:
            if s.shape != want:
                raise ShapeError(located(f"{self.name}: initial state must be {want}, got "
                                         f"{s.shape}"))
        if not self.bidirectional:
            return [state]
        return [tuple(s[d] for s in state) for d in range(2)]

    def _run(self, xs, state, w, reverse, truncate):
        """One direction: ``(outputs, last state)``, outputs a (T, N, H) tensor (scan) or
        a list of T (N, H) tensors (unrolled), in time order either way."""
        proj = xs @ w("W_x") + w(self.biases[0])  # every step's input projection at once
        if self.unroll:
            return self._unrolled(proj, state, w, reverse, truncate)
        if state is None:
            state = (_zero_state(xs, self.hidden_size, self.dtype),) * self.state_count

        def step(carry, xp):
            carry = self.cell(xp, carry, w)
            return carry, carry[0]

        last, ys = scan(step, tuple(state), proj, reverse=reverse, truncate=truncate)
        return ys, tuple(last)

    def _unrolled(self, proj, state, w, reverse, truncate):
        if not isinstance(proj.shape[0], int):
            raise ShapeError(located(f"{self.name}: unroll=True needs a fixed sequence "
                                     f"length, and this input's is dynamic "
                                     f"({proj.shape[0]!r}); use the scan form (unroll=False)"))
        order = range(proj.shape[0])[::-1] if reverse else range(proj.shape[0])
        state = (None,) * self.state_count if state is None else state
        outputs = {}
        for k, t in enumerate(order):
            if truncate and k and k % truncate == 0:  # as the scan's truncate=k
                state = tuple(None if s is None else stop_gradient(s) for s in state)
            state = self.cell(proj[t], state, w)
            outputs[t] = state[0]
        return [outputs[t] for t in range(proj.shape[0])], state

    def _gate(self, z, k):
        h = self.hidden_size
        return z[..., k * h:(k + 1) * h]

    def extra_repr(self):
        return f"{self.input_size} -> {self.hidden_size}" + \
            (", bidirectional" if self.bidirectional else "") + \
            (f", truncate={self.truncate}" if self.truncate else "") + \
            (", unrolled" if self.unroll else "")


@dynamic
def _zero_state(xs, hidden: int, dtype: str) -> Tensor:
    """Zeros (N, hidden) for a (T, N, F) sequence: made at the fed N where N is dynamic."""
    return constant(np.zeros((xs.shape[1], hidden), dtype))


def _sequence(ys, as_list):
    """One direction's outputs as the layer returns them: (N, T, H), or a list of T."""
    if isinstance(ys, list):
        return ys if as_list else F.stack(ys, axis=1)
    return [ys[t] for t in range(ys.shape[0])] if as_list else F.transpose(ys, (1, 0, 2))


def _check_step(module, xt):
    if xt.ndim != 2 or xt.shape[1] != module.input_size:
        raise ShapeError(located(f"{module.name}: each step must be (N, "
                                 f"{module.input_size}), got {xt.shape}"))
    return xt


def _plus(a, b):
    return a if b is None else a + b


def _hidden(h, w):
    """h @ W_h, or None for the zero initial state of an unrolled layer."""
    return None if h is None else h @ w("W_h")


class RNN(_Recurrent):
    """Elman RNN: h_t = tanh(x_t W_x + h_{t-1} W_h + b), as ``torch.nn.RNN`` (one layer,
    ``batch_first=True``) with W_x = W_ih.T, W_h = W_hh.T, b = b_ih + b_hh.
    ``nonlinearity`` may be ``"relu"``.

    >>> import graphc as gc, graphc.nn
    >>> rnn = gc.nn.RNN(3, 4, bidirectional=True, name="rnn")
    >>> ys, h = rnn(gc.input("x", (2, 50, 3)))
    >>> ys.shape, h.shape, [t.op.name for t in gc.Graph(ys).nodes].count("scan")
    ((2, 50, 8), (2, 2, 4), 2)
    """

    def __init__(self, input_size, hidden_size, nonlinearity="tanh", truncate=None,
                 returns="both", bidirectional=False, unroll=False, name=None,
                 dtype="float32"):
        self.nonlinearity = get_activation(nonlinearity)
        super().__init__(input_size, hidden_size, truncate, returns, bidirectional, unroll,
                         name, dtype)

    def cell(self, xp, state, w):
        return (self.nonlinearity(_plus(xp, _hidden(state[0], w))).named("h"),)


class LSTM(_Recurrent):
    """Long short-term memory, as ``torch.nn.LSTM`` (one layer, ``batch_first=True``):
    gates i, f, g, o; c_t = f c_{t-1} + i g; h_t = o tanh(c_t).  W_x = W_ih.T,
    W_h = W_hh.T, b = b_ih + b_hh.  The state is the pair (h, c)."""

    gates, state_count = 4, 2

    def cell(self, xp, state, w):
        h, c = state
        z = _plus(xp, _hidden(h, w))
        i, f, g, o = (self._gate(z, k) for k in range(4))
        i, f, o = (F.sigmoid(a).named(n) for a, n in ((i, "i"), (f, "f"), (o, "o")))
        g = F.tanh(g).named("g")  # the gates named as torch's documentation names them
        c = (i * g if c is None else f * c + i * g).named("c")
        return (o * F.tanh(c)).named("h"), c


class GRU(_Recurrent):
    """Gated recurrent unit, as ``torch.nn.GRU`` (one layer, ``batch_first=True``):
    r = sigma(x W_xr + b_xr + h W_hr + b_hr), z likewise,
    n = tanh(x W_xn + b_xn + r (h W_hn + b_hn)), h_t = (1 - z) n + z h_{t-1}.
    W_x = W_ih.T, W_h = W_hh.T, b_x = b_ih, b_h = b_hh."""

    gates, biases = 3, ("b_x", "b_h")

    def cell(self, xp, state, w):
        (h,) = state
        hh = _plus(w("b_h"), _hidden(h, w))  # broadcasts to (N, 3H) when h is zero
        r = F.sigmoid(self._gate(xp, 0) + self._gate(hh, 0)).named("r")
        z = F.sigmoid(self._gate(xp, 1) + self._gate(hh, 1)).named("z")
        n = F.tanh(self._gate(xp, 2) + r * self._gate(hh, 2)).named("n")
        return ((1.0 - z) * n if h is None else (1.0 - z) * n + z * h).named("h"),
