-- Insurance certificates (电子参保凭证, issue 12) as issued: verification (查验) is a
-- look-up by number and check code. Operational state, not a projection: a
-- certificate states what the journal showed when it was issued, signed then.
-- Re-issuing the same content for the same payer and year returns the same row.
CREATE SEQUENCE certificate_numbers;
CREATE TABLE certificates (
    number         text        PRIMARY KEY,
    payer_id       text        NOT NULL,
    caller_id      text        NOT NULL,
    year           integer     NOT NULL,
    content_sha256 text        NOT NULL,
    check_code     text        NOT NULL,
    face           jsonb       NOT NULL,  -- masked; signed
    signature      text        NOT NULL,
    key_id         text        NOT NULL,
    issued_at      timestamptz NOT NULL,
    verify_count   integer     NOT NULL DEFAULT 0,
    UNIQUE (payer_id, year, content_sha256)
);
