"""Rendezvous between the client and the PyTorch workers inside Flink.

The client (the process that submits the job) hosts the run's authenticated store
(``store.py``) on an ephemeral port and creates the run's secret; what workers need to reach
it (:class:`RendezvousInfo`, secret included) travels inside the Flink job. Through the
store, rank 0 publishes its address and a free port (for ``env://`` init), workers claim
their rank, report progress and failures, and meet at a final barrier.
"""

import socket
import uuid
from dataclasses import dataclass
from typing import Optional, Tuple

from .._defaults import TIMEOUT
from ..errors import RendezvousError
from .protocol import RunStore
from .store import StoreClient, StoreServer
from .wire import Security

__all__ = ["RendezvousServer", "RendezvousInfo", "connect", "local_address_towards",
           "free_port", "master_endpoint", "is_loopback"]


@dataclass(frozen=True)
class RendezvousInfo:
    """What a worker needs to reach the store (travels inside the Flink job)."""

    host: str
    port: int
    run_id: str
    timeout: float
    security: Security


class RendezvousServer:
    """The store hosted by the client for one run, bound to ``bind`` (default: the
    advertised ``host``; loopback on Flink's embedded mini-cluster)."""

    def __init__(self, host: str, security: Security, bind: Optional[str] = None,
                 timeout: float = TIMEOUT):
        self.timeout = timeout
        self.host = host
        self.security = security
        self._bind = bind or host
        self._server = StoreServer(self._bind, security)
        self.port = self._server.port
        self.run_id = uuid.uuid4().hex[:12]
        self._client: Optional[StoreClient] = None

    def info(self) -> RendezvousInfo:
        return RendezvousInfo(self.host, self.port, self.run_id, self.timeout, self.security)

    @property
    def rejected(self) -> int:
        """Connections the store closed because they failed the handshake or the protocol."""
        return self._server.rejected

    def client(self) -> StoreClient:
        """The client process's own connection to the store."""
        if self._client is None:
            self._client = StoreClient(_dial(self._bind), self.port, self.security,
                                       self.timeout)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self._server.close()


def _dial(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def connect(info: RendezvousInfo) -> StoreClient:
    """A worker's authenticated connection to the run's store; fails within
    ``info.timeout`` with an error naming the address if it cannot be reached."""
    try:
        return StoreClient(info.host, info.port, info.security, info.timeout)
    except RendezvousError as error:
        raise RendezvousError(
            f"{error}; on a cluster, set the rendezvous host (flink_torch_ml.rendezvous.host) "
            f"to an address of the client that TaskManagers can reach") from None


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1")


def local_address_towards(host: str) -> str:
    """This machine's IP address on the route to ``host`` (how peers can reach us)."""
    if is_loopback(host):
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((host, 9))  # UDP connect sends nothing; it only picks a route
            return probe.getsockname()[0]
        except OSError:
            return socket.gethostbyname(socket.gethostname())


def free_port(address: str = "") -> int:
    """A TCP port free at the moment on ``address``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, 0))
        return sock.getsockname()[1]


def master_endpoint(run: RunStore, rank: int, store_host: str) -> Tuple[str, int]:
    """Rank 0 publishes its reachable address and a free port; the others read it."""
    if rank == 0:
        address = local_address_towards(store_host)
        run.set(run.keys.master, f"{address}:{free_port(address)}")
    value = run.wait_for(run.keys.master, "rank 0 to publish its master address", rank)
    address, port = value.decode().rsplit(":", 1)
    return address, int(port)
