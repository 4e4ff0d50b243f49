-- One row per SMS notify owes a resident. The text holds the step-up code or receipt
-- check code, so it is only ever stored sealed (AES-GCM, AAD "sms:<id>"); the phone is
-- kept sealed (AAD "phone:<payment_id>") and masked for display.
CREATE TABLE IF NOT EXISTS notifications (
    id              uuid        PRIMARY KEY,
    kind            text        NOT NULL CHECK (kind IN ('sms_code', 'payment_result', 'receipt')),
    payment_id      text        NOT NULL,
    payer_id        text        NOT NULL,
    source_event_id uuid        NOT NULL,
    phone_masked    text        NOT NULL,
    phone_sealed    text        NOT NULL,
    text_sealed     text        NOT NULL,
    message_id      text        NOT NULL UNIQUE,
    state           text        NOT NULL DEFAULT 'pending'
                                CHECK (state IN ('pending', 'sent', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    sent_at         timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source_event_id, kind)
);

-- A payment has one outcome and at most one receipt: one notice each, even if an
-- upstream ever published the same fact under a second event id.
CREATE UNIQUE INDEX IF NOT EXISTS notifications_once_per_payment
    ON notifications (payment_id, kind) WHERE kind IN ('payment_result', 'receipt');

CREATE INDEX IF NOT EXISTS notifications_due
    ON notifications (next_attempt_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS notifications_by_payment ON notifications (payment_id, created_at);
