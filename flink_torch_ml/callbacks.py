"""Callbacks for the training loop of ``PyTorchEstimator`` and ``OnlinePyTorchEstimator``:
the base class to subclass and the ones the library ships (early stopping, LR schedules,
model checkpoints, TensorBoard and MLflow loggers). They run inside Flink's Python workers,
on every rank; see ``Callback`` for the hooks."""

from .core.callbacks import Callback, EarlyStopping, LRScheduler, ModelCheckpoint
from .core.loggers import MLflowLogger, TensorBoardLogger

__all__ = ["Callback", "EarlyStopping", "LRScheduler", "ModelCheckpoint", "TensorBoardLogger",
           "MLflowLogger"]
