"""The lake stays bounded: VACUUM removes the files no table version within the retention needs,
by itself (the stream, every `lake.vacuum_every` batches) and by jobs/maintenance.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from delta.tables import DeltaTable

from lib.sinks import vacuum
from lib.stream import run_available_now
from tests.conftest import make_config
from tests.integration.conftest import activity_writer, read, write_config_file

ROOT = Path(__file__).resolve().parents[2]


def parquet_files(table: str) -> set[str]:
    return {p.name for p in Path(table).rglob("*.parquet") if "_delta_log" not in p.parts}


def active_files(spark, table: str) -> set[str]:
    return {Path(f).name for f in DeltaTable.forPath(spark, table).toDF().inputFiles()}


def test_vacuum_deletes_only_files_no_version_within_the_retention_needs(spark, tmp_path):
    table = str(tmp_path / "t")
    for value in range(3):  # three versions, each replacing the last one's file
        spark.range(5).selectExpr(f"id + {value} AS v").coalesce(1).write.format("delta").mode("overwrite").save(table)
    assert len(parquet_files(table)) == 3

    vacuum(spark, table, retention_hours=24.0)  # the replaced files are younger than a day: kept
    assert len(parquet_files(table)) == 3

    vacuum(spark, table, retention_hours=0.0)
    assert parquet_files(table) == active_files(spark, table)
    assert sorted(r.v for r in spark.read.format("delta").load(table).collect()) == [2, 3, 4, 5, 6]


def test_stream_vacuums_its_tables_and_the_maintenance_job_the_rest(spark, tmp_path):
    cfg = make_config(tmp_path, "stream.max_files_per_trigger=1", "lake.vacuum_every=2", "lake.retention=1 ms")
    writer = activity_writer(cfg, users=20, items=30)
    for _ in range(3):
        writer.write_file(100)
    run_available_now(spark, cfg)  # batches 0, 1, 2; batch 2 vacuums

    live_sessions = cfg.paths.table("live_sessions")  # rewritten by a MERGE every batch
    assert parquet_files(live_sessions) == active_files(spark, live_sessions)
    assert read(spark, cfg, "enriched_events").count() == sum(1 for r in writer.manifest if r.expected_reason is None)

    config_file = write_config_file(cfg, tmp_path / "pipeline.toml", '[lake]\nretention = "1 ms"\n')
    profiles = cfg.paths.table("user_profiles")
    spark.read.format("delta").load(profiles).write.format("delta").mode("overwrite").save(profiles)
    assert parquet_files(profiles) != active_files(spark, profiles)
    job = subprocess.run(
        [sys.executable, "jobs/maintenance.py", "--config", str(config_file)], cwd=ROOT, capture_output=True, text=True
    )
    assert job.returncode == 0, job.stderr[-3000:]
    assert parquet_files(profiles) == active_files(spark, profiles)
