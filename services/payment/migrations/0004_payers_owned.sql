-- Trust (issue 11): a payer belongs to the caller that enrolled it (its first payment,
-- or PUT /v1/payers/{payer_id}); codes and notices go to the enrolled phone; the payer
-- as a person (keyed hash of the ID number) is what risk's daily cap follows.
ALTER TABLE payers ADD COLUMN IF NOT EXISTS caller text;
-- The id the phone is sealed under (AAD phone:<id>): the first payment's id, or the
-- payer's own enrolment id ("py_…") for an explicit enrolment.
ALTER TABLE payers ADD COLUMN IF NOT EXISTS phone_sealed_for text;
ALTER TABLE payers ADD COLUMN IF NOT EXISTS id_number_hash text;
ALTER TABLE payers ADD COLUMN IF NOT EXISTS id_number_masked text;
ALTER TABLE payers ADD COLUMN IF NOT EXISTS name text;
ALTER TABLE payers ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE payers ALTER COLUMN first_payment_id DROP NOT NULL;

-- Payers paid for before this table existed: enrolled by their first payment.
INSERT INTO payers (payer_id, first_payment_id, phone_masked, phone_sealed, created_at)
SELECT DISTINCT ON (payer_id) payer_id, id, payer_phone_masked, payer_phone_sealed, created_at
FROM payments ORDER BY payer_id, created_at, id
ON CONFLICT (payer_id) DO NOTHING;

UPDATE payers SET phone_sealed_for = first_payment_id WHERE phone_sealed_for IS NULL;
UPDATE payers SET caller = p.caller FROM payments p
    WHERE payers.caller IS NULL AND p.id = payers.first_payment_id;
-- A payer no payment names (cannot happen before this migration): owned by nobody.
UPDATE payers SET caller = '' WHERE caller IS NULL;
ALTER TABLE payers ALTER COLUMN caller SET NOT NULL;
ALTER TABLE payers ALTER COLUMN phone_sealed_for SET NOT NULL;

-- The person behind the payer of each payment (the daily cap's key), as on its events.
ALTER TABLE payments ADD COLUMN IF NOT EXISTS payer_id_hash text;

-- Payments stuck in a non-final state are nudged (their last event published again)
-- by the StuckPaymentSweeper; when it last did, and how often.
ALTER TABLE payments ADD COLUMN IF NOT EXISTS nudged_at timestamptz;
ALTER TABLE payments ADD COLUMN IF NOT EXISTS nudges int NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS payments_unfinished ON payments (updated_at)
    WHERE status IN ('requested', 'requires_verification', 'authorized');
