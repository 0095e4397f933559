"""The SQLite schema, as an append-only list of migrations (``PRAGMA user_version``).

Statements are separated by a line holding only ``;`` so trigger bodies stay whole.
Never edit a released migration: add a new one.
"""

from __future__ import annotations

from muxproxy.pipeline.jobs import TRANSITIONS


def _state_machine_trigger() -> str:
    allowed = " OR ".join(f"(OLD.state = '{src}' AND NEW.state = '{dst}')"
                          for src, targets in TRANSITIONS.items() for dst in sorted(targets))
    return f"""
CREATE TRIGGER jobs_state_machine BEFORE UPDATE OF state ON jobs
WHEN OLD.state != NEW.state AND NOT ({allowed})
BEGIN
    SELECT RAISE(ABORT, 'illegal transition');
END"""


MIGRATIONS: tuple[str, ...] = (
    f"""
CREATE TABLE jobs (
    id             TEXT PRIMARY KEY,
    key_id         TEXT NOT NULL,
    surface        TEXT NOT NULL,
    model          TEXT NOT NULL,
    state          TEXT NOT NULL,
    params         TEXT NOT NULL,
    client_params  TEXT NOT NULL,
    route_index    INTEGER NOT NULL DEFAULT 0,
    provider       TEXT NOT NULL,
    upstream_model TEXT NOT NULL,
    upstream_id    TEXT,
    upstream_state TEXT,
    result         TEXT,
    fail_code      TEXT,
    fail_msg       TEXT,
    attempts       INTEGER NOT NULL DEFAULT 0,
    recoveries     INTEGER NOT NULL DEFAULT 0,
    polls          INTEGER NOT NULL DEFAULT 0,
    callback_url   TEXT,
    credits        INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL,
    started_at     INTEGER,
    completed_at   INTEGER,
    updated_at     INTEGER NOT NULL,
    run_after      INTEGER NOT NULL,
    deadline_at    INTEGER NOT NULL,
    lease_owner    TEXT,
    lease_until    INTEGER
)
;
CREATE INDEX jobs_due ON jobs (provider, run_after)
    WHERE state IN ('pending', 'processing') AND lease_owner IS NULL
;
CREATE INDEX jobs_deadline ON jobs (deadline_at) WHERE state IN ('pending', 'processing')
;
CREATE INDEX jobs_by_key ON jobs (key_id, created_at)
;
CREATE INDEX jobs_leased ON jobs (lease_owner) WHERE lease_owner IS NOT NULL
;
{_state_machine_trigger()}
;
CREATE TRIGGER jobs_terminal_final BEFORE UPDATE ON jobs
WHEN OLD.state IN ('completed', 'failed') AND (
    NEW.result IS NOT OLD.result OR NEW.fail_msg IS NOT OLD.fail_msg)
BEGIN
    SELECT RAISE(ABORT, 'illegal transition');
END
;
CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    key_hash   TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
)
""",
    # 2: accounts: key limits and balances, the credit ledger, idempotency records.
    """
ALTER TABLE api_keys ADD COLUMN balance INTEGER NOT NULL DEFAULT 0
;
ALTER TABLE api_keys ADD COLUMN unlimited INTEGER NOT NULL DEFAULT 0
;
ALTER TABLE api_keys ADD COLUMN rpm_limit INTEGER
;
ALTER TABLE api_keys ADD COLUMN max_concurrent INTEGER
;
ALTER TABLE api_keys ADD COLUMN allowed_models TEXT
;
ALTER TABLE jobs ADD COLUMN billing TEXT NOT NULL DEFAULT 'none'
;
CREATE INDEX jobs_active_by_key ON jobs (key_id) WHERE state IN ('pending', 'processing')
;
CREATE TABLE ledger (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id     TEXT NOT NULL REFERENCES api_keys (id),
    kind       TEXT NOT NULL,
    amount     INTEGER NOT NULL,
    job_id     TEXT,
    model      TEXT,
    note       TEXT,
    created_at INTEGER NOT NULL
)
;
CREATE INDEX ledger_by_key ON ledger (key_id, id)
;
-- A job is held, charged, refunded and released at most once each, whatever
-- the crash or retry timing: the database refuses a second row.
CREATE UNIQUE INDEX ledger_once_per_job ON ledger (job_id, kind) WHERE job_id IS NOT NULL
;
CREATE TRIGGER ledger_append_only BEFORE UPDATE ON ledger
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only');
END
;
CREATE TABLE idempotency (
    key_id        TEXT NOT NULL,
    idem_key      TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    status        INTEGER,
    content_type  TEXT,
    body          BLOB,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    PRIMARY KEY (key_id, idem_key)
)
;
CREATE INDEX idempotency_expiry ON idempotency (expires_at)
""",
    # 3: the webhook outbox. A delivery row is written in the transaction that makes
    # its job terminal; attempts are appended as they happen.
    """
CREATE TABLE webhook_deliveries (
    id              TEXT PRIMARY KEY,
    job_id          TEXT NOT NULL UNIQUE REFERENCES jobs (id) ON DELETE CASCADE,
    key_id          TEXT NOT NULL,
    url             TEXT NOT NULL,
    host            TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    round_attempts  INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    next_attempt_at INTEGER,
    window_ends_at  INTEGER,
    delivered_at    INTEGER,
    last_error      TEXT,
    lease_owner     TEXT,
    lease_until     INTEGER
)
;
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending'
;
CREATE TABLE webhook_attempts (
    delivery_id TEXT NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    number      INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    latency_ms  INTEGER NOT NULL,
    status_code INTEGER,
    error       TEXT,
    response    TEXT,
    PRIMARY KEY (delivery_id, number)
)
;
CREATE TABLE webhook_secrets (
    key_id     TEXT PRIMARY KEY REFERENCES api_keys (id) ON DELETE CASCADE,
    secret     TEXT NOT NULL,
    created_at INTEGER NOT NULL
)
""",
    # 4: an Idempotency-Key is bound to its job, not to a stored response body. A
    # record with no job is a reservation: ``claim`` names it, ``owner`` is the
    # process that made it. Old records keep their job when their body names it
    # (native taskId, ModelMux historyId); the rest, and every body, go.
    """
CREATE TABLE idempotency_jobs (
    key_id        TEXT NOT NULL,
    idem_key      TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    job_id        TEXT,
    claim         TEXT,
    owner         TEXT,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    PRIMARY KEY (key_id, idem_key)
)
;
INSERT INTO idempotency_jobs (key_id, idem_key, request_hash, job_id, created_at, expires_at)
SELECT key_id, idem_key, request_hash, job_id, created_at, expires_at FROM (
    SELECT key_id, idem_key, request_hash, created_at, expires_at,
           CASE WHEN json_valid(CAST(body AS TEXT)) THEN COALESCE(
               json_extract(CAST(body AS TEXT), '$.data.taskId'),
               json_extract(CAST(body AS TEXT), '$.historyId')) END AS job_id
    FROM idempotency WHERE status BETWEEN 200 AND 299)
WHERE job_id IN (SELECT id FROM jobs)
;
DROP TABLE idempotency
;
ALTER TABLE idempotency_jobs RENAME TO idempotency
;
CREATE INDEX idempotency_expiry ON idempotency (expires_at)
""",
    # 5: faults of the gateway's own disk and database: a lapsed lease makes a job due
    # again (jobs_lapsing finds those, beside jobs_due for unleased ones), the
    # retention sweep marks what it deleted (1: inputs, 2: inputs and results), and
    # /readyz writes a probe.
    """
CREATE INDEX jobs_lapsing ON jobs (provider, lease_until)
    WHERE state IN ('pending', 'processing') AND lease_owner IS NOT NULL
;
ALTER TABLE jobs ADD COLUMN swept INTEGER NOT NULL DEFAULT 0
;
CREATE INDEX jobs_unswept ON jobs (swept, completed_at)
    WHERE state IN ('completed', 'failed') AND swept < 2
;
CREATE TABLE store_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at INTEGER NOT NULL
)
""",
    # 6: private networks one key's callbacks may reach (a JSON list of CIDRs, or NULL).
    """
ALTER TABLE api_keys ADD COLUMN webhook_allow_networks TEXT
""",
    # 7: counts for /metrics, kept by triggers in the transactions that change the
    # rows, so a scrape reads a few rows whatever the size of the tables.
    """
CREATE TABLE job_counts (
    model    TEXT NOT NULL,
    provider TEXT NOT NULL,
    state    TEXT NOT NULL,
    n        INTEGER NOT NULL,
    PRIMARY KEY (model, provider, state)
) WITHOUT ROWID
;
INSERT INTO job_counts (model, provider, state, n)
    SELECT model, provider, state, COUNT(*) FROM jobs GROUP BY model, provider, state
;
CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs
BEGIN
    INSERT INTO job_counts (model, provider, state, n)
        VALUES (NEW.model, NEW.provider, NEW.state, 1)
        ON CONFLICT (model, provider, state) DO UPDATE SET n = n + 1;
END
;
CREATE TRIGGER job_counts_update AFTER UPDATE OF model, provider, state ON jobs
WHEN OLD.model IS NOT NEW.model OR OLD.provider IS NOT NEW.provider
    OR OLD.state IS NOT NEW.state
BEGIN
    UPDATE job_counts SET n = n - 1
        WHERE model = OLD.model AND provider = OLD.provider AND state = OLD.state;
    INSERT INTO job_counts (model, provider, state, n)
        VALUES (NEW.model, NEW.provider, NEW.state, 1)
        ON CONFLICT (model, provider, state) DO UPDATE SET n = n + 1;
END
;
CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs
BEGIN
    UPDATE job_counts SET n = n - 1
        WHERE model = OLD.model AND provider = OLD.provider AND state = OLD.state;
END
;
CREATE TABLE webhook_counts (
    status TEXT PRIMARY KEY,
    n      INTEGER NOT NULL
) WITHOUT ROWID
;
INSERT INTO webhook_counts (status, n)
    SELECT status, COUNT(*) FROM webhook_deliveries GROUP BY status
;
CREATE TRIGGER webhook_counts_insert AFTER INSERT ON webhook_deliveries
BEGIN
    INSERT INTO webhook_counts (status, n) VALUES (NEW.status, 1)
        ON CONFLICT (status) DO UPDATE SET n = n + 1;
END
;
CREATE TRIGGER webhook_counts_update AFTER UPDATE OF status ON webhook_deliveries
WHEN OLD.status IS NOT NEW.status
BEGIN
    UPDATE webhook_counts SET n = n - 1 WHERE status = OLD.status;
    INSERT INTO webhook_counts (status, n) VALUES (NEW.status, 1)
        ON CONFLICT (status) DO UPDATE SET n = n + 1;
END
;
CREATE TRIGGER webhook_counts_delete AFTER DELETE ON webhook_deliveries
BEGIN
    UPDATE webhook_counts SET n = n - 1 WHERE status = OLD.status;
END
;
CREATE INDEX webhook_deliveries_pending_age ON webhook_deliveries (created_at)
    WHERE status = 'pending'
""",
    # 8: several processes on one file (serve --workers N): the signals PostgreSQL's
    # triggers send with pg_notify (pg_schema.py, migration 2), written here as rows
    # that each process reads (muxproxy.notify.sqlite), only while one listens; and
    # the rate buckets they share (muxproxy.ratelimit).
    """
CREATE TABLE signal_listeners (
    owner      TEXT PRIMARY KEY,
    alive_at   INTEGER NOT NULL
) WITHOUT ROWID
;
CREATE TABLE signals (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    channel    TEXT NOT NULL,
    subject    TEXT NOT NULL,
    at         INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
)
;
CREATE TRIGGER jobs_queued_signal AFTER INSERT ON jobs
WHEN NEW.lease_owner IS NULL AND EXISTS (SELECT 1 FROM signal_listeners)
BEGIN
    INSERT INTO signals (channel, subject) VALUES ('muxproxy_job_queued', NEW.provider);
END
;
CREATE TRIGGER jobs_ended_signal AFTER UPDATE OF state ON jobs
WHEN NEW.state IN ('completed', 'failed') AND OLD.state <> NEW.state
    AND EXISTS (SELECT 1 FROM signal_listeners)
BEGIN
    INSERT INTO signals (channel, subject) VALUES ('muxproxy_job_ended', NEW.id);
END
;
CREATE TRIGGER api_keys_changed_signal AFTER UPDATE ON api_keys
WHEN (OLD.revoked_at IS NOT NEW.revoked_at OR OLD.key_hash IS NOT NEW.key_hash
    OR OLD.unlimited IS NOT NEW.unlimited OR OLD.rpm_limit IS NOT NEW.rpm_limit
    OR OLD.max_concurrent IS NOT NEW.max_concurrent
    OR OLD.allowed_models IS NOT NEW.allowed_models
    OR OLD.webhook_allow_networks IS NOT NEW.webhook_allow_networks)
    AND EXISTS (SELECT 1 FROM signal_listeners)
BEGIN
    INSERT INTO signals (channel, subject) VALUES ('muxproxy_key_changed', NEW.id);
END
;
CREATE TRIGGER ledger_credits_signal AFTER INSERT ON ledger
WHEN NEW.kind IN ('topup', 'deduct') AND EXISTS (SELECT 1 FROM signal_listeners)
BEGIN
    INSERT INTO signals (channel, subject) VALUES ('muxproxy_key_changed', NEW.key_id);
END
;
CREATE TABLE rate_buckets (
    key_id     TEXT PRIMARY KEY,
    tokens     REAL NOT NULL,
    updated_at INTEGER NOT NULL,
    granted    INTEGER NOT NULL
) WITHOUT ROWID
""",
)
