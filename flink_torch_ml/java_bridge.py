"""The Python side of the Java API (``org.flinkextended.flink.ml.pytorch.PyTorchUtils``).

A Java job's JVM starts ``python -m flink_torch_ml.java_bridge`` once: this process connects
to the JVM's py4j gateway (loopback, with the random token the JVM wrote on its stdin),
makes PyFlink use that gateway, and registers a driver the JVM calls to build training and
inference jobs on the JVM's own table environment with :mod:`flink_torch_ml.pytorch_utils`.
It hosts the runs' rendezvous stores, so it lives while its parent JVM does and exits when
that JVM is gone. Errors go back to Java as text (type, message, traceback): nothing is
pickled.
"""

import hashlib
import importlib.util
import os
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

from ._version import __version__
from .cluster_config import PyTorchClusterConfig

__all__ = ["load_entry", "main"]

#: the key the JVM waits for in its entry-point map (PythonBridge.DRIVER_KEY)
DRIVER_KEY = "flink_torch_ml.driver"
#: the gateway's port (PythonBridge.PORT_VARIABLE); the token arrives on stdin
PORT_VARIABLE = "FLINK_TORCH_ML_GATEWAY_PORT"


def load_entry(path: str, name: str) -> Callable:
    """The function ``name`` of the Python file ``path`` (a node entry named from Java).

    The file is loaded as a module of its own (named after its path, so two files with the same
    name do not collide); its functions and classes then travel inside the job by value.
    """
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"The node entry's Python file {path!r} does not exist "
                                f"(setNodeEntry(path, function): give the script's path)")
    absolute = os.path.abspath(path)
    module_name = "java_node_entry_" + hashlib.sha256(absolute.encode()).hexdigest()[:12]
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, absolute)
        if spec is None or spec.loader is None:
            raise ImportError(f"Cannot load {absolute!r} as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    entry = getattr(module, name, None)
    if entry is None:
        defined = sorted(n for n, v in vars(module).items()
                         if callable(v) and not n.startswith("_")
                         and getattr(v, "__module__", None) == module_name)
        raise AttributeError(f"{absolute!r} has no function {name!r} (it defines: "
                             f"{', '.join(defined) or 'no functions'})")
    return entry


def _config(world_size: int, path: str, name: str,
            properties: Dict[str, str]) -> PyTorchClusterConfig:
    builder = PyTorchClusterConfig.new_builder().set_world_size(int(world_size))
    builder.set_node_entry(load_entry(path, name))
    for key, value in properties.items():
        builder.set_property(str(key), str(value))
    return builder.build()


#: network memory of the embedded mini-cluster a Java job starts, where unset
LOCAL_NETWORK_MEMORY = "128mb"


def _size_local_network(t_env: Any) -> None:
    """On Flink's embedded mini-cluster, where unset, give the job's TaskManager 128 MB of
    network memory (``taskmanager.memory.network.min``/``max``): with the default 64 MB a
    training job built on a Java table environment fails to start ("Insufficient number of
    network buffers", measured on Flink 2.3). A cluster's TaskManagers keep their own."""
    from .client.job import is_local

    if not is_local(t_env):
        return
    config = t_env.get_config()
    for key in ("taskmanager.memory.network.min", "taskmanager.memory.network.max"):
        if config.get(key, None) is None:
            config.set(key, LOCAL_NETWORK_MEMORY)


def _failure(error: BaseException) -> str:
    """An error as the JVM reads it: type NUL message NUL traceback."""
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return f"{type(error).__name__}\0{error}\0{text}"


class _Driver:
    """What the JVM calls (the Java interface ``bridge.PythonDriver``)."""

    def __init__(self, gateway: Any):
        self._gateway = gateway

    def _wrap(self, j_t_env: Any, j_statement_set: Any, j_table: Any):
        from pyflink.table import StatementSet, Table, TableEnvironment
        from pyflink.table import StreamTableEnvironment

        stream = self._gateway.jvm.org.apache.flink.table.api.bridge.java.StreamTableEnvironment
        if stream._java_lang_class.isInstance(j_t_env):
            t_env: TableEnvironment = StreamTableEnvironment(j_t_env)
        else:
            t_env = TableEnvironment(j_t_env)
        _size_local_network(t_env)
        return t_env, StatementSet(j_statement_set, t_env), Table(j_table, t_env)

    def _prepare(self, j_t_env, j_statement_set, j_table, world_size, entry_path, entry_func,
                 properties):
        """The PyFlink statement set and table around the JVM's objects, and the config."""
        _, statement_set, table = self._wrap(j_t_env, j_statement_set, j_table)
        return statement_set, table, _config(world_size, entry_path, entry_func,
                                             dict(properties))

    def train(self, j_t_env, j_statement_set, j_table, world_size, entry_path, entry_func,
              properties, epoch) -> Optional[str]:
        try:
            from . import pytorch_utils

            statement_set, table, config = self._prepare(
                j_t_env, j_statement_set, j_table, world_size, entry_path, entry_func, properties)
            pytorch_utils.train(statement_set, config, table, epoch=int(epoch))
            return None
        except BaseException as error:  # reaches Java as PyTorchException
            return _failure(error)

    def inference(self, j_t_env, j_statement_set, j_table, world_size, entry_path,
                  entry_func, properties, output_names) -> Any:
        try:
            from . import pytorch_utils

            statement_set, table, config = self._prepare(
                j_t_env, j_statement_set, j_table, world_size, entry_path, entry_func, properties)
            names: List[str] = [str(n) for n in output_names]
            result = pytorch_utils.inference(statement_set, table, config, names or None)
            return result._j_table
        except BaseException as error:
            return _failure(error)

    def describe(self) -> str:
        return f"flink-torch-ml {__version__}, Python {sys.version.split()[0]} ({sys.executable})"

    class Java:
        implements = ["org.flinkextended.flink.ml.pytorch.bridge.PythonDriver"]


def _connect(port: int, token: str) -> Any:
    """A py4j gateway to the JVM, installed as PyFlink's own (as PyFlink does for a gateway it
    did not launch), with an authenticated callback server for the driver."""
    from py4j.java_gateway import CallbackServerParameters, GatewayParameters, JavaGateway
    from pyflink import java_gateway

    gateway = JavaGateway(
        gateway_parameters=GatewayParameters(port=port, auth_token=token, auto_convert=True),
        callback_server_parameters=CallbackServerParameters(
            port=0, daemonize=True, daemonize_connections=True, auth_token=token))
    with java_gateway._lock:
        callback = gateway.get_callback_server()
        gateway.jvm.org.apache.flink.client.python.PythonEnvUtils.resetCallbackClient(
            gateway.java_gateway_server, callback.get_listening_address(),
            callback.get_listening_port())
        java_gateway.import_flink_view(gateway)
        java_gateway.install_exception_handler()
        java_gateway.install_py4j_hooks()
        gateway.entry_point.put("PythonFunctionFactory", java_gateway.PythonFunctionFactory())
        gateway.entry_point.put("Watchdog", java_gateway.Watchdog())
        java_gateway._gateway = gateway
    return gateway


def main() -> None:
    """Serve the parent JVM until it is gone."""
    port = os.environ.get(PORT_VARIABLE)
    token = sys.stdin.readline().strip()
    if not port or not token:
        sys.exit(f"flink_torch_ml.java_bridge is started by the Java API (PyTorchUtils), "
                 f"which passes {PORT_VARIABLE} and a token on stdin")
    parent = os.getppid()
    gateway = _connect(int(port), token)
    gateway.entry_point.put(DRIVER_KEY, _Driver(gateway))
    while os.getppid() == parent:  # until the JVM is gone (a shutdown hook also stops us)
        time.sleep(1.0)
    gateway.shutdown()


if __name__ == "__main__":
    main()
