-- OpenTelemetry (issue 14): the W3C traceparent of the transaction that staged the
-- event; the relay sends it on as the Kafka header `traceparent`. NULL when tracing
-- is off (and for rows staged before it was on).
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS traceparent text;
