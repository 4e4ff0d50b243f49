"""The resident's side (issue 12) through HTTP: a resident pays premiums and a top-up,
reads the records (filters, pages; the detail needs a records session), the overview
and the insurance certificate (PDF with Chinese text, verifiable in public); another
caller gets 404 for all of it (issue 11)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from shared.money import shanghai_day
from tests.e2e.client import FINAL, Yibao, premium_body, random_phone, topup_body
from tests.e2e.conftest import System
from tests.e2e.test_premiums import working_age_person
from tests.integration.test_receipt_pages import ensure_extras, tool_output

pytestmark = pytest.mark.e2e
THIS_YEAR = shanghai_day(datetime.now(UTC)).year


async def paid(yibao: Yibao, body: dict[str, object]) -> dict[str, object]:
    created = await yibao.create_payment(body)
    assert created.status_code == 202, created.text
    payment = await yibao.wait_for(created.json()["id"], FINAL)
    assert payment["status"] == "succeeded", payment
    return payment


async def test_a_residents_records_overview_and_certificate(system: System, yibao: Yibao) -> None:
    other = yibao.as_caller(system.env["YIBAO_API_KEYS"].split(",")[1])
    me, phone, id_number = "u-" + uuid.uuid4().hex[:10], random_phone(), working_age_person()

    def premium(amount: int, scheme: str) -> dict[str, object]:
        return premium_body(
            me, amount, phone=phone, id_number=id_number, scheme=scheme, period=str(THIS_YEAR)
        )

    resident = await paid(yibao, premium(79500, "urban_rural_resident"))
    topup = await paid(yibao, topup_body(me, 20000, phone=phone))
    commercial = await paid(yibao, premium(12000, "commercial_health"))
    refund = await yibao.create_refund(str(commercial["id"]), 12000)
    assert refund.status_code == 202, refund.text
    await yibao.wait_refund(refund.json()["id"], {"succeeded"})

    # The list: newest first, basic lines, filters and pages.
    listed = await yibao.records(me)
    assert listed.status_code == 200, listed.text
    records = listed.json()["records"]
    assert [r["payment_id"] for r in records] == [commercial["id"], topup["id"], resident["id"]]
    assert [r["status"] for r in records] == ["refunded", "paid", "paid"]
    assert records[2]["item"] == f"城乡居民基本医疗保险费 {THIS_YEAR}"
    assert records[2]["payee"] == "北京市医疗保障局" and records[2]["amount"] == 79500
    assert records[2]["receipt"]["number"] == resident["receipt"]["number"]  # type: ignore[index]

    async def ids(**params: object) -> list[str]:
        r = await yibao.records(me, **params)
        assert r.status_code == 200, r.text
        return [x["payment_id"] for x in r.json()["records"]]

    assert await ids(item="wallet_topup") == [topup["id"]]
    assert await ids(item="urban_rural_resident") == [resident["id"]]
    assert await ids(item="premium", year=THIS_YEAR) == [commercial["id"], resident["id"]]
    assert await ids(payee="bureau:110000", item="commercial_health") == [commercial["id"]]
    assert await ids(year=THIS_YEAR - 1) == []
    first = (await yibao.records(me, limit=2)).json()
    assert first["has_more"] is True
    assert await ids(limit=2, starting_after=first["next_starting_after"]) == [resident["id"]]
    assert await ids(role="insured") == [commercial["id"], resident["id"]]

    # The detail needs a records session (the SMS code), bound to this caller and payer.
    bare = await yibao.record(me, str(commercial["id"]))
    assert bare.status_code == 401, bare.text
    assert bare.json()["error"]["code"] == "records_session_required"
    forged = await yibao.record(me, str(commercial["id"]), "rs1.9999999999.x.y")
    assert forged.status_code == 403, forged.text
    # The resident asks for the detail: an SMS code to the enrolled phone, then a token.
    opened = await yibao.open_records_session(me)
    assert opened.status_code == 202, opened.text
    code = await yibao.payer_code(phone, "您正在查询消费明细")
    confirmed = await yibao.confirm_records_session(me, opened.json()["id"], code)
    assert confirmed.status_code == 200, confirmed.text
    token = confirmed.json()["token"]
    detail = await yibao.record(me, str(commercial["id"]), token)
    assert detail.status_code == 200, detail.text
    d = detail.json()
    assert [(x["kind"], x["amount"]) for x in d["receipts"]] == [
        ("original", 12000),
        ("red", -12000),
    ]
    assert d["refunds"][0]["refund_id"] == refund.json()["id"] and d["bank_reference"]

    # The overview: balances, years insured, this year's status.
    overview = await yibao.overview(me)
    assert overview.status_code == 200, overview.text
    o = overview.json()
    assert (o["wallet_balance"], o["medical_account_balance"]) == (20000, 0)
    assert o["years_insured"] == 1
    assert [(i["scheme"], i["region"], i["status"]) for i in o["insurance"]] == [
        ("urban_rural_resident", "110000", "insured")
    ]

    # The certificate: masked, signed; the PDF reads in Chinese; 查验 in public.
    cert = await yibao.certificate(me)
    assert cert.status_code == 200, cert.text
    c = cert.json()
    assert c["certificate"]["insured"]["name"] == "张*"
    assert id_number not in cert.text and me not in cert.text
    pdf = await yibao.certificate(me, fmt=".pdf")
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    ensure_extras("pdftotext")
    text = tool_output("pdftotext", "-", "-", stdin=pdf.content)
    for words in ("电子参保凭证", "城乡居民基本医疗保险", "北京市医疗保障局", c["number"]):
        assert words in text, text
    verified = await yibao.verify_certificate(c["number"], c["check_code"])
    assert verified.status_code == 200, verified.text
    assert verified.json()["valid"] is True
    assert verified.json()["certificate"] == c["certificate"]
    assert verified.json()["key_id"] == c["key_id"]
    wrong = await yibao.verify_certificate(c["number"], "AAAAAAAA")
    assert wrong.json()["valid"] is False

    # Another caller: the 404 of a payer nobody enrolled, everywhere.
    for answer in (
        await other.records(me),
        await other.record(me, str(resident["id"]), token),
        await other.open_records_session(me),
        await other.overview(me),
        await other.certificate(me),
        await other.certificate(me, fmt=".pdf"),
    ):
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["code"] == "not_found"
    for account in (f"wallet:{me}", f"medical:{me}"):
        with pytest.raises(Exception, match="404"):
            await other.balance(account)
    assert await yibao.balance(f"wallet:{me}") == 20000
