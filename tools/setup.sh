#!/usr/bin/env bash
# Create (or reuse) the virtualenv $VENV (default .venv) and install msseg into it from this
# repository, with the tested versions in constraints.txt. Extra arguments are pip extras,
# e.g. `tools/setup.sh dev`. Prints the venv's python path on the last line.
# The install compiles the optional oneDNN convolution library (setup.py, csrc/). A stamp in
# the venv skips the reinstall while this checkout, the extras, the packaging files, csrc/ and
# the built library are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
extras=$(IFS=,; echo "$*")
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
state() {
  (pwd; echo "$extras"; cat pyproject.toml setup.py constraints.txt csrc/*
   ls msseg/models/_onednn_ffi*.so 2>/dev/null || true) | sha256sum | cut -d' ' -f1
}
stamp="$VENV/.msseg-install-stamp"
if [ "$(cat "$stamp" 2>/dev/null)" != "$(state)" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".${extras:+[$extras]}" >&2
  state > "$stamp"
fi
echo "$VENV/bin/python"
