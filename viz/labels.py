"""Text for diagrams: numbers, formulas and names, shortened so layouts stay readable."""

from __future__ import annotations

import numpy as np
import sympy as sp

MAX_LABEL = 64


def shorten(text: str, limit: int = MAX_LABEL) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis in the middle."""
    if len(text) <= limit:
        return text
    keep = (limit - 1) // 2
    return text[:keep] + "…" + text[-(limit - 1 - keep):]


def number(value) -> str:
    """A value for a label: scalars to 4 significant digits, tensors of at most 8 elements
    in full, larger tensors as shape, mean, norm, min and max."""
    a = np.asarray(value)
    if a.dtype == np.bool_:
        a = a.astype(np.int64)
    if a.ndim == 0:
        return f"{a.item():.4g}"
    if a.size <= 8:
        return np.array2string(a, separator=", ", formatter={"all": lambda v: f"{v:.4g}"}
                               ).replace("\n", "")
    a = a.astype(np.float64)
    return (f"shape {a.shape}: mean {a.mean():.4g}, norm {np.linalg.norm(a.ravel()):.4g}, "
            f"min {a.min():.4g}, max {a.max():.4g}")


def formula(expr: sp.Expr, names: dict) -> str:
    """A SymPy expression with its symbols renamed (``names``: symbol -> text), written the
    way a lecture note would: ``z·(1 − z)``."""
    renamed = expr.xreplace({s: sp.Symbol(names[s]) for s in expr.free_symbols if s in names})
    text = sp.sstr(renamed)
    return text.replace("**", "^").replace("*", "·").replace(" - ", " − ").replace("-", "−")


def template(text: str, **names) -> str:
    """A structured op's formula template (``{g} @ {b}ᵀ``) with names filled in."""
    return text.format(**names)
