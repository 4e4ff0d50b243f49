-- Settlement (issue 10): clearing days, settlement transfers, reconciliations.
-- New journal rows record their kind, clearing day and the bank's confirmation time
-- (older rows keep NULL: the journal is append-only; their entries still say it all).
ALTER TABLE journal ADD COLUMN kind text;
ALTER TABLE journal ADD COLUMN clearing_day date;
ALTER TABLE journal ADD COLUMN bank_confirmed_at timestamptz;
CREATE INDEX journal_by_clearing_day ON journal (clearing_day) WHERE clearing_day IS NOT NULL;
CREATE INDEX journal_by_bank_confirmation ON journal (bank_confirmed_at)
    WHERE bank_confirmed_at IS NOT NULL;

-- A settlement transfer posts twice under its reference: instructed, then arrived.
DROP INDEX journal_one_posting_per_payment;
CREATE UNIQUE INDEX journal_one_posting_per_payment ON journal (payment_id)
    WHERE refund_id IS NULL AND kind IS DISTINCT FROM 'settlement_arrival';
CREATE UNIQUE INDEX journal_one_arrival_per_transfer ON journal (payment_id)
    WHERE kind = 'settlement_arrival';

-- Operational state (the journal and ClearingDayClosed on ledger.v1 are the record).
CREATE TABLE clearing_days (
    day        date        PRIMARY KEY,
    closed_at  timestamptz NOT NULL,
    forced     boolean     NOT NULL,
    event_id   uuid        NOT NULL UNIQUE,
    closed     jsonb       NOT NULL  -- the ClearingDayClosed payload
);

CREATE TABLE settlement_transfers (
    reference       text        PRIMARY KEY,  -- st_{day}_{region}: the bank dedupes on it
    day             date        NOT NULL REFERENCES clearing_days (day),
    region          text        NOT NULL,
    bank            text        NOT NULL,
    to_account      text        NOT NULL,
    amount          bigint      NOT NULL CHECK (amount > 0),
    status          text        NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'arrived')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    arrived_at      timestamptz,
    arrival_seq     bigint
);
CREATE INDEX settlement_transfers_due ON settlement_transfers (next_attempt_at)
    WHERE status = 'pending';

CREATE TABLE reconciliations (
    event_id          uuid        PRIMARY KEY,  -- derived from day, statement and outcome
    day               date        NOT NULL,
    statement_sha256  text        NOT NULL,
    reconciled_at     timestamptz NOT NULL,
    outcome           jsonb       NOT NULL      -- the BankStatementReconciled payload
);
