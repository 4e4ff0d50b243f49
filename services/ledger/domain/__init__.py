"""The ledger's pure rules: accounts and lines, the hash chain, the posting decisions,
receipt rules and the projector. Imports only ``shared`` (and the standard library and
pydantic); ``receipts/`` and ``audit/`` build on it."""
