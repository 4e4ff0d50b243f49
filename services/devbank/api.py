"""HTTP edge of the development bank (DESIGN.md "Contract additions: money from outside").

Each route parses its body into a domain request and makes one call into ``Bank``.
Bad input answers 400 with the error object naming the field; a reused reference 409;
an unknown one 404.
"""

from __future__ import annotations

from datetime import time
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.devbank.bank import Bank
from services.devbank.controls import Controls, DelayAnswers, Listener
from services.devbank.domain import Debit, Kind, Operation, Refund, Status, Transfer, parse_day
from services.devbank.store import BankStore
from shared.errors import ValidationFailed
from shared.http import add_healthz, install_error_handlers

MAX_FEN = 10**15  # far above any payment; keeps amounts inside SQLite's 64-bit integers

Reference = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$",
        description="the caller's id of the operation: letters, digits and . _ : -",
    ),
]
AccountRef = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]
Fen = Annotated[int, Field(strict=True, gt=0, le=MAX_FEN, description="integer fen")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class DebitCreate(_Body):
    reference: Reference
    amount: Fen
    currency: Literal["CNY"]
    payer_ref: AccountRef


class RefundCreate(_Body):
    reference: Reference
    debit_reference: Reference
    amount: Fen
    currency: Literal["CNY"] = "CNY"


class TransferCreate(_Body):
    reference: Reference
    to_account: AccountRef
    amount: Fen
    currency: Literal["CNY"] = "CNY"


class BankAnswer(BaseModel):
    reference: str
    status: Status
    reason: str | None

    @classmethod
    def of(cls, op: Operation) -> BankAnswer:
        return cls(reference=op.reference, status=op.status, reason=op.reason)


class ControlUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decline_next: int | None = Field(None, ge=0, le=1_000_000, strict=True)
    delay_ms: int | None = Field(None, ge=0, le=600_000, strict=True)
    unavailable_for_s: float | None = Field(None, gt=0, le=3600)

    @model_validator(mode="after")
    def _something(self) -> ControlUpdate:
        if self.decline_next is None and self.delay_ms is None and self.unavailable_for_s is None:
            raise ValueError("send at least one of decline_next, delay_ms, unavailable_for_s")
        return self


class ControlPublic(BaseModel):
    decline_next: int
    delay_ms: int
    unavailable_until: str | None


def _bank(request: Request) -> Bank:
    bank: Bank = request.app.state.bank
    return bank


def _controls(request: Request) -> Controls:
    controls: Controls = request.app.state.controls
    return controls


BankDep = Annotated[Bank, Depends(_bank)]
ControlsDep = Annotated[Controls, Depends(_controls)]

router = APIRouter()


@router.post("/debits", response_model=BankAnswer)
async def create_debit(body: DebitCreate, bank: BankDep) -> BankAnswer:
    debit = Debit(body.reference, body.amount, body.currency, body.payer_ref)
    return BankAnswer.of((await bank.debit(debit)).operation)


@router.post("/refunds", response_model=BankAnswer)
async def create_refund(body: RefundCreate, bank: BankDep) -> BankAnswer:
    refund = Refund(body.reference, body.debit_reference, body.amount)
    return BankAnswer.of((await bank.refund(refund)).operation)


@router.post("/transfers", response_model=BankAnswer)
async def create_transfer(body: TransferCreate, bank: BankDep) -> BankAnswer:
    transfer = Transfer(body.reference, body.to_account, body.amount)
    return BankAnswer.of((await bank.transfer(transfer)).operation)


async def _read(bank: Bank, kind: Kind, reference: str) -> BankAnswer:
    return BankAnswer.of(await bank.find(kind, reference))


@router.get("/debits/{reference}", response_model=BankAnswer)
async def read_debit(reference: str, bank: BankDep) -> BankAnswer:
    return await _read(bank, "debit", reference)


@router.get("/refunds/{reference}", response_model=BankAnswer)
async def read_refund(reference: str, bank: BankDep) -> BankAnswer:
    return await _read(bank, "refund", reference)


@router.get("/transfers/{reference}", response_model=BankAnswer)
async def read_transfer(reference: str, bank: BankDep) -> BankAnswer:
    return await _read(bank, "transfer", reference)


@router.get("/statements/{day}.csv", response_class=Response)
async def read_statement(day: str, bank: BankDep) -> Response:
    clearing_day = parse_day(day)
    return Response(
        await bank.statement(clearing_day),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'inline; filename="bank-{clearing_day}.csv"'},
    )


@router.get("/control", response_model=ControlPublic)
async def read_control(controls: ControlsDep) -> ControlPublic:
    return ControlPublic.model_validate(controls.snapshot())


@router.post("/control", response_model=ControlPublic)
async def update_control(
    body: ControlUpdate, controls: ControlsDep, background: BackgroundTasks
) -> ControlPublic:
    if body.decline_next is not None:
        controls.set_decline_next(body.decline_next)
    if body.delay_ms is not None:
        controls.delay_ms = body.delay_ms
    if body.unavailable_for_s is not None:
        if controls.listener is None:
            raise ValidationFailed(
                "this bank runs without its own server (in-process); it cannot go away",
                param="unavailable_for_s",
            )
        controls.plan_outage(body.unavailable_for_s)
        # After the answer is sent: the caller hears "ok", then connections are refused.
        background.add_task(controls.begin_outage)
    return ControlPublic.model_validate(controls.snapshot())


def create_app(
    store: Path, cutoff: time = time(23, 0), listener: Listener | None = None
) -> FastAPI:
    """The bank on ``store`` (a SQLite file). ``listener`` is the server that
    ``unavailable_for_s`` closes and reopens (none in-process)."""
    app = FastAPI(title="Yibao development bank gateway", docs_url=None, redoc_url=None)
    install_error_handlers(app)
    add_healthz(app)
    controls = Controls(listener)
    app.state.controls = controls
    app.state.bank = Bank(BankStore(store), controls, cutoff)
    app.add_middleware(DelayAnswers, controls=controls)
    app.include_router(router)
    return app
