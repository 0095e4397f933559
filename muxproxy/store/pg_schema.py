"""The PostgreSQL schema, as an append-only list of migrations (the version is the
row of ``schema_version``). The same tables, constraints and triggers as the SQLite
schema (:mod:`muxproxy.store.schema`), with PostgreSQL's types: times are ``BIGINT``
milliseconds, JSON columns are ``jsonb``.

Each migration is one script run in one transaction. Never edit a released
migration: add a new one.
"""

from __future__ import annotations

from muxproxy.pipeline.jobs import TRANSITIONS


def _allowed_transitions() -> str:
    return " OR ".join(f"(OLD.state = '{src}' AND NEW.state = '{dst}')"
                       for src, targets in TRANSITIONS.items() for dst in sorted(targets))


def _counts_triggers() -> str:
    """job_counts and webhook_counts, kept in the transactions that change the rows, so
    a metrics scrape reads a few rows whatever the size of the tables."""
    return """
CREATE TABLE job_counts (
    model    TEXT NOT NULL,
    provider TEXT NOT NULL,
    state    TEXT NOT NULL,
    n        BIGINT NOT NULL,
    PRIMARY KEY (model, provider, state)
);
CREATE FUNCTION job_counts_keep() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE job_counts SET n = n - 1
            WHERE model = OLD.model AND provider = OLD.provider AND state = OLD.state;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO job_counts (model, provider, state, n)
            VALUES (NEW.model, NEW.provider, NEW.state, 1)
            ON CONFLICT (model, provider, state) DO UPDATE SET n = job_counts.n + 1;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER job_counts_insert AFTER INSERT OR DELETE ON jobs
    FOR EACH ROW EXECUTE FUNCTION job_counts_keep();
CREATE TRIGGER job_counts_update AFTER UPDATE OF model, provider, state ON jobs
    FOR EACH ROW WHEN (OLD.model IS DISTINCT FROM NEW.model
        OR OLD.provider IS DISTINCT FROM NEW.provider OR OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION job_counts_keep();
CREATE TABLE webhook_counts (
    status TEXT PRIMARY KEY,
    n      BIGINT NOT NULL
);
CREATE FUNCTION webhook_counts_keep() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE webhook_counts SET n = n - 1 WHERE status = OLD.status;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO webhook_counts (status, n) VALUES (NEW.status, 1)
            ON CONFLICT (status) DO UPDATE SET n = webhook_counts.n + 1;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER webhook_counts_insert AFTER INSERT OR DELETE ON webhook_deliveries
    FOR EACH ROW EXECUTE FUNCTION webhook_counts_keep();
CREATE TRIGGER webhook_counts_update AFTER UPDATE OF status ON webhook_deliveries
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION webhook_counts_keep();
"""


PG_MIGRATIONS: tuple[str, ...] = (
    # 1: the schema SQLite reached in its seven migrations, in one.
    f"""
CREATE TABLE jobs (
    id             TEXT PRIMARY KEY,
    key_id         TEXT NOT NULL,
    surface        TEXT NOT NULL,
    model          TEXT NOT NULL,
    state          TEXT NOT NULL,
    params         JSONB NOT NULL,
    client_params  JSONB NOT NULL,
    route_index    INTEGER NOT NULL DEFAULT 0,
    provider       TEXT NOT NULL,
    upstream_model TEXT NOT NULL,
    upstream_id    TEXT,
    upstream_state JSONB,
    result         JSONB,
    fail_code      TEXT,
    fail_msg       TEXT,
    attempts       INTEGER NOT NULL DEFAULT 0,
    recoveries     INTEGER NOT NULL DEFAULT 0,
    polls          INTEGER NOT NULL DEFAULT 0,
    callback_url   TEXT,
    credits        BIGINT NOT NULL DEFAULT 0,
    billing        TEXT NOT NULL DEFAULT 'none',
    created_at     BIGINT NOT NULL,
    started_at     BIGINT,
    completed_at   BIGINT,
    updated_at     BIGINT NOT NULL,
    run_after      BIGINT NOT NULL,
    deadline_at    BIGINT NOT NULL,
    lease_owner    TEXT,
    lease_until    BIGINT,
    swept          INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_due ON jobs (provider, run_after)
    WHERE state IN ('pending', 'processing') AND lease_owner IS NULL;
CREATE INDEX jobs_lapsing ON jobs (provider, lease_until)
    WHERE state IN ('pending', 'processing') AND lease_owner IS NOT NULL;
CREATE INDEX jobs_deadline ON jobs (deadline_at) WHERE state IN ('pending', 'processing');
CREATE INDEX jobs_by_key ON jobs (key_id, created_at);
CREATE INDEX jobs_active_by_key ON jobs (key_id) WHERE state IN ('pending', 'processing');
CREATE INDEX jobs_leased ON jobs (lease_owner) WHERE lease_owner IS NOT NULL;
CREATE INDEX jobs_unswept ON jobs (swept, completed_at)
    WHERE state IN ('completed', 'failed') AND swept < 2;
CREATE FUNCTION jobs_state_machine() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state <> NEW.state AND NOT ({_allowed_transitions()}) THEN
        RAISE EXCEPTION 'illegal transition' USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.state IN ('completed', 'failed') AND (NEW.result IS DISTINCT FROM OLD.result
            OR NEW.fail_msg IS DISTINCT FROM OLD.fail_msg) THEN
        RAISE EXCEPTION 'illegal transition' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER jobs_state_machine BEFORE UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobs_state_machine();
CREATE TABLE api_keys (
    id                     TEXT PRIMARY KEY,
    name                   TEXT NOT NULL UNIQUE,
    key_hash               TEXT NOT NULL UNIQUE,
    created_at             BIGINT NOT NULL,
    revoked_at             BIGINT,
    balance                BIGINT NOT NULL DEFAULT 0,
    unlimited              INTEGER NOT NULL DEFAULT 0,
    rpm_limit              INTEGER,
    max_concurrent         INTEGER,
    allowed_models         JSONB,
    webhook_allow_networks JSONB
);
CREATE TABLE ledger (
    id         BIGSERIAL PRIMARY KEY,
    key_id     TEXT NOT NULL REFERENCES api_keys (id),
    kind       TEXT NOT NULL,
    amount     BIGINT NOT NULL,
    job_id     TEXT,
    model      TEXT,
    note       TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX ledger_by_key ON ledger (key_id, id);
-- A job is held, charged, refunded and released at most once each, whatever the
-- crash or retry timing: the database refuses a second row.
CREATE UNIQUE INDEX ledger_once_per_job ON ledger (job_id, kind) WHERE job_id IS NOT NULL;
CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only';
END $$;
CREATE TRIGGER ledger_append_only BEFORE UPDATE ON ledger
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TABLE idempotency (
    key_id        TEXT NOT NULL,
    idem_key      TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    job_id        TEXT,
    claim         TEXT,
    owner         TEXT,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    PRIMARY KEY (key_id, idem_key)
);
CREATE INDEX idempotency_expiry ON idempotency (expires_at);
CREATE TABLE webhook_deliveries (
    id              TEXT PRIMARY KEY,
    job_id          TEXT NOT NULL UNIQUE REFERENCES jobs (id) ON DELETE CASCADE,
    key_id          TEXT NOT NULL,
    url             TEXT NOT NULL,
    host            TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    round_attempts  INTEGER NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    next_attempt_at BIGINT,
    window_ends_at  BIGINT,
    delivered_at    BIGINT,
    last_error      TEXT,
    lease_owner     TEXT,
    lease_until     BIGINT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_pending_age ON webhook_deliveries (created_at)
    WHERE status = 'pending';
CREATE TABLE webhook_attempts (
    delivery_id TEXT NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    number      INTEGER NOT NULL,
    started_at  BIGINT NOT NULL,
    latency_ms  BIGINT NOT NULL,
    status_code INTEGER,
    error       TEXT,
    response    TEXT,
    PRIMARY KEY (delivery_id, number)
);
CREATE TABLE webhook_secrets (
    key_id     TEXT PRIMARY KEY REFERENCES api_keys (id) ON DELETE CASCADE,
    secret     TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE store_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at BIGINT NOT NULL
);
{_counts_triggers()}
""",
    # 2: signals to every replica (muxproxy.notify), sent by the transaction that
    # makes the change, so only a committed change is heard; and the rate buckets
    # every replica shares (muxproxy.ratelimit).
    """
CREATE FUNCTION muxproxy_job_signal() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('muxproxy_job_queued', NEW.provider);
    ELSE
        PERFORM pg_notify('muxproxy_job_ended', NEW.id);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_queued_signal AFTER INSERT ON jobs
    FOR EACH ROW WHEN (NEW.lease_owner IS NULL) EXECUTE FUNCTION muxproxy_job_signal();
CREATE TRIGGER jobs_ended_signal AFTER UPDATE OF state ON jobs
    FOR EACH ROW WHEN (NEW.state IN ('completed', 'failed') AND OLD.state <> NEW.state)
    EXECUTE FUNCTION muxproxy_job_signal();
CREATE FUNCTION muxproxy_key_signal() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- One branch per table: a branch is planned only when it runs, for its table.
    IF TG_TABLE_NAME = 'ledger' THEN
        PERFORM pg_notify('muxproxy_key_changed', NEW.key_id);
    ELSE
        PERFORM pg_notify('muxproxy_key_changed', NEW.id);
    END IF;
    RETURN NULL;
END $$;
-- Not the balance alone: every hold, charge and refund moves it.
CREATE TRIGGER api_keys_changed_signal AFTER UPDATE ON api_keys
    FOR EACH ROW WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at
        OR OLD.key_hash IS DISTINCT FROM NEW.key_hash
        OR OLD.unlimited IS DISTINCT FROM NEW.unlimited
        OR OLD.rpm_limit IS DISTINCT FROM NEW.rpm_limit
        OR OLD.max_concurrent IS DISTINCT FROM NEW.max_concurrent
        OR OLD.allowed_models IS DISTINCT FROM NEW.allowed_models
        OR OLD.webhook_allow_networks IS DISTINCT FROM NEW.webhook_allow_networks)
    EXECUTE FUNCTION muxproxy_key_signal();
CREATE TRIGGER ledger_credits_signal AFTER INSERT ON ledger
    FOR EACH ROW WHEN (NEW.kind IN ('topup', 'deduct')) EXECUTE FUNCTION muxproxy_key_signal();
CREATE TABLE rate_buckets (
    key_id     TEXT PRIMARY KEY,
    tokens     DOUBLE PRECISION NOT NULL,
    updated_at BIGINT NOT NULL,
    granted    BOOLEAN NOT NULL
);
""",
    # 3: the counts kept for /metrics in shards, one chosen by the connection's
    # backend: a single row per (model, provider, state) was updated by every job's
    # every move, so concurrent transactions queued on its lock, each through its
    # commit. A shard may go below zero; the sums are the counts.
    """
ALTER TABLE job_counts ADD COLUMN shard SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE job_counts DROP CONSTRAINT job_counts_pkey;
ALTER TABLE job_counts ADD PRIMARY KEY (model, provider, state, shard);
CREATE OR REPLACE FUNCTION job_counts_keep() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    s SMALLINT := pg_backend_pid() % 16;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO job_counts (model, provider, state, shard, n)
            VALUES (OLD.model, OLD.provider, OLD.state, s, -1)
            ON CONFLICT (model, provider, state, shard) DO UPDATE SET n = job_counts.n - 1;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO job_counts (model, provider, state, shard, n)
            VALUES (NEW.model, NEW.provider, NEW.state, s, 1)
            ON CONFLICT (model, provider, state, shard) DO UPDATE SET n = job_counts.n + 1;
    END IF;
    RETURN NULL;
END $$;
ALTER TABLE webhook_counts ADD COLUMN shard SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE webhook_counts DROP CONSTRAINT webhook_counts_pkey;
ALTER TABLE webhook_counts ADD PRIMARY KEY (status, shard);
CREATE OR REPLACE FUNCTION webhook_counts_keep() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    s SMALLINT := pg_backend_pid() % 16;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO webhook_counts (status, shard, n) VALUES (OLD.status, s, -1)
            ON CONFLICT (status, shard) DO UPDATE SET n = webhook_counts.n - 1;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO webhook_counts (status, shard, n) VALUES (NEW.status, s, 1)
            ON CONFLICT (status, shard) DO UPDATE SET n = webhook_counts.n + 1;
    END IF;
    RETURN NULL;
END $$;
""",
)
