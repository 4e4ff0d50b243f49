"""Composition root: ``python -m services.ledger`` (``--help`` for usage).

Builds the settings, pool, signing keys (one per purpose, recorded in
``receipt_signing_keys`` at start-up, so ``/v1/receipts/public-keys`` still serves them
after a rotation), handlers, consumer,
outbox relay and app, and hands them to ``shared.runtime.serve``; nothing connects at
import.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from services.ledger.api import create_app
from services.ledger.config import LedgerSettings
from services.ledger.handlers import PostingSetup, build_handlers
from services.ledger.receipts.service import register_signers
from services.ledger.settlement.transfers import BankTransfers, ClearingScheduler, TransferSender
from shared import fastloop
from shared.consumer import InboxConsumer
from shared.outbox import OutboxRelay
from shared.runtime import prepare_service, serve

MIGRATIONS = Path(__file__).parent / "migrations"

USAGE = """\
The Yibao ledger: books authorized payments, allocations and refunds from payments.v1
into the hash-chained, signed journal (ledger.v1), issues signed e-receipts, closes
clearing days at their cut-off and transfers each bureau's net through the bank, and
serves balances, statements, receipts, 查验, settlement days and files, bank
reconciliation and journal checkpoints over HTTP (default port 8002).

Configured from the environment (LEDGER_* and the shared YIBAO_* names; see the
docs/operators.md, Configuration), e.g. KAFKA_BOOTSTRAP, DATABASE_URL,
YIBAO_RECEIPT_SIGNING_KEY, YIBAO_HASH_KEY, LEDGER_VERIFY_RATE_PER_MINUTE,
LEDGER_TRUSTED_PROXIES (CIDRs whose X-Forwarded-For is believed; default none),
LEDGER_CLEARING_CUTOFF (23:00), LEDGER_SETTLEMENT_BANK (devbank), BANK_GATEWAY_URL.
"""


async def main() -> None:
    settings = LedgerSettings.load_or_exit()
    pool = await prepare_service(settings, MIGRATIONS)
    signers = settings.signers()
    await register_signers(pool, signers, undivided=settings.undivided_signer())
    setup = PostingSetup(
        ledger_topic=settings.topics.ledger,
        keys=settings.posting_keys(signers),
        policy=settings.receipt_policy(),
        cutoff=settings.cutoff_time(),
    )
    settlement = settings.settlement_setup(signers)
    bank = BankTransfers(settings.bank_gateway_url, settings.transfer_timeout_seconds)
    sender = TransferSender(
        pool,
        settlement,
        bank,
        lease_seconds=settings.transfer_lease_seconds,
        retry_base_seconds=settings.transfer_retry_base_seconds,
        retry_max_seconds=settings.transfer_retry_max_seconds,
        poll_interval_seconds=settings.transfer_poll_interval_seconds,
    )
    scheduler = ClearingScheduler(pool, settlement, settings.clearing_check_interval_seconds)
    consumer = InboxConsumer(
        name="ledger",
        bootstrap=settings.kafka_bootstrap,
        topics=[settings.topics.payments, settings.topics.person_keys],
        pool=pool,
        handlers=build_handlers(setup),
    )
    relay = OutboxRelay(settings.database_url, settings.kafka_bootstrap)
    app = create_app(settings, pool, signers=signers, settlement=settlement)
    try:
        await serve(
            app,
            host=settings.host,
            port=settings.port,
            workers=[
                ("relay", relay.run),
                ("consumer", consumer.run),
                ("transfers", sender.run),
                ("clearing", scheduler.run),
            ],
        )
    finally:
        await bank.close()
        await pool.close()


def cli() -> None:
    argparse.ArgumentParser(
        prog="python -m services.ledger",
        description=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).parse_args()
    fastloop.run(main())


if __name__ == "__main__":
    cli()
