-- Premiums by region, year and scheme (issue 12): a premium of the social schemes
-- (urban_rural_resident, flexible_employment) occupies a slot, the person (keyed hash
-- of the beneficiary's ID number), the scheme and the collecting bureau
-- ("scheme:bureau_region:id_hash"), over the months it pays for (months since year 0,
-- inclusive). A payment that is not declined nor failed holds its slot; intake refuses
-- an overlapping one (409 already_paid) under a transaction-scoped advisory lock on the
-- slot key, in the transaction that inserts the payment. Commercial health: no slot.
ALTER TABLE payments ADD COLUMN IF NOT EXISTS premium_slot text;
ALTER TABLE payments ADD COLUMN IF NOT EXISTS premium_first_month int;
ALTER TABLE payments ADD COLUMN IF NOT EXISTS premium_last_month int;

-- Premiums paid before this migration hold their slots too. The collecting bureau is
-- shared.regions.collecting_region: a province, a XX90YY county-level city or a
-- prefecture is its own; a district of a municipality (11, 12, 31, 50) is the
-- municipality's; any other district or county its prefecture's.
UPDATE payments SET
    premium_slot = (purpose ->> 'scheme') || ':' || (CASE
            WHEN purpose ->> 'region' LIKE '__0000' OR substr(purpose ->> 'region', 3, 2) = '90'
                THEN purpose ->> 'region'
            WHEN substr(purpose ->> 'region', 1, 2) IN ('11', '12', '31', '50')
                THEN substr(purpose ->> 'region', 1, 2) || '0000'
            ELSE substr(purpose ->> 'region', 1, 4) || '00'
        END) || ':' || (beneficiary ->> 'id_number_hash'),
    premium_first_month = substr(purpose ->> 'period', 1, 4)::int * 12 + (CASE
            WHEN length(purpose ->> 'period') = 4 THEN 0
            WHEN substr(purpose ->> 'period', 6, 1) = 'Q'
                THEN (substr(purpose ->> 'period', 7, 1)::int - 1) * 3
            ELSE substr(purpose ->> 'period', 6, 2)::int - 1
        END),
    premium_last_month = substr(purpose ->> 'period', 1, 4)::int * 12 + (CASE
            WHEN length(purpose ->> 'period') = 4 THEN 11
            WHEN substr(purpose ->> 'period', 6, 1) = 'Q'
                THEN substr(purpose ->> 'period', 7, 1)::int * 3 - 1
            ELSE substr(purpose ->> 'period', 6, 2)::int - 1
        END)
WHERE premium_slot IS NULL
    AND purpose ->> 'type' = 'premium'
    AND purpose ->> 'scheme' IN ('urban_rural_resident', 'flexible_employment')
    AND purpose ->> 'period' ~ '^[0-9]{4}(-(0[1-9]|1[0-2]|Q[1-4]))?$';

CREATE INDEX IF NOT EXISTS payments_premium_slot ON payments (premium_slot)
    WHERE premium_slot IS NOT NULL AND status NOT IN ('declined', 'failed');
