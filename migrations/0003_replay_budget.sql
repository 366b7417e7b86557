-- A replayed dead letter keeps its attempt count (attempt numbers stay unique) and gets a
-- fresh retry budget counted from here.
ALTER TABLE deliveries ADD COLUMN budget_from BIGINT NOT NULL DEFAULT 0;
