"""The certificate for people: an HTML page and a PDF, drawn from the same view.

Reuses the receipts' machinery: the strict CSP and page headers
(``receipts.service.html``), the QR code (``receipts.view``) and the embedded CJK font
(``receipts.pdf.find_cjk_font``). Every value on the page goes through ``html.escape``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from html import escape
from typing import Any

from reportlab.lib.colors import Color, black
from reportlab.lib.pagesizes import A5, landscape
from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas

from services.ledger.receipts.pdf import RED, find_cjk_font
from services.ledger.receipts.view import qr_matrix, qr_svg

VERIFY_API = "/v1/certificates/verify"


@dataclass(frozen=True)
class CertificateView:
    title: str
    number: str
    check_code: str
    issue_date: str
    year: str
    insured: str  # 张*
    id_number: str  # masked
    coverages: tuple[tuple[tuple[str, str], ...], ...]  # per coverage: (label, value) rows
    qr_payload: str
    key_id: str
    signature: str


def certificate_view(face: Mapping[str, Any], *, signature: str, key_id: str) -> CertificateView:
    insured = face.get("insured") or {}
    coverages = tuple(
        (
            ("险种", str(c.get("scheme_name", ""))),
            ("参保地", f"{c.get('bureau', '')}（{c.get('region', '')}）"),
            ("有效期", f"{c.get('valid_from') or ''} 至 {c.get('valid_to') or ''}"),
            ("已缴费期", "、".join(str(p) for p in c.get("paid_periods", []))),
        )
        for c in face.get("coverages", [])
    )
    return CertificateView(
        title=str(face.get("title", "电子参保凭证")),
        number=str(face["number"]),
        check_code=str(face["check_code"]),
        issue_date=str(face.get("issue_date", "")),
        year=str(face.get("year", "")),
        insured=str(insured.get("name", "")),
        id_number=str(insured.get("id_number_masked", "")),
        coverages=coverages,
        qr_payload=str(face.get("qr_payload", "")),
        key_id=key_id,
        signature=signature,
    )


_STYLE = """
body{font-family:"WenQuanYi Micro Hei","Noto Sans CJK SC","Microsoft YaHei",sans-serif;
 background:#eef3f8;color:#222;margin:0;padding:24px}
.sheet{max-width:760px;margin:0 auto;background:#fff;border:1px solid #9bb3c9;padding:24px 28px}
h1{color:#9b2c1f;text-align:center;font-size:26px;letter-spacing:6px;margin:4px 0 14px;
 border-bottom:3px double #9b2c1f;padding-bottom:8px}
table{width:100%;border-collapse:collapse;font-size:14px;margin-top:10px}
td,th{border:1px solid #9b2c1f;padding:7px 9px;text-align:left}
th{color:#9b2c1f;font-weight:normal;background:#fbf6ef;width:9em}
.head{display:flex;justify-content:space-between;align-items:flex-start}
.small{color:#777;font-size:12px;word-break:break-all;margin-top:14px}
"""


def _rows(rows: tuple[tuple[str, str], ...]) -> str:
    return "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)


def certificate_page(view: CertificateView) -> str:
    person = (
        ("参保人", view.insured),
        ("身份证号", view.id_number),
        ("参保年度", view.year),
    )
    meta = (("凭证编号", view.number), ("校验码", view.check_code), ("出具日期", view.issue_date))
    coverages = "".join(f'<table class="coverage">{_rows(c)}</table>' for c in view.coverages)
    body = f"""
<h1>{escape(view.title)}</h1>
<div class="head"><table id="meta" style="width:60%">{_rows(meta)}</table>
<div class="qr">{qr_svg(view.qr_payload)}</div></div>
<table id="person">{_rows(person)}</table>
{coverages}
<p class="small">电子签名 Ed25519，密钥 {escape(view.key_id)}；凭凭证编号和校验码可通过
POST {VERIFY_API} 查验真伪。<br>签名：{escape(view.signature)}</p>
"""
    return (
        '<!DOCTYPE html><html lang="zh-CN"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(view.title)} {escape(view.number)}</title><style>{_STYLE}</style>"
        f'</head><body><main class="sheet">{body}</main></body></html>'
    )


def _qr(c: Canvas, payload: str, x: float, y: float, size: float) -> None:
    matrix = qr_matrix(payload)
    cell = size / len(matrix)
    c.setFillColor(black)
    for row_index, row in enumerate(matrix):
        for col, dark in enumerate(row):
            if dark:
                c.rect(x + col * cell, y + size - (row_index + 1) * cell, cell, cell, 0, 1)


def _table(
    c: Canvas, rows: tuple[tuple[str, str], ...], left: float, right: float, top: float
) -> float:
    row_h, split = 6.5 * mm, left + 32 * mm
    bottom: float = top - row_h * len(rows)
    c.setStrokeColor(RED)
    c.setLineWidth(0.6)
    c.rect(left, bottom, right - left, row_h * len(rows), stroke=1, fill=0)
    c.line(split, top, split, bottom)
    for i, (label, value) in enumerate(rows):
        y = top - (i + 1) * row_h
        if i:
            c.line(left, y + row_h, right, y + row_h)
        c.setFillColor(RED)
        c.drawString(left + 2.5 * mm, y + 2.3 * mm, label)
        c.setFillColor(black)
        c.drawString(split + 2.5 * mm, y + 2.3 * mm, value)
    return bottom


def certificate_pdf(view: CertificateView, *, font_path: str | None = None) -> bytes:
    """Landscape A5 pages: the title, the person, each scheme, the signature note."""
    font = find_cjk_font(font_path)
    buffer = io.BytesIO()
    width, height = landscape(A5)
    c = Canvas(buffer, pagesize=(width, height), invariant=True)
    c.setTitle(f"{view.title} {view.number}")
    left, right = 14 * mm, width - 14 * mm
    c.setFillColor(RED)
    c.setFont(font, 18)
    c.drawCentredString(width / 2, height - 18 * mm, view.title)
    c.setFont(font, 9.5)
    meta = (("凭证编号", view.number), ("校验码", view.check_code), ("出具日期", view.issue_date))
    top = _table(c, meta, left, right - 30 * mm, height - 24 * mm)
    _qr(c, view.qr_payload, right - 26 * mm, height - 46 * mm, 24 * mm)
    person = (("参保人", view.insured), ("身份证号", view.id_number), ("参保年度", view.year))
    top = _table(c, person, left, right, top - 4 * mm)
    for rows in view.coverages:
        if top - 6.5 * mm * len(rows) < 20 * mm:
            c.showPage()
            c.setFont(font, 9.5)
            top = height - 14 * mm
        top = _table(c, rows, left, right, top - 4 * mm)
    c.setFont(font, 6.5)
    c.setFillColor(Color(0.45, 0.45, 0.45))
    c.drawString(
        left, 9 * mm, f"电子签名 Ed25519 · 密钥 {view.key_id} · 凭编号和校验码经 {VERIFY_API} 查验"
    )
    c.drawString(left, 6 * mm, f"签名 {view.signature}")
    c.showPage()
    c.save()
    return buffer.getvalue()
