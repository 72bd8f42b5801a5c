"""Online training inside a Flink job: one subtask of a keyed process function per rank, alive
as long as the job, emitting one model-version row per update. Runs in Flink's Python workers;
the protocol and the updates themselves are ``core/online.py`` (through the training engine).

Each element is a row for this rank's buffer (or a pad row that checks placement); a heartbeat
timer and, for windows, event-time timers make the rank sync with the others; the end of a
bounded input is the final watermark's timer. Rank 0 writes version, weights and optimizer
state to Flink keyed state after each update, so a checkpoint carries them and a restarted
job continues from them (versions keep rising).
"""

import datetime
import json
import os
import time
import traceback
from typing import Any

import torch
from pyflink.common import Row, Types
from pyflink.datastream import KeyedProcessFunction
from pyflink.datastream.state import ValueStateDescriptor

from ..core.distributed import abort_process_group, lost_peer
from ..core.online import OnlineLearner, OnlineSpec
from ..dataplane.protocol import RunStore
from ..dataplane.rendezvous import connect
from ..dataplane.store import torch_store
from ..errors import WorkerError
from .metrics import metric_group
from .orphan_guard import start_orphan_guard

__all__ = ["OnlineTrainer", "VERSION_FIELDS", "END_OF_INPUT"]

#: the model-data row's fields after the version column
VERSION_FIELDS = ("versionTime", "format", "model", "spec", "rowsTrained", "loss")
#: the event-time timer that fires when a bounded input ends (Flink's final watermark)
END_OF_INPUT = (1 << 63) - 1


class OnlineTrainer(KeyedProcessFunction):
    """A rank of online training: elements are ``(rank marker, features..., label)``
    rows (the marker is the rank of a pad row, -1 for input rows)."""

    def __init__(self, spec: OnlineSpec):
        self._spec = spec

    def open(self, runtime_context) -> None:
        import torch.distributed as dist

        start_orphan_guard()
        spec = self._spec
        if os.getpid() == spec.client_pid:
            raise WorkerError(
                "An online training rank runs inside the client process (PyFlink's loopback "
                "mode), where the ranks cannot run in parallel: the environment variable "
                "_python_worker_execution_mode is not 'process'")
        self._rank = runtime_context.get_index_of_this_subtask()
        self._attempt = runtime_context.get_attempt_number()
        if runtime_context.get_number_of_parallel_subtasks() != spec.world_size:
            raise WorkerError(f"The online trainer runs on "
                              f"{runtime_context.get_number_of_parallel_subtasks()} "
                              f"subtasks, not worker_num={spec.world_size}")
        threads = spec.num_threads or max(1, (os.cpu_count() or 1) // spec.world_size)
        torch.set_num_threads(threads)
        bytes_type = Types.PRIMITIVE_ARRAY(Types.BYTE())
        self._version_state = runtime_context.get_state(
            ValueStateDescriptor("ftm_version", Types.LONG()))
        self._weights_state = runtime_context.get_state(
            ValueStateDescriptor("ftm_weights", bytes_type))
        self._optimizer_state = runtime_context.get_state(
            ValueStateDescriptor("ftm_optimizer", bytes_type))
        self._heartbeat_state = runtime_context.get_state(
            ValueStateDescriptor("ftm_heartbeat", Types.LONG()))
        self._learner = OnlineLearner(spec, self._rank)
        self._started = False
        self._rows_metric: Any = None  # Flink counter and meter, set together when live
        self._rate_metric: Any = None
        group = metric_group(runtime_context)
        if group is not None:  # live: a version leaves at each (100 ms) bundle's end
            learner = self._learner
            self._rows_metric = group.counter("rowsTrained")
            self._rate_metric = group.meter("rowsTrainedPerSecond", time_span_in_seconds=60)
            group.gauge("modelVersion", lambda: learner.version)
            group.gauge("rowsBuffered", lambda: len(learner.buffer))
            group.gauge("rowsLate", lambda: learner.rows_late)  # window mode
            # Flink's Python gauges carry integers: the loss times 10^6
            group.gauge("lastUpdateLossX1e6", lambda: 0 if learner.last_loss !=
                        learner.last_loss else int(round(learner.last_loss * 1e6)))
        self._run = RunStore(connect(spec.rendezvous), 1000 + self._attempt,
                             spec.world_size, spec.timeout)
        try:
            dist.init_process_group(
                "gloo", store=torch_store(self._run.store, f"online/{self._attempt}/pg/"),
                rank=self._rank, world_size=spec.world_size,
                timeout=datetime.timedelta(seconds=spec.timeout))
        except Exception as error:
            raise self._failure(error) from error

    def close(self) -> None:
        abort_process_group()

    # -------------------------------------------------------------- entry points
    def process_element(self, value, ctx):
        try:
            yield from self._start(ctx)
            marker = value[0]
            if marker is not None and marker >= 0:  # a pad row: placement check
                if marker != self._rank:
                    raise WorkerError(f"The pad row of rank {marker} reached subtask "
                                      f"{self._rank}: the shard keys do not match this "
                                      f"job's max parallelism")
                return
            n = len(self._spec.feature_cols)
            if self._learner.finished:
                return
            timestamp = ctx.timestamp()
            if self._learner.add(tuple(value[1:1 + n]), value[1 + n], timestamp):
                yield from self._sync(False, ctx)
            elif self._spec.window_ms is not None and self._learner.buffer and \
                    self._learner.buffer[-1][2] == timestamp:  # buffered, not late
                end = self._learner.window_start(timestamp) + self._spec.window_ms - 1
                ctx.timer_service().register_event_time_timer(end)  # Flink dedups timers
        except Exception as error:
            raise self._failure(error) from error

    def on_timer(self, timestamp, ctx):
        from pyflink.datastream import TimeDomain

        try:
            yield from self._start(ctx)
            if timestamp == END_OF_INPUT:
                while not self._learner.finished:
                    yield from self._sync(True, ctx)
                self._run.add(self._run.keys.online_ended, 1)  # the store may close
                return
            if self._learner.finished:
                return
            if ctx.time_domain() == TimeDomain.EVENT_TIME:  # a window's end passed
                yield from self._sync(False, ctx)
                return
            if timestamp != self._heartbeat_state.value():
                return  # a heartbeat chain superseded by a newer one
            yield from self._sync(False, ctx)
            self._arm_heartbeat(ctx)
        except Exception as error:
            raise self._failure(error) from error

    # -------------------------------------------------------------- helpers
    def _start(self, ctx):
        """On the first call after (re)start: restore rank 0's state, share it, arm the
        heartbeat and end-of-input timers; a warm start publishes version 0."""
        if self._started:
            return
        self._started = True
        restored = None
        if self._rank == 0 and self._version_state.value() is not None:
            restored = (int(self._version_state.value()),
                        bytes(self._weights_state.value()),
                        bytes(self._optimizer_state.value()))
        self._learner.start(restored)
        if self._heartbeat_state.value() is None:  # else the checkpointed timer still runs
            self._arm_heartbeat(ctx)
        ctx.timer_service().register_event_time_timer(END_OF_INPUT)
        if self._rank == 0 and restored is None and self._spec.emit_initial:
            yield self._version_row(0, 0, float("nan"), int(time.time() * 1000))

    def _arm_heartbeat(self, ctx) -> None:
        """One heartbeat timer per rank: its time is kept in state, so after a restart the
        restored timer goes on and no second chain starts."""
        service = ctx.timer_service()
        at = service.current_processing_time() + self._spec.heartbeat_ms
        self._heartbeat_state.update(at)
        service.register_processing_time_timer(at)

    def _sync(self, done: bool, ctx):
        before = self._learner.rows_trained
        watermark = ctx.timer_service().current_watermark() \
            if self._spec.window_ms is not None else None
        for update in self._learner.sync(done, watermark):
            if self._rank == 0:
                yield self._version_row(self._learner.version, update.rows, update.loss,
                                        update.time_ms)
        if self._rows_metric is not None and self._learner.rows_trained > before:
            self._rows_metric.inc(self._learner.rows_trained - before)
            self._rate_metric.mark_event(self._learner.rows_trained - before)

    def _version_row(self, version: int, rows: int, loss: float, time_ms: int):
        """Rank 0: the version's row, after writing its state to Flink's keyed state."""
        learner = self._learner
        weights, optimizer = learner.state_bytes()
        self._version_state.update(version)
        self._weights_state.update(weights)
        self._optimizer_state.update(optimizer)
        return Row(version, time_ms, "torchscript", learner.model_bytes(),
                   json.dumps(self._spec.model_spec), rows, loss)

    def _failure(self, error: BaseException) -> BaseException:
        """The error the job fails with: names the rank, and the root cause when a
        peer failed first (recorded in the run's store)."""
        if isinstance(error, WorkerError) and str(error).startswith("Online training"):
            return error
        text = f"{type(error).__name__}: {error}\n{traceback.format_exc()}"
        world = self._spec.world_size
        try:
            self._run.record_error(self._rank, text, type(error).__name__)
            earlier = self._run.peer_error(self._rank) if lost_peer(str(error)) else None
        except Exception:  # the store is gone: report our own error
            earlier = None
        abort_process_group()  # peers blocked in a collective fail now, not at the timeout
        if earlier:
            return WorkerError(f"Online training rank {self._rank} of {world} stopped: "
                               f"{earlier}")
        return WorkerError(f"Online training rank {self._rank} of {world} failed: {text}")

