"""Who reads which face of a receipt (issue 11), over HTTP against a real PostgreSQL.

The public needs code, number and check code and gets the masked face; a wrong or
missing check code is the same 404 as an unknown receipt. The owning caller's key reads
the full, signed face without the check code; another caller is the public."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import httpx
import pytest

from services.ledger.api import create_app
from services.ledger.domain.posting import PostingKeys
from services.ledger.receipts.service import register_signers
from services.ledger.signing import LedgerSigners, ReceiptSigner, SigningPurpose, verify_face
from shared.crypto import KeyPurpose, derive_key
from tests.integration.test_ledger_flow import authorized
from tests.integration.test_ledger_refunds import refund
from tests.integration.test_receipt_pages import (
    AUTH,
    OPERATOR_KEY,
    OTHER_KEY,
    OWNER,
    Receipts,
    ensure_extras,
    ledger_settings,
    open_receipts,
    tool_output,
)
from tests.support import Infra

pytestmark = pytest.mark.integration

OTHER = {"Authorization": f"Bearer {OTHER_KEY}"}
OPERATOR = {"Authorization": f"Bearer {OPERATOR_KEY}"}


@pytest.fixture
async def receipts(
    infra: Infra, new_database: Callable[..., Awaitable[str]]
) -> AsyncIterator[Receipts]:
    async with open_receipts(new_database) as opened:
        yield opened


def wrong(check: str) -> str:
    return "AAAAAA" if check != "AAAAAA" else "BBBBBB"


def without(number: str, body: dict[str, Any]) -> str:
    """The error object with the receipt number and the request's own id left out."""
    error = {k: v for k, v in body["error"].items() if k != "request_id"}
    return json.dumps(error, ensure_ascii=False).replace(number, "N")


async def public_key(http: httpx.AsyncClient) -> bytes:
    return base64.b64decode((await http.get("/v1/receipts/public-key")).json()["public_key"])


async def test_public_read_needs_the_right_check_code(receipts: Receipts) -> None:
    payment_id = await receipts.pay("u-100042", 38_000)
    code, number, check = await receipts.ref(payment_id)
    url = f"/v1/receipts/{code}/{number}"
    unknown_number = f"{int(number) + 500:010d}"
    unknown = await receipts.http.get(
        f"/v1/receipts/{code}/{unknown_number}", params={"check_code": wrong(check)}
    )
    assert unknown.status_code == 404
    for params in ({}, {"check_code": wrong(check)}, {"check_code": ""}, {"check_code": "!!"}):
        r = await receipts.http.get(url, params=params)
        assert r.status_code == 404, params
        assert r.json()["error"]["code"] == "not_found"
        # No oracle: the very answer an unknown receipt gets.
        assert without(number, r.json()) == without(unknown_number, unknown.json())

    r = await receipts.http.get(url, params={"check_code": check.lower()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["face"] == "masked"
    assert body["check_code"] == check  # what the reader gave, nothing more
    face = body["receipt"]
    assert face["payer"] == {"id_masked": "u-****42", "name": "张*"}
    assert face["insured"]["name"] == "张*"
    assert face["insured"]["id_number_masked"] == "110105********002X"
    assert face["total"] == 38_000 and face["payee"] == "北京市医疗保障局"
    text = r.text
    for secret in ("张三", "u-100042", payment_id):
        assert secret not in text, secret
    assert "no-store" in r.headers["cache-control"]
    # The signature covers the full face: it does not verify against the masked one.
    assert not verify_face(face, body["signature"], await public_key(receipts.http))
    # Each public read is one check (查验), shared with POST /v1/receipts/verify.
    assert body["checked_count"] == 1
    again = (await receipts.http.get(url, params={"check_code": check})).json()
    assert again["checked_count"] == 2
    verified = await receipts.http.post(
        "/v1/receipts/verify", json={"code": code, "number": number, "check_code": check}
    )
    assert verified.json()["checked_count"] == 3
    assert "u-100042" not in verified.text and "张三" not in verified.text


async def test_the_owner_reads_the_full_face_another_caller_does_not(receipts: Receipts) -> None:
    payment_id = await receipts.pay("u-100042", 38_000)
    code, number, check = await receipts.ref(payment_id)
    url = f"/v1/receipts/{code}/{number}"

    owner = await receipts.http.get(url, headers=AUTH)
    assert owner.status_code == 200, owner.text
    body = owner.json()
    assert body["face"] == "full"
    assert body["receipt"]["payer"]["id"] == "u-100042"
    assert body["receipt"]["insured"]["name"] == "张三"
    assert body["receipt"]["payment_id"] == payment_id
    assert verify_face(body["receipt"], body["signature"], await public_key(receipts.http))
    assert body["checked_count"] == 0  # the owner reading is not a check
    assert "authorization" in owner.headers["vary"].lower()

    assert (await receipts.http.get(url, headers=OTHER)).status_code == 404
    other = await receipts.http.get(url, headers=OTHER, params={"check_code": check})
    assert other.status_code == 200
    assert other.json()["face"] == "masked"
    assert "张三" not in other.text and "u-100042" not in other.text

    # An operator reads every full face; an unknown key is refused, not ignored.
    operator = (await receipts.http.get(url, headers=OPERATOR)).json()
    assert operator["face"] == "full" and operator["receipt"] == body["receipt"]
    bad = await receipts.http.get(url, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401


async def test_a_receipt_from_before_owners_is_public_or_operator_only(
    receipts: Receipts,
) -> None:
    code, number, check = await receipts.ref(await receipts.pay("u-old", 38_000, owner=None))
    url = f"/v1/receipts/{code}/{number}"
    assert (await receipts.http.get(url, headers=AUTH)).status_code == 404
    assert (await receipts.http.get(url, headers=AUTH, params={"check_code": check})).json()[
        "face"
    ] == "masked"
    assert (await receipts.http.get(url, headers=OPERATOR)).json()["face"] == "full"


async def test_red_receipt_and_reversals_in_public(receipts: Receipts) -> None:
    """An original read in public lists its reversals without refund ids; a red
    receipt needs its own check code, and shows its original."""
    paid = authorized("u-100042", 38_000, method="bank_card", purpose="premium")
    paid.payload["payment"]["caller_id"] = OWNER
    await receipts.post(paid)
    code, number, check = await receipts.ref(str(paid.correlation_id))
    back = refund(paid, 10_000)
    back.payload["caller_id"] = OWNER
    await receipts.post(back)
    refund_id = back.payload["refund_id"]
    red = await receipts.pool.fetchrow(
        "SELECT code, number, check_code FROM receipts WHERE face ->> 'refund_id' = $1", refund_id
    )
    assert red is not None
    body = (
        await receipts.http.get(f"/v1/receipts/{code}/{number}", params={"check_code": check})
    ).json()
    assert body["kind"] == "original" and body["reversed_amount"] == 10_000
    assert [(r["number"], r["amount"]) for r in body["reversals"]] == [(red["number"], 10_000)]
    assert "refund_id" not in body["reversals"][0]
    red_url = f"/v1/receipts/{red['code']}/{red['number']}"
    assert (await receipts.http.get(red_url, params={"check_code": check})).status_code == 404
    red_body = (await receipts.http.get(red_url, params={"check_code": red["check_code"]})).json()
    assert red_body["kind"] == "red" and red_body["face"] == "masked"
    assert red_body["relates_to"] == {"code": code, "number": number}
    assert refund_id not in json.dumps(red_body)
    owner = (await receipts.http.get(red_url, headers=AUTH)).json()
    assert owner["face"] == "full" and owner["receipt"]["refund_id"] == refund_id


async def test_html_and_pdf_follow_the_same_rule(receipts: Receipts) -> None:
    ensure_extras("pdftotext")
    code, number, check = await receipts.ref(await receipts.pay("u-100042", 38_000))
    base = f"/v1/receipts/{code}/{number}"
    for path, accept in (
        (base, "text/html"),
        (base + ".html", None),
        (base, "application/pdf"),
        (base + ".pdf", None),
    ):
        headers = {"Accept": accept} if accept else {}
        assert (await receipts.http.get(path, headers=headers)).status_code == 404
        forged = await receipts.http.get(path, headers=headers, params={"check_code": wrong(check)})
        assert forged.status_code == 404
        assert forged.json()["error"]["code"] == "not_found"
        other = await receipts.http.get(path, headers={**headers, **OTHER})
        assert other.status_code == 404

    page = await receipts.http.get(base + ".html", params={"check_code": check})
    assert page.status_code == 200
    assert 'id="face-masked"' in page.text and "脱敏票面" in page.text
    assert "张*" in page.text and "张三" not in page.text and "u-100042" not in page.text
    assert page.headers["referrer-policy"] == "no-referrer"
    owner_page = await receipts.http.get(base + ".html", headers=AUTH)
    assert owner_page.status_code == 200
    assert 'id="face-masked"' not in owner_page.text

    pdf = await receipts.http.get(base + ".pdf", params={"check_code": check})
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF-")
    text = tool_output("pdftotext", "-layout", "-", "-", stdin=pdf.content)
    assert "脱敏票面" in text and "张三" not in text
    owner_pdf = await receipts.http.get(base + ".pdf", headers=AUTH)
    owner_text = tool_output("pdftotext", "-layout", "-", "-", stdin=owner_pdf.content)
    assert "脱敏票面" not in owner_text


async def test_public_keys_serve_every_key_in_force_after_a_rotation(
    receipts: Receipts,
) -> None:
    old_signer = receipts.handlers.keys.signer
    old = await receipts.ref(await receipts.pay("u-100042", 38_000))
    # The old key is served, and was recorded at the instance's start-up (receipts_app).
    listed = (await receipts.http.get("/v1/receipts/public-keys")).json()
    assert [(k["key_id"], k["current"]) for k in listed] == [(old_signer.key_id, True)]

    # Rotate: a new instance signs with a new key.
    new_signer = ReceiptSigner(uuid.uuid4().bytes * 2)
    rotated = Receipts(
        receipts.pool,
        replace(receipts.handlers, keys=PostingKeys(check_key=b"h" * 32, signer=new_signer)),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(
                app=create_app(ledger_settings(1000), receipts.pool, signer=new_signer)
            ),
            base_url="http://ledger",
        ),
    )
    async with rotated.http:
        new = await rotated.ref(await rotated.pay("u-100042", 38_000))
        keys = (await rotated.http.get("/v1/receipts/public-keys")).json()
        assert [(k["key_id"], k["current"]) for k in keys] == [
            (old_signer.key_id, False),
            (new_signer.key_id, True),
        ]
        assert (await rotated.http.get("/v1/receipts/public-key")).json()[
            "key_id"
        ] == new_signer.key_id
        by_id = {k["key_id"]: base64.b64decode(k["public_key"]) for k in keys}
        for code, number, _check in (old, new):
            body = (await rotated.http.get(f"/v1/receipts/{code}/{number}", headers=AUTH)).json()
            assert verify_face(body["receipt"], body["signature"], by_id[body["key_id"]])


async def test_codes_in_other_digits_are_refused(receipts: Receipts) -> None:
    """票据代码 and 票据号码 are ASCII digits: the full-width or Arabic-Indic spelling of a
    real receipt's code is refused (400), not looked up, not counted."""
    code, number, check = await receipts.ref(await receipts.pay("u-100042", 38_000))
    full_width = code.translate({ord(d): 0xFF10 + int(d) for d in "0123456789"})
    arabic = number.translate({ord(d): 0x0660 + int(d) for d in "0123456789"})
    for param, body in (
        ("code", {"code": full_width, "number": number, "check_code": check}),
        ("number", {"code": code, "number": arabic, "check_code": check}),
    ):
        r = await receipts.http.post("/v1/receipts/verify", json=body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param
    read = await receipts.http.get(
        f"/v1/receipts/{full_width}/{number}", params={"check_code": check}
    )
    assert read.status_code == 404
    page = await receipts.http.get(f"/v1/receipts/{code}/{number}", headers=AUTH)
    assert page.json()["checked_count"] == 0


def ledger_client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ledger")


async def test_one_key_per_purpose_after_the_undivided_key(receipts: Receipts) -> None:
    """Issue 11, upgrading: receipts signed by the undivided root key stay verifiable
    (the root is listed, purpose ``all``, while its receipts are in force); the same
    seed now gives one key per purpose, each listed with its purpose; check codes made
    before still check (they are stored, not recomputed)."""
    seed = uuid.uuid4().bytes * 2
    root = ReceiptSigner(seed)
    before = Receipts(
        receipts.pool,
        replace(receipts.handlers, keys=PostingKeys(check_key=b"h" * 32, signer=root)),
        ledger_client(create_app(ledger_settings(1000), receipts.pool, signer=root)),
    )
    await register_signers(receipts.pool, LedgerSigners.undivided(root))
    async with before.http:
        old = await before.ref(await before.pay("u-100042", 38_000))

    signers = LedgerSigners.derive(seed)  # the same YIBAO_RECEIPT_SIGNING_KEY, upgraded
    await register_signers(receipts.pool, signers, undivided=root)
    keys = PostingKeys(
        check_key=derive_key(b"h" * 32, KeyPurpose.CHECK_CODE),
        signer=signers.receipts,
        journal_signer=signers.journal,
    )
    after = Receipts(
        receipts.pool,
        replace(receipts.handlers, keys=keys),
        ledger_client(create_app(ledger_settings(1000), receipts.pool, signers=signers)),
    )
    async with after.http:
        new = await after.ref(await after.pay("u-100042", 38_000))
        listed = (await after.http.get("/v1/receipts/public-keys")).json()
        assert (await after.http.get("/v1/journal/public-keys")).json() == listed
        journal_key = (await after.http.get("/v1/journal/public-key")).json()
        by_id = {k["key_id"]: k for k in listed}
        # The fixture's own key signed nothing: it is not listed.
        assert receipts.handlers.keys.signer.key_id not in by_id
        assert (by_id[root.key_id]["purpose"], by_id[root.key_id]["current"]) == ("all", False)
        for purpose in SigningPurpose:
            listed_key = by_id[signers.signer(purpose).key_id]
            assert (listed_key["purpose"], listed_key["current"]) == (purpose, True)
        assert len(listed) == len(SigningPurpose) + 1
        assert journal_key["key_id"] == signers.journal.key_id
        assert journal_key["purpose"] == "journal"

        faces = {}
        for code, number, check in (old, new):
            body = (await after.http.get(f"/v1/receipts/{code}/{number}", headers=AUTH)).json()
            key = by_id[body["key_id"]]
            assert verify_face(
                body["receipt"], body["signature"], base64.b64decode(key["public_key"])
            )
            faces[number] = key["purpose"]
            verdict = await after.http.post(
                "/v1/receipts/verify", json={"code": code, "number": number, "check_code": check}
            )
            assert verdict.json()["valid"] is True
        assert faces == {old[1]: "all", new[1]: "receipts"}
