"""Receipt display rules: Accept negotiation, the face as shown, the QR code."""

from __future__ import annotations

import pytest

from services.ledger.domain.chain import LedgerHead
from services.ledger.domain.posting import Posting, decide_posting
from services.ledger.receipts.html import VerifyForm, receipt_page, verify_page
from services.ledger.receipts.view import negotiate, qr_matrix, qr_svg, receipt_view
from tests.unit.test_ledger_domain import KEYS, NOW, payment


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "json"),
        ("", "json"),
        ("*/*", "json"),
        ("application/json", "json"),
        ("application/*", "json"),
        ("text/plain", "json"),
        ("text/html", "html"),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "html"),
        ("application/pdf", "pdf"),
        ("application/pdf, */*;q=0.1", "pdf"),
        ("application/json, text/html", "json"),
        ("text/html;q=0.5, application/json;q=0.9", "json"),
        ("text/html;q=0.9, application/pdf", "pdf"),
        ("text/html;q=0", "json"),
        ("text/html;q=bogus", "json"),
    ],
)
def test_negotiate(accept: str | None, expected: str) -> None:
    assert negotiate(accept) == expected


def _view(method: str = "bank_card", amount: int = 38_000):  # type: ignore[no-untyped-def]
    decision = decide_posting(
        {"medical:u-1": 10**9},
        LedgerHead(),
        payment(method=method, amount=amount),
        now=NOW,
        keys=KEYS,
    )
    assert isinstance(decision, Posting)
    assert decision.receipt is not None
    issued = decision.receipt
    return receipt_view(
        issued.receipt, signature=issued.signature, key_id=issued.key_id, journal_seq=1
    )


def test_view_masks_identity_and_splits_payment() -> None:
    view = _view()
    assert view.payer == "张*"
    assert view.payer_id_number == "110105********002X"
    assert view.total_figures == "¥380.00"
    assert view.total_words == "叁佰捌拾元整"
    assert (view.personal_account_paid, view.pooled_fund_paid, view.cash_paid) == (
        "0.00",
        "0.00",
        "380.00",
    )
    medical = _view(method="medical_account", amount=10_005)
    assert (medical.personal_account_paid, medical.cash_paid) == ("100.05", "0.00")
    assert medical.total_words == "壹佰元零伍分"
    assert medical.method == "医保个人账户"


def test_qr_encodes_the_signed_payload() -> None:
    view = _view()
    matrix = qr_matrix(view.qr_payload)
    assert len(matrix) == len(matrix[0]) >= 21 + 4
    svg = qr_svg(view.qr_payload)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert qr_svg(view.qr_payload) == svg  # deterministic


def test_pages_escape_what_they_echo() -> None:
    page = verify_page(VerifyForm(code='"><script>', number="1", check_code="x"), checked=True)
    assert "<script>" not in page
    assert "&quot;&gt;&lt;script&gt;" in page
    assert 'data-valid="false"' in page
    assert "<script" not in receipt_page(_view())
