"""The data types that cross between Flink and PyTorch: one table mapping each name to its
torch and numpy dtypes and its SQL spelling. The names follow DL-on-Flink (``FLOAT_32,
FLOAT_64, INT_32, INT_64``), extended with ``STRING``, ``BOOLEAN`` and float arrays. Everything
else looks types up here; the Flink schema side of the mapping is ``client/schema.py``.
Free of Flink.
"""

import enum
from typing import List, Optional, Sequence

import numpy as np
import torch

from ..errors import UnsupportedTypeError

__all__ = ["DataType", "parse_type_names", "type_names", "FEATURE_TYPES"]


class DataType(enum.Enum):
    """A supported column type: ``(name, is_array, torch dtype, numpy dtype)``."""

    FLOAT_32 = ("FLOAT_32", False, torch.float32, np.float32)
    FLOAT_64 = ("FLOAT_64", False, torch.float64, np.float64)
    INT_32 = ("INT_32", False, torch.int32, np.int32)
    INT_64 = ("INT_64", False, torch.int64, np.int64)
    STRING = ("STRING", False, None, np.object_)
    BOOLEAN = ("BOOLEAN", False, torch.bool, np.bool_)
    FLOAT_32_ARRAY = ("FLOAT_32_ARRAY", True, torch.float32, np.float32)
    FLOAT_64_ARRAY = ("FLOAT_64_ARRAY", True, torch.float64, np.float64)

    def __init__(self, type_name: str, is_array: bool, torch_dtype, numpy_dtype):
        self.type_name = type_name
        self.is_array = is_array
        self.torch_dtype = torch_dtype
        self.numpy_dtype = np.dtype(numpy_dtype)

    @property
    def is_floating(self) -> bool:
        return self.numpy_dtype.kind == "f"

    @property
    def is_numeric(self) -> bool:
        return self not in (DataType.STRING, DataType.BOOLEAN)

    @property
    def sql_name(self) -> str:
        """The Flink SQL spelling of this type, e.g. ``ARRAY<FLOAT>``."""
        return _SQL_NAMES[self]

    @classmethod
    def from_name(cls, name: str) -> "DataType":
        """Parse a type name such as ``"FLOAT_32"`` (case-insensitive, Flink aliases allowed)."""
        key = name.strip().upper().replace(" ", "")
        key = _ALIASES.get(key, key)
        try:
            return cls[key]
        except KeyError:
            raise UnsupportedTypeError(
                f"Unknown data type name {name!r}; supported names are "
                f"{', '.join(t.type_name for t in cls)}") from None

    @classmethod
    def from_numpy(cls, dtype, is_array: bool = False) -> "DataType":
        """The data type holding values of a numpy dtype (used for model outputs)."""
        dtype = np.dtype(dtype)
        for data_type in cls:
            if data_type.is_array == is_array and data_type.numpy_dtype == dtype:
                return data_type
        raise UnsupportedTypeError(
            f"Unsupported {'array ' if is_array else ''}dtype {dtype}; a model output must be "
            f"float32, float64, int32 or int64 (float arrays for outputs wider than 1)")


_SQL_NAMES = {
    DataType.FLOAT_32: "FLOAT", DataType.FLOAT_64: "DOUBLE", DataType.INT_32: "INT",
    DataType.INT_64: "BIGINT", DataType.STRING: "STRING", DataType.BOOLEAN: "BOOLEAN",
    DataType.FLOAT_32_ARRAY: "ARRAY<FLOAT>", DataType.FLOAT_64_ARRAY: "ARRAY<DOUBLE>",
}

_ALIASES = {
    "FLOAT32": "FLOAT_32", "FLOAT": "FLOAT_32",
    "FLOAT64": "FLOAT_64", "DOUBLE": "FLOAT_64",
    "INT32": "INT_32", "INT": "INT_32", "INTEGER": "INT_32",
    "INT64": "INT_64", "BIGINT": "INT_64",
    "VARCHAR": "STRING", "BOOL": "BOOLEAN",
    "ARRAY<FLOAT>": "FLOAT_32_ARRAY", "FLOAT_32[]": "FLOAT_32_ARRAY",
    "ARRAY<DOUBLE>": "FLOAT_64_ARRAY", "FLOAT_64[]": "FLOAT_64_ARRAY",
}


def parse_type_names(names: str, expected_count: Optional[int] = None,
                     what: str = "input_types") -> List[DataType]:
    """Parse a comma-separated list of type names, e.g. ``"FLOAT_32,INT_64"``."""
    if not isinstance(names, str) or not names.strip():
        raise UnsupportedTypeError(f"{what} must be a non-empty comma-separated string of type "
                                   f"names such as 'FLOAT_32,FLOAT_32', got {names!r}")
    types = [DataType.from_name(n) for n in names.split(",")]
    if expected_count is not None and len(types) != expected_count:
        raise UnsupportedTypeError(f"{what} names {len(types)} types ({names!r}) but the table "
                                   f"has {expected_count} columns")
    return types


def type_names(types: Sequence[DataType]) -> str:
    """The comma-separated names of some data types (the inverse of :func:`parse_type_names`)."""
    return ",".join(t.type_name for t in types)


#: the types a feature or label column may have
FEATURE_TYPES = frozenset({DataType.FLOAT_32, DataType.FLOAT_64, DataType.INT_32,
                           DataType.INT_64, DataType.FLOAT_32_ARRAY, DataType.FLOAT_64_ARRAY})
