"""The data types that cross between Flink and PyTorch, as the public API names them: the
``DataType`` table (``core/types.py``), parsing a list of type names, and a Flink type's short
name (``client/schema.py``)."""

from .client.schema import data_type_of, flink_type, flink_type_to_string
from .core.types import DataType, parse_type_names, type_names

__all__ = ["DataType", "parse_type_names", "type_names", "flink_type", "data_type_of",
           "flink_type_to_string"]
