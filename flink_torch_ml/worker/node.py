"""What runs inside one Flink Python worker for one PyTorch node: placement checks, shard
balancing, the user's entry function, error reporting, a watchdog and the final barrier.

Free of Flink imports: the Flink operator (``operators.py``) hands it the rank, the subtask
index and a function returning the shard's columns.
"""

import json
import os
import sys
import threading
import time
import traceback
from typing import Callable, Dict, List, Optional, Union

from .._defaults import ORPHANED_WORKER_GRACE, PEER_ERROR_GRACE
from ..core.distributed import lost_peer, run_process_group_settings
from ..dataplane.columns import Columns, column_shapes, concat_columns, conform_empty, \
    decode_columns, encode_columns, sort_by_content
from ..dataplane.protocol import RunStore, wait_until
from ..dataplane.rendezvous import connect
from ..dataplane.store import StoreClient, torch_store
from ..errors import WorkerError
from .context import NodeContext
from .job_spec import JobSpec
from .orphan_guard import start_orphan_guard, write_stderr
from .shard import DataWriter, Shard, balance_plan

__all__ = ["WorkerRun", "run_node"]


class WorkerRun:
    """One rank's side of the run's protocol: claim, balance, watch, finish."""

    def __init__(self, run: RunStore, rank: int):
        self.run, self.rank = run, rank
        self.keys = run.keys

    def claim(self, subtask: int) -> None:
        """Claim this rank (once), then wait for every rank to claim its own, each in its
        own process."""
        run, rank, pid = self.run, self.rank, os.getpid()
        if run.add(self.keys.claim(rank), 1) != 1:
            raise WorkerError(f"Rank {rank} started twice (second time in subtask {subtask}, "
                              f"pid {pid}): the shards are not placed one per subtask")
        run.set(self.keys.process(rank), f"{os.uname().nodename}:{pid}")
        run.wait_for_ranks(self.keys.claim, "every rank to start", rank)
        pids = [run.get_text(self.keys.process(r)) for r in range(run.world_size)]
        if len(set(pids)) != len(pids):
            raise WorkerError(f"Ranks share a Python process ({pids}): each rank must run in "
                              f"its own process")

    def rebalance(self, columns: Columns) -> Columns:
        """Move rows between ranks (through the store, as Arrow IPC) until shard sizes differ
        by at most one: DDP needs the same number of batches on every rank. Every row stays
        on exactly one rank; an empty shard's columns take the shapes its peers report."""
        run, rank = self.run, self.rank
        rows = len(columns[0]) if columns else 0
        run.set_json(self.keys.shard_info(rank), {"rows": rows,
                                                   "shapes": column_shapes(columns)})
        infos = []
        for r in range(run.world_size):
            run.wait_for(self.keys.shard_info(r), f"rank {r}'s row count", rank)
            infos.append(run.get_json(self.keys.shard_info(r)))
        shapes = [next((info["shapes"][i] for info in infos
                        if info["shapes"] and info["shapes"][i] is not None), None)
                  for i in range(len(columns))]
        columns = conform_empty(columns, shapes)
        moves = balance_plan([int(info["rows"]) for info in infos])
        keep = rows
        for source, target, count in moves:
            if source == rank:
                run.set(self.keys.move(source, target),
                        encode_columns([c[keep - count:keep] for c in columns]).to_pybytes())
                keep -= count
        parts = [[c[:keep] for c in columns]]
        for source, target, count in moves:
            if target == rank:
                payload = run.wait_for(self.keys.move(source, target),
                                       f"{count} rows from rank {source}", rank)
                parts.append(decode_columns(payload))
        return concat_columns(parts) if len(parts) > 1 else parts[0]

    def fail(self, text: str, type_name: str = "") -> None:
        self.run.record_error(self.rank, text, type_name)

    def peer_error(self, wait: float) -> Optional[str]:
        """Another rank's recorded error, waiting up to ``wait`` s for one to appear."""
        try:
            return wait_until(lambda: self.run.peer_error(self.rank), wait, "a peer's error")
        except TimeoutError:
            return None

    def start_watchdog(self, grace: float = ORPHANED_WORKER_GRACE) -> threading.Event:
        """A daemon thread guarding this worker while it runs:
        - when a peer timed out waiting for us, it publishes where the main thread is, so a
          hang is reported with a stack;
        - when the run has failed elsewhere (or the client and its store are gone) and this
          worker is still busy ``grace`` seconds later, it ends the process: a worker stuck in
          user code must not outlive its job."""
        stop = threading.Event()
        main = threading.get_ident()
        run, keys, rank = self.run, self.keys, self.rank

        def stack() -> str:
            frame = sys._current_frames().get(main)
            return "".join(traceback.format_stack(frame)[-12:]) if frame else "?"

        def watch():
            reported, doomed_at = False, None
            while not stop.wait(0.5):
                try:
                    if not reported and run.has(keys.stack_request):
                        run.set(keys.stack(rank), stack())
                        reported = True
                    if doomed_at is None and (reported or run.has(keys.first_error)):
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

    def peer_stacks(self, peers: List[int]) -> str:
        """Ask the given ranks where they are; their answers, or '' if none came."""
        run = self.run
        run.set(self.keys.stack_request, "1")
        try:
            run.wait_for_ranks(self.keys.stack, "peer stacks", ranks=peers, timeout=3.0)
        except TimeoutError:
            pass
        stacks = {r: run.get_text(self.keys.stack(r)) for r in peers
                  if run.has(self.keys.stack(r))}
        return "".join(f"\n--- rank {r} is at:\n{text}" for r, text in stacks.items())

    def barrier(self) -> None:
        """Wait (bounded) until every rank's entry returned; fail fast if a peer failed."""
        run, rank = self.run, self.rank
        run.set(self.keys.finished(rank), "1")
        run.add(self.keys.done, 1)
        try:
            wait_until(lambda: run.count(self.keys.done) >= run.world_size, run.timeout,
                       "the other ranks to finish", failed=lambda: run.peer_error(rank),
                       who=f"Rank {rank} finished, but it")
        except TimeoutError:
            waiting = [r for r in range(run.world_size) if not run.has(self.keys.finished(r))]
            raise WorkerError(
                f"Rank {rank} finished, but only {run.world_size - len(waiting)} of "
                f"{run.world_size} ranks finished within {run.timeout:.0f} s after it: "
                f"rank(s) {waiting} hang or died{self.peer_stacks(waiting)}") from None
        run.add(self.keys.exited, 1)


def run_node(spec: JobSpec, rank: int, subtask: Optional[int],
             columns: Union[Columns, Callable[[], Columns]],
             store: Optional[StoreClient] = None) -> Dict:
    """Run the entry for ``rank`` over its shard (columns, or a function returning them, so
    that bad input is reported like any other worker error); return the JSON-able summary
    the client collects. ``subtask`` is None where PyFlink does not tell it (before 2.3):
    then the rank stands for it, and the shard-key check in the operator and the claims
    below keep the one-rank-per-subtask guarantee."""
    pid = os.getpid()
    if pid == spec.client_pid:
        raise WorkerError(
            "The PyTorch worker runs inside the client process (PyFlink's loopback mode): "
            "the environment still has python.loopback-server.address set; the library's "
            "jobs remove it (client.job.use_process_workers), so another job's settings put "
            "it back, or set os.environ['_python_worker_execution_mode'] = 'process' before "
            "creating the environment")
    if subtask is None:
        subtask = rank
    elif subtask != rank:
        raise WorkerError(f"Rank {rank} landed on Flink subtask {subtask}: the shard keys do not "
                          f"match this job's parallelism; set parallelism.default to the "
                          f"world size ({spec.world_size}) and pin pipeline.max-parallelism")
    start_orphan_guard()  # a killed TaskManager must not leave this process behind
    run = RunStore(store or connect(spec.rendezvous), spec.attempt, spec.world_size,
                   spec.timeout)
    worker = WorkerRun(run, rank)
    worker.claim(subtask)
    stop_watchdog = worker.start_watchdog()
    try:
        return _run_claimed(spec, worker, subtask, pid, columns)
    finally:
        stop_watchdog.set()


def _run_claimed(spec: JobSpec, worker: WorkerRun, subtask: int, pid: int, columns) -> Dict:
    started = time.time()
    run, rank = worker.run, worker.rank
    context: Optional[NodeContext] = None

    def store_factory(n: int):
        return torch_store(run.store, f"{run.keys.process_group_prefix}{n}/")

    with run_process_group_settings(spec.timeout, store_factory,
                                    lambda: context.master if context else None):
        try:
            received = columns() if callable(columns) else columns
            received_rows = len(received[0]) if received else 0
            if spec.by_content:  # the same order whatever the arrival order
                received = sort_by_content(received)
            shard = Shard(worker.rebalance(received))
            del received
            output_types = spec.output_data_types()
            writer = DataWriter(output_types, rank) if output_types is not None else None
            context = NodeContext(rank, spec.world_size, subtask, dict(spec.properties),
                                  spec.input_data_types(), shard, run, spec.rendezvous.host,
                                  spec.epochs, writer)
            entry_result = spec.entry(context)
        except BaseException as error:
            # Record the error while this rank's process group is still up: peers blocked in
            # a collective only notice the failure once it goes down, so the root cause is
            # always recorded first.
            text = f"{type(error).__name__}: {error}\n{traceback.format_exc()}"
            # a collective failing because a peer vanished: the peer was lost, not this rank
            worker.fail(text, "WorkerLostError" if lost_peer(str(error))
                        else type(error).__name__)
            earlier = worker.peer_error(PEER_ERROR_GRACE)
            if earlier:
                raise WorkerError(f"PyTorch worker rank {rank} of {spec.world_size} failed "
                                  f"after {earlier}\n--- rank {rank}'s own error: {text}"
                                  ) from error
            raise WorkerError(f"PyTorch worker rank {rank} of {spec.world_size} failed: "
                              f"{text}") from error
    worker.barrier()
    finished = time.time()
    return {"rank": rank, "subtask": subtask, "pid": pid, "rows": shard.rows,
            "received_rows": received_rows,
            "started_at": started, "finished_at": finished, "seconds": finished - started,
            "output": writer.rows if writer is not None else None,
            "entry_result": _json_or_none(entry_result)}


def _json_or_none(value):
    """The entry's return value if JSON can carry it to the client, else None."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return None
