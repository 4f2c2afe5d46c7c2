#!/usr/bin/env bash
# Installs embedflow into .venv, then runs the pipeline on the bundled sample data.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
OUT=${EMBEDFLOW_OUTPUT:-runs/sample}
exec .venv/bin/embedflow corpus --input 'sample/corpus/*.gz' --output "$OUT/corpus" "$@"
