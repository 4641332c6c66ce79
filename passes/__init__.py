"""Compiler passes, installed as ``graphc.passes``: one ``Graph -> Graph`` pass per module.

``autodiff`` (reverse mode) and ``precision`` (float32 <-> float64) build graphs; the
optimizing passes run in one explicit ordered pipeline (``pipeline.DEFAULT_PIPELINE``):
``simplify`` -> ``cse`` -> ``fusion`` -> ``dce`` -> ``memory``.  ``rewrite`` holds the
rebuilding and pattern-matching machinery they share.  See docs/passes.md.
"""
