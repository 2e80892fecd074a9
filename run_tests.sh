#!/usr/bin/env bash
# The test command: sets up .venv (see scripts/setup_venv.sh), lints with ruff (rules in pyproject.toml), then
# runs the whole suite on the CPU in TEST_WORKERS pytest-xdist workers (default 2), one test file per worker at a time
# (a module's fixtures are built once) and one thread each (tests/conftest.py).
# Extra arguments go to pytest, e.g. ./run_tests.sh -m "not slow", ./run_tests.sh tests/test_modalities.py, -n 0 for
# one process.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_venv.sh
"$VENV/bin/ruff" check .
exec "$VENV/bin/pytest" -ra -n "${TEST_WORKERS:-2}" --dist loadfile "$@"
