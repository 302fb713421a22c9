extension Schema {
    /// Versions 1 to 3: the tables of the first release.
    static let tables: [Migration] = [
        Migration(
            version: 1, name: "inbox, outbox and referral codes",
            sql: """
                -- Every consumed event, once per (source, id): the deduplication guard and the fact store.
                -- The body is kept as received so that later rules can re-derive from the facts.
                CREATE TABLE inbox (
                    source      text        NOT NULL,
                    event_id    text        NOT NULL,
                    type        text        NOT NULL,
                    account_id  text,
                    lead_id     text,
                    fact_time   timestamptz NOT NULL,
                    received_at timestamptz NOT NULL DEFAULT now(),
                    body        bytea       NOT NULL,
                    PRIMARY KEY (source, event_id)
                );
                CREATE INDEX inbox_account ON inbox (account_id) WHERE account_id IS NOT NULL;
                CREATE INDEX inbox_lead ON inbox (lead_id) WHERE lead_id IS NOT NULL;

                -- Events to publish, written in the same transaction as the state change that caused
                -- them (transactional outbox). A row is leased while being published so that several
                -- instances never publish it at the same time; a crashed publisher's lease expires.
                CREATE TABLE outbox (
                    seq           bigserial   PRIMARY KEY,
                    event_id      text        NOT NULL UNIQUE,
                    type          text        NOT NULL,
                    subject       text,
                    body          bytea       NOT NULL,
                    created_at    timestamptz NOT NULL DEFAULT now(),
                    leased_until  timestamptz,
                    published_at  timestamptz
                );
                CREATE INDEX outbox_pending ON outbox (seq) WHERE published_at IS NULL;

                -- One code per customer account, issued at its first activation.
                CREATE TABLE referral_codes (
                    account_id  text        PRIMARY KEY,
                    code        text        NOT NULL UNIQUE,
                    program_id  text        NOT NULL,
                    issued_at   timestamptz NOT NULL
                );
                """),
        Migration(
            version: 2, name: "facts, referrals, effects, rewards, timers, program versions",
            sql: """
                -- Every program as loaded, once per distinct canonical form: a referral keeps the
                -- version in force when its lead arrived, even after the file changes.
                CREATE TABLE program_versions (
                    program_id  text        NOT NULL,
                    version     integer     NOT NULL,
                    canonical   text        NOT NULL,
                    program     jsonb       NOT NULL,
                    loaded_at   timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (program_id, version),
                    UNIQUE (program_id, canonical)
                );

                -- The lifecycle's facts, one row per consumed event that carries one, typed. Personal
                -- data (household_id, contact_hash) is set to NULL when the customer is erased.
                CREATE TABLE facts (
                    seq           bigserial   PRIMARY KEY,
                    kind          text        NOT NULL,
                    at            timestamptz NOT NULL,
                    lead_id       text,
                    account_id    text,
                    invoice_id    text,
                    reward_id     text,
                    code          text,
                    household_id  text,
                    contact_hash  text,
                    segment       text,
                    sequence      integer,
                    amount_minor  bigint,
                    currency      text,
                    reason        text
                );
                CREATE INDEX facts_lead ON facts (lead_id) WHERE lead_id IS NOT NULL;
                CREATE INDEX facts_account ON facts (account_id) WHERE account_id IS NOT NULL;
                CREATE INDEX facts_reward ON facts (reward_id) WHERE reward_id IS NOT NULL;

                -- A referral exists once a lead with a known code is seen; its id comes from the
                -- sequence and never changes, nor does its program version.
                CREATE SEQUENCE referral_numbers START 3001;
                CREATE TABLE referrals (
                    referral_id          text        PRIMARY KEY,
                    lead_id              text        NOT NULL UNIQUE,
                    code                 text        NOT NULL,
                    referrer_account_id  text        NOT NULL,
                    program_id           text        NOT NULL,
                    program_version      integer     NOT NULL,
                    friend_account_id    text,
                    stage                text        NOT NULL DEFAULT 'lead',
                    reason               text,
                    rule                 text,
                    created_at           timestamptz NOT NULL DEFAULT now(),
                    updated_at           timestamptz NOT NULL DEFAULT now(),
                    FOREIGN KEY (program_id, program_version) REFERENCES program_versions
                );
                CREATE INDEX referrals_referrer ON referrals (referrer_account_id);
                CREATE INDEX referrals_friend ON referrals (friend_account_id) WHERE friend_account_id IS NOT NULL;

                -- What links referrals whose outcomes depend on each other (same referrer: daily and
                -- yearly limits; same friend account or household: one reward per friend). A batch
                -- decides the whole connected cluster, so no rule sees only half of its competitors.
                CREATE TABLE referral_links (
                    referral_id  text NOT NULL REFERENCES referrals,
                    link         text NOT NULL,
                    PRIMARY KEY (referral_id, link)
                );
                CREATE INDEX referral_links_link ON referral_links (link);

                -- Effects that left the building, in the order recorded. effect_key is the core's
                -- Effect.key: re-deciding can never record (and so never publish) one twice.
                CREATE TABLE effects (
                    seq          bigserial   PRIMARY KEY,
                    effect_key   text        NOT NULL UNIQUE,
                    referral_id  text,
                    account_id   text,
                    kind         text        NOT NULL,
                    effect       jsonb       NOT NULL,
                    recorded_at  timestamptz NOT NULL
                );
                CREATE INDEX effects_referral ON effects (referral_id) WHERE referral_id IS NOT NULL;

                -- The reward ledger billing reconciles with. One reward per (referral, beneficiary),
                -- whatever is replayed: the constraint is the last guard against paying twice.
                CREATE TABLE rewards (
                    reward_id     text        PRIMARY KEY,
                    referral_id   text        NOT NULL REFERENCES referrals,
                    beneficiary   text        NOT NULL,
                    account_id    text        NOT NULL,
                    kind          text        NOT NULL,
                    amount_minor  bigint      NOT NULL CHECK (amount_minor >= 0),
                    currency      text        NOT NULL,
                    program_id    text        NOT NULL,
                    state         text        NOT NULL,
                    failures      integer     NOT NULL DEFAULT 0,
                    issued_at     timestamptz NOT NULL,
                    updated_at    timestamptz NOT NULL,
                    note          text,
                    UNIQUE (referral_id, beneficiary)
                );

                -- Durable timers: when time passing alone can change a referral's outcome (hold end,
                -- window end, retry). Claimed with FOR UPDATE SKIP LOCKED by any instance.
                CREATE TABLE timers (
                    referral_id  text        PRIMARY KEY REFERENCES referrals,
                    due_at       timestamptz NOT NULL
                );
                CREATE INDEX timers_due ON timers (due_at);
                """),
        Migration(
            version: 3, name: "ask facts, asks, follow-ups and account timers",
            sql: """
                -- Asks sent (referral.ask.due published), one row per ask key: two instances or a
                -- replay can never send the same ask twice. Skipped asks are not rows: they do not
                -- count towards min_gap or max_per_year.
                CREATE TABLE asks (
                    ask_key     text        PRIMARY KEY,
                    account_id  text        NOT NULL,
                    moment      text        NOT NULL,
                    program_id  text        NOT NULL,
                    due_at      timestamptz NOT NULL,
                    sent_at     timestamptz NOT NULL
                );
                CREATE INDEX asks_account ON asks (account_id, sent_at);

                -- Follow-ups sent (referral.lead.followup_due), one per stall.
                CREATE TABLE followups (
                    followup_key   text        PRIMARY KEY,
                    referral_id    text        NOT NULL REFERENCES referrals,
                    stage          text        NOT NULL,
                    stalled_since  timestamptz NOT NULL,
                    sent_at        timestamptz NOT NULL
                );

                -- The facts the ask rules read, per account (speed tests, tickets, preferences,
                -- invoices with credits...), typed like `facts`. They carry no personal data.
                CREATE TABLE ask_facts (
                    seq            bigserial   PRIMARY KEY,
                    account_id     text        NOT NULL,
                    at             timestamptz NOT NULL,
                    kind           text        NOT NULL,
                    segment        text,
                    ticket_id      text,
                    csat           integer,
                    measured_mbps  float8,
                    plan_mbps      float8,
                    prompts        boolean,
                    invoice_id     text,
                    credits_minor  bigint,
                    first_ask_at   timestamptz
                );
                CREATE INDEX ask_facts_account ON ask_facts (account_id);

                -- Durable timers of accounts (the next ask), claimed like referral timers.
                CREATE TABLE account_timers (
                    account_id  text        PRIMARY KEY,
                    due_at      timestamptz NOT NULL
                );
                CREATE INDEX account_timers_due ON account_timers (due_at);
                """),
    ]
}
