-- Issue 13: "is this payment already booked?" (`WHERE payment_id = ... AND refund_id IS
-- NULL`, once per payment and once per run) matched no index since 0004 narrowed the
-- unique one to non-arrival kinds: a scan of the whole journal, growing with it. A plain
-- index on payment_id answers it (and every other lookup of a payment's entries).
CREATE INDEX IF NOT EXISTS journal_by_payment ON journal (payment_id);
