"""Kafka authentication and ACLs on the real broker (issue 11, "Who may act for whom").

The local broker authenticates every client with SASL/SCRAM-SHA-512 and authorizes it
with ACLs (deploy/kafka_access.py): a client without credentials is refused; the
read-only principal reads but cannot write; each service writes only its own topic, so
a ``PaymentAuthorized`` forged with the ledger's credentials never reaches
``payments.v1``. Per-test principals and ACLs on the test's prefixed topics are made
the way the e2e system makes them; the local stack's own principals are checked too
(refusals only: nothing is written to its real topics).

The first tests are pure: how the environment becomes client options, what each
service process gets, what the broker's properties and ACLs say.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    TopicAuthorizationFailedError,
)

from deploy import common, kafka_access, local_kafka
from shared.events import (
    BeneficiaryRef,
    Envelope,
    PaymentAuthorized,
    PaymentDetails,
    Purpose,
    decode,
    encode,
    new_event,
)
from shared.kafka import KafkaCredentialsError, admin_options, client_options
from shared.topics import TopicNames
from tests.support import Infra, create_service_principals, kafka_authenticates

REFUSED = (TopicAuthorizationFailedError, ClusterAuthorizationFailedError)


# ------------------------------------------------------------------------ pure


def test_no_credentials_means_no_options() -> None:
    assert client_options({}) == {}
    assert admin_options({"KAFKA_BOOTSTRAP": "k:1"}) == {}


def test_a_service_principal_wins_over_the_shared_one() -> None:
    env = {
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "yibao-reader",
        "KAFKA_SASL_PASSWORD": "r",
        "YIBAO_KAFKA_USERNAME": "yibao-ledger",
        "YIBAO_KAFKA_PASSWORD": "l",
        "KAFKA_ADMIN_USERNAME": "yibao-admin",
        "KAFKA_ADMIN_PASSWORD": "a",
    }
    assert client_options(env) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "yibao-ledger",
        "sasl_plain_password": "l",
    }
    assert admin_options(env)["sasl_plain_username"] == "yibao-admin"
    reader = {k: v for k, v in env.items() if not k.startswith(("YIBAO_", "KAFKA_ADMIN"))}
    assert client_options(reader)["sasl_plain_username"] == "yibao-reader"
    assert admin_options(reader)["sasl_plain_username"] == "yibao-reader"


def test_a_username_alone_defaults_to_scram_over_sasl_plaintext() -> None:
    options = client_options({"KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"})
    assert options["security_protocol"] == "SASL_PLAINTEXT"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"


def test_half_a_principal_is_a_configuration_error_naming_the_variable() -> None:
    with pytest.raises(KafkaCredentialsError, match="YIBAO_KAFKA_PASSWORD") as caught:
        client_options({"YIBAO_KAFKA_USERNAME": "yibao-ledger"})
    assert "yibao-ledger" not in str(caught.value)


def test_each_service_process_gets_only_its_own_principal() -> None:
    secrets = common.generate_secrets()
    env = {
        **secrets,
        **common.kafka_stack_env(secrets),
        **common.kafka_service_principals(secrets),
        "YIBAO_KAFKA_USERNAME": "yibao-admin",  # a test process acting as the admin
        "YIBAO_KAFKA_PASSWORD": secrets["KAFKA_ADMIN_PASSWORD"],
    }
    ledger = common.process_env(env, "ledger")
    assert ledger["YIBAO_KAFKA_USERNAME"] == "yibao-ledger"
    assert ledger["YIBAO_KAFKA_PASSWORD"] == secrets["KAFKA_LEDGER_PASSWORD"]
    kafka_values = {k: v for k, v in ledger.items() if "KAFKA" in k}
    assert set(kafka_values) == {
        "KAFKA_SECURITY_PROTOCOL",
        "KAFKA_SASL_MECHANISM",
        "YIBAO_KAFKA_USERNAME",
        "YIBAO_KAFKA_PASSWORD",
    }
    others = {v for k, v in secrets.items() if k.startswith("KAFKA_") and "LEDGER" not in k}
    assert not others & set(ledger.values())
    gateway = common.process_env(env, "sms-gateway")
    assert not {k for k in gateway if "KAFKA" in k} - {
        "KAFKA_SECURITY_PROTOCOL",
        "KAFKA_SASL_MECHANISM",
    }


def test_stack_env_names_the_read_only_and_the_admin_principals(tmp_path: Path) -> None:
    lay = common.layout(tmp_path)
    values = common.write_stack_env(lay, common.DEFAULT_KAFKA_BOOTSTRAP, "postgresql://x")
    secrets = common.read_env_file(lay.secrets_env)
    assert {k: values[k] for k in common.KAFKA_CLIENT_ENV_KEYS} == {
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "yibao-reader",
        "KAFKA_SASL_PASSWORD": secrets["KAFKA_SASL_PASSWORD"],
        "KAFKA_ADMIN_USERNAME": "yibao-admin",
        "KAFKA_ADMIN_PASSWORD": secrets["KAFKA_ADMIN_PASSWORD"],
    }
    assert not {k for k in values if k.startswith("KAFKA_") and k.endswith("PASSWORD")} - {
        "KAFKA_SASL_PASSWORD",
        "KAFKA_ADMIN_PASSWORD",
    }, "service passwords stay out of stack.env"
    assert lay.stack_env.stat().st_mode & 0o777 == 0o600


def _props(text: str) -> dict[str, str]:
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_the_broker_authenticates_and_authorizes() -> None:
    security = local_kafka.BrokerSecurity("admin-pw", "controller-pw")
    props = _props(local_kafka.render_server_properties("/d", security=security))
    assert props["listeners"].startswith("SASL_PLAINTEXT://127.0.0.1:")
    assert "PLAINTEXT:PLAINTEXT" not in props["listener.security.protocol.map"]
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == "User:yibao-admin;User:yibao-controller"
    open_props = _props(local_kafka.render_server_properties("/d"))
    assert "authorizer.class.name" not in open_props


def test_each_service_writes_only_its_own_topic_and_its_dead_letters() -> None:
    written = {
        a.service: {
            acl.name
            for acl in kafka_access.service_acls(a, a.username, "p.")
            if acl.operation == kafka_access.Operation.WRITE
        }
        for a in kafka_access.SERVICE_ACCESS
    }
    assert written["payment"] == {
        "p.payments.v1",
        "p.person-keys.v1",
        "p.risk.v1.dlq",
        "p.ledger.v1.dlq",
    }
    assert written["ledger"] == {"p.ledger.v1", "p.payments.v1.dlq", "p.person-keys.v1.dlq"}
    assert written["risk"] == {"p.risk.v1", "p.payments.v1.dlq", "p.person-keys.v1.dlq"}
    assert all("p.payments.v1" not in w for s, w in written.items() if s != "payment")
    assert all("p.ledger.v1" not in w for s, w in written.items() if s != "ledger")
    assert all("p.person-keys.v1" not in w for s, w in written.items() if s != "payment")
    reader = kafka_access.reader_acls()
    assert {acl.operation for acl in reader} == {
        kafka_access.Operation.READ,
        kafka_access.Operation.DESCRIBE,
    }


# ------------------------------------------------------------ on the broker


@pytest.fixture
def secured(infra: Infra) -> Infra:
    if not kafka_authenticates():
        pytest.skip("this broker does not authenticate (testcontainers, open KAFKA_BOOTSTRAP)")
    return infra


def _as(username: str, password: str) -> dict[str, str]:
    return client_options({"KAFKA_SASL_USERNAME": username, "KAFKA_SASL_PASSWORD": password})


def forged_payment_authorized() -> Envelope:
    """A well-formed PaymentAuthorized that payment never issued."""
    pid = f"pay_{uuid.uuid4().hex[:16]}"
    details = PaymentDetails(
        payment_id=pid,
        payer_id="u-forged",
        payer_phone_masked="138****8000",
        payer_phone_sealed="v1.sealed-for-test",
        beneficiary=BeneficiaryRef(
            id_number_masked="110105********002X",
            id_number_hash="ab" * 32,
            name="张三",
            relation="self",
        ),
        purpose=Purpose(type="wallet_topup", region="110000"),
        amount=5_000_000,
        method="wallet",
        payee_id="wallet:u-forged",
        payee_name="零钱",
        requested_at=datetime.now(UTC),
    )
    return new_event(
        PaymentAuthorized(payment=details, stepped_up=False, bank_debit=None),
        producer="payment",
        key="u-forged",
        correlation_id=pid,
    )


async def _produce(bootstrap: str, options: Mapping[str, str], topic: str, value: bytes) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, request_timeout_ms=10000, **options
    )
    await producer.start()
    try:
        await producer.send_and_wait(topic, value=value, key=b"u-forged")
    finally:
        await producer.stop()


async def _partitions(bootstrap: str, topic: str) -> list[int]:
    """The topic's partitions, as the admin sees them."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=10000, **admin_options()
    )
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert described["error_code"] == 0, described
    return sorted(p["partition"] for p in described["partitions"])


async def _read_all(bootstrap: str, options: Mapping[str, str], topic: str) -> list[bytes]:
    """Every record of ``topic``, read as this principal (no consumer group); the
    broker's refusal to hand out its records raises TopicAuthorizationFailedError."""
    tps = [TopicPartition(topic, p) for p in await _partitions(bootstrap, topic)]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, request_timeout_ms=10000, **options
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        values: list[bytes] = []
        for tp in tps:
            while await consumer.position(tp) < ends[tp]:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                values += [r.value for r in batch.get(tp, []) if r.value is not None]
        return values
    finally:
        await consumer.stop()


async def test_a_client_without_credentials_cannot_produce_or_consume(secured: Infra) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=secured.kafka_bootstrap, request_timeout_ms=5000)
    with pytest.raises(KafkaConnectionError):
        await producer.start()
    await producer.stop()
    consumer = AIOKafkaConsumer(
        "payments.v1", bootstrap_servers=secured.kafka_bootstrap, request_timeout_ms=5000
    )
    with pytest.raises(KafkaConnectionError):
        await consumer.start()
    await consumer.stop()


async def test_a_wrong_password_is_refused(secured: Infra) -> None:
    admin = os.environ["KAFKA_ADMIN_USERNAME"]
    with pytest.raises(KafkaError):
        await _produce(secured.kafka_bootstrap, _as(admin, "not-the-password"), "x", b"x")


async def test_the_read_only_principal_reads_every_topic_and_writes_none(
    secured: Infra, kafka_topics: TopicNames
) -> None:
    reader = _as(os.environ["KAFKA_SASL_USERNAME"], os.environ["KAFKA_SASL_PASSWORD"])
    event = forged_payment_authorized()
    await _produce(secured.kafka_bootstrap, admin_options(), kafka_topics.payments, encode(event))
    seen = await _read_all(secured.kafka_bootstrap, reader, kafka_topics.payments)
    assert [decode(v).envelope.event_id for v in seen] == [event.event_id]
    for topic in (kafka_topics.payments, kafka_topics.ledger, kafka_topics.payments + ".dlq"):
        with pytest.raises(REFUSED):
            await _produce(secured.kafka_bootstrap, reader, topic, encode(event))


async def test_a_payment_authorized_forged_with_the_ledgers_credentials_is_refused(
    secured: Infra, kafka_topics: TopicNames
) -> None:
    principals = await create_service_principals(secured.kafka_bootstrap, kafka_topics.prefix)
    ledger = _as(principals["KAFKA_LEDGER_USERNAME"], principals["KAFKA_LEDGER_PASSWORD"])
    forged = forged_payment_authorized()
    with pytest.raises(TopicAuthorizationFailedError):
        await _produce(secured.kafka_bootstrap, ledger, kafka_topics.payments, encode(forged))
    assert await _read_all(secured.kafka_bootstrap, admin_options(), kafka_topics.payments) == []
    # The ledger writes its own journal topic and the dead letters of payments.v1.
    await _produce(secured.kafka_bootstrap, ledger, kafka_topics.ledger, b"{}")
    await _produce(secured.kafka_bootstrap, ledger, kafka_topics.payments + ".dlq", b"{}")


async def test_payment_writes_payments_and_not_the_ledger(
    secured: Infra, kafka_topics: TopicNames
) -> None:
    principals = await create_service_principals(secured.kafka_bootstrap, kafka_topics.prefix)
    payment = _as(principals["KAFKA_PAYMENT_USERNAME"], principals["KAFKA_PAYMENT_PASSWORD"])
    event = forged_payment_authorized()
    await _produce(secured.kafka_bootstrap, payment, kafka_topics.payments, encode(event))
    with pytest.raises(TopicAuthorizationFailedError):
        await _produce(secured.kafka_bootstrap, payment, kafka_topics.ledger, b"{}")
    # Nor another namespace's topics: its ACLs name this namespace's topics only.
    with pytest.raises(TopicAuthorizationFailedError):
        await _produce(secured.kafka_bootstrap, payment, "payments.v1", encode(event))
    # It reads what it consumes (risk.v1, ledger.v1), not another service's topic.
    assert await _read_all(secured.kafka_bootstrap, payment, kafka_topics.ledger) == []
    await _produce(secured.kafka_bootstrap, admin_options(), kafka_topics.notify, b"{}")
    with pytest.raises(TopicAuthorizationFailedError):
        await _read_all(secured.kafka_bootstrap, payment, kafka_topics.notify)


async def test_the_local_stacks_own_principals_are_refused_outside_their_topics(
    secured: Infra,
) -> None:
    secrets = common.read_env_file(common.layout().secrets_env)
    if secured.kafka_bootstrap != common.DEFAULT_KAFKA_BOOTSTRAP or not secrets:
        pytest.skip("not the local stack of this checkout")
    forged = encode(forged_payment_authorized())
    ledger = _as(common.kafka_username("ledger"), secrets["KAFKA_LEDGER_PASSWORD"])
    with pytest.raises(TopicAuthorizationFailedError):
        await _produce(secured.kafka_bootstrap, ledger, "payments.v1", forged)
    payment = _as(common.kafka_username("payment"), secrets["KAFKA_PAYMENT_PASSWORD"])
    with pytest.raises(TopicAuthorizationFailedError):
        await _produce(secured.kafka_bootstrap, payment, "ledger.v1", b"{}")
    reader = _as(common.KAFKA_READER_USERNAME, secrets["KAFKA_SASL_PASSWORD"])
    with pytest.raises(REFUSED):
        await _produce(secured.kafka_bootstrap, reader, "ledger.v1", b"{}")
