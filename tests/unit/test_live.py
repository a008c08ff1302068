"""Live re-ranking on handcrafted neighbours, model scores and sessions."""
from datetime import datetime, timedelta

from pyspark.sql import functions as F

from lib.config import load_config
from lib.live import live_recommendations
from lib.model_store import POPULARITY_SCHEMA
from lib.recommend import ITEM_NEIGHBOURS_SCHEMA, USER_SCORES_SCHEMA
from lib.schemas import LIVE_RECOMMENDATIONS_SCHEMA, RECENT_EVENT_TYPE
from pyspark.sql.types import ArrayType, IntegerType, StringType, StructField, StructType

T = datetime(2024, 1, 1, 12, 0, 0)
REC = load_config(None, ["recommend.top_k=3", "recommend.session_weight=0.6", "recommend.session_half_life=10 minutes"]).recommend
CONTEXT_SCHEMA = StructType(
    [StructField("user_id", IntegerType()), StructField("session_id", StringType()), StructField("recent_events", ArrayType(RECENT_EVENT_TYPE))]
)


def run(spark, context_rows, excluded_rows=()):
    context = spark.createDataFrame(context_rows, CONTEXT_SCHEMA)
    neighbours = spark.createDataFrame([(1, 2, 0.9), (1, 3, 0.1), (4, 5, 1.0), (4, 2, 0.2)], ITEM_NEIGHBOURS_SCHEMA)
    user_scores = spark.createDataFrame([(1, 7, 10.0), (1, 3, 1.0)], USER_SCORES_SCHEMA)
    popularity = spark.createDataFrame([(8, 0.9), (9, 0.5), (10, 0.4), (2, 0.3)], POPULARITY_SCHEMA)
    excluded = spark.createDataFrame(list(excluded_rows), "user_id int, item_id int")
    rows = live_recommendations(context, user_scores, neighbours, popularity, excluded, REC, "v1", F.lit(T))
    assert [(f.name, f.dataType) for f in rows.schema] == [(f.name, f.dataType) for f in LIVE_RECOMMENDATIONS_SCHEMA]
    by_user = {}
    for row in rows.orderBy("user_id", "rank").collect():
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
    assert {(r.session_id, r.model_version, r.generated_at) for r in recs[1]} == {("1-0", "v1", T)}


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
