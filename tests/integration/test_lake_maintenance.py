"""The lake stays bounded: VACUUM removes the files no table version within the retention needs
(jobs/maintenance.py here; the stream's own VACUUM is checked in test_restart_and_replay)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from lib.lake.sinks import BatchSink, compact, vacuum
from tests.helpers import active_files, make_config, parquet_files

ROOT = Path(__file__).resolve().parents[2]


def test_vacuum_keeps_what_the_retention_needs_and_the_maintenance_job_deletes_the_rest(spark, tmp_path):
    cfg = make_config(tmp_path)
    table = cfg.paths.table("user_profiles")
    for value in range(3):  # three versions, each replacing the last one's file
        spark.range(5).selectExpr(f"id + {value} AS v").coalesce(1).write.format("delta").mode("overwrite").save(table)
    assert len(parquet_files(table)) == 3

    vacuum(spark, table, retention_hours=24.0)  # the replaced files are younger than a day: kept
    assert len(parquet_files(table)) == 3

    # Through spark-submit with the project's own conf/pipeline.toml (lib runs from a zip there:
    # the default config must still be found), the lake, metastore and retention overridden.
    job = subprocess.run(
        [str(ROOT / "spark-submit.sh"), str(ROOT / "jobs" / "maintenance.py"), "--set", f"paths.lake={cfg.paths.lake}"]
        + ["--set", f"paths.metastore={cfg.paths.metastore}", "--set", "lake.retention=1 ms"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    assert parquet_files(table) == active_files(spark, table)
    assert len(parquet_files(table)) == 1
    assert sorted(r.v for r in spark.read.format("delta").load(table).collect()) == [2, 3, 4, 5, 6]


def test_maintenance_committed_under_another_threads_marker_does_not_count_as_a_batch(spark, tmp_path):
    """A MERGE takes its marker from the session conf, so a background VACUUM or an OPTIMIZE that
    commits meanwhile carries it too; the sink must not take that commit for the batch's own."""
    table = str(tmp_path / "table")
    sink = BatchSink(spark, "app")
    for batch_id in (0, 1):
        sink.append(spark.range(3).selectExpr(f"id + {batch_id} AS v").coalesce(1), table, batch_id)
    spark.conf.set("spark.databricks.delta.commitInfo.userMetadata", "app:7")
    try:
        compact(spark, table)
        vacuum(spark, table, retention_hours=24.0)
    finally:
        spark.conf.unset("spark.databricks.delta.commitInfo.userMetadata")
    marked = spark.sql(f"DESCRIBE HISTORY delta.`{table}`").where("userMetadata = 'app:7'").collect()
    assert "OPTIMIZE" in {row.operation for row in marked}  # the hazard is real
    assert sink.last_committed_batch(table) == 1
    assert not sink.committed(table, 2)
