"""The estimator's training loop, run by every worker: no Flink imports, only torch.

``fit_worker`` turns the worker's shard into tensors (one per feature column, as the model's
``forward`` takes them, plus the label), wraps the model in DistributedDataParallel and runs
a :class:`TrainingLoop`: ``fit_loop -> run_epoch -> train_step / validation_step``, each step
overridable, with callbacks notified on every rank. Loss and metrics are averaged over all
rows of all workers every epoch. Randomness derives from ``(seed, epoch, rank)`` only (the
shuffle, the global RNG at each epoch's start, the validation split), so a fit resumed from
a checkpoint continues exactly as an uninterrupted one.
"""

import contextlib
import datetime
import io
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .._defaults import TIMEOUT
from .types import DataType
from ..errors import InvalidDataError
from .callbacks import Callback, LRScheduler
from .checkpoint import Checkpoint, check_compatible, load_checkpoint_state, parameter_shapes, \
    write_checkpoint

__all__ = ["TrainSettings", "TrainingLoop", "fit_worker", "BUILTIN_METRICS", "state_to_bytes",
           "state_from_bytes", "epoch_seed"]


def _accuracy(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if prediction.dim() > 1 and prediction.shape[1] > 1:  # class scores vs class indices
        return (prediction.argmax(dim=1) == target.reshape(-1)).float().mean()
    return ((prediction.reshape(-1) > 0.5).float() == target.reshape(-1).float()).float().mean()


def _mse(prediction, target):
    return torch.mean((prediction.reshape(target.shape).float() - target.float()) ** 2)


def _mae(prediction, target):
    return torch.mean(torch.abs(prediction.reshape(target.shape).float() - target.float()))


BUILTIN_METRICS: Dict[str, Callable] = {"accuracy": _accuracy, "mse": _mse, "mae": _mae}


@dataclass
class TrainSettings:
    """Everything a worker needs to train (shipped inside the job with cloudpickle)."""

    model: torch.nn.Module
    loss: Callable
    optimizer_creator: Callable
    feature_cols: List[str]
    feature_types: List[str]
    label_col: str
    label_type: str
    max_epochs: int
    batch_size: int
    seed: int = 0
    shuffle: bool = True
    validation: Union[None, float, str] = None
    metrics: Dict[str, Callable] = field(default_factory=dict)
    callbacks: List[Callback] = field(default_factory=list)
    loop: Optional["TrainingLoop"] = None  # a user's subclass; default TrainingLoop()
    checkpoint_dir: Optional[str] = None
    checkpoint_every: int = 1
    keep_checkpoints: int = 3


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one rank's randomness in one epoch: a function of nothing else."""
    return (seed * 1_000_003 + epoch * 131 + rank) % (2 ** 63)


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def _tensor(column: np.ndarray, data_type: DataType, name: str, float_dtype: torch.dtype,
            is_label: bool) -> torch.Tensor:
    kind = "Label" if is_label else "Feature"
    if data_type.is_floating:
        values = np.asarray(column, dtype=data_type.numpy_dtype)
        bad = np.isnan(values) if values.ndim == 1 else np.isnan(values).any(axis=1)
        if bad.any():
            raise InvalidDataError(f"{kind} column {name!r} holds NaN in {int(bad.sum())} of "
                                   f"{len(values)} rows")
        tensor = torch.from_numpy(values).to(float_dtype)
        return tensor.unsqueeze(1) if tensor.dim() == 1 else tensor
    tensor = torch.from_numpy(np.asarray(column, dtype=np.int64))
    if is_label:
        return tensor  # class indices: [batch] int64, what cross-entropy expects
    return tensor.unsqueeze(1)


def _split(rows: int, settings: TrainSettings, rank: int, flags: Optional[np.ndarray]):
    """Indices of the training and validation rows of this shard."""
    if isinstance(settings.validation, str):
        mask = np.asarray(flags, dtype=bool)
        return np.flatnonzero(~mask), np.flatnonzero(mask)
    if settings.validation:
        generator = np.random.default_rng(settings.seed * 7919 + rank)
        held_out = generator.random(rows) < settings.validation
        return np.flatnonzero(~held_out), np.flatnonzero(held_out)
    return np.arange(rows), np.arange(0)


class _Reducer:
    """Sums of (loss, metrics..., rows) over all workers."""

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self.totals = torch.zeros(len(self.names) + 1, dtype=torch.float64)

    def add(self, values: Sequence[float], rows: int) -> None:
        self.totals[:-1] += torch.tensor([v * rows for v in values], dtype=torch.float64)
        self.totals[-1] += rows

    def means(self, distributed: bool) -> Dict[str, float]:
        totals = self.totals.clone()
        if distributed:
            torch.distributed.all_reduce(totals)
        rows = totals[-1].item()
        return {n: (totals[i].item() / rows if rows else float("nan"))
                for i, n in enumerate(self.names)} | {"rows": int(rows)}


class _Gatherer:
    """Gathers a batch of rows from the feature tensors with one indexing operation per
    dtype (instead of one per column), then splits it back into one tensor per column."""

    def __init__(self, features: List[torch.Tensor]):
        self.features = features
        self.widths = [f.shape[1] for f in features]
        same = len({f.dtype for f in features}) == 1
        self.packed = torch.cat(features, dim=1) if same and len(features) > 1 else None

    def inputs(self, index: torch.Tensor) -> List[torch.Tensor]:
        if self.packed is None:
            return [f[index] for f in self.features]
        return list(self.packed[index].split(self.widths, dim=1))


class TrainingLoop:
    """The estimator's training loop, run on every rank. Subclass it and pass an instance as
    ``PyTorchEstimator(training_loop=...)`` to change one step:

    - ``fit_loop()``: epochs from ``start_epoch`` to ``max_epochs``, callbacks around them,
      a checkpoint every ``checkpoint_every`` epochs, all ranks stopping together;
    - ``run_epoch(epoch) -> logs``: shuffles (from ``(seed, epoch, rank)``), runs
      ``train_step`` on each batch, averages loss and metrics over all ranks, validates;
    - ``train_step(inputs, target) -> (loss, prediction)``: forward, loss, backward, step;
    - ``validation_step(inputs, target) -> (loss, prediction)``: forward and loss, no grad.

    Available while it runs: ``rank``, ``world_size``, ``attempt``, ``model`` (the module),
    ``ddp`` (the DistributedDataParallel wrapper, or the module when alone), ``optimizer``,
    ``loss``, ``metrics``, ``settings``, ``callbacks``, ``history``, ``start_epoch``,
    ``stop_training``.
    """

    # ------------------------------------------------------------------ set-up
    def _setup(self, rank: int, world_size: int, columns: List[np.ndarray],
               settings: TrainSettings, attempt: int = 0,
               save_model: Optional[Callable[[str, str], None]] = None) -> None:
        self.rank, self.world_size, self.attempt = rank, world_size, attempt
        self.settings = settings
        self.distributed = world_size > 1
        self.save_model_fn = save_model
        torch.manual_seed(settings.seed)  # same initial state everywhere (DDP broadcasts too)
        self.model = settings.model
        float_dtype = _model_dtype(self.model)
        n_features = len(settings.feature_cols)
        self.features = [_tensor(c, DataType.from_name(t), n, float_dtype, False)
                         for c, t, n in zip(columns[:n_features], settings.feature_types,
                                            settings.feature_cols)]
        self.label = _tensor(columns[n_features], DataType.from_name(settings.label_type),
                             settings.label_col, float_dtype, True)
        flags = columns[n_features + 1] if isinstance(settings.validation, str) else None
        self.rows = len(self.label)
        total_rows = torch.tensor([self.rows], dtype=torch.int64)
        if self.distributed:
            torch.distributed.all_reduce(total_rows)
        if total_rows.item() == 0:
            raise InvalidDataError("The training table is empty: nothing to fit")
        self.train_index, self.valid_index = _split(self.rows, settings, rank, flags)
        self.gatherer = _Gatherer(self.features)
        self.ddp = torch.nn.parallel.DistributedDataParallel(self.model) \
            if self.distributed else self.model
        self.optimizer = settings.optimizer_creator(self.model)
        self.loss = settings.loss
        self.metrics = dict(settings.metrics)
        self.callbacks = list(settings.callbacks)
        self.history: List[Dict[str, Any]] = []
        self.start_epoch = 0
        self.stop_training = False
        for callback in self.callbacks:
            callback.set_loop(self)

    # ------------------------------------------------------------------ the loop
    def fit_loop(self) -> None:
        """All epochs, from ``start_epoch``; callbacks around them."""
        self.notify("on_train_begin")
        for epoch in range(self.start_epoch, self.settings.max_epochs):
            logs = self.run_epoch(epoch)
            self.history.append(logs)
            self.notify("on_epoch_end", epoch, logs)
            stop = self.agree_to_stop()
            self.after_epoch(epoch, stop)
            if stop:
                break
        self.notify("on_train_end")

    def run_epoch(self, epoch: int) -> Dict[str, Any]:
        """One pass over this rank's training rows, then validation; the epoch's record."""
        self.notify("on_epoch_begin", epoch)
        seed = epoch_seed(self.settings.seed, epoch, self.rank)
        torch.manual_seed(seed)  # dropout & co.: from (seed, epoch, rank), not history
        np.random.seed(seed % (2 ** 32))
        random.seed(seed)
        started = time.perf_counter()
        self.model.train()
        order = self.train_index
        if self.settings.shuffle:
            generator = torch.Generator().manual_seed(seed)
            order = order[torch.randperm(len(order), generator=generator).numpy()]
        names = ["loss"] + list(self.metrics)
        reducer = _Reducer(names)
        loss_sum = torch.zeros((), dtype=torch.float64)
        join = self.ddp.join() if self.distributed else contextlib.nullcontext()
        with join:  # DDP.join: ranks with fewer batches shadow the others' all-reduces
            for number, start in enumerate(range(0, len(order), self.settings.batch_size)):
                index = torch.from_numpy(order[start:start + self.settings.batch_size])
                target = self.label[index]
                loss, prediction = self.train_step(self.gatherer.inputs(index), target)
                loss_sum += loss.detach().double() * len(index)
                if self.metrics:
                    with torch.no_grad():
                        reducer.add([0.0] + [float(m(prediction, target))
                                             for m in self.metrics.values()], len(index))
                self.notify("on_batch_end", number, {"loss": loss.detach(), "rows": len(index)})
        if not torch.isfinite(loss_sum):
            raise InvalidDataError(f"The loss became {loss_sum.item()} in epoch {epoch} "
                                   f"(rank {self.rank}); lower the learning rate or check the "
                                   f"data")
        reducer.totals[0] = loss_sum
        reducer.totals[-1] = len(order)
        train = reducer.means(self.distributed)
        seconds = time.perf_counter() - started
        logs = {"epoch": epoch + 1, "train_loss": train["loss"], "train_rows": train["rows"],
                "epoch_seconds": seconds,
                "rows_per_second": train["rows"] / seconds if seconds else math.inf}
        logs.update({f"train_{n}": train[n] for n in self.metrics})
        if self.settings.validation:
            valid = self.evaluate(self.valid_index)
            logs["valid_loss"] = valid["loss"]
            logs["valid_rows"] = valid["rows"]
            logs.update({f"valid_{n}": valid[n] for n in self.metrics})
        logs["attempt"] = self.attempt
        return logs

    def train_step(self, inputs: List[torch.Tensor], target: torch.Tensor
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Forward, loss, backward, optimizer step; returns (loss, prediction)."""
        self.optimizer.zero_grad()
        prediction = self.ddp(*inputs)
        loss = self.loss(prediction, target)
        loss.backward()
        self.optimizer.step()
        return loss, prediction

    def validation_step(self, inputs: List[torch.Tensor], target: torch.Tensor
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Forward and loss without gradients; returns (loss, prediction)."""
        prediction = self.model(*inputs)
        return self.loss(prediction, target), prediction

    def evaluate(self, index: np.ndarray) -> Dict[str, float]:
        """Loss and metrics over the given rows of this rank, averaged over all ranks."""
        self.model.eval()
        reducer = _Reducer(["loss"] + list(self.metrics))
        with torch.no_grad():
            for start in range(0, len(index), self.settings.batch_size):
                part = torch.from_numpy(index[start:start + self.settings.batch_size])
                target = self.label[part]
                loss, prediction = self.validation_step(
                    [f[part] for f in self.features], target)
                reducer.add([float(loss)] + [float(m(prediction, target))
                                             for m in self.metrics.values()], len(part))
        return reducer.means(self.distributed)

    # ------------------------------------------------------------------ helpers
    def notify(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)

    def agree_to_stop(self) -> bool:
        """True on every rank when any rank's callback asked to stop."""
        flag = torch.tensor([1.0 if self.stop_training else 0.0])
        if self.distributed:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        self.stop_training = bool(flag.item())
        return self.stop_training

    def after_epoch(self, epoch: int, last: bool) -> None:
        """Write a checkpoint (rank 0) every ``checkpoint_every`` epochs and after the last."""
        settings = self.settings
        done = epoch + 1
        if not settings.checkpoint_dir or self.rank != 0:
            return
        if done % settings.checkpoint_every and not last and done != settings.max_epochs:
            return
        started = time.perf_counter()
        write_checkpoint(settings.checkpoint_dir, done, self.checkpoint_state(), {
            "history": self.history, "world_size": self.world_size, "seed": settings.seed,
            "attempt": self.attempt, "model_params": parameter_shapes(self.model),
            "stopped": last and done != settings.max_epochs,
            "callbacks": {str(i): c.state_dict() for i, c in enumerate(self.callbacks)}},
            settings.keep_checkpoints)
        self.history[-1]["checkpoint_seconds"] = time.perf_counter() - started

    def checkpoint_state(self) -> Dict[str, Any]:
        """The tensors a resumed fit needs: model, optimizer, LR scheduler."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": [c.torch_state() for c in self.callbacks
                              if isinstance(c, LRScheduler)]}


    def resume(self, checkpoint: Checkpoint) -> None:
        """Continue from a checkpoint: weights, optimizer, scheduler, history, callbacks."""
        check_compatible(checkpoint, self.model)
        state = load_checkpoint_state(checkpoint)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = list(checkpoint.metadata.get("history", []))
        self.start_epoch = int(checkpoint.epoch)
        if checkpoint.metadata.get("stopped"):  # a callback had ended that fit
            self.start_epoch = self.settings.max_epochs
        states = checkpoint.metadata.get("callbacks") or {}
        for i, callback in enumerate(self.callbacks):
            callback.load_state_dict(states.get(str(i), {}))
        schedulers = [c for c in self.callbacks if isinstance(c, LRScheduler)]
        for callback, torch_state in zip(schedulers, state.get("scheduler") or []):
            callback.load_torch_state(torch_state)

    def save_model(self, path: str, model_format: str = "torchscript") -> None:
        """Save the current model in the library's format (used by ModelCheckpoint)."""
        if self.save_model_fn is None:
            raise RuntimeError("save_model is available in PyTorchEstimator fits")
        self.save_model_fn(path, model_format)


def fit_worker(rank: int, world_size: int, columns: List[np.ndarray], settings: TrainSettings,
               store=None, timeout: float = TIMEOUT,
               on_epoch: Optional[Callable[[Dict[str, Any]], None]] = None,
               attempt: int = 0, resume_from: Optional[Checkpoint] = None,
               save_model: Optional[Callable[[str, str], None]] = None,
               on_batch: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Train on this worker's shard; return the history and (rank 0) the trained state.
    ``store`` is a ``torch.distributed.Store`` for the process group's rendezvous (needed
    when ``world_size > 1``); ``resume_from`` a verified checkpoint to continue."""
    distributed = world_size > 1
    # Flink's Python worker may start with one intra-op thread; give each worker its share
    # of the machine's cores (W workers on one host share it).
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    if distributed:
        torch.distributed.init_process_group(
            "gloo", store=store, rank=rank, world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout))
    try:
        loop = settings.loop if settings.loop is not None else TrainingLoop()
        reporter = _EpochReporter(on_epoch, on_batch) if on_epoch is not None and rank == 0 \
            else None
        settings = _with_callbacks(settings, settings.callbacks + ([reporter] if reporter
                                                                    else []))
        loop._setup(rank, world_size, columns, settings, attempt, save_model)
        if resume_from is not None:
            loop.resume(resume_from)
        loop.fit_loop()
        result = {"history": loop.history, "rows": loop.rows,
                  "torch_threads": torch.get_num_threads(), "start_epoch": loop.start_epoch}
        if rank == 0:
            result["state_dict"] = state_to_bytes(loop.model.state_dict())
        return result
    finally:
        if distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _with_callbacks(settings: TrainSettings, callbacks: List[Callback]) -> TrainSettings:
    import dataclasses

    return dataclasses.replace(settings, callbacks=callbacks)


class _EpochReporter(Callback):
    """Internal: hands each epoch's record to the client (rank 0), for progress output, and
    (with ``report_batch``) its position within the epoch, at most every ``interval`` s."""

    def __init__(self, report: Callable[[Dict[str, Any]], None],
                 report_batch: Optional[Callable[[Dict[str, Any]], None]] = None,
                 interval: float = 0.25):
        self.report, self.report_batch, self.interval = report, report_batch, interval
        self._batches, self._epoch, self._last = 0, 0, 0.0

    def on_epoch_begin(self, epoch: int) -> None:
        self._epoch = epoch + 1
        self._batches = max(1, math.ceil(len(self.loop.train_index)
                                         / self.loop.settings.batch_size))
        self._send(0)

    def on_batch_end(self, batch: int, logs: Dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval or batch + 1 >= self._batches:
            self._send(batch + 1)

    def _send(self, batch: int) -> None:
        if self.report_batch is not None:
            self._last = time.monotonic()
            self.report_batch({"epoch": self._epoch, "batch": min(batch, self._batches),
                               "batches": self._batches})

    def on_epoch_end(self, epoch: int, logs: Dict[str, Any]) -> None:
        self.report(logs)


def state_to_bytes(state: Dict[str, Any]) -> bytes:
    """A state dict as bytes that :func:`state_from_bytes` reads without unpickling code."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def state_from_bytes(data: bytes) -> Dict[str, Any]:
    """A state dict from :func:`state_to_bytes`; ``weights_only`` refuses anything but
    tensors and plain containers, so the bytes cannot run code."""
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
