-- Claims read each endpoint's queue head through this index (a few rows per endpoint,
-- however long the backlog) instead of ranking every due delivery.
CREATE INDEX deliveries_queue ON deliveries (tenant, endpoint, status, next_at, seq);
-- Every endpoint with deliveries has a health row: claims list endpoints from it. (The
-- WHERE tells SQLite's parser that ON CONFLICT belongs to the INSERT.)
INSERT INTO endpoint_health (tenant, endpoint)
    SELECT DISTINCT tenant, endpoint FROM deliveries WHERE true
    ON CONFLICT (tenant, endpoint) DO NOTHING;
