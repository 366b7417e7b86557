-- The inbound event log, written a page at a time: each row is one batch of the writer,
-- its records a JSON array (never a secret, signature or payload). One insert per batch, not
-- per request, keeps the log's cost on a loaded gateway a few percent; readers decode pages
-- newest first. `providers`, `outcomes` and `reasons` list the page's distinct values
-- between bars (`|github|stripe|`), so a query skips pages that cannot match.
CREATE TABLE inbound_event_pages (
    first_at BIGINT NOT NULL,
    last_at BIGINT NOT NULL,
    count INTEGER NOT NULL,
    providers TEXT NOT NULL,
    outcomes TEXT NOT NULL,
    reasons TEXT NOT NULL,
    records TEXT NOT NULL
);
CREATE INDEX inbound_event_pages_by_time ON inbound_event_pages (last_at);
