#!/usr/bin/env bash
# Headless Chromium (Debian's package) + Playwright's Python API for the web chat browser test.
# Playwright drives the system browser (executable_path=/usr/bin/chromium): never `playwright install`.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
python -c "import playwright" 2>/dev/null || pip install -q playwright==1.65.2
