"""A synthetic, valid event log: postings decided by the ledger's real rules.

For benchmarks, tests and auditors' dry runs of ``yibao-audit``. Each payment goes
through ``domain.posting.decide_posting`` exactly as the live handler does (hash chain,
receipt numbers, check codes, Ed25519 signatures), the head is advanced with the
projector's ``fold_entry``, and the payment service's ``PaymentSucceeded`` /
``PaymentFailed`` follows on payments.v1. Deterministic for a given seed; memory is
the wallet balances only, so it streams millions of events.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from services.ledger.domain.accounts import payment_route
from services.ledger.domain.chain import LedgerHead, event_id_for
from services.ledger.domain.clearing import clearing_day_of
from services.ledger.domain.posting import (
    Posting,
    PostingKeys,
    RefundContext,
    decide_allocation_posting,
    decide_posting,
    decide_refund_posting,
    decision,
)
from services.ledger.domain.projector import fold_entry
from services.ledger.domain.receipts import ReceiptPolicy
from shared.events import (
    BankConfirmation,
    BeneficiaryRef,
    Envelope,
    EventPayload,
    JournalEntryPosted,
    MedicalAccountAllocated,
    PaymentDetails,
    PaymentFailed,
    PaymentSucceeded,
    PostingRejected,
    Purpose,
    RefundAuthorized,
    RefundSucceeded,
    new_event,
)
from shared.regions import BUREAU_NAMES

Stream = Literal["ledger", "payments"]
START = datetime(2026, 1, 5, 1, 0, tzinfo=UTC)
REGIONS = ("110000", "310000", "440100")
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://yibao.example/synthetic")


@dataclass
class SyntheticJournal:
    keys: PostingKeys
    policy: ReceiptPolicy = field(default_factory=ReceiptPolicy)
    payers: int = 1000
    seed: int = 1
    start: datetime = START
    head: LedgerHead = field(default_factory=LedgerHead)
    wallets: dict[str, int] = field(default_factory=dict)  # wallet:… and medical:… balances
    money_from_outside: bool = False  # also allocations (个账划入) and refunds (红冲)
    signed: bool = False  # as since settlement: clearing days, cash memo lines, signatures
    _n: int = 0
    _posted: dict[str, tuple[JournalEntryPosted, dict[str, Any] | None, PaymentDetails]] = field(
        default_factory=dict
    )
    _refunded: dict[str, int] = field(default_factory=dict)

    def _payment(self, rng: random.Random) -> PaymentDetails:
        self._n += 1
        payer = f"u-{rng.randrange(self.payers):06d}"
        wallet = self.wallets.get(f"wallet:{payer}", 0)
        region = rng.choice(REGIONS)
        if wallet < 50_000 or rng.random() < 0.2:
            kind, method, amount = "wallet_topup", "bank_card", rng.randrange(50_000, 500_000)
        else:
            kind = "premium"
            method = rng.choice(("wallet", "wallet", "bank_card", "medical_account"))
            amount = rng.choice((38_000, 43_500, 46_000, 79_500))
            if method == "wallet" and rng.random() < 0.02:
                amount = wallet + 1  # an overdraft: the ledger rejects it
            medical = self.wallets.get(f"medical:{payer}", 0)
            if method == "medical_account" and not (self.money_from_outside and medical >= amount):
                method = "wallet" if wallet >= amount else "bank_card"
        pid = f"pay_{uuid.uuid5(NAMESPACE, f'{self.seed}:{self._n}').hex[:20]}"
        premium = kind == "premium"
        return PaymentDetails(
            payment_id=pid,
            payer_id=payer,
            payer_phone_masked="138****8000",
            payer_phone_sealed="v1.synthetic-sealed-phone",
            beneficiary=BeneficiaryRef(
                id_number_masked="110105********002X",
                id_number_hash="ab" * 32,
                name="张三",
                relation="self",
            ),
            purpose=Purpose(
                type=kind,
                region=region,
                scheme="urban_rural_resident" if premium else None,
                period="2027" if premium else None,
            ),
            amount=amount,
            method=method,
            payee_id=f"bureau:{region}" if premium else f"wallet:{payer}",
            payee_name=BUREAU_NAMES[region] if premium else "零钱",
            requested_at=self.start + timedelta(seconds=self._n),
        )

    def events(self, ledger_events: int) -> Iterator[tuple[Stream, Envelope]]:
        """Ledger events (and the payments that follow them) until ``ledger_events``."""
        rng = random.Random(self.seed)
        extras = random.Random(self.seed + 1)
        produced = 0
        while produced < ledger_events:
            if self.money_from_outside and extras.random() < 0.25:
                made = list(self._allocation_or_refund(extras))
            else:
                made = list(self._pay(self._payment(rng)))
            for stream, env in made:
                produced += stream == "ledger"
                yield stream, env

    def _pay(self, payment: PaymentDetails) -> Iterator[tuple[Stream, Envelope]]:
        """The ledger's decision on ``payment`` and the payment service's outcome."""
        now = payment.requested_at + timedelta(milliseconds=250)
        cause = uuid.uuid5(NAMESPACE, f"authorized:{payment.payment_id}")
        wallet = f"wallet:{payment.payer_id}"
        bank = f"bk_{payment.payment_id}" if payment.method == "bank_card" else None
        decided = decide_posting(
            {wallet: self.wallets.get(wallet, 0)},
            self.head,
            payment,
            now=now,
            keys=self.keys,
            policy=self.policy,
            bank_reference=bank,
            bank_confirmed_at=now if bank else None,
            clearing_day=self._day(now),
        )
        outcome: dict[str, Any] = {
            "payment_id": payment.payment_id,
            "payer_id": payment.payer_id,
            "amount": payment.amount,
            "method": payment.method,
            "purpose_type": payment.purpose.type,
            "payee_name": payment.payee_name,
            "payer_phone_masked": payment.payer_phone_masked,
            "payer_phone_sealed": payment.payer_phone_sealed,
        }
        result: EventPayload
        if isinstance(decided, PostingRejected):
            result = PaymentFailed(
                **outcome, decline_code="insufficient_funds", message=decided.message
            )
        else:
            entry = decided.entry
            self._advance(entry)
            if self.money_from_outside:
                face = decided.receipt.receipt if decided.receipt else None
                self._posted[payment.payment_id] = (entry, face, payment)
            result = PaymentSucceeded(**outcome, journal_seq=entry.seq, receipt=entry.receipt)
        for env in decision(decided, causation_id=cause, now=now).events:
            yield "ledger", env
        yield (
            "payments",
            new_event(
                result,
                producer="payment",
                key=payment.payer_id,
                correlation_id=payment.payment_id,
                causation_id=cause,
                occurred_at=now,
                event_id=event_id_for(payment.payment_id, f"payment:{result.event_type}"),
            ),
        )

    def _day(self, now: datetime) -> date | None:
        return clearing_day_of(now) if self.signed else None

    def _advance(self, entry: JournalEntryPosted) -> None:
        changes = fold_entry(self.head, entry)
        self.head = changes.head
        for account_id, delta in changes.deltas:
            if account_id.startswith(("wallet:", "medical:")):
                self.wallets[account_id] = self.wallets.get(account_id, 0) + delta

    def _allocation_or_refund(self, rng: random.Random) -> Iterator[tuple[Stream, Envelope]]:
        self._n += 1
        now = self.start + timedelta(seconds=self._n, milliseconds=250)
        cause = uuid.uuid5(NAMESPACE, f"extra:{self.seed}:{self._n}")
        if not self._posted or rng.random() < 0.4:
            yield from self._allocation(rng, now, cause)
        else:
            yield from self._refund(rng, now, cause)

    def _allocation(
        self, rng: random.Random, now: datetime, cause: uuid.UUID
    ) -> Iterator[tuple[Stream, Envelope]]:
        payer = f"u-{rng.randrange(self.payers):06d}"
        allocated = MedicalAccountAllocated(
            allocation_id=f"al_{uuid.uuid5(NAMESPACE, f'{self.seed}:al:{self._n}').hex[:20]}",
            region=rng.choice(REGIONS),
            period="2027",
            payer_id=payer,
            amount=rng.choice((50_000, 120_000)),
            allocated_at=now,
            payer_phone_masked=None,
            payer_phone_sealed=None,
        )
        yield (
            "payments",
            new_event(
                allocated,
                producer="payment",
                key=payer,
                correlation_id=allocated.allocation_id,
                event_id=cause,
                occurred_at=now,
            ),
        )
        made = decide_allocation_posting(
            allocated, self.head, now=now, signer=self.keys.journal, clearing_day=self._day(now)
        )
        posted = decision(made, causation_id=cause, now=now)
        assert isinstance(posted.outcome, Posting)
        self._advance(posted.outcome.entry)
        for env in posted.events:
            yield "ledger", env

    def _refund(
        self, rng: random.Random, now: datetime, cause: uuid.UUID
    ) -> Iterator[tuple[Stream, Envelope]]:
        pid = rng.choice(list(self._posted))
        original, face, payment = self._posted[pid]
        left = payment.amount - self._refunded.get(pid, 0)
        if left <= 0:
            return
        amount = left if rng.random() < 0.5 else max(1, left // 2)
        refund_id = f"re_{uuid.uuid5(NAMESPACE, f'{self.seed}:re:{self._n}').hex[:20]}"
        refund = _refund_authorized(payment, original, refund_id, amount, now)
        debited = payment_route(original)[1]
        context = RefundContext(
            self.head,
            None,
            original,
            face,
            self._refunded.get(pid, 0),
            {debited: self.wallets.get(debited, 0)},
        )
        outcome = decide_refund_posting(
            refund,
            context,
            now=now,
            keys=self.keys,
            policy=self.policy,
            clearing_day=self._day(now),
        )
        if not isinstance(outcome, Posting):
            return  # a top-up already spent: the synthetic payer keeps it
        entry = outcome.entry
        self._advance(entry)
        refunded = self._refunded[pid] = self._refunded.get(pid, 0) + amount
        for env in decision(outcome, causation_id=cause, now=now).events:
            yield "ledger", env
        succeeded = RefundSucceeded(
            refund_id=refund_id,
            payment_id=pid,
            payer_id=payment.payer_id,
            amount=amount,
            method=payment.method,
            payer_phone_masked=payment.payer_phone_masked,
            payer_phone_sealed=payment.payer_phone_sealed,
            journal_seq=entry.seq,
            receipt=entry.receipt,
            original_receipt=original.receipt,
            refunded_total=refunded,
        )
        yield (
            "payments",
            new_event(
                succeeded,
                producer="payment",
                key=payment.payer_id,
                correlation_id=pid,
                causation_id=cause,
                occurred_at=now,
                event_id=event_id_for(pid, "payment:RefundSucceeded", refund_id),
            ),
        )


def _refund_authorized(
    payment: PaymentDetails,
    original: JournalEntryPosted,
    refund_id: str,
    amount: int,
    now: datetime,
) -> RefundAuthorized:
    """The payment service's RefundAuthorized for ``amount`` of ``payment``."""
    bank = BankConfirmation(reference=f"bk_{refund_id}", confirmed_at=now)
    return RefundAuthorized(
        refund_id=refund_id,
        payment_id=payment.payment_id,
        payer_id=payment.payer_id,
        amount=amount,
        method=payment.method,
        purpose=payment.purpose,
        payee_id=payment.payee_id,
        payee_name=payment.payee_name,
        original_journal_seq=original.seq,
        original_receipt=original.receipt,
        bank_refund=bank if payment.method == "bank_card" else None,
        payer_phone_masked=payment.payer_phone_masked,
        payer_phone_sealed=payment.payer_phone_sealed,
        authorized_at=now,
    )
