"""Pure parts of deploy/stack.py: rendered configuration and env files."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import pytest

from deploy import common, local_kafka, procs, stack


def _props(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")
    return dict(pairs)


def test_server_properties_single_node_kraft() -> None:
    props = _props(local_kafka.render_server_properties(Path("/data/kafka")))
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:59092,CONTROLLER://127.0.0.1:59093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:59092"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:59093"
    assert props["log.dirs"] == "/data/kafka"
    assert props["auto.create.topics.enable"] == "false"
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.replication.factor",
        "share.coordinator.state.topic.min.isr",
    ):
        assert props[key] == "1", key
    assert props["group.initial.rebalance.delay.ms"] == "0"
    # Kafka insists on more than 1 MiB per cleaner thread, and we keep it small.
    assert 1 << 20 < int(props["log.cleaner.dedupe.buffer.size"]) <= 8 << 20


def test_server_properties_ports_are_parameters() -> None:
    props = _props(local_kafka.render_server_properties("/d", port=1234, controller_port=1235))
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:1234,CONTROLLER://127.0.0.1:1235"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:1235"


@pytest.mark.parametrize(
    "value",
    ["plain", "postgresql://postgres@127.0.0.1:55432/postgres", "a b", "it's", 'q"uote',
     "$HOME", "x=y", "back\\slash", "", "中文"],
)  # fmt: skip
def test_env_file_round_trip(value: str) -> None:
    text = common.render_env({"KEY": value})
    assert common.parse_env(text) == {"KEY": value}


def test_env_file_is_shell_syntax(tmp_path: Path) -> None:
    import subprocess

    values = {"A": "it's $HOME", "B": "postgresql://u@h:1/db"}
    path = tmp_path / "x.env"
    path.write_text(common.render_env(values))
    out = subprocess.run(
        ["sh", "-c", f'. "{path}"; printf "%s\\n%s" "$A" "$B"'],  # noqa: S607
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.split("\n") == [values["A"], values["B"]]


def test_env_rejects_bad_names() -> None:
    with pytest.raises(ValueError, match="not a valid"):
        common.render_env({"BAD-NAME": "x"})


KEYS = {
    "API_KEY": "yb_dev_x",
    "API_KEY_2": "yb_dev_y",
    "BUREAU_API_KEY": "yb_bureau_z",
    "OPERATOR_API_KEY": "yb_operator_w",
}


def test_stack_env_values() -> None:
    values = common.stack_env_values("k:1", "postgresql://x", {**KEYS, "YIBAO_SEAL_KEY": "s"})
    assert values == {
        "KAFKA_BOOTSTRAP": "k:1",
        "DATABASE_URL": "postgresql://x",
        "SMS_GATEWAY_URL": "http://127.0.0.1:8009",
        "BANK_GATEWAY_URL": "http://127.0.0.1:8010",
        "WEBHOOK_RECEIVER_URL": "http://127.0.0.1:8011",
        "PAYMENT_URL": "http://127.0.0.1:8001",
        "LEDGER_URL": "http://127.0.0.1:8002",
        "RISK_URL": "http://127.0.0.1:8003",
        "NOTIFY_URL": "http://127.0.0.1:8004",
        **KEYS,
    }


def test_generated_secrets() -> None:
    a, b = common.generate_secrets(), common.generate_secrets()
    for key in ("YIBAO_SEAL_KEY", "YIBAO_RECEIPT_SIGNING_KEY", "YIBAO_HASH_KEY"):
        assert len(base64.urlsafe_b64decode(a[key])) == 32
        assert a[key] != b[key]
    assert a["API_KEY"].startswith("yb_dev_")
    assert a["API_KEY_2"].startswith("yb_dev_")
    assert a["BUREAU_API_KEY"].startswith("yb_bureau_")
    assert a["OPERATOR_API_KEY"].startswith("yb_operator_")
    assert len({a[k] for k in common.CALLER_KEYS}) == len(common.CALLER_KEYS)
    assert len(a["YIBAO_INTERNAL_TOKEN"]) >= 32


def test_secrets_are_generated_once(tmp_path: Path) -> None:
    lay = common.layout(tmp_path)
    first = common.ensure_secrets(lay)
    assert lay.secrets_env.stat().st_mode & 0o777 == 0o600
    assert common.ensure_secrets(lay) == first


def test_an_old_secrets_file_gains_the_new_keys_and_keeps_its_own(tmp_path: Path) -> None:
    lay = common.layout(tmp_path)
    old = {"YIBAO_SEAL_KEY": "old-seal", "API_KEY": "yb_dev_old", "EXTRA": "mine"}
    common.write_private(lay.secrets_env, common.render_env(old), 0o600)
    values = common.ensure_secrets(lay)
    assert {k: values[k] for k in old} == old
    assert set(common.generate_secrets()) <= set(values)
    assert common.read_env_file(lay.secrets_env) == values
    assert lay.secrets_env.stat().st_mode & 0o777 == 0o600


def test_service_env_lists_both_callers_the_bureau_and_the_operator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("YIBAO_API_KEYS", "YIBAO_BUREAU_API_KEYS", "YIBAO_OPERATOR_API_KEYS"):
        monkeypatch.delenv(name, raising=False)
    lay = common.layout(tmp_path)
    common.write_stack_env(lay, "k:1", "postgresql://x")
    secrets = common.read_env_file(lay.secrets_env)
    env = common.service_env(lay)
    assert env["YIBAO_API_KEYS"] == f"{secrets['API_KEY']},{secrets['API_KEY_2']}"
    assert env["YIBAO_BUREAU_API_KEYS"] == f"110000:{secrets['BUREAU_API_KEY']}"
    assert env["YIBAO_OPERATOR_API_KEYS"] == secrets["OPERATOR_API_KEY"]
    assert env["BANK_GATEWAY_URL"] == "http://127.0.0.1:8010"
    assert env["BANK_GATEWAY_STORE"] == str(lay.run / "devbank" / "bank.sqlite3")
    stack_env = common.read_env_file(lay.stack_env)
    for key in ("BANK_GATEWAY_URL", *common.CALLER_KEYS):
        assert stack_env[key] == env[key]


def test_caller_key_env_keeps_what_secrets_env_sets_itself() -> None:
    derived = common.caller_key_env({**KEYS, "YIBAO_API_KEYS": "hand,written"})
    assert "YIBAO_API_KEYS" not in derived
    assert derived["YIBAO_BUREAU_API_KEYS"] == "110000:yb_bureau_z"
    assert common.caller_key_env({"API_KEY": "a"}) == {"YIBAO_API_KEYS": "a"}


def test_cluster_id_is_kafka_uuid() -> None:
    cid = local_kafka.new_cluster_id()
    assert len(cid) == 22
    assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """A first byte of 0xF8 encodes to a leading ``-``, which the storage tool's command
    line took for an option (a container CI run failed on it): such an id is drawn again."""
    drawn = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x01" * 16)])
    monkeypatch.setattr(local_kafka.uuid, "uuid4", lambda: next(drawn))
    assert base64.urlsafe_b64encode(b"\xf8" + bytes(15)).startswith(b"-")
    assert local_kafka.new_cluster_id() == base64.urlsafe_b64encode(b"\x01" * 16).decode()[:22]


def test_cache_dir_honours_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert local_kafka.kafka_cache_dir("4.1.1") == tmp_path / "yibao" / "kafka-4.1.1"


def test_module_exists(tmp_path: Path) -> None:
    (tmp_path / "services" / "x").mkdir(parents=True)
    (tmp_path / "services" / "x" / "__main__.py").write_text("")
    (tmp_path / "services" / "x" / "gw.py").write_text("")
    assert stack.module_exists(tmp_path, "services.x")
    assert stack.module_exists(tmp_path, "services.x.gw")
    assert not stack.module_exists(tmp_path, "services.y")


def test_stop_process_is_idempotent(tmp_path: Path) -> None:
    pidfile = tmp_path / "none.pid"
    assert procs.stop_process(pidfile) is False
    pidfile.write_text("999999999\n")
    assert procs.stop_process(pidfile) is False
    assert not pidfile.exists()


@pytest.mark.parametrize(
    ("env", "wanted"),
    [({}, False), ({"CI": "true"}, True), ({"CI": "false"}, False),
     ({"YIBAO_STACK_TAKEOVER": "1"}, True)],
)  # fmt: skip
def test_takeover_only_in_ci(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], wanted: bool
) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("YIBAO_STACK_TAKEOVER", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert procs.takeover_wanted() is wanted


def test_long_command_lines_keep_both_ends() -> None:
    cmd = "/usr/bin/java " + "-Dx=y " * 50 + "kafka.Kafka /repo/.run/kafka/server.properties"
    short = procs._short(cmd)
    assert len(short) < 200
    assert short.startswith("/usr/bin/java")
    assert short.endswith("kafka.Kafka /repo/.run/kafka/server.properties")


# --------------------------------------------------------------- instances (issue 13)


def test_one_instance_of_each_service_unless_asked() -> None:
    assert common.instance_counts({}) == {"payment": 1, "risk": 1, "notify": 1}


def test_yibao_instances_scales_all_three_and_a_service_own_count_wins() -> None:
    env = {"YIBAO_INSTANCES": "2", "YIBAO_NOTIFY_INSTANCES": "3"}
    assert common.instance_counts(env) == {"payment": 2, "risk": 2, "notify": 3}


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", str(common.MAX_INSTANCES + 1)])
def test_an_instance_count_that_is_not_a_small_whole_number_is_refused(value: str) -> None:
    with pytest.raises(common.StackError, match="YIBAO_RISK_INSTANCES"):
        common.instance_counts({"YIBAO_RISK_INSTANCES": value})


def test_the_ledger_stays_one_instance() -> None:
    assert "ledger" not in common.instance_counts({"YIBAO_INSTANCES": "4"})
    assert common.instance_counts({"YIBAO_LEDGER_INSTANCES": "1"})["payment"] == 1
    with pytest.raises(common.StackError, match="single writer"):
        common.instance_counts({"YIBAO_LEDGER_INSTANCES": "2"})


def test_instance_files_are_named_after_the_service(tmp_path: Path) -> None:
    assert [common.instance_name("payment", i) for i in (1, 2, 3)] == [
        "payment",
        "payment-2",
        "payment-3",
    ]
    for name in ("payment-10", "payment-2", "payment-x", "sms-gateway", "payment-1"):
        (tmp_path / f"{name}.pid").touch()
    assert common.instance_names("payment", tmp_path) == ["payment", "payment-2", "payment-10"]
    assert common.instance_names("sms-gateway", tmp_path) == ["sms-gateway"]
    assert common.instance_names("risk", tmp_path / "missing") == ["risk"]
