#!/usr/bin/env bash
# Runs every test: unit tests of the pure core and integration tests against a real RabbitMQ and
# PostgreSQL on 127.0.0.1, which scripts/services.sh installs and starts when needed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/services.sh start
# The HTML report is checked in a real headless browser (Debian's chromium).
if ! command -v chromium >/dev/null; then
  echo "test: installing chromium for the report's browser check"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
eval "$(scripts/services.sh env)"
if [ -d ../shared/contract ]; then
  echo "contract: conformance tests read $(cd ../shared/contract && pwd)"
else
  echo "contract: ../shared/contract not found; conformance tests will report SKIPPED"
fi
# The deploy/ checks first: seconds, and they catch a unit or alert rule gone stale.
scripts/check-deploy.sh
python3 scripts/check-asyncapi.py
# House rules, in seconds: the formatter's configuration is .swift-format (the toolchain ships
# swift-format), and every shell script passes shellcheck (Debian's package).
swift format lint --strict --recursive --parallel Sources Tests Package.swift
if ! command -v shellcheck >/dev/null; then
  echo "test: installing shellcheck"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends shellcheck >/dev/null
fi
shellcheck scripts/*.sh .ci/run
# The container image, built as `docker build` would (no Docker engine here): a fresh static
# release build: 7 min measured here with two other builds sharing the 2 cores (5 CPU-minutes).
# REFERRALD_SKIP_IMAGE=1 skips it while iterating.
if [ "${REFERRALD_SKIP_IMAGE:-0}" != 1 ]; then
  scripts/check-image.sh
fi
swift build --build-tests "$@"
# The README's first five minutes: the demo must end with both rewards. It gives up by itself
# after REFERRALD_DEMO_TIMEOUT (120 s); the outer timeout catches a hang anywhere else.
demo_log="$(mktemp)"
timeout 300 scripts/demo.sh | tee "$demo_log"
if ! tail -n 1 "$demo_log" | grep -q '^both rewards issued'; then
  echo "test: the demo did not end with both rewards" >&2; exit 1
fi
rm -f "$demo_log"
# The fault suite kills and restarts the services under load (about 8 minutes): it runs alone,
# before the tests, so that swift test's summary is the last word. REFERRALD_SKIP_FAULTS=1 skips it.
if [ "${REFERRALD_SKIP_FAULTS:-0}" != 1 ]; then
  scripts/fault-suite.sh
  scripts/services.sh start   # everything back up and reachable before the tests
fi
# The unit targets first, alone: they need no service, and the pure core's property,
# differential and fuzz tests keep both cores busy for a minute. Beside them the integration
# tests that time responsiveness (a ticker while queries block, a TLS refusal, a forced close)
# waited seconds for one of the cooperative pool's two threads and failed. The integration
# suites' summary is the last word. Each module's unit tests are the target named after it.
unit='^(ReferralCoreTests|CivilTimeTests|ReferralStoreTests|ReferralWorkerTests|AMQPTests|PostgresTests)\.'
swift test --skip-build --filter "$unit" "$@"
swift test --skip-build --skip "$unit" "$@"
