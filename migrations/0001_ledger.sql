-- The outbound ledger. Portable SQL: the same file runs on SQLite and PostgreSQL.
-- Times are unix milliseconds; ids are text the dispatcher makes (msg_…).

CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    ordering_key TEXT,
    source TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- A sender's (tenant, id) names one message for a while (24 h): a retry is a duplicate.
CREATE TABLE idempotency (
    tenant TEXT NOT NULL,
    event_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, event_id)
);

-- One row per message x matching endpoint: what the workers claim.
CREATE TABLE deliveries (
    message_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_at BIGINT NOT NULL,
    lease_until BIGINT NOT NULL,
    lease_owner TEXT,
    last_outcome TEXT,
    dead_reason TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (message_id, endpoint)
);
CREATE INDEX deliveries_due ON deliveries (status, next_at);

CREATE TABLE attempts (
    message_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    at BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    status BIGINT,
    latency_ms BIGINT NOT NULL,
    preview TEXT,
    PRIMARY KEY (message_id, endpoint, attempt)
);

-- Endpoints the dispatcher stopped (410 Gone) or an operator disabled.
CREATE TABLE endpoint_state (
    tenant TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    disabled_at BIGINT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (tenant, endpoint)
);
