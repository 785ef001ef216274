#!/usr/bin/env bash
# The main job: set up, make the synthetic sample case, and open napari with the
# MetSeg workbench and the bundled model already run on it.
# Without a display (or with --headless DIR) the same results go to files.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
if [ "${1:-}" = "--headless" ] || [ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
  out=${2:-metseg-demo}
  exec .venv/bin/metseg demo --headless --out "$out"
fi
exec .venv/bin/metseg demo
