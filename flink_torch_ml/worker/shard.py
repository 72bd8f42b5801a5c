"""A worker's shard of the input table, the torch Dataset over it, and the writer that sends
rows back to Flink. Free of Flink imports, so it can be tested on its own.
"""

from typing import Iterator, List, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..core.types import DataType
from ..errors import InvalidDataError
from ..dataplane.columns import Columns

__all__ = ["Shard", "FlinkDataset", "DataWriter", "balance_plan"]

#: rows a DataLoader worker takes at a time when a loader with num_workers > 0 splits a shard
_LOADER_CHUNK = 1024


class Shard:
    """The rows one worker holds once its input has ended: one numpy array per column."""

    def __init__(self, columns: Columns):
        self.columns = columns
        self.rows = len(columns[0]) if columns else 0


class FlinkDataset(IterableDataset):
    """The worker's shard as a torch IterableDataset: one tuple per row, one tensor per column
    (0-d for scalars, 1-d for arrays, dtypes from ``input_types``), ``epochs`` times over.

    With a DataLoader using ``num_workers > 0`` the rows are split between loader workers
    instead of being repeated."""

    def __init__(self, shard: Shard, types: Sequence[DataType], epochs: int = 1):
        self._shard = shard
        self._types = list(types)
        self.epochs = epochs

    def __iter__(self) -> Iterator[Tuple]:
        info = get_worker_info()
        part, parts = (info.id, info.num_workers) if info else (0, 1)
        columns = [_as_tensors(c, t) for c, t in zip(self._shard.columns, self._types)]
        chunk = _LOADER_CHUNK if parts > 1 else max(self._shard.rows, 1)
        for _ in range(self.epochs):
            for number, start in enumerate(range(0, self._shard.rows, chunk)):
                if number % parts != part:
                    continue
                for i in range(start, min(start + chunk, self._shard.rows)):
                    yield tuple(c[i] for c in columns)

    def batches(self, batch_size: int) -> Iterator[Tuple]:
        """The fast path: tuples of ``[batch_size, ...]`` tensors (a list of 1-d tensors for
        arrays of different lengths), one epoch."""
        columns = [_as_tensors(c, t) for c, t in zip(self._shard.columns, self._types)]
        for start in range(0, self._shard.rows, batch_size):
            yield tuple(c[start:start + batch_size] for c in columns)

    def __len__(self) -> int:
        return self._shard.rows * self.epochs


def _as_tensors(column: np.ndarray, data_type: DataType):
    """A column as one tensor, or a list (strings; 1-d tensors of arrays of different
    lengths)."""
    if data_type is DataType.STRING:
        return list(column)
    if column.dtype == object:
        return [torch.from_numpy(np.asarray(v, dtype=data_type.numpy_dtype)) for v in column]
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
