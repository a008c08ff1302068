"""Tables by name: the persistent Hive metastore (Derby network server), the Spark Thrift server
queried over JDBC with beeline while the stream writes, and ./pyspark.sh."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pyspark
from chispa import assert_df_equality
from pyspark.sql import functions as F

from lib.core.metastore import running_server
from lib.core.processes import free_port
from lib.core.schemas import TABLES
from lib.lake.catalog import DATABASE, register_tables, registered_locations
from lib.lake.verify import check_lake
from lib.stream.query import ensure_tables, run_available_now
from tests.helpers import (
    activity_writer,
    generated_purchases,
    make_config,
    read,
    write_config_file,
    write_purchases,
)

ROOT = Path(__file__).resolve().parents[2]
SPARK_HOME = Path(pyspark.__file__).resolve().parent
PROMPT = re.compile(r"^\d+: jdbc:hive2://\S+> ")


def comparable(df):
    """Map columns as JSON text: chispa orders rows, and maps cannot be ordered."""
    columns = [F.to_json(f.name).alias(f.name) if f.dataType.typeName() == "map" else F.col(f.name) for f in df.schema]
    return df.select(*columns)


def test_every_table_is_named_at_its_lake_and_another_lake_takes_the_names_over(spark, tmp_path):
    first = make_config(tmp_path / "first", "stream.max_files_per_trigger=2")
    write_purchases(first.paths.purchases, generated_purchases(users=20, items=40, count=80))
    writer = activity_writer(first, users=20, items=40)
    for _ in range(2):
        writer.write_file(150)
    run_available_now(spark, first)
    stream_tables = list(TABLES)  # the stream creates every table (recommendations empty until training)
    assert set(stream_tables) <= set(registered_locations(spark))
    for table in stream_tables:
        assert_df_equality(
            comparable(spark.table(f"{DATABASE}.{table}")),
            comparable(read(spark, first, table)),
            ignore_row_order=True,
            ignore_nullable=True,
        )
    assert all(check.ok for check in check_lake(spark, first)), check_lake(spark, first)
    first_rows = read(spark, first, "enriched_events").count()

    second = make_config(tmp_path / "second")
    ensure_tables(spark, second)
    assert register_tables(spark, second) == stream_tables
    locations = registered_locations(spark)
    assert all(locations[t] == os.path.normpath(second.paths.table(t)) for t in stream_tables)
    assert spark.table(f"{DATABASE}.enriched_events").count() == 0
    # The names are external: pointing them elsewhere left the first lake's data in place.
    assert read(spark, first, "enriched_events").count() == first_rows > 0
    named = next(c for c in check_lake(spark, first) if c.table.startswith("named"))
    assert named.missing == len(stream_tables)  # the verifier sees that the names moved away


def beeline(port: int, sql: str) -> tuple[int, list[str], str]:
    """(exit code, rows as CSV lines, stderr) of ``sql``, from the beeline JDBC client pyspark ships."""
    result = subprocess.run(
        [str(SPARK_HOME / "bin" / "beeline"), "-u", f"jdbc:hive2://127.0.0.1:{port}/{DATABASE}"]
        + ["--silent=true", "--showHeader=false", "--outputformat=csv2", "-e", sql],
        env={**os.environ, "SPARK_HOME": str(SPARK_HOME)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    # beeline echoes its prompt before the first row when it reads -e
    lines = (PROMPT.sub("", line) for line in result.stdout.splitlines() if not line.startswith("WARNING"))
    rows = [line for line in lines if line.strip()]
    return result.returncode, rows, result.stderr


def wait_for_count(port: int, expected: int, timeout_s: float = 240.0) -> int:
    """The row count of enriched_events over JDBC once it is ``expected`` (until the stream has
    named its tables, the query fails: it is asked again)."""
    deadline = time.monotonic() + timeout_s
    count, error = -1, ""
    while time.monotonic() < deadline:
        code, rows, error = beeline(port, "select count(*) from enriched_events")
        if code == 0:
            count = int(rows[-1])
            if count == expected:
                return count
        time.sleep(2)
    raise AssertionError(f"enriched_events has {count} rows over JDBC, not {expected}; last error: {error[-2000:]}")


def test_thrift_server_and_shell_answer_by_name_while_the_stream_writes(spark, tmp_path):
    cfg = make_config(tmp_path, f"paths.metastore={tmp_path / 'metastore'}")
    config = write_config_file(cfg, tmp_path / "pipeline.toml")
    write_purchases(cfg.paths.purchases, generated_purchases(users=20, items=40, count=80))
    writer = activity_writer(cfg, users=20, items=40)
    writer.write_file(200)
    port = free_port()
    stream_log = open(tmp_path / "stream.log", "w")
    stream = subprocess.Popen(
        [str(ROOT / "spark-submit.sh"), "jobs/stream.py", "--config", str(config)],
        cwd=ROOT,
        stdout=stream_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = None
    try:
        started = subprocess.run(
            [str(ROOT / "scripts" / "sql-server.sh"), "start", "--port", str(port), "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert started.returncode == 0, started.stderr
        assert f"jdbc=jdbc:hive2://127.0.0.1:{port}/{DATABASE}" in started.stdout
        server = running_server(cfg.paths.metastore)
        assert server is not None

        def valid_rows() -> int:
            return sum(1 for row in writer.manifest if row.expected_reason is None)

        wait_for_count(port, valid_rows())
        writer.write_file(200)  # lands while the stream and the server run
        wait_for_count(port, valid_rows())
        code, rows, error = beeline(port, f"show tables in {DATABASE}")
        assert code == 0, error[-3000:]
        tables = {line.split(",")[1] for line in rows}
        assert {"enriched_events", "live_sessions", "user_profiles", "quarantine"} <= tables

        shell = subprocess.run(
            [str(ROOT / "pyspark.sh"), "--config", str(config)],
            input="print('ROWS', spark.table('enriched_events').count(), spark.catalog.currentDatabase())\n",
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert f"ROWS {valid_rows()} {DATABASE}" in shell.stdout, shell.stdout + shell.stderr[-3000:]
    finally:
        os.kill(stream.pid, signal.SIGTERM)
        stream.wait(timeout=120)
        stopped = subprocess.run(
            [str(ROOT / "scripts" / "sql-server.sh"), "stop", "--config", str(config)], capture_output=True, text=True
        )
        subprocess.run([str(ROOT / "scripts" / "metastore.sh"), "stop", "--config", str(config)], check=True)
    assert stream.returncode == 0, (tmp_path / "stream.log").read_text()[-3000:]
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert running_server(cfg.paths.metastore) is None
    assert subprocess.run(["pgrep", "-f", f"hive.server2.thrift.port={port}"], capture_output=True).returncode == 1
