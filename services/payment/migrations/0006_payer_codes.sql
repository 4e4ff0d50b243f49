-- Payer codes (issues 11 and 12): SMS one-time codes that confirm a step on an enrolled
-- payer: a new phone (phone_change), a relative's consent to a family binding
-- (family_binding), a records session (records_session). Only the code's keyed hash is
-- kept, bound to the code id, the payer, the purpose and the subject (what it confirms:
-- the keyed hash of the new phone, the relative's payer id, or the payer itself).
-- The phone the code went to is kept sealed (AAD phone:<code_id>) and as a keyed hash
-- (phone_hash) to count the codes a phone gets in an hour.
CREATE TABLE IF NOT EXISTS payer_codes (
    code_id      text        PRIMARY KEY,
    payer_id     text        NOT NULL REFERENCES payers (payer_id),
    caller       text        NOT NULL,
    purpose      text        NOT NULL
                             CHECK (purpose IN ('phone_change', 'family_binding', 'records_session')),
    subject      text        NOT NULL,
    code_hash    text        NOT NULL,
    phone_hash   text        NOT NULL,
    phone_masked text        NOT NULL,
    phone_sealed text        NOT NULL,
    expires_at   timestamptz NOT NULL,
    attempts     integer     NOT NULL DEFAULT 0,
    state        text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'used', 'dead')),
    dead_reason  text        CHECK (dead_reason IN ('exhausted', 'superseded')),
    sent_at      timestamptz NOT NULL,
    used_at      timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS payer_codes_by_phone ON payer_codes (phone_hash, sent_at);
CREATE INDEX IF NOT EXISTS payer_codes_by_step ON payer_codes (payer_id, purpose, subject, sent_at);

-- Family accounts (家庭共济, issue 12): a payer's close relatives, each an enrolled payer
-- of the same caller with a known person (ID hash). Bound once the relative confirmed
-- with the code sent to its enrolled phone; unbinding keeps the row (status unbound).
-- A medical_account payment for someone other than the payer needs a bound relative
-- whose ID hash is the beneficiary's.
CREATE TABLE IF NOT EXISTS payer_relatives (
    payer_id          text        NOT NULL REFERENCES payers (payer_id),
    relative_payer_id text        NOT NULL REFERENCES payers (payer_id),
    relation          text        NOT NULL,
    relative_id_hash  text        NOT NULL,
    status            text        NOT NULL CHECK (status IN ('pending', 'bound', 'unbound')),
    code_id           text        NOT NULL REFERENCES payer_codes (code_id),
    requested_at      timestamptz NOT NULL,
    bound_at          timestamptz,
    unbound_at        timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (payer_id, relative_payer_id)
);
CREATE INDEX IF NOT EXISTS payer_relatives_bound
    ON payer_relatives (payer_id, relative_id_hash) WHERE status = 'bound';
