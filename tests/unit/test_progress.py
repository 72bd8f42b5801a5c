"""The client's progress display (``verbose=True``) fed by a real training loop through a real
run store: live tqdm bars where the output is interactive, one line per epoch elsewhere."""

import io
import re
import time

import pytest

from flink_torch_ml import Callback
from flink_torch_ml.client.progress import EpochPrinter, interactive
from flink_torch_ml.dataplane.protocol import RunStore
from flink_torch_ml.dataplane.store import StoreClient, StoreServer
from flink_torch_ml.core.engine import fit_worker
from flink_torch_ml.dataplane.wire import Security, new_secret
from tests.unit.test_training_loop import data, settings


@pytest.fixture()
def run_store():
    secret = new_secret()
    server = StoreServer("127.0.0.1", Security(secret))
    client = StoreClient("127.0.0.1", server.port, Security(secret), 30.0)
    yield RunStore(client, 0, 2, 30.0)
    server.close()


class Slow(Callback):
    """A batch takes 20 ms: the display (polling every 0.2 s) sees every epoch's bar move."""

    def on_batch_end(self, batch, logs):
        time.sleep(0.02)


def train(run: RunStore, epochs: int = 3, rows: int = 300):
    run.add(run.keys.fed_rows(0), rows // 2)  # what the feed publishes while input arrives
    run.add(run.keys.fed_rows(1), rows - rows // 2)
    return fit_worker(0, 1, data(rows), settings(max_epochs=epochs, batch_size=10,
                                                 callbacks=[Slow()]),
                      on_epoch=lambda r: run.set_json(run.keys.progress(r["epoch"]), r),
                      on_batch=lambda p: run.set_json(run.keys.batch_progress, p))


def test_live_bars_show_rows_received_then_each_epochs_batches_and_metrics(run_store):
    out = io.StringIO()
    printer = EpochPrinter(run_store, 3, verbose=True, live=True, stream=out)
    run_store.add(run_store.keys.fed_rows(0), 0)
    printer.start()
    result = train(run_store)
    printer.stop()
    text = out.getvalue()
    assert "rows received" in text
    for epoch in (1, 2, 3):
        finished = re.findall(rf"epoch {epoch}/3: 100%.*? 30/30 .*?train_loss=([0-9.e+-]+)",
                              text)
        assert finished, text[-2000:]
        moving = re.findall(rf"epoch {epoch}/3:\s+([0-9]+)%.*? ([0-9]+)/30 ", text)
        assert any(0 < int(done) < 30 for _, done in moving), text[-2000:]  # seen mid-epoch
        assert float(finished[-1]) == pytest.approx(
            result["history"][epoch - 1]["train_loss"], rel=1e-3)
    position = run_store.get_json(run_store.keys.batch_progress)
    assert position == {"epoch": 3, "batch": 30, "batches": 30}


def test_plain_output_is_one_line_per_epoch(run_store):
    out = io.StringIO()
    printer = EpochPrinter(run_store, 2, verbose=True, live=False, stream=out)
    printer.start()
    train(run_store, epochs=2)
    printer.stop()
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["[flink-torch-ml] epoch 1/2",
                                                      "[flink-torch-ml] epoch 2/2"]
    assert all("train_loss=" in line for line in lines)


def test_bars_only_where_the_output_is_interactive():
    assert not interactive(io.StringIO())

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert interactive(Terminal())
