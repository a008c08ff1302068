"""The per-user split the offline evaluation and EASE's penalty search share."""

from datetime import datetime, timedelta

import pytest

from lib.features.interactions import split_per_user

T0 = datetime(2024, 1, 1)
SCHEMA = "user_id int, item_id int, strength double, last_ts timestamp"


def interactions(spark, counts: dict[int, int]):
    rows = [(user, item, 1.0, T0 + timedelta(hours=item)) for user, n in counts.items() for item in range(n)]
    return spark.createDataFrame(rows, SCHEMA)


def test_the_first_ceil_of_ratio_times_n_of_each_user_train_and_the_rest_test(spark):
    # 5 interactions: 4 train, 1 test; 4 or fewer at 0.8: all train; a user with 10: 8 and 2.
    train, test = split_per_user(interactions(spark, {1: 5, 2: 4, 3: 1, 4: 10}), "random", ratio=0.8, seed=7)
    per_user = {r.user_id: r["count"] for r in train.groupBy("user_id").count().collect()}
    held = {r.user_id: r["count"] for r in test.groupBy("user_id").count().collect()}
    assert per_user == {1: 4, 2: 4, 3: 1, 4: 8} and held == {1: 1, 4: 2}
    assert train.columns == test.columns == ["user_id", "item_id", "strength", "last_ts"]
    assert train.join(test, ["user_id", "item_id"]).count() == 0


def test_a_time_split_holds_out_each_users_latest_and_a_random_one_is_seeded(spark):
    rows = interactions(spark, {1: 5, 2: 10})
    _, test = split_per_user(rows, "time", ratio=0.8)
    assert sorted((r.user_id, r.item_id) for r in test.collect()) == [(1, 4), (2, 8), (2, 9)]
    first = sorted(tuple(r) for r in split_per_user(rows, "random", 0.8, seed=3)[1].collect())
    again = sorted(tuple(r) for r in split_per_user(rows, "random", 0.8, seed=3)[1].collect())
    assert first == again


def test_an_unknown_split_is_refused_with_the_choices(spark):
    with pytest.raises(ValueError, match="choose one of"):
        split_per_user(interactions(spark, {1: 2}), "by-day")
