"""A batch's live updates: one row per user it touched, whether the user is re-ranked, the
session it closed; and the pool of sessions a later batch folds them with."""

from datetime import datetime, timedelta

from chispa import assert_df_equality
from pyspark.sql import functions as F
from pyspark.sql.types import BooleanType, IntegerType, LongType, StructField, StructType, TimestampType

from lib.core.config import load_config
from lib.core.schemas import SESSION_START, USER_ID, VALID_EVENTS_SCHEMA
from lib.features.live_updates import (
    CLOSED,
    CLOSED_SESSION,
    RANKED,
    UPDATE_BATCH,
    batch_changes,
    live_updates,
    session_pool,
    updates_after,
)
from lib.features.sessions import event_fragments, latest_session_per_user, merge_sessions

GAP = 30 * 60
T0 = datetime(2024, 1, 1, 10, 0, 0)
REC = load_config(None, []).recommend
SUMMARY = StructType(
    [
        StructField(USER_ID, IntegerType()),
        StructField("num_events", LongType()),
        StructField(RANKED, BooleanType()),
        StructField("closed_start", TimestampType()),
        StructField(UPDATE_BATCH, LongType()),
    ]
)


def events_df(spark, rows):
    return spark.createDataFrame(
        [(u, i, e, t, "f.csv", 0, n) for n, (u, i, e, t) in enumerate(rows)], VALID_EVENTS_SCHEMA
    )


def sessions_after(spark, on_time, closed):
    """The sessions of ``on_time`` events, those where ``closed`` holds closed (as a batch computes them)."""
    merged = merge_sessions(event_fragments(events_df(spark, on_time)), GAP)
    return merged.withColumn(CLOSED, closed)


def summary(updates):
    return updates.select(
        USER_ID, "num_events", RANKED, F.col(f"{CLOSED_SESSION}.{SESSION_START}").alias("closed_start"), UPDATE_BATCH
    )


ON_TIME = [
    (1, 10, "view", T0),  # user 1: a session that closes, then an open one
    (1, 11, "view", T0 + timedelta(hours=2)),
    (2, 20, "click", T0),  # user 2: one session that closes, two hours before a second one closes
    (2, 21, "view", T0 + timedelta(hours=3)),
    (4, 40, "view", T0),  # user 4: a session from the state that closes; no events this batch
]
LATE = [(3, 30, "view", T0 - timedelta(days=1))]  # user 3: a late event only, no session


def test_one_row_per_touched_user_with_ranking_and_the_latest_closed_session(spark):
    closed = F.col(USER_ID).isin(2, 4) | ((F.col(USER_ID) == 1) & (F.col(SESSION_START) == F.lit(T0)))
    sessions = sessions_after(spark, ON_TIME, closed)
    events = events_df(spark, [e for e in ON_TIME if e[0] != 4] + LATE)
    actual = summary(live_updates(batch_changes(events, sessions, REC, has_events=True), sessions, 7))
    expected = spark.createDataFrame(
        [
            (1, 2, True, T0, 7),
            (2, 2, True, T0 + timedelta(hours=3), 7),  # the later of its two closed sessions
            (3, 1, False, None, 7),  # events but no session: not re-ranked
            (4, 0, False, T0, 7),  # a closed session without events
        ],
        SUMMARY,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_no_events_and_no_closed_sessions_give_no_updates(spark):
    sessions = sessions_after(spark, ON_TIME, F.lit(False))
    changes = batch_changes(events_df(spark, []), sessions, REC, has_events=False)
    assert changes.ranked is None
    assert live_updates(changes, sessions, 0).count() == 0


def test_the_pool_holds_the_open_sessions_and_the_closed_ones_of_the_updates_after_a_batch(spark):
    def updates(on_time, sessions, batch_id):
        return live_updates(
            batch_changes(events_df(spark, on_time), sessions, REC, has_events=True), sessions, batch_id
        )

    first = updates(ON_TIME, sessions_after(spark, ON_TIME, F.col(USER_ID) == 2), 1)
    later_on_time = [(2, 22, "view", T0 + timedelta(hours=9))]
    later = sessions_after(spark, later_on_time, F.lit(False))
    second = updates(later_on_time, later, 2)
    both = first.unionByName(second)

    pool = session_pool(later.where(~F.col(CLOSED)), updates_after(both, 0))
    latest = latest_session_per_user(pool.where(F.col(USER_ID) == 2)).select(USER_ID, SESSION_START, CLOSED)
    expected = spark.createDataFrame(
        [(2, T0 + timedelta(hours=9), False)],  # the open session is later than the closed ones
        "user_id int, session_start timestamp, _closed boolean",
    )
    assert_df_equality(latest, expected, ignore_row_order=True, ignore_nullable=True)

    # Once batch 1 is folded, its closed sessions are not in the pool of what is left.
    assert session_pool(later.where(F.lit(False)), updates_after(both, 1)).count() == 0
