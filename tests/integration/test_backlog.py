"""A backlog read in several micro-batches of one availableNow run: the batches that know more
files wait leave the live tables to the last one, which ends them as a run that updates them
every batch does; a crash while folding the left updates is replayed exactly once."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time
from datetime import date
from pathlib import Path

import pytest

from bench.chaos import descendants
from lib.ingest.backlog import FileBacklog
from lib.ingest.sources import with_line_source
from lib.lake.verify import check_profiles, compare_lakes, read_manifest, verify
from lib.serve.online_store import SQLiteStore
from lib.stream.query import (
    PENDING_UPDATES_DIR,
    STREAM_CHECKPOINT,
    InjectedFault,
    SessionBatchWriter,
    ensure_tables,
    run_available_now,
)
from tests.helpers import (
    activity_writer,
    assert_ends_as_every_batch,
    assert_same_profiles,
    make_config,
    read,
    running,
    start_stream_job,
    store_docs,
    wait_for_batches,
    write_config_file,
    write_manifest,
    write_purchases,
)

PURCHASES = [(1, 1, 10.0, date(2023, 6, 1)), (2, 5, 20.0, date(2023, 6, 2))]


def pending_batches(cfg) -> list[str]:
    root = Path(cfg.paths.checkpoint(PENDING_UPDATES_DIR))
    return sorted(p.name for p in root.glob("*/batch=*")) if root.exists() else []


def test_a_backlog_read_in_several_batches_ends_as_with_updates_every_batch(spark, tmp_path):
    deferring = make_config(tmp_path / "deferring", "stream.max_files_per_trigger=1")
    every_batch = make_config(
        tmp_path / "every_batch", "stream.max_files_per_trigger=1", "stream.defer_live_in_backlog=false"
    )
    writer = activity_writer(deferring, users=12, items=30, bad_share=0.02)
    for _ in range(4):
        writer.write_file(250)
    os.makedirs(every_batch.paths.events_dir, exist_ok=True)
    for name in os.listdir(deferring.paths.events_dir):  # the same files, the same modification times
        shutil.copy2(os.path.join(deferring.paths.events_dir, name), every_batch.paths.events_dir)
    for cfg in (deferring, every_batch):
        write_purchases(cfg.paths.purchases, PURCHASES)

    deferred_stats = run_available_now(spark, deferring)
    every_stats = run_available_now(spark, every_batch)

    waiting = {b: r.input_waiting for b, r in deferred_stats.reports.items()}
    assert waiting == {0: 3, 1: 2, 2: 1, 3: 0}
    assert all("pending_updates" in deferred_stats.reports[b].stage_s for b in (0, 1, 2))
    assert "user_profiles" in deferred_stats.reports[3].stage_s
    assert all("user_profiles" in r.stage_s for r in every_stats.reports.values())
    assert pending_batches(deferring) == []  # folded, then deleted

    assert_ends_as_every_batch(spark, deferring, every_batch, users=12)


def test_kill_9_amid_a_backlog_then_a_new_run_ends_as_a_clean_run(spark, tmp_path):
    cfg = make_config(tmp_path / "killed", "stream.max_files_per_trigger=1")
    write_purchases(cfg.paths.purchases, PURCHASES)
    writer = activity_writer(cfg, users=15, items=30, bad_share=0.02)
    for _ in range(6):
        writer.write_file(200)
    toml = write_config_file(cfg, tmp_path / "pipeline.toml", "[stream]\nmax_files_per_trigger = 1\n")
    log = tmp_path / "stream.log"
    job = start_stream_job(toml, log, "--available-now")
    try:
        wait_for_batches(cfg, job, 1, log)  # batches 0 and 1 left their live updates
        time.sleep(random.Random(5).uniform(0, 4))
        assert job.poll() is None  # the run had batches to go
    finally:
        processes = [job.pid, *descendants(job.pid)]
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
        deadline = time.monotonic() + 30
        while running(processes) and time.monotonic() < deadline:
            time.sleep(0.2)
    assert not running(processes)  # nothing holds the checkpoint's lock
    assert "6 file(s) wait to be read in this run" in log.read_text()

    run_available_now(spark, cfg)
    assert pending_batches(cfg) == []
    checks = verify(spark, cfg, read_manifest(spark, write_manifest(writer.manifest, tmp_path / "manifest.jsonl")))
    assert all(c.ok for c in checks), checks
    assert check_profiles(spark, cfg).ok
    clean = make_config(
        tmp_path / "clean",
        f"paths.events_dir={cfg.paths.events_dir}",
        f"paths.purchases={cfg.paths.purchases}",
        "stream.max_files_per_trigger=1",
        "stream.defer_live_in_backlog=false",
    )
    run_available_now(spark, clean)
    for check in compare_lakes(spark, cfg, clean.paths.lake):
        assert check.ok, check
    assert_same_profiles(read(spark, cfg, "user_profiles"), read(spark, clean, "user_profiles"))
    users = {r.user_id for r in read(spark, cfg, "user_profiles").collect()}
    assert store_docs(cfg, users) == store_docs(clean, users)


def log_source_files(checkpoint: Path, batch_id: int, files: list[Path]) -> None:
    """The file source's log entry of a batch, as Spark writes it before the batch runs."""
    folder = checkpoint / "sources" / "0"
    folder.mkdir(parents=True, exist_ok=True)
    entries = [
        json.dumps({"path": f.as_uri(), "timestamp": int(f.stat().st_mtime * 1000), "batchId": batch_id}) for f in files
    ]
    (folder / str(batch_id)).write_text("\n".join(["v1", *entries]) + "\n")


def test_a_crash_while_folding_left_updates_commits_each_of_them_once(spark, tmp_path):
    cfg = make_config(tmp_path)
    write_purchases(cfg.paths.purchases, PURCHASES)
    writer = activity_writer(cfg, users=8, items=20)
    first, second = writer.write_file(200), writer.write_file(200)
    ensure_tables(spark, cfg)
    checkpoint = Path(cfg.paths.checkpoint(STREAM_CHECKPOINT))

    def batch_of(path: Path):
        return with_line_source(spark.read.text(str(path)))

    def batch_writer(**options) -> SessionBatchWriter:
        backlog = FileBacklog(spark, cfg.paths.events_dir, str(checkpoint))
        return SessionBatchWriter(spark, cfg, app_id="backlog-test", backlog=backlog, **options)

    log_source_files(checkpoint, 0, [first])
    batch_writer()(batch_of(first), 0)  # the second file waits: the live tables wait too
    assert read(spark, cfg, "enriched_events").count() > 0
    assert read(spark, cfg, "live_sessions").count() == 0 and read(spark, cfg, "user_profiles").count() == 0
    assert pending_batches(cfg) == ["batch=0"]

    log_source_files(checkpoint, 1, [second])
    with pytest.raises(InjectedFault):
        batch_writer(fail_after="user_profiles")(batch_of(second), 1)  # folds batches 0 and 1, then dies
    assert pending_batches(cfg) == ["batch=0"]  # kept until the fold completes
    batch_writer()(batch_of(second), 1)  # the replay
    assert pending_batches(cfg) == []

    # Both batches folded once: the profiles equal a rebuild from the lake; every user has one
    # live session, which the online store serves.
    assert check_profiles(spark, cfg).ok
    live = read(spark, cfg, "live_sessions")
    users = {r.user_id for r in writer.manifest if r.user_id}
    assert live.count() == live.select("user_id").distinct().count() == len(users)
    store = SQLiteStore(cfg.paths.online_store, readonly=True)
    for row in live.collect():
        assert store.session(row.user_id)["num_events"] == row.num_events
    for row in read(spark, cfg, "user_profiles").collect():
        assert store.profile(row.user_id)["num_events"] == row.num_events

    # And the tables equal those of a run without a crash that updates them every batch.
    clean = make_config(tmp_path / "clean", "stream.max_files_per_trigger=1", "stream.defer_live_in_backlog=false")
    os.makedirs(clean.paths.events_dir)
    for path in (first, second):
        shutil.copy2(path, clean.paths.events_dir)
    write_purchases(clean.paths.purchases, PURCHASES)
    run_available_now(spark, clean)
    for check in compare_lakes(spark, cfg, clean.paths.lake):
        assert check.ok, check
    assert_same_profiles(read(spark, cfg, "user_profiles"), read(spark, clean, "user_profiles"))
