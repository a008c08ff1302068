"""The Hive metastore that names every table: a Derby database under ``paths.metastore``,
served by a Derby network server on 127.0.0.1.

Embedded Derby admits one JVM at a time, and the stream, ``./pyspark.sh``, the Thrift server
and the batch jobs run side by side; so the database is served over the network. The first job
that needs it starts the server, detached in a session of its own so that it outlives that job
(and a kill -9 of its process group), and records the port and pid in ``server.json`` beside
the database; later jobs find it there. ``scripts/metastore.sh stop`` stops it.

Example::

    server = ensure_server("data/metastore")
    spark_conf(server)  # settings that point a SparkSession's catalog at it
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from lib.core.paths import JARS_DIR, fetched_jars
from lib.core.processes import accepts_connections, file_lock, free_port, java, live_record, terminate

log = logging.getLogger(__name__)

DERBY_DATABASE = "metastore_db"
_SERVER_FILE = "server.json"
_SERVER_CLASS = "org.apache.derby.drda.NetworkServerControl"
# The engine jars pyspark ships; derbynet (server) and derbyclient (driver) come from Maven Central.
_WHEEL_JARS = ("derby", "derbyshared", "derbytools")


class MetastoreError(RuntimeError):
    """The metastore server cannot be started or reached; the message says why and what to do."""


@dataclass(frozen=True)
class MetastoreServer:
    folder: Path
    port: int
    pid: int

    @property
    def jdbc_url(self) -> str:
        return f"jdbc:derby://127.0.0.1:{self.port}/{DERBY_DATABASE};create=true"


def _pyspark_jars_dir() -> Path:
    # The installed distribution, not ``pyspark.__file__``: under spark-submit the driver imports
    # pyspark from a zip inside it.
    return Path(metadata.distribution("pyspark").locate_file("pyspark/jars"))


def derby_version() -> str:
    """The Derby version pyspark ships (the network server and client jars must match it)."""
    names = sorted(p.name for p in _pyspark_jars_dir().glob("derby-*.jar"))
    if not names:
        raise MetastoreError(f"no derby-*.jar in {_pyspark_jars_dir()}: reinstall pyspark (make setup)")
    return names[0][len("derby-") : -len(".jar")]


def derby_maven_coordinates() -> list[str]:
    version = derby_version()
    return [f"org.apache.derby:derbynet:{version}", f"org.apache.derby:derbyclient:{version}"]


def _fetched_jar(artifact: str) -> Path:
    return fetched_jars([JARS_DIR / f"{artifact}-{derby_version()}.jar"], f"the Derby {artifact} jar")[0]


def client_jar() -> Path:
    """The Derby network client (JDBC driver) the Spark driver needs on its class path."""
    return _fetched_jar("derbyclient")


def _server_classpath() -> str:
    version = derby_version()
    jars = [_pyspark_jars_dir() / f"{name}-{version}.jar" for name in _WHEEL_JARS]
    return os.pathsep.join(map(str, [*jars, _fetched_jar("derbynet")]))


def spark_conf(server: MetastoreServer) -> dict[str, str]:
    """Settings that make a SparkSession's catalog the Hive metastore ``server`` serves."""
    return {
        "spark.sql.catalogImplementation": "hive",
        "spark.hadoop.javax.jdo.option.ConnectionURL": server.jdbc_url,
        "spark.hadoop.javax.jdo.option.ConnectionDriverName": "org.apache.derby.jdbc.ClientDriver",
        # The first job creates the metastore's schema; Hive's version check would refuse it.
        "spark.hadoop.datanucleus.schema.autoCreateAll": "true",
        "spark.hadoop.hive.metastore.schema.verification": "false",
        "spark.sql.warehouse.dir": str(server.folder / "warehouse"),
    }


def running_server(folder: str | Path) -> MetastoreServer | None:
    """The server recorded for ``folder`` if it is up and answering, else None."""
    folder = Path(folder).resolve()
    record = live_record(folder / _SERVER_FILE, _SERVER_CLASS)
    return None if record is None else MetastoreServer(folder, int(record["port"]), int(record["pid"]))


def _start(folder: Path, port: int, timeout_s: float) -> MetastoreServer:
    command = [
        java(),
        "-Xmx256m",
        f"-Dderby.system.home={folder}",
        f"-Dderby.stream.error.file={folder / 'derby.log'}",
        "-cp",
        _server_classpath(),
        _SERVER_CLASS,
        "start",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-noSecurityManager",
    ]
    with open(folder / "server.log", "ab") as server_log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = (folder / "server.log").read_text(errors="replace")[-2000:]
            raise MetastoreError(f"the metastore server on port {port} exited with {process.returncode}:\n{tail}")
        if accepts_connections(port):
            return MetastoreServer(folder, port, process.pid)
        time.sleep(0.2)
    process.kill()
    raise MetastoreError(f"the metastore server did not accept connections within {timeout_s:.0f} s; see {folder}")


def ensure_server(folder: str | Path, timeout_s: float = 60.0) -> MetastoreServer:
    """The running server of ``folder``, started first if none runs."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with file_lock(folder / "server.lock"):
        server = running_server(folder)
        if server is not None:
            return server
        for attempt in range(3):  # another process may take the free port before the server binds it
            try:
                server = _start(folder, free_port(), timeout_s)
                break
            except MetastoreError:
                if attempt == 2:
                    raise
        (folder / _SERVER_FILE).write_text(json.dumps({"port": server.port, "pid": server.pid}))
        log.info("started the metastore server for %s on 127.0.0.1:%d (pid %d)", folder, server.port, server.pid)
        return server


def stop_server(folder: str | Path, timeout_s: float = 30.0) -> bool:
    """Stop the server of ``folder``; False if none was running."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        return False
    with file_lock(folder / "server.lock"):
        server = running_server(folder)
        (folder / _SERVER_FILE).unlink(missing_ok=True)
        if server is None:
            return False
        terminate(server.pid, _SERVER_CLASS, timeout_s)
        log.info("stopped the metastore server for %s (pid %d)", folder, server.pid)
        return True
