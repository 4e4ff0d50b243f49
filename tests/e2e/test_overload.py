"""Load shedding on the whole system (issue 13): with risk stopped, accepted payments
pile up in ``requested``; past PAYMENT_OVERLOAD_MAX_IN_FLIGHT the payment API answers
503 overloaded (nothing written), and once risk is back and the pile has drained the
very same request is accepted and completes. Every accepted payment completes once."""

from __future__ import annotations

import uuid

import pytest

from tests.e2e.client import Yibao, premium_body
from tests.e2e.conftest import System

pytestmark = pytest.mark.e2e

TERMINAL = {"succeeded", "failed", "declined"}


async def test_sheds_above_the_bound_and_recovers_below_it(system: System, yibao: Yibao) -> None:
    bound = int(system.env["PAYMENT_OVERLOAD_MAX_IN_FLIGHT"])
    system.kill("risk")  # nothing leaves `requested` while risk is away
    accepted: list[str] = []
    refused = None
    shed_body = shed_key = None
    try:
        for _ in range(bound + 50):  # the count is at most 50 ms old: a few more may pass
            body = premium_body(f"u-ovl-{uuid.uuid4().hex[:10]}", 1200)
            key = f"ovl-{uuid.uuid4().hex}"
            r = await yibao.create_payment(body, key=key)
            if r.status_code == 503:
                refused, shed_body, shed_key = r, body, key
                break
            assert r.status_code == 202, r.text
            accepted.append(r.json()["id"])
    finally:
        system.start(["risk"])

    assert refused is not None, f"{len(accepted)} accepted, none refused (bound {bound})"
    error = refused.json()["error"]
    assert (error["code"], error["retryable"]) == ("overloaded", True)
    assert int(refused.headers["Retry-After"]) >= 1
    assert 0 < len(accepted) <= bound + 50

    for pid in accepted:  # every accepted payment completes, once
        p = await yibao.wait_for(pid, TERMINAL, timeout=180)
        assert p["status"] == "succeeded", p

    # Below the bound again: the refused request, sent again as it was, is accepted.
    assert shed_body is not None and shed_key is not None
    again = await yibao.create_payment(shed_body, key=shed_key)
    assert again.status_code == 202, again.text
    assert (await yibao.wait_for(again.json()["id"], TERMINAL, timeout=120))["status"] == (
        "succeeded"
    )
