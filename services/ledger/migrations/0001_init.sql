-- The journal: the ledger's decisions, append-only and hash-chained. The ledger.v1
-- topic carries the same events; this copy gives the live head and a local replay.
CREATE TABLE journal (
    seq              bigint      PRIMARY KEY CHECK (seq >= 1),
    payment_id       text        NOT NULL UNIQUE,  -- one payment posts at most once
    transaction_id   uuid        NOT NULL UNIQUE,
    event_id         uuid        NOT NULL UNIQUE,  -- the JournalEntryPosted event
    entry            jsonb       NOT NULL,         -- the JournalEntryPosted payload
    hash             text        NOT NULL UNIQUE,
    prev_hash        text        NOT NULL UNIQUE,
    posted_at        timestamptz NOT NULL,
    receipt_event_id uuid        UNIQUE,           -- the ReceiptIssued event, premiums only
    receipt_event    jsonb                         -- its payload
);

CREATE FUNCTION journal_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the journal is append-only: % is not allowed', TG_OP;
END $$;

CREATE TRIGGER journal_append_only BEFORE UPDATE OR DELETE ON journal
    FOR EACH ROW EXECUTE FUNCTION journal_is_append_only();
CREATE TRIGGER journal_no_truncate BEFORE TRUNCATE ON journal
    FOR EACH STATEMENT EXECUTE FUNCTION journal_is_append_only();

-- Projections: computed only from JournalEntryPosted / ReceiptIssued by the projector;
-- droppable and rebuildable byte for byte (services.ledger.store.rebuild_projections).
CREATE TABLE ledger_head (
    id               smallint    PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    seq              bigint      NOT NULL,
    hash             text        NOT NULL,
    receipt_counters jsonb       NOT NULL  -- next 票据号码 per 票据代码
);
INSERT INTO ledger_head (id, seq, hash, receipt_counters) VALUES (1, 0, repeat('0', 64), '{}');

CREATE TABLE balances (
    account_id  text   PRIMARY KEY,
    balance     bigint NOT NULL,
    currency    text   NOT NULL,
    last_seq    bigint NOT NULL,
    CONSTRAINT personal_accounts_never_negative CHECK (
        balance >= 0 OR NOT (account_id LIKE 'wallet:%' OR account_id LIKE 'medical:%')
    )
);

CREATE TABLE receipts (
    code         text        NOT NULL,
    number       text        NOT NULL,
    payment_id   text        NOT NULL UNIQUE,
    journal_seq  bigint      NOT NULL UNIQUE,
    check_code   text        NOT NULL,
    face         jsonb       NOT NULL,
    signature    text        NOT NULL,
    key_id       text        NOT NULL,
    issued_at    timestamptz NOT NULL,
    PRIMARY KEY (code, number)
);

-- Operational state, not projections.
CREATE TABLE receipt_checks (
    code            text        NOT NULL,
    number          text        NOT NULL,
    verify_count    integer     NOT NULL DEFAULT 0,
    last_checked_at timestamptz,
    PRIMARY KEY (code, number)
);

CREATE TABLE rejections (
    payment_id   text        PRIMARY KEY,  -- one payment is rejected at most once
    event_id     uuid        NOT NULL UNIQUE,
    causation_id uuid        NOT NULL,
    account_id   text        NOT NULL,
    balance      bigint      NOT NULL,
    amount       bigint      NOT NULL,
    decline_code text        NOT NULL,
    rejected_at  timestamptz NOT NULL
);
