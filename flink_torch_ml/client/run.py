"""The client side of a distributed run: validate it, host its rendezvous, build its Flink job,
run it (or hand it to a StatementSet), and turn a failed job into an error that names the
rank and the cause. Runs in the client process (the one that calls ``fit``/``train``)."""

import contextlib
import dataclasses
import json
import os
import socket
import sys
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence

from pyflink.table import Table

from .._defaults import CRASH_REPORT_GRACE, DEPLOYMENT_GRACE, PEER_ERROR_GRACE, TIMEOUT
from ..core.types import DataType
from ..errors import RendezvousError, TaskManagerLostError, WorkerError, WorkerLostError, \
    is_retriable, worker_error_class
from . import failures, options
from ..dataplane.feed import LivenessWatch
from .job import check_environment, check_input_types, configure_job, is_local, \
    node_results_table, shard_keys
from ..worker.job_spec import JobSpec
from .planner import planned, prepare_planner
from ..dataplane.protocol import RunStore, wait_until
from ..dataplane.rendezvous import RendezvousServer
from ..dataplane.wire import DEFAULT_MAX_FRAME_BYTES, Security, new_secret

__all__ = ["DistributedRun", "active_runs", "shipped_by_value", "host_rendezvous"]

_active: "weakref.WeakSet[DistributedRun]" = weakref.WeakSet()


def active_runs() -> List["DistributedRun"]:
    """The runs of this process whose store is still up (for tools and tests)."""
    return [run for run in list(_active) if not run.released]


class DistributedRun:
    """One run of ``entry`` on ``world_size`` workers over ``table``: validated, its
    rendezvous started and its job built (``results``) at construction; executed by
    :meth:`collect`, or by the StatementSet it was added to."""

    def __init__(self, table: Table, entry: Callable, world_size: int,
                 properties: Optional[Dict[str, str]] = None, timeout: float = TIMEOUT,
                 epochs: int = 1, output_types: Optional[List[DataType]] = None,
                 input_types: Optional[List[DataType]] = None,
                 rendezvous_host: Optional[str] = None, rendezvous_bind: Optional[str] = None,
                 ship_by_value: Sequence[Any] = (), by_content: bool = False):
        if not isinstance(table, Table):
            raise TypeError(f"table must be a pyflink Table, got {type(table).__name__}")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epoch must be a positive int, got {epochs!r}")
        t_env = table._t_env
        names, types = check_input_types(table, input_types)
        conf = t_env.get_config()
        self._previous_parallelism = conf.get("parallelism.default", None)
        check_environment(t_env, world_size)
        configure_job(t_env, world_size, timeout)
        self.server = host_rendezvous(t_env, timeout, rendezvous_host, rendezvous_bind)
        self._t_env = t_env
        self._liveness: Optional[LivenessWatch] = None
        self._held = _Held(self.server)
        self._table, self._ship_by_value = table, [entry, *ship_by_value]
        self._keys = shard_keys(world_size)
        self.spec = JobSpec(
            entry=entry, world_size=world_size, properties=dict(properties or {}),
            input_names=names, input_types=[t.type_name for t in types],
            output_types=[t.type_name for t in output_types] if output_types else None,
            epochs=epochs, rendezvous=self.server.info(), client_pid=os.getpid(),
            key_to_rank={k: r for r, k in enumerate(self._keys)}, by_content=by_content)
        try:
            self._build()
        except BaseException:
            self.release()
            raise
        _active.add(self)

    def _build(self) -> None:
        with shipped_by_value(*self._ship_by_value):
            self.results = node_results_table(self._t_env, self._table, self.spec, self._keys)

    def retry(self) -> None:
        """Build the job again as the run's next attempt: the same store, keys of a new
        attempt (a late worker of the failed attempt cannot disturb it), the input read
        again from the source."""
        configure_job(self._t_env, self.spec.world_size, self.spec.timeout)
        self.spec = dataclasses.replace(self.spec, attempt=self.spec.attempt + 1)
        self._build()

    def run_store(self) -> RunStore:
        """The run's keys, seen from the client."""
        return RunStore(self.server.client(), self.spec.attempt, self.spec.world_size,
                        self.spec.timeout)

    # ------------------------------------------------------------------ running
    def collect(self) -> List[Dict[str, Any]]:
        """Execute now; one summary per rank, or the first worker's error."""
        watch = None
        try:
            submitted = planned(self._t_env, self.results.execute)
            watch = _DeploymentWatch(self.run_store(), self.spec.world_size, self.spec.timeout,
                                     submitted.get_job_client())
            self._liveness = LivenessWatch(self._published_feeds(),
                                           self.spec.rendezvous.security)
            with submitted.collect() as rows:
                results = [json.loads(row[1]) for row in rows]
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
            if self._previous_parallelism is not None:  # ran now: leave the env as it was
                self._t_env.get_config().set("parallelism.default", self._previous_parallelism)
            # our threads may have opened py4j connections meanwhile: the user's next
            # planner call from this thread must not fail (see planner.py)
            prepare_planner(self._t_env)
        results.sort(key=lambda r: r["rank"])
        if [r["rank"] for r in results] != list(range(self.spec.world_size)):
            raise WorkerError(f"Expected one result per rank 0..{self.spec.world_size - 1}, "
                              f"got ranks {[r['rank'] for r in results]}")
        for r in results:
            r.pop("output", None)
            if r.get("entry_result") is None:
                r.pop("entry_result", None)
        return results

    def collect_with_retries(self, max_failures: int,
                             on_retry: Optional[Callable[[BaseException, int], None]] = None,
                             per_attempt: Optional[Callable[[], Any]] = None
                             ) -> List[Dict[str, Any]]:
        """:meth:`collect`, starting a new attempt after a failure a new attempt can get past
        (a lost worker, host or connection), up to ``max_failures`` times. Raises at once
        for anything else (the user's code or data), and the first failure once the attempts
        are used up. ``on_retry(error, next_attempt)`` is told before each new attempt;
        ``per_attempt()`` returns a context manager wrapped around each."""
        failures: List[BaseException] = []
        while True:
            try:
                with (per_attempt() if per_attempt is not None else contextlib.nullcontext()):
                    return self.collect()
            except WorkerError as error:
                failures.append(error)
                if not is_retriable(error):
                    raise
                if self.spec.attempt >= max_failures:
                    raise failures[0]
                if on_retry is not None:
                    on_retry(error, self.spec.attempt + 1)
                self.retry()

    @property
    def released(self) -> bool:
        return self._held.released

    def release(self) -> None:
        """Close the run's rendezvous store (its port and memory)."""
        _active.discard(self)
        self._held.release()

    def release_when_done(self, on_done: Optional[Callable[[RunStore], None]] = None) -> None:
        """For a run added to a StatementSet, which executes later: once every rank finished
        or one failed, call ``on_done`` (to copy out what the client still needs) and close
        the store. A background janitor, not a wait anyone blocks on. It holds no Java
        object (only the store), so none is ever freed on its thread (see planner.py)."""
        run, held = self.run_store(), self._held

        def janitor():
            try:
                while run.count(run.keys.exited) < run.world_size:
                    if run.has(run.keys.first_error):  # let the others record theirs
                        time.sleep(PEER_ERROR_GRACE + DEPLOYMENT_GRACE)
                        break
                    time.sleep(0.5)
                if on_done is not None:
                    on_done(run)
            except Exception:  # the store went away: nothing left to release
                pass
            finally:
                held.release()

        threading.Thread(target=janitor, daemon=True, name="ftm-run-janitor").start()

    # ------------------------------------------------------------------ failures
    def worker_error(self, error: Exception) -> Exception:
        """The first error a worker recorded, or the job's own error if none did."""
        message = str(error)
        world_size = self.spec.world_size
        lost = failures.task_manager_lost(message)
        if lost:  # the root cause; errors the surviving workers recorded follow from it
            return TaskManagerLostError(
                f"A Flink TaskManager running PyTorch workers of this {world_size}-worker run "
                f"was lost ({lost}); the job failed and was not restarted, so the run did not "
                f"finish. Check that TaskManager's log (killed, out of memory?) and run again")
        crashed = failures.python_worker_crashed(message)
        # A crash fails the job at once; the error a worker or the feed records about it
        # (naming the rank) may come a moment later.
        recorded = self._recorded_error(CRASH_REPORT_GRACE if crashed else 0)
        if recorded is not None and crashed:  # the survivors' errors follow from the crash
            return WorkerLostError(f"{recorded} (a Python worker process died: {crashed})")
        if recorded is not None:
            return recorded
        if crashed:
            dead = self._liveness.first_dead() if self._liveness is not None else []
            who = (f"PyTorch worker rank(s) {dead} of {world_size}" if dead else
                   f"A Python worker process of this {world_size}-worker run")
            return WorkerLostError(
                f"{who}: the Python process died (killed, or out of memory?) while the job "
                f"ran, so the job failed ({crashed}). Check the TaskManager's log and the "
                f"memory left for Python workers (taskmanager.memory.process.size)")
        if failures.no_resources(message):
            return WorkerError(
                f"Flink could not give the job {world_size} task slots at once "
                f"(NoResourceAvailableException): the {world_size} PyTorch workers must run "
                f"at the same time; free at least {world_size} slots or lower world_size")
        raised = failures.raised_in_worker(message)
        if raised:
            return WorkerError(raised)
        return error

    def _recorded_error(self, grace: float) -> Optional[WorkerError]:
        """The first error a worker (or the feed) recorded, as the exception to raise,
        waiting up to ``grace`` seconds for one."""
        try:
            run = self.run_store()
            recorded = wait_until(run.first_error, grace, "a worker's error report", poll=0.1)
        except (TimeoutError, RendezvousError):
            return None
        world_size = self.spec.world_size
        if recorded.is_feed:
            what = f"Feeding the input table to the {world_size} PyTorch workers failed"
        elif recorded.type_name == "WorkerLostError":
            what = (f"PyTorch worker rank {recorded.who} of {world_size} lost a peer (another "
                    f"rank's process or host died)")
        else:
            what = f"PyTorch worker rank {recorded.who} of {world_size} failed"
        return worker_error_class(recorded.type_name)(f"{what}: {recorded.text}")

    def _published_feeds(self) -> Callable[[], Dict[int, str]]:
        """A function returning the workers' feed addresses published so far."""
        run = self.run_store()
        found: Dict[int, str] = {}

        def addresses() -> Dict[int, str]:
            for rank in range(self.spec.world_size):
                key = run.keys.feed_address(rank)
                if rank not in found and run.has(key):
                    found[rank] = run.get_text(key)
            return dict(found)

        return addresses


class _Held:
    """What a run holds until it is released: its store's server (no Java objects, so a
    background thread may release it)."""

    def __init__(self, server: RendezvousServer):
        self.server = server
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.server.close()


def host_rendezvous(t_env, timeout: float, host: Optional[str] = None,
                    bind: Optional[str] = None) -> RendezvousServer:
    """Start a run's store in this process: the address workers dial (the option, else
    loopback on the embedded mini-cluster, else this host's name), bound to loopback
    locally and to all interfaces elsewhere unless configured, with the run's secret."""
    conf = t_env.get_config()
    local = is_local(t_env)
    host = options.lookup(options.RENDEZVOUS_HOST, conf, host) or \
        ("127.0.0.1" if local else socket.gethostbyname(socket.getfqdn()))
    bind = options.lookup(options.RENDEZVOUS_BIND, conf, bind) or \
        (host if local else "0.0.0.0")
    return RendezvousServer(host, _security(conf), bind, timeout)


def _security(conf) -> Security:
    """The run's secret and data-plane settings from the Flink options."""
    limit = options.lookup(options.MAX_FRAME_BYTES, conf)
    certificate = options.lookup(options.SSL_CERTIFICATE, conf)
    key = options.lookup(options.SSL_KEY, conf)
    if (certificate is None) != (key is None):
        raise ValueError(f"TLS needs both {options.SSL_CERTIFICATE} and {options.SSL_KEY}; "
                         f"only one is set")
    tls = {}
    if certificate is not None:
        assert key is not None  # both or neither, checked above
        for name, option, path in (("tls_certificate", options.SSL_CERTIFICATE, certificate),
                                   ("tls_key", options.SSL_KEY, key)):
            try:
                with open(path, "rb") as f:
                    tls[name] = f.read()
            except OSError as error:
                raise ValueError(f"Cannot read the PEM file {path!r} named by {option}: "
                                 f"{error}") from None
    try:
        max_frame = int(limit) if limit is not None else DEFAULT_MAX_FRAME_BYTES
    except ValueError:
        raise ValueError(f"{options.MAX_FRAME_BYTES} must be an integer number of bytes, got "
                         f"{limit!r}") from None
    if max_frame < 1 << 16:
        raise ValueError(f"{options.MAX_FRAME_BYTES} must be at least 65536, got {max_frame}")
    return Security(new_secret(), max_frame, **tls)


class _DeploymentWatch:
    """Cancels a submitted run whose W subtasks were not all deployed within ``timeout``:
    a streaming job waits for all its slots at once, and on a cluster Flink's own slot
    request timeout (cluster configuration, 5 minutes by default) would decide otherwise."""

    def __init__(self, run: RunStore, world_size: int, timeout: float, job_client):
        self.starved: Optional[int] = None
        self.wait = timeout + DEPLOYMENT_GRACE
        self._done = threading.Event()
        # Only this object holds the job client, and stop() (the client's thread) drops it:
        # py4j frees a Java object in the thread that drops it last, and a py4j call from
        # another thread opens a second connection (see planner.py).
        self._job_client = job_client

        def deployed() -> bool:
            return self._done.is_set() or run.count(run.keys.deployed) >= world_size

        def watch():
            try:
                wait_until(deployed, self.wait, f"{world_size} workers to be deployed",
                           poll=0.5)
            except TimeoutError:
                self.starved = run.count(run.keys.deployed)
                client = self._job_client
                try:
                    if client is not None:
                        client.cancel()
                except Exception:  # already ending
                    pass
                finally:
                    del client
            except Exception:  # the run is over and its store closed
                pass

        threading.Thread(target=watch, daemon=True, name="ftm-deployment-watch").start()

    def stop(self) -> None:
        self._done.set()
        self._job_client = None


@contextlib.contextmanager
def shipped_by_value(*objects):
    """Pickle the user's own modules by value while the job is built (``with``), so entry
    functions and model classes defined there (not only in ``__main__``) reach the workers
    without being installed there. Installed packages are still pickled by reference."""
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
    # cloudpickle's registry is process-wide: add only what is not registered yet, and take
    # back exactly that, so a module the user registered stays registered
    registered = set(cloudpickle.list_registry_pickle_by_value())
    added = [m for m in modules if m.__name__ not in registered]
    for module in added:
        cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        for module in added:
            cloudpickle.unregister_pickle_by_value(module)
