-- Issue 14 (callers): webhooks, per Standard Webhooks (https://www.standardwebhooks.com/).
-- A caller's endpoints, with their signing secrets sealed (AES-GCM under YIBAO_SEAL_KEY,
-- AAD whsec:<endpoint id>); after a rotation the previous secret signs too until
-- previous_secret_until. An endpoint failing since failing_since for too long is
-- disabled (status 'disabled', disabled_reason); DELETE marks it deleted.
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id                      text        PRIMARY KEY,
    caller                  text        NOT NULL,
    url                     text        NOT NULL,
    event_types             text[]      NOT NULL,
    secret_sealed           text        NOT NULL,
    previous_secret_sealed  text,
    previous_secret_until   timestamptz,
    status                  text        NOT NULL DEFAULT 'enabled'
                                        CHECK (status IN ('enabled', 'disabled', 'deleted')),
    disabled_reason         text,
    failing_since           timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS webhook_endpoints_by_caller ON webhook_endpoints (caller, created_at);

-- Every payment and refund state change a caller can see, written in the transaction
-- of the change (an outbox of our own); seq orders the events of one payment.
CREATE TABLE IF NOT EXISTS webhook_events (
    seq         bigserial   PRIMARY KEY,
    id          text        NOT NULL UNIQUE,
    caller      text        NOT NULL,
    payment_id  text        NOT NULL,
    type        text        NOT NULL,
    body        text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per (event, endpoint) to deliver, made with the event for every enabled
-- endpoint of the caller that wants its type (and again by a manual redelivery).
-- A delivery is tried once every earlier pending delivery of the same payment to the
-- same endpoint has been delivered (in order per payment).
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id                text        PRIMARY KEY,
    endpoint_id       text        NOT NULL REFERENCES webhook_endpoints (id),
    event_seq         bigint      NOT NULL REFERENCES webhook_events (seq),
    payment_id        text        NOT NULL,
    status            text        NOT NULL DEFAULT 'pending'
                                  CHECK (status IN ('pending', 'succeeded')),
    attempts          int         NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    last_attempt_at   timestamptz,
    last_status_code  int,
    last_error        text,
    delivered_at      timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due
    ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_by_payment
    ON webhook_deliveries (endpoint_id, payment_id, event_seq) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_log
    ON webhook_deliveries (endpoint_id, created_at DESC);
