"""Rendezvous between the client and the PyTorch workers inside Flink.

The client (the process that submits the job) hosts a ``torch.distributed.TCPStore`` on an
ephemeral port; workers connect as clients under a fresh per-run prefix, so a retried or
concurrent run never sees another run's keys. Through it, rank 0 publishes its address and a
free port (for ``env://`` init), workers claim their rank, report progress and failures, and
meet at a final barrier. Every wait is bounded by the configured timeout.
"""

import datetime
import socket
import uuid
from dataclasses import dataclass
from typing import Optional, Tuple

__all__ = ["RendezvousServer", "RendezvousInfo", "connect", "local_address_towards",
           "free_port"]


@dataclass(frozen=True)
class RendezvousInfo:
    """What a worker needs to reach the store (travels inside the Flink job)."""

    host: str
    port: int
    run_id: str
    timeout: float


class RendezvousServer:
    """A TCPStore hosted by the client for one run."""

    def __init__(self, host: str = "127.0.0.1", bind: Optional[str] = None,
                 timeout: float = 180.0, world_size: int = 1):
        import torch.distributed as dist

        self.timeout = timeout
        self.host = host
        # TCPStore binds all interfaces when it is the master; ``bind`` is informational
        # unless the platform honours it, the advertised ``host`` is what workers dial.
        self._store = dist.TCPStore(bind or host, 0, world_size=None, is_master=True,
                                    timeout=datetime.timedelta(seconds=timeout),
                                    wait_for_workers=False, use_libuv=True)
        self.port = self._store.port
        self.run_id = uuid.uuid4().hex[:12]

    def info(self) -> RendezvousInfo:
        return RendezvousInfo(self.host, self.port, self.run_id, self.timeout)

    def store(self):
        """The run's keys, seen from the client."""
        import torch.distributed as dist

        return dist.PrefixStore(self.run_id + "/", self._store)

    def close(self) -> None:
        self._store = None


def connect(info: RendezvousInfo):
    """A worker's PrefixStore for the run; fails within ``info.timeout`` if unreachable."""
    import torch.distributed as dist

    try:
        # A plain connect first: torch's own retries can outlast the timeout on an address
        # that drops packets (a firewall, a wrong interface).
        socket.create_connection((info.host, info.port), timeout=info.timeout).close()
        base = dist.TCPStore(info.host, info.port, is_master=False,
                             timeout=datetime.timedelta(seconds=info.timeout),
                             use_libuv=True)
    except Exception as error:
        raise TimeoutError(
            f"Could not reach the rendezvous store at {info.host}:{info.port} within "
            f"{info.timeout:.0f} s ({error}); on a cluster, set the rendezvous host to an "
            f"address of the client that TaskManagers can reach") from error
    return dist.PrefixStore(info.run_id + "/", base)


def local_address_towards(host: str) -> str:
    """This machine's IP address on the route to ``host`` (how peers can reach us)."""
    if host in ("127.0.0.1", "localhost", "::1"):
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


def wait_get(store, key: str, timeout: float, what: str) -> bytes:
    """``store.get(key)`` with a clear error after ``timeout`` seconds."""
    try:
        store.wait([key], datetime.timedelta(seconds=timeout))
    except Exception as error:
        raise TimeoutError(f"Timed out after {timeout:.0f} s waiting for {what}") from error
    return store.get(key)


def master_endpoint(store, rank: int, timeout: float, store_host: str) -> Tuple[str, int]:
    """Rank 0 publishes its reachable address and a free port; the others read it."""
    if rank == 0:
        address = local_address_towards(store_host)
        port = free_port(address)
        store.set("master", f"{address}:{port}")
    value = wait_get(store, "master", timeout, "rank 0 to publish its master address").decode()
    address, port = value.rsplit(":", 1)
    return address, int(port)
