#!/usr/bin/env bash
# Times `referrald report --format json` over a generated database of 1,000,000 referrals.
#
#   scripts/bench-report.sh [REFERRALS]        (default 1000000)
#   REUSE=1 scripts/bench-report.sh            (time the report again over the last generated database)
#
# Generates, with generate_series in a scratch database on the local PostgreSQL (dropped and
# re-created each run), two years of: referral leads and their facts (order, install,
# activation, credit applied), referrals, status effects, rewards, codes, asks and 10 %
# unattributed leads. Then runs the report over the whole two years, over one quarter and over
# one program, and prints each elapsed time. A benchmark, not a test: it asserts nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
N="${1:-1000000}"
BASE_URL="${REFERRALD_TEST_DATABASE_URL:-postgres://referrald:referrald@127.0.0.1:54329/referrald}"
DB=referrald_bench_report
URL="${BASE_URL%/*}/$DB"
BIN="${REFERRALD_BIN:-$ROOT/.build/debug/referrald}"
[ -x "$BIN" ] || { echo "build first: swift build -c release (REFERRALD_BIN=.build/release/referrald)" >&2; exit 1; }

if [ "${REUSE:-0}" != 1 ]; then
psql -q -X "$BASE_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
REFERRALD_DATABASE_URL="$URL" REFERRALD_LOG_LEVEL=warning "$BIN" migrate >/dev/null

start=$(date +%s.%N)
psql -q -X -v ON_ERROR_STOP=1 -v n="$N" "$URL" <<'SQL'
SET synchronous_commit = off;
-- Deterministic pseudo-random buckets: (i * prime) % 100 spreads every fraction over the period.
INSERT INTO program_versions (program_id, version, canonical, program)
VALUES ('consumer', 1, 'bench consumer', '{"segment":"consumer"}'), ('business', 1, 'bench business', '{"segment":"business"}');

-- 1 referrer per 5 referrals (so 5 leads per referrer over two years, some repeat advocates).
INSERT INTO referral_codes (account_id, code, program_id, issued_at)
SELECT 'acct-r' || i, 'CODE-' || i, CASE WHEN i % 10 = 0 THEN 'business' ELSE 'consumer' END,
       timestamptz '2023-06-01' + i * interval '1 second'
FROM generate_series(1, :n / 5) i;

CREATE TEMP TABLE g AS
SELECT i, 'acct-r' || (1 + (i * 7919) % (:n / 5)) AS referrer,
       timestamptz '2024-01-01' + (i::float8 / :n) * interval '730 days' AS lead_at,
       (i * 7907) % 100 AS p
FROM generate_series(1::int8, :n) i;

INSERT INTO referrals (referral_id, lead_id, code, referrer_account_id, program_id, program_version,
                       friend_account_id, stage, reason, rule, created_at, updated_at)
SELECT 'ref-' || i, 'lead-' || i, 'CODE-' || substr(referrer, 7), referrer,
       CASE WHEN substr(referrer, 7)::int % 10 = 0 THEN 'business' ELSE 'consumer' END, 1,
       CASE WHEN p < 70 THEN 'acct-f' || i END,
       CASE WHEN p < 8 THEN 'rejected' WHEN p < 12 THEN 'lost' WHEN p < 30 THEN 'expired'
            WHEN p < 40 THEN 'ordered' WHEN p < 45 THEN 'activated' WHEN p < 48 THEN 'reversed' ELSE 'rewarded' END,
       CASE WHEN p < 4 THEN 'same_household' WHEN p < 6 THEN 'too_many_leads' WHEN p < 8 THEN 'already_referred'
            WHEN p < 12 THEN 'cancelled_before_qualifying' WHEN p < 30 THEN 'no_milestone_in_window'
            WHEN p >= 45 AND p < 48 THEN 'clawback' END,
       'bench', lead_at, lead_at
FROM g;

INSERT INTO facts (kind, at, lead_id, account_id, code, segment)
SELECT 'lead', lead_at, 'lead-' || i, NULL, 'CODE-' || substr(referrer, 7), 'consumer' FROM g
UNION ALL
SELECT 'order', lead_at + interval '2 days', 'lead-' || i, 'acct-f' || i, NULL, NULL FROM g WHERE p < 70 AND p >= 12 OR p BETWEEN 8 AND 11
UNION ALL
SELECT 'installed', lead_at + interval '9 days', NULL, 'acct-f' || i, NULL, NULL FROM g WHERE p >= 30 AND p < 70 AND p % 5 <> 0 OR p >= 40 AND p < 70
UNION ALL
SELECT 'activated', lead_at + interval '10 days', NULL, 'acct-f' || i, NULL, 'consumer' FROM g WHERE p >= 40 AND p < 70
UNION ALL
SELECT 'cancelled', lead_at + interval '50 days', NULL, 'acct-f' || i, NULL, NULL FROM g WHERE p >= 45 AND p < 48;

-- 10 % unattributed leads: half without a code, half with an unknown one.
INSERT INTO facts (kind, at, lead_id, code)
SELECT 'lead', timestamptz '2024-01-01' + (i::float8 / (:n / 10)) * interval '730 days', 'ulead-' || i,
       CASE WHEN i % 2 = 0 THEN 'ZZZZ-' || i END
FROM generate_series(1, :n / 10) i;

-- Rewards for qualified referrals (issued 30 days after activation), both beneficiaries.
INSERT INTO rewards (reward_id, referral_id, beneficiary, account_id, kind, amount_minor, currency, program_id,
                     state, issued_at, updated_at)
SELECT 'rwd-' || i || '-' || b, 'ref-' || i, b, CASE b WHEN 'referrer' THEN referrer ELSE 'acct-f' || i END,
       'bill_credit', CASE b WHEN 'referrer' THEN 5000 ELSE 2500 END, 'USD', 'consumer',
       CASE WHEN p >= 45 AND p < 48 AND b = 'referrer' THEN 'reversed' WHEN p % 7 = 0 THEN 'issued'
            WHEN p % 11 = 0 THEN 'failed' ELSE 'applied' END,
       lead_at + interval '40 days', lead_at + interval '41 days'
FROM g CROSS JOIN (VALUES ('referrer'), ('friend')) AS bb(b)
WHERE p >= 45 AND p < 70;

INSERT INTO facts (kind, at, account_id, reward_id, amount_minor, currency)
SELECT 'credit_applied', w.issued_at + interval '1 day', w.account_id, w.reward_id, w.amount_minor, w.currency
FROM rewards w WHERE w.state IN ('applied', 'reversed');

-- One status effect per referral, for the table's size (the report does not read effects).
INSERT INTO effects (effect_key, referral_id, kind, effect, recorded_at)
SELECT 'status:ref-' || i || ':1', 'ref-' || i, 'status_changed',
       jsonb_build_object('statusChanged', jsonb_build_object('_0', jsonb_build_object(
           'referralId', 'ref-' || i, 'to', 'lead', 'sequence', 1))), lead_at
FROM g;

-- Asks: 2 per referrer and as many again to customers who never refer, over the period.
INSERT INTO asks (ask_key, account_id, moment, program_id, due_at, sent_at)
SELECT 'ask-' || i, CASE WHEN i % 2 = 0 THEN 'acct-r' || (1 + i % (:n / 5)) ELSE 'acct-q' || i END,
       (ARRAY['post_install', 'post_activation', 'speed_test', 'support_win', 'bill_savings', 'periodic'])[1 + i % 6],
       'consumer', t, t
FROM (SELECT i, timestamptz '2024-01-01' + (i::float8 / (:n * 4 / 5)) * interval '730 days' AS t
      FROM generate_series(1, :n * 4 / 5) i) a;

ANALYZE facts, referrals, rewards, asks, effects, referral_codes;
SQL
end=$(date +%s.%N)
printf 'generated %s referrals in %.1f s\n' "$N" "$(echo "$end - $start" | bc)"
fi
psql -q -X -t "$URL" -c "SELECT 'rows: facts ' || (SELECT count(*) FROM facts) || ', referrals ' || (SELECT count(*) FROM referrals) || ', rewards ' || (SELECT count(*) FROM rewards) || ', asks ' || (SELECT count(*) FROM asks) || ', effects ' || (SELECT count(*) FROM effects)"

run() {
  local label="$1"; shift
  local s e
  s=$(date +%s.%N)
  REFERRALD_DATABASE_URL="$URL" REFERRALD_LOG_LEVEL=warning "$BIN" report --format json "$@" > "/tmp/bench-report-$label.json"
  e=$(date +%s.%N)
  printf 'report %-10s %6.2f s  (%s referred leads)\n' "$label" "$(echo "$e - $s" | bc)" \
    "$(grep -m1 '"actual_leads"' "/tmp/bench-report-$label.json" | tr -dc 0-9)"
}
run two-years --from 2024-01-01 --to 2026-01-01
run quarter   --from 2025-01-01 --to 2025-04-01
run month-program --from 2025-06-01 --to 2025-07-01 --program business
