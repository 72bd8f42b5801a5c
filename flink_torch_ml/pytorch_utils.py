"""The low-level API of DL-on-Flink: run a user's node entry on W PyTorch workers inside Flink.

``train(statement_set, config, table, epoch)`` adds the training job to a StatementSet (or runs
it at once without one); ``inference(statement_set, table, config, output_schema)`` returns
the table of rows the workers write. See ``PyTorchContext`` for what an entry function gets.
"""

import contextlib
import os
import pickle
import re
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Union

from pyflink.table import DataTypes, Schema, StatementSet, Table, TableDescriptor
from pyflink.table.expressions import col

from .cluster_config import PyTorchClusterConfig
from .data_types import DataType
from .errors import SchemaError
from .feed import LivenessWatch
from .flink_job import (_is_local, check_environment, check_input_types, explode_rows_udtf,
                        node_results_table, shard_keys)
from .rendezvous import RendezvousServer
from .worker import FEED, JobSpec, TaskManagerLostError, WorkerError, run_key

__all__ = ["train", "inference"]

# Rendezvous servers of submitted or pending runs: they must outlive the call that created
# them, until the job that uses them has run (a StatementSet executes later).
_SERVERS: List[RendezvousServer] = []


def train(statement_set: Optional[StatementSet], config: PyTorchClusterConfig, table: Table,
          epoch: int = 1) -> Optional[List[Dict[str, Any]]]:
    """Run ``config``'s node entry on ``world_size`` workers, each reading a disjoint shard of
    ``table`` (``epoch`` times over).

    With a StatementSet the job is added to it and runs at ``statement_set.execute()``;
    with ``statement_set=None`` it runs now and one summary per rank is returned
    (``rank``, ``rows``, ``pid``, ``seconds``). A failing worker raises ``WorkerError`` naming
    the rank, with its traceback.
    """
    run = _Run.from_config(table, config, epoch, output_types=None)
    if statement_set is not None:
        _check_statement_set(statement_set)
        sink = (TableDescriptor.for_connector("blackhole")
                .schema(Schema.new_builder().column("shard", DataTypes.INT())
                        .column("node_result", DataTypes.BYTES()).build()).build())
        statement_set.add_insert(sink, run.results)
        return None
    return run.collect()


def inference(statement_set: Optional[StatementSet], table: Table,
              config: PyTorchClusterConfig,
              output_schema: Union[Schema, Sequence[str], None] = None) -> Table:
    """A table of the rows the workers write with ``get_data_writer_to_flink().write(row)``.

    ``output_types`` (a config property) gives the column types; ``output_schema`` the column
    names (a ``Schema`` or a list of names; default ``f0, f1, ...``). The job runs when the
    returned table is executed or inserted (e.g. through ``statement_set``)."""
    if statement_set is not None:
        _check_statement_set(statement_set)
    output_types = config.get_output_types()
    if output_types is None:
        raise SchemaError("inference needs the 'output_types' property, e.g. "
                          "set_property('output_types', 'FLOAT_32,FLOAT_32')")
    names = _output_names(output_schema, len(output_types))
    run = _Run.from_config(table, config, 1, output_types=output_types)
    explode = explode_rows_udtf(output_types)
    return run.results.join_lateral(explode(col("node_result")).alias(*names)).select(
        *[col(n) for n in names])


class _Run:
    """Validates a run, starts its rendezvous and builds its job (no execution)."""

    def __init__(self, table: Table, entry, world_size: int, properties: Dict[str, str],
                 timeout: float, epochs: int = 1, output_types: Optional[List[DataType]] = None,
                 input_types: Optional[List[DataType]] = None,
                 rendezvous_host: Optional[str] = None, rendezvous_bind: Optional[str] = None,
                 ship_by_value: Sequence[Any] = ()):
        if not isinstance(table, Table):
            raise TypeError(f"table must be a pyflink Table, got {type(table).__name__}")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epoch must be a positive int, got {epochs!r}")
        t_env = table._t_env
        names, types = check_input_types(table, input_types)
        conf = t_env.get_config()
        self._previous_parallelism = conf.get("parallelism.default", None)
        check_environment(t_env, world_size, timeout)
        host = (rendezvous_host or conf.get(PyTorchClusterConfig.RENDEZVOUS_HOST, None)
                or os.environ.get("FLINK_TORCH_ML_RENDEZVOUS_HOST") or _default_host(t_env))
        bind = (rendezvous_bind or conf.get(PyTorchClusterConfig.RENDEZVOUS_BIND, None)
                or os.environ.get("FLINK_TORCH_ML_RENDEZVOUS_BIND"))
        self.server = RendezvousServer(host, bind, timeout, world_size)
        _SERVERS.append(self.server)
        keys = shard_keys(world_size)
        self._t_env = t_env
        self._liveness: Optional[LivenessWatch] = None
        self.spec = JobSpec(
            entry=entry, world_size=world_size, properties=dict(properties),
            input_names=names, input_types=[t.type_name for t in types],
            output_types=[t.type_name for t in output_types] if output_types else None,
            epochs=epochs, rendezvous=self.server.info(), client_pid=os.getpid(),
            key_to_rank={k: r for r, k in enumerate(keys)})
        with _shipped_by_value(entry, *ship_by_value):
            self.results = node_results_table(t_env, table, self.spec, keys)

    @classmethod
    def from_config(cls, table: Table, config: PyTorchClusterConfig, epochs: int,
                    output_types: Optional[List[DataType]]) -> "_Run":
        if not isinstance(config, PyTorchClusterConfig):
            raise TypeError(f"config must be a PyTorchClusterConfig (use "
                            f"PyTorchClusterConfig.new_builder()...build()), got "
                            f"{type(config).__name__}")
        return cls(table, config.get_node_entry(), config.get_world_size(),
                   config.get_properties(), config.get_timeout(), epochs, output_types,
                   config.get_input_types(),
                   config.get_property(PyTorchClusterConfig.RENDEZVOUS_HOST),
                   config.get_property(PyTorchClusterConfig.RENDEZVOUS_BIND))

    def store(self):
        """The run's keys, seen from the client."""
        return self.server.store()

    def collect(self) -> List[Dict[str, Any]]:
        """Execute now; one summary per rank, or the first worker's error."""
        watch = None
        try:
            submitted = self.results.execute()
            watch = _DeploymentWatch(self.store(), self.spec.world_size, self.spec.timeout,
                                     submitted.get_job_client())
            self._liveness = LivenessWatch(self._published_feeds(self.store()))
            with submitted.collect() as rows:
                results = [pickle.loads(row[1]) for row in rows]
        except Exception as error:
            if watch is not None and watch.starved is not None \
                    and "rendezvous store" not in str(error):
                raise WorkerError(
                    f"Only {watch.starved} of {self.spec.world_size} PyTorch workers were "
                    f"deployed within {watch.wait:.0f} s of submission, so the job was "
                    f"cancelled: Flink could not give it {self.spec.world_size} task slots at "
                    f"once. The workers must run at the same time; free at least "
                    f"{self.spec.world_size} slots or lower world_size") from error
            raise self.worker_error(error) from error
        finally:
            if watch is not None:
                watch.stop()
            if self._liveness is not None:
                self._liveness.stop()
            if self.server in _SERVERS:
                _SERVERS.remove(self.server)
            if self._previous_parallelism is not None:  # ran now: leave the env as it was
                self._t_env.get_config().set("parallelism.default", self._previous_parallelism)
        results.sort(key=lambda r: r["rank"])
        if [r["rank"] for r in results] != list(range(self.spec.world_size)):
            raise WorkerError(f"Expected one result per rank 0..{self.spec.world_size - 1}, "
                              f"got ranks {[r['rank'] for r in results]}")
        for r in results:
            r.pop("output", None)
            if r.get("entry_result") is None:
                r.pop("entry_result", None)
        return results

    def worker_error(self, error: Exception) -> Exception:
        """The first error a worker recorded, or the job's own error if none did."""
        message = str(error)
        lost = _task_manager_lost(message)
        if lost:  # the root cause; errors the surviving workers recorded follow from it
            return TaskManagerLostError(
                f"A Flink TaskManager running PyTorch workers of this {self.spec.world_size}-"
                f"worker run was lost ({lost}); the job failed and was not restarted, so the "
                f"run did not finish. Check that TaskManager's log (killed, out of memory?) and "
                f"run again")
        store = self.server.store()
        crashed = _python_worker_crashed(message)
        # A crash fails the job at once; the error a worker or the feed records about it
        # (naming the rank) may come a moment later.
        deadline = time.monotonic() + (CRASH_REPORT_GRACE if crashed else 0)
        while True:
            recorded = self._recorded_error(store)
            if recorded is not None or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        if recorded is not None:
            return recorded
        if crashed:
            dead = self._liveness.first_dead() if self._liveness is not None else []
            who = (f"PyTorch worker rank(s) {dead} of {self.spec.world_size}" if dead else
                   f"A Python worker process of this {self.spec.world_size}-worker run")
            return WorkerError(
                f"{who}: the Python process died (killed, or out of memory?) while the job "
                f"ran, so the job failed ({crashed}). Check the TaskManager's log and the "
                f"memory left for Python workers (taskmanager.memory.process.size)")
        if "NoResourceAvailableException" in message:
            return WorkerError(
                f"Flink could not give the job {self.spec.world_size} task slots at once "
                f"(NoResourceAvailableException): the {self.spec.world_size} PyTorch workers "
                f"must run at the same time; free at least {self.spec.world_size} slots or "
                f"lower world_size")
        for marker in ("WorkerError: ", "TimeoutError: "):
            if marker in message:
                tail = message.split(marker, 1)[1].split("\n\tat ", 1)[0]
                return WorkerError(tail.strip())
        return error

    def _published_feeds(self, store):
        """A function returning the workers' feed addresses published so far (attempt 0)."""
        found: Dict[int, str] = {}

        def addresses() -> Dict[int, str]:
            for rank in range(self.spec.world_size):
                key = run_key(0, f"feed/{rank}")
                if rank not in found and store.check([key]):
                    found[rank] = store.get(key).decode()
            return dict(found)

        return addresses

    def _recorded_error(self, store) -> Optional[WorkerError]:
        """The first error a worker (or the feed) recorded, as the exception to raise."""
        for attempt in range(4):
            key = run_key(attempt, "first_error")
            if store.check([key]):
                who = store.get(key).decode()
                text = store.get(run_key(attempt, f"error/{who}")).decode()
                type_name = store.get(run_key(attempt, f"error_type/{who}")).decode()
                what = (f"PyTorch worker rank {who} of {self.spec.world_size} failed"
                        if who != FEED else f"Feeding the input table to the "
                        f"{self.spec.world_size} PyTorch workers failed")
                return _worker_error_class(type_name)(f"{what}: {text}")
        return None


class _DeploymentWatch:
    """Cancels a submitted run whose W subtasks were not all deployed within ``timeout``:
    a streaming job waits for all its slots at once, and on a cluster Flink's own slot
    request timeout (cluster configuration, 5 minutes by default) would decide otherwise."""

    def __init__(self, store, world_size: int, timeout: float, job_client):
        self.starved: Optional[int] = None
        self.wait = timeout + 5  # later than a worker's own bounded waits, whose errors say more
        self._done = threading.Event()

        def watch():
            deadline = time.monotonic() + self.wait
            while not self._done.wait(0.5):
                try:
                    deployed = store.add("deployed", 0)
                except Exception:  # the run is over and its store closed
                    return
                if deployed >= world_size:
                    return
                if time.monotonic() > deadline:
                    self.starved = deployed
                    try:
                        job_client.cancel()
                    except Exception:  # already ending
                        pass
                    return

        threading.Thread(target=watch, daemon=True, name="ftm-deployment-watch").start()

    def stop(self) -> None:
        self._done.set()


_LOST_PATTERNS = (
    r"Connection unexpectedly closed by remote task manager[^\n]*",
    r"TaskManager with id \S+ is no longer reachable[^\n]*",
    r"Heartbeat of TaskManager with id \S+ timed out[^\n]*",
    r"The TaskExecutor is shutting down[^\n]*",
    r"Lost connection to task manager[^\n]*",
)


#: seconds the client waits for a worker's own report after a Python worker crashed
CRASH_REPORT_GRACE = 2.0

_CRASH_PATTERNS = (
    r"Python process exits with code[^\n]*",
    r"StatusRuntimeException: CANCELLED: client cancelled",
    r"SDK harness [^\n]*disconnected[^\n]*",
)


def _python_worker_crashed(message: str) -> Optional[str]:
    """The line of a Flink job failure that says a Python worker process went away."""
    for pattern in _CRASH_PATTERNS:
        found = re.search(pattern, message)
        if found:
            return found.group(0).strip()
    return None


def _task_manager_lost(message: str) -> Optional[str]:
    """The line of a Flink job failure that says a TaskManager was lost, if any."""
    for pattern in _LOST_PATTERNS:
        found = re.search(pattern, message, flags=re.IGNORECASE)
        if found:
            return found.group(0).strip().rstrip(".")
    return None


def _worker_error_class(type_name: str):
    """WorkerError, or a subclass that is also the library error the worker raised (so
    ``except InvalidDataError`` catches bad data found inside a worker)."""
    from . import errors

    cause = getattr(errors, type_name, None)
    if isinstance(cause, type) and issubclass(cause, errors.FlinkTorchMLError) \
            and not issubclass(cause, WorkerError):
        return type(f"Worker{type_name}", (WorkerError, cause), {})
    return WorkerError


@contextlib.contextmanager
def _shipped_by_value(*objects):
    """Pickle the user's own modules by value while the job is built, so entry functions and
    model classes defined there (not only in ``__main__``) reach the workers without being
    installed there. Installed packages are still pickled by reference."""
    import cloudpickle

    modules = []
    for obj in objects:
        if obj is None:
            continue
        name = getattr(obj, "__module__", None) or getattr(type(obj), "__module__", "")
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if module is None or not path or name == "__main__" \
                or name.startswith("flink_torch_ml") or "site-packages" in path \
                or "dist-packages" in path or module in modules:
            continue
        modules.append(module)
    for module in modules:
        cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        for module in modules:
            cloudpickle.unregister_pickle_by_value(module)


def _check_statement_set(statement_set) -> None:
    if not isinstance(statement_set, StatementSet):
        raise TypeError(f"statement_set must be a pyflink StatementSet (or None to run now), "
                        f"got {type(statement_set).__name__}")


def _output_names(schema, count: int) -> List[str]:
    if schema is None:
        return [f"f{i}" for i in range(count)]
    if isinstance(schema, Schema):
        names = [str(c.getName()) for c in schema._j_schema.getColumns()]
    else:
        names = list(schema)
    if len(names) != count or not all(isinstance(n, str) for n in names):
        raise SchemaError(f"output_schema names {len(names)} columns {names} but output_types "
                          f"has {count} types")
    return names


def _default_host(t_env) -> str:
    """127.0.0.1 on Flink's embedded mini-cluster, else this host's address."""
    import socket

    return "127.0.0.1" if _is_local(t_env) else socket.gethostbyname(socket.getfqdn())
