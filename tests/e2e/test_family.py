"""Family accounts, verified phone change and records sessions, through HTTP only
(issues 11 and 12): every service runs as a process over Kafka and PostgreSQL, and the
resident's codes are read from the development SMS gateway, as a resident reads them.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.e2e.client import (
    FINAL,
    ID_WEIGHTS,
    Yibao,
    premium_body,
    random_id_number,
    random_phone,
)
from tests.e2e.conftest import System

pytestmark = pytest.mark.e2e

BINDING, PHONE_CHANGE, RECORDS = "您正在绑定亲属", "您正在更换", "您正在查询消费明细"


def payer() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


def elder_id_number() -> str:
    """A new Beijing resident born in 1955 (老年人 in 2027: 460.00 CNY)."""
    n = uuid.uuid4().int
    first17 = f"1101051955{n % 12 + 1:02d}{n // 12 % 28 + 1:02d}{n // 336 % 1000:03d}"
    total = sum(int(c) * w for c, w in zip(first17, ID_WEIGHTS, strict=True))
    return first17 + "10X98765432"[total % 11]


@pytest.fixture
def other(system: System) -> Yibao:
    """The same system seen by the second caller key."""
    return system.client.as_caller(system.env["YIBAO_API_KEYS"].split(",")[1])


async def funded(yibao: Yibao, who: str, amount: int) -> None:
    r = await yibao.allocate("110000", "2027", [{"payer_id": who, "amount": amount}])
    assert r.status_code == 200, r.text
    for _ in range(200):
        if await yibao.balance(f"medical:{who}") == amount:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"medical:{who} was not funded")


async def test_a_bound_parent_is_paid_for_from_the_medical_account(
    yibao: Yibao, other: Yibao
) -> None:
    me, mother, uncle = payer(), payer(), payer()
    my_phone, mother_phone = random_phone(), random_phone()
    mother_id, uncle_id = elder_id_number(), random_id_number()
    assert (await yibao.enrol_payer(me, my_phone, random_id_number(), "张三")).status_code == 200
    assert (await yibao.enrol_payer(mother, mother_phone, mother_id, "王秀英")).status_code == 200
    assert (await yibao.enrol_payer(uncle, random_phone(), uncle_id, "张叔")).status_code == 200
    await funded(yibao, me, 200_000)

    def mothers_premium() -> dict[str, object]:
        body = premium_body(
            me, 46000, method="medical_account", phone=my_phone, scheme="urban_rural_resident"
        )
        body["beneficiary"] = {"id_number": mother_id, "name": "王秀英", "relation": "parent"}
        return body

    refused = await yibao.create_payment(mothers_premium())
    assert refused.status_code == 422, refused.text
    assert (refused.json()["error"]["code"], refused.json()["error"]["param"]) == (
        "relative_not_bound",
        "beneficiary",
    )

    asked = await yibao.bind_relative(me, mother, "parent")
    assert asked.status_code == 202, asked.text
    assert asked.json()["status"] == "pending"
    # The code reaches the mother's phone, naming what it confirms; none reaches mine.
    code = await yibao.payer_code(mother_phone, BINDING)
    assert not [m for m in await yibao.sms(my_phone) if BINDING in m["text"]]
    assert (await other.confirm_relative(me, mother, code)).status_code == 404
    bound = await yibao.confirm_relative(me, mother, code)
    assert bound.status_code == 200, bound.text
    listed = (await yibao.relatives(me)).json()["relatives"]
    assert [(r["relative_payer_id"], r["relation"], r["status"], r["name"]) for r in listed] == [
        (mother, "parent", "bound", "王**")
    ]

    paid = await yibao.create_payment(mothers_premium())
    assert paid.status_code == 202, paid.text
    p = await yibao.wait_for(paid.json()["id"], FINAL)
    assert p["status"] == "succeeded", p
    assert await yibao.balance(f"medical:{me}") == 200_000 - 46000
    # The receipt names the payer (交款人) and the insured person (参保人) apart.
    read = await yibao.receipt(p["receipt"]["code"], p["receipt"]["number"])
    face = read["receipt"]
    assert face["payer"]["id"] == me
    # The insured's name is sealed per person on the signed face (issue 11, erasure);
    # the owner's read opens it beside the face.
    assert (read["personal"]["name"], face["insured"]["relation"]) == ("王秀英", "parent")

    # An unbound relative: refused, whatever the relation says.
    uncles = premium_body(me, 38000, method="medical_account", phone=my_phone)
    uncles["beneficiary"] = {"id_number": uncle_id, "name": "张叔", "relation": "sibling"}
    assert (await yibao.create_payment(uncles)).json()["error"]["code"] == "relative_not_bound"

    # Unbound: the next medical-account payment for her is refused.
    assert (await yibao.unbind_relative(me, mother)).json()["status"] == "unbound"
    again = premium_body(me, 100, method="medical_account", phone=my_phone)
    again["beneficiary"] = {"id_number": mother_id, "name": "王秀英", "relation": "parent"}
    assert (await yibao.create_payment(again)).json()["error"]["code"] == "relative_not_bound"


async def test_a_phone_change_moves_the_codes_to_the_new_phone(yibao: Yibao, other: Yibao) -> None:
    me, old, new = payer(), random_phone(), random_phone()
    assert (await yibao.enrol_payer(me, old, random_id_number(), "张三")).status_code == 200

    asked = await yibao.request_phone_change(me, new)
    assert asked.status_code == 202, asked.text
    change = asked.json()
    code = await yibao.payer_code(new, PHONE_CHANGE)
    # The enrolled phone is told, without a code.
    [notice] = await yibao.wait_sms(old, "更换为")
    assert "验证码" not in notice["text"] and code not in notice["text"]
    assert (await other.request_phone_change(me, random_phone())).status_code == 404
    assert (await other.confirm_phone_change(me, change["id"], code)).status_code == 404

    wrong = await yibao.confirm_phone_change(
        me, change["id"], "000000" if code != "000000" else "111111"
    )
    assert (wrong.status_code, wrong.json()["error"]["attempts_left"]) == (422, 4)
    done = await yibao.confirm_phone_change(me, change["id"], code)
    assert done.status_code == 200, done.text
    assert done.json()["phone"] == new[:3] + "****" + new[-4:]
    used = await yibao.confirm_phone_change(me, change["id"], code)
    assert (used.status_code, used.json()["error"]["code"]) == (409, "code_used")

    # Later codes go to the new phone: a records session's code, then its token.
    opened = await yibao.open_records_session(me)
    assert opened.status_code == 202, opened.text
    records_code = await yibao.payer_code(new, RECORDS)
    assert not [m for m in await yibao.sms(old) if RECORDS in m["text"]]
    token = await yibao.confirm_records_session(me, opened.json()["id"], records_code)
    assert token.status_code == 200, token.text
    assert token.json()["token"].startswith("rs1.")
    # And the payment notices too.
    paid = await yibao.create_payment(premium_body(me, 100, method="wallet", phone=old))
    await yibao.wait_for(paid.json()["id"], FINAL)
    await yibao.wait_sms(new, paid.json()["id"])
