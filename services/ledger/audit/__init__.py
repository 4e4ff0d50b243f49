"""``yibao-audit``: replay the journal and check it by the audit rules, export it, rebuild
the projections. Imports ``domain/``, never ``receipts/``."""
