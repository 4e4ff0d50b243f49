"""The 查验 page in a real browser: headless Chromium (Debian's) driven by Playwright.

A person types code, number and check code into the form and submits it; a genuine
receipt reads 真 with its key facts and check count, a forged check code reads 未通过
and shows no facts. Screenshots land in /tmp/yibao-verify-*.png for a look.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import uvicorn
from playwright.async_api import Browser, async_playwright

from tests.integration.test_receipt_pages import Receipts, ensure_extras, receipts_app
from tests.support import Infra

pytestmark = pytest.mark.integration

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = Path(tempfile.gettempdir())


@pytest.fixture
async def served(
    infra: Infra, new_database: Callable[..., Awaitable[str]]
) -> AsyncIterator[tuple[Receipts, str]]:
    pool, handlers, http, app = await receipts_app(new_database)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Receipts(pool, handlers, http), f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        await http.aclose()
        await pool.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    ensure_extras("chromium")
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def test_verification_page_in_chromium(
    served: tuple[Receipts, str], browser: Browser
) -> None:
    receipts, base = served
    code, number, check = await receipts.ref(await receipts.pay("u-browser", 38_000))
    page = await browser.new_page(viewport={"width": 900, "height": 900}, locale="zh-CN")

    async def submit(check_code: str) -> None:
        await page.goto(f"{base}/receipts/verify")
        await page.fill("#code", code)
        await page.fill("#number", number)
        await page.fill("#check_code", check_code)
        await page.click("#submit")
        await page.wait_for_selector("#result")

    # Genuine: 真, the key facts, and the check count.
    await submit(check)
    assert await page.get_attribute("#result", "data-valid") == "true"
    assert "查验结果：真" in await page.inner_text("#result")
    facts = await page.inner_text("#facts")
    for fact in (code, number, "北京市医疗保障局", "¥380.00", "叁佰捌拾元整", "张*"):
        assert fact in facts
    assert "张三" not in await page.content()
    assert "本票据已被查验 1 次" in await page.inner_text("#checked-count")
    await page.screenshot(path=str(SHOTS / "yibao-verify-genuine.png"), full_page=True)

    # Forged check code: not valid, and nothing about the receipt is shown.
    forged = "AAAAAA" if check != "AAAAAA" else "BBBBBB"
    await submit(forged)
    assert await page.get_attribute("#result", "data-valid") == "false"
    assert "未通过" in await page.inner_text("#result")
    assert await page.query_selector("#facts") is None
    assert await page.query_selector("#checked-count") is None
    body = await page.inner_text("body")
    assert "北京市医疗保障局" not in body
    assert "380.00" not in body
    await page.screenshot(path=str(SHOTS / "yibao-verify-forged.png"), full_page=True)

    # The genuine check is counted again; the forged one was not counted.
    await submit(check)
    assert "本票据已被查验 2 次" in await page.inner_text("#checked-count")
    await page.close()
