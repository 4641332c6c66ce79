"""Graphviz rendering, installed as ``graphc.viz``: :func:`render` draws forward and backward
graphs with the upstream, local and downstream gradient on every backward edge."""

from graphc.errors import RenderError

from .render import Diagram, render

__all__ = ["Diagram", "RenderError", "render"]
