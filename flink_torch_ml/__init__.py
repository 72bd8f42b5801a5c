"""flink-torch-ml: train PyTorch models inside Apache Flink jobs and score Flink tables with them.

Importing the package makes PyFlink start Python workers as separate processes (its "process"
mode) for environments created afterwards, unless ``_python_worker_execution_mode`` is already
set: distributed PyTorch workers cannot share the client process (PyFlink's local default).
"""

import os as _os

_os.environ.setdefault("_python_worker_execution_mode", "process")

from . import pytorch_utils
from ._version import __version__
from .cluster_config import PyTorchClusterConfig
from .context import PyTorchContext
from .data_types import DataType
from .datastream import ModelMapFunction, score_data_stream
from .environment import create_table_environment
from .estimator import PyTorchEstimator
from .errors import (AuthenticationError, CheckpointError, ChecksumMismatchError, FeedError,
                     FlinkTorchMLError, FrameError, InvalidDataError, ModelExportError,
                     ModelFormatError, NotFittedError, ProtocolError, RendezvousError,
                     RendezvousTimeoutError, SchemaError, TaskManagerLostError,
                     UnsupportedTypeError, WorkerError, WorkerLostError)
from .model import PyTorchModel, register_model_function
from .pipeline import Pipeline, PipelineModel
from .runtime.planner import prepare_planner
from .runtime.callbacks import Callback, EarlyStopping, LRScheduler, ModelCheckpoint
from .runtime.loggers import MLflowLogger, TensorBoardLogger
from .runtime.training import TrainingLoop

__all__ = [
    "__version__",
    "DataType",
    "PyTorchModel",
    "register_model_function",
    "score_data_stream",
    "ModelMapFunction",
    "PyTorchEstimator",
    "TrainingLoop",
    "Callback",
    "EarlyStopping",
    "ModelCheckpoint",
    "LRScheduler",
    "TensorBoardLogger",
    "MLflowLogger",
    "Pipeline",
    "PipelineModel",
    "create_table_environment",
    "prepare_planner",
    "pytorch_utils",
    "PyTorchClusterConfig",
    "PyTorchContext",
    "WorkerError",
    "TaskManagerLostError",
    "WorkerLostError",
    "CheckpointError",
    "FeedError",
    "RendezvousError",
    "RendezvousTimeoutError",
    "ProtocolError",
    "FrameError",
    "AuthenticationError",
    "FlinkTorchMLError",
    "SchemaError",
    "UnsupportedTypeError",
    "InvalidDataError",
    "ModelFormatError",
    "ChecksumMismatchError",
    "ModelExportError",
    "NotFittedError",
]
