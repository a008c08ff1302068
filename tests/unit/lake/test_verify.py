"""The verifier's own session oracle (Spark's session_window) against the contract's rule, and
against the stream's sessionization (the live fold) on the same events."""

import random
from datetime import datetime, timedelta

import pandas as pd
from chispa import assert_df_equality
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StructField, StructType

from lib.core.config import micros
from lib.core.schemas import (
    EVENT_TS,
    EVENT_TYPE,
    IS_OPEN,
    ITEM_ID,
    SESSION_FEATURES_SCHEMA,
    SOURCE_FILE,
    USER_ID,
    VALID_EVENTS_SCHEMA,
)
from lib.features.live_fold import empty_recent, empty_sessions, fold_events
from lib.lake.verify import SESSION_KEYS, closed_sessions

GAP = 30 * 60
T0 = datetime(2024, 1, 1, 10, 0, 0)
EPOCH = datetime(1970, 1, 1)
# The verifier's events: a manifest's file name and line number.
ORACLE_EVENTS_SCHEMA = StructType(
    [VALID_EVENTS_SCHEMA[c] for c in (USER_ID, ITEM_ID, EVENT_TYPE, EVENT_TS, SOURCE_FILE)]
    + [StructField("line", LongType())]
)
# The session_features columns the verifier compares.
SESSIONS_SCHEMA = StructType([SESSION_FEATURES_SCHEMA[c] for c in SESSION_KEYS])


def oracle_events(spark, rows):
    """rows: (user, item, type, ts, file, line)."""
    return spark.createDataFrame(rows, ORACLE_EVENTS_SCHEMA)


def micros_of(spark, ts: datetime) -> int:
    """A timestamp as the session time zone reads it, in microseconds since the epoch."""
    return spark.range(1).select(F.unix_micros(F.lit(ts))).first()[0]


def test_oracle_splits_only_on_a_gap_strictly_greater_than_the_session_gap(spark):
    rows = [
        (1, 1, "view", T0, "a.csv", 2),
        (1, 2, "click", T0 + timedelta(minutes=30), "a.csv", 3),  # exactly the gap: same session
        (1, 3, "view", T0 + timedelta(minutes=60, microseconds=1), "a.csv", 4),  # a microsecond more: new
        (2, 4, "add_to_cart", T0, "a.csv", 5),  # one event
        (2, 5, "view", T0, "b.csv", 2),  # same time, later file: the last event
        (3, None, "view", T0 + timedelta(hours=5), "b.csv", 3),  # still open at the watermark
    ]
    watermark = micros_of(spark, T0 + timedelta(hours=5))
    actual = closed_sessions(oracle_events(spark, rows), GAP, watermark)
    expected = spark.createDataFrame(
        [
            (1, T0, T0 + timedelta(minutes=30), 2, 1, 1, 0, "click"),
            (1, *(T0 + timedelta(minutes=60, microseconds=1),) * 2, 1, 1, 0, 0, "view"),
            (2, T0, T0, 2, 1, 0, 1, "view"),
        ],
        SESSIONS_SCHEMA,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_oracle_closes_nothing_without_a_watermark_and_nothing_from_no_events(spark):
    rows = [(1, 1, "view", T0, "a.csv", 2)]
    assert closed_sessions(oracle_events(spark, rows), GAP, None).count() == 0
    assert closed_sessions(oracle_events(spark, []), GAP, micros_of(spark, T0)).count() == 0


def test_oracle_agrees_with_the_streams_sessionization_on_random_activity(spark):
    """Two independent implementations of one rule: the same closed sessions."""
    rng = random.Random(11)
    rows, line = [], 0
    for user in range(1, 30):
        ts = T0
        for _ in range(rng.randint(1, 25)):
            ts += timedelta(seconds=rng.choice([0, 1, 60, 600, GAP - 1, GAP, GAP + 1, 3 * GAP]))
            line += 1
            rows.append((user, rng.randint(1, 9), rng.choice(["view", "click", "add_to_cart"]), ts, "f.csv", line))
    rng.shuffle(rows)
    events = oracle_events(spark, rows)
    watermark = micros_of(spark, max(r[3] for r in rows)) - micros(10 * 60)
    frame = pd.DataFrame(rows, columns=[USER_ID, ITEM_ID, EVENT_TYPE, EVENT_TS, SOURCE_FILE, "line_id"])
    frame[EVENT_TS] = [(ts - EPOCH) // timedelta(microseconds=1) for ts in frame[EVENT_TS]]
    frame["file_block_start"] = 0
    # The stream's sessions: one fold of all the events, its watermark 10 minutes behind the latest.
    folded = fold_events(empty_sessions(), empty_recent(), frame, micros(GAP), None, micros(10 * 60))
    closed = folded.sessions[~folded.sessions[IS_OPEN]]
    by_stream = spark.createDataFrame(
        [
            (
                int(r.user_id),
                EPOCH + timedelta(microseconds=int(r.session_start)),
                EPOCH + timedelta(microseconds=int(r.session_end)),
                int(r.num_events),
                int(r.num_views),
                int(r.num_clicks),
                int(r.num_add_to_cart),
                r.last_event,
            )
            for r in closed.itertuples()
        ],
        SESSIONS_SCHEMA,
    )
    by_oracle = closed_sessions(events, GAP, watermark)
    assert by_oracle.count() > 20
    assert_df_equality(by_oracle, by_stream, ignore_row_order=True, ignore_nullable=True)
