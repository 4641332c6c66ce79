"""Text for diagrams: numbers, formulas and names, shortened by whole fields so a number is
never cut in two.  The explorer (``gc.explore``) uses the same functions."""

from __future__ import annotations

import re

import graphviz
import numpy as np
import sympy as sp
from sympy.printing.str import StrPrinter

from graphc.elementwise_ops import Elementwise
from graphc.graph import display_name, node_names, scalar_text
from graphc.structured_ops import MatMul

__all__ = ["FULL", "call_lines", "count", "display_name", "dot_text", "fit", "formula",
           "index_text", "is_number", "local_value", "node_names", "number", "scalar_text",
           "shorten", "template", "value_lines"]

MAX_LABEL = 64
# room for a tensor of 8 elements in full: 8 numbers of 4 significant digits (-1.234e-05),
# their commas, brackets and shape
FULL = 112


def elementwise_op(t) -> Elementwise | None:
    """``t``'s elementwise op, also where a deferred node (a dynamic shape) wraps it."""
    op = t.op._inner() if getattr(t.op, "dynamic", False) else t.op
    return op if isinstance(op, Elementwise) else None


def shorten(text: str, limit: int = MAX_LABEL) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary, ending in `` …``:
    a number or name is kept whole or left out, never cut in the middle.

    >>> shorten("∂L/∂a · ∂L/∂b + ∂L/∂c", 16)
    '∂L/∂a · ∂L/∂b …'
    """
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit - 1)
    return (text[:cut] if cut > 0 else text[:limit - 2]).rstrip(" ,+·=") + " …"


def dot_text(lines, end: str = "") -> str:
    r"""``lines`` as one Graphviz label: joined by ``\n`` (centred), or each ended by ``end``
    (``\l``: left-aligned).  Backslashes in the text are doubled, so that dot draws a name
    such as ``a\nb`` as it is instead of reading escapes (``\n``, ``\l``) in it, and the
    label is never taken for HTML (a scope named ``<b>``).

    >>> print(dot_text(["tanh", "a\\nb: 3 float32"]))
    tanh\na\\nb: 3 float32
    """
    lines = [line.replace("\\", "\\\\") for line in lines]
    return graphviz.nohtml("".join(line + end for line in lines) if end else "\\n".join(lines))


def index_text(index) -> str:
    """A static index (``Index.index``) as Python writes it.

    >>> index_text((("slice", None, None, None), ("slice", 12, 16, None), ("int", -1)))
    '[:, 12:16, -1]'
    """
    def one(kind, *rest):
        if kind == "slice":
            start, stop, step = ("" if v is None else str(v) for v in rest)
            return f"{start}:{stop}" + (f":{step}" if step else "")
        return str(rest[0]) if kind == "int" else "None" if kind == "newaxis" else "[…]"
    return "[" + ", ".join(one(*entry) for entry in index) + "]"


def fit(fields, limit: int, sep: str = ", ") -> str:
    """Whole ``fields`` joined by ``sep`` while they fit in ``limit`` characters, then ``…``.

    >>> fit(["mean 0.25", "norm 1.5", "min -2", "max 3"], 26)
    'mean 0.25, norm 1.5, …'
    """
    out = ""
    for k, f in enumerate(fields):
        joined = f if not out else out + sep + f
        more = k + 1 < len(fields)
        if len(joined) + (len(sep) + 1 if more else 0) > limit:
            return (out + sep + "…") if out else "…"
        out = joined
    return out


def call_lines(op: str, fields, limit: int = 40, most: int = 2) -> list[str]:
    """``op(field, field, ...)`` on at most ``most`` lines of about ``limit`` characters,
    each field whole (``stride=(2, 2)`` is never cut), ``…`` for those left out.

    >>> call_lines("max_pool2d", ["kernel=(2, 2)", "stride=(2, 2)", "padding=(0, 0)"])
    ['max_pool2d(kernel=(2, 2), stride=(2, 2),', '  padding=(0, 0))']
    """
    lines, line = [], f"{op}("
    for f in fields:
        if not line.endswith("(") and len(line) + 2 + len(f) > limit:
            if len(lines) + 1 == most:
                return lines + [line + ", …)"]
            lines.append(line + ",")
            line = "  " + f
        else:
            line += ("" if line.endswith("(") else ", ") + f
    return lines + [line + ")"]


def _g(v) -> str:
    """One number to 4 significant digits, ``-0`` written ``0``; the trailing zeros kept
    where rounding changed the value by more than its own precision's noise (16 units in
    the last place), so that a rounded number never reads as exact.

    >>> _g(2.0004), _g(2.0), _g(np.float32(0.1)), _g(0.1 * 0.5), _g(1 / 3), _g(-0.0)
    ('2.000', '2', '0.1', '0.05', '0.3333', '0')
    """
    x = float(v) + 0.0
    text = f"{x:.4g}"
    kind = np.asarray(v).dtype
    kind = kind if kind.kind == "f" else np.dtype(np.float64)
    shown = float(kind.type(text))
    exact = not np.isfinite(x) or abs(shown - x) <= 16 * np.finfo(kind).eps * abs(x)
    return text if exact else f"{x:#.4g}"


def number(value, limit: int = MAX_LABEL) -> str:
    """A value for a label in at most ``limit`` characters: scalars to 4 significant
    digits, tensors of at most 8 elements in full, larger tensors as mean, norm, min and
    max (with NaN or inf among them: how many, then the finite ones' mean, min and max);
    whole fields are dropped (``…``) to fit.  Never ``-0``.

    >>> number(np.array([-0.0, 1.5]))
    '[0, 1.5]'
    >>> number(np.arange(-4.0, 16.0), 30)
    'mean 5.5, norm 35.64, …'
    >>> number(np.r_[np.arange(10.0), np.nan, np.nan, np.inf])
    '2 nan, 1 inf, finite: mean 4.5, min 0, max 9'
    """
    a = np.asarray(value)
    if a.dtype == np.bool_:
        a = a.astype(np.int64)
    if a.ndim == 0:
        return scalar_text(a[()]) if a.dtype.kind in "iub" else _g(a)
    if a.size <= 8:
        items = [str(int(v)) if a.dtype.kind in "iu" else _g(v) for v in a.ravel()]
        text = fit(items, limit - 2)
        return f"[{text}]" if a.ndim == 1 else f"[{text}] ({'×'.join(map(str, a.shape))})"
    a = a.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.all():  # how many are not finite first, then the finite ones' range
        counts = [f"{int(n)} {what}" for n, what in ((np.isnan(a).sum(), "nan"),
                  (np.isposinf(a).sum(), "inf"), (np.isneginf(a).sum(), "-inf")) if n]
        f = a[finite]
        return fit(counts + ([f"finite: mean {_g(f.mean())}", f"min {_g(f.min())}",
                              f"max {_g(f.max())}"] if f.size else []), limit)
    return fit([f"mean {_g(a.mean())}", f"norm {_g(np.linalg.norm(a.ravel()))}",
                f"min {_g(a.min())}", f"max {_g(a.max())}"], limit)


def value_lines(value, width: int = 48) -> list[str]:
    """``= number`` for a node's label: a tensor of at most 8 elements in full, on as many
    lines of at most ``width`` characters as it takes, each cut after a comma.

    >>> value_lines(np.array([0.125, -2.5, 3.75, 1e-05, 6.0, -7.5, 8.25, 9.0]), 24)
    ['= [0.125, -2.5, 3.75,', '1e-05, 6, -7.5, 8.25, 9]']
    """
    lines, line = [], "="
    for word in number(value, FULL).split(" "):
        if len(line) + 1 + len(word) > width and line != "=":
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}"
    return lines + [line]


class _Printer(StrPrinter):
    """SymPy's text printer, with piecewise expressions as people write them."""

    def _print_Piecewise(self, expr):
        pieces = list(expr.args)
        if len(pieces) == 2 and pieces[1].cond == sp.true and \
                (pieces[0].expr, pieces[1].expr) == (1, 0):
            return f"[{self._print(pieces[0].cond)}]"  # Iverson bracket: 1 if true else 0
        parts = []
        for piece in pieces:
            value = self.parenthesize(piece.expr, 0)
            if piece.cond == sp.true:
                parts.append(value)
                break
            parts.append(f"{value} if {self._print(piece.cond)} else")
        return "(" + " ".join(parts) + ")" if len(parts) > 1 else parts[0]

    def _print_Float(self, expr):
        return _g(expr)

    def _print_Relational(self, expr):  # Ne(c, 0) as c ≠ 0 (where's derivative), not SymPy's
        if isinstance(expr, sp.Ne):
            return f"{self._print(expr.lhs)} ≠ {self._print(expr.rhs)}"
        if isinstance(expr, sp.Eq):
            return f"{self._print(expr.lhs)} = {self._print(expr.rhs)}"
        return super()._print_Relational(expr)


def formula(expr: sp.Expr, names: dict) -> str:
    """A SymPy expression with its symbols renamed (``names``: symbol -> text), written the
    way a lecture note would: ``z·(1 − z)``, ``[z > 0]`` (1 where z > 0, else 0).

    >>> z = sp.Symbol("z")
    >>> formula(sp.Piecewise((1, z > 0), (0, True)), {z: "fc1.relu"})
    '[fc1.relu > 0]'
    >>> formula(sp.Piecewise((1, z > 0), (sp.Float(0.01), True)), {z: "h"})
    '(1 if h > 0 else 0.01)'
    """
    renamed = expr.xreplace({s: sp.Symbol(names[s]) for s in expr.free_symbols if s in names})
    text = _Printer().doprint(renamed)
    text = text.replace("**", "^").replace("*", "·").replace(" - ", " − ")
    return re.sub(r"(^|[(\[ ])-", r"\1−", text)


def template(text: str, **names) -> str:
    """A structured op's formula template (``{g} @ {b}ᵀ``) with names filled in."""
    return text.format(**names)


def is_number(text: str) -> bool:
    """Whether a formula is a number already (``1``, ``−1``): its label needs no "= 1"."""
    try:
        float(text.replace("−", "-"))
    except ValueError:
        return False
    return True


def local_value(e, values: dict):
    """The numbers of edge ``e``'s local derivative dz/dx: its local node's value, or a
    matmul's other operand transposed (the formula's ``{b}ᵀ`` / ``{a}ᵀ``); None if
    ``values`` (id(tensor) -> array) does not have it."""
    if e.local is not None:
        return values.get(id(e.local))
    z = e.forward
    other = values.get(id(z.inputs[1 - e.operand])) if isinstance(z.op, MatMul) else None
    return None if other is None else np.swapaxes(other, -1, -2)


def unique(name: str, taken) -> str:
    """``name``, or ``name_2``, ``name_3`` ... : the first that ``taken`` does not hold."""
    out, k = name, 1
    while out in taken:
        k += 1
        out = f"{name}_{k}"
    return out


def count(n: int, word: str) -> str:
    """``1 param``, ``4,160 params``."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"
