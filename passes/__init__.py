"""Compiler passes, installed as ``graphc.passes``: one ``Graph -> Graph`` pass per module.

The *autodiff* and *passes* issues fill this package (reverse-mode autodiff, simplification,
CSE/DCE, fusion, memory planning); the pipeline will be one explicit ordered list.
"""
