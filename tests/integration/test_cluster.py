"""The same job on a real Spark standalone cluster (a master and two workers on 127.0.0.1),
submitted through ./spark-submit.sh --master spark://...: the proof that it scales out."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pyspark
import pytest

from lib.core.processes import free_port
from tests.helpers import activity_writer, generated_purchases, make_config, read, write_config_file, write_purchases

ROOT = Path(__file__).resolve().parents[2]
SPARK_HOME = Path(pyspark.__file__).parent


def master_state(ui_port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json", timeout=5) as response:
        return json.load(response)


@pytest.fixture
def standalone_cluster(tmp_path):
    env = {
        **os.environ,
        "SPARK_HOME": str(SPARK_HOME),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_WORKER_DIR": str(tmp_path / "work"),
    }
    port, ui_port = free_port(), free_port()
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    logs = open(tmp_path / "cluster.log", "w")
    processes = [
        subprocess.Popen(
            [
                spark_class,
                "org.apache.spark.deploy.master.Master",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--webui-port",
                str(ui_port),
            ],
            env=env,
            stdout=logs,
            stderr=subprocess.STDOUT,
        )
    ]
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                master_state(ui_port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"master did not start; see {tmp_path / 'cluster.log'}")
                time.sleep(1)
        for _ in range(2):
            processes.append(
                subprocess.Popen(
                    [
                        spark_class,
                        "org.apache.spark.deploy.worker.Worker",
                        "--host",
                        "127.0.0.1",
                        "--cores",
                        "1",
                        "--memory",
                        "1g",
                        "--webui-port",
                        str(free_port()),
                        f"spark://127.0.0.1:{port}",
                    ],
                    env=env,
                    stdout=logs,
                    stderr=subprocess.STDOUT,
                )
            )
        while master_state(ui_port).get("aliveworkers", 0) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers did not register; see {tmp_path / 'cluster.log'}")
            time.sleep(1)
        yield f"spark://127.0.0.1:{port}", ui_port
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        logs.close()


@pytest.mark.slow
def test_stream_job_runs_on_a_standalone_cluster(spark, tmp_path, standalone_cluster):
    master_url, ui_port = standalone_cluster
    cfg = make_config(tmp_path / "pipeline")
    write_purchases(cfg.paths.purchases, generated_purchases(users=20, items=40, count=100))
    writer = activity_writer(cfg, users=20, items=40, bad_share=0.02)
    for _ in range(2):
        writer.write_file(400)
    config_file = write_config_file(cfg, tmp_path / "pipeline.toml")
    result = subprocess.run(
        [
            str(ROOT / "spark-submit.sh"),
            "--master",
            master_url,
            "--conf",
            "spark.executor.memory=768m",
            "--conf",
            "spark.cores.max=2",
            "jobs/stream.py",
            "--config",
            str(config_file),
            "--available-now",
            "--set",
            "stream.max_files_per_trigger=10",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr  # spark-submit relays the Python driver's stderr on stdout
    assert result.returncode == 0, output[-4000:]
    assert "batch 0:" in output

    apps = master_state(ui_port)["completedapps"] + master_state(ui_port)["activeapps"]
    assert any(app["name"] == "streamrec-stream" for app in apps), apps

    valid = Counter(
        (r.user_id, r.item_id, r.event_type, r.event_ts) for r in writer.manifest if r.expected_reason is None
    )
    enriched = Counter(
        (r.user_id, r.item_id, r.event_type, r.event_ts.strftime("%Y-%m-%d %H:%M:%S"))
        for r in read(spark, cfg, "enriched_events").collect()
    )
    assert enriched == valid
    assert read(spark, cfg, "quarantine").count() == sum(1 for r in writer.manifest if r.expected_reason)
    assert read(spark, cfg, "session_features").count() > 0
    live = read(spark, cfg, "live_sessions")
    assert (
        live.count()
        == live.select("user_id").distinct().count()
        == len({r.user_id for r in writer.manifest if r.user_id})
    )
