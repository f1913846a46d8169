#!/usr/bin/env bash
# One command for the whole benchmark, from a fresh clone: bench/run.sh [--quick] [--profile] ...
# Sets up what is missing (the project's venv, Redis from Debian's packages, the peers'
# venv), then runs bench/run.py, which starts and stops every server and worker itself.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
PEERS=bench/.venv-peers

say() { echo "[bench setup] $*"; }

if ! .venv/bin/python -c "import taskschedd, yaml" 2>/dev/null; then
    say "creating the project's venv (make install)"
    make install PYTHON="$PYTHON"
fi

if ! command -v redis-server >/dev/null 2>&1; then
    say "installing redis-server from Debian's packages"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
    # The harness runs its own Redis on a free loopback port; a system service that the
    # package may have started is not wanted.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
        $SUDO systemctl stop redis-server || true
        $SUDO systemctl disable redis-server >/dev/null 2>&1 || true
    fi
fi

if ! "$PEERS/bin/python" -c "import huey, celery, rq, redis" 2>/dev/null \
        || [ ! -x "$PEERS/bin/py-spy" ]; then
    say "creating $PEERS (Huey, Celery, RQ, redis-py, py-spy)"
    rm -rf "$PEERS"
    "$PYTHON" -m venv "$PEERS"
    "$PEERS/bin/pip" install --quiet --upgrade pip
    "$PEERS/bin/pip" install --quiet -r bench/requirements-peers.txt
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec .venv/bin/python -m bench.run "$@"
