-- Least-privilege PostgreSQL roles for referrald (see docs/security.md).
--
--   referrald_migrate  owns the schema: `referrald migrate` connects as this role.
--   referrald_app      the daemon at run time: reads and writes rows, changes no structure.
--
-- Idempotent: safe to run again (after an upgrade, or when in doubt). Run it connected to
-- referrald's database, as a superuser or as the database's owner once both roles exist:
--
--   psql "postgres://admin@db.internal/referrald?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem" \
--        -v ON_ERROR_STOP=1 -f deploy/postgres/roles.sql
--
-- Passwords (or client certificates in pg_hba.conf) are set outside this file, which lives in
-- version control: ALTER ROLE referrald_app PASSWORD '...';

-- Roles are cluster-wide. Creating them needs CREATEROLE; a run by the database owner after
-- they exist skips this step. LOGIN only: no SUPERUSER, CREATEDB, CREATEROLE, REPLICATION.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'referrald_migrate') THEN
        CREATE ROLE referrald_migrate LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'referrald_app') THEN
        CREATE ROLE referrald_app LOGIN;
    END IF;
END $$;

-- PUBLIC gets CONNECT and TEMPORARY on every new database by default: TEMPORARY would let the
-- runtime role create (temporary) tables after all, and CONNECT any other role in.
DO $$
BEGIN
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO referrald_migrate, referrald_app', current_database());
END $$;

-- PostgreSQL before 15 lets every role create tables in schema public; 15 and later do not.
-- Revoked either way, so the runtime role cannot create tables on any version.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO referrald_migrate;
GRANT USAGE ON SCHEMA public TO referrald_app;

-- Tables and sequences the migrations create from now on are granted to the runtime role as
-- they are created: without this, every new migration would need a GRANT of its own, and a
-- forgotten one would surface only in production as "permission denied".
-- Not granted: TRUNCATE, REFERENCES, TRIGGER; sequences get USAGE (nextval) only.
ALTER DEFAULT PRIVILEGES FOR ROLE referrald_migrate IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO referrald_app;
ALTER DEFAULT PRIVILEGES FOR ROLE referrald_migrate IN SCHEMA public
    GRANT USAGE ON SEQUENCES TO referrald_app;

-- Tables that already exist (a database migrated before this file was first run).
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO referrald_app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO referrald_app;

-- Guard rails on the runtime role, whatever a session asks for. A connection limit: each
-- pipeline holds one connection, `reconcile`, `report` and `explain` one each; 40 leaves room
-- for several instances and an operator, and stops a reconnect storm from taking every slot of
-- the server. Timeouts: far above anything legitimate (a batch takes a fraction of a second;
-- a statement of the worker never more than a few), so they end only what is stuck — a session
-- left idle in a transaction holds its row locks and stalls every other instance.
-- ALTER ROLE needs CREATEROLE (or a superuser): a run by the database owner alone says so
-- instead of failing, so that the rest of this file stays runnable by the owner.
DO $$
BEGIN
    IF (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user) THEN
        ALTER ROLE referrald_app CONNECTION LIMIT 40;
        ALTER ROLE referrald_app SET statement_timeout = '120s';
        ALTER ROLE referrald_app SET lock_timeout = '60s';
        ALTER ROLE referrald_app SET idle_in_transaction_session_timeout = '120s';
    ELSE
        RAISE NOTICE 'referrald_app: connection limit and timeouts not set (run this file as a role with CREATEROLE)';
    END IF;
END $$;
