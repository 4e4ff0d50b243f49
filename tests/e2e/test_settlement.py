"""Settlement through HTTP only (issue 10): payments and a refund for Shanghai (310000,
a region no other e2e test uses, so the figures are exact) on one clearing day; the day
closed early (force, test environment); the bureau's file, its totals and signature;
the bank's transfer and the bureau's cash account; reconciliation with the bank's own
statement, clean, then with one line removed and one amount changed."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tests.e2e.client import FINAL, Yibao, premium_body, random_phone
from tests.e2e.conftest import System

pytestmark = pytest.mark.e2e
SHANGHAI = ZoneInfo("Asia/Shanghai")
REGION = "310000"


def clearing_day(moment: datetime) -> date:
    """The clearing day (cut-off 23:00 Asia/Shanghai) a moment falls in."""
    local = moment.astimezone(SHANGHAI)
    return local.date() + timedelta(days=1) if local.hour >= 23 else local.date()


class Settlement:
    """The settlement API of DESIGN.md, as an operator (or another key) calls it."""

    def __init__(self, yibao: Yibao, operator_key: str) -> None:
        self.yibao, self.key = yibao, operator_key

    async def call(
        self, method: str, path: str, key: str | None = None, **kw: Any
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key or self.key}", **kw.pop("headers", {})}
        async with httpx.AsyncClient(timeout=30) as client:
            return await client.request(
                method, f"{self.yibao.ledger_url}{path}", headers=headers, **kw
            )

    async def day(self, day: date) -> dict[str, Any]:
        r = await self.call("GET", f"/v1/settlement/days/{day}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def wait_settled(self, day: date, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            body = await self.day(day)
            if body["status"] == "settled" or time.monotonic() > deadline:
                return body
            await asyncio.sleep(0.2)

    async def reconcile(self, day: date, text: str) -> httpx.Response:
        return await self.call(
            "POST",
            f"/v1/settlement/days/{day}/reconciliations",
            content=text.encode(),
            headers={"Content-Type": "text/csv"},
        )


async def pay(yibao: Yibao, amount: int) -> str:
    body = premium_body("u-" + uuid.uuid4().hex[:10], amount, phone=random_phone(), region=REGION)
    r = await yibao.create_payment(body)
    assert r.status_code == 202, r.text
    p = await yibao.wait_for(r.json()["id"], FINAL)
    assert p["status"] == "succeeded", p
    return str(p["id"])


async def test_a_day_is_closed_settled_filed_and_reconciled(system: System, yibao: Yibao) -> None:
    assert clearing_day(datetime.now(UTC) + timedelta(minutes=2)) == clearing_day(
        datetime.now(UTC)
    ), "too close to the 23:00 cut-off to run this test; run it again after 23:00 Shanghai"
    settlement = Settlement(yibao, system.env["YIBAO_OPERATOR_API_KEYS"].split(",")[0])
    day = clearing_day(datetime.now(UTC))
    paid = [await pay(yibao, amount) for amount in (38_000, 12_000, 5_000)]
    refund = await yibao.create_refund(paid[0], 8_000)
    assert refund.status_code == 202, refund.text
    refunded = await yibao.wait_refund(refund.json()["id"], {"succeeded", "failed"})
    assert refunded["status"] == "succeeded", refunded

    open_ = await settlement.day(day)
    assert open_["status"] == "open"
    [mine] = [r for r in open_["regions"] if r["region"] == REGION]
    assert (mine["count"], mine["paid"], mine["refunded"], mine["net"]) == (
        4,
        55_000,
        8_000,
        47_000,
    )

    closed = await settlement.call("POST", f"/v1/settlement/days/{day}/close?force=true")
    assert closed.status_code == 200, closed.text
    assert closed.json()["status"] in ("closed", "settled")
    settled = await settlement.wait_settled(day)
    assert settled["status"] == "settled", settled
    [mine] = [r for r in settled["regions"] if r["region"] == REGION]
    assert (mine["net"], mine["settled"], mine["transfer_amount"]) == (47_000, True, 47_000)
    again = await settlement.call("POST", f"/v1/settlement/days/{day}/close?force=true")
    assert again.json()["checkpoint"] == settled["checkpoint"]  # a closed day stays as it was

    # The bureau's file: exactly those lines, the totals, a signature by the published key.
    f = await settlement.call("GET", f"/v1/settlement/days/{day}/bureaus/{REGION}.csv")
    assert f.status_code == 200, f.text
    rows = list(csv.reader(io.StringIO(f.content.decode("utf-8"))))
    header, lines, total = rows[0], rows[1:-1], rows[-1]
    at = {name: header.index(name) for name in header}
    assert [(x[at["payment_id"]], x[at["kind"]], int(x[at["amount"]])) for x in lines] == [
        (paid[0], "payment", 38_000),
        (paid[1], "payment", 12_000),
        (paid[2], "payment", 5_000),
        (paid[0], "refund", -8_000),
    ]
    assert all(x[at["journal_seq"]].isdigit() for x in lines)
    assert total == ["TOTAL", "4", "55000", "8000", "47000"]
    async with httpx.AsyncClient() as client:
        keys = (await client.get(f"{yibao.ledger_url}/v1/journal/public-keys")).json()
        journal_key = (await client.get(f"{yibao.ledger_url}/v1/journal/public-key")).json()
    by_id = {k["key_id"]: k for k in keys}
    key = by_id[f.headers["X-Key-Id"]]  # the file names its key: the settlement files' own
    assert key["purpose"] == "settlement" and key["current"] is True
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key["public_key"]))
    public.verify(base64.b64decode(f.headers["X-Signature"]), f.content)  # raises if forged
    checkpoint = json.loads(base64.b64decode(f.headers["X-Journal-Checkpoint"]))
    assert checkpoint == settled["checkpoint"]
    assert by_id[checkpoint["key_id"]]["purpose"] == "journal"  # entries and checkpoints
    assert journal_key["key_id"] == checkpoint["key_id"] != key["key_id"]
    bureau = await settlement.call(
        "GET", f"/v1/settlement/days/{day}/bureaus/{REGION}.csv", key=yibao.bureau_key
    )
    assert bureau.status_code == 404  # Beijing's bureau key does not read Shanghai's file

    # The bank made the transfer; the bureau's cash account shows the arrival.
    reference = mine["transfer_reference"]
    async with httpx.AsyncClient() as client:
        transfer = (await client.get(f"{yibao.bank_url}/transfers/{reference}")).json()
        statement = (await client.get(f"{yibao.bank_url}/statements/{day}.csv")).text
    assert transfer["status"] == "succeeded"
    assert await yibao.balance(f"cash:{REGION}:bureau") == 47_000

    # Reconciliation with the bank's statement: clean; then two changes, both named.
    clean = await settlement.reconcile(day, statement)
    assert clean.status_code == 200, clean.text
    assert clean.json()["discrepancies"] == [], clean.json()
    assert clean.json()["matched"] >= 5
    lines_ = statement.splitlines()
    removed = next(x for x in lines_ if x.startswith(f"{paid[1]},debit,"))
    tampered = [
        x.replace(",47000,", ",47100,") if x.startswith(f"{reference},") else x
        for x in lines_
        if x != removed
    ]
    bad = await settlement.reconcile(day, "\n".join(tampered) + "\n")
    found = bad.json()["discrepancies"]
    assert sorted((d["kind"], d["reference"], d["payment_id"]) for d in found) == sorted(
        [("missing_in_bank", paid[1], paid[1]), ("amount_mismatch", reference, reference)]
    )
    mismatch = next(d for d in found if d["kind"] == "amount_mismatch")
    assert (mismatch["ledger_amount"], mismatch["bank_amount"]) == (47_000, 47_100)
    assert all(isinstance(d["journal_seq"], int) for d in found)
