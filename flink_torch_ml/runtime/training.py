"""The estimator's training loop, run by every worker: no Flink imports, only torch.

``fit_worker`` turns the worker's shard into tensors (one per feature column, as the model's
``forward`` takes them, plus the label), wraps the model in DistributedDataParallel and trains
for ``max_epochs``, averaging loss and metrics over all rows of all workers every epoch.
"""

import datetime
import io
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from .._defaults import TIMEOUT
from ..data_types import DataType
from ..errors import InvalidDataError

__all__ = ["TrainSettings", "fit_worker", "BUILTIN_METRICS", "state_to_bytes", "state_from_bytes"]


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
    lr_scheduler_creator: Optional[Callable] = None
    seed: int = 0
    shuffle: bool = True
    validation: Union[None, float, str] = None
    metrics: Dict[str, Callable] = field(default_factory=dict)


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


def fit_worker(rank: int, world_size: int, columns: List[np.ndarray], settings: TrainSettings,
               store=None, timeout: float = TIMEOUT,
               on_epoch: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Train on this worker's shard; return the history and (rank 0) the trained state.
    ``store`` is a ``torch.distributed.Store`` for the process group's rendezvous (needed
    when ``world_size > 1``)."""
    distributed = world_size > 1
    # Flink's Python worker may start with one intra-op thread; give each worker its share
    # of the machine's cores (W workers on one host share it).
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    if distributed:
        torch.distributed.init_process_group(
            "gloo", store=store, rank=rank, world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout))
    try:
        return _fit(rank, world_size, columns, settings, distributed, on_epoch)
    finally:
        if distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _fit(rank, world_size, columns, settings, distributed, on_epoch):
    torch.manual_seed(settings.seed)  # same initial weights everywhere (DDP broadcasts anyway)
    model = settings.model
    float_dtype = _model_dtype(model)
    n_features = len(settings.feature_cols)
    features = [_tensor(c, DataType.from_name(t), n, float_dtype, False)
                for c, t, n in zip(columns[:n_features], settings.feature_types,
                                   settings.feature_cols)]
    label = _tensor(columns[n_features], DataType.from_name(settings.label_type),
                    settings.label_col, float_dtype, True)
    flags = columns[n_features + 1] if isinstance(settings.validation, str) else None
    rows = len(label)
    total_rows = torch.tensor([rows], dtype=torch.int64)
    if distributed:
        torch.distributed.all_reduce(total_rows)
    if total_rows.item() == 0:
        raise InvalidDataError("The training table is empty: nothing to fit")
    train_idx, valid_idx = _split(rows, settings, rank, flags)
    batches = _Gatherer(features)

    ddp = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    optimizer = settings.optimizer_creator(model)
    scheduler = (settings.lr_scheduler_creator(optimizer)
                 if settings.lr_scheduler_creator else None)
    metrics = dict(settings.metrics)
    names = ["loss"] + list(metrics)
    history = []
    for epoch in range(settings.max_epochs):
        started = time.perf_counter()
        model.train()
        order = train_idx
        if settings.shuffle:
            generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + epoch * 131
                                                      + rank)
            order = train_idx[torch.randperm(len(train_idx), generator=generator).numpy()]
        reducer = _Reducer(names)
        loss_sum = torch.zeros((), dtype=torch.float64)
        context = ddp.join() if distributed else _null_context()
        with context:  # DDP.join: ranks with fewer batches shadow the others' all-reduces
            for start in range(0, len(order), settings.batch_size):
                index = torch.from_numpy(order[start:start + settings.batch_size])
                inputs = batches.inputs(index)
                target = label[index]
                optimizer.zero_grad()
                prediction = ddp(*inputs)
                loss = settings.loss(prediction, target)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach().double() * len(index)
                if metrics:
                    with torch.no_grad():
                        reducer.add([0.0] + [float(m(prediction, target))
                                             for m in metrics.values()], len(index))
        if not torch.isfinite(loss_sum):
            raise InvalidDataError(f"The loss became {loss_sum.item()} in epoch {epoch} "
                                   f"(rank {rank}); lower the learning rate or check the data")
        reducer.totals[0] = loss_sum
        reducer.totals[-1] = len(order)
        if scheduler is not None:
            scheduler.step()
        train_means = reducer.means(distributed)
        seconds = time.perf_counter() - started
        record = {"epoch": epoch + 1, "train_loss": train_means["loss"],
                  "train_rows": train_means["rows"], "epoch_seconds": seconds,
                  "rows_per_second": train_means["rows"] / seconds if seconds else math.inf}
        record.update({f"train_{n}": train_means[n] for n in metrics})
        if settings.validation:
            valid_means = _evaluate(model, features, label, valid_idx, settings, names,
                                    metrics, distributed)
            record["valid_loss"] = valid_means["loss"]
            record["valid_rows"] = valid_means["rows"]
            record.update({f"valid_{n}": valid_means[n] for n in metrics})
        history.append(record)
        if on_epoch is not None and rank == 0:
            on_epoch(record)
    result = {"history": history, "rows": rows, "torch_threads": torch.get_num_threads()}
    if rank == 0:
        result["state_dict"] = state_to_bytes(model.state_dict())
    return result


def state_to_bytes(state: Dict[str, Any]) -> bytes:
    """A state dict as bytes that :func:`state_from_bytes` reads without unpickling code."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def state_from_bytes(data: bytes) -> Dict[str, Any]:
    """A state dict from :func:`state_to_bytes`; ``weights_only`` refuses anything but
    tensors and plain containers, so the bytes cannot run code."""
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def _evaluate(model, features, label, index, settings, names, metrics, distributed):
    model.eval()
    reducer = _Reducer(names)
    with torch.no_grad():
        for start in range(0, len(index), settings.batch_size):
            part = torch.from_numpy(index[start:start + settings.batch_size])
            prediction = model(*[f[part] for f in features])
            target = label[part]
            values = [float(settings.loss(prediction, target))] + [
                float(m(prediction, target)) for m in metrics.values()]
            reducer.add(values, len(part))
    return reducer.means(distributed)


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


class _null_context:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
