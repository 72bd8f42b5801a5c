"""Exception types raised by flink-torch-ml.

Every error derives from :class:`FlinkTorchMLError` and also from the standard exception that
users already catch for that kind of problem (``ValueError``, ``TypeError``, ``IOError``...).
"""


class FlinkTorchMLError(Exception):
    """Base class of every error raised by flink-torch-ml."""


class SchemaError(FlinkTorchMLError, ValueError):
    """A column is missing, has an unsupported type, or would be overwritten."""


class UnsupportedTypeError(SchemaError, TypeError):
    """A column or type name is not one of the supported data types."""


class InvalidDataError(FlinkTorchMLError, ValueError):
    """A row holds a NULL or NaN where a value is required, or an array of the wrong length."""


class ModelFormatError(FlinkTorchMLError, ValueError):
    """A saved model directory is missing files, is corrupt, or uses an unknown format/version."""


class ChecksumMismatchError(ModelFormatError):
    """A saved model file does not match the sha256 recorded in its metadata."""


class ModelExportError(FlinkTorchMLError, RuntimeError):
    """A torch module could not be converted to TorchScript or ONNX, or the export disagrees."""


class NotFittedError(FlinkTorchMLError, ValueError):
    """A model was used before it had a trained module to run."""
