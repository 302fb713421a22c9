#!/usr/bin/env bash
# Runs every test: unit tests of the pure core and integration tests against a real RabbitMQ and
# PostgreSQL on 127.0.0.1, which scripts/services.sh installs and starts when needed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/services.sh start
eval "$(scripts/services.sh env)"
if [ -d ../shared/contract ]; then
  echo "contract: conformance tests read $(cd ../shared/contract && pwd)"
else
  echo "contract: ../shared/contract not found; conformance tests will report SKIPPED"
fi
# The deploy/ checks first: seconds, and they catch a unit or alert rule gone stale.
scripts/check-deploy.sh
python3 scripts/check-asyncapi.py
swift build --build-tests "$@"
swift test --skip-build "$@"
