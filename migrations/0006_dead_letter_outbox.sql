-- Dead letters still to publish to `outbound.dead_letters.sink` (an outbox: set once the
-- sink acknowledged; a replay that dies again is published again).
ALTER TABLE deliveries ADD COLUMN dead_published BIGINT NOT NULL DEFAULT 0;
ALTER TABLE invalid_messages ADD COLUMN published BIGINT NOT NULL DEFAULT 0;
