#!/usr/bin/env bash
# The run of one supported Flink line as a user installs it: a fresh .venv-flink-LINE that
# already has that Flink, torch 2.13 (CPU) and the test tools (pinned by
# constraints/flink-LINE.txt), into which the built wheel (make dist) is installed with plain
# pip: no constraints, pip's resolver alone; the Flink version must be the same afterwards.
# Then the unit tests and the integration tests marked `compat` (README quick start, main demo,
# seed low-level example at world size 2, estimator save/load/fit/transform, AddFive
# streaming, planner threads, the standalone cluster, online training).
# Usage: scripts/compat-run.sh LINE [pytest args...]     e.g. scripts/compat-run.sh 1.20
set -euo pipefail
line="${1:?usage: $0 FLINK_LINE (e.g. 1.20)}"
shift
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
venv=".venv-flink-$line"
constraints="constraints/flink-$line.txt"
[[ -f "$constraints" ]] || { echo "compat-run: no $constraints" >&2; exit 2; }
wheels=(dist/flink_torch_ml-*.whl)
[[ -f "${wheels[0]}" ]] || { echo "compat-run: no wheel in dist/ (run make dist)" >&2; exit 2; }
wheel="${wheels[0]}"
stamp="$venv/.installed"
if [[ ! -f "$stamp" || "$constraints" -nt "$stamp" || "$wheel" -nt "$stamp" ]]; then
    scripts/check-prereqs.sh "$python"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    pip=("$venv/bin/python" -m pip --disable-pip-version-check)
    # the user's environment: a pip that resolves every line alone, the Flink line, CPU torch;
    # and what the tests need beside the library (pyproject.toml's `test` extra)
    "${pip[@]}" install --quiet -c "$constraints" pip
    PIP_CONSTRAINT="$constraints" "${pip[@]}" install --quiet apache-flink torch \
        pytest jsonpickle tensorboard mlflow-skinny
    flink_before=$("${pip[@]}" show apache-flink | sed -n 's/^Version: //p')
    # the library as a user installs it: plain pip, no constraints
    "${pip[@]}" install --quiet "$wheel"
    flink_after=$("${pip[@]}" show apache-flink | sed -n 's/^Version: //p')
    if [[ "$flink_before" != "$flink_after" ]]; then
        echo "compat-run: installing $wheel changed apache-flink $flink_before -> $flink_after" >&2
        exit 1
    fi
    touch "$stamp"
fi
venv_python="$PWD/$venv/bin/python"
"$venv_python" - <<'PY'
import importlib.metadata as m
print("== Flink", m.version("apache-flink"), "| the wheel installed",
      ", ".join(f"{p} {m.version(p)}" for p in ("flink-torch-ml", "torch", "onnx", "onnxruntime",
                                                  "numpy", "pyarrow", "protobuf")))
PY
# The tests run in a copy of the checkout without flink_torch_ml/, so that they, the examples
# and Flink's Python workers import the installed wheel, never the source tree.
copy="$venv/checkout"
rm -rf "$copy" && mkdir -p "$copy"
git ls-files -z --cached --others --exclude-standard | grep -zv '^flink_torch_ml/' \
    | xargs -0 cp --parents -t "$copy"
cd "$copy"
"$venv_python" -c 'import flink_torch_ml, sys; p = flink_torch_ml.__file__
assert "site-packages" in p, p; print("== testing the installed wheel:", p)'
"$venv_python" -m pytest -ra -p no:cacheprovider tests/unit "$@"
"$venv_python" -m pytest -ra -p no:cacheprovider -m compat tests/integration "$@"
