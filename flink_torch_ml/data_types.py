"""The data types that cross between Flink and PyTorch (``DataType``, and parsing a list of
type names), as the public API names them; the table itself is in ``core/types.py``."""

from .core.types import DataType, flink_type_to_string, parse_type_names, type_names

__all__ = ["DataType", "parse_type_names", "type_names", "flink_type_to_string"]
