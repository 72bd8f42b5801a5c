#!/usr/bin/env bash
# The Java API without Maven Central: compile it with the JDK's javac against the jars inside
# the installed apache-flink wheel, and run Java programs with the same class path.
#   scripts/java.sh build          java/src/main/java -> build/java/flink-torch-ml-java.jar,
#                                  examples/java (+ the API) -> build/java/flink-torch-ml-examples.jar
#   scripts/java.sh classpath      the class path (our jars + the wheel's Flink jars)
#   scripts/java.sh run CLASS ARGS run a main class on Flink's embedded mini-cluster
# PYTHON (default .venv/bin/python) is the interpreter whose apache-flink wheel provides the
# jars; it must have flink_torch_ml installed: the Java API runs its Python side there.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
out="${JAVA_BUILD_DIR:-$root/build/java}"
pyflink=$("$python" -c 'import os, pyflink; print(os.path.dirname(pyflink.__file__))' 2>/dev/null) \
    || { echo "java.sh: $python cannot import pyflink (run 'make venv' or set PYTHON)" >&2; exit 2; }
flink_jars=$(ls "$pyflink"/lib/*.jar "$pyflink"/opt/flink-python-*.jar | tr '\n' ':')
command -v javac >/dev/null || { echo "java.sh: javac not found: install a JDK 11+" >&2; exit 2; }

build() {
    rm -rf "$out/classes" "$out/example-classes"
    mkdir -p "$out/classes" "$out/example-classes"
    javac -nowarn -d "$out/classes" -cp "$flink_jars" $(find java/src/main/java -name '*.java')
    jar cf "$out/flink-torch-ml-java.jar" -C "$out/classes" .
    javac -nowarn -d "$out/example-classes" -cp "$out/flink-torch-ml-java.jar:$flink_jars" \
        $(find examples/java -name '*.java')
    # self-contained, as a job jar for `flink run`: the examples and the API they use
    jar cf "$out/flink-torch-ml-examples.jar" -C "$out/example-classes" . -C "$out/classes" .
    echo "built $out/flink-torch-ml-java.jar and $out/flink-torch-ml-examples.jar"
}

case "${1:-}" in
    build) build ;;
    classpath) echo "$out/flink-torch-ml-java.jar:$out/flink-torch-ml-examples.jar:$flink_jars" ;;
    run)
        shift
        [[ -f "$out/flink-torch-ml-java.jar" ]] || build >&2
        # the wheel's JVM options (Flink needs them on Java 17)
        opts=$("$python" -c 'import os, yaml, pyflink
conf = yaml.safe_load(open(os.path.join(os.path.dirname(pyflink.__file__), "conf", "config.yaml")))
print((((conf.get("env") or {}).get("java") or {}).get("opts") or {}).get("all", ""))')
        export PYFLINK_CLIENT_EXECUTABLE="${PYFLINK_CLIENT_EXECUTABLE:-$python}"
        # shellcheck disable=SC2086
        exec java $opts -cp "$out/flink-torch-ml-java.jar:$out/flink-torch-ml-examples.jar:$flink_jars" "$@"
        ;;
    *) sed -n '2,9p' "$0"; exit 2 ;;
esac
