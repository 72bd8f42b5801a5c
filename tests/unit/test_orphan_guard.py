"""The orphan guard's process checks (the end-to-end case, a killed TaskManager, is in
tests/integration/test_cluster.py)."""

import os
import subprocess
import sys
import threading
import time

from flink_torch_ml.worker import orphan_guard


def test_parent_of_and_alive_for_running_processes():
    assert orphan_guard.parent_of(os.getpid()) == os.getppid()
    assert orphan_guard.process_alive(os.getpid())


def test_a_zombie_and_a_reaped_process_count_as_dead():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 10
    while orphan_guard.process_alive(child.pid) and time.time() < deadline:
        time.sleep(0.05)  # exited but not reaped yet: a zombie
    assert not orphan_guard.process_alive(child.pid)
    child.wait()
    assert not orphan_guard.process_alive(child.pid)
    assert orphan_guard.parent_of(child.pid) is None


def test_never_guards_a_process_flink_did_not_start(monkeypatch):
    monkeypatch.delenv("WORKER_ID", raising=False)
    assert not orphan_guard.in_python_worker()
    orphan_guard.start_orphan_guard()
    assert not any(t.name == "ftm-orphan-guard" for t in threading.enumerate())


def test_a_worker_whose_parent_dies_ends_itself(tmp_path):
    """A Flink-like chain: parent -> worker; kill the parent, the worker exits by itself."""
    script = tmp_path / "chain.py"
    script.write_text(f"""
import os, subprocess, sys, time
if sys.argv[1] == "parent":
    child = subprocess.Popen([sys.executable, __file__, "worker"],
                             env=dict(os.environ, WORKER_ID="1", PIPELINE_OPTIONS="{{}}"))
    print(child.pid, flush=True)
    time.sleep(600)
else:
    sys.path.insert(0, {os.getcwd()!r})
    from flink_torch_ml.worker.orphan_guard import start_orphan_guard
    start_orphan_guard(depth=1, interval=0.2, grace=0.2)
    open(sys.argv[0] + ".ready", "w").close()
    time.sleep(600)
""")
    parent = subprocess.Popen([sys.executable, str(script), "parent"], stdout=subprocess.PIPE,
                              text=True)
    worker = int(parent.stdout.readline())
    deadline = time.time() + 60
    while not os.path.exists(str(script) + ".ready") and time.time() < deadline:
        time.sleep(0.1)
    assert orphan_guard.process_alive(worker)
    parent.kill()
    parent.wait()
    deadline = time.time() + 15
    while orphan_guard.process_alive(worker) and time.time() < deadline:
        time.sleep(0.1)
    alive = orphan_guard.process_alive(worker)
    if alive:
        os.kill(worker, 9)
    assert not alive, "the orphaned worker kept running"
