-- Keys of `url-key` filters with `keys: store`, managed through the API. Only the SHA-256 of
-- a key is kept (keys are 190 random bits); `hint` is its first characters, for lists.
CREATE TABLE inbound_keys (
    id TEXT PRIMARY KEY,
    filter TEXT NOT NULL,
    hash TEXT NOT NULL,
    hint TEXT NOT NULL,
    -- After a regeneration with a grace: the old key opens too until `previous_until`.
    previous_hash TEXT,
    previous_until BIGINT,
    disabled_at BIGINT,
    created_at BIGINT NOT NULL,
    events BIGINT NOT NULL,
    last_used_at BIGINT
);
CREATE INDEX inbound_keys_by_filter ON inbound_keys (filter);
