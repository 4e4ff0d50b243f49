"""The development webhook receiver: plays a caller's endpoints (issue 14).

    python -m services.devhooks      # 127.0.0.1:$WEBHOOK_RECEIVER_PORT (default 8011)

Each endpoint is a name: register ``$WEBHOOK_RECEIVER_URL/hooks/<name>`` with the
payment service. It keeps, in memory, every request it gets (``GET /messages?name=``:
arrival order, answered or refused), and

* verifies the Standard Webhooks signature once told the secret(s)
  (``PUT /hooks/<name>/secrets {"secrets": ["whsec_…"]}``): a bad signature, or a
  ``webhook-timestamp`` further than ``WEBHOOK_RECEIVER_TOLERANCE_SECONDS`` (300)
  from now (a replay), is answered 400 and kept with ``verified: false``;
* fails on demand (``POST /hooks/<name>/failures {"next": N, "seconds": S,
  "status": 503}``): the next N requests, or every request for S seconds, are
  answered ``status`` (kept as ``refused``), to show retries.

Verification is the ``standardwebhooks`` package's. It refuses to start in production.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any, Literal

import structlog
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from shared.http import add_healthz, install_error_handlers

log = structlog.get_logger(__name__)


class ReceiverSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WEBHOOK_RECEIVER_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8011
    tolerance_seconds: float = Field(300.0, gt=0, description="webhook-timestamp vs now")


class SecretsSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    secrets: list[str] = Field(min_length=1, max_length=4)


class FailuresSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    next: int = Field(0, ge=0, description="fail the next N requests")
    seconds: float = Field(0.0, ge=0, description="fail every request for S seconds")
    status: int = Field(503, ge=400, le=599)


class Received(BaseModel):
    seq: int
    name: str
    webhook_id: str | None
    webhook_timestamp: str | None
    webhook_signature: str | None
    body: str = Field(description="the raw body, as received")
    payload: Any = Field(None, description="the body parsed, when it is JSON")
    outcome: Literal["accepted", "refused", "rejected"] = Field(
        description="accepted (2xx), refused (told to fail), rejected (failed verification)"
    )
    verified: bool | None = Field(description="null: no secret set for this name")
    error: str | None
    answered: int
    received_at: str


class _Failing:
    def __init__(self) -> None:
        self.next = 0
        self.until = 0.0
        self.status = 503

    def fails_now(self) -> bool:
        if self.next > 0:
            self.next -= 1
            return True
        return time.monotonic() < self.until


class Receiver:
    def __init__(self, tolerance_seconds: float) -> None:
        self.tolerance = tolerance_seconds
        self.messages: list[Received] = []
        self.secrets: dict[str, list[str]] = {}
        self.failing: dict[str, _Failing] = {}

    def verify(self, name: str, body: str, headers: dict[str, str]) -> str | None:
        """Why the request fails verification, or None."""
        stamp = headers.get("webhook-timestamp", "")
        try:
            age = abs(time.time() - float(stamp))
        except ValueError:
            return "no valid webhook-timestamp"
        if age > self.tolerance:
            return f"webhook-timestamp is {age:.0f} s from now (a replay?)"
        for secret in self.secrets[name]:
            try:
                Webhook(secret).verify(body, headers, json_parse=False)
            except WebhookVerificationError:
                continue
            return None
        return "no matching signature"

    def receive(self, name: str, body: str, headers: dict[str, str]) -> Received:
        failing = self.failing.get(name)
        outcome: Literal["accepted", "refused", "rejected"] = "accepted"
        verified: bool | None = None
        error: str | None = None
        answered = 200
        if failing is not None and failing.fails_now():
            outcome, answered, error = "refused", failing.status, "told to fail"
        elif name in self.secrets:
            error = self.verify(name, body, headers)
            verified = error is None
            if error is not None:
                outcome, answered = "rejected", 400
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        message = Received(
            seq=len(self.messages) + 1,
            name=name,
            webhook_id=headers.get("webhook-id"),
            webhook_timestamp=headers.get("webhook-timestamp"),
            webhook_signature=headers.get("webhook-signature"),
            body=body,
            payload=payload,
            outcome=outcome,
            verified=verified,
            error=error,
            answered=answered,
            received_at=datetime.now(UTC).isoformat(),
        )
        self.messages.append(message)
        log.info("webhook_received", name=name, outcome=outcome, webhook_id=message.webhook_id)
        return message


router = APIRouter()


def _receiver(request: Request) -> Receiver:
    receiver: Receiver = request.app.state.receiver
    return receiver


@router.post("/hooks/{name}", summary="A webhook delivery")
async def receive(name: str, request: Request) -> JSONResponse:
    body = (await request.body()).decode(errors="replace")
    headers = {k.lower(): v for k, v in request.headers.items()}
    message = _receiver(request).receive(name, body, headers)
    return JSONResponse(
        {"outcome": message.outcome, "error": message.error}, status_code=message.answered
    )


@router.put("/hooks/{name}/secrets", summary="Verify this name's deliveries with these")
async def set_secrets(name: str, body: SecretsSet, request: Request) -> dict[str, int]:
    _receiver(request).secrets[name] = list(body.secrets)
    return {"secrets": len(body.secrets)}


@router.post("/hooks/{name}/failures", summary="Fail the next N requests or for S seconds")
async def set_failures(name: str, body: FailuresSet, request: Request) -> dict[str, Any]:
    failing = _receiver(request).failing.setdefault(name, _Failing())
    failing.next = body.next
    failing.until = time.monotonic() + body.seconds
    failing.status = body.status
    return body.model_dump()


@router.get("/messages", response_model=list[Received], summary="What arrived, in order")
async def messages(
    request: Request, name: str | None = Query(None, description="one name's")
) -> list[Received]:
    return [m for m in _receiver(request).messages if name is None or m.name == name]


def create_app(settings: ReceiverSettings | None = None) -> FastAPI:
    settings = settings or ReceiverSettings()
    app = FastAPI(title="Yibao development webhook receiver", version="1")
    install_error_handlers(app)
    app.state.receiver = Receiver(settings.tolerance_seconds)
    add_healthz(app)
    app.include_router(router)
    return app
