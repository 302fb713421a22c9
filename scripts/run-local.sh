#!/usr/bin/env bash
# Runs the daemon against local RabbitMQ and PostgreSQL (started by scripts/services.sh), with
# the example programs of deploy/. Stops with Ctrl-C. Extra arguments go to `referrald run`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/services.sh start
eval "$(scripts/services.sh env)"
export REFERRALD_PROGRAMS_FILE="${REFERRALD_PROGRAMS_FILE:-$PWD/deploy/programs.example.yaml}"
swift build -c release --product referrald
bin="$(swift build -c release --show-bin-path)/referrald"
"$bin" migrate
"$bin" topology
exec "$bin" run "$@"
