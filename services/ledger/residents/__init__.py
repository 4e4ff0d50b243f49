"""The resident's side of the ledger (issue 12): records, account overview and the
insurance certificate (电子参保凭证), each for the payer's owning caller only."""
