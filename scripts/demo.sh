#!/usr/bin/env bash
# The referral story in about half a minute: starts a daemon of its own (vhost and database
# referrald_demo, programs with a 10-second hold: scripts/demo-programs.yaml) and plays, with
# `referrald demo`, a referrer's activation, a friend's lead with her code, the order, the install
# and the activation; it prints every event the daemon publishes as it arrives, up to both
# rewards, then stops the daemon. Exits 0 once both rewards were issued.
#
#   scripts/demo.sh                 (scripts/test.sh runs it too)
#   scripts/demo.sh --bodies        (also the JSON of each published event)
#
# Environment: REFERRALD_DEMO_TIMEOUT (seconds, default 120).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/services.sh start
eval "$(scripts/services.sh env)"
export REFERRALD_AMQP_URL="$REFERRALD_DEMO_AMQP_URL"
export REFERRALD_DATABASE_URL="$REFERRALD_DEMO_DATABASE_URL"
export REFERRALD_PROGRAMS_FILE="$PWD/scripts/demo-programs.yaml"
# No endpoint: a daemon of scripts/run-local.sh may hold the default port.
export REFERRALD_HTTP_PORT=0
# A debug build: the one scripts/test.sh makes, so CI builds nothing more for the demo.
swift build --product referrald
bin="$(swift build --show-bin-path)/referrald"
REFERRALD_LOG_LEVEL=warning "$bin" migrate >/dev/null
REFERRALD_LOG_LEVEL=warning "$bin" topology >/dev/null

log="$(mktemp "${TMPDIR:-/tmp}/referrald-demo.XXXXXX.log")"
"$bin" run >"$log" 2>&1 &
daemon=$!
# shellcheck disable=SC2317  # invoked by the EXIT trap
stop_daemon() {
  kill -TERM "$daemon" 2>/dev/null || true
  wait "$daemon" 2>/dev/null || true
}
trap stop_daemon EXIT
echo "demo: the daemon runs as pid $daemon (its log: $log); the story begins"

status=0
REFERRALD_LOG_LEVEL=warning "$bin" demo --timeout "${REFERRALD_DEMO_TIMEOUT:-120}" "$@" || status=$?
if [ $status != 0 ]; then
  echo "demo: failed (exit $status); the daemon's last lines:" >&2
  tail -n 20 "$log" >&2
else
  rm -f "$log"
fi
exit $status
