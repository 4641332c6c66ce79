"""The one function table: each SymPy function graphc evaluates, and its name in every backend.

A row gives the function's NumPy/SciPy reference (``numpy``: what the reference interpreter
and the CUDA simulator call), its exact scalar call in Numba CPU code (``numba``), the
vectorizable helper of :mod:`graphc.fastmath` that Numba CPU code uses instead where one
exists (``fast``, suffixed ``_f32``/``_f64``), and its numba.cuda call (``cuda``: ``math.*``,
which numba.cuda maps to libdevice, or ``libdevice.*`` for what its ``math`` lacks, with the
``f`` suffix in float32).  The Numba and CUDA printers (:mod:`graphc.numba_codegen`,
:mod:`graphc.cuda_kernels`) read this table and nothing else, and the NumPy printer of
:mod:`graphc.elementwise_ops` reads it for the functions graphc defines itself (:class:`rint`,
:class:`real_cbrt`, here too), so a new SymPy function is one row here.  ``Pow`` prints
through the rows ``"sqrt"`` and ``"pow"``.

>>> import sympy as sp
>>> FUNCTIONS[sp.atan]
Fn(numpy='numpy.arctan', numba='np.arctan', cuda='math.atan', fast=None)
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np
import sympy as sp
from sympy.codegen.cfunctions import exp2, expm1, log1p, log2, log10


class rint(sp.Function):  # noqa: N801 -- named as the C and NumPy function it prints as
    """Round half to even (``numpy.rint``, ``torch.round``); derivative 0, as PyTorch's."""

    nargs = 1

    @classmethod
    def eval(cls, arg):
        if arg.is_integer:
            return arg
        if arg.is_Number:
            return sp.Integer(int(np.rint(float(arg))))
        return None

    def fdiff(self, argindex=1):
        return sp.S.Zero


class real_cbrt(sp.Function):  # noqa: N801
    """The real cube root (``numpy.cbrt``); derivative 1 / (3 cbrt(x)^2), +inf at 0 (as
    JAX; SymPy's ``cbrt`` is the principal complex root, NaN for x < 0 in NumPy)."""

    nargs = 1

    @classmethod
    def eval(cls, arg):
        if arg.is_zero:
            return sp.S.Zero
        return None

    def fdiff(self, argindex=1):
        return 1 / (3 * real_cbrt(self.args[0]) ** 2)

    def _eval_evalf(self, prec):
        x = self.args[0]._eval_evalf(prec)
        if x is None or not x.is_real:
            return None
        return (sp.sign(x) * sp.Abs(x) ** sp.Rational(1, 3))._eval_evalf(prec)


@dataclass(frozen=True)
class Fn:
    """One function's name in each backend (see the module docstring)."""

    numpy: str
    numba: str
    cuda: str
    fast: str | None = None


def _row(name: str, numpy: str | None = None, cuda: str | None = None, fast=None) -> Fn:
    numpy = numpy or name
    return Fn(f"numpy.{numpy}", f"np.{numpy}", cuda or f"math.{name}", fast)


FUNCTIONS: dict = {
    sp.exp: _row("exp", fast="exp"),
    sp.log: _row("log", fast="log"),
    sp.tanh: _row("tanh", fast="tanh"),
    sp.erf: Fn("scipy.special.erf", "math.erf", "math.erf", fast="erf"),
    sp.erfc: Fn("scipy.special.erfc", "math.erfc", "math.erfc"),
    expm1: _row("expm1", fast="expm1"),
    log1p: _row("log1p", fast="log1p"),
    sp.sin: _row("sin"),
    sp.cos: _row("cos"),
    sp.tan: _row("tan"),
    sp.sinh: _row("sinh"),
    sp.cosh: _row("cosh"),
    sp.asin: _row("asin", "arcsin"),
    sp.acos: _row("acos", "arccos"),
    sp.atan: _row("atan", "arctan"),
    sp.asinh: _row("asinh", "arcsinh"),
    sp.acosh: _row("acosh", "arccosh"),
    sp.atanh: _row("atanh", "arctanh"),
    sp.atan2: _row("atan2", "arctan2"),
    sp.floor: _row("floor"),
    sp.ceiling: _row("ceil"),
    log2: _row("log2"),
    log10: _row("log10"),
    exp2: _row("exp2", cuda="libdevice.exp2"),
    rint: _row("rint", cuda="libdevice.rint"),
    real_cbrt: _row("cbrt", cuda="libdevice.cbrt"),
    "sqrt": _row("sqrt"),  # x ** (1/2)
    "pow": _row("pow", "power"),  # x ** y, y not an integer
}

# Functions the printers write inline rather than as a call (an expression of their args).
INLINE = (sp.Abs, sp.sign, sp.Heaviside)


def numpy_function(fn: Fn):
    """The NumPy/SciPy callable of row ``fn``."""
    module, _, name = fn.numpy.rpartition(".")
    return getattr(importlib.import_module(module), name)


def by_cuda_name(name: str) -> Fn:
    """The row whose numba.cuda call is ``name`` (``"math.atan"``)."""
    for fn in FUNCTIONS.values():
        if fn.cuda == name:
            return fn
    raise KeyError(name)
