"""SymPy rewrites of a fused group's statements before the Numba printer prints them
(``numba_kernels.fused_kernel``): branches bound to their own statements so that every
Piecewise is a select, shared exponentials and reciprocals, softplus' sigmoid in the stable
form, trivial statements inlined, and statements in dependency order (``sympy.cse`` runs
through :func:`graphc.derivation.cse`)."""

from __future__ import annotations

import sympy as sp

from .derivation import one_plus_exp_minus_abs


def inline_trivial(statements, exprs):
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


def stable_sigmoids(bound, exprs):
    """A sigmoid e/(e + 1), e = exp(u), in a Piecewise branch taken only where u <= c, c
    a number <= 80 (softplus' below its threshold: exp(u) finite, so the two forms are
    equal), as the stable sigmoid 1/(1 + d) if u >= 0 else d/(1 + d), d = exp(-|u|): the
    exp softplus computes itself, so the group computes one exp per element, not two."""
    def capped(pw):
        pairs, below = [], {}  # v: c where later branches know v <= c
        for value, cond in pw.args:
            if below:
                value = value.replace(lambda x: _bounded(_sigmoid_argument(x), below), _stable)
            pairs.append((value, cond))
            if isinstance(cond, (sp.StrictLessThan, sp.StrictGreaterThan)) and \
                    cond.lts.is_number:
                below[cond.gts] = cond.lts
        return sp.Piecewise(*pairs)
    subs = {pw: capped(pw) for e in [e for _, e in bound] + list(exprs)
            for pw in e.atoms(sp.Piecewise)}
    return [(sym, e.xreplace(subs)) for sym, e in bound], [e.xreplace(subs) for e in exprs]


def _bounded(u, below) -> bool:
    """Whether u = k v with k > 0 a number, v <= c known, and k c <= 80."""
    return u is not None and any((u / v).is_number and u / v > 0 and u / v * c <= 80
                                 for v, c in below.items())


def _sigmoid_argument(e):
    """u if ``e`` is exp(u)/(exp(u) + 1), else None."""
    if e.is_Mul and len(e.args) == 2:
        inverse, exp = sorted(e.args, key=lambda a: isinstance(a, sp.exp))
        if isinstance(exp, sp.exp) and inverse == 1 / (exp + 1):
            return exp.args[0]
    return None


def _stable(e):
    """The stable form of the sigmoid ``e``: no exp that can overflow."""
    d = sp.exp(-sp.Abs(_sigmoid_argument(e)))
    return sp.Piecewise((1 / (1 + d), _sigmoid_argument(e) >= 0), (d / (1 + d), True))


def share_powers(bound, exprs):
    """Powers of values computed anyway, as powers of one bound value: exp(n·u) as e**n
    with e = exp(u) where exp(u) is computed too (the derivative of a stable form brings in
    exp(-2|x|) next to the form's own exp(-|x|): silu, sigmoid), and b**-n as r**n with
    r = 1/b where 1/b is computed too.  A multiplication instead of an exp or a division
    (bound symbols, because SymPy folds exp(u)**2 back into exp(2u)).  A quotient a/b stays
    a division, not a * r (:func:`graphc.derivation.cse`), but where b is a stable sigmoid's
    1 + exp(-|u|)."""
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
        keep = isinstance(value, sp.Pow) and not one_plus_exp_minus_abs(value.base,
                                                                         dict(bound))
        subs = ({} if keep else {value: v}) | {x: v ** n for x, n in uses}
        bound = [(sym, x.xreplace(subs)) for sym, x in bound]
        exprs = [x.xreplace(subs) for x in exprs]
        after = [i for i, sym in enumerate(defined) if sym in value.free_symbols]
        at = max(after) + 1 if after else 0
        bound.insert(at, (v, value))
        defined.insert(at, v)
    return bound, exprs


def hoist_branches(bound, exprs):
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


def in_dependency_order(statements):
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
