"""Erasure (issue 11) through every service: pay a premium, erase the person as an
operator, and the receipt reads 已删除 while the payment, the receipt's check and the
audit stay as they were. The resident's phone goes too: no phone sealed on payments.v1,
risk.v1 or ledger.v1 for that payment opens with any key a service still holds, and the
payer's next payment works under a new person key."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from services.ledger.audit.cli import main as audit_main
from shared.crypto import Sealer, SealError, parse_key, phone_aad
from shared.events import Event
from shared.personal import is_sealed, open_personal, person_key_aad
from shared.topic_reader import read_topic
from tests.e2e.client import Yibao, premium_body, random_phone
from tests.e2e.conftest import System
from tests.e2e.test_journeys import pay_with_code

pytestmark = pytest.mark.e2e
ERASED = "已删除"


async def test_pay_erase_receipt_erased_payment_verifies_audit_clean(
    yibao: Yibao, system: System, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    operator_key = system.env["YIBAO_OPERATOR_API_KEYS"].split(",")[0]
    payer, phone = "u-" + uuid.uuid4().hex[:10], random_phone()
    # Large: risk asks for the SMS code, so risk.v1 carries the phone too.
    p: dict[str, Any] = await pay_with_code(yibao, premium_body(payer, 250000, phone=phone))
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
    assert paid["status"] == "succeeded" and paid["amount"] == 250000
    assert paid["beneficiary"]["name"] == ERASED
    assert paid["payer_phone"] == ERASED

    # No phone of that payment on the kept-forever topics opens with any key a service
    # still holds (the seal keys, every live person key of payment, risk, notify, ledger).
    erased_keys = set(erased.json()["key_ids"])
    for _ in range(100):  # until risk and notify have dropped their copies
        if not erased_keys & set(await live_person_keys(system)):
            break
        await asyncio.sleep(0.2)
    keys = await live_person_keys(system)
    assert not erased_keys & set(keys)
    sealers = system_sealers(system)
    events = await kept_events(system)
    mine = [e for e in events if p["id"] in json.dumps(e.payload.model_dump(mode="json"))]
    phones = [v for e in mine for v in sealed_phones(e)]
    assert len(phones) >= 4  # requested, step-up, outcome, receipt at least
    assert all(is_sealed(v) for v, _ in phones)  # all per person (p1.…)
    assert not [v for v, aads in phones if opens(v, aads, sealers, keys)]
    assert all(not e.payload.model_dump().get("payer_phone_masked") for e in mine)

    # The payer pays again (its phone enrolled again): a new person key, the SMS arrives.
    again = await yibao.create_payment(premium_body(payer, 38000, phone=phone))
    assert again.status_code == 202, again.text
    done = await yibao.wait_for(again.json()["id"], {"succeeded", "failed", "declined"})
    assert done["status"] == "succeeded", done
    await yibao.wait_sms(phone, done["receipt"]["number"])
    keys = await live_person_keys(system)
    fresh = [
        v
        for e in await kept_events(system)
        if again.json()["id"] in json.dumps(e.payload.model_dump(mode="json"))
        for v in sealed_phones(e)
    ]
    assert fresh and all(opens(v, aads, sealers, keys) == phone for v, aads in fresh)
    assert not {v.split(".")[1] for v, _ in fresh} & erased_keys

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


async def live_person_keys(system: System) -> dict[str, bytes]:
    """Every person key a service still holds (payment's live ones, the copies of the
    ledger, risk and notify), opened with the system seal keys."""
    sealers = system_sealers(system)
    found: dict[str, bytes] = {}
    for dsn_name in ("PAYMENT_DSN", "LEDGER_DSN", "RISK_DSN", "NOTIFY_DSN"):
        conn = await asyncpg.connect(system.env[dsn_name])
        try:
            rows = await conn.fetch(
                "SELECT key_id, key_sealed FROM person_keys WHERE key_sealed IS NOT NULL"
            )
        finally:
            await conn.close()
        for r in rows:
            for sealer in sealers:
                try:
                    raw = sealer.open(r["key_sealed"], aad=person_key_aad(r["key_id"]))
                except SealError:
                    continue
                found[r["key_id"]] = bytes.fromhex(raw)
    return found


def system_sealers(system: System) -> list[Sealer]:
    env = system.env
    named = [env.get("YIBAO_SEAL_KEY", ""), *env.get("YIBAO_SEAL_KEYS_OLD", "").split(",")]
    return [Sealer(parse_key(k)) for k in named if k]


async def kept_events(system: System) -> list[Event]:
    """payments.v1, risk.v1 and ledger.v1 as they are (read with the test's principal)."""
    prefix, bootstrap = system.env["YIBAO_TOPIC_PREFIX"], system.env["KAFKA_BOOTSTRAP"]
    events: list[Event] = []
    for topic in ("payments.v1", "risk.v1", "ledger.v1"):
        events += await read_topic(bootstrap, prefix + topic)
    return events


def sealed_phones(event: Event) -> list[tuple[str, list[str]]]:
    """Every sealed phone field of ``event`` with the bindings it may carry (phone_aad of
    every string in the event: its payment, allocation, code or challenge id)."""
    sealed: list[str] = []
    strings: set[str] = set()

    def walk(value: object, name: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, k)
        elif isinstance(value, list):
            for v in value:
                walk(v, name)
        elif isinstance(value, str):
            strings.add(value)
            if name.endswith("phone_sealed") and value:
                sealed.append(value)

    walk(event.payload.model_dump(mode="json"), "")
    aads = [phone_aad(s) for s in strings]
    return [(v, aads) for v in sealed]


def opens(
    sealed: str, aads: list[str], sealers: list[Sealer], keys: dict[str, bytes]
) -> str | None:
    """The clear phone if ``sealed`` opens with any of the keys and bindings."""
    for aad in aads:
        for sealer in sealers:
            try:
                return sealer.open(sealed, aad=aad)
            except (SealError, ValueError):
                pass
        if is_sealed(sealed):
            for key in keys.values():
                try:
                    return open_personal(sealed, key, aad=aad)["phone"]
                except (SealError, ValueError, KeyError):
                    pass
    return None
