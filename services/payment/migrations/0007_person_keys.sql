-- Erasure by crypto-shredding (issue 11): one random data key per person (the keyed
-- hash of the ID number), sealed under the system seal key. New events carry the
-- person's name and masked ID number sealed under it; erasure sets key_sealed to NULL
-- (the key is gone) and erased_at. A person erased and seen again gets a new key.
CREATE TABLE IF NOT EXISTS person_keys (
    key_id text PRIMARY KEY,
    person_hash text NOT NULL,
    key_sealed text,
    created_at timestamptz NOT NULL,
    erased_at timestamptz,
    erasure_id text,
    CHECK ((key_sealed IS NULL) = (erased_at IS NOT NULL))
);
CREATE UNIQUE INDEX IF NOT EXISTS person_keys_live ON person_keys (person_hash)
    WHERE erased_at IS NULL;
CREATE INDEX IF NOT EXISTS person_keys_person ON person_keys (person_hash);

-- What each erasure did, answered again when it is asked again (idempotent).
CREATE TABLE IF NOT EXISTS erasures (
    erasure_id text PRIMARY KEY,
    person_hash text NOT NULL,
    answer jsonb NOT NULL,
    erased_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS erasures_person ON erasures (person_hash, erased_at);
