"""The settlement file (对账单) of one bureau's clearing day: exact bytes. Pure.

UTF-8 CSV, ``\\n`` line ends, a header row, one line per payment (``kind`` payment,
positive amount) and per refund (``kind`` refund, negative amount) of the region's
clearing day in journal order, then a ``deduction`` line for a deficit carried from
an earlier close, then the totals line ``TOTAL,count,paid,refunded,net``. Payer and
insured person are masked, as on the receipt's public face; never clear. The same
journal gives the same bytes, every time.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from services.ledger.domain.receipts import face_parties, iso_utc, mask_name
from services.ledger.domain.settlement import DayLine
from shared.events import RegionSettlement

COLUMNS = (
    "payment_id",
    "kind",
    "amount",
    "journal_seq",
    "refund_id",
    "receipt_code",
    "receipt_number",
    "payer",
    "insured",
    "insured_id_number",
    "method",
    "bank_reference",
    "posted_at",
    "payment_day",
)


@dataclass(frozen=True)
class FileLine:
    """A day line with what the file shows of its receipt and of its payment's day."""

    line: DayLine
    face: Mapping[str, Any] | None  # the receipt face (red for a refund), if any
    payment_day: str  # the clearing day of the payment (a refund's may be earlier)


def _row(x: FileLine) -> list[str]:
    line, face = x.line, x.face
    payer = insured = insured_id = ""
    if face is not None:
        parties = face_parties(face)
        payer = parties.payer_shown
        insured = mask_name(parties.insured_name)
        insured_id = parties.insured_id_number_masked
    return [
        line.payment_id,
        line.kind,
        str(line.amount),
        str(line.seq),
        line.refund_id or "",
        line.receipt.code if line.receipt else "",
        line.receipt.number if line.receipt else "",
        payer,
        insured,
        insured_id,
        line.method,
        line.bank_reference or "",
        iso_utc(line.posted_at),
        x.payment_day,
    ]


def settlement_file(
    lines: Iterable[FileLine], region: RegionSettlement, *, carried_from: str = ""
) -> bytes:
    """The file's bytes; ``region`` gives the carried deficit and the totals."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for x in sorted(lines, key=lambda x: x.line.seq):
        writer.writerow(_row(x))
    if region.carried_in:
        deduction = ["carried_deficit", "deduction", str(region.carried_in)]
        writer.writerow(deduction + [""] * (len(COLUMNS) - 4) + [carried_from])
    writer.writerow(
        ["TOTAL", str(region.count), str(region.paid), str(region.refunded), str(region.net)]
    )
    return out.getvalue().encode()
