"""Settlement (issue 10): closing clearing days, transfers to the bureaus, settlement
files, reconciliation with the bank, journal checkpoints. Imports ``domain/``, never
``receipts/`` or ``audit/``."""
