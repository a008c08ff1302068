"""Start or stop the Spark Thrift server (HiveServer2 protocol, JDBC/ODBC) over the lake's tables.

Usage (through scripts/sql-server.sh):
    scripts/sql-server.sh start [--port 10000] [--config PATH]
    scripts/sql-server.sh stop [--config PATH]
    beeline -u jdbc:hive2://127.0.0.1:10000/streamrec -e "select count(*) from enriched_events"

The server's catalog is the config's metastore (``paths.metastore``), where the jobs name every
table ``streamrec.<table>``; each query reads a table's latest version, so answers follow the
stream. It runs detached, its pid and port kept beside the metastore (``sql-server.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyspark

from lib.core import metastore
from lib.core.cli import config_from_args
from lib.core.paths import PROJECT_ROOT
from lib.core.processes import accepts_connections, read_record, runs, terminate
from lib.core.spark import LOG4J_CONF, SPARK_DEFAULTS, engine_jar_paths
from lib.lake.catalog import DATABASE

THRIFT_SERVER_CLASS = "org.apache.spark.sql.hive.thriftserver.HiveThriftServer2"
_STATE_FILE = "sql-server.json"


def _recorded(folder: Path) -> dict | None:
    """The server's record while its process runs (it may still be starting up)."""
    record = read_record(folder / _STATE_FILE)
    return record if "pid" in record and runs(int(record["pid"]), THRIFT_SERVER_CLASS) else None


def _spark_submit() -> str:
    return str(Path(sys.executable).parent / "spark-submit")


def start(cfg, port: int, timeout_s: float) -> int:
    folder = Path(cfg.paths.metastore).resolve()
    running = _recorded(folder) if folder.is_dir() else None
    if running:
        print(f"already running (pid {running['pid']})")
        print(f"jdbc=jdbc:hive2://127.0.0.1:{running['port']}/{DATABASE}")
        return 0
    if accepts_connections(port):
        print(f"port {port} on 127.0.0.1 is taken: choose another with --port", file=sys.stderr)
        return 2
    server = metastore.ensure_server(folder)
    conf = {
        **metastore.spark_conf(server),
        "spark.sql.hive.thriftServer.singleSession": "false",
        "spark.executor.extraJavaOptions": f"-Dlog4j2.configurationFile=file:{LOG4J_CONF}",
    }
    command = [
        _spark_submit(),
        "--class",
        THRIFT_SERVER_CLASS,
        "--name",
        "streamrec-sql-server",
        "--properties-file",
        str(SPARK_DEFAULTS),
        "--jars",
        ",".join(map(str, engine_jar_paths())),
        "--driver-class-path",
        os.pathsep.join(map(str, [metastore.client_jar(), *engine_jar_paths()])),
        "--driver-java-options",
        f"-Dlog4j2.configurationFile=file:{LOG4J_CONF}",
        *[arg for key, value in conf.items() for arg in ("--conf", f"{key}={value}")],
        "--hiveconf",
        f"hive.server2.thrift.port={port}",
        "--hiveconf",
        "hive.server2.thrift.bind.host=127.0.0.1",
        "spark-internal",
    ]
    env = {
        **os.environ,
        "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
        # spark-submit finds Spark through a python on PATH unless told where it is.
        "SPARK_HOME": os.environ.get("SPARK_HOME", str(Path(pyspark.__file__).resolve().parent)),
        "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable),
    }
    log_path = folder / "sql-server.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (folder / _STATE_FILE).write_text(json.dumps({"pid": process.pid, "port": port}))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            (folder / _STATE_FILE).unlink(missing_ok=True)
            print(f"the Thrift server exited with {process.returncode}; see {log_path}", file=sys.stderr)
            return 1
        if accepts_connections(port):
            # Clients connect to .../streamrec, which exists once a job named a table; create it now
            # so that a client of a fresh metastore gets an empty database, not an error.
            created = subprocess.run(
                [str(Path(env["SPARK_HOME"]) / "bin" / "beeline"), "-u", f"jdbc:hive2://127.0.0.1:{port}/default"]
                + ["--silent=true", "-e", f"CREATE DATABASE IF NOT EXISTS {DATABASE}"],
                env=env,
                capture_output=True,
                text=True,
            )
            if created.returncode != 0:
                print(f"the Thrift server does not answer queries: {created.stderr[-2000:]}", file=sys.stderr)
                return 1
            print(f"started (pid {process.pid}, log {log_path})")
            print(f"jdbc=jdbc:hive2://127.0.0.1:{port}/{DATABASE}")
            return 0
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    (folder / _STATE_FILE).unlink(missing_ok=True)
    print(f"the Thrift server did not accept connections within {timeout_s:.0f} s; see {log_path}", file=sys.stderr)
    return 1


def stop(cfg, timeout_s: float = 60.0) -> int:
    folder = Path(cfg.paths.metastore).resolve()
    running = _recorded(folder) if folder.is_dir() else None
    (folder / _STATE_FILE).unlink(missing_ok=True)
    if not running:
        print("not running")
        return 0
    pid = int(running["pid"])
    terminate(pid, THRIFT_SERVER_CLASS, timeout_s)
    print(f"stopped (pid {pid})")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("--config", help="pipeline TOML file (default: conf/pipeline.toml)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--port", type=int, default=10000, help="port on 127.0.0.1 (default 10000)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the server to start")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    if args.action == "start":
        return start(cfg, args.port, args.timeout)
    return stop(cfg)


if __name__ == "__main__":
    sys.exit(main())
