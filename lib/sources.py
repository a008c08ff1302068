"""Sources: the watched folder of activity CSVs (streaming) and the purchase history (batch)."""
from __future__ import annotations

import logging

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lib.config import Config
from lib.fs import HadoopFS
from lib.schemas import PURCHASES_SCHEMA, SOURCE_FILE

log = logging.getLogger(__name__)


def path_exists(spark: SparkSession, path: str) -> bool:
    """Whether ``path`` exists, on whatever file system its URI names."""
    return HadoopFS(spark).exists(path)


def ensure_dir(spark: SparkSession, path: str) -> None:
    """Create the folder ``path`` (and parents) on its file system if it is missing."""
    HadoopFS(spark).mkdirs(path)


def activity_lines_stream(spark: SparkSession, cfg: Config) -> DataFrame:
    """Every line of every CSV file landing in ``paths.events_dir``, once.

    Files are read as text so that each file is interpreted with its own header and a bad
    line can be quarantined verbatim. Hidden files (``.name``, ``_name``) are ignored by the
    file source, which is what makes the write-then-rename landing atomic.
    """
    return (
        spark.readStream.format("text")
        .option("maxFilesPerTrigger", cfg.stream.max_files_per_trigger)
        .load(cfg.paths.events_dir)
        .select(
            "value",
            F.col("_metadata.file_path").alias(SOURCE_FILE),
            F.col("_metadata.file_block_start").alias("file_block_start"),
        )
    )


def read_purchases(spark: SparkSession, path: str) -> DataFrame:
    """The purchase history as it is now (re-listed on every call, so new files are seen)."""
    if not path_exists(spark, path):
        log.warning("purchase history %s does not exist yet; treating it as empty", path)
        return spark.createDataFrame([], PURCHASES_SCHEMA)
    return spark.read.schema(PURCHASES_SCHEMA).parquet(path)
