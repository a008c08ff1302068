"""The lake stays bounded: VACUUM removes the files no table version within the retention needs
(jobs/maintenance.py here; the stream's own VACUUM is checked in test_restart_and_replay)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from lib.sinks import vacuum
from tests.conftest import make_config
from tests.integration.conftest import active_files, parquet_files

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
    # the default config must still be found), the lake and retention overridden.
    job = subprocess.run(
        [str(ROOT / "spark-submit.sh"), str(ROOT / "jobs" / "maintenance.py"), "--set", f"paths.lake={cfg.paths.lake}"]
        + ["--set", "lake.retention=1 ms"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    assert parquet_files(table) == active_files(spark, table)
    assert len(parquet_files(table)) == 1
    assert sorted(r.v for r in spark.read.format("delta").load(table).collect()) == [2, 3, 4, 5, 6]
