# Sourced by run_tests.sh and run_demo.sh: a virtualenv in $VENV (default .venv) with this package installed
# (not editable, as a user gets it) and the test extra. The first run pulls nnU-Net and torch (several GB).
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# setuptools builds in ./build and would ship modules since deleted from the source: start clean
rm -rf build
"$VENV/bin/python" -m pip install -q --disable-pip-version-check '.[test]'
# pip keeps an installed version of a local project; reinstall so the venv always holds this checkout's code
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall .
rm -rf build
export PATH="$(cd "$VENV" && pwd)/bin:$PATH"
