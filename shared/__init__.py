"""Plumbing every Yibao service shares: contracts, Kafka, outbox, inbox, settings, logging."""
