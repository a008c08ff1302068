"""Sources: activity as it arrives (the watched folder of CSV files, or a Kafka topic of JSON
messages; streaming) and the purchase history (batch)."""

from __future__ import annotations

import logging
import os
from urllib.parse import unquote, urlparse

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lib.core.config import Config
from lib.core.fs import HadoopFS
from lib.core.schemas import PURCHASES_SCHEMA, SOURCE_FILE

log = logging.getLogger(__name__)


def path_exists(spark: SparkSession, path: str) -> bool:
    """Whether ``path`` exists, on whatever file system its URI names."""
    return HadoopFS(spark).exists(path)


def ensure_dir(spark: SparkSession, path: str) -> None:
    """Create the folder ``path`` (and parents) on its file system if it is missing."""
    HadoopFS(spark).mkdirs(path)


def read_table(spark: SparkSession, cfg: Config, name: str) -> DataFrame | None:
    """The Delta table ``name`` of the lake at its latest version; None when it does not exist."""
    path = cfg.paths.table(name)
    if not path_exists(spark, f"{path}/_delta_log"):
        return None
    return spark.read.format("delta").load(path)


def with_line_source(text: DataFrame) -> DataFrame:
    """The lines of a text read (``spark.read.text`` or ``readStream``), each with the file it
    came from: the rows a micro-batch of ``activity_lines_stream`` holds."""
    return text.select(
        "value",
        F.col("_metadata.file_path").alias(SOURCE_FILE),
        F.col("_metadata.file_block_start").alias("file_block_start"),
    )


def activity_lines_stream(spark: SparkSession, cfg: Config) -> DataFrame:
    """Every line of every CSV file landing in ``paths.events_dir``, once.

    Files are read as text so that each file is interpreted with its own header and a bad
    line can be quarantined verbatim. Hidden files (``.name``, ``_name``) are ignored by the
    file source, which is what makes the write-then-rename landing atomic.
    """
    return with_line_source(
        spark.readStream.format("text")
        .option("maxFilesPerTrigger", cfg.stream.max_files_per_trigger)
        .load(cfg.paths.events_dir)
    )


def activity_messages_stream(spark: SparkSession, cfg: Config) -> DataFrame:
    """Every message of ``kafka.topic``, once, as ``RAW_LINES_SCHEMA`` rows: the value as text,
    ``source_file`` = ``kafka://<topic>/<partition>/<offset>``, the partition in
    ``file_block_start`` and the offset in ``line_id`` (so event order within a partition breaks
    ties as line order within a file does).

    Offsets are kept by the query's checkpoint (no consumer group commits), which is what makes a
    replayed micro-batch read exactly the messages it read the first time.
    """
    kafka = cfg.kafka
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", kafka.bootstrap_servers)
        .option("subscribe", kafka.topic)
        .option("startingOffsets", kafka.starting_offsets)
        # Offsets that retention deleted before they were read are lost input: stop and say so.
        .option("failOnDataLoss", "true")
    )
    if kafka.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", kafka.max_offsets_per_trigger)
    for key, value in kafka.options.items():
        reader = reader.option(key if key.startswith("kafka.") else f"kafka.{key}", value)
    return reader.load().select(
        F.col("value").cast("string").alias("value"),
        F.format_string("kafka://%s/%d/%d", "topic", "partition", "offset").alias(SOURCE_FILE),
        F.col("partition").cast("long").alias("file_block_start"),
        F.col("offset").alias("line_id"),
    )


def read_purchases(spark: SparkSession, path: str) -> DataFrame:
    """The purchase history as it is now (re-listed on every call, so new files are seen)."""
    if not path_exists(spark, path):
        log.warning("purchase history %s does not exist yet; treating it as empty", path)
        return spark.createDataFrame([], PURCHASES_SCHEMA)
    return spark.read.schema(PURCHASES_SCHEMA).parquet(path)


def unsafe_files(paths: list[str], events_dir: str) -> dict[str, str]:
    """The files of ``paths`` that must not be read as input, with the reason.

    Only regular files inside ``events_dir`` are input: a symbolic link, a file whose real
    path leaves the folder (a linked sub-folder, ``..``), or anything that is not a regular
    file is rejected. Checked for local paths; other file systems have no symbolic links.
    """
    root = urlparse(events_dir)
    if root.scheme not in ("", "file"):
        return {}
    real_root = os.path.realpath(unquote(root.path))
    rejected = {}
    for path in paths:
        parsed = urlparse(path)
        if parsed.scheme not in ("", "file"):
            continue
        local = unquote(parsed.path)
        if os.path.islink(local):
            rejected[path] = "unsafe_file: a symbolic link; only regular files in the watched folder are read"
        elif os.path.commonpath([real_root, os.path.realpath(local)]) != real_root:
            rejected[path] = "unsafe_file: outside the watched folder"
        elif not os.path.isfile(local):
            rejected[path] = "unsafe_file: not a regular file"
    if rejected:
        log.warning("rejecting %d unsafe input file(s): %s", len(rejected), sorted(rejected))
    return rejected
