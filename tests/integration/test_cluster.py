"""A real standalone Flink cluster on loopback (1 JobManager + 2 TaskManagers, one slot each,
separate JVMs) started by scripts/flink-cluster.sh: distributed fit + transform submitted
with `flink run`, and a TaskManager killed in the middle of training. The cluster is always
stopped, and no process it started may outlive it."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPT = os.path.join(ROOT, "scripts", "flink-cluster.sh")
JOB = os.path.join(os.path.dirname(__file__), "cluster_job.py")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _process_table() -> dict:
    """pid -> parent pid of every process, read from ps."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,stat="], capture_output=True,
                         text=True, check=True).stdout
    table = {}
    for line in out.splitlines():
        pid, ppid, stat = line.split(None, 2)
        if not stat.startswith("Z"):
            table[int(pid)] = int(ppid)
    return table


def _descendants(roots) -> set:
    table, found, todo = _process_table(), set(), list(roots)
    while todo:
        parent = todo.pop()
        for pid, ppid in table.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                todo.append(pid)
    return found


def _alive(pids) -> set:
    return set(pids) & set(_process_table())


class Cluster:
    def __init__(self, directory: str):
        self.dir = directory
        self.rest_port = _free_port()
        self.env = dict(os.environ, FLINK_CLUSTER_DIR=directory, PYTHON=sys.executable,
                        FLINK_REST_PORT=str(self.rest_port), FLINK_RPC_PORT=str(_free_port()))

    def script(self, *args, timeout=180, check=True):
        done = subprocess.run([SCRIPT, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)
        if check:
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done

    def rest(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.rest_port}{path}",
                                    timeout=10) as answer:
            return json.load(answer)

    def pids(self, kind: str) -> list:
        found = []
        pid_dir = os.path.join(self.dir, "pid")
        for name in os.listdir(pid_dir):
            if name.endswith(f"-{kind}.pid"):
                with open(os.path.join(pid_dir, name)) as f:
                    found += [int(p) for p in f.read().split()]
        return sorted(_alive(found))

    def submit(self, *args):
        return subprocess.Popen([SCRIPT, "submit", JOB, *args], env=self.env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)

    def run_job(self, *args, timeout: float):
        """Submit a job and wait for its client: (exit code, output); killed after timeout."""
        job = self.submit(*args)
        try:
            output, _ = job.communicate(timeout=timeout)
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
        return job.returncode, output


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(str(tmp_path_factory.mktemp("flink-cluster")))
    try:
        cluster.script("start", "-n", "2", "-s", "1")
        yield cluster
    finally:
        started = cluster.pids("taskexecutor") + cluster.pids("standalonesession") \
            if os.path.isdir(os.path.join(cluster.dir, "pid")) else []
        workers = _descendants(started)
        cluster.script("stop", check=False)
        deadline = time.time() + 30
        while _alive(started) | _alive(workers) and time.time() < deadline:
            time.sleep(0.5)
        assert not _alive(started) | _alive(workers), "the cluster left processes running"


@pytest.mark.compat
def test_cluster_script_reports_status(cluster):
    done = cluster.script("status")
    assert '"taskmanagers":2' in done.stdout and '"slots-total":2' in done.stdout
    assert len(cluster.pids("taskexecutor")) == 2 and len(cluster.pids("standalonesession")) == 1


@pytest.mark.compat
def test_estimator_fit_and_transform_on_the_cluster(cluster, tmp_path):
    out = tmp_path / "fit.json"
    returncode, output = cluster.run_job("fit", str(out), timeout=300)
    assert returncode == 0, output[-4000:]
    result = json.loads(out.read_text())
    assert result["rows"] == 2000
    assert result["max_error"] < 0.05  # y = 3x + 1 learned by 2 DDP workers
    assert result["train_rows"] == [2000] * 15  # every row seen once per epoch across ranks

    # Both jobs ran on the cluster, and the training operator on both TaskManagers.
    jobs = cluster.rest("/jobs/overview")["jobs"]
    assert sorted(j["state"] for j in jobs) == ["FINISHED", "FINISHED"]
    training = [j for j in jobs if "_ftm_sharded_" in j["name"]]
    assert len(training) == 1
    vertices = cluster.rest(f"/jobs/{training[0]['jid']}")["vertices"]
    trainer = [v for v in vertices if "PythonGroupWindowAggregate" in v["name"]]
    assert len(trainer) == 1 and trainer[0]["parallelism"] == 2
    places = cluster.rest(f"/jobs/{training[0]['jid']}/vertices/{trainer[0]['id']}"
                          f"/taskmanagers")["taskmanagers"]
    assert len({p["taskmanager-id"] for p in places}) == 2


def test_more_workers_than_slots_fails_clearly_on_the_cluster(cluster, tmp_path):
    out = tmp_path / "outcome.json"
    returncode, output = cluster.run_job("too-many-workers", str(out), timeout=240)
    assert returncode == 0, output[-4000:]
    outcome = json.loads(out.read_text())
    assert outcome["error"] == "WorkerError", outcome
    assert "3 task slots at once" in outcome["message"], outcome
    assert outcome["seconds"] < 120, outcome
    assert cluster.rest("/overview")["jobs-running"] == 0


def test_a_fit_survives_a_lost_task_manager_and_its_replacement(cluster, tmp_path):
    """max_failures: a TaskManager killed mid-fit; the test starts a replacement; the client
    resubmits and the workers resume from the newest checkpoint."""
    from flink_torch_ml.core.checkpoint import newest_checkpoint

    out, checkpoints = tmp_path / "fit.json", tmp_path / "ckpt"
    job = cluster.submit("fit-resilient", str(out), str(checkpoints))
    try:
        deadline = time.time() + 180
        while job.poll() is None and time.time() < deadline:
            checkpoint, _ = newest_checkpoint(str(checkpoints))
            if checkpoint is not None and checkpoint.epoch >= 2:
                break
            time.sleep(0.2)
        assert job.poll() is None and checkpoint is not None, "no checkpoint was written"
        task_managers = cluster.pids("taskexecutor")
        os.kill(task_managers[0], signal.SIGKILL)
        cluster.script("add-taskmanager")
        output, _ = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 0, output[-4000:]
    result = json.loads(out.read_text())
    assert result["epochs"] == list(range(1, 9))  # every epoch once
    assert result["attempts"][0] == 0 and result["attempts"][-1] >= 1
    assert result["max_error"] < 0.05
    assert "resuming after epoch" in output
    assert len(cluster.pids("taskexecutor")) == 2


@pytest.fixture(scope="module")
def java_jars(cluster, tmp_path_factory):
    """The Java API and its examples (one job jar), built with javac for this module."""
    if shutil.which("javac") is None:
        pytest.skip("the Java API needs a JDK (javac) to build")
    build = str(tmp_path_factory.mktemp("java-build"))
    cluster.env["JAVA_BUILD_DIR"] = build
    subprocess.run([os.path.join(ROOT, "scripts", "java.sh"), "build"], env=cluster.env,
                   check=True, capture_output=True, timeout=300)
    return os.path.join(build, "flink-torch-ml-examples.jar")


def test_the_java_example_runs_with_flink_run_on_the_cluster(cluster, java_jars, tmp_path):
    """The seed's Java example as a job jar: trains at world size 2 and infers into the print
    sink on the TaskManagers; its client (the flink CLI's JVM) hosts the Python side."""
    weights = tmp_path / "weights.json"
    done = cluster.script("submit-jar", java_jars,
                          "org.flinkextended.flink.ml.pytorch.examples.LinearExample",
                          os.path.join(ROOT, "examples", "java", "linear_entry.py"),
                          str(weights), timeout=400)
    trained = json.loads(weights.read_text())
    assert abs(trained["w"] - 2) < 1e-3 and abs(trained["b"] - 1) < 1e-3, done.stdout[-2000:]
    printed = "".join(open(os.path.join(cluster.dir, "log", name)).read()
                      for name in os.listdir(os.path.join(cluster.dir, "log"))
                      if name.endswith(".out"))
    rows = re.findall(r"\+I\[([-0-9.eE]+), ([-0-9.eE]+)\]", printed)
    assert sorted(float(x) for x, _ in rows) == [i / 1000.0 for i in range(1000)]
    jobs = cluster.rest("/jobs/overview")["jobs"]
    assert sum(j["state"] == "FINISHED" for j in jobs) >= 2
    # what Flink's web UI and REST API show of each job's configuration holds no secret: no
    # key naming one, no long random-looking value (the run's secret travels inside the job's
    # functions, the bridge's token on the helper's stdin)
    for job in jobs:
        shown = json.dumps([cluster.rest(f"/jobs/{job['jid']}/config"),
                            cluster.rest(f"/jobs/{job['jid']}/jobmanager/config")])
        assert not re.search(r"secret|token|auth", shown, re.IGNORECASE), shown[:2000]
        assert not re.search(r"[A-Za-z0-9+_]{40,}", shown), shown[:2000]  # hex or base64


def test_a_sql_script_scores_with_a_saved_model_on_the_cluster(cluster, java_jars, tmp_path,
                                                                batch_env):
    """examples/sql/score_points.sql: a table, a function from a saved ONNX model, a SELECT;
    every prediction equals PyTorchModel.transform's for the same row."""
    from pyflink.table import DataTypes

    from flink_torch_ml import PyTorchModel
    from tests.models import ScalarRegressor

    models = tmp_path / "models"
    PyTorchModel(ScalarRegressor(), feature_cols=["x1", "x2"],
                 prediction_col="y").save(str(models / "regressor"), format="onnx")
    cluster.env["FLINK_TORCH_ML_SQL_MODELS"] = str(models)
    try:
        done = cluster.script("sql", os.path.join(ROOT, "examples", "sql", "score_points.sql"),
                              timeout=300)
    finally:
        del cluster.env["FLINK_TORCH_ML_SQL_MODELS"]
    number = r"\s*([-0-9.eE]+)\s*"
    rows = [tuple(float(v) for v in row) for row in
            re.findall(rf"\|\s*\+I\s*\|{number}\|{number}\|{number}\|", done.stdout)]
    assert len(rows) == 50, done.stdout[-3000:]
    table = batch_env.from_elements([(x1, x2) for x1, x2, _ in rows],
                                    DataTypes.ROW([DataTypes.FIELD("x1", DataTypes.DOUBLE()),
                                                   DataTypes.FIELD("x2", DataTypes.DOUBLE())]))
    model = PyTorchModel.load(batch_env, str(models / "regressor"))
    with model.transform(table)[0].execute().collect() as result:
        expected = {(r[0], r[1]): r[2] for r in result}
    for x1, x2, y in rows:
        assert abs(expected[(x1, x2)] - y) < 1e-5


def test_task_manager_killed_mid_training_fails_clearly(cluster, tmp_path):
    """Runs last in this module: it leaves the cluster with one TaskManager."""
    markers = tmp_path / "markers"
    markers.mkdir()
    job = cluster.submit("train-long", str(markers))
    try:
        deadline = time.time() + 120
        def ready():
            return sorted(n for n in os.listdir(markers) if not n.endswith(".tmp"))

        while len(ready()) < 2 and job.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert ready() == ["rank-0", "rank-1"], \
            (job.poll(), job.stdout.read() if job.poll() is not None else "")
        task_managers = cluster.pids("taskexecutor")
        workers = _descendants(task_managers)
        rank1 = json.loads((markers / "rank-1").read_text())["pid"]
        assert rank1 in workers, "the PyTorch worker is not a process of a TaskManager"
        victim = next(tm for tm in task_managers if rank1 in _descendants([tm]))

        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)
        output, _ = job.communicate(timeout=120)
        took = time.time() - killed_at
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)

    assert job.returncode != 0, output[-4000:]
    assert "TaskManagerLostError" in output, output[-4000:]
    assert "TaskManager running PyTorch workers" in output
    assert "CLUSTER-TRAIN-LONG-FINISHED" not in output
    assert took < 90, f"the client needed {took:.0f} s to report the lost TaskManager"

    # Nothing of the run is left: the job is not running, and every Python worker is gone,
    # on the dead TaskManager and on the surviving one.
    deadline = time.time() + 60
    while _alive(workers) and time.time() < deadline:
        time.sleep(0.5)
    assert not _alive(workers), f"processes left running: {_alive(workers)}"
    assert cluster.rest("/overview")["jobs-running"] == 0
    assert cluster.pids("taskexecutor") == [tm for tm in task_managers if tm != victim]
