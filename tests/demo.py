"""A narrated walk through Yibao against the stack of ``make up`` (``make demo``).

A resident tops up her wallet by bank card, pays her 2027 resident premium from the
wallet, then pays a large premium for her father by bank card, which needs the SMS
code she receives. Every step prints what an upstream system and the resident see.
Reads the addresses and the caller key from .run/stack.env.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

from deploy.common import read_env_file
from shared.money import format_cny
from tests.e2e.client import Yibao, premium_body, topup_body

STACK_ENV = Path(__file__).resolve().parents[1] / ".run" / "stack.env"


def say(text: str = "") -> None:
    print(text, flush=True)


async def main() -> int:
    if not STACK_ENV.exists():
        say("No .run/stack.env: start the stack first with `make up`.")
        return 1
    env = read_env_file(STACK_ENV)
    yibao = Yibao(
        env["PAYMENT_URL"],
        env["LEDGER_URL"],
        env["SMS_GATEWAY_URL"],
        env["API_KEY"],
        risk_url=env["RISK_URL"],
    )
    payer = "u-demo-" + uuid.uuid4().hex[:6]
    phone = "139" + str(uuid.uuid4().int)[:8]
    say(f"Resident {payer}, phone {phone[:3]}****{phone[-4:]}.\n")

    say("1. The app's cashier tops up her wallet with 1,000.00 CNY from her bank card.")
    r = await yibao.create_payment(topup_body(payer, 100000, phone=phone))
    say(f"   POST /v1/payments -> {r.status_code} {r.json()['status']} (id {r.json()['id']})")
    p = await yibao.wait_for(r.json()["id"], {"succeeded", "failed", "declined"})
    say(
        f"   final status: {p['status']}; wallet balance "
        f"{format_cny(await yibao.balance(f'wallet:{payer}'))} CNY\n"
    )

    say("2. She pays her 2027 urban-rural resident premium, 380.00 CNY, from the wallet.")
    r = await yibao.create_payment(premium_body(payer, 38000, method="wallet", phone=phone))
    p = await yibao.wait_for(r.json()["id"], {"succeeded", "failed", "declined"})
    receipt = p["receipt"]
    say(
        f"   final status: {p['status']}; receipt code {receipt['code']} number "
        f"{receipt['number']} check code {receipt['check_code']}"
    )
    face = await yibao.receipt(receipt["code"], receipt["number"])
    face_fields = face.get("receipt", face)
    insured = face_fields.get("beneficiary", {})
    say(
        f"   the receipt says: {face_fields.get('title')} | payer {face_fields.get('payer_name')} "
        f"(ID {insured.get('id_number_masked')}) | total {format_cny(int(face_fields['total']))} "
        f"CNY ({face_fields.get('total_in_words')}) | payee {face_fields.get('payee')} | "
        f"issued {face_fields.get('issue_date')}"
    )
    check = await yibao.verify_receipt(receipt["code"], receipt["number"], receipt["check_code"])
    say(f"   public verification: valid={check['valid']}")
    say(f"   wallet balance now {format_cny(await yibao.balance(f'wallet:{payer}'))} CNY\n")

    say("3. She pays 3,000.00 CNY for her father by bank card: large, so risk asks for a code.")
    father = premium_body(payer, 300000, phone=phone, id_number="110105195001010012")
    father["beneficiary"] = {
        "id_number": "110105195001010012",
        "name": "张父",
        "relation": "parent",
    }
    r = await yibao.create_payment(father)
    pid = r.json()["id"]
    p = await yibao.wait_for(pid, {"requires_verification", "declined"})
    say(f"   status: {p['status']}, next action: {p['next_action']}")
    code = await yibao.code_for(phone, "医疗保障局", "3,000.00")
    sms = [m for m in await yibao.sms(phone) if "验证码" in m["text"]][-1]
    say(f"   the SMS she received: {sms['text']}")
    v = await yibao.verify(pid, code)
    say(f"   POST /v1/payments/{pid}/verification -> {v.status_code}")
    p = await yibao.wait_for(pid, {"succeeded", "failed", "declined"})
    say(f"   final status: {p['status']}; receipt {p['receipt']}\n")

    say("4. What her phone received, in order:")
    for m in await yibao.sms(phone):
        say(f"   - {m['text']}")
    cap = await yibao.daily_cap(payer)
    say(
        f"\n5. Today she has used {format_cny(cap['used'])} of her "
        f"{format_cny(cap['cap'])} CNY daily cap; {format_cny(cap['remaining'])} CNY left."
    )
    say(
        f"   Premium income of the Beijing bureau: "
        f"{format_cny(await yibao.balance('bureau:110000:premium'))} CNY"
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
