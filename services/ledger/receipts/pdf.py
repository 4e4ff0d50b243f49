"""The receipt as a PDF (the human copy of DOMAIN.md "Electronic receipts").

Chinese text needs a CJK font. ``find_cjk_font`` prefers a TrueType font file from
the system (Debian's ``fonts-wqy-microhei`` / ``fonts-wqy-zenhei``, installed by
``deploy/install-extras.sh``), embedded as a subset so the PDF reads the same
anywhere; without one it falls back to reportlab's built-in ``STSong-Light`` CID font
(not embedded: the reader's viewer must supply the glyphs).
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
from pathlib import Path

from reportlab.lib.colors import Color, black, white
from reportlab.lib.pagesizes import A5, landscape
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfbase.ttfonts import TTFError, TTFont
from reportlab.pdfgen.canvas import Canvas

from services.ledger.receipts.view import MASKED_NOTE, ReceiptView, qr_matrix

KNOWN_FONTS = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
)
FONT_NAME = "YibaoCJK"
FALLBACK_FONT = "STSong-Light"
RED = Color(0.61, 0.17, 0.12)


def _fc_list_candidates() -> list[str]:
    fc_list = shutil.which("fc-list")
    if fc_list is None:
        return []
    try:
        out = subprocess.run(  # noqa: S603 - fc-list found on PATH, fixed arguments
            [fc_list, ":lang=zh", "file"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    files = sorted({line.split(":")[0].strip() for line in out.splitlines() if line.strip()})
    return [f for f in files if f.lower().endswith((".ttf", ".ttc"))]


@functools.cache
def find_cjk_font(preferred: str | None = None) -> str:
    """Register a CJK font with reportlab once; its name (embedded TTF, else CID)."""
    candidates = [preferred] if preferred else []
    candidates += [*KNOWN_FONTS, *_fc_list_candidates()]
    for path in candidates:
        if not path or not Path(path).is_file():
            continue
        try:
            pdfmetrics.registerFont(TTFont(FONT_NAME, path, subfontIndex=0))
        except (TTFError, OSError, ValueError):
            continue  # a CFF-flavoured OpenType font reportlab cannot embed, say
        return FONT_NAME
    pdfmetrics.registerFont(UnicodeCIDFont(FALLBACK_FONT))
    return FALLBACK_FONT


def _qr(canvas: Canvas, payload: str, x: float, y: float, size: float) -> None:
    matrix = qr_matrix(payload)
    cell = size / len(matrix)
    canvas.setFillColor(white)
    canvas.rect(x, y, size, size, stroke=0, fill=1)
    canvas.setFillColor(black)
    for row_index, row in enumerate(matrix):
        for col, dark in enumerate(row):
            if dark:
                top = y + size - (row_index + 1) * cell
                canvas.rect(x + col * cell, top, cell, cell, stroke=0, fill=1)


Row = tuple[str, str, bool]  # label, value, right-aligned number


def _title(c: Canvas, view: ReceiptView, font: str, width: float, height: float) -> None:
    c.setFillColor(RED)
    c.setFont(font, 18)
    c.drawCentredString(width / 2, height - 18 * mm, view.title)
    c.setStrokeColor(RED)
    c.setLineWidth(1.2)
    c.line(width / 2 - 62 * mm, height - 21 * mm, width / 2 + 62 * mm, height - 21 * mm)
    c.setLineWidth(0.4)
    c.line(width / 2 - 62 * mm, height - 22.2 * mm, width / 2 + 62 * mm, height - 22.2 * mm)
    note = _reversal_note(view)
    if note:
        c.setFont(font, 9)
        c.drawCentredString(width / 2, height - 26 * mm, note)


def _reversal_note(view: ReceiptView) -> str:
    """Outside the signed face: a red receipt's original, an original's reversals."""
    if view.red:
        return f"红字票据（红冲）：冲销原票据 {view.relates_to}，金额以负数表示"
    if view.reversals:
        listed = "、".join(f"{r.code}/{r.number}" for r in view.reversals)
        return f"本票据已被红冲 {view.reversed_figures}（红字票据 {listed}）"
    return ""


def _meta(c: Canvas, view: ReceiptView, font: str, right: float, height: float) -> None:
    c.setFont(font, 9.5)
    meta = (
        ("票据代码", view.code),
        ("票据号码", view.number),
        ("校验码", view.check_code),
        ("开票日期", view.issue_date),
    )
    for i, (label, value) in enumerate(meta):
        y = height - 30 * mm - i * 5 * mm
        c.setFillColor(RED)
        c.drawString(right - 60 * mm, y, f"{label}：")
        c.setFillColor(black)
        c.drawString(right - 42 * mm, y, value)


def _rows(view: ReceiptView) -> list[Row]:
    return [
        ("交款人", view.payer, False),
        ("参保人", f"{view.insured}（身份证号 {view.payer_id_number}）", False),
        ("参保关系 / 支付方式", f"{view.relation} / {view.method}", False),
        ("项目名称", "金额（元）", True),
        *((item.name, item.amount, True) for item in view.items),
        ("个人账户支付", view.personal_account_paid, True),
        ("统筹基金支付", view.pooled_fund_paid, True),
        ("个人现金支付", view.cash_paid, True),
        ("金额合计（大写）", view.total_words, False),
        ("金额合计（小写）", view.total_figures, True),
    ]


def _table(c: Canvas, rows: list[Row], left: float, right: float, top: float) -> float:
    """Draw the bordered table from ``top`` down; the y of its bottom edge."""
    row_h, split = 6.5 * mm, left + 52 * mm
    bottom: float = top - row_h * len(rows)
    c.setStrokeColor(RED)
    c.setLineWidth(0.6)
    c.rect(left, bottom, right - left, row_h * len(rows), stroke=1, fill=0)
    c.line(split, top, split, bottom)
    for i, (label, value, numeric) in enumerate(rows):
        y = top - (i + 1) * row_h
        if i:
            c.line(left, y + row_h, right, y + row_h)
        c.setFillColor(RED)
        c.drawString(left + 2.5 * mm, y + 2.3 * mm, label)
        c.setFillColor(black)
        if numeric:
            c.drawRightString(right - 2.5 * mm, y + 2.3 * mm, value)
        else:
            c.drawString(split + 2.5 * mm, y + 2.3 * mm, value)
    return bottom


def _footer(
    c: Canvas, view: ReceiptView, font: str, left: float, right: float, bottom: float
) -> None:
    c.drawString(left, bottom, f"收款单位（章）：{view.payee}")
    c.drawRightString(right, bottom, f"复核人：{view.reviewer}")
    c.setFont(font, 6.5)
    c.setFillColor(Color(0.45, 0.45, 0.45))
    c.drawString(
        left,
        9 * mm,
        f"电子签名 Ed25519 · 密钥 {view.key_id} · 公钥 /v1/receipts/"
        "public-key · 凭票据代码、号码和校验码在 /receipts/verify 查验",
    )
    c.drawString(left, 6 * mm, f"签名 {view.signature}")
    if view.masked:
        c.drawString(left, 3 * mm, MASKED_NOTE)


def receipt_pdf(view: ReceiptView, *, font_path: str | None = None) -> bytes:
    """One landscape A5 page with the receipt face, QR code and signature note."""
    font = find_cjk_font(font_path)
    buffer = io.BytesIO()
    width, height = landscape(A5)
    c = Canvas(buffer, pagesize=(width, height), invariant=True)
    c.setTitle(f"{view.title} {view.code}-{view.number}")
    c.setAuthor(view.payee)
    left, right = 14 * mm, width - 14 * mm
    _title(c, view, font, width, height)
    _qr(c, view.qr_payload, left, height - 46 * mm, 22 * mm)
    _meta(c, view, font, right, height)
    bottom = _table(c, _rows(view), left, right, height - 52 * mm)
    _footer(c, view, font, left, right, bottom - 7 * mm)
    c.showPage()
    c.save()
    return buffer.getvalue()
