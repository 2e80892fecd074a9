#!/usr/bin/env bash
# The test command: sets up .venv (see scripts/setup_venv.sh), lints with ruff (rules in pyproject.toml), then
# runs the whole suite on the CPU, on $PYTEST_WORKERS pytest-xdist workers (default 2), each taking one test module
# at a time (--dist loadfile: a module's fixtures are built once), in the order tests/conftest.py gives.
# Extra arguments go to pytest, e.g. ./run_tests.sh -m "not slow", ./run_tests.sh tests/test_modalities.py -n 0
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_venv.sh
"$VENV/bin/ruff" check .
exec "$VENV/bin/pytest" -ra -n "${PYTEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
