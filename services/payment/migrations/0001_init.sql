-- Payments: one row per payment, its state and what the API shows. No clear phone or
-- ID number: the phone is masked + sealed (AES-GCM, AAD phone:<id>), the ID number is
-- masked + a keyed hash inside beneficiary.
CREATE TABLE IF NOT EXISTS payments (
    id                      text        PRIMARY KEY,
    caller                  text        NOT NULL,
    payer_id                text        NOT NULL,
    status                  text        NOT NULL CHECK (status IN ('requested',
                                'requires_verification', 'authorized', 'succeeded',
                                'declined', 'failed')),
    amount                  bigint      NOT NULL CHECK (amount > 0),
    currency                text        NOT NULL DEFAULT 'CNY' CHECK (currency = 'CNY'),
    method                  text        NOT NULL,
    purpose                 jsonb       NOT NULL,
    beneficiary             jsonb       NOT NULL,
    payer_phone_masked      text        NOT NULL,
    payer_phone_sealed      text        NOT NULL,
    payee_id                text        NOT NULL,
    payee_name              text        NOT NULL,
    decline_code            text,
    decline_message         text,
    challenge_id            text,
    verification_expires_at timestamptz,
    stepped_up              boolean     NOT NULL DEFAULT false,
    receipt                 jsonb,
    journal_seq             bigint,
    requested_at            timestamptz NOT NULL,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS payments_by_payer ON payments (payer_id, created_at DESC);

-- Idempotency keys, per caller. A request first claims its key (in_flight) in a short
-- transaction; the payment and the stored answer commit together (done). Kept for at
-- least 24 hours (expires_at), then purged.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    caller          text        NOT NULL,
    idem_key        text        NOT NULL,
    request_hash    text        NOT NULL,
    state           text        NOT NULL CHECK (state IN ('in_flight', 'done')),
    owner           uuid        NOT NULL,
    payment_id      text,
    response_status int,
    response_body   jsonb,
    locked_at       timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (caller, idem_key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_expiry ON idempotency_keys (expires_at);
