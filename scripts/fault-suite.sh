#!/usr/bin/env bash
# The fault suite (Sources/referrald-faults): kills, restarts and cuts the real daemon, RabbitMQ
# and PostgreSQL under a referral load and checks that no reward is lost or paid twice.
#
#   scripts/fault-suite.sh [referrald-faults options]   e.g. --scenarios kill-9,pg-outage
#
# It RESTARTS AND STOPS the services it is pointed at: CI runs it alone after the tests. On a
# shared machine, start a second pair first and point everything at it through the environment
# scripts/services.sh reads, e.g.
#   export REFERRALD_SERVICES_DIR=$PWD/.services-faults REFERRALD_AMQP_PORT=5692 REFERRALD_PG_PORT=54349
# Bounded in time: each scenario has a drain timeout and the whole run a hard limit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/services.sh start
eval "$(scripts/services.sh env)"
# The three-node cluster of the cluster-node-down scenario (about 25 s to start the first time).
scripts/rabbit-cluster.sh start
eval "$(scripts/rabbit-cluster.sh env)"
# REFERRALD_PG_CTL is "<bin>/pg_ctl -D <data dir>": the suite restarts that cluster.
read -r pg_ctl _ pg_data <<<"$REFERRALD_PG_CTL"
swift build --product referrald
swift build --product referrald-faults
bin="$(swift build --show-bin-path)"
exec timeout --signal=TERM --kill-after=30 "${REFERRALD_FAULTS_TIMEOUT:-1500}" \
  "$bin/referrald-faults" \
  --amqp-url "$REFERRALD_AMQP_URL" --database-url "$REFERRALD_DATABASE_URL" \
  --rabbitmqctl-node "$REFERRALD_RABBITMQ_NODE" \
  --cluster-amqp-url "$REFERRALD_CLUSTER_AMQP_URL" --cluster-node "${REFERRALD_CLUSTER_NODES%%,*}" \
  --pg-bin "$(dirname "$pg_ctl")" --pg-data "$pg_data" \
  --daemon "$bin/referrald" "$@"
