"""Sessionization: per user, events ordered by time; a gap strictly greater than the session
gap starts a new session (a gap of exactly the session gap continues it).

Sessions are computed by merging *fragments*: an event is a one-event fragment, and an open
session carried over from an earlier micro-batch is a fragment too. Merging fragments gives
the same sessions as sessionizing all their events at once, which is what makes the
incremental stream agree with a batch recomputation.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from lib.core.config import micros
from lib.core.schemas import (
    ADD_TO_CART,
    AVG_TIME_GAP_S,
    CLICK,
    EVENT_TS,
    EVENT_TYPE,
    ITEM_ID,
    LAST_EVENT,
    LAST_EVENT_KEY,
    NUM_ADD_TO_CART,
    NUM_CLICKS,
    NUM_EVENTS,
    NUM_VIEWS,
    RECENT_EVENTS,
    SESSION_END,
    SESSION_ID,
    SESSION_LENGTH_S,
    SESSION_START,
    SESSION_STATE_SCHEMA,
    SOURCE_FILE,
    USER_ID,
    VIEW,
)

_COUNT_COLUMNS = (NUM_EVENTS, NUM_VIEWS, NUM_CLICKS, NUM_ADD_TO_CART)

# Events of a session kept for live re-ranking: enough context, bounded state.
RECENT_EVENTS_KEPT = 20


def _micros(column: str):
    return F.unix_micros(F.col(column))


def event_fragments(events: DataFrame) -> DataFrame:
    """One single-event session fragment per event (``SESSION_STATE_SCHEMA``)."""

    def count_of(event_type: str):
        return (F.col(EVENT_TYPE) == event_type).cast("long")

    return events.select(
        F.col(USER_ID),
        F.col(EVENT_TS).alias(SESSION_START),
        F.col(EVENT_TS).alias(SESSION_END),
        F.lit(1).cast("long").alias(NUM_EVENTS),
        count_of(VIEW).alias(NUM_VIEWS),
        count_of(CLICK).alias(NUM_CLICKS),
        count_of(ADD_TO_CART).alias(NUM_ADD_TO_CART),
        F.col(EVENT_TYPE).alias(LAST_EVENT),
        F.struct(EVENT_TS, SOURCE_FILE, "file_block_start", "line_id").alias(LAST_EVENT_KEY),
        F.array(F.struct(EVENT_TS, ITEM_ID, EVENT_TYPE)).alias(RECENT_EVENTS),
    )


def _latest(events, keep: int):
    """The last ``keep`` elements of an array sorted ascending (all of it when shorter)."""
    return F.slice(events, F.greatest(F.size(events) - keep + 1, F.lit(1)), keep)


def starts_new_session(previous_end_micros: Column, start_micros: Column, gap_seconds: float) -> Column:
    """True where an event (or fragment) starting at ``start_micros`` opens a new session: the
    user's previous one ended more than the gap before it, or there is none."""
    return previous_end_micros.isNull() | (start_micros - previous_end_micros > micros(gap_seconds))


def merge_sessions(fragments: DataFrame, gap_seconds: float) -> DataFrame:
    """Merge fragments of each user into sessions; returns ``SESSION_STATE_SCHEMA`` rows."""
    ordered = Window.partitionBy(USER_ID).orderBy(SESSION_START, SESSION_END)
    previous_end = F.max(_micros(SESSION_END)).over(ordered.rowsBetween(Window.unboundedPreceding, -1))
    starts_session = starts_new_session(previous_end, _micros(SESSION_START), gap_seconds).cast("long")
    numbered = fragments.withColumn("_starts", starts_session).withColumn(
        "_session_seq", F.sum("_starts").over(ordered.rowsBetween(Window.unboundedPreceding, 0))
    )
    return (
        numbered.groupBy(USER_ID, "_session_seq")
        .agg(
            F.min(SESSION_START).alias(SESSION_START),
            F.max(SESSION_END).alias(SESSION_END),
            *[F.sum(c).alias(c) for c in _COUNT_COLUMNS],
            F.max_by(LAST_EVENT, LAST_EVENT_KEY).alias(LAST_EVENT),
            F.max(LAST_EVENT_KEY).alias(LAST_EVENT_KEY),
            _latest(F.array_sort(F.flatten(F.collect_list(RECENT_EVENTS))), RECENT_EVENTS_KEPT).alias(RECENT_EVENTS),
        )
        .select(*SESSION_STATE_SCHEMA.fieldNames())
    )


def sessionize(events: DataFrame, gap_seconds: float) -> DataFrame:
    """All sessions of ``events`` at once (the batch recomputation the stream must agree with)."""
    return merge_sessions(event_fragments(events), gap_seconds)


def with_session_metrics(sessions: DataFrame) -> DataFrame:
    """Add ``session_id``, ``session_length_s`` and ``avg_time_gap_s``.

    The mean gap between consecutive events telescopes to ``length / (num_events - 1)``.
    The id is stable: user and start time, which identify a session.
    """
    length = (_micros(SESSION_END) - _micros(SESSION_START)) / F.lit(1_000_000.0)
    return (
        sessions.withColumn(SESSION_ID, F.format_string("%d-%d", F.col(USER_ID), _micros(SESSION_START)))
        .withColumn(SESSION_LENGTH_S, length)
        .withColumn(
            AVG_TIME_GAP_S,
            F.when(F.col(NUM_EVENTS) > 1, F.col(SESSION_LENGTH_S) / (F.col(NUM_EVENTS) - 1)),
        )
    )


def is_closed(watermark_micros: int | None, gap_seconds: float):
    """True for sessions whose ``session_end + gap`` the watermark has passed."""
    if watermark_micros is None:
        return F.lit(False)
    return _micros(SESSION_END) + micros(gap_seconds) < F.lit(watermark_micros)
