"""The development SMS gateway: plays the resident's handset (DESIGN.md "Contract: SMS gateway").

    python -m services.notify.gateway      # 127.0.0.1:$SMS_GATEWAY_PORT (default 8009)

``POST /sms {"phone", "text", "message_id"}`` stores a message once per message_id
(a repeat answers ``"status": "duplicate"``, as real providers dedupe client ids);
``GET /messages?phone=`` lists them in arrival order. Kept in SQLite, indexed by phone:
in memory, or in the file ``SMS_GATEWAY_STORE`` names (kept across restarts; opening it
takes the same time however many messages it holds; a JSON Lines store of an older
gateway is converted once).
``SMS_GATEWAY_FAIL_FIRST=N`` answers 503 to the first N POSTs, to prove senders retry.

This is the one place a clear phone and SMS text legitimately exist. It never logs the
text, and it refuses to start outside development.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

import structlog
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.notify.config import SmsGatewaySettings
from shared import fastloop
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


_SQLITE_HEADER = b"SQLite format 3\x00"
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS messages ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"  # arrival order
    " message_id TEXT NOT NULL UNIQUE,"
    " phone TEXT NOT NULL,"
    " text TEXT NOT NULL,"
    " received_at TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS messages_by_phone ON messages (phone, seq)",
)


class MessageBox:
    """Messages in arrival order, one per message_id, in SQLite: a file when ``path``
    is given (kept across restarts), else memory.

    Opening costs the same whatever the file holds (nothing is read back at start);
    a phone's messages come from an index, never a scan.
    """

    def __init__(self, path: Path | None = None) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            _adopt_json_lines(path)
        self._db = _open(path)

    def add(self, sms: SmsCreate) -> bool:
        """Store ``sms``; False when its message_id was stored before."""
        received_at = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        cursor = self._db.execute(
            "INSERT INTO messages (message_id, phone, text, received_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (message_id) DO NOTHING",
            (sms.message_id, sms.phone, sms.text, received_at),
        )
        return cursor.rowcount == 1

    def list(self, phone: str | None = None) -> list[SmsPublic]:
        if phone is None:
            rows = self._db.execute(
                "SELECT phone, text, message_id, received_at FROM messages ORDER BY seq"
            )
        else:
            rows = self._db.execute(
                "SELECT phone, text, message_id, received_at FROM messages"
                " WHERE phone = ? ORDER BY seq",
                (phone,),
            )
        return [
            SmsPublic.model_construct(phone=p, text=t, message_id=m, received_at=r)
            for p, t, m, r in rows
        ]

    def ping(self) -> None:
        """Raises once the store is closed (``/readyz``)."""
        self._db.execute("SELECT 1")

    def close(self) -> None:
        self._db.close()


def _open(path: Path | None) -> sqlite3.Connection:
    """The store, its schema ensured; autocommit (each message is its own commit)."""
    db = sqlite3.connect(
        ":memory:" if path is None else str(path), isolation_level=None, check_same_thread=False
    )
    if path is not None:
        db.execute("PRAGMA journal_mode=WAL")  # a crash of the process loses nothing
        db.execute("PRAGMA synchronous=NORMAL")
    for statement in _SCHEMA:
        db.execute(statement)
    return db


def _adopt_json_lines(path: Path) -> None:
    """A store the gateway kept as JSON Lines before SQLite is converted once, in place;
    the old file stays beside it as ``<name>.before-sqlite``."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb") as fh:
        if fh.read(len(_SQLITE_HEADER)) == _SQLITE_HEADER:
            return
    legacy = path.with_name(path.name + ".before-sqlite")
    path.rename(legacy)
    db = _open(path)
    try:
        with legacy.open(encoding="utf-8") as lines, db:
            db.execute("BEGIN")
            for line in lines:
                if line.strip():
                    m = SmsPublic.model_validate_json(line)
                    db.execute(
                        "INSERT INTO messages (message_id, phone, text, received_at)"
                        " VALUES (?, ?, ?, ?) ON CONFLICT (message_id) DO NOTHING",
                        (m.message_id, m.phone, m.text, m.received_at),
                    )
    finally:
        db.close()
    log.info("sms_store_converted", store=str(path), json_lines=str(legacy))


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


BoxDep = Annotated[MessageBox, Depends(_box)]
router = APIRouter()

_MOBILE = re.compile(MOBILE_PATTERN)
_SMS_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": SmsCreate.model_json_schema()}},
    }
}


def _lean_sms(data: object) -> SmsCreate | None:
    """``data`` as an ``SmsCreate`` without running the model, when it is plainly valid
    (strings already stripped, within bounds, a mainland mobile); None for anything
    else, which the model then judges (and names the field at fault).

    Never looser than the model: every value it accepts passes ``SmsCreate`` as is."""
    if not isinstance(data, dict):
        return None
    phone, text, message_id = data.get("phone"), data.get("text"), data.get("message_id")
    if not (isinstance(phone, str) and isinstance(text, str) and isinstance(message_id, str)):
        return None
    if not (0 < len(text) <= 1000 and 0 < len(message_id) <= 200):
        return None
    if text.strip() != text or message_id.strip() != message_id:
        return None
    if _MOBILE.fullmatch(phone) is None:
        return None
    return SmsCreate.model_construct(phone=phone, text=text, message_id=message_id)


def _validated(body: bytes) -> SmsCreate:
    """The request body as an ``SmsCreate``; bad JSON or a bad field raises what
    FastAPI raises for a model body (the 400 error object names the field)."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        pos = exc.pos if isinstance(exc, json.JSONDecodeError) else 0
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", pos),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": str(exc)},
                }
            ]
        ) from None
    sms = _lean_sms(data)
    if sms is not None:
        return sms
    try:
        return SmsCreate.model_validate(data)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        raise RequestValidationError(errors) from None


def _json(status: int, body: dict[str, str]) -> Response:
    return Response(
        json.dumps(body, ensure_ascii=False, separators=(",", ":")),
        status_code=status,
        media_type="application/json",
    )


@router.post("/sms", response_model=SmsAccepted, openapi_extra=_SMS_SCHEMA)
async def send_sms(request: Request) -> Response:
    """Store one SMS (once per message_id). The hot path of every notify load test:
    the body is read and checked by hand (``_lean_sms``), no dependency runs in a
    thread, the answer is written directly, and an accepted message logs at debug
    only (a failure injected or a duplicate at info: each is worth a look)."""
    sms = _validated(await request.body())
    state = request.app.state
    failures: FailureInjection = state.failures
    if failures.take():
        log.info(
            "sms_failure_injected",
            message_id=sms.message_id,
            phone=mask_phone(sms.phone),
            left=failures.left,
        )
        return error_response(
            503, "unavailable", "gateway failure injected for testing; retry later"
        )
    box: MessageBox = state.box
    if box.add(sms):
        log.debug("sms_received", message_id=sms.message_id, phone=mask_phone(sms.phone))
        return _json(200, {"message_id": sms.message_id, "status": "accepted"})
    log.info("sms_duplicate", message_id=sms.message_id, phone=mask_phone(sms.phone))
    return _json(200, {"message_id": sms.message_id, "status": "duplicate"})


@router.get("/messages", response_model=list[SmsPublic])
async def list_messages(
    box: BoxDep, phone: Annotated[str | None, Query(pattern=MOBILE_PATTERN)] = None
) -> list[SmsPublic]:
    return box.list(phone)


def create_app(store: Path | None = None, fail_first: int = 0) -> FastAPI:
    box = MessageBox(store)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        box.close()

    app = FastAPI(
        title="Yibao development SMS gateway", docs_url=None, redoc_url=None, lifespan=lifespan
    )
    app.state.box = box
    app.state.failures = FailureInjection(fail_first)
    install_error_handlers(app)

    async def store_open() -> None:
        box.ping()

    add_healthz(app, checks={"store": store_open})
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
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        http=fastloop.UVICORN_HTTP,
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
    fastloop.run(main())
