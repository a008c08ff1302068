"""Late events: written to enriched_events, dropped from sessions, counted."""

from __future__ import annotations

from lib.stream.query import run_available_now
from tests.helpers import make_config, read, write_lines

HEADER = "user_id,item_id,event_type,timestamp"


def test_late_event_is_enriched_but_not_sessionized_and_is_counted(spark, tmp_path):
    cfg = make_config(tmp_path, "stream.compact_every=1")  # batches 1 and 2 compact the most fragmented tables
    write_lines(
        cfg,
        "f1.csv",
        [HEADER, "1,1,view,2024-01-01 10:00:00", "1,2,click,2024-01-01 10:05:00", "2,1,view,2024-01-01 10:00:00"],
    )
    # Watermark after this file: 12:00 - 10 min = 11:50; closes both 10:0x sessions.
    write_lines(cfg, "f2.csv", [HEADER, "2,3,view,2024-01-01 12:00:00"])
    # 10:20 is older than the watermark (late); 11:55 is not.
    write_lines(cfg, "f3.csv", [HEADER, "1,4,add_to_cart,2024-01-01 10:20:00", "3,5,view,2024-01-01 11:55:00"])
    stats = run_available_now(spark, cfg)

    assert read(spark, cfg, "enriched_events").count() == 6
    operations = (
        spark.sql(f"DESCRIBE HISTORY delta.`{cfg.paths.table('enriched_events')}`").select("operation").collect()
    )
    assert "OPTIMIZE" in {r.operation for r in operations}
    assert stats.late_rows_dropped_total == 1
    metrics = {r.batch_id: r for r in read(spark, cfg, "stream_metrics").collect()}
    assert [metrics[b].late_rows_dropped for b in sorted(metrics)] == [0, 0, 1]

    sessions = {(r.user_id, r.num_events, r.last_event) for r in read(spark, cfg, "session_features").collect()}
    assert sessions == {(1, 2, "click"), (2, 1, "view")}
    live = {r.user_id: r for r in read(spark, cfg, "live_sessions").collect()}
    assert (live[1].is_open, live[1].num_events, live[1].last_event) == (False, 2, "click")
    assert (live[2].is_open, live[2].num_events) == (True, 1)
    assert (live[3].is_open, live[3].num_events) == (True, 1)


def test_ten_percent_late_events_are_all_enriched_and_the_dropped_count_is_predicted(spark, tmp_path):
    """10% of events arrive up to twice the watermark delay late; the verifier replays the
    watermark rule over the stream's micro-batches and predicts exactly what was dropped."""
    from lib.lake.verify import read_manifest, verify
    from tests.helpers import activity_writer, write_manifest

    cfg = make_config(tmp_path)
    writer = activity_writer(cfg, users=150, items=30, out_of_order_share=0.10, max_out_of_order_s=1200.0)
    for _ in range(2):
        writer.write_file(200)
    stats = run_available_now(spark, cfg)
    manifest = read_manifest(spark, write_manifest(writer.manifest, tmp_path / "manifest.jsonl"))
    checks = {c.table: c for c in verify(spark, cfg, manifest)}
    assert all(c.ok for c in checks.values()), checks
    assert checks["enriched_events"].actual == 400
    assert checks["late_rows_dropped"].expected == stats.late_rows_dropped_total > 0
