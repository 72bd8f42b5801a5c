"""Online training's pure parts: how an update's rows are split between ranks, the model
stream's broadcast-state encoding, and FlinkML's model-delay rule in the scoring function."""


import pytest
import torch
from pyflink.common import Row

from flink_torch_ml.data_types import DataType
from flink_torch_ml.errors import InvalidDataError, ModelFormatError
from flink_torch_ml.core.online import allocate
from flink_torch_ml.core.export import to_torchscript
from flink_torch_ml.worker.follow import FollowModelStream, _decode, _encode
from flink_torch_ml.core.spec import FeatureSpec, ModelSpec
from tests.models import ScalarRegressor


@pytest.mark.parametrize("counts, batch, expected", [
    ([50, 50], 100, [50, 50]),
    ([80, 30], 100, [70, 30]),          # a short rank's gap is filled by the other
    ([0, 120], 100, [0, 100]),
    ([34, 33, 33], 100, [34, 33, 33]),
    ([10, 60, 60], 101, [10, 58, 33]),  # shares 34/34/33, then extra in rank order
])
def test_allocate_takes_exactly_the_batch_in_shares_then_in_rank_order(counts, batch,
                                                                        expected):
    take = allocate(counts, batch)
    assert take == expected
    assert sum(take) == batch and all(0 <= t <= c for t, c in zip(take, counts))


def test_the_broadcast_state_encoding_round_trips_without_pickles():
    value = (7, 1234, "torchscript", b"\x00\n\xffmodel", '{"features": []}')
    data = _encode(value)
    assert data.split(b"\n", 1)[0].startswith(b"{")  # a JSON header line, then raw bytes
    assert _decode(data) == value


SPEC = ModelSpec((FeatureSpec("x1", DataType.FLOAT_64, 1, "float32"),
                  FeatureSpec("x2", DataType.FLOAT_64, 1, "float32")),
                 "prediction", DataType.FLOAT_32, 1)


class State(dict):
    """Flink's broadcast state API over a dict."""

    def put(self, key, value):
        self[key] = value


class Ctx:
    """The two things the function reads from Flink's context: the row's timestamp and the
    broadcast state."""

    def __init__(self, timestamp=None, state=None):
        self._timestamp, self._state = timestamp, state if state is not None else State()

    def timestamp(self):
        return self._timestamp

    def get_broadcast_state(self, _descriptor):
        return self._state


def version(number, time_ms, bias):
    net = ScalarRegressor()
    with torch.no_grad():
        net.linear.weight.zero_()
        net.linear.bias.fill_(bias)
    payload = to_torchscript(net, SPEC.sample_inputs())
    spec_json = '{"features": [{"name": "x1", "type": "FLOAT_64", "width": 1, ' \
                '"input_dtype": "float32"}, {"name": "x2", "type": "FLOAT_64", "width": 1, ' \
                '"input_dtype": "float32"}], "prediction_col": "prediction", ' \
                '"prediction_type": "FLOAT_32", "output_width": 1}'
    return Row(number, time_ms, "torchscript", payload, spec_json)


def function(max_delay=None, skip=False):
    f = FollowModelStream(SPEC, [0, 1], max_delay, skip, 1, 1)
    f.open(None)
    return f


def test_rows_wait_for_the_first_version_then_each_row_gets_the_newest():
    f, state = function(), State()
    assert list(f.process_element(Row(1.0, 2.0), Ctx(state=state))) == []
    released = list(f.process_broadcast_element(version(1, 0, 3.0), Ctx(state=state)))
    assert [tuple(r) for r in released] == [(1.0, 2.0, 3.0, 1)]
    assert [tuple(r) for r in f.process_element(Row(0.0, 0.0), Ctx(state=state))] == \
        [(0.0, 0.0, 3.0, 1)]
    list(f.process_broadcast_element(version(3, 0, 5.0), Ctx(state=state)))
    list(f.process_broadcast_element(version(2, 0, 9.0), Ctx(state=state)))  # late, older
    assert [tuple(r) for r in f.process_element(Row(0.0, 0.0), Ctx(state=state))] == \
        [(0.0, 0.0, 5.0, 3)]


def test_max_allowed_model_delay_holds_a_row_until_a_recent_enough_version():
    f, state = function(max_delay=100), State()
    list(f.process_broadcast_element(version(1, 1000, 1.0), Ctx(state=state)))
    assert [tuple(r) for r in f.process_element(Row(0.0, 0.0), Ctx(1050, state))] == \
        [(0.0, 0.0, 1.0, 1)]                               # 1000 >= 1050 - 100
    assert list(f.process_element(Row(0.0, 0.0), Ctx(1200, state))) == []  # too stale
    assert list(f.process_broadcast_element(version(2, 1050, 2.0), Ctx(state=state))) == []
    released = list(f.process_broadcast_element(version(3, 1100, 3.0), Ctx(state=state)))
    assert [tuple(r) for r in released] == [(0.0, 0.0, 3.0, 3)]


def test_a_restarted_function_scores_with_the_version_in_broadcast_state():
    first, state = function(), State()
    list(first.process_broadcast_element(version(4, 0, 2.0), Ctx(state=state)))
    restarted = function()
    assert [tuple(r) for r in restarted.process_element(Row(0.0, 0.0), Ctx(state=state))] == \
        [(0.0, 0.0, 2.0, 4)]


def test_invalid_rows_fail_naming_the_column_or_are_skipped_and_counted():
    f = function()
    with pytest.raises(InvalidDataError, match="'x2'"):
        list(f.process_element(Row(1.0, None), Ctx()))
    g = function(skip=True)
    assert list(g.process_element(Row(float("nan"), 1.0), Ctx())) == []
    assert g._skipped == 1


def test_a_version_of_another_shape_is_refused():
    f = function()
    bad = version(1, 0, 1.0)
    bad = Row(1, 0, "torchscript", bad[3], bad[4].replace('"output_width": 1',
                                                          '"output_width": 3'))
    with pytest.raises(ModelFormatError, match="returns 3 values"):
        list(f.process_broadcast_element(bad, Ctx()))


def test_window_mode_makes_one_update_per_closed_window_and_drops_late_rows():
    """One rank (a one-process gloo group): rows are trained per event-time window, oldest
    first, once the watermark passes the window's last millisecond; a row of a window already
    trained on is late: dropped and counted; the end of input trains what is left."""
    import datetime

    import torch.distributed as dist

    from flink_torch_ml.core.online import OnlineLearner, OnlineSpec

    torch.manual_seed(0)
    spec = OnlineSpec(
        model=torch.nn.Linear(1, 1), loss=torch.nn.functional.mse_loss,
        optimizer_creator=lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
        feature_cols=["x"], feature_types=["FLOAT_64"], label_col="y", label_type="FLOAT_64",
        global_batch_size=None, world_size=1, rendezvous=None, timeout=10, heartbeat_ms=1000,
        model_spec={}, window_ms=1000)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=10))
    try:
        learner = OnlineLearner(spec, 0)
        learner.start(None)
        for ts in (100, 900, 1500, 2999, 3000):
            assert learner.add((ts / 1000,), 1.0, ts) is False  # windows wait for watermarks
        assert list(learner.sync(False, watermark=998)) == []  # [0, 1000) not complete yet
        updates = list(learner.sync(False, watermark=2999))  # three windows are complete
        assert [(u.rows, u.time_ms) for u in updates] == [(2, 999), (1, 1999), (1, 2999)]
        assert learner.version == 3 and [r[2] for r in learner.buffer] == [3000]
        learner.add((0.5,), 1.0, 500)  # its window was trained on: late
        assert learner.rows_late == 1
        with pytest.raises(InvalidDataError, match="without event time"):
            learner.add((0.5,), 1.0, None)
        updates = list(learner.sync(True, watermark=3500))
        assert [(u.rows, u.time_ms) for u in updates] == [(1, 3999)]
        assert learner.finished and learner.buffer == []
    finally:
        dist.destroy_process_group()
