"""The stream's profiles on the driver equal the Spark rebuild's (``lib.features.profiles``)."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
from chispa import assert_approx_df_equality

from lib.core.schemas import PURCHASES_SCHEMA, USER_PROFILES_SCHEMA
from lib.features.profile_fold import PurchaseTotals, profile_documents, profile_increments, profile_rows
from lib.features.profiles import TOUCHED
from tests.unit.features.test_profiles import EVENT_ROWS, NOW, PURCHASE_ROWS, REC, SESSION_ROWS, build

EPOCH = datetime(1970, 1, 1)


def micros(ts: datetime) -> int:
    return (ts - EPOCH) // timedelta(microseconds=1)


def frames(event_rows, session_rows):
    events = pd.DataFrame(event_rows, columns=["user_id", "item_id", "event_type", "event_ts"])
    events["event_ts"] = [micros(t) for t in events["event_ts"]]
    closed = pd.DataFrame(session_rows, columns=["user_id", "session_start", "session_end"])
    for column in ("session_start", "session_end"):
        closed[column] = [micros(t) for t in closed[column]]
    return events, closed


def driver_profiles(spark, event_rows, session_rows, purchase_rows):
    events, closed = frames(event_rows, session_rows)
    totals, engagement = profile_increments(events, closed, REC.event_weights)
    purchases = PurchaseTotals.from_arrow(spark.createDataFrame(purchase_rows, PURCHASES_SCHEMA).toArrow(), 5.0)
    users = np.union1d(totals.user_id.to_numpy(np.int64), purchases.buyers)
    rows = profile_rows(totals, engagement, purchases, REC, micros(NOW), users)
    return rows, spark.createDataFrame(rows.drop([TOUCHED]), USER_PROFILES_SCHEMA)


def test_the_edge_rows_give_the_rebuilds_profiles(spark):
    rows, actual = driver_profiles(spark, EVENT_ROWS, SESSION_ROWS, PURCHASE_ROWS)
    expected = build(spark, EVENT_ROWS, SESSION_ROWS, PURCHASE_ROWS)
    assert_approx_df_equality(actual.orderBy("user_id"), expected.orderBy("user_id"), 1e-9, ignore_nullable=True)
    # Users 1, 2 and 4 have events (their totals changed); 3 only bought.
    assert dict(zip(rows.column("user_id").to_pylist(), rows.column(TOUCHED).to_pylist())) == {
        1: True,
        2: True,
        3: False,
        4: True,
    }


def test_random_activity_gives_the_rebuilds_profiles(spark):
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
    _, actual = driver_profiles(spark, event_rows, session_rows, purchase_rows)
    expected = build(spark, event_rows, session_rows, purchase_rows)
    assert actual.count() == expected.count() > 40
    # Means may differ in the last bit (the sums' order).
    assert_approx_df_equality(actual.orderBy("user_id"), expected.orderBy("user_id"), 1e-9, ignore_nullable=True)


def test_no_activity_gives_no_rows_and_documents_carry_the_contract_columns(spark):
    empty_events, empty_closed = frames([], [])
    totals, engagement = profile_increments(empty_events, empty_closed, REC.event_weights)
    assert totals.empty and engagement.empty
    nothing = PurchaseTotals.from_arrow(spark.createDataFrame([], PURCHASES_SCHEMA).toArrow(), 5.0)
    assert profile_rows(totals, engagement, nothing, REC, micros(NOW)).num_rows == 0
    rows, _ = driver_profiles(spark, EVENT_ROWS, SESSION_ROWS, PURCHASE_ROWS)
    docs = dict(profile_documents(rows))
    buyer = json.loads(docs[3])
    assert buyer["top_items"] == [30] and buyer["first_seen"] is None and buyer["past_purchases"] == 1
    assert json.loads(docs[1])["last_seen"] == "2024-01-01T15:01:00.000000Z"
    assert "item_engagement" not in buyer and isinstance(rows, pa.Table)
