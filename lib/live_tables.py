"""The stream's per-user Delta tables, ``user_profiles``, ``live_sessions`` and
``live_recommendations``, kept up to date off the micro-batches' critical path.

A micro-batch computes each active user's live session, live recommendations and profile
increments (running totals), writes the first two to the online store at once, and *appends*
all three to pending Delta tables next to the stream's checkpoint: an append costs about a
second, a MERGE into a table of every user several. Every ``stream.live_tables_interval`` a
background thread folds what is pending into the tables, one MERGE per table for all the batches
since that table's last fold. A fold's commit carries the marker of the newest batch it includes
(``lib.sinks``), so after a crash the next fold starts exactly where the last committed one
ended: nothing is folded twice or lost. Pending rows are deleted one fold (an interval) after
they were folded, so a micro-batch that reads the pending totals and the profiles together finds
every increment in one or the other.
"""

from __future__ import annotations

import logging
import threading
import time

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StructField, StructType

from lib.config import Config
from lib.online_sink import user_docs
from lib.online_store import OnlineStore
from lib.profiles import TOTALS_COLUMNS, add_profile_totals, sum_profile_totals, with_profile_metrics
from lib.schemas import (
    ITEM_ENGAGEMENT,
    ITEM_ID,
    LIVE_RECOMMENDATIONS,
    LIVE_RECOMMENDATIONS_SCHEMA,
    LIVE_SESSIONS,
    LIVE_SESSIONS_SCHEMA,
    PROFILE_COLUMNS,
    RANK,
    USER_ID,
    USER_PROFILES,
    USER_PROFILES_SCHEMA,
)
from lib.sinks import BatchSink, compact, data_files, ensure_delta_table
from lib.sources import read_purchases

log = logging.getLogger(__name__)

BATCH_ID = "batch_id"
PROFILE_TOTALS = "profile_totals"
PENDING_DIR = "live_pending"
# Spark's FAIR scheduler pool of the folds: their jobs share the cores with the micro-batch's
# instead of queueing in front of them.
SCHEDULER_POOL = "live_tables"

_BATCH_FIELD = StructField(BATCH_ID, LongType())
_TOTALS_SCHEMA = StructType([USER_PROFILES_SCHEMA[c] for c in TOTALS_COLUMNS])
PENDING_SCHEMAS = {
    LIVE_SESSIONS: StructType([_BATCH_FIELD, *LIVE_SESSIONS_SCHEMA.fields]),
    PROFILE_TOTALS: StructType([_BATCH_FIELD, *_TOTALS_SCHEMA.fields]),
    LIVE_RECOMMENDATIONS: StructType([_BATCH_FIELD, *LIVE_RECOMMENDATIONS_SCHEMA.fields]),
}
FOLDED_TABLES = (LIVE_SESSIONS, USER_PROFILES, LIVE_RECOMMENDATIONS)

# A profile row is rewritten when the fold touched its user or its purchase side changed.
_PROFILE_CHANGED = (
    "s._touched OR NOT (t.past_purchases <=> s.past_purchases "
    "AND t.avg_purchase_amount <=> s.avg_purchase_amount AND t.top_items <=> s.top_items)"
)


def latest_batch_rows(pending: DataFrame) -> DataFrame:
    """The rows of each user's latest batch in ``pending`` (without the batch id)."""
    latest = F.max(BATCH_ID).over(Window.partitionBy(USER_ID))
    return pending.withColumn("_latest", latest).where(F.col(BATCH_ID) == F.col("_latest")).drop("_latest", BATCH_ID)


class LiveTables:
    """Pending rows of the micro-batches, and their folds into the tables.

    Example::

        tables = LiveTables(spark, cfg, store, app_id)
        tables.append(LIVE_SESSIONS, rows, batch_id)  # in the micro-batch
        tables.start()  # folds every stream.live_tables_interval in the background
        tables.close()  # stops the background folds and folds what is left
    """

    def __init__(self, spark: SparkSession, cfg: Config, store: OnlineStore, app_id: str):
        self.spark, self.cfg, self.store = spark, cfg, store
        self.sink = BatchSink(spark, app_id)
        self._pending_root = cfg.paths.checkpoint(f"{PENDING_DIR}/{app_id}")
        self._fold_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._folds = 0
        self._purchase_files: list[str] | None = None  # as of the last profile fold
        self._folded_upto: dict[str, int] = {}  # pending table -> batch folded by the previous fold
        for name, schema in PENDING_SCHEMAS.items():
            ensure_delta_table(spark, self.pending_path(name), schema)

    def pending_path(self, name: str) -> str:
        return f"{self._pending_root}/{name}"

    def pending(self, name: str) -> DataFrame:
        return self.spark.read.format("delta").load(self.pending_path(name))

    def append(self, name: str, rows: DataFrame, batch_id: int) -> None:
        """Append batch ``batch_id``'s rows to the pending table ``name``, once."""
        with_batch = rows.select(F.lit(batch_id).cast("long").alias(BATCH_ID), *PENDING_SCHEMAS[name].fieldNames()[1:])
        self.sink.append(with_batch, self.pending_path(name), batch_id)

    def seen_items(self, users: DataFrame) -> DataFrame:
        """``user_id, item_id``: every item ``users`` interacted with, as of the last batch
        appended (folded into user_profiles or still pending)."""
        pending = self.pending(PROFILE_TOTALS).select(USER_ID, ITEM_ENGAGEMENT)
        folded = self.spark.read.format("delta").load(self.cfg.paths.table(USER_PROFILES))
        return (
            pending.unionByName(folded.select(USER_ID, ITEM_ENGAGEMENT))
            .join(users, USER_ID, "left_semi")
            .select(USER_ID, F.explode(F.map_keys(ITEM_ENGAGEMENT)).alias(ITEM_ID))
        )

    def start(self) -> None:
        """Fold every ``stream.live_tables_interval`` in a background thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._fold_periodically, name="live-tables", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the background folds, then fold what is pending."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.fold()

    def _fold_periodically(self) -> None:
        self.spark.sparkContext.setLocalProperty("spark.scheduler.pool", SCHEDULER_POOL)
        interval = self.cfg.stream.live_tables_interval_seconds
        while not self._stop.wait(interval):
            try:
                self.fold()
            except Exception:  # the next fold starts from each table's last commit: nothing is lost
                log.exception("folding the pending rows into the live tables failed; trying again in %.0f s", interval)

    def fold(self) -> None:
        """Fold every pending batch into user_profiles, live_sessions and live_recommendations."""
        with self._fold_lock:
            self._folds += 1
            self._fold(LIVE_SESSIONS, LIVE_SESSIONS, self._merge_sessions)
            self._fold(PROFILE_TOTALS, USER_PROFILES, self._merge_profiles)
            self._fold(LIVE_RECOMMENDATIONS, LIVE_RECOMMENDATIONS, self._merge_recommendations)
            if self.cfg.stream.compact_every and self._folds % self.cfg.stream.compact_every == 0:
                files = {name: data_files(self.spark, self.cfg.paths.table(name)) for name in FOLDED_TABLES}
                name = max(files, key=files.get)
                if files[name] > 1:
                    compact(self.spark, self.cfg.paths.table(name))

    def _fold(self, pending_name: str, table: str, merge) -> None:
        path = self.cfg.paths.table(table)
        done = self.sink.last_committed_batch(path)
        self._delete_folded(pending_name, min(done, self._folded_upto.get(pending_name, -1)))
        self._folded_upto[pending_name] = done
        pending = self.pending(pending_name).where(F.col(BATCH_ID) > done)
        upto = pending.agg(F.max(BATCH_ID)).first()[0]
        if upto is None:
            return
        merge(pending.where(F.col(BATCH_ID) <= upto), path, upto)
        log.info("folded batches %d to %d into %s", done + 1, upto, table)

    def _delete_folded(self, pending_name: str, upto: int) -> None:
        if upto < 0:
            return
        try:
            DeltaTable.forPath(self.spark, self.pending_path(pending_name)).delete(F.col(BATCH_ID) <= upto)
        except Exception as exc:  # a concurrent append: they are deleted on a later fold
            log.info("pending rows of %s up to batch %d not deleted yet (%s)", pending_name, upto, exc)

    def _merge_sessions(self, pending: DataFrame, path: str, upto: int) -> None:
        self.sink.upsert(latest_batch_rows(pending), path, [USER_ID], upto)

    def _merge_recommendations(self, pending: DataFrame, path: str, upto: int) -> None:
        # Each batch appended every rank slot of its users: a slot without an item is deleted.
        self.sink.upsert(
            latest_batch_rows(pending),
            path,
            [USER_ID, RANK],
            upto,
            delete_condition=f"s.{ITEM_ID} IS NULL",
            insert_condition=f"s.{ITEM_ID} IS NOT NULL",
        )

    def _merge_profiles(self, pending: DataFrame, path: str, upto: int) -> None:
        spark, rec = self.spark, self.cfg.recommend
        increments = sum_profile_totals(pending).persist()
        purchases = read_purchases(spark, self.cfg.paths.purchases).persist()
        try:
            # Users without new activity need a new row only when the purchase history changed
            # (new files); the first fold of a run checks them all, which also covers a restart.
            purchase_files = sorted(purchases.inputFiles())
            concerned = increments.select(USER_ID)
            if purchase_files != self._purchase_files:
                concerned = concerned.unionByName(purchases.select(USER_ID))
            stored = spark.read.format("delta").load(path).join(concerned.distinct(), USER_ID, "left_semi")
            updated_at = F.timestamp_micros(F.lit(int(time.time() * 1_000_000)))
            rows = (
                with_profile_metrics(add_profile_totals(stored, increments), purchases, rec, updated_at)
                .join(increments.select(USER_ID, F.lit(True).alias("_touched")), USER_ID, "left")
                .fillna(False, ["_touched"])
                .persist()
            )
            try:
                self.store.put_profiles(upto, user_docs(rows, PROFILE_COLUMNS))
                self.sink.upsert(rows, path, [USER_ID], upto, update_condition=_PROFILE_CHANGED)
            finally:
                rows.unpersist()
            self._purchase_files = purchase_files
        finally:
            increments.unpersist()
            purchases.unpersist()
