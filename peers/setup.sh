#!/usr/bin/env bash
# Create (or reuse) the peer virtualenv $PEER_VENV (default .peers-venv at the repo root) with
# PyTorch (CPU wheel) and MONAI at the versions in peers/requirements.txt. Torch and MONAI live
# only here, never in msseg's own environment. Prints the venv's python path on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PEER_VENV:-.peers-venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
stamp="$VENV/.peers-install-stamp"
state=$( (pwd; cat peers/requirements.txt) | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$state" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  # torch is pinned exactly (peers/requirements.txt) and taken from where pip finds it: a local
  # CPU wheel where the machine has one, else PyPI (on Linux x86_64 that is a multi-GB CUDA
  # build). For the CPU build elsewhere set
  # PEER_PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu".
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q ${PEER_PIP_ARGS:-} -r peers/requirements.txt >&2
  echo "$state" > "$stamp"
fi
echo "$VENV/bin/python"
