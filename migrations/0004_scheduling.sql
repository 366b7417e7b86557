-- Per-endpoint scheduling state the whole fleet shares: the circuit breaker (consecutive
-- failures; while open no attempt is claimed, then one probe) and the rate limiter's
-- theoretical arrival time (GCRA, microseconds).
CREATE TABLE endpoint_health (
    tenant TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    failures BIGINT NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'closed',
    open_until BIGINT NOT NULL DEFAULT 0,
    last_success BIGINT,
    last_failure BIGINT,
    tat_us BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, endpoint)
);
-- Enqueue order, and the FIFO a delivery of an `ordered` endpoint belongs to ('' = the
-- whole endpoint, else its ordering_key); NULL = unordered.
ALTER TABLE deliveries ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN fifo_key TEXT;
CREATE INDEX deliveries_fifo ON deliveries (tenant, endpoint, fifo_key, status, seq);
CREATE INDEX deliveries_leased ON deliveries (lease_until);
