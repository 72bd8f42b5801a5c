"""An ``OnlinePyTorchEstimator`` fit in the client: the run's rendezvous store and the job that
produces its model-data table.

The store must outlive ``fit``: the job runs later (when a pipeline using its tables executes),
for as long as it runs, and its ranks rendezvous again after each restart. So a fit keeps its
store open in this process until its ranks report that a bounded input ended; an unbounded
job's store stays open while this process lives (the job needs it for every restart).
"""

import threading
import time
from typing import Set

from pyflink.table import Table

from ..core.online import OnlineSpec
from ..dataplane.protocol import RunStore
from ..dataplane.rendezvous import RendezvousInfo
from .online_job import model_data_table
from .run import host_rendezvous

__all__ = ["OnlineFit", "open_online_fits"]

#: fits whose job may still run (removed once their ranks ended)
_open: Set["OnlineFit"] = set()
_open_lock = threading.Lock()


class OnlineFit:
    """One online fit's store (hosted in this process) and its model-data table."""

    def __init__(self, t_env, timeout: float):
        self._server = host_rendezvous(t_env, timeout)
        self._t_env = t_env
        self.closed = False

    @property
    def rendezvous(self) -> RendezvousInfo:
        """What the ranks need to reach the store (ships inside the job)."""
        return self._server.info()

    def model_data(self, table: Table, spec: OnlineSpec, version_col: str) -> Table:
        """The unbounded table of versions the job makes (lazily: it runs when a pipeline
        consuming it executes); the store stays open while the job may run."""
        versions = model_data_table(self._t_env, table, spec, version_col)
        with _open_lock:
            _open.add(self)
        threading.Thread(target=self._close_when_ended, args=(spec.world_size,), daemon=True,
                         name="ftm-online-janitor").start()
        return versions

    def _close_when_ended(self, world_size: int, poll: float = 1.0) -> None:
        """Close the store once every rank reported the end of a bounded input."""
        try:
            run = RunStore(self._server.client(), 0, world_size)
            while not self.closed and run.count(run.keys.online_ended) < world_size:
                time.sleep(poll)
        except Exception:  # noqa: BLE001 - closed meanwhile
            pass
        self.close()

    def close(self) -> None:
        """Close the store (a job still running can no longer restart)."""
        self.closed = True
        with _open_lock:
            _open.discard(self)
        self._server.close()


def open_online_fits() -> int:
    """How many online fits of this process keep their store open (for tools and tests)."""
    with _open_lock:
        return len(_open)
