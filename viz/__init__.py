"""Graphviz rendering, installed as ``graphc.viz`` (arrives with the *visualizer* issue)."""
