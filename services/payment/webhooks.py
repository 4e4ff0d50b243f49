"""Webhooks (issue 14, Standard Webhooks): what a caller's endpoints receive, and how.

* ``record_payment_change`` / ``record_refund_change``: called in the transaction that
  changes a payment's or refund's state (intake, ``payments.apply_command``,
  ``refunds.apply_refund_command``): when what the caller sees changed and an enabled
  endpoint of that caller wants the type, one ``webhook_events`` row (the JSON body,
  fixed now) and one ``webhook_deliveries`` row per such endpoint. Nothing leaves
  from here.
* ``WebhookEndpoints``: the caller's endpoints (create with a secret shown once, list,
  read, delete, rotate the secret, enable again), their delivery log and redelivery.
  Another caller's endpoint is 404.
* ``WebhookWorker``: a ``PollingWorker`` that leases due deliveries (in order per
  payment and endpoint: one waits while an earlier one of its payment is pending),
  POSTs them signed (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``),
  and on failure retries with exponential backoff and jitter; an endpoint failing
  without a single success for ``webhook_disable_after_seconds`` (24 h) is disabled
  (``status: disabled``, ``disabled_reason``, a ``webhook_endpoint_disabled`` warning),
  its deliveries kept pending until it is enabled again.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from datetime import datetime, timedelta
from typing import Any, Literal

import asyncpg
import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.payment import store, webhook_domain
from services.payment.config import PaymentSettings
from services.payment.domain import PublicStatus
from services.payment.refund_domain import RefundPublicStatus
from services.payment.schemas import public_view, refund_view
from services.payment.store import StoredPayment, StoredRefund
from shared.crypto import Sealer
from shared.errors import DomainError, NotFound
from shared.money import utcnow
from shared.outbound import Origins, OutboundError
from shared.runtime import PollingWorker

log = structlog.get_logger(__name__)


def _new_id(prefix: str) -> str:
    """``prefix`` + 120 random bits in base32 (see ``intake.new_payment_id``)."""
    return prefix + base64.b32encode(secrets.token_bytes(15)).decode().lower()


# ---------------------------------------------------------------------------
# Recording state changes (in the caller's transaction)
# ---------------------------------------------------------------------------


def _body(event_type: str, at: datetime, data: BaseModel) -> str:
    return json.dumps(
        {"type": event_type, "timestamp": at.isoformat(), "data": data.model_dump(mode="json")},
        ensure_ascii=False,
        separators=(",", ":"),
    )


Wanting = dict[tuple[str, str], list[str]]  # (caller, event type) → endpoint ids


async def _wanting(
    conn: asyncpg.Connection, caller: str, event_type: str, known: Wanting | None = None
) -> list[str]:
    """The caller's enabled endpoints that want ``event_type``; ``known``: the answers
    already read in this transaction (a run of events asks once per caller and type)."""
    if known is not None and (caller, event_type) in known:
        return known[(caller, event_type)]
    rows = await conn.fetch(
        "SELECT id FROM webhook_endpoints WHERE caller = $1 AND status = 'enabled'"
        " AND ($2 = ANY(event_types) OR '*' = ANY(event_types)) ORDER BY id",
        caller,
        event_type,
    )
    endpoints = [r["id"] for r in rows]
    if known is not None:
        known[(caller, event_type)] = endpoints
    return endpoints


async def _record(
    conn: asyncpg.Connection,
    caller: str,
    payment_id: str,
    event_type: str,
    body: str,
    endpoints: list[str],
) -> None:
    """The event and one delivery per endpoint, in one statement."""
    await conn.execute(
        "WITH ev AS (INSERT INTO webhook_events (id, caller, payment_id, type, body)"
        " VALUES ($1, $2, $3, $4, $5) RETURNING seq)"
        " INSERT INTO webhook_deliveries (id, endpoint_id, event_seq, payment_id)"
        " SELECT d.id, d.endpoint_id, ev.seq, $3"
        " FROM ev, unnest($6::text[], $7::text[]) AS d(id, endpoint_id)",
        _new_id("msg_"),
        caller,
        payment_id,
        event_type,
        body,
        [_new_id("whd_") for _ in endpoints],
        endpoints,
    )


async def record_payment_change(
    conn: asyncpg.Connection,
    before: PublicStatus | None,
    saved: StoredPayment,
    known: Wanting | None = None,
) -> None:
    """The webhook event of ``saved`` having moved from ``before`` (None: created),
    if its public status changed and an endpoint of the caller wants it (an event no
    endpoint wants is not kept: its body would be a copy of the beneficiary for
    nobody, and a payment's transition pays one look instead of four writes)."""
    event_type = webhook_domain.payment_event(before, saved.payment.public_status)
    if event_type is None:
        return
    endpoints = await _wanting(conn, saved.caller, event_type, known)
    if not endpoints:
        return
    totals = await store.refund_totals(conn, saved.payment.id)
    body = _body(event_type, utcnow(), public_view(saved, totals=totals))
    await _record(conn, saved.caller, saved.payment.id, event_type, body, endpoints)


async def record_refund_change(
    conn: asyncpg.Connection, before: RefundPublicStatus, saved: StoredRefund
) -> None:
    """The webhook event of a refund's outcome (succeeded, failed), if an endpoint of
    the caller wants it."""
    event_type = webhook_domain.refund_event(before, saved.refund.public_status)
    if event_type is None:
        return
    endpoints = await _wanting(conn, saved.caller, event_type)
    if not endpoints:
        return
    body = _body(event_type, utcnow(), refund_view(saved))
    await _record(conn, saved.caller, saved.refund.payment_id, event_type, body, endpoints)


async def scrub_events(conn: asyncpg.Connection, payment_ids: list[str], erased: str) -> int:
    """Erasure (issue 11): the beneficiary's name and masked ID number in the webhook
    events of ``payment_ids`` become ``erased``, as on the payments themselves; a
    delivery not yet made sends the scrubbed body. How many events were scrubbed."""
    rows = await conn.fetch(
        "UPDATE webhook_events SET body = jsonb_set(jsonb_set(body::jsonb,"
        " '{data,beneficiary,name}', to_jsonb($2::text)),"
        " '{data,beneficiary,id_number}', to_jsonb($2::text))::text"
        " WHERE payment_id = ANY($1::text[]) AND type LIKE 'payment.%'"
        " AND body::jsonb -> 'data' ? 'beneficiary' RETURNING seq",
        payment_ids,
        erased,
    )
    return len(rows)


# ---------------------------------------------------------------------------
# The API's models
# ---------------------------------------------------------------------------

EventTypeOrAll = webhook_domain.EventType | Literal["*"]
EndpointStatus = Literal["enabled", "disabled", "deleted"]


class WebhookEndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048, examples=["https://shop.example/hooks/yibao"])
    event_types: list[EventTypeOrAll] = Field(
        min_length=1, max_length=len(webhook_domain.EVENT_TYPES) + 1, examples=[["*"]]
    )

    @field_validator("event_types")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class WebhookEndpointPublic(BaseModel):
    id: str = Field(description="we_…")
    url: str
    event_types: list[str]
    status: EndpointStatus
    disabled_reason: str | None
    failing_since: datetime | None = Field(description="failing without a success since")
    created_at: datetime
    secret: str | None = Field(
        None, description="whsec_…: only in the answer that creates or rotates it"
    )
    previous_secret_expires_at: datetime | None = Field(
        None, description="after a rotation: the old secret signs too until then"
    )


class WebhookEndpointListPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[WebhookEndpointPublic]


class WebhookDeliveryPublic(BaseModel):
    id: str = Field(description="whd_…")
    endpoint_id: str
    event_id: str = Field(description="msg_…: the webhook-id header")
    event_type: str
    payment_id: str
    status: Literal["pending", "succeeded"]
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime


class WebhookDeliveryListPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[WebhookDeliveryPublic]
    has_more: bool


def _endpoint_view(row: asyncpg.Record, secret: str | None = None) -> WebhookEndpointPublic:
    until = row["previous_secret_until"]
    return WebhookEndpointPublic(
        id=row["id"],
        url=row["url"],
        event_types=list(row["event_types"]),
        status=row["status"],
        disabled_reason=row["disabled_reason"],
        failing_since=row["failing_since"],
        created_at=row["created_at"],
        secret=secret,
        previous_secret_expires_at=until if until is not None and until > utcnow() else None,
    )


def _delivery_view(row: asyncpg.Record) -> WebhookDeliveryPublic:
    pending = row["status"] == "pending"
    return WebhookDeliveryPublic(
        id=row["id"],
        endpoint_id=row["endpoint_id"],
        event_id=row["event_id"],
        event_type=row["type"],
        payment_id=row["payment_id"],
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"] if pending else None,
        last_attempt_at=row["last_attempt_at"],
        last_status_code=row["last_status_code"],
        last_error=row["last_error"],
        delivered_at=row["delivered_at"],
        created_at=row["created_at"],
    )


def _secret_aad(endpoint_id: str) -> str:
    return f"whsec:{endpoint_id}"


def _not_found(endpoint_id: str) -> NotFound:
    return NotFound(f"no webhook endpoint {endpoint_id!r} for this caller", param="id")


_DELIVERY_COLUMNS = (
    "d.id, d.endpoint_id, d.payment_id, d.status, d.attempts, d.next_attempt_at,"
    " d.last_attempt_at, d.last_status_code, d.last_error, d.delivered_at, d.created_at,"
    " ev.id AS event_id, ev.type"
)


class WebhookEndpoints:
    """The caller's endpoints and their deliveries (``/v1/webhook-endpoints``)."""

    def __init__(self, settings: PaymentSettings, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._sealer = settings.sealer()
        self._overlap = timedelta(seconds=settings.webhook_secret_overlap_seconds)
        allow = settings.webhook_allow_private_urls
        self._allow_private = settings.environment != "production" if allow is None else allow

    async def create(self, caller: str, body: WebhookEndpointCreate) -> WebhookEndpointPublic:
        problem = webhook_domain.url_problem(body.url, allow_private=self._allow_private)
        if problem is not None:
            raise DomainError(problem, code="invalid_url", param="url", status=400)
        endpoint_id = _new_id("we_")
        secret = webhook_domain.new_secret()
        row = await self._pool.fetchrow(
            "INSERT INTO webhook_endpoints (id, caller, url, event_types, secret_sealed)"
            " VALUES ($1, $2, $3, $4, $5) RETURNING *",
            endpoint_id,
            caller,
            body.url,
            list(body.event_types),
            self._sealer.seal(secret, aad=_secret_aad(endpoint_id)),
        )
        assert row is not None
        log.info("webhook_endpoint_created", endpoint_id=endpoint_id, types=body.event_types)
        return _endpoint_view(row, secret)

    async def _owned(
        self, conn: asyncpg.Connection | asyncpg.Pool, caller: str, endpoint_id: str
    ) -> asyncpg.Record:
        row = await conn.fetchrow(
            "SELECT * FROM webhook_endpoints WHERE id = $1 AND caller = $2 AND status <> 'deleted'",
            endpoint_id,
            caller,
        )
        if row is None:
            raise _not_found(endpoint_id)
        return row

    async def list_for(self, caller: str) -> WebhookEndpointListPublic:
        rows = await self._pool.fetch(
            "SELECT * FROM webhook_endpoints WHERE caller = $1 AND status <> 'deleted'"
            " ORDER BY created_at, id",
            caller,
        )
        return WebhookEndpointListPublic(data=[_endpoint_view(r) for r in rows])

    async def view(self, caller: str, endpoint_id: str) -> WebhookEndpointPublic:
        return _endpoint_view(await self._owned(self._pool, caller, endpoint_id))

    async def delete(self, caller: str, endpoint_id: str) -> WebhookEndpointPublic:
        await self._owned(self._pool, caller, endpoint_id)
        row = await self._pool.fetchrow(
            "UPDATE webhook_endpoints SET status = 'deleted', updated_at = now()"
            " WHERE id = $1 RETURNING *",
            endpoint_id,
        )
        assert row is not None
        log.info("webhook_endpoint_deleted", endpoint_id=endpoint_id)
        return _endpoint_view(row)

    async def rotate(self, caller: str, endpoint_id: str) -> WebhookEndpointPublic:
        """A new secret; the current one keeps signing beside it for the overlap."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await self._owned(conn, caller, endpoint_id)
            secret = webhook_domain.new_secret()
            updated = await conn.fetchrow(
                "UPDATE webhook_endpoints SET secret_sealed = $2, previous_secret_sealed = $3,"
                " previous_secret_until = $4, updated_at = now() WHERE id = $1 RETURNING *",
                endpoint_id,
                self._sealer.seal(secret, aad=_secret_aad(endpoint_id)),
                row["secret_sealed"],
                utcnow() + self._overlap,
            )
        assert updated is not None
        log.info("webhook_secret_rotated", endpoint_id=endpoint_id)
        return _endpoint_view(updated, secret)

    async def enable(self, caller: str, endpoint_id: str) -> WebhookEndpointPublic:
        """Enable a disabled endpoint: its pending deliveries are tried again at once."""
        async with self._pool.acquire() as conn, conn.transaction():
            await self._owned(conn, caller, endpoint_id)
            row = await conn.fetchrow(
                "UPDATE webhook_endpoints SET status = 'enabled', disabled_reason = NULL,"
                " failing_since = NULL, updated_at = now() WHERE id = $1 RETURNING *",
                endpoint_id,
            )
            await conn.execute(
                "UPDATE webhook_deliveries SET next_attempt_at = now()"
                " WHERE endpoint_id = $1 AND status = 'pending'",
                endpoint_id,
            )
        assert row is not None
        log.info("webhook_endpoint_enabled", endpoint_id=endpoint_id)
        return _endpoint_view(row)

    async def deliveries(
        self, caller: str, endpoint_id: str, *, limit: int, starting_after: str | None
    ) -> WebhookDeliveryListPublic:
        """The endpoint's delivery log, newest first."""
        await self._owned(self._pool, caller, endpoint_id)
        args: list[Any] = [endpoint_id]
        cursor = ""
        if starting_after is not None:
            args.append(starting_after)
            cursor = (
                " AND (d.created_at, d.id) < (SELECT created_at, id FROM webhook_deliveries"
                " WHERE id = $2 AND endpoint_id = $1)"
            )
        args.append(limit + 1)
        rows = await self._pool.fetch(
            f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries d"  # noqa: S608
            f" JOIN webhook_events ev ON ev.seq = d.event_seq WHERE d.endpoint_id = $1{cursor}"
            f" ORDER BY d.created_at DESC, d.id DESC LIMIT ${len(args)}",
            *args,
        )
        return WebhookDeliveryListPublic(
            data=[_delivery_view(r) for r in rows[:limit]], has_more=len(rows) > limit
        )

    async def redeliver(
        self, caller: str, endpoint_id: str, delivery_id: str
    ) -> WebhookDeliveryPublic:
        """Send a delivery's event again (a new delivery of the same message)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await self._owned(conn, caller, endpoint_id)
            old = await conn.fetchrow(
                "SELECT event_seq, payment_id FROM webhook_deliveries"
                " WHERE id = $1 AND endpoint_id = $2",
                delivery_id,
                endpoint_id,
            )
            if old is None:
                raise NotFound(f"no delivery {delivery_id!r} of this endpoint", param="delivery_id")
            new_id = _new_id("whd_")
            await conn.execute(
                "INSERT INTO webhook_deliveries (id, endpoint_id, event_seq, payment_id)"
                " VALUES ($1, $2, $3, $4)",
                new_id,
                endpoint_id,
                old["event_seq"],
                old["payment_id"],
            )
            row = await conn.fetchrow(
                f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries d"  # noqa: S608
                " JOIN webhook_events ev ON ev.seq = d.event_seq WHERE d.id = $1",
                new_id,
            )
        assert row is not None
        log.info("webhook_redelivery", endpoint_id=endpoint_id, delivery_id=new_id)
        return _delivery_view(row)


# ---------------------------------------------------------------------------
# Delivering
# ---------------------------------------------------------------------------

# Due deliveries, leased by pushing next_attempt_at past the try (another instance
# skips them): the first pending one of each (endpoint, payment) only.
_LEASE = """
WITH due AS (
    SELECT d.id FROM webhook_deliveries d
    JOIN webhook_endpoints e ON e.id = d.endpoint_id
    WHERE d.status = 'pending' AND d.next_attempt_at <= now() AND e.status = 'enabled'
      AND NOT EXISTS (
          SELECT 1 FROM webhook_deliveries p
          WHERE p.endpoint_id = d.endpoint_id AND p.payment_id = d.payment_id
            AND p.status = 'pending' AND p.event_seq < d.event_seq)
    ORDER BY d.next_attempt_at, d.event_seq
    LIMIT $1
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE webhook_deliveries d SET next_attempt_at = now() + $2::interval
FROM due, webhook_events ev, webhook_endpoints e
WHERE d.id = due.id AND ev.seq = d.event_seq AND e.id = d.endpoint_id
RETURNING d.id, d.endpoint_id, d.attempts, ev.id AS event_id, ev.body, e.url,
    e.secret_sealed, e.previous_secret_sealed, e.previous_secret_until
"""


class WebhookWorker(PollingWorker):
    """Delivers due webhook deliveries, signed, in order per payment (see module doc)."""

    name = "webhooks"

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: PaymentSettings,
        *,
        sender: Origins | None = None,
        batch_size: int = 50,
    ) -> None:
        super().__init__(
            poll_interval=settings.webhook_poll_interval_seconds, batch_size=batch_size
        )
        self._pool = pool
        self._sealer: Sealer = settings.sealer()
        self._sender = sender or Origins(timeout=settings.webhook_timeout_seconds)
        self._timeout = settings.webhook_timeout_seconds
        self._base = settings.webhook_retry_base_seconds
        self._cap = settings.webhook_retry_max_seconds
        self._disable_after = timedelta(seconds=settings.webhook_disable_after_seconds)

    async def aclose(self) -> None:
        await self._sender.close()

    async def run_once(self) -> int:
        """One lease: POST every leased delivery at once, then record the successes in
        one statement and each failure (rare) with its retry in its own transaction."""
        assert self.batch_size is not None
        lease = timedelta(seconds=self._timeout * 3)
        rows = await self._pool.fetch(_LEASE, self.batch_size, lease)
        if not rows:
            return 0
        outcomes = await asyncio.gather(*(self._post(r) for r in rows))
        delivered: list[tuple[asyncpg.Record, int | None]] = []
        failed: list[tuple[asyncpg.Record, int | None, str]] = []
        for row, (status, error) in zip(rows, outcomes, strict=True):
            if error is None:
                delivered.append((row, status))
            else:
                failed.append((row, status, error))
        if delivered:
            await self._settle_delivered(delivered)
        for row, status, error in failed:
            await self._settle_failed(row, status, error)
        log.info("webhooks_posted", delivered=len(delivered), failed=len(failed))
        return len(rows)

    def _secrets(self, row: asyncpg.Record) -> list[str]:
        aad = _secret_aad(row["endpoint_id"])
        found = [self._sealer.open(row["secret_sealed"], aad=aad)]
        until = row["previous_secret_until"]
        if row["previous_secret_sealed"] and until is not None and until > utcnow():
            found.append(self._sealer.open(row["previous_secret_sealed"], aad=aad))
        return found

    async def _post(self, row: asyncpg.Record) -> tuple[int | None, str | None]:
        """POST one delivery signed: (status code, error), error ``None`` on a 2xx."""
        now = utcnow()
        body: str = row["body"]
        headers = {
            "User-Agent": "Yibao-Webhooks/1",
            "webhook-id": row["event_id"],
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": webhook_domain.sign(
                self._secrets(row), row["event_id"], now, body
            ),
        }
        try:
            reply = await self._sender.send(row["url"], body.encode(), headers)
        except (OutboundError, ValueError) as exc:
            return None, f"{type(exc).__name__}: {exc}"[:500]
        if not reply.is_success:
            return reply.status_code, f"answered {reply.status_code}"
        return reply.status_code, None

    async def _settle_delivered(self, delivered: list[tuple[asyncpg.Record, int | None]]) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE webhook_deliveries d SET status = 'succeeded', attempts = attempts + 1,"
                " last_attempt_at = now(), last_status_code = u.code, last_error = NULL,"
                " delivered_at = now()"
                " FROM unnest($1::text[], $2::int[]) AS u(id, code) WHERE d.id = u.id",
                [r["id"] for r, _ in delivered],
                [status for _, status in delivered],
            )
            # Endpoints that were failing are well again: locked in id order (another
            # instance's worker does the same), none locked when none was failing.
            await conn.execute(
                "UPDATE webhook_endpoints SET failing_since = NULL WHERE id IN ("
                " SELECT id FROM webhook_endpoints WHERE id = ANY($1::text[])"
                " AND failing_since IS NOT NULL ORDER BY id FOR UPDATE)",
                sorted({r["endpoint_id"] for r, _ in delivered}),
            )
        log.debug("webhooks_delivered", delivery_ids=[r["id"] for r, _ in delivered])

    async def _settle_failed(self, row: asyncpg.Record, status: int | None, error: str) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            attempts = row["attempts"] + 1
            delay = webhook_domain.retry_delay(attempts, base=self._base, cap=self._cap)
            await conn.execute(
                "UPDATE webhook_deliveries SET attempts = $2, last_attempt_at = now(),"
                " last_status_code = $3, last_error = $4,"
                " next_attempt_at = now() + $5::interval WHERE id = $1",
                row["id"],
                attempts,
                status,
                error,
                timedelta(seconds=delay),
            )
            failing_since = await conn.fetchval(
                "UPDATE webhook_endpoints SET failing_since = coalesce(failing_since, now())"
                " WHERE id = $1 RETURNING failing_since",
                row["endpoint_id"],
            )
            log.warning(
                "webhook_delivery_failed",
                delivery_id=row["id"],
                endpoint_id=row["endpoint_id"],
                attempts=attempts,
                error=error,
                retry_in=round(delay, 1),
            )
            if failing_since is not None and utcnow() - failing_since >= self._disable_after:
                reason = (
                    f"every delivery failed for {self._disable_after} (last: {error});"
                    " fix the endpoint, then POST .../enable"
                )
                disabled = await conn.fetchval(
                    "UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = $2,"
                    " updated_at = now() WHERE id = $1 AND status = 'enabled' RETURNING id",
                    row["endpoint_id"],
                    reason,
                )
                if disabled:
                    log.warning(
                        "webhook_endpoint_disabled", endpoint_id=row["endpoint_id"], reason=reason
                    )
