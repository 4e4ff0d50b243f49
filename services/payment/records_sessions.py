"""Records sessions: the detailed records (消费明细) need a fresh SMS code.

``POST /v1/payers/{payer_id}/records-sessions`` sends a code to the payer's enrolled
phone; the code, posted to ``…/records-sessions/{id}/verification``, answers a session
token (``shared.sessions``) for this caller and payer, valid
``PAYMENT_RECORDS_SESSION_MINUTES`` (10). The ledger accepts it on detailed-record
reads (header ``X-Records-Session``) without calling back. The token is not stored:
it is a MAC, and a code is single use, so each token comes from one fresh code.
"""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import structlog

from services.payment.config import PaymentSettings
from services.payment.payer_codes import PayerCodes, owned_payer
from services.payment.schemas import RecordsSessionPublic, RecordsSessionTokenPublic
from services.payment.store import Payer, StoredPayerCode
from shared.sessions import issue_records_session

log = structlog.get_logger(__name__)


class RecordsSessions:
    def __init__(self, settings: PaymentSettings, pool: asyncpg.Pool, codes: PayerCodes) -> None:
        self._pool = pool
        self._codes = codes
        self._key = settings.records_session_key()
        self._lifetime = timedelta(minutes=settings.records_session_minutes)

    async def open(self, caller: str, payer_id: str) -> RecordsSessionPublic:
        """A code to the enrolled phone; the session id to verify it under."""
        async with self._pool.acquire() as conn, conn.transaction():
            payer = await owned_payer(conn, caller, payer_id)
            issued = await self._codes.issue(
                conn,
                payer=payer,
                purpose="records_session",
                subject=payer_id,
                phone=self._codes.open_payer_phone(payer),
            )
        return RecordsSessionPublic(
            id=issued.code_id,
            payer_id=payer_id,
            phone=issued.phone_masked,
            status="pending",
            expires_at=issued.expires_at,
        )

    async def confirm(
        self, caller: str, payer_id: str, session_id: str, code: str
    ) -> RecordsSessionTokenPublic:
        """The right code: a token for this caller (its pseudonymous id, as on
        ``PaymentDetails.caller_id``) and payer until now + the session's lifetime."""

        async def token(
            _conn: asyncpg.Connection, payer: Payer, _stored: StoredPayerCode
        ) -> RecordsSessionTokenPublic:
            expires_at = (self._codes.now() + self._lifetime).replace(microsecond=0)
            issued = issue_records_session(
                self._key, caller=payer.caller, payer_id=payer.payer_id, expires_at=expires_at
            )
            log.info("records_session_opened", payer_id=payer.payer_id, session_id=session_id)
            return RecordsSessionTokenPublic(token=issued, expires_at=expires_at)

        return await self._codes.confirm(
            session_id,
            payer_id=payer_id,
            caller=caller,
            purpose="records_session",
            presented=code,
            on_pass=token,
        )
