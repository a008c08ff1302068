"""Restarts from the checkpoints, purchases that arrive later, rejected files, and a batch
replayed after a crash between two of its writes."""

from __future__ import annotations

import os
from collections import Counter
from datetime import date

import pytest
from pyspark.sql import functions as F

from lib.ingest.sources import with_line_source
from lib.lake.batch import profiles_from_lake
from lib.serve.online_store import SQLiteStore
from lib.stream.live_batch import InjectedFault, LiveBatchWriter
from lib.stream.query import ensure_tables, run_available_now
from lib.stream.slow import SlowCadence
from tests.helpers import (
    active_files,
    activity_writer,
    assert_same_profiles,
    make_config,
    parquet_files,
    read,
    store_docs,
    write_lines,
    write_purchases,
)

TABLES = ["enriched_events", "session_features", "live_sessions", "quarantine", "stream_metrics", "user_profiles"]


def table_versions(spark, cfg):
    return {
        t: spark.sql(f"DESCRIBE HISTORY delta.`{cfg.paths.table(t)}`").agg(F.max("version")).first()[0] for t in TABLES
    }


def enriched_keys(spark, cfg):
    rows = read(spark, cfg, "enriched_events").collect()
    return Counter(
        (r.user_id, r.item_id, r.event_type, r.event_ts.strftime("%Y-%m-%d %H:%M:%S"), os.path.basename(r.source_file))
        for r in rows
    )


def manifest_keys(manifest):
    return Counter(
        (r.user_id, r.item_id, r.event_type, r.event_ts, r.file) for r in manifest if r.expected_reason is None
    )


def test_restarts_add_nothing_and_pick_up_new_files_and_purchases(spark, tmp_path):
    cfg = make_config(tmp_path)
    write_purchases(cfg.paths.purchases, [(1, 1, 10.0, date(2023, 6, 1))])
    writer = activity_writer(cfg, users=8, items=20)
    writer.write_file(150)
    run_available_now(spark, cfg)
    assert enriched_keys(spark, cfg) == manifest_keys(writer.manifest)
    versions_after_first = table_versions(spark, cfg)

    # A restart with nothing new commits nothing.
    run_available_now(spark, cfg)
    assert table_versions(spark, cfg) == versions_after_first

    # Purchases added while the stream is down are used by the next run; a file missing a
    # column is quarantined whole; the good file after it is processed; odd encodings too.
    write_purchases(
        cfg.paths.purchases, [(u, 2, 100.0, date(2023, 12, 31)) for u in range(1, 9)], name="part-00001.parquet"
    )
    write_lines(cfg, "no_event_type.csv", ["user_id,item_id,timestamp", "1,2,2024-01-01 00:00:00"])
    writer.write_file(150)
    crlf = "user_id,item_id,event_type,timestamp\r\n1,5,view,2024-01-02 00:00:00\r\n"
    (tmp_path / "incoming" / "crlf.csv").write_bytes(crlf.encode())
    (tmp_path / "incoming" / "latin1.csv").write_bytes(
        "user_id,item_id,event_type,timestamp,note\n2,6,view,2024-01-02 00:00:00,caf\xe9\n".encode("latin-1")
    )
    (tmp_path / "incoming" / "empty.csv").write_bytes(b"")
    # Two batches, not five; the run's slow pass vacuums the tables with a retention of ~0.
    run_available_now(
        spark, make_config(tmp_path, "stream.max_files_per_trigger=3", "lake.vacuum_every=1", "lake.retention=1 ms")
    )
    profiles = cfg.paths.table("user_profiles")  # rewritten by a MERGE in every slow pass
    assert parquet_files(profiles) == active_files(spark, profiles)

    expected = manifest_keys(writer.manifest)
    expected[(1, 5, "view", "2024-01-02 00:00:00", "crlf.csv")] += 1
    assert enriched_keys(spark, cfg) == expected

    quarantine = {os.path.basename(r.source_file): r for r in read(spark, cfg, "quarantine").collect()}
    assert set(quarantine) == {"no_event_type.csv", "latin1.csv"}
    assert quarantine["no_event_type.csv"].reason == "missing_columns: event_type"
    assert quarantine["no_event_type.csv"].raw == "user_id,item_id,timestamp"
    assert quarantine["no_event_type.csv"].rejected_lines == 1
    assert quarantine["latin1.csv"].reason == "invalid_utf8"

    second_file = writer.manifest[-1].file
    late = read(spark, cfg, "enriched_events").where(F.col("source_file").endswith(second_file)).collect()
    assert late and all(r.past_purchases >= 1 and r.avg_purchase_amount is not None for r in late)
    first = read(spark, cfg, "enriched_events").where(F.col("source_file").endswith("activity-000001.csv")).collect()
    assert all(r.past_purchases == (1 if r.user_id == 1 else 0) for r in first)


def test_batch_replayed_after_crashes_commits_each_write_once(spark, tmp_path):
    """A crash between the store's transaction and the Delta appends, then a crash after the
    appends, then two full replays and two slow passes: every write is applied exactly once."""
    cfg = make_config(tmp_path)
    write_purchases(cfg.paths.purchases, [(1, 1, 10.0, date(2023, 6, 1))])
    writer = activity_writer(cfg, users=6, items=20, bad_share=0.05)
    writer.write_file(200)
    ensure_tables(spark, cfg)
    batch = with_line_source(spark.read.text(cfg.paths.events_dir))
    initial = table_versions(spark, cfg)

    def batch_writer(**options) -> LiveBatchWriter:
        return LiveBatchWriter(spark, cfg, app_id="replay-test", **options)

    with pytest.raises(InjectedFault):
        batch_writer(fail_after="store")(batch, 0)
    assert table_versions(spark, cfg) == initial  # the store has the batch, no table has it yet
    served = SQLiteStore(cfg.paths.online_store, readonly=True)
    assert served.session(writer.manifest[-1].user_id) is not None
    with pytest.raises(InjectedFault):
        batch_writer(fail_after="enriched")(batch, 0)
    after_second_crash = table_versions(spark, cfg)
    assert after_second_crash["enriched_events"] == initial["enriched_events"] + 1
    assert after_second_crash["quarantine"] == initial["quarantine"] + 1
    batch_writer()(batch, 0)
    batch_writer()(batch, 0)
    assert table_versions(spark, cfg) == after_second_crash  # neither append was applied twice
    replayed = batch_writer()
    slow = SlowCadence(spark, cfg, replayed.state, replayed.app_id)
    assert slow.fold() == 0
    after_fold = table_versions(spark, cfg)
    assert after_fold["live_sessions"] == initial["live_sessions"] + 1
    assert after_fold["user_profiles"] == initial["user_profiles"] + 1
    assert slow.fold() == 0
    assert table_versions(spark, cfg) == after_fold  # a second pass folds nothing again

    assert enriched_keys(spark, cfg) == manifest_keys(writer.manifest)
    assert read(spark, cfg, "quarantine").count() == sum(1 for r in writer.manifest if r.expected_reason)
    live = read(spark, cfg, "live_sessions")
    assert (
        live.count()
        == live.select("user_id").distinct().count()
        == len({r.user_id for r in writer.manifest if r.user_id})
    )
    # The profiles were folded once: the table equals a rebuild from scratch.
    assert_same_profiles(read(spark, cfg, "user_profiles"), profiles_from_lake(spark, cfg))
    # The online store agrees with the tables (the replays changed nothing there).
    store = SQLiteStore(cfg.paths.online_store, readonly=True)
    for row in live.collect():
        served = store.session(row.user_id)
        assert (served["session_id"], served["num_events"], served["is_open"]) == (
            row.session_id,
            row.num_events,
            row.is_open,
        )
    for row in read(spark, cfg, "user_profiles").collect():
        assert store.profile(row.user_id)["num_events"] == row.num_events


def test_a_lost_online_store_is_rebuilt_from_the_lake_before_the_next_batch(spark, tmp_path):
    """The store deleted between two runs: the next run rebuilds the open sessions from
    enriched_events, and ends with the store a run that never lost it has."""
    lost, kept = make_config(tmp_path / "lost"), make_config(tmp_path / "kept")
    writers = [activity_writer(cfg, users=8, items=20) for cfg in (lost, kept)]
    for writer in writers:
        writer.write_file(150)
    run_available_now(spark, lost)
    run_available_now(spark, kept)
    os.remove(lost.paths.online_store)
    for writer in writers:
        writer.write_file(150)
    run_available_now(spark, lost)
    run_available_now(spark, kept)
    users = {r.user_id for r in writers[0].manifest if r.user_id}
    assert store_docs(lost, users) == store_docs(kept, users)
    assert read(spark, lost, "enriched_events").count() == read(spark, kept, "enriched_events").count() == 300
