import numpy as np
import pytest
import torch
from pyflink.table import DataTypes

from flink_torch_ml import DataType, UnsupportedTypeError
from flink_torch_ml.data_types import (data_type_of, flink_type, flink_type_to_string,
                                       parse_type_names, type_names)


@pytest.mark.parametrize("name, flink, torch_dtype, numpy_dtype", [
    ("FLOAT_32", DataTypes.FLOAT(), torch.float32, np.float32),
    ("FLOAT_64", DataTypes.DOUBLE(), torch.float64, np.float64),
    ("INT_32", DataTypes.INT(), torch.int32, np.int32),
    ("INT_64", DataTypes.BIGINT(), torch.int64, np.int64),
    ("FLOAT_32_ARRAY", DataTypes.ARRAY(DataTypes.FLOAT()), torch.float32, np.float32),
    ("FLOAT_64_ARRAY", DataTypes.ARRAY(DataTypes.DOUBLE()), torch.float64, np.float64),
])
def test_seed_names_map_to_flink_torch_and_numpy(name, flink, torch_dtype, numpy_dtype):
    data_type = DataType.from_name(name)
    assert data_type.type_name == name
    assert flink_type(data_type) == flink
    assert data_type_of(flink) is data_type
    assert data_type.torch_dtype == torch_dtype
    assert data_type.numpy_dtype == np.dtype(numpy_dtype)


def test_not_null_flink_types_map_too():
    assert data_type_of(DataTypes.DOUBLE(False)) is DataType.FLOAT_64
    assert data_type_of(DataTypes.STRING()) is DataType.STRING
    assert data_type_of(DataTypes.BOOLEAN()) is DataType.BOOLEAN
    assert not DataType.BOOLEAN.is_numeric and not DataType.STRING.is_numeric


@pytest.mark.parametrize("alias, expected", [
    ("float", DataType.FLOAT_32), ("DOUBLE", DataType.FLOAT_64), ("int", DataType.INT_32),
    ("BIGINT", DataType.INT_64), ("FLOAT32", DataType.FLOAT_32),
    ("ARRAY<FLOAT>", DataType.FLOAT_32_ARRAY), (" float_64 ", DataType.FLOAT_64),
])
def test_aliases(alias, expected):
    assert DataType.from_name(alias) is expected


@pytest.mark.parametrize("flink", [DataTypes.ARRAY(DataTypes.INT()), DataTypes.DECIMAL(10, 2),
                                   DataTypes.TIMESTAMP(3), DataTypes.ARRAY(DataTypes.STRING())])
def test_unsupported_flink_type_names_the_column(flink):
    with pytest.raises(UnsupportedTypeError, match="Column 'c' has unsupported type"):
        data_type_of(flink, "c")


def test_unsupported_type_error_is_also_type_and_value_error():
    with pytest.raises(TypeError):
        DataType.from_name("FLOAT_16")
    with pytest.raises(ValueError, match="Unknown data type name 'FLOAT_16'"):
        DataType.from_name("FLOAT_16")


def test_parse_type_names_and_count():
    types = parse_type_names("FLOAT_32, INT_64,FLOAT_64_ARRAY")
    assert types == [DataType.FLOAT_32, DataType.INT_64, DataType.FLOAT_64_ARRAY]
    assert type_names(types) == "FLOAT_32,INT_64,FLOAT_64_ARRAY"
    with pytest.raises(UnsupportedTypeError, match="names 2 types .* has 3 columns"):
        parse_type_names("FLOAT_32,FLOAT_32", expected_count=3)
    with pytest.raises(UnsupportedTypeError, match="non-empty"):
        parse_type_names("")


def test_from_numpy_and_type_strings():
    assert DataType.from_numpy(np.float32) is DataType.FLOAT_32
    assert DataType.from_numpy(np.float64, is_array=True) is DataType.FLOAT_64_ARRAY
    with pytest.raises(UnsupportedTypeError):
        DataType.from_numpy(np.int64, is_array=True)
    assert flink_type_to_string(DataTypes.ARRAY(DataTypes.INT())) == "ARRAY<INT>"


def test_sql_names_parse_back_to_the_same_type():
    for data_type in DataType:
        assert DataType.from_name(data_type.sql_name) is data_type
