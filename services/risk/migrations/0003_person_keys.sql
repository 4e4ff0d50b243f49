-- Erasure of the phone (issue 11): risk's copy of the person keys that seal residents'
-- phones on events, from the compacted person-keys.v1 topic, each still sealed under
-- the system seal key (shared/person_keys.py). PersonKeyErased deletes the copy and
-- remembers the key id: a phone under an erased key is told apart from one whose key
-- is still on its way.
CREATE TABLE IF NOT EXISTS person_keys (
    key_id     text PRIMARY KEY,
    key_sealed text NOT NULL
);

CREATE TABLE IF NOT EXISTS person_keys_erased (
    key_id    text        PRIMARY KEY,
    erased_at timestamptz NOT NULL
);
