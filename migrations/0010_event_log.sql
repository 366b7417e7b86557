-- The inbound event log: one row per request the gateway answered, written in batches off
-- the request path. Never a secret, signature or payload.
CREATE TABLE inbound_events (
    at BIGINT NOT NULL,
    request_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    key_id TEXT,
    outcome TEXT NOT NULL,
    reason TEXT,
    shadow_verdict TEXT,
    status INTEGER NOT NULL,
    event_id TEXT,
    client_ip TEXT,
    bytes BIGINT NOT NULL,
    latency_us BIGINT NOT NULL
);
CREATE INDEX inbound_events_by_time ON inbound_events (at);
CREATE INDEX inbound_events_by_provider ON inbound_events (provider, at);
