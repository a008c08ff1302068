"""The HTTP API as a client sees it: a real uvicorn process (jobs/serve.py) on 127.0.0.1 over a
real SQLite store; no Spark."""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path

import pytest

from lib.serve.online_store import SQLiteStore
from tests.helpers import ApiServer, make_config


def recs(model_version: str, session_id: str | None, items: list[tuple[int, float]]) -> str:
    ranked = [{"rank": r, "item_id": i, "score": s} for r, (i, s) in enumerate(items, 1)]
    return json.dumps(
        {
            "model_version": model_version,
            "generated_at": "2024-01-01T00:00:00Z",
            "session_id": session_id,
            "items": ranked,
        }
    )


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api")
    cfg = make_config(folder)
    with ApiServer(cfg, folder) as server:
        # Before the stream ever ran: no store yet.
        status, body = server.get("/health")
        assert status == 503 and "start the stream" in body["detail"]

        store = SQLiteStore(cfg.paths.online_store)
        store.put_live_recommendations(1, [(1, recs("m1", "s-1", [(10, 0.9), (11, 0.8), (12, 0.7)]))])
        store.replace_batch_recommendations(
            "m1", [(1, recs("m1", None, [(20, 1.0)])), (2, recs("m1", None, [(21, 1.0)]))]
        )
        session = {"user_id": 1, "session_id": "s-1", "num_events": 3, "avg_time_gap_s": None, "is_open": True}
        store.put_profiles(1, [(2, json.dumps({"user_id": 2, "top_items": [21]}))])
        now = time.time()
        # What the stream's transaction writes (lib.serve.live_state).
        with store._connection() as db:
            db.executemany("INSERT INTO item_popularity VALUES (?, ?)", [(30, 5.0), (31, 7.0), (32, 1.0)])
            db.execute("INSERT INTO live_sessions VALUES (1, 1, ?)", (json.dumps(session),))
            db.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [
                    ("last_batch_id", "1"),
                    ("last_batch_at", "2024-01-01T00:00:00Z"),
                    ("max_event_micros", "1704070800000000"),
                ],
            )
            db.executemany(
                "INSERT INTO recent_batches VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (0, now - 400, 900, 900, 0, 0, 2.0, 9.0),  # before the 5 minutes shown
                    (1, now - 90, 1000, 990, 10, 0, 1.0, 1.5),
                    (2, now - 30, 2000, 1995, 5, 1, 1.2, 2.5),
                    (3, now - 10, 1000, 1000, 0, 0, 0.9, None),  # Kafka input: no landing time
                ],
            )
        yield server


def test_recommendations_are_live_else_batch_else_popular(api):
    status, body = api.get("/users/1/recommendations?k=2")
    assert status == 200
    assert body["source"] == "live" and body["session_id"] == "s-1" and body["model_version"] == "m1"
    assert body["items"] == [{"item_id": 10, "score": 0.9, "rank": 1}, {"item_id": 11, "score": 0.8, "rank": 2}]
    assert len(api.get("/users/1/recommendations")[1]["items"]) == 3  # k defaults to top_k (10): all there are

    status, body = api.get("/users/2/recommendations")
    assert status == 200 and body["source"] == "batch" and body["session_id"] is None
    assert [i["item_id"] for i in body["items"]] == [21]

    status, body = api.get("/users/3/recommendations?k=2")
    assert status == 200 and body["source"] == "popular"
    assert [(i["item_id"], i["rank"]) for i in body["items"]] == [(31, 1), (30, 2)]


def test_session_profile_and_health(api):
    status, body = api.get("/users/1/session")
    assert status == 200 and body["session_id"] == "s-1" and body["avg_time_gap_s"] is None
    assert api.get("/users/2/session")[0] == 404
    assert api.get("/users/2/profile") == (200, {"user_id": 2, "top_items": [21]})
    assert api.get("/users/1/profile")[0] == 404
    status, body = api.get("/health")
    assert status == 200
    assert body["status"] == "ok" and body["last_batch_id"] == 1 and body["last_batch_at"] == "2024-01-01T00:00:00Z"


@pytest.mark.parametrize(
    "path",
    [
        "/users/0/session",
        "/users/-4/profile",
        "/users/abc/recommendations",
        "/users/1/recommendations?k=0",
        "/users/99999999999/session",
    ],
)
def test_bad_ids_and_parameters_get_422_with_a_json_error(api, path):
    status, body = api.get(path)
    assert status == 422 and body["detail"]


def test_stream_sums_up_the_recent_batches_and_popular_items(api):
    status, body = api.get("/stream")
    assert status == 200 and body["last_batch_id"] == 1 and body["minutes"] == 5
    assert body["latest_event_at"] == "2024-01-01T01:00:00Z"  # the stream's clock, for the console's clicks
    assert [b["batch_id"] for b in body["batches"]] == [1, 2, 3]
    assert body["batches_per_minute"] == 2 and body["events_per_minute"] == 3000
    assert body["quarantined_rows"] == 15
    assert body["store_delay_s"] == {"p50": 1.5, "p95": 2.5}
    assert [p["item_id"] for p in body["popular"]] == [31, 30, 32]
    assert api.get("/stream?minutes=61")[0] == 422


def test_the_console_page_and_a_users_open_session_events(api):
    connection = http.client.HTTPConnection("127.0.0.1", api.process.port, timeout=10)
    connection.request("GET", "/")
    response = connection.getresponse()
    page = response.read().decode()
    assert response.status == 200 and response.getheader("content-type").startswith("text/html")
    assert "<title>streamrec console</title>" in page and 'fetch("/stream"' not in page and "/stream" in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")  # nothing fetched from elsewhere
    assert api.get("/users/1/events") == (200, {"user_id": 1, "events": []})


def test_posted_events_land_in_the_watched_folder_and_bad_ones_write_nothing(api):
    incoming = Path(api.cfg.paths.events_dir)
    status, body = api.post("/users/3/events", {"item_id": 8, "event_type": "view", "timestamp": "2024-05-01 10:00:00"})
    assert status == 202 and body["accepted"] == 1
    landed = Path(body["destination"])
    assert landed.parent == incoming and landed.read_text() == (
        "user_id,item_id,event_type,timestamp\n3,8,view,2024-05-01 10:00:00\n"
    )
    for path, payload, reason in [
        ("/users/3/events", {"item_id": 0, "event_type": "view"}, "non_positive_item_id"),
        (
            "/events",
            [{"user_id": 1, "item_id": 2, "event_type": "view"}, {"item_id": 2, "event_type": "view"}],
            "missing_user_id",
        ),
        ("/events", {"user_id": 1}, None),
        ("/users/3/events", [{"item_id": 8, "event_type": "view"}], None),
    ]:
        status, body = api.post(path, payload)
        assert status == 422 and (reason is None or body["reason"] == reason), body
    assert sorted(incoming.iterdir()) == [landed]
