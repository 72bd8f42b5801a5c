"""The Flink Python worker processes on this machine (Linux /proc), for tests that check
nothing is left running."""

import os
from typing import List


def python_workers() -> List[int]:
    """Pids of the Flink Python worker processes alive on this machine."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc") if os.path.isdir("/proc") else []):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"beam_boot" in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def describe_process(pid: int) -> str:
    """One line naming a process: its state, parent and command line."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read().replace(bytes(1), b" ").decode(errors="replace")[:200]
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return f"pid {pid} (state {fields[0]}, parent {fields[1]}): {command}"
    except OSError:
        return f"pid {pid} (gone)"
