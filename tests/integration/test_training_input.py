"""Training input in every shape that reaches the workers unevenly (issue 10, bug 1), and
unbounded input refused before submission (bug 2), on a real PyFlink mini-cluster.

Bug 1 was a small table with an array feature at worker_num=2: the table arrived as one
Arrow batch, one rank received nothing, and its empty array column had lost its width.
The matrix below covers W x feature kind x label kind x how the rows arrive (one Arrow
batch, many batches, fewer rows than workers: an empty shard) with validation by fraction
and by column, pairwise rather than as a full product (each fit is a Flink job)."""

import time

import numpy as np
import pytest
import torch
from pyflink.table import DataTypes
from torch import nn

from flink_torch_ml import PyTorchClusterConfig, PyTorchContext, PyTorchEstimator, \
    SchemaError, pytorch_utils

WIDTH = 16


class Net(nn.Module):
    """forward(*features) -> [b, outputs]: concatenates the feature tensors."""

    def __init__(self, inputs: int, outputs: int):
        super().__init__()
        self.linear = nn.Linear(inputs, outputs)

    def forward(self, *features):
        return self.linear(torch.cat(features, dim=1))


def adam(model):
    return torch.optim.Adam(model.parameters(), lr=0.01)


FEATURES = {  # kind -> (columns, model inputs)
    "scalar": ([("x1", DataTypes.FLOAT()), ("x2", DataTypes.DOUBLE())], 2),
    "array": ([("v", DataTypes.ARRAY(DataTypes.FLOAT()))], WIDTH),
}
LABELS = {  # kind -> (column type, model outputs, loss)
    "float": (DataTypes.DOUBLE(), 1, nn.MSELoss()),
    "int": (DataTypes.BIGINT(), 3, nn.CrossEntropyLoss()),
    "array": (DataTypes.ARRAY(DataTypes.FLOAT()), 3, nn.MSELoss()),
}
ROWS = {"one_batch": 1257, "many_batches": 1257, "empty_shard": 1}


def table_of(env, features, label, rows):
    rng = np.random.default_rng(rows)
    data = []
    for i in range(rows):
        x = rng.uniform(-1, 1, WIDTH)
        feature_values = [float(x[0]), float(x[1])] if features == "scalar" \
            else [[float(v) for v in x]]
        label_value = {"float": float(x[0] - x[1]), "int": int(i % 3),
                       "array": [float(x[0]), float(x[1]), float(x[2])]}[label]
        data.append((*feature_values, label_value, i % 5 == 0))
    fields = [DataTypes.FIELD(n, t) for n, t in FEATURES[features][0]]
    fields += [DataTypes.FIELD("label", LABELS[label][0]),
               DataTypes.FIELD("is_valid", DataTypes.BOOLEAN())]
    return env.from_elements(data, DataTypes.ROW(fields))


CASES = [  # (W, features, label, arrival, validation)
    (1, "scalar", "float", "one_batch", None),
    (1, "array", "int", "empty_shard", None),
    (1, "array", "array", "many_batches", "is_valid"),
    (2, "array", "int", "one_batch", None),  # the reported bug
    (2, "array", "float", "one_batch", 0.2),
    (2, "scalar", "array", "one_batch", "is_valid"),
    (2, "scalar", "int", "many_batches", 0.25),
    (2, "array", "array", "empty_shard", None),
    (2, "array", "float", "many_batches", "is_valid"),
    (3, "array", "int", "empty_shard", None),
    (3, "scalar", "float", "one_batch", "is_valid"),
    (3, "array", "array", "many_batches", 0.3),
]


@pytest.fixture
def batch_rows(stream_env):
    """Sets the Arrow batch size the feed sees for one test, then restores it."""
    conf = stream_env.get_config()
    keys = ("python.fn-execution.arrow.batch.size", "python.fn-execution.bundle.size")
    before = {k: conf.get(k, None) for k in keys}

    def set_rows(rows):
        for k in keys:
            conf.set(k, str(rows))

    yield set_rows
    for k, v in before.items():
        conf.set(k, v if v is not None else "10000")


@pytest.mark.parametrize("workers, features, label, arrival, validation", CASES,
                         ids=["-".join(map(str, c)) for c in CASES])
def test_fit_on_uneven_input(stream_env, batch_rows, workers, features, label, arrival,
                             validation):
    batch_rows(100 if arrival == "many_batches" else 10_000)
    rows = ROWS[arrival]
    if arrival == "empty_shard":
        rows = workers - 1 or 1  # fewer rows than workers: at least one shard stays empty
    table = table_of(stream_env, features, label, rows)
    columns = [n for n, _ in FEATURES[features][0]]
    _, outputs, loss = LABELS[label]
    fitted = PyTorchEstimator(Net(FEATURES[features][1], outputs), loss, adam,
                              feature_cols=columns, label_col="label", worker_num=workers,
                              batch_size=16, max_epochs=2, validation=validation,
                              timeout=60.0).fit(table)
    last = fitted.history[-1]
    assert last["train_rows"] + last.get("valid_rows", 0) == rows  # every row once
    if validation == "is_valid":
        assert last["valid_rows"] == len([i for i in range(rows) if i % 5 == 0])
    expected_widths = (1, 1) if features == "scalar" else (WIDTH,)
    assert fitted.get_feature_widths() == expected_widths
    sample = [torch.zeros(4, w) for w in expected_widths]
    assert fitted.model(*sample).shape == (4, outputs)


def shapes_entry(context):
    """Reports what the worker's dataset holds: rows and each batch's column shapes."""
    dataset = PyTorchContext(context).get_dataset_from_flink()
    rows = [tuple(b) for b in dataset.batches(1 << 20)]
    ids = [int(i) for batch in rows for i in batch[1].tolist()]
    return {"shapes": [[list(c.shape) for c in batch] for batch in rows], "ids": ids}


@pytest.mark.parametrize("workers, rows, batch", [(2, 1257, 10_000), (2, 1, 10_000),
                                                  (3, 2, 10_000), (3, 1257, 100)])
def test_train_with_array_input_types(stream_env, batch_rows, workers, rows, batch):
    batch_rows(batch)
    data = [([float(i)] * WIDTH, i) for i in range(rows)]
    table = stream_env.from_elements(data, DataTypes.ROW([
        DataTypes.FIELD("v", DataTypes.ARRAY(DataTypes.FLOAT())),
        DataTypes.FIELD("id", DataTypes.BIGINT())]))
    config = (PyTorchClusterConfig.new_builder().set_node_entry(shapes_entry)
              .set_world_size(workers).set_property("input_types", "FLOAT_32_ARRAY,INT_64")
              .set_timeout(60).build())
    results = pytorch_utils.train(None, config, table)
    ids = sorted(i for r in results for i in r["entry_result"]["ids"])
    assert ids == list(range(rows))  # every row reached exactly one worker
    sizes = [r["rows"] for r in results]
    assert max(sizes) - min(sizes) <= 1
    for r in results:
        for shapes in r["entry_result"]["shapes"]:
            assert shapes[0][1:] == [WIDTH]  # the array width survives, even when moved
    if batch == 10_000 and rows > 1:
        # one Arrow batch: all rows reached one rank, the others got theirs moved to them
        assert sorted(r["received_rows"] for r in results)[-1] == rows


def test_unbounded_input_is_refused_before_submission(stream_env):
    stream_env.execute_sql("DROP TEMPORARY TABLE IF EXISTS endless")
    stream_env.execute_sql("""CREATE TEMPORARY TABLE endless (x DOUBLE, y DOUBLE) WITH (
        'connector' = 'datagen', 'rows-per-second' = '100')""")
    table = stream_env.from_path("endless")
    started = time.monotonic()
    with pytest.raises(SchemaError, match=r"unbounded \(source (default_catalog\."
                                          r"default_database\.)?endless never ends\).*"
                                          r"number-of-rows.*online"):
        PyTorchEstimator(Net(1, 1), nn.MSELoss(), adam, feature_cols=["x"], label_col="y",
                         worker_num=2, timeout=30.0).fit(table)
    config = (PyTorchClusterConfig.new_builder().set_node_entry(shapes_entry)
              .set_world_size(2).set_timeout(30).build())
    with pytest.raises(SchemaError, match="endless never ends"):
        pytorch_utils.train(None, config, table)
    assert time.monotonic() - started < 20  # refused, not run
    transformations = stream_env._get_j_env().getTransformations().size()
    bounded = stream_env.from_elements([(1.0, 2.0)] * 4, ["x", "y"])
    PyTorchEstimator(Net(1, 1), nn.MSELoss(), adam, feature_cols=["x"], label_col="y",
                     worker_num=2, timeout=30.0).fit(bounded)
    # the run leaves nothing behind for a later env.execute() of the user's
    assert stream_env._get_j_env().getTransformations().size() == transformations
