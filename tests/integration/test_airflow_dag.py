"""The maintenance DAG run by Airflow itself (`airflow dags test`, no scheduler) on a small lake:
every task runs its job through ./spark-submit.sh and leaves its mark on the tables; the profile
check it runs catches a profile that disagrees with the events."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from delta.tables import DeltaTable
from pyspark.sql import functions as F

from lib.lake.verify import check_profiles
from lib.stream.query import run_available_now
from tests.helpers import (
    activity_writer,
    generated_purchases,
    make_config,
    read,
    write_config_file,
    write_purchases,
)

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = ROOT / ".venv-airflow" / "bin" / "airflow"


def operations(spark, cfg, table: str) -> list[str]:
    return [row.operation for row in DeltaTable.forPath(spark, cfg.paths.table(table)).history().collect()]


def test_maintenance_dag_retrains_checks_compacts_vacuums_and_verifies(spark, tmp_path):
    assert AIRFLOW.is_file(), "run `make airflow` first (make test does)"
    cfg = make_config(tmp_path / "lake", "stream.max_files_per_trigger=1", "stream.compact_every=0")
    write_purchases(cfg.paths.purchases, generated_purchases(users=25, items=50, count=120))
    writer = activity_writer(cfg, users=25, items=50)
    for _ in range(3):
        writer.write_file(200)
    run_available_now(spark, cfg)
    # A fixed EASE penalty: the automatic search would add minutes and nothing to what is tested here.
    config = write_config_file(
        cfg, tmp_path / "pipeline.toml", '[stream]\ncompact_every = 0\n[recommend]\nease_lambda = "50"\n'
    )
    files_before = DeltaTable.forPath(spark, cfg.paths.table("enriched_events")).detail().first()["numFiles"]
    assert files_before >= 3

    home = tmp_path / "airflow"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "STREAMREC_CONFIG": str(config),
    }
    subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    run = subprocess.run(
        [str(AIRFLOW), "dags", "test", "streamrec_maintenance"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]
    assert "state=success" in run.stdout + run.stderr

    recommendations = read(spark, cfg, "recommendations")
    assert recommendations.select("user_id").distinct().count() == read(spark, cfg, "user_profiles").count()
    assert DeltaTable.forPath(spark, cfg.paths.table("enriched_events")).detail().first()["numFiles"] < files_before
    assert "OPTIMIZE" in operations(spark, cfg, "enriched_events")
    assert "VACUUM END" in operations(spark, cfg, "live_sessions")
    assert spark.table("streamrec.recommendations").count() == recommendations.count()

    # The check the DAG passed fails once a streamed profile disagrees with the events.
    assert check_profiles(spark, cfg).ok
    DeltaTable.forPath(spark, cfg.paths.table("user_profiles")).update(
        F.col("user_id") == F.lit(read(spark, cfg, "user_profiles").first()["user_id"]),
        {"num_events": F.col("num_events") + 1},
    )
    broken = check_profiles(spark, cfg)
    assert not broken.ok and broken.missing == 1 and broken.unexpected == 1
