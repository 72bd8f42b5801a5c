"""flink-torch-ml: train PyTorch models inside Apache Flink jobs and score Flink tables with them."""

from ._version import __version__
from .data_types import DataType
from .environment import create_table_environment
from .errors import (ChecksumMismatchError, FlinkTorchMLError, InvalidDataError,
                     ModelExportError, ModelFormatError, NotFittedError, SchemaError,
                     UnsupportedTypeError)
from .model import PyTorchModel

__all__ = [
    "__version__",
    "DataType",
    "PyTorchModel",
    "create_table_environment",
    "FlinkTorchMLError",
    "SchemaError",
    "UnsupportedTypeError",
    "InvalidDataError",
    "ModelFormatError",
    "ChecksumMismatchError",
    "ModelExportError",
    "NotFittedError",
]
