"""Models on a tiny handcrafted dataset whose right answers are known.

Items 1-3 are always taken together, and so are items 4-6. User 3 has 1 and 2 but not 3;
user 5 has 4 and 5 but not 6. Item 3 and 6 are the least popular items, so only a model that
learned the structure puts them first; popularity alone recommends 4 and 1.
"""

from datetime import date, datetime

import pytest
from chispa import assert_df_equality
from pyspark.sql.types import IntegerType, StringType, StructField, StructType, TimestampType

from lib.core.config import MODELS, load_config
from lib.core.schemas import INTERACTIONS_SCHEMA, PURCHASES_SCHEMA
from lib.features.interactions import interactions_from
from lib.recommend.models import MODEL_FITTERS, fit_model, top_k_recommendations

T = datetime(2024, 1, 1, 12, 0, 0)
EVENTS_SCHEMA = StructType(
    [
        StructField("user_id", IntegerType()),
        StructField("item_id", IntegerType()),
        StructField("event_type", StringType()),
        StructField("event_ts", TimestampType()),
    ]
)
HISTORIES = {1: [1, 2, 3], 2: [1, 2, 3], 3: [1, 2], 4: [4, 5, 6], 5: [4, 5], 6: [4, 5, 6], 7: [1, 2, 3], 8: [4, 5]}


def rec_config(*overrides):
    return load_config(None, [f"recommend.{o}" for o in overrides]).recommend


@pytest.fixture(scope="module")
def interactions(spark):
    rows = [(user, item, 1.0, T) for user, items in HISTORIES.items() for item in items]
    return spark.createDataFrame(rows, INTERACTIONS_SCHEMA)


def recommendations(spark, interactions, model, k=2, users=None, exclude_seen=True, *overrides):
    rec = rec_config(
        f"model={model}", f"top_k={k}", f"exclude_seen={str(exclude_seen).lower()}", "ease_lambda=0.5", *overrides
    )
    trained = fit_model(spark, interactions, rec)
    users = users if users is not None else interactions.select("user_id").distinct()
    rows = top_k_recommendations(trained.user_scores, trained.popularity, users, interactions, k, exclude_seen)
    by_user = {}
    for row in rows.orderBy("user_id", "rank").collect():
        by_user.setdefault(row.user_id, []).append(row.item_id)
    return by_user


def test_interactions_keep_the_strongest_signal_per_pair_and_drop_null_ids(spark):
    rec = rec_config()
    events = spark.createDataFrame(
        [
            (1, 10, "view", T),
            (1, 10, "add_to_cart", datetime(2024, 1, 2)),
            (1, 10, "click", T),
            (2, 10, "view", T),
            (None, 10, "view", T),
            (3, None, "click", T),
        ],
        EVENTS_SCHEMA,
    )
    purchases = spark.createDataFrame(
        [(2, 10, 9.5, date(2023, 5, 1)), (4, 11, 1.0, date(2023, 6, 1))], PURCHASES_SCHEMA
    )
    actual = interactions_from(events, purchases, rec)
    expected = spark.createDataFrame(
        [
            (1, 10, 3.0, datetime(2024, 1, 2)),
            (2, 10, 5.0, T),  # the purchase is the stronger signal, the view the later one
            (4, 11, 5.0, datetime(2023, 6, 1)),
        ],
        INTERACTIONS_SCHEMA,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)
    empty = spark.createDataFrame([], PURCHASES_SCHEMA)
    assert interactions_from(events, empty, rec).count() == 2


@pytest.mark.parametrize("model", ["item_knn", "ease"])
def test_item_models_complete_the_pattern(spark, interactions, model):
    recs = recommendations(spark, interactions, model, k=1)
    assert recs[3] == [3]
    assert recs[5] == [6]
    assert recs[8] == [6]


def test_popularity_recommends_the_most_popular_unseen_items(spark, interactions):
    recs = recommendations(spark, interactions, "popularity", k=2)
    # Items 1, 2, 4, 5 are each taken by 4 users; ties go to the lower id.
    assert recs[3] == [4, 5]
    assert recs[5] == [1, 2]
    assert recs[1] == [4, 5]


def test_als_recommends_k_unseen_items_per_user(spark, interactions):
    recs = recommendations(spark, interactions, "als", 3, None, True, "als_rank=4", "als_max_iter=5")
    assert set(recs) == set(HISTORIES)
    for user, items in recs.items():
        assert len(items) == 3 and not set(items) & set(HISTORIES[user])


def test_exclude_seen_off_allows_seen_items(spark, interactions):
    recs = recommendations(spark, interactions, "popularity", k=2, exclude_seen=False)
    assert recs[1] == [1, 2]


def test_exactly_k_rows_when_enough_candidates_and_all_that_exist_otherwise(spark, interactions):
    recs = recommendations(spark, interactions, "item_knn", k=4)
    # 6 items, 3 seen: only 3 candidates remain for user 1; user 3 has 4.
    assert len(recs[1]) == 3 and set(recs[1]) == {4, 5, 6}
    assert len(recs[3]) == 4 and recs[3][0] == 3


def test_cold_user_gets_popular_items(spark, interactions):
    users = spark.createDataFrame([(99,), (3,)], "user_id int")
    recs = recommendations(spark, interactions, "ease", 2, users)
    assert recs[99] == [1, 2]
    assert recs[3][0] == 3


def test_no_interactions_gives_no_recommendations(spark):
    empty = spark.createDataFrame([], INTERACTIONS_SCHEMA)
    for model in ("item_knn", "ease", "popularity"):
        assert recommendations(spark, empty, model, k=2) == {}


def test_every_configurable_model_has_a_fit_and_an_unknown_one_is_refused(spark, interactions):
    assert set(MODEL_FITTERS) == set(MODELS)
    with pytest.raises(ValueError, match="unknown model 'svd'; choose one of"):
        fit_model(spark, interactions, rec_config(), model="svd")


def test_ease_penalty_search_fits_the_setting_it_scored_best(spark):
    """Two groups of five items, six users each: every user has a held-out item to score."""
    rows = [(user, item, 1.0, T) for user in range(1, 13) for item in (range(1, 6) if user <= 6 else range(6, 11))]
    trained = fit_model(spark, spark.createDataFrame(rows, INTERACTIONS_SCHEMA), rec_config("model=ease", "top_k=2"))
    ndcg = trained.params["penalty_search_ndcg"]
    assert len(ndcg) == 6 * 3 * 3  # lambda factors x dropouts x popularity exponents
    best = max(ndcg, key=ndcg.get)  # the first of equals, in search order
    _factor, dropout, exponent = (float(v) for v in best.replace("x", "").split("/"))
    assert (trained.params["dropout"], trained.params["popularity_exponent"]) == (dropout, exponent)
