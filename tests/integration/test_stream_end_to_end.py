"""The real stream (availableNow) over generated files, checked table by table against an
independent pandas reference computed from the generator's ground truth."""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from lib.core.schemas import (
    ENRICHED_EVENTS_SCHEMA,
    LIVE_SESSIONS_SCHEMA,
    QUARANTINE_SCHEMA,
    SESSION_FEATURES_SCHEMA,
    STREAM_TABLES,
)
from lib.lake.verify import multiset_diff, read_manifest, verify
from lib.stream.query import run_available_now
from lib.stream.slow import HOT_CHECKPOINT_INTERVAL, HOT_TABLES
from tests.helpers import (
    ApiServer,
    activity_writer,
    generated_purchases,
    make_config,
    read,
    write_manifest,
    write_purchases,
)
from tests.integration import reference

TIMESTAMPS = {f.name for f in LIVE_SESSIONS_SCHEMA.fields if f.dataType.simpleString() == "timestamp"}
GAP_S = 1800
WATERMARK_S = 600


@pytest.fixture(scope="module")
def pipeline(spark, tmp_path_factory):
    """Four files (two per micro-batch) with 3% malformed rows, run through the stream once."""
    cfg = make_config(tmp_path_factory.mktemp("e2e"), "stream.max_files_per_trigger=2", "lake.checkpoint_interval=2")
    purchases = generated_purchases(users=30, items=60, count=200)
    write_purchases(cfg.paths.purchases, purchases)
    writer = activity_writer(cfg, bad_share=0.03)
    for _ in range(4):
        writer.write_file(300)
    stats = run_available_now(spark, cfg)
    purchases_pd = pd.DataFrame(purchases, columns=["user_id", "item_id", "purchase_amount", "purchase_date"])
    return cfg, writer.manifest, purchases_pd, stats


def schema_of(df):
    return [(f.name, f.dataType.simpleString()) for f in df.schema.fields]


def contract(schema):
    return [(f.name, f.dataType.simpleString()) for f in schema.fields]


def test_tables_have_the_contract_columns(spark, pipeline):
    cfg = pipeline[0]
    assert schema_of(read(spark, cfg, "enriched_events")) == contract(ENRICHED_EVENTS_SCHEMA)
    assert schema_of(read(spark, cfg, "session_features")) == contract(SESSION_FEATURES_SCHEMA)
    assert schema_of(read(spark, cfg, "live_sessions")) == contract(LIVE_SESSIONS_SCHEMA)
    assert schema_of(read(spark, cfg, "quarantine"))[:4] == [
        ("source_file", "string"),
        ("raw", "string"),
        ("reason", "string"),
        ("ingested_at", "timestamp"),
    ]
    assert contract(QUARANTINE_SCHEMA)[:4] == schema_of(read(spark, cfg, "quarantine"))[:4]


def test_the_streams_tables_checkpoint_their_delta_log_every_configured_number_of_commits(spark, pipeline):
    cfg = pipeline[0]

    def properties(name):
        return spark.sql(f"DESCRIBE DETAIL delta.`{cfg.paths.table(name)}`").first().properties

    # The tables every micro-batch appends to never checkpoint on a commit: the slow pass does.
    assert {name: properties(name).get("delta.checkpointInterval") for name in STREAM_TABLES} == {
        name: str(HOT_CHECKPOINT_INTERVAL) if name in HOT_TABLES else "2" for name in STREAM_TABLES
    }
    assert "delta.checkpointInterval" not in properties("recommendations")  # the training job's table
    # Created (version 0), then one append a micro-batch; the run's slow pass checkpoints version 2.
    log_dir = Path(cfg.paths.table("enriched_events")) / "_delta_log"
    assert [p.name for p in log_dir.glob("*.checkpoint.parquet")] == ["00000000000000000002.checkpoint.parquet"]


def test_every_valid_row_is_enriched_exactly_once_with_point_in_time_features(spark, pipeline):
    cfg, manifest, purchases, _ = pipeline
    expected = reference.valid_events(manifest)
    expected = expected.join(reference.purchase_features(expected, expected["event_ts"], purchases))
    actual = read(spark, cfg, "enriched_events").toPandas()
    assert len(actual) == len(expected) > 1000

    def keyed(df, file_col):
        return Counter(
            (
                r.user_id,
                r.item_id,
                r.event_type,
                pd.Timestamp(r.event_ts),
                os.path.basename(getattr(r, file_col)),
                int(r.past_purchases),
                None
                if r.avg_purchase_amount is None
                or (isinstance(r.avg_purchase_amount, float) and math.isnan(r.avg_purchase_amount))
                else round(r.avg_purchase_amount, 6),
            )
            for r in df.itertuples()
        )

    assert keyed(actual, "source_file") == keyed(expected, "file")
    assert actual.ingested_at.notna().all()


def test_every_invalid_row_is_quarantined_with_its_reason(spark, pipeline):
    cfg, manifest, _, _ = pipeline
    expected = Counter((r.file, r.raw, r.expected_reason) for r in manifest if r.expected_reason)
    rows = read(spark, cfg, "quarantine").collect()
    actual = Counter((os.path.basename(r.source_file), r.raw, r.reason.split(":")[0]) for r in rows)
    assert sum(expected.values()) > 10
    assert actual == expected


def _comparable(df: pd.DataFrame) -> list[tuple]:
    cols = [
        "user_id",
        "session_start",
        "session_end",
        "num_events",
        "num_views",
        "num_clicks",
        "num_add_to_cart",
        "session_length_s",
        "avg_time_gap_s",
        "last_event",
    ]
    out = []
    for r in df[cols].itertuples(index=False):
        gap = None if r.avg_time_gap_s is None or pd.isna(r.avg_time_gap_s) else round(float(r.avg_time_gap_s), 6)
        out.append(
            (
                int(r.user_id),
                pd.Timestamp(r.session_start),
                pd.Timestamp(r.session_end),
                int(r.num_events),
                int(r.num_views),
                int(r.num_clicks),
                int(r.num_add_to_cart),
                round(float(r.session_length_s), 6),
                gap,
                r.last_event,
            )
        )
    return sorted(out)


def closed_mask(sessions: pd.DataFrame, events: pd.DataFrame) -> pd.Series:
    watermark = events.event_ts.max() - pd.Timedelta(seconds=WATERMARK_S)
    return sessions.session_end + pd.Timedelta(seconds=GAP_S) < watermark


def test_closed_sessions_equal_a_batch_recomputation(spark, pipeline):
    cfg, manifest, purchases, stats = pipeline
    events = reference.valid_events(manifest)
    expected = reference.sessions(events, GAP_S)
    expected = expected[closed_mask(expected, events)]
    actual = read(spark, cfg, "session_features").toPandas()
    assert len(expected) > 20
    assert _comparable(actual) == _comparable(expected)
    assert actual.session_id.is_unique
    features = reference.purchase_features(expected, expected["session_start"], purchases)
    expected_features = sorted(zip(expected.user_id, expected.session_start, features.past_purchases))
    assert (
        sorted(zip(actual.user_id, actual.session_start.map(pd.Timestamp), actual.past_purchases)) == expected_features
    )
    assert stats.late_rows_dropped_total == 0


def test_live_sessions_hold_each_users_latest_session(spark, pipeline):
    cfg, manifest, _, _ = pipeline
    events = reference.valid_events(manifest)
    sessions = reference.sessions(events, GAP_S)
    sessions["is_open"] = ~closed_mask(sessions, events)
    latest = sessions.sort_values("session_start").groupby("user_id").tail(1)
    actual = read(spark, cfg, "live_sessions").toPandas()
    assert actual.user_id.is_unique
    assert len(actual) == events.user_id.nunique()
    assert _comparable(actual) == _comparable(latest)
    assert dict(zip(actual.user_id, actual.is_open)) == dict(zip(latest.user_id, latest.is_open))
    assert actual.is_open.any()


def test_stream_metrics_account_for_every_line(spark, pipeline):
    cfg, manifest, _, _ = pipeline
    metrics = read(spark, cfg, "stream_metrics").toPandas()
    assert sorted(metrics.batch_id) == [0, 1]
    assert metrics.input_lines.sum() == len(manifest)
    assert metrics.quarantined_rows.sum() == sum(1 for r in manifest if r.expected_reason)
    assert metrics.watermark.notna().all()
    # Each batch's stages, timed, each within the batch's time.
    for stages, duration in zip(metrics.stage_s, metrics.duration_s):
        assert set(stages) == {"parse", "fold", "store", "delta"}
        assert all(0 <= seconds <= duration for seconds in stages.values())
    # One commit to enriched_events, one to quarantine when the batch has bad rows; a Spark job
    # reads the batch and one writes each commit (the first batch also loads the model).
    assert (metrics.delta_commits == 1 + (metrics.quarantined_rows > 0)).all()
    assert (metrics.spark_jobs >= 1 + metrics.delta_commits).all()


def test_verifier_agrees_and_catches_a_planted_duplicate_and_loss(spark, pipeline, tmp_path):
    cfg, manifest, _, _ = pipeline
    path = write_manifest(manifest, tmp_path / "manifest.jsonl")
    checks = verify(spark, cfg, read_manifest(spark, path))
    assert [(c.table, c.ok) for c in checks] == [
        ("enriched_events", True),
        ("quarantine", True),
        ("session_features", True),
        ("late_rows_dropped", True),
    ]
    assert checks[0].expected == checks[0].actual == sum(1 for r in manifest if r.expected_reason is None)

    expected = read(spark, cfg, "enriched_events").select("user_id", "item_id", "event_type", "event_ts")
    planted = expected.unionByName(expected.limit(1))
    assert multiset_diff("t", expected, planted).duplicated == 1
    lost = expected.exceptAll(expected.limit(1))
    assert multiset_diff("t", expected, lost).missing == 1


def iso(value) -> str | None:
    return None if value is None else pd.Timestamp(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_api_serves_every_users_live_session_and_profile_as_the_tables_hold_them(spark, pipeline, tmp_path):
    cfg, _, _, _ = pipeline
    sessions = read(spark, cfg, "live_sessions").collect()
    profiles = {r.user_id: r for r in read(spark, cfg, "user_profiles").collect()}
    with ApiServer(cfg, tmp_path) as api:
        for row in sessions:
            status, served = api.get(f"/users/{row.user_id}/session")
            assert status == 200
            expected = {k: iso(v) if k in TIMESTAMPS else v for k, v in row.asDict().items()}
            assert served == pytest.approx(expected), row.user_id
            status, profile = api.get(f"/users/{row.user_id}/profile")
            assert status == 200
            stored = profiles[row.user_id].asDict()
            assert profile["num_events"] == stored["num_events"] and profile["top_items"] == stored["top_items"]
            assert profile["last_seen"] == iso(stored["last_seen"])
        assert api.get("/users/987654/session")[0] == 404
        status, health = api.get("/health")
        assert status == 200 and health["last_batch_id"] == 1  # two micro-batches: 0 and 1
        status, popular = api.get("/users/987654/recommendations?k=3")  # no model yet: the most engaged items
        assert status == 200 and popular["source"] == "popular" and len(popular["items"]) == 3
