"""ONNX element types and NumPy dtypes as graphc dtypes, for the importer and its op table."""

from __future__ import annotations

import numpy as np

from .. import dtypes
from ..errors import DTypeError
from ..ir import located

# ONNX TensorProto element types graphc has (FLOAT16, INT8 ... have no graphc dtype).
ONNX_DTYPES = {1: "float32", 11: "float64", 6: "int32", 7: "int64", 9: "bool"}


def graphc_dtype(np_dtype, what: str) -> str:
    name = np.dtype(np_dtype).name
    try:
        return dtypes.as_dtype(name)
    except TypeError:
        raise DTypeError(located(f"{what} has dtype {name}, which graphc does not "
                                 f"have")) from None


def onnx_dtype(elem_type: int, what: str) -> str:
    if elem_type not in ONNX_DTYPES:
        from onnx import TensorProto
        raise DTypeError(located(f"{what} has ONNX type {TensorProto.DataType.Name(elem_type)}, "
                                 f"which graphc does not have (it has "
                                 f"{', '.join(dtypes.DTYPES)})"))
    return ONNX_DTYPES[elem_type]
