"""Graphviz run on a diagram's DOT text: its output bytes, or a :class:`RenderError` that
says what to do (install Graphviz; draw less of a diagram it cannot lay out in time)."""

from __future__ import annotations

import subprocess

from graphc.errors import RenderError

INSTALL_DOT = ("Graphviz's `dot` program was not found on PATH; install it: Debian/Ubuntu "
               "`apt-get install graphviz`, macOS `brew install graphviz`, conda "
               "`conda install graphviz`")
# dot ran for over 600 s on 100 scoped layers sharing one weight (50 layers: 8.7 s); the
# largest diagrams the tests and the demo draw take under 50 s
LAYOUT_SECONDS = 180


def layout(engine: str, source: str, fmt: str) -> bytes:
    """``source`` (DOT) laid out by Graphviz's ``engine`` as ``fmt`` (svg, png, pdf)."""
    try:
        run = subprocess.run([engine, f"-T{fmt}"], input=source.encode(), capture_output=True,
                             timeout=LAYOUT_SECONDS)
    except FileNotFoundError:
        raise RenderError(INSTALL_DOT) from None
    except subprocess.TimeoutExpired:
        raise RenderError(
            f"Graphviz's {engine} did not lay this diagram out in {LAYOUT_SECONDS} s; draw less "
            "of it (gc.render(..., collapse=True) draws each group as one box, backward=False "
            "the forward graph alone) or save the .dot and lay it out yourself") from None
    if run.returncode:
        raise RenderError(f"{engine} failed: {run.stderr.decode(errors='replace')}")
    return run.stdout
