-- The notify service's runtime role (yibao_notify_app; :"role" below), applied by
-- shared.db.ensure_app_role after the migrations, each start: it first revokes
-- everything the role held on this schema's tables and sequences, then grants this.
-- The role also gets CONNECT on the database and USAGE on schema public; it owns
-- nothing. By hand: psql -v role=yibao_notify_app -f grants.sql <notify database>

-- Notifications are written once, then claimed and marked by the sender; payment
-- owners are recorded once. Nothing here is deleted.
GRANT SELECT, INSERT, UPDATE ON notifications TO :"role";
GRANT SELECT, INSERT ON payment_owners TO :"role";

-- Person keys (issue 11): copied from person-keys.v1, deleted on erasure, whose erased
-- ids are remembered.
GRANT SELECT, INSERT, DELETE ON person_keys TO :"role";
GRANT SELECT, INSERT ON person_keys_erased TO :"role";

-- The shared outbox (written with the state, marked sent and purged by the relay)
-- and inbox (applied event ids).
GRANT SELECT, INSERT, UPDATE, DELETE ON outbox TO :"role";
GRANT USAGE ON SEQUENCE outbox_id_seq TO :"role";
GRANT SELECT, INSERT ON inbox TO :"role";
