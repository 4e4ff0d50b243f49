"""Premiums by region, year and scheme: the schedule's answer (``GET /v1/premiums``),
the check of a premium payment against it, and the slot a premium holds.

The rules are in ``premium_domain``; the schedule is read once at start by the
settings (``PAYMENT_PREMIUM_SCHEDULE_FILE``). A premium payment is checked before its
idempotency key is claimed (400 ``invalid_period``, 422 ``premium_amount_mismatch`` or
``premium_not_scheduled``: nothing stored). Its slot (person, scheme, bureau, months)
is then taken in the transaction that inserts it: ``hold`` waits on an advisory lock
for the slot, so of two concurrent requests (two idempotency keys, or two callers:
the beneficiary is a person) one commits and the other finds it and is refused with
409 ``already_paid`` naming it. A declined or failed payment frees the slot; one still
processing holds it. A crash before the commit releases the lock with the transaction.
"""

from __future__ import annotations

from datetime import date

import asyncpg

from services.payment import domain, store
from services.payment.premium_domain import (
    CATEGORY_NAMES,
    CheckedPremium,
    PeriodWindow,
    PremiumRequest,
    PremiumRow,
    PremiumSchedule,
    PremiumSlot,
    ScheduledScheme,
    check_premium,
)
from services.payment.schemas import (
    PaymentCreate,
    PremiumRowPublic,
    PremiumSchedulePublic,
    PremiumSchemePublic,
)
from shared.errors import Conflict, ValidationFailed
from shared.events import Purpose, Scheme
from shared.regions import region_problem

SCHEMES: tuple[Scheme, ...] = ("urban_rural_resident", "flexible_employment", "commercial_health")
PERIODS: dict[Scheme, str] = {
    "urban_rural_resident": "YYYY",
    "flexible_employment": "YYYY-MM or YYYY-Qn",
    "commercial_health": "YYYY",
}


class Premiums:
    def __init__(
        self,
        schedule: PremiumSchedule,
        window: PeriodWindow,
        *,
        enforce_schedule: bool = True,
        paid_once: bool = True,
    ) -> None:
        self._schedule = schedule
        self._window = window
        self._enforce_schedule = enforce_schedule
        self._paid_once = paid_once

    def check(self, body: PaymentCreate, purpose: Purpose, today: date) -> CheckedPremium | None:
        """The checked premium (period, category, row), or None for a wallet top-up.
        ``purpose`` has passed ``validation.validate_request`` (scheme and period set)."""
        if purpose.type != "premium" or purpose.scheme is None or purpose.period is None:
            return None
        request = PremiumRequest(
            scheme=purpose.scheme,
            region=purpose.region,
            period=purpose.period,
            amount=body.amount,
            id_number=body.beneficiary.id_number,
            declared=body.beneficiary.category,
        )
        return check_premium(
            self._schedule, request, today, self._window, enforce_amount=self._enforce_schedule
        )

    async def hold(self, conn: asyncpg.Connection, slot: PremiumSlot) -> None:
        """Take ``slot`` for the payment this transaction inserts; 409 ``already_paid``
        naming the live payment that holds it (when periods are paid once)."""
        if not self._paid_once:
            return
        holder = await store.premium_slot_holder(conn, slot)
        if holder is None:
            return
        status = domain.PUBLIC_STATUS[holder.status]
        raise Conflict(
            f"this beneficiary's premium for {holder.period} is already paid by payment"
            f" {holder.payment_id} ({status}); a period is paid once (a declined or failed"
            " payment frees it again): read that payment instead of paying again",
            code="already_paid",
            param="purpose.period",
            details={"payment_id": holder.payment_id, "payment_status": status},
        )

    def schedule(self, region: str, year: int, scheme: Scheme | None) -> PremiumSchedulePublic:
        """The rows that apply to ``region`` in ``year``, for ``scheme`` or every scheme."""
        problem = region_problem(region)
        if problem is not None:
            raise ValidationFailed(f"region: {problem}", param="region")
        schemes = [scheme] if scheme is not None else list(SCHEMES)
        return PremiumSchedulePublic(
            region=region, year=year, schemes=[self._scheme(region, year, s) for s in schemes]
        )

    def _scheme(self, region: str, year: int, scheme: Scheme) -> PremiumSchemePublic:
        if scheme == "commercial_health":
            return PremiumSchemePublic(
                scheme=scheme, periods=PERIODS[scheme], scheduled=False, rows=[]
            )
        scheduled: ScheduledScheme = scheme
        rows = self._schedule.rows_for(region, year, scheduled)
        return PremiumSchemePublic(
            scheme=scheme,
            periods=PERIODS[scheme],
            scheduled=True,
            rows=[_row_view(row) for row in rows],
        )


def _row_view(row: PremiumRow) -> PremiumRowPublic:
    return PremiumRowPublic(
        scheme=row.scheme,
        region=row.region,
        year=row.year,
        category=row.category,
        category_name=CATEGORY_NAMES[row.category],
        amount=row.min_fen if row.per == "year" else None,
        min_amount=row.min_fen,
        max_amount=row.max_fen,
        per=row.per,
        national_fallback=row.national_fallback,
        source=row.source,
    )
