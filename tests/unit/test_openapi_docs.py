"""Every service's OpenAPI tells the truth (issue 14): the error object on every error
response (400, not FastAPI's 422 HTTPValidationError), the HTTP bearer scheme on every
/v1 route that takes a key, and /docs served from the service itself, no outside CDN."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from services.devbank.api import create_app as bank_app
from services.devbank.config import BankSettings
from services.ledger.api import create_app as ledger_app
from services.ledger.config import LedgerSettings
from services.notify.api import create_app as notify_app
from services.notify.config import NotifySettings
from services.payment.api import create_app as payment_app
from services.payment.config import PaymentSettings
from services.risk.api import create_app as risk_app
from services.risk.config import RiskSettings

POOL = cast(asyncpg.Pool, object())  # never used: nothing here touches the database
KEYED = {"YIBAO_API_KEYS": "k-test"}
# /v1 routes that take no key at all: the public receipt and certificate checks and keys.
PUBLIC = re.compile(
    r"^/v1/(receipts/(public-keys?|verify|\{code\}/\{number\}.*)|journal/(checkpoint|public-keys?)"
    r"|certificates/(verify|public-key))$"
)


def _apps(tmp: Path) -> dict[str, Callable[[], FastAPI]]:
    return {
        "payment": lambda: payment_app(PaymentSettings(**KEYED), POOL),
        "risk": lambda: risk_app(RiskSettings(**KEYED), POOL),
        "ledger": lambda: ledger_app(LedgerSettings(**KEYED), POOL),
        "notify": lambda: notify_app(NotifySettings(**KEYED), POOL),
        "devbank": lambda: bank_app(BankSettings(store=tmp / "bank.sqlite")),
    }


async def _get(app: FastAPI, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        return await client.get(path)


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in {"get", "post", "put", "delete", "patch"}
    ]


@pytest.mark.parametrize("service", ["payment", "risk", "ledger", "notify", "devbank"])
async def test_openapi_documents_the_error_object_and_the_bearer_scheme(
    service: str, tmp_path: Path
) -> None:
    spec = (await _get(_apps(tmp_path)[service](), "/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    assert {"ErrorResponse", "ErrorDetail"} <= set(schemas)
    assert "HTTPValidationError" not in schemas
    assert set(schemas["ErrorDetail"]["required"]) >= {"type", "code", "message", "param"}
    operations = _operations(spec)
    assert operations
    for path, method, op in operations:
        where = f"{service} {method.upper()} {path}"
        responses = op["responses"]
        assert {"400", "500"} <= set(responses), where
        if op.get("requestBody"):
            assert "413" in responses, where
        for status, response in responses.items():
            if int(status) >= 400:
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, where
        assert "security" in op, where
        if path.startswith("/v1/") and not PUBLIC.match(path):
            assert op["security"] == [{"bearer": []}], where
            assert {"401", "403"} <= set(responses), where
    if service != "devbank":  # the development bank takes no key
        assert spec["components"]["securitySchemes"] == {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "Authorization: Bearer <API key> (caller, bureau or operator)",
            }
        }
        assert any(path.startswith("/v1/") for path, _m, _o in operations)


async def test_optional_and_public_routes_say_so(tmp_path: Path) -> None:
    spec = (await _get(_apps(tmp_path)["ledger"](), "/openapi.json")).json()
    receipt = spec["paths"]["/v1/receipts/{code}/{number}"]["get"]
    assert receipt["security"] == [{}, {"bearer": []}]  # the owner's key shows the full face
    assert spec["paths"]["/v1/receipts/public-keys"]["get"]["security"] == []
    payment = (await _get(_apps(tmp_path)["payment"](), "/openapi.json")).json()
    create = payment["paths"]["/v1/payments"]["post"]["responses"]
    assert {"400", "401", "403", "409", "413", "422", "500", "503"} <= set(create)
    assert create["503"]["headers"]["Retry-After"]["schema"] == {"type": "integer"}


@pytest.mark.parametrize("service", ["payment", "risk", "ledger", "notify", "devbank"])
async def test_docs_page_needs_no_outside_host(service: str, tmp_path: Path) -> None:
    app = _apps(tmp_path)[service]()
    page = await _get(app, "/docs")
    assert page.status_code == 200
    assert "SwaggerUIBundle" in page.text
    assert not re.search(r"(https?:)?//", page.text), "the docs page names an outside host"
    assert '"validatorUrl": null' in page.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert len(assets) == 3  # the script, the stylesheet, the icon
    for asset in assets:
        served = await _get(app, asset)
        assert served.status_code == 200, asset
        assert len(served.content) > 0
    assert (await _get(app, "/redoc")).status_code == 404
