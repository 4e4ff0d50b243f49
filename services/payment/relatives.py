"""Family accounts (家庭共济 / 亲情账户): a payer's bound close relatives.

A payer binds a relative (an enrolled payer of the same caller whose ID number is
known) with a relation; the binding is ``pending`` until the relative confirms with the
code sent to ITS enrolled phone, then ``bound``; unbinding makes it ``unbound`` (kept,
and bindable again). A ``medical_account`` payment for anyone but its payer must be for
a bound relative: the beneficiary's keyed ID hash is the bound relative's
(``check_payment``, in the payment's transaction: 422 ``relative_not_bound``).

Unbinding and payments in flight: a payment checks the binding when it is requested,
holding the binding row FOR SHARE until the payment is stored, so an unbinding either
comes first (the payment is refused) or waits for it (the payment stands). A payment
accepted under a binding is not recalled by a later unbinding: the resident consented
when it was made, as with any payment already authorized; only new payments are refused.
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

import asyncpg
import structlog

from services.payment import payer_domain, store
from services.payment.payer_codes import PayerCodes, owned_payer
from services.payment.schemas import (
    RelativeCreate,
    RelativeListPublic,
    RelativePublic,
    RelativeRelation,
)
from services.payment.store import Binding, Payer, StoredPayerCode
from shared.errors import Conflict, DomainError, NotFound
from shared.events import Relation
from shared.personal import person_of_payer

log = structlog.get_logger(__name__)


def relative_not_found(relative_payer_id: str) -> NotFound:
    """A relative this caller did not enrol, or a binding that does not exist: 404,
    as for any payer of another caller."""
    return NotFound(
        f"no relative {relative_payer_id!r} of this payer for this caller; check the id",
        param="relative_payer_id",
    )


def relative_not_bound() -> DomainError:
    return DomainError(
        "a personal medical account pays only for its payer or a bound relative; bind the"
        " beneficiary first (POST /v1/payers/{payer_id}/relatives, confirmed by the code"
        " sent to the relative's phone), or pay by wallet or bank card",
        code="relative_not_bound",
        param="beneficiary",
    )


def relative_view(
    binding: Binding, relative: Payer, code_expires_at: datetime | None = None
) -> RelativePublic:
    return RelativePublic(
        relative_payer_id=binding.relative_payer_id,
        relation=cast(RelativeRelation, binding.relation),
        name=payer_domain.mask_name(relative.name) if relative.name is not None else None,
        id_number=relative.id_number_masked,
        status=binding.status,
        requested_at=binding.requested_at,
        bound_at=binding.bound_at,
        unbound_at=binding.unbound_at,
        code_expires_at=code_expires_at if binding.status == "pending" else None,
    )


async def check_payment(
    conn: asyncpg.Connection,
    *,
    payer_id: str,
    payer_id_hash: str | None,
    method: str,
    relation: Relation,
    beneficiary_id_hash: str,
) -> None:
    """422 ``relative_not_bound`` unless a medical-account payment is for its payer or a
    bound relative (the binding then stays locked FOR SHARE until the payment commits)."""
    if not payer_domain.needs_bound_relative(
        method=method,
        relation=relation,
        payer_id_hash=payer_id_hash,
        beneficiary_id_hash=beneficiary_id_hash,
    ):
        return
    if await store.bound_relative_for_share(conn, payer_id, beneficiary_id_hash) is None:
        raise relative_not_bound()


class Relatives:
    def __init__(self, pool: asyncpg.Pool, codes: PayerCodes) -> None:
        self._pool = pool
        self._codes = codes

    async def bind(self, caller: str, payer_id: str, body: RelativeCreate) -> RelativePublic:
        """``POST /v1/payers/{payer_id}/relatives``: a pending binding and a code to the
        relative's enrolled phone; 409 ``already_bound``; 422 ``relative_not_identified``
        (no known ID number) or ``relative_is_payer``."""
        async with self._pool.acquire() as conn, conn.transaction():
            payer = await owned_payer(conn, caller, payer_id)
            relative = await store.get_payer(conn, body.relative_payer_id)
            if relative is None or relative.caller != caller:
                raise relative_not_found(body.relative_payer_id)
            problem = payer_domain.binding_problem(
                payer_id=payer_id,
                payer_id_hash=payer.id_number_hash,
                relative_payer_id=relative.payer_id,
                relative_id_hash=relative.id_number_hash,
            )
            if problem is not None:
                code, message = problem
                raise DomainError(message, code=code, param="relative_payer_id")
            assert relative.id_number_hash is not None  # binding_problem checked it
            existing = await store.get_binding(conn, payer_id, relative.payer_id, for_update=True)
            if existing is not None and existing.status == "bound":
                raise Conflict(
                    f"{relative.payer_id!r} is already a bound relative of this payer;"
                    " unbind it first to bind it again",
                    code="already_bound",
                    param="relative_payer_id",
                )
            issued = await self._codes.issue(
                conn,
                payer=payer,
                purpose="family_binding",
                subject=relative.payer_id,
                phone=self._codes.open_payer_phone(relative),
                phone_person=person_of_payer(relative.id_number_hash, relative.payer_id),
                relation=body.relation,
                payer_name_masked=(
                    payer_domain.mask_name(payer.name) if payer.name is not None else None
                ),
            )
            binding = Binding(
                payer_id=payer_id,
                relative_payer_id=relative.payer_id,
                relation=body.relation,
                relative_id_hash=relative.id_number_hash,
                status="pending",
                code_id=issued.code_id,
                requested_at=self._codes.now(),
                bound_at=None,
                unbound_at=None,
            )
            await store.request_binding(conn, binding)
        log.info(
            "relative_binding_requested",
            payer_id=payer_id,
            relative_payer_id=relative.payer_id,
            code_id=issued.code_id,
        )
        return relative_view(binding, relative, issued.expires_at)

    async def confirm(
        self, caller: str, payer_id: str, relative_payer_id: str, code: str
    ) -> RelativePublic:
        """``POST /v1/payers/{payer_id}/relatives/{relative_payer_id}/verification``: the
        relative's code binds it."""
        async with self._pool.acquire() as conn:
            binding = await store.get_binding(conn, payer_id, relative_payer_id)
        if binding is None or binding.status != "pending":
            await self._owned(caller, payer_id)  # another caller's payer: 404 payer_id
            if binding is None or binding.status == "unbound":
                raise relative_not_found(relative_payer_id)
            raise Conflict(
                f"{relative_payer_id!r} is already a bound relative of this payer",
                code="already_bound",
                param="relative_payer_id",
            )

        async def apply(
            conn: asyncpg.Connection, payer: Payer, stored: StoredPayerCode
        ) -> RelativePublic:
            current = await store.get_binding(
                conn, payer.payer_id, relative_payer_id, for_update=True
            )
            if (
                current is None
                or current.code_id != stored.code.code_id
                or current.status != "pending"
            ):
                raise relative_not_found(relative_payer_id)
            bound = await store.set_binding_status(conn, payer.payer_id, relative_payer_id, "bound")
            relative = await store.get_payer(conn, relative_payer_id)
            assert relative is not None  # payers are never deleted
            log.info("relative_bound", payer_id=payer.payer_id, relative_payer_id=relative_payer_id)
            return relative_view(bound, relative)

        return await self._codes.confirm(
            binding.code_id,
            payer_id=payer_id,
            caller=caller,
            purpose="family_binding",
            presented=code,
            on_pass=apply,
            not_found=relative_not_found(relative_payer_id),
        )

    async def _owned(self, caller: str, payer_id: str) -> Payer:
        async with self._pool.acquire() as conn, conn.transaction():
            return await owned_payer(conn, caller, payer_id)

    async def list_for(self, caller: str, payer_id: str) -> RelativeListPublic:
        """``GET /v1/payers/{payer_id}/relatives``: every binding, masked."""
        await self._owned(caller, payer_id)
        rows = await store.list_bindings(self._pool, payer_id)
        return RelativeListPublic(
            payer_id=payer_id, relatives=[relative_view(b, r) for b, r in rows]
        )

    async def unbind(self, caller: str, payer_id: str, relative_payer_id: str) -> RelativePublic:
        """``DELETE /v1/payers/{payer_id}/relatives/{relative_payer_id}``: the binding
        (pending or bound) becomes ``unbound``; again: the same answer. New medical-account
        payments for the relative are refused from here; payments already requested stand."""
        async with self._pool.acquire() as conn, conn.transaction():
            await owned_payer(conn, caller, payer_id)
            binding = await store.get_binding(conn, payer_id, relative_payer_id, for_update=True)
            if binding is None:
                raise relative_not_found(relative_payer_id)
            if binding.status != "unbound":
                binding = await store.set_binding_status(
                    conn, payer_id, relative_payer_id, "unbound"
                )
                log.info("relative_unbound", payer_id=payer_id, relative_payer_id=relative_payer_id)
            relative = await store.get_payer(conn, relative_payer_id)
            assert relative is not None
        return relative_view(binding, relative)
