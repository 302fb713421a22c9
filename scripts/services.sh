#!/usr/bin/env bash
# Local RabbitMQ and PostgreSQL for referrald's daemon and tests, on 127.0.0.1 only, with their
# data under one folder of the project (default: .services/). Idempotent: `start` installs what
# is missing (Debian packages), initialises what has no data yet and starts what is not running.
#
#   scripts/services.sh start | stop | status | env
#
# No systemd runs on these machines, so both servers are started by hand, detached.
#
# TLS: a throw-away CA (made once, in $STATE/tls) signs the servers' certificate (CN and SAN
# localhost, SAN IP 127.0.0.1) and a client certificate; a second, unrelated CA exists only so
# that tests can show a wrong CA is refused. RabbitMQ listens for AMQPS on the AMQP port - 1
# (5671); PostgreSQL has ssl=on on its one port (libpq negotiates TLS there).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${REFERRALD_SERVICES_DIR:-$ROOT/.services}"
PG_PORT="${REFERRALD_PG_PORT:-54329}"
AMQP_PORT="${REFERRALD_AMQP_PORT:-5672}"
PG_BIN="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin 2>/dev/null | sort -V | tail -n 1 || true)"
RMQ_BIN=/usr/lib/rabbitmq/bin
AMQPS_PORT=$((AMQP_PORT - 1))
NODE="referrald-$AMQP_PORT@localhost"
TLS_DIR="$STATE/tls"

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
    PG_BIN="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin | sort -V | tail -n 1)"
  fi
}

# Makes the CAs and certificates once. Generated in a scratch folder and moved into place in
# one rename, so an interrupted run never leaves a CA without the certificates it signed (a
# half-made set would be kept by the "exists" check and fail every handshake).
tls_material() {
  [ -f "$TLS_DIR/wrong-client.pem" ] && return 0
  log "making a throw-away CA and certificates in $TLS_DIR"
  mkdir -p "$STATE"
  local tmp; tmp="$(mktemp -d "$STATE/tls.XXXXXX")"
  (
    cd "$tmp"
    umask 077
    ca() {  # name, subject
      openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "$2" -keyout "$1.key" -out "$1.pem" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
    }
    leaf() {  # name, subject, signing CA, extensions
      openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
      printf '%s\n' "$4" > "$1.ext"
      openssl x509 -req -in "$1.csr" -CA "$3.pem" -CAkey "$3.key" -set_serial "0x$(openssl rand -hex 16)" \
        -days 825 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    ca ca "/CN=referrald throw-away CA"
    ca wrong-ca "/CN=referrald wrong CA (tests only)"
    # DNS and IP SANs: libpq matches IP SANs, librabbitmq 0.11 only DNS ones (see docs/security.md).
    leaf server "/CN=localhost" ca "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth
basicConstraints=critical,CA:FALSE"
    leaf client "/CN=referrald" ca "extendedKeyUsage=clientAuth
basicConstraints=critical,CA:FALSE"
    leaf wrong-client "/CN=referrald" wrong-ca "extendedKeyUsage=clientAuth
basicConstraints=critical,CA:FALSE"
    # Certificates are public; tests running as another user must read them.
    chmod 644 ./*.pem
  )
  rm -rf "$TLS_DIR"
  mv "$tmp" "$TLS_DIR"
  chmod 755 "$TLS_DIR"
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
  pg_tls_config "$data"
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
  # ssl is reloadable (PostgreSQL 10+): a cluster started by the old script gets TLS from a
  # reload, without the restart that would fail other checkouts' running tests.
  if [ "$("${psql[@]}" -c "show ssl")" != on ]; then
    if as_pg "$PG_BIN/pg_ctl" -D "$data" status >/dev/null 2>&1; then
      as_pg "$PG_BIN/pg_ctl" -D "$data" reload >/dev/null
      sleep 1
    fi
    if [ "$("${psql[@]}" -c "show ssl")" = on ]; then
      log "PostgreSQL: TLS turned on by a reload"
    else
      log "PostgreSQL on 127.0.0.1:$PG_PORT runs WITHOUT TLS (not this folder's cluster, or the reload failed: see its server.log); run scripts/services.sh stop && scripts/services.sh start"
    fi
  fi
  if [ "$("${psql[@]}" -c "select 1 from pg_roles where rolname='referrald'")" != 1 ]; then
    "${psql[@]}" -c "create role referrald login password 'referrald' createdb"
  fi
  # referrald_demo: scripts/demo.sh's own database, so the demo never touches run-local's data.
  local db
  for db in referrald referrald_demo; do
    if [ "$("${psql[@]}" -c "select 1 from pg_database where datname='$db'")" != 1 ]; then
      "${psql[@]}" -c "create database $db owner referrald"
    fi
  done
  pg_least_privilege_roles "${psql[@]}"
}

# The server's key and certificate are copied into the data folder: PostgreSQL refuses a key
# that its own user does not own or that others can read.
pg_tls_config() {
  local data="$1" pair
  for pair in server.pem:server.crt server.key:server.key ca.pem:root.crt; do
    cmp -s "$TLS_DIR/${pair%%:*}" "$data/${pair#*:}" || install -m 600 "$TLS_DIR/${pair%%:*}" "$data/${pair#*:}"
    [ "$(id -u)" = 0 ] && chown postgres: "$data/${pair#*:}"
  done
  # An include keeps the TLS lines in their own file, so clusters made before TLS get them too.
  grep -qx "include_if_exists = 'referrald-tls.conf'" "$data/postgresql.conf" \
    || echo "include_if_exists = 'referrald-tls.conf'" >> "$data/postgresql.conf"
  # ssl_ca_file lets clients present a certificate; pg_hba does not demand one, so the
  # password-only connections of the existing tests keep working.
  cat > "$data/referrald-tls.conf" <<CONF
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
ssl_ca_file = 'root.crt'
ssl_min_protocol_version = 'TLSv1.2'
CONF
  [ "$(id -u)" = 0 ] && chown postgres: "$data/referrald-tls.conf"
  return 0
}

# The least-privilege roles of deploy/postgres/roles.sql, with local passwords. The migration
# role may create databases here (and only here): the privilege tests migrate a fresh one.
pg_least_privilege_roles() {
  "$@" -d referrald -f "$ROOT/deploy/postgres/roles.sql" >/dev/null
  "$@" -c "alter role referrald_migrate password 'referrald_migrate' createdb" \
       -c "alter role referrald_app password 'referrald_app'" >/dev/null
}

pg_stop() {
  local data="$STATE/postgres"
  [ -f "$data/PG_VERSION" ] || return 0
  if as_pg "$PG_BIN/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1; then log "PostgreSQL stopped"; fi
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
  # TLS: verify_peer asks a client for a certificate and checks one that is sent against the
  # CA; fail_if_no_peer_cert = false still admits password-only clients.
  cat > "$STATE/rabbitmq/rabbitmq.conf" <<CONF
listeners.tcp.1 = 127.0.0.1:$AMQP_PORT
listeners.ssl.1 = 127.0.0.1:$AMQPS_PORT
ssl_options.cacertfile = $TLS_DIR/ca.pem
ssl_options.certfile = $TLS_DIR/server.pem
ssl_options.keyfile = $TLS_DIR/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
ssl_options.versions.1 = tlsv1.3
ssl_options.versions.2 = tlsv1.2
loopback_users = none
log.file.level = warning
CONF
  if "$RMQ_BIN/rabbitmqctl" -n "$NODE" status >/dev/null 2>&1; then
    log "RabbitMQ already running on 127.0.0.1:$AMQP_PORT"
    # Listeners are only read at boot: a node started by the script of before TLS has none.
    if ! "$RMQ_BIN/rabbitmq-diagnostics" -n "$NODE" -q listeners 2>/dev/null | grep -q "port: $AMQPS_PORT,"; then
      log "RabbitMQ runs WITHOUT the AMQPS listener on 127.0.0.1:$AMQPS_PORT (started before TLS was added); run scripts/services.sh stop && scripts/services.sh start"
    fi
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
    log "RabbitMQ started on 127.0.0.1:$AMQP_PORT (AMQPS on $AMQPS_PORT)"
  fi
  local ctl=("$RMQ_BIN/rabbitmqctl" -n "$NODE" -q)
  "${ctl[@]}" list_vhosts | grep -qx referrald || "${ctl[@]}" add_vhost referrald >/dev/null
  "${ctl[@]}" list_users | grep -q '^referrald\b' || "${ctl[@]}" add_user referrald referrald >/dev/null
  "${ctl[@]}" set_permissions -p referrald referrald '.*' '.*' '.*' >/dev/null
  # referrald_test for the tests, referrald_demo for scripts/demo.sh (its events never mix with
  # those of a daemon of scripts/run-local.sh).
  local vhost
  for vhost in referrald_test referrald_demo; do
    "${ctl[@]}" list_vhosts | grep -qx "$vhost" || "${ctl[@]}" add_vhost "$vhost" >/dev/null
    "${ctl[@]}" set_permissions -p "$vhost" referrald '.*' '.*' '.*' >/dev/null
  done
  # Tests force-close the daemon's connections and inspect queues: they need the tag.
  "${ctl[@]}" set_user_tags referrald administrator >/dev/null
}

rmq_stop() {
  rmq_env
  if "$RMQ_BIN/rabbitmqctl" -n "$NODE" -q stop >/dev/null 2>&1; then log "RabbitMQ stopped"; fi
}

print_env() {
  cat <<ENV
export REFERRALD_AMQP_URL=amqp://referrald:referrald@127.0.0.1:$AMQP_PORT/referrald
export REFERRALD_DATABASE_URL=postgres://referrald:referrald@127.0.0.1:$PG_PORT/referrald
export REFERRALD_TEST_AMQP_URL=amqp://referrald:referrald@127.0.0.1:$AMQP_PORT/referrald_test
export REFERRALD_DEMO_AMQP_URL=amqp://referrald:referrald@127.0.0.1:$AMQP_PORT/referrald_demo
export REFERRALD_DEMO_DATABASE_URL=postgres://referrald:referrald@127.0.0.1:$PG_PORT/referrald_demo
export REFERRALD_TEST_DATABASE_URL=postgres://referrald:referrald@127.0.0.1:$PG_PORT/referrald
export REFERRALD_RABBITMQ_NODE=$NODE
export REFERRALD_PG_CTL="$PG_BIN/pg_ctl -D $STATE/postgres"
export REFERRALD_TEST_AMQPS_URL=amqps://referrald:referrald@localhost:$AMQPS_PORT/referrald_test
export REFERRALD_TEST_CA_FILE=$TLS_DIR/ca.pem
export REFERRALD_TEST_CLIENT_CERT=$TLS_DIR/client.pem
export REFERRALD_TEST_CLIENT_KEY=$TLS_DIR/client.key
export REFERRALD_TEST_WRONG_CA_FILE=$TLS_DIR/wrong-ca.pem
export REFERRALD_TEST_WRONG_CLIENT_CERT=$TLS_DIR/wrong-client.pem
export REFERRALD_TEST_WRONG_CLIENT_KEY=$TLS_DIR/wrong-client.key
export REFERRALD_TEST_MIGRATE_DATABASE_URL=postgres://referrald_migrate:referrald_migrate@127.0.0.1:$PG_PORT/referrald
export REFERRALD_TEST_APP_DATABASE_URL=postgres://referrald_app:referrald_app@127.0.0.1:$PG_PORT/referrald
ENV
}

case "${1:-start}" in
  start) install_packages; tls_material; pg_start; rmq_start ;;
  stop) [ -d "$STATE/cluster" ] && "$ROOT/scripts/rabbit-cluster.sh" stop; rmq_stop; pg_stop ;;
  status)
    rmq_env
    if "$RMQ_BIN/rabbitmqctl" -n "$NODE" -q status >/dev/null 2>&1; then log "RabbitMQ up"; else log "RabbitMQ down"; fi
    if as_pg "$PG_BIN/pg_ctl" -D "$STATE/postgres" status >/dev/null 2>&1; then log "PostgreSQL up"; else log "PostgreSQL down"; fi ;;
  env) print_env ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
