extension Schema {
    /// Version 4 on: every change since the first release's tables, in order.
    static let changes: [Migration] = [
        Migration(
            version: 4, name: "report indexes",
            sql: """
                -- `referrald report` selects its cohort as the leads whose fact time lies in the period:
                -- without this index every report reads all of `facts` (every kind) to find them.
                CREATE INDEX facts_lead_at ON facts (at, lead_id) WHERE kind = 'lead';
                -- Stage times of a cohort (order by lead, install and activation by friend account,
                -- credit applied by reward) are looked up per referral when the period is short:
                -- (key, kind, at) answers each from the index alone instead of visiting every fact
                -- of a busy account or lead.
                CREATE INDEX facts_lead_kind_at ON facts (lead_id, kind, at) WHERE lead_id IS NOT NULL;
                CREATE INDEX facts_account_kind_at ON facts (account_id, kind, at) WHERE account_id IS NOT NULL;
                -- Asks of the period, by moment.
                CREATE INDEX asks_sent ON asks (sent_at);
                """),
        Migration(
            version: 5, name: "effects and follow-ups by referral; published outbox rows deleted",
            sql: """
                -- The worker reads a referral's effects recorded after the last one it has cached
                -- (`EffectCache`): (referral_id, seq) finds exactly those; (referral_id) alone
                -- visited every effect of the referral to filter them. It also serves every lookup
                -- by referral the old index served.
                CREATE INDEX effects_referral_seq ON effects (referral_id, seq) WHERE referral_id IS NOT NULL;
                DROP INDEX effects_referral;
                -- From this version the worker deletes outbox rows once the broker confirmed them
                -- instead of setting `published_at`: the rows published before go too. The column
                -- stays, and the relay still skips rows that have it, so that an instance of the
                -- previous version still running during a rolling upgrade cannot make this one
                -- publish its rows again.
                DELETE FROM outbox WHERE published_at IS NOT NULL;
                -- Every decision reads the follow-ups already sent for its cluster's referrals:
                -- without this index that was a sequential scan of all follow-ups ever sent, the
                -- costliest statement of a batch once a 200,000-event backlog had been drained
                -- (5.8 ms a batch and growing; pg_stat_statements).
                CREATE INDEX followups_referral ON followups (referral_id);
                """),
        Migration(
            version: 6, name: "incremental competition state: standings, claims and ranking sizes",
            sql: """
                -- A referral's standing (Competition.swift): its lead's time and code, and its
                -- milestone when inside the window (its cap slot). NULL lead_at: not computed yet;
                -- `referrald migrate` fills those from the stored facts before the daemon runs.
                ALTER TABLE referrals ADD COLUMN lead_at timestamptz, ADD COLUMN lead_code text,
                                      ADD COLUMN milestone_at timestamptz;
                -- Ranks by bounded index scans: "how many leads of this code came before it that
                -- day", "how many of the referrer's milestones came before it that year", counted up
                -- to the limit. Without them each decision read the referrer's whole history.
                CREATE INDEX referrals_code_day ON referrals (lead_code, lead_at, lead_id COLLATE "C")
                    WHERE lead_code = code;
                CREATE INDEX referrals_cap ON referrals (referrer_account_id, milestone_at, lead_id COLLATE "C")
                    WHERE milestone_at IS NOT NULL;
                -- A referrer's cancellation rejects its leads from then on: found by lead time.
                CREATE INDEX referrals_referrer_lead_at ON referrals (referrer_account_id, lead_at);
                DROP INDEX referrals_referrer;
                -- Friend keys carry their lead's time: the first claimant of a key is one index row.
                ALTER TABLE referral_links ADD COLUMN lead_at timestamptz, ADD COLUMN lead_id text COLLATE "C";
                CREATE INDEX referral_links_claim ON referral_links (link, lead_at, lead_id);
                DROP INDEX referral_links_link;
                -- How many entries each ranking has ('cd:<day>:<code>', 'cap:<year>:<referrer>'): a
                -- ranking no larger than its limit needs no rank at all.
                CREATE TABLE ranking_sizes (
                    ranking text PRIMARY KEY,
                    size    bigint NOT NULL
                );
                -- What the backfill (version 7) still has to fill.
                CREATE INDEX referrals_without_standing ON referrals (referral_id) WHERE lead_at IS NULL;
                -- An invoice's `sequence` is any integer >= 1 in the contract: beyond int4 it failed
                -- its batch on every delivery (22003) until it was dead-lettered as processing_failed.
                ALTER TABLE facts ALTER COLUMN sequence TYPE bigint;
                -- The plan an activation named (kind 'plan'): rewards `by_plan` follow the friend's first.
                ALTER TABLE facts ADD COLUMN plan_id text;
                """),
        Migration(
            version: 7, name: "standings of the referrals bound before version 6, from their facts", sql: "",
            backfill: { db, logger in try await StandingStore.backfillStandings(db, logger: logger) }),
        Migration(
            version: 8, name: "rewards awaiting billing, by issue time",
            sql: """
                -- Every instance samples the rewards billing has not applied yet every few seconds
                -- (`referrald_rewards_unapplied`, `LedgerStore.unappliedRewards`). Without this index each
                -- sample read the whole ledger, which keeps every reward for years; with it, the count
                -- and the oldest come from the rewards awaiting billing alone. The price: a reward's
                -- state change (issued -> applied, once per reward) is no longer a HOT update.
                CREATE INDEX rewards_unapplied ON rewards (issued_at) WHERE state = 'issued';
                """),
        Migration(
            version: 9, name: "erasure: pending body scrubs, inbox bodies by reward, scrubbed bodies marked",
            sql: """
                -- Erasures whose raw inbox bodies are still to be rewritten (ErasureStore.swift). The
                -- batch that stores the erasure, or any later fact of the erased account, writes the
                -- row; the worker's follow-up scrubs the bodies in chunks and deletes it. Durable, so
                -- that a scrub interrupted by a crash or a failover is finished by any instance, and
                -- the erasure itself never waits for it. `generation` moves with each batch that
                -- stores another body, so the follow-up never deletes a row for work it did not see.
                CREATE TABLE erasure_scrubs (
                    account_id  text    PRIMARY KEY,
                    generation  bigint  NOT NULL DEFAULT 1
                );
                -- A billing.credit.rejected names the reward only, and its reason is free text: the
                -- erasure finds the body by the erased account's rewards.
                ALTER TABLE inbox ADD COLUMN reward_id text;
                CREATE INDEX inbox_reward ON inbox (reward_id) WHERE reward_id IS NOT NULL;
                -- Bodies already rewritten: an erased account that keeps receiving events (billing
                -- goes on) costs each follow-up its new bodies only, not its whole history again.
                ALTER TABLE inbox ADD COLUMN scrubbed boolean NOT NULL DEFAULT false;
                """),
        Migration(
            version: 10, name: "reward ids of stored credit rejections; erasures before version 9 scrubbed again",
            sql: """
                -- Erasures stored before version 9: the old SQL scrub left free text, producers'
                -- extra members and the bodies it could not cast. The follow-up scrubs them again.
                INSERT INTO erasure_scrubs (account_id)
                SELECT DISTINCT account_id FROM facts WHERE kind = 'erased' AND account_id IS NOT NULL
                ON CONFLICT DO NOTHING;
                """, backfill: { db, logger in try await ErasureStore.backfillInboxRewards(db, logger: logger) }),
        Migration(
            version: 11,
            name: "fewer index writes per event: redundant indexes dropped, room for HOT updates of referrals",
            sql: """
                -- Every event writes several rows, and each index of a table costs a write per row: on
                -- the realistic mix these were a fifth of the database's time per batch
                -- (pg_stat_statements). Dropped, as nothing needs them:
                -- facts_lead / facts_account: facts_lead_kind_at / facts_account_kind_at start with the
                -- same column and serve every lookup by lead or account.
                DROP INDEX IF EXISTS facts_lead;
                DROP INDEX IF EXISTS facts_account;
                -- outbox_pending: rows are deleted once published (version 5), so `published_at IS NULL`
                -- holds for every row and the primary key serves the relay's scan in seq order.
                DROP INDEX IF EXISTS outbox_pending;
                -- outbox.event_id UNIQUE: ids are drawn fresh (UUIDv4) for each event enqueued; nothing
                -- looks a row up by it or relies on the constraint to refuse one.
                ALTER TABLE outbox DROP CONSTRAINT IF EXISTS outbox_event_id_key;
                -- A referral's stage, reason and rule change at most a few times in its life and are not
                -- indexed: with free room on its page, the update is HOT (no new entry in the table's
                -- eight indexes). Applies to pages written from now on.
                ALTER TABLE referrals SET (fillfactor = 80);
                """),
        Migration(
            version: 12, name: "ask facts by account, kind and time",
            sql: """
                -- The worker reads an account's ask facts by ranges of kind and time (the facts that can
                -- still change a decision: `AskStore.loadRelevantAskFacts`), so that an account with a
                -- daily automated speed test costs the same in its third year as on its first day.
                -- It replaces the index by account alone, whose lookups it serves as well.
                CREATE INDEX ask_facts_account_kind_at ON ask_facts (account_id, kind, at);
                DROP INDEX IF EXISTS ask_facts_account;
                """),
        Migration(
            version: 13, name: "text keys compare bytewise",
            sql: """
                -- Every text column here holds identifiers, codes, keys or enum words, never prose
                -- sorted for people. Under the database's collation (C.UTF-8 or en_US.UTF-8, whatever
                -- initdb was given) each index comparison went through strcoll: 13 % of the server's
                -- time on the daemon's batches. "C" compares bytes. The tables are not rewritten;
                -- their indexes on text columns are rebuilt, under this migration's lock (about
                -- the time of a REINDEX of those tables: the README's `referrald migrate` row).
                DO $$
                DECLARE col record;
                BEGIN
                    FOR col IN
                        SELECT c.table_name, c.column_name FROM information_schema.columns c
                        JOIN information_schema.tables t USING (table_schema, table_name)
                        WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'
                          AND c.data_type = 'text' AND coalesce(c.collation_name, '') <> 'C'
                          AND c.table_name <> 'schema_migrations'
                        ORDER BY c.table_name, c.ordinal_position
                    LOOP
                        EXECUTE format('ALTER TABLE %I ALTER COLUMN %I TYPE text COLLATE "C"', col.table_name, col.column_name);
                    END LOOP;
                END
                $$;
                """),
        Migration(
            version: 14, name: "code issuance recorded as an effect",
            sql: """
                -- A code issued is an effect like the others: recorded in `effects` under the key
                -- `code:<account>` when the worker draws it, read back with the account's decisions.
                -- Until now decisions rebuilt it from `referral_codes`, a special case every reader of
                -- recorded effects had to know. `referral_codes` stays what finds a code's owner and
                -- refuses a second account the same code. The JSON is `Effect.storedJSON`'s shape.
                INSERT INTO effects (effect_key, referral_id, account_id, kind, effect, recorded_at)
                SELECT 'code:' || account_id, NULL, account_id, 'code_issued',
                       jsonb_build_object('codeIssued', jsonb_build_object('accountId', account_id, 'code', code,
                                                                           'programId', program_id)),
                       issued_at
                FROM referral_codes ORDER BY issued_at, account_id
                ON CONFLICT (effect_key) DO NOTHING;
                CREATE INDEX effects_code_account ON effects (account_id) WHERE kind = 'code_issued';
                """),
        Migration(
            version: 15, name: "more room for HOT updates of referrals",
            sql: """
                -- A referral's row is updated some six times in its first days (its standing, its
                -- friend's account, its stage as each fact arrives). At fillfactor 80 most of those
                -- found no room left on the page and became non-HOT: a new entry in each of the
                -- table's seven indexes for an update that changed none of their columns. Half a page
                -- is kept free; the table is one row per referral, so its size is not the concern.
                -- Applies to pages written from now on.
                ALTER TABLE referrals SET (fillfactor = 50);
                """),
        Migration(
            version: 16, name: "monthly budgets: commitments per reward, counters per month, held asks",
            sql: """
                -- What each reward commits of its program's budget, in the UTC month of its referral's
                -- milestone (BudgetStore.swift): the decision's transaction compares a referral's new
                -- commitments with these rows and adds the difference to the month's counters. Issued
                -- rows never change. No foreign key: retention deletes them with their referral. Text
                -- columns compare bytewise, as every identifier column since version 13.
                CREATE TABLE budget_commitments (
                    reward_id     text COLLATE "C"  PRIMARY KEY,
                    referral_id   text COLLATE "C"  NOT NULL,
                    program_id    text COLLATE "C"  NOT NULL,
                    month         date              NOT NULL,
                    currency      text COLLATE "C"  NOT NULL,
                    amount_minor  bigint            NOT NULL,
                    issued        boolean           NOT NULL
                );
                CREATE INDEX budget_commitments_referral ON budget_commitments (referral_id);
                -- A month's commitment is the sum of its shards: each session adds to the shard of
                -- its backend pid, so lanes and instances do not queue on one row per month.
                CREATE TABLE budget_counters (
                    program_id       text COLLATE "C"  NOT NULL,
                    month            date              NOT NULL,
                    currency         text COLLATE "C"  NOT NULL,
                    shard            int               NOT NULL,
                    committed_minor  bigint            NOT NULL,
                    PRIMARY KEY (program_id, month, currency, shard)
                );
                -- Asks a budget held, until they go out or go stale (then swept and counted).
                CREATE TABLE asks_held (
                    ask_key     text COLLATE "C"  PRIMARY KEY,
                    account_id  text COLLATE "C"  NOT NULL,
                    program_id  text COLLATE "C"  NOT NULL,
                    moment      text COLLATE "C"  NOT NULL,
                    due_at      timestamptz       NOT NULL,
                    expires_at  timestamptz       NOT NULL,
                    held_at     timestamptz       NOT NULL
                );
                CREATE INDEX asks_held_expires ON asks_held (expires_at);
                -- Rewards issued before this version: their milestone was not kept, so they count in
                -- the month they were issued; reversals in the month of the reward's last change.
                -- Referrals in their hold are counted when next decided (at the latest when their
                -- hold ends), or at once by `referrald reconcile --all`.
                INSERT INTO budget_commitments (reward_id, referral_id, program_id, month, currency, amount_minor, issued)
                SELECT reward_id, referral_id, program_id, date_trunc('month', issued_at AT TIME ZONE 'UTC')::date,
                       currency, amount_minor, true
                FROM rewards;
                INSERT INTO budget_counters (program_id, month, currency, shard, committed_minor)
                SELECT program_id, month, currency, 0, sum(amount) FROM (
                    SELECT program_id, month, currency, amount_minor AS amount FROM budget_commitments
                    UNION ALL
                    SELECT program_id, date_trunc('month', updated_at AT TIME ZONE 'UTC')::date, currency, -amount_minor
                    FROM rewards WHERE state = 'reversed'
                ) m GROUP BY program_id, month, currency;
                """),
        Migration(
            version: 17,
            name: "lead channels on lead facts; plans and channels of facts stored before, from the inbox bodies",
            sql: """
                -- The sales channel a lead came through (`provisioning.lead.created` `channel`), on the
                -- lead's fact row: the report breaks leads and conversion down by it. No rule reads it,
                -- so it is a column of the row, not a field of the core's fact. NULL: none was sent.
                ALTER TABLE facts ADD COLUMN IF NOT EXISTS channel text COLLATE "C";
                """, backfill: { db, logger in try await FactBackfill.backfillPlansAndChannels(db, logger: logger) }),
        Migration(
            version: 18, name: "operator actions: audit trail, blocked codes, paused rewards",
            sql: """
                -- Every operator action (`referrald code block`, `referral reject`, `reward reverse`,
                -- `rewards pause` ...): who, when, what, why, and what came of it. `explain` lists
                -- those about a referral beside the rule that decided it.
                CREATE TABLE operator_actions (
                    id      bigserial         PRIMARY KEY,
                    at      timestamptz       NOT NULL,
                    actor   text COLLATE "C"  NOT NULL,
                    action  text COLLATE "C"  NOT NULL,
                    target  text COLLATE "C"  NOT NULL,
                    reason  text COLLATE "C"  NOT NULL,
                    result  text COLLATE "C"  NOT NULL
                );
                CREATE INDEX operator_actions_target ON operator_actions (target, at);
                -- Codes that no longer attribute new leads (a leaked code). Read with the code owners
                -- by every batch that carries a code.
                CREATE TABLE blocked_codes (
                    code        text COLLATE "C"  PRIMARY KEY,
                    blocked_at  timestamptz       NOT NULL
                );
                -- Programs whose rewards are paused ('*': all). Every decision reads it under a SHARE
                -- lock, which the pause's INSERT waits for: once `rewards pause` returns, no batch
                -- still in flight can issue a reward it would have held.
                CREATE TABLE reward_pauses (
                    program_id  text COLLATE "C"  PRIMARY KEY,
                    paused_at   timestamptz       NOT NULL
                );
                """),
        Migration(
            version: 19, name: "program versions in force from an effective time",
            sql: """
                -- When each version starts to bind leads (the file's `effective_from`): a lead gets the
                -- version in force at its own time, whichever instance takes it. A version stored
                -- before was in force from when it was registered, as its binding then assumed. The
                -- default is that too, for a version registered without a time of its own.
                ALTER TABLE program_versions ADD COLUMN IF NOT EXISTS effective_from timestamptz;
                UPDATE program_versions SET effective_from = loaded_at WHERE effective_from IS NULL;
                ALTER TABLE program_versions ALTER COLUMN effective_from SET DEFAULT now();
                ALTER TABLE program_versions ALTER COLUMN effective_from SET NOT NULL;
                -- Each lead bound reads the version in force at its time by this index.
                CREATE INDEX IF NOT EXISTS program_versions_in_force ON program_versions (program_id, effective_from);
                """),
    ]
}
