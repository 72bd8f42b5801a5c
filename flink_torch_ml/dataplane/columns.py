"""A worker's input as columns (numpy arrays, made by ``core.rows.column_arrays``) as they
cross a socket (the feed, rows moved between ranks): encoded as Arrow IPC, concatenated,
hashed, and shaped when a shard is empty.

A column is ``[rows]`` for a scalar, ``[rows, n]`` for equal-length arrays, or a ``[rows]``
object array of 1-d arrays when lengths differ. Decoding reads Arrow only: bytes from the
network never become code. Free of Flink imports.
"""

from typing import List, Optional, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from ..core.types import DataType

__all__ = ["Columns", "empty_columns", "column_shapes",
           "conform_empty", "concat_columns", "encode_columns", "decode_columns", "row_hashes",
           "take", "sort_by_content"]

Columns = List[np.ndarray]


def empty_columns(types: Sequence[DataType]) -> Columns:
    """Zero-row columns of the given types (array widths unknown: 0; see conform_empty)."""
    return [np.empty((0, 0), t.numpy_dtype) if t.is_array else np.empty(0, t.numpy_dtype)
            for t in types]


def column_shapes(columns: Columns) -> List[Optional[List[int]]]:
    """Per column, the shape of one row (``[]`` scalar, ``[n]`` array), or None when this
    shard cannot tell (no rows, or arrays of different lengths)."""
    return [None if len(c) == 0 or c.dtype == object and c.ndim == 1 and _is_ragged(c)
            else [int(d) for d in c.shape[1:]] for c in columns]


def _is_ragged(column: np.ndarray) -> bool:
    return len(column) > 0 and isinstance(column[0], np.ndarray)


def conform_empty(columns: Columns, shapes: Sequence[Optional[List[int]]]) -> Columns:
    """Give zero-row columns the row shape another shard reported, so that an empty shard's
    array column keeps its width (``[0, n]``, not ``[0, 0]``)."""
    return [np.empty((0, *shape), c.dtype) if len(c) == 0 and shape is not None else c
            for c, shape in zip(columns, shapes)]


def concat_columns(parts: Sequence[Columns]) -> Columns:
    """Concatenate shards column by column; zero-row pieces are skipped, so their (possibly
    unknown) widths never clash with the others'."""
    parts = [p for p in parts if p]
    if not parts:
        return []
    joined = []
    for index in range(len(parts[0])):
        pieces = [p[index] for p in parts if len(p[index])]
        if not pieces:
            joined.append(parts[0][index])
        elif len(pieces) == 1:
            joined.append(pieces[0])
        elif any(x.dtype == object for x in pieces):
            joined.append(np.concatenate([_as_object(x) for x in pieces]))
        else:
            joined.append(np.concatenate(pieces))
    return joined


def _as_object(column: np.ndarray) -> np.ndarray:
    """A ``[rows, n]`` array as a ragged ``[rows]`` object column of 1-d arrays."""
    if column.dtype == object and column.ndim == 1:
        return column
    ragged = np.empty(len(column), dtype=object)
    ragged[:] = list(column)
    return ragged


# ---------------------------------------------------------------------- content order
_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


def row_hashes(columns: Columns) -> np.ndarray:
    """A 64-bit hash of each row's content, the same in every process (pandas' keyed hash of
    each value, combined FNV-style across columns and array elements)."""
    rows = len(columns[0]) if columns else 0
    combined = np.full(rows, _FNV_OFFSET, dtype=np.uint64)
    for column in columns:
        if column.dtype == object and _is_ragged(column):
            parts = [np.array([np.ascontiguousarray(v).tobytes() for v in column], dtype=object)]
        elif column.ndim == 2:
            parts = [column[:, j] for j in range(column.shape[1])]
        else:
            parts = [column]
        for part in parts:
            combined = (combined * _FNV_PRIME) ^ pd.util.hash_array(np.asarray(part),
                                                                   categorize=False)
    return combined


def take(columns: Columns, index: np.ndarray) -> Columns:
    return [c[index] for c in columns]


def sort_by_content(columns: Columns) -> Columns:
    """The rows in the order of their content hashes: the same order for the same rows,
    however they arrived."""
    if not columns or len(columns[0]) < 2:
        return columns
    return take(columns, np.argsort(row_hashes(columns), kind="stable"))


# ---------------------------------------------------------------------- Arrow IPC
def encode_columns(columns: Columns) -> pa.Buffer:
    """The columns as one Arrow IPC stream (a record batch with columns ``c0, c1, ...``)."""
    arrays = [_to_arrow(c) for c in columns]
    batch = pa.RecordBatch.from_arrays(arrays, names=[f"c{i}" for i in range(len(arrays))])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue()


def decode_columns(payload) -> Columns:
    """Columns from :func:`encode_columns` bytes (writable numpy arrays). Anything that is
    not such a stream raises ``ValueError``."""
    try:
        with pa.ipc.open_stream(pa.py_buffer(payload)) as reader:
            table = reader.read_all()
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"not an Arrow IPC stream of columns: {error}") from None
    return [_from_arrow(table.column(i).combine_chunks()) for i in range(table.num_columns)]


def _to_arrow(column: np.ndarray) -> pa.Array:
    if column.dtype == object:
        if _is_ragged(column):
            return pa.array(list(column), type=pa.list_(pa.from_numpy_dtype(column[0].dtype)))
        return pa.array(column, type=pa.string())
    if column.ndim == 1:
        return pa.array(column)
    if column.ndim == 2:
        flat = np.ascontiguousarray(column).reshape(-1)
        return pa.FixedSizeListArray.from_arrays(pa.array(flat), int(column.shape[1]))
    raise ValueError(f"a column must be 1-d or 2-d, got shape {column.shape}")


def _from_arrow(array: pa.Array) -> np.ndarray:
    kind = array.type
    if pa.types.is_fixed_size_list(kind):
        flat = array.flatten().to_numpy(zero_copy_only=False, writable=True)
        return flat.reshape(len(array), kind.list_size)
    if pa.types.is_list(kind):
        ragged = np.empty(len(array), dtype=object)
        ragged[:] = [np.asarray(v.values.to_numpy(zero_copy_only=False)) for v in array]
        return ragged
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return np.asarray(array.to_pylist(), dtype=object)
    if array.null_count:
        raise ValueError("a column holds NULLs")
    return array.to_numpy(zero_copy_only=False, writable=True)
