"""The ledger's pure rules: accounts and lines (with the cash memo ledger), the hash
chain, the posting decisions, receipt rules, the projector, clearing days, settlement
(closing a day, transfers, arrivals), the settlement file and bank reconciliation.
Imports only ``shared`` (and the standard library and pydantic); ``receipts/``,
``audit/`` and ``settlement/`` build on it."""
