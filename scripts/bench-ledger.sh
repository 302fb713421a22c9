#!/usr/bin/env bash
# Times `referrald ledger export` and `referrald ledger totals` over 1,000,000 generated rewards.
#
#   scripts/bench-ledger.sh [REWARDS]        (default 1000000; an even number)
#   KEEP=1 scripts/bench-ledger.sh           (leave the scratch database for a look afterwards)
#
# Creates a scratch database on the local PostgreSQL (ledger_bench_<pid>; dropped at the end),
# fills it with generate_series: REWARDS / 2 referrals over 2025-2026 with a referrer and a friend
# reward each (30 % cash, 10 % in EUR), their reward_* effects in the stored JSON shape
# (issued; applied with billing's credit_applied fact; rejected with its credit_rejected fact,
# some then retried and applied; reversed) and a status effect per referral. Then runs each
# command under /usr/bin/time -v, output to a pipe that counts lines, and prints wall time,
# rows/s and peak RSS. A benchmark, not a test: it asserts nothing. Build first:
#   swift build -c release --product referrald
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
N="${1:-1000000}"
BASE_URL="${REFERRALD_TEST_DATABASE_URL:-postgres://referrald:referrald@127.0.0.1:54329/referrald}"
DB="ledger_bench_$$"
URL="${BASE_URL%/*}/$DB"
BIN="${REFERRALD_BIN:-$ROOT/.build/release/referrald}"
[ -x "$BIN" ] || { echo "build first: swift build -c release --product referrald (or set REFERRALD_BIN)" >&2; exit 1; }

psql -q -X "$BASE_URL" -c "CREATE DATABASE $DB"
cleanup() { [ "${KEEP:-0}" = 1 ] || psql -q -X "$BASE_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"; }
trap cleanup EXIT
REFERRALD_DATABASE_URL="$URL" REFERRALD_LOG_LEVEL=warning "$BIN" migrate >/dev/null

start=$(date +%s.%N)
psql -q -X -v ON_ERROR_STOP=1 -v n="$((N / 2))" "$URL" <<'SQL'
SET synchronous_commit = off;
INSERT INTO program_versions (program_id, version, canonical, program) VALUES ('consumer', 1, 'bench', '{}');

-- (i * prime) % 100 spreads each fraction over the two years; 5 referrals per referrer.
CREATE TEMP TABLE g AS
SELECT i, 'acct-r' || (1 + (i * 7919) % (:n / 5)) AS referrer, (i * 7907) % 100 AS p,
       timestamptz '2025-01-01' + (i::float8 / :n) * interval '730 days' AS issued_at
FROM generate_series(1::int8, :n) i;

INSERT INTO referrals (referral_id, lead_id, code, referrer_account_id, program_id, program_version,
                       friend_account_id, stage, created_at, updated_at)
SELECT 'ref-' || i, 'lead-' || i, 'CODE', referrer, 'consumer', 1, 'acct-f' || i,
       CASE WHEN p BETWEEN 45 AND 47 THEN 'reversed' ELSE 'rewarded' END, issued_at, issued_at
FROM g;

-- states: reversed (referrer, p 45-47), failed (p % 11 = 0), issued (p % 7 = 0), applied
-- (the rest; those with p % 13 = 0 after a rejection and a retry).
CREATE TEMP TABLE w AS
SELECT 'rwd-' || i || '-' || b AS reward_id, 'ref-' || i AS referral_id, b AS beneficiary,
       CASE b WHEN 'referrer' THEN referrer ELSE 'acct-f' || i END AS account_id,
       CASE WHEN p < 30 THEN 'cash' ELSE 'bill_credit' END AS kind,
       CASE b WHEN 'referrer' THEN 5000 ELSE 2500 END AS amount_minor,
       CASE WHEN p % 10 = 0 THEN 'EUR' ELSE 'USD' END AS currency,
       CASE WHEN p BETWEEN 45 AND 47 AND b = 'referrer' THEN 'reversed' WHEN p % 11 = 0 THEN 'failed'
            WHEN p % 7 = 0 THEN 'issued' ELSE 'applied' END AS state,
       p % 13 = 0 AS retried, issued_at
FROM g CROSS JOIN (VALUES ('referrer'), ('friend')) AS bb(b);

INSERT INTO rewards (reward_id, referral_id, beneficiary, account_id, kind, amount_minor, currency, program_id,
                     state, failures, issued_at, updated_at)
SELECT reward_id, referral_id, beneficiary, account_id, kind, amount_minor, currency, 'consumer', state,
       CASE WHEN state = 'failed' OR retried THEN 1 ELSE 0 END, issued_at, issued_at + interval '3 days'
FROM w;

-- The stored JSON of Effect.storedJSON(): what the worker writes, read back by the export.
CREATE TEMP TABLE grant_json AS
SELECT reward_id, jsonb_build_object('accountId', account_id, 'amountMinor', amount_minor, 'beneficiary', beneficiary,
       'currency', currency, 'kind', kind, 'programId', 'consumer', 'referralId', referral_id, 'rewardId', reward_id) AS g
FROM w;

INSERT INTO effects (effect_key, referral_id, kind, effect, recorded_at)
SELECT 'status:' || referral_id || ':1', referral_id, 'status_changed',
       jsonb_build_object('statusChanged', jsonb_build_object('_0', jsonb_build_object('referralId', referral_id,
           'to', 'rewarded', 'sequence', 1))), issued_at
FROM w WHERE beneficiary = 'referrer'
UNION ALL
SELECT 'issue:' || w.reward_id || ':0', referral_id, 'reward_issued', jsonb_build_object('rewardIssued', jsonb_build_object('_0', g)), issued_at
FROM w JOIN grant_json USING (reward_id)
UNION ALL
SELECT 'failed:' || reward_id || ':1', referral_id, 'reward_failed',
       jsonb_build_object('rewardFailed', jsonb_build_object('failure', 1, 'final', false, 'reason', 'on hold', 'rewardId', reward_id)),
       issued_at + interval '1 day'
FROM w WHERE state = 'failed' OR (state = 'applied' AND retried)
UNION ALL
SELECT 'issue:' || w.reward_id || ':1', referral_id, 'reward_retried',
       jsonb_build_object('rewardRetried', jsonb_build_object('_0', g, 'attempt', 1)), issued_at + interval '2 days'
FROM w JOIN grant_json USING (reward_id) WHERE state = 'applied' AND retried
UNION ALL
SELECT 'applied:' || reward_id, referral_id, 'reward_applied', jsonb_build_object('rewardApplied', jsonb_build_object('rewardId', reward_id)),
       issued_at + interval '3 days'
FROM w WHERE state IN ('applied', 'reversed')
UNION ALL
SELECT 'reverse:' || reward_id, referral_id, 'reward_reversed',
       jsonb_build_object('rewardReversed', jsonb_build_object('_0', jsonb_build_object('accountId', account_id,
           'amountMinor', amount_minor, 'currency', currency, 'reason', 'friend_cancelled', 'referralId', referral_id,
           'rewardId', reward_id))), issued_at + interval '40 days'
FROM w WHERE state = 'reversed';

INSERT INTO facts (kind, at, account_id, reward_id, amount_minor, currency, reason)
SELECT 'credit_applied', issued_at + interval '3 days' - interval '5 seconds', account_id, reward_id, amount_minor, currency, NULL
FROM w WHERE state IN ('applied', 'reversed')
UNION ALL
SELECT 'credit_rejected', issued_at + interval '1 day' - interval '5 seconds', NULL, reward_id, NULL, NULL, 'on hold'
FROM w WHERE state = 'failed' OR (state = 'applied' AND retried);

VACUUM ANALYZE rewards, effects, facts, referrals;
SQL
end=$(date +%s.%N)
printf 'generated in %.1f s: %s\n' "$(echo "$end - $start" | bc)" "$(psql -q -X -t -A "$URL" -c "SELECT 'rewards ' || (SELECT count(*) FROM rewards) || ', effects ' || (SELECT count(*) FROM effects) || ', facts ' || (SELECT count(*) FROM facts)")"

# Runs one command; prints wall time, rows/s (rows = the count the command prints on stderr)
# and peak RSS (/usr/bin/time's maximum resident set size).
run() {
  local label="$1"; shift
  local err=/tmp/ledger-bench-$$.err
  /usr/bin/time -v env REFERRALD_DATABASE_URL="$URL" REFERRALD_LOG_LEVEL=warning "$BIN" ledger "$@" 2>"$err" | wc -c > "$err.bytes"
  local rows wall rss bytes
  rows=$(grep -Eo '^ledger [a-z]+: [0-9]+' "$err" | grep -Eo '[0-9]+$')
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, t, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + t[i]; print s }' "$err")
  rss=$(awk -F': ' '/Maximum resident set size/ { printf "%.1f", $2 / 1024 }' "$err")
  bytes=$(cat "$err.bytes")
  printf '%-42s %9s rows %8.2f s %10.0f rows/s  peak RSS %6s MiB  %5.0f MB out\n' \
    "$label" "$rows" "$wall" "$(echo "$rows / $wall" | bc -l)" "$rss" "$(echo "$bytes / 1000000" | bc -l)"
  rm -f "$err" "$err.bytes"
}
run "export --format csv"                    export --format csv
run "export --format json"                   export --format json
run "export --from 2026-01-01 --to 2026-04-01" export --from 2026-01-01 --to 2026-04-01
run "totals --year 2025"                     totals --year 2025
run "totals --year 2025 --kind cash --min-amount 10000 --format json" totals --year 2025 --kind cash --min-amount 10000 --format json
