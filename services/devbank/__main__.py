"""Composition root: python -m services.devbank (the development bank gateway)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import structlog
import uvicorn

from services.devbank.api import create_app
from services.devbank.bank import Bank
from services.devbank.config import BankSettings
from services.devbank.controls import Controls
from services.devbank.server import ReopeningServer
from shared import fastloop
from shared.logging import configure_logging
from shared.tracing import instrument_app, setup_tracing, shutdown_tracing

log = structlog.get_logger(__name__)

EPILOG = """\
environment:
  BANK_GATEWAY_PORT     port on 127.0.0.1 (default 8010; BANK_GATEWAY_HOST to change the host)
  BANK_GATEWAY_STORE    the SQLite file of its books (default .run/devbank/bank.sqlite3)
  BANK_GATEWAY_CUTOFF   clearing cut-off, HH:MM Asia/Shanghai (default 23:00)
  YIBAO_ENVIRONMENT     development or test; it refuses to start in production
  YIBAO_LOG_LEVEL, YIBAO_LOG_JSON
  OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_EXPORTER   tracing (off unless set; docs/operators.md)

API: POST /debits, /refunds, /transfers (idempotent by reference), GET
/{debits,refunds,transfers}/{reference}, GET /statements/{YYYY-MM-DD}.csv,
GET|POST /control {"decline_next": N, "delay_ms": M, "unavailable_for_s": S}, GET /healthz.
"""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.devbank",
        description="The development bank gateway: the acquiring bank behind bank-card "
        "payments and the bank of settlement transfers, with its own durable books.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser.parse_args(argv)


async def main() -> None:
    settings = BankSettings()
    configure_logging("bank-gateway", level=settings.log_level, json=settings.log_json)
    if settings.environment == "production":
        log.error("bank_gateway_refused", reason="the development bank never runs in production")
        sys.exit(2)
    setup_tracing("bank-gateway")
    app = create_app(settings)
    instrument_app(app)
    server = ReopeningServer(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            http=fastloop.UVICORN_HTTP,
        )
    )
    controls: Controls = app.state.controls
    controls.listener = server  # what unavailable_for_s closes and reopens
    log.info(
        "bank_gateway_starting",
        host=settings.host,
        port=settings.port,
        store=str(settings.store),
        cutoff=settings.cutoff,
    )
    bank: Bank = app.state.bank
    try:
        await server.serve()
    finally:
        await controls.close()
        bank.close()
        shutdown_tracing()


if __name__ == "__main__":
    parse_args()
    fastloop.run(main())
