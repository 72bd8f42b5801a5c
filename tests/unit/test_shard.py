import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from flink_torch_ml import DataType, InvalidDataError
from flink_torch_ml.worker.shard import DataWriter, FlinkDataset, Shard, balance_plan


@pytest.mark.parametrize("counts", [[10, 0], [0, 0], [5, 5], [7, 2, 0], [1, 1, 9, 0],
                                    [100, 103], [3]])
def test_balance_plan_gives_sizes_within_one_moving_minimum(counts):
    sizes = list(counts)
    for source, target, rows in balance_plan(counts):
        assert rows > 0 and source != target
        sizes[source] -= rows
        sizes[target] += rows
    assert sum(sizes) == sum(counts)
    assert max(sizes) - min(sizes) <= 1
    total, w = sum(counts), len(counts)
    minimum = sum(max(0, c - (total // w + (r < total % w))) for r, c in enumerate(counts))
    assert sum(m[2] for m in balance_plan(counts)) == minimum


def shard_of(*columns):
    return Shard(list(columns))


def test_dataset_yields_rows_as_tensors_epochs_times():
    ids = np.arange(5, dtype=np.int64)
    vectors = np.arange(10, dtype=np.float32).reshape(5, 2)
    dataset = FlinkDataset(shard_of(ids, vectors), [DataType.INT_64, DataType.FLOAT_32_ARRAY],
                           epochs=2)
    rows = list(dataset)
    assert len(rows) == len(dataset) == 10
    assert [int(r[0]) for r in rows] == [0, 1, 2, 3, 4] * 2
    assert rows[1][0].dim() == 0 and rows[1][1].shape == (2,) and rows[1][1].dtype == torch.float32
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    assert batch[0].tolist() == [0, 1, 2, 3] and batch[1].shape == (4, 2)


def test_dataset_fast_batches():
    ids = np.arange(7, dtype=np.float64)
    dataset = FlinkDataset(shard_of(ids), [DataType.FLOAT_64])
    assert [b[0].tolist() for b in dataset.batches(3)] == [[0, 1, 2], [3, 4, 5], [6]]


def test_dataset_of_ragged_arrays_and_strings():
    ragged = np.empty(3, dtype=object)
    ragged[:] = [np.array([1.0]), np.array([2.0, 3.0]), np.array([], dtype=np.float64)]
    names = np.array(["a", "b", "c"], dtype=object)
    dataset = FlinkDataset(shard_of(ragged, names), [DataType.FLOAT_32_ARRAY, DataType.STRING])
    rows = list(dataset)
    assert [r[0].tolist() for r in rows] == [[1.0], [2.0, 3.0], []]
    assert rows[1][0].dtype == torch.float32 and [r[1] for r in rows] == ["a", "b", "c"]
    first = next(dataset.batches(2))
    assert [t.tolist() for t in first[0]] == [[1.0], [2.0, 3.0]] and first[1] == ["a", "b"]


def test_empty_shard_yields_nothing():
    dataset = FlinkDataset(shard_of(np.empty((0, 4), np.float32)), [DataType.FLOAT_32_ARRAY])
    assert list(dataset) == [] and list(dataset.batches(8)) == [] and len(dataset) == 0


def test_loader_workers_split_rather_than_repeat_rows():
    dataset = FlinkDataset(shard_of(np.arange(4000)), [DataType.INT_64])
    loader = DataLoader(dataset, batch_size=None, num_workers=2)
    assert sorted(int(r[0]) for r in loader) == list(range(4000))


def test_writer_checks_arity_and_types_and_converts_tensors():
    writer = DataWriter([DataType.FLOAT_32, DataType.INT_64, DataType.FLOAT_32_ARRAY], rank=1)
    writer.write((torch.tensor(1.5), np.int64(3), torch.tensor([1.0, 2.0])))
    writer.write_batch(torch.tensor([0.5, 0.25]), np.array([1, 2]), torch.ones(2, 2))
    assert writer.rows[0] == (1.5, 3, [1.0, 2.0])
    assert writer.rows[2] == (0.25, 2, [1.0, 1.0])
    with pytest.raises(InvalidDataError, match="Rank 1 wrote a row with 2 fields"):
        writer.write((1.0, 2))
    with pytest.raises(InvalidDataError, match="field 1, which is not a INT_64"):
        writer.write((1.0, "x", [1.0]))
