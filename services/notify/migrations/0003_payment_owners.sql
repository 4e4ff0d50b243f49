-- Trust (issue 11): the caller that owns each payment (PaymentRequested's
-- payment.caller_id); only it reads the payment's notification list.
CREATE TABLE IF NOT EXISTS payment_owners (
    payment_id  text        PRIMARY KEY,
    caller_id   text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
