-- Erasure by crypto-shredding (issue 11): the ledger's copy of the person keys it needs
-- to show receipt faces (names sealed per person), from the compacted person-keys.v1
-- topic, each still sealed under the system seal key. PersonKeyErased deletes the row.
-- Not a projection of the journal: a rebuild leaves it alone.
CREATE TABLE IF NOT EXISTS person_keys (
    key_id     text PRIMARY KEY,
    key_sealed text NOT NULL
);
