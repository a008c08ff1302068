"""The events query (``stream.separate_events_query`` with files): it alone writes
``enriched_events`` and ``quarantine``, the main query the rest, and what is computed from the
events again (a profile rebuild, the verifier) takes only the files the main query has read."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import date
from pathlib import Path

from delta.tables import DeltaTable
from pyspark.sql import functions as F

from lib.core.config import EVENTS_CHECKPOINT, STREAM_CHECKPOINT
from lib.core.schemas import ENRICHED_EVENTS, LIVE_SESSIONS, QUARANTINE, SESSION_FEATURES, USER_PROFILES
from lib.ingest.sources import with_line_source
from lib.lake.batch import stream_events
from lib.lake.checkpoint import batches_committed
from lib.lake.verify import check_profiles, read_manifest, verify
from lib.stream.events import EventsBatchWriter
from lib.stream.query import run_available_now, start_stream
from tests.helpers import activity_writer, make_config, read, write_manifest, write_purchases


def query_marker(cfg, checkpoint: str) -> str:
    metadata = json.loads(Path(cfg.paths.checkpoint(checkpoint), "metadata").read_text())
    return f"streamrec-{metadata['id']}"


def writers_of(spark, cfg, table: str) -> set[str]:
    history = DeltaTable.forPath(spark, cfg.paths.table(table)).history().select("userMetadata").collect()
    return {row[0].rsplit(":", 1)[0] for row in history if row[0]}


def test_each_query_writes_its_own_tables_and_rebuilds_take_only_what_the_main_query_read(spark, tmp_path):
    cfg = make_config(tmp_path, "stream.separate_events_query=true", "stream.max_files_per_trigger=1")
    assert cfg.has_events_query
    write_purchases(cfg.paths.purchases, [(1, 1, 10.0, date(2023, 6, 1)), (2, 3, 4.0, date(2023, 6, 2))])
    writer = activity_writer(cfg, users=8, items=20, bad_share=0.05)
    for _ in range(2):
        writer.write_file(150)
    run_available_now(spark, cfg)

    events, main = query_marker(cfg, EVENTS_CHECKPOINT), query_marker(cfg, STREAM_CHECKPOINT)
    assert writers_of(spark, cfg, ENRICHED_EVENTS) == writers_of(spark, cfg, QUARANTINE) == {events}
    for table in (SESSION_FEATURES, LIVE_SESSIONS, USER_PROFILES):
        assert writers_of(spark, cfg, table) <= {main}
    checks = verify(spark, cfg, read_manifest(spark, write_manifest(writer.manifest, tmp_path / "manifest.json")))
    assert all(check.ok for check in checks), checks
    assert check_profiles(spark, cfg).ok

    # The events query ahead of the main query: a third file's events are in enriched_events,
    # and the main query has not read it (its profiles do not count them yet).
    third = writer.write_file(150)
    batch = with_line_source(spark.read.text(str(third)))
    EventsBatchWriter(spark, cfg, app_id="events-ahead")(batch, 0)
    enriched = read(spark, cfg, ENRICHED_EVENTS)
    of_third = F.col("source_file").endswith(third.name)
    ahead = enriched.where(of_third).count()
    assert ahead > 0
    assert stream_events(spark, cfg, enriched).count() == enriched.count() - ahead
    assert check_profiles(spark, cfg).ok


def test_a_stop_request_ends_both_queries_between_batches(spark, tmp_path):
    cfg = make_config(tmp_path, "stream.separate_events_query=true")
    write_purchases(cfg.paths.purchases, [(1, 1, 10.0, date(2023, 6, 1))])
    writer = activity_writer(cfg, users=8, items=20)
    first = writer.write_file(100)
    handle = start_stream(spark, cfg)
    try:
        checkpoints = [cfg.paths.checkpoint(name) for name in (EVENTS_CHECKPOINT, STREAM_CHECKPOINT)]
        deadline = time.monotonic() + 600
        while min(batches_committed(c) for c in checkpoints) < 1 and time.monotonic() < deadline:
            assert not handle.wait(1)  # raises if either query failed
        writer.write_file(100)  # lands while the queries run: read by one of them, or both, or neither
        handle.request_stop()
        assert handle.wait(120)
        assert not handle.query.isActive and not handle.events_query.isActive
    finally:
        handle.close()
    # Every file the events query read is in enriched_events whole, once.
    expected = Counter(row.file for row in writer.manifest if row.expected_reason is None)
    written = Counter(Path(row.source_file).name for row in read(spark, cfg, ENRICHED_EVENTS).collect())
    assert first.name in written
    assert all(written[name] == expected[name] for name in written), (written, expected)
