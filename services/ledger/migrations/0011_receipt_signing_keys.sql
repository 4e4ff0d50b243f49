-- Receipt key rotation (issue 11): every public key that has signed receipts, so that
-- GET /v1/receipts/public-keys can serve each key a receipt still in force needs after
-- the signing key changes. Written when a ledger instance starts serving receipts.
CREATE TABLE receipt_signing_keys (
    key_id      text        PRIMARY KEY,
    algorithm   text        NOT NULL,
    public_key  text        NOT NULL,  -- base64 of the raw public key
    first_seen  timestamptz NOT NULL DEFAULT now()
);

-- Which keys still sign a receipt in force: asked per key, so by index.
CREATE INDEX receipts_by_key ON receipts (key_id);
