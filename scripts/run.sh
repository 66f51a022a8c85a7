#!/usr/bin/env bash
# The project's two commands, each complete on a fresh Debian 12 machine with Python 3.11+:
#   bash scripts/run.sh demo    # set up, then run the main job on the embedded sandbox
#   bash scripts/run.sh test    # set up (venv, pip packages, Chromium), then run the tests
# Extra arguments after `test` go to pytest. VENV=path overrides the virtualenv (.venv).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

setup_python() {  # $1: the extras to install
  if [ ! -x "$VENV/bin/python" ]; then
    echo "--- creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  local stamp="$VENV/.xarray-terrascope-$1-$(sha256sum pyproject.toml | cut -c1-16)"
  if [ ! -e "$stamp" ]; then
    echo "--- installing xarray-terrascope[$1] into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e ".[$1]"
    touch "$stamp"
  fi
}

setup_browser() {  # Debian's Chromium and ChromeDriver, for the time-slider browser test
  if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    return
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "--- installing chromium and chromium-driver (apt-get)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
}

case "${1:-}" in
  demo)
    shift
    setup_python all
    exec "$VENV/bin/xarray-terrascope" demo --out "${DEMO_OUT:-demo-output}" "$@"
    ;;
  test)
    shift
    setup_browser
    setup_python test
    exec "$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
    ;;
  *)
    echo "usage: bash scripts/run.sh demo | test [pytest args]" >&2
    exit 2
    ;;
esac
