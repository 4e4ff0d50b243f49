"""The development SMS gateway: plays the resident's handset (DESIGN.md "Contract: SMS gateway").

    python -m services.notify.gateway      # 127.0.0.1:$SMS_GATEWAY_PORT (default 8009)

``POST /sms {"phone", "text", "message_id"}`` stores a message once per message_id
(a repeat answers ``"status": "duplicate"``, as real providers dedupe client ids);
``GET /messages?phone=`` lists them in arrival order. Kept in memory and, when
``SMS_GATEWAY_STORE`` names a file, appended to it as JSON Lines and reloaded at start.
``SMS_GATEWAY_FAIL_FIRST=N`` answers 503 to the first N POSTs, to prove senders retry.

This is the one place a clear phone and SMS text legitimately exist. It never logs the
text, and it refuses to start outside development.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

import structlog
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from services.notify.config import SmsGatewaySettings
from shared.http import add_healthz, error_response, install_error_handlers
from shared.logging import configure_logging
from shared.masking import MOBILE_PATTERN, mask_phone

log = structlog.get_logger(__name__)


class SmsCreate(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    phone: str = Field(pattern=MOBILE_PATTERN, description="mainland mobile, 11 digits")
    text: str = Field(min_length=1, max_length=1000)
    message_id: str = Field(min_length=1, max_length=200)


class SmsAccepted(BaseModel):
    message_id: str
    status: Literal["accepted", "duplicate"]


class SmsPublic(BaseModel):
    phone: str
    text: str
    message_id: str
    received_at: str  # RFC 3339 UTC


class MessageBox:
    """Messages in arrival order, one per message_id, optionally mirrored to a file."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._messages: list[SmsPublic] = []
        self._ids: set[str] = set()
        if path is not None and path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    self._remember(SmsPublic.model_validate_json(line))

    def _remember(self, message: SmsPublic) -> bool:
        if message.message_id in self._ids:
            return False
        self._ids.add(message.message_id)
        self._messages.append(message)
        return True

    def add(self, sms: SmsCreate) -> bool:
        """Store ``sms``; False when its message_id was stored before."""
        received_at = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        message = SmsPublic(
            phone=sms.phone, text=sms.text, message_id=sms.message_id, received_at=received_at
        )
        if not self._remember(message):
            return False
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with self._path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(message.model_dump(), ensure_ascii=False) + "\n")
        return True

    def list(self, phone: str | None = None) -> list[SmsPublic]:
        return [m for m in self._messages if phone is None or m.phone == phone]


class FailureInjection:
    """Answers 503 to the first ``count`` POSTs (``SMS_GATEWAY_FAIL_FIRST``)."""

    def __init__(self, count: int = 0) -> None:
        self.left = count

    def take(self) -> bool:
        """True when this POST must fail."""
        if self.left <= 0:
            return False
        self.left -= 1
        return True


def _box(request: Request) -> MessageBox:
    box: MessageBox = request.app.state.box
    return box


def _failures(request: Request) -> FailureInjection:
    failures: FailureInjection = request.app.state.failures
    return failures


BoxDep = Annotated[MessageBox, Depends(_box)]
FailuresDep = Annotated[FailureInjection, Depends(_failures)]
router = APIRouter()


@router.post("/sms", response_model=SmsAccepted)
async def send_sms(
    sms: SmsCreate, box: BoxDep, failures: FailuresDep
) -> SmsAccepted | JSONResponse:
    if failures.take():
        log.info("sms_failure_injected", message_id=sms.message_id, left=failures.left)
        return error_response(
            503, "unavailable", "gateway failure injected for testing; retry later"
        )
    stored = box.add(sms)
    log.info(
        "sms_received" if stored else "sms_duplicate",
        message_id=sms.message_id,
        phone=mask_phone(sms.phone),
    )
    return SmsAccepted(message_id=sms.message_id, status="accepted" if stored else "duplicate")


@router.get("/messages", response_model=list[SmsPublic])
async def list_messages(
    box: BoxDep, phone: Annotated[str | None, Query(pattern=MOBILE_PATTERN)] = None
) -> list[SmsPublic]:
    return box.list(phone)


def create_app(store: Path | None = None, fail_first: int = 0) -> FastAPI:
    app = FastAPI(title="Yibao development SMS gateway", docs_url=None, redoc_url=None)
    app.state.box = MessageBox(store)
    app.state.failures = FailureInjection(fail_first)
    install_error_handlers(app)
    add_healthz(app)
    app.include_router(router)
    return app


async def main() -> None:
    settings = SmsGatewaySettings()
    configure_logging("sms-gateway", level=settings.log_level)
    if settings.environment == "production":
        log.error("sms_gateway_refused", reason="the development gateway never runs in production")
        sys.exit(2)
    app = create_app(settings.store, settings.fail_first)
    log.info(
        "sms_gateway_starting", host=settings.host, port=settings.port, store=str(settings.store)
    )
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False
    )
    await uvicorn.Server(config).serve()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.notify.gateway",
        description="The development SMS gateway: stores each SMS notify sends and lists"
        " them at GET /messages?phone= (default port 8009; never in production)."
        " Configured by environment variables: SMS_GATEWAY_HOST, SMS_GATEWAY_PORT,"
        " SMS_GATEWAY_STORE (a file that keeps the messages), SMS_GATEWAY_FAIL_FIRST.",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    parse_args()
    asyncio.run(main())
