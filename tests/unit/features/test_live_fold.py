"""fold_events: folding batch after batch gives the sessions of all events at once (the contract's
rules, checked against the independent pandas reference), with the edge cases of a live fold."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from lib.features.live_fold import (
    RECENT_COLUMNS,
    RECENT_EVENTS_KEPT,
    SESSION_COLUMNS,
    empty_recent,
    empty_sessions,
    fold_events,
)
from tests.integration import reference

GAP = 30 * 60 * 1_000_000
DELAY = 10 * 60 * 1_000_000
T0 = datetime(2024, 1, 1)


def micros(moment: datetime) -> int:
    return int((moment - datetime(1970, 1, 1)) / timedelta(microseconds=1))


def events_frame(rows, file="f.csv", first_line=0) -> pd.DataFrame:
    """rows: (user, item, type, datetime)."""
    return pd.DataFrame(
        {
            "user_id": np.array([r[0] for r in rows], np.int64),
            "item_id": np.array([r[1] for r in rows], np.int64),
            "event_type": [r[2] for r in rows],
            "event_ts": np.array([micros(r[3]) for r in rows], np.int64),
            "source_file": [file] * len(rows),
            "file_block_start": np.zeros(len(rows), np.int64),
            "line_id": np.arange(first_line, first_line + len(rows), dtype=np.int64),
        }
    )


class Folder:
    """Folds batches as the stream does: open sessions carried, closed ones set aside."""

    def __init__(self, delay=DELAY):
        self.open, self.recent, self.closed = empty_sessions(), empty_recent(), []
        self.max_event, self.delay, self.late = None, delay, 0

    def fold(self, rows, file="f.csv"):
        folded = fold_events(self.open, self.recent, events_frame(rows, file), GAP, self.max_event, self.delay)
        touched = set(folded.sessions.user_id)
        kept = self.open[~self.open.user_id.isin(touched)]
        # Sessions of users without events this batch close as the watermark passes them too.
        if folded.watermark_micros is not None:
            closing = kept.session_end + GAP < folded.watermark_micros
            self.closed.append(kept[closing])
            kept = kept[~closing]
        self.closed.append(folded.sessions[~folded.sessions.is_open][list(SESSION_COLUMNS)])
        still_open = folded.sessions[folded.sessions.is_open][list(SESSION_COLUMNS)]
        self.open = pd.concat([kept, still_open], ignore_index=True)
        open_keys = set(zip(self.open.user_id, self.open.session_start))
        recent = pd.concat([self.recent[~self.recent.user_id.isin(touched)], folded.recent], ignore_index=True)
        self.recent = recent[[k in open_keys for k in zip(recent.user_id, recent.session_start)]]
        self.max_event, self.late = folded.max_event_micros, self.late + folded.late_rows
        return folded

    def all_sessions(self) -> pd.DataFrame:
        return pd.concat([*self.closed, self.open], ignore_index=True)


def comparable(sessions: pd.DataFrame) -> set[tuple]:
    return {
        (
            r.user_id,
            r.session_start,
            r.session_end,
            r.num_events,
            r.num_views,
            r.num_clicks,
            r.num_add_to_cart,
            r.last_event,
        )
        for r in sessions.itertuples()
    }


def test_folding_random_batches_equals_sessionizing_everything_at_once():
    rng = random.Random(11)
    rows, clock = [], {u: T0 for u in range(1, 16)}
    for _ in range(600):
        user = rng.randint(1, 15)
        clock[user] += timedelta(seconds=rng.choice([5, 60, 600, 1800, 1801, 4000]))
        rows.append((user, rng.randint(1, 30), rng.choice(["view", "click", "add_to_cart"]), clock[user]))
    folder = Folder(delay=10**15)  # nothing is late, nothing closes: every event stays in the sessions
    for start in range(0, len(rows), 97):
        folder.fold(rows[start : start + 97], file=f"f{start:05d}.csv")

    events = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "event_ts"])
    events["file"] = [f"f{(i // 97) * 97:05d}.csv" for i in range(len(rows))]
    events["line"] = range(len(rows))
    expected = reference.sessions(events, GAP / 1e6)
    expected["session_start"] = expected.session_start.map(micros)
    expected["session_end"] = expected.session_end.map(micros)
    assert comparable(folder.all_sessions()) == comparable(expected)


def test_a_gap_inside_one_batch_splits_and_exactly_the_gap_continues():
    folded = Folder().fold(
        [
            (1, 1, "view", T0),
            (1, 2, "click", T0 + timedelta(minutes=30)),  # exactly the gap: same session
            (1, 3, "view", T0 + timedelta(minutes=60, microseconds=1)),  # just over: a new one
        ]
    )
    assert folded.sessions[["session_start", "num_events"]].values.tolist() == [
        [micros(T0), 2],
        [micros(T0 + timedelta(minutes=60, microseconds=1)), 1],
    ]


def test_a_session_continues_across_batches_and_keeps_its_latest_events():
    folder = Folder()
    folder.fold([(7, i, "view", T0 + timedelta(minutes=i)) for i in range(15)], file="a.csv")
    folded = folder.fold([(7, 100 + i, "click", T0 + timedelta(minutes=15 + i)) for i in range(10)], file="b.csv")
    [session] = folded.sessions.itertuples()
    assert (session.num_events, session.num_views, session.num_clicks, session.last_event) == (25, 15, 10, "click")
    assert session.session_start == micros(T0) and session.is_open
    assert list(folded.recent.columns) == list(RECENT_COLUMNS)
    assert len(folded.recent) == RECENT_EVENTS_KEPT
    assert folded.recent.item_id.tolist() == [*range(5, 15), *range(100, 110)]


def test_an_out_of_order_event_bridges_two_open_sessions():
    folder = Folder()
    folder.fold([(3, 1, "view", T0), (3, 2, "view", T0 + timedelta(minutes=35))])  # watermark 0:25
    assert len(folder.open) == 2
    folded = folder.fold([(3, 3, "add_to_cart", T0 + timedelta(minutes=28))])
    [session] = folded.sessions.itertuples()
    assert (session.num_events, session.last_event) == (3, "view")  # the latest event by time


def test_late_events_are_dropped_and_counted_and_sessions_close_behind_the_watermark():
    folder = Folder()
    folder.fold([(1, 1, "view", T0), (2, 1, "view", T0)])
    folded = folder.fold([(2, 3, "view", T0 + timedelta(hours=2))])  # watermark after: 1:50
    assert folded.watermark_micros == micros(T0 + timedelta(hours=1, minutes=50))
    assert folded.sessions.is_open.tolist() == [False, True]  # user 2's old session closes, the new is open
    folded = folder.fold([(1, 4, "add_to_cart", T0 + timedelta(minutes=20)), (3, 5, "view", T0 + timedelta(hours=2))])
    assert folded.late_rows == 1
    assert folded.sessions.user_id.tolist() == [3]
    assert comparable(pd.concat(folder.closed)) == {
        (1, micros(T0), micros(T0), 1, 1, 0, 0, "view"),
        (2, micros(T0), micros(T0), 1, 1, 0, 0, "view"),
    }


def test_a_user_with_one_event_has_a_one_event_session_and_an_empty_batch_changes_nothing():
    folder = Folder()
    folded = folder.fold([(9, 4, "click", T0)])
    assert folded.sessions[["user_id", "num_events", "num_clicks", "last_event"]].values.tolist() == [
        [9, 1, 1, "click"]
    ]
    empty = folder.fold([])
    assert empty.sessions.empty and empty.late_rows == 0 and empty.max_event_micros == micros(T0)


def test_ties_in_time_take_the_latest_line_as_the_last_event():
    folded = Folder().fold([(5, 1, "view", T0), (5, 2, "add_to_cart", T0), (5, 3, "click", T0)])
    assert folded.sessions.last_event.tolist() == ["click"]
