"""Losses and penalties, and the label helpers they share (``one_hot``, the range check of
integer labels at feed time).  Each is a composition of primitives, so autodiff needs no rule
for them; ``gc.mse``, ``gc.softmax_cross_entropy`` ... are these functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import sympy as sp

from . import dtypes
from . import elementwise_ops as ew
from .dynamic import dynamic
from .errors import DTypeError, FeedError, GraphError, ShapeError
from .functions import (
    abs,
    cast,
    equal,
    is_int,
    log_softmax,
    mean,
    not_equal,
    relu,
    reshape,
    softplus,
    square,
    sum,
    where,
)
from .inputs import Constant, Input, as_tensor, constant, lift_all
from .ir import Tensor, iter_nodes, located
from .shape_ops import BroadcastTo, Cast, Concat, Index, Pad, Reduce, Reshape, Roll, Take, Transpose
from .structured_ops import ArgReduce, BoolReduce


def _pair(name, pred, target):
    pred, target = lift_all([pred, target])
    if pred.shape != target.shape:
        raise ShapeError(located(f"{name}: prediction {pred.shape} and target {target.shape} "
                                 "must have the same shape"))
    return pred, target


REDUCTIONS = ("mean", "sum", "none")


def _reduction(name, reduction) -> str:
    if reduction not in REDUCTIONS:
        raise GraphError(located(f"{name}: reduction must be 'mean', 'sum' or 'none', got "
                                 f"{reduction!r}"))
    return reduction


def _reduce_loss(per_element, reduction) -> Tensor:
    return per_element if reduction == "none" else \
        mean(per_element) if reduction == "mean" else sum(per_element)


@dynamic
def mse(pred, target, reduction="mean") -> Tensor:
    """Squared error, averaged over all elements (``reduction="mean"``), summed ("sum") or
    per element ("none").  The mean is sum((scale) * d^2) with scale = 1/count: the
    derivative (2 scale) d then stays finite wherever the gradient is (as PyTorch's
    2 (x - t) / count; g · 2d of mean(square(d)) overflows near the float maximum)."""
    pred, target = _pair("mse", pred, target)
    reduction = _reduction("mse", reduction)
    d = pred - target
    if not dtypes.is_float(d.dtype):
        d = cast(d, dtypes.DEFAULT_FLOAT)
    if reduction == "none":
        return _scaled_square(d, scale=1.0)
    if reduction == "sum":
        return sum(_scaled_square(d, scale=1.0))
    if d.size == 0:  # the mean of no elements is NaN, as PyTorch's
        return sum(_scaled_square(d, scale=1.0)) * math.nan
    return sum(_scaled_square(d, scale=1.0 / d.size))


_scaled_square = ew._predefined("scaled_square", lambda d, scale=1.0: scale * d**2)


# softplus's threshold above every finite float32, where log1p(exp(-x)) is 0 anyway: exact
_NO_THRESHOLD = 3e38


@dynamic
def binary_cross_entropy_with_logits(logits, targets, reduction="mean") -> Tensor:
    """softplus(x) - x * t, the log-loss of sigmoid(x) against t, stable for large |x|;
    averaged over all elements (``reduction="mean"``), summed ("sum") or not ("none")."""
    logits, targets = _pair("binary_cross_entropy_with_logits", logits, targets)
    reduction = _reduction("binary_cross_entropy_with_logits", reduction)
    return _reduce_loss(softplus(logits, threshold=_NO_THRESHOLD) - logits * targets,
                        reduction)


@dynamic
def huber(pred, target, delta=1.0, reduction="mean") -> Tensor:
    """Huber loss: 0.5 d^2 where |d| <= delta, delta (|d| - delta / 2) elsewhere; averaged
    over all elements (``reduction="mean"``), summed ("sum") or not ("none")."""
    pred, target = _pair("huber", pred, target)
    reduction = _reduction("huber", reduction)
    if isinstance(delta, bool) or not isinstance(delta, (int, float, np.integer, np.floating)) \
            or not delta > 0:  # as PyTorch: a delta <= 0 makes a negative "loss"
        raise GraphError(located(f"huber: delta must be a positive number, got {delta!r}"))
    return _reduce_loss(_huber_elementwise(pred - target, delta=delta), reduction)


_huber_elementwise = ew._predefined(
    "huber_elementwise", lambda d, delta=1.0: sp.Piecewise(
        (d**2 / 2, sp.Abs(d) <= delta), (delta * (sp.Abs(d) - delta / 2), True)))


def _labels_hit(name, scores, labels, ignore_index=None) -> Tensor:
    """(N, C) bool: True at each sample's label (checked: in range or ``ignore_index``).
    Losses select with it (``where``), not multiply by a one-hot: a class masked with -inf
    would make 0 * -inf = nan."""
    scores, labels = as_tensor(scores), as_tensor(labels)
    if scores.ndim != 2:
        raise ShapeError(located(f"{name}: scores must be (N, C), got {scores.shape}"))
    if labels.shape != scores.shape[:1]:
        raise ShapeError(located(f"{name}: labels {labels.shape} must be ({scores.shape[0]},) "
                                 f"for scores {scores.shape}"))
    hit, check = _hits(name, labels, scores.shape[1], ignore_index)
    if check:
        hit.tag(check)
    return hit


def _hits(name, labels, classes, ignore_index=None, what="a loss"):
    """labels[..., None] == arange(classes) (bool), after checking that integer ``labels``
    are in [0, classes) or ``ignore_index``: constants now; for fed labels, the
    :class:`LabelRange` record to tag on a node (or None).  Labels equal to ``ignore_index``
    hit no class."""
    if labels.dtype not in dtypes.INTS:
        raise DTypeError(located(f"{name}: labels must be int32 or int64, got {labels.dtype}"))
    if isinstance(labels.op, Constant):
        problem = _label_error(labels.op.value.array, classes, ignore_index, what)
        if problem:
            raise GraphError(located(f"{name}: the constant labels hold {problem}"))
    safe = labels if ignore_index is None else \
        where(not_equal(labels, constant(ignore_index, dtype=labels.dtype)), labels,
              constant(-1, dtype=labels.dtype))  # -1: no class
    hit = equal(reshape(safe, labels.shape + (1,)),
                constant(np.arange(classes, dtype=labels.dtype)))
    if getattr(labels.op, "fed", False):  # checked when fed: gc.compile runs check_feeds
        return hit, LabelRange(labels.op.label, classes, ignore_index, what)
    return hit, LabelsComputed.of(labels, classes, ignore_index, what)


def _label_error(labels: np.ndarray, classes: int, ignore_index=None,
                 what="a loss") -> str | None:
    """The complaint about integer ``labels`` outside [0, classes), or None."""
    bad = ((labels < 0) | (labels >= classes)) & (labels != ignore_index if ignore_index
                                                  is not None else True)
    if not bad.any():
        return None
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    where_from = ("labels of softmax_cross_entropy and hinge" if what == "a loss" else
                  "labels of one_hot")
    return (f"label {labels[index]} at index {index}, out of range for {what} over "
            f"{classes} classes ({where_from} must be in [0, {classes}))")


@dataclass(frozen=True)
class LabelRange:
    """Tagged on the one-hot node of a loss whose labels are input ``label``: the compiled
    function checks the fed labels at call time (PyTorch raises for them too).  The node
    is shared by every loss over these labels, so the record names none of them."""

    label: str
    classes: int
    ignore_index: int | None = None
    what: str = "a loss"

    alive = True

    def check_feeds(self, arrays) -> None:
        labels = arrays.get(self.label)
        if isinstance(labels, np.ndarray):  # device arrays are not copied to check them
            problem = _label_error(labels, self.classes, self.ignore_index, self.what)
            if problem:
                raise FeedError(f"feed {self.label!r} holds {problem}")


# What labels may be computed with and still be checked at call time: elementwise, shape
# and reduction ops (cast(y), y[:, 0], argmax(one_hot)); a matmul, convolution or loop
# would be a model run twice, and a dropout mask is random
CHEAP = (Input, Constant, ew.Elementwise, Cast, Reshape, Transpose, BroadcastTo, Concat,
         Index, Take, Reduce, Pad, Roll, ArgReduce, BoolReduce)


@dataclass(frozen=True)
class LabelsComputed:
    """Tagged like :class:`LabelRange` where the labels are computed from feeds (``y[:, 0]``,
    ``cast(y_float, "int64")``) by :data:`CHEAP` nodes of fixed shape (no model): the
    compiled function computes them again from the feeds at call time and checks them.
    ``steps``: the nodes, ``(op, positions of its operands)``, the last the labels (ops
    pickle; graph nodes do not, and records travel with gc.distributed)."""

    steps: tuple
    classes: int
    ignore_index: int | None = None
    what: str = "a loss"

    alive = True

    @classmethod
    def of(cls, labels: Tensor, *args) -> LabelsComputed | None:
        """The record for ``labels``, or None where they are not computed that way."""
        nodes = iter_nodes([labels])
        if not any(isinstance(t.op, Input) for t in nodes) or any(
                not isinstance(t.op, CHEAP) or not all(isinstance(d, int) for d in t.shape)
                for t in nodes):
            return None
        where = {id(t): k for k, t in enumerate(nodes)}
        return cls(tuple((t.op, tuple(where[id(i)] for i in t.inputs)) for t in nodes), *args)

    def check_feeds(self, arrays) -> None:
        values = []
        for op, operands in self.steps:
            if isinstance(op, Input):
                if not isinstance(arrays.get(op.label), np.ndarray):
                    return  # device arrays are not copied to check them
                values.append(arrays[op.label])
            else:
                values.append(np.asarray(op.evaluate(*(values[k] for k in operands))))
        problem = _label_error(values[-1], self.classes, self.ignore_index, self.what)
        if problem:
            fed = [op.label for op, _ in self.steps if isinstance(op, Input)]
            raise FeedError(f"the labels computed from feed(s) {fed} hold {problem}")


@dynamic
def softmax_cross_entropy(logits, labels, reduction="mean", ignore_index=None) -> Tensor:
    """-log softmax(logits)[label] per sample, logits (N, C), integer labels, as
    ``torch.nn.functional.cross_entropy``: averaged over the batch (``reduction="mean"``),
    summed ("sum") or per sample ("none").  Samples whose label is ``ignore_index`` count 0
    and are left out of the mean (all of them left out: NaN, as PyTorch)."""
    logits, labels = as_tensor(logits), as_tensor(labels)
    reduction = _reduction("softmax_cross_entropy", reduction)
    if ignore_index is not None and not is_int(ignore_index):
        raise GraphError(located(f"softmax_cross_entropy: ignore_index must be an int, got "
                                 f"{ignore_index!r}"))
    hit = _labels_hit("softmax_cross_entropy", logits, labels, ignore_index)
    zero = constant(0, dtype=dtypes.to_float(logits.dtype))
    nll = -sum(where(hit, log_softmax(logits, axis=1), zero), axis=1)
    if ignore_index is None or reduction != "mean":
        return _reduce_loss(nll, reduction)
    kept = cast(not_equal(labels, constant(ignore_index, dtype=labels.dtype)), nll.dtype)
    return sum(nll) / sum(kept)


@dynamic
def hinge(scores, labels, reduction="mean") -> Tensor:
    """Multiclass SVM loss per sample, sum_{j != y} max(0, s_j - s_y + 1), averaged over the
    batch (``reduction="mean"``), summed ("sum") or not ("none")."""
    scores = as_tensor(scores)
    reduction = _reduction("hinge", reduction)
    hit = _labels_hit("hinge", scores, labels)
    zero = constant(0, dtype=scores.dtype)
    correct = sum(where(hit, scores, zero), axis=1, keepdims=True)
    return _reduce_loss(sum(where(hit, zero, relu(scores - correct + 1.0)), axis=1), reduction)


@dynamic
def one_hot(labels, num_classes) -> Tensor:
    """(..., num_classes) int64: 1 at each label, as ``torch.nn.functional.one_hot``
    (labels outside [0, num_classes) raise: constants when built, fed ones when fed)."""
    labels = as_tensor(labels)
    if not is_int(num_classes) or num_classes < 1:
        raise GraphError(located(f"one_hot: num_classes must be a positive int, got "
                                 f"{num_classes!r}"))
    hit, check = _hits("one_hot", labels, int(num_classes), what="one_hot")
    out = cast(hit, "int64")
    if check:
        out.tag(check)
    return out


def l1(x) -> Tensor:
    """Sum of absolute values."""
    return sum(abs(x))


def l2(x) -> Tensor:
    """Half the sum of squares: 0.5 * sum(x^2)."""
    return 0.5 * sum(square(x))


