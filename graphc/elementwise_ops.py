"""Elementwise ops, each declared once as a SymPy expression.

An op is a name, its arguments and a SymPy expression, plus, where the textbook formula
overflows, a numerically stable SymPy form used for evaluation.  Everything else is derived:
the local derivatives (:mod:`graphc.derivation`: ``sympy.diff``, simplified, and rewritten
in terms of the op's output ``y`` where that is proven and cheaper: sigmoid' = y(1 - y)),
the NumPy evaluation (a SymPy printer), and the text and LaTeX forms shown in diagrams.

>>> import graphc as gc
>>> gc.sigmoid.derivatives
(y*(1 - y),)
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import sympy as sp
from sympy.codegen import cfunctions as cf
from sympy.codegen.cfunctions import expm1, log1p
from sympy.printing.numpy import SciPyPrinter

from . import derivation as dv
from . import dtypes
from .errors import DTypeError, ElementwiseError
from .functable import FUNCTIONS, real_cbrt, rint
from .inputs import lift_all
from .ir import Op, Tensor, located


class _NumpyPrinter(SciPyPrinter):
    """SymPy -> NumPy source.  Numbers print as Python floats so that float32 stays
    float32 (NumPy treats Python scalars as weakly typed); Piecewise prints as nested
    ``where`` so NaN reaches the branch that propagates it."""

    def _print(self, expr, **kwargs):
        if isinstance(expr, sp.Expr) and expr.is_number and not expr.is_Integer:
            value = complex(expr)
            if value.imag == 0:
                return repr(value.real)
        return super()._print(expr, **kwargs)

    def _print_Max(self, expr):
        return self._nested("numpy.maximum", expr.args)

    def _print_Function(self, expr):  # graphc's own functions (rint ...): the table's name
        fn = FUNCTIONS.get(type(expr))
        if fn is None:
            return super()._print_Function(expr)
        return f"{fn.numpy}({', '.join(map(self._print, expr.args))})"

    def _print_Min(self, expr):
        return self._nested("numpy.minimum", expr.args)

    def _print_And(self, expr):  # SciPyPrinter's logical_and.reduce does not broadcast
        return self._nested("numpy.logical_and", expr.args)

    def _print_Or(self, expr):
        return self._nested("numpy.logical_or", expr.args)

    def _nested(self, fn, args):
        text = self._print(args[0])
        for a in args[1:]:
            text = f"{fn}({text}, {self._print(a)})"
        return text

    def _print_Heaviside(self, expr):
        """NumPy's heaviside (NaN at NaN, as the Numba and CUDA printers), not SymPy's
        nested ``where``, which gave 1 at NaN."""
        h0 = expr.args[1] if len(expr.args) > 1 else sp.S.Half
        return f"numpy.heaviside({self._print(expr.args[0])}, {self._print(h0)})"

    def _print_Piecewise(self, expr):
        *pieces, (last, cond) = expr.args
        text = self._print(last) if cond is sp.true else \
            f"numpy.where({self._print(cond)}, {self._print(last)}, numpy.nan)"
        for value, cond in reversed(pieces):
            text = f"numpy.where({self._print(cond)}, {self._print(value)}, {text})"
        return text


def _unprintable(expr: sp.Expr) -> list[str]:
    """The innermost function applications in ``expr`` that have no NumPy form."""
    printer = _NumpyPrinter()

    def fails(f):
        try:
            printer.doprint(f)
        except Exception:  # noqa: BLE001
            return True
        return False
    bad = [f for f in expr.atoms(sp.Function) if fails(f)]
    return sorted({type(f).__name__ for f in bad if not any(g != f and f.has(g) for g in bad)})


class _LazySciPy:
    """``scipy`` in the namespace of the generated NumPy functions, imported on first use:
    only a few ops (erf, erfc) print ``scipy.special`` names, and importing it (or SymPy's
    default ``numpy``/``scipy`` namespaces, which star-import both) costs about a second
    of every ``gc.compile`` that folds a constant."""

    def __getattr__(self, name):
        import importlib
        return importlib.import_module(f"scipy.{name}")


# Every name the printer writes: ``numpy.*``, ``scipy.*`` and the bare floats it prints.
_NAMESPACE = {"numpy": np, "scipy": _LazySciPy(), "inf": math.inf, "nan": math.nan}


def _lambdify(args, expr, **kwargs):
    return sp.lambdify(args, expr, modules=[_NAMESPACE], printer=_NumpyPrinter, **kwargs)


def broadcast_shapes(op: Op, inputs) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(*(t.shape for t in inputs)))
    except ValueError:
        op.fail("shapes cannot be broadcast together", inputs)


class ElementwiseDef:
    """An elementwise op declared by a SymPy expression; call it on tensors.

    Attributes: ``name``, ``args`` (SymPy symbols), ``params`` (static keyword parameters
    and their defaults), ``expr`` (the mathematical definition), ``stable`` (the form that
    is evaluated), ``derivatives`` (one SymPy expression per argument, possibly in terms of
    the output symbol ``out``), ``derivatives_text`` and ``derivatives_latex``.
    """

    def __init__(self, name: str, args, params: dict, expr, stable=None, *, int_ok=False,
                 out_dtype=None, bool_args=(), differentiable=True, bool_ok=False):
        self.name = name
        self.args = tuple(args)
        self.params = dict(params)
        self.param_symbols = tuple(sp.Symbol(n, real=True) for n in self.params)
        taken = {a.name for a in self.args} | set(self.params)
        self.out = sp.Symbol(next(n for n in ("y", "out", "out_", "out__") if n not in taken),
                             real=True)
        self.expr = expr
        self.stable = expr if stable is None else stable
        self.int_ok = int_ok
        self.out_dtype = out_dtype
        self.bool_args = tuple(bool_args)
        self.differentiable = differentiable
        self.bool_ok = bool_ok  # bool operands allowed (where picks between bools)
        self._numpy_fns: dict = {}
        self._local_defs: dict = {}
        self._probed: dict = {}

    @classmethod
    def from_function(cls, name: str, fn, stable=None, **flags) -> ElementwiseDef:
        """Declare from a Python function of SymPy symbols, checking the definition."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ElementwiseError(located(f"elementwise op name {name!r} is not an identifier"))
        names, params = _signature(name, fn)
        args = tuple(sp.Symbol(n, real=True) for n in names)
        param_symbols = {n: sp.Symbol(n, real=True) for n in params}
        expr = _build(name, fn, args, param_symbols, "fn")
        stable = None if stable is None else _build(name, stable, args, param_symbols, "stable")
        return cls(name, args, params, expr, stable, **flags)

    @property
    def arity(self) -> int:
        return len(self.args)

    def __repr__(self) -> str:
        args = ", ".join(map(str, self.args + self.param_symbols))
        return f"<elementwise {self.name}({args}) = {self.expr}>"

    # -- derivatives ----------------------------------------------------------------------
    @cached_property
    def derivatives_x(self) -> tuple[sp.Expr, ...]:
        """d expr / d arg for each argument, in terms of the arguments only."""
        return tuple(sp.S.Zero if (not self.differentiable or a.name in self.bool_args)
                     else dv.strong_zeros(dv.simplify(self._diff(a))) for a in self.args)

    def _diff(self, a: sp.Symbol) -> sp.Expr:
        d = dv.diff(self.expr, a)
        stuck = sorted({type(e.expr).__name__ for e in d.atoms(sp.Derivative)})
        if stuck:
            raise ElementwiseError(located(
                f"elementwise {self.name!r}: SymPy has no derivative of {', '.join(stuck)} "
                f"(in {self.expr}), so graphc cannot differentiate it"))
        return d

    @cached_property
    def derivatives(self) -> tuple[sp.Expr, ...]:
        """The local derivatives, in terms of the output ``out`` where that is cheaper."""
        if self.params:
            return self.derivatives_x
        if self.arity != 1:
            return tuple(dv.ratio_to_output(self.expr, d, self.out) for d in self.derivatives_x)
        return (dv.in_terms_of_output(self.expr, self.derivatives_x[0], self.args[0], self.out),)

    def check(self) -> None:
        """Derive the derivatives and print every form a backend evaluates (the op and each
        local derivative); an :class:`ElementwiseError` names a SymPy function that cannot
        be differentiated or printed, at declaration rather than at a later call."""
        for a in self.args:  # here, not under cached_property, so errors locate the user
            if self.differentiable and a.name not in self.bool_args:
                self._diff(a)
        try:
            derivatives = self.derivatives
        except Exception as err:  # noqa: BLE001 -- any SymPy failure is a bad definition
            raise ElementwiseError(located(
                f"elementwise {self.name!r}: SymPy cannot differentiate {self.expr} "
                f"({type(err).__name__}: {err})")) from err
        defaults = tuple(self.params.items())
        forms = [("the op", self.stable, lambda: self)] + [
            (f"its derivative in {a}", d, lambda k=k: self.local_def(k))
            for k, (a, d) in enumerate(zip(self.args, derivatives))
            if not (d.is_number or d.is_Symbol)]
        for what, expr, form in forms:
            try:
                form().numpy_function(defaults)
            except Exception as err:  # noqa: BLE001 -- SymPy's printers raise many kinds
                bad = _unprintable(expr) or _unprintable(self.expr) or [str(err)]
                raise ElementwiseError(located(
                    f"elementwise {self.name!r}: graphc cannot evaluate {', '.join(bad)} "
                    f"in {what}: SymPy's NumPy printer has no form for it "
                    f"({type(err).__name__})")) from err

    def local_def(self, k: int, params=()) -> ElementwiseDef:
        """The derivative w.r.t. argument ``k`` as an elementwise op of the symbols it uses
        (arguments, then the output ``out``).  Its evaluated form is the derivative of the
        stable form where the op has one and the plain derivative overflows (softplus' =
        e^x / (e^x + 1) is NaN at x = 1e4 in float32) for the node's ``params`` (pairs of
        name and value; the defaults where not given: softplus with its threshold of 20
        never reaches the overflow, with binary_cross_entropy_with_logits' 3e38 it does)."""
        expr = self.derivatives[k]
        free = expr.free_symbols
        args = [a for a in self.args if a in free] + ([self.out] if self.out in free else [])
        stable = expr
        if self.out not in free and self.stable is not self.expr and \
                self._not_finite(expr, {**self.params, **dict(params)}):
            # Differentiated, the kinks of the stable decomposition (max, |x|) count
            # one-sided averages (sign(0) = 0); at_kinks puts the plain derivative's own
            # value there where the two differ (silu'' at 0).
            stable = dv.at_kinks(dv.diff(self.stable, self.args[k]), expr, self.args[k])
            args += [a for a in self.args if a in stable.free_symbols and a not in args]
        local = self._local_defs.get((k, expr, stable))  # tests replace the formula
        if local is None:
            local = ElementwiseDef(f"{self.name}_d{self.args[k].name}", args, self.params, expr,
                                   stable, bool_args=[a for a in self.bool_args
                                                      if sp.Symbol(a, real=True) in args])
            self._local_defs[k, expr, stable] = local
        return local

    def masked_product(self) -> ElementwiseDef | None:
        """For a derivative that is piecewise with a branch that is exactly 0 (relu's,
        where's, clip's), its product with the upstream gradient ``g`` as one op of
        ``(local, *args, g)``: 0 on the 0 branches whatever ``g`` holds (inf, NaN), as
        PyTorch masks these gradients, ``local * g`` on the others.  None for any other
        derivative.  Equal to ``local * g`` for finite ``g``, and so are its derivatives
        (on a 0 branch ``local`` is 0 and so is its own derivative there)."""
        expr = self.expr
        if not isinstance(expr, sp.Piecewise) or not any(e == 0 for e, _ in expr.args):
            return None
        if "masked" not in self._local_defs:
            taken = {a.name for a in self.args} | set(self.params)
            local, g = (sp.Symbol(next(n + "_" * k for k in range(4) if n + "_" * k
                                       not in taken), real=True) for n in ("local", "g"))
            masked = sp.Piecewise(*[(sp.S.Zero if e == 0 else local * g, c)
                                    for e, c in expr.args])
            self._local_defs["masked"] = ElementwiseDef(
                "masked_mul", (local, *self.args, g), self.params, masked,
                bool_args=self.bool_args)
        return self._local_defs["masked"]

    def _not_finite(self, expr, params: dict) -> tuple[float, ...]:
        """The first arguments of |x| <= 1e4 where the op is finite in float32 and ``expr``
        is not, at ``params`` (memoized), over all combinations for three arguments or less."""
        key = (expr, tuple(sorted(params.items())))
        if key not in self._probed:
            probe = np.array([-1e4, -1e3, -100, -30, -1, 0, 1, 30, 100, 1e3, 1e4])
            values = {sym: params[sym.name] for sym in self.param_symbols}
            f = _lambdify(self.args, self.stable.subs(values))
            d = _lambdify(self.args, expr.subs(values))
            grid = np.meshgrid(*[probe] * self.arity, indexing="ij") if self.arity <= 3 \
                else [probe] * self.arity
            with np.errstate(all="ignore"):
                args = [a.ravel().astype(np.float32) for a in grid]
                ok = np.isfinite(np.broadcast_to(f(*args), args[0].shape))
                finite = np.isfinite(np.broadcast_to(d(*args), args[0].shape))
            self._probed[key] = tuple(sorted({float(v) for v in args[0][ok & ~finite]}))
        return self._probed[key]

    def warn_overflow(self) -> None:
        """Warn (at declaration) when a derivative of a one-argument op with no ``stable``
        form overflows in float32 where the op does not: there is no other form to
        evaluate it by (x / (1 + exp(-x)): SymPy's (x + e^x + 1) / (4 cosh(x/2)^2) is inf at
        x = 89)."""
        if self.arity != 1 or self.stable is not self.expr or self.params:
            return
        d = self.derivatives_x[0]
        bad = () if d.is_number else self._not_finite(d, {})
        if bad:
            warnings.warn(
                f"elementwise {self.name!r}: its derivative {d} is not finite in float32 at "
                f"x = {', '.join(f'{v:g}' for v in bad)}, where the op is; give "
                f"gc.elementwise(..., stable=...) a form that does not overflow (its "
                f"derivative is then evaluated there)", RuntimeWarning, stacklevel=3)

    @property
    def derivatives_text(self) -> tuple[str, ...]:
        return tuple(str(d) for d in self.derivatives)

    @property
    def derivatives_latex(self) -> tuple[str, ...]:
        return tuple(sp.latex(d) for d in self.derivatives)

    @property
    def text(self) -> str:
        return str(self.expr)

    @property
    def latex(self) -> str:
        return sp.latex(self.expr)

    # -- evaluation -----------------------------------------------------------------------
    def numpy_function(self, params: tuple):
        """A NumPy function of the arguments evaluating the stable form for ``params``."""
        fn = self._numpy_fns.get(params)
        if fn is None:
            expr = self.stable.subs(dict(zip(self.param_symbols, (p for _, p in params))))
            fn = _lambdify(self.args, expr, cse=dv.cse, docstring_limit=0)
            self._numpy_fns[params] = fn
        return fn

    # -- building nodes -------------------------------------------------------------------
    def __call__(self, *args, **params) -> Tensor:
        if len(args) != self.arity:
            raise ElementwiseError(located(
                f"{self.name} takes {self.arity} argument(s), got {len(args)}"))
        unknown = set(params) - set(self.params)
        if unknown:
            raise ElementwiseError(located(
                f"{self.name}: unknown parameter(s) {sorted(unknown)}; it takes "
                f"{sorted(self.params) or 'none'}"))
        values = tuple((k, _param_value(self.name, k, params.get(k, d)))
                       for k, d in self.params.items())
        return Tensor.make(Elementwise(self, values), lift_all(args, self.name))


@dataclass(frozen=True)
class Elementwise(Op):
    """The node op of an :class:`ElementwiseDef` with its static parameter values."""

    fn: ElementwiseDef
    params: tuple = ()
    dtype: str | None = None  # set on derivative nodes: the dtype of the forward node

    @property
    def name(self):  # type: ignore[override]
        return self.fn.name

    def attrs(self):
        return dict(self.params, **({"dtype": self.dtype} if self.dtype else {}))

    def infer(self, inputs):
        shape = broadcast_shapes(self, inputs)
        fn = self.fn
        for a, t in zip(fn.args, inputs):
            if a.name in fn.bool_args and t.dtype != "bool":
                self.fail(f"argument {a.name!r} must be bool, got {t.dtype}", inputs,
                          DTypeError)
        numeric = [t.dtype for a, t in zip(fn.args, inputs) if a.name not in fn.bool_args]
        common = dtypes.promote(*numeric) if numeric else "bool"
        if self.dtype:
            return shape, self.dtype
        if fn.out_dtype:
            return shape, fn.out_dtype
        if common == "bool" and not fn.bool_ok:
            self.fail("does not take bool operands; convert with gc.cast(x, 'float32')",
                      inputs, DTypeError)
        return shape, common if fn.int_ok else dtypes.to_float(common)

    def work_dtype(self, operand_dtypes) -> str:
        """The dtype the op computes in for operands of ``operand_dtypes``: every backend's
        kernel converts its (non-bool) arguments to it."""
        fn = self.fn
        numeric = [d for d, s in zip(operand_dtypes, fn.args) if s.name not in fn.bool_args]
        common = dtypes.promote(*numeric) if numeric else "bool"
        return self.dtype or (common if (fn.int_ok or fn.out_dtype) else dtypes.to_float(common))

    def evaluate(self, *arrays):
        fn = self.fn
        work = self.work_dtype([a.dtype.name for a in arrays])
        cast = [a if s.name in fn.bool_args else a.astype(work, copy=False)
                for a, s in zip(arrays, fn.args)]
        with np.errstate(all="ignore"):  # unselected Piecewise branches may overflow
            result = fn.numpy_function(self.params)(*cast)
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
        return np.broadcast_to(np.asarray(result, dtype=fn.out_dtype or work), shape)


# ---------------------------------------------------------------------------------------
# Declaration checks


def _signature(name, fn):
    if not callable(fn):
        raise ElementwiseError(located(f"elementwise {name!r}: fn must be callable, got "
                                       f"{type(fn).__name__}"))
    args, params = [], {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ElementwiseError(located(
                f"elementwise {name!r}: fn must take a fixed number of arguments, not *args"))
        if p.default is p.empty:
            if p.kind == p.KEYWORD_ONLY:
                raise ElementwiseError(located(
                    f"elementwise {name!r}: keyword-only parameter {p.name!r} needs a default"))
            if params:
                raise ElementwiseError(located(
                    f"elementwise {name!r}: tensor arguments must come before parameters"))
            args.append(p.name)
        else:
            params[p.name] = _param_value(name, p.name, p.default)
    if not args:
        raise ElementwiseError(located(f"elementwise {name!r}: fn takes no tensor argument"))
    return tuple(args), params


def _param_value(op, key, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise ElementwiseError(located(f"{op}: parameter {key}={value!r} must be a number"))
    value = float(value)
    if not math.isfinite(value):
        raise ElementwiseError(located(f"{op}: parameter {key}={value!r} must be finite"))
    return value


def _build(name, fn, args, params: dict, what):
    symbols = set(args) | set(params.values())
    try:
        expr = fn(*args, **params)
    except Exception as err:  # noqa: BLE001 -- any failure here is a bad definition
        raise ElementwiseError(located(
            f"elementwise {name!r}: {what} failed on SymPy symbols ({type(err).__name__}: "
            f"{err}); build the expression with sympy functions (sp.exp, not np.exp)")) from err
    if not isinstance(expr, sp.Expr):
        raise ElementwiseError(located(
            f"elementwise {name!r}: {what} must return a SymPy expression, got "
            f"{type(expr).__name__} {expr!r}"))
    stray = expr.free_symbols - symbols
    if stray:
        raise ElementwiseError(located(
            f"elementwise {name!r}: expression has free symbols "
            f"{sorted(map(str, stray))} that are not arguments of fn"))
    undefined = expr.atoms(sp.core.function.AppliedUndef)
    if undefined:
        raise ElementwiseError(located(
            f"elementwise {name!r}: undefined function(s) {sorted(map(str, undefined))}"))
    if expr.has(sp.Derivative, sp.Integral, sp.zoo, sp.nan, sp.I):
        raise ElementwiseError(located(
            f"elementwise {name!r}: expression {expr} is not a real-valued closed form"))
    return expr


# ---------------------------------------------------------------------------------------
# The registry and the built-in ops

REGISTRY: dict[str, ElementwiseDef] = {}


def elementwise(name: str, fn, *, stable=None, **flags) -> ElementwiseDef:
    """Declare an elementwise op from a SymPy expression; its derivatives are derived.

    ``fn`` takes one SymPy symbol per tensor argument (any arity); keyword arguments with
    defaults are static numeric parameters.  ``stable`` optionally gives a numerically
    stable SymPy form with the same value, used for evaluation.  The derivatives are
    derived and every form is printed here, so a function graphc cannot differentiate or
    evaluate is refused now, with an :class:`ElementwiseError` naming it.

    >>> import sympy as sp, graphc as gc
    >>> mish = gc.elementwise("mish", lambda x: x * sp.tanh(sp.log(1 + sp.exp(x))))
    >>> mish.arity
    1
    """
    op = ElementwiseDef.from_function(name, fn, stable, **flags)
    old = REGISTRY.get(name)
    if old is not None:
        if old.expr == op.expr and old.params == op.params and \
                (old.stable == op.stable or op.stable is op.expr):
            return old  # re-running the same definition (a notebook cell), or declaring
            # a built-in as it is (mish), is harmless: the registered op is returned
        raise ElementwiseError(located(
            f"an elementwise op named {name!r} is already registered as {old.expr}; "
            "choose another name"))
    op.check()
    dv.check_stable(name, op.expr, op.stable, dict(zip(op.param_symbols, op.params.values())))
    op.warn_overflow()
    REGISTRY[name] = op
    return op


def _predefined(name: str, fn, *, stable=None, **flags) -> ElementwiseDef:
    """A built-in op: declared at import without :meth:`ElementwiseDef.check`, whose
    SymPy work would slow every import; the op tests run the check on each of them."""
    op = ElementwiseDef.from_function(name, fn, stable, **flags)
    REGISTRY[name] = op
    return op


PUBLIC: dict[str, ElementwiseDef] = {}


def _public(name: str, fn, *, stable=None, **flags) -> ElementwiseDef:
    """A built-in op that is also the public function ``gc.<name>`` (graphc/__init__.py
    exports every op of :data:`PUBLIC`): declaring it here is all a new op needs."""
    op = PUBLIC[name] = _predefined(name, fn, stable=stable, **flags)
    return op


def _stable_sigmoid(x):
    e = sp.exp(-sp.Abs(x))  # never overflows
    return sp.Piecewise((1 / (1 + e), x >= 0), (e / (1 + e), True))


_SQRT_2_OVER_PI = sp.sqrt(2 / sp.pi)

add = _public("add", lambda a, b: a + b, int_ok=True)
sub = _public("sub", lambda a, b: a - b, int_ok=True)
mul = _public("mul", lambda a, b: a * b, int_ok=True)
div = _public("div", lambda a, b: a / b)
pow_ = _predefined("pow", lambda a, b: a**b)
neg = _public("neg", lambda x: -x, int_ok=True)
square = _public("square", lambda x: x**2, int_ok=True)
reciprocal = _public("reciprocal", lambda x: 1 / x)
exp = _public("exp", lambda x: sp.exp(x))
log = _public("log", lambda x: sp.log(x))
sqrt = _public("sqrt", lambda x: sp.sqrt(x))
abs_ = _public("abs", lambda x: sp.Abs(x), int_ok=True)
sin = _public("sin", lambda x: sp.sin(x))
cos = _public("cos", lambda x: sp.cos(x))
tanh = _public("tanh", lambda x: sp.tanh(x))
sigmoid = _public("sigmoid", lambda x: 1 / (1 + sp.exp(-x)), stable=_stable_sigmoid)
# ReLU'(0) = 0: the derivative of Piecewise((x, x > 0), (0, True)) is 1 only where x > 0.
relu = _public("relu", lambda x: sp.Piecewise((x, x > 0), (0, True)),
                   stable=lambda x: sp.Max(x, 0), int_ok=True)
leaky_relu = _predefined("leaky_relu",
                         lambda x, alpha=0.01: sp.Piecewise((x, x > 0), (alpha * x, True)))
elu = _predefined("elu", lambda x, alpha=1.0: sp.Piecewise((x, x > 0),
                                                           (alpha * (sp.exp(x) - 1), True)),
                  stable=lambda x, alpha=1.0: sp.Piecewise((x, x > 0), (alpha * expm1(x), True)))
gelu_erf = _predefined("gelu", lambda x: x / 2 * (1 + sp.erf(x / sp.sqrt(2))))
gelu_tanh = _predefined(
    "gelu_tanh", lambda x: x / 2 * (1 + sp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3))))
silu = _public("silu", lambda x: x / (1 + sp.exp(-x)),
                   stable=lambda x: x * _stable_sigmoid(x))
# As torch's F.softplus: log(1 + exp(beta x)) / beta, and x itself where beta x > threshold.
softplus = _public(
    "softplus", lambda x, beta=1.0, threshold=20.0: sp.Piecewise(
        (x, beta * x > threshold), (sp.log(1 + sp.exp(beta * x)) / beta, True)),
    stable=lambda x, beta=1.0, threshold=20.0: sp.Piecewise(
        (x, beta * x > threshold),
        ((sp.Max(beta * x, 0) + log1p(sp.exp(-sp.Abs(beta * x)))) / beta, True)))
# Ties split the gradient evenly between a and b (as PyTorch and JAX do); where a or b is
# NaN no comparison holds, and the last branch (NaN either way) passes the gradient to both,
# as PyTorch does. The evaluated forms are NumPy's maximum/minimum: exact for int64,
# NaN-propagating; on bools they are logical or/and (as torch.maximum and gc.max).
maximum = _public("maximum", lambda a, b: sp.Piecewise(
    (a, a > b), (b, a < b), ((a + b) / 2, sp.Eq(a, b)), (a + b, True)),
    stable=lambda a, b: sp.Max(a, b), int_ok=True, bool_ok=True)
minimum = _public("minimum", lambda a, b: sp.Piecewise(
    (a, a < b), (b, a > b), ((a + b) / 2, sp.Eq(a, b)), (a + b, True)),
    stable=lambda a, b: sp.Min(a, b), int_ok=True, bool_ok=True)
prelu = _public("prelu", lambda x, alpha: sp.Piecewise((x, x > 0), (alpha * x, True)))
where = _predefined("where", lambda cond, a, b: sp.Piecewise((a, sp.Ne(cond, 0)), (b, True)),
                    int_ok=True, bool_ok=True, bool_args=("cond",))


# Clipping, PyTorch's conventions: torch.clamp passes the gradient on [min, max] (bounds
# included; min > max gives max everywhere, gradient 0); hardtanh, relu6 and hardsigmoid
# pass it only strictly inside their range.
clip = _predefined("clip", lambda x, min=-1.0, max=1.0: sp.Piecewise(  # noqa: A006
    (max, (x > max) | (min > max)), (min, x < min), (x, True)))
clip_min = _predefined("clip_min", lambda x, min=0.0: sp.Piecewise(  # noqa: A006
    (min, x < min), (x, True)))
clip_max = _predefined("clip_max", lambda x, max=0.0: sp.Piecewise(  # noqa: A006
    (max, x > max), (x, True)))
hardtanh = _predefined("hardtanh", lambda x, min_val=-1.0, max_val=1.0: sp.Piecewise(
    (min_val, x <= min_val), (max_val, x >= max_val), (x, True)))
relu6 = _public("relu6", lambda x: sp.Piecewise((0, x <= 0), (6, x >= 6), (x, True)))
hardsigmoid = _public("hardsigmoid", lambda x: sp.Piecewise(
    (0, x <= -3), (1, x >= 3), (x / 6 + sp.Rational(1, 2), True)))
hardswish = _public("hardswish", lambda x: sp.Piecewise(
    (0, x <= -3), (x, x >= 3), (x * (x + 3) / 6, True)))
softsign = _public("softsign", lambda x: x / (1 + sp.Abs(x)))
logsigmoid = _public("logsigmoid", lambda x: -sp.log(1 + sp.exp(-x)),
                         stable=lambda x: sp.Min(x, 0) - log1p(sp.exp(-sp.Abs(x))))
celu = _predefined("celu", lambda x, alpha=1.0: sp.Piecewise(
    (x, x > 0), (alpha * (sp.exp(x / alpha) - 1), True)),
    stable=lambda x, alpha=1.0: sp.Piecewise((x, x > 0), (alpha * expm1(x / alpha), True)))
_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
selu = _public("selu", lambda x: _SELU_SCALE * sp.Piecewise(
    (x, x > 0), (_SELU_ALPHA * (sp.exp(x) - 1), True)),
    stable=lambda x: _SELU_SCALE * sp.Piecewise((x, x > 0), (_SELU_ALPHA * expm1(x), True)))
mish = _public("mish", lambda x: x * sp.tanh(sp.log(1 + sp.exp(x))),
                   stable=lambda x: x * sp.tanh(sp.Max(x, 0) + log1p(sp.exp(-sp.Abs(x)))))
# Steps: derivative 0 everywhere (SymPy's DiracDelta dropped), as PyTorch.  sign(NaN) is NaN
# (as NumPy and JAX; torch.sign gives 0).
sign = _public("sign", lambda x: sp.sign(x), int_ok=True)
floor = _public("floor", lambda x: sp.floor(x))
ceil = _public("ceil", lambda x: sp.ceiling(x))
round_ = _public("round", lambda x: rint(x))
trunc = _public("trunc", lambda x: sp.Piecewise((sp.ceiling(x), x < 0), (sp.floor(x), True)))
erf = _public("erf", lambda x: sp.erf(x))
erfc = _public("erfc", lambda x: sp.erfc(x))
tan = _public("tan", lambda x: sp.tan(x))
asin = _public("asin", lambda x: sp.asin(x))
acos = _public("acos", lambda x: sp.acos(x))
atan = _public("atan", lambda x: sp.atan(x))
# d atan2 = (x dy - y dx) / (x^2 + y^2), 0 at (0, 0) as PyTorch's (its value there keeps
# the signs of zeros: the stable form is what is evaluated)
atan2 = _public("atan2", lambda y, x: sp.Piecewise(
    (sp.atan2(y, x), sp.Ne(x**2 + y**2, 0)), (0, True)), stable=lambda y, x: sp.atan2(y, x))
sinh = _public("sinh", lambda x: sp.sinh(x))
cosh = _public("cosh", lambda x: sp.cosh(x))
asinh = _public("asinh", lambda x: sp.asinh(x))
acosh = _public("acosh", lambda x: sp.acosh(x))
atanh = _public("atanh", lambda x: sp.atanh(x))
log2 = _public("log2", lambda x: cf.log2(x))
log10 = _public("log10", lambda x: cf.log10(x))
exp2 = _public("exp2", lambda x: cf.exp2(x))
expm1_ = _public("expm1", lambda x: expm1(x))
log1p_ = _public("log1p", lambda x: log1p(x))
rsqrt = _public("rsqrt", lambda x: 1 / sp.sqrt(x))
cbrt = _public("cbrt", lambda x: real_cbrt(x))
tanhshrink = _public("tanhshrink", lambda x: x - sp.tanh(x))  # as torch's F.tanhshrink


def _comparison(name, relation):
    return _public(name, lambda a, b: sp.Piecewise((1, relation(a, b)), (0, True)),
                       out_dtype="bool", differentiable=False)


less = _comparison("less", sp.StrictLessThan)
less_equal = _comparison("less_equal", sp.LessThan)
greater = _comparison("greater", sp.StrictGreaterThan)
greater_equal = _comparison("greater_equal", sp.GreaterThan)
equal = _comparison("equal", sp.Eq)
not_equal = _comparison("not_equal", sp.Ne)
