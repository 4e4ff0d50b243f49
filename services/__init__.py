"""Yibao's four services: payment, risk, ledger, notify."""
