"""Numba kernel families beyond one elementwise op: fused groups (one loop nest, in phases
over tiles when long) and row kernels (softmax family, sums); max pooling and im2col/col2im
are in :mod:`graphc.numba_conv_kernels`."""

from __future__ import annotations

import re

import numpy as np
import sympy as sp
from sympy.functions.elementary.piecewise import ExprCondPair

from .derivation import cse
from .functable import FUNCTIONS
from .lowering import comment, identifier
from .numba_codegen import (
    _KIND_TEXT,
    ELEMENTWISE_FASTMATH,
    REDUCTION_FASTMATH,
    SHORT,
    KernelSpec,
    ScalarPrinter,
    _module,
)
from .numba_rewrites import (
    hoist_branches,
    in_dependency_order,
    inline_trivial,
    share_powers,
    stable_sigmoids,
)

# A fused loop body longer than this (in cost units: 10 per exp/log/tanh/erf call, 1 per
# arithmetic op) is split into phases over a tile of TILE elements, each phase one inner
# loop, values crossing phases kept in a scratch tile.  Measured on W3's fused forward and
# backward (7 transcendental calls per element, float32, AVX-512 machine tuned for 256-bit
# vectors): one loop 24 ns/element (the body's values do not fit the vector registers and
# spill), phases of about 20 units 7 ns/element (tiles of 256 to 2048 elements: within 10%).
# Again on a Zen 5 VM (512-bit vectors), W3 step, 1 thread, CPU ms: one loop 16.5 against
# 5.9 in phases; PHASE_COST 14/20/30/40: 4.25/4.30/4.44/4.49; TILE 128..1024 within noise.
PHASE_COST = 20
TILE = 512
CHEAP = 2  # cost up to which a value a later phase needs is computed again, not stored
_FAST_HELPERS = "|".join(sorted({fn.fast for fn in FUNCTIONS.values() if fn.fast}))
_CALL = re.compile(rf"\b(?:{_FAST_HELPERS})_f(?:32|64)\(")

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
    ``out[(i // ACC_ROWS) * n1 + j]`` (one row of n1 per block of ACC_ROWS rows).  A ``V``
    operand is full but its rows are ``ld<k>`` elements apart (a column block of a wider
    matrix, read where it lies: the gates cut from an LSTM's z); each adds a size argument
    ``ld<k>`` after ``n0, n1``.  With any ``R``/``C``/``V`` operand or accumulator the loop
    is ``(n0, n1)``, else flat over ``n``.  A
    long body is split in phases (PHASE_COST); the kernel then takes a scratch pointer after
    the operands, of ``spec.scratch`` elements per call.
    """
    two_d = any(k in "RCV" for k in kinds) or any(accumulate)
    printer = ScalarPrinter(work, {s: f"x{k}" for k, s in enumerate(symbols)},
                            {s for s, d in zip(symbols, operand_dtypes) if d == "bool"})
    body, stores = _fused_statements(printer, bound, exprs, accumulate, two_d)
    phases = _phases(body, stores)
    loops, slots = _phase_loops(phases, body, stores, kinds, operand_dtypes, work, printer,
                                two_d)
    sizes = ["n0", "n1"] if two_d else ["n"]
    sizes += [f"ld{k}" for k, kind in enumerate(kinds) if kind == "V"]
    lines = _fused_loop_nest(loops, len(exprs), kinds, operand_dtypes, work, printer, sizes,
                             bool(slots), "full" in accumulate)
    header = _fused_header(label, steps_text, len(phases), kinds, operand_dtypes, work,
                           accumulate)
    source = _module(header, printer.helpers, lines)
    stem = identifier(label) + f"_{SHORT[work]}_{''.join(kinds)}" + \
        ("_acc" if any(accumulate) else "")
    params = tuple(("ptr", accumulator_dtype(work) if a else work) for a in accumulate) + \
        tuple(("ptr", d) for d in operand_dtypes) + \
        ((("ptr", work),) if slots else ()) + (("int",),) * len(sizes)
    return KernelSpec(stem, source, params, ELEMENTWISE_FASTMATH,
                      tuple(sorted(printer.helpers)), scratch=slots * TILE)


def _fused_statements(printer, bound, exprs, accumulate, two_d: bool):
    """The group's statements after ``sympy.cse``, printed: the body ``(name, text, names
    used)`` and the stores ``(target, text, names used, accumulate)``, one per output."""
    # a step reading one value twice is built unevaluated (s - s stays s - s; maximum(a, a)'s
    # Eq(x0, x0), False at NaN), and SymPy's rewrites and cse simplify it (x*x + y - x*x to
    # y; the Piecewise to 1/2) or take an unevaluated x*x for 2*x (cse([x*x, 2*x]) gives
    # [x*x, x**2]): such statements are kept as built, out of their reach
    built = [_unevaluated(e) for _, e in bound]
    kept = [b for b, keep in zip(bound, built) if keep]
    bound = [b for b, keep in zip(bound, built) if not keep]
    bound, exprs = share_powers(*hoist_branches(*stable_sigmoids(bound, exprs)))
    replacements, reduced = cse([e for _, e in bound] + list(exprs),
                                sp.numbered_symbols("c"), bound)
    statements = replacements + [(sym, e) for (sym, _), e in zip(bound, reduced)] + kept
    statements, reduced = inline_trivial(in_dependency_order(statements), reduced)
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
    return body, stores


def _unevaluated(e) -> bool:
    """Whether ``e`` holds a node SymPy would simplify if it built it (``x*x``, ``s - s``,
    a custom op's ``x*x + y - z*z`` given one value as x and z): built unevaluated, so that
    what the graph computes is computed, and cse would simplify it."""
    return any(a.args and not isinstance(a, (sp.Piecewise, ExprCondPair))
               and a.func(*a.args) != a for a in sp.preorder_traversal(e))


def _fused_loop_nest(loops, n_outputs: int, kinds, operand_dtypes, work: str, printer,
                     sizes, scratch: bool, full: bool) -> list[str]:
    """The kernel's ``def`` line and its loop nest around the phases' ``loops``: ``S``
    operands loaded once per call, ``C`` operands once per row."""
    outs = [f"out{m}" for m in range(n_outputs)]
    operands = [f"a{k}" for k in range(len(kinds))]
    lines = [f"def kernel({', '.join(outs + operands + (['t'] if scratch else []) + sizes)}):"]
    lines += [f"    x{k} = {_load(k, '[0]', operand_dtypes, work, printer)}"
              for k, kind in enumerate(kinds) if kind == "S"]
    if len(sizes) >= 2:  # the (n0, n1) loop
        lines += ["    for i in range(n0):", "        base = i * n1"]
        lines += [f"        base{k} = i * ld{k}" for k, kind in enumerate(kinds) if kind == "V"]
        if full:
            lines.append(f"        row = (i // {ACC_ROWS}) * n1")
        lines += [f"        x{k} = {_load(k, '[i]', operand_dtypes, work, printer)}"
                  for k, kind in enumerate(kinds) if kind == "C"]
        lines += ["        " + line for line in loops]
    else:
        lines += ["    " + line for line in loops]
    return lines


def _fused_header(label: str, steps_text, n_phases: int, kinds, operand_dtypes, work: str,
                  accumulate) -> list[str]:
    """The kernel's comment: what it computes, its operands, its outputs, the group's steps."""
    header = [f"# graphc kernel: {comment(label)} (fused group, one loop nest"
              + (f", {n_phases} phases over tiles of {TILE})" if n_phases > 1 else ")"),
              "# operands: " + ", ".join(f"a{k} {operand_dtypes[k]} {_KIND_TEXT[kind]}"
                                         for k, kind in enumerate(kinds)),
              "# outputs: " + ", ".join(f"out{m} {accumulator_dtype(work)} {_ACC_TEXT[a]}"
                                        if a else f"out{m} {work} full"
                                        for m, a in enumerate(accumulate))]
    return header + [f"#   {comment(text)}" for text in steps_text]


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
    index = {"F": "[base + j]", "R": "[j]", "V": "[base{k} + j]"} if two_d else {"F": "[j]"}
    reload = dict(reload)
    lines = [f"x{k} = {_load(k, index[kind].format(k=k), operand_dtypes, work, printer)}"
             for k, kind in enumerate(kinds) if kind in index and f"x{k}" in used]
    # a condition comes back from its float scratch slot as a bool (c0 | c1 needs bools)
    bools = {str(b) for b in printer.bool_symbols}
    lines += [f"{name} = t[{n * TILE} + jj]" + (" != 0" if name in bools else "")
              for name, n in reload.items() if name in used]
    lines += [f"{body[k][0]} = {body[k][1]}" for k in ks]
    lines += [f"t[{slot[name] * TILE} + jj] = {name}" for name in sorted(keep)]
    lines += [f"{target} += {value}" if acc else f"{target} = {value}"
              for target, value, _, acc in stores]
    return lines


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


def sum_kernel(kind: str, dtype: str) -> KernelSpec:
    """Sums of an ``(n0, n1)`` contiguous array: over rows (``"leading"``: out has n1
    entries, added row by row in NumPy's order, so the result is the same to the bit) or
    within rows (``"trailing"``: out has n0 entries, each NumPy's pairwise sum of its row
    added to the identity 0, :func:`graphc.fastmath.pairwise_sum`, the same to the bit: a
    row of -0 sums to +0).  No reassociation: a
    vectorized running sum (the earlier form) rounds by the machine's vector width, and
    where a softmax follows, one ulp of a large logit is a different answer."""
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
                 f"        out[i] = {zero} + pairwise_sum(x, i * n1, n1, {zero})"]
        fastmath = ELEMENTWISE_FASTMATH
    header = [f"# graphc kernel: sum over the {kind} axes of a contiguous array, {dtype}"]
    helpers = {"pairwise_sum"} if kind == "trailing" else set()
    source = _module(header, helpers, lines)
    params = (("ptr", dtype), ("ptr", dtype), ("int",), ("int",))
    return KernelSpec(f"sum_{kind}_{SHORT[dtype]}", source, params, fastmath)
