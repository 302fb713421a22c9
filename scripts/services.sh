#!/usr/bin/env bash
# Local RabbitMQ and PostgreSQL for referrald's daemon and tests, on 127.0.0.1 only, with their
# data under one folder of the project (default: .services/). Idempotent: `start` installs what
# is missing (Debian packages), initialises what has no data yet and starts what is not running.
#
#   scripts/services.sh start | stop | status | env
#
# No systemd runs on these machines, so both servers are started by hand, detached.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${REFERRALD_SERVICES_DIR:-$ROOT/.services}"
PG_PORT="${REFERRALD_PG_PORT:-54329}"
AMQP_PORT="${REFERRALD_AMQP_PORT:-5672}"
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
RMQ_BIN=/usr/lib/rabbitmq/bin
NODE="referrald-$AMQP_PORT@localhost"

log() { printf 'services: %s\n' "$*" >&2; }

install_packages() {
  local missing=()
  [ -x "$RMQ_BIN/rabbitmq-server" ] || missing+=(rabbitmq-server)
  [ -n "$PG_BIN" ] && [ -x "$PG_BIN/initdb" ] || missing+=(postgresql)
  [ -f /usr/include/amqp.h ] || [ -f /usr/include/rabbitmq-c/amqp.h ] || missing+=(librabbitmq-dev)
  [ -f /usr/include/postgresql/libpq-fe.h ] || missing+=(libpq-dev)
  command -v pkg-config >/dev/null || missing+=(pkg-config)
  command -v openssl >/dev/null || missing+=(openssl)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d stops the packages' own init scripts from starting system-wide servers.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
    rm -f /usr/sbin/policy-rc.d
    PG_BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
  fi
}

# PostgreSQL refuses to run as root: the cluster belongs to the `postgres` system user.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

pg_start() {
  local data="$STATE/postgres"
  mkdir -p "$STATE"
  if [ ! -f "$data/PG_VERSION" ]; then
    log "initialising PostgreSQL in $data"
    mkdir -p "$data"; [ "$(id -u)" = 0 ] && chown postgres: "$data"
    chmod 700 "$data"
    as_pg "$PG_BIN/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    cat >> "$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$data'
max_connections = 200
fsync = on
CONF
  fi
  if as_pg "$PG_BIN/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    log "PostgreSQL already running on 127.0.0.1:$PG_PORT"
  elif "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
    # Another checkout's cluster already serves this port (a second clone on the same machine):
    # use it rather than fail to bind.
    log "PostgreSQL of another folder already serves 127.0.0.1:$PG_PORT; using it"
  else
    as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 start >/dev/null
    log "PostgreSQL started on 127.0.0.1:$PG_PORT"
  fi
  local psql=("$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qAt)
  if [ "$("${psql[@]}" -c "select 1 from pg_roles where rolname='referrald'")" != 1 ]; then
    "${psql[@]}" -c "create role referrald login password 'referrald' createdb"
  fi
  if [ "$("${psql[@]}" -c "select 1 from pg_database where datname='referrald'")" != 1 ]; then
    "${psql[@]}" -c "create database referrald owner referrald"
  fi
}

pg_stop() {
  local data="$STATE/postgres"
  [ -f "$data/PG_VERSION" ] || return 0
  as_pg "$PG_BIN/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 && log "PostgreSQL stopped" || true
}

rmq_env() {
  # The Erlang cookie stays in $HOME (root's, on these machines): every checkout on the machine
  # then reaches the same node, so a second clone reuses a running broker instead of failing
  # to start a second one on the same ports.
  export RABBITMQ_NODENAME="$NODE"
  export RABBITMQ_DIST_PORT=$((AMQP_PORT + 20000))  # CLI tools take dist + 10000 onwards: keep clear of it
  export ERL_EPMD_ADDRESS=127.0.0.1
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  export RABBITMQ_MNESIA_BASE="$STATE/rabbitmq/mnesia"
  export RABBITMQ_LOG_BASE="$STATE/rabbitmq/log"
  export RABBITMQ_PID_FILE="$STATE/rabbitmq/rabbit.pid"
  export RABBITMQ_CONFIG_FILE="$STATE/rabbitmq/rabbitmq"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$STATE/rabbitmq/enabled_plugins"
}

rmq_start() {
  mkdir -p "$STATE/rabbitmq/mnesia" "$STATE/rabbitmq/log"
  rmq_env
  [ -f "$STATE/rabbitmq/enabled_plugins" ] || echo '[].' > "$STATE/rabbitmq/enabled_plugins"
  # Loopback only; heartbeats as the broker default; a consumer ack timeout of 30 min is the
  # broker's default and stays (see DESIGN-NOTES: no batch may wait that long).
  cat > "$STATE/rabbitmq/rabbitmq.conf" <<CONF
listeners.tcp.1 = 127.0.0.1:$AMQP_PORT
loopback_users = none
log.file.level = warning
CONF
  if "$RMQ_BIN/rabbitmqctl" -n "$NODE" status >/dev/null 2>&1; then
    log "RabbitMQ already running on 127.0.0.1:$AMQP_PORT"
  else
    # Started in the background rather than with -detached, so that a node that dies at boot
    # (a bad port, a stale lock) is seen at once instead of after a long wait.
    (cd "$STATE/rabbitmq" && setsid nohup "$RMQ_BIN/rabbitmq-server" > "$STATE/rabbitmq/log/startup.log" 2>&1 &
     echo $! > "$STATE/rabbitmq/launcher.pid")
    local waited=0
    # The node needs a few seconds to register with epmd before any CLI call reaches it.
    until "$RMQ_BIN/rabbitmqctl" -n "$NODE" -q await_startup --timeout 120 >/dev/null 2>&1; do
      waited=$((waited + 1))
      if ! kill -0 "$(cat "$STATE/rabbitmq/launcher.pid")" 2>/dev/null || [ "$waited" -ge 120 ]; then
        log "RabbitMQ did not start; last lines of $STATE/rabbitmq/log/startup.log:"
        tail -n 5 "$STATE/rabbitmq/log/startup.log" >&2; exit 1
      fi
      sleep 1
    done
    log "RabbitMQ started on 127.0.0.1:$AMQP_PORT"
  fi
  local ctl=("$RMQ_BIN/rabbitmqctl" -n "$NODE" -q)
  "${ctl[@]}" list_vhosts | grep -qx referrald || "${ctl[@]}" add_vhost referrald >/dev/null
  "${ctl[@]}" list_users | grep -q '^referrald\b' || "${ctl[@]}" add_user referrald referrald >/dev/null
  "${ctl[@]}" set_permissions -p referrald referrald '.*' '.*' '.*' >/dev/null
  "${ctl[@]}" list_vhosts | grep -qx referrald_test || "${ctl[@]}" add_vhost referrald_test >/dev/null
  "${ctl[@]}" set_permissions -p referrald_test referrald '.*' '.*' '.*' >/dev/null
  # Tests force-close the daemon's connections and inspect queues: they need the tag.
  "${ctl[@]}" set_user_tags referrald administrator >/dev/null
}

rmq_stop() {
  rmq_env
  "$RMQ_BIN/rabbitmqctl" -n "$NODE" -q stop >/dev/null 2>&1 && log "RabbitMQ stopped" || true
}

print_env() {
  cat <<ENV
export REFERRALD_AMQP_URL=amqp://referrald:referrald@127.0.0.1:$AMQP_PORT/referrald
export REFERRALD_DATABASE_URL=postgres://referrald:referrald@127.0.0.1:$PG_PORT/referrald
export REFERRALD_TEST_AMQP_URL=amqp://referrald:referrald@127.0.0.1:$AMQP_PORT/referrald_test
export REFERRALD_TEST_DATABASE_URL=postgres://referrald:referrald@127.0.0.1:$PG_PORT/referrald
export REFERRALD_RABBITMQ_NODE=$NODE
export REFERRALD_PG_CTL="$PG_BIN/pg_ctl -D $STATE/postgres"
ENV
}

case "${1:-start}" in
  start) install_packages; pg_start; rmq_start ;;
  stop) rmq_stop; pg_stop ;;
  status)
    rmq_env
    "$RMQ_BIN/rabbitmqctl" -n "$NODE" -q status >/dev/null 2>&1 && log "RabbitMQ up" || log "RabbitMQ down"
    as_pg "$PG_BIN/pg_ctl" -D "$STATE/postgres" status >/dev/null 2>&1 && log "PostgreSQL up" || log "PostgreSQL down" ;;
  env) print_env ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
