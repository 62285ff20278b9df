"""The protocol's tensor datatypes and numpy's dtypes, both ways."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["DATATYPES", "datatype_of", "dtype_of", "from_swagger"]

# BF16 has no numpy dtype of its own (it needs ml_dtypes), so it is refused by name.
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
_BY_KIND = {dtype.str.lstrip("<>|="): name for name, dtype in DATATYPES.items() if name != "BYTES"}

# inference-schema's swagger (type, format) for each datatype it can declare
_SWAGGER = {
    ("boolean", None): "BOOL",
    ("integer", "int8"): "INT8",
    ("integer", "int16"): "INT16",
    ("integer", "int32"): "INT32",
    ("integer", "int64"): "INT64",
    ("integer", "uint8"): "UINT8",
    ("integer", "uint16"): "UINT16",
    ("integer", "uint32"): "UINT32",
    ("integer", "uint64"): "UINT64",
    ("integer", None): "INT64",
    ("number", "float"): "FP32",
    ("number", "double"): "FP64",
    ("number", "float16"): "FP16",
    ("number", None): "FP64",
    ("string", None): "BYTES",
}


def dtype_of(datatype: str) -> np.dtype[Any] | None:
    """numpy's dtype for a protocol datatype, or None when it is not one modelfleet takes."""
    return DATATYPES.get(datatype)


def datatype_of(array: np.ndarray[Any, Any]) -> str:
    """The protocol datatype of an array: strings, bytes and objects are BYTES."""
    kind = array.dtype.kind
    if kind in "OSU":
        return "BYTES"
    name = _BY_KIND.get(array.dtype.str.lstrip("<>|="))
    if name is None:
        raise TypeError(f"arrays of dtype {array.dtype} have no Open Inference Protocol datatype")
    return name


def from_swagger(schema: dict[str, Any]) -> str:
    """The datatype a swagger item schema declares (``{"type": "number", "format": "float"}``)."""
    kind = str(schema.get("type"))
    form = schema.get("format")
    form = form if isinstance(form, str) else None
    return _SWAGGER.get((kind, form)) or _SWAGGER.get((kind, None)) or "BYTES"
