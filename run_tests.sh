#!/usr/bin/env bash
# The test command: sets up .venv (see scripts/setup_venv.sh), lints with ruff (rules in pyproject.toml), then
# runs the whole suite on the CPU.
# Extra arguments go to pytest, e.g. ./run_tests.sh -m "not slow" or ./run_tests.sh tests/test_modalities.py
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_venv.sh
"$VENV/bin/ruff" check .
exec "$VENV/bin/pytest" -ra "$@"
