"""A narrated walk through Yibao against the stack of ``make up`` (``make demo``).

A resident looks up Beijing's 2027 premiums, tops up her wallet by bank card (the bank
confirms the debit first) and pays her 2027 resident premium from the wallet: the wrong
amount is refused stating the scheduled one, the scheduled one is paid. She then pays
her husband's Shanghai flexible-employment contribution for a quarter by bank card, large
enough to need the SMS code she receives. The bureau funds her personal medical
account, which pays her son's resident premium once she has bound him as a relative
(confirmed by the code sent to his phone); that premium is then partly refunded with a red
receipt (红冲). Finally the operator closes the clearing day: the Beijing bureau's
settlement file (对账单), the bank's transfer, and the reconciliation with the bank's
own statement. Every step prints what an upstream system, the resident, the bureau and
the operator see.
Reads the addresses and the keys from .run/stack.env.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx

from deploy.common import read_env_file
from shared.money import format_cny
from tests.e2e.client import ID_WEIGHTS, Yibao, premium_body, topup_body

STACK_ENV = Path(__file__).resolve().parents[1] / ".run" / "stack.env"
SHANGHAI = ZoneInfo("Asia/Shanghai")


def say(text: str = "") -> None:
    print(text, flush=True)


def person(born_year: int) -> str:
    """A new person's ID number (a Beijing district), born in ``born_year``: each demo
    run pays for new people, since a period is paid once per person."""
    n = uuid.uuid4().int
    first17 = f"110105{born_year}{n % 12 + 1:02d}{n // 12 % 28 + 1:02d}{n // 336 % 1000:03d}"
    total = sum(int(c) * w for c, w in zip(first17, ID_WEIGHTS, strict=True))
    return first17 + "10X98765432"[total % 11]


async def show_schedule(yibao: Yibao) -> None:
    say("0. The app shows Beijing's 2027 resident premiums (GET /v1/premiums).")
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(
            f"{yibao.payment_url}/v1/premiums",
            params={"region": "110000", "year": 2027, "scheme": "urban_rural_resident"},
            headers={"Authorization": f"Bearer {yibao.api_key}"},
        )
    for row in r.json()["schemes"][0]["rows"]:
        say(f"   {row['category_name']}: {format_cny(row['amount'])} CNY/yr ({row['source']})")
    say()


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
        bank_url=env.get("BANK_GATEWAY_URL"),
        bureau_key=env.get("BUREAU_API_KEY"),
        webhook_url=env.get("WEBHOOK_RECEIVER_URL"),
    )
    hook = await register_webhook(yibao)
    payer = "u-demo-" + uuid.uuid4().hex[:6]
    phone = "139" + str(uuid.uuid4().int)[:8]
    say(f"Resident {payer}, phone {phone[:3]}****{phone[-4:]}.\n")
    await show_schedule(yibao)

    her_id = person(1990)  # who she is: her top-up and her own premium name her
    say("1. The app's cashier tops up her wallet with 1,000.00 CNY from her bank card.")
    topup = topup_body(payer, 100000, phone=phone)
    topup["beneficiary"]["id_number"] = her_id
    r = await yibao.create_payment(topup)
    say(f"   POST /v1/payments -> {r.status_code} {r.json()['status']} (id {r.json()['id']})")
    p = await yibao.wait_for(r.json()["id"], {"succeeded", "failed", "declined"})
    say(
        f"   final status: {p['status']}; wallet balance "
        f"{format_cny(await yibao.balance(f'wallet:{payer}'))} CNY\n"
    )

    say("2. She pays her 2027 urban-rural resident premium from the wallet; she is of working age.")
    own = premium_body(
        payer,
        79500,
        method="wallet",
        phone=phone,
        id_number=her_id,
        scheme="urban_rural_resident",
    )
    say(
        "   she pays the schedule's 795.00 CNY (with PAYMENT_PREMIUM_SCHEDULE_ENFORCED=true,"
        " any other amount is refused: 422 premium_amount_mismatch)"
    )
    r = await yibao.create_payment(own)
    say(f"   795.00 CNY: {r.status_code} {r.json()['status']}")
    p = await yibao.wait_for(r.json()["id"], {"succeeded", "failed", "declined"})
    receipt = p["receipt"]
    say(
        f"   final status: {p['status']}; receipt code {receipt['code']} number "
        f"{receipt['number']} check code {receipt['check_code']}"
    )
    face = await yibao.receipt(receipt["code"], receipt["number"])
    face_fields = face.get("receipt", face)
    # Since issue 11 the names are sealed on the signed face; the read opens them.
    personal = face.get("personal") or {}
    insured = {**(face_fields.get("insured") or face_fields.get("beneficiary", {})), **personal}
    payer_name = (face_fields.get("payer") or {}).get("name") or face_fields.get("payer_name")
    if personal and insured.get("relation") == "self":
        payer_name = personal.get("name")
    say(
        f"   the receipt says: {face_fields.get('title')} | payer {payer_name} | insured "
        f"{insured.get('name')} (ID {insured.get('id_number_masked')}) | total {format_cny(int(face_fields['total']))} "
        f"CNY ({face_fields.get('total_in_words')}) | payee {face_fields.get('payee')} | "
        f"issued {face_fields.get('issue_date')}"
    )
    check = await yibao.verify_receipt(receipt["code"], receipt["number"], receipt["check_code"])
    say(f"   public verification: valid={check['valid']}")
    say(f"   wallet balance now {format_cny(await yibao.balance(f'wallet:{payer}'))} CNY\n")

    say(
        "3. She pays her husband's Shanghai flexible-employment contribution for 2027-Q1,"
        " 3,000.00 CNY, by bank card: large, so risk asks for a code."
    )
    husband = premium_body(
        payer, 300000, phone=phone, region="310000", scheme="flexible_employment", period="2027-Q1"
    )
    husband["beneficiary"] = {"id_number": person(1985), "name": "王夫", "relation": "spouse"}
    r = await yibao.create_payment(husband)
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

    await medical_account_and_refund(yibao, payer, phone)

    say("6. What her phone received, in order:")
    for m in await yibao.sms(phone):
        say(f"   - {m['text']}")
    cap = await yibao.daily_cap(payer)
    say(
        f"\n7. Today she has used {format_cny(cap['used'])} of her "
        f"{format_cny(cap['cap'])} CNY daily cap; {format_cny(cap['remaining'])} CNY left."
    )
    say(
        f"   Premium income of the Beijing bureau: "
        f"{format_cny(await yibao.balance('bureau:110000:premium'))} CNY"
    )
    await what_she_sees(yibao, payer, phone)
    if hook is not None:
        await show_webhooks(yibao, hook, payer)
    if "OPERATOR_API_KEY" in env:
        await close_the_day(yibao, env)
    return 0


async def register_webhook(yibao: Yibao) -> str | None:
    """The cashier's webhook endpoint at the development receiver (issue 14), if any."""
    if not yibao.webhook_url:
        return None
    name = "demo-" + uuid.uuid4().hex[:6]
    endpoint = await yibao.create_webhook_endpoint(name)
    say(
        f"The cashier registered the webhook endpoint {endpoint['id']} at"
        f" {yibao.webhook_url}/hooks/{name} (secret {endpoint['secret'][:10]}…).\n"
    )
    return name


async def show_webhooks(yibao: Yibao, name: str, payer: str) -> None:
    """What the cashier's endpoint received, and its list of her payments."""
    await asyncio.sleep(2)  # the webhook worker polls every second
    say("\n9. Webhooks the cashier's endpoint received (signed, in order per payment):")
    for m in await yibao.hook_messages(name):
        if m["outcome"] != "accepted":
            continue
        data = m["payload"]["data"]
        say(f"   - {m['payload']['type']:<30} {data['id']}  signature ok: {m['verified']}")
    listed = await yibao.list_payments(payer_id=payer, limit=100)
    say(f"   GET /v1/payments?payer_id={payer}: {len(listed['data'])} payments, newest first")


async def what_she_sees(yibao: Yibao, payer: str, phone: str) -> None:
    """Her records, the detail behind an SMS code, the overview and the certificate."""
    say("\n8. In the app she looks at her records (消费记录), newest first:")
    records = (await yibao.records(payer)).json()
    for r in records["records"]:
        say(
            f"   - {r['date']} {r['item']} | {r['payee']} | "
            f"{format_cny(r['amount'])} CNY | {r['status']}"
        )
    first = records["records"][0]
    bare = await yibao.record(payer, first["payment_id"])
    say(
        f"   the detail (消费明细) without a code: {bare.status_code} {bare.json()['error']['code']}"
    )
    opened = await yibao.open_records_session(payer)
    code = await yibao.payer_code(phone, "您正在查询消费明细")
    token = (await yibao.confirm_records_session(payer, opened.json()["id"], code)).json()
    detail = (await yibao.record(payer, first["payment_id"], token["token"])).json()
    say(
        f"   with the SMS code (session until {token['expires_at'][11:19]} UTC): "
        f"{len(detail['receipts'])} receipt(s), {len(detail['refunds'])} refund(s)"
    )
    overview = (await yibao.overview(payer)).json()
    say(
        f"   overview: wallet {format_cny(overview['wallet_balance'])} CNY, medical account "
        f"{format_cny(overview['medical_account_balance'])} CNY, years insured "
        f"{overview['years_insured']}"
    )
    cert = await yibao.certificate(payer, year=2027)
    if cert.status_code != 200:
        say(f"   insurance certificate for 2027: {cert.status_code} {cert.text}")
        return
    c = cert.json()
    pdf = await yibao.certificate(payer, fmt=".pdf", year=2027)
    out = STACK_ENV.parent / "demo-certificate.pdf"
    out.write_bytes(pdf.content)
    check = (await yibao.verify_certificate(c["number"], c["check_code"])).json()
    say(
        f"   her 2027 insurance certificate (电子参保凭证) no. {c['number']}: PDF "
        f"({len(pdf.content)} bytes) at {out}; public 查验 valid={check['valid']}"
    )


async def close_the_day(yibao: Yibao, env: dict[str, str]) -> None:
    """8-9: the operator closes the open clearing day; the bureau's file; reconciliation."""
    operator = {"Authorization": f"Bearer {env['OPERATOR_API_KEY']}"}
    async with httpx.AsyncClient(base_url=yibao.ledger_url, headers=operator, timeout=30) as ledger:
        now = datetime.now(UTC).astimezone(SHANGHAI)
        today = now.date() + timedelta(days=1 if now.hour >= 23 else 0)
        day = today  # the first clearing day still open (an earlier demo may have closed today)
        while (await ledger.get(f"/v1/settlement/days/{day}")).json()["status"] != "open":
            day += timedelta(days=1)
        say(f"\n10. The operator closes clearing day {day} early (in development: ?force=true).")
        r = await ledger.post(f"/v1/settlement/days/{day}/close", params={"force": "true"})
        for _ in range(100):
            closed = (await ledger.get(f"/v1/settlement/days/{day}")).json()
            if closed["status"] == "settled":
                break
            await asyncio.sleep(0.2)
        say(
            f"   POST /v1/settlement/days/{day}/close -> {r.status_code}; status {closed['status']}"
        )
        for region in closed["regions"]:
            say(
                f"   {region['region']}: {region['count']} lines, paid {format_cny(region['paid'])}, "
                f"refunded {format_cny(region['refunded'])}, net {format_cny(region['net'])} CNY, "
                f"settled {region['settled']}"
            )
        bureau = {"Authorization": f"Bearer {env['BUREAU_API_KEY']}"}
        r = await ledger.get(f"/v1/settlement/days/{day}/bureaus/110000.csv", headers=bureau)
        lines = r.text.splitlines()
        say(
            f"   the Beijing bureau's settlement file ({len(lines)} lines, signed {r.headers.get('x-key-id')}):"
        )
        for line in [*lines[:3], "   …", lines[-1]] if len(lines) > 5 else lines:
            say(f"     {line}")
        cash = await yibao.balance("cash:110000:bureau")
        say(f"   arrived at the Beijing bureau's account: {format_cny(cash)} CNY\n")

        say(f"11. The operator reconciles the bank's statement of {today} with the journal.")
        assert yibao.bank_url, "no BANK_GATEWAY_URL"
        async with httpx.AsyncClient(timeout=30) as bank:
            statement = (await bank.get(f"{yibao.bank_url}/statements/{today}.csv")).text
        r = await ledger.post(
            f"/v1/settlement/days/{today}/reconciliations",
            content=statement.encode(),
            headers={"Content-Type": "text/csv"},
        )
        result = r.json()
        say(
            f"   {len(statement.splitlines()) - 1} bank lines: {result['matched']} matched, "
            f"{len(result['discrepancies'])} discrepancies {result['discrepancies'] or ''}"
        )


async def medical_account_and_refund(yibao: Yibao, payer: str, phone: str) -> None:
    say("4. The Beijing bureau credits her personal medical account with 1,200.00 CNY (个账划入).")
    r = await yibao.allocate("110000", "2027", [{"payer_id": payer, "amount": 120000}])
    say(f"   POST /v1/medical-accounts/allocations -> {r.status_code} {r.json()['lines']}")
    for _ in range(100):
        if await yibao.balance(f"medical:{payer}") == 120000:
            break
        await asyncio.sleep(0.1)
    say(f"   personal medical account: {format_cny(await yibao.balance(f'medical:{payer}'))} CNY")
    son_id, son_payer, son_phone = (
        person(2015),
        f"{payer}-son",
        "139" + f"{uuid.uuid4().int % 10**8:08d}",
    )
    await yibao.enrol_payer(son_payer, son_phone, son_id, "张子")
    r = await yibao.bind_relative(payer, son_payer, "child")
    say(
        f"   she binds her son (家庭共济): POST /v1/payers/{payer}/relatives -> {r.status_code}"
        f" {r.json()['status']}"
    )
    code = await yibao.payer_code(son_phone, "您正在绑定亲属")
    r = await yibao.confirm_relative(payer, son_payer, code)
    say(f"   the code reached the son's phone; confirmed -> {r.json()['status']}")
    son = premium_body(
        payer, 43500, method="medical_account", phone=phone, scheme="urban_rural_resident"
    )
    son["beneficiary"] = {"id_number": son_id, "name": "张子", "relation": "child"}
    r = await yibao.create_payment(son)
    p = await yibao.wait_for(r.json()["id"], {"succeeded", "failed", "declined"})
    say(
        f"   her son's 2027 resident premium (学生儿童), 435.00 CNY from the account: {p['status']}; receipt "
        f"{p['receipt']['code']}/{p['receipt']['number']}; account now "
        f"{format_cny(await yibao.balance(f'medical:{payer}'))} CNY\n"
    )

    say("5. 100.00 CNY of that premium is refunded; the money goes back to the account.")
    refund = await yibao.create_refund(p["id"], 10000, reason="重复缴费")
    say(f"   POST /v1/payments/{p['id']}/refunds -> {refund.status_code} {refund.json()['status']}")
    done = await yibao.wait_refund(refund.json()["id"], {"succeeded", "failed"})
    red = done["receipt"]
    say(f"   refund {done['status']}; red receipt (红冲) {red['code']}/{red['number']}")
    face = (await yibao.receipt(red["code"], red["number"]))["receipt"]
    say(
        f"   its face: {face.get('title')} | total {face.get('total_in_words')} | relates to "
        f"{face['relates_to']['code']}/{face['relates_to']['number']}"
    )
    original = p["receipt"]
    check = await yibao.verify_receipt(original["code"], original["number"], original["check_code"])
    say(
        f"   verifying the original: valid={check['valid']}, reversed "
        f"{format_cny(check.get('reversed_amount', 0))} CNY; account now "
        f"{format_cny(await yibao.balance(f'medical:{payer}'))} CNY\n"
    )


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
