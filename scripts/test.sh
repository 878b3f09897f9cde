#!/usr/bin/env bash
# The default test run (CI): ruff (pyproject's rule set), then everything not marked slow (the import
# layering check, tests/test_layering.py, included), two workers, 8 fake CPU devices per worker.
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=8}"
export JAX_PLATFORMS=cpu
ruff check .
python -m pytest -q -n 2 --dist loadfile -m "not slow" "$@"
