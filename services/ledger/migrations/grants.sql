-- The ledger's runtime role (yibao_ledger_app; :"role" below), applied by
-- shared.db.ensure_app_role after the migrations, each start: it first revokes
-- everything the role held on this schema's tables and sequences, then grants this.
-- The role also gets CONNECT on the database and USAGE on schema public; it owns
-- nothing, so it cannot ALTER, DROP or disable a trigger on any table.
-- By hand: psql -v role=yibao_ledger_app -f grants.sql <ledger database>

-- The journal is append-only: read and append, never UPDATE, DELETE or TRUNCATE (its
-- trigger refuses them too, and only the owner could disable it).
GRANT SELECT, INSERT ON journal TO :"role";

-- Projections, as the projector keeps them. Rebuilding them (yibao-audit rebuild,
-- TRUNCATE) is an operator's action with the privileged DSN, not the service's.
GRANT SELECT, UPDATE ON ledger_head TO :"role";
GRANT SELECT, INSERT, UPDATE ON balances TO :"role";
GRANT SELECT, INSERT ON receipts, statement_lines TO :"role";

-- Operational state.
GRANT SELECT, INSERT ON rejections TO :"role";
GRANT SELECT, INSERT, UPDATE ON receipt_checks TO :"role";
GRANT SELECT, INSERT, UPDATE, DELETE ON receipt_rate_buckets TO :"role";
GRANT SELECT, INSERT ON receipt_signing_keys TO :"role";
-- Person keys (issue 11): copied from person-keys.v1, deleted on erasure.
GRANT SELECT, INSERT, DELETE ON person_keys TO :"role";
GRANT SELECT, INSERT ON clearing_days, reconciliations TO :"role";
GRANT SELECT, INSERT, UPDATE ON payer_owners TO :"role";
GRANT SELECT, INSERT, UPDATE ON certificates TO :"role";
GRANT USAGE ON SEQUENCE certificate_numbers TO :"role";
GRANT SELECT, INSERT, UPDATE ON settlement_transfers TO :"role";

-- The shared outbox (written with the state, marked sent and purged by the relay)
-- and inbox (applied event ids).
GRANT SELECT, INSERT, UPDATE, DELETE ON outbox TO :"role";
GRANT USAGE ON SEQUENCE outbox_id_seq TO :"role";
GRANT SELECT, INSERT ON inbox TO :"role";
