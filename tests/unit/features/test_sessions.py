"""Sessionization: the gap boundary, one-event sessions, disorder, ties, and merging state."""

from datetime import datetime, timedelta, timezone

from chispa import assert_df_equality

from lib.core.schemas import SESSION_STATE_SCHEMA, VALID_EVENTS_SCHEMA
from lib.features.sessions import (
    event_fragments,
    is_closed,
    merge_sessions,
    sessionize,
    with_session_metrics,
)

GAP = 30 * 60
T0 = datetime(2024, 1, 1, 10, 0, 0)


def events_df(spark, rows):
    """rows: (user, item, type, ts); file order is list order."""
    return spark.createDataFrame(
        [(u, i, e, t, "f.csv", 0, n) for n, (u, i, e, t) in enumerate(rows)], VALID_EVENTS_SCHEMA
    )


def summary(df):
    cols = [
        "user_id",
        "session_start",
        "session_end",
        "num_events",
        "num_views",
        "num_clicks",
        "num_add_to_cart",
        "last_event",
    ]
    return df.select(*cols)


def test_gap_of_exactly_the_session_gap_continues_and_one_second_more_splits(spark):
    events = events_df(
        spark,
        [
            (1, 1, "view", T0),
            (1, 2, "click", T0 + timedelta(minutes=30)),  # exactly 30 min: same session
            (1, 3, "view", T0 + timedelta(minutes=60, seconds=1)),  # 30 min + 1 s: new session
        ],
    )
    actual = summary(sessionize(events, GAP))
    expected = spark.createDataFrame(
        [
            (1, T0, T0 + timedelta(minutes=30), 2, 1, 1, 0, "click"),
            (1, T0 + timedelta(minutes=60, seconds=1), T0 + timedelta(minutes=60, seconds=1), 1, 1, 0, 0, "view"),
        ],
        summary(actual).schema,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_out_of_order_events_give_the_same_sessions(spark):
    rows = [
        (2, 1, "view", T0),
        (2, 1, "click", T0 + timedelta(minutes=5)),
        (2, 1, "add_to_cart", T0 + timedelta(minutes=7)),
        (3, 9, "view", T0 + timedelta(hours=2)),
    ]
    in_order = summary(sessionize(events_df(spark, rows), GAP))
    shuffled = summary(sessionize(events_df(spark, [rows[2], rows[3], rows[0], rows[1]]), GAP))
    assert_df_equality(in_order, shuffled, ignore_row_order=True)
    [session] = in_order.where("user_id = 2").collect()
    assert (session.num_events, session.last_event) == (3, "add_to_cart")


def test_last_event_ties_on_timestamp_go_to_the_later_line(spark):
    events = events_df(spark, [(4, 1, "view", T0), (4, 1, "add_to_cart", T0), (4, 1, "click", T0)])
    [session] = sessionize(events, GAP).collect()
    assert session.last_event == "click"


def test_metrics_one_event_session_has_null_gap(spark):
    events = events_df(
        spark,
        [
            (5, 1, "view", T0),
            (5, 2, "view", T0 + timedelta(seconds=10)),
            (5, 3, "view", T0 + timedelta(seconds=40)),
            (6, 1, "view", T0),
        ],
    )
    rows = {r.user_id: r for r in with_session_metrics(sessionize(events, GAP)).collect()}
    assert rows[5].session_length_s == 40.0
    assert rows[5].avg_time_gap_s == 20.0
    assert rows[6].session_length_s == 0.0
    assert rows[6].avg_time_gap_s is None
    assert rows[5].session_id == f"5-{int(T0.replace(tzinfo=timezone.utc).timestamp() * 1_000_000)}"


def test_merging_state_fragments_equals_sessionizing_all_events(spark):
    earlier = [
        (7, 1, "view", T0),
        (7, 2, "view", T0 + timedelta(minutes=10)),
        (7, 3, "click", T0 + timedelta(minutes=80)),
        (7, 4, "view", T0 + timedelta(minutes=90)),
    ]
    # 10:35 joins the first session; 10:50 then bridges it to the 11:20 one (exactly 30 min).
    later = [(7, 5, "view", T0 + timedelta(minutes=35)), (7, 6, "add_to_cart", T0 + timedelta(minutes=50))]
    state = sessionize(events_df(spark, earlier), GAP)
    assert state.count() == 2
    incremental = merge_sessions(event_fragments(events_df(spark, later)).unionByName(state), GAP)
    batch = sessionize(events_df(spark, earlier + later), GAP)
    assert_df_equality(summary(incremental), summary(batch), ignore_row_order=True, ignore_nullable=True)
    [merged] = incremental.collect()
    assert (merged.session_start, merged.session_end, merged.num_events) == (T0, T0 + timedelta(minutes=90), 6)


def test_is_closed(spark):
    sessions = spark.createDataFrame(
        [
            (8, T0, T0, 1, 1, 0, 0, "view", None, None),
            (8, T0 + timedelta(hours=2), T0 + timedelta(hours=2), 1, 1, 0, 0, "view", None, None),
        ],
        SESSION_STATE_SCHEMA,
    )
    watermark = int((T0 + timedelta(minutes=31)).replace(tzinfo=timezone.utc).timestamp() * 1e6)
    flags = sessions.withColumn("closed", is_closed(watermark, GAP)).orderBy("session_start").collect()
    assert [r.closed for r in flags] == [True, False]
    assert sessions.withColumn("closed", is_closed(None, GAP)).where("closed").count() == 0


def test_empty_input(spark):
    assert sessionize(events_df(spark, []), GAP).count() == 0


def test_recent_events_keep_the_latest_twenty_in_time_order_across_merges(spark):
    rows = [(9, item, "view", T0 + timedelta(minutes=item)) for item in range(1, 26)]
    # Arrives in two batches, the later half first: the merge must still order by time.
    state = sessionize(events_df(spark, rows[12:]), GAP)
    merged = merge_sessions(event_fragments(events_df(spark, rows[:12])).unionByName(state), GAP)
    [session] = merged.collect()
    assert [e.item_id for e in session.recent_events] == list(range(6, 26))
    [batch] = sessionize(events_df(spark, rows), GAP).collect()
    assert batch.recent_events == session.recent_events
    [one] = sessionize(events_df(spark, rows[:1]), GAP).collect()
    assert [(e.item_id, e.event_type) for e in one.recent_events] == [(1, "view")]
