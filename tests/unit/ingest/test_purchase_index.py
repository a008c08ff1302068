"""PurchaseIndex.as_of: the contract's point-in-time rule (purchases strictly before the event's day)."""

from __future__ import annotations

import math
import random
from datetime import date, datetime, timedelta

import numpy as np

from lib.ingest.generator import purchases_table
from lib.ingest.purchase_index import PurchaseIndex


def point_in_time(purchases, user: int, moment: datetime) -> tuple[int, float | None]:
    """The contract's rule, one event at a time: the user's purchases dated before the event's
    day (UTC), and the mean of their non-null amounts."""
    before = [p for p in purchases if p[0] == user and p[3] is not None and p[3] < moment.date()]
    amounts = [p[2] for p in before if p[2] is not None]
    return len(before), (sum(amounts) / len(amounts) if amounts else None)


def micros(moment: datetime) -> int:
    return int((moment - datetime(1970, 1, 1)).total_seconds() * 1_000_000)


def test_as_of_equals_the_rule_on_random_history_with_nulls_and_edges():
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

    expected = [point_in_time(purchases, user, moment) for user, moment in events]
    index = PurchaseIndex.from_arrow(purchases_table(purchases))
    users = np.array([e[0] for e in events], dtype=np.int32)
    count, avg = index.as_of(users, np.array([micros(e[1]) for e in events]))
    for event, (past, mean), n, actual_mean in zip(events, expected, count, avg):
        assert n == past, event
        assert math.isnan(actual_mean) if mean is None else math.isclose(actual_mean, mean), event


def test_only_purchases_before_the_event_day_count():
    purchases = [
        (1, 100, 30.0, date(2023, 12, 31)),
        (1, 101, 10.0, date(2024, 1, 1)),  # the day before: counted
        (1, 102, 20.0, date(2024, 1, 2)),  # the day of the event: not counted
        (3, 103, 50.0, date(2024, 1, 1)),
        (None, 104, 999.0, date(2023, 1, 1)),  # no user: matches nobody
        (4, 105, None, date(2023, 1, 1)),  # no amount: a purchase, but not in the mean
        (4, 106, 8.0, date(2023, 1, 1)),
    ]
    events = [
        (1, datetime(2024, 1, 2, 23, 59, 59)),
        (1, datetime(2024, 1, 1, 0, 0, 0)),
        (2, datetime(2024, 1, 2, 10, 0)),  # never purchased
        (3, datetime(2024, 1, 2, 0, 0, 0)),  # midnight: yesterday's purchase counts
        (4, datetime(2024, 1, 2, 0, 0, 0)),
    ]
    index = PurchaseIndex.from_arrow(purchases_table(purchases))
    count, avg = index.as_of(np.array([e[0] for e in events]), np.array([micros(e[1]) for e in events]))
    assert count.tolist() == [2, 1, 0, 1, 2]
    assert [None if math.isnan(a) else a for a in avg] == [20.0, 30.0, None, 50.0, 8.0]


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
