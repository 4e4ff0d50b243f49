"""The AsyncAPI 3 document of the event contract, generated from ``shared.events``.

    python -m shared.asyncapi > docs/asyncapi.json     # regenerate
    python -m shared.asyncapi --check docs/asyncapi.json
    python -m shared.asyncapi --receipt-face > docs/receipt-face.schema.json

Every registered payload becomes a message of the topic its producer writes it to,
with the JSON Schema of its envelope (``Envelope`` with ``event_type`` and
``schema_version`` fixed and ``payload`` the payload model), the Kafka key and the
CloudEvents headers (``shared.outbox.cloudevents_headers``). The dead-letter topics
carry ``DeadLetterMessage`` (``shared.dlq.DeadLetter.encode``). The committed file is
checked against this generator by ``tests/unit/test_asyncapi.py`` and by the real
AsyncAPI CLI (``make asyncapi-check``), so it cannot drift from the code.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from shared import events as ev
from shared.receipt_face import ReceiptFace, render_schema
from shared.topics import LEDGER, MAIN_TOPICS, NOTIFY, PAYMENTS, PERSON_KEYS, RISK, TopicSpec, dlq

ASYNCAPI_VERSION = "3.1.0"
KAFKA_BINDING_VERSION = "0.5.0"
REF = "#/components/schemas/{model}"

# topic → (producer, the events on it, what the Kafka key is)
TOPIC_EVENTS: dict[str, tuple[str, tuple[type[ev.EventPayload], ...], str]] = {
    PAYMENTS: (
        "payment",
        (
            ev.PaymentRequested,
            ev.PaymentVerificationRequired,
            ev.PaymentAuthorized,
            ev.PaymentSucceeded,
            ev.PaymentDeclined,
            ev.PaymentFailed,
            ev.RefundAuthorized,
            ev.RefundSucceeded,
            ev.RefundFailed,
            ev.MedicalAccountAllocated,
            ev.PayerEnrolled,
            ev.PayerCodeIssued,
            ev.PersonalDataErased,
        ),
        "payer_id (PersonalDataErased: the payer_id, else the erasure_id): one payer's"
        " events stay in order on one partition",
    ),
    RISK: (
        "risk",
        (
            ev.RiskApproved,
            ev.RiskDeclined,
            ev.StepUpRequired,
            ev.StepUpPassed,
            ev.StepUpFailed,
            ev.LimitReleased,
        ),
        "payer_id",
    ),
    LEDGER: (
        "ledger",
        (
            ev.JournalEntryPosted,
            ev.ReceiptIssued,
            ev.PostingRejected,
            ev.ClearingDayClosed,
            ev.BankStatementReconciled,
        ),
        "payer_id (ClearingDayClosed and BankStatementReconciled: the day); one"
        " partition, so the topic's order is the journal's order",
    ),
    NOTIFY: ("notify", (ev.NotificationSent,), "payer_id"),
    PERSON_KEYS: (
        "payment",
        (ev.PersonKeyIssued, ev.PersonKeyErased),
        "key_id: the topic is compacted, the last record of a key id is kept",
    ),
}

CLOUDEVENTS_HEADERS = {
    "ce_id": ("The envelope's event_id.", {"type": "string", "format": "uuid"}),
    "ce_type": ("The envelope's event_type.", {"type": "string"}),
    "ce_source": ("/yibao/<producer>, the envelope's producer.", {"type": "string"}),
    "ce_specversion": ("CloudEvents 1.0.", {"type": "string", "const": "1.0"}),
    "ce_time": ("The envelope's occurred_at, RFC 3339 UTC.", {"type": "string"}),
    "content-type": ("application/json.", {"type": "string", "const": "application/json"}),
}


class DeadLetterMessage(BaseModel):
    """A message of ``<topic>.dlq``: the one format ``shared.consumer`` writes
    (``shared.dlq.DeadLetter.encode``) and ``yibao-dlq`` reads back."""

    model_config = ConfigDict(extra="forbid")

    error: str = Field(description="the exception: 'Type: message'")
    consumer: str = Field(description="the consumer group that could not apply it")
    topic: str = Field(description="the original topic")
    partition: int
    offset: int
    key: str | None = Field(description="the original Kafka key")
    failed_at: str = Field(description="RFC 3339 UTC")
    original: dict[str, Any] = Field(
        description="the original envelope, or {'base64': ...} for bytes that were not JSON"
    )


def _schemas() -> dict[str, Any]:
    models: list[type[BaseModel]] = [ev.Envelope, DeadLetterMessage, ReceiptFace]
    for _producer, payloads, _key in TOPIC_EVENTS.values():
        models.extend(payloads)
    _, top = models_json_schema(
        [(m, "validation") for m in models], ref_template=REF, title="Yibao events"
    )
    schemas: dict[str, Any] = dict(sorted(top.get("$defs", {}).items()))
    for _producer, payloads, _key in TOPIC_EVENTS.values():
        for cls in payloads:
            schemas[f"{cls.event_type}Envelope"] = {
                "title": f"{cls.event_type}Envelope",
                "description": f"The envelope of a {cls.event_type} (schema_version"
                f" {cls.schema_version}; older versions are upcast by readers).",
                "allOf": [
                    {"$ref": REF.format(model="Envelope")},
                    {
                        "type": "object",
                        "properties": {
                            "event_type": {"const": cls.event_type},
                            "schema_version": {"type": "integer", "maximum": cls.schema_version},
                            "payload": {"$ref": REF.format(model=cls.__name__)},
                        },
                    },
                ],
            }
    return schemas


def _headers() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "CloudEvents 1.0 attributes (Kafka protocol binding, binary mode"
        " names): additive; the envelope is the truth. Consumers read only ce_type, to"
        " skip an event type they do not handle without decoding the value.",
        "properties": {
            name: {**schema, "description": text}
            for name, (text, schema) in CLOUDEVENTS_HEADERS.items()
        },
    }


def _doc(cls: type[BaseModel]) -> str:
    return " ".join((cls.__doc__ or "").split())


def _channel_id(topic: str) -> str:
    return topic.replace(".", "_").replace("-", "_")


def _spec_of(topic: str) -> TopicSpec:
    return next(t for t in MAIN_TOPICS if t.name == topic)


def _topic_binding(spec: TopicSpec) -> dict[str, Any]:
    config = dict(spec.config)
    topic_config: dict[str, Any] = {}
    if "retention.ms" in config:
        topic_config["retention.ms"] = int(config["retention.ms"])
    if "cleanup.policy" in config:
        topic_config["cleanup.policy"] = [config["cleanup.policy"]]
    if "max.message.bytes" in config:
        topic_config["max.message.bytes"] = int(config["max.message.bytes"])
    return {
        "kafka": {
            "topic": spec.name,
            "partitions": spec.partitions,
            **({"topicConfiguration": topic_config} if topic_config else {}),
            "bindingVersion": KAFKA_BINDING_VERSION,
        }
    }


def build() -> dict[str, Any]:
    """The AsyncAPI document, as a JSON-ready dict (deterministic: sorted, no times)."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for topic, (producer, payloads, key) in TOPIC_EVENTS.items():
        cid = _channel_id(topic)
        refs: dict[str, Any] = {}
        for cls in payloads:
            name = cls.event_type
            messages[name] = {
                "name": name,
                "title": name,
                "summary": _doc(cls) or name,
                "contentType": "application/json",
                "headers": {"$ref": "#/components/schemas/CloudEventsHeaders"},
                "payload": {"$ref": REF.format(model=f"{name}Envelope")},
                "bindings": {
                    "kafka": {
                        "key": {"type": "string", "description": key},
                        "bindingVersion": KAFKA_BINDING_VERSION,
                    }
                },
            }
            refs[name] = {"$ref": f"#/components/messages/{name}"}
        channels[cid] = {
            "address": topic,
            "title": topic,
            "description": f"Written by {producer} through its outbox; key: {key}.",
            "messages": refs,
            "bindings": _topic_binding(_spec_of(topic)),
        }
        operations[f"{producer}_publishes_{cid}"] = {
            "action": "send",
            "title": f"{producer} publishes {topic}",
            "channel": {"$ref": f"#/channels/{cid}"},
            "messages": [{"$ref": f"#/channels/{cid}/messages/{n}"} for n in refs],
        }
        dead = dlq(topic)
        did = _channel_id(dead)
        channels[did] = {
            "address": dead,
            "title": dead,
            "description": f"Dead letters of {topic}: messages a consumer could not apply"
            " (yibao-dlq lists and replays them); key: the original key.",
            "messages": {"DeadLetter": {"$ref": "#/components/messages/DeadLetter"}},
            "bindings": {
                "kafka": {"topic": dead, "partitions": 1, "bindingVersion": KAFKA_BINDING_VERSION}
            },
        }
        operations[f"consumers_dead_letter_{cid}"] = {
            "action": "send",
            "title": f"a consumer of {topic} dead-letters a message",
            "channel": {"$ref": f"#/channels/{did}"},
            "messages": [{"$ref": f"#/channels/{did}/messages/DeadLetter"}],
        }
    messages["DeadLetter"] = {
        "name": "DeadLetter",
        "title": "DeadLetter",
        "summary": _doc(DeadLetterMessage),
        "contentType": "application/json",
        "payload": {"$ref": REF.format(model="DeadLetterMessage")},
        "bindings": {
            "kafka": {
                "key": {"type": "string", "description": "the original message's key"},
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }
    schemas = _schemas()
    schemas["CloudEventsHeaders"] = _headers()
    receipt = schemas["ReceiptIssued"]["properties"]["receipt"]
    receipt["description"] = (
        "The signed face. Faces issued now are ReceiptFace (#/components/schemas/"
        "ReceiptFace); older faces in the journal keep their shape, so the wire type"
        " stays an object. Signed: RFC 8785 canonical JSON of exactly this object."
    )
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Yibao events",
            "version": "1",
            "description": " ".join((ev.__doc__ or "").split())
            + " Generated from shared/events.py by `python -m shared.asyncapi`; do not edit.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"schemas": dict(sorted(schemas.items())), "messages": messages},
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False, sort_keys=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--check"] and len(args) == 2:
        with open(args[1], encoding="utf-8") as committed:
            if committed.read() != render():
                print(
                    f"{args[1]} is stale: regenerate it with"
                    f" `python -m shared.asyncapi > {args[1]}`",
                    file=sys.stderr,
                )
                return 1
        return 0
    if args == ["--receipt-face"]:
        sys.stdout.write(render_schema())
        return 0
    if args:
        print("usage: python -m shared.asyncapi [--check FILE | --receipt-face]", file=sys.stderr)
        return 2
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
