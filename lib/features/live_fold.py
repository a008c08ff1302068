"""The live fold: a micro-batch's events folded into each user's open sessions, vectorised (pandas
and numpy on the driver; no Python loop per event or per user).

The contract's rules: per user, sessions are merged from *fragments*
(an open session carried over, or one event), ordered by start; a fragment starting more than
``gap`` after the latest end before it opens a new session (a gap of exactly ``gap`` continues
it). Merging fragments gives the sessions of all their events at once, so folding batch after
batch agrees with a batch recomputation.

Watermark: ``the latest event time admitted so far - watermark delay``, as of the start of the
batch. Events older than it are late: they are dropped from the sessions (and counted). After the
batch, a session is closed when the new watermark has passed ``session_end + gap``.

Times are microseconds since the epoch (int64). Sessions are ``SESSION_COLUMNS`` frames; the
latest events of each session (at most ``RECENT_EVENTS_KEPT``, the context of live re-ranking) are
``RECENT_COLUMNS`` frames keyed by ``user_id, session_start``.

Example::

    folded = fold_events(open_sessions, open_recent, events, gap_micros, watermark_before, delay_micros)
    folded.sessions  # every session of the batch's users after it, with ``is_open``
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lib.core.schemas import (
    ADD_TO_CART,
    CLICK,
    EVENT_TS,
    EVENT_TYPE,
    IS_OPEN,
    ITEM_ID,
    LAST_EVENT,
    NUM_ADD_TO_CART,
    NUM_CLICKS,
    NUM_EVENTS,
    NUM_VIEWS,
    SESSION_END,
    SESSION_START,
    SOURCE_FILE,
    USER_ID,
    VIEW,
)

COUNT_COLUMNS = (NUM_EVENTS, NUM_VIEWS, NUM_CLICKS, NUM_ADD_TO_CART)
# The position of a session's latest event: ties of event time are broken by file, then place in it.
LAST_KEY_COLUMNS = ("last_ts", "last_file", "last_block", "last_line")
SESSION_COLUMNS = (USER_ID, SESSION_START, SESSION_END, *COUNT_COLUMNS, LAST_EVENT, *LAST_KEY_COLUMNS)
RECENT_COLUMNS = (USER_ID, SESSION_START, EVENT_TS, ITEM_ID, EVENT_TYPE)
EVENT_COLUMNS = (USER_ID, ITEM_ID, EVENT_TYPE, EVENT_TS, SOURCE_FILE, "file_block_start", "line_id")

# The latest events kept per open session: the context of live re-ranking.
RECENT_EVENTS_KEPT = 20


def empty_sessions() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in SESSION_COLUMNS})


def empty_recent() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in RECENT_COLUMNS})


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the fold's column types (a frame read from the store may have object columns)."""
    return frame.astype({c: _dtype(c) for c in frame.columns if c in (*SESSION_COLUMNS, *RECENT_COLUMNS)})


def _dtypes(columns) -> dict:
    """The dtype of each column (a frame read from the store has object columns when empty)."""
    return {c: _dtype(c) for c in columns}


def _dtype(column: str):
    return object if column in (LAST_EVENT, "last_file", EVENT_TYPE, SOURCE_FILE) else np.int64


@dataclass(frozen=True)
class FoldedBatch:
    """The batch's users after it: every session that holds their open state or the batch's
    events, with ``is_open``; their latest events; what the batch counted."""

    sessions: pd.DataFrame  # SESSION_COLUMNS + IS_OPEN, one row per session, by user then start
    recent: pd.DataFrame  # RECENT_COLUMNS of those sessions, oldest first
    late_rows: int
    max_event_micros: int | None  # the latest event time admitted, this batch included
    watermark_micros: int | None  # after the batch

    def latest_per_user(self) -> pd.DataFrame:
        """Each user's session with the latest start (the one ``live_sessions`` shows)."""
        return self.sessions.groupby(USER_ID, sort=False).tail(1)


def session_ids(sessions: pd.DataFrame) -> pd.Series:
    """The stable id of each session (``SESSION_COLUMNS`` rows): ``<user>-<start in micros>``."""
    return sessions[USER_ID].astype(str) + "-" + sessions[SESSION_START].astype(str)


def event_fragments(events: pd.DataFrame) -> pd.DataFrame:
    """One single-event session per event (``SESSION_COLUMNS``)."""
    event_type = events[EVENT_TYPE]
    ts = events[EVENT_TS].to_numpy(np.int64)
    return pd.DataFrame(
        {
            USER_ID: events[USER_ID].to_numpy(np.int64),
            SESSION_START: ts,
            SESSION_END: ts,
            NUM_EVENTS: np.ones(len(events), np.int64),
            NUM_VIEWS: (event_type == VIEW).to_numpy(np.int64),
            NUM_CLICKS: (event_type == CLICK).to_numpy(np.int64),
            NUM_ADD_TO_CART: (event_type == ADD_TO_CART).to_numpy(np.int64),
            LAST_EVENT: event_type.to_numpy(object),
            "last_ts": ts,
            "last_file": events[SOURCE_FILE].to_numpy(object),
            "last_block": events["file_block_start"].to_numpy(np.int64),
            "last_line": events["line_id"].to_numpy(np.int64),
        }
    )


def merge_fragments(fragments: pd.DataFrame, gap_micros: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Sessions from fragments (``SESSION_COLUMNS``), by user then start, and for each fragment
    (in the order given) the row of the session it fell into."""
    order = np.lexsort((fragments[SESSION_END].to_numpy(), fragments[SESSION_START].to_numpy(), fragments[USER_ID]))
    ordered = fragments.iloc[order].reset_index(drop=True)
    users = ordered[USER_ID].to_numpy()
    first_of_user = np.r_[True, users[1:] != users[:-1]]
    latest_end = ordered.groupby(USER_ID, sort=False)[SESSION_END].cummax().to_numpy()
    previous_end = np.r_[0, latest_end[:-1]]
    starts = first_of_user | (ordered[SESSION_START].to_numpy() - previous_end > gap_micros)
    session = np.cumsum(starts) - 1
    ordered["_session"] = session

    # The latest event of a session: the greatest (time, file, block, line) among its fragments.
    by_key = ordered.sort_values(["_session", *LAST_KEY_COLUMNS], kind="stable").groupby("_session").tail(1)
    grouped = ordered.groupby("_session", sort=True)
    sessions = pd.DataFrame(
        {
            USER_ID: grouped[USER_ID].first(),
            SESSION_START: grouped[SESSION_START].min(),
            SESSION_END: grouped[SESSION_END].max(),
            **{c: grouped[c].sum() for c in COUNT_COLUMNS},
        }
    )
    last = by_key.set_index("_session")[[LAST_EVENT, *LAST_KEY_COLUMNS]]
    sessions = sessions.join(last).reset_index(drop=True)
    row_of_fragment = np.empty(len(order), np.int64)
    row_of_fragment[order] = session
    return sessions[list(SESSION_COLUMNS)], row_of_fragment


def fold_events(
    open_sessions: pd.DataFrame,
    open_recent: pd.DataFrame,
    events: pd.DataFrame,
    gap_micros: int,
    max_event_before: int | None,
    delay_micros: int,
) -> FoldedBatch:
    """Fold a batch's valid ``events`` (``EVENT_COLUMNS``, times in micros) into the open
    sessions of their users.

    :param open_sessions: the open sessions of (at least) the batch's users before it.
    :param open_recent: their latest events.
    :param max_event_before: the latest event time admitted before the batch (None: none yet).
    """
    watermark_before = None if max_event_before is None else max_event_before - delay_micros
    times = events[EVENT_TS].to_numpy(np.int64)
    late = times < watermark_before if watermark_before is not None else np.zeros(len(events), bool)
    on_time = events[~late]
    max_event = max([t for t in (max_event_before, times[~late].max(initial=np.iinfo(np.int64).min)) if t is not None])
    max_event = None if max_event == np.iinfo(np.int64).min else int(max_event)
    watermark_after = None if max_event is None else max_event - delay_micros

    users = pd.unique(on_time[USER_ID])
    carried = open_sessions[open_sessions[USER_ID].isin(users)]
    fragments = pd.concat([carried, event_fragments(on_time)], ignore_index=True).astype(_dtypes(SESSION_COLUMNS))
    if fragments.empty:
        return FoldedBatch(
            _with_open(empty_sessions(), None, gap_micros), empty_recent(), int(late.sum()), max_event, watermark_after
        )
    sessions, _ = merge_fragments(fragments, gap_micros)

    recent_before = open_recent[open_recent[USER_ID].isin(users)][[USER_ID, EVENT_TS, ITEM_ID, EVENT_TYPE]]
    recent_new = on_time[[USER_ID, EVENT_TS, ITEM_ID, EVENT_TYPE]]
    recent = pd.concat([recent_before, recent_new], ignore_index=True).astype(_dtypes(recent_new.columns))
    recent[SESSION_START] = _session_start_of(recent, sessions)
    recent = (
        recent.sort_values([USER_ID, SESSION_START, EVENT_TS, ITEM_ID, EVENT_TYPE], kind="stable")
        .groupby([USER_ID, SESSION_START], sort=False)
        .tail(RECENT_EVENTS_KEPT)[list(RECENT_COLUMNS)]
        .reset_index(drop=True)
    )
    return FoldedBatch(
        _with_open(sessions, watermark_after, gap_micros), recent, int(late.sum()), max_event, watermark_after
    )


def _session_start_of(events: pd.DataFrame, sessions: pd.DataFrame) -> np.ndarray:
    """The start of the session (of the same user) that each event falls in: the user's last
    session starting at or before the event."""
    keyed = events[[USER_ID, EVENT_TS]].assign(_row=np.arange(len(events))).sort_values(EVENT_TS, kind="stable")
    starts = sessions[[USER_ID, SESSION_START]].sort_values(SESSION_START, kind="stable")
    matched = pd.merge_asof(keyed, starts, left_on=EVENT_TS, right_on=SESSION_START, by=USER_ID, direction="backward")
    result = np.empty(len(events), np.int64)
    result[matched["_row"].to_numpy()] = matched[SESSION_START].to_numpy(np.int64)
    return result


def _with_open(sessions: pd.DataFrame, watermark_micros: int | None, gap_micros: int) -> pd.DataFrame:
    is_open = np.ones(len(sessions), bool)
    if watermark_micros is not None:
        is_open = ~(sessions[SESSION_END].to_numpy(np.int64) + gap_micros < watermark_micros)
    return sessions.assign(**{IS_OPEN: is_open})
