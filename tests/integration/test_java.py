"""The Java API (java/, org.flinkextended.flink.ml.pytorch): DL-on-Flink's Java example run as
a Java program on Flink's embedded mini-cluster (train at world size 2, then inference into the
print sink), the same table and entry giving the same weights through the Python API, and
failures reaching the Java caller: an entry that raises (rank and traceback), a world size
above the environment's slots (refused before submission). Built with javac against the jars
of the installed apache-flink wheel (scripts/java.sh), no Maven."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from pyflink.table import DataTypes

from flink_torch_ml import PyTorchClusterConfig, pytorch_utils
from flink_torch_ml.java_bridge import load_entry

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPT = os.path.join(ROOT, "scripts", "java.sh")
ENTRY = os.path.join(ROOT, "examples", "java", "linear_entry.py")
EXAMPLE = "org.flinkextended.flink.ml.pytorch.examples.LinearExample"

pytestmark = pytest.mark.skipif(shutil.which("javac") is None,
                                reason="the Java API needs a JDK (javac) to build")


@pytest.fixture(scope="module")
def java(tmp_path_factory):
    """Build the jars once; return a runner of Java main classes (stdout+stderr, exit code)."""
    build = str(tmp_path_factory.mktemp("java-build"))
    env = dict(os.environ, PYTHON=sys.executable, JAVA_BUILD_DIR=build,
               PYFLINK_CLIENT_EXECUTABLE=sys.executable)
    subprocess.run([SCRIPT, "build"], env=env, check=True, capture_output=True, timeout=300)

    def run(*args, timeout=300):
        done = subprocess.run([SCRIPT, "run", *args], env=env, capture_output=True, text=True,
                              timeout=timeout)
        return done.returncode, done.stdout + done.stderr

    run.env, run.build = env, build
    return run


def predictions(output):
    """The print sink's rows: (x, prediction) pairs."""
    return [(float(a), float(b)) for a, b in
            re.findall(r"\+I\[([-0-9.eE]+), ([-0-9.eE]+)\]", output)]


def test_the_seed_java_example_trains_and_infers_like_the_python_api(java, stream_env, tmp_path):
    weights_path = str(tmp_path / "java.json")
    code, output = java(EXAMPLE, ENTRY, weights_path)
    assert code == 0, output[-4000:]
    trained = json.load(open(weights_path))
    assert abs(trained["w"] - 2) < 1e-3 and abs(trained["b"] - 1) < 1e-3  # y = 2x + 1
    rows = predictions(output)
    assert sorted(x for x, _ in rows) == [i / 1000.0 for i in range(1000)]
    assert all(abs(p - (trained["w"] * x + trained["b"])) < 1e-9 for x, p in rows)

    # the same table and entry through the Python API: the same weights
    table = stream_env.from_elements(
        [(i / 1000.0, 2 * (i / 1000.0) + 1) for i in range(1000)],
        DataTypes.ROW([DataTypes.FIELD("x", DataTypes.DOUBLE()),
                       DataTypes.FIELD("y", DataTypes.DOUBLE())]))
    python_path = str(tmp_path / "python.json")
    config = (PyTorchClusterConfig.new_builder().set_world_size(2)
              .set_node_entry(load_entry(ENTRY, "train_entry"))
              .set_property("input_types", "FLOAT_64,FLOAT_64")
              .set_property("model_path", python_path).set_property("fail_on_rank", "")
              .build())
    pytorch_utils.train(None, config, table)
    through_python = json.load(open(python_path))
    assert through_python["w"] == pytest.approx(trained["w"], rel=1e-9, abs=1e-12)
    assert through_python["b"] == pytest.approx(trained["b"], rel=1e-9, abs=1e-12)


def test_an_entry_that_raises_fails_the_java_job_naming_the_rank_with_its_traceback(java,
                                                                                  tmp_path):
    code, output = java(EXAMPLE, ENTRY, str(tmp_path / "w.json"), "2", "1")
    assert code != 0
    assert "this entry was asked to fail (fail_on_rank)" in output
    assert re.search(r"[Rr]ank 1\b", output), output[-4000:]
    assert "linear_entry.py" in output and "in train_entry" in output  # the Python traceback
    assert not os.path.exists(tmp_path / "w.json")


def test_a_world_size_above_the_slots_is_refused_before_submission(java, tmp_path):
    classes = str(tmp_path / "classes")
    os.makedirs(classes)
    classpath = subprocess.run([SCRIPT, "classpath"], env=java.env, capture_output=True,
                               text=True, check=True).stdout.strip()
    subprocess.run(["javac", "-nowarn", "-d", classes, "-cp", classpath,
                    os.path.join(os.path.dirname(__file__), "java", "SlotsCheck.java")],
                   check=True, capture_output=True, timeout=120)
    shutil.copytree(classes, os.path.join(java.build, "example-classes"), dirs_exist_ok=True)
    subprocess.run(["jar", "uf", os.path.join(java.build, "flink-torch-ml-examples.jar"),
                    "-C", classes, "SlotsCheck.class"], check=True, timeout=60)
    code, output = java("SlotsCheck", ENTRY, timeout=180)
    assert code == 0, output[-4000:]
    assert "REFUSED ValueError" in output, output[-4000:]
    assert "taskmanager.numberOfTaskSlots=1" in output and "world_size=2" in output
