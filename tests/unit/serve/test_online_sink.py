"""Recommendation rows as the store's documents: one per user, items best first."""

import json

import pandas as pd

from lib.serve.online_sink import iso_text, recommendation_documents


def test_documents_group_each_users_rows_best_first():
    rows = pd.DataFrame(
        {
            "user_id": [7, 3, 7, 3],
            "rank": [2, 1, 1, 2],
            "item_id": [70, 30, 71, 31],
            "score": [0.5, 0.9, 0.75, 0.1],
            "model_version": ["v1"] * 4,
            "generated_at": pd.to_datetime(["2026-01-02T03:04:05.000006Z"] * 4, utc=True),
        }
    )
    docs = recommendation_documents(rows)
    assert [user for user, _ in docs] == [3, 7]
    assert json.loads(docs[1][1]) == {
        "user_id": 7,
        "model_version": "v1",
        "generated_at": "2026-01-02T03:04:05.000006Z",
        "items": [{"rank": 1, "item_id": 71, "score": 0.75}, {"rank": 2, "item_id": 70, "score": 0.5}],
    }


def test_live_documents_carry_the_session_and_a_null_version():
    rows = pd.DataFrame(
        {
            "user_id": [1],
            "session_id": ["1-abc"],
            "rank": [1],
            "item_id": [5],
            "score": [1.0],
            "model_version": [None],
            "generated_at": ["2026-01-02T03:04:05.000006Z"],
        }
    )
    ((user, doc),) = recommendation_documents(rows)
    assert user == 1
    assert list(json.loads(doc)) == ["user_id", "session_id", "model_version", "generated_at", "items"]
    assert json.loads(doc)["model_version"] is None


def test_no_rows_no_documents():
    empty = pd.DataFrame({c: [] for c in ("user_id", "rank", "item_id", "score", "model_version", "generated_at")})
    assert recommendation_documents(empty) == []


def test_time_text_keeps_microseconds_on_a_whole_second_and_nulls_as_none():
    """The sessions' updated_at and the live recommendations' generated_at of one batch are
    compared as text: a whole second must read the same however it was given."""
    micros = pd.Series([1_700_000_000_000_000, None, 1_700_000_000_000_001], dtype="Int64")
    stamps = pd.Series(pd.to_datetime([1_700_000_000_000_000, None], unit="us", utc=True))
    assert iso_text(micros).tolist() == ["2023-11-14T22:13:20.000000Z", None, "2023-11-14T22:13:20.000001Z"]
    assert iso_text(stamps).tolist() == ["2023-11-14T22:13:20.000000Z", None]
    assert iso_text(stamps.dt.tz_localize(None)).tolist() == ["2023-11-14T22:13:20.000000Z", None]


def test_documents_read_as_json_dumps_writes_them():
    """The items' text is put together from numpy's text of each number: it must be what
    json.dumps writes, for scores of any magnitude and a session id that needs escaping."""
    scores = [1 / 3, 1e-05, 5e20, 0.30000000000000004, 1.0, -0.0]
    rows = pd.DataFrame(
        {
            "user_id": [4] * len(scores),
            "session_id": ['4-"q"\\'] * len(scores),
            "rank": range(1, len(scores) + 1),
            "item_id": [2**31 - 1 - n for n in range(len(scores))],
            "score": scores,
            "model_version": ["v"] * len(scores),
            "generated_at": [None] * len(scores),
        }
    )
    ((_, doc),) = recommendation_documents(rows)
    items = [{"rank": n + 1, "item_id": 2**31 - 1 - n, "score": s} for n, s in enumerate(scores)]
    head = {"user_id": 4, "session_id": '4-"q"\\', "model_version": "v", "generated_at": None}
    assert doc == json.dumps({**head, "items": items})
