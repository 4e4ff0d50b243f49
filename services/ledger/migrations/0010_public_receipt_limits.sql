-- Public receipt reads and 查验 (issue 11): one token bucket per client address, kept
-- here so that the limit holds across every ledger instance. Operational state, not a
-- projection: rebuild leaves it alone. A bucket untouched for long is full again and
-- is deleted (services.ledger.receipts.store.forget_full_buckets).
CREATE TABLE receipt_rate_buckets (
    client     text             PRIMARY KEY,
    tokens     double precision NOT NULL,
    updated_at timestamptz      NOT NULL
);
CREATE INDEX receipt_rate_buckets_by_age ON receipt_rate_buckets (updated_at);
