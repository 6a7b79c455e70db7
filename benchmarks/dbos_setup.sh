#!/usr/bin/env bash
# What benchmarks/workflows_vs_dbos.py needs for its DBOS side, idempotent (installs only what
# is missing):
#
#   bash benchmarks/dbos_setup.sh install      # Debian's PostgreSQL if missing; .venv gets .[bench]
#   bash benchmarks/dbos_setup.sh start DIR    # a throwaway cluster in DIR on 127.0.0.1, free port;
#                                              # prints its URL (postgresql://...) on stdout
#   bash benchmarks/dbos_setup.sh stop DIR     # stops it (DIR is left for the caller to delete)
#
# The benchmark runs all three (start and stop around its DBOS measurements, stop also on error).
# The cluster trusts local connections and listens on 127.0.0.1 only (its Unix socket is in DIR).
# PostgreSQL refuses to run as root: as root, DIR is handed to the `postgres` user of Debian's
# packages and the server runs as that user.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_USER=steplog_bench

pg_bin() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -n "$bin" ] && [ -x "$bin/pg_ctl" ] || { echo "PostgreSQL is not installed" >&2; return 1; }
    echo "$bin"
}

as_owner() {  # run a PostgreSQL program as the cluster's owner
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

install() {
    if ! pg_bin >/dev/null 2>&1; then
        echo "installing Debian packages: postgresql" >&2
        local sudo_cmd=()
        [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
        "${sudo_cmd[@]}" apt-get update -q
        DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q \
            --no-install-recommends postgresql
        # Debian's package creates and starts a system cluster; the benchmark uses its own.
    fi
    [ -x .venv/bin/python ] || python3 -m venv .venv
    local marker=.venv/.bench-installed
    if [ ! -f "$marker" ] || [ pyproject.toml -nt "$marker" ] \
        || ! .venv/bin/python -c "import dbos, faust" >/dev/null 2>&1; then
        echo "installing .[bench] into .venv (log: .venv/pip-bench.log)" >&2
        .venv/bin/pip install -e ".[bench]" > .venv/pip-bench.log 2>&1 \
            || { cat .venv/pip-bench.log >&2; exit 1; }
        touch "$marker"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    local dir=$1 bin port
    bin=$(pg_bin)
    mkdir -p "$dir"
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres: "$dir"
        # the postgres user must reach DIR through its parents (a mktemp dir is 0700)
        local parent
        parent=$(dirname "$(realpath "$dir")")
        while [ "$parent" != / ]; do
            [ -x "$parent" ] || break
            chmod o+x "$parent" 2>/dev/null || true
            parent=$(dirname "$parent")
        done
    fi
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_owner "$bin/initdb" -D "$dir/data" -U "$PG_USER" --auth=trust --encoding=UTF8 \
            --no-instructions > "$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    if as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        port=$(sed -n 4p "$dir/data/postmaster.pid")
    else
        port=$(free_port)
        as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$dir -c max_connections=300" \
            start >&2 || { cat "$dir/postgres.log" >&2; exit 1; }
    fi
    echo "postgresql://$PG_USER@127.0.0.1:$port/postgres"
}

stop() {
    local dir=$1 bin
    bin=$(pg_bin)
    [ -f "$dir/data/postmaster.pid" ] || exit 0
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >&2
}

case "${1:-install}" in
    install) install ;;
    start) start "${2:?usage: dbos_setup.sh start DIR}" ;;
    stop) stop "${2:?usage: dbos_setup.sh stop DIR}" ;;
    *) echo "usage: dbos_setup.sh [install | start DIR | stop DIR]" >&2; exit 2 ;;
esac
