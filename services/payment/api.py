"""The public payment API: ``create_app`` builds the app; the routes live on ``router``.

Each route is one call into a service module (``intake``, ``payments``,
``verification``, ``refunds``, ``allocations``, ``premiums``, ``payers``, ``relatives``,
``records_sessions``). No ``from __future__ import
annotations`` here: FastAPI resolves the route signatures at runtime.
"""

from datetime import datetime
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, Response

from services.payment import domain, payment_list, payments, validation, webhook_api
from services.payment.allocations import Allocations
from services.payment.config import PaymentSettings
from services.payment.deps import (
    AllocationsDep,
    BureauDep,
    CallerDep,
    ErasuresDep,
    IdempotencyKeyDep,
    IntakeDep,
    NotOverloadedDep,
    OperatorDep,
    PayersDep,
    PoolDep,
    PremiumsDep,
    RecordsSessionsDep,
    RefundsDep,
    RelativesDep,
    SettingsDep,
    VerificationDep,
)
from services.payment.erasure import Erasures
from services.payment.intake import IdempotentRequests, Intake, IntakeResponse
from services.payment.overload import Overloaded, OverloadGuard
from services.payment.payer_codes import Clock, PayerCodes
from services.payment.payers import Payers
from services.payment.premiums import Premiums
from services.payment.records_sessions import RecordsSessions
from services.payment.refunds import Refunds
from services.payment.relatives import Relatives
from services.payment.risk_client import RiskClient
from services.payment.schemas import (
    AllocationCreate,
    AllocationPublic,
    ErasureCreate,
    ErasurePublic,
    PayerCreate,
    PayerPublic,
    PaymentCreate,
    PaymentListPublic,
    PaymentPublic,
    PhoneChangeCreate,
    PhoneChangePublic,
    PremiumSchedulePublic,
    RecordsSessionPublic,
    RecordsSessionTokenPublic,
    RefundCreate,
    RefundPublic,
    RelativeCreate,
    RelativeListPublic,
    RelativePublic,
    VerificationCreate,
)
from services.payment.verification import Verification
from services.payment.webhooks import WebhookEndpoints
from shared.errors import RateLimited
from shared.events import Scheme
from shared.http import (
    CallerKeys,
    add_healthz,
    document_api,
    install_error_handlers,
    install_request_logging,
)
from shared.metrics import Sampler, add_metrics, counts_by, outbox_backlog

_ERROR = {"description": 'error object: {"error": {"code", "message", "param"}}'}

router = APIRouter(prefix="/v1", responses={401: _ERROR, 403: _ERROR, 400: _ERROR})


def _sent_as_is(answer: IntakeResponse) -> Response:
    headers = {"Idempotent-Replayed": "true"} if answer.replayed else None
    return Response(
        answer.body, status_code=answer.status, media_type="application/json", headers=headers
    )


@router.post(
    "/payments",
    status_code=202,
    response_model=PaymentPublic,
    responses={409: _ERROR, 422: _ERROR, 503: _ERROR},
    summary="Request a payment",
)
async def create_payment(
    caller: CallerDep,
    _room: NotOverloadedDep,
    key: IdempotencyKeyDep,
    body: PaymentCreate,
    intake: IntakeDep,
) -> Response:
    return _sent_as_is(await intake.submit(caller, key, body))


@router.get(
    "/payments",
    response_model=PaymentListPublic,
    summary="List the caller's payments, newest first (cursor pagination)",
)
async def list_payments(
    caller: CallerDep,
    pool: PoolDep,
    settings: SettingsDep,
    payer_id: Annotated[str | None, Query(max_length=64, description="one payer's")] = None,
    status: Annotated[domain.PublicStatus | None, Query(description="one status")] = None,
    created_gte: Annotated[
        datetime | None, Query(alias="created[gte]", description="created at or after (UTC)")
    ] = None,
    created_lt: Annotated[
        datetime | None, Query(alias="created[lt]", description="created before (UTC)")
    ] = None,
    client_reference: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=payment_list.MAX_LIMIT)] = payment_list.DEFAULT_LIMIT,
    starting_after: Annotated[
        str | None, Query(max_length=64, description="the last payment id of the previous page")
    ] = None,
) -> PaymentListPublic:
    where = payment_list.ListFilter(
        payer_id,
        status,
        payment_list.as_utc(created_gte),
        payment_list.as_utc(created_lt),
        client_reference,
    )
    data, has_more = await payment_list.list_payments(
        pool,
        caller=caller,
        where=where,
        limit=limit,
        starting_after=starting_after,
        policy=settings.bank_policy(),
    )
    return PaymentListPublic(data=data, has_more=has_more)


@router.get(
    "/payments/{payment_id}",
    response_model=PaymentPublic,
    responses={404: _ERROR},
    summary="Read a payment",
)
async def get_payment(
    payment_id: str, caller: CallerDep, pool: PoolDep, settings: SettingsDep
) -> PaymentPublic:
    return await payments.view_payment(
        pool, payment_id, caller=caller, policy=settings.bank_policy()
    )


@router.post(
    "/payments/{payment_id}/verification",
    response_model=PaymentPublic,
    responses={404: _ERROR, 409: _ERROR, 422: _ERROR, 503: _ERROR},
    summary="Submit the SMS code of a payment that requires verification",
)
async def verify_payment(
    payment_id: str, caller: CallerDep, body: VerificationCreate, verification: VerificationDep
) -> PaymentPublic:
    return await verification.verify(caller, payment_id, body.code)


@router.post(
    "/payments/{payment_id}/verification/resend",
    response_model=PaymentPublic,
    responses={404: _ERROR, 409: _ERROR, 429: _ERROR, 503: _ERROR},
    summary="Send a new SMS code (at most one a minute; wrong tries still count)",
)
async def resend_code(
    payment_id: str, caller: CallerDep, verification: VerificationDep
) -> PaymentPublic:
    return await verification.resend(caller, payment_id)


@router.post(
    "/payments/{payment_id}/refunds",
    status_code=202,
    response_model=RefundPublic,
    responses={404: _ERROR, 409: _ERROR, 422: _ERROR},
    summary="Refund part or all of a succeeded payment",
)
async def create_refund(
    payment_id: str,
    caller: CallerDep,
    key: IdempotencyKeyDep,
    body: RefundCreate,
    refunds: RefundsDep,
) -> Response:
    return _sent_as_is(await refunds.create(caller, key, payment_id, body))


@router.get(
    "/refunds/{refund_id}",
    response_model=RefundPublic,
    responses={404: _ERROR},
    summary="Read a refund",
)
async def get_refund(refund_id: str, caller: CallerDep, refunds: RefundsDep) -> RefundPublic:
    return await refunds.view(caller, refund_id)


PayerIdPath = Annotated[
    str, Path(pattern=validation.PAYER_ID_RE.pattern, description="the caller's payer id")
]


@router.put(
    "/payers/{payer_id}",
    response_model=PayerPublic,
    responses={404: _ERROR, 409: _ERROR},
    summary="Enrol a payer (its phone and who it is); idempotent for its owner",
)
async def enroll_payer(
    payer_id: PayerIdPath, caller: CallerDep, body: PayerCreate, payers: PayersDep
) -> PayerPublic:
    return await payers.enroll(caller, payer_id, body)


@router.get(
    "/payers/{payer_id}",
    response_model=PayerPublic,
    responses={404: _ERROR},
    summary="Read an enrolled payer (masked)",
)
async def get_payer(payer_id: PayerIdPath, caller: CallerDep, payers: PayersDep) -> PayerPublic:
    return await payers.view(caller, payer_id)


_CODE_ERRORS: dict[int | str, dict[str, Any]] = {404: _ERROR, 409: _ERROR, 410: _ERROR, 422: _ERROR}


@router.post(
    "/payers/{payer_id}/phone-changes",
    status_code=202,
    response_model=PhoneChangePublic,
    responses={404: _ERROR, 422: _ERROR, 429: _ERROR},
    summary="Change the payer's phone: a code goes to the new phone, a notice to the old one",
)
async def request_phone_change(
    payer_id: PayerIdPath, caller: CallerDep, body: PhoneChangeCreate, payers: PayersDep
) -> PhoneChangePublic:
    return await payers.request_phone_change(caller, payer_id, body)


@router.post(
    "/payers/{payer_id}/phone-changes/{change_id}/verification",
    response_model=PayerPublic,
    responses=_CODE_ERRORS,
    summary="The code sent to the new phone: the payer now has the new phone",
)
async def confirm_phone_change(
    payer_id: PayerIdPath,
    change_id: str,
    caller: CallerDep,
    body: VerificationCreate,
    payers: PayersDep,
) -> PayerPublic:
    return await payers.confirm_phone_change(caller, payer_id, change_id, body.code)


@router.post(
    "/payers/{payer_id}/relatives",
    status_code=202,
    response_model=RelativePublic,
    responses={404: _ERROR, 409: _ERROR, 422: _ERROR, 429: _ERROR},
    summary="Bind a close relative (家庭共济): a code goes to the relative's enrolled phone",
)
async def bind_relative(
    payer_id: PayerIdPath, caller: CallerDep, body: RelativeCreate, relatives: RelativesDep
) -> RelativePublic:
    return await relatives.bind(caller, payer_id, body)


@router.post(
    "/payers/{payer_id}/relatives/{relative_payer_id}/verification",
    response_model=RelativePublic,
    responses=_CODE_ERRORS,
    summary="The code the relative received: the relative is bound",
)
async def confirm_relative(
    payer_id: PayerIdPath,
    relative_payer_id: PayerIdPath,
    caller: CallerDep,
    body: VerificationCreate,
    relatives: RelativesDep,
) -> RelativePublic:
    return await relatives.confirm(caller, payer_id, relative_payer_id, body.code)


@router.get(
    "/payers/{payer_id}/relatives",
    response_model=RelativeListPublic,
    responses={404: _ERROR},
    summary="The payer's family bindings (masked)",
)
async def list_relatives(
    payer_id: PayerIdPath, caller: CallerDep, relatives: RelativesDep
) -> RelativeListPublic:
    return await relatives.list_for(caller, payer_id)


@router.delete(
    "/payers/{payer_id}/relatives/{relative_payer_id}",
    response_model=RelativePublic,
    responses={404: _ERROR},
    summary="Unbind a relative (new medical-account payments for it are refused)",
)
async def unbind_relative(
    payer_id: PayerIdPath,
    relative_payer_id: PayerIdPath,
    caller: CallerDep,
    relatives: RelativesDep,
) -> RelativePublic:
    return await relatives.unbind(caller, payer_id, relative_payer_id)


@router.post(
    "/payers/{payer_id}/records-sessions",
    status_code=202,
    response_model=RecordsSessionPublic,
    responses={404: _ERROR, 429: _ERROR},
    summary="Ask for detailed records: a code goes to the enrolled phone",
)
async def open_records_session(
    payer_id: PayerIdPath, caller: CallerDep, sessions: RecordsSessionsDep
) -> RecordsSessionPublic:
    return await sessions.open(caller, payer_id)


@router.post(
    "/payers/{payer_id}/records-sessions/{session_id}/verification",
    response_model=RecordsSessionTokenPublic,
    responses=_CODE_ERRORS,
    summary="The code: a records-session token (X-Records-Session) for detailed records",
)
async def confirm_records_session(
    payer_id: PayerIdPath,
    session_id: str,
    caller: CallerDep,
    body: VerificationCreate,
    sessions: RecordsSessionsDep,
) -> RecordsSessionTokenPublic:
    return await sessions.confirm(caller, payer_id, session_id, body.code)


@router.post(
    "/medical-accounts/allocations",
    response_model=AllocationPublic,
    responses={409: _ERROR, 422: _ERROR},
    summary="Credit personal medical accounts (bureau role, the key's own region)",
)
async def allocate(
    bureau: BureauDep, key: IdempotencyKeyDep, body: AllocationCreate, allocations: AllocationsDep
) -> Response:
    return _sent_as_is(await allocations.allocate(bureau, key, body))


@router.get(
    "/premiums",
    response_model=PremiumSchedulePublic,
    summary="The premium schedule of a region and year (every scheme, or one)",
)
async def get_premiums(
    _caller: CallerDep,
    premiums: PremiumsDep,
    region: Annotated[str, Query(description="6-digit GB/T 2260 code", examples=["110000"])],
    year: Annotated[int, Query(ge=2000, le=2100, description="the insured year")],
    scheme: Annotated[Scheme | None, Query(description="one scheme; all when absent")] = None,
) -> PremiumSchedulePublic:
    return premiums.schedule(region, year, scheme)


@router.post(
    "/erasures",
    response_model=ErasurePublic,
    responses={404: _ERROR, 422: _ERROR},
    summary="Erase a person's personal data (operator role; crypto-shredding)",
)
async def create_erasure(
    _operator: OperatorDep, body: ErasureCreate, erasures: ErasuresDep
) -> ErasurePublic:
    return await erasures.erase(body)


async def _rate_limited(_request: Request, exc: RateLimited | Overloaded) -> JSONResponse:
    """The error object, and ``Retry-After`` (seconds) when the limit says when (429
    rate_limited, 503 overloaded)."""
    wait = exc.details.get("retry_after")
    headers = {"Retry-After": str(int(wait))} if wait is not None else None
    return JSONResponse(exc.to_body(), status_code=exc.status, headers=headers)


def create_app(
    settings: PaymentSettings,
    pool: asyncpg.Pool,
    *,
    risk: RiskClient | None = None,
    clock: Clock | None = None,
) -> FastAPI:
    """The payment API over ``pool``; ``risk`` replaces the HTTP client to risk and
    ``clock`` the time payer codes are issued and checked at (tests)."""
    app = FastAPI(
        title="Yibao payment API",
        version="1",
        description="Pay medical-insurance premiums and top up wallets (DESIGN.md).",
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    app.add_exception_handler(RateLimited, _rate_limited)  # type: ignore[arg-type]
    app.add_exception_handler(Overloaded, _rate_limited)  # type: ignore[arg-type]
    install_request_logging(app)

    async def ping() -> None:
        await pool.fetchval("SELECT 1")

    add_healthz(app, ping)
    risk_client = risk or RiskClient(
        settings.risk_url,
        settings.internal_token.get_secret_value(),
        timeout=settings.risk_timeout_seconds,
    )
    app.state.settings = settings
    app.state.pool = pool
    app.state.caller_keys = CallerKeys.from_settings(settings)
    requests = IdempotentRequests(settings, pool)
    codes = PayerCodes(settings, pool, clock=clock) if clock else PayerCodes(settings, pool)
    app.state.payers = Payers(settings, pool, codes)
    app.state.relatives = Relatives(pool, codes)
    app.state.records_sessions = RecordsSessions(settings, pool, codes)
    app.state.premiums = Premiums(
        settings.premium_schedule(),
        settings.premium_window(),
        enforce_schedule=settings.premium_schedule_enforced,
        paid_once=settings.premium_paid_once,
    )
    app.state.overload = OverloadGuard(
        pool,
        max_in_flight=settings.overload_max_in_flight,
        interval=settings.overload_check_interval_seconds,
        retry_after=settings.overload_retry_after_seconds,
        max_wait=settings.overload_max_wait_seconds,
    )
    app.state.intake = Intake(settings, pool, requests, app.state.payers, app.state.premiums)
    app.state.refunds = Refunds(settings, pool, requests)
    app.state.allocations = Allocations(settings, pool, requests)
    app.state.erasures = Erasures(settings, pool)
    app.state.verification = Verification(pool, risk_client, settings.topics)
    app.include_router(router)
    app.state.webhooks = WebhookEndpoints(settings, pool)
    app.include_router(webhook_api.router)
    add_metrics(app, "payment", samplers=_samplers(pool))
    document_api(app)
    return app


def _samplers(pool: asyncpg.Pool) -> list[tuple[str, Sampler]]:
    """What ``/metrics`` reads from the payment database at scrape time."""
    return [
        ("outbox", outbox_backlog(pool)),
        (
            "payments",
            counts_by(
                pool, "yibao_payments", "SELECT status, count(*) AS n FROM payments GROUP BY 1"
            ),
        ),
        (
            "refunds",
            counts_by(
                pool, "yibao_refunds", "SELECT status, count(*) AS n FROM refunds GROUP BY 1"
            ),
        ),
        *_webhook_samplers(pool),
        (
            "bank",
            counts_by(
                pool,
                "yibao_bank_calls",
                "SELECT kind, state, count(*) AS n FROM bank_calls GROUP BY 1, 2",
            ),
        ),
        (
            "unfinished",
            counts_by(
                pool,
                "yibao_payments_unfinished_oldest_seconds",
                "SELECT coalesce(extract(epoch FROM now() - min(updated_at)), 0) AS n"
                " FROM payments WHERE status IN ('requested', 'requires_verification',"
                " 'authorized')",
            ),
        ),
    ]


def _webhook_samplers(pool: asyncpg.Pool) -> list[tuple[str, Sampler]]:
    """Webhook deliveries, their failed attempts, the backlog of enabled endpoints (a
    disabled or deleted one's waiting deliveries are not a backlog), endpoints by status."""
    return [
        (
            "webhook_deliveries",
            counts_by(
                pool,
                "yibao_webhook_deliveries",
                "SELECT status, count(*) AS n FROM webhook_deliveries GROUP BY 1",
            ),
        ),
        (
            "webhook_failures",
            counts_by(
                pool,
                "yibao_webhook_failed_attempts",
                "SELECT coalesce(sum(attempts), 0) - count(*) FILTER (WHERE status ="
                " 'succeeded') AS n FROM webhook_deliveries",
            ),
        ),
        (
            "webhook_backlog",
            counts_by(
                pool,
                "yibao_webhook_oldest_pending_seconds",
                "SELECT coalesce(extract(epoch FROM now() - min(d.created_at)), 0) AS n"
                " FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id"
                " WHERE d.status = 'pending' AND e.status = 'enabled'",
            ),
        ),
        (
            "webhook_endpoints",
            counts_by(
                pool,
                "yibao_webhook_endpoints",
                "SELECT status, count(*) AS n FROM webhook_endpoints GROUP BY 1",
            ),
        ),
    ]
