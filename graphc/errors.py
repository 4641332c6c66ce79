"""Every exception graphc raises on purpose, in one module at the bottom of the import graph:
it imports nothing from graphc, so any module can raise any of them without an import cycle.

The public ones are ``gc.<Name>``; ``CheckpointError`` is ``gc.train.CheckpointError``.
``GraphError`` is the base of the errors about a graph (building, checking, compiling it);
each also derives from the built-in exception a Python user would expect (``ValueError`` for
a bad shape, ``TypeError`` for a bad dtype, ``NotImplementedError`` for an unsupported op).
"""


class GraphError(Exception):
    """A graph that cannot be built or is not well formed."""


class ShapeError(GraphError, ValueError):
    """Operand shapes that an op cannot combine."""


class DTypeError(GraphError, TypeError):
    """Operand dtypes that an op cannot take."""


class ElementwiseError(GraphError, ValueError):
    """A custom elementwise op that is not well defined."""


class CodegenError(GraphError):
    """Numba could not compile the kernel of a graph node; names the node, the op and the
    line of the generated source."""


class UnsupportedOpError(GraphError, NotImplementedError):
    """An op of an imported model that graphc cannot express.

    The message names the op type, the node and the set of supported ops.
    """


class FeedError(ValueError):
    """A missing, unknown, wrongly-shaped or wrongly-typed feed; names the input."""


class BackendError(RuntimeError):
    """A backend that does not exist or cannot run on this machine."""


class CheckpointError(ValueError):
    """A parameter file that is missing, unreadable, or does not match the model."""


class RenderError(RuntimeError):
    """Rendering failed (most often: Graphviz's ``dot`` is not installed)."""
