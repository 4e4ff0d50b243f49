"""Yibao\x27s four services: payment, risk, ledger, notify."""
