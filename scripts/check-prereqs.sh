#!/usr/bin/env bash
# Check what flink-torch-ml needs before anything is installed: Python 3.9-3.12 and Java 11+.
# Usage: scripts/check-prereqs.sh [python-interpreter]
set -u
python=${1:-python3}
fail=0
if ! command -v "$python" >/dev/null 2>&1; then
  echo "ERROR: '$python' not found. Install Python 3.9-3.12 (3.11 recommended) or run 'make PYTHON=/path/to/python3.11 ...'." >&2
  fail=1
elif ! "$python" -c 'import sys; sys.exit(0 if (3, 9) <= sys.version_info[:2] <= (3, 12) else 1)'; then
  echo "ERROR: $("$python" --version 2>&1) at $(command -v "$python"): apache-flink 2.3 needs Python 3.9-3.12. Run 'make PYTHON=/path/to/python3.11 ...'." >&2
  fail=1
elif ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
  echo "ERROR: $python lacks the venv/ensurepip modules (on Debian/Ubuntu: apt-get install python3-venv)." >&2
  fail=1
fi
java_bin=${JAVA_HOME:+$JAVA_HOME/bin/}java
if ! command -v "$java_bin" >/dev/null 2>&1; then
  echo "ERROR: Java not found. Flink needs a JDK 11 or 17 (e.g. apt-get install openjdk-17-jdk-headless), on PATH or in JAVA_HOME." >&2
  fail=1
else
  version=$("$java_bin" -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')
  major=${version%%.*}
  [ "$major" = "1" ] && major=$(echo "$version" | cut -d. -f2)
  if [ -z "$major" ] || [ "$major" -lt 11 ] 2>/dev/null; then
    echo "ERROR: Java $version found; Flink 2.3 needs Java 11 or newer (17 recommended)." >&2
    fail=1
  fi
fi
exit $fail
