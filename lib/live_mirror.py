"""The Delta mirrors of the live tables, ``live_sessions`` and ``live_recommendations``, copied
from the online store off the micro-batch's critical path.

A micro-batch writes its live rows to the online store as soon as it has computed them and goes
on; after it, a background MERGE per table copies what changed in the store since the mirror's
last commit (a micro-batch never waits for it, and one mirror runs at a time: a batch that ends
while one runs leaves its rows to the next). Each commit carries the stream's marker
``<app id>:<batch id>`` of the newest batch it includes, so a restarted stream's first mirror
copies whatever the store holds beyond it: nothing is lost after a crash, and a MERGE keyed by
user is idempotent.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DoubleType, IntegerType, StringType, StructField, StructType, TimestampType

from lib.config import Config
from lib.online_sink import ITEMS, JSON_OPTIONS
from lib.online_store import OnlineStore
from lib.schemas import (
    GENERATED_AT,
    ITEM_ID,
    LIVE_RECOMMENDATIONS,
    LIVE_RECOMMENDATIONS_SCHEMA,
    LIVE_SESSIONS,
    LIVE_SESSIONS_SCHEMA,
    MODEL_VERSION,
    RANK,
    SCORE,
    SESSION_ID,
    USER_ID,
)
from lib.sinks import BatchSink

log = logging.getLogger(__name__)

_RECOMMENDATIONS_DOC = StructType(
    [
        StructField(USER_ID, IntegerType()),
        StructField(SESSION_ID, StringType()),
        StructField(MODEL_VERSION, StringType()),
        StructField(GENERATED_AT, TimestampType()),
        StructField(
            ITEMS,
            ArrayType(
                StructType(
                    [
                        StructField(RANK, IntegerType()),
                        StructField(ITEM_ID, IntegerType()),
                        StructField(SCORE, DoubleType()),
                    ]
                )
            ),
        ),
    ]
)


def _parsed(spark: SparkSession, docs: list[str], schema: StructType) -> DataFrame:
    return (
        spark.createDataFrame([(d,) for d in docs], "doc string")
        .select(F.from_json("doc", schema, JSON_OPTIONS).alias("row"))
        .select("row.*")
    )


def sessions_from_docs(spark: SparkSession, docs: list[str]) -> DataFrame:
    """``live_sessions`` rows from the store's documents."""
    return _parsed(spark, docs, LIVE_SESSIONS_SCHEMA)


def recommendations_from_docs(spark: SparkSession, docs: list[str]) -> DataFrame:
    """``live_recommendations`` rows (one per user and rank) from the store's documents."""
    return (
        _parsed(spark, docs, _RECOMMENDATIONS_DOC)
        .select("*", F.explode(ITEMS).alias("_item"))
        .select(
            *(
                F.col(f"_item.{c}").alias(c) if c in (RANK, ITEM_ID, SCORE) else F.col(c)
                for c in LIVE_RECOMMENDATIONS_SCHEMA.fieldNames()
            )
        )
    )


class LiveMirror:
    """Copies the online store's live rows into the Delta tables, in the background.

    Example::

        mirror = LiveMirror(spark, cfg, store, app_id)
        mirror.after_batch()  # starts a copy unless one is running
        mirror.close()  # waits for it, copies what is left, stops
    """

    def __init__(self, spark: SparkSession, cfg: Config, store: OnlineStore, app_id: str):
        self.spark, self.cfg, self.store = spark, cfg, store
        self._sink = BatchSink(spark, app_id)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="live-mirror")
        self._running: Future | None = None
        # Held while the mirror commits: compaction of the same tables must not interleave.
        self.lock = threading.Lock()

    def after_batch(self) -> None:
        if self._running is None or self._running.done():
            self._running = self._pool.submit(self._mirror_logged)

    def close(self) -> None:
        """Wait for a running copy, copy once more, and stop."""
        if self._running is not None:
            self._running.result()
        self.mirror()
        self._pool.shutdown(wait=True)

    def _mirror_logged(self) -> None:
        try:
            self.mirror()
        except Exception:  # the next copy starts from the last commit: nothing is lost
            log.exception("copying the live tables to Delta failed; the next micro-batch tries again")

    def mirror(self) -> None:
        """Copy what the store holds beyond each table's last mirrored batch."""
        with self.lock:
            self._mirror(LIVE_SESSIONS, self._sessions)
            self._mirror(LIVE_RECOMMENDATIONS, self._recommendations)

    def _mirror(self, table: str, write) -> None:
        path = self.cfg.paths.table(table)
        changes = self.store.changes(table, self._sink.last_committed_batch(path))
        if changes:
            upto = max(batch for _, batch, _ in changes)
            write(path, changes, upto)
            log.debug("mirrored %d users' rows of %s up to batch %d", len(changes), table, upto)

    def _sessions(self, path: str, changes: list[tuple[int, int, str]], upto: int) -> None:
        self._sink.upsert(sessions_from_docs(self.spark, [doc for _, _, doc in changes]), path, [USER_ID], upto)

    def _recommendations(self, path: str, changes: list[tuple[int, int, str]], upto: int) -> None:
        rows = recommendations_from_docs(self.spark, [doc for _, _, doc in changes])
        users = self.spark.createDataFrame([(user,) for user, _, _ in changes], f"{USER_ID} int")
        # Every rank slot of a user the store changed: a slot without a new row is deleted.
        top_k = self.cfg.recommend.top_k
        slots = users.crossJoin(self.spark.range(1, top_k + 1).select(F.col("id").cast("int").alias(RANK)))
        self._sink.upsert(
            slots.join(rows, [USER_ID, RANK], "left"),
            path,
            [USER_ID, RANK],
            upto,
            delete_condition=f"s.{ITEM_ID} IS NULL",
            insert_condition=f"s.{ITEM_ID} IS NOT NULL",
        )
