"""How an elementwise edge's local derivative meets the upstream gradient ``g``.

downstream = local × upstream, computed by one rule for autodiff's edges
(``passes/autodiff.py``) and a fused group's derivative (``graphc/fused_ops.py``) alike:

- a piecewise local with a 0 branch (relu's, clip's): ``ElementwiseDef.masked_product``,
  0 on that branch whatever ``g`` holds (inf, NaN), as PyTorch masks these gradients;
- a quotient n/d (a factor with a negative power: log' = 1/x, div's -y/b, rsqrt's
  -1/(2 x^(3/2))): ``(g n) / d``, one op of the local's arguments and ``g``
  (:func:`quotient_product`).  ``g * (1/x)`` overflows at a subnormal x (1/1e-39 is inf in
  float32) where ``g / x`` is finite (0.25 / 1e-39 = 2.5e38, PyTorch's ``grad / self``);
- otherwise ``g * local``.

Diagrams are unchanged: an edge's label still reads local × upstream, with the local
derivative's formula and its node's values.

>>> import graphc as gc
>>> str(quotient_product(gc.log.local_def(0)).expr)
'g/x'
"""

from __future__ import annotations

import functools

import sympy as sp

from .elementwise_ops import ElementwiseDef


def product_op(local: ElementwiseDef) -> tuple[ElementwiseDef, bool] | None:
    """``(op, reads_local)``: the op computing ``local × g``, applied to ``(local node,
    *local's operands, g)`` when ``reads_local`` (the masked product), else to
    ``(*local's operands, g)``; None where it is the plain product ``g * local``."""
    masked = local.masked_product()
    if masked is not None:
        return masked, True
    quotient = quotient_product(local)
    return (quotient, False) if quotient is not None else None


@functools.cache  # one op per local derivative, so equal products are one interned node
def quotient_product(local: ElementwiseDef) -> ElementwiseDef | None:
    """For a local derivative n/d that is evaluated as written (no stable form of its own),
    ``(g * n) / d`` as an op of ``(*local.args, g)``; None for any other derivative.  SymPy
    keeps g * (n/d) as the product g n d^-1, which every printer writes g*n/d: the
    numerator is multiplied first, then divided once."""
    expr = local.expr
    if local.stable is not expr or not (expr.is_Mul or expr.is_Pow) or not any(
            f.is_Pow and f.exp.is_negative for f in sp.Mul.make_args(expr)):
        return None
    taken = {a.name for a in local.args} | set(local.params)
    g = sp.Symbol(next("g" + "_" * k for k in range(5) if "g" + "_" * k not in taken),
                  real=True)
    return ElementwiseDef("quotient_mul", (*local.args, g), local.params, g * expr,
                          bool_args=local.bool_args)
