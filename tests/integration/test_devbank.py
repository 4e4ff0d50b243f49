"""The development bank gateway as a real process (DESIGN.md "Contract additions: money
from outside"): idempotency by reference, the development controls (decline, delay,
outage), the statement file and its cut-off, durability across kill -9, bad input.

Started the way ``make up`` starts it (``deploy.stack.start_services``), on a free
port with its own SQLite file.
"""

from __future__ import annotations

import csv
import io
import os
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy import procs, stack
from services.devbank.domain import clearing_day, parse_cutoff
from shared.money import SHANGHAI
from tests.support import eventually

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MODULE = "services.devbank"
HEADER = "reference,kind,amount,currency,booked_at,related_reference,account"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ref(kind: str = "d") -> str:
    return f"{kind}-{secrets.token_hex(6)}"


@dataclass
class Bank:
    """One bank process: its port, books and log; start, kill -9, stop."""

    workdir: Path
    port: int
    cutoff: str = "23:00"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pidfile(self) -> Path:
        return self.workdir / "pids" / "bank-gateway.pid"

    @property
    def log(self) -> str:
        path = self.workdir / "logs" / "bank-gateway.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> None:
        env = {
            **os.environ,
            "YIBAO_ENVIRONMENT": "test",
            "YIBAO_LOG_JSON": "true",
            "BANK_GATEWAY_PORT": str(self.port),
            "BANK_GATEWAY_STORE": str(self.workdir / "bank.sqlite3"),
            "BANK_GATEWAY_CUTOFF": self.cutoff,
        }
        stack.start_services(
            env,
            log_dir=self.workdir / "logs",
            pid_dir=self.workdir / "pids",
            repo=REPO,
            services=[("bank-gateway", MODULE, self.port)],
            timeout=30,
        )

    def kill_9(self) -> None:
        pid = procs.read_pid(self.pidfile)
        assert pid is not None
        os.kill(pid, 9)
        procs.stop_process(self.pidfile, expect=MODULE)

    def stop(self) -> None:
        procs.stop_process(self.pidfile, expect=MODULE)


def _bank(tmp_path_factory: pytest.TempPathFactory, cutoff: str = "23:00") -> Iterator[Bank]:
    bank = Bank(tmp_path_factory.mktemp("devbank"), _free_port(), cutoff)
    bank.start()
    try:
        yield bank
    finally:
        bank.stop()


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bank]:
    yield from _bank(tmp_path_factory)


@pytest.fixture
async def client(bank: Bank) -> Any:
    async with httpx.AsyncClient(base_url=bank.url, timeout=10) as c:
        yield c


@pytest.fixture
async def controls_off(client: httpx.AsyncClient) -> Any:
    """Tests that touch the controls leave them off for the next."""
    yield
    await client.post("/control", json={"decline_next": 0, "delay_ms": 0})


def _debit(reference: str, amount: int = 38_000, payer_ref: str = "u-1001") -> dict[str, Any]:
    return {"reference": reference, "amount": amount, "currency": "CNY", "payer_ref": payer_ref}


async def _statement(client: httpx.AsyncClient, day: str) -> list[dict[str, str]]:
    r = await client.get(f"/statements/{day}.csv")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    assert r.text.splitlines()[0] == HEADER
    return list(csv.DictReader(io.StringIO(r.text)))


# ----------------------------------------------------------------- idempotency


async def test_a_debit_is_booked_once_per_reference(client: httpx.AsyncClient) -> None:
    ref = _ref()
    first = await client.post("/debits", json=_debit(ref))
    again = await client.post("/debits", json=_debit(ref))
    read = await client.get(f"/debits/{ref}")
    assert first.status_code == again.status_code == read.status_code == 200
    assert first.json() == {"reference": ref, "status": "succeeded", "reason": None}
    assert again.json() == read.json() == first.json()

    other = await client.post("/debits", json=_debit(ref, amount=38_001))
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "reference_reused"
    assert other.json()["error"]["param"] == "amount"

    unknown = await client.get(f"/debits/{_ref()}")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"


async def test_refunds_up_to_the_debit_each_once(client: httpx.AsyncClient) -> None:
    debit, r1, r2, r3 = _ref(), _ref("r"), _ref("r"), _ref("r")
    await client.post("/debits", json=_debit(debit, amount=10_000))

    async def refund(reference: str, amount: int, of: str = debit) -> dict[str, Any]:
        r = await client.post(
            "/refunds", json={"reference": reference, "debit_reference": of, "amount": amount}
        )
        assert r.status_code == 200, r.text
        return dict(r.json())

    assert await refund(r1, 6_000) == {"reference": r1, "status": "succeeded", "reason": None}
    assert await refund(r1, 6_000) == {"reference": r1, "status": "succeeded", "reason": None}
    assert (await refund(r2, 4_001))["reason"] == "exceeds_debit"
    assert (await refund(r3, 4_000))["status"] == "succeeded"
    assert (await refund(_ref("r"), 1))["reason"] == "exceeds_debit"
    assert (await refund(_ref("r"), 1, of=_ref()))["reason"] == "unknown_debit"
    assert (await client.get(f"/refunds/{r2}")).json()["status"] == "declined"

    conflict = await client.post(
        "/refunds", json={"reference": r1, "debit_reference": debit, "amount": 5_999}
    )
    assert conflict.status_code == 409
    assert conflict.json()["error"]["param"] == "amount"


async def test_transfers_are_idempotent(client: httpx.AsyncClient) -> None:
    ref = _ref("t")
    body = {"reference": ref, "to_account": "bureau:110000", "amount": 1_234_500}
    first = await client.post("/transfers", json=body)
    again = await client.post("/transfers", json=body)
    assert first.json() == again.json() == {"reference": ref, "status": "succeeded", "reason": None}
    assert (await client.get(f"/transfers/{ref}")).json() == first.json()
    moved = await client.post("/transfers", json={**body, "to_account": "bureau:310000"})
    assert moved.status_code == 409
    assert moved.json()["error"]["param"] == "to_account"


# ----------------------------------------------------------------- controls


@pytest.mark.usefixtures("controls_off")
async def test_decline_next_declines_that_many_new_debits(client: httpx.AsyncClient) -> None:
    set_ = await client.post("/control", json={"decline_next": 2})
    assert set_.json()["decline_next"] == 2
    refs = [_ref() for _ in range(3)]
    first = (await client.post("/debits", json=_debit(refs[0]))).json()
    # A repeat answers what was stored and does not use up a decline.
    assert (await client.post("/debits", json=_debit(refs[0]))).json() == first
    answers = [first] + [(await client.post("/debits", json=_debit(r))).json() for r in refs[1:]]
    assert [(a["status"], a["reason"]) for a in answers] == [
        ("declined", "declined_by_bank"),
        ("declined", "declined_by_bank"),
        ("succeeded", None),
    ]
    assert (await client.get("/control")).json()["decline_next"] == 0
    # A declined debit cannot be refunded.
    refund = await client.post(
        "/refunds", json={"reference": _ref("r"), "debit_reference": refs[0], "amount": 1}
    )
    assert refund.json()["status"] == "declined"
    assert refund.json()["reason"] == "debit_not_succeeded"


@pytest.mark.usefixtures("controls_off")
async def test_a_delayed_answer_was_booked_before_the_caller_gave_up(
    client: httpx.AsyncClient, bank: Bank
) -> None:
    await client.post("/control", json={"delay_ms": 5_000})
    assert (await client.get("/control")).json()["delay_ms"] == 5_000  # controls answer at once
    ref = _ref()
    async with httpx.AsyncClient(base_url=bank.url, timeout=0.5) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            await impatient.post("/debits", json=_debit(ref))
    await client.post("/control", json={"delay_ms": 0})
    # The bank took the money although the caller never heard so: ask again.
    read = await client.get(f"/debits/{ref}")
    assert read.json() == {"reference": ref, "status": "succeeded", "reason": None}


async def test_unavailable_refuses_connections_then_comes_back(
    client: httpx.AsyncClient, bank: Bank
) -> None:
    ref = _ref()
    assert (await client.post("/debits", json=_debit(ref))).status_code == 200
    answer = await client.post("/control", json={"unavailable_for_s": 3})
    assert answer.status_code == 200
    assert answer.json()["unavailable_until"] is not None

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", bank.port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False

    await eventually(refused, within=2)
    # The kept-alive client too: a refused connection, not an HTTP answer.
    with pytest.raises(httpx.ConnectError):
        await client.get(f"/debits/{ref}")

    async def back() -> bool:
        try:
            return (await client.get("/healthz")).status_code == 200
        except httpx.ConnectError:
            return False

    await eventually(back, within=20)
    assert (await client.get(f"/debits/{ref}")).json()["status"] == "succeeded"
    assert (await client.get("/control")).json()["unavailable_until"] is None


# ----------------------------------------------------------------- statements


async def test_statement_lists_the_days_succeeded_bookings(client: httpx.AsyncClient) -> None:
    debit, declined, refund, transfer = _ref(), _ref(), _ref("r"), _ref("t")
    await client.post("/debits", json=_debit(debit, amount=50_000, payer_ref="u-statement"))
    await client.post("/control", json={"decline_next": 1})
    await client.post("/debits", json=_debit(declined, amount=70_000))
    await client.post(
        "/refunds", json={"reference": refund, "debit_reference": debit, "amount": 20_000}
    )
    await client.post(
        "/transfers", json={"reference": transfer, "to_account": "bureau:110000", "amount": 30_000}
    )
    # Today and tomorrow (Asia/Shanghai) hold everything just booked, whatever the hour.
    today = datetime.now(SHANGHAI).date()
    rows = [
        row
        for day in (today, today + timedelta(days=1))
        for row in await _statement(client, day.isoformat())
        if row["reference"] in {debit, declined, refund, transfer}
    ]
    assert [(r["reference"], r["kind"], r["amount"], r["currency"]) for r in rows] == [
        (debit, "debit", "50000", "CNY"),
        (refund, "refund", "20000", "CNY"),
        (transfer, "transfer", "30000", "CNY"),
    ]
    assert (rows[0]["related_reference"], rows[0]["account"]) == ("", "u-statement")
    assert (rows[1]["related_reference"], rows[1]["account"]) == (debit, "u-statement")
    assert rows[2]["account"] == "bureau:110000"
    for row in rows:
        booked_at = datetime.fromisoformat(row["booked_at"])
        assert booked_at.utcoffset() == timedelta(0)
        day = clearing_day(booked_at, parse_cutoff("23:00")).isoformat()
        assert row in await _statement(client, day)


async def test_a_day_with_nothing_booked_is_just_the_header(client: httpx.AsyncClient) -> None:
    assert await _statement(client, "2001-01-01") == []


async def test_bookings_at_or_after_the_cut_off_belong_to_the_next_day(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # The cut-off is this very minute, so what is booked now is past it.
    chosen = datetime.now(UTC).astimezone(SHANGHAI)
    for late in _bank(tmp_path_factory, cutoff=chosen.strftime("%H:%M")):
        async with httpx.AsyncClient(base_url=late.url, timeout=10) as c:
            ref = _ref()
            assert (await c.post("/debits", json=_debit(ref))).json()["status"] == "succeeded"
            today, next_day = chosen.date(), chosen.date() + timedelta(days=1)
            assert ref not in {r["reference"] for r in await _statement(c, today.isoformat())}
            assert ref in {r["reference"] for r in await _statement(c, next_day.isoformat())}


# ----------------------------------------------------------------- durability


async def test_books_survive_kill_9_and_restart(tmp_path_factory: pytest.TempPathFactory) -> None:
    for bank in _bank(tmp_path_factory):
        debit, refund = _ref(), _ref("r")
        async with httpx.AsyncClient(base_url=bank.url, timeout=10) as c:
            await c.post("/debits", json=_debit(debit, amount=9_000))
            await c.post(
                "/refunds", json={"reference": refund, "debit_reference": debit, "amount": 5_000}
            )
        bank.kill_9()
        bank.start()
        async with httpx.AsyncClient(base_url=bank.url, timeout=10) as c:
            assert (await c.get(f"/debits/{debit}")).json()["status"] == "succeeded"
            assert (await c.post("/debits", json=_debit(debit, amount=9_000))).status_code == 200
            assert (await c.get(f"/refunds/{refund}")).json()["status"] == "succeeded"
            # What was refunded before the crash still counts.
            over = await c.post(
                "/refunds", json={"reference": _ref("r"), "debit_reference": debit, "amount": 4_001}
            )
            assert over.json()["reason"] == "exceeds_debit"
            today = datetime.now(SHANGHAI).date()
            refs = [
                r["reference"]
                for day in (today, today + timedelta(days=1))
                for r in await _statement(c, day.isoformat())
            ]
            assert sorted(refs) == sorted([debit, refund])  # each booked exactly once


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/debits", {"amount": 0}, "amount"),
        ("/debits", {"amount": -100}, "amount"),
        ("/debits", {"amount": 1.5}, "amount"),
        ("/debits", {"amount": 100.0}, "amount"),
        ("/debits", {"amount": "100"}, "amount"),
        ("/debits", {"amount": True}, "amount"),
        ("/debits", {"amount": 10**16}, "amount"),
        ("/debits", {"currency": "USD"}, "currency"),
        ("/debits", {"currency": None}, "currency"),
        ("/debits", {"reference": ""}, "reference"),
        ("/debits", {"reference": "has space"}, "reference"),
        ("/debits", {"reference": "a/b"}, "reference"),
        ("/debits", {"reference": "x" * 129}, "reference"),
        ("/debits", {"payer_ref": ""}, "payer_ref"),
        ("/debits", {"payer_ref": "u\n1"}, "payer_ref"),
        ("/refunds", {"debit_reference": None}, "debit_reference"),
        ("/refunds", {"amount": 0}, "amount"),
        ("/transfers", {"to_account": ""}, "to_account"),
        ("/transfers", {"amount": 2.5}, "amount"),
        ("/control", {"delay_ms": -1}, "delay_ms"),
        ("/control", {"decline_next": 1.5}, "decline_next"),
        ("/control", {"unavailable_for_s": 0}, "unavailable_for_s"),
        ("/control", {"decline_nxt": 1}, "decline_nxt"),
    ],
)
async def test_bad_input_is_a_4xx_error_object_naming_the_field(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], param: str
) -> None:
    valid: dict[str, dict[str, Any]] = {
        "/debits": _debit(_ref()),
        "/refunds": {"reference": _ref("r"), "debit_reference": _ref(), "amount": 1},
        "/transfers": {"reference": _ref("t"), "to_account": "bureau:110000", "amount": 1},
        "/control": {},
    }
    r = await client.post(path, json={**valid[path], **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param
    assert error["code"] == "invalid_request"
    assert error["message"]
    if path == "/debits":
        assert (await client.get(f"/debits/{valid[path]['reference']}")).status_code == 404


async def test_missing_fields_bad_json_and_bad_days(client: httpx.AsyncClient) -> None:
    missing = await client.post("/debits", json={"reference": _ref(), "amount": 100})
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "currency"
    garbage = await client.post(
        "/debits", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert garbage.status_code == 400
    assert garbage.json()["error"]["code"] == "invalid_json"
    nothing = await client.post("/control", json={})
    assert nothing.status_code == 400
    for day in ("2027-02-30", "20270131", "today"):
        r = await client.get(f"/statements/{day}.csv")
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "day"


async def test_logs_carry_no_payer_reference(client: httpx.AsyncClient, bank: Bank) -> None:
    payer_ref = "card-" + secrets.token_hex(8)
    ref = _ref()
    await client.post("/debits", json=_debit(ref, payer_ref=payer_ref))

    def logged() -> bool:
        return ref in bank.log

    await eventually(logged, within=10)
    assert payer_ref not in bank.log
