#!/usr/bin/env bash
# The test suite, from a fresh clone: set up .venv with the dev extra and run pytest on
# 8 fake CPU devices. Extra arguments go to pytest (e.g. -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(tools/setup.sh dev | tail -n 1)
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=8}"
export JAX_PLATFORMS=cpu
"$PY" -m ruff check .
"$PY" -m pytest -q "$@"
