"""Every exception type raised by flink-torch-ml.

Each derives from :class:`FlinkTorchMLError` and also from the standard exception that users
already catch for that kind of problem (``ValueError``, ``TypeError``, ``TimeoutError``...).
Errors found inside a PyTorch worker reach the client as a :class:`WorkerError`; when the
worker's error was one of ours, as a class that is both (e.g. :class:`WorkerInvalidDataError`
is a ``WorkerError`` and an ``InvalidDataError``).
"""

from typing import Dict, Type


class FlinkTorchMLError(Exception):
    """Base class of every error raised by flink-torch-ml."""


class ConfigurationError(FlinkTorchMLError, ValueError, TypeError):
    """An estimator or model is not configured to run (a missing model, loss, optimizer
    creator, feature or label column); the message lists every problem at once."""


class SchemaError(FlinkTorchMLError, ValueError):
    """A column is missing, has an unsupported type, or would be overwritten; or the input
    table cannot be used as it is (unbounded, updating)."""


class UnsupportedTypeError(SchemaError, TypeError):
    """A column or type name is not one of the supported data types."""


class InvalidDataError(FlinkTorchMLError, ValueError):
    """A row holds a NULL or NaN where a value is required, or an array of the wrong length."""


class ModelFormatError(FlinkTorchMLError, ValueError):
    """A saved model directory is missing files, is corrupt, or uses an unknown format/version."""


class UntrustedArtifactError(FlinkTorchMLError, PermissionError):
    """Loading this saved artifact could run code (TorchScript, a pickled estimator, a stage
    class of someone else's, ONNX with external data files) and the caller has not said it
    trusts the path (``trusted=True``)."""


class ChecksumMismatchError(ModelFormatError):
    """A saved model file does not match the sha256 recorded in its metadata."""


class ModelExportError(FlinkTorchMLError, RuntimeError):
    """A torch module could not be converted to TorchScript or ONNX, or the export disagrees."""


class NotFittedError(FlinkTorchMLError, ValueError):
    """A model was used before it had a trained module to run."""


class CheckpointError(FlinkTorchMLError, ValueError):
    """A checkpoint directory cannot be written, or a checkpoint does not fit the model."""


class WorkerError(FlinkTorchMLError, RuntimeError):
    """A PyTorch worker failed; the message names the rank and carries its traceback."""


class WorkerLostError(WorkerError):
    """A PyTorch worker's Python process died (killed, out of memory) while the job ran.
    Fits with ``max_failures > 0`` start a new attempt after this."""


class TaskManagerLostError(WorkerLostError):
    """A Flink TaskManager running PyTorch workers died or became unreachable mid-run."""


class FeedError(WorkerError, ConnectionError):
    """A batch of input could not be delivered to a PyTorch worker, or arrived damaged."""


class RendezvousError(FlinkTorchMLError, ConnectionError):
    """The rendezvous store could not be reached, or its connection broke."""


class ProtocolError(FlinkTorchMLError, ConnectionError):
    """A peer broke the library's wire protocol; its connection is closed."""


class FrameError(ProtocolError):
    """A frame was truncated, larger than the configured maximum, or malformed."""


class AuthenticationError(ProtocolError):
    """A peer did not prove that it holds the run's secret."""


class RendezvousTimeoutError(WorkerError, TimeoutError):
    """A bounded wait between the client and the workers ran out; the message says what was
    awaited and which ranks were missing."""


class WorkerSchemaError(WorkerError, SchemaError):
    """A worker found a schema problem (e.g. an input type it cannot read)."""


class WorkerUnsupportedTypeError(WorkerError, UnsupportedTypeError):
    """A worker met a type it does not support."""


class WorkerInvalidDataError(WorkerError, InvalidDataError):
    """A worker found bad data (NULL, NaN, a diverging loss, an empty table)."""


class WorkerModelFormatError(WorkerError, ModelFormatError):
    """A worker could not read or write a model."""


class WorkerModelExportError(WorkerError, ModelExportError):
    """A worker could not export the trained model."""


class WorkerCheckpointError(WorkerError, CheckpointError):
    """A worker could not write or use a checkpoint."""


#: the class the client raises for an error of a given type name recorded by a worker
_WORKER_CLASSES: Dict[str, Type[WorkerError]] = {
    "SchemaError": WorkerSchemaError,
    "UnsupportedTypeError": WorkerUnsupportedTypeError,
    "InvalidDataError": WorkerInvalidDataError,
    "ModelFormatError": WorkerModelFormatError,
    "ChecksumMismatchError": WorkerModelFormatError,
    "ModelExportError": WorkerModelExportError,
    "CheckpointError": WorkerCheckpointError,
    "TaskManagerLostError": TaskManagerLostError,
    "WorkerLostError": WorkerLostError,
    "FeedError": FeedError,
    "RendezvousTimeoutError": RendezvousTimeoutError,
}


#: failures a new attempt can get past: a lost process or host, a broken connection, a
#: wait that ran out; not the user's code or data, which would fail the same way again
RETRIABLE = (WorkerLostError, FeedError, RendezvousError, RendezvousTimeoutError)


def is_retriable(error: BaseException) -> bool:
    return isinstance(error, RETRIABLE)


def worker_error_class(type_name: str) -> Type[WorkerError]:
    """WorkerError, or the subclass that is also the library error a worker raised (so
    ``except InvalidDataError`` catches bad data found inside a worker)."""
    return _WORKER_CLASSES.get(type_name, WorkerError)
