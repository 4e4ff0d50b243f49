"""The development bank gateway: the acquiring bank and settlement transfers, locally.

``python -m services.devbank`` (see ``--help``); DESIGN.md "Contract additions: money
from outside". Development and tests only: it refuses to start in production.
"""
