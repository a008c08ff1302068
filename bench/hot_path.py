"""The first hop of issue 12 with nothing else in the query: a stream that only parses each
micro-batch and appends `enriched_events` (and `quarantine`, when a row is bad), and per input
file the delay from its landing (its modification time; files land by rename) to the return of
its batch's `enriched_events` commit. It tells how fast a hot query split from the rest of the
stream could be on this machine, alone or beside other work.

    .venv/bin/python bench/hot_path.py --config X --seconds 230 &
    .venv/bin/python jobs/generate.py --config X events --users 100000 --items 2000 \
        --events-per-file 2000 --files-per-second 1 --duration 150

The tables go to the config's lake, the checkpoint to `<checkpoints>/hot_path`: use a config of
its own. Prints the delay's and the batch time's p50 / p95 / max, leaving out the files of the
first `--skip` seconds (the JVM warming up).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyspark.sql import functions as F  # noqa: E402

from bench.freshness import summary  # noqa: E402
from lib.core.config import load_config  # noqa: E402
from lib.core.schemas import ENRICHED_EVENTS, ENRICHED_EVENTS_SCHEMA, EVENT_TS, INGESTED_AT, QUARANTINE, SOURCE_FILE  # noqa: E402
from lib.core.spark import get_spark  # noqa: E402
from lib.ingest.enrich import with_purchase_history  # noqa: E402
from lib.ingest.parsing import quarantine_rows, valid_events  # noqa: E402
from lib.ingest.sources import activity_lines_stream, read_purchases  # noqa: E402
from lib.lake.sinks import BatchSink  # noqa: E402
from lib.stream.query import ensure_tables  # noqa: E402
from lib.stream.steps import parse_batch  # noqa: E402

log = logging.getLogger("hot_path")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="pipeline config (its own lake and checkpoints)")
    parser.add_argument("--seconds", type=float, default=230.0, help="how long the query runs")
    parser.add_argument("--skip", type=float, default=30.0, help="leave out files of the first this many seconds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    cfg = load_config(args.config, [])
    spark = get_spark("streamrec-hot-path")
    ensure_tables(spark, cfg)
    sink = BatchSink(spark, "hot_path")
    batches: list[tuple[float, float, list[float]]] = []  # start, enriched committed, file mtimes

    def process(batch_df, batch_id: int) -> None:
        started = time.time()
        cached = []

        def keep(df):
            cached.append(df.persist())
            return df

        parsed = keep(parse_batch(batch_df, cfg, keep))
        files = [row[0] for row in parsed.select(SOURCE_FILE).distinct().collect()]
        ingested_at = F.lit(started).cast("timestamp")
        purchases = read_purchases(spark, cfg.paths.purchases)
        enriched = with_purchase_history(valid_events(parsed), purchases, as_of=EVENT_TS)
        enriched = enriched.withColumn(INGESTED_AT, ingested_at).select(*ENRICHED_EVENTS_SCHEMA.fieldNames())
        sink.append(enriched, cfg.paths.table(ENRICHED_EVENTS), batch_id)
        committed = time.time()
        if parsed.where(F.col("reason").isNotNull()).limit(1).count():
            sink.append(quarantine_rows(parsed, ingested_at), cfg.paths.table(QUARANTINE), batch_id)
        batches.append((started, committed, [os.path.getmtime(unquote(urlparse(f).path)) for f in files]))
        log.info("batch %d: %d file(s) in %.2f s", batch_id, len(files), time.time() - started)
        for df in cached:
            df.unpersist()

    query = (
        activity_lines_stream(spark, cfg)
        .writeStream.foreachBatch(process)
        .option("checkpointLocation", cfg.paths.checkpoint("hot_path"))
        .trigger(processingTime=f"{cfg.stream.trigger_interval_seconds} seconds")
        .start()
    )
    query.awaitTermination(args.seconds)
    query.stop()

    first = min((m for _, _, mtimes in batches for m in mtimes), default=0.0)
    counted = [(s, c, [m for m in mtimes if m - first >= args.skip]) for s, c, mtimes in batches]
    counted = [(s, c, mtimes) for s, c, mtimes in counted if mtimes]
    figures = summary(
        {
            "file landed -> enriched_events committed": [(m, c - m) for _, c, mtimes in counted for m in mtimes],
            "batch start -> enriched_events committed": [(s, c - s) for s, c, _ in counted],
        }
    )
    print(f"{len(counted)} batches (files of the first {args.skip:.0f} s left out)")
    for hop, figure in figures.items():
        print(f"{hop}: {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
