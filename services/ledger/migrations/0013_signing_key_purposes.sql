-- One signing key per purpose (issue 11): each key published by
-- GET /v1/receipts/public-keys names what it signs: receipts, journal (entries and
-- checkpoints), settlement (files), manifests, certificates, or all (the undivided root
-- key that signed every artefact before this migration: every row written until now).
ALTER TABLE receipt_signing_keys ADD COLUMN purpose text NOT NULL DEFAULT 'all';
ALTER TABLE receipt_signing_keys ALTER COLUMN purpose DROP DEFAULT;

-- Whether the undivided key still signs a journal entry in force: asked per key.
CREATE INDEX journal_by_key ON journal ((entry ->> 'key_id'));
