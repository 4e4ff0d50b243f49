-- The resident's records (issue 12) are read from the journal itself (a view of
-- ledger.v1: nothing stored beside it, so a rebuild cannot change them). These
-- indexes find a payer's payments and the premiums paid for an insured person.
CREATE INDEX journal_payments_of_payer ON journal ((entry ->> 'payer_id'), seq)
    WHERE refund_id IS NULL;
CREATE INDEX journal_premiums_of_insured
    ON journal ((receipt_event ->> 'insured_id_hash'), (receipt_event ->> 'caller_id'))
    WHERE refund_id IS NULL AND receipt_event IS NOT NULL;
