"""Public receipts through HTTP only (issue 11): a premium paid by one caller; the
public needs the check code and sees the masked face; the owner's key reads the full,
signed face; another caller is the public; the 查验 count goes up once per check."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import httpx
import pytest

from services.ledger.signing import verify_face
from tests.e2e.client import Yibao, premium_body, random_phone
from tests.e2e.conftest import System

pytestmark = pytest.mark.e2e


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def read(
    ledger: str, code: str, number: str, *, suffix: str = "", **kw: Any
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=ledger, timeout=10.0) as http:
        return await http.get(f"/v1/receipts/{code}/{number}{suffix}", **kw)


async def test_public_receipt_is_masked_and_needs_the_check_code(
    system: System, yibao: Yibao
) -> None:
    owner_key, other_key = system.env["YIBAO_API_KEYS"].split(",")
    payer = f"u-{uuid.uuid4().hex[:10]}"
    r = await yibao.create_payment(premium_body(payer, 38_000, phone=random_phone()))
    assert r.status_code in (200, 201, 202), r.text
    paid = await yibao.wait_for(r.json()["id"], {"succeeded", "failed", "declined"})
    assert paid["status"] == "succeeded", paid
    code, number, check = (paid["receipt"][k] for k in ("code", "number", "check_code"))
    ledger = yibao.ledger_url

    # Walking numbers without the check code finds nothing: 404, like an unknown one.
    for params in ({}, {"check_code": "AAAAAA" if check != "AAAAAA" else "BBBBBB"}):
        missing = await read(ledger, code, number, params=params)
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"
    assert (await read(ledger, code, number, headers=bearer(other_key))).status_code == 404
    assert (await read(ledger, code, number, suffix=".html")).status_code == 404

    public = await read(ledger, code, number, params={"check_code": check})
    assert public.status_code == 200, public.text
    body = public.json()
    assert body["face"] == "masked"
    assert body["receipt"]["insured"]["name"] == "张*"
    for secret in ("张三", payer, paid["id"]):
        assert secret not in public.text, secret
    assert body["checked_count"] == 1

    page = await read(ledger, code, number, suffix=".html", params={"check_code": check})
    assert page.status_code == 200 and "脱敏票面" in page.text and "张三" not in page.text
    assert "本票据已被查验 2 次" in page.text

    full = await read(ledger, code, number, headers=bearer(owner_key))
    assert full.status_code == 200
    face = full.json()
    assert face["face"] == "full" and face["receipt"]["payer"]["id"] == payer
    async with httpx.AsyncClient(base_url=ledger, timeout=10.0) as http:
        key = (await http.get("/v1/receipts/public-key")).json()
        listed = (await http.get("/v1/receipts/public-keys")).json()
    assert key["key_id"] == face["key_id"] and key["purpose"] == "receipts"
    purposes = {k["purpose"] for k in listed if k["current"]}
    assert purposes == {"receipts", "journal", "settlement", "manifests", "certificates"}
    assert verify_face(face["receipt"], face["signature"], base64.b64decode(key["public_key"]))
    assert not verify_face(body["receipt"], body["signature"], base64.b64decode(key["public_key"]))

    verdict = await yibao.verify_receipt(code, number, check)
    assert verdict["valid"] is True and verdict["checked_count"] == 3
    assert payer not in str(verdict) and "张三" not in str(verdict)
