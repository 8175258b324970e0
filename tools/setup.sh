#!/usr/bin/env bash
# Create (or reuse) the virtualenv $VENV (default .venv) and install msseg into it from this
# repository, with the tested versions in constraints.txt. Extra arguments are pip extras,
# e.g. `tools/setup.sh dev`. Prints the venv's python path on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
extras=$(IFS=,; echo "$*")
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >&2
"$VENV/bin/python" -m pip install -q -c constraints.txt -e ".${extras:+[$extras]}" >&2
echo "$VENV/bin/python"
