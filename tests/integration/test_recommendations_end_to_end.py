"""Profiles, the trained model, batch recommendations and live recommendations, from the real
stream over generated files: the stream runs, the model is trained, the stream runs again
and re-ranks with that model."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone

import pytest
from pyspark.sql import functions as F

from lib.core.schemas import LIVE_RECOMMENDATIONS_SCHEMA, RECOMMENDATIONS_SCHEMA, USER_PROFILES_SCHEMA
from lib.lake.batch import profiles_from_lake, train_and_publish
from lib.recommend.model_store import ModelStore
from lib.serve.online_store import SQLiteStore
from lib.stream.query import run_available_now
from tests.helpers import (
    ApiServer,
    activity_writer,
    assert_same_profiles,
    generated_purchases,
    make_config,
    read,
    write_purchases,
)

TOP_K = 5
LATER_FILES = ("activity-000003.csv", "activity-000004.csv", "activity-000005.csv")


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory):
    cfg = make_config(
        tmp_path_factory.mktemp("recs"),
        f"recommend.top_k={TOP_K}",
        "recommend.ease_lambda=20",
        "stream.max_files_per_trigger=2",
    )
    purchases = generated_purchases(users=40, items=60, count=150)
    write_purchases(cfg.paths.purchases, purchases)
    writer = activity_writer(cfg, users=40, items=60)
    writer.write_file(400)
    writer.write_file(400)
    run_available_now(spark, cfg)
    summary = train_and_publish(spark, cfg)
    # A backlog of two batches: their live re-ranking is deferred to its end.
    for _ in LATER_FILES:
        writer.write_file(100)
    run_available_now(spark, cfg)
    return cfg, writer.manifest, purchases, summary


def rows_by_user(df):
    grouped = defaultdict(list)
    for row in df.orderBy("user_id", "rank").collect():
        grouped[row.user_id].append(row)
    return grouped


def seen_items(manifest, purchases):
    seen = defaultdict(set)
    for row in manifest:
        if row.expected_reason is None:
            seen[row.user_id].add(row.item_id)
    for user, item, _amount, _date in purchases:
        seen[user].add(item)
    return seen


def test_profiles_kept_by_the_stream_equal_a_rebuild_from_scratch(spark, lake):
    cfg = lake[0]
    stream_profiles = read(spark, cfg, "user_profiles")
    assert [f.name for f in stream_profiles.schema] == USER_PROFILES_SCHEMA.fieldNames()
    assert_same_profiles(stream_profiles, profiles_from_lake(spark, cfg))
    users_in_input = {r.user_id for r in lake[1] if r.user_id} | {p[0] for p in lake[2]}
    assert {r.user_id for r in stream_profiles.select("user_id").collect()} == users_in_input
    total_events = stream_profiles.agg(F.sum("num_events")).first()[0]
    assert total_events == read(spark, cfg, "enriched_events").count()


def test_recommendations_have_top_k_unseen_items_for_every_known_user(spark, lake):
    cfg, manifest, purchases, summary = lake
    recs = read(spark, cfg, "recommendations")
    assert [(f.name, f.dataType) for f in recs.schema] == [(f.name, f.dataType) for f in RECOMMENDATIONS_SCHEMA]
    by_user = rows_by_user(recs)
    # Only the first two files were in the lake when the model was trained.
    trained_on = seen_items(
        [r for r in manifest if r.file in ("activity-000001.csv", "activity-000002.csv")], purchases
    )
    assert set(by_user) == set(trained_on)
    for user, rows in by_user.items():
        assert [r.rank for r in rows] == list(range(1, TOP_K + 1))
        assert not {r.item_id for r in rows} & trained_on[user]
        assert [r.score for r in rows] == sorted((r.score for r in rows), reverse=True)
        assert {r.model_version for r in rows} == {summary["version"]}
    assert summary["model"] == "ease"
    assert ModelStore.for_config(spark, cfg).latest_version() == summary["version"]


def test_the_model_keeps_the_past_sessions_of_the_lake_in_event_order(spark, lake):
    cfg, manifest, _, summary = lake
    events = defaultdict(list)
    for r in manifest:
        if r.expected_reason is None and r.file in ("activity-000001.csv", "activity-000002.csv"):
            events[r.user_id].append((datetime.fromisoformat(r.event_ts), r.item_id))
    expected = []
    for user_events in events.values():
        user_events.sort()
        session = [user_events[0]]
        for event in user_events[1:]:
            if (event[0] - session[-1][0]).total_seconds() > cfg.sessions.gap_seconds:
                expected.append(session)
                session = []
            session.append(event)
        expected.append(session)
    expected = sorted((max(ts for ts, _ in s), [item for _, item in s]) for s in expected if len(s) >= 2)
    stored = ModelStore.for_config(spark, cfg).load(summary["version"]).sessions
    assert len(expected) > 10
    assert sorted((r.session_end, r.items) for r in stored.collect()) == expected


def latest_session_ids(manifest, gap_s: int) -> dict[int, str]:
    """Each user's latest session id (``<user>-<start in micros>``), from every valid event."""
    times = defaultdict(list)
    for r in manifest:
        if r.expected_reason is None:
            times[r.user_id].append(datetime.fromisoformat(r.event_ts).replace(tzinfo=timezone.utc))
    latest = {}
    for user, stamps in times.items():
        stamps.sort()
        start = stamps[0]
        for before, after in zip(stamps, stamps[1:]):
            if (after - before).total_seconds() > gap_s:
                start = after
        latest[user] = f"{user}-{int(start.timestamp() * 1_000_000)}"
    return latest


def test_live_recommendations_for_users_of_the_later_run(spark, lake):
    """The later run drains a backlog of two batches, ranking once after the last: every user of
    either batch is ranked, from their latest session."""
    cfg, manifest, purchases, summary = lake
    live = read(spark, cfg, "live_recommendations")
    assert [(f.name, f.dataType) for f in live.schema] == [(f.name, f.dataType) for f in LIVE_RECOMMENDATIONS_SCHEMA]
    by_user = rows_by_user(live)
    later_users = {r.user_id for r in manifest if r.file in LATER_FILES and r.user_id}
    assert set(by_user) == later_users
    latest = latest_session_ids(manifest, cfg.sessions.gap_seconds)
    assert {user: rows[0].session_id for user, rows in by_user.items()} == {u: latest[u] for u in later_users}
    assert SQLiteStore(cfg.paths.online_store)._connection().execute(
        "SELECT COUNT(*) FROM ranking_queue"
    ).fetchone() == (0,)
    seen = seen_items(manifest, purchases)
    for user, rows in by_user.items():
        assert [r.rank for r in rows] == list(range(1, TOP_K + 1))
        assert not {r.item_id for r in rows} & seen[user]
        assert {r.model_version for r in rows} == {summary["version"]}
        assert {r.session_id.split("-")[0] for r in rows} == {str(user)}


def test_api_serves_live_recommendations_for_active_users_and_batch_ones_for_the_rest(spark, lake, tmp_path):
    cfg, _, _, summary = lake
    live = rows_by_user(read(spark, cfg, "live_recommendations"))
    batch = rows_by_user(read(spark, cfg, "recommendations"))
    with ApiServer(cfg, tmp_path) as api:
        for user, rows in live.items():
            status, body = api.get(f"/users/{user}/recommendations")
            assert status == 200 and body["source"] == "live"
            assert body["session_id"] == rows[0].session_id and body["model_version"] == summary["version"]
            assert [(i["rank"], i["item_id"]) for i in body["items"]] == [(r.rank, r.item_id) for r in rows]
            assert [i["score"] for i in body["items"]] == pytest.approx([r.score for r in rows])
        inactive = sorted(set(batch) - set(live))
        assert inactive
        for user in inactive:
            status, body = api.get(f"/users/{user}/recommendations?k=3")
            assert status == 200 and body["source"] == "batch" and body["session_id"] is None
            assert [i["item_id"] for i in body["items"]] == [r.item_id for r in batch[user][:3]]
