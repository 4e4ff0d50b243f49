-- Replays answer the first response byte for byte: keep the body as the exact text
-- sent (jsonb would reorder its keys).
ALTER TABLE idempotency_keys ALTER COLUMN response_body TYPE text USING response_body::text;
