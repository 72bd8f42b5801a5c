#!/usr/bin/env bash
# Fetch FlinkML 2.3.0's pure-Python package (pyflink/ml) for compatibility tests.
# Its installer refuses Python > 3.8, so pip runs under a Python 3.7/3.8 interpreter to only
# download the source distribution; nothing is installed. Usage: fetch-flinkml.sh DEST
# Prints DEST (a directory holding pyflink/ml) on success.
set -euo pipefail
dest=${1:?usage: fetch-flinkml.sh DEST}
if [ -d "$dest/pyflink/ml" ]; then echo "$dest"; exit 0; fi
py=""
for candidate in python3.8 python3.7 "$HOME"/.pyenv/versions/3.8*/bin/python "$HOME"/.pyenv/versions/3.7*/bin/python; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -m pip --version >/dev/null 2>&1; then py=$candidate; break; fi
done
[ -n "$py" ] || { echo "no Python 3.7/3.8 with pip found to download apache-flink-ml" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
  apache-flink-ml==2.3.0 -d "$tmp" >&2
tar -xzf "$tmp"/apache-flink-ml-2.3.0.tar.gz -C "$tmp"
mkdir -p "$dest/pyflink"
cp -r "$tmp"/apache-flink-ml-2.3.0/pyflink/ml "$dest/pyflink/ml"
echo "$dest"
