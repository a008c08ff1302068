"""with_purchase_history: strictly-before-the-event's-day semantics, users without purchases."""

from datetime import date, datetime

from chispa import assert_df_equality
from pyspark.sql.types import DoubleType, IntegerType, LongType, StructField, StructType, TimestampType

from lib.core.schemas import PURCHASES_SCHEMA
from lib.ingest.enrich import with_purchase_history

EVENTS_SCHEMA = StructType([StructField("user_id", IntegerType()), StructField("event_ts", TimestampType())])
EXPECTED_SCHEMA = StructType(
    EVENTS_SCHEMA.fields
    + [StructField("past_purchases", LongType(), False), StructField("avg_purchase_amount", DoubleType())]
)


def test_only_purchases_before_the_event_day_count(spark):
    purchases = spark.createDataFrame(
        [
            (1, 100, 30.0, date(2023, 12, 31)),
            (1, 101, 10.0, date(2024, 1, 1)),  # the day before: counted
            (1, 102, 20.0, date(2024, 1, 2)),  # the day of the event: not counted
            (3, 103, 50.0, date(2024, 1, 1)),
            (None, 104, 999.0, date(2023, 1, 1)),  # no user: matches nobody
            (4, 105, None, date(2023, 1, 1)),  # no amount: a purchase, but not in the mean
            (4, 106, 8.0, date(2023, 1, 1)),
        ],
        PURCHASES_SCHEMA,
    )
    events = spark.createDataFrame(
        [
            (1, datetime(2024, 1, 2, 23, 59, 59)),
            (1, datetime(2024, 1, 1, 0, 0, 0)),
            (2, datetime(2024, 1, 2, 10, 0)),  # never purchased
            (3, datetime(2024, 1, 2, 0, 0, 0)),  # midnight: yesterday's purchase counts
            (4, datetime(2024, 1, 2, 0, 0, 0)),
        ],
        EVENTS_SCHEMA,
    )
    actual = with_purchase_history(events, purchases, as_of="event_ts").select(*EXPECTED_SCHEMA.fieldNames())
    expected = spark.createDataFrame(
        [
            (1, datetime(2024, 1, 2, 23, 59, 59), 2, 20.0),
            (1, datetime(2024, 1, 1, 0, 0, 0), 1, 30.0),
            (2, datetime(2024, 1, 2, 10, 0), 0, None),
            (3, datetime(2024, 1, 2, 0, 0, 0), 1, 50.0),
            (4, datetime(2024, 1, 2, 0, 0, 0), 2, 8.0),
        ],
        EXPECTED_SCHEMA,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_empty_purchase_history(spark):
    purchases = spark.createDataFrame([], PURCHASES_SCHEMA)
    events = spark.createDataFrame([(7, datetime(2024, 1, 1))], EVENTS_SCHEMA)
    [row] = with_purchase_history(events, purchases, as_of="event_ts").collect()
    assert (row.past_purchases, row.avg_purchase_amount) == (0, None)
