"""Delta sinks. Every write of a micro-batch carries Delta's transaction identifiers
(``txnAppId`` = the streaming query, ``txnVersion`` = the batch id), so a batch replayed after
a crash re-applies nothing that already committed: appends, overwrites and MERGEs alike.
"""
from __future__ import annotations

from contextlib import contextmanager

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

_TXN_APP_ID = "spark.databricks.delta.write.txnAppId"
_TXN_VERSION = "spark.databricks.delta.write.txnVersion"


def ensure_delta_table(spark: SparkSession, path: str, schema: StructType, comment: str = "") -> None:
    """Create an empty Delta table with ``schema`` at ``path`` unless one exists."""
    builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(schema)
    if comment:
        builder = builder.comment(comment)
    builder.execute()


def append_once(df: DataFrame, path: str, app_id: str, version: int) -> None:
    """Append ``df`` unless this (app_id, version) already committed to the table."""
    (
        df.write.format("delta")
        .mode("append")
        .option("txnAppId", app_id)
        .option("txnVersion", version)
        .save(path)
    )


def overwrite_once(df: DataFrame, path: str, app_id: str, version: int) -> None:
    """Replace the table's content with ``df`` unless (app_id, version) already committed."""
    (
        df.write.format("delta")
        .mode("overwrite")
        .option("txnAppId", app_id)
        .option("txnVersion", version)
        .save(path)
    )


@contextmanager
def _session_txn(spark: SparkSession, app_id: str, version: int):
    """Delta DML (MERGE) reads its transaction identifiers from the session conf."""
    spark.conf.set(_TXN_APP_ID, app_id)
    spark.conf.set(_TXN_VERSION, str(version))
    try:
        yield
    finally:
        spark.conf.unset(_TXN_APP_ID)
        spark.conf.unset(_TXN_VERSION)


def upsert_once(
    spark: SparkSession, updates: DataFrame, path: str, keys: list[str], app_id: str, version: int
) -> None:
    """MERGE ``updates`` into the table on ``keys`` (update all columns, insert new keys), once."""
    condition = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    with _session_txn(spark, app_id, version):
        (
            DeltaTable.forPath(spark, path)
            .alias("t")
            .merge(updates.alias("s"), condition)
            .whenMatchedUpdateAll()
            .whenNotMatchedInsertAll()
            .execute()
        )
