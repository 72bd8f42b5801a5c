"""Reading a failed Flink job's error: which kind of failure it was, as the client sees it.

Flink reports a failed job as one long Java stack trace; these functions find the line that
says what happened (a TaskManager lost, a Python worker process gone, too few slots, our own
error raised in a worker). Pure string functions, testable without Flink.
"""

import re
from typing import Optional

__all__ = ["task_manager_lost", "python_worker_crashed", "no_resources", "raised_in_worker"]

_LOST_PATTERNS = (
    r"Connection unexpectedly closed by remote task manager[^\n]*",
    r"TaskManager with id \S+ is no longer reachable[^\n]*",
    r"Heartbeat of TaskManager with id \S+ timed out[^\n]*",
    r"The TaskExecutor is shutting down[^\n]*",
    r"Lost connection to task manager[^\n]*",
)

_CRASH_PATTERNS = (
    r"Python process exits with code[^\n]*",
    r"StatusRuntimeException: CANCELLED: client cancelled",
    r"SDK harness [^\n]*disconnected[^\n]*",
)

#: exception names whose message, raised in a worker, is worth showing without the Java trace
_RAISED_MARKERS = ("WorkerError: ", "RendezvousTimeoutError: ", "RendezvousError: ",
                   "TimeoutError: ")


def task_manager_lost(message: str) -> Optional[str]:
    """The line of a Flink job failure that says a TaskManager was lost, if any."""
    for pattern in _LOST_PATTERNS:
        found = re.search(pattern, message, flags=re.IGNORECASE)
        if found:
            return found.group(0).strip().rstrip(".")
    return None


def python_worker_crashed(message: str) -> Optional[str]:
    """The line of a Flink job failure that says a Python worker process went away."""
    for pattern in _CRASH_PATTERNS:
        found = re.search(pattern, message)
        if found:
            return found.group(0).strip()
    return None


def no_resources(message: str) -> bool:
    """True when Flink could not give the job the slots it asked for."""
    return "NoResourceAvailableException" in message


def raised_in_worker(message: str) -> Optional[str]:
    """The message of one of our errors raised in a Python worker, cut from the Java trace."""
    for marker in _RAISED_MARKERS:
        if marker in message:
            return message.split(marker, 1)[1].split("\n\tat ", 1)[0].strip()
    return None
