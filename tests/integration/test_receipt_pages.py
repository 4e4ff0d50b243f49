"""Receipts for people (HTML page, PDF, 查验 page) and the account statement, over HTTP
against a real PostgreSQL. A public read gives the check code (``?check_code=``) and
sees the masked face; the owner's key sees the full face (test_receipt_access)."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from services.ledger.api import create_app
from services.ledger.config import LedgerSettings
from services.ledger.domain.posting import PostingKeys
from services.ledger.domain.receipts import ReceiptPolicy
from services.ledger.handlers import PostingSetup, build_handlers
from services.ledger.receipts.service import register_signers
from services.ledger.signing import LedgerSigners, ReceiptSigner
from shared.db import create_pool, migrate
from shared.events import Envelope, Event, decode_payload
from shared.http import CallerKeys
from tests.integration.test_ledger_flow import API_KEY, MIGRATIONS, authorized
from tests.support import Infra

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": f"Bearer {API_KEY}"}
OTHER_KEY = "test-other-caller-key"  # a second, unrelated caller
OPERATOR_KEY = "test-operator-key"
KEYS = CallerKeys([API_KEY, OTHER_KEY], operator_keys=[OPERATOR_KEY])
OWNER = KEYS.caller_of(f"Bearer {API_KEY}")  # the pseudonymous id of API_KEY's caller


def ledger_settings(rate_per_minute: int) -> LedgerSettings:
    """Two caller keys and an operator key; the given public rate."""
    return LedgerSettings(
        YIBAO_API_KEYS=f"{API_KEY},{OTHER_KEY}",
        YIBAO_OPERATOR_API_KEYS=OPERATOR_KEY,
        verify_rate_per_minute=rate_per_minute,
    )


def ensure_extras(*tools: str) -> None:
    """Install the Debian extras (fonts, chromium, poppler) when a tool is missing."""
    if all(shutil.which(t) for t in tools):
        return
    subprocess.run(["bash", str(ROOT / "deploy" / "install-extras.sh")], check=True)  # noqa: S607


def tool_output(*args: str, stdin: bytes | None = None) -> str:
    """Run a poppler tool (pdftotext, pdffonts) and return what it prints."""
    done = subprocess.run(args, input=stdin, capture_output=True, check=True)
    return done.stdout.decode()


@dataclass
class Receipts:
    pool: asyncpg.Pool
    handlers: PostingSetup
    http: httpx.AsyncClient

    async def pay(
        self,
        payer: str,
        amount: int,
        *,
        method: str = "bank_card",
        purpose: str = "premium",
        owner: str | None = OWNER,
    ) -> str:
        """Book a payment as if payment authorized it for ``owner`` (a caller id; None:
        a payment from before issue 11, owned by no caller)."""
        env = authorized(payer, amount, method=method, purpose=purpose)
        env.payload["payment"]["caller_id"] = owner
        await self.post(env)
        return str(env.correlation_id)

    async def post(self, env: Envelope) -> None:
        """Hand one event to the ledger's handler, as the consumer does."""
        event = Event(env, decode_payload(env))
        async with self.pool.acquire() as conn, conn.transaction():
            await build_handlers(self.handlers)[event.event_type](conn, event)

    async def ref(self, payment_id: str) -> tuple[str, str, str]:
        row = await self.pool.fetchrow(
            "SELECT code, number, check_code FROM receipts WHERE payment_id = $1", payment_id
        )
        assert row is not None
        return row["code"], row["number"], row["check_code"]


async def receipts_app(
    new_database: Callable[..., Awaitable[str]], rate_per_minute: int = 1000
) -> tuple[asyncpg.Pool, PostingSetup, httpx.AsyncClient, FastAPI]:
    dsn = await new_database()
    await migrate(dsn, MIGRATIONS)
    pool = await create_pool(dsn, max_size=5)
    signer = ReceiptSigner(uuid.uuid4().bytes * 2)
    handlers = PostingSetup(
        ledger_topic="t.ledger.v1",
        keys=PostingKeys(check_key=b"h" * 32, signer=signer),
        policy=ReceiptPolicy(),
    )
    await register_signers(
        pool, LedgerSigners.undivided(signer)
    )  # as the composition root does at start-up
    app = create_app(ledger_settings(rate_per_minute), pool, signer=signer)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ledger")
    return pool, handlers, http, app


@contextlib.asynccontextmanager
async def open_receipts(
    new_database: Callable[..., Awaitable[str]], rate_per_minute: int = 1000
) -> AsyncIterator[Receipts]:
    """A ledger app on a fresh database, closed afterwards."""
    pool, handlers, http, _app = await receipts_app(new_database, rate_per_minute)
    async with http:
        try:
            yield Receipts(pool, handlers, http)
        finally:
            await pool.close()


@pytest.fixture
async def receipts(
    infra: Infra, new_database: Callable[..., Awaitable[str]]
) -> AsyncIterator[Receipts]:
    async with open_receipts(new_database) as opened:
        yield opened


async def test_json_stays_the_default(receipts: Receipts) -> None:
    code, number, check = await receipts.ref(await receipts.pay("u-json", 38_000))
    url = f"/v1/receipts/{code}/{number}"
    plain = await receipts.http.get(url, headers=AUTH)  # the owner: no count, same bytes
    assert plain.status_code == 200
    assert plain.headers["content-type"] == "application/json"
    for accept in (
        "application/json",
        "*/*",
        "application/*",
        "text/plain",
        "application/json, text/html;q=0.9",
        "image/png",
    ):
        r = await receipts.http.get(url, headers={**AUTH, "Accept": accept})
        assert r.status_code == 200
        assert r.content == plain.content, accept
    assert plain.json()["receipt"]["total_in_words"] == "叁佰捌拾元整"
    public = await receipts.http.get(url, params={"check_code": check}, headers={"Accept": "*/*"})
    assert public.status_code == 200
    assert public.headers["content-type"] == "application/json"
    assert public.json()["receipt"]["total_in_words"] == "叁佰捌拾元整"


async def test_html_page_shows_the_face(receipts: Receipts) -> None:
    code, number, check = await receipts.ref(await receipts.pay("u-html", 38_000))
    browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    r = await receipts.http.get(
        f"/v1/receipts/{code}/{number}", params={"check_code": check}, headers={"Accept": browser}
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    page = r.text
    for text in (
        "医疗保障费用电子票据",
        "票据代码",
        code,
        "票据号码",
        number,
        "校验码",
        check,
        "开票日期",
        "交款人",
        "张*",
        "110105********002X",
        "项目名称",
        "城乡居民基本医疗保险费 2027",
        "金额合计（大写）",
        "叁佰捌拾元整",
        "金额合计（小写）",
        "¥380.00",
        "收款单位",
        "北京市医疗保障局",
        "复核人",
        "系统复核",
        "个人现金支付",
        "<svg",
    ):
        assert text in page, text
    assert "张三" not in page  # the name is masked for display
    assert "本票据已被查验 1 次" in page  # a public read is a check (查验)
    explicit = await receipts.http.get(
        f"/v1/receipts/{code}/{number}.html", params={"check_code": check}
    )
    assert explicit.text == page.replace("查验 1 次", "查验 2 次")


async def test_pdf_renders_chinese(receipts: Receipts, tmp_path: Path) -> None:
    ensure_extras("pdftotext", "fc-list")
    code, number, check = await receipts.ref(await receipts.pay("u-pdf", 46_050))
    r = await receipts.http.get(
        f"/v1/receipts/{code}/{number}",
        params={"check_code": check},
        headers={"Accept": "application/pdf"},
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/pdf"
    assert r.content.startswith(b"%PDF-")
    explicit = await receipts.http.get(
        f"/v1/receipts/{code}/{number}.pdf", params={"check_code": check}
    )
    assert explicit.content == r.content  # deterministic: invariant PDF, same face
    text = tool_output("pdftotext", "-layout", "-", "-", stdin=r.content)
    for word in (
        "医疗保障费用电子票据",
        code,
        number,
        check,
        "肆佰陆拾元伍角整",
        "北京市医疗保障局",
        "复核人",
        "460.50",
        "脱敏票面",  # a public copy says its signature covers the full face
    ):
        assert word in text, word
    pdf = tmp_path / "receipt.pdf"
    pdf.write_bytes(r.content)
    fonts = tool_output("pdffonts", str(pdf))
    # The CJK font is embedded (emb = yes) as a subset, so any reader shows the text.
    assert re.search(r"WenQuanYi\S*\s+TrueType\s+\S+\s+yes\s+yes", fonts), fonts


async def test_unknown_receipt_in_every_format(receipts: Receipts) -> None:
    for suffix, accept in (
        ("", "text/html"),
        ("", "application/pdf"),
        (".pdf", None),
        (".html", None),
        ("", None),
    ):
        headers = {"Accept": accept} if accept else {}
        r = await receipts.http.get(f"/v1/receipts/11060126/0000000099{suffix}", headers=headers)
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "not_found"


async def test_verify_page_counts_and_reveals_nothing_on_failure(receipts: Receipts) -> None:
    code, number, check = await receipts.ref(await receipts.pay("u-verify", 38_000))
    form = await receipts.http.get("/receipts/verify")
    assert form.status_code == 200
    assert "电子票据查验" in form.text
    assert 'name="check_code"' in form.text

    async def submit(c: str, n: str, k: str) -> httpx.Response:
        return await receipts.http.post(
            "/receipts/verify", data={"code": c, "number": n, "check_code": k}
        )

    ok = await submit(code, number, check.lower())
    assert ok.status_code == 200
    assert 'data-valid="true"' in ok.text
    assert "查验结果：真" in ok.text
    assert "本票据已被查验 1 次" in ok.text
    for fact in ("北京市医疗保障局", "¥380.00", "叁佰捌拾元整", "张*"):
        assert fact in ok.text
    again = await submit(code, number, check)
    assert "本票据已被查验 2 次" in again.text
    api = await receipts.http.post(
        "/v1/receipts/verify", json={"code": code, "number": number, "check_code": check}
    )
    assert api.json()["checked_count"] == 3  # one counter for the page and the API

    wrong = "AAAAAA" if check != "AAAAAA" else "BBBBBB"
    forged = await submit(code, number, wrong)
    # An unknown receipt with the same typed values gives the very same page.
    unknown_number = f"{int(number) + 500:010d}"
    unknown = await submit(code, unknown_number, wrong)
    assert forged.status_code == unknown.status_code == 200
    assert 'data-valid="false"' in forged.text
    assert forged.text.replace(number, "N") == unknown.text.replace(unknown_number, "N")
    assert "北京市医疗保障局" not in forged.text
    assert check not in forged.text

    bad = await submit("123", number, "!!")
    assert bad.status_code == 400
    assert "票据代码应为 8 位数字" in bad.text
    assert "校验码应为 6 位字母或数字" in bad.text


async def test_verify_page_is_rate_limited(
    infra: Infra, new_database: Callable[..., Awaitable[str]]
) -> None:
    pool, _handlers, http, _app = await receipts_app(new_database, rate_per_minute=2)
    async with http:
        try:
            data = {"code": "11060126", "number": "0000000001", "check_code": "AAAAAA"}
            for _ in range(2):
                assert (await http.post("/receipts/verify", data=data)).status_code == 200
            limited = await http.post("/receipts/verify", data=data)
            assert limited.status_code == 429
            assert "查验过于频繁" in limited.text
            assert int(limited.headers["retry-after"]) >= 1
            assert (await http.get("/receipts/verify")).status_code == 200  # the blank form
        finally:
            await pool.close()


async def test_statement_lists_each_entry_with_the_balance_after(receipts: Receipts) -> None:
    payer = f"u-{uuid.uuid4().hex[:8]}"
    topup = await receipts.pay(payer, 100_000, purpose="wallet_topup")
    first = await receipts.pay(payer, 38_000, method="wallet")
    second = await receipts.pay(payer, 2_000, method="wallet")
    url = f"/v1/accounts/wallet:{payer}/statement"
    assert (await receipts.http.get(url)).status_code == 401
    r = await receipts.http.get(url, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["account_id"] == f"wallet:{payer}"
    assert body["currency"] == "CNY"
    assert [(x["payment_id"], x["amount"], x["balance_after"]) for x in body["lines"]] == [
        (topup, 100_000, 100_000),
        (first, -38_000, 62_000),
        (second, -2_000, 60_000),
    ]
    assert body["next_after_seq"] is None
    seqs = [x["seq"] for x in body["lines"]]
    assert seqs == sorted(seqs)
    page = (await receipts.http.get(url, headers=AUTH, params={"limit": 2})).json()
    assert len(page["lines"]) == 2
    assert page["next_after_seq"] == seqs[1]
    rest = (
        await receipts.http.get(url, headers=AUTH, params={"after_seq": page["next_after_seq"]})
    ).json()
    assert [x["seq"] for x in rest["lines"]] == seqs[2:]
    # Platform clearing nets to zero in every entry: it has no statement lines.
    clearing = (
        await receipts.http.get("/v1/accounts/clearing:platform/statement", headers=AUTH)
    ).json()
    assert clearing["lines"] == []
    # A payer nobody enrolled: the same 404 as another caller's payer (issue 11).
    nobody = await receipts.http.get("/v1/accounts/wallet:nobody-here/statement", headers=AUTH)
    assert nobody.status_code == 404
    missing = await receipts.http.get("/v1/accounts/nonsense/statement", headers=AUTH)
    assert missing.status_code == 404
    too_many = await receipts.http.get(url, headers=AUTH, params={"limit": 5000})
    assert too_many.status_code == 400
    assert too_many.json()["error"]["param"] == "limit"
