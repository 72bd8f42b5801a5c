"""The estimator's training loop (training.py) without Flink: one process, and a real
two-process gloo world rendezvousing through the library's store."""

import multiprocessing

import numpy as np
import pytest
import torch
from torch import nn

from flink_torch_ml import Callback, EarlyStopping, InvalidDataError, LRScheduler, TrainingLoop
from flink_torch_ml.core.checkpoint import newest_checkpoint
from flink_torch_ml.dataplane.store import StoreClient, StoreServer, torch_store
from flink_torch_ml.core.engine import TrainSettings, fit_worker, state_from_bytes
from flink_torch_ml.dataplane.wire import Security, new_secret
from tests.models import DropoutNet


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
    with pytest.raises(InvalidDataError, match="'b' holds NULL or NaN in 1 of 10"):
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


# ---------------------------------------------------------------- loop, callbacks, resume

def adam(model):
    return torch.optim.Adam(model.parameters(), lr=0.01)


def step_lr(optimizer):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)


class FailAt(Callback):
    """Simulates a lost worker: raises when the given epoch (0-based) begins."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_begin(self, epoch):
        if epoch == self.epoch:
            raise RuntimeError("worker lost")


def fresh(**overrides):
    torch.manual_seed(0)
    return settings(model=DropoutNet(), optimizer_creator=adam, max_epochs=5,
                    callbacks=[LRScheduler(step_lr)], **overrides)


def test_a_fit_interrupted_in_epoch_3_and_resumed_ends_with_the_same_weights(tmp_path):
    whole = fit_worker(0, 1, data(300), fresh(checkpoint_dir=str(tmp_path / "a")))
    interrupted = fresh(checkpoint_dir=str(tmp_path / "b"))
    interrupted.callbacks.append(FailAt(2))
    with pytest.raises(RuntimeError, match="worker lost"):
        fit_worker(0, 1, data(300), interrupted)
    checkpoint, _ = newest_checkpoint(str(tmp_path / "b"))
    assert checkpoint.epoch == 2
    resumed = fit_worker(0, 1, data(300), fresh(checkpoint_dir=str(tmp_path / "b")),
                         attempt=1, resume_from=checkpoint)
    assert resumed["start_epoch"] == 2
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4, 5]
    assert [h["attempt"] for h in resumed["history"]] == [0, 0, 1, 1, 1]
    a, b = state_from_bytes(whole["state_dict"]), state_from_bytes(resumed["state_dict"])
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    assert [h["train_loss"] for h in whole["history"]] == \
        pytest.approx([h["train_loss"] for h in resumed["history"]], abs=1e-9)


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_train_begin(self):
        self.events.append(("begin", self.loop.rank, self.loop.world_size))

    def on_epoch_begin(self, epoch):
        self.events.append(("epoch", epoch))

    def on_batch_end(self, batch, logs):
        if batch == 0:
            self.events.append(("batch", float(logs["loss"]) > 0))

    def on_epoch_end(self, epoch, logs):
        self.events.append(("end", epoch, sorted(logs)[:3]))

    def on_train_end(self):
        self.events.append(("done",))


def test_callbacks_see_every_hook_with_the_loop():
    recorder = Recorder()
    fit_worker(0, 1, data(100), settings(max_epochs=2, callbacks=[recorder]))
    assert recorder.events == [("begin", 0, 1), ("epoch", 0), ("batch", True),
                               ("end", 0, ["attempt", "epoch", "epoch_seconds"]), ("epoch", 1),
                               ("batch", True), ("end", 1, ["attempt", "epoch", "epoch_seconds"]),
                               ("done",)]


def test_early_stopping_ends_the_fit_and_a_resume_does_not_train_on(tmp_path):
    stopper = EarlyStopping(monitor="train_loss", patience=0, min_delta=10.0)
    result = fit_worker(0, 1, data(100), settings(max_epochs=8, callbacks=[stopper],
                                                  checkpoint_dir=str(tmp_path)))
    assert len(result["history"]) == 2 and stopper.stopped_epoch == 1
    checkpoint, _ = newest_checkpoint(str(tmp_path))
    assert checkpoint.epoch == 2 and checkpoint.metadata["stopped"]
    again = fit_worker(0, 1, data(100), settings(max_epochs=8, callbacks=[
        EarlyStopping(monitor="train_loss", patience=0, min_delta=10.0)]),
        resume_from=checkpoint)
    assert len(again["history"]) == 2


def test_early_stopping_names_a_missing_metric():
    with pytest.raises(KeyError, match="monitors 'valid_loss'.*set validation"):
        fit_worker(0, 1, data(50), settings(max_epochs=2, callbacks=[EarlyStopping()]))


class ClippedLoop(TrainingLoop):
    """A user's loop: clips gradients and counts its steps."""

    steps = 0

    def train_step(self, inputs, target):
        self.optimizer.zero_grad()
        prediction = self.ddp(*inputs)
        loss = self.loss(prediction, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 0.5)
        self.optimizer.step()
        ClippedLoop.steps += 1
        return loss, prediction


def test_a_custom_training_loop_replaces_a_step():
    ClippedLoop.steps = 0
    result = fit_worker(0, 1, data(64), settings(max_epochs=3, batch_size=16,
                                                 loop=ClippedLoop()))
    assert ClippedLoop.steps == 12 and len(result["history"]) == 3


def _early_rank(rank, port, secret, columns, results):
    client = StoreClient("127.0.0.1", port, Security(secret), 30.0)
    stopper = EarlyStopping(monitor="valid_loss", patience=1, min_delta=1e9)
    result = fit_worker(rank, 2, columns, settings(max_epochs=10, validation=0.3,
                                                   callbacks=[stopper]),
                        torch_store(client, "pg/"), 30.0)
    results.put((rank, len(result["history"]), stopper.stopped_epoch))


def test_early_stopping_stops_every_rank_at_the_same_epoch():
    secret = new_secret()
    server = StoreServer("127.0.0.1", Security(secret))
    full = data(300)
    shards = [[c[:150] for c in full], [c[150:] for c in full]]
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    ranks = [context.Process(target=_early_rank, args=(r, server.port, secret, shards[r],
                                                       results)) for r in range(2)]
    for p in ranks:
        p.start()
    got = sorted(results.get(timeout=120) for _ in range(2))
    for p in ranks:
        p.join(30)
    server.close()
    assert got == [(0, 2, 1), (1, 2, 1)]
