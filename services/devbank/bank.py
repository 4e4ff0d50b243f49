"""The bank's service layer: one booking = one SQLite transaction on the store's thread.

Idempotency by reference: a repeated reference answers what was stored (and books
nothing); a reference repeated with another request is refused (409). Every
transaction runs on one worker thread, so two requests with the same reference are
decided one after the other, and the event loop never waits on a disk flush.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import ParamSpec, TypeVar

import structlog

from services.devbank.controls import Controls
from services.devbank.domain import (
    Debit,
    Kind,
    Operation,
    Refund,
    Transfer,
    book_debit,
    book_refund,
    book_transfer,
    check_same_request,
    statement_csv,
)
from services.devbank.store import BankStore
from shared.errors import NotFound
from shared.money import utcnow

log = structlog.get_logger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Booking:
    operation: Operation
    replayed: bool  # True: the stored answer to an earlier identical request


class Bank:
    def __init__(
        self,
        store: BankStore,
        controls: Controls,
        cutoff: time,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.controls = controls
        self.cutoff = cutoff
        self._clock = clock
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bank-store")

    async def _on_worker(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, lambda: fn(*args, **kwargs))

    # ------------------------------------------------------------- operations

    async def debit(self, debit: Debit) -> Booking:
        booking = await self._on_worker(self._debit, debit)
        _log(booking)
        return booking

    async def refund(self, refund: Refund) -> Booking:
        booking = await self._on_worker(self._refund, refund)
        _log(booking)
        return booking

    async def transfer(self, transfer: Transfer) -> Booking:
        booking = await self._on_worker(self._transfer, transfer)
        _log(booking)
        return booking

    async def find(self, kind: Kind, reference: str) -> Operation:
        found = await self._on_worker(self.store.find, kind, reference)
        if found is None:
            raise NotFound(
                f"no {kind} with reference {reference!r}; check the reference", param="reference"
            )
        return found

    async def statement(self, day: date) -> str:
        return statement_csv(await self._on_worker(self.store.succeeded_on, day))

    def close(self) -> None:
        self._worker.shutdown(wait=True)
        self.store.close()

    # ------------------------------------------------------------- on the worker

    def _debit(self, debit: Debit) -> Booking:
        with self.store.transaction():
            stored = self.store.find("debit", debit.reference)
            if stored is not None:
                check_same_request(stored, debit)
                return Booking(stored, replayed=True)
            op = book_debit(
                debit,
                declined=self.controls.take_decline(),
                now=self._clock(),
                cutoff=self.cutoff,
            )
            self.store.insert(op)
        return Booking(op, replayed=False)

    def _refund(self, refund: Refund) -> Booking:
        with self.store.transaction():
            stored = self.store.find("refund", refund.reference)
            if stored is not None:
                check_same_request(stored, refund)
                return Booking(stored, replayed=True)
            debit = self.store.find("debit", refund.debit_reference)
            refunded = self.store.refunded_fen(refund.debit_reference)
            op = book_refund(refund, debit, refunded, now=self._clock(), cutoff=self.cutoff)
            self.store.insert(op)
            if op.status == "succeeded":
                self.store.add_refunded(refund.debit_reference, op.amount_fen)
        return Booking(op, replayed=False)

    def _transfer(self, transfer: Transfer) -> Booking:
        with self.store.transaction():
            stored = self.store.find("transfer", transfer.reference)
            if stored is not None:
                check_same_request(stored, transfer)
                return Booking(stored, replayed=True)
            op = book_transfer(transfer, now=self._clock(), cutoff=self.cutoff)
            self.store.insert(op)
        return Booking(op, replayed=False)


def _log(booking: Booking) -> None:
    op = booking.operation
    log.info(
        f"{op.kind}_replayed" if booking.replayed else f"{op.kind}_booked",
        reference=op.reference,
        amount_fen=op.amount_fen,
        status=op.status,
        reason=op.reason,
        clearing_day=op.clearing_day.isoformat(),
    )
