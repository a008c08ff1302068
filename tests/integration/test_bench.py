"""The benchmark's plumbing at a tiny scale (not its timings): the DuckDB baseline computes what
the stream computes, and the soak's observers read the lake and the checkpoints correctly."""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import functions as F

from bench.benchmark import active_files, batch_figures, duckdb_pipeline, state_rows
from lib.lake.checkpoint import has_processed
from lib.stream.query import run_available_now
from tests.helpers import activity_writer, generated_purchases, make_config, read, write_purchases


def test_duckdb_baseline_and_observers_agree_with_the_stream(spark, tmp_path):
    cfg = make_config(tmp_path, "stream.max_files_per_trigger=1", "stream.compact_every=1")
    write_purchases(cfg.paths.purchases, generated_purchases(users=25, items=30, count=80))
    writer = activity_writer(cfg, users=25, items=30)
    for _ in range(2):
        writer.write_file(150)
    run_available_now(spark, cfg)

    counts = duckdb_pipeline(Path(cfg.paths.events_dir), Path(cfg.paths.purchases), tmp_path / "duckdb")
    enriched = read(spark, cfg, "enriched_events")
    assert counts["events"] == enriched.count() == 300

    # Point-in-time features row by row, and every session the stream closed, equal in DuckDB (a
    # mean of several amounts to 9 decimals: the engines add them up in different orders).
    columns = ["user_id", "item_id", "event_type", "event_ts", "past_purchases", F.round("avg_purchase_amount", 9)]
    duck_enriched = spark.read.parquet(str(tmp_path / "duckdb" / "enriched_events.parquet")).select(*columns)
    assert duck_enriched.exceptAll(enriched.select(*columns)).count() == 0
    # (last_event is left out: DuckDB breaks a same-second tie arbitrarily, the stream by line.)
    closed = read(spark, cfg, "session_features").drop("avg_time_gap_s", "avg_purchase_amount", "last_event")
    duck_sessions = spark.read.parquet(str(tmp_path / "duckdb" / "session_features.parquet")).select(*closed.columns)
    assert closed.count() > 0
    assert closed.exceptAll(duck_sessions).count() == 0
    assert counts["sessions"] == closed.count() + read(spark, cfg, "live_sessions").where("is_open").count()

    for table in ("enriched_events", "live_sessions", "stream_metrics"):
        detail = spark.sql(f"DESCRIBE DETAIL delta.`{cfg.paths.table(table)}`").first()
        assert active_files(Path(cfg.paths.table(table))) == detail.numFiles, table
    history = spark.sql(f"DESCRIBE HISTORY delta.`{cfg.paths.table('enriched_events')}`")
    assert history.where(F.col("operation") == "OPTIMIZE").count() == 1  # compacted: removes were replayed
    assert state_rows(Path(cfg.paths.online_store)) == read(spark, cfg, "live_sessions").where("is_open").count()

    # The drain check reads the checkpoint's logs; the batch figures come from stream_metrics.
    checkpoint = Path(cfg.paths.checkpoint("stream"))
    landed = sorted(Path(cfg.paths.events_dir).glob("*.csv"))
    assert len(landed) == 2 and has_processed(checkpoint, landed)
    assert not has_processed(checkpoint, [*landed, Path(cfg.paths.events_dir) / "not-yet.csv"])
    figures = batch_figures(read(spark, cfg, "stream_metrics").orderBy("batch_id").collect())
    assert figures["batches"] == 2 and figures["batch_s"] > 0
    assert {"parse", "fold", "store", "delta"} == set(figures["stages_s"])
    assert sum(figures["spark_jobs_per_batch"].values()) == sum(figures["delta_commits_per_batch"].values()) == 2
