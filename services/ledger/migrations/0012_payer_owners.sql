-- Who owns a payer (issue 11): the caller that enrolled it, learnt from payments.v1
-- (PayerEnrolled; older payers from PaymentAuthorized / RefundAuthorized caller_id).
-- A payer's wallet:, medical: accounts, records, overview and certificate are read by
-- this caller (and operators) only. Operational state written by the consumer, not a
-- projection of ledger.v1. id_number_hash: the keyed hash of the payer's ID number,
-- when known, to find the premiums paid for this person as the insured.
CREATE TABLE payer_owners (
    payer_id       text        PRIMARY KEY,
    caller_id      text        NOT NULL,
    id_number_hash text,
    enrolled_at    timestamptz NOT NULL
);
CREATE INDEX payer_owners_by_person ON payer_owners (caller_id, id_number_hash);
