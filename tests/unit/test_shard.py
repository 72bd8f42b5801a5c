import threading

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from flink_torch_ml import DataType, InvalidDataError
from flink_torch_ml.shard import DataWriter, FlinkDataset, ShardBuffer, balance_plan


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


def buffer_of(*batches, done=True):
    buffer = ShardBuffer(timeout=2)
    for batch in batches:
        buffer.add(batch)
    if done:
        buffer.finish()
    return buffer


def test_dataset_yields_rows_as_tensors_epochs_times():
    ids = np.arange(5, dtype=np.int64)
    vectors = np.arange(10, dtype=np.float32).reshape(5, 2)
    dataset = FlinkDataset(buffer_of([ids[:3], vectors[:3]], [ids[3:], vectors[3:]]),
                           [DataType.INT_64, DataType.FLOAT_32_ARRAY], epochs=2)
    rows = list(dataset)
    assert len(rows) == len(dataset) == 10
    assert [int(r[0]) for r in rows] == [0, 1, 2, 3, 4] * 2
    assert rows[1][0].dim() == 0 and rows[1][1].shape == (2,) and rows[1][1].dtype == torch.float32
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    assert batch[0].tolist() == [0, 1, 2, 3] and batch[1].shape == (4, 2)


def test_dataset_fast_batches_cross_arrival_batches():
    ids = np.arange(7, dtype=np.float64)
    dataset = FlinkDataset(buffer_of([ids[:2]], [ids[2:6]], [ids[6:]]), [DataType.FLOAT_64])
    assert [b[0].tolist() for b in dataset.batches(3)] == [[0, 1, 2], [3, 4, 5], [6]]


def test_dataset_waits_for_batches_still_arriving_but_not_forever():
    buffer = buffer_of(done=False)
    dataset = FlinkDataset(buffer, [DataType.INT_64])
    threading.Timer(0.2, lambda: (buffer.add([np.array([7])]), buffer.finish())).start()
    assert [int(r[0]) for r in dataset] == [7]
    with pytest.raises(TimeoutError, match="No input from Flink"):
        list(FlinkDataset(buffer_of(done=False), [DataType.INT_64]))


def test_loader_workers_split_rather_than_repeat_rows():
    batches = [[np.arange(i * 10, i * 10 + 10)] for i in range(4)]
    dataset = FlinkDataset(buffer_of(*batches), [DataType.INT_64])
    loader = DataLoader(dataset, batch_size=None, num_workers=2)
    assert sorted(int(r[0]) for r in loader) == list(range(40))


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
