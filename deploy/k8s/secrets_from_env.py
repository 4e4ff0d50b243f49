"""The Secrets of deploy/k8s/secrets.yaml, filled in from an env file such as
``.run/secrets.env``, printed as YAML for ``kubectl apply -f -``.

    python3 deploy/k8s/secrets_from_env.py .run/secrets.env | kubectl apply -f -

The same split as secrets.yaml: ``yibao-shared`` (seal, hash and internal keys, the
caller, bureau and operator keys: ``YIBAO_*`` names, or derived from ``API_KEY``,
``API_KEY_2``, ``BUREAU_API_KEY``, ``OPERATOR_API_KEY`` as ``make up`` does), one Secret
per service with only its own Kafka principal (``KAFKA_<SERVICE>_PASSWORD``), and
``yibao-kafka-admin`` for the topics Job. The PostgreSQL passwords are not in
``.run/secrets.env`` (the local cluster trusts its logins): ``PGPASSWORD`` and
``<SERVICE>_DB_APP_PASSWORD`` are read from the file or the environment; a value found
in neither is written ``REPLACE_ME`` and named on stderr, as is any other missing key.
Values are printed, so pipe them to kubectl rather than into a file you keep.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from deploy.common import (
    KAFKA_SERVICES,
    caller_key_env,
    kafka_password_key,
    kafka_username,
    read_env_file,
)

NAMESPACE = "yibao"
PLACEHOLDER = "REPLACE_ME"
SHARED_KEYS = (
    "YIBAO_SEAL_KEY",
    "YIBAO_HASH_KEY",
    "YIBAO_INTERNAL_TOKEN",
    "YIBAO_API_KEYS",
    "YIBAO_BUREAU_API_KEYS",
    "YIBAO_OPERATOR_API_KEYS",
)
OPTIONAL_SHARED_KEYS = ("YIBAO_SEAL_KEYS_OLD",)
ADMIN_USERNAME = "yibao-admin"
READER_USERNAME = "yibao-reader"


def secret(name: str, values: Mapping[str, str], service: str | None = None) -> str:
    """One Secret as YAML; values as JSON strings (valid YAML double-quoted scalars)."""
    labels = [f"    app.kubernetes.io/part-of: {NAMESPACE}"]
    if service is not None:
        labels.append(f"    app.kubernetes.io/name: {service}")
    lines = [
        "apiVersion: v1",
        "kind: Secret",
        "metadata:",
        f"  name: {name}",
        f"  namespace: {NAMESPACE}",
        "  labels:",
        *labels,
        "type: Opaque",
        "stringData:",
        *(f"  {key}: {json.dumps(value)}" for key, value in values.items()),
    ]
    return "\n".join(lines) + "\n"


class Source:
    """Values by name: the env file, its derived caller keys, then the environment."""

    def __init__(self, file_values: Mapping[str, str], environ: Mapping[str, str]) -> None:
        self.values = {**file_values, **caller_key_env(file_values)}
        self.environ = environ
        self.missing: list[str] = []

    def get(self, key: str, *, required: bool = True) -> str | None:
        value = self.values.get(key) or self.environ.get(key)
        if value:
            return value
        if required:
            self.missing.append(key)
            return PLACEHOLDER
        return None


def render(source: Source) -> str:
    """Every Secret of deploy/k8s/secrets.yaml, separated by ``---``."""
    shared: dict[str, str] = {}
    for key in SHARED_KEYS:
        shared[key] = source.get(key) or PLACEHOLDER
    for key in OPTIONAL_SHARED_KEYS:
        value = source.get(key, required=False)
        if value:
            shared[key] = value
    docs = [secret("yibao-shared", shared)]
    admin = {
        "KAFKA_ADMIN_USERNAME": ADMIN_USERNAME,
        "KAFKA_ADMIN_PASSWORD": source.get("KAFKA_ADMIN_PASSWORD") or PLACEHOLDER,
        "KAFKA_SASL_USERNAME": READER_USERNAME,
        "KAFKA_SASL_PASSWORD": source.get("KAFKA_SASL_PASSWORD") or PLACEHOLDER,
    }
    for service in KAFKA_SERVICES:
        password = source.get(kafka_password_key(service)) or PLACEHOLDER
        own = {
            "YIBAO_KAFKA_USERNAME": kafka_username(service),
            "YIBAO_KAFKA_PASSWORD": password,
            "PGPASSWORD": source.get("PGPASSWORD") or PLACEHOLDER,
            f"{service.upper()}_DB_APP_PASSWORD": (
                source.get(f"{service.upper()}_DB_APP_PASSWORD") or PLACEHOLDER
            ),
        }
        if service == "ledger":
            own["YIBAO_RECEIPT_SIGNING_KEY"] = (
                source.get("YIBAO_RECEIPT_SIGNING_KEY") or PLACEHOLDER
            )
        docs.append(secret(f"yibao-{service}", own, service))
        admin[f"KAFKA_{service.upper()}_USERNAME"] = kafka_username(service)
        admin[kafka_password_key(service)] = password
    docs.append(secret("yibao-kafka-admin", admin, "topics"))
    return "---\n".join(docs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("env_file", type=Path, help="e.g. .run/secrets.env")
    args = parser.parse_args(argv)
    if not args.env_file.is_file():
        print(f"{args.env_file}: no such file", file=sys.stderr)
        return 2
    source = Source(read_env_file(args.env_file), os.environ)
    sys.stdout.write(render(source))
    if source.missing:
        names = ", ".join(dict.fromkeys(source.missing))
        print(
            f"written as {PLACEHOLDER} (set them in the file or the environment): {names}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
