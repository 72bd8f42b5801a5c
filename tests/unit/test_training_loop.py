"""The estimator's training loop (training.py) without Flink: one process, and a real
two-process gloo world rendezvousing through the library's store."""

import multiprocessing

import numpy as np
import pytest
import torch
from torch import nn

from flink_torch_ml import InvalidDataError
from flink_torch_ml.runtime.store import StoreClient, StoreServer, torch_store
from flink_torch_ml.runtime.training import TrainSettings, fit_worker, state_from_bytes
from flink_torch_ml.runtime.wire import Security, new_secret


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, a, b):
        return self.linear(torch.cat([a, b], dim=1))


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1)


def settings(**overrides):
    values = dict(model=Linear(), loss=nn.MSELoss(), optimizer_creator=sgd,
                  feature_cols=["a", "b"], feature_types=["FLOAT_32", "FLOAT_64"],
                  label_col="y", label_type="FLOAT_64", max_epochs=20, batch_size=16, seed=3)
    values.update(overrides)
    return TrainSettings(**values)


def data(rows, seed=0):
    x = np.random.default_rng(seed).uniform(-1, 1, size=(rows, 2))
    return [x[:, 0].astype(np.float32), x[:, 1], 3 * x[:, 0] - 2 * x[:, 1] + 0.5]


def test_one_worker_learns_and_reports_every_epoch():
    epochs = []
    result = fit_worker(0, 1, data(400), settings(), on_epoch=epochs.append)
    assert [e["epoch"] for e in epochs] == list(range(1, 21)) == \
        [h["epoch"] for h in result["history"]]
    assert result["history"][-1]["train_loss"] < 0.01 < result["history"][0]["train_loss"]
    state = state_from_bytes(result["state_dict"])
    assert torch.allclose(state["linear.weight"], torch.tensor([[3.0, -2.0]]), atol=0.1)


def test_validation_by_fraction_holds_out_rows_and_reports_its_loss():
    result = fit_worker(0, 1, data(400), settings(validation=0.25, max_epochs=2,
                                                  metrics={"mae": lambda p, t: (p - t).abs()
                                                           .mean()}))
    last = result["history"][-1]
    assert last["valid_rows"] + last["train_rows"] == 400 and 60 < last["valid_rows"] < 140
    assert "valid_loss" in last and "valid_mae" in last and "train_mae" in last


def test_nan_and_empty_input_are_clear_errors():
    columns = data(10)
    columns[1][3] = np.nan
    with pytest.raises(InvalidDataError, match="'b' holds NaN in 1 of 10"):
        fit_worker(0, 1, columns, settings())
    with pytest.raises(InvalidDataError, match="empty"):
        fit_worker(0, 1, [c[:0] for c in data(10)], settings())


def _rank(rank, port, secret, columns, results):
    client = StoreClient("127.0.0.1", port, Security(secret), 30.0)
    result = fit_worker(rank, 2, columns, settings(), torch_store(client, "pg/"), 30.0)
    results.put((rank, result["history"], result.get("state_dict")))


def test_two_workers_in_a_gloo_world_average_over_all_rows():
    secret = new_secret()
    server = StoreServer("127.0.0.1", Security(secret))
    full = data(401)
    shards = [[c[:201] for c in full], [c[201:] for c in full]]  # uneven: DDP join
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    ranks = [context.Process(target=_rank, args=(r, server.port, secret, shards[r], results))
             for r in range(2)]
    for p in ranks:
        p.start()
    got = dict((rank, (history, state)) for rank, history, state in
               (results.get(timeout=120) for _ in range(2)))
    for p in ranks:
        p.join(30)
    server.close()
    assert [p.exitcode for p in ranks] == [0, 0]
    history0, history1 = got[0][0], got[1][0]
    assert [h["train_loss"] for h in history0] == [h["train_loss"] for h in history1]
    assert history0[0]["train_rows"] == 401  # averaged over both shards
    assert history0[-1]["train_loss"] < 0.01
    state = state_from_bytes(got[0][1])
    assert got[1][1] is None  # only rank 0 hands back the weights
    assert torch.allclose(state["linear.weight"], torch.tensor([[3.0, -2.0]]), atol=0.1)
