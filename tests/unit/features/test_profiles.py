"""User profiles: the fold on the driver (the stream's) and over a DataFrame (the rebuild's),
against hand-computed edge rows and a plain-Python reference on random activity."""

import json
from collections import defaultdict
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from chispa import assert_df_equality
from pyspark.sql.types import IntegerType, StringType, StructField, StructType, TimestampType

from lib.core.config import load_config
from lib.core.schemas import PURCHASES_SCHEMA, USER_PROFILES_SCHEMA
from lib.features.profiles import (
    TOUCHED,
    PurchaseTotals,
    profile_documents,
    profile_increments,
    profile_rows,
    with_profiles,
)

T0 = datetime(2024, 1, 1, 10, 0, 0)
NOW = datetime(2024, 6, 1)
EPOCH = datetime(1970, 1, 1)
EVENTS_SCHEMA = StructType(
    [
        StructField("user_id", IntegerType()),
        StructField("item_id", IntegerType()),
        StructField("event_type", StringType()),
        StructField("event_ts", TimestampType()),
    ]
)
SESSIONS_SCHEMA = StructType(
    [
        StructField("user_id", IntegerType()),
        StructField("session_start", TimestampType()),
        StructField("session_end", TimestampType()),
    ]
)
REC = load_config(None, ["recommend.profile_top_items=2"]).recommend


def events(spark, rows):
    return spark.createDataFrame(rows, EVENTS_SCHEMA)


def sessions(spark, rows):
    return spark.createDataFrame(rows, SESSIONS_SCHEMA)


def micros(ts: datetime) -> int:
    return (ts - EPOCH) // timedelta(microseconds=1)


def build(spark, event_rows, session_rows, purchase_rows, groups=3):
    """The rebuild's profiles (``with_profiles``)."""
    purchases = spark.createDataFrame(purchase_rows, PURCHASES_SCHEMA)
    return with_profiles(events(spark, event_rows), sessions(spark, session_rows), purchases, REC, micros(NOW), groups)


def driver_profiles(spark, event_rows, session_rows, purchase_rows):
    """The stream's profiles: ``profile_increments`` then ``profile_rows`` on the driver."""
    events = pd.DataFrame(event_rows, columns=["user_id", "item_id", "event_type", "event_ts"])
    events["event_ts"] = [micros(t) for t in events["event_ts"]]
    closed = pd.DataFrame(session_rows, columns=["user_id", "session_start", "session_end"])
    for column in ("session_start", "session_end"):
        closed[column] = [micros(t) for t in closed[column]]
    totals, engagement = profile_increments(events, closed, REC.event_weights)
    purchases = PurchaseTotals.from_arrow(spark.createDataFrame(purchase_rows, PURCHASES_SCHEMA).toArrow(), 5.0)
    users = np.union1d(totals.user_id.to_numpy(np.int64), purchases.buyers)
    rows = profile_rows(totals, engagement, purchases, REC, micros(NOW), users)
    return rows, spark.createDataFrame(rows.drop_columns([TOUCHED]), USER_PROFILES_SCHEMA)


EVENT_ROWS = [
    (1, 10, "view", T0),
    (1, 10, "click", T0 + timedelta(minutes=1)),
    (1, 11, "view", T0 + timedelta(minutes=2)),
    (1, 12, "view", T0 + timedelta(hours=5)),
    (1, 11, "add_to_cart", T0 + timedelta(hours=5, minutes=1)),
    (2, 20, "add_to_cart", T0),  # no views, no clicks: both rates null
    (4, 40, "view", T0),  # events only, no closed session yet
]
SESSION_ROWS = [
    (1, T0, T0 + timedelta(minutes=2)),
    (1, T0 + timedelta(hours=5), T0 + timedelta(hours=5, minutes=1)),
    (2, T0, T0),
]
PURCHASE_ROWS = [(1, 12, 10.0, date(2023, 1, 1)), (1, 12, 30.0, date(2023, 2, 1)), (3, 30, 5.0, date(2023, 3, 1))]


def edge_profiles(spark):
    # item 12: one view (1) + two purchases (2 x 5) = 11; item 11: view + cart = 4; item 10: view + click = 3
    user_1 = (1, 2, 5, 3, 1, 1, 90.0, 1 / 3, 1.0, T0, T0 + timedelta(hours=5, minutes=1), 2, 20.0, [12, 11], NOW)
    rows = [
        (*user_1, 180_000_000, {10: 3.0, 11: 4.0, 12: 1.0}),
        (2, 1, 1, 0, 0, 1, 0.0, None, None, T0, T0, 0, None, [20], NOW, 0, {20: 3.0}),
        (3, 0, 0, 0, 0, 0, None, None, None, None, None, 1, 5.0, [30], NOW, 0, {}),  # purchases only
        (4, 0, 1, 1, 0, 0, None, 0.0, None, T0, T0, 0, None, [40], NOW, 0, {40: 1.0}),
    ]
    return spark.createDataFrame(rows, USER_PROFILES_SCHEMA)


def test_the_rebuild_gives_the_profiles_of_events_sessions_and_purchases(spark):
    actual = build(spark, EVENT_ROWS, SESSION_ROWS, PURCHASE_ROWS)
    # Maps cannot be sorted on, so rows are put in user order instead of ignore_row_order.
    assert_df_equality(actual.orderBy("user_id"), edge_profiles(spark).orderBy("user_id"), ignore_nullable=True)


def test_the_stream_gives_the_same_profiles_and_marks_the_users_whose_totals_changed(spark):
    rows, actual = driver_profiles(spark, EVENT_ROWS, SESSION_ROWS, PURCHASE_ROWS)
    assert_df_equality(actual.orderBy("user_id"), edge_profiles(spark).orderBy("user_id"), ignore_nullable=True)
    # Users 1, 2 and 4 have events (their totals changed); 3 only bought.
    touched = dict(zip(rows.column("user_id").to_pylist(), rows.column(TOUCHED).to_pylist()))
    assert touched == {1: True, 2: True, 3: False, 4: True}


def reference_profiles(event_rows, session_rows, purchase_rows) -> dict[int, dict]:
    """The profile rules, user by user in plain Python (no ``updated_at``)."""
    users = (
        {r[0] for r in event_rows} | {r[0] for r in session_rows} | {r[0] for r in purchase_rows if r[0] is not None}
    )
    profiles = {}
    for user in users:
        events = [r for r in event_rows if r[0] == user]
        closed = [r for r in session_rows if r[0] == user]
        bought = [r for r in purchase_rows if r[0] == user]
        kinds = [r[2] for r in events]
        engagement = defaultdict(float)
        for _, item, kind, _ in events:
            engagement[item] += REC.event_weights[kind]
        ranked = defaultdict(float, engagement)
        for _, item, _, _ in bought:
            if item is not None:
                ranked[item] += REC.purchase_weight
        micros_total = sum(micros(end) - micros(start) for _, start, end in closed)
        views, clicks, carts = kinds.count("view"), kinds.count("click"), kinds.count("add_to_cart")
        amounts = [r[2] for r in bought if r[2] is not None]
        profiles[user] = {
            "num_sessions": len(closed),
            "num_events": len(events),
            "num_views": views,
            "num_clicks": clicks,
            "num_add_to_cart": carts,
            "avg_session_length_s": micros_total / len(closed) / 1e6 if closed else None,
            "click_through_rate": clicks / views if views else None,
            "cart_rate": carts / clicks if clicks else None,
            "first_seen": min((r[3] for r in events), default=None),
            "last_seen": max((r[3] for r in events), default=None),
            "past_purchases": len(bought),
            "avg_purchase_amount": sum(amounts) / len(amounts) if amounts else None,
            "top_items": sorted(ranked, key=lambda item: (-ranked[item], item))[: REC.profile_top_items],
            "total_session_micros": micros_total,
            "item_engagement": dict(engagement),
        }
    return profiles


def test_random_activity_gives_the_reference_profiles_in_any_number_of_groups(spark):
    rng = np.random.default_rng(7)
    t0 = datetime(2024, 3, 1)
    event_rows = [
        (int(u), int(i), str(k), t0 + timedelta(seconds=int(s)))
        for u, i, k, s in zip(
            rng.integers(0, 40, 400),
            rng.integers(0, 15, 400),
            rng.choice(["view", "click", "add_to_cart"], 400),
            rng.integers(0, 86_400, 400),
        )
    ]
    session_rows = [
        (int(u), t0 + timedelta(seconds=int(s)), t0 + timedelta(seconds=int(s + d)))
        for u, s, d in zip(rng.integers(0, 40, 60), rng.integers(0, 86_400, 60), rng.integers(0, 3_000, 60))
    ]
    purchase_rows = [
        (
            None if n % 17 == 0 else int(u),
            None if n % 11 == 0 else int(i),
            None if n % 5 == 0 else float(a),
            date(2024, 1, 1) + timedelta(days=int(d)),
        )
        for n, (u, i, a, d) in enumerate(
            zip(rng.integers(20, 60, 120), rng.integers(0, 15, 120), rng.uniform(1, 99, 120), rng.integers(0, 50, 120))
        )
    ]
    expected = reference_profiles(event_rows, session_rows, purchase_rows)
    assert len(expected) > 40
    for groups in (1, 7):
        actual = {
            row.user_id: row.asDict() for row in build(spark, event_rows, session_rows, purchase_rows, groups).collect()
        }
        assert actual.keys() == expected.keys()
        for user, want in expected.items():
            for name, value in want.items():
                # Means may differ in the last bit (the sums' order).
                close = pytest.approx(value, rel=1e-9) if isinstance(value, (float, dict)) else value
                assert actual[user][name] == close, (groups, user, name)


def test_no_input_gives_no_profiles_and_documents_carry_the_contract_columns(spark):
    assert build(spark, [], [], []).count() == 0
    nothing, _ = driver_profiles(spark, [], [], [])
    assert nothing.num_rows == 0
    rows, _ = driver_profiles(spark, EVENT_ROWS, SESSION_ROWS, PURCHASE_ROWS)
    docs = dict(profile_documents(rows))
    buyer = json.loads(docs[3])
    assert buyer["top_items"] == [30] and buyer["first_seen"] is None and buyer["past_purchases"] == 1
    assert json.loads(docs[1])["last_seen"] == "2024-01-01T15:01:00.000000Z"
    assert "item_engagement" not in buyer and isinstance(rows, pa.Table)
