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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from lib.core.schemas import EVENT_TS, EVENT_TYPE, IS_OPEN, ITEM_ID, SESSION_END, SESSION_ID, USER_ID
from lib.features.live_fold import RECENT_COLUMNS, SESSION_COLUMNS, FoldedBatch, session_ids
from lib.features.profiles import COUNTS, ENGAGEMENT_COLUMNS, TOTALS_COLUMNS
from lib.serve.online_sink import iso_text
from lib.serve.online_store import RECENT_BATCH_COLUMNS, RECENT_BATCHES_KEPT_S, SQLiteStore

_STATE_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS open_sessions (user_id INTEGER NOT NULL, session_start INTEGER NOT NULL, "
    "session_end INTEGER NOT NULL, num_events INTEGER, num_views INTEGER, num_clicks INTEGER, "
    "num_add_to_cart INTEGER, last_event TEXT, last_ts INTEGER, last_file TEXT, last_block INTEGER, "
    "last_line INTEGER, PRIMARY KEY (user_id, session_start)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS open_sessions_by_end ON open_sessions (session_end)",
    "CREATE TABLE IF NOT EXISTS recent_events (user_id INTEGER NOT NULL, session_start INTEGER NOT NULL, "
    "event_ts INTEGER NOT NULL, item_id INTEGER, event_type TEXT)",
    "CREATE INDEX IF NOT EXISTS recent_events_by_user ON recent_events (user_id)",
    # The profiles' running totals (``lib.features.profiles``), each row with the last batch
    # that changed it; and every item a user interacted with, with its summed weight (the live
    # recommendations never bring such an item back).
    "CREATE TABLE IF NOT EXISTS profile_totals (user_id INTEGER PRIMARY KEY, batch_id INTEGER NOT NULL, "
    "num_sessions INTEGER, num_events INTEGER, num_views INTEGER, num_clicks INTEGER, num_add_to_cart INTEGER, "
    "total_session_micros INTEGER, first_seen INTEGER, last_seen INTEGER)",
    "CREATE INDEX IF NOT EXISTS profile_totals_by_batch ON profile_totals (batch_id)",
    "CREATE TABLE IF NOT EXISTS user_engagement (user_id INTEGER NOT NULL, item_id INTEGER NOT NULL, "
    "weight REAL NOT NULL, PRIMARY KEY (user_id, item_id)) WITHOUT ROWID",
    # The re-ranking context of users whose live recommendations are still to compute
    # (``RANKING_COLUMNS``: the latest events of their latest session, oldest first), with the
    # batch that left it: a batch's users until the live ranking takes them, a backlog's until its end.
    "CREATE TABLE IF NOT EXISTS ranking_queue (batch_id INTEGER NOT NULL, user_id INTEGER NOT NULL, "
    "session_id TEXT NOT NULL, event_ts INTEGER NOT NULL, item_id INTEGER, event_type TEXT)",
    "CREATE INDEX IF NOT EXISTS ranking_queue_by_user ON ranking_queue (user_id)",
    # What the slow cadence appends to the Delta tables, per micro-batch (``OUTBOXES``), as Arrow
    # IPC: the sessions it closed (session_features rows) and its stream_metrics row.
    *(
        f"CREATE TABLE IF NOT EXISTS {name} (batch_id INTEGER NOT NULL, data BLOB NOT NULL)"
        for name in ("closed_sessions", "batch_reports")
    ),
]
OUTBOXES = ("closed_sessions", "batch_reports")
# The live state proper: rebuilt from the lake when the store lacks it or is behind.
_LIVE_TABLES = ("open_sessions", "recent_events", "profile_totals", "user_engagement", "ranking_queue")
RANKING_COLUMNS = (USER_ID, SESSION_ID, EVENT_TS, ITEM_ID, EVENT_TYPE)
# Tables of an older store layout: a store that has one is rebuilt from the lake.
_RETIRED_TABLES = ("seen_items", "batch_events", "pending_ranking")
_TOTALS_COLUMNS = ", ".join(TOTALS_COLUMNS)
_ADD_TOTALS = (
    f"INSERT INTO profile_totals (batch_id, {_TOTALS_COLUMNS}) VALUES (?, {', '.join('?' * len(TOTALS_COLUMNS))}) "
    "ON CONFLICT (user_id) DO UPDATE SET batch_id = excluded.batch_id, "
    + ", ".join(f"{c} = {c} + excluded.{c}" for c in COUNTS)
    + ", first_seen = COALESCE(MIN(first_seen, excluded.first_seen), first_seen, excluded.first_seen)"
    ", last_seen = COALESCE(MAX(last_seen, excluded.last_seen), last_seen, excluded.last_seen)"
)
_ADD_ENGAGEMENT = (
    "INSERT INTO user_engagement VALUES (?, ?, ?) "
    "ON CONFLICT (user_id, item_id) DO UPDATE SET weight = weight + excluded.weight"
)


def to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(blobs: list[bytes]) -> pa.Table | None:
    """The tables of ``blobs`` (``to_ipc``) as one; None when there are none."""
    tables = [pa.ipc.open_stream(blob).read_all() for blob in blobs]
    return pa.concat_tables(tables) if tables else None


_USERS = "SELECT value FROM json_each(?)"


@dataclass(frozen=True)
class BatchChanges:
    """What a micro-batch writes to the store besides its open sessions (``LiveState.apply``)."""

    session_docs: list[tuple[int, str]] = field(default_factory=list)  # live_sessions documents
    # The live re-ranking's context of the batch's users (``RANKING_COLUMNS``), replacing theirs
    # in the ranking queue until ``rank_pending``.
    ranking: pd.DataFrame | None = None
    updated_at_micros: int | None = None  # the batch's sessions' updated_at
    closed_sessions: pa.Table | None = None  # session_features rows, for the slow cadence
    # What the batch adds to its users' profile totals (``lib.features.profiles.profile_increments``).
    profile_totals: pd.DataFrame | None = None
    user_engagement: pd.DataFrame | None = None
    engagement: list[tuple[int, float]] = field(default_factory=list)  # (item, engagement) of the batch
    outcome: dict = field(default_factory=dict)  # what the batch counted, kept for a replay's report


@dataclass(frozen=True)
class RankingWork:
    """The users to re-rank (``rows``: ``RANKING_COLUMNS``, each user's events oldest first), as of
    batch ``batch_id``, whose sessions were updated at ``updated_at_micros`` (None: not known)."""

    batch_id: int
    updated_at_micros: int | None
    rows: pd.DataFrame


class LiveState:
    """The live fold's state in the SQLite store at ``path`` (created with it)."""

    def __init__(self, path: str | Path):
        self.store = SQLiteStore(path)
        with self._db() as db:
            retired = db.execute(
                f"SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ({_USERS})",
                (json.dumps(_RETIRED_TABLES),),
            ).fetchall()
            for (name,) in retired:
                db.execute(f"DROP TABLE {name}")
            if retired:
                db.execute("DELETE FROM meta WHERE key = 'live_batch_id'")
            for statement in _STATE_SCHEMA:
                db.execute(statement)

    def _db(self) -> sqlite3.Connection:
        return self.store._connection()

    def _meta(self, db: sqlite3.Connection, key: str) -> str | None:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def bind(self, stream_id: str) -> None:
        """Tie the store to a stream (``SQLiteStore.bind``); the live state of another stream goes too."""
        self.store.bind(stream_id)
        with self._db() as db:
            if self._meta(db, "live_stream_id") != stream_id:
                for table in (*_LIVE_TABLES, *OUTBOXES):
                    db.execute(f"DELETE FROM {table}")
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('live_stream_id', ?)", (stream_id,))

    def forget_live(self) -> None:
        """Drop the live state and the items' popularity (before they are rebuilt from the lake)."""
        with self._db() as db:
            for table in (*_LIVE_TABLES, "item_popularity"):
                db.execute(f"DELETE FROM {table}")

    def leave_wal_checkpoints(self) -> None:
        """This thread's commits no longer copy the write-ahead log back into the store (SQLite's
        automatic checkpoint, with its fsync: most of a 5,000-user batch's commit); another
        thread calls ``checkpoint_wal``."""
        self._db().execute("PRAGMA wal_autocheckpoint=0")

    def checkpoint_wal(self) -> None:
        """Copy the committed write-ahead log into the store, without waiting for its writers or readers."""
        self._db().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def last_applied_batch(self) -> int:
        """The last batch applied (-1: none)."""
        value = self._meta(self._db(), "live_batch_id")
        return -1 if value is None else int(value)

    def last_finished_batch(self) -> int:
        """The last batch whose Delta appends are done too (``record_report``; -1: none)."""
        value = self._meta(self._db(), "last_batch_id")
        return -1 if value is None else int(value)

    def applied_outcome(self, batch_id: int) -> dict | None:
        """What batch ``batch_id`` counted when it was applied (``BatchChanges.outcome``), if it
        is the last one applied; None otherwise."""
        if self.last_applied_batch() != batch_id:
            return None
        return json.loads(self._meta(self._db(), "live_batch_outcome") or "{}")

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

    def closing(self, watermark_micros: int | None, gap_micros: int, besides: Iterable[int]) -> pd.DataFrame:
        """The open sessions of users other than ``besides`` that the watermark has passed."""
        if watermark_micros is None:
            return pd.DataFrame(columns=list(SESSION_COLUMNS))
        rows = self._db().execute(
            f"SELECT {', '.join(SESSION_COLUMNS)} FROM open_sessions WHERE {SESSION_END} + ? < ? "
            f"AND user_id NOT IN ({_USERS})",
            (gap_micros, watermark_micros, json.dumps([int(u) for u in besides])),
        )
        return pd.DataFrame(rows.fetchall(), columns=list(SESSION_COLUMNS))

    def seen_items(self, users: Iterable[int]) -> pd.DataFrame:
        """``user_id, item_id`` of every item ``users`` interacted with."""
        rows = self._db().execute(
            f"SELECT user_id, item_id FROM user_engagement WHERE user_id IN ({_USERS})",
            (json.dumps([int(u) for u in users]),),
        )
        return pd.DataFrame(rows.fetchall(), columns=[USER_ID, "item_id"])

    def pending_ranking(self) -> RankingWork:
        """The re-ranking context of the users still to rank, read at once with the last batch
        applied: every row comes from that batch or an earlier one."""
        db = self._db()
        with db:
            db.execute("BEGIN")
            batch_id = int(self._meta(db, "live_batch_id") or -1)
            updated_at = self._meta(db, "live_batch_updated_at")
            query = f"SELECT {', '.join(RANKING_COLUMNS)} FROM ranking_queue"
            rows = db.execute(f"{query} ORDER BY user_id, event_ts, item_id, event_type").fetchall()
        return RankingWork(
            batch_id, None if updated_at is None else int(updated_at), pd.DataFrame(rows, columns=list(RANKING_COLUMNS))
        )

    def rank_pending(self, batch_id: int, docs: list[tuple[int, str]]) -> None:
        """The live recommendations of the users queued by batch ``batch_id`` and earlier (as
        ``pending_ranking`` read them), who leave the queue; later batches' users stay queued."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO live_recommendations (user_id, batch_id, doc) VALUES (?, ?, ?) ON CONFLICT (user_id) "
                "DO UPDATE SET batch_id = excluded.batch_id, doc = excluded.doc",
                ((int(user), batch_id, doc) for user, doc in docs),
            )
            db.execute("DELETE FROM ranking_queue WHERE batch_id <= ?", (batch_id,))

    def load_profile_totals(self, totals: pd.DataFrame, engagement: pd.DataFrame) -> None:
        """Profile totals of users that ``user_profiles`` holds already (as of no batch: no slow
        pass writes them again until a batch changes them)."""
        with self._db() as db:
            self._add_profile_totals(db, -1, totals, engagement)

    @staticmethod
    def _add_profile_totals(db, batch_id: int, totals: pd.DataFrame | None, engagement: pd.DataFrame | None) -> None:
        if totals is not None:
            rows = totals[list(TOTALS_COLUMNS)].astype(object).where(totals.notna(), None)
            db.executemany(_ADD_TOTALS, ((batch_id, *row) for row in rows.itertuples(index=False, name=None)))
        if engagement is not None:
            db.executemany(_ADD_ENGAGEMENT, engagement[list(ENGAGEMENT_COLUMNS)].itertuples(index=False, name=None))

    def profile_totals(
        self, after: int, upto: int, also: Iterable[int] = ()
    ) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, np.ndarray]:
        """The totals (``TOTALS_COLUMNS``) and engagement (``ENGAGEMENT_COLUMNS``) of the users a
        batch after ``after`` up to ``upto`` changed last, and of the users ``also`` unless a later
        batch changed them (the next pass takes those); with the users concerned and those changed."""
        db = self._db()
        changed = [
            row[0]
            for row in db.execute(
                "SELECT user_id FROM profile_totals WHERE batch_id > ? AND batch_id <= ? ORDER BY user_id",
                (after, upto),
            ).fetchall()
        ]
        later = {row[0] for row in db.execute("SELECT user_id FROM profile_totals WHERE batch_id > ?", (upto,))}
        users = np.union1d(np.array(changed, np.int64), np.array([u for u in also if u not in later], np.int64))
        listed = json.dumps(users.tolist())
        query = f"SELECT {_TOTALS_COLUMNS} FROM profile_totals WHERE user_id IN ({_USERS})"
        totals = pd.DataFrame(db.execute(query, (listed,)).fetchall(), columns=list(TOTALS_COLUMNS))
        engagement = pd.DataFrame(
            db.execute(
                f"SELECT {', '.join(ENGAGEMENT_COLUMNS)} FROM user_engagement WHERE user_id IN ({_USERS})", (listed,)
            ).fetchall(),
            columns=list(ENGAGEMENT_COLUMNS),
        )
        return totals, engagement, users, np.array(changed, np.int64)

    def profiled_purchase_files(self) -> tuple[str, ...] | None:
        """The purchase history's files as of the profiles last written (None: never)."""
        value = self._meta(self._db(), "profiled_purchase_files")
        return None if value is None else tuple(json.loads(value))

    def record_profiled_purchase_files(self, files: tuple[str, ...]) -> None:
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('profiled_purchase_files', ?)", (json.dumps(files),)
            )

    def outbox(self, name: str, after: int, upto: int) -> pa.Table | None:
        """The rows of outbox ``name`` from the batches after ``after`` up to ``upto`` (None: none)."""
        rows = self._db().execute(
            f"SELECT data FROM {name} WHERE batch_id > ? AND batch_id <= ? ORDER BY batch_id", (after, upto)
        )
        return from_ipc([row[0] for row in rows.fetchall()])

    @staticmethod
    def _written_by(after: int | None, upto: int | None) -> tuple[str, tuple]:
        bounds = [(f"batch_id {op} ?", value) for op, value in ((">", after), ("<=", upto)) if value is not None]
        return " AND ".join(["1", *(b for b, _ in bounds)]), tuple(v for _, v in bounds)

    def docs(self, table: str, after: int | None = None, upto: int | None = None) -> tuple[list[str], int | None]:
        """The served documents of ``table`` last written by a batch after ``after`` up to ``upto``
        (None: no bound), read at once, and the latest batch among them (None: no documents)."""
        where, params = self._written_by(after, upto)
        rows = self._db().execute(f"SELECT batch_id, doc FROM {table} WHERE {where}", params).fetchall()
        return [row[1] for row in rows], max((row[0] for row in rows), default=None)

    def count_docs(self, table: str, after: int | None = None, upto: int | None = None) -> int:
        """How many served documents ``table`` holds (one per user) that a batch after ``after`` up
        to ``upto`` (None: no bound) wrote last."""
        where, params = self._written_by(after, upto)
        return self._db().execute(f"SELECT COUNT(*) FROM {table} WHERE {where}", params).fetchone()[0]

    def folded_through(self, table: str) -> int:
        """The last batch the Delta table ``table`` folded with nothing to write (-1: none)."""
        value = self._meta(self._db(), f"folded:{table}")
        return -1 if value is None else int(value)

    def record_folded(self, table: str, batch_id: int) -> None:
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (f"folded:{table}", str(batch_id)))

    def forget_through(self, batch_id: int) -> None:
        """Drop the outboxes' rows of batches up to ``batch_id``: every Delta table has them."""
        with self._db() as db:
            for name in OUTBOXES:
                db.execute(f"DELETE FROM {name} WHERE batch_id <= ?", (batch_id,))

    def record_report(self, batch_id: int, report: pa.Table, finished_at: str, recent: dict) -> None:
        """The batch's metrics row (for ``stream_metrics``), its line in ``recent_batches``
        (``RECENT_BATCH_COLUMNS``) and the health of the stream."""
        with self._db() as db:
            db.execute("DELETE FROM batch_reports WHERE batch_id = ?", (batch_id,))
            db.execute("INSERT INTO batch_reports (batch_id, data) VALUES (?, ?)", (batch_id, to_ipc(report)))
            db.execute(
                f"INSERT OR REPLACE INTO recent_batches VALUES ({', '.join('?' * len(RECENT_BATCH_COLUMNS))})",
                tuple(recent[c] for c in RECENT_BATCH_COLUMNS),
            )
            db.execute(
                "DELETE FROM recent_batches WHERE finished_at < ?", (recent["finished_at"] - RECENT_BATCHES_KEPT_S,)
            )
            db.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                (("last_batch_id", str(batch_id)), ("last_batch_at", finished_at)),
            )

    def apply(self, batch_id: int, folded: FoldedBatch, changes: BatchChanges, gap_micros: int) -> bool:
        """Apply batch ``batch_id`` in one transaction: the folded users' open sessions and latest
        events replace theirs, open sessions of other users that the new watermark passed are
        closed (their document says ``is_open`` false), and ``changes`` are written. False when
        the batch was applied before: nothing changes."""
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            if int(self._meta(db, "live_batch_id") or -1) >= batch_id:
                return False
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
                ((int(user), batch_id, doc) for user, doc in changes.session_docs),
            )
            if changes.ranking is not None:
                users = json.dumps([int(u) for u in pd.unique(changes.ranking[USER_ID])])
                db.execute(f"DELETE FROM ranking_queue WHERE user_id IN ({_USERS})", (users,))
                db.executemany(
                    f"INSERT INTO ranking_queue VALUES (?, {', '.join('?' * len(RANKING_COLUMNS))})",
                    changes.ranking[list(RANKING_COLUMNS)]
                    .assign(_batch=batch_id)[["_batch", *RANKING_COLUMNS]]
                    .itertuples(index=False, name=None),
                )
            self._add_profile_totals(db, batch_id, changes.profile_totals, changes.user_engagement)
            db.executemany(
                "INSERT INTO item_popularity (item_id, score) VALUES (?, ?) "
                "ON CONFLICT (item_id) DO UPDATE SET score = score + excluded.score",
                changes.engagement,
            )
            if changes.closed_sessions is not None and changes.closed_sessions.num_rows:
                db.execute(
                    "INSERT INTO closed_sessions (batch_id, data) VALUES (?, ?)",
                    (batch_id, to_ipc(changes.closed_sessions)),
                )
            settings = {"live_batch_id": str(batch_id), "live_batch_outcome": json.dumps(changes.outcome)}
            if changes.updated_at_micros is not None:
                settings["live_batch_updated_at"] = str(changes.updated_at_micros)
            if folded.max_event_micros is not None:
                settings["max_event_micros"] = str(folded.max_event_micros)
            db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", settings.items())
        return True


def session_rows(sessions: pd.DataFrame, past_purchases, avg_purchase_amount) -> pd.DataFrame:
    """The ``session_features`` rows (times as epoch microseconds) of ``SESSION_COLUMNS`` rows, with
    their purchase features as of their start."""
    start, end = sessions["session_start"], sessions[SESSION_END]
    length = (end - start) / 1e6
    return pd.DataFrame(
        {
            "session_id": session_ids(sessions),
            USER_ID: sessions[USER_ID].astype("int32"),
            "session_start": start,
            SESSION_END: end,
            "num_events": sessions["num_events"],
            "num_views": sessions["num_views"],
            "num_clicks": sessions["num_clicks"],
            "num_add_to_cart": sessions["num_add_to_cart"],
            "session_length_s": length,
            "avg_time_gap_s": (length / (sessions["num_events"] - 1)).where(sessions["num_events"] > 1),
            "last_event": sessions["last_event"],
            "avg_purchase_amount": avg_purchase_amount,
            "past_purchases": past_purchases,
        }
    )


def session_documents(
    sessions: pd.DataFrame, past_purchases, avg_purchase_amount, updated_at_micros: int
) -> list[tuple[int, str]]:
    """``(user_id, live_sessions document)`` of each session row (``SESSION_COLUMNS`` + ``is_open``),
    with its purchase features as of its start."""
    docs = session_rows(sessions, past_purchases, avg_purchase_amount)
    docs[USER_ID] = docs[USER_ID].astype(int)
    docs["session_start"], docs[SESSION_END] = iso_text(docs["session_start"]), iso_text(docs[SESSION_END])
    docs[IS_OPEN] = sessions[IS_OPEN].to_numpy(bool)
    docs["updated_at"] = iso_text(pd.Series([updated_at_micros]))[0]
    if docs.empty:
        return []
    lines = docs.to_json(orient="records", lines=True, double_precision=15).splitlines()
    return list(zip(docs[USER_ID].astype(int).tolist(), lines))
