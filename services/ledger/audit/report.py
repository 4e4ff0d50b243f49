"""The audit report, for people (text) and for programs (``--json``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from services.ledger.audit.model import RULES, Discrepancy, rule_order
from services.ledger.audit.rules import Auditor

SHOWN_PER_KIND = 20


@dataclass
class AuditReport:
    source: str
    auditor: Auditor
    key_note: str
    notes: list[str] = field(default_factory=list)
    rules_run: set[str] = field(default_factory=set)
    elapsed_s: float = 0.0

    @property
    def findings(self) -> list[Discrepancy]:
        return self.auditor.findings.kept

    @property
    def total(self) -> int:
        return self.auditor.findings.total

    def add(self, found: Iterable[Discrepancy]) -> None:
        for d in found:
            self.auditor.findings.add(d)

    def events(self) -> int:
        c = self.auditor.counts
        return c.ledger_events + c.payment_events + c.undecodable

    def to_json(self) -> dict[str, Any]:
        a, c = self.auditor, self.auditor.counts
        per_rule = a.findings.by_rule()
        return {
            "source": self.source,
            "clean": self.total == 0,
            "discrepancy_count": self.total,
            "discrepancies_by_kind": dict(sorted(a.findings.counts.items())),
            "checks": [
                {
                    "name": name,
                    "title": title,
                    "status": ("fail" if per_rule.get(name) else "ok")
                    if name in self.rules_run
                    else "not_run",
                    "discrepancies": per_rule.get(name, 0),
                }
                for name, title, _kinds in RULES
            ],
            "counts": {
                **vars(c),
                "closed_days": a.settlement.closed_days,
                "reconciliations": a.settlement.reconciliations,
            },
            "head": {"seq": a.head.seq, "hash": a.head.hash},
            "accounts": len(a.balances),
            "receipts": len(a.receipts),
            "personal": {
                "sealed_receipts": a.sealed_receipts,
                "erased_receipts": a.erased_receipts,
                "erasures": c.erasures,
            },
            "statement_sha256": a.statement_digest(),
            "receipt_key": {
                "key_id": a.key_id,
                "key_ids": list(a.trusted),
                "source": self.key_note,
            },
            "notes": self.notes,
            "elapsed_s": round(self.elapsed_s, 3),
            "events_per_s": round(self.events() / self.elapsed_s) if self.elapsed_s else None,
            "discrepancies": [d.to_json() for d in self.findings],
        }


def _line(d: Discrepancy) -> str:
    ids = [
        f"seq {d.seq}" if d.seq is not None else "",
        f"event {d.event_id}" if d.event_id else "",
        f"payment {d.payment_id}" if d.payment_id else "",
        f"at {d.where}" if d.where else "",
    ]
    ids += [f"see {w}" for w in d.related]
    named = "  ".join(i for i in ids if i)
    return f"  - [{d.kind}] {d.message}" + (f"\n      {named}" if named else "")


def render_text(report: AuditReport) -> str:
    a, c = report.auditor, report.auditor.counts
    rate = f", {report.events() / report.elapsed_s:,.0f} events/s" if report.elapsed_s else ""
    out = [
        f"Yibao ledger audit: {report.source}",
        f"  read {report.events():,} messages in {report.elapsed_s:.1f} s{rate}",
        f"  ledger.v1: {c.ledger_events:,} events: {c.entries:,} journal entries, "
        f"{c.receipts:,} receipts, {c.rejections:,} rejections",
        f"  payments.v1: {c.payment_events:,} events, {c.successes:,} PaymentSucceeded"
        if a.payments_read
        else "  payments.v1: not read (no cross-check of payments)",
        f"  duplicates skipped (redelivered messages): {c.duplicates:,}",
        f"  settlement: {a.settlement.closed_days:,} closed clearing days, "
        f"{a.settlement.reconciliations:,} bank reconciliations",
        f"  journal head: entry {a.head.seq:,}, hash {a.head.hash}",
        f"  rebuilt: {len(a.balances):,} accounts, {len(a.receipts):,} receipts, "
        f"statement sha256 {a.statement_digest()[:16]}…",
        f"  receipt {a.trusted_text()} ({report.key_note})",
        f"  personal data: {a.sealed_receipts:,} receipts with names sealed per person, "
        f"{a.erased_receipts:,} of them erased ({c.erasures:,} erasures); erased fields"
        " read 已删除, their receipts still verify",
        *(f"  {note}" for note in report.notes),
        "",
        "Checks:",
    ]
    per_rule = a.findings.by_rule()
    for name, title, _kinds in RULES:
        if name not in report.rules_run:
            continue
        n = per_rule.get(name, 0)
        out.append(f"  [{'FAIL' if n else ' ok '}] {title}" + (f": {n:,}" if n else ""))
    out.append("")
    if report.total == 0:
        out.append("Result: CLEAN, no discrepancies (exit 0)")
        return "\n".join(out)
    out.append(f"Result: {report.total:,} DISCREPANCIES (exit 1)")
    shown: dict[str, int] = {}
    for d in sorted(report.findings, key=lambda d: (rule_order(d.kind), d.seq or 0)):
        shown[d.kind] = shown.get(d.kind, 0) + 1
        if shown[d.kind] <= SHOWN_PER_KIND:
            out.append(_line(d))
    for kind, n in sorted(a.findings.counts.items()):
        if n > SHOWN_PER_KIND:
            out.append(
                f"  … and {n - SHOWN_PER_KIND:,} more [{kind}] (all of them in --json, "
                f"up to {a.findings.max_per_kind:,} per kind)"
            )
    return "\n".join(out)
