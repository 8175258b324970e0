#!/usr/bin/env bash
# The test suite, from a fresh clone: set up .venv with the dev extra, run ruff, then pytest on
# 8 fake CPU devices. Default: the fast tests (-m "not slow"); extra arguments replace that
# selection and go to pytest (e.g. `tools/test.sh -m slow`, `tools/test.sh tests/test_io.py`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(tools/setup.sh dev | tail -n 1)
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=8}"
export JAX_PLATFORMS=cpu
# keep XLA's large buffers in glibc's heap between steps (WORKSPACE.md, Precision/Allocator)
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-1073741824}
export MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-4294967296}
"$PY" -m ruff check .
if [ $# -eq 0 ]; then set -- -m "not slow"; fi
"$PY" -m pytest -q "$@"
