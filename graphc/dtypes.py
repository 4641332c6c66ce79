"""The five graphc dtypes and the promotion rule (documented in docs/dtypes.md).

Promotion is a total order, ``bool < int32 < int64 < float32 < float64``: mixing two
tensors gives the larger dtype, so ``int64 + float32 -> float32`` (as in PyTorch and JAX,
unlike NumPy's float64).  Python scalars are *weak*: they take the dtype of the tensor they
meet (``x_f32 * 2.5 -> float32``); a Python float meeting an integer tensor gives float32.
"""

from __future__ import annotations

import numpy as np

DTYPES = ("bool", "int32", "int64", "float32", "float64")
FLOATS = ("float32", "float64")
INTS = ("int32", "int64")
DEFAULT_FLOAT = "float32"
_RANK = {name: i for i, name in enumerate(DTYPES)}


def as_dtype(dtype) -> str:
    """Normalise ``dtype`` (a string, NumPy dtype or type) to one of :data:`DTYPES`."""
    try:
        name = np.dtype(dtype).name
    except TypeError as err:
        raise TypeError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}") from err
    if name not in _RANK:
        raise TypeError(f"dtype {name!r} is not supported; use one of {', '.join(DTYPES)}")
    return name


def promote(*dtypes: str) -> str:
    """The dtype two or more tensors combine to (the largest in the promotion order)."""
    return max(dtypes, key=_RANK.__getitem__)


def is_float(dtype: str) -> bool:
    return dtype in FLOATS


def kind(dtype: str) -> str:
    """'float', 'int' or 'bool': the dtype *kind* that feeds must match."""
    return "float" if dtype in FLOATS else "int" if dtype in INTS else "bool"


def to_float(dtype: str) -> str:
    """The float dtype an op with a float-only result gives for an input of ``dtype``."""
    return dtype if dtype in FLOATS else DEFAULT_FLOAT


def scalar_dtype(value, partner: str | None) -> str:
    """The dtype a Python scalar takes when it meets a tensor of dtype ``partner``."""
    if isinstance(value, (bool, np.bool_)):
        return partner or "bool"
    if isinstance(value, (int, np.integer)):
        return partner if partner and partner != "bool" else "int64"
    return partner if partner in FLOATS else DEFAULT_FLOAT
