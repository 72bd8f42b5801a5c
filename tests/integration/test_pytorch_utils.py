"""pytorch_utils.train / inference on a real PyFlink mini-cluster: W workers at once, each in
its own process with a disjoint shard, real gloo all-reduce, and every failure mode bounded."""

import json
import os
import re
import signal
import threading
import time

import pytest
import torch
import torch.distributed as dist
from pyflink.table import DataTypes, Row, Schema
from pyflink.table.expressions import col
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from flink_torch_ml import (PyTorchClusterConfig, PyTorchContext, SchemaError, WorkerError,
                            create_table_environment, pytorch_utils)
from flink_torch_ml.client.run import active_runs
from flink_torch_ml._compat import table_columns
from tests.processes import describe_process, python_workers


# ---------------------------------------------------------------- entries (top-level)

class LinearModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(1, 1)

    def forward(self, x):
        return self.linear(x)


def train_entry(context):
    """The DL-on-Flink seed example, plus writing the final parameters for the test."""
    pytorch_context = PyTorchContext(context)
    os.environ['MASTER_ADDR'] = pytorch_context.get_master_ip()
    os.environ['MASTER_PORT'] = str(pytorch_context.get_master_port())
    dist.init_process_group(backend='gloo', world_size=pytorch_context.get_world_size(),
                            rank=pytorch_context.get_rank())
    data_loader = DataLoader(pytorch_context.get_dataset_from_flink(), batch_size=128)
    torch.manual_seed(pytorch_context.get_rank())  # DDP must broadcast rank 0's init
    model = DDP(LinearModel())
    loss_fn = nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for batch, (x, y) in enumerate(data_loader):
        optimizer.zero_grad()
        pred = model(x.unsqueeze(1))
        loss = loss_fn(pred, y.unsqueeze(1))
        loss.backward()
        optimizer.step()
    state = {"weight": model.module.linear.weight.item(), "bias": model.module.linear.bias.item(),
             "rank": pytorch_context.get_rank(), "index": pytorch_context.get_index(),
             "pid": os.getpid()}
    out = pytorch_context.get_property("out_dir")
    with open(os.path.join(out, f"rank-{pytorch_context.get_rank()}.json"), "w") as f:
        json.dump(state, f)
    dist.destroy_process_group()


def count_entry(context):
    """Per epoch: how many rows and which ids this rank saw, all-reduced with gloo."""
    ctx = PyTorchContext(context)
    dist.init_process_group("gloo", init_method=f"tcp://{ctx.get_master_ip()}:"
                            f"{ctx.get_master_port()}", rank=ctx.get_rank(),
                            world_size=ctx.get_world_size())
    seen = []
    rows_per_epoch = None
    for i, (row_id, value) in enumerate(ctx.get_dataset_from_flink()):
        assert row_id.dtype == torch.int64 and row_id.dim() == 0
        assert value.dtype == torch.float64
        seen.append(int(row_id))
    epochs = int(ctx.get_property("epochs"))
    rows_per_epoch = len(seen) // epochs
    per_epoch = [seen[e * rows_per_epoch:(e + 1) * rows_per_epoch] for e in range(epochs)]
    totals = torch.tensor([float(len(seen))], dtype=torch.float64)
    dist.all_reduce(totals)
    with open(os.path.join(ctx.get_property("out_dir"), f"rank-{ctx.get_rank()}.json"),
              "w") as f:
        json.dump({"epochs": per_epoch, "all_reduced_total": totals.item()}, f)
    dist.destroy_process_group()


def echo_entry(context):
    """Inference: write (x, 2x + 1, rank) for every row of the shard."""
    ctx = PyTorchContext(context)
    writer = ctx.get_data_writer_to_flink()
    for (x,) in DataLoader(ctx.get_dataset_from_flink()):
        writer.write(Row(x=x.item(), y=2 * x.item() + 1, rank=ctx.get_rank()))


def failing_entry(context):
    ctx = PyTorchContext(context)
    dist.init_process_group("gloo", init_method=f"tcp://{ctx.get_master_ip()}:"
                            f"{ctx.get_master_port()}", rank=ctx.get_rank(),
                            world_size=ctx.get_world_size())
    if ctx.get_rank() == int(ctx.get_property("bad_rank")):
        raise ValueError(f"boom in rank {ctx.get_rank()}")
    dist.all_reduce(torch.ones(1))  # the healthy rank waits here for the failed one
    dist.barrier()


def hanging_entry(context):
    ctx = PyTorchContext(context)
    if ctx.get_rank() == 1:
        if ctx.get_property("how") == "die":
            os._exit(3)
        time.sleep(3600)
    os.environ['MASTER_ADDR'] = ctx.get_master_ip()
    os.environ['MASTER_PORT'] = str(ctx.get_master_port())
    dist.init_process_group("gloo", world_size=ctx.get_world_size(), rank=ctx.get_rank())
    dist.all_reduce(torch.ones(1))


# ---------------------------------------------------------------- helpers

def linear_table(env, n=4000):
    g = torch.Generator().manual_seed(1)
    xs = (torch.rand(n, generator=g) * 2 - 1).tolist()
    rows = [(x, 2 * x + 1) for x in xs]
    return env.from_elements(rows, DataTypes.ROW([DataTypes.FIELD("x", DataTypes.FLOAT()),
                                                  DataTypes.FIELD("y", DataTypes.FLOAT())]))


def config(entry, world_size, types="FLOAT_32,FLOAT_32", timeout=60, **properties):
    builder = (PyTorchClusterConfig.new_builder().set_property('input_types', types)
               .set_node_entry(entry).set_world_size(world_size).set_timeout(timeout))
    for key, value in properties.items():
        builder.set_property(key, value)
    return builder.build()


def read_ranks(path, world_size):
    return [json.load(open(os.path.join(path, f"rank-{r}.json"))) for r in range(world_size)]


# ---------------------------------------------------------------- semantics

@pytest.mark.parametrize("world_size", [1, 2])
def test_linear_example_learns_with_ddp(stream_env, tmp_path, world_size):
    results = pytorch_utils.train(None, config(train_entry, world_size, out_dir=str(tmp_path)),
                                  linear_table(stream_env), epoch=6)
    assert [r["rank"] for r in results] == list(range(world_size))
    assert sum(r["rows"] for r in results) == 4000
    assert len({r["pid"] for r in results}) == world_size
    states = read_ranks(tmp_path, world_size)
    for state in states:
        assert state["index"] == state["rank"]
        assert state["pid"] != os.getpid()
        assert abs(state["weight"] - 2) < 0.1 and abs(state["bias"] - 1) < 0.1, state
    # DDP all-reduced every step: all ranks end with the same parameters
    assert len({(s["weight"], s["bias"]) for s in states}) == 1


def test_every_row_seen_exactly_once_per_epoch(stream_env, tmp_path):
    n, epochs = 1000, 3
    table = stream_env.from_elements([(i, float(i) / 3) for i in range(n)],
                                     DataTypes.ROW([DataTypes.FIELD("id", DataTypes.BIGINT()),
                                                    DataTypes.FIELD("v", DataTypes.DOUBLE())]))
    cfg = config(count_entry, 2, "INT_64,FLOAT_64", out_dir=str(tmp_path), epochs=epochs)
    results = pytorch_utils.train(None, cfg, table, epoch=epochs)
    ranks = read_ranks(tmp_path, 2)
    assert all(r["all_reduced_total"] == n * epochs for r in ranks)
    for epoch in range(epochs):
        ids = sorted(i for r in ranks for i in r["epochs"][epoch])
        assert ids == list(range(n))  # count and checksum: each row exactly once
    assert sum(r["rows"] for r in results) == n
    assert min(r["rows"] for r in results) > 0  # both shards got data


def test_a_table_of_literal_rows_reaches_the_workers(stream_env, tmp_path):
    """SQL VALUES (Java's fromValues): the planner folds literal columns into the feed's
    arguments, which Flink's Arrow writer cannot take; every row still reaches one worker."""
    values = ", ".join(f"(CAST({i} AS BIGINT), CAST({i / 3} AS DOUBLE))" for i in range(40))
    table = stream_env.sql_query(f"SELECT * FROM (VALUES {values}) AS t(id, v)")
    cfg = config(count_entry, 2, "INT_64,FLOAT_64", out_dir=str(tmp_path), epochs=1)
    results = pytorch_utils.train(None, cfg, table)
    ranks = read_ranks(tmp_path, 2)
    assert sorted(i for r in ranks for i in r["epochs"][0]) == list(range(40))
    assert sum(r["rows"] for r in results) == 40


def test_input_reaches_the_workers_while_the_source_still_runs(stream_env, tmp_path):
    """The shard streams in: with a source throttled to last about 6 s, each worker holds its
    first batch long before the end of input, and still every row arrives exactly once."""
    n = 120_000
    stream_env.execute_sql("DROP TEMPORARY TABLE IF EXISTS slow_src")
    stream_env.execute_sql(f"""CREATE TEMPORARY TABLE slow_src (id BIGINT, v DOUBLE) WITH (
        'connector' = 'datagen', 'rows-per-second' = '20000', 'fields.id.kind' = 'sequence',
        'fields.id.start' = '0', 'fields.id.end' = '{n - 1}')""")
    cfg = config(count_entry, 2, "INT_64,FLOAT_64", out_dir=str(tmp_path), epochs=1)
    results = pytorch_utils.train(None, cfg, stream_env.from_path("slow_src"))
    ranks = read_ranks(tmp_path, 2)
    assert sorted(i for r in ranks for i in r["epochs"][0]) == list(range(n))
    for r in results:  # received_at: the end of input reached the worker
        assert r["rows"] > 0 and r["first_batch_at"] < r["received_at"] - 1.0, r


def test_statement_set_runs_lazily(stream_env, tmp_path):
    statement_set = stream_env.create_statement_set()
    assert pytorch_utils.train(statement_set, config(train_entry, 2, out_dir=str(tmp_path)),
                               linear_table(stream_env, 500), epoch=2) is None
    assert os.listdir(tmp_path) == []  # nothing ran yet
    statement_set.execute().wait()
    assert len(read_ranks(tmp_path, 2)) == 2


def test_inference_writes_back_exactly_the_expected_rows(stream_env):
    xs = [float(i) / 8 for i in range(300)]
    table = stream_env.from_elements([(x,) for x in xs],
                                     DataTypes.ROW([DataTypes.FIELD("x", DataTypes.DOUBLE())]))
    cfg = (PyTorchClusterConfig.new_builder().set_property("input_types", "FLOAT_64")
           .set_property("output_types", "FLOAT_64,FLOAT_64,INT_32")
           .set_node_entry(echo_entry).set_world_size(2).set_timeout(60).build())
    schema = (Schema.new_builder().column("x", DataTypes.DOUBLE())
              .column("y", DataTypes.DOUBLE()).column("rank", DataTypes.INT()).build())
    out = pytorch_utils.inference(stream_env.create_statement_set(), table, cfg, schema)
    assert table_columns(out)[0] == ["x", "y", "rank"]
    frame = out.to_pandas()
    assert sorted(frame["x"]) == sorted(xs)
    assert (frame["y"] == 2 * frame["x"] + 1).all()
    assert set(frame["rank"]) == {0, 1}


def test_empty_table_runs_every_rank_on_an_empty_shard(stream_env, tmp_path):
    table = linear_table(stream_env, 10).filter(col("x") < -5)
    results = pytorch_utils.train(None, config(count_entry, 2, out_dir=str(tmp_path), epochs=1),
                                  table)
    assert [r["rows"] for r in results] == [0, 0]


# ---------------------------------------------------------------- failures

def test_worker_that_raises_fails_the_run_naming_rank_and_error(stream_env):
    start = time.monotonic()
    with pytest.raises(WorkerError) as raised:
        pytorch_utils.train(None, config(failing_entry, 2, bad_rank=1),
                            linear_table(stream_env, 200))
    assert time.monotonic() - start < 60
    message = str(raised.value)
    assert "rank 1 of 2 failed" in message
    assert "ValueError: boom in rank 1" in message
    assert "failing_entry" in message  # the traceback


@pytest.mark.parametrize("how", ["hang", "die"])
def test_worker_that_hangs_or_dies_makes_others_time_out(stream_env, how):
    before = set(python_workers())  # workers of other tests' jobs may still be ending
    start = time.monotonic()
    with pytest.raises(Exception) as raised:
        pytorch_utils.train(None, config(hanging_entry, 2, timeout=10, how=how),
                            linear_table(stream_env, 200))
    elapsed = time.monotonic() - start
    assert elapsed < 60, elapsed
    assert isinstance(raised.value, WorkerError)
    if how == "hang":
        assert "rank 0" in str(raised.value)
    else:  # rank 1's process ended: named by rank 0's timeout or by its own death
        assert re.search(r"rank\(s\) \[1\]|rank 1\b", str(raised.value)), raised.value
    # nothing is left running: the stuck worker ends itself once its run has failed
    assert_no_worker_left(before)


def test_worker_killed_while_its_input_arrives_is_named(stream_env, tmp_path):
    """kill -9 rank 1's Python process once it has received data, while the source still
    runs: the run fails fast with a WorkerError naming rank 1, and nothing is left behind."""
    n = 200_000  # 10 s of input at 20,000 rows/s
    stream_env.execute_sql("DROP TEMPORARY TABLE IF EXISTS slow_src2")
    stream_env.execute_sql(f"""CREATE TEMPORARY TABLE slow_src2 (id BIGINT, v DOUBLE) WITH (
        'connector' = 'datagen', 'rows-per-second' = '20000', 'fields.id.kind' = 'sequence',
        'fields.id.start' = '0', 'fields.id.end' = '{n - 1}')""")
    outcome = {}

    def run():
        try:
            outcome["results"] = pytorch_utils.train(
                None, config(count_entry, 2, "INT_64,FLOAT_64", timeout=30,
                             out_dir=str(tmp_path), epochs=1), stream_env.from_path("slow_src2"))
        except Exception as error:  # noqa: BLE001 - inspected below
            outcome["error"] = error

    earlier = active_runs()  # lazy runs of other tests may still be listed
    before = set(python_workers())
    runner = threading.Thread(target=run)
    runner.start()
    deadline = time.monotonic() + 60
    while not [r for r in active_runs() if r not in earlier] and time.monotonic() < deadline:
        time.sleep(0.05)
    store = [r for r in active_runs() if r not in earlier][-1].run_store()
    while not store.has(store.keys.fed_rows(1)) and time.monotonic() < deadline:
        time.sleep(0.05)  # rank 1 has acknowledged data
    port = int(store.get_text(store.keys.feed_address(1)).rsplit(":", 1)[1])
    victim = pid_listening_on(port)
    assert victim is not None and victim != os.getpid()
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    runner.join(90)
    assert not runner.is_alive()
    assert time.monotonic() - killed < 30
    error = outcome.get("error")
    assert isinstance(error, WorkerError), outcome
    assert re.search(r"rank 1 at 127\.0\.0\.1:\d+|rank\(s\) \[1\]", str(error)), error
    assert_no_worker_left(before)


def pid_listening_on(port):
    """The pid of the process with a TCP socket listening on ``port`` (IPv4), from /proc."""
    sockets = set()
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                sockets.add(f"socket:[{fields[9]}]")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in sockets
                   for fd in os.listdir(f"/proc/{pid}/fd")):
                return int(pid)
        except OSError:
            continue
    return None


def assert_no_worker_left(before, wait: float = 30.0):
    """Every Python worker started since ``before`` (a set of pids) ends within ``wait`` s."""
    deadline = time.monotonic() + wait
    while set(python_workers()) - before and time.monotonic() < deadline:
        time.sleep(1)
    left = sorted(set(python_workers()) - before)
    assert left == [], "\n".join(describe_process(p) for p in left)


def test_fewer_slots_than_world_size_is_a_clear_error(tmp_path):
    small = create_table_environment("streaming", parallelism=2,
                                     config={"taskmanager.numberOfTaskSlots": "1"})
    with pytest.raises(ValueError, match="taskmanager.numberOfTaskSlots=1"):
        pytorch_utils.train(None, config(train_entry, 2, out_dir=str(tmp_path)),
                            linear_table(small, 10))


# ---------------------------------------------------------------- bad config

def test_unreachable_rendezvous_host_from_flink_config_is_a_clear_error(stream_env):
    """The host comes from the Flink option; workers that cannot reach it fail at deployment,
    naming the address, within the timeout (192.0.2.1 is TEST-NET-1: never routed)."""
    conf = stream_env.get_config()
    conf.set("flink_torch_ml.rendezvous.host", "192.0.2.1")
    conf.set("flink_torch_ml.rendezvous.bind", "127.0.0.1")
    started = time.time()
    try:
        with pytest.raises(WorkerError, match="192.0.2.1"):
            pytorch_utils.train(None, config(count_entry, 2, timeout=8, out_dir="/nonexistent",
                                             epochs=1), linear_table(stream_env, 20))
    finally:
        conf.set("flink_torch_ml.rendezvous.host", "")
        conf.set("flink_torch_ml.rendezvous.bind", "")
    assert time.time() - started < 60


def test_input_types_must_match_the_table(stream_env):
    table = linear_table(stream_env, 10)
    with pytest.raises(SchemaError, match="names 1 types .* has 2 columns"):
        pytorch_utils.train(None, config(train_entry, 2, "FLOAT_32"), table)
    with pytest.raises(SchemaError, match="column 'y' is FLOAT_64, but the table has FLOAT_32"):
        pytorch_utils.train(None, config(train_entry, 2, "FLOAT_32,FLOAT_64"), table)


def test_updating_table_is_refused_before_submission(stream_env):
    t = stream_env.from_elements([(i % 3, float(i)) for i in range(30)], ["k", "v"])
    updating = t.group_by(col("k")).select(col("v").avg.alias("a"), col("v").sum.alias("b"))
    with pytest.raises(SchemaError, match="updating table .* insert-only"):
        pytorch_utils.train(None, config(train_entry, 1, types="FLOAT_64,FLOAT_64"), updating)


def test_batch_mode_environment_is_refused(batch_env):
    table = linear_table(batch_env, 10)
    with pytest.raises(ValueError, match="streaming mode"):
        pytorch_utils.train(None, config(train_entry, 1), table)


def test_inference_needs_output_types(stream_env):
    with pytest.raises(SchemaError, match="output_types"):
        pytorch_utils.inference(None, linear_table(stream_env, 10), config(echo_entry, 1))
