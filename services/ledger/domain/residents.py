"""What a resident sees of their money (issue 12): records, overview, certificate facts.

Pure. A ``PaymentRecord`` is one payment as the journal knows it (its entry, its
receipt event, its refunds), so records are a view of ledger.v1: nothing here is stored
apart from the journal, and a rebuild cannot change them. The rules:

- the window: the last three years, from the same Asia/Shanghai calendar day;
- filters: ``year`` (the Asia/Shanghai year of the payment), ``payee`` (the payee id,
  e.g. ``bureau:110000``; a top-up's payee is the payer's wallet) and ``item``
  (``premium``, ``wallet_topup`` or a scheme, e.g. ``urban_rural_resident``);
- status: ``paid``, ``partially_refunded`` or ``refunded`` (its refunds summed);
- years insured: per scheme, the distinct years of periods paid by a premium that is
  not fully refunded; the status of the current year per scheme and region;
- validity: a year period (``2027``) covers the calendar year, a month (``2027-03``)
  its month, a quarter (``2027-Q1``) its three months.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any, Literal

from services.ledger.domain.accounts import method_of, money_lines, transaction_amount
from services.ledger.domain.receipts import GENERIC_ITEM, SCHEME_ITEMS, iso_utc, mask_name
from shared.canonical import canonical_bytes
from shared.crypto import hmac_sha256
from shared.errors import ValidationFailed
from shared.events import JournalEntryPosted, ReceiptIssued
from shared.money import SHANGHAI, shanghai_day

WINDOW_YEARS = 3
RecordStatus = Literal["paid", "partially_refunded", "refunded"]
Role = Literal["payer", "insured"]
ITEMS: tuple[str, ...] = ("premium", "wallet_topup", *SCHEME_ITEMS)
TOPUP_ITEM = "零钱充值"
_YEAR = re.compile(r"^([0-9]{4})(?:-(0[1-9]|1[0-2])|-Q([1-4]))?$")
_BUREAU = re.compile(r"^bureau:([0-9]{6})")


@dataclass(frozen=True)
class Refund:
    refund_id: str
    amount: int
    posted_at: datetime
    journal_seq: int
    receipt: tuple[str, str] | None  # the red receipt's (code, number)
    bank_reference: str | None


@dataclass(frozen=True)
class PaymentRecord:
    """One payment (premium or top-up) of the journal, with its refunds."""

    payment_id: str
    journal_seq: int
    posted_at: datetime
    kind: str  # premium | wallet_topup
    payer_id: str
    amount: int
    currency: str
    method: str
    payee_id: str
    payee: str
    item: str
    scheme: str | None
    region: str | None
    period: str | None
    receipt: tuple[str, str] | None  # (code, number)
    insured_id_hash: str | None
    insured_name: str | None
    insured_id_number_masked: str | None
    relation: str | None
    caller_id: str | None
    bank_reference: str | None
    lines: tuple[tuple[str, int], ...] = ()  # (account_id, signed amount), memo aside
    refunds: tuple[Refund, ...] = ()

    @property
    def refunded(self) -> int:
        return sum(r.amount for r in self.refunds)

    @property
    def status(self) -> RecordStatus:
        if self.refunded <= 0:
            return "paid"
        return "refunded" if self.refunded >= self.amount else "partially_refunded"

    @property
    def day(self) -> date:
        return shanghai_day(self.posted_at)


def _scheme_of_item(name: str) -> tuple[str | None, str | None]:
    """(scheme, period) from a face's item name (receipts issued before the event
    carried its purpose), e.g. ``城乡居民基本医疗保险费 2027``."""
    for scheme, label in SCHEME_ITEMS.items():
        if name == label or name.startswith(label + " "):
            rest = name[len(label) :].strip()
            return scheme, rest or None
    return None, None


def refund_of(entry: JournalEntryPosted) -> Refund:
    ref = entry.receipt
    return Refund(
        refund_id=entry.refund_id or "",
        amount=transaction_amount(entry),
        posted_at=entry.posted_at,
        journal_seq=entry.seq,
        receipt=(ref.code, ref.number) if ref else None,
        bank_reference=entry.bank_reference,
    )


def record_of(
    entry: JournalEntryPosted,
    receipt: ReceiptIssued | None,
    refunds: Iterable[JournalEntryPosted] = (),
    *,
    face: Mapping[str, Any] | None = None,
) -> PaymentRecord:
    """The record of a payment entry (kind premium or wallet_topup); ``face`` is the
    receipt's face for reading (sealed names opened: ``receipts.revealed_face``), by
    default the face as signed."""
    if face is None:
        face = receipt.receipt if receipt is not None else {}
    items = face.get("items") or []
    item = str(items[0]["name"]) if items else (TOPUP_ITEM if entry.kind != "premium" else "")
    purpose = receipt.purpose if receipt is not None else None
    scheme, period = _scheme_of_item(item) if purpose is None else (purpose.scheme, purpose.period)
    payee_id = str(face.get("payee_id") or "") or _destination(entry)
    region = purpose.region if purpose is not None else _region_of(payee_id)
    insured = face.get("insured") if isinstance(face.get("insured"), Mapping) else None
    ref = entry.receipt
    return PaymentRecord(
        payment_id=entry.payment_id,
        journal_seq=entry.seq,
        posted_at=entry.posted_at,
        kind=entry.kind,
        payer_id=entry.payer_id,
        amount=transaction_amount(entry),
        currency=entry.currency,
        method=method_of(entry),
        payee_id=payee_id,
        payee=str(face.get("payee") or ("零钱" if entry.kind == "wallet_topup" else "")),
        item=item or GENERIC_ITEM,
        scheme=scheme if entry.kind == "premium" else None,
        region=region if entry.kind == "premium" else None,
        period=period if entry.kind == "premium" else None,
        receipt=(ref.code, ref.number) if ref else None,
        insured_id_hash=receipt.insured_id_hash if receipt is not None else None,
        insured_name=str(insured["name"]) if insured and insured.get("name") else None,
        insured_id_number_masked=(
            str(insured.get("id_number_masked"))
            if insured and insured.get("id_number_masked")
            else None
        ),
        relation=str(insured["relation"]) if insured and insured.get("relation") else None,
        caller_id=receipt.caller_id if receipt is not None else None,
        bank_reference=entry.bank_reference,
        lines=tuple((x.account_id, x.amount) for x in money_lines(entry)),
        refunds=tuple(refund_of(r) for r in sorted(refunds, key=lambda e: e.seq)),
    )


def _destination(entry: JournalEntryPosted) -> str:
    """The payee id when no face names it: where the money went (a top-up's wallet)."""
    lines = [x for x in entry.lines if x.amount > 0 and not x.account_id.startswith("cash:")]
    account = lines[-1].account_id if lines else ""
    found = re.match(r"^bureau:([0-9]{6}):premium$", account)
    return f"bureau:{found.group(1)}" if found else account


def _region_of(payee_id: str) -> str | None:
    found = _BUREAU.match(payee_id)
    return found.group(1) if found else None


# ---------------------------------------------------------------------------
# The list: window, filters, pages
# ---------------------------------------------------------------------------


def window_start(now: datetime) -> datetime:
    """The start of the records window: this Asia/Shanghai day, three years back."""
    today = shanghai_day(now)
    try:
        start = today.replace(year=today.year - WINDOW_YEARS)
    except ValueError:  # 29 February
        start = today.replace(year=today.year - WINDOW_YEARS, day=28)
    return datetime.combine(start, time(0), tzinfo=SHANGHAI)


@dataclass(frozen=True)
class RecordFilter:
    year: int | None = None
    payee: str | None = None
    item: str | None = None

    def check(self, now: datetime) -> RecordFilter:
        """Itself, or 400 naming the field: the year within the window, a known item."""
        if self.year is not None:
            first, last = shanghai_day(window_start(now)).year, shanghai_day(now).year
            if not first <= self.year <= last:
                raise ValidationFailed(
                    f"year {self.year} is outside the records kept here ({first}..{last},"
                    " the last three years); pick a year in that range",
                    param="year",
                )
        if self.item is not None and self.item not in ITEMS:
            raise ValidationFailed(
                f"item {self.item!r} is not one of {', '.join(ITEMS)}", param="item"
            )
        return self

    def matches(self, record: PaymentRecord) -> bool:
        if self.year is not None and record.day.year != self.year:
            return False
        if self.payee is not None and record.payee_id != self.payee:
            return False
        if self.item is None:
            return True
        return self.item in (record.kind, record.scheme)


def in_window(record: PaymentRecord, now: datetime) -> bool:
    return record.posted_at >= window_start(now)


def page(
    records: Sequence[PaymentRecord], *, starting_after: str | None, limit: int
) -> tuple[list[PaymentRecord], bool]:
    """One page of ``records`` (newest first) after the record ``starting_after``
    (a payment id of the previous page); and whether more follow. An unknown cursor is
    400: it does not name a record of this list."""
    start = 0
    if starting_after is not None:
        ids = [r.payment_id for r in records]
        if starting_after not in ids:
            raise ValidationFailed(
                f"starting_after {starting_after!r} is not a record of this list; pass the"
                " payment_id of the last record of the previous page",
                param="starting_after",
            )
        start = ids.index(starting_after) + 1
    chosen = list(records[start : start + limit])
    return chosen, start + limit < len(records)


def newest_first(records: Iterable[PaymentRecord]) -> list[PaymentRecord]:
    return sorted(records, key=lambda r: r.journal_seq, reverse=True)


# ---------------------------------------------------------------------------
# Insurance: periods, years insured, the current year's status
# ---------------------------------------------------------------------------


def period_bounds(period: str) -> tuple[date, date]:
    """First and last day a period covers: a year, a month or a quarter."""
    found = _YEAR.match(period)
    if found is None:
        raise ValueError(f"period {period!r} is not YYYY, YYYY-MM or YYYY-Qn")
    year = int(found.group(1))
    if found.group(2):
        month = int(found.group(2))
        return date(year, month, 1), date(year, month, calendar.monthrange(year, month)[1])
    if found.group(3):
        q = int(found.group(3))
        last = q * 3
        return date(year, last - 2, 1), date(year, last, calendar.monthrange(year, last)[1])
    return date(year, 1, 1), date(year, 12, 31)


def period_year(record: PaymentRecord) -> int:
    """The insurance year a premium pays for: its period's year, else the year paid."""
    if record.period and _YEAR.match(record.period):
        return int(record.period[:4])
    return record.day.year


def in_force(record: PaymentRecord) -> bool:
    """A premium that counts: paid, and not fully refunded."""
    return record.kind == "premium" and record.status != "refunded"


def years_insured(records: Iterable[PaymentRecord]) -> dict[str, list[int]]:
    """Per scheme, the distinct years paid by a premium not fully refunded (sorted)."""
    years: dict[str, set[int]] = {}
    for r in records:
        if in_force(r):
            years.setdefault(r.scheme or "unknown", set()).add(period_year(r))
    return {scheme: sorted(ys) for scheme, ys in sorted(years.items())}


@dataclass(frozen=True)
class Coverage:
    """A scheme in a region in one year: the periods paid, and whether today is covered."""

    scheme: str
    region: str
    year: int
    periods: tuple[str, ...]
    insured: bool  # today falls in a paid period
    valid_from: date | None
    valid_to: date | None


def coverage(records: Iterable[PaymentRecord], year: int, today: date) -> list[Coverage]:
    """Per (scheme, region), what premiums in force pay for in ``year``; ``insured`` when
    ``today`` falls in one of those periods (a past or future year: any paid period)."""
    paid: dict[tuple[str, str], set[str]] = {}
    for r in records:
        if in_force(r) and period_year(r) == year:
            key = (r.scheme or "unknown", r.region or "")
            paid.setdefault(key, set()).add(r.period or str(year))
    out = []
    for (scheme, region), periods in sorted(paid.items()):
        bounds = [period_bounds(p) for p in periods if _YEAR.match(p)]
        covers_today = any(a <= today <= b for a, b in bounds)
        out.append(
            Coverage(
                scheme=scheme,
                region=region,
                year=year,
                periods=tuple(sorted(periods)),
                insured=covers_today if today.year == year else bool(bounds),
                valid_from=min((a for a, _ in bounds), default=None),
                valid_to=max((b for _, b in bounds), default=None),
            )
        )
    return out


def schemes_and_regions(records: Iterable[PaymentRecord]) -> list[tuple[str, str]]:
    """Every (scheme, region) a premium in force was ever paid for, sorted."""
    return sorted({(r.scheme or "unknown", r.region or "") for r in records if in_force(r)})


# ---------------------------------------------------------------------------
# The insurance certificate (电子参保凭证)
# ---------------------------------------------------------------------------

CERTIFICATE_TITLE = "电子参保凭证"
SCHEME_NAMES: Mapping[str, str] = {
    "urban_rural_resident": "城乡居民基本医疗保险",
    "flexible_employment": "灵活就业人员基本医疗保险",
    "commercial_health": "商业健康保险",
}
CERTIFICATE_NUMBER_RE = r"^[0-9]{14}$"
CERTIFICATE_CHECK_RE = r"^[A-Za-z2-7]{8}$"


def certificate_content(
    year: int,
    *,
    insured_name: str,
    insured_id_number_masked: str,
    coverages: Sequence[Coverage],
    bureau_names: Mapping[str, str],
) -> dict[str, Any]:
    """What a certificate states, masked (张*, the ID number as masked on the receipts):
    the year, and per scheme and region the bureau, validity and paid periods. The same
    content is the same certificate (``certificate_face`` adds number, check code and
    issue time)."""
    return {
        "title": CERTIFICATE_TITLE,
        "year": year,
        "insured": {"name": mask_name(insured_name), "id_number_masked": insured_id_number_masked},
        "coverages": [
            {
                "scheme": c.scheme,
                "scheme_name": SCHEME_NAMES.get(c.scheme, c.scheme),
                "region": c.region,
                "bureau": bureau_names.get(c.region, ""),
                "valid_from": c.valid_from.isoformat() if c.valid_from else None,
                "valid_to": c.valid_to.isoformat() if c.valid_to else None,
                "paid_periods": list(c.periods),
            }
            for c in coverages
        ],
    }


def certificate_number(year: int, n: int) -> str:
    """凭证编号: the year and a 10-digit sequence number."""
    return f"{year:04d}{n:010d}"


def certificate_check_code(key: bytes, number: str, content_sha256: str) -> str:
    """校验码: 8 characters of base32 HMAC over the number and the content's digest."""
    digest = hmac_sha256(key, f"certificate|{number}|{content_sha256}".encode())
    return base64.b32encode(digest).decode()[:8]


def content_sha256(content: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_bytes(dict(content))).hexdigest()


def certificate_face(
    content: Mapping[str, Any], *, number: str, check: str, issued_at: datetime
) -> dict[str, Any]:
    """The signed face: the content, its number, check code and issue time."""
    return {
        **content,
        "number": number,
        "check_code": check,
        "issued_at": iso_utc(issued_at),
        "issue_date": shanghai_day(issued_at).isoformat(),
        "qr_payload": f"yibao-certificate:{number}:{check}",
    }
