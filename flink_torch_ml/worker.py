"""What runs inside one Flink Python worker for one PyTorch node: placement checks, rendezvous,
the user's entry function, error reporting and the final barrier.

Free of Flink imports: the Flink operator hands it the rank, subtask index and columns.
"""

import contextlib
import datetime
import os
import pickle
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Union

import numpy as np
import pandas as pd

from .context import NodeContext
from .data_types import DataType
from .errors import FlinkTorchMLError, InvalidDataError
from .orphan_guard import start_orphan_guard, write_stderr
from .rendezvous import RendezvousInfo, connect
from .shard import DataWriter, ShardBuffer, balance_plan

__all__ = ["JobSpec", "WorkerError", "TaskManagerLostError", "run_node", "announce_deployed",
           "columns_from_pandas", "record_error", "run_key", "FEED"]

#: seconds a failing rank waits for a peer's earlier error, to report the root cause
PEER_ERROR_GRACE = 3.0
#: who recorded an error, when it was not a rank but the operator feeding them input
FEED = "feed"


class WorkerError(FlinkTorchMLError, RuntimeError):
    """A PyTorch worker failed; the message names the rank and carries its traceback."""


class TaskManagerLostError(WorkerError):
    """A Flink TaskManager running PyTorch workers died or became unreachable mid-run."""


@dataclass
class JobSpec:
    """Everything a worker needs, shipped inside the Flink job."""

    entry: Callable
    world_size: int
    properties: Dict[str, str]
    input_names: List[str]
    input_types: List[str]
    output_types: Optional[List[str]]
    epochs: int
    rendezvous: RendezvousInfo
    client_pid: int
    key_to_rank: Dict[int, int]

    @property
    def timeout(self) -> float:
        return self.rendezvous.timeout


def columns_from_pandas(series: List[pd.Series], names: List[str],
                        types: List[DataType]) -> List[np.ndarray]:
    """Input columns as numpy: ``[rows]`` scalars, ``[rows, n]`` equal-length arrays (or an
    object array of 1-d arrays when lengths differ). NULLs raise, naming the column."""
    columns = []
    for s, name, data_type in zip(series, names, types):
        nulls = s.isna().to_numpy() if not data_type.is_array else np.fromiter(
            (v is None for v in s), bool, len(s))
        if data_type is not DataType.STRING and nulls.any():
            what = "NULL or NaN" if data_type.is_floating and not data_type.is_array else "NULL"
            raise InvalidDataError(f"Input column {name!r} holds {what} in {int(nulls.sum())} "
                                   f"of {len(s)} rows; {data_type.type_name} needs a value")
        if data_type is DataType.STRING:
            columns.append(s.to_numpy(dtype=object))
        elif data_type.is_array:
            values = [np.asarray(v, dtype=data_type.numpy_dtype) for v in s]
            lengths = {len(v) for v in values}
            if len(lengths) <= 1:
                width = lengths.pop() if lengths else 0
                columns.append(np.stack(values) if values else
                               np.empty((0, width), data_type.numpy_dtype))
            else:
                ragged = np.empty(len(values), dtype=object)
                ragged[:] = values
                columns.append(ragged)
        else:
            columns.append(s.to_numpy(dtype=data_type.numpy_dtype))
    return columns


@contextlib.contextmanager
def managed_process_group(seconds: float):
    """While the entry runs: ``dist.init_process_group`` calls without a timeout get ours (not
    torch's 30 minutes), and destroying the default group is deferred until the entry has
    returned. Freeing a DDP model after its process group was destroyed can deadlock in
    ProcessGroupGloo's destructor, and an entry's locals are freed only after it returns."""
    import torch.distributed as dist

    original_init, original_destroy = dist.init_process_group, dist.destroy_process_group
    deferred = []

    def init_process_group(*args, **kwargs):
        if deferred and dist.is_initialized():  # re-init after a deferred destroy
            original_destroy()
            deferred.clear()
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = datetime.timedelta(seconds=seconds)
        return original_init(*args, **kwargs)

    def destroy_process_group(group=None):
        if group is None:
            deferred.append(True)
            return None
        return original_destroy(group)

    dist.init_process_group, dist.destroy_process_group = init_process_group, \
        destroy_process_group
    try:
        yield
    finally:
        dist.init_process_group, dist.destroy_process_group = original_init, original_destroy
        if dist.is_initialized():  # deferred, or the entry never destroyed it
            original_destroy()


class _Run:
    """The store keys of one attempt of one run."""

    def __init__(self, store, attempt: int, world_size: int, timeout: float):
        self.store, self.attempt = store, attempt
        self.world_size, self.timeout = world_size, timeout

    def key(self, name: str) -> str:
        return run_key(self.attempt, name)

    def wait_for(self, rank: int, key: str, what: str) -> bytes:
        """The value of ``key`` once a peer sets it; fail fast if a peer failed instead."""
        deadline = time.monotonic() + self.timeout
        while not self.store.check([self.key(key)]):
            error = self.peer_error(rank, 0)
            if error:
                raise WorkerError(f"Rank {rank} stopped waiting for {what}: {error}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"Rank {rank} timed out after {self.timeout:.0f} s waiting "
                                   f"for {what}")
            time.sleep(0.02)
        return self.store.get(self.key(key))

    def claim(self, rank: int, subtask: int) -> None:
        pid = os.getpid()
        if self.store.add(self.key(f"claim/{rank}"), 1) != 1:
            raise WorkerError(f"Rank {rank} started twice (second time in subtask {subtask}, "
                              f"pid {pid}): the shards are not placed one per subtask")
        self.store.set(self.key(f"pid/{rank}"), f"{os.uname().nodename}:{pid}")
        claims = [self.key(f"claim/{r}") for r in range(self.world_size)]
        try:
            self.store.wait(claims, datetime.timedelta(seconds=self.timeout))
        except Exception:
            missing = [r for r, k in enumerate(claims) if not self.store.check([k])]
            raise TimeoutError(
                f"Rank {rank} waited {self.timeout:.0f} s for rank(s) {missing} to start. "
                f"Usual causes: fewer free task slots than world_size={self.world_size} (the "
                f"ranks must run at the same time), or a worker that died at start-up") from None
        pids = [self.store.get(self.key(f"pid/{r}")).decode() for r in range(self.world_size)]
        if len(set(pids)) != len(pids):
            raise WorkerError(f"Ranks share a Python process ({pids}): each rank must run in "
                              f"its own process")

    def rebalance(self, rank: int, columns: List[np.ndarray]) -> List[np.ndarray]:
        """Move rows between ranks (through the store) until shard sizes differ by at most
        one: DDP needs the same number of batches on every rank. Every row stays on exactly
        one rank."""
        rows = len(columns[0]) if columns else 0
        self.store.set(self.key(f"count/{rank}"), str(rows))
        counts = [int(self.wait_for(rank, f"count/{r}", f"rank {r}'s row count"))
                  for r in range(self.world_size)]
        moves = balance_plan(counts)
        keep = rows
        for source, target, count in moves:
            if source == rank:
                part = [c[keep - count:keep] for c in columns]
                keep -= count
                self.store.set(self.key(f"move/{source}/{target}"), pickle.dumps(part))
        columns = [c[:keep] for c in columns]
        for source, target, count in moves:
            if target == rank:
                part = pickle.loads(self.wait_for(rank, f"move/{source}/{target}",
                                                  f"{count} rows from rank {source}"))
                columns = [np.concatenate([c, p]) for c, p in zip(columns, part)]
        return columns

    def peer_error(self, rank: int, wait: float) -> Optional[str]:
        """Another rank's recorded error, waiting up to ``wait`` s for one to appear."""
        deadline = time.monotonic() + wait
        while True:
            for r in range(self.world_size):
                if r != rank and self.store.check([self.key(f"error/{r}")]):
                    return f"rank {r}: " + self.store.get(self.key(f"error/{r}")).decode()
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)

    def fail(self, rank: int, text: str, type_name: str = "") -> None:
        record_error(self.store, self.attempt, rank, text, type_name)

    def start_watchdog(self, rank: int, grace: float = 10.0) -> threading.Event:
        """A daemon thread guarding this worker while it runs:
        - when a peer timed out waiting for us, it publishes where the main thread is, so a
          hang is reported with a stack;
        - when the run has failed elsewhere (or the client and its store are gone) and this
          worker is still busy ``grace`` seconds later, it ends the process: a worker stuck in
          user code must not outlive its job."""
        stop = threading.Event()
        main = threading.get_ident()
        store = self.store

        def stack() -> str:
            frame = sys._current_frames().get(main)
            return "".join(traceback.format_stack(frame)[-12:]) if frame else "?"

        def watch():
            reported, doomed_at = False, None
            while not stop.wait(0.5):
                try:
                    if not reported and store.check([self.key("stack_request")]):
                        store.set(self.key(f"stack/{rank}"), stack())
                        reported = True
                    if doomed_at is None and (reported or store.check([self.key("first_error")])):
                        doomed_at = time.monotonic()
                except Exception:  # the client is gone: nobody will collect this run
                    doomed_at = doomed_at or time.monotonic() - grace
                if doomed_at is not None and time.monotonic() - doomed_at > grace \
                        and not stop.is_set():
                    write_stderr(f"flink-torch-ml: rank {rank} is still busy {grace:.0f} s "
                                 f"after its run failed; ending the worker process. It was "
                                 f"at:\n{stack()}")
                    os._exit(70)

        threading.Thread(target=watch, daemon=True, name=f"ftm-watchdog-{rank}").start()
        return stop

    def peer_stacks(self, rank: int, peers) -> str:
        """Ask the given ranks where they are; their answers, or '' if none came."""
        self.store.set(self.key("stack_request"), "1")
        deadline = time.monotonic() + 3
        stacks = {}
        while time.monotonic() < deadline and len(stacks) < len(peers):
            for r in peers:
                if r not in stacks and self.store.check([self.key(f"stack/{r}")]):
                    stacks[r] = self.store.get(self.key(f"stack/{r}")).decode()
            time.sleep(0.1)
        return "".join(f"\n--- rank {r} is at:\n{text}" for r, text in stacks.items())

    def barrier(self, rank: int) -> None:
        """Wait (bounded) until every rank's entry returned; fail fast if a peer failed."""
        self.store.set(self.key(f"finished/{rank}"), "1")
        self.store.add(self.key("done"), 1)
        deadline = time.monotonic() + self.timeout
        while self.store.add(self.key("done"), 0) < self.world_size:
            error = self.peer_error(rank, 0)
            if error:
                raise WorkerError(f"Rank {rank} finished, but {error}")
            if time.monotonic() > deadline:
                done = self.store.add(self.key("done"), 0)
                finished = {r for r in range(self.world_size)
                            if self.store.check([self.key(f"finished/{r}")])}
                waiting = [r for r in range(self.world_size) if r not in finished]
                raise TimeoutError(
                    f"Rank {rank} finished, but only {done} of {self.world_size} ranks finished "
                    f"within {self.timeout:.0f} s after it: rank(s) {waiting} hang or died"
                    f"{self.peer_stacks(rank, waiting)}")
            time.sleep(0.05)


def run_key(attempt: int, name: str) -> str:
    """The store key of ``name`` in one attempt of a run (a restarted job starts afresh)."""
    return f"a{attempt}/{name}"


def record_error(store, attempt: int, who: Union[int, str], text: str,
                 type_name: str = "") -> None:
    """Record an error of a rank (or of the ``FEED``); the client reports the first one."""
    store.set(run_key(attempt, f"error_type/{who}"), type_name)
    store.set(run_key(attempt, f"error/{who}"), text)
    store.compare_set(run_key(attempt, "first_error"), "", str(who))


def announce_deployed(store) -> None:
    """Tell the client this subtask is deployed (called from the operator's open(), before
    any data): the client cancels a run whose W subtasks were not all deployed in time,
    which is how too few free slots on a cluster shows."""
    store.add("deployed", 1)


def run_node(spec: JobSpec, rank: int, subtask: int, attempt: int,
             columns: Union[List[np.ndarray], Callable[[], List[np.ndarray]]]) -> Dict:
    """Run the entry for ``rank`` over its shard (columns, or a function converting them, so
    that bad input is reported like any other worker error); return what the client
    collects."""
    pid = os.getpid()
    if pid == spec.client_pid:
        raise WorkerError(
            "The PyTorch worker runs inside the client process (PyFlink's loopback mode): "
            "import flink_torch_ml before creating the TableEnvironment, or set "
            "os.environ['_python_worker_execution_mode'] = 'process' first")
    if subtask != rank:
        raise WorkerError(f"Rank {rank} landed on Flink subtask {subtask}: the shard keys do not "
                          f"match this job's parallelism; set parallelism.default to the "
                          f"world size ({spec.world_size}) and pin pipeline.max-parallelism")
    start_orphan_guard()  # a killed TaskManager must not leave this process behind
    run = _Run(connect(spec.rendezvous), attempt, spec.world_size, spec.timeout)
    run.claim(rank, subtask)
    stop_watchdog = run.start_watchdog(rank)
    try:
        return _run_claimed(spec, run, rank, subtask, pid, columns)
    finally:
        stop_watchdog.set()


def _run_claimed(spec: JobSpec, run: "_Run", rank: int, subtask: int, pid: int,
                 columns) -> Dict:
    started = time.time()
    with managed_process_group(spec.timeout):  # tears the process group down last
        try:
            buffer = ShardBuffer(spec.timeout)
            buffer.add(run.rebalance(rank, columns() if callable(columns) else columns))
            buffer.finish()
            writer = (DataWriter([DataType.from_name(t) for t in spec.output_types], rank)
                      if spec.output_types is not None else None)
            context = NodeContext(rank, spec.world_size, subtask, dict(spec.properties),
                                  [DataType.from_name(t) for t in spec.input_types], buffer,
                                  spec.epochs, run.store, spec.rendezvous.host, spec.timeout,
                                  writer)
            entry_result = spec.entry(context)
        except BaseException as error:
            # Record the error while this rank's process group is still up: peers blocked in
            # a collective only notice the failure once it goes down, so the root cause is
            # always recorded first.
            text = f"{type(error).__name__}: {error}\n{traceback.format_exc()}"
            run.fail(rank, text, type(error).__name__)
            earlier = run.peer_error(rank, PEER_ERROR_GRACE)
            if earlier:
                raise WorkerError(f"PyTorch worker rank {rank} of {spec.world_size} failed "
                                  f"after {earlier}\n--- rank {rank}'s own error: {text}"
                                  ) from error
            raise WorkerError(f"PyTorch worker rank {rank} of {spec.world_size} failed: "
                              f"{text}") from error
    run.barrier(rank)
    return {"rank": rank, "subtask": subtask, "pid": pid, "rows": buffer.rows,
            "started_at": started, "finished_at": time.time(),
            "seconds": time.time() - started,
            "output": writer.rows if writer is not None else None, "entry_result": entry_result}
