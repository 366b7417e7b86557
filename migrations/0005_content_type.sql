-- A payload that is not JSON (an inbound webhook bridged as it came, e.g. a form) keeps its
-- media type; NULL is application/json.
ALTER TABLE messages ADD COLUMN content_type TEXT;
