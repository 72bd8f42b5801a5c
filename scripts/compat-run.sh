#!/usr/bin/env bash
# The compatibility run of one older Flink line: its own virtualenv (.venv-flink-LINE, pinned
# by constraints/flink-LINE.txt), the unit tests, and the integration tests marked `compat`
# (README quick start, main demo, seed low-level example at world size 2, estimator
# save/load/fit/transform, AddFive streaming, planner threads, the standalone cluster).
# Usage: scripts/compat-run.sh LINE [pytest args...]     e.g. scripts/compat-run.sh 1.20
set -euo pipefail
line="${1:?usage: $0 FLINK_LINE (e.g. 1.20)}"
shift
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
venv=".venv-flink-$line"
constraints="constraints/flink-$line.txt"
[[ -f "$constraints" ]] || { echo "compat-run: no $constraints" >&2; exit 2; }
stamp="$venv/.installed"
if [[ ! -f "$stamp" || "$constraints" -nt "$stamp" || pyproject.toml -nt "$stamp" ]]; then
    scripts/check-prereqs.sh "$python"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    # PIP_CONSTRAINT also pins what builds the line's sdists (their setuptools)
    PIP_CONSTRAINT="$constraints" "$venv/bin/python" -m pip install --quiet \
        --disable-pip-version-check -c "$constraints" -e '.[test]'
    touch "$stamp"
fi
echo "== Flink $("$venv/bin/python" -c 'from pyflink.version import __version__; print(__version__)') compatibility run"
"$venv/bin/python" -m pytest -ra -p no:cacheprovider tests/unit "$@"
"$venv/bin/python" -m pytest -ra -p no:cacheprovider -m compat tests/integration "$@"
