-- Reconciliation looks journal records up by the bank's reference.
CREATE INDEX journal_by_bank_reference ON journal ((entry ->> 'bank_reference'))
    WHERE bank_confirmed_at IS NOT NULL;
