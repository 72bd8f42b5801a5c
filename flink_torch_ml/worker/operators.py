"""The Flink functions of a distributed run, which execute inside Flink's Python workers:

- ``FeedFunction``, a vectorized UDF over the input table: each Arrow batch Flink hands it is
  checked, converted to numpy columns and sent to the next PyTorch worker's feed server;
- ``NodeFunction``, an aggregate over ``GROUP BY shard, TUMBLE(constant rowtime)`` hosting
  one PyTorch worker per shard: it opens at job start (starting the feed server) and runs
  the node when the window fires at the end of input;
- ``ExplodeRows``, which turns a worker's result into the rows it wrote.

Their results cross Flink as JSON, never as pickles.
"""

import json
import os
import threading
import time
from typing import Optional

import numpy as np
import pandas as pd
from pyflink.table import DataTypes
from pyflink.table.udf import AggregateFunction, ScalarFunction, TableFunction

from .._compat import subtask_index
from ..core.rows import TRAINING_ADVICE, Column, check_rows, column_arrays
from ..dataplane.columns import Columns, empty_columns
from ..dataplane.feed import FeedSender, FeedServer
from ..dataplane.protocol import FEED, RunStore, wait_until
from ..dataplane.rendezvous import connect, local_address_towards
from ..errors import WorkerError
from .job_spec import JobSpec
from .metrics import metric_group
from .node import run_node
from .orphan_guard import start_orphan_guard

__all__ = ["FeedFunction", "NodeFunction", "ExplodeRows", "feed_columns"]


def feed_columns(series, columns) -> Columns:
    """One of Flink's batches, checked by the row rule (core.rows) and converted to the
    numpy columns the feed ships."""
    check_rows(series, columns, TRAINING_ADVICE)
    return column_arrays(series, columns)


def _run_store(spec: JobSpec) -> RunStore:
    return RunStore(connect(spec.rendezvous), spec.attempt, spec.world_size, spec.timeout)


class FeedFunction(ScalarFunction):
    """A vectorized UDF over the input table: each Arrow batch is checked, converted to numpy
    columns and sent to the next PyTorch worker (round-robin). Returns -1 per row (filtered
    out before the workers' operator)."""

    def __init__(self, spec: JobSpec):
        self._spec = spec
        self._sender: Optional[FeedSender] = None
        self._run: Optional[RunStore] = None
        self._subtask = 0
        self._columns = [Column(n, t) for n, t in zip(spec.input_names,
                                                       spec.input_data_types())]
        self._fed = self._fed_rate = None  # Flink metrics, set in open()

    def is_deterministic(self) -> bool:
        return False  # it has a side effect: never fold, reorder or drop its calls

    def open(self, function_context) -> None:
        index = subtask_index(function_context)
        self._subtask = index if index is not None else os.getpid()  # where rotation starts
        start_orphan_guard()  # a killed TaskManager must not leave this process behind
        group = metric_group(function_context)
        if group is not None:  # live while the input arrives (training itself is one call)
            self._fed = group.counter("rowsSentToWorkers")
            self._fed_rate = group.meter("rowsSentToWorkersPerSecond", time_span_in_seconds=60)

    def _start(self) -> FeedSender:
        spec = self._spec
        run = self._run = _run_store(spec)

        def lookup(rank: int) -> str:
            wait_until(lambda: run.has(run.keys.feed_address(rank)), spec.timeout,
                       f"PyTorch worker rank {rank} to start receiving data",
                       failed=run.peer_error, who="The feed",
                       hint=f"Fewer free task slots than world_size={spec.world_size}, or the "
                            f"worker died at start-up")
            return run.get_text(run.keys.feed_address(rank))

        def sent(rank: int, rows: int) -> None:
            run.add(run.keys.fed_rows(rank), rows)

        return FeedSender(spec.world_size, self._subtask, spec.timeout,
                          spec.rendezvous.security, lookup, sent, spec.by_content)

    def eval(self, *series: pd.Series) -> pd.Series:
        try:
            if self._sender is None:
                self._sender = self._start()
            self._sender.send(feed_columns(series, self._columns))
            if self._fed is not None:
                self._fed.inc(len(series[0]))
                self._fed_rate.mark_event(len(series[0]))
        except BaseException as error:
            self._record(error)
            raise
        return pd.Series(np.full(len(series[0]), -1, dtype=np.int32))

    def _record(self, error: BaseException) -> None:
        """Record the error like a worker's, so the client reports it rather than Flink's
        wrapping of it (a worker's own earlier error stays the one reported)."""
        try:
            if self._run is None:
                self._run = _run_store(self._spec)
            self._run.record_error(FEED, f"{type(error).__name__}: {error}",
                                   type(error).__name__)
        except Exception:  # the client is gone; Flink still reports the error
            pass

    def close(self) -> None:
        if self._sender is not None:
            self._sender.close()


def _warm_up_torch() -> None:
    """Import what training entries need while the input is still arriving: creating the
    first optimizer imports torch._dynamo, over a second on a small machine."""
    try:
        import torch._dynamo  # noqa: F401
        import torch.distributed  # noqa: F401
        import torch.optim  # noqa: F401
    except Exception:  # only a warm-up: the entry's own import reports any real problem
        pass


class NodeFunction(AggregateFunction):
    """A row-at-a-time UDAF over ``GROUP BY shard, TUMBLE(rowtime)`` hosting one PyTorch
    worker per shard: open() starts the worker's feed server (at job start); the shard's pad
    row, which arrives at once, tells it its rank and it publishes the server's address for
    that rank, so the input streams in while the source runs; the window fires at the end of
    input, when every batch has been delivered, and get_value() runs the node."""

    def __init__(self, spec: JobSpec):
        self._spec = spec
        self._subtask: Optional[int] = None
        self._rank: Optional[int] = None
        self._server: Optional[FeedServer] = None
        self._run: Optional[RunStore] = None
        self._warm_up: Optional[threading.Thread] = None

    def open(self, function_context) -> None:
        spec = self._spec
        self._subtask = subtask_index(function_context)  # None before PyFlink 2.3
        start_orphan_guard()
        run = self._run = _run_store(spec)
        self._server = FeedServer(local_address_towards(spec.rendezvous.host), spec.timeout,
                                  spec.rendezvous.security)
        # Tell the client this subtask is deployed (before any data): the client cancels a
        # run whose W subtasks were not all deployed in time (too few free slots).
        run.add(run.keys.deployed, 1)
        if spec.output_types is None:  # a training run: its entry will create an optimizer
            self._warm_up = threading.Thread(target=_warm_up_torch, daemon=True,
                                             name="ftm-warm-up")
            self._warm_up.start()

    def create_accumulator(self):
        return [-1]

    def get_accumulator_type(self):
        return DataTypes.ARRAY(DataTypes.INT())

    def get_result_type(self):
        return DataTypes.STRING()

    def accumulate(self, accumulator, shard):
        accumulator[0] = shard
        rank = self._spec.key_to_rank[int(shard)]
        if self._rank is None:
            self._rank = rank
            self._run.set(self._run.keys.feed_address(rank), self._server.address)
        elif rank != self._rank:  # the feed would mix two shards into one server
            raise WorkerError(
                f"Shards of ranks {self._rank} and {rank} landed on one Flink subtask: the "
                f"shard keys do not match this job's parallelism; set parallelism.default to "
                f"the world size ({self._spec.world_size}) and pin pipeline.max-parallelism")

    def get_value(self, accumulator):
        received = time.time()
        spec, server, run = self._spec, self._server, self._run
        rank = spec.key_to_rank[int(accumulator[0])]

        def columns():
            expected = run.count(run.keys.fed_rows(rank))
            if expected == 0:  # an empty shard: typed empty columns, shaped by the peers
                return empty_columns(spec.input_data_types())
            return server.columns(expected)

        if self._warm_up is not None:  # no imports in two threads at once (import deadlocks)
            self._warm_up.join(spec.timeout)
        try:
            result = run_node(spec, rank, self._subtask, columns, run.store)
        finally:
            server.close()
        result.update(received_at=received, first_batch_at=server.first_batch_at)
        return json.dumps(result)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


class ExplodeRows(TableFunction):
    """Turns a worker's JSON result into the rows it wrote."""

    def eval(self, payload: str):
        for row in json.loads(payload)["output"] or ():
            yield tuple(row)

