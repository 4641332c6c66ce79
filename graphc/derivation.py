"""How an elementwise op's derivatives are derived from its SymPy expression.

- :func:`diff`: ``sympy.diff`` with PyTorch's conventions where a derivative has no value
  (DiracDelta terms dropped, floor and ceiling 0);
- :func:`simplify`: ``sympy.simplify``, bounded in the size of what it is given;
- :func:`strong_zeros`: a product that is exactly 0 stays 0 at the singular points of its
  other factors (d/da a**b = 0 where b = 0, as ``torch.pow``);
- :func:`at_kinks`: the derivative of a stable form takes the derivative's own value at
  the kinks of the form's pieces (silu'' at 0 is 1/2: silu is evaluated with exp(-|x|));
- :func:`cse`: ``sympy.cse`` that leaves a quotient a division (:func:`keep_divisions`);
- :func:`in_terms_of_output`: the derivative written on the op's output y (sigmoid' =
  y(1 - y), ReLU' = [y > 0]), accepted only when SymPy proves it (:func:`proves_on_output`)
  and it evaluates alike, y computed in float32 and float64 (:func:`evaluates_alike`).

>>> import sympy as sp
>>> a, b = sp.symbols("a b", real=True)
>>> strong_zeros(b * a**(b - 1))
Piecewise((0, Eq(b, 0)), (a**(b - 1)*b, True))
"""

from __future__ import annotations

import math

import numpy as np
import sympy as sp

from .disk_cache import remembered
from .errors import ElementwiseError
from .ir import located


def diff(expr: sp.Expr, x: sp.Symbol) -> sp.Expr:
    """d expr / dx with the conventions of PyTorch at points where the derivative has no
    value: DiracDelta terms are dropped (sign and Heaviside are differentiated away from
    their jump, where their derivative is 0) and floor and ceiling have derivative 0."""
    d = sp.diff(expr, x).replace(sp.DiracDelta, lambda *args: sp.S.Zero)
    d = d.replace(lambda e: isinstance(e, sp.Subs) and _is_step_derivative(e.expr), _zero)
    return d.replace(_is_step_derivative, _zero)


def at_kinks(stable: sp.Expr, expr: sp.Expr, x: sp.Symbol) -> sp.Expr:
    """``stable``, the derivative of an op's stable form (the evaluated form of the
    derivative ``expr``), with ``expr``'s own value at each point where a kink of the
    stable form's pieces (|u|, sign(u), max(u, 0), a branch at u >= 0) makes the two
    differ: differentiated there, the pieces count one-sided averages (sign(0) = 0), which
    is the limit for a first derivative but not for a second (silu'' at 0 was 0, not 1/2)."""
    kinks = [e.args[0] for e in stable.atoms(sp.Abs, sp.sign, sp.Heaviside)]
    kinks += [e.args[0] - e.args[1] for e in stable.atoms(sp.Max, sp.Min) if len(e.args) == 2]
    kinks += [c.lhs - c.rhs for pw in stable.atoms(sp.Piecewise) for _, c in pw.args
              if isinstance(c, sp.core.relational.Relational)]
    guards = []
    for u in dict.fromkeys(k for k in kinks if x in k.free_symbols):
        try:
            points = sp.solve(u, x)
        except (NotImplementedError, ValueError, TypeError):
            continue  # SymPy cannot solve u = 0 for x: that kink stays as it was
        for p in points:
            value = expr.subs(x, p)
            if p.has(x) or p.is_real is False or value.has(sp.nan, sp.zoo, sp.oo, -sp.oo) \
                    or (value - stable.subs(x, p)).equals(0):
                continue
            guards.append((value, sp.Eq(x, p)))
    return sp.Piecewise(*guards, (stable, True)) if guards else stable


def cse(exprs, symbols=None, bound=()):
    """``sympy.cse(exprs)`` (one expression or a list) as :func:`keep_divisions` leaves it:
    what the NumPy reference (``lambdify``) and the Numba kernels evaluate."""
    single = isinstance(exprs, sp.Basic)
    replacements, reduced = sp.cse([exprs] if single else list(exprs),
                                   **({"symbols": symbols} if symbols is not None else {}))
    replacements, reduced = keep_divisions(replacements, reduced, bound)
    return replacements, (reduced[0] if single else reduced)


def keep_divisions(replacements, exprs, bound=()):
    """``sympy.cse``'s result with each reciprocal it named (c = 1/b) written back as a
    division where it is a factor of a product: a/b stays a division, not a * c (at a
    subnormal b, 0 * (1/b) is 0 * inf = NaN where 0/b is 0).  c stays where it is raised
    to a power (c**2 for b**-2), and where b is a stable sigmoid's 1 + exp(-|u|) (from the
    statements ``bound`` and ``replacements``): in [1, 2], so a * c has a/b's NaN and inf
    (only its last bit can differ) and the sigmoid's two branches
    1/(1 + d) and d/(1 + d) share one division."""
    defs = dict(bound) | dict(replacements)
    inverses = {c: e for c, e in replacements
                if e.is_Pow and e.exp == -1 and not one_plus_exp_minus_abs(e.base, defs)}
    if not inverses:
        return replacements, exprs

    def divide(e):
        if not e.is_Mul or not any(a in inverses for a in e.args):
            return e
        return sp.Mul(*[sp.Pow(inverses[a].base, -1, evaluate=False) if a in inverses
                        else a for a in e.args], evaluate=False)

    replacements = [(c, e.replace(lambda x: x.is_Mul, divide)) for c, e in replacements]
    exprs = [e.replace(lambda x: x.is_Mul, divide) for e in exprs]
    used = set().union(*(e.free_symbols for _, e in replacements), *(e.free_symbols
                                                                     for e in exprs))
    return [(c, e) for c, e in replacements if c not in inverses or c in used], exprs


def one_plus_exp_minus_abs(b, defs) -> bool:
    """Whether ``b`` is 1 + exp(-k|u|), k > 0 (exp(...) itself or a statement of ``defs``)."""
    rest = b - 1
    rest = defs.get(rest, rest)
    if not isinstance(rest, sp.exp):
        return False
    k, u = (-rest.args[0]).as_coeff_Mul()
    return bool(k > 0) and isinstance(u, sp.Abs)


def _zero(*args):
    return sp.S.Zero


def _is_step_derivative(e) -> bool:
    return isinstance(e, sp.Derivative) and isinstance(e.expr, (sp.floor, sp.ceiling))


def _singular_factor(f) -> bool:
    """A factor that is infinite or NaN somewhere finite: a power with a variable base and
    a non-integer exponent (b * a**(b - 1) at a = 0), or a logarithm; not one whose base
    SymPy knows is positive (1/sqrt(x**2 + 1) is finite everywhere: guarding x/sqrt(x**2 + 1)
    at x = 0 made its own derivative there 0, not 1)."""
    if isinstance(f, sp.log):
        return f.args[0].is_positive is not True
    return isinstance(f, sp.Pow) and bool(f.base.free_symbols) and not f.exp.is_integer \
        and f.base.is_positive is not True


def strong_zeros(d: sp.Expr) -> sp.Expr:
    """Each product with a singular factor becomes ``Piecewise((0, zero), (product, True))``
    where ``zero`` is where another factor is exactly 0: a polynomial factor equal to 0, or
    u**e with e >= 0 next to log(u) at u = 0 (x log x -> 0).  Where the other factors are
    finite this is the product itself; at the singular points it is PyTorch's value for
    pow (0, not 0 * inf = NaN), and SymPy differentiates it again (grad of grad).  Common
    factors of a sum are pulled out first (b**2 a**(b-2) - b a**(b-2) is 0 at b = 1)."""
    if not any(_singular_factor(f) for f in d.atoms(sp.Pow, sp.log)):
        return d
    if isinstance(d, sp.Add):
        common = sp.factor_terms(d)
        if isinstance(common, sp.Mul):
            return _guard_product(common)
        return sp.Add(*[strong_zeros(t) for t in d.args])
    if isinstance(d, sp.Mul):
        return _guard_product(d)
    return d.func(*[strong_zeros(a) for a in d.args]) if d.args else d


def _guard_product(m: sp.Mul) -> sp.Expr:
    singular = any(_singular_factor(f) for f in m.args)
    if any(isinstance(f, sp.Add) and any(
            _singular_factor(g) for g in f.atoms(sp.Pow, sp.log)) for f in m.args):
        terms = sp.expand_mul(m)  # a**(b-1)*(b*log(a) + 1): guard each term
        if isinstance(terms, sp.Add):
            return sp.Add(*[_guard_product(t) if isinstance(t, sp.Mul) else strong_zeros(t)
                            for t in terms.args])
    m = m.func(*[strong_zeros(f) for f in m.args])
    if not singular or not isinstance(m, sp.Mul):
        return m
    logs = {f.args[0] for f in m.args if isinstance(f, sp.log)}
    zeros = [sp.Eq(f, 0) for f in m.args
             if f.free_symbols and not f.is_number and f.is_polynomial()]
    zeros += [sp.And(sp.Eq(f.base, 0), f.exp >= 0) for f in m.args
              if isinstance(f, sp.Pow) and f.base in logs]
    zero = sp.Or(*zeros)
    return m if zero is sp.false else sp.Piecewise((0, zero), (m, True))


_CHEAP_OPS = {"ADD": 1, "SUB": 1, "MUL": 1, "NEG": 1, "DIV": 2, "POW": 2}


def cost(expr: sp.Expr) -> int:
    """Rough evaluation cost: arithmetic 1-2, any function (exp, cosh, erf ...) 10."""
    ops = sp.count_ops(expr, visual=True)
    weights = {s: _CHEAP_OPS.get(s.name, 10) for s in ops.free_symbols}
    return int(ops.subs(weights))


# sp.simplify has no bound on its work (the derivative of tanh nested 6 deep: minutes), so
# larger expressions are kept as sp.diff gives them.  Every built-in is under these bounds
# (gelu_tanh': 38 operations, 1 function); at the bounds simplify takes about 2 s.
SIMPLIFY_MAX_OPS = 40
SIMPLIFY_MAX_FUNCTIONS = 4


def simplifiable(expr: sp.Expr) -> bool:
    """Whether ``expr`` is small enough for ``sp.simplify``: at most SIMPLIFY_MAX_OPS
    operations and SIMPLIFY_MAX_FUNCTIONS distinct function applications."""
    return sp.count_ops(expr) <= SIMPLIFY_MAX_OPS and \
        len(expr.atoms(sp.Function)) <= SIMPLIFY_MAX_FUNCTIONS


@remembered
def simplify(expr: sp.Expr) -> sp.Expr:
    """``sympy.simplify(expr)`` where it is no costlier and, with its :func:`strong_zeros`
    (which the derivatives get next), :func:`evaluates_alike`."""
    if not simplifiable(expr):
        return expr
    simpler = sp.simplify(expr)
    return simpler if cost(simpler) <= cost(expr) and evaluates_alike(
        expr, strong_zeros(simpler)) else expr


def check_stable(name: str, expr: sp.Expr, stable: sp.Expr, params: dict) -> None:
    """Refuse a ``stable=`` form that does not evaluate as ``expr`` (at its ``params``'
    defaults) where ``expr`` is finite (:func:`evaluates_alike`): ``stable`` is what every
    backend computes, so a wrong one was taken silently (x**3 for x**2: values x**3,
    gradients 2x)."""
    if stable is not expr and not evaluates_alike(expr.subs(params), stable.subs(params)):
        raise ElementwiseError(located(
            f"elementwise {name!r}: stable={stable} does not evaluate as {expr} (compared in "
            f"float32 and float64 at 0, ±0.5, ±2, ±1e19 and ±1e30 where {expr} is finite)"))


_PROBES = (0.0, 0.5, -0.5, 2.0, -2.0, 1e19, -1e19, 1e30, -1e30)
# and, for a form written on the op's output, tiny values: float32 subnormals (1e-40, 1e-45)
# and float64 ones (1e-310, 5e-324, 0 in float32), where an output that underflows changes
# the form's value (half_relu' as [y > 0] is 0 at x = 5e-324, where y = x/2 is 0, and not
# the derivative's 1/2).  Not for forms in the arguments alone: there pow's a**(b - 1) b
# would be refused (inf at a = 1e-310, b = 1e-30, where a**b b / a is finite), and a**b b / a
# is inf wherever a**b overflows (x**2 at x = 1e20 in float32, where 2x is finite).
_TINY = (1e-30, -1e-30, 1e-40, -1e-40, 1e-45, -1e-45, 1e-310, -1e-310, 5e-324, -5e-324)


def evaluates_alike(expr: sp.Expr, candidate: sp.Expr, output=None) -> bool:
    """Whether ``candidate``, a form SymPy holds equal to ``expr``, also evaluates like it
    in NumPy's arithmetic: at every combination of probe points of up to three symbols (0,
    both signs of 0.5, 2, 1e19 and 1e30), finite wherever ``expr`` is, in float32
    and float64, and equal to it in float64 to 1e-6 (in float32 it may be the more exact
    of the two: a**(b - 1) b where a**b b / a underflows).  SymPy's equality is over the complex
    numbers: d/dx sqrt(|x|) became x / (2 |x**(3/2)|), NaN for every x < 0 on the reals,
    and b**2 / (a + b)**2 overflows at b = 2e19 in float32 where the derivative of
    a b / (a + b) does not.  ``output``, a pair (y, f): ``candidate`` is written on the
    op's output y = f(symbols), fed f's value in the same dtype, as a backend does (the
    rounding of y counts: (1 - y)**2 for (x / (1 + x))' is 0 at x = 1e19, where y is 1),
    and the probes include both signs of the tiny 1e-30, 1e-40, 1e-45, 1e-310 and 5e-324.
    A form that cannot be evaluated is not taken."""
    y = output[0] if output is not None else None
    symbols = sorted((expr.free_symbols | candidate.free_symbols) - {y}, key=str)
    if len(symbols) > 3:
        return False
    probes = _PROBES + (_TINY if output is not None else ())
    grid = np.meshgrid(*[np.array(probes)] * len(symbols), indexing="ij")
    for modules in (["numpy"], ["numpy", "scipy"]):  # SciPy only for what NumPy lacks (erf)
        try:
            return _alike(symbols, grid, expr, candidate, modules, output)
        except NameError:
            continue
        except Exception:  # noqa: BLE001 -- SymPy's or NumPy's: any failure keeps expr
            return False
    return False


def _alike(symbols, grid, expr, candidate, modules, output=None) -> bool:
    """:func:`evaluates_alike` with ``lambdify``'s ``modules``."""
    f, g = (sp.lambdify(symbols, e, modules=modules) for e in (expr, candidate))
    if output is not None:  # candidate(symbols, y), with y = output's f(symbols)
        on_y = sp.lambdify([*symbols, output[0]], candidate, modules=modules)
        value = sp.lambdify(symbols, output[1], modules=modules)

        def g(*args):
            y = np.broadcast_to(np.asarray(value(*args)), args[0].shape if args else ())
            return on_y(*args, y.astype(args[0].dtype if args else np.float64))
    for dtype in (np.float32, np.float64):
        args = [a.ravel().astype(dtype) for a in grid]
        shape = args[0].shape if args else ()
        with np.errstate(all="ignore"):
            want, got = (np.broadcast_to(np.asarray(h(*args), np.float64), shape).ravel()
                         for h in (f, g))
        want, got = want[np.isfinite(want)], got[np.isfinite(want)]
        if not np.isfinite(got).all() or dtype == np.float64 and not np.all(
                np.abs(got - want) <= 1e-6 * np.abs(want) + 1e-300):
            return False
    return True


_SAMPLES = (-2.3, -1.7, -1.1, -0.6, -0.25, 0.3, 0.7, 1.2, 1.9, 2.6, 3.4)


@remembered
def in_terms_of_output(f: sp.Expr, d: sp.Expr, x: sp.Symbol, y: sp.Symbol) -> sp.Expr:
    """d(x) rewritten as P(y) with y = f(x), when that is cheaper, SymPy proves
    d(x) = P(f(x)) on the whole real line (:func:`proves_on_output`) and P(y) evaluates
    like d(x) with y rounded to float32 and float64 (:func:`evaluates_alike`); else d(x).
    P is found by least squares over span{1, y, y^2, 1/y} (sigmoid' = y(1 - y)), then, if
    that gives none, with y^3 too (rsqrt' = -y^3/2, NaN wherever rsqrt is: -1/(2 x^(3/2))
    is -0 at x = -inf), or, for a piecewise-constant derivative, by reading its conditions
    on y (ReLU' = [y > 0])."""
    if d.free_symbols != {x} or not simplifiable(d):
        return d
    if isinstance(d, sp.Piecewise):
        candidate = d.xreplace({x: y})
    else:
        samples = _samples_on_output(f, d, x)
        for cubic in (False, True):  # y^3 only where the smaller basis fits nothing: the
            # larger one fits exp(2x)' = 2y with noise, which a sample then refutes
            candidate = _fit_on_output(samples, y, cubic)
            if candidate is not None and cost(candidate) < cost(d) and \
                    not _refuted(f, d, x, y, candidate):
                break
        else:
            return d
    return candidate if proves_on_output(f, d, x, y, candidate) and \
        evaluates_alike(d, candidate, (y, f)) else d


@remembered
def ratio_to_output(f: sp.Expr, d: sp.Expr, y: sp.Symbol) -> sp.Expr:
    """d, a derivative of an op of several arguments, as ``(d / f) * y`` with y = f when
    that is cheaper, SymPy proves the two equal, the new form divides by nothing
    that f itself does not divide by (so it is singular only where f is undefined), and
    it evaluates alike with y rounded (:func:`evaluates_alike`); else
    d.  For a / b: d/db = -a/b**2 becomes -y/b, which neither overflows nor underflows
    where a/b is finite (b**2 does: b = 1e20 in float32, b = 1e-40 with a = 0 gave NaN);
    a * b or a ** b keep theirs (y/a would divide by a)."""
    if not simplifiable(d) or not d.free_symbols or isinstance(d, sp.Piecewise):
        return d
    try:
        candidate = sp.factor(sp.cancel(d / f)) * y
        below = sp.fraction(sp.together(candidate))[1]
        allowed = sp.fraction(sp.together(f))[1]
        if cost(candidate) >= cost(d) or sp.cancel(allowed / below).as_numer_denom()[1] \
                .free_symbols or sp.simplify(candidate.subs(y, f) - d) != 0 or \
                not evaluates_alike(d, candidate, (y, f)):
            return d
    except (TypeError, ValueError, NotImplementedError, ArithmeticError,
            sp.PolynomialError):
        return d
    return candidate


def _refuted(f, d, x, y, candidate) -> bool:
    """Whether d(x) != candidate(f(x)) at a sample point (a cheap way to reject a fit;
    only a proof accepts one)."""
    for v in map(sp.Rational, ("-1.37", "-0.41", "0.53", "1.61", "2.83")):
        try:
            gap = complex((d.subs(x, v) - candidate.subs(y, f.subs(x, v))).evalf(30))
        except (TypeError, ValueError, ArithmeticError):
            continue
        if not abs(gap) <= 1e-25:  # NaN counts as a gap too
            return True
    return False


def _samples_on_output(f, d, x) -> list[tuple[float, float]]:
    """(f(v), d(v)) at the sample points where both are real, finite and f is neither 0
    nor so large that its cube would overflow."""
    out = []
    for v in _SAMPLES:
        try:
            fv, dv = complex(f.subs(x, v).evalf()), complex(d.subs(x, v).evalf())
        except (TypeError, ValueError, ArithmeticError):  # outside the domain of f or d
            continue
        if fv.imag or dv.imag or not (math.isfinite(fv.real) and math.isfinite(dv.real)) \
                or fv.real == 0 or abs(fv.real) > 1e100:
            continue
        out.append((fv.real, dv.real))
    return out


def _fit_on_output(samples, y, cubic=False):
    basis = (sp.S.One, y, y**2, 1 / y) + ((y**3,) if cubic else ())
    if len(samples) < 6:
        return None
    rows = [[1.0, fv, fv ** 2, 1.0 / fv] + [fv ** 3] * cubic for fv, _ in samples]
    coef = np.linalg.lstsq(np.array(rows), np.array([dv for _, dv in samples]),
                           rcond=None)[0]
    candidate = sum(sp.nsimplify(round(c, 9), rational=True) * b for c, b in zip(coef, basis))
    try:  # Horner form: y*(1 - y) rather than -y**2 + y
        return min((candidate, sp.horner(candidate)), key=cost)
    except sp.PolynomialError:
        return candidate


def proves_on_output(f: sp.Expr, d: sp.Expr, x: sp.Symbol, y: sp.Symbol,
                     candidate: sp.Expr) -> bool:
    """Whether SymPy proves d(x) = candidate(f(x)) for every real x: by simplifying the
    difference to 0, or, for piecewise-constant forms, by showing that each value is taken
    on the same set of x (``as_set``).  Never by sampling; too large to simplify or too
    hard to decide counts as not proven."""
    try:
        if isinstance(d, sp.Piecewise) or isinstance(candidate, sp.Piecewise):
            return _same_piecewise_constant(d, _compose(candidate, y, f), x)
        difference = d - candidate.subs(y, f)
        if not simplifiable(difference):
            return False
        # exact algebra first: as a rational function of exponentials, then sp.simplify
        return sp.cancel(sp.expand(difference.rewrite(sp.exp))) == 0 or \
            sp.simplify(difference) == 0
    except (TypeError, ValueError, NotImplementedError, ArithmeticError):
        return False


def _compose(outer: sp.Expr, y: sp.Symbol, f: sp.Expr) -> sp.Expr:
    """outer(f) with a piecewise f folded into one Piecewise of x."""
    if isinstance(f, sp.Piecewise):
        return sp.piecewise_fold(sp.Piecewise(*[(outer.subs(y, v), c) for v, c in f.args]))
    return sp.piecewise_fold(outer.subs(y, f))


def _same_piecewise_constant(a: sp.Expr, b: sp.Expr, x: sp.Symbol) -> bool:
    ra, rb = _level_sets(a, x), _level_sets(b, x)
    if ra is None or rb is None:
        return False
    return all(ra.get(v, sp.S.EmptySet).symmetric_difference(rb.get(v, sp.S.EmptySet))
               is sp.S.EmptySet for v in set(ra) | set(rb))


def _level_sets(pw: sp.Expr, x: sp.Symbol):
    """{value: the set of real x where ``pw`` takes it}, or None unless ``pw`` is a
    piecewise constant of x with conditions SymPy turns into sets."""
    pieces = pw.args if isinstance(pw, sp.Piecewise) else ((pw, sp.true),)
    out, rest = {}, sp.S.Reals
    for value, cond in pieces:
        if value.free_symbols or cond.free_symbols - {x}:
            return None
        here = rest if cond is sp.true else rest.intersect(cond.as_set())
        out[value] = out.get(value, sp.S.EmptySet).union(here)
        rest = rest - here
    return out if rest is sp.S.EmptySet else None
