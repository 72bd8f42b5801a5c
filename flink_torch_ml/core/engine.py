"""The training engine, the one every fit runs: no Flink imports, only torch and numpy.

:class:`TrainingLoop` is a chain of small overridable steps with callbacks notified on every
rank. A batch fit (``PyTorchEstimator``) runs ``fit_loop -> run_epoch -> train_step /
validation_step`` over the rank's shard, gradients averaged by DistributedDataParallel.
Online training (``OnlinePyTorchEstimator``) runs one ``run_update -> train_step`` per model
version over the rank's rows of that update; there the ranks' gradients, each weighted by its
rank's share of the update's rows, are summed when the optimizer steps (a step pre-hook), so
every rank takes the same step and keeps the same weights. Either way a ``train_step``
override and every callback apply, and the loss an update reports is computed before its step
(the model's prequential, test-then-train, loss).

Randomness of a batch fit derives from ``(seed, epoch, rank)`` only (the shuffle, the global
RNG at each epoch's start, the validation split), so a fit resumed from a checkpoint
continues exactly as an uninterrupted one.
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
from ..errors import InvalidDataError
from .callbacks import Callback, LRScheduler
from .checkpoint import Checkpoint, check_compatible, load_checkpoint_state, parameter_shapes, \
    write_checkpoint
from .rows import TRAINING_ADVICE, Column, check_rows, column_arrays, model_float_dtype, \
    to_tensor, with_common_widths
from .types import DataType

__all__ = ["ModelSettings", "TrainSettings", "TrainingLoop", "fit_worker", "BUILTIN_METRICS",
           "state_to_bytes", "state_from_bytes", "epoch_seed", "resolve_metrics", "tensors"]


def _accuracy(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if prediction.dim() > 1 and prediction.shape[1] > 1:  # class scores vs class indices
        return (prediction.argmax(dim=1) == target.reshape(-1)).float().mean()
    return ((prediction.reshape(-1) > 0.5).float() == target.reshape(-1).float()).float().mean()


def _mse(prediction, target):
    return torch.mean((prediction.reshape(target.shape).float() - target.float()) ** 2)


def _mae(prediction, target):
    return torch.mean(torch.abs(prediction.reshape(target.shape).float() - target.float()))


BUILTIN_METRICS: Dict[str, Callable] = {"accuracy": _accuracy, "mse": _mse, "mae": _mae}


def resolve_metrics(metrics) -> Dict[str, Callable]:
    """``metrics`` as ``{name: fn(prediction, label)}``: built-in names become their
    functions ('accuracy', 'mse', 'mae'); None is no metric."""
    if not metrics:
        return {}
    if not isinstance(metrics, dict):
        metrics = {m: m for m in metrics}
    return {n: (BUILTIN_METRICS[m] if isinstance(m, str) else m) for n, m in metrics.items()}


@dataclass
class ModelSettings:
    """What every fit trains: the model, its loss and optimizer, and the columns it reads
    (shipped inside the job with cloudpickle)."""

    model: torch.nn.Module
    loss: Callable
    optimizer_creator: Callable
    feature_cols: List[str]
    feature_types: List[str]
    label_col: str
    label_type: str

    def feature_columns(self) -> List[Column]:
        """The feature columns as the row rule sees them (widths: see ``feature_widths``)."""
        widths = getattr(self, "feature_widths", None) or [None] * len(self.feature_cols)
        columns = []
        for name, type_name, width in zip(self.feature_cols, self.feature_types, widths):
            data_type = DataType.from_name(type_name)
            columns.append(Column(name, data_type, width if data_type.is_array else None,
                                  "Feature"))
        return columns

    def label_column(self) -> Column:
        return Column(self.label_col, DataType.from_name(self.label_type), None, "Label")


@dataclass
class TrainSettings(ModelSettings):
    """A batch fit's settings (``PyTorchEstimator``)."""

    max_epochs: int = 1
    batch_size: int = 32
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


def tensors(columns: Sequence, feature_columns: Sequence[Column], label_column: Column,
            float_dtype, where: str = "") -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Feature and label columns (arrays, Series or lists of values) as the tensors training
    feeds the model, once the row rule (rows.check_rows) has passed them: array features of
    unknown width must all have their column's most common length."""
    n = len(feature_columns)
    specs = with_common_widths(columns[:n + 1], [*feature_columns, label_column])
    check_rows(columns[:n + 1], specs, TRAINING_ADVICE, where)
    arrays = column_arrays(columns[:n + 1], specs)
    features = [to_tensor(c, s.data_type, float_dtype, False)
                for c, s in zip(arrays[:n], specs[:n])]
    return features, to_tensor(arrays[n], label_column.data_type, float_dtype, True)


class TrainingLoop:
    """The training loop every fit runs, on every rank. Subclass it and pass an instance as
    ``PyTorchEstimator(training_loop=...)`` or ``OnlinePyTorchEstimator(training_loop=...)``
    to change one step:

    - ``fit_loop()``: epochs from ``start_epoch`` to ``max_epochs``, callbacks around them,
      a checkpoint every ``checkpoint_every`` epochs, all ranks stopping together;
    - ``run_epoch(epoch) -> logs``: shuffles (from ``(seed, epoch, rank)``), runs
      ``train_step`` on each batch, averages loss and metrics over all ranks, validates;
    - ``run_update(inputs, target, rows) -> logs`` (online): one model version from this
      rank's rows of an update of ``rows`` rows in all, through ``train_step``;
    - ``train_step(inputs, target) -> (loss, prediction)``: forward, loss, backward, step
      (online: it must call ``self.optimizer.step()`` once, where the ranks' gradients meet);
    - ``validation_step(inputs, target) -> (loss, prediction)``: forward and loss, no grad.

    Available while it runs: ``rank``, ``world_size``, ``attempt``, ``model`` (the module),
    ``ddp`` (the DistributedDataParallel wrapper in a batch fit; the module when alone or
    online), ``optimizer``, ``loss``, ``metrics``, ``settings``, ``callbacks``, ``history``
    (batch: one record per epoch), ``start_epoch``, ``version`` (online), ``stop_training``.
    """

    # ------------------------------------------------------------------ set-up
    def _setup(self, rank: int, world_size: int, columns: List[np.ndarray],
               settings: TrainSettings, attempt: int = 0,
               save_model: Optional[Callable[[str, str], None]] = None) -> None:
        self._common_setup(rank, world_size, settings, attempt, save_model)
        features, label = settings.feature_columns(), settings.label_column()
        self.features, self.label = tensors(columns, features, label, self.float_dtype,
                                            f" (rank {rank})")
        flags = columns[len(features) + 1] if isinstance(settings.validation, str) else None
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
        self._attach_callbacks()

    def _setup_online(self, rank: int, world_size: int, settings, attempt: int = 0) -> None:
        """Online training: every rank holds the model and an optimizer; an update's
        gradients are summed over the ranks when the optimizer steps."""
        self._common_setup(rank, world_size, settings, attempt, None)
        self.version = 0
        self.ddp = self.model
        self.optimizer = settings.optimizer_creator(self.model)
        self._update_weight = 1.0
        if self.distributed:
            self.optimizer.register_step_pre_hook(self._sum_gradients)
        self._attach_callbacks()

    def _common_setup(self, rank, world_size, settings, attempt, save_model) -> None:
        self.rank, self.world_size, self.attempt = rank, world_size, attempt
        self.settings = settings
        self.distributed = world_size > 1
        self.save_model_fn = save_model
        torch.manual_seed(settings.seed)  # same initial state everywhere (DDP broadcasts too)
        self.model = settings.model
        self.float_dtype = model_float_dtype(self.model)
        self.loss = settings.loss
        self.metrics = dict(settings.metrics)
        self.callbacks = list(settings.callbacks)
        self.history: List[Dict[str, Any]] = []
        self.start_epoch = 0
        self.stop_training = False

    def _attach_callbacks(self) -> None:
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
                        reducer.add([0.0] + self._metric_values(prediction, target),
                                    len(index))
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

    def run_update(self, inputs: List[torch.Tensor], target: torch.Tensor,
                   rows: int) -> Dict[str, Any]:
        """One online update, on every rank at once: this rank's rows of it (maybe none) go
        through ``train_step``; the record's ``loss`` and metrics are those of the model
        before the step (prequential), averaged over the update's ``rows`` rows."""
        mine = len(target)
        started = time.perf_counter()
        self.model.train()
        self._update_weight = mine / rows if rows else 0.0
        reducer = _Reducer(["loss"] + list(self.metrics))
        if mine:
            loss, prediction = self.train_step(inputs, target)
            with torch.no_grad():
                reducer.add([float(loss.detach())] + self._metric_values(prediction, target),
                            mine)
        else:  # no rows here this time: take part in the gradients' sum with zeros
            self.optimizer.zero_grad(set_to_none=True)
            self.optimizer.step()
        finite = torch.tensor([1.0 if torch.isfinite(reducer.totals).all() else 0.0])
        if self.distributed:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if finite.item() < 1:
            raise InvalidDataError(f"The loss is not finite on update {self.version + 1} of "
                                   f"online training (rank {self.rank}"
                                   f"{' or a peer' if self.distributed else ''}); check the "
                                   f"input and lower the learning rate")
        means = reducer.means(self.distributed)
        self.version += 1
        logs = {"version": self.version, "loss": means["loss"], "rows": int(rows),
                "update_seconds": time.perf_counter() - started}
        logs.update({n: means[n] for n in self.metrics})
        self.notify("on_update_end", self.version, logs)
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
                reducer.add([float(loss)] + self._metric_values(prediction, target),
                            len(part))
        return reducer.means(self.distributed)

    # ------------------------------------------------------------------ helpers
    def _metric_values(self, prediction, target) -> List[float]:
        return [float(m(prediction, target)) for m in self.metrics.values()]

    def _sum_gradients(self, optimizer, args, kwargs) -> None:
        """Online, before every optimizer step: each rank's gradient times its share of the
        update's rows, summed over the ranks (one all-reduce per dtype), so the step every
        rank takes is that of the update's mean loss. A parameter without a gradient counts
        as zeros, so every rank steps every parameter alike."""
        params = [p for group in optimizer.param_groups for p in group["params"]
                  if p.requires_grad]
        for dtype in sorted({p.dtype for p in params}, key=str):
            same = [p for p in params if p.dtype == dtype]
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p))
                              .reshape(-1) for p in same]) * self._update_weight
            torch.distributed.all_reduce(flat)
            offset = 0
            for p in same:
                p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
                offset += p.numel()

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


def _with_callbacks(settings, callbacks: List[Callback]):
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
