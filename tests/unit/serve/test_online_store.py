"""The embedded online store on a real SQLite file: batch ordering, replays, popularity, health."""

from __future__ import annotations

import json
import sqlite3

import pytest

from lib.serve.online_store import SQLiteStore, StoreUnavailable


def doc(**fields) -> str:
    return json.dumps(fields)


def test_documents_round_trip_and_an_older_batch_never_replaces_a_newer_one(tmp_path):
    store = SQLiteStore(tmp_path / "s.sqlite")
    store.put_live_recommendations(3, [(1, doc(user_id=1, session_id="a")), (2, doc(user_id=2, session_id="b"))])
    store.put_live_recommendations(4, [(1, doc(user_id=1, session_id="c"))])
    store.put_live_recommendations(3, [(1, doc(user_id=1, session_id="a"))])  # batch 3 replayed after a crash
    assert store.live_recommendations(1) == {"user_id": 1, "session_id": "c"}
    assert store.live_recommendations(2) == {"user_id": 2, "session_id": "b"}
    assert store.live_recommendations(99) is None
    store.put_profiles(5, [(2, doc(user_id=2, top_items=[7, None]))])
    assert store.profile(2) == {"user_id": 2, "top_items": [7, None]}
    assert store.session(1) is None and store.session_events(1) == []

    reader = SQLiteStore(tmp_path / "s.sqlite", readonly=True)
    assert reader.live_recommendations(1) == {"user_id": 1, "session_id": "c"}
    with pytest.raises(sqlite3.OperationalError):  # readers cannot write
        reader.put_profiles(9, [(1, doc())])


def test_popularity_ranks_ties_by_item(tmp_path):
    store = SQLiteStore(tmp_path / "s.sqlite")
    assert store.popular_items(3) == []
    with store._connection() as db:  # the stream's transaction writes it (lib.serve.live_state)
        db.executemany("INSERT INTO item_popularity VALUES (?, ?)", [(10, 3.0), (11, 3.0), (12, 2.0)])
    assert store.popular_items(2) == [(10, 3.0), (11, 3.0)]
    assert store.popular_items(10) == [(10, 3.0), (11, 3.0), (12, 2.0)]


def test_batch_recommendations_are_replaced_whole_and_health_reports_the_last_batch(tmp_path):
    store = SQLiteStore(tmp_path / "s.sqlite")
    assert store.health() == {"last_batch_id": None, "last_batch_at": None, "batch_model_version": None}
    store.replace_batch_recommendations("v1", [(1, doc(model_version="v1")), (2, doc(model_version="v1"))])
    store.replace_batch_recommendations("v2", [(2, doc(model_version="v2"))])
    assert store.batch_recommendations(1) is None
    assert store.batch_recommendations(2) == {"model_version": "v2"}
    with store._connection() as db:  # what the stream records after each batch
        db.executemany(
            "INSERT INTO meta VALUES (?, ?)", [("last_batch_id", "7"), ("last_batch_at", "2024-01-02T03:04:05Z")]
        )
    assert store.health() == {"last_batch_id": 7, "last_batch_at": "2024-01-02T03:04:05Z", "batch_model_version": "v2"}


def test_a_missing_or_unreadable_store_says_what_to_do(tmp_path):
    with pytest.raises(StoreUnavailable, match="does not exist: start the stream"):
        SQLiteStore(tmp_path / "missing.sqlite", readonly=True)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreUnavailable, match="cannot be read"):
        SQLiteStore(garbage, readonly=True).session(1)
