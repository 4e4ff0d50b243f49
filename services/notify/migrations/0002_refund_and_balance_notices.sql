-- Issue 9: refund results and personal-medical-account balance changes are notices too.
-- A balance change of a credit belongs to the allocation (payment_id holds its "al_…"
-- id, as in the ledger's journal); its phone is sealed under phone:<allocation_id>.
ALTER TABLE notifications DROP CONSTRAINT IF EXISTS notifications_kind_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_kind_check CHECK (
    kind IN ('sms_code', 'payment_result', 'receipt', 'refund_result', 'balance_change')
);

-- Whom a payment paid, as its result notice named it: a refund's notice names it again
-- (refund events do not carry the payee). Not personal data: a bureau or 零钱.
ALTER TABLE notifications ADD COLUMN IF NOT EXISTS payee_name text;
-- The refund a refund_result notice tells of.
ALTER TABLE notifications ADD COLUMN IF NOT EXISTS refund_id text;

-- One outcome notice per refund, and one balance change per payment or allocation,
-- even if an upstream ever published the same fact under a second event id.
CREATE UNIQUE INDEX IF NOT EXISTS notifications_once_per_refund
    ON notifications (refund_id) WHERE kind = 'refund_result';
CREATE UNIQUE INDEX IF NOT EXISTS notifications_balance_change_once
    ON notifications (payment_id) WHERE kind = 'balance_change';
