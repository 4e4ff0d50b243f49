"""``yibao-audit`` and one key per purpose (issue 11): a receipt verifies only with a
receipts key, a journal entry or checkpoint only with a journal key (or, for both, the
undivided key of before issue 11). A receipt signed under the journal key (wrong
purpose) is a signature discrepancy, even though the key is trusted."""

from __future__ import annotations

from services.ledger.audit.keys import KeySet, key_set_json, key_set_of, parse_key_set
from services.ledger.audit.model import Where
from services.ledger.audit.rules import Auditor
from services.ledger.audit.synthetic import SyntheticJournal
from services.ledger.domain.posting import PostingKeys
from services.ledger.signing import UNDIVIDED, LedgerSigners, ReceiptSigner, SigningPurpose
from shared.events import Event, decode_payload
from tests.unit.test_audit_checks import SIGNER, Log, kinds

SIGNERS = LedgerSigners.derive(b"k" * 32)
RECEIPTS, JOURNAL = SIGNERS.receipts, SIGNERS.journal


def journal(receipt_signer: ReceiptSigner, n: int = 40) -> Log:
    keys = PostingKeys(check_key=b"c" * 32, signer=receipt_signer, journal_signer=JOURNAL)
    return list(SyntheticJournal(keys, payers=6, seed=3, signed=True).events(n))


def audit_with(log: Log, keys: KeySet) -> Auditor:
    auditor = Auditor(public_key=keys.keys[0], other_keys=keys.keys[1:], purposes=keys.purposes)
    auditor.mark_payments_read()
    for offset, (stream, env) in enumerate(log):
        event = Event(env, decode_payload(env))
        (auditor.ledger if stream == "ledger" else auditor.payment)(
            event, Where(f"{stream}.v1", 0, offset)
        )
    auditor.finish()
    return auditor


def ledger_key_set() -> KeySet:
    """The key set as GET /v1/receipts/public-keys serves it: each key with its purpose."""
    return parse_key_set(key_set_json(key_set_of(SIGNERS.by_purpose.items())), "keys")


def test_each_artefact_verifies_with_its_purpose_key() -> None:
    auditor = audit_with(journal(RECEIPTS), ledger_key_set())
    assert auditor.findings.total == 0, auditor.findings.kept[:3]
    assert auditor.counts.receipts > 0


def test_a_receipt_signed_under_the_journal_key_is_a_signature_discrepancy() -> None:
    log = journal(JOURNAL)  # receipts signed with the journal's key: the wrong purpose
    auditor = audit_with(log, ledger_key_set())
    assert kinds(auditor) == {"receipt_signature"}
    found = next(d for d in auditor.findings.kept if d.kind == "receipt_signature")
    assert "a journal key, not a receipts key" in found.message
    assert JOURNAL.key_id in found.message
    # The same journal with no purposes stated (every key signs every kind) is clean:
    # the purpose is what fails it, not the signature.
    anything = KeySet((RECEIPTS.public_raw, JOURNAL.public_raw))
    assert audit_with(log, anything).findings.total == 0


def test_an_entry_signed_under_the_receipts_key_is_a_signature_discrepancy() -> None:
    keys = PostingKeys(check_key=b"c" * 32, signer=RECEIPTS, journal_signer=RECEIPTS)
    log = list(SyntheticJournal(keys, payers=6, seed=3, signed=True).events(40))
    assert "entry_signature" in kinds(audit_with(log, ledger_key_set()))


def test_the_undivided_key_verifies_every_kind() -> None:
    """A journal of before issue 11 (one key for everything) verifies with that key
    listed as ``all`` beside the purpose keys."""
    old = list(SyntheticJournal(PostingKeys(b"c" * 32, SIGNER), payers=6, seed=3).events(40))
    listed = key_set_json(key_set_of([*SIGNERS.by_purpose.items(), (UNDIVIDED, SIGNER)]))
    assert {k["purpose"] for k in listed} == {*SigningPurpose, UNDIVIDED}
    auditor = audit_with(old, parse_key_set(listed, "keys"))
    assert auditor.findings.total == 0, auditor.findings.kept[:3]
