#!/usr/bin/env bash
# Run the whole test suite from a fresh clone: sets up, lints, then runs pytest
# (GUI tests included) under a virtual display. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
export QT_API=pyqt6 MPLBACKEND=Agg OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec xvfb-run -a -s "-screen 0 1400x900x24" .venv/bin/python -m pytest "$@"
