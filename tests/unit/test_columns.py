"""Columns as they cross the feed and move between ranks (columns.py): Arrow IPC round trips,
refusal of anything else, and the shapes of empty shards."""

import pickle

import numpy as np
import pandas as pd
import pytest

from flink_torch_ml import DataType, InvalidDataError
from flink_torch_ml.core.rows import Column
from flink_torch_ml.dataplane.columns import (column_shapes, concat_columns, conform_empty,
                                              decode_columns, empty_columns, encode_columns)
from flink_torch_ml.worker.operators import feed_columns


def ragged(*rows):
    column = np.empty(len(rows), dtype=object)
    column[:] = [np.asarray(r, dtype=np.float32) for r in rows]
    return column


def test_round_trip_of_every_column_kind():
    columns = [np.arange(5, dtype=np.int64), np.linspace(0, 1, 5).astype(np.float32),
               np.arange(10, dtype=np.float64).reshape(5, 2), np.array(list("abcde"), object),
               np.array([True, False, True, True, False]),
               ragged([1.0], [2.0, 3.0], [], [4.0], [5.0, 6.0, 7.0])]
    decoded = decode_columns(encode_columns(columns))
    for before, after in zip(columns[:5], decoded[:5]):
        assert after.dtype == before.dtype and after.shape == before.shape
        assert (after == before).all() and after.flags.writeable
    assert [r.tolist() for r in decoded[5]] == [[1.0], [2.0, 3.0], [], [4.0], [5.0, 6.0, 7.0]]


def test_empty_columns_keep_their_width():
    decoded = decode_columns(encode_columns([np.empty((0, 64), np.float32), np.empty(0)]))
    assert decoded[0].shape == (0, 64) and decoded[1].shape == (0,)


@pytest.mark.parametrize("payload", [b"", b"garbage", pickle.dumps([np.arange(3)]),
                                     bytes(range(256)) * 4])
def test_anything_but_arrow_is_refused(payload):
    with pytest.raises(ValueError, match="not an Arrow IPC stream"):
        decode_columns(payload)


def test_the_feed_names_the_column_with_nulls():
    series = [pd.Series([1.0, None]), pd.Series([[1.0], None], dtype=object)]
    with pytest.raises(InvalidDataError, match="'x' holds NULL or NaN in 1 of 2"):
        feed_columns(series[:1], [Column("x", DataType.FLOAT_64)])
    with pytest.raises(InvalidDataError, match="'v' holds NULL in 1 of 2"):
        feed_columns(series[1:], [Column("v", DataType.FLOAT_32_ARRAY)])


def test_an_empty_shard_takes_its_peers_shapes_and_concatenates_with_them():
    empty = empty_columns([DataType.FLOAT_32_ARRAY, DataType.INT_64])
    assert empty[0].shape == (0, 0) and column_shapes(empty) == [None, None]
    full = [np.ones((3, 64), np.float32), np.arange(3)]
    assert column_shapes(full) == [[64], []]
    shaped = conform_empty(empty, column_shapes(full))
    assert shaped[0].shape == (0, 64)
    joined = concat_columns([empty, full])  # the width-0 piece never clashes
    assert joined[0].shape == (3, 64) and joined[1].tolist() == [0, 1, 2]
    assert concat_columns([shaped, shaped])[0].shape == (0, 64)


def test_arrays_of_different_lengths_concatenate_as_ragged():
    joined = concat_columns([[np.ones((2, 3), np.float32)], [ragged([1.0], [2.0, 2.0])]])
    assert [len(r) for r in joined[0]] == [3, 3, 1, 2]
    assert column_shapes([joined[0]]) == [None]
