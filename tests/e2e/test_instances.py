"""Scale-out (issue 13): two instances each of payment, risk and notify give exactly
the results of one.

The same deterministic set of payments runs against a system with one process per
service and against one with two of payment, risk and notify (the ledger stays one):
several payers on bank cards, a personal medical account funded by an allocation, a
step-up with its SMS code, a decline by the daily cap and a refund. Both systems must
end with the same statuses, balances, receipts, SMS notices and journal. Each instance
of the second system must also have had its share: partitions of its group assigned
and events applied (its own log says so), and requests served on the shared port.

The payers are chosen so that their keys cover every partition of ``payments.v1``,
whichever instance holds it. The systems run one after the other, not side by side
(the machine is small).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from aiokafka.partitioner import murmur2

from tests.e2e.client import FINAL, premium_body, random_phone, topup_body
from tests.e2e.conftest import System, running_system
from tests.support import Infra

pytestmark = pytest.mark.e2e

BUREAU = "北京市医疗保障局"
BUREAU_ACCOUNT = "bureau:110000:premium"
SCALED = {"payment": 2, "risk": 2, "notify": 2}
PAYMENT_PARTITIONS = 6  # shared/topics.py: payments.v1
# What a consumer group of each scaled service reads (its name is the service's).
CARD_PAYERS = 6
CAP = 5_000_000  # the daily cap, fen (risk's default)
MEDICAL_PAID = 4_990_000  # a step-up (2,000.00 CNY or more), 49,900.00 CNY
TOPUP = 100
OVER_CAP = 20_000  # 200.00 CNY more than the 99.00 CNY left: declined by the cap
REFUND = 10_000
RECEIPT_AMOUNT_KEYS = ("total", "amount", "total_amount", "amount_total")
# The notices each role's payment gets at least (card-1 also its refund's).
EXPECTED_KINDS = {
    "card": {"payment_result", "receipt"},
    "topup": {"payment_result"},
    "medical": {"sms_code", "payment_result", "receipt"},
    "over-cap": {"payment_result"},
}


def payers_over_every_partition(partitions: int = PAYMENT_PARTITIONS) -> list[str]:
    """Payer ids whose keys land on each partition once (Kafka's default partitioner:
    murmur2 of the key), so every instance of a group gets work, whatever it holds."""
    found: dict[int, str] = {}
    while len(found) < partitions:
        candidate = "u-" + uuid.uuid4().hex[:10]
        found.setdefault((murmur2(candidate.encode()) & 0x7FFFFFFF) % partitions, candidate)
    return [found[p] for p in range(partitions)]


@dataclass(frozen=True)
class Outcome:
    """What a run came to, by role (the ids differ from run to run; the roles do not)."""

    payments: dict[str, tuple[str, str | None, int]]  # role: status, decline code, amount
    refunds: dict[str, tuple[str, int]]  # role: status, amount
    balances: dict[str, int]  # the bureau's, the resident's wallet and medical account
    receipts: list[tuple[str, int]]  # (role, amount), blue and red
    notices: dict[str, list[tuple[str, str]]]  # role: (kind, state) of its payment's notices
    sms: dict[str, Counter[str]]  # phone's role: SMS received per kind
    journal_entries: int
    bureau_lines: list[tuple[str, int]]  # the bureau's statement: (role, amount)


class Run:
    """One run of the scenario against one system, remembering roles."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.yibao = system.client
        self.operator = self.yibao.as_caller(system.env["YIBAO_OPERATOR_API_KEYS"])
        self.payers = payers_over_every_partition()
        self.resident = "u-" + uuid.uuid4().hex[:10]
        self.phones = {f"card-{n}": random_phone() for n in range(1, CARD_PAYERS + 1)}
        self.phones["resident"] = random_phone()
        self.payment_ids: dict[str, str] = {}  # role -> payment id
        self.refund_ids: dict[str, str] = {}

    async def pay(self, role: str, body: dict[str, Any]) -> dict[str, Any]:
        r = await self.yibao.create_payment(body)
        assert r.status_code == 202, r.text
        self.payment_ids[role] = r.json()["id"]
        return await self.yibao.wait_for(
            r.json()["id"], FINAL | {"requires_verification"}, timeout=120
        )

    async def scenario(self) -> None:
        cards = [f"card-{n}" for n in range(1, CARD_PAYERS + 1)]
        done = await asyncio.gather(
            *(
                self.pay(role, premium_body(payer, 38000 + 100 * n, phone=self.phones[role]))
                for n, (role, payer) in enumerate(zip(cards, self.payers, strict=True))
            )
        )
        assert [p["status"] for p in done] == ["succeeded"] * CARD_PAYERS, done

        # The resident: known by a top-up, funded by an allocation, pays from the
        # medical account with the SMS code, then is declined by the daily cap.
        phone = self.phones["resident"]
        topped = await self.pay("topup", topup_body(self.resident, TOPUP, phone=phone))
        assert topped["status"] == "succeeded", topped
        allocated = await self.yibao.allocate(
            "110000", "2027", [{"payer_id": self.resident, "amount": CAP}]
        )
        assert allocated.status_code == 200, allocated.text
        await self.wait_balance(f"medical:{self.resident}", CAP)
        body = premium_body(self.resident, MEDICAL_PAID, method="medical_account", phone=phone)
        waiting = await self.pay("medical", body)
        assert waiting["status"] == "requires_verification", waiting
        code = await self.yibao.code_for(phone, BUREAU, "49,900.00")
        verified = await self.yibao.verify(self.payment_ids["medical"], code)
        assert verified.status_code == 200, verified.text
        await self.yibao.wait_for(self.payment_ids["medical"], FINAL, timeout=120)
        await self.pay("over-cap", premium_body(self.resident, OVER_CAP, phone=phone))

        refund = await self.yibao.create_refund(self.payment_ids["card-1"], REFUND)
        assert refund.status_code == 202, refund.text
        self.refund_ids["card-1"] = refund.json()["id"]
        await self.yibao.wait_refund(refund.json()["id"], {"succeeded", "failed"})

    async def wait_balance(self, account: str, amount: int) -> None:
        """Until the ledger has booked what the scenario is waiting for (an allocation
        or a notice is asynchronous); the comparison afterwards is exact."""
        deadline = time.monotonic() + 60
        while await self.yibao.balance(account) != amount and time.monotonic() < deadline:
            await asyncio.sleep(0.2)

    async def settle(self) -> None:
        """Until every payment has at least the notices it must get, all sent, and
        nothing more arrives for a while (a late duplicate would show afterwards)."""
        deadline = time.monotonic() + 90
        last: object = None
        while time.monotonic() < deadline:
            notices = await self.notices()
            sms = {role: len(await self.yibao.sms(phone)) for role, phone in self.phones.items()}
            complete = all(
                EXPECTED_KINDS[role.split("-")[0] if role.startswith("card") else role]
                <= {kind for kind, state in listed if state == "sent"}
                for role, listed in notices.items()
            ) and all(state == "sent" for listed in notices.values() for _, state in listed)
            if complete and (notices, sms) == last:
                return
            last = (notices, sms) if complete else None
            await asyncio.sleep(1.5)
        raise AssertionError(f"the notices did not settle: {await self.notices()}")

    async def notices(self) -> dict[str, list[tuple[str, str]]]:
        url = f"http://127.0.0.1:{self.system.ports['notify']}/v1/notifications"
        found = {}
        async with httpx.AsyncClient(timeout=10.0) as http:
            for role, pid in self.payment_ids.items():
                r = await http.get(
                    url,
                    params={"payment_id": pid},
                    headers={"Authorization": f"Bearer {self.yibao.api_key}"},
                )
                r.raise_for_status()
                found[role] = sorted((n["kind"], n["state"]) for n in r.json())
        return found

    async def outcome(self) -> Outcome:
        await self.settle()
        roles = {pid: role for role, pid in self.payment_ids.items()}
        payments, receipts = {}, []
        for role, pid in self.payment_ids.items():
            p = await self.yibao.get_payment(pid)
            payments[role] = (p["status"], p["decline_code"], p["amount"])
            if p["receipt"] is not None:
                receipts.append((role, await self.receipt_amount(p["receipt"])))
        refunds = {}
        for role, rid in self.refund_ids.items():
            r = await self.yibao.get_refund(rid)
            refunds[role] = (r["status"], r["amount"])
            if r.get("receipt") is not None:
                receipts.append((f"{role} refund", await self.receipt_amount(r["receipt"])))
        balances = {
            "bureau": await self.operator.balance(BUREAU_ACCOUNT),
            "wallet": await self.yibao.balance(f"wallet:{self.resident}"),
            "medical": await self.yibao.balance(f"medical:{self.resident}"),
        }
        sms = {}
        for role, phone in self.phones.items():
            sms[role] = Counter(kind_of(m["text"]) for m in await self.yibao.sms(phone))
        checkpoint = await self.ledger_get("/v1/journal/checkpoint")
        statement = await self.ledger_get(
            f"/v1/accounts/{BUREAU_ACCOUNT}/statement", params={"limit": 1000}
        )
        lines = [(roles.get(x["payment_id"], "?"), x["amount"]) for x in statement["lines"]]
        return Outcome(
            payments=payments,
            refunds=refunds,
            balances=balances,
            receipts=sorted(receipts),
            notices=await self.notices(),
            sms=sms,
            journal_entries=int(checkpoint["seq"]),
            bureau_lines=sorted(lines),
        )

    async def receipt_amount(self, receipt: dict[str, Any]) -> int:
        face = (await self.yibao.receipt(receipt["code"], receipt["number"]))["receipt"]
        amounts = [face[k] for k in RECEIPT_AMOUNT_KEYS if isinstance(face.get(k), int)]
        assert amounts, face
        return int(amounts[0])

    async def ledger_get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        async with httpx.AsyncClient(timeout=10.0) as http:
            r = await http.get(
                self.yibao.ledger_url + path,
                params=params,
                headers={"Authorization": f"Bearer {self.operator.api_key}"},
            )
        r.raise_for_status()
        return r.json()


def kind_of(text: str) -> str:
    """What an SMS is, from its text (notify's kinds, as the resident reads them)."""
    if "验证码" in text:
        return "sms_code"
    if "退" in text:
        return "refund_result"
    if "票据" in text:
        return "receipt"
    if "个人账户" in text or "余额" in text:
        return "balance_change"
    return "payment_result"


def log_lines(system: System, instance: str) -> list[dict[str, Any]]:
    lines = []
    for raw in system.log(instance).splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            continue  # a line that is not a JSON log line (a traceback, uvicorn)
    return [line for line in lines if isinstance(line, dict)]


def assigned(system: System, instance: str, group: str) -> list[str]:
    """The partitions ``instance`` last logged for its consumer ``group``."""
    last: list[str] = []
    for line in log_lines(system, instance):
        if line.get("event") == "consumer_assigned" and line.get("consumer") == group:
            last = list(line.get("partitions", []))
    return last


async def wait_groups_split(system: System) -> None:
    """Until every instance of a scaled service holds partitions of its group: then all
    of them joined, and the group's partitions are split between them."""
    deadline = time.monotonic() + 90
    waiting = [(n, i) for n in SCALED for i in system.instance_names(n)]
    while waiting and time.monotonic() < deadline:
        waiting = [(n, i) for n, i in waiting if not assigned(system, i, n)]
        await asyncio.sleep(0.5)
    assert not waiting, f"these instances never got partitions of their group: {waiting}"


def applied(system: System, instance: str, group: str) -> int:
    """The events ``instance``'s consumer ``group`` applied, as it said on stopping."""
    return sum(
        int(line.get("applied", 0))
        for line in log_lines(system, instance)
        if line.get("event") == "consumer_stopped" and line.get("consumer") == group
    )


async def run_on(infra: Infra, instances: dict[str, int]) -> tuple[Outcome, System]:
    with running_system(infra, instances=instances) as system:
        await wait_groups_split(system)
        run = Run(system)
        await run.scenario()
        outcome = await run.outcome()
        shares = {i: assigned(system, i, n) for n in instances for i in system.instance_names(n)}
    # Stopped: each consumer logged what it applied (the logs stay in the workdir).
    for name in instances:
        for instance in system.instance_names(name):
            served = sum(1 for line in log_lines(system, instance) if "path" in line)
            print(
                f"{instance}: partitions {shares[instance]}; applied"
                f" {applied(system, instance, name)} events; served {served} requests"
            )
    return outcome, system


async def test_two_instances_of_each_service_give_the_same_results_as_one(infra: Infra) -> None:
    one, _ = await run_on(infra, {})
    two, scaled = await run_on(infra, SCALED)

    # The scenario's results, as a single instance of each gives them.
    assert one.payments["medical"] == ("succeeded", None, MEDICAL_PAID)
    assert one.payments["over-cap"] == ("declined", "daily_limit_exceeded", OVER_CAP)
    assert one.refunds == {"card-1": ("succeeded", REFUND)}
    paid = sum(38000 + 100 * n for n in range(CARD_PAYERS)) + MEDICAL_PAID
    assert one.balances == {"bureau": paid - REFUND, "wallet": TOPUP, "medical": CAP - MEDICAL_PAID}
    assert one.sms["resident"]["sms_code"] == 1
    # No journal entry twice: each payment (and the refund) once on the bureau's account.
    assert len(one.bureau_lines) == len(set(one.bureau_lines)) == CARD_PAYERS + 2
    for listed in one.notices.values():  # every notice sent, none left behind
        assert listed and all(state == "sent" for _, state in listed), one.notices
    assert ("refund_result", "sent") in one.notices["card-1"]
    for role, per_kind in one.sms.items():  # the gateway got each notice once
        if role == "resident":  # its three payments' notices, and the allocation's
            count = sum(len(one.notices[r]) for r in ("topup", "medical", "over-cap")) + 1
        else:
            count = len(one.notices[role])
        assert sum(per_kind.values()) == count, (role, per_kind, one.notices)

    # Two instances: exactly the same.
    assert two == one

    # And both instances of each service did their share.
    for name in SCALED:
        for instance in scaled.instance_names(name):
            assert applied(scaled, instance, name) > 0, (instance, scaled.log(instance)[-2000:])
