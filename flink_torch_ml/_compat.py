"""What differs between the supported PyFlink lines (1.20 LTS, 2.0-2.3), in one place.

Everything else in the library uses the API all lines share. Each helper prefers the newer
API and falls back to the older one by feature, not by version number.
"""

from typing import List, Optional, Tuple

__all__ = ["FLINK_VERSION", "table_columns", "subtask_index"]


def _flink_version() -> Tuple[int, ...]:
    try:
        from pyflink.version import __version__
    except ImportError:  # pragma: no cover - every supported line has it
        return (0,)
    return tuple(int(part) for part in __version__.split(".")[:2] if part.isdigit())


FLINK_VERSION = _flink_version()


def table_columns(table) -> Tuple[List[str], list]:
    """A Table's column names and Flink data types: ``get_resolved_schema()`` (2.x) or
    ``get_schema()`` (1.20, where the resolved schema is not exposed to Python)."""
    if hasattr(type(table), "get_resolved_schema"):  # not getattr: a Table's attributes
        schema = table.get_resolved_schema()            # are also its column names
        return list(schema.get_column_names()), list(schema.get_column_data_types())
    schema = table.get_schema()
    return list(schema.get_field_names()), list(schema.get_field_data_types())


def subtask_index(function_context) -> Optional[int]:
    """The index of the subtask running a Python UDF (PyFlink 2.3+), or None where the
    function context does not tell it (1.20-2.2)."""
    method = getattr(function_context, "get_index_of_this_subtask", None)
    return int(method()) if method is not None else None
