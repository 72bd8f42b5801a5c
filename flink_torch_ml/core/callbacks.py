"""Callbacks of the training loop (``engine.TrainingLoop``), in Keras' and skorch's style:
objects with no-op hooks that the loop calls on every rank, in batch fits (epochs) and online
training (one ``on_update_end`` per model version) alike.

A callback sees the loop as ``self.loop`` (``rank``, ``world_size``, ``model``,
``optimizer``, ``history``, ``attempt``...) and may set ``self.loop.stop_training = True``;
all ranks then stop after the same epoch. Callbacks travel inside the Flink job (cloudpickle)
and run inside Flink's Python workers. State a callback needs after a resume goes in
``state_dict()`` (JSON-able), restored with ``load_state_dict``.
"""

import math
import os
from typing import Any, Callable, Dict, List, Optional

__all__ = ["Callback", "EarlyStopping", "LRScheduler", "ModelCheckpoint"]


class Callback:
    """Base class: override the hooks you need. ``logs`` hold the epoch's record (averaged
    over all ranks: ``train_loss``, ``valid_loss``, metrics, rows, seconds), or online the
    update's."""

    loop: Any = None

    def set_loop(self, loop) -> None:
        self.loop = loop

    def on_train_begin(self) -> None:
        pass

    def on_epoch_begin(self, epoch: int) -> None:
        pass

    def on_batch_end(self, batch: int, logs: Dict[str, Any]) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: Dict[str, Any]) -> None:
        pass

    def on_update_end(self, version: int, logs: Dict[str, Any]) -> None:
        """Online training: model ``version`` was made; ``logs`` hold its ``rows``, the
        prequential ``loss`` and metrics (of the model before this update, on its rows,
        averaged over all ranks) and ``update_seconds``."""

    def on_train_end(self) -> None:
        pass

    def state_dict(self) -> Dict[str, Any]:
        """What to keep in checkpoints (JSON-able)."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass

    def __getstate__(self):  # never ship the loop a callback was attached to
        state = dict(self.__dict__)
        state.pop("loop", None)
        return state


class EarlyStopping(Callback):
    """Stops training when ``monitor`` (a key of the epoch logs, e.g. ``valid_loss``) has not
    improved by more than ``min_delta`` for ``patience`` epochs. The logs are averaged over
    all ranks, so every rank takes the same decision at the same epoch."""

    def __init__(self, monitor: str = "valid_loss", patience: int = 3, min_delta: float = 0.0,
                 mode: str = "min"):
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping mode must be 'min' or 'max', got {mode!r}")
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping patience must be an int >= 0, got {patience!r}")
        if min_delta < 0:
            raise ValueError(f"EarlyStopping min_delta must be >= 0, got {min_delta!r}")
        self.monitor, self.patience, self.min_delta, self.mode = monitor, patience, min_delta, mode
        self.best: Optional[float] = None
        self.wait = 0
        self.stopped_epoch: Optional[int] = None

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch: int, logs: Dict[str, Any]) -> None:
        if self.monitor not in logs:
            raise KeyError(f"EarlyStopping monitors {self.monitor!r}, which the epoch logs do "
                           f"not have (they have {sorted(logs)}); set validation=... for "
                           f"valid_loss, or monitor='train_loss'")
        value = float(logs[self.monitor])
        if math.isnan(value):
            return
        if self._improved(value):
            self.best, self.wait = value, 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.stopped_epoch = epoch
                self.loop.stop_training = True

    def state_dict(self) -> Dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.best, self.wait = state.get("best"), int(state.get("wait", 0))


class LRScheduler(Callback):
    """Steps a learning-rate scheduler ``creator(optimizer)`` once per epoch (what
    ``PyTorchEstimator(lr_scheduler_creator=...)`` adds); its state is checkpointed."""

    def __init__(self, creator: Callable):
        self.creator = creator
        self.scheduler: Any = None  # the torch LR scheduler, from on_train_begin
        self._resumed_state: Optional[Dict[str, Any]] = None

    def on_train_begin(self) -> None:
        self.scheduler = self.creator(self.loop.optimizer)
        if self._resumed_state is not None:
            self.scheduler.load_state_dict(self._resumed_state)
            self._resumed_state = None

    def on_epoch_end(self, epoch: int, logs: Dict[str, Any]) -> None:
        self.scheduler.step()

    def torch_state(self) -> Optional[Dict[str, Any]]:
        """The scheduler's state dict (tensors allowed: it goes into the state file)."""
        return self.scheduler.state_dict() if self.scheduler is not None else None

    def load_torch_state(self, state: Optional[Dict[str, Any]]) -> None:
        """Resume: the state is loaded once the scheduler exists (at on_train_begin)."""
        self._resumed_state = state

    def __getstate__(self):
        state = super().__getstate__()
        state["scheduler"] = None
        return state


class ModelCheckpoint(Callback):
    """Rank 0 saves the model in the library's format (loadable with
    ``PyTorchModel.load``) into ``dirpath``: after every epoch, or with ``save_best_only``
    only when ``monitor`` improved (``mode`` 'min' or 'max')."""

    def __init__(self, dirpath: str, monitor: str = "valid_loss", mode: str = "min",
                 save_best_only: bool = True, format: str = "torchscript"):
        if mode not in ("min", "max"):
            raise ValueError(f"ModelCheckpoint mode must be 'min' or 'max', got {mode!r}")
        self.dirpath, self.monitor, self.mode = dirpath, monitor, mode
        self.save_best_only, self.format = save_best_only, format
        self.best: Optional[float] = None
        self.saved_epochs: List[int] = []

    def on_epoch_end(self, epoch: int, logs: Dict[str, Any]) -> None:
        if self.save_best_only:
            value = float(logs.get(self.monitor, math.nan))
            better = self.best is None or (value < self.best if self.mode == "min"
                                           else value > self.best)
            if math.isnan(value) or not better:
                return
            self.best = value
            path = os.path.join(self.dirpath, "best")
        else:
            path = os.path.join(self.dirpath, f"epoch-{epoch + 1:06d}")
        self.saved_epochs.append(epoch + 1)
        if self.loop.rank == 0:
            self.loop.save_model(path, self.format)

    def state_dict(self) -> Dict[str, Any]:
        return {"best": self.best, "saved_epochs": list(self.saved_epochs)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.best = state.get("best")
        self.saved_epochs = list(state.get("saved_epochs", []))
