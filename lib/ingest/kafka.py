"""Apache Kafka for the stream: the jars (the broker's and Spark's connector), a single-node
KRaft broker on 127.0.0.1 run from those jars, and the client-side checks the stream makes
before it subscribes.

The broker is a plain JVM (``kafka.Kafka``) started detached in a session of its own, its
folder holding ``server.properties``, the log directory, ``broker.log`` and ``broker.json``
(ports and pid); ``scripts/kafka.sh start|stop`` drives it. Restarting it on the same folder
keeps its ports and its data, as a restarted production broker would.

Example::

    broker = start_broker("data/kafka")       # waits until it answers
    create_topic(broker.bootstrap, "activity", partitions=2)
    stop_broker("data/kafka")
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import time
import uuid
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from lib.core.paths import JARS_DIR, PROJECT_ROOT, fetched_jars, maven_jar
from lib.core.processes import (
    accepts_connections,
    file_lock,
    free_port,
    java,
    live_record,
    read_record,
    runs,
    terminate,
)

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.4.0"
# The broker's runtime class path: org.apache.kafka:kafka_2.13 and its dependencies as Maven
# resolves them, plus log4j's SLF4J binding so that the broker's log reaches broker.log. They run
# in the broker's own JVM, apart from Spark's class path.
BROKER_MAVEN_COORDINATES = (
    "at.yawk.lz4:lz4-java:1.11.2",
    "com.dynatrace.hash4j:hash4j:0.22.0",
    "com.fasterxml.jackson.core:jackson-annotations:2.21",
    "com.fasterxml.jackson.core:jackson-core:2.21.7",
    "com.fasterxml.jackson.core:jackson-databind:2.21.7",
    "com.fasterxml.jackson.dataformat:jackson-dataformat-yaml:2.21.7",
    "com.fasterxml.jackson.datatype:jackson-datatype-jdk8:2.21.7",
    "com.github.ben-manes.caffeine:caffeine:3.2.0",
    "com.github.luben:zstd-jni:1.5.7-17",
    "com.google.re2j:re2j:1.8",
    "com.typesafe.scala-logging:scala-logging_2.13:3.9.6",
    "com.yammer.metrics:metrics-core:2.2.0",
    "commons-beanutils:commons-beanutils:1.11.0",
    "commons-collections:commons-collections:3.2.2",
    "commons-digester:commons-digester:2.1",
    "commons-logging:commons-logging:1.3.5",
    "commons-validator:commons-validator:1.10.1",
    "net.sf.jopt-simple:jopt-simple:5.0.4",
    "net.sourceforge.argparse4j:argparse4j:0.7.0",
    f"org.apache.kafka:kafka-clients:{KAFKA_VERSION}",
    f"org.apache.kafka:kafka-coordinator-common:{KAFKA_VERSION}",
    f"org.apache.kafka:kafka-group-coordinator-api:{KAFKA_VERSION}",
    f"org.apache.kafka:kafka-group-coordinator:{KAFKA_VERSION}",
    f"org.apache.kafka:kafka-metadata:{KAFKA_VERSION}",
    f"org.apache.kafka:kafka-raft:{KAFKA_VERSION}",
    f"org.apache.kafka:kafka-server-common:{KAFKA_VERSION}",
    f"org.apache.kafka:kafka-server:{KAFKA_VERSION}",
    f"org.apache.kafka:kafka-share-coordinator:{KAFKA_VERSION}",
    f"org.apache.kafka:kafka-storage-api:{KAFKA_VERSION}",
    f"org.apache.kafka:kafka-storage:{KAFKA_VERSION}",
    f"org.apache.kafka:kafka-tools-api:{KAFKA_VERSION}",
    f"org.apache.kafka:kafka-transaction-coordinator:{KAFKA_VERSION}",
    f"org.apache.kafka:kafka_2.13:{KAFKA_VERSION}",
    "org.apache.logging.log4j:log4j-api:2.25.5",
    "org.apache.logging.log4j:log4j-core:2.25.5",
    "org.apache.logging.log4j:log4j-slf4j-impl:2.25.5",
    "org.bitbucket.b_c:jose4j:0.9.6",
    "org.hdrhistogram:HdrHistogram:2.2.2",
    "org.jspecify:jspecify:1.0.0",
    "org.pcollections:pcollections:4.0.2",
    "org.scala-lang:scala-library:2.13.18",
    "org.scala-lang:scala-reflect:2.13.18",
    "org.slf4j:slf4j-api:1.7.36",
    "org.xerial.snappy:snappy-java:1.1.10.7",
    "org.yaml:snakeyaml:2.5",
)
BROKER_JARS_DIR = JARS_DIR / "kafka-broker"
# What spark-sql-kafka-0-10 of pyspark 4.2 depends on beyond the jars pyspark ships (lz4, snappy,
# scala-library, slf4j, hadoop-client are in the wheel already).
_CONNECTOR_KAFKA_CLIENTS = "3.9.2"
_CONNECTOR_COMMONS_POOL2 = "2.13.1"

BROKER_CLASS = "kafka.Kafka"
_STATE_FILE = "broker.json"
_LOG4J_CONF = PROJECT_ROOT / "conf" / "kafka-log4j2.properties"


class KafkaError(RuntimeError):
    """Kafka cannot serve the stream (broker down, topic missing, setup incomplete); the message
    says what is wrong and how to fix it."""


def connector_maven_coordinates() -> list[str]:
    """Spark's Kafka source for the installed pyspark, with the dependencies pyspark lacks."""
    spark = metadata.version("pyspark")
    return [
        f"org.apache.spark:spark-sql-kafka-0-10_2.13:{spark}",
        f"org.apache.spark:spark-token-provider-kafka-0-10_2.13:{spark}",
        f"org.apache.kafka:kafka-clients:{_CONNECTOR_KAFKA_CLIENTS}",
        f"org.apache.commons:commons-pool2:{_CONNECTOR_COMMONS_POOL2}",
    ]


def connector_jar_paths() -> list[Path]:
    jars = (maven_jar(JARS_DIR, c) for c in connector_maven_coordinates())
    return fetched_jars(jars, "Spark's Kafka connector jars")


def _broker_classpath() -> str:
    jars = fetched_jars((maven_jar(BROKER_JARS_DIR, c) for c in BROKER_MAVEN_COORDINATES), "the Kafka broker's jars")
    return os.pathsep.join(map(str, jars))


@dataclass(frozen=True)
class Broker:
    folder: Path
    port: int
    controller_port: int
    pid: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def running_broker(folder: str | Path) -> Broker | None:
    """The broker recorded for ``folder`` if it runs and accepts connections, else None."""
    folder = Path(folder).resolve()
    record = live_record(folder / _STATE_FILE, BROKER_CLASS)
    if record is None:
        return None
    return Broker(folder, int(record["port"]), int(record["controller_port"]), int(record["pid"]))


def _server_properties(folder: Path, port: int, controller_port: int) -> str:
    # One node that is both broker and controller (KRaft combined mode); every internal topic
    # with one replica, as a single node must. Topics are created on purpose (the generator or
    # `scripts/kafka.sh topic`), so a mistyped topic name is an error, not an empty new topic.
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={folder / 'data'}",
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "",
        ]
    )


def _format_storage(folder: Path, classpath: str) -> None:
    cluster_id = "-"
    while cluster_id.startswith("-"):  # as Kafka's own ids: a leading "-" reads as an option
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    result = subprocess.run(
        [
            java(),
            "-cp",
            classpath,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(folder / "server.properties"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise KafkaError(f"formatting the broker's storage in {folder} failed:\n{result.stdout}{result.stderr}")


def _answers(bootstrap: str, timeout_s: float) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=timeout_s)
        return True
    except Exception:  # KafkaException while the broker is still starting
        return False


def start_broker(folder: str | Path, port: int | None = None, timeout_s: float = 120.0) -> Broker:
    """The broker of ``folder``, started first if it is not running.

    A new folder gets ``port`` (9092 when None) and a free controller port; a folder used before
    keeps its ports unless ``port`` names another one.
    """
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with file_lock(folder / "broker.lock"):
        broker = running_broker(folder)
        if broker is not None:
            if port is not None and port != broker.port:
                raise KafkaError(f"the broker of {folder} already runs on port {broker.port}; stop it first")
            return broker
        state = read_record(folder / _STATE_FILE)
        port = port or state.get("port") or 9092
        controller_port = state.get("controller_port") or free_port()
        if accepts_connections(port):
            raise KafkaError(f"port {port} of 127.0.0.1 is taken by another process: pass --port N")
        classpath = _broker_classpath()
        (folder / "server.properties").write_text(_server_properties(folder, port, controller_port))
        if not (folder / "data" / "meta.properties").is_file():
            _format_storage(folder, classpath)
        command = [
            java(),
            "-Xmx512m",
            f"-Dlog4j2.configurationFile=file:{_LOG4J_CONF}",
            "-cp",
            classpath,
            BROKER_CLASS,
            str(folder / "server.properties"),
        ]
        with open(folder / "broker.log", "ab") as broker_log:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=broker_log, stderr=subprocess.STDOUT, start_new_session=True
            )
        broker = Broker(folder, port, controller_port, process.pid)
        state = {"port": port, "controller_port": controller_port, "pid": process.pid}
        (folder / _STATE_FILE).write_text(json.dumps(state))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = (folder / "broker.log").read_text(errors="replace")[-3000:]
                raise KafkaError(f"the Kafka broker on port {port} exited with {process.returncode}:\n{tail}")
            if accepts_connections(port) and _answers(broker.bootstrap, 2.0):
                log.info("started the Kafka broker of %s on %s (pid %d)", folder, broker.bootstrap, process.pid)
                return broker
            time.sleep(0.3)
        terminate(process.pid, BROKER_CLASS, 10.0)
        raise KafkaError(f"the Kafka broker did not answer within {timeout_s:.0f} s; see {folder / 'broker.log'}")


def stop_broker(folder: str | Path, timeout_s: float = 60.0) -> bool:
    """Stop the broker of ``folder`` (a controlled shutdown, SIGKILL after ``timeout_s``); False
    if none was running. Its data and ports stay for the next start."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        return False
    with file_lock(folder / "broker.lock"):
        state = read_record(folder / _STATE_FILE)
        pid = state.get("pid")
        if not pid or not runs(int(pid), BROKER_CLASS):
            return False
        terminate(int(pid), BROKER_CLASS, timeout_s)
        log.info("stopped the Kafka broker of %s (pid %d)", folder, pid)
        return True


def create_topic(bootstrap: str, topic: str, partitions: int = 1, timeout_s: float = 30.0) -> bool:
    """Create ``topic`` (one replica); False if it exists already."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    if topic in topics(bootstrap, timeout_s):
        return False
    future = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic]
    try:
        future.result(timeout=timeout_s)
    except Exception as exc:  # another client may have created it meanwhile
        if "TOPIC_ALREADY_EXISTS" in str(exc):
            return False
        raise KafkaError(f"creating topic {topic!r} on {bootstrap} failed: {exc}") from exc
    return True


def topics(bootstrap: str, timeout_s: float = 15.0) -> set[str]:
    """The topics of the cluster at ``bootstrap``; raises ``KafkaError`` if no broker answers."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.connection.setup.timeout.ms": 5000})
    try:
        return set(admin.list_topics(timeout=timeout_s).topics)
    except Exception as exc:
        raise KafkaError(
            f"no Kafka broker answers at {bootstrap} ({exc}). Start one (scripts/kafka.sh start) or set "
            "kafka.bootstrap_servers to a running broker."
        ) from None


def check_topic(bootstrap: str, topic: str, timeout_s: float = 15.0) -> None:
    """Raise ``KafkaError`` with the fix if the broker is down or ``topic`` does not exist."""
    if topic not in topics(bootstrap, timeout_s):
        raise KafkaError(
            f"topic {topic!r} does not exist on {bootstrap}. Create it (scripts/kafka.sh topic {topic} "
            "--partitions N, or produce with jobs/generate.py events --sink kafka), or set kafka.topic."
        )
