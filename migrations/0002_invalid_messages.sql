-- Entries a broker source could not turn into a message (malformed, unknown tenant): kept as
-- dead letters, so the entry can be acked without being dropped silently.
CREATE TABLE invalid_messages (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    raw TEXT NOT NULL,
    at BIGINT NOT NULL
);
