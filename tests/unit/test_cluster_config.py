import numpy as np
import pytest

from flink_torch_ml import DataType, PyTorchClusterConfig, UnsupportedTypeError, WorkerError
from flink_torch_ml.worker.job_spec import JobSpec
from flink_torch_ml.dataplane.rendezvous import RendezvousInfo
from flink_torch_ml.dataplane.wire import Security, new_secret
from flink_torch_ml.worker.node import run_node


def entry(context):
    pass


class Holder:
    def method(self, context):
        pass


def builder():
    return PyTorchClusterConfig.new_builder().set_node_entry(entry).set_world_size(2)


def test_builder_round_trip():
    config = (builder().set_property("input_types", "FLOAT_32,INT_64")
              .set_property("lr", 0.1).set_timeout(30).build())
    assert config.get_world_size() == 2
    assert config.get_node_entry() is entry
    assert config.get_property("lr") == "0.1"
    assert config.get_timeout() == 30.0
    assert config.get_input_types() == [DataType.FLOAT_32, DataType.INT_64]
    assert config.get_output_types() is None


@pytest.mark.parametrize("world_size, error", [(0, ValueError), (-1, ValueError),
                                               ("2", TypeError), (True, TypeError),
                                               (None, TypeError)])
def test_bad_world_size(world_size, error):
    with pytest.raises(error, match="world_size"):
        builder().set_world_size(world_size).build()


def test_unknown_type_name_fails_at_build():
    with pytest.raises(UnsupportedTypeError, match="Unknown data type name 'FLOAT_16'"):
        builder().set_property("input_types", "FLOAT_32,FLOAT_16").build()
    with pytest.raises(ValueError):
        builder().set_property("output_types", "DECIMAL").build()


def test_entry_must_be_a_top_level_function():
    def nested(context):
        pass

    for bad in (lambda context: None, nested, Holder().method, print, None, "module:fn"):
        with pytest.raises(TypeError, match="top-level function|node entry"):
            builder().set_node_entry(bad).build()

    def two_args(a, b):
        pass
    two_args.__qualname__ = "two_args"
    with pytest.raises(TypeError, match="exactly one argument"):
        builder().set_node_entry(two_args).build()


def test_timeout_must_be_positive():
    with pytest.raises(ValueError, match="timeout"):
        builder().set_timeout(0).build()


def spec(client_pid):
    return JobSpec(entry, 2, {}, ["x"], ["FLOAT_32"], None, 1,
                   RendezvousInfo("127.0.0.1", 1, "run", 1.0, Security(new_secret())), client_pid,
                   {4: 0, 0: 1})


def test_worker_refuses_to_run_in_the_client_process():
    import os
    with pytest.raises(WorkerError, match="loopback"):
        run_node(spec(os.getpid()), 0, 0, [np.zeros(1, np.float32)])


def test_worker_refuses_a_shard_on_the_wrong_subtask():
    with pytest.raises(WorkerError, match="Rank 1 landed on Flink subtask 0"):
        run_node(spec(-1), 1, 0, [np.zeros(1, np.float32)])
