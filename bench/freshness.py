"""Freshness of a lake the stream wrote: per input file, the delay from the file landing in the
watched folder (its modification time; files land by rename) to the Delta commit that made its
rows visible in enriched_events, live_sessions and live_recommendations. (For Kafka input,
``source_delays`` takes each message's acknowledgement time instead.)

Usage: .venv/bin/python bench/freshness.py [--config PATH] [--since EPOCH_SECONDS] [--json OUT]

The micro-batch of a file is read from the source log of the query that writes the table, or
from enriched_events (``source_batches``); each table's commit of that batch carries
`<query id>:<batch id>` in its userMetadata, and the commit's timestamp is when readers could
see it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lib.core.config import Config, load_config
from lib.core.schemas import ENRICHED_EVENTS, LIVE_RECOMMENDATIONS, LIVE_SESSIONS
from lib.core.spark import get_spark

# The hops measured: from a file's arrival to its rows in each of these tables.
TABLES = (ENRICHED_EVENTS, LIVE_SESSIONS, LIVE_RECOMMENDATIONS)


def commit_times(spark: SparkSession, path: str) -> dict[int, float]:
    """batch id -> commit time (epoch seconds) of the table's commits made by the stream."""
    history = spark.sql(f"DESCRIBE HISTORY delta.`{path}`").select("timestamp", "userMetadata").collect()
    times = {}
    for row in history:
        if row.userMetadata and ":" in row.userMetadata:
            times[int(row.userMetadata.rsplit(":", 1)[1])] = row.timestamp.timestamp()
    return times


def source_batches(spark: SparkSession, cfg: Config) -> dict[str, dict[str, int]]:
    """table -> {input source: the micro-batch of the query writing that table that read it}.

    The batch is found from the row's ``ingested_at``, which is its batch's ``stream_metrics.started_at``.
    """
    lake = cfg.paths.table
    batch_of_start = {
        r.started_at.timestamp(): r.batch_id
        for r in spark.read.format("delta").load(lake("stream_metrics")).select("batch_id", "started_at").collect()
    }
    sources = (
        spark.read.format("delta")
        .load(lake("enriched_events"))
        .groupBy("source_file")
        .agg(F.min("ingested_at").alias("ingested_at"))
        .collect()
    )
    batches = {row.source_file: batch_of_start.get(row.ingested_at.timestamp()) for row in sources}
    batches = {source: batch for source, batch in batches.items() if batch is not None}
    return {table: batches for table in TABLES}


def source_delays(
    spark: SparkSession, cfg: Config, arrived_at: Callable[[str], float | None], since: float = 0.0
) -> dict[str, list[tuple[float, float]]]:
    """table -> [(arrived at, delay until visible)] for every input source (a file, or a Kafka
    message's ``kafka://`` address) that ``arrived_at`` dates at or after ``since``."""
    delays: dict[str, list[tuple[float, float]]] = {table: [] for table in TABLES}
    for table, batches in source_batches(spark, cfg).items():
        commits = commit_times(spark, cfg.paths.table(table))
        for source, batch in batches.items():
            arrived = arrived_at(source)
            if arrived is not None and arrived >= since and batch in commits:
                delays[table].append((arrived, commits[batch] - arrived))
    for series in delays.values():
        series.sort()
    return delays


def landed_at(source_file: str) -> float | None:
    """When a file landed in the watched folder (files land by rename: its modification time)."""
    local = source_file.replace("file://", "").replace("file:", "")
    return os.path.getmtime(local) if os.path.exists(local) else None


def file_delays(spark: SparkSession, cfg: Config, since: float = 0.0) -> dict[str, list[tuple[float, float]]]:
    """table -> [(landed at, delay until visible)] for every file landed after ``since``."""
    return source_delays(spark, cfg, landed_at, since)


def summary(delays: dict[str, list[tuple[float, float]]]) -> dict[str, dict]:
    figures = {}
    for table, series in delays.items():
        values = [delay for _, delay in series]
        figures[table] = {"files": len(values)}
        if values:
            figures[table] |= {
                "p50_s": round(float(np.percentile(values, 50)), 2),
                "p95_s": round(float(np.percentile(values, 95)), 2),
                "max_s": round(float(np.max(values)), 2),
            }
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config")
    parser.add_argument("--since", type=float, default=0.0, help="only files landed after this time")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    spark = get_spark("streamrec-freshness")
    spark.sparkContext.setLogLevel("ERROR")
    figures = summary(file_delays(spark, load_config(args.config), args.since))
    for table, values in figures.items():
        print(f"{table:<22} {values}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
