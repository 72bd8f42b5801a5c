"""A worker's shard of the input table: columnar batches, the torch Dataset over them, and the
writer that sends rows back to Flink. Free of Flink imports, so it can be tested on its own.

Batches may arrive all at once or while training runs: the first epoch iterates batches as
they come (every wait bounded), later epochs replay the kept batches.
"""

import threading
import time
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .data_types import DataType
from .errors import InvalidDataError

__all__ = ["ShardBuffer", "FlinkDataset", "DataWriter"]

Batch = List[np.ndarray]  # one array per column: [rows] scalars, [rows, n] arrays


class ShardBuffer:
    """Thread-safe store of the shard's batches, with an end-of-input mark."""

    def __init__(self, timeout: float = 180.0):
        self._batches: List[Batch] = []
        self._done = False
        self._error: Optional[BaseException] = None
        self._cond = threading.Condition()
        self.timeout = timeout
        self.rows = 0

    def add(self, batch: Batch) -> None:
        with self._cond:
            self._batches.append(batch)
            self.rows += len(batch[0]) if batch else 0
            self._cond.notify_all()

    def finish(self, error: Optional[BaseException] = None) -> None:
        with self._cond:
            self._done, self._error = True, error
            self._cond.notify_all()

    @property
    def done(self) -> bool:
        return self._done

    def iter_batches(self) -> Iterator[Batch]:
        """Every batch in arrival order, waiting (bounded) for batches still to come."""
        index = 0
        while True:
            with self._cond:
                deadline = time.monotonic() + self.timeout
                while index >= len(self._batches) and not self._done:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(f"No input from Flink for {self.timeout:.0f} s "
                                           f"while reading the shard")
                    self._cond.wait(remaining)
                if self._error is not None:
                    raise RuntimeError("Reading the input from Flink failed") from self._error
                if index >= len(self._batches):
                    return
                batch = self._batches[index]
            index += 1
            yield batch


class FlinkDataset(IterableDataset):
    """The worker's shard as a torch IterableDataset: one tuple per row, one tensor per column
    (0-d for scalars, 1-d for arrays, dtypes from ``input_types``), ``epochs`` times over.

    With a DataLoader using ``num_workers > 0`` the rows are split between loader workers
    instead of being repeated."""

    def __init__(self, buffer: ShardBuffer, types: Sequence[DataType], epochs: int = 1):
        self._buffer = buffer
        self._types = list(types)
        self.epochs = epochs

    def __iter__(self) -> Iterator[Tuple]:
        info = get_worker_info()
        part, parts = (info.id, info.num_workers) if info else (0, 1)
        for _ in range(self.epochs):
            for number, batch in enumerate(self._buffer.iter_batches()):
                if number % parts != part:
                    continue
                columns = [_as_tensor(c, t) for c, t in zip(batch, self._types)]
                for i in range(len(batch[0]) if batch else 0):
                    yield tuple(c[i] for c in columns)

    def batches(self, batch_size: int) -> Iterator[Tuple]:
        """The fast path: tuples of ``[batch_size, ...]`` tensors, one epoch."""
        pending: List[Batch] = []
        size = 0
        for batch in self._buffer.iter_batches():
            pending.append(batch)
            size += len(batch[0])
            while size >= batch_size:
                merged = [np.concatenate(cols) for cols in zip(*pending)]
                head = [c[:batch_size] for c in merged]
                rest = [c[batch_size:] for c in merged]
                yield tuple(_as_tensor(c, t) for c, t in zip(head, self._types))
                pending, size = ([rest], len(rest[0])) if len(rest[0]) else ([], 0)
        if size:
            merged = [np.concatenate(cols) for cols in zip(*pending)]
            yield tuple(_as_tensor(c, t) for c, t in zip(merged, self._types))

    def __len__(self) -> int:
        if not self._buffer.done:
            raise TypeError("The shard's length is known only once all input has arrived")
        return self._buffer.rows * self.epochs


def _as_tensor(column: np.ndarray, data_type: DataType):
    if data_type is DataType.STRING:
        return list(column)
    return torch.from_numpy(np.ascontiguousarray(column, dtype=data_type.numpy_dtype))


class DataWriter:
    """Collects the rows a worker writes back to Flink, checked against ``output_types``."""

    def __init__(self, types: Sequence[DataType], rank: int = 0):
        self._types = list(types)
        self._rank = rank
        self.rows: List[tuple] = []

    def write(self, row) -> None:
        values = tuple(row)
        if len(values) != len(self._types):
            raise InvalidDataError(f"Rank {self._rank} wrote a row with {len(values)} fields, "
                                   f"but output_types has {len(self._types)}: {values!r}")
        self.rows.append(tuple(_to_python(v, t, i, self._rank)
                               for i, (v, t) in enumerate(zip(values, self._types))))

    def write_batch(self, *columns) -> None:
        """Write many rows at once, one array/tensor per output column."""
        arrays = [c.detach().cpu().numpy() if isinstance(c, torch.Tensor) else np.asarray(c)
                  for c in columns]
        for values in zip(*arrays):
            self.write(values)


def _to_python(value, data_type: DataType, index: int, rank: int):
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = value.item() if value.dim() == 0 or (value.numel() == 1
                                                     and not data_type.is_array) \
            else value.tolist()
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    try:
        if value is None:
            return None
        if data_type.is_array:
            return [float(v) for v in value]
        if data_type is DataType.STRING:
            return str(value)
        if data_type.is_floating:
            return float(value)
        if isinstance(value, float) and not value.is_integer():
            raise ValueError("not an integer")
        return int(value)
    except (TypeError, ValueError):
        raise InvalidDataError(f"Rank {rank} wrote {value!r} in field {index}, which is not "
                               f"a {data_type.type_name}") from None


def balance_plan(counts: Sequence[int]) -> List[Tuple[int, int, int]]:
    """Moves ``(source rank, target rank, rows)`` that make shard sizes differ by at most one
    (the first ``N % W`` ranks get the extra rows), moving as few rows as possible."""
    total, world_size = sum(counts), len(counts)
    targets = [total // world_size + (1 if r < total % world_size else 0)
               for r in range(world_size)]
    surplus = [[r, c - t] for r, (c, t) in enumerate(zip(counts, targets)) if c > t]
    deficit = [[r, t - c] for r, (c, t) in enumerate(zip(counts, targets)) if c < t]
    moves, i, j = [], 0, 0
    while i < len(surplus) and j < len(deficit):
        rows = min(surplus[i][1], deficit[j][1])
        moves.append((surplus[i][0], deficit[j][0], rows))
        surplus[i][1] -= rows
        deficit[j][1] -= rows
        i += surplus[i][1] == 0
        j += deficit[j][1] == 0
    return moves
