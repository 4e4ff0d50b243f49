-- risk: the payer-day cap ledger, its reservations and the SMS step-up challenges.
-- No clear SMS code and no phone number is stored anywhere: codes as keyed hashes only.

-- One row per payer and Asia/Shanghai day; every change locks it FOR UPDATE, which
-- serialises one payer's decisions across instances.
CREATE TABLE payer_day_usage (
    payer_id        text        NOT NULL,
    day             date        NOT NULL,
    kept            bigint      NOT NULL DEFAULT 0 CHECK (kept >= 0),
    reserved        bigint      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    wallet_kept     bigint      NOT NULL DEFAULT 0 CHECK (wallet_kept >= 0),
    wallet_reserved bigint      NOT NULL DEFAULT 0 CHECK (wallet_reserved >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (payer_id, day)
);

-- One row per decided payment (also the decided-once record for PaymentRequested).
-- declined: risk said no and never reserved anything.
CREATE TABLE reservations (
    payment_id   text        PRIMARY KEY,
    payer_id     text        NOT NULL,
    day          date        NOT NULL,
    amount       bigint      NOT NULL CHECK (amount > 0),
    method       text        NOT NULL CHECK (method IN ('wallet', 'bank_card', 'medical_account')),
    state        text        NOT NULL CHECK (state IN ('reserved', 'kept', 'released', 'declined')),
    decision     text        NOT NULL CHECK (decision IN ('approve', 'decline', 'step_up')),
    decline_code text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reservations_payer_day ON reservations (payer_id, day);

CREATE TABLE challenges (
    challenge_id text        PRIMARY KEY,
    payment_id   text        NOT NULL UNIQUE REFERENCES reservations (payment_id),
    payer_id     text        NOT NULL,
    code_hash    text        NOT NULL,
    amount       bigint      NOT NULL CHECK (amount > 0),
    payee_id     text        NOT NULL,
    payee_name   text        NOT NULL,
    -- AES-GCM sealed phone from PaymentRequested (AAD phone:<payment_id>), for resends
    payer_phone_sealed text  NOT NULL,
    expires_at   timestamptz NOT NULL,
    attempts     int         NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    state        text        NOT NULL CHECK (state IN ('pending', 'passed', 'dead')),
    decline_code text,
    last_sent_at timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX challenges_pending_expiry ON challenges (expires_at) WHERE state = 'pending';
