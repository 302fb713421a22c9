#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, for the fault suite's `cluster-node-down`
# scenario: production runs a quorum queue on three nodes, and a single node replicates
# nothing, so what a lost node does to the daemon can only be seen on a cluster.
#
#   scripts/rabbit-cluster.sh start | stop | env
#
# Nodes referrald-c1..c3@localhost listen for AMQP on 127.0.0.1:5681..5683 (distribution ports
# 25681..25683), with their data under $STATE/cluster/. Idempotent: `start` starts the nodes
# that are down and joins c2 and c3 to c1 once. It expects the packages scripts/services.sh
# installs (run that first); the Erlang cookie in $HOME is the one every node shares.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${REFERRALD_SERVICES_DIR:-$ROOT/.services}/cluster"
RMQ_BIN=/usr/lib/rabbitmq/bin
BASE_PORT="${REFERRALD_CLUSTER_BASE_PORT:-5680}"

log() { printf 'rabbit-cluster: %s\n' "$*" >&2; }
node() { echo "referrald-c$1@localhost"; }
port() { echo $((BASE_PORT + $1)); }

node_env() {
  local n="$1" dir="$STATE/n$1"
  RABBITMQ_NODENAME="$(node "$n")"
  RABBITMQ_NODE_PORT="$(port "$n")"
  export RABBITMQ_NODENAME RABBITMQ_NODE_PORT
  export RABBITMQ_DIST_PORT=$(( $(port "$n") + 20000 ))
  export ERL_EPMD_ADDRESS=127.0.0.1
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  export RABBITMQ_MNESIA_BASE="$dir/mnesia"
  export RABBITMQ_LOG_BASE="$dir/log"
  export RABBITMQ_PID_FILE="$dir/rabbit.pid"
  export RABBITMQ_CONFIG_FILE="$dir/rabbitmq"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
}

ctl() { local n="$1"; shift; "$RMQ_BIN/rabbitmqctl" -n "$(node "$n")" -q "$@"; }

start_node() {
  local n="$1" dir="$STATE/n$1"
  mkdir -p "$dir/mnesia" "$dir/log"
  node_env "$n"
  [ -f "$dir/enabled_plugins" ] || echo '[].' > "$dir/enabled_plugins"
  cat > "$dir/rabbitmq.conf" <<CONF
listeners.tcp.1 = 127.0.0.1:$(port "$n")
loopback_users = none
log.file.level = warning
CONF
  if ctl "$n" status >/dev/null 2>&1; then return 0; fi
  (cd "$dir" && setsid nohup "$RMQ_BIN/rabbitmq-server" > "$dir/log/startup.log" 2>&1 & echo $! > "$dir/launcher.pid")
  local waited=0
  until ctl "$n" await_startup --timeout 120 >/dev/null 2>&1; do
    waited=$((waited + 1))
    if ! kill -0 "$(cat "$dir/launcher.pid")" 2>/dev/null || [ "$waited" -ge 120 ]; then
      log "node $(node "$n") did not start; last lines of $dir/log/startup.log:"
      tail -n 5 "$dir/log/startup.log" >&2; exit 1
    fi
    sleep 1
  done
  log "node $(node "$n") started on 127.0.0.1:$(port "$n")"
}

start() {
  for n in 1 2 3; do start_node "$n"; done
  for n in 2 3; do
    if ! ctl 1 cluster_status 2>/dev/null | grep -q "$(node "$n")"; then
      ctl "$n" stop_app >/dev/null 2>&1
      ctl "$n" reset >/dev/null 2>&1
      ctl "$n" join_cluster "$(node 1)" >/dev/null 2>&1
      ctl "$n" start_app >/dev/null 2>&1
      log "node $(node "$n") joined $(node 1)"
    fi
  done
  ctl 1 list_vhosts | grep -qx referrald || ctl 1 add_vhost referrald >/dev/null
  ctl 1 list_users | grep -q '^referrald\b' || ctl 1 add_user referrald referrald >/dev/null
  ctl 1 set_permissions -p referrald referrald '.*' '.*' '.*' >/dev/null
  ctl 1 set_user_tags referrald administrator >/dev/null
}

stop() {
  for n in 3 2 1; do
    node_env "$n"
    if ctl "$n" stop >/dev/null 2>&1; then log "node $(node "$n") stopped"; fi
  done
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  env)
    echo "export REFERRALD_CLUSTER_AMQP_URL=amqp://referrald:referrald@127.0.0.1:$(port 1),127.0.0.1:$(port 2),127.0.0.1:$(port 3)/referrald"
    echo "export REFERRALD_CLUSTER_NODES=$(node 1),$(node 2),$(node 3)" ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
