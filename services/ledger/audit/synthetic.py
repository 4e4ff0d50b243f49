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
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from services.ledger.domain.chain import EVENTS, LedgerHead, event_id_for
from services.ledger.domain.posting import Posting, PostingKeys, decide_posting
from services.ledger.domain.projector import fold_entry
from services.ledger.domain.receipts import ReceiptPolicy
from shared.events import (
    BeneficiaryRef,
    Envelope,
    EventPayload,
    PaymentDetails,
    PaymentFailed,
    PaymentSucceeded,
    PostingRejected,
    Purpose,
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
    wallets: dict[str, int] = field(default_factory=dict)
    _n: int = 0

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
            if method == "medical_account":
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
        produced = 0
        while produced < ledger_events:
            payment = self._payment(rng)
            now = payment.requested_at + timedelta(milliseconds=250)
            causation = uuid.uuid5(NAMESPACE, f"authorized:{payment.payment_id}")
            wallet = f"wallet:{payment.payer_id}"
            balances = {wallet: self.wallets.get(wallet, 0)}
            bank = f"bk_{payment.payment_id}" if payment.method == "bank_card" else None
            decision = decide_posting(
                balances,
                self.head,
                payment,
                now=now,
                keys=self.keys,
                policy=self.policy,
                bank_reference=bank,
            )

            def wrap(
                p: EventPayload,
                producer: Literal["ledger", "payment"] = "ledger",
                pay: PaymentDetails = payment,
                at: datetime = now,
                cause: uuid.UUID = causation,
            ) -> Envelope:
                name = p.event_type if producer == "ledger" else f"payment:{p.event_type}"
                if producer == "ledger":
                    return EVENTS.new(
                        p,
                        key=pay.payer_id,
                        correlation_id=pay.payment_id,
                        causation_id=cause,
                        occurred_at=at,
                        event_id=event_id_for(pay.payment_id, name),
                    )
                return new_event(
                    p,
                    producer=producer,
                    key=pay.payer_id,
                    correlation_id=pay.payment_id,
                    causation_id=cause,
                    occurred_at=at,
                    event_id=event_id_for(pay.payment_id, name),
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
            if isinstance(decision, PostingRejected):
                yield "ledger", wrap(decision)
                yield (
                    "payments",
                    wrap(
                        PaymentFailed(
                            **outcome, decline_code="insufficient_funds", message=decision.message
                        ),
                        "payment",
                    ),
                )
                produced += 1
                continue
            assert isinstance(decision, Posting)
            entry = decision.entry
            changes = fold_entry(self.head, entry)
            self.head = changes.head
            for account_id, delta in changes.deltas:
                if account_id.startswith("wallet:"):
                    self.wallets[account_id] = self.wallets.get(account_id, 0) + delta
            yield "ledger", wrap(entry)
            produced += 1
            if decision.receipt is not None:
                yield "ledger", wrap(decision.receipt)
                produced += 1
            yield (
                "payments",
                wrap(
                    PaymentSucceeded(**outcome, journal_seq=entry.seq, receipt=entry.receipt),
                    "payment",
                ),
            )
