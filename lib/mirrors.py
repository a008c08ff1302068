"""The Delta mirrors of the live tables (``live_sessions``, ``live_recommendations``,
``user_profiles``), written off the micro-batch's critical path.

A micro-batch serves its users' rows from the online store at once and puts what it would
MERGE into these tables (their new rows; for the profiles, the batch's running-total
increments) under the query's checkpoint, one Parquet folder per table and batch
(``<root>/<table>/batch=<id>``, written whole or rewritten whole by a replay). A flush, on its
own cadence (``stream.mirror_interval``), folds every pending batch after the last one a table
committed, up to a batch ``upto``, into that table in one MERGE whose commit carries ``upto`` as
its batch marker (``lib.sinks``). So a flush is exactly-once like any batch write: after a crash
the next flush (at the latest when the stream starts again) takes up where the committed one
ended, and a replayed batch's pending rows are the same rows.

The tables then lag the store by at most the cadence plus one flush; at the end of a run
(``--available-now``, a requested stop) the stream flushes everything, so they are exact.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType, StructField, StructType

from lib.config import Config
from lib.fs import HadoopFS
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
from lib.sinks import BatchSink
from lib.sources import read_purchases

log = logging.getLogger(__name__)

BATCH = "_batch"
_BATCH_DIR = re.compile(r"^batch=(\d+)$")

# What a batch puts per table: the table's rows (latest per key wins) or profile increments.
PENDING_SCHEMAS = {
    LIVE_SESSIONS: LIVE_SESSIONS_SCHEMA,
    LIVE_RECOMMENDATIONS: LIVE_RECOMMENDATIONS_SCHEMA,
    USER_PROFILES: StructType([USER_PROFILES_SCHEMA[c] for c in TOTALS_COLUMNS]),
}

# A profile row is rewritten when the flush folded in activity of its user or its purchase
# side changed.
_PROFILE_CHANGED = (
    "s._touched OR NOT (t.past_purchases <=> s.past_purchases "
    "AND t.avg_purchase_amount <=> s.avg_purchase_amount AND t.top_items <=> s.top_items)"
)


def latest_per_key(rows: DataFrame, keys: list[str]) -> DataFrame:
    """Each key's row from the highest ``_batch`` (rows of several batches' pending upserts)."""
    newest_first = Window.partitionBy(*keys).orderBy(F.col(BATCH).desc())
    return rows.withColumn("_n", F.row_number().over(newest_first)).where("_n = 1").drop("_n")


class PendingMirrors:
    """The pending upserts of the mirrors, per table and batch, under ``root``.

    A reader holds ``lock`` from reading a table's last committed batch until its Spark job has
    read the pending files; ``prune`` needs it, so no file is deleted under a running read.
    """

    def __init__(self, spark: SparkSession, root: str):
        self.spark = spark
        self.root = root.rstrip("/")
        self._fs = HadoopFS(spark)
        self.lock = threading.RLock()

    def _dir(self, table: str, batch_id: int) -> str:
        return f"{self.root}/{table}/batch={batch_id}"

    def put(self, table: str, rows: DataFrame, batch_id: int) -> None:
        """Keep batch ``batch_id``'s rows for ``table`` (a replay replaces them whole)."""
        columns = PENDING_SCHEMAS[table].fieldNames()
        rows.select(*columns, F.lit(batch_id).alias(BATCH)).coalesce(1).write.mode("overwrite").parquet(
            self._dir(table, batch_id)
        )

    def batches(self, table: str) -> list[int]:
        """Batch ids with complete pending rows for ``table``, ascending."""
        ids = []
        for name in self._fs.list_names(f"{self.root}/{table}"):
            match = _BATCH_DIR.match(name)
            if match and self._fs.exists(f"{self.root}/{table}/{name}/_SUCCESS"):
                ids.append(int(match.group(1)))
        return sorted(ids)

    def read(self, table: str, after: int, upto: int) -> DataFrame | None:
        """The pending rows of batches ``after < b <= upto`` (with ``_batch``), or None."""
        ids = [b for b in self.batches(table) if after < b <= upto]
        if not ids:
            return None
        schema = StructType([*PENDING_SCHEMAS[table].fields, StructField(BATCH, IntegerType())])
        return self.spark.read.schema(schema).parquet(*(self._dir(table, b) for b in ids))

    def prune(self, table: str, upto: int) -> None:
        """Delete the pending rows of batches up to ``upto`` (all folded into the table)."""
        with self.lock:
            for batch_id in self.batches(table):
                if batch_id <= upto:
                    self._fs.delete(self._dir(table, batch_id), recursive=True)


class MirrorFlusher:
    """Folds the pending upserts into the Delta tables; one flush at a time (the caller's lock).

    ``fault`` is the stream's fault-injection hook, called with ``mirror:<table>`` after each table's MERGE.
    """

    def __init__(
        self,
        spark: SparkSession,
        cfg: Config,
        sink: BatchSink,
        pending: PendingMirrors,
        store: OnlineStore,
        fault: Callable[[str], None] = lambda _name: None,
    ):
        self.spark = spark
        self.cfg = cfg
        self.sink = sink
        self.pending = pending
        self.store = store
        self.fault = fault
        self._purchase_files: list[str] | None = None  # as of the last profile flush

    def flush(self, upto: int, updated_at: Column) -> None:
        """Fold every pending batch up to ``upto`` into each table not yet past it."""
        for table, fold in (
            (LIVE_SESSIONS, self._fold_sessions),
            (LIVE_RECOMMENDATIONS, self._fold_recommendations),
            (USER_PROFILES, lambda rows, path, batch: self._fold_profiles(rows, path, batch, updated_at)),
        ):
            path = self.cfg.paths.table(table)
            last = self.sink.last_committed_batch(path)
            if last < upto:
                rows = self.pending.read(table, last, upto)
                if rows is not None or (table == USER_PROFILES and self._purchases_changed()):
                    fold(rows, path, upto)
            self.fault(f"mirror:{table}")
            self.pending.prune(table, max(last, upto))

    def _fold_sessions(self, rows: DataFrame, path: str, upto: int) -> None:
        latest = latest_per_key(rows, [USER_ID]).drop(BATCH)
        self.sink.upsert(latest, path, [USER_ID], upto)

    def _fold_recommendations(self, rows: DataFrame, path: str, upto: int) -> None:
        # Every rank slot of a user active in a batch is pending: a slot without an item is deleted.
        latest = latest_per_key(rows, [USER_ID, RANK]).drop(BATCH)
        self.sink.upsert(
            latest,
            path,
            [USER_ID, RANK],
            upto,
            delete_condition=f"s.{ITEM_ID} IS NULL",
            insert_condition=f"s.{ITEM_ID} IS NOT NULL",
        )

    def _purchase_file_list(self) -> list[str]:
        return sorted(read_purchases(self.spark, self.cfg.paths.purchases).inputFiles())

    def _purchases_changed(self) -> bool:
        return self._purchase_file_list() != self._purchase_files

    def _fold_profiles(self, increments: DataFrame | None, path: str, upto: int, updated_at: Column) -> None:
        purchases = read_purchases(self.spark, self.cfg.paths.purchases).persist()
        try:
            totals = (
                sum_profile_totals(increments)
                if increments is not None
                else self.spark.createDataFrame([], PENDING_SCHEMAS[USER_PROFILES])
            )
            totals = totals.persist()
            # Users without new activity need a new row only when the purchase history changed
            # (new files); the first flush of a run checks them all, which also covers a restart.
            purchase_files = sorted(purchases.inputFiles())
            concerned = totals.select(USER_ID)
            if purchase_files != self._purchase_files:
                concerned = concerned.unionByName(purchases.select(USER_ID))
            concerned = concerned.distinct()
            stored = self.spark.read.format("delta").load(path).join(concerned, USER_ID, "left_semi")
            # with_profile_metrics has a row for every buyer; a buyer not concerned has no stored
            # totals read, and its row (purchases only) would overwrite the stored one.
            rows = (
                with_profile_metrics(add_profile_totals(stored, totals), purchases, self.cfg.recommend, updated_at)
                .join(concerned, USER_ID, "left_semi")
                .join(totals.select(USER_ID, F.lit(True).alias("_touched")), USER_ID, "left")
                .fillna(False, ["_touched"])
                .localCheckpoint()
            )
            # The store takes the rows before the MERGE: a flush that dies between the two is
            # done again whole, and the store keeps the later of equal documents.
            self.store.put_profiles(upto, user_docs(rows, PROFILE_COLUMNS))
            self.sink.upsert(rows, path, [USER_ID], upto, update_condition=_PROFILE_CHANGED)
            self._purchase_files = purchase_files
            totals.unpersist()
        finally:
            purchases.unpersist()


def seen_items(spark: SparkSession, cfg: Config, sink: BatchSink, pending: PendingMirrors, upto: int) -> DataFrame:
    """``user_id, item_id``: every item each user interacted with, through batch ``upto``: the
    stored profiles' items and those of the increments not yet folded into them. Call it holding
    ``pending.lock`` until the result is computed."""
    path = cfg.paths.table(USER_PROFILES)
    last = sink.last_committed_batch(path)
    stored = spark.read.format("delta").load(path).select(USER_ID, ITEM_ENGAGEMENT)
    increments = pending.read(USER_PROFILES, last, upto)
    if increments is not None:
        stored = stored.unionByName(increments.select(USER_ID, ITEM_ENGAGEMENT))
    return stored.select(USER_ID, F.explode(F.map_keys(ITEM_ENGAGEMENT)).alias(ITEM_ID))
