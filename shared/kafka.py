"""Kafka client options from the environment: who this process is on the broker.

Every Kafka client the project creates (the consumer, the outbox relay, the topic
reader, ``yibao-dlq``, ``yibao-audit``, deploy/topics.py, the tests and bench) passes
``client_options()`` to aiokafka, so credentials are read in one place:

- ``KAFKA_SECURITY_PROTOCOL`` (``SASL_PLAINTEXT`` locally) and ``KAFKA_SASL_MECHANISM``
  (``SCRAM-SHA-512``);
- the principal: a service's own ``YIBAO_KAFKA_USERNAME`` / ``YIBAO_KAFKA_PASSWORD``
  (set per service process by deploy/ and the e2e tests), else
  ``KAFKA_SASL_USERNAME`` / ``KAFKA_SASL_PASSWORD`` (the read-only principal of
  ``.run/stack.env``, for auditors and ``yibao-dlq list``).

``admin_options()`` is the same with ``KAFKA_ADMIN_USERNAME`` / ``KAFKA_ADMIN_PASSWORD``
first: the operator's principal (topic creation, ``yibao-dlq replay``, test tooling).

Nothing set means no options at all: an unauthenticated broker (a testcontainers one,
a bare ``KAFKA_BOOTSTRAP``) works as before. A username without its password (or the
other way round) is a configuration error, raised here rather than as a broker refusal.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

SCRAM_SHA_512 = "SCRAM-SHA-512"
SASL_PLAINTEXT = "SASL_PLAINTEXT"

# (username variable, password variable), most specific first.
SERVICE_PRINCIPAL = ("YIBAO_KAFKA_USERNAME", "YIBAO_KAFKA_PASSWORD")
SHARED_PRINCIPAL = ("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD")
ADMIN_PRINCIPAL = ("KAFKA_ADMIN_USERNAME", "KAFKA_ADMIN_PASSWORD")


class KafkaCredentialsError(ValueError):
    """Half a principal in the environment (a username without a password or back)."""


def client_options(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """aiokafka keyword options for this process's principal; ``{}`` when none is set."""
    return _options(environ, (SERVICE_PRINCIPAL, SHARED_PRINCIPAL))


def admin_options(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Like ``client_options`` with the admin principal first (operators, test tooling)."""
    return _options(environ, (ADMIN_PRINCIPAL, SERVICE_PRINCIPAL, SHARED_PRINCIPAL))


def _options(
    environ: Mapping[str, str] | None, principals: tuple[tuple[str, str], ...]
) -> dict[str, str]:
    env = os.environ if environ is None else environ
    protocol = env.get("KAFKA_SECURITY_PROTOCOL", "").strip()
    for user_var, password_var in principals:
        username = env.get(user_var, "")
        password = env.get(password_var, "")
        if bool(username) != bool(password):
            missing = password_var if username else user_var
            raise KafkaCredentialsError(f"{missing} is not set but its pair is")
        if username:
            return {
                "security_protocol": protocol or SASL_PLAINTEXT,
                "sasl_mechanism": env.get("KAFKA_SASL_MECHANISM", "").strip() or SCRAM_SHA_512,
                "sasl_plain_username": username,
                "sasl_plain_password": password,
            }
    return {"security_protocol": protocol} if protocol else {}
