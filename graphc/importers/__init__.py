"""Importing models from other frameworks: ONNX files and PyTorch modules.

Each importer turns a model into ordinary graphc graph nodes and returns a :class:`Model`;
an op it cannot express raises :class:`UnsupportedOpError` at import time.
"""

from ..errors import UnsupportedOpError
from .model import Model

__all__ = ["Model", "UnsupportedOpError"]
