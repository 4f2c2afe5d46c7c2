#!/usr/bin/env bash
# Installs embedflow into .venv, then runs the whole chain on the bundled sample data:
# corpus -> train -> evaluate -> digits -> sentiment, a report, and promotion (`embedflow run`).
# Outputs go to runs/ (override with EMBEDFLOW_OUTPUT=DIR); extra arguments go to `embedflow run`.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/embedflow run --output-root "${EMBEDFLOW_OUTPUT:-runs}" "$@"
