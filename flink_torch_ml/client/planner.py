"""Calls into Flink's SQL planner that work whichever py4j connection serves them.

Flink's planner reads Calcite's metadata providers from a Java ThreadLocal that is set only
on the Java thread that created the TableEnvironment (FLINK-23020, unresolved). py4j serves
each Python-side connection on its own Java thread and hands a Python thread whichever pooled
connection is free, so once a second connection exists (a second Python thread used the
gateway, or a Java object was garbage-collected on one) a planner call can land on a thread
without the providers and fail with ``NullPointerException: metadataHandlerProvider``. Worse,
the planner caches the metadata query built there, so every later planner call fails too,
from any thread. :func:`planned` sets the providers on the serving thread and drops the
cached query first, and once more after that error. Runs in the client process.
"""

import logging
from typing import Callable, TypeVar

__all__ = ["planned", "prepare_planner"]

_log = logging.getLogger(__name__)
_SYMPTOM = "metadataHandlerProvider"
_ATTEMPTS = 3
T = TypeVar("T")


def prepare_planner(t_env) -> None:
    """Give the Java threads of every idle pooled py4j connection (so the one this Python
    thread's next call takes) the planner's metadata providers, as the thread that created
    ``t_env`` has, and drop a metadata query the planner may have cached from a thread
    without them. Never raises: on a Flink whose planner differs, the planner call itself
    reports what is wrong."""
    try:
        _install_on_idle_connections(t_env)
    except Exception as error:  # noqa: BLE001 - a workaround must not add failures
        _log.debug("could not prepare the planner's metadata providers: %s", error)


def planned(t_env, call: Callable[[], T]) -> T:
    """``call()`` (a Table API call that plans a query), made safe from FLINK-23020."""
    attempt = 1
    while True:
        prepare_planner(t_env)
        try:
            return call()
        except Exception as error:
            if _SYMPTOM not in str(error) or attempt >= _ATTEMPTS:
                raise
            attempt += 1
            _log.debug("planner call hit FLINK-23020 on a py4j thread; preparing it again")


def _install_on_idle_connections(t_env) -> None:
    """:func:`_install` through each idle connection of py4j's pool in turn (alone in the
    pool, it serves the calls), then the pool as it was, its top connection on top."""
    from pyflink.java_gateway import get_gateway

    pool = getattr(get_gateway()._gateway_client, "deque", None)
    if pool is None:  # not py4j's pooled GatewayClient: prepare whichever thread serves
        _install(t_env)
        return
    taken = []  # the former top first
    while True:
        try:
            taken.append(pool.pop())
        except IndexError:
            break
    if not taken:
        _install(t_env)
        return
    order = list(reversed(taken))  # bottom first, so that the former top ends on top
    turns, back = set(), set()
    try:
        for connection in order:
            turns.add(id(connection))
            pool.append(connection)
            try:
                _install(t_env)
            finally:
                try:
                    pool.remove(connection)
                    back.add(id(connection))
                except ValueError:  # another thread took it meanwhile and gives it back
                    pass
    finally:
        pool.extend(c for c in order if id(c) in back or id(c) not in turns)


def _install(t_env) -> None:
    from pyflink.java_gateway import get_gateway

    gateway = get_gateway()
    jvm = gateway.jvm
    planner = t_env._j_tenv.getPlanner()
    loader = planner.getClass().getClassLoader()

    def load(name: str):
        return jvm.java.lang.Class.forName(name, True, loader)

    providers = load("org.apache.calcite.rel.metadata.RelMetadataQueryBase") \
        .getField("THREAD_PROVIDERS").get(None)
    if providers.get() is None:
        providers.set(_flink_providers(gateway, load))
    planner.createRelBuilder().getCluster().invalidateMetadataQuery()


def _flink_providers(gateway, load):
    """``JaninoRelMetadataProvider.of(FlinkDefaultRelMetadataProvider.INSTANCE)``, as
    Flink's own planner (and its SQL gateway's workaround) installs."""
    jvm = gateway.jvm
    no_types = gateway.new_array(jvm.java.lang.Class, 0)
    flink = load("org.apache.flink.table.planner.plan.metadata.FlinkDefaultRelMetadataProvider") \
        .getMethod("INSTANCE", no_types).invoke(None, gateway.new_array(jvm.java.lang.Object, 0))
    types = gateway.new_array(jvm.java.lang.Class, 1)
    types[0] = load("org.apache.calcite.rel.metadata.RelMetadataProvider")
    args = gateway.new_array(jvm.java.lang.Object, 1)
    args[0] = flink
    janino = load("org.apache.calcite.rel.metadata.JaninoRelMetadataProvider")
    return janino.getMethod("of", types).invoke(None, args)
