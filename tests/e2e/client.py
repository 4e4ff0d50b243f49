"""An upstream caller of Yibao, speaking only the HTTP contracts of DESIGN.md.

Used by the e2e tests and by ``make demo``: it knows the payment API, the ledger API
and the development SMS gateway, and nothing inside the services.
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import re
import secrets
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

import httpx

CODE_RE = re.compile(r"验证码\s*(\d{6})")
FINAL = {"succeeded", "declined", "failed"}


ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
# Consecutive people from a random start: distinct within a run, rarely equal across runs.
_PEOPLE = itertools.count(secrets.randbelow(10_000_000))


def random_id_number(born_in: int | None = None) -> str:
    """A valid resident ID number (GB 11643) of a new person. The daily cap follows the
    person, so each test payer is its own person unless a test says otherwise.
    ``born_in``: the year of birth (the premium schedule's category follows the age)."""
    n = next(_PEOPLE)
    day_of_year, sequence = divmod(n % 336_000, 1000)
    month, day = divmod(day_of_year, 28)
    year = born_in if born_in is not None else 1950 + (n // 336_000) % 50
    first17 = f"110105{year}{month + 1:02d}{day + 1:02d}{sequence:03d}"
    total = sum(int(c) * w for c, w in zip(first17, ID_WEIGHTS, strict=True))
    return first17 + "10X98765432"[total % 11]


def premium_body(
    payer_id: str,
    amount: int,
    *,
    method: str = "bank_card",
    phone: str = "13800138000",
    region: str = "110000",
    id_number: str | None = None,
    scheme: str = "commercial_health",
    period: str = "2027",
) -> dict[str, Any]:
    """A premium for ``period``. Commercial health by default: it has no schedule (any
    positive amount within the method limit) and holds no slot, so tests about limits,
    caps and receipts pay what they like; tests about the schedule name their scheme."""
    id_number = id_number or random_id_number()
    return {
        "payer_id": payer_id,
        "payer_phone": phone,
        "beneficiary": {"id_number": id_number, "name": "张三", "relation": "self"},
        "purpose": {"type": "premium", "scheme": scheme, "region": region, "period": period},
        "amount": amount,
        "currency": "CNY",
        "method": method,
    }


def topup_body(payer_id: str, amount: int, *, phone: str = "13800138000") -> dict[str, Any]:
    body = premium_body(payer_id, amount, phone=phone)
    body["purpose"] = {"type": "wallet_topup", "region": "110000"}
    return body


def random_phone() -> str:
    return "139" + str(uuid.uuid4().int)[:8]


@dataclass
class Yibao:
    payment_url: str
    ledger_url: str
    sms_url: str
    api_key: str
    risk_url: str | None = None
    timeout: float = 10.0
    bank_url: str | None = None
    bureau_key: str | None = None
    webhook_url: str | None = None  # the development webhook receiver (services/devhooks)

    def as_caller(self, api_key: str) -> Yibao:
        """The same system seen by another caller key."""
        return replace(self, api_key=api_key)

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    async def _req(self, method: str, url: str, **kw: Any) -> httpx.Response:
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            return await client.request(method, url, **kw)

    async def create_payment(self, body: dict[str, Any], key: str | None = None) -> httpx.Response:
        headers = {**self._auth(), "Idempotency-Key": key or uuid.uuid4().hex}
        return await self._req(
            "POST", f"{self.payment_url}/v1/payments", json=body, headers=headers
        )

    async def get_payment(self, payment_id: str) -> dict[str, Any]:
        r = await self._req(
            "GET", f"{self.payment_url}/v1/payments/{payment_id}", headers=self._auth()
        )
        r.raise_for_status()
        return dict(r.json())

    async def wait_for(
        self, payment_id: str, statuses: set[str], timeout: float = 60.0
    ) -> dict[str, Any]:
        """Poll until the payment reaches one of ``statuses`` (and, on success, has its receipt
        when it is a premium)."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = await self.get_payment(payment_id)
            if last["status"] in statuses:
                return last
            await asyncio.sleep(0.1)
        raise AssertionError(f"payment {payment_id} stayed {last.get('status')}; wanted {statuses}")

    async def verify(self, payment_id: str, code: str) -> httpx.Response:
        return await self._req(
            "POST",
            f"{self.payment_url}/v1/payments/{payment_id}/verification",
            json={"code": code},
            headers=self._auth(),
        )

    async def sms(self, phone: str) -> list[dict[str, Any]]:
        r = await self._req("GET", f"{self.sms_url}/messages", params={"phone": phone})
        r.raise_for_status()
        return list(r.json())

    async def wait_sms(
        self, phone: str, contains: str, count: int = 1, timeout: float = 60.0
    ) -> list[dict[str, Any]]:
        """Messages to ``phone`` whose text contains ``contains``, once there are ``count``."""
        deadline = time.monotonic() + timeout
        found: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            found = [m for m in await self.sms(phone) if contains in m["text"]]
            if len(found) >= count:
                return found
            await asyncio.sleep(0.1)
        raise AssertionError(
            f"{phone} got {len(found)} SMS containing {contains!r}, wanted {count}"
        )

    async def code_for(self, phone: str, payee: str, amount_text: str, nth: int = 1) -> str:
        """The code in the latest code SMS naming this payee and amount, once the phone
        has received ``nth`` code messages in all."""
        messages = await self.wait_sms(phone, "验证码", count=nth)
        matching = [m for m in messages if payee in m["text"] and amount_text in m["text"]]
        assert matching, f"no code SMS for {amount_text} to {payee}: {messages}"
        found = CODE_RE.search(matching[-1]["text"])
        assert found, matching[-1]["text"]
        return found.group(1)

    async def balance(self, account_id: str) -> int:
        r = await self._req(
            "GET", f"{self.ledger_url}/v1/accounts/{account_id}", headers=self._auth()
        )
        r.raise_for_status()
        return int(r.json()["balance"])

    async def receipt(
        self, code: str, number: str, check_code: str | None = None
    ) -> dict[str, Any]:
        """A receipt as its owner reads it (this caller's key), or, with ``check_code``
        and no key, as the public does."""
        if check_code is None:
            headers, params = {**self._auth(), "Accept": "application/json"}, {}
        else:
            headers, params = {"Accept": "application/json"}, {"check_code": check_code}
        r = await self._req(
            "GET", f"{self.ledger_url}/v1/receipts/{code}/{number}", headers=headers, params=params
        )
        r.raise_for_status()
        return dict(r.json())

    async def erase(self, operator_key: str, **who: str) -> httpx.Response:
        """``POST /v1/erasures`` (issue 11) with an operator key: ``payer_id=`` or
        ``id_number=``."""
        return await self._req(
            "POST",
            f"{self.payment_url}/v1/erasures",
            json=who,
            headers={"Authorization": f"Bearer {operator_key}"},
        )

    async def verify_receipt(self, code: str, number: str, check_code: str) -> dict[str, Any]:
        r = await self._req(
            "POST",
            f"{self.ledger_url}/v1/receipts/verify",
            json={"code": code, "number": number, "check_code": check_code},
        )
        r.raise_for_status()
        return dict(r.json())

    async def daily_cap(self, payer_id: str) -> dict[str, Any]:
        assert self.risk_url, "risk_url not configured"
        r = await self._req(
            "GET", f"{self.risk_url}/v1/payers/{payer_id}/daily-cap", headers=self._auth()
        )
        r.raise_for_status()
        return dict(r.json())

    # -- money from outside: refunds, allocations, the development bank ----------------

    async def create_refund(
        self, payment_id: str, amount: int, reason: str = "退保", key: str | None = None
    ) -> httpx.Response:
        headers = {**self._auth(), "Idempotency-Key": key or uuid.uuid4().hex}
        return await self._req(
            "POST",
            f"{self.payment_url}/v1/payments/{payment_id}/refunds",
            json={"amount": amount, "reason": reason},
            headers=headers,
        )

    async def get_refund(self, refund_id: str) -> dict[str, Any]:
        r = await self._req(
            "GET", f"{self.payment_url}/v1/refunds/{refund_id}", headers=self._auth()
        )
        r.raise_for_status()
        return dict(r.json())

    async def wait_refund(
        self, refund_id: str, statuses: set[str], timeout: float = 60.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = await self.get_refund(refund_id)
            if last["status"] in statuses and (last["status"] != "succeeded" or "receipt" in last):
                return last
            await asyncio.sleep(0.1)
        raise AssertionError(f"refund {refund_id} stayed {last.get('status')}; wanted {statuses}")

    async def allocate(
        self, region: str, period: str, lines: list[dict[str, Any]], key: str | None = None
    ) -> httpx.Response:
        assert self.bureau_key, "bureau_key not configured"
        return await self._req(
            "POST",
            f"{self.payment_url}/v1/medical-accounts/allocations",
            json={"region": region, "period": period, "lines": lines},
            headers={
                "Authorization": f"Bearer {self.bureau_key}",
                "Idempotency-Key": key or uuid.uuid4().hex,
            },
        )

    async def bank_control(self, **settings: int) -> None:
        assert self.bank_url, "bank_url not configured"
        r = await self._req("POST", f"{self.bank_url}/control", json=settings)
        r.raise_for_status()

    async def bank_statement(self, day: str) -> list[dict[str, str]]:
        """The development bank's statement of one clearing day, as rows."""
        assert self.bank_url, "bank_url not configured"
        r = await self._req("GET", f"{self.bank_url}/statements/{day}.csv")
        r.raise_for_status()
        return list(csv.DictReader(io.StringIO(r.text)))

    # -- the resident's side (issue 12): records, overview, certificate -------------

    async def records(self, payer_id: str, **params: Any) -> httpx.Response:
        """``GET /v1/payers/{payer_id}/records`` (role, year, payee, item, limit,
        starting_after)."""
        return await self._req(
            "GET",
            f"{self.ledger_url}/v1/payers/{payer_id}/records",
            params=params,
            headers=self._auth(),
        )

    async def record(
        self, payer_id: str, payment_id: str, session: str | None = None
    ) -> httpx.Response:
        """One record in detail; ``session`` is the records-session token (SMS code)."""
        headers = {**self._auth(), **({"X-Records-Session": session} if session else {})}
        return await self._req(
            "GET",
            f"{self.ledger_url}/v1/payers/{payer_id}/records/{payment_id}",
            headers=headers,
        )

    async def overview(self, payer_id: str) -> httpx.Response:
        return await self._req(
            "GET", f"{self.ledger_url}/v1/payers/{payer_id}/overview", headers=self._auth()
        )

    async def certificate(
        self, payer_id: str, *, fmt: str = "", year: int | None = None
    ) -> httpx.Response:
        """The insurance certificate; ``fmt`` ``""`` (JSON), ``".html"`` or ``".pdf"``."""
        return await self._req(
            "GET",
            f"{self.ledger_url}/v1/payers/{payer_id}/certificate{fmt}",
            params={"year": year} if year is not None else {},
            headers=self._auth(),
        )

    async def verify_certificate(self, number: str, check_code: str) -> httpx.Response:
        """Public 查验 of a certificate: no key."""
        return await self._req(
            "POST",
            f"{self.ledger_url}/v1/certificates/verify",
            json={"number": number, "check_code": check_code},
        )

    # -- payers: enrolment, phone change, family bindings, records sessions ----------

    async def _payment_call(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> httpx.Response:
        return await self._req(
            method, f"{self.payment_url}/v1{path}", json=body, headers=self._auth()
        )

    async def enrol_payer(
        self, payer_id: str, phone: str, id_number: str, name: str
    ) -> httpx.Response:
        return await self._payment_call(
            "PUT", f"/payers/{payer_id}", {"phone": phone, "id_number": id_number, "name": name}
        )

    async def get_payer(self, payer_id: str) -> httpx.Response:
        return await self._payment_call("GET", f"/payers/{payer_id}")

    async def request_phone_change(self, payer_id: str, phone: str) -> httpx.Response:
        return await self._payment_call(
            "POST", f"/payers/{payer_id}/phone-changes", {"phone": phone}
        )

    async def confirm_phone_change(
        self, payer_id: str, change_id: str, code: str
    ) -> httpx.Response:
        return await self._payment_call(
            "POST", f"/payers/{payer_id}/phone-changes/{change_id}/verification", {"code": code}
        )

    async def bind_relative(
        self, payer_id: str, relative_payer_id: str, relation: str
    ) -> httpx.Response:
        return await self._payment_call(
            "POST",
            f"/payers/{payer_id}/relatives",
            {"relative_payer_id": relative_payer_id, "relation": relation},
        )

    async def confirm_relative(
        self, payer_id: str, relative_payer_id: str, code: str
    ) -> httpx.Response:
        return await self._payment_call(
            "POST", f"/payers/{payer_id}/relatives/{relative_payer_id}/verification", {"code": code}
        )

    async def relatives(self, payer_id: str) -> httpx.Response:
        return await self._payment_call("GET", f"/payers/{payer_id}/relatives")

    async def unbind_relative(self, payer_id: str, relative_payer_id: str) -> httpx.Response:
        return await self._payment_call(
            "DELETE", f"/payers/{payer_id}/relatives/{relative_payer_id}"
        )

    async def open_records_session(self, payer_id: str) -> httpx.Response:
        return await self._payment_call("POST", f"/payers/{payer_id}/records-sessions")

    async def confirm_records_session(
        self, payer_id: str, session_id: str, code: str
    ) -> httpx.Response:
        return await self._payment_call(
            "POST", f"/payers/{payer_id}/records-sessions/{session_id}/verification", {"code": code}
        )

    async def payer_code(self, phone: str, step: str, nth: int = 1) -> str:
        """The code in the latest SMS to ``phone`` naming ``step`` (e.g. "您正在绑定亲属"),
        once ``phone`` has received ``nth`` such messages."""
        messages = await self.wait_sms(phone, step, count=nth)
        found = CODE_RE.search(messages[-1]["text"])
        assert found, messages[-1]["text"]
        return found.group(1)

    # -- issue 14: the payment list, webhook endpoints and the development receiver --

    async def list_payments(self, **params: Any) -> dict[str, Any]:
        r = await self._req(
            "GET", f"{self.payment_url}/v1/payments", params=params, headers=self._auth()
        )
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def create_webhook_endpoint(
        self, name: str, event_types: list[str] | None = None
    ) -> dict[str, Any]:
        """An endpoint at the development receiver's ``/hooks/<name>``; the receiver is
        told its secret, so it verifies every delivery."""
        assert self.webhook_url is not None
        r = await self._payment_call(
            "POST",
            "/webhook-endpoints",
            {"url": f"{self.webhook_url}/hooks/{name}", "event_types": event_types or ["*"]},
        )
        assert r.status_code == 201, r.text
        endpoint = dict(r.json())
        await self.hook_secrets(name, [endpoint["secret"]])
        return endpoint

    async def webhook_deliveries(self, endpoint_id: str, **params: Any) -> dict[str, Any]:
        r = await self._req(
            "GET",
            f"{self.payment_url}/v1/webhook-endpoints/{endpoint_id}/deliveries",
            params=params,
            headers=self._auth(),
        )
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def hook_secrets(self, name: str, secrets_: list[str]) -> None:
        r = await self._req(
            "PUT", f"{self.webhook_url}/hooks/{name}/secrets", json={"secrets": secrets_}
        )
        r.raise_for_status()

    async def hook_failures(self, name: str, *, next: int = 0, seconds: float = 0) -> None:
        """Make the receiver's ``name`` fail the next N deliveries or for S seconds."""
        r = await self._req(
            "POST",
            f"{self.webhook_url}/hooks/{name}/failures",
            json={"next": next, "seconds": seconds},
        )
        r.raise_for_status()

    async def hook_messages(self, name: str) -> list[dict[str, Any]]:
        r = await self._req("GET", f"{self.webhook_url}/messages", params={"name": name})
        r.raise_for_status()
        return list(r.json())

    async def wait_hooks(
        self, name: str, payment_id: str, last_type: str, timeout: float = 60.0
    ) -> list[dict[str, Any]]:
        """The deliveries ``name`` accepted for ``payment_id``, once ``last_type`` is
        among them."""
        deadline = time.monotonic() + timeout
        found: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            found = [
                m
                for m in await self.hook_messages(name)
                if m["outcome"] == "accepted" and m["payload"]["data"].get("id") == payment_id
            ]
            if any(m["payload"]["type"] == last_type for m in found):
                return found
            await asyncio.sleep(0.2)
        raise AssertionError(f"{name} never got {last_type} for {payment_id}: {found}")
