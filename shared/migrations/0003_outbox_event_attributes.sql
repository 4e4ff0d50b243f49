-- Issue 13: the relay builds each message's CloudEvents headers from the row instead of
-- parsing its value: the envelope's producer and occurred_at beside the event_id and
-- event_type already here. NULL for rows staged before; the relay parses those.
ALTER TABLE outbox
    ADD COLUMN IF NOT EXISTS producer text,
    ADD COLUMN IF NOT EXISTS occurred_at timestamptz;
