-- Money from outside (issue 9): a payment may have refund entries beside its own
-- (one per refund_id, each with its red receipt for a premium); an allocation posts
-- under its allocation id as payment_id. One posting per payment, one per refund.
ALTER TABLE journal ADD COLUMN refund_id text UNIQUE;
ALTER TABLE journal DROP CONSTRAINT journal_payment_id_key;
CREATE UNIQUE INDEX journal_one_posting_per_payment ON journal (payment_id)
    WHERE refund_id IS NULL;
CREATE INDEX journal_refunds_of_payment ON journal (payment_id) WHERE refund_id IS NOT NULL;

-- A red receipt names its payment too, and points at the original it reverses.
ALTER TABLE receipts DROP CONSTRAINT receipts_payment_id_key;
CREATE INDEX receipts_of_payment ON receipts (payment_id);
CREATE INDEX receipts_reversing ON receipts
    ((face -> 'relates_to' ->> 'code'), (face -> 'relates_to' ->> 'number'))
    WHERE face ? 'relates_to';

-- A refused refund is recorded like a refused payment, once per refund.
ALTER TABLE rejections ADD COLUMN refund_id text UNIQUE;
ALTER TABLE rejections DROP CONSTRAINT rejections_pkey;
CREATE UNIQUE INDEX rejections_one_per_payment ON rejections (payment_id)
    WHERE refund_id IS NULL;
