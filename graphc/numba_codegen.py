"""Kernel code generation for the Numba backend: SymPy -> Numba source -> native code.

Elementwise ops are declared as SymPy expressions; :class:`ScalarPrinter` prints one as
Numba-typed scalar Python in a given dtype (every literal wrapped so float32 stays float32,
``exp``/``log``/``tanh``/``erf`` through the vectorizable functions of
:mod:`graphc.fastmath`, ``Piecewise`` as conditional expressions that LLVM turns into
selects).  :func:`elementwise_kernel` wraps such expressions in a loop over a flat output
with broadcast operands, :func:`row_kernel` writes the softmax family, and
:func:`compile_object` compiles a kernel module with Numba and emits a relocatable native
object with a plain C entry point, which :mod:`graphc.kernel_cache` stores and loads.

A kernel's source depends on the expression, the dtypes and the broadcast pattern, never on
shapes (sizes are arguments), so one kernel serves every graph and shape with that body.
Generated source holds only identifiers made here and numbers; user names and SymPy symbol
names never reach it (the symbols are renamed ``x0, x1 ...``), and text from the user goes
into comments only through :func:`comment`, which escapes it.

>>> import sympy as sp
>>> x = sp.Symbol("x", real=True)
>>> ScalarPrinter("float32", {x: "x0"}).print(sp.Max(x, 0) + 2 * x)
'((np.float32(2.0) * x0) + maximum(x0, np.float32(0.0)))'
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import dataclass, field

import numpy as np
import sympy as sp
from sympy.codegen.cfunctions import exp2, expm1, log1p, log2, log10

from .elementwise_ops import real_cbrt, rint
from .ir import GraphError
from .lowering import comment, identifier

CODEGEN_VERSION = 1

SHORT = {"float32": "f32", "float64": "f64", "int32": "i32", "int64": "i64", "bool": "b"}
# bool arrays are passed as uint8 pointers (Numba loads a boolean pointer as a raw byte);
# kernels read them as ``a[i] != 0`` and store bools, which convert to 0/1
NUMBA_TYPES = {"float32": "float32", "float64": "float64", "int32": "int32",
               "int64": "int64", "bool": "uint8"}

# Options every kernel is compiled with.  error_model="numpy": 1/0 is inf, never an
# exception; "contract" lets LLVM fuse a*b+c into one FMA (a rounding change well below
# float32's 1e-5 and float64's 1e-12 tolerances).  Row reductions add "reassoc" so their
# sums vectorize.  No "nnan"/"ninf": NaN and inf keep their IEEE meaning.
ELEMENTWISE_FASTMATH = ("contract",)
REDUCTION_FASTMATH = ("contract", "reassoc")


class CodegenError(GraphError):
    """Numba could not compile the kernel of a graph node; names the node, the op and the
    line of the generated source."""


class Unsupported(Exception):
    """An expression the scalar printer cannot express (the node falls back to NumPy)."""


# ---------------------------------------------------------------------------------------
# SymPy -> Numba scalar code

# SymPy function -> (NumPy scalar function, fastmath helper name or None).  The helpers
# exist for float32 and float64 and vectorize; the NumPy ones are scalar libm calls.
_FASTMATH = {sp.exp: "exp", sp.log: "log", sp.tanh: "tanh", sp.erf: "erf",
             expm1: "expm1", log1p: "log1p"}
_NUMPY_FUNCTIONS = {sp.sin: "np.sin", sp.cos: "np.cos", sp.tan: "np.tan",
                    sp.sinh: "np.sinh", sp.cosh: "np.cosh", sp.asin: "np.arcsin",
                    sp.acos: "np.arccos", sp.atan: "np.arctan", sp.asinh: "np.arcsinh",
                    sp.acosh: "np.arccosh", sp.atanh: "np.arctanh", sp.floor: "np.floor",
                    sp.ceiling: "np.ceil", log2: "np.log2", log10: "np.log10", exp2: "np.exp2",
                    rint: "np.rint", real_cbrt: "np.cbrt", sp.erfc: "math.erfc"}
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
            return self._function_call("exp", exp)
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
        if exp == sp.Rational(1, 2):
            return f"np.sqrt({b})", "num"
        if exp == sp.Rational(-1, 2):
            return f"({self.const(1)} / np.sqrt({b}))", "num"
        return f"np.power({b}, {self.numeric(exp)})", "num"

    def _function_call(self, name, arg):
        if not self._float():
            raise Unsupported(f"{name} in {self.dtype} code")
        helper = f"{name}_{SHORT[self.dtype]}"
        self.helpers.add(helper)
        return f"{helper}({self.numeric(arg)})", "num"

    def _function(self, e):
        cls = type(e)
        for sym_fn, name in _FASTMATH.items():
            if cls is sym_fn:
                return self._function_call(name, e.args[0])
        for sym_fn, name in _NUMPY_FUNCTIONS.items():
            if cls is sym_fn:
                if not self._float():
                    raise Unsupported(f"{cls.__name__} in {self.dtype} code")
                return f"{name}({self.numeric(e.args[0])})", "num"
        if cls is sp.Abs:
            return f"abs({self.numeric(e.args[0])})", "num"
        if cls is sp.sign:
            x = self.numeric(e.args[0])
            one, zero = self.const(1), self.const(0)
            return f"({one} if {x} > {zero} else (-{one} if {x} < {zero} else {x}))", "num"
        if cls is sp.Heaviside:
            x = self.numeric(e.args[0])
            h0 = self.numeric(e.args[1]) if len(e.args) > 1 else self.const(0.5)
            one, zero = self.const(1), self.const(0)
            return (f"({one} if {x} > {zero} else ({zero} if {x} < {zero} else "
                    f"({h0} if {x} == {zero} else {x})))"), "num"
        if cls is sp.atan2:
            return f"np.arctan2({self.numeric(e.args[0])}, {self.numeric(e.args[1])})", "num"
        raise Unsupported(f"no Numba form for {comment(cls.__name__)}")

    def _minmax(self, e):
        helper = "maximum" if isinstance(e, sp.Max) else "minimum"
        self.helpers.add(helper)
        args = sorted(e.args, key=lambda a: (a.is_number, sp.default_sort_key(a)))
        text = self.numeric(args[0])
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
        """A readable identifier, unique per body: ``sigmoid_f32_F_3fa2c1d09e``."""
        return f"{self.stem}_{self.key[:10]}"

    @property
    def symbol(self) -> str:
        """The C symbol of the kernel's entry point in its native object."""
        return f"graphc_{self.key[:32]}"


_KIND_TEXT = {"F": "full", "S": "scalar", "R": "row (inner axis)", "C": "column (outer axes)"}


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
        header.append(f"# {comment(s.label)}: {comment(s.expr)}")
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
        replacements, (reduced,) = sp.cse(cond if cond is not None else s.expr,
                                          symbols=sp.numbered_symbols(f"c{j}_"))
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


# A fused loop body longer than this (in cost units: 10 per exp/log/tanh/erf call, 1 per
# arithmetic op) is split into phases over a tile of TILE elements, each phase one inner
# loop, values crossing phases kept in a scratch tile.  Measured on W3's fused forward and
# backward (7 transcendental calls per element, float32, AVX-512 machine tuned for 256-bit
# vectors): one loop 24 ns/element (the body's values do not fit the vector registers and
# spill), phases of about 20 units 7 ns/element (tiles of 256 to 2048 elements: within 10%).
PHASE_COST = 20
TILE = 512
CHEAP = 2  # cost up to which a value a later phase needs is computed again, not stored
_CALL = re.compile(r"\b(?:exp|expm1|log|log1p|tanh|erf)_f(?:32|64)\(")

# A full sum's partial sums: one per column and block of ACC_ROWS rows, added pairwise by
# NumPy after the call (each adds at most ACC_ROWS values in turn, so the error does not
# grow with the length as one accumulator per column did: ``FusedInstance.output``).
ACC_ROWS = 128


def fused_kernel(label: str, steps_text: list[str], bound, exprs, symbols, operand_dtypes,
                 kinds, work: str, accumulate) -> KernelSpec:
    """One loop nest computing every output of a fused group.

    ``bound``: ``(symbol, expression)`` statements, one per step of the group in order
    (``FusedGroup.statements``: the graph's operations in the graph's order), and ``exprs``
    the outputs, expressions of them and of ``symbols`` (one per operand); ``sympy.cse``
    extracts what the statements have in common, so each value is computed once per
    element.  Operands are loaded (converted to ``work``,
    bool operands kept bool) where a phase uses them, ``S`` operands once per call and
    ``C`` once per row.  ``accumulate[m]``: None for an output stored per element, else
    output ``m`` is a sum over the outer loop in ``accumulator_dtype(work)``: ``"column"``
    adds row i into ``out[j]`` (n1 entries), ``"full"`` (partial sums of a full sum) into
    ``out[(i // ACC_ROWS) * n1 + j]`` (one row of n1 per block of ACC_ROWS rows).  With any
    ``R``/``C`` operand or accumulator the loop is ``(n0, n1)``, else flat over ``n``.  A
    long body is split in phases (PHASE_COST); the kernel then takes a scratch pointer after
    the operands, of ``spec.scratch`` elements per call.
    """
    two_d = any(k in "RC" for k in kinds) or any(accumulate)
    printer = ScalarPrinter(work, {s: f"x{k}" for k, s in enumerate(symbols)},
                            {s for s, d in zip(symbols, operand_dtypes) if d == "bool"})
    bound, exprs = _share_powers(*_hoist_branches(bound, exprs))
    replacements, reduced = sp.cse([e for _, e in bound] + list(exprs),
                                   symbols=sp.numbered_symbols("c"))
    statements = replacements + [(sym, e) for (sym, _), e in zip(bound, reduced)]
    statements, reduced = _inline_trivial(_in_dependency_order(statements), reduced)
    body = []  # (name, text, names used)
    for sym, sub in statements:
        text, kind = printer._p(sub)
        used = {printer.names[f] for f in sub.free_symbols}
        printer.names[sym] = str(sym)
        if kind == "bool":
            printer.bool_symbols.add(sym)
        body.append((str(sym), text, used))
    index = "base + j" if two_d else "j"
    stores = []
    for m, (expr, acc) in enumerate(zip(reduced[len(bound):], accumulate)):
        target = {"column": f"out{m}[j]", "full": f"out{m}[row + j]"}.get(
            acc, f"out{m}[{index}]")
        stores.append((target, printer.numeric(expr),
                       {printer.names[f] for f in expr.free_symbols}, acc))
    phases = _phases(body, stores)
    loops, slots = _phase_loops(phases, body, stores, kinds, operand_dtypes, work, printer,
                                two_d)
    outs = [f"out{m}" for m in range(len(exprs))]
    operands = [f"a{k}" for k in range(len(kinds))]
    sizes = ["n0", "n1"] if two_d else ["n"]
    scratch = ["t"] if slots else []
    lines = [f"def kernel({', '.join(outs + operands + scratch + sizes)}):"]
    lines += [f"    x{k} = {_load(k, '[0]', operand_dtypes, work, printer)}"
              for k, kind in enumerate(kinds) if kind == "S"]
    if two_d:
        lines += ["    for i in range(n0):", "        base = i * n1"]
        if "full" in accumulate:
            lines.append(f"        row = (i // {ACC_ROWS}) * n1")
        lines += [f"        x{k} = {_load(k, '[i]', operand_dtypes, work, printer)}"
                  for k, kind in enumerate(kinds) if kind == "C"]
        lines += ["        " + line for line in loops]
    else:
        lines += ["    " + line for line in loops]
    header = [f"# graphc kernel: {comment(label)} (fused group, one loop nest"
              + (f", {len(phases)} phases over tiles of {TILE})" if len(phases) > 1 else ")"),
              "# operands: " + ", ".join(f"a{k} {operand_dtypes[k]} {_KIND_TEXT[kind]}"
                                         for k, kind in enumerate(kinds)),
              "# outputs: " + ", ".join(f"out{m} {accumulator_dtype(work)} {_ACC_TEXT[a]}"
                                        if a else f"out{m} {work} full"
                                        for m, a in enumerate(accumulate))]
    header += [f"#   {comment(text)}" for text in steps_text]
    source = _module(header, printer.helpers, lines)
    stem = identifier(label) + f"_{SHORT[work]}_{''.join(kinds)}" + \
        ("_acc" if any(accumulate) else "")
    params = tuple(("ptr", accumulator_dtype(work) if a else work) for a in accumulate) + \
        tuple(("ptr", d) for d in operand_dtypes) + \
        ((("ptr", work),) if slots else ()) + (("int",),) * len(sizes)
    return KernelSpec(stem, source, params, ELEMENTWISE_FASTMATH,
                      tuple(sorted(printer.helpers)), scratch=slots * TILE)


_ACC_TEXT = {"column": "column sums", "full": f"partial sums per {ACC_ROWS} rows"}


def accumulator_dtype(work: str) -> str:
    """The dtype a fused sum accumulates in: float64 for float32 values.  Each of the n1
    accumulators adds n0 values one after the other; in float32 that loses digits as
    n0 grows (2**40 values of ~1 summed to 1.374e11 instead of 1.0995e12), in float64 the
    error stays below NumPy's pairwise float32 sum."""
    return "float64" if work == "float32" else work


def _load(k, index, operand_dtypes, work, printer) -> str:
    value = f"a{k}{index}"
    if operand_dtypes[k] == "bool":
        return f"({value} != 0)"
    return value if operand_dtypes[k] == work else f"{printer._cast()}({value})"


def _cost(text: str) -> int:
    """About the cycles of a statement: 10 per function call, 4 per division (a vector
    division takes several cycles), else about 1 per operation."""
    return 10 * len(_CALL.findall(text)) + 4 * text.count(" / ") + text.count(" ") // 2 + 1


def _phases(body, stores) -> list[list[int]]:
    """Statements (indices into ``body``) grouped in consecutive phases of about
    PHASE_COST; the stores go with the last phase."""
    phases, current, cost = [], [], 0
    for k, (_, text, _) in enumerate(body):
        c = _cost(text)
        if current and cost + c > PHASE_COST:
            phases.append(current)
            current, cost = [], 0
        current.append(k)
        cost += c
    if current or not phases:
        phases.append(current)
    if len(phases) > 1 and sum(_cost(body[k][1]) for k in phases[-1]) + \
            sum(_cost(s[1]) for s in stores) < PHASE_COST // 3:
        phases[-2:] = [phases[-2] + phases[-1]]  # a tiny last phase is not worth a loop
    return phases


def _phase_loops(phases, body, stores, kinds, operand_dtypes, work, printer, two_d):
    """The inner loops, one per phase, and the number of scratch slots they use.

    A value a later phase needs is stored in a scratch slot (a tile of TILE elements) by
    the phase that computes it and loaded back, unless it is cheap (no function call, a
    few operations): then the later phase computes it again."""
    if len(phases) == 1:
        head = ["for j in range(n1):" if two_d else "for j in range(n):"]
        return head + ["    " + line for line in _phase_body(
            phases[0], body, stores, kinds, operand_dtypes, work, printer, two_d)], 0
    where = {body[k][0]: k for k in range(len(body))}
    phase_of = {body[k][0]: p for p, ks in enumerate(phases) for k in ks}
    cheap = {body[k][0] for k in range(len(body)) if _cost(body[k][1]) <= CHEAP}
    plans = []
    for p, ks in enumerate(phases):
        stmts = list(ks)
        needed = set().union(*(body[k][2] for k in ks))
        if p == len(phases) - 1:
            needed |= set().union(*(s[2] for s in stores))
        reload, recompute, todo = set(), [], [n for n in needed if phase_of.get(n, p) < p]
        while todo:
            name = todo.pop()
            if name in reload or where[name] in recompute:
                continue
            if name in cheap and name in needed:  # (its own operands are loaded, not
                recompute.append(where[name])     # recomputed: no chains of recomputation)
                todo += [n for n in body[where[name]][2] if phase_of.get(n, p) < p]
            else:
                reload.add(name)
        plans.append((sorted(recompute) + stmts, reload))
    crossing = sorted(set().union(*(r for _, r in plans)), key=lambda n: where[n])
    slot = {name: k for k, name in enumerate(crossing)}
    size = "n1" if two_d else "n"
    lines = [f"for j0 in range(0, {size}, {TILE}):", f"    m = min({TILE}, {size} - j0)"]
    for p, (ks, reload) in enumerate(plans):
        keep = {name for name in slot if phase_of[name] == p}
        last = p == len(plans) - 1
        ks = _live(ks, body, keep | (set().union(*(s[2] for s in stores)) if last else set()))
        lines += ["    for jj in range(m):", "        j = j0 + jj"]
        lines += ["        " + line for line in _phase_body(
            ks, body, stores if last else [], kinds, operand_dtypes, work,
            printer, two_d, {n: slot[n] for n in sorted(reload, key=where.get)}, keep, slot)]
    return lines, len(crossing)


def _live(ks, body, wanted) -> list[int]:
    """The statements of ``ks`` (in order) a phase needs: those computing a value in
    ``wanted`` (stored in scratch or to an output) and those a kept statement reads.  A
    cheap value a later phase computes again is not computed here for nothing."""
    live, kept = set(wanted), []
    for k in reversed(ks):
        if body[k][0] in live:
            kept.append(k)
            live |= set(body[k][2])
    return kept[::-1]


def _phase_body(ks, body, stores, kinds, operand_dtypes, work, printer, two_d, reload=(),
                keep=(), slot=None) -> list[str]:
    used = set().union(*(body[k][2] for k in ks), *(s[2] for s in stores))
    index = {"F": "[base + j]", "R": "[j]"} if two_d else {"F": "[j]"}
    reload = dict(reload)
    lines = [f"x{k} = {_load(k, index[kind], operand_dtypes, work, printer)}"
             for k, kind in enumerate(kinds) if kind in index and f"x{k}" in used]
    lines += [f"{name} = t[{n * TILE} + jj]" for name, n in reload.items() if name in used]
    lines += [f"{body[k][0]} = {body[k][1]}" for k in ks]
    lines += [f"t[{slot[name] * TILE} + jj] = {name}" for name in sorted(keep)]
    lines += [f"{target} += {value}" if acc else f"{target} = {value}"
              for target, value, _, acc in stores]
    return lines


def _inline_trivial(statements, exprs):
    """Statements that only name a number or another value, substituted into their uses
    (so that no phase stores a constant or a copy in scratch)."""
    subs, kept = {}, []
    with sp.evaluate(False):  # substituting must not simplify: s - c with c = s is not 0
        for sym, e in statements:
            e = e.xreplace(subs) if subs else e
            if e.is_Atom or e.is_number:
                subs[sym] = e
            else:
                kept.append((sym, e))
        return kept, [e.xreplace(subs) if subs else e for e in exprs]


def _share_powers(bound, exprs):
    """Powers of values computed anyway, as powers of one bound value: exp(n·u) as e**n
    with e = exp(u) where exp(u) is computed too (the derivative of a stable form brings in
    exp(-2|x|) next to the form's own exp(-|x|): silu, sigmoid), and b**-n as r**n with
    r = 1/b where 1/b is computed too.  A multiplication instead of an exp or a division
    (bound symbols, because SymPy folds exp(u)**2 back into exp(2u))."""
    everything = [e for _, e in bound] + list(exprs)
    exp_args = {a.args[0] for e in everything for a in e.atoms(sp.exp)}
    inverses = {a.base for e in everything for a in e.atoms(sp.Pow) if a.exp == -1}
    shared: dict = {}  # the bound value -> [(expression, power)]
    for a in exp_args:
        n, rest = a.as_coeff_Mul()
        base = rest if n > 0 else -rest
        if n.is_Integer and 2 <= abs(n) <= 4 and base in exp_args:
            shared.setdefault(sp.exp(base), []).append((sp.exp(a), abs(int(n))))
    for e in everything:
        for a in e.atoms(sp.Pow):
            if a.exp.is_Integer and -4 <= a.exp <= -2 and a.base in inverses:
                uses = shared.setdefault(1 / a.base, [])
                if (a, -int(a.exp)) not in uses:
                    uses.append((a, -int(a.exp)))
    if not shared:
        return bound, exprs
    bound, defined = list(bound), [sym for sym, _ in bound]
    ordered = sorted(shared.items(), key=lambda kv: sp.default_sort_key(kv[0]))
    for k, (value, uses) in enumerate(ordered):
        v = sp.Symbol(f"e{k}", real=True)
        subs = {value: v} | {x: v ** n for x, n in uses}
        bound = [(sym, x.xreplace(subs)) for sym, x in bound]
        exprs = [x.xreplace(subs) for x in exprs]
        after = [i for i, sym in enumerate(defined) if sym in value.free_symbols]
        at = max(after) + 1 if after else 0
        bound.insert(at, (v, value))
        defined.insert(at, v)
    return bound, exprs


def _hoist_branches(bound, exprs):
    """Bind every non-trivial value of a Piecewise branch to its own statement.

    A conditional expression whose branches are plain values is a select, which LLVM
    vectorizes; a branch holding a computation (an exp) stays a branch, and one such branch
    keeps the whole loop scalar.  Every branch is computed, as ``numpy.where`` does."""
    memo: dict = {}
    extra: list = []
    names = sp.numbered_symbols("p", real=True)

    def visit(e):
        if e.is_Atom or not e.args:
            return e
        hit = memo.get(e)
        if hit is not None:
            return hit
        args = [visit(a) for a in e.args]
        if isinstance(e, sp.Piecewise):
            pairs = []
            for value, cond in args:
                if not value.is_Atom:
                    sym = next(names)
                    extra.append((sym, value))
                    value = sym
                pairs.append((value, cond))
            with sp.evaluate(False):
                out = sp.Piecewise(*pairs)
        elif all(a is b for a, b in zip(args, e.args)):
            out = e
        else:
            with sp.evaluate(False):
                out = e.func(*args)
        memo[e] = out
        return out

    bound = [(sym, visit(e)) for sym, e in bound]
    exprs = [visit(e) for e in exprs]
    return extra + bound, exprs


def _in_dependency_order(statements):
    """``(symbol, expression)`` pairs ordered so that each comes after those it uses."""
    defined = {sym: k for k, (sym, _) in enumerate(statements)}
    # sorted: the source (the kernel's cache key) must not depend on set order, which
    # follows string hashing and changes from process to process
    deps = [sorted(defined[s] for s in e.free_symbols if s in defined) for _, e in statements]
    order, state = [], [0] * len(statements)
    for root in range(len(statements)):
        stack = [root]
        while stack:
            k = stack[-1]
            if state[k] == 2:
                stack.pop()
                continue
            pending = [d for d in deps[k] if state[d] != 2]
            if state[k] == 0 and pending:
                state[k] = 1
                stack.extend(pending)
                continue
            state[k] = 2
            stack.pop()
            order.append(statements[k])
    return order


def _module(header, helpers, body) -> str:
    fastmath = sorted(h for h in helpers if h not in ("maximum", "minimum"))
    generic = sorted(h for h in helpers if h in ("maximum", "minimum"))
    imports = ["import numpy as np"]
    if any("math.erfc(" in line for line in body):  # the one libm function NumPy lacks
        imports = ["import math", ""] + imports
    names = generic + fastmath
    if names:
        imports += ["", f"from graphc.fastmath import {', '.join(names)}"]
    return "\n".join(header + [""] + imports + ["", ""] + body) + "\n"


# ---------------------------------------------------------------------------------------
# Row kernels: softmax, log_softmax, logsumexp over the last (contiguous) axis


def row_kernel(kind: str, dtype: str) -> KernelSpec:
    """``kind`` in softmax, log_softmax, logsumexp over rows of ``cols`` contiguous values.

    The formulas are the reference's: m = max (NaN propagates), e = exp(x - m),
    softmax = e / sum(e); logsumexp shifts by m only where m is finite, and
    log_softmax = (x - m) - log(s), which does not cancel as x - logsumexp would.
    """
    p = ScalarPrinter(dtype, {})
    c, exp = p.const, f"exp_{SHORT[dtype]}"
    lines = ["def kernel(out, x, rows, cols):",
             "    for r in range(rows):",
             "        base = r * cols",
             "        m = x[base]",
             "        for j in range(1, cols):",
             "            m = maximum(m, x[base + j])"]
    if kind == "softmax":
        lines += [f"        s = {c(0)}",
                  "        for j in range(cols):",
                  f"            e = {exp}(x[base + j] - m)",
                  "            out[base + j] = e",
                  "            s += e",
                  "        for j in range(cols):",
                  "            out[base + j] = out[base + j] / s"]
    else:
        lines += [f"        m = m if abs(m) < {c(np.inf)} else {c(0)}  # no shift by inf or nan",
                  f"        s = {c(0)}",
                  "        for j in range(cols):",
                  f"            s += {exp}(x[base + j] - m)",
                  f"        ls = {p._cast()}(np.log(np.float64(s)))"]
        if kind == "logsumexp":
            lines.append("        out[r] = m + ls")
        else:
            lines += ["        for j in range(cols):",
                      "            out[base + j] = (x[base + j] - m) - ls"]
    header = [f"# graphc kernel: {kind} over contiguous rows, {dtype}"]
    source = _module(header, {"maximum", exp}, lines)
    params = (("ptr", dtype), ("ptr", dtype), ("int",), ("int",))
    return KernelSpec(f"{kind}_{SHORT[dtype]}_rows", source, params, REDUCTION_FASTMATH,
                      ("maximum", exp))


def max_pool_kernel(kind: str, dtype: str, window=None) -> KernelSpec:
    """Max pooling of ``planes`` contiguous (H, W) planes, one window geometry per call
    (sizes, not part of the compiled code): ``"forward"`` writes each (Ho, Wo) window's
    maximum; ``"grad"`` writes an (H, W) plane per plane: each window's g added at the
    window's first maximum (the first NaN if the window has one), the reference's rule.
    Positions in the padding count as -inf and are never written.

    ``window=(kh, kw, sh, sw)``: a kernel for that window and no padding, with the window
    unrolled and no bounds checks (its size arguments are then ignored), which LLVM
    vectorizes across output columns."""
    c = ScalarPrinter(dtype, {}).const
    lines = ["def kernel(out, x, g, planes, h, w, ho, wo, kh, kw, sh, sw, ph, pw):"
             if kind == "grad" else
             "def kernel(out, x, planes, h, w, ho, wo, kh, kw, sh, sw, ph, pw):"]
    if kind == "grad":
        lines += ["    for k in range(planes * h * w):",
                  f"        out[k] = {c(0)}"]
    if window is not None:
        return _max_pool_unrolled(kind, dtype, window, lines)
    lines += ["    for p in range(planes):",
              "        base = p * h * w",
              "        for oh in range(ho):",
              "            for ow in range(wo):",
              f"                m = -{c(np.inf)}",
              "                at = -1",
              "                for i in range(kh):",
              "                    ih = oh * sh - ph + i",
              "                    for j in range(kw):",
              "                        iw = ow * sw - pw + j",
              "                        if 0 <= ih < h and 0 <= iw < w:",
              "                            v = x[base + ih * w + iw]",
              "                            if m == m and (v > m or v != v or at == -1):",
              "                                m = v",
              "                                at = ih * w + iw",
              "                        elif at == -1:  # the padding (-inf) comes first",
              "                            at = -2"]
    if kind == "grad":
        lines += ["                if at >= 0:",
                  "                    out[base + at] += g[(p * ho + oh) * wo + ow]"]
    else:
        lines += ["                out[(p * ho + oh) * wo + ow] = m"]
    header = [f"# graphc kernel: max pooling {kind} over contiguous (H, W) planes, {dtype}"]
    source = _module(header, set(), lines)
    params = (("ptr", dtype),) * (3 if kind == "grad" else 2) + (("int",),) * 11
    return KernelSpec(f"max_pool_{kind}_{SHORT[dtype]}", source, params, ())


def _max_pool_unrolled(kind, dtype, window, lines) -> KernelSpec:
    kh, kw, sh, sw = window
    lines = lines + ["    for p in range(planes):",
                     "        base = p * h * w",
                     "        for oh in range(ho):",
                     f"            row = base + oh * {sh} * w",
                     "            for ow in range(wo):",
                     f"                b0 = row + ow * {sw}",
                     "                m = x[b0]",
                     "                at = 0"]
    for i in range(kh):
        for j in range(kw):
            if i == j == 0:
                continue
            lines += [f"                v = x[b0 + {i} * w + {j}]",
                      "                take = (m == m) & ((v > m) | (v != v))",
                      "                m = v if take else m"]
            if kind == "grad":
                lines.append(f"                at = {i} * w + {j} if take else at")
    if kind == "grad":
        lines.append("                out[b0 + at] += g[(p * ho + oh) * wo + ow]")
    else:
        lines.append("                out[(p * ho + oh) * wo + ow] = m")
    header = [f"# graphc kernel: max pooling {kind}, {kh}x{kw} windows, stride {sh}x{sw}, no "
              f"padding, over contiguous (H, W) planes, {dtype}"]
    params = (("ptr", dtype),) * (3 if kind == "grad" else 2) + (("int",),) * 11
    return KernelSpec(f"max_pool_{kind}_{kh}x{kw}_{SHORT[dtype]}",
                      _module(header, set(), lines), params, ())


_CONV_SIZES = "n, c, h, w, kh, kw, ho, wo, sh, sw, ph, pw, dh, dw"
# The loops of im2col and col2im: batch, channel, kernel position (k), output row (ih the
# input row it reads); the kernels add the output column loop.
_CONV_LOOPS = ["    kk = c * kh * kw",
               "    pp = ho * wo",
               "    for b in range(n):",
               "        for ci in range(c):",
               "            base = (b * c + ci) * h",
               "            for p in range(kh):",
               "                for q in range(kw):",
               "                    k = (ci * kh + p) * kw + q",
               "                    for i in range(ho):",
               "                        ih = i * sh - ph + p * dh"]


def im2col_kernel(layout: str, dtype: str) -> KernelSpec:
    """im2col of a contiguous (N, C, H, W) array for one window geometry (sizes, not part
    of the compiled code): ``"cols"`` writes (N, K, P) (K = C*kh*kw row-major, P = Ho*Wo),
    the right operand of ``kernel @ cols``; ``"kmajor"`` writes (K, N*P), for one GEMM
    over the whole batch.  Positions in the padding read 0."""
    zero = ScalarPrinter(dtype, {}).const(0)
    store = ("cols[(b * kk + k) * pp + i * wo + j] = v" if layout == "cols" else
             "cols[(k * n + b) * pp + i * wo + j] = v")
    lines = [f"def kernel(cols, x, {_CONV_SIZES}):", *_CONV_LOOPS,
             "                        for j in range(wo):",
             "                            iw = j * sw - pw + q * dw",
             f"                            v = {zero}",
             "                            if 0 <= ih < h and 0 <= iw < w:",
             "                                v = x[(base + ih) * w + iw]",
             f"                            {store}"]
    header = [f"# graphc kernel: im2col into {layout} layout, {dtype}"]
    params = (("ptr", dtype), ("ptr", dtype)) + (("int",),) * 14
    return KernelSpec(f"im2col_{layout}_{SHORT[dtype]}", _module(header, set(), lines), params,
                      ())


def col2im_kernel(dtype: str) -> KernelSpec:
    """The adjoint of :func:`im2col_kernel` (``"cols"`` layout): (N, K, P) added into a
    zeroed contiguous (N, C, H, W) array at the positions each window read."""
    zero = ScalarPrinter(dtype, {}).const(0)
    lines = [f"def kernel(out, cols, {_CONV_SIZES}):",
             "    for k in range(n * c * h * w):",
             f"        out[k] = {zero}", *_CONV_LOOPS,
             "                        if 0 <= ih < h:",
             "                            for j in range(wo):",
             "                                iw = j * sw - pw + q * dw",
             "                                if 0 <= iw < w:",
             "                                    out[(base + ih) * w + iw] += "
             "cols[(b * kk + k) * pp + i * wo + j]"]
    header = [f"# graphc kernel: col2im (adjoint of im2col), {dtype}"]
    params = (("ptr", dtype), ("ptr", dtype)) + (("int",),) * 14
    return KernelSpec(f"col2im_{SHORT[dtype]}", _module(header, set(), lines), params, ())


def sum_kernel(kind: str, dtype: str) -> KernelSpec:
    """Sums of an ``(n0, n1)`` contiguous array: over rows (``"leading"``: out has n1
    entries, added row by row in NumPy's order, so the result is the same to the bit) or
    within rows (``"trailing"``: out has n0 entries; the inner sum is vectorized, which
    reorders it as NumPy's pairwise sum does, differently)."""
    zero = ScalarPrinter(dtype, {}).const(0)
    if kind == "leading":
        lines = ["def kernel(out, x, n0, n1):",
                 "    for j in range(n1):",
                 f"        out[j] = {zero}",
                 "    for i in range(n0):",
                 "        base = i * n1",
                 "        for j in range(n1):",
                 "            out[j] += x[base + j]"]
        fastmath = ELEMENTWISE_FASTMATH
    else:
        lines = ["def kernel(out, x, n0, n1):",
                 "    for i in range(n0):",
                 "        base = i * n1",
                 f"        s = {zero}",
                 "        for j in range(n1):",
                 "            s += x[base + j]",
                 "        out[i] = s"]
        fastmath = REDUCTION_FASTMATH
    header = [f"# graphc kernel: sum over the {kind} axes of a contiguous array, {dtype}"]
    source = _module(header, set(), lines)
    params = (("ptr", dtype), ("ptr", dtype), ("int",), ("int",))
    return KernelSpec(f"sum_{kind}_{SHORT[dtype]}", source, params, fastmath)


# ---------------------------------------------------------------------------------------
# NumPy ufunc forms: a single-ufunc expression runs as that ufunc (same results as the
# reference interpreter, no compile time, and as fast as a loop for one operation)

_UFUNC_FUNCTIONS = {sp.exp: "exp", sp.log: "log", sp.sin: "sin", sp.cos: "cos",
                    sp.tanh: "tanh", sp.Abs: "absolute", expm1: "expm1", log1p: "log1p"}
_UFUNC_RELATIONS = {sp.StrictLessThan: "less", sp.LessThan: "less_equal",
                    sp.StrictGreaterThan: "greater", sp.GreaterThan: "greater_equal",
                    sp.Eq: "equal", sp.Ne: "not_equal"}


def ufunc_form(expr, args):
    """``(ufunc name, operands)`` if ``expr`` is one NumPy ufunc applied to the argument
    symbols and numbers, else None.  Operands are ``("arg", k)`` or ``("num", value)``.

    >>> a, b = sp.symbols("a b", real=True)
    >>> ufunc_form(sp.Max(0, a), (a,))
    ('maximum', (('arg', 0), ('num', 0)))
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
        a, b = sorted(expr.args, key=lambda e: e.is_number)
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


# ---------------------------------------------------------------------------------------
# Compiling a kernel module to a native object (needs Numba; imported only here)


@dataclass(frozen=True)
class NativeObject:
    """Relocatable native code for one kernel and the C symbol of its entry point."""

    code: bytes
    symbol: str
    externals: tuple[str, ...]


def import_kernel_module(path: str, spec: KernelSpec):
    """Execute the kernel file at ``path`` as a module (tracebacks point into the file)."""
    loader_spec = importlib.util.spec_from_file_location(f"graphc_kernels.{spec.name}", path)
    module = importlib.util.module_from_spec(loader_spec)
    loader_spec.loader.exec_module(module)
    return module


def numba_signature(spec: KernelSpec):
    from numba import types
    args = [types.CPointer(getattr(types, NUMBA_TYPES[p[1]])) if p[0] == "ptr" else types.intp
            for p in spec.params]
    return types.void(*args)


def compile_object(spec: KernelSpec, path: str) -> NativeObject:
    """Compile the kernel module at ``path`` with Numba; return its native object.

    Numba's own calling convention is ``i32 f(ret*, excinfo*, args...)``; a small LLVM
    wrapper gives the kernel a plain C entry ``void graphc_<key>(args...)`` (our kernels
    cannot raise, so the status is dropped), everything else is internalized and dead
    code (Numba's CPython wrapper) removed, so the object needs no Numba runtime symbol.
    """
    from numba import config, njit

    if config.DISABLE_JIT:
        raise RuntimeError("NUMBA_DISABLE_JIT is set, so Numba compiles nothing; unset it or "
                           "use backend='numpy'")
    module = import_kernel_module(path, spec)
    signature = numba_signature(spec)
    dispatcher = njit(signature, error_model="numpy", fastmath=set(spec.fastmath),
                      nogil=True, boundscheck=False)(module.kernel)
    cres = dispatcher.overloads[signature.args]
    return emit_object(cres.library.get_llvm_str(), cres.fndesc.llvm_func_name, spec)


def _llvm_type(param) -> str:
    return "ptr" if param[0] == "ptr" else "i64"


def emit_object(llvm_ir: str, native: str, spec: KernelSpec) -> NativeObject:
    """Wrap Numba's native function ``native`` (in ``llvm_ir``) in a C entry point and emit
    an object file for the host CPU."""
    import llvmlite.binding as llvm

    module = llvm.parse_assembly(llvm_ir)
    fn = module.get_function(native)
    args = [_llvm_type(p) for p in spec.params]
    declared = [a.type for a in fn.arguments]
    if len(declared) != len(args) + 2:
        raise CodegenError(f"unexpected Numba calling convention for {spec.name}: "
                           f"{len(declared)} arguments")
    symbol = spec.symbol
    formals = ", ".join(f"{t} %a{k}" for k, t in enumerate(args))
    actuals = ", ".join(f"{t} %a{k}" for k, t in enumerate(args))
    wrapper = llvm.parse_assembly(
        f'declare i32 @"{native}"(ptr, ptr, {", ".join(args)})\n'
        f"define void @{symbol}({formals}) {{\n"
        "  %ret = alloca [32 x i8], align 16\n"
        "  %exc = alloca [32 x i8], align 16\n"
        f'  %status = call i32 @"{native}"(ptr %ret, ptr %exc, {actuals})\n'
        "  ret void\n}\n")
    wrapper.triple, wrapper.data_layout = module.triple, module.data_layout
    module.link_in(wrapper)
    for g in list(module.functions) + list(module.global_variables):
        if not g.is_declaration and g.name != symbol:
            g.linkage = "internal"
    tm = target_machine()
    pb = llvm.create_pass_builder(tm, llvm.create_pipeline_tuning_options(speed_level=3))
    mpm = llvm.create_new_module_pass_manager()
    mpm.add_global_dead_code_eliminate_pass()
    mpm.add_strip_dead_prototype_pass()
    mpm.run(module, pb)
    module.verify()
    externals = tuple(sorted(
        g.name for g in list(module.functions) + list(module.global_variables)
        if g.is_declaration and not g.name.startswith("llvm.")))
    return NativeObject(tm.emit_object(module), symbol, externals)


_TM = None


def target_machine():
    """A target machine for the host CPU with Numba's JIT settings."""
    global _TM
    if _TM is None:
        import llvmlite.binding as llvm
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        target = llvm.Target.from_default_triple()
        _TM = target.create_target_machine(
            cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(),
            opt=3, reloc="static" if target.name.startswith("x86") else "default",
            codemodel="jitdefault", jit=True)
    return _TM
