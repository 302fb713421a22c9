#!/usr/bin/env bash
# Renders `referrald report --format html` in headless Chromium, checks that the funnel's six
# bars and their labels are in the rendered DOM, and writes a PNG screenshot.
#
#   REFERRALD_DATABASE_URL=... scripts/report-screenshot.sh [OUT.png] [report options: --from --to --program]
#
# Needs Debian's chromium (apt-get install -y chromium). Exits non-zero when a bar is missing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/.build/report.png}"
shift || true
BIN="${REFERRALD_BIN:-$ROOT/.build/debug/referrald}"
CHROMIUM="$(command -v chromium || command -v chromium-browser || true)"
[ -n "$CHROMIUM" ] || { echo "chromium is not installed: apt-get install -y chromium" >&2; exit 1; }
[ -x "$BIN" ] || { echo "build first: swift build" >&2; exit 1; }

HTML="${OUT%.png}.html"
mkdir -p "$(dirname "$OUT")"
REFERRALD_LOG_LEVEL=warning "$BIN" report --format html "$@" > "$HTML"
# --no-sandbox: Chromium refuses its sandbox when run as root (CI containers).
flags=(--headless --no-sandbox --disable-gpu --hide-scrollbars)
DOM="$("$CHROMIUM" "${flags[@]}" --dump-dom "file://$HTML" 2>/dev/null)"
missing=0
for stage in lead ordered installed activated qualified rewarded; do
  if ! grep -q "class=\"funnel-bar\" data-stage=\"$stage\"" <<<"$DOM" || ! grep -q ">$stage</text>" <<<"$DOM"; then
    echo "funnel bar or label missing: $stage" >&2; missing=1
  fi
done
grep -q 'class="trend-line" data-series="leads"' <<<"$DOM" || { echo "weekly trend missing" >&2; missing=1; }
"$CHROMIUM" "${flags[@]}" --window-size=900,1500 --screenshot="$OUT" "file://$HTML" 2>/dev/null
echo "funnel bars: $(grep -o 'class="funnel-bar" data-stage="[a-z]*" data-count="[0-9]*"' <<<"$DOM" | sed 's/.*stage="\([a-z]*\)" data-count="\([0-9]*\)"/\1=\2/' | tr '\n' ' ')"
echo "screenshot: $OUT"
exit $missing
