"""PyTorchEstimator on a real PyFlink mini-cluster: distributed fit, history, parity with a
plain PyTorch loop and with the DL-on-Flink example, and every bad input the issue lists."""

import os
import time

import numpy as np
import pytest
import torch
from pyflink.table import DataTypes, Table
from pyflink.table.expressions import col
from torch import nn

from flink_torch_ml import (InvalidDataError, PyTorchEstimator, PyTorchModel, SchemaError,
                            UnsupportedTypeError, WorkerError)
from tests.models import ScalarRegressor


class CircleMLP(nn.Module):
    """forward(x1 [b,1], x2 [b,1]) -> 2 class logits."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                                 nn.Linear(32, 2))

    def forward(self, x1, x2):
        return self.net(torch.cat([x1, x2], dim=1))


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.2)


def adam(model):
    return torch.optim.Adam(model.parameters(), lr=0.01)


def exploding_loss(prediction, target):
    raise RuntimeError("loss exploded on purpose")


def failing_optimizer(model):
    raise ValueError("no optimizer for you")


FIELDS = {"FLOAT": DataTypes.FLOAT(), "DOUBLE": DataTypes.DOUBLE(), "BIGINT": DataTypes.BIGINT(),
          "STRING": DataTypes.STRING(), "BOOLEAN": DataTypes.BOOLEAN()}


def table_of(env, columns, rows):
    return env.from_elements(rows, DataTypes.ROW(
        [DataTypes.FIELD(name, FIELDS[kind]) for name, kind in columns]))


def linear_rows(n=2000, seed=0):
    x = np.random.default_rng(seed).uniform(-1, 1, size=(n, 2))
    return [(float(a), float(b), float(3 * a - 2 * b + 0.5)) for a, b in x]


def linear_table(env, n=2000):
    return table_of(env, [("a", "FLOAT"), ("b", "DOUBLE"), ("y", "DOUBLE")], linear_rows(n))


def circle_data(n, seed):
    x = np.random.default_rng(seed).uniform(-1.5, 1.5, size=(n, 2)).astype(np.float32)
    y = (x[:, 0] ** 2 + x[:, 1] ** 2 < 1).astype(np.int64)
    return x, y


def estimator(**overrides):
    params = dict(model=ScalarRegressor(), loss=nn.MSELoss(), optimizer_creator=sgd,
                  feature_cols=["a", "b"], label_col="y", max_epochs=6, batch_size=64,
                  worker_num=2, timeout=60.0)
    params.update(overrides)
    return PyTorchEstimator(**params)


# ------------------------------------------------------------------ learning

@pytest.mark.parametrize("workers", [1, 2])
def test_linear_regression_recovers_coefficients(stream_env, workers):
    fitted = estimator(worker_num=workers).fit(linear_table(stream_env))
    assert isinstance(fitted, PyTorchModel)
    weight = fitted.model.linear.weight.detach().numpy().ravel()
    np.testing.assert_allclose(weight, [3, -2], atol=0.05)
    assert abs(fitted.model.linear.bias.item() - 0.5) < 0.05
    assert [h["epoch"] for h in fitted.history] == list(range(1, 7))
    assert fitted.history[-1]["train_loss"] < fitted.history[0]["train_loss"]
    assert all(h["train_rows"] == 2000 for h in fitted.history)
    frame = fitted.transform(linear_table(stream_env, 50))[0].to_pandas()
    np.testing.assert_allclose(frame["prediction"], frame["y"], atol=0.05)


def plain_loop_accuracy(x, y, test_x, test_y, epochs, batch_size, seed):
    """The same model and hyper-parameters, trained by a plain single-process loop."""
    torch.manual_seed(seed)
    model = CircleMLP()
    optimizer = adam(model)
    loss_fn = nn.CrossEntropyLoss()
    features, labels = torch.from_numpy(x), torch.from_numpy(y)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            index = order[start:start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(features[index, :1], features[index, 1:]), labels[index])
            loss.backward()
            optimizer.step()
    return accuracy(model, test_x, test_y)


def accuracy(model, x, y):
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(x[:, :1]), torch.from_numpy(x[:, 1:]))
    return float((logits.argmax(dim=1).numpy() == y).mean())


@pytest.mark.parametrize("workers", [1, 2])
def test_mlp_classifier_matches_a_plain_pytorch_loop(stream_env, workers):
    x, y = circle_data(3000, seed=1)
    test_x, test_y = circle_data(1000, seed=2)
    epochs, batch_size, seed = 15, 64, 3
    table = table_of(stream_env, [("x1", "FLOAT"), ("x2", "FLOAT"), ("label", "BIGINT")],
                     [(float(a), float(b), int(c)) for (a, b), c in zip(x, y)])
    torch.manual_seed(seed)
    fitted = PyTorchEstimator(CircleMLP(), nn.CrossEntropyLoss(), adam,
                              feature_cols=["x1", "x2"], label_col="label", max_epochs=epochs,
                              batch_size=batch_size, worker_num=workers, seed=seed,
                              metrics=["accuracy"], timeout=60.0).fit(table)
    flink_accuracy = accuracy(fitted.model, test_x, test_y)
    plain_accuracy = plain_loop_accuracy(x, y, test_x, test_y, epochs, batch_size, seed)
    assert plain_accuracy > 0.9
    assert abs(flink_accuracy - plain_accuracy) <= 0.02, (flink_accuracy, plain_accuracy)
    assert fitted.history[-1]["train_accuracy"] > 0.9
    # scoring in Flink agrees with the module: class probabilities as ARRAY<FLOAT>
    scored = fitted.transform(table_of(stream_env, [("x1", "FLOAT"), ("x2", "FLOAT")],
                                       [(float(a), float(b)) for a, b in test_x[:200]]))[0]
    logits = np.stack(scored.to_pandas()["prediction"])
    assert logits.shape == (200, 2)


def test_history_with_validation_fraction_metrics_and_verbose(stream_env, capsys):
    fitted = estimator(max_epochs=3, validation=0.25, metrics=["mae", "mse"],
                       verbose=True).fit(linear_table(stream_env))
    assert len(fitted.history) == 3
    for record in fitted.history:
        for key in ("train_loss", "valid_loss", "train_mae", "valid_mae", "valid_mse",
                    "rows_per_second", "epoch_seconds"):
            assert np.isfinite(record[key]), key
        assert record["train_rows"] + record["valid_rows"] == 2000
        assert 300 < record["valid_rows"] < 700
    printed = capsys.readouterr().out
    assert "epoch 1/3" in printed and "epoch 3/3" in printed


def test_validation_by_boolean_column_and_custom_metric(stream_env):
    rows = [(a, b, y, i % 5 == 0) for i, (a, b, y) in enumerate(linear_rows(1000))]
    table = table_of(stream_env, [("a", "FLOAT"), ("b", "DOUBLE"), ("y", "DOUBLE"),
                                  ("is_valid", "BOOLEAN")], rows)
    fitted = estimator(max_epochs=2, validation="is_valid",
                       metrics={"max_error": lambda p, t: (p - t).abs().max()}).fit(table)
    assert fitted.history[-1]["valid_rows"] == 200
    assert fitted.history[-1]["train_rows"] == 800
    assert "valid_max_error" in fitted.history[-1]


def test_dl_on_flink_example_parity(stream_env, tmp_path):
    """The DL-on-Flink docs' estimator example, imports aside."""
    env, source_table = stream_env, linear_table(stream_env, 1000)
    statement_set = stream_env.create_statement_set()
    model = ScalarRegressor()
    loss = nn.MSELoss()

    def optimizer_creator(_model: nn.Module):
        return torch.optim.SGD(_model.parameters(), lr=0.1)

    estimator_ = PyTorchEstimator(statement_set, model, loss, optimizer_creator, worker_num=2,
                                  feature_cols=["a", "b"], label_col="y", max_epochs=1,
                                  batch_size=128)
    model = estimator_.fit(source_table)
    model_path = str(tmp_path / "model")
    model.save(model_path)
    assert not os.path.exists(model_path)  # lazy: written when the statement set runs
    statement_set.execute().wait()
    assert sorted(os.listdir(model_path)) == ["metadata", "metadata.json", "model.pt"]
    res_table = PyTorchModel.load(env, model_path).transform(source_table)[0]
    frame = res_table.to_pandas()
    assert len(frame) == 1000 and frame["prediction"].notna().all()
    assert len(model.history) == 1  # the pending model picked up its weights too
    expected = model.transform(source_table)[0].to_pandas()
    np.testing.assert_allclose(np.sort(frame["prediction"]), np.sort(expected["prediction"]),
                               atol=1e-5)


def test_single_feature_column_as_a_string(stream_env):
    rows = [(float(x), float(4 * x - 1)) for x in np.linspace(-1, 1, 500)]
    table = table_of(stream_env, [("x", "DOUBLE"), ("y", "DOUBLE")], rows)
    fitted = PyTorchEstimator(nn.Linear(1, 1), nn.MSELoss(), sgd, feature_cols="x",
                              label_col="y", max_epochs=30, batch_size=50, worker_num=1,
                              timeout=60.0).fit(table)
    assert fitted.get_feature_cols() == ("x",)
    assert abs(fitted.model.weight.item() - 4) < 0.1


# ------------------------------------------------------------------ bad input

def test_unconfigured_estimator_lists_every_problem():
    with pytest.raises(ValueError, match="model must be a torch.nn.Module.*loss must be "
                                         "callable.*optimizer_creator.*feature_cols is not "
                                         "set.*label_col is not set"):
        PyTorchEstimator().fit(object.__new__(Table))  # checked before the table is read


def test_missing_and_unsupported_columns(stream_env):
    table = linear_table(stream_env, 10)
    with pytest.raises(SchemaError, match=r"'nope' not found.*a, b, y"):
        estimator(feature_cols=["a", "nope"]).fit(table)
    with pytest.raises(SchemaError, match="'zz' not found"):
        estimator(label_col="zz").fit(table)
    text = table_of(stream_env, [("a", "FLOAT"), ("s", "STRING"), ("y", "DOUBLE")],
                    [(1.0, "x", 1.0)])
    with pytest.raises(UnsupportedTypeError, match="Feature column 's' is STRING"):
        estimator(feature_cols=["a", "s"]).fit(text)
    with pytest.raises(UnsupportedTypeError, match="Label column 's' is STRING"):
        estimator(feature_cols=["a"], label_col="s").fit(text)


def test_bad_param_values_are_rejected_at_once():
    with pytest.raises(ValueError, match="max_epochs"):
        PyTorchEstimator(max_epochs=0)
    with pytest.raises(TypeError, match="batch_size expects int"):
        PyTorchEstimator(batch_size="64")
    with pytest.raises(ValueError, match="validation"):
        PyTorchEstimator(validation=1.5)
    with pytest.raises(ValueError, match="metrics"):
        PyTorchEstimator(metrics=["f1_typo"])
    with pytest.raises(TypeError, match="Did you mean 'max_epochs'"):
        PyTorchEstimator(max_epoch=3)


@pytest.mark.parametrize("column, value, message", [
    ("a", None, "column 'a' holds NULL"),
    ("b", float("nan"), "column 'b' holds NULL or NaN"),
    ("y", float("nan"), "column 'y' holds NULL or NaN"),
])
def test_null_or_nan_in_features_or_label(stream_env, column, value, message):
    rows = linear_rows(200)
    index = {"a": 0, "b": 1, "y": 2}[column]
    rows[7] = tuple(value if i == index else v for i, v in enumerate(rows[7]))
    table = table_of(stream_env, [("a", "FLOAT"), ("b", "DOUBLE"), ("y", "DOUBLE")], rows)
    start = time.monotonic()
    with pytest.raises(InvalidDataError, match=message):
        estimator(max_epochs=1).fit(table)
    assert time.monotonic() - start < 60


def test_empty_table(stream_env):
    with pytest.raises(InvalidDataError, match="empty"):
        estimator(max_epochs=1).fit(linear_table(stream_env, 10).filter(col("a") > 5))


@pytest.mark.parametrize("overrides, message", [
    ({"loss": exploding_loss}, "RuntimeError: loss exploded on purpose"),
    ({"optimizer_creator": failing_optimizer}, "ValueError: no optimizer for you"),
])
def test_user_code_failing_in_a_worker_reaches_the_user(stream_env, overrides, message):
    start = time.monotonic()
    with pytest.raises(WorkerError, match=r"rank \d of 2 failed") as raised:
        estimator(max_epochs=1, **overrides).fit(linear_table(stream_env, 200))
    assert message in str(raised.value)
    assert time.monotonic() - start < 60


# ------------------------------------------------------------------ FlinkML contract

@pytest.mark.compat
def test_estimator_save_load_round_trip(stream_env, tmp_path):
    original = estimator(max_epochs=4, seed=7, metrics=["mae"])
    original.save(str(tmp_path / "est"))
    loaded = PyTorchEstimator.load(stream_env, str(tmp_path / "est"))
    params = {p.name: v for p, v in loaded.get_param_map().items()}
    assert params["max_epochs"] == 4 and params["seed"] == 7
    assert params["feature_cols"] == ("a", "b") and params["metrics"] == ["mae"]
    assert isinstance(params["model"], ScalarRegressor)
    fitted = loaded.fit(linear_table(stream_env, 1000))
    assert fitted.history[-1]["train_mae"] < 0.2
