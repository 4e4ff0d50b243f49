"""HTML for people: the receipt page (H5 copy of the receipt) and the 查验 page.

Pure string rendering; every value goes through ``html.escape``. The pages need no
script and load nothing from elsewhere (the QR code is inline SVG), so they are served
with a strict Content-Security-Policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from services.ledger.receipts.view import MASKED_NOTE, ReceiptView, qr_svg

CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
VERIFY_PATH = "/receipts/verify"

_STYLE = """
body{font-family:"WenQuanYi Micro Hei","Noto Sans CJK SC","Microsoft YaHei",sans-serif;
 background:#f4f1ea;color:#222;margin:0;padding:24px}
.sheet{max-width:820px;margin:0 auto;background:#fff;border:1px solid #c9b99a;padding:24px 28px;
 box-shadow:0 1px 4px rgba(0,0,0,.08)}
h1{color:#9b2c1f;text-align:center;font-size:26px;letter-spacing:4px;margin:4px 0 2px;
 border-bottom:3px double #9b2c1f;padding-bottom:8px}
.head{display:flex;justify-content:space-between;align-items:flex-start;margin:14px 0}
.meta{font-size:14px;line-height:1.9}.meta b{display:inline-block;width:5.5em;color:#9b2c1f;
 font-weight:normal}
table{width:100%;border-collapse:collapse;font-size:14px}
td,th{border:1px solid #9b2c1f;padding:7px 9px}th{color:#9b2c1f;font-weight:normal;
 background:#fbf6ef}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.foot{display:flex;justify-content:space-between;margin-top:14px;font-size:14px}
.small{color:#777;font-size:12px;word-break:break-all;margin-top:14px}
form{display:grid;grid-template-columns:6em 1fr;gap:10px 12px;max-width:460px;margin:16px 0}
label{color:#9b2c1f;align-self:center}input{font-size:16px;padding:6px 8px;
 border:1px solid #bbb;font-family:monospace}
button{grid-column:2;font-size:16px;padding:8px;background:#9b2c1f;color:#fff;border:0;
 cursor:pointer}
.err{grid-column:2;color:#b00020;font-size:13px;margin-top:-6px}
.ok,.bad{font-size:20px;padding:10px 14px;margin:16px 0}
.ok{background:#e8f5e9;color:#1b5e20;border:1px solid #1b5e20}
.bad{background:#fdecea;color:#8a1c12;border:1px solid #8a1c12}
.red{color:#b00020;border:2px solid #b00020;padding:6px 10px;margin:10px 0;font-size:15px}
"""


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html><html lang="zh-CN"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f'<body><main class="sheet">{body}</main></body></html>'
    )


def _row(label: str, value: str) -> str:
    return f"<div><b>{escape(label)}</b>{escape(value)}</div>"


def _reversal_note(view: ReceiptView) -> str:
    """Outside the signed face: a red receipt's original, an original's red receipts."""
    if view.red:
        return (
            f'<div class="red" id="reversal">红字票据（红冲）：冲销原票据 '
            f"{escape(view.relates_to)}，金额以负数表示。</div>"
        )
    if not view.reversals:
        return ""
    listed = "、".join(f"{r.code}/{r.number}" for r in view.reversals)
    return (
        f'<div class="red" id="reversal">本票据已被红冲 {escape(view.reversed_figures)}'
        f"（红字票据 {escape(listed)}）。</div>"
    )


def _signature_note(view: ReceiptView) -> str:
    return f'<span id="face-masked">{escape(MASKED_NOTE)}</span><br>' if view.masked else ""


def _checks(view: ReceiptView) -> str:
    if view.checked_count is None:
        return ""
    return f'<p id="checked-count">本票据已被查验 {view.checked_count} 次。</p>'


def receipt_page(view: ReceiptView) -> str:
    """The receipt face, laid out like a Chinese fiscal e-receipt."""
    items = "".join(
        f'<tr><td>{escape(i.name)}</td><td class="num">{escape(i.amount)}</td></tr>'
        for i in view.items
    )
    insured = f"{view.insured}（身份证号 {view.payer_id_number}）"
    body = f"""
<h1>{escape(view.title)}</h1>
{_reversal_note(view)}
<div class="head">
  <div class="qr">{qr_svg(view.qr_payload)}</div>
  <div class="meta">
    {_row("票据代码", view.code)}{_row("票据号码", view.number)}
    {_row("校验码", view.check_code)}{_row("开票日期", view.issue_date)}
  </div>
</div>
<table>
  <tr><th style="width:9em">交款人</th><td colspan="3" id="payer">{escape(view.payer)}</td></tr>
  <tr><th>参保人</th><td colspan="3" id="insured">{escape(insured)}</td></tr>
  <tr><th>参保关系</th><td>{escape(view.relation)}</td>
      <th style="width:8em">支付方式</th><td>{escape(view.method)}</td></tr>
</table>
<table style="margin-top:-1px">
  <tr><th>项目名称</th><th style="width:12em">金额（元）</th></tr>
  {items}
  <tr><th>个人账户支付</th><td class="num">{escape(view.personal_account_paid)}</td></tr>
  <tr><th>统筹基金支付</th><td class="num">{escape(view.pooled_fund_paid)}</td></tr>
  <tr><th>个人现金支付</th><td class="num">{escape(view.cash_paid)}</td></tr>
  <tr><th>金额合计（大写）</th><td id="total-words">{escape(view.total_words)}</td></tr>
  <tr><th>金额合计（小写）</th><td class="num" id="total">{escape(view.total_figures)}</td></tr>
</table>
<div class="foot">
  <div>收款单位（章）：<span id="payee">{escape(view.payee)}</span></div>
  <div>复核人：{escape(view.reviewer)}</div>
</div>
{_checks(view)}
<p class="small">电子签名 Ed25519，密钥 {escape(view.key_id)}；公钥见 /v1/receipts/public-key。
凭票据代码、票据号码和校验码可在 <a href="{VERIFY_PATH}">{VERIFY_PATH}</a> 查验真伪。<br>
{_signature_note(view)}签名：{escape(view.signature)}</p>
"""
    return _page(f"{view.title} {view.code}-{view.number}", body)


@dataclass(frozen=True)
class VerifyForm:
    """What the person typed, echoed back, and what is wrong with it (field → message)."""

    code: str = ""
    number: str = ""
    check_code: str = ""
    errors: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class VerifiedFacts:
    code: str
    number: str
    issue_date: str
    payer: str  # masked
    total_figures: str
    total_words: str
    payee: str
    checked_count: int
    reversal: str = ""  # a red receipt's original, or how much of an original was reversed


_FIELDS = (
    ("code", "票据代码", 8, "8 位数字"),
    ("number", "票据号码", 10, "10 位数字"),
    ("check_code", "校验码", 6, "6 位字母或数字"),
)


def _form(form: VerifyForm) -> str:
    errors = dict(form.errors)
    rows = []
    for name, label, size, hint in _FIELDS:
        value = escape(getattr(form, name))
        rows.append(
            f'<label for="{name}">{label}</label>'
            f'<input id="{name}" name="{name}" value="{value}" maxlength="{size}" '
            f'placeholder="{hint}" autocomplete="off" required>'
        )
        if name in errors:
            rows.append(f'<div class="err" id="{name}-error">{escape(errors[name])}</div>')
    return (
        f'<form method="post" action="{VERIFY_PATH}">{"".join(rows)}'
        '<button type="submit" id="submit">查验</button></form>'
    )


def verify_page(
    form: VerifyForm | None = None,
    *,
    facts: VerifiedFacts | None = None,
    checked: bool = False,
    notice: str | None = None,
) -> str:
    """The 查验 form; after a check, the result above it.

    ``checked`` with no ``facts`` is the one answer for a wrong check code and for an
    unknown receipt alike: it says nothing about which part was wrong.
    """
    result = ""
    if notice:
        result = f'<div class="bad" id="result" data-valid="unknown">{escape(notice)}</div>'
    elif facts is not None:
        rows = "".join(
            f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>"
            for k, v in (
                ("票据代码", facts.code),
                ("票据号码", facts.number),
                ("开票日期", facts.issue_date),
                ("交款人", facts.payer),
                ("金额合计（大写）", facts.total_words),
                ("金额合计（小写）", facts.total_figures),
                ("收款单位", facts.payee),
                *((("红冲", facts.reversal),) if facts.reversal else ()),
            )
        )
        result = (
            '<div class="ok" id="result" data-valid="true">查验结果：真。'
            "该票据由本平台开具，票面信息如下。</div>"
            f'<table id="facts">{rows}</table>'
            f'<p id="checked-count">本票据已被查验 {facts.checked_count} 次'
            f"（含本次）。</p>"
        )
    elif checked:
        result = (
            '<div class="bad" id="result" data-valid="false">查验结果：未通过。'
            "查无与所填票据代码、票据号码和校验码一致的票据，请核对票面后重试。</div>"
        )
    body = (
        "<h1>电子票据查验</h1>"
        "<p>请输入票面上的票据代码、票据号码和校验码，查验票据真伪。</p>"
        f"{result}{_form(form or VerifyForm())}"
    )
    return _page("电子票据查验", body)
