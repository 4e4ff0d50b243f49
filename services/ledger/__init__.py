"""Ledger: the double-entry journal, balances and e-receipts."""
