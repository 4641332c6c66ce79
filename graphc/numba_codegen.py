"""Kernel code generation for the Numba backend: SymPy -> Numba source -> native code.

Elementwise ops are declared as SymPy expressions; :class:`ScalarPrinter` prints one as
Numba-typed scalar Python in a given dtype (every literal wrapped so float32 stays float32,
``exp``/``log``/``tanh``/``erf`` through the vectorizable functions of
:mod:`graphc.fastmath`, ``Piecewise`` as conditional expressions that LLVM turns into
selects).  :func:`elementwise_kernel` wraps such expressions in a loop over a flat output
with broadcast operands; :mod:`graphc.numba_kernels` writes the other kernel families (fused
groups, the softmax family, sums, pooling, im2col) and
:func:`graphc.numba_native.compile_object` compiles a kernel module with Numba and emits a
relocatable native object with a plain C entry point, which :mod:`graphc.kernel_cache`
stores and loads.

A kernel's source depends on the expression, the dtypes and the broadcast pattern, never on
shapes (sizes are arguments), so one kernel serves every graph and shape with that body.
Generated source holds only identifiers made here and numbers; user names and SymPy symbol
names never reach it (the symbols are renamed ``x0, x1 ...``), and text from the user goes
into comments only through :func:`comment`, which escapes it.

>>> import sympy as sp
>>> x = sp.Symbol("x", real=True)
>>> ScalarPrinter("float32", {x: "x0"}).print(sp.Max(x, 0) + 2 * x)
'((np.float32(2.0) * x0) + maximum(np.float32(0.0), x0))'
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p
from sympy.printing.str import StrPrinter

from .derivation import cse
from .functable import FUNCTIONS
from .lowering import comment, identifier

CODEGEN_VERSION = 1

SHORT = {"float32": "f32", "float64": "f64", "int32": "i32", "int64": "i64", "bool": "b"}

# Options every kernel is compiled with.  error_model="numpy": 1/0 is inf, never an
# exception.  No "contract": an FMA rounds a*b+c once where NumPy rounds twice, and
# w*1e300 - w*1e300 was then 1.17e283 (inf in float32) where NumPy gives 0; the helpers of
# graphc.fastmath keep it inside their own polynomials.  Row reductions add "reassoc" so
# their sums vectorize.  No "nnan"/"ninf": NaN and inf keep their IEEE meaning.
ELEMENTWISE_FASTMATH = ()
REDUCTION_FASTMATH = ("reassoc",)


class Unsupported(Exception):
    """An expression the scalar printer cannot express (the node falls back to NumPy)."""


class _FormulaPrinter(StrPrinter):
    """SymPy's text form with ``Piecewise`` as Python's conditional expression."""

    def _print_Piecewise(self, expr):
        *pieces, (last, cond) = expr.args
        text = self._print(last) if cond is sp.true else \
            f"{self._print(last)} if {self._print(cond)} else nan"
        for value, cond in reversed(pieces):
            text = f"{self._print(value)} if {self._print(cond)} else {text}"
        return f"({text})"


def formula(expr) -> str:
    """``expr`` as a comment of generated source: ``(x if x > 0 else 0.01*x)``."""
    return comment(_FormulaPrinter().doprint(expr))


# ---------------------------------------------------------------------------------------
# SymPy -> Numba scalar code

_RELATIONS = {sp.StrictLessThan: "<", sp.LessThan: "<=", sp.StrictGreaterThan: ">",
              sp.GreaterThan: ">=", sp.Eq: "==", sp.Ne: "!="}


class ScalarPrinter:
    """Print SymPy expressions as Numba scalar code in one dtype.

    ``names`` maps each argument symbol to a variable; ``bool_symbols`` are the ones that
    hold bools.  Numeric subexpressions are typed in ``dtype`` throughout: literals are
    wrapped (``np.float32(0.5)``), since a bare Python float would promote float32 to
    float64 inside Numba.  ``helpers`` collects the fastmath functions used.
    """

    def __init__(self, dtype: str, names: dict, bool_symbols=()):
        self.dtype = dtype
        self.names = dict(names)
        self.bool_symbols = set(bool_symbols)
        self.helpers: set[str] = set()

    # -- entry points -----------------------------------------------------------------------
    def print(self, expr) -> str:
        """``expr`` as a numeric value of ``dtype`` (a bool result is kept as bool)."""
        text, kind = self._p(sp.sympify(expr))
        return text

    def numeric(self, expr) -> str:
        text, kind = self._p(expr)
        return f"{self._cast()}({text})" if kind == "bool" else text

    def boolean(self, expr) -> str:
        text, kind = self._p(expr)
        return text if kind == "bool" else f"({text} != {self.const(0)})"

    def const(self, value) -> str:
        """A literal of ``dtype``."""
        if self.dtype == "bool":
            return "True" if value else "False"
        if self.dtype in ("int32", "int64"):
            if float(value) != int(value):
                raise Unsupported(f"non-integer constant {value} in {self.dtype} code")
            return str(int(value)) if self.dtype == "int64" else f"np.int32({int(value)})"
        value = float(value)
        text = "np.inf" if value == np.inf else "-np.inf" if value == -np.inf else \
            "np.nan" if value != value else repr(value)
        return text if self.dtype == "float64" else f"np.float32({text})"

    def _cast(self) -> str:
        return {"float32": "np.float32", "float64": "np.float64", "int32": "np.int32",
                "int64": "np.int64", "bool": "bool"}[self.dtype]

    def _float(self) -> bool:
        return self.dtype in ("float32", "float64")

    # -- the printer ------------------------------------------------------------------------
    def _p(self, e) -> tuple[str, str]:
        if e is sp.true or e is sp.false:
            return ("True" if e is sp.true else "False"), "bool"
        if isinstance(e, sp.Symbol):
            if e not in self.names:
                raise Unsupported(f"free symbol {comment(e)}")
            return self.names[e], ("bool" if e in self.bool_symbols else "num")
        if isinstance(e, sp.Expr) and e.is_number:
            value = complex(e)
            if value.imag:
                raise Unsupported("complex constant")
            return self.const(value.real), "num"
        for cls, method in _DISPATCH:
            if isinstance(e, cls):
                return method(self, e)
        raise Unsupported(f"no Numba form for {comment(type(e).__name__)}")

    def _add(self, e):
        terms = list(e.args)
        numbers = [t for t in terms if t.is_number]
        terms = [t for t in terms if not t.is_number]
        parts = []
        for t in terms:
            coeff, rest = t.as_coeff_Mul()
            if coeff.is_number and coeff < 0:
                parts.append(("-", self.numeric(-t)))
            else:
                parts.append(("+", self.numeric(t)))
        if numbers:
            value = complex(sp.Add(*numbers)).real
            parts.append(("-" if value < 0 else "+", self.const(abs(value))))
        text = parts[0][1] if parts[0][0] == "+" else f"-{parts[0][1]}"
        for sign, p in parts[1:]:
            text += f" {sign} {p}"
        return f"({text})", "num"

    def _mul(self, e):
        coeff = 1.0
        num, den = [], []
        for f in e.args:
            if f.is_number:
                coeff *= complex(f).real
            elif isinstance(f, sp.Pow) and f.exp.is_number and f.exp < 0:
                den.append(self.numeric(sp.Pow(f.base, -f.exp)))
            else:
                num.append(self.numeric(f))
        if coeff == -1.0 and num:
            text, sign = " * ".join(num), "-"
        else:
            text, sign = " * ".join(([self.const(coeff)] if coeff != 1.0 or not num else [])
                                    + num), ""
        if den:
            if self.dtype not in ("float32", "float64"):
                raise Unsupported("division in integer code")
            text = f"{text} / {den[0] if len(den) == 1 else '(' + ' * '.join(den) + ')'}"
        return f"({sign}{text})", "num"

    def _pow(self, e):
        base, exp = e.base, e.exp
        if base == sp.E:
            return self._call(FUNCTIONS[sp.exp], (exp,))
        b = self.numeric(base)
        if exp.is_Integer:
            n = int(exp)
            if n >= 0:
                return (b if n == 1 else f"({b} ** {n})"), "num"
            if not self._float():
                raise Unsupported("negative power in integer code")
            return f"({self.const(1)} / {b if n == -1 else f'({b} ** {-n})'})", "num"
        if not self._float():
            raise Unsupported("non-integer power in integer code")
        if exp in (sp.Rational(1, 2), sp.Float(0.5)):  # as NumPy's printer: sqrt, which
            return self._call(FUNCTIONS["sqrt"], (base,))  # is NaN at -inf (pow gives inf)
        if exp in (sp.Rational(-1, 2), sp.Float(-0.5)):
            return f"({self.const(1)} / {self._call(FUNCTIONS['sqrt'], (base,))[0]})", "num"
        power = self._call(FUNCTIONS["pow"], (base, exp))
        if exp.is_number:
            return power
        # an exponent known only at run time: NumPy's power takes sqrt for 0.5 (NaN at
        # -inf, -0 at -0, where C's pow gives inf and 0), so the kernels do too
        root = self._call(FUNCTIONS["sqrt"], (base,))[0]
        return f"({root} if {self.numeric(exp)} == {self.const(0.5)} else {power[0]})", "num"

    def _call(self, fn, args) -> tuple[str, str]:
        """A call of table row ``fn`` (:mod:`graphc.functable`) on ``args``: the
        vectorizable fastmath helper where the row has one, else its Numba name."""
        if not self._float():
            raise Unsupported(f"{fn.numba} in {self.dtype} code")
        name = fn.numba
        if fn.fast:
            name = f"{fn.fast}_{SHORT[self.dtype]}"
            self.helpers.add(name)
        return f"{name}({', '.join(self.numeric(a) for a in args)})", "num"

    def _function(self, e):
        cls = type(e)
        fn = FUNCTIONS.get(cls)
        if fn is not None:
            return self._call(fn, e.args)
        if cls is sp.Abs:
            return f"abs({self.numeric(e.args[0])})", "num"
        if cls is sp.sign:
            x = self.numeric(e.args[0])
            one, zero = self.const(1), self.const(0)
            # 0 + x: sign(-0) is 0 (as NumPy and torch), sign(NaN) NaN
            return (f"({one} if {x} > {zero} else (-{one} if {x} < {zero} else "
                    f"({zero} + {x})))"), "num"
        if cls is sp.Heaviside:
            x = self.numeric(e.args[0])
            h0 = self.numeric(e.args[1]) if len(e.args) > 1 else self.const(0.5)
            one, zero = self.const(1), self.const(0)
            return (f"({one} if {x} > {zero} else ({zero} if {x} < {zero} else "
                    f"({h0} if {x} == {zero} else {x})))"), "num"
        raise Unsupported(f"no Numba form for {comment(cls.__name__)}")

    def _minmax(self, e):
        helper = "maximum" if isinstance(e, sp.Max) else "minimum"
        self.helpers.add(helper)
        args = e.args  # SymPy's order, as the reference's numpy.maximum: at a tie the second
        text = self.numeric(args[0])  # operand (relu(-0) = Max(0, -0) is -0, as torch's)
        for a in args[1:]:
            text = f"{helper}({text}, {self.numeric(a)})"
        return text, "num"

    def _piecewise(self, e):
        pieces = list(e.args)
        value, cond = pieces[-1]
        if cond is sp.true:
            text = self._branch(value)
        elif self._float():
            text = f"({self._branch(value)} if {self.boolean(cond)} else {self.const(np.nan)})"
        else:
            raise Unsupported("Piecewise without a default in integer code")
        for value, cond in reversed(pieces[:-1]):
            text = f"({self._branch(value)} if {self.boolean(cond)} else {text})"
        return text, "num" if self.dtype != "bool" else "bool"

    def _branch(self, value):
        return self.boolean(value) if self.dtype == "bool" else self.numeric(value)

    def _relational(self, e):
        lhs, rhs = e.lhs, e.rhs
        # a bool operand compared with 0 (the condition of ``where``) is the bool itself
        for a, b in ((lhs, rhs), (rhs, lhs)):
            if a in self.bool_symbols and b.is_number and b == 0 and type(e) in (sp.Ne, sp.Eq):
                return (self.names[a] if isinstance(e, sp.Ne) else f"(not {self.names[a]})"), \
                    "bool"
        op = _RELATIONS[type(e)]
        return f"({self.numeric(lhs)} {op} {self.numeric(rhs)})", "bool"

    def _logic(self, e):
        if isinstance(e, sp.Not):
            return f"(not {self.boolean(e.args[0])})", "bool"
        op = " & " if isinstance(e, sp.And) else " | "
        return "(" + op.join(self.boolean(a) for a in e.args) + ")", "bool"

    def _ite(self, e):
        cond, a, b = e.args
        return f"({self._branch(a)} if {self.boolean(cond)} else {self._branch(b)})", \
            "num" if self.dtype != "bool" else "bool"


_DISPATCH = (
    (sp.Add, ScalarPrinter._add), (sp.Mul, ScalarPrinter._mul), (sp.Pow, ScalarPrinter._pow),
    (sp.Piecewise, ScalarPrinter._piecewise), (sp.Max, ScalarPrinter._minmax),
    (sp.Min, ScalarPrinter._minmax), (sp.core.relational.Relational, ScalarPrinter._relational),
    (sp.And, ScalarPrinter._logic), (sp.Or, ScalarPrinter._logic), (sp.Not, ScalarPrinter._logic),
    (sp.ITE, ScalarPrinter._ite), (sp.Function, ScalarPrinter._function),
)


def _comparison_form(expr):
    """``cond`` for ``Piecewise((1, cond), (0, True))`` (how comparisons are declared)."""
    if isinstance(expr, sp.Piecewise) and len(expr.args) == 2:
        (one, cond), (zero, last) = expr.args
        if one == 1 and zero == 0 and last is sp.true:
            return cond
    return None


# ---------------------------------------------------------------------------------------
# Elementwise kernels


@dataclass(frozen=True)
class Step:
    """One elementwise op inside a kernel (a kernel holds one step, or a fused group).

    ``expr`` is the op's evaluated SymPy form with parameters substituted; ``args`` its
    argument symbols; ``inputs`` says where each argument comes from: ``("operand", k)``
    or ``("step", j)``.  Arguments are converted to ``work`` (bool arguments stay bool);
    the result has dtype ``out``.
    """

    label: str
    expr: sp.Expr
    args: tuple
    inputs: tuple
    work: str
    out: str
    bool_args: tuple = ()


STEM_MAX = 96  # characters of a kernel's readable name (file names: 255 bytes at most)


@dataclass(frozen=True)
class KernelSpec:
    """A kernel module: its source text and its C signature.

    ``params`` lists the arguments: ``("ptr", dtype)`` for a pointer to a contiguous array
    and ``("int",)`` for a size.  The key hashes everything that changes the compiled code.
    """

    stem: str
    source: str
    params: tuple
    fastmath: tuple = ELEMENTWISE_FASTMATH
    helpers: tuple = ()
    scratch: int = 0  # elements of work space a call needs (fused kernels in phases)
    key: str = field(init=False)

    def __post_init__(self):
        text = f"{CODEGEN_VERSION}\n{self.params}\n{self.fastmath}\n{self.source}"
        object.__setattr__(self, "key", hashlib.sha256(text.encode()).hexdigest())

    @property
    def name(self) -> str:
        """A readable identifier, unique per body: ``sigmoid_f32_F_3fa2c1d09e``; a stem
        over STEM_MAX characters (a long fused chain's op names) keeps its start and its
        dtype and operand kinds, so that the cache's file names stay short."""
        stem = self.stem if len(self.stem) <= STEM_MAX else \
            f"{self.stem[:STEM_MAX - 24]}_{self.stem[-23:]}"
        return f"{stem}_{self.key[:10]}"

    @property
    def symbol(self) -> str:
        """The C symbol of the kernel's entry point in its native object."""
        return f"graphc_{self.key[:32]}"


_KIND_TEXT = {"F": "full", "S": "scalar", "R": "row (inner axis)", "C": "column (outer axes)",
              "V": "full, rows ld apart (a column block of a wider matrix)"}


def elementwise_kernel(steps, operand_dtypes, kinds) -> KernelSpec:
    """The kernel computing ``steps`` over a flat output.

    ``kinds`` has one letter per operand: ``F`` (same shape as the output), ``S`` (a single
    element), ``R`` (varies along the inner axis only) or ``C`` (varies along the outer
    axis only).  With only F and S the loop is 1-D over ``n``; otherwise the output is
    seen as ``(n0, n1)``.
    """
    two_d = any(k in "RC" for k in kinds)
    body, helpers = _step_lines(steps, operand_dtypes)
    operands = [f"a{k}" for k in range(len(kinds))]
    sizes = ["n0", "n1"] if two_d else ["n"]
    lines = [f"def kernel(out, {', '.join(operands + sizes)}):"]
    def load(k, index):
        return f"(a{k}{index} != 0)" if operand_dtypes[k] == "bool" else f"a{k}{index}"

    for k, kind in enumerate(kinds):
        if kind == "S":
            lines.append(f"    x{k} = {load(k, '[0]')}")
    if two_d:
        lines += ["    for i in range(n0):", "        base = i * n1"]
        for k, kind in enumerate(kinds):
            if kind == "C":
                lines.append(f"        x{k} = {load(k, '[i]')}")
        lines.append("        for j in range(n1):")
        index, indent = "base + j", " " * 12
        loads = {"F": "[base + j]", "R": "[j]"}
    else:
        lines.append("    for i in range(n):")
        index, indent = "i", " " * 8
        loads = {"F": "[i]"}
    for k, kind in enumerate(kinds):
        if kind in loads:
            lines.append(f"{indent}x{k} = {load(k, loads[kind])}")
    lines += [indent + line for line in body]
    lines.append(f"{indent}out[{index}] = y{len(steps) - 1}")
    header = [f"# graphc kernel: {comment(' -> '.join(s.label for s in steps))}",
              f"# operands: {', '.join(f'a{k} {operand_dtypes[k]} {_KIND_TEXT[kind]}' for k, kind in enumerate(kinds))}",  # noqa: E501
              f"# result: {steps[-1].out}"]
    for s in steps:
        header.append(f"# {comment(s.label)}: {formula(s.expr)}")
    source = _module(header, helpers, lines)
    stem = identifier("_".join(s.label for s in steps)) + \
        f"_{SHORT[steps[-1].out]}_{''.join(kinds)}"
    params = (("ptr", steps[-1].out),) + tuple(("ptr", d) for d in operand_dtypes) + \
        (("int",),) * len(sizes)
    return KernelSpec(stem, source, params, ELEMENTWISE_FASTMATH, tuple(sorted(helpers)))


def _step_lines(steps, operand_dtypes):
    """Loop-body statements computing ``y0, y1 ...`` from the loaded operands ``x0 ...``."""
    lines, helpers = [], set()
    dtypes = {("operand", k): d for k, d in enumerate(operand_dtypes)}
    for j, s in enumerate(steps):
        names, bools = {}, set()
        for a, src, is_bool in zip(s.args, s.inputs, s.bool_args or (False,) * len(s.args)):
            var = f"x{src[1]}" if src[0] == "operand" else f"y{src[1]}"
            have = dtypes[src]
            if is_bool or have == "bool" and s.work == "bool":
                bools.add(a)
            elif have != s.work:
                cast = f"t{j}_{len(names)}"
                lines.append(f"{cast} = {ScalarPrinter(s.work, {})._cast()}({var})")
                var = cast
            names[a] = var
        printer = ScalarPrinter(s.work, names, bools)
        cond = _comparison_form(s.expr) if s.out == "bool" else None
        replacements, reduced = cse(cond if cond is not None else s.expr,
                                    sp.numbered_symbols(f"c{j}_"))
        for sym, sub in replacements:
            text, kind = printer._p(sub)
            printer.names[sym] = str(sym)
            if kind == "bool":
                printer.bool_symbols.add(sym)
            lines.append(f"{sym} = {text}")
        if s.out == "bool":
            value = printer.boolean(reduced)
        elif s.work == s.out:
            value = printer.numeric(reduced)
        else:
            value = f"{ScalarPrinter(s.out, {})._cast()}({printer.numeric(reduced)})"
        lines.append(f"y{j} = {value}")
        helpers |= printer.helpers
        dtypes[("step", j)] = s.out
    return lines, helpers


_MATH_CALLS = tuple(f"{fn.numba}(" for fn in FUNCTIONS.values() if fn.numba.startswith("math."))


def _module(header, helpers, body) -> str:
    generic_names = ("maximum", "minimum", "pairwise_sum")
    fastmath = sorted(h for h in helpers if h not in generic_names)
    generic = sorted(h for h in helpers if h in generic_names)
    imports = ["import numpy as np"]
    if any(name in line for line in body for name in _MATH_CALLS):  # libm, not in NumPy
        imports = ["import math", ""] + imports
    names = generic + fastmath
    if names:
        imports += ["", f"from graphc.fastmath import {', '.join(names)}"]
    return "\n".join(header + [""] + imports + ["", ""] + body) + "\n"


# ---------------------------------------------------------------------------------------
# NumPy ufunc forms: a single-ufunc expression runs as that ufunc (same results as the
# reference interpreter, no compile time, and as fast as a loop for one operation)

_UFUNC_FUNCTIONS = {f: FUNCTIONS[f].numpy.removeprefix("numpy.")
                    for f in (sp.exp, sp.log, sp.sin, sp.cos, sp.tanh, expm1, log1p)}
_UFUNC_FUNCTIONS[sp.Abs] = "absolute"
_UFUNC_RELATIONS = {sp.StrictLessThan: "less", sp.LessThan: "less_equal",
                    sp.StrictGreaterThan: "greater", sp.GreaterThan: "greater_equal",
                    sp.Eq: "equal", sp.Ne: "not_equal"}


def ufunc_form(expr, args):
    """``(ufunc name, operands)`` if ``expr`` is one NumPy ufunc applied to the argument
    symbols and numbers, else None.  Operands are ``("arg", k)`` or ``("num", value)``.

    >>> a, b = sp.symbols("a b", real=True)
    >>> ufunc_form(sp.Max(0, a), (a,))
    ('maximum', (('num', 0), ('arg', 0)))
    >>> ufunc_form(a - b, (a, b))
    ('subtract', (('arg', 0), ('arg', 1)))
    """
    index = {a: k for k, a in enumerate(args)}

    def operand(e):
        if e in index:
            return ("arg", index[e])
        if e.is_number and e.is_real:
            return ("num", int(e) if e.is_Integer else float(e))
        return None

    def pack(name, *parts):
        ops = [operand(p) for p in parts]
        return None if any(o is None for o in ops) else (name, tuple(ops))

    cond = _comparison_form(expr)
    if cond is not None and type(cond) in _UFUNC_RELATIONS:
        return pack(_UFUNC_RELATIONS[type(cond)], cond.lhs, cond.rhs)
    if type(expr) in _UFUNC_FUNCTIONS:
        return pack(_UFUNC_FUNCTIONS[type(expr)], expr.args[0])
    if isinstance(expr, (sp.Max, sp.Min)) and len(expr.args) == 2:
        a, b = expr.args  # in SymPy's order, as the reference (a tie gives b)
        return pack("maximum" if isinstance(expr, sp.Max) else "minimum", a, b)
    if isinstance(expr, sp.Pow):
        if expr.exp == 2:
            return pack("square", expr.base)
        if expr.exp == sp.Rational(1, 2):
            return pack("sqrt", expr.base)
        if expr.exp == -1:
            return pack("reciprocal", expr.base)
        return pack("power", expr.base, expr.exp) if expr.exp in index else None
    if isinstance(expr, sp.Add) and len(expr.args) == 2:
        a, b = expr.args
        for x, y in ((a, b), (b, a)):
            if isinstance(y, sp.Mul) and len(y.args) == 2 and y.args[0] == -1:
                return pack("subtract", x, y.args[1])
        return pack("add", a, b)
    if isinstance(expr, sp.Mul) and len(expr.args) == 2:
        a, b = expr.args
        if a == -1:
            return pack("negative", b)
        for x, y in ((a, b), (b, a)):
            if isinstance(y, sp.Pow) and y.exp == -1 and x in index:
                return pack("divide", x, y.base)
        return pack("multiply", a, b)
    return None
