-- Trust (issue 11).
-- The daily cap follows the person: payer_day_usage.payer_id now holds the cap key, the
-- payer's keyed ID hash ("person:<hash>") when known, else the payer id (a payer id
-- never holds ':'). Each reservation remembers the key it was counted under.
ALTER TABLE reservations ADD COLUMN IF NOT EXISTS cap_key text;
UPDATE reservations SET cap_key = payer_id WHERE cap_key IS NULL;
ALTER TABLE reservations ALTER COLUMN cap_key SET NOT NULL;

-- The caller that owns each payer (from PaymentRequested.payment.caller_id): only it
-- reads the payer's daily cap. cap_key: where the payer's usage is counted today.
CREATE TABLE IF NOT EXISTS payers (
    payer_id    text        PRIMARY KEY,
    caller_id   text        NOT NULL,
    cap_key     text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- A challenge lives at most RISK_CHALLENGE_LIFETIME_SECONDS from opened_at, and gets at
-- most RISK_MAX_RESENDS new codes. phone_hash: keyed hash of the phone its codes go to.
ALTER TABLE challenges ADD COLUMN IF NOT EXISTS opened_at timestamptz;
UPDATE challenges SET opened_at = created_at WHERE opened_at IS NULL;
ALTER TABLE challenges ALTER COLUMN opened_at SET NOT NULL;
ALTER TABLE challenges ADD COLUMN IF NOT EXISTS resends int NOT NULL DEFAULT 0;
ALTER TABLE challenges ADD COLUMN IF NOT EXISTS phone_hash text;

-- Every SMS code sent, per phone (keyed hash; never the number): at most
-- RISK_PHONE_CODES_PER_HOUR in any hour, across payments.
CREATE TABLE IF NOT EXISTS phone_codes (
    phone_hash  text        NOT NULL,
    sent_at     timestamptz NOT NULL,
    payment_id  text        NOT NULL
);
CREATE INDEX IF NOT EXISTS phone_codes_recent ON phone_codes (phone_hash, sent_at);
