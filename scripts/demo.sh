#!/usr/bin/env bash
# End-to-end demo on the tiny config: parameter counts, then (as the packages land) synthetic data,
# a few training steps, save, convert to HF and back, chat with a drawn box, evaluate.
set -euo pipefail
cd "$(dirname "$0")/.."
export JAX_PLATFORMS=cpu
OUT="${DEMO_OUT:-demo_out}"
mkdir -p "$OUT"
echo "== parameter counts of the released 7B configuration (abstract shapes, nothing allocated)"
qwenvl-jax params --config qwen_vl_7b
echo "== tiny configuration"
qwenvl-jax params --config tiny
