"""HTTP edge of notify: health and a read of what was sent for a payment (never the text)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import asyncpg
from fastapi import FastAPI, Header, Query
from pydantic import BaseModel

from services.notify import store
from services.notify.domain import Kind, State
from shared.http import CallerKeys, add_healthz, install_error_handlers, install_request_logging


class NotificationPublic(BaseModel):
    id: uuid.UUID
    kind: Kind
    state: State
    phone: str  # masked
    attempts: int
    sent_at: datetime | None


def create_app(pool: asyncpg.Pool, caller_keys: CallerKeys) -> FastAPI:
    app = FastAPI(title="Yibao notify", docs_url=None, redoc_url=None)
    install_error_handlers(app)
    install_request_logging(app)

    async def db_ready() -> None:
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")

    add_healthz(app, db_ready)

    @app.get("/v1/notifications", response_model=list[NotificationPublic])
    async def list_notifications(
        payment_id: Annotated[str, Query(min_length=1, max_length=200)],
        authorization: Annotated[str | None, Header()] = None,
    ) -> list[NotificationPublic]:
        caller_keys.caller_of(authorization)
        async with pool.acquire() as conn:
            rows = await store.list_for_payment(conn, payment_id)
        return [
            NotificationPublic(
                id=r.id,
                kind=r.kind,
                state=r.state,
                phone=r.phone_masked,
                attempts=r.attempts,
                sent_at=r.sent_at,
            )
            for r in rows
        ]

    return app
