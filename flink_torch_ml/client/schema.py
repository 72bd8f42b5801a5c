"""The Flink side of the type table (``core/types.py``): a column's Flink SQL type as a
DataType and back, and a table's columns held against the one column rule
(``core.rows.check_columns``)."""

from typing import Dict, List, Optional, Sequence, Tuple

from pyflink.table import DataTypes
from pyflink.table.types import (ArrayType, BigIntType, BooleanType, DataType as FlinkDataType,
                                 DoubleType, FloatType, IntType, VarCharType)

from .._compat import table_columns
from ..core.rows import check_columns
from ..core.types import DataType
from ..errors import UnsupportedTypeError

__all__ = ["flink_type", "data_type_of", "flink_type_to_string", "table_types",
           "checked_columns"]

_FACTORIES = {
    DataType.FLOAT_32: DataTypes.FLOAT,
    DataType.FLOAT_64: DataTypes.DOUBLE,
    DataType.INT_32: DataTypes.INT,
    DataType.INT_64: DataTypes.BIGINT,
    DataType.STRING: DataTypes.STRING,
    DataType.BOOLEAN: DataTypes.BOOLEAN,
    DataType.FLOAT_32_ARRAY: lambda: DataTypes.ARRAY(DataTypes.FLOAT()),
    DataType.FLOAT_64_ARRAY: lambda: DataTypes.ARRAY(DataTypes.DOUBLE()),
}

_CLASSES = {
    DataType.FLOAT_32: FloatType,
    DataType.FLOAT_64: DoubleType,
    DataType.INT_32: IntType,
    DataType.INT_64: BigIntType,
    DataType.STRING: VarCharType,
    DataType.BOOLEAN: BooleanType,
    DataType.FLOAT_32_ARRAY: FloatType,
    DataType.FLOAT_64_ARRAY: DoubleType,
}


def flink_type(data_type: DataType) -> FlinkDataType:
    """The Flink SQL type of a data type (e.g. ``FLOAT_32_ARRAY`` -> ``ARRAY<FLOAT>``)."""
    return _FACTORIES[data_type]()


def data_type_of(type_: FlinkDataType, column: Optional[str] = None) -> DataType:
    """The data type of a Flink column type, or UnsupportedTypeError naming the column."""
    for data_type, flink_class in _CLASSES.items():
        if data_type.is_array:
            if isinstance(type_, ArrayType) and isinstance(type_.element_type, flink_class):
                return data_type
        elif isinstance(type_, flink_class) and not isinstance(type_, ArrayType):
            return data_type
    where = f"Column {column!r} has" if column else "Type"
    raise UnsupportedTypeError(
        f"{where} unsupported type {flink_type_to_string(type_)}; supported: FLOAT, "
        f"DOUBLE, INT, BIGINT, STRING, BOOLEAN, ARRAY<FLOAT>, ARRAY<DOUBLE>. Cast the "
        f"column first, e.g. table.select(col('x').cast(DataTypes.FLOAT()))")


def flink_type_to_string(type_: FlinkDataType) -> str:
    """A short SQL-like name of a Flink type for error messages, e.g. ``ARRAY<INT>``."""
    if isinstance(type_, ArrayType):
        return f"ARRAY<{flink_type_to_string(type_.element_type)}>"
    return type(type_).__name__.replace("Type", "").upper()


def table_types(table) -> Tuple[List[str], Dict[str, FlinkDataType]]:
    """A table's column names, in order, and their Flink types."""
    names, types = table_columns(table)
    return names, dict(zip(names, types))


def checked_columns(table, features: Sequence[str], label: Optional[str] = None,
                    extra: Sequence[str] = (), outputs: Sequence[Tuple[str, str]] = ()
                    ) -> Tuple[List[DataType], Optional[DataType], Dict[str, FlinkDataType]]:
    """The table's feature (and label) columns checked by the column rule: present, of
    feature types, the label no feature, no output column (``(name, param)`` pairs) taken.
    Returns their DataTypes and every column's Flink type."""
    names, types = table_types(table)
    feature_types, label_type = check_columns(
        names, lambda c: data_type_of(types[c], c), features, label, extra, outputs)
    return feature_types, label_type, types
