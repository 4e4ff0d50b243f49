"""HTTP edge of notify: health and a read of what was sent for a payment (never the text).

No ``from __future__ import annotations``: FastAPI resolves the route signatures at
runtime.
"""

from typing import Annotated

import asyncpg
from fastapi import APIRouter, FastAPI, Query

from services.notify import notices
from services.notify.config import NotifySettings
from services.notify.deps import CallerDep, PoolDep
from services.notify.schemas import NotificationPublic
from shared.http import (
    CallerKeys,
    add_healthz,
    document_api,
    install_error_handlers,
    install_request_logging,
)
from shared.metrics import add_metrics, counts_by, outbox_backlog

router = APIRouter(prefix="/v1")
_ERROR = {"description": 'error object: {"error": {"code", "message", "param"}}'}


@router.get(
    "/notifications",
    response_model=list[NotificationPublic],
    responses={401: _ERROR, 403: _ERROR, 404: _ERROR},
)
async def list_notifications(
    payment_id: Annotated[str, Query(min_length=1, max_length=200)],
    caller: CallerDep,
    pool: PoolDep,
) -> list[NotificationPublic]:
    return await notices.list_for_caller(pool, caller, payment_id)


def create_app(settings: NotifySettings, pool: asyncpg.Pool) -> FastAPI:
    """The app: state for the dependencies, shared error handling and logs, the routes."""
    app = FastAPI(title="Yibao notify", version="1", docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.pool = pool
    app.state.caller_keys = CallerKeys.from_settings(settings)
    install_error_handlers(app)
    install_request_logging(app)

    async def db_ready() -> None:
        await pool.fetchval("SELECT 1")

    add_healthz(app, db_ready)
    app.include_router(router)
    notices_by_state = counts_by(
        pool,
        "yibao_notifications",
        "SELECT kind, state, count(*) AS n FROM notifications GROUP BY 1, 2",
    )
    add_metrics(
        app, "notify", samplers=[("outbox", outbox_backlog(pool)), ("sms", notices_by_state)]
    )
    document_api(app)
    return app
