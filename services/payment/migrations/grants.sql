-- The payment service's runtime role (yibao_payment_app; :"role" below), applied by
-- shared.db.ensure_app_role after the migrations, each start: it first revokes
-- everything the role held on this schema's tables and sequences, then grants this.
-- The role also gets CONNECT on the database and USAGE on schema public; it owns
-- nothing. By hand: psql -v role=yibao_payment_app -f grants.sql <payment database>

-- Payments, refunds and the bank calls move through their states; payers are enrolled
-- and updated; allocations are recorded once. None of them is ever deleted.
GRANT SELECT, INSERT, UPDATE ON payments, refunds, bank_calls, payers TO :"role";
GRANT SELECT, INSERT ON allocations TO :"role";

-- Payer codes move pending -> used or dead; family bindings pending -> bound ->
-- unbound (and again). Neither is ever deleted.
GRANT SELECT, INSERT, UPDATE ON payer_codes, payer_relatives TO :"role";
-- Person keys (issue 11): created, then destroyed in place by erasure (key_sealed set
-- to NULL), never deleted, so an erasure is remembered; erasures are recorded once.
GRANT SELECT, INSERT, UPDATE ON person_keys TO :"role";
GRANT SELECT, INSERT ON erasures TO :"role";

-- Idempotency keys: claimed, answered, released on failure and purged when expired.
GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_keys TO :"role";

-- The shared outbox (written with the state, marked sent and purged by the relay)
-- and inbox (applied event ids).
GRANT SELECT, INSERT, UPDATE, DELETE ON outbox TO :"role";
GRANT USAGE ON SEQUENCE outbox_id_seq TO :"role";
GRANT SELECT, INSERT ON inbox TO :"role";

-- Webhooks (issue 14): endpoints are created, rotated, disabled and marked deleted;
-- events are written once (and scrubbed in place by an erasure); deliveries move
-- pending -> succeeded. None is ever deleted.
GRANT SELECT, INSERT, UPDATE ON webhook_endpoints, webhook_deliveries, webhook_events TO :"role";
GRANT USAGE ON SEQUENCE webhook_events_seq_seq TO :"role";
