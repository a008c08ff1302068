"""Live re-ranking (the model held on the driver) on handcrafted neighbours, model scores and
sessions, and on random ones against a plain-Python reading of the documented rule."""

import random
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from pyspark.sql.types import ArrayType, IntegerType, StringType, StructField, StructType

from lib.core.config import load_config
from lib.core.schemas import RECENT_EVENT_TYPE
from lib.recommend.live import DriverRanker, ModelArrays, with_rank_slots

T = datetime(2024, 1, 1, 12, 0, 0)
REC = load_config(
    None, ["recommend.top_k=3", "recommend.session_weight=0.6", "recommend.session_half_life=10 minutes"]
).recommend
CONTEXT_SCHEMA = StructType(
    [
        StructField("user_id", IntegerType()),
        StructField("session_id", StringType()),
        StructField("recent_events", ArrayType(RECENT_EVENT_TYPE)),
    ]
)


NEIGHBOURS = [(1, 2, 0.9), (1, 3, 0.1), (4, 5, 1.0), (4, 2, 0.2)]
USER_SCORES = [(1, 7, 10.0), (1, 3, 1.0)]
POPULARITY = [(8, 0.9), (9, 0.5), (10, 0.4), (2, 0.3)]


def run(
    spark,
    context_rows,
    excluded_rows=(),
    neighbours=NEIGHBOURS,
    user_scores=USER_SCORES,
    popularity=POPULARITY,
    rec=REC,
):
    """``DriverRanker.rank`` over ``context_rows`` (user, session id, [(time, item, type)]):
    {user: [row, ...]} best first."""
    scores = pd.DataFrame(user_scores, columns=["user_id", "item_id", "score"])
    arrays = ModelArrays.build(
        pd.DataFrame(neighbours, columns=["item_id", "neighbour_id", "weight"]),
        pd.DataFrame(popularity, columns=["item_id", "score"]),
        scores.item_id.unique().astype(np.int64),
    )
    ranker = DriverRanker(arrays, scores, rec)
    context = pd.DataFrame([(u, sid) for u, sid, _ in context_rows], columns=["user_id", "session_id"])
    recent = pd.DataFrame(
        [
            (u, int((ts - datetime(1970, 1, 1)).total_seconds() * 1_000_000), item, kind)
            for u, _, events in context_rows
            for ts, item, kind in events
            if item is not None and ts is not None
        ],
        columns=["user_id", "event_ts", "item_id", "event_type"],
    )
    excluded = pd.DataFrame(list(excluded_rows), columns=["user_id", "item_id"])
    rows = ranker.rank(context, recent, excluded)
    by_user = {}
    for row in rows.sort_values(["user_id", "rank"]).itertuples():
        by_user.setdefault(row.user_id, []).append(row)
    return by_user


def test_session_and_model_are_blended_and_purchases_excluded(spark):
    recs = run(
        spark,
        [(1, "1-0", [(T, 1, "view")])],
        excluded_rows=[(1, 2)],  # bought item 2: never recommended although the session points to it
    )
    # session (scaled): item 2 -> 1.0 (excluded), item 3 -> 0.11; model (scaled): item 7 -> 1.0, item 3 -> 0.1
    # blend: 7 -> 0.4, 3 -> 0.6 * 0.111 + 0.4 * 0.1 = 0.107; then the most popular item, 8.
    assert [r.item_id for r in recs[1]] == [7, 3, 8]
    assert [r.rank for r in recs[1]] == [1, 2, 3]
    assert {r.session_id for r in recs[1]} == {"1-0"}


def test_new_user_gets_session_neighbours_weighted_by_type_and_recency_then_popular_items(spark):
    recs = run(
        spark,
        [
            # a cart 10 minutes (one half-life) before the latest event: 3 x 0.5 = 1.5 for item 5;
            # the view now: 1 x 0.9 for item 2 (plus 1.5 x 0.2 = 0.3 from the cart), 0.1 for item 3.
            (2, "2-0", [(T - timedelta(minutes=10), 4, "add_to_cart"), (T, 1, "view")]),
            # an item without neighbours, unknown to the model: popularity only
            (3, "3-0", [(T, 99, "view")]),
        ],
    )
    assert [r.item_id for r in recs[2]] == [5, 2, 3]
    assert recs[2][0].score > recs[2][1].score > recs[2][2].score
    assert [r.item_id for r in recs[3]] == [8, 9, 10]


def test_seen_items_are_excluded_when_passed_and_empty_context_gives_nothing(spark):
    recs = run(spark, [(2, "2-0", [(T, 1, "view")])], excluded_rows=[(2, 2), (2, 8)])
    assert [r.item_id for r in recs[2]] == [3, 9, 10]
    assert run(spark, []) == {}


def reference(context_rows, excluded_rows, neighbours, user_scores, popularity, rec):
    """The module docstring's rule, user by user in plain Python: {user: [(item, score), ...]}."""

    def scaled(scores):
        top = max((abs(v) for v in scores.values()), default=0.0)
        return {i: (v / top if top > 0 else 0.0) for i, v in scores.items()}

    result = {}
    for user, _, events in context_rows:
        latest = max((ts for ts, _, _ in events), default=None)
        session = {}
        for ts, item, event_type in events:
            vote = rec.event_weights.get(event_type, 0.0) * 0.5 ** (
                (latest - ts).total_seconds() / rec.session_half_life_seconds
            )
            for source, neighbour, weight in neighbours:
                if source == item:
                    session[neighbour] = session.get(neighbour, 0.0) + vote * weight
        modelled = {i: s for u, i, s in user_scores if u == user}
        s, m = scaled(session), scaled(modelled)
        excluded = {i for u, i in excluded_rows if u == user}
        blended = {
            i: rec.session_weight * s.get(i, 0.0) + (1 - rec.session_weight) * m.get(i, 0.0)
            for i in set(s) | set(m)
            if i not in excluded
        }
        ranked = sorted(blended.items(), key=lambda p: (-p[1], p[0]))[: rec.top_k]
        for item, score in sorted(popularity, key=lambda p: (-p[1], p[0])):
            if len(ranked) < rec.top_k and item not in excluded and item not in blended:
                ranked.append((item, score))
        if ranked:
            result[user] = ranked
    return result


@pytest.mark.parametrize("seed", [1, 2])
def test_random_models_and_sessions_rank_as_the_documented_rule(spark, seed):
    rng = random.Random(seed)
    items = range(1, 41)
    neighbours = [(i, j, round(rng.uniform(0.01, 1.0), 3)) for i in items for j in rng.sample(items, 6) if j != i]
    # Model users 1-20 (some scores negative or tied), popularity over most items with ties.
    user_scores = [
        (u, i, float(rng.choice([-1, 0, 1, 2, 2, 3, 5]))) for u in range(1, 21) for i in rng.sample(items, 8)
    ]
    popularity = [(i, rng.choice([0.1, 0.2, 0.3])) for i in items if i % 7]
    types = ["view", "click", "add_to_cart", "unknown"]
    context = [
        (
            u,
            f"{u}-0",
            [
                (T - timedelta(minutes=rng.randint(0, 60)), rng.choice(list(items) + [99]), rng.choice(types))
                for _ in range(rng.randint(0, 20))
            ],
        )
        for u in range(1, 41)
    ]
    excluded = sorted({(u, rng.choice(items)) for u in range(1, 41) for _ in range(rng.randint(0, 12))})
    rec = load_config(None, ["recommend.top_k=5"]).recommend

    got = run(spark, context, excluded, neighbours, user_scores, popularity, rec)
    expected = reference(context, excluded, neighbours, user_scores, popularity, rec)

    assert sorted(got) == sorted(expected)
    for user, rows in got.items():
        assert [r.rank for r in rows] == list(range(1, len(rows) + 1))
        assert [r.item_id for r in rows] == [i for i, _ in expected[user]], f"user {user}"
        assert [r.score for r in rows] == pytest.approx([s for _, s in expected[user]], rel=1e-9, abs=1e-12)


def test_rank_slots_cover_every_rank_of_each_user_with_a_null_item_where_the_new_list_is_shorter(spark):
    users = spark.createDataFrame([(1,), (2,), (3,)], "user_id int")
    recs = spark.createDataFrame(
        [(1, 1, 10), (1, 2, 11), (2, 1, 20), (9, 1, 90)],  # user 2 has a shorter list, user 3 none
        "user_id int, rank int, item_id int",
    )
    slots = with_rank_slots(users, recs, 2)
    assert slots.schema["rank"].dataType == IntegerType()
    assert sorted(tuple(r) for r in slots.select("user_id", "rank", "item_id").collect()) == [
        (1, 1, 10),
        (1, 2, 11),
        (2, 1, 20),
        (2, 2, None),
        (3, 1, None),
        (3, 2, None),
    ]
