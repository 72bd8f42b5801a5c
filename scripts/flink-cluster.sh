#!/usr/bin/env bash
# A standalone Flink cluster on loopback, started from the installed apache-flink wheel:
# one JobManager and N TaskManagers, each its own JVM, with conf/log/pid directories of
# its own (nothing is written into the wheel). See docs/guide/cluster.md.
#
#   scripts/flink-cluster.sh start [-n TASKMANAGERS] [-s SLOTS_PER_TASKMANAGER]
#   scripts/flink-cluster.sh add-taskmanager      # one more TaskManager (e.g. a replacement)
#   scripts/flink-cluster.sh status
#   scripts/flink-cluster.sh submit job.py [job args...]   # flink run with the right Python
#   scripts/flink-cluster.sh submit-jar JAR CLASS [args...] # flink run of a Java job (Java API)
#   scripts/flink-cluster.sh sql script.sql                # a SQL script, in a Java job
#   scripts/flink-cluster.sh stop
#
# Environment: FLINK_CLUSTER_DIR (default ./.flink-cluster), PYTHON (the interpreter that
# has flink_torch_ml installed; default .venv/bin/python), FLINK_REST_PORT (8081),
# FLINK_RPC_PORT (6123), FLINK_TM_MEMORY (2048m), FLINK_START_TIMEOUT (90 seconds).
set -euo pipefail

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
here="$(cd "$(dirname "$0")/.." && pwd -P)"
dir="${FLINK_CLUSTER_DIR:-$here/.flink-cluster}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd -P)"

die() { echo "flink-cluster: $*" >&2; exit 1; }

load_state() {
    [[ -f "$dir/cluster.env" ]] || die "no cluster state in $dir (run: $0 start)"
    # shellcheck disable=SC1091
    source "$dir/cluster.env"
    export FLINK_CONF_DIR="$dir/conf" FLINK_LOG_DIR="$dir/log" FLINK_PID_DIR="$dir/pid"
}

alive() {  # running, not a zombie left by a killed daemon
    local state
    state="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != Z* ]]
}

pids_of() {  # live pids recorded by flink-daemon.sh for "standalonesession" / "taskexecutor"
    local file pid  # the file name holds $USER, which may be empty
    for file in "$dir"/pid/flink-*-"$1".pid; do
        [[ -f "$file" ]] || continue
        while read -r pid; do
            alive "$pid" && echo "$pid"
        done < "$file"
    done
    return 0
}

descendants() {  # every process below the given pids
    local table todo=" $* " found="" pid ppid
    table="$(ps -e -o pid=,ppid=)"
    while [[ -n "${todo// /}" ]]; do
        local next=""
        while read -r pid ppid; do
            [[ "$todo" == *" $ppid "* && " $found " != *" $pid "* ]] && next="$next $pid "
        done <<< "$table"
        found="$found $next"
        todo="$next"
    done
    echo $found
}

overview() {  # the REST overview as JSON, empty when the JobManager does not answer
    "$PY" -c 'import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())
except Exception:
    pass' "http://127.0.0.1:$REST_PORT/overview"
}

registered_taskmanagers() {
    overview | "$PY" -c 'import json,sys
text = sys.stdin.read()
print(json.loads(text)["taskmanagers"] if text else 0)'
}

start() {
    local taskmanagers=2 slots=1 opt
    while getopts "n:s:" opt; do
        case "$opt" in
            n) taskmanagers="$OPTARG" ;;
            s) slots="$OPTARG" ;;
            *) die "usage: $0 start [-n TASKMANAGERS] [-s SLOTS_PER_TASKMANAGER]" ;;
        esac
    done
    [[ "$taskmanagers" =~ ^[1-9][0-9]*$ ]] || die "-n wants a positive number, got $taskmanagers"
    [[ "$slots" =~ ^[1-9][0-9]*$ ]] || die "-s wants a positive number, got $slots"
    if [[ -f "$dir/cluster.env" ]]; then
        load_state
        if [[ -n "$(pids_of standalonesession)$(pids_of taskexecutor)" ]]; then
            die "a cluster from $dir is running (REST on 127.0.0.1:$REST_PORT); stop it first"
        fi
    fi

    local py="${PYTHON:-}"
    if [[ -z "$py" ]]; then
        if [[ -x "$here/.venv/bin/python" ]]; then py="$here/.venv/bin/python"; else py=python3; fi
    fi
    py="$(command -v "$py")" || die "no Python interpreter '$py'"
    "$py" -c "import flink_torch_ml" 2>/dev/null ||
        die "$py cannot import flink_torch_ml: run 'make venv' or set PYTHON to an interpreter that has it"
    local home
    home="$("$py" -c 'import os, pyflink; print(os.path.dirname(os.path.abspath(pyflink.__file__)))')"
    [[ -x "$home/bin/jobmanager.sh" ]] || die "no bin/jobmanager.sh in the apache-flink wheel at $home"

    rm -rf "$dir/conf" "$dir/log" "$dir/pid"
    mkdir -p "$dir/conf" "$dir/log" "$dir/pid" "$dir/tmp"
    cp "$home"/conf/log4j*.properties "$home"/conf/logback*.xml "$dir/conf/" 2>/dev/null || true
    local rest_port="${FLINK_REST_PORT:-8081}" rpc_port="${FLINK_RPC_PORT:-6123}"
    # Keep the wheel's JVM options (needed on Java 17+), replace everything else.
    "$py" - "$home/conf/config.yaml" "$dir/conf/config.yaml" <<EOF
import json, sys
try:  # PyYAML (Flink 2.x's Beam brings it) or ruamel.yaml (every PyFlink line needs it)
    from yaml import safe_load
except ImportError:
    from ruamel.yaml import YAML
    safe_load = YAML(typ="safe").load
with open(sys.argv[1]) as f:
    wheel = safe_load(f) or {}
java_opts = (((wheel.get("env") or {}).get("java") or {}).get("opts") or {}).get("all", "")
config = {
    "env.java.opts.all": java_opts,
    "jobmanager.rpc.address": "127.0.0.1",
    "jobmanager.rpc.port": int("$rpc_port"),
    "jobmanager.bind-host": "127.0.0.1",
    "jobmanager.memory.process.size": "1024m",
    "taskmanager.host": "127.0.0.1",
    "taskmanager.bind-host": "127.0.0.1",
    "taskmanager.numberOfTaskSlots": int("$slots"),
    "taskmanager.memory.process.size": "${FLINK_TM_MEMORY:-2048m}",
    "rest.address": "127.0.0.1",
    "rest.bind-address": "127.0.0.1",
    "rest.port": int("$rest_port"),
    "parallelism.default": 1,
    "io.tmp.dirs": "$dir/tmp",
    "python.executable": "$py",
    "python.client.executable": "$py",
    # Training jobs fail fast and the client reports why; restarting would replay the run.
    "restart-strategy.type": "none",
}
with open(sys.argv[2], "w") as f:  # flat keys; JSON scalars are YAML scalars
    f.writelines(f"{key}: {json.dumps(value)}\n" for key, value in config.items())
EOF
    cat > "$dir/cluster.env" <<EOF
FLINK_HOME='$home'
PY='$py'
REST_PORT='$rest_port'
TASKMANAGERS='$taskmanagers'
SLOTS='$slots'
EOF
    load_state
    "$FLINK_HOME/bin/jobmanager.sh" start > "$dir/log/start.out" 2>&1
    local i
    for ((i = 0; i < taskmanagers; i++)); do
        "$FLINK_HOME/bin/taskmanager.sh" start >> "$dir/log/start.out" 2>&1
    done
    local deadline=$((SECONDS + ${FLINK_START_TIMEOUT:-90})) seen=0
    while ((SECONDS < deadline)); do
        seen="$(registered_taskmanagers)"
        if [[ "$seen" == "$taskmanagers" ]]; then
            echo "Flink cluster up: 1 JobManager + $taskmanagers TaskManager(s) x $slots slot(s);" \
                 "web UI/REST http://127.0.0.1:$REST_PORT; logs in $dir/log"
            return 0
        fi
        if [[ -z "$(pids_of standalonesession)" ]]; then break; fi
        sleep 1
    done
    echo "flink-cluster: cluster did not come up ($seen of $taskmanagers TaskManagers registered);" \
         "last JobManager log lines:" >&2
    tail -n 20 "$dir"/log/*standalonesession*.log 2>/dev/null >&2 || cat "$dir/log/start.out" >&2
    stop || true
    exit 1
}

add_taskmanager() {
    load_state
    local before
    before="$(registered_taskmanagers)"
    "$FLINK_HOME/bin/taskmanager.sh" start >> "$dir/log/start.out" 2>&1
    local deadline=$((SECONDS + ${FLINK_START_TIMEOUT:-90}))
    while ((SECONDS < deadline)); do
        if (( $(registered_taskmanagers) > before )); then
            echo "TaskManager added: $(registered_taskmanagers) registered"
            return 0
        fi
        sleep 0.5
    done
    die "the new TaskManager did not register within ${FLINK_START_TIMEOUT:-90} s"
}

stop() {
    [[ -f "$dir/cluster.env" ]] || { echo "no cluster state in $dir; nothing to stop"; return 0; }
    load_state
    local pids children pid
    pids="$(pids_of taskexecutor) $(pids_of standalonesession)"
    children="$(descendants $pids)"
    if [[ -n "${pids// /}" ]]; then
        "$FLINK_HOME/bin/taskmanager.sh" stop-all > /dev/null 2>&1 || true
        "$FLINK_HOME/bin/jobmanager.sh" stop-all > /dev/null 2>&1 || true
        local deadline=$((SECONDS + 20))
        while ((SECONDS < deadline)); do
            local running=""
            for pid in $pids; do if alive "$pid"; then running="$running $pid"; fi; done
            [[ -z "$running" ]] && break
            sleep 0.5
        done
        for pid in $pids; do kill -9 "$pid" 2>/dev/null || true; done
    fi
    # Python UDF workers are children of the TaskManagers; none may outlive the cluster.
    for pid in $children; do if alive "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi; done
    rm -f "$dir"/pid/*.pid
    echo "Flink cluster in $dir stopped"
}

status() {
    [[ -f "$dir/cluster.env" ]] || { echo "stopped (no cluster state in $dir)"; return 3; }
    load_state
    local jm tms text
    jm="$(pids_of standalonesession | tr '\n' ' ')"
    tms="$(pids_of taskexecutor | tr '\n' ' ')"
    text="$(overview)"
    if [[ -z "$jm" && -z "$tms" ]]; then echo "stopped"; return 3; fi
    echo "JobManager pid(s): ${jm:-none}; TaskManager pid(s): ${tms:-none}"
    if [[ -n "$text" ]]; then echo "REST http://127.0.0.1:$REST_PORT overview: $text"
    else echo "REST http://127.0.0.1:$REST_PORT does not answer"; return 1; fi
}

submit() {
    [[ $# -ge 1 ]] || die "usage: $0 submit job.py [args...]"
    load_state
    local job="$1"; shift
    "$FLINK_HOME/bin/flink" run -m "127.0.0.1:$REST_PORT" -pyclientexec "$PY" -pyexec "$PY" \
        -py "$job" "$@"
}

python_jar() {  # flink-python: Python functions and the py4j gateway for Java/SQL clients
    local jar
    jar="$(ls "$FLINK_HOME"/opt/flink-python-*.jar 2>/dev/null | head -n 1)"
    [[ -n "$jar" ]] || die "no opt/flink-python-*.jar in the apache-flink wheel at $FLINK_HOME"
    echo "$jar"
}

submit_jar() {
    [[ $# -ge 2 ]] || die "usage: $0 submit-jar JAR MAIN_CLASS [args...]"
    load_state
    local jar="$1" class="$2"; shift 2
    # the job's client JVM runs the Java API's Python helper with this interpreter; the
    # TaskManagers get flink-python (not in the wheel's lib/) on the job's class path
    PYFLINK_CLIENT_EXECUTABLE="$PY" "$FLINK_HOME/bin/flink" run -m "127.0.0.1:$REST_PORT" \
        -C "file://$(python_jar)" -c "$class" "$jar" "$@"
}

sql() {
    [[ $# -ge 1 ]] || die "usage: $0 sql script.sql"
    load_state
    # The wheel's bin/sql-client.sh cannot start (the wheel lacks the SQL Gateway's jar): run
    # the script in a Java Table API job instead (examples/java: SqlScript), built by java.sh
    local jars="${JAVA_BUILD_DIR:-$here/build/java}"
    [[ -f "$jars/flink-torch-ml-examples.jar" ]] || PYTHON="$PY" "$here/scripts/java.sh" build >&2
    submit_jar "$jars/flink-torch-ml-examples.jar" \
        org.flinkextended.flink.ml.pytorch.examples.SqlScript "$(cd "$(dirname "$1")" && pwd -P)/$(basename "$1")"
}

case "$cmd" in
    start) start "$@" ;;
    submit-jar) submit_jar "$@" ;;
    sql) sql "$@" ;;
    add-taskmanager) add_taskmanager ;;
    stop) stop ;;
    status) status ;;
    submit) submit "$@" ;;
    *) echo "usage: $0 start [-n TASKMANAGERS] [-s SLOTS] | add-taskmanager | status |" \
            "submit job.py [args] | submit-jar JAR CLASS [args] | sql script.sql | stop" >&2
       exit 2 ;;
esac
