"""What a person sees of a receipt: the face as display text, the QR code, the format.

Pure. ``receipt_view`` turns a stored receipt (its signed face, of any shape the
journal holds: see ``domain.receipts``) into the fields of a Chinese fiscal receipt
(票据名称, 票据代码, 票据号码, 校验码, 开票日期, 交款人, 参保人, 项目/金额, 金额合计
大写/小写, 收款单位, 复核人) and, outside the signed face, its reversals (红冲); the
HTML page and the PDF both draw from it, so they show the same thing. Identity is
shown masked (DOMAIN.md "Personal data"); a view of the public face (``masked``) says
that its signature covers the full face and cannot be checked against it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import qrcode

from services.ledger.domain.receipts import face_parties, is_red, mask_name, relates_to
from shared.events import RELATION_NAMES
from shared.money import chinese_capitals, format_cny

Format = Literal["json", "html", "pdf"]

METHODS: Mapping[str, str] = {
    "wallet": "零钱",
    "bank_card": "银行卡",
    "medical_account": "医保个人账户",
}
_MEDIA: Mapping[str, Format] = {
    "application/json": "json",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/pdf": "pdf",
}
_PREFERENCE: tuple[Format, ...] = ("json", "html", "pdf")
MASKED_NOTE = (
    "本票面为公开查验的脱敏票面（姓名、证件号已遮蔽）；签名针对完整票面，不能据此验证签名。"
)


def negotiate(accept: str | None) -> Format:
    """The format an ``Accept`` header asks for; JSON unless HTML or PDF is preferred.

    Wildcards (``*/*``, ``application/*``) never pull a caller away from JSON: only an
    explicit ``text/html`` or ``application/pdf`` with a higher q than JSON does.
    """
    if not accept:
        return "json"
    scores: dict[Format, float] = {}
    wildcard = 0.0
    for part in accept.split(","):
        media, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.strip().lower()
        if media in _MEDIA:
            fmt = _MEDIA[media]
            scores[fmt] = max(scores.get(fmt, 0.0), q)
        elif media in {"*/*", "application/*"}:
            wildcard = max(wildcard, q)
    scores["json"] = max(scores.get("json", 0.0), wildcard)
    best = max(_PREFERENCE, key=lambda f: (scores.get(f, 0.0), -_PREFERENCE.index(f)))
    return best if scores.get(best, 0.0) > 0 else "json"


@dataclass(frozen=True)
class ItemLine:
    name: str
    amount: str  # yuan, e.g. "380.00"


@dataclass(frozen=True)
class Reversal:
    """A red receipt reversing (part of) this one, as listed beside the face."""

    code: str
    number: str
    amount: int  # fen, positive


@dataclass(frozen=True)
class ReceiptView:
    title: str
    code: str
    number: str
    check_code: str
    issue_date: str
    payer: str  # masked name of the payer (交款人), else the masked app account
    payer_id_number: str  # masked ID number of the insured person
    payer_account: str  # masked app account
    insured: str  # masked name of the insured person (参保人)
    relation: str
    items: tuple[ItemLine, ...]
    total_figures: str  # ¥380.00
    total_words: str  # 叁佰捌拾元整
    personal_account_paid: str
    pooled_fund_paid: str
    cash_paid: str
    method: str
    payee: str
    reviewer: str
    qr_payload: str
    key_id: str
    signature: str
    journal_seq: int
    red: bool = False  # a red receipt (红冲): negative amounts
    relates_to: str = ""  # a red receipt: "code/number" of the original
    reversals: tuple[Reversal, ...] = ()  # an original: the red receipts reversing it
    masked: bool = False  # the public face: the signature does not verify against it
    checked_count: int | None = None  # 查验次数, when known

    @property
    def reversed_figures(self) -> str:
        return f"¥{format_cny(sum(r.amount for r in self.reversals))}"


def receipt_view(
    face: Mapping[str, Any],
    *,
    signature: str,
    key_id: str,
    journal_seq: int,
    reversals: tuple[Reversal, ...] = (),
    masked: bool = False,
    checked_count: int | None = None,
) -> ReceiptView:
    parties = face_parties(face)
    total = int(face["total"])
    method = str(face.get("method", ""))
    from_account = total if method == "medical_account" else 0
    original = relates_to(face)
    return ReceiptView(
        title=str(face.get("title", "电子票据")),
        code=str(face["code"]),
        number=str(face["number"]),
        check_code=str(face["check_code"]),
        issue_date=str(face["issue_date"]),
        payer=parties.payer_shown,
        payer_id_number=parties.insured_id_number_masked,
        payer_account=parties.payer_id_masked,
        insured=mask_name(parties.insured_name),
        relation=RELATION_NAMES.get(parties.relation, ""),  # type: ignore[call-overload]
        items=tuple(
            ItemLine(name=str(i["name"]), amount=format_cny(int(i["amount"])))
            for i in face.get("items", [])
        ),
        total_figures=f"¥{format_cny(total)}",
        total_words=str(face.get("total_in_words") or chinese_capitals(total)),
        personal_account_paid=format_cny(from_account),
        pooled_fund_paid=format_cny(0),
        cash_paid=format_cny(total - from_account),
        method=METHODS.get(method, method),
        payee=str(face["payee"]),
        reviewer=str(face.get("reviewer", "")),
        qr_payload=str(face.get("qr_payload", "")),
        key_id=key_id,
        signature=signature,
        journal_seq=journal_seq,
        red=is_red(face),
        relates_to=f"{original[0]}/{original[1]}" if original else "",
        reversals=reversals,
        masked=masked,
        checked_count=checked_count,
    )


def qr_matrix(payload: str) -> list[list[bool]]:
    """The QR code of ``payload`` as rows of dark (True) modules, quiet zone included."""
    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=2)
    code.add_data(payload)
    code.make(fit=True)
    return [list(row) for row in code.get_matrix()]


def qr_svg(payload: str, *, size_px: int = 132) -> str:
    """An inline SVG of the QR code (one path, crisp at any zoom)."""
    matrix = qr_matrix(payload)
    n = len(matrix)
    cells = "".join(
        f"M{x},{y}h1v1h-1z" for y, row in enumerate(matrix) for x, dark in enumerate(row) if dark
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {n} {n}" width="{size_px}" '
        f'height="{size_px}" shape-rendering="crispEdges" role="img" aria-label="二维码">'
        f'<rect width="{n}" height="{n}" fill="#fff"/><path d="{cells}" fill="#000"/></svg>'
    )
