"""Delta sinks that apply each micro-batch exactly once.

Every commit a stream makes carries ``userMetadata = "<app_id>:<batch_id>"``. Before writing
batch ``b`` to a table, the sink reads the table's latest commits (a driver-side read of the
log's commit files, no Spark job) and skips the write when its own stream already committed
``b`` or later.
Each table has one writing stream (the checkpoint lock guarantees it), so this is exactly
Delta's ``txnAppId``/``txnVersion`` guarantee, without the full state reconstruction (three
Spark jobs per write) that Delta needs to look those up.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from contextlib import contextmanager

import pyarrow as pa
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

from lib.core.fs import HadoopFS

log = logging.getLogger(__name__)

_COMMIT_USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"
_COMMIT_FILE = re.compile(r"^\d{20}\.json$")
# A MERGE takes its commit's marker from the session conf, shared by every thread of the
# session: two MERGEs at once could commit under each other's marker, or under none.
_SESSION_CONF_COMMIT = threading.Lock()
# The operations of the sink's own commits. Any other commit (OPTIMIZE, VACUUM, DELETE) may carry
# the marker another thread's MERGE holds in the session conf at that moment: it says nothing
# about a batch.
_BATCH_OPERATIONS = ("WRITE", "MERGE")


def ensure_delta_table(
    spark: SparkSession, path: str, schema: StructType, properties: dict[str, str] | None = None
) -> None:
    """Create an empty Delta table with ``schema`` and table ``properties`` at ``path`` unless one
    exists; give an existing one the columns of ``schema`` it lacks (a newer streamrec added them;
    its older rows hold nulls there) and the ``properties`` it does not have as given."""
    properties = properties or {}
    builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(schema)
    for key, value in properties.items():
        builder = builder.property(key, value)
    builder.execute()
    table = DeltaTable.forPath(spark, path)
    existing = set(table.toDF().columns)
    missing = [f for f in schema if f.name not in existing]
    if missing:
        columns = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in missing)
        spark.sql(f"ALTER TABLE delta.`{path}` ADD COLUMNS ({columns})")
        log.info("added column(s) %s to %s", columns, path)
    if properties:
        current = table_properties(spark, path)
        changed = {k: v for k, v in properties.items() if current.get(k) != v}
        if changed:
            settings = ", ".join(f"'{k}' = '{v}'" for k, v in changed.items())
            spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ({settings})")
            log.info("set %s on %s", settings, path)


def driver_rows(spark: SparkSession, rows: pa.Table, schema: StructType | None = None) -> DataFrame:
    """Rows held on the driver as a DataFrame of at most one partition per core. Spark makes a
    partition of every Arrow batch of 10,000 rows: a file and a task apiece made a snapshot of
    1,000,000 rows take 5 s to write, against 3.5 s as one per core."""
    return spark.createDataFrame(rows, schema).coalesce(spark.sparkContext.defaultParallelism)


class BatchSink:
    """Exactly-once writes of one stream's micro-batches to Delta tables.

    Example::

        sink = BatchSink(spark, app_id="streamrec-<query id>")
        sink.append(batch_rows, "/lake/enriched_events", batch_id)
    """

    def __init__(self, spark: SparkSession, app_id: str):
        if ":" in app_id:
            raise ValueError(f"app_id must not contain ':' (got {app_id!r})")
        self.spark = spark
        self.app_id = app_id
        self._fs = HadoopFS(spark)

    def marker(self, batch_id: int) -> str:
        return f"{self.app_id}:{batch_id}"

    def last_committed_batch(self, path: str) -> int:
        """The highest batch id this stream committed to the table at ``path`` (-1 if none).

        Reads the commit files of the Delta log directly, newest first, on the driver:
        ``DeltaTable.history`` would cost a Spark job (about 0.5 s) per table per batch.
        Batches commit in order, so the newest commit carrying this stream's marker has the
        highest batch id.
        """
        log_dir = f"{path}/_delta_log"
        prefix = f"{self.app_id}:"
        for version in _commit_versions(self._fs, log_dir):
            text = self._fs.read_text(f"{log_dir}/{version:020d}.json") or ""
            for line in text.splitlines():
                commit = json.loads(line).get("commitInfo")
                if commit is None or commit.get("operation") not in _BATCH_OPERATIONS:
                    continue
                metadata = commit.get("userMetadata")
                if metadata and metadata.startswith(prefix):
                    return int(metadata[len(prefix) :])
        return -1

    def committed(self, path: str, batch_id: int) -> bool:
        done = self.last_committed_batch(path) >= batch_id
        if done:
            log.info("batch %d already committed to %s; skipping the replayed write", batch_id, path)
        return done

    def append(self, df: DataFrame, path: str, batch_id: int) -> bool:
        """Append ``df`` unless batch ``batch_id`` already committed; True if it wrote."""
        return self._write(df, path, batch_id, "append")

    def replace(self, df: DataFrame, path: str, batch_id: int) -> bool:
        """Overwrite the table with ``df`` unless batch ``batch_id`` already committed; True if it wrote."""
        return self._write(df, path, batch_id, "overwrite")

    def _write(self, df: DataFrame, path: str, batch_id: int, mode: str) -> bool:
        if self.committed(path, batch_id):
            return False
        self._save(df, path, batch_id, mode)
        return True

    def _save(self, df: DataFrame, path: str, batch_id: int, mode: str) -> None:
        df.write.format("delta").mode(mode).option("userMetadata", self.marker(batch_id)).save(path)

    def upsert(
        self,
        updates: DataFrame,
        path: str,
        keys: list[str],
        batch_id: int,
        *,
        update_condition: str | None = None,
        delete_condition: str | None = None,
        insert_condition: str | None = None,
    ) -> bool:
        """MERGE ``updates`` (alias ``s``) into the table (alias ``t``) on ``keys``, once.

        Matched rows are deleted where ``delete_condition`` holds, else updated where
        ``update_condition`` holds (always when None); unmatched rows are inserted where
        ``insert_condition`` holds. Every column of the table is set from ``updates``;
        columns of ``updates`` the table does not have are only for the conditions. Into an
        empty table (a new lake's first pass) the rows are appended: all a MERGE would do there
        is insert them, after a join.
        """
        if self.committed(path, batch_id):
            return False
        table = DeltaTable.forPath(self.spark, path)
        columns = table.toDF().columns
        if data_files(self.spark, path) == 0:
            inserted = updates.alias("s").where(insert_condition or "true").select(*(f"s.`{c}`" for c in columns))
            self._save(inserted, path, batch_id, "append")
            return True
        values = {f"`{c}`": f"s.`{c}`" for c in columns}
        condition = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
        merge = table.alias("t").merge(updates.alias("s"), condition)
        if delete_condition:
            merge = merge.whenMatchedDelete(condition=delete_condition)
        merge = merge.whenMatchedUpdate(condition=update_condition, set=values)
        merge = merge.whenNotMatchedInsert(condition=insert_condition, values=values)
        with self._commit_metadata(self.marker(batch_id)):
            merge.execute()
        return True

    @contextmanager
    def _commit_metadata(self, value: str):
        """Delta DML (MERGE) takes its commit's user metadata from the session conf."""
        with _SESSION_CONF_COMMIT:
            self.spark.conf.set(_COMMIT_USER_METADATA, value)
            try:
                yield
            finally:
                self.spark.conf.unset(_COMMIT_USER_METADATA)


def _commit_versions(fs: HadoopFS, log_dir: str) -> list[int]:
    """The versions of the commit files in the Delta log ``log_dir``, newest first."""
    return sorted(
        (int(name[: -len(".json")]) for name in fs.list_names(log_dir) if _COMMIT_FILE.match(name)), reverse=True
    )


def _newest_checksum(spark: SparkSession, path: str) -> dict:
    """The checksum Delta writes beside a commit (``<version>.crc``: file count, metadata, ...) of
    the table's newest version, read on the driver; empty when that version has none.

    ``DESCRIBE DETAIL`` would cost Spark jobs, about 0.4 s a table on 2 cores.
    """
    fs = HadoopFS(spark)
    log_dir = f"{path}/_delta_log"
    versions = _commit_versions(fs, log_dir)
    text = fs.read_text(f"{log_dir}/{versions[0]:020d}.crc") if versions else None
    return json.loads(text) if text else {}


def data_files(spark: SparkSession, path: str) -> int:
    """How many data files the table's newest version has: from its checksum, else from
    ``DESCRIBE DETAIL``."""
    files = _newest_checksum(spark, path).get("numFiles")
    if isinstance(files, int):
        return files
    return DeltaTable.forPath(spark, path).detail().select("numFiles").first()[0]


def table_properties(spark: SparkSession, path: str) -> dict[str, str]:
    """The table properties of the table's newest version: from its checksum, else from
    ``DESCRIBE DETAIL``."""
    configuration = (_newest_checksum(spark, path).get("metadata") or {}).get("configuration")
    if isinstance(configuration, dict):
        return configuration
    return DeltaTable.forPath(spark, path).detail().select("properties").first()[0] or {}


def compact(spark: SparkSession, path: str) -> None:
    """Bin-pack the table's small files (OPTIMIZE). It changes no data, so a replayed batch may
    run it again harmlessly."""
    metrics = DeltaTable.forPath(spark, path).optimize().executeCompaction().select("metrics").first()
    if metrics is not None:
        log.info("compacted %s: %s files removed, %s added", path, metrics[0].numFilesRemoved, metrics[0].numFilesAdded)


# Delta refuses a VACUUM retention shorter than the tables' own (7 days) unless told otherwise.
_RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"
_DEFAULT_DELETED_FILE_RETENTION_HOURS = 168.0


def vacuum(spark: SparkSession, path: str, retention_hours: float) -> None:
    """Delete the files of the table at ``path`` that no version within ``retention_hours``
    needs (VACUUM). It changes no data, so a replayed batch may run it again harmlessly.

    A retention shorter than Delta's default of 7 days is the operator's choice
    (``lake.retention``): readers and time travel slower than that may then miss files.
    """
    if retention_hours < _DEFAULT_DELETED_FILE_RETENTION_HOURS:
        spark.conf.set(_RETENTION_CHECK, "false")
    DeltaTable.forPath(spark, path).vacuum(retention_hours)
    log.info("vacuumed %s (retention %.4g hours)", path, retention_hours)


def commits_since_checkpoint(spark: SparkSession, path: str) -> int:
    """How many commits the table's Delta log has after its last checkpoint (read on the driver)."""
    fs = HadoopFS(spark)
    log_dir = f"{path}/_delta_log"
    versions = _commit_versions(fs, log_dir)
    if not versions:
        return 0
    last = fs.read_text(f"{log_dir}/_last_checkpoint")
    checkpointed = json.loads(last)["version"] if last else -1
    return versions[0] - checkpointed


def checkpoint_log(spark: SparkSession, path: str) -> None:
    """Write a checkpoint of the table's Delta log at its newest version, so that readers replay
    no more than the commits after it. It changes no data; a writer may commit meanwhile."""
    spark._jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, path).checkpoint()
    log.info("checkpointed the Delta log of %s", path)
