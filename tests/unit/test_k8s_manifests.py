"""deploy/k8s: what the manifests promise (replicas, one ledger writer, each service's
own Kafka principal, ports and probes matching the code), the Secrets that
secrets_from_env.py prints, and kubeconform refusing broken manifests.

The project has no YAML parser among its dependencies, so the documents are read as
text: each manifest is written in one plain style (two-space indents, block lists),
which these tests rely on. kubeconform (``make k8s-check``, part of ``make lint``)
checks them against the Kubernetes schemas; its tests here skip where it is not built.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from deploy.common import KAFKA_SERVICES, kafka_password_key, kafka_username
from deploy.k8s import secrets_from_env
from services.ledger.config import LedgerSettings
from services.notify.config import NotifySettings
from services.payment.config import PaymentSettings
from services.risk.config import RiskSettings
from shared.settings import ServiceSettings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
K8S_VERSION = "1.34.2"
CACHE = Path.home() / ".cache" / "yibao"

SERVICES: dict[str, tuple[int, type[ServiceSettings]]] = {
    "payment": (3, PaymentSettings),
    "risk": (3, RiskSettings),
    "notify": (2, NotifySettings),
    "ledger": (1, LedgerSettings),
}


def documents(path: Path) -> list[str]:
    return [d for d in re.split(r"^---\s*$", path.read_text(), flags=re.M) if "kind:" in d]


def kind_of(doc: str) -> str:
    match = re.search(r"^kind: (\w+)$", doc, flags=re.M)
    assert match, doc
    return match.group(1)


def one(path: Path, kind: str) -> str:
    found = [d for d in documents(path) if kind_of(d) == kind]
    assert len(found) == 1, f"{path.name}: {len(found)} {kind}"
    return found[0]


def string_data(doc: str) -> dict[str, str]:
    """A Secret's or ConfigMap's ``stringData:``/``data:`` entries (one level)."""
    block = re.split(r"^(?:stringData|data):\s*$", doc, flags=re.M)[1]
    values = {}
    for line in block.splitlines():
        match = re.match(r"^  ([A-Za-z0-9_]+): ?(.*)$", line)
        if match:
            values[match.group(1)] = match.group(2).strip().strip('"')
    return values


def secrets_by_name(text: str) -> dict[str, dict[str, str]]:
    out = {}
    for doc in re.split(r"^---\s*$", text, flags=re.M):
        if "kind: Secret" in doc:
            name = re.search(r"^  name: (\S+)$", doc, flags=re.M)
            assert name
            out[name.group(1)] = string_data(doc)
    return out


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_each_service_runs_the_app_image_with_its_own_command_and_secrets(service: str) -> None:
    replicas, settings = SERVICES[service]
    deployment = one(K8S / f"{service}.yaml", "Deployment")
    assert f"replicas: {replicas}\n" in deployment
    assert "image: yibao/app:latest" in deployment
    assert f'command: ["python", "-m", "services.{service}"]' in deployment
    refs = re.findall(r"secretRef:\s+name: (\S+)", deployment)
    assert sorted(refs) == sorted(["yibao-shared", f"yibao-{service}"])
    assert re.findall(r"configMapRef:\s+name: (\S+)", deployment) == ["yibao-config"]
    # Port: the code's default, the container's, the scrape annotation's, the env's.
    port = settings.model_fields["port"].default
    prefix = str(settings.model_config.get("env_prefix"))
    assert f"containerPort: {port}\n" in deployment
    assert f'prometheus.io/port: "{port}"' in deployment
    assert re.search(rf'name: {prefix}PORT\s+value: "{port}"', deployment)
    assert re.search(rf'name: {prefix}HOST\s+value: "0.0.0.0"', deployment)
    assert 'prometheus.io/scrape: "true"' in deployment
    assert "prometheus.io/path: /metrics" in deployment
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
        assert re.search(rf"{probe}:\s+httpGet:\s+path: {path}\s+port: http", deployment)
    for setting in (
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "limits:",
        "requests:",
    ):
        assert setting in deployment, setting
    service_doc = one(K8S / f"{service}.yaml", "Service")
    assert "type: ClusterIP" in service_doc
    assert f"port: {port}\n" in service_doc


def test_ledger_is_one_writer_and_the_others_roll_with_a_disruption_budget() -> None:
    ledger = K8S / "ledger.yaml"
    assert "type: Recreate" in one(ledger, "Deployment")
    assert "PodDisruptionBudget" not in [kind_of(d) for d in documents(ledger)]
    for service in ("payment", "risk", "notify"):
        path = K8S / f"{service}.yaml"
        assert "type: RollingUpdate" in one(path, "Deployment")
        assert "maxUnavailable: 1" in one(path, "PodDisruptionBudget")


def test_no_development_gateway_runs_and_production_is_set() -> None:
    for path in K8S.glob("*.yaml"):
        text = path.read_text()
        assert "services.devbank" not in text
        assert "services.notify.gateway" not in text
    config = string_data(one(K8S / "configmap.yaml", "ConfigMap"))
    assert config["YIBAO_ENVIRONMENT"] == "production"
    for name in ("KAFKA_BOOTSTRAP", "DATABASE_URL", "SMS_GATEWAY_URL", "BANK_GATEWAY_URL"):
        assert "REPLACE_ME" in config[name], name
    assert ":" not in config["DATABASE_URL"].split("@")[0].removeprefix("postgresql://")


def test_each_service_secret_holds_only_its_own_principal() -> None:
    secrets = secrets_by_name((K8S / "secrets.yaml").read_text())
    assert set(secrets) == {"yibao-shared", "yibao-kafka-admin"} | {
        f"yibao-{s}" for s in KAFKA_SERVICES
    }
    for service in KAFKA_SERVICES:
        own = secrets[f"yibao-{service}"]
        assert own["YIBAO_KAFKA_USERNAME"] == kafka_username(service)
        assert not any(k.startswith("KAFKA_") for k in own), own.keys()
        assert f"{service.upper()}_DB_APP_PASSWORD" in own
        assert ("YIBAO_RECEIPT_SIGNING_KEY" in own) == (service == "ledger")
    assert not any("KAFKA" in k for k in secrets["yibao-shared"])
    # Templates only: every value to fill in is a placeholder.
    for values in secrets.values():
        for key, value in values.items():
            if not key.endswith("USERNAME"):
                assert "REPLACE_ME" in value, key


def test_kustomization_lists_every_manifest_but_the_secret_templates() -> None:
    listed = re.findall(r"^  - (\S+\.yaml)$", (K8S / "kustomization.yaml").read_text(), re.M)
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secrets.yaml"}
    assert sorted(listed) == sorted(manifests)


def fake_env_file(tmp_path: Path) -> Path:
    values = {
        "YIBAO_SEAL_KEY": "seal",
        "YIBAO_HASH_KEY": "hash",
        "YIBAO_INTERNAL_TOKEN": "token",
        "YIBAO_RECEIPT_SIGNING_KEY": "signing",
        "API_KEY": "caller-1",
        "API_KEY_2": "caller-2",
        "BUREAU_API_KEY": "bureau",
        "OPERATOR_API_KEY": "operator",
        "KAFKA_ADMIN_PASSWORD": "admin-pw",
        "KAFKA_SASL_PASSWORD": "reader-pw",
        **{kafka_password_key(s): f"{s}-pw" for s in KAFKA_SERVICES},
        "PGPASSWORD": "pg-pw",
        **{f"{s.upper()}_DB_APP_PASSWORD": f"{s}-db" for s in KAFKA_SERVICES},
    }
    path = tmp_path / "secrets.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def test_secrets_from_env_fills_the_templates_names(tmp_path: Path) -> None:
    source = secrets_from_env.Source(
        secrets_from_env.read_env_file(fake_env_file(tmp_path)), environ={}
    )
    made = secrets_by_name(secrets_from_env.render(source))
    template = secrets_by_name((K8S / "secrets.yaml").read_text())
    assert {n: set(v) for n, v in made.items()} == {n: set(v) for n, v in template.items()}
    assert source.missing == []
    assert made["yibao-shared"]["YIBAO_API_KEYS"] == "caller-1,caller-2"
    assert made["yibao-shared"]["YIBAO_BUREAU_API_KEYS"] == "110000:bureau"
    for service in KAFKA_SERVICES:
        own = made[f"yibao-{service}"]
        assert own["YIBAO_KAFKA_PASSWORD"] == f"{service}-pw"
        others = {f"{o}-pw" for o in KAFKA_SERVICES if o != service} | {"admin-pw", "reader-pw"}
        assert not others & set(own.values())
        assert made["yibao-kafka-admin"][kafka_password_key(service)] == f"{service}-pw"


def test_secrets_from_env_names_what_it_left_as_placeholder(tmp_path: Path) -> None:
    path = tmp_path / "secrets.env"
    path.write_text("YIBAO_SEAL_KEY=seal\n")
    source = secrets_from_env.Source(secrets_from_env.read_env_file(path), environ={})
    made = secrets_by_name(secrets_from_env.render(source))
    assert made["yibao-shared"]["YIBAO_HASH_KEY"] == "REPLACE_ME"
    assert "YIBAO_HASH_KEY" in source.missing and "YIBAO_SEAL_KEY" not in source.missing


# kubeconform, as `make k8s-check` builds it and the schemas it makes.
KUBECONFORM = Path(os.environ.get("KUBECONFORM", CACHE / "go" / "bin" / "kubeconform"))
SCHEMAS = CACHE / "k8s-schemas"
needs_kubeconform = pytest.mark.skipif(
    not (KUBECONFORM.is_file() and (SCHEMAS / f"v{K8S_VERSION}-standalone-strict").is_dir()),
    reason="kubeconform or its schemas are not built: make k8s-check",
)


def kubeconform(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(KUBECONFORM),
            "-strict",
            "-summary",
            "-kubernetes-version",
            K8S_VERSION,
            "-schema-location",
            str(SCHEMAS),
            *map(str, paths),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@needs_kubeconform
def test_kubeconform_accepts_the_manifests() -> None:
    result = kubeconform(*sorted(set(K8S.glob("*.yaml")) - {K8S / "kustomization.yaml"}))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Invalid: 0, Errors: 0, Skipped: 0" in result.stdout


@needs_kubeconform
@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("unknown-field.yaml", "additional properties 'replica' not allowed"),
        ("wrong-type.yaml", "got string, want integer"),
        ("missing-required.yaml", "missing property 'selector'"),
        ("bad-container.yaml", "additional properties 'resource' not allowed"),
    ],
)
def test_kubeconform_refuses_a_broken_manifest(name: str, reason: str) -> None:
    result = kubeconform(K8S / "testdata" / name)
    assert result.returncode != 0
    assert reason in result.stdout, result.stdout


@needs_kubeconform
def test_kubeconform_accepts_the_secrets_made_from_an_env_file(tmp_path: Path) -> None:
    source = secrets_from_env.Source(
        secrets_from_env.read_env_file(fake_env_file(tmp_path)), environ={}
    )
    made = tmp_path / "secrets.yaml"
    made.write_text(secrets_from_env.render(source))
    result = kubeconform(made)
    assert result.returncode == 0, result.stdout
    assert "Valid: 6," in result.stdout
