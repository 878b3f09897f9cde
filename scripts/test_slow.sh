#!/usr/bin/env bash
# Slow tests only (multi-process runs, long trainings, big conversions).
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=8}"
export JAX_PLATFORMS=cpu
bash scripts/install_browser.sh  # the web chat test drives a real Chromium
python -m pytest -q -m slow "$@"
