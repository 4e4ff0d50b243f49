"""Seal keys rotate (issue 11), through the services' own wiring on a real PostgreSQL:
a payment whose phone was sealed under the old key (as ``v1``, the way it stays on the
kept-forever payments.v1) is decided by risk after the rotation, and the code risk
seals for notify carries the new key's id and opens on notify's side."""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.notify.config import NotifySettings
from services.risk.config import RiskSettings
from services.risk.handlers import build_handlers
from shared.crypto import SealError, b64d, b64e, code_aad, phone_aad, seal_key_id
from shared.db import create_pool, migrate
from shared.events import (
    BeneficiaryRef,
    PaymentDetails,
    PaymentRequested,
    Purpose,
    decode,
    encode,
    new_event,
)
from shared.money import utcnow
from tests.support import Infra

pytestmark = pytest.mark.integration
MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "risk" / "migrations"
PHONE = "13800138000"


def _key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def _v1_seal(key: str, plaintext: str, aad: str) -> str:
    """Sealed as before key ids: ``v1.<b64(nonce+ct)>``."""
    nonce = secrets.token_bytes(12)
    return "v1." + b64e(nonce + AESGCM(b64d(key)).encrypt(nonce, plaintext.encode(), aad.encode()))


def _details(old_key: str) -> PaymentDetails:
    payment_id = f"pay_{uuid.uuid4().hex}"
    return PaymentDetails(
        payment_id=payment_id,
        payer_id=f"u-{secrets.token_hex(4)}",
        payer_phone_masked="138****8000",
        payer_phone_sealed=_v1_seal(old_key, PHONE, phone_aad(payment_id)),
        beneficiary=BeneficiaryRef(
            id_number_masked="110105********002X",
            id_number_hash="ab" * 32,
            name="张三",
            relation="self",
        ),
        purpose=Purpose(type="premium", scheme="urban_rural_resident", region="110000"),
        amount=500_000,  # above the step-up threshold: risk seals a code for notify
        method="bank_card",
        payee_id="bureau:110000",
        payee_name="北京市医疗保障局",
        requested_at=utcnow(),
    )


async def test_risk_decides_on_a_phone_sealed_under_the_old_key(
    infra: Infra, new_database: Callable[[], Awaitable[str]]
) -> None:
    old, new = _key(), _key()
    dsn = await new_database()
    await migrate(dsn, MIGRATIONS)
    common = {"KAFKA_BOOTSTRAP": infra.kafka_bootstrap, "YIBAO_SEAL_KEY": new}
    rotated = RiskSettings(dsn=dsn, YIBAO_SEAL_KEYS_OLD=old, **common)  # type: ignore[arg-type]
    forgot = RiskSettings(dsn=dsn, **common)  # type: ignore[arg-type]
    details = _details(old)
    env = new_event(
        PaymentRequested(payment=details),
        producer="payment",
        key=details.payer_id,
        correlation_id=details.payment_id,
    )
    pool = await create_pool(dsn)
    try:
        handler = build_handlers(forgot)[PaymentRequested.event_type]
        with pytest.raises(SealError):  # without the old key the phone does not open
            async with pool.acquire() as conn, conn.transaction():
                await handler(conn, decode(encode(env)))
        handler = build_handlers(rotated)[PaymentRequested.event_type]
        async with pool.acquire() as conn, conn.transaction():
            await handler(conn, decode(encode(env)))
        rows = await pool.fetch("SELECT value FROM outbox ORDER BY id")
    finally:
        await pool.close()
    [step_up] = [decode(bytes(r["value"])).envelope for r in rows]
    assert step_up.event_type == "StepUpRequired"
    sealed = step_up.payload["code_sealed"]
    assert sealed.split(".")[:2] == ["v2", seal_key_id(b64d(new))]
    notify = NotifySettings(YIBAO_SEAL_KEYS_OLD=old, **common)  # type: ignore[arg-type]
    code = notify.sealer().open(sealed, aad=code_aad(step_up.payload["challenge_id"]))
    assert code.isdigit()
    phone = notify.sealer().open(
        step_up.payload["payer_phone_sealed"], aad=phone_aad(details.payment_id)
    )
    assert phone == PHONE
