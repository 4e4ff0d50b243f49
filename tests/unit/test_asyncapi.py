"""The AsyncAPI document and the receipt-face schema are generated from the code: the
committed files must be what the generator writes now (regenerate with the commands in
shared/asyncapi.py), and every registered event has its topic."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from aiokafka.structs import ConsumerRecord

from shared import asyncapi
from shared.dlq import DeadLetter
from shared.events import _REGISTRY
from shared.receipt_face import render_schema

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_committed_asyncapi_is_what_the_code_generates() -> None:
    assert (DOCS / "asyncapi.json").read_text(encoding="utf-8") == asyncapi.render(), (
        "docs/asyncapi.json is stale: python -m shared.asyncapi > docs/asyncapi.json"
    )
    assert asyncapi.main(["--check", str(DOCS / "asyncapi.json")]) == 0


def test_committed_receipt_face_schema_is_what_the_code_generates() -> None:
    assert (DOCS / "receipt-face.schema.json").read_text(encoding="utf-8") == render_schema()


def test_every_registered_event_is_on_exactly_one_topic() -> None:
    placed = [
        cls.event_type for _p, payloads, _k in asyncapi.TOPIC_EVENTS.values() for cls in payloads
    ]
    contract = [t for t, cls in _REGISTRY.items() if cls.__module__ == "shared.events"]
    assert sorted(placed) == sorted(contract)  # (other tests register events of their own)


def test_document_shape() -> None:
    doc = asyncapi.build()
    assert doc["asyncapi"] == "3.1.0"
    addresses = {c["address"] for c in doc["channels"].values()}
    for topic in ("payments.v1", "risk.v1", "ledger.v1", "notify.v1", "person-keys.v1"):
        assert {topic, f"{topic}.dlq"} <= addresses
    message = doc["components"]["messages"]["PaymentRequested"]
    assert message["bindings"]["kafka"]["key"]["type"] == "string"
    envelope = doc["components"]["schemas"]["PaymentRequestedEnvelope"]
    assert envelope["allOf"][1]["properties"]["payload"] == {
        "$ref": "#/components/schemas/PaymentRequested"
    }
    assert "ce_id" in doc["components"]["schemas"]["CloudEventsHeaders"]["properties"]


def test_dead_letter_schema_matches_what_consumers_write() -> None:
    record = ConsumerRecord("payments.v1", 0, 7, 0, 0, b"u-1", b"{}", None, 3, 2, [])
    letter = DeadLetter.of(record, ValueError("bad"), "ledger")
    written = json.loads(letter.encode())
    assert set(written) == set(asyncapi.DeadLetterMessage.model_fields)
    asyncapi.DeadLetterMessage.model_validate(written)
    assert datetime.fromisoformat(written["failed_at"]).tzinfo == UTC
