"""Reading what notify sent, for the caller that owns the payment."""

from __future__ import annotations

import asyncpg

from services.notify import store
from services.notify.schemas import NotificationPublic
from shared.errors import NotFound


async def list_for_caller(
    db: asyncpg.Pool | asyncpg.Connection, caller: str, payment_id: str
) -> list[NotificationPublic]:
    """The notices of ``payment_id`` (its refunds' included), oldest first, when
    ``caller`` owns the payment.

    A payment of another caller, and one notify never heard of, are the same 404
    ``not_found``, not 403: a 403 would confirm to a stranger that the payment exists.
    """
    if await store.owner_of(db, payment_id) != caller:
        raise NotFound(
            f"no payment {payment_id!r} for this caller; check the id", param="payment_id"
        )
    return [NotificationPublic.of(v) for v in await store.list_for_payment(db, payment_id)]
