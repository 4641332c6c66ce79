"""graphc's cache directory, atomic writes, and derived formulas kept between processes.

Layout (``$GRAPHC_CACHE_DIR``, else the platform's user cache directory + ``graphc``)::

    kernels-<tag>/    compiled kernels (graphc.kernel_cache)
    formulas-<tag>/   derived formulas (:func:`remembered`), one JSON file per call

Deriving an elementwise op's local derivatives (``sympy.simplify``, the checks that a
simpler form evaluates like the derivative, the fit and proof of a form written on the
op's output) is the same work in every process: ``gc.grad`` of W1 took 0.27 s and of W3
1.49 s in a fresh process on 2026-12-04, nearly all of it there.  :func:`remembered` keeps
the result of such a pure function of SymPy expressions: its file holds the function's
name, its arguments and its result as ``sympy.srepr`` text, and is used only when the
function and arguments are this call's exactly.  The formulas' tag hashes the text of
``graphc/derivation.py`` (whose functions are remembered) and the SymPy, NumPy, SciPy and
Python versions (the checks evaluate in NumPy), so a change to any starts afresh.  A
result whose text does not read back as the same expression is not written; a file that
cannot be read is derived again and written over; a directory that cannot be written is
only read.  ``GRAPHC_FORMULA_CACHE=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import sys
import tempfile

FORMAT = 1


def cache_root() -> str:
    """``$GRAPHC_CACHE_DIR``, else the platform's per-user cache directory for graphc."""
    env = os.environ.get("GRAPHC_CACHE_DIR")
    if env:
        return env
    home = os.path.expanduser("~")
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.join(home, "AppData", "Local")
        return os.path.join(base, "graphc", "Cache")
    if sys.platform == "darwin":
        return os.path.join(home, "Library", "Caches", "graphc")
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache"),
                        "graphc")


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that no reader ever sees a partial file."""
    directory, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------------------
# Derived formulas


def _version_of(module: str) -> str:
    """A module's version without importing it (SciPy costs 0.2 s): the hash of its
    ``version.py`` or ``_version.py``, '' when it is not installed."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # blocked in sys.modules (None), as compile workers do
        return ""
    if spec is None or not spec.origin:
        return ""
    folder = os.path.dirname(spec.origin)
    for name in ("version.py", "_version.py"):
        with contextlib.suppress(OSError), open(os.path.join(folder, name), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:16]
    return spec.origin


@functools.lru_cache(maxsize=None)
def formulas_tag() -> str:
    """A hash of what a remembered formula depends on besides its arguments."""
    import numpy as np
    import sympy as sp
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "derivation.py"), "rb") as f:
        derivation = hashlib.sha256(f.read()).hexdigest()
    parts = [f"graphc formulas {FORMAT}", f"derivation {derivation}", f"sympy {sp.__version__}",
             f"numpy {np.__version__}", f"scipy {_version_of('scipy')}",
             f"python {sys.version_info[0]}.{sys.version_info[1]}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def formulas_dir() -> str:
    return os.path.join(cache_root(), f"formulas-{formulas_tag()}")


def _enabled() -> bool:
    return os.environ.get("GRAPHC_FORMULA_CACHE", "1").strip() != "0"


@functools.lru_cache(maxsize=None)
def _sympy_names() -> dict:
    """SymPy's names, and the classes ``srepr`` writes that SymPy does not export."""
    import sympy as sp
    from sympy.functions.elementary.piecewise import ExprCondPair
    return {**vars(sp), "ExprCondPair": ExprCondPair}


def _read_expr(text: str):
    """The SymPy expression ``srepr`` wrote as ``text``: evaluated with SymPy's names and
    no builtins (it is a call of SymPy constructors on numbers and strings)."""
    return eval(text, {"__builtins__": {}}, _sympy_names())  # noqa: S307 -- srepr's text


def remembered(fn):
    """``fn``, a pure function of SymPy expressions returning one, with its results kept
    in :func:`formulas_dir` between processes (the module's docstring)."""
    name = f"{fn.__module__}.{fn.__qualname__}"

    @functools.wraps(fn)
    def cached(*args):
        if not _enabled():
            return fn(*args)
        import sympy as sp
        texts = [sp.srepr(a) for a in args]
        key = hashlib.sha256("\n".join([name, *texts]).encode()).hexdigest()[:32]
        path = os.path.join(formulas_dir(), f"{fn.__name__}-{key}.json")
        with contextlib.suppress(Exception):  # unreadable or another call's: derive again
            with open(path, encoding="utf-8") as f:
                entry = json.load(f)
            if entry["function"] == name and entry["args"] == texts:
                return _read_expr(entry["result"])
        result = fn(*args)
        with contextlib.suppress(Exception):  # not written: derived again next time
            text = sp.srepr(result)
            if _read_expr(text) == result:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                atomic_write(path, json.dumps({"function": name, "args": texts,
                                               "result": text}).encode())
        return result

    cached.uncached = fn
    return cached
