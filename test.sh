#!/usr/bin/env bash
# Installs embedflow and its test dependencies into .venv, then runs the test suite.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
# One test renders report.html in a real browser. Playwright drives the system's Chromium (it downloads
# none): as root on Debian this installs it (apt-get); elsewhere install Chromium or set EMBEDFLOW_CHROMIUM,
# or that one test is skipped, saying why.
if ! command -v chromium >/dev/null && [ -z "${EMBEDFLOW_CHROMIUM:-}" ] \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends chromium >/dev/null \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; } \
    || echo "test.sh: could not install chromium; the browser test will be skipped" >&2
fi
exec .venv/bin/python -m pytest -q tests "$@"
