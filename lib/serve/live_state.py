"""The live state of the hot micro-batch, kept in the online store's SQLite file: each user's open
sessions and their latest events, the latest event time admitted (the watermark's base), and the
last batch applied. A batch is applied in one transaction with the documents it serves
(``live_sessions``), so the store and the stream's checkpoint always agree on what was folded: a
replayed batch (its id at or below the last applied) changes nothing.

Needs no Spark. ``lib.features.live_fold`` computes what a batch changes; this module reads what it
needs (the open sessions of the batch's users) and writes the outcome.

Example::

    state = LiveState("data/online/streamrec.sqlite")
    sessions, recent, max_event = state.read_open([1, 2, 3])
    state.apply(batch_id, folded, session_docs, gap_micros)
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from lib.core.schemas import IS_OPEN, SESSION_END, USER_ID
from lib.features.live_fold import RECENT_COLUMNS, SESSION_COLUMNS, FoldedBatch
from lib.serve.online_store import SQLiteStore

_STATE_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS open_sessions (user_id INTEGER NOT NULL, session_start INTEGER NOT NULL, "
    "session_end INTEGER NOT NULL, num_events INTEGER, num_views INTEGER, num_clicks INTEGER, "
    "num_add_to_cart INTEGER, last_event TEXT, last_ts INTEGER, last_file TEXT, last_block INTEGER, "
    "last_line INTEGER, PRIMARY KEY (user_id, session_start)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS open_sessions_by_end ON open_sessions (session_end)",
    "CREATE TABLE IF NOT EXISTS recent_events (user_id INTEGER NOT NULL, session_start INTEGER NOT NULL, "
    "event_ts INTEGER NOT NULL, item_id INTEGER, event_type TEXT)",
    "CREATE INDEX IF NOT EXISTS recent_events_by_user ON recent_events (user_id)",
]
_USERS = "SELECT value FROM json_each(?)"


class LiveState:
    """The live fold's state in the SQLite store at ``path`` (created with it)."""

    def __init__(self, path: str | Path):
        self.store = SQLiteStore(path)
        with self._db() as db:
            for statement in _STATE_SCHEMA:
                db.execute(statement)

    def _db(self) -> sqlite3.Connection:
        return self.store._connection()

    def _meta(self, db: sqlite3.Connection, key: str) -> str | None:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def last_applied_batch(self) -> int:
        """The last batch applied (-1: none)."""
        value = self._meta(self._db(), "live_batch_id")
        return -1 if value is None else int(value)

    def read_open(self, users: Iterable[int]) -> tuple[pd.DataFrame, pd.DataFrame, int | None]:
        """The open sessions of ``users`` and their latest events, and the latest event time admitted."""
        db = self._db()
        listed = json.dumps([int(u) for u in users])
        sessions = pd.DataFrame(
            db.execute(
                f"SELECT {', '.join(SESSION_COLUMNS)} FROM open_sessions WHERE user_id IN ({_USERS})", (listed,)
            ).fetchall(),
            columns=list(SESSION_COLUMNS),
        )
        recent = pd.DataFrame(
            db.execute(
                f"SELECT {', '.join(RECENT_COLUMNS)} FROM recent_events WHERE user_id IN ({_USERS})", (listed,)
            ).fetchall(),
            columns=list(RECENT_COLUMNS),
        )
        max_event = self._meta(db, "max_event_micros")
        return sessions, recent, None if max_event is None else int(max_event)

    def apply(
        self, batch_id: int, folded: FoldedBatch, session_docs: list[tuple[int, str]], gap_micros: int
    ) -> list[int] | None:
        """Apply batch ``batch_id`` in one transaction: the folded users' open sessions and latest
        events replace theirs, their ``live_sessions`` documents are put, and open sessions of other
        users that the new watermark passed are closed (their document says ``is_open`` false).
        Returns the users whose sessions the watermark closed; None when the batch was applied
        before (nothing changes)."""
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            if int(self._meta(db, "live_batch_id") or -1) >= batch_id:
                return None
            touched = json.dumps([int(u) for u in pd.unique(folded.sessions[USER_ID])])
            db.execute(f"DELETE FROM open_sessions WHERE user_id IN ({_USERS})", (touched,))
            db.execute(f"DELETE FROM recent_events WHERE user_id IN ({_USERS})", (touched,))
            still_open = folded.sessions[folded.sessions[IS_OPEN]]
            db.executemany(
                f"INSERT INTO open_sessions VALUES ({', '.join('?' * len(SESSION_COLUMNS))})",
                still_open[list(SESSION_COLUMNS)].itertuples(index=False, name=None),
            )
            open_keys = still_open[[USER_ID, "session_start"]]
            recent = folded.recent.merge(open_keys, on=[USER_ID, "session_start"])
            db.executemany(
                f"INSERT INTO recent_events VALUES ({', '.join('?' * len(RECENT_COLUMNS))})",
                recent[list(RECENT_COLUMNS)].itertuples(index=False, name=None),
            )
            closed_users = []
            if folded.watermark_micros is not None:
                closed_users = [
                    row[0]
                    for row in db.execute(
                        f"DELETE FROM open_sessions WHERE {SESSION_END} + ? < ? RETURNING user_id",
                        (gap_micros, folded.watermark_micros),
                    ).fetchall()
                ]
                db.execute(
                    "DELETE FROM recent_events WHERE NOT EXISTS (SELECT 1 FROM open_sessions o WHERE "
                    "o.user_id = recent_events.user_id AND o.session_start = recent_events.session_start)"
                    f" AND user_id IN ({_USERS})",
                    (json.dumps(closed_users),),
                )
                db.execute(
                    "UPDATE live_sessions SET doc = json_set(doc, '$.is_open', json('false')), batch_id = ? "
                    f"WHERE user_id IN ({_USERS}) AND user_id NOT IN (SELECT user_id FROM open_sessions)",
                    (batch_id, json.dumps(closed_users)),
                )
            db.executemany(
                "INSERT INTO live_sessions (user_id, batch_id, doc) VALUES (?, ?, ?) ON CONFLICT (user_id) "
                "DO UPDATE SET batch_id = excluded.batch_id, doc = excluded.doc",
                ((int(user), batch_id, doc) for user, doc in session_docs),
            )
            settings = {"live_batch_id": str(batch_id)}
            if folded.max_event_micros is not None:
                settings["max_event_micros"] = str(folded.max_event_micros)
            db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", settings.items())
        return closed_users


def _iso(micros: pd.Series) -> pd.Series:
    """ISO-8601 UTC text of epoch microseconds, as the Spark-built documents have it."""
    return pd.Series(pd.to_datetime(micros.to_numpy(), unit="us").strftime("%Y-%m-%dT%H:%M:%S.%fZ"), index=micros.index)


def session_documents(
    sessions: pd.DataFrame, past_purchases, avg_purchase_amount, updated_at_micros: int
) -> list[tuple[int, str]]:
    """``(user_id, live_sessions document)`` of each session row (``SESSION_COLUMNS`` + ``is_open``),
    with its purchase features as of its start."""
    start, end = sessions["session_start"], sessions[SESSION_END]
    length = (end - start) / 1e6
    docs = pd.DataFrame(
        {
            "session_id": sessions[USER_ID].astype(str) + "-" + start.astype(str),
            USER_ID: sessions[USER_ID],
            "session_start": _iso(start),
            SESSION_END: _iso(end),
            "num_events": sessions["num_events"],
            "num_views": sessions["num_views"],
            "num_clicks": sessions["num_clicks"],
            "num_add_to_cart": sessions["num_add_to_cart"],
            "session_length_s": length,
            "avg_time_gap_s": (length / (sessions["num_events"] - 1)).where(sessions["num_events"] > 1),
            "last_event": sessions["last_event"],
            "avg_purchase_amount": avg_purchase_amount,
            "past_purchases": past_purchases,
            IS_OPEN: sessions[IS_OPEN],
            "updated_at": _iso(pd.Series([updated_at_micros] * len(sessions), index=sessions.index)),
        }
    )
    if docs.empty:
        return []
    lines = docs.to_json(orient="records", lines=True, double_precision=15).splitlines()
    return list(zip(docs[USER_ID].astype(int).tolist(), lines))
