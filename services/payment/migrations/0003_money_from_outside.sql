-- Money from outside (issue 9): bank-card payments wait for the bank (awaiting_bank),
-- the bank's confirmation and the posting time are kept for the payment's funds,
-- refunds, durable bank calls, the payers seen, and the bureau's allocations.
ALTER TABLE payments DROP CONSTRAINT IF EXISTS payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check CHECK (status IN ('requested',
    'requires_verification', 'awaiting_bank', 'authorized', 'succeeded', 'declined',
    'failed'));
ALTER TABLE payments ADD COLUMN IF NOT EXISTS bank_debit jsonb;
ALTER TABLE payments ADD COLUMN IF NOT EXISTS posted_at timestamptz;

-- A payer's phone as first seen (the sealed value of its first payment, AAD
-- phone:<first_payment_id>), for the balance SMS of an allocation.
CREATE TABLE IF NOT EXISTS payers (
    payer_id            text        PRIMARY KEY,
    first_payment_id    text        NOT NULL,
    phone_masked        text        NOT NULL,
    phone_sealed        text        NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now()
);

-- Refunds of succeeded payments; the caller that asked owns the refund.
CREATE TABLE IF NOT EXISTS refunds (
    id              text        PRIMARY KEY,
    payment_id      text        NOT NULL REFERENCES payments (id),
    caller          text        NOT NULL,
    amount          bigint      NOT NULL CHECK (amount > 0),
    reason          text        NOT NULL,
    status          text        NOT NULL CHECK (status IN ('awaiting_bank', 'authorized',
                        'succeeded', 'failed')),
    bank_refund     jsonb,
    receipt         jsonb,
    journal_seq     bigint,
    decline_code    text,
    decline_message text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS refunds_by_payment ON refunds (payment_id, created_at);

-- Calls to the bank, written in the transaction that decided them, so a crash never
-- loses one. The reference is stable (the bank dedupes on it); next_attempt_at is
-- also the worker's lease. kind: debit (reference = payment id), refund (reference =
-- refund id), reversal (reference rv_<payment id>: a debit confirmed after we gave up).
CREATE TABLE IF NOT EXISTS bank_calls (
    reference       text        PRIMARY KEY,
    kind            text        NOT NULL CHECK (kind IN ('debit', 'refund', 'reversal')),
    payment_id      text        NOT NULL,
    refund_id       text,
    debit_reference text,
    payer_ref       text        NOT NULL,
    amount          bigint      NOT NULL CHECK (amount > 0),
    state           text        NOT NULL CHECK (state IN ('calling', 'watching', 'done')),
    attempts        int         NOT NULL DEFAULT 0,
    last_answer     text,
    watch_until     timestamptz,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS bank_calls_due ON bank_calls (next_attempt_at)
    WHERE state <> 'done';

-- The bureau's credits to personal medical accounts (个账划入), once per
-- (region, period, payer).
CREATE TABLE IF NOT EXISTS allocations (
    region          text        NOT NULL,
    period          text        NOT NULL,
    payer_id        text        NOT NULL,
    allocation_id   text        NOT NULL UNIQUE,
    amount          bigint      NOT NULL CHECK (amount > 0),
    caller          text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (region, period, payer_id)
);
