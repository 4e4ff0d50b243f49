"""The resident's side of the ledger (issues 11 and 12) on a real PostgreSQL (and, for
the owner events, real Kafka): a payer's accounts, records, overview and certificate
are read by the caller that enrolled it (and operators) only; another caller gets the
404 of a payer nobody enrolled."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from services.ledger import store
from services.ledger.api import create_app
from services.ledger.config import LedgerSettings
from services.ledger.domain.posting import PostingKeys
from services.ledger.domain.receipts import ReceiptPolicy
from services.ledger.handlers import PostingSetup, build_handlers
from services.ledger.receipts.service import register_signers
from services.ledger.residents.keys import records_session_key
from services.ledger.signing import LedgerSigners, ReceiptSigner, verify_face
from shared.db import create_pool, migrate
from shared.events import Envelope, Event, PayerEnrolled, decode_payload, new_event
from shared.http import CallerKeys
from shared.money import shanghai_day
from shared.sessions import issue_records_session
from tests.integration.test_ledger_flow import (
    MIGRATIONS,
    Ledger,
    authorized,
    dump_projections,
    journal_events,
    ledger,  # noqa: F401 - the fixture, for the test on real Kafka
)
from tests.integration.test_ledger_refunds import refund
from tests.support import Infra

pytestmark = pytest.mark.integration

KEY_A, KEY_B = "test-resident-caller-a", "test-resident-caller-b"
OPERATOR_KEY = "test-resident-operator"
BUREAU_KEY = "test-resident-bureau-110000"
KEYS = CallerKeys([KEY_A, KEY_B], operator_keys=[OPERATOR_KEY])
CALLER_A, CALLER_B = (KEYS.caller_of(f"Bearer {k}") for k in (KEY_A, KEY_B))
A, B = ({"Authorization": f"Bearer {k}"} for k in (KEY_A, KEY_B))
OPERATOR = {"Authorization": f"Bearer {OPERATOR_KEY}"}
BUREAU = {"Authorization": f"Bearer {BUREAU_KEY}"}


def settings(rate_per_minute: int = 1000) -> LedgerSettings:
    return LedgerSettings(
        YIBAO_API_KEYS=f"{KEY_A},{KEY_B}",
        YIBAO_OPERATOR_API_KEYS=OPERATOR_KEY,
        YIBAO_BUREAU_API_KEYS=f"110000:{BUREAU_KEY}",
        verify_rate_per_minute=rate_per_minute,
    )


def enrolled(payer: str, caller: str, id_hash: str | None = None) -> Envelope:
    return new_event(
        PayerEnrolled(
            payer_id=payer, caller_id=caller, id_number_hash=id_hash, enrolled_at=datetime.now(UTC)
        ),
        producer="payment",
        key=payer,
        correlation_id=None,
    )


@dataclass
class Resident:
    pool: asyncpg.Pool
    handlers: PostingSetup
    http: httpx.AsyncClient
    settings: LedgerSettings

    async def post(self, env: Envelope) -> None:
        """Hand one event to the ledger's handler, as the consumer does."""
        event = Event(env, decode_payload(env))
        async with self.pool.acquire() as conn, conn.transaction():
            await build_handlers(self.handlers)[event.event_type](conn, event)

    async def get(self, url: str, headers: dict[str, str], **params: Any) -> httpx.Response:
        return await self.http.get(url, headers=headers, params=params)


@pytest.fixture
async def resident(
    infra: Infra, new_database: Callable[..., Awaitable[str]]
) -> AsyncIterator[Resident]:
    dsn = await new_database()
    await migrate(dsn, MIGRATIONS)
    pool = await create_pool(dsn, max_size=5)
    signer = ReceiptSigner(uuid.uuid4().bytes * 2)
    handlers = PostingSetup(
        ledger_topic="t.ledger.v1",
        keys=PostingKeys(check_key=b"h" * 32, signer=signer),
        policy=ReceiptPolicy(),
    )
    await register_signers(pool, LedgerSigners.undivided(signer))  # as at start-up
    conf = settings()
    app = create_app(conf, pool, signer=signer)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://ledger"
    ) as http:
        try:
            yield Resident(pool, handlers, http, conf)
        finally:
            await pool.close()


THIS_YEAR = shanghai_day(datetime.now(UTC)).year
HASH_P, HASH_PARENT = "a1" * 32, "b2" * 32  # two people's keyed ID hashes


def premium(
    payer: str,
    amount: int,
    *,
    caller: str = CALLER_A,
    insured: str = HASH_P,
    relation: str = "self",
    name: str = "张三",
    period: str = str(THIS_YEAR),
    scheme: str = "urban_rural_resident",
    region: str = "110000",
    method: str = "bank_card",
) -> Envelope:
    """A premium as payment authorizes it: for ``insured`` (a keyed ID hash)."""
    env = authorized(
        payer, amount, method=method, purpose="premium", region=region, caller_id=caller
    )
    p = env.payload["payment"]
    p["beneficiary"].update(id_number_hash=insured, relation=relation, name=name)
    p["purpose"].update(period=period, scheme=scheme)
    return env


def topup(payer: str, amount: int, caller: str = CALLER_A) -> Envelope:
    return authorized(payer, amount, method="bank_card", purpose="wallet_topup", caller_id=caller)


def session(payer: str, caller: str, key: bytes, minutes: int = 10) -> dict[str, str]:
    expires = datetime.now(UTC) + timedelta(minutes=minutes)
    token = issue_records_session(key, caller=caller, payer_id=payer, expires_at=expires)
    return {"X-Records-Session": token}


def assert_not_found(r: httpx.Response) -> None:
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "not_found"


async def test_a_payers_accounts_are_read_by_its_caller_only(resident: Resident) -> None:
    mine, nobodys = f"u-{uuid.uuid4().hex[:8]}", f"u-{uuid.uuid4().hex[:8]}"
    await resident.post(enrolled(mine, CALLER_A))
    await resident.post(enrolled(mine, CALLER_A))  # redelivered: changes nothing
    await resident.post(enrolled(mine, CALLER_B))  # another caller cannot take it over
    await resident.post(
        authorized(mine, 50_000, method="bank_card", purpose="wallet_topup", caller_id=CALLER_A)
    )
    for account in (f"wallet:{mine}", f"medical:{mine}"):
        r = await resident.get(f"/v1/accounts/{account}", A)
        assert r.status_code == 200, r.text
        assert (await resident.get(f"/v1/accounts/{account}/statement", A)).status_code == 200
        # Caller B, a bureau key, and anyone asking for a payer nobody enrolled: one 404.
        other = await resident.get(f"/v1/accounts/{account}", B)
        assert_not_found(other)
        assert_not_found(await resident.get(f"/v1/accounts/{account}/statement", B))
        assert_not_found(await resident.get(f"/v1/accounts/{account}", BUREAU))
        unknown = await resident.get(f"/v1/accounts/{account.split(':')[0]}:{nobodys}", A)
        assert_not_found(unknown)
        # No oracle: the message differs only by the account id asked for.
        assert other.json()["error"]["message"].replace(mine, "X") == unknown.json()["error"][
            "message"
        ].replace(nobodys, "X")
        assert (await resident.get(f"/v1/accounts/{account}", OPERATOR)).status_code == 200
    assert (await resident.get(f"/v1/accounts/wallet:{mine}", A)).json()["balance"] == 50_000
    assert (await resident.get(f"/v1/accounts/wallet:{mine}", OPERATOR)).json()["balance"] == 50_000
    row = await resident.pool.fetchrow("SELECT * FROM payer_owners WHERE payer_id = $1", mine)
    assert row is not None and row["caller_id"] == CALLER_A

    # Institutional accounts: every caller key; a bureau key its own region only.
    for headers in (A, B, OPERATOR, BUREAU):
        r = await resident.get("/v1/accounts/bureau:110000:premium", headers)
        assert r.status_code == 200, r.text
    assert (await resident.get("/v1/accounts/cash:110000:platform", B)).status_code == 200
    assert_not_found(await resident.get("/v1/accounts/bureau:310000:premium", BUREAU))


async def test_an_older_payer_is_owned_through_its_payments_caller(resident: Resident) -> None:
    payer = f"u-{uuid.uuid4().hex[:8]}"
    paid = authorized(payer, 38_000, method="bank_card", purpose="premium", caller_id=CALLER_B)
    await resident.post(paid)
    assert (await resident.get(f"/v1/accounts/wallet:{payer}", B)).status_code == 200
    assert_not_found(await resident.get(f"/v1/accounts/wallet:{payer}", A))
    # The payer insures themself: its keyed ID hash is learnt for the insured look-up.
    row = await resident.pool.fetchrow("SELECT * FROM payer_owners WHERE payer_id = $1", payer)
    assert row["id_number_hash"] == "ab" * 32
    # A payment from before issue 11 (no caller) names no owner: nobody but operators.
    old = f"u-{uuid.uuid4().hex[:8]}"
    await resident.post(authorized(old, 100, method="bank_card", purpose="premium", caller_id=None))
    assert_not_found(await resident.get(f"/v1/accounts/wallet:{old}", A))
    assert (await resident.get(f"/v1/accounts/wallet:{old}", OPERATOR)).status_code == 200


async def test_payer_enrolled_reaches_the_ledger_over_kafka(
    ledger: Ledger,  # noqa: F811 - the fixture imported above
) -> None:
    payer = f"u-{uuid.uuid4().hex[:8]}"
    await ledger.publish(enrolled(payer, CALLER_A, "cd" * 32))
    await ledger.until(
        "SELECT caller_id FROM payer_owners WHERE payer_id = $1", payer, want=CALLER_A
    )
    hashed = await ledger.pool.fetchval(
        "SELECT id_number_hash FROM payer_owners WHERE payer_id = $1", payer
    )
    assert hashed == "cd" * 32
    assert await ledger.pool.fetchval("SELECT count(*) FROM journal") == 0


async def test_projections_still_rebuild_byte_identically(resident: Resident) -> None:
    payer = f"u-{uuid.uuid4().hex[:8]}"
    await resident.post(enrolled(payer, CALLER_A, "ab" * 32))
    for amount, purpose in ((38_000, "premium"), (10_000, "wallet_topup")):
        await resident.post(
            authorized(payer, amount, method="bank_card", purpose=purpose, caller_id=CALLER_A)
        )
    async with resident.pool.acquire() as conn:
        before = await dump_projections(conn)
        await store.rebuild_projections(conn, await journal_events(conn))
        assert await dump_projections(conn) == before


async def test_records_list_filters_pages_and_the_insured_view(resident: Resident) -> None:
    me, parent, stranger = (f"u-{uuid.uuid4().hex[:8]}" for _ in range(3))
    await resident.post(enrolled(me, CALLER_A, HASH_P))
    await resident.post(enrolled(parent, CALLER_A, HASH_PARENT))
    await resident.post(enrolled(stranger, CALLER_B, None))
    mine = premium(me, 79_500)
    await resident.post(mine)
    await resident.post(topup(me, 20_000))
    for_parent = premium(
        me, 46_000, insured=HASH_PARENT, relation="parent", name="李四", region="310000"
    )
    await resident.post(for_parent)
    await resident.post(refund(mine, 30_000))
    # Caller B's payer pays for the same person: not A's record of that person.
    await resident.post(
        premium(stranger, 46_000, caller=CALLER_B, insured=HASH_PARENT, relation="parent")
    )
    url = f"/v1/payers/{me}/records"

    body = (await resident.get(url, A)).json()
    assert [r["payment_id"] for r in body["records"]] == [
        for_parent.correlation_id,
        body["records"][1]["payment_id"],
        mine.correlation_id,
    ]
    assert body["has_more"] is False and body["role"] == "payer"
    first = body["records"][2]
    assert (first["status"], first["refunded_amount"], first["amount"]) == (
        "partially_refunded",
        30_000,
        79_500,
    )
    assert first["item"] == f"城乡居民基本医疗保险费 {THIS_YEAR}"
    assert first["payee"] == "北京市医疗保障局" and first["payee_id"] == "bureau:110000"
    assert first["receipt"]["code"] and first["insured"]["name"] == "张*"
    assert body["records"][1]["kind"] == "wallet_topup" and body["records"][1]["receipt"] is None
    assert body["records"][0]["insured"] == {
        "name": "李*",
        "id_number_masked": "110105********002X",
        "relation": "parent",
    }

    async def ids(**params: Any) -> list[str]:
        r = await resident.get(url, A, **params)
        assert r.status_code == 200, r.text
        return [x["payment_id"] for x in r.json()["records"]]

    assert await ids(item="premium") == [for_parent.correlation_id, mine.correlation_id]
    assert await ids(item="wallet_topup") == [body["records"][1]["payment_id"]]
    assert await ids(payee="bureau:310000") == [for_parent.correlation_id]
    assert await ids(year=THIS_YEAR, item="urban_rural_resident") == [
        for_parent.correlation_id,
        mine.correlation_id,
    ]
    assert await ids(year=THIS_YEAR - 1) == []
    paged = (await resident.get(url, A, limit=2)).json()
    assert len(paged["records"]) == 2 and paged["has_more"] is True
    rest = (await resident.get(url, A, limit=2, starting_after=paged["next_starting_after"])).json()
    assert [x["payment_id"] for x in rest["records"]] == [mine.correlation_id]
    assert rest["has_more"] is False and rest["next_starting_after"] is None
    for params, param in (
        ({"year": THIS_YEAR - 5}, "year"),
        ({"item": "lottery"}, "item"),
        ({"role": "owner"}, "role"),
        ({"starting_after": "pay_x"}, "starting_after"),
    ):
        bad = await resident.get(url, A, **params)
        assert bad.status_code == 400, bad.text
        assert bad.json()["error"]["param"] == param

    # The parent's records as the insured: what A's payers paid for this person only.
    insured = (await resident.get(f"/v1/payers/{parent}/records", A, role="insured")).json()
    assert [x["payment_id"] for x in insured["records"]] == [for_parent.correlation_id]
    assert insured["records"][0]["payer_id"] == me
    assert (await resident.get(f"/v1/payers/{parent}/records", A)).json()["records"] == []
    # Me as the insured: my own premium.
    own = (await resident.get(url, A, role="insured")).json()
    assert [x["payment_id"] for x in own["records"]] == [mine.correlation_id]

    # Another caller, and a payer nobody enrolled: the same 404. Operators read.
    assert_not_found(await resident.get(url, B))
    assert_not_found(await resident.get(f"/v1/payers/u-nobody-{uuid.uuid4().hex[:6]}/records", A))
    assert (await resident.get(url, OPERATOR)).status_code == 200
    assert (await resident.get(url, BUREAU)).status_code == 403  # not a bureau's business


async def test_record_detail_needs_a_records_session(resident: Resident) -> None:
    me, parent = f"u-{uuid.uuid4().hex[:8]}", f"u-{uuid.uuid4().hex[:8]}"
    await resident.post(enrolled(me, CALLER_A, HASH_P))
    await resident.post(enrolled(parent, CALLER_A, HASH_PARENT))
    mine = premium(me, 79_500)
    await resident.post(mine)
    back = refund(mine, 79_500)
    await resident.post(back)
    for_parent = premium(me, 46_000, insured=HASH_PARENT, relation="parent", name="李四")
    await resident.post(for_parent)
    key = records_session_key(resident.settings)
    url = f"/v1/payers/{me}/records/{mine.correlation_id}"

    missing = await resident.get(url, A)
    assert missing.status_code == 401, missing.text
    error = missing.json()["error"]
    assert error["code"] == "records_session_required"
    assert error["param"] == "X-Records-Session" and "SMS" in error["message"]
    for wrong in (
        {"X-Records-Session": "rs1.1.x.y"},
        session(me, CALLER_A, key, minutes=-1),  # expired
        session(parent, CALLER_A, key),  # another payer's
        session(me, CALLER_B, key),  # another caller's
        session(me, CALLER_A, b"k" * 32),  # not ours
    ):
        r = await resident.get(url, {**A, **wrong})
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "records_session_required"

    mine_session = session(me, CALLER_A, key)
    detail = await resident.get(url, {**A, **mine_session})
    assert detail.status_code == 200, detail.text
    d = detail.json()
    assert d["status"] == "refunded" and d["refunded_amount"] == 79_500
    assert d["bank_reference"] == f"bk_{mine.correlation_id}" and d["method"] == "bank_card"
    assert [(x["kind"], x["amount"]) for x in d["receipts"]] == [
        ("original", 79_500),
        ("red", -79_500),
    ]
    assert [x["refund_id"] for x in d["refunds"]] == [back.payload["refund_id"]]
    assert d["refunds"][0]["receipt"]["number"] == d["receipts"][1]["number"]
    assert sum(x["amount"] for x in d["lines"]) == 0 and len(d["lines"]) == 4
    # Another caller: 404 before any session talk. An unknown payment: 404.
    assert_not_found(await resident.get(url, {**B, **session(me, CALLER_B, key)}))
    unknown = await resident.get(f"/v1/payers/{me}/records/pay_nope", {**A, **mine_session})
    assert_not_found(unknown)
    # The parent, with their own session, sees the premium paid for them; not my own.
    parent_session = {**A, **session(parent, CALLER_A, key)}
    ok = await resident.get(
        f"/v1/payers/{parent}/records/{for_parent.correlation_id}", parent_session
    )
    assert ok.status_code == 200, ok.text
    assert_not_found(
        await resident.get(f"/v1/payers/{parent}/records/{mine.correlation_id}", parent_session)
    )


async def test_overview_balances_years_and_this_years_status(resident: Resident) -> None:
    me = f"u-{uuid.uuid4().hex[:8]}"
    await resident.post(enrolled(me, CALLER_A, HASH_P + "00"))
    hash_me = HASH_P + "00"
    await resident.post(topup(me, 200_000))
    for period in (str(THIS_YEAR - 2), str(THIS_YEAR - 1), str(THIS_YEAR)):
        await resident.post(premium(me, 38_000, insured=hash_me, period=period, method="wallet"))
    gone = premium(me, 38_000, insured=hash_me, period=str(THIS_YEAR), region="310000")
    await resident.post(gone)
    await resident.post(refund(gone, 38_000))  # fully refunded: not insured there
    r = await resident.get(f"/v1/payers/{me}/overview", A)
    assert r.status_code == 200, r.text
    o = r.json()
    assert o["wallet_balance"] == 200_000 - 3 * 38_000
    assert o["medical_account_balance"] == 0
    assert o["years_insured"] == 3
    assert o["years_insured_by_scheme"] == {
        "urban_rural_resident": [THIS_YEAR - 2, THIS_YEAR - 1, THIS_YEAR]
    }
    assert o["current_year"] == THIS_YEAR
    assert o["insurance"] == [
        {
            "scheme": "urban_rural_resident",
            "region": "110000",
            "bureau": "北京市医疗保障局",
            "year": THIS_YEAR,
            "status": "insured",
            "periods": [str(THIS_YEAR)],
            "valid_from": f"{THIS_YEAR}-01-01",
            "valid_to": f"{THIS_YEAR}-12-31",
        }
    ]
    assert_not_found(await resident.get(f"/v1/payers/{me}/overview", B))
    assert (await resident.get(f"/v1/payers/{me}/overview", OPERATOR)).status_code == 200
    # Records are a view of the journal: a rebuild of the projections changes nothing.
    before = (await resident.get(f"/v1/payers/{me}/records", A)).json()
    async with resident.pool.acquire() as conn:
        snapshot = await dump_projections(conn)
        await store.rebuild_projections(conn, await journal_events(conn))
        assert await dump_projections(conn) == snapshot
    assert (await resident.get(f"/v1/payers/{me}/records", A)).json() == before
    assert (await resident.get(f"/v1/payers/{me}/overview", A)).json() == o


async def test_certificate_is_signed_masked_stable_and_verifiable(resident: Resident) -> None:
    me, parent = f"u-{uuid.uuid4().hex[:8]}", f"u-{uuid.uuid4().hex[:8]}"
    await resident.post(enrolled(me, CALLER_A, HASH_P))
    await resident.post(enrolled(parent, CALLER_A, HASH_PARENT))
    await resident.post(premium(me, 38_000, period=str(THIS_YEAR)))
    quarter = premium(me, 38_000, scheme="flexible_employment", period=f"{THIS_YEAR}-Q1")
    await resident.post(quarter)
    await resident.post(premium(me, 46_000, insured=HASH_PARENT, relation="parent", name="李四"))
    url = f"/v1/payers/{me}/certificate"

    r = await resident.get(url, A)
    assert r.status_code == 200, r.text
    cert = r.json()
    face = cert["certificate"]
    assert face["year"] == THIS_YEAR and face["title"] == "电子参保凭证"
    assert face["insured"] == {"name": "张*", "id_number_masked": "110105********002X"}
    assert [
        (c["scheme"], c["paid_periods"], c["valid_from"], c["valid_to"]) for c in face["coverages"]
    ] == [
        ("flexible_employment", [f"{THIS_YEAR}-Q1"], f"{THIS_YEAR}-01-01", f"{THIS_YEAR}-03-31"),
        ("urban_rural_resident", [str(THIS_YEAR)], f"{THIS_YEAR}-01-01", f"{THIS_YEAR}-12-31"),
    ]
    assert face["coverages"][0]["bureau"] == "北京市医疗保障局"
    assert me not in r.text and "张三" not in r.text  # nothing unmasked, no payer id
    # Signed by the published certificate key.
    key = (await resident.http.get("/v1/certificates/public-key")).json()
    assert key["key_id"] == cert["key_id"]
    assert verify_face(face, cert["signature"], base64.b64decode(key["public_key"]))
    # Asking again (any format) gives the same certificate; the parent's is its own.
    again = (await resident.get(url, A, year=THIS_YEAR)).json()
    assert (again["number"], again["signature"]) == (cert["number"], cert["signature"])
    page = await resident.get(f"{url}.html", A)
    assert page.status_code == 200 and cert["number"] in page.text and "张*" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    pdf = await resident.get(f"{url}.pdf", A)
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    theirs = (await resident.get(f"/v1/payers/{parent}/certificate", A)).json()
    assert theirs["number"] != cert["number"]
    assert theirs["certificate"]["insured"]["name"] == "李*"

    # 查验: number and check code → the masked face and the key; wrong → invalid.
    ok = await resident.http.post(
        "/v1/certificates/verify", json={"number": cert["number"], "check_code": cert["check_code"]}
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["valid"] is True and ok.json()["certificate"] == face
    assert ok.json()["key_id"] == cert["key_id"] and ok.json()["checked_count"] == 1
    wrong = await resident.http.post(
        "/v1/certificates/verify", json={"number": cert["number"], "check_code": "AAAAAAAA"}
    )
    assert wrong.json() == {
        "valid": False,
        "current": None,
        "certificate": None,
        "signature": None,
        "key_id": None,
        "algorithm": None,
        "checked_count": 0,
    }
    assert ok.json()["current"] is True
    bad = await resident.http.post("/v1/certificates/verify", json={"number": "1"})
    assert bad.status_code == 400

    # Another caller: 404; a year with nothing paid: 404 naming the year; operators read.
    assert_not_found(await resident.get(url, B))
    assert_not_found(await resident.get(f"{url}.pdf", B))
    none = await resident.get(url, A, year=THIS_YEAR - 1)
    assert_not_found(none)
    assert none.json()["error"]["param"] == "year"
    assert (await resident.get(url, OPERATOR)).json()["number"] == cert["number"]

    # The quarter is refunded: the certificate issued before verifies but is outdated,
    # and asking again gives a new one stating only the resident scheme.
    await resident.post(refund(quarter, 38_000))
    body = {"number": cert["number"], "check_code": cert["check_code"]}
    outdated = (await resident.http.post("/v1/certificates/verify", json=body)).json()
    assert (outdated["valid"], outdated["current"]) == (True, False)
    fresh = (await resident.get(url, A)).json()
    assert fresh["number"] != cert["number"]
    assert [c["scheme"] for c in fresh["certificate"]["coverages"]] == ["urban_rural_resident"]


async def test_certificate_verification_is_rate_limited_like_receipts(resident: Resident) -> None:
    app = create_app(settings(rate_per_minute=2), resident.pool)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://ledger"
    ) as http:
        body = {"number": "20260000000001", "check_code": "AAAAAAAA"}
        for _ in range(2):
            r = await http.post("/v1/certificates/verify", json=body)
            assert r.status_code == 200 and r.json()["valid"] is False
        limited = await http.post("/v1/certificates/verify", json=body)
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "rate_limited"
