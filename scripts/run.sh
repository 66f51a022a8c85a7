#!/usr/bin/env bash
# The project's two commands, each complete on a fresh Debian 12 machine with Python 3.11+:
#   bash scripts/run.sh demo    # set up, then run the main job on the embedded sandbox
#   bash scripts/run.sh docs    # set up (the docs extra), build the documentation site
#                               # into docs/_build/html, its notebooks run against the
#                               # sandbox; a Sphinx warning fails the build
#   bash scripts/run.sh test    # set up (venv, pip packages), check the import contracts
#                               # (lint-imports) and the types (mypy), set up the rest
#                               # (Chromium, nginx, PostgreSQL + stac-fastapi-pgstac), then
#                               # run the tests; a failed check fails the run before them
# Extra arguments after `test` go to pytest. VENV=path overrides the virtualenv (.venv).
# With CI=true (GitHub Actions sets it, and so does .ci/run), a real-server tier (nginx,
# stac-fastapi-pgstac) that cannot be set up fails the run instead of skipping its tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

unavailable() {  # $1: what could not be set up, $2: the tests that need it
  if [ "${CI:-}" = "true" ]; then
    echo "--- $1: CI=true, so this run fails rather than skip $2" >&2
    exit 1
  fi
  echo "--- $1: $2 will skip" >&2
}

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

setup_nginx() {  # a real nginx for tests/integration/test_nginx.py, with no system service started
  if [ -n "${TERRASCOPE_TEST_NGINX:-}" ] || command -v nginx >/dev/null \
    || [ -x /usr/sbin/nginx ]; then
    return
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  local dest
  dest="$(cd "$VENV" && pwd)/nginx"
  if [ ! -x "$dest/usr/sbin/nginx" ]; then
    # Debian's package unpacked into the virtualenv: dpkg -x runs no maintainer script, so
    # nothing is installed system-wide and no service starts. Debian 12 has the binary in
    # "nginx" ("nginx-light" is a transitional package there); older releases in the others.
    echo "--- extracting Debian's nginx package into $dest (apt-get download, dpkg -x)"
    local work package updated=""
    work=$(mktemp -d)
    for package in nginx nginx-light nginx-core; do
      if ! (cd "$work" && apt-get download -qq "$package" 2>/dev/null); then
        if [ -n "$updated" ]; then continue; fi
        $sudo apt-get update -qq || true  # offline: no package, said below
        updated=yes
        (cd "$work" && apt-get download -qq "$package" 2>/dev/null) || continue
      fi
      dpkg -x "$work/$package"_*.deb "$work/root"
      if [ -x "$work/root/usr/sbin/nginx" ]; then
        rm -rf "$dest"
        mv "$work/root" "$dest"
        break
      fi
    done
    rm -rf "$work"
  fi
  if [ ! -x "$dest/usr/sbin/nginx" ]; then
    unavailable "no nginx binary in Debian's packages" tests/integration/test_nginx.py
    return
  fi
  if ldd "$dest/usr/sbin/nginx" | grep "not found" >/dev/null; then
    echo "--- installing nginx's libraries (apt-get)"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      libcrypt1 libpcre2-8-0 libssl3 zlib1g >/dev/null || true  # checked just below
  fi
  if ! "$dest/usr/sbin/nginx" -v; then
    unavailable "$dest/usr/sbin/nginx does not run" tests/integration/test_nginx.py
    return
  fi
  export TERRASCOPE_TEST_NGINX="$dest/usr/sbin/nginx"
}

setup_pgstac() {  # PostgreSQL + PostGIS and stac-fastapi-pgstac for tests/integration/test_pgstac.py
  if [ -n "${TERRASCOPE_TEST_PGSTAC:-}" ]; then
    return
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  if [ ! -x /usr/lib/postgresql/15/bin/initdb ] \
    || [ ! -e /usr/share/postgresql/15/extension/postgis.control ]; then
    echo "--- installing postgresql-15 and postgresql-15-postgis-3 (apt-get)"
    if ! { $sudo apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        postgresql-15 postgresql-15-postgis-3 >/dev/null; }; then
      unavailable "could not install PostgreSQL/PostGIS" tests/integration/test_pgstac.py
      return
    fi
  fi
  # stac-fastapi's dependencies (FastAPI, pydantic, asyncpg...) in a virtualenv of their own,
  # never mixed with the package's
  local pins="stac-fastapi.pgstac==7.2.0 pypgstac[psycopg]==0.10.0 uvicorn==0.54.0"
  local venv="$VENV-pgstac"
  local stamp
  stamp="$venv/.pgstac-$(echo "$pins" | sha256sum | cut -c1-16)"
  if [ ! -e "$stamp" ]; then
    echo "--- installing $pins into $venv"
    # shellcheck disable=SC2086  # $pins is a list of requirements
    if ! { { [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"; } \
      && "$venv/bin/python" -m pip install -q --upgrade pip \
      && "$venv/bin/python" -m pip install -q $pins; }; then
      unavailable "could not install stac-fastapi-pgstac" tests/integration/test_pgstac.py
      return
    fi
    touch "$stamp"
  fi
  TERRASCOPE_TEST_PGSTAC="$(cd "$venv" && pwd)"
  export TERRASCOPE_TEST_PGSTAC
}

static_checks() {  # in the project root: the tools and their configuration in pyproject.toml
  local failed=()
  echo "--- lint-imports: the stages' import contracts ([tool.importlinter])"
  "$VENV/bin/lint-imports" || failed+=("lint-imports (an import contract is broken)")
  echo "--- mypy: the type check ([tool.mypy])"
  "$VENV/bin/mypy" || failed+=("mypy (type errors)")
  if [ "${#failed[@]}" -gt 0 ]; then
    local each
    for each in "${failed[@]}"; do
      echo "--- FAILED: $each; see its output above" >&2
    done
    exit 1
  fi
}

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
  return 0  # sourced (tests/integration/test_run_script.py calls the set-up functions): define only
fi

case "${1:-}" in
  demo)
    shift
    setup_python all
    exec "$VENV/bin/xarray-terrascope" demo --out "${DEMO_OUT:-demo-output}" "$@"
    ;;
  docs)
    shift
    setup_python docs
    rm -rf docs/_build docs/generated  # every build from scratch: notebooks run, stubs fresh
    exec "$VENV/bin/python" -m sphinx -b html -W --keep-going "$@" docs docs/_build/html
    ;;
  test)
    shift
    setup_python test
    static_checks
    setup_browser
    setup_nginx
    setup_pgstac
    exec "$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
    ;;
  *)
    echo "usage: bash scripts/run.sh demo | docs [sphinx args] | test [pytest args]" >&2
    exit 2
    ;;
esac
