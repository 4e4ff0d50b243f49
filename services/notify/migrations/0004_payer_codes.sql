-- Payer codes (issues 11 and 12): payment's PayerCodeIssued owes an SMS code
-- (kind sms_code, payment_id holding the code id "pc_…") and, for a phone change, a
-- security_notice to the phone being replaced. Both phones are sealed under
-- phone:<code_id>.
ALTER TABLE notifications DROP CONSTRAINT IF EXISTS notifications_kind_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_kind_check CHECK (
    kind IN ('sms_code', 'payment_result', 'receipt', 'refund_result', 'balance_change',
             'security_notice')
);
