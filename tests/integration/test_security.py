"""A stranger on the network during a real run (issue 11): while a W=2 run ingests a throttled
source, a process with no part in it connects to every port the run's processes listen on
(the client's store, the workers' feed servers, gloo's) and sends pickles, length-prefixed
pickles and random bytes. Nothing executes, every row still reaches the workers once, and
the run completes with the right result."""

import os
import pickle
import random
import socket
import struct
import threading
import time

from flink_torch_ml import PyTorchClusterConfig, PyTorchContext, pytorch_utils
from flink_torch_ml.client.run import active_runs
from tests.processes import python_workers


class Exploit:
    """Unpickling this creates the marker file: proof that a pickle was executed."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def ids_entry(context):
    """Every id this rank holds, summed and counted (rank 0 trains a tiny DDP step so gloo's
    ports exist while the attack runs)."""
    import torch
    import torch.distributed as dist

    pytorch_context = PyTorchContext(context)
    os.environ["MASTER_ADDR"] = pytorch_context.get_master_ip()
    os.environ["MASTER_PORT"] = str(pytorch_context.get_master_port())
    dist.init_process_group("gloo", rank=pytorch_context.get_rank(),
                            world_size=pytorch_context.get_world_size())
    time.sleep(4)  # gloo's ports stay open while the stranger tries them
    ids = [int(i) for batch in pytorch_context.get_dataset_from_flink().batches(65536)
           for i in batch[0].tolist()]
    total = torch.tensor([float(sum(ids)), float(len(ids))], dtype=torch.float64)
    dist.all_reduce(total)
    return {"ids": ids, "all": total.tolist()}


def listening_ports(pids):
    """TCP ports (IPv4/IPv6) on which any of ``pids`` listens."""
    inodes = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def attacks(marker):
    payload = pickle.dumps(Exploit(marker))
    rng = random.Random(11)
    return [payload, struct.pack("<Q", len(payload)) + payload,
            struct.pack("<I", len(payload)) + payload, struct.pack(">Q", len(payload)) + payload,
            b"FTM1" + bytes(32) + payload,
            bytes(rng.getrandbits(8) for _ in range(4096)), struct.pack("<Q", 1 << 40)]


def attack(port, data):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.settimeout(1)
            try:
                sock.settimeout(0.2)
                sock.recv(64)  # let a server speak first (a challenge)
            except OSError:
                pass
            sock.sendall(data)
            time.sleep(0.05)
    except OSError:
        pass  # closed on us: fine


def test_strangers_on_every_port_change_nothing(stream_env, tmp_path):
    marker = tmp_path / "pwned"
    n = 40_000  # 4 s of input at 10,000 rows/s
    stream_env.execute_sql("DROP TEMPORARY TABLE IF EXISTS throttled")
    stream_env.execute_sql(f"""CREATE TEMPORARY TABLE throttled (id BIGINT) WITH (
        'connector' = 'datagen', 'rows-per-second' = '10000', 'fields.id.kind' = 'sequence',
        'fields.id.start' = '0', 'fields.id.end' = '{n - 1}')""")
    config = (PyTorchClusterConfig.new_builder().set_node_entry(ids_entry).set_world_size(2)
              .set_property("input_types", "INT_64").set_timeout(60).build())
    outcome = {}

    def run():
        try:
            outcome["results"] = pytorch_utils.train(None, config,
                                                     stream_env.from_path("throttled"))
        except Exception as error:  # noqa: BLE001 - inspected below
            outcome["error"] = error

    earlier = active_runs()
    runner = threading.Thread(target=run)
    runner.start()
    deadline = time.monotonic() + 60
    while not [r for r in active_runs() if r not in earlier] and time.monotonic() < deadline:
        time.sleep(0.05)
    victim_run = [r for r in active_runs() if r not in earlier][-1]
    store = victim_run.run_store()
    while not (store.has(store.keys.fed_rows(0)) and store.has(store.keys.fed_rows(1))) \
            and time.monotonic() < deadline:
        time.sleep(0.05)  # both workers are receiving: the attack lands mid-ingestion
    ports = {victim_run.server.port} | {
        int(store.get_text(store.keys.feed_address(r)).rsplit(":", 1)[1]) for r in range(2)}
    attacked = set()
    while runner.is_alive() and time.monotonic() < deadline:
        # every port the run's processes listen on, including ones opened later (gloo's),
        # all at once
        targets = sorted(ports | listening_ports(python_workers()))
        strangers = [threading.Thread(target=lambda p=p: [attack(p, d) for d in attacks(marker)])
                     for p in targets]
        for stranger in strangers:
            stranger.start()
        for stranger in strangers:
            stranger.join(30)
        attacked.update(targets)
    runner.join(90)
    assert "error" not in outcome, outcome.get("error")
    results = outcome["results"]
    ids = sorted(i for r in results for i in r["entry_result"]["ids"])
    assert ids == list(range(n))  # every row reached exactly one worker
    assert results[0]["entry_result"]["all"] == [float(sum(range(n))), float(n)]
    assert not marker.exists()  # no pickle was ever executed
    # the store, two feed servers, and gloo's listeners (torch's; garbage does not harm them)
    assert len(attacked) >= 5, sorted(attacked)
    assert victim_run.server.rejected > 0  # the store saw (and refused) the strangers


def test_a_run_over_tls(stream_env, tmp_path):
    """With a PEM certificate and key named by Flink options, the store and the feed speak
    TLS; the run works as without."""
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=flink-torch-ml"],
                   check=True, capture_output=True)
    conf = stream_env.get_config()
    conf.set("flink_torch_ml.ssl.certificate", str(cert))
    conf.set("flink_torch_ml.ssl.key", str(key))
    try:
        table = stream_env.from_elements([(i,) for i in range(500)], ["id"])
        config = (PyTorchClusterConfig.new_builder().set_node_entry(ids_entry).set_world_size(2)
                  .set_property("input_types", "INT_64").set_timeout(60).build())
        earlier = active_runs()
        outcome = {}
        runner = threading.Thread(target=lambda: outcome.update(
            results=pytorch_utils.train(None, config, table)))
        runner.start()
        deadline = time.monotonic() + 60
        while not [r for r in active_runs() if r not in earlier] and time.monotonic() < deadline:
            time.sleep(0.02)
        run = [r for r in active_runs() if r not in earlier][-1]
        assert run.spec.rendezvous.security.tls  # what the workers got inside the job
        runner.join(90)
        results = outcome["results"]
        assert sorted(i for r in results for i in r["entry_result"]["ids"]) == list(range(500))
        assert run.released
        conf.set("flink_torch_ml.ssl.key", "")
        with __import__("pytest").raises(ValueError, match="needs both"):
            pytorch_utils.train(None, config, table)
    finally:
        conf.set("flink_torch_ml.ssl.certificate", "")
        conf.set("flink_torch_ml.ssl.key", "")
