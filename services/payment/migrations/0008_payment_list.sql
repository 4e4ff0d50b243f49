-- Issue 14 (callers): the caller's own order reference and a small string map on each
-- payment, and the index GET /v1/payments pages through (the caller's payments, newest
-- first, ties broken by id: the cursor is (created_at, id)).
ALTER TABLE payments ADD COLUMN IF NOT EXISTS metadata jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE payments ADD COLUMN IF NOT EXISTS client_reference text;
CREATE INDEX IF NOT EXISTS payments_by_caller
    ON payments (caller, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS payments_by_client_reference
    ON payments (caller, client_reference, created_at DESC)
    WHERE client_reference IS NOT NULL;
