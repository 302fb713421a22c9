#!/usr/bin/env bash
# Makes Tests/IntegrationTests/Fixtures/legacy-v5.sql.gz: a compressed plain pg_dump of a
# database written by the released referrald of commit 2b9983f (schema migration version 5),
# for the test that restores it and migrates it forward. Also writes legacy-v5.md beside it
# (how it was made, what it holds, when).
#
#   scripts/make-legacy-dump.sh
#   LEGACY_BIN_DIR=/tmp/old-bin scripts/make-legacy-dump.sh   # binaries of 2b9983f already built
#
# Procedure:
#   1. Binaries: with LEGACY_BIN_DIR, its referrald and referrald-bench (both of the legacy
#      commit: the script checks that the database they write is at version 5). Without it,
#      the commit is checked out in a temporary `git worktree` and both products are built there
#      (debug; the worktree has its own .build, the checkout's is not touched; Package.resolved
#      of this checkout is copied in when there is one, as it is not versioned; the packages
#      come from SwiftPM's cache or the network).
#   2. Services: scripts/services.sh start (idempotent), then its env.
#   3. `referrald-bench --modes mix --keep` on a fixed seed: it creates and migrates a scratch
#      database `bench<random>`, seeds referrers (one activation each), publishes the realistic
#      mix (Sources/referrald-bench/Mix.swift) as a backlog, runs the real daemon until the
#      backlog's sentinel comes out, stops it (SIGTERM; it finishes its batch) and keeps the
#      database. The programs file is the commit's deploy/programs.example.yaml (30-day hold,
#      60-day clawback window): the mix dates every story 45 to 50 days back, so holds ended
#      before the activations arrive, rewards are issued at once and cancellations (5 % of the
#      stories) fall inside the clawback window and reverse the referrer's reward. No
#      short-hold file is needed; the counts checked in step 4 prove it.
#   4. Checks of the scratch database: schema version 5, referrals, issued and reversed rewards,
#      timers all present.
#   5. pg_dump --no-owner --no-privileges (no roles, no grants; plain SQL with COPY, restored
#      with psql), bytea in escape format (PGOPTIONS bytea_output=escape: the inbox bodies are
#      JSON, which this keeps as text instead of doubling it into hex; COPY reads either form,
#      the bytes are identical), gzip -9. Refused if it holds anything that looks like a URL
#      with credentials, a password or a key.
#   6. Verification: restored into a new database, every table's rows and every sequence
#      compared with the scratch database, counts printed and written into legacy-v5.md.
#   7. The scratch and verification databases are dropped, the world's queues deleted (and its
#      exchanges, through rabbitmqctl eval, best effort), the worktree removed.
#
# Environment: LEGACY_BIN_DIR (see above), LEGACY_COMMIT (default 2b9983f), LEGACY_EVENTS
# (messages in the mix backlog, default 30000: about 3,700 referrals and 2.9 MB; 92000 gives
# about 10,000 referrals but about 9 MB), LEGACY_SEED (default 1), LEGACY_OUT (default
# Tests/IntegrationTests/Fixtures/legacy-v5.sql.gz), LEGACY_MAX_BYTES (size above which it
# warns, default 3000000).
#
# Not byte-reproducible, by design of the bench: the world name is random (every id carries it)
# and stories are dated relative to the run's clock. The seed fixes the shape of the mix.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COMMIT="${LEGACY_COMMIT:-2b9983f}"
EVENTS="${LEGACY_EVENTS:-30000}"
SEED="${LEGACY_SEED:-1}"
OUT="${LEGACY_OUT:-$ROOT/Tests/IntegrationTests/Fixtures/legacy-v5.sql.gz}"
MAX_BYTES="${LEGACY_MAX_BYTES:-3000000}"
EXPECTED_VERSION=5
MD="${OUT%.sql.gz}.md"

log() { printf 'make-legacy-dump: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# The URL of another database on the same server (the path replaced, query parameters kept).
db_url() {
  local base="${BASE_URL%%\?*}" query=""
  [[ "$BASE_URL" == *\?* ]] && query="?${BASE_URL#*\?}"
  printf '%s/%s%s' "${base%/*}" "$1" "$query"
}
psql_at() { psql -X -q -v ON_ERROR_STOP=1 -At "$@"; }
drop_db() { psql -X -q -v ON_ERROR_STOP=1 "$BASE_URL" -c "DROP DATABASE IF EXISTS \"$1\" WITH (FORCE)" >/dev/null; }

# The bench's --keep leaves its queues and exchanges (names from IsolatedWorld and the observer
# queue: ReferralTestKit and Bed.swift at older commits, ReferralTestWorld now) on the test vhost. Queues through rabbitmqctl; the CLI cannot
# delete an exchange, so that goes through `rabbitmqctl eval` (3.x internals), best effort.
broker_cleanup() {
  local name="$1" ctl=/usr/lib/rabbitmq/bin/rabbitmqctl node="${REFERRALD_RABBITMQ_NODE:-}" vhost="${AMQP_URL##*/}"
  if [ ! -x "$ctl" ] || [ -z "$node" ]; then
    log "no rabbitmqctl: queues and exchanges $name.* stay on vhost $vhost"
    return 0
  fi
  local q x
  for q in inbox dlq observer; do
    "$ctl" -n "$node" -q delete_queue -p "$vhost" "$name.$q" >/dev/null 2>&1 || log "queue $name.$q not deleted"
  done
  for x in provisioning billing crm dlx referral.events; do
    "$ctl" -n "$node" -q eval \
      "rabbit_exchange:delete(rabbit_misc:r(<<\"$vhost\">>, exchange, <<\"$name.$x\">>), false, <<\"make-legacy-dump\">>)." \
      >/dev/null 2>&1 || log "exchange $name.$x not deleted"
  done
}

cleanup() {
  local status=$?
  set +e
  [ -n "$VERIFY" ] && drop_db "$VERIFY"
  if [ -n "$SCRATCH" ]; then
    drop_db "$SCRATCH" && log "dropped scratch database $SCRATCH"
    broker_cleanup "$SCRATCH"
  fi
  if [ -n "$WORKTREE" ]; then
    git -C "$ROOT" worktree remove --force "$WORKTREE" >/dev/null 2>&1
    git -C "$ROOT" worktree prune
  fi
  rm -rf "$WORK"
  exit "$status"
}

WORK="$(mktemp -d)"
WORKTREE=""
SCRATCH=""
VERIFY=""
trap cleanup EXIT

"$ROOT/scripts/services.sh" start
eval "$("$ROOT/scripts/services.sh" env)"
BASE_URL="$REFERRALD_TEST_DATABASE_URL"
AMQP_URL="$REFERRALD_TEST_AMQP_URL"

# ---- 1. binaries -------------------------------------------------------------------------------
git -C "$ROOT" rev-parse --verify -q "$COMMIT^{commit}" >/dev/null || die "commit $COMMIT not in this clone"
if [ -n "${LEGACY_BIN_DIR:-}" ]; then
  BIN_DIR="$(cd "$LEGACY_BIN_DIR" && pwd)"
  log "using the binaries in $BIN_DIR (they must be of $COMMIT)"
else
  WORKTREE="$WORK/src"
  log "building referrald and referrald-bench of $COMMIT in a temporary worktree"
  git -C "$ROOT" worktree add --detach "$WORKTREE" "$COMMIT" >/dev/null
  [ -f "$ROOT/Package.resolved" ] && [ ! -f "$WORKTREE/Package.resolved" ] && cp "$ROOT/Package.resolved" "$WORKTREE/"
  (cd "$WORKTREE" && swift build --product referrald-bench && swift build --product referrald) >&2
  BIN_DIR="$(cd "$WORKTREE" && swift build --show-bin-path)"
fi
for b in referrald referrald-bench; do [ -x "$BIN_DIR/$b" ] || die "no executable $BIN_DIR/$b"; done

# ---- 2-3. the bench's realistic mix, kept -------------------------------------------------------
git -C "$ROOT" show "$COMMIT:deploy/programs.example.yaml" > "$WORK/programs.yaml"
log "running the mix: $EVENTS events, seed $SEED"
(cd "$WORK" && REFERRALD_TEST_DATABASE_URL="$BASE_URL" REFERRALD_TEST_AMQP_URL="$AMQP_URL" \
  "$BIN_DIR/referrald-bench" --modes mix --events "$EVENTS" --seed "$SEED" --keep \
    --programs "$WORK/programs.yaml" --daemon "$BIN_DIR/referrald") | tee "$WORK/bench.log" >&2
SCRATCH="$(sed -n 's/^kept database and queues \(bench[0-9]*\)$/\1/p' "$WORK/bench.log")"
[ -n "$SCRATCH" ] || die "the bench did not say which database it kept"
SCRATCH_URL="$(db_url "$SCRATCH")"

# ---- 4. what the fixture promises ---------------------------------------------------------------
version="$(psql_at "$SCRATCH_URL" -c "SELECT max(version) FROM schema_migrations")"
[ "$version" = "$EXPECTED_VERSION" ] || die "schema version $version, expected $EXPECTED_VERSION: binaries of another release?"
read -r referrals issued reversed timers <<<"$(psql_at -F ' ' "$SCRATCH_URL" -c "
  SELECT (SELECT count(*) FROM referrals),
         (SELECT count(*) FROM rewards WHERE state = 'issued'),
         (SELECT count(*) FROM rewards WHERE state = 'reversed'),
         (SELECT count(*) FROM timers)")"
log "scratch database $SCRATCH: $referrals referrals, $issued rewards issued, $reversed reversed, $timers timers"
for n in "$referrals" "$issued" "$reversed" "$timers"; do
  [ "$n" -gt 0 ] || die "a count is 0: not the data the migration test needs"
done

# ---- 5. the dump --------------------------------------------------------------------------------
PGOPTIONS="-c bytea_output=escape" pg_dump --no-owner --no-privileges "$SCRATCH_URL" > "$WORK/dump.sql"
if grep -qiE '[a-z]+://[^/@[:space:]]*:[^/@[:space:]]*@|password|private key|secret' "$WORK/dump.sql"; then
  die "the dump holds something that looks secret: $(grep -oiE '[a-z]+://[^/@[:space:]]*:[^/@[:space:]]*@|password|private key|secret' "$WORK/dump.sql" | sort -u | head -3 | tr '\n' ' ')"
fi
gzip -9 -n -c "$WORK/dump.sql" > "$WORK/dump.sql.gz"

# ---- 6. verification: restore and compare -------------------------------------------------------
VERIFY="legacy_v5_verify_$$"
psql -X -q -v ON_ERROR_STOP=1 "$BASE_URL" -c "CREATE DATABASE \"$VERIFY\"" >/dev/null
VERIFY_URL="$(db_url "$VERIFY")"
gunzip -c "$WORK/dump.sql.gz" | psql -X -q -v ON_ERROR_STOP=1 "$VERIFY_URL" >/dev/null
fingerprint() {  # every table: row count and a digest of its rows in a fixed order; every sequence
  local t
  for t in $(psql_at "$1" -c "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"); do
    printf '%s %s\n' "$t" "$(psql_at "$1" -c "SELECT count(*) || ' ' || coalesce(md5(string_agg(r::text, E'\n' ORDER BY r::text)), '-') FROM public.\"$t\" r")"
  done
  psql_at "$1" -c "SELECT sequencename || ' ' || coalesce(last_value::text, '-') FROM pg_sequences ORDER BY 1"
}
fingerprint "$SCRATCH_URL" > "$WORK/scratch.fp"
fingerprint "$VERIFY_URL" > "$WORK/verify.fp"
diff "$WORK/scratch.fp" "$WORK/verify.fp" >&2 || die "the restored database differs from the one dumped"
log "restored copy identical to the scratch database ($(wc -l < "$WORK/verify.fp") tables and sequences)"

# The counts of the fixture, from the restored copy, as markdown table rows.
counts="$(psql_at "$VERIFY_URL" -c "
  SELECT line FROM (
    SELECT 1 AS o, 0::bigint AS n, '| schema_migrations max(version) | ' || max(version) || ' |' AS line FROM schema_migrations
    UNION ALL SELECT 2, 0, '| referrals | ' || count(*) || ' |' FROM referrals
    UNION ALL SELECT 3, -count(*), '| referrals, stage ' || stage || coalesce(' (' || reason || ')', '') || ' | ' || count(*) || ' |'
              FROM referrals GROUP BY stage, reason
    UNION ALL SELECT 4, 0, '| rewards, state ' || state || ' | ' || count(*) || ' |' FROM rewards GROUP BY state
    UNION ALL SELECT 5, 0, '| effects of kind reward_reversed | ' || count(*) || ' (reason: '
                 || string_agg(DISTINCT effect->'rewardReversed'->'_0'->>'reason', ', ') || ') |'
              FROM effects WHERE kind = 'reward_reversed'
    UNION ALL SELECT 6, 0, '| effects, all kinds | ' || count(*) || ' |' FROM effects
    UNION ALL SELECT 7, 0, '| timers (referrals) | ' || count(*) || ', due '
                 || to_char(min(due_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') || ' to '
                 || to_char(max(due_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') || ' UTC |' FROM timers
    UNION ALL SELECT 8, 0, '| account_timers | ' || count(*) || ' |' FROM account_timers
    UNION ALL SELECT 9, 0, '| referral_codes | ' || count(*) || ' |' FROM referral_codes
    UNION ALL SELECT 10, 0, '| inbox | ' || count(*) || ' |' FROM inbox
    UNION ALL SELECT 11, 0, '| facts | ' || count(*) || ' |' FROM facts
    UNION ALL SELECT 12, 0, '| asks / followups | ' || (SELECT count(*) FROM asks) || ' / ' || (SELECT count(*) FROM followups) || ' |'
    UNION ALL SELECT 13, 0, '| outbox | ' || count(*) || ' |' FROM outbox
  ) c ORDER BY o, n, line")"
printf '%s\n' "$counts" >&2

# ---- the files ----------------------------------------------------------------------------------
mkdir -p "$(dirname "$OUT")"
mv "$WORK/dump.sql.gz" "$OUT"
bytes="$(wc -c < "$OUT")"
[ "$bytes" -le "$MAX_BYTES" ] || log "WARNING: $OUT is $bytes bytes, above $MAX_BYTES: fewer LEGACY_EVENTS?"
if [ -n "${LEGACY_BIN_DIR:-}" ]; then
  how="LEGACY_BIN_DIR=<debug build of $COMMIT> scripts/make-legacy-dump.sh"
else
  how="scripts/make-legacy-dump.sh (built $COMMIT in a temporary worktree)"
fi
if [ "$EVENTS" != 30000 ] || [ "$SEED" != 1 ]; then how="LEGACY_EVENTS=$EVENTS LEGACY_SEED=$SEED $how"; fi
cat > "$MD" <<MD
# $(basename "$OUT")

A database written by the released referrald of commit $COMMIT (schema migration version
$EXPECTED_VERSION), for the test that restores it and migrates it forward.

Made on $(date -u +%Y-%m-%d) with \`$how\`
(the script's header says how, step by step).

- What wrote it: \`referrald-bench --modes mix --events $EVENTS --seed $SEED --keep\` of $COMMIT,
  driving that commit's \`referrald run\` with its deploy/programs.example.yaml (consumer program:
  30-day hold, 60-day clawback window, clawback of the referrer's reward), on PostgreSQL
  $(psql_at "$BASE_URL" -c "SHOW server_version" | cut -d' ' -f1) and RabbitMQ. The mix's stories are dated 45 to 50 days before the run, so rewards
  were issued at once and cancellations reversed some; stories still in flight left referrals
  at lead, ordered and installed.
- Format: \`pg_dump --no-owner --no-privileges\` (plain SQL, COPY; bytea in escape format),
  \`gzip -9\`; $bytes bytes. No roles, grants or passwords. Restore into an empty database
  with psql: \`gunzip -c $(basename "$OUT") | psql -X -v ON_ERROR_STOP=1 "\$URL"\` (the dump
  starts with \`\\restrict\`: a psql of August 2025 or later, i.e. 13.22, 14.19, 15.14, 16.10,
  17.6, 18 or newer; an older one stops at "invalid command"). Restored as made, the copy was
  compared with the database dumped, table by table and sequence by sequence: identical.
- Every id carries the bench's world name ($SCRATCH); times are relative to the run: the
  referral timers fall due on the dates below, after which a daemon started on the restored
  database fires them.

| count | value |
|---|---|
$counts
MD
log "wrote $OUT ($bytes bytes) and $MD"
