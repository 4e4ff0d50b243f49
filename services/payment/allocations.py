"""The bureau's allocations to personal medical accounts (个账划入).

A file (region, period, lines of payer and amount) is checked whole before anything
is applied (the request model refuses a malformed line by name, ``lines[3].amount``;
a payer twice in one file is refused here). Then, in one transaction, each line is
stored once per (region, period, payer_id) with its ``MedicalAccountAllocated`` event
(key payer_id): a line already stored with the same amount answers
``already_allocated`` and publishes nothing; with another amount the whole file is
refused (409 naming the line) and nothing is applied.

A bureau key acts for its own region only: a file for another region is 403
``forbidden`` (the key is known, it may not act there).
"""

from __future__ import annotations

import base64
import secrets

import asyncpg
import structlog

from services.payment import store, validation
from services.payment.config import PaymentSettings
from services.payment.intake import IdempotentRequests, IntakeResponse
from services.payment.payments import stage_events
from services.payment.person_keys import PersonKeys
from services.payment.schemas import AllocationCreate, AllocationLinePublic, AllocationPublic
from services.payment.store import Allocation
from shared.crypto import KeyPurpose, phone_aad
from shared.errors import Conflict, Forbidden, ValidationFailed
from shared.events import MedicalAccountAllocated
from shared.http import Caller
from shared.money import format_cny, utcnow
from shared.personal import person_of_payer

log = structlog.get_logger(__name__)

ALLOCATION_ROUTE = "POST /v1/medical-accounts/allocations"


def new_allocation_id() -> str:
    """``al_`` + 120 random bits in base32 (see ``intake.new_payment_id``)."""
    return "al_" + base64.b32encode(secrets.token_bytes(15)).decode().lower()


def check_file(caller: Caller, body: AllocationCreate) -> None:
    """The key's region, and one line per payer."""
    if caller.region != body.region:
        raise Forbidden(
            f"this bureau key acts for region {caller.region}, not {body.region}; send the"
            " file with the key of the bureau of that region",
            param="region",
        )
    seen: dict[str, int] = {}
    for n, line in enumerate(body.lines):
        if line.payer_id in seen:
            raise ValidationFailed(
                f"lines[{n}].payer_id: payer {line.payer_id} is already on line"
                f" {seen[line.payer_id]}; one line per payer; nothing was applied",
                param=f"lines[{n}].payer_id",
            )
        seen[line.payer_id] = n


class Allocations:
    def __init__(
        self, settings: PaymentSettings, pool: asyncpg.Pool, requests: IdempotentRequests
    ) -> None:
        self._requests = requests
        self._topics = settings.topics
        self._fingerprint_key = settings.hash_key_for(KeyPurpose.FINGERPRINT)
        self._sealer = settings.sealer()
        self._person_keys = PersonKeys(self._sealer, settings.topics.person_keys)

    async def allocate(self, caller: Caller, key: str, body: AllocationCreate) -> IntakeResponse:
        """Apply the file once per (caller, key): 200 with one result per line."""
        check_file(caller, body)
        fingerprint = validation.request_fingerprint(
            self._fingerprint_key, ALLOCATION_ROUTE, body.model_dump(mode="json")
        )

        async def apply(conn: asyncpg.Connection) -> tuple[str, int, str]:
            result = await self._apply(conn, caller.id, body)
            return f"{body.region}:{body.period}", 200, result.model_dump_json()

        return await self._requests.once(caller.id, key, fingerprint, apply)

    async def _apply(
        self, conn: asyncpg.Connection, caller: str, body: AllocationCreate
    ) -> AllocationPublic:
        results: list[AllocationLinePublic] = []
        for n, line in enumerate(body.lines):
            wanted = Allocation(
                new_allocation_id(), body.region, body.period, line.payer_id, line.amount
            )
            stored = await store.insert_allocation(conn, wanted, caller=caller)
            if stored.allocation_id != wanted.allocation_id and stored.amount != line.amount:
                raise Conflict(
                    f"lines[{n}]: payer {line.payer_id} already received"
                    f" {format_cny(stored.amount)} CNY for {body.region} {body.period}, not"
                    f" {format_cny(line.amount)} CNY; correct the line; nothing was applied",
                    code="allocation_conflict",
                    param=f"lines[{n}].amount",
                    details={
                        "allocated_amount": stored.amount,
                        "allocation_id": stored.allocation_id,
                    },
                )
            status = (
                "allocated" if stored.allocation_id == wanted.allocation_id else "already_allocated"
            )
            if status == "allocated":
                await self._publish(conn, stored)
            results.append(
                AllocationLinePublic(
                    payer_id=line.payer_id,
                    amount=line.amount,
                    allocation_id=stored.allocation_id,
                    status=status,
                )
            )
        log.info(
            "allocation_file_applied", region=body.region, period=body.period, lines=len(results)
        )
        return AllocationPublic(region=body.region, period=body.period, lines=results)

    async def _publish(self, conn: asyncpg.Connection, allocation: Allocation) -> None:
        payer = await store.get_payer(conn, allocation.payer_id)
        masked = sealed = None
        if payer is not None:
            phone = self._sealer.open(payer.phone_sealed, aad=phone_aad(payer.phone_sealed_for))
            masked = ""  # inside the blob (issue 11)
            sealed = await self._person_keys.sealed_phone(
                conn,
                person_of_payer(payer.id_number_hash, payer.payer_id),
                phone,
                allocation.allocation_id,
            )
        event = MedicalAccountAllocated(
            allocation_id=allocation.allocation_id,
            region=allocation.region,
            period=allocation.period,
            payer_id=allocation.payer_id,
            amount=allocation.amount,
            allocated_at=utcnow(),
            payer_phone_masked=masked,
            payer_phone_sealed=sealed,
        )
        await stage_events(
            conn,
            self._topics.payments,
            [event],
            key=allocation.payer_id,
            correlation_id=allocation.allocation_id,
            causation_id=None,
        )
