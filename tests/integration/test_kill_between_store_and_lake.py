"""The real job killed (kill -9 of its driver) between the online store's transaction and the
Delta appends of a micro-batch, restarted, then stopped by a SIGTERM to its whole process group:
the store, the tables and the API agree, nothing lost, nothing twice, and the stop is quiet."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from lib.lake.verify import read_manifest, verify
from lib.serve.live_state import LiveState
from lib.stream.live_batch import KILL_AFTER_ENV
from lib.stream.query import run_available_now
from tests.helpers import (
    ApiServer,
    activity_writer,
    batches_committed,
    generated_purchases,
    make_config,
    read,
    start_stream_job,
    wait_for_batches,
    write_config_file,
    write_manifest,
    write_purchases,
)


def _markers(table: str) -> list[str]:
    """The commit markers (``<stream>:<batch>``) of a Delta table, oldest first."""
    found = []
    for commit in sorted(Path(table, "_delta_log").glob("*.json")):
        for line in commit.read_text().splitlines():
            info = json.loads(line).get("commitInfo")
            if info and info.get("userMetadata"):
                found.append(info["userMetadata"])
    return found


def test_a_kill_between_the_store_and_the_appends_then_a_group_sigterm(spark, tmp_path):
    cfg = make_config(tmp_path)
    write_purchases(cfg.paths.purchases, generated_purchases(users=30, items=40, count=80))
    writer = activity_writer(cfg, users=30, items=40, bad_share=0.03)
    for _ in range(3):
        writer.write_file(120)
    toml = write_config_file(cfg, tmp_path / "pipeline.toml", "[stream]\nmax_files_per_trigger = 1\n")
    log = tmp_path / "stream.log"

    job = start_stream_job(toml, log, env={KILL_AFTER_ENV: "store:1"})
    assert job.wait(timeout=900) != 0, log.read_text()[-3000:]
    assert "killing the driver after the store write of batch 1" in log.read_text()
    assert LiveState(cfg.paths.online_store).last_applied_batch() == 1  # the store has batch 1 ...
    assert max(int(m.rsplit(":", 1)[1]) for m in _markers(cfg.paths.table("enriched_events"))) == 0  # ... the lake not
    assert batches_committed(cfg) == 1

    job = start_stream_job(toml, log)
    wait_for_batches(cfg, job, 2, log)
    logged_before = len(log.read_text())
    os.killpg(job.pid, signal.SIGTERM)  # what systemd sends: the whole process group
    assert job.wait(timeout=600) == 0, log.read_text()[-3000:]
    this_run = log.read_text()[logged_before:]
    assert " ERROR " not in this_run and "Traceback" not in this_run, this_run[-3000:]

    run_available_now(spark, cfg)  # the rest, and every table complete
    manifest = read_manifest(spark, write_manifest(writer.manifest, tmp_path / "manifest.jsonl"))
    checks = verify(spark, cfg, manifest)
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    live = read(spark, cfg, "live_sessions").collect()
    assert live
    with ApiServer(cfg, tmp_path) as api:
        for row in live:
            status, served = api.get(f"/users/{row.user_id}/session")
            assert status == 200
            assert (served["session_id"], served["num_events"], served["is_open"]) == (
                row.session_id,
                row.num_events,
                row.is_open,
            )
