"""Erasure (issue 11) through every service: pay a premium, erase the person as an
operator, and the receipt reads 已删除 while the payment, the receipt's check and the
audit stay as they were."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from services.ledger.audit.cli import main as audit_main
from tests.e2e.client import Yibao, premium_body, random_phone
from tests.e2e.conftest import System

pytestmark = pytest.mark.e2e
ERASED = "已删除"


async def test_pay_erase_receipt_erased_payment_verifies_audit_clean(
    yibao: Yibao, system: System, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    operator_key = system.env["YIBAO_OPERATOR_API_KEYS"].split(",")[0]
    payer = "u-" + uuid.uuid4().hex[:10]
    r = await yibao.create_payment(premium_body(payer, 38000, phone=random_phone()))
    assert r.status_code == 202, r.text
    p = await yibao.wait_for(r.json()["id"], {"succeeded", "failed", "declined"})
    assert p["status"] == "succeeded", p
    ref = p["receipt"]
    full = await yibao.receipt(ref["code"], ref["number"])
    assert full["personal"] == {
        "name": "张三",
        "id_number_masked": full["personal"]["id_number_masked"],
    }
    assert "张三" not in json.dumps(full["receipt"], ensure_ascii=False)

    # A caller key may not erase; an operator may, once.
    denied = await yibao.erase(yibao.api_key, payer_id=payer)
    assert denied.status_code == 403, denied.text
    erased = await yibao.erase(operator_key, payer_id=payer)
    assert erased.status_code == 200, erased.text
    assert erased.json()["key_ids"] and erased.json()["payer_ids"] == [payer]

    # The ledger drops its key: every read of the receipt shows 已删除.
    for _ in range(100):
        full = await yibao.receipt(ref["code"], ref["number"])
        if full["personal"]["name"] == ERASED:
            break
        await asyncio.sleep(0.2)
    assert full["personal"] == {"name": ERASED, "id_number_masked": ERASED}
    public = await yibao.receipt(ref["code"], ref["number"], ref["check_code"])
    assert public["receipt"]["insured"]["name"] == ERASED
    verdict = await yibao.verify_receipt(ref["code"], ref["number"], ref["check_code"])
    assert verdict["valid"] is True
    paid = await yibao.get_payment(p["id"])
    assert paid["status"] == "succeeded" and paid["amount"] == 38000
    assert paid["beneficiary"]["name"] == ERASED

    # The audit replays the log CLEAN and counts the erased receipt.
    api_key_file = tmp_path / "api-key"  # never on the command line
    api_key_file.write_text(yibao.api_key)
    args = [
        "replay",
        "--bootstrap",
        system.env["KAFKA_BOOTSTRAP"],
        "--topic-prefix",
        system.env["YIBAO_TOPIC_PREFIX"],
        "--ledger-url",
        yibao.ledger_url,
        "--api-key-file",
        str(api_key_file),
        "--progress-every",
        "0",
        "--json",
    ]
    for _ in range(50):  # until PersonalDataErased is on payments.v1
        code = await asyncio.to_thread(audit_main, args)
        report = json.loads(capsys.readouterr().out)
        if report["personal"]["erasures"] >= 1:
            break
        await asyncio.sleep(0.3)
    assert code == 0, report["discrepancies"]
    assert report["personal"]["erased_receipts"] >= 1
