"""HTTP edge of the development bank (DESIGN.md "Contract additions: money from outside").

Each route parses its body into a domain request and makes one call into ``Bank`` (or
the controls). Bad input answers 400 with the error object naming the field; a reused
reference 409; an unknown one 404.
"""

from __future__ import annotations

from fastapi import APIRouter, BackgroundTasks, FastAPI
from fastapi.responses import Response

from services.devbank.bank import Bank
from services.devbank.config import BankSettings
from services.devbank.controls import Controls, DelayAnswers, Listener
from services.devbank.deps import BankDep, ControlsDep
from services.devbank.domain import Debit, Refund, Transfer, parse_day
from services.devbank.schemas import (
    ControlPublic,
    ControlUpdate,
    DebitCreate,
    OperationPublic,
    RefundCreate,
    TransferCreate,
)
from services.devbank.store import BankStore
from shared.http import add_healthz, document_api, install_error_handlers

operations = APIRouter()
controls_router = APIRouter()


@operations.post("/debits", response_model=OperationPublic)
async def create_debit(body: DebitCreate, bank: BankDep) -> OperationPublic:
    debit = Debit(body.reference, body.amount, body.currency, body.payer_ref)
    return OperationPublic.of((await bank.debit(debit)).operation)


@operations.post("/refunds", response_model=OperationPublic)
async def create_refund(body: RefundCreate, bank: BankDep) -> OperationPublic:
    refund = Refund(body.reference, body.debit_reference, body.amount)
    return OperationPublic.of((await bank.refund(refund)).operation)


@operations.post("/transfers", response_model=OperationPublic)
async def create_transfer(body: TransferCreate, bank: BankDep) -> OperationPublic:
    transfer = Transfer(body.reference, body.to_account, body.amount)
    return OperationPublic.of((await bank.transfer(transfer)).operation)


@operations.get("/debits/{reference}", response_model=OperationPublic)
async def read_debit(reference: str, bank: BankDep) -> OperationPublic:
    return OperationPublic.of(await bank.find("debit", reference))


@operations.get("/refunds/{reference}", response_model=OperationPublic)
async def read_refund(reference: str, bank: BankDep) -> OperationPublic:
    return OperationPublic.of(await bank.find("refund", reference))


@operations.get("/transfers/{reference}", response_model=OperationPublic)
async def read_transfer(reference: str, bank: BankDep) -> OperationPublic:
    return OperationPublic.of(await bank.find("transfer", reference))


@operations.get("/statements/{day}.csv", response_class=Response)
async def read_statement(day: str, bank: BankDep) -> Response:
    clearing_day = parse_day(day)
    return Response(
        await bank.statement(clearing_day),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'inline; filename="bank-{clearing_day}.csv"'},
    )


@controls_router.get("/control", response_model=ControlPublic)
async def read_control(controls: ControlsDep) -> ControlPublic:
    return ControlPublic.model_validate(controls.snapshot())


@controls_router.post("/control", response_model=ControlPublic)
async def update_control(
    body: ControlUpdate, controls: ControlsDep, background: BackgroundTasks
) -> ControlPublic:
    if controls.update(body.decline_next, body.delay_ms, body.unavailable_for_s):
        # After the answer is out: the caller hears "ok", then connections are refused.
        background.add_task(controls.begin_outage)
    return ControlPublic.model_validate(controls.snapshot())


def create_app(settings: BankSettings, listener: Listener | None = None) -> FastAPI:
    """The bank on ``settings.store``. ``listener`` is the server that
    ``unavailable_for_s`` closes and reopens (none in-process: then it is refused)."""
    app = FastAPI(title="Yibao development bank gateway", docs_url=None, redoc_url=None)
    install_error_handlers(app)
    controls = Controls(listener)
    app.state.controls = controls
    store = BankStore(settings.store)
    app.state.bank = Bank(store, controls, settings.cutoff_time)

    async def store_open() -> None:
        store.ping()

    add_healthz(app, checks={"store": store_open})
    app.add_middleware(DelayAnswers, controls=controls)
    app.include_router(operations)
    app.include_router(controls_router)
    document_api(app, outage=False)  # no database: its store is a local SQLite file
    return app
