"""Fault-tolerant training on a real PyFlink mini-cluster (issue 12): a worker killed mid-fit
is survived with the same weights as an uninterrupted fit, early stopping stops every rank
together, a corrupt checkpoint falls back, a fit continues in a new process, and every bad
input is refused before submission."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch
from pyflink.table import DataTypes
from torch import nn

from flink_torch_ml import (CheckpointError, EarlyStopping, PyTorchClusterConfig,
                            PyTorchContext, PyTorchEstimator, WorkerError, pytorch_utils)
from flink_torch_ml.core.checkpoint import newest_checkpoint
from flink_torch_ml.client.run import active_runs
from tests.models import DropoutNet

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def dropout_net():
    """A small MLP with dropout: randomness a resumed fit must reproduce."""
    return DropoutNet(hidden=32, dropout=0.2)


def adam(model):
    return torch.optim.Adam(model.parameters(), lr=0.005)


def step_lr(optimizer):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)


def rows(n=6000, seed=0):
    x = np.random.default_rng(seed).uniform(-1, 1, size=(n, 2))
    return [(float(a), float(b), float(np.sin(3 * a) + b * b)) for a, b in x]


def table(env, n=6000):
    return env.from_elements(rows(n), DataTypes.ROW([
        DataTypes.FIELD("a", DataTypes.FLOAT()), DataTypes.FIELD("b", DataTypes.DOUBLE()),
        DataTypes.FIELD("y", DataTypes.DOUBLE())]))


def estimator(**overrides):
    torch.manual_seed(7)
    params = dict(model=dropout_net(), loss=nn.MSELoss(), optimizer_creator=adam,
                  feature_cols=["a", "b"], label_col="y", max_epochs=5, batch_size=8,
                  worker_num=2, seed=11, lr_scheduler_creator=step_lr, timeout=60.0)
    params.update(overrides)
    return PyTorchEstimator(**params)


def same_weights(a, b, atol=1e-6):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.allclose(sa[k], sb[k], atol=atol) for k in sa)


def kill_rank_during_epoch(epoch, rank=1, timeout=120):
    """In a thread: once the newest run's rank 0 reported ``epoch - 1`` epochs, kill -9 the
    process of ``rank``. Returns the thread and a dict that receives the victim's pid."""
    earlier = active_runs()
    killed = {}

    def watch():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = [r for r in active_runs() if r not in earlier]
            if runs:
                store = runs[-1].run_store()
                try:
                    if store.has(store.keys.progress(epoch - 1)):
                        pid = int(store.get_text(store.keys.process(rank)).rsplit(":", 1)[1])
                        os.kill(pid, signal.SIGKILL)
                        killed["pid"], killed["at"] = pid, time.monotonic()
                        return
                except OSError:
                    pass
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, killed


def test_a_worker_killed_in_epoch_3_is_survived_with_the_uninterrupted_weights(stream_env,
                                                                              tmp_path, capsys):
    killer, killed = kill_rank_during_epoch(3)
    resumed = estimator(checkpoint_dir=str(tmp_path / "a"), max_failures=1,
                        verbose=True).fit(table(stream_env))
    killer.join(5)
    assert killed, "the worker was never killed"
    history = resumed.history
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]  # every epoch once
    assert history[0]["attempt"] == 0 and history[-1]["attempt"] == 1
    assert all(h["train_rows"] == 6000 for h in history)
    printed = capsys.readouterr().out
    assert "attempt 0 failed" in printed and "starting attempt 1 of 2" in printed
    assert "resuming after epoch" in printed
    whole = estimator(checkpoint_dir=str(tmp_path / "b")).fit(table(stream_env))
    assert [h["attempt"] for h in whole.history] == [0] * 5
    assert same_weights(resumed, whole)
    assert [h["train_loss"] for h in resumed.history] == \
        pytest.approx([h["train_loss"] for h in whole.history], rel=1e-6)


def test_without_retries_a_killed_worker_fails_the_fit_naming_it(stream_env):
    killer, killed = kill_rank_during_epoch(2)
    with pytest.raises(WorkerError) as raised:
        estimator(max_epochs=4).fit(table(stream_env))
    killer.join(5)
    assert killed
    assert "rank" in str(raised.value) and "died" in str(raised.value)


class FailingLoss:
    """A loss that counts its calls in a file, then raises: the user's own bug."""

    def __init__(self, path):
        self.path = path

    def __call__(self, prediction, target):
        with open(self.path, "a") as f:
            f.write("x\n")
        raise ValueError("bad loss on purpose")


def test_the_users_own_error_is_not_retried(stream_env, tmp_path):
    counter = tmp_path / "calls"
    with pytest.raises(WorkerError, match="bad loss on purpose"):
        estimator(loss=FailingLoss(str(counter)), max_failures=3).fit(table(stream_env, 200))
    assert counter.read_text().count("x") <= 2  # one attempt: at most one call per rank


def test_early_stopping_stops_every_rank_at_the_same_epoch(stream_env):
    stopper = EarlyStopping(monitor="valid_loss", patience=1, min_delta=1e6)
    fitted = estimator(max_epochs=10, validation=0.2, callbacks=[stopper]).fit(
        table(stream_env, 2000))
    assert len(fitted.history) == 2  # no epoch improves by 1e6: stop after the patience
    epochs = [s["entry_result"]["epochs"] for s in fitted.worker_summaries]
    assert epochs == [2, 2]


def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(stream_env, tmp_path,
                                                                 capsys):
    directory = str(tmp_path / "ckpt")
    estimator(max_epochs=3, checkpoint_dir=directory).fit(table(stream_env, 2000))
    with open(os.path.join(directory, "epoch-000003.pt"), "r+b") as f:
        f.seek(20)
        f.write(b"\x00" * 8)
    resumed = estimator(max_epochs=5, resume_from=directory, verbose=True).fit(
        table(stream_env, 2000))
    assert [s["entry_result"]["start_epoch"] for s in resumed.worker_summaries] == [2, 2]
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4, 5]
    printed = capsys.readouterr().out
    assert "skipped the checkpoint after epoch 3" in printed and "sha256" in printed
    whole = estimator(max_epochs=5).fit(table(stream_env, 2000))
    assert same_weights(resumed, whole)


CLIENT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    import flink_torch_ml
    from flink_torch_ml import create_table_environment
    from tests.integration.test_fault_tolerance import estimator, table
    t_env = create_table_environment("streaming", parallelism=2)
    estimator(max_epochs=5, checkpoint_dir={directory!r}).fit(table(t_env, 3000))
""")


def test_resume_from_continues_a_fit_whose_client_died(stream_env, tmp_path):
    """A client process dies after epoch 2 (its mini-cluster and workers with it); a new
    process continues the fit from the checkpoint directory."""
    directory = str(tmp_path / "ckpt")
    client = subprocess.Popen([sys.executable, "-c",
                               CLIENT.format(root=ROOT, directory=directory)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and client.poll() is None:
        checkpoint, _ = newest_checkpoint(directory)
        if checkpoint is not None and checkpoint.epoch >= 2:
            break
        time.sleep(0.05)
    client.kill()
    client.wait(30)
    checkpoint, _ = newest_checkpoint(directory)
    assert checkpoint is not None and 2 <= checkpoint.epoch < 5
    resumed = estimator(max_epochs=5, resume_from=directory).fit(table(stream_env, 3000))
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4, 5]
    assert resumed.worker_summaries[0]["entry_result"]["start_epoch"] == checkpoint.epoch
    whole = estimator(max_epochs=5).fit(table(stream_env, 3000))
    assert same_weights(resumed, whole)


def test_bad_fault_tolerance_settings_are_refused_before_submission(stream_env, tmp_path):
    t = table(stream_env, 100)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="cannot be written"):
        estimator(checkpoint_dir=str(blocker / "sub")).fit(t)
    with pytest.raises(ValueError, match="max_failures"):
        estimator(max_failures=-1)
    with pytest.raises(CheckpointError, match="holds no intact checkpoint"):
        estimator(resume_from=str(tmp_path / "empty")).fit(t)
    used = str(tmp_path / "used")
    estimator(max_epochs=1, checkpoint_dir=used).fit(t)
    with pytest.raises(CheckpointError, match="already holds checkpoints.*resume_from"):
        estimator(max_epochs=1, checkpoint_dir=used).fit(t)

    class Other(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(2, 8), nn.Linear(8, 1))

        def forward(self, a, b):
            return self.net(torch.cat([a, b], dim=1))

    with pytest.raises(CheckpointError, match=r"holds another model: .*net\.0\.weight"):
        estimator(model=Other(), resume_from=used).fit(t)
    with pytest.raises(ValueError, match="StatementSet"):
        PyTorchEstimator(stream_env.create_statement_set(), dropout_net(), nn.MSELoss(), adam,
                         feature_cols=["a", "b"], label_col="y", max_failures=1).fit(t)


def resuming_entry(context):
    """A custom entry that keeps its own checkpoint; rank 1 kills itself in the first
    attempt, after writing it. Every rank of the next attempt finds what it wrote."""
    ctx = PyTorchContext(context)
    marker = os.path.join(ctx.get_checkpoint_dir(), "rank-1")
    if ctx.get_attempt() == 0:
        if ctx.get_rank() == 1:
            with open(marker, "w") as f:
                f.write("attempt 0 was here")
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(30)  # rank 0 waits to be torn down with the failed job
    with open(marker) as f:
        return {"attempt": ctx.get_attempt(), "found": f.read()}


def test_train_with_max_failures_reruns_the_entry_which_sees_its_attempt(stream_env, tmp_path):
    config = (PyTorchClusterConfig.new_builder().set_node_entry(resuming_entry)
              .set_world_size(2).set_max_failures(1).set_checkpoint_dir(str(tmp_path))
              .set_timeout(60).build())
    results = pytorch_utils.train(None, config, stream_env.from_elements([(1,), (2,)], ["x"]))
    assert [r["entry_result"] for r in results] == [
        {"attempt": 1, "found": "attempt 0 was here"}] * 2
    with pytest.raises(ValueError, match="max_failures must be an int >= 0"):
        PyTorchClusterConfig.new_builder().set_max_failures(-1)


def test_model_checkpoint_keeps_the_best_model_in_the_librarys_format(stream_env, tmp_path):
    from flink_torch_ml import ModelCheckpoint, PyTorchModel

    best = ModelCheckpoint(str(tmp_path / "models"), monitor="train_loss")
    every = ModelCheckpoint(str(tmp_path / "all"), save_best_only=False, format="onnx")
    fitted = estimator(max_epochs=3, callbacks=[best, every]).fit(table(stream_env, 1000))
    assert sorted(os.listdir(tmp_path / "all")) == ["epoch-000001", "epoch-000002",
                                                    "epoch-000003"]
    loaded = PyTorchModel.load(stream_env, str(tmp_path / "models" / "best"))
    assert loaded.get_feature_cols() == ("a", "b")
    scored = loaded.transform(table(stream_env, 20))[0].to_pandas()
    assert len(scored) == 20 and np.isfinite(scored["prediction"]).all()
    losses = [h["train_loss"] for h in fitted.history]
    if losses[-1] == min(losses):  # the best is the last epoch: the fitted model itself
        x = torch.tensor(scored[["a", "b"]].to_numpy(), dtype=torch.float32)
        with torch.no_grad():
            expected = fitted.model(x[:, :1], x[:, 1:].double().float()).squeeze(1).numpy()
        assert np.allclose(scored["prediction"].to_numpy(), expected, atol=1e-4)
