#!/usr/bin/env bash
# Installs embedflow and its test dependencies into .venv, then runs the test suite.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
exec .venv/bin/python -m pytest -q tests "$@"
