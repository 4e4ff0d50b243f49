"""The broker of the yibao/kafka image: configured by the local stack's own code.

``deploy.local_kafka.render_server_properties`` writes the same server.properties as
``make up`` (KRaft, one node, SASL/SCRAM-SHA-512 for clients, PLAIN on the controller
listener, the StandardAuthorizer with no ACL meaning no access); the storage is
formatted once with the admin's SCRAM credential; then the broker runs in the
foreground (logs on stdout). Settings, from the environment:

    KAFKA_ADMIN_PASSWORD       the admin principal's password (yibao-admin), required
    KAFKA_CONTROLLER_PASSWORD  the controller listener's password, required
    KAFKA_HOST                 address to listen on and advertise (127.0.0.1)
    KAFKA_PORT                 client port (59092)
    KAFKA_CONTROLLER_PORT      controller port (KAFKA_PORT + 1)
    KAFKA_HEAP                 JVM heap (512m)
    KAFKA_DATA                 storage and config directory (/var/lib/kafka)

Standard library only (the image has Debian's python3, not the project's venv).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from deploy.common import KAFKA_ADMIN_USERNAME, KAFKA_SASL_MECHANISM, write_private
from deploy.local_kafka import BrokerSecurity, new_cluster_id, render_server_properties

LIBS = "/opt/kafka/libs/*"
LOG4J = "/opt/yibao/deploy/images/kafka-log4j2.xml"


def main() -> int:
    env = os.environ
    missing = [k for k in ("KAFKA_ADMIN_PASSWORD", "KAFKA_CONTROLLER_PASSWORD") if not env.get(k)]
    if missing:
        print(f"yibao/kafka: {', '.join(missing)} not set; refusing to start", file=sys.stderr)
        return 2
    security = BrokerSecurity(env["KAFKA_ADMIN_PASSWORD"], env["KAFKA_CONTROLLER_PASSWORD"])
    base = Path(env.get("KAFKA_DATA", "/var/lib/kafka"))
    port = int(env.get("KAFKA_PORT", "59092"))
    props = base / "server.properties"
    write_private(
        props,
        render_server_properties(
            base / "data",
            host=env.get("KAFKA_HOST", "127.0.0.1"),
            port=port,
            controller_port=int(env.get("KAFKA_CONTROLLER_PORT", str(port + 1))),
            security=security,
        ),
        0o600,
    )
    java = ["java", "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={LOG4J}"]
    if not (base / "data" / "meta.properties").exists():
        id_file = base / "cluster.id"
        if not id_file.exists():
            id_file.write_text(new_cluster_id() + "\n")
        scram = (
            f"{KAFKA_SASL_MECHANISM}=[name={KAFKA_ADMIN_USERNAME},"
            f"password={security.admin_password}]"
        )
        cluster_id = id_file.read_text().strip()
        tool = [*java, "-cp", LIBS, "kafka.tools.StorageTool", "format", "--standalone"]
        fmt = subprocess.run(  # noqa: S603 - the image's own java
            [*tool, f"--cluster-id={cluster_id}", "-c", str(props), "--add-scram", scram],
            capture_output=True,
            text=True,
            check=False,
        )
        if fmt.returncode != 0:
            output = (fmt.stdout + fmt.stderr).replace(security.admin_password, "***")
            print(f"yibao/kafka: formatting the storage failed:\n{output}", file=sys.stderr)
            return 1
    heap = env.get("KAFKA_HEAP", "512m")
    cmd = [*java, f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-cp", LIBS]
    os.execvp("java", [*cmd, "kafka.Kafka", str(props)])  # noqa: S606, S607


if __name__ == "__main__":
    sys.exit(main())
