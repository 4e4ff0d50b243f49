-- Projection: each account's statement, one line per journal entry that moved its
-- balance (accounts an entry nets to zero, like platform clearing, get no line).
-- Computed only from JournalEntryPosted by the projector; rebuilt with the rest.
CREATE TABLE statement_lines (
    account_id    text        NOT NULL,
    seq           bigint      NOT NULL,
    payment_id    text        NOT NULL,
    amount        bigint      NOT NULL,
    balance_after bigint      NOT NULL,
    posted_at     timestamptz NOT NULL,
    PRIMARY KEY (account_id, seq)
);
