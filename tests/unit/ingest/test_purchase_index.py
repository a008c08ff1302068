"""PurchaseIndex.as_of equals the Spark point-in-time join (``with_purchase_history``)."""

from __future__ import annotations

import math
import random
from datetime import date, datetime, timedelta

import numpy as np
import pyarrow as pa

from lib.core.schemas import PURCHASES_SCHEMA
from lib.ingest.enrich import with_purchase_history
from lib.ingest.purchase_index import PurchaseIndex


def purchases_table(rows) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array([r[0] for r in rows], pa.int32()),
            "item_id": pa.array([r[1] for r in rows], pa.int32()),
            "purchase_amount": pa.array([r[2] for r in rows], pa.float64()),
            "purchase_date": pa.array([r[3] for r in rows], pa.date32()),
        }
    )


def micros(moment: datetime) -> int:
    return int((moment - datetime(1970, 1, 1)).total_seconds() * 1_000_000)


def test_as_of_equals_the_spark_join_on_random_history_with_nulls_and_edges(spark):
    rng = random.Random(3)
    start = date(2023, 12, 20)
    purchases = [
        (
            rng.randint(1, 8),
            rng.randint(1, 5),
            rng.choice([None, 10.0, 2.5, 7.0]),
            start + timedelta(rng.randint(0, 20)),
        )
        for _ in range(80)
    ]
    purchases += [(None, 1, 3.0, start), (2, 1, 4.0, None), (9, 1, None, start)]  # no user, no date, no amount
    events = [(u, datetime(2024, 1, 1) + timedelta(hours=rng.randint(-300, 300))) for u in range(1, 11)] * 3
    events += [
        (1, datetime(2024, 1, 1, 0, 0)),
        (1, datetime(2023, 12, 31, 23, 59, 59, 999999)),
        (9, datetime(2024, 2, 1)),
    ]

    expected = (
        with_purchase_history(
            spark.createDataFrame(events, "user_id int, event_ts timestamp"),
            spark.createDataFrame(purchases, PURCHASES_SCHEMA),
            as_of="event_ts",
        )
        .select("user_id", "event_ts", "past_purchases", "avg_purchase_amount")
        .collect()
    )
    index = PurchaseIndex.from_arrow(purchases_table(purchases))
    users = np.array([e[0] for e in expected], dtype=np.int32)
    count, avg = index.as_of(users, np.array([micros(e[1]) for e in expected]))
    for row, n, mean in zip(expected, count, avg):
        assert n == row.past_purchases, row
        if row.avg_purchase_amount is None:
            assert math.isnan(mean), row
        else:
            assert math.isclose(mean, row.avg_purchase_amount), row


def test_an_empty_history_gives_no_purchases():
    count, avg = PurchaseIndex.empty().as_of(np.array([1, 2]), np.array([0, micros(datetime(2024, 1, 1))]))
    assert count.tolist() == [0, 0]
    assert np.isnan(avg).all()


def test_items_of_lists_each_users_purchases():
    index = PurchaseIndex.from_arrow(
        purchases_table([(2, 5, 1.0, date(2024, 1, 1)), (1, 7, 1.0, date(2024, 1, 3)), (2, 6, None, date(2023, 1, 1))])
    )
    owners, items = index.items_of(np.array([2, 3, 1]))
    assert sorted(zip(owners.tolist(), items.tolist())) == [(1, 7), (2, 5), (2, 6)]
