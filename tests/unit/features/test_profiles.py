"""User profiles rebuilt from the lake: aggregation and edge rows."""

from datetime import date, datetime, timedelta

from chispa import assert_df_equality
from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType, StringType, StructField, StructType, TimestampType

from lib.core.config import load_config
from lib.core.schemas import PURCHASES_SCHEMA, USER_PROFILES_SCHEMA
from lib.features.profiles import profile_totals, with_profile_metrics

T0 = datetime(2024, 1, 1, 10, 0, 0)
NOW = datetime(2024, 6, 1)
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


def build(spark, event_rows, session_rows, purchase_rows):
    totals = profile_totals(events(spark, event_rows), sessions(spark, session_rows), REC)
    purchases = spark.createDataFrame(purchase_rows, PURCHASES_SCHEMA)
    return with_profile_metrics(totals, purchases, REC, F.lit(NOW))


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


def test_profile_columns_from_events_sessions_and_purchases(spark):
    actual = build(spark, EVENT_ROWS, SESSION_ROWS, PURCHASE_ROWS)
    expected = spark.createDataFrame(
        [
            # item 12: one view (1) + two purchases (2 x 5) = 11; item 11: view + cart = 4; item 10: view + click = 3
            (
                1,
                2,
                5,
                3,
                1,
                1,
                90.0,
                1 / 3,
                1.0,
                T0,
                T0 + timedelta(hours=5, minutes=1),
                2,
                20.0,
                [12, 11],
                NOW,
                180_000_000,
                {10: 3.0, 11: 4.0, 12: 1.0},
            ),
            (2, 1, 1, 0, 0, 1, 0.0, None, None, T0, T0, 0, None, [20], NOW, 0, {20: 3.0}),
            (3, 0, 0, 0, 0, 0, None, None, None, None, None, 1, 5.0, [30], NOW, 0, {}),  # purchases only
            (4, 0, 1, 1, 0, 0, None, 0.0, None, T0, T0, 0, None, [40], NOW, 0, {40: 1.0}),
        ],
        USER_PROFILES_SCHEMA,
    )
    # Maps cannot be sorted on, so rows are put in user order instead of ignore_row_order.
    assert_df_equality(actual.orderBy("user_id"), expected.orderBy("user_id"), ignore_nullable=True)


def test_no_input_gives_no_profiles(spark):
    assert build(spark, [], [], []).count() == 0
