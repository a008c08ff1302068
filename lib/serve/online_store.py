"""The online store: each user's live session, live and batch recommendations and profile, for
the HTTP API (``jobs/serve.py``) to serve within milliseconds. The Delta tables stay the system
of record; the stream writes here as it computes, ``jobs/train.py`` after each model.

This module needs no Spark: the API process imports it alone.

``OnlineStore`` is the interface; ``SQLiteStore`` the embedded default (one file, WAL mode: one
writer, any number of readers, no server). The stream's micro-batches write their live state
and documents in one transaction of their own (``lib.serve.live_state``); a networked store
(Redis, ...) implements the same methods and that transaction.

Documents are JSON text, written as the tables' rows with timestamps as ISO-8601 UTC strings.
Every write names the micro-batch it comes from and never replaces what a later batch wrote, so
a batch replayed after a crash leaves the store as a clean run would.

Example::

    store = SQLiteStore("data/online/streamrec.sqlite")
    store.put_profiles(7, [(42, '{"user_id": 42, "num_events": 3, ...}')])
    store.profile(42)  # {"user_id": 42, "num_events": 3, ...}
"""

from __future__ import annotations

import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path


class StoreUnavailable(RuntimeError):
    """The store is missing or cannot be read; the message says what to do."""


class OnlineStore(ABC):
    """What the stream, the trainer and the API need of an online store."""

    # Writers. ``batch_id`` orders the writes of the stream: an older batch never replaces a
    # newer one's document. Documents are JSON objects as text.
    @abstractmethod
    def put_live_recommendations(self, batch_id: int, docs: Iterable[tuple[int, str]]) -> None: ...

    @abstractmethod
    def put_profiles(self, batch_id: int, docs: Iterable[tuple[int, str]]) -> None: ...

    @abstractmethod
    def bind(self, stream_id: str) -> None:
        """Tie the store to a stream (its checkpoint's query id). A store written by another
        stream (its checkpoint deleted and started anew) holds batch ids that mean nothing to this
        one: its live documents, profiles and popularity are dropped; the batch recommendations,
        which come from the lake's model, stay."""

    @abstractmethod
    def replace_batch_recommendations(self, model_version: str, docs: Iterable[tuple[int, str]]) -> None:
        """Replace every user's batch recommendations with those of ``model_version``."""

    # Readers: the document as a dict, or None.
    @abstractmethod
    def session(self, user_id: int) -> dict | None: ...

    @abstractmethod
    def live_recommendations(self, user_id: int) -> dict | None: ...

    @abstractmethod
    def batch_recommendations(self, user_id: int) -> dict | None: ...

    @abstractmethod
    def profile(self, user_id: int) -> dict | None: ...

    @abstractmethod
    def popular_items(self, k: int) -> list[tuple[int, float]]:
        """The ``k`` most engaged items, best first (ties: smaller item_id), with their scores."""

    @abstractmethod
    def health(self) -> dict:
        """``last_batch_id``, ``last_batch_at`` (ISO-8601 UTC or None) and the batch model's version."""


_USER_DOC_TABLES = ("live_sessions", "live_recommendations", "user_profiles")

_SCHEMA = [
    *(
        f"CREATE TABLE IF NOT EXISTS {table} "
        "(user_id INTEGER PRIMARY KEY, batch_id INTEGER NOT NULL, doc TEXT NOT NULL)"
        for table in _USER_DOC_TABLES
    ),
    "CREATE TABLE IF NOT EXISTS batch_recommendations (user_id INTEGER PRIMARY KEY, doc TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS item_popularity (item_id INTEGER PRIMARY KEY, score REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS item_popularity_by_score ON item_popularity (score DESC, item_id)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
    # The stream's recent micro-batches (the last hour), for the console: when each finished
    # (epoch seconds), its rows, and how long after its oldest input file landed the store had it.
    "CREATE TABLE IF NOT EXISTS recent_batches (batch_id INTEGER PRIMARY KEY, finished_at REAL NOT NULL, "
    "input_rows INTEGER, valid_rows INTEGER, quarantined_rows INTEGER, late_rows INTEGER, duration_s REAL, "
    "store_delay_s REAL)",
]
RECENT_BATCH_COLUMNS = (
    "batch_id",
    "finished_at",
    "input_rows",
    "valid_rows",
    "quarantined_rows",
    "late_rows",
    "duration_s",
    "store_delay_s",
)
RECENT_BATCHES_KEPT_S = 3600


def iso_utc(moment: datetime) -> str:
    """ISO-8601 UTC text of an aware datetime (naive ones are taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


# A writer connection's page cache: a store of 100,000 users is about 250 MB.
WRITER_CACHE_KIB = 256 * 1024


class SQLiteStore(OnlineStore):
    """The embedded online store: one SQLite file in WAL mode.

    Writers open it with ``SQLiteStore(path)`` (it is created with its folder); readers with
    ``SQLiteStore(path, readonly=True)``, which raises ``StoreUnavailable`` when it is missing.
    One connection per thread.
    """

    def __init__(self, path: str | Path, readonly: bool = False, busy_timeout_ms: int = 10_000):
        self.path = Path(path)
        self.readonly = readonly
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        if readonly:
            if not self.path.is_file():
                raise StoreUnavailable(
                    f"the online store {self.path} does not exist: start the stream (jobs/stream.py) with the same "
                    "config, which creates it, or point paths.online_store at it"
                )
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connection() as db:
                db.execute("PRAGMA journal_mode=WAL")
                for statement in _SCHEMA:
                    db.execute(statement)

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            if self.readonly:
                db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            else:
                db = sqlite3.connect(self.path, check_same_thread=False)
                db.execute("PRAGMA synchronous=NORMAL")  # durable at each WAL checkpoint; the stream replays the rest
                # A micro-batch touches thousands of users' rows across the store: with SQLite's
                # default 2 MB page cache each read them from the file again.
                db.execute(f"PRAGMA cache_size={-WRITER_CACHE_KIB}")
            db.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
            self._local.db = db
        return db

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def _put_user_docs(self, table: str, batch_id: int, docs: Iterable[tuple[int, str]]) -> None:
        with self._connection() as db:
            db.executemany(
                f"INSERT INTO {table} (user_id, batch_id, doc) VALUES (?, ?, ?) "
                f"ON CONFLICT (user_id) DO UPDATE SET batch_id = excluded.batch_id, doc = excluded.doc "
                f"WHERE excluded.batch_id >= {table}.batch_id",
                ((int(user), int(batch_id), doc) for user, doc in docs),
            )

    def put_live_recommendations(self, batch_id, docs):
        self._put_user_docs("live_recommendations", batch_id, docs)

    def put_profiles(self, batch_id, docs):
        self._put_user_docs("user_profiles", batch_id, docs)

    def bind(self, stream_id):
        with self._connection() as db:
            bound = db.execute("SELECT value FROM meta WHERE key = 'stream_id'").fetchone()
            if bound is not None and bound[0] == stream_id:
                return
            if bound is not None:
                for table in (*_USER_DOC_TABLES, "item_popularity"):
                    db.execute(f"DELETE FROM {table}")
                db.execute("DELETE FROM meta WHERE key <> 'batch_model_version'")
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('stream_id', ?)", (stream_id,))

    def replace_batch_recommendations(self, model_version, docs):
        with self._connection() as db:
            db.execute("DELETE FROM batch_recommendations")
            db.executemany(
                "INSERT INTO batch_recommendations (user_id, doc) VALUES (?, ?)", ((int(u), d) for u, d in docs)
            )
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('batch_model_version', ?)", (model_version,))

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            return self._connection().execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:  # unreadable, locked beyond the timeout, not a store
            raise StoreUnavailable(
                f"the online store {self.path} cannot be read ({exc}); check the file and its permissions, "
                "or delete it and restart the stream to rebuild it"
            ) from None

    def _user_doc(self, table: str, user_id: int) -> dict | None:
        rows = self._read(f"SELECT doc FROM {table} WHERE user_id = ?", (int(user_id),))
        return json.loads(rows[0][0]) if rows else None

    def session(self, user_id):
        return self._user_doc("live_sessions", user_id)

    def live_recommendations(self, user_id):
        return self._user_doc("live_recommendations", user_id)

    def batch_recommendations(self, user_id):
        return self._user_doc("batch_recommendations", user_id)

    def profile(self, user_id):
        return self._user_doc("user_profiles", user_id)

    def popular_items(self, k):
        rows = self._read("SELECT item_id, score FROM item_popularity ORDER BY score DESC, item_id LIMIT ?", (int(k),))
        return [(int(item), float(score)) for item, score in rows]

    def session_events(self, user_id: int) -> list[dict]:
        """The latest events of the user's open session (the live fold keeps its last 20), newest first."""
        try:
            rows = (
                self._connection()
                .execute(
                    "SELECT event_ts, item_id, event_type FROM recent_events WHERE user_id = ? ORDER BY event_ts DESC",
                    (int(user_id),),
                )
                .fetchall()
            )
        except sqlite3.OperationalError:  # a store no stream has folded into yet
            return []
        return [
            {"event_ts": iso_utc(datetime.fromtimestamp(ts / 1e6, timezone.utc)), "item_id": item, "event_type": kind}
            for ts, item, kind in rows
        ]

    def latest_event_at(self) -> str | None:
        """The latest event time the stream has admitted (its watermark's base), ISO-8601 UTC."""
        rows = self._read("SELECT value FROM meta WHERE key = 'max_event_micros'")
        return iso_utc(datetime.fromtimestamp(int(rows[0][0]) / 1e6, timezone.utc)) if rows else None

    def recent_batches(self, since: float) -> list[dict]:
        """The micro-batches that finished after ``since`` (epoch seconds), oldest first."""
        rows = self._read(
            f"SELECT {', '.join(RECENT_BATCH_COLUMNS)} FROM recent_batches WHERE finished_at > ? ORDER BY batch_id",
            (since,),
        )
        return [dict(zip(RECENT_BATCH_COLUMNS, row)) for row in rows]

    def health(self):
        meta = dict(self._read("SELECT key, value FROM meta"))
        last = meta.get("last_batch_id")
        return {
            "last_batch_id": int(last) if last is not None else None,
            "last_batch_at": meta.get("last_batch_at"),
            "batch_model_version": meta.get("batch_model_version"),
        }
