"""End a Python worker whose TaskManager is gone.

Flink starts each Python worker as ``python -m ...beam_boot`` under a shell script under the
TaskManager JVM. When the TaskManager is killed (SIGKILL, OOM killer, a lost container), the
worker is orphaned; Beam's harness can then deadlock in its own shutdown (its log handler
joins a thread that waits on the handler's lock) and live forever. Nothing can use such a
worker again, so a daemon thread watches the worker's ancestors and ends the process soon
after one of them dies.
"""

import os
import subprocess
import threading
import time
from typing import List, Optional

__all__ = ["start_orphan_guard", "process_alive", "parent_of", "write_stderr",
           "in_python_worker"]

_started = False
_lock = threading.Lock()


_NO_PROC = object()  # this system has no /proc: ask ps / os.kill instead


def _proc_stat(pid: int):
    """The fields of /proc/PID/stat after "(comm)" (state, ppid, ...); None when the process
    does not exist; _NO_PROC on systems without /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None if os.path.isdir("/proc/self") else _NO_PROC
    except (OSError, IndexError):
        return None


def parent_of(pid: int) -> Optional[int]:
    """The parent pid of ``pid``, or None when it does not exist."""
    fields = _proc_stat(pid)
    if fields is not _NO_PROC:
        try:
            return int(fields[1]) if fields else None
        except (ValueError, IndexError):
            return None
    try:  # macOS and other systems without /proc
        out = subprocess.run(["ps", "-o", "ppid=", "-p", str(pid)], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        return int(out) if out else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (dead, not yet reaped) counts as dead."""
    fields = _proc_stat(pid)
    if fields is not _NO_PROC:
        return bool(fields) and fields[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def write_stderr(text: str) -> None:
    """Write to file descriptor 2 directly: in a Python worker, ``sys.stderr`` is Beam's
    logging bridge, whose lock a dying harness may hold forever."""
    try:
        os.write(2, text.encode("utf-8", "replace"))
    except OSError:
        pass


def in_python_worker() -> bool:
    """True inside a Python worker process that Flink started (beam_boot sets these)."""
    return bool(os.environ.get("WORKER_ID")) and "PIPELINE_OPTIONS" in os.environ \
        and "PYTHON_LOOPBACK_SERVER_ADDRESS" not in os.environ


def _ancestors(depth: int) -> List[int]:
    chain: List[int] = []
    pid = os.getpid()
    for _ in range(depth):
        parent = parent_of(pid)
        if parent is None or parent <= 1:
            break
        pid = parent
        chain.append(pid)
    return chain


def start_orphan_guard(depth: int = 2, interval: float = 1.0, grace: float = 3.0) -> None:
    """Watch this process's parent and grandparent (the runner script and the TaskManager);
    ``grace`` seconds after one is gone, end this process. Idempotent per process."""
    global _started
    if not in_python_worker():
        return  # the client process (PyFlink's loopback mode) is the user's, never end it
    with _lock:
        if _started:
            return
        _started = True
    watched = _ancestors(depth)
    if not watched:
        return

    def watch():
        while True:
            time.sleep(interval)
            gone = [pid for pid in watched if not process_alive(pid)]
            if gone:
                time.sleep(grace)
                write_stderr(f"flink-torch-ml: the process(es) {gone} that started this Python "
                             f"worker (its TaskManager) are gone; ending it\n")
                os._exit(71)

    threading.Thread(target=watch, daemon=True, name="ftm-orphan-guard").start()
